//! What a node publishes in the `ipam` field of its signed gossip record, and the direct
//! messages between IPAM cores. Both are compact binary (see `wire`); the record stays under
//! [`MAX_RECORD_BYTES`] by dropping the oldest relayed statements first, never a claim.

use weft_crypto::NodeId;

use super::error::{Error, Result};
use super::statement::{
    decode_pieces, encode_pieces, Genesis, GenesisId, Piece, Reclaim, Transfer,
};
use super::wire::{Reader, Writer};

/// The bound the gossip core gives the record field.
pub const MAX_RECORD_BYTES: usize = 512;

/// 2: reclaims carry the transfers they accounted for.
const RECORD_FORMAT: u8 = 2;
const MESSAGE_FORMAT: u8 = 2;

/// Where a node stands in its address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    /// Handed its space back and left for good.
    Left,
    /// Was forgotten by an operator; its space belongs to others now.
    Forgotten,
}

/// One claimed piece with how many of its addresses are in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub piece: Piece,
    pub used: u32,
}

/// A node's published IPAM state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub genesis: Genesis,
    /// Grows with every change; after a restart it jumps to a new epoch (high 32 bits).
    pub seq: u64,
    pub status: Status,
    pub claims: Vec<Claim>,
    /// Transfers this node made that the receiver has not acknowledged yet. The receiver
    /// owns those pieces already; relaying them here means a lost message loses nothing.
    pub outgoing: Vec<Transfer>,
    /// Reclaims of forgotten nodes, as long as they fit: the ones this node made first, then
    /// ones it learned (each signed by its maker, so anyone may relay it), newest first.
    pub reclaims: Vec<Reclaim>,
}

impl Record {
    /// Encodes within [`MAX_RECORD_BYTES`] when possible: claims always, then as many
    /// outgoing transfers and reclaims as fit. Returns the bytes and whether any statement
    /// had to be left out (it is still retransmitted directly).
    pub fn encode(&self) -> (Vec<u8>, bool) {
        let mut w = Writer::default();
        w.u8(RECORD_FORMAT);
        self.genesis.encode(&mut w);
        w.varint(self.seq);
        w.u8(match self.status {
            Status::Active => 0,
            Status::Left => 1,
            Status::Forgotten => 2,
        });
        let pieces: Vec<Piece> = self.claims.iter().map(|c| c.piece).collect();
        encode_pieces(&mut w, &pieces);
        for c in &self.claims {
            w.varint(u64::from(c.used));
        }
        let mut truncated = false;
        let mut fit = |items: Vec<Vec<u8>>, w: &mut Writer, reserve: usize| {
            let mut chosen = Vec::new();
            let mut len = w.buf.len() + reserve + 2;
            for item in items {
                if len + item.len() <= MAX_RECORD_BYTES {
                    len += item.len();
                    chosen.push(item);
                } else {
                    truncated = true;
                }
            }
            w.varint(chosen.len() as u64);
            for item in chosen {
                w.bytes(&item);
            }
        };
        let outgoing: Vec<Vec<u8>> = self
            .outgoing
            .iter()
            .map(|t| {
                let mut tw = Writer::default();
                t.encode(&mut tw);
                tw.buf
            })
            .collect();
        fit(outgoing, &mut w, 1);
        let reclaims: Vec<Vec<u8>> = self
            .reclaims
            .iter()
            .map(|rc| {
                let mut rw = Writer::default();
                rc.encode(&mut rw);
                rw.buf
            })
            .collect();
        fit(reclaims, &mut w, 0);
        (w.buf, truncated)
    }

    /// Decodes the record of `from` (authenticated by the gossip core's record signature).
    /// Checks structure only; signatures of the statements inside are checked by whoever acts
    /// on them.
    pub fn decode(from: NodeId, bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.u8()? != RECORD_FORMAT {
            return Err(Error::Decode("unknown IPAM record format"));
        }
        let genesis = Genesis::decode(&mut r)?;
        let size = genesis.size();
        let seq = r.varint()?;
        let status = match r.u8()? {
            0 => Status::Active,
            1 => Status::Left,
            2 => Status::Forgotten,
            _ => return Err(Error::Decode("unknown status")),
        };
        let pieces = decode_pieces(&mut r, size)?;
        let mut claims = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let used = r.varint_u32()?;
            if used > piece.len() {
                return Err(Error::Decode("more addresses used than the piece holds"));
            }
            claims.push(Claim { piece, used });
        }
        let n = r.count(32 + 1 + 1 + 64)?;
        let mut outgoing = Vec::with_capacity(n);
        for _ in 0..n {
            outgoing.push(Transfer::decode(&mut r, from, size)?);
        }
        let n = r.count(64 + 1 + 1 + 64)?;
        let mut reclaims = Vec::with_capacity(n);
        for _ in 0..n {
            reclaims.push(Reclaim::decode(&mut r, size)?);
        }
        r.finish()?;
        Ok(Self {
            genesis,
            seq,
            status,
            claims,
            outgoing,
            reclaims,
        })
    }
}

/// Direct messages between IPAM cores (sent over the gossip transport, authenticated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// "Please give me some of your free space."
    Request { genesis: GenesisId, id: u64 },
    /// The answer with space: a signed transfer to the requester.
    Grant {
        genesis: GenesisId,
        id: u64,
        transfer: Transfer,
    },
    /// The answer without: the donor has no free space to give.
    Deny { genesis: GenesisId, id: u64 },
    /// "I applied your transfer `seq`; my record from `record_seq` on shows it": the giver
    /// stops sending it, and stops relaying it once it has that record.
    Ack {
        genesis: GenesisId,
        seq: u64,
        record_seq: u64,
    },
    /// Sent to a forgotten node that shows up again, with the proof.
    Forgotten {
        genesis: GenesisId,
        reclaim: Reclaim,
    },
}

impl Message {
    pub fn genesis(&self) -> GenesisId {
        match self {
            Message::Request { genesis, .. }
            | Message::Grant { genesis, .. }
            | Message::Deny { genesis, .. }
            | Message::Ack { genesis, .. }
            | Message::Forgotten { genesis, .. } => *genesis,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(MESSAGE_FORMAT);
        let (kind, genesis) = match self {
            Message::Request { genesis, .. } => (0, genesis),
            Message::Grant { genesis, .. } => (1, genesis),
            Message::Deny { genesis, .. } => (2, genesis),
            Message::Ack { genesis, .. } => (3, genesis),
            Message::Forgotten { genesis, .. } => (4, genesis),
        };
        w.u8(kind);
        w.bytes(&genesis.0);
        match self {
            Message::Request { id, .. } | Message::Deny { id, .. } => w.varint(*id),
            Message::Grant { id, transfer, .. } => {
                w.varint(*id);
                transfer.encode(&mut w);
            }
            Message::Ack {
                seq, record_seq, ..
            } => {
                w.varint(*seq);
                w.varint(*record_seq);
            }
            Message::Forgotten { reclaim, .. } => reclaim.encode(&mut w),
        }
        w.buf
    }

    /// Decodes a message from `from`; `size` is the range size of our genesis.
    pub fn decode(from: NodeId, bytes: &[u8], size: u32) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.u8()? != MESSAGE_FORMAT {
            return Err(Error::Decode("unknown IPAM message format"));
        }
        let kind = r.u8()?;
        let genesis = GenesisId(r.array()?);
        let msg = match kind {
            0 => Message::Request {
                genesis,
                id: r.varint()?,
            },
            1 => {
                let id = r.varint()?;
                Message::Grant {
                    genesis,
                    id,
                    transfer: Transfer::decode(&mut r, from, size)?,
                }
            }
            2 => Message::Deny {
                genesis,
                id: r.varint()?,
            },
            3 => Message::Ack {
                genesis,
                seq: r.varint()?,
                record_seq: r.varint()?,
            },
            4 => Message::Forgotten {
                genesis,
                reclaim: Reclaim::decode(&mut r, size)?,
            },
            _ => return Err(Error::Decode("unknown IPAM message kind")),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use weft_crypto::IdentityKey;

    use super::*;

    /// A node's own reclaim reaches others only in its record: one with the most accounted
    /// givers and a scattered set of pieces must fit beside the genesis and a node's claims.
    #[test]
    fn a_full_reclaim_fits_in_a_record_beside_the_claims() {
        let key = IdentityKey::from_seed(&[7; 32]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let range = "10.32.0.0/12".parse().expect("a range");
        let genesis = Genesis::create(&key, range, &mut rng).expect("genesis");
        let piece = |i: u32| Piece {
            start: i * 4096,
            end: i * 4096 + 256,
            version: 1_000 + i,
        };
        let givers: Vec<(NodeId, u64)> = (0..Reclaim::MAX_ACCOUNTED as u8)
            .map(|i| (IdentityKey::from_seed(&[i; 32]).node_id(), 1_000_000))
            .collect();
        let forgotten = IdentityKey::from_seed(&[9; 32]).node_id();
        let reclaim = Reclaim::sign(
            &key,
            genesis.id,
            forgotten,
            u64::MAX,
            (0..8).map(piece).collect(),
            givers,
        );
        let record = Record {
            genesis,
            seq: u64::MAX,
            status: Status::Active,
            claims: (20..28)
                .map(|i| Claim {
                    piece: piece(i),
                    used: 200,
                })
                .collect(),
            outgoing: Vec::new(),
            reclaims: vec![reclaim.clone()],
        };
        let (bytes, truncated) = record.encode();
        assert!(
            !truncated,
            "the reclaim was left out of a {} byte record",
            bytes.len()
        );
        let back = Record::decode(key.node_id(), &bytes).expect("decodes");
        assert_eq!(back.reclaims, vec![reclaim]);
    }
}
