//! Watchers for the objects weft reads: Nodes, Pods, Namespaces and NetworkPolicies.
//!
//! Each is a kube-rs runtime watcher feeding a reflector (an in-memory store of the current
//! objects), with kube's default backoff (0.8 s doubling to 30 s, reset after 2 minutes of
//! health). A failed list or watch is retried; a watch whose resource version has expired
//! (410 Gone, after a compaction or a long outage) lists again and the store is replaced as a
//! whole once the new list is complete. While the API server is unreachable the stores keep
//! the last state they saw: the mesh does not depend on the API being up.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How long after its last error a watch that has produced nothing since counts as failing.
/// kube's backoff retries at least every 30 s, so a watch that still fails errs again
/// within this time.
pub const ERROR_GRACE: Duration = Duration::from_secs(60);

/// The kinds watched, in the order of [`Watchers::health`].
pub const KINDS: [&str; 4] = ["Node", "Pod", "Namespace", "NetworkPolicy"];

#[derive(Debug, Default)]
struct Health {
    synced: AtomicBool,
    errors: AtomicU64,
    lists: AtomicU64,
    events: AtomicU64,
    /// When the last error happened and what it was, and whether an event came after it.
    last_error: Mutex<Option<(Instant, String, bool)>>,
}

/// One watch's health, for /readyz and /metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchHealth {
    /// The kind watched ("Node", ...).
    pub kind: &'static str,
    /// A complete list has been received at least once (the store is usable).
    pub synced: bool,
    /// Errors so far (failed lists and watches, error events such as 410 Gone).
    pub errors: u64,
    /// Complete lists so far (1 at start, one more after each relist).
    pub lists: u64,
    /// Objects added, changed or deleted so far (after the lists).
    pub events: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// An error within [`ERROR_GRACE`] with nothing received since.
    pub failing: bool,
}

impl WatchHealth {
    /// Synced and not failing.
    pub fn healthy(&self) -> bool {
        self.synced && !self.failing
    }
}

impl Health {
    fn snapshot(&self, kind: &'static str, now: Instant) -> WatchHealth {
        let last = self.last_error.lock().map(|g| g.clone()).unwrap_or(None);
        WatchHealth {
            kind,
            synced: self.synced.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            failing: last.as_ref().is_some_and(|(at, _, recovered)| {
                !recovered && now.saturating_duration_since(*at) < ERROR_GRACE
            }),
            last_error: last.map(|(_, e, _)| e),
        }
    }

    fn ok(&self) {
        if let Ok(mut g) = self.last_error.lock() {
            if let Some(e) = g.as_mut() {
                e.2 = true;
            }
        }
    }
}

/// The running watchers and their stores. Dropping it stops them.
#[derive(Debug)]
pub struct Watchers {
    /// Every Node.
    pub nodes: Store<Node>,
    /// Every Pod, in every namespace.
    pub pods: Store<Pod>,
    /// Every Namespace.
    pub namespaces: Store<Namespace>,
    /// Every NetworkPolicy, in every namespace.
    pub policies: Store<NetworkPolicy>,
    health: [Arc<Health>; 4],
    changes: signal::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    /// Starts the four watchers on `client` (cluster-wide list and watch on each kind, the
    /// verbs weft's ClusterRole grants). Needs a Tokio runtime.
    pub fn start(client: Client) -> Self {
        let (tx, changes) = signal::channel(0u64);
        let health: [Arc<Health>; 4] = Default::default();
        let mut tasks = Vec::new();
        let nodes = spawn(
            Api::all(client.clone()),
            KINDS[0],
            &health[0],
            &tx,
            &mut tasks,
        );
        let pods = spawn(
            Api::all(client.clone()),
            KINDS[1],
            &health[1],
            &tx,
            &mut tasks,
        );
        let namespaces = spawn(
            Api::all(client.clone()),
            KINDS[2],
            &health[2],
            &tx,
            &mut tasks,
        );
        let policies = spawn(Api::all(client), KINDS[3], &health[3], &tx, &mut tasks);
        Watchers {
            nodes,
            pods,
            namespaces,
            policies,
            health,
            changes,
            tasks,
        }
    }

    /// Each watch's health as of `now`, in the order of [`KINDS`].
    pub fn health(&self, now: Instant) -> Vec<WatchHealth> {
        KINDS
            .iter()
            .zip(&self.health)
            .map(|(kind, h)| h.snapshot(kind, now))
            .collect()
    }

    /// Every watch has a complete list and none is failing.
    pub fn ready(&self, now: Instant) -> bool {
        self.health(now).iter().all(WatchHealth::healthy)
    }

    /// A receiver whose value changes whenever any store has changed (an object added,
    /// changed or deleted, or a list completed).
    pub fn changes(&self) -> signal::Receiver<u64> {
        self.changes.clone()
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn<K>(
    api: Api<K>,
    kind: &'static str,
    health: &Arc<Health>,
    changed: &signal::Sender<u64>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    let health = Arc::clone(health);
    let changed = changed.clone();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    health.ok();
                    match event {
                        Event::Init => debug!(kind, "listing"),
                        Event::InitApply(_) => {}
                        Event::InitDone => {
                            let n = health.lists.fetch_add(1, Ordering::Relaxed);
                            if !health.synced.swap(true, Ordering::Relaxed) {
                                info!(kind, "watch synced");
                            } else {
                                info!(kind, lists = n + 1, "listed again");
                            }
                            changed.send_modify(|g| *g += 1);
                        }
                        Event::Apply(_) | Event::Delete(_) => {
                            health.events.fetch_add(1, Ordering::Relaxed);
                            changed.send_modify(|g| *g += 1);
                        }
                    }
                }
                Err(e) => {
                    health.errors.fetch_add(1, Ordering::Relaxed);
                    let gone = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
                    if gone {
                        // Not a failure: the resource version expired; the watcher lists again.
                        info!(kind, "watch expired (410 Gone): listing again");
                    } else {
                        warn!(kind, error = %e, "watch failed; retrying with backoff");
                    }
                    if let Ok(mut g) = health.last_error.lock() {
                        *g = Some((Instant::now(), e.to_string(), gone));
                    }
                }
            }
        }
    }));
    reader
}
