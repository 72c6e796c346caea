//! 10% datagram loss for 10 simulated minutes and no crashes: nobody is declared failed.

use std::time::Duration;

use weft_gossip::sim::{Sim, SimConfig};
use weft_gossip::Event;

#[test]
fn ten_percent_loss_for_ten_minutes_gives_no_false_failures() {
    let mut sim = Sim::new(SimConfig {
        nodes: 100,
        seed: 5,
        loss: 0.10,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(600));
    let failed: Vec<_> = sim
        .events()
        .iter()
        .filter(|e| matches!(e.event, Event::Failed(_)))
        .collect();
    let probes_failed: u64 = sim.running().map(|(_, c)| c.stats().probes_failed).sum();
    let lost = sim.net_stats().lost;
    println!("10% loss, 100 nodes, 600 s: {lost} datagrams lost, {probes_failed} failed probes, {} failures", failed.len());
    assert!(lost > 10_000, "the network really lost packets ({lost})");
    assert!(
        failed.is_empty(),
        "nodes were declared failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(sim.running().all(|(_, c)| c.num_live() == 99));
}
