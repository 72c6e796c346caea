//! Logs to stderr through tracing. The level comes from RUST_LOG when set, otherwise from -v.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut bad_env = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .unwrap_or_else(|err| {
                bad_env = Some(err);
                EnvFilter::new(default)
            }),
        _ => EnvFilter::new(default),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    if installed.is_ok() {
        if let Some(err) = bad_env {
            tracing::warn!(%err, "ignoring RUST_LOG");
        }
    }
}
