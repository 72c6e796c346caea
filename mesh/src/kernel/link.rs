//! The rtnetlink messages for WireGuard links: `ip link add NAME type wireguard`, look-up by
//! name, and delete, done over netlink rather than by running `ip`.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;

use super::socket::NetlinkSocket;
use crate::{Error, Result};

/// A link as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) is_wireguard: bool,
}

/// `RTM_NEWLINK` creating a WireGuard link (sent with `NLM_F_CREATE | NLM_F_EXCL`).
pub(crate) fn new_link_request(name: &str, mtu: Option<u32>) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    message
        .attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Wireguard,
        )]));
    if let Some(mtu) = mtu {
        message.attributes.push(LinkAttribute::Mtu(mtu));
    }
    RouteNetlinkMessage::NewLink(message)
}

/// `RTM_GETLINK` for one link by name.
pub(crate) fn get_link_request(name: &str) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    RouteNetlinkMessage::GetLink(message)
}

/// `RTM_DELLINK` by index.
pub(crate) fn del_link_request(index: u32) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    RouteNetlinkMessage::DelLink(message)
}

/// Reads index and kind out of an `RTM_NEWLINK` answer.
pub(crate) fn parse_link(message: &RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(link) = message else {
        return None;
    };
    let is_wireguard = link.attributes.iter().any(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Wireguard))),
        _ => false,
    });
    Some(Link {
        index: link.header.index,
        is_wireguard,
    })
}

/// Creates a WireGuard link. Fails with `EOPNOTSUPP` where the kernel has no WireGuard.
pub(crate) fn create(name: &str, mtu: Option<u32>) -> Result<()> {
    let mut socket = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink")?;
    socket.request(
        new_link_request(name, mtu),
        NLM_F_CREATE | NLM_F_EXCL,
        &format!("creating WireGuard link {name}"),
    )?;
    Ok(())
}

/// Looks a link up by name.
pub(crate) fn find(name: &str) -> Result<Link> {
    let context = format!("looking up link {name}");
    let mut socket = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink")?;
    let replies = socket.request(get_link_request(name), 0, &context)?;
    replies
        .iter()
        .find_map(parse_link)
        .ok_or_else(|| Error::Netlink(format!("{context}: no link in the answer")))
}

/// Deletes a link by index.
pub(crate) fn delete(index: u32, name: &str) -> Result<()> {
    let mut socket = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink")?;
    socket.request(del_link_request(index), 0, &format!("deleting link {name}"))?;
    Ok(())
}
