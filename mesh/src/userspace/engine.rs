//! The engine: one task that owns the TUN device, the UDP sockets and every peer.
//!
//! Packets flow through two reusable buffers (no allocation per packet). All timers run
//! from one tick for every peer. Configuration and status requests arrive as commands, so
//! the peer table needs no lock.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use weft_crypto::WgPublicKey;

use super::allowed_ips::AllowedIps;
use super::filter::{self, Refused};
use super::gro::Coalescer;
use super::offload::{self, VnetHdr, VNET_HDR_LEN};
use super::peer::{DeviceKey, Peer};
use super::sockets::{self, Sockets, GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use super::{Counters, EngineExit};
use crate::config::{DeviceConfig, DeviceStatus, PeerConfig};
use crate::tun::Tun;
use crate::Result;

/// How often peer timers (handshake retry, rekey, keepalive, expiry) are checked.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// Largest IP packet the TUN device can hand us, and room for WireGuard's overhead.
const MAX_PACKET: usize = 65_535;
const BUFFER_LEN: usize = MAX_PACKET + 256;

/// Packets handled per readiness event before the engine looks at its other inputs.
const BATCH: usize = 64;

/// What WireGuard adds to a packet (header, tag) with room for padding.
const WG_OVERHEAD: usize = 48;

/// Size of a cookie reply, which is not proof that the sender holds a key.
const COOKIE_REPLY_LEN: usize = 64;

/// Peer indices are 24 bits: boringtun shifts them left by 8 for session indices.
const INDEX_MASK: u32 = 0x00ff_ffff;

pub(crate) enum Command {
    Apply(DeviceConfig, oneshot::Sender<Result<()>>),
    Status(oneshot::Sender<DeviceStatus>),
    Counters(oneshot::Sender<Counters>),
    Shutdown,
    /// Tests only: panic, as a bug in the engine would.
    #[cfg(any(test, feature = "fault-injection"))]
    Panic,
}

struct Io {
    tun: AsyncFd<Tun>,
    sockets: Sockets,
}

struct Buffers {
    src: Vec<u8>,
    dst: Vec<u8>,
    /// One segment of a TCP super-segment, cut out of `src` before encryption.
    segment: Vec<u8>,
    /// Decrypted TCP segments waiting to be written to the TUN device as one.
    gro: Coalescer,
    /// Encrypted datagrams waiting to go to one peer in one GSO send.
    batch: SendBatch,
    /// Control message space for UDP reads (the GRO segment size).
    control: Vec<u8>,
}

/// Encrypted datagrams for one peer and endpoint, back to back, all `segment` bytes long
/// but the last: the shape one UDP GSO send takes. Filled while a batch of TUN reads is
/// handled and sent when it is full or the batch ends, so it adds no latency.
struct SendBatch {
    buf: Vec<u8>,
    len: usize,
    count: usize,
    segment: usize,
    /// A datagram shorter than `segment` was added: it must be the last.
    closed: bool,
    to: Option<(u32, SocketAddr)>,
}

impl SendBatch {
    fn new() -> Self {
        Self {
            buf: vec![0; BUFFER_LEN],
            len: 0,
            count: 0,
            segment: 0,
            closed: false,
            to: None,
        }
    }

    /// Whether a packet of `len` bytes to peer `index`, once encrypted, may join.
    fn has_room(&self, index: u32, len: usize) -> bool {
        self.count == 0
            || (!self.closed
                && self.count < GSO_MAX_SEGMENTS
                && self.len + len + WG_OVERHEAD <= GSO_MAX_BYTES
                && self.to.map(|(i, _)| i) == Some(index))
    }

    /// The datagram of `len` bytes just written at `self.len` joins the batch.
    fn add(&mut self, len: usize, index: u32, to: SocketAddr) {
        if self.count == 0 {
            self.segment = len;
            self.to = Some((index, to));
        }
        self.closed |= len < self.segment;
        self.len += len;
        self.count += 1;
    }
}

struct State {
    key: Option<DeviceKey>,
    peers: BTreeMap<u32, Peer>,
    by_key: HashMap<WgPublicKey, u32>,
    table: AllowedIps<u32>,
    next_index: u32,
    counters: Counters,
    span: tracing::Span,
    /// The interface MTU: packets are padded to a multiple of 16 bytes, but not beyond it.
    mtu: usize,
    /// Where a packet is copied to be padded.
    pad: Vec<u8>,
}

pub(crate) struct Engine {
    io: Io,
    state: State,
    bufs: Buffers,
}

impl Engine {
    /// `offload`: UDP GSO/GRO on the sockets where the kernel has them.
    pub fn new(tun: Tun, span: tracing::Span, offload: bool, mtu: u32) -> Result<Self> {
        let tun = tun.into_async()?;
        let sockets = Sockets::bind(0, None, offload)?;
        Ok(Self {
            io: Io { tun, sockets },
            state: State {
                key: None,
                peers: BTreeMap::new(),
                by_key: HashMap::new(),
                table: AllowedIps::new(),
                next_index: rand_index(),
                counters: Counters::default(),
                span,
                mtu: mtu as usize,
                pad: vec![0; BUFFER_LEN],
            },
            bufs: Buffers {
                src: vec![0; BUFFER_LEN],
                dst: vec![0; BUFFER_LEN],
                segment: vec![0; BUFFER_LEN],
                gro: Coalescer::new(),
                batch: SendBatch::new(),
                control: sockets::control_buffer(),
            },
        })
    }

    /// Run until the interface disappears, a `Shutdown` arrives or every handle is gone.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> EngineExit {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let io = &mut self.io;
        let state = &mut self.state;
        let bufs = &mut self.bufs;
        let exit = loop {
            tokio::select! {
                ready = io.tun.ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR) => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(e) => {
                            warn!(parent: &state.span, error = %e, "TUN device failed; stopping");
                            break EngineExit::InterfaceGone(e.to_string());
                        }
                    };
                    match read_tun(&mut guard, &io.sockets, state, bufs) {
                        Ok(()) => {}
                        Err(e) => {
                            info!(parent: &state.span, error = %e, "interface gone; stopping");
                            break EngineExit::InterfaceGone(e.to_string());
                        }
                    }
                }
                Ok(()) = readable(io.sockets.v4.as_ref()) => {
                    if let Some(socket) = io.sockets.v4.as_ref() {
                        read_udp(socket, &io.sockets, io.tun.get_ref(), state, bufs);
                    }
                }
                Ok(()) = readable(io.sockets.v6.as_ref()) => {
                    if let Some(socket) = io.sockets.v6.as_ref() {
                        read_udp(socket, &io.sockets, io.tun.get_ref(), state, bufs);
                    }
                }
                _ = tick.tick() => state.tick(&io.sockets, bufs),
                command = commands.recv() => match command {
                    Some(Command::Apply(config, reply)) => {
                        let _ = reply.send(state.apply(config, &mut io.sockets));
                    }
                    Some(Command::Status(reply)) => {
                        let _ = reply.send(state.status(&io.sockets));
                    }
                    Some(Command::Counters(reply)) => {
                        let _ = reply.send(state.counters);
                    }
                    Some(Command::Shutdown) | None => break EngineExit::Shutdown,
                    #[cfg(any(test, feature = "fault-injection"))]
                    Some(Command::Panic) => panic!("fault injection: engine panic requested"),
                },
            }
        };
        info!(parent: &state.span, counters = ?state.counters, "engine stopped");
        exit
    }
}

fn rand_index() -> u32 {
    let mut bytes = [0u8; 4];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    u32::from_le_bytes(bytes) & INDEX_MASK
}

async fn readable(socket: Option<&tokio::net::UdpSocket>) -> io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Read a batch of packets from the TUN device and send what they became. An error other
/// than `WouldBlock` means the interface is gone.
fn read_tun(
    guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, Tun>,
    sockets: &Sockets,
    state: &mut State,
    bufs: &mut Buffers,
) -> io::Result<()> {
    let result = read_tun_batch(guard, sockets, state, bufs);
    state.flush_batch(sockets, &mut bufs.batch);
    result
}

fn read_tun_batch(
    guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, Tun>,
    sockets: &Sockets,
    state: &mut State,
    bufs: &mut Buffers,
) -> io::Result<()> {
    let vnet = guard.get_ref().get_ref().offload();
    let max = MAX_PACKET + if vnet { VNET_HDR_LEN } else { 0 };
    for _ in 0..BATCH {
        let read = guard.try_io(|tun| tun.get_ref().read_packet(&mut bufs.src[..max]));
        match read {
            Ok(Ok(0)) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(Ok(len)) if vnet => state.outgoing_offloaded(len, sockets, bufs),
            Ok(Ok(len)) => state.outgoing(&bufs.src[..len], sockets, &mut bufs.batch),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => return Ok(()),
        }
    }
    Ok(())
}

/// Read a batch of datagrams from one UDP socket (with GRO, each read may be several
/// datagrams of one sender, cut at `segment`).
fn read_udp(
    socket: &tokio::net::UdpSocket,
    sockets: &Sockets,
    tun: &Tun,
    state: &mut State,
    bufs: &mut Buffers,
) {
    for _ in 0..BATCH {
        match sockets::recv(socket, &mut bufs.src, &mut bufs.control) {
            Ok(read) => {
                let segment = read.segment.max(1);
                if segment < read.len {
                    state.counters.udp_gro_reads += 1;
                }
                let mut start = 0;
                while start < read.len {
                    let end = (start + segment).min(read.len);
                    state.incoming(start..end, read.from, sockets, tun, bufs);
                    start = end;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ICMP errors surface here (port unreachable...): not fatal for the socket.
                debug!(parent: &state.span, error = %e, "UDP receive error");
                state.counters.udp_errors += 1;
            }
        }
    }
    // Nothing waits across batches: what was coalesced goes out now.
    bufs.gro
        .flush(&mut |hdr, packet| write_tun(tun, &mut state.counters, hdr, packet));
}

/// A packet's length once padded: up to a multiple of 16, but not beyond the MTU (and never
/// shorter than the packet).
fn padded_len(len: usize, mtu: usize) -> usize {
    len.next_multiple_of(16).min(mtu).max(len)
}

/// One write to the TUN device: a `virtio_net_hdr` (offloading device only) and a packet.
fn write_tun(tun: &Tun, counters: &mut Counters, hdr: &[u8], packet: &[u8]) {
    match tun.write_with_header(hdr, packet) {
        Ok(_) if hdr != super::gro::PLAIN_HDR => counters.tun_gro_writes += 1,
        Ok(_) => {}
        Err(_) => counters.tun_write_errors += 1,
    }
}

fn send(sockets: &Sockets, counters: &mut Counters, buf: &[u8], to: SocketAddr) -> bool {
    match sockets.send(buf, to) {
        Ok(_) => true,
        Err(_) => {
            counters.send_errors += 1;
            false
        }
    }
}

impl State {
    /// A read from an offloading TUN device: a `virtio_net_hdr`, then a packet or a TCP
    /// super-segment to cut into packets, each encrypted on its own.
    fn outgoing_offloaded(&mut self, len: usize, sockets: &Sockets, bufs: &mut Buffers) {
        let Buffers {
            src,
            segment,
            batch,
            ..
        } = bufs;
        let Some(hdr) = VnetHdr::parse(&src[..len]) else {
            self.counters.invalid_tun_packets += 1;
            return;
        };
        let packet = &mut src[VNET_HDR_LEN..len];
        match offload::segment(&hdr, packet, segment, |p| self.outgoing(p, sockets, batch)) {
            Ok(n) if n > 1 => self.counters.tun_gso_batches += 1,
            Ok(_) => {}
            Err(e) => {
                debug!(parent: &self.span, error = %e, "TUN offload header refused");
                self.counters.invalid_tun_packets += 1;
            }
        }
    }

    /// A packet from the TUN device: find the peer by destination and encrypt it into the
    /// send batch (which the caller flushes at the end of its batch of reads).
    fn outgoing(&mut self, packet: &[u8], sockets: &Sockets, batch: &mut SendBatch) {
        self.counters.tun_rx_packets += 1;
        let Some(dst) = Tunn::dst_address(packet) else {
            self.counters.invalid_tun_packets += 1;
            return;
        };
        let Some(index) = self.table.lookup(dst) else {
            self.counters.no_route += 1;
            return;
        };
        let padded = padded_len(packet.len(), self.mtu);
        if !batch.has_room(index, padded) {
            self.flush_batch(sockets, batch);
        }
        let Some(peer) = self.peers.get_mut(&index) else {
            self.counters.no_route += 1;
            return;
        };
        let Some(tunn) = peer.tunn.as_mut() else {
            self.counters.no_key += 1;
            return;
        };
        // The WireGuard paper and wireguard-go pad the plaintext to a multiple of 16 bytes so
        // that the ciphertext tells less about what it carries (boringtun does not). The
        // receiver reads the length from the IP header and ignores the zeros.
        let packet = if padded > packet.len() && padded <= self.pad.len() {
            self.pad[..packet.len()].copy_from_slice(packet);
            self.pad[packet.len()..padded].fill(0);
            &self.pad[..padded]
        } else {
            packet
        };
        let start = batch.len;
        let (len, endpoint) = match tunn.encapsulate(packet, &mut batch.buf[start..]) {
            TunnResult::WriteToNetwork(out) => match peer.endpoint {
                Some(endpoint) => (out.len(), endpoint),
                None => {
                    self.counters.no_endpoint += 1;
                    return;
                }
            },
            TunnResult::Err(e) => {
                debug!(parent: &peer.span, error = ?e, "encapsulate failed");
                self.counters.rejected += 1;
                return;
            }
            _ => return,
        };
        if batch.count > 0 && (batch.to != Some((index, endpoint)) || len > batch.segment) {
            // It cannot join (a handshake went first, the endpoint roamed): send what is
            // there and start again with this datagram.
            self.flush_batch(sockets, batch);
            batch.buf.copy_within(start..start + len, 0);
        }
        batch.add(len, index, endpoint);
    }

    /// Send the batch: one GSO send where the kernel can, else datagram by datagram.
    fn flush_batch(&mut self, sockets: &Sockets, batch: &mut SendBatch) {
        let count = std::mem::take(&mut batch.count);
        let len = std::mem::take(&mut batch.len);
        batch.closed = false;
        let Some((index, to)) = batch.to.take() else {
            return;
        };
        if count == 0 {
            return;
        }
        match sockets.send_segments(&batch.buf[..len], batch.segment, to) {
            Ok(carried) => {
                if carried > 1 {
                    self.counters.udp_gso_sends += 1;
                }
                if let Some(peer) = self.peers.get_mut(&index) {
                    peer.tx_bytes += len as u64;
                }
            }
            Err(_) => self.counters.send_errors += 1,
        }
    }

    /// A datagram from the network: find the peer, decrypt, check the inner source.
    fn incoming(
        &mut self,
        range: Range<usize>,
        from: SocketAddr,
        sockets: &Sockets,
        tun: &Tun,
        bufs: &mut Buffers,
    ) {
        let datagram = &bufs.src[range];
        let len = datagram.len();
        let Some(key) = self.key.as_ref() else {
            self.counters.no_key += 1;
            return;
        };
        // MAC checks and, under load, a cookie reply instead of handshake work.
        let packet = match key
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, &mut bufs.dst)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                send(sockets, &mut self.counters, cookie, from);
                self.counters.cookies_sent += 1;
                return;
            }
            Err(e) => {
                debug!(parent: &self.span, from = %from, len, error = ?e, "invalid datagram");
                self.counters.invalid_packets += 1;
                return;
            }
        };
        let (index, kind) = match packet {
            Packet::HandshakeInit(ref init) => {
                let index = parse_handshake_anon(&key.secret, &key.public, init)
                    .ok()
                    .and_then(|half| {
                        self.by_key
                            .get(&WgPublicKey(half.peer_static_public))
                            .copied()
                    });
                (index, Kind::HandshakeInit)
            }
            Packet::HandshakeResponse(ref p) => {
                (Some(p.receiver_idx >> 8), Kind::HandshakeResponse)
            }
            Packet::PacketCookieReply(ref p) => (Some(p.receiver_idx >> 8), Kind::CookieReply),
            Packet::PacketData(ref p) => (Some(p.receiver_idx >> 8), Kind::Data),
        };
        let Some(peer) = index.and_then(|i| self.peers.get_mut(&i)) else {
            self.counters.unknown_peer += 1;
            return;
        };
        let Peer {
            tunn,
            span,
            endpoint,
            rx_bytes,
            tx_bytes,
            index,
            ..
        } = peer;
        let Some(tunn) = tunn.as_mut() else {
            self.counters.no_key += 1;
            return;
        };
        let result = tunn.decapsulate(Some(from.ip()), datagram, &mut bufs.dst);
        let authenticated = match (&result, kind) {
            (TunnResult::Err(_), _) | (_, Kind::CookieReply) => false,
            (TunnResult::WriteToNetwork(out), _) => out.len() != COOKIE_REPLY_LEN,
            _ => true,
        };
        if authenticated {
            *rx_bytes += len as u64;
            if *endpoint != Some(from) {
                debug!(parent: &*span, endpoint = %from, "endpoint roamed");
                *endpoint = Some(from);
            }
            match kind {
                Kind::HandshakeInit => debug!(parent: &*span, "handshake initiation answered"),
                Kind::HandshakeResponse => debug!(parent: &*span, "handshake completed"),
                Kind::CookieReply | Kind::Data => {}
            }
        }
        let mut drain = false;
        match result {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                debug!(parent: &*span, error = ?e, "datagram rejected");
                self.counters.rejected += 1;
            }
            TunnResult::WriteToNetwork(out) => {
                if send(sockets, &mut self.counters, out, from) {
                    *tx_bytes += out.len() as u64;
                }
                drain = true;
            }
            // The source boringtun reports is not used: the filter reads it from the packet.
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                deliver(
                    tun,
                    &self.table,
                    &mut self.counters,
                    &mut bufs.gro,
                    *index,
                    packet,
                );
            }
        }
        // The drain rule: after WriteToNetwork, call again with nothing until Done, to
        // flush packets queued while the handshake was in flight.
        while drain {
            match tunn.decapsulate(None, &[], &mut bufs.dst) {
                TunnResult::WriteToNetwork(out) => match *endpoint {
                    Some(endpoint) => {
                        if send(sockets, &mut self.counters, out, endpoint) {
                            *tx_bytes += out.len() as u64;
                        }
                    }
                    None => self.counters.no_endpoint += 1,
                },
                _ => drain = false,
            }
        }
    }

    /// Every tick: each peer's timers, and the shared handshake rate limiter's count.
    fn tick(&mut self, sockets: &Sockets, bufs: &mut Buffers) {
        if let Some(key) = &self.key {
            key.rate_limiter.reset_count();
        }
        for peer in self.peers.values_mut() {
            let Some(tunn) = peer.tunn.as_mut() else {
                continue;
            };
            match tunn.update_timers(&mut bufs.dst) {
                TunnResult::WriteToNetwork(out) => match peer.endpoint {
                    Some(endpoint) => {
                        if send(sockets, &mut self.counters, out, endpoint) {
                            peer.tx_bytes += out.len() as u64;
                        }
                    }
                    None => self.counters.no_endpoint += 1,
                },
                TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                TunnResult::Err(e) => debug!(parent: &peer.span, error = ?e, "timer error"),
                _ => {}
            }
        }
    }

    /// Apply a configuration change: everything that can fail (binding a port) first, then
    /// the in-memory changes, which cannot.
    fn apply(&mut self, config: DeviceConfig, sockets: &mut Sockets) -> Result<()> {
        let fwmark = config
            .fwmark
            .map(|m| (m != 0).then_some(m))
            .unwrap_or(sockets.fwmark);
        match config.listen_port {
            Some(port) if port != sockets.port || port == 0 => {
                *sockets = Sockets::bind(port, fwmark, sockets.offload)?
            }
            _ if fwmark != sockets.fwmark => sockets.set_fwmark(fwmark)?,
            _ => {}
        }

        if let Some(private) = config.private_key {
            self.set_key(private);
        }
        if config.replace_peers {
            let indices: Vec<u32> = self.peers.keys().copied().collect();
            for index in indices {
                self.remove_peer(index);
            }
        }
        for peer in config.peers {
            self.apply_peer(peer);
        }
        Ok(())
    }

    fn set_key(&mut self, private: weft_crypto::WgPrivateKey) {
        if private.as_bytes().iter().all(|&b| b == 0) {
            self.key = None;
        } else if self.key.as_ref().map(|k| k.private.as_bytes()) != Some(private.as_bytes()) {
            self.key = Some(DeviceKey::new(private));
        } else {
            return;
        }
        // A peer with our own public key is meaningless (WireGuard removes it).
        if let Some(own) = self.key.as_ref().map(DeviceKey::wg_public) {
            if let Some(index) = self.by_key.get(&own).copied() {
                self.remove_peer(index);
            }
        }
        for peer in self.peers.values_mut() {
            peer.rebuild_tunn(self.key.as_ref());
        }
    }

    fn apply_peer(&mut self, change: PeerConfig) {
        if self.key.as_ref().map(DeviceKey::wg_public) == Some(change.public_key) {
            return;
        }
        let existing = self.by_key.get(&change.public_key).copied();
        if change.remove {
            if let Some(index) = existing {
                self.remove_peer(index);
            }
            return;
        }
        let index = match existing {
            Some(index) => index,
            None if change.update_only => return,
            None => self.add_peer(change.public_key),
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        let mut rebuild = false;
        if let Some(psk) = change.preshared_key {
            let psk = (!psk.is_zero()).then_some(psk);
            rebuild |= psk != peer.preshared_key;
            peer.preshared_key = psk;
        }
        if let Some(keepalive) = change.persistent_keepalive {
            let keepalive = (keepalive != 0).then_some(keepalive);
            rebuild |= keepalive != peer.keepalive;
            peer.keepalive = keepalive;
        }
        if let Some(endpoint) = change.endpoint {
            peer.endpoint = Some(endpoint);
        }
        if rebuild {
            peer.rebuild_tunn(self.key.as_ref());
        }
        if change.replace_allowed_ips {
            self.table.remove_value(index);
            peer.allowed_ips.clear();
        }
        // A prefix belongs to one peer: taking it moves it from its previous owner.
        let mut taken = Vec::new();
        for net in change.allowed_ips {
            let net = net.trunc();
            if peer.allowed_ips.contains(&net) {
                continue;
            }
            peer.allowed_ips.push(net);
            match self.table.insert(net, index) {
                Some(previous) if previous != index => taken.push((previous, net)),
                _ => {}
            }
        }
        for (previous, net) in taken {
            if let Some(other) = self.peers.get_mut(&previous) {
                other.allowed_ips.retain(|n| *n != net);
            }
        }
    }

    fn add_peer(&mut self, public_key: WgPublicKey) -> u32 {
        let mut index = self.next_index;
        while self.peers.contains_key(&index) {
            index = (index + 1) & INDEX_MASK;
        }
        self.next_index = (index + 1) & INDEX_MASK;
        let mut peer = Peer::new(public_key, index, &self.span);
        peer.rebuild_tunn(self.key.as_ref());
        info!(parent: &peer.span, "peer added");
        self.by_key.insert(public_key, index);
        self.peers.insert(index, peer);
        index
    }

    fn remove_peer(&mut self, index: u32) {
        if let Some(peer) = self.peers.remove(&index) {
            info!(parent: &peer.span, "peer removed");
            self.by_key.remove(&peer.public_key);
            self.table.remove_value(index);
        }
    }

    fn status(&self, sockets: &Sockets) -> DeviceStatus {
        DeviceStatus {
            private_key: self.key.as_ref().map(|k| k.private.clone()),
            public_key: self.key.as_ref().map(DeviceKey::wg_public),
            listen_port: sockets.port,
            fwmark: sockets.fwmark,
            peers: self.peers.values().map(Peer::status).collect(),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    HandshakeInit,
    HandshakeResponse,
    CookieReply,
    Data,
}

/// Write a decrypted packet to the TUN device if it passes the receive filter (a whole IP
/// packet whose source belongs to the peer that sent it: cryptokey routing); otherwise drop
/// and count it. On an offloading device the packet goes through the coalescer, which the
/// caller flushes at the end of its batch.
fn deliver(
    tun: &Tun,
    table: &AllowedIps<u32>,
    counters: &mut Counters,
    gro: &mut Coalescer,
    index: u32,
    packet: &[u8],
) {
    match filter::check(table, index, packet) {
        Ok(()) => {}
        Err(Refused::Malformed) => {
            counters.invalid_inner_packets += 1;
            return;
        }
        Err(Refused::BadSource) => {
            counters.bad_source += 1;
            return;
        }
    }
    counters.tun_tx_packets += 1;
    if tun.offload() {
        gro.push(packet, &mut |hdr, p| write_tun(tun, counters, hdr, p));
    } else if tun.write_packet(packet).is_err() {
        counters.tun_write_errors += 1;
    }
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;
    use weft_crypto::WgPrivateKey;

    use super::*;
    use crate::config::PresharedKey;

    fn state() -> State {
        State {
            key: None,
            peers: BTreeMap::new(),
            by_key: HashMap::new(),
            table: AllowedIps::new(),
            next_index: INDEX_MASK - 1,
            counters: Counters::default(),
            span: tracing::Span::none(),
            mtu: 1420,
            pad: vec![0; BUFFER_LEN],
        }
    }

    #[test]
    fn packets_are_padded_to_16_bytes_but_never_beyond_the_mtu() {
        assert_eq!(padded_len(20, 1420), 32);
        assert_eq!(padded_len(32, 1420), 32);
        assert_eq!(padded_len(84, 1420), 96);
        assert_eq!(padded_len(1415, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        // A packet longer than the MTU (a misconfigured device) is sent as it is.
        assert_eq!(padded_len(1500, 1420), 1500);
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn peer(key: WgPublicKey, nets: &[&str]) -> PeerConfig {
        let mut change = PeerConfig::new(key);
        change.allowed_ips = nets.iter().map(|n| net(n)).collect();
        change
    }

    fn owner(state: &State, addr: &str) -> Option<WgPublicKey> {
        let index = state.table.lookup(addr.parse().expect("addr"))?;
        Some(state.peers[&index].public_key)
    }

    #[tokio::test]
    async fn peers_are_created_updated_and_removed_as_wireguard_does() {
        let mut sockets = Sockets::bind(0, None, true).expect("bind");
        let mut state = state();
        let own = WgPrivateKey::generate();
        let (a, b) = (
            WgPrivateKey::generate().public_key(),
            WgPrivateKey::generate().public_key(),
        );
        let mut config = DeviceConfig {
            private_key: Some(own.clone()),
            peers: vec![
                peer(a, &["10.0.0.0/24"]),
                peer(b, &["10.0.1.0/24"]),
                PeerConfig::new(own.public_key()),
            ],
            ..DeviceConfig::default()
        };
        state.apply(config.clone(), &mut sockets).expect("apply");
        assert_eq!(state.peers.len(), 2, "a peer with our own key is ignored");
        assert!(
            state.peers.values().all(|p| p.tunn.is_some()),
            "tunnels once there is a key"
        );
        assert_eq!(owner(&state, "10.0.0.5"), Some(a));
        let indices: Vec<u32> = state.peers.keys().copied().collect();
        assert!(
            indices.iter().all(|i| i & !INDEX_MASK == 0),
            "24-bit indices: {indices:?}"
        );

        // Taking a prefix moves it; update_only never creates; remove removes.
        let stranger = WgPrivateKey::generate().public_key();
        let mut only = PeerConfig::new(stranger);
        only.update_only = true;
        let mut removed = PeerConfig::new(a);
        removed.remove = true;
        config = DeviceConfig {
            peers: vec![peer(b, &["10.0.0.7/24"]), only, removed],
            ..DeviceConfig::default()
        };
        state.apply(config, &mut sockets).expect("apply");
        assert_eq!(owner(&state, "10.0.0.5"), Some(b));
        assert!(!state.by_key.contains_key(&stranger));
        assert!(!state.by_key.contains_key(&a));
        let b_peer = &state.peers[&state.by_key[&b]];
        assert_eq!(
            b_peer.allowed_ips,
            vec![net("10.0.1.0/24"), net("10.0.0.0/24")]
        );

        // replace_allowed_ips, preshared key set then cleared with zeros, keepalive.
        let mut change = peer(b, &["192.0.2.0/25"]);
        change.replace_allowed_ips = true;
        change.preshared_key = Some(PresharedKey([7; 32]));
        change.persistent_keepalive = Some(25);
        state
            .apply(
                DeviceConfig {
                    peers: vec![change],
                    ..DeviceConfig::default()
                },
                &mut sockets,
            )
            .expect("apply");
        let status = state.status(&sockets);
        assert_eq!(status.peers.len(), 1);
        assert_eq!(status.peers[0].allowed_ips, vec![net("192.0.2.0/25")]);
        assert_eq!(status.peers[0].persistent_keepalive, Some(25));
        assert!(status.peers[0].preshared_key.is_some());
        assert_eq!(owner(&state, "10.0.1.1"), None);
        let mut clear = PeerConfig::new(b);
        clear.preshared_key = Some(PresharedKey([0; 32]));
        clear.persistent_keepalive = Some(0);
        state
            .apply(
                DeviceConfig {
                    peers: vec![clear],
                    ..DeviceConfig::default()
                },
                &mut sockets,
            )
            .expect("apply");
        let status = state.status(&sockets);
        assert!(status.peers[0].preshared_key.is_none());
        assert_eq!(status.peers[0].persistent_keepalive, None);

        // replace_peers starts over; a zero private key removes the key and the tunnels.
        let zero = WgPrivateKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .expect("zero key");
        let config = DeviceConfig {
            private_key: Some(zero),
            replace_peers: true,
            peers: vec![peer(a, &["10.0.0.0/24"])],
            ..DeviceConfig::default()
        };
        state.apply(config, &mut sockets).expect("apply");
        assert_eq!(state.peers.len(), 1);
        assert!(state.key.is_none());
        assert!(state.peers.values().all(|p| p.tunn.is_none()));
        assert_eq!(
            state.status(&sockets).private_key.map(|k| *k.as_bytes()),
            None
        );
    }

    #[tokio::test]
    async fn a_port_in_use_fails_the_whole_change() {
        let mut sockets = Sockets::bind(0, None, true).expect("bind");
        let taken = Sockets::bind(0, None, true).expect("bind");
        let mut state = state();
        let config = DeviceConfig {
            listen_port: Some(taken.port),
            peers: vec![peer(
                WgPrivateKey::generate().public_key(),
                &["10.0.0.0/24"],
            )],
            ..DeviceConfig::default()
        };
        assert!(state.apply(config, &mut sockets).is_err());
        assert!(state.peers.is_empty(), "nothing applied");
        assert_ne!(sockets.port, taken.port);
    }
}
