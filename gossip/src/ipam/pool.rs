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

    /// First free offset at or after the cursor, wrapping around once, over the owned blocks
    /// in [`Pool::blocks_by_preference`] order: the main block first, so that a node's
    /// containers share one prefix (and netmask) while it has room.
    fn find_free(&self) -> Option<u32> {
        if self.free_count() == 0 {
            return None;
        }
        let blocks = self.blocks_by_preference();
        let n = blocks.len();
        let Some(first) = blocks
            .iter()
            .position(|&(s, len)| s <= self.cursor && self.cursor - s < len)
        else {
            return blocks
                .iter()
                .find_map(|&(s, len)| self.first_free_in(s, s + len));
        };
        for k in 0..=n {
            let (s, len) = blocks[(first + k) % n];
            // Only the block the cursor points into starts at the cursor; the others (and
            // the wrap-around) start at their beginning.
            let from = if k == 0 { self.cursor } else { s };
            if let Some(offset) = self.first_free_in(from, s + len) {
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

    /// The owned space as maximal CIDR-aligned blocks `(start, len)`, in address order
    /// (offsets are aligned as addresses are: the range is itself a CIDR block).
    pub(crate) fn blocks(&self) -> Vec<(u32, u32)> {
        self.owned
            .iter()
            .flat_map(|p| aligned_blocks(p.start, p.end))
            .collect()
    }

    fn has_used(&self, start: u32, len: u32) -> bool {
        self.used.range(start..start + len).next().is_some()
    }

    /// The main block: the largest block that has addresses in use (it holds the node's
    /// gateway and containers), or the largest block if none has; the lowest on a tie.
    fn primary(&self, blocks: &[(u32, u32)]) -> Option<(u32, u32)> {
        let largest = |it: &mut dyn Iterator<Item = (u32, u32)>| {
            it.max_by_key(|&(s, len)| (len, std::cmp::Reverse(s)))
        };
        largest(
            &mut blocks
                .iter()
                .copied()
                .filter(|&(s, len)| self.has_used(s, len)),
        )
        .or_else(|| largest(&mut blocks.iter().copied()))
    }

    /// The owned blocks, the main one first, then the others in address order: the order
    /// allocation tries them in, and the order of `Ipam::owned_cidrs`.
    pub(crate) fn blocks_by_preference(&self) -> Vec<(u32, u32)> {
        let mut blocks = self.blocks();
        if let Some(primary) = self.primary(&blocks) {
            if let Some(i) = blocks.iter().position(|&b| b == primary) {
                blocks[..=i].rotate_right(1);
            }
        }
        blocks
    }

    /// Whether `[start, start + len)` has an address that may be handed out at all.
    fn allocatable(&self, start: u32, len: u32) -> bool {
        len >= 2 || (start != 0 && start != self.size - 1)
    }

    /// What to give a node that asks for space, as `[start, end)`: always one CIDR-aligned
    /// block free of allocations (the range's network and broadcast addresses do not count:
    /// the receiver never hands them out either), so that every node's space stays a few
    /// prefixes. A whole block other than the main one, when one is free and at least a
    /// quarter of the alternative (this gets rid of space a node was handed on leaving or
    /// took back by a forget); otherwise the largest free aligned block inside the owned
    /// space, the highest on a tie, or the upper half of it when it is a whole block (the
    /// main one, wholly free: the giver keeps half).
    pub(crate) fn gift(&self) -> Option<(u32, u32)> {
        let mut blocks = self.blocks();
        let primary = self.primary(&blocks)?;
        let whole = blocks
            .iter()
            .copied()
            .filter(|&b| b != primary && !self.has_used(b.0, b.1) && self.allocatable(b.0, b.1))
            .max_by_key(|&(s, len)| (len, s));
        // The largest free aligned block, from the gaps between allocations.
        blocks.sort_unstable_by_key(|&(s, len)| (std::cmp::Reverse(len), s));
        let mut best: Option<(u32, u32)> = None;
        let better = |best: Option<(u32, u32)>, (s, len): (u32, u32)| {
            best.is_none_or(|(bs, blen)| (len, s) > (blen, bs))
        };
        for &(start, len) in &blocks {
            if best.is_some_and(|(_, blen)| blen > len) {
                break;
            }
            let end = start + len;
            let mut gap = start;
            for u in self.used.range(start..end).copied().chain([end]) {
                for b in aligned_blocks(gap, u) {
                    if self.allocatable(b.0, b.1) && better(best, b) {
                        best = Some(b);
                    }
                }
                gap = u + 1;
            }
        }
        let best = best.map(|(s, len)| {
            if blocks.contains(&(s, len)) && len >= 2 {
                (s + len / 2, len / 2)
            } else {
                (s, len)
            }
        });
        let chosen = match (whole, best) {
            (Some(w), Some(b)) if w.1.saturating_mul(4) >= b.1 => w,
            (Some(w), None) => w,
            (_, b) => b?,
        };
        Some((chosen.0, chosen.0 + chosen.1))
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

/// `[start, end)` as maximal CIDR-aligned blocks `(start, len)`, in address order.
pub(crate) fn aligned_blocks(start: u32, end: u32) -> impl Iterator<Item = (u32, u32)> {
    let mut at = u64::from(start);
    let end = u64::from(end);
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        // The largest power of two that `at` is aligned to and that fits before `end`.
        let mut len = if at == 0 {
            1u64 << 32
        } else {
            at & at.wrapping_neg()
        };
        while at + len > end {
            len >>= 1;
        }
        let block = (at as u32, len as u32);
        at += len;
        Some(block)
    })
}

/// How many CIDR prefixes the union of `pieces` (offsets `[start, end)`) takes.
pub(crate) fn prefix_count(pieces: impl IntoIterator<Item = (u32, u32)>) -> usize {
    let mut ranges: Vec<(u32, u32)> = pieces.into_iter().filter(|(s, e)| s < e).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .map(|(s, e)| aligned_blocks(s, e).count())
        .sum()
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
        // A whole free block that is not the main one ([16, 32), in use) goes first.
        assert_eq!(pool.gift(), Some((64, 80)));
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

    #[test]
    fn aligned_blocks_and_prefix_counts() {
        let blocks: Vec<(u32, u32)> = aligned_blocks(1, 15).collect();
        assert_eq!(blocks, [(1, 1), (2, 2), (4, 4), (8, 4), (12, 2), (14, 1)]);
        assert_eq!(
            aligned_blocks(0, 1 << 20).collect::<Vec<_>>(),
            [(0, 1 << 20)]
        );
        assert_eq!(prefix_count([(0, 8), (8, 16)]), 1, "buddies merge");
        assert_eq!(
            prefix_count([(8, 16), (16, 24)]),
            2,
            "neighbours that are not buddies"
        );
        assert_eq!(prefix_count([]), 0);
    }

    #[test]
    fn gifts_are_aligned_blocks_and_reserved_addresses_do_not_split_them() {
        // The seed: the upper half of the whole range, broadcast address included.
        let pool = pool_with(1 << 20, &[(0, 1 << 20)]);
        assert_eq!(pool.gift(), Some((1 << 19, 1 << 20)));
        // A joiner with its gateway at the first address of its block: the upper half.
        let mut pool = pool_with(1 << 20, &[(1 << 19, 1 << 20)]);
        assert_eq!(pool.allocate("gw"), Some(1 << 19));
        assert_eq!(pool.gift(), Some((3 << 18, 1 << 20)));
        // Allocations high up: the largest free aligned block below them, not a run.
        let mut pool = pool_with(256, &[(0, 64)]);
        for c in 0..40 {
            pool.allocate(&format!("c{c}"));
        }
        // 1..=40 used: [48, 64) is the largest free aligned block; [41, 48) is not aligned.
        assert_eq!(pool.gift(), Some((48, 64)));
        // A whole free block besides the main one is given first, unless it is tiny.
        let mut pool = pool_with(256, &[(0, 64), (128, 160)]);
        pool.allocate("a");
        assert_eq!(pool.gift(), Some((128, 160)));
        let mut pool = pool_with(256, &[(0, 64), (128, 132)]);
        pool.allocate("a");
        assert_eq!(
            pool.gift(),
            Some((32, 64)),
            "a /30 is less than a quarter of 32"
        );
        // The range's broadcast address alone is worth nothing.
        let pool = pool_with(256, &[(255, 256)]);
        assert_eq!(pool.gift(), None);
    }

    #[test]
    fn allocation_fills_the_main_block_first() {
        // [64, 128) is the largest; the small block below it is used only once it is full.
        let mut pool = pool_with(256, &[(16, 20), (64, 128)]);
        assert_eq!(pool.blocks_by_preference(), [(64, 64), (16, 4)]);
        assert_eq!(pool.allocate("a"), Some(64));
        for c in 0..63 {
            pool.allocate(&format!("c{c}"));
        }
        assert_eq!(pool.allocate("next"), Some(16));
        // The main block is the largest one in use, so a larger free block received later
        // does not take its place.
        pool.add(&[Piece {
            start: 128,
            end: 256,
            version: 1,
        }]);
        assert_eq!(pool.blocks_by_preference()[0], (64, 64));
    }
}
