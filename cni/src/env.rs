//! The `CNI_*` environment variables: which are needed for which command, and what a valid
//! value is (spec section 2, "Parameters"). Pure: the variables come in as a map.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{CniError, Result};

/// Longest `CNI_CONTAINERID` taken: the daemon keys an address by `ID/IFNAME` in at most 256
/// bytes. Runtimes use 64 hex digits.
pub const MAX_CONTAINER_ID_LEN: usize = 200;
/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest `CNI_ARGS`, `CNI_NETNS` or `CNI_PATH` taken.
pub const MAX_VAR_LEN: usize = 8192;
/// Labels in `weft.labels`: at most this many, this long altogether (they travel to the daemon
/// in one request line).
pub const MAX_LABELS: usize = 64;
pub const MAX_LABELS_LEN: usize = 2048;
/// Longest pod namespace or name (a Kubernetes DNS subdomain).
pub const MAX_POD_NAME_LEN: usize = 253;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// ADD, DEL and CHECK act on one attachment.
    pub fn has_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// An attachment: `(CNI_CONTAINERID, CNI_IFNAME)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentId {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentId {
    /// Checks both parts as the spec (and libcni) define them.
    pub fn new(container_id: &str, ifname: &str) -> Result<AttachmentId> {
        valid_container_id(container_id)?;
        valid_ifname(ifname)?;
        Ok(AttachmentId {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// The name weft gives the attachment: its address is held under it, and the host end of
    /// its veth is named after it. `/` is in neither part, so the key is unambiguous.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }
}

/// Pod identity from `CNI_ARGS`: `K8S_POD_NAMESPACE`, `K8S_POD_NAME` and
/// `weft.labels=k1=v1,k2=v2`. Other keys are ignored (runtimes pass many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The parsed environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// Set for ADD, DEL and CHECK.
    pub attachment: Option<AttachmentId>,
    /// `CNI_NETNS`: required for ADD and CHECK, optional (may be gone) for DEL.
    pub netns: Option<PathBuf>,
    pub pod: PodArgs,
    /// `CNI_PATH`, split on `:`; empty entries dropped.
    pub path: Vec<PathBuf>,
}

/// Reads the variables in `vars` (only the `CNI_*` ones matter).
pub fn parse(vars: &BTreeMap<String, String>) -> Result<Env> {
    let get = |name: &str| vars.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let command = match get("CNI_COMMAND") {
        None => return Err(missing(&["CNI_COMMAND"])),
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("GC") => Command::Gc,
        Some("STATUS") => Command::Status,
        Some("VERSION") => Command::Version,
        Some(other) => {
            return Err(CniError::env(
                "invalid CNI_COMMAND",
                format!(
                    "{:?}: expected ADD, DEL, CHECK, GC, STATUS or VERSION",
                    clip(other)
                ),
            ))
        }
    };
    let mut needed = Vec::new();
    if command.has_attachment() {
        needed.extend(["CNI_CONTAINERID", "CNI_IFNAME"]);
    }
    if matches!(command, Command::Add | Command::Check) {
        needed.push("CNI_NETNS");
    }
    if command == Command::Gc {
        needed.push("CNI_PATH");
    }
    let absent: Vec<&str> = needed.into_iter().filter(|n| get(n).is_none()).collect();
    if !absent.is_empty() {
        return Err(missing(&absent));
    }
    for name in ["CNI_ARGS", "CNI_NETNS", "CNI_PATH"] {
        if get(name).is_some_and(|v| v.len() > MAX_VAR_LEN) {
            return Err(CniError::env(
                format!("invalid {name}"),
                format!("longer than {MAX_VAR_LEN} bytes"),
            ));
        }
    }
    let attachment = if command.has_attachment() {
        Some(AttachmentId::new(
            get("CNI_CONTAINERID").unwrap_or_default(),
            get("CNI_IFNAME").unwrap_or_default(),
        )?)
    } else {
        None
    };
    let netns = match get("CNI_NETNS") {
        Some(ns) if command.has_attachment() => {
            if !ns.starts_with('/') || ns.contains('\0') {
                return Err(CniError::env(
                    "invalid CNI_NETNS",
                    format!(
                        "{:?} is not an absolute path to a network namespace",
                        clip(ns)
                    ),
                ));
            }
            Some(PathBuf::from(ns))
        }
        _ => None,
    };
    let pod = if command.has_attachment() {
        parse_args(get("CNI_ARGS").unwrap_or_default())?
    } else {
        PodArgs::default()
    };
    let path = get("CNI_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    Ok(Env {
        command,
        attachment,
        netns,
        pod,
        path,
    })
}

fn missing(names: &[&str]) -> CniError {
    CniError::env(
        format!("required env variables [{}] missing", names.join(",")),
        "the container runtime must set them (CNI spec, section 2)",
    )
}

/// At most 64 characters of `s`, for messages.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as the spec says; plus a length bound.
fn valid_container_id(id: &str) -> Result<()> {
    let bad =
        |why: &str| CniError::env("invalid CNI_CONTAINERID", format!("{:?}: {why}", clip(id)));
    let mut bytes = id.bytes();
    match bytes.next() {
        None => return Err(bad("empty")),
        Some(b) if !b.is_ascii_alphanumeric() => {
            return Err(bad("must start with a letter or digit"))
        }
        _ => {}
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(bad("only letters, digits, '_', '.' and '-' are allowed"));
    }
    if id.len() > MAX_CONTAINER_ID_LEN {
        return Err(bad(&format!("longer than {MAX_CONTAINER_ID_LEN} bytes")));
    }
    Ok(())
}

/// An interface name the kernel takes: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace (libcni's rule), printable ASCII.
fn valid_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(CniError::env(
            "invalid CNI_IFNAME",
            format!(
                "{:?}: 1 to {MAX_IFNAME_LEN} printable characters, not '.' or '..', no '/', ':' or whitespace",
                clip(name)
            ),
        ))
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. The value is everything after the first `=`.
pub fn parse_args(text: &str) -> Result<PodArgs> {
    let bad = |why: String| CniError::env("invalid CNI_ARGS", why);
    let mut pod = PodArgs::default();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(bad(format!("{:?} is not KEY=VALUE", clip(pair))));
        };
        if key.is_empty() {
            return Err(bad(format!("{:?} has an empty key", clip(pair))));
        }
        match key {
            "K8S_POD_NAMESPACE" => pod.namespace = Some(pod_name(key, value)?),
            "K8S_POD_NAME" => pod.name = Some(pod_name(key, value)?),
            "weft.labels" => pod.labels = parse_labels(value)?,
            _ => {}
        }
    }
    Ok(pod)
}

fn pod_name(key: &str, value: &str) -> Result<String> {
    if value.is_empty()
        || value.len() > MAX_POD_NAME_LEN
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(CniError::env(
            "invalid CNI_ARGS",
            format!(
                "{key}={:?}: 1 to {MAX_POD_NAME_LEN} printable characters",
                clip(value)
            ),
        ));
    }
    Ok(value.to_string())
}

/// `k1=v1,k2=v2` with Kubernetes label syntax: a key is an optional DNS-subdomain prefix and
/// `/`, then a name of at most 63 characters; a value is empty or at most 63 characters;
/// names and values start and end with a letter or digit and hold `-`, `_` and `.` between.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    let bad = |why: String| CniError::env("invalid CNI_ARGS", format!("weft.labels: {why}"));
    if text.len() > MAX_LABELS_LEN {
        return Err(bad(format!("longer than {MAX_LABELS_LEN} bytes")));
    }
    let mut labels = BTreeMap::new();
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(bad(format!("{:?} is not KEY=VALUE", clip(item))));
        };
        if !label_key(key) {
            return Err(bad(format!("{:?} is not a label key", clip(key))));
        }
        if !(value.is_empty() || label_name(value)) {
            return Err(bad(format!("{:?} is not a label value", clip(value))));
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(bad(format!("{:?} given twice", clip(key))));
        }
        if labels.len() > MAX_LABELS {
            return Err(bad(format!("more than {MAX_LABELS} labels")));
        }
    }
    Ok(labels)
}

fn label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part.len() <= 63
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                })
                && label_name(name)
        }
        None => label_name(key),
    }
}

fn label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_vars() -> BTreeMap<String, String> {
        vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni::/opt/cni/bin"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;weft.labels=app=web,tier=front",
            ),
        ])
    }

    #[test]
    fn an_add_environment_parses() {
        let env = parse(&add_vars()).expect("parse");
        assert_eq!(env.command, Command::Add);
        let id = env.attachment.expect("attachment");
        assert_eq!(id.key(), "abc123/eth0");
        assert_eq!(env.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(
            env.path,
            vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
        );
        assert_eq!(env.pod.namespace.as_deref(), Some("default"));
        assert_eq!(env.pod.name.as_deref(), Some("web-0"));
        assert_eq!(
            env.pod.labels,
            BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("tier".to_string(), "front".to_string())
            ])
        );
    }

    #[test]
    fn each_command_needs_its_variables() {
        let only = |cmd: &str| vars(&[("CNI_COMMAND", cmd)]);
        assert!(parse(&only("VERSION")).is_ok());
        assert!(parse(&only("STATUS")).is_ok());
        let e = parse(&only("GC")).expect_err("GC without CNI_PATH");
        assert!(e.msg.contains("CNI_PATH"), "{e}");
        let e = parse(&only("ADD")).expect_err("ADD alone");
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_CONTAINERID")
                && e.msg.contains("CNI_IFNAME")
                && e.msg.contains("CNI_NETNS"),
            "{e}"
        );
        // DEL may come without a namespace (it is gone).
        let mut del = add_vars();
        del.insert("CNI_COMMAND".into(), "DEL".into());
        del.remove("CNI_NETNS");
        let env = parse(&del).expect("DEL without CNI_NETNS");
        assert_eq!(env.netns, None);
        let e = parse(&vars(&[])).expect_err("nothing");
        assert!(e.msg.contains("CNI_COMMAND"), "{e}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("CNI_COMMAND", "add"),
            ("CNI_COMMAND", "RESET"),
            ("CNI_CONTAINERID", "-abc"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "eth0:1"),
            ("CNI_IFNAME", "a-name-far-too-long"),
            ("CNI_IFNAME", ".."),
            ("CNI_IFNAME", "eth 0"),
            ("CNI_NETNS", "relative/ns"),
            ("CNI_ARGS", "K8S_POD_NAME"),
            ("CNI_ARGS", "=x"),
            ("CNI_ARGS", "K8S_POD_NAME=a b"),
            ("CNI_ARGS", "weft.labels=app"),
            ("CNI_ARGS", "weft.labels=-app=web"),
            ("CNI_ARGS", "weft.labels=app=web,app=db"),
            ("CNI_ARGS", "weft.labels=app=we b"),
        ] {
            let mut v = add_vars();
            v.insert(name.into(), value.into());
            let e = parse(&v).expect_err(&format!("{name}={value}"));
            assert_eq!(e.code, code::INVALID_ENV, "{name}={value}: {e}");
            assert!(e.msg.contains(name), "{name}={value}: {e}");
        }
        let mut long = add_vars();
        long.insert(
            "CNI_CONTAINERID".into(),
            "a".repeat(MAX_CONTAINER_ID_LEN + 1),
        );
        assert!(parse(&long).is_err());
    }

    #[test]
    fn labels_follow_kubernetes_syntax() {
        let ok = parse_labels("app.kubernetes.io/name=web,v=,a_b=c.d").expect("labels");
        assert_eq!(ok.len(), 3);
        assert_eq!(ok["v"], "");
        for bad in [
            "Bad.Prefix/x=y",
            "/x=y",
            "x/=y",
            "a=b-",
            &format!("{}=v", "k".repeat(64)),
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        assert!(parse_labels(&many.join(",")).is_err());
    }
}
