//! `weft-cni`: the CNI plugin of weft (see the library's docs). Reads the `CNI_*` variables and
//! stdin, runs the command, prints its result or the spec's error result on stdout.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use weft_cni::error::{code, CniError};
use weft_cni::request::{self, MAX_STDIN_LEN};
use weft_cni::version::SUPPORTED;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(MAX_STDIN_LEN as u64 + 1)
        .read_to_end(&mut stdin);
    let outcome = match (read, environment()) {
        (Err(e), _) => Err(CniError::io(
            "error reading the network config from stdin",
            &e,
        )),
        (_, Err(e)) => Err(e),
        (Ok(_), Ok(vars)) => {
            if !vars.contains_key("CNI_COMMAND") {
                eprintln!(
                    "weft-cni: the CNI plugin of weft; CNI protocol versions supported: {}",
                    SUPPORTED.map(|v| v.as_str()).join(", ")
                );
            }
            request::parse(&vars, &stdin).and_then(weft_cni::plugin::run)
        }
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(json)) => match writeln!(out, "{json}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft-cni: writing the result: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("weft-cni: {e}");
            let _ = writeln!(out, "{}", e.to_json(&request::error_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}

/// The process's variables. A `CNI_*` one that is not UTF-8 is an error (4); others are
/// left out (they are not ours to read).
fn environment() -> Result<BTreeMap<String, String>, CniError> {
    let mut vars = BTreeMap::new();
    for (key, value) in std::env::vars_os() {
        let Ok(key) = key.into_string() else { continue };
        match value.into_string() {
            Ok(v) => {
                vars.insert(key, v);
            }
            Err(_) if key.starts_with("CNI_") => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("invalid {key}"),
                    "not valid UTF-8",
                ))
            }
            Err(_) => {}
        }
    }
    Ok(vars)
}
