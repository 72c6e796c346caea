//! NetworkPolicy objects (networking.k8s.io/v1) as kubectl reads them, and their validation.
//!
//! [`NetworkPolicy`] and the types under it are the API's shape (camelCase fields, the same
//! YAML or JSON that `kubectl apply -f` takes); unknown fields are refused, as kubectl's strict
//! field validation does, except under `metadata` (so `kubectl get -o yaml` output reads back).
//! [`parse`] reads one or more YAML documents (or a `List`) and turns each into a [`Policy`]:
//! checked, defaults applied (`policyTypes`, `protocol`, `namespace`), in the form the compiler
//! takes. A document that does not pass is refused with the field path and what is wrong, and
//! so is the whole input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The API version every document must carry.
pub const API_VERSION: &str = "networking.k8s.io/v1";

/// The largest input [`parse`] reads (bytes).
pub const MAX_INPUT: usize = 4 << 20;

/// Label keys and values.
pub type Labels = BTreeMap<String, String>;

/// A NetworkPolicy object, field for field as in the API.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<NetworkPolicySpec>,
    /// Written by the API server; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// The parts of `metadata` a policy uses; other fields (uid, resourceVersion, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Labels>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<PolicyPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<PolicyPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// A port by number or by name, as the API's `IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// The checked form.

/// A policy's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A checked NetworkPolicy with its defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: PolicyName,
    /// Selects the pods of `id.namespace` the policy applies to.
    pub pod_selector: Selector,
    /// `Some` if the policy isolates the pods it selects for ingress (`Ingress` in its
    /// policyTypes); then only what one of these rules allows may come in. An empty list
    /// allows nothing.
    pub ingress: Option<Vec<Rule>>,
    /// Like `ingress`, for what the selected pods send.
    pub egress: Option<Vec<Rule>>,
    /// The object as it was read (for `get -o json`, and to send it on).
    pub source: NetworkPolicy,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: any peer (`from`/`to` missing or empty). Otherwise one of these must match.
    pub peers: Option<Vec<Peer>>,
    /// `None`: any port and protocol (`ports` missing or empty). Otherwise one must match.
    pub ports: Option<Vec<PortSpec>>,
}

/// A peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods: with only `pods`, those of the policy's own namespace; with only `namespaces`,
    /// every pod of the matching namespaces; with both, the matching pods in the matching
    /// namespaces.
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    /// Addresses in `cidr` but in none of `except`.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// A transport protocol a policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The name nft uses (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    /// `tcp`, `TCP`, `udp`, `sctp` (any case).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!("unknown protocol {s:?} (TCP, UDP or SCTP)")),
        }
    }
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// Which ports of a [`PortSpec`]'s protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// No `port`: every port.
    Any,
    /// `port` .. `endPort` (both included; one port when they are equal).
    Range(u16, u16),
    /// A named container port of the destination pod.
    Named(String),
}

/// A label selector, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub match_labels: Labels,
    pub expressions: Vec<Expression>,
}

/// One of a selector's `matchExpressions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    pub key: String,
    pub op: Operator,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    /// True if the selector selects an object with these labels (the empty selector selects
    /// everything).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match &e.op {
                    Operator::In(values) => value.is_some_and(|v| values.contains(v)),
                    Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// Reads every NetworkPolicy in `text`: one or more YAML documents separated by `---` (JSON is
/// YAML too), each a NetworkPolicy or a `List` of them; empty documents are skipped. Policies
/// without a namespace go into `default_namespace` (as kubectl's current namespace). All or
/// nothing: the first invalid document or policy refuses the whole input with its reason.
pub fn parse(text: &str, default_namespace: &str) -> Result<Vec<Policy>> {
    if text.len() > MAX_INPUT {
        return Err(invalid(
            0,
            None,
            "",
            format!("input is {} bytes, more than {MAX_INPUT}", text.len()),
        ));
    }
    dns_label(default_namespace).map_err(|r| invalid(0, None, "metadata.namespace", r))?;
    let mut policies = Vec::new();
    let mut names = BTreeSet::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| invalid(index, None, "", format!("not YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
        let objects = if matches!(kind, Some("List" | "NetworkPolicyList")) {
            let items = value
                .get("items")
                .and_then(serde_yaml::Value::as_sequence)
                .ok_or_else(|| invalid(index, None, "items", "a List needs items".into()))?;
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("items[{i}]."), v.clone()))
                .collect()
        } else {
            vec![(String::new(), value)]
        };
        for (prefix, value) in objects {
            let object: NetworkPolicy = serde_yaml::from_value(value.clone()).map_err(|e| {
                let (field, reason) = serde_path(&value, e);
                invalid(
                    index,
                    None,
                    format!("{prefix}{field}").trim_end_matches('.'),
                    reason,
                )
            })?;
            let policy = Policy::from_object(object, default_namespace).map_err(|e| match e {
                Error::InvalidPolicy {
                    policy,
                    field,
                    reason,
                    ..
                } => Error::InvalidPolicy {
                    document: index,
                    policy,
                    field: format!("{prefix}{field}"),
                    reason,
                },
                other => other,
            })?;
            if !names.insert(policy.id.clone()) {
                return Err(invalid(
                    index,
                    Some(&policy.id),
                    &format!("{prefix}metadata.name"),
                    "a policy of this name comes earlier in the same input".into(),
                ));
            }
            policies.push(policy);
        }
    }
    Ok(policies)
}

/// The field path and message of a serde error. serde_yaml tracks the path only when it reads
/// text, so the (already parsed) document is read once more from its own serialisation; the
/// line numbers of that text mean nothing to the user and are cut off.
fn serde_path(value: &serde_yaml::Value, first: serde_yaml::Error) -> (String, String) {
    let again = serde_yaml::to_string(value)
        .ok()
        .and_then(|text| serde_yaml::from_str::<NetworkPolicy>(&text).err());
    let message = again.unwrap_or(first).to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => &message,
    };
    // "spec.ingress[0]: unknown field `fromm`, ..." (no path: the error is at the top).
    match message.split_once(": ") {
        Some((path, reason)) if !path.is_empty() && !path.contains(' ') && !path.contains('`') => {
            (path.to_owned(), reason.to_owned())
        }
        _ => (String::new(), message.to_owned()),
    }
}

fn invalid(document: usize, policy: Option<&PolicyName>, field: &str, reason: String) -> Error {
    Error::InvalidPolicy {
        document,
        policy: policy.map(ToString::to_string),
        field: field.to_owned(),
        reason,
    }
}

/// Collects the first error with its field path while checking one object.
struct Check<'a> {
    policy: Option<&'a PolicyName>,
}

type Checked<T> = std::result::Result<T, (String, String)>;

fn fail<T>(field: impl Into<String>, reason: impl Into<String>) -> Checked<T> {
    Err((field.into(), reason.into()))
}

impl Policy {
    /// Checks one object and applies the API's defaults. `default_namespace` is used when
    /// `metadata.namespace` is missing.
    pub fn from_object(object: NetworkPolicy, default_namespace: &str) -> Result<Policy> {
        let id = object.metadata.name.as_ref().map(|name| PolicyName {
            namespace: object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned()),
            name: name.clone(),
        });
        let check = Check {
            policy: id.as_ref(),
        };
        check
            .policy(&object)
            .map_err(|(field, reason)| invalid(0, check.policy, &field, reason))
    }

    /// The namespace and name.
    pub fn name(&self) -> &PolicyName {
        &self.id
    }
}

impl Check<'_> {
    fn policy(&self, object: &NetworkPolicy) -> Checked<Policy> {
        match object.api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(other) => return fail("apiVersion", format!("{other:?} is not {API_VERSION}")),
            None => return fail("apiVersion", format!("required ({API_VERSION})")),
        }
        match object.kind.as_deref() {
            Some("NetworkPolicy") => {}
            Some(other) => return fail("kind", format!("{other:?} is not NetworkPolicy")),
            None => return fail("kind", "required (NetworkPolicy)"),
        }
        let Some(id) = self.policy.cloned() else {
            return fail("metadata.name", "required");
        };
        dns_subdomain(&id.name).map_err(|r| ("metadata.name".to_owned(), r))?;
        dns_label(&id.namespace).map_err(|r| ("metadata.namespace".to_owned(), r))?;
        let Some(spec) = &object.spec else {
            return fail("spec", "required");
        };
        let Some(pod_selector) = &spec.pod_selector else {
            return fail("spec.podSelector", "required ({} selects every pod)");
        };
        let pod_selector = selector(pod_selector, "spec.podSelector")?;

        // policyTypes: as given, or Ingress, plus Egress if there are egress rules.
        let (mut ingress_on, mut egress_on) = (false, false);
        match &spec.policy_types {
            Some(types) if !types.is_empty() => {
                if types.len() > 2 {
                    return fail("spec.policyTypes", "at most two entries");
                }
                for (i, t) in types.iter().enumerate() {
                    let field = format!("spec.policyTypes[{i}]");
                    let on = match t.as_str() {
                        "Ingress" => &mut ingress_on,
                        "Egress" => &mut egress_on,
                        _ => return fail(field, format!("{t:?} is not Ingress or Egress")),
                    };
                    if *on {
                        return fail(field, format!("{t} given twice"));
                    }
                    *on = true;
                }
            }
            _ => {
                ingress_on = true;
                egress_on = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
        }

        // Rules are checked even where policyTypes leaves them unused, as the API does.
        let ingress = rules(
            spec.ingress.as_deref().unwrap_or_default(),
            "spec.ingress",
            "from",
            |r| (r.from.as_deref(), r.ports.as_deref()),
        )?;
        let egress = rules(
            spec.egress.as_deref().unwrap_or_default(),
            "spec.egress",
            "to",
            |r| (r.to.as_deref(), r.ports.as_deref()),
        )?;
        Ok(Policy {
            id,
            pod_selector,
            ingress: ingress_on.then_some(ingress),
            egress: egress_on.then_some(egress),
            source: object.clone(),
        })
    }
}

fn rules<R>(
    raw: &[R],
    field: &str,
    peers_name: &str,
    parts: impl Fn(&R) -> (Option<&[PolicyPeer]>, Option<&[PolicyPort]>),
) -> Checked<Vec<Rule>> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("{field}[{i}]");
            let (peers, ports) = parts(r);
            let peers = match peers {
                None | Some([]) => None,
                Some(list) => Some(
                    list.iter()
                        .enumerate()
                        .map(|(j, p)| peer(p, &format!("{field}.{peers_name}[{j}]")))
                        .collect::<Checked<Vec<_>>>()?,
                ),
            };
            let ports = match ports {
                None | Some([]) => None,
                Some(list) => Some(
                    list.iter()
                        .enumerate()
                        .map(|(j, p)| port(p, &format!("{field}.ports[{j}]")))
                        .collect::<Checked<Vec<_>>>()?,
                ),
            };
            Ok(Rule { peers, ports })
        })
        .collect()
}

fn peer(raw: &PolicyPeer, field: &str) -> Checked<Peer> {
    match (&raw.pod_selector, &raw.namespace_selector, &raw.ip_block) {
        (None, None, None) => fail(
            field,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => fail(
            field,
            "ipBlock cannot be combined with podSelector or namespaceSelector",
        ),
        (None, None, Some(block)) => ip_block(block, &format!("{field}.ipBlock")),
        (pods, namespaces, None) => Ok(Peer::Pods {
            pods: pods
                .as_ref()
                .map(|s| selector(s, &format!("{field}.podSelector")))
                .transpose()?,
            namespaces: namespaces
                .as_ref()
                .map(|s| selector(s, &format!("{field}.namespaceSelector")))
                .transpose()?,
        }),
    }
}

fn parse_cidr(text: &str, field: &str) -> Checked<IpNet> {
    text.parse::<IpNet>().map(|net| net.trunc()).or_else(|_| {
        // A bare address is not a CIDR for the API.
        if text.parse::<IpAddr>().is_ok() {
            fail(
                field,
                format!("{text:?} has no prefix length (e.g. {text}/32)"),
            )
        } else {
            fail(field, format!("{text:?} is not a CIDR"))
        }
    })
}

fn ip_block(raw: &IpBlock, field: &str) -> Checked<Peer> {
    let cidr = parse_cidr(&raw.cidr, &format!("{field}.cidr"))?;
    let mut except = Vec::new();
    for (i, e) in raw.except.iter().flatten().enumerate() {
        let efield = format!("{field}.except[{i}]");
        let net = parse_cidr(e, &efield)?;
        if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
            return fail(
                efield,
                format!("{e} must be a strict subset of cidr {cidr}"),
            );
        }
        except.push(net);
    }
    Ok(Peer::IpBlock { cidr, except })
}

fn port(raw: &PolicyPort, field: &str) -> Checked<PortSpec> {
    let protocol = match raw.protocol.as_deref() {
        None => Protocol::Tcp,
        Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            return fail(
                format!("{field}.protocol"),
                format!("{other:?} is not TCP, UDP or SCTP"),
            )
        }
    };
    let number = |n: i64, f: &str| -> Checked<u16> {
        match u16::try_from(n) {
            Ok(p) if p > 0 => Ok(p),
            _ => fail(
                format!("{field}.{f}"),
                format!("{n} is not a port (1-65535)"),
            ),
        }
    };
    let port = match (&raw.port, raw.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => return fail(format!("{field}.endPort"), "endPort needs a port"),
        (Some(IntOrString::Int(n)), end) => {
            let start = number(*n, "port")?;
            let end = match end {
                None => start,
                Some(e) => {
                    let e = number(e, "endPort")?;
                    if e < start {
                        return fail(
                            format!("{field}.endPort"),
                            format!("{e} is below port {start}"),
                        );
                    }
                    e
                }
            };
            PortMatch::Range(start, end)
        }
        (Some(IntOrString::String(name)), None) => {
            port_name(name).map_err(|r| (format!("{field}.port"), r))?;
            PortMatch::Named(name.clone())
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            return fail(
                format!("{field}.endPort"),
                "endPort needs a numeric port, not a named one",
            )
        }
    };
    Ok(PortSpec { protocol, port })
}

fn selector(raw: &LabelSelector, field: &str) -> Checked<Selector> {
    let mut match_labels = Labels::new();
    for (k, v) in raw.match_labels.iter().flatten() {
        let f = format!("{field}.matchLabels");
        label_key(k).map_err(|r| (f.clone(), r))?;
        label_value(v).map_err(|r| (format!("{f}.{k}"), r))?;
        match_labels.insert(k.clone(), v.clone());
    }
    let mut expressions = Vec::new();
    for (i, e) in raw.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        label_key(&e.key).map_err(|r| (format!("{f}.key"), r))?;
        let values = e.values.as_deref().unwrap_or_default();
        let set = || -> Checked<BTreeSet<String>> {
            if values.is_empty() {
                return fail(
                    format!("{f}.values"),
                    format!("operator {} needs at least one value", e.operator),
                );
            }
            for (j, v) in values.iter().enumerate() {
                label_value(v).map_err(|r| (format!("{f}.values[{j}]"), r))?;
            }
            Ok(values.iter().cloned().collect())
        };
        let none = || -> Checked<()> {
            if values.is_empty() {
                Ok(())
            } else {
                fail(
                    format!("{f}.values"),
                    format!("operator {} takes no values", e.operator),
                )
            }
        };
        let op = match e.operator.as_str() {
            "In" => Operator::In(set()?),
            "NotIn" => Operator::NotIn(set()?),
            "Exists" => none().map(|()| Operator::Exists)?,
            "DoesNotExist" => none().map(|()| Operator::DoesNotExist)?,
            other => {
                return fail(
                    format!("{f}.operator"),
                    format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                )
            }
        };
        expressions.push(Expression {
            key: e.key.clone(),
            op,
        });
    }
    Ok(Selector {
        match_labels,
        expressions,
    })
}

// ---------------------------------------------------------------------------------------------
// Names, as the API checks them.

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label(s: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_alnum(c) || c == '-')
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum);
    ok.then_some(()).ok_or_else(|| {
        format!("{s:?} is not a DNS label (1-63 of a-z, 0-9, '-', alphanumeric at both ends)")
    })
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated labels.
pub fn dns_subdomain(s: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok());
    ok.then_some(())
        .ok_or_else(|| format!("{s:?} is not a DNS subdomain (at most 253 of a-z, 0-9, '-', '.')"))
}

fn qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name 1-63 of `[A-Za-z0-9-_.]`.
pub fn label_key(s: &str) -> std::result::Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| dns_subdomain(p).is_err()) || !qualified_name_part(name) {
        return Err(format!(
            "{s:?} is not a label key ([prefix/]name; name 1-63 of A-Z, a-z, 0-9, '-', '_', '.', alphanumeric at both ends)"
        ));
    }
    Ok(())
}

/// A label value: empty, or like the name part of a key.
pub fn label_value(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || qualified_name_part(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a label value (at most 63 of A-Z, a-z, 0-9, '-', '_', '.', alphanumeric at both ends)"
        ))
    }
}

/// A port name (IANA_SVC_NAME): 1-15 of `[a-z0-9-]`, at least one letter, no `--`, no '-'
/// at either end.
pub fn port_name(s: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars().all(|c| is_alnum(c) || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then_some(())
        .ok_or_else(|| format!("{s:?} is not a port name (1-15 of a-z, 0-9, '-', with a letter)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

    fn refused(body: &str) -> (String, String) {
        match parse(&format!("{HEAD}{body}"), "default") {
            Err(Error::InvalidPolicy { field, reason, .. }) => (field, reason),
            other => panic!("expected a refusal for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_field_and_the_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("spec: {}", "spec.podSelector", "required"),
            (
                "spec: {podSelector: {}, ingress: [{from: [{}]}]}",
                "spec.ingress[0].from[0]",
                "needs podSelector",
            ),
            (
                "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
                "spec.ingress[0].from[0]",
                "cannot be combined",
            ),
            (
                "spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]}",
                "spec.egress[0].to[0].ipBlock.except[0]",
                "strict subset",
            ),
            (
                "spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.1}}]}]}",
                "spec.egress[0].to[0].ipBlock.cidr",
                "no prefix length",
            ),
            (
                "spec: {podSelector: {}, ingress: [{ports: [{port: 80}, {port: 90, endPort: 80}]}]}",
                "spec.ingress[0].ports[1].endPort",
                "below port 90",
            ),
            (
                "spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 80}]}]}",
                "spec.ingress[0].ports[0].endPort",
                "numeric port",
            ),
            (
                "spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
                "spec.ingress[0].ports[0].port",
                "not a port",
            ),
            (
                "spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
                "spec.ingress[0].ports[0].protocol",
                "not TCP, UDP or SCTP",
            ),
            (
                "spec: {podSelector: {}, ingress: [{ports: [{port: Not_A_Name}]}]}",
                "spec.ingress[0].ports[0].port",
                "not a port name",
            ),
            (
                "spec: {podSelector: {matchExpressions: [{key: app, operator: In}]}}",
                "spec.podSelector.matchExpressions[0].values",
                "at least one value",
            ),
            (
                "spec: {podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}",
                "spec.podSelector.matchExpressions[0].values",
                "takes no values",
            ),
            (
                "spec: {podSelector: {matchExpressions: [{key: app, operator: Is, values: [a]}]}}",
                "spec.podSelector.matchExpressions[0].operator",
                "not In, NotIn",
            ),
            (
                "spec: {podSelector: {matchLabels: {app: -bad-}}}",
                "spec.podSelector.matchLabels.app",
                "not a label value",
            ),
            (
                "spec: {podSelector: {}, policyTypes: [Ingress, Ingress]}",
                "spec.policyTypes[1]",
                "given twice",
            ),
            (
                "spec: {podSelector: {}, policyTypes: [Sideways]}",
                "spec.policyTypes[0]",
                "not Ingress or Egress",
            ),
        ];
        for (body, field, reason) in cases {
            let (f, r) = refused(body);
            assert_eq!(&f, field, "{body}: {r}");
            assert!(r.contains(reason), "{body}: {r:?} lacks {reason:?}");
        }
    }

    #[test]
    fn serde_errors_carry_their_path() {
        let err = parse(
            &format!("{HEAD}spec: {{podSelector: {{}}, ingress: [{{fromm: []}}]}}"),
            "default",
        )
        .expect_err("unknown field");
        let text = err.to_string();
        assert!(text.contains("spec.ingress[0]"), "{text}");
        assert!(text.contains("unknown field `fromm`"), "{text}");
        assert!(text.starts_with("document 1"), "{text}");
    }

    #[test]
    fn one_bad_document_refuses_all() {
        let good = format!("{HEAD}spec: {{podSelector: {{}}}}\n");
        let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n";
        let err = parse(&format!("{good}---\n{bad}"), "default").expect_err("second is bad");
        match err {
            Error::InvalidPolicy {
                document, policy, ..
            } => {
                assert_eq!(document, 1);
                assert_eq!(policy.as_deref(), Some("default/q"));
            }
            other => panic!("{other:?}"),
        }
        let dup = parse(&format!("{good}---\n{good}"), "default").expect_err("twice");
        assert!(dup.to_string().contains("comes earlier"), "{dup}");
    }

    #[test]
    fn defaults_and_lists() {
        let text = format!(
            "---\n{HEAD}spec: {{podSelector: {{}}, egress: [{{}}]}}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {{name: q, uid: abc, resourceVersion: '1'}}\n  spec:\n    podSelector: {{}}\n    egress: []\n    ingress:\n    - ports: [{{port: 53, protocol: UDP}}, {{}}]\n"
        );
        let p = parse(&text, "dflt").expect("valid");
        assert_eq!(p.len(), 2);
        // Egress rules present and no policyTypes: both directions.
        assert!(p[0].ingress.as_ref().is_some_and(Vec::is_empty));
        assert_eq!(p[0].egress.as_ref().map(Vec::len), Some(1));
        // `egress: []` does not make an egress policy; the namespace defaults.
        assert_eq!(p[1].id.to_string(), "dflt/q");
        assert!(p[1].egress.is_none());
        let ports = p[1].ingress.as_ref().expect("ingress")[0]
            .ports
            .clone()
            .expect("ports");
        assert_eq!(
            ports,
            vec![
                PortSpec {
                    protocol: Protocol::Udp,
                    port: PortMatch::Range(53, 53)
                },
                PortSpec {
                    protocol: Protocol::Tcp,
                    port: PortMatch::Any
                },
            ]
        );
        assert!(parse("", "default").expect("nothing").is_empty());
        assert!(parse("x", "bad/ns").is_err());
    }

    /// The examples of the Kubernetes documentation's NetworkPolicy page, as they stand.
    #[test]
    fn kubernetes_documentation_example() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
"#;
        let p = parse(text, "default").expect("the documentation's example");
        assert_eq!(p[0].id.to_string(), "default/test-network-policy");
        assert_eq!(
            p[0].ingress
                .as_ref()
                .map(|r| r[0].peers.as_ref().map(Vec::len)),
            Some(Some(3))
        );
    }

    /// Aliases that would expand to billions of nodes, and deep nesting: refused quickly.
    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + i - 1) as char;
            let name = (b'a' + i) as char;
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let start = std::time::Instant::now();
        assert!(parse(&bomb, "default").is_err());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&deep, "default").is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    fn yaml_fragment() -> impl Strategy<Value = String> {
        let pieces = proptest::sample::select(vec![
            "apiVersion: networking.k8s.io/v1\n",
            "kind: NetworkPolicy\n",
            "kind: List\nitems:\n- ",
            "metadata: {name: a}\n",
            "metadata: {name: b, namespace: y}\n",
            "spec:\n",
            "  podSelector: {}\n",
            "  podSelector: {matchExpressions: [{key: k, operator: NotIn, values: [v]}]}\n",
            "  ingress:\n",
            "  egress:\n",
            "  - from: [{podSelector: {}}]\n",
            "  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n",
            "    ports: [{port: 80, endPort: 90}, {port: http, protocol: SCTP}]\n",
            "  policyTypes: [Egress]\n",
            "---\n",
            "- \n",
            "{",
            "&a x\n",
            "*a\n",
            "\t",
        ]);
        proptest::collection::vec(pieces, 0..24).prop_map(|v| v.concat())
    }

    /// Whatever parses reads back the same from its own serialisation.
    fn roundtrips(text: &str) {
        if let Ok(policies) = parse(text, "default") {
            for p in policies {
                let again = serde_yaml::to_string(&p.source).expect("serialise");
                let back = parse(&again, "default").expect("own output parses");
                assert_eq!(back.len(), 1);
                assert_eq!(back[0].id, p.id);
                assert_eq!(back[0].pod_selector, p.pod_selector);
                assert_eq!(back[0].ingress, p.ingress);
                assert_eq!(back[0].egress, p.egress);
            }
        }
    }

    proptest! {
        /// Fragments of policies in any order: never a panic; what parses round-trips.
        #[test]
        fn parse_never_panics_and_roundtrips(text in yaml_fragment()) {
            roundtrips(&text);
        }
    }

    /// Fuzz target: any bytes. The parser answers (no panic, no hang); what it accepts
    /// round-trips through its own serialisation.
    #[test]
    fn fuzz_parse_any_input() {
        bolero::check!()
            .with_iterations(3000)
            .for_each(|bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                roundtrips(&text);
            });
    }
}
