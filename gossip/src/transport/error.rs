//! Errors of the gossip transport.
//!
//! The transport has its own enum for now, so that it builds apart from the gossip core; it can
//! be folded into the crate's error type later.

use std::net::SocketAddr;
use std::sync::Arc;

use weft_crypto::admission::AdmissionError;

/// Everything that can go wrong in the transport. `Clone` so that one failed dial can be
/// reported to every sender that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("invalid transport configuration: {0}")]
    Config(&'static str),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("datagram of {len} bytes is over the limit of {max}")]
    DatagramTooLarge { len: usize, max: usize },
    #[error("stream message of {len} bytes is over the limit of {max}")]
    StreamTooLarge { len: usize, max: usize },
    #[error("too many connections (limit {limit})")]
    TooManyConnections { limit: usize },
    #[error(
        "{addr}: connection refused by the peer (busy, or backing off after a failed admission)"
    )]
    Refused { addr: SocketAddr },
    #[error("{addr}: the peer refused our admission proof (wrong cluster secret?)")]
    AdmissionRejected { addr: SocketAddr },
    #[error("{addr}: the peer failed admission: {reason}")]
    AdmissionFailed {
        addr: SocketAddr,
        #[source]
        reason: AdmissionError,
    },
    #[error("{addr}: the peer is this node itself")]
    SelfConnection { addr: SocketAddr },
    #[error("{addr}: {what} timed out")]
    Timeout {
        addr: SocketAddr,
        what: &'static str,
    },
    #[error("{addr}: cannot connect: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("{addr}: connection lost: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("{addr}: {what}: {reason}")]
    Stream {
        addr: SocketAddr,
        what: &'static str,
        reason: String,
    },
    #[error("the transport is closed")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Map a lost connection to the most telling error: a peer that closed it because our
    /// proof failed, or refused it outright, gets its own variant.
    pub(crate) fn from_connection(addr: SocketAddr, source: quinn::ConnectionError) -> Self {
        match &source {
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == super::CLOSE_ADMISSION_FAILED =>
            {
                Error::AdmissionRejected { addr }
            }
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == super::CLOSE_SELF =>
            {
                Error::SelfConnection { addr }
            }
            quinn::ConnectionError::ConnectionClosed(close)
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Error::Refused { addr }
            }
            _ => Error::Connection { addr, source },
        }
    }
}
