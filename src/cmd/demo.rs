//! `weft demo`.

pub fn run(_args: &crate::cli::DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
