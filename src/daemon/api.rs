//! The local API: line-delimited JSON over a unix socket (mode 0600).
//!
//! A client writes one request per line (`{"cmd":"status"}`, `{"cmd":"peers"}`,
//! `{"cmd":"ipam"}`, `{"cmd":"allocate","container":"ID"}`, `{"cmd":"release","container":"ID"}`,
//! `{"cmd":"forget","node":"NODE"}`, `{"cmd":"connect","addr":"ADDR"}`, `{"cmd":"reset"}`,
//! `{"cmd":"pods"}`, `{"cmd":"attach","container":"ID","netns":"PATH",...}`,
//! `{"cmd":"detach","container":"ID"}`, `{"cmd":"policy","op":"list"}` and the other
//! `weft policy` operations, see `policy::PolicyRequest`) and reads one response line per
//! request: `{"ok":true,"status":{...}}`,
//! `{"ok":true,"peers":[...]}`, `{"ok":true,"ipam":{...}}`, `{"ok":true,"allocation":{...}}`,
//! `{"ok":true,"pods":[...]}`, `{"ok":true,"policy":{"kind":...}}`, `{"ok":true,"message":"..."}`,
//! or `{"ok":false,"error":"..."}`. Requests are at most [`MAX_REQUEST_LEN`] bytes, except a
//! line that begins with `{"cmd":"policy","op":"apply"` (a few MiB of YAML).
//!
//! The CNI plugin's `allocate` and `release` add `"ifname"`: the address is then keyed by
//! container id and interface, and `allocate` may carry the pod's identity (`netns`,
//! `network`, `pod_namespace`, `pod_name`, `labels`), kept for `weft pods` (see `pods.rs`). `attach` (`weft attach`) has the daemon plug the
//! namespace at `netns` into its bridge itself, with `ifname` (default `eth0`), optionally
//! `ip` (a free address of this node's space), `name` and `labels`; it answers the
//! allocation. `detach` removes the interface and gives the address back. A request that is too long, not JSON or unknown gets the
//! error response and the connection is closed; nothing in the daemon changes.
//!
//! Each client is served in its own task, at most [`MAX_CLIENTS`] at once (`slots`): a new
//! client never waits for idle ones, which are closed for it, oldest first. A request must be
//! complete within [`REQUEST_TIMEOUT`] of its first byte and answered within
//! [`EXCHANGE_TIMEOUT`] ([`RESET_TIMEOUT`] for `reset`); a client that starts no request for
//! a few seconds is closed. Only when every slot has a request in progress does a new client
//! get `{"ok":false,"error":"the daemon is busy ..."}` (and the connection closed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, timeout_at};
use tracing::{debug, warn};

use super::slots::{Slot, Slots, Wake};

/// The default path of the API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";
/// Longest request line, newline included. Real requests are a few dozen bytes.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Connections served at once. At the cap, the connection idle the longest is closed for a
/// new one (see [`Slots`]).
const MAX_CLIENTS: usize = 64;
/// A client that starts no request for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from a request's first byte to its newline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time from a request's first byte to its answer (the driver answers at once; this bounds a
/// stuck daemon).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for `reset`, which hands the address space over and leaves first.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(60);
/// Time to write an answer the client does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// `weft attach`: the daemon plugs a network namespace into its bridge (the pods layer
    /// does it, in the daemon's own network namespace), with an address held under
    /// `CONTAINER/IFNAME`. The same container gets the same address back.
    Attach(AttachRequest),
    /// `weft detach`: the interface of `container` removed and its address given back.
    Detach {
        container: String,
        #[serde(default = "default_ifname")]
        ifname: String,
    },
    /// A chosen address for `container` (`weft attach --ip`), from the pods layer to the
    /// node; never read from the socket.
    #[serde(skip)]
    AllocateAt {
        container: String,
        address: std::net::Ipv4Addr,
    },
    /// `weft policy ...` (`{"cmd":"policy","op":"apply",...}`, see `policy::PolicyRequest`).
    #[serde(rename = "policy")]
    Policy(super::policy::PolicyRequest),
    /// This node's pods, from the pods layer to the node (for the policy); never read from
    /// the socket.
    #[serde(skip)]
    LocalPods(Vec<super::policy::PodIdentity>),
    /// A call of Docker's network or IPAM plugin protocol (`docker`), for the pods layer;
    /// answered with [`Response::Docker`]. Never read from the socket.
    #[serde(skip)]
    Docker(super::docker::proto::Call),
    /// Container names of Docker endpoints (endpoint id, name), learned from Docker's API,
    /// for the pods layer. Never read from the socket.
    #[serde(skip)]
    DockerNames(Vec<(String, String)>),
}

/// The interface name `weft attach` gives a container unless told otherwise.
pub const DEFAULT_IFNAME: &str = "eth0";

fn default_ifname() -> String {
    DEFAULT_IFNAME.to_string()
}

/// What `weft attach` asks the daemon for (`{"cmd":"attach",...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The container's id (no '/'): the address is kept under it.
    pub container: String,
    /// The container's network namespace, as the daemon sees it (an absolute path:
    /// `/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: String,
    /// The interface made inside the container.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// A free address of this node's space to take instead of the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// The container's name (Docker's, Podman's), shown by `weft pods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels kept with the allocation (for the policy engine), shown by `weft pods`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The pod's namespace for network policy [default: `default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Named ports (`--port http=80/tcp`), for policies that name ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<weft_mesh::policy::NamedPort>,
}

impl AttachRequest {
    pub fn key(&self) -> String {
        pod_key(&self.container, &self.ifname)
    }
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
    Policy {
        ok: bool,
        policy: super::policy::PolicyAnswer,
    },
    /// The answer to a [`Request::Docker`] call: the JSON Docker gets.
    Docker {
        ok: bool,
        docker: serde_json::Value,
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
    /// Peers that are up: alive in the membership (suspect, failed, stopped and left ones
    /// never count) and with a working tunnel: a direct one with a handshake in the last
    /// 180 s (WireGuard's reject-after time), or a relayed one whose relay is itself up.
    #[serde(default)]
    pub peers_up: usize,
    /// Peers in the view: every other member that has not left for good.
    #[serde(default)]
    pub peers_total: usize,
    /// This node's address space (CIDRs).
    #[serde(default)]
    pub address_space: Vec<String>,
    /// Addresses held by containers in this node's space: the same count on every node.
    /// This node's gateway is not counted (a joiner holds it as a reservation, the node
    /// that started the cluster uses the range's network address, which is never handed
    /// out), nor the range's network and broadcast addresses.
    #[serde(default)]
    pub addresses_used: u64,
    /// Addresses in this node's space that a container could still get (the gateway and
    /// the reserved addresses are not free either).
    #[serde(default)]
    pub addresses_free: u64,
    /// Gossip messages sent and received, and sends that failed, since start.
    #[serde(default)]
    pub gossip: GossipCounters,
    /// Packets the fail-closed firewall dropped: cleartext pod traffic that would have left
    /// the host by another interface than the tunnel (reset when the table is replaced).
    #[serde(default)]
    pub fail_closed_drops: u64,
    /// Times the WireGuard device stopped working and was made anew, since start.
    #[serde(default)]
    pub datapath_restarts: u64,
    /// Drift of weft's host state (a flushed ruleset, a deleted route or bridge) repaired
    /// since start, by kind ("firewall", "bridge", "route", "rule").
    #[serde(default)]
    pub drift_repairs: BTreeMap<String, u64>,
    /// Network policy on this node: policies held, rules in force, drops per policy.
    #[serde(default)]
    pub policy: PolicyStatus,
    /// On Kubernetes: what the node takes from the API (absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeStatus>,
}

/// What a node on Kubernetes takes from the API, for `weft status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeStatus {
    /// Where this node's address space comes from: `pod CIDR` (its Node's) or `weft` (the
    /// gossip allocator).
    pub space_from: String,
    /// Nodes in the API's last Node list (0 until it arrived).
    pub nodes: usize,
    /// The API's Pods, Namespaces and NetworkPolicies are in: network policy follows them.
    pub policy_synced: bool,
    /// Pods the policy engine knows from the API (scheduled, with addresses, not on the
    /// host's network), in the whole cluster.
    pub pods: usize,
    /// Namespaces known from the API.
    pub namespaces: usize,
    /// Each watch's health (Node, Pod, Namespace, NetworkPolicy).
    #[serde(default)]
    pub watches: Vec<KubeWatch>,
}

/// One Kubernetes watch, for `weft status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeWatch {
    pub kind: String,
    /// A complete list has been received at least once.
    pub synced: bool,
    /// Failing now (the API server away, or refusing).
    pub failing: bool,
    /// Errors since start.
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Network policy, as `weft status` and /metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Policies in the cluster (held by this node).
    pub policies: usize,
    /// Rules of this node's ruleset in force (0: no table).
    pub rules: usize,
    /// Packets each policy dropped on this node (`namespace/name`).
    pub drops: BTreeMap<String, u64>,
    /// Packets with a forged source address dropped at the bridge.
    pub spoofed: u64,
    /// Policy statements from members refused (bad signature, size or content).
    pub refused: u64,
    /// Times the policy tables were found missing (`nft flush ruleset`) and loaded again.
    pub repairs: u64,
    /// Why this node's ruleset could not be loaded, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counters of the gossip transport, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipCounters {
    pub sent: u64,
    pub received: u64,
    pub send_failures: u64,
    /// Messages from admitted members that were malformed or refused by the core.
    #[serde(alias = "refused")]
    pub messages_refused: u64,
    /// Connections refused or failed in admission, by reason (`wrong_secret`, `backoff`,
    /// ...; every reason present, zeros included).
    #[serde(default)]
    pub connections_refused: BTreeMap<String, u64>,
}

/// Members by state (as [`PeerState`] has them, the same states `weft peers` and the
/// metrics show), this node included (as alive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCounts {
    pub alive: usize,
    pub suspect: usize,
    pub failed: usize,
    /// Left for good.
    pub left: usize,
    /// Stopped for now (SIGTERM, restart): expected back. Counted apart from `left`.
    #[serde(default)]
    pub stopped: usize,
    pub total: usize,
}

impl MemberCounts {
    /// Count one more member in `state`.
    pub fn add(&mut self, state: PeerState) {
        self.total += 1;
        match state {
            PeerState::Alive => self.alive += 1,
            PeerState::Suspect => self.suspect += 1,
            PeerState::Failed => self.failed += 1,
            PeerState::Left => self.left += 1,
            PeerState::Stopped => self.stopped += 1,
        }
    }
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
    /// Every state, in the order status and metrics list them.
    pub const ALL: [PeerState; 5] = [
        PeerState::Alive,
        PeerState::Suspect,
        PeerState::Failed,
        PeerState::Stopped,
        PeerState::Left,
    ];

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
    /// The member's gossip address (`weft peers` shows a WireGuard endpoint instead).
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
        let listener = bind_socket(path, 0o700)?;
        Ok(ApiSocket {
            listener,
            path: path.to_path_buf(),
        })
    }
}

/// Binds a unix socket at `path` with mode 0600, creating its parent directory (mode
/// `dir_mode`) if missing. A stale socket (nobody listening) is replaced; a live one or any
/// other file is refused.
pub fn bind_socket(path: &Path, dir_mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
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
    // The parent directory (0700 when we made it) closes the window before this.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("setting the mode of {}", path.display()));
    }
    Ok(listener)
}

impl ApiSocket {
    /// Serve clients until the task is dropped, passing requests to the driver. Every client
    /// is served in its own task under a [`Slots`] cap (see `slots`): idle clients are shed
    /// for new ones, and a client finds the daemon busy only while every slot has a request
    /// in progress. The driver only hands answers over; this task writes them, so a client
    /// that reads slowly delays nobody else.
    pub async fn serve(&self, queries: mpsc::Sender<Query>) {
        let slots = Slots::new(MAX_CLIENTS);
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let queries = queries.clone();
                    match slots.admit() {
                        Some(slot) => tokio::spawn(async move {
                            if let Err(e) = serve_client(stream, slot, queries).await {
                                debug!(error = %e, "API client");
                            }
                        }),
                        None => tokio::spawn(refuse_busy(stream)),
                    };
                }
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections end.
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

async fn serve_client(
    stream: UnixStream,
    mut slot: Slot,
    queries: mpsc::Sender<Query>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(128);
    loop {
        // Idle until the first byte of the next request; a shed or silent client is closed.
        let first = slot.wait_idle(IDLE_TIMEOUT, async {
            reader.fill_buf().await.map(|b| b.is_empty())
        });
        match first.await {
            Wake::Ready(Ok(false)) => {}
            Wake::Ready(Ok(true)) => return Ok(()), // end of input
            Wake::Ready(Err(e)) => return Err(e),
            Wake::Shed => {
                debug!("closing an idle API client for a newer one");
                return Ok(());
            }
            Wake::Idle => return Ok(()),
        }
        let started = Instant::now();
        line.clear();
        // A `policy apply` may carry a few MiB of YAML: only a line that begins like one
        // may be that long.
        let limit = match reader.fill_buf().await {
            Ok(head) if head.starts_with(super::policy::APPLY_PREFIX) => {
                super::policy::MAX_APPLY_REQUEST_LEN
            }
            _ => MAX_REQUEST_LEN,
        };
        let mut limited = (&mut reader).take(limit as u64);
        let read = timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
        let response = match read {
            Err(_) => Err(Response::error(format!(
                "request not complete within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(n)) if line.last() != Some(&b'\n') && n >= limit => Err(Response::error(
                format!("request longer than {limit} bytes"),
            )),
            Ok(Ok(_)) => match parse_request(&line) {
                Ok(request) => {
                    let deadline = started + exchange_limit(&request);
                    // A connect address that does not resolve is a failed request, not a bad
                    // one: the connection stays open.
                    let answer = async {
                        match resolve_connect(request).await {
                            Ok(request) => ask(&queries, request).await,
                            Err(response) => response,
                        }
                    };
                    Ok(timeout_at(deadline.into(), answer)
                        .await
                        .unwrap_or_else(|_| {
                            Response::error(format!(
                                "the daemon did not answer within {}s",
                                (deadline - started).as_secs()
                            ))
                        }))
                }
                Err(e) => Err(Response::error(e)),
            },
        };
        let (response, close) = match response {
            Ok(r) => (r, false),
            Err(r) => (r, true),
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        // A client that does not read its answer is closed.
        match timeout(WRITE_TIMEOUT, write.write_all(&out)).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        }
        if close {
            write.shutdown().await?;
            // Read what the client sent after the bad request before dropping the socket:
            // closing with unread input resets the connection, and the client would lose
            // the error response.
            let mut rest = (&mut reader).take(DRAIN_LIMIT);
            let _ = timeout(
                DRAIN_TIMEOUT,
                tokio::io::copy(&mut rest, &mut tokio::io::sink()),
            )
            .await;
            return Ok(());
        }
        slot.end();
    }
}

/// How long a request may take from its first byte to its answer: `reset` waits for the
/// node to hand its address space over and leave.
fn exchange_limit(request: &Request) -> Duration {
    match request {
        Request::Reset => RESET_TIMEOUT,
        _ => EXCHANGE_TIMEOUT,
    }
}

/// Every slot has a request in progress: say so and close.
async fn refuse_busy(mut stream: UnixStream) {
    let busy = Response::error(format!(
        "the daemon is busy ({MAX_CLIENTS} requests in progress); try again"
    ));
    let Ok(mut out) = serde_json::to_vec(&busy) else {
        return;
    };
    out.push(b'\n');
    // A unix socket keeps what was written for the client even if it has unread input.
    let _ = timeout(WRITE_TIMEOUT, stream.write_all(&out)).await;
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
    const EXPECTED: &str = r#"expected {"cmd":"status"}, {"cmd":"allocate","container":"ID"}, ... (commands: status, peers, ipam, allocate, release, forget, connect, reset, pods, attach, detach, policy)"#;
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
    if cmd == "attach" || cmd == "detach" {
        return attach_request(cmd, map);
    }
    if cmd == "policy" {
        let mut fields = map.clone();
        fields.remove("cmd");
        // serde lets unit variants of an internally tagged enum ignore extra keys.
        let allowed: &[&str] = match fields.get("op").and_then(|v| v.as_str()) {
            Some("apply") => &["op", "yaml", "namespace"],
            Some("list") => &["op"],
            Some("get" | "delete") => &["op", "name"],
            Some("why") => &["op", "from", "to", "port"],
            Some("namespace") => &["op", "name", "labels"],
            _ => {
                return Err(
                    "bad request: \"op\" must be apply, list, get, delete, why or namespace".into(),
                )
            }
        };
        if let Some(k) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "bad request: unknown field {:?} for policy",
                k.chars().take(64).collect::<String>()
            ));
        }
        let request: super::policy::PolicyRequest =
            serde_json::from_value(serde_json::Value::Object(fields))
                .map_err(|e| format!("bad request: {e}"))?;
        request.check()?;
        return Ok(Request::Policy(request));
    }
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

/// An interface name the kernel takes: 1 to 15 printable bytes, no '/', ':' or blank.
fn check_ifname(ifname: &str) -> Result<(), String> {
    let ok = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad request: \"ifname\" {:?} is not an interface name",
            ifname.chars().take(64).collect::<String>()
        ))
    }
}

/// `weft attach`'s and `weft detach`'s requests: every field checked.
fn attach_request(
    cmd: &str,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Request, String> {
    let mut fields = map.clone();
    fields.remove("cmd");
    let fields = serde_json::Value::Object(fields);
    let check_id = |container: &str, ifname: &str| -> Result<(), String> {
        check_string("container", container)?;
        if container.contains('/') {
            return Err("bad request: \"container\" must not contain '/'".into());
        }
        check_ifname(ifname)
    };
    if cmd == "detach" {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detach {
            container: String,
            #[serde(default = "default_ifname")]
            ifname: String,
        }
        let d: Detach = serde_json::from_value(fields).map_err(|e| format!("bad request: {e}"))?;
        check_id(&d.container, &d.ifname)?;
        return Ok(Request::Detach {
            container: d.container,
            ifname: d.ifname,
        });
    }
    let a: AttachRequest =
        serde_json::from_value(fields).map_err(|e| format!("bad request: {e}"))?;
    check_id(&a.container, &a.ifname)?;
    check_string("netns", &a.netns)?;
    if !a.netns.starts_with('/') {
        return Err("bad request: \"netns\" must be an absolute path".into());
    }
    if let Some(name) = &a.name {
        check_string("name", name)?;
    }
    if a.labels.len() > MAX_LABELS {
        return Err(format!(
            "bad request: \"labels\" must be an object of at most {MAX_LABELS} strings"
        ));
    }
    for (k, v) in &a.labels {
        check_string("labels", k)?;
        if !v.is_empty() {
            check_string("labels", v)?;
        }
    }
    if let Some(ns) = &a.namespace {
        weft_mesh::policy::spec::dns_label(ns)
            .map_err(|e| format!("bad request: namespace: {e}"))?;
    }
    if a.ports.len() > super::policy::statement::MAX_POD_PORTS {
        return Err(format!(
            "bad request: more than {} ports",
            super::policy::statement::MAX_POD_PORTS
        ));
    }
    for p in &a.ports {
        weft_mesh::policy::spec::port_name(&p.name).map_err(|e| format!("bad request: {e}"))?;
        if p.port == 0 {
            return Err("bad request: port 0".into());
        }
    }
    if let Some(ip) = a.ip {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(format!("bad request: {ip} is not a container address"));
        }
    }
    Ok(Request::Attach(a))
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

    #[test]
    fn attach_and_detach_requests_parse_and_bad_ones_are_refused() {
        let full = br#"{"cmd":"attach","container":"c1","netns":"/proc/7/ns/net","ifname":"net1","ip":"10.32.0.9","name":"web","labels":{"tier":"front","x":""}}"#;
        let Ok(Request::Attach(a)) = parse_request(full) else {
            panic!("{:?}", parse_request(full));
        };
        assert_eq!(a.key(), "c1/net1");
        assert_eq!(a.ip, Some("10.32.0.9".parse().expect("ip")));
        // What the CLI writes is what the daemon reads.
        let line = serde_json::to_vec(&Request::Attach(a.clone())).expect("serialize");
        assert_eq!(parse_request(&line), Ok(Request::Attach(a)));
        let Ok(Request::Attach(short)) =
            parse_request(br#"{"cmd":"attach","container":"c1","netns":"/run/netns/a"}"#)
        else {
            panic!("minimal attach refused");
        };
        assert_eq!(short.ifname, DEFAULT_IFNAME);
        assert_eq!(
            parse_request(br#"{"cmd":"detach","container":"c1"}"#),
            Ok(Request::Detach {
                container: "c1".into(),
                ifname: "eth0".into()
            })
        );
        let detach = Request::Detach {
            container: "c1".into(),
            ifname: "eth1".into(),
        };
        let line = serde_json::to_vec(&detach).expect("serialize");
        assert_eq!(parse_request(&line), Ok(detach));
        for bad in [
            &br#"{"cmd":"attach","container":"c1"}"#[..],
            br#"{"cmd":"attach","netns":"/run/netns/a"}"#,
            br#"{"cmd":"attach","container":"c/1","netns":"/run/netns/a"}"#,
            br#"{"cmd":"attach","container":"","netns":"/run/netns/a"}"#,
            br#"{"cmd":"attach","container":"c1","netns":"run/netns/a"}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","ifname":"a-name-far-too-long"}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","ifname":"e:1"}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","ip":"10.0.0.300"}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","ip":"255.255.255.255"}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","labels":{"":"x"}}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","labels":{"a":1}}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","name":"a
b"}"#,
            br#"{"cmd":"attach","container":"c1","netns":"/a","other":1}"#,
            br#"{"cmd":"detach","container":"c1","netns":"/a"}"#,
            br#"{"cmd":"detach"}"#,
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
        const KEYS: [&str; 12] = [
            "cmd",
            "ip",
            "name",
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
        const CMDS: [&str; 7] = [
            "allocate", "release", "pods", "status", "x", "attach", "detach",
        ];
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
            Request::ReleasePod { container, ifname } | Request::Detach { container, ifname } => {
                assert!(!container.contains('/') && !ifname.contains('/'));
            }
            Request::Attach(a) => {
                assert_eq!(a.key().matches('/').count(), 1, "{a:?}");
                assert!(a.ifname.len() <= 15 && a.netns.starts_with('/'));
                assert!(a.labels.len() <= MAX_LABELS);
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

    #[tokio::test]
    async fn with_every_slot_busy_a_new_client_is_told_so_and_idle_ones_make_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weft.sock");
        let socket = ApiSocket::bind(&path).expect("bind");
        let (tx, mut rx) = mpsc::channel::<Query>(4);
        let server = tokio::spawn(async move { socket.serve(tx).await });

        // MAX_CLIENTS requests the stand-in driver holds without answering.
        let mut busy = Vec::new();
        for _ in 0..MAX_CLIENTS {
            let mut c = UnixStream::connect(&path).await.expect("connect");
            c.write_all(b"{\"cmd\":\"status\"}\n").await.expect("write");
            busy.push(c);
        }
        let mut held = Vec::new();
        while held.len() < MAX_CLIENTS {
            held.push(rx.recv().await.expect("query"));
        }
        let out = roundtrip(&path, b"").await;
        assert!(out.contains("the daemon is busy"), "{out}");

        // Answered, the busy clients turn idle, and a new client sheds the oldest of them.
        for q in held {
            let _ = q.reply.send(Response::error("answered"));
        }
        for c in &mut busy {
            let mut reader = BufReader::new(c);
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("answer");
            assert!(line.contains("answered"), "{line}");
        }
        let mut late = UnixStream::connect(&path).await.expect("connect");
        late.write_all(b"{\"cmd\":\"peers\"}\n")
            .await
            .expect("write");
        let q = rx.recv().await.expect("the new client's query");
        let _ = q.reply.send(Response::Peers {
            ok: true,
            peers: Vec::new(),
        });
        let mut line = String::new();
        BufReader::new(&mut late)
            .read_line(&mut line)
            .await
            .expect("answer");
        assert!(line.contains(r#""ok":true"#), "{line}");
        let mut rest = Vec::new();
        busy[0].read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty(), "the oldest idle client was closed");
        server.abort();
    }
}
