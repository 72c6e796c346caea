//! The kernel WireGuard backend: the link is made over rtnetlink, and configured and read over
//! WireGuard's generic netlink family ("wireguard"), as wireguard-tools' `wg` does it.
//!
//! All calls block for as long as the kernel takes to answer (microseconds to a few
//! milliseconds); from async code, call them through `tokio::task::spawn_blocking` when the
//! configuration is large.

#![forbid(unsafe_code)]

mod link;
pub(crate) mod messages;
mod socket;

use std::fmt;

use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlMessage};
use netlink_packet_wireguard::WireguardMessage;
use netlink_sys::protocols::NETLINK_GENERIC;
use tracing::debug;

use self::messages::{check_ifname, get_device_request, parse_device, set_device_messages};
use self::socket::NetlinkSocket;
use crate::config::{DeviceConfig, DeviceStatus};
use crate::{Error, Result};

/// A WireGuard interface of the kernel's own implementation. A cheap handle (name and index):
/// clones name the same interface.
#[derive(Debug, Clone)]
pub struct KernelDevice {
    name: String,
    index: u32,
}

impl KernelDevice {
    /// Creates the interface (`ip link add NAME type wireguard`). It starts down, with no key
    /// and no peers.
    pub fn create(name: &str) -> Result<Self> {
        Self::create_with_mtu(name, None)
    }

    /// Like [`Self::create`], with an MTU (the kernel's default is 1420).
    pub fn create_with_mtu(name: &str, mtu: Option<u32>) -> Result<Self> {
        check_ifname(name)?;
        link::create(name, mtu)?;
        let device = Self::open(name);
        if device.is_err() {
            // Never leave a half-made link behind.
            if let Ok(found) = link::find(name) {
                let _ = link::delete(found.index, name);
            }
        }
        device
    }

    /// Opens an existing interface, which must be a kernel WireGuard link.
    pub fn open(name: &str) -> Result<Self> {
        check_ifname(name)?;
        let found = link::find(name)?;
        if !found.is_wireguard {
            return Err(Error::NotWireGuard(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            index: found.index,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Applies a change with `WG_CMD_SET_DEVICE`. A change too big for one message is sent as
    /// several (see [`messages::set_device_messages`]): the kernel applies each message whole,
    /// but a failure in a later one leaves the earlier ones applied.
    pub fn apply(&self, config: &DeviceConfig) -> Result<()> {
        let context = format!("configuring WireGuard device {}", self.name);
        let mut genl = GenericSocket::open()?;
        let messages = set_device_messages(&self.name, config, messages::SET_MESSAGE_BUDGET);
        debug!(device = %self.name, messages = messages.len(), peers = config.peers.len(), "WG_CMD_SET_DEVICE");
        for message in messages {
            genl.request(message, &context)?;
        }
        Ok(())
    }

    /// Sends only the first `sent` messages of the change [`Self::apply`] would send, as if
    /// the next one had failed, and returns how many there are in all. For tests of what a
    /// partly applied change leaves and how the next round repairs it.
    #[cfg(feature = "fault-injection")]
    pub fn apply_interrupted(&self, config: &DeviceConfig, sent: usize) -> Result<usize> {
        let context = format!("configuring WireGuard device {}", self.name);
        let mut genl = GenericSocket::open()?;
        let messages = set_device_messages(&self.name, config, messages::SET_MESSAGE_BUDGET);
        let total = messages.len();
        for message in messages.into_iter().take(sent) {
            genl.request(message, &context)?;
        }
        Ok(total)
    }

    /// Reads the state with a `WG_CMD_GET_DEVICE` dump.
    pub fn status(&self) -> Result<DeviceStatus> {
        let context = format!("reading WireGuard device {}", self.name);
        let mut genl = GenericSocket::open()?;
        let replies = genl.dump(get_device_request(&self.name), &context)?;
        parse_device(&replies)
    }

    /// False once the interface this device was opened on is gone (deleted, or another link
    /// has its name now).
    pub fn exists(&self) -> Result<bool> {
        match link::find(&self.name) {
            Ok(found) => Ok(found.index == self.index && found.is_wireguard),
            Err(e) if e.errno() == libc::ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the interface.
    pub fn delete(self) -> Result<()> {
        link::delete(self.index, &self.name)
    }
}

/// A generic netlink socket that knows the id of the "wireguard" family.
struct GenericSocket {
    socket: NetlinkSocket,
    family: u16,
}

impl GenericSocket {
    fn open() -> Result<Self> {
        let mut socket = NetlinkSocket::open(NETLINK_GENERIC, "generic netlink")?;
        let family = resolve_family(&mut socket, WireguardMessage::family_name())?;
        Ok(Self { socket, family })
    }

    fn request(&mut self, message: WireguardMessage, context: &str) -> Result<()> {
        let mut message = GenlMessage::from_payload(message);
        message.set_resolved_family_id(self.family);
        self.socket.request(message, 0, context)?;
        Ok(())
    }

    fn dump(&mut self, message: WireguardMessage, context: &str) -> Result<Vec<WireguardMessage>> {
        let mut message = GenlMessage::from_payload(message);
        message.set_resolved_family_id(self.family);
        let replies = self.socket.dump(&message, context)?;
        Ok(replies.into_iter().map(|reply| reply.payload).collect())
    }
}

/// Asks the generic netlink controller for a family's id (`CTRL_CMD_GETFAMILY`).
fn resolve_family(socket: &mut NetlinkSocket, name: &str) -> Result<u16> {
    let context = format!("resolving generic netlink family {name:?}");
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    });
    let replies = socket.request(request, 0, &context)?;
    replies
        .iter()
        .flat_map(|reply| reply.payload.nlas.iter())
        .find_map(|attribute| match attribute {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| Error::Netlink(format!("{context}: no family id in the answer")))
}

/// Why the kernel backend can't be used here.
#[derive(Debug)]
pub struct Unavailable {
    /// What was tried.
    pub step: &'static str,
    pub source: Error,
}

impl Unavailable {
    /// True when the kernel plainly has no WireGuard (no module), as opposed to, say, a
    /// missing permission.
    pub fn no_kernel_support(&self) -> bool {
        self.source.errno() == libc::EOPNOTSUPP
            || (self.step == STEP_FAMILY && self.source.errno() == libc::ENOENT)
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.errno() == libc::EOPNOTSUPP {
            write!(f, "the kernel has no WireGuard support ({})", self.source)
        } else {
            write!(f, "{}: {}", self.step, self.source)
        }
    }
}

const STEP_LINK: &str = "creating a probe wireguard link";
const STEP_FAMILY: &str = "resolving the wireguard generic netlink family";

/// Checks that kernel WireGuard works here: creates a probe link (which also loads the module
/// where it can be loaded), resolves the generic netlink family, and removes the link again.
pub fn probe() -> std::result::Result<(), Unavailable> {
    // Unique per process, and short enough for IFNAMSIZ.
    let name = format!("weftprobe{:x}", std::process::id() & 0xff_ffff);
    link::create(&name, None).map_err(|source| Unavailable {
        step: STEP_LINK,
        source,
    })?;
    let family = GenericSocket::open().map(|_| ());
    let removed = link::find(&name).and_then(|found| link::delete(found.index, &name));
    family.map_err(|source| Unavailable {
        step: STEP_FAMILY,
        source,
    })?;
    removed.map_err(|source| Unavailable {
        step: "removing the probe link",
        source,
    })
}
