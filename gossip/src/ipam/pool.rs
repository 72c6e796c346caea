//! The pieces this node owns and the addresses it has handed out from them. Purely local
//! and fast: allocation is a next-fit search in an ordered set, no network involved.

use std::collections::{BTreeSet, HashMap};

use super::statement::Piece;

/// Why an address cannot be handed out ([`Pool::unavailable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable<'a> {
    NotOwned,
    Reserved,
    Held(&'a str),
}

#[derive(Debug, Clone)]
pub(crate) struct Pool {
    /// Range size; offsets 0 and size-1 (network and broadcast address) are never handed out.
    size: u32,
    /// Sorted, disjoint, adjacent pieces merged.
    owned: Vec<Piece>,
    used: BTreeSet<u32>,
    by_container: HashMap<String, u32>,
    /// Next-fit cursor: a freed address is reused only after the others, which keeps stale
    /// ARP entries and connection tracking of a dead container from hitting a new one.
    cursor: u32,
}

impl Pool {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            size,
            owned: Vec::new(),
            used: BTreeSet::new(),
            by_container: HashMap::new(),
            cursor: 0,
        }
    }

    pub(crate) fn owned(&self) -> &[Piece] {
        &self.owned
    }

    pub(crate) fn allocations(&self) -> impl Iterator<Item = (&String, &u32)> {
        self.by_container.iter()
    }

    pub(crate) fn allocated(&self, container: &str) -> Option<u32> {
        self.by_container.get(container).copied()
    }

    fn reserved(&self, offset: u32) -> bool {
        offset == 0 || offset == self.size - 1
    }

    pub(crate) fn owns(&self, offset: u32) -> bool {
        let i = self.owned.partition_point(|p| p.end <= offset);
        self.owned.get(i).is_some_and(|p| p.start <= offset)
    }

    pub(crate) fn used_in(&self, start: u32, end: u32) -> u32 {
        self.used.range(start..end).count() as u32
    }

    /// Used plus reserved addresses in `[start, end)`.
    pub(crate) fn unavailable_in(&self, start: u32, end: u32) -> u32 {
        let reserved = [0, self.size - 1]
            .iter()
            .filter(|r| (start..end).contains(r))
            .count() as u32;
        self.used_in(start, end) + reserved
    }

    pub(crate) fn allocation_count(&self) -> usize {
        self.by_container.len()
    }

    /// Addresses this node could still hand out.
    pub(crate) fn free_count(&self) -> u64 {
        let mut free: u64 = self.owned.iter().map(|p| u64::from(p.len())).sum();
        for r in [0, self.size - 1] {
            if self.owns(r) {
                free -= 1;
            }
        }
        free - self.used.len() as u64
    }

    /// Adds pieces (from a transfer, a reclaim or the genesis) and merges neighbours. A merged
    /// piece takes the highest version of its parts: only the owner bumps its own versions.
    pub(crate) fn add(&mut self, pieces: &[Piece]) {
        self.owned.extend_from_slice(pieces);
        self.owned.sort();
        let mut merged: Vec<Piece> = Vec::with_capacity(self.owned.len());
        for p in self.owned.drain(..) {
            match merged.last_mut() {
                Some(last) if last.end == p.start => {
                    last.end = p.end;
                    last.version = last.version.max(p.version);
                }
                _ => merged.push(p),
            }
        }
        self.owned = merged;
    }

    /// Removes every owned piece (leaving) and every allocation.
    pub(crate) fn clear(&mut self) -> Vec<Piece> {
        self.used.clear();
        self.by_container.clear();
        std::mem::take(&mut self.owned)
    }

    pub(crate) fn restore(&mut self, container: String, offset: u32) -> bool {
        if !self.owns(offset) || self.reserved(offset) || self.used.contains(&offset) {
            return false;
        }
        if let Some(old) = self.by_container.insert(container, offset) {
            self.used.remove(&old);
        }
        self.used.insert(offset);
        true
    }

    #[cfg(test)]
    pub(crate) fn allocate(&mut self, container: &str) -> Option<u32> {
        if let Some(&offset) = self.by_container.get(container) {
            return Some(offset);
        }
        self.allocate_new(container)
    }

    /// Allocates for a container the caller knows has no address yet (one hash lookup less).
    pub(crate) fn allocate_new(&mut self, container: &str) -> Option<u32> {
        let offset = self.find_free()?;
        self.used.insert(offset);
        self.by_container.insert(container.to_owned(), offset);
        self.cursor = offset + 1;
        Some(offset)
    }

    /// Why `offset` cannot be handed out, if it cannot: not owned, reserved (network or
    /// broadcast address of the range) or held (by the container named).
    pub(crate) fn unavailable(&self, offset: u32) -> Option<Unavailable<'_>> {
        if !self.owns(offset) {
            return Some(Unavailable::NotOwned);
        }
        if self.reserved(offset) {
            return Some(Unavailable::Reserved);
        }
        if self.used.contains(&offset) {
            let holder = self
                .by_container
                .iter()
                .find(|(_, o)| **o == offset)
                .map_or("", |(c, _)| c.as_str());
            return Some(Unavailable::Held(holder));
        }
        None
    }

    pub(crate) fn release(&mut self, container: &str) -> Option<u32> {
        let offset = self.by_container.remove(container)?;
        self.used.remove(&offset);
        Some(offset)
    }

    /// First free offset at or after the cursor, wrapping around once.
    fn find_free(&self) -> Option<u32> {
        if self.free_count() == 0 {
            return None;
        }
        let first = self.owned.partition_point(|p| p.end <= self.cursor);
        let n = self.owned.len();
        for k in 0..=n {
            let p = self.owned[(first + k) % n];
            // Only the piece the cursor points into starts at the cursor; the others (and
            // the wrap-around) start at their beginning.
            let from = if k == 0 && first < n {
                p.start.max(self.cursor)
            } else {
                p.start
            };
            if let Some(offset) = self.first_free_in(from, p.end) {
                return Some(offset);
            }
        }
        None
    }

    fn first_free_in(&self, from: u32, end: u32) -> Option<u32> {
        if from >= end {
            return None;
        }
        let mut candidate = from;
        if candidate < end && self.reserved(candidate) {
            candidate += 1;
        }
        for &u in self.used.range(candidate..end) {
            if u != candidate {
                break;
            }
            candidate += 1;
            if candidate < end && self.reserved(candidate) {
                candidate += 1;
            }
        }
        (candidate < end && !self.reserved(candidate)).then_some(candidate)
    }

    /// The longest run of free addresses (no allocation, no reserved address) inside one
    /// owned piece: the candidate for giving space away.
    pub(crate) fn largest_free_run(&self) -> Option<(u32, u32)> {
        let mut best: Option<(u32, u32)> = None;
        let mut consider = |s: u32, e: u32| {
            if e > s && best.is_none_or(|(bs, be)| e - s > be - bs) {
                best = Some((s, e));
            }
        };
        for p in &self.owned {
            let mut s = p.start;
            let blockers = self.used.range(p.start..p.end).copied().chain(
                [0, self.size - 1]
                    .into_iter()
                    .filter(|r| (p.start..p.end).contains(r)),
            );
            let mut blockers: Vec<u32> = blockers.collect();
            blockers.sort_unstable();
            for b in blockers {
                consider(s, b);
                s = b + 1;
            }
            consider(s, p.end);
        }
        best
    }

    /// Removes `[start, end)` (which must be owned and free) and returns it as pieces with
    /// their new versions (one more than the version they had here).
    pub(crate) fn take(&mut self, start: u32, end: u32) -> Vec<Piece> {
        let mut given = Vec::new();
        let mut kept = Vec::with_capacity(self.owned.len() + 1);
        for p in self.owned.drain(..) {
            let (s, e) = (p.start.max(start), p.end.min(end));
            if s >= e {
                kept.push(p);
                continue;
            }
            given.push(Piece {
                start: s,
                end: e,
                version: p.version + 1,
            });
            if p.start < s {
                kept.push(Piece {
                    start: p.start,
                    end: s,
                    version: p.version,
                });
            }
            if e < p.end {
                kept.push(Piece {
                    start: e,
                    end: p.end,
                    version: p.version,
                });
            }
        }
        self.owned = kept;
        given
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_with(size: u32, pieces: &[(u32, u32)]) -> Pool {
        let mut pool = Pool::new(size);
        pool.add(
            &pieces
                .iter()
                .map(|&(start, end)| Piece {
                    start,
                    end,
                    version: 1,
                })
                .collect::<Vec<_>>(),
        );
        pool
    }

    #[test]
    fn allocates_every_address_once_skipping_network_and_broadcast() {
        let mut pool = pool_with(16, &[(0, 16)]);
        let mut got: Vec<u32> = (0..14)
            .map(|i| pool.allocate(&format!("c{i}")).expect("space left"))
            .collect();
        assert!(pool.allocate("one-too-many").is_none());
        got.sort_unstable();
        assert_eq!(got, (1..15).collect::<Vec<_>>());
        assert_eq!(pool.allocate("c3"), Some(4), "same container, same address");
        assert_eq!(pool.release("c3"), Some(4));
        assert_eq!(
            pool.allocate("again"),
            Some(4),
            "a freed address is usable again"
        );
    }

    #[test]
    fn cursor_past_the_last_piece_wraps_around() {
        let mut pool = pool_with(256, &[(16, 32), (64, 80)]);
        pool.cursor = 200;
        assert_eq!(pool.allocate("a"), Some(16));
        pool.cursor = 79;
        assert_eq!(pool.allocate("b"), Some(79));
        assert_eq!(pool.allocate("c"), Some(17));
    }

    #[test]
    fn next_fit_delays_reuse_and_runs_are_found() {
        let mut pool = pool_with(256, &[(16, 32), (64, 80)]);
        assert_eq!(pool.allocate("a"), Some(16));
        assert_eq!(pool.allocate("b"), Some(17));
        pool.release("a");
        assert_eq!(
            pool.allocate("c"),
            Some(18),
            "freed 16 is not reused at once"
        );
        assert_eq!(pool.largest_free_run(), Some((64, 80)));
        let given = pool.take(72, 80);
        assert_eq!(
            given,
            vec![Piece {
                start: 72,
                end: 80,
                version: 2
            }]
        );
        assert_eq!(
            pool.owned(),
            &[
                Piece {
                    start: 16,
                    end: 32,
                    version: 1
                },
                Piece {
                    start: 64,
                    end: 72,
                    version: 1
                }
            ]
        );
        assert!(!pool.owns(75));
    }
}
