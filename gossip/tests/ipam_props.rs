//! Property test of IPAM on the simulator: random schedules of nodes joining, allocating,
//! releasing, crashing, restarting, leaving and being forgotten, under random partitions and
//! message loss. After every step no address is owned or allocated by two nodes; after
//! healing, every live node agrees on who owns what. No node's space ever takes more than a
//! few CIDR prefixes.
//!
//! `WEFT_IPAM_SCHEDULES` (default 2000) and `WEFT_IPAM_STEPS` (default 40) scale it;
//! `WEFT_IPAM_SEED=<n>` replays one schedule. A failure prints the seed.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_gossip::ipam::sim::Sim;
use weft_gossip::ipam::{Error, MAX_RECORD_BYTES};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn trace() -> bool {
    std::env::var_os("WEFT_IPAM_TRACE").is_some()
}

#[derive(Debug, Default)]
struct Stats {
    allocated: u64,
    space_requests: u64,
    not_reachable: u64,
    exhausted: u64,
    crashes: u64,
    restarts: u64,
    leaves: u64,
    forgets: u64,
    partitions: u64,
    max_nodes: usize,
    max_record: usize,
    max_prefixes: usize,
    /// How many schedules ended with a node at `k + 1` prefixes.
    prefixes_at_end: [u64; 8],
}

/// Runs one schedule; Err(description) on the first violated property.
fn run_schedule(seed: u64, steps: u64, stats: &mut Stats) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let range = [
        "10.32.0.0/16",
        "10.32.0.0/22",
        "10.32.0.0/24",
        "10.32.0.0/26",
    ][rng.gen_range(0..4)];
    let mut sim = Sim::new(seed, range.parse().map_err(|e| format!("{e}"))?);
    let initial = if seed % 200 == 0 {
        rng.gen_range(40..=100)
    } else {
        rng.gen_range(1..=8)
    };
    let first = sim.add_node();
    let now = sim.now;
    sim.ipam(first)
        .ok_or("seed down")?
        .init_genesis(now)
        .map_err(|e| e.to_string())?;
    for _ in 1..initial {
        sim.add_node();
    }
    // Container -> (node, address) for containers that got one: a restart must give the same.
    let mut given: BTreeMap<String, (usize, std::net::Ipv4Addr)> = BTreeMap::new();
    let mut next_container = 0u64;
    for step in 0..steps {
        let n = sim.nodes.len();
        let up: Vec<usize> = (0..n).filter(|&i| sim.is_up(i)).collect();
        let down: Vec<usize> = (0..n)
            .filter(|&i| !sim.is_up(i) && !sim.nodes[i].gone)
            .collect();
        let pick =
            |rng: &mut ChaCha8Rng, v: &[usize]| v.get(rng.gen_range(0..v.len().max(1))).copied();
        let what = rng.gen_range(0..100);
        let now = sim.now;
        let op: String = match what {
            0..=7 if n < 100 => {
                sim.add_node();
                "join".to_string()
            }
            0..=44 => {
                let Some(i) = pick(&mut rng, &up) else {
                    continue;
                };
                let k = rng.gen_range(1..=4);
                for _ in 0..k {
                    next_container += 1;
                    let c = format!("c{next_container}");
                    match sim.ipam(i).ok_or("up")?.allocate(now, &c) {
                        Ok(a) => {
                            stats.allocated += 1;
                            given.insert(c, (i, a));
                        }
                        Err(Error::SpaceRequested { .. }) => stats.space_requests += 1,
                        Err(Error::NoAddressSpaceReachable { .. }) => stats.not_reachable += 1,
                        Err(Error::RangeExhausted { .. }) => stats.exhausted += 1,
                        Err(Error::NoGenesis) => {}
                        Err(e) => return Err(format!("step {step}: allocate on {i}: {e}")),
                    }
                }
                format!("allocate x{k} on {i}")
            }
            45..=59 => {
                let mine: Vec<String> = given
                    .iter()
                    .filter(|(_, (node, _))| sim.is_up(*node))
                    .map(|(c, _)| c.clone())
                    .collect();
                let Some(c) = mine.get(rng.gen_range(0..mine.len().max(1))).cloned() else {
                    continue;
                };
                let (i, addr) = given[&c];
                let released = sim
                    .ipam(i)
                    .ok_or("up")?
                    .release(&c)
                    .map_err(|e| e.to_string())?;
                if released != Some(addr) {
                    return Err(format!(
                        "step {step}: release of {c} on {i} gave {released:?}, expected {addr}"
                    ));
                }
                given.remove(&c);
                format!("release {c} on {i}")
            }
            60..=67 => {
                let Some(i) = pick(&mut rng, &up) else {
                    continue;
                };
                sim.crash(i);
                stats.crashes += 1;
                format!("crash {i}")
            }
            68..=77 => {
                let Some(i) = pick(&mut rng, &down) else {
                    continue;
                };
                sim.restart(i)
                    .map_err(|e| format!("step {step}: restart {i}: {e}"))?;
                stats.restarts += 1;
                // Same container, same address, straight from the state directory.
                for (c, (node, addr)) in given.iter().filter(|(_, (node, _))| *node == i) {
                    let again = sim
                        .ipam(*node)
                        .ok_or("up")?
                        .allocate(now, c)
                        .map_err(|e| format!("step {step}: {e}"))?;
                    if again != *addr {
                        return Err(format!(
                            "step {step}: after restart {c} on {i} got {again}, had {addr}"
                        ));
                    }
                }
                format!("restart {i}")
            }
            78..=81 => {
                let Some(i) = pick(&mut rng, &up) else {
                    continue;
                };
                match sim.leave(i) {
                    Ok(_) => {
                        given.retain(|_, (node, _)| *node != i);
                        stats.leaves += 1;
                    }
                    Err(Error::NoPeerToHandTo) => {}
                    Err(e) => return Err(format!("step {step}: leave {i}: {e}")),
                }
                format!("leave {i}")
            }
            82..=86 => {
                let (Some(by), Some(t)) = (pick(&mut rng, &up), pick(&mut rng, &down)) else {
                    continue;
                };
                if !sim.forget_is_safe(by, t) {
                    continue;
                }
                sim.forget(by, t)
                    .map_err(|e| format!("step {step}: forget {t} by {by}: {e}"))?;
                given.retain(|_, (node, _)| *node != t);
                stats.forgets += 1;
                format!("forget {t} by {by}")
            }
            87..=91 => {
                let groups = rng.gen_range(2..=3u8);
                sim.partition((0..n).map(|_| rng.gen_range(0..groups)).collect());
                stats.partitions += 1;
                "partition".to_string()
            }
            92..=95 => {
                sim.heal();
                "heal".to_string()
            }
            _ => {
                sim.set_loss([0.0, 0.1, 0.3][rng.gen_range(0..3)]);
                "loss".to_string()
            }
        };
        if trace() {
            eprintln!(
                "step {step}: {op}; up {:?}",
                (0..sim.nodes.len())
                    .filter(|&i| sim.is_up(i))
                    .collect::<Vec<_>>()
            );
        }
        let ticks = rng.gen_range(1..=4);
        for _ in 0..ticks {
            sim.step();
            sim.check_safety().map_err(|e| {
                if trace() {
                    eprintln!("{}", sim.dump());
                }
                format!("step {step} ({op}): {e}")
            })?;
        }
        stats.max_record = stats.max_record.max(sim.max_record_len());
        stats.max_prefixes = stats.max_prefixes.max(sim.max_prefixes());
    }
    stats.max_nodes = stats.max_nodes.max(sim.nodes.len());
    // Heal, stop losing messages, and let gossip settle: everyone must agree.
    sim.heal();
    sim.set_loss(0.0);
    for _ in 0..80 {
        sim.step();
        sim.check_safety()
            .map_err(|e| format!("while settling: {e}"))?;
    }
    sim.check_agreement().map_err(|e| {
        if trace() {
            eprintln!("{}", sim.dump());
        }
        format!("after healing: {e}")
    })?;
    if !sim.unexpected.is_empty() {
        return Err(format!("unexpected errors: {:?}", sim.unexpected));
    }
    let prefixes = sim.max_prefixes();
    if prefixes > 0 {
        stats.prefixes_at_end[prefixes.min(8) - 1] += 1;
    }
    // Liveness: every live node gets an address, or a clear reason why not.
    let live: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.is_up(i)).collect();
    for i in live {
        let mut answer = None;
        for _ in 0..60 {
            let now = sim.now;
            match sim.ipam(i).ok_or("up")?.allocate(now, "final") {
                Err(Error::SpaceRequested { .. }) => sim.step(),
                other => {
                    answer = Some(other);
                    break;
                }
            }
        }
        match answer {
            Some(Ok(_))
            | Some(Err(Error::RangeExhausted { .. }))
            | Some(Err(Error::NoAddressSpaceReachable { .. })) => {}
            Some(Err(Error::NoGenesis)) => {
                // Only acceptable when no live node has a genesis to learn from.
                let holders: Vec<usize> = (0..sim.nodes.len())
                    .filter(|&j| {
                        sim.is_up(j)
                            && sim.nodes[j]
                                .ipam
                                .as_ref()
                                .is_some_and(|x| x.genesis().is_some())
                    })
                    .collect();
                if !holders.is_empty() {
                    return Err(format!(
                        "node {i} never learned the genesis that live nodes {holders:?} have"
                    ));
                }
            }
            Some(Err(e)) => return Err(format!("final allocate on {i}: {e}")),
            None => return Err(format!("node {i}: requests for space never answered")),
        }
        sim.check_safety()
            .map_err(|e| format!("final allocations: {e}"))?;
    }
    Ok(())
}

/// Seeds that once failed, run on top of the range.
/// 2578: a reclaim whose maker went down, seen only by a node that then restarted (and lost
/// its gossip cache), was kept as a tombstone but neither asserted nor passed on.
/// 2370: a restarted reclaimer that had since given the reclaimed space away must not take
/// its own old reclaim for a claim (its pool is the truth).
/// 5307: a giver that learned a reclaim took back (at the same version) space the forgotten
/// node had already passed on to a live node: two owners.
/// 9768: a forgotten node's transfer to a node that had left before applying it: the
/// forgetter kept the forgotten node's record (and so that transfer) in its view, the others
/// dropped it; and the space was stranded (now reclaimed with the forgotten node's).
/// 7091: the last record of a down node was on no live node once its holders restarted
/// (now members' records are journaled and restored; see `Sim::persist_records`).
/// 17213: a giver that had restarted (losing the receiver's acknowledgement) learned a
/// reclaim of the receiver while its view was stale, and took back the part of its transfer
/// that the forgetter had seen passed on: two owners. Reclaims now name the transfers they
/// accounted for, and their givers take nothing of those back.
const REGRESSIONS: &[u64] = &[2370, 2578, 5307, 7091, 9768, 17213];

#[test]
fn random_schedules_never_give_an_address_twice_and_converge() {
    let steps = env("WEFT_IPAM_STEPS", 40);
    let mut stats = Stats::default();
    if let Ok(seed) = std::env::var("WEFT_IPAM_SEED") {
        let seed: u64 = seed.parse().expect("WEFT_IPAM_SEED is a number");
        if let Err(e) = run_schedule(seed, steps, &mut stats) {
            panic!("schedule failed: WEFT_IPAM_SEED={seed}: {e}");
        }
        return;
    }
    let schedules = env("WEFT_IPAM_SCHEDULES", 2000);
    let base = env("WEFT_IPAM_BASE_SEED", 0);
    let regressions = REGRESSIONS
        .iter()
        .copied()
        .filter(|s| !(base..base + schedules).contains(s));
    for seed in (base..base + schedules).chain(regressions) {
        if let Err(e) = run_schedule(seed, steps, &mut stats) {
            panic!(
                "schedule failed; replay with WEFT_IPAM_SEED={seed}: {e}\nstats so far: {stats:?}"
            );
        }
    }
    println!("{schedules} schedules of {steps} steps: {stats:?}");
    // The schedules did exercise what they claim to.
    assert!(
        stats.allocated > 0 && stats.space_requests > 0 && stats.crashes > 0 && stats.restarts > 0
    );
    assert!(
        stats.leaves > 0
            && stats.forgets > 0
            && stats.partitions > 0
            && stats.not_reachable > 0
            && stats.exhausted > 0
    );
    assert!(
        stats.max_record <= MAX_RECORD_BYTES,
        "a record grew to {} bytes",
        stats.max_record
    );
    // Space moves in aligned blocks: a node's space stays a few prefixes (routes, allowed
    // IPs), whatever joins, leaves, forgets and partitions did. Seen: at most 4 with the
    // default 2,000 schedules, most nodes ending with one (before aligned blocks: up to
    // 2 log2(range size)).
    assert!(
        stats.max_prefixes <= 6,
        "a node's space took {} prefixes",
        stats.max_prefixes
    );
}

/// The schedule of seed 2578, by hand: node 0 forgets node 3 while node 2 is cut off; only
/// node 1 hears of it; node 0 goes down, node 1 restarts without the records it had learned
/// (a lost members journal), so node 0's record showing the reclaim is gone from every live
/// node. Node 1's persisted
/// tombstone is then the only trace of the reclaim: it must still count, and reach node 2.
#[test]
fn a_reclaim_outlives_its_maker_and_the_records_that_carried_it() {
    let mut sim = Sim::new(7, "10.32.0.0/24".parse().expect("a valid range"));
    // As if the members journal were lost: node 1 restarts knowing no records.
    sim.persist_records = false;
    for _ in 0..4 {
        sim.add_node();
    }
    let now = sim.now;
    sim.ipam(0)
        .expect("up")
        .init_genesis(now)
        .expect("genesis on a fresh node");
    sim.run(20);
    let mut got = None;
    for _ in 0..40 {
        let now = sim.now;
        match sim.ipam(3).expect("up").allocate(now, "c") {
            Ok(a) => {
                got = Some(a);
                break;
            }
            Err(Error::SpaceRequested { .. }) => sim.step(),
            Err(e) => panic!("allocate on 3: {e}"),
        }
    }
    assert!(got.is_some(), "node 3 got space");
    sim.run(30);
    sim.crash(3);
    sim.run(20);
    sim.partition(vec![0, 0, 1, 0]);
    sim.run(5);
    assert!(sim.forget_is_safe(0, 3));
    sim.forget(0, 3).expect("forget a crashed node");
    let forgotten = sim.nodes[3].id;
    for _ in 0..40 {
        if sim.ipam(1).expect("up").is_forgotten(&forgotten) {
            break;
        }
        sim.step();
    }
    assert!(sim.ipam(1).expect("up").is_forgotten(&forgotten));
    assert!(!sim.ipam(2).expect("up").is_forgotten(&forgotten));
    sim.crash(0);
    sim.crash(1);
    sim.restart(1).expect("restart from the state directory");
    sim.heal();
    for _ in 0..80 {
        sim.step();
        sim.check_safety().expect("safe");
    }
    assert!(
        sim.ipam(2).expect("up").is_forgotten(&forgotten),
        "node 2 learned the reclaim from node 1"
    );
    sim.check_agreement().expect("nodes 1 and 2 agree");
    let node0 = sim.nodes[0].id;
    let ring = sim.ipam(2).expect("up").ownership();
    assert!(
        ring.iter().any(|e| e.owner == node0),
        "the reclaimed space is node 0's (down, not gone): {ring:?}"
    );
}
