//! The WireGuard static key pair (Curve25519), in WireGuard's base64 text format.

use std::fmt;
use std::str::FromStr;

use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{decode_key, encode_key, Error, Result};

pub const KEY_LEN: usize = 32;

/// A WireGuard private key. Stored clamped, as `wg genkey` prints it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct WgPrivateKey([u8; KEY_LEN]);

impl WgPrivateKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        let key = Self::from_bytes(bytes);
        bytes.zeroize();
        key
    }

    /// Clamp as Curve25519 requires (and as `wg genkey` does), so the text form is canonical.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Parse WireGuard's base64 text. Unlike [`Self::from_bytes`] it keeps the bytes as given,
    /// so that a key written by another tool round-trips unchanged; x25519 clamps at use.
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = decode_key(text, "WireGuard private key")?;
        Ok(Self(*bytes))
    }

    /// The base64 text form. Named so that printing a private key is never an accident.
    pub fn to_base64_secret(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(encode_key(&self.0))
    }

    pub fn public_key(&self) -> WgPublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        WgPublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// The key as x25519-dalek's type, for the datapath (boringtun takes it).
    pub fn to_x25519(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for WgPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WgPrivateKey(<redacted>)")
    }
}

/// A WireGuard public key.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct WgPublicKey(pub [u8; KEY_LEN]);

impl WgPublicKey {
    pub fn from_base64(text: &str) -> Result<Self> {
        Ok(Self(*decode_key(text, "WireGuard public key")?))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_x25519(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(&self.0))
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

impl FromStr for WgPublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_base64(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_matches_wireguard() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        let key = WgPrivateKey(private);
        assert_eq!(key.public_key().0, public);
    }

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let key = WgPrivateKey::generate();
        let b = key.as_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
        let text = key.to_base64_secret();
        assert_eq!(text.len(), 44);
        let back = WgPrivateKey::from_base64(&text).expect("round trip");
        assert_eq!(back.public_key(), key.public_key());
    }

    #[test]
    fn bad_text_is_refused() {
        assert!(WgPublicKey::from_base64("not base64!").is_err());
        assert!(WgPublicKey::from_base64("AAAA").is_err());
        // 33 bytes of base64
        assert!(WgPublicKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = WgPrivateKey::generate();
        let debug = format!("{key:?}");
        assert!(!debug.contains(key.to_base64_secret().as_str()));
        assert!(debug.contains("redacted"));
    }
}
