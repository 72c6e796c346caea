//! The crate's error type.
#![forbid(unsafe_code)]

use weft_crypto::NodeId;

/// Everything that can go wrong in the gossip core. Input errors (bad bytes from the network)
/// never change state; they are counted in [`crate::Stats`] as well as returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input is longer than the bound for its kind (datagram or stream).
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The first byte names a protocol version this node does not speak.
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// The input ended before the message did.
    #[error("truncated message")]
    Truncated,
    /// The bytes do not form a valid message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A record breaks a bound (too long, too many labels, ...).
    #[error("invalid record: {0}")]
    InvalidRecord(&'static str),
    /// A record or leave was not signed by the node it is about.
    #[error("signature check failed for node {0:?}")]
    BadSignature(NodeId),
    /// The identity key given to the core does not match the record's node id.
    #[error("identity key does not match the record's node id")]
    IdentityMismatch,
    /// A message on the shared transport starts with a channel tag this node does not know
    /// (see [`crate::frame`]).
    #[error("unknown channel tag {0:#04x}")]
    UnknownChannel(u8),
    /// The local node has left; it can no longer change its record.
    #[error("the local node has left the cluster")]
    HasLeft,
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
