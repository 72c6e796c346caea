//! weft daemons on Kubernetes, against a real API server (issue 15): kube-apiserver 1.20.2
//! and etcd (tests/kube/fixture.rs, shared with kube/tests/apiserver.rs) in a fourth test-bed
//! host, three `weft launch --kubeconfig` nodes in the others with no seed flags.
//!
//! - The Node objects seed the gossip; their podCIDRs are the nodes' spaces: pods attached
//!   with `weft attach` get addresses from them and reach each other through the mesh.
//! - Each Node gets `NetworkUnavailable=False` once its weft is ready.
//! - /readyz and /metrics show the watches' health.
//! - The API server stopped: the mesh and the pods keep working, /readyz stays 200 and
//!   says the watches fail; a node restarted meanwhile starts with its space and members
//!   and its pod is reachable again; the API server restarted: the watches resume.
//! - A Node deleted (its weft gone): the others forget it and stop routing its pod CIDR.
//!
//! And in a second test, network policy from the API: Pods (with the addresses of pods
//! attached on the nodes, as kubelet reports them), Namespaces and NetworkPolicies created,
//! relabelled and deleted change what real TCP connections between pods on two nodes do,
//! each within 2 s of the API call, with ingress enforced on one node and egress on the other.
//!
//! And in a third, weft's image (deploy/kubernetes/Containerfile, tests/kube/image.rs) run by
//! Podman as the DaemonSet says, on a third node beside two daemons of this build: the init
//! container installs the CNI plugin and conflist, the daemon container (only NET_ADMIN and
//! NET_RAW, in-cluster service account) joins the mesh, and a pod the installed plugin
//! attaches reaches pods on the other nodes.
//!
//! Needs root and the binaries (else prints "skipped" and why; `WEFT_REQUIRE_KUBE=1` fails).
//! Run: `cargo test --test kubernetes -- --nocapture` (as root).

#[path = "mesh/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "kube/fixture.rs"]
#[allow(dead_code)]
mod fixture;
#[path = "mesh/flows.rs"]
#[allow(dead_code)]
mod flows;
#[path = "kube/image.rs"]
mod image;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{Cluster, Container};
use fixture::{apply_manifests, binaries, node, ADMIN_TOKEN, WEFT_TOKEN};
use flows::{reaches, serve, until, Proto, StopOnDrop};
use serde_json::{json, Value};
use weft_kube::k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use weft_kube::k8s_openapi::api::networking::v1::NetworkPolicy;
use weft_kube::kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use weft_kube::kube::{Api, Client};
use weft_kube::status;
use weft_testbed::{require_root, TestBed};

const GENEROUS: Duration = Duration::from_secs(90);
const RANGE: &str = "10.244.0.0/16";

fn pod_cidr(i: usize) -> String {
    format!("10.244.{}.0/24", i + 1)
}

/// Moves this thread into test-bed host `ns`'s network namespace: the API server it starts
/// and the clients of the runtime it builds afterwards live there.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// GET `path` from node `i`'s metrics endpoint: (status code, body).
fn http(c: &Cluster, i: usize, path: &str) -> (u16, String) {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/6782 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = c.bed.host(i).run(&["bash", "-c", &script]);
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn routes(c: &Cluster, i: usize) -> String {
    c.bed
        .host(i)
        .run_ok(&["ip", "-4", "route", "show", "table", "26228"])
        .unwrap_or_default()
}

/// A real API server and `n` weft daemons, as both tests start.
struct OnKubernetes {
    c: Cluster,
    runtime: tokio::runtime::Runtime,
    api: fixture::Cluster,
    admin: Client,
    nodes: Api<Node>,
}

/// kube-apiserver and etcd in test-bed host `n` (this thread enters its network namespace:
/// the runtime's clients live there), weft's ServiceAccount, ClusterRole and binding, a
/// Node per weft host (InternalIP its address, podCIDR `pod_cidr(i)`), and `n` daemons
/// launched as that service account with `--kubeconfig --node-name nI --range` and no seed
/// flags, in a full mesh with their spaces.
fn on_kubernetes(n: usize, apiserver: &Path, etcd: &Path) -> OnKubernetes {
    on_kubernetes_launching(n, n, apiserver, etcd)
}

/// [`on_kubernetes`] with Nodes for `n` hosts but daemons launched (from this build) only on
/// the first `launched`: the test runs the others its own way.
fn on_kubernetes_launching(
    n: usize,
    launched: usize,
    apiserver: &Path,
    etcd: &Path,
) -> OnKubernetes {
    let mut c = Cluster::with_bed(TestBed::new(n + 1).expect("test bed"));
    let api_host = c.bed.host(n).name().to_owned();
    let api_ip = c.bed.host(n).underlay_ip();
    enter(&api_host);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut api = fixture::Cluster::start_on(apiserver, etcd, api_ip.into()).expect("API server");
    let admin = runtime
        .block_on(api.client("admin", ADMIN_TOKEN))
        .expect("admin client");
    runtime
        .block_on(api.wait_ready(&admin))
        .expect("API server ready");
    eprintln!(
        "API server ready on {} after {:?}",
        api.url,
        started.elapsed()
    );
    runtime
        .block_on(apply_manifests(&admin))
        .expect("weft's ServiceAccount, ClusterRole and binding");
    let kubeconfig = api.kubeconfig("weft", WEFT_TOKEN).expect("kubeconfig");
    let nodes: Api<Node> = Api::all(admin.clone());
    let all: Vec<usize> = (0..n).collect();
    for &i in &all {
        let ip = c.bed.host(i).public_ip().to_string();
        runtime
            .block_on(nodes.create(
                &PostParams::default(),
                &node(&format!("n{i}"), &ip, &[&pod_cidr(i)]),
            ))
            .expect("create Node");
        c.nodes[i].extra_args = vec![
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--node-name".into(),
            format!("n{i}"),
            "--range".into(),
            RANGE.into(),
        ];
    }
    let launch: Vec<usize> = (0..launched).collect();
    for &i in &launch {
        c.launch(i, &[]);
    }
    c.wait_full_mesh(&launch, GENEROUS);
    c.wait_space(&launch, GENEROUS);
    OnKubernetes {
        c,
        runtime,
        api,
        admin,
        nodes,
    }
}

#[test]
fn weft_daemons_on_a_real_api_server() {
    if !require_root("weft_daemons_on_a_real_api_server") {
        return;
    }
    let Some((apiserver, etcd)) = binaries() else {
        return;
    };
    // Three daemons, no seed flags: the Node list seeds them, the pod CIDRs are their spaces.
    let OnKubernetes {
        mut c,
        runtime,
        mut api,
        admin,
        nodes,
    } = on_kubernetes(3, &apiserver, &etcd);
    for i in 0..3 {
        let status = c.status(i).expect("status");
        assert_eq!(
            status["address_space"],
            serde_json::json!([pod_cidr(i)]),
            "n{i}: {status}"
        );
        // Every other node's pod CIDR is routed here.
        let table = routes(&c, i);
        for j in (0..3).filter(|j| *j != i) {
            assert!(table.contains(&pod_cidr(j)), "n{i} routes {table}");
        }
    }
    let pods: Vec<_> = (0..3).map(|i| c.attach(i, &format!("pod-{i}"))).collect();
    for (i, p) in pods.iter().enumerate() {
        let net: ipnet::Ipv4Net = pod_cidr(i).parse().expect("cidr");
        assert!(net.contains(&p.addr), "{} not in {net}", p.addr);
        assert_ne!(
            p.addr,
            net.network(),
            "the gateway is the prefix's first address"
        );
    }
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        c.wait_ping(&pods[a], &pods[b], GENEROUS);
    }

    // NetworkUnavailable=False on every Node, set by its own weft.
    let deadline = Instant::now() + GENEROUS;
    for i in 0..3 {
        loop {
            let n = runtime
                .block_on(nodes.get(&format!("n{i}")))
                .expect("get Node");
            if status::network_available(&n) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "n{i}: NetworkUnavailable not set: {:?}",
                n.status
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // ... and again when someone resets it.
    runtime
        .block_on(nodes.patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"status": {"conditions": [
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated", "message": "reset"}
            ]}})),
        ))
        .expect("reset the condition");
    c.wait("NetworkUnavailable=False again on n1", GENEROUS, || {
        runtime
            .block_on(nodes.get("n1"))
            .is_ok_and(|n| status::network_available(&n))
    });

    // Watch health in /readyz and /metrics.
    for i in 0..3 {
        assert_eq!(http(&c, i, "/readyz"), (200, "ready\n".into()), "n{i}");
        for kind in ["Node", "Pod", "Namespace", "NetworkPolicy"] {
            let synced = format!("weft_kubernetes_watch_synced{{kind=\"{kind}\"}}");
            assert_eq!(c.metric(i, &synced), Some(1.0), "n{i} {synced}");
        }
    }
    c.assert_no_warnings();

    // The API server goes away: the mesh and the pods keep working, the node stays ready.
    api.stop_apiserver();
    let outage = Instant::now();
    c.wait("the Node watch fails on n0", GENEROUS, || {
        c.metric(0, "weft_kubernetes_watch_failing{kind=\"Node\"}") == Some(1.0)
    });
    let (code, body) = http(&c, 0, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("failing"), "{body}");
    // weft status says so too.
    let status = c.status(0).expect("status");
    let watches = status["kubernetes"]["watches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        watches
            .iter()
            .any(|w| w["kind"] == "Node" && w["failing"] == true && w["synced"] == true),
        "{status}"
    );
    while outage.elapsed() < Duration::from_secs(15) {
        for (a, b) in [(0, 1), (1, 2), (2, 0)] {
            assert!(
                c.ping(&pods[a], pods[b].addr, 1) == 1,
                "pod-{a} -> pod-{b} during the outage"
            );
        }
    }
    // A node restarted while the API server is away starts with the space it had (kept in
    // its state directory) and the members it knew (its journal), and its pod is reachable
    // again; it is not ready until its watches have listed.
    c.kill(1);
    c.start(1);
    for (a, b) in [(0, 1), (1, 2)] {
        c.wait_ping(&pods[a], &pods[b], GENEROUS);
    }
    assert_eq!(
        c.status(1).expect("status")["address_space"],
        serde_json::json!([pod_cidr(1)])
    );
    let (code, body) = http(&c, 1, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not synced"), "{body}");
    // ... and comes back: the watches resume.
    api.start_apiserver().expect("restart the API server");
    runtime
        .block_on(api.wait_ready(&admin))
        .expect("API server back");
    for i in 0..3 {
        c.wait(&format!("n{i}'s watches healthy again"), GENEROUS, || {
            ["Node", "Pod", "Namespace", "NetworkPolicy"]
                .iter()
                .all(|k| {
                    c.metric(i, &format!("weft_kubernetes_watch_failing{{kind=\"{k}\"}}"))
                        == Some(0.0)
                        && c.metric(i, &format!("weft_kubernetes_watch_synced{{kind=\"{k}\"}}"))
                            == Some(1.0)
                })
        });
        c.wait(&format!("n{i} ready"), GENEROUS, || {
            http(&c, i, "/readyz").0 == 200
        });
    }

    // A Node deleted, its weft gone: the others forget it and stop routing its space.
    c.kill(2);
    runtime
        .block_on(nodes.delete("n2", &DeleteParams::default()))
        .expect("delete Node n2");
    for i in 0..2 {
        c.wait(&format!("n{i} forgets n2"), GENEROUS, || {
            c.peer(i, "n2").is_none() && !routes(&c, i).contains(&pod_cidr(2))
        });
    }
    c.wait_ping(&pods[0], &pods[1], GENEROUS);

    // Warnings: only weft's own about the API server's absence (and the 403s of the
    // restarted server before its RBAC cache is filled), and n2's going.
    let unexpected: Vec<String> = c
        .warnings()
        .into_iter()
        .filter(|w| {
            !(w.contains("weft_kube::watch: watch failed")
                || w.contains("the Kubernetes API does not answer")
                || w.contains("member suspected")
                || w.contains("member failed"))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected warnings: {unexpected:#?}"
    );
    drop(api);
}

/// What the issue asks: a pod pair's reachability changes within 2 s of the API change.
const WITHIN: Duration = Duration::from_secs(2);

/// The Pod object kubelet would have made for `pod` (scheduled on its node, its address
/// in the status): created, then its status set, as kubelet does after CNI ADD.
async fn create_pod(
    api: &Api<Pod>,
    pod: &Container,
    name: &str,
    labels: Value,
) -> anyhow::Result<()> {
    let object: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": format!("n{}", pod.node),
            "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": "http", "containerPort": 80}]}]
        }
    }))?;
    api.create(&PostParams::default(), &object).await?;
    let ip = pod.addr.to_string();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await?;
    Ok(())
}

fn relabel<K>(runtime: &tokio::runtime::Runtime, api: &Api<K>, name: &str, labels: Value)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    runtime
        .block_on(api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        ))
        .unwrap_or_else(|e| panic!("relabel {name}: {e}"));
}

/// Waits for `flow` to become `want`, timed from `since` (just after the API call that
/// should change it), and checks it took at most [`WITHIN`]. A closed flow is confirmed
/// with a longer probe, and `control`, which no change here touches, must still pass (so
/// a slow network under load is not taken for a policy).
fn changes_within(
    c: &Cluster,
    what: &str,
    since: Instant,
    flow: flows::Flow,
    want: bool,
    control: flows::Flow,
) {
    let took = until(c, what, since, flow, want);
    eprintln!(
        "{what}: {} after {took:?}",
        if want { "open" } else { "closed" }
    );
    assert!(took <= WITHIN, "{what}: took {took:?}");
    if !want {
        stays_closed(what, flow);
    }
    passes(what, control);
}

/// A flow that must pass (a few tries).
fn passes(what: &str, flow: flows::Flow) {
    let (from, to, proto, port) = flow;
    assert!(
        (0..3).any(|_| reaches(from, to, proto, port, Duration::from_secs(1))),
        "{what}: {} -> {} {proto:?}/{port} is blocked",
        from.id,
        to.id
    );
}

/// One probe, given a second, that must not pass (a flow that stays closed).
fn stays_closed(what: &str, flow: flows::Flow) {
    let (from, to, proto, port) = flow;
    assert!(
        !reaches(from, to, proto, port, Duration::from_secs(1)),
        "{what}: {} -> {} {proto:?}/{port} passes",
        from.id,
        to.id
    );
}

#[test]
fn pods_namespaces_and_network_policies_from_the_api_govern_pod_traffic() {
    let name = "pods_namespaces_and_network_policies_from_the_api_govern_pod_traffic";
    if !require_root(name) {
        return;
    }
    let Some((apiserver, etcd)) = binaries() else {
        return;
    };
    let OnKubernetes {
        mut c,
        runtime,
        api,
        admin,
        nodes: _,
    } = on_kubernetes(2, &apiserver, &etcd);

    // shop/web on n1 (named port http = TCP 80); client/a, client/b and later client/late
    // on n0. The pods are attached by weft; the API says who they are.
    // As weft-cni would from CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME.
    let web = c.attach_with(1, "web", &["--namespace", "shop"]);
    let a = c.attach_with(0, "a", &["--namespace", "client"]);
    let b = c.attach_with(0, "b", &["--namespace", "client"]);
    let late = c.attach_with(0, "late", &["--namespace", "client"]);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let _servers: Vec<_> = [&web, &late]
        .iter()
        .map(|p| serve(p.netns.clone(), p.id.clone(), stop.clone()))
        .collect();
    // No change below touches late's ingress or web's egress.
    let control = (&web, &late, Proto::Tcp, 80);
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["shop", "client"] {
        runtime
            .block_on(namespaces.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace"),
            ))
            .expect("create Namespace");
    }
    let shop_pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    let client_pods: Api<Pod> = Api::namespaced(admin.clone(), "client");
    runtime
        .block_on(create_pod(&shop_pods, &web, "web", json!({"app": "web"})))
        .expect("pod web");
    for (pod, name) in [(&a, "a"), (&b, "b")] {
        runtime
            .block_on(create_pod(&client_pods, pod, name, json!({"app": name})))
            .expect("client pod");
    }
    c.wait_ping(&a, &web, GENEROUS);
    // No policy: everything passes.
    c.wait("a -> web TCP 80 without policy", GENEROUS, || {
        reaches(&a, &web, Proto::Tcp, 80, Duration::from_secs(1))
    });
    assert!(reaches(&b, &web, Proto::Tcp, 80, Duration::from_secs(1)));
    // Every node has the API's lists before the first policy comes.
    for i in 0..2 {
        c.wait(&format!("n{i} has the API's lists"), GENEROUS, || {
            c.weft_policy(i, &["namespace"])
                .is_ok_and(|v| v["namespaces"].get("client").is_some())
        });
    }
    // weft status: the space from the pod CIDR, both Nodes, policy from the API's lists
    // (pods web, a and b), every watch synced and none failing.
    for i in 0..2 {
        let status = c.status(i).expect("status");
        let k = &status["kubernetes"];
        assert_eq!(k["space_from"], "pod CIDR", "n{i}: {status}");
        assert_eq!(k["nodes"], 2, "n{i}: {status}");
        assert_eq!(k["policy_synced"], true, "n{i}: {status}");
        assert_eq!(k["pods"], 3, "n{i}: {status}");
        let watches = k["watches"].as_array().cloned().unwrap_or_default();
        assert_eq!(watches.len(), 4, "n{i}: {status}");
        assert!(
            watches
                .iter()
                .all(|w| w["synced"] == true && w["failing"] == false),
            "n{i}: {status}"
        );
    }

    // A NetworkPolicy created: web accepts TCP "http" only from app=a pods of namespaces
    // labelled team=blue (none yet): a and b are cut off.
    let policies_shop: Api<NetworkPolicy> = Api::namespaced(admin.clone(), "shop");
    let web_policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}},
                          "podSelector": {"matchLabels": {"app": "a"}}}],
                "ports": [{"port": "http", "protocol": "TCP"}]
            }]
        }
    }))
    .expect("policy");
    runtime
        .block_on(policies_shop.create(&PostParams::default(), &web_policy))
        .expect("create NetworkPolicy");
    let t = Instant::now();
    changes_within(
        &c,
        "policy created",
        t,
        (&a, &web, Proto::Tcp, 80),
        false,
        control,
    );
    stays_closed("policy created", (&b, &web, Proto::Tcp, 80));
    // Both nodes' engines have it, from the API; weft policy does not change it there.
    for i in 0..2 {
        c.wait(&format!("n{i} lists the policy"), GENEROUS, || {
            c.weft_policy(i, &["list"]).is_ok_and(|list| {
                list["policies"][0]["name"] == "web"
                    && list["policies"][0]["applied_by"] == "kubernetes"
            })
        });
    }
    let refused = c
        .weft_policy(0, &["delete", "shop/web"])
        .expect_err("delete refused");
    assert!(refused.contains("kubectl"), "{refused}");
    // Anti-spoofing, from the API's pods joined with n0's attachments: b sending with a's
    // address is dropped at n0's bridge and counted.
    // (a's address on b's eth0 for a moment, so that its socket can send from it.)
    let a_addr = format!("{}/32", a.addr);
    let on_b = |verb: &str| {
        c.bed
            .run_ok_in(&b.netns, &["ip", "addr", verb, &a_addr, "dev", "eth0"])
            .unwrap_or_else(|e| panic!("ip addr {verb} in b's namespace: {e}"));
    };
    on_b("add");
    let spoofed = |c: &Cluster| {
        c.weft_policy(0, &["list"])
            .ok()
            .and_then(|l| l["spoofed"].as_u64())
            .unwrap_or(0)
    };
    let before = spoofed(&c);
    flows::in_netns(&b.netns, || {
        let s = std::net::UdpSocket::bind((a.addr, 0)).expect("bind to a's address");
        for _ in 0..5 {
            s.send_to(b"forged", (web.addr, 80)).expect("send");
        }
    });
    c.wait("n0 counts b's forged packets", GENEROUS, || {
        spoofed(&c) >= before + 5
    });
    on_b("del");

    // The namespace labelled team=blue: a is let in (TCP 80 only), b is not.
    relabel(&runtime, &namespaces, "client", json!({"team": "blue"}));
    let t = Instant::now();
    changes_within(
        &c,
        "namespace labelled",
        t,
        (&a, &web, Proto::Tcp, 80),
        true,
        control,
    );
    stays_closed("namespace labelled", (&b, &web, Proto::Tcp, 80));
    stays_closed("namespace labelled", (&a, &web, Proto::Tcp, 81));
    c.wait("why on n0 agrees", GENEROUS, || {
        c.weft_policy(
            0,
            &[
                "why", "--from", "client/a", "--to", "shop/web", "--port", "80/tcp",
            ],
        )
        .is_ok_and(|why| why["why"]["allowed"] == true)
    });

    // Pod b relabelled app=a: let in; back to app=b: cut off again.
    relabel(&runtime, &client_pods, "b", json!({"app": "a"}));
    let t = Instant::now();
    changes_within(
        &c,
        "pod relabelled in",
        t,
        (&b, &web, Proto::Tcp, 80),
        true,
        control,
    );
    relabel(&runtime, &client_pods, "b", json!({"app": "b"}));
    let t = Instant::now();
    changes_within(
        &c,
        "pod relabelled out",
        t,
        (&b, &web, Proto::Tcp, 80),
        false,
        control,
    );

    // A pod the API does not know is a stranger; its Pod created, it is let in.
    stays_closed("unknown pod", (&late, &web, Proto::Tcp, 80));
    runtime
        .block_on(create_pod(&client_pods, &late, "late", json!({"app": "a"})))
        .expect("pod late");
    let t = Instant::now();
    changes_within(
        &c,
        "pod created",
        t,
        (&late, &web, Proto::Tcp, 80),
        true,
        control,
    );

    // Pod a deleted from the API: its address is nobody's, so it is cut off.
    runtime
        .block_on(client_pods.delete(
            "a",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        ))
        .expect("delete pod a");
    let t = Instant::now();
    changes_within(
        &c,
        "pod deleted",
        t,
        (&a, &web, Proto::Tcp, 80),
        false,
        control,
    );

    // The namespace's label removed: late is cut off too.
    runtime
        .block_on(namespaces.patch(
            "client",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": null}}})),
        ))
        .expect("unlabel namespace");
    let t = Instant::now();
    changes_within(
        &c,
        "namespace unlabelled",
        t,
        (&late, &web, Proto::Tcp, 80),
        false,
        control,
    );

    // The policy deleted: everyone is let in again.
    runtime
        .block_on(policies_shop.delete("web", &DeleteParams::default()))
        .expect("delete NetworkPolicy");
    let t = Instant::now();
    changes_within(
        &c,
        "policy deleted",
        t,
        (&b, &web, Proto::Tcp, 80),
        true,
        control,
    );

    // Egress, enforced on n0: app=b pods of client may send nothing.
    let policies_client: Api<NetworkPolicy> = Api::namespaced(admin.clone(), "client");
    let no_egress: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "b-no-egress"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Egress"]}
    }))
    .expect("policy");
    runtime
        .block_on(policies_client.create(&PostParams::default(), &no_egress))
        .expect("create egress NetworkPolicy");
    let t = Instant::now();
    changes_within(
        &c,
        "egress policy created",
        t,
        (&b, &web, Proto::Tcp, 80),
        false,
        control,
    );
    assert!(reaches(&late, &web, Proto::Tcp, 80, Duration::from_secs(1)));
    runtime
        .block_on(policies_client.delete("b-no-egress", &DeleteParams::default()))
        .expect("delete egress NetworkPolicy");
    let t = Instant::now();
    changes_within(
        &c,
        "egress policy deleted",
        t,
        (&b, &web, Proto::Tcp, 80),
        true,
        control,
    );
    c.assert_no_warnings();

    // The policy back; n1's weft stopped (its tables stay in force) while the policy is
    // deleted; started again, it finds no policy in the API and removes the tables it left.
    runtime
        .block_on(policies_shop.create(&PostParams::default(), &web_policy))
        .expect("create NetworkPolicy again");
    let t = Instant::now();
    changes_within(
        &c,
        "policy created again",
        t,
        (&b, &web, Proto::Tcp, 80),
        false,
        control,
    );
    c.kill(1);
    runtime
        .block_on(policies_shop.delete("web", &DeleteParams::default()))
        .expect("delete NetworkPolicy while n1 is down");
    c.start(1);
    until(
        &c,
        "n1 restarted after its policy was deleted",
        Instant::now(),
        (&b, &web, Proto::Tcp, 80),
        true,
    );
    let unexpected: Vec<String> = c
        .warnings()
        .into_iter()
        .filter(|w| !(w.contains("member suspected") || w.contains("member failed")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected warnings: {unexpected:#?}"
    );
    drop(api);
}

#[test]
fn the_image_runs_as_the_daemonset_says_and_carries_pod_traffic() {
    if !require_root("the_image_runs_as_the_daemonset_says_and_carries_pod_traffic") {
        return;
    }
    let Some((apiserver, etcd)) = binaries() else {
        return;
    };
    let Some(archive) = image::archive() else {
        return;
    };
    // Nodes n0, n1, n2; daemons of this build on n0 and n1, the image's on n2.
    let OnKubernetes {
        mut c,
        runtime,
        api,
        admin: _admin,
        nodes,
    } = on_kubernetes_launching(3, 2, &apiserver, &etcd);
    // After the cluster: its containers are removed before the cluster's namespaces.
    let mut podman = image::Podman::new();
    let loading = Instant::now();
    podman.load(&archive);
    eprintln!("image loaded in {:?}", loading.elapsed());
    let i = 2;
    let daemonset = fixture::manifest("weft.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));

    // n2's host paths: the node's files in the cluster's directory; hostPath
    // DirectoryOrCreate makes them 0755, as here.
    let node = &c.nodes[i];
    let base = c.dir.path().join("n2");
    let dir = |p: &Path| {
        std::fs::create_dir_all(p).expect("host path");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p.to_path_buf()
    };
    let state = dir(&node.state_dir);
    let run = dir(node.socket.parent().expect("run dir"));
    let wireguard = dir(node.wg_socket.parent().expect("wireguard dir"));
    let cni_bin = dir(&base.join("opt/cni/bin"));
    let cni_conf = dir(&base.join("etc/cni/net.d"));
    // The Secret volume (key `secret`, mode 0400) and the service account's projection.
    let secret = dir(&base.join("secret-volume"));
    std::fs::copy(&node.secret, secret.join("secret")).expect("secret");
    std::fs::set_permissions(
        secret.join("secret"),
        std::fs::Permissions::from_mode(0o400),
    )
    .expect("chmod secret");
    let account = dir(&base.join("serviceaccount"));
    std::fs::write(account.join("token"), WEFT_TOKEN).expect("token");
    std::fs::copy(api.dir.path().join("ca.pem"), account.join("ca.crt")).expect("ca.crt");
    std::fs::write(account.join("namespace"), "kube-system").expect("namespace");
    let volumes: BTreeMap<&str, PathBuf> = [
        ("secret", secret),
        ("state", state.clone()),
        ("run", run.clone()),
        ("wireguard", wireguard),
        ("tun", PathBuf::from("/dev/net/tun")),
        ("cni-bin", cni_bin.clone()),
        ("cni-conf", cni_conf.clone()),
    ]
    .into_iter()
    .collect();
    let host = c.bed.host(i).name().to_owned();
    let network = format!("ns:/run/netns/{host}");

    // The init container: state directories closed, plugin and conflist installed.
    let init = &pod["initContainers"][0];
    let mut args = vec!["run".to_owned(), "--rm".into()];
    args.extend(image::container_args(
        init,
        &BTreeMap::new(),
        &volumes,
        &network,
    ));
    podman.run_ok(&args);
    for d in [&state, &run] {
        let mode = std::fs::metadata(d).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} after the init container", d.display());
    }
    let plugin = cni_bin.join("weft");
    let mode = std::fs::metadata(&plugin)
        .expect("installed plugin")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the plugin is executable");
    assert_eq!(
        std::fs::read(cni_conf.join("10-weft.conflist")).expect("installed conflist"),
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cni/10-weft.conflist"))
            .expect("deploy/cni/10-weft.conflist"),
    );
    let version = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .expect("run the installed plugin");
    let version: Value = serde_json::from_slice(&version.stdout).expect("VERSION answer");
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("1.1.0"))),
        "{version}"
    );

    // The daemon container. The node has IP forwarding on, as kubeadm's preflight and k3s
    // require (the container's /proc/sys is read-only).
    c.bed
        .host(i)
        .run_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .expect("ip_forward");
    let (api_host, api_port) = api
        .url
        .strip_prefix("https://")
        .and_then(|a| a.rsplit_once(':'))
        .expect("API server URL https://IP:PORT");
    let env: BTreeMap<&str, String> = [
        ("NODE_NAME", "n2".to_owned()),
        ("WEFT_RANGE", RANGE.to_owned()),
        // The ConfigMap's peers: none, the Nodes seed the mesh.
        ("WEFT_PEERS", String::new()),
        ("KUBERNETES_SERVICE_HOST", api_host.to_owned()),
        ("KUBERNETES_SERVICE_PORT", api_port.to_owned()),
    ]
    .into_iter()
    .collect();
    let mut daemon = image::container_args(&pod["containers"][0], &env, &volumes, &network);
    // The service account's token and CA, where kubelet projects them.
    let at = daemon.iter().position(|a| a == image::TAG).expect("image");
    daemon.insert(at, "--volume".into());
    daemon.insert(
        at + 1,
        format!(
            "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            account.display()
        ),
    );
    let log = base.join("daemon.log");
    let name = format!("weft-{host}");
    podman.spawn(&name, &daemon, &log);
    let _print_log = PrintOnPanic(log.clone());

    let all = [0, 1, 2];
    c.wait_full_mesh(&all, GENEROUS);
    c.wait_space(&all, GENEROUS);
    let status = c.status(i).expect("status");
    assert_eq!(status["address_space"], json!([pod_cidr(i)]), "{status}");
    c.wait("n2 ready", GENEROUS, || http(&c, i, "/readyz").0 == 200);
    c.wait("NetworkUnavailable=False on n2", GENEROUS, || {
        runtime
            .block_on(nodes.get("n2"))
            .is_ok_and(|n| status::network_available(&n))
    });

    // A pod attached by the installed plugin with the installed conflist (its socket and
    // state directory are this node's host paths) reaches pods on n0 and n1 and back.
    let conflist: Value = serde_json::from_slice(
        &std::fs::read(cni_conf.join("10-weft.conflist")).expect("conflist"),
    )
    .expect("conflist JSON");
    let mut conf = conflist["plugins"][0].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    conf["apiSocket"] = json!(node_path(&run.join("weft.sock")));
    conf["stateDir"] = json!(node_path(&state));
    let netns = c.bed.container().expect("pod namespace");
    let mut add = Command::new("ip")
        .args(["netns", "exec", &host])
        .arg(&plugin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "image-pod")
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", node_path(&cni_bin))
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=image-pod",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    add.stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write the conf");
    let out = add.wait_with_output().expect("plugin ADD");
    assert!(
        out.status.success(),
        "ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("ADD result");
    let addr: ipnet::Ipv4Net = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"));
    let net: ipnet::Ipv4Net = pod_cidr(i).parse().expect("cidr");
    assert!(net.contains(&addr.addr()), "{addr} not in {net}");
    let on_image = Container {
        netns,
        id: "image-pod".into(),
        node: i,
        addr: addr.addr(),
    };
    for j in [0, 1] {
        let other = c.attach(j, &format!("pod-{j}"));
        c.wait_ping(&on_image, &other, GENEROUS);
        c.wait_ping(&other, &on_image, GENEROUS);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains(" ERROR ") && !text.contains(" WARN "),
        "the image's daemon warned:\n{text}"
    );
    c.assert_no_warnings();
}

fn node_path(p: &Path) -> String {
    p.display().to_string()
}

/// Prints a log file if the test fails.
struct PrintOnPanic(PathBuf);

impl Drop for PrintOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {}\n{}",
                self.0.display(),
                std::fs::read_to_string(&self.0).unwrap_or_default()
            );
        }
    }
}
