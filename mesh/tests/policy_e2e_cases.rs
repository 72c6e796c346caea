//! Cases of the Kubernetes e2e network-policy suite (test/e2e/network/netpol in
//! kubernetes/kubernetes), on its model: namespaces x, y, z (each labelled `ns=<name>`), pods
//! a, b, c in each (labelled `pod=<name>`), servers on TCP 80 and 81 and UDP 80 (named ports
//! `serve-80-tcp`, `serve-81-tcp`, `serve-80-udp`), pods spread over two nodes. Each case is
//! the suite's policy and the reachability it expects, written out here as the suite states it
//! (not computed by any evaluator); the compiled model's `why` must agree on the full 9 x 9
//! matrix on each port, for the cluster and as the AND of both nodes' rulesets.

use weft_mesh::policy::{self, Cluster, NamedPort, Node, Pod, Protocol, Scope};

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [(Protocol, u16); 3] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
];

type Flow<'a> = (&'a str, &'a str, &'a str, &'a str, Protocol, u16);

fn cluster(yaml: &str) -> Cluster {
    let mut pods = Vec::new();
    for (i, ns) in NS.iter().enumerate() {
        for (j, name) in PODS.iter().enumerate() {
            pods.push(Pod {
                namespace: (*ns).into(),
                name: (*name).into(),
                labels: [("pod".to_owned(), (*name).to_owned())].into(),
                addresses: vec![format!("10.32.{}.{}", 1 + (i * 3 + j) % 2, 10 + i * 3 + j)
                    .parse()
                    .expect("address")],
                ports: vec![
                    NamedPort {
                        name: "serve-80-tcp".into(),
                        port: 80,
                        protocol: Protocol::Tcp,
                    },
                    NamedPort {
                        name: "serve-81-tcp".into(),
                        port: 81,
                        protocol: Protocol::Tcp,
                    },
                    NamedPort {
                        name: "serve-80-udp".into(),
                        port: 80,
                        protocol: Protocol::Udp,
                    },
                ],
                node: if (i * 3 + j) % 2 == 0 { "n1" } else { "n2" }.into(),
                interface: None,
            });
        }
    }
    Cluster {
        policies: policy::parse(yaml, "x").expect("valid"),
        pods,
        namespaces: NS
            .iter()
            .map(|ns| {
                (
                    (*ns).to_owned(),
                    [("ns".to_owned(), (*ns).to_owned())].into(),
                )
            })
            .collect(),
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
    }
}

fn check(case: &str, yaml: &str, expect: impl Fn(Flow) -> bool) {
    let c = cluster(yaml);
    let whole = policy::compile(&c, Scope::Cluster);
    let nodes = [
        policy::compile(&c, Scope::Node("n1".into())),
        policy::compile(&c, Scope::Node("n2".into())),
    ];
    let mut wrong = Vec::new();
    let mut open = 0;
    for fns in NS {
        for fp in PODS {
            for tns in NS {
                for tp in PODS {
                    if (fns, fp) == (tns, tp) {
                        continue;
                    }
                    for (proto, port) in PORTS {
                        let from = format!("{fns}/{fp}").parse().expect("endpoint");
                        let to = format!("{tns}/{tp}").parse().expect("endpoint");
                        let why = whole.why(&from, &to, proto, port).expect("pods");
                        let both = nodes
                            .iter()
                            .all(|m| m.why(&from, &to, proto, port).expect("pods").allowed);
                        let want = expect((fns, fp, tns, tp, proto, port));
                        open += usize::from(want);
                        if why.allowed != want || both != want {
                            wrong.push(format!("{why} (nodes: {both}, want {want})"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{case}: {} flows differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Every case denies something and allows something.
    assert!(open > 0 && open < 9 * 8 * 3, "{case}: {open} open");
}

const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

fn doc(name: &str, ns: &str, spec: &str) -> String {
    format!("{HEAD}metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n")
}

#[test]
fn default_deny_ingress() {
    check(
        "default-deny-ingress",
        &doc("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]"),
        |(_, _, tns, _, _, _)| tns != "x",
    );
}

#[test]
fn default_deny_all() {
    check(
        "default-deny-all",
        &doc(
            "deny",
            "x",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
        ),
        |(fns, _, tns, _, _, _)| fns != "x" && tns != "x",
    );
}

#[test]
fn deny_egress_from_all_pods_in_a_namespace() {
    check(
        "deny-egress",
        &doc("deny", "x", "  podSelector: {}\n  policyTypes: [Egress]"),
        |(fns, _, _, _, _, _)| fns != "x",
    );
}

#[test]
fn allow_from_pods_in_server_namespace_by_pod_selector() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}}]";
    check(
        "x/a from x/c",
        &doc("allow-c", "x", spec),
        |(fns, fp, tns, tp, _, _)| (tns, tp) != ("x", "a") || (fns, fp) == ("x", "c"),
    );
}

#[test]
fn deny_ingress_from_pods_on_other_namespaces() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]";
    check(
        "x only from x",
        &doc("same-ns", "x", spec),
        |(fns, _, tns, _, _, _)| tns != "x" || fns == "x",
    );
}

#[test]
fn allow_ingress_from_namespace_by_label() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]";
    check(
        "x/a from ns y",
        &doc("from-y", "x", spec),
        |(fns, _, tns, tp, _, _)| (tns, tp) != ("x", "a") || fns == "y",
    );
}

#[test]
fn namespace_selector_with_match_expressions() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}}]";
    check(
        "x/a from ns In [y]",
        &doc("from-y-expr", "x", spec),
        |(fns, _, tns, tp, _, _)| (tns, tp) != ("x", "a") || fns == "y",
    );
}

#[test]
fn pod_selector_or_namespace_selector() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n    - podSelector: {matchLabels: {pod: b}}";
    check(
        "x/a from not-x or x/b",
        &doc("or", "x", spec),
        |(fns, fp, tns, tp, _, _)| (tns, tp) != ("x", "a") || fns != "x" || fp == "b",
    );
}

#[test]
fn pod_selector_and_namespace_selector() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchLabels: {pod: b}}";
    check(
        "x/a from (not-x and b)",
        &doc("and", "x", spec),
        |(fns, fp, tns, tp, _, _)| (tns, tp) != ("x", "a") || (fns != "x" && fp == "b"),
    );
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}";
    check(
        "x/a from not-x and b|c",
        &doc("multi", "x", spec),
        |(fns, fp, tns, tp, _, _)| (tns, tp) != ("x", "a") || (fns != "x" && fp != "a"),
    );
}

#[test]
fn ports_by_number() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 81, protocol: TCP}]";
    check(
        "x/a from y on 81",
        &doc("port-81", "x", spec),
        |(fns, _, tns, tp, proto, port)| {
            (tns, tp) != ("x", "a") || (fns == "y" && proto == Protocol::Tcp && port == 81)
        },
    );
}

#[test]
fn ports_by_name() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-80-udp, protocol: UDP}]";
    check(
        "x/a on serve-80-udp",
        &doc("named", "x", spec),
        |(_, _, tns, tp, proto, _)| (tns, tp) != ("x", "a") || proto == Protocol::Udp,
    );
}

#[test]
fn end_port_range() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80, endPort: 81, protocol: TCP}]";
    check(
        "x/a from y on 80-81",
        &doc("range", "x", spec),
        |(fns, _, tns, tp, proto, _)| {
            (tns, tp) != ("x", "a") || (fns == "y" && proto == Protocol::Tcp)
        },
    );
}

#[test]
fn any_port_on_a_protocol() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: TCP}]";
    check(
        "x/a on TCP",
        &doc("tcp-only", "x", spec),
        |(_, _, tns, tp, proto, _)| (tns, tp) != ("x", "a") || proto == Protocol::Tcp,
    );
}

#[test]
fn stacked_policies_with_overlapping_pod_selectors() {
    let one = doc("from-y-80", "x", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]");
    let two = doc("from-z-81", "x", "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{port: 81}]");
    check(
        "union",
        &format!("{one}---\n{two}"),
        |(fns, _, tns, tp, proto, port)| {
            if tns != "x" {
                return true;
            }
            let from_z = fns == "z" && proto == Protocol::Tcp && port == 81;
            let from_y = tp == "a" && fns == "y" && proto == Protocol::Tcp && port == 80;
            from_z || from_y
        },
    );
}

#[test]
fn allow_all_ingress_after_deny() {
    let deny = doc(
        "deny",
        "x",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    );
    let all = doc("allow-all", "x", "  podSelector: {}\n  ingress: [{}]");
    check(
        "deny + allow-all ingress",
        &format!("{deny}---\n{all}"),
        |(fns, _, _, _, _, _)| fns != "x",
    );
}

#[test]
fn egress_to_a_pod_in_another_namespace() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: a}}";
    check(
        "x/a only to y/a",
        &doc("egress-y-a", "x", spec),
        |(fns, fp, tns, tp, _, _)| (fns, fp) != ("x", "a") || (tns, tp) == ("y", "a"),
    );
}

#[test]
fn ingress_and_egress_together() {
    let spec = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{port: 80, protocol: UDP}]";
    check(
        "x/a in from y, out to z UDP 80",
        &doc("both", "x", spec),
        |(fns, fp, tns, tp, proto, port)| {
            let into_xa = (tns, tp) == ("x", "a");
            let from_xa = (fns, fp) == ("x", "a");
            (!into_xa || fns == "y")
                && (!from_xa || (tns == "z" && proto == Protocol::Udp && port == 80))
        },
    );
}

#[test]
fn egress_and_ingress_of_two_policies_meet() {
    // x/a may send only to z; z/b accepts only from x: x/a -> z/b passes both sides,
    // y -> z/b and x/a -> y do not.
    let out = doc("xa-to-z", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]");
    let inn = doc("zb-from-x", "z", "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]");
    check(
        "both sides",
        &format!("{out}---\n{inn}"),
        |(fns, fp, tns, tp, _, _)| {
            let egress_ok = (fns, fp) != ("x", "a") || tns == "z";
            let ingress_ok = (tns, tp) != ("z", "b") || fns == "x";
            egress_ok && ingress_ok
        },
    );
}
