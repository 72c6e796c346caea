//! Delegated plugins (spec section 4): the IPAM plugin named by `ipam.type`, found in
//! `CNI_PATH`, run with this plugin's environment (only `CNI_COMMAND` may differ) and the
//! complete configuration on stdin; its stderr is ours, its error result is passed on as is.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::env::Command;
use crate::error::{code, CniError, Result};
use crate::types::CniResult;

/// The executable `plugin` in the first directory of `path` that has one.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            CniError::config(
                format!("failed to find plugin {plugin:?} in path"),
                format!(
                    "CNI_PATH is [{}]; install the IPAM plugin there or fix \"ipam\": {{\"type\": ...}}",
                    path.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// Runs `plugin` with `CNI_COMMAND=command` and `stdin`. On success, its stdout (empty for
/// DEL, CHECK, GC, STATUS).
pub fn run(plugin: &Path, command: Command, stdin: &[u8]) -> Result<Vec<u8>> {
    let name = plugin.display().to_string();
    let mut child = Process::new(plugin)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(code::DELEGATE, format!("running {name}"), e.to_string()))?;
    // A plugin that exits without reading stdin closes the pipe: its exit status tells.
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::DELEGATE, format!("running {name}"), e.to_string()))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(
        CniError::from_plugin_output(&out.stdout).unwrap_or_else(|| {
            CniError::new(
                code::DELEGATE,
                format!("{name} {} failed ({})", command.as_str(), out.status),
                String::from_utf8_lossy(&out.stdout)
                    .chars()
                    .take(512)
                    .collect::<String>(),
            )
        }),
    )
}

/// ADD: the IPAM plugin's result (IPs, routes, DNS).
pub fn add(plugin: &Path, stdin: &[u8]) -> Result<CniResult> {
    let out = run(plugin, Command::Add, stdin)?;
    let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code::DELEGATE,
            format!("{} gave no JSON result", plugin.display()),
            e.to_string(),
        )
    })?;
    CniResult::from_value("the IPAM plugin's result", &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn plugins_are_found_run_and_their_errors_passed_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = tempfile::tempdir().expect("tempdir");
        let good = script(
            dir.path(),
            "good",
            r#"cat >/dev/null; echo "{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.1.0.5/16\"}],\"cmd\":\"$CNI_COMMAND\"}""#,
        );
        script(
            dir.path(),
            "bad",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"no range","details":"x"}'; exit 1"#,
        );
        std::fs::write(dir.path().join("noexec"), "").expect("write");
        let path = vec![empty.path().to_path_buf(), dir.path().to_path_buf()];
        assert_eq!(find("good", &path).expect("found"), good);
        assert_eq!(
            find("noexec", &path).expect_err("not executable").code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            find("none", &path).expect_err("missing").code,
            code::INVALID_CONFIG
        );

        let r = add(&good, b"{}").expect("result");
        assert_eq!(r.ips[0].address, "10.1.0.5/16".parse().expect("net"));
        let out = run(&good, Command::Del, b"{}").expect("del");
        assert!(String::from_utf8_lossy(&out).contains("\"cmd\":\"DEL\""));
        let e = add(&find("bad", &path).expect("found"), b"{}").expect_err("error");
        assert_eq!((e.code, e.msg.as_str()), (7, "no range"));
        let silent = script(dir.path(), "silent", "exit 3");
        let e = run(&silent, Command::Add, b"{}").expect_err("error");
        assert_eq!(e.code, code::DELEGATE);
    }
}
