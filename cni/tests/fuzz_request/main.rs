//! Fuzz target for what weft-cni reads from outside: the `CNI_*` environment and stdin
//! (`request::parse`), and the results it reads back (`CniResult::from_value`). Any input
//! gives a request or an error with one of the spec's input codes, never a panic, and an
//! accepted request keeps the invariants the commands rely on.
//!
//! Runs a few thousand random inputs under `cargo test`; for a real fuzzing session:
//! `cargo bolero test --test fuzz_request -p weft-cni request` (or `results`).

use std::collections::BTreeMap;

use bolero::check;
use serde_json::{json, Map, Value};
use weft_cni::env::Command;
use weft_cni::request::{self, Request};
use weft_cni::types::CniResult;
use weft_cni::version::Version;

const VARS: [&str; 7] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "HOME",
];
const COMMANDS: [&str; 6] = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"];
const KEYS: [&str; 12] = [
    "cniVersion",
    "name",
    "type",
    "mtu",
    "dns",
    "ipam",
    "bridge",
    "apiSocket",
    "stateDir",
    "prevResult",
    "cni.dev/valid-attachments",
    "runtimeConfig",
];
const VERSIONS: [&str; 7] = [
    "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0", "2.0.0",
];

/// A JSON value of the kind `kind` made from `s`: strings, numbers, objects shaped like the
/// fields weft reads, or `s` itself when it is JSON.
fn value(kind: u8, s: &str) -> Value {
    match kind % 10 {
        0 => json!(s),
        1 => json!(s.len()),
        2 => json!(s.len() % 2 == 0),
        3 => Value::Null,
        4 => json!([s]),
        5 => json!({"type": s}),
        6 => json!({"nameservers": [s], "search": [s]}),
        7 => {
            json!({"ips": [{"address": s, "interface": s.len() % 3}], "interfaces": [{"name": s, "sandbox": s}],
                    "routes": [{"dst": s, "gw": s}]})
        }
        8 => json!([{"containerID": s, "ifname": s}]),
        _ => serde_json::from_str(s).unwrap_or(json!(s)),
    }
}

fn check_request(vars: &BTreeMap<String, String>, stdin: &[u8]) {
    let version = request::error_version(stdin);
    assert!(weft_cni::version::is_semver(&version), "{version}");
    match request::parse(vars, stdin) {
        Err(e) => {
            assert!([1, 2, 4, 5, 6, 7].contains(&e.code), "{e:?}");
            assert!(!e.msg.is_empty());
            assert_eq!(e.to_json(&version)["code"], e.code);
        }
        Ok(Request::Version { cni_version }) => {
            assert!(weft_cni::version::is_semver(&cni_version));
        }
        Ok(Request::Call(call)) => {
            let cmd = call.command();
            assert_ne!(cmd, Command::Version);
            assert_eq!(call.env.attachment.is_some(), cmd.has_attachment());
            if let Some(id) = &call.env.attachment {
                assert_eq!(id.key().matches('/').count(), 1, "{id:?}");
                assert!(id.key().len() <= 256);
            }
            if matches!(cmd, Command::Add | Command::Check) {
                assert!(call.env.netns.is_some());
            }
            let v = call.conf.version;
            match cmd {
                Command::Check => assert!(v >= Version::V0_4_0 && call.conf.prev_result.is_some()),
                Command::Gc | Command::Status => assert!(v >= Version::V1_1_0),
                _ => {}
            }
            if let Some(m) = call.conf.mtu {
                assert!((68..=65535).contains(&m));
            }
            assert!(call.conf.api_socket.is_absolute() && call.conf.state_dir.is_absolute());
            assert_eq!(call.stdin, stdin);
        }
    }
}

/// How one input is put together: which command, version, how many variables and config
/// keys are changed, whether there is an attachment, whether stdin is raw bytes.
type Plan = (u8, u8, u8, u8, bool, bool);

#[test]
fn request() {
    check!()
        .with_type::<(Plan, Vec<(u8, String)>, Vec<(u8, u8, String)>, Vec<u8>)>()
        .for_each(
            |((command, version, nvars, nchanges, attach, raw_stdin), vars, changes, raw)| {
                let mut env: BTreeMap<String, String> = BTreeMap::new();
                env.insert(
                    "CNI_COMMAND".into(),
                    COMMANDS[usize::from(*command) % COMMANDS.len()].into(),
                );
                if *attach {
                    env.insert("CNI_CONTAINERID".into(), "c1".into());
                    env.insert("CNI_NETNS".into(), "/run/netns/c1".into());
                    env.insert("CNI_IFNAME".into(), "eth0".into());
                    env.insert("CNI_PATH".into(), "/usr/lib/cni".into());
                }
                // A few things changed at a time, so that whole requests get through too.
                for (name, v) in vars.iter().take(usize::from(nvars % 3)) {
                    env.insert(VARS[usize::from(*name) % VARS.len()].into(), v.clone());
                }
                let stdin = if *raw_stdin {
                    raw.clone()
                } else {
                    let mut conf = Map::new();
                    conf.insert(
                        "cniVersion".into(),
                        json!(VERSIONS[usize::from(*version) % VERSIONS.len()]),
                    );
                    conf.insert("name".into(), json!("weft"));
                    conf.insert("type".into(), json!("weft"));
                    for (key, kind, s) in changes.iter().take(usize::from(nchanges % 3)) {
                        conf.insert(KEYS[usize::from(*key) % KEYS.len()].into(), value(*kind, s));
                    }
                    Value::Object(conf).to_string().into_bytes()
                };
                check_request(&env, &stdin);
            },
        );
}

/// An address-like string: valid IPv4/IPv6 prefixes and addresses most of the time, `s` else.
fn addr(kind: u8, a: u8, s: &str) -> String {
    match kind % 5 {
        0 => format!("10.{a}.{}.{}/{}", a / 3, a / 7, a % 33),
        1 => format!("192.0.2.{a}"),
        2 => format!("2001:db8::{a:x}/{}", a % 129),
        3 => format!("fd00::{a:x}"),
        _ => s.to_string(),
    }
}

#[test]
fn results() {
    check!()
        .with_type::<(Vec<(u8, u8, String)>, Vec<u8>)>()
        .for_each(|(items, raw)| {
            // Structured results (the usual shapes, with odd values), and raw bytes.
            let mut ips = Vec::new();
            let mut routes = Vec::new();
            let mut interfaces = Vec::new();
            for (kind, a, s) in items {
                match kind % 3 {
                    0 => ips.push(json!({"address": addr(*kind / 3, *a, s), "gateway": addr(*a, *kind, s),
                                         "interface": a % 4, "version": "4"})),
                    1 => routes.push(json!({"dst": addr(*kind / 3, *a, s), "gw": addr(*a, *kind, s),
                                            "mtu": a, "scope": kind})),
                    _ => interfaces.push(json!({"name": s, "mac": s, "sandbox": s, "mtu": a})),
                }
            }
            let structured = json!({"cniVersion": "1.1.0", "ips": ips, "routes": routes,
                                    "interfaces": interfaces, "dns": {"nameservers": ["10.0.0.1"]}});
            let parsed = serde_json::from_slice::<Value>(raw).ok();
            for value in std::iter::once(structured).chain(parsed) {
                if let Ok(result) = CniResult::from_value("prevResult", &value) {
                    // What is read writes in every version, and reads back the same.
                    for v in weft_cni::version::SUPPORTED {
                        let again = CniResult::from_value("again", &result.to_json(v))
                            .expect("a written result reads");
                        assert_eq!(again.ips, result.ips);
                        assert_eq!(again.dns, result.dns);
                        assert_eq!(again.interfaces.len(), result.interfaces.len());
                        assert_eq!(again.routes.len(), result.routes.len());
                    }
                }
            }
        });
}
