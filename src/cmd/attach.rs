//! `weft attach --netns PATH [--ifname eth0] CONTAINER_ID`: an address from the daemon, then
//! a veth from the container's namespace to the bridge (`weft_mesh::attach`).

use std::path::Path;

use anyhow::{bail, Context};
use weft_mesh::attach::{self, Attachment};

use super::client::{Daemon, DEFAULT_TIMEOUT};
use crate::cli::AttachArgs;
use crate::daemon::api::{Allocation, Request, Response};
use crate::output::OutputFormat;

pub fn run(args: &AttachArgs, format: OutputFormat) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let allocation = attach_container(
        &runtime,
        Daemon::new(&args.api, DEFAULT_TIMEOUT),
        &args.container,
        &args.netns,
        &args.ifname,
    )?;
    match format {
        OutputFormat::Text => println!("{}", allocation.address),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&allocation)?),
    }
    Ok(())
}

/// Asks `daemon` for `container`'s address and plugs `netns` into the bridge
/// with it, in the calling thread's network namespace. If plugging in fails for a container
/// that was not attached before, the address is given back.
pub(crate) fn attach_container(
    runtime: &tokio::runtime::Runtime,
    daemon: Daemon,
    container: &str,
    netns: &Path,
    ifname: &str,
) -> anyhow::Result<Allocation> {
    let allocation = match daemon
        .ask(Request::Allocate {
            container: container.to_string(),
        })
        .context("asking the daemon for an address")?
    {
        Response::Allocation { allocation, .. } => allocation,
        _ => bail!("the daemon answered an allocate request with something else"),
    };
    let spec = attachment(&allocation, netns, ifname);
    // A container attached before keeps its address even if this attempt fails.
    let attached_before = runtime
        .block_on(attach::is_attached(container))
        .unwrap_or(true);
    if let Err(e) = runtime.block_on(attach::attach(&spec)) {
        if !attached_before {
            let release = Request::Release {
                container: container.to_string(),
            };
            if let Err(r) = daemon.ask(release) {
                eprintln!(
                    "weft: could not give back {} of {container}: {r:#}",
                    allocation.address
                );
            }
        }
        return Err(e).with_context(|| {
            format!(
                "attaching {} to bridge {} with {}",
                netns.display(),
                allocation.bridge,
                allocation.address
            )
        });
    }
    Ok(allocation)
}

fn attachment(allocation: &Allocation, netns: &Path, ifname: &str) -> Attachment {
    Attachment {
        container: allocation.container.clone(),
        netns: netns.to_path_buf(),
        ifname: ifname.to_string(),
        address: allocation.address,
        gateway: allocation.gateway,
        cluster_range: allocation.cluster_range,
        bridge: allocation.bridge.clone(),
        mtu: allocation.mtu,
        extra_routes: Vec::new(),
    }
}
