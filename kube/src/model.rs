//! Pure functions from Kubernetes objects to what the daemon needs.
//!
//! Everything here reads objects from the API server, which are outside input: a field that
//! does not parse is skipped (addresses, IPs, ports) or reported as an [`Error`] (a Node's pod
//! CIDRs, where a wrong guess would give the node someone else's space), never a panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;

use crate::{Error, Result};

/// The gossip seeds: the addresses of every Node but `own_name` (and but Nodes being
/// deleted), each with `port`. A Node's `InternalIP` addresses are used; a Node without one
/// gives its `ExternalIP` addresses. Sorted, without duplicates.
pub fn seeds<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    own_name: &str,
    port: u16,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = nodes
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| n.metadata.name.as_deref() != Some(own_name))
        .flat_map(node_addresses)
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A Node's addresses for gossip: its `InternalIP`s, or without one its `ExternalIP`s.
/// Addresses that are not IP addresses (a `Hostname`, garbage) are skipped.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let of = |kind: &str| -> Vec<IpAddr> {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.trim().parse().ok())
            .filter(|ip: &IpAddr| !ip.is_unspecified() && !ip.is_multicast())
            .collect()
    };
    let internal = of("InternalIP");
    if internal.is_empty() {
        of("ExternalIP")
    } else {
        internal
    }
}

/// A Node's pod CIDRs (`spec.podCIDRs`, or the older single `spec.podCIDR`), as the cluster's
/// node IPAM allocated them: none when the cluster does not allocate them. Each must be a
/// network address (no host bits), at most one per address family.
pub fn pod_cidrs(node: &Node) -> Result<Vec<IpNet>> {
    let name = node.name_any();
    let spec = node.spec.as_ref();
    let values: Vec<String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    let mut nets = Vec::with_capacity(values.len());
    for value in &values {
        let net: IpNet = value.trim().parse().map_err(|_| Error::InvalidPodCidr {
            node: name.clone(),
            value: value.clone(),
        })?;
        if net.trunc() != net {
            return Err(Error::InvalidPodCidr {
                node: name,
                value: value.clone(),
            });
        }
        nets.push(net);
    }
    let v4 = nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    if v4 > 1 || nets.len() - v4 > 1 {
        return Err(Error::PodCidrFamilies { node: name, values });
    }
    Ok(nets)
}

/// A named container port, as NetworkPolicies may name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    /// The port's name (unique within a pod).
    pub name: String,
    /// The port number.
    pub port: u16,
    /// TCP, UDP or SCTP (Kubernetes' default: TCP).
    pub protocol: String,
}

/// What the policy engine needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The Node it runs on (`spec.nodeName`), once scheduled.
    pub node: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its IP addresses (`status.podIPs`, or `status.podIP`), once it has them.
    pub ips: Vec<IpAddr>,
    /// On the host's network: its addresses are the node's, not weft's.
    pub host_network: bool,
    /// Its containers' named ports.
    pub ports: Vec<NamedPort>,
}

/// The identity of `pod`; `None` for a pod that has finished (phase Succeeded or Failed: its
/// addresses are released and may already be another pod's) or has no name or namespace.
pub fn pod_identity(pod: &Pod) -> Option<PodIdentity> {
    let namespace = pod.metadata.namespace.clone()?;
    let name = pod.metadata.name.clone()?;
    let status = pod.status.as_ref();
    if let Some("Succeeded" | "Failed") = status.and_then(|s| s.phase.as_deref()) {
        return None;
    }
    let mut ips: Vec<IpAddr> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|p| p.ip.trim().parse().ok())
            .collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.trim().parse().ok())
            .into_iter()
            .collect(),
    };
    ips.dedup();
    let spec = pod.spec.as_ref();
    let mut ports: Vec<NamedPort> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone().filter(|n| !n.is_empty())?,
                port: u16::try_from(p.container_port).ok().filter(|&n| n != 0)?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            })
        })
        .collect();
    ports.sort();
    ports.dedup();
    Some(PodIdentity {
        namespace,
        name,
        node: spec.and_then(|s| s.node_name.clone()),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
    })
}

/// A namespace's name and labels (NetworkPolicies select namespaces by label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceIdentity {
    /// Name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// The identity of `ns`; `None` without a name.
pub fn namespace_identity(ns: &Namespace) -> Option<NamespaceIdentity> {
    Some(NamespaceIdentity {
        name: ns.metadata.name.clone()?,
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A NetworkPolicy as the raw object the API server sent (without server-side bookkeeping:
/// managed fields and the last-applied annotation), for the policy engine to compile.
pub fn policy_object(policy: &NetworkPolicy) -> serde_json::Value {
    let mut p = policy.clone();
    p.metadata.managed_fields = None;
    if let Some(a) = p.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    // Serialising a k8s-openapi object cannot fail (no maps with non-string keys).
    serde_json::to_value(&p).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, NodeAddress, NodeSpec, NodeStatus, PodIP, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use proptest::prelude::*;

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_cidrs(mut n: Node, single: Option<&str>, list: &[&str]) -> Node {
        n.spec = Some(NodeSpec {
            pod_cidr: single.map(Into::into),
            pod_cidrs: (!list.is_empty()).then(|| list.iter().map(|s| (*s).to_owned()).collect()),
            ..Default::default()
        });
        n
    }

    #[test]
    fn seeds_are_the_other_nodes_internal_addresses() {
        let nodes = [
            node("a", &[("InternalIP", "192.0.2.1"), ("Hostname", "a")]),
            node(
                "b",
                &[("ExternalIP", "203.0.113.2"), ("InternalIP", "192.0.2.2")],
            ),
            node(
                "c",
                &[("ExternalIP", "203.0.113.3"), ("Hostname", "c.example")],
            ),
            node(
                "d",
                &[("InternalIP", "not-an-ip"), ("InternalIP", "0.0.0.0")],
            ),
            node("e", &[("InternalIP", "192.0.2.2")]),
        ];
        let got = seeds(&nodes, "a", 6783);
        let want: Vec<SocketAddr> = ["192.0.2.2:6783", "203.0.113.3:6783"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_node_being_deleted_is_no_seed() {
        let mut going = node("b", &[("InternalIP", "192.0.2.2")]);
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(seeds([&going], "a", 6783).is_empty());
        assert!(seeds([&node("a", &[("InternalIP", "192.0.2.1")])], "a", 6783).is_empty());
    }

    #[test]
    fn pod_cidrs_prefer_the_list_and_check_each() {
        let n = node("n", &[]);
        assert_eq!(pod_cidrs(&n).expect("none"), vec![]);
        let single = with_cidrs(n.clone(), Some("10.244.1.0/24"), &[]);
        assert_eq!(
            pod_cidrs(&single).expect("one"),
            vec!["10.244.1.0/24".parse::<IpNet>().expect("net")]
        );
        let dual = with_cidrs(
            n.clone(),
            Some("10.244.1.0/24"),
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
        );
        assert_eq!(pod_cidrs(&dual).expect("two").len(), 2);
        for bad in [
            with_cidrs(n.clone(), Some("10.244.1.5/24"), &[]),
            with_cidrs(n.clone(), Some("10.244.1.0"), &[]),
            with_cidrs(n.clone(), Some("banana"), &[]),
            with_cidrs(n.clone(), None, &["10.244.1.0/24", "10.244.2.0/24"]),
        ] {
            assert!(pod_cidrs(&bad).is_err(), "{:?}", bad.spec);
        }
    }

    fn pod(phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![
                    Container {
                        name: "web".into(),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some("http".into()),
                                container_port: 8080,
                                ..Default::default()
                            },
                            ContainerPort {
                                container_port: 9090,
                                ..Default::default()
                            },
                            ContainerPort {
                                name: Some("bad".into()),
                                container_port: 70000,
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    },
                    Container {
                        name: "dns".into(),
                        ports: Some(vec![ContainerPort {
                            name: Some("dns".into()),
                            container_port: 53,
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some("10.32.0.5".into()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "10.32.0.5".into(),
                    },
                    PodIP {
                        ip: "fd00::5".into(),
                    },
                    PodIP { ip: "junk".into() },
                ]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pod_identity_has_labels_ips_and_named_ports() {
        let id = pod_identity(&pod("Running")).expect("identity");
        assert_eq!((id.namespace.as_str(), id.name.as_str()), ("shop", "web-1"));
        assert_eq!(id.node.as_deref(), Some("n1"));
        assert_eq!(id.labels["app"], "web");
        assert_eq!(
            id.ips,
            vec![
                "10.32.0.5".parse::<IpAddr>().expect("ip"),
                "fd00::5".parse().expect("ip")
            ]
        );
        assert!(!id.host_network);
        let ports: Vec<(&str, u16, &str)> = id
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(ports, [("dns", 53, "UDP"), ("http", 8080, "TCP")]);
    }

    #[test]
    fn finished_pods_have_no_identity() {
        assert!(pod_identity(&pod("Pending")).is_some());
        assert!(pod_identity(&pod("Succeeded")).is_none());
        assert!(pod_identity(&pod("Failed")).is_none());
        assert!(pod_identity(&Pod::default()).is_none());
    }

    proptest! {
        /// Any strings as a Node's addresses and pod CIDRs: no panic; every seed is one of
        /// the given addresses; accepted CIDRs are networks, one per family.
        #[test]
        fn untrusted_nodes_never_panic(
            addrs in proptest::collection::vec(("(InternalIP|ExternalIP|Hostname)", "\\PC{0,20}|[0-9.:a-f]{1,20}"), 0..6),
            single in proptest::option::of("\\PC{0,20}|[0-9./]{1,18}"),
            list in proptest::collection::vec("\\PC{0,20}|[0-9./:a-f]{1,24}", 0..3),
        ) {
            let pairs: Vec<(&str, &str)> = addrs.iter().map(|(t, a)| (t.as_str(), a.as_str())).collect();
            let list: Vec<&str> = list.iter().map(String::as_str).collect();
            let n = with_cidrs(node("x", &pairs), single.as_deref(), &list);
            for s in seeds([&n], "other", 1) {
                prop_assert!(addrs.iter().any(|(_, a)| a.trim().parse::<IpAddr>().ok() == Some(s.ip())));
            }
            if let Ok(nets) = pod_cidrs(&n) {
                prop_assert!(nets.len() <= 2);
                for net in nets {
                    prop_assert_eq!(net.trunc(), net);
                }
            }
        }
    }
}
