//! A captured IP packet and helpers to look inside it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// One captured IPv4 or IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The packet from the IP header on (link-layer header and Ethernet padding removed).
    pub data: Vec<u8>,
    /// Capture time, since the Unix epoch.
    pub timestamp: Duration,
    /// Length of the frame on the wire (may exceed the captured length).
    pub orig_len: u32,
}

/// The UDP part of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The datagram's payload (as captured).
    pub payload: &'a [u8],
}

impl Packet {
    /// 4 or 6 (0 for an empty packet).
    pub fn version(&self) -> u8 {
        self.data.first().map_or(0, |b| b >> 4)
    }

    /// Source address, if the header is complete.
    pub fn src(&self) -> Option<IpAddr> {
        self.addr(12, 8)
    }

    /// Destination address, if the header is complete.
    pub fn dst(&self) -> Option<IpAddr> {
        self.addr(16, 24)
    }

    fn addr(&self, v4_offset: usize, v6_offset: usize) -> Option<IpAddr> {
        match self.version() {
            4 => {
                let b: [u8; 4] = self.data.get(v4_offset..v4_offset + 4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            }
            6 => {
                let b: [u8; 16] = self.data.get(v6_offset..v6_offset + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        }
    }

    /// The transport protocol number and the offset of the transport header, if this is the
    /// first (or only) fragment. IPv6 hop-by-hop, routing and destination-options headers are skipped.
    pub fn transport(&self) -> Option<(u8, usize)> {
        let d = &self.data;
        match self.version() {
            4 => {
                let ihl = usize::from(*d.first()? & 0x0f) * 4;
                let frag_offset = u16::from_be_bytes([*d.get(6)? & 0x1f, *d.get(7)?]);
                (ihl >= 20 && frag_offset == 0 && d.len() >= ihl).then_some((*d.get(9)?, ihl))
            }
            6 => {
                let mut next = *d.get(6)?;
                let mut offset = 40;
                loop {
                    match next {
                        0 | 43 | 60 => {
                            next = *d.get(offset)?;
                            offset += (usize::from(*d.get(offset + 1)?) + 1) * 8;
                        }
                        44 => {
                            let frag =
                                u16::from_be_bytes([*d.get(offset + 2)?, *d.get(offset + 3)?]);
                            if frag >> 3 != 0 {
                                return None;
                            }
                            next = *d.get(offset)?;
                            offset += 8;
                        }
                        proto => return (d.len() >= offset).then_some((proto, offset)),
                    }
                }
            }
            _ => None,
        }
    }

    /// The IP protocol number of the transport header (17 for UDP, ...).
    pub fn protocol(&self) -> Option<u8> {
        self.transport().map(|(proto, _)| proto)
    }

    /// The UDP header fields and payload, if this is a UDP packet.
    pub fn udp(&self) -> Option<Udp<'_>> {
        let (proto, off) = self.transport()?;
        if proto != IPPROTO_UDP {
            return None;
        }
        let hdr = self.data.get(off..off + 8)?;
        let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
        let end = (off + len.max(8)).min(self.data.len());
        Some(Udp {
            src_port: u16::from_be_bytes([hdr[0], hdr[1]]),
            dst_port: u16::from_be_bytes([hdr[2], hdr[3]]),
            payload: &self.data[off + 8..end],
        })
    }

    /// The UDP payload, if this is a UDP packet.
    pub fn udp_payload(&self) -> Option<&[u8]> {
        self.udp().map(|u| u.payload)
    }

    /// True if this is UDP from or to `port`.
    pub fn is_udp(&self, port: u16) -> bool {
        self.udp()
            .is_some_and(|u| u.src_port == port || u.dst_port == port)
    }

    /// True if this is TCP from or to `port`.
    pub fn is_tcp(&self, port: u16) -> bool {
        match self.transport() {
            Some((IPPROTO_TCP, off)) => match self.data.get(off..off + 4) {
                Some(h) => {
                    u16::from_be_bytes([h[0], h[1]]) == port
                        || u16::from_be_bytes([h[2], h[3]]) == port
                }
                None => false,
            },
            _ => false,
        }
    }

    /// True if this is ICMP (v4) or ICMPv6.
    pub fn is_icmp(&self) -> bool {
        matches!(self.protocol(), Some(IPPROTO_ICMP | IPPROTO_ICMPV6))
    }

    /// True if `needle` occurs anywhere in the packet (headers included). An empty needle matches.
    pub fn contains(&self, needle: &[u8]) -> bool {
        needle.is_empty() || self.data.windows(needle.len()).any(|w| w == needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 + UDP 1000 -> 2000 carrying `payload`.
    pub(crate) fn udp4(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut d = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ];
        d.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        let ulen = 8 + payload.len();
        d.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn ipv4_udp_fields() {
        let p = Packet {
            data: udp4(b"hello"),
            timestamp: Duration::ZERO,
            orig_len: 47,
        };
        assert_eq!(p.version(), 4);
        assert_eq!(p.src(), Some("198.18.0.1".parse().expect("addr")));
        assert_eq!(p.dst(), Some("198.18.0.2".parse().expect("addr")));
        assert_eq!(p.udp_payload(), Some(&b"hello"[..]));
        assert!(p.is_udp(1000) && p.is_udp(2000) && !p.is_udp(3000));
        assert!(!p.is_tcp(1000));
        assert!(p.contains(b"ell") && !p.contains(b"world"));
    }

    #[test]
    fn ipv6_udp_after_hop_by_hop() {
        let mut d = vec![0x60, 0, 0, 0, 0, 0, 0 /* next: hop-by-hop */, 64];
        d.extend_from_slice(&[0xfd; 16]);
        d.extend_from_slice(&[0xfe; 16]);
        d.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]); // hop-by-hop, 8 bytes, next UDP
        d.extend_from_slice(&[0, 53, 0, 54, 0, 10, 0, 0, b'h', b'i']);
        let payload_len = (d.len() - 40) as u16;
        d[4..6].copy_from_slice(&payload_len.to_be_bytes());
        let p = Packet {
            data: d,
            timestamp: Duration::ZERO,
            orig_len: 0,
        };
        assert_eq!(p.version(), 6);
        assert_eq!(p.src(), Some(IpAddr::V6(Ipv6Addr::from([0xfd; 16]))));
        assert_eq!(p.udp_payload(), Some(&b"hi"[..]));
        assert!(p.is_udp(53));
    }

    #[test]
    fn truncated_headers_give_none_not_panic() {
        for len in 0..30 {
            let p = Packet {
                data: udp4(b"payload")[..len].to_vec(),
                timestamp: Duration::ZERO,
                orig_len: 0,
            };
            let _ = (p.src(), p.dst(), p.udp(), p.is_tcp(1), p.is_icmp());
            if len < 28 {
                assert_eq!(p.udp(), None, "len {len}");
            }
        }
    }

    #[test]
    fn later_fragment_has_no_transport() {
        let mut d = udp4(b"x");
        d[6] = 0x00;
        d[7] = 0x10; // fragment offset 16*8
        let p = Packet {
            data: d,
            timestamp: Duration::ZERO,
            orig_len: 0,
        };
        assert_eq!(p.transport(), None);
    }
}
