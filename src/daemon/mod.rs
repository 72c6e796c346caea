//! The weft daemon (`weft launch`): keys and secret from disk, the gossip transport, the
//! membership driver, and the local API socket. Not wired yet: the WireGuard datapath from
//! the view, IPAM, metrics.

mod addrs;
pub mod api;
pub mod config;
pub mod datapath;
mod driver;
pub mod metrics;
mod state;
pub mod view;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::info;
use weft_crypto::{ClusterSecret, IdentityKey, KeyStore};
use weft_gossip::transport::{Transport, TransportConfig};
use weft_gossip::{Membership, NodeRecord};

use api::ApiSocket;
use config::LaunchConfig;
use driver::{Driver, NodeInfo};
use state::VersionFile;

/// Run the daemon in the foreground until SIGTERM or SIGINT.
pub fn launch(config: LaunchConfig) -> anyhow::Result<()> {
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
    let wg_key = keys.wireguard_public_key();
    let (identity, _wireguard) = keys.into_keys();
    // The transport and the core each want the identity key, which is not Clone.
    let core_identity = IdentityKey::from_base64(&identity.to_base64_secret())
        .context("copying the identity key")?;
    let transport = Transport::bind(
        config.listen,
        TransportConfig::new(Arc::new(identity), secret),
    )
    .context("starting the gossip transport")?;
    let bound = transport.local_addr()?;
    let host = addrs::host_addresses()?;
    let (gossip_addr, endpoints) = addrs::advertised(bound, &host)?;

    let now = Instant::now();
    let mut record = NodeRecord::new(
        core_identity.node_id(),
        version.next_start(),
        config.name.clone(),
        wg_key,
        gossip_addr,
    );
    record.endpoints.local = endpoints;
    let gossip_config = weft_gossip::Config {
        rng_seed: rand::random(),
        ..weft_gossip::Config::default()
    };
    let core = Membership::new(gossip_config, core_identity, record, now)
        .context("building the node record")?;
    let node = core.local_id();
    info!(node = %node, name = %config.name, %gossip_addr, version = core.local_version(), "node started");
    eprintln!(
        "weft: node {} ({}) gossiping on {gossip_addr} (bound {bound}), API at {}",
        config.name,
        node.short(),
        config.api_socket.display()
    );

    let (queries_tx, queries) = mpsc::channel(16);
    let api_task = tokio::spawn(async move { api.serve(queries_tx).await });
    let info = NodeInfo {
        listen: bound,
        range: config.range,
        started: now,
    };
    let driver = Driver::new(core, transport, config.seeds.clone(), version, info, now);
    let shutdown = async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = name, "stopping: leaving the cluster");
    };
    let result = driver.run(queries, shutdown).await;
    // Dropping the server drops the socket, which removes its file.
    api_task.abort();
    let _ = api_task.await;
    result
}
