//! The table of admitted connections: one per peer address.
//!
//! Two nodes may dial each other at the same moment and end up with two connections. Both ends
//! must then keep the same one, with no further messages: they pick the connection with the
//! smaller TLS export, a value both ends share and no one chooses. A connection from a new
//! instance of the peer (it restarted: a new certificate) replaces the old one outright, since
//! the old one is dead even if this end has not noticed yet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use weft_crypto::admission::Export;
use weft_crypto::NodeId;

/// An admitted connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) conn: quinn::Connection,
    pub(crate) addr: SocketAddr,
    pub(crate) node: NodeId,
    pub(crate) export: Export,
    /// The peer's TLS certificate: new at every start of the peer, so it tells instances apart.
    pub(crate) certificate: Arc<[u8]>,
}

impl Peer {
    fn is_live(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            node: &self.node,
            certificate: &self.certificate,
            export: &self.export,
        }
    }
}

/// What tells two connections apart, as both of their ends see it.
#[derive(Debug, Clone, Copy)]
struct Identity<'a> {
    node: &'a NodeId,
    certificate: &'a [u8],
    export: &'a Export,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// The new connection goes to another instance of the peer (it restarted).
    ReplaceStale,
    /// Both go to the same instance; the new one wins the tie-break.
    ReplaceDuplicate,
    /// Both go to the same instance; the old one wins the tie-break.
    KeepOld,
}

/// Choose between a live connection and a newly admitted one to the same address. Both ends of
/// two duplicate connections must choose the same one, so the tie-break uses only values the
/// two ends share: the smaller keying-material export wins.
fn choose(old: Identity<'_>, new: Identity<'_>) -> Choice {
    if old.node != new.node || old.certificate != new.certificate {
        Choice::ReplaceStale
    } else if new.export < old.export {
        Choice::ReplaceDuplicate
    } else {
        Choice::KeepOld
    }
}

/// What became of a newly admitted connection.
#[derive(Debug)]
pub(crate) enum Placement {
    /// It is the peer's connection now; there was no live one before.
    New,
    /// It replaced a duplicate connection to the same peer instance, which should be closed
    /// once in-flight messages had time to land.
    ReplacedDuplicate(Peer),
    /// It replaced the connection to an earlier instance of the peer, which is dead.
    ReplacedStale(Peer),
    /// The existing connection to the same instance wins; the new one is the duplicate.
    Duplicate(Peer),
}

#[derive(Debug, Default)]
pub(crate) struct Peers {
    by_addr: HashMap<SocketAddr, Peer>,
}

impl Peers {
    /// The live connection to `addr`, if any.
    pub(crate) fn live(&self, addr: SocketAddr) -> Option<Peer> {
        self.by_addr.get(&addr).filter(|p| p.is_live()).cloned()
    }

    /// A live connection to node `node` at whatever address it came from: a node behind NAT
    /// is reachable only over the connection it opened, not at the address in its record.
    pub(crate) fn live_node(&self, node: &NodeId) -> Option<Peer> {
        self.by_addr
            .values()
            .find(|p| p.node == *node && p.is_live())
            .cloned()
    }

    pub(crate) fn place(&mut self, new: Peer) -> Placement {
        let old = match self.by_addr.get(&new.addr) {
            Some(old) if old.is_live() => old.clone(),
            _ => {
                self.by_addr.insert(new.addr, new);
                return Placement::New;
            }
        };
        match choose(old.identity(), new.identity()) {
            Choice::ReplaceStale => {
                self.by_addr.insert(new.addr, new);
                Placement::ReplacedStale(old)
            }
            Choice::ReplaceDuplicate => {
                self.by_addr.insert(new.addr, new);
                Placement::ReplacedDuplicate(old)
            }
            Choice::KeepOld => Placement::Duplicate(old),
        }
    }

    /// Forget `conn` if it is still the one kept for `addr`.
    pub(crate) fn remove(&mut self, addr: SocketAddr, conn: &quinn::Connection) {
        if self
            .by_addr
            .get(&addr)
            .is_some_and(|p| p.conn.stable_id() == conn.stable_id())
        {
            self.by_addr.remove(&addr);
        }
    }

    /// Address and node id of every live connection.
    pub(crate) fn live_peers(&self) -> Vec<(SocketAddr, NodeId)> {
        self.by_addr
            .values()
            .filter(|p| p.is_live())
            .map(|p| (p.addr, p.node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(node: &'a NodeId, cert: &'a [u8], export: &'a Export) -> Identity<'a> {
        Identity {
            node,
            certificate: cert,
            export,
        }
    }

    #[test]
    fn both_ends_keep_the_same_duplicate() {
        let node = NodeId([1; 32]);
        let (x, y) = ([3u8; 32], [9u8; 32]);
        // One end admitted x first, the other y first: both keep x.
        assert_eq!(
            choose(id(&node, b"c", &x), id(&node, b"c", &y)),
            Choice::KeepOld
        );
        assert_eq!(
            choose(id(&node, b"c", &y), id(&node, b"c", &x)),
            Choice::ReplaceDuplicate
        );
    }

    #[test]
    fn a_new_instance_replaces_the_old() {
        let node = NodeId([1; 32]);
        let (x, y) = ([3u8; 32], [9u8; 32]);
        // Restart with the same identity key: new certificate.
        assert_eq!(
            choose(id(&node, b"old", &x), id(&node, b"new", &y)),
            Choice::ReplaceStale
        );
        // Another node now at that address.
        let other = NodeId([2; 32]);
        assert_eq!(
            choose(id(&node, b"c", &x), id(&other, b"c", &y)),
            Choice::ReplaceStale
        );
    }
}
