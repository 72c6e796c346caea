//! Sorted, merged, inclusive ranges of integers: address sets (IPv4 and IPv6, as `u128`) and
//! port sets. nftables interval sets take them as they are (no overlaps).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Inclusive ranges, sorted and merged (no two overlap or touch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Ranges(Vec<(u128, u128)>);

impl Ranges {
    pub fn new() -> Ranges {
        Ranges(Vec::new())
    }

    /// Builds from any ranges (each `start <= end`), in any order.
    pub fn from_unsorted(mut raw: Vec<(u128, u128)>) -> Ranges {
        raw.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(raw.len());
        for (start, end) in raw {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Ranges(merged)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.0.iter().copied()
    }

    /// Number of ranges (nft set elements).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn contains(&self, x: u128) -> bool {
        // The last range starting at or before x.
        let i = self.0.partition_point(|&(start, _)| start <= x);
        i > 0 && self.0[i - 1].1 >= x
    }

    /// The ranges of `self` minus those of `cut`.
    pub fn subtract(&self, cut: &Ranges) -> Ranges {
        let mut out = Vec::new();
        for &(mut start, end) in &self.0 {
            let mut done = false;
            for &(cs, ce) in &cut.0 {
                if ce < start || cs > end {
                    continue;
                }
                if cs > start {
                    out.push((start, cs - 1));
                }
                if ce >= end {
                    done = true;
                    break;
                }
                start = ce + 1;
            }
            if !done {
                out.push((start, end));
            }
        }
        Ranges(out)
    }

    pub fn union(&self, other: &Ranges) -> Ranges {
        Ranges::from_unsorted(self.0.iter().chain(&other.0).copied().collect())
    }
}

/// Addresses of both families.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AddrSet {
    pub v4: Ranges,
    pub v6: Ranges,
}

/// Which address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `ip` or `ip6`, as nft's payload protocols.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// `v4` or `v6`, for set names.
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    /// nft's address type.
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// An address as an integer (IPv4 in the low 32 bits).
pub fn addr_int(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// The address with this integer value in `family`.
pub fn int_addr(family: Family, x: u128) -> IpAddr {
    match family {
        // Values in a V4 set never exceed u32 (they come from `addr_int`).
        Family::V4 => IpAddr::V4(Ipv4Addr::from(x as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(x)),
    }
}

fn net_range(net: &IpNet) -> (u128, u128) {
    (addr_int(&net.network()), addr_int(&net.broadcast()))
}

impl AddrSet {
    pub fn family(&self, family: Family) -> &Ranges {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.family(Family::of(addr)).contains(addr_int(addr))
    }

    /// Every address of `cidr` not in any of `except`.
    pub fn block(cidr: &IpNet, except: &[IpNet]) -> AddrSet {
        let family = Family::of(&cidr.addr());
        let whole = Ranges(vec![net_range(cidr)]);
        let cut = Ranges::from_unsorted(
            except
                .iter()
                .filter(|e| Family::of(&e.addr()) == family)
                .map(net_range)
                .collect(),
        );
        let left = whole.subtract(&cut);
        match family {
            Family::V4 => AddrSet {
                v4: left,
                v6: Ranges::new(),
            },
            Family::V6 => AddrSet {
                v4: Ranges::new(),
                v6: left,
            },
        }
    }

    pub fn union(&self, other: &AddrSet) -> AddrSet {
        AddrSet {
            v4: self.v4.union(&other.v4),
            v6: self.v6.union(&other.v6),
        }
    }
}

/// Builds an [`AddrSet`] from single addresses and blocks.
#[derive(Debug, Default)]
pub struct AddrSetBuilder {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl AddrSetBuilder {
    pub fn add_addr(&mut self, addr: &IpAddr) {
        let x = addr_int(addr);
        match addr {
            IpAddr::V4(_) => self.v4.push((x, x)),
            IpAddr::V6(_) => self.v6.push((x, x)),
        }
    }

    pub fn add_set(&mut self, set: &AddrSet) {
        self.v4.extend(set.v4.iter());
        self.v6.extend(set.v6.iter());
    }

    pub fn build(self) -> AddrSet {
        AddrSet {
            v4: Ranges::from_unsorted(self.v4),
            v6: Ranges::from_unsorted(self.v6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(ranges: &[(u8, u8)], x: u8) -> bool {
        ranges.iter().any(|&(s, e)| s <= x && x <= e)
    }

    fn build(raw: &[(u8, u8)]) -> Ranges {
        Ranges::from_unsorted(
            raw.iter()
                .map(|&(a, b)| (u128::from(a.min(b)), u128::from(a.max(b))))
                .collect(),
        )
    }

    proptest! {
        /// Merging, subtracting and union agree with a plain membership test on every value.
        #[test]
        fn ranges_agree_with_membership(a in proptest::collection::vec((0u8.., 0u8..), 0..6),
                                        b in proptest::collection::vec((0u8.., 0u8..), 0..6)) {
            let norm = |v: &[(u8, u8)]| v.iter().map(|&(x, y)| (x.min(y), x.max(y))).collect::<Vec<_>>();
            let (na, nb) = (norm(&a), norm(&b));
            let (ra, rb) = (build(&a), build(&b));
            let diff = ra.subtract(&rb);
            let uni = ra.union(&rb);
            for w in ra.0.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "merged: {:?}", ra);
            }
            for w in diff.0.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
            for x in 0..=255u8 {
                let (ia, ib) = (naive(&na, x), naive(&nb, x));
                prop_assert_eq!(ra.contains(x.into()), ia);
                prop_assert_eq!(diff.contains(x.into()), ia && !ib);
                prop_assert_eq!(uni.contains(x.into()), ia || ib);
            }
        }
    }

    #[test]
    fn block_with_except() {
        let set = AddrSet::block(
            &"10.0.0.0/24".parse().expect("net"),
            &[
                "10.0.0.128/25".parse().expect("net"),
                "10.0.0.0/32".parse().expect("net"),
            ],
        );
        assert_eq!(set.v4.0, vec![(0x0a00_0001, 0x0a00_007f)]);
        assert!(set.contains(&"10.0.0.1".parse().expect("addr")));
        assert!(!set.contains(&"10.0.0.0".parse().expect("addr")));
        assert!(!set.contains(&"10.0.0.200".parse().expect("addr")));
        assert!(!set.contains(&"::1".parse().expect("addr")));
    }
}
