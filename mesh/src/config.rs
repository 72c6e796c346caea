//! Configuration shared by both datapath backends: the model of WireGuard's cross-platform
//! configuration protocol (`set=1` / `get=1`), so `wg` and the weft daemon speak the same thing.
//!
//! A [`DeviceConfig`] is a *change*, as a `set=1` request is: `None` leaves a setting as it is.
//! A [`DeviceStatus`] is the full state, as a `get=1` answer is.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use weft_crypto::{WgPrivateKey, WgPublicKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of WireGuard keys (private, public, preshared).
pub const KEY_LEN: usize = 32;

/// The only protocol version WireGuard has.
pub const PROTOCOL_VERSION: u32 = 1;

/// A change to a device, applied as one unit: either all of it or, if any part is invalid,
/// none of it.
#[derive(Debug, Clone, Default)]
pub struct DeviceConfig {
    /// `Some` sets the key; an all-zero key removes it (the device then has no identity).
    pub private_key: Option<WgPrivateKey>,
    /// `Some(0)` asks for a random port.
    pub listen_port: Option<u16>,
    /// `Some(0)` removes the mark.
    pub fwmark: Option<u32>,
    /// Remove every peer not named in `peers` before applying them (`replace_peers=true`).
    pub replace_peers: bool,
    pub peers: Vec<PeerConfig>,
}

/// A change to one peer, keyed by its public key.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub public_key: WgPublicKey,
    /// `Some` sets it; an all-zero key removes it.
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; `Some(0)` turns persistent keepalive off.
    pub persistent_keepalive: Option<u16>,
    /// Added to the peer's allowed IPs (after clearing them if `replace_allowed_ips`).
    pub allowed_ips: Vec<IpNet>,
    pub replace_allowed_ips: bool,
    /// Remove this peer; every other field is then ignored.
    pub remove: bool,
    /// Change this peer only if it exists already; never create it.
    pub update_only: bool,
}

impl PeerConfig {
    /// A change that names the peer and changes nothing else (creates it if missing).
    pub fn new(public_key: WgPublicKey) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            allowed_ips: Vec::new(),
            replace_allowed_ips: false,
            remove: false,
            update_only: false,
        }
    }
}

/// The state of a device, as `get=1` reports it.
#[derive(Debug, Clone, Default)]
pub struct DeviceStatus {
    pub private_key: Option<WgPrivateKey>,
    /// Derived from `private_key`.
    pub public_key: Option<WgPublicKey>,
    /// The bound port (0 while the device has no socket).
    pub listen_port: u16,
    pub fwmark: Option<u32>,
    pub peers: Vec<PeerStatus>,
}

/// The state of one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub public_key: WgPublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
    pub allowed_ips: Vec<IpNet>,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub protocol_version: u32,
}

/// A WireGuard preshared key (32 bytes). Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey(pub [u8; KEY_LEN]);

impl PresharedKey {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The all-zero key, which the protocol uses to mean "no preshared key".
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

/// The first 8 characters of a public key's base64 form, to name a peer in logs.
pub fn short_key(key: &WgPublicKey) -> String {
    let mut text = key.to_string();
    text.truncate(8);
    text
}
