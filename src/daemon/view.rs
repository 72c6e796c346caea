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

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

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

/// A tunnel whose last handshake is older than this carries nothing: WireGuard's
/// REJECT_AFTER_TIME (it rekeys every two minutes while traffic flows).
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(180);

/// The peers that are up, for `weft status`: a peer is up when it is [`PeerState::Alive`]
/// (suspect ones are not: the membership already doubts them) and its tunnel works: a
/// direct one with a handshake at most [`HANDSHAKE_FRESH`] old at `wall`, or a relayed one
/// whose relay is itself up directly. A failed, stopped or left member is never up, however
/// fresh its last handshake.
pub fn peers_up(
    states: &HashMap<NodeId, PeerState>,
    links: &BTreeMap<NodeId, PeerLink>,
    wall: SystemTime,
) -> usize {
    let alive = |id: &NodeId| states.get(id) == Some(&PeerState::Alive);
    let fresh = |l: &PeerLink| {
        l.last_handshake
            .is_some_and(|t| wall.duration_since(t).unwrap_or(Duration::ZERO) <= HANDSHAKE_FRESH)
    };
    let direct_up =
        |id: &NodeId| alive(id) && links.get(id).is_some_and(|l| l.via.is_none() && fresh(l));
    links
        .iter()
        .filter(|(id, link)| {
            alive(id)
                && match link.via {
                    None => fresh(link),
                    Some(relay) => relay != **id && direct_up(&relay),
                }
        })
        .count()
}

/// How a member's liveness shows everywhere: the view, `weft peers`, `weft status`'s counts
/// and the metrics (which read `weft peers`).
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
    fn a_peer_is_up_when_alive_with_a_fresh_direct_tunnel_or_an_up_relay() {
        let id = |seed: u8| IdentityKey::from_seed(&[seed; 32]).node_id();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let direct = |age: u64| PeerLink {
            last_handshake: Some(wall - Duration::from_secs(age)),
            ..PeerLink::default()
        };
        let via = |relay: NodeId| PeerLink {
            via: Some(relay),
            ..PeerLink::default()
        };
        let states: HashMap<NodeId, PeerState> = [
            (id(1), PeerState::Alive),
            (id(2), PeerState::Alive),
            (id(3), PeerState::Suspect),
            (id(4), PeerState::Failed),
            (id(5), PeerState::Stopped),
            (id(6), PeerState::Alive),
            (id(7), PeerState::Alive),
            (id(8), PeerState::Alive),
        ]
        .into();
        let up = |links: Vec<(u8, PeerLink)>| {
            let links = links.into_iter().map(|(n, l)| (id(n), l)).collect();
            peers_up(&states, &links, wall)
        };
        // Fresh up to WireGuard's reject-after time, and not after.
        assert_eq!(up(vec![(1, direct(180)), (2, direct(181))]), 1);
        // Suspect, failed and stopped members are never up, however fresh the handshake.
        assert_eq!(up(vec![(3, direct(1)), (4, direct(1)), (5, direct(1))]), 0);
        // Never a handshake: not up.
        assert_eq!(up(vec![(1, PeerLink::default())]), 0);
        // Relayed: up while the relay is up directly.
        assert_eq!(up(vec![(1, direct(10)), (6, via(id(1)))]), 2);
        assert_eq!(up(vec![(1, direct(200)), (6, via(id(1)))]), 0);
        // A relay that is down, relayed itself, unknown, or the peer itself: not up.
        assert_eq!(up(vec![(5, direct(1)), (6, via(id(5)))]), 0);
        assert_eq!(
            up(vec![(1, direct(1)), (7, via(id(1))), (8, via(id(7)))]),
            2
        );
        assert_eq!(up(vec![(6, via(id(9)))]), 0);
        assert_eq!(up(vec![(6, via(id(6)))]), 0);
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
