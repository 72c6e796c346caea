//! The gossip driver: pumps the sans-IO membership and IPAM cores with the QUIC transport, a
//! timer, API queries and the datapath's reports, and publishes the [`MeshView`] the datapath
//! follows. It alone owns the cores, so the view needs no lock.
//!
//! One transport carries both protocols: every message is framed with its channel
//! (membership or IPAM). IPAM messages go to a member by node id (looked up to its gossip
//! address) on reliable streams; an incoming IPAM message is attributed to the node the
//! transport proved it came from, never to anything the message says.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::sleep_until;
use tracing::{debug, error, info, info_span, warn};
use weft_gossip::frame::{self, Channel};
use weft_gossip::ipam::{self, FileStore, Ipam};
use weft_gossip::transport::{self, Incoming, Transport};
use weft_gossip::{
    Event, LeaveReason, MemberInfo, MemberState, Membership, NodeId, Transmit, TransmitKind,
};

use super::api::{
    Allocation, GossipCounters, MemberCounts, Peer, PeerLinkInfo, PeerState, Query, Request,
    Response, Status,
};
use super::members::{Liveness, MembersJournal};
use super::state::VersionFile;
use super::view::{self, DatapathReport, LocalNode, MeshView};

/// Sends in flight at once. A send to an unreachable peer waits for its handshake to time
/// out, so this bounds the tasks piling up behind dead peers; gossip beyond it is dropped
/// (the protocol tolerates lost datagrams, and push-pull is retried on its own; IPAM
/// retransmits what matters).
const MAX_SENDS: usize = 256;
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
/// How long shutdown waits for sends in flight before closing the transport.
const SEND_DRAIN: Duration = Duration::from_secs(1);
/// A peer counts as up when its last handshake is at most this old (WireGuard rekeys every
/// two minutes while traffic flows).
const PEER_UP_WITHIN: Duration = Duration::from_secs(180);
/// The allocation id that holds this node's gateway address, so that no container gets it.
pub const GATEWAY_ID: &str = "weft:gateway";
/// The bridge containers attach to.
const BRIDGE: &str = "weft";

/// Facts about this node that the cores do not hold.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub listen: SocketAddr,
    pub range: Ipv4Net,
    pub started: Instant,
    pub wg_port: u16,
    pub mtu: u32,
    /// This node's own WireGuard endpoints (host addresses with the WireGuard port).
    pub wg_local: Vec<SocketAddr>,
    /// `--datapath off`: no WireGuard device; readiness does not wait for one.
    pub datapath_off: bool,
}

/// The channels between the driver and the datapath task.
#[derive(Debug)]
pub struct DatapathLink {
    pub view: watch::Sender<Option<MeshView>>,
    pub report: watch::Receiver<DatapathReport>,
    /// Set when the datapath task ended with an error.
    pub failed: watch::Receiver<Option<String>>,
}

/// Why the driver stopped.
#[derive(Debug)]
pub enum Exit {
    /// SIGTERM/SIGINT: the node told the others it is stopping, and kept its state.
    Stopped,
    /// `weft reset`: the node handed its space back and left for good. The caller removes
    /// the host's state, then answers the request with `summary` and what it did.
    Reset {
        reply: oneshot::Sender<Response>,
        summary: String,
        /// The node holds no address space any more (it handed it over, or had none): its
        /// state may go, and the next launch is a new node.
        left: bool,
    },
}

/// Counters shared with the send tasks.
#[derive(Debug, Default)]
struct SendCounters {
    sent: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug)]
pub struct Driver {
    core: Membership,
    ipam: Ipam<FileStore>,
    transport: Transport,
    sends: Arc<Semaphore>,
    counters: Arc<SendCounters>,
    received: u64,
    refused: u64,
    /// When a message from each member last arrived (by its proven node id).
    last_seen: HashMap<NodeId, Instant>,
    /// The record version of each member whose IPAM bytes were handed to the IPAM core.
    fed: HashMap<NodeId, u64>,
    /// Members' records in the state directory, written before the IPAM core sees them.
    journal: MembersJournal,
    /// The record version and liveness of each member as last written to the journal.
    journaled: HashMap<NodeId, (u64, Liveness)>,
    journal_failing: bool,
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
    /// What the datapath last said it cannot reach directly.
    unreachable: Vec<NodeId>,
    datapath: DatapathLink,
    report_open: bool,
    seeds: Vec<SocketAddr>,
    /// Next attempt to contact the seeds, while nobody has answered.
    join_at: Instant,
    join_delay: Duration,
    version: VersionFile,
    info: NodeInfo,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Membership,
        ipam: Ipam<FileStore>,
        transport: Transport,
        seeds: Vec<SocketAddr>,
        version: VersionFile,
        journal: MembersJournal,
        info: NodeInfo,
        datapath: DatapathLink,
        now: Instant,
    ) -> Self {
        // What the journal gave back (restored into `core` by the caller) is on disk already.
        let journaled = core
            .members()
            .map(|m| (m.record.node_id, (m.record.version, Liveness::of(m.state))))
            .collect();
        Driver {
            core,
            ipam,
            transport,
            sends: Arc::new(Semaphore::new(MAX_SENDS)),
            counters: Arc::default(),
            received: 0,
            refused: 0,
            last_seen: HashMap::new(),
            fed: HashMap::new(),
            journal,
            journaled,
            journal_failing: false,
            reachable: HashMap::new(),
            next_scan: now,
            published_seq: None,
            space_at: now,
            space_delay: SPACE_RETRY_FIRST,
            gateway: None,
            unreachable: Vec::new(),
            datapath,
            report_open: true,
            seeds,
            join_at: now,
            join_delay: JOIN_RETRY_FIRST,
            version,
            info,
        }
    }

    /// Run until `shutdown` completes (or the transport closes, or `weft reset`), then leave
    /// and close.
    pub async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Exit> {
        tokio::pin!(shutdown);
        self.save_version()?;
        self.start_ipam(Instant::now());
        let mut reset = None;
        loop {
            let now = Instant::now();
            self.maybe_join(now);
            self.maybe_request_space(now);
            self.flush(now);
            self.publish_view();
            let wake = self.next_wake(now);
            tokio::select! {
                () = sleep_until(wake.into()) => self.handle_timeout(Instant::now()),
                incoming = self.transport.recv() => match incoming {
                    Some(msg) => self.handle_incoming(msg),
                    None => anyhow::bail!("the gossip transport closed"),
                },
                Some(query) = queries.recv() => {
                    if query.request == Request::Reset {
                        reset = Some(query.reply);
                        break;
                    }
                    let response = self.answer(query.request);
                    let _ = query.reply.send(response);
                }
                changed = self.datapath.report.changed(), if self.report_open => {
                    if changed.is_err() {
                        // The datapath task ended; its last report (and error) stay.
                        self.report_open = false;
                    } else {
                        self.take_report();
                    }
                }
                () = &mut shutdown => break,
            }
        }
        match reset {
            None => {
                self.leave(LeaveReason::Stopping).await;
                Ok(Exit::Stopped)
            }
            Some(reply) => {
                let summary = self.hand_over().await;
                let left = self.ipam.status() == ipam::Status::Left;
                self.leave(LeaveReason::Leaving).await;
                Ok(Exit::Reset {
                    reply,
                    summary,
                    left,
                })
            }
        }
    }

    /// A node started with no seeds and no address space of its own starts one.
    fn start_ipam(&mut self, now: Instant) {
        if self.ipam.genesis().is_some() {
            info!(
                owned = ?self.ipam.owned_cidrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                allocations = self.ipam.allocations().len(),
                "address space restored"
            );
            return;
        }
        if !self.seeds.is_empty() {
            info!("waiting to learn the cluster's address space from its members");
            return;
        }
        match self.ipam.init_genesis(now) {
            Ok(id) => {
                info!(genesis = %id, range = %self.info.range, "no seeds: started a new address space")
            }
            Err(e) => error!(error = %e, "cannot start an address space"),
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self
            .core
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .min(self.next_scan);
        if let Some(t) = self.ipam.poll_timeout() {
            wake = wake.min(t);
        }
        if self.joining() {
            wake = wake.min(self.join_at);
        }
        if self.wants_space() {
            wake = wake.min(self.space_at);
        }
        wake.max(now)
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.ipam.handle_timeout(now);
    }

    fn joining(&self) -> bool {
        !self.seeds.is_empty() && self.core.num_members() == 0 && !self.core.has_left()
    }

    /// Contact the seeds, again and again with backoff, until one of them has answered.
    fn maybe_join(&mut self, now: Instant) {
        if !self.joining() || now < self.join_at {
            return;
        }
        debug!(seeds = ?self.seeds, "contacting seeds");
        self.core.join(now, &self.seeds);
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

    fn handle_incoming(&mut self, msg: Incoming) {
        let now = Instant::now();
        self.received += 1;
        self.last_seen.insert(msg.node, now);
        let result = match frame::unframe(&msg.bytes) {
            Ok((Channel::Membership, payload)) => self
                .core
                .handle_message(now, msg.from, payload)
                .map_err(|e| e.to_string()),
            Ok((Channel::Ipam, payload)) => self
                .ipam
                .handle_message(now, msg.node, payload)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            self.refused += 1;
            debug!(peer = %msg.from, node = %msg.node.short(), error = %e, "refused message");
        }
    }

    /// The datapath published a new report: advertise whom it cannot reach directly.
    fn take_report(&mut self) {
        let mut unreachable = self.datapath.report.borrow_and_update().unreachable.clone();
        unreachable.sort();
        unreachable.dedup();
        if unreachable != self.unreachable {
            info!(
                unreachable = ?unreachable.iter().map(NodeId::short).collect::<Vec<_>>(),
                "members without a direct tunnel changed"
            );
            self.unreachable = unreachable;
        }
    }

    /// Hand everything the cores produced to the network and to each other, log their
    /// events, republish the local record if it changed, and persist a raised version.
    fn flush(&mut self, now: Instant) {
        let mut members_changed = false;
        while let Some(event) = self.core.poll_event() {
            self.log_event(event);
            members_changed = true;
        }
        if members_changed || now >= self.next_scan {
            self.sync_members(now);
            self.next_scan = now + MEMBER_SCAN;
        }
        self.reserve_gateway(now);
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
        self.sync_record(now);
        while let Some(t) = self.core.poll_transmit(now) {
            self.send(t);
        }
        if let Err(e) = self.save_version() {
            warn!(error = %format!("{e:#}"), "cannot persist the record version");
        }
    }

    /// Hand members' newer IPAM records and their reachability to the IPAM core.
    fn sync_members(&mut self, now: Instant) {
        let mut seen = HashSet::with_capacity(self.core.num_members());
        let mut journal = Vec::new();
        for m in self.core.members() {
            let id = m.record.node_id;
            seen.insert(id);
            let now_is = (m.record.version, Liveness::of(m.state));
            if self.journaled.get(&id) != Some(&now_is) {
                journal.push((id, now_is));
            }
        }
        // Into the journal first: what the IPAM core acts on survives a crash.
        for (id, (version, liveness)) in journal {
            let old = self.journaled.insert(id, (version, liveness));
            let same_record = old.is_some_and(|(v, _)| v == version);
            let written = self.journal_member(id, same_record, liveness);
            self.journal_result(written);
        }
        for m in self.core.members() {
            let id = m.record.node_id;
            if !m.record.ipam.is_empty() && self.fed.get(&id) < Some(&m.record.version) {
                self.fed.insert(id, m.record.version);
                if let Err(e) = self.ipam.handle_record(now, id, &m.record.ipam) {
                    match e {
                        ipam::Error::GenesisConflict(_) => {
                            error!(node = %id.short(), name = %m.record.name, error = %e, "address space conflict")
                        }
                        e => {
                            debug!(node = %id.short(), error = %e, "refused IPAM record")
                        }
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
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.reachable.remove(&id);
            self.fed.remove(&id);
            self.ipam.set_reachable(now, id, false);
        }
        let forgotten: Vec<NodeId> = self
            .journaled
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        for id in forgotten {
            self.journaled.remove(&id);
            let written = self.journal.gone(&id);
            self.journal_result(written);
        }
        if self.journal.wants_compaction(self.journaled.len()) {
            let members: Vec<_> = self
                .journaled
                .iter()
                .filter_map(|(id, &(_, liveness))| {
                    let leave = self.core.signed_leave(id).cloned();
                    Some((self.core.verified_record(id)?, liveness, leave))
                })
                .collect();
            let written = self
                .journal
                .rewrite(members.iter().map(|(r, liveness, leave)| {
                    (r.signed(), *liveness == Liveness::Live, leave.as_ref())
                }));
            self.journal_result(written);
        }
    }

    /// Journal what changed about a member: its record (unless only its liveness changed),
    /// and that it is down, or left (with its signed leave).
    fn journal_member(
        &mut self,
        id: NodeId,
        same_record: bool,
        liveness: Liveness,
    ) -> anyhow::Result<()> {
        if !same_record || liveness == Liveness::Live {
            let Some(r) = self.core.verified_record(&id) else {
                return Ok(());
            };
            self.journal
                .record(r.signed(), liveness == Liveness::Live)?;
        } else if liveness == Liveness::Down {
            self.journal.down(&id)?;
        }
        if liveness == Liveness::Left {
            match self.core.signed_leave(&id) {
                Some(leave) => self.journal.left(leave)?,
                None => self.journal.down(&id)?,
            }
        }
        Ok(())
    }

    /// A journal that cannot be written costs only the view after a restart: warn once.
    fn journal_result(&mut self, result: anyhow::Result<()>) {
        match result {
            Ok(()) => self.journal_failing = false,
            Err(e) if !self.journal_failing => {
                self.journal_failing = true;
                warn!(error = %format!("{e:#}"), "cannot write the members journal");
            }
            Err(_) => {}
        }
    }

    /// This node's gateway (the first address of its first piece) must never go to a
    /// container: hold it under [`GATEWAY_ID`]. The allocator is next-fit from the lowest
    /// owned address, so the first allocation in fresh space is the gateway.
    fn reserve_gateway(&mut self, now: Instant) {
        let Some(gateway) = self.ipam.owned_cidrs().first().map(Ipv4Net::network) else {
            return;
        };
        if self.gateway == Some(gateway) {
            return;
        }
        self.gateway = Some(gateway);
        let range = self.ipam.genesis().map_or(self.info.range, |g| g.range);
        if gateway == range.network() {
            return; // the range's network address is never handed out anyway
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
                // A gateway held for an older first piece is given back first.
                let _ = self.ipam.release(GATEWAY_ID);
                match self.ipam.allocate(now, GATEWAY_ID) {
                    Ok(a) if a == gateway => debug!(%gateway, "gateway address reserved"),
                    Ok(a) => {
                        warn!(%gateway, got = %a, "could not reserve the gateway address");
                        let _ = self.ipam.release(GATEWAY_ID);
                    }
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
        let seq = self.ipam.record_seq();
        let ipam_bytes = if self.published_seq != Some(seq) {
            Some(self.ipam.record().unwrap_or_default())
        } else {
            None
        };
        let local = self.core.local_record();
        let mut endpoints = local.endpoints.clone();
        endpoints.local = self.info.wg_local.clone();
        endpoints.observed = self.observed_endpoint().into_iter().collect();
        let endpoints_changed = endpoints != local.endpoints;
        let ipam_changed = ipam_bytes.as_ref().is_some_and(|b| *b != local.ipam);
        // The record keeps what fits; compare with what it kept last time.
        let mut probe = local.clone();
        probe.set_unreachable(self.unreachable.iter().copied());
        let unreachable_changed = probe.unreachable != local.unreachable;
        if ipam_changed || endpoints_changed || unreachable_changed {
            let unreachable = self.unreachable.clone();
            let result = self.core.update_record(now, |r| {
                if let Some(bytes) = ipam_bytes {
                    r.ipam = bytes;
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
        self.published_seq = Some(seq);
    }

    /// The WireGuard endpoint others may reach us at through NAT: the address the last peer
    /// saw our gossip come from, with the WireGuard port, when it is not one of ours.
    fn observed_endpoint(&self) -> Option<SocketAddr> {
        let ip = self.core.observed_addr()?.ip();
        let ours = self.info.wg_local.iter().any(|e| e.ip() == ip);
        let in_range = match ip {
            std::net::IpAddr::V4(v4) => self.info.range.contains(&v4),
            std::net::IpAddr::V6(_) => false,
        };
        (!ours && !in_range && !ip.is_unspecified() && !ip.is_loopback())
            .then(|| SocketAddr::new(ip, self.info.wg_port))
    }

    /// Publish the view if it changed.
    fn publish_view(&mut self) {
        let view = self.view();
        self.datapath.view.send_if_modified(|current| {
            if current.as_ref() == Some(&view) {
                false
            } else {
                *current = Some(view);
                true
            }
        });
    }

    fn spaces(&self) -> BTreeMap<NodeId, Vec<Ipv4Net>> {
        let range = self.ipam.genesis().map_or(self.info.range, |g| g.range);
        view::spaces_by_owner(&self.ipam.ownership(), range)
    }

    fn view(&self) -> MeshView {
        let record = self.core.local_record();
        let local = LocalNode {
            node_id: record.node_id,
            name: record.name.clone(),
            wg_port: self.info.wg_port,
            spaces: self.ipam.owned_cidrs(),
        };
        view::build(local, self.info.range, self.core.members(), &self.spaces())
    }

    fn save_version(&mut self) -> anyhow::Result<()> {
        self.version.save(self.core.local_version())
    }

    fn send(&self, t: Transmit) {
        let kind = match t.kind {
            TransmitKind::Datagram => transport::Kind::Datagram,
            TransmitKind::Stream => transport::Kind::Stream,
        };
        self.spawn_send(t.dst, kind, frame::frame(Channel::Membership, &t.bytes));
    }

    fn send_ipam(&self, t: ipam::Transmit) {
        let Some(record) = self.core.record(&t.to) else {
            debug!(node = %t.to.short(), "IPAM message for an unknown node dropped");
            return;
        };
        let dst = record.gossip_addr;
        self.spawn_send(
            dst,
            transport::Kind::Stream,
            frame::frame(Channel::Ipam, &t.bytes),
        );
    }

    fn spawn_send(&self, dst: SocketAddr, kind: transport::Kind, bytes: Vec<u8>) {
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            debug!(peer = %dst, "too many sends in flight; dropping a message");
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let transport = self.transport.clone();
        let counters = self.counters.clone();
        tokio::spawn(async move {
            match transport.send(dst, kind, Bytes::from(bytes)).await {
                Ok(()) => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    match e {
                        e @ transport::Error::AdmissionRejected { .. } => {
                            warn!(peer = %dst, error = %e, "not admitted")
                        }
                        e => debug!(peer = %dst, error = %e, "send failed"),
                    }
                }
            }
            drop(permit);
        });
    }

    fn name_of(&self, id: &NodeId) -> String {
        self.core
            .record(id)
            .map_or_else(|| id.short(), |r| r.name.clone())
    }

    fn log_event(&self, event: Event) {
        let id = *event.node();
        let member = self.core.member(&id);
        let name = member.map_or("", |m| m.record.name.as_str());
        let span = info_span!("peer", node = %id.short(), name);
        let _entered = span.enter();
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

    fn answer(&mut self, request: Request) -> Response {
        let now = Instant::now();
        let result = match request {
            Request::Status => Ok(Response::Status {
                ok: true,
                status: self.status(),
            }),
            Request::Peers => Ok(Response::Peers {
                ok: true,
                peers: self.peers(),
            }),
            Request::Ipam => serde_json::to_value(self.ipam.report())
                .map(|ipam| Response::Ipam { ok: true, ipam })
                .map_err(|e| format!("cannot encode the IPAM report: {e}")),
            Request::Allocate { container } => self.allocate(now, &container),
            Request::Release { container } => self.release(&container),
            Request::Forget { node } => self.forget(now, &node),
            Request::Connect { addr } => self.connect(now, &addr),
            // Handled by the loop: it ends the driver.
            Request::Reset => Err("reset is handled by the driver loop".into()),
            // The pods layer (pods.rs) answers these before they reach the driver.
            Request::Pods | Request::AllocatePod(_) | Request::ReleasePod { .. } => {
                Err("CNI requests are handled by the pods layer".into())
            }
        };
        result.unwrap_or_else(|error| Response::Error { ok: false, error })
    }

    fn allocate(&mut self, now: Instant, container: &str) -> Result<Response, String> {
        if container == GATEWAY_ID {
            return Err(format!(
                "{GATEWAY_ID:?} is reserved for this node's gateway"
            ));
        }
        self.reserve_gateway(now);
        let address = match self.ipam.allocate(now, container) {
            Ok(a) => a,
            Err(e @ ipam::Error::SpaceRequested { .. })
            | Err(e @ ipam::Error::NoAddressSpaceReachable { .. })
            | Err(e @ ipam::Error::NoGenesis) => {
                return Err(format!("no address space reachable: try again later ({e})"))
            }
            Err(e) => return Err(e.to_string()),
        };
        let cidrs = self.ipam.owned_cidrs();
        let (Some(first), Some(block)) =
            (cidrs.first(), cidrs.iter().find(|c| c.contains(&address)))
        else {
            return Err(format!(
                "address {address} is not in this node's space (internal error)"
            ));
        };
        let address = Ipv4Net::new(address, block.prefix_len()).map_err(|e| e.to_string())?;
        info!(container, %address, "address allocated");
        Ok(Response::Allocation {
            ok: true,
            allocation: Allocation {
                container: container.to_string(),
                address,
                gateway: first.network(),
                cluster_range: self.info.range,
                bridge: BRIDGE.to_string(),
                mtu: self.info.mtu,
            },
        })
    }

    fn release(&mut self, container: &str) -> Result<Response, String> {
        if container == GATEWAY_ID {
            return Err(format!(
                "{GATEWAY_ID:?} is reserved for this node's gateway"
            ));
        }
        let message = match self.ipam.release(container).map_err(|e| e.to_string())? {
            Some(a) => {
                info!(container, address = %a, "address released");
                format!("released {a} of {container}")
            }
            None => format!("{container} had no address"),
        };
        Ok(Response::Done { ok: true, message })
    }

    /// The member `text` names: its node id, short id, or name.
    fn resolve_member(&self, text: &str) -> Result<NodeId, String> {
        if text == self.core.local_record().name
            || text == self.core.local_id().to_string()
            || text == self.core.local_id().short()
        {
            return Err("that is this node: use `weft reset` to take it out".into());
        }
        let matches: Vec<MemberInfo<'_>> = self
            .core
            .members()
            .filter(|m| {
                let id = m.record.node_id;
                id.to_string() == text || id.short() == text || m.record.name == text
            })
            .collect();
        match matches.as_slice() {
            [] => Err(format!("no member named {text:?} or with that id")),
            [m] => Ok(m.record.node_id),
            many => Err(format!(
                "{text:?} names {} members ({}); give the node id",
                many.len(),
                many.iter()
                    .map(|m| format!("{} {}", m.record.name, m.record.node_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn forget(&mut self, now: Instant, text: &str) -> Result<Response, String> {
        let id = self.resolve_member(text)?;
        let (name, state) = match self.core.member(&id) {
            Some(m) => (m.record.name.clone(), view::peer_state(&m)),
            None => return Err(format!("no member {text:?}")),
        };
        if matches!(state, PeerState::Alive | PeerState::Suspect) {
            return Err(format!(
                "node {name} ({}) is reachable ({}): a live node must leave by itself (`weft reset` on it), not be forgotten",
                id.short(),
                state.as_str()
            ));
        }
        let space = match self.ipam.forget(now, id) {
            Ok(reclaim) => {
                let addresses: u64 = reclaim.pieces.iter().map(|p| u64::from(p.len())).sum();
                format!("took back its {addresses} addresses")
            }
            Err(ipam::Error::UnknownNode(_)) | Err(ipam::Error::NoGenesis) => {
                "it held no address space".to_string()
            }
            Err(e) => return Err(e.to_string()),
        };
        self.core.forget(now, &id);
        info!(node = %id.short(), name, "forgot node");
        Ok(Response::Done {
            ok: true,
            message: format!("forgot {name} ({}); {space}", id.short()),
        })
    }

    fn connect(&mut self, now: Instant, addr: &str) -> Result<Response, String> {
        // The API resolved names already: only `ip:port` reaches here.
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an ip:port"))?;
        if self.core.has_left() {
            return Err("this node has left the cluster".into());
        }
        self.core.join(now, &[addr]);
        info!(peer = %addr, "contacting node on request");
        Ok(Response::Done {
            ok: true,
            message: format!("contacting {addr}"),
        })
    }

    fn status(&self) -> Status {
        let mut members = MemberCounts {
            alive: 1,
            total: 1,
            ..MemberCounts::default()
        };
        for m in self.core.members() {
            members.total += 1;
            match m.state {
                MemberState::Alive => members.alive += 1,
                MemberState::Suspect => members.suspect += 1,
                MemberState::Dead => members.failed += 1,
                MemberState::Left => members.left += 1,
            }
        }
        let record = self.core.local_record();
        let report = self.datapath.report.borrow();
        let failed = self.datapath.failed.borrow();
        let datapath = if self.info.datapath_off {
            "off".to_string()
        } else if !report.kind.is_empty() {
            match &report.error {
                Some(e) => format!("{} (error: {e})", report.kind),
                None => report.kind.clone(),
            }
        } else if let Some(e) = failed.as_ref().or(report.error.as_ref()) {
            format!("error: {e}")
        } else {
            "starting".into()
        };
        let space = self.ipam.owned_cidrs();
        let joined = self.seeds.is_empty() || self.core.num_members() > 0;
        let peers_total = self
            .datapath
            .view
            .borrow()
            .as_ref()
            .map_or(0, |v| v.peers.len());
        let now = SystemTime::now();
        let peers_up = report
            .peers
            .values()
            .filter(|l| {
                l.last_handshake
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age <= PEER_UP_WITHIN)
            })
            .count();
        Status {
            name: record.name.clone(),
            node_id: record.node_id.to_string(),
            listen: self.info.listen,
            gossip_addr: record.gossip_addr,
            version: self.core.local_version(),
            range: self.info.range.to_string(),
            members,
            datapath,
            uptime_secs: self.info.started.elapsed().as_secs(),
            ready: joined
                && !space.is_empty()
                && (self.info.datapath_off || (report.ready && failed.is_none())),
            peers_up,
            peers_total,
            address_space: space.iter().map(ToString::to_string).collect(),
            addresses_used: self.ipam.allocations().len() as u64,
            addresses_free: self.ipam.free_addresses(),
            gossip: GossipCounters {
                sent: self.counters.sent.load(Ordering::Relaxed),
                received: self.received,
                send_failures: self.counters.failed.load(Ordering::Relaxed),
                refused: self.refused,
            },
            fail_closed_drops: report.fail_closed_drops,
        }
    }

    fn peers(&self) -> Vec<Peer> {
        let now = Instant::now();
        let local = self.core.local_id();
        let spaces = self.spaces();
        let report = self.datapath.report.borrow();
        let mut out: Vec<Peer> = self
            .core
            .member(&local)
            .into_iter()
            .chain(self.core.members())
            .map(|m| {
                let is_self = m.record.node_id == local;
                let link = if is_self {
                    None
                } else {
                    report.peers.get(&m.record.node_id).map(|l| PeerLinkInfo {
                        endpoint: l.endpoint,
                        via: l.via.map(|v| self.name_of(&v)),
                        last_handshake_secs: l
                            .last_handshake
                            .and_then(|t| SystemTime::now().duration_since(t).ok())
                            .map(|d| d.as_secs_f64()),
                        rx_bytes: l.rx_bytes,
                        tx_bytes: l.tx_bytes,
                        spaces: spaces
                            .get(&m.record.node_id)
                            .map(|s| s.iter().map(ToString::to_string).collect())
                            .unwrap_or_default(),
                    })
                };
                self.peer(m, is_self, link, now)
            })
            .collect();
        // This node first, then the others by name.
        let first = usize::from(!out.is_empty());
        out[first..].sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn peer(
        &self,
        m: MemberInfo<'_>,
        is_self: bool,
        link: Option<PeerLinkInfo>,
        now: Instant,
    ) -> Peer {
        let r = m.record;
        Peer {
            name: r.name.clone(),
            node_id: r.node_id.to_string(),
            node_id_short: r.node_id.short(),
            is_self,
            endpoint: r.gossip_addr,
            wireguard_endpoints: view::wireguard_endpoints(r),
            wireguard_public_key: r.wg_key.to_string(),
            state: view::peer_state(&m),
            incarnation: m.incarnation,
            version: r.version,
            last_seen_secs: self
                .last_seen
                .get(&r.node_id)
                .map(|t| now.saturating_duration_since(*t).as_secs_f64()),
            link,
        }
    }

    /// `weft reset`, first half: hand every owned piece to a reachable node, and keep
    /// gossiping until it acknowledged (its record shows the space) or a few seconds passed.
    async fn hand_over(&mut self) -> String {
        let start = Instant::now();
        let summary = match self.ipam.leave(start) {
            Ok(Some(to)) => format!("handed its address space to {}", self.name_of(&to)),
            Ok(None) => "owned no address space".to_string(),
            Err(e) => format!("kept its address space ({e})"),
        };
        info!("reset: {summary}");
        let end = start + HANDOVER_WAIT;
        loop {
            let now = Instant::now();
            self.flush(now);
            if now >= end || self.ipam.poll_timeout().is_none() {
                break;
            }
            let wake = self.next_wake(now).min(end);
            tokio::select! {
                () = sleep_until(wake.into()) => self.handle_timeout(Instant::now()),
                Some(msg) = self.transport.recv() => self.handle_incoming(msg),
            }
        }
        summary
    }

    /// Leave: gossip a signed leave for a moment, let sends finish, close the transport.
    /// Stopping (SIGTERM) keeps the IPAM state: others keep this node's space for it.
    async fn leave(mut self, reason: LeaveReason) {
        let start = Instant::now();
        self.core.leave(start, reason);
        let end = start + LEAVE_GRACE;
        loop {
            let now = Instant::now();
            self.flush(now);
            if now >= end {
                break;
            }
            let wake = self.next_wake(now).min(end);
            tokio::select! {
                () = sleep_until(wake.into()) => self.handle_timeout(Instant::now()),
                Some(msg) = self.transport.recv() => self.handle_incoming(msg),
            }
        }
        let drain = self.sends.acquire_many(MAX_SENDS as u32);
        let _ = tokio::time::timeout(SEND_DRAIN, drain).await;
        self.transport.close().await;
        match reason {
            LeaveReason::Stopping => info!("stopped; address space and host state kept"),
            LeaveReason::Leaving => info!("left the cluster for good"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use weft_crypto::{ClusterSecret, IdentityKey, WgPrivateKey};
    use weft_gossip::ipam::IpamConfig;
    use weft_gossip::transport::TransportConfig;
    use weft_gossip::NodeRecord;

    use super::*;

    const RANGE: &str = "10.40.0.0/16";

    /// A driver on a loopback transport with its IPAM state in `dir`; the returned sender
    /// stands in for the datapath.
    fn driver(
        dir: &Path,
        name: &str,
        seeds: Vec<SocketAddr>,
        key: &IdentityKey,
    ) -> (Driver, watch::Sender<DatapathReport>) {
        let identity =
            Arc::new(IdentityKey::from_base64(&key.to_base64_secret()).expect("copy identity"));
        let core_identity =
            IdentityKey::from_base64(&identity.to_base64_secret()).expect("copy identity");
        let transport = Transport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            TransportConfig::new(identity.clone(), ClusterSecret::generate()),
        )
        .expect("transport");
        let addr = transport.local_addr().expect("local addr");
        let range: Ipv4Net = RANGE.parse().expect("range");
        let ipam =
            Ipam::open(identity, IpamConfig::new(range), FileStore::new(dir), 7).expect("ipam");
        let now = Instant::now();
        let record = NodeRecord::new(
            core_identity.node_id(),
            1,
            name,
            WgPrivateKey::generate().public_key(),
            addr,
        );
        let core = Membership::new(weft_gossip::Config::default(), core_identity, record, now)
            .expect("core");
        let (view, _) = watch::channel(None);
        let (report_tx, report) = watch::channel(DatapathReport::default());
        let (_, failed) = watch::channel(None);
        let info = NodeInfo {
            listen: addr,
            range,
            started: now,
            wg_port: 6784,
            mtu: 1420,
            wg_local: vec!["192.0.2.1:6784".parse().expect("addr")],
            datapath_off: false,
        };
        let link = DatapathLink {
            view,
            report,
            failed,
        };
        let version = VersionFile::open(dir).expect("version file");
        let (journal, _) = MembersJournal::open(dir).expect("members journal");
        let d = Driver::new(
            core, ipam, transport, seeds, version, journal, info, link, now,
        );
        (d, report_tx)
    }

    fn ok_message(r: Response) -> String {
        match r {
            Response::Done { ok: true, message } => message,
            other => panic!("expected done, got {other:?}"),
        }
    }

    fn error_text(r: Response) -> String {
        match r {
            Response::Error { ok: false, error } => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn allocation(r: Response) -> Allocation {
        match r {
            Response::Allocation {
                ok: true,
                allocation,
            } => allocation,
            other => panic!("expected an allocation, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_seed_starts_the_space_and_answers_every_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = IdentityKey::generate();
        let (mut d, _report) = driver(dir.path(), "seed", Vec::new(), &key);
        let now = Instant::now();
        d.start_ipam(now);
        d.flush(now);
        d.publish_view();

        let range: Ipv4Net = RANGE.parse().expect("range");
        let view = d
            .datapath
            .view
            .borrow()
            .clone()
            .expect("a view is published");
        assert_eq!(view.local.spaces, vec![range]);
        assert_eq!(view.local.wg_port, 6784);
        assert!(view.peers.is_empty());
        let record = d.core.local_record();
        assert!(!record.ipam.is_empty(), "the IPAM record is not published");
        assert_eq!(record.endpoints.local, d.info.wg_local);

        let a = allocation(d.answer(Request::Allocate {
            container: "c1".into(),
        }));
        assert!(range.contains(&a.address.addr()), "{a:?}");
        assert_eq!(a.address.prefix_len(), 16);
        assert_eq!(a.gateway, range.network());
        assert_ne!(a.address.addr(), a.gateway);
        assert_eq!(
            (a.bridge.as_str(), a.mtu, a.cluster_range),
            ("weft", 1420, range)
        );
        let again = allocation(d.answer(Request::Allocate {
            container: "c1".into(),
        }));
        assert_eq!(again.address, a.address, "same id, same address");
        let other = allocation(d.answer(Request::Allocate {
            container: "c2".into(),
        }));
        assert_ne!(other.address, a.address);
        let reserved = error_text(d.answer(Request::Allocate {
            container: GATEWAY_ID.into(),
        }));
        assert!(reserved.contains("reserved"), "{reserved}");

        let msg = ok_message(d.answer(Request::Release {
            container: "c1".into(),
        }));
        assert!(msg.contains(&a.address.addr().to_string()), "{msg}");
        let msg = ok_message(d.answer(Request::Release {
            container: "c1".into(),
        }));
        assert!(msg.contains("no address"), "{msg}");

        let e = error_text(d.answer(Request::Forget {
            node: "seed".into(),
        }));
        assert!(e.contains("this node"), "{e}");
        let e = error_text(d.answer(Request::Forget {
            node: "nobody".into(),
        }));
        assert!(e.contains("no member"), "{e}");
        let e = error_text(d.answer(Request::Connect {
            addr: "somewhere".into(),
        }));
        assert!(e.contains("ip:port"), "{e}");
        let msg = ok_message(d.answer(Request::Connect {
            addr: "127.0.0.1:9".into(),
        }));
        assert!(msg.contains("127.0.0.1:9"), "{msg}");

        match d.answer(Request::Ipam) {
            Response::Ipam { ok: true, ipam } => {
                assert!(ipam["genesis"].is_object(), "{ipam}");
                assert_eq!(ipam["range"], RANGE);
            }
            other => panic!("{other:?}"),
        }
        match d.answer(Request::Status) {
            Response::Status { ok: true, status } => {
                assert_eq!(status.address_space, vec![RANGE.to_string()]);
                assert_eq!(status.addresses_used, 1, "c2 only");
                assert_eq!(status.datapath, "starting");
                assert!(!status.ready, "ready before the datapath is");
            }
            other => panic!("{other:?}"),
        }
        d.transport.close().await;

        // The allocations survive a restart of the daemon (same state directory).
        let (mut d, _report) = driver(dir.path(), "seed", Vec::new(), &key);
        d.start_ipam(Instant::now());
        let back = allocation(d.answer(Request::Allocate {
            container: "c2".into(),
        }));
        assert_eq!(back.address, other.address);
        d.transport.close().await;
    }

    #[tokio::test]
    async fn a_joiner_gets_space_and_never_hands_out_its_gateway() {
        let dir_a = tempfile::tempdir().expect("tempdir");
        let dir_b = tempfile::tempdir().expect("tempdir");
        let (mut a, _ra) = driver(dir_a.path(), "a", Vec::new(), &IdentityKey::generate());
        let (mut b, _rb) = driver(
            dir_b.path(),
            "b",
            vec!["192.0.2.9:6783".parse().expect("addr")],
            &IdentityKey::generate(),
        );
        let now = Instant::now();
        a.start_ipam(now);
        b.start_ipam(now);
        assert!(
            b.ipam.genesis().is_none(),
            "a node with seeds started its own space"
        );
        let e = error_text(b.answer(Request::Allocate {
            container: "early".into(),
        }));
        assert!(
            e.starts_with("no address space reachable: try again later"),
            "{e}"
        );

        // Carry records and messages between the two IPAM cores by hand.
        let (ia, ib) = (a.core.local_id(), b.core.local_id());
        a.ipam.set_reachable(now, ib, true);
        b.ipam.set_reachable(now, ia, true);
        for _ in 0..10 {
            if let Some(r) = a.ipam.record() {
                let _ = b.ipam.handle_record(now, ia, &r);
            }
            if let Some(r) = b.ipam.record() {
                let _ = a.ipam.handle_record(now, ib, &r);
            }
            b.maybe_request_space(now);
            while let Some(t) = b.ipam.poll_transmit() {
                let _ = a.ipam.handle_message(now, ib, &t.bytes);
            }
            while let Some(t) = a.ipam.poll_transmit() {
                let _ = b.ipam.handle_message(now, ia, &t.bytes);
            }
            if !b.ipam.owned().is_empty() {
                break;
            }
            b.space_at = now;
        }
        let space = b.ipam.owned_cidrs();
        assert!(!space.is_empty(), "b got no space");
        b.flush(now);
        let gateway = space[0].network();
        assert!(
            b.ipam
                .allocations()
                .iter()
                .any(|(c, addr)| c == GATEWAY_ID && *addr == gateway),
            "gateway {gateway} not reserved: {:?}",
            b.ipam.allocations()
        );
        let c = allocation(b.answer(Request::Allocate {
            container: "c".into(),
        }));
        assert_eq!(c.gateway, gateway);
        assert_ne!(c.address.addr(), gateway);
        let block = space
            .iter()
            .find(|n| n.contains(&c.address.addr()))
            .expect("address in b's space");
        assert_eq!(c.address.prefix_len(), block.prefix_len());
        let a_space = a.ipam.owned_cidrs();
        assert!(
            a_space.iter().all(|n| !n.contains(&c.address.addr())),
            "b allocated from a's space"
        );
        a.transport.close().await;
        b.transport.close().await;
    }
}
