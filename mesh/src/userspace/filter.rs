//! The receive filter (cryptokey routing): a decrypted packet goes to the TUN device only
//! if it is a whole IP packet whose source address belongs to the peer that sent it.
//!
//! boringtun checks the version and that the length field does not exceed what was
//! decrypted, but passes on a header cut short by its own length field (IPv4 total
//! length below 20 bytes): the source address it reports then lies beyond the packet
//! written. The filter reads the source from the packet itself, so what is checked is
//! what is delivered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::allowed_ips::AllowedIps;

/// Why a decrypted packet is not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a whole IPv4/IPv6 packet: header shorter than its minimum or than its own IHL,
    /// or length fields beyond the packet.
    Malformed,
    /// The source address is not among the sending peer's allowed IPs.
    BadSource,
}

/// The source address of a whole IPv4 or IPv6 packet at the start of `packet`.
pub(crate) fn source(packet: &[u8]) -> Option<IpAddr> {
    // The fixed-size header arrays are indexed with constants, checked at compile time.
    match packet.first()? >> 4 {
        4 => {
            let ip: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (20 <= ihl && ihl <= total && total <= packet.len())
                .then(|| Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]).into())
        }
        6 => {
            let ip: &[u8; 40] = packet.get(..40)?.try_into().ok()?;
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            (40 + payload <= packet.len()).then(|| Ipv6Addr::from(src).into())
        }
        _ => None,
    }
}

/// Whether peer `peer` may send `packet` into the TUN device: its source address is in
/// the peer's allowed IPs (the longest matching prefix is the peer's).
pub(crate) fn check(table: &AllowedIps<u32>, peer: u32, packet: &[u8]) -> Result<(), Refused> {
    let src = source(packet).ok_or(Refused::Malformed)?;
    if table.lookup(src) == Some(peer) {
        Ok(())
    } else {
        Err(Refused::BadSource)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ipnet::IpNet;

    use super::*;

    /// Addresses from a small set, so that prefixes overlap and packets hit them.
    fn v4(pick: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, pick >> 6 & 1, pick >> 4 & 3, pick & 0x0f)
    }

    fn v6(pick: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0,
            u16::from(pick >> 6 & 1),
            0,
            0,
            0,
            u16::from(pick >> 4 & 3),
            u16::from(pick & 0x0f),
        )
    }

    const V4_LENS: [u8; 6] = [0, 8, 16, 24, 30, 32];
    const V6_LENS: [u8; 6] = [0, 48, 64, 96, 126, 128];

    /// One allowed-IPs entry: `peer` (of 3) gets a prefix of a picked address.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Entry {
        #[generator(0u32..3)]
        peer: u32,
        v6: bool,
        addr: u8,
        #[generator(0usize..6)]
        len: usize,
    }

    impl Entry {
        fn net(&self) -> IpNet {
            let net = if self.v6 {
                IpNet::new(v6(self.addr).into(), V6_LENS[self.len])
            } else {
                IpNet::new(v4(self.addr).into(), V4_LENS[self.len])
            };
            net.expect("valid prefix length").trunc()
        }
    }

    /// A decrypted packet from a picked source, whole or damaged.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Inner {
        v6: bool,
        src: u8,
        #[generator(0usize..64)]
        payload: usize,
        /// 0: IPv4 IHL below 5 or beyond the total length; 1: length field beyond the
        /// packet; 2: cut short at `at`; else whole.
        #[generator(0u8..6)]
        damage: u8,
        at: u8,
    }

    impl Inner {
        fn src(&self) -> IpAddr {
            if self.v6 {
                v6(self.src).into()
            } else {
                v4(self.src).into()
            }
        }

        fn build(&self) -> Vec<u8> {
            let mut p = if self.v6 {
                let mut h = vec![0x60, 0, 0, 0, 0, self.payload as u8, 6, 64];
                h.extend_from_slice(&v6(self.src).octets());
                h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                h
            } else {
                let total = 20 + self.payload as u8;
                let mut h = vec![0x45, 0, 0, total, 0, 0, 0, 0, 64, 6, 0, 0];
                h.extend_from_slice(&v4(self.src).octets());
                h.extend_from_slice(&[10, 9, 9, 9]);
                h
            };
            p.extend(std::iter::repeat_n(0xab, self.payload));
            match self.damage {
                0 if !self.v6 => p[0] = 0x40 | self.ihl_field(),
                1 => {
                    let field = if self.v6 { 5 } else { 3 };
                    p[field] += 1;
                }
                2 => p.truncate(usize::from(self.at) % p.len()),
                _ => {}
            }
            p
        }

        /// The damaged IHL: 0 to 4 (below the minimum), or 12 to 15 (options that may
        /// or may not fit the total length).
        fn ihl_field(&self) -> u8 {
            let high = if self.at & 0x80 != 0 { 0x0c } else { 0 };
            (self.at % 5) | high
        }

        /// Whether the packet is still a whole IP packet.
        fn whole(&self) -> bool {
            match self.damage {
                0 if !self.v6 => {
                    let ihl = usize::from(self.ihl_field()) * 4;
                    ihl >= 20 && ihl <= 20 + self.payload
                }
                1 | 2 => false,
                _ => true,
            }
        }
    }

    /// Fuzz target: for any allowed-IPs table (overlapping prefixes of three peers, later
    /// entries taking a prefix over) and any packet, the filter accepts exactly the whole
    /// packets whose source's longest matching prefix belongs to the sending peer, checked
    /// against a plain list of prefixes.
    #[test]
    fn fuzz_filter_accepts_exactly_the_peers_sources() {
        bolero::check!()
            .with_type::<(Vec<Entry>, Inner, u32)>()
            .with_iterations(3000)
            .for_each(|(entries, inner, sender)| {
                let sender = sender % 3;
                let mut table = AllowedIps::new();
                let mut model = BTreeMap::new();
                for e in entries {
                    table.insert(e.net(), e.peer);
                    model.insert(e.net(), e.peer);
                }
                let src = inner.src();
                let owner = model
                    .iter()
                    .filter(|(net, _)| net.contains(&src))
                    .max_by_key(|(net, _)| net.prefix_len())
                    .map(|(_, &peer)| peer);
                let want = if !inner.whole() {
                    Err(Refused::Malformed)
                } else if owner == Some(sender) {
                    Ok(())
                } else {
                    Err(Refused::BadSource)
                };
                assert_eq!(check(&table, sender, &inner.build()), want);
            });
    }

    /// Fuzz target: any bytes. A source is found only in a whole IPv4/IPv6 packet, and it
    /// is the address in the header.
    #[test]
    fn fuzz_source_of_any_bytes() {
        bolero::check!()
            .with_iterations(5000)
            .for_each(|bytes: &[u8]| {
                let Some(src) = source(bytes) else {
                    return;
                };
                match src {
                    IpAddr::V4(a) => {
                        assert_eq!(bytes[0] >> 4, 4);
                        let ihl = usize::from(bytes[0] & 0x0f) * 4;
                        let total = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                        assert!(ihl >= 20 && ihl <= total && total <= bytes.len());
                        assert_eq!(a.octets(), bytes[12..16]);
                    }
                    IpAddr::V6(a) => {
                        assert_eq!(bytes[0] >> 4, 6);
                        let payload = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
                        assert!(40 + payload <= bytes.len());
                        assert_eq!(a.octets(), bytes[8..24]);
                    }
                }
            });
    }

    #[test]
    fn short_and_odd_headers_are_malformed() {
        let table = AllowedIps::new();
        let mut whole = vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        assert_eq!(check(&table, 0, &whole), Err(Refused::BadSource));
        // What boringtun hands over for an IPv4 total length of 5: five bytes.
        assert_eq!(check(&table, 0, &whole[..5]), Err(Refused::Malformed));
        whole[0] = 0x46;
        assert_eq!(
            check(&table, 0, &whole),
            Err(Refused::Malformed),
            "IHL beyond total"
        );
        whole[0] = 0x44;
        assert_eq!(
            check(&table, 0, &whole),
            Err(Refused::Malformed),
            "IHL below 5"
        );
        assert_eq!(check(&table, 0, &[0x60; 39]), Err(Refused::Malformed));
        assert_eq!(check(&table, 0, &[]), Err(Refused::Malformed));
    }
}
