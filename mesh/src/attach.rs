//! Containers on the bridge: [`attach`] plugs a network namespace into this host's bridge with
//! a veth pair and gives it its address and routes; [`detach`] unplugs it.
//!
//! The host side of the pair is named after the container id ([`host_ifname`]), so attaching
//! again finds it, and detaching needs nothing but the id. Inside the namespace the interface
//! gets the allocated address, an on-link route to the gateway (the bridge's address), the
//! cluster range through the gateway, and a default route through it unless one exists.
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
//! };
//! attach::attach(&spec).await?; // again: no change
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
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::task::JoinHandle;

use crate::host::netlink::{errno, nl_error, table_of_route, tolerate};
use crate::{Error, Result};

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// What to plug in where: the container's namespace and interface, and the allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Container or pod id; names the host side of the veth pair.
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
}

/// The host-side interface name of `container`'s veth: `vw` and 12 hex digits of a stable
/// hash (FNV-1a) of the id, so the same id always gets the same name.
pub fn host_ifname(container: &str) -> String {
    format!("vw{:012x}", fnv1a(container) >> 16)
}

/// True for names [`host_ifname`] gives: `vw` and 12 lowercase hex digits.
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix("vw").is_some_and(|hex| {
        hex.len() == 12 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The name the container side has while it is still on the host, before the move.
fn transit_ifname(container: &str) -> String {
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

/// An rtnetlink connection whose task is aborted on drop.
struct Conn {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// A connection in the calling thread's namespace.
    fn here() -> Result<Conn> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening rtnetlink socket", e))?;
        Ok(Conn {
            handle,
            task: tokio::spawn(connection),
        })
    }

    /// A connection in the network namespace `ns`. The socket is opened by a thread that
    /// entered the namespace (a socket stays in the namespace it was made in); its task runs
    /// on the caller's runtime.
    fn inside(ns: &File, path: &Path) -> Result<Conn> {
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
        Ok(Conn {
            handle,
            task: tokio::spawn(connection),
        })
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
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

    async fn set(&self, msg: LinkMessage, context: &str) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_error(context, e))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        tolerate(
            self.handle.link().del(link.header.index).execute().await,
            GONE,
            format!("deleting link {name}"),
        )
    }

    async fn v4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let msgs: Vec<AddressMessage> = self
            .handle
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

    async fn has_default_v4(&self) -> Result<bool> {
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("listing routes", e))?;
        Ok(routes
            .iter()
            .any(|r| table_of_route(r) == MAIN_TABLE && r.header.destination_prefix_length == 0))
    }

    async fn add_route(&self, msg: RouteMessage, context: String) -> Result<()> {
        tolerate(
            self.handle.route().add(msg).execute().await,
            &[libc::EEXIST],
            context,
        )
    }
}

const MAIN_TABLE: u32 = 254;
const GONE: &[i32] = &[libc::ENOENT, libc::ESRCH, libc::ENODEV];

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

/// Plugs `spec.netns` into the bridge (see the module docs). Attaching again with the same
/// container id and address changes nothing; the same id with another address, or a
/// namespace that already has an interface called `spec.ifname` that is not ours, is refused.
/// On error nothing of a new attachment is left behind.
pub async fn attach(spec: &Attachment) -> Result<()> {
    spec.validate()?;
    let host = Conn::here()?;
    let Some(bridge) = host.link(&spec.bridge).await? else {
        return Err(Error::InvalidConfig(format!(
            "bridge {} does not exist on this host: is the weft daemon running?",
            spec.bridge
        )));
    };
    let ns = File::open(&spec.netns)
        .map_err(|e| Error::io(format!("opening {}", spec.netns.display()), e))?;
    let inside = Conn::inside(&ns, &spec.netns)?;
    let host_name = host_ifname(&spec.container);

    if let Some(existing) = host.link(&host_name).await? {
        match inside.link(&spec.ifname).await? {
            Some(ours) if peer_index(&existing) == Some(ours.header.index) => {
                // Attached before: make sure it is all there (nothing is undone on error:
                // the attachment predates this call).
                let addrs = inside.v4_addresses(ours.header.index).await?;
                if let Some(other) = addrs.iter().find(|a| **a != spec.address) {
                    return Err(Error::InvalidConfig(format!(
                        "container {} is attached with address {other}, not {}",
                        spec.container, spec.address
                    )));
                }
                host_side(&host, &existing, bridge.header.index, spec).await?;
                return inside_config(&inside, ours.header.index, spec).await;
            }
            _ => {
                // Left over from an attachment whose namespace is gone or was never finished.
                tracing::debug!(link = %host_name, "removing a stale container veth");
                host.delete(&host_name).await?;
            }
        }
    }
    if inside.link(&spec.ifname).await?.is_some() {
        return Err(Error::InvalidConfig(format!(
            "{} already has an interface called {}",
            spec.netns.display(),
            spec.ifname
        )));
    }
    let transit = transit_ifname(&spec.container);
    host.delete(&transit).await?;
    let veth = LinkVeth::new(&host_name, &transit).mtu(spec.mtu).build();
    host.handle
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(|e| nl_error(format!("creating veth {host_name}"), e))?;
    let result = plug(&host, &inside, &ns, bridge.header.index, spec).await;
    if result.is_err() {
        // Deleting one end removes the other, wherever it is, with its addresses and routes.
        if let Err(e) = host.delete(&host_name).await {
            tracing::warn!(link = %host_name, error = %e, "undoing a failed attach");
        }
        let _ = host.delete(&transit).await;
    }
    result
}

/// The steps after the veth exists: move, rename, address, routes, up.
async fn plug(host: &Conn, inside: &Conn, ns: &File, bridge: u32, spec: &Attachment) -> Result<()> {
    let host_name = host_ifname(&spec.container);
    let transit = transit_ifname(&spec.container);
    let missing = |name: &str| Error::Netlink(format!("link {name} vanished while attaching"));
    let peer = host
        .link(&transit)
        .await?
        .ok_or_else(|| missing(&transit))?;
    host.set(
        LinkUnspec::new_with_index(peer.header.index)
            .setns_by_fd(ns.as_raw_fd())
            .build(),
        "moving the veth into the container's namespace",
    )
    .await?;
    let moved = inside
        .link(&transit)
        .await?
        .ok_or_else(|| missing(&transit))?;
    inside
        .set(
            LinkUnspec::new_with_index(moved.header.index)
                .name(spec.ifname.clone())
                .build(),
            &format!("renaming {transit} to {}", spec.ifname),
        )
        .await?;
    let ours = host
        .link(&host_name)
        .await?
        .ok_or_else(|| missing(&host_name))?;
    host_side(host, &ours, bridge, spec).await?;
    inside_config(inside, moved.header.index, spec).await
}

/// The host end: on the bridge, MTU, up.
async fn host_side(host: &Conn, link: &LinkMessage, bridge: u32, spec: &Attachment) -> Result<()> {
    let name = host_ifname(&spec.container);
    let mut msg = LinkUnspec::new_with_index(link.header.index).mtu(spec.mtu);
    if controller(link) != Some(bridge) {
        msg = msg.controller(bridge);
    }
    host.set(
        msg.up().build(),
        &format!("putting {name} on {}", spec.bridge),
    )
    .await
}

/// The container end (already named `spec.ifname`): MTU, address, up, lo up, routes.
async fn inside_config(inside: &Conn, index: u32, spec: &Attachment) -> Result<()> {
    let ifname = &spec.ifname;
    inside
        .set(
            LinkUnspec::new_with_index(index).mtu(spec.mtu).build(),
            &format!("setting the MTU of {ifname}"),
        )
        .await?;
    if !inside.v4_addresses(index).await?.contains(&spec.address) {
        match inside
            .handle
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
    inside
        .set(
            LinkUnspec::new_with_index(index).up().build(),
            &format!("setting {ifname} up"),
        )
        .await?;
    if let Some(lo) = inside.link("lo").await? {
        inside
            .set(
                LinkUnspec::new_with_index(lo.header.index).up().build(),
                "setting lo up",
            )
            .await?;
    }
    let gw = spec.gateway;
    inside
        .add_route(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(gw, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build(),
            format!("adding route {gw}/32 dev {ifname}"),
        )
        .await?;
    let range = spec.cluster_range;
    inside
        .add_route(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(range.network(), range.prefix_len())
                .gateway(gw)
                .output_interface(index)
                .build(),
            format!("adding route {range} via {gw}"),
        )
        .await?;
    if !inside.has_default_v4().await? {
        inside
            .add_route(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gw)
                    .output_interface(index)
                    .build(),
                format!("adding default route via {gw}"),
            )
            .await?;
    }
    Ok(())
}

/// Unplugs `container`: deletes the host side of its veth (the container side, its address
/// and routes go with it). Not an error if it is not attached.
pub async fn detach(container: &str) -> Result<()> {
    let host = Conn::here()?;
    host.delete(&host_ifname(container)).await?;
    host.delete(&transit_ifname(container)).await
}

/// True if `container` has a veth on this host.
pub async fn is_attached(container: &str) -> Result<bool> {
    let host = Conn::here()?;
    Ok(host.link(&host_ifname(container)).await?.is_some())
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
        }
    }

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("container-a");
        assert_eq!(a, host_ifname("container-a"));
        assert_ne!(a, host_ifname("container-b"));
        assert_eq!(a.len(), 14);
        assert!(valid_ifname(&a));
        assert!(valid_ifname(&transit_ifname("container-a")));
        assert!(is_host_ifname(&a) && is_host_ifname(&host_ifname("")));
        for other in [
            transit_ifname("container-a"),
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
