//! Shared by the policy tests and the benchmark (mesh/benches/policy.rs).

#![allow(dead_code)]

pub mod e2e;

use std::net::IpAddr;

use weft_mesh::policy::{self, Cluster, NamedPort, Pod, Protocol};

fn pod(ns: &str, name: &str, addr: IpAddr, node: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: Default::default(),
        addresses: vec![addr],
        ports: Vec::new(),
        node: node.into(),
        interface: None,
    }
}

/// `policies` policies over `pods` pods in 10 namespaces, a quarter of the pods on node
/// `n1`: each policy selects one of 50 apps in its namespace, lets in two peers (pods of a
/// role in its namespace, or every pod of namespaces of a team) on a numbered and a named
/// port, and lets out to 10.0.0.0/8 but one /16.
pub fn large_cluster(pods: usize, policies: usize) -> Cluster {
    Cluster {
        policies: policy::parse(&large_yaml(policies), "default").expect("valid"),
        ..large_pods(pods)
    }
}

/// The policies of [`large_cluster`], as one multi-document YAML text.
pub fn large_yaml(policies: usize) -> String {
    let namespaces = NAMESPACES;
    let mut yaml = String::new();
    for i in 0..policies {
        let ns = i % namespaces;
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{role: r{}}}}}\n    - namespaceSelector: {{matchLabels: {{team: t{}}}}}\n    ports: [{{port: {}}}, {{port: http}}]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.{}.0.0/16]}}}}]\n",
            i % 50, i % 7, i % 3, 1000 + i, i % 200
        ));
    }
    yaml
}

const NAMESPACES: usize = 10;

/// The pods and namespaces of [`large_cluster`], without policies.
pub fn large_pods(pods: usize) -> Cluster {
    let namespaces = NAMESPACES;
    let pods = (0..pods)
        .map(|k| {
            let addr = format!("10.{}.{}.{}", 32 + k / 65536, (k / 256) % 256, k % 256);
            let mut p = pod(
                &format!("ns{}", k % namespaces),
                &format!("pod{k}"),
                addr.parse().expect("address"),
                if k % 4 == 0 { "n1" } else { "n2" },
            );
            p.labels = [
                ("app".to_owned(), format!("app{}", k % 50)),
                ("role".to_owned(), format!("r{}", k % 7)),
            ]
            .into();
            p.ports = vec![NamedPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }];
            p
        })
        .collect();
    Cluster {
        policies: Vec::new(),
        pods,
        namespaces: (0..namespaces)
            .map(|n| {
                (
                    format!("ns{n}"),
                    [("team".to_owned(), format!("t{}", n % 3))].into(),
                )
            })
            .collect(),
        nodes: Vec::new(),
    }
}
