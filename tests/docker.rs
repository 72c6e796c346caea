//! weft's Docker plugin against real dockerds (Debian's docker.io 20.10): `weft launch
//! --docker-plugin` in test-bed hosts, each with a dockerd of its own that finds the plugin
//! socket in its private /run/docker/plugins (tests/docker_common/dockerd.rs), and
//! `docker run --network weft`.
//!
//! Run one: `cargo test --test docker NAME -- --nocapture` (as root).

#[path = "mesh/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "docker_common/dockerd.rs"]
#[allow(dead_code)]
mod dockerd;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster::{Cluster, RANGE};
use dockerd::{Dockerd, DOCKER_IMAGE};
use ipnet::Ipv4Net;
use serde_json::Value;

/// Node `i`'s plugin directory: bind-mounted as its dockerd's /run/docker/plugins.
fn plugin_dir(c: &Cluster, i: usize) -> PathBuf {
    let dir = c.dir.path().join(format!("n{i}/plugins"));
    std::fs::create_dir_all(&dir).expect("plugin dir");
    dir
}

/// Starts a dockerd for node `i` and has the node serve the plugin to it; with `names`, the
/// node also gets the dockerd's API socket (container names, and it creates the network).
fn docker_node(c: &mut Cluster, i: usize, names: bool) -> Dockerd {
    let plugins = plugin_dir(c, i);
    let host = c.bed.host(c.nodes[i].host).name().to_string();
    let docker = Dockerd::start_with_plugins(&host, Some(&plugins));
    c.nodes[i].extra_args.push(format!(
        "--docker-plugin={}",
        plugins.join("weft.sock").display()
    ));
    if names {
        c.nodes[i]
            .extra_args
            .push(format!("--docker-socket={}", docker.socket().display()));
    }
    docker
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `docker run -d --network weft [ARGS] IMAGE sleep 300` named `name`: Ok(its address) or
/// Err(docker's error).
fn run_on_weft(d: &Dockerd, name: &str, args: &[&str]) -> Result<Ipv4Addr, String> {
    d.track(name);
    let mut all = vec!["run", "-d", "--name", name, "--network", "weft"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[DOCKER_IMAGE, "/bin/sleep", "300"]);
    d.docker_ok(&all)?;
    Ok(address_of(d, name))
}

/// The address Docker shows for container `name` on network weft.
fn address_of(d: &Dockerd, name: &str) -> Ipv4Addr {
    d.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.weft.IPAddress}}",
        name,
    ])
    .expect("docker inspect")
    .parse()
    .expect("an IPv4 address")
}

fn endpoint_of(d: &Dockerd, name: &str) -> String {
    d.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.weft.EndpointID}}",
        name,
    ])
    .expect("docker inspect")
}

/// `/bin/busybox ARGS` inside container `name`.
fn exec(d: &Dockerd, name: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["exec", name, "/bin/busybox"];
    all.extend_from_slice(args);
    d.docker_ok(&all)
}

fn pings(d: &Dockerd, from: &str, to: Ipv4Addr) -> bool {
    exec(d, from, &["ping", "-c", "2", "-W", "2", &to.to_string()]).is_ok()
}

/// `weft pods -o json` of node `i`, Docker's only.
fn docker_pods(c: &Cluster, i: usize) -> Vec<Value> {
    let v = c.api(i, &serde_json::json!({"cmd": "pods"})).expect("pods");
    v["pods"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["source"] == "docker")
        .collect()
}

/// The addresses node `i`'s IPAM holds for containers (status `addresses_used`).
fn used(c: &Cluster, i: usize) -> u64 {
    c.status(i).expect("status")["addresses_used"]
        .as_u64()
        .expect("addresses_used")
}

/// Addresses in use in node `i`'s pieces, as `weft ipam` shows them.
fn ipam_used(c: &Cluster, i: usize) -> u64 {
    c.ipam(i).expect("ipam")["pieces"]
        .as_array()
        .expect("pieces")
        .iter()
        .filter_map(|p| p["used"].as_u64())
        .sum()
}

/// The bridge's address on node `i`'s host.
fn bridge_address(c: &Cluster, i: usize) -> Ipv4Net {
    let out = c
        .bed
        .host(c.nodes[i].host)
        .run_ok(&["ip", "-4", "-o", "addr", "show", "dev", "weft"])
        .expect("ip addr");
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address on bridge weft: {out}"))
}

/// One node, one dockerd: the network weft creates itself, `docker run --network weft` gets an
/// address of this node's space with the node's gateway, the MTU and routes of a CNI pod; two
/// containers reach each other and the gateway; `weft pods` lists them with their names;
/// `--ip` takes a free address and refuses a taken one clearly; `docker rm -f` gives the
/// address back.
#[test]
fn docker_run_on_the_weft_network_of_one_host() {
    if !weft_testbed::require_root("docker_run_on_the_weft_network_of_one_host")
        || !dockerd::available("docker_run_on_the_weft_network_of_one_host")
    {
        return;
    }
    let mut c = Cluster::new(1);
    let d = docker_node(&mut c, 0, true);
    c.launch(0, &[]);
    c.wait_space(&[0], Duration::from_secs(60));

    // weft made the network (it has the Docker socket): driver and IPAM weft, the cluster
    // range, this node's bridge address as the gateway.
    wait("the weft network", Duration::from_secs(30), || {
        d.docker_ok(&["network", "inspect", "weft"]).is_ok()
    });
    let net: Value = serde_json::from_str(
        &d.docker_ok(&["network", "inspect", "weft"])
            .expect("inspect"),
    )
    .expect("json");
    let net = &net[0];
    assert_eq!(net["Driver"], "weft", "{net}");
    assert_eq!(net["IPAM"]["Driver"], "weft", "{net}");
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], RANGE, "{net}");
    let gateway = bridge_address(&c, 0);

    let used_before = used(&c, 0);
    let a = run_on_weft(&d, "ctr-a", &[]).expect("docker run a");
    let b = run_on_weft(&d, "ctr-b", &[]).expect("docker run b");
    assert_ne!(a, b);
    let range: Ipv4Net = RANGE.parse().expect("range");
    assert!(range.contains(&a) && range.contains(&b));
    assert_eq!(
        used(&c, 0),
        used_before + 2,
        "two addresses from weft's IPAM"
    );

    // Inside: eth0 with the address and MTU, the default route via the gateway, the
    // gateway on-link.
    let link = exec(&d, "ctr-a", &["ip", "-o", "link", "show", "eth0"]).expect("link");
    assert!(link.contains("mtu 1420"), "{link}");
    let addr = exec(&d, "ctr-a", &["ip", "-4", "-o", "addr", "show", "eth0"]).expect("addr");
    assert!(addr.contains(&format!("inet {a}/")), "{addr}");
    let routes = exec(&d, "ctr-a", &["ip", "route"]).expect("routes");
    assert!(
        routes.contains(&format!("default via {} dev eth0", gateway.addr())),
        "{routes}"
    );
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("{} dev eth0", gateway.addr()))),
        "the gateway is not on-link: {routes}"
    );
    let shown = d
        .docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.weft.Gateway}}",
            "ctr-a",
        ])
        .expect("inspect");
    assert_eq!(shown, gateway.addr().to_string(), "Docker's gateway");
    assert!(pings(&d, "ctr-a", b), "a cannot ping b");
    assert!(pings(&d, "ctr-b", a), "b cannot ping a");
    assert!(
        pings(&d, "ctr-a", gateway.addr()),
        "a cannot ping its gateway"
    );

    // weft pods: both, with their endpoint ids and (from Docker's API) names.
    let (ep_a, ep_b) = (endpoint_of(&d, "ctr-a"), endpoint_of(&d, "ctr-b"));
    wait(
        "the containers' names in weft pods",
        Duration::from_secs(20),
        || {
            let pods = docker_pods(&c, 0);
            pods.len() == 2
                && pods
                    .iter()
                    .any(|p| p["endpoint"] == ep_a.as_str() && p["name"] == "ctr-a")
                && pods
                    .iter()
                    .any(|p| p["endpoint"] == ep_b.as_str() && p["name"] == "ctr-b")
        },
    );
    let pod_a = docker_pods(&c, 0)
        .into_iter()
        .find(|p| p["endpoint"] == ep_a.as_str())
        .expect("ctr-a");
    assert!(
        pod_a["address"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{a}/"))),
        "{pod_a}"
    );

    // --ip: a free address is taken; a taken one is refused, saying so, and leaves nothing.
    let free = (2..250u8)
        .map(|n| Ipv4Addr::new(10, 32, 0, n))
        .find(|ip| *ip != a && *ip != b && *ip != gateway.addr())
        .expect("a free address");
    let c3 = run_on_weft(&d, "ctr-c", &["--ip", &free.to_string()]).expect("--ip free");
    assert_eq!(c3, free);
    let used_now = used(&c, 0);
    let pods_now = docker_pods(&c, 0).len();
    let err = run_on_weft(&d, "ctr-taken", &["--ip", &a.to_string()]).expect_err("--ip taken");
    assert!(
        err.contains(&format!("address {a} is in use")),
        "unclear error: {err}"
    );
    assert_eq!(used(&c, 0), used_now, "a refused --ip kept an address");
    assert_eq!(
        docker_pods(&c, 0).len(),
        pods_now,
        "a refused --ip left a pod"
    );

    // docker rm -f: the address is free again (weft's IPAM and pods say so), and --ip can
    // take it.
    let ipam_before = ipam_used(&c, 0);
    d.docker_ok(&["rm", "-f", "ctr-a"]).expect("rm a");
    assert_eq!(
        used(&c, 0),
        used_now - 1,
        "rm -f did not give the address back"
    );
    assert_eq!(
        ipam_used(&c, 0),
        ipam_before - 1,
        "weft ipam still counts it"
    );
    assert!(!docker_pods(&c, 0)
        .iter()
        .any(|p| p["endpoint"] == ep_a.as_str()));
    assert_eq!(
        run_on_weft(&d, "ctr-a2", &["--ip", &a.to_string()]).expect("a's address again"),
        a
    );
    // (b may still have a's old MAC for the address: the new container speaks first.)
    assert!(pings(&d, "ctr-a2", b), "the new a cannot ping b");
    assert!(pings(&d, "ctr-b", a), "b cannot ping the new a");

    // Everything removed: every address is back, and the network goes too.
    d.docker_ok(&["rm", "-f", "ctr-b", "ctr-c", "ctr-a2"])
        .expect("rm -f the rest");
    assert!(docker_pods(&c, 0).is_empty(), "{:?}", docker_pods(&c, 0));
    assert_eq!(used(&c, 0), used_before, "addresses left held");
    d.docker_ok(&["network", "rm", "weft"])
        .expect("docker network rm");
    drop(d);
    c.assert_no_warnings();
}

/// Two hosts, each with weft and its own dockerd (n0 makes the network itself, n1's is made
/// by hand as the README says): `docker run --network weft` on both, the containers ping each
/// other and exchange TCP data through the mesh while the underlay shows only WireGuard (and
/// gossip), never the marker; `--ip` of an address in the other node's space is refused
/// clearly; weft on n0 restarted while the containers run: same addresses, connectivity
/// back, and Docker's `rm -f` of a container made before the restart gives its address back.
#[test]
fn docker_containers_on_two_hosts_talk_through_the_mesh_and_survive_a_weft_restart() {
    let name = "docker_containers_on_two_hosts_talk_through_the_mesh_and_survive_a_weft_restart";
    if !weft_testbed::require_root(name) || !dockerd::available(name) {
        return;
    }
    let mut c = Cluster::new(2);
    let d0 = docker_node(&mut c, 0, true);
    let d1 = docker_node(&mut c, 1, false);
    c.launch_chain();
    c.wait_full_mesh(&[0, 1], Duration::from_secs(60));
    c.wait_space(&[0, 1], Duration::from_secs(60));
    wait("the weft network on n0", Duration::from_secs(30), || {
        d0.docker_ok(&["network", "inspect", "weft"]).is_ok()
    });
    // By hand on n1 (retried while n1's bridge gets its address).
    let mut last = String::new();
    wait(
        "docker network create on n1",
        Duration::from_secs(30),
        || match d1.docker_ok(&[
            "network",
            "create",
            "-d",
            "weft",
            "--ipam-driver",
            "weft",
            "--subnet",
            RANGE,
            "weft",
        ]) {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        },
    );
    let _ = last;

    let a = run_on_weft(&d0, "ctr-a", &[]).expect("docker run on n0");
    let b = run_on_weft(&d1, "ctr-b", &[]).expect("docker run on n1");
    let space = |i: usize| -> Vec<Ipv4Net> {
        c.status(i).expect("status")["address_space"]
            .as_array()
            .expect("space")
            .iter()
            .filter_map(|s| s.as_str()?.parse().ok())
            .collect()
    };
    let (space0, space1) = (space(0), space(1));
    assert!(
        space0.iter().any(|s| s.contains(&a)),
        "{a} not in n0's {space0:?}"
    );
    assert!(
        space1.iter().any(|s| s.contains(&b)),
        "{b} not in n1's {space1:?}"
    );
    wait(
        "ping a -> b across the mesh",
        Duration::from_secs(30),
        || pings(&d0, "ctr-a", b),
    );
    assert!(pings(&d1, "ctr-b", a), "b cannot ping a");

    // TCP through the mesh with a marker, under capture of both hosts' underlay.
    let marker = format!("weft-docker-marker-{}", std::process::id());
    let captures: Vec<_> = (0..2)
        .map(|i| c.bed.capture(i, "").expect("capture"))
        .collect();
    d1.docker_ok(&[
        "exec",
        "-d",
        "ctr-b",
        "/bin/sh",
        "-c",
        "/bin/busybox nc -l -p 7000 > /got",
    ])
    .expect("nc -l");
    wait("b listening", Duration::from_secs(10), || {
        exec(&d1, "ctr-b", &["netstat", "-ltn"]).is_ok_and(|o| o.contains(":7000"))
    });
    let sent = d0.docker_ok(&[
        "exec",
        "ctr-a",
        "/bin/sh",
        "-c",
        &format!("echo {marker} | /bin/busybox nc -w 3 {b} 7000"),
    ]);
    assert!(sent.is_ok(), "nc from a to b: {sent:?}");
    wait("the marker at b", Duration::from_secs(10), || {
        exec(&d1, "ctr-b", &["cat", "/got"]).is_ok_and(|got| got.contains(&marker))
    });
    for (i, capture) in captures.into_iter().enumerate() {
        let packets = capture.finish().expect("capture");
        let problems = cluster::underlay_problems(&packets, marker.as_bytes());
        assert!(
            problems.is_empty(),
            "host {i}'s underlay:\n{}",
            problems.join("\n")
        );
        let wireguard = packets.iter().filter(|p| cluster::is_wireguard(p)).count();
        assert!(wireguard > 0, "host {i}: no WireGuard on the underlay");
    }

    // --ip of an address in n1's space, asked of n0: refused, saying so.
    let theirs = space1
        .iter()
        .flat_map(|s| s.hosts())
        .find(|ip| *ip != b && !space1.iter().any(|s| s.network() == *ip))
        .expect("an address of n1's space");
    let err = run_on_weft(&d0, "ctr-theirs", &["--ip", &theirs.to_string()])
        .expect_err("another node's address");
    assert!(
        err.contains(&format!(
            "address {theirs} is not in this node's address space"
        )),
        "unclear error: {err}"
    );

    // weft on n0 restarted (SIGTERM, then a new daemon) while the containers run.
    let ep_a = endpoint_of(&d0, "ctr-a");
    let used_before = used(&c, 0);
    c.signal(0, "TERM");
    wait("n0's daemon to stop", Duration::from_secs(30), || {
        c.status(0).is_none()
    });
    c.kill(0);
    c.start(0);
    c.wait_space(&[0], Duration::from_secs(60));
    c.wait_full_mesh(&[0, 1], Duration::from_secs(60));
    assert_eq!(address_of(&d0, "ctr-a"), a, "Docker's view moved");
    let inside = exec(&d0, "ctr-a", &["ip", "-4", "-o", "addr", "show", "eth0"]).expect("addr");
    assert!(inside.contains(&format!("inet {a}/")), "{inside}");
    assert_eq!(
        used(&c, 0),
        used_before,
        "the restart changed the allocations"
    );
    assert!(
        docker_pods(&c, 0)
            .iter()
            .any(|p| p["endpoint"] == ep_a.as_str()),
        "the endpoint is forgotten after the restart"
    );
    wait(
        "ping a -> b after the restart",
        Duration::from_secs(30),
        || pings(&d0, "ctr-a", b),
    );
    assert!(pings(&d1, "ctr-b", a), "b cannot ping a after the restart");
    // A new container after the restart gets another address.
    let a2 = run_on_weft(&d0, "ctr-a2", &[]).expect("docker run after the restart");
    assert_ne!(a2, a);
    // Docker removes the container made before the restart: its address is given back.
    d0.docker_ok(&["rm", "-f", "ctr-a"]).expect("rm -f a");
    assert!(
        !docker_pods(&c, 0)
            .iter()
            .any(|p| p["endpoint"] == ep_a.as_str()),
        "rm -f after the restart left the endpoint"
    );
    assert_eq!(used(&c, 0), used_before, "one freed, one taken");
    drop(d0);
    drop(d1);
    c.assert_no_warnings();
}
