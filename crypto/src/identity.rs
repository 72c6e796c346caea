//! The node identity: an ed25519 key pair. The public half is the node's id in the cluster.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::Signer;
use rand_core::OsRng;

use crate::{decode_key, encode_key, Error, Result, KEY_LEN};

pub const SIGNATURE_LEN: usize = 64;

/// The node's identity signing key. Zeroized on drop (ed25519-dalek's `zeroize` feature).
pub struct IdentityKey(ed25519_dalek::SigningKey);

impl IdentityKey {
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    /// From a 32-byte seed: for deterministic tests and simulations.
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    pub fn from_base64(text: &str) -> Result<Self> {
        let seed = decode_key(text, "identity key")?;
        Ok(Self::from_seed(&seed))
    }

    /// The base64 text form of the seed. Named so that printing it is never an accident.
    pub fn to_base64_secret(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(encode_key(&self.0.to_bytes()))
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey(node {}, <redacted>)", self.node_id())
    }
}

/// A node's id: its ed25519 public key. Displayed in base64 like WireGuard keys.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub [u8; KEY_LEN]);

impl NodeId {
    pub fn from_base64(text: &str) -> Result<Self> {
        Ok(Self(*decode_key(text, "node id")?))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Check that `signature` over `message` was made by this node's identity key.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| Error::BadNodeId("not a point on the curve"))?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig)
            .map_err(|_| Error::BadSignature)
    }

    /// A short form for logs and tables: the first 8 base64 characters.
    pub fn short(&self) -> String {
        let mut s = encode_key(&self.0);
        s.truncate(8);
        s
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_base64(s)
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = IdentityKey::generate();
        let sig = key.sign(b"record v1");
        key.node_id().verify(b"record v1", &sig).expect("verifies");
        assert!(matches!(
            key.node_id().verify(b"record v2", &sig),
            Err(Error::BadSignature)
        ));
        let other = IdentityKey::generate();
        assert!(other.node_id().verify(b"record v1", &sig).is_err());
    }

    #[test]
    fn seed_round_trips_and_debug_is_redacted() {
        let key = IdentityKey::generate();
        let text = key.to_base64_secret();
        let back = IdentityKey::from_base64(&text).expect("round trip");
        assert_eq!(back.node_id(), key.node_id());
        assert!(!format!("{key:?}").contains(text.as_str()));
    }
}
