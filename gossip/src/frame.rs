//! Application channels over the one QUIC transport.
//!
//! The daemon sends membership packets and IPAM messages over the same connections. A
//! membership packet goes out unchanged: its first byte is the membership protocol version
//! ([`crate::wire::PROTOCOL_VERSION`]), and every version byte stays below
//! [`MEMBERSHIP_VERSION_LIMIT`]. Any other channel gets a leading tag byte outside that range,
//! so the two can never be confused and membership packets cost no extra byte. A version the
//! membership decoder does not speak still goes to it, so it is counted as such.
#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::wire::PROTOCOL_VERSION;

/// First bytes below this are membership protocol versions; tags of other channels are at
/// or above it.
pub const MEMBERSHIP_VERSION_LIMIT: u8 = 0x80;
/// The leading byte of an IPAM message.
pub const IPAM_TAG: u8 = 0xA1;
/// The leading byte of a network policy message (signed policy statements, the daemon's).
pub const POLICY_TAG: u8 = 0xA2;

const _: () = assert!(PROTOCOL_VERSION < MEMBERSHIP_VERSION_LIMIT);
const _: () = assert!(IPAM_TAG >= MEMBERSHIP_VERSION_LIMIT);
const _: () = assert!(POLICY_TAG >= MEMBERSHIP_VERSION_LIMIT);

/// Which protocol a message on the shared transport belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// SWIM membership packets ([`crate::Membership`]).
    Membership,
    /// IPAM messages ([`crate::ipam`]).
    Ipam,
    /// Network policy statements (opaque here; the daemon reads them).
    Policy,
}

/// The bytes to send for `payload` on `channel`. A membership payload is returned unchanged
/// (it already starts with its protocol version); others get their tag in front.
pub fn frame(channel: Channel, payload: &[u8]) -> Vec<u8> {
    match channel {
        Channel::Membership => payload.to_vec(),
        Channel::Ipam | Channel::Policy => {
            let mut out = Vec::with_capacity(1 + payload.len());
            out.push(if channel == Channel::Ipam {
                IPAM_TAG
            } else {
                POLICY_TAG
            });
            out.extend_from_slice(payload);
            out
        }
    }
}

/// Split received bytes into their channel and payload. A membership payload is the whole
/// input (version byte included), ready for [`crate::Membership::handle_message`]; an IPAM
/// payload is what follows the tag. Empty input and unknown tags are errors.
pub fn unframe(bytes: &[u8]) -> Result<(Channel, &[u8])> {
    match bytes.first() {
        None => Err(Error::Truncated),
        Some(&b) if b < MEMBERSHIP_VERSION_LIMIT => Ok((Channel::Membership, bytes)),
        Some(&IPAM_TAG) => Ok((Channel::Ipam, &bytes[1..])),
        Some(&POLICY_TAG) => Ok((Channel::Policy, &bytes[1..])),
        Some(&b) => Err(Error::UnknownChannel(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode_datagram, Message, Packet};

    #[test]
    fn membership_packets_pass_unchanged() {
        let packet = encode_datagram(&Message::Gossip, &[]);
        assert_eq!(packet[0], PROTOCOL_VERSION);
        let framed = frame(Channel::Membership, &packet);
        assert_eq!(framed, packet, "no extra byte");
        let (channel, payload) = unframe(&framed).expect("membership");
        assert_eq!(channel, Channel::Membership);
        assert_eq!(payload, &packet[..]);
        assert!(matches!(decode(payload), Ok(Packet::Datagram { .. })));
    }

    #[test]
    fn ipam_messages_get_a_tag_and_round_trip() {
        for payload in [&b""[..], b"x", &[PROTOCOL_VERSION, 0, 4, 0], &[IPAM_TAG; 3]] {
            let framed = frame(Channel::Ipam, payload);
            assert_eq!(framed[0], IPAM_TAG);
            assert_eq!(&framed[1..], payload);
            assert_eq!(unframe(&framed), Ok((Channel::Ipam, payload)));
        }
    }

    #[test]
    fn an_ipam_message_is_never_taken_for_membership() {
        // Even an IPAM payload that looks like a membership packet stays on its channel, and
        // the membership decoder refuses the framed bytes.
        let lookalike = encode_datagram(&Message::Gossip, &[]);
        let framed = frame(Channel::Ipam, &lookalike);
        assert_eq!(unframe(&framed).map(|(c, _)| c), Ok(Channel::Ipam));
        assert_eq!(decode(&framed), Err(Error::UnknownVersion(IPAM_TAG)));
    }

    #[test]
    fn unknown_tags_and_empty_input_are_errors() {
        assert_eq!(unframe(&[]), Err(Error::Truncated));
        for tag in MEMBERSHIP_VERSION_LIMIT..=u8::MAX {
            let input = [tag, 1, 2];
            let result = unframe(&input);
            if tag == IPAM_TAG {
                assert_eq!(result, Ok((Channel::Ipam, &[1, 2][..])));
            } else if tag == POLICY_TAG {
                assert_eq!(result, Ok((Channel::Policy, &[1, 2][..])));
                assert_eq!(frame(Channel::Policy, &[1, 2]), input);
            } else {
                assert_eq!(result, Err(Error::UnknownChannel(tag)), "tag {tag:#x}");
            }
        }
        // A membership version this node does not speak goes to the membership decoder,
        // which refuses it with its own error.
        assert_eq!(unframe(&[9, 0]), Ok((Channel::Membership, &[9, 0][..])));
        assert_eq!(decode(&[9, 0]), Err(Error::UnknownVersion(9)));
    }
}
