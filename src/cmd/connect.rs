//! `weft connect ADDR`.

use crate::output::OutputFormat;

pub fn run(_args: &crate::cli::ConnectArgs, _format: OutputFormat) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
