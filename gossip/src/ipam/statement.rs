//! The signed statements that move address space: the genesis of a range, a transfer from an
//! owner to another node, and the reclaim of a forgotten node's space. Each is signed by the
//! node that makes it over a domain-separated encoding that includes the genesis id, so a
//! statement can be relayed by anyone and never replayed into another cluster.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::RngCore;
use weft_crypto::{IdentityKey, NodeId, Signature, SIGNATURE_LEN};

use super::error::{Error, Result};
use super::wire::{Reader, Writer};

/// A piece of the range: offsets `[start, end)` from the range's base address, and the
/// version of its ownership. Versions only grow; only the owner of a piece moves it to a new
/// version (by giving it away, or by merging it with its own neighbours).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Piece {
    pub start: u32,
    pub end: u32,
    pub version: u32,
}

impl Piece {
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// The id of one address space: random, made once by the genesis creator.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenesisId(pub [u8; 16]);

impl fmt::Display for GenesisId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::wire::hex(&self.0[..6]))
    }
}

impl fmt::Debug for GenesisId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GenesisId({self})")
    }
}

impl serde::Serialize for GenesisId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&super::wire::hex(&self.0))
    }
}

/// The one statement that starts an address space: "range R belongs to me, creator C",
/// under a fresh random id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Genesis {
    pub id: GenesisId,
    pub creator: NodeId,
    pub range: Ipv4Net,
    pub signature: Signature,
}

const GENESIS_TAG: &[u8] = b"weft-ipam-genesis-v1";
const TRANSFER_TAG: &[u8] = b"weft-ipam-transfer-v1";
const RECLAIM_TAG: &[u8] = b"weft-ipam-reclaim-v1";

/// The smallest and largest cluster ranges: at least 4 addresses, at most a /8, so that
/// offsets fit in u32 with room to spare.
pub const MIN_PREFIX: u8 = 8;
pub const MAX_PREFIX: u8 = 30;

pub(crate) fn check_range(range: Ipv4Net) -> Result<()> {
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&range.prefix_len()) {
        return Err(Error::BadRange {
            range,
            reason: "prefix length must be between /8 and /30",
        });
    }
    if range.network() != range.addr() {
        return Err(Error::BadRange {
            range,
            reason: "host bits are set (use the network address)",
        });
    }
    Ok(())
}

/// Number of addresses in a (checked) range.
pub(crate) fn range_size(range: Ipv4Net) -> u32 {
    1u32 << (32 - u32::from(range.prefix_len()))
}

pub(crate) fn address_at(range: Ipv4Net, offset: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range.network()).wrapping_add(offset))
}

impl Genesis {
    pub fn create(identity: &IdentityKey, range: Ipv4Net, rng: &mut impl RngCore) -> Result<Self> {
        check_range(range)?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let id = GenesisId(id);
        let creator = identity.node_id();
        let signature = identity.sign(&Self::signed_bytes(id, &creator, range));
        Ok(Self {
            id,
            creator,
            range,
            signature,
        })
    }

    fn signed_bytes(id: GenesisId, creator: &NodeId, range: Ipv4Net) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(GENESIS_TAG);
        w.bytes(&id.0);
        w.bytes(creator.as_bytes());
        w.bytes(&range.network().octets());
        w.u8(range.prefix_len());
        w.buf
    }

    pub fn verify(&self) -> Result<()> {
        check_range(self.range)?;
        self.creator
            .verify(
                &Self::signed_bytes(self.id, &self.creator, self.range),
                &self.signature,
            )
            .map_err(|_| Error::BadSignature {
                what: "genesis",
                node: self.creator,
            })
    }

    pub fn size(&self) -> u32 {
        range_size(self.range)
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(&self.id.0);
        w.bytes(self.creator.as_bytes());
        w.bytes(&self.range.network().octets());
        w.u8(self.range.prefix_len());
        w.bytes(&self.signature.0);
    }

    /// The wire encoding (as carried in records and persisted).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.buf
    }

    /// Decodes exactly one genesis from `bytes`, without verifying its signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let genesis = Self::decode(&mut r)?;
        r.finish()?;
        Ok(genesis)
    }

    /// Decodes without verifying the signature (callers verify once, when they adopt it).
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let id = GenesisId(r.array()?);
        let creator = NodeId(r.array()?);
        let addr = Ipv4Addr::from(r.array::<4>()?);
        let prefix = r.u8()?;
        let range = Ipv4Net::new(addr, prefix).map_err(|_| Error::Decode("bad prefix length"))?;
        check_range(range).map_err(|_| Error::Decode("bad cluster range"))?;
        let signature = Signature(r.array::<SIGNATURE_LEN>()?);
        Ok(Self {
            id,
            creator,
            range,
            signature,
        })
    }
}

/// Pieces are encoded sorted, as (gap from the previous end, length, version) varints.
pub(crate) fn encode_pieces(w: &mut Writer, pieces: &[Piece]) {
    w.varint(pieces.len() as u64);
    let mut prev_end = 0;
    for p in pieces {
        w.varint(u64::from(p.start - prev_end));
        w.varint(u64::from(p.len()));
        w.varint(u64::from(p.version));
        prev_end = p.end;
    }
}

/// Decodes pieces and checks they are sorted, disjoint, non-empty and inside `size`.
pub(crate) fn decode_pieces(r: &mut Reader<'_>, size: u32) -> Result<Vec<Piece>> {
    let n = r.count(3)?;
    let mut out = Vec::with_capacity(n);
    let mut prev_end: u32 = 0;
    for _ in 0..n {
        let gap = r.varint_u32()?;
        let len = r.varint_u32()?;
        let version = r.varint_u32()?;
        let start = prev_end
            .checked_add(gap)
            .ok_or(Error::Decode("piece out of range"))?;
        let end = start
            .checked_add(len)
            .ok_or(Error::Decode("piece out of range"))?;
        if len == 0 || end > size {
            return Err(Error::Decode("piece empty or outside the range"));
        }
        out.push(Piece {
            start,
            end,
            version,
        });
        prev_end = end;
    }
    Ok(out)
}

/// "I, `from`, give these pieces (at these new versions) to `to`." The `seq` counts the
/// giver's transfers to that receiver, so the receiver applies each one exactly once.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transfer {
    pub from: NodeId,
    pub to: NodeId,
    pub seq: u64,
    pub pieces: Vec<Piece>,
    pub signature: Signature,
}

impl Transfer {
    pub(crate) fn sign(
        identity: &IdentityKey,
        genesis: GenesisId,
        to: NodeId,
        seq: u64,
        pieces: Vec<Piece>,
    ) -> Self {
        let from = identity.node_id();
        let signature = identity.sign(&Self::signed_bytes(genesis, &from, &to, seq, &pieces));
        Self {
            from,
            to,
            seq,
            pieces,
            signature,
        }
    }

    fn signed_bytes(
        genesis: GenesisId,
        from: &NodeId,
        to: &NodeId,
        seq: u64,
        pieces: &[Piece],
    ) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(TRANSFER_TAG);
        w.bytes(&genesis.0);
        w.bytes(from.as_bytes());
        w.bytes(to.as_bytes());
        w.varint(seq);
        encode_pieces(&mut w, pieces);
        w.buf
    }

    pub fn verify(&self, genesis: GenesisId) -> Result<()> {
        self.from
            .verify(
                &Self::signed_bytes(genesis, &self.from, &self.to, self.seq, &self.pieces),
                &self.signature,
            )
            .map_err(|_| Error::BadSignature {
                what: "transfer",
                node: self.from,
            })
    }

    pub fn addresses(&self) -> u64 {
        self.pieces.iter().map(|p| u64::from(p.len())).sum()
    }

    /// Encoded without `from`, which the context (record owner or message sender) supplies.
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(self.to.as_bytes());
        w.varint(self.seq);
        encode_pieces(w, &self.pieces);
        w.bytes(&self.signature.0);
    }

    /// The wire encoding, without `from`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.buf
    }

    /// Decodes exactly one transfer made by `from` in a range of `size` addresses, without
    /// verifying its signature.
    pub fn from_bytes(bytes: &[u8], from: NodeId, size: u32) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let transfer = Self::decode(&mut r, from, size)?;
        r.finish()?;
        Ok(transfer)
    }

    pub(crate) fn decode(r: &mut Reader<'_>, from: NodeId, size: u32) -> Result<Self> {
        let to = NodeId(r.array()?);
        let seq = r.varint()?;
        let pieces = decode_pieces(r, size)?;
        let signature = Signature(r.array::<SIGNATURE_LEN>()?);
        Ok(Self {
            from,
            to,
            seq,
            pieces,
            signature,
        })
    }
}

/// "I, `by`, take back the space of `forgotten`, a node gone for good": the pieces it owned
/// (as far as `by` knew, up to its record `base_seq`) at new versions, now owned by `by`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reclaim {
    pub by: NodeId,
    pub forgotten: NodeId,
    pub base_seq: u64,
    pub pieces: Vec<Piece>,
    /// Per giver, the highest sequence number of its transfers to the forgotten node that
    /// the maker's view held when it decided what to reclaim, `(giver, seq)` sorted by giver.
    /// Those transfers, and the giver's earlier ones to that node (no longer in the giver's
    /// record: applied and acknowledged), are reclaimed or had moved on: the giver must not
    /// take any of it back (its own view may be stale). At most [`Reclaim::MAX_ACCOUNTED`]
    /// givers, so that a reclaim fits in a record.
    pub accounted: Vec<(NodeId, u64)>,
    /// False when the maker's view held transfers of more givers than the list has room
    /// for: then no giver takes anything back (safe, but that space stays unowned).
    pub accounted_complete: bool,
    pub signature: Signature,
}

impl Reclaim {
    pub const MAX_ACCOUNTED: usize = 3;

    pub(crate) fn sign(
        identity: &IdentityKey,
        genesis: GenesisId,
        forgotten: NodeId,
        base_seq: u64,
        pieces: Vec<Piece>,
        transfers: impl IntoIterator<Item = (NodeId, u64)>,
    ) -> Self {
        let (accounted, accounted_complete) = Self::accounted_of(transfers);
        let by = identity.node_id();
        let signature = identity.sign(&Self::signed_bytes(
            genesis,
            &by,
            &forgotten,
            base_seq,
            &pieces,
            &accounted,
            accounted_complete,
        ));
        Self {
            by,
            forgotten,
            base_seq,
            pieces,
            accounted,
            accounted_complete,
            signature,
        }
    }

    /// The `accounted` list of a set of transfers `(giver, seq)`: the highest seq per giver,
    /// sorted, at most [`Self::MAX_ACCOUNTED`] of them, and whether that is all of them.
    fn accounted_of(
        transfers: impl IntoIterator<Item = (NodeId, u64)>,
    ) -> (Vec<(NodeId, u64)>, bool) {
        let mut max: std::collections::BTreeMap<NodeId, u64> = Default::default();
        for (giver, seq) in transfers {
            let m = max.entry(giver).or_insert(seq);
            *m = (*m).max(seq);
        }
        let complete = max.len() <= Self::MAX_ACCOUNTED;
        (
            max.into_iter().take(Self::MAX_ACCOUNTED).collect(),
            complete,
        )
    }

    /// Whether `giver` may take back its transfer `seq` to the forgotten node where the
    /// reclaim missed it: only if the maker did not account for it, and accounted for all
    /// it knew of.
    pub fn leaves_to_giver(&self, giver: &NodeId, seq: u64) -> bool {
        self.accounted_complete
            && !self
                .accounted
                .iter()
                .any(|(g, max)| g == giver && seq <= *max)
    }

    fn signed_bytes(
        genesis: GenesisId,
        by: &NodeId,
        forgotten: &NodeId,
        base_seq: u64,
        pieces: &[Piece],
        accounted: &[(NodeId, u64)],
        complete: bool,
    ) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(RECLAIM_TAG);
        w.bytes(&genesis.0);
        w.bytes(by.as_bytes());
        w.bytes(forgotten.as_bytes());
        w.varint(base_seq);
        encode_pieces(&mut w, pieces);
        encode_accounted(&mut w, accounted, complete);
        w.buf
    }

    pub fn verify(&self, genesis: GenesisId) -> Result<()> {
        self.by
            .verify(
                &Self::signed_bytes(
                    genesis,
                    &self.by,
                    &self.forgotten,
                    self.base_seq,
                    &self.pieces,
                    &self.accounted,
                    self.accounted_complete,
                ),
                &self.signature,
            )
            .map_err(|_| Error::BadSignature {
                what: "reclaim",
                node: self.by,
            })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(self.by.as_bytes());
        w.bytes(self.forgotten.as_bytes());
        w.varint(self.base_seq);
        encode_pieces(w, &self.pieces);
        encode_accounted(w, &self.accounted, self.accounted_complete);
        w.bytes(&self.signature.0);
    }

    /// The wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.buf
    }

    /// Decodes exactly one reclaim in a range of `size` addresses, without verifying its
    /// signature.
    pub fn from_bytes(bytes: &[u8], size: u32) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let reclaim = Self::decode(&mut r, size)?;
        r.finish()?;
        Ok(reclaim)
    }

    pub(crate) fn decode(r: &mut Reader<'_>, size: u32) -> Result<Self> {
        let by = NodeId(r.array()?);
        let forgotten = NodeId(r.array()?);
        let base_seq = r.varint()?;
        let pieces = decode_pieces(r, size)?;
        let accounted_complete = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(Error::Decode("bad accounted flag in a reclaim")),
        };
        let n = r.count(33)?;
        if n > Self::MAX_ACCOUNTED {
            return Err(Error::Decode("too many accounted transfers in a reclaim"));
        }
        let mut accounted = Vec::with_capacity(n);
        for _ in 0..n {
            let giver = NodeId(r.array()?);
            let seq = r.varint()?;
            if accounted.last().is_some_and(|(last, _)| *last >= giver) {
                return Err(Error::Decode("accounted givers not sorted or repeated"));
            }
            accounted.push((giver, seq));
        }
        let signature = Signature(r.array::<SIGNATURE_LEN>()?);
        Ok(Self {
            by,
            forgotten,
            base_seq,
            pieces,
            accounted,
            accounted_complete,
            signature,
        })
    }
}

fn encode_accounted(w: &mut Writer, accounted: &[(NodeId, u64)], complete: bool) {
    w.u8(u8::from(complete));
    w.varint(accounted.len() as u64);
    for (giver, seq) in accounted {
        w.bytes(giver.as_bytes());
        w.varint(*seq);
    }
}
