//! Running helper commands (`ip`, `nft`, `kill`, ...) with errors that name the command.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// The command line as one string, for error messages.
pub(crate) fn render(args: &[&str]) -> String {
    args.join(" ")
}

/// Runs `args[0]` with the rest as arguments and returns its output, whatever the exit status.
pub(crate) fn output(args: &[&str]) -> Result<Output> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| Error::Invalid("empty command".into()))?;
    Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: render(args),
            source,
        })
}

/// Turns a finished command into its stdout, or an error carrying its stderr.
pub(crate) fn check(args: &[&str], out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: render(args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs a command and fails unless it exits 0.
pub(crate) fn ok(args: &[&str]) -> Result<String> {
    let out = output(args)?;
    check(args, out)
}

/// Runs a command with `input` on its stdin (e.g. `nft -f -`) and fails unless it exits 0.
pub(crate) fn ok_with_stdin(args: &[&str], input: &str) -> Result<String> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| Error::Invalid("empty command".into()))?;
    let spawn_err = |source| Error::Spawn {
        command: render(args),
        source,
    };
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::io(format!("writing stdin of `{}`", render(args)), e))?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    check(args, out)
}

/// Sends a signal with the `kill` utility; `target` is a pid or `-pgid`.
pub(crate) fn signal(target: &str, signal: &str) -> Result<()> {
    ok(&["kill", &format!("-{signal}"), "--", target]).map(|_| ())
}
