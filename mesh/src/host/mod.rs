//! Host-side plumbing the daemon reconciles from the gossip view: the bridge `weft` holding
//! this node's gateway address, routes to the other nodes' address spaces through the
//! WireGuard interface (in weft's own table, tagged with weft's route protocol), the `ip rule`
//! for that table, and the nftables table: fail-closed rules and masquerading of pod traffic
//! that leaves the cluster range.
//!
//! [`model`] is the pure desired state and diff, [`drift`] names what someone else changed,
//! [`peers`] the pure diff of WireGuard peers; [`netlink`] and [`firewall`] are the drivers.
//! [`reconcile`] reads, plans and applies; it is idempotent and, after a restart, removes what
//! is stale and keeps what is right. [`observe`] is its read half, for a caller that wants to
//! see the drift too. [`reset`] removes everything weft put on the host.
//!
//! Everything acts on the network namespace of the calling thread.
//!
//! ```no_run
//! # async fn run() -> weft_mesh::Result<()> {
//! use weft_mesh::host::{self, BridgeSpec, HostState, Netlink};
//! let nl = Netlink::connect()?; // inside a tokio runtime
//! let mut desired = HostState::new(
//!     BridgeSpec { name: host::BRIDGE_NAME.into(), gateway: "10.32.1.1/24".parse().unwrap(), mtu: 1420 },
//!     "weft-wg",
//!     ["10.32.0.0/12".parse().unwrap()], // cluster range
//!     ["10.32.1.0/24".parse().unwrap()], // this node's space
//! );
//! desired.set_masquerade(true); // pods reach the host's network with the host's address
//! desired.add_peer_space("10.32.2.0/24".parse().unwrap())?; // one per other node
//! let changes = host::reconcile(&nl, &desired).await?; // again: empty
//! let drops = host::firewall::drops().await?; // for metrics
//! host::reset(&nl, host::BRIDGE_NAME, "weft-wg").await?; // `weft reset`
//! # let _ = (changes, drops);
//! # Ok(())
//! # }
//! ```
//!
//! The host must forward IP (`net.ipv4.ip_forward`) for pod traffic, masqueraded or not;
//! that sysctl is not set here (the daemon's datapath turns it on when it is off). The nftables table is replaced only when its rules change, which resets the drop
//! counter (a counter reset, as Prometheus understands it).

pub mod drift;
pub mod firewall;
pub mod model;
pub mod netlink;
pub mod peers;

pub use drift::{drift, Drift, DriftEvent, DriftKind, DriftLog};
pub use firewall::{CounterValue, DROP_COUNTER, NAT_CHAIN, NFT_CHAIN, NFT_TABLE};
pub use model::{
    plan, BridgeSpec, BridgeState, Change, CurrentState, Family, FirewallSpec, FirewallState,
    HostState, RouteSpec, RuleSpec, BRIDGE_NAME, DEFAULT_MTU, ROUTE_PROTOCOL, ROUTE_TABLE,
    RULE_PRIORITY,
};
pub use netlink::Netlink;
pub use peers::{plan_peers, NodePeer};

use crate::Result;

/// What [`observe`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub state: CurrentState,
    /// The fail-closed drop counter, read with the table; `None` when the table is missing.
    pub fail_closed_drops: Option<CounterValue>,
}

/// Reads what weft has on the host now: the link named `bridge` and its addresses, weft's
/// routes and rules, pods' interfaces off any bridge, and the nftables table with its drop
/// counter. Costs a handful of netlink dumps (links, addresses of one link, routes, rules)
/// and one `nft` run.
pub async fn observe(nl: &Netlink, bridge: &str) -> Result<Observed> {
    let links = nl.links().await?;
    let (firewall, fail_closed_drops) = firewall::observe().await?;
    Ok(Observed {
        state: CurrentState {
            bridge: nl.bridge(bridge).await?,
            routes: nl.weft_routes_with(&links).await?,
            rules: nl.weft_rules().await?,
            firewall,
            loose_ports: netlink::loose_ports(&links),
        },
        fail_closed_drops,
    })
}

/// Reads what weft has on the host now (see [`observe`]).
pub async fn current(nl: &Netlink, bridge: &str) -> Result<CurrentState> {
    Ok(observe(nl, bridge).await?.state)
}

/// Brings the host to `desired` and returns the changes it made (empty when the host already
/// matched). On error the remaining changes were still attempted; calling again retries.
pub async fn reconcile(nl: &Netlink, desired: &HostState) -> Result<Vec<Change>> {
    let now = current(nl, desired.bridge_name()).await?;
    let changes = plan(&now, desired);
    nl.apply(&changes).await?;
    Ok(changes)
}

/// Removes everything weft put on the host: its routes and rules, the bridge `bridge`, the
/// WireGuard interface `wg_ifname` and, last (so traffic fails closed to the end), the
/// nftables table. Foreign routes, rules and links are left alone. Idempotent.
pub async fn reset(nl: &Netlink, bridge: &str, wg_ifname: &str) -> Result<()> {
    let mut changes: Vec<Change> = nl
        .weft_routes()
        .await?
        .into_iter()
        .map(Change::DelRoute)
        .collect();
    changes.extend(nl.weft_rules().await?.into_iter().map(Change::DelRule));
    nl.apply(&changes).await?;
    nl.delete_link(bridge).await?;
    nl.delete_link(wg_ifname).await?;
    firewall::remove().await
}
