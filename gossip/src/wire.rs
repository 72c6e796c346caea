//! The wire format: versioned, bounded, hand-written.
//!
//! Every packet starts with the protocol version byte, then a kind byte:
//!
//! - a *datagram* (≤ [`MAX_DATAGRAM`] bytes): one probe message (`Ping`, `Ack`, `PingReq`,
//!   `Nack` or a bare `Gossip`) followed by a count and that many piggybacked [`Update`]s;
//! - a *push-pull* stream message (≤ [`MAX_STREAM`] bytes): the sender's full state.
//!
//! Integers are LEB128 varints (minimal form only), byte strings are length-prefixed, ids and
//! keys are raw 32 bytes. Decoding checks every length against a bound before allocating and
//! rejects trailing bytes; it returns a typed [`Error`] and never panics.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use weft_crypto::{NodeId, Signature};

use crate::codec::{put_addr, put_varint, Reader};
use crate::error::{Error, Result};
use crate::record::{LeaveReason, SignedLeave, SignedRecord};
use crate::MemberState;

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest datagram sent or accepted (fits an IPv6 minimum-MTU QUIC datagram).
pub const MAX_DATAGRAM: usize = 1200;
/// Largest push-pull stream message sent or accepted.
pub const MAX_STREAM: usize = 4 * 1024 * 1024;
/// Most piggybacked updates in one datagram.
pub const MAX_UPDATES: usize = 64;
/// Most entries in one push-pull.
pub const MAX_ENTRIES: usize = 65_536;

const KIND_DATAGRAM: u8 = 0;
const KIND_PUSH_PULL: u8 = 1;

/// A probe-protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// "Are you alive?" — sent to `target`; a node that is not `target` ignores it.
    Ping { seq: u32, target: NodeId },
    /// Reply to a ping. `observed` is the source address the replier saw, so that a node
    /// learns its address as others see it (NAT).
    Ack { seq: u32, observed: SocketAddr },
    /// "Please ping `target` at `addr` for me" (SWIM indirect probe).
    PingReq {
        seq: u32,
        target: NodeId,
        addr: SocketAddr,
    },
    /// Sent by a `PingReq` helper whose own ping got no answer in time (Lifeguard): tells the
    /// requester that the helper, at least, is reachable.
    Nack { seq: u32 },
    /// Nothing but piggybacked updates.
    Gossip,
    /// A ping sent on a reliable stream alongside the indirect probes (memberlist's TCP
    /// fallback ping): answered with an `Ack` on a stream, so packet loss alone does not make
    /// a member suspect.
    PingReliable { seq: u32, target: NodeId },
}

/// A membership change, piggybacked on datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A node's signed record: joins, changes and refutations.
    Alive(SignedRecord),
    /// `from` could not reach `node` at `incarnation`.
    Suspect {
        node: NodeId,
        incarnation: u64,
        from: NodeId,
    },
    /// `from` declared `node` failed at `incarnation`.
    Dead {
        node: NodeId,
        incarnation: u64,
        from: NodeId,
    },
    /// The node's own signed leave.
    Leave(SignedLeave),
}

impl Update {
    /// The node this update is about (the broadcast queue keeps one update per node).
    pub fn subject(&self) -> Option<NodeId> {
        match self {
            Update::Alive(r) => r.peek().ok().map(|(id, _)| id),
            Update::Suspect { node, .. } | Update::Dead { node, .. } => Some(*node),
            Update::Leave(l) => Some(l.node_id),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Update::Alive(r) => {
                out.push(0);
                r.encode(out);
            }
            Update::Suspect {
                node,
                incarnation,
                from,
            }
            | Update::Dead {
                node,
                incarnation,
                from,
            } => {
                out.push(if matches!(self, Update::Suspect { .. }) {
                    1
                } else {
                    2
                });
                out.extend_from_slice(node.as_bytes());
                put_varint(out, *incarnation);
                out.extend_from_slice(from.as_bytes());
            }
            Update::Leave(l) => {
                out.push(3);
                out.extend_from_slice(l.node_id.as_bytes());
                put_varint(out, l.version);
                out.push(l.reason.to_byte());
                out.extend_from_slice(&l.signature.0);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        Ok(match r.u8()? {
            0 => Update::Alive(SignedRecord::decode(r)?),
            tag @ (1 | 2) => {
                let node = NodeId(r.array()?);
                let incarnation = r.varint()?;
                let from = NodeId(r.array()?);
                if tag == 1 {
                    Update::Suspect {
                        node,
                        incarnation,
                        from,
                    }
                } else {
                    Update::Dead {
                        node,
                        incarnation,
                        from,
                    }
                }
            }
            3 => Update::Leave(SignedLeave {
                node_id: NodeId(r.array()?),
                version: r.varint()?,
                reason: LeaveReason::from_byte(r.u8()?)?,
                signature: Signature(r.array()?),
            }),
            _ => return Err(Error::Malformed("unknown update type")),
        })
    }
}

/// One member in a push-pull: its record and what the sender believes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    pub record: SignedRecord,
    pub state: MemberState,
    /// The incarnation the state refers to (≥ the record's version).
    pub incarnation: u64,
    /// The node's own leave (reason and signature), present exactly when `state` is `Left`.
    pub leave: Option<(LeaveReason, Signature)>,
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Datagram {
        message: Message,
        updates: Vec<Update>,
    },
    PushPull {
        reply: bool,
        entries: Vec<StateEntry>,
    },
}

/// Encode a datagram header: version, kind and message. Updates follow as a count and the
/// pre-encoded update bytes (see [`finish_datagram`]).
pub(crate) fn datagram_header(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    out.push(PROTOCOL_VERSION);
    out.push(KIND_DATAGRAM);
    match message {
        Message::Ping { seq, target } => {
            out.push(0);
            put_varint(&mut out, u64::from(*seq));
            out.extend_from_slice(target.as_bytes());
        }
        Message::Ack { seq, observed } => {
            out.push(1);
            put_varint(&mut out, u64::from(*seq));
            put_addr(&mut out, observed);
        }
        Message::PingReq { seq, target, addr } => {
            out.push(2);
            put_varint(&mut out, u64::from(*seq));
            out.extend_from_slice(target.as_bytes());
            put_addr(&mut out, addr);
        }
        Message::Nack { seq } => {
            out.push(3);
            put_varint(&mut out, u64::from(*seq));
        }
        Message::Gossip => out.push(4),
        Message::PingReliable { seq, target } => {
            out.push(5);
            put_varint(&mut out, u64::from(*seq));
            out.extend_from_slice(target.as_bytes());
        }
    }
    out
}

/// Append the update count and the concatenated encoded updates.
pub(crate) fn finish_datagram(mut header: Vec<u8>, count: usize, updates: &[u8]) -> Vec<u8> {
    put_varint(&mut header, count as u64);
    header.extend_from_slice(updates);
    header
}

/// Encode a whole datagram (for tests and tools; the core packs updates itself).
pub fn encode_datagram(message: &Message, updates: &[Update]) -> Vec<u8> {
    let mut body = Vec::new();
    for u in updates {
        u.encode(&mut body);
    }
    finish_datagram(datagram_header(message), updates.len(), &body)
}

/// Encode a push-pull message.
pub fn encode_push_pull(reply: bool, entries: &[StateEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 200);
    out.push(PROTOCOL_VERSION);
    out.push(KIND_PUSH_PULL);
    out.push(u8::from(reply));
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        e.record.encode(&mut out);
        out.push(state_tag(e.state));
        put_varint(&mut out, e.incarnation);
        if let Some((reason, sig)) = &e.leave {
            out.push(reason.to_byte());
            out.extend_from_slice(&sig.0);
        }
    }
    out
}

fn state_tag(s: MemberState) -> u8 {
    match s {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Dead => 2,
        MemberState::Left => 3,
    }
}

/// Decode a packet from untrusted bytes.
pub fn decode(bytes: &[u8]) -> Result<Packet> {
    if bytes.len() > MAX_STREAM {
        return Err(Error::TooLarge {
            len: bytes.len(),
            max: MAX_STREAM,
        });
    }
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(Error::UnknownVersion(version));
    }
    match r.u8()? {
        KIND_DATAGRAM => {
            if bytes.len() > MAX_DATAGRAM {
                return Err(Error::TooLarge {
                    len: bytes.len(),
                    max: MAX_DATAGRAM,
                });
            }
            let message = match r.u8()? {
                0 => Message::Ping {
                    seq: r.u32()?,
                    target: NodeId(r.array()?),
                },
                1 => Message::Ack {
                    seq: r.u32()?,
                    observed: r.addr()?,
                },
                2 => Message::PingReq {
                    seq: r.u32()?,
                    target: NodeId(r.array()?),
                    addr: r.addr()?,
                },
                3 => Message::Nack { seq: r.u32()? },
                4 => Message::Gossip,
                5 => Message::PingReliable {
                    seq: r.u32()?,
                    target: NodeId(r.array()?),
                },
                _ => return Err(Error::Malformed("unknown message type")),
            };
            let n = r.count(MAX_UPDATES)?;
            let mut updates = Vec::with_capacity(n);
            for _ in 0..n {
                updates.push(Update::decode(&mut r)?);
            }
            r.finish()?;
            Ok(Packet::Datagram { message, updates })
        }
        KIND_PUSH_PULL => {
            let reply = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(Error::Malformed("bad reply flag")),
            };
            let n = r.count(MAX_ENTRIES)?;
            // Each entry takes at least ~70 bytes, so `n` cannot make us over-allocate much.
            let mut entries = Vec::with_capacity(n.min(r.remaining() / 64));
            for _ in 0..n {
                let record = SignedRecord::decode(&mut r)?;
                let state = match r.u8()? {
                    0 => MemberState::Alive,
                    1 => MemberState::Suspect,
                    2 => MemberState::Dead,
                    3 => MemberState::Left,
                    _ => return Err(Error::Malformed("unknown member state")),
                };
                let incarnation = r.varint()?;
                let leave = if state == MemberState::Left {
                    Some((LeaveReason::from_byte(r.u8()?)?, Signature(r.array()?)))
                } else {
                    None
                };
                entries.push(StateEntry {
                    record,
                    state,
                    incarnation,
                    leave,
                });
            }
            r.finish()?;
            Ok(Packet::PushPull { reply, entries })
        }
        _ => Err(Error::Malformed("unknown packet kind")),
    }
}
