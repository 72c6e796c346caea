//! Small simulated clusters: joining, record updates, failure detection, leave, restart.

use std::time::Duration;

use weft_gossip::sim::{Bootstrap, Sim, SimConfig};
use weft_gossip::{Event, MemberState};

fn cfg(nodes: usize, seed: u64) -> SimConfig {
    SimConfig {
        nodes,
        seed,
        ..SimConfig::default()
    }
}

#[test]
fn nodes_join_through_one_seed_and_see_everyone() {
    let mut sim = Sim::new(SimConfig {
        bootstrap: Bootstrap::Join {
            join_spread: Duration::from_secs(2),
        },
        ..cfg(50, 7)
    });
    let converged = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.running().all(|(_, c)| c.num_live() == 49)
    });
    assert!(
        converged,
        "after {:?} some node sees fewer than 49 live members",
        sim.elapsed()
    );
    println!("50 nodes joined through one seed in {:?}", sim.elapsed());
}

#[test]
fn crashed_node_is_declared_failed_by_all_and_nobody_else() {
    let mut sim = Sim::new(cfg(30, 3));
    sim.run_for(Duration::from_secs(2));
    let victim = sim.ids()[5];
    sim.crash(&victim);
    let done = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.running().all(|(_, c)| {
            c.member(&victim)
                .is_some_and(|m| m.state == MemberState::Dead)
        })
    });
    assert!(done, "not every node declared the crashed node failed");
    let failed_others = sim
        .events()
        .iter()
        .filter(|e| matches!(e.event, Event::Failed(n) if n != victim))
        .count();
    assert_eq!(
        failed_others, 0,
        "only the crashed node may be declared failed"
    );
}
