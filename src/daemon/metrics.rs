//! The HTTP endpoint (default 127.0.0.1:6782): `/healthz`, `/readyz`, and Prometheus
//! `/metrics`, answered from the driver through the same queries as the API socket.
//!
//! - `/healthz`: 200 `ok` while the driver answers a status query, else 503.
//! - `/readyz`: 200 when the node is ready (`Status.ready`), else 503 with the reason. On
//!   Kubernetes also not before every watch has listed once; a watch failing later (the API
//!   server away) keeps the node ready, since the mesh works on, and says so in the body.
//! - `/metrics`: one status and one peers query per scrape, in the OpenMetrics text format
//!   (which Prometheus reads).
//!
//! Bounded like the API socket: only `GET` (and `HEAD`), unknown paths 404, request heads of
//! at most [`MAX_HEAD_LEN`] bytes, one request per connection, [`MAX_CLIENTS`] connections at
//! once (idle ones are closed for new ones, oldest first; only when every connection has a
//! request in progress does a new one get `503 busy`), 2 s from the first byte to the end of
//! the request head, and a time limit on the whole exchange.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use weft_kube::watch::WatchHealth;
use weft_mesh::host::DriftKind;

use super::api::{Peer, PeerState, Query, Request, Response, Status};
use super::slots::{Slot, Slots, Wake};

/// The default listen address of the metrics endpoint.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:6782";
/// hyper's smallest read buffer; a request head that does not fit is refused (431).
pub const MAX_HEAD_LEN: usize = 8192;
/// Connections served at once. At the cap, the connection idle the longest is closed for a
/// new one (see [`Slots`]).
const MAX_CLIENTS: usize = 64;
/// A client that sends nothing for this long after connecting is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from the first byte of the request to the end of its head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time from the first byte of the request to the end of the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to write the "busy" answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a query may wait for the driver.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type HttpResponse = hyper::Response<Full<Bytes>>;

/// Serve HTTP on `listener` until the task is dropped. Every client is served in its own
/// task under a [`Slots`] cap (see `slots`), like the API socket.
#[cfg(test)]
pub async fn serve(listener: TcpListener, queries: mpsc::Sender<Query>) -> anyhow::Result<()> {
    serve_with(listener, queries, None).await
}

/// The Kubernetes watches' health as of now (`daemon::kube`).
pub type KubeHealth = std::sync::Arc<dyn Fn() -> Vec<WatchHealth> + Send + Sync>;

/// [`serve`], with the Kubernetes watches' health in /readyz and /metrics.
pub async fn serve_with(
    listener: TcpListener,
    queries: mpsc::Sender<Query>,
    kube: Option<KubeHealth>,
) -> anyhow::Result<()> {
    let slots = Slots::new(MAX_CLIENTS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: let some connections end.
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.admit() {
            Some(slot) => {
                tokio::spawn(serve_client(
                    stream,
                    peer,
                    slot,
                    queries.clone(),
                    kube.clone(),
                ));
            }
            None => {
                debug!(%peer, "metrics endpoint busy");
                tokio::spawn(refuse_busy(stream));
            }
        }
    }
}

/// One connection: idle (and sheddable) until the first byte of its request, then one
/// exchange with hyper under the request and exchange deadlines.
async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    mut slot: Slot,
    queries: mpsc::Sender<Query>,
    kube: Option<KubeHealth>,
) {
    let mut first = [0u8; 1];
    match slot.wait_idle(IDLE_TIMEOUT, stream.peek(&mut first)).await {
        Wake::Ready(Ok(n)) if n > 0 => {}
        Wake::Shed => {
            debug!(%peer, "closing an idle metrics client for a newer one");
            return;
        }
        // End of input, an error, or nothing sent in time.
        _ => return,
    }
    let service = service_fn(move |req| {
        let queries = queries.clone();
        let kube = kube.clone();
        async move { Ok::<_, Infallible>(route(&req, &queries, kube.as_ref()).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_HEAD_LEN)
        .keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(EXCHANGE_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "metrics client"),
        Err(_) => debug!(%peer, "metrics client timed out"),
    }
    drop(slot);
}

/// Every slot has a request in progress: 503 at once, then close.
async fn refuse_busy(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbusy\n";
    if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(BUSY)).await {
        let _ = stream.shutdown().await;
    }
    // Take in what the request sent so far without waiting for more: closing a TCP socket
    // with unread input resets the connection, and the client could lose the answer.
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

async fn route(
    req: &hyper::Request<Incoming>,
    queries: &mpsc::Sender<Query>,
    kube: Option<&KubeHealth>,
) -> HttpResponse {
    let watches = kube.map(|k| k()).unwrap_or_default();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => match status(queries).await {
            Ok(_) => reply(StatusCode::OK, TEXT, "ok\n"),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
        },
        "/readyz" => match status(queries).await {
            Ok(s) if s.ready => match kube_readiness(&watches) {
                Ok(None) => reply(StatusCode::OK, TEXT, "ready\n"),
                Ok(Some(note)) => reply(StatusCode::OK, TEXT, format!("ready ({note})\n")),
                Err(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {why}\n"),
                ),
            },
            Ok(s) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {}\n", not_ready_reason(&s)),
            ),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
        },
        "/metrics" => {
            let answer = async {
                let status = status(queries).await?;
                let peers = match query(queries, Request::Peers).await? {
                    Response::Peers { peers, .. } => peers,
                    _ => return Err("the daemon answered a peers query with something else".into()),
                };
                render_with(&status, &peers, &watches).map_err(|e| format!("encoding metrics: {e}"))
            };
            match answer.await {
                Ok(text) => reply(StatusCode::OK, OPENMETRICS, text),
                Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The Kubernetes watches' part of readiness: not ready until every watch has listed once
/// (`Err` with which are missing); after that ready, with a note naming the watches that
/// fail (the API server away: the stores keep their last state and the mesh works on).
fn kube_readiness(watches: &[WatchHealth]) -> Result<Option<String>, String> {
    let unsynced: Vec<&str> = watches
        .iter()
        .filter(|w| !w.synced)
        .map(|w| w.kind)
        .collect();
    if !unsynced.is_empty() {
        return Err(format!(
            "Kubernetes watches not synced yet: {}",
            unsynced.join(", ")
        ));
    }
    let failing: Vec<String> = watches
        .iter()
        .filter(|w| w.failing)
        .map(|w| match &w.last_error {
            Some(e) => format!("{}: {e}", w.kind),
            None => w.kind.to_string(),
        })
        .collect();
    Ok((!failing.is_empty()).then(|| {
        format!(
            "Kubernetes watches failing, retrying; the mesh works on: {}",
            failing.join("; ")
        )
    }))
}

/// Why `status` is not ready, from what it shows.
fn not_ready_reason(s: &Status) -> String {
    let mut why = Vec::new();
    if s.members.total <= 1 && s.peers_total == 0 {
        why.push("no other member known yet".to_string());
    }
    if s.address_space.is_empty() {
        why.push("no address space yet".to_string());
    }
    if !matches!(s.datapath.as_str(), "kernel" | "userspace") {
        why.push(format!("datapath: {}", s.datapath));
    }
    if why.is_empty() {
        why.push("datapath not yet in line with the view".to_string());
    }
    why.join("; ")
}

async fn query(queries: &mpsc::Sender<Query>, request: Request) -> Result<Response, String> {
    const GONE: &str = "the daemon is shutting down";
    let (reply, answer) = oneshot::channel();
    let asked = async {
        queries
            .send(Query { request, reply })
            .await
            .map_err(|_| GONE.to_string())?;
        answer.await.map_err(|_| GONE.to_string())
    };
    match tokio::time::timeout(QUERY_TIMEOUT, asked).await {
        Ok(Ok(Response::Error { error, .. })) => Err(error),
        Ok(result) => result,
        Err(_) => Err(format!(
            "the daemon did not answer within {}s",
            QUERY_TIMEOUT.as_secs()
        )),
    }
}

async fn status(queries: &mpsc::Sender<Query>) -> Result<Status, String> {
    match query(queries, Request::Status).await? {
        Response::Status { status, .. } => Ok(status),
        _ => Err("the daemon answered a status query with something else".into()),
    }
}

type Labels = Vec<(String, String)>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// The metrics of one scrape, from one status and one peers answer.
#[cfg(test)]
pub fn render(status: &Status, peers: &[Peer]) -> Result<String, std::fmt::Error> {
    render_with(status, peers, &[])
}

/// [`render`], with the Kubernetes watches' health (none: no such metrics).
pub fn render_with(
    status: &Status,
    peers: &[Peer],
    watches: &[WatchHealth],
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("weft");

    let up = Gauge::<i64>::default();
    up.set(1);
    registry.register("up", "1 while the daemon answers", up);
    let ready = Gauge::<i64>::default();
    ready.set(i64::from(status.ready));
    registry.register(
        "ready",
        "1 when the node has joined, owns address space and its datapath follows the view",
        ready,
    );

    let by_state = Family::<Labels, Gauge>::default();
    for state in PeerState::ALL {
        // Every state has a sample, zero included, so series do not come and go.
        drop(by_state.get_or_create(&label("state", state.as_str())));
    }
    let age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let rx = Family::<Labels, Counter>::default();
    let tx = Family::<Labels, Counter>::default();
    let relayed = Gauge::<i64>::default();
    for p in peers.iter().filter(|p| !p.is_self) {
        by_state
            .get_or_create(&label("state", p.state.as_str()))
            .inc();
        let Some(link) = &p.link else { continue };
        let peer = label("peer", &p.name);
        if let Some(secs) = link.last_handshake_secs {
            age.get_or_create(&peer).set(secs);
        }
        rx.get_or_create(&peer).inc_by(link.rx_bytes);
        tx.get_or_create(&peer).inc_by(link.tx_bytes);
        if link.via.is_some() {
            relayed.inc();
        }
    }
    registry.register("peers", "Other members by state", by_state);
    registry.register(
        "peer_handshake_age_seconds",
        "Seconds since the last completed WireGuard handshake with the peer",
        age,
    );
    registry.register(
        "peer_rx_bytes",
        "Bytes received through the tunnel to the peer",
        rx,
    );
    registry.register(
        "peer_tx_bytes",
        "Bytes sent through the tunnel to the peer",
        tx,
    );
    registry.register(
        "peers_relayed",
        "Peers reached through a relay instead of directly",
        relayed,
    );

    let counter = |n: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        c
    };
    let g = &status.gossip;
    registry.register(
        "gossip_messages_sent",
        "Gossip messages sent since start",
        counter(g.sent),
    );
    registry.register(
        "gossip_messages_received",
        "Gossip messages received since start",
        counter(g.received),
    );
    registry.register(
        "gossip_send_failures",
        "Gossip sends that failed since start",
        counter(g.send_failures),
    );
    registry.register(
        "gossip_messages_refused",
        "Gossip messages from members that were malformed or refused since start",
        counter(g.messages_refused),
    );
    let refused = Family::<Labels, Counter>::default();
    for (reason, n) in &g.connections_refused {
        refused.get_or_create(&label("reason", reason)).inc_by(*n);
    }
    registry.register(
        "gossip_refused",
        "Gossip connections refused or failed in admission since start, by reason",
        refused,
    );

    let gauge = |n: u64| {
        let v = Gauge::<i64>::default();
        v.set(i64::try_from(n).unwrap_or(i64::MAX));
        v
    };
    registry.register(
        "fail_closed_drops",
        "Cleartext pod packets the fail-closed firewall dropped before they left the host",
        counter(status.fail_closed_drops),
    );
    let repairs = Family::<Labels, Counter>::default();
    for kind in DriftKind::ALL.map(|k| k.as_str()) {
        // Every kind has a sample, zero included.
        let n = status.drift_repairs.get(kind).copied().unwrap_or(0);
        repairs.get_or_create(&label("kind", kind)).inc_by(n);
    }
    // The policy tables found missing and loaded again count as drift of kind "policy".
    repairs
        .get_or_create(&label("kind", "policy"))
        .inc_by(status.policy.repairs);
    registry.register(
        "drift_repairs",
        "Changes to weft's bridge, routes, rules, firewall or policy tables made by someone else and undone",
        repairs,
    );
    let policy_drops = Family::<Labels, Counter>::default();
    for (policy, n) in &status.policy.drops {
        policy_drops
            .get_or_create(&label("policy", policy))
            .inc_by(*n);
    }
    registry.register(
        "policy_drops",
        "Packets each network policy (namespace/name) dropped on this node",
        policy_drops,
    );
    registry.register(
        "policy_spoofed_drops",
        "Packets from pods with a forged source address dropped at the bridge",
        counter(status.policy.spoofed),
    );
    registry.register(
        "policies",
        "Network policies in the cluster, as this node holds them",
        gauge(status.policy.policies as u64),
    );
    registry.register(
        "policy_rules",
        "Rules of this node's network policy ruleset in force (0: none loaded)",
        gauge(status.policy.rules as u64),
    );
    registry.register(
        "policy_statements_refused",
        "Policy statements from members refused (signature, size or content) since start",
        counter(status.policy.refused),
    );
    registry.register(
        "datapath_restarts",
        "Times the WireGuard device stopped working (engine panic, interface deleted) and was made anew",
        counter(status.datapath_restarts),
    );
    registry.register(
        "ipam_addresses_used",
        "Addresses in use in this node's address space",
        gauge(status.addresses_used),
    );
    registry.register(
        "ipam_addresses_free",
        "Free addresses in this node's address space",
        gauge(status.addresses_free),
    );

    if !watches.is_empty() {
        register_watches(&mut registry, watches);
    }

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// Per watched kind: synced, failing, errors, lists (1 at start, one more per relist after
/// an error or an expired resource version) and events.
fn register_watches(registry: &mut Registry, watches: &[WatchHealth]) {
    let synced = Family::<Labels, Gauge>::default();
    let failing = Family::<Labels, Gauge>::default();
    let errors = Family::<Labels, Counter>::default();
    let lists = Family::<Labels, Counter>::default();
    let events = Family::<Labels, Counter>::default();
    for w in watches {
        let kind = label("kind", w.kind);
        synced.get_or_create(&kind).set(i64::from(w.synced));
        failing.get_or_create(&kind).set(i64::from(w.failing));
        errors.get_or_create(&kind).inc_by(w.errors);
        lists.get_or_create(&kind).inc_by(w.lists);
        events.get_or_create(&kind).inc_by(w.events);
    }
    registry.register(
        "kubernetes_watch_synced",
        "1 once the watch of this kind has listed every object at least once",
        synced,
    );
    registry.register(
        "kubernetes_watch_failing",
        "1 while the watch of this kind fails (retrying with backoff; its store keeps the last state)",
        failing,
    );
    registry.register(
        "kubernetes_watch_errors",
        "Failed lists and watches (410 Gone included) of this kind since start",
        errors,
    );
    registry.register(
        "kubernetes_watch_lists",
        "Complete lists of this kind since start: 1, plus one per restart of the watch",
        lists,
    );
    registry.register(
        "kubernetes_watch_events",
        "Objects of this kind added, changed or deleted since start (after the lists)",
        events,
    );
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::daemon::api::{GossipCounters, MemberCounts, PeerLinkInfo};

    fn status(ready: bool) -> Status {
        Status {
            name: "n0".into(),
            node_id: "AAAA".into(),
            listen: "0.0.0.0:6783".parse().expect("addr"),
            gossip_addr: "192.0.2.1:6783".parse().expect("addr"),
            version: 3,
            range: "10.32.0.0/12".into(),
            members: MemberCounts {
                alive: 3,
                suspect: 1,
                failed: 0,
                left: 0,
                stopped: 1,
                total: 5,
            },
            datapath: "userspace".into(),
            uptime_secs: 42,
            ready,
            peers_up: 2,
            peers_total: 3,
            address_space: if ready {
                vec!["10.32.0.0/14".into()]
            } else {
                Vec::new()
            },
            addresses_used: 5,
            addresses_free: 1019,
            fail_closed_drops: 3,
            datapath_restarts: 2,
            drift_repairs: [("firewall".to_string(), 1), ("route".to_string(), 4)].into(),
            policy: crate::daemon::api::PolicyStatus {
                policies: 2,
                rules: 30,
                drops: [("x/web".to_string(), 7), ("y/db".to_string(), 0)].into(),
                spoofed: 1,
                refused: 3,
                repairs: 2,
                error: None,
            },
            kubernetes: None,
            gossip: GossipCounters {
                sent: 10,
                received: 9,
                send_failures: 1,
                messages_refused: 4,
                connections_refused: [("wrong_secret".to_string(), 2), ("backoff".to_string(), 0)]
                    .into_iter()
                    .collect(),
            },
        }
    }

    fn peer(name: &str, state: PeerState, is_self: bool, link: Option<PeerLinkInfo>) -> Peer {
        Peer {
            name: name.into(),
            node_id: format!("{name}-id"),
            node_id_short: name.into(),
            is_self,
            endpoint: "192.0.2.1:6783".parse().expect("addr"),
            wireguard_endpoints: Vec::new(),
            wireguard_public_key: "k".into(),
            state,
            incarnation: 1,
            version: 1,
            last_seen_secs: None,
            link,
        }
    }

    fn peers() -> Vec<Peer> {
        let direct = PeerLinkInfo {
            endpoint: Some("198.51.100.7:6784".parse().expect("addr")),
            via: None,
            last_handshake_secs: Some(12.5),
            rx_bytes: 2048,
            tx_bytes: 100,
            spaces: Vec::new(),
        };
        let relayed = PeerLinkInfo {
            via: Some("n1".into()),
            last_handshake_secs: Some(3.0),
            rx_bytes: 7,
            tx_bytes: 8,
            ..PeerLinkInfo::default()
        };
        vec![
            peer("n0", PeerState::Alive, true, None),
            peer("n1", PeerState::Alive, false, Some(direct)),
            peer("n2", PeerState::Alive, false, Some(relayed)),
            peer("n3", PeerState::Suspect, false, None),
            peer("n4", PeerState::Stopped, false, None),
        ]
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn metrics_render_from_status_and_peers() {
        let text = render(&status(true), &peers()).expect("render");
        let l = lines(&text);
        for sample in [
            "weft_up 1",
            "weft_ready 1",
            "weft_peers{state=\"alive\"} 2",
            "weft_peers{state=\"suspect\"} 1",
            "weft_peers{state=\"failed\"} 0",
            "weft_peers{state=\"left\"} 0",
            "weft_peers{state=\"stopped\"} 1",
            "weft_peer_handshake_age_seconds{peer=\"n1\"} 12.5",
            "weft_peer_handshake_age_seconds{peer=\"n2\"} 3.0",
            "weft_peer_rx_bytes_total{peer=\"n1\"} 2048",
            "weft_peer_tx_bytes_total{peer=\"n1\"} 100",
            "weft_peer_rx_bytes_total{peer=\"n2\"} 7",
            "weft_peers_relayed 1",
            "weft_gossip_messages_sent_total 10",
            "weft_gossip_messages_received_total 9",
            "weft_gossip_send_failures_total 1",
            "weft_gossip_messages_refused_total 4",
            "weft_gossip_refused_total{reason=\"wrong_secret\"} 2",
            "weft_gossip_refused_total{reason=\"backoff\"} 0",
            "weft_ipam_addresses_used 5",
            "weft_ipam_addresses_free 1019",
            "weft_fail_closed_drops_total 3",
            "weft_drift_repairs_total{kind=\"firewall\"} 1",
            "weft_drift_repairs_total{kind=\"bridge\"} 0",
            "weft_drift_repairs_total{kind=\"route\"} 4",
            "weft_drift_repairs_total{kind=\"rule\"} 0",
            "weft_drift_repairs_total{kind=\"policy\"} 2",
            "weft_policy_drops_total{policy=\"x/web\"} 7",
            "weft_policy_drops_total{policy=\"y/db\"} 0",
            "weft_policy_spoofed_drops_total 1",
            "weft_policies 2",
            "weft_policy_rules 30",
            "weft_policy_statements_refused_total 3",
            "weft_datapath_restarts_total 2",
            "# TYPE weft_peer_rx_bytes counter",
            "# TYPE weft_peers gauge",
            "# EOF",
        ] {
            assert!(l.contains(&sample), "no {sample:?} in\n{text}");
        }
        // This node is not its own peer; a peer without a tunnel has no per-peer samples.
        assert!(!text.contains("peer=\"n0\""), "{text}");
        assert!(!text.contains("peer=\"n3\""), "{text}");
    }

    #[test]
    fn not_ready_says_why() {
        let mut s = status(false);
        s.datapath = "starting".into();
        let why = not_ready_reason(&s);
        assert!(
            why.contains("no address space") && why.contains("datapath: starting"),
            "{why}"
        );
    }

    fn watch(kind: &'static str, synced: bool, failing: bool) -> WatchHealth {
        WatchHealth {
            kind,
            synced,
            errors: u64::from(failing) * 3,
            lists: u64::from(synced),
            events: 7,
            last_error: failing.then(|| "connection refused".to_string()),
            failing,
        }
    }

    #[test]
    fn kubernetes_watches_gate_readiness_once_and_show_in_metrics() {
        assert_eq!(kube_readiness(&[]), Ok(None), "no Kubernetes: no say");
        let err = kube_readiness(&[watch("Node", true, false), watch("Pod", false, false)])
            .expect_err("not synced");
        assert!(err.contains("Pod") && !err.contains("Node"), "{err}");
        // Synced once, then the API server goes away: still ready, and it says why.
        let note = kube_readiness(&[watch("Node", true, true), watch("Pod", true, false)])
            .expect("ready")
            .expect("a note");
        assert!(note.contains("Node: connection refused"), "{note}");
        let text = render_with(
            &status(true),
            &[],
            &[watch("Node", true, true), watch("Pod", true, false)],
        )
        .expect("render");
        for line in [
            "weft_kubernetes_watch_synced{kind=\"Node\"} 1",
            "weft_kubernetes_watch_failing{kind=\"Node\"} 1",
            "weft_kubernetes_watch_failing{kind=\"Pod\"} 0",
            "weft_kubernetes_watch_errors_total{kind=\"Node\"} 3",
            "weft_kubernetes_watch_lists_total{kind=\"Pod\"} 1",
            "weft_kubernetes_watch_events_total{kind=\"Pod\"} 7",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(!render(&status(true), &[])
            .expect("render")
            .contains("kubernetes"));
    }

    /// A stand-in for the driver: answers status and peers, `ready` as given, until dropped.
    fn fake_driver(ready: bool) -> mpsc::Sender<Query> {
        let (tx, mut rx) = mpsc::channel::<Query>(4);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                let answer = match q.request {
                    Request::Status => Response::Status {
                        ok: true,
                        status: status(ready),
                    },
                    Request::Peers => Response::Peers {
                        ok: true,
                        peers: peers(),
                    },
                    _ => Response::Error {
                        ok: false,
                        error: "unexpected".into(),
                    },
                };
                let _ = q.reply.send(answer);
            }
        });
        tx
    }

    /// One plain HTTP/1.1 exchange; returns the status code and the body.
    async fn fetch(addr: std::net::SocketAddr, request: String) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(request.as_bytes()).expect("write");
            let mut text = String::new();
            s.read_to_string(&mut text).expect("read");
            let code = text
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no status line in {text:?}"));
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            (code, body)
        })
        .await
        .expect("fetch task")
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    }

    async fn start(queries: mpsc::Sender<Query>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, queries));
        addr
    }

    #[tokio::test]
    async fn endpoint_serves_health_readiness_and_metrics_and_refuses_the_rest() {
        let addr = start(fake_driver(true)).await;
        assert_eq!(fetch(addr, get("/healthz")).await, (200, "ok\n".into()));
        assert_eq!(fetch(addr, get("/readyz")).await, (200, "ready\n".into()));
        let (code, body) = fetch(addr, get("/metrics")).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("weft_peers_relayed 1"), "{body}");
        assert!(body.contains("weft_ipam_addresses_free 1019"), "{body}");

        assert_eq!(fetch(addr, get("/nope")).await.0, 404);
        let post = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".to_string();
        assert_eq!(fetch(addr, post).await.0, 405);
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_LEN * 2)
        );
        assert_eq!(fetch(addr, huge).await.0, 431);
        assert_eq!(fetch(addr, "garbage\r\n\r\n".into()).await.0, 400);

        // Not ready: 503 with the reason.
        let addr = start(fake_driver(false)).await;
        let (code, body) = fetch(addr, get("/readyz")).await;
        assert_eq!(code, 503);
        assert!(
            body.starts_with("not ready:") && body.contains("address space"),
            "{body}"
        );
        assert_eq!(fetch(addr, get("/healthz")).await.0, 200);

        // The driver is gone: not healthy.
        let (tx, rx) = mpsc::channel::<Query>(1);
        drop(rx);
        let addr = start(tx).await;
        assert_eq!(fetch(addr, get("/healthz")).await.0, 503);
        assert_eq!(fetch(addr, get("/metrics")).await.0, 503);
    }

    #[tokio::test]
    async fn with_every_slot_busy_a_new_client_gets_503_and_idle_ones_make_room() {
        use tokio::io::AsyncReadExt;

        let (tx, mut rx) = mpsc::channel::<Query>(4);
        let addr = start(tx).await;
        // MAX_CLIENTS scrapes the stand-in driver holds without answering.
        let mut busy = Vec::new();
        for _ in 0..MAX_CLIENTS {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(get("/healthz").as_bytes())
                .await
                .expect("write");
            busy.push(c);
        }
        let mut held = Vec::new();
        while held.len() < MAX_CLIENTS {
            held.push(rx.recv().await.expect("query"));
        }
        let (code, body) = fetch(addr, get("/healthz")).await;
        assert_eq!((code, body.as_str()), (503, "busy\n"));

        for q in held {
            let _ = q.reply.send(Response::Status {
                ok: true,
                status: status(true),
            });
        }
        for c in &mut busy {
            let mut text = String::new();
            c.read_to_string(&mut text).await.expect("answer");
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        }
        // Idle connections (nothing sent) are closed for a new one at the cap.
        let mut idle = Vec::new();
        for _ in 0..MAX_CLIENTS {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let answer = tokio::spawn(fetch(addr, get("/healthz")));
        let q = rx.recv().await.expect("the new client's query");
        let _ = q.reply.send(Response::Status {
            ok: true,
            status: status(true),
        });
        assert_eq!(answer.await.expect("fetch").0, 200);
        let mut rest = Vec::new();
        let n = idle[0].read_to_end(&mut rest).await.expect("read");
        assert_eq!(n, 0, "the oldest idle connection was closed");
    }
}
