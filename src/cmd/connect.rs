//! `weft connect ADDR`: make the running daemon gossip with the node at ADDR, e.g. to merge
//! with a node started apart. The daemon resolves the address.

use anyhow::bail;

use super::client::{Daemon, DEFAULT_TIMEOUT};
use crate::cli::ConnectArgs;
use crate::daemon::api::{Request, Response};
use crate::output::{self, OutputFormat};

pub fn run(args: &ConnectArgs, format: OutputFormat) -> anyhow::Result<()> {
    let request = Request::Connect {
        addr: args.addr.clone(),
    };
    match Daemon::new(&args.api, DEFAULT_TIMEOUT).ask(request)? {
        Response::Done { ok, message } => output::print_outcome(format, ok, &message),
        _ => bail!("the daemon answered a connect request with something else"),
    }
}
