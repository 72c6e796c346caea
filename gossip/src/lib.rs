//! Gossip for weft: membership, signed node records, IP address management and the QUIC
//! transport. The protocol cores are sans-IO; see docs/ARCHITECTURE.md.

pub mod ipam;
pub mod transport;
