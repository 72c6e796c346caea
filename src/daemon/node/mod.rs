//! The daemon's node: the membership and IPAM cores, the members journal's decisions and
//! the API's answers, as one sans-IO state machine, driven like quinn-proto's `Connection`.
//!
//! [`Node`] has no socket, no task and reads no clock: every input carries `now` (and the
//! wall clock where handshake ages need it). The IO loop (`driver`) owns the transport, the
//! members journal's file, the channels to the API and the datapath, and pumps:
//!
//! 1. inputs: [`Node::start`] once; then [`Node::handle_message`] for each gossip message
//!    (with the sender's address and the node id the transport proved),
//!    [`Node::handle_timeout`] once [`Node::poll_timeout`] has passed,
//!    [`Node::handle_request`] for each API request, [`Node::handle_report`] and
//!    [`Node::handle_datapath_failed`] from the datapath task; to go,
//!    [`Node::hand_over`] (`weft reset`) then [`Node::leave`], each until [`Node::done`];
//! 2. after each input, the outputs, in this order: [`Node::poll_journal`] (write each one
//!    to the members journal and give the result to [`Node::handle_journal_result`], which
//!    may queue more), [`Node::poll_ipam_persist`] (write it off the async workers, one at a
//!    time, and give the result to [`Node::handle_ipam_persisted`]), [`Node::poll_answer`]
//!    (answer the API request with that id), [`Node::poll_transmit`] (send),
//!    [`Node::local_version`] (persist), [`Node::poll_view`] (publish to the datapath); then
//!    sleep until [`Node::poll_timeout`] or the write's end.
//!
//! An allocation (release, forget) is answered only once the IPAM state it changed is
//! written: the address a container gets survives a `kill -9` of the daemon.
//!
//! The journal comes first because a member's newer record reaches the IPAM core only once
//! every journal write asked for was done (or failed): what the IPAM core acts on is on
//! disk, so a `kill -9` loses nothing the node acted on.
//!
//! IPAM messages go to a member by node id (looked up to its gossip address); an incoming
//! IPAM message is attributed to the node the transport proved it came from, never to
//! anything the message says.

mod answer;
mod journal;
mod kube;
mod policy;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{debug, error, info, info_span, warn};
use weft_gossip::frame::{self, Channel};
use weft_gossip::ipam::{self, Ipam, Persist};
use weft_gossip::{Event, LeaveReason, Membership, NodeId, TransmitKind};

use super::api::Response;
use super::members::{JournalEntry, JournalWrite};
use super::view::{self, DatapathReport, LocalNode, MeshView};
use journal::Journal;
pub use kube::{ClusterNodes, KubePolicy};

/// First wait before contacting the seeds again while none has answered; doubles up to
/// [`JOIN_RETRY_MAX`].
const JOIN_RETRY_FIRST: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(30);
/// First wait before asking for address space again while this node owns none; doubles up
/// to [`SPACE_RETRY_MAX`].
const SPACE_RETRY_FIRST: Duration = Duration::from_millis(500);
const SPACE_RETRY_MAX: Duration = Duration::from_secs(10);
/// How often every member's record is checked for IPAM news and reachability, besides
/// whenever the membership reports an event (a dead member's record can change silently).
const MEMBER_SCAN: Duration = Duration::from_secs(1);
/// How long a leaving node keeps gossiping so that its leave spreads.
const LEAVE_GRACE: Duration = Duration::from_secs(1);
/// How long `weft reset` waits for the node that takes over the address space to
/// acknowledge it, before leaving anyway (the transfer stays in the signed record).
const HANDOVER_WAIT: Duration = Duration::from_secs(3);
/// The allocation id that holds this node's gateway address, so that no container gets it.
pub const GATEWAY_ID: &str = "weft:gateway";
/// The bridge containers attach to.
const BRIDGE: &str = "weft";
/// How long after a failed write of the IPAM state it is tried again.
const PERSIST_RETRY: Duration = Duration::from_secs(1);

/// Facts about this node that the cores do not hold.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The address the gossip transport is bound to.
    pub listen: SocketAddr,
    pub range: Ipv4Net,
    pub started: Instant,
    pub wg_port: u16,
    pub mtu: u32,
    /// This node's own WireGuard endpoints (host addresses with the WireGuard port).
    pub wg_local: Vec<SocketAddr>,
    /// `--datapath off`: no WireGuard device; readiness does not wait for one.
    pub datapath_off: bool,
    /// Where to join; none means this node starts a cluster (and its address space).
    pub seeds: Vec<SocketAddr>,
}

/// Bytes the loop must send to `dst`, framed with their channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    /// The member at `dst`, when known: the loop may reach it over a connection it opened
    /// from another address (behind NAT, `dst` itself may be unreachable from here).
    pub node: Option<NodeId>,
    pub kind: TransmitKind,
    pub bytes: Vec<u8>,
}

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// `weft reset`: waiting until `until` for the receiver of the space to acknowledge it.
    HandingOver {
        until: Instant,
    },
    /// The hand-over wait is over (the node still gossips until it leaves).
    HandedOver,
    /// Gossiping its leave until `until`.
    Leaving {
        until: Instant,
    },
    /// The leave had its time to spread.
    Left,
}

/// See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Node {
    core: Membership,
    ipam: Ipam,
    config: NodeConfig,
    phase: Phase,
    received: u64,
    refused: u64,
    /// When a message from each member last arrived (by its proven node id).
    last_seen: HashMap<NodeId, Instant>,
    /// The record version of each member whose IPAM bytes were handed to the IPAM core.
    fed: HashMap<NodeId, u64>,
    journal: Journal,
    /// Members' records changed (or the scan came due) and the IPAM core has not seen them
    /// yet: it will once the journal writes are done.
    feed_pending: bool,
    /// Reachability last told to the IPAM core.
    reachable: HashMap<NodeId, bool>,
    next_scan: Instant,
    /// The IPAM record sequence last put into the local record.
    published_seq: Option<u64>,
    /// Next request for address space, while this node has a genesis and no space.
    space_at: Instant,
    space_delay: Duration,
    /// The gateway address last made sure of (held by [`GATEWAY_ID`]).
    gateway: Option<Ipv4Addr>,
    /// What the datapath last reported, and what it cannot reach directly (sorted).
    report: DatapathReport,
    unreachable: Vec<NodeId>,
    /// Why the datapath task ended, if it did.
    datapath_failed: Option<String>,
    /// Next attempt to contact the seeds, while nobody has answered.
    join_at: Instant,
    join_delay: Duration,
    transmits: std::collections::VecDeque<Transmit>,
    /// Answers to API requests, by request id, ready to go.
    answers: std::collections::VecDeque<(u64, Response)>,
    /// Answers that wait until the IPAM state version they depend on is persisted.
    held: Vec<(u64, u64, Response)>,
    /// The IPAM state version being written by the loop.
    persisting: Option<u64>,
    /// After a failed write: when to try again.
    persist_retry_at: Option<Instant>,
    /// The view last handed out by [`Node::poll_view`].
    published: Option<MeshView>,
    /// What Kubernetes says (nothing unless [`Node::set_kubernetes`]).
    kube: kube::KubeState,
    /// Network policy (`policy.rs`): the core, whether the compiler's inputs must be handed
    /// out again, and the reconciler's last report.
    policy: Option<crate::daemon::policy::PolicyCore>,
    policy_dirty: bool,
    policy_report: crate::daemon::policy::PolicyReport,
}

impl Node {
    /// A node around its cores, starting from the members the journal gave back.
    pub fn new(
        config: NodeConfig,
        mut core: Membership,
        ipam: Ipam,
        restored: Vec<JournalEntry>,
        now: Instant,
    ) -> Self {
        // Start from the view this node had: live members are probed again, down ones keep
        // their records (and address space) known and passed on.
        let (live, down): (Vec<_>, Vec<_>) = restored.into_iter().partition(|r| r.live);
        if !live.is_empty() || !down.is_empty() {
            info!(
                live = live.len(),
                down = down.len(),
                "members restored from the journal"
            );
        }
        core.restore(now, live.into_iter().map(|r| r.record));
        let leaves: Vec<_> = down.iter().filter_map(|r| r.leave.clone()).collect();
        core.restore_down(now, down.into_iter().map(|r| r.record));
        core.restore_leaves(now, leaves);
        let journal = Journal::new(&core);
        Node {
            core,
            ipam,
            config,
            phase: Phase::Running,
            received: 0,
            refused: 0,
            last_seen: HashMap::new(),
            fed: HashMap::new(),
            journal,
            feed_pending: false,
            reachable: HashMap::new(),
            next_scan: now,
            published_seq: None,
            space_at: now,
            space_delay: SPACE_RETRY_FIRST,
            gateway: None,
            report: DatapathReport::default(),
            unreachable: Vec::new(),
            datapath_failed: None,
            join_at: now,
            join_delay: JOIN_RETRY_FIRST,
            transmits: std::collections::VecDeque::new(),
            answers: std::collections::VecDeque::new(),
            held: Vec::new(),
            persisting: None,
            persist_retry_at: None,
            published: None,
            kube: kube::KubeState::default(),
            policy: None,
            policy_dirty: false,
            policy_report: Default::default(),
        }
    }

    // ---- getters ----

    /// The local record's version: persist it (a restart must start above it).
    pub fn local_version(&self) -> u64 {
        self.core.local_version()
    }

    /// The IPAM core has left (handed its space over, or had none): the node's state may go.
    pub fn ipam_left(&self) -> bool {
        self.ipam.status() == ipam::Status::Left || self.kube_space_given_back()
    }

    /// The hand-over or the leave under way is over (never while running).
    pub fn done(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Running => false,
            Phase::HandingOver { until } => now >= until || self.ipam.poll_timeout().is_none(),
            Phase::Leaving { until } => now >= until,
            Phase::HandedOver | Phase::Left => true,
        }
    }

    // ---- inputs ----

    /// Start: a node with no seeds and no address space of its own starts one.
    pub fn start(&mut self, now: Instant) {
        if self.kube_start(now) {
            self.process(now);
            return;
        }
        if self.ipam.genesis().is_some() {
            info!(
                owned = ?self.ipam.owned_cidrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                allocations = self.ipam.allocations().len(),
                "address space restored"
            );
        } else if !self.config.seeds.is_empty() {
            info!("waiting to learn the cluster's address space from its members");
        } else {
            match self.ipam.init_genesis(now) {
                Ok(id) => {
                    info!(genesis = %id, range = %self.config.range, "no seeds: started a new address space")
                }
                Err(e) => error!(error = %e, "cannot start an address space"),
            }
        }
        self.process(now);
    }

    /// A framed gossip message from `from`, sent by `node` (as the transport proved).
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, node: NodeId, bytes: &[u8]) {
        self.received += 1;
        self.last_seen.insert(node, now);
        let result = match frame::unframe(bytes) {
            Ok((Channel::Membership, payload)) => self
                .core
                .handle_message(now, from, payload)
                .map_err(|e| e.to_string()),
            Ok((Channel::Ipam, payload)) => {
                // The IPAM core knows members by id only: its warnings get the name here.
                let _member = self.member_span(&node).entered();
                self.ipam
                    .handle_message(now, node, payload)
                    .map_err(|e| e.to_string())
            }
            Ok((Channel::Policy, payload)) => self.policy_message(node, payload),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            self.refused += 1;
            debug!(peer = %from, node = %node.short(), error = %e, "refused message");
        }
        self.process(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // A deadline that passed is no timer any more.
        match self.phase {
            Phase::HandingOver { until } if now >= until => self.phase = Phase::HandedOver,
            Phase::Leaving { until } if now >= until => self.phase = Phase::Left,
            _ => {}
        }
        self.core.handle_timeout(now);
        self.ipam.handle_timeout(now);
        self.kube_tick(now);
        self.process(now);
    }

    /// The datapath published a new report: keep it for the API, and advertise whom it
    /// cannot reach directly.
    pub fn handle_report(&mut self, now: Instant, report: DatapathReport) {
        let mut unreachable = report.unreachable.clone();
        unreachable.sort();
        unreachable.dedup();
        if unreachable != self.unreachable {
            info!(
                unreachable = ?unreachable.iter().map(NodeId::short).collect::<Vec<_>>(),
                "members without a direct tunnel changed"
            );
            self.unreachable = unreachable;
        }
        self.report = report;
        self.process(now);
    }

    /// The datapath task ended with `error` (its last report stays).
    pub fn handle_datapath_failed(&mut self, error: String) {
        self.datapath_failed = Some(error);
    }

    /// The result of the write of the IPAM state that [`Node::poll_ipam_persist`] handed
    /// out. On success what waited for it goes out; on failure the answers that waited get
    /// the error (a retry of the same request is answered the same), and the whole state is
    /// written again a second later.
    pub fn handle_ipam_persisted(
        &mut self,
        now: Instant,
        version: u64,
        result: Result<(), String>,
    ) {
        self.persisting = None;
        match result {
            Ok(()) => {
                self.persist_retry_at = None;
                self.ipam.persisted(version);
                let done = self.ipam.persisted_version();
                let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|(v, _, _)| *v <= done);
                self.held = held;
                self.answers
                    .extend(ready.into_iter().map(|(_, id, response)| (id, response)));
            }
            Err(e) => {
                error!(error = %e, "cannot write the address space state; retrying in a second");
                self.ipam.persist_failed();
                self.persist_retry_at = Some(now + PERSIST_RETRY);
                let error = format!("cannot write the address space state: {e}");
                for (_, id, _) in std::mem::take(&mut self.held) {
                    self.answers.push_back((
                        id,
                        Response::Error {
                            ok: false,
                            error: error.clone(),
                        },
                    ));
                }
            }
        }
        self.process(now);
    }

    /// The result of the oldest write [`Node::poll_journal`] handed out. Once every write
    /// is answered, the IPAM core gets what the members said.
    pub fn handle_journal_result(&mut self, now: Instant, result: Result<(), String>) {
        self.journal.result(result);
        if self.journal.settled() {
            self.process(now);
        }
    }

    /// `weft reset`, first half: hand every owned piece to a reachable node; [`Node::done`]
    /// once it acknowledged (its record shows the space) or a few seconds passed. Returns
    /// what happened to the space, for the answer.
    pub fn hand_over(&mut self, now: Instant) -> String {
        let summary = match self.kube.fixed {
            // The Node's pod CIDR is Kubernetes' to give to the next Node: nothing to hand.
            Some(space) => {
                format!("gave its address space {space} (the Node's pod CIDR) back to Kubernetes")
            }
            None => self.hand_over_ipam(now),
        };
        info!("reset: {summary}");
        self.phase = Phase::HandingOver {
            until: now + HANDOVER_WAIT,
        };
        self.process(now);
        summary
    }

    fn hand_over_ipam(&mut self, now: Instant) -> String {
        match self.ipam.leave(now) {
            Ok(Some(to)) => format!("handed its address space to {}", self.name_of(&to)),
            Ok(None) => "owned no address space".to_string(),
            Err(e) => format!("kept its address space ({e})"),
        }
    }

    /// Leave: gossip a signed leave for a moment ([`Node::done`] after). Stopping (SIGTERM)
    /// keeps the IPAM state: others keep this node's space for it.
    pub fn leave(&mut self, now: Instant, reason: LeaveReason) {
        self.core.leave(now, reason);
        self.phase = Phase::Leaving {
            until: now + LEAVE_GRACE,
        };
        self.process(now);
    }

    // ---- outputs ----

    /// The next write to the members journal. Write it, then hand the result to
    /// [`Node::handle_journal_result`] before anything else.
    #[must_use]
    pub fn poll_journal(&mut self) -> Option<JournalWrite> {
        self.journal.poll()
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next write of the IPAM state (one at a time): carry it out off the async
    /// runtime's workers, then give the result to [`Node::handle_ipam_persisted`]. Until then
    /// nothing that depends on it goes out: no IPAM message, no record, no answer to an
    /// allocation.
    #[must_use]
    pub fn poll_ipam_persist(&mut self, now: Instant) -> Option<Persist> {
        if self.persisting.is_some() || self.persist_retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let p = self.ipam.poll_persist()?;
        self.persisting = Some(p.version);
        Some(p)
    }

    /// The answer to the request with this id, once it may be given.
    #[must_use]
    pub fn poll_answer(&mut self) -> Option<(u64, Response)> {
        self.answers.pop_front()
    }

    /// The view for the datapath, when it changed since the last call.
    #[must_use]
    pub fn poll_view(&mut self) -> Option<MeshView> {
        let view = self.view();
        if self.published.as_ref() == Some(&view) {
            return None;
        }
        self.published = Some(view.clone());
        Some(view)
    }

    /// When [`Node::handle_timeout`] is due next.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let mut wake = self.next_scan;
        for t in [self.core.poll_timeout(), self.ipam.poll_timeout()]
            .into_iter()
            .flatten()
        {
            wake = wake.min(t);
        }
        if self.joining() {
            wake = wake.min(self.join_at);
        }
        if self.wants_space() {
            wake = wake.min(self.space_at);
        }
        if let Phase::HandingOver { until } | Phase::Leaving { until } = self.phase {
            wake = wake.min(until);
        }
        if let Some(t) = self.persist_retry_at {
            wake = wake.min(t);
        }
        if let Some(t) = self.policy.as_ref().and_then(|p| p.poll_timeout()) {
            wake = wake.min(t);
        }
        wake
    }

    // ---- the work after every input ----

    /// Hand everything the cores produced to each other and to the outputs: members' news
    /// to the journal and (once written) to the IPAM core, transmits out, and the local
    /// record republished if it changed.
    fn process(&mut self, now: Instant) {
        self.maybe_join(now);
        self.maybe_request_space(now);
        let mut members_changed = false;
        while let Some(event) = self.core.poll_event() {
            self.log_event(event);
            members_changed = true;
        }
        let scan = members_changed || now >= self.next_scan;
        if scan {
            // Into the journal first: what the IPAM core acts on survives a crash.
            self.journal.plan(&self.core);
            self.feed_pending = true;
            self.next_scan = now + MEMBER_SCAN;
        }
        if self.feed_pending && self.journal.settled() {
            self.feed_pending = false;
            self.feed_ipam(now);
        }
        self.reserve_gateway();
        while let Some(event) = self.ipam.poll_event() {
            if let ipam::Event::NodeForgotten { node, .. } = &event {
                // Forgotten by an operator anywhere in the cluster: out of the membership
                // view here too (and so out of the journal), not just out of the ring.
                self.core.forget(now, node);
            }
            self.log_ipam_event(event);
        }
        while let Some(t) = self.ipam.poll_transmit() {
            self.send_ipam(t);
        }
        self.policy_process(now, scan);
        self.sync_record(now);
        while let Some(t) = self.core.poll_transmit(now) {
            let node = self
                .core
                .members()
                .find(|m| m.record.gossip_addr == t.dst)
                .map(|m| m.record.node_id);
            self.transmits.push_back(Transmit {
                dst: t.dst,
                node,
                kind: t.kind,
                bytes: frame::frame(Channel::Membership, &t.bytes),
            });
        }
    }

    fn joining(&self) -> bool {
        !self.config.seeds.is_empty() && self.core.num_members() == 0 && !self.core.has_left()
    }

    /// Contact the seeds, again and again with backoff, until one of them has answered.
    fn maybe_join(&mut self, now: Instant) {
        if !self.joining() || now < self.join_at {
            return;
        }
        debug!(seeds = ?self.config.seeds, "contacting seeds");
        self.core.join(now, &self.config.seeds);
        self.join_at = now + self.join_delay;
        self.join_delay = (self.join_delay * 2).min(JOIN_RETRY_MAX);
    }

    fn wants_space(&self) -> bool {
        self.ipam.genesis().is_some()
            && self.ipam.owned().is_empty()
            && self.ipam.status() == ipam::Status::Active
            && !self.core.has_left()
    }

    /// A node that knows the genesis but owns no space asks for some, with backoff.
    fn maybe_request_space(&mut self, now: Instant) {
        if !self.wants_space() {
            self.space_delay = SPACE_RETRY_FIRST;
            return;
        }
        if now < self.space_at {
            return;
        }
        match self.ipam.request_space(now) {
            Ok(donor) => debug!(peer = %donor.short(), "asked for address space"),
            Err(e @ ipam::Error::NoAddressSpaceReachable { .. }) => {
                debug!(error = %e, "no address space to ask for yet")
            }
            Err(e) => warn!(error = %e, "cannot ask for address space"),
        }
        self.space_at = now + self.space_delay;
        self.space_delay = (self.space_delay * 2).min(SPACE_RETRY_MAX);
    }

    /// Hand members' newer IPAM records (journaled by now) and their reachability to the
    /// IPAM core.
    fn feed_ipam(&mut self, now: Instant) {
        if self.kube.fixed.is_some() {
            // A fixed space is an address space of its own: the cluster's ring is not ours.
            return;
        }
        let mut listed = std::collections::HashSet::with_capacity(self.core.num_members());
        for m in self.core.members() {
            let id = m.record.node_id;
            listed.insert(id);
            if !m.record.ipam.is_empty() && self.fed.get(&id) < Some(&m.record.version) {
                self.fed.insert(id, m.record.version);
                let _member =
                    info_span!("peer", node = %id.short(), name = %m.record.name).entered();
                if let Err(e) = self.ipam.handle_record(now, id, &m.record.ipam) {
                    match e {
                        ipam::Error::GenesisConflict(_) => {
                            error!(node = %id.short(), name = %m.record.name, error = %e, "address space conflict")
                        }
                        e => debug!(node = %id.short(), error = %e, "refused IPAM record"),
                    }
                }
            }
            // Alive and suspect members may still answer; failed, stopped and gone ones not.
            let reachable = m.state.is_live();
            if self.reachable.get(&id) != Some(&reachable) {
                self.reachable.insert(id, reachable);
                self.ipam.set_reachable(now, id, reachable);
            }
        }
        // Forgotten members are no longer listed.
        let gone: Vec<NodeId> = self
            .reachable
            .keys()
            .filter(|id| !listed.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.reachable.remove(&id);
            self.fed.remove(&id);
            self.ipam.set_reachable(now, id, false);
        }
    }

    /// The block of this node's space that holds its gateway (the bridge's address and
    /// prefix): the one the gateway is already the first address of, so that it does not
    /// move under running pods when other space comes or goes, else the core's main block
    /// (the largest one in use: where allocation looks first, so pods share its netmask).
    pub(super) fn main_space(&self) -> Option<Ipv4Net> {
        let cidrs = self.ipam.owned_cidrs();
        self.gateway
            .and_then(|g| cidrs.iter().find(|c| c.network() == g))
            .or(cidrs.first())
            .copied()
    }

    /// This node's space as CIDR blocks, the gateway's block first (the datapath puts the
    /// gateway on the bridge from the first one and routes the others).
    pub(super) fn local_spaces(&self) -> Vec<Ipv4Net> {
        let mut cidrs = self.ipam.owned_cidrs();
        if let Some(main) = self.main_space() {
            if let Some(i) = cidrs.iter().position(|c| *c == main) {
                cidrs[..=i].rotate_right(1);
            }
        }
        cidrs
    }

    /// This node's gateway (the first address of its main block, see [`Node::main_space`])
    /// must never go to a container: hold it under [`GATEWAY_ID`]. The range's network
    /// address (the gateway of the node that started the cluster) is never handed out
    /// anyway, so it is not held.
    fn reserve_gateway(&mut self) {
        if self.gateway.is_none() {
            // After a restart: the gateway held before, if any, stays the gateway.
            self.gateway = self
                .ipam
                .allocations()
                .into_iter()
                .find(|(c, _)| c == GATEWAY_ID)
                .map(|(_, a)| a);
        }
        let Some(gateway) = self.main_space().map(|s| s.network()) else {
            return;
        };
        if self.gateway == Some(gateway) {
            return;
        }
        self.gateway = Some(gateway);
        if gateway == self.range().network() {
            return;
        }
        let holder = self
            .ipam
            .allocations()
            .into_iter()
            .find(|(_, a)| *a == gateway)
            .map(|(c, _)| c);
        match holder.as_deref() {
            Some(GATEWAY_ID) => {}
            Some(other) => {
                warn!(%gateway, container = other, "this node's gateway address is held by a container")
            }
            None => {
                // A gateway held for an older main block is given back first.
                let _ = self.ipam.release(GATEWAY_ID);
                match self.ipam.allocate_at(GATEWAY_ID, gateway) {
                    Ok(_) => debug!(%gateway, "gateway address reserved"),
                    Err(e) => warn!(%gateway, error = %e, "could not reserve the gateway address"),
                }
            }
        }
    }

    /// Put the IPAM record, the WireGuard endpoints and the unreachable list into the local
    /// record when they changed.
    fn sync_record(&mut self, now: Instant) {
        if self.core.has_left() {
            return;
        }
        // A record shows only what is on disk (the IPAM core's ownership is persisted).
        let seq = self.ipam.record_seq();
        let ipam_bytes = if self.kube.fixed.is_some() {
            // Announced by label (see `kube`): no ring for others to take in.
            None
        } else if self.ipam.record_ready() && self.published_seq != Some(seq) {
            Some(self.ipam.record().unwrap_or_default())
        } else {
            None
        };
        let local = self.core.local_record();
        let mut endpoints = local.endpoints.clone();
        endpoints.local = self.config.wg_local.clone();
        endpoints.observed = self.observed_endpoint().into_iter().collect();
        let endpoints_changed = endpoints != local.endpoints;
        let ipam_changed = ipam_bytes.as_ref().is_some_and(|b| *b != local.ipam);
        // The record keeps what fits; compare with what it kept last time.
        let mut probe = local.clone();
        probe.set_unreachable(self.unreachable.iter().copied());
        let unreachable_changed = probe.unreachable != local.unreachable;
        // This node's pods stamp (network policy): others fetch the pods when it grows.
        let pods_label = self.pods_label();
        let pods_changed =
            pods_label.is_some() && pods_label.as_ref() != local.labels.get(policy::PODS_LABEL);
        if ipam_changed || endpoints_changed || unreachable_changed || pods_changed {
            let unreachable = self.unreachable.clone();
            let result = self.core.update_record(now, |r| {
                if let Some(bytes) = ipam_bytes {
                    r.ipam = bytes;
                }
                if let Some(label) = pods_label {
                    r.labels.insert(policy::PODS_LABEL.to_string(), label);
                }
                r.endpoints = endpoints;
                let dropped = r.set_unreachable(unreachable);
                if dropped > 0 {
                    debug!(dropped, "unreachable list cut to fit the record");
                }
            });
            if let Err(e) = result {
                warn!(error = %e, "cannot update this node's record");
                return;
            }
        }
        if self.ipam.record_ready() {
            self.published_seq = Some(seq);
        }
    }

    /// The WireGuard endpoint others may reach us at through NAT: the address the last peer
    /// saw our gossip come from, with the WireGuard port, when it is not one of ours.
    fn observed_endpoint(&self) -> Option<SocketAddr> {
        let ip = self.core.observed_addr()?.ip();
        let ours = self.config.wg_local.iter().any(|e| e.ip() == ip);
        let in_range = match ip {
            std::net::IpAddr::V4(v4) => self.config.range.contains(&v4),
            std::net::IpAddr::V6(_) => false,
        };
        (!ours && !in_range && !ip.is_unspecified() && !ip.is_loopback())
            .then(|| SocketAddr::new(ip, self.config.wg_port))
    }

    fn send_ipam(&mut self, t: ipam::Transmit) {
        let Some(record) = self.core.record(&t.to) else {
            debug!(node = %t.to.short(), "IPAM message for an unknown node dropped");
            return;
        };
        self.transmits.push_back(Transmit {
            dst: record.gossip_addr,
            node: Some(t.to),
            kind: TransmitKind::Stream,
            bytes: frame::frame(Channel::Ipam, &t.bytes),
        });
    }

    /// The range the ring counts from: the genesis's, else the configured one.
    fn range(&self) -> Ipv4Net {
        self.ipam.genesis().map_or(self.config.range, |g| g.range)
    }

    fn spaces(&self) -> BTreeMap<NodeId, Vec<Ipv4Net>> {
        let mut spaces = view::spaces_by_owner(&self.ipam.ownership(), self.range());
        self.announced_spaces(&mut spaces);
        spaces
    }

    fn view(&self) -> MeshView {
        let record = self.core.local_record();
        let local = LocalNode {
            node_id: record.node_id,
            name: record.name.clone(),
            wg_port: self.config.wg_port,
            spaces: self.local_spaces(),
        };
        view::build(
            local,
            self.config.range,
            self.core.members(),
            &self.spaces(),
        )
    }

    fn name_of(&self, id: &NodeId) -> String {
        self.core
            .record(id)
            .map_or_else(|| id.short(), |r| r.name.clone())
    }

    /// A span naming member `id` (short id and name), for log lines about it.
    fn member_span(&self, id: &NodeId) -> tracing::Span {
        let name = self.core.record(id).map_or("", |r| r.name.as_str());
        info_span!("peer", node = %id.short(), name)
    }

    fn log_event(&self, event: Event) {
        let id = *event.node();
        let member = self.core.member(&id);
        let _entered = self.member_span(&id).entered();
        let version = member.map_or(0, |m| m.record.version);
        let addr = member.map_or_else(String::new, |m| m.record.gossip_addr.to_string());
        match event {
            Event::Joined(_) => info!(%addr, version, "member joined"),
            Event::Updated(_) => debug!(version, "member updated its record"),
            Event::Suspected(_) => warn!("member suspected of failure"),
            Event::Failed(_) => warn!("member failed"),
            Event::Left(_) if member.is_some_and(|m| m.is_stopped()) => {
                info!("member stopped (keeps its address space)")
            }
            Event::Left(_) => info!("member left"),
            Event::Forgotten(_) => info!("member forgotten"),
        }
    }

    fn log_ipam_event(&self, event: ipam::Event) {
        match event {
            ipam::Event::GenesisAdopted { genesis, creator } => {
                info!(%genesis, creator = %self.name_of(&creator), "joined the cluster's address space")
            }
            ipam::Event::SpaceReceived { from, addresses } => info!(
                from = %self.name_of(&from),
                addresses,
                owned = ?self.ipam.owned_cidrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "received address space"
            ),
            ipam::Event::SpaceGiven { to, addresses } => {
                info!(to = %self.name_of(&to), addresses, "gave address space")
            }
            ipam::Event::NodeForgotten { node, by } => info!(
                node = %node.short(),
                by = %self.name_of(&by),
                "node forgotten; its address space was taken back"
            ),
            ipam::Event::Forgotten { by } => error!(
                by = %self.name_of(&by),
                "this node was forgotten by the cluster: it allocates no addresses until its state directory is reset"
            ),
            ipam::Event::Conflict(c) => error!(conflict = %c, "address space conflict"),
        }
    }
}
