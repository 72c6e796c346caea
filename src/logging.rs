//! Logs to stderr through tracing. The level comes from RUST_LOG when set, otherwise from -v.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Libraries whose warnings an operator cannot act on, quietened below debug level: weft
/// says what they mean in its own words (a peer without a handshake is "unreachable" in
/// `weft peers` and in a weft log line; a failed send is counted in `weft status`).
/// boringtun warns of every handshake that timed out and errors when a session expires;
/// quinn-udp warns of every refused `sendmsg` with the raw `Transmit`; quinn-proto warns of
/// stale address-validation tokens. kube's client logs an error for every failed connection
/// and kube's watcher a warning for every failed list while the API server is away; weft's
/// watchers say it once per retry in their own words ("watch failed; retrying with backoff").
const QUIET_LIBRARIES: &str =
    "boringtun=off,quinn_udp=error,quinn_proto=error,quinn=error,kube_client=off,kube_runtime=off";

/// The filter for `-v` given `verbose` times, without RUST_LOG.
fn default_directives(verbose: u8) -> String {
    match verbose {
        0 => format!("warn,{QUIET_LIBRARIES}"),
        1 => format!("info,{QUIET_LIBRARIES}"),
        2 => "debug".to_string(),
        _ => "trace".to_string(),
    }
}

pub fn init(verbose: u8) {
    let default = default_directives(verbose);
    let mut bad_env = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .unwrap_or_else(|err| {
                bad_env = Some(err);
                EnvFilter::new(&default)
            }),
        _ => EnvFilter::new(&default),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_quietens_libraries_below_debug() {
        for v in 0..4 {
            let d = default_directives(v);
            assert!(EnvFilter::try_new(&d).is_ok(), "{d}");
            assert_eq!(d.contains("boringtun=off"), v < 2, "{d}");
        }
    }
}
