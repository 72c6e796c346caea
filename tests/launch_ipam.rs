//! Address management between real `weft launch` processes in network namespaces: the seed
//! starts the address space, the others get space from it by gossip, allocations on
//! different nodes never collide, and a node stopped by SIGTERM and started again gives a
//! container the address it had; `weft reset` hands a node's space to the others. Talks to the API socket directly (JSON lines). Needs root;
//! prints "skipped: ..." otherwise.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use weft_testbed::{require_root, wait_until, Host, Proc, TestBed};

#[path = "launch/common.rs"]
mod common;

use common::{write_secret, NodeFiles};

fn launch(host: &Host, name: &str, secret: &Path, files: &NodeFiles, seed: Option<&Host>) -> Proc {
    let extra = [
        "-v",
        "--datapath",
        "userspace",
        "--metrics-addr",
        "off",
        "--range",
        "10.40.0.0/16",
    ];
    common::launch(host, name, secret, files, seed.as_slice(), &extra)
}

/// One request on the API socket; `None` if the daemon is not answering (yet).
fn api(files: &NodeFiles, request: &Value) -> Option<Value> {
    let mut stream = UnixStream::connect(&files.socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut line = serde_json::to_vec(request).expect("request");
    line.push(b'\n');
    stream.write_all(&line).ok()?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).ok()?;
    serde_json::from_str(&answer).ok()
}

/// The node's own address space, once it has some.
fn space(files: &NodeFiles) -> Option<Vec<Ipv4Net>> {
    let answer = api(files, &json!({"cmd": "status"}))?;
    let list: Vec<Ipv4Net> = answer["status"]["address_space"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    (!list.is_empty()).then_some(list)
}

fn allocate(files: &NodeFiles, container: &str) -> Value {
    let answer =
        api(files, &json!({"cmd": "allocate", "container": container})).expect("allocate answered");
    assert_eq!(answer["ok"], true, "allocate {container}: {answer}");
    answer["allocation"].clone()
}

fn address_of(allocation: &Value) -> Ipv4Net {
    allocation["address"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {allocation}"))
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

/// Three test hosts, a cluster secret and each node's files.
struct Three {
    bed: TestBed,
    _secrets: tempfile::TempDir,
    secret: std::path::PathBuf,
    files: Vec<NodeFiles>,
    names: [&'static str; 3],
}

impl Three {
    fn new() -> Three {
        let bed = TestBed::new(3).expect("test bed");
        let secrets = tempfile::tempdir().expect("tempdir");
        let secret = write_secret(secrets.path(), "cluster.secret");
        Three {
            bed,
            _secrets: secrets,
            secret,
            files: (0..3).map(|_| NodeFiles::new()).collect(),
            names: ["n0", "n1", "n2"],
        }
    }
}

#[test]
fn nodes_get_space_allocate_distinct_addresses_and_keep_them_across_a_restart() {
    if !require_root("nodes_get_space_allocate_distinct_addresses_and_keep_them_across_a_restart") {
        return;
    }
    let Three {
        bed,
        _secrets,
        secret,
        files,
        names,
    } = Three::new();
    // A chain: n0 starts the cluster (and the address space), n1 joins through n0, n2
    // through n1.
    let mut procs: Vec<Proc> = (0..3usize)
        .map(|i| {
            let seed = i.checked_sub(1).map(|s| bed.host(s));
            launch(bed.host(i), names[i], &secret, &files[i], seed)
        })
        .collect();

    let all_have_space = wait_until(Duration::from_secs(60), || {
        files.iter().all(|f| space(f).is_some())
    });
    let refs: Vec<&Proc> = procs.iter().collect();
    assert!(all_have_space, "not every node got space\n{}", dump(&refs));
    let spaces: Vec<Vec<Ipv4Net>> = files.iter().map(|f| space(f).expect("space")).collect();
    let range: Ipv4Net = "10.40.0.0/16".parse().expect("net");
    for (i, a) in spaces.iter().enumerate() {
        assert!(a.iter().all(|n| range.contains(n)), "n{i}: {a:?}");
        for b in &spaces[i + 1..] {
            for x in a {
                assert!(
                    b.iter().all(|y| !x.contains(y) && !y.contains(x)),
                    "overlapping spaces {spaces:?}"
                );
            }
        }
    }

    // One container per node: distinct addresses, each in its own node's space, with the
    // node's gateway (first address of its first block), on-link, never a container's.
    let mut addresses: Vec<Ipv4Net> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let container = format!("c-{}", names[i]);
        let a = allocate(f, &container);
        let address = address_of(&a);
        assert!(
            spaces[i].iter().any(|n| n.contains(&address.addr())),
            "n{i} gave {address}, outside its space {:?}",
            spaces[i]
        );
        let gateway: Ipv4Addr = a["gateway"].as_str().expect("gateway").parse().expect("ip");
        assert_eq!(gateway, spaces[i][0].network(), "{a}");
        assert_ne!(gateway, address.addr(), "{a}");
        assert_eq!(a["bridge"], "weft");
        assert_eq!(a["cluster_range"], "10.40.0.0/16");
        assert_eq!(a["mtu"], 1420);
        // The same id gets the same address again.
        assert_eq!(address_of(&allocate(f, &container)), address);
        addresses.push(address);
    }
    let mut unique = addresses.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "addresses given twice: {addresses:?}");

    // The IPAM report names the genesis and lists n1's pieces as n1's.
    let report = api(&files[0], &json!({"cmd": "ipam"})).expect("ipam");
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["ipam"]["genesis"].is_object(), "{report}");

    // A released address is not an error to release twice; bad requests change nothing.
    let released =
        api(&files[2], &json!({"cmd": "release", "container": "c-n2"})).expect("release");
    assert_eq!(released["ok"], true, "{released}");
    let again = api(&files[2], &json!({"cmd": "release", "container": "c-n2"})).expect("release");
    assert_eq!(again["ok"], true, "{again}");
    let refused = api(&files[0], &json!({"cmd": "forget", "node": "n1"})).expect("forget");
    assert_eq!(refused["ok"], false, "a live node was forgotten: {refused}");

    // SIGTERM n1: it stops (others see "stopped"), keeps its state, and on restart gives the
    // same container the same address.
    procs[1].signal("TERM").expect("SIGTERM n1");
    let status = procs[1]
        .wait_timeout(Duration::from_secs(15))
        .expect("wait")
        .expect("n1 still running 15 s after SIGTERM");
    assert!(
        status.success(),
        "n1 exited with {status}\n{}",
        dump(&[&procs[1]])
    );
    let stopped = wait_until(Duration::from_secs(10), || {
        api(&files[0], &json!({"cmd": "peers"})).is_some_and(|p| {
            p["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == "n1" && m["state"] == "stopped")
        })
    });
    assert!(
        stopped,
        "n0 does not show n1 as stopped\n{}",
        dump(&[&procs[0]])
    );
    procs[1] = launch(bed.host(1), "n1", &secret, &files[1], Some(bed.host(0)));
    let back = wait_until(Duration::from_secs(30), || space(&files[1]).is_some());
    assert!(
        back,
        "n1 has no space after restart\n{}",
        dump(&[&procs[1]])
    );
    assert_eq!(
        space(&files[1]).expect("space"),
        spaces[1],
        "n1's space changed across a restart"
    );
    assert_eq!(
        address_of(&allocate(&files[1], "c-n1")),
        addresses[1],
        "the same container got another address after a restart"
    );

    // `weft reset` on n2: it hands its space over, says so, exits 0; the others show it as
    // left and its space as theirs.
    let answer = api(&files[2], &json!({"cmd": "reset"})).expect("reset answered");
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("handed its address space")),
        "{answer}"
    );
    let status = procs[2]
        .wait_timeout(Duration::from_secs(15))
        .expect("wait")
        .expect("n2 still running 15 s after reset");
    assert!(
        status.success(),
        "n2 exited with {status}\n{}",
        dump(&[&procs[2]])
    );
    let refs: Vec<&Proc> = procs.iter().collect();
    let taken_over = wait_until(Duration::from_secs(15), || {
        let Some(a) = space(&files[0]) else {
            return false;
        };
        let Some(b) = space(&files[1]) else {
            return false;
        };
        spaces[2]
            .iter()
            .all(|x| a.iter().chain(&b).any(|y| y.contains(x)))
    });
    assert!(taken_over, "n2's space was not taken over\n{}", dump(&refs));
    let left = wait_until(Duration::from_secs(10), || {
        api(&files[0], &json!({"cmd": "peers"})).is_some_and(|p| {
            p["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == "n2" && m["state"] == "left")
        })
    });
    assert!(left, "n0 does not show n2 as left\n{}", dump(&refs));

    // Its keys and state are gone: launched again on the same state directory, n2 is a new
    // node that gets space of its own and hands out addresses.
    let old_id = api(&files[0], &json!({"cmd": "peers"}))
        .and_then(|p| {
            p["peers"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == "n2")
                .and_then(|m| m["node_id"].as_str().map(String::from))
        })
        .expect("n2's old node id");
    assert!(
        !files[2].state.join("identity.key").exists(),
        "n2's identity key is still there after reset"
    );
    procs[2] = launch(bed.host(2), "n2", &secret, &files[2], Some(bed.host(0)));
    let fresh = wait_until(Duration::from_secs(30), || space(&files[2]).is_some());
    assert!(fresh, "n2 relaunched got no space\n{}", dump(&[&procs[2]]));
    let status = api(&files[2], &json!({"cmd": "status"})).expect("status");
    assert_ne!(
        status["status"]["node_id"],
        old_id.as_str(),
        "same identity after reset"
    );
    let a = address_of(&allocate(&files[2], "c-n2-again"));
    // n0's and n1's containers still hold theirs (n2's old one was released).
    assert!(
        !addresses[..2].contains(&a),
        "{a} given twice: {addresses:?}"
    );
}

/// The members journal: n2 gets space and is killed (it stays down); then n0 and n1, the
/// only nodes that held n2's record, both restart. They still know that n2's space is n2's
/// (from their journals; without them the space would show as claimed by nobody), show n2
/// as failed, and hand out none of it.
#[test]
fn a_down_nodes_space_stays_known_after_every_node_that_knew_it_restarts() {
    if !require_root("a_down_nodes_space_stays_known_after_every_node_that_knew_it_restarts") {
        return;
    }
    let Three {
        bed,
        _secrets,
        secret,
        files,
        names,
    } = Three::new();
    let seed_of = |i: usize| (i > 0).then(|| bed.host(0));
    let mut procs: Vec<Proc> = (0..3usize)
        .map(|i| launch(bed.host(i), names[i], &secret, &files[i], seed_of(i)))
        .collect();
    let all_have_space = wait_until(Duration::from_secs(60), || {
        files.iter().all(|f| space(f).is_some())
    });
    let refs: Vec<&Proc> = procs.iter().collect();
    assert!(all_have_space, "not every node got space\n{}", dump(&refs));
    let n2_space = space(&files[2]).expect("space");
    let n2_id = api(&files[2], &json!({"cmd": "status"})).expect("status")["status"]["node_id"]
        .as_str()
        .expect("node id")
        .to_string();
    let owned_by_n2 = |f: &NodeFiles| -> Option<u64> {
        let report = api(f, &json!({"cmd": "ipam"}))?;
        report["ipam"]["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == n2_id.as_str())?["owned"]
            .as_u64()
    };
    let expected: u64 = n2_space.iter().map(|n| 1u64 << (32 - n.prefix_len())).sum();
    let seen = wait_until(Duration::from_secs(30), || {
        files[..2].iter().all(|f| owned_by_n2(f) == Some(expected))
    });
    assert!(seen, "n0 and n1 never saw n2's space\n{}", dump(&refs));

    procs[2].kill().expect("kill -9 n2");
    let failed = wait_until(Duration::from_secs(30), || {
        files[..2].iter().all(|f| {
            api(f, &json!({"cmd": "peers"})).is_some_and(|p| {
                p["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["name"] == "n2" && m["state"] == "failed")
            })
        })
    });
    assert!(failed, "n2 not seen failed\n{}", dump(&refs));

    let state_on = |f: &NodeFiles, name: &str| -> Option<Value> {
        let peers = api(f, &json!({"cmd": "peers"}))?;
        peers["peers"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["state"].clone())
    };
    let stop = |p: &Proc| {
        p.signal("TERM").expect("SIGTERM");
        p.wait_timeout(Duration::from_secs(15))
            .expect("wait")
            .expect("still running 15 s after SIGTERM");
    };
    // n1 stops (SIGTERM: it tells n0 so); then n0 restarts alone: from its journal it still
    // shows n1 as stopped (not failed) and n2 as failed, with n2's space n2's.
    stop(&procs[1]);
    let stopped = wait_until(Duration::from_secs(10), || {
        state_on(&files[0], "n1") == Some(json!("stopped"))
    });
    assert!(stopped, "n0 does not show n1 stopped\n{}", dump(&refs));
    stop(&procs[0]);
    procs[0] = launch(bed.host(0), names[0], &secret, &files[0], None);
    let alone = wait_until(Duration::from_secs(20), || {
        space(&files[0]).is_some() && owned_by_n2(&files[0]) == Some(expected)
    });
    assert!(
        alone,
        "n0 restarted alone lost n2's space\n{}",
        dump(&[&procs[0]])
    );
    assert_eq!(state_on(&files[0], "n1"), Some(json!("stopped")));
    assert_eq!(state_on(&files[0], "n2"), Some(json!("failed")));
    procs[1] = launch(bed.host(1), names[1], &secret, &files[1], seed_of(1));
    let refs: Vec<&Proc> = procs[..2].iter().collect();
    let back = wait_until(Duration::from_secs(30), || {
        files[..2]
            .iter()
            .all(|f| space(f).is_some() && owned_by_n2(f) == Some(expected))
    });
    assert!(
        back,
        "after both restarts n2's space is not n2's on both: n0 {:?} n1 {:?}\n{}",
        owned_by_n2(&files[0]),
        owned_by_n2(&files[1]),
        dump(&refs)
    );
    for f in &files[..2] {
        let report = api(f, &json!({"cmd": "ipam"})).expect("ipam");
        assert_eq!(report["ipam"]["unclaimed"], 0, "{report}");
        let peers = api(f, &json!({"cmd": "peers"})).expect("peers");
        let n2 = peers["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == "n2")
            .cloned();
        assert_eq!(
            n2.as_ref().map(|m| m["state"].clone()),
            Some(json!("failed")),
            "{peers}"
        );
    }
    // Nothing of n2's space is handed out by the others.
    for (i, f) in files[..2].iter().enumerate() {
        let a = address_of(&allocate(f, &format!("after-{i}")));
        assert!(
            n2_space.iter().all(|n| !n.contains(&a.addr())),
            "n{i} gave {a} out of n2's space {n2_space:?}"
        );
    }
}
