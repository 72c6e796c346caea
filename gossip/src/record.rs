//! Node records: the signed data each node publishes about itself.
//!
//! A [`NodeRecord`] is encoded to bytes (the *body*) and signed by its owner's identity key,
//! giving a [`SignedRecord`]. Only [`VerifiedRecord::verify`] turns a signed record into a
//! [`VerifiedRecord`], so code holding a `VerifiedRecord` knows the signature was checked and
//! the body was within bounds. The signature covers the exact body bytes, so there is no
//! canonical-encoding question: what was signed is what is decoded.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use weft_crypto::{IdentityKey, NodeId, Signature, WgPublicKey, SIGNATURE_LEN};

use crate::codec::{put_addr, put_bytes, put_varint, varint_len, Reader};
use crate::error::{Error, Result};

/// Longest node name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Largest opaque IPAM payload, in bytes.
pub const MAX_IPAM_LEN: usize = 512;
/// Most labels on one record.
pub const MAX_LABELS: usize = 16;
/// Most bytes of all label keys and values together.
pub const MAX_LABEL_BYTES: usize = 192;
/// Most endpoints of all three kinds together.
pub const MAX_ENDPOINTS: usize = 6;
/// Most entries in [`NodeRecord::unreachable`]. The whole body must still fit
/// [`MAX_BODY_LEN`], so a record with a long name, IPAM data and labels holds fewer (see
/// [`NodeRecord::set_unreachable`]).
pub const MAX_UNREACHABLE: usize = 64;
/// Largest encoded record body. With the signature and a datagram header this keeps a single
/// record below the 1,200-byte datagram bound.
pub const MAX_BODY_LEN: usize = 1024;

const RECORD_CONTEXT: &[u8] = b"weft-gossip-record-v1\0";
// v2: the signed leave message carries the leave reason.
const LEAVE_CONTEXT: &[u8] = b"weft-gossip-leave-v2\0";

/// Where a node can be reached for WireGuard traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Set by the operator (e.g. a public address behind a port forward).
    pub configured: Vec<SocketAddr>,
    /// The node's own interface addresses.
    pub local: Vec<SocketAddr>,
    /// Source addresses other nodes saw this node's packets come from (NAT mappings).
    pub observed: Vec<SocketAddr>,
}

impl Endpoints {
    fn len(&self) -> usize {
        self.configured.len() + self.local.len() + self.observed.len()
    }
}

/// What a node says about itself. Only its owner can change it: every copy travels signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The owner's identity public key; the record is signed by the matching private key.
    pub node_id: NodeId,
    /// Grows with every change, and doubles as the SWIM incarnation number: a node refutes a
    /// suspicion by publishing its record again with a higher version. The caller persists it
    /// across restarts (see [`crate::Membership::new`]).
    pub version: u64,
    /// Human-readable name (≤ [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// The node's WireGuard public key.
    pub wg_key: WgPublicKey,
    /// The address the node's gossip transport listens on.
    pub gossip_addr: SocketAddr,
    /// WireGuard endpoints.
    pub endpoints: Endpoints,
    /// Opaque bytes owned by the IPAM module (≤ [`MAX_IPAM_LEN`]).
    pub ipam: Vec<u8>,
    /// Free-form labels (≤ [`MAX_LABELS`] entries, ≤ [`MAX_LABEL_BYTES`] bytes).
    pub labels: BTreeMap<String, String>,
    /// Members this node is alive with in gossip but cannot complete a WireGuard handshake
    /// with directly (filled by the datapath; read by others to choose a relay both ends
    /// agree on). Sorted, no duplicates, ≤ [`MAX_UNREACHABLE`] entries.
    pub unreachable: Vec<NodeId>,
}

impl NodeRecord {
    /// A record with no endpoints, IPAM data or labels.
    pub fn new(
        node_id: NodeId,
        version: u64,
        name: impl Into<String>,
        wg_key: WgPublicKey,
        gossip_addr: SocketAddr,
    ) -> Self {
        Self {
            node_id,
            version,
            name: name.into(),
            wg_key,
            gossip_addr,
            endpoints: Endpoints::default(),
            ipam: Vec::new(),
            labels: BTreeMap::new(),
            unreachable: Vec::new(),
        }
    }

    /// Set [`NodeRecord::unreachable`] from any list of ids: sorted, duplicates and this
    /// node's own id dropped, and cut (keeping the lowest ids) to what fits both
    /// [`MAX_UNREACHABLE`] and the body bound given the rest of the record. Returns how many
    /// ids did not fit.
    pub fn set_unreachable(&mut self, ids: impl IntoIterator<Item = NodeId>) -> usize {
        let mut ids: Vec<NodeId> = ids.into_iter().filter(|id| *id != self.node_id).collect();
        ids.sort_unstable();
        ids.dedup();
        self.unreachable.clear();
        // The list is encoded last: a count (one byte, as it is ≤ 64) and 32 bytes per id.
        // Leave room for the version varint to grow to its 10-byte maximum, as
        // `Membership::update_record` raises the version after the change.
        let base = self.encode_fields().len() + 10 - varint_len(self.version);
        let room = MAX_BODY_LEN.saturating_sub(base + 1) / 32;
        let keep = ids.len().min(room).min(MAX_UNREACHABLE);
        let dropped = ids.len() - keep;
        ids.truncate(keep);
        self.unreachable = ids;
        dropped
    }

    /// Check the bounds that keep a record small enough for one datagram.
    pub fn validate(&self) -> Result<()> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(Error::InvalidRecord("name too long"));
        }
        if self.ipam.len() > MAX_IPAM_LEN {
            return Err(Error::InvalidRecord("ipam data too long"));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(Error::InvalidRecord("too many labels"));
        }
        if self
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            > MAX_LABEL_BYTES
        {
            return Err(Error::InvalidRecord("labels too long"));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::InvalidRecord("too many endpoints"));
        }
        if self.unreachable.len() > MAX_UNREACHABLE {
            return Err(Error::InvalidRecord("too many unreachable members"));
        }
        if !self.unreachable.windows(2).all(|w| w[0] < w[1]) {
            return Err(Error::InvalidRecord(
                "unreachable members not sorted or duplicated",
            ));
        }
        Ok(())
    }

    /// The body bytes that get signed. The node id and version come first so that a receiver
    /// can tell whether a record is news before decoding or verifying the rest.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let mut out = self.encode_fields();
        put_varint(&mut out, self.unreachable.len() as u64);
        for id in &self.unreachable {
            out.extend_from_slice(id.as_bytes());
        }
        if out.len() > MAX_BODY_LEN {
            return Err(Error::InvalidRecord("encoded record too long"));
        }
        Ok(out)
    }

    /// Every field but the unreachable list, which comes last.
    fn encode_fields(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.ipam.len());
        out.extend_from_slice(self.node_id.as_bytes());
        put_varint(&mut out, self.version);
        put_bytes(&mut out, self.name.as_bytes());
        out.extend_from_slice(self.wg_key.as_bytes());
        put_addr(&mut out, &self.gossip_addr);
        for list in [
            &self.endpoints.configured,
            &self.endpoints.local,
            &self.endpoints.observed,
        ] {
            put_varint(&mut out, list.len() as u64);
            for a in list {
                put_addr(&mut out, a);
            }
        }
        put_bytes(&mut out, &self.ipam);
        put_varint(&mut out, self.labels.len() as u64);
        for (k, v) in &self.labels {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
        out
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self> {
        if body.len() > MAX_BODY_LEN {
            return Err(Error::InvalidRecord("encoded record too long"));
        }
        let mut r = Reader::new(body);
        let node_id = NodeId(r.array()?);
        let version = r.varint()?;
        let name = r.string(MAX_NAME_LEN)?.to_owned();
        let wg_key = WgPublicKey(r.array()?);
        let gossip_addr = r.addr()?;
        let mut endpoints = Endpoints::default();
        for list in [
            &mut endpoints.configured,
            &mut endpoints.local,
            &mut endpoints.observed,
        ] {
            let n = r.count(MAX_ENDPOINTS)?;
            for _ in 0..n {
                list.push(r.addr()?);
            }
        }
        let ipam = r.bytes(MAX_IPAM_LEN)?.to_vec();
        let n = r.count(MAX_LABELS)?;
        let mut labels = BTreeMap::new();
        for _ in 0..n {
            let k = r.string(MAX_LABEL_BYTES)?.to_owned();
            let v = r.string(MAX_LABEL_BYTES)?.to_owned();
            if labels.insert(k, v).is_some() {
                return Err(Error::InvalidRecord("duplicate label"));
            }
        }
        let n = r.count(MAX_UNREACHABLE)?;
        let mut unreachable: Vec<NodeId> = Vec::with_capacity(n);
        for _ in 0..n {
            let id = NodeId(r.array()?);
            if unreachable.last().is_some_and(|last| *last >= id) {
                return Err(Error::InvalidRecord(
                    "unreachable members not sorted or duplicated",
                ));
            }
            unreachable.push(id);
        }
        r.finish()?;
        let record = Self {
            node_id,
            version,
            name,
            wg_key,
            gossip_addr,
            endpoints,
            ipam,
            labels,
            unreachable,
        };
        record.validate()?;
        Ok(record)
    }

    /// Encode and sign with `key`, which must be this record's owner.
    pub fn sign(&self, key: &IdentityKey) -> Result<SignedRecord> {
        if key.node_id() != self.node_id {
            return Err(Error::IdentityMismatch);
        }
        let body = self.encode()?;
        let signature = key.sign(&signed_message(RECORD_CONTEXT, &body));
        Ok(SignedRecord { body, signature })
    }
}

fn signed_message(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(context.len() + body.len());
    msg.extend_from_slice(context);
    msg.extend_from_slice(body);
    msg
}

/// A record body and its owner's signature, as it travels. Not yet checked.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRecord {
    pub(crate) body: Vec<u8>,
    pub(crate) signature: Signature,
}

impl fmt::Debug for SignedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peek() {
            Ok((id, v)) => write!(f, "SignedRecord({id:?} v{v}, {} bytes)", self.body.len()),
            Err(_) => write!(f, "SignedRecord(<malformed>, {} bytes)", self.body.len()),
        }
    }
}

impl SignedRecord {
    /// Build from raw parts (for tests and tools that craft records).
    pub fn from_parts(body: Vec<u8>, signature: Signature) -> Self {
        Self { body, signature }
    }

    /// The signed body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Node id and version, read without verifying: only to decide whether the record is news.
    pub fn peek(&self) -> Result<(NodeId, u64)> {
        let mut r = Reader::new(&self.body);
        Ok((NodeId(r.array()?), r.varint()?))
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, &self.body);
        out.extend_from_slice(&self.signature.0);
    }

    pub(crate) fn encoded_len(&self) -> usize {
        crate::codec::varint_len(self.body.len() as u64) + self.body.len() + SIGNATURE_LEN
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let body = r.bytes(MAX_BODY_LEN)?.to_vec();
        let signature = Signature(r.array()?);
        Ok(Self { body, signature })
    }
}

/// A record whose signature and bounds were checked. Only [`VerifiedRecord::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedRecord {
    record: NodeRecord,
    signed: SignedRecord,
}

impl VerifiedRecord {
    /// Check that `signed` is a well-formed record signed by the node it names.
    pub fn verify(signed: SignedRecord, cache: Option<&SignatureCache>) -> Result<Self> {
        let record = NodeRecord::decode(&signed.body)?;
        let cache_key = cache.map(|_| cache_key(&signed));
        let cached = match (cache, &cache_key) {
            (Some(c), Some(k)) => c.contains(k),
            _ => false,
        };
        if !cached {
            record
                .node_id
                .verify(
                    &signed_message(RECORD_CONTEXT, &signed.body),
                    &signed.signature,
                )
                .map_err(|_| Error::BadSignature(record.node_id))?;
            if let (Some(c), Some(k)) = (cache, cache_key) {
                c.insert(k);
            }
        }
        Ok(Self { record, signed })
    }

    /// Sign our own record: no need to check a signature we just made.
    pub(crate) fn sign(record: NodeRecord, key: &IdentityKey) -> Result<Self> {
        let signed = record.sign(key)?;
        Ok(Self { record, signed })
    }

    pub fn record(&self) -> &NodeRecord {
        &self.record
    }

    pub fn signed(&self) -> &SignedRecord {
        &self.signed
    }

    pub fn node_id(&self) -> &NodeId {
        &self.record.node_id
    }

    pub fn version(&self) -> u64 {
        self.record.version
    }
}

fn cache_key(signed: &SignedRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(signed.signature.0);
    h.update(&signed.body);
    h.finalize().into()
}

/// Remembers (body, signature) pairs that verified, so a simulator running thousands of
/// cores in one process checks each signature once instead of once per node. Keyed by a hash
/// of the body *and* the signature, so a tampered body never hits the cache. A real node has
/// no use for it (leave [`crate::Config::signature_cache`] empty).
#[derive(Clone, Default)]
pub struct SignatureCache(Arc<Mutex<HashSet<[u8; 32]>>>);

impl SignatureCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.0.lock().map(|s| s.contains(key)).unwrap_or(false)
    }

    fn insert(&self, key: [u8; 32]) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(key);
        }
    }
}

impl fmt::Debug for SignatureCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map(|s| s.len()).unwrap_or(0);
        write!(f, "SignatureCache({n} entries)")
    }
}

/// Why a node leaves. Part of the signed leave, so nobody but the node can say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeaveReason {
    /// Stopping for now (SIGTERM, restart): it comes back with a higher version. Others show
    /// it as stopped, not failed, and keep its address space.
    Stopping,
    /// Gone for good (`weft reset`): its address space may be taken over.
    Leaving,
}

impl LeaveReason {
    /// The byte that stands for the reason on the wire and in the signed message.
    pub fn to_byte(self) -> u8 {
        match self {
            LeaveReason::Stopping => 0,
            LeaveReason::Leaving => 1,
        }
    }

    /// The reason a byte stands for; unknown values are malformed input.
    pub fn from_byte(b: u8) -> Result<Self> {
        match b {
            0 => Ok(LeaveReason::Stopping),
            1 => Ok(LeaveReason::Leaving),
            _ => Err(Error::Malformed("unknown leave reason")),
        }
    }
}

/// A node's signed statement that it leaves the cluster as of record `version`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLeave {
    pub node_id: NodeId,
    pub version: u64,
    pub reason: LeaveReason,
    pub signature: Signature,
}

impl SignedLeave {
    pub fn sign(key: &IdentityKey, version: u64, reason: LeaveReason) -> Self {
        let node_id = key.node_id();
        let signature = key.sign(&Self::message(&node_id, version, reason));
        Self {
            node_id,
            version,
            reason,
            signature,
        }
    }

    fn message(node_id: &NodeId, version: u64, reason: LeaveReason) -> Vec<u8> {
        let mut body = node_id.as_bytes().to_vec();
        put_varint(&mut body, version);
        body.push(reason.to_byte());
        signed_message(LEAVE_CONTEXT, &body)
    }

    pub fn verify(&self) -> Result<()> {
        self.node_id
            .verify(
                &Self::message(&self.node_id, self.version, self.reason),
                &self.signature,
            )
            .map_err(|_| Error::BadSignature(self.node_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &IdentityKey) -> NodeRecord {
        let mut r = NodeRecord::new(
            key.node_id(),
            7,
            "a",
            WgPublicKey([9; 32]),
            "192.0.2.1:6783".parse().expect("addr"),
        );
        r.endpoints
            .observed
            .push("[2001:db8::1]:51820".parse().expect("addr"));
        r.ipam = vec![1, 2, 3];
        r.labels.insert("zone".into(), "x".into());
        r
    }

    #[test]
    fn signed_record_verifies_and_decodes_to_the_same_record() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let rec = sample(&key);
        let signed = rec.sign(&key).expect("sign");
        assert_eq!(signed.peek().expect("peek"), (key.node_id(), 7));
        let v = VerifiedRecord::verify(signed, None).expect("verifies");
        assert_eq!(v.record(), &rec);
    }

    #[test]
    fn tampered_or_foreign_records_fail_even_with_a_warm_cache() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let other = IdentityKey::from_seed(&[2; 32]);
        let cache = SignatureCache::new();
        let signed = sample(&key).sign(&key).expect("sign");
        VerifiedRecord::verify(signed.clone(), Some(&cache)).expect("good record");
        let mut tampered = signed.clone();
        let last = tampered.body.len() - 1;
        tampered.body[last] ^= 1;
        assert!(VerifiedRecord::verify(tampered, Some(&cache)).is_err());
        // Signed by another key but naming `key`'s node id.
        let body = sample(&key).encode().expect("encode");
        let forged = SignedRecord {
            signature: other.sign(&signed_message(RECORD_CONTEXT, &body)),
            body,
        };
        assert_eq!(
            VerifiedRecord::verify(forged, Some(&cache)).err(),
            Some(Error::BadSignature(key.node_id()))
        );
        assert_eq!(
            sample(&key).sign(&other).err(),
            Some(Error::IdentityMismatch)
        );
    }

    #[test]
    fn oversized_records_are_refused() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let mut r = sample(&key);
        r.ipam = vec![0; MAX_IPAM_LEN + 1];
        assert!(r.sign(&key).is_err());
        let mut r = sample(&key);
        r.version = u64::MAX;
        r.gossip_addr = "[2001:db8::2]:6783".parse().expect("addr");
        r.ipam = vec![0; MAX_IPAM_LEN];
        r.name = "n".repeat(MAX_NAME_LEN);
        r.labels.clear();
        for i in 0..MAX_LABELS {
            r.labels.insert(
                format!("label{i:02}"),
                "v".repeat(MAX_LABEL_BYTES / MAX_LABELS - 7),
            );
        }
        r.endpoints.observed.clear();
        r.endpoints.local = vec!["[2001:db8::1]:51820".parse().expect("addr"); MAX_ENDPOINTS];
        assert!(r.sign(&key).is_ok(), "a maximal record fits");
    }

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn unreachable_list_round_trips_in_the_signed_record() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let mut rec = sample(&key);
        assert!(rec.unreachable.is_empty(), "empty by default");
        rec.unreachable = vec![id(3), id(5), id(9)];
        let signed = rec.sign(&key).expect("sign");
        let v = VerifiedRecord::verify(signed.clone(), None).expect("verifies");
        assert_eq!(v.record().unreachable, vec![id(3), id(5), id(9)]);
        // The list is covered by the signature.
        let mut tampered = signed;
        let last = tampered.body.len() - 1;
        tampered.body[last] ^= 1;
        assert_eq!(
            VerifiedRecord::verify(tampered, None).err(),
            Some(Error::BadSignature(key.node_id()))
        );
    }

    #[test]
    fn unsorted_duplicate_or_too_many_unreachable_are_refused() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let mut small = NodeRecord::new(
            key.node_id(),
            1,
            "",
            WgPublicKey([9; 32]),
            "192.0.2.1:6783".parse().expect("addr"),
        );
        for bad in [vec![id(5), id(3)], vec![id(3), id(3)]] {
            small.unreachable = bad;
            assert!(matches!(small.sign(&key), Err(Error::InvalidRecord(_))));
        }
        small.unreachable = (0..=MAX_UNREACHABLE as u8).map(id).collect();
        assert_eq!(
            small.validate(),
            Err(Error::InvalidRecord("too many unreachable members"))
        );

        // Decoding checks the same bounds on bytes nobody's encoder made: build a valid
        // body, then rewrite its tail (count, ids).
        small.unreachable = vec![id(3)];
        let good = small.encode().expect("encode");
        let head = &good[..good.len() - 33];
        let body = |count: u8, ids: &[u8]| {
            let mut b = head.to_vec();
            b.push(count);
            for &i in ids {
                b.extend_from_slice(&[i; 32]);
            }
            b
        };
        assert_eq!(NodeRecord::decode(&body(1, &[3])), Ok(small.clone()));
        assert!(matches!(
            NodeRecord::decode(&body(2, &[5, 3])),
            Err(Error::InvalidRecord(_))
        ));
        assert!(matches!(
            NodeRecord::decode(&body(2, &[3, 3])),
            Err(Error::InvalidRecord(_))
        ));
        assert_eq!(
            NodeRecord::decode(&body(MAX_UNREACHABLE as u8 + 1, &[])),
            Err(Error::Malformed("too many items"))
        );
        assert_eq!(NodeRecord::decode(&body(2, &[3])), Err(Error::Truncated));
    }

    #[test]
    fn set_unreachable_sorts_dedups_and_fits_the_body_bound() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let mut small = NodeRecord::new(
            key.node_id(),
            1,
            "",
            WgPublicKey([9; 32]),
            "192.0.2.1:6783".parse().expect("addr"),
        );
        let dropped = small.set_unreachable([id(9), id(2), id(9), key.node_id(), id(4)]);
        assert_eq!(dropped, 0);
        assert_eq!(small.unreachable, vec![id(2), id(4), id(9)]);
        small.sign(&key).expect("fits");

        // A small record holds as many as the body bound allows, lowest ids first.
        let many: Vec<NodeId> = (0..=200u8).rev().map(id).collect();
        let dropped = small.set_unreachable(many.clone());
        let kept = small.unreachable.len();
        assert!(kept > 16 && kept <= MAX_UNREACHABLE, "kept {kept}");
        assert_eq!(dropped, many.len() - kept);
        assert_eq!(
            small.unreachable,
            (0..kept as u8).map(id).collect::<Vec<_>>()
        );
        // Still fits after the version grows to its widest encoding.
        small.version = u64::MAX;
        small.sign(&key).expect("fits with the widest version");

        // A full record leaves less room, but what is kept always signs.
        let mut full = sample(&key);
        full.ipam = vec![0; MAX_IPAM_LEN];
        full.name = "n".repeat(MAX_NAME_LEN);
        let dropped = full.set_unreachable(many.clone());
        assert!(full.unreachable.len() < kept, "less room in a full record");
        assert_eq!(dropped, many.len() - full.unreachable.len());
        full.sign(&key).expect("fits");
    }

    #[test]
    fn leave_is_bound_to_node_version_and_reason() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let leave = SignedLeave::sign(&key, 5, LeaveReason::Stopping);
        leave.verify().expect("valid leave");
        let mut replayed = leave.clone();
        replayed.version = 6;
        assert!(replayed.verify().is_err());
        // A "stopping" leave cannot be turned into "gone for good", nor the other way.
        let mut relabelled = leave.clone();
        relabelled.reason = LeaveReason::Leaving;
        assert_eq!(relabelled.verify(), Err(Error::BadSignature(key.node_id())));
        let gone = SignedLeave::sign(&key, 5, LeaveReason::Leaving);
        gone.verify().expect("valid leave");
        let mut downgraded = gone;
        downgraded.reason = LeaveReason::Stopping;
        assert!(downgraded.verify().is_err());
    }

    #[test]
    fn leave_reason_bytes_round_trip_and_unknown_ones_are_refused() {
        for r in [LeaveReason::Stopping, LeaveReason::Leaving] {
            assert_eq!(LeaveReason::from_byte(r.to_byte()), Ok(r));
        }
        for b in 2..=u8::MAX {
            assert!(LeaveReason::from_byte(b).is_err(), "byte {b}");
        }
    }
}
