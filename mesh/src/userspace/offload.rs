//! TCP segmentation offload on the TUN device: what the kernel hands us with `IFF_VNET_HDR`.
//!
//! With `TUN_F_TSO4|TUN_F_TSO6` the kernel skips segmenting TCP and gives the device one
//! "super-segment" of up to 64 KiB with a `virtio_net_hdr` in front. One read then replaces
//! dozens, which is where a per-packet datapath spends its time. WireGuard must still send
//! MTU-sized packets, so [`segment`] cuts the super-segment into what the kernel would have
//! sent: same headers, IPv4 length/id/checksum, TCP sequence numbers, flags and checksum
//! fixed per segment. Packets with `NEEDS_CSUM` (checksum left to the "hardware") get their
//! checksum here too.
//!
//! The header comes from the kernel, but it is still checked: a bad one is an error, never
//! a panic or an out-of-bounds slice.

use std::fmt;

pub(crate) use crate::tun::VNET_HDR_LEN;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

const TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
const TCP_CSUM_OFFSET: usize = 16;
/// An IP packet's length fields are 16 bits.
const MAX_PACKET: usize = 65_535;

/// `struct virtio_net_hdr` (legacy layout, native byte order as TUN uses by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header at the start of `bytes`; `None` if there are fewer than
    /// [`VNET_HDR_LEN`] bytes. Every value parses: what the fields ask for is checked when
    /// it is used ([`segment`]).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = bytes.get(..VNET_HDR_LEN)?.try_into().ok()?;
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_ne_bytes([b[2], b[3]]),
            gso_size: u16::from_ne_bytes([b[4], b[5]]),
            csum_start: u16::from_ne_bytes([b[6], b[7]]),
            csum_offset: u16::from_ne_bytes([b[8], b[9]]),
        })
    }

    /// The header as the TUN device takes it in front of a write.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a packet from the TUN device could not be prepared for encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffloadError {
    /// The checksum position lies outside the packet.
    BadChecksumOffset,
    /// A GSO type we never enabled (UDP, ...).
    UnsupportedGso(u8),
    /// The IP or TCP header does not match the GSO type or does not fit.
    BadHeaders,
    /// A segment would not fit the scratch buffer, or the packet exceeds 64 KiB.
    TooLarge,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadChecksumOffset => f.write_str("checksum offset outside the packet"),
            Self::UnsupportedGso(t) => write!(f, "unsupported GSO type {t}"),
            Self::BadHeaders => f.write_str("IP/TCP headers do not match the GSO request"),
            Self::TooLarge => f.write_str("packet or segment larger than the buffer"),
        }
    }
}

/// Turn one read from the TUN device (header already parsed off) into the IP packets it
/// stands for, and hand each to `emit`: the packet itself (checksum completed if asked for)
/// or, for a TCP super-segment, each MSS-sized segment built in `scratch`. Returns how many
/// packets were emitted. Everything is checked before the first `emit`.
pub(crate) fn segment(
    hdr: &VnetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            emit(packet);
            Ok(1)
        }
        GSO_TCPV4 | GSO_TCPV6 => split_tcp(hdr, packet, scratch, emit),
        other => Err(OffloadError::UnsupportedGso(other)),
    }
}

/// `CHECKSUM_PARTIAL`: the field holds the pseudo-header sum; the checksum covers
/// everything from `start` to the end, the field included.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    let field = start
        .checked_add(offset)
        .filter(|&f| f + 2 <= packet.len() && start < packet.len())
        .ok_or(OffloadError::BadChecksumOffset)?;
    let mut csum = !fold(sum(&packet[start..], 0));
    // UDP (checksum at offset 6) sends a computed zero as all ones; zero means "none".
    if csum == 0 && offset == 6 {
        csum = 0xffff;
    }
    packet[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Where the layers of a TCP super-segment are.
struct TcpLayout {
    v4: bool,
    /// Start of the TCP header (= end of the IP header).
    tcp: usize,
    /// Start of the payload (= end of the TCP header).
    payload: usize,
}

fn tcp_layout(hdr: &VnetHdr, packet: &[u8]) -> Result<TcpLayout, OffloadError> {
    let bad = OffloadError::BadHeaders;
    // Segments get 16-bit IP length fields.
    if packet.len() > MAX_PACKET {
        return Err(OffloadError::TooLarge);
    }
    let version = packet.first().ok_or(bad)? >> 4;
    let (v4, tcp) = match (hdr.gso_type & !GSO_ECN, version) {
        (GSO_TCPV4, 4) => {
            let ip: &[u8; 20] = packet
                .get(..20)
                .and_then(|h| h.try_into().ok())
                .ok_or(bad)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl || ip[9] != TCP {
                return Err(bad);
            }
            (true, ihl)
        }
        // Extension headers would need their own walk; the stack does not put them on
        // TCP it offloads to us, so refuse rather than guess.
        (GSO_TCPV6, 6) if packet.get(6) == Some(&TCP) && packet.len() >= 40 => (false, 40),
        _ => return Err(bad),
    };
    if usize::from(hdr.csum_start) != tcp || usize::from(hdr.csum_offset) != TCP_CSUM_OFFSET {
        return Err(bad);
    }
    let data_offset = usize::from(*packet.get(tcp + 12).ok_or(bad)? >> 4) * 4;
    let payload = tcp + data_offset;
    // The whole TCP header is there: the fixed fields below are in bounds.
    if data_offset < 20 || payload > packet.len() {
        return Err(bad);
    }
    Ok(TcpLayout { v4, tcp, payload })
}

fn split_tcp(
    hdr: &VnetHdr,
    packet: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let TcpLayout { v4, tcp, payload } = tcp_layout(hdr, packet)?;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::BadHeaders);
    }
    let data = &packet[payload..];
    if payload + mss.min(data.len()) > scratch.len() {
        return Err(OffloadError::TooLarge);
    }
    let seq = u32::from_be_bytes([
        packet[tcp + 4],
        packet[tcp + 5],
        packet[tcp + 6],
        packet[tcp + 7],
    ]);
    let ip_id = u16::from_be_bytes([packet[4], packet[5]]);
    let flags = packet[tcp + 13];
    // A super-segment without payload (never sent by the kernel) still becomes one packet.
    let count = data.len().div_ceil(mss).max(1);
    scratch[..payload].copy_from_slice(&packet[..payload]);
    for (i, chunk) in data
        .chunks(mss)
        .chain(data.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let len = payload + chunk.len();
        let out = &mut scratch[..len];
        out[payload..].copy_from_slice(chunk);
        let tcp_len = len - tcp;
        if v4 {
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            out[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
            out[10..12].fill(0);
            let csum = !fold(sum(&out[..tcp], 0));
            out[10..12].copy_from_slice(&csum.to_be_bytes());
        } else {
            out[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        let seq = seq.wrapping_add((i * mss) as u32);
        out[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        let mut seg_flags = flags;
        if i + 1 < count {
            seg_flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            seg_flags &= !TCP_CWR;
        }
        out[tcp + 13] = seg_flags;
        out[tcp + 16..tcp + 18].fill(0);
        let pseudo = if v4 {
            sum(&out[12..20], 0)
        } else {
            sum(&out[8..40], 0)
        } + u64::from(TCP)
            + tcp_len as u64;
        let csum = !fold(sum(&out[tcp..], pseudo));
        out[tcp + 16..tcp + 18].copy_from_slice(&csum.to_be_bytes());
        emit(out);
    }
    Ok(count)
}

/// One's-complement sum of big-endian 16-bit words, plus `initial` (big-endian values, such
/// as pseudo-header fields). The loop adds native-endian 32-bit words into 64 bits (no carry
/// chain, so the compiler can vectorise it; 2^16 = 1 modulo 0xffff makes the word size
/// irrelevant) and swaps the folded result to big-endian at the end: a one's-complement sum
/// commutes with swapping the bytes of every word (RFC 1071, section 2(B)). About twice as
/// fast as summing big-endian words here.
pub(crate) fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    let folded = fold(acc);
    let big_endian = if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    };
    initial + u64::from(big_endian)
}

pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 the slow way, 16 bits at a time: independent of `sum`/`fold`.
    fn rfc1071(chunks: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = chunks.concat();
        let mut acc: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            acc += word;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    const SRC4: [u8; 4] = [192, 0, 2, 1];
    const DST4: [u8; 4] = [198, 51, 100, 9];
    const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const SEQ: u32 = 0xffff_f000; // wraps within the test
    const OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps

    fn tcp_header(flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5001u16.to_be_bytes());
        t[4..8].copy_from_slice(&SEQ.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = (32 / 4) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[16..18].copy_from_slice(&0xabcdu16.to_be_bytes()); // the kernel's partial sum
        t.extend_from_slice(&OPTIONS);
        t
    }

    fn super_v4(data: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, TCP, 0, 0];
        p.extend_from_slice(&SRC4);
        p.extend_from_slice(&DST4);
        p.extend_from_slice(&tcp_header(flags));
        p.extend_from_slice(data);
        p
    }

    fn super_v6(data: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, TCP, 64];
        p.extend_from_slice(&SRC6);
        p.extend_from_slice(&DST6);
        p.extend_from_slice(&tcp_header(flags));
        p.extend_from_slice(data);
        p
    }

    fn gso(gso_type: u8, csum_start: u16, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: csum_start + 32,
            gso_size: mss,
            csum_start,
            csum_offset: 16,
        }
    }

    fn run(hdr: &VnetHdr, packet: &mut [u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut scratch = vec![0u8; 65_535];
        let mut out = Vec::new();
        let n = segment(hdr, packet, &mut scratch, |p| out.push(p.to_vec()))?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    /// Check one segment against an independent computation; returns its payload.
    fn check_segment(
        seg: &[u8],
        v4: bool,
        index: usize,
        count: usize,
        mss: usize,
        flags: u8,
    ) -> Vec<u8> {
        let ip_len = if v4 { 20 } else { 40 };
        let tcp = &seg[ip_len..];
        if v4 {
            assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
            assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 0x1234 + index as u16);
            assert_eq!(rfc1071(&[&seg[..20]]), 0, "IPv4 header checksum");
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[4], seg[5]])),
                seg.len() - 40
            );
        }
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        assert_eq!(
            seq,
            SEQ.wrapping_add((index * mss) as u32),
            "sequence number"
        );
        assert_eq!(&tcp[20..32], &OPTIONS, "options copied");
        let last = index + 1 == count;
        let mut want = flags;
        if !last {
            want &= !(TCP_FIN | TCP_PSH);
        }
        if index > 0 {
            want &= !TCP_CWR;
        }
        assert_eq!(tcp[13], want, "flags of segment {index}/{count}");
        let tcp_len = (tcp.len() as u16).to_be_bytes();
        let ok = if v4 {
            rfc1071(&[&seg[12..20], &[0, TCP], &tcp_len, tcp])
        } else {
            rfc1071(&[&seg[8..40], &[0, 0], &tcp_len, &[0, 0, 0, TCP], tcp])
        };
        assert_eq!(ok, 0, "TCP checksum of segment {index}");
        if !last {
            assert_eq!(tcp.len() - 32, mss, "full segments carry one MSS");
        }
        tcp[32..].to_vec()
    }

    #[test]
    fn ipv4_super_segment_splits_like_the_kernel() {
        let data = payload(5000);
        let flags = 0x18 | TCP_FIN | TCP_CWR; // ACK PSH FIN CWR
        let mut packet = super_v4(&data, flags);
        let segs = run(&gso(GSO_TCPV4, 20, 1368), &mut packet).expect("splits");
        assert_eq!(segs.len(), 4);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(s.len() <= 20 + 32 + 1368);
            joined.extend(check_segment(s, true, i, segs.len(), 1368, flags));
        }
        assert_eq!(joined, data, "payload in order, nothing lost");
    }

    #[test]
    fn ipv6_super_segment_splits_like_the_kernel() {
        let data = payload(4000);
        let flags = 0x18;
        let mut packet = super_v6(&data, flags);
        let segs = run(&gso(GSO_TCPV6, 40, 1000), &mut packet).expect("splits");
        assert_eq!(segs.len(), 4);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            joined.extend(check_segment(s, false, i, segs.len(), 1000, flags));
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn needs_csum_without_gso_completes_the_checksum() {
        let data = payload(333);
        let mut packet = super_v4(&data, 0x18);
        // The kernel leaves the folded pseudo-header sum in the field.
        let tcp_len = (packet.len() - 20) as u64;
        let pseudo = fold(sum(&packet[12..20], 0) + u64::from(TCP) + tcp_len);
        packet[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 20,
            csum_offset: 16,
        };
        let segs = run(&hdr, &mut packet).expect("one packet");
        assert_eq!(segs.len(), 1);
        let seg = &segs[0];
        let tcp_len = ((seg.len() - 20) as u16).to_be_bytes();
        assert_eq!(rfc1071(&[&seg[12..20], &[0, TCP], &tcp_len, &seg[20..]]), 0);
    }

    #[test]
    fn plain_packets_pass_untouched() {
        let mut packet = super_v4(&payload(100), 0x10);
        let before = packet.clone();
        let hdr = VnetHdr::parse(&[0; VNET_HDR_LEN]).expect("parses");
        let segs = run(&hdr, &mut packet).expect("one packet");
        assert_eq!(segs, vec![before]);
    }

    #[test]
    fn mismatched_or_unsupported_headers_are_refused() {
        let mut v4 = super_v4(&payload(3000), 0x10);
        assert_eq!(
            run(&gso(GSO_TCPV6, 40, 1000), &mut v4),
            Err(OffloadError::BadHeaders)
        );
        assert_eq!(
            run(&gso(GSO_TCPV4, 24, 1000), &mut v4),
            Err(OffloadError::BadHeaders)
        );
        assert_eq!(
            run(&gso(GSO_TCPV4, 20, 0), &mut v4),
            Err(OffloadError::BadHeaders)
        );
        assert_eq!(
            run(&gso(5, 20, 1000), &mut v4),
            Err(OffloadError::UnsupportedGso(5))
        );
        let mut short = v4[..30].to_vec();
        assert_eq!(
            run(&gso(GSO_TCPV4, 20, 1000), &mut short),
            Err(OffloadError::BadHeaders)
        );
        let mut hdr = gso(GSO_NONE, 20, 0);
        hdr.csum_offset = 5000;
        assert_eq!(run(&hdr, &mut v4), Err(OffloadError::BadChecksumOffset));
    }

    proptest! {
        /// The fast sum equals RFC 1071 done 16 bits at a time, at any length and alignment.
        #[test]
        fn sum_matches_rfc1071(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            skip in 0usize..8,
            initial in 0u64..0x1_0000_0000,
        ) {
            let data = &data[skip.min(data.len())..];
            let mut acc: u64 = initial;
            for pair in data.chunks(2) {
                acc += u64::from(pair[0]) << 8 | u64::from(*pair.get(1).unwrap_or(&0));
            }
            prop_assert_eq!(fold(sum(data, initial)), fold(acc));
        }

        /// Any header with any bytes: an error or packets that fit, never a panic.
        #[test]
        fn arbitrary_headers_never_panic(
            hdr in proptest::collection::vec(any::<u8>(), VNET_HDR_LEN),
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            v4 in any::<bool>(),
        ) {
            let hdr = VnetHdr::parse(&hdr).expect("10 bytes");
            let mut packet = if v4 { super_v4(&body, 0x10) } else { super_v6(&body, 0x10) };
            if let Some(b) = body.first() { packet[0] = *b; }
            let mut scratch = vec![0u8; 2000];
            let mut total = 0;
            let _ = segment(&hdr, &mut packet, &mut scratch, |p| total += p.len());
            let mut raw = body.clone();
            let _ = segment(&hdr, &mut raw, &mut scratch, |p| total += p.len());
        }
    }

    /// A TCP super-segment as the kernel hands it over.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Super {
        v4: bool,
        /// 32-bit words of TCP options (data offset 5 + this).
        #[generator(0u8..11)]
        option_words: u8,
        #[generator(0usize..20_000)]
        payload: usize,
        #[generator(1u16..3000)]
        mss: u16,
        flags: u8,
        seq: u32,
        ip_id: u16,
        ecn: bool,
    }

    impl Super {
        fn build(&self) -> (VnetHdr, Vec<u8>) {
            let doff = 20 + 4 * usize::from(self.option_words);
            let mut tcp = vec![0u8; doff];
            tcp[0..4].copy_from_slice(&[0x9c, 0x40, 0x13, 0x89]);
            tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
            tcp[12] = ((doff / 4) as u8) << 4;
            tcp[13] = self.flags;
            tcp[16..18].copy_from_slice(&0x5a5au16.to_be_bytes()); // the partial sum
            for (i, b) in tcp[20..].iter_mut().enumerate() {
                *b = i as u8 | 1; // NOPs and such: copied, never parsed
            }
            tcp.extend(payload(self.payload));
            let (mut p, ip_len) = if self.v4 {
                let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, TCP, 0, 0];
                h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
                h.extend_from_slice(&SRC4);
                h.extend_from_slice(&DST4);
                (h, 20)
            } else {
                let mut h = vec![0x60, 0, 0, 0, 0, 0, TCP, 64];
                h.extend_from_slice(&SRC6);
                h.extend_from_slice(&DST6);
                (h, 40)
            };
            p.extend(tcp);
            let gso_type = if self.v4 { GSO_TCPV4 } else { GSO_TCPV6 };
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: gso_type | if self.ecn { GSO_ECN } else { 0 },
                hdr_len: (ip_len + doff) as u16,
                gso_size: self.mss,
                csum_start: ip_len as u16,
                csum_offset: 16,
            };
            (hdr, p)
        }
    }

    /// Fuzz target: any valid super-segment (either family, any options, payload, MSS,
    /// flags and sequence number) splits into packets that each pass an independent check
    /// of IP and TCP checksums, lengths, IDs, sequence numbers and flags, whose payloads
    /// put together are the original one, in order.
    #[test]
    fn fuzz_valid_super_segments_split_into_valid_packets() {
        bolero::check!()
            .with_type::<Super>()
            .with_iterations(300)
            .for_each(|sup| {
                let (hdr, mut packet) = sup.build();
                let original = packet.clone();
                let segs = run(&hdr, &mut packet).expect("a valid super-segment");
                let mss = usize::from(sup.mss);
                assert_eq!(segs.len(), sup.payload.div_ceil(mss).max(1));
                let ip_len = usize::from(hdr.csum_start);
                let hdr_len = usize::from(hdr.hdr_len);
                let mut joined = Vec::new();
                for (i, seg) in segs.iter().enumerate() {
                    let last = i + 1 == segs.len();
                    assert!(seg.len() <= hdr_len + mss);
                    if !last {
                        assert_eq!(seg.len(), hdr_len + mss, "full segments carry one MSS");
                    }
                    let tcp = &seg[ip_len..];
                    let tcp_len = (tcp.len() as u16).to_be_bytes();
                    if sup.v4 {
                        assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
                        let id = u16::from_be_bytes([seg[4], seg[5]]);
                        assert_eq!(id, sup.ip_id.wrapping_add(i as u16));
                        assert_eq!(rfc1071(&[&seg[..20]]), 0, "IPv4 header checksum");
                        assert_eq!(rfc1071(&[&seg[12..20], &[0, TCP], &tcp_len, tcp]), 0);
                    } else {
                        let len = usize::from(u16::from_be_bytes([seg[4], seg[5]]));
                        assert_eq!(len, seg.len() - 40);
                        let pseudo: &[&[u8]] = &[&seg[8..40], &[0, 0], &tcp_len, &[0, 0, 0, TCP]];
                        assert_eq!(rfc1071(&[pseudo, &[tcp]].concat()), 0, "TCP checksum");
                    }
                    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
                    assert_eq!(seq, sup.seq.wrapping_add((i * mss) as u32));
                    let mut flags = sup.flags;
                    if !last {
                        flags &= !(TCP_FIN | TCP_PSH);
                    }
                    if i > 0 {
                        flags &= !TCP_CWR;
                    }
                    assert_eq!(tcp[13], flags);
                    // Everything else of the headers is copied.
                    assert_eq!(seg[..2], original[..2]);
                    assert_eq!(seg[6..ip_len.min(10)], original[6..ip_len.min(10)]);
                    assert_eq!(seg[12..ip_len + 4], original[12..ip_len + 4]);
                    assert_eq!(
                        seg[ip_len + 8..ip_len + 13],
                        original[ip_len + 8..ip_len + 13]
                    );
                    assert_eq!(seg[ip_len + 18..hdr_len], original[ip_len + 18..hdr_len]);
                    joined.extend_from_slice(&seg[hdr_len..]);
                }
                assert_eq!(
                    joined,
                    original[hdr_len..],
                    "payload in order, nothing lost"
                );
            });
    }

    /// Fuzz target: any `virtio_net_hdr` bytes in front of any packet, or of a valid-looking
    /// super-segment with a byte changed: an error, or packets that fit the buffer. Never a
    /// panic, and the count returned is the count emitted.
    #[test]
    fn fuzz_any_header_and_packet() {
        bolero::check!()
            .with_type::<(Vec<u8>, Vec<u8>, Option<(Super, u16, u8)>, bool)>()
            .with_iterations(3000)
            .for_each(|(hdr, body, damaged, small)| {
                let Some(mut parsed) = VnetHdr::parse(hdr) else {
                    assert!(hdr.len() < VNET_HDR_LEN);
                    return;
                };
                let mut packet = body.clone();
                if let Some((sup, at, value)) = damaged {
                    let (h, p) = sup.build();
                    parsed = if hdr[0] & 1 == 0 { h } else { parsed };
                    packet = p;
                    let at = usize::from(*at) % packet.len();
                    packet[at] = *value;
                }
                let mut scratch = vec![0u8; if *small { 1500 } else { 65_535 }];
                let mut emitted = 0;
                let result = segment(&parsed, &mut packet, &mut scratch, |p| {
                    assert!(p.len() <= 65_535);
                    emitted += 1;
                });
                if let Ok(n) = result {
                    assert_eq!(n, emitted);
                }
            });
    }

    /// A TCP or UDP packet whose checksum the kernel left to the device (`NEEDS_CSUM`,
    /// no GSO).
    #[derive(Debug, bolero::TypeGenerator)]
    struct Partial {
        v4: bool,
        udp: bool,
        #[generator(0usize..3000)]
        payload: usize,
        salt: u8,
    }

    /// Fuzz target: checksum completion gives a packet whose TCP or UDP checksum passes an
    /// independent check (UDP never zero), and touches nothing else.
    #[test]
    fn fuzz_completed_checksums_are_valid() {
        bolero::check!()
            .with_type::<Partial>()
            .with_iterations(1000)
            .for_each(|c| {
                let (protocol, offset, header) = if c.udp {
                    (17u8, 6u16, 8usize)
                } else {
                    (TCP, 16, 20)
                };
                let mut l4 = vec![0u8; header];
                l4[0] = c.salt;
                if !c.udp {
                    l4[12] = 5 << 4;
                }
                l4.extend((0..c.payload).map(|i| (i as u8).wrapping_mul(c.salt)));
                let l4_len = (l4.len() as u16).to_be_bytes();
                if c.udp {
                    l4[4..6].copy_from_slice(&l4_len);
                }
                let (mut p, start) = if c.v4 {
                    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
                    h.extend_from_slice(&SRC4);
                    h.extend_from_slice(&DST4);
                    (h, 20)
                } else {
                    let mut h = vec![0x60, 0, 0, 0, l4_len[0], l4_len[1], protocol, 64];
                    h.extend_from_slice(&SRC6);
                    h.extend_from_slice(&DST6);
                    (h, 40)
                };
                let pseudo = if c.v4 {
                    sum(&p[12..20], 0)
                } else {
                    sum(&p[8..40], 0)
                } + u64::from(protocol)
                    + l4.len() as u64;
                let field = usize::from(offset);
                l4[field..field + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
                p.extend(l4);
                let before = p.clone();
                let hdr = VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: GSO_NONE,
                    hdr_len: 0,
                    gso_size: 0,
                    csum_start: start as u16,
                    csum_offset: offset,
                };
                let out = run(&hdr, &mut p).expect("completes");
                assert_eq!(out.len(), 1);
                let done = &out[0];
                let at = start + field;
                assert_eq!(done[..at], before[..at]);
                assert_eq!(done[at + 2..], before[at + 2..]);
                let l4 = &done[start..];
                let len = (l4.len() as u16).to_be_bytes();
                let check = if c.v4 {
                    rfc1071(&[&done[12..20], &[0, protocol], &len, l4])
                } else {
                    rfc1071(&[&done[8..40], &[0, 0], &len, &[0, 0, 0, protocol], l4])
                };
                assert_eq!(check, 0, "checksum verifies");
                if c.udp {
                    assert_ne!(&l4[6..8], &[0, 0], "UDP sends a zero sum as all ones");
                }
            });
    }

    /// Fuzz target: the fast sum equals RFC 1071 done 16 bits at a time.
    #[test]
    fn fuzz_sum_matches_rfc1071() {
        bolero::check!()
            .with_type::<(Vec<u8>, u32)>()
            .with_iterations(5000)
            .for_each(|(data, initial)| {
                let mut acc = u64::from(*initial);
                for pair in data.chunks(2) {
                    acc += u64::from(pair[0]) << 8 | u64::from(*pair.get(1).unwrap_or(&0));
                }
                assert_eq!(fold(sum(data, u64::from(*initial))), fold(acc));
            });
    }

    /// Fuzz target: the `virtio_net_hdr` decoder and encoder are inverses: any 10 bytes
    /// parse, and encode back to themselves; any header encodes and parses back.
    #[test]
    fn fuzz_vnet_hdr_roundtrips() {
        bolero::check!()
            .with_type::<(Vec<u8>, (u8, u8, u16, u16, u16, u16))>()
            .with_iterations(5000)
            .for_each(|(bytes, fields)| {
                match VnetHdr::parse(bytes) {
                    Some(h) => assert_eq!(h.encode()[..], bytes[..VNET_HDR_LEN]),
                    None => assert!(bytes.len() < VNET_HDR_LEN),
                }
                let (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) = *fields;
                let h = VnetHdr {
                    flags,
                    gso_type,
                    hdr_len,
                    gso_size,
                    csum_start,
                    csum_offset,
                };
                assert_eq!(VnetHdr::parse(&h.encode()), Some(h));
            });
    }
}
