//! 1,000 nodes: a new record reaches every node, a crashed node is declared failed by all.
//! Prints the simulated time of each (speed goals live in `examples/simulate.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use weft_gossip::sim::{Sim, SimConfig};
use weft_gossip::{Event, MemberState};

#[test]
fn thousand_nodes_spread_a_record_and_detect_a_crash() {
    let mut sim = Sim::new(SimConfig {
        nodes: 1000,
        seed: 11,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(2));
    let ids = sim.ids().to_vec();
    let (publisher, victim) = (ids[10], ids[20]);

    let t0 = sim.elapsed();
    sim.update_record(&publisher, |r| r.ipam = vec![42; 16])
        .expect("running")
        .expect("valid record");
    let reached = sim.run_until(Duration::from_secs(30), Duration::from_millis(50), |s| {
        s.running()
            .all(|(_, c)| c.record(&publisher).is_some_and(|r| r.ipam == vec![42; 16]))
    });
    assert!(reached, "the new record did not reach every node");
    println!(
        "1000 nodes: new record everywhere after {:?} (simulated)",
        sim.elapsed() - t0
    );

    let t1 = sim.elapsed();
    sim.clear_events();
    sim.crash(&victim);
    let detected = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.running().all(|(_, c)| {
            c.member(&victim)
                .is_some_and(|m| m.state == MemberState::Dead)
        })
    });
    assert!(detected, "not every node declared the crashed node failed");
    println!(
        "1000 nodes: crash declared by all after {:?} (simulated)",
        sim.elapsed() - t1
    );
    let wrongly_failed: BTreeSet<_> = sim
        .events()
        .iter()
        .filter_map(|e| match e.event {
            Event::Failed(n) if n != victim => Some(n),
            _ => None,
        })
        .collect();
    assert!(
        wrongly_failed.is_empty(),
        "live nodes declared failed: {wrongly_failed:?}"
    );
}
