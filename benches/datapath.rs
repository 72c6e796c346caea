//! Datapath benchmark: throughput, latency and CPU cost of the WireGuard implementations
//! between two test-bed hosts (network namespaces on a veth underlay), against the raw veth
//! path and with wireguard-go as the reference.
//!
//! All tunnels are up at once (each on its own port and inner /26) and every run measures
//! every path in turn, so a machine whose load changes during the benchmark (a shared CI
//! box) affects all rows alike; the table shows medians over the runs.
//!
//! Run: `cargo build --release -p weft-mesh && cargo bench --bench datapath` (as root).
//! Knobs: `WEFT_BENCH_RUNS` (runs per measure, median reported; default 3), `WEFT_BENCH_SECS`
//! (seconds per iperf3 run; default 5), `WEFT_WG_BIN` (path of the weft-wg binary).
//! Under `cargo test --benches` (no `--bench` argument) it only says it is skipped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_crypto::WgPrivateKey;
use weft_testbed::{wait_until, Host, Proc, TestBed};

const WIREGUARD_GO: &str = "/usr/bin/wireguard-go";
/// Each tunnel gets its own /26 of 203.0.113.0/24 (`.1`/`.2` + 64 * slot) and port.
const PORT: u16 = 51820;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("skipped: datapath benchmark runs only under `cargo bench` (smoke mode)");
        return;
    }
    if !weft_testbed::require_root("datapath benchmark") {
        return;
    }
    let settings = Settings::from_env();
    match run(&settings) {
        Ok(table) => print!("{table}"),
        Err(e) => {
            eprintln!("datapath benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}

struct Settings {
    runs: usize,
    secs: u32,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        Settings {
            runs: number("WEFT_BENCH_RUNS", 3) as usize,
            secs: number("WEFT_BENCH_SECS", 5) as u32,
        }
    }
}

type Error = Box<dyn std::error::Error>;

/// What one implementation measured (medians over the runs).
struct Row {
    name: String,
    single_gbps: f64,
    multi_gbps: f64,
    rtt_ms: f64,
    /// CPU seconds of both WireGuard processes per GB received (single- and multi-stream runs).
    cpu_s_per_gb: Option<f64>,
    /// Every single-stream run, in order, to show the spread.
    single_runs: Vec<f64>,
}

/// One path under test (where to send, which processes do the work) and its results.
struct Measured {
    name: String,
    dst: IpAddr,
    pids: Vec<u32>,
    single: Vec<f64>,
    multi: Vec<f64>,
    rtt: Vec<f64>,
    cpu_seconds: f64,
    bytes: f64,
}

impl Measured {
    fn new(name: &str, dst: IpAddr, pids: Vec<u32>) -> Self {
        Self {
            name: name.to_owned(),
            dst,
            pids,
            single: Vec::new(),
            multi: Vec::new(),
            rtt: Vec::new(),
            cpu_seconds: 0.0,
            bytes: 0.0,
        }
    }

    fn row(mut self) -> Row {
        let single_runs = self.single.clone();
        Row {
            single_gbps: median(&mut self.single),
            multi_gbps: median(&mut self.multi),
            rtt_ms: median(&mut self.rtt),
            cpu_s_per_gb: (!self.pids.is_empty() && self.bytes > 0.0)
                .then(|| self.cpu_seconds / (self.bytes / 1e9)),
            name: self.name,
            single_runs,
        }
    }
}

fn run(settings: &Settings) -> Result<String, Error> {
    let bed = TestBed::new(2)?;
    let mut notes = Vec::new();
    let load_before = load_average();

    let raw_dst: IpAddr = bed.host(1).underlay_ip().into();
    let mut paths = vec![Measured::new("veth (raw)", raw_dst, Vec::new())];
    let mut tunnels = Vec::new();
    tunnels.push(Tunnel::start(&bed, "wireguard-go", WIREGUARD_GO, &[], 0)?);
    match weft_wg_binary() {
        Ok(path) => {
            let path = path.to_string_lossy().into_owned();
            tunnels.push(Tunnel::start(&bed, "weft-wg", &path, &[], 1)?);
            tunnels.push(Tunnel::start(
                &bed,
                "weft-wg no-offl",
                &path,
                &["WEFT_WG_OFFLOAD=0"],
                2,
            )?);
            notes.push(format!(
                "weft-wg: {path}; \"no-offl\": WEFT_WG_OFFLOAD=0 (no TUN TSO/GRO, no UDP GSO/GRO)"
            ));
        }
        Err(why) => notes.push(format!("weft-wg rows skipped: {why}")),
    }
    for tunnel in &tunnels {
        paths.push(Measured::new(&tunnel.name, tunnel.dst, tunnel.pids()));
    }

    let (client, server_host) = (bed.host(0), bed.host(1));
    let server = server_host.spawn(&["iperf3", "-s"])?;
    let listening = wait_until(Duration::from_secs(5), || {
        server_host
            .run_ok(&["ss", "-Htln", "sport = :5201"])
            .is_ok_and(|o| !o.trim().is_empty())
    });
    if !listening {
        return Err(format!("iperf3 server did not start: {:?}", server.output()).into());
    }
    let ticks = clock_ticks()?;
    for _ in 0..settings.runs {
        for path in paths.iter_mut() {
            for streams in [1, 4] {
                let before = cpu_ticks(&path.pids)?;
                let (bps, received) = iperf(client, path.dst, streams, settings.secs)?;
                let after = cpu_ticks(&path.pids)?;
                path.cpu_seconds += after.saturating_sub(before) as f64 / ticks;
                path.bytes += received;
                let results = if streams == 1 {
                    &mut path.single
                } else {
                    &mut path.multi
                };
                results.push(bps / 1e9);
            }
            path.rtt.push(ping_avg_ms(client, path.dst)?);
        }
    }
    drop(server);
    drop(tunnels);
    notes.push(format!(
        "load average (1/5/15 min) before: {load_before}; after: {}",
        load_average()
    ));
    let rows: Vec<Row> = paths.into_iter().map(Measured::row).collect();
    Ok(table(&rows, settings, &notes))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// The release weft-wg: `WEFT_WG_BIN`, else next to this bench binary's profile directory
/// (`target/release/deps/datapath-*` -> `target/release/weft-wg`), else under
/// `$CARGO_TARGET_DIR/release`.
fn weft_wg_binary() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("WEFT_WG_BIN") {
        candidates.push(PathBuf::from(path));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("weft-wg"));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(Path::new(&dir).join("release").join("weft-wg"));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "no weft-wg binary (tried {}); build it with `cargo build --release -p weft-mesh`",
                tried.join(", ")
            )
        })
}

/// One WireGuard daemon with its interface.
struct Daemon {
    proc: Proc,
    ifname: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.proc.signal("TERM");
        let _ = self.proc.wait_timeout(Duration::from_secs(3));
        let _ = self.proc.kill();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
    }
}

/// A WireGuard tunnel between the two hosts: one daemon on each.
struct Tunnel {
    name: String,
    dst: IpAddr,
    daemons: Vec<Daemon>,
}

impl Tunnel {
    fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(|d| d.proc.pid()).collect()
    }

    /// `binary -f IFNAME` on both hosts (with `env` set), keys, port `PORT + slot`, inner
    /// addresses in the slot's /26; checked with a ping.
    fn start(
        bed: &TestBed,
        name: &str,
        binary: &str,
        env: &[&str],
        slot: u8,
    ) -> Result<Self, Error> {
        let inner = [
            format!("203.0.113.{}", 64 * slot + 1),
            format!("203.0.113.{}", 64 * slot + 2),
        ];
        let port = (PORT + u16::from(slot)).to_string();
        let keys = [WgPrivateKey::generate(), WgPrivateKey::generate()];
        let mut daemons = Vec::new();
        for i in 0..2 {
            let host = bed.host(i);
            let ifname = format!("wb{}s{slot}i{i}", std::process::id() % 100_000);
            let mut argv = vec!["env"];
            argv.extend_from_slice(env);
            argv.extend_from_slice(&[binary, "-f", &ifname]);
            let proc = host.spawn(&argv)?;
            let socket = format!("/var/run/wireguard/{ifname}.sock");
            let daemon = Daemon {
                proc,
                ifname: ifname.clone(),
            };
            if !wait_until(Duration::from_secs(10), || {
                Path::new(&socket).exists() && host.run_ok(&["wg", "show", &ifname]).is_ok()
            }) {
                return Err(format!("{name} did not start: {:?}", daemon.proc.output()).into());
            }
            let dir = tempfile::tempdir()?;
            let key_path = dir.path().join("key");
            std::fs::write(&key_path, format!("{}\n", *keys[i].to_base64_secret()))?;
            let other = 1 - i;
            let endpoint = format!("{}:{port}", bed.host(other).underlay_ip());
            let allowed = format!("{}/32", inner[other]);
            let key_arg = key_path.to_string_lossy();
            let peer = keys[other].public_key().to_string();
            host.run_ok(&[
                "wg",
                "set",
                &ifname,
                "private-key",
                &key_arg,
                "listen-port",
                &port,
                "peer",
                &peer,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ])?;
            // A /26 per tunnel: the slot's two addresses are on-link only through it.
            let address = format!("{}/26", inner[i]);
            host.run_ok(&["ip", "addr", "add", &address, "dev", &ifname])?;
            host.run_ok(&["ip", "link", "set", "up", "dev", &ifname])?;
            daemons.push(daemon);
        }
        let dst: IpAddr = inner[1].parse()?;
        if !bed.host(0).ping(dst, 5) {
            return Err(format!("{name}: no ping over the tunnel").into());
        }
        Ok(Tunnel {
            name: name.to_owned(),
            dst,
            daemons,
        })
    }
}

/// One iperf3 run: (bits per second received, bytes received).
fn iperf(client: &Host, dst: IpAddr, streams: u32, secs: u32) -> Result<(f64, f64), Error> {
    let (dst, streams, secs) = (dst.to_string(), streams.to_string(), secs.to_string());
    let out = client.run_ok(&["iperf3", "-c", &dst, "-t", &secs, "-P", &streams, "-J"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let received = &json["end"]["sum_received"];
    match (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_f64(),
    ) {
        (Some(bps), Some(bytes)) => Ok((bps, bytes)),
        _ => Err(format!("iperf3 JSON without end.sum_received: {out}").into()),
    }
}

/// Average RTT of 20 pings, from ping's "rtt min/avg/max/mdev = a/b/c/d ms" line.
fn ping_avg_ms(client: &Host, dst: IpAddr) -> Result<f64, Error> {
    let dst = dst.to_string();
    let out = client.run_ok(&["ping", "-n", "-q", "-c", "20", "-i", "0.05", &dst])?;
    out.lines()
        .find_map(|l| {
            l.split_once(" = ")
                .filter(|(k, _)| k.contains("min/avg/max"))
        })
        .and_then(|(_, v)| v.split('/').nth(1))
        .and_then(|avg| avg.trim().parse().ok())
        .ok_or_else(|| format!("no rtt line in ping output: {out}").into())
}

/// utime + stime of the processes, in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pids: &[u32]) -> Result<u64, Error> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name (field 2) may contain spaces: count fields after its ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or("bad /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime field 15.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        total += field(14)
            .zip(field(15))
            .map(|(u, s)| u + s)
            .ok_or("bad /proc stat")?;
    }
    Ok(total)
}

fn clock_ticks() -> Result<f64, Error> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn table(rows: &[Row], settings: &Settings, notes: &[String]) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let reference = rows.iter().find(|r| r.name == "wireguard-go");
    let ratio = |value: f64, pick: fn(&Row) -> f64| {
        reference.map_or("-".to_owned(), |r| format!("{:.2}x", value / pick(r)))
    };
    // Each run measures every path back to back, so the ratio within one run is the fairest
    // comparison when the machine's load changes between runs: median and range over runs.
    let run_ratios = |row: &Row| -> String {
        let Some(go) = reference else {
            return "-".to_owned();
        };
        let mut ratios: Vec<f64> = row
            .single_runs
            .iter()
            .zip(&go.single_runs)
            .filter(|(_, g)| **g > 0.0)
            .map(|(v, g)| v / g)
            .collect();
        if ratios.is_empty() {
            return "-".to_owned();
        }
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        format!("{:.2}x [{lo:.2}-{hi:.2}]", median(&mut ratios))
    };
    let mut out = format!(
        "datapath: 2 test-bed hosts over veth, nproc={nproc}, median of {} runs, iperf3 -t {}\n\n",
        settings.runs, settings.secs
    );
    out.push_str(&format!(
        "{:<16} {:>12} {:>8} {:>22} {:>13} {:>8} {:>10} {:>8} {:>10}  {}\n",
        "path",
        "TCP 1 (Gb/s)",
        "vs go",
        "per-run vs go [range]",
        "TCP -P4 Gb/s",
        "vs go",
        "RTT (ms)",
        "vs go",
        "CPU s/GB",
        "TCP 1 runs"
    ));
    for row in rows {
        let cpu = row
            .cpu_s_per_gb
            .map_or("-".to_owned(), |c| format!("{c:.2}"));
        out.push_str(&format!(
            "{:<16} {:>12.2} {:>8} {:>22} {:>13.2} {:>8} {:>10.3} {:>8} {:>10}  {}\n",
            row.name,
            row.single_gbps,
            ratio(row.single_gbps, |r| r.single_gbps),
            run_ratios(row),
            row.multi_gbps,
            ratio(row.multi_gbps, |r| r.multi_gbps),
            row.rtt_ms,
            ratio(row.rtt_ms, |r| r.rtt_ms),
            cpu,
            row.single_runs
                .iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
        ));
    }
    out.push_str("\nCPU s/GB: user+system CPU of both WireGuard processes per GB received.\n");
    for note in notes {
        out.push_str(&format!("{note}\n"));
    }
    out
}
