//! The demo's underlay over rtnetlink: a bridge `br0` in the underlay namespace and, per
//! host namespace, a veth whose outer end is a port of `br0` and whose inner end is the
//! host's `eth0` with an address from 198.18.0.0/15.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{anyhow, Context};
use futures_util::TryStreamExt;
use netlink_packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

use super::netns;

/// The underlay's prefix length: every host is on-link with every other.
pub const PREFIX_LEN: u8 = 15;
/// The underlay bridge's name inside the underlay namespace.
const BRIDGE: &str = "br0";

/// Host `i`'s (1-based) underlay address.
pub fn host_ip(i: usize) -> Ipv4Addr {
    // i ≤ 10 in the demo; 198.18.0.11 and up.
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

struct Conn {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    fn open() -> anyhow::Result<Conn> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        Ok(Conn {
            handle,
            task: tokio::spawn(connection),
        })
    }

    async fn link(&self, name: &str) -> anyhow::Result<LinkMessage> {
        self.handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("looking up link {name}"))?
            .ok_or_else(|| anyhow!("link {name} not found"))
    }

    async fn set(&self, msg: LinkMessage, what: &str) -> anyhow::Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| what.to_string())
    }

    async fn up(&self, name: &str) -> anyhow::Result<()> {
        let index = self.link(name).await?.header.index;
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            &format!("setting {name} up"),
        )
        .await
    }
}

/// Makes the bridge in the underlay namespace.
pub fn create_bridge(underlay: &Path) -> anyhow::Result<()> {
    netns::block_in(underlay, || async {
        let nl = Conn::open()?;
        nl.handle
            .link()
            .add(LinkBridge::new(BRIDGE).build())
            .execute()
            .await
            .context("creating the underlay bridge")?;
        nl.up(BRIDGE).await?;
        nl.up("lo").await
    })
}

/// Wires host `i` (namespace `host`) to the underlay bridge and gives it its address. Also
/// lets the host forward IP: pod traffic goes from the bridge to the tunnel.
pub fn connect_host(underlay: &Path, host: &Path, i: usize) -> anyhow::Result<()> {
    let host_file = File::open(host).with_context(|| format!("opening {}", host.display()))?;
    let (outer, inner) = (format!("h{i}"), format!("e{i}"));
    netns::block_in(underlay, || async {
        let nl = Conn::open()?;
        nl.handle
            .link()
            .add(LinkVeth::new(&outer, &inner).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {outer}"))?;
        let bridge = nl.link(BRIDGE).await?.header.index;
        let outer_index = nl.link(&outer).await?.header.index;
        nl.set(
            LinkUnspec::new_with_index(outer_index)
                .controller(bridge)
                .up()
                .build(),
            &format!("putting {outer} on {BRIDGE}"),
        )
        .await?;
        let inner_index = nl.link(&inner).await?.header.index;
        nl.set(
            LinkUnspec::new_with_index(inner_index)
                .setns_by_fd(host_file.as_raw_fd())
                .build(),
            &format!("moving {inner} into {}", host.display()),
        )
        .await
    })?;
    netns::block_in(host, || async {
        let nl = Conn::open()?;
        let index = nl.link(&inner).await?.header.index;
        nl.set(
            LinkUnspec::new_with_index(index)
                .name("eth0".to_string())
                .build(),
            "renaming the underlay interface to eth0",
        )
        .await?;
        nl.handle
            .address()
            .add(index, IpAddr::V4(host_ip(i)), PREFIX_LEN)
            .execute()
            .await
            .context("adding the underlay address")?;
        nl.up("eth0").await?;
        nl.up("lo").await?;
        // /proc/sys/net is the namespace of the thread that opens it: this one.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("turning on IP forwarding in the host namespace")
    })
}
