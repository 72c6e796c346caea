//! `weft forget NODE`.

use crate::output::OutputFormat;

pub fn run(_args: &crate::cli::ForgetArgs, _format: OutputFormat) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
