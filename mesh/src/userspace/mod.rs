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

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
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

/// Why a device's engine stopped. Any of them leaves the device dead: the TUN interface
/// goes with the engine, and a new device must be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineExit {
    /// Asked to: [`DeviceHandle::shutdown`], or every handle dropped.
    Shutdown,
    /// The TUN interface was deleted (from outside) or failed.
    InterfaceGone(String),
    /// The engine panicked (a bug); the panic's message.
    Panicked(String),
    /// The engine's task was cancelled (its [`UserspaceDevice`] dropped).
    Aborted,
}

impl std::fmt::Display for EngineExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineExit::Shutdown => f.write_str("shut down"),
            EngineExit::InterfaceGone(e) => write!(f, "interface gone: {e}"),
            EngineExit::Panicked(msg) => write!(f, "panic: {msg}"),
            EngineExit::Aborted => f.write_str("task cancelled"),
        }
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// A cheap, cloneable way to talk to a running device (the UAPI server holds one).
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    name: Arc<str>,
    commands: mpsc::Sender<Command>,
    /// Set once when the engine ends, however it ends.
    exit: watch::Receiver<Option<EngineExit>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Apply(..) => "Apply",
            Command::Status(_) => "Status",
            Command::Counters(_) => "Counters",
            Command::Shutdown => "Shutdown",
            #[cfg(any(test, feature = "fault-injection"))]
            Command::Panic => "Panic",
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

    /// Resolves once the device has stopped (interface deleted, shut down, or the engine
    /// panicked).
    pub async fn closed(&self) {
        let mut exit = self.exit.clone();
        let _ = exit.wait_for(Option::is_some).await;
    }

    pub fn is_closed(&self) -> bool {
        self.exit().is_some()
    }

    /// Why the engine stopped, `None` while it runs: a supervisor checks this (or awaits
    /// [`DeviceHandle::closed`]) and makes a new device.
    pub fn exit(&self) -> Option<EngineExit> {
        if let Some(exit) = self.exit.borrow().clone() {
            return Some(exit);
        }
        // The task that reports the exit is gone without a word: it was cancelled.
        self.exit
            .has_changed()
            .is_err()
            .then_some(EngineExit::Aborted)
    }

    /// Tests only: makes the engine panic, as a bug in it would.
    #[cfg(any(test, feature = "fault-injection"))]
    pub async fn inject_panic(&self) {
        let _ = self.commands.send(Command::Panic).await;
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
        let (exit_tx, exit) = watch::channel(None);
        // A panic in the engine is caught here and reported like any other end, so whoever
        // holds the device learns that it is dead (and why) instead of finding a silent task.
        let run = tracing::Instrument::instrument(engine.run(receiver), span);
        let task = tokio::spawn(async move {
            let exit = match AssertUnwindSafe(run).catch_unwind().await {
                Ok(exit) => exit,
                Err(panic) => EngineExit::Panicked(panic_message(panic.as_ref())),
            };
            let _ = exit_tx.send(Some(exit));
        });
        let handle = DeviceHandle {
            name: name.into(),
            commands,
            exit,
        };
        #[cfg(feature = "fault-injection")]
        fault::panic_on_sigusr2(handle.clone());
        Ok(Self { handle, task })
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

    /// Why the engine stopped, `None` while it runs (see [`DeviceHandle::exit`]).
    pub fn exit(&self) -> Option<EngineExit> {
        self.handle.exit()
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

/// The integration tests' way to make a running daemon's engine panic: with the
/// `fault-injection` feature (which `cargo test` turns on through weft's dev-dependencies,
/// never a release build), SIGUSR2 makes every userspace engine in the process panic.
#[cfg(feature = "fault-injection")]
mod fault {
    use tokio::signal::unix::{signal, SignalKind};

    use super::DeviceHandle;

    pub(super) fn panic_on_sigusr2(handle: DeviceHandle) {
        let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
            return;
        };
        tokio::spawn(async move {
            tokio::select! {
                Some(()) = usr2.recv() => {
                    tracing::warn!(iface = handle.name(), "SIGUSR2 (fault injection): making the engine panic");
                    handle.inject_panic().await;
                }
                () = handle.closed() => {}
            }
        });
    }
}

/// A device's engine ending, seen from outside, in a test host's namespace (needs root).
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_testbed::TestBed;

    use super::*;

    /// Runs `body` on a thread inside host 0's namespace of a new test bed.
    fn in_test_host<F, Fut>(test: &str, body: F)
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        if !weft_testbed::require_root(test) {
            return;
        }
        let bed = TestBed::new(1).expect("test bed");
        let name = bed.host(0).name().to_owned();
        let path = format!("/run/netns/{name}");
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body(name));
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    async fn wait_closed(device: &UserspaceDevice) {
        tokio::time::timeout(Duration::from_secs(5), device.closed())
            .await
            .expect("the device reports its end");
    }

    fn link_exists(ns: &str, name: &str) -> bool {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "ip", "link", "show", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn a_panic_in_the_engine_is_reported_and_the_interface_goes() {
        in_test_host(
            "a_panic_in_the_engine_is_reported_and_the_interface_goes",
            |ns| async move {
                let device = UserspaceDevice::create("wp0", DeviceOptions::default())
                    .await
                    .expect("device");
                assert_eq!(device.exit(), None);
                assert!(link_exists(&ns, "wp0"));
                device.handle().inject_panic().await;
                wait_closed(&device).await;
                assert_eq!(
                    device.exit(),
                    Some(EngineExit::Panicked(
                        "fault injection: engine panic requested".into()
                    ))
                );
                assert!(device.handle().is_closed());
                assert!(matches!(device.status().await, Err(Error::Closed)));
                assert!(
                    !link_exists(&ns, "wp0"),
                    "the TUN interface outlived its engine"
                );
            },
        );
    }

    #[test]
    fn a_deleted_interface_ends_the_engine() {
        in_test_host("a_deleted_interface_ends_the_engine", |ns| async move {
            let device = UserspaceDevice::create("wp1", DeviceOptions::default())
                .await
                .expect("device");
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "ip", "link", "del", "wp1"])
                .output()
                .expect("ip link del");
            assert!(out.status.success(), "{out:?}");
            wait_closed(&device).await;
            assert!(
                matches!(device.exit(), Some(EngineExit::InterfaceGone(_))),
                "{:?}",
                device.exit()
            );
        });
    }

    #[test]
    fn shutdown_and_drop_are_told_apart() {
        in_test_host("shutdown_and_drop_are_told_apart", |_| async move {
            let device = UserspaceDevice::create("wp2", DeviceOptions::default())
                .await
                .expect("device");
            let handle = device.handle();
            handle.shutdown().await;
            assert_eq!(handle.exit(), Some(EngineExit::Shutdown));
            let device = UserspaceDevice::create("wp3", DeviceOptions::default())
                .await
                .expect("device");
            let handle = device.handle();
            drop(device);
            tokio::time::timeout(Duration::from_secs(5), handle.closed())
                .await
                .expect("a dropped device reports its end");
            assert_eq!(handle.exit(), Some(EngineExit::Aborted));
        });
    }
}
