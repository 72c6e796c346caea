//! Cluster admission proofs, bound to one QUIC connection.
//!
//! After the QUIC handshake each side sends a [`Proof`]: its [`NodeId`], an HMAC-SHA256 keyed
//! by a key derived from the [`ClusterSecret`], and an ed25519 signature by its identity key.
//! Both cover this connection's TLS keying-material export (see [`EXPORTER_LABEL`]) and the
//! sender's [`Role`], so a proof is worthless on any other connection (the export differs) and
//! cannot be reflected back at its sender (the role differs). The HMAC shows knowledge of the
//! secret; the signature shows that the sender holds the private key of the id it claims.
//!
//! Everything here is pure: the transport does the IO.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{ClusterSecret, IdentityKey, NodeId, Signature, KEY_LEN, SIGNATURE_LEN};

/// The TLS exporter label (RFC 5705 / RFC 8446 section 7.5) whose output the proofs cover.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-weft-admission";
/// Bytes taken from the exporter.
pub const EXPORT_LEN: usize = 32;
/// The HKDF label of the admission HMAC key (see [`ClusterSecret::derive`]).
pub const KEY_LABEL: &[u8] = b"weft admission v1";
/// The version byte that starts every encoded proof.
pub const PROOF_VERSION: u8 = 1;
/// Length of an encoded proof: version, node id, HMAC, signature.
pub const PROOF_LEN: usize = 1 + KEY_LEN + MAC_LEN + SIGNATURE_LEN;

const MAC_LEN: usize = 32;
/// Prefix of the signed message: the identity key also signs gossip records, so the
/// admission signature gets its own domain.
const SIGNATURE_CONTEXT: &[u8] = b"weft admission signature v1\0";

/// The TLS keying-material export of one connection; both ends compute the same value.
pub type Export = [u8; EXPORT_LEN];

/// Why a proof was refused. Never says anything about the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    #[error("admission proof has {len} bytes, expected {PROOF_LEN}")]
    BadLength { len: usize },
    #[error("admission proof version {0} is not supported")]
    BadVersion(u8),
    #[error("admission proof does not show the cluster secret")]
    BadMac,
    #[error("admission proof signature does not verify for the claimed node id")]
    BadSignature,
}

/// Which end of the connection made a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that opened the connection; it proves first.
    Client,
    /// The end that accepted it; it proves only after the client's proof verified.
    Server,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Client => 0x43, // 'C'
            Role::Server => 0x53, // 'S'
        }
    }

    /// The role of the other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// The HMAC key for admission, derived once from the cluster secret.
pub struct AdmissionKey(Zeroizing<[u8; 32]>);

impl AdmissionKey {
    pub fn new(secret: &ClusterSecret) -> Self {
        Self(secret.derive(KEY_LABEL))
    }

    fn mac(&self, export: &Export, role: Role, node: &NodeId) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..])
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(export);
        mac.update(&[role.byte()]);
        mac.update(node.as_bytes());
        mac
    }
}

impl fmt::Debug for AdmissionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmissionKey(<redacted>)")
    }
}

/// One side's admission proof for one connection.
// No PartialEq: comparing MACs must go through `verify`, which is constant time.
#[derive(Clone)]
pub struct Proof {
    node: NodeId,
    mac: [u8; MAC_LEN],
    signature: Signature,
}

impl Proof {
    /// Make the proof that `identity`, in `role`, sends on the connection whose export is
    /// `export`.
    pub fn create(key: &AdmissionKey, identity: &IdentityKey, export: &Export, role: Role) -> Self {
        let node = identity.node_id();
        let mac = key.mac(export, role, &node).finalize().into_bytes().into();
        let signature = identity.sign(&signed_message(export, role, &node));
        Self {
            node,
            mac,
            signature,
        }
    }

    /// The node id this proof claims (not yet verified).
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Check a proof received from the peer in `role` on the connection whose export is
    /// `export`. Returns the peer's node id, now proven to hold both the cluster secret and
    /// the private key of that id.
    pub fn verify(
        &self,
        key: &AdmissionKey,
        export: &Export,
        role: Role,
    ) -> Result<NodeId, AdmissionError> {
        // `verify_slice` compares in constant time.
        key.mac(export, role, &self.node)
            .verify_slice(&self.mac)
            .map_err(|_| AdmissionError::BadMac)?;
        self.node
            .verify(&signed_message(export, role, &self.node), &self.signature)
            .map_err(|_| AdmissionError::BadSignature)?;
        Ok(self.node)
    }

    pub fn to_bytes(&self) -> [u8; PROOF_LEN] {
        let mut out = [0u8; PROOF_LEN];
        out[0] = PROOF_VERSION;
        let (node, rest) = out[1..].split_at_mut(KEY_LEN);
        node.copy_from_slice(self.node.as_bytes());
        let (mac, sig) = rest.split_at_mut(MAC_LEN);
        mac.copy_from_slice(&self.mac);
        sig.copy_from_slice(&self.signature.0);
        out
    }

    /// Parse an encoded proof. This checks only the shape; call [`Proof::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        if bytes.len() != PROOF_LEN {
            return Err(AdmissionError::BadLength { len: bytes.len() });
        }
        if bytes[0] != PROOF_VERSION {
            return Err(AdmissionError::BadVersion(bytes[0]));
        }
        let mut node = [0u8; KEY_LEN];
        let mut mac = [0u8; MAC_LEN];
        let mut signature = [0u8; SIGNATURE_LEN];
        node.copy_from_slice(&bytes[1..1 + KEY_LEN]);
        mac.copy_from_slice(&bytes[1 + KEY_LEN..1 + KEY_LEN + MAC_LEN]);
        signature.copy_from_slice(&bytes[1 + KEY_LEN + MAC_LEN..]);
        Ok(Self {
            node: NodeId(node),
            mac,
            signature: Signature(signature),
        })
    }
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The key of a node's QUIC stateless-reset tokens, derived from its identity key so that it
/// is the same after a restart: a restarted node can then reset the connections its previous
/// instance had, and peers notice at once instead of after an idle timeout.
pub struct ResetKey(Zeroizing<[u8; 32]>);

impl ResetKey {
    pub fn new(identity: &IdentityKey) -> Self {
        // Ed25519 signatures are deterministic, so this is a fixed value that only the holder
        // of the identity key can compute. The signature itself is never sent anywhere.
        let signature = identity.sign(b"weft quic stateless reset key v1");
        let mut hash = Sha256::new();
        hash.update(b"weft reset key v1\0");
        hash.update(signature.0);
        Self(Zeroizing::new(hash.finalize().into()))
    }

    /// HMAC-SHA256 of `data`.
    pub fn sign(&self, data: &[u8]) -> [u8; 32] {
        self.hmac(data).finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC of `data`, compared in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.hmac(data).verify_slice(tag).is_ok()
    }

    fn hmac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..])
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(data);
        mac
    }
}

impl fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResetKey(<redacted>)")
    }
}

fn signed_message(export: &Export, role: Role, node: &NodeId) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_CONTEXT.len() + EXPORT_LEN + 1 + KEY_LEN);
    msg.extend_from_slice(SIGNATURE_CONTEXT);
    msg.extend_from_slice(export);
    msg.push(role.byte());
    msg.extend_from_slice(node.as_bytes());
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT_A: Export = [7u8; EXPORT_LEN];
    const EXPORT_B: Export = [8u8; EXPORT_LEN];

    fn setup() -> (ClusterSecret, IdentityKey) {
        (ClusterSecret::generate(), IdentityKey::generate())
    }

    #[test]
    fn right_secret_passes_and_names_the_node() {
        let (secret, id) = setup();
        let key = AdmissionKey::new(&secret);
        let proof = Proof::create(&key, &id, &EXPORT_A, Role::Client);
        let wire = Proof::from_bytes(&proof.to_bytes()).expect("round trip");
        assert_eq!(wire.to_bytes(), proof.to_bytes());
        // The verifier derives its own key from its own copy of the secret.
        let verifier = AdmissionKey::new(&secret);
        assert_eq!(
            wire.verify(&verifier, &EXPORT_A, Role::Client),
            Ok(id.node_id())
        );
    }

    #[test]
    fn wrong_secret_fails() {
        let (secret, id) = setup();
        let proof = Proof::create(&AdmissionKey::new(&secret), &id, &EXPORT_A, Role::Client);
        let other = AdmissionKey::new(&ClusterSecret::generate());
        assert_eq!(
            proof.verify(&other, &EXPORT_A, Role::Client),
            Err(AdmissionError::BadMac)
        );
    }

    #[test]
    fn proof_from_another_connection_fails() {
        let (secret, id) = setup();
        let key = AdmissionKey::new(&secret);
        let proof = Proof::create(&key, &id, &EXPORT_A, Role::Client);
        assert_eq!(
            proof.verify(&key, &EXPORT_B, Role::Client),
            Err(AdmissionError::BadMac)
        );
    }

    #[test]
    fn reflected_proof_fails() {
        let (secret, id) = setup();
        let key = AdmissionKey::new(&secret);
        let client_proof = Proof::create(&key, &id, &EXPORT_A, Role::Client);
        // A server that sends the client's own proof back must not pass as a server.
        assert_eq!(
            client_proof.verify(&key, &EXPORT_A, Role::Server),
            Err(AdmissionError::BadMac)
        );
        let server_proof = Proof::create(&key, &id, &EXPORT_A, Role::Server);
        assert_eq!(
            server_proof.verify(&key, &EXPORT_A, Role::Client),
            Err(AdmissionError::BadMac)
        );
    }

    #[test]
    fn signature_by_a_different_key_fails() {
        // A member (it has the secret) that claims another node's id: the HMAC is right for
        // the claimed id, but it cannot sign for it.
        let (secret, victim) = setup();
        let forger = IdentityKey::generate();
        let key = AdmissionKey::new(&secret);
        let honest = Proof::create(&key, &victim, &EXPORT_A, Role::Client);
        let forged_sig = Proof::create(&key, &forger, &EXPORT_A, Role::Client).signature;
        let forged = Proof {
            node: victim.node_id(),
            mac: key
                .mac(&EXPORT_A, Role::Client, &victim.node_id())
                .finalize()
                .into_bytes()
                .into(),
            signature: forged_sig,
        };
        assert_eq!(forged.mac, honest.mac);
        assert_eq!(
            forged.verify(&key, &EXPORT_A, Role::Client),
            Err(AdmissionError::BadSignature)
        );
    }

    #[test]
    fn tampered_bytes_fail() {
        let (secret, id) = setup();
        let key = AdmissionKey::new(&secret);
        let bytes = Proof::create(&key, &id, &EXPORT_A, Role::Client).to_bytes();
        for i in 0..PROOF_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x01;
            let result =
                Proof::from_bytes(&bad).and_then(|p| p.verify(&key, &EXPORT_A, Role::Client));
            assert!(result.is_err(), "flipping byte {i} must not verify");
        }
        assert!(matches!(
            Proof::from_bytes(&bytes[..PROOF_LEN - 1]),
            Err(AdmissionError::BadLength { len }) if len == PROOF_LEN - 1
        ));
        assert!(matches!(
            Proof::from_bytes(&[]),
            Err(AdmissionError::BadLength { len: 0 })
        ));
    }

    #[test]
    fn reset_key_is_stable_per_identity() {
        let id = IdentityKey::generate();
        // The same key loaded again, as after a restart.
        let again = IdentityKey::from_base64(&id.to_base64_secret()).expect("round trip");
        let tag = ResetKey::new(&id).sign(b"cid");
        assert_eq!(
            ResetKey::new(&again).sign(b"cid"),
            tag,
            "same after a restart"
        );
        assert!(ResetKey::new(&again).verify(b"cid", &tag));
        assert!(!ResetKey::new(&again).verify(b"cie", &tag));
        assert_ne!(ResetKey::new(&IdentityKey::generate()).sign(b"cid"), tag);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (secret, id) = setup();
        let key = AdmissionKey::new(&secret);
        assert_eq!(format!("{key:?}"), "AdmissionKey(<redacted>)");
        let proof = Proof::create(&key, &id, &EXPORT_A, Role::Client);
        assert!(!format!("{proof:?}").contains("mac"));
    }
}
