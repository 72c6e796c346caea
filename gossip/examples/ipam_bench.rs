//! IPAM benchmark: local allocations per second on one node, and how long a new node takes
//! to get its first piece of address space in a 1,000-node simulated cluster.
//!
//! `cargo run --release -p weft-gossip --example ipam_bench` (`IPAM_BENCH_NODES` changes the
//! cluster size).

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_crypto::IdentityKey;
use weft_gossip::ipam::sim::Sim;
use weft_gossip::ipam::{FileStore, Ipam, IpamConfig, MemoryStore, Store};

fn local_rate<S: Store>(store: S, n: usize) -> (f64, f64) {
    let identity = Arc::new(IdentityKey::from_seed(&[7; 32]));
    let config = IpamConfig::default();
    let now = Instant::now();
    let mut ipam = Ipam::open(identity, config, store, 1).expect("open the store");
    ipam.init_genesis(now).expect("genesis");
    let names: Vec<String> = (0..n).map(|i| format!("container-{i:08}")).collect();
    let start = Instant::now();
    for name in &names {
        ipam.allocate(now, name).expect("the /12 has room");
    }
    let alloc = n as f64 / start.elapsed().as_secs_f64();
    // Churn: release and allocate again (next-fit has to skip the used ones).
    let start = Instant::now();
    for name in names.iter().take(n / 2) {
        ipam.release(name).expect("release");
        ipam.allocate(now, name).expect("allocate again");
    }
    let churn = (n / 2) as f64 / start.elapsed().as_secs_f64();
    (alloc, churn)
}

/// Builds a cluster of `nodes` nodes where every node owns a piece, then measures a newcomer.
fn first_piece(nodes: usize) -> (Duration, usize, Duration, Duration, usize) {
    let wall = Instant::now();
    let mut sim = Sim::new(42, IpamConfig::DEFAULT_RANGE.parse().expect("range"));
    let seed = sim.add_node();
    let now = sim.now;
    sim.ipam(seed)
        .expect("up")
        .init_genesis(now)
        .expect("genesis");
    for _ in 1..nodes {
        sim.add_node();
    }
    // Every node asks for space as soon as it knows the genesis (what the daemon does).
    let mut ticks = 0;
    loop {
        let now = sim.now;
        let mut without = 0;
        for i in 0..sim.nodes.len() {
            let ipam = sim.ipam(i).expect("up");
            if ipam.owned().is_empty() {
                without += 1;
                if ipam.genesis().is_some() {
                    let _ = ipam.request_space(now);
                }
            }
        }
        if without == 0 || ticks > 2000 {
            break;
        }
        sim.step();
        ticks += 1;
    }
    let setup = wall.elapsed();
    eprintln!("cluster of {nodes} built in {ticks} ticks, {setup:?}");
    // The newcomer.
    let newcomer = sim.add_node();
    let joined = sim.now;
    let wall = Instant::now();
    let mut newcomer_ticks = 0;
    while sim.ipam(newcomer).expect("up").owned().is_empty() && newcomer_ticks < 1000 {
        let now = sim.now;
        let ipam = sim.ipam(newcomer).expect("up");
        if ipam.genesis().is_some() {
            let _ = ipam.request_space(now);
        }
        sim.step();
        newcomer_ticks += 1;
    }
    let virtual_time = sim.now - joined;
    let per_tick = wall.elapsed() / newcomer_ticks.max(1) as u32;
    (virtual_time, newcomer_ticks, setup, per_tick, ticks)
}

fn main() {
    let n: usize = std::env::var("IPAM_BENCH_ALLOCATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (mem, mem_churn) = local_rate(MemoryStore::new(), n);
    eprintln!("memory store: {mem:.0}/s");
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, file_churn) = local_rate(FileStore::new(dir.path()), n);
    let nodes: usize = std::env::var("IPAM_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let (virtual_time, newcomer_ticks, setup, per_tick, setup_ticks) = first_piece(nodes);
    let tick = Sim::new(0, IpamConfig::DEFAULT_RANGE.parse().expect("range")).tick;

    println!("| measurement | value | goal |");
    println!("|---|---|---|");
    println!("| local allocations/s, memory store ({n} in a /12) | {mem:.0} | > 100,000 |");
    println!("| local allocations/s, file store (journal append per allocation) | {file:.0} | > 100,000 |");
    println!("| release+allocate/s, memory store | {mem_churn:.0} | |");
    println!("| release+allocate/s, file store | {file_churn:.0} | |");
    println!(
        "| new node's first piece in a {nodes}-node cluster | {} ticks = {:?} virtual (tick {:?}: one gossip round / message latency) | |",
        newcomer_ticks, virtual_time, tick
    );
    println!("| simulator CPU per tick at {nodes} nodes | {per_tick:?} | |");
    println!("| building the {nodes}-node cluster (every node owns a piece) | {setup_ticks} ticks, {setup:?} wall | |");
}
