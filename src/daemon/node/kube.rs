//! What the node takes from Kubernetes, still without IO: the Node list (as seeds and
//! names) arrives as an input, [`Node::handle_cluster_nodes`]; the daemon's `kube` module
//! runs the watchers and hands their news in.
//!
//! - Seeds: every other Node's address is a seed; Nodes that appear later are contacted
//!   as they appear. A node on Kubernetes waits for the Node list before it would start an
//!   address space of its own (alone in the cluster, or see [`Node::kube_tick`]).
//! - A fixed space ([`Node::set_kubernetes`] with the Node's pod CIDR): the node's IPAM core
//!   runs over that prefix alone (its own genesis, so allocation, persistence, `--ip` and the
//!   gateway work as ever; the gateway is the prefix's first address), takes no part in the
//!   cluster's ring (no IPAM bytes in its record, none fed to its core), and announces the
//!   prefix in its record's [`SPACE_LABEL`] label; every node routes what members announce
//!   there (see [`Node::announced_spaces`]).
//! - A Node deleted from the API: its member is forgotten (as `weft forget`) once it is no
//!   longer alive; with weft's allocator, one node (the first by name) takes its space back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{debug, error, info, warn};
use weft_gossip::ipam;
use weft_gossip::NodeId;
use weft_mesh::policy;

use super::{view, Node};
use crate::daemon::api::{KubeStatus, PeerState};

/// The record label a node with a fixed space (a Kubernetes pod CIDR) announces it in.
pub const SPACE_LABEL: &str = "weft/space";
/// How long every other Node must have been an alive member, with no address space among
/// them, before the first Node by name starts one (weft's allocator on Kubernetes).
const GENESIS_WAIT: Duration = Duration::from_secs(3);

/// The Node list, as the node needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterNodes {
    /// The gossip addresses of every other Node (`weft_kube::model::seeds`).
    pub seeds: Vec<SocketAddr>,
    /// Every Node's name, this one's included.
    pub names: BTreeSet<String>,
}

/// The policy engine's inputs from the API: NetworkPolicies, Pods (scheduled, with
/// addresses, not on the host's network) and Namespaces' labels, mapped by `daemon::kube`.
/// On Kubernetes these replace what `weft policy` and gossip would give.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubePolicy {
    /// This node's name in the API (its pods have it as their node).
    pub node: String,
    pub policies: Vec<policy::Policy>,
    pub pods: Vec<policy::Pod>,
    pub namespaces: BTreeMap<String, policy::spec::Labels>,
    /// NetworkPolicies the engine cannot take (`namespace/name: why`); the API server
    /// accepted them, so this is something weft does not support.
    pub refused: Vec<String>,
}

/// The node's Kubernetes state.
#[derive(Debug, Default)]
pub(super) struct KubeState {
    /// Kubernetes is configured: the Node list is awaited and followed.
    enabled: bool,
    /// This node's space is this prefix (the Node's pod CIDR), in its own address space.
    pub(super) fixed: Option<Ipv4Net>,
    /// Seeds given on the command line (kept whatever the Node list says).
    cli_seeds: Vec<SocketAddr>,
    /// The Node list arrived at least once.
    synced: bool,
    /// `start` waits for the Node list to decide whether to start an address space.
    deferred: bool,
    /// Every Node name in the last list.
    names: BTreeSet<String>,
    /// Nodes deleted from the API whose members are still to be forgotten.
    to_forget: BTreeSet<String>,
    /// Since when every other Node is an alive member without address space (weft's
    /// allocator, nobody has started one).
    all_alive_since: Option<Instant>,
    /// The policy inputs from the API, once its Pod, Namespace and NetworkPolicy lists are in.
    policy: Option<KubePolicy>,
}

impl Node {
    /// Kubernetes is configured: wait for the Node list ([`Node::handle_cluster_nodes`])
    /// before starting an address space; with `fixed`, this node's space is that prefix
    /// (its IPAM core must have been opened over it). Call before [`Node::start`].
    pub fn set_kubernetes(&mut self, fixed: Option<Ipv4Net>) {
        self.kube.enabled = true;
        self.kube.fixed = fixed;
        self.kube.cli_seeds = self.config.seeds.clone();
    }

    /// Kubernetes is configured: network policy follows the API, not `weft policy`.
    pub(super) fn on_kubernetes(&self) -> bool {
        self.kube.enabled
    }

    /// What `weft status` says about Kubernetes (the watches' health is added at the edge).
    pub(super) fn kube_status(&self) -> Option<KubeStatus> {
        if !self.kube.enabled {
            return None;
        }
        let policy = self.kube.policy.as_ref();
        Some(KubeStatus {
            space_from: if self.kube.fixed.is_some() {
                "pod CIDR"
            } else {
                "weft"
            }
            .into(),
            nodes: self.kube.names.len(),
            policy_synced: policy.is_some(),
            pods: policy.map_or(0, |p| p.pods.len()),
            namespaces: policy.map_or(0, |p| p.namespaces.len()),
            watches: Vec::new(),
        })
    }

    /// The policy inputs from the API, once they arrived.
    pub(super) fn kube_policy(&self) -> Option<&KubePolicy> {
        self.kube.policy.as_ref()
    }

    /// The API's Pods, Namespaces or NetworkPolicies changed: the policy engine's inputs
    /// are these from now on.
    pub fn handle_kube_policy(&mut self, inputs: KubePolicy) {
        if self.kube.policy.as_ref() == Some(&inputs) {
            return;
        }
        if !self.kube.enabled {
            warn!("policy inputs from Kubernetes on a node not configured for it: ignored");
            return;
        }
        debug!(
            policies = inputs.policies.len(),
            pods = inputs.pods.len(),
            namespaces = inputs.namespaces.len(),
            "policy inputs from Kubernetes"
        );
        self.kube.policy = Some(inputs);
        self.policy_dirty = true;
    }

    /// `weft reset` of a node whose space is its Node's pod CIDR: that space is Kubernetes'
    /// (nothing to hand over), so once the reset is under way the node's state may go.
    pub(super) fn kube_space_given_back(&self) -> bool {
        self.kube.fixed.is_some() && !matches!(self.phase, super::Phase::Running)
    }

    /// The Kubernetes part of [`Node::start`]; true when it took care of the start.
    pub(super) fn kube_start(&mut self, now: Instant) -> bool {
        if !self.kube.enabled {
            return false;
        }
        if let Some(space) = self.kube.fixed {
            let label = space.to_string();
            let result = self.core.update_record(now, |r| {
                r.labels.insert(SPACE_LABEL.to_owned(), label);
            });
            if let Err(e) = result {
                error!(error = %e, "cannot announce this node's space in its record");
            }
            if self.ipam.genesis().is_none() {
                match self.ipam.init_genesis(now) {
                    Ok(_) => info!(%space, "address space: this Node's pod CIDR"),
                    Err(e) => error!(%space, error = %e, "cannot take the Node's pod CIDR"),
                }
            } else {
                info!(%space, allocations = self.ipam.allocations().len(), "address space: this Node's pod CIDR (restored)");
            }
            return true;
        }
        if self.ipam.genesis().is_some() || self.kube.synced {
            return false;
        }
        info!("waiting for the Kubernetes Node list before joining or starting an address space");
        self.kube.deferred = true;
        true
    }

    /// The Node list changed (or arrived): new Nodes' addresses are contacted, deleted
    /// Nodes' members are forgotten once they are down.
    pub fn handle_cluster_nodes(&mut self, now: Instant, nodes: ClusterNodes) {
        let first = !self.kube.synced;
        self.kube.synced = true;
        let mut seeds = self.kube.cli_seeds.clone();
        seeds.extend(&nodes.seeds);
        seeds.sort();
        seeds.dedup();
        let new: Vec<SocketAddr> = seeds
            .iter()
            .filter(|s| !self.config.seeds.contains(s))
            .copied()
            .collect();
        self.config.seeds = seeds;
        if !new.is_empty() && !self.core.has_left() {
            info!(seeds = ?new, "Kubernetes Nodes as seeds");
            self.core.join(now, &new);
        }
        let own = self.core.local_record().name.clone();
        for gone in self.kube.names.difference(&nodes.names) {
            if *gone != own {
                info!(node = %gone, "Node deleted from Kubernetes: its member is forgotten once down");
                self.kube.to_forget.insert(gone.clone());
            }
        }
        for name in &nodes.names {
            self.kube.to_forget.remove(name);
        }
        self.kube.names = nodes.names;
        if first && self.kube.deferred {
            self.kube.deferred = false;
            if self.config.seeds.is_empty() && self.ipam.genesis().is_none() {
                match self.ipam.init_genesis(now) {
                    Ok(id) => {
                        info!(genesis = %id, range = %self.config.range, "the only Kubernetes Node: started a new address space")
                    }
                    Err(e) => error!(error = %e, "cannot start an address space"),
                }
            }
        }
        self.kube_tick(now);
        self.process(now);
    }

    /// Kubernetes' periodic work (every timeout): forget deleted Nodes' members once they
    /// are down, and with weft's allocator start the address space when nobody has.
    pub(super) fn kube_tick(&mut self, now: Instant) {
        if !self.kube.enabled || !self.kube.synced {
            return;
        }
        self.forget_deleted(now);
        self.maybe_start_space(now);
    }

    fn forget_deleted(&mut self, now: Instant) {
        if self.kube.to_forget.is_empty() {
            return;
        }
        let pending: Vec<String> = self.kube.to_forget.iter().cloned().collect();
        for name in pending {
            let members: Vec<(NodeId, PeerState)> = self
                .core
                .members()
                .filter(|m| m.record.name == name)
                .map(|m| (m.record.node_id, view::peer_state(&m)))
                .collect();
            let mut waiting = false;
            for (id, state) in members {
                if matches!(state, PeerState::Alive | PeerState::Suspect) {
                    waiting = true;
                    continue;
                }
                // With the cluster's ring, one node takes the space back (two reclaims of
                // the same space would clash); the others forget it when they learn that.
                if self.kube.fixed.is_none() && self.ipam.genesis().is_some() {
                    if !self.reclaims_for_deleted() {
                        waiting = true;
                        continue;
                    }
                    match self.ipam.forget(now, id) {
                        Ok(reclaim) => {
                            let addresses: u64 =
                                reclaim.pieces.iter().map(|p| u64::from(p.len())).sum();
                            info!(node = %name, addresses, "took back the deleted Node's address space");
                        }
                        Err(ipam::Error::UnknownNode(_)) | Err(ipam::Error::NoGenesis) => {}
                        Err(e) => {
                            warn!(node = %name, error = %e, "cannot take back the deleted Node's address space");
                            waiting = true;
                            continue;
                        }
                    }
                }
                self.core.forget(now, &id);
                info!(node = %name, id = %id.short(), "forgot the member of a deleted Node");
            }
            if !waiting {
                self.kube.to_forget.remove(&name);
            } else {
                debug!(node = %name, "deleted Node's member still alive: not forgotten yet");
            }
        }
    }

    /// This node is the first by name among the Nodes whose members it sees alive (itself
    /// included): it makes the reclaim of a deleted Node's space.
    fn reclaims_for_deleted(&self) -> bool {
        let own = &self.core.local_record().name;
        let alive: BTreeSet<&str> = self
            .core
            .members()
            .filter(|m| view::peer_state(m) == PeerState::Alive)
            .map(|m| m.record.name.as_str())
            .collect();
        self.kube
            .names
            .iter()
            .find(|n| *n == own || alive.contains(n.as_str()))
            .is_some_and(|n| n == own)
    }

    /// weft's allocator on Kubernetes, with nodes that all found each other as seeds: the
    /// first Node by name starts the address space once every other Node has been an alive
    /// member for [`GENESIS_WAIT`] and none of them brought one (a node that has one would
    /// have given it to this node's IPAM core by then).
    fn maybe_start_space(&mut self, now: Instant) {
        if self.kube.fixed.is_some() || self.kube.deferred || self.ipam.genesis().is_some() {
            self.kube.all_alive_since = None;
            return;
        }
        let own = self.core.local_record().name.clone();
        if self.kube.names.first() != Some(&own) {
            return;
        }
        let alive: BTreeMap<&str, bool> = self
            .core
            .members()
            .map(|m| {
                (
                    m.record.name.as_str(),
                    view::peer_state(&m) == PeerState::Alive,
                )
            })
            .collect();
        let all = self
            .kube
            .names
            .iter()
            .filter(|n| **n != own)
            .all(|n| alive.get(n.as_str()) == Some(&true));
        if !all || self.feed_pending {
            self.kube.all_alive_since = None;
            return;
        }
        let since = *self.kube.all_alive_since.get_or_insert(now);
        if now.saturating_duration_since(since) < GENESIS_WAIT {
            return;
        }
        match self.ipam.init_genesis(now) {
            Ok(id) => {
                info!(genesis = %id, range = %self.config.range, "first Kubernetes Node by name, nobody has an address space: started one")
            }
            Err(e) => error!(error = %e, "cannot start an address space"),
        }
    }

    /// Add the spaces members announce in their records ([`SPACE_LABEL`]: a fixed space, a
    /// Kubernetes pod CIDR) to `spaces` (see [`pick_announced`]).
    pub(super) fn announced_spaces(&self, spaces: &mut BTreeMap<NodeId, Vec<Ipv4Net>>) {
        let mut taken: Vec<Ipv4Net> = self.local_spaces();
        taken.extend(spaces.values().flatten());
        let announced: Vec<(bool, NodeId, &str)> = self
            .core
            .members()
            .filter(|m| m.record.node_id != self.core.local_id())
            .filter_map(|m| {
                let label = m.record.labels.get(SPACE_LABEL)?;
                Some((
                    view::peer_state(&m) == PeerState::Alive,
                    m.record.node_id,
                    label.as_str(),
                ))
            })
            .collect();
        for (id, net) in pick_announced(&taken, self.config.range, announced) {
            spaces.entry(id).or_default().push(net);
        }
    }
}

/// Which announced spaces (`(alive, member, label)`) are routed: a label that is a network
/// in CIDR notation inside the cluster `range`, overlapping nothing in `taken` (this node's
/// own space, the ring's) nor another announcement picked before it: alive members first,
/// then by node id, so every node picks the same whatever order the members come in.
/// Labels come from members' records: anything that does not parse is skipped.
pub(super) fn pick_announced(
    taken: &[Ipv4Net],
    range: Ipv4Net,
    announced: Vec<(bool, NodeId, &str)>,
) -> Vec<(NodeId, Ipv4Net)> {
    let mut candidates: Vec<(bool, NodeId, Ipv4Net)> = announced
        .into_iter()
        .filter_map(|(alive, id, label)| {
            let net: Ipv4Net = label.parse().ok()?;
            (net.trunc() == net && range.contains(&net)).then_some((!alive, id, net))
        })
        .collect();
    candidates.sort();
    let mut taken: Vec<Ipv4Net> = taken.to_vec();
    let mut out = Vec::new();
    for (_, id, net) in candidates {
        if taken.iter().any(|t| t.contains(&net) || net.contains(t)) {
            debug!(node = %id.short(), %net, "announced space overlaps another: not routed");
            continue;
        }
        taken.push(net);
        out.push((id, net));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weft_crypto::IdentityKey;

    fn id(n: u8) -> NodeId {
        IdentityKey::from_seed(&[n; 32]).node_id()
    }

    #[test]
    fn announced_spaces_inside_the_range_and_apart_are_picked_alive_first() {
        let range: Ipv4Net = "10.244.0.0/16".parse().expect("range");
        let own: Ipv4Net = "10.244.1.0/24".parse().expect("net");
        let picked = pick_announced(
            &[own],
            range,
            vec![
                (false, id(1), "10.244.2.0/24"),
                (true, id(2), "10.244.2.0/24"),
                (true, id(3), "10.244.1.0/25"),
                (true, id(4), "10.32.0.0/24"),
                (true, id(5), "10.244.3.7/24"),
                (true, id(6), "banana"),
                (true, id(7), "10.244.4.0/24"),
            ],
        );
        let want: Vec<(NodeId, Ipv4Net)> = vec![
            (id(2), "10.244.2.0/24".parse().expect("net")),
            (id(7), "10.244.4.0/24".parse().expect("net")),
        ];
        let mut got = picked;
        got.sort();
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
    }

    proptest! {
        /// Any labels: no panic; what is picked lies in the range, overlaps neither what was
        /// taken nor each other, and does not depend on the members' order.
        #[test]
        fn picked_spaces_never_overlap(
            labels in proptest::collection::vec(
                (any::<bool>(), 0u8..8, "10\\.244\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}|\\PC{0,12}"),
                0..12,
            ),
            reverse in any::<bool>(),
        ) {
            let range: Ipv4Net = "10.244.0.0/16".parse().expect("range");
            let own: Ipv4Net = "10.244.1.0/24".parse().expect("net");
            let mut announced: Vec<(bool, NodeId, &str)> =
                labels.iter().map(|(a, n, l)| (*a, id(*n), l.as_str())).collect();
            let picked = pick_announced(&[own], range, announced.clone());
            for (i, (_, a)) in picked.iter().enumerate() {
                prop_assert!(range.contains(a));
                prop_assert!(!a.contains(&own) && !own.contains(a));
                for (_, b) in &picked[i + 1..] {
                    prop_assert!(!a.contains(b) && !b.contains(a), "{a} {b}");
                }
            }
            if reverse {
                announced.reverse();
            }
            let mut again = pick_announced(&[own], range, announced);
            let mut first = picked;
            again.sort();
            first.sort();
            prop_assert_eq!(first, again);
        }
    }
}
