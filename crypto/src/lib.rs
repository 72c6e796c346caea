//! Keys, node identity and cluster admission for weft.
//!
//! - [`WgPrivateKey`] / [`WgPublicKey`]: the node's WireGuard static key pair (x25519), printed in
//!   WireGuard's base64 format so that `weft pubkey` and `wg pubkey` agree.
//! - [`IdentityKey`] / [`NodeId`]: the node's ed25519 identity. Every gossip record is signed with
//!   it, so a member that holds the cluster secret still cannot forge another member's record.
//! - [`ClusterSecret`]: the shared secret that admits a node to the cluster.
//!
//! Secret material is zeroized on drop and never shows in `Debug` or `Display`.
#![forbid(unsafe_code)]

pub mod admission;
mod error;
mod identity;
mod secret;
mod wireguard;

pub use error::{Error, Result};
pub use identity::{IdentityKey, NodeId, Signature, SIGNATURE_LEN};
pub use secret::ClusterSecret;
pub use wireguard::{WgPrivateKey, WgPublicKey, KEY_LEN};

/// Decode a 32-byte key from WireGuard's base64 format (44 characters, standard alphabet, padded).
pub(crate) fn decode_key(text: &str, what: &'static str) -> Result<zeroize::Zeroizing<[u8; KEY_LEN]>> {
    use base64::Engine;
    let text = text.trim();
    let mut out = zeroize::Zeroizing::new([0u8; KEY_LEN]);
    // Decode into a fixed buffer of 33 bytes so that a longer input fails on length rather
    // than being truncated.
    let mut buf = zeroize::Zeroizing::new([0u8; KEY_LEN + 3]);
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(text.as_bytes(), &mut buf[..])
        .map_err(|_| Error::KeyEncoding { what, reason: "not valid base64" })?;
    if n != KEY_LEN {
        return Err(Error::KeyEncoding { what, reason: "must decode to exactly 32 bytes" });
    }
    out.copy_from_slice(&buf[..KEY_LEN]);
    Ok(out)
}

pub(crate) fn encode_key(bytes: &[u8; KEY_LEN]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
