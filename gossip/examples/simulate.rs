//! Run one simulated scenario and print convergence, failure detection, false positives and
//! bandwidth:
//!
//! ```text
//! cargo run --release -p weft-gossip --example simulate -- --nodes 1000 --loss 0.1 --seed 1 [--json]
//! ```
//!
//! Scenario: start a converged cluster, let it settle, publish a record update on one node
//! (time until every node has it), crash another node (time until each node declares it
//! failed), then keep running for `--steady` seconds of virtual time. A false positive is any
//! node other than the crashed one declared failed by anyone. `WEFT_SIM_TRACE=1` prints every
//! liveness event about other nodes to stderr during the crash phase.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weft_gossip::sim::{Sim, SimConfig};
use weft_gossip::{Config, Event, NodeId};

struct Args {
    nodes: usize,
    loss: f64,
    seed: u64,
    json: bool,
    steady: u64,
    probe_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 1000,
        loss: 0.0,
        seed: 1,
        json: false,
        steady: 60,
        probe_ms: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = value("--nodes")?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--loss" => a.loss = value("--loss")?.parse().map_err(|e| format!("--loss: {e}"))?,
            "--seed" => a.seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--steady" => a.steady = value("--steady")?.parse().map_err(|e| format!("--steady: {e}"))?,
            "--probe-ms" => a.probe_ms = value("--probe-ms")?.parse().map_err(|e| format!("--probe-ms: {e}"))?,
            "--json" => a.json = true,
            "-h" | "--help" => {
                return Err("usage: simulate [--nodes N] [--loss P] [--seed S] [--steady SECS] [--probe-ms MS] [--json]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.nodes < 3 {
        return Err("--nodes must be at least 3".into());
    }
    if !(0.0..1.0).contains(&a.loss) {
        return Err("--loss must be in [0, 1)".into());
    }
    Ok(a)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let wall = Instant::now();
    let gossip = Config {
        probe_interval: Duration::from_millis(args.probe_ms),
        probe_timeout: Duration::from_millis(args.probe_ms / 2),
        ..Config::default()
    };
    let mut sim = Sim::new(SimConfig {
        nodes: args.nodes,
        seed: args.seed,
        loss: args.loss,
        gossip,
        ..SimConfig::default()
    });
    let setup = wall.elapsed();
    sim.run_for(Duration::from_secs(5));
    let ids = sim.ids().to_vec();
    let (publisher, victim) = (ids[0], ids[1]);
    let bytes_before: u64 = ids.iter().map(|id| sim.bytes_sent(id)).sum();
    let t_measure = sim.elapsed();
    sim.clear_events();

    // 1. A record update reaches every node.
    let t0 = sim.elapsed();
    let _ = sim.update_record(&publisher, |r| {
        r.labels.insert("scenario".into(), "updated".into());
    });
    let want = sim.node(&publisher).map(|c| c.local_version()).unwrap_or(0);
    let mut seen: BTreeMap<NodeId, Duration> = BTreeMap::new();
    let mut cursor = 0;
    let step = Duration::from_millis(20);
    while seen.len() < args.nodes - 1 && sim.elapsed() - t0 < Duration::from_secs(60) {
        sim.run_for(step);
        for e in &sim.events()[cursor..] {
            if e.event == Event::Updated(publisher) && e.observer != publisher {
                let ok = sim
                    .node(&e.observer)
                    .and_then(|c| c.record(&publisher))
                    .is_some_and(|r| r.version >= want);
                if ok {
                    seen.entry(e.observer).or_insert(e.at - t0);
                }
            }
        }
        cursor = sim.events().len();
    }
    let mut update_times: Vec<Duration> = seen.values().copied().collect();
    let update_reached = update_times.len();
    let update_median = median(&mut update_times);
    let update_max = update_times.last().copied().unwrap_or_default();

    // 2. A crashed node is declared failed by every other node.
    let t1 = sim.elapsed();
    sim.crash(&victim);
    let mut failed_at: BTreeMap<NodeId, Duration> = BTreeMap::new();
    let mut false_positives: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
    let scan = |sim: &Sim,
                from: usize,
                failed_at: &mut BTreeMap<NodeId, Duration>,
                fp: &mut BTreeSet<(NodeId, NodeId)>| {
        for e in &sim.events()[from..] {
            if std::env::var_os("WEFT_SIM_TRACE").is_some()
                && *e.event.node() != victim
                && !matches!(e.event, Event::Updated(_))
            {
                eprintln!("{:?} obs={:?} {:?}", e.at, e.observer, e.event);
            }
            if let Event::Failed(n) = e.event {
                if n == victim {
                    failed_at.entry(e.observer).or_insert(e.at - t1);
                } else {
                    fp.insert((e.observer, n));
                }
            }
        }
        sim.events().len()
    };
    cursor = scan(&sim, 0, &mut failed_at, &mut false_positives);
    while failed_at.len() < args.nodes - 1 && sim.elapsed() - t1 < Duration::from_secs(120) {
        sim.run_for(step);
        cursor = scan(&sim, cursor, &mut failed_at, &mut false_positives);
    }
    let mut detect: Vec<Duration> = failed_at.values().copied().collect();
    let detected_by = detect.len();
    let detect_median = median(&mut detect);
    let detect_max = detect.last().copied().unwrap_or_default();

    // 3. Steady state with the loss, no crashes.
    let steady = Duration::from_secs(args.steady);
    let t2 = sim.elapsed();
    while sim.elapsed() - t2 < steady {
        sim.run_for(Duration::from_secs(1).min(steady - (sim.elapsed() - t2)));
        scan(&sim, cursor, &mut failed_at, &mut false_positives);
        sim.clear_events();
        cursor = 0;
    }
    let measured = (sim.elapsed() - t_measure).as_secs_f64();
    let bytes: u64 = ids.iter().map(|id| sim.bytes_sent(id)).sum::<u64>() - bytes_before;
    let per_node = bytes as f64 / args.nodes as f64 / measured;
    let refutations: u64 = sim.running().map(|(_, c)| c.stats().refutations).sum();
    let suspicions: u64 = sim.running().map(|(_, c)| c.stats().probes_failed).sum();
    let (mut dgrams, mut dgram_bytes, mut streams, mut stream_bytes) = (0u64, 0u64, 0u64, 0u64);
    for (_, c) in sim.running() {
        let s = c.stats();
        dgrams += s.datagrams_out;
        dgram_bytes += s.bytes_out - s.stream_bytes_out;
        streams += s.streams_out;
        stream_bytes += s.stream_bytes_out;
    }
    let avg_dgram = dgram_bytes as f64 / dgrams.max(1) as f64;
    let stream_share = stream_bytes as f64 / (stream_bytes + dgram_bytes).max(1) as f64;

    if args.json {
        let v = serde_json::json!({
            "nodes": args.nodes, "loss": args.loss, "seed": args.seed, "probe_interval_ms": args.probe_ms,
            "update_reached": update_reached, "update_median_s": update_median.as_secs_f64(), "update_max_s": update_max.as_secs_f64(),
            "crash_detected_by": detected_by, "detect_median_s": detect_median.as_secs_f64(), "detect_max_s": detect_max.as_secs_f64(),
            "false_positives": false_positives.len(), "failed_probes": suspicions, "refutations": refutations,
            "bytes_per_node_per_s": per_node, "avg_datagram_bytes": avg_dgram, "stream_byte_share": stream_share, "simulated_s": sim.elapsed().as_secs_f64(),
            "setup_wall_s": setup.as_secs_f64(), "wall_s": wall.elapsed().as_secs_f64(),
        });
        println!("{v}");
    } else {
        println!(
            "weft-gossip simulation: {} nodes, {:.0}% loss, seed {}, probe interval {} ms",
            args.nodes,
            args.loss * 100.0,
            args.seed,
            args.probe_ms
        );
        println!("{:<38} {:>12} {:>12}", "", "median", "max");
        println!(
            "{:<38} {:>11.2}s {:>11.2}s",
            format!(
                "record update at {}/{} nodes",
                update_reached,
                args.nodes - 1
            ),
            update_median.as_secs_f64(),
            update_max.as_secs_f64()
        );
        println!(
            "{:<38} {:>11.2}s {:>11.2}s",
            format!("crash declared by {}/{} nodes", detected_by, args.nodes - 1),
            detect_median.as_secs_f64(),
            detect_max.as_secs_f64()
        );
        println!(
            "{:<38} {:>12}",
            "false positives (observer, node)",
            false_positives.len()
        );
        println!(
            "{:<38} {:>12}",
            "failed probes / refutations",
            format!("{suspicions} / {refutations}")
        );
        println!("{:<38} {:>10.0} B/s", "sent per node", per_node);
        println!(
            "{:<38} {:>12}",
            "datagrams / avg size / streams",
            format!("{dgrams} / {avg_dgram:.0} B / {streams}")
        );
        println!(
            "{:<38} {:>11.0}%",
            "stream share of bytes",
            stream_share * 100.0
        );
        println!(
            "{:<38} {:>11.1}s (wall {:.1}s, setup {:.1}s)",
            "simulated",
            sim.elapsed().as_secs_f64(),
            wall.elapsed().as_secs_f64(),
            setup.as_secs_f64()
        );
    }
}
