//! The device's UDP sockets: one per address family on the same port, as WireGuard does.
//!
//! Offloads (with `offload`): UDP GSO sends many equal-sized datagrams to one address in
//! one `sendmsg` (a `UDP_SEGMENT` control message), and UDP GRO hands back many datagrams
//! of one sender in one `recvmsg` (the `UDP_GRO` option; a control message says where to
//! cut). Both are probed once when the sockets are made; a kernel or route that refuses GSO
//! at send time turns it off for good (logged once) and the datagrams go one by one.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::{Error, Result};

/// Socket buffers big enough to absorb a burst of full-size packets between two wakeups
/// (wireguard-go asks for 7 MiB too). The kernel caps the plain request at
/// net.core.[rw]mem_max, often only 208 KiB; as root the FORCE variant passes that cap.
const SOCKET_BUFFER: usize = 7 << 20;

/// How often to retry a random port that is free for IPv4 but taken for IPv6.
const RANDOM_PORT_TRIES: usize = 16;

/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS was 64 before 6.1).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: one IPv4 packet's worth, less the IP and UDP headers.
pub(crate) const GSO_MAX_BYTES: usize = 65_535 - 20 - 8;

#[derive(Debug)]
pub(crate) struct Sockets {
    pub v4: Option<UdpSocket>,
    pub v6: Option<UdpSocket>,
    pub port: u16,
    pub fwmark: Option<u32>,
    /// Whether offloads were asked for (kept across a rebind to another port).
    pub offload: bool,
    /// UDP GSO works (probed at bind; cleared on the first send the kernel refuses).
    gso: Cell<bool>,
}

/// One read from a socket: `len` bytes from `from`, which are datagrams of `segment`
/// bytes each (the last may be shorter); without GRO, `segment == len`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub segment: usize,
}

impl Sockets {
    /// Bind `port` (0: a random one) on both families. IPv6 is optional (the host may have
    /// it disabled); IPv4 or IPv6 must work. With `offload`, UDP GSO and GRO where the
    /// kernel has them.
    pub fn bind(port: u16, fwmark: Option<u32>, offload: bool) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..(if port == 0 { RANDOM_PORT_TRIES } else { 1 }) {
            let v4 = match bind_one(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), fwmark) {
                Ok(s) => Some(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(bind_error(port, e)),
                Err(e) => {
                    last_err = Some(e);
                    None
                }
            };
            let bound = match &v4 {
                Some(s) => s.local_addr().map_err(|e| bind_error(port, e))?.port(),
                None => port,
            };
            let v6 = match bind_one(SocketAddr::from((Ipv6Addr::UNSPECIFIED, bound)), fwmark) {
                Ok(s) => Some(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && port == 0 => continue,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(bind_error(port, e)),
                Err(e) => {
                    last_err = Some(e);
                    None
                }
            };
            let port = match &v6 {
                Some(s) if v4.is_none() => s.local_addr().map_err(|e| bind_error(port, e))?.port(),
                _ => bound,
            };
            if v4.is_some() || v6.is_some() {
                let all = || v4.iter().chain(v6.iter());
                let gso = offload && all().all(probe_gso);
                let gro = offload && all().all(enable_gro);
                tracing::debug!(port, gso, gro, "UDP sockets bound");
                return Ok(Self {
                    v4,
                    v6,
                    port,
                    fwmark,
                    offload,
                    gso: Cell::new(gso),
                });
            }
        }
        Err(bind_error(
            port,
            last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)),
        ))
    }

    /// Set (or with `None`, clear) the mark on both sockets.
    pub fn set_fwmark(&mut self, fwmark: Option<u32>) -> Result<()> {
        for socket in self.v4.iter().chain(self.v6.iter()) {
            socket2::SockRef::from(socket)
                .set_mark(fwmark.unwrap_or(0))
                .map_err(|e| Error::io("setting fwmark", e))?;
        }
        self.fwmark = fwmark;
        Ok(())
    }

    /// Send one datagram without waiting; a full socket buffer drops it (UDP may drop).
    pub fn send(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let socket = match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        };
        match socket {
            Some(s) => s.try_send_to(buf, to),
            None => Err(io::Error::from(io::ErrorKind::AddrNotAvailable)),
        }
    }

    /// Send `buf` as datagrams of `segment` bytes (the last may be shorter) to one address:
    /// one GSO `sendmsg` where that works, else one by one. Returns how many datagrams the
    /// one GSO send carried (1 when none was used); a full socket buffer drops them.
    pub fn send_segments(&self, buf: &[u8], segment: usize, to: SocketAddr) -> io::Result<usize> {
        if segment == 0 || buf.len() <= segment || !self.gso.get() {
            for datagram in buf.chunks(segment.max(1)) {
                self.send(datagram, to)?;
            }
            return Ok(1);
        }
        let socket = match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
        .ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))?;
        let Ok(size) = u16::try_from(segment) else {
            return self.send_segments_plain(buf, segment, to);
        };
        let (control, control_len) = gso_control(size);
        let addr = socket2::SockAddr::from(to);
        let iov = [io::IoSlice::new(buf)];
        let msg = socket2::MsgHdr::new()
            .with_addr(&addr)
            .with_buffers(&iov)
            .with_control(&control[..control_len]);
        // Straight to the non-blocking socket: nothing ever waits for it to be writable, so
        // tokio's readiness cache has nothing to learn from the answer.
        let sent = socket2::SockRef::from(socket).sendmsg(&msg, 0);
        match sent {
            Ok(_) => Ok(buf.len().div_ceil(segment)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                // EIO (no checksum offload on the route), EINVAL (segment above the path
                // MTU), ENOPROTOOPT...: this host cannot do it; never try again.
                tracing::info!(error = %e, "UDP GSO refused by the kernel; sending datagrams one by one");
                self.gso.set(false);
                self.send_segments_plain(buf, segment, to)
            }
        }
    }

    fn send_segments_plain(&self, buf: &[u8], segment: usize, to: SocketAddr) -> io::Result<usize> {
        for datagram in buf.chunks(segment) {
            self.send(datagram, to)?;
        }
        Ok(1)
    }

    #[cfg(test)]
    pub fn gso(&self) -> bool {
        self.gso.get()
    }
}

/// Read one datagram, or with GRO several from one sender, without waiting. `control` is
/// scratch space for the control message, made once by [`control_buffer`].
pub(crate) fn recv(socket: &UdpSocket, buf: &mut [u8], control: &mut [u8]) -> io::Result<Received> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage};
    socket.try_io(tokio::io::Interest::READABLE, || {
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut *control),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let len = msg.bytes;
        let from = msg
            .address
            .and_then(|a| match a.family() {
                Some(nix::sys::socket::AddressFamily::Inet) => a
                    .as_sockaddr_in()
                    .map(|a| SocketAddr::V4(SocketAddrV4::from(*a))),
                Some(nix::sys::socket::AddressFamily::Inet6) => a
                    .as_sockaddr_in6()
                    .map(|a| SocketAddr::V6(SocketAddrV6::from(*a))),
                _ => None,
            })
            .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
        let mut segment = len;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(size) = cmsg {
                    segment = usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(len);
                }
            }
        }
        Ok(Received { len, from, segment })
    })
}

/// Room for the control messages [`recv`] may get (the GRO segment size).
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::c_int)
}

/// A `UDP_SEGMENT` control message: `struct cmsghdr` (length, level, type) and the
/// segment size, laid out as CMSG_LEN/CMSG_SPACE do: header and data aligned to `size_t`.
fn gso_control(segment: u16) -> ([u8; 32], usize) {
    const ALIGN: usize = std::mem::size_of::<usize>();
    let header = std::mem::size_of::<libc::cmsghdr>().next_multiple_of(ALIGN);
    let len = header + std::mem::size_of::<u16>();
    let space = header + std::mem::size_of::<u16>().next_multiple_of(ALIGN);
    let mut out = [0u8; 32];
    out[..ALIGN].copy_from_slice(&len.to_ne_bytes());
    out[ALIGN..ALIGN + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    out[ALIGN + 4..ALIGN + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    out[header..header + 2].copy_from_slice(&segment.to_ne_bytes());
    (out, space)
}

/// UDP GSO is there if the kernel knows the socket option.
fn probe_gso(socket: &UdpSocket) -> bool {
    nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::UdpGsoSegment).is_ok()
}

/// Turn UDP GRO on (Linux 5.0); false if the kernel does not have it.
fn enable_gro(socket: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGroSegment, &true).is_ok()
}

fn bind_error(port: u16, source: io::Error) -> Error {
    Error::io(format!("binding UDP port {port}"), source)
}

fn bind_one(addr: SocketAddr, fwmark: Option<u32>) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    if let Some(mark) = fwmark {
        socket.set_mark(mark)?;
    }
    set_buffers(&socket);
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Best effort: FORCE needs CAP_NET_ADMIN; without it, take what the cap allows.
fn set_buffers(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffers_are_large_as_root_and_never_fail_the_bind() {
        let sockets = Sockets::bind(0, None, true).expect("bind");
        let socket = sockets
            .v4
            .as_ref()
            .or(sockets.v6.as_ref())
            .expect("a socket");
        let rcv = socket2::SockRef::from(socket)
            .recv_buffer_size()
            .expect("SO_RCVBUF");
        if nix::unistd::geteuid().is_root() {
            // The kernel reports twice the request (bookkeeping overhead).
            assert!(rcv >= SOCKET_BUFFER, "receive buffer {rcv}");
        } else {
            assert!(rcv > 0);
        }
    }
}

#[cfg(test)]
mod offload_tests {
    use super::*;

    /// Real datagrams over loopback: one GSO send arrives as separate datagrams (or as one
    /// GRO read cut at the right places), byte for byte.
    #[tokio::test]
    async fn gso_sends_and_gro_reads_carry_every_datagram() {
        for offload in [true, false] {
            let tx = Sockets::bind(0, None, offload).expect("bind");
            let rx = Sockets::bind(0, None, offload).expect("bind");
            let Some(rx_socket) = rx.v4.as_ref() else {
                println!("skipped: no IPv4");
                return;
            };
            let to = SocketAddr::from((Ipv4Addr::LOCALHOST, rx.port));
            let datagrams: Vec<Vec<u8>> = (0..10u8)
                .map(|i| vec![i; if i == 9 { 300 } else { 1000 }])
                .collect();
            let buf = datagrams.concat();
            tx.v4
                .as_ref()
                .expect("bound like rx")
                .writable()
                .await
                .expect("writable");
            let carried = tx.send_segments(&buf, 1000, to).expect("send");
            assert_eq!(carried, if tx.gso() { 10 } else { 1 });
            assert_eq!(tx.gso(), offload, "loopback does GSO when asked");
            let mut got = Vec::new();
            let mut data = vec![0u8; 65_535];
            let mut control = control_buffer();
            let mut reads = 0;
            while got.len() < datagrams.len() {
                rx_socket.readable().await.expect("readable");
                match recv(rx_socket, &mut data, &mut control) {
                    Ok(r) => {
                        assert_eq!(r.from.port(), tx.port);
                        reads += 1;
                        got.extend(data[..r.len].chunks(r.segment).map(<[u8]>::to_vec));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("recv: {e}"),
                }
            }
            assert_eq!(got, datagrams, "offload {offload}");
            // Loopback keeps a GSO send whole for a GRO socket: one read.
            assert_eq!(reads, if offload { 1 } else { 10 }, "offload {offload}");
        }
    }

    #[test]
    fn the_gso_control_message_has_the_kernel_layout() {
        let (bytes, space) = gso_control(1452);
        // CMSG_SPACE(2) and CMSG_LEN(2) on 64-bit Linux: 24 and 18.
        if std::mem::size_of::<usize>() == 8 {
            assert_eq!(space, 24);
            assert_eq!(&bytes[..8], &18usize.to_ne_bytes());
            assert_eq!(&bytes[16..18], &1452u16.to_ne_bytes());
        }
    }
}
