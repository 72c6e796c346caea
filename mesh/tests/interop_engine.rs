//! The userspace engine in this process, inside a test host's network namespace (the test
//! thread enters it with setns), against a peer emulated with boringtun's `Tunn`: checks
//! that need the engine's own counters or exact packets (needs root).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use weft_crypto::WgPrivateKey;
use weft_mesh::userspace::{DeviceOptions, UserspaceDevice};
use weft_mesh::{DeviceConfig, PeerConfig};
use weft_testbed::{require_root, Host, TestBed};

const DEVICE_PORT: u16 = 51820;
const PEER_PORT: u16 = 41000;

static NEXT_IF: AtomicU32 = AtomicU32::new(0);

fn unique_ifname() -> String {
    format!(
        "we{}n{}",
        std::process::id() % 1_000_000,
        NEXT_IF.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run `body` on a thread inside `host`'s network namespace, with a current-thread runtime
/// (so every socket and the TUN device are created in that namespace).
fn in_netns<F, Fut>(host: &Host, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let path = format!("/run/netns/{}", host.name());
    let thread = std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The message type of a WireGuard datagram (1 init, 2 response, 3 cookie, 4 data).
fn kind(datagram: &[u8]) -> u8 {
    datagram.first().copied().unwrap_or(0)
}

struct Setup {
    device: UserspaceDevice,
    device_key: WgPrivateKey,
    peer_key: WgPrivateKey,
    device_addr: SocketAddr,
    socket: UdpSocket,
}

async fn setup(host_ip: Ipv4Addr, ifname: String, peer_endpoint: bool) -> Setup {
    let device = UserspaceDevice::create(&ifname, DeviceOptions::default())
        .await
        .expect("create device");
    let device_key = WgPrivateKey::generate();
    let peer_key = WgPrivateKey::generate();
    let mut peer = PeerConfig::new(peer_key.public_key());
    peer.allowed_ips = vec!["203.0.113.2/32".parse().expect("net")];
    if peer_endpoint {
        peer.endpoint = Some(SocketAddr::new(host_ip.into(), PEER_PORT));
    }
    device
        .apply(DeviceConfig {
            private_key: Some(device_key.clone()),
            listen_port: Some(DEVICE_PORT),
            peers: vec![peer],
            ..DeviceConfig::default()
        })
        .await
        .expect("apply");
    let socket = UdpSocket::bind((host_ip, PEER_PORT))
        .await
        .expect("bind peer socket");
    Setup {
        device,
        device_key,
        peer_key,
        device_addr: SocketAddr::new(host_ip.into(), DEVICE_PORT),
        socket,
    }
}

impl Setup {
    fn peer_tunn(&self) -> Tunn {
        Tunn::new(
            self.peer_key.to_x25519(),
            self.device_key.public_key().to_x25519(),
            None,
            None,
            7,
            None,
        )
    }

    async fn send_init(&self, tunn: &mut Tunn) {
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(init) => {
                self.socket
                    .send_to(init, self.device_addr)
                    .await
                    .expect("send init");
            }
            other => panic!("no initiation: {other:?}"),
        }
    }

    /// The next datagram, or `None` after `wait`.
    async fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let (n, _) = timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

/// Above 100 handshakes a second the device answers with cookie replies instead of doing
/// the Diffie-Hellman work; an initiation carrying the cookie (mac2) is answered; the count
/// resets every second.
#[test]
fn cookie_replies_under_load() {
    if !require_root("cookie_replies_under_load") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host_ip = bed.host(0).underlay_ip();
    let ifname = unique_ifname();
    in_netns(bed.host(0), move || async move {
        let s = setup(host_ip, ifname, false).await;
        let mut tunn = s.peer_tunn();
        for _ in 0..300 {
            s.send_init(&mut tunn).await;
        }
        let (mut responses, mut cookies) = (0, 0);
        while let Some(reply) = s.recv(Duration::from_millis(300)).await {
            match kind(&reply) {
                2 => responses += 1,
                3 => cookies += 1,
                other => panic!("unexpected message type {other}"),
            }
        }
        assert!(
            cookies > 0,
            "cookie replies under load ({responses} responses)"
        );
        assert!(
            responses < 300,
            "some initiations were not worked on: {responses}"
        );

        // Still under load: a new initiation gets a cookie; with the cookie it is answered.
        for _ in 0..150 {
            s.send_init(&mut tunn).await;
        }
        let mut cookie = None;
        while let Some(reply) = s.recv(Duration::from_millis(200)).await {
            if kind(&reply) == 3 {
                cookie = Some(reply);
            }
        }
        let cookie = cookie.expect("a cookie for the last initiation");
        let mut out = [0u8; 256];
        let consumed = tunn.decapsulate(Some(s.device_addr.ip()), &cookie, &mut out);
        assert!(
            matches!(consumed, TunnResult::Done),
            "cookie accepted: {consumed:?}"
        );
        // The cookie must be for the initiation in progress: send one more and take its
        // cookie if the one above was for an earlier initiation.
        s.send_init(&mut tunn).await;
        let reply = s.recv(Duration::from_secs(1)).await.expect("a reply");
        let reply = if kind(&reply) == 3 {
            let _ = tunn.decapsulate(Some(s.device_addr.ip()), &reply, &mut out);
            s.send_init(&mut tunn).await;
            s.recv(Duration::from_secs(1)).await.expect("a reply")
        } else {
            reply
        };
        assert_eq!(
            kind(&reply),
            2,
            "an initiation with mac2 is answered under load"
        );

        let counters = s.device.counters().await.expect("counters");
        assert!(counters.cookies_sent >= cookies, "{counters:?}");

        // After a quiet second and a half, a fresh initiator (no cookie) is answered again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while s.recv(Duration::from_millis(10)).await.is_some() {}
        let mut fresh = s.peer_tunn();
        s.send_init(&mut fresh).await;
        let reply = s.recv(Duration::from_secs(1)).await.expect("a reply");
        assert_eq!(kind(&reply), 2, "load count reset");
        s.device.shutdown().await;
    });
}

/// A packet sent before any session exists is queued, a handshake starts, and once the
/// response arrives the packet goes out (the drain rule).
#[test]
fn first_packet_waits_for_the_handshake_and_arrives() {
    if !require_root("first_packet_waits_for_the_handshake_and_arrives") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host = bed.host(0);
    let host_ip = host.underlay_ip();
    let ifname = unique_ifname();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let name = ifname.clone();
    let thread_host_name = host.name().to_owned();
    let worker = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{thread_host_name}")).expect("netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let s = setup(host_ip, name, true).await;
            ready_tx.send(()).expect("ready");
            up_rx.recv().expect("interface up");
            let app = UdpSocket::bind("0.0.0.0:0").await.expect("app socket");
            let message = b"first packet through the tunnel";
            app.send_to(message, "203.0.113.2:9999")
                .await
                .expect("send through TUN");

            let mut tunn = s.peer_tunn();
            let init = s
                .recv(Duration::from_secs(5))
                .await
                .expect("handshake initiation");
            assert_eq!(kind(&init), 1);
            let mut out = vec![0u8; 2048];
            match tunn.decapsulate(Some(s.device_addr.ip()), &init, &mut out) {
                TunnResult::WriteToNetwork(response) => {
                    s.socket
                        .send_to(response, s.device_addr)
                        .await
                        .expect("send response");
                }
                other => panic!("no response: {other:?}"),
            }
            // Keepalive first, then the queued packet.
            let mut delivered = None;
            while let Some(datagram) = s.recv(Duration::from_secs(3)).await {
                if let TunnResult::WriteToTunnelV4(packet, src) =
                    tunn.decapsulate(Some(s.device_addr.ip()), &datagram, &mut out)
                {
                    delivered = Some((packet.to_vec(), src));
                    break;
                }
            }
            let (packet, src) = delivered.expect("the queued packet arrived");
            assert_eq!(
                IpAddr::V4(src),
                "203.0.113.1".parse::<IpAddr>().expect("ip")
            );
            assert!(packet.ends_with(message), "payload intact");
            s.device.shutdown().await;
        });
    });
    ready_rx.recv().expect("device ready");
    host.run_ok(&["ip", "addr", "add", "203.0.113.1/24", "dev", &ifname])
        .expect("addr");
    host.run_ok(&["ip", "link", "set", &ifname, "up"])
        .expect("up");
    up_tx.send(()).expect("signal up");
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The configuration socket: get, set, a bad set that changes nothing, an unknown request,
/// and a line too long, spoken byte for byte.
#[test]
fn uapi_socket_answers_and_refuses() {
    if !require_root("uapi_socket_answers_and_refuses") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host_ip = bed.host(0).underlay_ip();
    let ifname = unique_ifname();
    in_netns(bed.host(0), move || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = setup(host_ip, ifname, false).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.sock");
        let server = weft_mesh::uapi::UapiServer::listen_at(path.clone(), s.device.handle())
            .await
            .expect("listen");
        let mode = std::fs::metadata(&path).expect("socket").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );

        async fn ask(path: &std::path::Path, request: &[u8]) -> String {
            let mut stream = tokio::net::UnixStream::connect(path)
                .await
                .expect("connect");
            stream.write_all(request).await.expect("write");
            stream.shutdown().await.expect("shutdown");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            answer
        }

        let before = ask(&path, b"get=1\n\n").await;
        assert!(before.ends_with("errno=0\n\n"), "{before}");
        assert!(
            before.contains(&format!("listen_port={DEVICE_PORT}\n")),
            "{before}"
        );
        let peer_hex: String = s
            .peer_key
            .public_key()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            before.contains(&format!("public_key={peer_hex}\n")),
            "{before}"
        );
        assert!(before.contains("allowed_ip=203.0.113.2/32\n"), "{before}");

        // Valid lines, then one bad one: nothing of it applies.
        let bad = format!("set=1\nlisten_port=1234\npublic_key={peer_hex}\nallowed_ip=198.51.100.0/24\nendpoint=nonsense\n\n");
        assert_eq!(ask(&path, bad.as_bytes()).await, "errno=-22\n\n");
        assert_eq!(
            ask(&path, b"get=1\n\n").await,
            before,
            "a refused set changes nothing"
        );

        let good = format!("set=1\npublic_key={peer_hex}\nallowed_ip=198.51.100.0/24\n\n");
        assert_eq!(ask(&path, good.as_bytes()).await, "errno=0\n\n");
        assert!(ask(&path, b"get=1\n\n")
            .await
            .contains("allowed_ip=198.51.100.0/24\n"));

        // Two requests on one connection, as the protocol allows.
        let both = ask(&path, b"get=1\n\nget=1\n\n").await;
        assert_eq!(both.matches("errno=0\n\n").count(), 2, "{both}");

        assert_eq!(ask(&path, b"hello=1\n\n").await, "errno=-22\n\n");
        let long = format!("set=1\nlisten_port={}\n\n", "1".repeat(5000));
        assert_eq!(
            ask(&path, long.as_bytes()).await,
            "",
            "connection dropped on a long line"
        );

        drop(server);
        assert!(!path.exists(), "socket removed when the server stops");
        s.device.shutdown().await;
    });
}

/// Handshakes with the wrong keys are dropped and counted, never answered: from a key the
/// device does not know (unknown peer), and to a key that is not the device's (bad MAC).
#[test]
fn wrong_key_handshakes_are_dropped_and_counted() {
    if !require_root("wrong_key_handshakes_are_dropped_and_counted") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host_ip = bed.host(0).underlay_ip();
    let ifname = unique_ifname();
    in_netns(bed.host(0), move || async move {
        let s = setup(host_ip, ifname, false).await;
        let stranger = WgPrivateKey::generate();
        let mut unknown_peer = Tunn::new(
            stranger.to_x25519(),
            s.device_key.public_key().to_x25519(),
            None,
            None,
            8,
            None,
        );
        let mut wrong_device = Tunn::new(
            s.peer_key.to_x25519(),
            WgPrivateKey::generate().public_key().to_x25519(),
            None,
            None,
            9,
            None,
        );
        for _ in 0..3 {
            s.send_init(&mut unknown_peer).await;
            s.send_init(&mut wrong_device).await;
        }
        assert!(
            s.recv(Duration::from_millis(500)).await.is_none(),
            "no answer"
        );
        let counters = s.device.counters().await.expect("counters");
        assert_eq!(counters.unknown_peer, 3, "{counters:?}");
        assert_eq!(counters.invalid_packets, 3, "{counters:?}");

        // The configured peer is still answered.
        let mut peer = s.peer_tunn();
        s.send_init(&mut peer).await;
        let reply = s.recv(Duration::from_secs(1)).await.expect("a reply");
        assert_eq!(kind(&reply), 2);
        s.device.shutdown().await;
    });
}

/// An IPv4 header (checksum set) in front of `body`, from the peer's tunnel address to the
/// device's.
fn ipv4(protocol: u8, body: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + body.len()).expect("fits").to_be_bytes();
    let mut p = vec![
        0x45, 0, total[0], total[1], 0, 1, 0x40, 0, 64, protocol, 0, 0,
    ];
    p.extend_from_slice(&[203, 0, 113, 2, 203, 0, 113, 1]);
    let mut acc: u32 = p
        .chunks(2)
        .map(|w| u32::from(w[0]) << 8 | u32::from(w[1]))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    p[10..12].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// Decrypted packets are whatever an authenticated peer chose to encrypt. Malformed ones
/// (the 33-byte "TCP" packet that once panicked the receive coalescer, truncated headers,
/// lengths beyond the packet, fragments, a short IPv6 TCP header) are dropped or written as
/// they came, and the datapath goes on: a datagram sent afterwards arrives.
#[test]
fn malformed_packets_from_a_peer_do_not_stop_the_device() {
    if !require_root("malformed_packets_from_a_peer_do_not_stop_the_device") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host = bed.host(0);
    let host_ip = host.underlay_ip();
    let ifname = unique_ifname();
    let path = format!("/run/netns/{}", host.name());
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let s = setup(host_ip, ifname.clone(), false).await;
                let mut v6 = PeerConfig::new(s.peer_key.public_key());
                v6.allowed_ips = vec!["fd00::2/128".parse().expect("net")];
                s.device
                    .apply(DeviceConfig {
                        peers: vec![v6],
                        ..DeviceConfig::default()
                    })
                    .await
                    .expect("apply");
                host.run_ok(&["ip", "addr", "add", "203.0.113.1/24", "dev", &ifname])
                    .expect("addr");
                host.run_ok(&["ip", "link", "set", &ifname, "up"])
                    .expect("up");
                let app = UdpSocket::bind("203.0.113.1:9999").await.expect("app");

                // The peer starts a session.
                let mut tunn = s.peer_tunn();
                s.send_init(&mut tunn).await;
                let response = s.recv(Duration::from_secs(2)).await.expect("response");
                assert_eq!(kind(&response), 2);
                let mut out = vec![0u8; 4096];
                if let TunnResult::WriteToNetwork(keepalive) =
                    tunn.decapsulate(Some(s.device_addr.ip()), &response, &mut out)
                {
                    s.socket
                        .send_to(keepalive, s.device_addr)
                        .await
                        .expect("keepalive");
                }

                let tcp_header = {
                    let mut t = vec![0u8; 20];
                    t[0..4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
                    t[12] = 5 << 4;
                    t[13] = 0x10;
                    t
                };
                let mut hostile = Vec::new();
                // The packet: 33 bytes, IPv4 total length 33, protocol TCP.
                hostile.push(ipv4(6, &tcp_header[..13]));
                // Total length below the header (boringtun hands over 5 bytes).
                let mut short = ipv4(6, &tcp_header);
                short[2..4].copy_from_slice(&5u16.to_be_bytes());
                hostile.push(short);
                // IHL beyond the packet; options with a short TCP header; a fragment.
                let mut ihl = ipv4(6, &tcp_header);
                ihl[0] = 0x4f;
                hostile.push(ihl);
                let mut options = ipv4(6, &[1, 1, 1, 0, 0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 0]);
                options[0] = 0x46;
                hostile.push(options);
                let mut fragment = ipv4(6, &tcp_header[..9]);
                fragment[6] = 0x20;
                hostile.push(fragment);
                // IPv6 "TCP" with 13 bytes of TCP header.
                let mut v6 = vec![0x60, 0, 0, 0, 0, 13, 6, 64];
                v6.extend_from_slice(
                    &"fd00::2"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("ip")
                        .octets(),
                );
                v6.extend_from_slice(
                    &"fd00::1"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("ip")
                        .octets(),
                );
                v6.extend_from_slice(&tcp_header[..13]);
                hostile.push(v6);
                for packet in &hostile {
                    match tunn.encapsulate(packet, &mut out) {
                        TunnResult::WriteToNetwork(datagram) => {
                            s.socket
                                .send_to(datagram, s.device_addr)
                                .await
                                .expect("send");
                        }
                        other => panic!("no data packet: {other:?}"),
                    }
                }

                // Normal traffic still flows: a UDP datagram (checksum 0: none) arrives.
                let message = b"still here";
                let mut udp = vec![0x15, 0xb3, 0x27, 0x0f, 0, 0, 0, 0];
                udp[4..6].copy_from_slice(&(8 + message.len() as u16).to_be_bytes());
                udp.extend_from_slice(message);
                match tunn.encapsulate(&ipv4(17, &udp), &mut out) {
                    TunnResult::WriteToNetwork(datagram) => {
                        s.socket
                            .send_to(datagram, s.device_addr)
                            .await
                            .expect("send");
                    }
                    other => panic!("no data packet: {other:?}"),
                }
                let mut buf = [0u8; 64];
                let (n, from) = timeout(Duration::from_secs(5), app.recv_from(&mut buf))
                    .await
                    .expect("the datagram after the malformed packets arrives")
                    .expect("recv");
                assert_eq!(&buf[..n], message);
                assert_eq!(from, "203.0.113.2:5555".parse().expect("addr"));
                assert!(!s.device.handle().is_closed(), "device still running");
                let counters = s.device.counters().await.expect("counters");
                assert_eq!(counters.rejected, 0, "{counters:?}");
                // Cut short by its own length fields: dropped by the receive filter. The rest
                // is written to the TUN device, where the kernel judges it.
                assert_eq!(counters.invalid_inner_packets, 2, "{counters:?}");
                assert_eq!(
                    counters.tun_tx_packets,
                    hostile.len() as u64 - 2 + 1,
                    "{counters:?}"
                );
                s.device.shutdown().await;
            });
        });
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    });
}
