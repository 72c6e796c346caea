//! Docker's plugin protocol for weft's network and IPAM drivers, without IO: the request of
//! each method decoded into a checked [`Call`] (or a [`ProtoError`] that says what is wrong),
//! and the JSON of the answers.
//!
//! The protocol is libnetwork's remote driver API (docs/remote.md) and remote IPAM API
//! (docs/ipam.md): every call is an HTTP/1.1 `POST /Method.Name` with a JSON body (no body, or
//! `null`, for the calls that take no arguments), answered with a JSON object of content type
//! [`CONTENT_TYPE`]. A failed call is answered with `{"Err": "..."}` and an error status.
//!
//! Field names are Go's (`NetworkID`, `IPv4Data`, ...). Go writes a nil map, slice or pointer
//! as `null`, so every map, list and object may be `null` (read as empty); unknown fields are
//! ignored (newer Docker versions add some), but every field weft uses is checked: ids are
//! 1 to [`MAX_ID_LEN`] characters of `[0-9A-Za-z_.-]`, addresses parse as IPv4 (an IPv6 one is
//! kept apart, for a clear refusal later), MAC addresses as six hex bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// The content type of Docker's plugin protocol.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// Largest request body read; Docker's are a few hundred bytes (network options and labels
/// make `CreateNetwork` the largest).
pub const MAX_BODY_LEN: usize = 256 * 1024;
/// Longest id (network, endpoint, pool) taken; Docker's are 64 hex digits.
pub const MAX_ID_LEN: usize = 128;
/// Longest sandbox key (a path) taken.
pub const MAX_PATH_LEN: usize = 4096;
/// `RequestAddress` option saying what the address is for.
pub const ADDRESS_TYPE_OPTION: &str = "RequestAddressType";
/// Its value for a network's gateway.
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";
/// The option (and IPAM request option) that carries an endpoint's MAC address.
pub const MAC_ADDRESS_OPTION: &str = "com.docker.network.endpoint.macaddress";
/// The Join/ProgramExternalConnectivity option with the ports to publish (`docker run -p`).
pub const PORT_MAP_OPTION: &str = "com.docker.network.portmap";
/// weft's address spaces (it has one range: both names stand for it).
pub const LOCAL_ADDRESS_SPACE: &str = "weft-local";
pub const GLOBAL_ADDRESS_SPACE: &str = "weft-global";
/// The name Docker gives the container end in the sandbox: this and a number (`eth0`).
pub const DST_PREFIX: &str = "eth";
/// Docker's route types in a Join answer.
pub const ROUTE_NEXT_HOP: u8 = 0;
pub const ROUTE_CONNECTED: u8 = 1;

/// Every method weft serves, by its URL path without the leading `/`.
pub const METHODS: [&str; 19] = [
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.DiscoverDelete",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
];

/// A Docker id (network, endpoint): checked, so it can go into logs, files and names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(String);

impl Id {
    pub fn parse(text: &str) -> Result<Id, String> {
        if text.is_empty() || text.len() > MAX_ID_LEN {
            return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err("may hold only letters, digits, '_', '.' and '-'".into());
        }
        Ok(Id(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters, as `docker` shows ids.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A network and one of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRef {
    pub network: Id,
    pub endpoint: Id,
}

/// One entry of `IPv4Data`: what the IPAM driver gave the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolData {
    pub address_space: String,
    pub pool: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Net>,
    pub aux_addresses: BTreeMap<String, Ipv4Net>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateNetwork {
    pub network: Id,
    pub ipv4: Vec<PoolData>,
    /// Entries in `IPv6Data` (weft refuses IPv6 networks).
    pub ipv6: usize,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEndpoint {
    pub at: EndpointRef,
    /// The address weft's IPAM driver gave it, with its prefix.
    pub address: Option<Ipv4Net>,
    /// An IPv6 address was given (refused).
    pub ipv6: bool,
    pub mac: Option<[u8; 6]>,
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub at: EndpointRef,
    /// The sandbox's network namespace, as dockerd sees it.
    pub sandbox: String,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPool {
    pub address_space: String,
    pub pool: Option<IpNet>,
    pub sub_pool: Option<IpNet>,
    pub v6: bool,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAddress {
    pub pool: String,
    /// The address asked for (`docker run --ip`, `--gateway`, `--aux-address`).
    pub address: Option<Ipv4Addr>,
    /// An IPv6 address was asked for (refused).
    pub ipv6: bool,
    /// For the network's gateway.
    pub gateway: bool,
    pub mac: Option<[u8; 6]>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Activate,
    NetworkCapabilities,
    CreateNetwork(CreateNetwork),
    DeleteNetwork {
        network: Id,
    },
    CreateEndpoint(CreateEndpoint),
    DeleteEndpoint(EndpointRef),
    EndpointOperInfo(EndpointRef),
    Join(Join),
    Leave(EndpointRef),
    DiscoverNew,
    DiscoverDelete,
    ProgramExternalConnectivity {
        at: EndpointRef,
        /// Ports to publish (`docker run -p`), which weft does not do.
        publishes_ports: bool,
    },
    RevokeExternalConnectivity(EndpointRef),
    IpamCapabilities,
    DefaultAddressSpaces,
    RequestPool(RequestPool),
    ReleasePool {
        pool: String,
    },
    RequestAddress(RequestAddress),
    ReleaseAddress {
        pool: String,
        address: Ipv4Addr,
    },
}

/// Why a request was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// No such method (HTTP 404: Docker then knows the plugin lacks it).
    UnknownMethod(String),
    /// The body does not fit the method (HTTP 400).
    Malformed { method: &'static str, why: String },
}

impl ProtoError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ProtoError::UnknownMethod(_) => 404,
            ProtoError::Malformed { .. } => 400,
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownMethod(path) => write!(
                f,
                "weft's Docker plugin has no method {:?}",
                path.chars().take(80).collect::<String>()
            ),
            ProtoError::Malformed { method, why } => write!(f, "bad {method} request: {why}"),
        }
    }
}

/// Decodes the request for URL path `path` (`/NetworkDriver.Join`) with body `body`.
pub fn decode(path: &str, body: &[u8]) -> Result<Call, ProtoError> {
    let name = path.strip_prefix('/').unwrap_or(path);
    let Some(method) = METHODS.iter().copied().find(|m| *m == name) else {
        return Err(ProtoError::UnknownMethod(path.to_string()));
    };
    let bad = |why: String| ProtoError::Malformed { method, why };
    if body.len() > MAX_BODY_LEN {
        return Err(bad(format!("body longer than {MAX_BODY_LEN} bytes")));
    }
    decode_method(method, body).map_err(bad)
}

fn decode_method(method: &'static str, body: &[u8]) -> Result<Call, String> {
    Ok(match method {
        // No arguments: whatever the body is, it is not read.
        "Plugin.Activate" => Call::Activate,
        "NetworkDriver.GetCapabilities" => Call::NetworkCapabilities,
        "IpamDriver.GetCapabilities" => Call::IpamCapabilities,
        "IpamDriver.GetDefaultAddressSpaces" => Call::DefaultAddressSpaces,
        "NetworkDriver.DiscoverNew" => {
            parse::<Discovery>(body)?;
            Call::DiscoverNew
        }
        "NetworkDriver.DiscoverDelete" => {
            parse::<Discovery>(body)?;
            Call::DiscoverDelete
        }
        "NetworkDriver.CreateNetwork" => {
            let r: WireCreateNetwork = parse(body)?;
            Call::CreateNetwork(CreateNetwork {
                network: id("NetworkID", &r.network_id)?,
                ipv4: r
                    .ipv4_data
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| pool_data(i, d))
                    .collect::<Result<_, _>>()?,
                ipv6: r.ipv6_data.map_or(0, |d| d.len()),
            })
        }
        "NetworkDriver.DeleteNetwork" => {
            let r: WireNetwork = parse(body)?;
            Call::DeleteNetwork {
                network: id("NetworkID", &r.network_id)?,
            }
        }
        "NetworkDriver.CreateEndpoint" => {
            let r: WireCreateEndpoint = parse(body)?;
            let iface = r.interface.unwrap_or_default();
            let (address, ipv6) = match non_empty(iface.address) {
                None => (None, false),
                Some(text) => match text.parse::<IpNet>() {
                    Ok(IpNet::V4(net)) => (Some(net), false),
                    Ok(IpNet::V6(_)) => (None, true),
                    Err(_) => {
                        return Err(format!(
                            "Interface.Address {text:?} is not an address/prefix"
                        ))
                    }
                },
            };
            let ipv6 = ipv6 || non_empty(iface.address_ipv6).is_some();
            Call::CreateEndpoint(CreateEndpoint {
                at: endpoint(&r.network_id, &r.endpoint_id)?,
                address,
                ipv6,
                mac: non_empty(iface.mac_address)
                    .map(|m| mac("Interface.MacAddress", &m))
                    .transpose()?,
            })
        }
        "NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint(endpoint_of(body)?),
        "NetworkDriver.EndpointOperInfo" => Call::EndpointOperInfo(endpoint_of(body)?),
        "NetworkDriver.Leave" => Call::Leave(endpoint_of(body)?),
        "NetworkDriver.RevokeExternalConnectivity" => {
            Call::RevokeExternalConnectivity(endpoint_of(body)?)
        }
        "NetworkDriver.Join" => {
            let r: WireJoin = parse(body)?;
            let sandbox = r.sandbox_key.unwrap_or_default();
            if sandbox.len() > MAX_PATH_LEN || sandbox.contains('\0') {
                return Err(format!(
                    "SandboxKey must be a path of at most {MAX_PATH_LEN} bytes"
                ));
            }
            Call::Join(Join {
                at: endpoint(&r.network_id, &r.endpoint_id)?,
                sandbox,
            })
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let r: WireExternal = parse(body)?;
            let publishes_ports = r
                .options
                .as_ref()
                .and_then(|o| o.get(PORT_MAP_OPTION))
                .is_some_and(|ports| ports.as_array().is_some_and(|a| !a.is_empty()));
            Call::ProgramExternalConnectivity {
                at: endpoint(&r.network_id, &r.endpoint_id)?,
                publishes_ports,
            }
        }
        "IpamDriver.RequestPool" => {
            let r: WireRequestPool = parse(body)?;
            let net = |field: &str, text: Option<String>| {
                non_empty(text)
                    .map(|t| {
                        t.parse::<IpNet>()
                            .map_err(|_| format!("{field} {t:?} is not an address/prefix"))
                    })
                    .transpose()
            };
            let space = r.address_space.unwrap_or_default();
            text_field("AddressSpace", &space)?;
            Call::RequestPool(RequestPool {
                address_space: space,
                pool: net("Pool", r.pool)?,
                sub_pool: net("SubPool", r.sub_pool)?,
                v6: r.v6.unwrap_or(false),
            })
        }
        "IpamDriver.ReleasePool" => {
            let r: WirePool = parse(body)?;
            Call::ReleasePool {
                pool: pool_id(r.pool_id)?,
            }
        }
        "IpamDriver.RequestAddress" => {
            let r: WireRequestAddress = parse(body)?;
            let (address, ipv6) = match non_empty(r.address) {
                None => (None, false),
                Some(text) => match text.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(a)) => (Some(a), false),
                    Ok(std::net::IpAddr::V6(_)) => (None, true),
                    Err(_) => return Err(format!("Address {text:?} is not an IP address")),
                },
            };
            let options = r.options.unwrap_or_default();
            let gateway = match options.get(ADDRESS_TYPE_OPTION).map(String::as_str) {
                None | Some("") => false,
                Some(GATEWAY_ADDRESS_TYPE) => true,
                Some(other) => {
                    return Err(format!(
                        "{ADDRESS_TYPE_OPTION} {:?} is not known (only {GATEWAY_ADDRESS_TYPE})",
                        other.chars().take(80).collect::<String>()
                    ))
                }
            };
            Call::RequestAddress(RequestAddress {
                pool: pool_id(r.pool_id)?,
                address,
                ipv6,
                gateway,
                mac: options
                    .get(MAC_ADDRESS_OPTION)
                    .filter(|m| !m.is_empty())
                    .map(|m| mac(MAC_ADDRESS_OPTION, m))
                    .transpose()?,
            })
        }
        "IpamDriver.ReleaseAddress" => {
            let r: WireReleaseAddress = parse(body)?;
            let text = r.address.unwrap_or_default();
            let address = text
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("Address {text:?} is not an IPv4 address"))?;
            Call::ReleaseAddress {
                pool: pool_id(r.pool_id)?,
                address,
            }
        }
        other => return Err(format!("{other} is listed but not decoded (a bug)")),
    })
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    if text.trim().is_empty() {
        return Err("the body is empty; expected a JSON object".into());
    }
    serde_json::from_str(text).map_err(|e| format!("{e}"))
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

fn id(field: &str, text: &Option<String>) -> Result<Id, String> {
    let text = text.as_deref().unwrap_or_default();
    Id::parse(text).map_err(|why| {
        format!(
            "{field} {:?} {why}",
            text.chars().take(MAX_ID_LEN + 1).collect::<String>()
        )
    })
}

fn endpoint(network: &Option<String>, endpoint: &Option<String>) -> Result<EndpointRef, String> {
    Ok(EndpointRef {
        network: id("NetworkID", network)?,
        endpoint: id("EndpointID", endpoint)?,
    })
}

fn endpoint_of(body: &[u8]) -> Result<EndpointRef, String> {
    let r: WireEndpoint = parse(body)?;
    endpoint(&r.network_id, &r.endpoint_id)
}

/// A pool id: only checked for size and printable characters (weft makes its own, but must
/// answer about any).
fn pool_id(text: Option<String>) -> Result<String, String> {
    let text = text.unwrap_or_default();
    if text.is_empty() {
        return Err("PoolID is empty".into());
    }
    text_field("PoolID", &text)?;
    Ok(text)
}

fn text_field(field: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_ID_LEN || text.chars().any(char::is_control) {
        return Err(format!(
            "{field} must be at most {MAX_ID_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff` (or with '-').
fn mac(field: &str, text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{field} {text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn pool_data(i: usize, d: WireIpamData) -> Result<PoolData, String> {
    let net = |field: &str, text: Option<String>| -> Result<Option<Ipv4Net>, String> {
        match non_empty(text) {
            None => Ok(None),
            Some(t) => t
                .parse::<Ipv4Net>()
                .map(Some)
                .map_err(|_| format!("IPv4Data[{i}].{field} {t:?} is not an IPv4 address/prefix")),
        }
    };
    let address_space = d.address_space.unwrap_or_default();
    text_field("AddressSpace", &address_space)?;
    let mut aux = BTreeMap::new();
    for (k, v) in d.aux_addresses.unwrap_or_default() {
        text_field("AuxAddresses key", &k)?;
        let Some(a) = net("AuxAddresses", Some(v))? else {
            return Err(format!("IPv4Data[{i}].AuxAddresses[{k:?}] is empty"));
        };
        aux.insert(k, a);
    }
    Ok(PoolData {
        address_space,
        pool: net("Pool", d.pool)?,
        gateway: net("Gateway", d.gateway)?,
        aux_addresses: aux,
    })
}

// The requests as Docker writes them.

#[derive(Deserialize)]
struct WireNetwork {
    #[serde(rename = "NetworkID", default)]
    network_id: Option<String>,
}

#[derive(Deserialize)]
struct WireEndpoint {
    #[serde(rename = "NetworkID", default)]
    network_id: Option<String>,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: Option<String>,
}

#[derive(Deserialize)]
struct WireIpamData {
    #[serde(rename = "AddressSpace", default)]
    address_space: Option<String>,
    #[serde(rename = "Pool", default)]
    pool: Option<String>,
    #[serde(rename = "Gateway", default)]
    gateway: Option<String>,
    #[serde(rename = "AuxAddresses", default)]
    aux_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct WireCreateNetwork {
    #[serde(rename = "NetworkID", default)]
    network_id: Option<String>,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Option<Vec<WireIpamData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<Value>>,
    #[serde(rename = "Options", default)]
    #[allow(dead_code)]
    options: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize, Default)]
struct WireInterface {
    #[serde(rename = "Address", default)]
    address: Option<String>,
    #[serde(rename = "AddressIPv6", default)]
    address_ipv6: Option<String>,
    #[serde(rename = "MacAddress", default)]
    mac_address: Option<String>,
}

#[derive(Deserialize)]
struct WireCreateEndpoint {
    #[serde(rename = "NetworkID", default)]
    network_id: Option<String>,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: Option<String>,
    #[serde(rename = "Interface", default)]
    interface: Option<WireInterface>,
    #[serde(rename = "Options", default)]
    #[allow(dead_code)]
    options: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct WireJoin {
    #[serde(rename = "NetworkID", default)]
    network_id: Option<String>,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: Option<String>,
    #[serde(rename = "SandboxKey", default)]
    sandbox_key: Option<String>,
    #[serde(rename = "Options", default)]
    #[allow(dead_code)]
    options: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct WireExternal {
    #[serde(rename = "NetworkID", default)]
    network_id: Option<String>,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: Option<String>,
    #[serde(rename = "Options", default)]
    options: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct Discovery {
    #[serde(rename = "DiscoveryType", default)]
    #[allow(dead_code)]
    discovery_type: Option<i64>,
}

#[derive(Deserialize)]
struct WireRequestPool {
    #[serde(rename = "AddressSpace", default)]
    address_space: Option<String>,
    #[serde(rename = "Pool", default)]
    pool: Option<String>,
    #[serde(rename = "SubPool", default)]
    sub_pool: Option<String>,
    #[serde(rename = "Options", default)]
    #[allow(dead_code)]
    options: Option<BTreeMap<String, String>>,
    #[serde(rename = "V6", default)]
    v6: Option<bool>,
}

#[derive(Deserialize)]
struct WirePool {
    #[serde(rename = "PoolID", default)]
    pool_id: Option<String>,
}

#[derive(Deserialize)]
struct WireRequestAddress {
    #[serde(rename = "PoolID", default)]
    pool_id: Option<String>,
    #[serde(rename = "Address", default)]
    address: Option<String>,
    #[serde(rename = "Options", default)]
    options: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct WireReleaseAddress {
    #[serde(rename = "PoolID", default)]
    pool_id: Option<String>,
    #[serde(rename = "Address", default)]
    address: Option<String>,
}

// The answers.

/// A failed call's body.
pub fn error_body(message: &str) -> Value {
    json!({ "Err": message })
}

/// `Plugin.Activate`: weft is a network driver and an IPAM driver.
pub fn activate() -> Value {
    json!({ "Implements": ["NetworkDriver", "IpamDriver"] })
}

/// `NetworkDriver.GetCapabilities`: allocations are this node's own (no key-value store), and
/// the network reaches every node of the mesh.
pub fn network_capabilities() -> Value {
    json!({ "Scope": "local", "ConnectivityScope": "global" })
}

/// `IpamDriver.GetCapabilities`: no MAC addresses needed, nothing to replay (weft keeps its
/// allocations itself).
pub fn ipam_capabilities() -> Value {
    json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false })
}

pub fn default_address_spaces() -> Value {
    json!({
        "LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
        "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE,
    })
}

/// An empty success (`{}`).
pub fn empty() -> Value {
    json!({})
}

/// The pool id weft gives the cluster range.
pub fn pool_id_of(range: Ipv4Net) -> String {
    format!("weft-{range}")
}

/// Checks a `RequestPool` against the cluster range: the pool is the whole range, asked for
/// by leaving `--subnet` out or by giving exactly the range.
pub fn request_pool(r: &RequestPool, range: Ipv4Net) -> Result<Value, String> {
    if r.v6 || matches!(r.pool, Some(IpNet::V6(_))) {
        return Err("weft hands out IPv4 addresses only: create the network without --ipv6".into());
    }
    match r.pool {
        None => {}
        Some(IpNet::V4(p)) if p.trunc() == range => {}
        Some(p) => {
            return Err(format!(
                "weft's pool is the cluster range {range}, not {p}: give --subnet {range} or no --subnet"
            ))
        }
    }
    if let Some(sub) = r.sub_pool {
        return Err(format!(
            "weft hands out addresses from this node's share of {range} itself: --ip-range {sub} is not supported"
        ));
    }
    Ok(json!({
        "PoolID": pool_id_of(range),
        "Pool": range.to_string(),
        "Data": {},
    }))
}

/// Checks that `pool` is the id [`request_pool`] gave for `range`.
pub fn check_pool(pool: &str, range: Ipv4Net) -> Result<(), String> {
    if pool == pool_id_of(range) {
        Ok(())
    } else {
        Err(format!(
            "pool {:?} is not weft's (weft's is {:?}, the cluster range)",
            pool.chars().take(MAX_ID_LEN).collect::<String>(),
            pool_id_of(range)
        ))
    }
}

/// `RequestAddress`'s answer.
pub fn address(address: Ipv4Net) -> Value {
    json!({ "Address": address.to_string(), "Data": {} })
}

/// Checks a `CreateNetwork` against the cluster range: weft's IPAM driver must have made it
/// (the pool is the cluster range), IPv4 only.
pub fn create_network(c: &CreateNetwork, range: Ipv4Net) -> Result<(), String> {
    if c.ipv6 > 0 {
        return Err("weft carries IPv4 only: create the network without --ipv6".into());
    }
    let [data] = c.ipv4.as_slice() else {
        return Err(format!(
            "a weft network has one IPv4 pool, the cluster range {range}; got {}",
            c.ipv4.len()
        ));
    };
    match data.pool {
        Some(p) if p.trunc() == range => Ok(()),
        other => Err(format!(
            "the weft network driver needs weft's IPAM driver, whose pool is the cluster range {range} (got {}): docker network create -d weft --ipam-driver weft --subnet {range} weft",
            other.map_or_else(|| "none".to_string(), |p| p.to_string())
        )),
    }
}

/// The routes Docker adds in the sandbox for an endpoint at `address` behind `gateway`: the
/// gateway on-link, then the cluster range through it unless the address's own subnet covers
/// it (the same routes `weft_mesh::attach` sets; the default route comes from `Gateway`).
pub fn static_routes(address: Ipv4Net, gateway: Ipv4Addr, range: Ipv4Net) -> Vec<Value> {
    let mut routes = vec![json!({
        "Destination": format!("{gateway}/32"),
        "RouteType": ROUTE_CONNECTED,
    })];
    if !address.trunc().contains(&range) {
        routes.push(json!({
            "Destination": range.to_string(),
            "RouteType": ROUTE_NEXT_HOP,
            "NextHop": gateway.to_string(),
        }));
    }
    routes
}

/// `Join`'s answer: move `src_name` into the sandbox as `eth<N>`, default route via the
/// gateway, and the [`static_routes`].
pub fn join(src_name: &str, address: Ipv4Net, gateway: Ipv4Addr, range: Ipv4Net) -> Value {
    json!({
        "InterfaceName": { "SrcName": src_name, "DstPrefix": DST_PREFIX },
        "Gateway": gateway.to_string(),
        "StaticRoutes": static_routes(address, gateway, range),
        "DisableGatewayService": false,
    })
}

/// `EndpointOperInfo`'s answer.
pub fn oper_info(address: Option<Ipv4Net>, host_ifname: Option<&str>) -> Value {
    let mut value = serde_json::Map::new();
    if let Some(a) = address {
        value.insert("address".into(), json!(a.to_string()));
    }
    if let Some(n) = host_ifname {
        value.insert("host_interface".into(), json!(n));
    }
    json!({ "Value": value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NET: &str = "5c9fd1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";
    const EP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn range() -> Ipv4Net {
        "10.32.0.0/12".parse().expect("range")
    }

    fn ep() -> EndpointRef {
        EndpointRef {
            network: Id::parse(NET).expect("id"),
            endpoint: Id::parse(EP).expect("id"),
        }
    }

    /// Requests as dockerd 20.10 writes them (Go's encoding/json: nil maps are `null`).
    #[test]
    fn dockers_requests_decode() {
        assert_eq!(decode("/Plugin.Activate", b""), Ok(Call::Activate));
        assert_eq!(
            decode("/NetworkDriver.GetCapabilities", b"null\n"),
            Ok(Call::NetworkCapabilities)
        );
        let create = format!(
            r#"{{"NetworkID":"{NET}","Options":{{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{{}}}},"IPv4Data":[{{"AddressSpace":"weft-local","Gateway":"10.32.0.0/12","Pool":"10.32.0.0/12"}}],"IPv6Data":[]}}"#
        );
        let Ok(Call::CreateNetwork(c)) = decode("/NetworkDriver.CreateNetwork", create.as_bytes())
        else {
            panic!("CreateNetwork");
        };
        assert_eq!(c.network.as_str(), NET);
        assert_eq!(c.ipv4[0].pool, Some(range()));
        assert_eq!(c.ipv6, 0);
        assert_eq!(create_network(&c, range()), Ok(()));

        let endpoint = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Interface":{{"Address":"10.32.0.5/14","AddressIPv6":"","MacAddress":""}},"Options":{{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}}}"#
        );
        assert_eq!(
            decode("/NetworkDriver.CreateEndpoint", endpoint.as_bytes()),
            Ok(Call::CreateEndpoint(CreateEndpoint {
                at: ep(),
                address: Some("10.32.0.5/14".parse().expect("net")),
                ipv6: false,
                mac: None,
            }))
        );
        let join = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","SandboxKey":"/var/run/docker/netns/1b2c3d","Options":null}}"#
        );
        assert_eq!(
            decode("/NetworkDriver.Join", join.as_bytes()),
            Ok(Call::Join(Join {
                at: ep(),
                sandbox: "/var/run/docker/netns/1b2c3d".into()
            }))
        );
        let pair = format!(r#"{{"NetworkID":"{NET}","EndpointID":"{EP}"}}"#);
        for (path, want) in [
            ("/NetworkDriver.Leave", Call::Leave(ep())),
            ("/NetworkDriver.DeleteEndpoint", Call::DeleteEndpoint(ep())),
            (
                "/NetworkDriver.EndpointOperInfo",
                Call::EndpointOperInfo(ep()),
            ),
            (
                "/NetworkDriver.RevokeExternalConnectivity",
                Call::RevokeExternalConnectivity(ep()),
            ),
        ] {
            assert_eq!(decode(path, pair.as_bytes()), Ok(want), "{path}");
        }
        let external = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Options":{{"com.docker.network.portmap":[{{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}}]}}}}"#
        );
        assert_eq!(
            decode(
                "/NetworkDriver.ProgramExternalConnectivity",
                external.as_bytes()
            ),
            Ok(Call::ProgramExternalConnectivity {
                at: ep(),
                publishes_ports: true
            })
        );
        assert_eq!(
            decode(
                "/IpamDriver.RequestPool",
                br#"{"AddressSpace":"weft-local","Pool":"","SubPool":"","Options":null,"V6":false}"#
            ),
            Ok(Call::RequestPool(RequestPool {
                address_space: "weft-local".into(),
                pool: None,
                sub_pool: None,
                v6: false
            }))
        );
        assert_eq!(
            decode(
                "/IpamDriver.RequestAddress",
                br#"{"PoolID":"weft-10.32.0.0/12","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#
            ),
            Ok(Call::RequestAddress(RequestAddress {
                pool: "weft-10.32.0.0/12".into(),
                address: None,
                ipv6: false,
                gateway: true,
                mac: None
            }))
        );
        assert_eq!(
            decode(
                "/IpamDriver.RequestAddress",
                br#"{"PoolID":"weft-10.32.0.0/12","Address":"10.32.0.9","Options":{"com.docker.network.endpoint.macaddress":"02:42:0a:20:00:09"}}"#
            ),
            Ok(Call::RequestAddress(RequestAddress {
                pool: "weft-10.32.0.0/12".into(),
                address: Some(Ipv4Addr::new(10, 32, 0, 9)),
                ipv6: false,
                gateway: false,
                mac: Some([2, 0x42, 10, 32, 0, 9])
            }))
        );
        assert_eq!(
            decode(
                "/IpamDriver.ReleaseAddress",
                br#"{"PoolID":"weft-10.32.0.0/12","Address":"10.32.0.9"}"#
            ),
            Ok(Call::ReleaseAddress {
                pool: "weft-10.32.0.0/12".into(),
                address: Ipv4Addr::new(10, 32, 0, 9)
            })
        );
        assert_eq!(
            decode(
                "/NetworkDriver.DiscoverNew",
                br#"{"DiscoveryType":1,"DiscoveryData":{"Address":"192.0.2.1","self":true}}"#
            ),
            Ok(Call::DiscoverNew)
        );
    }

    #[test]
    fn bad_requests_are_refused_with_what_is_wrong() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("/NetworkDriver.Join", b"", "empty"),
            ("/NetworkDriver.Join", b"{", "EOF"),
            ("/NetworkDriver.Join", b"[1]", "invalid type"),
            ("/NetworkDriver.Join", br#"{"NetworkID":"n"}"#, "EndpointID"),
            (
                "/NetworkDriver.Leave",
                br#"{"NetworkID":"n/../x","EndpointID":"e"}"#,
                "NetworkID",
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                br#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.32.0.300/12"}}"#,
                "Interface.Address",
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                br#"{"NetworkID":"n","EndpointID":"e","Interface":{"MacAddress":"zz:42"}}"#,
                "MAC",
            ),
            (
                "/IpamDriver.RequestAddress",
                br#"{"PoolID":"","Address":""}"#,
                "PoolID",
            ),
            (
                "/IpamDriver.RequestAddress",
                br#"{"PoolID":"p","Address":"ten"}"#,
                "not an IP",
            ),
            (
                "/IpamDriver.RequestAddress",
                br#"{"PoolID":"p","Options":{"RequestAddressType":"x"}}"#,
                "RequestAddressType",
            ),
            (
                "/IpamDriver.ReleaseAddress",
                br#"{"PoolID":"p","Address":"fe80::1"}"#,
                "IPv4",
            ),
            (
                "/IpamDriver.RequestPool",
                br#"{"AddressSpace":"a","Pool":"10.0.0.0/33"}"#,
                "Pool",
            ),
            (
                "/NetworkDriver.CreateNetwork",
                br#"{"NetworkID":"n","IPv4Data":[{"AddressSpace":"a","Pool":"x"}]}"#,
                "IPv4Data[0].Pool",
            ),
            ("/NetworkDriver.Join", b"\xff\xfe", "UTF-8"),
        ];
        for (path, body, says) in cases {
            match decode(path, body) {
                Err(e @ ProtoError::Malformed { .. }) => {
                    assert_eq!(e.status(), 400);
                    assert!(e.to_string().contains(says), "{path}: {e} lacks {says:?}");
                }
                other => panic!("{path} {:?}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        let e = decode("/NetworkDriver.Frobnicate", b"{}").expect_err("unknown");
        assert_eq!(e.status(), 404);
        assert!(e.to_string().contains("Frobnicate"), "{e}");
        let big = vec![b' '; MAX_BODY_LEN + 1];
        let e = decode("/NetworkDriver.Join", &big).expect_err("too long");
        assert!(e.to_string().contains("longer"), "{e}");
    }

    #[test]
    fn pools_and_networks_are_the_cluster_range_only() {
        let r = |pool: Option<&str>, sub: Option<&str>, v6| RequestPool {
            address_space: LOCAL_ADDRESS_SPACE.into(),
            pool: pool.map(|p| p.parse().expect("net")),
            sub_pool: sub.map(|p| p.parse().expect("net")),
            v6,
        };
        let ok = request_pool(&r(None, None, false), range()).expect("default pool");
        assert_eq!(ok["Pool"], "10.32.0.0/12");
        assert_eq!(ok["PoolID"], pool_id_of(range()));
        assert_eq!(
            request_pool(&r(Some("10.32.0.0/12"), None, false), range()).expect("same"),
            ok,
            "the same request gives the same pool"
        );
        for (bad, says) in [
            (
                r(Some("10.40.0.0/16"), None, false),
                "--subnet 10.32.0.0/12",
            ),
            (r(Some("10.32.0.0/16"), None, false), "not 10.32.0.0/16"),
            (r(None, None, true), "IPv4"),
            (r(Some("fd00::/64"), None, false), "IPv4"),
            (r(None, Some("10.32.1.0/24"), false), "--ip-range"),
        ] {
            let e = request_pool(&bad, range()).expect_err("refused");
            assert!(e.contains(says), "{e}");
        }
        assert!(check_pool(&pool_id_of(range()), range()).is_ok());
        assert!(check_pool("default/10.0.0.0/8", range()).is_err());

        let net = |pool: &str, ipv6| CreateNetwork {
            network: Id::parse("n").expect("id"),
            ipv4: vec![PoolData {
                address_space: "x".into(),
                pool: Some(pool.parse().expect("net")),
                gateway: None,
                aux_addresses: BTreeMap::new(),
            }],
            ipv6,
        };
        assert!(create_network(&net("10.32.0.0/12", 0), range()).is_ok());
        let e = create_network(&net("172.18.0.0/16", 0), range()).expect_err("default ipam");
        assert!(e.contains("--ipam-driver weft"), "{e}");
        assert!(create_network(&net("10.32.0.0/12", 1), range()).is_err());
    }

    #[test]
    fn join_routes_the_cluster_range_through_the_gateway() {
        let gw = Ipv4Addr::new(10, 32, 0, 1);
        let j = join("vp0123", "10.32.0.5/14".parse().expect("net"), gw, range());
        assert_eq!(j["InterfaceName"]["SrcName"], "vp0123");
        assert_eq!(j["InterfaceName"]["DstPrefix"], "eth");
        assert_eq!(j["Gateway"], "10.32.0.1");
        let routes = j["StaticRoutes"].as_array().expect("routes");
        assert_eq!(routes[0]["Destination"], "10.32.0.1/32");
        assert_eq!(routes[0]["RouteType"], 1);
        assert_eq!(routes[1]["Destination"], "10.32.0.0/12");
        assert_eq!(routes[1]["NextHop"], "10.32.0.1");
        assert_eq!(routes[1]["RouteType"], 0);
        // A block as wide as the range: it is on-link already.
        let wide = join("vp", "10.32.0.5/12".parse().expect("net"), gw, range());
        assert_eq!(wide["StaticRoutes"].as_array().map(Vec::len), Some(1));
    }

    fn accepted_is_sound(call: &Call) {
        let id_ok = |i: &Id| {
            !i.as_str().is_empty()
                && i.as_str().len() <= MAX_ID_LEN
                && i.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        match call {
            Call::CreateNetwork(c) => assert!(id_ok(&c.network)),
            Call::DeleteNetwork { network } => assert!(id_ok(network)),
            Call::CreateEndpoint(CreateEndpoint { at, .. })
            | Call::DeleteEndpoint(at)
            | Call::EndpointOperInfo(at)
            | Call::Leave(at)
            | Call::RevokeExternalConnectivity(at)
            | Call::ProgramExternalConnectivity { at, .. } => {
                assert!(id_ok(&at.network) && id_ok(&at.endpoint))
            }
            Call::Join(j) => {
                assert!(id_ok(&j.at.network) && id_ok(&j.at.endpoint));
                assert!(j.sandbox.len() <= MAX_PATH_LEN && !j.sandbox.contains('\0'));
            }
            Call::RequestAddress(r) => {
                assert!(!r.pool.is_empty() && r.pool.len() <= MAX_ID_LEN);
                assert!(!(r.ipv6 && r.address.is_some()));
            }
            Call::ReleasePool { pool } | Call::ReleaseAddress { pool, .. } => {
                assert!(!pool.is_empty() && pool.len() <= MAX_ID_LEN)
            }
            _ => {}
        }
    }

    /// A request body built from Docker's field names with arbitrary values.
    fn body(fields: &[(u8, u8, String)]) -> Vec<u8> {
        const KEYS: [&str; 16] = [
            "NetworkID",
            "EndpointID",
            "SandboxKey",
            "Interface",
            "Address",
            "AddressIPv6",
            "MacAddress",
            "PoolID",
            "Pool",
            "SubPool",
            "V6",
            "Options",
            "IPv4Data",
            "IPv6Data",
            "AddressSpace",
            "RequestAddressType",
        ];
        let mut map = serde_json::Map::new();
        for (k, kind, text) in fields {
            let value = match kind % 6 {
                0 => json!(text),
                1 => json!(EP),
                2 => json!(null),
                3 => json!({ "Address": text, "MacAddress": text, "RequestAddressType": text }),
                4 => json!([{ "AddressSpace": text, "Pool": text, "Gateway": text }]),
                _ => json!(kind % 2 == 0),
            };
            map.insert(KEYS[*k as usize % KEYS.len()].to_string(), value);
        }
        serde_json::to_vec(&Value::Object(map)).expect("json")
    }

    proptest! {
        /// Any body for any method: a checked call or a 400, never a panic; a well-formed
        /// endpoint request decodes to exactly its ids.
        #[test]
        fn any_body_decodes_to_a_sound_call_or_a_clear_refusal(
            method in 0..METHODS.len(),
            fields in proptest::collection::vec((any::<u8>(), any::<u8>(), "\\PC{0,40}"), 0..8),
            raw in proptest::collection::vec(any::<u8>(), 0..200),
            network in "[0-9a-f]{1,64}",
            endpoint in "[0-9a-zA-Z_.-]{1,128}",
        ) {
            let path = format!("/{}", METHODS[method]);
            for b in [body(&fields), raw.clone()] {
                match decode(&path, &b) {
                    Ok(call) => accepted_is_sound(&call),
                    Err(e) => prop_assert_eq!(e.status(), 400, "{}", e),
                }
            }
            let pair = json!({"NetworkID": network, "EndpointID": endpoint}).to_string();
            let want = EndpointRef {
                network: Id::parse(&network).expect("id"),
                endpoint: Id::parse(&endpoint).expect("id"),
            };
            prop_assert_eq!(decode("/NetworkDriver.Leave", pair.as_bytes()), Ok(Call::Leave(want)));
        }

        /// Any address Docker could send comes back as the same address.
        #[test]
        fn addresses_round_trip(a in any::<u32>(), len in 0u8..=32) {
            let net = Ipv4Net::new(Ipv4Addr::from(a), len).expect("prefix");
            let b = json!({"NetworkID": "n", "EndpointID": "e",
                           "Interface": {"Address": net.to_string()}}).to_string();
            let Ok(Call::CreateEndpoint(c)) = decode("/NetworkDriver.CreateEndpoint", b.as_bytes()) else {
                panic!("refused {net}");
            };
            prop_assert_eq!(c.address, Some(net));
            let b = json!({"PoolID": "p", "Address": Ipv4Addr::from(a).to_string()}).to_string();
            let Ok(Call::ReleaseAddress { address, .. }) = decode("/IpamDriver.ReleaseAddress", b.as_bytes()) else {
                panic!("refused {a}");
            };
            prop_assert_eq!(address, Ipv4Addr::from(a));
        }
    }

    /// Fuzz target: any method name, bytes, and bodies built from Docker's keys decode to a
    /// sound call or a refusal, never a panic
    /// (`cargo bolero test --bin weft daemon::docker::proto::tests::fuzz_decode`).
    #[test]
    fn fuzz_decode() {
        bolero::check!()
            .with_type::<(u8, String, Vec<(u8, u8, String)>, Vec<u8>)>()
            .for_each(|(method, path, fields, raw)| {
                let known = format!("/{}", METHODS[*method as usize % METHODS.len()]);
                for p in [known.as_str(), path.as_str()] {
                    for b in [body(fields), raw.clone()] {
                        match decode(p, &b) {
                            Ok(call) => accepted_is_sound(&call),
                            Err(e) => assert!(matches!(e.status(), 400 | 404)),
                        }
                    }
                }
            });
    }
}
