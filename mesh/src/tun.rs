//! The TUN device: `/dev/net/tun` opened in layer-3 mode without packet information.
//!
//! This is the only module of weft-mesh that needs `unsafe` (the TUN and interface ioctls);
//! each block says why it is sound. The rest of the crate sees a safe [`Tun`].
//!
//! Offloads: [`TunOptions`] keeps the flags in one place so that `IFF_VNET_HDR` (TSO/GSO
//! batches with a `virtio_net_hdr` in front of each packet) can be added without touching
//! the engine's callers.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
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

/// How to open the device.
#[derive(Debug, Clone)]
pub struct TunOptions {
    pub mtu: u32,
}

impl Default for TunOptions {
    fn default() -> Self {
        Self { mtu: DEFAULT_MTU }
    }
}

impl TunOptions {
    fn flags(&self) -> libc::c_short {
        IFF_TUN | IFF_NO_PI
    }
}

/// An open TUN device. Reads and writes are whole IP packets; the descriptor is
/// non-blocking, for tokio's `AsyncFd`.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
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
        let tun_err = |source| Error::Tun {
            name: name.to_owned(),
            source,
        };
        let mut req = IfReq::new(name)?;
        req.data.flags = options.flags();
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
        let tun = Tun {
            file,
            name: name.to_owned(),
        };
        tun.set_mtu(options.mtu)?;
        Ok(tun)
    }

    pub fn name(&self) -> &str {
        &self.name
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

    /// Read one packet. `WouldBlock` when none is waiting; any other error means the
    /// interface is gone (the kernel answers EBADFD once it is deleted).
    pub fn read_packet(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one packet.
    pub fn write_packet(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
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
