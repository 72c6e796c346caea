//! weft-cni through libcni, the library containerd and CRI-O use to run CNI plugins (a small
//! Go driver, tests/cni/driver): ADD, CHECK, DEL, DEL again, GC, STATUS, VERSION against real
//! `weft launch` daemons in test-bed hosts; pods on two nodes ping each other through the
//! mesh; results have each protocol version's shape, as the reference bridge plugin's do;
//! delegated IPAM with the reference host-local and static plugins; chained with the reference
//! portmap and bandwidth plugins. Needs root.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use weft_testbed::{require_root, wait_until, TestBed};

#[path = "cni/common.rs"]
mod common;

use common::*;

/// The container's eth0 as `ip -j addr` has it: (address/prefix, mtu, mac).
fn eth0(bed: &TestBed, ctr: &str) -> (String, u64, String) {
    let j: Value =
        serde_json::from_str(&ip(bed, ctr, &["-j", "addr", "show", "dev", "eth0"])).expect("ip -j");
    let link = &j[0];
    let addr = link["addr_info"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["family"] == "inet"))
        .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
        .unwrap_or_default();
    (
        addr,
        link["mtu"].as_u64().unwrap_or(0),
        link["address"].as_str().unwrap_or("").to_string(),
    )
}

fn ping(bed: &TestBed, from: &str, to: &str) -> bool {
    bed.run_in(from, &["ping", "-n", "-q", "-c", "1", "-W", "1", to])
        .is_ok_and(|o| o.status.success())
}

fn address_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string()
}

#[test]
fn libcni_add_check_del_gc_status_version_and_pods_reach_each_other() {
    if !require_root("libcni_add_check_del_gc_status_version_and_pods_reach_each_other") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let files = [NodeFiles::new(), NodeFiles::new()];
    let range = "10.44.0.0/16";
    let p0 = launch(bed.host(0), "n0", &secret, &files[0], &[], range);
    let p1 = launch(bed.host(1), "n1", &secret, &files[1], &[bed.host(0)], range);
    wait_ready(&files[0], &p0);
    wait_ready(&files[1], &p1);
    let hosts = [
        bed.host(0).name().to_string(),
        bed.host(1).name().to_string(),
    ];
    let cni = CniDir::new();
    let lists: Vec<_> = (0..2)
        .map(|i| {
            cni.conflist(
                &format!("n{i}.conflist"),
                &weft_conflist("weft", "1.0.0", &files[i], json!({})),
            )
        })
        .collect();

    // VERSION, as libcni asks it.
    let versions = driver(&hosts[0], &cni, "version", &lists[0], &["weft"])
        .ok()
        .json();
    assert_eq!(
        versions,
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    // ADD a pod on each node.
    let ctrs = [
        bed.container().expect("container"),
        bed.container().expect("container"),
    ];
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=x;weft.labels=app=web,tier=front";
    let results: Vec<Value> = (0..2)
        .map(|i| {
            driver(
                &hosts[i],
                &cni,
                "add",
                &lists[i],
                &[&format!("pod{i}"), "eth0", &netns_path(&ctrs[i]), args],
            )
            .ok()
            .json()
        })
        .collect();
    let r = &results[0];
    assert_eq!(r["cniVersion"], "1.0.0", "{r}");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 2, "{r}");
    assert!(
        ifaces[0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("vw")),
        "{r}"
    );
    assert!(ifaces[0].get("sandbox").is_none(), "{r}");
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], netns_path(&ctrs[0]));
    let ip0 = &r["ips"][0];
    assert_eq!(ip0["interface"], 1, "{r}");
    assert!(
        ip0.get("version").is_none(),
        "1.0.0 results have no IP version: {r}"
    );
    assert_eq!(
        r["dns"],
        json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]})
    );
    let gw = ip0["gateway"].as_str().expect("gateway").to_string();
    let routes: BTreeSet<(String, String)> = r["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|x| {
            (
                x["dst"].as_str().unwrap_or("").to_string(),
                x["gw"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(routes.contains(&("0.0.0.0/0".into(), gw.clone())), "{r}");
    assert!(routes.contains(&(range.into(), gw.clone())), "{r}");

    // Inside the container: the address, MTU and MAC of the result, the routes.
    let (addr, mtu, mac) = eth0(&bed, &ctrs[0]);
    assert_eq!(addr, address_of(r));
    assert_eq!(mtu, 1420, "the daemon's tunnel MTU");
    assert_eq!(json!(mac), ifaces[1]["mac"]);
    let inside = ip(&bed, &ctrs[0], &["route", "show"]);
    assert!(
        inside.contains(&format!("default via {gw} dev eth0")),
        "{inside}"
    );
    assert!(
        inside.contains(&format!("{range} via {gw} dev eth0")),
        "{inside}"
    );
    let host_links = ip(&bed, &hosts[0], &["-o", "link", "show", "master", "weft"]);
    assert!(
        host_links.contains(ifaces[0]["name"].as_str().unwrap_or("?")),
        "{host_links}"
    );

    // The pod on n0 reaches the pod on n1 through the mesh, and back.
    let a1 = address_of(&results[1]);
    let a1 = a1.split('/').next().unwrap_or_default().to_string();
    let a0 = address_of(r)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_ne!(a0, a1);
    assert!(
        wait_until(Duration::from_secs(30), || ping(&bed, &ctrs[0], &a1)),
        "pod0 on n0 cannot reach pod1 ({a1}) on n1"
    );
    assert!(ping(&bed, &ctrs[1], &a0), "pod1 cannot reach pod0 ({a0})");

    // The daemon keeps the pod's identity: the API and `weft pods -o json`.
    let pods0 = pods(&files[0]);
    assert_eq!(pods0.len(), 1, "{pods0:?}");
    let shown = bed
        .host(0)
        .run_ok(&[
            BIN,
            "pods",
            "-o",
            "json",
            "--api-socket",
            files[0].socket_str(),
        ])
        .expect("weft pods");
    let shown: Value = serde_json::from_str(&shown).expect("weft pods json");
    let pod = &shown[0];
    assert_eq!(pod["container"], "pod0");
    assert_eq!(pod["ifname"], "eth0");
    assert_eq!(pod["pod_namespace"], "shop");
    assert_eq!(pod["pod_name"], "web-0");
    assert_eq!(pod["labels"], json!({"app": "web", "tier": "front"}));
    assert_eq!(pod["network"], "weft");
    assert_eq!(json!(address_of(r)), pod["address"]);

    // CHECK passes; with the default route gone it fails with weft's CHECK code.
    driver(
        &hosts[0],
        &cni,
        "check",
        &lists[0],
        &["pod0", "eth0", &netns_path(&ctrs[0]), args],
    )
    .ok();
    bed.run_ok_in(&ctrs[0], &["ip", "route", "del", "default"])
        .expect("route del");
    let failed = driver(
        &hosts[0],
        &cni,
        "check",
        &lists[0],
        &["pod0", "eth0", &netns_path(&ctrs[0]), args],
    );
    assert_eq!(failed.code(), 102, "{failed:?}");
    assert!(failed.stdout.contains("0.0.0.0/0"), "{failed:?}");
    bed.run_ok_in(
        &ctrs[0],
        &["ip", "route", "add", "default", "via", &gw, "dev", "eth0"],
    )
    .expect("route add");

    // ADD of the same attachment again: the interface exists, an error, nothing changes.
    let veths_before = weft_veths(&bed, &hosts[0]);
    let again = driver(
        &hosts[0],
        &cni,
        "add",
        &lists[0],
        &["pod0", "eth0", &netns_path(&ctrs[0]), args],
    );
    assert_eq!(again.code(), 101, "{again:?}");
    assert_eq!(weft_veths(&bed, &hosts[0]), veths_before);
    assert_eq!(pods(&files[0]).len(), 1);
    assert!(ping(&bed, &ctrs[0], &a1), "the refused ADD broke pod0");

    // DEL, and DEL again: the veth and the address are gone.
    driver(
        &hosts[0],
        &cni,
        "del",
        &lists[0],
        &["pod0", "eth0", &netns_path(&ctrs[0]), args],
    )
    .ok();
    assert!(
        weft_veths(&bed, &hosts[0]).is_empty(),
        "{:?}",
        weft_veths(&bed, &hosts[0])
    );
    assert!(
        !ip(&bed, &ctrs[0], &["-o", "link"]).contains("eth0"),
        "eth0 left in the container"
    );
    assert!(pods(&files[0]).is_empty(), "the address is still held");
    driver(
        &hosts[0],
        &cni,
        "del",
        &lists[0],
        &["pod0", "eth0", &netns_path(&ctrs[0]), args],
    )
    .ok();
    // DEL with the namespace gone succeeds too.
    bed.remove_container(&ctrs[1]);
    driver(
        &hosts[1],
        &cni,
        "del",
        &lists[1],
        &["pod1", "eth0", &netns_path(&ctrs[1]), args],
    )
    .ok();
    assert!(pods(&files[1]).is_empty());
    assert!(weft_veths(&bed, &hosts[1]).is_empty());

    // GC (spec 1.1.0): two attachments, one still valid; the other is released and its veth
    // removed. libcni 1.1 runs ADD with 1.0.0, GC with the same network at 1.1.0.
    let gc_list = cni.conflist(
        "gc.conflist",
        &weft_conflist("weft", "1.1.0", &files[0], json!({})),
    );
    let c2 = bed.container().expect("container");
    let c3 = bed.container().expect("container");
    for (id, ctr) in [("keep", &c2), ("stale", &c3)] {
        driver(
            &hosts[0],
            &cni,
            "add",
            &lists[0],
            &[id, "eth0", &netns_path(ctr), ""],
        )
        .ok();
    }
    // Another network's attachment is not this GC's business.
    let other = cni.conflist(
        "other.conflist",
        &weft_conflist("other", "1.0.0", &files[0], json!({})),
    );
    let c4 = bed.container().expect("container");
    driver(
        &hosts[0],
        &cni,
        "add",
        &other,
        &["elsewhere", "eth0", &netns_path(&c4), ""],
    )
    .ok();
    assert_eq!(pods(&files[0]).len(), 3);
    driver(&hosts[0], &cni, "gc", &gc_list, &["keep/eth0"]).ok();
    let left: BTreeSet<String> = pods(&files[0])
        .iter()
        .map(|p| p["container"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        left,
        BTreeSet::from(["keep".to_string(), "elsewhere".to_string()])
    );
    assert_eq!(
        weft_veths(&bed, &hosts[0]).len(),
        2,
        "the stale veth is gone"
    );
    assert!(
        ip(&bed, &c2, &["-o", "addr"]).contains("eth0"),
        "GC touched the valid pod"
    );

    // STATUS (1.1.0): fine while the daemon is ready; 50 when it is not running.
    driver(&hosts[0], &cni, "status", &gc_list, &[]).ok();
    let nowhere = tempfile::tempdir().expect("tempdir");
    let mut gone = weft_conflist("weft", "1.1.0", &files[0], json!({}));
    gone["plugins"][0]["apiSocket"] = json!(nowhere.path().join("weft.sock"));
    let gone = cni.conflist("gone.conflist", &gone);
    assert_eq!(driver(&hosts[0], &cni, "status", &gone, &[]).code(), 50);
    // ADD against a daemon that is not there: try again later, nothing made.
    let c5 = bed.container().expect("container");
    let mut gone_add = weft_conflist("weft", "1.0.0", &files[0], json!({}));
    gone_add["plugins"][0]["apiSocket"] = json!(nowhere.path().join("weft.sock"));
    let gone_add = cni.conflist("gone-add.conflist", &gone_add);
    let before = weft_veths(&bed, &hosts[0]);
    let refused = driver(
        &hosts[0],
        &cni,
        "add",
        &gone_add,
        &["c5", "eth0", &netns_path(&c5), ""],
    );
    assert_eq!(refused.code(), 11, "{refused:?}");
    assert_eq!(weft_veths(&bed, &hosts[0]), before);
    assert!(!ip(&bed, &c5, &["-o", "link"]).contains("eth0"));
}

#[test]
fn results_have_each_versions_shape_like_the_reference_bridge_plugin() {
    if !require_root("results_have_each_versions_shape_like_the_reference_bridge_plugin") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let files = NodeFiles::new();
    let proc = launch(bed.host(0), "n0", &secret, &files, &[], "10.45.0.0/16");
    wait_ready(&files, &proc);
    let host = bed.host(0).name().to_string();
    let cni = CniDir::new();
    let hl = tempfile::tempdir().expect("tempdir");

    /// The keys of every object of a result, by where they are: the shape to compare.
    fn shape(r: &Value) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for (k, v) in r.as_object().expect("object") {
            keys.insert(k.clone());
            if let Some(items) = v.as_array() {
                for item in items {
                    for key in item
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                    {
                        keys.insert(format!("{k}.{key}"));
                    }
                }
            }
        }
        keys
    }

    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let weft = cni.conflist(
            &format!("weft-{version}.conflist"),
            &weft_conflist("weft", version, &files, json!({})),
        );
        let reference = cni.conflist(
            &format!("ref-{version}.conflist"),
            &json!({"cniVersion": version, "name": "ref", "plugins": [{
                "type": "bridge", "bridge": "cniref0", "isGateway": true,
                "ipam": {"type": "host-local", "subnet": "10.99.0.0/24", "dataDir": hl.path(),
                         "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}]},
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}]}),
        );
        let (cw, cr) = (
            bed.container().expect("container"),
            bed.container().expect("container"),
        );
        let ours = driver(
            &host,
            &cni,
            "add",
            &weft,
            &["w", "eth0", &netns_path(&cw), ""],
        )
        .ok()
        .json();
        let theirs = driver(
            &host,
            &cni,
            "add",
            &reference,
            &["r", "eth0", &netns_path(&cr), ""],
        )
        .ok()
        .json();
        assert_eq!(ours["cniVersion"], version);
        assert_eq!(theirs["cniVersion"], version);
        assert_eq!(
            shape(&ours),
            shape(&theirs),
            "{version}: weft {ours}\nreference {theirs}"
        );
        // The container interface entry and its IP look alike; the reference lists its
        // bridge too, weft the host veth and the container end only.
        let ci = |r: &Value| r["ips"][0]["interface"].as_u64().expect("interface") as usize;
        let (wi, ri) = (ci(&ours), ci(&theirs));
        assert_eq!(ours["interfaces"][wi]["name"], "eth0");
        assert_eq!(theirs["interfaces"][ri]["name"], "eth0");
        assert_eq!(ours["interfaces"][wi]["sandbox"], json!(netns_path(&cw)));
        if version != "1.0.0" {
            assert_eq!(ours["ips"][0]["version"], "4", "{ours}");
        }
        if version != "0.3.1" {
            // CHECK exists from 0.4.0 on (libcni itself refuses it before).
            driver(
                &host,
                &cni,
                "check",
                &weft,
                &["w", "eth0", &netns_path(&cw), ""],
            )
            .ok();
            driver(
                &host,
                &cni,
                "check",
                &reference,
                &["r", "eth0", &netns_path(&cr), ""],
            )
            .ok();
        }
        driver(
            &host,
            &cni,
            "del",
            &weft,
            &["w", "eth0", &netns_path(&cw), ""],
        )
        .ok();
        driver(
            &host,
            &cni,
            "del",
            &reference,
            &["r", "eth0", &netns_path(&cr), ""],
        )
        .ok();
        bed.remove_container(&cw);
        bed.remove_container(&cr);
    }
    assert!(pods(&files).is_empty());
    assert!(weft_veths(&bed, &host).is_empty());
}

#[test]
fn delegated_ipam_with_host_local_and_static() {
    if !require_root("delegated_ipam_with_host_local_and_static") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let files = NodeFiles::new();
    let proc = launch(bed.host(0), "n0", &secret, &files, &[], "10.46.0.0/16");
    wait_ready(&files, &proc);
    let host = bed.host(0).name().to_string();
    let cni = CniDir::new();
    let data = tempfile::tempdir().expect("tempdir");
    // host-local hands out from a piece of the node's space weft's own IPAM (bottom up) does
    // not reach in this test.
    let host_local = cni.conflist(
        "hl.conflist",
        &weft_conflist(
            "weft",
            "1.0.0",
            &files,
            json!({"ipam": {
            "type": "host-local", "dataDir": data.path(),
            "ranges": [[{"subnet": "10.46.200.0/24"}]],
            "routes": [{"dst": "192.0.2.0/24"}]}}),
        ),
    );
    let c = bed.container().expect("container");
    let r = driver(
        &host,
        &cni,
        "add",
        &host_local,
        &["hl", "eth0", &netns_path(&c), ""],
    )
    .ok()
    .json();
    let addr = address_of(&r);
    assert!(addr.starts_with("10.46.200."), "{r}");
    assert_eq!(eth0(&bed, &c).0, addr);
    let gw = r["ips"][0]["gateway"]
        .as_str()
        .expect("gateway")
        .to_string();
    assert!(
        ping(&bed, &c, &gw),
        "the pod cannot reach the node's gateway {gw}"
    );
    let routes = ip(&bed, &c, &["route", "show"]);
    assert!(
        routes.contains(&format!("192.0.2.0/24 via {gw} dev eth0")),
        "{routes}"
    );
    assert!(pods(&files).is_empty(), "weft's own IPAM is not used");
    let reserved = |ip: &str| data.path().join("weft").join(ip).exists();
    let bare = addr.split('/').next().unwrap_or_default().to_string();
    assert!(reserved(&bare), "host-local has no reservation for {bare}");
    driver(
        &host,
        &cni,
        "check",
        &host_local,
        &["hl", "eth0", &netns_path(&c), ""],
    )
    .ok();
    driver(
        &host,
        &cni,
        "del",
        &host_local,
        &["hl", "eth0", &netns_path(&c), ""],
    )
    .ok();
    assert!(!reserved(&bare), "the IPAM plugin's DEL was not run");
    assert!(weft_veths(&bed, &host).is_empty());

    let fixed = cni.conflist(
        "static.conflist",
        &weft_conflist(
            "weft",
            "1.0.0",
            &files,
            json!({"ipam": {
            "type": "static", "addresses": [{"address": "10.46.201.7/24"}]}}),
        ),
    );
    let r = driver(
        &host,
        &cni,
        "add",
        &fixed,
        &["st", "eth0", &netns_path(&c), ""],
    )
    .ok()
    .json();
    assert_eq!(address_of(&r), "10.46.201.7/24");
    assert_eq!(eth0(&bed, &c).0, "10.46.201.7/24");
    driver(
        &host,
        &cni,
        "del",
        &fixed,
        &["st", "eth0", &netns_path(&c), ""],
    )
    .ok();

    // An IPAM address outside the cluster range: refused, and the IPAM plugin's DEL undoes it.
    let outside = cni.conflist(
        "outside.conflist",
        &weft_conflist("weft", "1.0.0", &files, json!({"ipam": {
            "type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.99.9.0/24"}]]}})),
    );
    let e = driver(
        &host,
        &cni,
        "add",
        &outside,
        &["out", "eth0", &netns_path(&c), ""],
    );
    assert_eq!(e.code(), 7, "{e:?}");
    let held: Vec<_> = std::fs::read_dir(data.path().join("weft"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(held.is_empty(), "host-local still holds {held:?}");
    assert!(weft_veths(&bed, &host).is_empty());
}

#[test]
fn chained_with_portmap_and_bandwidth() {
    if !require_root("chained_with_portmap_and_bandwidth") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let files = NodeFiles::new();
    let proc = launch(bed.host(0), "n0", &secret, &files, &[], "10.51.0.0/16");
    wait_ready(&files, &proc);
    let host = bed.host(0).name().to_string();
    let cni = CniDir::new();
    let mut list = weft_conflist("weft", "1.0.0", &files, json!({}));
    list["plugins"].as_array_mut().expect("plugins").extend([
        json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
    ]);
    let list = cni.conflist("chain.conflist", &list);
    // 20 Mbit/s into the pod.
    const RATE: f64 = 20_000_000.0;
    let caps = json!({
        "portMappings": [
            {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 15201, "containerPort": 5201, "protocol": "tcp"}
        ],
        "bandwidth": {"ingressRate": RATE as u64, "ingressBurst": 400_000, "egressRate": 0, "egressBurst": 0}
    });
    let ctr = bed.container().expect("container");
    let ns = netns_path(&ctr);
    let result = driver_with(
        &host,
        &cni,
        "add",
        &list,
        &["chained", "eth0", &ns, ""],
        &caps,
    )
    .ok()
    .json();
    // The chain passed weft's result on (portmap and bandwidth change nothing in it).
    assert_eq!(
        result["interfaces"].as_array().map(Vec::len),
        Some(2),
        "{result}"
    );
    assert_eq!(result["ips"][0]["interface"], 1);
    // No CHECK here: Debian's portmap (1.1.1) fails its own CHECK on a host without IPv6
    // chains ("could not check ipv6 dnat"), whatever runs before it.

    // A hostPort answers: from the other test host to n0's address, port 18080, into the pod.
    let server = bed
        .spawn_in(
            &ctr,
            &[
                "sh",
                "-c",
                "echo hello-from-the-pod | nc -l -p 80 -q 1 || echo hello-from-the-pod | nc -l 80",
            ],
        )
        .expect("nc in the pod");
    let target = bed.host(0).underlay_ip().to_string();
    let mut answer = String::new();
    let answered = wait_until(Duration::from_secs(20), || {
        answer = bed
            .host(1)
            .run(&["nc", "-w", "2", &target, "18080"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        answer.contains("hello-from-the-pod")
    });
    assert!(
        answered,
        "the hostPort did not answer: {answer:?}; {:?}",
        server.output()
    );

    // The rate limit holds within 20%: iperf3 from the other host into the pod.
    let _iperf = bed
        .spawn_in(&ctr, &["iperf3", "-s", "-1"])
        .expect("iperf3 server");
    let mut report = Value::Null;
    let measured = wait_until(Duration::from_secs(30), || {
        let out = bed
            .host(1)
            .run(&["iperf3", "-c", &target, "-p", "15201", "-t", "4", "-J"])
            .expect("iperf3");
        report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        report["end"]["sum_received"]["bits_per_second"].is_f64()
    });
    assert!(measured, "iperf3 through the hostPort failed: {report}");
    let rate = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        (RATE * 0.8..=RATE * 1.2).contains(&rate),
        "{rate:.0} bit/s into the pod, limit {RATE:.0}"
    );

    driver_with(
        &host,
        &cni,
        "del",
        &list,
        &["chained", "eth0", &ns, ""],
        &caps,
    )
    .ok();
    driver_with(
        &host,
        &cni,
        "del",
        &list,
        &["chained", "eth0", &ns, ""],
        &caps,
    )
    .ok();
    assert!(weft_veths(&bed, &host).is_empty());
    assert!(pods(&files).is_empty());
    let nat = bed
        .host(0)
        .run_ok(&["iptables-save", "-t", "nat"])
        .expect("iptables-save");
    assert!(!nat.contains("18080"), "portmap's rules stayed: {nat}");
}

#[test]
fn launch_writes_a_conflist_that_libcni_uses() {
    if !require_root("launch_writes_a_conflist_that_libcni_uses") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let files = NodeFiles::new();
    let net_d = tempfile::tempdir().expect("tempdir");
    let conf_dir = net_d.path().join("net.d");
    let dir = conf_dir.to_str().expect("utf-8").to_string();
    let more = ["--cni-conf-dir", dir.as_str()];
    let proc = launch_with(
        bed.host(0),
        "n0",
        &secret,
        &files,
        &[],
        "10.53.0.0/16",
        &more,
    );
    wait_ready(&files, &proc);
    let written = conf_dir.join("10-weft.conflist");
    let meta = std::fs::metadata(&written).expect("conflist written");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o644
    );
    let list: Value =
        serde_json::from_slice(&std::fs::read(&written).expect("read")).expect("JSON");
    assert_eq!(list["plugins"][0]["apiSocket"], json!(files.socket));
    assert_eq!(list["plugins"][0]["stateDir"], json!(files.state));
    // Debian's libcni 1.1 runs a list at its cniVersion (1.1.0) and cannot read 1.1.0 results;
    // a runtime of that age picks 1.0.0 from cniVersions, as here.
    let mut at_1_0 = list.clone();
    at_1_0["cniVersion"] = json!("1.0.0");
    let cni = CniDir::new();
    let file = cni.conflist("written.conflist", &at_1_0);
    let host = bed.host(0).name().to_string();
    let ctr = bed.container().expect("container");
    let ns = netns_path(&ctr);
    let r = driver(&host, &cni, "add", &file, &["w1", "eth0", &ns, ""])
        .ok()
        .json();
    assert_eq!(eth0(&bed, &ctr).0, address_of(&r));
    driver(&host, &cni, "del", &file, &["w1", "eth0", &ns, ""]).ok();
    // STATUS and GC run at the written version, 1.1.0.
    driver(&host, &cni, "status", &written, &[]).ok();
    driver(&host, &cni, "gc", &written, &[""]).ok();
    assert!(pods(&files).is_empty());
}
