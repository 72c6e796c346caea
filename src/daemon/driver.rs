//! The IO loop around the sans-IO [`Node`]: it owns the QUIC transport, the members journal's
//! file, the IPAM store, the record version file and the channels to the API and the
//! datapath task, feeds the node every input with the time, and carries out what the node
//! asks for (see the `node` module for the order). It alone owns the node, so the view
//! needs no lock. Writes of the IPAM state (snapshots are fsynced) run on tokio's blocking
//! pool, one at a time, while the loop goes on; the node holds back what depends on them.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::sleep_until;
use tracing::{debug, info, warn};
use weft_crypto::NodeId;
use weft_gossip::ipam::{FileStore, Store};
use weft_gossip::transport::{self, Transport};
use weft_gossip::{LeaveReason, TransmitKind};

use super::api::{KubeWatch, Query, Request, Response};
use super::members::MembersJournal;
use super::metrics::KubeHealth;
use super::node::{ClusterNodes, KubePolicy, Node};
use super::state::VersionFile;
use super::view::{DatapathReport, MeshView};

/// Sends in flight at once. A send to an unreachable peer waits for its handshake to time
/// out, so this bounds the tasks piling up behind dead peers; gossip beyond it is dropped
/// (the protocol tolerates lost datagrams, and push-pull is retried on its own; IPAM
/// retransmits what matters).
const MAX_SENDS: usize = 256;
/// How long shutdown waits for sends in flight before closing the transport.
const SEND_DRAIN: Duration = Duration::from_secs(1);

/// The channels between the loop and the datapath task.
#[derive(Debug)]
pub struct DatapathLink {
    pub view: watch::Sender<Option<MeshView>>,
    pub report: watch::Receiver<DatapathReport>,
    /// Set when the datapath task ended with an error.
    pub failed: watch::Receiver<Option<String>>,
    /// Network policy: the compiler's inputs to the reconciler, its reports back, and the
    /// file the node's policy statements are kept in.
    pub policy: PolicyLink,
}

/// The channels between the loop and the policy reconciler (`policy::reconcile`).
#[derive(Debug)]
pub struct PolicyLink {
    pub inputs: watch::Sender<Option<super::policy::PolicyInputs>>,
    pub report: watch::Receiver<super::policy::PolicyReport>,
    pub file: std::path::PathBuf,
}

/// Why the loop stopped.
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

/// A write of the IPAM state on the blocking pool: it gives the store back, with the
/// version written and the result.
type PersistTask = JoinHandle<(FileStore, u64, Result<(), String>)>;

#[derive(Debug)]
pub struct Driver {
    node: Node,
    /// The IPAM store, while no write is under way (the write has it).
    store: Option<FileStore>,
    persist: Option<PersistTask>,
    /// API requests waiting for their answer, by the id the node knows them by.
    replies: HashMap<u64, oneshot::Sender<Response>>,
    next_request: u64,
    transport: Transport,
    sends: Arc<Semaphore>,
    counters: Arc<SendCounters>,
    journal: MembersJournal,
    version: VersionFile,
    datapath: DatapathLink,
    report_open: bool,
    failed_open: bool,
    /// The Kubernetes Node list, from the watchers (see `daemon::kube`).
    cluster: Option<mpsc::Receiver<ClusterNodes>>,
    /// The policy inputs from the Kubernetes API (see `daemon::kube`).
    kube_policy: Option<mpsc::Receiver<KubePolicy>>,
    /// The Kubernetes watches' health, for `weft status`.
    kube_health: Option<HealthFn>,
    policy_open: bool,
}

impl Driver {
    pub fn new(
        node: Node,
        store: FileStore,
        transport: Transport,
        journal: MembersJournal,
        version: VersionFile,
        datapath: DatapathLink,
    ) -> Self {
        Driver {
            node,
            store: Some(store),
            persist: None,
            replies: HashMap::new(),
            next_request: 0,
            transport,
            sends: Arc::new(Semaphore::new(MAX_SENDS)),
            counters: Arc::default(),
            journal,
            version,
            datapath,
            report_open: true,
            failed_open: true,
            cluster: None,
            kube_policy: None,
            kube_health: None,
            policy_open: true,
        }
    }

    /// Feed the node the Kubernetes Node list from `nodes`.
    pub fn with_cluster_nodes(mut self, nodes: mpsc::Receiver<ClusterNodes>) -> Self {
        self.cluster = Some(nodes);
        self
    }

    /// Feed the node the policy inputs from the Kubernetes API from `inputs`; `health`
    /// adds the watches' health to `weft status`.
    pub fn with_kube_policy(
        mut self,
        inputs: mpsc::Receiver<KubePolicy>,
        health: KubeHealth,
    ) -> Self {
        self.kube_policy = Some(inputs);
        self.kube_health = Some(HealthFn(health));
        self
    }

    /// Run until `shutdown` completes (or the transport closes, or `weft reset`), then leave
    /// and close.
    pub async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Exit> {
        tokio::pin!(shutdown);
        self.version.save(self.node.local_version())?;
        self.node.start(Instant::now());
        let mut reset = None;
        loop {
            self.pump();
            let wake = self.node.poll_timeout();
            tokio::select! {
                () = sleep_until(wake.into()) => self.node.handle_timeout(Instant::now()),
                incoming = self.transport.recv() => match incoming {
                    Some(msg) => self.node.handle_message(Instant::now(), msg.from, msg.node, &msg.bytes),
                    None => anyhow::bail!("the gossip transport closed"),
                },
                Some(query) = queries.recv() => {
                    if query.request == Request::Reset {
                        reset = Some(query.reply);
                        break;
                    }
                    self.next_request += 1;
                    self.replies.insert(self.next_request, query.reply);
                    self.node.handle_request(
                        Instant::now(),
                        SystemTime::now(),
                        self.next_request,
                        query.request,
                    );
                }
                done = wait_persist(&mut self.persist), if self.persist.is_some() => {
                    self.persisted(done)?;
                }
                changed = self.datapath.report.changed(), if self.report_open => {
                    if changed.is_err() {
                        // The datapath task ended; its last report (and error) stay.
                        self.report_open = false;
                    } else {
                        let report = self.datapath.report.borrow_and_update().clone();
                        self.node.handle_report(Instant::now(), report);
                    }
                }
                changed = self.datapath.policy.report.changed(), if self.policy_open => {
                    if changed.is_err() {
                        self.policy_open = false;
                    } else {
                        let report = self.datapath.policy.report.borrow_and_update().clone();
                        self.node.handle_policy_report(report);
                    }
                }
                changed = self.datapath.failed.changed(), if self.failed_open => {
                    match changed {
                        Err(_) => self.failed_open = false,
                        Ok(()) => {
                            if let Some(e) = self.datapath.failed.borrow_and_update().clone() {
                                self.node.handle_datapath_failed(e);
                            }
                        }
                    }
                }
                nodes = recv_some(&mut self.cluster), if self.cluster.is_some() => match nodes {
                    Some(nodes) => self.node.handle_cluster_nodes(Instant::now(), nodes),
                    None => self.cluster = None,
                },
                inputs = recv_some(&mut self.kube_policy), if self.kube_policy.is_some() => match inputs {
                    Some(inputs) => self.node.handle_kube_policy(inputs),
                    None => self.kube_policy = None,
                },
                () = &mut shutdown => break,
            }
        }
        match reset {
            None => {
                self.leave(LeaveReason::Stopping).await;
                Ok(Exit::Stopped)
            }
            Some(reply) => {
                // `weft reset`, first half: hand the space over and wait for the receiver.
                let summary = self.node.hand_over(Instant::now());
                self.run_until_done().await;
                let left = self.node.ipam_left();
                self.leave(LeaveReason::Leaving).await;
                Ok(Exit::Reset {
                    reply,
                    summary,
                    left,
                })
            }
        }
    }

    /// Carry out what the node asks for: journal writes (each result goes back in before
    /// anything else), the next write of the IPAM state (started), sends, the record
    /// version, answers, the view.
    fn pump(&mut self) {
        while let Some(write) = self.node.poll_journal() {
            let result = self.journal.apply(&write).map_err(|e| format!("{e:#}"));
            self.node.handle_journal_result(Instant::now(), result);
        }
        self.start_persist();
        // Policy statements are on disk before `weft policy apply` hears they are taken.
        while let Some(bytes) = self.node.poll_policy_persist() {
            if let Err(e) = super::state::write_atomically(&self.datapath.policy.file, &bytes) {
                warn!(error = %format!("{e:#}"), "cannot write the policy state");
            }
        }
        while let Some((id, response)) = self.node.poll_answer() {
            if let Some(reply) = self.replies.remove(&id) {
                let _ = reply.send(self.decorate(response));
            }
        }
        while let Some(t) = self.node.poll_transmit() {
            self.spawn_send(t.dst, t.node, t.kind, t.bytes);
        }
        if let Err(e) = self.version.save(self.node.local_version()) {
            warn!(error = %format!("{e:#}"), "cannot persist the record version");
        }
        if let Some(view) = self.node.poll_view() {
            self.datapath.view.send_replace(Some(view));
        }
        if let Some(inputs) = self.node.poll_policy_inputs() {
            self.datapath.policy.inputs.send_replace(Some(inputs));
        }
    }

    /// Start writing what the node asks to persist, on the blocking pool (an fsync must not
    /// hold up a worker of the runtime), unless a write is under way.
    fn start_persist(&mut self) {
        if self.persist.is_some() {
            return;
        }
        let Some(mut store) = self.store.take() else {
            return;
        };
        let Some(persist) = self.node.poll_ipam_persist(Instant::now()) else {
            self.store = Some(store);
            return;
        };
        self.persist = Some(tokio::task::spawn_blocking(move || {
            let result = store.write(&persist).map_err(|e| e.to_string());
            (store, persist.version, result)
        }));
    }

    /// A write of the IPAM state ended: the store comes back, the node learns the result.
    fn persisted(
        &mut self,
        done: Result<(FileStore, u64, Result<(), String>), JoinError>,
    ) -> anyhow::Result<()> {
        self.persist = None;
        let (store, version, result) = done.context("writing the address space state")?;
        self.store = Some(store);
        self.node
            .handle_ipam_persisted(Instant::now(), version, result);
        Ok(())
    }

    /// Wait for every write of the IPAM state the node asks for (before exiting).
    async fn flush_persist(&mut self) {
        loop {
            self.start_persist();
            if self.persist.is_none() {
                return;
            }
            let done = wait_persist(&mut self.persist).await;
            if let Err(e) = self.persisted(done) {
                warn!(error = %format!("{e:#}"), "address space state not written");
                return;
            }
        }
    }

    /// The node's answer, with the transport's counters in a status.
    fn decorate(&self, mut response: Response) -> Response {
        if let Response::Status { status, .. } = &mut response {
            status.gossip.sent = self.counters.sent.load(Ordering::Relaxed);
            status.gossip.send_failures = self.counters.failed.load(Ordering::Relaxed);
            status.gossip.connections_refused = self
                .transport
                .refusals()
                .iter()
                .map(|(reason, n)| (reason.label().to_string(), n))
                .collect();
            if let (Some(k), Some(health)) = (status.kubernetes.as_mut(), &self.kube_health) {
                k.watches = (health.0)()
                    .into_iter()
                    .map(|h| KubeWatch {
                        kind: h.kind.to_string(),
                        synced: h.synced,
                        failing: h.failing,
                        errors: h.errors,
                        last_error: h.last_error,
                    })
                    .collect();
            }
        }
        response
    }

    /// Pump gossip (no API, no datapath) until the node's hand-over or leave is done.
    async fn run_until_done(&mut self) {
        loop {
            self.pump();
            if self.node.done(Instant::now()) {
                return;
            }
            let wake = self.node.poll_timeout();
            tokio::select! {
                () = sleep_until(wake.into()) => self.node.handle_timeout(Instant::now()),
                Some(msg) = self.transport.recv() => {
                    self.node.handle_message(Instant::now(), msg.from, msg.node, &msg.bytes)
                }
                done = wait_persist(&mut self.persist), if self.persist.is_some() => {
                    if let Err(e) = self.persisted(done) {
                        warn!(error = %format!("{e:#}"), "address space state not written");
                    }
                }
            }
        }
    }

    /// Leave: gossip a signed leave for a moment, let sends finish, close the transport.
    async fn leave(mut self, reason: LeaveReason) {
        self.node.leave(Instant::now(), reason);
        self.run_until_done().await;
        self.flush_persist().await;
        let drain = self.sends.acquire_many(MAX_SENDS as u32);
        let _ = tokio::time::timeout(SEND_DRAIN, drain).await;
        self.transport.close().await;
        match reason {
            LeaveReason::Stopping => info!("stopped; address space and host state kept"),
            LeaveReason::Leaving => info!("left the cluster for good"),
        }
    }

    fn spawn_send(
        &self,
        dst: SocketAddr,
        node: Option<NodeId>,
        kind: TransmitKind,
        bytes: Vec<u8>,
    ) {
        let kind = match kind {
            TransmitKind::Datagram => transport::Kind::Datagram,
            TransmitKind::Stream => transport::Kind::Stream,
        };
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            debug!(peer = %dst, "too many sends in flight; dropping a message");
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let transport = self.transport.clone();
        let counters = self.counters.clone();
        tokio::spawn(async move {
            match transport.send_to(dst, node, kind, Bytes::from(bytes)).await {
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
}

/// The Kubernetes watches' health (a closure, which has no `Debug`).
struct HealthFn(KubeHealth);

impl std::fmt::Debug for HealthFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthFn")
    }
}

/// The next message from a feed (never, without a channel: the select guards it).
async fn recv_some<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The end of the write under way (never, without one: the select guards it).
async fn wait_persist(
    task: &mut Option<PersistTask>,
) -> Result<(FileStore, u64, Result<(), String>), JoinError> {
    match task.as_mut() {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}
