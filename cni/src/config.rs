//! The plugin configuration on stdin (spec section 1 and 3): the protocol's keys and weft's own.
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "weft", "type": "weft",
//!  "mtu": 1400, "dns": {"nameservers": ["10.96.0.10"]},
//!  "ipam": {"type": "host-local", ...},
//!  "apiSocket": "/run/weft/weft.sock", "stateDir": "/var/lib/weft"}
//! ```
//!
//! A body that is not JSON, or a known key of the wrong JSON type, is a decode error (6); a
//! decoded value that makes no sense is an invalid config (7); a key weft does not support
//! with a value it cannot honour is error 2. Unknown keys are ignored: runtimes add their own.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::env::{clip, AttachmentId};
use crate::error::{code, CniError, Result};
use crate::types::{CniResult, Dns};
use crate::version::Version;

/// Where the daemon's API socket is unless `apiSocket` says otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";
/// The daemon's state directory unless `stateDir` says otherwise; releases the daemon could not
/// take wait in its `cni-releases` directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// The bridge the daemon keeps; the only one weft-cni attaches to.
pub const BRIDGE: &str = "weft";

/// The file name `weft launch --cni-conf-dir` writes. Runtimes take the first file of the
/// directory in name order as the default network.
pub const CONFLIST_FILE: &str = "10-weft.conflist";

/// The network config (conflist) of the `weft` network for the daemon at `api_socket` with
/// state in `state_dir`: what `weft launch --cni-conf-dir` writes.
pub fn conflist(api_socket: &Path, state_dir: &Path) -> Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "name": "weft",
        "plugins": [{
            "type": "weft",
            "apiSocket": api_socket,
            "stateDir": state_dir,
        }],
    })
}

/// A plugin configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub version: Version,
    /// The network's name (`name`).
    pub name: String,
    /// `type` (the binary's name, normally `weft`).
    pub plugin_type: String,
    /// MTU of both veth ends; the daemon's (the tunnel's) if absent.
    pub mtu: Option<u32>,
    pub dns: Dns,
    /// The delegated IPAM plugin (`ipam.type`); `None` for weft's own IPAM.
    pub ipam: Option<String>,
    pub api_socket: PathBuf,
    pub state_dir: PathBuf,
    pub prev_result: Option<CniResult>,
    /// GC: `cni.dev/valid-attachments` (or libcni's alias `cni.dev/attachments`). `None` when
    /// absent: then GC releases nothing.
    pub valid_attachments: Option<Vec<AttachmentId>>,
}

/// The body as JSON, or error 6.
pub fn parse_json(stdin: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CniError::decode(
            "error decoding the network config",
            "expected a JSON object on stdin",
        )),
        Err(e) => Err(CniError::decode(
            "error decoding the network config",
            e.to_string(),
        )),
    }
}

/// The config's `cniVersion`. Absent means 0.1.0, which weft does not speak (error 1).
pub fn version_of(map: &Map<String, Value>) -> Result<Version> {
    match map.get("cniVersion") {
        None => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            "the config has no cniVersion (0.1.0 assumed); weft-cni supports 0.3.0 to 1.1.0",
        )),
        Some(Value::String(v)) => Version::parse(v),
        Some(_) => Err(CniError::decode(
            "error decoding the network config",
            "cniVersion is not a string",
        )),
    }
}

/// A known key: absent (or `null`) is `None`; the wrong JSON type is error 6 naming the key.
fn field<T: DeserializeOwned>(map: &Map<String, Value>, key: &str) -> Result<Option<T>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            CniError::decode("error decoding the network config", format!("{key:?}: {e}"))
        }),
    }
}

fn network_name(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name.len() <= 255;
    if ok {
        Ok(())
    } else {
        Err(CniError::config(
            "invalid network name",
            format!(
                "{:?}: a letter or digit, then letters, digits, '_', '.' or '-'",
                clip(name)
            ),
        ))
    }
}

fn absolute(key: &str, path: String) -> Result<PathBuf> {
    if path.starts_with('/') && !path.contains('\0') && path.len() <= 4096 {
        Ok(PathBuf::from(path))
    } else {
        Err(CniError::config(
            format!("invalid {key}"),
            format!("{:?} is not an absolute path", clip(&path)),
        ))
    }
}

/// Checks the whole configuration (the version was checked by [`version_of`]).
pub fn parse(map: &Map<String, Value>, version: Version) -> Result<NetConf> {
    let name: String = field(map, "name")?
        .ok_or_else(|| CniError::config("missing network name", "the config needs \"name\""))?;
    network_name(&name)?;
    let plugin_type: String = field(map, "type")?
        .ok_or_else(|| CniError::config("missing plugin type", "the config needs \"type\""))?;
    let mtu: Option<u32> = field(map, "mtu")?;
    if let Some(m) = mtu {
        if !(68..=65535).contains(&m) {
            return Err(CniError::config(
                "invalid mtu",
                format!("{m}: must be 68 to 65535"),
            ));
        }
    }
    let dns: Dns = field(map, "dns")?.unwrap_or_default();
    if let Some(bad) = dns
        .nameservers
        .iter()
        .find(|n| n.parse::<std::net::IpAddr>().is_err())
    {
        return Err(CniError::config(
            "invalid dns",
            format!("nameserver {:?} is not an IP address", clip(bad)),
        ));
    }
    let ipam = match map.get("ipam") {
        None | Some(Value::Null) => None,
        Some(Value::Object(ipam)) => match ipam.get("type") {
            // `"ipam": {}` (some tools write it) means weft's own.
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => {
                if t.is_empty() || t.contains('/') || t.contains('\0') || t == "." || t == ".." {
                    return Err(CniError::config(
                        "invalid ipam type",
                        format!("{:?} is not a plugin name", clip(t)),
                    ));
                }
                Some(t.clone())
            }
            Some(_) => {
                return Err(CniError::decode(
                    "error decoding the network config",
                    "\"ipam\": \"type\" is not a string",
                ))
            }
        },
        Some(_) => {
            return Err(CniError::decode(
                "error decoding the network config",
                "\"ipam\" is not an object",
            ))
        }
    };
    if let Some(bridge) = field::<String>(map, "bridge")? {
        if bridge != BRIDGE {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field \"bridge\": {:?}", clip(&bridge)),
                format!("weft-cni attaches pods to the daemon's bridge {BRIDGE:?}; remove \"bridge\" from the config"),
            ));
        }
    }
    let api_socket = match field::<String>(map, "apiSocket")? {
        Some(p) => absolute("apiSocket", p)?,
        None => PathBuf::from(DEFAULT_API_SOCKET),
    };
    let state_dir = match field::<String>(map, "stateDir")? {
        Some(p) => absolute("stateDir", p)?,
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let prev_result = match map.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v) => Some(CniResult::from_value("prevResult", v)?),
    };
    let valid_attachments = match map
        .get("cni.dev/valid-attachments")
        .or_else(|| map.get("cni.dev/attachments"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(attachments(v)?),
    };
    Ok(NetConf {
        version,
        name,
        plugin_type,
        mtu,
        dns,
        ipam,
        api_socket,
        state_dir,
        prev_result,
        valid_attachments,
    })
}

/// `[{"containerID": ..., "ifname": ...}]`. An entry that could never be an attachment (bad
/// characters) names nothing weft holds; it is kept out rather than refused, so one odd
/// entry does not stop the collection of the rest.
fn attachments(v: &Value) -> Result<Vec<AttachmentId>> {
    #[derive(serde::Deserialize)]
    struct Wire {
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
    }
    let list: Vec<Wire> = serde_json::from_value(v.clone()).map_err(|e| {
        CniError::decode(
            "error decoding the network config",
            format!("\"cni.dev/valid-attachments\": {e}"),
        )
    })?;
    Ok(list
        .into_iter()
        .filter_map(|w| AttachmentId::new(&w.container_id, &w.ifname).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conf(v: Value) -> Result<NetConf> {
        let map = parse_json(v.to_string().as_bytes())?;
        let version = version_of(&map)?;
        parse(&map, version)
    }

    #[test]
    fn a_full_config_parses() {
        let c = conf(json!({
            "cniVersion": "1.0.0", "name": "weft-net", "type": "weft", "mtu": 1400,
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]},
            "ipam": {"type": "host-local", "ranges": []},
            "apiSocket": "/tmp/x/weft.sock", "stateDir": "/tmp/x/state",
            "someRuntimeKey": {"anything": true},
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/16", "interface": 0}],
                           "interfaces": [{"name": "eth0"}]},
        }))
        .expect("config");
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.name, "weft-net");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ipam.as_deref(), Some("host-local"));
        assert_eq!(c.api_socket, PathBuf::from("/tmp/x/weft.sock"));
        assert_eq!(c.prev_result.expect("prevResult").ips.len(), 1);
        let d = conf(json!({"cniVersion": "0.3.1", "name": "n", "type": "weft", "ipam": {}}))
            .expect("minimal");
        assert_eq!(d.ipam, None);
        assert_eq!(d.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert_eq!(d.valid_attachments, None);
    }

    #[test]
    fn valid_attachments_parse_and_odd_entries_are_skipped() {
        let c = conf(json!({"cniVersion": "1.1.0", "name": "n", "type": "weft",
            "cni.dev/valid-attachments": [
                {"containerID": "c1", "ifname": "eth0"},
                {"containerID": "bad id", "ifname": "eth0"}]}))
        .expect("config");
        assert_eq!(
            c.valid_attachments,
            Some(vec![AttachmentId::new("c1", "eth0").expect("id")])
        );
    }

    #[test]
    fn each_kind_of_bad_config_has_its_code() {
        use code::*;
        for (stdin, want) in [
            ("", DECODE),
            ("not json", DECODE),
            ("[1,2]", DECODE),
            (r#"{"name":"n","type":"weft"}"#, INCOMPATIBLE_VERSION),
            (
                r#"{"cniVersion":"0.2.0","name":"n","type":"weft"}"#,
                INCOMPATIBLE_VERSION,
            ),
            (r#"{"cniVersion":1,"name":"n","type":"weft"}"#, DECODE),
            (r#"{"cniVersion":"1.0.0","type":"weft"}"#, INVALID_CONFIG),
            (
                r#"{"cniVersion":"1.0.0","name":"-n","type":"weft"}"#,
                INVALID_CONFIG,
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, INVALID_CONFIG),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":"big"}"#,
                DECODE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":20}"#,
                INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","dns":{"nameservers":["x"]}}"#,
                INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"../x"}}"#,
                INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":"host-local"}"#,
                DECODE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","bridge":"cni0"}"#,
                UNSUPPORTED_FIELD,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","apiSocket":"rel/x"}"#,
                INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","prevResult":{"ips":[{"address":"x"}]}}"#,
                DECODE,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"weft","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
                DECODE,
            ),
        ] {
            let result = parse_json(stdin.as_bytes())
                .and_then(|map| version_of(&map).and_then(|v| parse(&map, v)));
            let e = result.expect_err(stdin);
            assert_eq!(e.code, want, "{stdin}: {e}");
        }
        let e = conf(json!({"cniVersion": "1.0.0", "name": "n", "type": "weft", "bridge": "cni0"}))
            .expect_err("bridge");
        assert!(e.msg.contains("bridge") && e.msg.contains("cni0"), "{e}");
    }
}
