//! Receive-side coalescing (GRO) for the TUN device: decrypted TCP segments of one flow
//! that arrive back to back become one large packet, written with a `virtio_net_hdr` that
//! asks the kernel to treat it as a TCP super-segment (`GSO_TCPV4`/`GSO_TCPV6`).
//!
//! The receiving TCP stack then handles one packet instead of dozens, which is where the
//! receiving side spent most of its time (one `writev` per MTU-sized packet, each running
//! the whole TCP input path). The rules follow the kernel's own `tcp_gro_receive`: same
//! addresses, ports, ACK number, window and options (timestamps included); sequence numbers
//! contiguous; every segment but the last one exactly `gso_size` long; only ACK (and PSH on
//! the last) set. A segment whose TCP checksum is wrong is never merged: it is written as
//! it came so the kernel drops it, as it would have without coalescing.
//!
//! Nothing is held across a batch: the engine flushes at the end of every batch of
//! datagrams, so coalescing adds no latency.

use super::offload::{fold, sum, VnetHdr, VNET_HDR_LEN};

const F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const TCP_CSUM_OFFSET: u16 = 16;
/// IPv4 total length and IPv6 payload length are 16 bits; stay within both.
const MAX_COALESCED: usize = 65_535 - 40;

/// The header for a packet written as it is (checksums complete, no segmentation).
pub(crate) const PLAIN_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Where a TCP segment's parts are, once it passed the checks that make it mergeable.
#[derive(Debug, Clone, Copy)]
struct Segment {
    v4: bool,
    /// Length of the IP header (= start of TCP).
    ip_len: usize,
    /// Length of IP and TCP headers (= start of payload).
    hdr_len: usize,
    seq: u32,
    flags: u8,
}

/// Coalesces decrypted packets into TUN writes. Owns one reused buffer (no allocation per
/// packet).
pub(crate) struct Coalescer {
    /// The pending super-segment: its IP packet, without the `virtio_net_hdr`.
    buf: Vec<u8>,
    len: usize,
    /// Segments merged into `buf` (0: nothing pending).
    count: usize,
    head: Option<Segment>,
    gso_size: usize,
    next_seq: u32,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Self {
        Self {
            buf: vec![0; MAX_COALESCED + 64],
            len: 0,
            count: 0,
            head: None,
            gso_size: 0,
            next_seq: 0,
        }
    }

    /// Take one decrypted IP packet. `write` gets a `virtio_net_hdr` and a packet, for
    /// every packet that leaves (now, or at a later `push`/`flush`), in arrival order.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8], &[u8])) {
        let Some(seg) = mergeable(packet) else {
            self.flush(write);
            write(&PLAIN_HDR, packet);
            return;
        };
        if self.count > 0 && self.can_append(&seg, packet) {
            let payload = &packet[seg.hdr_len..];
            self.buf[self.len..self.len + payload.len()].copy_from_slice(payload);
            self.len += payload.len();
            self.count += 1;
            self.next_seq = seg.seq.wrapping_add(payload.len() as u32);
            if payload.len() < self.gso_size || seg.flags & TCP_PSH != 0 {
                // The kernel's rule: a short or pushed segment ends the super-segment.
                self.buf[seg.ip_len + 13] |= seg.flags & TCP_PSH;
                self.flush(write);
            }
            return;
        }
        self.flush(write);
        if seg.flags & TCP_PSH != 0 {
            write(&PLAIN_HDR, packet);
            return;
        }
        self.buf[..packet.len()].copy_from_slice(packet);
        self.len = packet.len();
        self.count = 1;
        self.gso_size = packet.len() - seg.hdr_len;
        self.next_seq = seg.seq.wrapping_add(self.gso_size as u32);
        self.head = Some(seg);
    }

    fn can_append(&self, seg: &Segment, packet: &[u8]) -> bool {
        let Some(head) = self.head else {
            return false;
        };
        let payload = packet.len() - seg.hdr_len;
        if head.v4 != seg.v4
            || head.hdr_len != seg.hdr_len
            || seg.seq != self.next_seq
            || payload > self.gso_size
            || self.len + payload > MAX_COALESCED
        {
            return false;
        }
        let pending = &self.buf[..head.hdr_len];
        let ip_same = if seg.v4 {
            // Version/IHL/TOS, flags/fragment/TTL/protocol, addresses; not the ID.
            pending[..2] == packet[..2]
                && pending[6..10] == packet[6..10]
                && pending[12..20] == packet[12..20]
        } else {
            // Version/class/flow label, next header/hop limit, addresses.
            pending[..4] == packet[..4] && pending[6..40] == packet[6..40]
        };
        let t = seg.ip_len;
        // Ports, ACK, data offset, window, urgent pointer and options; not seq/flags/csum.
        ip_same
            && pending[t..t + 4] == packet[t..t + 4]
            && pending[t + 8..t + 13] == packet[t + 8..t + 13]
            && pending[t + 14..t + 16] == packet[t + 14..t + 16]
            && pending[t + 18..seg.hdr_len] == packet[t + 18..seg.hdr_len]
    }

    /// Write what is pending: as it came if it is one segment, else as a super-segment.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8], &[u8])) {
        let count = std::mem::take(&mut self.count);
        let Some(head) = self.head.take() else {
            return;
        };
        let packet = &mut self.buf[..self.len];
        if count == 1 {
            write(&PLAIN_HDR, packet);
            return;
        }
        let len = packet.len();
        let t = head.ip_len;
        if head.v4 {
            packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            packet[10..12].fill(0);
            let csum = !fold(sum(&packet[..t], 0));
            packet[10..12].copy_from_slice(&csum.to_be_bytes());
        } else {
            packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not inverted.
        let addrs = if head.v4 {
            &packet[12..20]
        } else {
            &packet[8..40]
        };
        let pseudo = fold(sum(addrs, u64::from(TCP) + (len - t) as u64));
        packet[t + 16..t + 18].copy_from_slice(&pseudo.to_be_bytes());
        // Header and segment sizes are below MAX_COALESCED: they fit 16 bits.
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if head.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: head.hdr_len as u16,
            gso_size: self.gso_size as u16,
            csum_start: t as u16,
            csum_offset: TCP_CSUM_OFFSET,
        };
        write(&hdr.encode(), packet);
    }
}

/// A TCP segment with payload, only ACK (and maybe PSH) set, no IP options, fragments or
/// IPv6 extension headers, and correct checksums. Anything else, truncated or odd shapes
/// included, is `None`: the packet is written as it came and the kernel judges it.
fn mergeable(packet: &[u8]) -> Option<Segment> {
    // The fixed-size header arrays below are indexed with constants, checked at compile time.
    let (v4, ip_len) = match packet.first()? >> 4 {
        4 => {
            let ip: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            // IHL 5: no options. A wrong header checksum is the kernel's to drop.
            if ip[0] & 0x0f != 5
                || ip[9] != TCP
                || fragment != 0
                || total != packet.len()
                || fold(sum(ip, 0)) != 0xffff
            {
                return None;
            }
            (true, 20)
        }
        6 => {
            let ip: &[u8; 40] = packet.get(..40)?.try_into().ok()?;
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[6] != TCP || payload + 40 != packet.len() {
                return None;
            }
            (false, 40)
        }
        _ => return None,
    };
    // Keeps every copy into the coalescing buffer in bounds (an IPv6 packet may be longer
    // than an IPv4 one).
    if packet.len() > MAX_COALESCED {
        return None;
    }
    let tcp = packet.get(ip_len..)?;
    let fixed: &[u8; 20] = tcp.get(..20)?.try_into().ok()?;
    let doff = usize::from(fixed[12] >> 4) * 4;
    let flags = fixed[13];
    if doff < 20 || tcp.len() <= doff || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    let addrs = packet.get(if v4 { 12..20 } else { 8..40 })?;
    if fold(sum(tcp, sum(addrs, u64::from(TCP) + tcp.len() as u64))) != 0xffff {
        return None;
    }
    Some(Segment {
        v4,
        ip_len,
        hdr_len: ip_len + doff,
        seq: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::super::offload::segment;
    use super::*;

    const SRC4: [u8; 4] = [192, 0, 2, 1];
    const DST4: [u8; 4] = [198, 51, 100, 9];
    const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const SEQ: u32 = 0xffff_f800; // wraps within the tests

    /// RFC 1071, 16 bits at a time: independent of `sum`/`fold`.
    fn rfc1071(chunks: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = chunks.concat();
        let mut acc: u32 = 0;
        for pair in bytes.chunks(2) {
            acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// One TCP/IP packet with correct checksums.
    fn packet(v4: bool, seq: u32, flags: u8, data: &[u8], port: u16) -> Vec<u8> {
        let mut tcp = vec![0u8; 32];
        tcp[0..2].copy_from_slice(&port.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&99u32.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&500u16.to_be_bytes());
        tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        tcp.extend_from_slice(data);
        let tcp_len = (tcp.len() as u16).to_be_bytes();
        let mut p = if v4 {
            let total = ((20 + tcp.len()) as u16).to_be_bytes();
            let mut h = vec![0x45, 0, total[0], total[1], 0, 7, 0x40, 0, 64, TCP, 0, 0];
            h.extend_from_slice(&SRC4);
            h.extend_from_slice(&DST4);
            let c = rfc1071(&[&h]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let c = rfc1071(&[&SRC4, &DST4, &[0, TCP], &tcp_len, &tcp]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            h
        } else {
            let mut h = vec![0x60, 0, 0, 0, tcp_len[0], tcp_len[1], TCP, 64];
            h.extend_from_slice(&SRC6);
            h.extend_from_slice(&DST6);
            let c = rfc1071(&[&SRC6, &DST6, &[0, 0], &tcp_len, &[0, 0, 0, TCP], &tcp]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            h
        };
        p.extend_from_slice(&tcp);
        p
    }

    fn data(len: usize, from: usize) -> Vec<u8> {
        (from..from + len)
            .map(|i| (i * 13 + i / 253) as u8)
            .collect()
    }

    /// Push packets through a coalescer, flush, and return what was written.
    fn coalesce(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        let mut write = |h: &[u8], p: &[u8]| {
            out.push((VnetHdr::parse(h).expect("header"), p.to_vec()));
        };
        for p in packets {
            c.push(p, &mut write);
        }
        c.flush(&mut write);
        out
    }

    /// A stream of `n` segments of `mss` (the last `last` long) from SEQ.
    fn stream(v4: bool, n: usize, mss: usize, last: usize, last_flags: u8) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { mss };
                let flags = if i + 1 == n { last_flags } else { TCP_ACK };
                let seq = SEQ.wrapping_add((i * mss) as u32);
                packet(v4, seq, flags, &data(len, i * mss), 40000)
            })
            .collect()
    }

    /// The kernel's view: split the super-segment again (offload.rs, tested on its own)
    /// and check each resulting packet equals what was sent, checksums included.
    fn resplit(hdr: &VnetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut packet = packet.to_vec();
        let mut scratch = vec![0u8; 65_535];
        let mut out = Vec::new();
        segment(hdr, &mut packet, &mut scratch, |p| out.push(p.to_vec())).expect("valid");
        out
    }

    #[test]
    fn a_run_of_segments_becomes_one_super_segment_v4_and_v6() {
        for v4 in [true, false] {
            let sent = stream(v4, 10, 1368, 500, TCP_ACK | TCP_PSH);
            let out = coalesce(&sent);
            assert_eq!(out.len(), 1, "one write");
            let (hdr, big) = &out[0];
            assert_eq!(hdr.gso_type, if v4 { GSO_TCPV4 } else { GSO_TCPV6 });
            assert_eq!(hdr.flags, F_NEEDS_CSUM);
            assert_eq!(usize::from(hdr.gso_size), 1368);
            let ip = if v4 { 20 } else { 40 };
            assert_eq!(usize::from(hdr.hdr_len), ip + 32);
            assert_eq!(usize::from(hdr.csum_start), ip);
            assert_eq!(big.len(), ip + 32 + 9 * 1368 + 500);
            let again = resplit(hdr, big);
            if v4 {
                // The split gives incrementing IDs; everything else must match exactly.
                for (i, (a, b)) in again.iter().zip(&sent).enumerate() {
                    assert_eq!(a[..4], b[..4]);
                    assert_eq!(a[12..], b[12..], "segment {i}");
                }
                assert_eq!(again.len(), sent.len());
            } else {
                assert_eq!(again, sent);
            }
        }
    }

    #[test]
    fn anything_else_passes_through_unchanged_and_in_order() {
        let mut sent = stream(true, 3, 1000, 1000, TCP_ACK);
        // Another flow in between, a gap, a FIN, a pure ACK, a UDP packet, a bad checksum.
        sent.push(packet(
            true,
            SEQ.wrapping_add(3000),
            TCP_ACK,
            &data(1000, 0),
            40001,
        ));
        sent.push(packet(
            true,
            SEQ.wrapping_add(5000),
            TCP_ACK,
            &data(1000, 0),
            40000,
        ));
        sent.push(packet(
            true,
            SEQ.wrapping_add(6000),
            TCP_ACK | 1,
            &data(10, 0),
            40000,
        ));
        sent.push(packet(true, SEQ.wrapping_add(6010), TCP_ACK, &[], 40000));
        let mut udp = packet(true, 0, 0, &data(30, 0), 1);
        udp[9] = 17;
        sent.push(udp);
        let mut bad = packet(true, SEQ.wrapping_add(7000), TCP_ACK, &data(1000, 0), 40000);
        bad[60] ^= 1;
        sent.push(bad);
        let out = coalesce(&sent);
        assert_eq!(out.len(), 7, "the first three merged, the rest one by one");
        assert_eq!(out[0].0.gso_type, GSO_TCPV4);
        for ((hdr, p), want) in out[1..].iter().zip(&sent[3..]) {
            assert_eq!(hdr, &VnetHdr::parse(&PLAIN_HDR).expect("plain"));
            assert_eq!(p, want, "unchanged");
        }
    }

    #[test]
    fn a_single_segment_is_written_as_it_came() {
        let sent = stream(false, 1, 1000, 1000, TCP_ACK);
        let out = coalesce(&sent);
        assert_eq!(
            out,
            vec![(VnetHdr::parse(&PLAIN_HDR).expect("plain"), sent[0].clone())]
        );
    }

    #[test]
    fn a_short_segment_ends_the_run_and_a_long_one_is_not_merged() {
        let mut sent = stream(true, 3, 1000, 400, TCP_ACK);
        sent.push(packet(
            true,
            SEQ.wrapping_add(2400),
            TCP_ACK,
            &data(1000, 0),
            40000,
        ));
        sent.push(packet(
            true,
            SEQ.wrapping_add(3400),
            TCP_ACK,
            &data(1200, 0),
            40000,
        ));
        let out = coalesce(&sent);
        let shapes: Vec<(u8, usize)> = out.iter().map(|(h, p)| (h.gso_type, p.len())).collect();
        assert_eq!(
            shapes,
            vec![(GSO_TCPV4, 52 + 2400), (0, 52 + 1000), (0, 52 + 1200)]
        );
    }

    /// Decrypted packets are whatever a peer chose to encrypt: every truncated or odd shape
    /// is written as it came (the kernel drops it), none stops the coalescer, and a run
    /// around them still merges.
    #[test]
    fn malformed_packets_pass_through_and_never_panic() {
        let good = packet(true, SEQ, TCP_ACK, &data(100, 0), 40000);
        let good6 = packet(false, SEQ, TCP_ACK, &data(100, 0), 40000);
        let with_len = |mut p: Vec<u8>, total: usize| {
            if let Some(field) = p.get_mut(2..4) {
                field.copy_from_slice(&(total as u16).to_be_bytes());
            }
            p
        };
        let mut hostile = Vec::new();
        // The packet: IPv4 "TCP", 33 bytes, total length 33 (13 bytes of TCP).
        hostile.push(with_len(good[..33].to_vec(), 33));
        // Every truncation of a valid IPv4 and IPv6 segment, its length field matching.
        for cut in 0..good.len() {
            hostile.push(with_len(good[..cut].to_vec(), cut));
        }
        for cut in 0..good6.len() {
            let mut p = good6[..cut].to_vec();
            if cut >= 6 {
                p[4..6].copy_from_slice(&(cut.saturating_sub(40) as u16).to_be_bytes());
            }
            hostile.push(p);
        }
        // IHL beyond the packet, below 5, and with options; total length beyond the buffer.
        for ihl in [0u8, 4, 6, 15] {
            let mut p = good.clone();
            p[0] = 0x40 | ihl;
            hostile.push(p);
        }
        hostile.push(with_len(good.clone(), good.len() + 1));
        hostile.push(with_len(good[..33].to_vec(), 65_535));
        // Fragments (more-fragments, and an offset).
        for frag in [[0x20, 0], [0, 1]] {
            let mut p = good.clone();
            p[6..8].copy_from_slice(&frag);
            hostile.push(p);
        }
        // TCP data offset below 20 bytes and beyond the packet.
        for doff in [0u8, 4, 15] {
            let mut p = good.clone();
            p[20 + 12] = doff << 4;
            hostile.push(p);
            let mut p = good6.clone();
            p[40 + 12] = doff << 4;
            hostile.push(p);
        }
        // IPv6 whose payload length says more than there is, and a short TCP header.
        let mut p = good6.clone();
        p[4..6].copy_from_slice(&1000u16.to_be_bytes());
        hostile.push(p);
        let mut p = good6[..53].to_vec();
        p[4..6].copy_from_slice(&13u16.to_be_bytes());
        hostile.push(p);
        // Other versions.
        for v in [0u8, 5, 15] {
            let mut p = good.clone();
            p[0] = v << 4 | 5;
            hostile.push(p);
        }

        // With a valid IPv4 header checksum, so that the checks behind it are reached.
        for p in &mut hostile {
            if p.len() >= 20 && p[0] >> 4 == 4 {
                p[10..12].fill(0);
                let c = rfc1071(&[&p[..20]]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
        }

        let mut sent = stream(true, 2, 1000, 1000, TCP_ACK);
        sent.extend(hostile.iter().cloned());
        // The same flow goes on afterwards.
        for i in 2..4 {
            let seq = SEQ.wrapping_add(i * 1000);
            sent.push(packet(true, seq, TCP_ACK, &data(1000, 0), 40000));
        }
        let out = coalesce(&sent);
        assert_eq!(
            out.len(),
            hostile.len() + 2,
            "each odd packet alone, runs merged"
        );
        assert_eq!(out[0].0.gso_type, GSO_TCPV4);
        assert_eq!(resplit(&out[0].0, &out[0].1).len(), 2);
        for ((hdr, p), want) in out[1..=hostile.len()].iter().zip(&hostile) {
            assert_eq!(hdr, &VnetHdr::parse(&PLAIN_HDR).expect("plain"));
            assert_eq!(p, want, "written as it came");
        }
        assert_eq!(out[hostile.len() + 1].0.gso_type, GSO_TCPV4);
    }

    #[test]
    fn the_merged_packet_never_exceeds_the_ip_length_limit() {
        let sent = stream(true, 60, 1368, 1368, TCP_ACK);
        let out = coalesce(&sent);
        assert!(out.len() >= 2);
        let mut total = 0;
        for (hdr, p) in &out {
            assert!(p.len() <= 65_535);
            total += resplit(hdr, p).len();
        }
        assert_eq!(total, 60, "every segment still there");
    }

    /// What the receiving stack ends up with: every write split again (plain ones as they
    /// are), with the IPv4 ID and header checksum blanked (the split numbers IDs from the
    /// first segment's). Split IPv4 headers must carry a valid checksum.
    fn as_received(out: &[(VnetHdr, Vec<u8>)]) -> Vec<Vec<u8>> {
        let plain = VnetHdr::parse(&PLAIN_HDR).expect("plain");
        let mut packets = Vec::new();
        for (hdr, p) in out {
            assert!(p.len() <= 65_535, "an IP packet");
            if *hdr == plain {
                packets.push(p.clone());
            } else {
                for seg in resplit(hdr, p) {
                    if seg[0] >> 4 == 4 {
                        assert_eq!(rfc1071(&[&seg[..20]]), 0, "IPv4 header checksum");
                    }
                    packets.push(seg);
                }
            }
        }
        packets.into_iter().map(blank_v4_id).collect()
    }

    fn blank_v4_id(mut p: Vec<u8>) -> Vec<u8> {
        if p.len() >= 20 && p[0] >> 4 == 4 {
            p[4..6].fill(0);
            p[10..12].fill(0);
        }
        p
    }

    /// One decrypted packet of a fuzzed arrival sequence.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Arrival {
        /// 0 and 1: IPv4 flows (two ports); 2: an IPv6 flow.
        #[generator(0u8..3)]
        flow: u8,
        /// Payload length (modulo 1400); `None`: the flow's usual 1000 bytes.
        len: Option<u16>,
        /// 0: ACK PSH; 1: FIN; 2: a sequence gap; 3: a flipped byte; 4: cut short;
        /// 5: an IPv4 ID of its own; else a plain ACK.
        #[generator(0u8..12)]
        kind: u8,
        /// Where to flip or cut.
        at: u16,
    }

    /// Build the packets of `arrivals`, each flow's sequence numbers running on.
    fn arrivals(list: &[Arrival]) -> Vec<Vec<u8>> {
        let mut next = [SEQ; 3];
        list.iter()
            .map(|a| {
                let flow = usize::from(a.flow);
                let len = a.len.map_or(1000, |l| usize::from(l % 1400));
                let mut seq = next[flow];
                if a.kind == 2 {
                    seq = seq.wrapping_add(7);
                }
                next[flow] = seq.wrapping_add(len as u32);
                let flags = match a.kind {
                    0 => TCP_ACK | TCP_PSH,
                    1 => TCP_ACK | 1,
                    _ => TCP_ACK,
                };
                let port = 40000 + u16::from(a.flow);
                let mut p = packet(flow < 2, seq, flags, &data(len, seq as usize), port);
                let at = usize::from(a.at) % p.len();
                match a.kind {
                    3 => p[at] ^= 0x20,
                    4 => p.truncate(at),
                    5 if flow < 2 => {
                        p[4] = a.at as u8;
                        p[10..12].fill(0);
                        let c = rfc1071(&[&p[..20]]);
                        p[10..12].copy_from_slice(&c.to_be_bytes());
                    }
                    _ => {}
                }
                p
            })
            .collect()
    }

    /// Fuzz target: runs of TCP segments of a few flows, with gaps, pushes, FINs, damaged
    /// and cut-short packets in between. Whatever the coalescer merges, the receiver gets
    /// back exactly the packets that arrived, payload bytes in order.
    #[test]
    fn fuzz_coalesced_then_split_gives_back_what_arrived() {
        bolero::check!()
            .with_type::<Vec<Arrival>>()
            .with_iterations(2000)
            .for_each(|list| {
                let sent = arrivals(list);
                let out = coalesce(&sent);
                assert!(out.len() <= sent.len());
                let want: Vec<Vec<u8>> = sent.into_iter().map(blank_v4_id).collect();
                assert_eq!(as_received(&out), want);
            });
    }

    /// Fuzz target: any bytes as decrypted packets (the 33-byte packet is one such
    /// input): never a panic, and the packets leave unchanged and in order.
    #[test]
    fn fuzz_any_bytes_pass_through() {
        bolero::check!()
            .with_type::<Vec<Vec<u8>>>()
            .with_iterations(5000)
            .for_each(|packets| {
                let out = coalesce(packets);
                let want: Vec<Vec<u8>> = packets.iter().cloned().map(blank_v4_id).collect();
                assert_eq!(as_received(&out), want);
            });
    }
}
