//! WireGuard's cross-platform configuration protocol ("UAPI"), as `wg` speaks it to
//! wireguard-go over `/var/run/wireguard/IFNAME.sock`.
//!
//! [`parse`] turns request text into a [`crate::DeviceConfig`] and a status into answer text,
//! with no IO; [`server`] serves the socket.

#![forbid(unsafe_code)]

pub mod parse;
pub mod server;

pub use server::{socket_path, UapiServer, SOCKET_DIR};
