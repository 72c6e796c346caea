//! The datapath task: keeps the WireGuard device and the host's bridge, routes and firewall
//! in line with the latest [`MeshView`].

// Until the daemon wires it in.
#![allow(dead_code)]

use tokio::sync::watch;
use weft_crypto::WgPrivateKey;

use super::view::{DatapathReport, MeshView};

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
}

/// Run until dropped (aborted): follow `view`, publish on `report`. On SIGTERM the daemon
/// just drops this task: routes and the fail-closed firewall stay, so traffic to other
/// nodes fails closed until the next start reconciles.
pub async fn run(
    _config: DatapathConfig,
    _view: watch::Receiver<Option<MeshView>>,
    _report: watch::Sender<DatapathReport>,
) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `weft reset`: remove weft's WireGuard interface `ifname`, bridge, routes, rules and
/// firewall table from the host.
pub async fn reset(_ifname: &str) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
