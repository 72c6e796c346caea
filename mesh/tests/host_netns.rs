//! The host plumbing (`weft_mesh::host`) against a real kernel, inside test namespaces: the
//! netlink and nft code runs in-process on a thread that entered the namespace (see
//! [`netns::run_in`]), and the results are checked with `ip` and `nft`.
//!
//! There is no kernel WireGuard module on the test machines, so a TUN link named like the
//! WireGuard interface (as the userspace backend has) stands in: routes only need a link.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use weft_mesh::host::{self, BridgeSpec, Change, HostState, Netlink, RouteSpec, ROUTE_TABLE};
use weft_testbed::{Host, TestBed};

mod netns {
    use std::fs::File;
    use std::future::Future;

    use nix::sched::{setns, CloneFlags};

    /// Runs `f` on a new thread that has entered network namespace `name`, with a
    /// current-thread tokio runtime, and returns its result. Anything created on that thread
    /// (netlink sockets, child processes such as `nft`) lives in the namespace; the thread
    /// ends afterwards, so the test's own threads never leave the root namespace.
    pub fn run_in<T, F, Fut>(name: &str, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns =
                        File::open(format!("/run/netns/{name}")).expect("open the test namespace");
                    setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    runtime.block_on(f())
                })
                .join()
                .expect("netns thread panicked")
        })
    }
}

const WG: &str = "weft-wg";

fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

/// A route to a peer's space: host traffic leaves from the gateway address.
fn peer_route(dst: IpNet) -> RouteSpec {
    RouteSpec {
        src: Some("10.32.1.1".parse().expect("an address")),
        ..RouteSpec::weft(dst, WG)
    }
}

fn desired(peers: &[&str]) -> HostState {
    let mut state = HostState::new(
        BridgeSpec {
            name: host::BRIDGE_NAME.into(),
            gateway: net("10.32.1.1/24"),
            mtu: 1420,
        },
        WG,
        [net("10.32.0.0/12")],
        [net("10.32.1.0/24")],
    );
    for p in peers {
        state.add_peer_space(net(p)).expect("valid peer space");
    }
    state
}

fn reconcile(h: &Host, state: &HostState) -> Vec<Change> {
    netns::run_in(h.name(), || async {
        let nl = Netlink::connect().expect("netlink");
        host::reconcile(&nl, state).await.expect("reconcile")
    })
}

fn weft_table(h: &Host) -> String {
    h.run_ok(&["ip", "route", "show", "table", &ROUTE_TABLE.to_string()])
        .expect("ip route")
}

fn add_stand_in_wg(h: &Host) {
    h.run_ok(&["ip", "tuntap", "add", "dev", WG, "mode", "tun"])
        .expect("TUN link");
    h.run_ok(&["ip", "link", "set", WG, "up"]).expect("link up");
}

#[test]
fn host_state_is_applied_idempotently_diffed_and_reset() {
    if !weft_testbed::require_root("host_state_is_applied_idempotently_diffed_and_reset") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let h = bed.host(0);
    add_stand_in_wg(h);
    // Foreign routes: one in main, one in weft's table but not tagged as weft's.
    h.run_ok(&["ip", "route", "add", "10.32.9.0/24", "dev", "eth0"])
        .expect("foreign route");
    h.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.10.0/24",
        "dev",
        "eth0",
        "table",
        "26228",
        "proto",
        "static",
    ])
    .expect("foreign route in weft's table");

    // First apply: everything is created. Dual stack: an IPv6 cluster range and peer space.
    let with_v6 = |mut state: HostState| {
        state.fail_closed.cluster_ranges.insert(net("fd32::/48"));
        state.set_masquerade(true);
        state
            .add_peer_space(net("fd32:0:0:2::/64"))
            .expect("valid peer space");
        state
    };
    let first = with_v6(desired(&["10.32.2.0/24", "10.32.3.0/24"]));
    let changes = reconcile(h, &first);
    assert!(
        matches!(changes.first(), Some(Change::ReplaceFirewall(_))),
        "firewall first: {changes:?}"
    );
    let table = weft_table(h);
    for dst in ["10.32.2.0/24", "10.32.3.0/24"] {
        assert!(
            table.contains(&format!("{dst} dev {WG} proto 119 scope link")),
            "{table}"
        );
    }
    let rules = h.run_ok(&["ip", "rule", "show"]).expect("ip rule");
    assert!(rules.contains("26228:\tfrom all lookup 26228"), "{rules}");
    let rules6 = h.run_ok(&["ip", "-6", "rule", "show"]).expect("ip -6 rule");
    assert!(rules6.contains("26228:\tfrom all lookup 26228"), "{rules6}");
    let table6 = h
        .run_ok(&["ip", "-6", "route", "show", "table", "26228"])
        .expect("ip -6 route");
    assert!(
        table6.contains(&format!("fd32:0:0:2::/64 dev {WG} proto 119")),
        "{table6}"
    );
    let link = h
        .run_ok(&["ip", "-d", "link", "show", "weft"])
        .expect("bridge exists");
    assert!(link.contains("mtu 1420"), "{link}");
    assert!(link.contains("bridge"), "{link}");
    // Administratively up; a bridge with its own MAC and no ports has no carrier yet.
    let flags = link
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags)
        .unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UP"), "{link}");
    let addr = h
        .run_ok(&["ip", "-4", "addr", "show", "dev", "weft"])
        .expect("ip addr");
    assert!(addr.contains("inet 10.32.1.1/24"), "{addr}");
    let ruleset = h.run_ok(&["nft", "-j", "list", "ruleset"]).expect("nft");
    let ruleset: serde_json::Value = serde_json::from_str(&ruleset).expect("nft JSON");
    let objects = ruleset["nftables"].as_array().expect("nftables array");
    assert!(
        objects
            .iter()
            .any(|o| o["table"]["family"] == "inet" && o["table"]["name"] == "weft"),
        "{ruleset}"
    );
    assert!(
        objects
            .iter()
            .any(|o| o["counter"]["name"] == host::DROP_COUNTER),
        "{ruleset}"
    );
    let chain = h
        .run_ok(&["nft", "list", "chain", "inet", "weft", "postrouting"])
        .expect("nft chain");
    assert!(chain.contains("hook postrouting"), "{chain}");
    assert!(
        chain.contains(r#"ip daddr 10.32.0.0/12 counter name "fail_closed_drops" drop"#),
        "{chain}"
    );

    let nat = h
        .run_ok(&["nft", "list", "chain", "inet", "weft", host::NAT_CHAIN])
        .expect("nft NAT chain");
    assert!(
        nat.contains("type nat hook postrouting priority srcnat"),
        "{nat}"
    );
    for rule in [
        r#"ip saddr 10.32.0.0/12 ip daddr != { 10.32.0.0/12, 224.0.0.0/4 } oifname != { "lo", "weft", "weft-wg" } masquerade"#,
        r#"ip6 saddr fd32::/48 ip6 daddr != { fd32::/48, ff00::/8 } oifname != { "lo", "weft", "weft-wg" } masquerade"#,
    ] {
        assert!(nat.contains(rule), "{rule} not in\n{nat}");
    }

    // Second apply: nothing to do.
    assert_eq!(reconcile(h, &first), Vec::new());

    // One route less, one more: exactly that diff.
    let second = with_v6(desired(&["10.32.3.0/24", "10.32.4.0/24"]));
    assert_eq!(
        reconcile(h, &second),
        vec![
            Change::DelRoute(peer_route(net("10.32.2.0/24"))),
            Change::AddRoute(peer_route(net("10.32.4.0/24"))),
        ]
    );
    let table = weft_table(h);
    assert!(!table.contains("10.32.2.0/24"), "{table}");
    assert!(
        table.contains("10.32.4.0/24 dev weft-wg proto 119 scope link src 10.32.1.1"),
        "{table}"
    );

    // Someone (an older daemon, say) left a weft route and a bridge address behind, and
    // messed with the rule set: a restart with a fresh connection cleans exactly that up.
    h.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.7.0/24",
        "dev",
        WG,
        "table",
        "26228",
        "proto",
        "119",
    ])
    .expect("stale route");
    h.run_ok(&["ip", "addr", "add", "10.32.7.1/24", "dev", "weft"])
        .expect("stale address");
    h.run_ok(&["nft", "flush", "chain", "inet", "weft", "postrouting"])
        .expect("nft flush");
    let changes = reconcile(h, &second);
    assert_eq!(
        changes,
        vec![
            Change::ReplaceFirewall(second.fail_closed.clone()),
            Change::DelAddress {
                link: "weft".into(),
                addr: net("10.32.7.1/24")
            },
            Change::DelRoute(RouteSpec::weft(net("10.32.7.0/24"), WG)),
        ]
    );
    assert_eq!(reconcile(h, &second), Vec::new());

    // A pod's interface (named as weft attach names them, its other end in a container) and
    // some other veth on the bridge.
    let pod = bed.container().expect("container namespace");
    for (name, peer) in [("vw0123456789ab", "vp0123456789ab"), ("other0", "other1")] {
        h.run_ok(&[
            "ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", &pod,
        ])
        .expect("veth");
        // With the bridge's MTU, as `weft attach` makes them (a bridge whose MTU was not
        // changed after creation takes the smallest of its ports').
        h.run_ok(&[
            "ip", "link", "set", name, "mtu", "1420", "master", "weft", "up",
        ])
        .expect("on the bridge");
    }

    // Someone deletes the bridge and one of weft's routes: the next reconcile puts back
    // exactly those, and the pod's interface back on the bridge.
    h.run_ok(&["ip", "link", "del", "weft"])
        .expect("ip link del");
    h.run_ok(&[
        "ip",
        "route",
        "del",
        "10.32.3.0/24",
        "dev",
        WG,
        "table",
        "26228",
    ])
    .expect("ip route del");
    assert_eq!(
        reconcile(h, &second),
        vec![
            Change::CreateBridge {
                name: "weft".into(),
                mtu: 1420,
                mac: [0x02, 0x77, 10, 32, 1, 1],
            },
            Change::AddAddress {
                link: "weft".into(),
                addr: net("10.32.1.1/24")
            },
            Change::SetUp {
                link: "weft".into()
            },
            Change::AttachPort {
                link: "vw0123456789ab".into(),
                bridge: "weft".into()
            },
            Change::AddRoute(peer_route(net("10.32.3.0/24"))),
        ]
    );
    assert_eq!(reconcile(h, &second), Vec::new());
    let ports = h
        .run_ok(&["ip", "-o", "link", "show", "master", "weft"])
        .expect("bridge ports");
    assert!(ports.contains("vw0123456789ab@if"), "{ports}");
    assert!(
        !ports.contains("other0"),
        "a foreign veth was moved: {ports}"
    );
    // One that `weft attach` is still setting up (both ends here) is left to it.
    h.run_ok(&[
        "ip",
        "link",
        "add",
        "vwaaaaaaaaaaaa",
        "type",
        "veth",
        "peer",
        "name",
        "vpaaaaaaaaaaaa",
    ])
    .expect("veth");
    assert_eq!(reconcile(h, &second), Vec::new());
    // The recreated bridge has the MAC derived from its gateway, as before the deletion.
    let link = h.run_ok(&["ip", "link", "show", "weft"]).expect("bridge");
    assert!(link.contains("link/ether 02:77:0a:20:01:01"), "{link}");

    // The whole ruleset flushed: seen as a missing table (and counter), not as an error.
    let observe = || {
        netns::run_in(h.name(), || async {
            let nl = Netlink::connect().expect("netlink");
            host::observe(&nl, host::BRIDGE_NAME)
                .await
                .expect("observe")
        })
    };
    let before = observe();
    assert_eq!(
        before.state.firewall,
        host::FirewallState::Weft(second.fail_closed.clone())
    );
    assert!(before.fail_closed_drops.is_some());
    assert!(before.state.loose_ports.is_empty(), "{before:?}");
    h.run_ok(&["nft", "flush", "ruleset"]).expect("nft flush");
    let flushed = observe();
    assert_eq!(flushed.state.firewall, host::FirewallState::Missing);
    assert_eq!(flushed.fail_closed_drops, None);
    assert_eq!(
        host::drift(&flushed.state, &second),
        vec![host::Drift::FirewallMissing]
    );
    assert_eq!(
        reconcile(h, &second),
        vec![Change::ReplaceFirewall(second.fail_closed.clone())]
    );
    // Only the masquerading chain deleted: named as such, and put back.
    h.run_ok(&["nft", "delete", "chain", "inet", "weft", host::NAT_CHAIN])
        .expect("nft delete chain");
    assert_eq!(
        host::drift(&observe().state, &second),
        vec![host::Drift::MasqueradeMissing]
    );
    assert_eq!(
        reconcile(h, &second),
        vec![Change::ReplaceFirewall(second.fail_closed.clone())]
    );
    assert_eq!(reconcile(h, &second), Vec::new());

    // Foreign routes survived all of it.
    let main = h.run_ok(&["ip", "route", "show"]).expect("ip route");
    assert!(main.contains("10.32.9.0/24 dev eth0"), "{main}");
    assert!(weft_table(h).contains("10.32.10.0/24 dev eth0 proto static"));

    // Reset: nothing of weft's remains, foreign things stay.
    netns::run_in(h.name(), || async {
        let nl = Netlink::connect().expect("netlink");
        host::reset(&nl, host::BRIDGE_NAME, WG)
            .await
            .expect("reset");
        // Twice: reset is idempotent.
        host::reset(&nl, host::BRIDGE_NAME, WG)
            .await
            .expect("reset again");
    });
    let table = weft_table(h);
    assert_eq!(
        table.trim(),
        "10.32.10.0/24 dev eth0 proto static scope link"
    );
    let rules = h.run_ok(&["ip", "rule", "show"]).expect("ip rule");
    assert!(!rules.contains("26228"), "{rules}");
    let rules6 = h.run_ok(&["ip", "-6", "rule", "show"]).expect("ip -6 rule");
    assert!(!rules6.contains("26228"), "{rules6}");
    let table6 = h
        .run_ok(&["ip", "-6", "route", "show", "table", "26228"])
        .expect("ip -6 route");
    assert!(table6.trim().is_empty(), "{table6}");
    let links = h.run_ok(&["ip", "-o", "link", "show"]).expect("ip link");
    assert!(!links.contains(": weft:") && !links.contains(WG), "{links}");
    let ruleset = h.run_ok(&["nft", "list", "ruleset"]).expect("nft");
    assert!(!ruleset.contains("table inet weft"), "{ruleset}");
    let main = h.run_ok(&["ip", "route", "show"]).expect("ip route");
    assert!(main.contains("10.32.9.0/24 dev eth0"), "{main}");
}

/// Sends one UDP datagram from inside `ns`; a send refused by the firewall (EPERM) is fine.
fn send_udp(ns: &str, dst: Ipv4Addr, payload: &[u8]) {
    netns::run_in(ns, || async {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        let _ = socket.send_to(payload, (dst, 9999));
    })
}

fn drops(h: &Host) -> Option<host::CounterValue> {
    netns::run_in(h.name(), || async {
        host::firewall::drops().await.expect("read counter")
    })
}

/// A namespace outside the test bed's own list; deleted on drop.
struct PodNs(String);

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn fail_closed_drops_cleartext_to_other_nodes_until_the_table_is_gone() {
    if !weft_testbed::require_root(
        "fail_closed_drops_cleartext_to_other_nodes_until_the_table_is_gone",
    ) {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let (a, b) = (bed.host(0), bed.host(1));
    add_stand_in_wg(a);
    // Node A owns 10.32.1.0/24 but has no tunnel route to B's space (the tunnel is missing):
    // the dangerous case, a route to B's space via the underlay.
    // The reconciling thread (our stand-in for the daemon) has ended when the packets are
    // sent: the rules outlive the process that wrote them.
    reconcile(a, &desired(&[]));
    let via = b.underlay_ip().to_string();
    a.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.2.0/24",
        "via",
        &via,
        "dev",
        "eth0",
    ])
    .expect("underlay route to B's space");
    a.run_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding");

    // A pod on A's bridge, sending through A.
    let pod = PodNs(format!("{}pod", bed.prefix()));
    std::process::Command::new("ip")
        .args(["netns", "add", &pod.0])
        .status()
        .expect("ip netns add");
    a.run_ok(&[
        "ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ])
    .expect("pod veth");
    a.run_ok(&["ip", "link", "set", "vpod", "master", "weft", "up"])
        .expect("pod veth on bridge");
    let in_pod = |args: &[&str]| {
        let mut full = vec!["netns", "exec", pod.0.as_str()];
        full.extend_from_slice(args);
        let status = std::process::Command::new("ip")
            .args(&full)
            .status()
            .expect("ip netns exec");
        assert!(status.success(), "{args:?}");
    };
    in_pod(&["ip", "addr", "add", "10.32.1.5/24", "dev", "eth0"]);
    in_pod(&["ip", "link", "set", "eth0", "up"]);
    in_pod(&["ip", "link", "set", "lo", "up"]);
    in_pod(&["ip", "route", "add", "default", "via", "10.32.1.1"]);

    let dst: Ipv4Addr = "10.32.2.5".parse().expect("address");
    let before = drops(a).expect("counter exists").packets;

    let capture = bed.capture(1, "udp port 9999").expect("capture on B");
    send_udp(a.name(), dst, b"weft-cleartext-from-host");
    send_udp(&pod.0, dst, b"weft-cleartext-from-pod");
    std::thread::sleep(Duration::from_millis(300));
    let packets = capture.finish().expect("capture");
    assert!(
        !packets.iter().any(|p| p.contains(b"weft-cleartext")),
        "cleartext left A: {packets:?}"
    );
    let after = drops(a).expect("counter exists").packets;
    assert!(
        after >= before + 2,
        "drop counter moved {before} -> {after}, expected both packets counted"
    );

    // While the rules are being replaced (a reconfiguration), a steady stream from A still
    // never leaves in the clear: each replacement is one nft transaction.
    let capture = bed.capture(1, "udp port 9999").expect("capture on B");
    let stop = AtomicBool::new(false);
    let sent = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            netns::run_in(a.name(), || async {
                let socket = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.send_to(b"weft-cleartext-during-replace", (dst, 9999));
                    sent += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                sent
            })
        });
        netns::run_in(a.name(), || async {
            for i in 0..20 {
                let mut spec = desired(&[]).fail_closed;
                if i % 2 == 0 {
                    spec.local_space = [net("10.32.1.0/25")].into();
                }
                host::firewall::apply(&spec).await.expect("replace rules");
            }
        });
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("sender thread")
    });
    let packets = capture.finish().expect("capture");
    assert!(
        sent > 100,
        "only {sent} packets sent during the replacements"
    );
    assert!(
        !packets.iter().any(|p| p.contains(b"weft-cleartext")),
        "cleartext left A during a rule replacement: {} packets",
        packets.len()
    );

    // Control: without the table, the same packets do leave in the clear.
    netns::run_in(a.name(), || async {
        host::firewall::remove().await.expect("remove table")
    });
    assert_eq!(drops(a), None);
    let capture = bed.capture(1, "udp port 9999").expect("capture on B");
    send_udp(a.name(), dst, b"weft-cleartext-from-host");
    send_udp(&pod.0, dst, b"weft-cleartext-from-pod");
    let seen = capture
        .wait_for(Duration::from_secs(3), |p| {
            p.contains(b"weft-cleartext-from-pod")
        })
        .expect("capture");
    let packets = capture.finish().expect("capture");
    assert!(seen, "pod packet should leave without the firewall");
    assert!(
        packets
            .iter()
            .any(|p| p.contains(b"weft-cleartext-from-host")),
        "host packet should leave without the firewall: {packets:?}"
    );
}

#[test]
fn no_bridge_before_space_then_the_bridge_and_a_route_for_a_second_piece() {
    if !weft_testbed::require_root(
        "no_bridge_before_space_then_the_bridge_and_a_route_for_a_second_piece",
    ) {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let h = bed.host(0);
    add_stand_in_wg(h);

    // No space yet: firewall and routes to the others, no bridge.
    let mut early = HostState::without_bridge(host::BRIDGE_NAME, WG, [net("10.32.0.0/12")]);
    early.add_peer_space(net("10.32.2.0/24")).expect("valid");
    reconcile(h, &early);
    assert!(
        h.run(&["ip", "link", "show", host::BRIDGE_NAME])
            .expect("ip link")
            .status
            .code()
            != Some(0),
        "a bridge exists before the node owns space"
    );
    assert!(weft_table(h).contains("10.32.2.0/24 dev weft-wg"));
    let nft = h
        .run_ok(&["nft", "list", "table", "inet", host::NFT_TABLE])
        .expect("nft table");
    assert!(nft.contains("10.32.0.0/12"), "{nft}");

    // Two pieces: the bridge holds the first's gateway, the second is routed to the bridge.
    let mut owned = HostState::new(
        BridgeSpec {
            name: host::BRIDGE_NAME.into(),
            gateway: net("10.32.1.0/24"),
            mtu: 1420,
        },
        WG,
        [net("10.32.0.0/12")],
        [net("10.32.1.0/24"), net("10.32.8.0/24")],
    );
    owned
        .add_local_space_route(net("10.32.8.0/24"))
        .expect("own piece");
    owned.add_peer_space(net("10.32.2.0/24")).expect("valid");
    reconcile(h, &owned);
    let addrs = h
        .run_ok(&["ip", "-4", "-o", "addr", "show", "dev", host::BRIDGE_NAME])
        .expect("bridge addresses");
    assert!(addrs.contains("10.32.1.0/24"), "{addrs}");
    let table = weft_table(h);
    assert!(table.contains("10.32.8.0/24 dev weft proto 119"), "{table}");
    assert!(table.contains("10.32.2.0/24 dev weft-wg"), "{table}");
    assert!(
        reconcile(h, &owned).is_empty(),
        "second reconcile changed something"
    );
}

/// The state of a node owning `spaces` (the first holds the gateway) with one peer.
fn owning(spaces: &[&str]) -> HostState {
    let gateway = net(spaces[0]);
    let mut state = HostState::new(
        BridgeSpec {
            name: host::BRIDGE_NAME.into(),
            gateway,
            mtu: 1420,
        },
        WG,
        [net("10.32.0.0/12")],
        spaces.iter().map(|s| net(s)),
    );
    for s in &spaces[1..] {
        state.add_local_space_route(net(s)).expect("own piece");
    }
    state.add_peer_space(net("10.32.2.0/24")).expect("valid");
    state
}

#[test]
fn giving_away_the_gateways_piece_keeps_the_other_local_routes() {
    if !weft_testbed::require_root("giving_away_the_gateways_piece_keeps_the_other_local_routes") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let h = bed.host(0);
    add_stand_in_wg(h);
    reconcile(
        h,
        &owning(&["10.32.1.0/24", "10.32.8.0/24", "10.32.9.0/24"]),
    );
    // The piece with the gateway goes to another node: the bridge's address moves to the
    // next piece. A bridge left without any IPv4 address for a moment loses every route
    // through it, 10.32.9.0/24 included, which the next round would call drift.
    let after = owning(&["10.32.8.0/24", "10.32.9.0/24"]);
    reconcile(h, &after);
    let table = weft_table(h);
    assert!(table.contains("10.32.9.0/24 dev weft proto 119"), "{table}");
    let found = netns::run_in(h.name(), || async {
        let nl = Netlink::connect().expect("netlink");
        let observed = host::observe(&nl, host::BRIDGE_NAME)
            .await
            .expect("observe");
        host::drift(&observed.state, &after)
    });
    assert_eq!(found, Vec::new(), "{table}");
}

/// A pod on A's bridge sends UDP to B's underlay address: with masquerading B sees A's
/// underlay address as the source (and its answer comes back to the pod); without, the pod's.
#[test]
fn masquerading_gives_pod_traffic_leaving_the_cluster_the_host_address() {
    if !weft_testbed::require_root(
        "masquerading_gives_pod_traffic_leaving_the_cluster_the_host_address",
    ) {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let (a, b) = (bed.host(0), bed.host(1));
    add_stand_in_wg(a);
    let mut state = desired(&[]);
    state.set_masquerade(true);
    reconcile(a, &state);
    a.run_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding");
    let pod = bed.container().expect("pod namespace");
    a.run_ok(&[
        "ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod,
    ])
    .expect("pod veth");
    a.run_ok(&["ip", "link", "set", "vpod", "master", "weft", "up"])
        .expect("pod veth on bridge");
    for args in [
        &["ip", "addr", "add", "10.32.1.5/24", "dev", "eth0"][..],
        &["ip", "link", "set", "eth0", "up"],
        &["ip", "route", "add", "default", "via", "10.32.1.1"],
    ] {
        bed.run_ok_in(&pod, args).expect("pod setup");
    }
    let pod_addr: Ipv4Addr = "10.32.1.5".parse().expect("address");
    let sources = |payload: &[u8]| {
        let capture = bed.capture(1, "udp port 9999").expect("capture on B");
        send_udp(&pod, b.underlay_ip(), payload);
        let seen = capture
            .wait_for(Duration::from_secs(3), |p| p.contains(payload))
            .expect("capture");
        let packets = capture.finish().expect("capture");
        assert!(seen, "the pod's datagram did not reach B");
        packets
            .iter()
            .filter(|p| p.contains(payload))
            .filter_map(|p| p.src())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sources(b"weft-masq-on"),
        vec![std::net::IpAddr::V4(a.underlay_ip())]
    );
    // B answers A's address; the answer finds its way back to the pod.
    assert!(
        weft_testbed::wait_until(Duration::from_secs(5), || bed
            .run_in(
                &pod,
                &["ping", "-c", "1", "-W", "1", &b.underlay_ip().to_string()]
            )
            .is_ok_and(|o| o.status.success())),
        "the pod gets no answer from B"
    );

    state.set_masquerade(false);
    reconcile(a, &state);
    assert!(
        a.run(&["nft", "list", "chain", "inet", "weft", host::NAT_CHAIN])
            .expect("nft")
            .status
            .code()
            != Some(0),
        "the NAT chain stayed with masquerading off"
    );
    assert_eq!(
        sources(b"weft-masq-off"),
        vec![std::net::IpAddr::V4(pod_addr)]
    );
}
