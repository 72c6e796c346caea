//! The policy engine's nftables rulesets against a real kernel, in test namespaces.
//!
//! - Generated rulesets (every feature, both families, and a large one) pass `nft -c -f` and
//!   load with `nft -f`.
//! - Real packets: node n1 is test host 0 with bridge `weft` (10.32.1.1/24) and five pods
//!   (network namespaces on veths); node n2 is test host 1, routed to it over the underlay,
//!   with three pods; test host 2 plays a machine outside the cluster. Every pod serves TCP 80
//!   and 81 and UDP 80, and so do node n1 and the outside host. Each node loads its own
//!   ruleset through the driver; then every source (the eight pods, both nodes, the outside
//!   host) tries every pod, node n1 and the outside host on every port, and what
//!   gets through must be exactly what `why` says, including traffic between pods of one
//!   node (over the bridge, through br_netfilter) and from the other node.
//! - Replacing the ruleset keeps an established connection, and the drop counters count.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use weft_mesh::policy::{
    self, Cluster, Compiled, Drift, NamedPort, Node, Pod, PolicyTable, Protocol, Scope,
};
use weft_testbed::{Host, TestBed};

mod policy_common;
use policy_common::{e2e, large_cluster};

/// Runs `f` on a thread that entered network namespace `netns`.
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(format!("/run/netns/{netns}")).expect("open netns");
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Runs an async `f` (the driver) in `netns` on a current-thread runtime.
fn block_in<T: Send, Fut: std::future::Future<Output = T>>(
    netns: &str,
    f: impl FnOnce() -> Fut + Send,
) -> T {
    in_netns(netns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], addr: &str, node: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        addresses: vec![ip(addr)],
        ports: Vec::new(),
        node: node.into(),
        interface: None,
    }
}

/// A cluster that uses every feature once, with both address families.
fn rich_cluster() -> Cluster {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: everything, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [a, b]}, {key: tier, operator: DoesNotExist}]}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: t}}
      podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [c]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.32.3.0/24, 10.32.4.128/25]}
    - ipBlock: {cidr: "fd00::/16", except: ["fd00:1::/32"]}
    ports: [{port: 80}, {port: 1000, endPort: 2000, protocol: UDP}, {port: http}, {protocol: SCTP}]
  - {}
  egress:
  - to: [{podSelector: {matchExpressions: [{key: app, operator: Exists}]}}]
    ports: [{port: dns, protocol: UDP}, {port: http}]
  - ports: [{port: 53, protocol: UDP}]
  - to: [{namespaceSelector: {}}]
"#;
    let mut pods = Vec::new();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        for (j, app) in ["a", "b", "c"].iter().enumerate() {
            let k = i * 3 + j + 2;
            let mut p = pod(ns, app, &[("app", app)], &format!("10.32.1.{k}"), "n1");
            p.interface = Some(format!("vw{k}"));
            p.addresses.push(ip(&format!("fd00::{k}")));
            p.ports = vec![
                NamedPort {
                    name: "http".into(),
                    port: 8000 + k as u16,
                    protocol: Protocol::Tcp,
                },
                NamedPort {
                    name: "dns".into(),
                    port: 53,
                    protocol: Protocol::Udp,
                },
            ];
            pods.push(p);
        }
    }
    Cluster {
        policies: policy::parse(yaml, "default").expect("valid"),
        pods,
        namespaces: [("y".to_owned(), [("team".to_owned(), "t".to_owned())].into())].into(),
        nodes: vec![Node {
            name: "n1".into(),
            addresses: vec![ip("10.32.1.1")],
        }],
    }
}

fn nft_check(host: &Host, compiled: &Compiled, what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ruleset.nft");
    std::fs::write(&path, policy::nft::replace_script(compiled)).expect("write");
    let path = path.to_str().expect("utf-8 path");
    let out = host.run(&["nft", "-c", "-f", path]).expect("nft runs");
    assert!(
        out.status.success(),
        "{what}: nft -c refused it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn generated_rulesets_pass_nft_check_and_load() {
    if !weft_testbed::require_root("generated_rulesets_pass_nft_check_and_load") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let h = bed.host(0);
    let rich = rich_cluster();
    let cases = [
        (
            "empty",
            policy::compile(&Cluster::default(), Scope::Node("n1".into())),
        ),
        (
            "rich, node",
            policy::compile(&rich, Scope::Node("n1".into())),
        ),
        (
            "rich, other node",
            policy::compile(&rich, Scope::Node("n2".into())),
        ),
        ("rich, cluster", policy::compile(&rich, Scope::Cluster)),
        (
            "1000 pods x 1000 policies",
            policy::compile(&large_cluster(1000, 1000), Scope::Node("n1".into())),
        ),
    ];
    for (what, compiled) in &cases {
        nft_check(h, compiled, what);
    }
    // And the driver loads them for real, one after the other, and reads the counters.
    let (counters, listing) = block_in(h.name(), || async {
        let mut table = PolicyTable::new();
        for (what, compiled) in &cases {
            table
                .apply(compiled)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let counters = table.drops().await.expect("counters");
        let listing = std::process::Command::new("nft")
            .args(["list", "table", "inet", "weft_policy"])
            .output()
            .expect("nft list");
        (
            counters,
            String::from_utf8_lossy(&listing.stdout).into_owned(),
        )
    });
    assert_eq!(
        counters.len(),
        1000,
        "one counter per policy of the last ruleset"
    );
    assert!(counters.values().all(|c| c.packets == 0));
    assert!(listing.contains("chain forward"), "{listing}");
    // A ruleset nft refuses is refused whole: the table stays as it was.
    let before = h
        .run_ok(&["nft", "list", "table", "inet", "weft_policy"])
        .expect("list");
    let out = h
        .run(&["sh", "-c", "printf 'table inet weft_policy\\ndelete table inet weft_policy\\ntable inet weft_policy {\\n\\tchain c {\\n\\t\\tnonsense\\n\\t}\\n}\\n' | nft -f -"])
        .expect("nft runs");
    assert!(!out.status.success());
    let after = h
        .run_ok(&["nft", "list", "table", "inet", "weft_policy"])
        .expect("list");
    assert_eq!(before, after);
}

#[test]
fn any_change_to_the_loaded_tables_is_drift() {
    if !weft_testbed::require_root("any_change_to_the_loaded_tables_is_drift") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let h = bed.host(0);
    let compiled = policy::compile(&rich_cluster(), Scope::Node("n1".into()));
    let nft = |args: &str| {
        let args: Vec<&str> = args.split(' ').collect();
        h.run_ok(&[&["nft"][..], &args].concat())
            .unwrap_or_else(|e| panic!("nft {args:?}: {e}"));
    };
    block_in(h.name(), || async {
        let mut table = PolicyTable::new();
        table.apply(&compiled).await.expect("apply");
        // As loaded, however often it is asked (and with counters counting).
        for _ in 0..3 {
            assert_eq!(table.drift().await.expect("drift"), Drift::None);
        }
        let edits = [
            ("flush chain inet weft_policy forward", Drift::Changed),
            ("add rule inet weft_policy forward accept", Drift::Changed),
            ("delete table bridge weft_policy", Drift::Missing),
            ("flush ruleset", Drift::Missing),
        ];
        for (edit, want) in edits {
            nft(edit);
            assert_eq!(
                table.drift().await.expect("drift"),
                want,
                "after nft {edit}"
            );
            table.apply(&compiled).await.expect("reload");
            assert_eq!(
                table.drift().await.expect("drift"),
                Drift::None,
                "reloaded after nft {edit}"
            );
        }
        // Removed by weft itself: nothing to compare with.
        table.remove().await.expect("remove");
        assert_eq!(table.drift().await.expect("drift"), Drift::Missing);
    });
}

// ---------------------------------------------------------------------------------------------
// Real packets.

const SERVICE_PORTS: [(Protocol, u16); 3] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
];

/// Serves TCP 80, 81 and UDP 80 in `netns` until `stop`: each TCP connection gets `name` and
/// a newline, then every line it sends echoed; each datagram gets `name` back.
/// UDP binds `udp_addr`: a server with several addresses must answer from the one it was
/// asked at, or its answer is no reply to conntrack.
fn serve(
    netns: String,
    name: String,
    udp_addr: IpAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let ns = File::open(format!("/run/netns/{netns}")).expect("open netns");
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        let any: IpAddr = if udp_addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let tcp: Vec<TcpListener> = [80, 81]
            .iter()
            .map(|p| TcpListener::bind((any, *p)).expect("bind tcp"))
            .collect();
        let udp = UdpSocket::bind((udp_addr, 80)).expect("bind udp");
        for l in &tcp {
            l.set_nonblocking(true).expect("nonblocking");
        }
        udp.set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            for l in &tcp {
                if let Ok((mut conn, _)) = l.accept() {
                    let name = name.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                        let _ = conn.write_all(format!("{name}\n").as_bytes());
                        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                        let mut line = String::new();
                        while !stop.load(Ordering::Relaxed) {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) => break,
                                Ok(_) => {
                                    let _ = conn.write_all(line.as_bytes());
                                }
                                Err(_) => continue,
                            }
                        }
                    });
                }
            }
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(name.as_bytes(), from);
            }
        }
    })
}

/// One attempt from `netns` to `dst`: the name the server answered with, or `None`.
fn probe(netns: &str, dst: IpAddr, proto: Protocol, port: u16, wait: Duration) -> Option<String> {
    in_netns(netns, || {
        let to = SocketAddr::from((dst, port));
        match proto {
            Protocol::Tcp => {
                let mut c = TcpStream::connect_timeout(&to, wait).ok()?;
                c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                let mut line = String::new();
                BufReader::new(&mut c).read_line(&mut line).ok()?;
                Some(line.trim().to_owned())
            }
            _ => {
                let any: IpAddr = if dst.is_ipv4() {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                let s = UdpSocket::bind((any, 0)).ok()?;
                s.set_read_timeout(Some(wait)).ok()?;
                s.send_to(b"?", to).ok()?;
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        }
    })
}

/// One probe: flow, protocol, port, what `why` says, what the packets said, `why` shown.
type Probe = (String, Protocol, u16, bool, bool, String);

struct PodNs {
    netns: String,
    pod: Pod,
}

/// Bridge `weft` with `gateway` on `host`, forwarding on, br_netfilter's iptables hook on.
fn make_node(host: &Host, gateway: &str) {
    assert!(
        std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
        "the policy tests need the kernel's br_netfilter (modprobe br_netfilter)"
    );
    host.sh(&format!(
        "ip link add weft type bridge && ip addr add {gateway}/24 dev weft && ip link set weft up && \
         sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.bridge.bridge-nf-call-iptables=1"
    ))
    .expect("bridge");
}

fn add_pod(bed: &TestBed, host: &Host, k: usize, mut pod: Pod) -> PodNs {
    let netns = bed.container().expect("pod namespace");
    let addr = pod.addresses[0];
    let gateway = match addr {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) & 0xffff_ff00 | 1),
        IpAddr::V6(_) => panic!("v4 pods only here"),
    };
    let veth = format!("vp{k}");
    // The bridge port: the ruleset lets only the pod's own addresses in through it.
    pod.interface = Some(veth.clone());
    host.sh(&format!(
        "ip link add {veth} type veth peer name eth0 netns {netns} && ip link set {veth} master weft up"
    ))
    .expect("veth");
    bed.run_ok_in(
        &netns,
        &["sh", "-c", &format!(
            "ip addr add {addr}/24 dev eth0 && ip link set eth0 up && ip route add default via {gateway}"
        )],
    )
    .expect("pod address");
    PodNs { netns, pod }
}

const POLICIES: &str = r#"
# x: nothing comes in unless allowed below.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
# x/a: TCP 80 from any pod of namespace y (a namespaceSelector alone).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: y}}}]
    ports: [{port: 80}]
---
# x/b: its named port "web" (81) from its own namespace, and anything from the underlay but
# the outside host (an ipBlock with an exception): so node n2 gets in, host 2 does not.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: web}]
  - from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.12/32]}}]
---
# y/a may only send to namespace x, TCP 80-81, and UDP 80 anywhere.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: y}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: x}}}]
    ports: [{port: 80, endPort: 81}]
  - ports: [{port: 80, protocol: UDP}]
---
# z: only pods labelled role=client, in namespaces with team=y or team=z (both selectors in
# one peer), on UDP; and from the outside host on TCP 81.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: z-clients, namespace: z}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [y, z]}]}
      podSelector: {matchLabels: {role: client}}
    ports: [{protocol: UDP, port: 80}]
  - from: [{ipBlock: {cidr: 198.18.0.12/32}}]
    ports: [{port: 81}]
"#;

#[test]
fn packets_match_why_across_bridge_nodes_and_outside() {
    if !weft_testbed::require_root("packets_match_why_across_bridge_nodes_and_outside") {
        return;
    }
    let bed = TestBed::new(3).expect("test bed");
    let (h0, h1, h2) = (bed.host(0), bed.host(1), bed.host(2));
    make_node(h0, "10.32.1.1");
    make_node(h1, "10.32.2.1");
    // Routed: each node reaches the other's pods over the underlay; the outside host too.
    h0.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.2.0/24",
        "via",
        &h1.underlay_ip().to_string(),
    ])
    .expect("route");
    h1.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.1.0/24",
        "via",
        &h0.underlay_ip().to_string(),
    ])
    .expect("route");
    h2.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.1.0/24",
        "via",
        &h0.underlay_ip().to_string(),
    ])
    .expect("route");
    h2.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.2.0/24",
        "via",
        &h1.underlay_ip().to_string(),
    ])
    .expect("route");

    let web = NamedPort {
        name: "web".into(),
        port: 81,
        protocol: Protocol::Tcp,
    };
    let specs = [
        // (host, namespace, name, labels, address)
        (0, "x", "a", vec![("app", "a")], "10.32.1.2"),
        (0, "x", "b", vec![("app", "b")], "10.32.1.3"),
        (0, "y", "a", vec![("app", "a")], "10.32.1.4"),
        (
            0,
            "y",
            "b",
            vec![("app", "b"), ("role", "client")],
            "10.32.1.5",
        ),
        (0, "z", "a", vec![("app", "a")], "10.32.1.6"),
        (1, "x", "c", vec![("app", "c")], "10.32.2.2"),
        (
            1,
            "y",
            "c",
            vec![("app", "c"), ("role", "client")],
            "10.32.2.3",
        ),
        (
            1,
            "z",
            "c",
            vec![("app", "c"), ("role", "client")],
            "10.32.2.4",
        ),
    ];
    let mut pods = Vec::new();
    for (k, (host, ns, name, labels, addr)) in specs.iter().enumerate() {
        let node = ["n1", "n2"][*host];
        let mut p = pod(ns, name, labels, addr, node);
        if *name == "b" && *ns == "x" {
            p.ports = vec![web.clone()];
        }
        pods.push(add_pod(&bed, bed.host(*host), k, p));
    }
    let cluster = |policies: &str| Cluster {
        policies: policy::parse(policies, "default").expect("valid"),
        pods: pods.iter().map(|p| p.pod.clone()).collect(),
        namespaces: ["x", "y", "z"]
            .iter()
            .map(|ns| {
                (
                    (*ns).to_owned(),
                    [("team".to_owned(), (*ns).to_owned())].into(),
                )
            })
            .collect(),
        nodes: vec![
            Node {
                name: "n1".into(),
                addresses: vec![ip("10.32.1.1"), IpAddr::V4(h0.underlay_ip())],
            },
            Node {
                name: "n2".into(),
                addresses: vec![ip("10.32.2.1"), IpAddr::V4(h1.underlay_ip())],
            },
        ],
    };
    let c = cluster(POLICIES);
    let mut tables = [PolicyTable::new(), PolicyTable::new()];
    for (i, node) in ["n1", "n2"].iter().enumerate() {
        let compiled = policy::compile(&c, Scope::Node((*node).into()));
        let table = &mut tables[i];
        block_in(bed.host(i).name(), || async {
            table.apply(&compiled).await.expect("apply")
        });
    }
    let model = policy::compile(&c, Scope::Cluster);

    let stop = Arc::new(AtomicBool::new(false));
    // Destinations: every pod, node n1 itself (what pods send to it passes the input hook)
    // and the outside host.
    let mut destinations: Vec<(String, Ipv4Addr)> = pods
        .iter()
        .map(|p| {
            let IpAddr::V4(a) = p.pod.addresses[0] else {
                unreachable!()
            };
            (format!("{}/{}", p.pod.namespace, p.pod.name), a)
        })
        .collect();
    destinations.push(("node n1".into(), Ipv4Addr::new(10, 32, 1, 1)));
    destinations.push(("outside".into(), h2.underlay_ip()));
    let servers: Vec<_> = pods
        .iter()
        .map(|p| {
            (
                p.netns.clone(),
                format!("{}/{}", p.pod.namespace, p.pod.name),
            )
        })
        .chain([
            (h0.name().to_owned(), "node n1".to_owned()),
            (h2.name().to_owned(), "outside".to_owned()),
        ])
        .zip(destinations.iter().map(|(_, addr)| IpAddr::V4(*addr)))
        .map(|((netns, name), addr)| serve(netns, name, addr, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // Sources: every pod, both nodes (their underlay address: n2 reaches n1's pods from it),
    // the outside host.
    let mut sources: Vec<(String, String, Ipv4Addr)> = pods
        .iter()
        .map(|p| {
            let IpAddr::V4(a) = p.pod.addresses[0] else {
                unreachable!()
            };
            (
                format!("{}/{}", p.pod.namespace, p.pod.name),
                p.netns.clone(),
                a,
            )
        })
        .collect();
    sources.push((
        "node n1".into(),
        h0.name().into(),
        Ipv4Addr::new(10, 32, 1, 1),
    ));
    sources.push(("node n2".into(), h1.name().into(), h1.underlay_ip()));
    sources.push(("outside".into(), h2.name().into(), h2.underlay_ip()));

    let results: Vec<Vec<Probe>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|(label, netns, src)| {
                let destinations = &destinations;
                let model = &model;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (target, d) in destinations {
                        let d = *d;
                        if d == *src {
                            continue;
                        }
                        for (proto, port) in SERVICE_PORTS {
                            let why = model.why_addr(IpAddr::V4(*src), IpAddr::V4(d), proto, port);
                            let wait = Duration::from_millis(if why.allowed { 2000 } else { 400 });
                            let mut got = probe(netns, IpAddr::V4(d), proto, port, wait);
                            if got.is_some() != why.allowed {
                                // Once more, slowly, before calling it a mismatch.
                                got = probe(
                                    netns,
                                    IpAddr::V4(d),
                                    proto,
                                    port,
                                    Duration::from_secs(2),
                                );
                            }
                            if let Some(name) = &got {
                                assert_eq!(name, target, "{label} reached the wrong server");
                            }
                            out.push((
                                format!("{label} -> {target}"),
                                proto,
                                port,
                                why.allowed,
                                got.is_some(),
                                why.to_string(),
                            ));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("prober"))
            .collect()
    });
    let results: Vec<_> = results.into_iter().flatten().collect();
    let mismatches: Vec<String> = results
        .iter()
        .filter(|r| r.3 != r.4)
        .map(|r| {
            format!(
                "{} {}/{}: why says {}, packets say {}\n{}",
                r.0, r.2, r.1, r.3, r.4, r.5
            )
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    let allowed = |flow: &str, proto: Protocol, port: u16| {
        results
            .iter()
            .find(|r| r.0 == flow && r.1 == proto && r.2 == port)
            .unwrap_or_else(|| panic!("no probe {flow}"))
            .4
    };
    // The matrix is not trivial, and the cases the policies were written for hold.
    let open = results.iter().filter(|r| r.4).count();
    assert!(
        open > 20 && open < results.len() - 20,
        "{open} of {} open",
        results.len()
    );
    // Same node, over the bridge.
    assert!(allowed("y/a -> x/a", Protocol::Tcp, 80));
    assert!(!allowed("y/a -> x/a", Protocol::Tcp, 81));
    assert!(!allowed("z/a -> x/a", Protocol::Tcp, 80));
    assert!(
        allowed("x/a -> x/b", Protocol::Tcp, 81),
        "named port in own namespace"
    );
    assert!(
        !allowed("y/a -> z/a", Protocol::Tcp, 80),
        "y/a's egress: only namespace x on TCP"
    );
    assert!(
        allowed("y/b -> z/a", Protocol::Udp, 80),
        "role=client in team y"
    );
    // From the other node: its pods and the node itself.
    assert!(allowed("y/c -> x/a", Protocol::Tcp, 80));
    assert!(!allowed("x/c -> x/a", Protocol::Tcp, 80));
    assert!(
        allowed("node n2 -> x/b", Protocol::Tcp, 80),
        "ipBlock allows the underlay"
    );
    assert!(allowed("z/c -> z/a", Protocol::Udp, 80));
    // The outside host: excepted from the underlay block, allowed into z on 81 only.
    assert!(!allowed("outside -> x/b", Protocol::Tcp, 80));
    assert!(allowed("outside -> z/a", Protocol::Tcp, 81));
    assert!(!allowed("outside -> z/a", Protocol::Tcp, 80));
    // The node's own traffic to its pods is never filtered.
    assert!(allowed("node n1 -> x/a", Protocol::Tcp, 81));
    // Egress to what is not a pod: the node (input hook) and the outside (forward hook).
    assert!(!allowed("y/a -> node n1", Protocol::Tcp, 80));
    assert!(allowed("y/a -> node n1", Protocol::Udp, 80));
    assert!(allowed("x/a -> node n1", Protocol::Tcp, 80));
    assert!(!allowed("y/a -> outside", Protocol::Tcp, 81));
    assert!(allowed("y/a -> outside", Protocol::Udp, 80));
    assert!(allowed("y/b -> outside", Protocol::Tcp, 81));

    // Drops were counted on the policies that isolate the pods.
    let drops = block_in(h0.name(), || async {
        tables[0].drops().await.expect("drops")
    });
    let count = |ns: &str, name: &str| {
        drops
            .iter()
            .find(|(id, _)| id.namespace == ns && id.name == name)
            .map(|(_, v)| v.packets)
            .unwrap_or_else(|| panic!("no counter for {ns}/{name}: {drops:?}"))
    };
    assert!(count("x", "default-deny") > 0);
    assert!(count("y", "a-out") > 0);
    assert!(count("z", "z-clients") > 0);

    // An established connection survives a replacement of the ruleset, also one under which
    // it could no longer be opened.
    let ya = &pods[2];
    let xa = &pods[0];
    let IpAddr::V4(xa_addr) = xa.pod.addresses[0] else {
        unreachable!()
    };
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<String>();
    let client = {
        let netns = ya.netns.clone();
        std::thread::spawn(move || {
            let ns = File::open(format!("/run/netns/{netns}")).expect("open netns");
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            let c = TcpStream::connect_timeout(
                &SocketAddr::from((xa_addr, 80)),
                Duration::from_secs(2),
            )
            .expect("allowed connection");
            c.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut reader = BufReader::new(c.try_clone().expect("clone"));
            let mut w = c;
            let mut line = String::new();
            reader.read_line(&mut line).expect("greeting");
            back_tx.send(line.trim().to_owned()).expect("send");
            for msg in rx {
                w.write_all(format!("{msg}\n").as_bytes()).expect("write");
                line.clear();
                let got = reader.read_line(&mut line).map(|_| line.trim().to_owned());
                back_tx
                    .send(got.unwrap_or_else(|e| format!("error: {e}")))
                    .expect("send");
            }
        })
    };
    assert_eq!(
        back_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("greeting"),
        "x/a"
    );
    let reapply = |policies: &str, table: &mut PolicyTable| {
        let compiled = policy::compile(&cluster(policies), Scope::Node("n1".into()));
        block_in(h0.name(), || async {
            table.apply(&compiled).await.expect("apply")
        });
    };
    // 1. Another policy added elsewhere: the flow stays allowed.
    let more = format!(
        "{POLICIES}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: extra, namespace: z}}\nspec: {{podSelector: {{}}, policyTypes: [Egress]}}\n"
    );
    reapply(&more, &mut tables[0]);
    tx.send("one").expect("send");
    assert_eq!(
        back_rx.recv_timeout(Duration::from_secs(5)).expect("echo"),
        "one"
    );
    // 2. a-from-y removed: a new connection is refused, the established one still flows.
    let without: String = POLICIES
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: a-from-y"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    reapply(&without, &mut tables[0]);
    assert_eq!(
        probe(
            &ya.netns,
            IpAddr::V4(xa_addr),
            Protocol::Tcp,
            80,
            Duration::from_millis(500)
        ),
        None,
        "new connections are denied now"
    );
    tx.send("two").expect("send");
    assert_eq!(
        back_rx.recv_timeout(Duration::from_secs(5)).expect("echo"),
        "two"
    );
    drop(tx);
    client.join().expect("client");
    // Counters carried over the replacements.
    let after = block_in(h0.name(), || async {
        tables[0].drops().await.expect("drops")
    });
    let deny = after
        .iter()
        .find(|(id, _)| id.name == "default-deny")
        .map(|(_, v)| v.packets)
        .expect("counter");
    assert!(deny > count("x", "default-deny"), "{deny}");

    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("server");
    }
}

/// IPv6 pods on one bridge: the bridged IPv6 path (br_netfilter's ip6tables hook) enforces the
/// policy like IPv4, and isolated pods still find their neighbours (neighbour advertisements
/// to an isolated pod are not dropped).
#[test]
fn ipv6_pods_on_one_bridge() {
    if !weft_testbed::require_root("ipv6_pods_on_one_bridge") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let h = bed.host(0);
    h.sh(
        "ip link add weft type bridge && ip -6 addr add fd00:32:1::1/64 dev weft nodad && \
         ip link set weft up && sysctl -qw net.ipv6.conf.all.forwarding=1 && \
         sysctl -qw net.bridge.bridge-nf-call-ip6tables=1",
    )
    .expect("bridge");
    let mut pods = Vec::new();
    for (k, name) in ["a", "b", "c"].iter().enumerate() {
        let netns = bed.container().expect("pod namespace");
        let addr = format!("fd00:32:1::{}", k + 2);
        h.sh(&format!(
            "ip link add v6p{k} type veth peer name eth0 netns {netns} && ip link set v6p{k} master weft up"
        ))
        .expect("veth");
        bed.run_ok_in(
            &netns,
            &[
                "sh",
                "-c",
                &format!("ip -6 addr add {addr}/64 dev eth0 nodad && ip link set eth0 up"),
            ],
        )
        .expect("address");
        let mut p = pod("x", name, &[("app", name)], &addr, "n1");
        p.interface = Some(format!("v6p{k}"));
        p.labels.insert("app".into(), (*name).into());
        pods.push(PodNs { netns, pod: p });
    }
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 80}, {port: 80, protocol: UDP}]
"#;
    let cluster = Cluster {
        policies: policy::parse(yaml, "default").expect("valid"),
        pods: pods.iter().map(|p| p.pod.clone()).collect(),
        namespaces: Default::default(),
        nodes: vec![Node {
            name: "n1".into(),
            addresses: vec![ip("fd00:32:1::1")],
        }],
    };
    let model = policy::compile(&cluster, Scope::Node("n1".into()));
    let mut table = PolicyTable::new();
    block_in(h.name(), || async {
        table.apply(&model).await.expect("apply")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = pods
        .iter()
        .map(|p| {
            serve(
                p.netns.clone(),
                format!("x/{}", p.pod.name),
                p.pod.addresses[0],
                stop.clone(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut open = 0;
    for src in &pods {
        for dst in &pods {
            if src.pod.name == dst.pod.name {
                continue;
            }
            for (proto, port) in SERVICE_PORTS {
                let why = model
                    .why(
                        &format!("x/{}", src.pod.name).parse().expect("endpoint"),
                        &format!("x/{}", dst.pod.name).parse().expect("endpoint"),
                        proto,
                        port,
                    )
                    .expect("known pods");
                let wait = Duration::from_millis(if why.allowed { 3000 } else { 400 });
                let got = probe(&src.netns, dst.pod.addresses[0], proto, port, wait);
                assert_eq!(got.is_some(), why.allowed, "{why}");
                open += usize::from(why.allowed);
            }
        }
    }
    assert_eq!(open, 2, "b -> a on TCP 80 and UDP 80, nothing else");
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("server");
    }
}

/// The Kubernetes e2e suite's cases (mesh/tests/policy_common/e2e.rs) on real packets: its
/// nine pods on two routed nodes; for each case both nodes load their rulesets (replacing the
/// last case's), then every pod tries every other on TCP 80, 81 and UDP 80 at once, and what
/// gets through must be what the suite expects (and what `why` says).
#[test]
fn kubernetes_e2e_cases_on_real_packets() {
    if !weft_testbed::require_root("kubernetes_e2e_cases_on_real_packets") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let (h0, h1) = (bed.host(0), bed.host(1));
    make_node(h0, "10.32.1.1");
    make_node(h1, "10.32.2.1");
    h0.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.2.0/24",
        "via",
        &h1.underlay_ip().to_string(),
    ])
    .expect("route");
    h1.run_ok(&[
        "ip",
        "route",
        "add",
        "10.32.1.0/24",
        "via",
        &h0.underlay_ip().to_string(),
    ])
    .expect("route");
    let template = e2e::cluster("");
    let pods: Vec<PodNs> = template
        .pods
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let host = if p.node == "n1" { h0 } else { h1 };
            add_pod(&bed, host, k, p.clone())
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = pods
        .iter()
        .map(|p| {
            serve(
                p.netns.clone(),
                format!("{}/{}", p.pod.namespace, p.pod.name),
                p.pod.addresses[0],
                stop.clone(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut tables = [PolicyTable::new(), PolicyTable::new()];
    let cases = e2e::cases();
    for case in &cases {
        let cluster = e2e::cluster(&case.yaml);
        for (i, node) in ["n1", "n2"].iter().enumerate() {
            let compiled = policy::compile(&cluster, Scope::Node((*node).into()));
            let table = &mut tables[i];
            block_in(bed.host(i).name(), || async {
                table.apply(&compiled).await.expect("apply")
            });
        }
        let model = policy::compile(&cluster, Scope::Cluster);
        let wrong: Vec<String> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for src in &pods {
                for dst in &pods {
                    if src.pod.name == dst.pod.name && src.pod.namespace == dst.pod.namespace {
                        continue;
                    }
                    for (proto, port) in e2e::PORTS {
                        let (model, case) = (&model, case);
                        handles.push(s.spawn(move || {
                            let flow = (
                                src.pod.namespace.as_str(),
                                src.pod.name.as_str(),
                                dst.pod.namespace.as_str(),
                                dst.pod.name.as_str(),
                                proto,
                                port,
                            );
                            let want = (case.expect)(flow);
                            let why = model.why_addr(
                                src.pod.addresses[0],
                                dst.pod.addresses[0],
                                proto,
                                port,
                            );
                            let wait = Duration::from_millis(if want { 2000 } else { 300 });
                            let mut got =
                                probe(&src.netns, dst.pod.addresses[0], proto, port, wait)
                                    .is_some();
                            if got != want {
                                // Once more (a fresh source port, so no conntrack entry of an
                                // earlier case's flow can answer for it), slowly.
                                got = probe(
                                    &src.netns,
                                    dst.pod.addresses[0],
                                    proto,
                                    port,
                                    Duration::from_secs(2),
                                )
                                .is_some();
                            }
                            (got != want || why.allowed != want)
                                .then(|| format!("packets {got}, suite {want}: {why}"))
                        }));
                    }
                }
            }
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("probe"))
                .collect()
        });
        assert!(
            wrong.is_empty(),
            "case {}: {} flows differ:\n{}",
            case.name,
            wrong.len(),
            wrong.join("\n")
        );
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("server");
    }
}

/// A pod that sends with another pod's address (one the policy allows) is stopped at the
/// bridge port; without its interface in the input (control) the forged packet gets through
/// the policy, so the check is what stops it.
#[test]
fn forged_source_addresses_are_dropped_at_the_bridge() {
    if !weft_testbed::require_root("forged_source_addresses_are_dropped_at_the_bridge") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let h = bed.host(0);
    make_node(h, "10.32.1.1");
    let pods: Vec<PodNs> = [("a", "10.32.1.2"), ("b", "10.32.1.3"), ("c", "10.32.1.4")]
        .iter()
        .enumerate()
        .map(|(k, (name, addr))| add_pod(&bed, h, k, pod("x", name, &[("app", name)], addr, "n1")))
        .collect();
    // c also holds b's address, and sends from it.
    bed.run_ok_in(
        &pods[2].netns,
        &["ip", "addr", "add", "10.32.1.3/32", "dev", "eth0"],
    )
    .expect("second address");
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 80, protocol: UDP}]
"#;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (netns, received, stop) = (pods[0].netns.clone(), received.clone(), stop.clone());
        std::thread::spawn(move || {
            let ns = File::open(format!("/run/netns/{netns}")).expect("open netns");
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            let sock = UdpSocket::bind(("10.32.1.2", 80)).expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let mut buf = [0u8; 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if &buf[..n] == b"hello" && from.ip() == ip("10.32.1.3") {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let send_from = |netns: &str| {
        in_netns(netns, || {
            let s = UdpSocket::bind(("10.32.1.3", 0)).expect("bind to b's address");
            for _ in 0..5 {
                s.send_to(b"hello", ("10.32.1.2", 80)).expect("send");
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        received.swap(0, Ordering::Relaxed)
    };
    let load = |with_interfaces: bool, table: &mut PolicyTable| {
        let mut cluster = Cluster {
            policies: policy::parse(yaml, "default").expect("valid"),
            pods: pods.iter().map(|p| p.pod.clone()).collect(),
            ..Cluster::default()
        };
        if !with_interfaces {
            for p in &mut cluster.pods {
                p.interface = None;
            }
        }
        let compiled = policy::compile(&cluster, Scope::Node("n1".into()));
        block_in(h.name(), || async {
            table.apply(&compiled).await.expect("apply")
        });
    };
    let mut table = PolicyTable::new();
    // Control: without the bridge ports known, c passes for b.
    load(false, &mut table);
    assert!(
        send_from(&pods[2].netns) > 0,
        "the forged datagrams pass the policy unchecked"
    );
    // With them: b still gets through, c's forgeries are dropped and counted.
    load(true, &mut table);
    assert!(send_from(&pods[1].netns) > 0, "b itself still gets through");
    assert_eq!(
        send_from(&pods[2].netns),
        0,
        "c's forged datagrams are dropped"
    );
    let spoofed = block_in(h.name(), || async {
        table.spoofed().await.expect("counter")
    });
    assert!(spoofed.packets >= 5, "{spoofed:?}");
    stop.store(true, Ordering::Relaxed);
    receiver.join().expect("receiver");
}
