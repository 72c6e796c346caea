//! Which path each peer's traffic takes, decided from the gossip view and the device's
//! counters. Sans-IO: [`Paths::update`] takes `now` and what the device reports, and returns
//! the WireGuard peers as they should be ([`NodePeer`], for [`crate::host::plan_peers`]).
//!
//! - **Endpoints.** A peer advertises endpoint candidates (configured, its interface
//!   addresses, addresses others observed behind NAT). Until something is heard from it, the
//!   candidates are tried in turn, [`ROTATE_EVERY`] each (WireGuard retries a handshake every
//!   5 s, so each candidate gets a handshake attempt; two nodes behind NAT punch a hole when
//!   their attempts cross). Once the peer is heard, the endpoint the device has (WireGuard
//!   roams to wherever authenticated packets come from) is kept and remembered as the first
//!   candidate for the next time the path breaks.
//! - **Heard.** Every weft peer has persistent keepalive ([`PERSISTENT_KEEPALIVE`]), so a
//!   working direct tunnel receives something at least that often: the peer counts as heard
//!   when its received bytes grow or a new handshake completes.
//! - **Unreachable.** A peer alive in gossip that this node has been trying to reach for
//!   [`UNREACHABLE_AFTER`] without hearing from it for as long. The daemon advertises the list
//!   in its record.
//! - **Relay.** A<->C is relayed when either lists the other as unreachable. The relay is the
//!   lowest node id R (not A, not C) that is alive, lists neither A nor C as unreachable and
//!   is listed as unreachable by neither: both ends compute it from the records they share,
//!   so they pick the same R. C's spaces then move onto R's peer entry (R forwards: it
//!   decrypts and re-encrypts), and the direct entry stays with no allowed IPs, so its
//!   keepalives keep attempting handshakes and the path moves back to direct once they work.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use weft_crypto::{NodeId, WgPublicKey};

use crate::config::DeviceStatus;
use crate::host::NodePeer;

/// Persistent keepalive of every weft peer, in seconds: keeps NAT mappings open, keeps
/// handshakes being attempted on idle and relayed tunnels, and makes a working path heard.
pub const PERSISTENT_KEEPALIVE: u16 = 3;

/// How long each endpoint candidate is tried before the next.
pub const ROTATE_EVERY: Duration = Duration::from_secs(5);

/// How long a peer alive in gossip may stay silent, while being tried, before it counts as
/// unreachable directly.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(10);

/// Differences in a peer's last handshake time below this are read jitter, not a handshake.
const HANDSHAKE_JITTER: Duration = Duration::from_secs(1);

/// Another node as the gossip view has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPeer {
    pub node_id: NodeId,
    pub public_key: WgPublicKey,
    /// Endpoint candidates, best first.
    pub endpoints: Vec<SocketAddr>,
    /// The address spaces it owns.
    pub spaces: Vec<IpNet>,
    /// Alive in gossip (not suspect, failed or stopped).
    pub alive: bool,
    /// The nodes it says it cannot reach directly.
    pub unreachable: Vec<NodeId>,
}

/// The path to one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPath {
    /// The direct tunnel's endpoint: the device's, or the one about to be set.
    pub endpoint: Option<SocketAddr>,
    /// The relay carrying its traffic, if the direct path is not used.
    pub via: Option<NodeId>,
    /// Heard from directly within [`UNREACHABLE_AFTER`].
    pub direct_ok: bool,
}

/// What [`Paths::update`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathPlan {
    /// One WireGuard peer per other node, in view order.
    pub peers: Vec<NodePeer>,
    pub paths: BTreeMap<NodeId, PeerPath>,
    /// Peers alive in gossip this node cannot reach directly, sorted.
    pub unreachable: Vec<NodeId>,
}

/// What this node has seen of each peer's direct tunnel.
#[derive(Debug)]
struct Track {
    key: WgPublicKey,
    /// Since when it has been alive in gossip (and so tried).
    trying_since: Option<Instant>,
    /// When its received bytes last grew or a new handshake was last seen.
    heard: Option<Instant>,
    rx_bytes: u64,
    last_handshake: Option<SystemTime>,
    /// Index into the candidates being tried.
    candidate: usize,
    rotated_at: Instant,
    /// The endpoint that worked last.
    last_good: Option<SocketAddr>,
}

/// Endpoint and relay choice for every peer of one node.
#[derive(Debug)]
pub struct Paths {
    local: NodeId,
    tracks: BTreeMap<NodeId, Track>,
}

impl Paths {
    pub fn new(local: NodeId) -> Self {
        Self {
            local,
            tracks: BTreeMap::new(),
        }
    }

    /// Takes in the view and the device's state at `now`, returns the peers as they should
    /// be. Call it on every view change and every second or so.
    pub fn update(&mut self, now: Instant, view: &[PathPeer], device: &DeviceStatus) -> PathPlan {
        let view: Vec<&PathPeer> = view.iter().filter(|p| p.node_id != self.local).collect();
        let present: BTreeSet<NodeId> = view.iter().map(|p| p.node_id).collect();
        self.tracks.retain(|id, _| present.contains(id));

        let mut wanted = BTreeMap::new();
        let mut paths = BTreeMap::new();
        let mut unreachable = BTreeSet::new();
        for peer in &view {
            let status = device
                .peers
                .iter()
                .find(|p| p.public_key == peer.public_key);
            let track = self.tracks.entry(peer.node_id).or_insert_with(|| Track {
                key: peer.public_key,
                trying_since: None,
                heard: None,
                rx_bytes: status.map_or(0, |s| s.rx_bytes),
                last_handshake: status.and_then(|s| s.last_handshake),
                candidate: 0,
                rotated_at: now,
                last_good: None,
            });
            if track.key != peer.public_key {
                // A new key is a new tunnel: nothing heard on the old one counts.
                *track = Track {
                    key: peer.public_key,
                    trying_since: None,
                    heard: None,
                    rx_bytes: 0,
                    last_handshake: None,
                    candidate: 0,
                    rotated_at: now,
                    last_good: None,
                };
            }
            let device_endpoint = status.and_then(|s| s.endpoint);
            if let Some(status) = status {
                // Backends derive the time from an age, so it wobbles between reads: only a
                // clearly later one is a new handshake (they are seconds apart at least).
                let new_handshake = match (status.last_handshake, track.last_handshake) {
                    (Some(new), Some(old)) => {
                        new.duration_since(old).is_ok_and(|d| d >= HANDSHAKE_JITTER)
                    }
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if status.rx_bytes > track.rx_bytes || new_handshake {
                    track.heard = Some(now);
                }
                track.rx_bytes = status.rx_bytes;
                track.last_handshake = status.last_handshake;
            }
            track.trying_since = if peer.alive {
                track.trying_since.or(Some(now))
            } else {
                None
            };
            let direct_ok = track
                .heard
                .is_some_and(|h| now.saturating_duration_since(h) < UNREACHABLE_AFTER);
            let endpoint = if direct_ok && device_endpoint.is_some() {
                track.last_good = device_endpoint;
                track.candidate = 0;
                track.rotated_at = now;
                None
            } else {
                let candidates = candidates(track.last_good, &peer.endpoints);
                if candidates.is_empty() {
                    None
                } else {
                    if device_endpoint.is_some()
                        && now.saturating_duration_since(track.rotated_at) >= ROTATE_EVERY
                    {
                        track.candidate = (track.candidate + 1) % candidates.len();
                        track.rotated_at = now;
                    }
                    candidates.get(track.candidate % candidates.len()).copied()
                }
            };
            let tried_long = track
                .trying_since
                .is_some_and(|t| now.saturating_duration_since(t) >= UNREACHABLE_AFTER);
            if peer.alive && tried_long && !direct_ok {
                unreachable.insert(peer.node_id);
            }
            wanted.insert(peer.node_id, endpoint);
            paths.insert(
                peer.node_id,
                PeerPath {
                    endpoint: device_endpoint.or(endpoint),
                    via: None,
                    direct_ok,
                },
            );
        }

        let relays: BTreeMap<NodeId, NodeId> = view
            .iter()
            .filter(|c| unreachable.contains(&c.node_id) || c.unreachable.contains(&self.local))
            .filter_map(|c| relay_for(self.local, c, &view, &unreachable).map(|r| (c.node_id, r)))
            .collect();
        let mut peers: Vec<NodePeer> = view
            .iter()
            .map(|p| NodePeer {
                public_key: p.public_key,
                endpoint: wanted.get(&p.node_id).copied().flatten(),
                spaces: if relays.contains_key(&p.node_id) {
                    Vec::new()
                } else {
                    p.spaces.clone()
                },
            })
            .collect();
        for (relayed, relay) in &relays {
            let spaces = view
                .iter()
                .find(|p| p.node_id == *relayed)
                .map(|p| p.spaces.clone())
                .unwrap_or_default();
            if let Some(i) = view.iter().position(|p| p.node_id == *relay) {
                peers[i].spaces.extend(spaces);
            }
            if let Some(path) = paths.get_mut(relayed) {
                path.via = Some(*relay);
            }
        }
        PathPlan {
            peers,
            paths,
            unreachable: unreachable.into_iter().collect(),
        }
    }
}

/// The endpoints to try, in order: the one that worked last, then the advertised ones.
fn candidates(last_good: Option<SocketAddr>, advertised: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = last_good.into_iter().collect();
    for e in advertised {
        if !out.contains(e) {
            out.push(*e);
        }
    }
    out
}

/// The relay between `local` (A) and `far` (C): the lowest node id R, neither of them, alive,
/// listing neither as unreachable and listed as unreachable by neither. `local_unreachable`
/// is A's own list (what its record is about to say).
fn relay_for(
    local: NodeId,
    far: &PathPeer,
    view: &[&PathPeer],
    local_unreachable: &BTreeSet<NodeId>,
) -> Option<NodeId> {
    view.iter()
        .filter(|r| r.node_id != far.node_id && r.node_id != local && r.alive)
        .filter(|r| !r.unreachable.contains(&local) && !r.unreachable.contains(&far.node_id))
        .filter(|r| {
            !local_unreachable.contains(&r.node_id) && !far.unreachable.contains(&r.node_id)
        })
        .map(|r| r.node_id)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerStatus;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn key(n: u8) -> WgPublicKey {
        WgPublicKey([n; 32])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn space(n: u8) -> IpNet {
        format!("10.32.{n}.0/24").parse().expect("test prefix")
    }

    fn peer(n: u8, endpoints: &[&str]) -> PathPeer {
        PathPeer {
            node_id: id(n),
            public_key: key(n),
            endpoints: endpoints.iter().map(|e| addr(e)).collect(),
            spaces: vec![space(n)],
            alive: true,
            unreachable: Vec::new(),
        }
    }

    fn simple(n: u8) -> PathPeer {
        peer(n, &[&format!("192.0.2.{n}:6784")])
    }

    /// A device as WireGuard would report it: per peer key, endpoint and received bytes.
    #[derive(Default)]
    struct FakeDevice(BTreeMap<u8, (Option<SocketAddr>, u64)>);

    impl FakeDevice {
        /// Applies the endpoints the plan sets (peers get created, as on the device).
        fn apply(&mut self, plan: &PathPlan) {
            for p in &plan.peers {
                let entry = self.0.entry(p.public_key.0[0]).or_default();
                if p.endpoint.is_some() {
                    entry.0 = p.endpoint;
                }
            }
        }

        /// Something arrived from peer `n` (from `from`, as WireGuard roams to it).
        fn hear(&mut self, n: u8, from: Option<SocketAddr>) {
            let entry = self.0.entry(n).or_default();
            entry.1 += 32;
            if from.is_some() {
                entry.0 = from;
            }
        }

        fn status(&self) -> DeviceStatus {
            DeviceStatus {
                peers: self
                    .0
                    .iter()
                    .map(|(n, (endpoint, rx))| PeerStatus {
                        public_key: key(*n),
                        preshared_key: None,
                        endpoint: *endpoint,
                        persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
                        allowed_ips: Vec::new(),
                        last_handshake: None,
                        rx_bytes: *rx,
                        tx_bytes: 0,
                        protocol_version: 1,
                    })
                    .collect(),
                ..DeviceStatus::default()
            }
        }
    }

    /// One node's paths and device.
    struct Node {
        paths: Paths,
        device: FakeDevice,
        last: PathPlan,
    }

    impl Node {
        fn new(n: u8) -> Self {
            Self {
                paths: Paths::new(id(n)),
                device: FakeDevice::default(),
                last: PathPlan::default(),
            }
        }

        fn tick(&mut self, now: Instant, view: &[PathPeer]) -> &PathPlan {
            self.last = self.paths.update(now, view, &self.device.status());
            self.device.apply(&self.last);
            &self.last
        }

        fn spaces_of(&self, n: u8) -> Vec<IpNet> {
            self.last
                .peers
                .iter()
                .find(|p| p.public_key == key(n))
                .map(|p| p.spaces.clone())
                .expect("peer in plan")
        }
    }

    /// The view as `node` has it: everyone but itself, each with its unreachable list.
    fn view_of(node: u8, all: &[PathPeer]) -> Vec<PathPeer> {
        all.iter()
            .filter(|p| p.node_id != id(node))
            .cloned()
            .collect()
    }

    #[test]
    fn silent_alive_peer_becomes_unreachable_after_ten_seconds_of_trying() {
        let t0 = Instant::now();
        let mut a = Node::new(1);
        let mut failed = simple(3);
        failed.alive = false;
        let view = [simple(2), failed];
        assert!(a.tick(t0, &view).unreachable.is_empty());
        assert!(a
            .tick(t0 + Duration::from_secs(9), &view)
            .unreachable
            .is_empty());
        // The failed node is never "unreachable": it is down, which gossip says already.
        assert_eq!(
            a.tick(t0 + UNREACHABLE_AFTER, &view).unreachable,
            vec![id(2)]
        );
        // Heard from: reachable again at once.
        a.device.hear(2, None);
        assert!(a
            .tick(t0 + Duration::from_secs(11), &view)
            .unreachable
            .is_empty());
        assert!(a.last.paths[&id(2)].direct_ok);
    }

    #[test]
    fn endpoint_candidates_are_tried_in_turn_until_one_answers_then_it_sticks() {
        let t0 = Instant::now();
        let mut a = Node::new(1);
        let view = [peer(
            2,
            &["192.0.2.2:6784", "198.51.100.2:6784", "203.0.113.2:6784"],
        )];
        let endpoint_at = |a: &mut Node, secs: u64| {
            a.tick(t0 + Duration::from_secs(secs), &view);
            a.device.0[&2].0.expect("an endpoint is set")
        };
        assert_eq!(endpoint_at(&mut a, 0), addr("192.0.2.2:6784"));
        assert_eq!(endpoint_at(&mut a, 4), addr("192.0.2.2:6784"));
        assert_eq!(endpoint_at(&mut a, 5), addr("198.51.100.2:6784"));
        assert_eq!(endpoint_at(&mut a, 10), addr("203.0.113.2:6784"));
        assert_eq!(endpoint_at(&mut a, 15), addr("192.0.2.2:6784"));
        assert_eq!(endpoint_at(&mut a, 20), addr("198.51.100.2:6784"));
        // A handshake completes on the second candidate; keepalives keep arriving: the plan
        // stops naming an endpoint, the device keeps the working one.
        for s in 21..60 {
            a.device.hear(2, None);
            let plan = a.tick(t0 + Duration::from_secs(s), &view);
            assert_eq!(plan.peers[0].endpoint, None, "at {s} s");
            assert!(plan.unreachable.is_empty());
        }
        assert_eq!(a.device.0[&2].0, Some(addr("198.51.100.2:6784")));
    }

    #[test]
    fn nat_mapping_learnt_by_roaming_is_kept_and_tried_first_when_the_path_breaks() {
        let t0 = Instant::now();
        let mut a = Node::new(1);
        // Its interface address (private, behind NAT) and the address others observed.
        let view = [peer(2, &["192.0.2.2:6784", "203.0.113.9:41000"])];
        a.tick(t0, &view);
        assert_eq!(a.device.0[&2].0, Some(addr("192.0.2.2:6784")));
        a.tick(t0 + Duration::from_secs(5), &view);
        assert_eq!(a.device.0[&2].0, Some(addr("203.0.113.9:41000")));
        // The hole is punched, then the NAT gives the peer another port: WireGuard roams.
        let roamed = addr("203.0.113.9:52000");
        a.device.hear(2, Some(addr("203.0.113.9:41000")));
        a.tick(t0 + Duration::from_secs(6), &view);
        a.device.hear(2, Some(roamed));
        let plan = a.tick(t0 + Duration::from_secs(7), &view).clone();
        assert_eq!(plan.peers[0].endpoint, None);
        assert_eq!(plan.paths[&id(2)].endpoint, Some(roamed));
        // Silence: after UNREACHABLE_AFTER it is unreachable, and the roamed mapping is the
        // first candidate, before the advertised ones.
        let mut tried = BTreeMap::new();
        for s in 8..=32 {
            let plan = a.tick(t0 + Duration::from_secs(s), &view).clone();
            assert_eq!(plan.unreachable.is_empty(), s < 17, "at {s} s");
            tried.insert(s, a.device.0[&2].0.expect("endpoint"));
        }
        assert_eq!(tried[&17], roamed);
        assert_eq!(tried[&21], addr("192.0.2.2:6784"));
        assert_eq!(tried[&26], addr("203.0.113.9:41000"));
        assert_eq!(tried[&31], roamed);
    }

    /// Nodes 1..=5; 1 (A) and 4 (C) cannot reach each other. 2 is failed, 3 lists A as
    /// unreachable: the relay is 5 on both ends.
    #[test]
    fn relay_is_chosen_symmetrically_and_carries_the_far_spaces_on_both_ends() {
        let t0 = Instant::now();
        let mut all: Vec<PathPeer> = (1..=5).map(simple).collect();
        all[1].alive = false;
        all[2].unreachable = vec![id(1)];
        let (mut a, mut c) = (Node::new(1), Node::new(4));
        // Everyone but A<->C hears each other.
        let hear_all = |n: &mut Node, me: u8| {
            for other in [1, 2, 3, 4, 5] {
                if other != me && (me, other) != (1, 4) && (me, other) != (4, 1) {
                    n.device.hear(other, None);
                }
            }
        };
        for s in 0..=10 {
            let now = t0 + Duration::from_secs(s);
            hear_all(&mut a, 1);
            hear_all(&mut c, 4);
            a.tick(now, &view_of(1, &all));
            c.tick(now, &view_of(4, &all));
        }
        assert_eq!(a.last.unreachable, vec![id(4)]);
        assert_eq!(c.last.unreachable, vec![id(1)]);
        // Records spread: each lists the other.
        all[0].unreachable = a.last.unreachable.clone();
        all[3].unreachable = c.last.unreachable.clone();
        let now = t0 + Duration::from_secs(11);
        hear_all(&mut a, 1);
        hear_all(&mut c, 4);
        a.tick(now, &view_of(1, &all));
        c.tick(now, &view_of(4, &all));
        assert_eq!(a.last.paths[&id(4)].via, Some(id(5)));
        assert_eq!(c.last.paths[&id(1)].via, Some(id(5)));
        // 3 says it cannot reach A: A<->3 goes through 5 as well.
        assert_eq!(a.last.paths[&id(3)].via, Some(id(5)));
        assert_eq!(a.spaces_of(5), vec![space(5), space(3), space(4)]);
        assert_eq!(a.spaces_of(4), Vec::<IpNet>::new());
        assert_eq!(c.spaces_of(5), vec![space(5), space(1)]);
        assert_eq!(c.spaces_of(1), Vec::<IpNet>::new());
        // The direct entries stay, so handshakes keep being attempted.
        assert!(a.last.peers.iter().any(|p| p.public_key == key(4)));
        // The relay itself sees nothing special: direct to both.
        let mut r = Node::new(5);
        let plan = r.tick(now, &view_of(5, &all)).clone();
        assert!(plan.paths.values().all(|p| p.via.is_none()));
        assert_eq!(r.spaces_of(1), vec![space(1)]);
        assert_eq!(r.spaces_of(4), vec![space(4)]);
    }

    #[test]
    fn only_one_end_seeing_the_problem_is_enough_for_both_to_relay() {
        let t0 = Instant::now();
        let mut all: Vec<PathPeer> = (1..=3).map(simple).collect();
        // C (3) says it cannot reach A (1); A has heard nothing wrong.
        all[2].unreachable = vec![id(1)];
        let mut a = Node::new(1);
        a.device.hear(2, None);
        a.device.hear(3, None);
        let plan = a.tick(t0, &view_of(1, &all)).clone();
        assert!(plan.unreachable.is_empty());
        assert_eq!(plan.paths[&id(3)].via, Some(id(2)));
        assert_eq!(a.spaces_of(2), vec![space(2), space(3)]);
    }

    #[test]
    fn no_eligible_relay_keeps_the_direct_entry_with_its_spaces() {
        let t0 = Instant::now();
        let mut all: Vec<PathPeer> = (1..=3).map(simple).collect();
        all[2].unreachable = vec![id(1)];
        // The only other node cannot reach C either.
        all[1].unreachable = vec![id(3)];
        let mut a = Node::new(1);
        let plan = a.tick(t0, &view_of(1, &all)).clone();
        assert_eq!(plan.paths[&id(3)].via, None);
        assert_eq!(a.spaces_of(3), vec![space(3)]);
    }

    #[test]
    fn path_moves_back_to_direct_once_both_records_drop_the_other() {
        let t0 = Instant::now();
        let mut all: Vec<PathPeer> = (1..=3).map(simple).collect();
        let mut a = Node::new(1);
        for s in 0..=10 {
            a.device.hear(2, None);
            a.tick(t0 + Duration::from_secs(s), &view_of(1, &all));
        }
        assert_eq!(a.last.unreachable, vec![id(3)]);
        all[0].unreachable = vec![id(3)];
        all[2].unreachable = vec![id(1)];
        a.device.hear(2, None);
        a.tick(t0 + Duration::from_secs(11), &view_of(1, &all));
        assert_eq!(a.last.paths[&id(3)].via, Some(id(2)));

        // The underlay heals: the direct entry's keepalives get through.
        a.device.hear(2, None);
        a.device.hear(3, None);
        a.tick(t0 + Duration::from_secs(12), &view_of(1, &all));
        assert!(a.last.unreachable.is_empty());
        // C's record still lists A: still relayed, both ends agree.
        assert_eq!(a.last.paths[&id(3)].via, Some(id(2)));
        all[0].unreachable = Vec::new();
        all[2].unreachable = Vec::new();
        a.device.hear(2, None);
        a.device.hear(3, None);
        a.tick(t0 + Duration::from_secs(13), &view_of(1, &all));
        assert_eq!(a.last.paths[&id(3)].via, None);
        assert_eq!(a.spaces_of(3), vec![space(3)]);
        assert_eq!(a.spaces_of(2), vec![space(2)]);
    }

    #[test]
    fn a_wobbling_handshake_time_is_not_a_handshake_but_a_later_one_is() {
        let t0 = Instant::now();
        let mut paths = Paths::new(id(1));
        let view = [simple(2)];
        let wall = SystemTime::now();
        let device = |handshake: SystemTime| {
            let mut fake = FakeDevice::default();
            fake.0.insert(2, (Some(addr("192.0.2.2:6784")), 64));
            let mut status = fake.status();
            status.peers[0].last_handshake = Some(handshake);
            status
        };
        paths.update(t0, &view, &device(wall));
        for s in 1..=10 {
            let wobble = wall + Duration::from_millis(if s % 2 == 0 { 3 } else { 0 });
            paths.update(t0 + Duration::from_secs(s), &view, &device(wobble));
        }
        let plan = paths.update(t0 + Duration::from_secs(11), &view, &device(wall));
        assert_eq!(plan.unreachable, vec![id(2)]);
        let plan = paths.update(
            t0 + Duration::from_secs(12),
            &view,
            &device(wall + Duration::from_secs(12)),
        );
        assert!(plan.unreachable.is_empty());
    }

    #[test]
    fn a_new_key_starts_the_peer_over() {
        let t0 = Instant::now();
        let mut a = Node::new(1);
        let view = [simple(2)];
        a.device.hear(2, None);
        a.tick(t0, &view);
        a.device.hear(2, None);
        a.tick(t0 + Duration::from_secs(1), &view);
        assert!(a.last.paths[&id(2)].direct_ok);
        let mut rekeyed = simple(2);
        rekeyed.public_key = key(9);
        a.tick(t0 + Duration::from_secs(2), &[rekeyed]);
        assert!(!a.last.paths[&id(2)].direct_ok);
    }
}
