//! Containers on the bridge, for `weft attach` (run by the daemon's pods layer) and the CNI
//! plugin alike: [`attach`] plugs a
//! network namespace into this host's bridge with a veth pair and gives it its address and
//! routes; [`detach`] unplugs it; [`inspect`] and [`host_end`] read back what is there (CNI
//! CHECK). [`prepare`] is the same veth pair for a runtime that moves the container end into
//! its sandbox and configures it itself (Docker's network plugin): the container end stays
//! here, named [`pending_ifname`].
//!
//! The host side of the pair is named after the attachment's id ([`host_ifname`]), so
//! attaching again finds it, and detaching needs nothing but the id. Inside the namespace the
//! interface gets the allocated address, an on-link route to the gateway (the bridge's
//! address), the cluster range and any extra routes through the gateway, and a default route
//! through it unless one exists.
//!
//! Everything on the host side happens in the network namespace of the calling thread; the
//! container side is reached through a netlink socket opened by a short-lived thread that
//! entered the container's namespace (the caller's threads never change namespace).
//!
//! ```no_run
//! # async fn run() -> weft_mesh::Result<()> {
//! use weft_mesh::attach::{self, Attachment};
//! let spec = Attachment {
//!     container: "c1".into(),
//!     netns: "/run/netns/c1".into(),
//!     ifname: "eth0".into(),
//!     address: "10.32.1.5/24".parse().unwrap(),
//!     gateway: "10.32.1.1".parse().unwrap(),
//!     cluster_range: "10.32.0.0/12".parse().unwrap(),
//!     bridge: "weft".into(),
//!     mtu: 1420,
//!     extra_routes: Vec::new(),
//! };
//! let attached = attach::attach(&spec).await?; // again: no change
//! println!("{} in the container", attached.container.name);
//! attach::detach("c1").await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::host::netlink::{
    errno, nl_error, route_dst, route_oif, table_of_route, tolerate, Netlink,
};
use crate::{Error, Result};

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
const MAIN_TABLE: u32 = 254;
const GONE: &[i32] = &[libc::ENOENT, libc::ESRCH, libc::ENODEV];

/// What to plug in where: the container's namespace and interface, and the allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The attachment's id (a container id, or `ID/IFNAME` for the CNI plugin); names the
    /// host side of the veth pair.
    pub container: String,
    /// The container's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`, ...).
    pub netns: PathBuf,
    /// The interface name inside the container (`eth0`).
    pub ifname: String,
    /// The container's address with the prefix length of its block.
    pub address: Ipv4Net,
    /// The bridge's address: reached on-link, next hop for the cluster range and the default.
    pub gateway: Ipv4Addr,
    /// The cluster's pod range, routed through the gateway.
    pub cluster_range: Ipv4Net,
    /// The bridge the host side joins.
    pub bridge: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// More routes in the container: destination and next hop (a delegated IPAM plugin's).
    pub extra_routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// One end of the pair, as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// The index in the end's own namespace.
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// An attachment in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host: Link,
    pub container: Link,
    /// The routes through the gateway the container has from this attachment: the cluster
    /// range (unless the address's own subnet covers it), the extra routes, and the default
    /// route unless the container had another one before.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// A route in the container's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// Index of the output interface.
    pub oif: Option<u32>,
    /// 0 global, 253 link, 254 host.
    pub scope: u8,
}

/// An interface in a container, with its addresses and the namespace's routes (CNI CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub link: Link,
    pub addresses: Vec<Ipv4Net>,
    /// Every IPv4 route of the namespace's main table (not only this interface's).
    pub routes: Vec<RouteInfo>,
}

/// The host side of an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEnd {
    pub link: Link,
    /// The bridge it is a port of.
    pub bridge: Option<String>,
}

/// The host-side interface name of attachment `container`: `vw` and 12 hex digits of a
/// stable hash (FNV-1a) of the id, so the same id always gets the same name.
pub fn host_ifname(container: &str) -> String {
    format!("vw{:012x}", fnv1a(container) >> 16)
}

/// True for names [`host_ifname`] gives: `vw` and 12 lowercase hex digits.
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix("vw").is_some_and(|hex| {
        hex.len() == 12 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The name of the container end of attachment `container` while it is still on the host:
/// `vp` and the same 12 hex digits as [`host_ifname`]. [`prepare`] leaves it so for Docker to
/// move (Docker renames it back to this when it moves it out again); an older weft's
/// [`attach`] made it so before moving it.
pub fn pending_ifname(container: &str) -> String {
    format!("vp{:012x}", fnv1a(container) >> 16)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Attachment {
    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if self.container.is_empty() || self.container.len() > 1024 {
            return bad("container id must be 1 to 1024 bytes".into());
        }
        if !valid_ifname(&self.ifname) {
            return bad(format!(
                "interface name {:?}: 1 to {MAX_IFNAME_LEN} printable characters, no '/' or ':'",
                self.ifname
            ));
        }
        if !valid_ifname(&self.bridge) {
            return bad(format!("bridge name {:?} is not valid", self.bridge));
        }
        if !(68..=65535).contains(&self.mtu) {
            return bad(format!("MTU {} out of range (68 to 65535)", self.mtu));
        }
        let addr = self.address.addr();
        if addr == self.gateway
            || addr == self.address.network()
            || (self.address.prefix_len() < 31 && addr == self.address.broadcast())
        {
            return bad(format!(
                "{} is not a usable container address (gateway {})",
                self.address, self.gateway
            ));
        }
        if !self.cluster_range.contains(&addr) {
            return bad(format!(
                "{} is outside the cluster range {}",
                self.address, self.cluster_range
            ));
        }
        Ok(())
    }
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        index: msg.header.index,
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            _ => {}
        }
    }
    link
}

/// The peer's ifindex of a veth (in the peer's namespace).
fn peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

async fn set(nl: &Netlink, msg: LinkMessage, context: &str) -> Result<()> {
    nl.handle()
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_error(context, e))
}

async fn v4_addresses(nl: &Netlink, index: u32) -> Result<Vec<Ipv4Net>> {
    let msgs: Vec<AddressMessage> = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("listing addresses", e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            Ipv4Net::new(ip, m.header.prefix_len).ok()
        })
        .collect())
}

/// The IPv4 routes of the main table.
async fn main_routes(nl: &Netlink) -> Result<Vec<RouteInfo>> {
    let msgs: Vec<RouteMessage> = nl
        .handle()
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("listing routes", e))?;
    Ok(msgs
        .iter()
        .filter(|m| table_of_route(m) == MAIN_TABLE)
        .filter_map(|m| {
            let Some(IpNet::V4(dst)) = route_dst(m) else {
                return None;
            };
            let gateway = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            Some(RouteInfo {
                dst,
                gateway,
                oif: route_oif(m),
                scope: u8::from(m.header.scope),
            })
        })
        .collect())
}

async fn add_route(nl: &Netlink, msg: RouteMessage, context: String) -> Result<()> {
    tolerate(
        nl.handle().route().add(msg).execute().await,
        &[libc::EEXIST],
        context,
    )
}

fn open_netns(path: &Path) -> Result<(File, Netlink)> {
    let ns = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let inside = Netlink::connect_in(&ns, path)?;
    Ok((ns, inside))
}

/// Plugs `spec.netns` into the bridge (see the module docs). Attaching again with the same
/// id and address changes nothing; the same id with another address, or a namespace that
/// already has an interface called `spec.ifname` that is not ours, is refused. On error
/// nothing of a new attachment is left behind.
pub async fn attach(spec: &Attachment) -> Result<Attached> {
    attach_with(spec, false).await
}

/// Like [`attach`], but an interface called `spec.ifname` in the namespace is refused with
/// [`Error::Exists`] even if it is this attachment's (CNI ADD: "if an interface of the
/// requested name already exists in the container, the plugin must return an error").
pub async fn attach_new(spec: &Attachment) -> Result<Attached> {
    attach_with(spec, true).await
}

async fn attach_with(spec: &Attachment, exclusive: bool) -> Result<Attached> {
    spec.validate()?;
    let host = Netlink::connect()?;
    let Some(bridge) = host.link(&spec.bridge).await? else {
        return Err(Error::InvalidConfig(format!(
            "bridge {} does not exist on this host: is the weft daemon running?",
            spec.bridge
        )));
    };
    let (ns, inside) = open_netns(&spec.netns)?;
    let host_name = host_ifname(&spec.container);
    let exists = || {
        Error::Exists(format!(
            "{} already has an interface called {}",
            spec.netns.display(),
            spec.ifname
        ))
    };

    if let Some(existing) = host.link(&host_name).await? {
        match inside.link(&spec.ifname).await? {
            Some(_) if exclusive => return Err(exists()),
            Some(ours) if peer_index(&existing) == Some(ours.header.index) => {
                // Attached before: make sure it is all there (nothing is undone on error:
                // the attachment predates this call).
                let addrs = v4_addresses(&inside, ours.header.index).await?;
                if let Some(other) = addrs.iter().find(|a| **a != spec.address) {
                    return Err(Error::InvalidConfig(format!(
                        "container {} is attached with address {other}, not {}",
                        spec.container, spec.address
                    )));
                }
                host_side(&host, &existing, bridge.header.index, spec).await?;
                return inside_config(&inside, ours.header.index, spec)
                    .await?
                    .finish(&host, &inside, spec)
                    .await;
            }
            _ => {
                // Left over from an attachment whose namespace is gone or was never finished.
                tracing::debug!(link = %host_name, "removing a stale container veth");
                host.delete_link(&host_name).await?;
            }
        }
    }
    if inside.link(&spec.ifname).await?.is_some() {
        return Err(exists());
    }
    // Left over by an older weft, which made the container end on the host and moved it.
    host.delete_link(&pending_ifname(&spec.container)).await?;
    // The container end is made in the container's namespace, under its final name: moving
    // a device between namespaces waits for an RCU grace period (~20 ms per attachment).
    let veth = veth_message(&host_name, &spec.ifname, spec.mtu, Some(&ns));
    match host.handle().link().add(veth).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => return Err(exists()),
        Err(e) => return Err(nl_error(format!("creating veth {host_name}"), e)),
    }
    let result = match plug(&host, &inside, bridge.header.index, spec).await {
        Ok(done) => done.finish(&host, &inside, spec).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Deleting one end removes the other, wherever it is, with its addresses and routes.
        if let Err(e) = host.delete_link(&host_name).await {
            tracing::warn!(link = %host_name, error = %e, "undoing a failed attach");
        }
    }
    result
}

/// A veth pair: `host_name` here, `peer_name` in the namespace `ns` (here if `None`), both
/// with MTU `mtu`.
fn veth_message(host_name: &str, peer_name: &str, mtu: u32, ns: Option<&File>) -> LinkMessage {
    let mut peer = LinkUnspec::new_with_name(peer_name).mtu(mtu);
    if let Some(ns) = ns {
        peer = peer.setns_by_fd(ns.as_raw_fd());
    }
    let peer = peer.build();
    let mut msg = LinkVeth::new(host_name, peer_name).mtu(mtu).build();
    for attr in &mut msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) = info {
                    *p = peer.clone();
                }
            }
        }
    }
    msg
}

/// The container end configured: its index and its routes through the gateway.
struct Configured {
    index: u32,
    routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

impl Configured {
    /// Reads both ends back for the caller.
    async fn finish(self, host: &Netlink, inside: &Netlink, spec: &Attachment) -> Result<Attached> {
        let host_name = host_ifname(&spec.container);
        let missing = |name: &str| Error::Netlink(format!("link {name} vanished while attaching"));
        let host_end = host
            .link(&host_name)
            .await?
            .ok_or_else(|| missing(&host_name))?;
        let container = inside
            .link(&spec.ifname)
            .await?
            .filter(|l| l.header.index == self.index)
            .ok_or_else(|| missing(&spec.ifname))?;
        Ok(Attached {
            host: link_of(&host_end),
            container: link_of(&container),
            routes: self.routes,
        })
    }
}

/// The steps after the veth exists: the host end on the bridge, the container end's
/// address, routes, up.
async fn plug(
    host: &Netlink,
    inside: &Netlink,
    bridge: u32,
    spec: &Attachment,
) -> Result<Configured> {
    let host_name = host_ifname(&spec.container);
    let missing = |name: &str| Error::Netlink(format!("link {name} vanished while attaching"));
    let ours = host
        .link(&host_name)
        .await?
        .ok_or_else(|| missing(&host_name))?;
    let inner = inside
        .link(&spec.ifname)
        .await?
        .ok_or_else(|| missing(&spec.ifname))?;
    host_side(host, &ours, bridge, spec).await?;
    inside_config(inside, inner.header.index, spec).await
}

/// The host end: on the bridge, MTU, up.
async fn host_side(
    host: &Netlink,
    link: &LinkMessage,
    bridge: u32,
    spec: &Attachment,
) -> Result<()> {
    host_end_on_bridge(host, link, bridge, &spec.container, &spec.bridge, spec.mtu).await
}

async fn host_end_on_bridge(
    host: &Netlink,
    link: &LinkMessage,
    bridge: u32,
    container: &str,
    bridge_name: &str,
    mtu: u32,
) -> Result<()> {
    let name = host_ifname(container);
    let mut msg = LinkUnspec::new_with_index(link.header.index).mtu(mtu);
    if controller(link) != Some(bridge) {
        msg = msg.controller(bridge);
    }
    set(
        host,
        msg.up().build(),
        &format!("putting {name} on {bridge_name}"),
    )
    .await
}

/// The container end (already named `spec.ifname`): MTU, address, up, lo up, routes.
async fn inside_config(inside: &Netlink, index: u32, spec: &Attachment) -> Result<Configured> {
    let ifname = &spec.ifname;
    set(
        inside,
        LinkUnspec::new_with_index(index).mtu(spec.mtu).build(),
        &format!("setting the MTU of {ifname}"),
    )
    .await?;
    if !v4_addresses(inside, index).await?.contains(&spec.address) {
        match inside
            .handle()
            .address()
            .add(
                index,
                IpAddr::V4(spec.address.addr()),
                spec.address.prefix_len(),
            )
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl_error(format!("adding {} to {ifname}", spec.address), e)),
        }
    }
    set(
        inside,
        LinkUnspec::new_with_index(index).up().build(),
        &format!("setting {ifname} up"),
    )
    .await?;
    if let Some(lo) = inside.link("lo").await? {
        set(
            inside,
            LinkUnspec::new_with_index(lo.header.index).up().build(),
            "setting lo up",
        )
        .await?;
    }
    let gw = spec.gateway;
    add_route(
        inside,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gw, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build(),
        format!("adding route {gw}/32 dev {ifname}"),
    )
    .await?;
    let mut routes = Vec::new();
    let wanted = std::iter::once((spec.cluster_range, gw)).chain(spec.extra_routes.iter().copied());
    for (dst, via) in wanted {
        // The default route is handled below; the address's own subnet is on-link already.
        if dst.prefix_len() == 0
            || spec.address.trunc().contains(&dst)
            || routes.iter().any(|(d, _)| *d == dst)
        {
            continue;
        }
        routes.push((dst, via));
        add_route(
            inside,
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .gateway(via)
                .output_interface(index)
                .build(),
            format!("adding route {dst} via {via}"),
        )
        .await?;
    }
    let defaults: Vec<RouteInfo> = main_routes(inside)
        .await?
        .into_iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .collect();
    let ours = if defaults.is_empty() {
        add_route(
            inside,
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            format!("adding default route via {gw}"),
        )
        .await?;
        true
    } else {
        defaults
            .iter()
            .any(|r| r.gateway == Some(gw) && r.oif == Some(index))
    };
    if ours {
        routes.push((Ipv4Net::default(), gw));
    }
    Ok(Configured { index, routes })
}

/// A veth pair for a runtime that moves the container end into its sandbox and gives it its
/// address and routes itself (Docker's network plugin): the host end ([`host_ifname`]) on
/// `bridge`, up, with `mtu`, as [`attach`] makes it; the container end ([`pending_ifname`])
/// left in this network namespace, down, with the same MTU. Again for the same id: a pair
/// whose container end is still here is kept (and put right); a host end whose container end
/// is elsewhere or gone is replaced. On error nothing new is left behind. Returns the
/// container end as it is now. [`detach`] removes the pair, wherever its container end is.
pub async fn prepare(container: &str, bridge: &str, mtu: u32) -> Result<Link> {
    let bad = |what: String| Err(Error::InvalidConfig(what));
    if container.is_empty() || container.len() > 1024 {
        return bad("container id must be 1 to 1024 bytes".into());
    }
    if !valid_ifname(bridge) {
        return bad(format!("bridge name {bridge:?} is not valid"));
    }
    if !(68..=65535).contains(&mtu) {
        return bad(format!("MTU {mtu} out of range (68 to 65535)"));
    }
    let host = Netlink::connect()?;
    let Some(bridge_link) = host.link(bridge).await? else {
        return Err(Error::InvalidConfig(format!(
            "bridge {bridge} does not exist on this host: is the weft daemon running?"
        )));
    };
    let bridge_index = bridge_link.header.index;
    let host_name = host_ifname(container);
    let peer_name = pending_ifname(container);
    let missing = |name: &str| Error::Netlink(format!("link {name} vanished while preparing"));
    if let Some(existing) = host.link(&host_name).await? {
        match host.link(&peer_name).await? {
            Some(peer) if peer_index(&existing) == Some(peer.header.index) => {
                // Made before: put it right (nothing is undone on error: it predates this call).
                host_end_on_bridge(&host, &existing, bridge_index, container, bridge, mtu).await?;
                set(
                    &host,
                    LinkUnspec::new_with_index(peer.header.index)
                        .mtu(mtu)
                        .build(),
                    &format!("setting the MTU of {peer_name}"),
                )
                .await?;
                let peer = host
                    .link(&peer_name)
                    .await?
                    .ok_or_else(|| missing(&peer_name))?;
                return Ok(link_of(&peer));
            }
            _ => {
                tracing::debug!(link = %host_name, "replacing a container veth whose other end is gone");
                host.delete_link(&host_name).await?;
            }
        }
    }
    host.delete_link(&peer_name).await?;
    match host
        .handle()
        .link()
        .add(veth_message(&host_name, &peer_name, mtu, None))
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            return Err(Error::Exists(format!(
                "an interface called {host_name} or {peer_name} already exists"
            )))
        }
        Err(e) => return Err(nl_error(format!("creating veth {host_name}"), e)),
    }
    let result = async {
        let ours = host
            .link(&host_name)
            .await?
            .ok_or_else(|| missing(&host_name))?;
        host_end_on_bridge(&host, &ours, bridge_index, container, bridge, mtu).await?;
        let peer = host
            .link(&peer_name)
            .await?
            .ok_or_else(|| missing(&peer_name))?;
        Ok(link_of(&peer))
    }
    .await;
    if result.is_err() {
        if let Err(e) = host.delete_link(&host_name).await {
            tracing::warn!(link = %host_name, error = %e, "undoing a failed prepare");
        }
    }
    result
}

/// Unplugs `container`: deletes the host side of its veth (the container side, its address
/// and routes go with it). Not an error if it is not attached.
pub async fn detach(container: &str) -> Result<()> {
    let host = Netlink::connect()?;
    host.delete_link(&host_ifname(container)).await?;
    host.delete_link(&pending_ifname(container)).await
}

/// True if `container` has a veth on this host.
pub async fn is_attached(container: &str) -> Result<bool> {
    let host = Netlink::connect()?;
    Ok(host.link(&host_ifname(container)).await?.is_some())
}

/// True if the namespace at `netns` has an interface called `ifname`. Errors if the
/// namespace cannot be entered.
pub async fn interface_exists(netns: &Path, ifname: &str) -> Result<bool> {
    let (_ns, inside) = open_netns(netns)?;
    Ok(inside.link(ifname).await?.is_some())
}

/// The interface `ifname` in the namespace at `netns` with its addresses, and the
/// namespace's routes; `None` if there is no such interface. Errors if the namespace cannot
/// be entered.
pub async fn inspect(netns: &Path, ifname: &str) -> Result<Option<Observed>> {
    let (_ns, inside) = open_netns(netns)?;
    let Some(msg) = inside.link(ifname).await? else {
        return Ok(None);
    };
    Ok(Some(Observed {
        link: link_of(&msg),
        addresses: v4_addresses(&inside, msg.header.index).await?,
        routes: main_routes(&inside).await?,
    }))
}

/// The host side of attachment `container`, if it has one.
pub async fn host_end(container: &str) -> Result<Option<HostEnd>> {
    let host = Netlink::connect()?;
    let Some(msg) = host.link(&host_ifname(container)).await? else {
        return Ok(None);
    };
    let bridge = match controller(&msg) {
        Some(index) => {
            let mut links = host.handle().link().get().match_index(index).execute();
            match links.try_next().await {
                Ok(Some(b)) => Some(link_of(&b).name),
                Ok(None) => None,
                Err(e) if GONE.contains(&errno(&e).unwrap_or(0)) => None,
                Err(e) => return Err(nl_error("looking up the bridge", e)),
            }
        }
        None => None,
    };
    Ok(Some(HostEnd {
        link: link_of(&msg),
        bridge,
    }))
}

/// The bridge's IPv4 address (the gateway, with its prefix) and MTU, if the bridge exists
/// and has one.
pub async fn bridge_gateway(bridge: &str) -> Result<Option<(Ipv4Net, u32)>> {
    let host = Netlink::connect()?;
    let Some(state) = host.bridge(bridge).await? else {
        return Ok(None);
    };
    Ok(state.addresses.iter().find_map(|a| match a {
        IpNet::V4(v4) => Some((*v4, state.mtu)),
        IpNet::V6(_) => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Attachment {
        Attachment {
            container: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            address: "10.32.1.5/24".parse().expect("net"),
            gateway: "10.32.1.1".parse().expect("ip"),
            cluster_range: "10.32.0.0/12".parse().expect("net"),
            bridge: "weft".into(),
            mtu: 1420,
            extra_routes: Vec::new(),
        }
    }

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("container-a");
        assert_eq!(a, host_ifname("container-a"));
        assert_ne!(a, host_ifname("container-b"));
        assert_ne!(host_ifname("c/eth0"), host_ifname("c/eth1"));
        assert_eq!(a.len(), 14);
        assert!(valid_ifname(&a));
        assert!(valid_ifname(&pending_ifname("container-a")));
        assert!(is_host_ifname(&a) && is_host_ifname(&host_ifname("")));
        for other in [
            pending_ifname("container-a"),
            "vw0123456789a".into(),
            "vw0123456789abc".into(),
            "vw0123456789AB".into(),
            "veth0".into(),
        ] {
            assert!(!is_host_ifname(&other), "{other}");
        }
        // Pinned: a new weft version must find the veths an older one made.
        assert_eq!(
            host_ifname(""),
            format!("vw{:012x}", 0xcbf2_9ce4_8422_2325u64 >> 16)
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(spec().validate().is_ok());
        let mut bad = Vec::new();
        for f in [
            |s: &mut Attachment| s.ifname = "a-name-far-too-long".into(),
            |s: &mut Attachment| s.ifname = "eth/0".into(),
            |s: &mut Attachment| s.ifname = String::new(),
            |s: &mut Attachment| s.container = String::new(),
            |s: &mut Attachment| s.mtu = 10,
            |s: &mut Attachment| s.address = "10.32.1.1/24".parse().expect("net"),
            |s: &mut Attachment| s.address = "10.32.1.0/24".parse().expect("net"),
            |s: &mut Attachment| s.address = "10.32.1.255/24".parse().expect("net"),
            |s: &mut Attachment| s.address = "192.168.1.5/24".parse().expect("net"),
        ] {
            let mut s = spec();
            f(&mut s);
            if s.validate().is_ok() {
                bad.push(s);
            }
        }
        assert!(bad.is_empty(), "accepted: {bad:?}");
    }
}
