//! `weft_mesh::attach` against a real kernel: a test-bed host with a bridge `weft`, container
//! namespaces plugged into it; they ping each other and the gateway, re-attaching changes
//! nothing, a failed attach leaves nothing behind, and detach removes the veth.
//! The attach code runs in-process on a thread that entered the host's namespace.
//!
//! Then `weft attach` and `weft detach` against real daemons (`weft launch` in test-bed
//! hosts), with the CLI run in the test's own (root) network namespace, outside the
//! daemon's: by namespace path and by PID, the same id twice, `--ip`, labels, detach.

#[path = "mesh/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "docker_common/dockerd.rs"]
#[allow(dead_code)]
mod dockerd;

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use cluster::{Cluster, BIN};
use dockerd::Dockerd;
use serde_json::Value;
use weft_mesh::attach::{self, Attachment};
use weft_testbed::TestBed;

/// Runs `f` on a new thread inside network namespace `name` (with its own tokio runtime).
fn run_in<T: Send, Fut: Future<Output = T>>(name: &str, f: impl FnOnce() -> Fut + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = File::open(format!("/run/netns/{name}")).expect("open namespace");
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime")
                    .block_on(f())
            })
            .join()
            .expect("namespace thread panicked")
    })
}

fn spec(container: &str, netns: &str, address: &str) -> Attachment {
    Attachment {
        container: container.into(),
        netns: format!("/run/netns/{netns}").into(),
        ifname: "eth0".into(),
        address: address.parse().expect("address"),
        gateway: Ipv4Addr::new(10, 32, 1, 1),
        cluster_range: "10.32.0.0/12".parse().expect("range"),
        bridge: "weft".into(),
        mtu: 1420,
        extra_routes: Vec::new(),
    }
}

fn ping(bed: &TestBed, from: &str, to: &str) -> bool {
    bed.run_in(from, &["ping", "-n", "-q", "-c", "1", "-W", "2", to])
        .is_ok_and(|o| o.status.success())
}

/// `ip` output inside a namespace (stdout), for before/after comparisons.
fn ip(bed: &TestBed, ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    bed.run_ok_in(ns, &full).expect("ip")
}

fn host_links(bed: &TestBed, host: &str) -> String {
    ip(bed, host, &["-o", "link", "show"])
}

#[test]
fn containers_on_the_bridge_reach_each_other_and_the_gateway() {
    if !weft_testbed::require_root("containers_on_the_bridge_reach_each_other_and_the_gateway") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host = bed.host(0).name().to_string();
    // A fixed MAC, as a bridge that containers use as their gateway needs: otherwise the
    // bridge takes the lowest port's MAC and changes it when that port leaves.
    for cmd in [
        &[
            "ip",
            "link",
            "add",
            "weft",
            "address",
            "02:77:65:66:74:01",
            "type",
            "bridge",
        ][..],
        &["ip", "addr", "add", "10.32.1.1/24", "dev", "weft"],
        &["ip", "link", "set", "weft", "mtu", "1420", "up"],
    ] {
        bed.run_ok_in(&host, cmd).expect("bridge");
    }
    let (a, b) = (
        bed.container().expect("container a"),
        bed.container().expect("container b"),
    );
    let (spec_a, spec_b) = (
        spec("ctr-a", &a, "10.32.1.5/24"),
        spec("ctr-b", &b, "10.32.1.6/24"),
    );
    run_in(&host, || async {
        attach::attach(&spec_a).await.expect("attach a");
        attach::attach(&spec_b).await.expect("attach b");
    });

    let veth_a = attach::host_ifname("ctr-a");
    let links = host_links(&bed, &host);
    assert!(links.contains(&format!("{veth_a}@")), "{links}");
    assert!(
        links.contains("master weft"),
        "host side not on the bridge: {links}"
    );
    let inside = ip(&bed, &a, &["-o", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains("10.32.1.5/24"), "{inside}");
    let link = ip(&bed, &a, &["link", "show", "eth0"]);
    assert!(link.contains("mtu 1420") && link.contains("UP"), "{link}");
    let routes = ip(&bed, &a, &["route", "show"]);
    for (want, and) in [
        ("default via 10.32.1.1 dev eth0 ", ""),
        ("10.32.0.0/12 via 10.32.1.1 dev eth0 ", ""),
        ("10.32.1.1 dev eth0 ", "scope link"),
    ] {
        assert!(
            routes
                .lines()
                .any(|l| l.starts_with(want) && l.contains(and)),
            "missing {want:?} in:\n{routes}"
        );
    }

    assert!(ping(&bed, &a, "10.32.1.6"), "a cannot ping b");
    assert!(ping(&bed, &b, "10.32.1.5"), "b cannot ping a");
    assert!(ping(&bed, &a, "10.32.1.1"), "a cannot ping the gateway");
    assert!(ping(&bed, &host, "10.32.1.6"), "the host cannot ping b");

    // Again, same id and address: accepted, nothing changes.
    let before = (
        ip(&bed, &a, &["-o", "addr", "show"]),
        ip(&bed, &a, &["route", "show"]),
        host_links(&bed, &host),
    );
    run_in(&host, || async { attach::attach(&spec_a).await }).expect("re-attach a");
    let after = (
        ip(&bed, &a, &["-o", "addr", "show"]),
        ip(&bed, &a, &["route", "show"]),
        host_links(&bed, &host),
    );
    assert_eq!(
        before, after,
        "re-attaching changed the namespace or the host"
    );
    assert!(
        ping(&bed, &a, "10.32.1.6"),
        "a cannot ping b after re-attach"
    );

    // Same id, another address: refused, and the attachment stays as it was.
    let moved = spec("ctr-a", &a, "10.32.1.9/24");
    let err = run_in(&host, || async { attach::attach(&moved).await })
        .expect_err("a second address for the same container");
    assert!(err.to_string().contains("10.32.1.5/24"), "{err}");
    assert_eq!(
        ip(&bed, &a, &["-o", "addr", "show"]),
        before.0,
        "the refused attach changed the container"
    );

    // Detach: the veth goes on both sides; b is untouched.
    run_in(&host, || async { attach::detach("ctr-a").await }).expect("detach a");
    assert!(
        !host_links(&bed, &host).contains(&veth_a),
        "host side left behind"
    );
    assert!(
        !bed.run_in(&a, &["ip", "link", "show", "eth0"])
            .expect("ip")
            .status
            .success(),
        "container side left behind"
    );
    assert!(
        ping(&bed, &b, "10.32.1.1"),
        "b lost the gateway when a left"
    );
    run_in(&host, || async { attach::detach("ctr-a").await }).expect("detach twice is fine");
}

/// `weft_mesh::attach::prepare` (Docker's plugin): the host end on the bridge, the container
/// end left on the host under its pending name for Docker to move; again: the same pair; once
/// moved into a sandbox (as Docker does) it carries traffic to the gateway; detach removes it.
#[test]
fn prepare_leaves_the_container_end_for_docker_to_move() {
    if !weft_testbed::require_root("prepare_leaves_the_container_end_for_docker_to_move") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host = bed.host(0).name().to_string();
    for cmd in [
        &["ip", "link", "add", "weft", "type", "bridge"][..],
        &["ip", "addr", "add", "10.32.1.1/24", "dev", "weft"],
        &["ip", "link", "set", "weft", "mtu", "1420", "up"],
    ] {
        bed.run_ok_in(&host, cmd).expect("bridge");
    }
    let key = "docker-00112233aabbccdd/docker";
    let (veth, pending) = (attach::host_ifname(key), attach::pending_ifname(key));
    let first =
        run_in(&host, || async { attach::prepare(key, "weft", 1420).await }).expect("prepare");
    assert_eq!(first.name, pending);
    assert_eq!(first.mtu, Some(1420));
    assert!(first.mac.is_some());
    let show = |name: &str| ip(&bed, &host, &["-o", "link", "show", name]);
    let host_end = show(&veth);
    assert!(
        host_end.contains("master weft") && host_end.contains("mtu 1420"),
        "{host_end}"
    );
    assert!(show(&pending).contains("mtu 1420"));
    let again =
        run_in(&host, || async { attach::prepare(key, "weft", 1420).await }).expect("again");
    assert_eq!(again, first, "preparing again changed the pair");

    // What Docker does at Join: move it, name it, address it.
    let c = bed.container().expect("container");
    bed.run_ok_in(&host, &["ip", "link", "set", &pending, "netns", &c])
        .expect("move");
    for cmd in [
        &["ip", "link", "set", &pending, "name", "eth0"][..],
        &["ip", "addr", "add", "10.32.1.5/24", "dev", "eth0"],
        &["ip", "link", "set", "eth0", "up"],
    ] {
        bed.run_ok_in(&c, cmd).expect("configure");
    }
    assert!(
        ping(&bed, &c, "10.32.1.1"),
        "the moved end cannot reach the gateway"
    );

    run_in(&host, || async { attach::detach(key).await }).expect("detach");
    assert!(!host_links(&bed, &host).contains(&veth), "host end left");
    assert!(
        !bed.run_in(&c, &["ip", "link", "show", "eth0"])
            .expect("ip")
            .status
            .success(),
        "the container end outlived its pair"
    );
    // No bridge: refused, nothing made.
    bed.run_ok_in(&host, &["ip", "link", "del", "weft"])
        .expect("del bridge");
    let before = host_links(&bed, &host);
    let err = run_in(&host, || async { attach::prepare(key, "weft", 1420).await })
        .expect_err("no bridge");
    assert!(err.to_string().contains("bridge weft"), "{err}");
    assert_eq!(host_links(&bed, &host), before);
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    if !weft_testbed::require_root("a_failed_attach_leaves_nothing_behind") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host = bed.host(0).name().to_string();
    let c = bed.container().expect("container");
    let before = host_links(&bed, &host);

    // No bridge yet: refused before anything is made.
    let err = run_in(&host, || async {
        attach::attach(&spec("ctr-x", &c, "10.32.1.5/24")).await
    })
    .expect_err("attach without a bridge");
    assert!(err.to_string().contains("bridge weft"), "{err}");
    assert_eq!(host_links(&bed, &host), before);

    // The namespace already has an eth0 that is not ours: refused, no veth left.
    bed.run_ok_in(&host, &["ip", "link", "add", "weft", "type", "bridge"])
        .expect("bridge");
    bed.run_ok_in(
        &c,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    )
    .expect("a foreign eth0");
    let before = host_links(&bed, &host);
    let err = run_in(&host, || async {
        attach::attach(&spec("ctr-x", &c, "10.32.1.5/24")).await
    })
    .expect_err("attach over a foreign eth0");
    assert!(err.to_string().contains("eth0"), "{err}");
    assert_eq!(
        host_links(&bed, &host),
        before,
        "a veth was left on the host"
    );

    // A namespace that does not exist: refused, nothing left.
    let err = run_in(&host, || async {
        attach::attach(&spec("ctr-y", "no-such-namespace-here", "10.32.1.6/24")).await
    })
    .expect_err("attach to a missing namespace");
    assert!(err.to_string().contains("no-such-namespace-here"), "{err}");
    assert_eq!(
        host_links(&bed, &host),
        before,
        "a veth was left on the host"
    );

    // A path that is not a network namespace: refused, nothing left.
    let not_ns = tempfile::NamedTempFile::new().expect("temp file");
    let mut bogus = spec("ctr-z", "unused", "10.32.1.7/24");
    bogus.netns = not_ns.path().to_path_buf();
    let err = run_in(&host, || async { attach::attach(&bogus).await })
        .expect_err("attach to a file that is not a namespace");
    assert!(err.to_string().contains("namespace"), "{err}");
    assert_eq!(
        host_links(&bed, &host),
        before,
        "a veth was left on the host"
    );
}

/// `weft ARGS -o json --api-socket SOCKET`, run here (the root network namespace, not the
/// daemon's): its stdout on success, its stderr on failure.
fn weft(socket: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--api-socket")
        .arg(socket)
        .output()
        .expect("run weft");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `weft pods -o json` of node `i`.
fn pods(c: &Cluster, i: usize) -> Vec<Value> {
    let text = weft(&c.nodes[i].socket, &["pods", "-o", "json"]).expect("weft pods");
    serde_json::from_str::<Value>(&text)
        .expect("pods json")
        .as_array()
        .cloned()
        .expect("a list")
}

/// The address `weft attach -o json` answered.
fn address_of(json: &str) -> Ipv4Addr {
    let v: Value = serde_json::from_str(json).expect("attach json");
    let net: ipnet::Ipv4Net = v["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("cidr");
    net.addr()
}

/// The weft veths in a test host's namespace.
fn weft_veths(c: &Cluster, host: usize) -> Vec<String> {
    c.bed
        .host(host)
        .run_ok(&["ip", "-o", "link", "show"])
        .expect("ip link")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| attach::is_host_ifname(n))
        .collect()
}

#[test]
fn attach_from_outside_the_daemons_namespace_by_path_and_pid_then_detach() {
    if !weft_testbed::require_root(
        "attach_from_outside_the_daemons_namespace_by_path_and_pid_then_detach",
    ) {
        return;
    }
    let mut c = Cluster::new(2);
    c.launch_chain();
    c.wait_full_mesh(&[0, 1], Duration::from_secs(60));
    c.wait_space(&[0, 1], Duration::from_secs(60));
    let remote = c.attach(1, "remote");
    let socket = c.nodes[0].socket.clone();

    // By namespace path, from the root namespace; the container keeps an interface it had.
    let a = c.bed.container().expect("container a");
    c.bed
        .run_ok_in(
            &a,
            &[
                "ip", "link", "add", "keep0", "type", "veth", "peer", "name", "keep1",
            ],
        )
        .expect("a second interface");
    let path = format!("/run/netns/{a}");
    let first = weft(
        &socket,
        &[
            "attach", &path, "--label", "app=web", "--label", "tier=", "-o", "json",
        ],
    )
    .expect("weft attach by path");
    let addr_a = address_of(&first);
    assert_eq!(c.container_addr(&a), Some(addr_a), "eth0 has the address");
    assert!(
        c.bed
            .run_ok_in(&a, &["ip", "link", "show", "keep0"])
            .is_ok(),
        "the container lost its other interface"
    );
    // The same id again (a retry): the same address, nothing new on the host.
    let veths = weft_veths(&c, 0);
    let again = weft(&socket, &["attach", &path, "-o", "json"]).expect("again");
    assert_eq!(
        address_of(&again),
        addr_a,
        "a retried attach moved the address"
    );
    assert_eq!(weft_veths(&c, 0), veths);
    // It reaches a container on the other node through the mesh.
    let ca = cluster::Container {
        netns: a.clone(),
        id: "a".into(),
        node: 0,
        addr: addr_a,
    };
    c.wait_ping(&ca, &remote, Duration::from_secs(20));
    let listed = pods(&c, 0);
    let pod = listed
        .iter()
        .find(|p| {
            p["address"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{addr_a}/")))
        })
        .unwrap_or_else(|| panic!("attached container not in weft pods: {listed:?}"));
    assert_eq!(pod["source"], "attach", "{pod}");
    assert_eq!(pod["name"], a.as_str(), "{pod}");
    assert_eq!(pod["labels"]["app"], "web", "{pod}");
    assert_eq!(pod["labels"]["tier"], "", "{pod}");
    let id_a = pod["container"].as_str().expect("id").to_string();
    assert!(id_a.starts_with("netns-"), "{id_a}");

    // By PID (a process in another namespace), the same twice.
    let b = c.bed.container().expect("container b");
    let sleeper = c.bed.spawn_in(&b, &["sleep", "300"]).expect("a process");
    let pid = sleeper.pid().to_string();
    let addr_b = address_of(&weft(&socket, &["attach", &pid, "-o", "json"]).expect("by pid"));
    assert_eq!(c.container_addr(&b), Some(addr_b));
    assert_ne!(addr_a, addr_b);
    let addr_b2 = address_of(&weft(&socket, &["attach", &pid, "-o", "json"]).expect("again"));
    assert_eq!(addr_b, addr_b2, "the same PID twice got two addresses");

    // --ip taken: a clear error, and nothing left (no veth, no pod, no eth0).
    let d = c.bed.container().expect("container d");
    let veths = weft_veths(&c, 0);
    let before = pods(&c, 0).len();
    let err = weft(
        &socket,
        &[
            "attach",
            &format!("/run/netns/{d}"),
            "--ip",
            &addr_a.to_string(),
        ],
    )
    .expect_err("a taken address");
    assert!(
        err.contains(&format!("address {addr_a} is in use")),
        "unclear error: {err}"
    );
    assert_eq!(weft_veths(&c, 0), veths, "a veth was left behind");
    assert_eq!(pods(&c, 0).len(), before, "a pod was left behind");
    assert!(c.container_addr(&d).is_none());
    // --ip outside this node's space: refused, saying so.
    let err = weft(
        &socket,
        &["attach", &format!("/run/netns/{d}"), "--ip", "192.0.2.9"],
    )
    .expect_err("outside the range");
    assert!(
        err.contains("not in the cluster range"),
        "unclear error: {err}"
    );

    // Detach a: its interface goes, weft pods no longer lists it, its address is free again
    // (another container may take it with --ip), and the container keeps keep0.
    let veth_a = attach::host_ifname(&format!("{id_a}/eth0"));
    assert!(weft_veths(&c, 0).contains(&veth_a));
    let out = weft(&socket, &["detach", &path]).expect("weft detach");
    assert!(out.contains(&addr_a.to_string()), "{out}");
    assert!(!weft_veths(&c, 0).contains(&veth_a), "veth left behind");
    assert!(c.container_addr(&a).is_none(), "eth0 left in the container");
    assert!(c
        .bed
        .run_ok_in(&a, &["ip", "link", "show", "keep0"])
        .is_ok());
    assert!(
        !pods(&c, 0).iter().any(|p| p["container"] == id_a.as_str()),
        "weft pods still lists a detached container"
    );
    weft(&socket, &["detach", &path]).expect("detach twice is fine");
    let addr_d = address_of(
        &weft(
            &socket,
            &[
                "attach",
                &format!("/run/netns/{d}"),
                "--ip",
                &addr_a.to_string(),
                "-o",
                "json",
            ],
        )
        .expect("the freed address"),
    );
    assert_eq!(addr_d, addr_a);
    assert_eq!(c.container_addr(&d), Some(addr_a));

    // Detach by PID; then the last one: the bridge keeps its MTU without ports (the kernel
    // resets it to 1500 unless weft set it after making the bridge), and no drift is logged.
    let mtu = |c: &Cluster| {
        let link = c
            .bed
            .host(0)
            .run_ok(&["ip", "-o", "link", "show", "weft"])
            .expect("bridge");
        link.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .map(str::to_string)
            .expect("mtu")
    };
    let bridge_mtu = mtu(&c);
    weft(&socket, &["detach", &pid]).expect("detach by pid");
    assert!(c.container_addr(&b).is_none());
    // Attached again after a detach: its old address, still free, comes back.
    let back = address_of(&weft(&socket, &["attach", &pid, "-o", "json"]).expect("again"));
    assert_eq!(
        back, addr_b,
        "re-attached after detach with another address"
    );
    weft(&socket, &["detach", &pid]).expect("detach by pid");
    drop(sleeper);
    weft(&socket, &["detach", &format!("/run/netns/{d}")]).expect("detach the last");
    assert!(weft_veths(&c, 0).is_empty(), "{:?}", weft_veths(&c, 0));
    std::thread::sleep(Duration::from_millis(2500)); // two reconcile rounds
    assert_eq!(
        mtu(&c),
        bridge_mtu,
        "the bridge's MTU changed with its last port gone"
    );
    c.assert_no_warnings();
}

/// A Podman set-up of its own: storage, run and events under a temporary directory, a busybox
/// root filesystem (no image, no registry), its containers in a cgroup parent of their own.
/// Dropping it removes the containers and the cgroups.
struct Podman {
    dir: tempfile::TempDir,
    cgroup_parent: String,
    names: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        let bin = p.join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("rootfs");
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static");
        std::os::unix::fs::symlink("busybox", bin.join("sleep")).expect("symlink");
        std::os::unix::fs::symlink("busybox", bin.join("sh")).expect("symlink");
        std::fs::write(
            p.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/root\"\n",
                p.display()
            ),
        )
        .expect("storage.conf");
        std::fs::write(
            p.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{0}/events.log\"\ntmp_dir = \"{0}/tmp\"\n",
                p.display()
            ),
        )
        .expect("containers.conf");
        Podman {
            dir,
            cgroup_parent: format!("/weft-test-{}", std::process::id()),
            names: Vec::new(),
        }
    }

    /// A command that uses this set-up (podman, or weft looking containers up with it).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(
            "CONTAINERS_STORAGE_CONF",
            self.dir.path().join("storage.conf"),
        )
        .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
        .env_remove("DOCKER_HOST");
        cmd
    }

    /// `podman run -d --network none` of `sleep`, inside test host `netns`; its PID.
    fn run(&mut self, netns: &str, name: &str) -> u32 {
        let rootfs = self.dir.path().join("rootfs");
        let out = self
            .command("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["podman", "run", "-d", "--name", name, "--network", "none"])
            // Lower than the defaults: this machine may not raise limits.
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--cgroup-parent", &self.cgroup_parent, "--rootfs"])
            .arg(&rootfs)
            .args(["/bin/sleep", "300"])
            .output()
            .expect("run podman");
        self.names.push(name.to_string());
        assert!(out.status.success(), "podman run: {out:?}");
        let out = self
            .command("podman")
            .args([
                "inspect",
                "--type",
                "container",
                "--format",
                "{{.State.Pid}}",
                name,
            ])
            .output()
            .expect("podman inspect");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a PID")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self
                .command("podman")
                .args(["rm", "-f", "-t", "0", name])
                .output();
        }
        // The cgroups podman made under our parent, once conmon has left them.
        if !dockerd::remove_cgroups(&self.cgroup_parent) {
            eprintln!("cgroups left under {}", self.cgroup_parent);
        }
    }
}

#[test]
fn attach_a_podman_container_by_name() {
    if !weft_testbed::require_root("attach_a_podman_container_by_name") {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("WEFT_REQUIRE_NETNS").is_none(),
            "podman is not installed (.ci/run installs it)"
        );
        eprintln!("skipped attach_a_podman_container_by_name: no podman");
        return;
    }
    let mut c = Cluster::new(2);
    c.launch_chain();
    c.wait_full_mesh(&[0, 1], Duration::from_secs(60));
    c.wait_space(&[0, 1], Duration::from_secs(60));
    let remote = c.attach(1, "remote");
    let socket = c.nodes[0].socket.clone();
    let host = c.bed.host(0).name().to_string();

    let mut podman = Podman::new();
    let name = format!("weft-test-{}", std::process::id());
    let pid = podman.run(&host, &name);
    let attach = |args: &[&str]| {
        let out = podman
            .command(BIN)
            .args(args)
            .arg("--api-socket")
            .arg(&socket)
            .output()
            .expect("run weft");
        assert!(out.status.success(), "weft {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // By name, from the root namespace (podman's lookup with this set-up's configuration).
    let addr = address_of(&attach(&[
        "attach", &name, "--label", "app=db", "-o", "json",
    ]));
    let in_ctr = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(args)
            .output()
            .expect("nsenter")
    };
    let shown =
        String::from_utf8_lossy(&in_ctr(&["ip", "-4", "-o", "addr", "show", "eth0"]).stdout)
            .into_owned();
    assert!(shown.contains(&format!("inet {addr}/")), "{shown}");
    let ping = in_ctr(&["ping", "-n", "-c", "3", "-W", "2", &remote.addr.to_string()]);
    assert!(
        ping.status.success(),
        "no ping to the other node's container: {ping:?}"
    );
    let pod = pods(&c, 0)
        .into_iter()
        .find(|p| p["name"] == name.as_str())
        .expect("weft pods lists the container by its name");
    let id = pod["container"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 64, "podman's full id: {id}");
    assert_eq!(pod["labels"]["app"], "db");
    // Again: the same address; by its id: the same container.
    assert_eq!(address_of(&attach(&["attach", &name, "-o", "json"])), addr);
    assert_eq!(
        address_of(&attach(&["attach", &id[..12], "-o", "json"])),
        addr
    );

    attach(&["detach", &name]);
    let gone = in_ctr(&["ip", "link", "show", "eth0"]);
    assert!(!gone.status.success(), "eth0 left in the container");
    assert!(!pods(&c, 0).iter().any(|p| p["container"] == id.as_str()));
    drop(podman);
    c.assert_no_warnings();
}

#[test]
fn attach_docker_containers_by_name_and_by_pid() {
    if !weft_testbed::require_root("attach_docker_containers_by_name_and_by_pid") {
        return;
    }
    if !dockerd::available("attach_docker_containers_by_name_and_by_pid") {
        return;
    }
    let mut c = Cluster::new(2);
    c.launch_chain();
    let host = c.bed.host(0).name().to_string();
    let docker = Dockerd::start(&host);
    c.wait_full_mesh(&[0, 1], Duration::from_secs(60));
    c.wait_space(&[0, 1], Duration::from_secs(60));
    let remote = c.attach(1, "remote");
    let socket = c.nodes[0].socket.clone();
    let weft = |args: &[&str]| {
        let out = docker
            .command(BIN)
            .args(args)
            .arg("--api-socket")
            .arg(&socket)
            .output()
            .expect("run weft");
        assert!(out.status.success(), "weft {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // By name.
    let name = format!("weft-web-{}", std::process::id());
    let (id, _) = docker.run(&name);
    let addr = address_of(&weft(&[
        "attach", &name, "--label", "role=web", "-o", "json",
    ]));
    // The container sees it, and reaches the other node's container through the mesh.
    let seen = docker.docker(&[
        "exec",
        &name,
        "/bin/busybox",
        "ip",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(
        String::from_utf8_lossy(&seen.stdout).contains(&format!("inet {addr}/")),
        "{seen:?}"
    );
    let ping = docker.docker(&[
        "exec",
        &name,
        "/bin/busybox",
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        &remote.addr.to_string(),
    ]);
    assert!(ping.status.success(), "no ping across the mesh: {ping:?}");
    let pod = pods(&c, 0)
        .into_iter()
        .find(|p| p["name"] == name.as_str())
        .expect("weft pods lists the container by name");
    assert_eq!(pod["container"], id.as_str());
    assert_eq!(pod["labels"]["role"], "web");
    assert_eq!(
        address_of(&weft(&["attach", &name, "-o", "json"])),
        addr,
        "retry"
    );

    // By PID.
    let (_, pid) = docker.run(&format!("weft-db-{}", std::process::id()));
    let by_pid = address_of(&weft(&["attach", &pid.to_string(), "-o", "json"]));
    assert_ne!(by_pid, addr);

    // Detach both: the interfaces go, weft pods forgets them.
    weft(&["detach", &name]);
    weft(&["detach", &pid.to_string()]);
    let gone = docker.docker(&["exec", &name, "/bin/busybox", "ip", "link", "show", "eth0"]);
    assert!(
        !gone.status.success(),
        "eth0 left in the container: {gone:?}"
    );
    assert!(pods(&c, 0).is_empty(), "{:?}", pods(&c, 0));
    drop(docker);
    c.assert_no_warnings();
}
