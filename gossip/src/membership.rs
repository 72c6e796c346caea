//! The sans-IO membership core (SWIM with Lifeguard's refinements).
//!
//! [`Membership`] never touches a socket or a clock. Drive it like quinn-proto:
//!
//! 1. feed inputs: [`Membership::handle_message`] for every datagram or stream message that
//!    arrived (with the sender's address), [`Membership::handle_timeout`] when the instant
//!    from [`Membership::poll_timeout`] has passed, and local commands
//!    ([`Membership::join`], [`Membership::update_record`], [`Membership::leave`],
//!    [`Membership::forget`]);
//! 2. after each input, drain [`Membership::poll_transmit`] (send each [`Transmit`] as a
//!    datagram or on a fresh stream), [`Membership::poll_event`], and re-arm the timer from
//!    [`Membership::poll_timeout`].
//!
//! Who may change what: a member's *record* (keys, endpoints, IPAM bytes, labels) changes only
//! through a newer version signed by the member itself, and so does its *leave*. *Suspicion*
//! and *failure* are statements about another node, so they are not signed by the subject;
//! the subject answers them by signing its record again with a higher version (refutation).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, trace};
use weft_crypto::{IdentityKey, NodeId, Signature};

use crate::awareness::Awareness;
use crate::broadcast::BroadcastQueue;
use crate::config::{push_pull_scale, retransmit_limit, suspicion_timeout, Config};
use crate::error::{Error, Result};
use crate::members::{Entry, MemberState, Table};
use crate::record::{LeaveReason, NodeRecord, SignedLeave, SignedRecord, VerifiedRecord};
use crate::suspicion::Suspicion;
use crate::wire::{self, Message, Packet, StateEntry, Update, MAX_DATAGRAM, MAX_STREAM};

/// How a [`Transmit`] must be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// One unreliable datagram (≤ 1,200 bytes).
    Datagram,
    /// One message on a reliable stream (push-pull, ≤ 4 MiB).
    Stream,
}

/// Bytes the driver must send to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub kind: TransmitKind,
    pub bytes: Vec<u8>,
}

/// A change in this node's view of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// A node appeared, or came back after failing or leaving.
    Joined(NodeId),
    /// A live node published a newer record.
    Updated(NodeId),
    /// A node is suspected of having failed.
    Suspected(NodeId),
    /// A node was declared failed.
    Failed(NodeId),
    /// A node left on its own: see [`Membership::leave_reason`] (or
    /// [`MemberInfo::leave_reason`]) for whether it is stopping or gone for good.
    Left(NodeId),
    /// A node was forgotten (tombstoned) by the local operator.
    Forgotten(NodeId),
}

impl Event {
    pub fn node(&self) -> &NodeId {
        match self {
            Event::Joined(n)
            | Event::Updated(n)
            | Event::Suspected(n)
            | Event::Failed(n)
            | Event::Left(n)
            | Event::Forgotten(n) => n,
        }
    }
}

/// Counters of what the core received, sent and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams_in: u64,
    pub streams_in: u64,
    pub datagrams_out: u64,
    pub streams_out: u64,
    pub bytes_out: u64,
    /// Of `bytes_out`, how many went on streams (push-pull, reliable pings).
    pub stream_bytes_out: u64,
    /// Input refused because it was too long.
    pub oversized: u64,
    /// Input refused because of an unknown protocol version.
    pub unknown_version: u64,
    /// Input refused because it did not decode, or a record broke a bound.
    pub malformed: u64,
    /// Records or leaves whose signature did not check out (forged or tampered).
    pub bad_signature: u64,
    /// Updates about tombstoned (forgotten) nodes that were ignored.
    pub tombstoned: u64,
    /// Pings meant for another node (stale address).
    pub misdirected: u64,
    /// Indirect probe requests dropped because too many were in progress.
    pub relays_dropped: u64,
    /// Times this node refuted a suspicion or failure of itself.
    pub refutations: u64,
    /// Probes that got no ack, direct or indirect.
    pub probes_failed: u64,
}

impl Stats {
    fn count_error(&mut self, e: &Error) {
        match e {
            Error::TooLarge { .. } => self.oversized += 1,
            Error::UnknownVersion(_) => self.unknown_version += 1,
            Error::BadSignature(_) => self.bad_signature += 1,
            _ => self.malformed += 1,
        }
    }
}

/// A member as seen by this node.
#[derive(Debug, Clone, Copy)]
pub struct MemberInfo<'a> {
    pub record: &'a NodeRecord,
    pub state: MemberState,
    /// The incarnation `state` refers to (≥ `record.version`).
    pub incarnation: u64,
    /// Why the node left: set exactly when `state` is [`MemberState::Left`]. A node that is
    /// [`LeaveReason::Stopping`] shows as stopped (not failed) and keeps its address space;
    /// [`LeaveReason::Leaving`] means gone for good.
    pub leave_reason: Option<LeaveReason>,
}

impl MemberInfo<'_> {
    /// Left with [`LeaveReason::Stopping`]: down for now, expected back.
    pub fn is_stopped(&self) -> bool {
        self.leave_reason == Some(LeaveReason::Stopping)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Direct,
    Indirect,
}

#[derive(Debug)]
struct Probe {
    seq: u32,
    target: NodeId,
    phase: Phase,
    deadline: Instant,
    /// End of the probe period: without an ack by then, the target becomes suspect.
    end: Instant,
    expected_nacks: u32,
    nacks: u32,
}

#[derive(Debug)]
struct Relay {
    origin: SocketAddr,
    origin_seq: u32,
    deadline: Instant,
}

/// The membership state machine of one node. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Membership {
    config: Config,
    identity: IdentityKey,
    rng: ChaCha8Rng,
    local: Arc<VerifiedRecord>,
    leaving: Option<SignedLeave>,

    members: Table,
    /// Alive or suspect members (not counting ourselves).
    live: usize,
    /// Probe order: shuffled, walked round-robin, rebuilt at the end (SWIM's bounded
    /// detection time). May hold stale entries; each is checked against `members`.
    ring: Vec<Arc<VerifiedRecord>>,
    ring_pos: usize,
    leaves: HashMap<NodeId, SignedLeave>,

    queue: BroadcastQueue,
    awareness: Awareness,
    suspicions: HashMap<NodeId, Suspicion>,
    suspicion_deadlines: BTreeSet<(Instant, NodeId)>,
    down_since: BTreeMap<NodeId, Instant>,
    reclaim: BTreeSet<(Instant, NodeId)>,
    tombstones: HashMap<NodeId, Instant>,
    tombstone_expiry: BTreeSet<(Instant, NodeId)>,
    /// Failed or departed members removed after `down_retention`: the record version they
    /// had, and until when a push-pull that still lists them (at that version or older) is
    /// not taken for news. Without it two nodes that learned of a failure at different times
    /// would hand the member back and forth for ever.
    reaped: HashMap<NodeId, (u64, Instant)>,

    probe: Option<Probe>,
    next_seq: u32,
    relays: HashMap<u32, Relay>,
    relay_deadlines: BTreeSet<(Instant, u32)>,
    /// A ping to a failed member; an ack means it is back, and a push-pull follows.
    reconnect_ping: Option<(u32, SocketAddr)>,

    next_probe: Instant,
    next_gossip: Instant,
    next_push_pull: Instant,
    next_reconnect: Instant,

    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    observed: Option<SocketAddr>,
}

/// How soon after a join the settling push-pull comes (plus up to as much again, random).
const SETTLE_PUSH_PULL: Duration = Duration::from_secs(2);

fn random_within(rng: &mut ChaCha8Rng, d: Duration) -> Duration {
    let nanos = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.gen_range(0..nanos))
}

impl Membership {
    /// Start a node with its own `record`, signed here with `identity`.
    ///
    /// `record.version` must be higher than any version this node published before (in any
    /// earlier run): other nodes ignore records that are not newer than what they hold. The
    /// caller persists it; as the core raises it while running (refutations, updates, see
    /// [`Membership::local_version`]), a safe choice at start is
    /// `max(persisted + 1, wall-clock microseconds)`.
    pub fn new(
        config: Config,
        identity: IdentityKey,
        record: NodeRecord,
        now: Instant,
    ) -> Result<Self> {
        let local = Arc::new(VerifiedRecord::sign(record, &identity)?);
        let mut rng = ChaCha8Rng::seed_from_u64(config.rng_seed);
        let hash_key = rng.gen();
        let next_seq = rng.gen();
        let next_probe = now + random_within(&mut rng, config.probe_interval);
        let next_gossip = now + random_within(&mut rng, config.gossip_interval);
        let next_push_pull = now + random_within(&mut rng, config.push_pull_interval);
        let next_reconnect = now + config.reconnect_interval;
        let mut me = Self {
            awareness: Awareness::new(config.awareness_max),
            config,
            identity,
            rng,
            local,
            leaving: None,
            members: Table::new(hash_key),
            live: 0,
            ring: Vec::new(),
            ring_pos: 0,
            leaves: HashMap::new(),
            queue: BroadcastQueue::default(),
            suspicions: HashMap::new(),
            suspicion_deadlines: BTreeSet::new(),
            down_since: BTreeMap::new(),
            reclaim: BTreeSet::new(),
            tombstones: HashMap::new(),
            tombstone_expiry: BTreeSet::new(),
            reaped: HashMap::new(),
            probe: None,
            next_seq,
            relays: HashMap::new(),
            relay_deadlines: BTreeSet::new(),
            reconnect_ping: None,
            next_probe,
            next_gossip,
            next_push_pull,
            next_reconnect,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            observed: None,
        };
        me.broadcast_local();
        Ok(me)
    }

    // ---- getters ----

    pub fn local_id(&self) -> NodeId {
        *self.local.node_id()
    }

    pub fn local_record(&self) -> &NodeRecord {
        self.local.record()
    }

    /// The current version of the local record. Persist it: a restart must start above it.
    pub fn local_version(&self) -> u64 {
        self.local.version()
    }

    /// Every other known member, live or not, in a deterministic but unspecified order.
    pub fn members(&self) -> impl Iterator<Item = MemberInfo<'_>> {
        self.members.iter().map(|e| self.info(e))
    }

    /// Ids of the alive or suspect members other than this node (the ones [`num_live`]
    /// counts), in a deterministic but unspecified order.
    ///
    /// [`num_live`]: Membership::num_live
    pub fn live_members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|e| e.state.is_live())
            .map(|e| *e.id())
    }

    /// Whether `id` is an alive or suspect member (false for this node and unknown ids).
    pub fn is_live(&self, id: &NodeId) -> bool {
        self.members.get(id).is_some_and(|e| e.state.is_live())
    }

    /// Why a member (or this node) left, if it did.
    pub fn leave_reason(&self, id: &NodeId) -> Option<LeaveReason> {
        if *id == self.local_id() {
            return self.leaving.as_ref().map(|l| l.reason);
        }
        self.members
            .get(id)
            .and_then(|e| self.entry_leave_reason(e))
    }

    fn entry_leave_reason(&self, e: &Entry) -> Option<LeaveReason> {
        if e.state == MemberState::Left {
            self.leaves.get(e.id()).map(|l| l.reason)
        } else {
            None
        }
    }

    fn info<'a>(&'a self, e: &'a Entry) -> MemberInfo<'a> {
        MemberInfo {
            record: e.record.record(),
            state: e.state,
            incarnation: e.incarnation,
            leave_reason: self.entry_leave_reason(e),
        }
    }

    /// One member (or the local node).
    pub fn member(&self, id: &NodeId) -> Option<MemberInfo<'_>> {
        if *id == self.local_id() {
            let state = if self.leaving.is_some() {
                MemberState::Left
            } else {
                MemberState::Alive
            };
            return Some(MemberInfo {
                record: self.local.record(),
                state,
                incarnation: self.local.version(),
                leave_reason: self.leaving.as_ref().map(|l| l.reason),
            });
        }
        self.members.get(id).map(|e| self.info(e))
    }

    /// A member's record (or the local node's).
    pub fn record(&self, id: &NodeId) -> Option<&NodeRecord> {
        self.member(id).map(|m| m.record)
    }

    /// A member's verified record, to hand on (e.g. to persist the view or seed a restart).
    pub fn verified_record(&self, id: &NodeId) -> Option<Arc<VerifiedRecord>> {
        if *id == self.local_id() {
            return Some(self.local.clone());
        }
        self.members.get(id).map(|e| e.record.clone())
    }

    /// Known members other than this node.
    pub fn num_members(&self) -> usize {
        self.members.len()
    }

    /// Alive or suspect members other than this node.
    pub fn num_live(&self) -> usize {
        self.live
    }

    /// Lifeguard local health score: 0 is healthy; higher means this node is missing acks and
    /// has slowed down.
    pub fn health_score(&self) -> u32 {
        self.awareness.score()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Our address as the last member that acked a ping saw it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.observed
    }

    /// Updates waiting to be piggybacked.
    pub fn pending_broadcasts(&self) -> usize {
        self.queue.len()
    }

    pub fn has_left(&self) -> bool {
        self.leaving.is_some()
    }

    // ---- commands ----

    /// Contact `seeds` with a full-state push-pull; their replies bring the whole view.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        for &seed in seeds {
            if seed != self.local.record().gossip_addr {
                self.send_push_pull(seed, false);
            }
        }
        // One more full exchange a few seconds later, with a random member: rumours of nodes
        // that joined at the same time as this one (or as its seed) may all have gone to
        // others, and the periodic push-pull can be half a minute away.
        let settle = now + SETTLE_PUSH_PULL + random_within(&mut self.rng, SETTLE_PUSH_PULL);
        self.next_push_pull = self.next_push_pull.min(settle);
    }

    /// Add already-verified records as alive members, without gossiping them: for a node that
    /// restores a persisted view, or a simulator that starts from a converged cluster.
    /// Records older than what is held, our own, or tombstoned nodes' are skipped.
    pub fn restore(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = Arc<VerifiedRecord>>,
    ) {
        let records = records.into_iter();
        self.members.reserve(records.size_hint().0);
        for r in records {
            if self.is_news(&r) {
                self.accept_record(now, r, false);
            }
        }
        // A big view makes push-pull rarer; do not let the first one come early for everyone.
        let interval = push_pull_scale(self.config.push_pull_interval, self.live + 1);
        self.next_push_pull = now + random_within(&mut self.rng, interval);
    }

    /// Add already-verified records of members that were down when the view was persisted:
    /// they are held as failed (not probed; their records are passed on in push-pulls, and
    /// the periodic reconnect tries them), and removed after `down_retention` like any
    /// failed member. A node that is up after all refutes its failure as usual. Records
    /// older than what is held, our own, or tombstoned nodes' are skipped.
    pub fn restore_down(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = Arc<VerifiedRecord>>,
    ) {
        for r in records {
            if !self.is_news(&r) {
                continue;
            }
            let id = *r.node_id();
            if self.members.get(&id).is_some_and(|e| e.state.is_live()) {
                // Held as live at an older version: the newer record is news, not a failure.
                self.accept_record(now, r, false);
                continue;
            }
            let incarnation = r.version();
            self.members.insert(Entry {
                record: r,
                incarnation,
                state: MemberState::Dead,
            });
            self.mark_down(now, id);
        }
    }

    /// Apply persisted signed leaves of members already restored (with [`Self::restore_down`]):
    /// a node that stopped shows as stopped again, not failed. Each is verified.
    pub fn restore_leaves(&mut self, now: Instant, leaves: impl IntoIterator<Item = SignedLeave>) {
        for leave in leaves {
            self.on_leave(now, leave);
        }
    }

    /// The signed leave of a member that left (to persist it with its record).
    pub fn signed_leave(&self, id: &NodeId) -> Option<&SignedLeave> {
        self.members
            .get(id)
            .filter(|e| e.state == MemberState::Left)
            .and_then(|_| self.leaves.get(id))
    }

    /// Whether `id` was removed after its retention at record `version` or newer, recently.
    fn was_reaped(&self, now: Instant, id: &NodeId, version: u64) -> bool {
        self.reaped
            .get(id)
            .is_some_and(|&(v, until)| v >= version && now < until)
    }

    /// Whether a restored record is worth taking: another node's, not tombstoned, newer
    /// than what is held.
    fn is_news(&self, r: &VerifiedRecord) -> bool {
        let id = r.node_id();
        *id != self.local_id()
            && !self.is_tombstoned(id)
            && self
                .members
                .get(id)
                .is_none_or(|e| e.record.version() < r.version())
    }

    /// Change the local record (endpoints, IPAM bytes, labels, ...): `change` edits a copy,
    /// the version is raised by one, and the signed result is gossiped. The node id cannot be
    /// changed. Nothing changes if the result breaks a bound.
    pub fn update_record(
        &mut self,
        _now: Instant,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Result<()> {
        if self.leaving.is_some() {
            return Err(Error::HasLeft);
        }
        let mut record = self.local.record().clone();
        change(&mut record);
        record.node_id = self.local_id();
        record.version = self.local.version() + 1;
        self.set_local(record)
    }

    /// Leave the cluster: a signed leave carrying `reason` is gossiped. Keep driving the core
    /// for a few gossip intervals so it spreads, then stop. Probing stops at once. A second
    /// call changes nothing (the first reason stands).
    ///
    /// [`LeaveReason::Stopping`] (SIGTERM, restart): others show this node as stopped and keep
    /// its address space; it comes back by starting with a higher version.
    /// [`LeaveReason::Leaving`] (`weft reset`): gone for good.
    pub fn leave(&mut self, _now: Instant, reason: LeaveReason) {
        if self.leaving.is_some() {
            return;
        }
        let leave = SignedLeave::sign(&self.identity, self.local.version(), reason);
        self.queue
            .push(leave.node_id, true, Update::Leave(leave.clone()).to_bytes());
        self.leaving = Some(leave);
        self.probe = None;
    }

    /// Forget a node: drop it from the view and ignore everything about it (stale gossip
    /// included) until the tombstone expires after [`Config::tombstone_ttl`]. Local only.
    pub fn forget(&mut self, now: Instant, node: &NodeId) {
        if *node == self.local_id() {
            return;
        }
        if let Some(e) = self.members.remove(node) {
            if e.state.is_live() {
                self.live = self.live.saturating_sub(1);
            }
        }
        self.cancel_suspicion(node);
        self.down_since.remove(node);
        self.leaves.remove(node);
        if let Some(old) = self
            .tombstones
            .insert(*node, now + self.config.tombstone_ttl)
        {
            self.tombstone_expiry.remove(&(old, *node));
        }
        self.tombstone_expiry
            .insert((now + self.config.tombstone_ttl, *node));
        self.events.push_back(Event::Forgotten(*node));
    }

    // ---- inputs ----

    /// Process one datagram or stream message from `from`. A bad message is refused with a
    /// typed error (and counted) and changes nothing; inside a good message, each update whose
    /// signature fails is dropped and counted on its own.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Result<()> {
        let packet = match wire::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.count_error(&e);
                debug!(peer = %from, error = %e, "refused gossip message");
                return Err(e);
            }
        };
        match packet {
            Packet::Datagram { message, updates } => {
                self.stats.datagrams_in += 1;
                for u in updates {
                    self.apply_update(now, u);
                }
                self.handle_probe_message(now, from, message);
            }
            Packet::PushPull { reply, entries } => {
                self.stats.streams_in += 1;
                self.merge_state(now, entries);
                if !reply && self.leaving.is_none() {
                    self.send_push_pull(from, true);
                }
            }
        }
        Ok(())
    }

    /// Run the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.relay_deadlines.first() {
            if at > now {
                break;
            }
            self.relay_deadlines.pop_first();
            if let Some(relay) = self.relays.remove(&seq) {
                self.send_datagram(
                    relay.origin,
                    Message::Nack {
                        seq: relay.origin_seq,
                    },
                    None,
                );
            }
        }
        if self.probe.as_ref().is_some_and(|p| p.deadline <= now) {
            self.advance_probe(now);
        }
        while let Some(&(at, node)) = self.suspicion_deadlines.first() {
            if at > now {
                break;
            }
            self.suspicion_deadlines.pop_first();
            self.suspicion_expired(now, node);
        }
        while let Some(&(at, node)) = self.reclaim.first() {
            if at > now {
                break;
            }
            self.reclaim.pop_first();
            if self
                .down_since
                .get(&node)
                .is_some_and(|&since| since + self.config.down_retention == at)
            {
                self.down_since.remove(&node);
                self.leaves.remove(&node);
                if let Some(e) = self.members.remove(&node) {
                    self.reaped.retain(|_, (_, until)| *until > now);
                    self.reaped
                        .insert(node, (e.record.version(), now + self.config.down_retention));
                }
            }
        }
        while let Some(&(at, node)) = self.tombstone_expiry.first() {
            if at > now {
                break;
            }
            self.tombstone_expiry.pop_first();
            if self.tombstones.get(&node) == Some(&at) {
                self.tombstones.remove(&node);
            }
        }
        if now >= self.next_probe {
            self.next_probe = now + self.awareness.scale(self.config.probe_interval);
            if self.leaving.is_none() {
                if self.probe.is_some() {
                    self.probe_failed(now);
                }
                self.start_probe(now);
            }
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.gossip_round();
        }
        if now >= self.next_push_pull {
            self.next_push_pull =
                now + push_pull_scale(self.config.push_pull_interval, self.live + 1);
            if self.leaving.is_none() {
                if let Some(peer) = self.random_members(1, |e| e.state.is_live(), None).pop() {
                    self.send_push_pull(peer.record().gossip_addr, false);
                }
            }
        }
        if now >= self.next_reconnect {
            self.next_reconnect = now + self.config.reconnect_interval;
            self.reconnect();
        }
    }

    // ---- outputs ----

    /// The next thing to send, if any.
    #[must_use]
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Membership::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self
            .next_probe
            .min(self.next_gossip)
            .min(self.next_push_pull)
            .min(self.next_reconnect);
        let firsts = [
            self.probe.as_ref().map(|p| p.deadline),
            self.suspicion_deadlines.first().map(|x| x.0),
            self.relay_deadlines.first().map(|x| x.0),
            self.reclaim.first().map(|x| x.0),
            self.tombstone_expiry.first().map(|x| x.0),
        ];
        for at in firsts.into_iter().flatten() {
            t = t.min(at);
        }
        Some(t)
    }

    /// The next change in the view, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- probing ----

    fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Next live member in probe order, reshuffling the ring when it runs out.
    fn next_probe_target(&mut self) -> Option<Arc<VerifiedRecord>> {
        for _ in 0..2 {
            while self.ring_pos < self.ring.len() {
                let r = self.ring[self.ring_pos].clone();
                self.ring_pos += 1;
                if let Some(e) = self.members.get(r.node_id()) {
                    if e.state.is_live() {
                        return Some(e.record.clone());
                    }
                }
            }
            self.ring = self
                .members
                .iter()
                .filter(|e| e.state.is_live())
                .map(|e| e.record.clone())
                .collect();
            self.ring.shuffle(&mut self.rng);
            self.ring_pos = 0;
        }
        None
    }

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let id = *target.node_id();
        let seq = self.next_seq();
        // Lifeguard's "buddy system": tell a suspect it is suspected, so it refutes at once.
        let buddy = self
            .members
            .get(&id)
            .filter(|e| e.state == MemberState::Suspect)
            .map(|e| Update::Suspect {
                node: id,
                incarnation: e.incarnation,
                from: self.local_id(),
            });
        self.send_datagram(
            target.record().gossip_addr,
            Message::Ping { seq, target: id },
            buddy,
        );
        self.probe = Some(Probe {
            seq,
            target: id,
            phase: Phase::Direct,
            deadline: now + self.awareness.scale(self.config.probe_timeout),
            end: self.next_probe,
            expected_nacks: 0,
            nacks: 0,
        });
    }

    fn advance_probe(&mut self, now: Instant) {
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        if probe.phase == Phase::Indirect {
            self.probe_failed(now);
            return;
        }
        probe.phase = Phase::Indirect;
        probe.deadline = probe.end;
        let (seq, target) = (probe.seq, probe.target);
        let Some(addr) = self
            .members
            .get(&target)
            .map(|e| e.record.record().gossip_addr)
        else {
            self.probe = None;
            return;
        };
        let helpers = self.random_members(
            self.config.indirect_checks,
            |e| e.state == MemberState::Alive,
            Some(target),
        );
        for h in &helpers {
            self.send_datagram(
                h.record().gossip_addr,
                Message::PingReq { seq, target, addr },
                None,
            );
        }
        if let Some(p) = self.probe.as_mut() {
            p.expected_nacks = helpers.len() as u32;
        }
        self.send_message(
            addr,
            Message::PingReliable { seq, target },
            None,
            TransmitKind::Stream,
        );
    }

    fn probe_failed(&mut self, now: Instant) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        self.stats.probes_failed += 1;
        // Lifeguard: helpers that did not even nack suggest that we are the problem.
        let delta = if probe.expected_nacks > 0 {
            probe.expected_nacks.saturating_sub(probe.nacks)
        } else {
            1
        };
        self.awareness.apply(delta as i32);
        if let Some(e) = self.members.get(&probe.target) {
            if e.state.is_live() {
                let inc = e.incarnation;
                trace!(peer = ?probe.target, "probe failed");
                self.on_suspect(now, probe.target, inc, self.local_id());
            }
        }
    }

    fn handle_probe_message(&mut self, now: Instant, from: SocketAddr, message: Message) {
        match message {
            Message::Ping { seq, target } => {
                if target != self.local_id() {
                    self.stats.misdirected += 1;
                    return;
                }
                self.send_datagram(
                    from,
                    Message::Ack {
                        seq,
                        observed: from,
                    },
                    None,
                );
            }
            Message::Ack { seq, observed } => {
                if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
                    self.probe = None;
                    self.awareness.apply(-1);
                    self.observed = Some(observed);
                } else if self.reconnect_ping.is_some_and(|(s, _)| s == seq) {
                    if let Some((_, addr)) = self.reconnect_ping.take() {
                        self.send_push_pull(addr, false);
                    }
                } else if let Some(relay) = self.relays.remove(&seq) {
                    self.relay_deadlines.remove(&(relay.deadline, seq));
                    self.send_datagram(
                        relay.origin,
                        Message::Ack {
                            seq: relay.origin_seq,
                            observed: relay.origin,
                        },
                        None,
                    );
                }
            }
            Message::Nack { seq } => {
                if let Some(p) = self
                    .probe
                    .as_mut()
                    .filter(|p| p.seq == seq && p.phase == Phase::Indirect)
                {
                    p.nacks = (p.nacks + 1).min(p.expected_nacks);
                }
            }
            Message::PingReq { seq, target, addr } => {
                if self.relays.len() >= self.config.max_relays {
                    self.stats.relays_dropped += 1;
                    return;
                }
                let relay_seq = self.next_seq();
                let deadline = now + self.config.probe_timeout;
                self.relays.insert(
                    relay_seq,
                    Relay {
                        origin: from,
                        origin_seq: seq,
                        deadline,
                    },
                );
                self.relay_deadlines.insert((deadline, relay_seq));
                self.send_datagram(
                    addr,
                    Message::Ping {
                        seq: relay_seq,
                        target,
                    },
                    None,
                );
            }
            Message::PingReliable { seq, target } => {
                if target != self.local_id() {
                    self.stats.misdirected += 1;
                    return;
                }
                self.send_message(
                    from,
                    Message::Ack {
                        seq,
                        observed: from,
                    },
                    None,
                    TransmitKind::Stream,
                );
            }
            Message::Gossip => {}
        }
    }

    // ---- dissemination ----

    fn gossip_round(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let targets = self.random_members(self.config.gossip_nodes, |e| e.state.is_live(), None);
        for t in targets {
            if self.queue.is_empty() {
                break;
            }
            self.send_datagram(t.record().gossip_addr, Message::Gossip, None);
        }
    }

    /// Up to `k` distinct random members passing `filter`, other than `exclude`. O(k) expected
    /// when most members pass; gives up after a bounded number of draws.
    fn random_members(
        &mut self,
        k: usize,
        filter: impl Fn(&Entry) -> bool,
        exclude: Option<NodeId>,
    ) -> Vec<Arc<VerifiedRecord>> {
        let mut out: Vec<Arc<VerifiedRecord>> = Vec::with_capacity(k);
        if self.ring.is_empty() || k == 0 {
            return out;
        }
        for _ in 0..(4 * k + 8) {
            if out.len() == k {
                break;
            }
            let cand = &self.ring[self.rng.gen_range(0..self.ring.len())];
            let id = *cand.node_id();
            if Some(id) == exclude || out.iter().any(|o| *o.node_id() == id) {
                continue;
            }
            if let Some(e) = self.members.get(&id) {
                if filter(e) {
                    out.push(e.record.clone());
                }
            }
        }
        out
    }

    fn send_datagram(&mut self, dst: SocketAddr, message: Message, first: Option<Update>) {
        self.send_message(dst, message, first, TransmitKind::Datagram);
    }

    /// Send a probe message with as many piggybacked updates as fit in one datagram.
    fn send_message(
        &mut self,
        dst: SocketAddr,
        message: Message,
        first: Option<Update>,
        kind: TransmitKind,
    ) {
        let header = wire::datagram_header(&message);
        let mut body = Vec::new();
        let mut count = 0;
        let mut skip = None;
        if let Some(u) = first {
            skip = u.subject();
            u.encode(&mut body);
            count += 1;
        }
        // One byte for the update count (at most MAX_UPDATES < 128).
        let budget = MAX_DATAGRAM.saturating_sub(header.len() + body.len() + 1);
        let limit = retransmit_limit(self.config.retransmit_mult, self.live + 1);
        count += self.queue.fill(&mut body, budget, limit, skip);
        if matches!(message, Message::Gossip) && count == 0 {
            return;
        }
        let bytes = wire::finish_datagram(header, count, &body);
        debug_assert!(bytes.len() <= MAX_DATAGRAM);
        match kind {
            TransmitKind::Datagram => self.stats.datagrams_out += 1,
            TransmitKind::Stream => {
                self.stats.streams_out += 1;
                self.stats.stream_bytes_out += bytes.len() as u64;
            }
        }
        self.stats.bytes_out += bytes.len() as u64;
        self.transmits.push_back(Transmit { dst, kind, bytes });
    }

    fn broadcast_local(&mut self) {
        let update = Update::Alive(self.local.signed().clone());
        self.queue.push(self.local_id(), false, update.to_bytes());
    }

    fn set_local(&mut self, record: NodeRecord) -> Result<()> {
        self.local = Arc::new(VerifiedRecord::sign(record, &self.identity)?);
        self.broadcast_local();
        Ok(())
    }

    /// Answer a suspicion or failure of ourselves at `incarnation` by signing our record again
    /// with a higher version.
    fn refute(&mut self, incarnation: u64) {
        let mut record = self.local.record().clone();
        record.version = self.local.version().max(incarnation) + 1;
        if self.set_local(record).is_ok() {
            self.stats.refutations += 1;
            self.awareness.apply(1);
            debug!(
                version = self.local.version(),
                "refuted a suspicion of this node"
            );
        }
    }

    // ---- state changes ----

    fn is_tombstoned(&self, id: &NodeId) -> bool {
        self.tombstones.contains_key(id)
    }

    fn apply_update(&mut self, now: Instant, update: Update) {
        match update {
            Update::Alive(signed) => self.on_alive(now, signed),
            Update::Suspect {
                node,
                incarnation,
                from,
            } => self.on_suspect(now, node, incarnation, from),
            Update::Dead {
                node,
                incarnation,
                from,
            } => self.on_dead(now, node, incarnation, from),
            Update::Leave(leave) => self.on_leave(now, leave),
        }
    }

    fn verify(&mut self, signed: SignedRecord) -> Option<VerifiedRecord> {
        match VerifiedRecord::verify(signed, self.config.signature_cache.as_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                debug!(error = %e, "dropped gossiped record");
                self.stats.count_error(&e);
                None
            }
        }
    }

    fn on_alive(&mut self, now: Instant, signed: SignedRecord) {
        let Ok((id, version)) = signed.peek() else {
            self.stats.malformed += 1;
            return;
        };
        if self.is_tombstoned(&id) {
            self.stats.tombstoned += 1;
            return;
        }
        if id == self.local_id() {
            // A record of ours we did not make in this run: from before a restart, or forged.
            let ours = self.local.version();
            if (version > ours || (version == ours && signed.body != self.local.signed().body))
                && self.leaving.is_none()
                && self.verify(signed).is_some()
            {
                self.refute(version);
            }
            return;
        }
        if self
            .members
            .get(&id)
            .is_some_and(|e| e.record.version() >= version)
        {
            return;
        }
        if let Some(v) = self.verify(signed) {
            self.accept_record(now, Arc::new(v), true);
        }
    }

    /// Store a newer verified record of a member.
    fn accept_record(&mut self, _now: Instant, record: Arc<VerifiedRecord>, gossip: bool) {
        let id = *record.node_id();
        let version = record.version();
        let old = self.members.get(&id).map(|e| (e.state, e.incarnation));
        let (state, incarnation, event) = match old {
            None => (MemberState::Alive, version, Some(Event::Joined(id))),
            // A suspicion or failure at a newer incarnation than this record still stands.
            Some((s, inc)) if inc >= version && s != MemberState::Alive => (s, inc, None),
            Some((s, _)) if s.is_live() => (MemberState::Alive, version, Some(Event::Updated(id))),
            Some(_) => (MemberState::Alive, version, Some(Event::Joined(id))),
        };
        let was_live = old.is_some_and(|(s, _)| s.is_live());
        if state == MemberState::Alive {
            self.cancel_suspicion(&id);
            if self.down_since.remove(&id).is_some() {
                self.leaves.remove(&id);
            }
            if !was_live {
                self.live += 1;
                self.add_to_ring(record.clone());
            }
        }
        if gossip {
            self.queue
                .push(id, false, Update::Alive(record.signed().clone()).to_bytes());
        }
        self.members.insert(Entry {
            record,
            incarnation,
            state,
        });
        if let Some(ev) = event {
            self.events.push_back(ev);
        }
    }

    /// Put a new member at a random place in the part of the ring not yet walked, so it is
    /// probed within this round like memberlist does.
    fn add_to_ring(&mut self, record: Arc<VerifiedRecord>) {
        self.ring.push(record);
        let last = self.ring.len() - 1;
        let lo = self.ring_pos.min(last);
        let j = self.rng.gen_range(lo..=last);
        self.ring.swap(j, last);
    }

    /// What suspect and dead messages share: an accusation about a tombstoned node is dropped,
    /// and one about this node is refuted. Returns true when the message needs nothing more.
    fn answer_accusation_if_own(&mut self, node: NodeId, incarnation: u64) -> bool {
        if self.is_tombstoned(&node) {
            self.stats.tombstoned += 1;
            return true;
        }
        if node != self.local_id() {
            return false;
        }
        if self.leaving.is_none() {
            if incarnation >= self.local.version() {
                self.refute(incarnation);
            } else {
                // An accusation at an older incarnation: the accuser (and whoever
                // believes it) missed our last refutation. Send the current record again.
                self.broadcast_local();
            }
        }
        true
    }

    fn on_suspect(&mut self, now: Instant, node: NodeId, incarnation: u64, from: NodeId) {
        if self.answer_accusation_if_own(node, incarnation) {
            return;
        }
        let Some(e) = self.members.get(&node) else {
            return;
        };
        if incarnation < e.incarnation {
            // A stale suspicion: whoever believes it lacks the node's newer record, so pass
            // that record on again.
            if e.state == MemberState::Alive && e.record.version() > incarnation {
                let bytes = Update::Alive(e.record.signed().clone()).to_bytes();
                self.queue.push(node, false, bytes);
            }
            return;
        }
        match e.state {
            MemberState::Dead | MemberState::Left => {}
            MemberState::Suspect if incarnation > e.incarnation => {
                // A suspicion of a newer incarnation than we know: the node refuted once
                // already (we missed it). Start over at the new incarnation instead of
                // counting it as a confirmation of the old suspicion.
                self.cancel_suspicion(&node);
                if let Some(e) = self.members.get_mut(&node) {
                    e.state = MemberState::Alive;
                }
                self.on_suspect(now, node, incarnation, from);
            }
            MemberState::Suspect => {
                let Some(s) = self.suspicions.get_mut(&node) else {
                    return;
                };
                let before = s.deadline();
                if s.confirm(from) {
                    let after = s.deadline();
                    self.suspicion_deadlines.remove(&(before, node));
                    self.suspicion_deadlines.insert((after, node));
                    self.queue.push(
                        node,
                        true,
                        Update::Suspect {
                            node,
                            incarnation,
                            from,
                        }
                        .to_bytes(),
                    );
                }
            }
            MemberState::Alive => {
                let n = self.live + 1;
                let min = self.awareness.scale(suspicion_timeout(
                    self.config.suspicion_mult,
                    n,
                    self.config.probe_interval,
                ));
                let max = min * self.config.suspicion_max_timeout_mult;
                let k = self.config.suspicion_mult.saturating_sub(2);
                let s = Suspicion::new(from, now, min, max, k);
                self.suspicion_deadlines.insert((s.deadline(), node));
                self.suspicions.insert(node, s);
                if let Some(e) = self.members.get_mut(&node) {
                    e.state = MemberState::Suspect;
                    e.incarnation = incarnation;
                }
                self.events.push_back(Event::Suspected(node));
                self.queue.push(
                    node,
                    true,
                    Update::Suspect {
                        node,
                        incarnation,
                        from,
                    }
                    .to_bytes(),
                );
            }
        }
    }

    fn suspicion_expired(&mut self, now: Instant, node: NodeId) {
        self.suspicions.remove(&node);
        let Some(e) = self.members.get(&node) else {
            return;
        };
        if e.state == MemberState::Suspect {
            let inc = e.incarnation;
            debug!(peer = ?node, "suspicion timed out; member failed");
            self.on_dead(now, node, inc, self.local_id());
        }
    }

    fn cancel_suspicion(&mut self, node: &NodeId) {
        if let Some(s) = self.suspicions.remove(node) {
            self.suspicion_deadlines.remove(&(s.deadline(), *node));
        }
    }

    fn mark_down(&mut self, now: Instant, node: NodeId) {
        self.cancel_suspicion(&node);
        if let Some(old) = self.down_since.insert(node, now) {
            self.reclaim
                .remove(&(old + self.config.down_retention, node));
        }
        self.reclaim
            .insert((now + self.config.down_retention, node));
    }

    fn on_dead(&mut self, now: Instant, node: NodeId, incarnation: u64, from: NodeId) {
        if self.answer_accusation_if_own(node, incarnation) {
            return;
        }
        let Some(e) = self.members.get_mut(&node) else {
            return;
        };
        if incarnation < e.incarnation || !e.state.is_live() {
            return;
        }
        e.state = MemberState::Dead;
        e.incarnation = incarnation;
        self.live = self.live.saturating_sub(1);
        self.mark_down(now, node);
        self.events.push_back(Event::Failed(node));
        self.queue.push(
            node,
            true,
            Update::Dead {
                node,
                incarnation,
                from,
            }
            .to_bytes(),
        );
    }

    fn on_leave(&mut self, now: Instant, leave: SignedLeave) {
        let node = leave.node_id;
        if self.is_tombstoned(&node) {
            self.stats.tombstoned += 1;
            return;
        }
        if node == self.local_id() {
            // An old leave of ours, replayed while we run: make it stale.
            if self.leaving.is_none()
                && leave.version >= self.local.version()
                && leave.verify().is_ok()
            {
                self.refute(leave.version);
            }
            return;
        }
        let Some(e) = self.members.get(&node) else {
            return;
        };
        if leave.version < e.record.version() || e.state == MemberState::Left {
            return;
        }
        if let Err(err) = leave.verify() {
            self.stats.count_error(&err);
            return;
        }
        let was_live = e.state.is_live();
        if let Some(e) = self.members.get_mut(&node) {
            e.state = MemberState::Left;
            e.incarnation = e.incarnation.max(leave.version);
        }
        if was_live {
            self.live = self.live.saturating_sub(1);
        }
        self.mark_down(now, node);
        self.queue
            .push(node, true, Update::Leave(leave.clone()).to_bytes());
        self.leaves.insert(node, leave);
        self.events.push_back(Event::Left(node));
    }

    // ---- push-pull ----

    fn send_push_pull(&mut self, dst: SocketAddr, reply: bool) {
        let mut entries = Vec::with_capacity(self.members.len() + 1);
        let mut size = 16;
        let me = StateEntry {
            record: self.local.signed().clone(),
            state: if self.leaving.is_some() {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            incarnation: self.local.version(),
            leave: self.leaving.as_ref().map(|l| (l.reason, l.signature)),
        };
        size += me.record.encoded_len() + 76;
        entries.push(me);
        for e in self.members.iter() {
            let leave: Option<(LeaveReason, Signature)> = if e.state == MemberState::Left {
                self.leaves.get(e.id()).map(|l| (l.reason, l.signature))
            } else {
                None
            };
            if e.state == MemberState::Left && leave.is_none() {
                continue;
            }
            let record = e.record.signed();
            let len = record.encoded_len() + 76;
            if size + len > MAX_STREAM {
                break;
            }
            size += len;
            entries.push(StateEntry {
                record: record.clone(),
                state: e.state,
                incarnation: e.incarnation,
                leave,
            });
        }
        let bytes = wire::encode_push_pull(reply, &entries);
        self.stats.streams_out += 1;
        self.stats.stream_bytes_out += bytes.len() as u64;
        self.stats.bytes_out += bytes.len() as u64;
        self.transmits.push_back(Transmit {
            dst,
            kind: TransmitKind::Stream,
            bytes,
        });
    }

    fn merge_state(&mut self, now: Instant, entries: Vec<StateEntry>) {
        let me = self.local_id();
        for entry in entries {
            let Ok((id, version)) = entry.record.peek() else {
                self.stats.malformed += 1;
                continue;
            };
            match entry.state {
                MemberState::Alive => self.on_alive(now, entry.record),
                // Like memberlist, a remote "dead" only makes us suspect: we give the node a
                // chance to refute instead of trusting one peer's old view.
                MemberState::Suspect | MemberState::Dead => {
                    if id == me || self.members.get(&id).is_some() {
                        self.on_alive(now, entry.record);
                        self.on_suspect(now, id, entry.incarnation.max(version), me);
                    } else if self.was_reaped(now, &id, version) {
                        // Removed here after its retention; still listed by a node that
                        // learned of it later.
                    } else if entry.state == MemberState::Dead {
                        // Unlike memberlist, learn a failed member we never saw (as failed):
                        // its record says which address space is its own, and a node that
                        // joined after it failed must know that to agree on the ring and to
                        // `forget` it. If it is up after all, the reconnect finds it and it
                        // refutes.
                        if !self.is_tombstoned(&id) {
                            if let Some(v) = self.verify(entry.record) {
                                self.restore_down(now, [Arc::new(v)]);
                            }
                        }
                    } else {
                        self.on_alive(now, entry.record);
                        self.on_suspect(now, id, entry.incarnation.max(version), me);
                    }
                }
                MemberState::Left => {
                    if let Some((reason, signature)) = entry.leave {
                        let leave = SignedLeave {
                            node_id: id,
                            version: entry.incarnation,
                            reason,
                            signature,
                        };
                        // A member we never saw that left is learned too, for its record
                        // (where its address space went), if the leave is signed by it.
                        let known = id == me || self.members.get(&id).is_some();
                        if known || (!self.was_reaped(now, &id, version) && leave.verify().is_ok())
                        {
                            self.on_alive(now, entry.record);
                            self.on_leave(now, leave);
                        }
                    }
                }
            }
        }
    }

    /// Ping one random failed (not departed) member; if it answers, push-pull with it. After
    /// a partition heals, this is how the two sides learn of each other again.
    fn reconnect(&mut self) {
        if self.leaving.is_some() || self.down_since.is_empty() {
            return;
        }
        let failed: Vec<NodeId> = self
            .down_since
            .keys()
            .filter(|id| {
                self.members
                    .get(id)
                    .is_some_and(|e| e.state == MemberState::Dead)
            })
            .copied()
            .collect();
        if failed.is_empty() {
            return;
        }
        let pick = failed[self.rng.gen_range(0..failed.len())];
        if let Some(addr) = self
            .members
            .get(&pick)
            .map(|e| e.record.record().gossip_addr)
        {
            let seq = self.next_seq();
            self.reconnect_ping = Some((seq, addr));
            self.send_datagram(addr, Message::Ping { seq, target: pick }, None);
        }
    }
}
