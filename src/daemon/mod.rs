//! The weft daemon (`weft launch`): keys and secret from disk, the gossip transport, the
//! sans-IO node (membership and IPAM cores, journal decisions, API answers) and the IO loop
//! that drives it (`driver`), the WireGuard datapath task that follows the node's view, the
//! local API socket and the metrics endpoint.

mod addrs;
pub mod api;
pub mod config;
pub mod datapath;
pub mod docker;
mod driver;
pub mod kube;
mod members;
pub mod metrics;
mod node;
pub mod pods;
pub mod policy;
pub mod preflight;
mod slots;
mod state;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use weft_crypto::{ClusterSecret, IdentityKey, KeyStore};
use weft_gossip::ipam::{FileStore, Ipam, IpamConfig, Store};
use weft_gossip::transport::{Transport, TransportConfig};
use weft_gossip::{Membership, NodeRecord};

use api::{ApiSocket, Response};
use config::LaunchConfig;
use datapath::DatapathConfig;
use driver::{DatapathLink, Driver, Exit, PolicyLink};
use members::MembersJournal;
use node::{Node, NodeConfig};
use state::VersionFile;
use view::DatapathReport;

/// The WireGuard interface's name.
pub const WG_IFNAME: &str = "weft-wg";
/// How long the API gets to write the answer to `weft reset` before the daemon exits.
const REPLY_GRACE: Duration = Duration::from_millis(300);

/// The files a node keeps in its state directory, removed by `weft reset` once it left.
const STATE_FILES: [&str; 9] = [
    weft_crypto::IDENTITY_KEY_FILE,
    weft_crypto::WIREGUARD_KEY_FILE,
    state::VERSION_FILE,
    FileStore::SNAPSHOT,
    FileStore::JOURNAL,
    members::JOURNAL_FILE,
    pods::PODS_FILE,
    kube::SPACE_FILE,
    policy::POLICY_FILE,
];

/// Remove the node's files (only those) from `state_dir`; missing ones are fine.
fn forget_state(state_dir: &std::path::Path) -> anyhow::Result<()> {
    for name in STATE_FILES {
        let path = state_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// Writes weft-cni's conflist into `dir` (created if missing), whole or not at all, mode 0644
/// (runtimes read it).
fn write_cni_conflist(dir: &std::path::Path, config: &LaunchConfig) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let list = weft_cni::config::conflist(&config.api_socket, &config.state_dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(weft_cni::config::CONFLIST_FILE);
    let tmp = dir.join(format!(".{}.tmp", weft_cni::config::CONFLIST_FILE));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(serde_json::to_string_pretty(&list)?.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    info!(file = %path.display(), "wrote the CNI network config");
    Ok(())
}

/// The policy state file's contents, if there is one (bounded).
fn read_policy_file(path: &std::path::Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > policy::MAX_FILE_LEN => {
            anyhow::bail!(
                "{} is larger than {} bytes",
                path.display(),
                policy::MAX_FILE_LEN
            )
        }
        Ok(_) => Ok(Some(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Run the daemon in the foreground until SIGTERM or SIGINT (or `weft reset`).
pub fn launch(config: LaunchConfig) -> anyhow::Result<()> {
    preflight::check(&config.datapath)?;
    let keys = KeyStore::open_or_create(&config.state_dir).context("loading the node's keys")?;
    if keys.created() {
        eprintln!("created new node keys in {}", config.state_dir.display());
    }
    let secret = ClusterSecret::load(&config.secret_file).context("loading the cluster secret")?;
    let version = VersionFile::open(&config.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config, keys, secret, version))
}

async fn run(
    config: LaunchConfig,
    keys: KeyStore,
    secret: ClusterSecret,
    version: VersionFile,
) -> anyhow::Result<()> {
    // Signals first, so that one arriving during start-up is not lost to the default action.
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let api = ApiSocket::bind(&config.api_socket).context("opening the API socket")?;
    let docker_plugin = match &config.docker_plugin {
        Some(path) => Some(
            docker::PluginSocket::bind(path)
                .context("opening the Docker plugin socket (--docker-plugin)")?,
        ),
        None => None,
    };
    if let Some(dir) = &config.cni_conf_dir {
        write_cni_conflist(dir, &config)?;
    }
    // Bound here so that a port in use fails the launch with a clear message.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding the metrics endpoint {addr} (--metrics-addr ADDR:PORT, or off)")
        })?),
        None => None,
    };
    let wg_key = keys.wireguard_public_key();
    let (identity, wg_private) = keys.into_keys();
    let identity = Arc::new(identity);
    let policy_identity = identity.clone();
    // The membership core wants the identity key by value, and it is not Clone.
    let core_identity = IdentityKey::from_base64(&identity.to_base64_secret())
        .context("copying the identity key")?;
    // On Kubernetes: the watchers, and this Node's pod CIDR as the node's own space (its
    // IPAM core then runs over that prefix alone; see `node::kube`).
    let (kubernetes, fixed_space) = match &config.kubernetes {
        Some(settings) => {
            let k = kube::Kubernetes::connect(settings).await?;
            let space = k
                .choose_space(settings.ipam, config.range, &config.state_dir)
                .await?;
            (Some(k), space)
        }
        None => (None, None),
    };
    // Loaded here; the loop writes the new start's snapshot (and everything after it).
    let mut ipam_store = FileStore::new(&config.state_dir);
    let ipam = ipam_store
        .load()
        .and_then(|loaded| {
            Ipam::open(
                identity.clone(),
                IpamConfig::new(fixed_space.unwrap_or(config.range)),
                loaded,
                rand::random(),
            )
        })
        .with_context(|| {
            format!(
                "opening the address space state in {}",
                config.state_dir.display()
            )
        })?;
    let transport = Transport::bind(config.listen, TransportConfig::new(identity, secret))
        .context("starting the gossip transport")?;
    let bound = transport.local_addr()?;
    // Addresses in the cluster range (the bridge's, kept across a restart) are no way in.
    let host: Vec<std::net::IpAddr> = addrs::host_addresses()?
        .into_iter()
        .filter(|ip| match ip {
            std::net::IpAddr::V4(v4) => !config.range.contains(v4),
            std::net::IpAddr::V6(_) => true,
        })
        .collect();
    let (gossip_addr, _) = addrs::advertised(bound, &host)?;
    let wg_local = addrs::wireguard_local(bound, &host, config.wg_port, config.range);

    let now = Instant::now();
    let mut record = NodeRecord::new(
        core_identity.node_id(),
        version.next_start(),
        config.name.clone(),
        wg_key,
        gossip_addr,
    );
    record.endpoints.local = wg_local.clone();
    let gossip_config = weft_gossip::Config {
        rng_seed: rand::random(),
        ..weft_gossip::Config::default()
    };
    let core = Membership::new(gossip_config, core_identity, record, now)
        .context("building the node record")?;
    let (journal, restored) = MembersJournal::open(&config.state_dir)?;
    let node_id = core.local_id();
    info!(node = %node_id, name = %config.name, %gossip_addr, version = core.local_version(), "node started");
    eprintln!(
        "weft: node {} ({}) gossiping on {gossip_addr} (bound {bound}), WireGuard port {}, API at {}",
        config.name,
        node_id.short(),
        config.wg_port,
        config.api_socket.display()
    );

    let (queries_tx, queries) = mpsc::channel(16);
    let metrics_task = metrics_listener.map(|listener| {
        let queries = queries_tx.clone();
        let health = kubernetes.as_ref().map(kube::Kubernetes::health);
        tokio::spawn(async move {
            if let Err(e) = metrics::serve_with(listener, queries, health).await {
                error!(error = %format!("{e:#}"), "metrics endpoint stopped");
            }
        })
    });
    // The API goes through the pods layer (CNI attachments and their identity); so do the
    // releases the CNI plugin kept while the daemon was down.
    let status_task = kubernetes
        .as_ref()
        .map(|k| k.spawn_status(queries_tx.clone()));
    let pod_table = pods::PodTable::open(&config.state_dir)?;
    let (pods_tx, pods_rx) = mpsc::channel(16);
    let pods_task = tokio::spawn(pods::serve(pod_table, pods_rx, queries_tx, pods::Kernel));
    let spool_task = tokio::spawn(pods::apply_releases(
        config.state_dir.clone(),
        pods_tx.clone(),
    ));
    let docker_task = docker_plugin.map(|socket| {
        let pods = pods_tx.clone();
        tokio::spawn(async move { socket.serve(pods).await })
    });
    let docker_names_task = config.docker_socket.clone().map(|socket| {
        tokio::spawn(docker::names::run(
            socket,
            config.docker_plugin.is_some(),
            pods_tx.clone(),
        ))
    });
    let api_task = tokio::spawn(async move { api.serve(pods_tx).await });

    let (view_tx, view_rx) = watch::channel(None);
    let (report_tx, report_rx) = watch::channel(DatapathReport::default());
    let (failed_tx, failed_rx) = watch::channel(None);
    let datapath_config = DatapathConfig {
        ifname: WG_IFNAME.to_string(),
        private_key: wg_private,
        listen_port: config.wg_port,
        mtu: config.mtu,
        backend: config.datapath.clone(),
        wg_socket: config.wg_socket.clone(),
        masquerade: config.masquerade,
    };
    let datapath_off = config.datapath == "off";
    let datapath_task = tokio::spawn(async move {
        if datapath_off {
            // Keep the channels open: the driver still publishes its view.
            let _keep = (view_rx, report_tx, failed_tx);
            std::future::pending::<()>().await;
            return;
        }
        // An error is shown by `weft status`; gossip and IPAM go on without a datapath.
        if let Err(e) = datapath::run(datapath_config, view_rx, report_tx).await {
            let e = format!("{e:#}");
            error!(error = %e, "the WireGuard datapath stopped");
            let _ = failed_tx.send(Some(e));
        }
    });

    let node_config = NodeConfig {
        listen: bound,
        range: config.range,
        started: now,
        wg_port: config.wg_port,
        mtu: config.mtu,
        wg_local,
        datapath_off,
        seeds: config.seeds.clone(),
    };
    // Network policy: the node's core (policies, namespace labels and pods, by gossip),
    // and the reconciler that keeps this node's ruleset loaded.
    let policy_file = config.state_dir.join(policy::POLICY_FILE);
    let policy_bytes = read_policy_file(&policy_file)?;
    let policy_core = policy::PolicyCore::new(policy_identity, policy_bytes.as_deref());
    let (policy_tx, policy_rx) = watch::channel(None);
    let (policy_report_tx, policy_report_rx) = watch::channel(policy::PolicyReport::default());
    let policy_task = tokio::spawn(async move {
        if datapath_off {
            // No bridge, no pods: nothing to filter; the channels stay open.
            let _keep = (policy_rx, policy_report_tx);
            std::future::pending::<()>().await;
            return;
        }
        policy::reconcile::run(policy_rx, policy_report_tx).await;
    });
    let mut node = Node::new(node_config, core, ipam, restored, now).with_policy(policy_core);
    let link = DatapathLink {
        view: view_tx,
        report: report_rx,
        failed: failed_rx,
        policy: PolicyLink {
            inputs: policy_tx,
            report: policy_report_rx,
            file: policy_file,
        },
    };
    let mut feed_tasks = Vec::new();
    if kubernetes.is_some() {
        node.set_kubernetes(fixed_space);
    }
    let mut driver = Driver::new(node, ipam_store, transport, journal, version, link);
    if let Some(k) = &kubernetes {
        let (nodes, task) = k.spawn_node_feed(bound.port());
        let (policy_inputs, policy_feed) = k.spawn_policy_feed();
        driver = driver
            .with_cluster_nodes(nodes)
            .with_kube_policy(policy_inputs, k.health());
        feed_tasks = vec![task, policy_feed];
    }
    let shutdown = async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = name, "stopping: telling the others, keeping state");
    };
    let result = driver.run(queries, shutdown).await;
    // Stopping leaves the datapath's host state (routes, fail-closed firewall) in place.
    datapath_task.abort();
    let _ = datapath_task.await;
    // Stopping leaves the policy tables in force too.
    policy_task.abort();
    let _ = policy_task.await;
    let tasks = [metrics_task, status_task].into_iter().flatten();
    for task in tasks.chain(feed_tasks) {
        task.abort();
        let _ = task.await;
    }
    drop(kubernetes);
    let result = match result {
        Ok(Exit::Reset {
            reply,
            summary,
            left,
        }) => {
            let cleaned = if datapath_off {
                Ok(())
            } else {
                // The network policy tables go too.
                let policy = weft_mesh::policy::PolicyTable::new()
                    .remove()
                    .await
                    .map_err(|e| anyhow::anyhow!("removing the policy tables: {e}"));
                datapath::reset(WG_IFNAME).await.and(policy)
            };
            let mut message = match cleaned {
                Ok(()) => format!("reset: this node {summary}, left the cluster, and removed weft's interfaces, routes and firewall rules"),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "reset: could not clean up the host");
                    format!("reset: this node {summary} and left the cluster, but cleaning up the host failed: {e:#}")
                }
            };
            // Gone for good: a later launch on this host is a new node, as after
            // `weave reset`. Only once no address space is held here, or it would be lost.
            if left {
                match forget_state(&config.state_dir) {
                    Ok(()) => message.push_str(
                        "; its keys and state are removed (a new launch joins as a new node)",
                    ),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "reset: could not remove the node's state");
                        message.push_str(&format!("; removing its state failed: {e:#}"));
                    }
                }
            }
            info!("{message}");
            let _ = reply.send(Response::Done { ok: true, message });
            tokio::time::sleep(REPLY_GRACE).await;
            Ok(())
        }
        Ok(Exit::Stopped) => Ok(()),
        Err(e) => Err(e),
    };
    // Dropping the server drops the socket, which removes its file.
    api_task.abort();
    let _ = api_task.await;
    for task in [docker_task, docker_names_task].into_iter().flatten() {
        task.abort();
        let _ = task.await;
    }
    spool_task.abort();
    let _ = spool_task.await;
    pods_task.abort();
    let _ = pods_task.await;
    result
}
