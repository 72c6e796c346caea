//! What the weft daemon needs from a WireGuard device, whatever implements it: the kernel's
//! WireGuard ([`KernelDevice`]) or weft's userspace datapath ([`UserspaceDevice`]).
//!
//! [`detect`] picks one at start-up: kernel where the kernel can make a wireguard link,
//! userspace otherwise (saying why, once, at info level). [`AnyBackend`] holds either.
//!
//! ```no_run
//! # async fn example(config: weft_mesh::DeviceConfig) -> weft_mesh::Result<()> {
//! use weft_mesh::backend::{detect, AnyBackend, Backend};
//! let device = AnyBackend::create(detect(), "weft0", &Default::default()).await?;
//! device.apply(config).await?;
//! let status = device.status().await?;
//! # drop(status);
//! device.delete().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;

use tracing::{debug, info};

use crate::config::{DeviceConfig, DeviceStatus};
use crate::kernel::{self, KernelDevice};
use crate::userspace::{DeviceOptions, EngineExit, UserspaceDevice};
use crate::{Error, Result};

/// Why a device no longer works: it cannot be repaired, only replaced by a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The userspace engine ended (a panic, its TUN interface deleted, ...).
    Engine(EngineExit),
    /// The kernel interface was deleted, or another link has its name now.
    Deleted,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::Engine(exit) => write!(f, "the userspace WireGuard engine stopped ({exit})"),
            Stopped::Deleted => f.write_str("the WireGuard interface was deleted"),
        }
    }
}

/// Which implementation runs a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The Linux kernel's WireGuard, configured over generic netlink.
    Kernel,
    /// weft's userspace datapath (boringtun over a TUN device), run in this process.
    Userspace,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        })
    }
}

/// One WireGuard interface, whatever runs it.
///
/// A change ([`DeviceConfig`]) names only what it changes, as the configuration protocol's
/// `set=1` does; `apply` returns once it is in force.
pub trait Backend: fmt::Debug + Send + Sync {
    fn kind(&self) -> BackendKind;

    /// The interface name.
    fn name(&self) -> &str;

    /// Applies a change.
    fn apply(&self, config: DeviceConfig) -> impl Future<Output = Result<()>> + Send;

    /// The full state: keys, port, peers with their counters and last handshake.
    fn status(&self) -> impl Future<Output = Result<DeviceStatus>> + Send;

    /// Removes the interface.
    fn delete(self) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized;

    /// `Some` once the device no longer works. Cheap enough to ask every second; a question
    /// that cannot be answered (a netlink error) counts as working.
    fn stopped(&self) -> impl Future<Output = Option<Stopped>> + Send;
}

/// How a device is created (the MTU).
pub type CreateOptions = DeviceOptions;

impl KernelDevice {
    /// Runs a blocking netlink call off the async executor.
    async fn blocking<T, F>(&self, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(KernelDevice) -> Result<T> + Send + 'static,
    {
        let device = self.clone();
        tokio::task::spawn_blocking(move || call(device))
            .await
            .map_err(|e| Error::io("kernel backend call", std::io::Error::other(e)))?
    }
}

impl Backend for KernelDevice {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }

    fn name(&self) -> &str {
        KernelDevice::name(self)
    }

    async fn apply(&self, config: DeviceConfig) -> Result<()> {
        self.blocking(move |device| device.apply(&config)).await
    }

    async fn status(&self) -> Result<DeviceStatus> {
        self.blocking(|device| device.status()).await
    }

    async fn delete(self) -> Result<()> {
        tokio::task::spawn_blocking(move || KernelDevice::delete(self))
            .await
            .map_err(|e| Error::io("kernel backend call", std::io::Error::other(e)))?
    }

    async fn stopped(&self) -> Option<Stopped> {
        match self.blocking(|device| device.exists()).await {
            Ok(false) => Some(Stopped::Deleted),
            Ok(true) | Err(_) => None,
        }
    }
}

impl Backend for UserspaceDevice {
    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }

    fn name(&self) -> &str {
        UserspaceDevice::name(self)
    }

    async fn apply(&self, config: DeviceConfig) -> Result<()> {
        UserspaceDevice::apply(self, config).await
    }

    async fn status(&self) -> Result<DeviceStatus> {
        UserspaceDevice::status(self).await
    }

    /// Stops the engine; the TUN interface goes with it.
    async fn delete(self) -> Result<()> {
        self.shutdown().await;
        Ok(())
    }

    async fn stopped(&self) -> Option<Stopped> {
        self.exit().map(Stopped::Engine)
    }
}

/// A device of either kind, chosen at run time.
#[derive(Debug)]
pub enum AnyBackend {
    Kernel(KernelDevice),
    Userspace(UserspaceDevice),
}

impl AnyBackend {
    /// Creates interface `name` with the backend `kind` (see [`detect`]). A userspace device
    /// runs on the current tokio runtime.
    pub async fn create(kind: BackendKind, name: &str, options: &CreateOptions) -> Result<Self> {
        match kind {
            BackendKind::Kernel => {
                let (name, mtu) = (name.to_owned(), options.mtu);
                let device = tokio::task::spawn_blocking(move || {
                    KernelDevice::create_with_mtu(&name, Some(mtu))
                })
                .await
                .map_err(|e| Error::io("kernel backend call", std::io::Error::other(e)))??;
                Ok(Self::Kernel(device))
            }
            BackendKind::Userspace => Ok(Self::Userspace(
                UserspaceDevice::create(name, options.clone()).await?,
            )),
        }
    }

    /// Takes over an existing kernel WireGuard interface (after a daemon restart). A userspace
    /// device lives only as long as the process that created it, so there is none to open.
    pub async fn open_kernel(name: &str) -> Result<Self> {
        let name = name.to_owned();
        let device = tokio::task::spawn_blocking(move || KernelDevice::open(&name))
            .await
            .map_err(|e| Error::io("kernel backend call", std::io::Error::other(e)))??;
        Ok(Self::Kernel(device))
    }
}

impl Backend for AnyBackend {
    fn kind(&self) -> BackendKind {
        match self {
            Self::Kernel(device) => device.kind(),
            Self::Userspace(device) => device.kind(),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Kernel(device) => Backend::name(device),
            Self::Userspace(device) => Backend::name(device),
        }
    }

    async fn apply(&self, config: DeviceConfig) -> Result<()> {
        match self {
            Self::Kernel(device) => Backend::apply(device, config).await,
            Self::Userspace(device) => Backend::apply(device, config).await,
        }
    }

    async fn status(&self) -> Result<DeviceStatus> {
        match self {
            Self::Kernel(device) => Backend::status(device).await,
            Self::Userspace(device) => Backend::status(device).await,
        }
    }

    async fn delete(self) -> Result<()> {
        match self {
            Self::Kernel(device) => Backend::delete(device).await,
            Self::Userspace(device) => Backend::delete(device).await,
        }
    }

    async fn stopped(&self) -> Option<Stopped> {
        match self {
            Self::Kernel(device) => device.stopped().await,
            Self::Userspace(device) => device.stopped().await,
        }
    }
}

impl AnyBackend {
    /// Resolves when a userspace device's engine ends, so a supervisor can react at once;
    /// never for a kernel device (ask [`Backend::stopped`] for that).
    pub async fn closed(&self) {
        match self {
            Self::Kernel(_) => std::future::pending().await,
            Self::Userspace(device) => device.closed().await,
        }
    }
}

/// Decides which backend this host uses: [`BackendKind::Kernel`] when a kernel wireguard link
/// can be made (the probe link is removed again), else [`BackendKind::Userspace`], logging the
/// reason in one info line. Blocking (a few netlink round trips).
pub fn detect() -> BackendKind {
    match kernel::probe() {
        Ok(()) => {
            debug!("kernel WireGuard works here");
            BackendKind::Kernel
        }
        Err(why) => {
            info!(reason = %why, "kernel WireGuard unavailable, using the userspace datapath");
            BackendKind::Userspace
        }
    }
}
