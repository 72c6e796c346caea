//! `weft attach TARGET` and `weft detach TARGET`: a thin client. TARGET (a network-namespace
//! path, a PID, or a Docker or Podman container) is resolved here to a namespace path and an
//! id; the daemon does the rest (the pods layer: the address, the veth into the namespace,
//! routes, in the daemon's own network namespace), so this works from any namespace that
//! reaches the API socket.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::client::{Daemon, DEFAULT_TIMEOUT};
use super::engine;
use crate::cli::{AttachArgs, DetachArgs};
use crate::daemon::api::{AttachRequest, Request, Response, MAX_REQUEST_LEN};
use crate::output::OutputFormat;

/// TARGET, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The id the address is kept under.
    id: String,
    /// The network namespace, as an absolute path.
    netns: PathBuf,
    /// A name for `weft pods` (a container's name, a named namespace's name).
    name: Option<String>,
    /// A Docker or Podman container's labels.
    labels: BTreeMap<String, String>,
}

pub fn run(args: &AttachArgs, format: OutputFormat) -> anyhow::Result<()> {
    let target = match &args.netns {
        // The older form: `weft attach --netns PATH ID`.
        Some(netns) => Target {
            id: args.id.clone().unwrap_or_else(|| args.target.clone()),
            netns: absolute(netns)?,
            name: None,
            labels: BTreeMap::new(),
        },
        None => resolve(&args.target, args.id.as_deref())?,
    };
    let request = Request::Attach(AttachRequest {
        container: target.id.clone(),
        netns: target
            .netns
            .to_str()
            .context("the namespace path is not UTF-8")?
            .to_string(),
        ifname: args.ifname.clone(),
        ip: args.ip,
        name: target.name.clone(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        namespace: args.namespace.clone(),
        ports: args.ports.clone(),
    });
    // The container's own labels (Docker's, Podman's) that Kubernetes label syntax takes,
    // under those given with --label, as long as the request stays within its bound.
    let mut request = request;
    if let Request::Attach(a) = &mut request {
        for (k, v) in &target.labels {
            if a.labels.contains_key(k)
                || a.labels.len() >= crate::daemon::api::MAX_LABELS
                || weft_mesh::policy::spec::label_key(k).is_err()
                || weft_mesh::policy::spec::label_value(v).is_err()
            {
                continue;
            }
            a.labels.insert(k.clone(), v.clone());
            if serde_json::to_vec(&Request::Attach(a.clone()))?.len() >= MAX_REQUEST_LEN {
                a.labels.remove(k);
            }
        }
    }
    if serde_json::to_vec(&request)?.len() >= MAX_REQUEST_LEN {
        bail!("the request is too long for the daemon (fewer or shorter labels)");
    }
    let daemon = Daemon::new(&args.api, DEFAULT_TIMEOUT);
    let allocation = match daemon.ask(request)? {
        Response::Allocation { allocation, .. } => allocation,
        _ => bail!("the daemon answered an attach request with something else"),
    };
    match format {
        OutputFormat::Text => println!("{}", allocation.address),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&allocation)?),
    }
    Ok(())
}

pub fn detach(args: &DetachArgs, format: OutputFormat) -> anyhow::Result<()> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => detach_id(&args.target)?,
    };
    let daemon = Daemon::new(&args.api, DEFAULT_TIMEOUT);
    let message = match daemon.ask(Request::Detach {
        container: id,
        ifname: args.ifname.clone(),
    })? {
        Response::Done { message, .. } => message,
        _ => bail!("the daemon answered a detach request with something else"),
    };
    match format {
        OutputFormat::Text => println!("{message}"),
        OutputFormat::Json => println!("{}", serde_json::json!({ "message": message })),
    }
    Ok(())
}

/// What TARGET names, for `weft attach`.
fn resolve(text: &str, id: Option<&str>) -> anyhow::Result<Target> {
    let id_or = |default: String| id.map_or(default, str::to_string);
    if let Some(pid) = as_pid(text) {
        let netns = pid_netns(pid);
        let ino = netns_inode(&netns).with_context(|| {
            format!("process {pid} (its network namespace {})", netns.display())
        })?;
        return Ok(Target {
            id: id_or(inode_id(ino)),
            netns,
            name: None,
            labels: BTreeMap::new(),
        });
    }
    if text.contains('/') {
        let netns = absolute(Path::new(text))?;
        let ino = netns_inode(&netns)?;
        return Ok(Target {
            id: id_or(inode_id(ino)),
            name: named_netns(&netns),
            netns,
            labels: BTreeMap::new(),
        });
    }
    match engine::lookup(text)? {
        Some(c) => {
            let Some(pid) = c.pid else {
                bail!("container {} ({}) is not running", c.name, short(&c.id));
            };
            Ok(Target {
                id: id_or(c.id),
                netns: pid_netns(pid),
                name: Some(c.name).filter(|n| !n.is_empty()),
                labels: c.labels,
            })
        }
        None => bail!(
            "{text:?} is not a network namespace path, a PID, or a container that Docker ({}) or Podman knows",
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| engine::DEFAULT_DOCKER_SOCKET.into())
        ),
    }
}

/// The id TARGET was attached under, for `weft detach`: as `weft attach` would make it, or
/// TARGET itself if it names nothing (an id as `weft pods` shows it).
fn detach_id(text: &str) -> anyhow::Result<String> {
    if let Some(pid) = as_pid(text) {
        let ino = netns_inode(&pid_netns(pid)).with_context(|| {
            format!("process {pid}: give the id it was attached under with --id")
        })?;
        return Ok(inode_id(ino));
    }
    if text.contains('/') {
        let ino = netns_inode(&absolute(Path::new(text))?)
            .context("give the id it was attached under with --id")?;
        return Ok(inode_id(ino));
    }
    Ok(match engine::lookup(text)? {
        Some(c) => c.id,
        None => text.to_string(),
    })
}

/// A PID: digits only, not 0.
fn as_pid(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&p| p > 0)
}

fn pid_netns(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The inode of the namespace at `path` (the same for every path to one namespace).
fn netns_inode(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(meta.ino())
}

/// The default id of a namespace given by path or PID.
fn inode_id(ino: u64) -> String {
    format!("netns-{ino}")
}

/// `NAME` of `/run/netns/NAME` (a namespace made by `ip netns add`).
fn named_netns(path: &Path) -> Option<String> {
    let name = path.strip_prefix("/run/netns").ok()?.to_str()?;
    (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
}

/// `path` made absolute for the daemon, which has another working directory (and, for
/// `/proc/self`, is another process).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the working directory")?
            .join(path)
    };
    for own in ["/proc/self", "/proc/thread-self"] {
        if let Ok(rest) = path.strip_prefix(own) {
            return Ok(Path::new(&format!("/proc/{}", std::process::id())).join(rest));
        }
    }
    Ok(path)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_told_apart() {
        assert_eq!(as_pid("1234"), Some(1234));
        for not in ["0", "", "12a", "-1", "99999999999999"] {
            assert_eq!(as_pid(not), None, "{not}");
        }
        assert_eq!(
            named_netns(Path::new("/run/netns/blue")).as_deref(),
            Some("blue")
        );
        assert_eq!(named_netns(Path::new("/proc/1/ns/net")), None);
        let me = std::process::id();
        assert_eq!(
            absolute(Path::new("/proc/self/ns/net")).expect("abs"),
            PathBuf::from(format!("/proc/{me}/ns/net"))
        );
        assert!(absolute(Path::new("x/y")).expect("abs").is_absolute());
        // By PID and by path, the same namespace gets the same id.
        let by_pid = resolve(&me.to_string(), None).expect("pid");
        let by_path = resolve("/proc/self/ns/net", None).expect("path");
        assert_eq!(by_pid.id, by_path.id);
        assert!(by_pid.id.starts_with("netns-"), "{}", by_pid.id);
        assert_eq!(detach_id(&me.to_string()).expect("detach id"), by_pid.id);
        assert_eq!(
            resolve("/proc/self/ns/net", Some("mine")).expect("id").id,
            "mine"
        );
        assert!(resolve("/no/such/namespace", None).is_err());
    }
}
