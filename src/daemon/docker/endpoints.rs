//! What the Docker plugin's calls do, run by the pods layer (it owns `pods.json` and talks to
//! the node): addresses from weft's IPAM, Docker's endpoints recorded as pods of source
//! `docker`, their veths made and removed with `weft_mesh::attach` (through [`Plumbing`]).
//!
//! Docker asks its IPAM driver for an address before it creates the endpoint, and that request
//! names no endpoint. So `RequestAddress` allocates under a new key of its own,
//! `docker-<16 hex digits>/docker`, recorded as a pod of source `docker` with no endpoint;
//! `CreateEndpoint` finds that pod by its address (which IPAM hands out once), binds it to the
//! endpoint id and network, and makes the veth (named after the key: the host end
//! `vw...` on bridge `weft`, the container end `vp...` left in the daemon's namespace);
//! `Join` tells Docker to move the container end into the sandbox as `eth<N>`, with the
//! address, the default route through this node's gateway, the gateway on-link and the
//! cluster range through it. `DeleteEndpoint` removes the veth and gives the address back;
//! `ReleaseAddress` gives back an address by its value (after `DeleteEndpoint` it is already
//! free; an address that is no Docker pod's, such as the gateway, is left alone). All of it is
//! in `pods.json`, so a restarted daemon answers for endpoints made before.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::proto::{self, Call, CreateEndpoint, EndpointRef, Join, RequestAddress};
use crate::daemon::api::{pod_key, Allocation, Query, Request, Response};
use crate::daemon::pods::{ask, Plumbing, Pod, PodTable, Source};

/// The bridge whose address is the gateway (the node's `BRIDGE`).
const BRIDGE: &str = "weft";
/// The interface part of a Docker pod's key.
pub const DOCKER_IFNAME: &str = "docker";
/// The container part of a Docker pod's key: this and 16 hex digits.
pub const KEY_PREFIX: &str = "docker-";

/// Runs `call`; the answer is [`Response::Docker`] with the JSON for Docker, or an error.
pub async fn handle(
    table: &mut PodTable,
    call: Call,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Response {
    match run(table, call, driver, plumbing).await {
        Ok(docker) => Response::Docker { ok: true, docker },
        Err(error) => Response::error(error),
    }
}

async fn run(
    table: &mut PodTable,
    call: Call,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Result<Value, String> {
    match call {
        Call::Activate => Ok(proto::activate()),
        Call::NetworkCapabilities => Ok(proto::network_capabilities()),
        Call::IpamCapabilities => Ok(proto::ipam_capabilities()),
        Call::DefaultAddressSpaces => Ok(proto::default_address_spaces()),
        Call::DiscoverNew | Call::DiscoverDelete => Ok(proto::empty()),
        Call::RequestPool(r) => proto::request_pool(&r, range(driver).await?),
        Call::ReleasePool { pool } => {
            proto::check_pool(&pool, range(driver).await?)?;
            Ok(proto::empty())
        }
        Call::CreateNetwork(c) => {
            proto::create_network(&c, range(driver).await?)?;
            info!(network = %c.network.short(), "Docker network created");
            Ok(proto::empty())
        }
        Call::DeleteNetwork { network } => {
            info!(network = %network.short(), "Docker network deleted");
            Ok(proto::empty())
        }
        Call::RequestAddress(r) => request_address(table, r, driver, plumbing).await,
        Call::ReleaseAddress { pool, address } => {
            proto::check_pool(&pool, range(driver).await?)?;
            release_address(table, address, driver, plumbing).await
        }
        Call::CreateEndpoint(c) => create_endpoint(table, c, driver, plumbing).await,
        Call::Join(j) => join(table, j, driver, plumbing).await,
        // Docker moves the interface back out of the sandbox itself; DeleteEndpoint removes it.
        Call::Leave(_) | Call::RevokeExternalConnectivity(_) => Ok(proto::empty()),
        Call::DeleteEndpoint(at) => delete_endpoint(table, &at, driver, plumbing).await,
        Call::EndpointOperInfo(at) => {
            let pod = endpoint_pod(table, &at);
            Ok(proto::oper_info(
                pod.and_then(|p| p.address),
                pod.map(|p| weft_mesh::attach::host_ifname(&p.key()))
                    .as_deref(),
            ))
        }
        Call::ProgramExternalConnectivity {
            publishes_ports, ..
        } => {
            if publishes_ports {
                return Err("weft does not publish ports (docker run -p): containers on weft reach each other on their own addresses on every host, and reach the outside through this node's masquerading".into());
            }
            Ok(proto::empty())
        }
    }
}

/// The cluster range, from the node's status.
async fn range(driver: &mpsc::Sender<Query>) -> Result<Ipv4Net, String> {
    match ask(driver, Request::Status).await {
        Response::Status { status, .. } => status
            .range
            .parse::<Ipv4Net>()
            .map(|r| r.trunc())
            .map_err(|_| format!("the node's range {:?} is not IPv4", status.range)),
        Response::Error { error, .. } => Err(error),
        _ => Err("the daemon answered a status query with something else".into()),
    }
}

fn is_docker_key(container: &str) -> bool {
    container.starts_with(KEY_PREFIX)
}

/// A new pod key for an address Docker asks for.
fn new_container(table: &PodTable) -> String {
    loop {
        let container = format!("{KEY_PREFIX}{:016x}", rand::random::<u64>());
        if table.get(&pod_key(&container, DOCKER_IFNAME)).is_none() {
            return container;
        }
    }
}

fn docker_pod_at(table: &PodTable, address: Ipv4Addr) -> Option<&Pod> {
    table.find(|p| p.source == Source::Docker && p.address.is_some_and(|a| a.addr() == address))
}

fn endpoint_pod<'t>(table: &'t PodTable, at: &EndpointRef) -> Option<&'t Pod> {
    table
        .find(|p| p.source == Source::Docker && p.endpoint.as_deref() == Some(at.endpoint.as_str()))
}

fn allocation_of(answer: Response) -> Result<Allocation, String> {
    match answer {
        Response::Allocation {
            ok: true,
            allocation,
        } => Ok(allocation),
        Response::Error { error, .. } => Err(error),
        other => Err(format!("unexpected answer from the node: {other:?}")),
    }
}

/// `IpamDriver.RequestAddress`: the gateway is this node's bridge address; any other address
/// is allocated from this node's space (the one asked for, or the next free one) under a new
/// key, recorded as a Docker pod without an endpoint yet.
async fn request_address(
    table: &mut PodTable,
    r: RequestAddress,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Result<Value, String> {
    let range = range(driver).await?;
    proto::check_pool(&r.pool, range)?;
    if r.ipv6 {
        return Err("weft hands out IPv4 addresses only".into());
    }
    if r.gateway {
        let gateway = plumbing
            .gateway(BRIDGE)
            .await
            .map_err(|e| format!("reading this node's gateway: {e}"))?
            .ok_or("this node has no gateway yet (no address space, or its datapath is not up): try again shortly")?;
        if let Some(asked) = r.address.filter(|a| *a != gateway.addr()) {
            return Err(format!(
                "the gateway of a weft network is this node's bridge address {}, not {asked}: create the network without --gateway",
                gateway.addr()
            ));
        }
        return Ok(proto::address(gateway));
    }
    if let Some(a) = r.address {
        if !range.contains(&a) {
            return Err(format!("{a} is not in the cluster range {range}"));
        }
    }
    let container = new_container(table);
    let key = pod_key(&container, DOCKER_IFNAME);
    let mut pod = Pod {
        container: container.clone(),
        ifname: DOCKER_IFNAME.into(),
        address: None,
        network: None,
        netns: None,
        pod_namespace: None,
        pod_name: None,
        labels: Default::default(),
        name: None,
        source: Source::Docker,
        endpoint: None,
        ports: Vec::new(),
    };
    // Recorded before the address is taken, so no allocation is ever without its pod.
    table
        .put(key.clone(), Some(pod.clone()))
        .map_err(|e| format!("recording the address: {e:#}"))?;
    let request = match r.address {
        Some(address) => Request::AllocateAt {
            container: key.clone(),
            address,
        },
        None => Request::Allocate {
            container: key.clone(),
        },
    };
    match allocation_of(ask(driver, request).await) {
        Ok(allocation) => {
            pod.address = Some(allocation.address);
            info!(key = %key, address = %allocation.address, "address allocated for Docker");
            if let Err(e) = table.put(key, Some(pod)) {
                warn!(error = %format!("{e:#}"), "recording a Docker address");
            }
            Ok(proto::address(allocation.address))
        }
        Err(e) => {
            if let Err(e) = table.put(key, None) {
                warn!(error = %format!("{e:#}"), "taking back the pod of a failed allocation");
            }
            Err(match r.address {
                Some(a) => format!("weft cannot give {a}: {e}"),
                None => e,
            })
        }
    }
}

/// Gives back the address of the Docker pod at `address` (its veth too, if it still has
/// one). Not an error if there is none.
async fn release_address(
    table: &mut PodTable,
    address: Ipv4Addr,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Result<Value, String> {
    let Some(pod) = docker_pod_at(table, address).cloned() else {
        return Ok(proto::empty());
    };
    release(table, &pod, driver, plumbing).await?;
    Ok(proto::empty())
}

/// Removes `pod`'s veth (if any), gives its address back, forgets it.
async fn release(
    table: &mut PodTable,
    pod: &Pod,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Result<(), String> {
    let key = pod.key();
    if !is_docker_key(&pod.container) || pod.source != Source::Docker {
        return Err(format!("{key} is not a Docker pod"));
    }
    plumbing
        .detach(&key)
        .await
        .map_err(|e| format!("removing the interface of {key}: {e}"))?;
    match ask(
        driver,
        Request::Release {
            container: key.clone(),
        },
    )
    .await
    {
        Response::Done { ok: true, .. } => {}
        Response::Error { error, .. } => return Err(error),
        other => return Err(format!("unexpected answer from the node: {other:?}")),
    }
    info!(key = %key, endpoint = pod.endpoint.as_deref().map_or("-", |e| &e[..e.len().min(12)]), address = ?pod.address.map(|a| a.addr()), "Docker address released");
    table
        .put(key, None)
        .map_err(|e| format!("removing the released address's pod: {e:#}"))
}

/// `NetworkDriver.CreateEndpoint`: binds the address's pod to the endpoint and makes its veth.
async fn create_endpoint(
    table: &mut PodTable,
    c: CreateEndpoint,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Result<Value, String> {
    if c.ipv6 {
        return Err("weft carries IPv4 only: the endpoint has an IPv6 address".into());
    }
    let Some(address) = c.address else {
        return Err(
            "the endpoint has no IPv4 address: create the network with --ipam-driver weft".into(),
        );
    };
    let endpoint = c.at.endpoint.as_str();
    let Some(before) = docker_pod_at(table, address.addr()).cloned() else {
        return Err(format!(
            "{} was not handed out by weft's IPAM driver on this node: create the network with -d weft --ipam-driver weft",
            address.addr()
        ));
    };
    if let Some(other) = before.endpoint.as_deref().filter(|e| *e != endpoint) {
        return Err(format!(
            "{} belongs to endpoint {}",
            address.addr(),
            &other[..other.len().min(12)]
        ));
    }
    let key = before.key();
    let allocation = allocation_of(
        ask(
            driver,
            Request::AllocateAt {
                container: key.clone(),
                address: address.addr(),
            },
        )
        .await,
    )?;
    let mut pod = before.clone();
    pod.endpoint = Some(endpoint.to_string());
    pod.network = Some(c.at.network.to_string());
    // Recorded before the veth is made: a restart then still knows whose it is.
    table
        .put(key.clone(), Some(pod))
        .map_err(|e| format!("recording the endpoint: {e:#}"))?;
    let mac = match plumbing
        .prepare(&key, &allocation.bridge, allocation.mtu)
        .await
    {
        Ok(mac) => mac,
        Err(e) => {
            if let Err(e) = table.put(key.clone(), Some(before)) {
                warn!(error = %format!("{e:#}"), "taking back a failed endpoint");
            }
            return Err(format!(
                "making the interface of endpoint {}: {e}",
                c.at.endpoint.short()
            ));
        }
    };
    info!(endpoint = %c.at.endpoint.short(), key = %key, address = %allocation.address, "Docker endpoint created");
    // Docker takes a MAC address from the driver only if it had none.
    Ok(match (c.mac, mac) {
        (None, Some(mac)) => json!({ "Interface": { "MacAddress": format_mac(mac) } }),
        _ => json!({ "Interface": null }),
    })
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `NetworkDriver.Join`: the veth is there (made again if it went missing), and Docker is told
/// what to move into the sandbox and which routes to set.
async fn join(
    table: &mut PodTable,
    j: Join,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Result<Value, String> {
    let Some(before) = endpoint_pod(table, &j.at).cloned() else {
        return Err(format!(
            "endpoint {} is not known to weft on this node",
            j.at.endpoint.short()
        ));
    };
    let Some(address) = before.address else {
        return Err(format!("endpoint {} has no address", j.at.endpoint.short()));
    };
    let key = before.key();
    let allocation = allocation_of(
        ask(
            driver,
            Request::AllocateAt {
                container: key.clone(),
                address: address.addr(),
            },
        )
        .await,
    )?;
    plumbing
        .prepare(&key, &allocation.bridge, allocation.mtu)
        .await
        .map_err(|e| format!("the interface of endpoint {}: {e}", j.at.endpoint.short()))?;
    if before.netns.as_deref() != Some(j.sandbox.as_str()) {
        let mut pod = before;
        pod.netns = Some(j.sandbox.clone());
        if let Err(e) = table.put(key.clone(), Some(pod)) {
            warn!(error = %format!("{e:#}"), "recording a Docker endpoint's sandbox");
        }
    }
    info!(endpoint = %j.at.endpoint.short(), address = %allocation.address, sandbox = %j.sandbox, "Docker endpoint joined");
    Ok(proto::join(
        &weft_mesh::attach::pending_ifname(&key),
        allocation.address,
        allocation.gateway,
        allocation.cluster_range,
    ))
}

/// `NetworkDriver.DeleteEndpoint`: its veth removed, its address given back. An endpoint weft
/// does not know is not an error (deleted before).
async fn delete_endpoint(
    table: &mut PodTable,
    at: &EndpointRef,
    driver: &mpsc::Sender<Query>,
    plumbing: &impl Plumbing,
) -> Result<Value, String> {
    if let Some(pod) = endpoint_pod(table, at).cloned() {
        release(table, &pod, driver, plumbing).await?;
        info!(endpoint = %at.endpoint.short(), "Docker endpoint deleted");
    }
    Ok(proto::empty())
}

/// Records the container names Docker gave its endpoints (endpoint id to name), for
/// `weft pods`.
pub fn learn_names(table: &mut PodTable, names: &[(String, String)]) {
    for (endpoint, name) in names {
        let Some(pod) = table
            .find(|p| p.source == Source::Docker && p.endpoint.as_deref() == Some(endpoint))
            .cloned()
        else {
            continue;
        };
        if pod.name.as_deref() == Some(name.as_str()) {
            continue;
        }
        let key = pod.key();
        let mut pod = pod;
        pod.name = Some(name.clone());
        if let Err(e) = table.put(key, Some(pod)) {
            warn!(error = %format!("{e:#}"), "recording a Docker container's name");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::docker::proto::{decode, Id};
    use crate::daemon::pods::tests::{driver as pods_driver, Fake};
    use crate::daemon::pods::{serve, PodTable};

    const NET: &str = "5c9fd1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";
    const POOL: &str = "weft-10.32.0.0/12";

    /// The node for these tests: the pods test driver, with `status` answered (range
    /// 10.32.0.0/12).
    fn node() -> mpsc::Sender<Query> {
        let (inner, _task) = pods_driver();
        let (tx, mut rx) = mpsc::channel::<Query>(8);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                if q.request == Request::Status {
                    let status = serde_json::from_value(json!({
                        "name": "n0", "node_id": "x", "listen": "192.0.2.1:6783",
                        "gossip_addr": "192.0.2.1:6783", "version": 1, "range": "10.32.0.0/12",
                        "members": {"alive":1,"suspect":0,"failed":0,"left":0,"total":1},
                        "datapath": "userspace", "uptime_secs": 1,
                        "address_space": ["10.32.0.0/12"]
                    }))
                    .expect("status");
                    let _ = q.reply.send(Response::Status { ok: true, status });
                } else if inner.send(q).await.is_err() {
                    return;
                }
            }
        });
        tx
    }

    struct Layer {
        api: mpsc::Sender<Query>,
        fake: Fake,
        dir: tempfile::TempDir,
    }

    fn layer() -> Layer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, rx) = mpsc::channel(8);
        let fake = Fake::default();
        tokio::spawn(serve(
            PodTable::open(dir.path()).expect("open"),
            rx,
            node(),
            fake.clone(),
        ));
        Layer { api, fake, dir }
    }

    impl Layer {
        /// Docker's call `method` with `body`: its JSON, or the error.
        async fn call(&self, method: &str, body: Value) -> Result<Value, String> {
            let call = decode(&format!("/{method}"), body.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            match ask(&self.api, Request::Docker(call)).await {
                Response::Docker { docker, .. } => Ok(docker),
                Response::Error { error, .. } => Err(error),
                other => panic!("{other:?}"),
            }
        }

        async fn pods(&self) -> Vec<Pod> {
            match ask(&self.api, Request::Pods).await {
                Response::Pods { pods, .. } => pods,
                other => panic!("{other:?}"),
            }
        }

        fn log(&self) -> Vec<String> {
            self.fake.log.lock().expect("log").clone()
        }
    }

    fn ep(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    async fn request_address(l: &Layer, ip: Option<&str>) -> Result<String, String> {
        let mut body = json!({"PoolID": POOL, "Address": ip.unwrap_or(""), "Options": null});
        if ip.is_none() {
            body["Address"] = json!("");
        }
        l.call("IpamDriver.RequestAddress", body)
            .await
            .map(|v| v["Address"].as_str().expect("address").to_string())
    }

    async fn create_endpoint(l: &Layer, n: u8, address: &str) -> Result<Value, String> {
        l.call(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NET, "EndpointID": ep(n),
                   "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""},
                   "Options": {}}),
        )
        .await
    }

    /// Docker's sequence for `docker network create` then `docker run` and `docker rm`, as
    /// dockerd 20.10 makes it: addresses from the node, veths through the plumbing, Join's
    /// routes, everything given back and nothing left.
    #[tokio::test]
    async fn a_containers_life_through_the_plugin() {
        let l = layer();
        assert_eq!(
            l.call("Plugin.Activate", Value::Null)
                .await
                .expect("activate")["Implements"],
            json!(["NetworkDriver", "IpamDriver"])
        );
        let pool = l
            .call(
                "IpamDriver.RequestPool",
                json!({"AddressSpace": "weft-local", "Pool": "10.32.0.0/12", "SubPool": "", "Options": {}, "V6": false}),
            )
            .await
            .expect("pool");
        assert_eq!(pool["PoolID"], POOL);
        let gw = l
            .call(
                "IpamDriver.RequestAddress",
                json!({"PoolID": POOL, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
            )
            .await
            .expect("gateway");
        assert_eq!(gw["Address"], "10.32.0.0/12", "the bridge's address");
        l.call(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": NET, "Options": {}, "IPv4Data": [{"AddressSpace": "weft-local", "Pool": "10.32.0.0/12", "Gateway": "10.32.0.0/12"}], "IPv6Data": []}),
        )
        .await
        .expect("network");
        assert!(l.pods().await.is_empty(), "the gateway is no pod");

        let a = request_address(&l, None).await.expect("address");
        assert_eq!(a, "10.32.0.2/12");
        let pods = l.pods().await;
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].source, Source::Docker);
        assert!(pods[0].endpoint.is_none());
        let created = create_endpoint(&l, 1, &a).await.expect("endpoint");
        assert_eq!(created["Interface"]["MacAddress"], "02:00:00:00:00:01");
        let key = pods[0].key();
        assert!(
            l.log().contains(&format!("prepare {key} weft 1420")),
            "{:?}",
            l.log()
        );
        let joined = l
            .call(
                "NetworkDriver.Join",
                json!({"NetworkID": NET, "EndpointID": ep(1), "SandboxKey": "/var/run/docker/netns/abc", "Options": null}),
            )
            .await
            .expect("join");
        assert_eq!(
            joined["InterfaceName"]["SrcName"],
            weft_mesh::attach::pending_ifname(&key)
        );
        assert_eq!(joined["Gateway"], "10.32.0.0");
        let pods = l.pods().await;
        assert_eq!(pods[0].endpoint.as_deref(), Some(ep(1).as_str()));
        assert_eq!(pods[0].network.as_deref(), Some(NET));
        assert_eq!(pods[0].netns.as_deref(), Some("/var/run/docker/netns/abc"));
        let info = l
            .call(
                "NetworkDriver.EndpointOperInfo",
                json!({"NetworkID": NET, "EndpointID": ep(1)}),
            )
            .await
            .expect("info");
        assert_eq!(info["Value"]["address"], a);

        // A second container: the next address; its endpoint cannot take the first's.
        let b = request_address(&l, None).await.expect("address b");
        assert_ne!(a, b);
        let e = create_endpoint(&l, 2, &a)
            .await
            .expect_err("a is endpoint 1's");
        assert!(e.contains("belongs to endpoint"), "{e}");
        let e = create_endpoint(&l, 2, "10.32.0.77/12")
            .await
            .expect_err("not handed out");
        assert!(e.contains("not handed out by weft's IPAM"), "{e}");
        create_endpoint(&l, 2, &b).await.expect("endpoint b");

        // docker rm: Leave, DeleteEndpoint, ReleaseAddress (already free: fine).
        let pair = json!({"NetworkID": NET, "EndpointID": ep(1)});
        l.call("NetworkDriver.Leave", pair.clone())
            .await
            .expect("leave");
        l.call("NetworkDriver.DeleteEndpoint", pair.clone())
            .await
            .expect("delete");
        assert!(l.log().contains(&format!("detach {key}")), "{:?}", l.log());
        let addr_a = a.split('/').next().expect("ip");
        l.call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": POOL, "Address": addr_a}),
        )
        .await
        .expect("release");
        l.call("NetworkDriver.DeleteEndpoint", pair)
            .await
            .expect("deleting twice is fine");
        assert_eq!(l.pods().await.len(), 1, "only b is left");
        // The address is free again: --ip takes it.
        assert_eq!(request_address(&l, Some(addr_a)).await.expect("--ip"), a);

        // Kept across a restart (pods.json): b's endpoint is known, with its address.
        let reopened = PodTable::open(l.dir.path()).expect("reopen");
        assert_eq!(reopened.list(), l.pods().await);
        // ReleaseAddress of b (without DeleteEndpoint) removes its veth too.
        let addr_b = b.split('/').next().expect("ip");
        l.call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": POOL, "Address": addr_b}),
        )
        .await
        .expect("release b");
        assert_eq!(l.pods().await.len(), 1);
        // The gateway's release changes nothing.
        l.call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": POOL, "Address": "10.32.0.0"}),
        )
        .await
        .expect("gateway release");
        assert_eq!(l.pods().await.len(), 1);
    }

    #[tokio::test]
    async fn refusals_are_clear_and_change_nothing() {
        let l = layer();
        let a = request_address(&l, None).await.expect("address");
        let ip = a.split('/').next().expect("ip").to_string();
        let before = l.pods().await;
        for (method, body, says) in [
            (
                "IpamDriver.RequestAddress",
                json!({"PoolID": POOL, "Address": ip}),
                "is in use",
            ),
            (
                "IpamDriver.RequestAddress",
                json!({"PoolID": POOL, "Address": "192.0.2.7"}),
                "not in the cluster range",
            ),
            (
                "IpamDriver.RequestAddress",
                json!({"PoolID": "default/10.0.0.0/8", "Address": ""}),
                "not weft's",
            ),
            (
                "IpamDriver.RequestAddress",
                json!({"PoolID": POOL, "Address": "10.32.0.9", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
                "without --gateway",
            ),
            (
                "IpamDriver.RequestPool",
                json!({"AddressSpace": "weft-local", "Pool": "172.20.0.0/16"}),
                "--subnet 10.32.0.0/12",
            ),
            (
                "NetworkDriver.CreateNetwork",
                json!({"NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16"}]}),
                "--ipam-driver weft",
            ),
            (
                "NetworkDriver.Join",
                json!({"NetworkID": NET, "EndpointID": ep(9), "SandboxKey": "/x"}),
                "not known",
            ),
            (
                "NetworkDriver.ProgramExternalConnectivity",
                json!({"NetworkID": NET, "EndpointID": ep(9), "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80}]}}),
                "does not publish ports",
            ),
            (
                "NetworkDriver.Join",
                json!({"NetworkID": NET, "EndpointID": "../../etc"}),
                "EndpointID",
            ),
        ] {
            let e = l.call(method, body).await.expect_err(method);
            assert!(e.contains(says), "{method}: {e:?} lacks {says:?}");
            assert_eq!(l.pods().await, before, "{method} changed the pods");
        }
        // A failed veth: the endpoint is not bound, the address stays Docker's to release.
        l.fake
            .fail_prepare
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let e = create_endpoint(&l, 3, &a).await.expect_err("no bridge");
        assert!(e.contains("no bridge"), "{e}");
        assert_eq!(l.pods().await, before);
        // Names learned from Docker go to the endpoint's pod only.
        l.fake
            .fail_prepare
            .store(false, std::sync::atomic::Ordering::SeqCst);
        create_endpoint(&l, 3, &a).await.expect("endpoint");
        ask(
            &l.api,
            Request::DockerNames(vec![(ep(3), "web".into()), (ep(4), "other".into())]),
        )
        .await;
        let pods = l.pods().await;
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name.as_deref(), Some("web"));
        // weft attach/detach keep their hands off Docker's pods.
        let key = pods[0].key();
        let (container, ifname) = key.split_once('/').expect("key");
        let d = ask(
            &l.api,
            Request::Detach {
                container: container.into(),
                ifname: ifname.into(),
            },
        )
        .await;
        assert!(
            matches!(d, Response::Error { ref error, .. } if error.contains("Docker")),
            "{d:?}"
        );
        let _ = Id::parse("x");
    }
}
