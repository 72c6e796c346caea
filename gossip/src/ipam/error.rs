//! The IPAM error type. The crate-wide error (owned by the gossip core) can wrap it with
//! `#[from]`; until then it stands alone with its own `Result` alias.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use weft_crypto::NodeId;

use super::GenesisId;

/// Two address spaces that met and were refused: ours and the one a peer belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GenesisConflict {
    pub ours: GenesisSide,
    pub theirs: GenesisSide,
}

/// One side of a genesis conflict: who started that range, and which nodes we saw with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GenesisSide {
    pub genesis: GenesisId,
    pub creator: String,
    pub range: Ipv4Net,
    /// Nodes known to belong to this side (base64 node ids), at most a handful.
    pub nodes: Vec<String>,
}

impl std::fmt::Display for GenesisConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing to merge two address spaces: ours ({} started by {}, nodes {}) and theirs ({} started by {}, nodes {}); \
             they were started apart and could hand out the same addresses. Reset the nodes of one side \
             (their state directory) and join them again",
            self.ours.genesis,
            self.ours.creator,
            self.ours.nodes.join(", "),
            self.theirs.genesis,
            self.theirs.creator,
            self.theirs.nodes.join(", "),
        )
    }
}

/// Errors of the IPAM core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("malformed IPAM data: {0}")]
    Decode(&'static str),
    #[error("{what} from node {node} has a signature that does not verify")]
    BadSignature { what: &'static str, node: NodeId },
    #[error("{0}")]
    GenesisConflict(Box<GenesisConflict>),
    #[error("cluster range {range} is not usable: {reason}")]
    BadRange {
        range: Ipv4Net,
        reason: &'static str,
    },
    #[error("this node has no address space yet: it has not learned the cluster's genesis (start the first node as the seed, or run `weft ipam init` on it)")]
    NoGenesis,
    #[error("this node already has a genesis ({0}); a node starts at most one address space")]
    AlreadyInitialised(GenesisId),
    #[error("the configured range {configured} differs from the cluster's range {cluster}")]
    RangeMismatch {
        configured: Ipv4Net,
        cluster: Ipv4Net,
    },
    #[error("no address space reachable: this node has no free address and no reachable node has any{}; try again later",
        if unreachable.is_empty() { String::new() } else { format!(" (free space is held by unreachable nodes: {})", short_list(unreachable)) })]
    NoAddressSpaceReachable { unreachable: Vec<NodeId> },
    #[error("asked node {} for address space; try again shortly", donor.short())]
    SpaceRequested { donor: NodeId },
    #[error("the cluster range {range} is full: every address is in use")]
    RangeExhausted { range: Ipv4Net },
    #[error("this node was forgotten by node {} (`weft forget`); its space now belongs to others. Reset its state directory to join again", by.short())]
    Forgotten { by: NodeId },
    #[error("this node has left the cluster and handed its space back; reset its state directory to join again")]
    Left,
    #[error("a node cannot forget itself; use leave")]
    ForgetSelf,
    #[error("node {} is reachable; a live node must leave by itself (`weft reset` on it), not be forgotten", .0.short())]
    ForgetReachable(NodeId),
    #[error("node {} is unknown to this node's address space", .0.short())]
    UnknownNode(NodeId),
    #[error("no reachable node to hand this node's space to")]
    NoPeerToHandTo,
    #[error("address {0} is not in the cluster range")]
    NotInRange(Ipv4Addr),
    #[error("address {address} is not in this node's address space ({})", if space.is_empty() { "none yet".to_string() } else { space.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") })]
    NotInOwnSpace {
        address: Ipv4Addr,
        space: Vec<Ipv4Net>,
    },
    #[error("address {address} is in use{}", if holder.is_empty() { " (reserved)".to_string() } else { format!(" by {holder}") })]
    AddressInUse { address: Ipv4Addr, holder: String },
    #[error("{container} already has address {address}; release it first to change it")]
    AlreadyAllocated {
        container: String,
        address: Ipv4Addr,
    },
    #[error("state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn short_list(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(NodeId::short)
        .collect::<Vec<_>>()
        .join(", ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
