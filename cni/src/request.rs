//! One invocation, read and checked: the environment and stdin become a [`Request`] or a
//! [`CniError`] with the spec's code. Pure, so every bad input is refused before anything on the
//! host or in the daemon is touched.

use std::collections::BTreeMap;

use crate::config::{self, NetConf};
use crate::env::{self, AttachmentId, Command, Env};
use crate::error::{code, CniError, Result};
use crate::version::{self, Version, CURRENT};

/// Longest stdin read. Configs are a few hundred bytes; a prevResult a few KiB.
pub const MAX_STDIN_LEN: usize = 1 << 20;

/// A checked invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// VERSION: answer with the supported versions, echoing `cni_version`.
    Version { cni_version: String },
    /// ADD, DEL, CHECK, GC, STATUS.
    Call(Box<Call>),
}

/// A command with its environment and configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub env: Env,
    pub conf: NetConf,
    /// stdin as received: a delegated plugin gets exactly this.
    pub stdin: Vec<u8>,
}

impl Call {
    pub fn command(&self) -> Command {
        self.env.command
    }

    /// The attachment of ADD, DEL and CHECK (always set for them by [`parse`]).
    pub fn attachment(&self) -> Result<&AttachmentId> {
        self.env.attachment.as_ref().ok_or_else(|| {
            CniError::env(
                "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing",
                "",
            )
        })
    }
}

/// The protocol version to write an error in: the config's `cniVersion` if it reads as a
/// version, else the current one.
pub fn error_version(stdin: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        cni_version: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(stdin) {
        Ok(Head {
            cni_version: Some(serde_json::Value::String(v)),
        }) if version::is_semver(&v) => v,
        _ => CURRENT.as_str().to_string(),
    }
}

/// Reads an invocation: the variables (only `CNI_*` matter) and stdin.
pub fn parse(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Result<Request> {
    let env = env::parse(vars)?;
    if stdin.len() > MAX_STDIN_LEN {
        return Err(CniError::new(
            code::IO,
            "error reading the network config",
            format!("stdin is longer than {MAX_STDIN_LEN} bytes"),
        ));
    }
    if env.command == Command::Version {
        return version_request(stdin).map(|cni_version| Request::Version { cni_version });
    }
    let map = config::parse_json(stdin)?;
    let version = config::version_of(&map)?;
    let needs = |min: Version, what: &str| {
        if version < min {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("config version does not allow {what}"),
                format!("{what} needs cniVersion {min} or later; the config says {version}"),
            ))
        } else {
            Ok(())
        }
    };
    match env.command {
        Command::Check => needs(Version::V0_4_0, "CHECK")?,
        Command::Gc => needs(Version::V1_1_0, "GC")?,
        Command::Status => needs(Version::V1_1_0, "STATUS")?,
        _ => {}
    }
    let conf = config::parse(&map, version)?;
    if env.command == Command::Check && conf.prev_result.is_none() {
        return Err(CniError::config(
            "required prevResult missing",
            "CHECK compares the attachment with the result of its ADD",
        ));
    }
    Ok(Request::Call(Box::new(Call {
        env,
        conf,
        stdin: stdin.to_vec(),
    })))
}

/// VERSION needs nothing but `{"cniVersion": ...}`, and takes an empty stdin too.
fn version_request(stdin: &[u8]) -> Result<String> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(CURRENT.as_str().to_string());
    }
    let map = config::parse_json(stdin)?;
    match map.get("cniVersion") {
        None => Ok(CURRENT.as_str().to_string()),
        Some(serde_json::Value::String(v)) if version::is_semver(v) => Ok(v.clone()),
        Some(_) => Err(CniError::decode(
            "error decoding the version request",
            "cniVersion is not a version such as \"1.1.0\"",
        )),
    }
}

/// The VERSION answer.
pub fn version_answer(cni_version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": version::SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"weft","type":"weft"}"#;

    #[test]
    fn version_needs_only_the_version() {
        let v = vars(&[("CNI_COMMAND", "VERSION")]);
        assert_eq!(
            parse(&v, br#"{"cniVersion":"1.0.0"}"#),
            Ok(Request::Version {
                cni_version: "1.0.0".into()
            })
        );
        assert_eq!(
            parse(&v, b""),
            Ok(Request::Version {
                cni_version: "1.1.0".into()
            })
        );
        assert_eq!(parse(&v, b"{").expect_err("bad").code, code::DECODE);
        let answer = version_answer("1.0.0");
        assert_eq!(answer["cniVersion"], "1.0.0");
        assert_eq!(
            answer["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn commands_need_their_protocol_version() {
        let base = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/c1"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        for (cmd, stdin) in [
            (
                "CHECK",
                r#"{"cniVersion":"0.3.1","name":"n","type":"weft"}"#,
            ),
            ("GC", r#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#),
            (
                "STATUS",
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#,
            ),
        ] {
            let mut v = vars(&base);
            v.insert("CNI_COMMAND".into(), cmd.into());
            let e = parse(&v, stdin.as_bytes()).expect_err(cmd);
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{cmd}: {e}");
            assert!(e.msg.contains(cmd), "{e}");
        }
        let mut check = vars(&base);
        check.insert("CNI_COMMAND".into(), "CHECK".into());
        let e = parse(&check, CONF.as_bytes()).expect_err("CHECK without prevResult");
        assert_eq!(e.code, code::INVALID_CONFIG);
        let mut status = vars(&[("CNI_COMMAND", "STATUS")]);
        assert!(matches!(
            parse(&status, CONF.as_bytes()),
            Ok(Request::Call(_))
        ));
        status.insert("CNI_COMMAND".into(), "ADD".into());
        let e = parse(&status, CONF.as_bytes()).expect_err("ADD without its variables");
        assert_eq!(e.code, code::INVALID_ENV);
    }

    #[test]
    fn errors_are_written_in_the_configs_version() {
        assert_eq!(error_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(error_version(br#"{"cniVersion":"2.7.1","x":1}"#), "2.7.1");
        assert_eq!(error_version(br#"{"cniVersion":"drop table"}"#), "1.1.0");
        assert_eq!(error_version(b"garbage"), "1.1.0");
    }
}
