//! With the Docker engine's API socket (`weft launch --docker-socket PATH`): the names of the
//! containers behind weft's Docker endpoints, for `weft pods` (the plugin protocol never
//! names the container), and the `weft` network, created once this node has address space if
//! Docker has none by that name (as Weave's plugin did).
//!
//! Every [`PERIOD`] it asks the pods layer for Docker endpoints without a name, reads their
//! networks from Docker (`GET /networks/ID`: container names by endpoint id) and hands the
//! names back. Docker's answers are untrusted: bounded (`engine::docker_call`), parsed into
//! the few fields used, names checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::proto::Id;
use crate::cmd::engine::{docker_call, engine_error, is_container_ref, LookupError};
use crate::daemon::api::{Query, Request, Response};
use crate::daemon::pods::{ask, Source};

/// The bridge whose address is the gateway.
const BRIDGE: &str = "weft";
/// The network weft creates.
pub const NETWORK_NAME: &str = "weft";
/// How often names are looked for.
pub const PERIOD: Duration = Duration::from_secs(3);

/// Runs until the task is dropped.
pub async fn run(socket: PathBuf, create_network: bool, pods: mpsc::Sender<Query>) {
    let mut tick = tokio::time::interval(PERIOD);
    let mut network_done = !create_network;
    let mut last_error: Option<String> = None;
    loop {
        tick.tick().await;
        let result = async {
            if !network_done {
                network_done = ensure_network(&socket, &pods).await?;
            }
            learn_names(&socket, &pods).await
        }
        .await;
        match result {
            Ok(()) => last_error = None,
            Err(e) if last_error.as_ref() != Some(&e) => {
                warn!(socket = %socket.display(), error = %e, "Docker engine API");
                last_error = Some(e);
            }
            Err(_) => {}
        }
    }
}

async fn call(
    socket: &Path,
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<Option<(u16, Vec<u8>)>, String> {
    let socket = socket.to_path_buf();
    let answer =
        tokio::task::spawn_blocking(move || docker_call(&socket, method, &path, body.as_deref()))
            .await
            .map_err(|e| format!("the Docker API task failed: {e}"))?;
    match answer {
        Ok(a) => Ok(Some(a)),
        // Docker is not running (yet): nothing to do.
        Err(LookupError::NoEngine) => Ok(None),
        Err(LookupError::Failed(why)) => Err(why),
        Err(LookupError::NotFound) => Ok(None),
    }
}

/// Creates the `weft` network if Docker has none by that name and this node has address
/// space; true once there is one (made now or before).
async fn ensure_network(socket: &Path, pods: &mpsc::Sender<Query>) -> Result<bool, String> {
    let Some((status, body)) =
        call(socket, "GET", format!("/networks/{NETWORK_NAME}"), None).await?
    else {
        return Ok(false);
    };
    match status {
        200 => {
            #[derive(Deserialize)]
            struct Network {
                #[serde(rename = "Driver", default)]
                driver: String,
            }
            let net: Network = serde_json::from_slice(&body)
                .map_err(|e| format!("Docker's description of network weft: {e}"))?;
            if net.driver != NETWORK_NAME {
                return Err(format!(
                    "Docker has a network called {NETWORK_NAME} with driver {:?}, not weft's",
                    net.driver.chars().take(64).collect::<String>()
                ));
            }
            return Ok(true);
        }
        404 => {}
        other => return Err(engine_error(other, &body)),
    }
    let range = match ask(pods, Request::Status).await {
        Response::Status { status, .. } if !status.address_space.is_empty() => status.range,
        // No address space yet: no gateway to give Docker.
        _ => return Ok(false),
    };
    // The gateway Docker will ask for is the bridge's address, there once the datapath has
    // caught up with the address space.
    if !matches!(weft_mesh::attach::bridge_gateway(BRIDGE).await, Ok(Some(_))) {
        return Ok(false);
    }
    let create = serde_json::json!({
        "Name": NETWORK_NAME,
        "Driver": NETWORK_NAME,
        "CheckDuplicate": true,
        "IPAM": { "Driver": NETWORK_NAME, "Config": [{ "Subnet": range }] },
    });
    let Some((status, body)) = call(
        socket,
        "POST",
        "/networks/create".into(),
        Some(create.to_string().into_bytes()),
    )
    .await?
    else {
        return Ok(false);
    };
    match status {
        200 | 201 => {
            info!(network = NETWORK_NAME, subnet = %range, "created the Docker network");
            Ok(true)
        }
        // Made meanwhile by someone else.
        409 => Ok(true),
        other => Err(format!(
            "creating the Docker network {NETWORK_NAME}: {}",
            engine_error(other, &body)
        )),
    }
}

/// Names for the Docker endpoints that have none yet.
async fn learn_names(socket: &Path, pods: &mpsc::Sender<Query>) -> Result<(), String> {
    let Response::Pods { pods: list, .. } = ask(pods, Request::Pods).await else {
        return Ok(());
    };
    let networks: BTreeSet<String> = list
        .iter()
        .filter(|p| p.source == Source::Docker && p.endpoint.is_some() && p.name.is_none())
        .filter_map(|p| p.network.clone())
        .filter(|n| Id::parse(n).is_ok())
        .collect();
    let mut names = Vec::new();
    for network in networks {
        let Some((status, body)) =
            call(socket, "GET", format!("/networks/{network}"), None).await?
        else {
            continue;
        };
        match status {
            200 => names.extend(parse_network(&body)?),
            404 => {}
            other => return Err(engine_error(other, &body)),
        }
    }
    if !names.is_empty() {
        ask(pods, Request::DockerNames(names)).await;
    }
    Ok(())
}

/// (endpoint id, container name) of each container in Docker's description of a network.
pub fn parse_network(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    #[derive(Deserialize)]
    struct Network {
        #[serde(rename = "Containers", default)]
        containers: Option<std::collections::BTreeMap<String, Endpoint>>,
    }
    #[derive(Deserialize)]
    struct Endpoint {
        #[serde(rename = "Name", default)]
        name: String,
        #[serde(rename = "EndpointID", default)]
        endpoint_id: String,
    }
    let net: Network = serde_json::from_slice(body)
        .map_err(|e| format!("Docker's description of a network: {e}"))?;
    Ok(net
        .containers
        .unwrap_or_default()
        .into_values()
        .filter(|e| Id::parse(&e.endpoint_id).is_ok() && is_container_ref(&e.name))
        .map(|e| (e.endpoint_id, e.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_dockers_network_description() {
        let body = br#"{"Name":"weft","Id":"5c9f","Driver":"weft","Containers":{
            "a1":{"Name":"web","EndpointID":"e1","MacAddress":"","IPv4Address":"10.32.0.5/14"},
            "a2":{"Name":"bad name/..","EndpointID":"e2"},
            "a3":{"Name":"db","EndpointID":""}}}"#;
        assert_eq!(
            parse_network(body).expect("parse"),
            vec![("e1".to_string(), "web".to_string())]
        );
        assert_eq!(
            parse_network(br#"{"Containers":null}"#).expect("null"),
            Vec::new()
        );
        assert!(parse_network(b"<html>").is_err());
    }
}
