//! `weft reset`.

use crate::output::OutputFormat;

pub fn run(_args: &crate::cli::ResetArgs, _format: OutputFormat) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
