//! The host's desired network state and the diff that turns the current state into it.
//!
//! Pure and sans-IO: drivers read a [`CurrentState`] from the kernel, [`plan`] compares it with
//! the [`HostState`] the reconciler wants, and the drivers apply the [`Change`]s. Only things
//! that carry weft's marks are ever removed: routes in [`ROUTE_TABLE`] with protocol
//! [`ROUTE_PROTOCOL`], rules pointing at [`ROUTE_TABLE`], addresses on weft's own bridge and
//! the nftables table [`super::NFT_TABLE`]. Anything else on the host is invisible to `plan`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Error, Result};

/// weft's own routing table: "ft", the low half of "weft" in ASCII (0x77656674 & 0xffff).
pub const ROUTE_TABLE: u32 = 0x6674;

/// The route protocol (`proto` in `ip route`) that tags weft's routes. 0x77 is "w"; iproute2
/// and the kernel assign no meaning to it.
pub const ROUTE_PROTOCOL: u8 = 0x77;

/// Priority of the `ip rule` that sends lookups to [`ROUTE_TABLE`]; before `main` (32766).
pub const RULE_PRIORITY: u32 = 0x6674;

/// Name of the bridge holding this node's gateway address.
pub const BRIDGE_NAME: &str = "weft";

/// Default MTU for the bridge: 1500 minus WireGuard's worst-case overhead over IPv6 (80).
pub const DEFAULT_MTU: u32 = 1420;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// The bridge pods attach to, holding the node's gateway address (e.g. `10.32.1.1/24`, the
/// first address of the node's space with the space's prefix length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub gateway: IpNet,
    pub mtu: u32,
}

impl BridgeSpec {
    /// The MAC address a new bridge gets: locally administered unicast, `02:77` ("w") and the
    /// gateway's last four bytes. Fixed, because without an address of its own a bridge takes
    /// its lowest port's and changes it when that port leaves; derived from the gateway, so a
    /// bridge recreated after it was deleted has the address the pods' ARP caches hold.
    /// It only has to be unique on the bridge's own segment, which no other node shares.
    pub fn mac(&self) -> [u8; 6] {
        let tail = match self.gateway.addr() {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(a) => {
                let o = a.octets();
                [o[12], o[13], o[14], o[15]]
            }
        };
        [0x02, 0x77, tail[0], tail[1], tail[2], tail[3]]
    }
}

/// A route to another node's address space, through the WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub dev: String,
    pub table: u32,
    pub protocol: u8,
    /// The preferred source address (`src` in `ip route`) for traffic the host itself sends.
    pub src: Option<IpAddr>,
}

impl RouteSpec {
    /// A route in weft's table, tagged with weft's protocol number.
    pub fn weft(dst: IpNet, dev: impl Into<String>) -> Self {
        RouteSpec {
            dst: dst.trunc(),
            dev: dev.into(),
            table: ROUTE_TABLE,
            protocol: ROUTE_PROTOCOL,
            src: None,
        }
    }

    /// True if the route carries both of weft's marks; only those may ever be deleted.
    pub fn is_weft(&self) -> bool {
        self.table == ROUTE_TABLE && self.protocol == ROUTE_PROTOCOL
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dev {} table {} proto {}",
            self.dst, self.dev, self.table, self.protocol
        )?;
        match self.src {
            Some(src) => write!(f, " src {src}"),
            None => Ok(()),
        }
    }
}

/// `ip rule add pref PRIORITY lookup TABLE` for one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    pub family: Family,
    pub table: u32,
    pub priority: u32,
}

impl RuleSpec {
    pub fn weft(family: Family) -> Self {
        RuleSpec {
            family,
            table: ROUTE_TABLE,
            priority: RULE_PRIORITY,
        }
    }
}

/// The fail-closed rules: a packet to the cluster range, outside this node's own space, that
/// would leave by any interface other than WireGuard (or the bridge, or loopback) is dropped.
/// With `masquerade`, pod traffic leaving the cluster range is also source-NATed to the
/// host's address (see [`super::firewall`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    pub cluster_ranges: BTreeSet<IpNet>,
    pub local_space: BTreeSet<IpNet>,
    pub wg_ifname: String,
    pub bridge: String,
    /// Masquerade packets from the cluster range to anywhere outside it (and outside
    /// multicast) that leave by neither WireGuard nor the bridge: pods reach the host's
    /// network and beyond with the host's address; traffic between pods keeps its source.
    pub masquerade: bool,
}

impl FirewallSpec {
    /// The same rules with masquerading set to `on`.
    pub fn with_masquerade(&self, on: bool) -> FirewallSpec {
        FirewallSpec {
            masquerade: on,
            ..self.clone()
        }
    }
}

/// Everything weft keeps on a host, as the reconciler wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// `None` until the node owns address space (no gateway address yet): the bridge, if one
    /// is there, is then left as it is.
    pub bridge: Option<BridgeSpec>,
    pub wg_ifname: String,
    pub routes: BTreeSet<RouteSpec>,
    pub fail_closed: FirewallSpec,
}

impl HostState {
    /// The state of a node alone in its cluster: bridge and firewall (without masquerading:
    /// see [`HostState::set_masquerade`]), no routes yet. Add one route per other node's
    /// address space with [`HostState::add_peer_space`].
    pub fn new(
        bridge: BridgeSpec,
        wg_ifname: impl Into<String>,
        cluster_ranges: impl IntoIterator<Item = IpNet>,
        local_space: impl IntoIterator<Item = IpNet>,
    ) -> Self {
        let wg_ifname = wg_ifname.into();
        let fail_closed = FirewallSpec {
            cluster_ranges: cluster_ranges.into_iter().map(|n| n.trunc()).collect(),
            local_space: local_space.into_iter().map(|n| n.trunc()).collect(),
            wg_ifname: wg_ifname.clone(),
            bridge: bridge.name.clone(),
            masquerade: false,
        };
        HostState {
            bridge: Some(bridge),
            wg_ifname,
            routes: BTreeSet::new(),
            fail_closed,
        }
    }

    /// The state of a node that owns no address space yet: the fail-closed firewall (naming
    /// the bridge `bridge_name` that will come) and routes to other nodes, but no bridge.
    pub fn without_bridge(
        bridge_name: impl Into<String>,
        wg_ifname: impl Into<String>,
        cluster_ranges: impl IntoIterator<Item = IpNet>,
    ) -> Self {
        let wg_ifname = wg_ifname.into();
        HostState {
            bridge: None,
            wg_ifname: wg_ifname.clone(),
            routes: BTreeSet::new(),
            fail_closed: FirewallSpec {
                cluster_ranges: cluster_ranges.into_iter().map(|n| n.trunc()).collect(),
                local_space: BTreeSet::new(),
                wg_ifname,
                bridge: bridge_name.into(),
                masquerade: false,
            },
        }
    }

    /// Turns masquerading of pod traffic that leaves the cluster range on or off (off in a
    /// new state; `weft launch` turns it on unless told not to).
    pub fn set_masquerade(&mut self, on: bool) {
        self.fail_closed.masquerade = on;
    }

    /// The name of weft's bridge (whether or not this state has one).
    pub fn bridge_name(&self) -> &str {
        &self.fail_closed.bridge
    }

    /// Routes one more piece of this node's own space (not the one holding the gateway,
    /// which the bridge's address already routes) to the bridge, in weft's table. It must
    /// be part of the local space given to [`HostState::new`].
    pub fn add_local_space_route(&mut self, space: IpNet) -> Result<()> {
        let space = space.trunc();
        if !self.fail_closed.local_space.contains(&space) {
            return Err(Error::InvalidConfig(format!(
                "{space} is not this node's space"
            )));
        }
        let bridge = self.fail_closed.bridge.clone();
        self.routes.insert(RouteSpec::weft(space, bridge));
        Ok(())
    }

    /// Routes another node's address space through the WireGuard interface. The space comes
    /// from another node's gossip record, so it is checked: it must lie inside a cluster range
    /// and overlap neither this node's space nor a space already added (a record claiming
    /// `0.0.0.0/0` or our own pods' addresses must not pull that traffic into its tunnel).
    /// A refused space changes nothing.
    pub fn add_peer_space(&mut self, space: IpNet) -> Result<()> {
        let space = space.trunc();
        let overlaps = |other: &IpNet| other.contains(&space) || space.contains(other);
        if !self
            .fail_closed
            .cluster_ranges
            .iter()
            .any(|range| range.contains(&space))
        {
            return Err(Error::InvalidConfig(format!(
                "peer space {space} is outside the cluster range"
            )));
        }
        if let Some(local) = self.fail_closed.local_space.iter().find(|l| overlaps(l)) {
            return Err(Error::InvalidConfig(format!(
                "peer space {space} overlaps this node's space {local}"
            )));
        }
        if let Some(route) = self.routes.iter().find(|r| overlaps(&r.dst)) {
            return Err(Error::InvalidConfig(format!(
                "peer space {space} overlaps another peer's space {}",
                route.dst
            )));
        }
        // The host's own packets to other nodes' pods leave from the gateway address: it is
        // in this node's space, so the peer's WireGuard accepts it as ours, and the answer
        // comes back through the tunnel (from the underlay address it would be dropped).
        let src = self
            .bridge
            .as_ref()
            .map(|b| b.gateway.addr())
            .filter(|gw| Family::of(&IpNet::from(*gw)) == Family::of(&space));
        self.routes.insert(RouteSpec {
            src,
            ..RouteSpec::weft(space, self.wg_ifname.clone())
        });
        Ok(())
    }

    /// One lookup rule per address family that weft routes.
    pub fn rules(&self) -> BTreeSet<RuleSpec> {
        self.routes
            .iter()
            .map(|r| Family::of(&r.dst))
            .chain(self.fail_closed.cluster_ranges.iter().map(Family::of))
            .map(RuleSpec::weft)
            .collect()
    }

    /// What a host looks like once this state is fully applied (what the drivers would read).
    pub fn as_applied(&self) -> CurrentState {
        CurrentState {
            bridge: self.bridge.as_ref().map(|bridge| BridgeState {
                is_bridge: true,
                mtu: bridge.mtu,
                up: true,
                addresses: BTreeSet::from([bridge.gateway]),
            }),
            routes: self.routes.clone(),
            rules: self.rules(),
            firewall: FirewallState::Weft(self.fail_closed.clone()),
            loose_ports: BTreeSet::new(),
        }
    }
}

/// What a link named like weft's bridge looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeState {
    /// False if some other kind of link has taken the name.
    pub is_bridge: bool,
    pub mtu: u32,
    pub up: bool,
    pub addresses: BTreeSet<IpNet>,
}

/// The nftables table `inet weft` as read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FirewallState {
    /// No such table (never made, or flushed with the whole ruleset).
    #[default]
    Missing,
    /// A table by that name that is not exactly what weft writes (edited by hand).
    Other,
    /// weft's table, holding these rules.
    Weft(FirewallSpec),
}

/// What weft finds of its own on the host. Drivers only report things with weft's marks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentState {
    pub bridge: Option<BridgeState>,
    pub routes: BTreeSet<RouteSpec>,
    pub rules: BTreeSet<RuleSpec>,
    pub firewall: FirewallState,
    /// Pods' interfaces (the host ends of their veths, named by
    /// [`crate::attach::host_ifname`]) that are on no bridge: a deleted bridge lets its
    /// ports go, and they must join the new one.
    pub loose_ports: BTreeSet<String>,
}

/// One step towards the desired state. [`plan`] orders them so that the firewall is in place
/// before anything else changes, and stale routes go before new ones come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Replace the whole nftables table in one transaction.
    ReplaceFirewall(FirewallSpec),
    /// Delete a link that took the bridge's name but is not a bridge.
    DeleteLink {
        name: String,
    },
    CreateBridge {
        name: String,
        mtu: u32,
        mac: [u8; 6],
    },
    /// Put a pod's interface (back) on the bridge.
    AttachPort {
        link: String,
        bridge: String,
    },
    SetMtu {
        link: String,
        mtu: u32,
    },
    DelAddress {
        link: String,
        addr: IpNet,
    },
    AddAddress {
        link: String,
        addr: IpNet,
    },
    SetUp {
        link: String,
    },
    DelRule(RuleSpec),
    AddRule(RuleSpec),
    DelRoute(RouteSpec),
    AddRoute(RouteSpec),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::ReplaceFirewall(_) => write!(f, "replace nftables table"),
            Change::DeleteLink { name } => write!(f, "delete link {name}"),
            Change::CreateBridge { name, mtu, .. } => write!(f, "create bridge {name} mtu {mtu}"),
            Change::AttachPort { link, bridge } => write!(f, "attach {link} to bridge {bridge}"),
            Change::SetMtu { link, mtu } => write!(f, "set {link} mtu {mtu}"),
            Change::DelAddress { link, addr } => write!(f, "del address {addr} dev {link}"),
            Change::AddAddress { link, addr } => write!(f, "add address {addr} dev {link}"),
            Change::SetUp { link } => write!(f, "set {link} up"),
            Change::DelRule(r) => write!(
                f,
                "del rule {} pref {} table {}",
                r.family, r.priority, r.table
            ),
            Change::AddRule(r) => write!(
                f,
                "add rule {} pref {} table {}",
                r.family, r.priority, r.table
            ),
            Change::DelRoute(r) => write!(f, "del route {r}"),
            Change::AddRoute(r) => write!(f, "add route {r}"),
        }
    }
}

/// The changes that turn `current` into `desired`: removes what weft owns but no longer wants,
/// adds what is missing, leaves the rest alone. `plan(&d.as_applied(), &d)` is empty.
pub fn plan(current: &CurrentState, desired: &HostState) -> Vec<Change> {
    let mut changes = Vec::new();

    if !matches!(&current.firewall, FirewallState::Weft(spec) if *spec == desired.fail_closed) {
        changes.push(Change::ReplaceFirewall(desired.fail_closed.clone()));
    }

    if let Some(bridge) = &desired.bridge {
        plan_bridge(current.bridge.as_ref(), bridge, &mut changes);
        changes.extend(current.loose_ports.iter().map(|port| Change::AttachPort {
            link: port.clone(),
            bridge: bridge.name.clone(),
        }));
    }

    let rules = desired.rules();
    changes.extend(
        current
            .rules
            .iter()
            .filter(|r| r.table == ROUTE_TABLE && !rules.contains(r))
            .map(|r| Change::DelRule(*r)),
    );
    changes.extend(
        rules
            .iter()
            .filter(|r| !current.rules.contains(r))
            .map(|r| Change::AddRule(*r)),
    );

    changes.extend(
        current
            .routes
            .iter()
            .filter(|r| r.is_weft() && !desired.routes.contains(r))
            .map(|r| Change::DelRoute(r.clone())),
    );
    changes.extend(
        desired
            .routes
            .iter()
            .filter(|r| !current.routes.contains(r))
            .map(|r| Change::AddRoute(r.clone())),
    );
    changes
}

/// The changes that give the bridge its MTU, its gateway address (only) and the up state.
fn plan_bridge(current: Option<&BridgeState>, bridge: &BridgeSpec, changes: &mut Vec<Change>) {
    let link = || bridge.name.clone();
    match current {
        Some(state) if state.is_bridge => {
            if state.mtu != bridge.mtu {
                changes.push(Change::SetMtu {
                    link: link(),
                    mtu: bridge.mtu,
                });
            }
            // The new address goes on before the old ones go: when a bridge loses its last
            // IPv4 address the kernel flushes every route through it, including the routes
            // of further local spaces that this plan believes are still there.
            if !state.addresses.contains(&bridge.gateway) {
                changes.push(Change::AddAddress {
                    link: link(),
                    addr: bridge.gateway,
                });
            }
            for addr in &state.addresses {
                if *addr != bridge.gateway {
                    changes.push(Change::DelAddress {
                        link: link(),
                        addr: *addr,
                    });
                }
            }
            if !state.up {
                changes.push(Change::SetUp { link: link() });
            }
        }
        other => {
            if other.is_some() {
                changes.push(Change::DeleteLink { name: link() });
            }
            changes.push(Change::CreateBridge {
                name: link(),
                mtu: bridge.mtu,
                mac: bridge.mac(),
            });
            changes.push(Change::AddAddress {
                link: link(),
                addr: bridge.gateway,
            });
            changes.push(Change::SetUp { link: link() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    /// A route to a peer's space as a node with a bridge (gateway 10.32.1.1) has it.
    fn peer_route(dst: IpNet) -> RouteSpec {
        RouteSpec {
            src: Some("10.32.1.1".parse().expect("an address")),
            ..RouteSpec::weft(dst, "weft-wg")
        }
    }

    fn desired(peers: &[&str]) -> HostState {
        let mut state = HostState::new(
            BridgeSpec {
                name: BRIDGE_NAME.into(),
                gateway: net("10.32.1.1/24"),
                mtu: DEFAULT_MTU,
            },
            "weft-wg",
            [net("10.32.0.0/12")],
            [net("10.32.1.0/24")],
        );
        for p in peers {
            state.add_peer_space(net(p)).expect("valid peer space");
        }
        state
    }

    #[test]
    fn applied_state_needs_no_changes() {
        let d = desired(&["10.32.2.0/24", "10.32.3.0/24"]);
        assert_eq!(plan(&d.as_applied(), &d), Vec::new());
    }

    #[test]
    fn empty_host_gets_everything_firewall_first() {
        let d = desired(&["10.32.2.0/24"]);
        let changes = plan(&CurrentState::default(), &d);
        assert_eq!(
            changes,
            vec![
                Change::ReplaceFirewall(d.fail_closed.clone()),
                Change::CreateBridge {
                    name: "weft".into(),
                    mtu: DEFAULT_MTU,
                    mac: [0x02, 0x77, 10, 32, 1, 1],
                },
                Change::AddAddress {
                    link: "weft".into(),
                    addr: net("10.32.1.1/24")
                },
                Change::SetUp {
                    link: "weft".into()
                },
                Change::AddRule(RuleSpec::weft(Family::V4)),
                Change::AddRoute(peer_route(net("10.32.2.0/24"))),
            ]
        );
    }

    #[test]
    fn stale_route_removed_before_new_one_added() {
        let before = desired(&["10.32.2.0/24", "10.32.3.0/24"]);
        let after = desired(&["10.32.3.0/24", "10.32.4.0/24"]);
        assert_eq!(
            plan(&before.as_applied(), &after),
            vec![
                Change::DelRoute(peer_route(net("10.32.2.0/24"))),
                Change::AddRoute(peer_route(net("10.32.4.0/24"))),
            ]
        );
    }

    #[test]
    fn foreign_routes_and_rules_are_never_touched() {
        let d = desired(&["10.32.2.0/24"]);
        let mut current = d.as_applied();
        // Same table, other protocol; other table, weft's protocol; main table.
        let foreign = [
            RouteSpec {
                protocol: 4,
                ..RouteSpec::weft(net("10.32.9.0/24"), "eth0")
            },
            RouteSpec {
                table: 254,
                ..RouteSpec::weft(net("10.32.8.0/24"), "eth0")
            },
            RouteSpec {
                table: 254,
                protocol: 3,
                ..RouteSpec::weft(net("0.0.0.0/0"), "eth0")
            },
        ];
        current.routes.extend(foreign.iter().cloned());
        current.rules.insert(RuleSpec {
            family: Family::V4,
            table: 254,
            priority: 100,
        });
        assert_eq!(plan(&current, &d), Vec::new());
    }

    #[test]
    fn stale_bridge_address_and_mtu_are_fixed() {
        let d = desired(&[]);
        let mut current = d.as_applied();
        let Some(bridge) = current.bridge.as_mut() else {
            panic!("as_applied has a bridge");
        };
        bridge.mtu = 1500;
        bridge.up = false;
        bridge.addresses = BTreeSet::from([net("10.32.7.1/24")]);
        assert_eq!(
            plan(&current, &d),
            vec![
                Change::SetMtu {
                    link: "weft".into(),
                    mtu: DEFAULT_MTU
                },
                // The new address first: a bridge without any loses its routes.
                Change::AddAddress {
                    link: "weft".into(),
                    addr: net("10.32.1.1/24")
                },
                Change::DelAddress {
                    link: "weft".into(),
                    addr: net("10.32.7.1/24")
                },
                Change::SetUp {
                    link: "weft".into()
                },
            ]
        );
    }

    #[test]
    fn impostor_link_is_replaced_by_a_bridge() {
        let d = desired(&[]);
        let mut current = d.as_applied();
        if let Some(b) = current.bridge.as_mut() {
            b.is_bridge = false;
        }
        let changes = plan(&current, &d);
        assert_eq!(
            changes[..2],
            [
                Change::DeleteLink {
                    name: "weft".into()
                },
                Change::CreateBridge {
                    name: "weft".into(),
                    mtu: DEFAULT_MTU,
                    mac: [0x02, 0x77, 10, 32, 1, 1],
                }
            ]
        );
    }

    #[test]
    fn deleted_bridge_is_recreated_with_its_address_and_gets_its_pods_back() {
        let d = desired(&["10.32.2.0/24"]);
        let mut current = d.as_applied();
        current.bridge = None;
        current.loose_ports = BTreeSet::from(["vw0123456789ab".to_string()]);
        let changes = plan(&current, &d);
        assert_eq!(
            changes,
            vec![
                Change::CreateBridge {
                    name: "weft".into(),
                    mtu: DEFAULT_MTU,
                    mac: [0x02, 0x77, 10, 32, 1, 1],
                },
                Change::AddAddress {
                    link: "weft".into(),
                    addr: net("10.32.1.1/24")
                },
                Change::SetUp {
                    link: "weft".into()
                },
                Change::AttachPort {
                    link: "vw0123456789ab".into(),
                    bridge: "weft".into()
                },
            ]
        );
        // Without a bridge of its own (no space yet), weft leaves loose ports alone.
        let mut bare = HostState::without_bridge(BRIDGE_NAME, "weft-wg", [net("10.32.0.0/12")]);
        bare.add_peer_space(net("10.32.2.0/24")).expect("valid");
        let mut current = bare.as_applied();
        current.loose_ports = BTreeSet::from(["vw0123456789ab".to_string()]);
        assert_eq!(plan(&current, &bare), Vec::new());
    }

    #[test]
    fn bridge_mac_is_local_unicast_and_follows_the_gateway() {
        let bridge = |gateway: &str| BridgeSpec {
            name: BRIDGE_NAME.into(),
            gateway: net(gateway),
            mtu: DEFAULT_MTU,
        };
        let mac = bridge("10.40.0.0/13").mac();
        assert_eq!(mac, [0x02, 0x77, 10, 40, 0, 0]);
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(bridge("fd32::1:2/64").mac(), [0x02, 0x77, 0, 1, 0, 2]);
        assert_ne!(bridge("10.32.1.0/24").mac(), bridge("10.32.2.0/24").mac());
    }

    #[test]
    fn changed_firewall_is_replaced_and_ipv6_gets_its_rule() {
        let mut d = desired(&["10.32.2.0/24"]);
        let current = d.as_applied();
        d.fail_closed.cluster_ranges.insert(net("fd32::/48"));
        assert_eq!(
            plan(&current, &d),
            vec![
                Change::ReplaceFirewall(d.fail_closed.clone()),
                Change::AddRule(RuleSpec::weft(Family::V6)),
            ]
        );
    }

    #[test]
    fn masquerading_is_part_of_the_firewall_and_off_until_set() {
        let mut d = desired(&["10.32.2.0/24"]);
        assert!(!d.fail_closed.masquerade, "off in a new state");
        let before = d.as_applied();
        d.set_masquerade(true);
        // Only the table changes; the bridge, routes and rules stay.
        assert_eq!(
            plan(&before, &d),
            vec![Change::ReplaceFirewall(d.fail_closed.clone())]
        );
        assert_eq!(plan(&d.as_applied(), &d), Vec::new());
        let mut bare = HostState::without_bridge(BRIDGE_NAME, "weft-wg", [net("10.32.0.0/12")]);
        bare.set_masquerade(true);
        assert!(bare.fail_closed.masquerade, "no space needed to masquerade");
    }

    #[test]
    fn bad_peer_spaces_are_refused_and_change_nothing() {
        let mut d = desired(&["10.32.2.0/24"]);
        let before = d.clone();
        for bad in [
            "0.0.0.0/0",      // everything
            "10.64.0.0/24",   // outside the cluster range
            "10.32.1.128/25", // inside our own space
            "10.32.0.0/16",   // covers our space
            "10.32.2.0/25",   // inside another peer's space
            "fd32::/64",      // no IPv6 cluster range
        ] {
            assert!(d.add_peer_space(net(bad)).is_err(), "{bad} accepted");
            assert_eq!(d, before, "{bad} changed the state");
        }
        // Host bits are cleared, not refused.
        d.add_peer_space(net("10.32.3.7/24")).expect("valid");
        assert!(d.routes.contains(&peer_route(net("10.32.3.0/24"))));
    }

    #[test]
    fn without_space_there_is_firewall_and_routes_but_no_bridge() {
        let mut d = HostState::without_bridge(BRIDGE_NAME, "weft-wg", [net("10.32.0.0/12")]);
        d.add_peer_space(net("10.32.2.0/24")).expect("valid");
        assert_eq!(
            plan(&CurrentState::default(), &d),
            vec![
                Change::ReplaceFirewall(d.fail_closed.clone()),
                Change::AddRule(RuleSpec::weft(Family::V4)),
                Change::AddRoute(RouteSpec::weft(net("10.32.2.0/24"), "weft-wg")),
            ]
        );
        assert_eq!(d.fail_closed.bridge, BRIDGE_NAME);
        assert_eq!(plan(&d.as_applied(), &d), Vec::new());
    }

    #[test]
    fn further_local_spaces_are_routed_to_the_bridge() {
        let mut d = HostState::new(
            BridgeSpec {
                name: BRIDGE_NAME.into(),
                gateway: net("10.32.1.1/24"),
                mtu: DEFAULT_MTU,
            },
            "weft-wg",
            [net("10.32.0.0/12")],
            [net("10.32.1.0/24"), net("10.32.9.0/24")],
        );
        d.add_local_space_route(net("10.32.9.0/24"))
            .expect("own space");
        assert!(d.add_local_space_route(net("10.32.5.0/24")).is_err());
        assert!(d
            .routes
            .contains(&RouteSpec::weft(net("10.32.9.0/24"), BRIDGE_NAME)));
        assert!(d.add_peer_space(net("10.32.9.0/24")).is_err());
    }

    #[test]
    fn applying_a_plan_converges() {
        // Simulate the drivers: apply each change to a CurrentState, then plan again.
        let start = desired(&["10.32.2.0/24", "10.32.5.0/24"]).as_applied();
        let target = desired(&["10.32.5.0/24", "10.32.6.0/24"]);
        let mut state = start;
        for change in plan(&state, &target) {
            match change {
                Change::DelRoute(r) => {
                    state.routes.remove(&r);
                }
                Change::AddRoute(r) => {
                    state.routes.insert(r);
                }
                other => panic!("unexpected change {other}"),
            }
        }
        assert_eq!(plan(&state, &target), Vec::new());
        assert_eq!(state, target.as_applied());
    }
}
