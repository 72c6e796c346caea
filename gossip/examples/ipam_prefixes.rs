//! How fragmented the address space gets: CIDR prefixes per node (what each node routes and
//! puts in its WireGuard allowed IPs for every other node) in a simulated cluster with joins,
//! leaves and forgets.
//!
//! `cargo run --release -p weft-gossip --example ipam_prefixes -- [--nodes 1000] [--rounds 20]
//! [--seed 1] [--label TEXT]`
//!
//! Builds a cluster of `--nodes` nodes in the default range (every node asks for space as
//! soon as it knows the genesis, and allocates 1 to 8 addresses once it has some), then runs
//! `--rounds` rounds of churn: per round 5 new nodes join, 3 nodes leave (handing their space
//! over), 2 nodes crash and are forgotten by another node once that is safe (the operator's
//! precondition, `Sim::forget_is_safe`). Prints one markdown table row: the prefixes per live
//! node that owns space, mean and max, after building and after the churn.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_gossip::ipam::sim::Sim;
use weft_gossip::ipam::IpamConfig;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// (mean, max, nodes with space, nodes with more than 4 prefixes)
fn prefixes(sim: &mut Sim) -> (f64, usize, usize, usize) {
    let up: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.is_up(i)).collect();
    let counts: Vec<usize> = up
        .into_iter()
        .filter_map(|i| {
            let ipam = sim.ipam(i)?;
            (!ipam.owned().is_empty()).then(|| ipam.owned_cidrs().len())
        })
        .collect();
    let n = counts.len().max(1);
    (
        counts.iter().sum::<usize>() as f64 / n as f64,
        counts.iter().copied().max().unwrap_or(0),
        counts.len(),
        counts.iter().filter(|&&c| c > 4).count(),
    )
}

/// Every up node without space asks for some; nodes that got space allocate a few addresses
/// (once). Steps until every up node owns space (or `max` ticks).
fn settle(sim: &mut Sim, rng: &mut ChaCha8Rng, filled: &mut Vec<bool>, max: usize) -> usize {
    let mut ticks = 0;
    loop {
        let now = sim.now;
        let mut without = 0;
        filled.resize(sim.nodes.len(), false);
        for (i, done) in filled.iter_mut().enumerate() {
            if !sim.is_up(i) {
                continue;
            }
            let Some(ipam) = sim.ipam(i) else { continue };
            if ipam.owned().is_empty() {
                without += 1;
                if ipam.genesis().is_some() {
                    let _ = ipam.request_space(now);
                }
            } else if !*done {
                *done = true;
                for k in 0..rng.gen_range(1..=8) {
                    let _ = ipam.allocate(now, &format!("pod-{i}-{k}"));
                }
            }
        }
        if without == 0 || ticks >= max {
            return ticks;
        }
        sim.step();
        ticks += 1;
    }
}

fn main() {
    let nodes = num("--nodes", 1000) as usize;
    let rounds = num("--rounds", 20);
    let seed = num("--seed", 1);
    let label = arg("--label").unwrap_or_else(|| "this build".into());
    let wall = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sim = Sim::new(seed, IpamConfig::DEFAULT_RANGE.parse().expect("range"));
    let first = sim.add_node();
    let now = sim.now;
    sim.ipam(first)
        .expect("up")
        .init_genesis(now)
        .expect("genesis");
    for _ in 1..nodes {
        sim.add_node();
    }
    let mut filled = Vec::new();
    let build_ticks = settle(&mut sim, &mut rng, &mut filled, 3000);
    let built = prefixes(&mut sim);
    eprintln!(
        "built {nodes} nodes in {build_ticks} ticks ({:?}): {built:?}",
        wall.elapsed()
    );
    let (mut joins, mut leaves, mut forgets) = (0, 0, 0);
    let mut crashed: Vec<usize> = Vec::new();
    for round in 0..rounds {
        // Forget the nodes that crashed last round, by any node for which it is safe.
        let mut waited = 0;
        while !crashed.is_empty() && waited < 40 {
            let up: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.is_up(i)).collect();
            crashed.retain(|&t| {
                for _ in 0..20 {
                    let by = up[rng.gen_range(0..up.len())];
                    if sim.forget_is_safe(by, t) {
                        sim.forget(by, t).expect("forget a crashed node");
                        forgets += 1;
                        return false;
                    }
                }
                true
            });
            sim.step();
            waited += 1;
        }
        crashed.clear();
        for _ in 0..5 {
            sim.add_node();
            joins += 1;
        }
        for _ in 0..3 {
            let up: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.is_up(i)).collect();
            if sim.leave(up[rng.gen_range(0..up.len())]).is_ok() {
                leaves += 1;
            }
        }
        for _ in 0..2 {
            let up: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.is_up(i)).collect();
            let i = up[rng.gen_range(0..up.len())];
            if i != first {
                sim.crash(i);
                crashed.push(i);
            }
        }
        let t = settle(&mut sim, &mut rng, &mut filled, 200);
        sim.run(10);
        if let Err(e) = sim.check_safety() {
            panic!("round {round}: {e}");
        }
        eprintln!(
            "round {round}: {t} ticks to give every newcomer space; {:?} ({:?})",
            prefixes(&mut sim),
            wall.elapsed()
        );
    }
    let after = prefixes(&mut sim);
    println!(
        "| {label} | {nodes} | {:.2} / {} | {joins} / {leaves} / {forgets} | {} | {:.2} / {} | {} |",
        built.0, built.1, after.2, after.0, after.1, after.3
    );
    eprintln!("wall {:?}", wall.elapsed());
}
