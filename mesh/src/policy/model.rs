//! The compiler: policies, pods and namespaces in; the compiled model out, from which both the
//! nftables ruleset ([`super::nft`]) and [`Compiled::why`] are made.
//!
//! The model has the shape of the ruleset:
//! - per policy, the addresses of this node's pods it selects (an nft set) and a drop counter;
//! - per rule, for each peer the addresses it matches (an interval set: pod addresses, or an
//!   ipBlock minus its exceptions), its numbered ports (a `protocol . port` interval set) and
//!   its named ports resolved to `address . protocol . port` of the pods that have them;
//!   every distinct set is made once ([`Compiled::addr_sets`], `port_sets`, `named_sets`),
//!   however many policies use it;
//! - per namespace and direction, one chain with the rules of that namespace's policies;
//! - per direction, a verdict map from each isolated local pod's address to its namespace's
//!   chain. Pods no policy isolates are in no map, so their traffic passes untouched.
//!
//! So the number of rules grows with policies x rules, and pods only add set elements.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ranges::{AddrSet, AddrSetBuilder, Family, Ranges};
use super::spec::{Labels, Peer, Policy, PolicyName, PortMatch, Protocol, Rule};
use crate::{Error, Result};

/// The label every namespace carries with its own name (as Kubernetes sets it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A named container port of a pod (`containerPort` with a `name`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// What the engine knows about one pod of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// The node it runs on (weft's node name).
    pub node: String,
    /// Its host-side interface on that node, if known (kept for the daemon; the rules match
    /// addresses).
    #[serde(default)]
    pub interface: Option<String>,
}

/// A node and its own addresses (traffic from these to the node's own pods is never
/// filtered, as in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

/// Everything the compiler takes.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub policies: Vec<Policy>,
    pub pods: Vec<Pod>,
    /// Namespaces' labels. A namespace that is not here has only the name label
    /// ([`NAMESPACE_NAME_LABEL`]), which every namespace has.
    pub namespaces: BTreeMap<String, Labels>,
    pub nodes: Vec<Node>,
}

/// Which pods the ruleset is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The pods of this node (the ruleset a node loads).
    Node(String),
    /// Every pod, as if all were on one node (for `why` across the cluster).
    Cluster,
}

/// Ingress or egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A policy in the model.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub id: PolicyName,
    /// Addresses of the in-scope pods it selects: an index into [`Compiled::addr_sets`].
    pub selected: usize,
    pub ingress: bool,
    pub egress: bool,
    /// Its named nft counter of dropped packets.
    pub counter: String,
}

/// Numbered ports and ranges, per protocol (an nft `inet_proto . inet_service` set).
pub type PortSet = BTreeMap<Protocol, Ranges>;

/// Named ports resolved on destination pods: (address, protocol, port).
pub type NamedSet = BTreeSet<(IpAddr, Protocol, u16)>;

/// A rule's ports, resolved; indices into the model's interned sets. A port matches if
/// either set has it.
#[derive(Debug, Clone, Default)]
pub struct RulePorts {
    /// Into [`Compiled::port_sets`].
    pub numeric: Option<usize>,
    /// Into [`Compiled::named_sets`]: every pod that could be the destination with one of
    /// the rule's port names (for ingress this node's pods of the policy's namespace, for
    /// egress every pod); the rule's other matches narrow it down.
    pub named: Option<usize>,
}

/// Where a rule comes from: `default/web ingress[0]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: PolicyName,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// A rule in the model.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub origin: RuleRef,
    /// Index of its policy in [`Compiled::policies`].
    pub policy: usize,
    /// `None`: any peer; else indices into [`Compiled::addr_sets`], one per distinct peer
    /// (any of them matches).
    pub peers: Option<Vec<usize>>,
    /// `None`: any port and protocol.
    pub ports: Option<RulePorts>,
}

/// One namespace's chain for one direction.
#[derive(Debug, Clone)]
pub struct Chain {
    pub name: String,
    pub namespace: String,
    pub direction: Direction,
    /// Indices into [`Compiled::rules`], in order.
    pub rules: Vec<usize>,
    /// Indices into [`Compiled::policies`] of the policies that isolate pods in this
    /// direction (their counters count the drops).
    pub policies: Vec<usize>,
}

/// The compiled model of one node's (or the cluster's) policy.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub scope: Scope,
    /// Sorted by namespace and name; the index names the counter.
    pub policies: Vec<CompiledPolicy>,
    pub rules: Vec<CompiledRule>,
    pub chains: Vec<Chain>,
    /// Distinct address sets (the pods a policy selects, the addresses a peer matches): many
    /// policies share them, so each is one nft set however many rules use it.
    pub addr_sets: Vec<AddrSet>,
    pub port_sets: Vec<PortSet>,
    pub named_sets: Vec<NamedSet>,
    /// Isolated in-scope pods' addresses and the chain that decides what they receive.
    pub ingress_map: BTreeMap<IpAddr, usize>,
    /// Likewise for what they send.
    pub egress_map: BTreeMap<IpAddr, usize>,
    /// In-scope pods' host-side interfaces (bridge ports) and the addresses they may send
    /// from: anything else entering the bridge from such a port is dropped (anti-spoofing,
    /// so that a pod cannot borrow an allowed pod's address). Pods without a known interface,
    /// or with a name nft could not take, are not checked.
    pub bindings: BTreeMap<String, Vec<IpAddr>>,
    /// Every pod's addresses: which pod, on which node.
    pub(super) pods_by_addr: BTreeMap<IpAddr, PodRef>,
    /// The addresses of each node.
    pub(super) node_addrs: BTreeMap<String, BTreeSet<IpAddr>>,
    pub(super) pods_by_name: BTreeMap<(String, String), Vec<IpAddr>>,
}

#[derive(Debug, Clone)]
pub(super) struct PodRef {
    namespace: String,
    name: String,
    node: String,
    local: bool,
}

/// One endpoint of a flow for [`Compiled::why`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Pod { namespace: String, name: String },
    Addr(IpAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    /// `NAMESPACE/NAME`, `NAME` (namespace `default`) or an address.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Ok(addr) = s.parse() {
            return Ok(Endpoint::Addr(addr));
        }
        let (namespace, name) = s.split_once('/').unwrap_or(("default", s));
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(format!("{s:?} is neither NAMESPACE/POD nor an address"));
        }
        Ok(Endpoint::Pod {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

/// How one side (the sender's egress or the receiver's ingress) decides a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision", content = "by")]
pub enum Decision {
    /// That end is not a pod in scope: this ruleset does not filter that side.
    NotEnforced,
    /// No policy selects the pod for this direction: allowed.
    NotIsolated,
    /// From the pod's own node: never filtered (as in Kubernetes).
    OwnNode,
    /// A pod to itself: never leaves the pod.
    SamePod,
    /// Allowed by these rules.
    Allowed(Vec<RuleRef>),
    /// Isolated by these policies and none of their rules allows it: dropped.
    Denied(Vec<PolicyName>),
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied(_))
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: Vec<String>| items.join(", ");
        match self {
            Decision::NotEnforced => f.write_str("not a pod on this node: not filtered here"),
            Decision::NotIsolated => f.write_str("allowed: no policy selects the pod"),
            Decision::OwnNode => f.write_str("allowed: from the pod's own node"),
            Decision::SamePod => f.write_str("allowed: a pod to itself"),
            Decision::Allowed(rules) => write!(
                f,
                "allowed by {}",
                list(rules.iter().map(ToString::to_string).collect())
            ),
            Decision::Denied(policies) => write!(
                f,
                "denied: isolated by {} and no rule allows it",
                list(policies.iter().map(ToString::to_string).collect())
            ),
        }
    }
}

/// The verdict for one flow, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Why {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub allowed: bool,
    pub egress: Decision,
    pub ingress: Decision,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} -> {} {}/{}: {}",
            self.src,
            self.dst,
            self.port,
            self.protocol,
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )?;
        writeln!(f, "  egress:  {}", self.egress)?;
        write!(f, "  ingress: {}", self.ingress)
    }
}

// ---------------------------------------------------------------------------------------------

/// An interface name safe to quote in nft text: 1-15 of `[A-Za-z0-9_.-]`.
pub fn is_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The pods of one namespace, with its labels.
struct NamespaceIndex<'a> {
    labels: Labels,
    pods: Vec<&'a Pod>,
}

/// Compiles `cluster` for `scope`. Never fails on valid policies; pods and namespaces are
/// taken as they are (pod labels are only compared, never interpreted).
pub fn compile(cluster: &Cluster, scope: Scope) -> Compiled {
    let in_scope = |pod: &Pod| match &scope {
        Scope::Node(node) => &pod.node == node,
        Scope::Cluster => true,
    };

    // Namespaces: given labels plus the name label; also those only pods or policies name.
    let mut namespaces: BTreeMap<&str, NamespaceIndex> = BTreeMap::new();
    let names = cluster
        .namespaces
        .keys()
        .map(String::as_str)
        .chain(cluster.pods.iter().map(|p| p.namespace.as_str()))
        .chain(cluster.policies.iter().map(|p| p.id.namespace.as_str()));
    for ns in names {
        namespaces.entry(ns).or_insert_with(|| {
            let mut labels = cluster.namespaces.get(ns).cloned().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
            NamespaceIndex {
                labels,
                pods: Vec::new(),
            }
        });
    }
    let mut pods_by_addr = BTreeMap::new();
    let mut pods_by_name = BTreeMap::new();
    for pod in &cluster.pods {
        if let Some(ns) = namespaces.get_mut(pod.namespace.as_str()) {
            ns.pods.push(pod);
        }
        for addr in &pod.addresses {
            pods_by_addr.entry(*addr).or_insert_with(|| PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                node: pod.node.clone(),
                local: in_scope(pod),
            });
        }
        pods_by_name
            .entry((pod.namespace.clone(), pod.name.clone()))
            .or_insert_with(|| pod.addresses.clone());
    }

    let mut policies: Vec<&Policy> = cluster.policies.iter().collect();
    policies.sort_by(|a, b| a.id.cmp(&b.id));
    policies.dedup_by(|a, b| a.id == b.id);

    let mut compiled = Compiled {
        scope: scope.clone(),
        policies: Vec::new(),
        rules: Vec::new(),
        chains: Vec::new(),
        addr_sets: Vec::new(),
        port_sets: Vec::new(),
        named_sets: Vec::new(),
        bindings: cluster
            .pods
            .iter()
            .filter(|p| in_scope(p))
            .filter_map(|p| {
                let name = p.interface.as_ref()?;
                is_ifname(name).then(|| (name.clone(), p.addresses.clone()))
            })
            .collect(),
        ingress_map: BTreeMap::new(),
        egress_map: BTreeMap::new(),
        pods_by_addr,
        node_addrs: cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.addresses.iter().copied().collect()))
            .collect(),
        pods_by_name,
    };
    let mut chain_of: BTreeMap<(String, Direction), usize> = BTreeMap::new();
    let mut interner = Interner::default();

    for (index, policy) in policies.iter().enumerate() {
        let ns = &policy.id.namespace;
        let selected_pods: Vec<&Pod> = namespaces
            .get(ns.as_str())
            .map(|n| n.pods.as_slice())
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|p| in_scope(p) && policy.pod_selector.matches(&p.labels))
            .collect();
        let mut selected = AddrSetBuilder::default();
        for pod in &selected_pods {
            for addr in &pod.addresses {
                selected.add_addr(addr);
            }
        }
        let selected = interner.addr(&mut compiled.addr_sets, selected.build());
        compiled.policies.push(CompiledPolicy {
            id: policy.id.clone(),
            selected,
            ingress: policy.ingress.is_some(),
            egress: policy.egress.is_some(),
            counter: format!("drops_{index}"),
        });
        for (direction, rules) in [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ] {
            let Some(rules) = rules else { continue };
            let next = compiled.chains.len();
            let chain = *chain_of.entry((ns.clone(), direction)).or_insert(next);
            if chain == next {
                let prefix = match direction {
                    Direction::Ingress => "in",
                    Direction::Egress => "eg",
                };
                compiled.chains.push(Chain {
                    name: format!("{prefix}_{}", compiled.chains.len()),
                    namespace: ns.clone(),
                    direction,
                    rules: Vec::new(),
                    policies: Vec::new(),
                });
            }
            compiled.chains[chain].policies.push(index);
            for pod in &selected_pods {
                let map = match direction {
                    Direction::Ingress => &mut compiled.ingress_map,
                    Direction::Egress => &mut compiled.egress_map,
                };
                for addr in &pod.addresses {
                    map.insert(*addr, chain);
                }
            }
            for (i, rule) in rules.iter().enumerate() {
                let compiled_rule = compile_rule(
                    rule,
                    RuleRef {
                        policy: policy.id.clone(),
                        direction,
                        index: i,
                    },
                    index,
                    &namespaces,
                    &cluster.pods,
                    &in_scope,
                    &mut interner,
                    &mut compiled,
                );
                compiled.chains[chain].rules.push(compiled.rules.len());
                compiled.rules.push(compiled_rule);
            }
        }
    }
    compiled
}

/// Named ports of a rule: direction, namespace (ingress only), (name, protocol) pairs.
type NamedKey = (Direction, String, Vec<(String, Protocol)>);

/// Gives each distinct set one index; memoises peers' address sets per (namespace, peer)
/// and named-port sets per (direction, namespace, names).
#[derive(Default)]
struct Interner {
    addr: HashMap<AddrSet, usize>,
    ports: HashMap<PortSet, usize>,
    named: HashMap<NamedSet, usize>,
    peers: HashMap<(String, String), usize>,
    named_by_key: HashMap<NamedKey, usize>,
}

impl Interner {
    fn addr(&mut self, sets: &mut Vec<AddrSet>, set: AddrSet) -> usize {
        *self.addr.entry(set.clone()).or_insert_with(|| {
            sets.push(set);
            sets.len() - 1
        })
    }
}

fn peer_set(
    peer: &Peer,
    namespace: &str,
    namespaces: &BTreeMap<&str, NamespaceIndex>,
    interner: &mut Interner,
    sets: &mut Vec<AddrSet>,
) -> usize {
    let key = match peer {
        // Pod peers depend on the policy's namespace; blocks do not.
        Peer::Pods { .. } => (namespace.to_owned(), format!("{peer:?}")),
        Peer::IpBlock { .. } => (String::new(), format!("{peer:?}")),
    };
    if let Some(&index) = interner.peers.get(&key) {
        return index;
    }
    let set = match peer {
        Peer::IpBlock { cidr, except } => AddrSet::block(cidr, except),
        Peer::Pods {
            pods,
            namespaces: ns_selector,
        } => {
            let mut builder = AddrSetBuilder::default();
            for (name, ns) in namespaces {
                let ns_ok = match ns_selector {
                    None => *name == namespace,
                    Some(sel) => sel.matches(&ns.labels),
                };
                if !ns_ok {
                    continue;
                }
                for pod in &ns.pods {
                    if pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels)) {
                        for addr in &pod.addresses {
                            builder.add_addr(addr);
                        }
                    }
                }
            }
            builder.build()
        }
    };
    let index = interner.addr(sets, set);
    interner.peers.insert(key, index);
    index
}

#[allow(clippy::too_many_arguments)]
fn compile_rule(
    rule: &Rule,
    origin: RuleRef,
    policy: usize,
    namespaces: &BTreeMap<&str, NamespaceIndex>,
    all_pods: &[Pod],
    in_scope: &dyn Fn(&Pod) -> bool,
    interner: &mut Interner,
    compiled: &mut Compiled,
) -> CompiledRule {
    let namespace = origin.policy.namespace.clone();
    let peers = rule.peers.as_ref().map(|peers| {
        let mut indices: Vec<usize> = peers
            .iter()
            .map(|peer| {
                peer_set(
                    peer,
                    &namespace,
                    namespaces,
                    interner,
                    &mut compiled.addr_sets,
                )
            })
            .collect();
        indices.sort_unstable();
        indices.dedup();
        indices
    });
    let ports = rule.ports.as_ref().map(|specs| {
        let mut numeric: BTreeMap<Protocol, Vec<(u128, u128)>> = BTreeMap::new();
        let mut names: Vec<(String, Protocol)> = Vec::new();
        for spec in specs {
            match &spec.port {
                PortMatch::Any => numeric.entry(spec.protocol).or_default().push((0, 65535)),
                PortMatch::Range(a, b) => numeric
                    .entry(spec.protocol)
                    .or_default()
                    .push(((*a).into(), (*b).into())),
                PortMatch::Named(name) => names.push((name.clone(), spec.protocol)),
            }
        }
        let numeric = (!numeric.is_empty()).then(|| {
            let set: PortSet = numeric
                .into_iter()
                .map(|(p, r)| (p, Ranges::from_unsorted(r)))
                .collect();
            *interner.ports.entry(set.clone()).or_insert_with(|| {
                compiled.port_sets.push(set);
                compiled.port_sets.len() - 1
            })
        });
        let named = (!names.is_empty()).then(|| {
            names.sort();
            names.dedup();
            // Resolved on the destination: for ingress this node's pods of the policy's
            // namespace (the rule also matches the selected pods), for egress every pod.
            let scope_ns = match origin.direction {
                Direction::Ingress => namespace.clone(),
                Direction::Egress => String::new(),
            };
            let key = (origin.direction, scope_ns, names.clone());
            if let Some(&index) = interner.named_by_key.get(&key) {
                return index;
            }
            let mut set = NamedSet::new();
            for pod in all_pods {
                if origin.direction == Direction::Ingress
                    && (pod.namespace != namespace || !in_scope(pod))
                {
                    continue;
                }
                for p in &pod.ports {
                    if names
                        .iter()
                        .any(|(n, proto)| n == &p.name && *proto == p.protocol)
                    {
                        for addr in &pod.addresses {
                            set.insert((*addr, p.protocol, p.port));
                        }
                    }
                }
            }
            let index = *interner.named.entry(set.clone()).or_insert_with(|| {
                compiled.named_sets.push(set);
                compiled.named_sets.len() - 1
            });
            interner.named_by_key.insert(key, index);
            index
        });
        RulePorts { numeric, named }
    });
    CompiledRule {
        origin,
        policy,
        peers,
        ports,
    }
}

impl Compiled {
    /// The verdict for a flow between two endpoints (pods by name, or addresses). A pod is
    /// taken by its address of the family the other end has (IPv4 first).
    pub fn why(
        &self,
        from: &Endpoint,
        to: &Endpoint,
        protocol: Protocol,
        port: u16,
    ) -> Result<Why> {
        let addrs = |e: &Endpoint| -> Result<Vec<IpAddr>> {
            match e {
                Endpoint::Addr(a) => Ok(vec![*a]),
                Endpoint::Pod { namespace, name } => self
                    .pods_by_name
                    .get(&(namespace.clone(), name.clone()))
                    .cloned()
                    .ok_or_else(|| {
                        Error::InvalidConfig(format!("no pod {namespace}/{name} is known"))
                    }),
            }
        };
        let (src, dst) = (addrs(from)?, addrs(to)?);
        for family in Family::BOTH {
            let s = src.iter().find(|a| Family::of(a) == family);
            let d = dst.iter().find(|a| Family::of(a) == family);
            if let (Some(s), Some(d)) = (s, d) {
                return Ok(self.why_addr(*s, *d, protocol, port));
            }
        }
        Err(Error::InvalidConfig(
            "the two ends have no address family in common".into(),
        ))
    }

    /// The verdict for a flow from `src` to `dst` (`protocol`, destination `port`), as the
    /// ruleset decides a new connection: the sender's egress, then the receiver's ingress.
    pub fn why_addr(&self, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> Why {
        let same_pod = match (self.pods_by_addr.get(&src), self.pods_by_addr.get(&dst)) {
            (Some(a), Some(b)) => a.namespace == b.namespace && a.name == b.name,
            _ => false,
        };
        let egress = if same_pod {
            Decision::SamePod
        } else {
            self.decide(Direction::Egress, src, dst, protocol, port)
        };
        let from_own_node = self.pods_by_addr.get(&dst).is_some_and(|pod| {
            self.node_addrs
                .get(&pod.node)
                .is_some_and(|addrs| addrs.contains(&src))
        });
        let ingress = if same_pod {
            Decision::SamePod
        } else if from_own_node && self.pods_by_addr.get(&dst).is_some_and(|p| p.local) {
            Decision::OwnNode
        } else {
            self.decide(Direction::Ingress, src, dst, protocol, port)
        };
        Why {
            src,
            dst,
            protocol,
            port,
            allowed: egress.allows() && ingress.allows(),
            egress,
            ingress,
        }
    }

    fn decide(
        &self,
        direction: Direction,
        src: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Decision {
        let (own, other, map) = match direction {
            Direction::Egress => (src, dst, &self.egress_map),
            Direction::Ingress => (dst, src, &self.ingress_map),
        };
        if !self.pods_by_addr.get(&own).is_some_and(|p| p.local) {
            return Decision::NotEnforced;
        }
        let Some(&chain) = map.get(&own) else {
            return Decision::NotIsolated;
        };
        let chain = &self.chains[chain];
        let allowed: Vec<RuleRef> = chain
            .rules
            .iter()
            .map(|&r| &self.rules[r])
            .filter(|rule| {
                self.addr_sets[self.policies[rule.policy].selected].contains(&own)
                    && rule
                        .peers
                        .as_ref()
                        .is_none_or(|p| p.iter().any(|&s| self.addr_sets[s].contains(&other)))
                    && rule.ports.as_ref().is_none_or(|p| {
                        p.numeric.is_some_and(|s| {
                            self.port_sets[s]
                                .get(&protocol)
                                .is_some_and(|r| r.contains(port.into()))
                        }) || p
                            .named
                            .is_some_and(|s| self.named_sets[s].contains(&(dst, protocol, port)))
                    })
            })
            .map(|rule| rule.origin.clone())
            .collect();
        if allowed.is_empty() {
            Decision::Denied(
                chain
                    .policies
                    .iter()
                    .map(|&p| &self.policies[p])
                    .filter(|p| self.addr_sets[p.selected].contains(&own))
                    .map(|p| p.id.clone())
                    .collect(),
            )
        } else {
            Decision::Allowed(allowed)
        }
    }

    /// Which policy each named counter belongs to.
    pub fn counters(&self) -> impl Iterator<Item = (&str, &PolicyName)> {
        self.policies.iter().map(|p| (p.counter.as_str(), &p.id))
    }
}
