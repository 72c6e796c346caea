//! The cases of wireguard-go's `tests/netns.sh` (itself a port of the kernel's WireGuard
//! selftest) that apply to a userspace implementation, run against both wireguard-go (the
//! control) and weft-wg: `wireguard_go::CASE` and `weft_wg::CASE`.
//!
//! netns.sh puts every UDP socket in one namespace (ns0) and moves the interfaces out; here
//! each test-bed host runs its own daemon and the tunnel runs over the underlay bridge
//! (198.18.0.0/16, ULA IPv6), which is the shape weft uses. The cases that need a kernel
//! implementation (routing loops, `sk_bound_dev_if`, policy routing through wg-quick) are not
//! ported. Needs root; prints "skipped: ..." otherwise.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use weft_crypto::WgPrivateKey;
use weft_testbed::{require_root, wait_until, Host, Proc, TestBed};

/// The implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    WireguardGo,
    WeftWg,
    /// weft-wg with `WEFT_WG_OFFLOAD=0`: no TUN or UDP offloads.
    WeftWgPlain,
}

impl Impl {
    fn binary(self) -> &'static str {
        match self {
            Impl::WireguardGo => "/usr/bin/wireguard-go",
            Impl::WeftWg | Impl::WeftWgPlain => env!("CARGO_BIN_EXE_weft-wg"),
        }
    }
}

/// Tunnel (inner) addresses of host 0 and host 1, and their prefix lengths on the interface.
const INNER4: [&str; 2] = ["203.0.113.1", "203.0.113.2"];
const INNER6: [&str; 2] = ["fd77:241::1", "fd77:241::2"];
const PORTS: [u16; 2] = [10000, 20000];

static NEXT_IF: AtomicU32 = AtomicU32::new(0);

/// Every namespace shares `/var/run/wireguard`, so interface names are unique per process
/// and test (and distinct from other test files' names).
fn unique_ifname() -> String {
    format!(
        "ns{}x{}",
        std::process::id() % 1_000_000,
        NEXT_IF.fetch_add(1, Ordering::Relaxed)
    )
}

fn socket_path(ifname: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{ifname}.sock"))
}

/// A key written to a 0600 file, as `wg set ... private-key FILE` wants it.
struct KeyFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn key_file(text: &str) -> KeyFile {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("key");
    std::fs::write(&path, format!("{text}\n")).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    KeyFile { _dir: dir, path }
}

struct Keys {
    private: WgPrivateKey,
    public: String,
}

fn new_keys() -> Keys {
    let private = WgPrivateKey::generate();
    let public = private.public_key().to_string();
    Keys { private, public }
}

impl Keys {
    fn file(&self) -> KeyFile {
        key_file(&self.private.to_base64_secret())
    }
}

/// One WireGuard interface of a test: the daemon serving it, in one host.
struct Node<'a> {
    host: &'a Host,
    ifname: String,
    proc: Proc,
}

impl<'a> Node<'a> {
    /// Starts `IMPL -f IFNAME` in `host` and waits for its configuration socket.
    fn start(host: &'a Host, which: Impl) -> Self {
        let ifname = unique_ifname();
        let proc = host
            .spawn(&[
                "env",
                if which == Impl::WeftWgPlain {
                    "WEFT_WG_OFFLOAD=0"
                } else {
                    "WEFT_WG_OFFLOAD=1"
                },
                which.binary(),
                "-f",
                &ifname,
            ])
            .expect("start daemon");
        let up = wait_until(Duration::from_secs(10), || {
            socket_path(&ifname).exists() && host.run_ok(&["wg", "show", &ifname]).is_ok()
        });
        assert!(
            up,
            "{which:?} serves no socket for {ifname}: {:?}",
            proc.output()
        );
        Node { host, ifname, proc }
    }

    fn wg(&self, args: &[&str]) -> String {
        let mut full = vec!["wg"];
        full.extend_from_slice(args);
        self.host
            .run_ok(&full)
            .unwrap_or_else(|e| panic!("{full:?} in {}: {e}", self.host.name()))
    }

    fn wg_set(&self, args: &[&str]) {
        let mut full = vec!["set", self.ifname.as_str()];
        full.extend_from_slice(args);
        self.wg(&full);
    }

    fn show(&self, what: &str) -> String {
        self.wg(&["show", &self.ifname, what]).trim().to_owned()
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        self.host
            .run_ok(&full)
            .unwrap_or_else(|e| panic!("{full:?}: {e}"));
    }

    /// An interface counter as the kernel keeps it (`ip netns exec` mounts this namespace's
    /// sysfs).
    fn counter(&self, name: &str) -> u64 {
        let file = format!("/sys/class/net/{}/statistics/{name}", self.ifname);
        let text = self.host.run_ok(&["cat", &file]).expect("read counter");
        text.trim().parse().expect("counter value")
    }

    /// (rx_bytes, tx_bytes) of the interface.
    fn link_bytes(&self) -> (u64, u64) {
        (self.counter("rx_bytes"), self.counter("tx_bytes"))
    }

    fn rx_packets(&self) -> u64 {
        self.counter("rx_packets")
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        // SIGTERM lets the daemon remove its socket; whatever is left goes too.
        let _ = self.proc.signal("TERM");
        let _ = self.proc.wait_timeout(Duration::from_secs(3));
        let _ = self.proc.kill();
        let _ = std::fs::remove_file(socket_path(&self.ifname));
    }
}

/// Two hosts with one WireGuard interface each, peered as netns.sh's `configure_peers` does
/// (preshared key, /32 and /128 allowed IPs), interfaces up, no endpoints yet.
struct Pair<'a> {
    nodes: [Node<'a>; 2],
    keys: [Keys; 2],
    psk: KeyFile,
}

impl<'a> Pair<'a> {
    fn new(bed: &'a TestBed, which: Impl) -> Self {
        let nodes = [
            Node::start(bed.host(0), which),
            Node::start(bed.host(1), which),
        ];
        let keys = [new_keys(), new_keys()];
        let psk = key_file(&WgPrivateKey::generate().to_base64_secret());
        let pair = Pair { nodes, keys, psk };
        for i in 0..2 {
            let (me, other) = (&pair.nodes[i], 1 - i);
            me.ip(&[
                "addr",
                "add",
                &format!("{}/24", INNER4[i]),
                "dev",
                &me.ifname,
            ]);
            me.ip(&[
                "addr",
                "add",
                &format!("{}/64", INNER6[i]),
                "dev",
                &me.ifname,
                "nodad",
            ]);
            let key = pair.keys[i].file();
            let allowed = format!("{}/32,{}/128", INNER4[other], INNER6[other]);
            me.wg_set(&[
                "private-key",
                path(&key.path),
                "listen-port",
                &PORTS[i].to_string(),
                "peer",
                &pair.keys[other].public,
                "preshared-key",
                path(&pair.psk.path),
                "allowed-ips",
                &allowed,
            ]);
            me.ip(&["link", "set", "up", "dev", &me.ifname]);
        }
        pair
    }

    /// Points each side at the other's underlay address (IPv4 or IPv6).
    fn set_endpoints(&self, bed: &TestBed, ipv6: bool) {
        for i in 0..2 {
            let other = bed.host(1 - i);
            let addr: IpAddr = if ipv6 {
                other.underlay_ip6().expect("bed built with IPv6").into()
            } else {
                other.underlay_ip().into()
            };
            let endpoint = endpoint_text(addr, PORTS[1 - i]);
            self.nodes[i].wg_set(&["peer", &self.keys[1 - i].public, "endpoint", &endpoint]);
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn endpoint_text(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn inner4(i: usize) -> IpAddr {
    INNER4[i].parse().expect("inner address")
}

fn inner6(i: usize) -> IpAddr {
    INNER6[i].parse().expect("inner address")
}

/// `ping -c COUNT` with a short interval; true if every reply came back.
fn ping_all(host: &Host, dst: IpAddr, count: u32) -> bool {
    let out = host
        .run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
            &dst.to_string(),
        ])
        .expect("run ping");
    let summary = String::from_utf8_lossy(&out.stdout);
    out.status.success() && summary.contains(&format!("{count} received"))
}

/// Runs one iperf3 transfer from host `from` to an iperf3 server on host `to` bound to `dst`.
fn iperf(pair: &Pair<'_>, from: usize, to: usize, dst: IpAddr, udp: bool) {
    let server_host = pair.nodes[to].host;
    let bind = dst.to_string();
    let server = server_host
        .spawn(&["iperf3", "-s", "-1", "-B", &bind])
        .expect("iperf3 server");
    let listening = wait_until(Duration::from_secs(5), || {
        server_host
            .run_ok(&["ss", "-Htln", "sport = :5201"])
            .is_ok_and(|out| !out.trim().is_empty())
    });
    assert!(
        listening,
        "iperf3 server did not start: {:?}",
        server.output()
    );
    let mut args = vec![
        "iperf3",
        "-Z",
        "-c",
        bind.as_str(),
        "-n",
        "16M",
        "--connect-timeout",
        "3000",
    ];
    if udp {
        args.extend_from_slice(&["-u", "-b", "400M"]);
    }
    let out = pair.nodes[from].host.run(&args).expect("iperf3 client");
    assert!(
        out.status.success(),
        "iperf3 {} to {dst} failed: {}{}",
        if udp { "UDP" } else { "TCP" },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = server.wait_timeout(Duration::from_secs(5));
}

/// netns.sh's `tests`: ping both ways over IPv4 and IPv6 inside the tunnel, then TCP and UDP
/// transfers over both.
fn ping_and_transfer(pair: &Pair<'_>) {
    let hosts = [pair.nodes[0].host, pair.nodes[1].host];
    assert!(ping_all(hosts[1], inner4(0), 10), "IPv4 ping 1 -> 0");
    assert!(ping_all(hosts[0], inner4(1), 10), "IPv4 ping 0 -> 1");
    assert!(ping_all(hosts[1], inner6(0), 10), "IPv6 ping 1 -> 0");
    assert!(ping_all(hosts[0], inner6(1), 10), "IPv6 ping 0 -> 1");
    iperf(pair, 0, 1, inner4(1), false);
    iperf(pair, 1, 0, inner6(0), false);
    iperf(pair, 1, 0, inner4(0), true);
    iperf(pair, 0, 1, inner6(1), true);
}

fn bed(ipv6: bool) -> TestBed {
    TestBed::builder()
        .hosts(2)
        .ipv6(ipv6)
        .build()
        .expect("test bed")
}

// ---------------------------------------------------------------------------------------
// The cases.

/// "Before calling tests, we first make sure that the stats counters are working": ten
/// pings make the kernel count 840..2500 bytes each way on the interface, a handshake is
/// recorded, and `wg show transfer` counts both directions.
fn counters_and_handshake(which: Impl) {
    let bed = bed(false);
    let pair = Pair::new(&bed, which);
    pair.set_endpoints(&bed, false);
    let b = &pair.nodes[1];
    let (rx0, tx0) = b.link_bytes();
    assert!(ping_all(b.host, inner4(0), 10), "ping over the tunnel");
    let (rx1, tx1) = b.link_bytes();
    let (rx, tx) = (rx1 - rx0, tx1 - tx0);
    assert!((840..2500).contains(&rx), "rx bytes {rx}");
    assert!((840..2500).contains(&tx), "tx bytes {tx}");
    let handshake = b.show("latest-handshakes");
    let seconds: u64 = handshake
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(seconds > 0, "no handshake recorded: {handshake:?}");
    let transfer = b.show("transfer");
    let fields: Vec<u64> = transfer
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(
        fields.len() == 2 && fields.iter().all(|&n| n > 0),
        "transfer {transfer:?}"
    );
}

/// Ping and iperf3 (TCP, UDP; inner IPv4 and IPv6) with IPv4 as outer transport.
fn ipv4_outer(which: Impl) {
    let bed = bed(false);
    let pair = Pair::new(&bed, which);
    pair.set_endpoints(&bed, false);
    ping_and_transfer(&pair);
}

/// The same with IPv6 as outer transport.
fn ipv6_outer(which: Impl) {
    let bed = bed(true);
    let pair = Pair::new(&bed, which);
    pair.set_endpoints(&bed, true);
    ping_and_transfer(&pair);
}

/// "Test using IPv4 that roaming works" and the IPv6 one: host 0 moves to a new underlay
/// address and port; one ping later host 1 sends to the new endpoint.
fn roaming(which: Impl) {
    let bed = bed(true);
    let pair = Pair::new(&bed, which);
    pair.set_endpoints(&bed, false);
    let [a, b] = &pair.nodes;
    assert!(ping_all(a.host, inner4(1), 2), "tunnel up before roaming");

    let old = format!("{}/16", a.host.underlay_ip());
    let underlay = a.host.underlay_if();
    // Keep the new (secondary) address when the old primary goes.
    let promote = format!("echo 1 > /proc/sys/net/ipv4/conf/{underlay}/promote_secondaries");
    a.host.sh(&promote).expect("promote_secondaries");
    a.ip(&["addr", "add", "198.18.3.99/16", "dev", underlay]);
    a.ip(&["addr", "del", &old, "dev", underlay]);
    a.wg_set(&["listen-port", "9999"]);
    let b_endpoint = endpoint_text(b.host.underlay_ip().into(), PORTS[1]);
    a.wg_set(&["peer", &pair.keys[1].public, "endpoint", &b_endpoint]);
    assert!(
        a.host.ping(inner6(1), 3),
        "ping after moving to a new IPv4 address"
    );
    assert_eq!(
        b.show("endpoints"),
        format!("{}\t198.18.3.99:9999", pair.keys[0].public)
    );

    let b6 = b.host.underlay_ip6().expect("IPv6 bed");
    a.wg_set(&["listen-port", "9998"]);
    a.wg_set(&[
        "peer",
        &pair.keys[1].public,
        "endpoint",
        &endpoint_text(b6.into(), PORTS[1]),
    ]);
    assert!(a.host.ping(inner4(1), 3), "ping after switching to IPv6");
    let a6 = a.host.underlay_ip6().expect("IPv6 bed");
    assert_eq!(
        b.show("endpoints"),
        format!("{}\t[{a6}]:9998", pair.keys[0].public)
    );
}

/// "Test that crypto-RP filter works": a packet from host 1 arrives while host 1's peer owns
/// its source address; once a more specific peer owns that address, the same packet (now
/// from a new port) is dropped, though the authenticated sender's endpoint still roams.
fn source_filtering(which: Impl) {
    let bed = bed(true);
    let pair = Pair::new(&bed, which);
    pair.set_endpoints(&bed, true);
    let [a, b] = &pair.nodes;
    a.wg_set(&[
        "peer",
        &pair.keys[1].public,
        "allowed-ips",
        "203.0.113.0/24",
    ]);

    let delivered = |payload: &str| -> bool {
        let listener = a
            .host
            .spawn(&["nc", "-u", "-l", "-W", "1", "1111"])
            .expect("nc listener");
        let listening = wait_until(Duration::from_secs(5), || {
            a.host
                .run_ok(&["ss", "-Huln", "sport = :1111"])
                .is_ok_and(|o| !o.trim().is_empty())
        });
        assert!(listening, "nc did not listen");
        b.host
            .sh(&format!("echo {payload} | nc -u -w 1 {} 1111", INNER4[0]))
            .expect("send UDP over the tunnel");
        let arrived = wait_until(Duration::from_secs(2), || {
            listener.output().is_ok_and(|o| o.stdout.contains(payload))
        });
        let _ = listener.kill();
        arrived
    };
    assert!(
        delivered("first"),
        "packet from the peer that owns the source"
    );

    let more_specific = new_keys();
    a.wg_set(&[
        "peer",
        &more_specific.public,
        "allowed-ips",
        &format!("{}/32", INNER4[1]),
    ]);
    b.wg_set(&["listen-port", "9997"]);
    let rx_before = a.rx_packets();
    assert!(
        !delivered("second"),
        "packet whose source belongs to another peer was delivered"
    );
    assert_eq!(
        a.rx_packets(),
        rx_before,
        "refused packet reached the interface"
    );
    a.wg_set(&["peer", &more_specific.public, "remove"]);
    let b6 = b.host.underlay_ip6().expect("IPv6 bed");
    assert_eq!(
        a.show("endpoints"),
        format!("{}\t[{b6}]:9997", pair.keys[1].public)
    );
}

/// The kernel selftest's "we can change private keys and immediately handshake".
fn private_key_change(which: Impl) {
    let bed = bed(false);
    let pair = Pair::new(&bed, which);
    pair.set_endpoints(&bed, false);
    let [a, b] = &pair.nodes;
    assert!(a.host.ping(inner4(1), 3), "tunnel up with the first key");

    let third = new_keys();
    let third_file = third.file();
    a.wg_set(&["private-key", path(&third_file.path)]);
    let allowed = format!("{}/32,{}/128", INNER4[0], INNER6[0]);
    b.wg_set(&[
        "peer",
        &third.public,
        "preshared-key",
        path(&pair.psk.path),
        "allowed-ips",
        &allowed,
        "peer",
        &pair.keys[0].public,
        "remove",
    ]);
    assert_eq!(a.show("public-key"), third.public);
    assert_eq!(b.show("peers"), third.public);
    assert!(a.host.ping(inner4(1), 3), "ping with the new key");
    assert!(b.host.ping(inner4(0), 3), "ping back with the new key");
}

/// Removing a peer stops traffic to and from it; adding it back restores it.
fn peer_removal(which: Impl) {
    let bed = bed(false);
    let pair = Pair::new(&bed, which);
    pair.set_endpoints(&bed, false);
    let [a, b] = &pair.nodes;
    assert!(a.host.ping(inner4(1), 3), "tunnel up");

    b.wg_set(&["peer", &pair.keys[0].public, "remove"]);
    assert_eq!(b.show("peers"), "", "peer gone from wg show");
    assert!(
        !a.host.ping(inner4(1), 3),
        "traffic still flows to a removed peer"
    );
    assert!(
        !b.host.ping(inner4(0), 2),
        "traffic still flows from a removed peer"
    );

    let allowed = format!("{}/32,{}/128", INNER4[0], INNER6[0]);
    let endpoint = endpoint_text(a.host.underlay_ip().into(), PORTS[0]);
    b.wg_set(&[
        "peer",
        &pair.keys[0].public,
        "preshared-key",
        path(&pair.psk.path),
        "allowed-ips",
        &allowed,
        "endpoint",
        &endpoint,
    ]);
    assert!(
        b.host.ping(inner4(0), 3),
        "traffic after adding the peer back"
    );
}

/// "Test using NAT": host 0 sits behind a masquerading router whose UDP conntrack entries
/// expire after 2 s; with persistent keepalive 1 host 1 still reaches it after 3 s of
/// silence. Control: without keepalive the mapping expires and host 1's ping is dropped.
fn nat_keepalive(which: Impl) {
    let bed = TestBed::builder()
        .hosts(2)
        .nat(&[0])
        .build()
        .expect("test bed");
    let router = bed
        .host(0)
        .router_name()
        .expect("host 0 behind NAT")
        .to_owned();
    let pair = Pair::new(&bed, which);
    let [a, b] = &pair.nodes;
    for key in [
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        let path = format!("/proc/sys/net/netfilter/{key}");
        bed.host(0)
            .run_ok(&[
                "ip",
                "netns",
                "exec",
                &router,
                "sh",
                "-c",
                &format!("echo 2 > {path}"),
            ])
            .expect("set conntrack timeout in the router");
    }
    let b_endpoint = endpoint_text(b.host.public_ip().into(), PORTS[1]);
    a.wg_set(&[
        "peer",
        &pair.keys[1].public,
        "endpoint",
        &b_endpoint,
        "persistent-keepalive",
        "1",
    ]);
    assert!(a.host.ping(inner4(1), 2), "ping out through the NAT");
    assert!(b.host.ping(inner4(0), 2), "ping back in through the NAT");
    let seen = b.show("endpoints");
    let public = bed.host(0).public_ip().to_string();
    assert!(
        seen.starts_with(&format!("{}\t{public}:", pair.keys[0].public)),
        "host 1 sees host 0 at {seen:?}, not at the router's {public}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        ping_all(b.host, inner4(0), 1),
        "keepalive did not hold the NAT mapping open"
    );

    a.wg_set(&["peer", &pair.keys[1].public, "persistent-keepalive", "0"]);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !b.host.ping(inner4(0), 1),
        "control: the mapping should expire without keepalive"
    );
}

/// "Test that Netlink/IPC is working properly by doing things that usually cause split
/// responses": big configurations through `wg setconf` and back through `wg show`.
fn large_configs(which: Impl) {
    let bed = bed(false);
    let host = bed.host(0);

    // One peer with 64 * 256 * 2 allowed IPs (netns.sh uses 255 * 256 * 2).
    let node = Node::start(host, which);
    let mut config = format!(
        "[Interface]\nPrivateKey={}\n[Peer]\nPublicKey={}\n",
        *new_keys().private.to_base64_secret(),
        new_keys().public
    );
    for a in 1..=64 {
        for b in 0..=255 {
            config.push_str(&format!("AllowedIPs={a}.{b}.0.0/16,{a}::{b}/128\n"));
        }
    }
    setconf(&node, &config);
    let count = node.show("allowed-ips").split_whitespace().count();
    assert_eq!(
        count,
        64 * 256 * 2 + 1,
        "allowed IPs read back (plus the peer key)"
    );
    drop(node);

    // 40 peers with 52 allowed IPs each.
    let node = Node::start(host, which);
    let mut config = format!(
        "[Interface]\nPrivateKey={}\n",
        *new_keys().private.to_base64_secret()
    );
    for a in 1..=40 {
        config.push_str(&format!("[Peer]\nPublicKey={}\n", new_keys().public));
        for b in 1..=52 {
            config.push_str(&format!("AllowedIPs={a}.{b}.0.0/16\n"));
        }
    }
    setconf(&node, &config);
    let shown = node.show("allowed-ips");
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 40, "peers read back");
    for line in lines {
        assert_eq!(
            line.split_whitespace().count(),
            53,
            "allowed IPs of one peer: {line}"
        );
    }
    drop(node);

    // 29 peers without allowed IPs, then one with an IPv4 and an IPv6 one.
    let node = Node::start(host, which);
    let mut config = String::new();
    for _ in 0..29 {
        config.push_str(&format!("[Peer]\nPublicKey={}\n", new_keys().public));
    }
    let last = new_keys().public;
    config.push_str(&format!(
        "[Peer]\nPublicKey={last}\nAllowedIPs=255.2.3.4/32,abcd::255/128\n"
    ));
    setconf(&node, &config);
    let showconf = node.wg(&["showconf", &node.ifname]);
    assert_eq!(showconf.matches("[Peer]").count(), 30);
    assert!(
        showconf.contains("255.2.3.4/32") && showconf.contains("abcd::255/128"),
        "{showconf}"
    );

    // `wg show` of an interface that does not exist fails.
    assert!(!host
        .run(&["wg", "show", "doesnotexist"])
        .expect("run wg")
        .status
        .success());
}

fn setconf(node: &Node<'_>, config: &str) {
    let file = key_file(config);
    node.wg(&["setconf", &node.ifname, path(&file.path)]);
}

/// Runs `case` against `which` unless this process cannot build test beds.
fn run(which: Impl, name: &str, case: fn(Impl)) {
    if !require_root(name) {
        return;
    }
    if !Path::new(which.binary()).exists() {
        panic!("{which:?} binary missing: {}", which.binary());
    }
    case(which);
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        /// wireguard-go, the control: these must pass for the test itself to be right.
        mod wireguard_go {
            $(
                #[test]
                fn $case() {
                    super::run(super::Impl::WireguardGo, concat!("wireguard_go::", stringify!($case)), super::$case);
                }
            )*
        }
        /// weft-wg, the implementation under test.
        mod weft_wg {
            $(
                #[test]
                fn $case() {
                    super::run(super::Impl::WeftWg, concat!("weft_wg::", stringify!($case)), super::$case);
                }
            )*
        }
        /// weft-wg with its offloads (TUN TSO/GRO, UDP GSO/GRO) turned off.
        mod weft_wg_without_offload {
            $(
                #[test]
                fn $case() {
                    super::run(super::Impl::WeftWgPlain, concat!("weft_wg_without_offload::", stringify!($case)), super::$case);
                }
            )*
        }
    };
}

suite!(
    counters_and_handshake,
    ipv4_outer,
    ipv6_outer,
    roaming,
    source_filtering,
    private_key_change,
    peer_removal,
    nat_keepalive,
    large_configs,
);
