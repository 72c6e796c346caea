//! The device's UDP sockets: one per address family on the same port, as WireGuard does.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::{Error, Result};

/// Socket buffers big enough to absorb a burst of full-size packets between two wakeups
/// (wireguard-go asks for 7 MiB too). The kernel caps the plain request at
/// net.core.[rw]mem_max, often only 208 KiB; as root the FORCE variant passes that cap.
const SOCKET_BUFFER: usize = 7 << 20;

/// How often to retry a random port that is free for IPv4 but taken for IPv6.
const RANDOM_PORT_TRIES: usize = 16;

#[derive(Debug)]
pub(crate) struct Sockets {
    pub v4: Option<UdpSocket>,
    pub v6: Option<UdpSocket>,
    pub port: u16,
    pub fwmark: Option<u32>,
}

impl Sockets {
    /// Bind `port` (0: a random one) on both families. IPv6 is optional (the host may have
    /// it disabled); IPv4 or IPv6 must work.
    pub fn bind(port: u16, fwmark: Option<u32>) -> Result<Self> {
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
                return Ok(Self {
                    v4,
                    v6,
                    port,
                    fwmark,
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
        let sockets = Sockets::bind(0, None).expect("bind");
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
