//! The datapath repairs itself (issue 11): weft's state on a host changed behind its back
//! (`nft flush ruleset`, a route or the bridge deleted) comes back within a second or so, is
//! logged once and counted in /metrics; a userspace engine that dies (a panic, its interface
//! deleted) is replaced and traffic flows again. Throughout, nothing leaves the host in the
//! clear. Real `weft launch` nodes in test-bed hosts; needs root.
//!
//! The engine panic comes from the daemon's test-only hook: `cargo test` builds weft-mesh with
//! its `fault-injection` feature (weft's dev-dependencies), where SIGUSR2 makes the engine
//! panic.

// Shared with tests/mesh.rs; each uses part of it.
#[path = "mesh/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{underlay_problems, Cluster, Container, WG_IF};
use weft_testbed::{require_root, Proc};

/// Sent in payloads; must never show up on the underlay.
const MARKER: &[u8] = b"WEFT-REPAIR-MARKER-7d21c0e4";

const GENEROUS: Duration = Duration::from_secs(60);

/// How long a repair may take here: the daemon reads the host every second; the rest is
/// room for a loaded machine.
const REPAIR: Duration = Duration::from_secs(5);

/// weft's routing table (mesh::host::ROUTE_TABLE, 0x6674).
const ROUTE_TABLE: &str = "26228";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Two converged nodes, a container on each, pinging.
fn two_with_containers() -> (Cluster, Container, Container) {
    let mut c = Cluster::new(2);
    c.launch_chain();
    c.wait_full_mesh(&[0, 1], GENEROUS);
    c.wait_space(&[0, 1], GENEROUS);
    let a = c.attach(0, "rep-a");
    let b = c.attach(1, "rep-b");
    c.wait_ping(&a, &b, secs(20));
    (c, a, b)
}

/// Marker datagrams and pings from `a` to `b`, 20 a second for `secs` seconds.
fn background_traffic(c: &Cluster, a: &Container, b: &Container, secs: u32) -> Vec<Proc> {
    let n = secs * 20;
    let send = format!(
        "for i in $(seq {n}); do echo '{}' | nc -u -w0 {} 5002; sleep 0.05; done",
        String::from_utf8_lossy(MARKER),
        b.addr
    );
    let ping = format!("ping -n -q -c {n} -i 0.05 {} >/dev/null", b.addr);
    [send, ping]
        .iter()
        .map(|script| {
            c.bed
                .spawn_in(&a.netns, &["sh", "-c", script])
                .expect("traffic")
        })
        .collect()
}

fn stop(traffic: Vec<Proc>) {
    for p in traffic {
        let _ = p.kill();
    }
}

/// Lines of node `i`'s log that contain `needle`.
fn log_lines(c: &Cluster, i: usize, needle: &str) -> Vec<String> {
    c.log(i)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Waits for `what` to hold, at most `timeout`; returns how long it took.
fn within(c: &Cluster, what: &str, timeout: Duration, cond: impl FnMut() -> bool) -> Duration {
    let took = c.wait(what, timeout, cond);
    eprintln!("{what}: {took:?}");
    took
}

/// Waits until `metric` on node `i` reads `value`.
fn wait_metric(c: &Cluster, i: usize, metric: &str, value: f64) {
    c.wait(&format!("n{i}: {metric} {value}"), REPAIR, || {
        c.metric(i, metric) == Some(value)
    });
}

/// True if host `i` has weft's nftables table with its drop rule.
fn has_fail_closed_table(c: &Cluster, i: usize) -> bool {
    c.bed
        .host(i)
        .run_ok(&["nft", "list", "table", "inet", "weft"])
        .is_ok_and(|t| t.contains("counter name \"fail_closed_drops\" drop"))
}

/// Host `i`'s routes in weft's table, one per line.
fn weft_routes(c: &Cluster, i: usize) -> String {
    c.bed
        .host(i)
        .run_ok(&["ip", "route", "show", "table", ROUTE_TABLE])
        .unwrap_or_default()
}

#[test]
fn drift_is_repaired_logged_once_and_counted() {
    if !require_root("drift_is_repaired_logged_once_and_counted") {
        return;
    }
    let (c, a, b) = two_with_containers();
    let host = c.bed.host(0);
    assert!(has_fail_closed_table(&c, 0));
    let capture = c.bed.capture(0, "").expect("capture");
    let traffic = background_traffic(&c, &a, &b, 60);

    // 1. The whole ruleset flushed: the fail-closed table is back within a round or two.
    host.run_ok(&["nft", "flush", "ruleset"]).expect("flush");
    assert!(!has_fail_closed_table(&c, 0), "flush left the table");
    within(&c, "inet weft back after nft flush ruleset", REPAIR, || {
        has_fail_closed_table(&c, 0)
    });
    wait_metric(&c, 0, "weft_drift_repairs_total{kind=\"firewall\"}", 1.0);
    c.wait_ping(&a, &b, secs(10));

    // 2. The route to n1's pods deleted (with `ip`, as an operator would).
    let space = c.status(1).expect("n1 status")["address_space"][0]
        .as_str()
        .expect("n1 owns space")
        .to_owned();
    let routes = weft_routes(&c, 0);
    assert!(routes.contains(&space), "no route to {space} in\n{routes}");
    host.run_ok(&["ip", "route", "del", &space, "table", ROUTE_TABLE])
        .expect("delete the route");
    assert!(!weft_routes(&c, 0).contains(&space));
    within(&c, "route to n1's space back", REPAIR, || {
        weft_routes(&c, 0).contains(&format!("{space} dev {WG_IF} proto 119"))
    });
    wait_metric(&c, 0, "weft_drift_repairs_total{kind=\"route\"}", 1.0);
    c.wait_ping(&a, &b, secs(10));

    // 3. The bridge deleted: it comes back with its address, and the container's interface
    // (let go by the deleted bridge) is put back on it.
    let port = weft_mesh::attach::host_ifname(&format!("{}/eth0", a.id));
    let on_bridge = || {
        host.run_ok(&["ip", "-o", "link", "show", "master", "weft"])
            .is_ok_and(|l| l.contains(&port))
    };
    assert!(on_bridge(), "{port} not on the bridge to start with");
    // Routes to further pieces of n0's own space go to the bridge, and with it.
    let bridge_routes = weft_routes(&c, 0)
        .lines()
        .filter(|l| l.contains("dev weft "))
        .count();
    host.run_ok(&["ip", "link", "del", "weft"])
        .expect("delete the bridge");
    within(
        &c,
        "bridge back with the container on it",
        REPAIR,
        on_bridge,
    );
    wait_metric(&c, 0, "weft_drift_repairs_total{kind=\"bridge\"}", 2.0);
    // Same gateway address and MAC: the container's ARP entry for the gateway still holds.
    let took = c.wait_ping(&a, &b, secs(10));
    eprintln!("container pings across again {took:?} after the bridge was back");
    c.wait_ping(&b, &a, secs(10));

    // A few more rounds: nothing is logged again, the counters stay.
    std::thread::sleep(secs(3));
    stop(traffic);
    for (needle, what) in [
        ("nftables table inet weft missing: restored", "flush"),
        (
            &format!("route {space} via {WG_IF} deleted: restored") as &str,
            "route",
        ),
        ("bridge weft deleted: recreated", "bridge"),
        (
            &format!("pod interface {port} off the bridge: put back on the bridge"),
            "port",
        ),
    ] {
        let lines = log_lines(&c, 0, needle);
        assert_eq!(
            lines.len(),
            1,
            "{what}: not one log line {needle:?}: {lines:#?}"
        );
        assert!(lines[0].contains("WARN"), "{what}: {}", lines[0]);
    }
    let routes = 1.0 + bridge_routes as f64;
    for (kind, n) in [
        ("firewall", 1.0),
        ("route", routes),
        ("bridge", 2.0),
        ("rule", 0.0),
    ] {
        let metric = format!("weft_drift_repairs_total{{kind=\"{kind}\"}}");
        assert_eq!(c.metric(0, &metric), Some(n), "{metric}");
    }
    // Nothing repaired on the node left alone.
    assert_eq!(
        c.metric(1, "weft_drift_repairs_total{kind=\"firewall\"}"),
        Some(0.0)
    );
    let packets = capture.finish().expect("capture");
    let problems = underlay_problems(&packets, MARKER);
    assert!(
        problems.is_empty(),
        "cleartext left n0 ({} packets):\n{}",
        packets.len(),
        problems.join("\n")
    );
}

#[test]
fn a_dead_engine_is_replaced_and_traffic_flows_again() {
    if !require_root("a_dead_engine_is_replaced_and_traffic_flows_again") {
        return;
    }
    let (c, a, b) = two_with_containers();
    let capture = c.bed.capture(0, "").expect("capture");
    let traffic = background_traffic(&c, &a, &b, 90);
    assert_eq!(c.metric(0, "weft_datapath_restarts_total"), Some(0.0));

    // 1. The engine panics (test hook): the daemon notices, makes a new device, traffic flows.
    let panicked = Instant::now();
    c.signal(0, "USR2");
    wait_metric(&c, 0, "weft_datapath_restarts_total", 1.0);
    eprintln!("device made anew {:?} after the panic", panicked.elapsed());
    let took = c.wait_ping(&a, &b, secs(30));
    eprintln!("container pings across again {took:?} later");
    c.wait_full_mesh(&[0, 1], secs(30));
    let status = c.status(0).expect("status");
    assert_eq!(status["datapath"], "userspace", "{status}");
    assert_eq!(status["datapath_restarts"], 1, "{status}");
    // The new device serves `wg` too.
    assert!(c.wg_dump(0).is_ok_and(|d| d.lines().count() == 2));

    // 2. The interface deleted from outside: the same.
    c.bed
        .host(0)
        .run_ok(&["ip", "link", "del", WG_IF])
        .expect("delete the WireGuard interface");
    wait_metric(&c, 0, "weft_datapath_restarts_total", 2.0);
    c.wait_ping(&a, &b, secs(30));
    stop(traffic);

    let panic_lines = log_lines(
        &c,
        0,
        "the userspace WireGuard engine stopped (panic: fault injection: engine panic requested): restarting the device",
    );
    assert_eq!(panic_lines.len(), 1, "{panic_lines:#?}");
    assert!(panic_lines[0].contains("ERROR"), "{}", panic_lines[0]);
    let gone_lines = log_lines(
        &c,
        0,
        "the userspace WireGuard engine stopped (interface gone",
    );
    assert_eq!(gone_lines.len(), 1, "{gone_lines:#?}");
    // Its routes came back with the new device as an update, not as drift.
    assert_eq!(
        c.metric(0, "weft_drift_repairs_total{kind=\"route\"}"),
        Some(0.0)
    );
    let packets = capture.finish().expect("capture");
    let problems = underlay_problems(&packets, MARKER);
    assert!(
        problems.is_empty(),
        "cleartext left n0 while its device was down ({} packets):\n{}",
        packets.len(),
        problems.join("\n")
    );
}
