//! `weft-cni`, the CNI plugin of weft (network type `"weft"`): puts a container's network
//! namespace on the node's bridge with a veth pair, an address from the local weft daemon (or
//! a delegated IPAM plugin) and routes through the node's gateway, so the pod reaches every
//! other node's pods through the encrypted mesh.
//!
//! The library holds the pure parts (the `CNI_*` environment, the configuration, the result
//! types of every protocol version, request parsing), the daemon client, delegated plugins,
//! the release spool the daemon shares, and the commands. `main.rs` only reads the process's
//! environment and stdin and prints what [`plugin::run`] returns.
#![forbid(unsafe_code)]

pub mod check;
pub mod config;
pub mod daemon;
pub mod delegate;
pub mod env;
pub mod error;
pub mod plugin;
pub mod request;
pub mod spool;
pub mod types;
pub mod version;

pub use error::{CniError, Result};
