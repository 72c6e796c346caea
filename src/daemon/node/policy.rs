//! The node's side of network policy: it owns the policy core (`daemon::policy::core`),
//! feeds it members, records and messages, answers `weft policy`, and hands the compiler's
//! inputs to the reconciler ([`Node::poll_policy_inputs`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use tracing::debug;
use weft_gossip::frame::{self, Channel};
use weft_gossip::{NodeId, TransmitKind};
use weft_mesh::policy::{self, Cluster, Endpoint, PolicyName, Scope};

use super::{Node, Transmit};
use crate::daemon::api::{PolicyStatus, Response};
use crate::daemon::policy::core as policy_core;
pub(super) use crate::daemon::policy::core::PODS_LABEL;
use crate::daemon::policy::{
    parse_port, Change, InputSource, PodIdentity, PolicyAnswer, PolicyCore, PolicyInputs,
    PolicyReport, PolicyRequest, PolicySummary,
};

fn wall_ms(wall: SystemTime) -> u64 {
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `NAMESPACE/NAME`, or `NAME` in `default`.
fn policy_name(text: &str) -> Result<PolicyName, String> {
    let (namespace, name) = text.split_once('/').unwrap_or(("default", text));
    policy::spec::dns_label(namespace)?;
    policy::spec::dns_subdomain(name)?;
    Ok(PolicyName {
        namespace: namespace.into(),
        name: name.into(),
    })
}

impl Node {
    /// Gives the node its policy core (without one, `weft policy` is refused).
    pub fn with_policy(mut self, core: PolicyCore) -> Self {
        self.policy = Some(core);
        self.policy_dirty = true;
        self
    }

    /// Gives a running node its policy core (tests).
    #[cfg(test)]
    pub(super) fn enable_policy(&mut self, core: PolicyCore) {
        self.policy = Some(core);
        self.policy_dirty = true;
    }

    /// What the policy reconciler reported last (drops, rules, errors).
    pub fn handle_policy_report(&mut self, report: PolicyReport) {
        self.policy_report = report;
    }

    /// The compiler's inputs, when they changed since the last call.
    #[must_use]
    pub fn poll_policy_inputs(&mut self) -> Option<PolicyInputs> {
        let changed = self.policy_dirty || self.policy.as_ref().is_some_and(|p| p.changed());
        if !changed {
            return None;
        }
        if self.on_kubernetes() {
            // Until the API's lists are in there is nothing to publish: the reconciler keeps
            // the tables in force (from before a restart) rather than opening them.
            let kube = self.kube_policy()?;
            let inputs = PolicyInputs {
                source: InputSource::Kube,
                cluster: self.policy_cluster(false)?,
                node: kube.node.clone(),
            };
            self.policy_dirty = false;
            if let Some(p) = self.policy.as_mut() {
                p.mark_published();
            }
            return Some(inputs);
        }
        self.policy_dirty = false;
        let cluster = self.policy_cluster(false)?;
        if let Some(p) = self.policy.as_mut() {
            p.mark_published();
        }
        Some(PolicyInputs {
            source: InputSource::Gossip,
            cluster,
            node: self.core.local_id().to_string(),
        })
    }

    /// The new contents of `policy.json`, when what the node holds changed.
    #[must_use]
    pub fn poll_policy_persist(&mut self) -> Option<Vec<u8>> {
        self.policy.as_mut()?.poll_persist()
    }

    /// Alive and suspect members: whom news are pushed to.
    fn policy_members(&self) -> Vec<NodeId> {
        self.core.live_members().collect()
    }

    /// After every input: anti-entropy when due, the policy core's messages out.
    pub(super) fn policy_process(&mut self, now: Instant, members_changed: bool) {
        let Some(due) = self
            .policy
            .as_ref()
            .map(|p| p.poll_timeout().is_none_or(|t| now >= t))
        else {
            return;
        };
        if members_changed {
            // Who is in the cluster decides whose pods count.
            self.policy_dirty = true;
            let stamps: Vec<(NodeId, u64)> = self
                .core
                .members()
                .filter_map(|m| {
                    let stamp = m.record.labels.get(PODS_LABEL)?;
                    Some((m.record.node_id, u64::from_str_radix(stamp, 16).ok()?))
                })
                .collect();
            if let Some(p) = self.policy.as_mut() {
                for (id, stamp) in stamps {
                    p.handle_record(id, stamp);
                }
            }
        }
        let members = if due {
            self.policy_members()
        } else {
            Vec::new()
        };
        let Some(p) = self.policy.as_mut() else {
            return;
        };
        if due {
            p.handle_timeout(now, &members);
        }
        let mut out = Vec::new();
        while let Some(t) = p.poll_transmit() {
            out.push(t);
        }
        for (to, bytes) in out {
            let Some(record) = self.core.record(&to) else {
                debug!(node = %to.short(), "policy message for an unknown node dropped");
                continue;
            };
            self.transmits.push_back(Transmit {
                dst: record.gossip_addr,
                node: Some(to),
                kind: TransmitKind::Stream,
                bytes: frame::frame(Channel::Policy, &bytes),
            });
        }
    }

    /// A message on the policy channel from `node`.
    pub(super) fn policy_message(&mut self, node: NodeId, payload: &[u8]) -> Result<(), String> {
        match self.policy.as_mut() {
            Some(p) => p.handle_message(node, payload),
            None => Err("network policy is off on this node".into()),
        }
    }

    /// The record label with this node's pods stamp, if it has one.
    pub(super) fn pods_label(&self) -> Option<String> {
        self.policy.as_ref()?.pods_stamp().map(|s| format!("{s:x}"))
    }

    /// This node's pods, from the pods layer.
    pub(super) fn set_local_pods(&mut self, wall: SystemTime, pods: Vec<PodIdentity>) {
        let members = self.policy_members();
        if let Some(p) = self.policy.as_mut() {
            p.set_local_pods(wall_ms(wall), pods, &members);
        }
    }

    /// The node's policy status for `weft status` and /metrics.
    pub(super) fn policy_status(&self) -> PolicyStatus {
        let r = &self.policy_report;
        let (policies, refused) = match (self.on_kubernetes(), self.kube_policy()) {
            (true, Some(k)) => (k.policies.len(), k.refused.len() as u64),
            (true, None) => (0, 0),
            (false, _) => (
                self.policy.as_ref().map_or(0, |p| p.policies().len()),
                self.policy.as_ref().map_or(0, PolicyCore::refused),
            ),
        };
        PolicyStatus {
            policies,
            rules: r.rules,
            drops: r.drops.clone(),
            spoofed: r.spoofed,
            refused,
            repairs: r.repairs,
            error: r.error.clone(),
        }
    }

    /// The compiler's inputs: pods of this node and of members that have not left for
    /// good; with `with_nodes`, the nodes' own addresses (only `why` needs them).
    /// On Kubernetes: the API's policies, pods and namespaces, and nodes by name.
    pub(super) fn policy_cluster(&self, with_nodes: bool) -> Option<Cluster> {
        let p = self.policy.as_ref()?;
        if self.on_kubernetes() {
            let k = self.kube_policy()?;
            let mut pods = k.pods.clone();
            // The API does not know a pod's bridge port; this node's attachments do (CNI's
            // K8S_POD_NAMESPACE and NAME): with it, the pod's forged sources are dropped.
            let attached = p.pods();
            let attached = attached.get(&self.core.local_id()).copied().unwrap_or(&[]);
            for pod in pods.iter_mut().filter(|pod| pod.node == k.node) {
                pod.interface = attached
                    .iter()
                    .find(|a| {
                        a.namespace == pod.namespace
                            && a.name == pod.name
                            && a.addresses.iter().any(|x| pod.addresses.contains(x))
                    })
                    .and_then(|a| a.interface.clone());
            }
            return Some(Cluster {
                policies: k.policies.clone(),
                pods,
                namespaces: k.namespaces.clone(),
                nodes: if with_nodes {
                    self.policy_nodes(true)
                } else {
                    Vec::new()
                },
            });
        }
        let local = self.core.local_id();
        let keep = |id: &NodeId| {
            *id == local
                || self
                    .core
                    .member(id)
                    .is_some_and(|m| m.leave_reason != Some(weft_gossip::LeaveReason::Leaving))
        };
        let nodes = if with_nodes {
            self.policy_nodes(false)
        } else {
            Vec::new()
        };
        Some(p.cluster_view(nodes, keep))
    }

    /// Each node's own addresses: its host addresses in its record and the first address of
    /// each of its address blocks (its gateway is one of them). Named by node id, or
    /// `by_name` by the node's name (Kubernetes pods name their Node).
    fn policy_nodes(&self, by_name: bool) -> Vec<policy::Node> {
        let spaces = self.spaces();
        let mut out = Vec::new();
        let local = self.core.local_record();
        let ids =
            std::iter::once(local.node_id).chain(self.core.members().map(|m| m.record.node_id));
        for id in ids {
            let Some(record) = self.core.record(&id) else {
                continue;
            };
            let mut addrs: BTreeSet<IpAddr> = record
                .endpoints
                .local
                .iter()
                .chain(&record.endpoints.configured)
                .map(|a| a.ip())
                .collect();
            addrs.insert(record.gossip_addr.ip());
            for space in spaces.get(&id).into_iter().flatten() {
                addrs.insert(space.network().into());
            }
            if id == local.node_id {
                for space in self.local_spaces() {
                    addrs.insert(space.network().into());
                }
            }
            addrs.retain(|a| !a.is_unspecified());
            let mut node = policy_core::node(&id, addrs);
            if by_name {
                node.name = record.name.clone();
            }
            out.push(node);
        }
        out
    }

    /// Answers `weft policy ...`.
    pub(super) fn policy_request(
        &mut self,
        wall: SystemTime,
        request: PolicyRequest,
    ) -> Result<Response, String> {
        let members = self.policy_members();
        let names: std::collections::HashMap<NodeId, String> =
            std::iter::once((self.core.local_id(), self.core.local_record().name.clone()))
                .chain(
                    self.core
                        .members()
                        .map(|m| (m.record.node_id, m.record.name.clone())),
                )
                .collect();
        if self.on_kubernetes() {
            return self.kube_policy_request(request);
        }
        let drops = self.policy_report.drops.clone();
        let report = self.policy_report.clone();
        let Some(core) = self.policy.as_mut() else {
            return Err("network policy is off on this node".into());
        };
        let changed = |changes: Vec<(String, String)>| Response::Policy {
            ok: true,
            policy: PolicyAnswer::Changed {
                changes: changes
                    .into_iter()
                    .map(|(name, action)| Change { name, action })
                    .collect(),
            },
        };
        let summary =
            |p: &policy::Policy, stamp: crate::daemon::policy::statement::Stamp| PolicySummary {
                applied_by: names
                    .get(&stamp.node)
                    .cloned()
                    .unwrap_or_else(|| stamp.node.short()),
                applied_at_ms: stamp.time_ms,
                ..summarize(p, drops.get(&p.id.to_string()))
            };
        match request {
            PolicyRequest::Apply { yaml, namespace } => {
                let namespace = namespace.as_deref().unwrap_or("default");
                let policies = policy::parse(&yaml, namespace).map_err(|e| e.to_string())?;
                if policies.is_empty() {
                    return Err("no NetworkPolicy in the input".into());
                }
                let out = core.apply(wall_ms(wall), policies, &members)?;
                Ok(changed(out.changes))
            }
            PolicyRequest::Delete { name } => {
                let name = policy_name(&name)?;
                let out = core.delete(wall_ms(wall), &name, &members)?;
                Ok(changed(out.changes))
            }
            PolicyRequest::Namespace {
                name: Some(name),
                labels: Some(labels),
            } => {
                policy::spec::dns_label(&name)?;
                let out = core.label_namespace(wall_ms(wall), &name, labels, &members)?;
                Ok(changed(out.changes))
            }
            PolicyRequest::Namespace { name, .. } => {
                let mut namespaces = core.namespace_labels();
                if let Some(name) = name {
                    namespaces.retain(|n, _| *n == name);
                }
                Ok(Response::Policy {
                    ok: true,
                    policy: PolicyAnswer::Namespaces { namespaces },
                })
            }
            PolicyRequest::List => {
                let policies = core
                    .policies()
                    .into_iter()
                    .filter_map(|p| core.policy(&p.id).map(|(p, s)| summary(p, s)))
                    .collect();
                Ok(Response::Policy {
                    ok: true,
                    policy: PolicyAnswer::List {
                        policies,
                        spoofed: report.spoofed,
                        rules: report.rules,
                        error: report.error,
                    },
                })
            }
            PolicyRequest::Get { name } => {
                let name = policy_name(&name)?;
                let (p, stamp) = core
                    .policy(&name)
                    .ok_or_else(|| format!("no policy {name}"))?;
                let object = serde_json::to_value(&p.source).map_err(|e| e.to_string())?;
                Ok(Response::Policy {
                    ok: true,
                    policy: PolicyAnswer::Get {
                        summary: summary(p, stamp),
                        object,
                    },
                })
            }
            PolicyRequest::Why { from, to, port } => self.policy_why(&from, &to, &port),
        }
    }

    /// `weft policy why`: what the cluster's policies say about one flow.
    fn policy_why(&self, from: &str, to: &str, port: &str) -> Result<Response, String> {
        let (protocol, port) = parse_port(port)?;
        let from: Endpoint = from.parse()?;
        let to: Endpoint = to.parse()?;
        let cluster = self
            .policy_cluster(true)
            .ok_or("network policy is off on this node")?;
        let compiled = policy::compile(&cluster, Scope::Cluster);
        let why = compiled
            .why(&from, &to, protocol, port)
            .map_err(|e| e.to_string())?;
        Ok(Response::Policy {
            ok: true,
            policy: PolicyAnswer::Why { why },
        })
    }

    /// `weft policy ...` on Kubernetes: the API is the source, so what would change it is
    /// refused (kubectl changes it) and the rest answers from what the API says.
    fn kube_policy_request(&self, request: PolicyRequest) -> Result<Response, String> {
        let refuse = |what: &str| {
            Err(format!(
                "this node follows the Kubernetes API for network policy: {what} with kubectl"
            ))
        };
        let (policies, namespaces) = match self.kube_policy() {
            Some(k) => (k.policies.as_slice(), &k.namespaces),
            None => {
                return Err(
                    "the Kubernetes Pod, Namespace and NetworkPolicy lists are not in yet".into(),
                )
            }
        };
        let summary = |p: &policy::Policy| {
            let mut s = summarize(p, self.policy_report.drops.get(&p.id.to_string()));
            s.applied_by = "kubernetes".into();
            s
        };
        match request {
            PolicyRequest::Apply { .. } => refuse("apply NetworkPolicies"),
            PolicyRequest::Delete { .. } => refuse("delete NetworkPolicies"),
            PolicyRequest::Namespace {
                labels: Some(_), ..
            } => refuse("label namespaces"),
            PolicyRequest::Namespace { name, .. } => {
                let mut namespaces = namespaces.clone();
                if let Some(name) = name {
                    namespaces.retain(|n, _| *n == name);
                }
                Ok(Response::Policy {
                    ok: true,
                    policy: PolicyAnswer::Namespaces { namespaces },
                })
            }
            PolicyRequest::List => Ok(Response::Policy {
                ok: true,
                policy: PolicyAnswer::List {
                    policies: policies.iter().map(summary).collect(),
                    spoofed: self.policy_report.spoofed,
                    rules: self.policy_report.rules,
                    error: self.policy_report.error.clone(),
                },
            }),
            PolicyRequest::Get { name } => {
                let name = policy_name(&name)?;
                let p = policies
                    .iter()
                    .find(|p| p.id == name)
                    .ok_or_else(|| format!("no NetworkPolicy {name} in the Kubernetes API"))?;
                let object = serde_json::to_value(&p.source).map_err(|e| e.to_string())?;
                Ok(Response::Policy {
                    ok: true,
                    policy: PolicyAnswer::Get {
                        summary: summary(p),
                        object,
                    },
                })
            }
            PolicyRequest::Why { from, to, port } => self.policy_why(&from, &to, &port),
        }
    }
}

/// A policy's line in `weft policy list` (who applied it and when are the caller's).
fn summarize(p: &policy::Policy, drops: Option<&u64>) -> PolicySummary {
    let mut types = Vec::new();
    if p.ingress.is_some() {
        types.push("Ingress".to_string());
    }
    if p.egress.is_some() {
        types.push("Egress".to_string());
    }
    PolicySummary {
        namespace: p.id.namespace.clone(),
        name: p.id.name.clone(),
        policy_types: types,
        ingress_rules: p.ingress.as_ref().map_or(0, Vec::len),
        egress_rules: p.egress.as_ref().map_or(0, Vec::len),
        applied_by: String::new(),
        applied_at_ms: 0,
        drops: drops.copied().unwrap_or(0),
    }
}
