//! The policy reconciler: the IO task that keeps this node's nftables policy in line with
//! the inputs, as the datapath task keeps the host's state in line with the view.
//!
//! On every change of the inputs, and every [`ROUND`] against the kernel: compile this
//! node's ruleset (`weft_mesh::policy::compile`, pure), and if it differs from the one in
//! force, or the tables in the kernel are gone or differ from what was loaded (a `nft flush
//! ruleset`, a rule deleted: [`PolicyTable::drift`]), load it with one `nft -f`
//! ([`PolicyTable::apply`]). A repair of drift is logged once as a warning and counted. With
//! no policy at all there is no table (nothing is filtered, as in Kubernetes). Each round
//! also reads the per-policy drop counters for `weft policy list` and /metrics.
//!
//! The inputs come through one seam, a `watch` channel of [`PolicyInputs`]: on plain hosts
//! the node's gossip core fills it ([`InputSource::Gossip`]); on Kubernetes the node fills it
//! from the API's pods, namespaces and NetworkPolicies instead ([`InputSource::Kube`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};
use weft_mesh::policy::{self, nft, Cluster, Drift, PolicyTable, Scope};

/// How often the kernel's tables are checked for presence and the counters read.
pub const ROUND: Duration = Duration::from_secs(1);
/// The full comparison of the tables' contents ([`PolicyTable::drift`]) lists them whole,
/// which takes from 15 ms (a few policies) to over a second (thousands): it runs at most
/// every this many times its own last duration (at most 5% of a core), and every round when
/// that is shorter.
const FULL_CHECK_SPACING: u32 = 20;

/// Where the policy inputs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputSource {
    /// Policies, namespace labels and pods from `weft policy` and gossip (plain hosts).
    Gossip,
    /// NetworkPolicies, Pods and Namespaces from the Kubernetes API (`daemon::kube`).
    Kube,
}

/// Everything the compiler takes, and for which node.
#[derive(Debug, Clone)]
pub struct PolicyInputs {
    pub source: InputSource,
    pub cluster: Cluster,
    /// This node's name in `cluster` (its pods have it as their node).
    pub node: String,
}

/// What the reconciler reports back (for `weft policy list`, `weft status` and /metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// Packets each policy dropped on this node since it was applied (`namespace/name`).
    pub drops: BTreeMap<String, u64>,
    /// Packets dropped at the bridge for a forged source address.
    pub spoofed: u64,
    /// Times the tables were found missing or changed and loaded again.
    pub repairs: u64,
    /// Rules in force (0: no table).
    pub rules: usize,
    /// Why the last load failed, if it did.
    pub error: Option<String>,
}

/// Runs until `inputs` closes.
pub async fn run(
    mut inputs: watch::Receiver<Option<PolicyInputs>>,
    report: watch::Sender<PolicyReport>,
) {
    let mut r = Reconciler::default();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let round = tokio::select! {
            changed = inputs.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            _ = tick.tick() => true,
        };
        let current = inputs.borrow_and_update().clone();
        if let Some(current) = current {
            r.reconcile(&current, round).await;
        }
        report.send_if_modified(|old| {
            if *old == r.report {
                false
            } else {
                *old = r.report.clone();
                true
            }
        });
    }
}

#[derive(Debug, Default)]
struct Reconciler {
    table: PolicyTable,
    /// The script in force (`None`: no table loaded by us).
    loaded: Option<String>,
    report: PolicyReport,
    sysctls_done: bool,
    /// The last error logged (each new one once).
    logged: Option<String>,
    /// The first inputs were taken (tables left from before a restart were dealt with).
    started: bool,
    /// When the tables' contents are compared next (their presence is, every round).
    next_full_check: Option<std::time::Instant>,
}

impl Reconciler {
    async fn reconcile(&mut self, inputs: &PolicyInputs, round: bool) {
        let first = !self.started;
        self.started = true;
        if inputs.cluster.policies.is_empty() {
            // Tables left by an earlier run whose policies were all deleted meanwhile (on
            // Kubernetes, while weft was down) go too.
            let stale = first
                && self.loaded.is_none()
                && list_tables()
                    .await
                    .is_ok_and(|(inet, bridge)| inet || bridge);
            if self.loaded.is_some() || stale {
                match self.table.remove().await {
                    Ok(()) => {
                        info!(source = ?inputs.source, "no policy left: the policy tables are removed");
                        self.loaded = None;
                        self.report.rules = 0;
                        self.report.drops.clear();
                    }
                    Err(e) => self.failed(format!("removing the policy tables: {e}")),
                }
            }
            return;
        }
        let compiled = policy::compile(&inputs.cluster, Scope::Node(inputs.node.clone()));
        let script = nft::replace_script(&compiled);
        let mut drifted = Drift::None;
        if round && self.loaded.is_some() {
            let now = std::time::Instant::now();
            if self.next_full_check.is_none_or(|t| now >= t) {
                match self.table.drift().await {
                    Ok(d) => drifted = d,
                    Err(e) => self.failed(format!("listing the policy tables: {e}")),
                }
                self.next_full_check = Some(now + now.elapsed() * FULL_CHECK_SPACING);
            } else {
                match list_tables().await {
                    Ok((true, true)) => {}
                    Ok(_) => drifted = Drift::Missing,
                    Err(e) => self.failed(format!("listing nftables tables: {e}")),
                }
            }
        }
        if drifted != Drift::None || self.loaded.as_deref() != Some(script.as_str()) {
            self.ensure_sysctls();
            match self.table.apply(&compiled).await {
                Ok(stats) => {
                    if drifted == Drift::Missing {
                        self.report.repairs += 1;
                        warn!("nftables table inet {} missing: restored", nft::TABLE);
                    } else if drifted == Drift::Changed {
                        self.report.repairs += 1;
                        warn!(
                            "nftables table inet {} changed by someone else: reloaded",
                            nft::TABLE
                        );
                    } else if self.loaded.is_none() {
                        info!(
                            source = ?inputs.source,
                            policies = compiled.policies.len(),
                            rules = stats.rules,
                            "policy tables loaded"
                        );
                    }
                    self.loaded = Some(script);
                    self.report.rules = stats.rules;
                    self.report.error = None;
                    self.logged = None;
                }
                Err(e) => {
                    self.loaded = None;
                    self.failed(format!("loading the policy ruleset: {e}"));
                }
            }
        }
        if round && self.loaded.is_some() {
            match self.table.drops().await {
                Ok(drops) => {
                    self.report.drops = drops
                        .into_iter()
                        .map(|(name, v)| (name.to_string(), v.packets))
                        .collect();
                }
                Err(e) => self.failed(format!("reading the policy counters: {e}")),
            }
            if let Ok(v) = self.table.spoofed().await {
                self.report.spoofed = v.packets;
            }
        }
    }

    fn failed(&mut self, error: String) {
        if self.logged.as_deref() != Some(error.as_str()) {
            warn!(error = %error, "network policy");
            self.logged = Some(error.clone());
        }
        self.report.error = Some(error);
    }

    /// Bridged traffic between pods of this node reaches the `inet` hooks only with
    /// br_netfilter's `bridge-nf-call-ip(6)tables` on (per network namespace).
    fn ensure_sysctls(&mut self) {
        if self.sysctls_done {
            return;
        }
        self.sysctls_done = true;
        if !std::path::Path::new("/proc/sys/net/bridge").exists() {
            // As kube-proxy does: the module is usually there, just not loaded.
            let loaded = std::process::Command::new("modprobe")
                .arg("br_netfilter")
                .stdin(std::process::Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if loaded {
                info!("loaded br_netfilter for network policy over the bridge");
            }
        }
        for name in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
            let path = format!("/proc/sys/net/bridge/{name}");
            match std::fs::read_to_string(&path) {
                Ok(v) if v.trim() == "1" => {}
                Ok(_) => match std::fs::write(&path, "1\n") {
                    Ok(()) => {
                        info!(sysctl = %format!("net.bridge.{name}"), "turned on for network policy over the bridge")
                    }
                    Err(e) => {
                        warn!(sysctl = %format!("net.bridge.{name}"), error = %e, "cannot turn on: traffic between pods of this node is not filtered")
                    }
                },
                Err(_) => {
                    warn!("br_netfilter is not loaded (modprobe br_netfilter): traffic between pods of this node is not filtered");
                    break;
                }
            }
        }
    }
}

/// Whether the `inet` and the `bridge` policy tables exist.
async fn list_tables() -> std::io::Result<(bool, bool)> {
    let out = tokio::process::Command::new("nft")
        .args(["list", "tables"])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let has = |family: &str| {
        text.lines()
            .any(|l| l.trim() == format!("table {family} {}", nft::TABLE))
    };
    Ok((has("inet"), has("bridge")))
}
