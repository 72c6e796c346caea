//! ICMP echo over a raw socket (needs root, which the demo has), so the demo does not need
//! `ping`. Call it on a thread inside the namespace to ping from.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// Sends up to `attempts` echo requests to `dst`, each waiting up to `wait` for its reply,
/// and returns the round-trip time of the first answered one (`None` if none was).
pub fn echo(
    dst: Ipv4Addr,
    id: u16,
    attempts: u16,
    wait: Duration,
) -> anyhow::Result<Option<Duration>> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .context("opening a raw ICMP socket")?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(0, 100_000), // wake up often to check the deadline
    )
    .context("setting the receive timeout")?;
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let mut buf = [0u8; 1500];
    for seq in 1..=attempts {
        let packet = request(id, seq);
        let sent = Instant::now();
        sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty())
            .with_context(|| format!("sending an echo request to {dst}"))?;
        while sent.elapsed() < wait {
            let (n, from) = match recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
                Ok(got) => got,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("receiving ICMP"),
            };
            if from.map(|a| a.ip()) == Some(dst) && is_reply(&buf[..n], id, seq) {
                return Ok(Some(sent.elapsed()));
            }
        }
    }
    Ok(None)
}

fn request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"weft demo echo, 32 bytes payload");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// A raw IPv4 socket hands over the IP header too.
fn is_reply(packet: &[u8], id: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    let Some(icmp) = packet.get(ihl..) else {
        return false;
    };
    icmp.len() >= 8
        && icmp[0] == ECHO_REPLY
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
        && checksum(icmp) == 0
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_valid_checksum_and_replies_are_matched() {
        let req = request(0x1234, 7);
        assert_eq!(checksum(&req), 0);
        // The reply: same id, seq and payload, type 0, behind a 20-byte IP header.
        let mut reply = req.clone();
        reply[0] = ECHO_REPLY;
        reply[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&reply);
        reply[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut packet = vec![0x45];
        packet.extend_from_slice(&[0; 19]);
        packet.extend_from_slice(&reply);
        assert!(is_reply(&packet, 0x1234, 7));
        assert!(!is_reply(&packet, 0x1234, 8));
        assert!(!is_reply(&packet, 0x4321, 7));
        assert!(!is_reply(&packet[..24], 0x1234, 7));
        let mut request_seen = packet.clone();
        request_seen[20] = ECHO_REQUEST;
        assert!(!is_reply(&request_seen, 0x1234, 7));
    }
}
