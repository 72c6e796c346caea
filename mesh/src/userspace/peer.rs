//! One peer of the userspace device: its configuration, its `Tunn` and its counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use ipnet::IpNet;
use weft_crypto::WgPublicKey;

use crate::config::{short_key, PeerStatus, PresharedKey, PROTOCOL_VERSION};

/// The device's own key, in the forms boringtun needs.
#[derive(Clone)]
pub(crate) struct DeviceKey {
    pub private: weft_crypto::WgPrivateKey,
    pub secret: x25519_dalek::StaticSecret,
    pub public: x25519_dalek::PublicKey,
    pub rate_limiter: Arc<RateLimiter>,
}

/// Handshakes per second above which the device asks initiators for cookies (as boringtun).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

impl DeviceKey {
    pub fn new(private: weft_crypto::WgPrivateKey) -> Self {
        let secret = private.to_x25519();
        let public = x25519_dalek::PublicKey::from(&secret);
        let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Self {
            private,
            secret,
            public,
            rate_limiter,
        }
    }

    pub fn wg_public(&self) -> WgPublicKey {
        WgPublicKey(self.public.to_bytes())
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({})", short_key(&self.wg_public()))
    }
}

pub(crate) struct Peer {
    pub public_key: WgPublicKey,
    /// Index boringtun puts in the top 24 bits of our session indices, to find the peer.
    pub index: u32,
    pub preshared_key: Option<PresharedKey>,
    pub keepalive: Option<u16>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// `None` while the device has no private key.
    pub tunn: Option<Tunn>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Last handshake seen from a previous `Tunn` of this peer (kept across rebuilds).
    pub last_handshake: Option<SystemTime>,
    pub span: tracing::Span,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &self.public_key)
            .field("index", &self.index)
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .finish_non_exhaustive()
    }
}

impl Peer {
    pub fn new(public_key: WgPublicKey, index: u32, parent: &tracing::Span) -> Self {
        let span = tracing::info_span!(parent: parent, "peer", peer = %short_key(&public_key));
        Self {
            public_key,
            index,
            preshared_key: None,
            keepalive: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            tunn: None,
            rx_bytes: 0,
            tx_bytes: 0,
            last_handshake: None,
            span,
        }
    }

    /// Replace the `Tunn` after a change it cannot take in place (key, preshared key,
    /// keepalive). The session is lost; a new handshake follows on the next packet.
    pub fn rebuild_tunn(&mut self, key: Option<&DeviceKey>) {
        self.last_handshake = self.last_handshake_time();
        self.tunn = key.map(|key| {
            Tunn::new(
                key.secret.clone(),
                self.public_key.to_x25519(),
                self.preshared_key.as_ref().map(|k| *k.as_bytes()),
                self.keepalive,
                self.index,
                Some(key.rate_limiter.clone()),
            )
        });
    }

    pub fn last_handshake_time(&self) -> Option<SystemTime> {
        let current = self
            .tunn
            .as_ref()
            .and_then(|t| t.time_since_last_handshake())
            .and_then(|age| SystemTime::now().checked_sub(age));
        current.or(self.last_handshake)
    }

    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            public_key: self.public_key,
            preshared_key: self.preshared_key.clone(),
            endpoint: self.endpoint,
            persistent_keepalive: self.keepalive,
            allowed_ips: self.allowed_ips.clone(),
            last_handshake: self.last_handshake_time(),
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            protocol_version: PROTOCOL_VERSION,
        }
    }
}
