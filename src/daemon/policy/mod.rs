//! Network policy in the daemon (docs/POLICY.md): the cluster's policies, namespace labels
//! and pod identities, this node's ruleset compiled from them and kept in force.
//!
//! - [`statement`]: signed statements (a policy, a namespace's labels, a node's pods) as
//!   they travel by gossip and are kept in `STATE_DIR/policy.json`; untrusted input, checked
//!   whole.
//! - [`core`]: the sans-IO core the node owns: what is held (last writer wins by hybrid time
//!   and node id, tombstones for deletions), the `weft policy` commands, push and
//!   anti-entropy over the gossip transport's policy channel.
//! - [`reconcile`]: the IO task that compiles this node's ruleset from [`PolicyInputs`] and
//!   keeps it loaded (one `nft -f`), repairs drift, reads the drop counters.
//!
//! The API's requests and answers for `weft policy` are here too ([`PolicyRequest`],
//! [`PolicyAnswer`]); the node answers them (`node/policy.rs`).

pub mod core;
pub mod reconcile;
pub mod statement;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weft_mesh::policy::spec::Labels;
use weft_mesh::policy::{NamedPort, Protocol, Why};

pub use self::core::PolicyCore;
pub use reconcile::{InputSource, PolicyInputs, PolicyReport};
pub use statement::PodIdentity;

/// The file in the state directory.
pub const POLICY_FILE: &str = "policy.json";
/// Largest `policy.json` read.
pub const MAX_FILE_LEN: u64 = 256 << 20;
/// Largest `policy apply` request line: the parser's input bound and room for JSON escapes.
pub const MAX_APPLY_REQUEST_LEN: usize = 2 * weft_mesh::policy::spec::MAX_INPUT + 4096;
/// A `policy apply` request line begins with exactly this (the client writes it so); only
/// such a line may be longer than the API's usual bound.
pub const APPLY_PREFIX: &[u8] = br#"{"cmd":"policy","op":"apply""#;

/// `{"cmd":"policy","op":...}`: the `weft policy` commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PolicyRequest {
    /// One or more NetworkPolicy documents (kubectl's YAML or JSON); all or nothing.
    Apply {
        yaml: String,
        /// For policies without a namespace [default: `default`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
    List,
    /// `NAMESPACE/NAME` (or `NAME` in `default`).
    Get {
        name: String,
    },
    Delete {
        name: String,
    },
    /// The verdict for one flow: pods as `NAMESPACE/NAME` or addresses; `port` as `80/tcp`.
    Why {
        from: String,
        to: String,
        port: String,
    },
    /// Set namespace `name`'s labels (`labels` given), or show every namespace's labels.
    Namespace {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels: Option<Labels>,
    },
}

impl PolicyRequest {
    /// Checks the fields' bounds (the content is checked by the node).
    pub fn check(&self) -> Result<(), String> {
        let short = |field: &str, v: &str| -> Result<(), String> {
            if v.is_empty() || v.len() > 512 || v.chars().any(char::is_control) {
                return Err(format!(
                    "bad request: {field:?} must be 1 to 512 bytes without control characters"
                ));
            }
            Ok(())
        };
        match self {
            PolicyRequest::Apply { yaml, namespace } => {
                if yaml.len() > weft_mesh::policy::spec::MAX_INPUT {
                    return Err(format!(
                        "bad request: more than {} bytes of policy",
                        weft_mesh::policy::spec::MAX_INPUT
                    ));
                }
                if let Some(ns) = namespace {
                    short("namespace", ns)?;
                }
            }
            PolicyRequest::List => {}
            PolicyRequest::Get { name } | PolicyRequest::Delete { name } => short("name", name)?,
            PolicyRequest::Why { from, to, port } => {
                short("from", from)?;
                short("to", to)?;
                short("port", port)?;
            }
            PolicyRequest::Namespace { name, labels } => {
                if let Some(n) = name {
                    short("name", n)?;
                }
                if labels.is_some() && name.is_none() {
                    return Err("bad request: labels need a namespace name".into());
                }
                if let Some(l) = labels {
                    statement::check_labels(l).map_err(|e| format!("bad request: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

/// What one `apply`, `delete` or `namespace` did to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `namespace/name` of a policy, or a namespace.
    pub name: String,
    /// created, configured, unchanged, deleted, labelled.
    pub action: String,
}

/// One policy, as `weft policy list` and `get` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub namespace: String,
    pub name: String,
    /// `Ingress`, `Egress`.
    pub policy_types: Vec<String>,
    pub ingress_rules: usize,
    pub egress_rules: usize,
    /// The node that applied it last (its name when known, else its short id).
    pub applied_by: String,
    /// When (milliseconds since the epoch, hybrid time).
    pub applied_at_ms: u64,
    /// Packets it dropped on this node.
    pub drops: u64,
}

/// The answer to a [`PolicyRequest`] (`{"ok":true,"policy":{"kind":...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PolicyAnswer {
    /// `apply`, `delete`, `namespace NAME --label`.
    Changed {
        changes: Vec<Change>,
    },
    List {
        policies: Vec<PolicySummary>,
        /// Packets dropped at the bridge for a forged source address.
        spoofed: u64,
        /// Rules in force on this node.
        rules: usize,
        /// Why this node's ruleset could not be loaded, if so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Get {
        summary: PolicySummary,
        /// The NetworkPolicy object as applied.
        object: serde_json::Value,
    },
    Why {
        why: Why,
    },
    Namespaces {
        namespaces: BTreeMap<String, Labels>,
    },
}

/// `80/tcp`, `53/udp`, `80` (TCP).
pub fn parse_port(text: &str) -> Result<(Protocol, u16), String> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?} is not PORT/PROTOCOL (e.g. 80/tcp)"))?;
    let proto: Protocol = proto
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("{proto:?} is not tcp, udp or sctp"))?;
    Ok((proto, port))
}

/// `NAME=PORT/PROTO` (`weft attach --port http=80/tcp`).
pub fn parse_named_port(text: &str) -> Result<NamedPort, String> {
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=PORT/PROTOCOL"))?;
    weft_mesh::policy::spec::port_name(name)?;
    let (protocol, port) = parse_port(rest)?;
    Ok(NamedPort {
        name: name.to_string(),
        port,
        protocol,
    })
}

/// This node's pod identities from the pods layer's table: a pod without a pod namespace is
/// in `default`; its name is its pod name, else its container name, else its id.
pub fn identities(pods: &[super::pods::Pod]) -> Vec<PodIdentity> {
    pods.iter()
        .filter_map(|p| {
            let address = p.address?;
            let name = p
                .pod_name
                .clone()
                .or_else(|| p.name.clone())
                .unwrap_or_else(|| p.container.clone());
            let labels: Labels = p
                .labels
                .iter()
                .filter(|(k, v)| {
                    weft_mesh::policy::spec::label_key(k).is_ok()
                        && weft_mesh::policy::spec::label_value(v).is_ok()
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some(PodIdentity {
                namespace: p
                    .pod_namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_string()),
                name: name.trim_start_matches('/').to_string(),
                labels,
                addresses: vec![address.addr().into()],
                ports: p.ports.clone(),
                interface: Some(weft_mesh::attach::host_ifname(&super::api::pod_key(
                    &p.container,
                    &p.ifname,
                ))),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(parse_port("80/tcp"), Ok((Protocol::Tcp, 80)));
        assert_eq!(parse_port("53/UDP"), Ok((Protocol::Udp, 53)));
        assert_eq!(parse_port("80"), Ok((Protocol::Tcp, 80)));
        assert!(parse_port("0/tcp").is_err());
        assert!(parse_port("80/icmp").is_err());
        assert!(parse_port("http").is_err());
        let p = parse_named_port("http=8080/tcp").expect("valid");
        assert_eq!((p.name.as_str(), p.port), ("http", 8080));
        assert!(parse_named_port("HTTP=80").is_err());
        assert!(parse_named_port("80/tcp").is_err());
    }

    #[test]
    fn pods_become_identities_with_their_namespace_labels_ports_and_bridge_port() {
        use crate::daemon::pods::{Pod, Source};
        let cni = Pod {
            container: "abc".into(),
            ifname: "eth0".into(),
            address: Some("10.32.0.5/12".parse().expect("net")),
            network: Some("weft".into()),
            netns: None,
            pod_namespace: Some("shop".into()),
            pod_name: Some("web-0".into()),
            labels: [
                ("app".to_string(), "web".to_string()),
                ("not a label".to_string(), "x".to_string()),
            ]
            .into(),
            name: None,
            source: Source::Cni,
            ports: vec![],
            endpoint: None,
        };
        let attached = Pod {
            container: "def".into(),
            pod_namespace: None,
            pod_name: None,
            name: Some("db-1".into()),
            ports: vec![parse_named_port("pg=5432/tcp").expect("port")],
            source: Source::Attach,
            ..cni.clone()
        };
        let allocating = Pod {
            address: None,
            ..cni.clone()
        };
        let ids = identities(&[cni, attached, allocating]);
        assert_eq!(ids.len(), 2, "a pod without an address has no identity yet");
        assert_eq!(
            (ids[0].namespace.as_str(), ids[0].name.as_str()),
            ("shop", "web-0")
        );
        assert_eq!(ids[0].labels.len(), 1, "invalid labels are left out");
        assert_eq!(
            ids[0].addresses,
            vec!["10.32.0.5".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert_eq!(
            ids[0].interface.as_deref(),
            Some(weft_mesh::attach::host_ifname("abc/eth0").as_str())
        );
        assert_eq!(
            (ids[1].namespace.as_str(), ids[1].name.as_str()),
            ("default", "db-1")
        );
        assert_eq!(ids[1].ports[0].port, 5432);
        for id in &ids {
            id.check().expect("publishable");
        }
    }

    #[test]
    fn requests_serialise_with_the_apply_prefix_and_round_trip() {
        let apply = super::super::api::Request::Policy(PolicyRequest::Apply {
            yaml: "a: b".into(),
            namespace: None,
        });
        let line = serde_json::to_vec(&apply).expect("json");
        assert!(
            line.starts_with(APPLY_PREFIX),
            "{}",
            String::from_utf8_lossy(&line)
        );
        assert_eq!(super::super::api::parse_request(&line), Ok(apply));
        for r in [
            PolicyRequest::List,
            PolicyRequest::Get { name: "x/y".into() },
            PolicyRequest::Why {
                from: "a".into(),
                to: "b".into(),
                port: "80/tcp".into(),
            },
            PolicyRequest::Namespace {
                name: Some("x".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
            },
        ] {
            let r = super::super::api::Request::Policy(r);
            let line = serde_json::to_vec(&r).expect("json");
            assert_eq!(super::super::api::parse_request(&line), Ok(r));
        }
        for bad in [
            &br#"{"cmd":"policy"}"#[..],
            br#"{"cmd":"policy","op":"nope"}"#,
            br#"{"cmd":"policy","op":"list","extra":1}"#,
            br#"{"cmd":"policy","op":"get"}"#,
            br#"{"cmd":"policy","op":"namespace","labels":{"a":"b"}}"#,
            br#"{"cmd":"policy","op":"namespace","name":"x","labels":{"-a":"b"}}"#,
        ] {
            assert!(
                super::super::api::parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
