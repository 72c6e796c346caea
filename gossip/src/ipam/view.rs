//! The cluster-wide ownership map as one node sees it, computed from the latest records it
//! has (plus its own state), and the `weft ipam` report built on it.
//!
//! Each record asserts "these pieces are mine at these versions", and each unacknowledged
//! transfer asserts "these pieces are the receiver's now". For every address the assertion
//! with the highest version wins. Only an owner creates a new version of its own piece, so
//! honest nodes never make two assertions with the same version for one address; if that
//! happens anyway (a `forget` that raced a transfer it could not see) the higher node id wins
//! deterministically, so every node still agrees, and the clash is listed in the report.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv4Subnets};
use weft_crypto::NodeId;

use super::error::GenesisConflict;
use super::record::Status;
use super::statement::{address_at, GenesisId, Piece};

/// One stretch of the ring with a single owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RingEntry {
    pub start: u32,
    pub end: u32,
    pub owner: NodeId,
    pub version: u32,
}

/// One assertion fed to the sweep.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Assertion {
    pub piece: Piece,
    pub owner: NodeId,
}

/// A stretch `[start, end)` that several owners assert at the same version.
pub(crate) type Clash = (u32, u32, Vec<NodeId>);

/// Computes the ring: highest version wins per address; ties go to the higher node id and
/// are returned as clashes `(start, end, [owners])`.
pub(crate) fn compute_ring(assertions: &[Assertion]) -> (Vec<RingEntry>, Vec<Clash>) {
    let mut events: Vec<(u32, bool, u32, NodeId)> = Vec::with_capacity(assertions.len() * 2);
    for a in assertions {
        if a.piece.is_empty() {
            continue;
        }
        events.push((a.piece.start, true, a.piece.version, a.owner));
        events.push((a.piece.end, false, a.piece.version, a.owner));
    }
    events.sort_unstable_by_key(|e| e.0);
    let mut active: BTreeMap<(u32, NodeId), usize> = BTreeMap::new();
    let mut ring: Vec<RingEntry> = Vec::new();
    let mut clashes = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, open, version, owner) = events[i];
            let key = (version, owner);
            if open {
                *active.entry(key).or_insert(0) += 1;
            } else if let Some(n) = active.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&key);
                }
            }
            i += 1;
        }
        let Some(next) = events.get(i).map(|e| e.0) else {
            break;
        };
        let Some((&(version, owner), _)) = active.iter().next_back() else {
            continue;
        };
        let tied: Vec<NodeId> = active
            .keys()
            .rev()
            .take_while(|k| k.0 == version)
            .map(|k| k.1)
            .collect();
        if tied.len() > 1 {
            clashes.push((pos, next, tied));
        }
        match ring.last_mut() {
            Some(last) if last.end == pos && last.owner == owner && last.version == version => {
                last.end = next
            }
            _ => ring.push(RingEntry {
                start: pos,
                end: next,
                owner,
                version,
            }),
        }
    }
    (ring, clashes)
}

/// `weft ipam` / `weft ipam -o json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IpamReport {
    /// This node (base64 node id).
    pub node: String,
    pub status: Status,
    pub range: Option<Ipv4Net>,
    pub genesis: Option<GenesisReport>,
    /// The ring, in address order.
    pub pieces: Vec<PieceReport>,
    /// Per node: how much it owns and how full that is.
    pub nodes: Vec<NodeReport>,
    /// Free addresses held by nodes this node cannot reach now.
    pub unreachable_free: u64,
    /// Addresses no known node claims (a crashed receiver's record not seen yet, and so on).
    pub unclaimed: u64,
    /// Nodes forgotten by an operator (they are refused if they come back).
    pub forgotten: Vec<String>,
    /// Address spaces started apart that met ours and were refused.
    pub conflicts: Vec<GenesisConflict>,
    /// Stretches that two nodes assert at the same version (see the module doc of `view`).
    pub clashes: Vec<ClashReport>,
    /// Space this node owns that another node's record asserts at a higher version. No
    /// honest action does that (see "Trust" in the `ipam` module doc): the claimant is a
    /// member over-claiming, and other nodes may route this space to it.
    pub disputed: Vec<DisputeReport>,
    /// A request for space this node is waiting on.
    pub waiting_for: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenesisReport {
    pub id: GenesisId,
    pub creator: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PieceReport {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// The same stretch as CIDR blocks (what the mesh routes).
    pub cidrs: Vec<Ipv4Net>,
    pub size: u32,
    pub owner: String,
    pub version: u32,
    /// Addresses in use, when the owner's record states it for exactly this piece.
    pub used: Option<u32>,
    pub reachable: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeReport {
    pub node: String,
    pub status: Status,
    pub owned: u64,
    pub used: u64,
    pub reachable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DisputeReport {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// The node whose record asserts the stretch (as its own, or by a transfer it made).
    pub claimant: String,
    /// The version this node owns it at, and the higher one the claimant asserts.
    pub ours: u32,
    pub theirs: u32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClashReport {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub owners: Vec<String>,
}

pub(crate) fn piece_report(
    range: Ipv4Net,
    e: &RingEntry,
    used: Option<u32>,
    reachable: bool,
) -> PieceReport {
    let first = address_at(range, e.start);
    let last = address_at(range, e.end - 1);
    PieceReport {
        first,
        last,
        cidrs: Ipv4Subnets::new(first, last, 0).collect(),
        size: e.end - e.start,
        owner: e.owner.to_string(),
        version: e.version,
        used,
        reachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn highest_version_wins_and_ties_are_reported() {
        let a = |start, end, version, owner| Assertion {
            piece: Piece {
                start,
                end,
                version,
            },
            owner: node(owner),
        };
        let (ring, clashes) = compute_ring(&[
            a(0, 100, 1, 1),
            a(50, 60, 2, 2),
            a(55, 70, 2, 3),
            a(60, 70, 1, 4),
        ]);
        assert_eq!(
            ring,
            vec![
                RingEntry {
                    start: 0,
                    end: 50,
                    owner: node(1),
                    version: 1
                },
                RingEntry {
                    start: 50,
                    end: 55,
                    owner: node(2),
                    version: 2
                },
                RingEntry {
                    start: 55,
                    end: 70,
                    owner: node(3),
                    version: 2
                },
                RingEntry {
                    start: 70,
                    end: 100,
                    owner: node(1),
                    version: 1
                },
            ]
        );
        assert_eq!(clashes, vec![(55, 60, vec![node(3), node(2)])]);
    }
}
