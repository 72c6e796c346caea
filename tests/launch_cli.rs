//! The operator's commands against real daemons in network namespaces: `weft status`,
//! `peers`, `ipam` (text and JSON), `forget` refused while the node is reachable, `connect`,
//! the metrics endpoint (`/healthz`, `/readyz`, `/metrics`, 404), and `weft reset` with and
//! without a running daemon. Needs root; prints "skipped: ..." otherwise.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weft_testbed::{require_root, wait_until, Host, Proc, TestBed};

#[path = "launch/common.rs"]
mod common;

use common::{write_secret, NodeFiles as Node, BIN};

fn launch(host: &Host, name: &str, secret: &Path, node: &Node, seeds: &[&Host]) -> Proc {
    let extra = ["-vv", "--metrics-addr", "127.0.0.1:6782"];
    common::launch(host, name, secret, node, seeds, &extra)
}

/// `weft ARGS --api-socket SOCKET` on `host`: (exit code, stdout, stderr).
fn weft(host: &Host, node: &Node, args: &[&str]) -> (i32, String, String) {
    let mut full = vec![BIN];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--api-socket", node.socket_str()]);
    let out = host.run(&full).expect("run weft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(host: &Host, node: &Node, args: &[&str]) -> Option<Value> {
    let mut full = args.to_vec();
    full.extend_from_slice(&["-o", "json"]);
    let (code, out, _) = weft(host, node, &full);
    (code == 0).then(|| serde_json::from_str(&out).expect("-o json prints JSON"))
}

/// One HTTP/1.0 GET to the node's metrics endpoint, from inside its namespace.
fn http_get(host: &Host, path: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/6782 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = host.run(&["bash", "-c", &script]).expect("bash");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.command(),
                p.output().expect("output").stderr
            )
        })
        .collect()
}

#[test]
fn operator_commands_and_metrics_against_running_daemons() {
    if !require_root("operator_commands_and_metrics_against_running_daemons") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let nodes = [Node::new(), Node::new()];
    let (h0, h1) = (bed.host(0), bed.host(1));
    let p0 = launch(h0, "n0", &secret, &nodes[0], &[]);
    let p1 = launch(h1, "n1", &secret, &nodes[1], &[h0]);

    // Both alive, and n1 owns address space (the IPAM report lists two nodes owning some).
    let formed = wait_until(Duration::from_secs(20), || {
        let Some(report) = json(h0, &nodes[0], &["ipam"]) else {
            return false;
        };
        let owners = report["nodes"].as_array().map_or(0, |n| {
            n.iter().filter(|n| n["owned"].as_u64() > Some(0)).count()
        });
        owners == 2
    });
    assert!(formed, "n1 never got address space\n{}", dump(&[&p0, &p1]));

    // status: peers, datapath, address space.
    let status = json(h0, &nodes[0], &["status"]).expect("status");
    assert_eq!(status["peers_total"], 1, "{status}");
    let (code, text, err) = weft(h0, &nodes[0], &["status"]);
    assert_eq!(code, 0, "{err}");
    for label in ["peers:", "datapath:", "address space:", "addresses:"] {
        assert!(text.contains(label), "no {label:?} in\n{text}");
    }
    assert!(text.contains(" 0 stopped, 0 left"), "{text}");
    // n1 is up once it is alive and its tunnel has a handshake.
    let up = wait_until(Duration::from_secs(20), || {
        json(h0, &nodes[0], &["status"]).is_some_and(|s| s["peers_up"] == 1)
    });
    assert!(up, "n1 never up on n0\n{}", dump(&[&p0, &p1]));

    // peers: the new columns, n1's row.
    let (code, text, err) = weft(h0, &nodes[0], &["peers"]);
    assert_eq!(code, 0, "{err}");
    let header = text.lines().next().unwrap_or_default();
    for col in ["NAME", "ENDPOINT", "PATH", "HANDSHAKE", "RX", "TX"] {
        assert!(header.contains(col), "no {col} in\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("n1 ")), "{text}");
    // Every row shows a WireGuard endpoint, this node's own included.
    let own = text
        .lines()
        .find(|l| l.starts_with("n0 (self)"))
        .unwrap_or_else(|| panic!("no row for n0\n{text}"));
    assert!(own.contains(&format!("{}:6784", h0.public_ip())), "{text}");

    // ipam: the table names both owners and the report's JSON is the daemon's.
    let (code, text, err) = weft(h0, &nodes[0], &["ipam"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("PIECE") && text.contains("OWNER"), "{text}");
    for name in ["n0 (", "n1 ("] {
        assert!(text.contains(name), "{name} not named in\n{text}");
    }

    // metrics endpoint inside n0's namespace.
    let health = http_get(h0, "/healthz");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    assert!(health.ends_with("ok\n"), "{health}");
    let metrics = http_get(h0, "/metrics");
    assert!(metrics.contains(" 200 "), "{metrics}");
    assert!(metrics.lines().any(|l| l == "weft_up 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "weft_peers{state=\"alive\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("weft_ipam_addresses_free "), "{metrics}");
    let ready = http_get(h0, "/readyz");
    assert!(
        ready.contains(" 200 ") || (ready.contains(" 503 ") && ready.contains("not ready:")),
        "{ready}"
    );
    assert!(http_get(h0, "/nope").contains(" 404 "));

    // forget is refused while n1 is reachable; connect is accepted.
    let (code, _, err) = weft(h0, &nodes[0], &["forget", "n1"]);
    assert_ne!(code, 0, "forgot a reachable node");
    assert!(err.contains("refused"), "{err}");
    let n1_addr = format!("{}:6783", h1.public_ip());
    let (code, out, err) = weft(h0, &nodes[0], &["connect", &n1_addr]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty(), "connect printed nothing");

    // reset on n1: the daemon leaves and exits, weft's interface is gone from the host, n0
    // sees n1 as left.
    let (code, out, err) = weft(h1, &nodes[1], &["reset", "-o", "json"]);
    assert_eq!(code, 0, "{err}\n{}", dump(&[&p1]));
    let done: Value = serde_json::from_str(&out).expect("reset -o json");
    assert_eq!(done["ok"], true, "{done}");
    let exited = p1
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .is_some();
    assert!(exited, "n1 still running after reset\n{}", dump(&[&p1]));
    assert!(
        !h1.run(&["ip", "link", "show", "weft-wg"])
            .expect("ip")
            .status
            .success(),
        "weft-wg still on n1's host after reset"
    );
    let left = wait_until(Duration::from_secs(10), || {
        json(h0, &nodes[0], &["peers"]).is_some_and(|list| {
            list.as_array()
                .and_then(|l| l.iter().find(|p| p["name"] == "n1"))
                .is_some_and(|p| p["state"] == "left")
        })
    });
    assert!(left, "n0 does not see n1 as left\n{}", dump(&[&p0]));
    let status = json(h0, &nodes[0], &["status"]).expect("status");
    assert_eq!(
        (
            &status["members"]["left"],
            &status["members"]["stopped"],
            &status["peers_up"]
        ),
        (&Value::from(1), &Value::from(0), &Value::from(0)),
        "{status}"
    );

    // reset with no daemon: says so and cleans the host anyway.
    let (code, out, err) = weft(h1, &nodes[1], &["reset"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("not running"), "{out}");
}

/// A host without the `nft` program (here: a PATH without it) is refused at once, with what
/// to install, rather than a daemon that retries its firewall for 90 s.
#[test]
fn launch_without_nft_refuses_at_once_naming_the_package() {
    if !require_root("launch_without_nft_refuses_at_once_naming_the_package") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let node = Node::new();
    let empty = tempfile::tempdir().expect("tempdir");
    let path = format!("PATH={}", empty.path().display());
    let state = node.state.to_str().expect("utf-8 path");
    let started = std::time::Instant::now();
    let out = bed
        .host(0)
        .run(&[
            // Before the check, the daemon ran on without a firewall: bound the wait.
            "timeout",
            "60",
            "env",
            &path,
            BIN,
            "launch",
            "--secret-file",
            secret.to_str().expect("utf-8 path"),
            "--state-dir",
            state,
            "--api-socket",
            node.socket_str(),
            "--metrics-addr",
            "off",
        ])
        .expect("run weft launch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nft program is not installed")
            && stderr.contains("apt-get install nftables"),
        "{stderr}"
    );
    // At once: no retries (the datapath used to retry for 90 s).
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    // Nothing was started: no keys made, no socket left.
    assert!(!node.state.exists(), "state dir made before refusing");
    assert!(!node.socket.exists());
}
