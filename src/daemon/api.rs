//! The local API: line-delimited JSON over a unix socket (mode 0600).
//!
//! A client writes one request per line (`{"cmd":"status"}`, `{"cmd":"peers"}`,
//! `{"cmd":"ipam"}`, `{"cmd":"allocate","container":"ID"}`, `{"cmd":"release","container":"ID"}`,
//! `{"cmd":"forget","node":"NODE"}`, `{"cmd":"connect","addr":"ADDR"}`, `{"cmd":"reset"}`,
//! `{"cmd":"pods"}`) and reads one response line per request: `{"ok":true,"status":{...}}`,
//! `{"ok":true,"peers":[...]}`, `{"ok":true,"ipam":{...}}`, `{"ok":true,"allocation":{...}}`,
//! `{"ok":true,"pods":[...]}`, `{"ok":true,"message":"..."}`, or `{"ok":false,"error":"..."}`.
//!
//! The CNI plugin's `allocate` and `release` add `"ifname"`: the address is then keyed by
//! container id and interface, and `allocate` may carry the pod's identity (`netns`,
//! `network`, `pod_namespace`, `pod_name`, `labels`), kept for `weft pods` (see `pods.rs`). A request that is too long, not JSON or unknown gets the
//! error response and the connection is closed; nothing in the daemon changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, warn};

/// The default path of the API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";
/// Longest request line, newline included. Real requests are a few dozen bytes.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Connections served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 16;
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a bad request, input still read (and dropped) before closing, at most.
const DRAIN_LIMIT: u64 = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Status,
    Peers,
    /// Address space: who owns which pieces, how full, what is unreachable (`weft ipam`).
    Ipam,
    /// An address for `container` (a container or pod id) from this node's space; the same
    /// id gets the same address back. Used by `weft attach`, `weft demo` and the CNI plugin.
    Allocate {
        container: String,
    },
    /// Give back the address of `container`; releasing an unknown id is not an error.
    Release {
        container: String,
    },
    /// Declare a node gone for good (by node id, its short form, or its name) and take
    /// back its address space (`weft forget NODE`). Refused while the node is reachable.
    Forget {
        node: String,
    },
    /// Gossip with the node at `addr` (`ip:port`), e.g. to merge with a node started apart
    /// (`weft connect ADDR`).
    Connect {
        addr: String,
    },
    /// Leave the cluster for good: hand the address space back, tell the others, remove
    /// weft's interfaces, routes and rules from the host, and exit (`weft reset`).
    Reset,
    /// The CNI attachments this node holds addresses for, with their pods (`weft pods`).
    Pods,
    /// `allocate` with `ifname` (the CNI plugin): an address keyed by container and interface,
    /// with the pod's identity. Read by [`parse_request`] only, never written.
    #[serde(skip)]
    AllocatePod(PodAllocate),
    /// `release` with `ifname`. Read by [`parse_request`] only, never written.
    #[serde(skip)]
    ReleasePod {
        container: String,
        ifname: String,
    },
}

/// A CNI attachment's `allocate`: the address is held under [`PodAllocate::key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodAllocate {
    /// `CNI_CONTAINERID`.
    pub container: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod's network namespace path.
    #[serde(default)]
    pub netns: Option<String>,
    /// The CNI network's name (GC releases only its own network's attachments).
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The allocation key of a CNI attachment: neither part holds a `/`.
pub fn pod_key(container: &str, ifname: &str) -> String {
    format!("{container}/{ifname}")
}

impl PodAllocate {
    pub fn key(&self) -> String {
        pod_key(&self.container, &self.ifname)
    }
}

/// A response line. `ok` tells success from failure without knowing every field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
// One response per request, serialised at once: its size does not matter, and boxing the
// status would change the type every client matches on.
#[allow(clippy::large_enum_variant)]
pub enum Response {
    Status {
        ok: bool,
        status: Status,
    },
    Peers {
        ok: bool,
        peers: Vec<Peer>,
    },
    Ipam {
        ok: bool,
        ipam: serde_json::Value,
    },
    Allocation {
        ok: bool,
        allocation: Allocation,
    },
    Pods {
        ok: bool,
        pods: Vec<super::pods::Pod>,
    },
    Done {
        ok: bool,
        message: String,
    },
    Error {
        ok: bool,
        error: String,
    },
}

impl Response {
    pub(crate) fn error(message: impl Into<String>) -> Self {
        Response::Error {
            ok: false,
            error: message.into(),
        }
    }
}

/// This node, as `weft status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub node_id: String,
    /// The address the gossip transport is bound to.
    pub listen: SocketAddr,
    /// The address other nodes gossip to (in the node's record).
    pub gossip_addr: SocketAddr,
    /// The local record's version (also its SWIM incarnation).
    pub version: u64,
    /// The cluster address range (not used yet).
    pub range: String,
    pub members: MemberCounts,
    /// The WireGuard datapath: "kernel", "userspace", or why there is none yet.
    pub datapath: String,
    pub uptime_secs: u64,
    /// True when the node has joined (or started) a cluster, owns address space and its
    /// datapath matches the view (`/readyz`).
    #[serde(default)]
    pub ready: bool,
    /// Peers with a completed handshake in the last 3 minutes (direct or relayed) / peers.
    #[serde(default)]
    pub peers_up: usize,
    #[serde(default)]
    pub peers_total: usize,
    /// This node's address space (CIDRs) and addresses in use / free in it.
    #[serde(default)]
    pub address_space: Vec<String>,
    #[serde(default)]
    pub addresses_used: u64,
    #[serde(default)]
    pub addresses_free: u64,
    /// Gossip messages sent and received, and sends that failed, since start.
    #[serde(default)]
    pub gossip: GossipCounters,
    /// Packets the fail-closed firewall dropped: cleartext pod traffic that would have left
    /// the host by another interface than the tunnel (reset when the table is replaced).
    #[serde(default)]
    pub fail_closed_drops: u64,
}

/// Counters of the gossip transport, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipCounters {
    pub sent: u64,
    pub received: u64,
    pub send_failures: u64,
    pub refused: u64,
}

/// Members by state, this node included (as alive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCounts {
    pub alive: usize,
    pub suspect: usize,
    pub failed: usize,
    pub left: usize,
    pub total: usize,
}

/// Liveness of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    Suspect,
    Failed,
    Left,
    /// Left for now (SIGTERM, restart) and expected back: keeps its address space, and its
    /// tunnel and routes stay (traffic to it fails closed).
    Stopped,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Failed => "failed",
            PeerState::Left => "left",
            PeerState::Stopped => "stopped",
        }
    }
}

/// One member, as `weft peers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub node_id: String,
    pub node_id_short: String,
    /// True for the node answering the request.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// The member's gossip address.
    pub endpoint: SocketAddr,
    /// WireGuard endpoints from its record (configured, local, observed).
    pub wireguard_endpoints: Vec<SocketAddr>,
    pub wireguard_public_key: String,
    pub state: PeerState,
    /// The incarnation the state refers to.
    pub incarnation: u64,
    /// The version of the record held.
    pub version: u64,
    /// Seconds since a message from this member last arrived; `None` if none has.
    pub last_seen_secs: Option<f64>,
    /// The WireGuard tunnel to it; `None` for this node and before the datapath runs.
    #[serde(default)]
    pub link: Option<PeerLinkInfo>,
}

/// An address handed to a container: what `weft attach` and the CNI plugin configure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub container: String,
    /// The container's address, with the prefix length of the block of this node's space
    /// that holds it (e.g. `10.32.0.5/24`).
    pub address: ipnet::Ipv4Net,
    /// The bridge's address on this node: the container reaches it on-link (a /32 route
    /// `gateway dev IFNAME scope link`) and routes the cluster range and its default through it.
    pub gateway: std::net::Ipv4Addr,
    /// The cluster's pod range.
    pub cluster_range: ipnet::Ipv4Net,
    /// The bridge's name (`weft`).
    pub bridge: String,
    /// MTU for the container's interface (the tunnel's MTU).
    pub mtu: u32,
}

/// The tunnel to a peer, as `weft peers` shows it (absent until the datapath runs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerLinkInfo {
    /// The WireGuard endpoint in use for the direct path.
    pub endpoint: Option<SocketAddr>,
    /// The relay's name when traffic goes through another node; `None` when direct.
    pub via: Option<String>,
    /// Seconds since the last completed handshake; `None` if never.
    pub last_handshake_secs: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// The peer's address space (CIDRs).
    pub spaces: Vec<String>,
}

/// A request handed to the gossip driver, which owns the view.
#[derive(Debug)]
pub struct Query {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The bound API socket; removed when dropped.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiSocket {
    /// Bind `path` with mode 0600, creating its parent directory (0700) if missing. A stale
    /// socket (nobody listening) is replaced; a live one or any other file is refused.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    bail!(
                        "{} is in use: is another weft daemon running?",
                        path.display()
                    );
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            Ok(_) => bail!("{} exists and is not a socket", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let socket = ApiSocket {
            listener,
            path: path.to_path_buf(),
        };
        // The parent directory (0700 when we made it) closes the window before this.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        Ok(socket)
    }

    /// Serve clients until the task is dropped, passing requests to the driver.
    pub async fn serve(&self, queries: mpsc::Sender<Query>) {
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let queries = queries.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_client(stream, queries).await {
                            debug!(error = %e, "API client");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "API socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_client(stream: UnixStream, queries: mpsc::Sender<Query>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(128);
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST_LEN as u64);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)).await
        {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let response = if line.last() != Some(&b'\n') && n >= MAX_REQUEST_LEN {
            Err(Response::error(format!(
                "request longer than {MAX_REQUEST_LEN} bytes"
            )))
        } else {
            match parse_request(&line) {
                // A connect address that does not resolve is a failed request, not a bad
                // one: the connection stays open.
                Ok(request) => match resolve_connect(request).await {
                    Ok(request) => Ok(ask(&queries, request).await),
                    Err(response) => Ok(response),
                },
                Err(e) => Err(Response::error(e)),
            }
        };
        let (response, close) = match response {
            Ok(r) => (r, false),
            Err(r) => (r, true),
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if close {
            write.shutdown().await?;
            // Read what the client sent after the bad request before dropping the socket:
            // closing with unread input resets the connection, and the client would lose
            // the error response.
            let mut rest = (&mut reader).take(DRAIN_LIMIT);
            let _ = tokio::time::timeout(
                DRAIN_TIMEOUT,
                tokio::io::copy(&mut rest, &mut tokio::io::sink()),
            )
            .await;
            return Ok(());
        }
    }
}

/// Longest string field of a request (container id, node, address).
pub const MAX_FIELD_LEN: usize = 256;

/// Most labels an `allocate` may carry.
pub const MAX_LABELS: usize = 64;
/// Optional fields of the CNI plugin's `allocate` (all need `ifname`).
const POD_FIELDS: [&str; 6] = [
    "ifname",
    "netns",
    "network",
    "pod_namespace",
    "pod_name",
    "labels",
];

/// Parse one request line (the newline is optional at end of input).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    const EXPECTED: &str = r#"expected {"cmd":"status"}, {"cmd":"allocate","container":"ID"}, ... (commands: status, peers, ipam, allocate, release, forget, connect, reset, pods)"#;
    let text = std::str::from_utf8(line).map_err(|_| "bad request: not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("bad request: empty line ({EXPECTED})"));
    }
    // serde's internally tagged enums ignore extra keys, so check the shape by hand.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("bad request: {e} ({EXPECTED})"))?;
    let serde_json::Value::Object(map) = &value else {
        return Err(format!("bad request: not a JSON object ({EXPECTED})"));
    };
    let Some(serde_json::Value::String(cmd)) = map.get("cmd") else {
        return Err(format!("bad request: no \"cmd\" string ({EXPECTED})"));
    };
    let field = match cmd.as_str() {
        "status" | "peers" | "ipam" | "reset" | "pods" => None,
        "allocate" | "release" => Some("container"),
        "forget" => Some("node"),
        "connect" => Some("addr"),
        other => {
            return Err(format!(
                "bad request: unknown command {:?} ({EXPECTED})",
                other.chars().take(64).collect::<String>()
            ))
        }
    };
    let optional: &[&str] = match cmd.as_str() {
        "allocate" => &POD_FIELDS,
        "release" => &POD_FIELDS[..1],
        _ => &[],
    };
    for key in map.keys() {
        if key != "cmd" && Some(key.as_str()) != field && !optional.contains(&key.as_str()) {
            return Err(format!(
                "bad request: unknown field {:?} for {cmd:?}",
                key.chars().take(64).collect::<String>()
            ));
        }
    }
    if let Some(field) = field {
        match map.get(field) {
            Some(serde_json::Value::String(v)) => check_string(field, v)?,
            _ => {
                return Err(format!(
                    "bad request: {cmd:?} needs a string field {field:?}"
                ))
            }
        }
    }
    if optional.iter().any(|k| map.contains_key(*k)) {
        return pod_request(cmd, map);
    }
    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
}

/// A string field: 1 to [`MAX_FIELD_LEN`] bytes, no control characters.
fn check_string(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_FIELD_LEN {
        return Err(format!(
            "bad request: {field:?} must be 1 to {MAX_FIELD_LEN} bytes"
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(format!(
            "bad request: {field:?} contains control characters"
        ));
    }
    Ok(())
}

/// The CNI plugin's `allocate` or `release` (they have `ifname`).
fn pod_request(
    cmd: &str,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Request, String> {
    let string = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(v)) => check_string(key, v).map(|()| Some(v.clone())),
            Some(_) => Err(format!("bad request: {key:?} must be a string")),
        }
    };
    let container = string("container")?.unwrap_or_default();
    let Some(ifname) = string("ifname")? else {
        return Err("bad request: the pod fields need \"ifname\"".into());
    };
    if container.contains('/') {
        return Err("bad request: \"container\" of a pod must not contain '/'".into());
    }
    if ifname.len() > 15 || ifname.contains('/') || !ifname.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "bad request: \"ifname\" {:?} is not an interface name",
            ifname.chars().take(64).collect::<String>()
        ));
    }
    if cmd == "release" {
        return Ok(Request::ReleasePod { container, ifname });
    }
    let mut labels = BTreeMap::new();
    match map.get("labels") {
        None => {}
        Some(serde_json::Value::Object(l)) if l.len() <= MAX_LABELS => {
            for (k, v) in l {
                let serde_json::Value::String(v) = v else {
                    return Err("bad request: label values must be strings".into());
                };
                check_string("labels", k)?;
                if !v.is_empty() {
                    check_string("labels", v)?;
                }
                labels.insert(k.clone(), v.clone());
            }
        }
        Some(_) => {
            return Err(format!(
                "bad request: \"labels\" must be an object of at most {MAX_LABELS} strings"
            ))
        }
    }
    Ok(Request::AllocatePod(PodAllocate {
        container,
        ifname,
        netns: string("netns")?,
        network: string("network")?,
        pod_namespace: string("pod_namespace")?,
        pod_name: string("pod_name")?,
        labels,
    }))
}

/// Resolve a `connect` address before it reaches the driver, which must not wait on DNS.
async fn resolve_connect(request: Request) -> Result<Request, Response> {
    let Request::Connect { addr } = request else {
        return Ok(request);
    };
    let text = addr.clone();
    let resolved = tokio::task::spawn_blocking(move || super::config::resolve_peer(&text)).await;
    match resolved {
        Ok(Ok(sock)) => Ok(Request::Connect {
            addr: sock.to_string(),
        }),
        Ok(Err(e)) => Err(Response::error(format!("{e:#}"))),
        Err(_) => Err(Response::error("resolving the address failed")),
    }
}

async fn ask(queries: &mpsc::Sender<Query>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if queries.send(Query { request, reply }).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    answer
        .await
        .unwrap_or_else(|_| Response::error("the daemon is shutting down"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_request(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(b" {\"cmd\": \"peers\"}\n"),
            Ok(Request::Peers)
        );
        assert_eq!(parse_request(br#"{"cmd":"ipam"}"#), Ok(Request::Ipam));
        assert_eq!(parse_request(br#"{"cmd":"reset"}"#), Ok(Request::Reset));
        assert_eq!(
            parse_request(br#"{"cmd":"allocate","container":"c1"}"#),
            Ok(Request::Allocate {
                container: "c1".into()
            })
        );
        assert_eq!(
            parse_request(br#"{"container":"c1","cmd":"release"}"#),
            Ok(Request::Release {
                container: "c1".into()
            })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"forget","node":"n3"}"#),
            Ok(Request::Forget { node: "n3".into() })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"connect","addr":"192.0.2.1:6783"}"#),
            Ok(Request::Connect {
                addr: "192.0.2.1:6783".into()
            })
        );
        let long = format!(
            r#"{{"cmd":"allocate","container":"{}"}}"#,
            "x".repeat(MAX_FIELD_LEN + 1)
        );
        for bad in [
            &b""[..],
            b"\n",
            b"status",
            b"[1]",
            br#"{"cmd":"status","x":1}"#,
            br#"{"cmd":"reset","node":"a"}"#,
            br#"{"cmd":"allocate"}"#,
            br#"{"cmd":"allocate","container":""}"#,
            br#"{"cmd":"allocate","container":7}"#,
            br#"{"cmd":"allocate","container":"a\nb"}"#,
            br#"{"cmd":"allocate","node":"a"}"#,
            br#"{"cmd":"forget","node":"a","container":"b"}"#,
            br#"{"cmd":1}"#,
            br#"{"command":"status"}"#,
            long.as_bytes(),
            b"\xff\xfe",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_cni_plugins_requests_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_request(br#"{"cmd":"pods"}"#), Ok(Request::Pods));
        let full = br#"{"cmd":"allocate","container":"c1","ifname":"eth0","netns":"/run/netns/c1","network":"weft","pod_namespace":"default","pod_name":"web-0","labels":{"app":"web","empty":""}}"#;
        match parse_request(full) {
            Ok(Request::AllocatePod(p)) => {
                assert_eq!(p.key(), "c1/eth0");
                assert_eq!(p.pod_name.as_deref(), Some("web-0"));
                assert_eq!(p.labels.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_request(br#"{"cmd":"allocate","container":"c1","ifname":"eth0"}"#),
            Ok(Request::AllocatePod(_))
        ));
        assert_eq!(
            parse_request(br#"{"cmd":"release","container":"c1","ifname":"eth0"}"#),
            Ok(Request::ReleasePod {
                container: "c1".into(),
                ifname: "eth0".into()
            })
        );
        // Without ifname, allocate and release are what they always were.
        assert_eq!(
            parse_request(br#"{"cmd":"allocate","container":"c1"}"#),
            Ok(Request::Allocate {
                container: "c1".into()
            })
        );
        let many: String = (0..=MAX_LABELS)
            .map(|i| format!(r#""k{i}":"v""#))
            .collect::<Vec<_>>()
            .join(",");
        let too_many =
            format!(r#"{{"cmd":"allocate","container":"c1","ifname":"eth0","labels":{{{many}}}}}"#);
        for bad in [
            &br#"{"cmd":"allocate","container":"c1","pod_name":"x"}"#[..],
            br#"{"cmd":"allocate","container":"c/1","ifname":"eth0"}"#,
            br#"{"cmd":"allocate","container":"c1","ifname":"eth/0"}"#,
            br#"{"cmd":"allocate","container":"c1","ifname":"a-name-far-too-long"}"#,
            br#"{"cmd":"allocate","container":"c1","ifname":7}"#,
            br#"{"cmd":"allocate","container":"c1","ifname":"eth0","labels":["a"]}"#,
            br#"{"cmd":"allocate","container":"c1","ifname":"eth0","labels":{"a":1}}"#,
            br#"{"cmd":"allocate","container":"c1","ifname":"eth0","pod_name":""}"#,
            br#"{"cmd":"allocate","container":"c1","ifname":"eth0","other":"x"}"#,
            br#"{"cmd":"release","container":"c1","ifname":"eth0","pod_name":"x"}"#,
            br#"{"cmd":"pods","container":"c1"}"#,
            too_many.as_bytes(),
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A request line made of the API's own keys and values of every JSON type.
    fn line(fields: &[(u8, u8, String)]) -> Vec<u8> {
        const KEYS: [&str; 10] = [
            "cmd",
            "container",
            "ifname",
            "netns",
            "network",
            "pod_namespace",
            "pod_name",
            "labels",
            "node",
            "addr",
        ];
        const CMDS: [&str; 5] = ["allocate", "release", "pods", "status", "x"];
        let mut map = serde_json::Map::new();
        map.insert("cmd".into(), CMDS[fields.len() % CMDS.len()].into());
        for (k, kind, s) in fields {
            let v = match kind % 5 {
                0 => serde_json::json!(s),
                1 => serde_json::json!({ s.clone(): s }),
                2 => serde_json::json!(s.len()),
                3 => serde_json::json!([s]),
                _ => serde_json::Value::Null,
            };
            map.insert(KEYS[usize::from(*k) % KEYS.len()].into(), v);
        }
        serde_json::Value::Object(map).to_string().into_bytes()
    }

    /// What an accepted CNI request must be: a key with exactly one '/', fields in bounds.
    fn accepted_pod_request_is_sound(request: &Request) {
        match request {
            Request::AllocatePod(p) => {
                assert_eq!(p.key().matches('/').count(), 1, "{p:?}");
                assert!(p.ifname.len() <= 15 && !p.container.is_empty());
                assert!(p.labels.len() <= MAX_LABELS);
            }
            Request::ReleasePod { container, ifname } => {
                assert!(!container.contains('/') && !ifname.contains('/'));
            }
            _ => {}
        }
    }

    proptest::proptest! {
        #[test]
        fn request_lines_parse_or_are_refused_whole(
            fields in proptest::collection::vec((proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>(), "[ -~]{0,20}"), 0..6),
        ) {
            if let Ok(r) = parse_request(&line(&fields)) {
                accepted_pod_request_is_sound(&r);
            }
        }
    }

    /// Fuzz target: any bytes, and lines built from the API's keys, give a request or a refusal,
    /// never a panic (`cargo bolero test --bin weft daemon::api::tests::fuzz_parse_request`).
    #[test]
    fn fuzz_parse_request() {
        bolero::check!()
            .with_type::<(Vec<(u8, u8, String)>, Vec<u8>)>()
            .for_each(|(fields, raw)| {
                for bytes in [line(fields), raw.clone()] {
                    if let Ok(r) = parse_request(&bytes) {
                        accepted_pod_request_is_sound(&r);
                    }
                }
            });
    }

    #[test]
    fn responses_round_trip_and_carry_ok() {
        let err = serde_json::to_value(Response::error("nope")).expect("serialize");
        assert_eq!(err, serde_json::json!({"ok": false, "error": "nope"}));
        let peers = Response::Peers {
            ok: true,
            peers: Vec::new(),
        };
        let text = serde_json::to_string(&peers).expect("serialize");
        let back: Response = serde_json::from_str(&text).expect("parse");
        assert!(matches!(back, Response::Peers { ok: true, peers } if peers.is_empty()));
    }

    async fn roundtrip(path: &Path, input: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        stream.write_all(input).await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn socket_is_private_and_bad_requests_close_the_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/weft.sock");
        let socket = ApiSocket::bind(&path).expect("bind");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        assert!(ApiSocket::bind(&path).is_err(), "second daemon bound");

        let (tx, mut rx) = mpsc::channel::<Query>(4);
        let server = tokio::spawn(async move { socket.serve(tx).await });
        // A stand-in for the driver: answers every query with an empty peer list.
        let driver = tokio::spawn(async move {
            let mut served = 0;
            while let Some(q) = rx.recv().await {
                served += 1;
                let _ = q.reply.send(Response::Peers {
                    ok: true,
                    peers: Vec::new(),
                });
            }
            served
        });

        // Two good requests on one connection, then a bad one: two answers, an error, EOF.
        let out = roundtrip(
            &path,
            b"{\"cmd\":\"peers\"}\n{\"cmd\":\"peers\"}\n{\"cmd\":\"drop\"}\n{\"cmd\":\"peers\"}\n",
        )
        .await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].contains(r#""ok":true"#), "{out}");
        assert!(lines[2].contains(r#""ok":false"#), "{out}");

        let long = vec![b'x'; MAX_REQUEST_LEN * 3];
        let out = roundtrip(&path, &long).await;
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("longer than"), "{out}");

        server.abort();
        let _ = server.await;
        let served = driver.await.expect("driver");
        assert_eq!(served, 2, "bad requests must not reach the driver");
        assert!(!path.exists(), "socket not removed on drop");
    }
}
