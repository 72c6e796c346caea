//! `weft launch`: settings from the command line over the config file, then the daemon.

use std::path::PathBuf;

use crate::cli::LaunchArgs;
use crate::daemon::config::{LaunchConfig, Settings};

pub fn run(args: LaunchArgs, secret_file: Option<PathBuf>) -> anyhow::Result<()> {
    let flags = Settings {
        name: args.name,
        listen: args.listen,
        secret_file,
        state_dir: args.state_dir,
        range: args.range,
        api_socket: args.api_socket,
        peers: (!args.peers.is_empty()).then_some(args.peers),
        wg_port: args.wg_port,
        metrics_addr: args.metrics_addr,
        datapath: args.datapath,
        mtu: args.mtu,
        wg_socket: args.wg_socket,
        cni_conf_dir: args.cni_conf_dir,
        masquerade: args.no_masquerade.then_some(false),
        docker_plugin: args.docker_plugin,
        docker_socket: args.docker_socket,
    };
    let file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let config = LaunchConfig::resolve(flags.or(file))?;
    crate::daemon::launch(config)
}
