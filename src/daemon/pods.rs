//! The CNI plugin's attachments: who holds which address. A layer between the API socket and
//! the driver: it answers `pods`, turns the plugin's `allocate`/`release` (with `ifname`) into
//! the driver's allocate/release under the key `CONTAINER/IFNAME`, and keeps each
//! attachment's identity (network, namespace, pod namespace and name, labels) in
//! `STATE_DIR/pods.json` (0600). Everything else passes through untouched.
//!
//! The identity is written before the address is allocated, so no CNI allocation is ever
//! without it (GC finds every one); a failed allocation takes it out again.
//!
//! [`apply_releases`] applies the releases the plugin kept in the spool
//! (`STATE_DIR/cni-releases`, see `weft_cni::spool`) while the daemon was down: at start and
//! every [`SPOOL_PERIOD`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use weft_cni::env::AttachmentId;
use weft_cni::spool::Spool;

use super::api::{pod_key, PodAllocate, Query, Request, Response};
use super::state::write_atomically;

/// The file in the state directory.
pub const PODS_FILE: &str = "pods.json";
/// How often the release spool is looked at (besides at start).
pub const SPOOL_PERIOD: Duration = Duration::from_secs(10);
/// Biggest `pods.json` read (a full node's attachments with labels).
const MAX_FILE_LEN: u64 = 64 << 20;

/// One attachment, as `weft pods` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// `CNI_CONTAINERID`.
    pub container: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The address held for it; `None` while it is being allocated.
    #[serde(default)]
    pub address: Option<Ipv4Net>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Pod {
    fn key(&self) -> String {
        pod_key(&self.container, &self.ifname)
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    pods: Vec<Pod>,
}

/// The attachments by key, mirrored to `pods.json`.
#[derive(Debug)]
pub struct PodTable {
    path: PathBuf,
    pods: BTreeMap<String, Pod>,
}

impl PodTable {
    /// Reads `pods.json` in `state_dir` (missing: no attachments). A damaged file is set aside
    /// as `pods.json.damaged` with an error logged: the addresses stay held (they are in the
    /// IPAM state), only who holds them is lost.
    pub fn open(state_dir: &Path) -> anyhow::Result<PodTable> {
        let path = state_dir.join(PODS_FILE);
        let mut table = PodTable {
            path: path.clone(),
            pods: BTreeMap::new(),
        };
        let bytes = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE_LEN => None,
            Ok(_) => {
                Some(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match bytes.and_then(|b| serde_json::from_slice::<File>(&b).ok()) {
            Some(file) if file.version == 1 => {
                table.pods = file.pods.into_iter().map(|p| (p.key(), p)).collect();
            }
            _ => {
                let aside = state_dir.join(format!("{PODS_FILE}.damaged"));
                tracing::error!(file = %path.display(), moved_to = %aside.display(), "the pods file is damaged: pod identities are lost, their addresses stay held");
                std::fs::rename(&path, &aside)
                    .with_context(|| format!("moving {} aside", path.display()))?;
            }
        }
        Ok(table)
    }

    pub fn list(&self) -> Vec<Pod> {
        self.pods.values().cloned().collect()
    }

    fn save(&self) -> anyhow::Result<()> {
        let file = File {
            version: 1,
            pods: self.list(),
        };
        write_atomically(&self.path, &serde_json::to_vec_pretty(&file)?)
    }

    /// Sets the entry of `key`; on a failed write the table is as before.
    fn put(&mut self, key: String, pod: Option<Pod>) -> anyhow::Result<()> {
        let before = match &pod {
            Some(p) => self.pods.insert(key.clone(), p.clone()),
            None => self.pods.remove(&key),
        };
        if let Err(e) = self.save() {
            match before {
                Some(b) => self.pods.insert(key, b),
                None => self.pods.remove(&key),
            };
            return Err(e);
        }
        Ok(())
    }
}

/// Serves `queries` (from the API socket and the spool) until they end, passing on to `driver`
/// all but the CNI plugin's requests.
pub async fn serve(
    mut table: PodTable,
    mut queries: mpsc::Receiver<Query>,
    driver: mpsc::Sender<Query>,
) {
    while let Some(Query { request, reply }) = queries.recv().await {
        let answer = match request {
            Request::Pods => Response::Pods {
                ok: true,
                pods: table.list(),
            },
            Request::AllocatePod(p) => allocate(&mut table, p, &driver).await,
            Request::ReleasePod { container, ifname } => {
                release(&mut table, pod_key(&container, &ifname), &driver).await
            }
            other => {
                // The driver answers through `reply` itself.
                if let Err(mpsc::error::SendError(q)) = driver
                    .send(Query {
                        request: other,
                        reply,
                    })
                    .await
                {
                    let _ = q.reply.send(Response::error("the daemon is shutting down"));
                }
                continue;
            }
        };
        let _ = reply.send(answer);
    }
}

async fn ask(driver: &mpsc::Sender<Query>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if driver.send(Query { request, reply }).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    answer
        .await
        .unwrap_or_else(|_| Response::error("the daemon is shutting down"))
}

async fn allocate(table: &mut PodTable, p: PodAllocate, driver: &mpsc::Sender<Query>) -> Response {
    let key = p.key();
    let before = table.pods.get(&key).cloned();
    let mut pod = Pod {
        container: p.container,
        ifname: p.ifname,
        address: before.as_ref().and_then(|b| b.address),
        network: p.network,
        netns: p.netns,
        pod_namespace: p.pod_namespace,
        pod_name: p.pod_name,
        labels: p.labels,
    };
    if let Err(e) = table.put(key.clone(), Some(pod.clone())) {
        return Response::error(format!("recording the pod: {e:#}"));
    }
    let answer = ask(
        driver,
        Request::Allocate {
            container: key.clone(),
        },
    )
    .await;
    match &answer {
        Response::Allocation {
            ok: true,
            allocation,
        } => {
            pod.address = Some(allocation.address);
            info!(pod = %key, namespace = pod.pod_namespace.as_deref().unwrap_or("-"), name = pod.pod_name.as_deref().unwrap_or("-"), address = %allocation.address, "pod attached");
            if let Err(e) = table.put(key, Some(pod)) {
                warn!(error = %format!("{e:#}"), "recording the pod's address");
            }
        }
        _ => {
            if let Err(e) = table.put(key, before) {
                warn!(error = %format!("{e:#}"), "taking back the pod of a failed allocation");
            }
        }
    }
    answer
}

async fn release(table: &mut PodTable, key: String, driver: &mpsc::Sender<Query>) -> Response {
    let answer = ask(
        driver,
        Request::Release {
            container: key.clone(),
        },
    )
    .await;
    if matches!(answer, Response::Done { ok: true, .. }) && table.pods.contains_key(&key) {
        info!(pod = %key, "pod detached");
        if let Err(e) = table.put(key, None) {
            warn!(error = %format!("{e:#}"), "removing a released pod");
        }
    }
    answer
}

/// Applies the plugin's spooled releases through `pods` at start and every [`SPOOL_PERIOD`].
pub async fn apply_releases(state_dir: PathBuf, pods: mpsc::Sender<Query>) {
    let spool = Spool::new(&state_dir);
    let mut tick = tokio::time::interval(SPOOL_PERIOD);
    loop {
        tick.tick().await;
        match apply_once(&spool, &pods).await {
            Ok(0) => {}
            Ok(n) => info!(
                releases = n,
                "applied releases the CNI plugin kept while the daemon was down"
            ),
            Err(e) => {
                warn!(dir = %spool.dir().display(), error = %format!("{e:#}"), "the CNI release spool")
            }
        }
    }
}

/// One pass: every pending release, each removed once the daemon applied it.
pub async fn apply_once(spool: &Spool, pods: &mpsc::Sender<Query>) -> anyhow::Result<usize> {
    let Some(locked) = spool.try_lock()? else {
        return Ok(0);
    };
    let (pending, invalid) = locked.pending()?;
    for path in invalid {
        warn!(file = %path.display(), "a CNI release spool file is damaged; set aside");
    }
    let mut applied = 0;
    for id in pending {
        let AttachmentId {
            container_id,
            ifname,
        } = id.clone();
        match ask(
            pods,
            Request::ReleasePod {
                container: container_id,
                ifname,
            },
        )
        .await
        {
            Response::Done { ok: true, message } => {
                locked.done(&id)?;
                info!(pod = %id.key(), %message, "spooled release applied");
                applied += 1;
            }
            other => warn!(pod = %id.key(), answer = ?other, "a spooled release was refused; kept"),
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::Allocation;

    /// A driver stand-in: allocates 10.32.0.N/12 per new key, releases any; answers in order.
    fn driver() -> (mpsc::Sender<Query>, tokio::task::JoinHandle<Vec<Request>>) {
        let (tx, mut rx) = mpsc::channel::<Query>(8);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut held: BTreeMap<String, u8> = BTreeMap::new();
            while let Some(q) = rx.recv().await {
                let answer = match &q.request {
                    Request::Allocate { container } if container.starts_with("full") => {
                        Response::error("no address space reachable: try again later")
                    }
                    Request::Allocate { container } => {
                        let next = held.len() as u8 + 2;
                        let n = *held.entry(container.clone()).or_insert(next);
                        Response::Allocation {
                            ok: true,
                            allocation: Allocation {
                                container: container.clone(),
                                address: format!("10.32.0.{n}/12").parse().expect("net"),
                                gateway: "10.32.0.0".parse().expect("ip"),
                                cluster_range: "10.32.0.0/12".parse().expect("net"),
                                bridge: "weft".into(),
                                mtu: 1420,
                            },
                        }
                    }
                    Request::Release { container } => {
                        held.remove(container);
                        Response::Done {
                            ok: true,
                            message: format!("released {container}"),
                        }
                    }
                    _ => Response::Done {
                        ok: true,
                        message: "passed".into(),
                    },
                };
                seen.push(q.request);
                let _ = q.reply.send(answer);
            }
            seen
        });
        (tx, task)
    }

    fn pod_allocate(container: &str) -> PodAllocate {
        PodAllocate {
            container: container.into(),
            ifname: "eth0".into(),
            netns: Some("/run/netns/x".into()),
            network: Some("weft".into()),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            labels: BTreeMap::from([("app".into(), "web".into())]),
        }
    }

    async fn pods_of(api: &mpsc::Sender<Query>) -> Vec<Pod> {
        match ask(api, Request::Pods).await {
            Response::Pods { pods, .. } => pods,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn pods_are_kept_with_their_address_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (driver_tx, driver_task) = driver();
        let (api, rx) = mpsc::channel(8);
        let layer = tokio::spawn(serve(
            PodTable::open(dir.path()).expect("open"),
            rx,
            driver_tx,
        ));

        let a = match ask(&api, Request::AllocatePod(pod_allocate("c1"))).await {
            Response::Allocation { allocation, .. } => allocation,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.container, "c1/eth0");
        let e = ask(&api, Request::AllocatePod(pod_allocate("full1"))).await;
        assert!(matches!(e, Response::Error { .. }), "{e:?}");
        let pods = pods_of(&api).await;
        assert_eq!(pods.len(), 1, "a failed allocation leaves no pod: {pods:?}");
        assert_eq!(pods[0].address, Some(a.address));
        assert_eq!(pods[0].pod_name.as_deref(), Some("web-0"));
        assert_eq!(pods[0].labels["app"], "web");
        // Other requests pass through to the driver.
        assert!(matches!(
            ask(&api, Request::Peers).await,
            Response::Done { ok: true, .. }
        ));

        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(PODS_FILE))
                .expect("file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let reopened = PodTable::open(dir.path()).expect("reopen");
        assert_eq!(reopened.list(), pods);

        let r = ask(
            &api,
            Request::ReleasePod {
                container: "c1".into(),
                ifname: "eth0".into(),
            },
        )
        .await;
        assert!(matches!(r, Response::Done { ok: true, .. }), "{r:?}");
        assert!(pods_of(&api).await.is_empty());
        assert!(PodTable::open(dir.path())
            .expect("reopen")
            .list()
            .is_empty());
        drop(api);
        layer.await.expect("layer");
        let seen = driver_task.await.expect("driver");
        assert!(seen.contains(&Request::Allocate {
            container: "c1/eth0".into()
        }));
        assert!(seen.contains(&Request::Release {
            container: "c1/eth0".into()
        }));
    }

    #[tokio::test]
    async fn spooled_releases_are_applied_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (driver_tx, driver_task) = driver();
        let (api, rx) = mpsc::channel(8);
        let layer = tokio::spawn(serve(
            PodTable::open(dir.path()).expect("open"),
            rx,
            driver_tx,
        ));
        ask(&api, Request::AllocatePod(pod_allocate("c2"))).await;
        let spool = Spool::new(dir.path());
        let id = AttachmentId::new("c2", "eth0").expect("id");
        spool
            .lock(true)
            .expect("lock")
            .expect("dir")
            .add(&id)
            .expect("add");
        assert_eq!(apply_once(&spool, &api).await.expect("apply"), 1);
        assert!(pods_of(&api).await.is_empty());
        assert_eq!(
            apply_once(&spool, &api).await.expect("again"),
            0,
            "applied once"
        );
        assert_eq!(std::fs::read_dir(spool.dir()).expect("dir").count(), 0);
        drop(api);
        layer.await.expect("layer");
        driver_task.await.expect("driver");
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(PODS_FILE), b"{not json").expect("write");
        let t = PodTable::open(dir.path()).expect("open");
        assert!(t.list().is_empty());
        assert!(dir.path().join("pods.json.damaged").exists());
    }
}
