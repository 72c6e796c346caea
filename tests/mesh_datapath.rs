//! The datapath with the real daemon: three `weft launch --datapath userspace` nodes in
//! test-bed hosts (chain-seeded, own state dirs, sockets and secret), a container on each
//! attached with `weft attach`; containers ping across every pair; then the underlay between
//! n0 and n2 is cut and their containers still ping, through n1 (`weft peers -o json` says
//! so on both ends); restored, the path goes back to direct. Needs root.

// The mesh tests' harness; this file uses part of it.
#[allow(dead_code)]
#[path = "mesh/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{Cluster, Container, BIN};
use serde_json::Value;
use weft_testbed::require_root;

const GENEROUS: Duration = Duration::from_secs(60);

/// `weft peers -o json` of node `i`, run in its host like an operator would.
fn peers_cli(c: &Cluster, i: usize) -> Option<Vec<Value>> {
    let node = &c.nodes[i];
    let socket = node.socket.to_str()?;
    let out = c
        .bed
        .host(node.host)
        .run(&[BIN, "peers", "-o", "json", "--api-socket", socket])
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).ok()
}

/// What node `i`'s `weft peers` says about the path to `peer`: `Some(None)` direct,
/// `Some(Some(relay))` through a relay, `None` if it has no tunnel entry for it.
fn path(c: &Cluster, i: usize, peer: &str) -> Option<Option<String>> {
    let peers = peers_cli(c, i)?;
    let entry = peers.into_iter().find(|p| p["name"] == peer)?;
    let link = entry.get("link").filter(|l| !l.is_null())?;
    Some(link["via"].as_str().map(str::to_owned))
}

fn ping_all_pairs(c: &Cluster, ctrs: &[Container], timeout: Duration) {
    for from in ctrs {
        for to in ctrs {
            if from.node != to.node {
                c.wait_ping(from, to, timeout);
            }
        }
    }
}

#[test]
fn containers_ping_every_pair_then_through_a_relay_and_back_to_direct() {
    if !require_root("containers_ping_every_pair_then_through_a_relay_and_back_to_direct") {
        return;
    }
    let mut c = Cluster::new(3);
    c.launch_chain();
    c.wait_full_mesh(&[0, 1, 2], GENEROUS);
    let ctrs: Vec<Container> = (0..3).map(|i| c.attach(i, &format!("dp-{i}"))).collect();
    ping_all_pairs(&c, &ctrs, Duration::from_secs(20));
    for i in 0..3 {
        let status = c.status(i).expect("status answers");
        assert_eq!(status["datapath"], "userspace", "node {i}: {status}");
    }
    c.wait("n0 and n2 direct", GENEROUS, || {
        path(&c, 0, "n2") == Some(None) && path(&c, 2, "n0") == Some(None)
    });

    c.bed.cut(0, 2).expect("cut n0-n2");
    let took = c.wait("n0 <-> n2 via n1 on both ends", GENEROUS, || {
        path(&c, 0, "n2") == Some(Some("n1".into())) && path(&c, 2, "n0") == Some(Some("n1".into()))
    });
    eprintln!("relayed via n1 {took:?} after the cut");
    // The relay itself stays direct to both.
    assert_eq!(path(&c, 1, "n0"), Some(None));
    assert_eq!(path(&c, 1, "n2"), Some(None));
    c.wait_ping(&ctrs[0], &ctrs[2], Duration::from_secs(30));
    c.wait_ping(&ctrs[2], &ctrs[0], Duration::from_secs(30));
    // No way around the relay: the hosts themselves cannot reach each other.
    let (h0, h2) = (c.bed.host(0), c.bed.host(2));
    assert!(
        !h0.ping(h2.public_ip().into(), 1),
        "underlay n0-n2 still open"
    );

    c.bed.restore(0, 2).expect("restore n0-n2");
    let took = c.wait("n0 <-> n2 direct again", Duration::from_secs(90), || {
        path(&c, 0, "n2") == Some(None) && path(&c, 2, "n0") == Some(None)
    });
    eprintln!("direct again {took:?} after restore");
    ping_all_pairs(&c, &ctrs, Duration::from_secs(20));
}
