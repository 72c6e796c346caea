//! The userspace WireGuard device: boringtun's `noise::Tunn` per peer over a TUN device.
//!
//! ```no_run
//! # async fn example(config: weft_mesh::DeviceConfig) -> weft_mesh::Result<()> {
//! use weft_mesh::userspace::{DeviceOptions, UserspaceDevice};
//! let device = UserspaceDevice::create("weft0", DeviceOptions::default()).await?;
//! device.apply(config).await?;
//! let status = device.status().await?;
//! # drop(status);
//! device.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod allowed_ips;
mod engine;
mod filter;
mod gro;
mod offload;
mod peer;
mod sockets;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{DeviceConfig, DeviceStatus};
use crate::tun::{Tun, TunOptions, DEFAULT_MTU};
use crate::{Error, Result};
use engine::{Command, Engine};

/// How the device is created.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub mtu: u32,
    /// Offloads: TCP segmentation offload on the TUN device (the kernel hands over up to
    /// 64 KiB of a TCP stream per read, which the engine cuts into MTU-sized packets, and
    /// takes coalesced TCP segments back in one write), and UDP GSO/GRO on the sockets.
    /// Each falls back to the plain way where the kernel refuses it.
    pub offload: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            mtu: DEFAULT_MTU,
            offload: true,
        }
    }
}

/// Packets the device dropped or handled, by reason. Bad input from the network is
/// counted here and never fails the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Packets read from the TUN device.
    pub tun_rx_packets: u64,
    /// Decrypted packets written to the TUN device.
    pub tun_tx_packets: u64,
    /// TUN packets too short or not IPv4/IPv6, or with an offload header we cannot honour.
    pub invalid_tun_packets: u64,
    /// TUN reads that were TCP super-segments (offload), each cut into several packets
    /// (counted in `tun_rx_packets`).
    pub tun_gso_batches: u64,
    /// TUN writes that were several decrypted TCP segments coalesced into one (offload).
    pub tun_gro_writes: u64,
    /// UDP sends that carried several datagrams (GSO).
    pub udp_gso_sends: u64,
    /// UDP reads that returned several datagrams (GRO).
    pub udp_gro_reads: u64,
    /// TUN packets whose destination is in no peer's allowed IPs.
    pub no_route: u64,
    /// Packets for a peer whose endpoint is not known yet.
    pub no_endpoint: u64,
    /// Packets dropped because the device has no private key.
    pub no_key: u64,
    /// Datagrams that are not WireGuard messages or fail their MAC.
    pub invalid_packets: u64,
    /// Datagrams for no known peer (unknown key or session index).
    pub unknown_peer: u64,
    /// Datagrams the peer's session refused (replayed, wrong key, bad tag, stale...).
    pub rejected: u64,
    /// Decrypted packets whose inner source is not in the sending peer's allowed IPs.
    pub bad_source: u64,
    /// Decrypted packets that are not a whole IPv4/IPv6 packet (header cut short by its
    /// own length fields).
    pub invalid_inner_packets: u64,
    /// Cookie replies sent to initiators while under load.
    pub cookies_sent: u64,
    pub send_errors: u64,
    pub udp_errors: u64,
    pub tun_write_errors: u64,
}

/// A cheap, cloneable way to talk to a running device (the UAPI server holds one).
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    name: Arc<str>,
    commands: mpsc::Sender<Command>,
    closed: watch::Receiver<bool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Apply(..) => "Apply",
            Command::Status(_) => "Status",
            Command::Counters(_) => "Counters",
            Command::Shutdown => "Shutdown",
        })
    }
}

impl DeviceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Apply a change: all of it, or nothing and an error.
    pub async fn apply(&self, config: DeviceConfig) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Apply(config, reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The device's configuration and per-peer counters.
    pub async fn status(&self) -> Result<DeviceStatus> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// Drop and packet counters of the whole device.
    pub async fn counters(&self) -> Result<Counters> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Counters(reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// Resolves once the device has stopped (interface deleted, or shut down).
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|&c| c).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Ask the engine to stop.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        self.closed().await;
    }
}

/// A userspace WireGuard interface, run by one tokio task. Dropping it stops the task (the
/// TUN interface, not being persistent, goes with it).
#[derive(Debug)]
pub struct UserspaceDevice {
    handle: DeviceHandle,
    task: JoinHandle<()>,
}

impl UserspaceDevice {
    /// Create the TUN interface `name` (MTU from `options`) and start the engine on the
    /// current tokio runtime. The interface is left down, as wireguard-go leaves it.
    pub async fn create(name: &str, options: DeviceOptions) -> Result<Self> {
        let tun = Tun::open(
            name,
            &TunOptions {
                mtu: options.mtu,
                offload: options.offload,
            },
        )?;
        tracing::debug!(iface = name, offload = tun.offload(), "TUN device open");
        let span = tracing::info_span!("wg", iface = %name);
        let engine = Engine::new(tun, span.clone(), options.offload, options.mtu)?;
        let (commands, receiver) = mpsc::channel(16);
        let (closed_tx, closed) = watch::channel(false);
        let task = tokio::spawn(tracing::Instrument::instrument(
            engine.run(receiver, closed_tx),
            span,
        ));
        Ok(Self {
            handle: DeviceHandle {
                name: name.into(),
                commands,
                closed,
            },
            task,
        })
    }

    pub fn handle(&self) -> DeviceHandle {
        self.handle.clone()
    }

    pub fn name(&self) -> &str {
        self.handle.name()
    }

    pub async fn apply(&self, config: DeviceConfig) -> Result<()> {
        self.handle.apply(config).await
    }

    pub async fn status(&self) -> Result<DeviceStatus> {
        self.handle.status().await
    }

    pub async fn counters(&self) -> Result<Counters> {
        self.handle.counters().await
    }

    pub async fn closed(&self) {
        self.handle.closed().await
    }

    /// Stop the engine and wait for it.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}
