//! The rtnetlink driver: reads weft's bridge, routes and rules from the kernel and applies
//! [`Change`]s. One netlink connection per [`Netlink`], its task aborted on drop.
//!
//! Every change is idempotent: `EEXIST` on an add and `ENOENT`/`ESRCH`/`ENODEV` on a delete
//! mean the kernel already looks the way we want.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, InfoPortKind, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkBridge, LinkUnspec, RouteMessageBuilder};
use tokio::task::JoinHandle;

use super::model::{BridgeState, Change, Family, RouteSpec, RuleSpec, ROUTE_PROTOCOL, ROUTE_TABLE};
use crate::{Error, Result};

/// An rtnetlink connection in the current network namespace (the one of the thread that
/// calls [`Netlink::connect`]).
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The errno of a netlink error answer, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

pub(crate) fn nl_error(context: impl Into<String>, e: rtnetlink::Error) -> Error {
    match &e {
        rtnetlink::Error::NetlinkError(msg) => Error::io(context, msg.to_io()),
        other => Error::Netlink(format!("{}: {other}", context.into())),
    }
}

/// Maps "already there" (for adds) or "already gone" (for deletes) to success.
pub(crate) fn tolerate(
    result: std::result::Result<(), rtnetlink::Error>,
    ok: &[i32],
    context: String,
) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if errno(&e).is_some_and(|n| ok.contains(&n)) => Ok(()),
        Err(e) => Err(nl_error(context, e)),
    }
}

const GONE: &[i32] = &[libc::ENOENT, libc::ESRCH, libc::ENODEV, libc::EADDRNOTAVAIL];

pub(crate) fn table_of_route(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn table_of_rule(msg: &RuleMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn priority_of_rule(msg: &RuleMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

fn family_of(af: AddressFamily) -> Option<Family> {
    match af {
        AddressFamily::Inet => Some(Family::V4),
        AddressFamily::Inet6 => Some(Family::V6),
        _ => None,
    }
}

/// The destination prefix of a route message.
pub(crate) fn route_dst(msg: &RouteMessage) -> Option<IpNet> {
    let len = msg.header.destination_prefix_length;
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let addr = match (addr, msg.header.address_family) {
        (Some(a), _) => a,
        // A default route has no RTA_DST.
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    IpNet::new(addr, len).ok()
}

fn route_src(msg: &RouteMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

pub(crate) fn route_oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

impl Netlink {
    /// Opens the connection and spawns its task on the current tokio runtime. The socket
    /// lives in the network namespace of the calling thread.
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening rtnetlink socket", e))?;
        let connection = tokio::spawn(connection);
        Ok(Netlink { handle, connection })
    }

    /// A connection in the network namespace `ns` (opened from `path`, named in errors). The
    /// socket is opened by a short-lived thread that entered the namespace (a socket stays in
    /// the namespace it was made in; the caller's threads never change namespace); its task
    /// runs on the caller's runtime.
    pub fn connect_in(ns: &std::fs::File, path: &std::path::Path) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::current();
        let opened = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::io(
                            format!("entering network namespace {}", path.display()),
                            e.into(),
                        )
                    })?;
                    let _entered = runtime.enter();
                    rtnetlink::new_connection().map_err(|e| {
                        Error::io(format!("opening rtnetlink socket in {}", path.display()), e)
                    })
                })
                .join()
        });
        let (connection, handle, _) =
            opened.map_err(|_| Error::Netlink("namespace thread panicked".into()))??;
        let connection = tokio::spawn(connection);
        Ok(Netlink { handle, connection })
    }

    /// The connection's handle, for requests this driver does not wrap (`attach` uses it).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link named `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_error(format!("looking up link {name}"), e)),
        }
    }

    async fn link_index(&self, name: &str) -> Result<u32> {
        match self.link(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(Error::io(
                format!("link {name}"),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )),
        }
    }

    /// Every link (one dump).
    pub async fn links(&self) -> Result<Vec<LinkMessage>> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("listing links", e))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("listing addresses", e))
    }

    /// The global-scope addresses of an address message (link-local ones the kernel adds by
    /// itself are not weft's to manage).
    fn address_net(msg: &AddressMessage) -> Option<IpNet> {
        if msg.header.scope != AddressScope::Universe {
            return None;
        }
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })?;
        IpNet::new(addr, msg.header.prefix_len).ok()
    }

    /// The link called `name` as a bridge, `None` if there is no such link.
    pub async fn bridge(&self, name: &str) -> Result<Option<BridgeState>> {
        let Some(link) = self.link(name).await? else {
            return Ok(None);
        };
        let is_bridge = link.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos
                .iter()
                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
            _ => false,
        });
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(0);
        let up = link.header.flags.contains(LinkFlags::Up);
        let addresses = self
            .addresses(link.header.index)
            .await?
            .iter()
            .filter_map(Self::address_net)
            .collect();
        Ok(Some(BridgeState {
            is_bridge,
            mtu,
            up,
            addresses,
        }))
    }

    async fn route_messages(&self) -> Result<Vec<RouteMessage>> {
        let mut all = Vec::new();
        for msg in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_error("listing routes", e))?;
            all.extend(routes);
        }
        Ok(all)
    }

    /// Every route in weft's table that carries weft's protocol number.
    pub async fn weft_routes(&self) -> Result<BTreeSet<RouteSpec>> {
        self.weft_routes_with(&self.links().await?).await
    }

    /// Like [`Netlink::weft_routes`], naming devices from `links` (a [`Netlink::links`] dump).
    pub async fn weft_routes_with(&self, links: &[LinkMessage]) -> Result<BTreeSet<RouteSpec>> {
        let names: HashMap<u32, &str> = links
            .iter()
            .filter_map(|l| Some((l.header.index, link_name(l)?)))
            .collect();
        let mut routes = BTreeSet::new();
        for msg in self.route_messages().await? {
            let table = table_of_route(&msg);
            let protocol = u8::from(msg.header.protocol);
            if table != ROUTE_TABLE || protocol != ROUTE_PROTOCOL {
                continue;
            }
            let (Some(dst), Some(dev)) =
                (route_dst(&msg), route_oif(&msg).and_then(|i| names.get(&i)))
            else {
                continue;
            };
            routes.insert(RouteSpec {
                dst,
                dev: (*dev).to_owned(),
                table,
                protocol,
                src: route_src(&msg),
            });
        }
        Ok(routes)
    }

    async fn rule_messages(&self) -> Result<Vec<RuleMessage>> {
        let mut all = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_error("listing rules", e))?;
            all.extend(rules);
        }
        Ok(all)
    }

    /// Every rule that looks up weft's table.
    pub async fn weft_rules(&self) -> Result<BTreeSet<RuleSpec>> {
        Ok(self
            .rule_messages()
            .await?
            .iter()
            .filter(|m| table_of_rule(m) == ROUTE_TABLE)
            .filter_map(|m| {
                Some(RuleSpec {
                    family: family_of(m.header.family)?,
                    table: ROUTE_TABLE,
                    priority: priority_of_rule(m),
                })
            })
            .collect())
    }

    fn route_message(
        &self,
        route: &RouteSpec,
        oif: u32,
        scope: RouteScope,
    ) -> Result<RouteMessage> {
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .map_err(|e| Error::InvalidConfig(format!("route {route}: {e}")))?;
        let builder = builder
            .output_interface(oif)
            .table_id(route.table)
            .protocol(RouteProtocol::from(route.protocol))
            .scope(scope);
        Ok(match route.src {
            Some(src) => builder
                .pref_source(src)
                .map_err(|e| Error::InvalidConfig(format!("route {route}: {e}")))?
                .build(),
            None => builder.build(),
        })
    }

    async fn apply_one(&self, change: &Change) -> Result<()> {
        let context = change.to_string();
        match change {
            Change::ReplaceFirewall(spec) => super::firewall::apply(spec).await,
            Change::DeleteLink { name } => self.delete_link(name).await,
            Change::CreateBridge { name, mtu, mac } => {
                // Made with the default MTU, then set: an MTU given at creation is not "set
                // by the user" for the kernel, and the bridge would fall back to 1500 when
                // its last port leaves (the last pod detached); one set by RTM_SETLINK stays.
                // (Setting the same value again changes nothing, so it is not done that way.)
                let msg = LinkBridge::new(name).address(mac.to_vec()).build();
                tolerate(
                    self.handle.link().add(msg).execute().await,
                    &[libc::EEXIST],
                    context.clone(),
                )?;
                let index = self.link_index(name).await?;
                let msg = LinkUnspec::new_with_index(index).mtu(*mtu).build();
                self.handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_error(context, e))
            }
            Change::SetMtu { link, mtu } => {
                let index = self.link_index(link).await?;
                let msg = LinkUnspec::new_with_index(index).mtu(*mtu).build();
                self.handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_error(context, e))
            }
            Change::AttachPort { link, bridge } => {
                let index = self.link_index(link).await?;
                let bridge = self.link_index(bridge).await?;
                let msg = LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build();
                self.handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_error(context.clone(), e))?;
                // A port put back on the bridge starts without hairpin mode, as `attach`
                // gives it.
                self.handle
                    .link()
                    .change(hairpin(index))
                    .execute()
                    .await
                    .map_err(|e| nl_error(context, e))
            }
            Change::SetUp { link } => {
                let index = self.link_index(link).await?;
                let msg = LinkUnspec::new_with_index(index).up().build();
                self.handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_error(context, e))
            }
            Change::AddAddress { link, addr } => {
                let index = self.link_index(link).await?;
                tolerate(
                    self.handle
                        .address()
                        .add(index, addr.addr(), addr.prefix_len())
                        .execute()
                        .await,
                    &[libc::EEXIST],
                    context,
                )
            }
            Change::DelAddress { link, addr } => {
                let Some(found) = self.link(link).await? else {
                    return Ok(());
                };
                for msg in self.addresses(found.header.index).await? {
                    if Self::address_net(&msg) == Some(*addr) {
                        tolerate(
                            self.handle.address().del(msg).execute().await,
                            GONE,
                            context.clone(),
                        )?;
                    }
                }
                Ok(())
            }
            Change::AddRule(rule) => {
                let request = self
                    .handle
                    .rule()
                    .add()
                    .table_id(rule.table)
                    .priority(rule.priority)
                    .action(RuleAction::ToTable);
                let result = match rule.family {
                    Family::V4 => request.v4().execute().await,
                    Family::V6 => request.v6().execute().await,
                };
                tolerate(result, &[libc::EEXIST], context)
            }
            Change::DelRule(rule) => {
                for msg in self.rule_messages().await? {
                    if table_of_rule(&msg) == rule.table
                        && priority_of_rule(&msg) == rule.priority
                        && family_of(msg.header.family) == Some(rule.family)
                    {
                        tolerate(
                            self.handle.rule().del(msg).execute().await,
                            GONE,
                            context.clone(),
                        )?;
                    }
                }
                Ok(())
            }
            Change::AddRoute(route) => {
                let oif = self.link_index(&route.dev).await?;
                let msg = self.route_message(route, oif, RouteScope::Link)?;
                tolerate(
                    self.handle.route().add(msg).execute().await,
                    &[libc::EEXIST],
                    context,
                )
            }
            Change::DelRoute(route) => {
                if !route.is_weft() {
                    return Err(Error::InvalidConfig(format!(
                        "refusing to delete {route}: not weft's"
                    )));
                }
                let Some(link) = self.link(&route.dev).await? else {
                    // The route went with its interface.
                    return Ok(());
                };
                // Scope "nowhere" matches a route of any scope on delete.
                let msg = self.route_message(route, link.header.index, RouteScope::NoWhere)?;
                tolerate(self.handle.route().del(msg).execute().await, GONE, context)
            }
        }
    }

    /// Applies `changes` in order. Keeps going after a failure, so one bad change does not
    /// hold up the others, and returns the first error.
    pub async fn apply(&self, changes: &[Change]) -> Result<()> {
        let mut first_error = None;
        for change in changes {
            if let Err(e) = self.apply_one(change).await {
                // The caller reports the (first) error, once; a warning per change and round
                // would repeat every second while it lasts.
                tracing::debug!(%change, error = %e, "host change failed");
                first_error.get_or_insert(e);
            } else {
                tracing::debug!(%change, "host change applied");
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes a link by name; not an error if it does not exist.
    /// Gives interface `ifname` exactly `address` (as a /32) among its addresses inside
    /// `range`, removing the others there; `None` removes them all. True if it changed
    /// anything. weft puts its gateway on the WireGuard device this way: `masquerade`
    /// (kube-proxy's, for NodePorts and host-network clients of Services) takes the address
    /// of the interface a packet leaves by, and one without an address of its own would get
    /// some other interface's (the underlay's), which the far end answers outside the mesh.
    pub async fn set_tunnel_address(
        &self,
        ifname: &str,
        address: Option<std::net::Ipv4Addr>,
        range: ipnet::Ipv4Net,
    ) -> Result<bool> {
        let Some(link) = self.link(ifname).await? else {
            return Ok(false);
        };
        let index = link.header.index;
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error(format!("listing the addresses of {ifname}"), e))?;
        let mut present = false;
        let mut changed = false;
        for msg in msgs.into_iter().filter(|m| m.header.index == index) {
            let Some(ip) = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            }) else {
                continue;
            };
            if Some(ip) == address && msg.header.prefix_len == 32 {
                present = true;
            } else if range.contains(&ip) {
                let result = self.handle.address().del(msg).execute().await;
                tolerate(result, GONE, format!("removing {ip} from {ifname}"))?;
                changed = true;
            }
        }
        if let (Some(ip), false) = (address, present) {
            let result = self
                .handle
                .address()
                .add(index, IpAddr::V4(ip), 32)
                .execute()
                .await;
            tolerate(
                result,
                &[libc::EEXIST],
                format!("adding {ip}/32 to {ifname}"),
            )?;
            changed = true;
        }
        Ok(changed)
    }

    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        tolerate(
            self.handle.link().del(link.header.index).execute().await,
            GONE,
            format!("delete link {name}"),
        )
    }
}

/// The pods' interfaces (host ends of their veths, see [`crate::attach::host_ifname`]) in
/// `links` that are on no bridge. Only veths whose other end is in another namespace count:
/// `weft attach` puts a new one on the bridge right after moving its other end into the
/// container, and the reconciler should not race it for one still being set up.
/// A pod's bridge port in hairpin mode (`bridge link set dev PORT hairpin on`): a frame may
/// go back out of the port it came in by. A pod that reaches itself through a Service
/// needs it when the bridge's traffic passes netfilter (br_netfilter, as kube-proxy
/// expects): the DNAT to the pod's own address happens while the frame is bridged, and the
/// bridge then sends it back to the port it came from.
pub(crate) fn hairpin(index: u32) -> LinkMessage {
    let mut msg = LinkUnspec::new_with_index(index).build();
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            true,
        )])),
    ]));
    msg
}

pub fn loose_ports(links: &[LinkMessage]) -> BTreeSet<String> {
    links
        .iter()
        .filter(|l| {
            let veth = l.attributes.iter().any(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
                _ => false,
            });
            let on_bridge = l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(_)));
            let peer_elsewhere = l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
            veth && !on_bridge && peer_elsewhere
        })
        .filter_map(link_name)
        .filter(|name| crate::attach::is_host_ifname(name))
        .map(str::to_owned)
        .collect()
}
