//! The hand-over between the gossip driver and the datapath task.
//!
//! The driver owns the membership and IPAM cores; whenever the view changes it publishes a
//! [`MeshView`] on a `tokio::sync::watch` channel. The datapath task owns the WireGuard device
//! and the host's bridge, routes and firewall; it reconciles them to the latest view and
//! publishes a [`DatapathReport`] back on another watch channel, which the driver reads to
//! answer `weft status`/`weft peers` and to advertise the members it cannot reach directly
//! (`NodeRecord::unreachable`, read by the relay choice on every node).
//!
//! Both are plain data: each side can be tested without the other.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv4Subnets};
use weft_crypto::{NodeId, WgPublicKey};
use weft_gossip::ipam::RingEntry;
use weft_gossip::{MemberInfo, MemberState, NodeRecord};
use weft_mesh::host::DriftKind;

use super::api::PeerState;

/// What the datapath should look like, from the gossip and IPAM view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshView {
    pub local: LocalNode,
    /// The cluster's pod address range: traffic to it never leaves the host in the clear.
    pub cluster_range: Ipv4Net,
    /// Every other member known with a WireGuard key, in every state (a failed or stopped
    /// node keeps its peer and routes, so its traffic fails closed rather than leaking, and
    /// its tunnel comes back by itself when it does). Left and forgotten nodes are absent.
    pub peers: Vec<MeshPeer>,
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub node_id: NodeId,
    pub name: String,
    /// The WireGuard UDP port to listen on.
    pub wg_port: u16,
    /// The pieces of the cluster range this node owns (IPAM); the bridge's gateway address is
    /// the first address of the first piece. Empty until the node owns space.
    pub spaces: Vec<Ipv4Net>,
}

/// Another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    pub node_id: NodeId,
    pub name: String,
    pub wg_key: WgPublicKey,
    /// WireGuard endpoint candidates from its record, best first: configured, then its own
    /// interface addresses, then the addresses others observed (NAT).
    pub endpoints: Vec<SocketAddr>,
    /// The pieces of the cluster range it owns, as this node's IPAM view has them.
    pub spaces: Vec<Ipv4Net>,
    pub state: PeerState,
    /// The members it says it cannot reach directly (its record's `unreachable`).
    pub unreachable: Vec<NodeId>,
}

/// What the datapath did with the latest view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathReport {
    /// "kernel" or "userspace"; empty until the device exists.
    pub kind: String,
    /// The WireGuard interface's name.
    pub ifname: String,
    /// True once the device, bridge, routes and firewall match the latest view.
    pub ready: bool,
    /// The last reconcile error, if the last attempt failed (it is retried).
    pub error: Option<String>,
    /// One entry per peer in the view.
    pub peers: BTreeMap<NodeId, PeerLink>,
    /// Peers alive in gossip that this node has not completed a handshake with directly for a
    /// while; the driver puts this (sorted, bounded) into this node's record.
    pub unreachable: Vec<NodeId>,
    /// Packets the fail-closed firewall dropped (cleartext that would have left the host).
    pub fail_closed_drops: u64,
    /// Times the WireGuard device stopped working (engine panic, interface deleted) and a new
    /// one was made.
    pub restarts: u64,
    /// Drift repaired since start, by kind: weft's state on the host changed by someone else
    /// (a flushed ruleset, a deleted route or bridge) and put back.
    pub drift_repairs: BTreeMap<DriftKind, u64>,
}

/// The tunnel to one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerLink {
    /// The endpoint WireGuard uses now (direct path), if any.
    pub endpoint: Option<SocketAddr>,
    /// Set when traffic to this peer goes through a relay node instead of directly.
    pub via: Option<NodeId>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The pieces of the ring as CIDR blocks per owner. `range` is the range the ring's offsets
/// count from (the genesis's).
pub fn spaces_by_owner(ring: &[RingEntry], range: Ipv4Net) -> BTreeMap<NodeId, Vec<Ipv4Net>> {
    let base = u32::from(range.network());
    let mut out: BTreeMap<NodeId, Vec<Ipv4Net>> = BTreeMap::new();
    for e in ring.iter().filter(|e| e.end > e.start) {
        let first = Ipv4Addr::from(base.saturating_add(e.start));
        let last = Ipv4Addr::from(base.saturating_add(e.end - 1));
        out.entry(e.owner)
            .or_default()
            .extend(Ipv4Subnets::new(first, last, 0));
    }
    out
}

/// How a member's liveness shows in the view and in `weft peers`.
pub fn peer_state(m: &MemberInfo<'_>) -> PeerState {
    match m.state {
        MemberState::Alive => PeerState::Alive,
        MemberState::Suspect => PeerState::Suspect,
        MemberState::Dead => PeerState::Failed,
        MemberState::Left if m.is_stopped() => PeerState::Stopped,
        MemberState::Left => PeerState::Left,
    }
}

/// A record's WireGuard endpoints, best first: configured, local, observed.
pub fn wireguard_endpoints(r: &NodeRecord) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for ep in r
        .endpoints
        .configured
        .iter()
        .chain(&r.endpoints.local)
        .chain(&r.endpoints.observed)
    {
        if !out.contains(ep) {
            out.push(*ep);
        }
    }
    out
}

/// The view from the members (this node left out) and the IPAM ownership. Members that left
/// for good are left out; stopped and failed ones stay.
pub fn build<'a>(
    local: LocalNode,
    cluster_range: Ipv4Net,
    members: impl IntoIterator<Item = MemberInfo<'a>>,
    spaces: &BTreeMap<NodeId, Vec<Ipv4Net>>,
) -> MeshView {
    let mut peers: Vec<MeshPeer> = members
        .into_iter()
        .filter(|m| m.record.node_id != local.node_id)
        .filter_map(|m| {
            let state = peer_state(&m);
            if state == PeerState::Left {
                return None;
            }
            let r = m.record;
            Some(MeshPeer {
                node_id: r.node_id,
                name: r.name.clone(),
                wg_key: r.wg_key,
                endpoints: wireguard_endpoints(r),
                spaces: spaces.get(&r.node_id).cloned().unwrap_or_default(),
                state,
                unreachable: r.unreachable.clone(),
            })
        })
        .collect();
    peers.sort_by_key(|p| p.node_id);
    MeshView {
        local,
        cluster_range,
        peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_crypto::{IdentityKey, WgPrivateKey};

    fn record(name: &str) -> NodeRecord {
        let id = IdentityKey::generate().node_id();
        let wg = WgPrivateKey::generate().public_key();
        let mut r = NodeRecord::new(id, 1, name, wg, "192.0.2.1:6783".parse().expect("addr"));
        r.endpoints.local = vec!["192.0.2.1:6784".parse().expect("addr")];
        r.endpoints.observed = vec![
            "203.0.113.9:6784".parse().expect("addr"),
            "192.0.2.1:6784".parse().expect("addr"),
        ];
        r
    }

    fn info(record: &NodeRecord, state: MemberState) -> MemberInfo<'_> {
        MemberInfo {
            record,
            state,
            incarnation: record.version,
            leave_reason: None,
        }
    }

    #[test]
    fn ring_pieces_become_cidrs_per_owner() {
        let a = IdentityKey::generate().node_id();
        let b = IdentityKey::generate().node_id();
        let range: Ipv4Net = "10.32.0.0/12".parse().expect("net");
        let ring = [
            RingEntry {
                start: 0,
                end: 256,
                owner: a,
                version: 1,
            },
            // 10.32.1.0 - 10.32.2.255 and a ragged piece: 10.32.3.0 - 10.32.3.2
            RingEntry {
                start: 256,
                end: 768,
                owner: b,
                version: 2,
            },
            RingEntry {
                start: 768,
                end: 771,
                owner: a,
                version: 3,
            },
        ];
        let spaces = spaces_by_owner(&ring, range);
        let show =
            |n: &NodeId| -> Vec<String> { spaces[n].iter().map(ToString::to_string).collect() };
        assert_eq!(show(&b), ["10.32.1.0/24", "10.32.2.0/24"]);
        assert_eq!(show(&a), ["10.32.0.0/24", "10.32.3.0/31", "10.32.3.2/32"]);
    }

    #[test]
    fn view_keeps_failed_and_stopped_members_and_drops_those_that_left() {
        let me = record("me");
        let alive = record("alive");
        let failed = record("failed");
        let stopped = record("stopped");
        let gone = record("gone");
        let range: Ipv4Net = "10.32.0.0/12".parse().expect("net");
        let mut spaces = BTreeMap::new();
        spaces.insert(alive.node_id, vec!["10.32.8.0/21".parse().expect("net")]);
        let members = vec![
            info(&me, MemberState::Alive),
            info(&alive, MemberState::Alive),
            info(&failed, MemberState::Dead),
            MemberInfo {
                leave_reason: Some(weft_gossip::LeaveReason::Stopping),
                ..info(&stopped, MemberState::Left)
            },
            MemberInfo {
                leave_reason: Some(weft_gossip::LeaveReason::Leaving),
                ..info(&gone, MemberState::Left)
            },
        ];
        let local = LocalNode {
            node_id: me.node_id,
            name: "me".into(),
            wg_port: 6784,
            spaces: vec!["10.32.0.0/13".parse().expect("net")],
        };
        let view = build(local.clone(), range, members, &spaces);
        assert_eq!(view.local, local);
        let mut names: Vec<&str> = view.peers.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["alive", "failed", "stopped"]);
        let by_name = |n: &str| view.peers.iter().find(|p| p.name == n).expect("peer");
        assert_eq!(by_name("alive").spaces, spaces[&alive.node_id]);
        assert!(by_name("failed").spaces.is_empty());
        assert_eq!(by_name("failed").state, PeerState::Failed);
        assert_eq!(by_name("stopped").state, PeerState::Stopped);
        assert_eq!(by_name("alive").wg_key, alive.wg_key);
        // Local first, then observed; duplicates once.
        assert_eq!(
            by_name("alive").endpoints,
            vec![
                "192.0.2.1:6784".parse::<SocketAddr>().expect("addr"),
                "203.0.113.9:6784".parse().expect("addr")
            ]
        );
        // Sorted by node id, so equal inputs give equal views whatever the member order.
        let ids: Vec<NodeId> = view.peers.iter().map(|p| p.node_id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
