//! The gossip driver: pumps the sans-IO membership core with the QUIC transport, a timer,
//! and API queries. It alone owns the core, so the view needs no lock.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::sleep_until;
use tracing::{debug, info, info_span, warn};
use weft_gossip::transport::{self, Incoming, Transport};
use weft_gossip::{Event, MemberInfo, MemberState, Membership, NodeId, Transmit, TransmitKind};

use super::api::{MemberCounts, Peer, PeerState, Query, Request, Response, Status};
use super::state::VersionFile;

/// Sends in flight at once. A send to an unreachable peer waits for its handshake to time
/// out, so this bounds the tasks piling up behind dead peers; gossip beyond it is dropped
/// (the protocol tolerates lost datagrams, and push-pull is retried on its own).
const MAX_SENDS: usize = 256;
/// First wait before contacting the seeds again while none has answered; doubles up to
/// [`JOIN_RETRY_MAX`].
const JOIN_RETRY_FIRST: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a leaving node keeps gossiping so that its leave spreads.
const LEAVE_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for sends in flight before closing the transport.
const SEND_DRAIN: Duration = Duration::from_secs(1);

/// Facts about this node that the core does not hold.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub listen: SocketAddr,
    pub range: IpNet,
    pub started: Instant,
}

#[derive(Debug)]
pub struct Driver {
    core: Membership,
    transport: Transport,
    sends: Arc<Semaphore>,
    /// When a message from each member last arrived (by its proven node id).
    last_seen: HashMap<NodeId, Instant>,
    seeds: Vec<SocketAddr>,
    /// Next attempt to contact the seeds, while nobody has answered.
    join_at: Instant,
    join_delay: Duration,
    version: VersionFile,
    info: NodeInfo,
}

impl Driver {
    pub fn new(
        core: Membership,
        transport: Transport,
        seeds: Vec<SocketAddr>,
        version: VersionFile,
        info: NodeInfo,
        now: Instant,
    ) -> Self {
        Driver {
            core,
            transport,
            sends: Arc::new(Semaphore::new(MAX_SENDS)),
            last_seen: HashMap::new(),
            seeds,
            join_at: now,
            join_delay: JOIN_RETRY_FIRST,
            version,
            info,
        }
    }

    /// Run until `shutdown` completes (or the transport closes), then leave and close.
    pub async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        self.save_version()?;
        loop {
            let now = Instant::now();
            self.maybe_join(now);
            self.flush(now);
            let wake = self.next_wake(now);
            tokio::select! {
                () = sleep_until(wake.into()) => self.core.handle_timeout(Instant::now()),
                incoming = self.transport.recv() => match incoming {
                    Some(msg) => self.handle_incoming(msg),
                    None => anyhow::bail!("the gossip transport closed"),
                },
                Some(query) = queries.recv() => {
                    let response = self.answer(query.request);
                    let _ = query.reply.send(response);
                }
                () = &mut shutdown => break,
            }
        }
        self.leave().await;
        Ok(())
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self
            .core
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1));
        if self.joining() {
            wake = wake.min(self.join_at);
        }
        wake
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

    fn handle_incoming(&mut self, msg: Incoming) {
        let now = Instant::now();
        self.last_seen.insert(msg.node, now);
        if let Err(e) = self.core.handle_message(now, msg.from, &msg.bytes) {
            debug!(peer = %msg.from, node = %msg.node.short(), error = %e, "refused gossip message");
        }
    }

    /// Send what the core wants sent, log its events, and persist a raised version.
    fn flush(&mut self, now: Instant) {
        while let Some(t) = self.core.poll_transmit(now) {
            self.send(t);
        }
        while let Some(event) = self.core.poll_event() {
            self.log_event(event);
        }
        if let Err(e) = self.save_version() {
            warn!(error = %format!("{e:#}"), "cannot persist the record version");
        }
    }

    fn save_version(&mut self) -> anyhow::Result<()> {
        self.version.save(self.core.local_version())
    }

    fn send(&self, t: Transmit) {
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            debug!(peer = %t.dst, "too many sends in flight; dropping gossip");
            return;
        };
        let transport = self.transport.clone();
        tokio::spawn(async move {
            let bytes = Bytes::from(t.bytes);
            let sent = match t.kind {
                TransmitKind::Datagram => transport.send_datagram(t.dst, bytes).await,
                TransmitKind::Stream => transport.send_stream(t.dst, bytes).await,
            };
            match sent {
                Ok(()) => {}
                Err(e @ transport::Error::AdmissionRejected { .. }) => {
                    warn!(peer = %t.dst, error = %e, "not admitted")
                }
                Err(e) => debug!(peer = %t.dst, error = %e, "gossip send failed"),
            }
            drop(permit);
        });
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
            Event::Left(_) => info!("member left"),
            Event::Forgotten(_) => info!("member forgotten"),
        }
    }

    fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status {
                ok: true,
                status: self.status(),
            },
            Request::Peers => Response::Peers {
                ok: true,
                peers: self.peers(),
            },
            other => Response::Error {
                ok: false,
                error: format!("{other:?}: not wired into the daemon yet"),
            },
        }
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
        Status {
            name: record.name.clone(),
            node_id: record.node_id.to_string(),
            listen: self.info.listen,
            gossip_addr: record.gossip_addr,
            version: self.core.local_version(),
            range: self.info.range.to_string(),
            members,
            datapath: "not yet wired".into(),
            uptime_secs: self.info.started.elapsed().as_secs(),
            ready: false,
            peers_up: 0,
            peers_total: 0,
            address_space: Vec::new(),
            addresses_used: 0,
            addresses_free: 0,
            gossip: Default::default(),
        }
    }

    fn peers(&self) -> Vec<Peer> {
        let now = Instant::now();
        let local = self.core.local_id();
        let mut out: Vec<Peer> = self
            .core
            .member(&local)
            .into_iter()
            .chain(self.core.members())
            .map(|m| self.peer(m, m.record.node_id == local, now))
            .collect();
        // This node first, then the others by name.
        let first = usize::from(!out.is_empty());
        out[first..].sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn peer(&self, m: MemberInfo<'_>, is_self: bool, now: Instant) -> Peer {
        let r = m.record;
        Peer {
            name: r.name.clone(),
            node_id: r.node_id.to_string(),
            node_id_short: r.node_id.short(),
            is_self,
            endpoint: r.gossip_addr,
            wireguard_endpoints: r
                .endpoints
                .configured
                .iter()
                .chain(&r.endpoints.local)
                .chain(&r.endpoints.observed)
                .copied()
                .collect(),
            wireguard_public_key: r.wg_key.to_string(),
            state: match m.state {
                MemberState::Alive => PeerState::Alive,
                MemberState::Suspect => PeerState::Suspect,
                MemberState::Dead => PeerState::Failed,
                MemberState::Left => PeerState::Left,
            },
            incarnation: m.incarnation,
            version: r.version,
            last_seen_secs: self
                .last_seen
                .get(&r.node_id)
                .map(|t| now.saturating_duration_since(*t).as_secs_f64()),
            link: None,
        }
    }

    /// Leave: gossip a signed leave for a moment, let sends finish, close the transport.
    ///
    /// The core has one kind of leave, so a node stopped by SIGTERM is seen as *left* (not
    /// failed), and comes back by rejoining with a higher version; it does not yet tell peers
    /// "stopping, keep my address space" apart from `weft reset`'s "gone for good".
    async fn leave(mut self) {
        let start = Instant::now();
        self.core.leave(start, weft_gossip::LeaveReason::Stopping);
        let end = start + LEAVE_GRACE;
        loop {
            let now = Instant::now();
            self.flush(now);
            if now >= end {
                break;
            }
            let wake = self.next_wake(now).min(end);
            tokio::select! {
                () = sleep_until(wake.into()) => self.core.handle_timeout(Instant::now()),
                Some(msg) = self.transport.recv() => self.handle_incoming(msg),
            }
        }
        let drain = self.sends.acquire_many(MAX_SENDS as u32);
        let _ = tokio::time::timeout(SEND_DRAIN, drain).await;
        self.transport.close().await;
        info!("left the cluster");
    }
}
