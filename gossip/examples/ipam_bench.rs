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

/// CPU time this thread has run, from the scheduler (`/proc/thread-self/schedstat`): unlike
/// wall time it does not count the time other processes of a loaded machine took.
fn cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Operations per second of wall time and of CPU time (kernel time of the writes included).
#[derive(Clone, Copy, Debug)]
struct Rate {
    wall: f64,
    cpu: f64,
}

fn measure(ops: usize, f: impl FnOnce()) -> Rate {
    let (wall, cpu) = (Instant::now(), cpu_time());
    f();
    let cpu = cpu.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
    let wall = wall.elapsed();
    Rate {
        wall: ops as f64 / wall.as_secs_f64(),
        cpu: cpu.map_or(f64::NAN, |c| ops as f64 / c.as_secs_f64()),
    }
}

/// One round: `n` fresh allocations on a new node, then `n / 2` release+allocate pairs.
/// Each allocation or release is persisted before the next, as the daemon does before it
/// answers (here on the same thread: what it costs, not where).
fn local_round<S: Store>(mut store: S, names: &[String]) -> (Rate, Rate) {
    let identity = Arc::new(IdentityKey::from_seed(&[7; 32]));
    let config = IpamConfig::default();
    let now = Instant::now();
    let mut ipam = Ipam::open_store(identity, config, &mut store, 1).expect("open the store");
    ipam.init_genesis(now).expect("genesis");
    ipam.persist_to(&mut store).expect("persist");
    let alloc = measure(names.len(), || {
        for name in names {
            ipam.allocate(now, name).expect("the /12 has room");
            ipam.persist_to(&mut store).expect("persist");
        }
    });
    // Churn: release and allocate again (next-fit has to skip the used ones).
    let half = names.len() / 2;
    let churn = measure(half, || {
        for name in names.iter().take(half) {
            ipam.release(name).expect("release");
            ipam.persist_to(&mut store).expect("persist");
            ipam.allocate(now, name).expect("allocate again");
            ipam.persist_to(&mut store).expect("persist");
        }
    });
    (alloc, churn)
}

/// Table cells for `rounds` rounds: wall-time rate (best and median: on a shared machine the
/// best round is the one least disturbed by other work) and CPU-time rate (median).
fn local_rate<S: Store>(
    mut store: impl FnMut() -> S,
    names: &[String],
    rounds: usize,
) -> [String; 2] {
    let mut allocs = Vec::new();
    let mut churns = Vec::new();
    for _ in 0..rounds {
        let (a, c) = local_round(store(), names);
        allocs.push(a);
        churns.push(c);
    }
    let cells = |v: &[Rate]| {
        let mut wall: Vec<f64> = v.iter().map(|r| r.wall).collect();
        let mut cpu: Vec<f64> = v.iter().map(|r| r.cpu).collect();
        wall.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        format!(
            "{:.0} | {:.0} | {:.0}",
            wall[wall.len() - 1],
            wall[wall.len() / 2],
            cpu[cpu.len() / 2]
        )
    };
    [cells(&allocs), cells(&churns)]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
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
    let rounds: usize = std::env::var("IPAM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let nodes: usize = std::env::var("IPAM_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let load_before = load_average();
    let names: Vec<String> = (0..n).map(|i| format!("container-{i:08}")).collect();
    let [mem, mem_churn] = local_rate(MemoryStore::new, &names, rounds);
    eprintln!("memory store: {mem}");
    let dirs: Vec<tempfile::TempDir> = (0..rounds)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut next_dir = dirs.iter();
    let [file, file_churn] = local_rate(
        || FileStore::new(next_dir.next().expect("one directory per round").path()),
        &names,
        rounds,
    );
    eprintln!("file store: {file}");
    let (virtual_time, newcomer_ticks, setup, per_tick, setup_ticks) = first_piece(nodes);
    let tick = Sim::new(0, IpamConfig::DEFAULT_RANGE.parse().expect("range")).tick;

    println!("load average (1/5/15 min) before: {load_before}, after: {}; {rounds} rounds of {n} allocations", load_average());
    println!();
    println!("| measurement | per wall second, best | per wall second, median | per CPU second, median | goal |");
    println!("|---|---|---|---|---|");
    println!("| local allocations, memory store ({n} in a /12) | {mem} | > 100,000/s |");
    println!(
        "| local allocations, file store (one journal write(2) each) | {file} | > 100,000/s |"
    );
    println!("| release+allocate pairs, memory store | {mem_churn} | |");
    println!("| release+allocate pairs, file store | {file_churn} | |");
    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| new node's first piece in a {nodes}-node cluster | {newcomer_ticks} ticks = {virtual_time:?} virtual (tick {tick:?}: one gossip round / message latency) |"
    );
    println!("| simulator CPU per tick at {nodes} nodes | {per_tick:?} |");
    println!("| building the {nodes}-node cluster (every node owns a piece) | {setup_ticks} ticks, {setup:?} wall |");
}
