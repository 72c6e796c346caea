//! The TUN device: `/dev/net/tun` opened in layer-3 mode without packet information.
//!
//! This is the only module of weft-mesh that needs `unsafe` (the TUN and interface ioctls);
//! each block says why it is sound. The rest of the crate sees a safe [`Tun`].
//!
//! Offloads: with [`TunOptions::offload`] the device is opened with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6)`: reads start with a `virtio_net_hdr`
//! and may be TCP super-segments of up to 64 KiB (split by `userspace::offload`); writes get
//! a header saying "plain packet" prepended here. A kernel that refuses the offload gets a
//! plain device instead ([`Tun::offload`] says which one was opened).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::{Error, Result};

/// WireGuard's default MTU (1500 less the largest overhead: IPv6 + UDP + WireGuard).
pub const DEFAULT_MTU: u32 = 1420;

/// Linux limits interface names to 15 bytes plus the terminating NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

// From <linux/if_tun.h>; libc does not export all of them.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// `sizeof(struct virtio_net_hdr)`, the TUN default header size.
pub const VNET_HDR_LEN: usize = 10;
/// A `virtio_net_hdr` for a plain packet whose checksums are complete (GSO_NONE, no flags).
const PLAIN_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// How to open the device.
#[derive(Debug, Clone)]
pub struct TunOptions {
    pub mtu: u32,
    /// Ask for TCP segmentation offload (falls back to a plain device if refused).
    pub offload: bool,
}

impl Default for TunOptions {
    fn default() -> Self {
        Self {
            mtu: DEFAULT_MTU,
            offload: true,
        }
    }
}

/// An open TUN device. Reads and writes are whole IP packets; the descriptor is
/// non-blocking, for tokio's `AsyncFd`.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    vnet_hdr: bool,
}

/// `struct ifreq` with the union members this module uses.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

#[repr(C)]
union IfReqData {
    flags: libc::c_short,
    mtu: libc::c_int,
    // The kernel's union is 24 bytes (struct sockaddr / ifmap); keep the size.
    _pad: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<Self> {
        check_name(name)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: IfReqData { _pad: [0; 24] },
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(req)
    }
}

/// Refuse names the kernel would refuse or truncate.
pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "invalid interface name {name:?}"
        )))
    }
}

impl Tun {
    /// Create (or attach to) the TUN interface `name` and set its MTU.
    pub fn open(name: &str, options: &TunOptions) -> Result<Self> {
        let mut tun = None;
        if options.offload {
            match Self::open_with(name, true) {
                Ok(t) => tun = Some(t),
                Err(e) => tracing::debug!(iface = name, error = %e, "no TUN offload; plain device"),
            }
        }
        let tun = match tun {
            Some(t) => t,
            None => Self::open_with(name, false)?,
        };
        tun.set_mtu(options.mtu)?;
        Ok(tun)
    }

    fn open_with(name: &str, vnet_hdr: bool) -> Result<Self> {
        let tun_err = |source| Error::Tun {
            name: name.to_owned(),
            source,
        };
        let mut req = IfReq::new(name)?;
        req.data.flags = IFF_TUN | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(tun_err)?;
        // SAFETY: the descriptor is open and owned by `file`; TUNSETIFF reads and writes a
        // `struct ifreq`, which `IfReq` lays out (repr(C), full size), and `req` outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(tun_err(io::Error::last_os_error()));
        }
        if vnet_hdr {
            let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            // SAFETY: the descriptor is open; TUNSETOFFLOAD takes its argument by value.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, offloads) };
            if rc < 0 {
                // Dropping `file` removes the (non-persistent) interface again.
                return Err(tun_err(io::Error::last_os_error()));
            }
        }
        Ok(Tun {
            file,
            name: name.to_owned(),
            vnet_hdr,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads start with a `virtio_net_hdr` and may be TCP super-segments.
    pub fn offload(&self) -> bool {
        self.vnet_hdr
    }

    /// Set the interface MTU (SIOCSIFMTU on a throwaway datagram socket).
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let tun_err = |source| Error::Tun {
            name: self.name.clone(),
            source,
        };
        let mtu = libc::c_int::try_from(mtu)
            .map_err(|_| Error::InvalidConfig(format!("MTU {mtu} out of range")))?;
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")
            .or_else(|_| std::net::UdpSocket::bind("[::]:0"))
            .map_err(tun_err)?;
        let mut req = IfReq::new(&self.name)?;
        req.data.mtu = mtu;
        // SAFETY: `sock` is an open socket; SIOCSIFMTU reads a `struct ifreq` with `ifr_mtu`
        // set, which `req` provides and which outlives the call.
        let rc = unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCSIFMTU as _,
                &mut req as *mut IfReq,
            )
        };
        if rc < 0 {
            return Err(tun_err(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Register with the tokio reactor: readable, and error (the kernel reports a deleted
    /// interface as EPOLLERR). Writes go out directly.
    /// Must be called inside a tokio runtime.
    pub fn into_async(self) -> Result<tokio::io::unix::AsyncFd<Tun>> {
        let name = self.name.clone();
        // SAFETY: `Tun` owns its `File`, so the descriptor is open for as long as the `AsyncFd`
        // owns the `Tun`, and `as_raw_fd` always returns that same descriptor (the field is
        // never replaced).
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                self,
                tokio::io::Interest::READABLE | tokio::io::Interest::ERROR,
            )
        }
        .map_err(|e| Error::Tun {
            name,
            source: e.into(),
        })
    }

    /// Read one packet (with [`Tun::offload`], a `virtio_net_hdr` and then the packet).
    /// `WouldBlock` when none is waiting; any other error means the interface is gone (the
    /// kernel answers EBADFD once it is deleted).
    pub fn read_packet(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write a packet after a `virtio_net_hdr` the caller made (a TCP super-segment, say).
    /// Only for a device opened with offload ([`Tun::offload`]); on a plain device the
    /// header is left out.
    pub fn write_with_header(&self, hdr: &[u8], packet: &[u8]) -> io::Result<usize> {
        if self.vnet_hdr {
            let iov = [IoSlice::new(hdr), IoSlice::new(packet)];
            (&self.file).write_vectored(&iov)
        } else {
            (&self.file).write(packet)
        }
    }

    /// Write one complete IP packet (the offload header, if any, is added here).
    pub fn write_packet(&self, packet: &[u8]) -> io::Result<usize> {
        if self.vnet_hdr {
            let iov = [IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(packet)];
            (&self.file).write_vectored(&iov)
        } else {
            (&self.file).write(packet)
        }
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused() {
        assert!(check_name("wg0").is_ok());
        assert!(check_name("weft-0123456789").is_ok());
        for bad in ["", "weft-01234567890", "a/b", "a b", "..", "x:1"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
