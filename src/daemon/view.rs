//! The hand-over between the gossip driver and the datapath task.
//!
//! The driver owns the membership and IPAM cores; whenever the view changes it publishes a
//! [`MeshView`] on a `tokio::sync::watch` channel. The datapath task owns the WireGuard device
//! and the host's bridge, routes and firewall; it reconciles them to the latest view and
//! publishes a [`DatapathReport`] back on another watch channel, which the driver reads to
//! answer `weft status`/`weft peers` and to advertise the members it cannot reach directly
//! (`NodeRecord::unreachable`, read by the relay choice on every node).
//!
//! Both are plain data: each side can be tested without the other.

// Until the driver and the datapath task are wired to it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use weft_crypto::{NodeId, WgPublicKey};

use super::api::PeerState;

/// What the datapath should look like, from the gossip and IPAM view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshView {
    pub local: LocalNode,
    /// The cluster's pod address range: traffic to it never leaves the host in the clear.
    pub cluster_range: Ipv4Net,
    /// Every other member known with a WireGuard key, in every state (a failed or stopped
    /// node keeps its peer and routes, so its traffic fails closed rather than leaking, and
    /// its tunnel comes back by itself when it does). Left and forgotten nodes are absent.
    pub peers: Vec<MeshPeer>,
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub node_id: NodeId,
    pub name: String,
    /// The WireGuard UDP port to listen on.
    pub wg_port: u16,
    /// The pieces of the cluster range this node owns (IPAM); the bridge's gateway address is
    /// the first address of the first piece. Empty until the node owns space.
    pub spaces: Vec<Ipv4Net>,
}

/// Another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    pub node_id: NodeId,
    pub name: String,
    pub wg_key: WgPublicKey,
    /// WireGuard endpoint candidates from its record, best first: configured, then its own
    /// interface addresses, then the addresses others observed (NAT).
    pub endpoints: Vec<SocketAddr>,
    /// The pieces of the cluster range it owns, as this node's IPAM view has them.
    pub spaces: Vec<Ipv4Net>,
    pub state: PeerState,
    /// The members it says it cannot reach directly (its record's `unreachable`).
    pub unreachable: Vec<NodeId>,
}

/// What the datapath did with the latest view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathReport {
    /// "kernel" or "userspace"; empty until the device exists.
    pub kind: String,
    /// The WireGuard interface's name.
    pub ifname: String,
    /// True once the device, bridge, routes and firewall match the latest view.
    pub ready: bool,
    /// The last reconcile error, if the last attempt failed (it is retried).
    pub error: Option<String>,
    /// One entry per peer in the view.
    pub peers: BTreeMap<NodeId, PeerLink>,
    /// Peers alive in gossip that this node has not completed a handshake with directly for a
    /// while; the driver puts this (sorted, bounded) into this node's record.
    pub unreachable: Vec<NodeId>,
    /// Packets the fail-closed firewall dropped (cleartext that would have left the host).
    pub fail_closed_drops: u64,
}

/// The tunnel to one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerLink {
    /// The endpoint WireGuard uses now (direct path), if any.
    pub endpoint: Option<SocketAddr>,
    /// Set when traffic to this peer goes through a relay node instead of directly.
    pub via: Option<NodeId>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}
