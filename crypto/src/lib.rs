//! Keys, node identity and cluster admission for weft.
//!
//! - [`WgPrivateKey`] / [`WgPublicKey`]: the node's WireGuard static key pair (x25519), printed in
//!   WireGuard's base64 format so that `weft pubkey` and `wg pubkey` agree.
//! - [`IdentityKey`] / [`NodeId`]: the node's ed25519 identity. Every gossip record is signed with
//!   it, so a member that holds the cluster secret still cannot forge another member's record.
//! - [`ClusterSecret`]: the shared secret that admits a node to the cluster.
//! - [`KeyStore`]: the node's keys in its state directory (0700), one file each (0600).
//!
//! Secret material is zeroized on drop and never shows in `Debug` or `Display`.
#![forbid(unsafe_code)]

pub mod admission;
mod error;
mod identity;
mod keyfile;
mod keystore;
mod secret;
mod wireguard;

pub use error::{Error, Result};
pub use identity::{IdentityKey, NodeId, Signature, SIGNATURE_LEN};
pub use keyfile::{PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};
pub use keystore::{KeyStore, DEFAULT_STATE_DIR, IDENTITY_KEY_FILE, WIREGUARD_KEY_FILE};
pub use secret::ClusterSecret;
pub use wireguard::{WgPrivateKey, WgPublicKey, KEY_LEN};

/// Decode a 32-byte key from WireGuard's base64 format (44 characters, standard alphabet, padded).
pub(crate) fn decode_key(
    text: &str,
    what: &'static str,
) -> Result<zeroize::Zeroizing<[u8; KEY_LEN]>> {
    use base64::Engine;
    let text = text.trim();
    // Anything much longer than 44 characters is not a key; don't decode unbounded input.
    if text.len() > 64 {
        return Err(Error::KeyEncoding {
            what,
            reason: "too long: must decode to exactly 32 bytes",
        });
    }
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| Error::KeyEncoding {
                what,
                reason: "not valid base64",
            })?,
    );
    if bytes.len() != KEY_LEN {
        return Err(Error::KeyEncoding {
            what,
            reason: "must decode to exactly 32 bytes",
        });
    }
    let mut key = zeroize::Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

pub(crate) fn encode_key(bytes: &[u8; KEY_LEN]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
