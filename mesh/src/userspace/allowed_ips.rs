//! Allowed IPs: a longest-prefix-match table from address to peer, one per address family.
//!
//! One hash map per prefix length in use, probed from the longest length down: a lookup
//! costs one hash probe per distinct length (a handful in practice) and never allocates.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

/// Maps prefixes to values; a prefix has at most one value.
#[derive(Debug, Clone)]
pub struct AllowedIps<V> {
    v4: Family<V>,
    v6: Family<V>,
}

#[derive(Debug, Clone)]
struct Family<V> {
    /// Prefix length -> (masked address -> value). BTreeMap so lookup walks lengths in order.
    by_len: BTreeMap<u8, HashMap<u128, V>>,
}

impl<V> Default for Family<V> {
    fn default() -> Self {
        Self {
            by_len: BTreeMap::new(),
        }
    }
}

impl<V: Copy + PartialEq> Default for AllowedIps<V> {
    fn default() -> Self {
        Self::new()
    }
}

fn key(net: &IpNet) -> (bool, u8, u128) {
    match net {
        IpNet::V4(n) => (true, n.prefix_len(), u128::from(u32::from(n.network()))),
        IpNet::V6(n) => (false, n.prefix_len(), u128::from(n.network())),
    }
}

fn mask(addr: u128, bits: u32, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let shift = bits - u32::from(len);
        (addr >> shift) << shift
    }
}

impl<V: Copy + PartialEq> AllowedIps<V> {
    pub fn new() -> Self {
        Self {
            v4: Family::default(),
            v6: Family::default(),
        }
    }

    fn family(&mut self, v4: bool) -> &mut Family<V> {
        if v4 {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    /// Map `net` (host bits ignored) to `value`; returns the value it had before.
    pub fn insert(&mut self, net: IpNet, value: V) -> Option<V> {
        let (v4, len, addr) = key(&net.trunc());
        self.family(v4)
            .by_len
            .entry(len)
            .or_default()
            .insert(addr, value)
    }

    /// Remove `net`; returns its value.
    pub fn remove(&mut self, net: IpNet) -> Option<V> {
        let (v4, len, addr) = key(&net.trunc());
        let family = self.family(v4);
        let map = family.by_len.get_mut(&len)?;
        let old = map.remove(&addr);
        if map.is_empty() {
            family.by_len.remove(&len);
        }
        old
    }

    /// Remove every prefix that maps to `value`.
    pub fn remove_value(&mut self, value: V) {
        for family in [&mut self.v4, &mut self.v6] {
            for map in family.by_len.values_mut() {
                map.retain(|_, v| *v != value);
            }
            family.by_len.retain(|_, map| !map.is_empty());
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<V> {
        let (family, bits, addr) = match addr {
            IpAddr::V4(a) => (&self.v4, 32, u128::from(u32::from(a))),
            IpAddr::V6(a) => (&self.v6, 128, u128::from(a)),
        };
        family
            .by_len
            .iter()
            .rev()
            .find_map(|(&len, map)| map.get(&mask(addr, bits, len)).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 1);
        t.insert(net("10.0.0.0/8"), 2);
        t.insert(net("10.1.0.0/16"), 3);
        t.insert(net("10.1.2.3/32"), 4);
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(1));
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(2));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(3));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(4));
        assert_eq!(t.lookup(ip("::1")), None, "families are separate");
    }

    #[test]
    fn host_bits_are_ignored_and_v6_works() {
        let mut t = AllowedIps::new();
        t.insert(net("fd00::1234/64"), 7);
        t.insert(net("::/0"), 8);
        assert_eq!(t.lookup(ip("fd00::ffff")), Some(7));
        assert_eq!(t.lookup(ip("fd01::1")), Some(8));
        assert_eq!(t.lookup(ip("0.0.0.0")), None);
    }

    #[test]
    fn insert_replaces_and_remove_value_clears() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("10.0.0.0/24"), 1), None);
        assert_eq!(t.insert(net("10.0.0.9/24"), 2), Some(1));
        t.insert(net("10.0.1.0/24"), 2);
        t.insert(net("10.0.2.0/24"), 3);
        t.remove_value(2);
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        assert_eq!(t.lookup(ip("10.0.2.1")), Some(3));
        assert_eq!(t.remove(net("10.0.2.0/24")), Some(3));
        assert_eq!(t.lookup(ip("10.0.2.1")), None);
    }
}
