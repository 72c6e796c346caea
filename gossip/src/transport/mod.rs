//! The gossip control plane over QUIC, with cluster admission.
//!
//! One UDP port ([`DEFAULT_PORT`]) both accepts and opens connections, so a peer's source
//! address is also its gossip address. The transport carries opaque bytes; it knows nothing
//! of the gossip protocol. A driver pumps it:
//!
//! - each `Transmit { dst, kind, bytes }` of the core goes to [`Transport::send_datagram`]
//!   (probes, at most [`MAX_DATAGRAM_LEN`] bytes, unreliable) or [`Transport::send_stream`]
//!   (push-pull, at most [`TransportConfig::max_stream_len`] bytes, reliable, one message per
//!   QUIC stream with a 4-byte big-endian length prefix);
//! - each [`Incoming`] from [`Transport::recv`] goes to `handle_message(now, from, bytes)`.
//!
//! A send to a peer without a connection first opens one (handshake and admission), so it can
//! take up to `handshake_timeout + admission_timeout`; a driver should not await sends in its
//! main loop (spawn them, or hand them to a sender task). A caller may give up on a send at
//! any time: the dial goes on in its own task, and later sends use its connection.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use weft_crypto::{ClusterSecret, IdentityKey};
//! use weft_gossip::transport::{Kind, Transport, TransportConfig, DEFAULT_PORT};
//!
//! # async fn run(
//! #     identity: Arc<IdentityKey>,
//! #     secret: ClusterSecret,
//! # ) -> weft_gossip::transport::Result<()> {
//! let config = TransportConfig::new(identity, secret);
//! let transport = Transport::bind(([0, 0, 0, 0], DEFAULT_PORT).into(), config)?;
//! // Outbound: one task per transmit, so a slow dial never stalls the loop.
//! let to = "192.0.2.7:6783".parse().expect("addr");
//! let (kind, bytes) = (Kind::Datagram, bytes::Bytes::from_static(b"probe"));
//! let sender = transport.clone();
//! tokio::spawn(async move {
//!     if let Err(e) = sender.send(to, kind, bytes).await {
//!         tracing::debug!(error = %e, "transmit failed");
//!     }
//! });
//! // Inbound: hand every admitted message to the core.
//! while let Some(msg) = transport.recv().await {
//!     // core.handle_message(Instant::now(), msg.from, &msg.bytes);
//!     let _ = (msg.from, msg.node, msg.bytes);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Admission
//!
//! TLS certificates are self-signed and made at every start; they are not what admits a peer.
//! After the handshake the client proves knowledge of the cluster secret and its identity key,
//! bound to this connection (see [`weft_crypto::admission`]); the server verifies before it
//! sends anything, then proves itself the same way. A peer that fails is cut off with
//! [`CLOSE_ADMISSION_FAILED`], and its IP is refused for a backoff that doubles with every
//! failure. Nothing from a connection reaches [`Transport::recv`] before it is admitted.
//! Every refusal and failed admission is counted by [`RefusalReason`] ([`Transport::refusals`])
//! and logged at warn with the remote address, at most once per source IP per minute.
//!
//! # Connections
//!
//! One connection per peer address, opened on demand and reused; if two nodes dial each other
//! at once, both keep the same one of the two (see `peers`). Connections are kept alive by
//! QUIC keep-alives and close after `idle_timeout` without any answer from the peer. A node
//! that restarts with the same identity key answers its previous instance's connections with
//! QUIC stateless resets (their key derives from the identity), so peers drop them at once;
//! and a connection from a new instance of a peer replaces the stale one.

mod admit;
mod backoff;
mod error;
mod peers;
mod refusals;
mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, info_span, warn, Instrument};
use weft_crypto::admission::{AdmissionKey, ResetKey};
use weft_crypto::{ClusterSecret, IdentityKey, NodeId};

pub use error::{Error, Result};
pub use refusals::{RefusalCounts, RefusalReason, LOG_EVERY as REFUSAL_LOG_EVERY};
pub use tls::ALPN;

use backoff::Backoff;
use peers::{Peer, Peers, Placement};
use refusals::Refusals;

/// The UDP port of the gossip control plane.
pub const DEFAULT_PORT: u16 = 6783;
/// The largest datagram payload the transport sends or delivers.
pub const MAX_DATAGRAM_LEN: usize = 1200;
/// The default bound on one stream message (see [`TransportConfig::max_stream_len`]).
pub const DEFAULT_MAX_STREAM_LEN: usize = 4 << 20;

/// Connection close code: this node is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Connection close code: the peer's admission proof was missing, late or wrong.
pub const CLOSE_ADMISSION_FAILED: VarInt = VarInt::from_u32(1);
/// Connection close code: a duplicate of another connection between the same two nodes.
pub const CLOSE_DUPLICATE: VarInt = VarInt::from_u32(2);
/// Connection close code: the peer at that address restarted; this connection is stale.
pub const CLOSE_SUPERSEDED: VarInt = VarInt::from_u32(3);
/// Connection close code: the peer turned out to be this node itself.
pub const CLOSE_SELF: VarInt = VarInt::from_u32(4);
/// Stream stop code: the message was oversized, malformed or too slow.
pub const STOP_STREAM_REFUSED: VarInt = VarInt::from_u32(0x10);

/// UDP payload size assumed on every path. Above QUIC's 1200-byte minimum so that a
/// [`MAX_DATAGRAM_LEN`] payload fits with QUIC's overhead; 1280 is IPv6's minimum MTU.
const UDP_PAYLOAD: u16 = 1280;
/// Concurrent incoming streams allowed per admitted peer.
const MAX_UNI_STREAMS: u32 = 16;
/// Received datagrams buffered per connection before quinn drops the oldest.
const DATAGRAM_BUFFER: usize = 256 * 1024;
/// Flow-control window of one connection.
const CONNECTION_WINDOW: u32 = 8 << 20;
/// How long the loser of two duplicate connections is still read before it is closed, so
/// that what the peer sent on it before it noticed lands.
const DUPLICATE_GRACE: Duration = Duration::from_secs(2);
/// Failed source IPs remembered for backoff.
const BACKOFF_CAPACITY: usize = 4096;
/// Refused source IPs remembered to rate-limit their log lines.
const REFUSAL_LOG_CAPACITY: usize = 4096;

/// How a message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An unreliable QUIC datagram.
    Datagram,
    /// A reliable QUIC stream carrying one message.
    Stream,
}

/// A message from an admitted peer.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The peer's address (its gossip address: it sends from the port it listens on).
    pub from: SocketAddr,
    /// The peer's node id, proven during admission.
    pub node: NodeId,
    pub kind: Kind,
    pub bytes: Bytes,
}

/// Settings of a [`Transport`]. [`TransportConfig::new`] fills in defaults suited to gossip.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's identity; its id is what peers see in [`Incoming::node`].
    pub identity: Arc<IdentityKey>,
    /// The cluster secret; only its holders are admitted.
    pub secret: ClusterSecret,
    /// Limit on the QUIC/TLS handshake of one connection.
    pub handshake_timeout: Duration,
    /// Limit on the admission exchange after the handshake.
    pub admission_timeout: Duration,
    /// A connection whose peer has not answered for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval; keeps connections to live peers open (and NAT mappings fresh).
    pub keep_alive: Option<Duration>,
    /// Limit on sending or receiving one stream message.
    pub stream_timeout: Duration,
    /// Connections (admitted or being admitted) at once; more are refused.
    pub max_connections: usize,
    /// The largest stream message sent or accepted.
    pub max_stream_len: usize,
    /// Incoming connections from one IP that may be in handshake or admission at once; more
    /// are refused, so that one source cannot hold every connection slot.
    pub max_pending_per_ip: usize,
    /// Backoff after a source IP's first failed admission; doubles with each further one.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// Messages buffered for [`Transport::recv`]. When full, datagrams are dropped and
    /// stream readers wait.
    pub inbox_capacity: usize,
}

impl TransportConfig {
    pub fn new(identity: Arc<IdentityKey>, secret: ClusterSecret) -> Self {
        Self {
            identity,
            secret,
            handshake_timeout: Duration::from_secs(5),
            admission_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            stream_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_pending_per_ip: 8,
            max_stream_len: DEFAULT_MAX_STREAM_LEN,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            inbox_capacity: 1024,
        }
    }
}

/// The gossip transport of one node. Cheap to clone; all clones share one endpoint.
/// Dropping the last clone closes the endpoint.
#[derive(Debug, Clone)]
pub struct Transport {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.endpoint.close(CLOSE_SHUTDOWN, b"shutting down");
    }
}

/// State shared by the handle and the tasks.
#[derive(Debug)]
struct Shared {
    endpoint: quinn::Endpoint,
    node: NodeId,
    identity: Arc<IdentityKey>,
    key: AdmissionKey,
    limits: Limits,
    peers: Mutex<Peers>,
    dialing: Mutex<HashMap<SocketAddr, watch::Receiver<Option<Result<Peer>>>>>,
    backoff: Mutex<Backoff>,
    /// Refused and failed admissions, by reason, and their log limiter.
    refusals: Mutex<Refusals>,
    /// Incoming connections per source IP not yet admitted.
    pending: Mutex<HashMap<IpAddr, usize>>,
    slots: Arc<Semaphore>,
    /// Taken by `close`, so that `recv` ends once the tasks are gone.
    inbox: Mutex<Option<mpsc::Sender<Incoming>>>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    handshake_timeout: Duration,
    admission_timeout: Duration,
    stream_timeout: Duration,
    max_connections: usize,
    max_pending_per_ip: usize,
    max_stream_len: usize,
}

impl Transport {
    /// Open the endpoint on `addr` (port 0 for any) and start accepting peers. Must be called
    /// inside a tokio runtime.
    pub fn bind(addr: SocketAddr, config: TransportConfig) -> Result<Transport> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Bind {
                addr,
                source: Arc::new(std::io::Error::other("not inside a tokio runtime")),
            });
        }
        let cert = tls::Certificate::self_signed()?;
        let quic = Arc::new(quic_transport(&config)?);

        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(&cert)?));
        server.transport_config(quic.clone());
        // Peers are known by address; a peer that moves is a new connection.
        server.migration(false);
        server.max_incoming(config.max_connections.max(1));
        let mut client = quinn::ClientConfig::new(Arc::new(tls::client_crypto(&cert)?));
        client.transport_config(quic);

        let bind_error = |e| Error::Bind {
            addr,
            source: Arc::new(e),
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind_error(std::io::Error::other("no async runtime")))?;
        let reset_key = Arc::new(ResetHmac(ResetKey::new(&config.identity)));
        let mut endpoint_config = quinn::EndpointConfig::new(reset_key);
        endpoint_config.cid_generator(|| Box::new(RandomCids));
        let mut endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(bind_error)?;
        endpoint.set_default_client_config(client);

        let max_connections = config.max_connections.max(1);
        let (tx, rx) = mpsc::channel(config.inbox_capacity.max(1));
        let shared = Arc::new(Shared {
            endpoint,
            node: config.identity.node_id(),
            key: AdmissionKey::new(&config.secret),
            identity: config.identity,
            limits: Limits {
                handshake_timeout: config.handshake_timeout,
                admission_timeout: config.admission_timeout,
                stream_timeout: config.stream_timeout,
                max_connections,
                max_pending_per_ip: config.max_pending_per_ip.max(1),
                max_stream_len: config.max_stream_len.min(u32::MAX as usize),
            },
            peers: Mutex::new(Peers::default()),
            dialing: Mutex::new(HashMap::new()),
            backoff: Mutex::new(Backoff::new(
                config.backoff_base,
                config.backoff_max,
                BACKOFF_CAPACITY,
            )),
            refusals: Mutex::new(Refusals::new(REFUSAL_LOG_CAPACITY)),
            pending: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max_connections)),
            inbox: Mutex::new(Some(tx)),
        });
        let local = shared.endpoint.local_addr().ok();
        tokio::spawn(
            accept_loop(shared.clone()).instrument(info_span!("gossip_transport", local = ?local)),
        );
        Ok(Transport {
            handle: Arc::new(Handle {
                shared,
                inbox: tokio::sync::Mutex::new(rx),
            }),
        })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        let addr = self.handle.shared.endpoint.local_addr();
        addr.map_err(|e| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: Arc::new(e),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.handle.shared.node
    }

    /// Admitted peers with a live connection, by address.
    pub fn connected_peers(&self) -> Vec<(SocketAddr, NodeId)> {
        let peers = lock(&self.handle.shared.peers);
        let mut out = peers.live_peers();
        out.sort();
        out
    }

    /// Connections refused or failed in admission since start, by reason: incoming ones,
    /// and dialled peers whose own proof failed. Each is also logged (at warn, at most once
    /// per source IP per [`REFUSAL_LOG_EVERY`], with how many more there were).
    pub fn refusals(&self) -> RefusalCounts {
        lock(&self.handle.shared.refusals).counts().clone()
    }

    /// QUIC connections open now, admitted or not (for tests and metrics).
    pub fn open_connections(&self) -> usize {
        self.handle.shared.endpoint.open_connections()
    }

    /// Send `bytes` to the peer at `to` as a datagram or on a stream: what a driver calls for
    /// each transmit of the gossip core.
    pub async fn send(&self, to: SocketAddr, kind: Kind, bytes: Bytes) -> Result<()> {
        self.send_to(to, None, kind, bytes).await
    }

    /// [`Transport::send`] to node `node`, known to be at `to`: when there is no live
    /// connection to `to` but one to `node` from another address (the node is behind NAT
    /// and dialled us; its own address is not reachable from here), that one carries it.
    pub async fn send_to(
        &self,
        to: SocketAddr,
        node: Option<NodeId>,
        kind: Kind,
        bytes: Bytes,
    ) -> Result<()> {
        match kind {
            Kind::Datagram => self.datagram(to, node, bytes).await,
            Kind::Stream => self.stream(to, node, bytes).await,
        }
    }

    /// Send one datagram to the peer at `to`, connecting (and admitting) first if needed.
    /// Delivery is not guaranteed. At most [`MAX_DATAGRAM_LEN`] bytes.
    pub async fn send_datagram(&self, to: SocketAddr, bytes: Bytes) -> Result<()> {
        self.datagram(to, None, bytes).await
    }

    async fn datagram(&self, to: SocketAddr, node: Option<NodeId>, bytes: Bytes) -> Result<()> {
        let len = bytes.len();
        if len > MAX_DATAGRAM_LEN {
            return Err(Error::DatagramTooLarge {
                len,
                max: MAX_DATAGRAM_LEN,
            });
        }
        let peer = self.handle.shared.connection_to(to, node).await?;
        peer.conn.send_datagram(bytes).map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => Error::DatagramTooLarge {
                len,
                max: peer.conn.max_datagram_size().unwrap_or(0),
            },
            quinn::SendDatagramError::ConnectionLost(c) => Error::from_connection(to, c),
            other => admit::stream_error(to, "datagram", other),
        })
    }

    /// Send one message on a new stream to the peer at `to`, connecting (and admitting)
    /// first if needed. Returns once the message is handed to QUIC, which retransmits it
    /// until the peer has it or the connection is lost.
    pub async fn send_stream(&self, to: SocketAddr, bytes: Bytes) -> Result<()> {
        self.stream(to, None, bytes).await
    }

    async fn stream(&self, to: SocketAddr, node: Option<NodeId>, bytes: Bytes) -> Result<()> {
        let shared = &self.handle.shared;
        let max = shared.limits.max_stream_len;
        if bytes.len() > max {
            return Err(Error::StreamTooLarge {
                len: bytes.len(),
                max,
            });
        }
        let peer = shared.connection_to(to, node).await?;
        timeout(
            shared.limits.stream_timeout,
            write_message(&peer.conn, bytes),
        )
        .await
        .map_err(|_| Error::Timeout {
            addr: to,
            what: "stream send",
        })?
    }

    /// The next message from an admitted peer; `None` once the transport is closed.
    pub async fn recv(&self) -> Option<Incoming> {
        self.handle.inbox.lock().await.recv().await
    }

    /// Close every connection and the endpoint, telling peers. Sends fail afterwards.
    pub async fn close(&self) {
        let shared = &self.handle.shared;
        lock(&shared.inbox).take();
        shared.endpoint.close(CLOSE_SHUTDOWN, b"shutting down");
        // Give the close frames a moment to leave; peers time out otherwise.
        let _ = timeout(Duration::from_secs(1), shared.endpoint.wait_idle()).await;
    }
}

/// Build a QUIC client config that speaks the transport's TLS (self-signed certificate,
/// [`ALPN`]) but does no admission: for tools and tests that drive the protocol by hand.
pub fn unadmitted_client_config() -> Result<quinn::ClientConfig> {
    let cert = tls::Certificate::self_signed()?;
    let mut client = quinn::ClientConfig::new(Arc::new(tls::client_crypto(&cert)?));
    let identity = Arc::new(IdentityKey::generate());
    let config = TransportConfig::new(identity, ClusterSecret::generate());
    client.transport_config(Arc::new(quic_transport(&config)?));
    Ok(client)
}

fn quic_transport(config: &TransportConfig) -> Result<quinn::TransportConfig> {
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| Error::Tls("idle timeout out of range".into()))?;
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(config.keep_alive)
        // One bidirectional stream for admission; uni streams only once admitted.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .initial_mtu(UDP_PAYLOAD)
        .min_mtu(UDP_PAYLOAD);
    Ok(t)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps half-updated in a harmful way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let addr = canonical(incoming.remote_address());
        let blocked = lock(&shared.backoff).blocked(addr.ip(), Instant::now());
        if let Some(left) = blocked {
            debug!(peer = %addr, wait_ms = left.as_millis() as u64, "refused: backing off after failed admission");
            incoming.refuse();
            shared.refused(addr, RefusalReason::Backoff);
            continue;
        }
        let Some(pending) = Pending::start(&shared, addr.ip()) else {
            debug!(peer = %addr, "refused: too many connections from this IP in admission");
            incoming.refuse();
            shared.refused(addr, RefusalReason::PerIpLimit);
            continue;
        };
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            debug!(peer = %addr, limit = shared.limits.max_connections, "refused: connection limit reached");
            incoming.refuse();
            shared.refused(addr, RefusalReason::ConnectionLimit);
            continue;
        };
        let task = shared.clone();
        tokio::spawn(
            async move { task.accept_one(incoming, slot, pending).await }
                .instrument(info_span!("gossip_accept", peer = %addr)),
        );
    }
    debug!("endpoint closed");
}

impl Shared {
    /// Count a refusal of `addr` and log it, rate-limited per source IP.
    fn refused(&self, addr: SocketAddr, reason: RefusalReason) {
        let line = lock(&self.refusals).record(addr, reason, Instant::now());
        if let Some(line) = line {
            warn!(peer = %addr, reason = reason.label(), "{line}");
        }
    }

    async fn accept_one(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        slot: OwnedSemaphorePermit,
        pending: Pending,
    ) {
        let addr = canonical(incoming.remote_address());
        let limits = self.limits;
        let admitted = async {
            let connecting = incoming
                .accept()
                .map_err(|e| Error::from_connection(addr, e))?;
            let conn = timeout(limits.handshake_timeout, connecting)
                .await
                .map_err(|_| Error::Timeout {
                    addr,
                    what: "handshake",
                })?
                .map_err(|e| Error::from_connection(addr, e))?;
            let proof = timeout(
                limits.admission_timeout,
                admit::as_server(&conn, &self.key, &self.identity),
            )
            .await;
            match proof {
                Ok(Ok(admitted)) => Ok((conn, admitted)),
                Ok(Err(e)) => {
                    conn.close(CLOSE_ADMISSION_FAILED, b"admission failed");
                    Err(e)
                }
                Err(_) => {
                    conn.close(CLOSE_ADMISSION_FAILED, b"admission failed");
                    Err(Error::Timeout {
                        addr,
                        what: "admission",
                    })
                }
            }
        }
        .await;
        drop(pending);
        match admitted {
            Ok((conn, admitted)) => {
                lock(&self.backoff).success(addr.ip());
                if let Err(e) = self.install(conn, admitted, slot) {
                    info!(error = %e, "not keeping connection");
                }
            }
            Err(e) => {
                let wait = lock(&self.backoff).failure(addr.ip(), Instant::now());
                debug!(error = %e, backoff_ms = wait.as_millis() as u64, "connection failed admission");
                self.refused(addr, RefusalReason::of_failure(&e));
            }
        }
    }

    /// The live connection to `addr`, opening one if there is none. Concurrent callers for
    /// the same address share one dial. The dial runs in its own task, so a caller that gives
    /// up waiting does not abort the admission half-way (which the peer would count as a
    /// failed admission and back off from).
    async fn connection_to(
        self: &Arc<Self>,
        addr: SocketAddr,
        node: Option<NodeId>,
    ) -> Result<Peer> {
        let addr = canonical(addr);
        loop {
            {
                let peers = lock(&self.peers);
                if let Some(peer) = peers.live(addr) {
                    return Ok(peer);
                }
                if let Some(peer) = node.and_then(|n| peers.live_node(&n)) {
                    return Ok(peer);
                }
            }
            if lock(&self.inbox).is_none() {
                return Err(Error::Closed);
            }
            let mut rx = {
                let mut dialing = lock(&self.dialing);
                match dialing.get(&addr) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        dialing.insert(addr, rx.clone());
                        let shared = self.clone();
                        tokio::spawn(async move {
                            let guard = DialGuard {
                                shared: &shared,
                                addr,
                            };
                            let result = shared
                                .dial(addr)
                                .instrument(info_span!("gossip_dial", peer = %addr))
                                .await;
                            drop(guard);
                            let _ = tx.send(Some(result));
                        });
                        rx
                    }
                }
            };
            let done = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|r| r.clone());
            if let Some(result) = done {
                return result;
            }
            // The dial task ended without a result (runtime shutting down): look again.
        }
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<Peer> {
        let limits = self.limits;
        let slot =
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::TooManyConnections {
                    limit: limits.max_connections,
                })?;
        let connecting = self
            .endpoint
            .connect(addr, tls::SERVER_NAME)
            .map_err(|source| match source {
                quinn::ConnectError::EndpointStopping => Error::Closed,
                source => Error::Connect { addr, source },
            })?;
        let conn = timeout(limits.handshake_timeout, connecting)
            .await
            .map_err(|_| Error::Timeout {
                addr,
                what: "handshake",
            })?
            .map_err(|e| Error::from_connection(addr, e))?;
        let proof = timeout(
            limits.admission_timeout,
            admit::as_client(&conn, &self.key, &self.identity),
        )
        .await;
        let admitted = match proof {
            Ok(Ok(admitted)) => admitted,
            Ok(Err(e)) => {
                conn.close(CLOSE_ADMISSION_FAILED, b"admission failed");
                info!(error = %e, "dial failed admission");
                // Only the peer's own proof failing is a refusal by this node; the peer
                // refusing ours is counted (and logged) there.
                if matches!(e, Error::AdmissionFailed { .. }) {
                    self.refused(addr, RefusalReason::of_failure(&e));
                }
                return Err(e);
            }
            Err(_) => {
                conn.close(CLOSE_ADMISSION_FAILED, b"admission failed");
                return Err(Error::Timeout {
                    addr,
                    what: "admission",
                });
            }
        };
        self.install(conn, admitted, slot)
    }

    /// Keep an admitted connection: put it in the peer table (or find it is a duplicate),
    /// then read from it. Returns the connection to use for `addr`.
    fn install(
        self: &Arc<Self>,
        conn: quinn::Connection,
        admitted: admit::Admitted,
        slot: OwnedSemaphorePermit,
    ) -> Result<Peer> {
        let addr = canonical(conn.remote_address());
        if admitted.node == self.node {
            conn.close(CLOSE_SELF, b"connection to self");
            return Err(Error::SelfConnection { addr });
        }
        // Admitted: now the peer may open streams to us; it needs no further bidi stream.
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
        let peer = Peer {
            conn,
            addr,
            node: admitted.node,
            export: admitted.export,
            certificate: admitted.certificate,
        };
        let placement = lock(&self.peers).place(peer.clone());
        let span = info_span!("gossip_peer", peer = %addr, node = %peer.node.short());
        let kept = span.in_scope(|| match placement {
            Placement::New => {
                info!("peer admitted");
                peer.clone()
            }
            Placement::ReplacedStale(old) => {
                info!("peer admitted; replaces the connection to its previous instance");
                old.conn.close(CLOSE_SUPERSEDED, b"superseded");
                peer.clone()
            }
            Placement::ReplacedDuplicate(old) => {
                debug!("duplicate connection; this one is kept");
                close_later(old.conn);
                peer.clone()
            }
            Placement::Duplicate(existing) => {
                debug!("duplicate connection; the other one is kept");
                close_later(peer.conn.clone());
                existing
            }
        });
        tokio::spawn(self.clone().serve(peer, slot).instrument(span));
        Ok(kept)
    }

    /// Deliver what an admitted peer sends until its connection ends.
    async fn serve(self: Arc<Self>, peer: Peer, _slot: OwnedSemaphorePermit) {
        let Some(inbox) = lock(&self.inbox).clone() else {
            return;
        };
        let mut streams = JoinSet::new();
        let reason = loop {
            tokio::select! {
                datagram = peer.conn.read_datagram() => match datagram {
                    Ok(bytes) if bytes.len() > MAX_DATAGRAM_LEN => {
                        debug!(len = bytes.len(), "dropping oversized datagram");
                    }
                    Ok(bytes) => {
                        let msg = Incoming { from: peer.addr, node: peer.node, kind: Kind::Datagram, bytes };
                        match inbox.try_send(msg) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => debug!("inbox full: dropping datagram"),
                            Err(mpsc::error::TrySendError::Closed(_)) => break "transport closed".to_string(),
                        }
                    }
                    Err(e) => break e.to_string(),
                },
                stream = peer.conn.accept_uni() => match stream {
                    Ok(recv) => {
                        streams.spawn(read_message(recv, peer.clone(), self.limits, inbox.clone()));
                    }
                    Err(e) => break e.to_string(),
                },
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
            }
        };
        lock(&self.peers).remove(peer.addr, &peer.conn);
        info!(%reason, "connection closed");
    }
}

/// Stateless-reset tokens from a key that survives restarts (see [`ResetKey`]).
struct ResetHmac(ResetKey);

impl quinn::crypto::HmacKey for ResetHmac {
    fn sign(&self, data: &[u8], out: &mut [u8]) {
        let tag = self.0.sign(data);
        let n = out.len().min(tag.len());
        out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        if self.0.verify(data, signature) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// Random 8-byte connection ids that any instance of this node accepts as possibly its own.
/// quinn's default generator checks ids with a per-instance random key and silently drops
/// packets for ids of an earlier instance; this one lets a restarted node answer them with a
/// stateless reset (quinn rate-limits resets and keeps them smaller than the packet that
/// drew them, so they cannot amplify).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let bytes: [u8; 8] = rand::random();
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Counts an incoming connection against its source IP until admission ends.
struct Pending {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Pending {
    fn start(shared: &Arc<Shared>, ip: IpAddr) -> Option<Pending> {
        let mut pending = lock(&shared.pending);
        let count = pending.entry(ip).or_insert(0);
        if *count >= shared.limits.max_pending_per_ip {
            return None;
        }
        *count += 1;
        Some(Pending {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        if let Some(count) = pending.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.ip);
            }
        }
    }
}

/// IPv4 peers seen through a dual-stack socket show up as IPv4-mapped IPv6 addresses; use
/// the plain IPv4 form everywhere, so that the table, the backoff and [`Incoming::from`] agree
/// with the addresses the application dials.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Removes the dialing entry when a dial ends, also when the sender gave up waiting.
struct DialGuard<'a> {
    shared: &'a Shared,
    addr: SocketAddr,
}

impl Drop for DialGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.dialing).remove(&self.addr);
    }
}

fn close_later(conn: quinn::Connection) {
    tokio::spawn(async move {
        tokio::time::sleep(DUPLICATE_GRACE).await;
        conn.close(CLOSE_DUPLICATE, b"duplicate connection");
    });
}

async fn write_message(conn: &quinn::Connection, bytes: Bytes) -> Result<()> {
    let addr = conn.remote_address();
    let write_error = |e: quinn::WriteError| match e {
        quinn::WriteError::ConnectionLost(c) => Error::from_connection(addr, c),
        other => admit::stream_error(addr, "stream send", other),
    };
    let len = u32::try_from(bytes.len()).map_err(|_| Error::StreamTooLarge {
        len: bytes.len(),
        max: u32::MAX as usize,
    })?;
    let mut send = conn
        .open_uni()
        .await
        .map_err(|e| Error::from_connection(addr, e))?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(write_error)?;
    send.write_chunk(bytes).await.map_err(write_error)?;
    send.finish()
        .map_err(|e| admit::stream_error(addr, "stream send", e))?;
    Ok(())
}

/// Read one length-prefixed message from a peer's stream and deliver it.
async fn read_message(
    mut recv: quinn::RecvStream,
    peer: Peer,
    limits: Limits,
    inbox: mpsc::Sender<Incoming>,
) {
    let max = limits.max_stream_len;
    let read = async {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix)
            .await
            .map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > max {
            return Err(format!("{len} bytes announced, over the limit of {max}"));
        }
        let body = recv.read_to_end(len).await.map_err(|e| e.to_string())?;
        if body.len() != len {
            return Err(format!("{} bytes of {len} announced", body.len()));
        }
        Ok(Bytes::from(body))
    };
    match timeout(limits.stream_timeout, read).await {
        Ok(Ok(bytes)) => {
            let msg = Incoming {
                from: peer.addr,
                node: peer.node,
                kind: Kind::Stream,
                bytes,
            };
            // Fails only when the transport is closed.
            let _ = inbox.send(msg).await;
        }
        Ok(Err(reason)) => {
            let _ = recv.stop(STOP_STREAM_REFUSED);
            info!(%reason, "refused a stream message");
        }
        Err(_) => {
            let _ = recv.stop(STOP_STREAM_REFUSED);
            info!("stream message timed out");
        }
    }
}
