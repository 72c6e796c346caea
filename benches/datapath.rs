//! Datapath benchmark: throughput, latency and CPU cost of the WireGuard implementations
//! between two test-bed hosts (network namespaces on a veth underlay), against the raw veth
//! path and with wireguard-go as the reference.
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
const INNER: [&str; 2] = ["203.0.113.1", "203.0.113.2"];
const PORT: u16 = 51820;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("skipped: datapath benchmark runs only under `cargo bench` (smoke mode)");
        return;
    }
    if !is_root() {
        println!("skipped: needs root (network namespaces)");
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

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
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
}

fn run(settings: &Settings) -> Result<String, Error> {
    let bed = TestBed::new(2)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let raw_dst: IpAddr = bed.host(1).underlay_ip().into();
    rows.push(measure(&bed, "veth (raw)", raw_dst, &[], settings)?);

    rows.push(measure_wireguard(
        &bed,
        "wireguard-go",
        WIREGUARD_GO,
        settings,
    )?);

    match weft_wg_binary() {
        Ok(path) => {
            let path = path.to_string_lossy().into_owned();
            rows.push(measure_wireguard(&bed, "weft-wg", &path, settings)?);
            notes.push(format!("weft-wg: {path}"));
        }
        Err(why) => notes.push(format!("weft-wg row skipped: {why}")),
    }
    Ok(table(&rows, settings, &notes))
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

fn measure_wireguard(
    bed: &TestBed,
    name: &str,
    binary: &str,
    settings: &Settings,
) -> Result<Row, Error> {
    let keys = [WgPrivateKey::generate(), WgPrivateKey::generate()];
    let mut daemons = Vec::new();
    for i in 0..2 {
        let host = bed.host(i);
        let ifname = format!("wb{}i{i}", std::process::id() % 1_000_000);
        let proc = host.spawn(&[binary, "-f", &ifname])?;
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
        let endpoint = format!("{}:{PORT}", bed.host(other).underlay_ip());
        let allowed = format!("{}/32", INNER[other]);
        let key_arg = key_path.to_string_lossy();
        let peer = keys[other].public_key().to_string();
        let port = PORT.to_string();
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
        let address = format!("{}/24", INNER[i]);
        host.run_ok(&["ip", "addr", "add", &address, "dev", &ifname])?;
        host.run_ok(&["ip", "link", "set", "up", "dev", &ifname])?;
        daemons.push(daemon);
    }
    let pids: Vec<u32> = daemons.iter().map(|d| d.proc.pid()).collect();
    let dst: IpAddr = INNER[1].parse()?;
    if !bed.host(0).ping(dst, 5) {
        return Err(format!("{name}: no ping over the tunnel").into());
    }
    measure(bed, name, dst, &pids, settings)
}

fn measure(
    bed: &TestBed,
    name: &str,
    dst: IpAddr,
    cpu_pids: &[u32],
    settings: &Settings,
) -> Result<Row, Error> {
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
    let (mut single, mut multi, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_seconds, mut bytes) = (0.0, 0.0);
    for _ in 0..settings.runs {
        for (streams, results) in [(1, &mut single), (4, &mut multi)] {
            let before = cpu_ticks(cpu_pids)?;
            let (bps, received) = iperf(client, dst, streams, settings.secs)?;
            let after = cpu_ticks(cpu_pids)?;
            cpu_seconds += after.saturating_sub(before) as f64 / ticks;
            bytes += received;
            results.push(bps / 1e9);
        }
        rtt.push(ping_avg_ms(client, dst)?);
    }
    drop(server);
    Ok(Row {
        name: name.to_owned(),
        single_gbps: median(&mut single),
        multi_gbps: median(&mut multi),
        rtt_ms: median(&mut rtt),
        cpu_s_per_gb: (!cpu_pids.is_empty() && bytes > 0.0).then(|| cpu_seconds / (bytes / 1e9)),
    })
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
    let mut out = format!(
        "datapath: 2 test-bed hosts over veth, nproc={nproc}, median of {} runs, iperf3 -t {}\n\n",
        settings.runs, settings.secs
    );
    out.push_str(&format!(
        "{:<14} {:>12} {:>8} {:>13} {:>8} {:>10} {:>8} {:>10}\n",
        "path", "TCP 1 (Gb/s)", "vs go", "TCP -P4 Gb/s", "vs go", "RTT (ms)", "vs go", "CPU s/GB"
    ));
    for row in rows {
        let cpu = row
            .cpu_s_per_gb
            .map_or("-".to_owned(), |c| format!("{c:.2}"));
        out.push_str(&format!(
            "{:<14} {:>12.2} {:>8} {:>13.2} {:>8} {:>10.3} {:>8} {:>10}\n",
            row.name,
            row.single_gbps,
            ratio(row.single_gbps, |r| r.single_gbps),
            row.multi_gbps,
            ratio(row.multi_gbps, |r| r.multi_gbps),
            row.rtt_ms,
            ratio(row.rtt_ms, |r| r.rtt_ms),
            cpu,
        ));
    }
    out.push_str("\nCPU s/GB: user+system CPU of both WireGuard processes per GB received.\n");
    for note in notes {
        out.push_str(&format!("{note}\n"));
    }
    out
}
