//! One module per command; `run` dispatches. Commands return `anyhow::Result`: a failure is
//! printed as `weft: <error chain>` with exit status 1, a `clap::Error` as a usage error (2).

mod attach;
mod client;
mod connect;
mod demo;
pub(crate) mod engine;
mod forget;
mod identity;
mod ipam;
mod keys;
mod launch;
mod peers;
mod pods;
mod policy;
mod reset;
mod secret;
mod status;

use std::io;

use crate::cli::{Cli, Command, SecretCommand};
use client::{Daemon, DEFAULT_TIMEOUT};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    match command {
        Command::Genkey => keys::genkey(),
        Command::Pubkey => keys::pubkey(io::stdin().lock()),
        Command::Secret(SecretCommand::New { out }) => secret::new(out.as_deref()),
        Command::Secret(SecretCommand::Check) => {
            secret::check(global.secret_file.as_deref(), global.output)
        }
        Command::Identity(args) => identity::show(&args.state.state_dir, global.output),
        Command::Launch(args) => launch::run(*args, global.secret_file),
        Command::Status(args) => status::show(Daemon::new(&args, DEFAULT_TIMEOUT), global.output),
        Command::Peers(args) => peers::show(Daemon::new(&args, DEFAULT_TIMEOUT), global.output),
        Command::Ipam(args) => ipam::show(Daemon::new(&args, DEFAULT_TIMEOUT), global.output),
        Command::Pods(args) => pods::show(Daemon::new(&args, DEFAULT_TIMEOUT), global.output),
        Command::Forget(args) => forget::run(&args, global.output),
        Command::Connect(args) => connect::run(&args, global.output),
        Command::Reset(args) => reset::run(&args, global.output),
        Command::Attach(args) => attach::run(&args, global.output),
        Command::Detach(args) => attach::detach(&args, global.output),
        Command::Demo(args) => demo::run(&args),
        Command::Policy(cmd) => policy::run(cmd, global.output),
    }
}

/// A usage error found after parsing, reported like clap's own with the usage of the command
/// at `path` (e.g. `["secret", "check"]`); exit status 2.
fn usage_error(path: &[&str], message: impl std::fmt::Display) -> anyhow::Error {
    use clap::CommandFactory;
    let mut root = Cli::command();
    root.build(); // gives subcommands their full names for the usage line
    let mut cmd = root;
    for name in path {
        match cmd.find_subcommand(name) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    cmd.error(clap::error::ErrorKind::MissingRequiredArgument, message)
        .into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_error_shows_the_usage_of_the_command() {
        let err = super::usage_error(&["secret", "check"], "no secret file");
        let text = err.to_string();
        assert!(text.contains("no secret file"), "{text}");
        assert!(text.contains("Usage: weft secret check"), "{text}");
    }
}
