//! Cases of the Kubernetes e2e network-policy suite (test/e2e/network/netpol in
//! kubernetes/kubernetes), on its model: namespaces x, y, z (each labelled `ns=<name>`), pods
//! a, b, c in each (labelled `pod=<name>`), servers on TCP 80 and 81 and UDP 80 (named ports
//! `serve-80-tcp`, `serve-81-tcp`, `serve-80-udp`). Each case is the suite's policy and the
//! reachability it expects, written out here as the suite states it (computed by no
//! evaluator). Used by mesh/tests/policy_e2e_cases.rs (the model) and policy_netns.rs
//! (packets).

use weft_mesh::policy::{self, Cluster, NamedPort, Node, Pod, Protocol};

pub const NS: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [(Protocol, u16); 3] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
];

/// (from namespace, from pod, to namespace, to pod, protocol, port)
pub type Flow<'a> = (&'a str, &'a str, &'a str, &'a str, Protocol, u16);

/// A case: its name, the policies (YAML, namespace `x` by default) and what it expects.
pub struct Case {
    pub name: &'static str,
    pub yaml: String,
    pub expect: Box<dyn Fn(Flow) -> bool + Send + Sync>,
}

const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

fn doc(name: &str, ns: &str, spec: &str) -> String {
    format!("{HEAD}metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n")
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // default_deny_ingress
    {
        cases.push(Case {
            name: "default-deny-ingress",
            yaml: (doc("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]")).to_string(),
            expect: Box::new(|(_, _, tns, _, _, _)| tns != "x"),
        });
    }
    // default_deny_all
    {
        cases.push(Case {
            name: "default-deny-all",
            yaml: (doc(
                "deny",
                "x",
                "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
            ))
            .to_string(),
            expect: Box::new(|(fns, _, tns, _, _, _)| fns != "x" && tns != "x"),
        });
    }
    // deny_egress_from_all_pods_in_a_namespace
    {
        cases.push(Case {
            name: "deny-egress",
            yaml: (doc("deny", "x", "  podSelector: {}\n  policyTypes: [Egress]")).to_string(),
            expect: Box::new(|(fns, _, _, _, _, _)| fns != "x"),
        });
    }
    // allow_from_pods_in_server_namespace_by_pod_selector
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}}]";
        cases.push(Case {
            name: "x/a from x/c",
            yaml: (doc("allow-c", "x", spec)).to_string(),
            expect: Box::new(|(fns, fp, tns, tp, _, _)| {
                (tns, tp) != ("x", "a") || (fns, fp) == ("x", "c")
            }),
        });
    }
    // deny_ingress_from_pods_on_other_namespaces
    {
        let spec = "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]";
        cases.push(Case {
            name: "x only from x",
            yaml: (doc("same-ns", "x", spec)).to_string(),
            expect: Box::new(|(fns, _, tns, _, _, _)| tns != "x" || fns == "x"),
        });
    }
    // allow_ingress_from_namespace_by_label
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]";
        cases.push(Case {
            name: "x/a from ns y",
            yaml: (doc("from-y", "x", spec)).to_string(),
            expect: Box::new(|(fns, _, tns, tp, _, _)| (tns, tp) != ("x", "a") || fns == "y"),
        });
    }
    // namespace_selector_with_match_expressions
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}}]";
        cases.push(Case {
            name: "x/a from ns In [y]",
            yaml: (doc("from-y-expr", "x", spec)).to_string(),
            expect: Box::new(|(fns, _, tns, tp, _, _)| (tns, tp) != ("x", "a") || fns == "y"),
        });
    }
    // pod_selector_or_namespace_selector
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n    - podSelector: {matchLabels: {pod: b}}";
        cases.push(Case {
            name: "x/a from not-x or x/b",
            yaml: (doc("or", "x", spec)).to_string(),
            expect: Box::new(|(fns, fp, tns, tp, _, _)| {
                (tns, tp) != ("x", "a") || fns != "x" || fp == "b"
            }),
        });
    }
    // pod_selector_and_namespace_selector
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchLabels: {pod: b}}";
        cases.push(Case {
            name: "x/a from (not-x and b)",
            yaml: (doc("and", "x", spec)).to_string(),
            expect: Box::new(|(fns, fp, tns, tp, _, _)| {
                (tns, tp) != ("x", "a") || (fns != "x" && fp == "b")
            }),
        });
    }
    // multiple_pod_selectors_and_namespace_selectors
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}";
        cases.push(Case {
            name: "x/a from not-x and b|c",
            yaml: (doc("multi", "x", spec)).to_string(),
            expect: Box::new(|(fns, fp, tns, tp, _, _)| {
                (tns, tp) != ("x", "a") || (fns != "x" && fp != "a")
            }),
        });
    }
    // ports_by_number
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 81, protocol: TCP}]";
        cases.push(Case {
            name: "x/a from y on 81",
            yaml: (doc("port-81", "x", spec)).to_string(),
            expect: Box::new(|(fns, _, tns, tp, proto, port)| {
                (tns, tp) != ("x", "a") || (fns == "y" && proto == Protocol::Tcp && port == 81)
            }),
        });
    }
    // ports_by_name
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-80-udp, protocol: UDP}]";
        cases.push(Case {
            name: "x/a on serve-80-udp",
            yaml: (doc("named", "x", spec)).to_string(),
            expect: Box::new(|(_, _, tns, tp, proto, _)| {
                (tns, tp) != ("x", "a") || proto == Protocol::Udp
            }),
        });
    }
    // end_port_range
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80, endPort: 81, protocol: TCP}]";
        cases.push(Case {
            name: "x/a from y on 80-81",
            yaml: (doc("range", "x", spec)).to_string(),
            expect: Box::new(|(fns, _, tns, tp, proto, _)| {
                (tns, tp) != ("x", "a") || (fns == "y" && proto == Protocol::Tcp)
            }),
        });
    }
    // any_port_on_a_protocol
    {
        let spec =
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: TCP}]";
        cases.push(Case {
            name: "x/a on TCP",
            yaml: (doc("tcp-only", "x", spec)).to_string(),
            expect: Box::new(|(_, _, tns, tp, proto, _)| {
                (tns, tp) != ("x", "a") || proto == Protocol::Tcp
            }),
        });
    }
    // stacked_policies_with_overlapping_pod_selectors
    {
        let one = doc("from-y-80", "x", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]");
        let two = doc("from-z-81", "x", "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{port: 81}]");
        cases.push(Case {
            name: "union",
            yaml: (format!("{one}---\n{two}")).to_string(),
            expect: Box::new(|(fns, _, tns, tp, proto, port)| {
                if tns != "x" {
                    return true;
                }
                let from_z = fns == "z" && proto == Protocol::Tcp && port == 81;
                let from_y = tp == "a" && fns == "y" && proto == Protocol::Tcp && port == 80;
                from_z || from_y
            }),
        });
    }
    // allow_all_ingress_after_deny
    {
        let deny = doc(
            "deny",
            "x",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
        );
        let all = doc("allow-all", "x", "  podSelector: {}\n  ingress: [{}]");
        cases.push(Case {
            name: "deny + allow-all ingress",
            yaml: (format!("{deny}---\n{all}")).to_string(),
            expect: Box::new(|(fns, _, _, _, _, _)| fns != "x"),
        });
    }
    // egress_to_a_pod_in_another_namespace
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: a}}";
        cases.push(Case {
            name: "x/a only to y/a",
            yaml: (doc("egress-y-a", "x", spec)).to_string(),
            expect: Box::new(|(fns, fp, tns, tp, _, _)| {
                (fns, fp) != ("x", "a") || (tns, tp) == ("y", "a")
            }),
        });
    }
    // ingress_and_egress_together
    {
        let spec = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{port: 80, protocol: UDP}]";
        cases.push(Case {
            name: "x/a in from y, out to z UDP 80",
            yaml: (doc("both", "x", spec)).to_string(),
            expect: Box::new(|(fns, fp, tns, tp, proto, port)| {
                let into_xa = (tns, tp) == ("x", "a");
                let from_xa = (fns, fp) == ("x", "a");
                (!into_xa || fns == "y")
                    && (!from_xa || (tns == "z" && proto == Protocol::Udp && port == 80))
            }),
        });
    }
    // egress_and_ingress_of_two_policies_meet
    {
        // x/a may send only to z; z/b accepts only from x: x/a -> z/b passes both sides,
        // y -> z/b and x/a -> y do not.
        let out = doc("xa-to-z", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]");
        let inn = doc("zb-from-x", "z", "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]");
        cases.push(Case {
            name: "both sides",
            yaml: (format!("{out}---\n{inn}")).to_string(),
            expect: Box::new(|(fns, fp, tns, tp, _, _)| {
                let egress_ok = (fns, fp) != ("x", "a") || tns == "z";
                let ingress_ok = (tns, tp) != ("z", "b") || fns == "x";
                egress_ok && ingress_ok
            }),
        });
    }
    cases
}

/// The suite's nine pods, pod k (= 3 x namespace + pod) on node n1 if k is even, else n2,
/// at 10.32.1.(10+k) or 10.32.2.(10+k); with `yaml`'s policies.
pub fn cluster(yaml: &str) -> Cluster {
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
