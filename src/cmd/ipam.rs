//! `weft ipam`: the cluster's address space, from the running daemon.

use crate::output::OutputFormat;

pub fn show(_socket: &std::path::Path, _format: OutputFormat) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
