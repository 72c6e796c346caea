//! The datapath task: keeps the WireGuard device and the host's bridge, routes and firewall
//! in line with the latest [`MeshView`], and keeps them alive.
//!
//! It creates the device (kernel WireGuard if the host has it, else the userspace one), sets
//! it up and turns on IP forwarding if it is off (pods, relayed and masqueraded traffic are
//! forwarded). Then, on every view change and every [`TICK`], one round:
//!
//! - **Supervision.** A device that stopped working (the userspace engine ended: a panic, its
//!   TUN interface deleted; the kernel interface deleted) is dropped and a new one made with
//!   the same key and port; its peers and routes come back in the same round. A failed
//!   attempt (or a device that dies soon after it was made) is retried after 1 s, doubling
//!   to 30 s, and the error shows in `weft status`.
//!   The fail-closed table is not touched meanwhile, so pod traffic is dropped, not leaked.
//! - **Host.** The bridge, routes, rules and the nftables table (fail-closed rules and,
//!   unless `--no-masquerade`, masquerading of pod traffic leaving the cluster range). The
//!   real state is read (a few netlink dumps and one `nft -j list table` per
//!   round: cheap, and what lets a flushed ruleset or a deleted route or bridge come back
//!   within a second) and diffed against the wanted state; what differs is repaired. A
//!   difference the wanted state did not cause is drift: logged once, counted by kind.
//! - **Peers.** The device is read (handshakes, counters), [`Paths`] picks endpoints and
//!   relays, and the peer changes are applied.
//!
//! Each round publishes a [`DatapathReport`]. Errors are reported (logged once per new error)
//! and retried on the next round; nothing here panics on bad input.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use weft_crypto::{WgPrivateKey, WgPublicKey};
use weft_mesh::backend::{self, AnyBackend, Backend, BackendKind, CreateOptions};
use weft_mesh::host::{
    self, BridgeSpec, Change, DriftEvent, DriftKind, DriftLog, HostState, Netlink, NodePeer,
    BRIDGE_NAME,
};
use weft_mesh::paths::{PathPeer, Paths, PERSISTENT_KEEPALIVE};
use weft_mesh::uapi::UapiServer;
use weft_mesh::DeviceConfig;

use super::api::PeerState;
use super::view::{DatapathReport, MeshView, PeerLink};

/// How often the device and the host are read and repaired, and paths reconsidered, without
/// a view change.
pub const TICK: Duration = Duration::from_secs(1);

/// The wait after the first failed attempt to make the device; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A device that stops sooner than this after it was made counts as a failed attempt, so a
/// device that dies again and again (an engine panicking on some packet) is remade with
/// backoff, not in a tight loop.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The wait before attempt `failures + 1`: none after no failure, then [`RETRY_FIRST`]
/// doubling up to [`RETRY_MAX`].
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => RETRY_FIRST
            .saturating_mul(2u32.saturating_pow(n - 1))
            .min(RETRY_MAX),
    }
}

/// Where IPv4 forwarding is switched on, in the daemon's network namespace.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What the datapath needs from the launch configuration.
#[derive(Debug)]
pub struct DatapathConfig {
    /// The WireGuard interface's name.
    pub ifname: String,
    pub private_key: WgPrivateKey,
    /// The WireGuard UDP port.
    pub listen_port: u16,
    /// MTU of the WireGuard interface and the bridge.
    pub mtu: u32,
    /// Which backend: "auto" (kernel if available, else userspace), "kernel" or "userspace".
    pub backend: String,
    /// Where the userspace device serves `wg` (the kernel one is reached over netlink).
    pub wg_socket: Option<PathBuf>,
    /// Masquerade pod traffic that leaves the cluster range.
    pub masquerade: bool,
}

/// Run until dropped (aborted): follow `view`, publish on `report`. On SIGTERM the daemon
/// just drops this task: routes and the fail-closed firewall stay, so traffic to other
/// nodes fails closed until the next start reconciles. Returns when the view's sender is gone.
pub async fn run(
    config: DatapathConfig,
    mut view: watch::Receiver<Option<MeshView>>,
    report: watch::Sender<DatapathReport>,
) -> anyhow::Result<()> {
    let nl = Netlink::connect().context("opening rtnetlink")?;
    let mut datapath = Datapath::new(config, nl);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = view.changed() => if changed.is_err() {
                debug!("view sender gone, datapath task ends");
                return Ok(());
            },
            _ = tick.tick() => {}
            // A userspace engine that ends is noticed at once, not at the next tick.
            () = datapath.device_closed() => {}
        }
        let latest = view.borrow_and_update().clone();
        let next = datapath.round(latest.as_ref(), Instant::now()).await;
        report.send_if_modified(|r| {
            let changed = *r != next;
            *r = next;
            changed
        });
    }
}

/// `weft reset`: remove weft's WireGuard interface `ifname`, bridge, routes, rules and
/// firewall table from the host.
pub async fn reset(ifname: &str) -> anyhow::Result<()> {
    let nl = Netlink::connect().context("opening rtnetlink")?;
    host::reset(&nl, BRIDGE_NAME, ifname)
        .await
        .context("removing weft's interfaces, routes and firewall")
}

/// The userspace device's configuration socket, so that `wg show` (and `wg set`, which the
/// next reconcile round undoes where it contradicts the view) work as with wireguard-go.
/// Without one the datapath still runs.
async fn serve_uapi(config: &DatapathConfig, device: &AnyBackend) -> Option<UapiServer> {
    let (Some(path), AnyBackend::Userspace(dev)) = (&config.wg_socket, device) else {
        return None;
    };
    match UapiServer::listen_at(path.clone(), dev.handle()).await {
        Ok(server) => {
            info!(socket = %path.display(), "WireGuard configuration socket open for wg");
            Some(server)
        }
        Err(e) => {
            warn!(error = %e, "no WireGuard configuration socket: `wg show` will not list the device");
            None
        }
    }
}

/// Creates the device with its key and port, sets it up and turns on forwarding.
async fn start(config: &DatapathConfig, nl: &Netlink) -> anyhow::Result<AnyBackend> {
    let wanted = match config.backend.as_str() {
        "kernel" => BackendKind::Kernel,
        "userspace" => BackendKind::Userspace,
        _ => tokio::task::spawn_blocking(backend::detect)
            .await
            .context("probing for kernel WireGuard")?,
    };
    let options = CreateOptions {
        mtu: config.mtu,
        ..CreateOptions::default()
    };
    // A kernel interface left by an earlier run (or anything else by that name) goes first:
    // the device starts from a clean state, the peers come back within a round.
    nl.delete_link(&config.ifname)
        .await
        .with_context(|| format!("removing a stale {}", config.ifname))?;
    let device = match AnyBackend::create(wanted, &config.ifname, &options).await {
        Ok(device) => device,
        Err(e) if wanted == BackendKind::Kernel => {
            info!(error = %e, "kernel WireGuard unavailable, using the userspace datapath");
            AnyBackend::create(BackendKind::Userspace, &config.ifname, &options)
                .await
                .with_context(|| format!("creating {}", config.ifname))?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("creating {}", config.ifname));
        }
    };
    device
        .apply(DeviceConfig {
            private_key: Some(config.private_key.clone()),
            listen_port: Some(config.listen_port),
            ..DeviceConfig::default()
        })
        .await
        .with_context(|| format!("configuring {}", config.ifname))?;
    nl.apply(&[Change::SetUp {
        link: config.ifname.clone(),
    }])
    .await
    .with_context(|| format!("setting {} up", config.ifname))?;
    enable_forwarding()?;
    info!(kind = %device.kind(), iface = %config.ifname, port = config.listen_port, "WireGuard device up");
    Ok(device)
}

/// Turns IPv4 forwarding on if it is off (pods' traffic, relayed traffic and masquerading
/// need it); leaves the sysctl alone when it is already on. On this thread, not the blocking
/// pool: /proc/sys/net is the calling thread's namespace.
fn enable_forwarding() -> anyhow::Result<()> {
    let now =
        std::fs::read_to_string(IP_FORWARD).with_context(|| format!("reading {IP_FORWARD}"))?;
    if now.trim() != "1" {
        std::fs::write(IP_FORWARD, "1\n").with_context(|| format!("writing {IP_FORWARD}"))?;
        info!("IPv4 forwarding was off: turned on (net.ipv4.ip_forward = 1)");
    }
    Ok(())
}

/// A running device and its configuration socket (dropped with it).
struct Device {
    backend: AnyBackend,
    _uapi: Option<UapiServer>,
    made: Instant,
}

/// No working device: not made yet, or the last one stopped; when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Down {
    /// Why the last device stopped; `None` before the first one.
    stopped: Option<String>,
    /// Failed attempts so far, and the last one's error.
    failures: u32,
    error: Option<String>,
    next_attempt: Instant,
}

impl Down {
    fn new(stopped: Option<String>, now: Instant) -> Self {
        Down {
            stopped,
            failures: 0,
            error: None,
            next_attempt: now,
        }
    }

    /// The device stopped `uptime` after it was made, following `short_lived` devices that
    /// each stopped within [`STABLE_AFTER`]: a new one is made at once, unless this one was
    /// short-lived too, which waits as a failed attempt would.
    fn after_stop(why: String, uptime: Duration, short_lived: u32, now: Instant) -> Self {
        let failures = if uptime < STABLE_AFTER {
            short_lived.saturating_add(1)
        } else {
            0
        };
        Down {
            failures,
            next_attempt: now + backoff(failures),
            ..Down::new(Some(why), now)
        }
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.next_attempt
    }

    /// An attempt failed: wait [`RETRY_FIRST`], doubling each time, at most [`RETRY_MAX`].
    fn failed(&mut self, now: Instant, error: String) {
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = now + backoff(self.failures);
        self.error = Some(error);
    }

    /// For `weft status`: the error of the first start as it is; after a stop, why and how
    /// the restart goes.
    fn describe(&self, now: Instant) -> String {
        let wait = self.next_attempt.saturating_duration_since(now).as_secs();
        match (&self.stopped, &self.error) {
            (None, Some(e)) => e.clone(),
            (None, None) => "starting".into(),
            (Some(why), None) if wait == 0 => format!("{why}: restarting the device"),
            (Some(why), None) => format!("{why}: restarting the device in {wait}s"),
            (Some(why), Some(e)) => format!(
                "{why}; restarting the device failed {} times, next attempt in {wait}s: {e}",
                self.failures
            ),
        }
    }
}

/// The running datapath: the device, rtnetlink, and what it has applied so far.
struct Datapath {
    config: DatapathConfig,
    local_key: WgPublicKey,
    nl: Netlink,
    device: Option<Device>,
    /// The kind of the last device, reported while there is none.
    kind: Option<BackendKind>,
    /// Set while there is no working device.
    down: Option<Down>,
    paths: Option<Paths>,
    /// The host state the last round wanted: a round that wants another one applies an
    /// update; one that wants the same and finds differences repairs drift.
    wanted: Option<HostState>,
    drift: DriftLog,
    drift_repairs: BTreeMap<DriftKind, u64>,
    restarts: u64,
    /// Devices in a row that stopped within [`STABLE_AFTER`] of being made.
    short_lived: u32,
    drops: u64,
    /// The last round's error, logged when it first appears.
    last_error: Option<String>,
    /// The kernel backend's tunnel probes (see [`probe_targets`]).
    probes: Probes,
}

/// How often a kernel device sends a probe to each peer it reaches directly.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The UDP port probes go to on the peer's address (discard: nothing answers but an ICMP
/// port unreachable, itself carried back through the tunnel).
const PROBE_PORT: u16 = 9;

/// A socket bound to this node's gateway, and when it last sent.
#[derive(Debug, Default)]
struct Probes {
    socket: Option<(std::net::Ipv4Addr, std::net::UdpSocket)>,
    last: Option<Instant>,
}

impl Probes {
    /// Sends one empty datagram from `from` to each of `targets` through the tunnel, at most
    /// every [`PROBE_EVERY`]. Errors are only logged (at debug): the next round tries again.
    fn send(&mut self, from: std::net::Ipv4Addr, targets: &[std::net::Ipv4Addr], now: Instant) {
        if targets.is_empty()
            || self
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < PROBE_EVERY)
        {
            return;
        }
        self.last = Some(now);
        if self.socket.as_ref().is_none_or(|(bound, _)| *bound != from) {
            match std::net::UdpSocket::bind((from, 0)) {
                Ok(socket) => self.socket = Some((from, socket)),
                Err(e) => {
                    debug!(%from, error = %e, "no socket for tunnel probes yet");
                    self.socket = None;
                    return;
                }
            }
        }
        if let Some((_, socket)) = &self.socket {
            for target in targets {
                if let Err(e) = socket.send_to(&[], (*target, PROBE_PORT)) {
                    debug!(%target, error = %e, "tunnel probe not sent");
                }
            }
        }
    }
}

/// Where a kernel device's tunnel probes go: an address in the first space of every peer
/// reached directly (relayed peers have no spaces on their own entry; a relay's own space
/// comes first on its entry).
///
/// Why: the daemon counts a direct path as working when the peer's received bytes grow, and
/// every weft peer has a 3 s persistent keepalive. The userspace engine (boringtun) sends it
/// 3 s after its last *sent* packet, but the kernel restarts its persistent keepalive timer
/// on every authenticated packet sent *or received*: between two kernel peers only the one
/// whose timer fires first keeps sending, and a kernel peer of a userspace one never sends,
/// so the other end hears nothing for minutes on an idle, working tunnel, calls the peer
/// unreachable and relays around it. A probe is data, which the peer's device counts.
fn probe_targets(peers: &[NodePeer]) -> Vec<std::net::Ipv4Addr> {
    peers
        .iter()
        .filter_map(|p| match p.spaces.first()? {
            IpNet::V4(space) => Some(space.network()),
            IpNet::V6(_) => None,
        })
        .collect()
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("ifname", &self.config.ifname)
            .field("kind", &self.kind)
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    fn new(config: DatapathConfig, nl: Netlink) -> Self {
        Self {
            local_key: config.private_key.public_key(),
            config,
            nl,
            device: None,
            kind: None,
            down: Some(Down::new(None, Instant::now())),
            paths: None,
            wanted: None,
            drift: DriftLog::new(),
            drift_repairs: BTreeMap::new(),
            restarts: 0,
            short_lived: 0,
            drops: 0,
            last_error: None,
            probes: Probes::default(),
        }
    }

    /// Resolves when a userspace device's engine ends; pending without a device.
    async fn device_closed(&self) {
        match &self.device {
            Some(device) => device.backend.closed().await,
            None => std::future::pending().await,
        }
    }

    /// One round; the report says how it went.
    async fn round(&mut self, view: Option<&MeshView>, now: Instant) -> DatapathReport {
        self.supervise(now).await;
        let mut report = DatapathReport {
            kind: self.kind.map(|k| k.to_string()).unwrap_or_default(),
            ifname: self.config.ifname.clone(),
            restarts: self.restarts,
            ..DatapathReport::default()
        };
        if let Some(down) = &self.down {
            report.error = Some(down.describe(now));
        } else if let Some(view) = view {
            match self.reconcile(view, now, &mut report).await {
                Ok(()) => {
                    report.ready = true;
                    if self.last_error.take().is_some() {
                        info!("datapath reconciled again");
                    }
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    if self.last_error.as_ref() != Some(&e) {
                        warn!(error = %e, "datapath reconcile failed, retrying every round");
                    }
                    report.error = Some(e.clone());
                    self.last_error = Some(e);
                }
            }
        }
        // Before a view the device is up and nothing else is known.
        report.fail_closed_drops = self.drops;
        report.drift_repairs = self.drift_repairs.clone();
        report
    }

    /// Notices a device that stopped working and makes a new one when an attempt is due.
    async fn supervise(&mut self, now: Instant) {
        if let Some(device) = &self.device {
            if let Some(why) = device.backend.stopped().await {
                error!("{why}: restarting the device");
                let uptime = now.saturating_duration_since(device.made);
                let down = Down::after_stop(why.to_string(), uptime, self.short_lived, now);
                self.short_lived = down.failures;
                self.down = Some(down);
                // Dropping it ends what is left of it (the engine task, the `wg` socket).
                self.device = None;
            }
        }
        let Some(down) = self.down.as_mut().filter(|d| d.due(now)) else {
            return;
        };
        match start(&self.config, &self.nl).await {
            Ok(backend) => {
                if down.stopped.is_some() {
                    self.restarts += 1;
                    info!(restarts = self.restarts, "WireGuard device made anew");
                }
                self.kind = Some(backend.kind());
                let uapi = serve_uapi(&self.config, &backend).await;
                self.device = Some(Device {
                    backend,
                    _uapi: uapi,
                    made: now,
                });
                self.down = None;
                // A new device has no peers and no routes through it: everything is set up
                // again, as at start (an update, not drift); paths start over too, since
                // its counters start from zero.
                self.paths = None;
                self.wanted = None;
            }
            Err(e) => {
                let e = format!("{e:#}");
                down.failed(now, e.clone());
                warn!(error = %e, failures = down.failures, "making the WireGuard device failed, retrying");
            }
        }
    }

    async fn reconcile(
        &mut self,
        view: &MeshView,
        now: Instant,
        report: &mut DatapathReport,
    ) -> anyhow::Result<()> {
        let desired = desired_host(view, &self.config);
        // Both halves run even if one fails: a broken `nft` must not hold up the peers.
        let peers = self.reconcile_peers(view, &desired, now, report).await;
        let host = self.reconcile_host(desired).await;
        peers.and(host)
    }

    /// Reads the host, repairs what differs from `desired`, reports drift.
    async fn reconcile_host(&mut self, desired: HostState) -> anyhow::Result<()> {
        let observed = host::observe(&self.nl, desired.bridge_name())
            .await
            .context("reading bridge, routes and firewall")?;
        self.drops = observed.fail_closed_drops.map_or(0, |c| c.packets);
        let changes = host::plan(&observed.state, &desired);
        let found = host::drift(&observed.state, &desired);
        let update = self.wanted.as_ref() != Some(&desired);
        let applied = self.nl.apply(&changes).await;
        for event in self.drift.round(found, update, applied.is_ok()) {
            match event {
                DriftEvent::Repaired(d) => {
                    warn!(kind = %d.kind(), "{d}: {}", d.repair());
                    *self.drift_repairs.entry(d.kind()).or_default() += 1;
                }
                DriftEvent::Failing(d) => {
                    let error = applied.as_ref().err().map(ToString::to_string);
                    warn!(kind = %d.kind(), error, "{d}: repair failed, retrying every round");
                }
            }
        }
        if update && !changes.is_empty() && applied.is_ok() {
            info!(
                changes = changes.len(),
                "host bridge, routes and firewall updated"
            );
        }
        self.wanted = Some(desired);
        applied.context("reconciling bridge, routes and firewall")
    }

    /// Reads the device, lets [`Paths`] decide, applies the peer changes, fills the report's
    /// peers.
    async fn reconcile_peers(
        &mut self,
        view: &MeshView,
        desired: &HostState,
        now: Instant,
        report: &mut DatapathReport,
    ) -> anyhow::Result<()> {
        let Some(device) = &self.device else {
            return Ok(());
        };
        let paths = self
            .paths
            .get_or_insert_with(|| Paths::new(view.local.node_id));
        let status = device
            .backend
            .status()
            .await
            .context("reading the WireGuard device")?;
        let plan = paths.update(now, &path_peers(view), &status);
        let change = host::plan_peers(
            &self.local_key,
            &plan.peers,
            desired,
            &status,
            Some(PERSISTENT_KEEPALIVE),
        );
        if !change.peers.is_empty() {
            debug!(
                changes = change.peers.len(),
                "applying WireGuard peer changes"
            );
            device
                .backend
                .apply(change)
                .await
                .context("configuring WireGuard peers")?;
        }
        if device.backend.kind() == BackendKind::Kernel {
            if let Some(bridge) = &desired.bridge {
                if let IpNet::V4(gateway) = bridge.gateway {
                    self.probes
                        .send(gateway.addr(), &probe_targets(&plan.peers), now);
                }
            }
        }

        report.unreachable = plan.unreachable.clone();
        report.peers = view
            .peers
            .iter()
            .map(|peer| {
                let path = plan.paths.get(&peer.node_id);
                let device_peer = status.peers.iter().find(|p| p.public_key == peer.wg_key);
                let link = PeerLink {
                    endpoint: path.and_then(|p| p.endpoint),
                    via: path.and_then(|p| p.via),
                    last_handshake: device_peer.and_then(|p| p.last_handshake),
                    rx_bytes: device_peer.map_or(0, |p| p.rx_bytes),
                    tx_bytes: device_peer.map_or(0, |p| p.tx_bytes),
                };
                (peer.node_id, link)
            })
            .collect::<BTreeMap<_, _>>();
        Ok(())
    }
}

/// The view's peers as [`Paths`] takes them.
fn path_peers(view: &MeshView) -> Vec<PathPeer> {
    view.peers
        .iter()
        .map(|p| PathPeer {
            node_id: p.node_id,
            public_key: p.wg_key,
            endpoints: p.endpoints.clone(),
            spaces: p.spaces.iter().copied().map(IpNet::V4).collect(),
            alive: p.state == PeerState::Alive,
            unreachable: p.unreachable.clone(),
        })
        .collect()
}

/// The bridge's gateway: the first address of `space` (its network address: IPAM hands out
/// every address of a piece, and the driver reserves this one), with its prefix length.
fn gateway(space: &Ipv4Net) -> IpNet {
    IpNet::V4(Ipv4Net::new(space.network(), space.prefix_len()).unwrap_or(*space))
}

/// The host state the view asks for: the fail-closed firewall for the cluster range (and
/// masquerading of pod traffic leaving it, unless turned off); once
/// the node owns space, the bridge with its gateway and routes for its further pieces; a
/// route to every other node's space through WireGuard (spaces a record should not claim,
/// such as one overlapping ours, are left out).
fn desired_host(view: &MeshView, config: &DatapathConfig) -> HostState {
    let cluster = [IpNet::V4(view.cluster_range)];
    let local: Vec<IpNet> = view.local.spaces.iter().copied().map(IpNet::V4).collect();
    let mut state = match view.local.spaces.first().map(gateway) {
        Some(gateway) => {
            let mut state = HostState::new(
                BridgeSpec {
                    name: BRIDGE_NAME.into(),
                    gateway,
                    mtu: config.mtu,
                },
                config.ifname.clone(),
                cluster,
                local.iter().copied(),
            );
            for space in local.iter().skip(1) {
                if let Err(e) = state.add_local_space_route(*space) {
                    debug!(%space, error = %e, "local space not routed");
                }
            }
            state
        }
        None => HostState::without_bridge(BRIDGE_NAME, config.ifname.clone(), cluster),
    };
    state.set_masquerade(config.masquerade);
    for peer in &view.peers {
        for space in &peer.spaces {
            if let Err(e) = state.add_peer_space(IpNet::V4(*space)) {
                debug!(peer = %peer.name, %space, error = %e, "peer space not routed");
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_from_one_to_thirty_seconds_and_say_why() {
        let t0 = Instant::now();
        let mut down = Down::new(Some("the engine stopped (panic: boom)".into()), t0);
        assert!(down.due(t0));
        assert_eq!(
            down.describe(t0),
            "the engine stopped (panic: boom): restarting the device"
        );
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            down.failed(now, "no TUN".into());
            assert!(!down.due(now));
            waits.push(down.next_attempt - now);
            now = down.next_attempt;
            assert!(down.due(now));
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        down.failed(now, "no TUN".into());
        assert_eq!(
            down.describe(now),
            "the engine stopped (panic: boom); restarting the device failed 9 times, \
             next attempt in 30s: no TUN"
        );
        // A device that dies soon after it was made waits as a failed attempt would; one
        // that ran a while is remade at once.
        let why = || "the engine stopped (panic: boom)".to_string();
        let quick = Down::after_stop(why(), Duration::from_secs(2), 0, t0);
        assert_eq!(
            (quick.failures, quick.next_attempt - t0),
            (1, Duration::from_secs(1))
        );
        assert_eq!(
            quick.describe(t0),
            "the engine stopped (panic: boom): restarting the device in 1s"
        );
        let again = Down::after_stop(why(), Duration::from_secs(2), 3, t0);
        assert_eq!(
            (again.failures, again.next_attempt - t0),
            (4, Duration::from_secs(8))
        );
        let stable = Down::after_stop(why(), STABLE_AFTER, 3, t0);
        assert_eq!((stable.failures, stable.next_attempt), (0, t0));
        // The first start: its error as it is.
        let mut first = Down::new(None, t0);
        assert_eq!(first.describe(t0), "starting");
        first.failed(t0, "creating weft-wg: EPERM".into());
        assert_eq!(first.describe(t0), "creating weft-wg: EPERM");
    }

    #[test]
    fn probes_go_to_directly_reached_peers_only() {
        let peer = |n: u8, spaces: &[&str]| NodePeer {
            public_key: weft_crypto::WgPublicKey([n; 32]),
            endpoint: None,
            spaces: spaces.iter().map(|s| s.parse().expect("prefix")).collect(),
        };
        // n1 direct; n2 relayed (no spaces of its own entry); n3 the relay, carrying n2's.
        let peers = [
            peer(1, &["10.36.0.0/14"]),
            peer(2, &[]),
            peer(3, &["10.40.0.0/13", "10.44.0.0/14"]),
        ];
        let targets: Vec<String> = probe_targets(&peers)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(targets, ["10.36.0.0", "10.40.0.0"]);

        let mut probes = Probes::default();
        let t0 = Instant::now();
        let lo = std::net::Ipv4Addr::LOCALHOST;
        probes.send(lo, &[lo], t0);
        assert!(probes.socket.is_some() && probes.last == Some(t0));
        probes.send(lo, &[lo], t0 + Duration::from_secs(1));
        assert_eq!(
            probes.last,
            Some(t0),
            "at most one round of probes per PROBE_EVERY"
        );
        probes.send(lo, &[lo], t0 + PROBE_EVERY);
        assert_eq!(probes.last, Some(t0 + PROBE_EVERY));
    }

    #[test]
    fn gateway_is_the_first_address_with_the_space_prefix() {
        let space: Ipv4Net = "10.40.0.0/13".parse().expect("prefix");
        assert_eq!(
            gateway(&space),
            "10.40.0.0/13".parse::<IpNet>().expect("prefix")
        );
        let odd: Ipv4Net = "10.32.4.7/22".parse().expect("prefix");
        assert_eq!(
            gateway(&odd),
            "10.32.4.0/22".parse::<IpNet>().expect("prefix")
        );
    }
}

/// The datapath task against real kernels: three test-bed hosts, each running [`run`] on a
/// thread inside its namespace with the userspace backend; the test plays the driver (views
/// in, each node's `unreachable` passed on to the others' views, as records would be) and
/// attaches containers to the bridges with `ip`.
#[cfg(test)]
mod netns_tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use weft_crypto::NodeId;
    use weft_testbed::TestBed;

    use super::*;
    use crate::daemon::view::{LocalNode, MeshPeer};

    const RANGE: &str = "10.32.0.0/12";
    const PORT: u16 = 6784;

    /// One node: its identity and the datapath thread. Dropping it closes the view channel,
    /// which ends [`run`], and waits for the thread (device and TUN go with it).
    struct Node {
        id: NodeId,
        key: WgPublicKey,
        addr: Ipv4Addr,
        space: Ipv4Net,
        view: Option<watch::Sender<Option<MeshView>>>,
        report: watch::Receiver<DatapathReport>,
        thread: Option<JoinHandle<anyhow::Result<()>>>,
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.view.take();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn start(ns: &str, n: u8, addr: Ipv4Addr) -> Node {
        let private_key = WgPrivateKey::generate();
        let key = private_key.public_key();
        let config = DatapathConfig {
            ifname: "weft-wg".into(),
            private_key,
            listen_port: PORT,
            mtu: 1420,
            backend: "userspace".into(),
            wg_socket: None,
            masquerade: true,
        };
        let (view_tx, view_rx) = watch::channel(None);
        let (report_tx, report_rx) = watch::channel(DatapathReport::default());
        let path = format!("/run/netns/{ns}");
        let thread = std::thread::spawn(move || {
            let netns = std::fs::File::open(&path).context("opening the test namespace")?;
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the test namespace")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            runtime.block_on(run(config, view_rx, report_tx))
        });
        Node {
            id: NodeId([n; 32]),
            key,
            addr,
            space: format!("10.32.{n}.0/24").parse().expect("test space"),
            view: Some(view_tx),
            report: report_rx,
            thread: Some(thread),
        }
    }

    /// Node `i`'s view: the others alive, with the unreachable lists they last reported.
    fn view_of(i: usize, nodes: &[Node], records: &[Vec<NodeId>]) -> MeshView {
        let me = &nodes[i];
        MeshView {
            local: LocalNode {
                node_id: me.id,
                name: format!("n{i}"),
                wg_port: PORT,
                spaces: vec![me.space],
            },
            cluster_range: RANGE.parse().expect("range"),
            peers: nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, n)| MeshPeer {
                    node_id: n.id,
                    name: format!("n{j}"),
                    wg_key: n.key,
                    endpoints: vec![SocketAddr::new(n.addr.into(), PORT)],
                    spaces: vec![n.space],
                    state: PeerState::Alive,
                    unreachable: records[j].clone(),
                })
                .collect(),
        }
    }

    /// Plays the driver until `done` holds for the nodes' reports, or panics after `timeout`.
    fn drive(
        nodes: &[Node],
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[DatapathReport]) -> bool,
    ) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let reports: Vec<DatapathReport> =
                nodes.iter().map(|n| n.report.borrow().clone()).collect();
            let records: Vec<Vec<NodeId>> = reports.iter().map(|r| r.unreachable.clone()).collect();
            for (i, node) in nodes.iter().enumerate() {
                let view = view_of(i, nodes, &records);
                if let Some(tx) = &node.view {
                    tx.send_if_modified(|v| {
                        let changed = v.as_ref() != Some(&view);
                        *v = Some(view);
                        changed
                    });
                }
            }
            if done(&reports) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {reports:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A container namespace on host `ns`'s bridge with address `.2` of `space`.
    fn attach(bed: &TestBed, ns: &str, space: Ipv4Net) -> (String, Ipv4Addr) {
        let c = bed.container().expect("container namespace");
        let addr = Ipv4Addr::from(u32::from(space.network()) + 2);
        let gw = space.network();
        let host_if = "vc0";
        bed.run_ok_in(
            ns,
            &[
                "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &c,
            ],
        )
        .expect("veth");
        bed.run_ok_in(
            ns,
            &["ip", "link", "set", host_if, "master", BRIDGE_NAME, "up"],
        )
        .expect("veth on the bridge");
        let cidr = format!("{addr}/{}", space.prefix_len());
        bed.run_ok_in(&c, &["ip", "addr", "add", &cidr, "dev", "eth0"])
            .expect("container address");
        bed.run_ok_in(&c, &["ip", "link", "set", "eth0", "up"])
            .expect("eth0 up");
        bed.run_ok_in(
            &c,
            &["ip", "route", "add", "default", "via", &gw.to_string()],
        )
        .expect("default route");
        (c, addr)
    }

    fn wait_ping(bed: &TestBed, from: &str, to: Ipv4Addr, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let out = bed
                .run_in(from, &["ping", "-c", "1", "-W", "1", &to.to_string()])
                .expect("ping runs");
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{from} cannot ping {to}"
            );
        }
    }

    fn via(reports: &[DatapathReport], from: usize, to: &Node) -> Option<NodeId> {
        reports[from].peers.get(&to.id).and_then(|l| l.via)
    }

    #[test]
    fn three_nodes_ping_across_then_relay_around_a_cut_and_back() {
        if !weft_testbed::require_root("three_nodes_ping_across_then_relay_around_a_cut_and_back") {
            return;
        }
        let bed = TestBed::new(3).expect("test bed");
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                let h = bed.host(i);
                start(h.name(), i as u8 + 1, h.underlay_ip())
            })
            .collect();
        drive(
            &nodes,
            "bridges, routes and firewall",
            Duration::from_secs(20),
            |r| r.iter().all(|r| r.ready),
        );
        for r in nodes.iter().map(|n| n.report.borrow().clone()) {
            assert_eq!(r.kind, "userspace");
            assert_eq!(r.error, None);
        }
        let containers: Vec<(String, Ipv4Addr)> = (0..3)
            .map(|i| attach(&bed, bed.host(i).name(), nodes[i].space))
            .collect();
        for (i, (from, _)) in containers.iter().enumerate() {
            for (j, (_, to)) in containers.iter().enumerate() {
                if i != j {
                    drive(&nodes, "handshakes", Duration::from_secs(1), |_| true);
                    wait_ping(&bed, from, *to, Duration::from_secs(15));
                }
            }
        }
        drive(
            &nodes,
            "handshakes reported",
            Duration::from_secs(10),
            |r| {
                r.iter()
                    .all(|r| r.peers.values().all(|l| l.last_handshake.is_some()))
            },
        );

        // Cut 0<->2 on the underlay: both ends find the other unreachable and go through 1.
        bed.cut(0, 2).expect("cut");
        let relay = nodes[1].id;
        drive(
            &nodes,
            "relay through node 1",
            Duration::from_secs(40),
            |r| via(r, 0, &nodes[2]) == Some(relay) && via(r, 2, &nodes[0]) == Some(relay),
        );
        {
            let reports: Vec<_> = nodes.iter().map(|n| n.report.borrow().clone()).collect();
            assert_eq!(reports[0].unreachable, vec![nodes[2].id]);
            assert_eq!(via(&reports, 1, &nodes[0]), None, "the relay goes direct");
        }
        wait_ping(
            &bed,
            &containers[0].0,
            containers[2].1,
            Duration::from_secs(15),
        );
        wait_ping(
            &bed,
            &containers[2].0,
            containers[0].1,
            Duration::from_secs(15),
        );
        // The path really is the relay: the direct underlay is cut.
        let direct = bed
            .run_in(
                bed.host(0).name(),
                &[
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    &bed.host(2).underlay_ip().to_string(),
                ],
            )
            .expect("ping runs");
        assert!(!direct.status.success(), "underlay 0<->2 still open");

        // Restore: back to direct.
        bed.restore(0, 2).expect("restore");
        drive(&nodes, "direct path again", Duration::from_secs(40), |r| {
            via(r, 0, &nodes[2]).is_none()
                && via(r, 2, &nodes[0]).is_none()
                && r.iter().all(|r| r.unreachable.is_empty())
        });
        wait_ping(
            &bed,
            &containers[0].0,
            containers[2].1,
            Duration::from_secs(15),
        );
        wait_ping(
            &bed,
            &containers[2].0,
            containers[0].1,
            Duration::from_secs(15),
        );
        drop(nodes);
    }
}
