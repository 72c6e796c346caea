//! The WireGuard datapath, routes, bridge and firewall of a weft node. See docs/ARCHITECTURE.md.

pub mod config;
pub mod error;

pub use config::{DeviceConfig, DeviceStatus, PeerConfig, PeerStatus, PresharedKey};
pub use error::{Error, Result};
