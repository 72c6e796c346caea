//! CNI benchmark: ADD and DEL latency of weft-cni beside the reference bridge + host-local
//! plugins, measured in the same run on the same test host: 100 pods (each its own network
//! namespace) attached one after the other, then detached; median and p99 per command.
//!
//! The plugins are run as a runtime runs them: exec'd with the CNI environment and the
//! config on stdin, from a process in the host's network namespace (the benchmark enters it).
//! Both plugins alternate pod by pod, so a change of machine load hits both alike.
//!
//! Run: `cargo bench --bench cni` (as root; builds weft-cni in release). Knob:
//! `WEFT_BENCH_PODS` (default 100). Under `cargo test --benches` it only says it is skipped.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_testbed::TestBed;

#[path = "../tests/cni/common.rs"]
mod common;

use common::{launch, plugin_bin, wait_ready, write_secret, NodeFiles};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("skipped: CNI benchmark runs only under `cargo bench` (smoke mode)");
        return;
    }
    if !weft_testbed::require_root("CNI benchmark") {
        return;
    }
    let pods = std::env::var("WEFT_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100);
    print!("{}", run(pods));
}

/// One plugin: its binary, its config, the CNI_PATH it needs.
struct Plugin {
    name: &'static str,
    bin: std::path::PathBuf,
    conf: Value,
    path: String,
}

/// Runs `command` for `id` in `netns`; the wall time of the exec, or the plugin's error.
fn exec(p: &Plugin, command: &str, id: &str, netns: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(&p.bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &p.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(p.conf.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if std::env::var("SHOWT").is_ok() && p.name == "weft-cni" && command == "ADD" {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if out.status.success() {
        Ok(took)
    } else {
        Err(format!(
            "{} {command} {id}: {}{}",
            p.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(pods: usize) -> String {
    let bed = TestBed::new(1).expect("test bed");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = write_secret(secrets.path(), "cluster.secret");
    let files = NodeFiles::new();
    let proc = launch(bed.host(0), "n0", &secret, &files, &[], "10.52.0.0/16");
    wait_ready(&files, &proc);
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = [
        Plugin {
            name: "weft-cni",
            bin: plugin_bin().to_path_buf(),
            conf: json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft",
                         "apiSocket": files.socket, "stateDir": files.state}),
            path: "/usr/lib/cni".into(),
        },
        Plugin {
            name: "bridge + host-local",
            bin: "/usr/lib/cni/bridge".into(),
            conf: json!({"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
                         "bridge": "cniref0", "isGateway": true,
                         "ipam": {"type": "host-local", "subnet": "10.99.0.0/16", "dataDir": data.path(),
                                  "routes": [{"dst": "0.0.0.0/0"}]}}),
            path: "/usr/lib/cni".into(),
        },
    ];
    let ns: Vec<String> = (0..pods * plugins.len())
        .map(|_| bed.container().expect("container"))
        .collect();
    // The benchmark process goes into the host's namespace: the plugins run there, as a
    // runtime's would, without `ip netns exec` in between.
    let host_ns =
        std::fs::File::open(format!("/run/netns/{}", bed.host(0).name())).expect("host netns");
    let own_ns = std::fs::File::open("/proc/self/ns/net").expect("own netns");
    nix::sched::setns(&host_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");

    let mut add = vec![Vec::new(); plugins.len()];
    let mut del = vec![Vec::new(); plugins.len()];
    let mut failure = None;
    'pods: for i in 0..pods {
        for (k, p) in plugins.iter().enumerate() {
            let netns = format!("/run/netns/{}", ns[i * plugins.len() + k]);
            match exec(p, "ADD", &format!("bench{i}"), &netns) {
                Ok(t) => add[k].push(t),
                Err(e) => {
                    failure = Some(e);
                    break 'pods;
                }
            }
        }
    }
    if failure.is_none() {
        'del: for i in 0..pods {
            for (k, p) in plugins.iter().enumerate() {
                let netns = format!("/run/netns/{}", ns[i * plugins.len() + k]);
                match exec(p, "DEL", &format!("bench{i}"), &netns) {
                    Ok(t) => del[k].push(t),
                    Err(e) => {
                        failure = Some(e);
                        break 'del;
                    }
                }
            }
        }
    }
    nix::sched::setns(&own_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns back");
    if let Some(e) = failure {
        panic!("CNI benchmark failed: {e}");
    }
    let mut table = format!(
        "CNI ADD/DEL latency, {pods} pods one after the other (exec to exit)\n{:<22} {:>12} {:>12} {:>12} {:>12}\n",
        "plugin", "ADD median", "ADD p99", "DEL median", "DEL p99"
    );
    for (k, p) in plugins.iter().enumerate() {
        add[k].sort();
        del[k].sort();
        table.push_str(&format!(
            "{:<22} {:>12} {:>12} {:>12} {:>12}\n",
            p.name,
            ms(percentile(&add[k], 0.5)),
            ms(percentile(&add[k], 0.99)),
            ms(percentile(&del[k], 0.5)),
            ms(percentile(&del[k], 0.99)),
        ));
    }
    table
}
