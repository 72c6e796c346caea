//! The client side of the daemon's API socket (line-delimited JSON, see the daemon's
//! `api.rs`): allocate, release, pods, status. Blocking, with timeouts: the plugin is a
//! short-lived process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::env::{AttachmentId, PodArgs};
use crate::error::{code, CniError};

/// How long one request may take. Allocation is answered locally (a node without space says
/// "try again later" at once), so this is only hit by a daemon that hangs.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Longest answer read (a `pods` list of a full node).
const MAX_ANSWER_LEN: u64 = 16 << 20;
/// Longest string field the daemon takes (its `MAX_FIELD_LEN`).
const MAX_FIELD_LEN: usize = 256;

/// Why a request did not get an answer the plugin can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaemonError {
    /// Nothing listens at the socket, or the connection failed: the daemon is down.
    #[error("the weft daemon is not reachable at {socket}: {reason}")]
    Unreachable { socket: PathBuf, reason: String },
    /// The daemon answered with an error.
    #[error("the weft daemon refused: {0}")]
    Refused(String),
    /// The answer is not what the request expects.
    #[error("the weft daemon's answer is not understood: {0}")]
    BadAnswer(String),
}

impl DaemonError {
    /// The CNI error: unreachable and "try again later" are code 11 (the runtime retries).
    pub fn to_cni(&self, what: &str) -> CniError {
        match self {
            DaemonError::Unreachable { socket, reason } => CniError::new(
                code::TRY_AGAIN_LATER,
                format!("{what}: the weft daemon is not reachable"),
                format!(
                    "{reason} (socket {}); start it with `weft launch` (or `systemctl start weft`), or set \"apiSocket\" in the CNI config",
                    socket.display()
                ),
            ),
            DaemonError::Refused(text) if text.contains("try again later") => {
                CniError::new(code::TRY_AGAIN_LATER, format!("{what}: the weft daemon cannot yet"), text.clone())
            }
            DaemonError::Refused(text) => {
                CniError::new(code::DAEMON_REFUSED, format!("{what}: the weft daemon refused"), text.clone())
            }
            DaemonError::BadAnswer(text) => CniError::new(
                code::DAEMON_REFUSED,
                format!("{what}: the weft daemon's answer is not understood"),
                format!("{text}; are weft and weft-cni the same version?"),
            ),
        }
    }
}

/// An address from the daemon (its `Allocation`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Allocation {
    pub container: String,
    /// The address with the prefix length of its block of the node's space.
    pub address: Ipv4Net,
    /// The bridge's address: next hop for the cluster range and the default route.
    pub gateway: Ipv4Addr,
    pub cluster_range: Ipv4Net,
    pub bridge: String,
    /// The tunnel's MTU.
    pub mtu: u32,
}

/// An attachment the daemon holds an address for (an entry of `pods`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pod {
    pub container: String,
    pub ifname: String,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub address: Option<Ipv4Net>,
}

/// What STATUS needs of the daemon's status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub address_space: Vec<String>,
    #[serde(default)]
    pub range: String,
    #[serde(default)]
    pub datapath: String,
}

/// The `allocate` request of a CNI attachment: the container id and interface key the
/// address; the rest is identity the daemon keeps for `weft pods`.
#[derive(Debug, Clone, Serialize)]
struct AllocateRequest<'a> {
    cmd: &'static str,
    container: &'a str,
    ifname: &'a str,
    network: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_name: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

/// A connection to the daemon's API socket.
#[derive(Debug, Clone)]
pub struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    pub fn new(socket: &Path) -> Daemon {
        Daemon {
            socket: socket.to_path_buf(),
        }
    }

    /// An address for `id` (the same one again while the daemon holds it).
    pub fn allocate(
        &self,
        id: &AttachmentId,
        network: &str,
        netns: Option<&Path>,
        pod: &PodArgs,
    ) -> Result<Allocation, DaemonError> {
        // The namespace path is for people reading `weft pods`; an odd one is left out
        // rather than failing the attachment.
        let netns = netns
            .and_then(|p| p.to_str())
            .filter(|p| p.len() <= MAX_FIELD_LEN && !p.chars().any(char::is_control));
        let request = AllocateRequest {
            cmd: "allocate",
            container: &id.container_id,
            ifname: &id.ifname,
            network,
            netns,
            pod_namespace: pod.namespace.as_deref(),
            pod_name: pod.name.as_deref(),
            labels: &pod.labels,
        };
        let answer = self.ask(
            &serde_json::to_value(request).map_err(|e| DaemonError::BadAnswer(e.to_string()))?,
        )?;
        take(answer, "allocation")
    }

    /// Gives back the address of `id`; not an error if it has none.
    pub fn release(&self, id: &AttachmentId) -> Result<(), DaemonError> {
        self.ask(&serde_json::json!({
            "cmd": "release",
            "container": id.container_id,
            "ifname": id.ifname,
        }))
        .map(drop)
    }

    /// The CNI attachments this node holds addresses for.
    pub fn pods(&self) -> Result<Vec<Pod>, DaemonError> {
        take(self.ask(&serde_json::json!({"cmd": "pods"}))?, "pods")
    }

    pub fn status(&self) -> Result<Status, DaemonError> {
        take(self.ask(&serde_json::json!({"cmd": "status"}))?, "status")
    }

    /// One request line, one answer line; an error answer becomes [`DaemonError::Refused`].
    fn ask(&self, request: &Value) -> Result<Value, DaemonError> {
        let unreachable = |reason: String| DaemonError::Unreachable {
            socket: self.socket.clone(),
            reason,
        };
        let stream = UnixStream::connect(&self.socket).map_err(|e| unreachable(e.to_string()))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| unreachable(e.to_string()))?;
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        (&stream)
            .write_all(&line)
            .map_err(|e| unreachable(format!("sending the request: {e}")))?;
        let mut answer = String::new();
        BufReader::new((&stream).take(MAX_ANSWER_LEN))
            .read_line(&mut answer)
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        if answer.is_empty() {
            return Err(unreachable(
                "the daemon closed the connection without answering".into(),
            ));
        }
        let value: Value =
            serde_json::from_str(&answer).map_err(|e| DaemonError::BadAnswer(e.to_string()))?;
        match value.get("ok") {
            Some(Value::Bool(true)) => Ok(value),
            Some(Value::Bool(false)) => Err(DaemonError::Refused(
                value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_string(),
            )),
            _ => Err(DaemonError::BadAnswer("no \"ok\" field".into())),
        }
    }
}

/// The field `key` of an answer, decoded.
fn take<T: serde::de::DeserializeOwned>(mut answer: Value, key: &str) -> Result<T, DaemonError> {
    let field = answer
        .get_mut(key)
        .map(Value::take)
        .ok_or_else(|| DaemonError::BadAnswer(format!("no {key:?} in the answer")))?;
    serde_json::from_value(field).map_err(|e| DaemonError::BadAnswer(format!("{key}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A daemon stand-in answering each connection's one line with `answer`, returning the
    /// requests it got.
    fn serve(
        answers: Vec<&'static str>,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        std::thread::JoinHandle<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weft.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            for answer in answers {
                let (stream, _) = listener.accept().expect("accept");
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).expect("read");
                got.push(line);
                (&stream).write_all(answer.as_bytes()).expect("write");
            }
            got
        });
        (dir, path, server)
    }

    #[test]
    fn requests_and_answers() {
        let (_dir, path, server) = serve(vec![
            "{\"ok\":true,\"allocation\":{\"container\":\"c1/eth0\",\"address\":\"10.32.0.5/12\",\"gateway\":\"10.32.0.0\",\"cluster_range\":\"10.32.0.0/12\",\"bridge\":\"weft\",\"mtu\":1420}}\n",
            "{\"ok\":false,\"error\":\"no address space reachable: try again later (x)\"}\n",
            "{\"ok\":false,\"error\":\"disk full\"}\n",
            "{\"ok\":true,\"pods\":[{\"container\":\"c1\",\"ifname\":\"eth0\",\"network\":\"weft\",\"address\":\"10.32.0.5/12\",\"labels\":{}}]}\n",
            "not json\n",
        ]);
        let d = Daemon::new(&path);
        let id = AttachmentId::new("c1", "eth0").expect("id");
        let pod = PodArgs {
            namespace: Some("default".into()),
            name: Some("web".into()),
            labels: BTreeMap::from([("app".into(), "web".into())]),
        };
        let a = d
            .allocate(&id, "weft", Some(Path::new("/run/netns/c1")), &pod)
            .expect("allocation");
        assert_eq!(a.address, "10.32.0.5/12".parse().expect("net"));
        let e = d
            .allocate(&id, "weft", None, &PodArgs::default())
            .expect_err("later");
        assert_eq!(e.to_cni("ADD").code, code::TRY_AGAIN_LATER);
        let e = d.release(&id).expect_err("refused");
        assert_eq!(e.to_cni("DEL").code, code::DAEMON_REFUSED);
        let pods = d.pods().expect("pods");
        assert_eq!(pods[0].ifname, "eth0");
        let e = d.status().expect_err("bad answer");
        assert!(matches!(e, DaemonError::BadAnswer(_)), "{e}");
        let got = server.join().expect("server");
        let first: Value = serde_json::from_str(&got[0]).expect("request");
        assert_eq!(
            first,
            serde_json::json!({"cmd": "allocate", "container": "c1", "ifname": "eth0",
                "network": "weft", "netns": "/run/netns/c1", "pod_namespace": "default",
                "pod_name": "web", "labels": {"app": "web"}})
        );
        let second: Value = serde_json::from_str(&got[1]).expect("request");
        assert!(
            second.get("labels").is_none() && second.get("netns").is_none(),
            "{second}"
        );
    }

    #[test]
    fn no_daemon_is_try_again_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Daemon::new(&dir.path().join("none.sock"));
        let e = d.status().expect_err("no daemon");
        assert!(matches!(e, DaemonError::Unreachable { .. }), "{e}");
        let cni = e.to_cni("ADD");
        assert_eq!(cni.code, code::TRY_AGAIN_LATER);
        assert!(cni.details.contains("weft launch"), "{cni}");
    }
}
