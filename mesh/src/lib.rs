//! The WireGuard datapath, routes, bridge and firewall of a weft node. See docs/ARCHITECTURE.md.

pub mod attach;
pub mod backend;
pub mod config;
pub mod error;
pub mod host;
pub mod kernel;
pub mod paths;
pub mod policy;
pub mod tun;
pub mod uapi;
pub mod userspace;

pub use config::{DeviceConfig, DeviceStatus, PeerConfig, PeerStatus, PresharedKey};
pub use error::{Error, Result};
