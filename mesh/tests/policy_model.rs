//! The compiled policy model against a reference evaluator of the NetworkPolicy spec written
//! here, independently of the compiler: it reads the API objects (`NetworkPolicy`, the serde
//! types) itself, applies the defaults itself and matches selectors itself. Random policies,
//! labels, pods and named ports; every flow between every pair of endpoints (pods on two
//! nodes, the nodes, an outside address) on several ports and the three protocols.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use weft_mesh::policy::spec::{
    EgressRule, IngressRule, IntOrString, IpBlock, LabelSelector, LabelSelectorRequirement,
    NetworkPolicySpec, ObjectMeta, PolicyPeer, PolicyPort,
};
use weft_mesh::policy::{
    self, Cluster, Decision, NamedPort, NetworkPolicy, Node, Pod, Protocol, Scope,
};

type Labels = BTreeMap<String, String>;

// ---------------------------------------------------------------------------------------------
// The reference evaluator: the spec, read literally.

#[derive(Debug, Clone)]
struct World {
    policies: Vec<NetworkPolicy>,
    pods: Vec<Pod>,
    namespaces: BTreeMap<String, Labels>,
    nodes: Vec<Node>,
}

fn selects(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for req in sel.match_expressions.iter().flatten() {
        let has = labels.get(&req.key);
        let values = req.values.clone().unwrap_or_default();
        let ok = match req.operator.as_str() {
            "In" => matches!(has, Some(v) if values.contains(v)),
            "NotIn" => !matches!(has, Some(v) if values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            other => panic!("generator made operator {other}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (base, len) = cidr.split_once('/').expect("cidr");
    let base: IpAddr = base.parse().expect("address");
    let len: u32 = len.parse().expect("length");
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl World {
    fn pod_at(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods.iter().find(|p| p.addresses.contains(&ip))
    }

    fn ns_labels(&self, ns: &str) -> Labels {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        l
    }

    fn types(p: &NetworkPolicy) -> (bool, bool) {
        let spec = p.spec.as_ref().expect("spec");
        match &spec.policy_types {
            Some(t) if !t.is_empty() => (
                t.iter().any(|t| t == "Ingress"),
                t.iter().any(|t| t == "Egress"),
            ),
            _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
        }
    }

    fn ns_of(p: &NetworkPolicy) -> &str {
        p.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn peer_matches(&self, peer: &PolicyPeer, policy_ns: &str, ip: IpAddr) -> bool {
        if let Some(block) = &peer.ip_block {
            return in_cidr(ip, &block.cidr)
                && !block.except.iter().flatten().any(|e| in_cidr(ip, e));
        }
        let Some(pod) = self.pod_at(ip) else {
            return false;
        };
        let ns_ok = match &peer.namespace_selector {
            None => pod.namespace == policy_ns,
            Some(sel) => selects(sel, &self.ns_labels(&pod.namespace)),
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(sel) => selects(sel, &pod.labels),
        };
        ns_ok && pod_ok
    }

    fn port_matches(&self, pp: &PolicyPort, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        let want = match pp.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => panic!("generator made protocol {other}"),
        };
        if want != proto {
            return false;
        }
        match &pp.port {
            None => true,
            Some(IntOrString::Int(n)) => match pp.end_port {
                None => i64::from(port) == *n,
                Some(e) => *n <= i64::from(port) && i64::from(port) <= e,
            },
            Some(IntOrString::String(name)) => self.pod_at(dst).is_some_and(|pod| {
                pod.ports
                    .iter()
                    .any(|np| &np.name == name && np.protocol == proto && np.port == port)
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rule_allows(
        &self,
        peers: Option<&Vec<PolicyPeer>>,
        ports: Option<&Vec<PolicyPort>>,
        policy_ns: &str,
        other: IpAddr,
        dst: IpAddr,
        proto: Protocol,
        port: u16,
    ) -> bool {
        let peer_ok = match peers {
            None => true,
            Some(list) if list.is_empty() => true,
            Some(list) => list.iter().any(|p| self.peer_matches(p, policy_ns, other)),
        };
        let port_ok = match ports {
            None => true,
            Some(list) if list.is_empty() => true,
            Some(list) => list
                .iter()
                .any(|pp| self.port_matches(pp, dst, proto, port)),
        };
        peer_ok && port_ok
    }

    /// (egress allows, ingress allows), for a pod set "in scope" by `local`.
    fn verdict(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: Protocol,
        port: u16,
        local: &dyn Fn(&Pod) -> bool,
    ) -> (bool, bool) {
        let (sp, dp) = (self.pod_at(src), self.pod_at(dst));
        if let (Some(a), Some(b)) = (sp, dp) {
            if a.namespace == b.namespace && a.name == b.name {
                return (true, true);
            }
        }
        let egress = match sp {
            Some(pod) if local(pod) => {
                let isolating: Vec<&NetworkPolicy> = self
                    .policies
                    .iter()
                    .filter(|p| Self::ns_of(p) == pod.namespace)
                    .filter(|p| {
                        selects(
                            p.spec
                                .as_ref()
                                .and_then(|s| s.pod_selector.as_ref())
                                .expect("sel"),
                            &pod.labels,
                        )
                    })
                    .filter(|p| Self::types(p).1)
                    .collect();
                isolating.is_empty()
                    || isolating.iter().any(|p| {
                        p.spec
                            .as_ref()
                            .and_then(|s| s.egress.as_ref())
                            .into_iter()
                            .flatten()
                            .any(|r| {
                                self.rule_allows(
                                    r.to.as_ref(),
                                    r.ports.as_ref(),
                                    Self::ns_of(p),
                                    dst,
                                    dst,
                                    proto,
                                    port,
                                )
                            })
                    })
            }
            _ => true,
        };
        let ingress = match dp {
            Some(pod) if local(pod) => {
                let own_node = self
                    .nodes
                    .iter()
                    .any(|n| n.name == pod.node && n.addresses.contains(&src));
                let isolating: Vec<&NetworkPolicy> = self
                    .policies
                    .iter()
                    .filter(|p| Self::ns_of(p) == pod.namespace)
                    .filter(|p| {
                        selects(
                            p.spec
                                .as_ref()
                                .and_then(|s| s.pod_selector.as_ref())
                                .expect("sel"),
                            &pod.labels,
                        )
                    })
                    .filter(|p| Self::types(p).0)
                    .collect();
                own_node
                    || isolating.is_empty()
                    || isolating.iter().any(|p| {
                        p.spec
                            .as_ref()
                            .and_then(|s| s.ingress.as_ref())
                            .into_iter()
                            .flatten()
                            .any(|r| {
                                self.rule_allows(
                                    r.from.as_ref(),
                                    r.ports.as_ref(),
                                    Self::ns_of(p),
                                    src,
                                    dst,
                                    proto,
                                    port,
                                )
                            })
                    })
            }
            _ => true,
        };
        (egress, ingress)
    }
}

// ---------------------------------------------------------------------------------------------
// Generators: small vocabularies so that selectors often match and often do not.

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const NODES: [&str; 2] = ["n1", "n2"];

fn label_map(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        proptest::sample::select(keys).prop_map(str::to_owned),
        proptest::sample::select(values).prop_map(str::to_owned),
        0..3,
    )
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let req = (
        proptest::sample::select(&["app", "tier", "ns"][..]),
        0..4usize,
        proptest::collection::btree_set(
            proptest::sample::select(&["a", "b", "web", "1"][..]),
            1..3,
        ),
    )
        .prop_map(|(key, op, values)| {
            let operator = ["In", "NotIn", "Exists", "DoesNotExist"][op];
            LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: (op < 2).then(|| values.into_iter().map(str::to_owned).collect()),
            }
        });
    (
        proptest::option::of(label_map(&["app", "tier", "ns"], &["a", "b", "web", "1"])),
        proptest::option::of(proptest::collection::vec(req, 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn peer() -> impl Strategy<Value = PolicyPeer> {
    let block = (0..6usize, any::<bool>()).prop_map(|(c, with_except)| {
        let (cidr, except) = [
            ("10.0.0.0/24", "10.0.0.4/30"),
            ("10.0.0.0/28", "10.0.0.8/29"),
            ("0.0.0.0/0", "10.0.0.0/29"),
            ("192.0.2.0/24", "192.0.2.1/32"),
            ("fd00::/64", "fd00::2/127"),
            ("203.0.113.0/24", "203.0.113.5/32"),
        ][c];
        IpBlock {
            cidr: cidr.into(),
            except: with_except.then(|| vec![except.into()]),
        }
    });
    prop_oneof![
        selector().prop_map(|s| PolicyPeer {
            pod_selector: Some(s),
            ..Default::default()
        }),
        selector().prop_map(|s| PolicyPeer {
            namespace_selector: Some(s),
            ..Default::default()
        }),
        (selector(), selector()).prop_map(|(p, n)| PolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ..Default::default()
        }),
        block.prop_map(|b| PolicyPeer {
            ip_block: Some(b),
            ..Default::default()
        }),
    ]
}

fn port() -> impl Strategy<Value = PolicyPort> {
    let protocol = proptest::option::of(proptest::sample::select(&["TCP", "UDP", "SCTP"][..]));
    let which = prop_oneof![
        Just((None, None)),
        proptest::sample::select(&[53i64, 80, 81, 8080][..])
            .prop_map(|p| (Some(IntOrString::Int(p)), None)),
        Just((Some(IntOrString::Int(80)), Some(81))),
        Just((Some(IntOrString::Int(50)), Some(8080))),
        proptest::sample::select(&["http", "dns", "metrics"][..])
            .prop_map(|n| (Some(IntOrString::String(n.into())), None)),
    ];
    (protocol, which).prop_map(|(protocol, (port, end_port))| PolicyPort {
        protocol: protocol.map(str::to_owned),
        port,
        end_port,
    })
}

fn peers() -> impl Strategy<Value = Option<Vec<PolicyPeer>>> {
    proptest::option::of(proptest::collection::vec(peer(), 0..3))
}

fn ports() -> impl Strategy<Value = Option<Vec<PolicyPort>>> {
    proptest::option::of(proptest::collection::vec(port(), 0..3))
}

fn network_policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    let types = proptest::option::of(proptest::sample::select(vec![
        vec![],
        vec!["Ingress"],
        vec!["Egress"],
        vec!["Ingress", "Egress"],
        vec!["Egress", "Ingress"],
    ]));
    (
        proptest::sample::select(&NAMESPACES[..]),
        selector(),
        types,
        proptest::option::of(proptest::collection::vec(
            (peers(), ports()).prop_map(|(from, ports)| IngressRule { from, ports }),
            0..3,
        )),
        proptest::option::of(proptest::collection::vec(
            (peers(), ports()).prop_map(|(to, ports)| EgressRule { to, ports }),
            0..3,
        )),
    )
        .prop_map(
            move |(ns, pod_selector, types, ingress, egress)| NetworkPolicy {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("NetworkPolicy".into()),
                metadata: ObjectMeta {
                    name: Some(format!("p{i}")),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(pod_selector),
                    policy_types: types.map(|t| t.into_iter().map(str::to_owned).collect()),
                    ingress,
                    egress,
                }),
                status: None,
            },
        )
}

fn pods() -> impl Strategy<Value = Vec<Pod>> {
    let one = (
        proptest::sample::select(&NAMESPACES[..]),
        label_map(&["app", "tier"], &["a", "b", "web", "1"]),
        proptest::sample::select(&NODES[..]),
        any::<bool>(),
        proptest::collection::vec(0..5usize, 0..3),
    );
    proptest::collection::vec(one, 1..8).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (ns, labels, node, v6, ports))| {
                let mut addresses = vec![format!("10.0.0.{}", i + 1).parse().expect("address")];
                if v6 {
                    addresses.push(format!("fd00::{}", i + 1).parse().expect("address"));
                }
                let table = [
                    ("http", 80, Protocol::Tcp),
                    ("http", 8080, Protocol::Tcp),
                    ("dns", 53, Protocol::Udp),
                    ("dns", 53, Protocol::Tcp),
                    ("metrics", 81, Protocol::Sctp),
                ];
                let mut named: Vec<NamedPort> = Vec::new();
                for p in ports {
                    let (name, port, protocol) = table[p];
                    // A pod has at most one port of a name and protocol.
                    if named
                        .iter()
                        .all(|n| n.name != name || n.protocol != protocol)
                    {
                        named.push(NamedPort {
                            name: name.into(),
                            port,
                            protocol,
                        });
                    }
                }
                Pod {
                    namespace: ns.into(),
                    name: format!("pod{i}"),
                    labels,
                    addresses,
                    ports: named,
                    node: node.into(),
                    interface: (i % 2 == 0).then(|| format!("vw{i}")),
                }
            })
            .collect()
    })
}

fn world() -> impl Strategy<Value = World> {
    let policies = (0..5usize).prop_flat_map(|n| (0..n).map(network_policy).collect::<Vec<_>>());
    let namespaces = proptest::collection::btree_map(
        proptest::sample::select(&NAMESPACES[..]).prop_map(str::to_owned),
        label_map(&["ns", "app"], &["a", "b", "web", "1"]),
        0..3,
    );
    (policies, pods(), namespaces).prop_map(|(policies, pods, namespaces)| World {
        policies,
        pods,
        namespaces,
        nodes: vec![
            Node {
                name: "n1".into(),
                addresses: vec!["192.0.2.1".parse().expect("address")],
            },
            Node {
                name: "n2".into(),
                addresses: vec!["192.0.2.2".parse().expect("address")],
            },
        ],
    })
}

/// Parses the policies from YAML, as the daemon would get them.
fn cluster_of(w: &World) -> Cluster {
    let yaml: Vec<String> = w
        .policies
        .iter()
        .map(|p| serde_yaml::to_string(p).expect("serialise"))
        .collect();
    let policies =
        policy::parse(&yaml.join("---\n"), "default").expect("generated policies are valid");
    assert_eq!(policies.len(), w.policies.len());
    Cluster {
        policies,
        pods: w.pods.clone(),
        namespaces: w.namespaces.clone(),
        nodes: w.nodes.clone(),
    }
}

fn endpoints(w: &World) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = w.pods.iter().flat_map(|p| p.addresses.clone()).collect();
    all.extend(
        [
            "192.0.2.1",
            "192.0.2.2",
            "203.0.113.5",
            "203.0.113.6",
            "fd00::99",
        ]
        .iter()
        .map(|a| a.parse::<IpAddr>().expect("address")),
    );
    all
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Cluster scope (every pod in scope): the model's egress and ingress decisions, and so
    /// its verdict, equal the reference's for every flow.
    #[test]
    fn compiled_model_agrees_with_reference(w in world()) {
        let cluster = cluster_of(&w);
        let model = policy::compile(&cluster, Scope::Cluster);
        for &src in &endpoints(&w) {
            for &dst in &endpoints(&w) {
                if (src.is_ipv4()) != (dst.is_ipv4()) || src == dst {
                    continue;
                }
                for proto in Protocol::ALL {
                    for port in [53u16, 80, 81, 8080, 9999] {
                        let why = model.why_addr(src, dst, proto, port);
                        let (e, i) = w.verdict(src, dst, proto, port, &|_| true);
                        prop_assert_eq!(why.egress.allows(), e, "egress {}", why);
                        prop_assert_eq!(why.ingress.allows(), i, "ingress {}", why);
                        prop_assert_eq!(why.allowed, e && i, "{}", why);
                        // What decides is named: an allowed isolated side names its rules,
                        // a denied side the policies that isolate the pod.
                        match (&why.egress, &why.ingress) {
                            (Decision::Allowed(r), _) | (_, Decision::Allowed(r)) => prop_assert!(!r.is_empty()),
                            _ => {}
                        }
                        if let Decision::Denied(p) = &why.ingress {
                            prop_assert!(!p.is_empty());
                        }
                    }
                }
            }
        }
    }

    /// Per node: each node's ruleset decides its own pods' side, and a flow gets through
    /// exactly when both nodes' rulesets let it.
    #[test]
    fn node_rulesets_together_agree_with_reference(w in world()) {
        let cluster = cluster_of(&w);
        let models: Vec<_> = NODES.iter().map(|n| (n, policy::compile(&cluster, Scope::Node((*n).into())))).collect();
        for &src in &endpoints(&w) {
            for &dst in &endpoints(&w) {
                if (src.is_ipv4()) != (dst.is_ipv4()) || src == dst {
                    continue;
                }
                for proto in Protocol::ALL {
                    for port in [53u16, 80, 8080] {
                        let mut all = true;
                        for (node, model) in &models {
                            let why = model.why_addr(src, dst, proto, port);
                            let (e, i) = w.verdict(src, dst, proto, port, &|p: &Pod| p.node == **node);
                            prop_assert_eq!(why.egress.allows(), e, "{} egress {}", node, why);
                            prop_assert_eq!(why.ingress.allows(), i, "{} ingress {}", node, why);
                            all &= why.allowed;
                        }
                        let (e, i) = w.verdict(src, dst, proto, port, &|_| true);
                        prop_assert_eq!(all, e && i);
                    }
                }
            }
        }
    }

    /// Rules grow with policies, not with pods: the same policies over 10x the pods give the
    /// same number of rules or fewer (a rule is left out only when no pod it could concern
    /// has an address of that family).
    #[test]
    fn rule_count_does_not_grow_with_pods(w in world()) {
        let cluster = cluster_of(&w);
        let (_, small) = policy::nft::render(&policy::compile(&cluster, Scope::Cluster));
        let mut big = cluster.clone();
        for k in 0..10u32 {
            for (i, pod) in cluster.pods.iter().enumerate() {
                let mut p = pod.clone();
                p.name = format!("{}-{k}", p.name);
                p.addresses = vec![format!("10.1.{k}.{}", i + 1).parse().expect("address"),
                                   format!("fd00:1::{k}:{}", i + 1).parse().expect("address")];
                big.pods.push(p);
            }
        }
        let (_, large) = policy::nft::render(&policy::compile(&big, Scope::Cluster));
        // Base chains; per policy counters (2 families x 2 directions) and chain drops; per
        // rule one line per family, peer and kind of port.
        let peers = |p: &Option<Vec<_>>| p.as_ref().map_or(1, |v: &Vec<_>| v.len().max(1));
        let bound = 15 + 6 * w.policies.len()
            + w.policies.iter().map(|p| {
                let s = p.spec.as_ref().expect("spec");
                s.ingress.iter().flatten().map(|r| 4 * peers(&r.from)).sum::<usize>()
                    + s.egress.iter().flatten().map(|r| 4 * peers(&r.to)).sum::<usize>()
            }).sum::<usize>();
        prop_assert!(large.rules <= bound, "{} rules for {} policies", large.rules, w.policies.len());
        prop_assert!(small.rules <= bound);
    }
}

/// A few cases of the spec spelled out, so a failure reads plainly.
#[test]
fn spec_cases() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-empty, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  egress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and-or, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: t}}
      podSelector: {matchLabels: {app: a}}
    - podSelector: {matchLabels: {app: c}}
    ports:
    - {port: web}
    - {protocol: UDP, port: 5000, endPort: 5010}
"#;
    let policies = policy::parse(yaml, "default").expect("valid");
    let pod = |ns: &str, name: &str, app: &str, addr: &str| Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("app".to_owned(), app.to_owned())].into(),
        addresses: vec![addr.parse().expect("address")],
        ports: vec![NamedPort {
            name: "web".into(),
            port: 8000,
            protocol: Protocol::Tcp,
        }],
        node: "n1".into(),
        interface: None,
    };
    let cluster = Cluster {
        policies,
        pods: vec![
            pod("x", "xa", "a", "10.0.0.1"),
            pod("x", "xb", "b", "10.0.0.2"),
            pod("x", "xc", "c", "10.0.0.3"),
            pod("y", "ya", "a", "10.0.0.4"),
            pod("y", "yc", "c", "10.0.0.5"),
            pod("z", "za", "a", "10.0.0.6"),
        ],
        namespaces: [("x".to_owned(), [("team".to_owned(), "t".to_owned())].into())].into(),
        nodes: vec![Node {
            name: "n1".into(),
            addresses: vec!["192.0.2.1".parse().expect("address")],
        }],
    };
    let m = policy::compile(&cluster, Scope::Node("n1".into()));
    let why = |from: &str, to: &str, proto: Protocol, port: u16| {
        m.why(
            &from.parse().expect("endpoint"),
            &to.parse().expect("endpoint"),
            proto,
            port,
        )
        .expect("known pods")
    };
    // `egress: []` without policyTypes does not make the policy an egress policy.
    assert!(why("x/xa", "z/za", Protocol::Tcp, 80).allowed);
    assert_eq!(
        why("x/xa", "z/za", Protocol::Tcp, 80).egress,
        Decision::NotIsolated
    );
    // `ingress: [{}]` allows everything; `ingress: []` nothing.
    assert!(why("z/za", "x/xb", Protocol::Udp, 1).allowed);
    let denied = why("z/za", "x/xc", Protocol::Tcp, 80);
    assert!(!denied.allowed);
    assert_eq!(
        denied.ingress.to_string(),
        "denied: isolated by x/deny-in and no rule allows it"
    );
    // The node itself reaches a pod whatever the policy.
    assert_eq!(
        why("192.0.2.1", "x/xc", Protocol::Tcp, 80).ingress,
        Decision::OwnNode
    );
    // AND within a peer: a pod labelled app=a in a namespace labelled team=t.
    assert!(why("x/xa", "y/ya", Protocol::Tcp, 8000).allowed);
    assert!(
        !why("z/za", "y/ya", Protocol::Tcp, 8000).allowed,
        "z has no team=t"
    );
    // OR across peers: app=c in the policy's own namespace (y), from anywhere else no.
    assert!(why("y/yc", "y/ya", Protocol::Tcp, 8000).allowed);
    assert!(!why("x/xc", "y/ya", Protocol::Tcp, 8000).allowed);
    // Named port resolves to 8000 on the destination; a range on UDP.
    assert!(!why("x/xa", "y/ya", Protocol::Tcp, 80).allowed);
    assert!(why("x/xa", "y/ya", Protocol::Udp, 5010).allowed);
    assert!(!why("x/xa", "y/ya", Protocol::Udp, 5011).allowed);
    let shown = why("x/xa", "y/ya", Protocol::Udp, 5005).to_string();
    assert!(shown.contains("allowed by y/and-or ingress[0]"), "{shown}");
}

/// Random models' rulesets (both nodes' and the cluster's) pass `nft -c -f` in a test
/// namespace: no empty or overlapping interval elements, names and types nft takes.
#[test]
fn random_rulesets_pass_nft_check() {
    if !weft_testbed::require_root("random_rulesets_pass_nft_check") {
        return;
    }
    let bed = weft_testbed::TestBed::new(1).expect("test bed");
    let host = bed.host(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    });
    runner
        .run(&world(), |w| {
            let cluster = cluster_of(&w);
            for scope in [
                Scope::Node("n1".into()),
                Scope::Node("n2".into()),
                Scope::Cluster,
            ] {
                let script = policy::nft::replace_script(&policy::compile(&cluster, scope.clone()));
                let path = dir.path().join("ruleset.nft");
                std::fs::write(&path, &script).expect("write");
                let out = host
                    .run(&["nft", "-c", "-f", path.to_str().expect("utf-8")])
                    .expect("nft runs");
                prop_assert!(
                    out.status.success(),
                    "{:?}: {}\n{}",
                    scope,
                    String::from_utf8_lossy(&out.stderr),
                    script
                );
            }
            Ok(())
        })
        .expect("every ruleset passes nft -c");
}
