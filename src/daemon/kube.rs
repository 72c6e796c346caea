//! `weft launch` on Kubernetes, at the edge: the watchers (weft-kube) run here on tokio, and
//! what the node needs from them goes into the sans-IO node as inputs
//! ([`ClusterNodes`] through the driver); the decisions are the node's (`node::kube`).
//!
//! - At start: the Node list and this Node decide the node's address space ([`choose_space`]:
//!   its pod CIDR, or weft's allocator), remembered in the state directory
//!   ([`SPACE_FILE`]) so that a restart while the API server is away starts as before.
//! - While running: every change of the Node store becomes a [`ClusterNodes`] input (seeds,
//!   names; a name gone is a deleted Node), and once the node is ready its Node gets
//!   `NetworkUnavailable=False` (again if someone resets it).
//! - The watches' health goes to /readyz and /metrics ([`Kubernetes::health`]).
//! - The Pod, Namespace and NetworkPolicy stores are the policy engine's inputs: once all
//!   three have listed, every change becomes a [`KubePolicy`] input ([`kube_policy`] maps
//!   them; a burst goes on at most every 100 ms), which the node publishes to the policy
//!   reconciler instead of what `weft policy` and gossip give on plain hosts. While the
//!   API server is away the last lists stay.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use weft_kube::k8s_openapi::api::core::v1::{Namespace, Node as KubeNode, Pod};
use weft_kube::k8s_openapi::api::networking::v1::NetworkPolicy;
use weft_kube::kube::Client;
use weft_kube::watch::Watchers;
use weft_kube::{model, status};
use weft_mesh::policy;

use super::api::{Query, Request, Response};
use super::config::{IpamMode, KubeSettings};
use super::metrics::KubeHealth;
use super::node::{ClusterNodes, KubePolicy};

/// The file in the state directory that remembers the address space chosen at the last
/// start on Kubernetes: the pod CIDR, or `weft`.
pub const SPACE_FILE: &str = "kube-space";
/// How long a start waits for the API server before it goes on with what [`SPACE_FILE`]
/// says (without that file it waits on: there is nothing to go on with).
const START_WAIT: Duration = Duration::from_secs(10);
/// How long a start waits for this Node to show up in a complete Node list.
const OWN_NODE_WAIT: Duration = Duration::from_secs(60);
/// How long the policy feed pauses after handing inputs on (a rollout is a burst of Pod
/// events: the node recompiles at most about ten times a second, not once per event).
const POLICY_SETTLE: Duration = Duration::from_millis(100);
/// The watches the policy engine's inputs come from.
const POLICY_KINDS: [&str; 3] = ["Pod", "Namespace", "NetworkPolicy"];
/// How often readiness is checked for the `NetworkUnavailable` condition.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The least time between two patches of the condition (the store may lag a patch).
const PATCH_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// The watchers and the client; dropping it stops the watchers.
pub struct Kubernetes {
    watchers: Arc<Watchers>,
    client: Client,
    node_name: String,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// A client (kubeconfig or in-cluster) and the four watchers, started.
    pub async fn connect(settings: &KubeSettings) -> anyhow::Result<Self> {
        let client = weft_kube::client::client(settings.kubeconfig.as_deref())
            .await
            .context("Kubernetes client (--kubeconfig, or the in-cluster service account)")?;
        let watchers = Arc::new(Watchers::start(client.clone()));
        info!(node = %settings.node_name, "watching Kubernetes Nodes, Pods, Namespaces and NetworkPolicies");
        Ok(Kubernetes {
            watchers,
            client,
            node_name: settings.node_name.clone(),
        })
    }

    /// Hands the policy engine's inputs to the node whenever the Pods, Namespaces or
    /// NetworkPolicies change (once all three have listed); ends when the receiver does.
    /// Each NetworkPolicy the engine refuses is logged once (per reason).
    pub fn spawn_policy_feed(&self) -> (mpsc::Receiver<KubePolicy>, JoinHandle<()>) {
        let own = self.node_name.clone();
        let mut logged = BTreeSet::new();
        spawn_feed(
            Arc::clone(&self.watchers),
            &POLICY_KINDS,
            POLICY_SETTLE,
            1,
            move |watchers| {
                let inputs = kube_policy(
                    &own,
                    watchers.pods.state().iter().map(|p| &**p),
                    watchers.namespaces.state().iter().map(|n| &**n),
                    watchers.policies.state().iter().map(|p| &**p),
                );
                for why in &inputs.refused {
                    if logged.insert(why.clone()) {
                        warn!(policy = %why, "a NetworkPolicy weft cannot take: the pods it selects are isolated with nothing allowed");
                    }
                }
                logged.retain(|why| inputs.refused.contains(why));
                inputs
            },
        )
    }

    /// The watches' health, for /readyz and /metrics.
    pub fn health(&self) -> KubeHealth {
        let watchers = Arc::clone(&self.watchers);
        Arc::new(move || watchers.health(Instant::now()))
    }

    fn nodes_synced(&self) -> bool {
        self.watchers
            .health(Instant::now())
            .first()
            .is_some_and(|h| h.synced)
    }

    fn own_node(&self) -> Option<Arc<KubeNode>> {
        self.watchers
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()))
    }

    /// The address space this node runs with: the Node's pod CIDR (`Some`) or weft's
    /// allocator (`None`), by `mode`, once the Node list has this Node. If the API server
    /// does not answer within [`START_WAIT`], what the last start chose (in `state_dir`).
    pub async fn choose_space(
        &self,
        mode: IpamMode,
        range: Ipv4Net,
        state_dir: &Path,
    ) -> anyhow::Result<Option<Ipv4Net>> {
        let started = Instant::now();
        let remembered = read_space_file(state_dir)?;
        let mut said = Instant::now();
        loop {
            if self.nodes_synced() {
                if let Some(node) = self.own_node() {
                    let cidrs = model::pod_cidrs(&node)?;
                    let space = choose_space(mode, &cidrs, range)?;
                    write_space_file(state_dir, space)?;
                    match space {
                        Some(s) => {
                            info!(node = %self.node_name, pod_cidr = %s, "this Node's pod CIDR is its address space")
                        }
                        None => {
                            info!(node = %self.node_name, "address space from weft's allocator")
                        }
                    }
                    return Ok(space);
                }
                if started.elapsed() > OWN_NODE_WAIT {
                    bail!(
                        "no Node {:?} in the Kubernetes API after {}s: give the Node's name with --node-name (NODE_NAME)",
                        self.node_name,
                        OWN_NODE_WAIT.as_secs()
                    );
                }
            } else if started.elapsed() > START_WAIT {
                if let Some(space) = remembered {
                    warn!(
                        node = %self.node_name,
                        space = %space.map_or("weft".to_string(), |s| s.to_string()),
                        "the Kubernetes API does not answer: starting with the address space of the last start (the watches keep trying)"
                    );
                    return Ok(space);
                }
            }
            if said.elapsed() > Duration::from_secs(10) {
                info!(node = %self.node_name, health = ?self.watchers.health(Instant::now()), "waiting for the Kubernetes Node list");
                said = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Hands the Node list to the node whenever it changes (once listed); ends when the
    /// receiver does.
    pub fn spawn_node_feed(&self, port: u16) -> (mpsc::Receiver<ClusterNodes>, JoinHandle<()>) {
        let own = self.node_name.clone();
        spawn_feed(
            Arc::clone(&self.watchers),
            &["Node"],
            Duration::ZERO,
            4,
            move |watchers| {
                let state = watchers.nodes.state();
                cluster_nodes(state.iter().map(|n| &**n), &own, port)
            },
        )
    }

    /// Sets `NetworkUnavailable=False` on this Node whenever the node is ready and the
    /// Node does not say so (at first, and again if it is reset).
    pub fn spawn_status(&self, queries: mpsc::Sender<Query>) -> JoinHandle<()> {
        let watchers = Arc::clone(&self.watchers);
        let client = self.client.clone();
        let name = self.node_name.clone();
        tokio::spawn(async move {
            let mut last_patch: Option<Instant> = None;
            let mut last_error: Option<String> = None;
            loop {
                tokio::time::sleep(STATUS_EVERY).await;
                if !node_ready(&queries).await {
                    continue;
                }
                let Some(node) = watchers
                    .nodes
                    .state()
                    .into_iter()
                    .find(|n| n.metadata.name.as_deref() == Some(name.as_str()))
                else {
                    continue;
                };
                if status::network_available(&node) {
                    continue;
                }
                if last_patch.is_some_and(|t| t.elapsed() < PATCH_AGAIN_AFTER) {
                    continue;
                }
                last_patch = Some(Instant::now());
                match status::set_network_available(client.clone(), &name).await {
                    Ok(_) => {
                        info!(node = %name, "set the Node's NetworkUnavailable condition to False");
                        last_error = None;
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if last_error.as_ref() != Some(&e) {
                            warn!(node = %name, error = %e, "cannot set the Node's NetworkUnavailable condition; retrying");
                            last_error = Some(e);
                        }
                    }
                }
            }
        })
    }
}

/// The loop of the feeds: whenever a store changes, once every watch of `kinds` has listed,
/// `inputs` is made from the stores and sent if it differs from what was sent last; after a
/// send it pauses `settle`, so the rest of a burst of changes goes on together (the change
/// signal keeps them). Ends when the receiver does.
fn spawn_feed<T, F>(
    watchers: Arc<Watchers>,
    kinds: &'static [&'static str],
    settle: Duration,
    capacity: usize,
    mut inputs: F,
) -> (mpsc::Receiver<T>, JoinHandle<()>)
where
    T: PartialEq + Clone + Send + 'static,
    F: FnMut(&Watchers) -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::spawn(async move {
        let mut changes = watchers.changes();
        let mut last: Option<T> = None;
        loop {
            let listed = watchers
                .health(Instant::now())
                .iter()
                .filter(|h| kinds.contains(&h.kind))
                .all(|h| h.synced);
            if listed {
                let next = inputs(&watchers);
                if last.as_ref() != Some(&next) {
                    last = Some(next.clone());
                    if tx.send(next).await.is_err() {
                        return;
                    }
                    if !settle.is_zero() {
                        tokio::time::sleep(settle).await;
                    }
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// Whether the node says it is ready (joined, space, datapath in line).
async fn node_ready(queries: &mpsc::Sender<Query>) -> bool {
    let (reply, answer) = oneshot::channel();
    if queries
        .send(Query {
            request: Request::Status,
            reply,
        })
        .await
        .is_err()
    {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(5), answer).await,
        Ok(Ok(Response::Status { status, .. })) if status.ready
    )
}

/// The node's input from the Node list: every other Node's address with the gossip `port`
/// as a seed, and every Node's name.
pub fn cluster_nodes<'a>(
    nodes: impl IntoIterator<Item = &'a KubeNode> + Clone,
    own: &str,
    port: u16,
) -> ClusterNodes {
    ClusterNodes {
        seeds: model::seeds(nodes.clone(), own, port),
        names: nodes
            .into_iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .filter_map(|n| n.metadata.name.clone())
            .collect(),
    }
}

/// The policy engine's inputs from the API's objects, for node `own`:
/// - every NetworkPolicy, checked as `weft policy apply` checks one; one the engine cannot
///   take is named in `refused` and enforced as denying everything to the pods it selects
///   ([`deny_all_in_place_of`]): the API server accepted it, so its pods are meant to be
///   isolated, and leaving it out would open them;
/// - every Pod that is scheduled, has addresses, is not on the host's network and has not
///   finished, with labels and named ports; a terminating Pod (deletion under way) keeps
///   only addresses no other Pod claims (its sandbox may be gone and its address another's);
/// - every Namespace's labels.
pub fn kube_policy<'a>(
    own: &str,
    pods: impl IntoIterator<Item = &'a Pod>,
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    policies: impl IntoIterator<Item = &'a NetworkPolicy>,
) -> KubePolicy {
    let mut out = KubePolicy {
        node: own.to_owned(),
        ..KubePolicy::default()
    };
    for p in policies {
        let raw = model::policy_object(p);
        let name = format!(
            "{}/{}",
            raw["metadata"]["namespace"].as_str().unwrap_or("?"),
            raw["metadata"]["name"].as_str().unwrap_or("?")
        );
        let checked = serde_json::from_value::<policy::NetworkPolicy>(raw.clone())
            .map_err(|e| e.to_string())
            .and_then(|o| policy::Policy::from_object(o, "default").map_err(|e| e.to_string()));
        match checked {
            Ok(p) => out.policies.push(p),
            Err(e) => {
                out.refused.push(format!("{name}: {e}"));
                out.policies.extend(deny_all_in_place_of(&raw));
            }
        }
    }
    out.policies.sort_by(|a, b| a.id.cmp(&b.id));
    let pods: Vec<(&Pod, model::PodIdentity)> = pods
        .into_iter()
        .filter_map(|p| Some((p, model::pod_identity(p)?)))
        .filter(|(_, id)| id.node.is_some() && !id.host_network && !id.ips.is_empty())
        .collect();
    let live: BTreeSet<std::net::IpAddr> = pods
        .iter()
        .filter(|(p, _)| p.metadata.deletion_timestamp.is_none())
        .flat_map(|(_, id)| id.ips.iter().copied())
        .collect();
    for (pod, mut id) in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            id.ips.retain(|ip| !live.contains(ip));
            if id.ips.is_empty() {
                continue;
            }
        }
        let Some(node) = id.node else {
            continue;
        };
        let ports = id
            .ports
            .into_iter()
            .filter_map(|p| {
                let protocol = match p.protocol.as_str() {
                    "TCP" => policy::Protocol::Tcp,
                    "UDP" => policy::Protocol::Udp,
                    "SCTP" => policy::Protocol::Sctp,
                    _ => return None,
                };
                Some(policy::NamedPort {
                    name: p.name,
                    port: p.port,
                    protocol,
                })
            })
            .collect();
        out.pods.push(policy::Pod {
            namespace: id.namespace,
            name: id.name,
            labels: id.labels,
            addresses: id.ips,
            ports,
            node,
            interface: None,
        });
    }
    out.pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for ns in namespaces {
        if let Some(n) = model::namespace_identity(ns) {
            out.namespaces.insert(n.name, n.labels);
        }
    }
    out
}

/// What is enforced in place of a NetworkPolicy the engine refused: the same pods (its pod
/// selector, or the whole namespace if that is what it cannot take) isolated in the same
/// directions (its policy types, or both if those are what it cannot take), with no rule
/// that lets anything in or out. Fails closed, as the policy meant its pods to be isolated.
fn deny_all_in_place_of(raw: &serde_json::Value) -> Option<policy::Policy> {
    let spec = &raw["spec"];
    let types = match spec.get("policyTypes") {
        Some(t) => t.clone(),
        None if spec.get("egress").is_some() => serde_json::json!(["Ingress", "Egress"]),
        None => serde_json::json!(["Ingress"]),
    };
    let both = serde_json::json!(["Ingress", "Egress"]);
    let all_pods = serde_json::json!({});
    let selector = spec
        .get("podSelector")
        .cloned()
        .unwrap_or_else(|| all_pods.clone());
    [
        (selector.clone(), types),
        (selector, both.clone()),
        (all_pods, both),
    ]
    .into_iter()
        .find_map(|(selector, types)| {
            let object = serde_json::json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": raw["metadata"]["name"], "namespace": raw["metadata"]["namespace"]},
                "spec": {"podSelector": selector, "policyTypes": types}
            });
            let object = serde_json::from_value::<policy::NetworkPolicy>(object).ok()?;
            policy::Policy::from_object(object, "default").ok()
        })
}

/// The node's address space by `mode` from its Node's pod CIDRs: the IPv4 one (weft's
/// pod addresses are IPv4), which must lie in the cluster `range`; `None` is weft's own
/// allocator.
pub fn choose_space(
    mode: IpamMode,
    pod_cidrs: &[IpNet],
    range: Ipv4Net,
) -> anyhow::Result<Option<Ipv4Net>> {
    let v4 = pod_cidrs.iter().find_map(|n| match n {
        IpNet::V4(v4) => Some(*v4),
        IpNet::V6(_) => None,
    });
    let space = match (mode, v4) {
        (IpamMode::Weft, _) | (IpamMode::Auto, None) => return Ok(None),
        (IpamMode::Kube, None) => bail!(
            "--ipam kube: the Node has no IPv4 pod CIDR (spec.podCIDRs {pod_cidrs:?}); is the controller manager's --allocate-node-cidrs on?"
        ),
        (_, Some(space)) => space,
    };
    if !range.contains(&space) {
        bail!(
            "the Node's pod CIDR {space} is outside the cluster range {range}: give --range the cluster's pod CIDR (kube-controller-manager --cluster-cidr)"
        );
    }
    if !(8..=30).contains(&space.prefix_len()) {
        bail!("the Node's pod CIDR {space}: weft needs a prefix of /8 to /30");
    }
    Ok(Some(space))
}

fn read_space_file(state_dir: &Path) -> anyhow::Result<Option<Option<Ipv4Net>>> {
    let path = state_dir.join(SPACE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match text.trim() {
        "weft" => Ok(Some(None)),
        cidr => cidr.parse().map(|c| Some(Some(c))).with_context(|| {
            format!(
                "{}: {cidr:?} is neither a CIDR nor \"weft\"",
                path.display()
            )
        }),
    }
}

fn write_space_file(state_dir: &Path, space: Option<Ipv4Net>) -> anyhow::Result<()> {
    let path = state_dir.join(SPACE_FILE);
    let text = space.map_or("weft".to_string(), |s| s.to_string());
    if read_space_file(state_dir).ok().flatten() == Some(space) {
        return Ok(());
    }
    let tmp = state_dir.join(format!(".{SPACE_FILE}.tmp"));
    std::fs::write(&tmp, format!("{text}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_kube::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn the_space_follows_the_mode_and_must_lie_in_the_range() {
        let range: Ipv4Net = "10.244.0.0/16".parse().expect("range");
        let cidrs = [net("fd00:10:244:1::/64"), net("10.244.1.0/24")];
        let kube = Some("10.244.1.0/24".parse().expect("net"));
        assert_eq!(
            choose_space(IpamMode::Auto, &cidrs, range).expect("auto"),
            kube
        );
        assert_eq!(
            choose_space(IpamMode::Kube, &cidrs, range).expect("kube"),
            kube
        );
        assert_eq!(
            choose_space(IpamMode::Weft, &cidrs, range).expect("weft"),
            None
        );
        assert_eq!(
            choose_space(IpamMode::Auto, &[], range).expect("none"),
            None
        );
        let err = choose_space(IpamMode::Kube, &[net("fd00::/64")], range).expect_err("no v4");
        assert!(err.to_string().contains("no IPv4 pod CIDR"), "{err}");
        let err = choose_space(IpamMode::Auto, &[net("10.32.1.0/24")], range).expect_err("outside");
        assert!(err.to_string().contains("--range"), "{err}");
        assert!(choose_space(IpamMode::Auto, &[net("10.244.1.0/31")], range).is_err());
    }

    #[test]
    fn the_node_list_gives_seeds_and_names_but_not_nodes_being_deleted() {
        let node = |name: &str, ip: &str| -> KubeNode {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
            }))
            .expect("node")
        };
        let mut going = node("c", "192.0.2.3");
        going.metadata.deletion_timestamp =
            Some(Time(weft_kube::k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let nodes = [node("a", "192.0.2.1"), node("b", "192.0.2.2"), going];
        let got = cluster_nodes(nodes.iter(), "a", 6783);
        assert_eq!(got.seeds, ["192.0.2.2:6783".parse().expect("addr")]);
        assert_eq!(
            got.names.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    /// Fuzz target: NetworkPolicies from the API, built from arbitrary strings where the
    /// API has them (selector labels and expressions, policy types, ports and protocols,
    /// CIDRs) and from raw JSON: no panic, and a policy is either taken as it is or refused
    /// with a deny-all of the same name in its place, never dropped (fail closed)
    /// (`cargo bolero test --bin weft daemon::kube::tests::fuzz_network_policies`).
    #[test]
    fn fuzz_network_policies() {
        use serde_json::json;
        bolero::check!()
            .with_type::<(
                Vec<(String, String)>,
                Vec<String>,
                Vec<(u16, String)>,
                Vec<String>,
                Vec<u8>,
            )>()
            .for_each(|(labels, types, ports, cidrs, raw)| {
                let match_labels: serde_json::Map<_, _> = labels
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                let expressions: Vec<_> = labels
                    .iter()
                    .map(|(k, op)| json!({"key": k, "operator": op, "values": [k]}))
                    .collect();
                let ports: Vec<_> = ports
                    .iter()
                    .map(|(n, proto)| {
                        let port = if n % 2 == 0 { json!(n / 2) } else { json!(proto) };
                        json!({"port": port, "protocol": proto})
                    })
                    .collect();
                let mut peers: Vec<_> = cidrs
                    .iter()
                    .map(|c| json!({"ipBlock": {"cidr": c, "except": [c]}}))
                    .collect();
                peers.push(json!({"podSelector": {"matchExpressions": expressions.clone()}}));
                let rule = json!([{"from": peers, "to": peers, "ports": ports}]);
                let built = json!({
                    "metadata": {"name": "fuzzed", "namespace": "shop"},
                    "spec": {
                        "podSelector": {"matchLabels": match_labels, "matchExpressions": expressions},
                        "policyTypes": types,
                        "ingress": rule,
                        "egress": rule
                    }
                });
                let built: NetworkPolicy =
                    serde_json::from_value(built).expect("the API's shape");
                let mut objects = vec![built];
                objects.extend(serde_json::from_slice::<NetworkPolicy>(raw).ok());
                let out = kube_policy("n1", [], [], objects.iter());
                assert!(out.policies.len() <= objects.len());
                assert!(out.refused.len() <= objects.len());
                let taken = out
                    .policies
                    .iter()
                    .find(|p| p.id.namespace == "shop" && p.id.name == "fuzzed")
                    .expect("the built policy, or a deny-all in its place");
                if out.refused.iter().any(|r| r.starts_with("shop/fuzzed: ")) {
                    let denies = |rules: &Option<Vec<_>>| rules.as_ref().is_none_or(Vec::is_empty);
                    assert!(denies(&taken.ingress) && denies(&taken.egress), "{taken:?}");
                    assert!(taken.ingress.is_some() || taken.egress.is_some(), "{taken:?}");
                }
            });
    }

    #[test]
    fn pods_namespaces_and_policies_become_the_policy_engines_inputs() {
        let pod = |name: &str, extra: serde_json::Value| -> Pod {
            let mut v = serde_json::json!({
                "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "odd", "containerPort": 7, "protocol": "XTP"}
                ]}]},
                "status": {"phase": "Running", "podIP": "10.244.1.5"}
            });
            merge(&mut v, extra);
            serde_json::from_value(v).expect("pod")
        };
        fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
            match (a, b) {
                (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                    for (k, v) in b {
                        merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
                (a, b) => *a = b,
            }
        }
        let pods = [
            pod("web", serde_json::json!({})),
            pod("host", serde_json::json!({"spec": {"hostNetwork": true}})),
            pod("pending", serde_json::json!({"spec": {"nodeName": null}})),
            pod("no-ip", serde_json::json!({"status": {"podIP": null}})),
            pod(
                "done",
                serde_json::json!({"status": {"phase": "Succeeded"}}),
            ),
            // Terminating: its address is web's now, so it keeps none and is left out ...
            pod(
                "old",
                serde_json::json!({"metadata": {"deletionTimestamp": "2026-12-03T10:00:00Z"}}),
            ),
            // ... while one whose address nobody else has still counts.
            pod(
                "going",
                serde_json::json!({"metadata": {"deletionTimestamp": "2026-12-03T10:00:00Z"},
                    "status": {"podIP": "10.244.1.9"}}),
            ),
        ];
        let namespaces: Vec<Namespace> = vec![serde_json::from_value(
            serde_json::json!({"metadata": {"name": "shop", "labels": {"team": "a"}}}),
        )
        .expect("namespace")];
        let policy = |name: &str, types: &str| -> NetworkPolicy {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop", "uid": "u", "resourceVersion": "7",
                    "managedFields": [{"manager": "kubectl"}]},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": [types],
                    "ingress": [{"ports": [{"port": "http"}]}]}
            }))
            .expect("policy")
        };
        let policies = [policy("web", "Ingress"), policy("odd", "Sideways")];
        let got = kube_policy("n1", &pods, &namespaces, &policies);
        assert_eq!(got.node, "n1");
        let names: Vec<&str> = got.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["going", "web"],
            "only scheduled pods with addresses, on weft, not claiming a live pod's address"
        );
        let web = &got.pods[1];
        assert_eq!(web.node, "n1");
        assert_eq!(
            web.addresses,
            ["10.244.1.5".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert_eq!(web.labels["app"], "web");
        let ports: Vec<(&str, u16, policy::Protocol)> = web
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("dns", 53, policy::Protocol::Udp),
                ("http", 8080, policy::Protocol::Tcp)
            ]
        );
        assert_eq!(got.namespaces["shop"]["team"], "a");
        // The refused policy is enforced as deny-all for its pods, both ways (its types are
        // what could not be taken).
        let ids: Vec<String> = got.policies.iter().map(|p| p.id.to_string()).collect();
        assert_eq!(ids, ["shop/odd", "shop/web"]);
        let odd = &got.policies[0];
        assert_eq!(odd.ingress.as_deref().map(<[_]>::len), Some(0), "{odd:?}");
        assert_eq!(odd.egress.as_deref().map(<[_]>::len), Some(0), "{odd:?}");
        assert_eq!(got.refused.len(), 1);
        assert!(
            got.refused[0].starts_with("shop/odd: "),
            "{:?}",
            got.refused
        );
        assert!(got.refused[0].contains("policyTypes"), "{:?}", got.refused);
        // An ingress-only policy weft cannot take stays ingress-only, with its selector.
        let mut ingress_only = policy("late", "Ingress");
        ingress_only.spec.as_mut().expect("spec").ingress = Some(vec![serde_json::from_value(
            serde_json::json!({"ports": [{"port": 80, "endPort": 70}]}),
        )
        .expect("rule")]);
        let got = kube_policy("n1", &pods, &namespaces, &[ingress_only]);
        assert_eq!(got.refused.len(), 1, "{:?}", got.refused);
        let late = &got.policies[0];
        assert_eq!(late.ingress.as_deref().map(<[_]>::len), Some(0), "{late:?}");
        assert!(late.egress.is_none(), "{late:?}");
    }

    #[test]
    fn the_space_file_remembers_the_choice() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_space_file(dir.path()).expect("read"), None);
        write_space_file(dir.path(), None).expect("write");
        assert_eq!(read_space_file(dir.path()).expect("read"), Some(None));
        let s: Ipv4Net = "10.244.3.0/24".parse().expect("net");
        write_space_file(dir.path(), Some(s)).expect("write");
        assert_eq!(read_space_file(dir.path()).expect("read"), Some(Some(s)));
        std::fs::write(dir.path().join(SPACE_FILE), "banana").expect("write");
        assert!(read_space_file(dir.path()).is_err());
    }
}
