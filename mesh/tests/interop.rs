//! weft-wg against itself and against wireguard-go, in network namespaces (needs root).
//!
//! Each test builds its own test bed; interface names are unique per test because every
//! namespace shares `/var/run/wireguard`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use weft_crypto::WgPrivateKey;
use weft_testbed::{require_root, wait_until, Host, Packet, Proc, TestBed};

const WEFT_WG: &str = env!("CARGO_BIN_EXE_weft-wg");
const WIREGUARD_GO: &str = "/usr/bin/wireguard-go";
const PORT: u16 = 51820;
/// Overlay addresses (TEST-NET-3) of host 0 and host 1.
const TUNNEL_IP: [&str; 2] = ["203.0.113.1", "203.0.113.2"];
/// Never sent in the clear: the capture must not see it.
const MARKER: &[u8] = b"WEFT-PLAINTEXT-MARKER-5a1d";

static NEXT_IF: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    /// weft-wg as it starts by default: TUN offloads (TSO) on.
    Weft,
    /// weft-wg with `WEFT_WG_OFFLOAD=0`: a plain TUN device.
    WeftPlain,
    Go,
}

/// One WireGuard endpoint of a test: a daemon, its interface and keys.
struct Node<'a> {
    host: &'a Host,
    ifname: String,
    key: WgPrivateKey,
    proc: Proc,
}

fn unique_ifname() -> String {
    format!(
        "wf{}n{}",
        std::process::id() % 1_000_000,
        NEXT_IF.fetch_add(1, Ordering::Relaxed)
    )
}

fn socket(ifname: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{ifname}.sock"))
}

fn start<'a>(host: &'a Host, which: Impl) -> Node<'a> {
    let ifname = unique_ifname();
    let proc = match which {
        Impl::Weft => host.spawn(&["env", "LOG_LEVEL=debug", WEFT_WG, "-f", &ifname]),
        Impl::WeftPlain => host.spawn(&[
            "env",
            "LOG_LEVEL=debug",
            "WEFT_WG_OFFLOAD=0",
            WEFT_WG,
            "-f",
            &ifname,
        ]),
        Impl::Go => host.spawn(&[WIREGUARD_GO, "-f", &ifname]),
    }
    .expect("start daemon");
    assert!(
        wait_until(Duration::from_secs(10), || socket(&ifname).exists()),
        "{which:?} made no socket for {ifname}: {:?}",
        proc.output()
    );
    Node {
        host,
        ifname,
        key: WgPrivateKey::generate(),
        proc,
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        // A killed daemon leaves its socket behind; don't litter the shared directory.
        let _ = self.proc.kill();
        let _ = std::fs::remove_file(socket(&self.ifname));
    }
}

/// Removes a daemon's socket file when a test ends, whatever happened.
struct SocketGuard(String);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(socket(&self.0));
    }
}

impl Node<'_> {
    fn public(&self) -> String {
        self.key.public_key().to_string()
    }

    fn wg(&self, args: &[&str]) -> String {
        let mut full = vec!["wg"];
        full.extend_from_slice(args);
        self.host.run_ok(&full).expect("wg command")
    }

    fn setconf(&self, dir: &Path, conf: &str) {
        let path = dir.join(format!("{}.conf", self.ifname));
        std::fs::write(&path, conf).expect("write conf");
        let path = path.to_str().expect("utf-8 path");
        self.wg(&["setconf", &self.ifname, path]);
    }

    fn up(&self, ip: &str) {
        let cidr = format!("{ip}/24");
        self.host
            .run_ok(&["ip", "addr", "add", &cidr, "dev", &self.ifname])
            .expect("addr");
        self.host
            .run_ok(&["ip", "link", "set", &self.ifname, "up"])
            .expect("up");
    }

    /// (rx, tx) bytes of the only peer, from `wg show IF transfer`.
    fn transfer(&self) -> (u64, u64) {
        let out = self.wg(&["show", &self.ifname, "transfer"]);
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "one peer expected: {out:?}");
        (
            fields[1].parse().expect("rx"),
            fields[2].parse().expect("tx"),
        )
    }
}

fn conf(me: &Node, peer: &Node, peer_ip: &str, endpoint: Option<String>) -> String {
    let mut text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {peer_ip}/32\n",
        *me.key.to_base64_secret(),
        peer.public()
    );
    if let Some(endpoint) = endpoint {
        text.push_str(&format!("Endpoint = {endpoint}\n"));
    }
    text
}

/// Two hosts, `impls[0]` on host 0 (the initiator: only it knows the other's endpoint, so
/// the responder learns it from the first handshake) and `impls[1]` on host 1.
struct Pair<'a> {
    bed: &'a TestBed,
    dir: tempfile::TempDir,
    nodes: [Node<'a>; 2],
}

fn pair(bed: &TestBed, impls: [Impl; 2]) -> Pair<'_> {
    pair_at(bed, impls, format!("{}:{PORT}", bed.host(1).underlay_ip()))
}

fn pair_at(bed: &TestBed, impls: [Impl; 2], endpoint: String) -> Pair<'_> {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = [start(bed.host(0), impls[0]), start(bed.host(1), impls[1])];
    nodes[0].setconf(
        dir.path(),
        &conf(&nodes[0], &nodes[1], TUNNEL_IP[1], Some(endpoint)),
    );
    nodes[1].setconf(dir.path(), &conf(&nodes[1], &nodes[0], TUNNEL_IP[0], None));
    nodes[0].up(TUNNEL_IP[0]);
    nodes[1].up(TUNNEL_IP[1]);
    Pair { bed, dir, nodes }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("ip")
}

/// 2 MB of pseudo-random bytes with the marker sprinkled through.
fn payload() -> Vec<u8> {
    let mut data = Vec::with_capacity(2 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 2 << 20 {
        if data.len() % 4096 == 0 {
            data.extend_from_slice(MARKER);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data
}

/// IPv6 neighbour discovery and MLD that the kernel sends on any link (ICMPv6, possibly
/// behind a hop-by-hop header): not ours, and never carrying the overlay.
fn is_ipv6_control(packet: &Packet) -> bool {
    let data = &packet.data;
    data.len() > 40 && data[0] >> 4 == 6 && (data[6] == 58 || (data[6] == 0 && data[40] == 58))
}

/// The kernel's own IGMP reports to link-local multicast (224.0.0.0/24) when an interface comes
/// up: host chatter, not tunnel traffic.
fn is_ipv4_igmp(packet: &Packet) -> bool {
    let data = &packet.data;
    data.len() >= 20
        && data[0] >> 4 == 4
        && data[9] == 2
        && data[16] == 224
        && data[17] == 0
        && data[18] == 0
}

fn is_wireguard(packet: &Packet) -> bool {
    let Some(udp) = packet.udp() else {
        return false;
    };
    let payload = udp.payload;
    (udp.src_port == PORT || udp.dst_port == PORT)
        && payload.len() >= 32
        && (1..=4).contains(&payload[0])
        && payload[1..4] == [0, 0, 0]
}

impl Pair<'_> {
    /// Send 2 MB over TCP from host 0 to host 1 through the tunnel while capturing host 0's
    /// underlay; returns what the capture saw.
    fn transfer_and_capture(&self) -> Vec<Packet> {
        let data = payload();
        let sent = self.dir.path().join("sent");
        let received = self.dir.path().join("received");
        std::fs::write(&sent, &data).expect("write payload");
        let listen = format!("nc -l {} 5001 > {}", TUNNEL_IP[1], received.display());
        let receiver = self.nodes[1]
            .host
            .spawn(&["sh", "-c", &listen])
            .expect("nc -l");
        let capture = self.bed.capture(0, "").expect("capture");
        let send = format!("nc -N -w 10 {} 5001 < {}", TUNNEL_IP[1], sent.display());
        assert!(
            wait_until(Duration::from_secs(10), || self.nodes[0]
                .host
                .sh(&send)
                .is_ok()),
            "TCP transfer failed"
        );
        let status = receiver
            .wait_timeout(Duration::from_secs(20))
            .expect("wait nc");
        assert!(status.is_some(), "receiver did not finish");
        let packets = capture.finish().expect("capture");
        let got = std::fs::read(&received).expect("read received");
        assert_eq!(got.len(), data.len(), "byte count");
        assert_eq!(
            Sha256::digest(&got),
            Sha256::digest(&data),
            "bytes arrived intact"
        );
        packets
    }
}

/// The interfaces' MTU (weft-wg's and wireguard-go's default).
const MTU: usize = 1420;

/// Of the WireGuard data messages (type 4: 16 bytes of header, the encrypted packet, a
/// 16-byte tag) that `from` sent, each no longer than one datagram: how many there were,
/// and the plaintext lengths among them that are neither a multiple of 16 nor the MTU.
/// (A longer captured one is a UDP GSO batch, seen before the kernel cuts it.)
fn padding(packets: &[Packet], from: std::net::IpAddr) -> (usize, Vec<usize>) {
    let lengths: Vec<usize> = packets
        .iter()
        .filter(|p| p.src() == Some(from))
        .filter_map(|p| p.udp_payload())
        .filter(|m| m.first() == Some(&4) && m.len() >= 32 && m.len() <= MTU + 32)
        .map(|m| m.len() - 32)
        .collect();
    let unpadded = lengths
        .iter()
        .copied()
        .filter(|n| n % 16 != 0 && *n != MTU)
        .collect();
    (lengths.len(), unpadded)
}

/// Ping, a 2 MB TCP transfer that arrives intact, transfer counters on both sides, and an
/// underlay that carries only WireGuard.
fn exercise(impls: [Impl; 2]) {
    let bed = TestBed::new(2).expect("test bed");
    let pair = pair(&bed, impls);
    assert!(
        bed.host(0).ping(ip(TUNNEL_IP[1]), 3),
        "initiator pings responder"
    );
    assert!(
        bed.host(1).ping(ip(TUNNEL_IP[0]), 3),
        "responder pings back"
    );
    let before = [pair.nodes[0].transfer(), pair.nodes[1].transfer()];

    let packets = pair.transfer_and_capture();
    // Bytes, not packets: with UDP GSO one captured packet is a whole batch of datagrams
    // (the capture sees it before the kernel cuts it). 256 KiB of the 2 MB leaves room for
    // what tcpdump drops under load.
    let wire_bytes: u64 = packets.iter().map(|p| u64::from(p.orig_len)).sum();
    assert!(
        wire_bytes > 256 << 10,
        "capture saw the transfer (tcpdump may drop some under load): {} packets, {wire_bytes} bytes",
        packets.len()
    );
    let clear: Vec<_> = packets
        .iter()
        .filter(|p| !is_wireguard(p) && !is_ipv6_control(p) && !is_ipv4_igmp(p))
        .collect();
    assert!(
        clear.is_empty(),
        "non-WireGuard packets on the underlay: {:?}",
        &clear[..clear.len().min(3)]
    );
    assert!(
        !packets.iter().any(|p| p.contains(MARKER)),
        "plaintext marker on the underlay"
    );
    // weft pads what it encrypts to a multiple of 16 bytes (up to the MTU), as the
    // WireGuard paper and wireguard-go do: the sizes on the wire say less.
    for (i, which) in impls.iter().enumerate() {
        if *which == Impl::Go {
            continue;
        }
        let (checked, unpadded) = padding(&packets, bed.host(i).underlay_ip().into());
        assert!(checked > 0, "host {i}: no small data messages captured");
        assert!(
            unpadded.is_empty(),
            "host {i} ({which:?}) sent unpadded plaintext lengths {:?}",
            &unpadded[..unpadded.len().min(10)]
        );
    }

    let after = [pair.nodes[0].transfer(), pair.nodes[1].transfer()];
    // Host 0 sent 2 MB; host 1 received at least that (plus WireGuard overhead).
    assert!(
        after[0].1 >= before[0].1 + (2 << 20),
        "sender tx: {before:?} -> {after:?}"
    );
    assert!(
        after[1].0 >= before[1].0 + (2 << 20),
        "receiver rx: {before:?} -> {after:?}"
    );
    assert!(
        after[0].0 > before[0].0 && after[1].1 > before[1].1,
        "ACKs counted: {before:?} -> {after:?}"
    );
    for node in &pair.nodes {
        let handshake = node.wg(&["show", &node.ifname, "latest-handshakes"]);
        let secs: u64 = handshake
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(secs > 0, "latest handshake recorded: {handshake:?}");
    }
    if impls[0] != Impl::Go {
        // The sender's TUN device carried the transfer as TCP super-segments exactly when
        // offloads are on.
        let log = stop(&pair.nodes[0]);
        let batches = counter(&log, "tun_gso_batches");
        // ... and left the host as UDP GSO sends (several datagrams per sendmsg).
        let gso = counter(&log, "udp_gso_sends");
        match impls[0] {
            Impl::Weft => {
                assert!(batches > 0, "offload used: {log}");
                assert!(gso > 0, "UDP GSO used: {log}");
            }
            _ => {
                assert_eq!(batches, 0, "no offload: {log}");
                assert_eq!(gso, 0, "no UDP GSO: {log}");
            }
        }
        assert_eq!(counter(&log, "invalid_tun_packets"), 0, "{log}");
    }
    if impls[1] != Impl::Go {
        // The receiver read the GSO sends as UDP GRO batches and wrote the TCP segments to
        // its TUN device coalesced, exactly when its offloads are on (and the sender's, for
        // the UDP side).
        let log = stop(&pair.nodes[1]);
        let (gro_reads, gro_writes) = (
            counter(&log, "udp_gro_reads"),
            counter(&log, "tun_gro_writes"),
        );
        match impls {
            [Impl::Weft, Impl::Weft] => {
                assert!(gro_reads > 0, "UDP GRO used: {log}");
                assert!(gro_writes > 0, "TUN GRO used: {log}");
            }
            [_, Impl::WeftPlain] => {
                assert_eq!((gro_reads, gro_writes), (0, 0), "no offload: {log}");
            }
            _ => {}
        }
    }
}

/// SIGTERM a weft-wg node and return its "engine stopped" log line (with the counters).
fn stop(node: &Node) -> String {
    node.proc.signal("TERM").expect("SIGTERM");
    assert!(
        node.proc
            .wait_timeout(Duration::from_secs(5))
            .expect("wait")
            .is_some(),
        "exits on SIGTERM"
    );
    let full = node.proc.output().expect("output").stderr;
    full.lines()
        .find(|l| l.contains("engine stopped"))
        .unwrap_or(&full)
        .to_owned()
}

#[test]
fn weft_wg_with_weft_wg() {
    if !require_root("weft_wg_with_weft_wg") {
        return;
    }
    exercise([Impl::Weft, Impl::Weft]);
}

#[test]
fn weft_wg_initiates_to_wireguard_go() {
    if !require_root("weft_wg_initiates_to_wireguard_go") {
        return;
    }
    exercise([Impl::Weft, Impl::Go]);
}

#[test]
fn wireguard_go_initiates_to_weft_wg() {
    if !require_root("wireguard_go_initiates_to_weft_wg") {
        return;
    }
    exercise([Impl::Go, Impl::Weft]);
}

#[test]
fn weft_wg_without_offload_with_weft_wg() {
    if !require_root("weft_wg_without_offload_with_weft_wg") {
        return;
    }
    exercise([Impl::WeftPlain, Impl::Weft]);
}

#[test]
fn weft_wg_with_weft_wg_without_offload() {
    if !require_root("weft_wg_with_weft_wg_without_offload") {
        return;
    }
    exercise([Impl::Weft, Impl::WeftPlain]);
}

#[test]
fn weft_wg_without_offload_initiates_to_wireguard_go() {
    if !require_root("weft_wg_without_offload_initiates_to_wireguard_go") {
        return;
    }
    exercise([Impl::WeftPlain, Impl::Go]);
}

#[test]
fn wireguard_go_initiates_to_weft_wg_without_offload() {
    if !require_root("wireguard_go_initiates_to_weft_wg_without_offload") {
        return;
    }
    exercise([Impl::Go, Impl::WeftPlain]);
}

/// `wg setconf` then `wg showconf` gives back exactly the configuration, and the same text
/// wireguard-go gives for it.
#[test]
fn showconf_round_trips_setconf_like_wireguard_go() {
    if !require_root("showconf_round_trips_setconf_like_wireguard_go") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let dir = tempfile::tempdir().expect("tempdir");
    let weft = start(bed.host(0), Impl::Weft);
    let go = start(bed.host(1), Impl::Go);
    let peers: Vec<String> = (0..3)
        .map(|_| WgPrivateKey::generate().public_key().to_string())
        .collect();
    let psk = WgPrivateKey::generate().public_key().to_string();
    let text = format!(
        "[Interface]\nListenPort = 51999\nFwMark = 0x2a\nPrivateKey = {key}\n\n\
         [Peer]\nPublicKey = {p0}\nPresharedKey = {psk}\nAllowedIPs = 203.0.113.0/24, fd00:77::/64\n\
         Endpoint = 198.18.0.99:51820\nPersistentKeepalive = 25\n\n\
         [Peer]\nPublicKey = {p1}\nAllowedIPs = 198.51.100.7/32\nEndpoint = [fd00::99]:1234\n\n\
         [Peer]\nPublicKey = {p2}\n",
        key = *weft.key.to_base64_secret(),
        p0 = peers[0],
        p1 = peers[1],
        p2 = peers[2],
    );
    for node in [&weft, &go] {
        node.setconf(dir.path(), &text);
    }
    let shown = weft.wg(&["showconf", &weft.ifname]);
    assert_eq!(shown, text, "weft-wg showconf");
    assert_eq!(
        peer_sections(&shown),
        peer_sections(&go.wg(&["showconf", &go.ifname])),
        "same as wireguard-go (which lists peers in random order)"
    );

    // A second setconf replaces peers and allowed IPs entirely.
    let smaller = format!(
        "[Interface]\nListenPort = 51998\nPrivateKey = {key}\n\n[Peer]\nPublicKey = {p1}\nAllowedIPs = 198.51.100.8/32\n",
        key = *weft.key.to_base64_secret(),
        p1 = peers[1],
    );
    weft.setconf(dir.path(), &smaller);
    assert_eq!(weft.wg(&["showconf", &weft.ifname]), smaller);
    // `wg set` with a bad value changes nothing.
    let bad = weft
        .host
        .run(&[
            "wg",
            "set",
            &weft.ifname,
            "peer",
            &peers[1],
            "allowed-ips",
            "10.0.0.0/33",
        ])
        .expect("run");
    assert!(!bad.status.success());
    assert_eq!(weft.wg(&["showconf", &weft.ifname]), smaller);
}

/// Garbage, short, forged and replayed datagrams are dropped and counted; the tunnel keeps
/// working and the daemon logs the counts when it stops.
#[test]
fn bad_datagrams_are_dropped_and_counted() {
    if !require_root("bad_datagrams_are_dropped_and_counted") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let pair = pair(&bed, [Impl::Go, Impl::Weft]);
    let capture = bed.capture(1, "udp").expect("capture");
    assert!(bed.host(0).ping(ip(TUNNEL_IP[1]), 2));
    let packets = capture.finish().expect("capture");
    let from_go = std::net::IpAddr::from(bed.host(0).underlay_ip());
    let to_weft: Vec<&[u8]> = packets
        .iter()
        .filter(|p| p.src() == Some(from_go))
        .filter_map(|p| p.udp())
        .filter(|u| u.dst_port == PORT && u.payload.len() >= 32)
        .map(|u| u.payload)
        .collect();
    let data = to_weft
        .iter()
        .find(|p| p[0] == 4)
        .expect("a data packet to replay");
    let init = to_weft
        .iter()
        .find(|p| p[0] == 1)
        .expect("a handshake to replay");

    let target = format!("/dev/udp/{}/{PORT}", bed.host(1).underlay_ip());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("datagram");
    // One write(2) of the whole file, so one datagram (printf may split its output).
    let send = |bytes: &[u8]| {
        std::fs::write(&file, bytes).expect("write datagram");
        let script = format!("cat {} > {target}", file.display());
        bed.host(0)
            .run_ok(&["bash", "-c", &script])
            .expect("send datagram");
    };
    send(b"x"); // short
    send(&[0x5a; 200]); // garbage
    let mut forged = vec![1u8, 0, 0, 0];
    forged.resize(148, 0x42); // a handshake initiation with a wrong MAC
    send(&forged);
    let mut unknown = vec![4u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    unknown.resize(64, 0); // data for a session that does not exist
    send(&unknown);
    send(data); // replayed data
    send(init); // replayed handshake initiation

    assert!(bed.host(0).ping(ip(TUNNEL_IP[1]), 2), "tunnel still works");
    assert!(pair.nodes[1].proc.is_running(), "weft-wg survived");
    pair.nodes[1].proc.signal("TERM").expect("SIGTERM");
    assert!(
        pair.nodes[1]
            .proc
            .wait_timeout(Duration::from_secs(5))
            .expect("wait")
            .is_some(),
        "exits on SIGTERM"
    );
    assert!(!socket(&pair.nodes[1].ifname).exists(), "socket removed");
    let full = pair.nodes[1].proc.output().expect("output").stderr;
    let log = full
        .lines()
        .find(|l| l.contains("engine stopped"))
        .unwrap_or(&full)
        .to_owned();
    let count = |name: &str| counter(&log, name);
    assert!(
        count("invalid_packets") >= 3,
        "short, garbage, forged: {log}"
    );
    assert!(count("unknown_peer") >= 1, "unknown session: {log}");
    assert!(count("rejected") >= 2, "replays: {full}");
}

/// A decrypted packet whose inner source is outside the sending peer's allowed IPs is dropped.
#[test]
fn spoofed_inner_source_is_dropped() {
    if !require_root("spoofed_inner_source_is_dropped") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let pair = pair(&bed, [Impl::Go, Impl::Weft]);
    assert!(bed.host(0).ping(ip(TUNNEL_IP[1]), 2));
    // Host 0 also owns .99, which host 1 does not allow from it.
    pair.nodes[0]
        .host
        .run_ok(&[
            "ip",
            "addr",
            "add",
            "203.0.113.99/32",
            "dev",
            &pair.nodes[0].ifname,
        ])
        .expect("addr");
    let out = bed
        .host(0)
        .run(&[
            "ping",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "203.0.113.99",
            TUNNEL_IP[1],
        ])
        .expect("ping");
    assert!(!out.status.success(), "spoofed source got through");
    assert!(
        bed.host(0).ping(ip(TUNNEL_IP[1]), 1),
        "the allowed source still works"
    );
    pair.nodes[1].proc.signal("TERM").expect("SIGTERM");
    pair.nodes[1]
        .proc
        .wait_timeout(Duration::from_secs(5))
        .expect("wait");
    let log = pair.nodes[1].proc.output().expect("output").stderr;
    assert_eq!(counter(&log, "bad_source"), 3, "{log}");
}

/// The sections of a configuration, peers sorted.
fn peer_sections(conf: &str) -> Vec<String> {
    let mut sections: Vec<String> = conf.split("\n\n").map(|s| s.trim().to_owned()).collect();
    sections[1..].sort();
    sections
}

/// A counter from the "engine stopped" log line (`Counters { name: N, .. }`).
fn counter(log: &str, name: &str) -> u64 {
    let needle = format!(" {name}: ");
    let at = log
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {log}"));
    log[at + needle.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} has no value in {log}"))
}

/// Without -f, weft-wg returns once its socket is ready and keeps running in the background;
/// deleting the interface makes it exit and remove its socket.
#[test]
fn daemon_exits_when_its_interface_is_deleted() {
    if !require_root("daemon_exits_when_its_interface_is_deleted") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host = bed.host(0);
    let ifname = unique_ifname();
    let _guard = SocketGuard(ifname.clone());
    host.run_ok(&[WEFT_WG, &ifname]).expect("weft-wg starts");
    assert!(
        socket(&ifname).exists(),
        "socket ready when the parent returns"
    );
    host.run_ok(&["wg", "show", &ifname]).expect("wg show");
    let pattern = format!("weft-wg --foreground {ifname}$");
    assert!(
        host.run_ok(&["pgrep", "-f", &pattern]).is_ok(),
        "daemon running"
    );
    host.run_ok(&["ip", "link", "del", &ifname])
        .expect("ip link del");
    assert!(
        wait_until(Duration::from_secs(5), || !socket(&ifname).exists()),
        "socket removed"
    );
    assert!(
        wait_until(Duration::from_secs(5), || host
            .run_ok(&["pgrep", "-f", &pattern])
            .is_err()),
        "daemon exited"
    );
}

/// The same over an IPv6 underlay: the IPv6 socket, and roaming to an IPv6 source.
#[test]
fn weft_wg_over_ipv6_underlay() {
    if !require_root("weft_wg_over_ipv6_underlay") {
        return;
    }
    let bed = TestBed::builder()
        .hosts(2)
        .ipv6(true)
        .build()
        .expect("test bed");
    let ip6 = bed.host(1).underlay_ip6().expect("IPv6 underlay");
    let pair = pair_at(&bed, [Impl::Weft, Impl::Weft], format!("[{ip6}]:{PORT}"));
    assert!(
        wait_until(Duration::from_secs(10), || bed
            .host(0)
            .ping(ip(TUNNEL_IP[1]), 1)),
        "ping over IPv6 (after DAD)"
    );
    assert!(bed.host(1).ping(ip(TUNNEL_IP[0]), 2), "ping back");
    let endpoints = pair.nodes[1].wg(&["show", &pair.nodes[1].ifname, "endpoints"]);
    let from = bed
        .host(0)
        .underlay_ip6()
        .expect("IPv6 underlay")
        .to_string();
    assert!(
        endpoints.contains(&format!("[{from}]:{PORT}")),
        "responder learned {endpoints:?}"
    );
}

/// `WG_QUICK_USERSPACE_IMPLEMENTATION=weft-wg wg-quick up CONF` brings a tunnel up (wg-quick
/// starts `weft-wg IFNAME`, then `wg setconf`), and `wg-quick down` ends the daemon.
#[test]
fn wg_quick_uses_weft_wg() {
    if !require_root("wg_quick_uses_weft_wg") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let dir = tempfile::tempdir().expect("tempdir");
    let responder = start(bed.host(1), Impl::Go);
    let key = WgPrivateKey::generate();
    let ifname = unique_ifname();
    let _guard = SocketGuard(ifname.clone());
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nAddress = {}/24\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\nEndpoint = {}:{PORT}\n",
        *key.to_base64_secret(),
        TUNNEL_IP[0],
        responder.public(),
        TUNNEL_IP[1],
        bed.host(1).underlay_ip()
    );
    let path = dir.path().join(format!("{ifname}.conf"));
    std::fs::write(&path, conf).expect("write conf");
    let path = path.to_str().expect("utf-8 path");
    let responder_conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\n",
        *responder.key.to_base64_secret(),
        key.public_key(),
        TUNNEL_IP[0]
    );
    responder.setconf(dir.path(), &responder_conf);
    responder.up(TUNNEL_IP[1]);

    let implementation = format!("WG_QUICK_USERSPACE_IMPLEMENTATION={WEFT_WG}");
    let host = bed.host(0);
    host.run_ok(&["env", &implementation, "wg-quick", "up", path])
        .expect("wg-quick up");
    assert!(socket(&ifname).exists());
    assert!(host.ping(ip(TUNNEL_IP[1]), 3), "tunnel up");
    let shown = host.run_ok(&["wg", "show", &ifname]).expect("wg show");
    assert!(shown.contains("latest handshake"), "{shown}");
    host.run_ok(&["wg-quick", "down", path])
        .expect("wg-quick down");
    assert!(
        wait_until(Duration::from_secs(5), || !socket(&ifname).exists()),
        "socket removed"
    );
    let pattern = format!("weft-wg --foreground {ifname}$");
    assert!(
        wait_until(Duration::from_secs(5), || host
            .run_ok(&["pgrep", "-f", &pattern])
            .is_err()),
        "daemon exited"
    );
}

/// A peer's endpoint follows its latest authenticated packet: when host 0's underlay
/// address changes, weft-wg on host 1 answers at the new one.
#[test]
fn endpoint_roams_to_the_latest_authenticated_source() {
    if !require_root("endpoint_roams_to_the_latest_authenticated_source") {
        return;
    }
    let bed = TestBed::new(2).expect("test bed");
    let pair = pair(&bed, [Impl::Weft, Impl::Weft]);
    assert!(bed.host(0).ping(ip(TUNNEL_IP[1]), 2));
    let host = bed.host(0);
    let old = host.underlay_ip().to_string();
    let new = "198.18.3.10";
    let eth = host.underlay_if();
    host.run_ok(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{eth}.promote_secondaries=1"),
    ])
    .expect("sysctl");
    host.run_ok(&["ip", "addr", "add", &format!("{new}/16"), "dev", eth])
        .expect("add address");
    host.run_ok(&["ip", "addr", "del", &format!("{old}/16"), "dev", eth])
        .expect("delete address");
    assert!(
        host.ping(ip(TUNNEL_IP[1]), 3),
        "tunnel works from the new address"
    );
    let node = &pair.nodes[1];
    let endpoints = node.wg(&["show", &node.ifname, "endpoints"]);
    assert!(
        endpoints.contains(&format!("{new}:{PORT}")),
        "roamed: {endpoints:?}"
    );
    // And host 1 can reach host 0 at its new address on its own.
    assert!(bed.host(1).ping(ip(TUNNEL_IP[0]), 2));
}
