//! Partition the cluster in two halves, then heal: both sides converge on one view.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_gossip::sim::{Sim, SimConfig};
use weft_gossip::{MemberState, NodeId};

fn view(sim: &Sim, id: &NodeId) -> BTreeMap<NodeId, (MemberState, u64)> {
    let c = sim.node(id).expect("running");
    c.members()
        .map(|m| (m.record.node_id, (m.state, m.record.version)))
        .collect()
}

#[test]
fn halves_declare_each_other_failed_then_converge_after_heal() {
    let mut sim = Sim::new(SimConfig {
        nodes: 40,
        seed: 9,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(2));
    let ids = sim.ids().to_vec();
    let (a, b) = ids.split_at(20);
    sim.partition(&[a.to_vec(), b.to_vec()]);
    sim.run_for(Duration::from_secs(60));
    let across = sim
        .node(&a[0])
        .and_then(|c| c.member(&b[0]))
        .map(|m| m.state);
    assert_eq!(
        across,
        Some(MemberState::Dead),
        "the other half is failed during the partition"
    );

    sim.heal();
    let converged = sim.run_until(Duration::from_secs(300), Duration::from_secs(1), |s| {
        let first = view(s, &ids[0]);
        s.running().all(|(_, c)| c.num_live() == 39)
            && ids.iter().all(|id| {
                let mut v = view(s, id);
                let mut f = first.clone();
                // Compare everything but each node's own entry (absent from its own view).
                v.remove(&ids[0]);
                f.remove(id);
                v == f
            })
    });
    assert!(
        converged,
        "views did not converge within 300 s after healing"
    );
    println!(
        "partition healed; one view everywhere after {:?}",
        sim.elapsed()
    );
}
