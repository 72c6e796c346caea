//! Signed policy statements: what travels between nodes by gossip and what is kept in
//! `STATE_DIR/policy.json`.
//!
//! A statement says one thing about one [`Subject`]: a NetworkPolicy (by namespace and
//! name), a namespace's labels, or the pods of one node. Its body is JSON, signed (ed25519,
//! the node identity that signs the gossip records) by the node that made it, over a context
//! string and the exact body bytes, so what was signed is what is decoded. Statements about
//! one subject are ordered by their [`Stamp`] (hybrid time, then node id): the last writer
//! wins, a deletion is a statement without content (a tombstone).
//!
//! Everything that arrives is untrusted: [`Signed::verify`] checks the size, the signature,
//! the JSON and the content (a policy goes through the same parser as `weft policy apply`;
//! labels, names, addresses and ports are checked and bounded) and returns a [`Verified`]
//! statement or the reason it was refused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use weft_crypto::{IdentityKey, NodeId, Signature, SIGNATURE_LEN};
use weft_mesh::policy::spec::{self, Labels, NetworkPolicy};
use weft_mesh::policy::{NamedPort, Policy};

/// Signed over this context and the body bytes.
const CONTEXT: &[u8] = b"weft-policy-statement-v1\0";
/// Largest body of one statement: a node's pods at [`MAX_PODS_PER_NODE`] with a few labels
/// each take about 200 KiB; a policy a few KiB (kubectl's own bound on an object is 1.5 MiB).
pub const MAX_BODY_LEN: usize = 1 << 20;
/// Most pods one node publishes (its pod statement). A node with more publishes the first
/// this many (by key) and logs it.
pub const MAX_PODS_PER_NODE: usize = 1024;
/// Most labels on one pod or namespace.
pub const MAX_LABELS: usize = 64;
/// Most addresses of one pod.
pub const MAX_POD_ADDRESSES: usize = 4;
/// Most named ports of one pod.
pub const MAX_POD_PORTS: usize = 32;
/// Longest pod name (a Kubernetes name is a DNS subdomain, at most 253 bytes).
pub const MAX_POD_NAME: usize = 253;

/// What a statement is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Subject {
    /// A NetworkPolicy.
    Policy { namespace: String, name: String },
    /// A namespace's labels (`weft policy namespace NAME --label K=V`).
    Namespace { name: String },
    /// The pods attached to one node (only that node may say).
    Pods { node: NodeId },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Policy { namespace, name } => write!(f, "policy {namespace}/{name}"),
            Subject::Namespace { name } => write!(f, "namespace {name}"),
            Subject::Pods { node } => write!(f, "pods of {}", node.short()),
        }
    }
}

/// The order of statements about one subject: hybrid time (milliseconds since the epoch,
/// raised above anything the maker had seen), then the maker's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub time_ms: u64,
    pub node: NodeId,
}

/// One pod, as its node publishes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    pub addresses: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NamedPort>,
    /// The host side of its veth on its node (anti-spoofing there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

impl PodIdentity {
    /// Checks the bounds and syntax (namespace a DNS label, labels and port names as the API
    /// has them).
    pub fn check(&self) -> Result<(), String> {
        spec::dns_label(&self.namespace).map_err(|e| format!("namespace: {e}"))?;
        check_pod_name(&self.name)?;
        check_labels(&self.labels)?;
        if self.addresses.is_empty() || self.addresses.len() > MAX_POD_ADDRESSES {
            return Err(format!(
                "pod {}/{}: 1 to {MAX_POD_ADDRESSES} addresses",
                self.namespace, self.name
            ));
        }
        if self.ports.len() > MAX_POD_PORTS {
            return Err(format!(
                "pod {}: more than {MAX_POD_PORTS} ports",
                self.name
            ));
        }
        for p in &self.ports {
            spec::port_name(&p.name)?;
            if p.port == 0 {
                return Err(format!("port {}: 0 is no port", p.name));
            }
        }
        if let Some(i) = &self.interface {
            if !weft_mesh::policy::model::is_ifname(i) {
                return Err(format!("{i:?} is not an interface name"));
            }
        }
        Ok(())
    }
}

/// A pod name: 1 to [`MAX_POD_NAME`] printable bytes without '/' or blanks (a container name
/// given to `weft attach` need not be a DNS name).
pub fn check_pod_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POD_NAME
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    ok.then_some(())
        .ok_or_else(|| format!("{name:?} is not a pod name"))
}

/// Label keys and values as Kubernetes has them, at most [`MAX_LABELS`].
pub fn check_labels(labels: &Labels) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        spec::label_key(k)?;
        spec::label_value(v)?;
    }
    Ok(())
}

/// What a statement says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Content {
    /// The NetworkPolicy object, as applied.
    Policy(Box<NetworkPolicy>),
    Namespace(Labels),
    Pods(Vec<PodIdentity>),
}

/// The signed JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    subject: Subject,
    time_ms: u64,
    node: NodeId,
    /// `None`: the subject is deleted (a tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<Content>,
}

/// A statement as it travels and is stored: the body text and its signature (base64). Not
/// checked yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub body: String,
    pub sig: String,
}

/// A checked statement.
#[derive(Debug, Clone)]
pub struct Verified {
    pub subject: Subject,
    pub stamp: Stamp,
    pub content: Checked,
    pub signed: Signed,
}

/// A statement's content, checked.
#[derive(Debug, Clone)]
pub enum Checked {
    Policy(Box<Policy>),
    Namespace(Labels),
    Pods(Vec<PodIdentity>),
    Deleted,
}

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    TooLong(usize),
    SignatureEncoding,
    BadSignature,
    Malformed(String),
    Invalid { subject: String, reason: String },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::TooLong(n) => write!(f, "statement of {n} bytes, more than {MAX_BODY_LEN}"),
            Refused::SignatureEncoding => f.write_str("bad signature encoding"),
            Refused::BadSignature => f.write_str("signature does not verify"),
            Refused::Malformed(e) => write!(f, "not a statement: {e}"),
            Refused::Invalid { subject, reason } => write!(f, "{subject}: {reason}"),
        }
    }
}

impl std::error::Error for Refused {}

impl Signed {
    /// Makes and signs a statement about `subject` (`content` `None` deletes it).
    pub fn make(
        key: &IdentityKey,
        subject: Subject,
        time_ms: u64,
        content: Option<Content>,
    ) -> Result<Verified, Refused> {
        let body = Body {
            subject,
            time_ms,
            node: key.node_id(),
            content,
        };
        let body = serde_json::to_string(&body).map_err(|e| Refused::Malformed(e.to_string()))?;
        let signature = key.sign(&message(&body));
        let signed = Signed {
            body,
            sig: base64::engine::general_purpose::STANDARD.encode(signature.0),
        };
        // Our own statements pass the same checks as everyone else's.
        signed.verify()
    }

    /// Checks everything: size, signature, JSON, and what it says.
    pub fn verify(&self) -> Result<Verified, Refused> {
        if self.body.len() > MAX_BODY_LEN {
            return Err(Refused::TooLong(self.body.len()));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(self.sig.as_bytes())
            .ok()
            .and_then(|b| <[u8; SIGNATURE_LEN]>::try_from(b.as_slice()).ok())
            .ok_or(Refused::SignatureEncoding)?;
        let body: Body =
            serde_json::from_str(&self.body).map_err(|e| Refused::Malformed(e.to_string()))?;
        body.node
            .verify(&message(&self.body), &Signature(sig))
            .map_err(|_| Refused::BadSignature)?;
        let invalid = |reason: String| Refused::Invalid {
            subject: body.subject.to_string(),
            reason,
        };
        let content = match (&body.subject, body.content) {
            (Subject::Pods { node }, _) if *node != body.node => {
                return Err(invalid("only a node may speak for its pods".into()))
            }
            (_, None) => Checked::Deleted,
            (Subject::Policy { namespace, name }, Some(Content::Policy(object))) => {
                let policy =
                    Policy::from_object(*object, namespace).map_err(|e| invalid(e.to_string()))?;
                if policy.id.namespace != *namespace || policy.id.name != *name {
                    return Err(invalid(format!("the object is {}", policy.id)));
                }
                Checked::Policy(Box::new(policy))
            }
            (Subject::Namespace { name }, Some(Content::Namespace(labels))) => {
                spec::dns_label(name).map_err(invalid)?;
                check_labels(&labels).map_err(invalid)?;
                Checked::Namespace(labels)
            }
            (Subject::Pods { .. }, Some(Content::Pods(pods))) => {
                if pods.len() > MAX_PODS_PER_NODE {
                    return Err(invalid(format!("more than {MAX_PODS_PER_NODE} pods")));
                }
                for pod in &pods {
                    pod.check().map_err(invalid)?;
                }
                Checked::Pods(pods)
            }
            _ => return Err(invalid("content of another kind than the subject".into())),
        };
        Ok(Verified {
            subject: body.subject,
            stamp: Stamp {
                time_ms: body.time_ms,
                node: body.node,
            },
            content,
            signed: self.clone(),
        })
    }
}

fn message(body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(body.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn key(n: u8) -> IdentityKey {
        IdentityKey::from_seed(&[n; 32])
    }

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: lb}}}]\n";

    pub(crate) fn policy_statement(k: &IdentityKey, time_ms: u64) -> Verified {
        let policy = weft_mesh::policy::parse(POLICY, "default")
            .expect("valid")
            .remove(0);
        Signed::make(
            k,
            Subject::Policy {
                namespace: "shop".into(),
                name: "web".into(),
            },
            time_ms,
            Some(Content::Policy(Box::new(policy.source))),
        )
        .expect("our own statement verifies")
    }

    #[test]
    fn statements_round_trip_and_forgeries_are_refused() {
        let k = key(1);
        let s = policy_statement(&k, 5);
        assert_eq!(s.stamp.time_ms, 5);
        assert_eq!(s.stamp.node, k.node_id());
        assert!(matches!(s.content, Checked::Policy(_)));
        let again = s.signed.verify().expect("verifies again");
        assert_eq!(again.subject, s.subject);

        // A changed body, another signer's signature, a short signature.
        let mut forged = s.signed.clone();
        forged.body = forged.body.replace("\"web\"", "\"db\"");
        assert_eq!(forged.verify().expect_err("refused"), Refused::BadSignature);
        let other = policy_statement(&key(2), 5);
        let swapped = Signed {
            body: s.signed.body.clone(),
            sig: other.signed.sig.clone(),
        };
        assert_eq!(
            swapped.verify().expect_err("refused"),
            Refused::BadSignature
        );
        let short = Signed {
            body: s.signed.body.clone(),
            sig: "AAAA".into(),
        };
        assert_eq!(
            short.verify().expect_err("refused"),
            Refused::SignatureEncoding
        );
        let long = Signed {
            body: "x".repeat(MAX_BODY_LEN + 1),
            sig: s.signed.sig.clone(),
        };
        assert!(matches!(long.verify(), Err(Refused::TooLong(_))));
    }

    #[test]
    fn signed_but_invalid_content_is_refused() {
        let k = key(3);
        // A policy that does not pass the parser's checks.
        let mut object = weft_mesh::policy::parse(POLICY, "default")
            .expect("valid")
            .remove(0)
            .source;
        object.api_version = Some("v2".into());
        let bad = Signed::make(
            &k,
            Subject::Policy {
                namespace: "shop".into(),
                name: "web".into(),
            },
            1,
            Some(Content::Policy(Box::new(object.clone()))),
        );
        assert!(matches!(bad, Err(Refused::Invalid { .. })), "{bad:?}");
        // A policy under another name than its subject.
        object.api_version = Some("networking.k8s.io/v1".into());
        let renamed = Signed::make(
            &k,
            Subject::Policy {
                namespace: "shop".into(),
                name: "other".into(),
            },
            1,
            Some(Content::Policy(Box::new(object))),
        );
        assert!(
            matches!(renamed, Err(Refused::Invalid { .. })),
            "{renamed:?}"
        );
        // Pods of another node.
        let theirs = Signed::make(
            &k,
            Subject::Pods {
                node: key(4).node_id(),
            },
            1,
            Some(Content::Pods(vec![])),
        );
        assert!(matches!(theirs, Err(Refused::Invalid { .. })));
        // Bad labels, a pod without an address.
        let labels = Signed::make(
            &k,
            Subject::Namespace { name: "x".into() },
            1,
            Some(Content::Namespace(
                [("-bad".to_string(), "v".to_string())].into(),
            )),
        );
        assert!(matches!(labels, Err(Refused::Invalid { .. })));
        let pod = PodIdentity {
            namespace: "x".into(),
            name: "a".into(),
            labels: Labels::new(),
            addresses: vec![],
            ports: vec![],
            interface: None,
        };
        let pods = Signed::make(
            &k,
            Subject::Pods { node: k.node_id() },
            1,
            Some(Content::Pods(vec![pod])),
        );
        assert!(matches!(pods, Err(Refused::Invalid { .. })));
        // Content of another kind.
        let mixed = Signed::make(
            &k,
            Subject::Namespace { name: "x".into() },
            1,
            Some(Content::Pods(vec![])),
        );
        assert!(matches!(mixed, Err(Refused::Invalid { .. })));
    }

    /// Whatever arrives: never a panic; what verifies is exactly what its signer signed.
    fn check_any(body: &[u8], sig: &[u8]) {
        let signed = Signed {
            body: String::from_utf8_lossy(body).into_owned(),
            sig: String::from_utf8_lossy(sig).into_owned(),
        };
        if let Ok(v) = signed.verify() {
            assert_eq!(v.signed, signed);
        }
        let _ = serde_json::from_slice::<Signed>(body).map(|s| s.verify());
    }

    proptest! {
        #[test]
        fn arbitrary_statements_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512),
                                            sig in proptest::collection::vec(any::<u8>(), 0..120)) {
            check_any(&body, &sig);
        }

        #[test]
        fn a_changed_byte_breaks_the_signature(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let s = policy_statement(&key(7), 9);
            let mut body = s.signed.body.clone().into_bytes();
            let i = at.index(body.len());
            prop_assume!(body[i] != byte);
            body[i] = byte;
            let changed = Signed { body: String::from_utf8_lossy(&body).into_owned(), sig: s.signed.sig.clone() };
            prop_assert!(changed.verify().is_err());
        }
    }

    #[test]
    fn fuzz_statement_any_input() {
        bolero::check!().for_each(|input: &[u8]| {
            let (body, sig) = input.split_at(input.len() / 2);
            check_any(body, sig);
        });
    }
}
