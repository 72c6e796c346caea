//! Masquerading (issue 12): pod traffic to destinations outside the cluster range leaves a
//! node with the node's address, so pods reach the host's network; traffic between pods is
//! never NATed; the host reaches its pods and other nodes' pods and they reach it; a flushed
//! ruleset gets the masquerading rule back within about a second; `--no-masquerade` turns it
//! off. Real `weft launch` nodes in test-bed hosts, real packets captured; needs root.

// Shared with tests/mesh.rs; each uses part of it.
#[path = "mesh/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use cluster::{ping_in, Cluster, Container};
use weft_testbed::{require_root, Packet};

const GENEROUS: Duration = Duration::from_secs(60);

/// How long a repair may take here: the daemon reads the host every second; the rest is
/// room for a loaded machine.
const REPAIR: Duration = Duration::from_secs(5);

/// The UDP port the receivers listen on (nothing needs to listen: the capture sees it).
const PORT: &str = "5004";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// One UDP datagram carrying `payload` from namespace `netns` to `dst`, from a new socket
/// (a new source port: a new conntrack entry, so NAT decides afresh). bash's /dev/udp, not
/// `nc -w0`, which may quit before it has read its input.
fn send_udp(c: &Cluster, netns: &str, dst: Ipv4Addr, payload: &str) {
    let script = format!("echo '{payload}' > /dev/udp/{dst}/{PORT}");
    c.bed
        .run_ok_in(netns, &["bash", "-c", &script])
        .expect("send a datagram");
}

/// The source addresses of the captured datagrams to [`PORT`] carrying `payload` (not the
/// ICMP errors quoting them).
fn sources(packets: &[Packet], payload: &str) -> Vec<IpAddr> {
    let port: u16 = PORT.parse().expect("port");
    packets
        .iter()
        .filter(|p| p.is_udp(port) && p.contains(payload.as_bytes()))
        .filter_map(Packet::src)
        .collect()
}

/// The source addresses of the ICMP echo requests to `dst` in a capture.
fn ping_sources(packets: &[Packet], dst: Ipv4Addr) -> Vec<IpAddr> {
    packets
        .iter()
        .filter(|p| p.is_icmp() && p.dst() == Some(IpAddr::V4(dst)))
        .filter(|p| {
            p.transport()
                .is_some_and(|(_, off)| p.data.get(off) == Some(&8))
        })
        .filter_map(Packet::src)
        .collect()
}

/// Container `ctr`'s default gateway: its node's gateway address on the bridge.
fn gateway(c: &Cluster, ctr: &Container) -> Ipv4Addr {
    let routes = c
        .bed
        .run_ok_in(&ctr.netns, &["ip", "-4", "route", "show", "default"])
        .expect("ip route");
    routes
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no default route in {}: {routes}", ctr.netns))
}

/// Host `i`'s `masquerading` chain, if it has one.
fn masquerading_chain(c: &Cluster, i: usize) -> Option<String> {
    c.bed
        .host(i)
        .run_ok(&["nft", "list", "chain", "inet", "weft", "masquerading"])
        .ok()
}

/// True if host `i` masquerades the cluster range.
fn masquerades(c: &Cluster, i: usize) -> bool {
    masquerading_chain(c, i).is_some_and(|chain| {
        chain.contains("ip saddr 10.32.0.0/12 ip daddr != { 10.32.0.0/12, 224.0.0.0/4 }")
            && chain.contains("masquerade")
    })
}

/// Sends a marker datagram and `count` pings from `ctr` to host `to`'s underlay address and
/// returns what `to` saw: the datagram's sources and the echo requests' sources. The pings
/// must be answered when `answered`.
fn to_underlay(
    c: &Cluster,
    ctr: &Container,
    to: usize,
    marker: &str,
    answered: bool,
) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let dst = c.bed.host(to).underlay_ip();
    let capture = c
        .bed
        .capture(to, &format!("udp port {PORT} or icmp"))
        .expect("capture");
    send_udp(c, &ctr.netns, dst, marker);
    let replies = ping_in(&c.bed, &ctr.netns, dst.into(), 2);
    let seen = capture
        .wait_for(secs(3), |p| p.contains(marker.as_bytes()))
        .expect("capture");
    let packets = capture.finish().expect("capture");
    assert!(
        seen,
        "{marker}: the datagram from {} never reached host {to}",
        ctr.addr
    );
    if answered {
        assert!(
            replies > 0,
            "{marker}: host {to} did not answer {}'s pings",
            ctr.addr
        );
    }
    (sources(&packets, marker), ping_sources(&packets, dst))
}

#[test]
fn pods_leave_the_cluster_with_the_node_address_and_keep_theirs_between_pods() {
    if !require_root("pods_leave_the_cluster_with_the_node_address_and_keep_theirs_between_pods") {
        return;
    }
    // Hosts 0 and 1 run weft; host 2 is a plain host on the same underlay, no weft.
    let mut c = Cluster::new(3);
    c.launch(0, &[]);
    c.launch(1, &[0]);
    c.wait_full_mesh(&[0, 1], GENEROUS);
    c.wait_space(&[0, 1], GENEROUS);
    let a = c.attach(0, "masq-a");
    let b = c.attach(1, "masq-b");
    c.wait_ping(&a, &b, secs(20));
    assert!(
        masquerades(&c, 0) && masquerades(&c, 1),
        "{:?}",
        masquerading_chain(&c, 0)
    );
    let node0 = IpAddr::V4(c.bed.host(0).underlay_ip());

    // (a) To a host without weft: the datagram and the pings come from node 0's underlay
    // address, and the answers find their way back to the pod.
    let (udp, icmp) = to_underlay(&c, &a, 2, "weft-masq-to-plain-host", true);
    assert_eq!(
        udp,
        vec![node0],
        "the plain host saw the datagram from {udp:?}"
    );
    assert!(
        !icmp.is_empty() && icmp.iter().all(|s| *s == node0),
        "pings from {icmp:?}"
    );
    // To the other node's underlay address (not its pods): masqueraded just the same.
    let (udp, icmp) = to_underlay(&c, &a, 1, "weft-masq-to-node-1", true);
    assert_eq!(udp, vec![node0], "n1's host saw the datagram from {udp:?}");
    assert!(icmp.iter().all(|s| *s == node0), "pings from {icmp:?}");

    // (b) Pod to pod across nodes, both ways: the receiver sees the sender's pod address.
    for (from, to) in [(&a, &b), (&b, &a)] {
        let capture = c
            .bed
            .capture_in(&to.netns, "eth0", &format!("udp port {PORT} or icmp"))
            .expect("capture in the pod");
        let marker = format!("weft-pod-to-pod-{}", from.id);
        send_udp(&c, &from.netns, to.addr, &marker);
        assert!(
            c.ping(from, to.addr, 2) > 0,
            "{} cannot ping {}",
            from.id,
            to.id
        );
        let seen = capture
            .wait_for(secs(3), |p| p.contains(marker.as_bytes()))
            .expect("capture");
        let packets = capture.finish().expect("capture");
        assert!(seen, "{marker} never arrived");
        assert_eq!(sources(&packets, &marker), vec![IpAddr::V4(from.addr)]);
        let pings = ping_sources(&packets, to.addr);
        assert!(
            !pings.is_empty() && pings.iter().all(|s| *s == IpAddr::V4(from.addr)),
            "pings to {} came from {pings:?}",
            to.id
        );
    }

    // The host reaches its pods and the other node's pods; they reach it (its gateway
    // address through the tunnel, its underlay address masqueraded).
    let host0 = c.bed.host(0).name().to_owned();
    for (what, ns, dst) in [
        ("host 0 -> its pod", host0.as_str(), a.addr),
        ("host 0 -> n1's pod", host0.as_str(), b.addr),
        (
            "n1's pod -> host 0's gateway",
            b.netns.as_str(),
            gateway(&c, &a),
        ),
        (
            "n1's pod -> host 0's underlay",
            b.netns.as_str(),
            c.bed.host(0).underlay_ip(),
        ),
        (
            "host 0's pod -> host 0's underlay",
            a.netns.as_str(),
            c.bed.host(0).underlay_ip(),
        ),
    ] {
        assert!(
            ping_in(&c.bed, ns, dst.into(), 2) > 0,
            "{what} ({dst}): no answer"
        );
    }
    c.assert_no_warnings();

    // (d) The whole ruleset flushed: the masquerading rule is back within a round or two,
    // and a new flow is masqueraded again.
    let host = c.bed.host(0);
    host.run_ok(&["nft", "flush", "ruleset"]).expect("flush");
    assert!(!masquerades(&c, 0), "the flush left the rule");
    let took = c.wait("masquerading back after nft flush ruleset", REPAIR, || {
        masquerades(&c, 0)
    });
    eprintln!("masquerading back {took:?} after nft flush ruleset");
    let (udp, _) = to_underlay(&c, &a, 2, "weft-masq-after-flush", true);
    assert_eq!(
        udp,
        vec![node0],
        "after the flush the datagram came from {udp:?}"
    );
    // Only the masquerading chain deleted: named as such, and back as well.
    host.run_ok(&["nft", "delete", "chain", "inet", "weft", "masquerading"])
        .expect("delete the chain");
    let took = c.wait("masquerading chain back", REPAIR, || masquerades(&c, 0));
    eprintln!("masquerading chain back {took:?} after it was deleted");
    let (udp, _) = to_underlay(&c, &a, 2, "weft-masq-after-delete", true);
    assert_eq!(
        udp,
        vec![node0],
        "after the deletion the datagram came from {udp:?}"
    );
    c.wait_ping(&a, &b, secs(10));
    for needle in [
        "nftables table inet weft missing: restored",
        "nftables chain inet weft masquerading missing: restored",
    ] {
        let log = c.log(0);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        assert_eq!(lines.len(), 1, "not one log line {needle:?}: {lines:#?}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
    }
    assert_eq!(
        c.metric(0, "weft_drift_repairs_total{kind=\"firewall\"}"),
        Some(2.0)
    );
}

#[test]
fn without_masquerading_pods_leave_with_their_own_address() {
    if !require_root("without_masquerading_pods_leave_with_their_own_address") {
        return;
    }
    // Host 0 runs weft with --no-masquerade; host 1 is a plain host.
    let mut c = Cluster::new(2);
    c.nodes[0].extra_args = vec!["--no-masquerade".into()];
    c.launch(0, &[]);
    c.wait_space(&[0], GENEROUS);
    let a = c.attach(0, "plain-a");
    c.wait("the fail-closed table in place", GENEROUS, || {
        c.bed
            .host(0)
            .run_ok(&["nft", "list", "table", "inet", "weft"])
            .is_ok()
    });
    assert_eq!(
        masquerading_chain(&c, 0),
        None,
        "a masquerading chain with --no-masquerade"
    );
    // (c) The pod's own address arrives at the other host (which has no route back to it).
    let (udp, icmp) = to_underlay(&c, &a, 1, "weft-no-masq", false);
    assert_eq!(
        udp,
        vec![IpAddr::V4(a.addr)],
        "the datagram came from {udp:?}"
    );
    assert!(
        !icmp.is_empty() && icmp.iter().all(|s| *s == IpAddr::V4(a.addr)),
        "pings from {icmp:?}"
    );
    // The host still reaches its pod and the pod the host.
    assert!(ping_in(&c.bed, c.bed.host(0).name(), a.addr.into(), 2) > 0);
    assert!(ping_in(&c.bed, &a.netns, gateway(&c, &a).into(), 2) > 0);
    c.assert_no_warnings();
}
