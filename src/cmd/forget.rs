//! `weft forget NODE`: declare a node gone for good and take back its address space. The
//! daemon refuses while the node is reachable.

use anyhow::bail;

use super::client::{Daemon, DEFAULT_TIMEOUT};
use crate::cli::ForgetArgs;
use crate::daemon::api::{Request, Response};
use crate::output::{self, OutputFormat};

pub fn run(args: &ForgetArgs, format: OutputFormat) -> anyhow::Result<()> {
    let request = Request::Forget {
        node: args.node.clone(),
    };
    match Daemon::new(&args.api, DEFAULT_TIMEOUT).ask(request)? {
        Response::Done { ok, message } => output::print_outcome(format, ok, &message),
        _ => bail!("the daemon answered a forget request with something else"),
    }
}
