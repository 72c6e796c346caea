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

/// What the daemon's members journal is for: the last record of a node that is down
/// survives restarts of every node that held it, and reaches nodes that never had it.
#[test]
fn a_restored_view_passes_on_the_record_of_a_member_that_is_down() {
    let mut sim = Sim::new(cfg(3, 11));
    sim.run_for(Duration::from_secs(2));
    let [a, b, down] = [sim.ids()[0], sim.ids()[1], sim.ids()[2]];
    sim.crash(&down);
    let failed = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
        [a, b].iter().all(|id| {
            s.node(id)
                .and_then(|c| c.member(&down))
                .is_some_and(|m| m.state == MemberState::Dead)
        })
    });
    assert!(failed, "both survivors declared the crashed node failed");
    let saved = sim
        .node(&a)
        .and_then(|c| c.verified_record(&down))
        .expect("a holds the record of the failed node");
    // Both holders restart; a restores the view it persisted, b comes back knowing nobody.
    sim.crash(&a);
    sim.crash(&b);
    sim.restart(&a, &b, |_| {})
        .expect("a known")
        .expect("a restarts");
    sim.with_node(&a, |c, now| c.restore_down(now, [saved.clone()]));
    sim.restart(&b, &a, |_| {})
        .expect("b known")
        .expect("b restarts");
    let learned = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.node(&b)
            .and_then(|c| c.member(&down))
            .is_some_and(|m| m.state == MemberState::Dead && m.record.version == saved.version())
    });
    assert!(
        learned,
        "b learned the down node's record from a's restored view"
    );
    let a_view = sim.node(&a).and_then(|c| c.member(&down)).map(|m| m.state);
    assert_eq!(
        a_view,
        Some(MemberState::Dead),
        "restored as failed, not alive"
    );
}

/// Nodes that learned of a failure at different times drop the failed member at different
/// times; the ones that dropped it first must not take it back from the others' push-pulls,
/// or it would be handed around for ever.
#[test]
fn a_failed_member_is_dropped_everywhere_after_its_retention() {
    let gossip = weft_gossip::Config {
        down_retention: Duration::from_secs(20),
        push_pull_interval: Duration::from_secs(2),
        ..weft_gossip::Config::default()
    };
    let mut sim = Sim::new(SimConfig {
        gossip,
        ..cfg(4, 5)
    });
    sim.run_for(Duration::from_secs(2));
    let [a, b, c, d] = [sim.ids()[0], sim.ids()[1], sim.ids()[2], sim.ids()[3]];
    sim.crash(&d);
    sim.run_for(Duration::from_secs(1));
    sim.crash(&c);
    let failed = sim.run_until(Duration::from_secs(30), Duration::from_millis(100), |s| {
        [a, b].iter().all(|id| {
            s.node(id)
                .and_then(|n| n.member(&c))
                .is_some_and(|m| m.state == MemberState::Dead)
        })
    });
    assert!(failed, "a and b declared c failed");
    // d comes back knowing nobody, 12 s later: it learns c (failed) from a push-pull, and
    // keeps it 12 s longer than a and b do.
    sim.run_for(Duration::from_secs(12));
    sim.restart(&d, &a, |_| {})
        .expect("d known")
        .expect("d restarts");
    let learned = sim.run_until(Duration::from_secs(10), Duration::from_millis(100), |s| {
        s.node(&d)
            .and_then(|n| n.member(&c))
            .is_some_and(|m| m.state == MemberState::Dead)
    });
    assert!(learned, "d learned the failed member from its peers");
    sim.run_for(Duration::from_secs(90));
    for id in [a, b, d] {
        let still = sim.node(&id).and_then(|n| n.member(&c)).map(|m| m.state);
        assert_eq!(still, None, "{id:?} still holds c after its retention");
    }
}
