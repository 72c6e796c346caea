//! A small reader for classic pcap files (what `tcpdump -w` writes).
//!
//! Handles both byte orders, micro- and nanosecond timestamps, and the link types tcpdump
//! produces on Linux: Ethernet, Linux cooked (SLL and SLL2) and raw IP. Only IPv4 and IPv6
//! packets are returned; ARP and other non-IP frames are skipped.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::packet::Packet;

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW_BSD: u32 = 12;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Reads and parses a complete pcap file.
pub fn read_pcap(path: &Path) -> Result<Vec<Packet>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading capture {}", path.display()), e))?;
    parse_pcap(&bytes, false)
}

/// Parses pcap bytes. With `allow_partial`, a file still being written (short header, last
/// record cut off) yields the complete packets so far instead of an error.
pub fn parse_pcap(bytes: &[u8], allow_partial: bool) -> Result<Vec<Packet>> {
    if bytes.len() < 24 {
        return if allow_partial || bytes.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Error::Pcap(format!(
                "file header cut off at {} bytes",
                bytes.len()
            )))
        };
    }
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let (big_endian, nanos) = match magic {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        other => return Err(Error::Pcap(format!("unknown magic {other:#010x}"))),
    };
    let word = |at: usize| -> u32 {
        let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    // The low 16 bits hold the link type; the upper bits may carry FCS flags.
    let linktype = word(20) & 0xffff;
    if !matches!(
        linktype,
        LINKTYPE_ETHERNET
            | LINKTYPE_RAW_BSD
            | LINKTYPE_RAW
            | LINKTYPE_LINUX_SLL
            | LINKTYPE_LINUX_SLL2
    ) {
        return Err(Error::Pcap(format!("unsupported link type {linktype}")));
    }

    let mut packets = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        if bytes.len() - at < 16 {
            return truncated(allow_partial, packets, at);
        }
        let secs = word(at);
        let frac = word(at + 4);
        let incl_len = word(at + 8) as usize;
        let orig_len = word(at + 12);
        let start = at + 16;
        let Some(frame) = bytes.get(start..start.saturating_add(incl_len)) else {
            return truncated(allow_partial, packets, at);
        };
        at = start + incl_len;
        let timestamp = Duration::from_secs(u64::from(secs))
            + if nanos {
                Duration::from_nanos(u64::from(frac))
            } else {
                Duration::from_micros(u64::from(frac))
            };
        if let Some(ip) = ip_of_frame(linktype, frame) {
            packets.push(Packet {
                data: trim_to_ip_length(ip).to_vec(),
                timestamp,
                orig_len,
            });
        }
    }
    Ok(packets)
}

fn truncated(allow_partial: bool, packets: Vec<Packet>, at: usize) -> Result<Vec<Packet>> {
    if allow_partial {
        Ok(packets)
    } else {
        Err(Error::Pcap(format!("record at byte {at} cut off")))
    }
}

/// Strips the link-layer header; `None` for frames that are not IPv4/IPv6.
fn ip_of_frame(linktype: u32, frame: &[u8]) -> Option<&[u8]> {
    let (ethertype, rest) = match linktype {
        LINKTYPE_ETHERNET => {
            let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
            let mut off = 14;
            // 802.1Q / 802.1ad tags.
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                ethertype = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
                off += 4;
            }
            (ethertype, frame.get(off..)?)
        }
        LINKTYPE_LINUX_SLL => (
            u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]),
            frame.get(16..)?,
        ),
        LINKTYPE_LINUX_SLL2 => (
            u16::from_be_bytes([*frame.first()?, *frame.get(1)?]),
            frame.get(20..)?,
        ),
        _ => match frame.first()? >> 4 {
            4 => (ETHERTYPE_IPV4, frame),
            6 => (ETHERTYPE_IPV6, frame),
            _ => return None,
        },
    };
    let version = rest.first()? >> 4;
    match (ethertype, version) {
        (ETHERTYPE_IPV4, 4) | (ETHERTYPE_IPV6, 6) => Some(rest),
        _ => None,
    }
}

/// Drops link-layer padding after the IP packet (short Ethernet frames are padded to 60 bytes).
fn trim_to_ip_length(ip: &[u8]) -> &[u8] {
    let len = match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 4 => usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        Some(6) if ip.len() >= 6 => 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        _ => ip.len(),
    };
    if len > 0 && len <= ip.len() {
        &ip[..len]
    } else {
        ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut d = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        d[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        d.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0]);
        d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(payload);
        d
    }

    fn file(big_endian: bool, nanos: bool, linktype: u32, frames: &[Vec<u8>]) -> Vec<u8> {
        let w32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut f = Vec::new();
        f.extend_from_slice(&w32(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
        f.extend_from_slice(&w16(2));
        f.extend_from_slice(&w16(4));
        f.extend_from_slice(&w32(0));
        f.extend_from_slice(&w32(0));
        f.extend_from_slice(&w32(262_144));
        f.extend_from_slice(&w32(linktype));
        for (i, frame) in frames.iter().enumerate() {
            f.extend_from_slice(&w32(1_700_000_000 + i as u32));
            f.extend_from_slice(&w32(500));
            f.extend_from_slice(&w32(frame.len() as u32));
            f.extend_from_slice(&w32(frame.len() as u32));
            f.extend_from_slice(frame);
        }
        f
    }

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        while f.len() < 60 {
            f.push(0); // Ethernet padding
        }
        f
    }

    #[test]
    fn ethernet_both_byte_orders_with_padding_and_arp_skipped() {
        for big_endian in [false, true] {
            let frames = vec![
                ethernet(0x0806, &[0; 28]),
                ethernet(ETHERTYPE_IPV4, &udp4(b"abc")),
            ];
            let packets = parse_pcap(&file(big_endian, false, 1, &frames), false).expect("parse");
            assert_eq!(packets.len(), 1);
            assert_eq!(packets[0].data, udp4(b"abc"), "padding must be trimmed");
            assert_eq!(packets[0].udp_payload(), Some(&b"abc"[..]));
            assert_eq!(packets[0].timestamp, Duration::new(1_700_000_001, 500_000));
        }
    }

    #[test]
    fn vlan_tagged_ethernet() {
        let mut inner = vec![0, 5];
        inner.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        inner.extend_from_slice(&udp4(b"tagged"));
        let packets =
            parse_pcap(&file(false, false, 1, &[ethernet(0x8100, &inner)]), false).expect("parse");
        assert_eq!(packets[0].udp_payload(), Some(&b"tagged"[..]));
    }

    #[test]
    fn linux_sll_and_sll2_and_raw() {
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        sll.extend_from_slice(&udp4(b"sll"));
        let mut sll2 = ETHERTYPE_IPV4.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.extend_from_slice(&udp4(b"sll2"));
        for (linktype, frame, want) in [
            (113, sll, &b"sll"[..]),
            (276, sll2, &b"sll2"[..]),
            (101, udp4(b"raw"), &b"raw"[..]),
        ] {
            let packets = parse_pcap(&file(false, true, linktype, &[frame]), false).expect("parse");
            assert_eq!(packets.len(), 1, "linktype {linktype}");
            assert_eq!(packets[0].udp_payload(), Some(want));
            assert_eq!(packets[0].timestamp, Duration::new(1_700_000_000, 500));
        }
    }

    #[test]
    fn truncation_is_an_error_unless_partial_allowed() {
        let full = file(
            false,
            false,
            1,
            &[
                ethernet(ETHERTYPE_IPV4, &udp4(b"one")),
                ethernet(ETHERTYPE_IPV4, &udp4(b"two")),
            ],
        );
        let cut = &full[..full.len() - 5];
        assert!(matches!(parse_pcap(cut, false), Err(Error::Pcap(_))));
        let partial = parse_pcap(cut, true).expect("partial parse");
        assert_eq!(partial.len(), 1);
        assert_eq!(
            parse_pcap(&full[..10], true).expect("short header").len(),
            0
        );
        assert!(parse_pcap(&full[..10], false).is_err());
        assert!(parse_pcap(&[], false).expect("empty file").is_empty());
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        assert!(matches!(
            parse_pcap(&[0x55; 40], false),
            Err(Error::Pcap(_))
        ));
        let mut f = file(false, false, 1, &[]);
        f[20] = 99; // unknown link type
        assert!(matches!(parse_pcap(&f, false), Err(Error::Pcap(_))));
        // A record claiming a huge length.
        let mut f = file(false, false, 1, &[vec![0; 4]]);
        let n = f.len();
        f[n - 12..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_pcap(&f, false).is_err());
    }
}
