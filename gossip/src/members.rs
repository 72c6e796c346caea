//! The member table: one compact entry per known node, keyed by node id.
//!
//! A simulator keeps thousands of full views in one process, so an entry is kept small (the
//! record behind an `Arc`, the key read out of the record) and the table is a
//! `hashbrown::HashTable` with a deterministic keyed hash, so iteration order depends only
//! on the seed and the inputs.
#![forbid(unsafe_code)]

use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;
use weft_crypto::NodeId;

use crate::record::VerifiedRecord;

/// Liveness of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answers probes (or nobody has suspected it at its current incarnation).
    Alive,
    /// A probe failed; it has until the suspicion timeout to refute.
    Suspect,
    /// Declared failed. It comes back by publishing a record with a higher version.
    Dead,
    /// Left on its own (signed leave).
    Left,
}

impl MemberState {
    /// Alive or suspect: still probed and gossiped to.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) record: Arc<VerifiedRecord>,
    /// The incarnation `state` refers to; at least the record's version (a suspicion can
    /// name a newer incarnation than the record we hold).
    pub(crate) incarnation: u64,
    pub(crate) state: MemberState,
}

impl Entry {
    pub(crate) fn id(&self) -> &NodeId {
        self.record.node_id()
    }
}

#[derive(Debug)]
pub(crate) struct Table {
    key: u64,
    table: HashTable<Entry>,
}

fn hash(key: u64, id: &NodeId) -> u64 {
    // DefaultHasher::new() is SipHash with fixed keys, so the same on every run; the per-node
    // key mixed in first stops one crafted id set from degrading every node's table.
    let mut h = DefaultHasher::new();
    h.write_u64(key);
    h.write(id.as_bytes());
    h.finish()
}

impl Table {
    pub(crate) fn new(key: u64) -> Self {
        Self {
            key,
            table: HashTable::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn get(&self, id: &NodeId) -> Option<&Entry> {
        self.table.find(hash(self.key, id), |e| e.id() == id)
    }

    pub(crate) fn get_mut(&mut self, id: &NodeId) -> Option<&mut Entry> {
        self.table.find_mut(hash(self.key, id), |e| e.id() == id)
    }

    /// Insert or replace the entry for the record's node.
    pub(crate) fn insert(&mut self, entry: Entry) {
        let key = self.key;
        let h = hash(key, entry.id());
        if let Some(e) = self.table.find_mut(h, |e| e.id() == entry.id()) {
            *e = entry;
        } else {
            self.table.insert_unique(h, entry, |e| hash(key, e.id()));
        }
    }

    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<Entry> {
        match self.table.find_entry(hash(self.key, id), |e| e.id() == id) {
            Ok(occupied) => Some(occupied.remove().0),
            Err(_) => None,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.table.iter()
    }

    pub(crate) fn reserve(&mut self, n: usize) {
        let key = self.key;
        self.table.reserve(n, |e| hash(key, e.id()));
    }
}
