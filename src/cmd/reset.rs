//! `weft reset`: leave the cluster for good.
//!
//! With the daemon running, it does the work: hands its address space back, tells the
//! others it left, removes weft's interfaces, routes and firewall rules, and exits. With no
//! daemon running (it crashed, or was stopped with SIGTERM, which keeps host state), there is
//! no one to hand the space back or tell the others, so this removes weft's host state
//! directly; the others see the node as stopped and `weft forget NODE` on one of them takes
//! its space back. The state directory (keys, address records) is never touched: delete it
//! to start as a new node.

use anyhow::{bail, Context};

use super::client::{Daemon, RESET_TIMEOUT};
use crate::cli::ResetArgs;
use crate::daemon::api::{Request, Response};
use crate::output::{self, OutputFormat};

/// The WireGuard interface the daemon creates (the contract's "weft-wg").
const WG_IFNAME: &str = "weft-wg";

pub fn run(args: &ResetArgs, format: OutputFormat) -> anyhow::Result<()> {
    let daemon = Daemon::new(&args.api, RESET_TIMEOUT);
    if daemon.running() {
        return match daemon.ask(Request::Reset)? {
            Response::Done { ok, message } => output::print_outcome(format, ok, &message),
            _ => bail!("the daemon answered a reset request with something else"),
        };
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(crate::daemon::datapath::reset(WG_IFNAME))
        .context("the weft daemon is not running, and removing weft's host state failed")?;
    let message = format!(
        "the weft daemon is not running (nothing at {}): removed weft's interfaces, routes \
             and firewall rules from this host. The cluster still counts this node as stopped \
             with its address space; run `weft forget NODE` on another node to take it back. \
             The state directory is left as it is.",
        daemon.socket.display()
    );
    output::print_outcome(format, true, &message)
}
