//! `weft launch` between real processes in network namespaces: a chain of seeds forms one
//! view, a killed node is suspected then declared failed, a restarted node rejoins with the
//! same id and a higher version, a node with another secret never gets in, and SIGTERM
//! stops a node (seen as stopped, not failed). Needs root; prints "skipped: ..." otherwise.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use weft_testbed::{require_root, wait_until, Host, Proc, TestBed};

#[path = "launch/common.rs"]
mod common;

use common::{write_secret, NodeFiles, BIN};

fn launch(host: &Host, name: &str, secret: &Path, files: &NodeFiles, seeds: &[&Host]) -> Proc {
    common::launch(host, name, secret, files, seeds, &["-vv"])
}

/// `weft peers -o json` on `host`, or `None` if it fails (daemon not up yet).
fn peers(host: &Host, files: &NodeFiles) -> Option<Vec<Value>> {
    let socket = files.socket.to_str().expect("utf-8 path");
    let out = host
        .run_ok(&[BIN, "peers", "-o", "json", "--api-socket", socket])
        .ok()?;
    match serde_json::from_str::<Value>(&out).expect("peers -o json is JSON") {
        Value::Array(list) => Some(list),
        other => panic!("peers -o json is not a list: {other}"),
    }
}

fn find<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|p| p["name"] == name)
}

fn state_of(list: &[Value], name: &str) -> Option<String> {
    find(list, name).and_then(|p| p["state"].as_str().map(str::to_owned))
}

/// True once `host` lists exactly `names`, all alive.
fn sees_all_alive(host: &Host, files: &NodeFiles, names: &[&str]) -> bool {
    let Some(list) = peers(host, files) else {
        return false;
    };
    let seen: BTreeSet<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    seen == names.iter().copied().collect()
        && names
            .iter()
            .all(|n| state_of(&list, n).as_deref() == Some("alive"))
}

fn dump(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| {
            let out = p.output().expect("output");
            format!("--- {}\n{}", p.command(), out.stderr)
        })
        .collect()
}

/// Four nodes on hosts 0..4, host i seeded only with host i-1, and an intruder with another
/// secret on host 4 seeding hosts 0 and 3; returns once every node lists all four alive
/// (10 s at most), after checking n0's status and socket mode. `None` when not root.
struct Chain {
    bed: TestBed,
    _secrets: TempDir,
    secret: PathBuf,
    names: [&'static str; 4],
    files: Vec<NodeFiles>,
    procs: Vec<Proc>,
    intruder: Proc,
}

fn chain(test: &str) -> Option<Chain> {
    if !require_root(test) {
        return None;
    }
    let bed = TestBed::new(5).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let other_secret = write_secret(secrets.path(), "other.secret");
    let names = ["n0", "n1", "n2", "n3"];
    let files: Vec<NodeFiles> = (0..5).map(|_| NodeFiles::new()).collect();

    // Host i seeds only host i-1.
    let procs: Vec<Proc> = (0..4)
        .map(|i| {
            let seeds: Vec<&Host> = if i == 0 {
                vec![]
            } else {
                vec![bed.host(i - 1)]
            };
            launch(bed.host(i), names[i], &secret, &files[i], &seeds)
        })
        .collect();
    // An intruder with another secret, seeding two members.
    let intruder = launch(
        bed.host(4),
        "intruder",
        &other_secret,
        &files[4],
        &[bed.host(0), bed.host(3)],
    );

    let start = Instant::now();
    let converged = wait_until(Duration::from_secs(10), || {
        (0..4).all(|i| sees_all_alive(bed.host(i), &files[i], &names))
    });
    let refs: Vec<&Proc> = procs.iter().chain([&intruder]).collect();
    assert!(converged, "no full view within 10 s\n{}", dump(&refs));
    eprintln!("4 nodes converged in {:?}", start.elapsed());

    // The daemon's status agrees, and the socket is private.
    let socket0 = files[0].socket.to_str().expect("utf-8");
    let status: Value = serde_json::from_str(
        &bed.host(0)
            .run_ok(&[BIN, "status", "-o", "json", "--api-socket", socket0])
            .expect("status"),
    )
    .expect("status json");
    assert_eq!(status["name"], "n0");
    assert_eq!(status["members"]["alive"], 4, "{status}");
    assert_eq!(status["members"]["total"], 4, "{status}");
    assert_eq!(
        status["gossip_addr"],
        format!("{}:6783", bed.host(0).public_ip())
    );
    assert!(
        matches!(status["datapath"].as_str(), Some("kernel" | "userspace")),
        "{status}"
    );
    let mode = std::fs::metadata(&files[0].socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    Some(Chain {
        bed,
        _secrets: secrets,
        secret,
        names,
        files,
        procs,
        intruder,
    })
}

/// The intruder tried, was refused, and appears nowhere; it sees only itself.
fn intruder_refused(c: &Chain) {
    let (bed, files, intruder) = (&c.bed, &c.files, &c.intruder);
    let view = |i: usize| peers(bed.host(i), &files[i]);
    assert!(
        intruder
            .wait_for_output("not admitted", Duration::from_secs(10))
            .expect("output"),
        "intruder never tried to join\n{}",
        dump(&[intruder])
    );
    for i in 0..4 {
        let list = view(i).expect("peers");
        assert!(
            find(&list, "intruder").is_none(),
            "n{i} lists the intruder: {list:?}"
        );
    }
    let own = peers(bed.host(4), &files[4]).expect("intruder peers");
    assert_eq!(own.len(), 1, "intruder knows others: {own:?}");

    // The nodes it knocked on show it: a log line with its address, and the refusals by
    // reason in `weft status` and /metrics. (Before, nothing but a debug line.)
    let intruder_addr = format!("{}:6783", bed.host(4).public_ip());
    let line = format!("node at {intruder_addr} failed admission: wrong cluster secret");
    assert!(
        c.procs[0]
            .wait_for_output(&line, Duration::from_secs(10))
            .expect("output"),
        "no {line:?} in n0's log\n{}",
        dump(&[&c.procs[0]])
    );
    let socket0 = files[0].socket.to_str().expect("utf-8");
    let status: Value = serde_json::from_str(
        &bed.host(0)
            .run_ok(&[BIN, "status", "-o", "json", "--api-socket", socket0])
            .expect("status"),
    )
    .expect("status json");
    let refused = &status["gossip"]["connections_refused"];
    assert!(
        refused["wrong_secret"].as_u64().is_some_and(|n| n > 0),
        "{status}"
    );
    let text = bed
        .host(0)
        .run_ok(&[BIN, "status", "--api-socket", socket0])
        .expect("status");
    assert!(
        text.lines()
            .any(|l| l.starts_with("refused nodes:") && l.contains("wrong_secret")),
        "{text}"
    );
    let metrics = bed
        .host(0)
        .sh("printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | nc -w 5 127.0.0.1 6782")
        .expect("metrics");
    let sample = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_gossip_refused_total{reason=\"wrong_secret\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(sample.is_some_and(|n| n > 0), "{metrics}");
}

#[test]
fn chain_of_seeds_forms_one_view_and_refuses_an_intruder() {
    if let Some(c) = chain("chain_of_seeds_forms_one_view_and_refuses_an_intruder") {
        intruder_refused(&c);
    }
}

#[test]
fn chain_of_seeds_forms_one_view_detects_failure_and_rejoins() {
    let Some(c) = chain("chain_of_seeds_forms_one_view_detects_failure_and_rejoins") else {
        return;
    };
    intruder_refused(&c);
    let Chain {
        bed,
        secret,
        names,
        files,
        mut procs,
        intruder,
        ..
    } = c;
    let refs: Vec<&Proc> = procs.iter().chain([&intruder]).collect();

    let view = |i: usize| peers(bed.host(i), &files[i]);

    // The victim's id and version as others see them.
    let before = peers(bed.host(0), &files[0]).expect("peers");
    let victim = find(&before, "n3").expect("n3 listed").clone();
    let victim_id = victim["node_id"].as_str().expect("node_id").to_owned();
    let victim_version = victim["version"].as_u64().expect("version");

    // kill -9 n3: every other node marks it suspect, then failed.
    procs[3].kill().expect("kill n3");
    let mut saw_suspect = false;
    let killed = Instant::now();
    let failed = wait_until(Duration::from_secs(20), || {
        let mut all_failed = true;
        for i in 0..3 {
            let state = view(i).and_then(|l| state_of(&l, "n3"));
            saw_suspect |= state.as_deref() == Some("suspect");
            all_failed &= state.as_deref() == Some("failed");
        }
        all_failed
    });
    assert!(
        failed,
        "n3 not failed everywhere within 20 s\n{}",
        dump(&refs[..3])
    );
    assert!(
        saw_suspect,
        "n3 went to failed without being suspected first"
    );
    eprintln!("n3 declared failed {:?} after kill -9", killed.elapsed());

    // Restart n3 with the same state directory: same id, higher version, alive everywhere.
    procs[3] = launch(bed.host(3), "n3", &secret, &files[3], &[bed.host(2)]);
    let rejoined = wait_until(Duration::from_secs(15), || {
        (0..4).all(|i| sees_all_alive(bed.host(i), &files[i], &names))
    });
    let refs: Vec<&Proc> = procs.iter().collect();
    assert!(rejoined, "n3 did not rejoin within 15 s\n{}", dump(&refs));
    for i in 0..3 {
        let list = view(i).expect("peers");
        let back = find(&list, "n3").expect("n3 listed");
        assert_eq!(back["node_id"], victim_id.as_str(), "n3 changed identity");
        let version = back["version"].as_u64().expect("version");
        assert!(
            version > victim_version,
            "n3 rejoined with version {version}, not above {victim_version}"
        );
    }

    // SIGTERM: n1 stops (keeping its address space for a restart), exits cleanly, removes its
    // socket; the others see it as stopped, not failed.
    procs[1].signal("TERM").expect("SIGTERM n1");
    let status = procs[1]
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("n1 still running 10 s after SIGTERM");
    assert!(
        status.success(),
        "n1 exited with {status}\n{}",
        dump(&[&procs[1]])
    );
    assert!(!files[1].socket.exists(), "n1 left its API socket behind");
    let left = wait_until(Duration::from_secs(10), || {
        [0, 2, 3].iter().all(|&i| {
            peers(bed.host(i), &files[i])
                .and_then(|l| state_of(&l, "n1"))
                .as_deref()
                == Some("stopped")
        })
    });
    assert!(left, "n1 not seen as stopped\n{}", dump(&refs));
}
