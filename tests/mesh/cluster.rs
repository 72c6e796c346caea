//! The harness of the mesh tests: a [`Cluster`] of `weft launch` nodes in test-bed hosts,
//! containers (network namespaces) attached to them, the local API polled with deadlines, and
//! the underlay checks. Everything is removed when the cluster drops, also on panic, and then
//! the nodes' logs are printed.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tempfile::TempDir;
use weft_testbed::{Packet, Proc, TestBed};

pub const BIN: &str = env!("CARGO_BIN_EXE_weft");
/// The gossip (QUIC) port.
pub const GOSSIP_PORT: u16 = 6783;
/// The WireGuard port.
pub const WG_PORT: u16 = 6784;
/// The cluster range every node runs with (the default).
pub const RANGE: &str = "10.32.0.0/12";
/// The WireGuard interface the daemon makes.
pub const WG_IF: &str = "weft-wg";

/// One `weft launch` node: its host, files, and process (None while it is down).
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// Index of its test-bed host.
    pub host: usize,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The userspace device's WireGuard configuration socket (for `wg`).
    pub wg_socket: PathBuf,
    pub secret: PathBuf,
    /// Host indices it seeds from.
    pub seeds: Vec<usize>,
    /// More `weft launch` options (`--no-masquerade`, ...).
    pub extra_args: Vec<String>,
    proc: Option<Proc>,
    /// stderr of earlier runs (before a kill or restart), for the logs on failure.
    old_logs: Vec<String>,
}

/// A container: a network namespace attached to a node's bridge.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its namespace name (`/run/netns/NAME`).
    pub netns: String,
    /// The container id given to `weft attach` (and to `allocate`).
    pub id: String,
    /// The node it is attached to.
    pub node: usize,
    /// The address on its eth0.
    pub addr: Ipv4Addr,
}

impl Container {
    /// The key its address is held under (`weft attach` keeps `ID/IFNAME`), for `allocate`.
    pub fn key(&self) -> String {
        format!("{}/eth0", self.id)
    }
}

/// N test-bed hosts with a weft node each (launched on demand), one cluster secret.
pub struct Cluster {
    /// The nodes; dropped (killed) before the bed.
    pub nodes: Vec<Node>,
    pub bed: TestBed,
    pub dir: TempDir,
    /// Containers attached so far.
    pub containers: Vec<Container>,
    /// One cluster at a time per test binary: a 2-core machine running two clusters of
    /// userspace datapaths at once would stretch the timing bounds the tests assert.
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("bed", &self.bed.prefix())
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// Writes a new cluster secret file with `weft secret new`.
pub fn new_secret(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new(BIN)
        .args(["secret", "new", "--out"])
        .arg(&path)
        .output()
        .expect("run weft secret new");
    assert!(out.status.success(), "weft secret new: {out:?}");
    path
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl Cluster {
    /// A bed of `hosts` public hosts; one node per host (`n0`, `n1`, ...), none launched.
    pub fn new(hosts: usize) -> Cluster {
        Self::with_bed(TestBed::new(hosts).expect("test bed"))
    }

    /// As [`Cluster::new`] on a bed built by the caller (NAT, ...).
    pub fn with_bed(bed: TestBed) -> Cluster {
        // A test that panicked while holding it poisons it; the next one may still run.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = new_secret(dir.path(), "cluster.secret");
        let nodes = (0..bed.hosts().len())
            .map(|i| Node {
                name: format!("n{i}"),
                host: i,
                state_dir: dir.path().join(format!("n{i}/state")),
                socket: dir.path().join(format!("n{i}/run/weft.sock")),
                wg_socket: dir.path().join(format!("n{i}/wireguard/weft-wg.sock")),
                secret: secret.clone(),
                seeds: Vec::new(),
                extra_args: Vec::new(),
                proc: None,
                old_logs: Vec::new(),
            })
            .collect();
        Cluster {
            nodes,
            bed,
            dir,
            containers: Vec::new(),
            _serial: serial,
        }
    }

    /// Launches node `i` (`weft launch --datapath userspace`) seeded with the nodes at
    /// `seeds` (their hosts' public addresses).
    pub fn launch(&mut self, i: usize, seeds: &[usize]) {
        self.nodes[i].seeds = seeds.to_vec();
        self.start(i);
    }

    /// Launches every node as a chain: node i seeds only node i-1.
    pub fn launch_chain(&mut self) {
        for i in 0..self.nodes.len() {
            let seeds: Vec<usize> = i.checked_sub(1).into_iter().collect();
            self.launch(i, &seeds);
        }
    }

    /// (Re)starts node `i` with its state directory and seeds.
    pub fn start(&mut self, i: usize) {
        let node = &self.nodes[i];
        let seeds: Vec<String> = node
            .seeds
            .iter()
            .map(|&s| format!("{}:{GOSSIP_PORT}", self.bed.host(s).public_ip()))
            .collect();
        let mut args = vec![
            BIN,
            "launch",
            "--name",
            &node.name,
            "--listen",
            "0.0.0.0:6783",
            "--secret-file",
            utf8(&node.secret),
            "--state-dir",
            utf8(&node.state_dir),
            "--api-socket",
            utf8(&node.socket),
            "--wg-socket",
            utf8(&node.wg_socket),
            "--datapath",
            "userspace",
            "--metrics-addr",
            "127.0.0.1:6782",
            "-v",
        ];
        args.extend(node.extra_args.iter().map(String::as_str));
        args.extend(seeds.iter().map(String::as_str));
        let host = self.bed.host(node.host);
        let proc = host.spawn(&args).expect("spawn weft launch");
        self.nodes[i].proc = Some(proc);
    }

    /// kill -9 node `i` (its whole process group); its stderr is kept for the logs.
    pub fn kill(&mut self, i: usize) {
        if let Some(proc) = self.nodes[i].proc.take() {
            proc.kill().expect("kill");
            let log = proc.output().map(|o| o.stderr).unwrap_or_default();
            self.nodes[i].old_logs.push(log);
        }
    }

    /// Sends signal `name` ("USR2", ...) to node `i`'s daemon.
    pub fn signal(&self, i: usize, name: &str) {
        let proc = self.nodes[i].proc.as_ref().expect("node is running");
        proc.signal(name).expect("signal");
    }

    /// Node `i`'s stderr (its log) of the current run.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i]
            .proc
            .as_ref()
            .and_then(|p| p.output().ok())
            .map(|o| o.stderr)
            .unwrap_or_default()
    }

    /// Node `i`'s `/metrics` (the body), from inside its host's namespace; empty if it does
    /// not answer.
    pub fn metrics(&self, i: usize) -> String {
        let script = "exec 3<>/dev/tcp/127.0.0.1/6782 && \
                      printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3";
        let out = self
            .bed
            .host(self.nodes[i].host)
            .run(&["bash", "-c", script]);
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// The value of sample `name` (with its labels, as printed) in node `i`'s `/metrics`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        self.metrics(i).lines().find_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok())?
        })
    }

    /// The last `lines` lines of every node's stderr (every run), for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let mut runs = node.old_logs.clone();
            if let Some(p) = &node.proc {
                let running = p.is_running();
                runs.push(p.output().map(|o| o.stderr).unwrap_or_default());
                if !running {
                    out.push_str(&format!("=== {}: exited\n", node.name));
                }
            }
            for (run, log) in runs.iter().enumerate() {
                let all: Vec<&str> = log.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                out.push_str(&format!(
                    "=== {} (host {}, run {run}): last {} of {} lines\n{}\n",
                    node.name,
                    node.host,
                    tail.len(),
                    all.len(),
                    tail.join("\n")
                ));
            }
        }
        out
    }

    /// Every WARN or ERROR line any node logged so far (every run), prefixed by its name.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let mut runs = node.old_logs.clone();
            if let Some(p) = &node.proc {
                runs.push(p.output().map(|o| o.stderr).unwrap_or_default());
            }
            out.extend(
                runs.iter()
                    .flat_map(|log| log.lines())
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .map(|l| format!("{}: {l}", node.name)),
            );
        }
        out
    }

    /// A healthy run says nothing an operator would have to act on.
    pub fn assert_no_warnings(&self) {
        let warnings = self.warnings();
        assert!(
            warnings.is_empty(),
            "a healthy run logged warnings:\n{}",
            warnings.join("\n")
        );
    }

    /// Each host's links, addresses, rules and routes, and each container's, for failures.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut show = |ns: &str, what: &str, args: &[&str]| {
            let text = match self.bed.run_in(ns, args) {
                Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) => e.to_string(),
            };
            out.push_str(&format!("--- {what}: {}\n{text}", args.join(" ")));
        };
        for (i, host) in self.bed.hosts().iter().enumerate() {
            let what = format!("host {i}");
            show(host.name(), &what, &["ip", "-br", "addr"]);
            show(host.name(), &what, &["ip", "rule"]);
            show(host.name(), &what, &["ip", "route", "show", "table", "all"]);
        }
        for ctr in &self.containers {
            let what = format!("container {} on n{}", ctr.id, ctr.node);
            show(&ctr.netns, &what, &["ip", "-br", "addr"]);
            show(&ctr.netns, &what, &["ip", "route"]);
        }
        out
    }

    /// `wg show weft-wg dump` by the real `wg` tool against node `i`'s userspace device.
    pub fn wg_dump(&self, i: usize) -> Result<String, String> {
        self.wg(i, &["show", WG_IF, "dump"])
    }

    /// The real `wg` tool against node `i`'s userspace device. `wg` looks only in
    /// /var/run/wireguard, which all test hosts share, so it runs in a private mount
    /// namespace where that directory is the node's own socket directory.
    pub fn wg(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let dir = self.nodes[i]
            .wg_socket
            .parent()
            .ok_or("socket path without a directory")?;
        let script = "mount -t tmpfs tmpfs /run && mkdir /run/wireguard && \
                      mount --bind \"$1\" /run/wireguard && shift && exec wg \"$@\"";
        let out = std::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(dir)
            .args(args)
            .output()
            .map_err(|e| format!("unshare: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One request to node `i`'s API socket: the response, or why there is none
    /// (`{"ok":false}` responses give their error text).
    pub fn api(&self, i: usize, request: &Value) -> Result<Value, String> {
        api_call(&self.nodes[i].socket, request)
    }

    /// `status` of node `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        self.api(i, &json!({"cmd": "status"}))
            .ok()
            .map(|v| v["status"].clone())
    }

    /// `weft policy ARGS -o json` against node `i`: the answer, or what it printed on
    /// failure.
    pub fn weft_policy(&self, i: usize, args: &[&str]) -> Result<Value, String> {
        let n = &self.nodes[i];
        let mut all = vec![BIN, "policy"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--api-socket", utf8(&n.socket), "-o", "json"]);
        let out = self.bed.host(n.host).run(&all).expect("run weft policy");
        if !out.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))
    }

    /// `peers` of node `i` (itself included), if it answers.
    pub fn peers(&self, i: usize) -> Option<Vec<Value>> {
        let v = self.api(i, &json!({"cmd": "peers"})).ok()?;
        v["peers"].as_array().cloned()
    }

    /// `ipam` of node `i`, if it answers.
    pub fn ipam(&self, i: usize) -> Option<Value> {
        self.api(i, &json!({"cmd": "ipam"}))
            .ok()
            .map(|v| v["ipam"].clone())
    }

    /// `allocate {container}` on node `i`.
    pub fn allocate(&self, i: usize, container: &str) -> Result<Value, String> {
        self.api(i, &json!({"cmd": "allocate", "container": container}))
            .map(|v| v["allocation"].clone())
    }

    /// Node `i`'s entry for `name` in its peers list.
    pub fn peer(&self, i: usize, name: &str) -> Option<Value> {
        self.peers(i)?.into_iter().find(|p| p["name"] == name)
    }

    /// Polls `cond` every 200 ms until it holds; panics naming `what` after `timeout`
    /// (the logs follow from the drop). Returns how long it took.
    pub fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if cond() {
                return start.elapsed();
            }
            if start.elapsed() >= timeout {
                panic!("timed out after {timeout:?}: {what}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// True when node `i` lists exactly the nodes `members` (by index), every one alive and,
    /// except itself, with a completed WireGuard handshake.
    pub fn sees_handshaken(&self, i: usize, members: &[usize]) -> bool {
        let Some(list) = self.peers(i) else {
            return false;
        };
        let names: std::collections::BTreeSet<&str> =
            list.iter().filter_map(|p| p["name"].as_str()).collect();
        let want: std::collections::BTreeSet<&str> = members
            .iter()
            .map(|&m| self.nodes[m].name.as_str())
            .collect();
        names == want
            && list.iter().all(|p| {
                p["state"] == "alive" && (p["self"] == true || handshake_secs(p).is_some())
            })
    }

    /// True when node `i` lists exactly `members`, all alive.
    pub fn sees_alive(&self, i: usize, members: &[usize]) -> bool {
        let Some(list) = self.peers(i) else {
            return false;
        };
        let names: std::collections::BTreeSet<&str> =
            list.iter().filter_map(|p| p["name"].as_str()).collect();
        let want: std::collections::BTreeSet<&str> = members
            .iter()
            .map(|&m| self.nodes[m].name.as_str())
            .collect();
        names == want && list.iter().all(|p| p["state"] == "alive")
    }

    /// Waits until all of `members` see each other alive and handshaken.
    pub fn wait_full_mesh(&self, members: &[usize], timeout: Duration) -> Duration {
        self.wait(
            &format!("full mesh of handshaken peers among nodes {members:?}"),
            timeout,
            || members.iter().all(|&i| self.sees_handshaken(i, members)),
        )
    }

    /// Waits until every node in `members` owns address space (status `address_space`).
    pub fn wait_space(&self, members: &[usize], timeout: Duration) -> Duration {
        self.wait(
            &format!("nodes {members:?} own address space"),
            timeout,
            || {
                members.iter().all(|&i| {
                    self.status(i)
                        .and_then(|s| s["address_space"].as_array().map(|a| !a.is_empty()))
                        .unwrap_or(false)
                })
            },
        )
    }

    /// Makes a container namespace and attaches it to node `node` with
    /// `weft attach --netns /run/netns/NAME --api-socket S ID`; returns it with the address
    /// found on its eth0.
    pub fn attach(&mut self, node: usize, id: &str) -> Container {
        self.attach_with(node, id, &[])
    }

    /// [`Cluster::attach`] with more `weft attach` flags (`--namespace`, `--label` ...).
    pub fn attach_with(&mut self, node: usize, id: &str, flags: &[&str]) -> Container {
        let netns = self.bed.container().expect("container namespace");
        let path = format!("/run/netns/{netns}");
        let n = &self.nodes[node];
        let mut args = vec![
            BIN,
            "attach",
            "--netns",
            &path,
            "--api-socket",
            utf8(&n.socket),
        ];
        args.extend_from_slice(flags);
        args.push(id);
        let out = self.bed.host(n.host).run(&args).expect("run weft attach");
        assert!(
            out.status.success(),
            "weft attach {id} on {} failed: {}{}",
            n.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = self
            .container_addr(&netns)
            .unwrap_or_else(|| panic!("no IPv4 address on eth0 of {netns} after attach"));
        let c = Container {
            netns,
            id: id.to_string(),
            node,
            addr,
        };
        self.containers.push(c.clone());
        c
    }

    /// The IPv4 address on eth0 inside container namespace `netns`.
    pub fn container_addr(&self, netns: &str) -> Option<Ipv4Addr> {
        let out = self
            .bed
            .run_ok_in(netns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
            .ok()?;
        // "2: eth0    inet 10.32.0.2/24 brd ... scope global eth0"
        let cidr = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
        cidr.parse::<Ipv4Net>().ok().map(|n| n.addr())
    }

    /// `count` pings from container `from` to `to`; the number of replies.
    pub fn ping(&self, from: &Container, to: Ipv4Addr, count: u32) -> u32 {
        ping_in(&self.bed, &from.netns, to.into(), count)
    }

    /// Waits until container `from` gets a reply from `to`.
    pub fn wait_ping(&self, from: &Container, to: &Container, timeout: Duration) -> Duration {
        self.wait(
            &format!(
                "ping {} ({} on n{}) -> {} ({} on n{})",
                from.id, from.addr, from.node, to.id, to.addr, to.node
            ),
            timeout,
            || self.ping(from, to.addr, 2) > 0,
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- node logs -----\n{}", self.logs(80));
            eprintln!("----- hosts -----\n{}", self.diagnostics());
        }
        // Nodes first (their procs), then the bed removes containers and hosts.
        for node in &mut self.nodes {
            if let Some(p) = node.proc.take() {
                let _ = p.kill();
            }
        }
    }
}

/// Seconds since the last handshake in a peers entry's link, if there was one.
pub fn handshake_secs(peer: &Value) -> Option<f64> {
    peer["link"]["last_handshake_secs"].as_f64()
}

/// One JSON-lines request on a unix socket, 5 s timeouts.
pub fn api_call(socket: &Path, request: &Value) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let mut line = request.to_string();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let v: Value =
        serde_json::from_str(&answer).map_err(|e| format!("bad response {answer:?}: {e}"))?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(v["error"].as_str().unwrap_or("no error text").to_string())
    }
}

/// `count` pings (0.2 s apart, 1 s wait) inside namespace `netns`; the number of replies.
pub fn ping_in(bed: &TestBed, netns: &str, dst: IpAddr, count: u32) -> u32 {
    let (count, dst) = (count.max(1).to_string(), dst.to_string());
    let args = [
        "ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", &dst,
    ];
    match bed.run_in(netns, &args) {
        Ok(out) => received(&String::from_utf8_lossy(&out.stdout)),
        Err(_) => 0,
    }
}

/// "N packets transmitted, M received" -> M.
pub fn received(summary: &str) -> u32 {
    summary
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The cluster range as a network.
pub fn range() -> Ipv4Net {
    RANGE.parse().expect("range")
}

/// IPv6 neighbour discovery/MLD the kernel sends on any link (ICMPv6, maybe behind a
/// hop-by-hop header): host chatter, never the overlay.
pub fn is_ipv6_control(p: &Packet) -> bool {
    let d = &p.data;
    d.len() > 40 && d[0] >> 4 == 6 && (d[6] == 58 || (d[6] == 0 && d[40] == 58))
}

/// The kernel's IGMP reports to 224.0.0.0/24 when an interface comes up: host chatter.
pub fn is_ipv4_igmp(p: &Packet) -> bool {
    let d = &p.data;
    d.len() >= 20 && d[0] >> 4 == 4 && d[9] == 2 && d[16..19] == [224, 0, 0]
}

/// A WireGuard message on `WG_PORT`: type 1-4, three zero bytes, and the type's size
/// (initiation 148, response 92, cookie 64, transport at least 32). Transport messages are not
/// held to the spec's padding to 16 bytes: boringtun's `Tunn` does not pad.
pub fn is_wireguard(p: &Packet) -> bool {
    let Some(udp) = p.udp() else {
        return false;
    };
    let m = udp.payload;
    if !(udp.src_port == WG_PORT || udp.dst_port == WG_PORT) || m.len() < 32 || m[1..4] != [0; 3] {
        return false;
    }
    match m[0] {
        1 => m.len() == 148,
        2 => m.len() == 92,
        3 => m.len() == 64,
        4 => true,
        _ => false,
    }
}

/// An ICMP error (destination unreachable) about one of our own tunnel or gossip datagrams,
/// e.g. port unreachable while a node's daemon is down: it quotes host addresses and the
/// first bytes of ciphertext, never the overlay.
pub fn is_icmp_error_about_tunnel(p: &Packet) -> bool {
    let Some((weft_testbed::IPPROTO_ICMP, off)) = p.transport() else {
        return false;
    };
    let d = &p.data;
    if d.get(off) != Some(&3) {
        return false;
    }
    let inner = &d[(off + 8).min(d.len())..];
    let quoted = Packet {
        data: inner.to_vec(),
        timestamp: p.timestamp,
        orig_len: 0,
    };
    let ports = |u: weft_testbed::Udp<'_>| {
        [u.src_port, u.dst_port]
            .iter()
            .any(|&port| port == WG_PORT || port == GOSSIP_PORT)
    };
    let ihl = usize::from(inner.first().map_or(0, |b| b & 0x0f)) * 4;
    // The quote may be cut short of the UDP length field; read the ports directly.
    quoted.version() == 4
        && inner.get(9) == Some(&weft_testbed::IPPROTO_UDP)
        && inner.len() >= ihl + 4
        && ports(weft_testbed::Udp {
            src_port: u16::from_be_bytes([inner[ihl], inner[ihl + 1]]),
            dst_port: u16::from_be_bytes([inner[ihl + 2], inner[ihl + 3]]),
            payload: &[],
        })
}

/// QUIC gossip: UDP between gossip ports.
pub fn is_gossip(p: &Packet) -> bool {
    p.udp()
        .is_some_and(|u| u.src_port == GOSSIP_PORT || u.dst_port == GOSSIP_PORT)
}

/// What is wrong with an underlay capture: anything but WireGuard and QUIC gossip between
/// hosts (host chatter aside), a pod address in an IP header, or `marker` in any byte.
pub fn underlay_problems(packets: &[Packet], marker: &[u8]) -> Vec<String> {
    let pods = range();
    let mut problems = Vec::new();
    for p in packets {
        let pod = |a: Option<IpAddr>| matches!(a, Some(IpAddr::V4(v4)) if pods.contains(&v4));
        let quoted_pod = p.is_icmp() && {
            let inner = Packet {
                data: p.data.get(28..).unwrap_or_default().to_vec(),
                timestamp: p.timestamp,
                orig_len: 0,
            };
            pod(inner.src()) || pod(inner.dst())
        };
        let why = if p.contains(marker) {
            "carries the marker"
        } else if pod(p.src()) || pod(p.dst()) || quoted_pod {
            "pod address in the clear"
        } else if p
            .udp()
            .is_some_and(|u| u.src_port == WG_PORT || u.dst_port == WG_PORT)
        {
            if is_wireguard(p) {
                continue;
            }
            "on the WireGuard port but not a WireGuard message"
        } else if is_gossip(p)
            || is_ipv6_control(p)
            || is_ipv4_igmp(p)
            || is_icmp_error_about_tunnel(p)
        {
            continue;
        } else {
            "neither WireGuard nor gossip"
        };
        if problems.len() < 10 {
            let head: Vec<u8> = p.data.iter().take(64).copied().collect();
            problems.push(format!(
                "{why}: {:?} -> {:?} proto {:?} len {}: {head:02x?}",
                p.src(),
                p.dst(),
                p.protocol(),
                p.data.len()
            ));
        }
    }
    problems
}
