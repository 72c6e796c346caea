//! The sans-IO policy core of a node: the cluster's signed policy statements (policies,
//! namespace labels, every node's pods), the commands that make new ones, and their gossip.
//!
//! - Inputs: [`PolicyCore::apply`], [`PolicyCore::delete`], [`PolicyCore::label_namespace`]
//!   (the `weft policy` commands, with the wall clock), [`PolicyCore::set_local_pods`] (this
//!   node's pods, from the pods layer), [`PolicyCore::handle_message`] (a message from a
//!   member, as the transport proved it), [`PolicyCore::handle_timeout`] with the members
//!   that are alive, [`PolicyCore::handle_record`] (a member's record says its pods changed).
//! - Outputs: [`PolicyCore::poll_transmit`] (bytes for a member, on the policy channel),
//!   [`PolicyCore::poll_persist`] (the file's new contents), [`PolicyCore::changed`] (the
//!   inputs of the compiler changed since the last [`PolicyCore::cluster`]).
//!
//! Gossip: a new statement is pushed to every live member at once; every
//! [`ANTI_ENTROPY`] one live member (round robin) gets the digest of everything held, and
//! a member that holds something else answers with all it has and asks for the same back
//! (push-pull, as the membership's anti-entropy). A member whose record shows a pods stamp
//! newer than the one held is asked for that one statement at once. Messages are JSON; a message
//! that does not decode, or a statement that does not verify, changes nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};
use weft_crypto::{IdentityKey, NodeId};
use weft_mesh::policy::spec::Labels;
use weft_mesh::policy::{Cluster, Node as PolicyNode, Pod, Policy, PolicyName};

use super::statement::{
    Checked, Content, PodIdentity, Refused, Signed, Stamp, Subject, Verified, MAX_PODS_PER_NODE,
};

/// How often one member gets this node's digest.
pub const ANTI_ENTROPY: Duration = Duration::from_secs(5);
/// Most statements held (policies, namespaces and nodes' pods together); news beyond it are
/// refused (updates of what is held are not).
pub const MAX_STATEMENTS: usize = 20_000;
/// Largest message sent: statements beyond it go in further messages (the transport takes
/// 4 MiB per stream message).
const MAX_MESSAGE: usize = 1 << 20;
/// Largest message read.
pub const MAX_MESSAGE_LEN: usize = 4 << 20;
/// The record label that carries this node's pods stamp (hybrid time, hex).
pub const PODS_LABEL: &str = "weft.pods";

/// A message on the policy channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
enum Message {
    /// News: merge them.
    Push { statements: Vec<Signed> },
    /// Anti-entropy: the digest of everything the sender holds.
    Digest { digest: String },
    /// Send me what you hold about these subjects (a record showed news of them).
    Want { subjects: Vec<Subject> },
    /// Everything the sender holds; with `reply`, send back everything if that differs.
    Sync {
        statements: Vec<Signed>,
        digest: String,
        reply: bool,
    },
}

/// One held statement.
#[derive(Debug, Clone)]
struct Entry {
    stamp: Stamp,
    content: Checked,
    signed: Signed,
}

/// The file `policy.json`.
#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    statements: Vec<Signed>,
}

/// What an apply, delete or label command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `namespace/name` (or the namespace) and what happened: created, configured,
    /// unchanged, deleted.
    pub changes: Vec<(String, String)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct PolicyCore {
    key: Arc<IdentityKey>,
    local: NodeId,
    entries: BTreeMap<Subject, Entry>,
    /// The highest time seen in any statement (the hybrid clock).
    clock_ms: u64,
    local_pods: Vec<PodIdentity>,
    transmits: VecDeque<(NodeId, Vec<u8>)>,
    persist: bool,
    changed: bool,
    next_sync: Option<Instant>,
    /// Round robin over members for anti-entropy.
    turn: usize,
    /// The pods stamp of each member last asked about.
    asked: BTreeMap<NodeId, u64>,
    refused: u64,
}

impl PolicyCore {
    /// A core holding what `file` (the contents of `policy.json`, if any) held. Statements
    /// that do not verify any more are dropped with a warning.
    pub fn new(key: Arc<IdentityKey>, file: Option<&[u8]>) -> PolicyCore {
        let local = key.node_id();
        let mut core = PolicyCore {
            key,
            local,
            entries: BTreeMap::new(),
            clock_ms: 0,
            local_pods: Vec::new(),
            transmits: VecDeque::new(),
            persist: false,
            changed: true,
            next_sync: None,
            turn: 0,
            asked: BTreeMap::new(),
            refused: 0,
        };
        if let Some(bytes) = file {
            match serde_json::from_slice::<File>(bytes) {
                Ok(f) if f.version == 1 => {
                    let mut dropped = 0;
                    for s in f.statements {
                        if core.offer(s).is_err() {
                            dropped += 1;
                        }
                    }
                    if dropped > 0 {
                        warn!(
                            dropped,
                            "policy statements in the state file that do not verify were dropped"
                        );
                    }
                    info!(
                        policies = core.policies().len(),
                        namespaces = core.namespace_labels().len(),
                        "policies restored"
                    );
                }
                _ => warn!("the policy state file is damaged: starting without policies"),
            }
        }
        // Only what came from outside needs writing.
        core.persist = false;
        core
    }

    // ---- getters ----

    /// The policies in force (not deleted), by name.
    pub fn policies(&self) -> Vec<&Policy> {
        self.entries
            .values()
            .filter_map(|e| match &e.content {
                Checked::Policy(p) => Some(&**p),
                _ => None,
            })
            .collect()
    }

    /// The policy `name`, with who applied it and when.
    pub fn policy(&self, name: &PolicyName) -> Option<(&Policy, Stamp)> {
        let subject = Subject::Policy {
            namespace: name.namespace.clone(),
            name: name.name.clone(),
        };
        match self.entries.get(&subject) {
            Some(Entry {
                content: Checked::Policy(p),
                stamp,
                ..
            }) => Some((p, *stamp)),
            _ => None,
        }
    }

    /// Namespaces' labels set with `weft policy namespace`.
    pub fn namespace_labels(&self) -> BTreeMap<String, Labels> {
        self.entries
            .iter()
            .filter_map(|(s, e)| match (s, &e.content) {
                (Subject::Namespace { name }, Checked::Namespace(l)) => {
                    Some((name.clone(), l.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Every node's pods as published (this node's own from what it was told last).
    pub fn pods(&self) -> BTreeMap<NodeId, &[PodIdentity]> {
        let mut out: BTreeMap<NodeId, &[PodIdentity]> = self
            .entries
            .iter()
            .filter_map(|(s, e)| match (s, &e.content) {
                (Subject::Pods { node }, Checked::Pods(p)) => Some((*node, p.as_slice())),
                _ => None,
            })
            .collect();
        out.insert(self.local, &self.local_pods);
        out
    }

    /// The stamp (hybrid time) of this node's pod statement, for its record.
    pub fn pods_stamp(&self) -> Option<u64> {
        self.entries
            .get(&Subject::Pods { node: self.local })
            .map(|e| e.stamp.time_ms)
    }

    /// Statements refused since start.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The compiler's inputs: policies, namespaces' labels, the pods of the nodes `keep`
    /// takes (with the node id as their node) and the nodes' own addresses (given by the
    /// caller).
    pub fn cluster_view(&self, nodes: Vec<PolicyNode>, keep: impl Fn(&NodeId) -> bool) -> Cluster {
        let mut pods = Vec::new();
        for (node, list) in self.pods() {
            if !keep(&node) {
                continue;
            }
            for p in list {
                pods.push(Pod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    addresses: p.addresses.clone(),
                    ports: p.ports.clone(),
                    node: node.to_string(),
                    interface: p.interface.clone(),
                });
            }
        }
        Cluster {
            policies: self.policies().into_iter().cloned().collect(),
            pods,
            namespaces: self.namespace_labels(),
            nodes,
        }
    }

    /// The inputs as they are now were handed on: [`PolicyCore::changed`] is false until
    /// they change again.
    pub fn mark_published(&mut self) {
        self.changed = false;
    }

    /// The compiler's inputs changed since [`PolicyCore::cluster`] was last called.
    pub fn changed(&self) -> bool {
        self.changed
    }

    // ---- commands ----

    /// Applies `policies` (already parsed and checked, all or nothing): each becomes a
    /// statement signed by this node, pushed to `members`.
    pub fn apply(
        &mut self,
        wall_ms: u64,
        policies: Vec<Policy>,
        members: &[NodeId],
    ) -> Result<Outcome, String> {
        let mut made = Vec::new();
        let mut changes = Vec::new();
        for policy in policies {
            let subject = Subject::Policy {
                namespace: policy.id.namespace.clone(),
                name: policy.id.name.clone(),
            };
            let what = match self.entries.get(&subject).map(|e| &e.content) {
                Some(Checked::Policy(old)) if old.source == policy.source => "unchanged",
                Some(Checked::Policy(_)) => "configured",
                _ => "created",
            };
            changes.push((policy.id.to_string(), what.to_string()));
            if what == "unchanged" {
                continue;
            }
            let time = self.tick(wall_ms);
            let s = Signed::make(
                &self.key,
                subject,
                time,
                Some(Content::Policy(Box::new(policy.source))),
            )
            .map_err(|e| e.to_string())?;
            made.push(s);
        }
        self.publish(made, members);
        Ok(Outcome { changes })
    }

    /// Deletes policy `name` everywhere (a tombstone). Deleting what is not there is an
    /// error.
    pub fn delete(
        &mut self,
        wall_ms: u64,
        name: &PolicyName,
        members: &[NodeId],
    ) -> Result<Outcome, String> {
        if self.policy(name).is_none() {
            return Err(format!("no policy {name}"));
        }
        let time = self.tick(wall_ms);
        let subject = Subject::Policy {
            namespace: name.namespace.clone(),
            name: name.name.clone(),
        };
        let s = Signed::make(&self.key, subject, time, None).map_err(|e| e.to_string())?;
        self.publish(vec![s], members);
        Ok(Outcome {
            changes: vec![(name.to_string(), "deleted".into())],
        })
    }

    /// Sets namespace `name`'s labels (replacing those it had) everywhere.
    pub fn label_namespace(
        &mut self,
        wall_ms: u64,
        name: &str,
        labels: Labels,
        members: &[NodeId],
    ) -> Result<Outcome, String> {
        let subject = Subject::Namespace { name: name.into() };
        if matches!(self.entries.get(&subject).map(|e| &e.content), Some(Checked::Namespace(l)) if *l == labels)
        {
            return Ok(Outcome {
                changes: vec![(name.into(), "unchanged".into())],
            });
        }
        let time = self.tick(wall_ms);
        let s = Signed::make(&self.key, subject, time, Some(Content::Namespace(labels)))
            .map_err(|e| e.to_string())?;
        self.publish(vec![s], members);
        Ok(Outcome {
            changes: vec![(name.into(), "labelled".into())],
        })
    }

    /// This node's pods (sorted, at most [`MAX_PODS_PER_NODE`]); published when they
    /// changed. Pods that do not pass [`PodIdentity::check`] are left out with a warning.
    pub fn set_local_pods(&mut self, wall_ms: u64, pods: Vec<PodIdentity>, members: &[NodeId]) {
        let mut pods: Vec<PodIdentity> = pods
            .into_iter()
            .filter(|p| match p.check() {
                Ok(()) => true,
                Err(e) => {
                    warn!(pod = %format!("{}/{}", p.namespace, p.name), error = %e, "pod identity left out of the policy");
                    false
                }
            })
            .collect();
        pods.sort();
        pods.dedup();
        if pods.len() > MAX_PODS_PER_NODE {
            warn!(
                pods = pods.len(),
                published = MAX_PODS_PER_NODE,
                "more pods than a node publishes: the rest are unknown to other nodes' policies"
            );
            pods.truncate(MAX_PODS_PER_NODE);
        }
        let subject = Subject::Pods { node: self.local };
        let held = matches!(self.entries.get(&subject).map(|e| &e.content), Some(Checked::Pods(p)) if *p == pods);
        if pods != self.local_pods {
            self.local_pods = pods.clone();
            self.changed = true;
        }
        if held {
            return;
        }
        let time = self.tick(wall_ms);
        match Signed::make(&self.key, subject, time, Some(Content::Pods(pods))) {
            Ok(s) => self.publish(vec![s], members),
            Err(e) => warn!(error = %e, "cannot publish this node's pods"),
        }
    }

    // ---- gossip ----

    /// A message from `from` (proven by the transport).
    pub fn handle_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(format!("policy message of {} bytes", bytes.len()));
        }
        let message: Message =
            serde_json::from_slice(bytes).map_err(|e| format!("bad policy message: {e}"))?;
        match message {
            Message::Push { statements } => {
                self.merge(from, statements);
            }
            Message::Digest { digest } => {
                if digest != self.digest() {
                    self.send_all(from, true);
                }
            }
            Message::Want { subjects } => {
                let statements: Vec<Signed> = subjects
                    .iter()
                    .take(16)
                    .filter_map(|s| self.entries.get(s))
                    .map(|e| e.signed.clone())
                    .collect();
                if !statements.is_empty() {
                    self.send(from, &Message::Push { statements });
                }
            }
            Message::Sync {
                statements,
                digest,
                reply,
            } => {
                self.merge(from, statements);
                if reply && digest != self.digest() {
                    self.send_all(from, false);
                }
            }
        }
        Ok(())
    }

    /// Anti-entropy with one of `members` (the live ones) when due.
    pub fn handle_timeout(&mut self, now: Instant, members: &[NodeId]) {
        let due = self.next_sync.is_none_or(|t| now >= t);
        if !due {
            return;
        }
        self.next_sync = Some(now + ANTI_ENTROPY);
        if members.is_empty() {
            return;
        }
        self.turn = self.turn.wrapping_add(1);
        let to = members[self.turn % members.len()];
        self.send(
            to,
            &Message::Digest {
                digest: self.digest(),
            },
        );
    }

    /// When [`PolicyCore::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sync
    }

    /// Member `node`'s record says its pods statement has stamp `stamp`: ask it for that
    /// statement if it is news (the push that brought it may still be on its way, or lost).
    pub fn handle_record(&mut self, node: NodeId, stamp: u64) {
        if node == self.local {
            return;
        }
        let held = self
            .entries
            .get(&Subject::Pods { node })
            .map_or(0, |e| e.stamp.time_ms);
        if stamp <= held || self.asked.get(&node).is_some_and(|a| *a >= stamp) {
            return;
        }
        self.asked.insert(node, stamp);
        self.send(
            node,
            &Message::Want {
                subjects: vec![Subject::Pods { node }],
            },
        );
    }

    /// Bytes for member `node`, on the policy channel.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The contents of `policy.json` when what is held changed.
    pub fn poll_persist(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.persist) {
            return None;
        }
        let file = File {
            version: 1,
            statements: self.entries.values().map(|e| e.signed.clone()).collect(),
        };
        serde_json::to_vec(&file).ok()
    }

    // ---- inside ----

    /// The next hybrid time: above the wall clock and everything seen.
    fn tick(&mut self, wall_ms: u64) -> u64 {
        self.clock_ms = wall_ms.max(self.clock_ms + 1);
        self.clock_ms
    }

    /// Takes our own new statements and pushes them to every member.
    fn publish(&mut self, statements: Vec<Verified>, members: &[NodeId]) {
        if statements.is_empty() {
            return;
        }
        let signed: Vec<Signed> = statements.iter().map(|s| s.signed.clone()).collect();
        for s in statements {
            self.take(s);
        }
        for member in members {
            for chunk in chunks(signed.clone()) {
                self.send(*member, &Message::Push { statements: chunk });
            }
        }
    }

    fn merge(&mut self, from: NodeId, statements: Vec<Signed>) {
        for s in statements {
            if let Err(e) = self.offer(s) {
                self.refused += 1;
                debug!(node = %from.short(), error = %e, "policy statement refused");
            }
        }
    }

    /// Verifies `signed` and keeps it if it is newer than what is held about its subject.
    fn offer(&mut self, signed: Signed) -> Result<bool, Refused> {
        let v = signed.verify()?;
        if let Some(held) = self.entries.get(&v.subject) {
            if held.stamp >= v.stamp {
                return Ok(false);
            }
        } else if self.entries.len() >= MAX_STATEMENTS {
            return Err(Refused::Invalid {
                subject: v.subject.to_string(),
                reason: format!("more than {MAX_STATEMENTS} statements held"),
            });
        }
        Ok(self.take(v))
    }

    fn take(&mut self, v: Verified) -> bool {
        self.clock_ms = self.clock_ms.max(v.stamp.time_ms);
        match &v.content {
            Checked::Policy(p) => {
                info!(policy = %p.id, by = %v.stamp.node.short(), "policy applied")
            }
            Checked::Deleted => info!(subject = %v.subject, by = %v.stamp.node.short(), "deleted"),
            Checked::Namespace(l) => {
                info!(subject = %v.subject, labels = ?l, "namespace labels set")
            }
            Checked::Pods(p) => debug!(subject = %v.subject, pods = p.len(), "pods"),
        }
        // This node's own pods are what it was told, not what it said before a restart.
        let own_pods = v.subject == Subject::Pods { node: self.local };
        self.entries.insert(
            v.subject,
            Entry {
                stamp: v.stamp,
                content: v.content,
                signed: v.signed,
            },
        );
        if !own_pods {
            self.changed = true;
        }
        self.persist = true;
        true
    }

    fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (subject, e) in &self.entries {
            h.update(serde_json::to_vec(subject).unwrap_or_default());
            h.update(e.stamp.time_ms.to_be_bytes());
            h.update(e.stamp.node.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn send_all(&mut self, to: NodeId, reply: bool) {
        let all: Vec<Signed> = self.entries.values().map(|e| e.signed.clone()).collect();
        let digest = self.digest();
        let mut parts = chunks(all);
        let last = parts.pop().unwrap_or_default();
        for chunk in parts {
            self.send(to, &Message::Push { statements: chunk });
        }
        self.send(
            to,
            &Message::Sync {
                statements: last,
                digest,
                reply,
            },
        );
    }

    fn send(&mut self, to: NodeId, message: &Message) {
        if to == self.local {
            return;
        }
        match serde_json::to_vec(message) {
            Ok(bytes) => self.transmits.push_back((to, bytes)),
            Err(e) => warn!(error = %e, "cannot encode a policy message"),
        }
    }
}

/// Statements in groups of at most [`MAX_MESSAGE`] bytes (one at least).
fn chunks(statements: Vec<Signed>) -> Vec<Vec<Signed>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for s in statements {
        let len = s.body.len() + s.sig.len() + 32;
        let last = out.last_mut().expect("never empty");
        if size + len > MAX_MESSAGE && !last.is_empty() {
            out.push(Vec::new());
            size = 0;
        }
        size += len;
        out.last_mut().expect("never empty").push(s);
    }
    out
}

/// The nodes' own addresses for the compiler, from what the caller knows of each node.
pub fn node(id: &NodeId, addresses: impl IntoIterator<Item = IpAddr>) -> PolicyNode {
    let set: BTreeSet<IpAddr> = addresses.into_iter().collect();
    PolicyNode {
        name: id.to_string(),
        addresses: set.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Arc<IdentityKey> {
        Arc::new(IdentityKey::from_seed(&[n; 32]))
    }

    const WEB: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: lb}}}]\n";

    fn parse(text: &str) -> Vec<Policy> {
        weft_mesh::policy::parse(text, "default").expect("valid")
    }

    fn pod(name: &str, addr: &str) -> PodIdentity {
        PodIdentity {
            namespace: "shop".into(),
            name: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            addresses: vec![addr.parse().expect("address")],
            ports: vec![],
            interface: None,
        }
    }

    /// Delivers every transmit among `cores` (by node id) until none is left.
    fn deliver(cores: &mut [PolicyCore]) -> usize {
        let mut n = 0;
        loop {
            let mut moved = Vec::new();
            for c in cores.iter_mut() {
                while let Some((to, bytes)) = c.poll_transmit() {
                    moved.push((c.local, to, bytes));
                }
            }
            if moved.is_empty() {
                return n;
            }
            for (from, to, bytes) in moved {
                n += 1;
                if let Some(c) = cores.iter_mut().find(|c| c.local == to) {
                    c.handle_message(from, &bytes).expect("a valid message");
                }
            }
        }
    }

    fn ids(cores: &[PolicyCore]) -> Vec<NodeId> {
        cores.iter().map(|c| c.local).collect()
    }

    #[test]
    fn apply_spreads_last_writer_wins_and_delete_is_a_tombstone() {
        let mut cores = vec![
            PolicyCore::new(key(1), None),
            PolicyCore::new(key(2), None),
            PolicyCore::new(key(3), None),
        ];
        let all = ids(&cores);
        let out = cores[0].apply(1000, parse(WEB), &all).expect("apply");
        assert_eq!(out.changes, vec![("shop/web".into(), "created".into())]);
        deliver(&mut cores);
        for c in &cores {
            assert_eq!(c.policies().len(), 1);
        }
        // Applying the same again changes nothing and sends nothing.
        let out = cores[1].apply(2000, parse(WEB), &all).expect("apply");
        assert_eq!(out.changes[0].1, "unchanged");
        assert_eq!(deliver(&mut cores), 0);
        // Two nodes change it "at once": the later hybrid time wins, everywhere, even with
        // a wall clock behind (node 2's clock is behind node 1's statement).
        let changed = WEB.replace("app: lb", "app: proxy");
        cores[1].apply(500, parse(&changed), &all).expect("apply");
        deliver(&mut cores);
        let name = PolicyName {
            namespace: "shop".into(),
            name: "web".into(),
        };
        for c in &cores {
            let (p, stamp) = c.policy(&name).expect("held");
            assert!(format!("{:?}", p.source).contains("proxy"));
            assert!(stamp.time_ms > 1000, "hybrid time above what was seen");
        }
        cores[2].delete(3000, &name, &all).expect("delete");
        deliver(&mut cores);
        for c in &cores {
            assert!(c.policies().is_empty());
        }
        // An older statement arriving late does not bring it back.
        let old = cores[0].entries.values().next().expect("tombstone").clone();
        assert!(matches!(old.content, Checked::Deleted));
        assert!(
            cores[0].delete(4000, &name, &all).is_err(),
            "nothing to delete"
        );
    }

    #[test]
    fn anti_entropy_brings_a_node_that_missed_everything_up_to_date() {
        let mut a = PolicyCore::new(key(1), None);
        let mut b = PolicyCore::new(key(2), None);
        // b is not a member yet when a applies and labels: nothing is pushed to it.
        a.apply(1000, parse(WEB), &[]).expect("apply");
        a.label_namespace(1001, "shop", [("team".into(), "x".into())].into(), &[])
            .expect("label");
        b.set_local_pods(1002, vec![pod("lb", "10.32.1.3")], &[]);
        let now = Instant::now();
        a.handle_timeout(now, &[b.local]);
        let mut cores = vec![a, b];
        deliver(&mut cores);
        assert_eq!(cores[0].digest(), cores[1].digest());
        assert_eq!(cores[1].policies().len(), 1);
        assert_eq!(cores[1].namespace_labels()["shop"]["team"], "x");
        let id_b = cores[1].local;
        assert_eq!(cores[0].pods()[&id_b].len(), 1);
        // In the compiler's inputs, with the node id as the pod's node.
        let cluster = cores[0].cluster_view(vec![], |_| true);
        assert_eq!(cluster.pods.len(), 1);
        assert_eq!(cluster.pods[0].node, id_b.to_string());
    }

    #[test]
    fn pods_records_trigger_a_fetch_and_restart_keeps_everything() {
        let mut a = PolicyCore::new(key(1), None);
        let mut b = PolicyCore::new(key(2), None);
        b.set_local_pods(10, vec![pod("web", "10.32.1.2")], &[]);
        let stamp = b.pods_stamp().expect("published");
        a.handle_record(b.local, stamp);
        a.handle_record(b.local, stamp); // asked once
        assert_eq!(a.transmits.len(), 1);
        let mut cores = vec![a, b];
        deliver(&mut cores);
        let id_b = cores[1].local;
        assert_eq!(cores[0].pods()[&id_b][0].name, "web");
        cores[0].apply(20, parse(WEB), &[]).expect("apply");
        let file = cores[0].poll_persist().expect("changed");
        assert!(cores[0].poll_persist().is_none());
        let again = PolicyCore::new(key(1), Some(&file));
        assert_eq!(again.policies().len(), 1);
        assert_eq!(again.pods()[&id_b].len(), 1);
        // A damaged file: nothing, no panic.
        let none = PolicyCore::new(key(1), Some(b"{not json"));
        assert!(none.policies().is_empty());
    }

    #[test]
    fn bad_messages_and_forged_statements_change_nothing() {
        let mut a = PolicyCore::new(key(1), None);
        let mut b = PolicyCore::new(key(2), None);
        b.apply(1, parse(WEB), &[a.local]).expect("apply");
        let (_, good) = b.poll_transmit().expect("push");
        let before = a.digest();
        for bad in [
            &b"not json"[..],
            b"{\"t\":\"push\"}",
            b"{\"t\":\"push\",\"statements\":[{\"body\":\"{}\",\"sig\":\"\"}]}",
            b"{\"t\":\"nope\"}",
        ] {
            let _ = a.handle_message(b.local, bad);
            assert_eq!(a.digest(), before);
        }
        // The good push with one byte of the body changed.
        let text = String::from_utf8(good.clone()).expect("json");
        let forged = text.replacen("app", "apq", 1);
        a.handle_message(b.local, forged.as_bytes())
            .expect("decodes");
        assert_eq!(a.digest(), before);
        assert!(a.refused() >= 1);
        a.handle_message(b.local, &good).expect("good");
        assert_eq!(a.policies().len(), 1);
        assert_ne!(a.digest(), before);
    }

    /// Whatever a member sends: no panic, and nothing held changes (arbitrary bytes never
    /// carry a statement that verifies).
    fn any_message_changes_nothing(bytes: &[u8]) {
        let mut a = PolicyCore::new(key(1), None);
        a.apply(1, parse(WEB), &[]).expect("apply");
        let before = a.digest();
        let _ = a.handle_message(key(2).node_id(), bytes);
        assert_eq!(a.digest(), before);
        assert_eq!(a.policies().len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_messages_change_nothing(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            any_message_changes_nothing(&bytes);
        }

        #[test]
        fn shaped_messages_with_bad_statements_change_nothing(body in ".{0,300}", sig in "[A-Za-z0-9+/=]{0,100}") {
            let msg = serde_json::json!({"t": "push", "statements": [{"body": body, "sig": sig}]});
            any_message_changes_nothing(&serde_json::to_vec(&msg).expect("json"));
        }
    }

    #[test]
    fn fuzz_policy_message() {
        bolero::check!().for_each(any_message_changes_nothing);
    }

    #[test]
    fn local_pods_are_checked_bounded_and_published_once() {
        let mut a = PolicyCore::new(key(1), None);
        let peer = key(2).node_id();
        let mut bad = pod("x", "10.32.1.9");
        bad.labels.insert("-no".into(), "v".into());
        a.set_local_pods(1, vec![pod("web", "10.32.1.2"), bad], &[peer]);
        assert_eq!(a.pods()[&a.local].len(), 1);
        assert_eq!(a.transmits.len(), 1);
        a.set_local_pods(2, vec![pod("web", "10.32.1.2")], &[peer]);
        assert_eq!(a.transmits.len(), 1, "unchanged: not sent again");
        let many: Vec<PodIdentity> = (0..MAX_PODS_PER_NODE + 5)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.33.{}.{}", i / 250, i % 250 + 1),
                )
            })
            .collect();
        a.set_local_pods(3, many, &[peer]);
        assert_eq!(a.pods()[&a.local].len(), MAX_PODS_PER_NODE);
        let (_, bytes) = a.transmits.pop_back().expect("sent");
        assert!(
            bytes.len() < super::super::statement::MAX_BODY_LEN + 4096,
            "{} bytes",
            bytes.len()
        );
    }
}
