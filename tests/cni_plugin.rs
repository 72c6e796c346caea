//! weft-cni run directly with crafted environments and stdin against a real daemon in a
//! test-bed host: every error path gives its code and changes nothing; 20 concurrent ADDs get
//! 20 distinct addresses; 200 ADD/DEL cycles leave no address, veth, route or file behind; a
//! DEL while the daemon is down is kept and applied when it is back; STATUS says 51 without
//! address space. Needs root.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use weft_testbed::{require_root, wait_until, TestBed};

#[path = "cni/common.rs"]
mod common;

use common::*;

/// One node with a ready daemon.
struct Node {
    bed: TestBed,
    _secrets: tempfile::TempDir,
    secret: std::path::PathBuf,
    files: NodeFiles,
    proc: weft_testbed::Proc,
    host: String,
}

impl Node {
    fn new(range: &str) -> Node {
        let bed = TestBed::new(1).expect("test bed");
        let secrets = tempfile::tempdir().expect("tempdir");
        let secret = write_secret(secrets.path(), "cluster.secret");
        let files = NodeFiles::new();
        let proc = launch(bed.host(0), "n0", &secret, &files, &[], range);
        wait_ready(&files, &proc);
        let host = bed.host(0).name().to_string();
        Node {
            bed,
            _secrets: secrets,
            secret,
            files,
            proc,
            host,
        }
    }

    /// The plugin config (one plugin, as a runtime passes it) in `version`.
    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version, "name": "weft", "type": "weft",
            "apiSocket": self.files.socket, "stateDir": self.files.state,
        })
    }

    /// Runs the plugin with `command` for attachment `id`/eth0 in `netns`.
    fn run(&self, command: &str, id: &str, netns: &str, conf: &Value) -> Outcome {
        let ns = netns_path(netns);
        let vars = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        exec_plugin(&self.host, &vars, conf.to_string().as_bytes())
    }

    /// Everything an attachment can leave behind: weft veths on the host, CNI addresses the
    /// daemon holds, addresses in use, files in the spool.
    fn footprint(&self) -> (Vec<String>, Vec<Value>, u64, Vec<String>) {
        let spool = std::fs::read_dir(self.files.state.join("cni-releases"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        (
            weft_veths(&self.bed, &self.host),
            pods(&self.files),
            status(&self.files).expect("status")["addresses_used"]
                .as_u64()
                .expect("addresses_used"),
            spool,
        )
    }
}

#[test]
fn every_error_path_gives_its_code_and_changes_nothing() {
    if !require_root("every_error_path_gives_its_code_and_changes_nothing") {
        return;
    }
    let node = Node::new("10.47.0.0/16");
    let ctr = node.bed.container().expect("container");
    let ns = netns_path(&ctr);
    let conf = node.conf("1.0.0").to_string();
    let base = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", ns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let with = |changes: &[(&'static str, Option<&'static str>)]| -> Vec<(&str, &str)> {
        let mut vars: Vec<(&str, &str)> = base.to_vec();
        for (k, v) in changes {
            vars.retain(|(name, _)| name != k);
            if let Some(v) = v {
                vars.push((k, v));
            }
        }
        vars
    };
    let before = node.footprint();
    let nowhere = tempfile::tempdir().expect("tempdir");
    let mut no_daemon = node.conf("1.0.0");
    no_daemon["apiSocket"] = json!(nowhere.path().join("weft.sock"));
    let no_daemon = no_daemon.to_string();
    // (what, variables, stdin, code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64);
    let cases: Vec<Case> = vec![
        (
            "no CNI_COMMAND",
            with(&[("CNI_COMMAND", None)]),
            conf.clone(),
            4,
        ),
        (
            "unknown command",
            with(&[("CNI_COMMAND", Some("ATTACH"))]),
            conf.clone(),
            4,
        ),
        (
            "no container id",
            with(&[("CNI_CONTAINERID", None)]),
            conf.clone(),
            4,
        ),
        (
            "bad container id",
            with(&[("CNI_CONTAINERID", Some("../x"))]),
            conf.clone(),
            4,
        ),
        ("no netns", with(&[("CNI_NETNS", None)]), conf.clone(), 4),
        (
            "netns not there",
            with(&[("CNI_NETNS", Some("/run/netns/no-such-ns"))]),
            conf.clone(),
            4,
        ),
        (
            "netns not a namespace",
            with(&[("CNI_NETNS", Some("/etc/hostname"))]),
            conf.clone(),
            4,
        ),
        (
            "bad ifname",
            with(&[("CNI_IFNAME", Some("eth0:1"))]),
            conf.clone(),
            4,
        ),
        (
            "bad CNI_ARGS",
            with(&[("CNI_ARGS", Some("K8S_POD_NAME"))]),
            conf.clone(),
            4,
        ),
        (
            "bad labels",
            with(&[("CNI_ARGS", Some("weft.labels=a b"))]),
            conf.clone(),
            4,
        ),
        ("not JSON", base.to_vec(), "{cniVersion".into(), 6),
        ("empty stdin", base.to_vec(), String::new(), 6),
        (
            "mtu not a number",
            base.to_vec(),
            r#"{"cniVersion":"1.0.0","name":"weft","type":"weft","mtu":"x"}"#.into(),
            6,
        ),
        (
            "old version",
            base.to_vec(),
            r#"{"cniVersion":"0.2.0","name":"weft","type":"weft"}"#.into(),
            1,
        ),
        (
            "no version",
            base.to_vec(),
            r#"{"name":"weft","type":"weft"}"#.into(),
            1,
        ),
        (
            "no name",
            base.to_vec(),
            r#"{"cniVersion":"1.0.0","type":"weft"}"#.into(),
            7,
        ),
        (
            "bad mtu",
            base.to_vec(),
            r#"{"cniVersion":"1.0.0","name":"weft","type":"weft","mtu":10}"#.into(),
            7,
        ),
        (
            "another bridge",
            base.to_vec(),
            r#"{"cniVersion":"1.0.0","name":"weft","type":"weft","bridge":"cni0"}"#.into(),
            2,
        ),
        (
            "missing IPAM plugin",
            base.to_vec(),
            r#"{"cniVersion":"1.0.0","name":"weft","type":"weft","ipam":{"type":"no-such-ipam"}}"#
                .into(),
            7,
        ),
        ("daemon down", base.to_vec(), no_daemon.clone(), 11),
        (
            "CHECK before 0.4.0",
            with(&[("CNI_COMMAND", Some("CHECK"))]),
            r#"{"cniVersion":"0.3.1","name":"weft","type":"weft"}"#.into(),
            1,
        ),
        (
            "CHECK without prevResult",
            with(&[("CNI_COMMAND", Some("CHECK"))]),
            conf.clone(),
            7,
        ),
        (
            "GC before 1.1.0",
            with(&[("CNI_COMMAND", Some("GC"))]),
            conf.clone(),
            1,
        ),
        (
            "STATUS before 1.1.0",
            with(&[("CNI_COMMAND", Some("STATUS"))]),
            conf.clone(),
            1,
        ),
        (
            "GC without CNI_PATH",
            vec![("CNI_COMMAND", "GC")],
            node.conf("1.1.0").to_string(),
            4,
        ),
    ];
    for (what, vars, stdin, code) in cases {
        let out = exec_plugin(&node.host, &vars, stdin.as_bytes());
        assert!(!out.success, "{what}: {out:?}");
        let err = out.json();
        assert_eq!(err["code"], code, "{what}: {out:?}");
        assert!(
            err["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {out:?}"
        );
        // The error is written in the config's version when there is one.
        let want_version = serde_json::from_str::<Value>(&stdin)
            .ok()
            .and_then(|c| c["cniVersion"].as_str().map(String::from))
            .unwrap_or_else(|| "1.1.0".into());
        assert_eq!(err["cniVersion"], json!(want_version), "{what}: {out:?}");
        assert_eq!(node.footprint(), before, "{what} changed something");
        assert!(
            !ip(&node.bed, &ctr, &["-o", "link"]).contains("eth0"),
            "{what}"
        );
    }
    // The messages say what to do.
    let down = exec_plugin(&node.host, &base, no_daemon.as_bytes());
    assert!(down.stdout.contains("weft launch"), "{down:?}");
    let missing = exec_plugin(
        &node.host,
        &with(&[("CNI_CONTAINERID", None), ("CNI_IFNAME", None)]),
        conf.as_bytes(),
    );
    assert!(
        missing.json()["msg"]
            .as_str()
            .is_some_and(|m| m.contains("CNI_CONTAINERID") && m.contains("CNI_IFNAME")),
        "{missing:?}"
    );

    // An interface of that name already in the namespace: 101, the daemon holds nothing new.
    node.bed
        .run_ok_in(
            &ctr,
            &[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
            ],
        )
        .expect("a foreign eth0");
    let exists = node.run("ADD", "c1", &ctr, &node.conf("1.0.0"));
    assert_eq!(exists.code(), 101, "{exists:?}");
    assert_eq!(node.footprint(), before);
    node.bed
        .run_ok_in(&ctr, &["ip", "link", "del", "eth0"])
        .expect("remove it");

    // CHECK of a namespace that is gone: 3 (container unknown).
    let added = node.run("ADD", "c2", &ctr, &node.conf("1.0.0")).ok().json();
    let mut check = node.conf("1.0.0");
    check["prevResult"] = added;
    node.run("CHECK", "c2", &ctr, &check).ok();
    node.bed.remove_container(&ctr);
    assert_eq!(node.run("CHECK", "c2", &ctr, &check).code(), 3);
    node.run("DEL", "c2", &ctr, &node.conf("1.0.0")).ok();
    assert_eq!(node.footprint(), before);

    // A retried ADD gets the address the daemon already holds for the attachment (as after
    // a plugin killed between the allocation and the veth).
    let ctr = node.bed.container().expect("container");
    let held = api(
        &node.files,
        &json!({"cmd": "allocate", "container": "retry", "ifname": "eth0", "network": "weft"}),
    )
    .expect("allocate");
    let added = node
        .run("ADD", "retry", &ctr, &node.conf("1.0.0"))
        .ok()
        .json();
    assert_eq!(
        added["ips"][0]["address"], held["allocation"]["address"],
        "{added}"
    );
    node.run("DEL", "retry", &ctr, &node.conf("1.0.0")).ok();
    assert_eq!(node.footprint(), before);

    // VERSION needs nothing but the version; STATUS is fine with a ready daemon.
    let v = exec_plugin(
        &node.host,
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion":"0.4.0"}"#,
    )
    .ok()
    .json();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert!(v["supportedVersions"]
        .as_array()
        .is_some_and(|a| a.contains(&json!("1.1.0"))));
    exec_plugin(
        &node.host,
        &[("CNI_COMMAND", "STATUS")],
        node.conf("1.1.0").to_string().as_bytes(),
    )
    .ok();
    let mut gone = node.conf("1.1.0");
    gone["apiSocket"] = json!(nowhere.path().join("weft.sock"));
    let status = exec_plugin(
        &node.host,
        &[("CNI_COMMAND", "STATUS")],
        gone.to_string().as_bytes(),
    );
    assert_eq!(status.code(), 50);
}

#[test]
fn status_is_51_while_the_node_has_no_address_space() {
    if !require_root("status_is_51_while_the_node_has_no_address_space") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let files = NodeFiles::new();
    // A joiner whose seed never answers: no cluster, no address space.
    let proc = launch(
        bed.host(0),
        "lonely",
        &secret,
        &files,
        &[bed.host(1)],
        "10.48.0.0/16",
    );
    assert!(
        wait_until(Duration::from_secs(30), || status(&files).is_some()),
        "the daemon does not answer: {:?}",
        proc.output()
    );
    let conf = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft",
        "apiSocket": files.socket, "stateDir": files.state});
    let out = exec_plugin(
        bed.host(0).name(),
        &[("CNI_COMMAND", "STATUS")],
        conf.to_string().as_bytes(),
    );
    assert_eq!(out.code(), 51, "{out:?}");
    // And ADD says try again later, leaving nothing.
    let ctr = bed.container().expect("container");
    let ns = netns_path(&ctr);
    let vars = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", ns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let mut add = conf.clone();
    add["cniVersion"] = json!("1.0.0");
    let out = exec_plugin(bed.host(0).name(), &vars, add.to_string().as_bytes());
    assert_eq!(out.code(), 11, "{out:?}");
    assert!(weft_veths(&bed, bed.host(0).name()).is_empty());
}

#[test]
fn concurrent_adds_get_distinct_addresses_and_cycles_leave_nothing_behind() {
    if !require_root("concurrent_adds_get_distinct_addresses_and_cycles_leave_nothing_behind") {
        return;
    }
    let node = Node::new("10.49.0.0/16");
    let conf = node.conf("1.1.0");
    let before = node.footprint();

    // 20 ADDs at once, each in its own namespace.
    let ctrs: Vec<String> = (0..20)
        .map(|_| node.bed.container().expect("container"))
        .collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = ctrs
            .iter()
            .enumerate()
            .map(|(i, ctr)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.run("ADD", &format!("par{i}"), ctr, conf).ok().json())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let addresses: BTreeSet<String> = results
        .iter()
        .map(|r| {
            r["ips"][0]["address"]
                .as_str()
                .expect("address")
                .to_string()
        })
        .collect();
    assert_eq!(addresses.len(), 20, "{addresses:?}");
    for (ctr, r) in ctrs.iter().zip(&results) {
        let inside = ip(&node.bed, ctr, &["-o", "addr", "show", "dev", "eth0"]);
        assert!(
            inside.contains(r["ips"][0]["address"].as_str().unwrap_or("?")),
            "{inside}"
        );
    }
    assert_eq!(pods(&node.files).len(), 20);
    std::thread::scope(|s| {
        for (i, ctr) in ctrs.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.run("DEL", &format!("par{i}"), ctr, conf).ok());
        }
    });
    assert_eq!(
        node.footprint(),
        before,
        "the concurrent ADDs left something"
    );

    // 200 ADD/DEL cycles in one namespace.
    let ctr = &ctrs[0];
    let routes_before = ip(&node.bed, ctr, &["route", "show"]);
    let mut seen = BTreeSet::new();
    for i in 0..200 {
        let id = format!("cycle{i}");
        let r = node.run("ADD", &id, ctr, &conf).ok().json();
        seen.insert(
            r["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        node.run("DEL", &id, ctr, &conf).ok();
    }
    assert!(!seen.is_empty());
    assert_eq!(node.footprint(), before, "200 cycles left something");
    assert_eq!(
        ip(&node.bed, ctr, &["route", "show"]),
        routes_before,
        "routes left in the container"
    );
    assert!(!ip(&node.bed, ctr, &["-o", "link"]).contains("eth0"));
    let host_routes = ip(&node.bed, &node.host, &["route", "show", "table", "all"]);
    assert!(
        !host_routes.contains(" vw"),
        "host routes through a pod veth left: {host_routes}"
    );
    let pods_file: Value = serde_json::from_slice(
        &std::fs::read(node.files.state.join("pods.json")).expect("pods.json"),
    )
    .expect("pods.json is JSON");
    assert_eq!(
        pods_file["pods"],
        json!([]),
        "pods.json keeps released pods"
    );
}

#[test]
fn a_del_while_the_daemon_is_down_is_applied_when_it_is_back() {
    if !require_root("a_del_while_the_daemon_is_down_is_applied_when_it_is_back") {
        return;
    }
    let node = Node::new("10.50.0.0/16");
    let conf = node.conf("1.0.0");
    let ctr = node.bed.container().expect("container");
    let result = node.run("ADD", "c1", &ctr, &conf).ok().json();
    let address = result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    let held_before = status(&node.files).expect("status")["addresses_used"].clone();

    // Stop the daemon (as systemctl stop does): DEL still succeeds and removes the veth; the
    // release waits in the spool, twice is one release.
    node.proc.signal("TERM").expect("SIGTERM");
    assert!(
        node.proc
            .wait_timeout(Duration::from_secs(20))
            .expect("wait")
            .is_some(),
        "the daemon did not stop"
    );
    node.run("DEL", "c1", &ctr, &conf).ok();
    node.run("DEL", "c1", &ctr, &conf).ok();
    assert!(weft_veths(&node.bed, &node.host).is_empty());
    let spool = node.files.state.join("cni-releases");
    let kept: Vec<_> = std::fs::read_dir(&spool)
        .expect("spool")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    // An ADD while the daemon is down: try again later.
    let ctr2 = node.bed.container().expect("container");
    assert_eq!(node.run("ADD", "c2", &ctr2, &conf).code(), 11);

    // Back with the same state, while a plugin holds the spool's lock: the daemon cannot
    // apply the release yet, and the address is not handed out to anyone else meanwhile.
    let locked = weft_cni::spool::Spool::new(&node.files.state)
        .lock(false)
        .expect("lock")
        .expect("the spool exists");
    let proc = launch(
        node.bed.host(0),
        "n0",
        &node.secret,
        &node.files,
        &[],
        "10.50.0.0/16",
    );
    wait_ready(&node.files, &proc);
    for i in 0..5 {
        let a = api(
            &node.files,
            &json!({"cmd": "allocate", "container": format!("probe{i}")}),
        )
        .expect("allocate");
        assert_eq!(a["ok"], true, "{a}");
        assert_ne!(
            a["allocation"]["address"],
            json!(address),
            "the held address was handed out again"
        );
    }
    assert_eq!(pods(&node.files).len(), 1, "c1 is still held");
    drop(locked);
    assert!(
        wait_until(Duration::from_secs(30), || pods(&node.files).is_empty()),
        "the spooled release was not applied: {:?}",
        pods(&node.files)
    );
    // The daemon removes the spool file and logs just after the pod is gone.
    let applied = wait_until(Duration::from_secs(10), || {
        std::fs::read_dir(&spool).is_ok_and(|d| d.count() == 0)
            && proc
                .output()
                .is_ok_and(|o| o.stderr.contains("spooled release applied"))
    });
    let log = proc.output().expect("output").stderr;
    assert!(
        applied,
        "the spool file stayed or nothing was logged: {log}"
    );
    let used = status(&node.files).expect("status")["addresses_used"]
        .as_u64()
        .expect("used");
    assert_eq!(
        used,
        held_before.as_u64().expect("used before") - 1 + 5,
        "c1's address is free, the probes' held"
    );
    node.run("ADD", "c3", &ctr2, &conf).ok();
}
