//! `weft attach`.

use crate::output::OutputFormat;

pub fn run(_args: &crate::cli::AttachArgs, _format: OutputFormat) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
