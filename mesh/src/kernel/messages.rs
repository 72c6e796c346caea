//! The messages of WireGuard's generic netlink family ("wireguard"): building `WG_CMD_SET_DEVICE`
//! requests from a [`DeviceConfig`] and reading a [`DeviceStatus`] out of a `WG_CMD_GET_DEVICE`
//! dump. Pure functions over `netlink-packet-wireguard` types, so every byte is unit-tested
//! without a kernel.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use netlink_packet_core::Emitable;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags, WireguardTimeSpec,
};
use weft_crypto::{WgPrivateKey, WgPublicKey};

use crate::config::{DeviceConfig, DeviceStatus, PeerConfig, PeerStatus, PresharedKey, KEY_LEN};
use crate::{Error, Result};

/// The most a `WG_CMD_SET_DEVICE` message may take, headers included. wireguard-tools sizes its
/// messages to `MNL_SOCKET_BUFFER_SIZE` (a page, at most 8 KiB); 4096 is what it uses on x86 and
/// keeps every message well inside what the kernel accepts.
pub(crate) const SET_MESSAGE_BUDGET: usize = 4096;

/// Size of the netlink message header.
const NETLINK_HDR_LEN: usize = 16;
/// Size of the generic netlink header (cmd, version, reserved).
const GENL_HDR_LEN: usize = 4;
/// Size of a nested attribute's own header.
const NEST_HDR_LEN: usize = 4;
/// Linux's `IFNAMSIZ`: names are at most 15 bytes plus the terminating NUL.
const IFNAMSIZ: usize = 16;

/// Checks an interface name as the kernel would, so a bad one fails before anything is sent.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "invalid interface name {name:?}"
        )))
    }
}

/// The `WG_CMD_GET_DEVICE` request (sent with `NLM_F_DUMP`).
pub(crate) fn get_device_request(ifname: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_owned())],
    }
}

/// Turns one configuration change into the `WG_CMD_SET_DEVICE` messages that carry it, each at
/// most `budget` bytes long (netlink header included), split as wireguard-tools splits them:
///
/// - the first message carries the device attributes (private key, port, fwmark, and the
///   replace-peers flag); later ones carry only the interface name and peers;
/// - a peer whose allowed IPs do not fit is continued in the next message, named again by its
///   public key, without the attributes already sent and without `REPLACE_ALLOWEDIPS` (which
///   would drop the first part). `UPDATE_ONLY` is repeated so a continuation never creates a
///   peer the first part did not.
pub(crate) fn set_device_messages(
    ifname: &str,
    config: &DeviceConfig,
    budget: usize,
) -> Vec<WireguardMessage> {
    let mut messages = Vec::new();
    let mut device_attributes = device_attributes(config);
    // (index of the peer, index of its first allowed IP not sent yet)
    let mut cursor = (0usize, 0usize);
    loop {
        let mut attributes = vec![WireguardAttribute::IfName(ifname.to_owned())];
        attributes.append(&mut device_attributes); // empty after the first message
        let mut used = NETLINK_HDR_LEN + GENL_HDR_LEN + attributes.as_slice().buffer_len();

        let mut peers = Vec::new();
        if cursor.0 < config.peers.len() {
            used += NEST_HDR_LEN; // WGDEVICE_A_PEERS
        }
        while let Some(peer) = config.peers.get(cursor.0) {
            let continuing = cursor.1 > 0;
            let mut attrs = peer_attributes(peer, continuing);
            let header_len = NEST_HDR_LEN + attrs.as_slice().buffer_len();
            // A removed peer's other fields are ignored, allowed IPs included.
            let pending = if peer.remove {
                &[]
            } else {
                peer.allowed_ips.get(cursor.1..).unwrap_or_default()
            };
            let ips_nest_len = if pending.is_empty() { 0 } else { NEST_HDR_LEN };
            // A peer starts in this message only if its header and at least its first allowed
            // IP fit; otherwise the message ends here (a fresh message always has room).
            let first_ip_len = pending
                .first()
                .map_or(0, |net| allowed_ip(net).buffer_len());
            if used + header_len + ips_nest_len + first_ip_len > budget && !peers.is_empty() {
                break;
            }
            used += header_len + ips_nest_len;
            let mut ips = Vec::new();
            for net in pending {
                let ip = allowed_ip(net);
                let len = ip.buffer_len();
                if used + len > budget && !ips.is_empty() {
                    break;
                }
                used += len;
                ips.push(ip);
            }
            let sent = ips.len();
            let unsent = pending.len() - sent;
            if !ips.is_empty() {
                attrs.push(WireguardPeerAttribute::AllowedIps(ips));
            }
            peers.push(WireguardPeer(attrs));
            if unsent > 0 {
                cursor.1 += sent;
                break; // the rest of this peer's allowed IPs go in the next message
            }
            cursor = (cursor.0 + 1, 0);
        }
        if !peers.is_empty() {
            attributes.push(WireguardAttribute::Peers(peers));
        }
        messages.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        });
        if cursor.0 >= config.peers.len() {
            return messages;
        }
    }
}

fn device_attributes(config: &DeviceConfig) -> Vec<WireguardAttribute> {
    let mut attributes = Vec::new();
    if let Some(key) = &config.private_key {
        attributes.push(WireguardAttribute::PrivateKey(*key.as_bytes()));
    }
    if let Some(port) = config.listen_port {
        attributes.push(WireguardAttribute::ListenPort(port));
    }
    if let Some(mark) = config.fwmark {
        attributes.push(WireguardAttribute::Fwmark(mark));
    }
    if config.replace_peers {
        attributes.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    attributes
}

/// The attributes of a peer, without its allowed IPs. A continuation carries only what a
/// repeated send cannot get wrong: the key and the remove / update-only flags.
fn peer_attributes(peer: &PeerConfig, continuing: bool) -> Vec<WireguardPeerAttribute> {
    let mut attributes = vec![WireguardPeerAttribute::PublicKey(
        *peer.public_key.as_bytes(),
    )];
    let mut flags = WireguardPeerFlags::empty();
    if peer.remove {
        flags |= WireguardPeerFlags::RemoveMe;
    }
    if peer.update_only {
        flags |= WireguardPeerFlags::UpdateOnly;
    }
    if !continuing {
        if peer.replace_allowed_ips && !peer.remove {
            flags |= WireguardPeerFlags::ReplaceAllowedIps;
        }
        if !peer.remove {
            if let Some(psk) = &peer.preshared_key {
                attributes.push(WireguardPeerAttribute::PresharedKey(*psk.as_bytes()));
            }
            if let Some(endpoint) = peer.endpoint {
                attributes.push(WireguardPeerAttribute::Endpoint(endpoint));
            }
            if let Some(interval) = peer.persistent_keepalive {
                attributes.push(WireguardPeerAttribute::PersistentKeepalive(interval));
            }
        }
    }
    if !flags.is_empty() {
        attributes.push(WireguardPeerAttribute::Flags(flags));
    }
    attributes
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.network()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// Reads the device state out of the messages of a `WG_CMD_GET_DEVICE` dump. The kernel splits
/// a large device across messages, repeating a peer's public key where its allowed IPs continue;
/// those parts are joined again (as wireguard-tools' `coalesce_peers` does).
pub(crate) fn parse_device(messages: &[WireguardMessage]) -> Result<DeviceStatus> {
    let mut status = DeviceStatus::default();
    for message in messages {
        if message.cmd != WireguardCmd::GetDevice {
            return Err(malformed(format!(
                "unexpected command {:?} in a device dump",
                message.cmd
            )));
        }
        for attribute in &message.attributes {
            match attribute {
                WireguardAttribute::PrivateKey(key) => {
                    status.private_key = nonzero(key).then(|| WgPrivateKey::from_bytes(*key));
                }
                WireguardAttribute::PublicKey(key) => {
                    status.public_key = nonzero(key).then_some(WgPublicKey(*key));
                }
                WireguardAttribute::ListenPort(port) => status.listen_port = *port,
                WireguardAttribute::Fwmark(mark) => status.fwmark = (*mark != 0).then_some(*mark),
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        let peer = parse_peer(peer)?;
                        match status.peers.last_mut() {
                            Some(last) if last.public_key == peer.public_key => {
                                last.allowed_ips.extend(peer.allowed_ips);
                            }
                            _ => status.peers.push(peer),
                        }
                    }
                }
                _ => {} // ifindex, ifname, and attributes of newer kernels
            }
        }
    }
    Ok(status)
}

fn parse_peer(peer: &WireguardPeer) -> Result<PeerStatus> {
    let public_key = peer
        .iter()
        .find_map(|attribute| match attribute {
            WireguardPeerAttribute::PublicKey(key) => Some(WgPublicKey(*key)),
            _ => None,
        })
        .ok_or_else(|| malformed("a peer without a public key".to_owned()))?;
    let mut status = PeerStatus {
        public_key,
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: None,
        allowed_ips: Vec::new(),
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        protocol_version: 0,
    };
    for attribute in peer.iter() {
        match attribute {
            WireguardPeerAttribute::PresharedKey(key) => {
                status.preshared_key = nonzero(key).then(|| PresharedKey(*key));
            }
            WireguardPeerAttribute::Endpoint(endpoint) => status.endpoint = Some(*endpoint),
            WireguardPeerAttribute::PersistentKeepalive(interval) => {
                status.persistent_keepalive = (*interval != 0).then_some(*interval);
            }
            WireguardPeerAttribute::LastHandshake(time) => {
                status.last_handshake = handshake_time(time)?;
            }
            WireguardPeerAttribute::RxBytes(bytes) => status.rx_bytes = *bytes,
            WireguardPeerAttribute::TxBytes(bytes) => status.tx_bytes = *bytes,
            WireguardPeerAttribute::ProtocolVersion(version) => status.protocol_version = *version,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    status.allowed_ips.push(parse_allowed_ip(ip)?);
                }
            }
            _ => {}
        }
    }
    Ok(status)
}

fn parse_allowed_ip(ip: &WireguardAllowedIp) -> Result<IpNet> {
    let (mut family, mut addr, mut cidr) = (None, None, None);
    for attribute in ip.iter() {
        match attribute {
            WireguardAllowedIpAttr::Family(f) => family = Some(*f),
            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    let (Some(family), Some(addr), Some(cidr)) = (family, addr, cidr) else {
        return Err(malformed(
            "an allowed IP without family, address or mask".to_owned(),
        ));
    };
    let family_matches = matches!(
        (family, addr),
        (WireguardAddressFamily::Ipv4, IpAddr::V4(_))
            | (WireguardAddressFamily::Ipv6, IpAddr::V6(_))
    );
    if !family_matches {
        return Err(malformed(format!(
            "allowed IP {addr} does not match its family {family:?}"
        )));
    }
    IpNet::new(addr, cidr)
        .map_err(|_| malformed(format!("allowed IP {addr}/{cidr}: bad prefix length")))
}

/// `{0, 0}` means "never".
fn handshake_time(time: &WireguardTimeSpec) -> Result<Option<SystemTime>> {
    if time.seconds == 0 && time.nano_seconds == 0 {
        return Ok(None);
    }
    let seconds = u64::try_from(time.seconds).ok();
    let nanos = u32::try_from(time.nano_seconds)
        .ok()
        .filter(|n| *n < 1_000_000_000);
    seconds
        .zip(nanos)
        .and_then(|(s, n)| SystemTime::UNIX_EPOCH.checked_add(Duration::new(s, n)))
        .map(Some)
        .ok_or_else(|| {
            malformed(format!(
                "bad handshake time {}.{}",
                time.seconds, time.nano_seconds
            ))
        })
}

fn nonzero(key: &[u8; KEY_LEN]) -> bool {
    key.iter().any(|&b| b != 0)
}

fn malformed(what: String) -> Error {
    Error::Netlink(format!("WireGuard device dump: {what}"))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
    use netlink_packet_generic::GenlMessage;

    use super::*;
    use crate::kernel::socket::{absorb, encode, Reply};

    const FAMILY: u16 = 0x1c;

    fn wire(message: WireguardMessage) -> Vec<u8> {
        let mut message = GenlMessage::from_payload(message);
        message.set_resolved_family_id(FAMILY);
        encode(message, NLM_F_REQUEST | NLM_F_ACK, 1)
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("test network")
    }

    /// The header every request below starts with: length, type = family id, flags =
    /// REQUEST|ACK, sequence 1, port 0, then cmd SET_DEVICE (1), version 1.
    fn set_header(len: u8) -> Vec<u8> {
        concat(&[
            &[len, 0, 0, 0, 0x1c, 0x00, 0x05, 0x00],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            &[0x01, 0x01, 0x00, 0x00],
        ])
    }

    const IFNAME_WG0: [u8; 8] = [0x08, 0x00, 0x02, 0x00, b'w', b'g', b'0', 0x00];

    #[test]
    fn set_with_one_peer_and_one_allowed_ip() {
        let mut peer = PeerConfig::new(WgPublicKey([0x22; 32]));
        peer.endpoint = Some("192.0.2.1:51820".parse().expect("endpoint"));
        peer.persistent_keepalive = Some(25);
        peer.allowed_ips = vec![net("10.0.0.0/24")];
        let config = DeviceConfig {
            private_key: Some(WgPrivateKey::from_bytes([0x10; 32])),
            listen_port: Some(51820),
            peers: vec![peer],
            ..DeviceConfig::default()
        };
        let messages = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET);
        assert_eq!(messages.len(), 1);
        let mut private_key = [0x10u8; 32];
        private_key[31] = 0x50; // clamped
        let expected = concat(&[
            &set_header(0xb0),
            &IFNAME_WG0,
            &[0x24, 0x00, 0x03, 0x00], // WGDEVICE_A_PRIVATE_KEY
            &private_key,
            &[0x06, 0x00, 0x06, 0x00, 0x6c, 0xca, 0x00, 0x00], // LISTEN_PORT 51820
            &[0x68, 0x00, 0x08, 0x80],                         // PEERS (nested), 104 bytes
            &[0x64, 0x00, 0x00, 0x80],                         // one peer (nested), 100 bytes
            &[0x24, 0x00, 0x01, 0x00],                         // WGPEER_A_PUBLIC_KEY
            &[0x22; 32],
            &[0x14, 0x00, 0x04, 0x00], // ENDPOINT: struct sockaddr_in
            &[0x02, 0x00, 0xca, 0x6c, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x06, 0x00, 0x05, 0x00, 0x19, 0x00, 0x00, 0x00], // PERSISTENT_KEEPALIVE 25
            &[0x20, 0x00, 0x09, 0x80],                         // ALLOWEDIPS (nested)
            &[0x1c, 0x00, 0x00, 0x80],                         // one allowed IP (nested)
            &[0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00], // FAMILY AF_INET
            &[0x08, 0x00, 0x02, 0x00, 10, 0, 0, 0],            // IPADDR 10.0.0.0
            &[0x05, 0x00, 0x03, 0x00, 24, 0x00, 0x00, 0x00],   // CIDR_MASK 24
        ]);
        let bytes = wire(messages.into_iter().next().expect("one message"));
        assert_eq!(bytes, expected);
    }

    #[test]
    fn set_removing_a_peer_sends_only_its_key_and_the_flag() {
        let mut peer = PeerConfig::new(WgPublicKey([0x33; 32]));
        peer.remove = true;
        // Ignored for a removal, as the configuration protocol says.
        peer.endpoint = Some("192.0.2.9:1".parse().expect("endpoint"));
        peer.allowed_ips = vec![net("10.9.0.0/16")];
        let config = DeviceConfig {
            peers: vec![peer],
            ..DeviceConfig::default()
        };
        let messages = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET);
        let expected = concat(&[
            &set_header(0x50),
            &IFNAME_WG0,
            &[0x34, 0x00, 0x08, 0x80], // PEERS
            &[0x30, 0x00, 0x00, 0x80], // peer
            &[0x24, 0x00, 0x01, 0x00],
            &[0x33; 32],
            &[0x08, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00], // FLAGS: REMOVE_ME
        ]);
        assert_eq!(messages.len(), 1);
        assert_eq!(
            wire(messages.into_iter().next().expect("one message")),
            expected
        );
    }

    #[test]
    fn set_with_replace_flags() {
        let mut peer = PeerConfig::new(WgPublicKey([0x44; 32]));
        peer.replace_allowed_ips = true;
        peer.update_only = true;
        let config = DeviceConfig {
            fwmark: Some(0),
            replace_peers: true,
            peers: vec![peer],
            ..DeviceConfig::default()
        };
        let messages = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET);
        let expected = concat(&[
            &set_header(0x60),
            &IFNAME_WG0,
            &[0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00], // FWMARK 0 (clears it)
            &[0x08, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], // FLAGS: REPLACE_PEERS
            &[0x34, 0x00, 0x08, 0x80],
            &[0x30, 0x00, 0x00, 0x80],
            &[0x24, 0x00, 0x01, 0x00],
            &[0x44; 32],
            // FLAGS: REPLACE_ALLOWEDIPS | UPDATE_ONLY
            &[0x08, 0x00, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00],
        ]);
        assert_eq!(
            wire(messages.into_iter().next().expect("one message")),
            expected
        );
    }

    #[test]
    fn replace_peers_with_no_peers_clears_the_device() {
        let config = DeviceConfig {
            replace_peers: true,
            ..DeviceConfig::default()
        };
        let messages = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET);
        let expected = concat(&[
            &set_header(0x24),
            &IFNAME_WG0,
            &[0x08, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
        ]);
        assert_eq!(messages.len(), 1);
        assert_eq!(
            wire(messages.into_iter().next().expect("one message")),
            expected
        );
    }

    #[test]
    fn ipv6_endpoint_and_allowed_ip_bytes() {
        let mut peer = PeerConfig::new(WgPublicKey([0x55; 32]));
        peer.endpoint = Some("[2001:db8::1]:443".parse().expect("endpoint"));
        peer.allowed_ips = vec![net("fd00::1:2/120")]; // host bits are masked off
        let config = DeviceConfig {
            peers: vec![peer],
            ..DeviceConfig::default()
        };
        let message = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET).remove(0);
        let bytes = wire(message);
        let endpoint = concat(&[
            &[0x20, 0x00, 0x04, 0x00], // struct sockaddr_in6, 28 bytes
            &[0x0a, 0x00, 0x01, 0xbb, 0, 0, 0, 0],
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0, 0, 0, 0],
        ]);
        let allowed = concat(&[
            &[0x28, 0x00, 0x00, 0x80],
            &[0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00],
            &[
                0x14, 0x00, 0x02, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0,
            ],
            &[0x05, 0x00, 0x03, 0x00, 120, 0x00, 0x00, 0x00],
        ]);
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&endpoint), "sockaddr_in6 endpoint in {bytes:02x?}");
        assert!(contains(&allowed), "IPv6 allowed IP in {bytes:02x?}");
    }

    fn many_ips(count: usize) -> Vec<IpNet> {
        (0..count)
            .map(|i| IpNet::new(IpAddr::from([10, (i >> 8) as u8, i as u8, 0]), 24).expect("net"))
            .collect()
    }

    #[test]
    fn a_peer_with_many_allowed_ips_is_continued_across_messages() {
        let mut peer = PeerConfig::new(WgPublicKey([0x66; 32]));
        peer.replace_allowed_ips = true;
        peer.preshared_key = Some(PresharedKey([0x77; 32]));
        peer.allowed_ips = many_ips(500);
        let config = DeviceConfig {
            private_key: Some(WgPrivateKey::from_bytes([0x10; 32])),
            replace_peers: true,
            peers: vec![peer],
            ..DeviceConfig::default()
        };
        let messages = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET);
        // 28 bytes per IPv4 allowed IP; the first message also carries the private key (36),
        // device flags (8), preshared key (36) and peer flags (8): 140 fit, then 143 each.
        let per_message: Vec<usize> = messages.iter().map(|m| allowed_ips_in(m).len()).collect();
        assert_eq!(per_message, vec![140, 143, 143, 74]);
        for (i, message) in messages.iter().enumerate() {
            let len = wire(message.clone()).len();
            assert!(len <= SET_MESSAGE_BUDGET, "message {i} is {len} bytes");
            let first = i == 0;
            let device_flags = message
                .attributes
                .iter()
                .any(|a| matches!(a, WireguardAttribute::Flags(_)));
            let private = message
                .attributes
                .iter()
                .any(|a| matches!(a, WireguardAttribute::PrivateKey(_)));
            assert_eq!(
                device_flags, first,
                "replace-peers only in the first message"
            );
            assert_eq!(private, first, "private key only in the first message");
            let peer = only_peer(message);
            let replace = peer.iter().any(|a| {
                matches!(a, WireguardPeerAttribute::Flags(f) if f.contains(WireguardPeerFlags::ReplaceAllowedIps))
            });
            let psk = peer
                .iter()
                .any(|a| matches!(a, WireguardPeerAttribute::PresharedKey(_)));
            assert_eq!(replace, first, "replace-allowed-ips only in the first part");
            assert_eq!(psk, first, "preshared key only in the first part");
        }
        let sent: Vec<IpNet> = messages.iter().flat_map(allowed_ips_in).collect();
        assert_eq!(sent, many_ips(500));
    }

    #[test]
    fn update_only_is_repeated_on_continuations() {
        let mut peer = PeerConfig::new(WgPublicKey([0x66; 32]));
        peer.update_only = true;
        peer.allowed_ips = many_ips(300);
        let config = DeviceConfig {
            peers: vec![peer],
            ..DeviceConfig::default()
        };
        let messages = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET);
        assert!(messages.len() > 1);
        for message in &messages {
            let flags = only_peer(message).iter().find_map(|a| match a {
                WireguardPeerAttribute::Flags(f) => Some(*f),
                _ => None,
            });
            assert_eq!(flags, Some(WireguardPeerFlags::UpdateOnly));
        }
    }

    /// netns.sh's "40 peers with 52 allowed IPs each": split into messages, then read back as
    /// a dump (same attribute layout), the parts join into the same 40 peers.
    #[test]
    fn split_and_coalesce_round_trip() {
        let peers: Vec<PeerConfig> = (1..=40u8)
            .map(|a| {
                let mut peer = PeerConfig::new(WgPublicKey([a; 32]));
                peer.allowed_ips = (1..=52u8)
                    .map(|b| IpNet::new(IpAddr::from([a, b, 0, 0]), 16).expect("net"))
                    .collect();
                peer
            })
            .collect();
        let config = DeviceConfig {
            peers: peers.clone(),
            ..DeviceConfig::default()
        };
        let messages = set_device_messages("wg0", &config, SET_MESSAGE_BUDGET);
        assert!(messages.len() > 1, "2080 allowed IPs need several messages");
        let as_dump: Vec<WireguardMessage> = messages
            .into_iter()
            .map(|mut m| {
                assert!(wire(m.clone()).len() <= SET_MESSAGE_BUDGET);
                m.cmd = WireguardCmd::GetDevice;
                m
            })
            .collect();
        let status = parse_device(&as_dump).expect("parse");
        assert_eq!(status.peers.len(), 40);
        for (got, want) in status.peers.iter().zip(&peers) {
            assert_eq!(got.public_key, want.public_key);
            assert_eq!(got.allowed_ips, want.allowed_ips);
        }
    }

    fn only_peer(message: &WireguardMessage) -> &WireguardPeer {
        let peers = message
            .attributes
            .iter()
            .find_map(|a| match a {
                WireguardAttribute::Peers(p) => Some(p),
                _ => None,
            })
            .expect("peers");
        assert_eq!(peers.len(), 1);
        &peers[0]
    }

    fn allowed_ips_in(message: &WireguardMessage) -> Vec<IpNet> {
        let status = parse_device(&[WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: message.attributes.clone(),
        }])
        .expect("parse");
        status
            .peers
            .into_iter()
            .flat_map(|p| p.allowed_ips)
            .collect()
    }

    /// A `WG_CMD_GET_DEVICE` dump as the kernel sends it, written out byte by byte in the
    /// kernel's attribute order (drivers/net/wireguard/netlink.c): two multi-part messages, the
    /// first peer's allowed IPs continued in the second, then `NLMSG_DONE`.
    fn recorded_dump() -> Vec<u8> {
        let mut private_key = [0x10u8; 32];
        private_key[31] = 0x50;
        concat(&[
            // message 1: 316 bytes, family 0x1c, NLM_F_MULTI, sequence 7, port 4242
            &[0x3c, 0x01, 0x00, 0x00, 0x1c, 0x00, 0x02, 0x00],
            &[0x07, 0x00, 0x00, 0x00, 0x92, 0x10, 0x00, 0x00],
            &[0x00, 0x01, 0x00, 0x00], // cmd GET_DEVICE, version 1
            &[0x06, 0x00, 0x06, 0x00, 0x6c, 0xca, 0x00, 0x00], // LISTEN_PORT 51820
            &[0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00], // FWMARK 0
            &[0x08, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00], // IFINDEX 5
            &IFNAME_WG0,
            &[0x24, 0x00, 0x03, 0x00],
            &private_key,
            &[0x24, 0x00, 0x04, 0x00],
            &[0xaa; 32],
            &[0xc0, 0x00, 0x08, 0x80], // PEERS, 192 bytes
            &[0xbc, 0x00, 0x00, 0x80], // peer A, 188 bytes
            &[0x24, 0x00, 0x01, 0x00],
            &[0x11; 32],
            &[0x24, 0x00, 0x02, 0x00], // PRESHARED_KEY: zero, i.e. none
            &[0x00; 32],
            // LAST_HANDSHAKE_TIME {1700000000 s, 500000000 ns}
            &[0x14, 0x00, 0x06, 0x00],
            &[0x00, 0xf1, 0x53, 0x65, 0x00, 0x00, 0x00, 0x00],
            &[0x00, 0x65, 0xcd, 0x1d, 0x00, 0x00, 0x00, 0x00],
            &[0x06, 0x00, 0x05, 0x00, 0x19, 0x00, 0x00, 0x00], // KEEPALIVE 25
            &[
                0x0c, 0x00, 0x08, 0x00, 0xa0, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ], // TX 1184
            &[
                0x0c, 0x00, 0x07, 0x00, 0x98, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ], // RX 920
            &[0x08, 0x00, 0x0a, 0x00, 0x01, 0x00, 0x00, 0x00], // PROTOCOL_VERSION 1
            &[0x14, 0x00, 0x04, 0x00],                         // ENDPOINT 198.51.100.7:51820
            &[
                0x02, 0x00, 0xca, 0x6c, 198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            &[0x20, 0x00, 0x09, 0x80], // ALLOWEDIPS
            &[0x1c, 0x00, 0x00, 0x80],
            &[0x05, 0x00, 0x03, 0x00, 24, 0x00, 0x00, 0x00],
            &[0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00],
            &[0x08, 0x00, 0x02, 0x00, 10, 1, 0, 0],
            // message 2: 244 bytes
            &[0xf4, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x02, 0x00],
            &[0x07, 0x00, 0x00, 0x00, 0x92, 0x10, 0x00, 0x00],
            &[0x00, 0x01, 0x00, 0x00],
            &[0xe0, 0x00, 0x08, 0x80], // PEERS, 224 bytes
            &[0x54, 0x00, 0x00, 0x80], // peer A continued: key and allowed IPs only
            &[0x24, 0x00, 0x01, 0x00],
            &[0x11; 32],
            &[0x2c, 0x00, 0x09, 0x80],
            &[0x28, 0x00, 0x00, 0x80],
            &[0x05, 0x00, 0x03, 0x00, 64, 0x00, 0x00, 0x00],
            &[0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00],
            &[
                0x14, 0x00, 0x02, 0x00, 0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            &[0x88, 0x00, 0x00, 0x80], // peer B, 136 bytes
            &[0x24, 0x00, 0x01, 0x00],
            &[0x22; 32],
            &[0x24, 0x00, 0x02, 0x00],
            &[0x33; 32],
            &[0x14, 0x00, 0x06, 0x00],
            &[0x00; 16], // never handshaked
            &[0x06, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x0c, 0x00, 0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x0c, 0x00, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x08, 0x00, 0x0a, 0x00, 0x01, 0x00, 0x00, 0x00],
            // NLMSG_DONE
            &[0x14, 0x00, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00],
            &[0x07, 0x00, 0x00, 0x00, 0x92, 0x10, 0x00, 0x00],
            &[0x00, 0x00, 0x00, 0x00],
        ])
    }

    fn read_dump(datagram: &[u8]) -> Result<Vec<WireguardMessage>> {
        let mut out: Vec<GenlMessage<WireguardMessage>> = Vec::new();
        let done = absorb(datagram, 7, Reply::UntilDone, "test", &mut out)?;
        assert!(done, "NLMSG_DONE ends the dump");
        Ok(out.into_iter().map(|m| m.payload).collect())
    }

    #[test]
    fn parses_a_recorded_get_reply() {
        let messages = read_dump(&recorded_dump()).expect("dump");
        assert_eq!(messages.len(), 2);
        let status = parse_device(&messages).expect("device");
        assert_eq!(status.listen_port, 51820);
        assert_eq!(status.fwmark, None);
        let mut private_key = [0x10u8; 32];
        private_key[31] = 0x50;
        assert_eq!(
            status.private_key.as_ref().map(|k| *k.as_bytes()),
            Some(private_key)
        );
        assert_eq!(status.public_key, Some(WgPublicKey([0xaa; 32])));
        assert_eq!(status.peers.len(), 2);

        let a = &status.peers[0];
        assert_eq!(a.public_key, WgPublicKey([0x11; 32]));
        assert!(a.preshared_key.is_none());
        assert_eq!(
            a.endpoint,
            Some("198.51.100.7:51820".parse::<SocketAddr>().expect("addr"))
        );
        assert_eq!(a.persistent_keepalive, Some(25));
        assert_eq!(a.allowed_ips, vec![net("10.1.0.0/24"), net("fd00:1::/64")]);
        assert_eq!(
            a.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!((a.tx_bytes, a.rx_bytes, a.protocol_version), (1184, 920, 1));

        let b = &status.peers[1];
        assert_eq!(b.public_key, WgPublicKey([0x22; 32]));
        assert_eq!(b.preshared_key, Some(PresharedKey([0x33; 32])));
        assert_eq!(b.endpoint, None);
        assert_eq!(b.persistent_keepalive, None);
        assert_eq!(b.last_handshake, None);
        assert!(b.allowed_ips.is_empty());
    }

    #[test]
    fn get_request_bytes() {
        let mut message = GenlMessage::from_payload(get_device_request("wg0"));
        message.set_resolved_family_id(FAMILY);
        let bytes = encode(message, NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP, 3);
        let expected = concat(&[
            &[0x1c, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x03], // REQUEST | DUMP (0x300)
            &[0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x00, 0x01, 0x00, 0x00],
            &IFNAME_WG0,
        ]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_truncated_dump_is_refused() {
        let dump = recorded_dump();
        for cut in [3, 17, 100, 315, 400] {
            let result = read_dump_partial(&dump[..cut]);
            assert!(
                matches!(result, Err(Error::Netlink(_))),
                "cut at {cut}: {result:?}"
            );
        }
    }

    fn read_dump_partial(datagram: &[u8]) -> Result<bool> {
        let mut out: Vec<GenlMessage<WireguardMessage>> = Vec::new();
        absorb(datagram, 7, Reply::UntilDone, "test", &mut out)
    }

    #[test]
    fn bad_allowed_ips_in_a_dump_are_refused() {
        let bad_family = WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv6),
            WireguardAllowedIpAttr::IpAddr("10.0.0.0".parse().expect("ip")),
            WireguardAllowedIpAttr::Cidr(8),
        ]);
        let bad_mask = WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
            WireguardAllowedIpAttr::IpAddr("10.0.0.0".parse().expect("ip")),
            WireguardAllowedIpAttr::Cidr(33),
        ]);
        for ip in [bad_family, bad_mask] {
            let message = WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey([1; 32]),
                    WireguardPeerAttribute::AllowedIps(vec![ip]),
                ])])],
            };
            assert!(matches!(parse_device(&[message]), Err(Error::Netlink(_))));
        }
        let keyless = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::RxBytes(1),
            ])])],
        };
        assert!(matches!(parse_device(&[keyless]), Err(Error::Netlink(_))));
    }

    #[test]
    fn error_answers_carry_the_errno() {
        // NLMSG_ERROR with -EOPNOTSUPP, then the original request header.
        let error = concat(&[
            &[0x24, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00],
            &[0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            &(-libc::EOPNOTSUPP).to_le_bytes(),
            &[0x14, 0x00, 0x00, 0x00, 0x10, 0x00, 0x05, 0x06],
            &[0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        ]);
        let mut out: Vec<GenlMessage<WireguardMessage>> = Vec::new();
        let result = absorb(&error, 1, Reply::UntilAck, "creating", &mut out);
        assert!(
            matches!(&result, Err(e) if e.errno() == libc::EOPNOTSUPP),
            "{result:?}"
        );
        // The same answer to another request is not ours: ignored.
        assert!(matches!(
            absorb(&error, 2, Reply::UntilAck, "x", &mut out),
            Ok(false)
        ));
        // An ack (error code 0) completes a request.
        let mut ack = error.clone();
        ack[16..20].copy_from_slice(&0i32.to_le_bytes());
        assert!(matches!(
            absorb(&ack, 1, Reply::UntilAck, "x", &mut out),
            Ok(true)
        ));
        // A dump interrupted by a change (NLM_F_DUMP_INTR) asks for a retry.
        let mut dump = recorded_dump();
        dump[6] |= 0x10;
        let result = read_dump_partial(&dump);
        assert!(
            matches!(&result, Err(e) if e.errno() == libc::EINTR),
            "{result:?}"
        );
    }

    #[test]
    fn interface_names_are_checked() {
        for good in ["wg0", "weft", "a-b_c.d", "fifteen-chars-x"] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", "sixteen-chars-xx", "a/b", "a b", "a:b", ".", ".."] {
            assert!(
                matches!(check_ifname(bad), Err(Error::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }
}
