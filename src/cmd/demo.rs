//! `weft demo [--nodes N]`: a whole cluster on this machine, in network namespaces. An
//! underlay (a bridge namespace and one namespace per host, 198.18.0.0/15), one `weft launch`
//! per host (userspace datapath, chain-seeded), one container namespace per host attached to
//! its node, then every container pings every other one and the RTTs are printed as a matrix.
//! Everything is removed afterwards: on success, on error, and on Ctrl-C or SIGTERM.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::client::{Daemon, DEFAULT_TIMEOUT};
use crate::cli::DemoArgs;
use crate::daemon::api::{AttachRequest, Request, Response, Status, DEFAULT_IFNAME};
use crate::demo::{icmp, netns, underlay};

/// Name prefix of everything the demo makes (namespaces, container ids), then the pid.
pub const PREFIX: &str = "wd";
const GOSSIP_PORT: u16 = 6783;
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_GRACE: Duration = Duration::from_secs(10);
const PING_ATTEMPTS: u16 = 5;
const PING_WAIT: Duration = Duration::from_secs(1);

/// Set by SIGINT or SIGTERM; every step and wait checks it.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("weft demo needs root (network namespaces): run it with sudo");
    }
    // Its nodes run the userspace datapath: refuse before any namespace is made.
    crate::daemon::preflight::check("userspace")?;
    if !(2..=10).contains(&args.nodes) {
        return Err(super::usage_error(
            &["demo"],
            format!("--nodes must be 2 to 10, not {}", args.nodes),
        ));
    }
    watch_signals()?;
    let mut demo = Demo::new(args.nodes)?;
    let result = demo.run();
    if result.is_err() && !STOP.load(Ordering::SeqCst) {
        demo.print_logs_of_failed_nodes();
    }
    demo.clean_up();
    result
}

/// Turns SIGINT and SIGTERM into [`STOP`] (instead of dying with namespaces left behind).
fn watch_signals() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal thread's runtime")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    let _ = ready_tx.send(false);
                    return;
                };
                let _ = ready_tx.send(true);
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                eprintln!("weft demo: interrupted, cleaning up");
                STOP.store(true, Ordering::SeqCst);
            });
        })
        .context("starting the signal thread")?;
    match ready_rx.recv() {
        Ok(true) => Ok(()),
        _ => bail!("could not install the SIGINT/SIGTERM handlers"),
    }
}

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A daemon of the demo, in host namespace `i`.
struct Node {
    name: String,
    api_socket: PathBuf,
    log: PathBuf,
    child: Child,
}

/// Everything the demo made; [`Demo::clean_up`] (also run on drop) removes it.
struct Demo {
    n: usize,
    prefix: String,
    dir: PathBuf,
    exe: PathBuf,
    /// Namespaces made, in order of creation.
    namespaces: Vec<String>,
    nodes: Vec<Node>,
    containers: Vec<(String, Ipv4Addr)>,
    cleaned: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.clean_up();
    }
}

impl Demo {
    fn new(n: usize) -> anyhow::Result<Demo> {
        let prefix = format!("{PREFIX}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let exe = std::env::current_exe().context("finding the weft executable")?;
        Ok(Demo {
            n,
            prefix,
            dir,
            exe,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            containers: Vec::new(),
            cleaned: false,
        })
    }

    fn ns(&mut self, suffix: &str) -> anyhow::Result<PathBuf> {
        check_stop()?;
        let name = format!("{}{suffix}", self.prefix);
        let path = netns::create(&name)?;
        self.namespaces.push(name);
        Ok(path)
    }

    fn host_ns(&self, i: usize) -> PathBuf {
        netns::path(&format!("{}h{i}", self.prefix))
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        println!(
            "weft demo: {n} hosts in network namespaces {}* (files in {})",
            self.prefix,
            self.dir.display()
        );
        let underlay_ns = self.ns("u")?;
        underlay::create_bridge(&underlay_ns).context("building the underlay")?;
        for i in 1..=n {
            let host = self.ns(&format!("h{i}"))?;
            underlay::connect_host(&underlay_ns, &host, i)
                .with_context(|| format!("connecting host {i} to the underlay"))?;
        }
        let secret = self.dir.join("cluster.secret");
        weft_crypto::ClusterSecret::generate()
            .write_new(&secret)
            .context("writing the cluster secret")?;
        for i in 1..=n {
            self.launch(i, &secret)?;
        }
        println!("launched {n} nodes; waiting until each is ready with all its peers up");
        let started = Instant::now();
        self.wait_ready()?;
        println!(
            "all nodes ready after {:.1} s",
            started.elapsed().as_secs_f64()
        );

        for i in 1..=n {
            self.add_container(i)?;
        }
        let failed = self.ping_matrix()?;

        println!("\nweft peers (as node1 sees them):");
        let status = Command::new(&self.exe)
            .arg("peers")
            .arg("--api-socket")
            .arg(&self.nodes[0].api_socket)
            .stdin(Stdio::null())
            .status()
            .context("running weft peers")?;
        if !status.success() {
            eprintln!("weft demo: weft peers failed ({status})");
        }
        let total = n * (n - 1);
        if failed > 0 {
            bail!("{failed} of {total} container pairs could not ping each other");
        }
        println!("\nall {total} container pairs pinged each other; cleaning up");
        Ok(())
    }

    /// Starts `weft launch` in host namespace `i`, seeded with node i-1.
    fn launch(&mut self, i: usize, secret: &Path) -> anyhow::Result<()> {
        check_stop()?;
        let name = format!("node{i}");
        let node_dir = self.dir.join(&name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        let api_socket = node_dir.join("api.sock");
        let log = self.dir.join(format!("{name}.log"));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--secret-file")
            .arg(secret)
            .arg("-v")
            .arg("launch")
            .args(["--name", &name])
            .arg("--listen")
            .arg(format!("{}:{GOSSIP_PORT}", underlay::host_ip(i)))
            .arg("--state-dir")
            .arg(node_dir.join("state"))
            .arg("--api-socket")
            .arg(&api_socket)
            .arg("--wg-socket")
            .arg(node_dir.join("weft-wg.sock"))
            .args(["--metrics-addr", "off", "--datapath", "userspace"]);
        if i > 1 {
            cmd.arg(format!("{}:{GOSSIP_PORT}", underlay::host_ip(i - 1)));
        }
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // The child inherits the namespace of the thread that spawns it.
        let child = netns::run_in(&self.host_ns(i), move || {
            cmd.spawn().context("starting weft launch")
        })
        .with_context(|| format!("launching {name}"))?;
        self.nodes.push(Node {
            name,
            api_socket,
            log,
            child,
        });
        Ok(())
    }

    /// Polls every node's status until all are ready with every peer up.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let want = self.n - 1;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_stop()?;
            let mut waiting = Vec::new();
            for node in &mut self.nodes {
                if let Ok(Some(exit)) = node.child.try_wait() {
                    bail!(
                        "{} exited ({exit}); its log is {}",
                        node.name,
                        node.log.display()
                    );
                }
                match node_status(&node.api_socket) {
                    Ok(s) if s.ready && s.peers_up >= want => {}
                    Ok(s) => waiting.push(format!(
                        "{} ({}, {}/{want} peers up, {} members alive)",
                        node.name,
                        if s.ready { "ready" } else { "not ready" },
                        s.peers_up,
                        s.members.alive
                    )),
                    Err(e) => waiting.push(format!("{} ({e:#})", node.name)),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {} s waiting for nodes to be ready with all peers up: {}",
                    READY_TIMEOUT.as_secs(),
                    waiting.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Makes container namespace `c<i>` and has node i attach it (`weft attach` through its
    /// API socket: the daemon plugs it in, in host i's namespace).
    fn add_container(&mut self, i: usize) -> anyhow::Result<()> {
        let netns_path = self.ns(&format!("c{i}"))?;
        let id = format!("{}-c{i}", self.prefix);
        let socket = self.nodes[i - 1].api_socket.clone();
        let request = Request::Attach(AttachRequest {
            container: id,
            netns: netns_path
                .to_str()
                .context("namespace path is not UTF-8")?
                .to_string(),
            ifname: DEFAULT_IFNAME.to_string(),
            ip: None,
            name: Some(format!("c{i}")),
            labels: Default::default(),
            namespace: None,
            ports: Vec::new(),
        });
        let allocation = match daemon(&socket)
            .ask(request)
            .with_context(|| format!("attaching container c{i} to node{i}"))?
        {
            Response::Allocation { allocation, .. } => allocation,
            _ => bail!("node{i} answered an attach request with something else"),
        };
        println!(
            "container c{i} on node{i}: {} (gateway {})",
            allocation.address, allocation.gateway
        );
        self.containers
            .push((format!("c{i}"), allocation.address.addr()));
        Ok(())
    }

    /// Pings every ordered pair of containers, prints the matrix, returns how many failed.
    fn ping_matrix(&self) -> anyhow::Result<usize> {
        let n = self.containers.len();
        let mut rtt = vec![vec![None; n]; n];
        for (a, row) in rtt.iter_mut().enumerate() {
            let from = netns::path(&format!("{}{}", self.prefix, self.containers[a].0));
            for (b, cell) in row.iter_mut().enumerate() {
                if a == b {
                    continue;
                }
                check_stop()?;
                let dst = self.containers[b].1;
                let id = (std::process::id() as u16).wrapping_add((a * n + b) as u16);
                *cell = netns::run_in(&from, || icmp::echo(dst, id, PING_ATTEMPTS, PING_WAIT))
                    .with_context(|| format!("pinging from {}", self.containers[a].0))?;
            }
        }
        print!("{}", matrix(&self.containers, &rtt));
        Ok((0..n)
            .flat_map(|a| (0..n).map(move |b| (a, b)))
            .filter(|&(a, b)| a != b && rtt[a][b].is_none())
            .count())
    }

    fn print_logs_of_failed_nodes(&mut self) {
        for node in &mut self.nodes {
            let exited = matches!(node.child.try_wait(), Ok(Some(_)));
            let ready = !exited
                && node_status(&node.api_socket).is_ok_and(|s| s.ready && s.peers_up + 1 >= self.n);
            if !ready {
                eprintln!("--- last lines of {} ({}):", node.name, node.log.display());
                eprintln!("{}", tail(&node.log, 20));
            }
        }
    }

    /// Stops the daemons (SIGTERM, then SIGKILL after a grace period), deletes the
    /// namespaces (and with them every link in them) and the temporary directory.
    fn clean_up(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        for node in &self.nodes {
            let _ = kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            loop {
                match node.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!(
                            "weft demo: {} did not stop on SIGTERM; killing it",
                            node.name
                        );
                        let _ = node.child.kill();
                        let _ = node.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        for name in self.namespaces.drain(..).rev() {
            netns::delete(&name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn daemon(socket: &Path) -> Daemon<'_> {
    Daemon {
        socket,
        timeout: DEFAULT_TIMEOUT,
    }
}

fn node_status(socket: &Path) -> anyhow::Result<Status> {
    match daemon(socket).ask(Request::Status)? {
        Response::Status { status, .. } => Ok(status),
        _ => bail!("unexpected answer to a status request"),
    }
}

/// The ping matrix: rows ping columns; a cell is the RTT or FAIL.
fn matrix(containers: &[(String, Ipv4Addr)], rtt: &[Vec<Option<Duration>>]) -> String {
    let mut out = String::from("\nping matrix (row pings column, round-trip time):\n");
    let width = 11;
    let _ = write!(out, "{:>w$}", "", w = width + 17);
    for (name, _) in containers {
        let _ = write!(out, "{name:>width$}");
    }
    out.push('\n');
    for (a, (name, addr)) in containers.iter().enumerate() {
        let _ = write!(out, "{:<w$}", format!("{name} {addr}"), w = width + 17);
        for (b, cell) in rtt[a].iter().enumerate() {
            let text = match cell {
                _ if a == b => "-".to_string(),
                Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1000.0),
                None => "FAIL".to_string(),
            };
            let _ = write!(out, "{text:>width$}");
        }
        out.push('\n');
    }
    out
}

/// The last `lines` lines of a file (at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_shows_rtts_and_failures() {
        let containers = vec![
            ("c1".to_string(), Ipv4Addr::new(10, 32, 0, 2)),
            ("c2".to_string(), Ipv4Addr::new(10, 32, 1, 2)),
        ];
        let rtt = vec![
            vec![None, Some(Duration::from_micros(1234))],
            vec![None, None],
        ];
        let text = matrix(&containers, &rtt);
        assert!(text.contains("1.23 ms"), "{text}");
        assert_eq!(text.matches("FAIL").count(), 1, "{text}");
        assert_eq!(text.matches(" -").count(), 2, "{text}");
    }
}
