//! `weft-wg`: weft's userspace WireGuard, a drop-in for wireguard-go.
//!
//! `weft-wg [-f|--foreground] IFNAME` creates the TUN interface and serves the
//! configuration socket `/var/run/wireguard/IFNAME.sock` for `wg` and `wg-quick`. Without
//! `-f` it starts itself again in the background and returns once the socket is ready.
//! It exits, removing the socket, when the interface is deleted or on SIGTERM/SIGINT.
//! `WEFT_WG_OFFLOAD=0` opens the TUN device without TCP segmentation offload.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use weft_mesh::uapi::UapiServer;
use weft_mesh::userspace::{DeviceOptions, UserspaceDevice};

/// Set in the environment of the background child: its stdout is a pipe to the parent,
/// which waits for this line.
const DAEMON_ENV: &str = "WEFT_WG_DAEMON_CHILD";
const READY_LINE: &str = "ready";
/// `0`, `false`, `no` or `off` turn TUN offloads off (they are on by default).
const OFFLOAD_ENV: &str = "WEFT_WG_OFFLOAD";

#[derive(Debug, Parser)]
#[command(
    name = "weft-wg",
    version,
    about = "weft's userspace WireGuard (a drop-in for wireguard-go)"
)]
struct Args {
    /// Stay in the foreground (log to stderr) instead of starting in the background.
    #[arg(short, long)]
    foreground: bool,
    /// The interface to create.
    interface: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.foreground {
        foreground(&args)
    } else {
        daemonize(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-wg: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Start `weft-wg -f IFNAME` in a new session with no terminal, and return once it says its
/// socket is ready (or print why it failed).
fn daemonize(args: &Args) -> anyhow::Result<()> {
    weft_mesh::tun::check_name(&args.interface)?;
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut child = Command::new(exe)
        .arg("--foreground")
        .arg(&args.interface)
        .env(DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the background process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the background process")?;
    if line.trim_end() == READY_LINE {
        return Ok(());
    }
    let mut errors = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut errors);
    }
    let status = child.wait().context("waiting for the background process")?;
    let last = errors
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    bail!("background process failed ({status}): {last}")
}

fn foreground(args: &Args) -> anyhow::Result<()> {
    let daemon_child = std::env::var_os(DAEMON_ENV).is_some();
    if daemon_child {
        // Leave the parent's session so its terminal going away does not touch us.
        nix::unistd::setsid().context("setsid")?;
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(&args.interface, daemon_child))
}

/// `LOG_LEVEL` as wireguard-go reads it (`verbose`, `error`, `silent`) or as a tracing
/// filter (`debug`, `weft_mesh=trace`); else `RUST_LOG`; else info.
fn log_filter() -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    match std::env::var("LOG_LEVEL").ok().as_deref() {
        Some("verbose") => EnvFilter::new("debug"),
        Some("error") => EnvFilter::new("error"),
        Some("silent") => EnvFilter::new("off"),
        Some(other) => EnvFilter::try_new(other).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

async fn run(name: &str, daemon_child: bool) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let offload = !matches!(
        std::env::var(OFFLOAD_ENV).ok().as_deref(),
        Some("0" | "false" | "no" | "off")
    );
    let options = DeviceOptions {
        offload,
        ..DeviceOptions::default()
    };
    let device = UserspaceDevice::create(name, options)
        .await
        .with_context(|| format!("creating interface {name}"))?;
    let server = UapiServer::listen(device.handle())
        .await
        .context("opening the configuration socket")?;
    info!(iface = name, socket = %server.path().display(), "weft-wg running");
    if daemon_child {
        // Our stdout and stderr are pipes to the parent, which exits after this line: from
        // now on both go to /dev/null, as wireguard-go's do in the background.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{READY_LINE}").and_then(|()| stdout.flush());
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .context("opening /dev/null")?;
        nix::unistd::dup2_stdout(&null).context("redirecting stdout")?;
        nix::unistd::dup2_stderr(&null).context("redirecting stderr")?;
    }
    tokio::select! {
        _ = terminate.recv() => info!(iface = name, "SIGTERM: shutting down"),
        _ = interrupt.recv() => info!(iface = name, "SIGINT: shutting down"),
        _ = device.closed() => info!(iface = name, "interface deleted: shutting down"),
    }
    drop(server);
    device.shutdown().await;
    Ok(())
}
