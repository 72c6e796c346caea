//! Kubernetes Services over weft (issue 15), without an API server: on every node the
//! nftables rules kube-proxy makes (its iptables mode, written as nft: DNAT in prerouting and
//! output, the masquerade mark 0x4000 for sources outside the cluster range, for NodePorts
//! and for an endpoint reaching itself, `masquerade` of marked packets in postrouting, and
//! forward accepts), three weft nodes in test-bed hosts with pods attached by `weft attach`,
//! and TCP connections to the services:
//!
//! - ClusterIP from a pod on n0 to an endpoint pod on n1 (DNAT in prerouting);
//! - ClusterIP from n0's host network (DNAT in output, masqueraded: the host's own source
//!   would not pass the peer's allowed IPs);
//! - NodePort on n0's underlay address from n2's host, endpoint on n1;
//! - hairpin: a pod reaching itself through its service (again after its bridge was
//!   deleted and made anew).
//!
//! Each gets its answer back; the server says which source it saw. n1's underlay carries
//! only WireGuard meanwhile (the marker the server sends never in the clear). The hosts run
//! with strict reverse-path filtering (rp_filter=1).
//!
//! Needs root; prints "skipped: ..." otherwise. Run: `cargo test --test services`.

#[path = "mesh/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::net::Ipv4Addr;
use std::time::Duration;

use cluster::{range, underlay_problems, Cluster, Container};
use weft_testbed::require_root;

const GENEROUS: Duration = Duration::from_secs(60);
const MARKER: &str = "WEFT-SVC-MARKER-7d2e";
const WEB: &str = "10.96.0.10";
const SELF_SVC: &str = "10.96.0.11";
const NODE_PORT: u16 = 30080;

/// A TCP server on port 8080 that answers every connection with the marker, its name and the
/// source address it sees, then closes.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(16)
while True:
    c, a = s.accept()
    c.sendall(("%s from %s to %s\n" % (sys.argv[2], sys.argv[1], a[0])).encode())
    c.close()
"#;

/// Connects to argv[1]:argv[2] and prints what it receives (3 s limit).
const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(200).decode().strip())
"#;

/// kube-proxy's rules for two services, as nft: `web` (ClusterIP WEB:80 and NodePort
/// 30080) with endpoint `web`:8080, `self` (ClusterIP SELF_SVC:80) with endpoint
/// `own`:8080.
fn kube_proxy_rules(web: Ipv4Addr, own: Ipv4Addr) -> String {
    let range = range();
    format!(
        r#"table ip kubeproxy {{
    chain prerouting {{ type nat hook prerouting priority -100; policy accept; jump services; }}
    chain output {{ type nat hook output priority -100; policy accept; jump services; }}
    chain services {{
        ip daddr {WEB} tcp dport 80 jump svc_web
        ip daddr {SELF_SVC} tcp dport 80 jump svc_self
        fib daddr type local tcp dport {NODE_PORT} jump nodeport_web
    }}
    chain mark_masq {{ meta mark set meta mark | 0x4000; }}
    chain svc_web {{
        ip saddr != {range} jump mark_masq
        ip saddr {web} jump mark_masq
        meta l4proto tcp dnat to {web}:8080
    }}
    chain svc_self {{
        ip saddr != {range} jump mark_masq
        ip saddr {own} jump mark_masq
        meta l4proto tcp counter dnat to {own}:8080
    }}
    chain nodeport_web {{ jump mark_masq; jump svc_web; }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        meta mark & 0x4000 == 0x4000 counter masquerade
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ct state established,related accept
        meta mark & 0x4000 == 0x4000 accept
    }}
}}
"#
    )
}

/// What the client got from `ip:port`, run in network namespace `netns`.
fn fetch(c: &Cluster, netns: &str, ip: &str, port: u16) -> Result<String, String> {
    let out = c
        .bed
        .run_in(netns, &["python3", "-c", CLIENT, ip, &port.to_string()])
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The source address the server reported, checking the answer came from `server`.
fn seen_source(answer: &str, server: &str) -> Ipv4Addr {
    let words: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(
        (words.first().copied(), words.get(2).copied()),
        (Some(MARKER), Some(server)),
        "{answer}"
    );
    words[4].parse().expect("source address")
}

fn server(c: &Cluster, pod: &Container) -> weft_testbed::Proc {
    c.bed
        .spawn_in(&pod.netns, &["python3", "-c", SERVER, &pod.id, MARKER])
        .expect("server")
}

#[test]
fn services_dnat_to_pods_on_other_nodes_and_back_through_the_mesh() {
    if !require_root("services_dnat_to_pods_on_other_nodes_and_back_through_the_mesh") {
        return;
    }
    let mut c = Cluster::new(3);
    // Strict reverse-path filtering, as many distributions set it (the kernel's default,
    // which test hosts get, is off): every interface made from here on has it too.
    for i in 0..3 {
        c.bed
            .host(i)
            .sh("sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1")
            .expect("rp_filter");
    }
    c.launch_chain();
    c.wait_full_mesh(&[0, 1, 2], GENEROUS);
    c.wait_space(&[0, 1, 2], GENEROUS);
    let pod0 = c.attach(0, "pod0");
    let pod1 = c.attach(1, "pod1");
    let _servers = [server(&c, &pod0), server(&c, &pod1)];
    c.wait_ping(&pod0, &pod1, GENEROUS);
    let rules = c.dir.path().join("kube-proxy.nft");
    std::fs::write(&rules, kube_proxy_rules(pod1.addr, pod0.addr)).expect("rules");
    for i in 0..3 {
        c.bed
            .host(i)
            .run_ok(&["nft", "-f", rules.to_str().expect("utf-8")])
            .expect("kube-proxy's rules");
    }
    // Directly first: the servers answer.
    c.wait("pod1's server answers", GENEROUS, || {
        fetch(&c, &pod0.netns, &pod1.addr.to_string(), 8080).is_ok()
    });
    let capture = c.bed.capture(1, "").expect("capture on n1's underlay");
    let host0 = c.bed.host(0).name().to_owned();
    let host2 = c.bed.host(2).name().to_owned();
    let n0_ip = c.bed.host(0).public_ip().to_string();
    let mut failures = Vec::new();

    // ClusterIP from a pod: DNAT in prerouting, the pod's own source kept.
    match fetch(&c, &pod0.netns, WEB, 80) {
        Ok(a) => assert_eq!(seen_source(&a, "pod1"), pod0.addr, "{a}"),
        Err(e) => failures.push(format!("ClusterIP from pod0: {e}")),
    }
    // ClusterIP from the host's network: DNAT in output, masqueraded to an address the
    // answer comes back to through the mesh.
    match fetch(&c, &host0, WEB, 80) {
        Ok(a) => {
            let src = seen_source(&a, "pod1");
            assert!(range().contains(&src), "host-network source {src}: {a}");
        }
        Err(e) => failures.push(format!("ClusterIP from n0's host network: {e}")),
    }
    // NodePort on n0 from n2's host, endpoint on n1.
    match fetch(&c, &host2, &n0_ip, NODE_PORT) {
        Ok(a) => {
            let src = seen_source(&a, "pod1");
            assert!(range().contains(&src), "NodePort source {src}: {a}");
        }
        Err(e) => failures.push(format!("NodePort on n0 from n2: {e}")),
    }
    // Hairpin: pod0 through its own service.
    match fetch(&c, &pod0.netns, SELF_SVC, 80) {
        Ok(a) => {
            let src = seen_source(&a, "pod0");
            assert!(range().contains(&src), "hairpin source {src}: {a}");
        }
        Err(e) => {
            // What the pod saw, and the bridge's ports and netfilter settings, for the report.
            let cap = c
                .bed
                .capture_in(&pod0.netns, "eth0", "tcp")
                .expect("capture in pod0");
            let again = fetch(&c, &pod0.netns, SELF_SVC, 80)
                .err()
                .unwrap_or_default();
            let seen: Vec<String> = cap
                .finish()
                .unwrap_or_default()
                .iter()
                .map(|p| format!("{:?} -> {:?}", p.src(), p.dst()))
                .collect();
            let host = c.bed.host(0);
            let diag = host
                .sh("bridge -d link show; sysctl net.bridge.bridge-nf-call-iptables; nft list table ip kubeproxy")
                .unwrap_or_else(|e| e.to_string());
            failures.push(format!(
                "hairpin pod0 -> its own service: {e}\nagain: {again}\npod0 saw {seen:#?}\n{diag}"
            ))
        }
    }
    let packets = capture.finish().expect("capture");
    assert!(failures.is_empty(), "{failures:#?}\n{}", c.diagnostics());
    let problems = underlay_problems(&packets, MARKER.as_bytes());
    assert!(problems.is_empty(), "n1's underlay: {problems:#?}");
    assert!(
        packets.iter().any(cluster::is_wireguard),
        "no WireGuard on n1's underlay"
    );
    c.assert_no_warnings();

    // The bridge deleted by someone else: the datapath makes it again and puts pod0's port
    // back on it, in hairpin mode again.
    c.bed
        .host(0)
        .run_ok(&["ip", "link", "del", "weft"])
        .expect("delete the bridge");
    c.wait("hairpin after the bridge came back", GENEROUS, || {
        fetch(&c, &pod0.netns, SELF_SVC, 80).is_ok_and(|a| seen_source(&a, "pod0") != pod0.addr)
    });
}
