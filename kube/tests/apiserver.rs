//! weft-kube against a real API server: kube-apiserver 1.20.2 built from Debian's source
//! package (tests/kube/build-apiserver.sh) on Debian's etcd 3.4, both started here on
//! loopback with random ports, generated certificates, a generated service-account key and
//! static tokens.
//!
//! The watchers run as the DaemonSet's own service account (a static token for
//! `system:serviceaccount:kube-system:weft`) with only the ClusterRole and binding from
//! deploy/kubernetes/weft.yaml applied, so the RBAC rules there are what is tested.
//!
//! Without the binaries the tests print why and pass; with `WEFT_REQUIRE_KUBE=1` (CI) they
//! fail instead. `WEFT_KUBE_APISERVER` and `WEFT_ETCD` override where the binaries are.

#[path = "../../tests/kube/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fixture::{apply_manifests, binaries, eventually, node, Cluster, ADMIN_TOKEN, WEFT_TOKEN};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use weft_kube::model;
use weft_kube::status;
use weft_kube::watch::Watchers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_follow_a_real_api_server_with_weft_rbac() -> anyhow::Result<()> {
    let Some((apiserver, etcd)) = binaries() else {
        return Ok(());
    };
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("weft_kube=debug")
        .try_init();
    let started = Instant::now();
    let mut cluster = Cluster::start(&apiserver, &etcd)?;
    let admin = cluster.client("admin", ADMIN_TOKEN).await?;
    cluster.wait_ready(&admin).await?;
    eprintln!("API server ready after {:?}", started.elapsed());

    apply_manifests(&admin).await?;
    let weft = cluster.client("weft", WEFT_TOKEN).await?;

    // What the manifests' ClusterRole does not grant is refused.
    let weft_nodes: Api<Node> = Api::all(weft.clone());
    let denied = weft_nodes
        .create(&PostParams::default(), &node("intruder", "192.0.2.99", &[]))
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{denied:?}"
    );
    let denied = Api::<ConfigMap>::all(weft.clone())
        .list(&Default::default())
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{denied:?}"
    );

    let watchers = Watchers::start(weft.clone());
    eventually("all four watches synced", || watchers.ready(Instant::now())).await;

    // Nodes: addresses as seeds, podCIDRs as the nodes' spaces.
    let nodes: Api<Node> = Api::all(admin.clone());
    let pp = PostParams::default();
    nodes
        .create(&pp, &node("n1", "192.0.2.1", &["10.244.1.0/24"]))
        .await?;
    nodes
        .create(
            &pp,
            &node("n2", "192.0.2.2", &["10.244.2.0/24", "fd00:10:244:2::/64"]),
        )
        .await?;
    nodes.create(&pp, &node("n3", "192.0.2.3", &[])).await?;
    let seeds_of =
        |name: &str| model::seeds(watchers.nodes.state().iter().map(|n| &**n), name, 6783);
    let addr = |s: &str| -> SocketAddr { s.parse().expect("addr") };
    eventually("n1 sees n2 and n3 as seeds", || {
        seeds_of("n1") == [addr("192.0.2.2:6783"), addr("192.0.2.3:6783")]
    })
    .await;
    let cidrs = |name: &str| {
        watchers
            .nodes
            .state()
            .iter()
            .find(|n| n.name_any() == name)
            .map(|n| model::pod_cidrs(n).expect("valid pod CIDRs"))
    };
    assert_eq!(cidrs("n1"), Some(vec!["10.244.1.0/24".parse()?]));
    assert_eq!(
        cidrs("n2"),
        Some(vec![
            "10.244.2.0/24".parse()?,
            "fd00:10:244:2::/64".parse()?
        ])
    );
    assert_eq!(cidrs("n3"), Some(vec![]));

    // The NetworkUnavailable condition, patched as weft: set to False, the kubelet's Ready
    // condition left alone.
    let patched = status::set_network_available(weft.clone(), "n1").await?;
    assert!(status::network_available(&patched));
    let n1 = nodes.get("n1").await?;
    assert!(status::network_available(&n1));
    let conditions: BTreeMap<String, String> = n1
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert_eq!(conditions["Ready"], "True", "{conditions:?}");
    assert_eq!(conditions.len(), 2, "{conditions:?}");
    // ... but the Node itself is not weft's to change.
    let denied = weft_nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{denied:?}"
    );

    // A deleted Node is gone from the store and the seeds.
    nodes.delete("n2", &DeleteParams::default()).await?;
    eventually("n2 gone", || seeds_of("n1") == [addr("192.0.2.3:6783")]).await;
    eventually("n2 gone from the store", || cidrs("n2").is_none()).await;

    // Namespaces and Pods: labels, IPs and named ports; relabelling reaches the store.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": "shop", "labels": {"team": "a"}}}),
            )?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    pods.create(
        &pp,
        &serde_json::from_value(json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "web", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}]
            }
        }))?,
    )
    .await?;
    pods.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}})),
    )
    .await?;
    let identity = |name: &str| {
        watchers
            .pods
            .state()
            .iter()
            .filter_map(|p| model::pod_identity(p))
            .find(|p| p.namespace == "shop" && p.name == name)
    };
    eventually("the pod's IP reaches the store", || {
        identity("web")
            .is_some_and(|p| p.ips == ["10.244.1.5".parse::<std::net::IpAddr>().expect("ip")])
    })
    .await;
    let web = identity("web").expect("web");
    assert_eq!(web.node.as_deref(), Some("n1"));
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(web.ports.len(), 1);
    assert_eq!(
        (web.ports[0].name.as_str(), web.ports[0].port),
        ("http", 8080)
    );
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "shop"}}})),
    )
    .await?;
    eventually("relabelled pod", || {
        identity("web").is_some_and(|p| p.labels.get("app").map(String::as_str) == Some("shop"))
    })
    .await;
    namespaces
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
        )
        .await?;
    eventually("relabelled namespace", || {
        watchers
            .namespaces
            .state()
            .iter()
            .filter_map(|n| model::namespace_identity(n))
            .any(|n| n.name == "shop" && n.labels.get("team").map(String::as_str) == Some("b"))
    })
    .await;

    // NetworkPolicies arrive as the objects that were applied.
    let policies: Api<NetworkPolicy> = Api::namespaced(admin.clone(), "shop");
    policies
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "web-from-team-a"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "shop"}},
                    "ingress": [{
                        "from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}],
                        "ports": [{"port": "http", "protocol": "TCP"}]
                    }]
                }
            }))?,
        )
        .await?;
    eventually("the policy reaches the store", || {
        watchers.policies.state().iter().any(|p| {
            let raw = model::policy_object(p);
            raw["metadata"]["name"] == "web-from-team-a"
                && raw["spec"]["ingress"][0]["ports"][0]["port"] == "http"
                && raw["metadata"].get("managedFields").is_none()
        })
    })
    .await;
    policies
        .delete("web-from-team-a", &DeleteParams::default())
        .await?;
    eventually("the policy is gone", || {
        watchers.policies.state().is_empty()
    })
    .await;

    // A deleted pod is gone.
    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    eventually("the pod is gone", || identity("web").is_none()).await;

    let health = watchers.health(Instant::now());
    for h in &health {
        assert!(h.healthy() && h.errors == 0 && h.lists == 1, "{h:?}");
    }

    // The API server goes away: the stores keep what they had, the watches fail and retry.
    cluster.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        seeds_of("n1"),
        [addr("192.0.2.3:6783")],
        "stores keep their state"
    );
    // ... and come back: the watches resume and see what changed meanwhile.
    cluster.start_apiserver()?;
    cluster.wait_ready(&admin).await?;
    nodes
        .create(&pp, &node("n4", "192.0.2.4", &["10.244.4.0/24"]))
        .await?;
    // kube's backoff is at most 30 s between attempts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seeds_of("n1") != [addr("192.0.2.3:6783"), addr("192.0.2.4:6783")] {
        assert!(
            Instant::now() < deadline,
            "the watch did not resume: {:?}",
            watchers.health(Instant::now())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let nodes_health = &watchers.health(Instant::now())[0];
    assert!(nodes_health.healthy(), "{nodes_health:?}");
    // The restarted API server's watch cache starts at the current revision: a watch asking
    // for an older one (the Namespace watch's last event is older than the Node and Pod
    // writes since) gets 410 Gone, lists again and goes on from there.
    namespaces
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "c"}}})),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !watchers
        .namespaces
        .state()
        .iter()
        .filter_map(|n| model::namespace_identity(n))
        .any(|n| n.name == "shop" && n.labels.get("team").map(String::as_str) == Some("c"))
    {
        assert!(
            Instant::now() < deadline,
            "the namespace watch did not resume: {:?}",
            watchers.health(Instant::now())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = watchers.health(Instant::now());
    eprintln!("health after the restart: {health:?}");
    let ns_health = &health[2];
    assert_eq!(ns_health.kind, "Namespace");
    assert!(
        ns_health.lists >= 2 && ns_health.errors >= 1,
        "no relist after 410: {ns_health:?}"
    );
    assert!(health.iter().all(|h| h.synced), "{health:?}");
    Ok(())
}
