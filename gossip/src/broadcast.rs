//! The queue of updates waiting to be piggybacked, like memberlist's TransmitLimitedQueue:
//! the least-sent update goes first (newest first among equals), each is sent at most
//! `limit` times, and a newer update about a node replaces the older one of the same class:
//! a node's record and claims about its liveness (suspect, dead, leave) are kept apart, so a
//! fresh suspicion does not push a refuting record out of the queue.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use weft_crypto::NodeId;

#[derive(Debug)]
struct Item {
    node: NodeId,
    claim: bool,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) struct BroadcastQueue {
    /// Keyed by (times sent, newest first).
    items: BTreeMap<(u32, Reverse<u64>), Item>,
    by_node: HashMap<(NodeId, bool), (u32, Reverse<u64>)>,
    next_id: u64,
}

impl BroadcastQueue {
    /// Queue an update about `node`; `claim` is true for suspect/dead/leave, false for a record.
    pub(crate) fn push(&mut self, node: NodeId, claim: bool, bytes: Vec<u8>) {
        if let Some(old) = self.by_node.remove(&(node, claim)) {
            self.items.remove(&old);
        }
        self.next_id += 1;
        let key = (0, Reverse(self.next_id));
        self.items.insert(key, Item { node, claim, bytes });
        self.by_node.insert((node, claim), key);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Append updates to `out` while they fit in `budget` bytes; returns how many. Each one
    /// taken counts as sent once and is dropped after `limit` sends. `skip` names a node
    /// whose update is already in the packet.
    pub(crate) fn fill(
        &mut self,
        out: &mut Vec<u8>,
        mut budget: usize,
        limit: u32,
        skip: Option<NodeId>,
    ) -> usize {
        const SMALLEST_UPDATE: usize = 66;
        let mut taken = Vec::new();
        for (key, item) in &self.items {
            if budget < SMALLEST_UPDATE {
                break;
            }
            if item.bytes.len() <= budget && Some(item.node) != skip {
                budget -= item.bytes.len();
                out.extend_from_slice(&item.bytes);
                taken.push(*key);
            }
        }
        for key in &taken {
            if let Some(item) = self.items.remove(key) {
                let next = (key.0 + 1, key.1);
                if next.0 >= limit {
                    self.by_node.remove(&(item.node, item.claim));
                } else {
                    self.by_node.insert((item.node, item.claim), next);
                    self.items.insert(next, item);
                }
            }
        }
        taken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_sent_first_limit_and_replacement() {
        let mut q = BroadcastQueue::default();
        q.push(NodeId([1; 32]), false, vec![1; 100]);
        q.push(NodeId([2; 32]), false, vec![2; 100]);
        q.push(NodeId([1; 32]), false, vec![3; 100]); // replaces node 1's record
        assert_eq!(q.len(), 2);
        let mut out = Vec::new();
        assert_eq!(q.fill(&mut out, 150, 2, None), 1);
        assert_eq!(out, vec![3; 100], "newest first");
        out.clear();
        assert_eq!(q.fill(&mut out, 150, 2, None), 1);
        assert_eq!(out, vec![2; 100], "then the one sent fewer times");
        out.clear();
        assert_eq!(q.fill(&mut out, 1000, 2, None), 2);
        assert!(q.is_empty(), "both reached the limit of 2 sends");
    }
}
