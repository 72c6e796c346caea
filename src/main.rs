//! The `weft` command: CLI parsing, logging set-up, and exit codes. Each command lives in
//! `cmd/`; adding one is a variant in `cli::Command`, a module, and a match arm in `cmd::run`.
#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod daemon;
mod demo;
mod logging;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors (and --help/--version) exit here: 2 for errors, 0 for help, as clap does.
    let cli = cli::Cli::parse();
    logging::init(cli.global.verbose);
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A command may find a usage problem clap could not (an option needed only by it).
            if let Some(usage) = err.downcast_ref::<clap::Error>() {
                usage.exit();
            }
            eprintln!("weft: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message before
/// it already ends with (library errors often print their source too).
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_causes_without_repeating_them() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let crypto = weft_crypto::Error::Io {
            path: "/x/key".into(),
            source: io,
        };
        let err = anyhow::Error::new(crypto).context("loading keys");
        assert_eq!(error_chain(&err), "loading keys: /x/key: no such file");
    }
}
