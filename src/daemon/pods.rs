//! The CNI plugin's attachments: who holds which address. A layer between the API socket and
//! the driver: it answers `pods`, turns the plugin's `allocate`/`release` (with `ifname`) into
//! the driver's allocate/release under the key `CONTAINER/IFNAME`, and keeps each
//! attachment's identity (network, namespace, pod namespace and name, labels) in
//! `STATE_DIR/pods.json` (0600). Everything else passes through untouched.
//!
//! The identity is written before the address is allocated, so no CNI allocation is ever
//! without it (GC finds every one); a failed allocation takes it out again.
//!
//! `weft attach` and `weft detach` are answered here too: the daemon plugs the container's
//! namespace into its bridge itself (`weft_mesh::attach`, the code the CNI plugin uses), in
//! its own network namespace, so the CLI only needs the API socket. Such pods are kept under
//! `CONTAINER/IFNAME` like the plugin's, with their container name and labels; a failed
//! attach of a new pod gives its address back and leaves no pod and no veth. The addresses
//! of pods detached lately are remembered ([`MAX_RECENT`]): the same container attached
//! again gets its old address back if it is still free.
//!
//! Docker's endpoints (weft's Docker plugin, `docker::endpoints`) are pods of source `docker`
//! here too, under keys of their own (`docker-<16 hex>/docker`), with their endpoint id;
//! `weft attach`/`detach` leave them (and the CNI plugin's) alone.
//!
//! [`apply_releases`] applies the releases the plugin kept in the spool
//! (`STATE_DIR/cni-releases`, see `weft_cni::spool`) while the daemon was down: at start and
//! every [`SPOOL_PERIOD`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use weft_cni::env::AttachmentId;
use weft_cni::spool::Spool;
use weft_mesh::attach::Attachment;

use super::api::{pod_key, Allocation, AttachRequest, PodAllocate, Query, Request, Response};
use super::state::write_atomically;

/// The file in the state directory.
pub const PODS_FILE: &str = "pods.json";
/// How often the release spool is looked at (besides at start).
pub const SPOOL_PERIOD: Duration = Duration::from_secs(10);
/// Biggest `pods.json` read (a full node's attachments with labels).
const MAX_FILE_LEN: u64 = 64 << 20;
/// Addresses of detached `weft attach` pods remembered, to give back to the same container.
pub const MAX_RECENT: usize = 1024;

/// Who made an attachment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The CNI plugin (it makes and removes the veth).
    #[default]
    Cni,
    /// `weft attach` (the daemon made the veth; `weft detach` removes it).
    Attach,
    /// Docker, through weft's network and IPAM plugin (`weft launch --docker-plugin`): the
    /// daemon made the veth, Docker moved its container end; Docker's DeleteEndpoint removes
    /// it.
    Docker,
}

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
    /// The container's name (Docker's, Podman's) when `weft attach` was given one, or when
    /// the Docker plugin learned it from Docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub source: Source,
    /// Named ports (`weft attach --port`), for network policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<weft_mesh::policy::NamedPort>,
    /// Docker's endpoint id (source `docker`, once Docker created the endpoint for the
    /// address; `network` is then Docker's network id and `netns` the sandbox's path as
    /// dockerd sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl Pod {
    pub(crate) fn key(&self) -> String {
        pod_key(&self.container, &self.ifname)
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    pods: Vec<Pod>,
    /// Detached `weft attach` pods' last addresses, oldest first.
    #[serde(default)]
    recent: Vec<(String, Ipv4Addr)>,
}

/// The attachments by key, mirrored to `pods.json`.
#[derive(Debug)]
pub struct PodTable {
    path: PathBuf,
    pods: BTreeMap<String, Pod>,
    recent: VecDeque<(String, Ipv4Addr)>,
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
            recent: VecDeque::new(),
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
                table.recent = file.recent.into_iter().take(MAX_RECENT).collect();
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
            recent: self.recent.iter().cloned().collect(),
        };
        write_atomically(&self.path, &serde_json::to_vec_pretty(&file)?)
    }

    /// The entry of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Pod> {
        self.pods.get(key)
    }

    /// The first entry `wanted` picks.
    pub(crate) fn find(&self, wanted: impl Fn(&Pod) -> bool) -> Option<&Pod> {
        self.pods.values().find(|p| wanted(p))
    }

    /// Sets the entry of `key`; on a failed write the table is as before.
    pub(crate) fn put(&mut self, key: String, pod: Option<Pod>) -> anyhow::Result<()> {
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

    /// The address `key` had when it was last detached.
    fn recent(&self, key: &str) -> Option<Ipv4Addr> {
        self.recent.iter().find(|(k, _)| k == key).map(|(_, a)| *a)
    }

    /// Remembers (`Some`) or forgets `key`'s last address; saved with the next [`put`].
    ///
    /// [`put`]: PodTable::put
    fn set_recent(&mut self, key: &str, address: Option<Ipv4Addr>) {
        self.recent.retain(|(k, _)| k != key);
        if let Some(a) = address {
            if self.recent.len() >= MAX_RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((key.to_string(), a));
        }
    }
}

/// What plugs a container's namespace into the bridge and out again: the kernel
/// ([`Kernel`], `weft_mesh::attach` in the daemon's network namespace), or a stand-in.
pub trait Plumbing: Send + Sync + 'static {
    fn attach(&self, spec: &Attachment) -> impl Future<Output = weft_mesh::Result<()>> + Send;
    /// Removes the veth of attachment `key`; not an error if there is none.
    fn detach(&self, key: &str) -> impl Future<Output = weft_mesh::Result<()>> + Send;
    /// A veth for attachment `key` whose container end stays here for Docker to move
    /// (`weft_mesh::attach::prepare`); the container end's MAC address.
    fn prepare(
        &self,
        key: &str,
        bridge: &str,
        mtu: u32,
    ) -> impl Future<Output = weft_mesh::Result<Option<[u8; 6]>>> + Send;
    /// The bridge's address (this node's gateway) with its prefix, if it has one yet.
    fn gateway(
        &self,
        bridge: &str,
    ) -> impl Future<Output = weft_mesh::Result<Option<Ipv4Net>>> + Send;
}

/// The real thing: veths, addresses and routes over rtnetlink.
#[derive(Debug, Clone, Copy)]
pub struct Kernel;

impl Plumbing for Kernel {
    async fn attach(&self, spec: &Attachment) -> weft_mesh::Result<()> {
        weft_mesh::attach::attach(spec).await.map(drop)
    }

    async fn detach(&self, key: &str) -> weft_mesh::Result<()> {
        weft_mesh::attach::detach(key).await
    }

    async fn prepare(
        &self,
        key: &str,
        bridge: &str,
        mtu: u32,
    ) -> weft_mesh::Result<Option<[u8; 6]>> {
        weft_mesh::attach::prepare(key, bridge, mtu)
            .await
            .map(|link| link.mac)
    }

    async fn gateway(&self, bridge: &str) -> weft_mesh::Result<Option<Ipv4Net>> {
        Ok(weft_mesh::attach::bridge_gateway(bridge)
            .await?
            .map(|(gateway, _mtu)| gateway))
    }
}

/// Serves `queries` (from the API socket and the spool) until they end, passing on to `driver`
/// all but the pod requests; `weft attach` and `weft detach` plug containers in and out
/// with `plumbing`.
pub async fn serve(
    mut table: PodTable,
    mut queries: mpsc::Receiver<Query>,
    driver: mpsc::Sender<Query>,
    plumbing: impl Plumbing,
) {
    // The node learns this node's pods (for network policy) at start and on every change.
    let mut published = None;
    publish_pods(&table, &mut published, &driver).await;
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
            Request::Attach(a) => attach(&mut table, a, &driver, &plumbing).await,
            Request::Detach { container, ifname } => {
                detach(&mut table, pod_key(&container, &ifname), &driver, &plumbing).await
            }
            Request::Docker(call) => {
                super::docker::endpoints::handle(&mut table, call, &driver, &plumbing).await
            }
            Request::DockerNames(names) => {
                super::docker::endpoints::learn_names(&mut table, &names);
                Response::Done {
                    ok: true,
                    message: format!("{} names", names.len()),
                }
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
        publish_pods(&table, &mut published, &driver).await;
    }
}

/// Tells the node this node's pod identities when they changed since `published`.
async fn publish_pods(
    table: &PodTable,
    published: &mut Option<Vec<super::policy::PodIdentity>>,
    driver: &mpsc::Sender<Query>,
) {
    let now = super::policy::identities(&table.list());
    if published.as_ref() == Some(&now) {
        return;
    }
    *published = Some(now.clone());
    let answer = ask(driver, Request::LocalPods(now)).await;
    if !matches!(answer, Response::Done { ok: true, .. }) {
        tracing::debug!(?answer, "the node did not take this node's pods");
    }
}

pub(crate) async fn ask(driver: &mpsc::Sender<Query>, request: Request) -> Response {
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
        name: None,
        source: Source::Cni,
        ports: Vec::new(),
        endpoint: None,
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

/// `weft attach`: record the pod, get its address (the one it has, the one asked for, or the
/// one it had before it was detached if still free, or the next), plug its namespace in. A
/// pod that had no address before is taken out again if anything fails, its address given
/// back.
async fn attach(
    table: &mut PodTable,
    a: AttachRequest,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Response {
    let key = a.key();
    let before = table.pods.get(&key).cloned();
    if let Some(refusal) = before.as_ref().and_then(not_attachs) {
        return refusal;
    }
    let had = before.as_ref().and_then(|b| b.address);
    let mut pod = Pod {
        container: a.container.clone(),
        ifname: a.ifname.clone(),
        address: had,
        network: None,
        netns: Some(a.netns.clone()),
        pod_namespace: a
            .namespace
            .clone()
            .or_else(|| before.as_ref().and_then(|b| b.pod_namespace.clone())),
        pod_name: None,
        // Attached again without labels or a name: it keeps those it had.
        labels: match (&before, a.labels.is_empty()) {
            (Some(b), true) => b.labels.clone(),
            _ => a.labels.clone(),
        },
        ports: match (&before, a.ports.is_empty()) {
            (Some(b), true) => b.ports.clone(),
            _ => a.ports.clone(),
        },
        name: a
            .name
            .clone()
            .or_else(|| before.as_ref().and_then(|b| b.name.clone())),
        source: Source::Attach,
        endpoint: None,
    };
    if let Err(e) = table.put(key.clone(), Some(pod.clone())) {
        return Response::error(format!("recording the pod: {e:#}"));
    }
    let allocate = |address: Option<Ipv4Addr>| match address {
        Some(address) => Request::AllocateAt {
            container: key.clone(),
            address,
        },
        None => Request::Allocate {
            container: key.clone(),
        },
    };
    let mut answer = match (a.ip, had, table.recent(&key)) {
        (Some(ip), _, _) => ask(driver, allocate(Some(ip))).await,
        (None, None, Some(old)) => match ask(driver, allocate(Some(old))).await {
            ok @ Response::Allocation { ok: true, .. } => ok,
            _ => ask(driver, allocate(None)).await,
        },
        _ => ask(driver, allocate(None)).await,
    };
    let allocation = match &answer {
        Response::Allocation {
            ok: true,
            allocation,
        } => allocation.clone(),
        _ => {
            if let Err(e) = table.put(key, before) {
                warn!(error = %format!("{e:#}"), "taking back the pod of a failed allocation");
            }
            return answer;
        }
    };
    let spec = attachment(&allocation, &a);
    if let Err(e) = plumbing.attach(&spec).await {
        let error = format!(
            "attaching {} to bridge {} with {}: {e}",
            a.netns, allocation.bridge, allocation.address
        );
        if had.is_none() {
            let released = ask(
                driver,
                Request::Release {
                    container: key.clone(),
                },
            )
            .await;
            if !matches!(released, Response::Done { ok: true, .. }) {
                warn!(pod = %key, answer = ?released, "giving back the address of a failed attach");
            }
            if let Err(e) = table.put(key, None) {
                warn!(error = %format!("{e:#}"), "taking back the pod of a failed attach");
            }
        }
        return Response::error(error);
    }
    pod.address = Some(allocation.address);
    table.set_recent(&key, None);
    info!(pod = %key, name = pod.name.as_deref().unwrap_or("-"), netns = %a.netns, address = %allocation.address, "container attached");
    if let Err(e) = table.put(key, Some(pod)) {
        warn!(error = %format!("{e:#}"), "recording the pod's address");
    }
    if let Response::Allocation {
        allocation: out, ..
    } = &mut answer
    {
        out.container = a.container;
    }
    answer
}

/// The refusal for `weft attach`/`detach` of a pod another runtime made.
fn not_attachs(pod: &Pod) -> Option<Response> {
    let owner = match pod.source {
        Source::Attach => return None,
        Source::Cni => "the CNI plugin",
        Source::Docker => "Docker (weft's network plugin)",
    };
    Some(Response::error(format!(
        "{} is attached by {owner}: its runtime owns it",
        pod.key()
    )))
}

/// What to plug in for `allocation`.
fn attachment(allocation: &Allocation, a: &AttachRequest) -> Attachment {
    Attachment {
        container: allocation.container.clone(),
        netns: PathBuf::from(&a.netns),
        ifname: a.ifname.clone(),
        address: allocation.address,
        gateway: allocation.gateway,
        cluster_range: allocation.cluster_range,
        bridge: allocation.bridge.clone(),
        mtu: allocation.mtu,
        extra_routes: Vec::new(),
    }
}

/// `weft detach`: the veth removed, then the address given back (and remembered for the
/// same container). Detaching what is not attached is not an error.
async fn detach(
    table: &mut PodTable,
    key: String,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Response {
    let pod = table.pods.get(&key).cloned();
    if let Some(refusal) = pod.as_ref().and_then(not_attachs) {
        return refusal;
    }
    if let Err(e) = plumbing.detach(&key).await {
        return Response::error(format!("removing the interface of {key}: {e}"));
    }
    let answer = ask(
        driver,
        Request::Release {
            container: key.clone(),
        },
    )
    .await;
    if matches!(answer, Response::Done { ok: true, .. }) {
        if let Some(pod) = pod {
            info!(pod = %key, name = pod.name.as_deref().unwrap_or("-"), "container detached");
            table.set_recent(&key, pod.address.map(|a| a.addr()));
            if let Err(e) = table.put(key, None) {
                warn!(error = %format!("{e:#}"), "removing a detached pod");
            }
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
pub(crate) mod tests {
    use super::*;
    use crate::daemon::api::Allocation;

    /// A driver stand-in: allocates 10.32.0.N/12 per new key, releases any; answers in order.
    pub(crate) fn driver() -> (mpsc::Sender<Query>, tokio::task::JoinHandle<Vec<Request>>) {
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
                        let next = (2..=250u8)
                            .find(|n| !held.values().any(|m| m == n))
                            .expect("free");
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
                    Request::AllocateAt { container, address } => {
                        let n = address.octets()[3];
                        match held.get(container) {
                            Some(&m) if m != n => {
                                Response::error(format!("{container} already has 10.32.0.{m}"))
                            }
                            _ if held.iter().any(|(c, &m)| m == n && c != container) => {
                                Response::error(format!("address {address} is in use"))
                            }
                            _ => {
                                held.insert(container.clone(), n);
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

    /// A stand-in for the kernel: records attaches and detaches, fails netns "/bad".
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Fake {
        pub(crate) log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        pub(crate) fail_prepare: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Plumbing for Fake {
        async fn attach(&self, spec: &Attachment) -> weft_mesh::Result<()> {
            if spec.netns == Path::new("/bad") {
                return Err(weft_mesh::Error::InvalidConfig("no such namespace".into()));
            }
            self.log.lock().expect("log").push(format!(
                "attach {} {} {}",
                spec.container,
                spec.netns.display(),
                spec.address
            ));
            Ok(())
        }

        async fn detach(&self, key: &str) -> weft_mesh::Result<()> {
            self.log.lock().expect("log").push(format!("detach {key}"));
            Ok(())
        }

        async fn prepare(
            &self,
            key: &str,
            bridge: &str,
            mtu: u32,
        ) -> weft_mesh::Result<Option<[u8; 6]>> {
            if self.fail_prepare.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(weft_mesh::Error::InvalidConfig("no bridge".into()));
            }
            self.log
                .lock()
                .expect("log")
                .push(format!("prepare {key} {bridge} {mtu}"));
            Ok(Some([2, 0, 0, 0, 0, 1]))
        }

        async fn gateway(&self, _bridge: &str) -> weft_mesh::Result<Option<Ipv4Net>> {
            Ok(Some("10.32.0.0/12".parse().expect("net")))
        }
    }

    fn attach_request(container: &str, netns: &str) -> AttachRequest {
        AttachRequest {
            container: container.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            ip: None,
            name: Some("web".into()),
            labels: BTreeMap::from([("tier".into(), "front".into())]),
            namespace: None,
            ports: Vec::new(),
        }
    }

    async fn attached(api: &mpsc::Sender<Query>, a: AttachRequest) -> Result<Ipv4Net, String> {
        match ask(api, Request::Attach(a)).await {
            Response::Allocation { allocation, .. } => Ok(allocation.address),
            Response::Error { error, .. } => Err(error),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn attach_is_idempotent_detach_gives_back_and_failures_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (driver_tx, driver_task) = driver();
        let (api, rx) = mpsc::channel(8);
        let fake = Fake::default();
        let layer = tokio::spawn(serve(
            PodTable::open(dir.path()).expect("open"),
            rx,
            driver_tx,
            fake.clone(),
        ));
        let a = attached(&api, attach_request("c1", "/run/netns/a"))
            .await
            .expect("attach");
        // Retried, from another namespace path even: the same address.
        let mut bare = attach_request("c1", "/proc/7/ns/net");
        bare.labels.clear();
        bare.name = None;
        let again = attached(&api, bare).await.expect("again");
        assert_eq!(a, again);
        let pods = pods_of(&api).await;
        assert_eq!(pods.len(), 1, "{pods:?}");
        assert_eq!(pods[0].source, Source::Attach);
        assert_eq!(pods[0].name.as_deref(), Some("web"));
        assert_eq!(pods[0].labels["tier"], "front");
        assert_eq!(pods[0].address, Some(a));
        assert_eq!(pods[0].netns.as_deref(), Some("/proc/7/ns/net"));

        // A failed attach of a new container: an error, no pod, the address given back.
        let e = attached(&api, attach_request("c2", "/bad"))
            .await
            .expect_err("bad netns");
        assert!(e.contains("no such namespace"), "{e}");
        assert_eq!(pods_of(&api).await.len(), 1);
        // --ip: a taken address is refused and leaves nothing; a free one is taken.
        let mut taken = attach_request("c3", "/run/netns/c");
        taken.ip = Some(a.addr());
        let e = attached(&api, taken).await.expect_err("taken");
        assert!(e.contains("in use"), "{e}");
        assert_eq!(pods_of(&api).await.len(), 1);
        let mut free = attach_request("c3", "/run/netns/c");
        free.ip = Some("10.32.0.99".parse().expect("ip"));
        assert_eq!(
            attached(&api, free).await.expect("free").to_string(),
            "10.32.0.99/12"
        );

        // Detach: gone from the pods, address released; attached again, the same address.
        let d = ask(
            &api,
            Request::Detach {
                container: "c1".into(),
                ifname: "eth0".into(),
            },
        )
        .await;
        assert!(matches!(d, Response::Done { ok: true, .. }), "{d:?}");
        assert_eq!(pods_of(&api).await.len(), 1);
        // Another container may get it meanwhile; c1 gets it back while it is free.
        let back = attached(&api, attach_request("c1", "/run/netns/a"))
            .await
            .expect("back");
        assert_eq!(back, a, "the same container gets its old address back");
        // Detaching what is not attached is fine.
        let d = ask(
            &api,
            Request::Detach {
                container: "zz".into(),
                ifname: "eth0".into(),
            },
        )
        .await;
        assert!(matches!(d, Response::Done { ok: true, .. }), "{d:?}");
        // A CNI pod is not weft attach's to take.
        ask(&api, Request::AllocatePod(pod_allocate("k1"))).await;
        let e = attached(&api, attach_request("k1", "/run/netns/k"))
            .await
            .expect_err("cni");
        assert!(e.contains("CNI"), "{e}");
        let d = ask(
            &api,
            Request::Detach {
                container: "k1".into(),
                ifname: "eth0".into(),
            },
        )
        .await;
        assert!(matches!(d, Response::Error { .. }), "{d:?}");

        // Kept across a restart, the detached address remembered too.
        let reopened = PodTable::open(dir.path()).expect("reopen");
        assert_eq!(reopened.list(), pods_of(&api).await);
        drop(api);
        layer.await.expect("layer");
        let seen = driver_task.await.expect("driver");
        assert!(
            seen.contains(&Request::Release {
                container: "c2/eth0".into()
            }),
            "{seen:?}"
        );
        assert!(
            !seen.contains(&Request::Release {
                container: "c3/eth0".into()
            }),
            "{seen:?}"
        );
        let log = fake.log.lock().expect("log").clone();
        assert_eq!(
            log.iter()
                .filter(|l| l.starts_with("attach c1/eth0"))
                .count(),
            3,
            "{log:?}"
        );
        assert!(log.contains(&"detach c1/eth0".to_string()), "{log:?}");
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
            Fake::default(),
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
            Fake::default(),
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
