//! The mesh end to end (issue 6): `weft launch --datapath userspace` in test-bed hosts,
//! containers (network namespaces) attached with `weft attach`, traffic between them across
//! hosts, and what the underlay sees. Needs root; prints "skipped: ..." otherwise.
//!
//! Run one: `cargo test --test mesh NAME -- --nocapture` (as root).

// Shared with tests/mesh_repair.rs; each uses part of it.
#[path = "mesh/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cluster::{handshake_secs, is_wireguard, underlay_problems, Cluster, Container};
use ipnet::Ipv4Net;
use serde_json::Value;
use weft_testbed::{require_root, wait_until, TestBed};

/// Sent in payloads; must never show up on the underlay.
const MARKER: &[u8] = b"WEFT-MESH-MARKER-3b9f61c2";

const GENEROUS: Duration = Duration::from_secs(60);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A 3-node chain, converged (full mesh handshaken), one container per node.
fn three_with_containers() -> (Cluster, Vec<Container>) {
    let mut c = Cluster::new(3);
    c.launch_chain();
    c.wait_full_mesh(&[0, 1, 2], GENEROUS);
    c.wait_space(&[0, 1, 2], GENEROUS);
    let containers: Vec<Container> = (0..3).map(|i| c.attach(i, &format!("ctr-{i}"))).collect();
    (c, containers)
}

/// Lines holding the marker, about `size` bytes.
fn marker_payload(size: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(size + 64);
    let mut n = 0u64;
    while data.len() < size {
        data.extend_from_slice(MARKER);
        data.extend_from_slice(format!(" line {n:08}\n").as_bytes());
        n += 1;
    }
    data
}

/// Sends `data` over TCP from container `from` to `to` (nc) and checks it arrived intact.
fn tcp_transfer(c: &Cluster, from: &Container, to: &Container, data: &[u8], tag: &str) {
    let sent = c.dir.path().join(format!("{tag}.sent"));
    let got = c.dir.path().join(format!("{tag}.received"));
    std::fs::write(&sent, data).expect("write payload");
    let listen = format!("nc -l {} 5001 > {}", to.addr, got.display());
    let receiver = c
        .bed
        .spawn_in(&to.netns, &["sh", "-c", &listen])
        .expect("nc -l");
    let send = format!("nc -N -w 10 {} 5001 < {}", to.addr, sent.display());
    c.wait(
        &format!("TCP transfer {} -> {}", from.id, to.id),
        secs(20),
        || c.bed.run_ok_in(&from.netns, &["sh", "-c", &send]).is_ok(),
    );
    let done = receiver.wait_timeout(secs(20)).expect("wait for nc -l");
    assert!(done.is_some(), "receiver nc did not finish");
    let received = std::fs::read(&got).expect("read received");
    assert!(
        received == data,
        "TCP transfer {} -> {}: {} bytes sent, {} received (or different)",
        from.id,
        to.id,
        data.len(),
        received.len()
    );
}

#[test]
fn chain_of_four_forms_full_mesh_within_10s() {
    if !require_root("chain_of_four_forms_full_mesh_within_10s") {
        return;
    }
    let mut c = Cluster::new(4);
    c.launch_chain();
    let took = c.wait_full_mesh(&[0, 1, 2, 3], secs(10));
    eprintln!("4 nodes, chain-seeded: every pair handshaken {took:?} after the last launch");
    for i in 0..4 {
        let status = c.status(i).expect("status");
        assert_eq!(status["datapath"], "userspace", "n{i}: {status}");
        assert_eq!(status["members"]["alive"], 4, "n{i}: {status}");
        assert_eq!(status["peers_total"], 3, "n{i}: {status}");
    }
    c.assert_no_warnings();
}

#[test]
fn container_traffic_crosses_hosts_encrypted_only() {
    if !require_root("container_traffic_crosses_hosts_encrypted_only") {
        return;
    }
    let (c, ctrs) = three_with_containers();
    for a in &ctrs {
        for b in &ctrs {
            if a.node != b.node {
                c.wait_ping(a, b, secs(20));
            }
        }
    }
    let captures: Vec<_> = (0..3)
        .map(|i| c.bed.capture(i, "").expect("capture"))
        .collect();
    assert_eq!(
        c.ping(&ctrs[0], ctrs[2].addr, 5),
        5,
        "ping n0 -> n2 lost packets"
    );
    // The host itself (not a container) reaches another node's container, through the
    // tunnel too (from its gateway address, which the peer accepts as n0's).
    assert!(
        c.bed.host(0).ping(ctrs[2].addr.into(), 3),
        "host n0 pings a container on n2"
    );
    let data = marker_payload(256 * 1024);
    tcp_transfer(&c, &ctrs[0], &ctrs[2], &data, "0to2");
    tcp_transfer(&c, &ctrs[1], &ctrs[0], &data, "1to0");
    for (i, capture) in captures.into_iter().enumerate() {
        let packets = capture.finish().expect("finish capture");
        let problems = underlay_problems(&packets, MARKER);
        assert!(
            problems.is_empty(),
            "host {i}: {} packets, not only WireGuard/gossip or marker seen:\n{}",
            packets.len(),
            problems.join("\n")
        );
        // Segmentation offload: one captured packet may be many on the wire; count bytes.
        let wg_data: u64 = packets
            .iter()
            .filter(|p| is_wireguard(p) && p.udp_payload().is_some_and(|m| m[0] == 4))
            .map(|p| u64::from(p.orig_len))
            .sum();
        eprintln!(
            "host {i}: {} packets captured, {wg_data} bytes of WireGuard transport data",
            packets.len()
        );
        if i != 1 {
            // Host 0 sent one transfer and received the other, host 2 received one: each
            // carried at least one transfer's worth of ciphertext.
            assert!(
                wg_data >= data.len() as u64,
                "host {i}: only {wg_data} bytes of WireGuard data for {} bytes sent",
                data.len()
            );
        }
    }
    // The real `wg` reads the daemon's userspace device: n0 has n1 and n2 as peers, with
    // a handshake and the transfers counted.
    let dump = c.wg_dump(0).expect("wg show weft-wg dump");
    let peers = c.peers(0).expect("peers of n0");
    for name in ["n1", "n2"] {
        let key = peers
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["wireguard_public_key"].as_str())
            .unwrap_or_else(|| panic!("{name} has no WireGuard key in {peers:?}"));
        // public-key psk endpoint allowed-ips latest-handshake rx tx keepalive
        let line: Vec<&str> = dump
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{name} ({key}) not a peer in wg's dump:\n{dump}"))
            .split('\t')
            .collect();
        let number = |k: usize| line.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        assert!(number(4) > 0, "{name}: no handshake in {line:?}");
        assert!(
            number(5) > 0 && number(6) > 0,
            "{name}: no transfer in {line:?}"
        );
    }
    let rx: u64 = dump
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').nth(5)?.parse::<u64>().ok())
        .sum();
    assert!(
        rx >= data.len() as u64,
        "n0 received the 1to0 transfer: {rx} bytes\n{dump}"
    );
    c.assert_no_warnings();
}

#[test]
fn killed_node_is_failed_then_rejoins_with_same_address() {
    if !require_root("killed_node_is_failed_then_rejoins_with_same_address") {
        return;
    }
    let (mut c, ctrs) = three_with_containers();
    c.wait_ping(&ctrs[0], &ctrs[2], secs(20));
    let before = c.allocate(2, &ctrs[2].key()).expect("allocate before");
    c.kill(2);
    let took = c.wait("n0 and n1 mark n2 failed", GENEROUS, || {
        (0..2).all(|i| c.peer(i, "n2").is_some_and(|p| p["state"] == "failed"))
    });
    eprintln!("n2 failed everywhere {took:?} after kill -9");

    c.start(2);
    let took = c.wait_full_mesh(&[0, 1, 2], GENEROUS);
    eprintln!("n2 rejoined, full mesh again {took:?} after relaunch");
    let after = c.allocate(2, &ctrs[2].key()).expect("allocate after");
    assert_eq!(
        after["address"], before["address"],
        "same container id, another address after restart"
    );
    assert_eq!(
        c.container_addr(&ctrs[2].netns),
        Some(ctrs[2].addr),
        "container address changed"
    );
    let took = c.wait_ping(&ctrs[0], &ctrs[2], secs(30));
    eprintln!("ping n0 -> n2 works again {took:?} after the mesh was back");
    c.wait_ping(&ctrs[2], &ctrs[1], secs(30));
}

/// The node ids by index, from each node's status.
fn node_ids(c: &Cluster, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            c.status(i).expect("status")["node_id"]
                .as_str()
                .expect("node_id")
                .to_string()
        })
        .collect()
}

/// Pieces (first, last) that node `owner` owns according to its own ipam report.
fn own_pieces(ipam: &Value, owner: &str) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    ipam["pieces"]
        .as_array()
        .expect("ipam pieces")
        .iter()
        .filter(|p| p["owner"] == owner)
        .map(|p| {
            let a = |k: &str| p[k].as_str().and_then(|s| s.parse().ok()).expect("address");
            (a("first"), a("last"))
        })
        .collect()
}

/// The ring as (first, last, owner), to compare views.
fn ring(ipam: &Value) -> Vec<(String, String, String)> {
    ipam["pieces"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
                    (s("first"), s("last"), s("owner"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn partition_then_heal_never_gives_an_address_twice() {
    if !require_root("partition_then_heal_never_gives_an_address_twice") {
        return;
    }
    let (mut c, _) = three_with_containers();
    let ids = node_ids(&c, 3);
    c.bed.partition(&[&[0], &[1, 2]]).expect("partition");
    let apart = |c: &Cluster| {
        ["n1", "n2"]
            .iter()
            .all(|n| c.peer(0, n).is_some_and(|p| p["state"] == "failed"))
            && (1..3).all(|i| c.peer(i, "n0").is_some_and(|p| p["state"] == "failed"))
    };
    let took = c.wait(
        "n0 sees n1, n2 failed and they see n0 failed",
        GENEROUS,
        || apart(&c),
    );
    eprintln!("partition seen by both sides {took:?} after the cut");
    if std::env::var("MESH_TRACE").is_ok() {
        let mut last = String::new();
        let t0 = Instant::now();
        while t0.elapsed() < secs(30) {
            let now: Vec<_> = (0..3)
                .map(|i| {
                    c.peers(i)
                        .unwrap_or_default()
                        .iter()
                        .map(|p| format!("{}={}@{}", p["name"], p["state"], p["incarnation"]))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            let now = format!("{now:?}");
            if now != last {
                eprintln!("{:?}: {now}", t0.elapsed());
                last = now;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Containers on both sides while apart.
    for k in 0..3 {
        c.attach(0, &format!("apart-a-{k}"));
        c.attach(1, &format!("apart-b-{k}"));
        c.attach(2, &format!("apart-c-{k}"));
    }
    assert!(apart(&c), "the sides met again before the heal");
    let states: Vec<_> = (0..3)
        .map(|i| {
            c.peers(i)
                .unwrap_or_default()
                .iter()
                .map(|p| format!("{}={}", p["name"], p["state"]))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    eprintln!("views while apart: {states:?}");
    c.bed.heal().expect("heal");
    let took = c.wait("views converge after heal (all alive)", GENEROUS, || {
        (0..3).all(|i| c.sees_alive(i, &[0, 1, 2]))
    });
    eprintln!("all alive again {took:?} after heal");
    c.wait("ipam rings agree on every node", GENEROUS, || {
        let rings: Vec<_> = (0..3).map(|i| c.ipam(i).map(|v| ring(&v))).collect();
        rings.iter().all(|r| r.is_some() && *r == rings[0])
    });

    // Every container's address, by node, as allocate reports it (same id, same address).
    let mut seen: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut by_node: Vec<Vec<Ipv4Addr>> = vec![Vec::new(); 3];
    for ctr in &c.containers {
        let alloc = c.allocate(ctr.node, &ctr.key()).expect("allocate");
        let addr: Ipv4Net = alloc["address"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("allocation address");
        assert_eq!(addr.addr(), ctr.addr, "{} moved", ctr.id);
        if let Some(other) = seen.insert(ctr.addr, ctr.id.clone()) {
            panic!("{} given to both {other} and {}", ctr.addr, ctr.id);
        }
        by_node[ctr.node].push(ctr.addr);
    }
    // Each node's own pieces (its own report) are disjoint from the others' and hold its
    // containers' addresses; no clashes anywhere.
    let mut owned: Vec<(Ipv4Addr, Ipv4Addr, usize)> = Vec::new();
    for i in 0..3 {
        let ipam = c.ipam(i).expect("ipam");
        let clashes = ipam["clashes"].as_array().map_or(0, Vec::len);
        assert_eq!(clashes, 0, "n{i} reports clashes: {ipam}");
        let mine = own_pieces(&ipam, &ids[i]);
        assert!(!mine.is_empty(), "n{i} owns nothing: {ipam}");
        for addr in &by_node[i] {
            assert!(
                mine.iter().any(|(f, l)| f <= addr && addr <= l),
                "n{i} gave {addr} outside its own pieces {mine:?}"
            );
        }
        owned.extend(mine.into_iter().map(|(f, l)| (f, l, i)));
    }
    owned.sort();
    for w in owned.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "pieces overlap: {:?} (n{}) and {:?} (n{})",
            (w[0].0, w[0].1),
            w[0].2,
            (w[1].0, w[1].1),
            w[1].2
        );
    }
}

#[test]
fn node_with_wrong_secret_never_becomes_a_peer() {
    if !require_root("node_with_wrong_secret_never_becomes_a_peer") {
        return;
    }
    let mut c = Cluster::new(4);
    let other = cluster::new_secret(c.dir.path(), "other.secret");
    c.nodes[3].secret = other;
    c.nodes[3].name = "intruder".into();
    c.launch_chain();
    c.launch(3, &[0, 2]);
    c.wait_full_mesh(&[0, 1, 2], GENEROUS);
    let intruder_key = c
        .peer(3, "intruder")
        .expect("intruder lists itself")
        .get("wireguard_public_key")
        .cloned()
        .expect("key");
    // Give it time to try (the seeds retry with backoff).
    std::thread::sleep(secs(15));
    for i in 0..3 {
        let list = c.peers(i).expect("peers");
        assert!(
            list.iter()
                .all(|p| p["name"] != "intruder" && p["wireguard_public_key"] != intruder_key),
            "n{i} lists the intruder: {list:?}"
        );
    }
    let own = c.peers(3).expect("intruder peers");
    assert_eq!(own.len(), 1, "the intruder knows others: {own:?}");
    assert!(
        own.iter().all(|p| handshake_secs(p).is_none()),
        "the intruder has a handshake: {own:?}"
    );
}

#[test]
fn relay_through_third_node_when_direct_path_is_cut() {
    if !require_root("relay_through_third_node_when_direct_path_is_cut") {
        return;
    }
    let (c, ctrs) = three_with_containers();
    c.wait_ping(&ctrs[0], &ctrs[2], secs(20));
    let direct = |i: usize, peer: &str| {
        c.peer(i, peer)
            .is_some_and(|p| p["link"]["via"].is_null() && handshake_secs(&p).is_some())
    };
    assert!(
        direct(0, "n2") && direct(2, "n0"),
        "n0 <-> n2 not direct to start with"
    );

    c.bed.cut(0, 2).expect("cut 0-2");
    let cut = Instant::now();
    let took = c.wait("n0 and n2 talk via n1", GENEROUS, || {
        c.peer(0, "n2").is_some_and(|p| p["link"]["via"] == "n1")
            && c.peer(2, "n0").is_some_and(|p| p["link"]["via"] == "n1")
    });
    eprintln!("relayed via n1 {took:?} after the cut");
    c.wait_ping(&ctrs[0], &ctrs[2], secs(30));
    c.wait_ping(&ctrs[2], &ctrs[0], secs(30));
    eprintln!(
        "containers ping through the relay {:?} after the cut",
        cut.elapsed()
    );

    c.bed.restore(0, 2).expect("restore 0-2");
    let took = c.wait("n0 <-> n2 back to direct", secs(90), || {
        direct(0, "n2") && direct(2, "n0")
    });
    eprintln!("direct again {took:?} after restore");
    c.wait_ping(&ctrs[0], &ctrs[2], secs(20));
}

#[test]
fn hosts_behind_nat_reach_each_other() {
    if !require_root("hosts_behind_nat_reach_each_other") {
        return;
    }
    let bed = TestBed::builder()
        .hosts(3)
        .nat(&[1, 2])
        .build()
        .expect("test bed with NAT");
    let mut c = Cluster::with_bed(bed);
    c.launch(0, &[]);
    c.launch(1, &[0]);
    c.launch(2, &[0]);
    let took = c.wait("every node sees the others alive", GENEROUS, || {
        (0..3).all(|i| c.sees_alive(i, &[0, 1, 2]))
    });
    eprintln!("gossip through NAT converged in {took:?}");
    let took = c.wait_space(&[0, 1, 2], GENEROUS);
    eprintln!("every node owns address space {took:?} later");
    let ctrs: Vec<Container> = (0..3).map(|i| c.attach(i, &format!("nat-{i}"))).collect();
    for a in &ctrs {
        for b in &ctrs {
            if a.node != b.node {
                let took = c.wait_ping(a, b, secs(90));
                eprintln!("{} -> {}: {took:?}", a.id, b.id);
            }
        }
    }
    let link = c.peer(1, "n2").expect("n1 lists n2")["link"].clone();
    eprintln!("n1 -> n2 link: {link}");
    // Members behind NAT are reached over the connections they opened, so nobody suspects
    // them (they used to flap between suspect and failed).
    c.assert_no_warnings();
}

/// Packets counted by the fail-closed drop counter in host `i`'s `inet weft` table.
fn fail_closed_drops(c: &Cluster, i: usize) -> u64 {
    let out = c
        .bed
        .host(i)
        .run_ok(&[
            "nft",
            "-j",
            "list",
            "counter",
            "inet",
            "weft",
            "fail_closed_drops",
        ])
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find_map(|item| item["counter"]["packets"].as_u64())
        })
        .unwrap_or(0)
}

/// weft's routing table (mesh::host::ROUTE_TABLE, 0x6674).
const ROUTE_TABLE: &str = "26228";

/// Ping and marker datagrams from `a` to `b` for about `secs` seconds, in the background.
fn background_traffic(
    c: &Cluster,
    a: &Container,
    b: &Container,
    secs: u32,
) -> [weft_testbed::Proc; 2] {
    let n = secs * 20;
    let send = format!(
        "for i in $(seq {n}); do echo '{}' | nc -u -w0 {} 5002; sleep 0.05; done",
        String::from_utf8_lossy(MARKER),
        b.addr
    );
    let sender = c
        .bed
        .spawn_in(&a.netns, &["sh", "-c", &send])
        .expect("udp sender");
    let pinger = c
        .bed
        .spawn_in(
            &a.netns,
            &[
                "ping",
                "-n",
                "-c",
                &n.to_string(),
                "-i",
                "0.05",
                &b.addr.to_string(),
            ],
        )
        .expect("ping");
    [pinger, sender]
}

/// Waits for background traffic to end; ping's replies.
fn finish_traffic(traffic: [weft_testbed::Proc; 2]) -> u32 {
    for p in &traffic {
        assert!(
            p.wait_timeout(secs(30)).expect("wait").is_some(),
            "traffic did not end: {}",
            p.command()
        );
    }
    let out = traffic[0].output().expect("ping output").stdout;
    eprintln!("  {}", out.lines().rev().nth(1).unwrap_or(""));
    cluster::received(&out)
}

/// The userspace datapath serves no WireGuard UAPI socket (and one at the fixed path
/// /var/run/wireguard/weft-wg.sock would be shared by every test-bed host on this machine), so
/// `wg set weft-wg peer KEY remove` cannot reach it. The peer goes by other means: first A's
/// routes into the tunnel are flushed while the daemon runs (a reconfiguration gap), then A's
/// daemon is killed with -9, which takes the userspace device and every peer with it. Either
/// way pod traffic for B has no tunnel: it must be dropped, never sent in the clear.
#[test]
fn fail_closed_when_the_wireguard_peer_is_removed() {
    if !require_root("fail_closed_when_the_wireguard_peer_is_removed") {
        return;
    }
    let mut c = Cluster::new(2);
    c.launch_chain();
    c.wait_full_mesh(&[0, 1], GENEROUS);
    let a = c.attach(0, "fc-a");
    let b = c.attach(1, "fc-b");
    c.wait_ping(&a, &b, secs(20));
    assert!(
        c.ping(&a, b.addr, 5) >= 4,
        "steady ping before the removal lost packets"
    );
    let capture = c.bed.capture(0, "").expect("capture");

    // 0. The WireGuard peer for n1 removed on n0 by the real `wg`, while pinging; the
    // daemon's next reconcile round puts it back.
    let key = c
        .peers(0)
        .and_then(|peers| {
            peers
                .iter()
                .find(|p| p["name"] == "n1")
                .and_then(|p| p["wireguard_public_key"].as_str().map(String::from))
        })
        .expect("n1's WireGuard key in n0's peers");
    let traffic = background_traffic(&c, &a, &b, 3);
    std::thread::sleep(Duration::from_millis(300));
    c.wg(0, &["set", cluster::WG_IF, "peer", &key, "remove"])
        .expect("wg set peer remove");
    let removed = !c.wg_dump(0).expect("wg show").contains(&key);
    eprintln!("peer removed with wg while pinging (gone right after: {removed}):");
    let replies_removed = finish_traffic(traffic);
    let restored = wait_until(secs(10), || {
        c.wg_dump(0).is_ok_and(|dump| dump.contains(&key))
    });
    assert!(restored, "the daemon did not put n1's peer back");
    c.wait_ping(&a, &b, secs(20));

    // 1. Daemon running, its routes into the tunnel gone.
    let drops_before = fail_closed_drops(&c, 0);
    let traffic = background_traffic(&c, &a, &b, 3);
    std::thread::sleep(Duration::from_millis(300));
    c.bed
        .host(0)
        .run_ok(&["ip", "route", "flush", "table", ROUTE_TABLE])
        .expect("flush weft's route table");
    eprintln!("routes flushed while pinging:");
    let replies_gap = finish_traffic(traffic);
    let drops_gap = fail_closed_drops(&c, 0) - drops_before;

    // 2. Daemon killed: no device, no peers.
    let traffic = background_traffic(&c, &a, &b, 3);
    std::thread::sleep(Duration::from_millis(300));
    c.kill(0);
    eprintln!("daemon on n0 killed while pinging:");
    let gone = c
        .bed
        .host(0)
        .run(&["ip", "link", "show", cluster::WG_IF])
        .is_ok_and(|o| !o.status.success());
    let replies_dead = finish_traffic(traffic);
    let drops_dead = fail_closed_drops(&c, 0) - drops_before - drops_gap;
    let packets = capture.finish().expect("capture");
    eprintln!(
        "fail-closed drops on n0: {drops_gap} with routes flushed, {drops_dead} with the daemon dead; {} packets captured",
        packets.len()
    );
    eprintln!("{} on n0 after kill -9: gone = {gone}", cluster::WG_IF);
    let problems = underlay_problems(&packets, MARKER);
    assert!(
        problems.is_empty(),
        "cleartext left n0 while it had no tunnel to n1:\n{}",
        problems.join("\n")
    );
    assert!(
        removed || replies_removed < 60,
        "removing the peer changed nothing: still listed, {replies_removed}/60 replies"
    );
    assert!(
        replies_dead < 60,
        "pings kept being answered with n0's daemon dead ({replies_dead}/60)"
    );
    assert!(
        drops_dead > 0,
        "with the daemon dead, nothing hit the fail-closed drop rule ({replies_dead}/60 replies)"
    );
    assert!(
        drops_gap > 0 || replies_gap < 60,
        "flushing the routes changed nothing: no drop, {replies_gap}/60 replies"
    );

    // Restarted, the daemon puts the device, peer and routes back: traffic flows again.
    c.start(0);
    c.wait_full_mesh(&[0, 1], GENEROUS);
    c.wait_ping(&a, &b, secs(30));
}

/// The underlay check itself (no root needed): WireGuard and gossip pass; cleartext pod
/// traffic, the marker, and malformed WireGuard-port datagrams are reported.
#[test]
fn underlay_check_tells_wireguard_from_cleartext() {
    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> weft_testbed::Packet {
        let total = 20 + l4.len();
        let mut d = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            proto,
            0,
            0,
        ];
        d.extend_from_slice(&src);
        d.extend_from_slice(&dst);
        d.extend_from_slice(l4);
        weft_testbed::Packet {
            data: d,
            timestamp: Duration::ZERO,
            orig_len: total as u32,
        }
    }
    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut u = Vec::new();
        for v in [sport, dport, len, 0] {
            u.extend_from_slice(&v.to_be_bytes());
        }
        u.extend_from_slice(payload);
        u
    }
    let hosts = ([198, 18, 0, 10], [198, 18, 0, 11]);
    let wg = |kind: u8, len: usize| {
        let mut m = vec![0u8; len];
        m[0] = kind;
        m[4..].fill(0xa5);
        ipv4(17, hosts.0, hosts.1, &udp(6784, 6784, &m))
    };
    let good = [
        wg(1, 148),
        wg(2, 92),
        wg(3, 64),
        wg(4, 32),
        wg(4, 1456),
        wg(4, 116),
        ipv4(17, hosts.0, hosts.1, &udp(6783, 6783, &[0xc3; 1200])),
    ];
    assert!(underlay_problems(&good, MARKER).is_empty());
    assert!(good[..5].iter().all(is_wireguard));

    let mut with_marker = vec![0u8; 16];
    with_marker.extend_from_slice(MARKER);
    let bad = [
        wg(1, 100),
        wg(5, 148),
        wg(4, 31),
        wg(2, 148),
        ipv4(17, hosts.0, hosts.1, &udp(6784, 6784, &with_marker)),
        ipv4(1, [10, 32, 0, 2], [10, 33, 0, 2], &[8, 0, 0, 0, 0, 1, 0, 1]),
        ipv4(17, hosts.0, hosts.1, &udp(5002, 5002, b"hello")),
        ipv4(6, hosts.0, hosts.1, &[0; 20]),
    ];
    for p in &bad {
        assert_eq!(
            underlay_problems(std::slice::from_ref(p), MARKER).len(),
            1,
            "{p:?}"
        );
    }
}
