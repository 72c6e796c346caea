//! Gossip for weft: membership, signed node records, IP address management and the QUIC
//! transport. The protocol cores are sans-IO; see docs/ARCHITECTURE.md.
//!
//! The membership core ([`Membership`]) is SWIM with Lifeguard's refinements: round-robin
//! probes with indirect probes through `k` members, suspicion with a timeout that scales
//! with log(N) and shrinks with independent confirmations, refutation by incarnation (the
//! record version), local health awareness, dissemination piggybacked on probes with a
//! retransmit limit of `mult * log10(N)`, and periodic full-state push-pull. [`sim`] runs
//! thousands of cores in virtual time.

mod awareness;
mod broadcast;
mod codec;
mod config;
mod error;
mod members;
mod membership;
mod record;
mod suspicion;

pub mod frame;
pub mod ipam;
pub mod sim;
pub mod transport;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
pub use frame::{frame, unframe, Channel};
pub use members::MemberState;
pub use membership::{Event, MemberInfo, Membership, Stats, Transmit, TransmitKind};
pub use record::{
    Endpoints, LeaveReason, NodeRecord, SignatureCache, SignedLeave, SignedRecord, VerifiedRecord,
    MAX_BODY_LEN, MAX_ENDPOINTS, MAX_IPAM_LEN, MAX_LABELS, MAX_LABEL_BYTES, MAX_NAME_LEN,
    MAX_UNREACHABLE,
};
pub use weft_crypto::NodeId;
