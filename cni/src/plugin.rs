//! The commands: ADD, DEL, CHECK, GC and STATUS on a checked [`Call`], VERSION on its own.
//! Netlink goes through `weft_mesh::attach` (the code `weft attach` uses), addresses through
//! the daemon's API socket or a delegated IPAM plugin.
//!
//! ADD, in order: the interface must not exist in the namespace; the bridge must be up (the
//! daemon has address space); a release of this attachment still waiting in the spool is
//! dropped (the attachment is back); the address (daemon or IPAM plugin); the veth, address
//! and routes. If a step after the address fails, the veth is gone (attach undoes itself) and
//! the address is given back, so nothing is left behind.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use weft_mesh::attach::{self, Attached, Attachment};

use crate::check;
use crate::config::{NetConf, BRIDGE};
use crate::daemon::{Daemon, DaemonError};
use crate::delegate;
use crate::env::{AttachmentId, Command};
use crate::error::{code, CniError, Result};
use crate::request::{version_answer, Call, Request};
use crate::spool::Spool;
use crate::types::{mac_text, CniResult, Interface, IpConfig, Route};

/// Runs `request`; `Some(json)` is printed on stdout (ADD's result, VERSION's answer).
pub fn run(request: Request) -> Result<Option<Value>> {
    let call = match request {
        Request::Version { cni_version } => return Ok(Some(version_answer(&cni_version))),
        Request::Call(call) => call,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::io("starting the async runtime", &e))?;
    let plugin = Plugin {
        call: &call,
        conf: &call.conf,
        runtime: &runtime,
        daemon: Daemon::new(&call.conf.api_socket),
    };
    match call.command() {
        Command::Add => plugin.add().map(|r| Some(r.to_json(call.conf.version))),
        Command::Del => plugin.del().map(|()| None),
        Command::Check => plugin.check().map(|()| None),
        Command::Gc => plugin.gc().map(|()| None),
        Command::Status => plugin.status().map(|()| None),
        Command::Version => Ok(Some(version_answer(call.conf.version.as_str()))),
    }
}

struct Plugin<'a> {
    call: &'a Call,
    conf: &'a NetConf,
    runtime: &'a tokio::runtime::Runtime,
    daemon: Daemon,
}

/// Where an attachment's address came from, and how to give it back.
enum Source {
    Weft,
    Ipam(std::path::PathBuf),
}

/// The addressing of one attachment.
struct Plan {
    address: Ipv4Net,
    gateway: Ipv4Addr,
    cluster_range: Ipv4Net,
    mtu: u32,
    extra_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// DNS of the IPAM plugin's result, used when the config has none.
    dns: crate::types::Dns,
    source: Source,
}

fn note(text: &str) {
    eprintln!("weft-cni: {text}");
}

impl Plugin<'_> {
    fn attachment(&self) -> Result<&AttachmentId> {
        self.call.attachment()
    }

    fn netns(&self) -> Result<&Path> {
        self.call
            .env
            .netns
            .as_deref()
            .ok_or_else(|| CniError::env("required env variables [CNI_NETNS] missing", ""))
    }

    fn ipam_plugin(&self) -> Result<Option<std::path::PathBuf>> {
        match &self.conf.ipam {
            None => Ok(None),
            Some(name) => delegate::find(name, &self.call.env.path).map(Some),
        }
    }

    fn add(&self) -> Result<CniResult> {
        let id = self.attachment()?;
        let netns = self.netns()?;
        match self
            .runtime
            .block_on(attach::interface_exists(netns, &id.ifname))
        {
            Err(e) => {
                return Err(CniError::env(
                    "invalid CNI_NETNS",
                    format!("{}: {e}", netns.display()),
                ))
            }
            Ok(true) => return Err(CniError::new(
                code::INTERFACE_EXISTS,
                format!(
                    "interface {} already exists in {}",
                    id.ifname,
                    netns.display()
                ),
                "ADD creates the interface; DEL this attachment first or choose another CNI_IFNAME",
            )),
            Ok(false) => {}
        }
        let Some((bridge_net, bridge_mtu)) = self
            .runtime
            .block_on(attach::bridge_gateway(BRIDGE))
            .map_err(|e| CniError::kernel("reading the bridge", &e))?
        else {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("the bridge {BRIDGE} is not ready"),
                "the weft daemon makes it once the node has address space; is `weft launch` running? (`weft status`)",
            ));
        };
        let spool = Spool::new(&self.conf.state_dir);
        if let Some(locked) = spool
            .lock(false)
            .map_err(|e| CniError::io(format!("locking {}", spool.dir().display()), &e))?
        {
            if locked
                .take(id)
                .map_err(|e| CniError::io("reading the release spool", &e))?
            {
                note(&format!(
                    "{}: a pending release is superseded by this ADD",
                    id.key()
                ));
            }
        }
        let plan = self.plan(id, netns, bridge_net.addr(), bridge_mtu)?;
        let spec = Attachment {
            container: id.key(),
            netns: netns.to_path_buf(),
            ifname: id.ifname.clone(),
            address: plan.address,
            gateway: plan.gateway,
            cluster_range: plan.cluster_range,
            bridge: BRIDGE.to_string(),
            mtu: plan.mtu,
            extra_routes: plan.extra_routes.clone(),
        };
        match self.runtime.block_on(attach::attach_new(&spec)) {
            Ok(attached) => Ok(self.result(&plan, &attached, netns)),
            Err(e) => {
                self.give_back(id, &plan.source);
                Err(match e {
                    weft_mesh::Error::Exists(text) => CniError::new(
                        code::INTERFACE_EXISTS,
                        format!("interface {} already exists", id.ifname),
                        text,
                    ),
                    weft_mesh::Error::InvalidConfig(text) => {
                        CniError::config("cannot attach the container", text)
                    }
                    other => CniError::kernel(
                        format!("attaching {} to bridge {BRIDGE}", netns.display()),
                        &other,
                    ),
                })
            }
        }
    }

    /// The address and routes: from the daemon, or from the delegated IPAM plugin.
    fn plan(
        &self,
        id: &AttachmentId,
        netns: &Path,
        gateway: Ipv4Addr,
        bridge_mtu: u32,
    ) -> Result<Plan> {
        let Some(plugin) = self.ipam_plugin()? else {
            let a = self
                .daemon
                .allocate(id, &self.conf.name, Some(netns), &self.call.env.pod)
                .map_err(|e| e.to_cni("ADD"))?;
            return Ok(Plan {
                address: a.address,
                gateway: a.gateway,
                cluster_range: a.cluster_range,
                mtu: self.conf.mtu.unwrap_or(a.mtu),
                extra_routes: Vec::new(),
                dns: crate::types::Dns::default(),
                source: Source::Weft,
            });
        };
        let status = self.daemon.status().map_err(|e| e.to_cni("ADD"))?;
        let cluster_range: Ipv4Net = status.range.parse().map_err(|_| {
            DaemonError::BadAnswer(format!("cluster range {:?}", status.range)).to_cni("ADD")
        })?;
        let result = delegate::add(&plugin, &self.call.stdin)?;
        let planned =
            plan_from_ipam(&result, gateway, cluster_range).map(|(address, extra_routes)| Plan {
                address,
                gateway,
                cluster_range,
                mtu: self.conf.mtu.unwrap_or(bridge_mtu),
                extra_routes,
                dns: result.dns.clone(),
                source: Source::Ipam(plugin.clone()),
            });
        if planned.is_err() {
            self.give_back(id, &Source::Ipam(plugin));
        }
        planned
    }

    /// Undoes the addressing of a failed ADD; a daemon that is down gets the release later.
    fn give_back(&self, id: &AttachmentId, source: &Source) {
        match source {
            Source::Weft => {
                if let Err(e) = self.release(id) {
                    note(&format!(
                        "{}: giving the address back failed: {e}",
                        id.key()
                    ));
                }
            }
            Source::Ipam(plugin) => {
                if let Err(e) = delegate::run(plugin, Command::Del, &self.call.stdin) {
                    note(&format!("{}: the IPAM plugin's DEL failed: {e}", id.key()));
                }
            }
        }
    }

    /// Gives `id`'s address back to the daemon, or keeps the release in the spool if the
    /// daemon cannot take it now.
    fn release(&self, id: &AttachmentId) -> Result<()> {
        let spool = Spool::new(&self.conf.state_dir);
        let lock_error = |e: std::io::Error| {
            CniError::io(format!("the release spool {}", spool.dir().display()), &e)
        };
        match self.daemon.release(id) {
            Ok(()) => {
                // An older release of the same attachment is done with too.
                if let Some(locked) = spool.lock(false).map_err(lock_error)? {
                    locked.take(id).map_err(lock_error)?;
                }
                Ok(())
            }
            Err(e) => {
                let locked = spool
                    .lock(true)
                    .map_err(lock_error)?
                    .ok_or_else(|| lock_error(std::io::ErrorKind::NotFound.into()))?;
                locked.add(id).map_err(lock_error)?;
                note(&format!(
                    "{}: {e}; the release is kept in {} and applied when the daemon is back",
                    id.key(),
                    spool.dir().display()
                ));
                Ok(())
            }
        }
    }

    fn result(&self, plan: &Plan, attached: &Attached, netns: &Path) -> CniResult {
        let gw = IpAddr::V4(plan.gateway);
        let ours = CniResult {
            interfaces: vec![
                Interface {
                    name: attached.host.name.clone(),
                    mac: attached.host.mac.map(|m| mac_text(&m)),
                    mtu: attached.host.mtu,
                    sandbox: None,
                },
                Interface {
                    name: attached.container.name.clone(),
                    mac: attached.container.mac.map(|m| mac_text(&m)),
                    mtu: attached.container.mtu,
                    sandbox: Some(netns.to_string_lossy().into_owned()),
                },
            ],
            ips: vec![IpConfig {
                address: IpNet::V4(plan.address),
                gateway: Some(gw),
                interface: Some(1),
            }],
            routes: attached
                .routes
                .iter()
                .map(|(dst, via)| Route::via(IpNet::V4(*dst), Some(IpAddr::V4(*via))))
                .collect(),
            dns: if self.conf.dns.is_empty() {
                plan.dns.clone()
            } else {
                self.conf.dns.clone()
            },
        };
        match &self.conf.prev_result {
            None => ours,
            Some(prev) => merge(prev, ours),
        }
    }

    fn del(&self) -> Result<()> {
        let id = self.attachment()?;
        // The veth first: the address is given back only once nothing uses it.
        self.runtime
            .block_on(attach::detach(&id.key()))
            .map_err(|e| CniError::kernel(format!("removing the veth of {}", id.key()), &e))?;
        match self.ipam_plugin()? {
            None => self.release(id),
            Some(plugin) => delegate::run(&plugin, Command::Del, &self.call.stdin).map(drop),
        }
    }

    fn check(&self) -> Result<()> {
        let id = self.attachment()?;
        let netns = self.netns()?;
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::config("required prevResult missing", ""))?;
        let observed = match self.runtime.block_on(attach::inspect(netns, &id.ifname)) {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Err(CniError::new(
                    code::CHECK_FAILED,
                    format!("interface {} is missing in {}", id.ifname, netns.display()),
                    "",
                ))
            }
            Err(e) => {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("cannot enter the container's namespace {}", netns.display()),
                    e.to_string(),
                ))
            }
        };
        let host = self
            .runtime
            .block_on(attach::host_end(&id.key()))
            .map_err(|e| CniError::kernel("reading the host end of the veth", &e))?;
        check::verify(prev, netns, &id.ifname, &observed, host.as_ref(), BRIDGE)?;
        match self.ipam_plugin()? {
            Some(plugin) => delegate::run(&plugin, Command::Check, &self.call.stdin).map(drop),
            None => {
                let index = check::container_interface(prev, netns, &id.ifname)?;
                let pods = self.daemon.pods().map_err(|e| e.to_cni("CHECK"))?;
                let held = pods
                    .iter()
                    .find(|p| p.container == id.container_id && p.ifname == id.ifname)
                    .and_then(|p| p.address);
                for ip in prev.ips.iter().filter(|i| i.interface == Some(index)) {
                    if held.map(IpNet::V4) != Some(ip.address) {
                        return Err(CniError::new(
                            code::CHECK_FAILED,
                            format!(
                                "the weft daemon does not hold {} for {}",
                                ip.address,
                                id.key()
                            ),
                            format!(
                                "it holds {}",
                                held.map_or("nothing".into(), |a| a.to_string())
                            ),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Releases every attachment of this network that the runtime no longer lists (and
    /// removes its veth if one is left), then passes GC on to the IPAM plugin. Goes on after
    /// an error and reports the first.
    fn gc(&self) -> Result<()> {
        let mut first_error = None;
        if let Some(plugin) = self.ipam_plugin()? {
            if let Err(e) = delegate::run(&plugin, Command::Gc, &self.call.stdin) {
                first_error.get_or_insert(e);
            }
        } else if let Some(valid) = &self.conf.valid_attachments {
            let pods = self.daemon.pods().map_err(|e| e.to_cni("GC"))?;
            for pod in pods {
                if pod.network.as_deref() != Some(self.conf.name.as_str()) {
                    continue;
                }
                let Ok(id) = AttachmentId::new(&pod.container, &pod.ifname) else {
                    continue;
                };
                if valid.contains(&id) {
                    continue;
                }
                note(&format!(
                    "GC: releasing {} ({})",
                    id.key(),
                    pod.address.map_or(String::new(), |a| a.to_string())
                ));
                if let Err(e) = self.runtime.block_on(attach::detach(&id.key())) {
                    first_error.get_or_insert(CniError::kernel(
                        format!("removing the veth of {}", id.key()),
                        &e,
                    ));
                }
                if let Err(e) = self.daemon.release(&id) {
                    first_error.get_or_insert(e.to_cni("GC"));
                }
            }
        } else {
            note("GC without cni.dev/valid-attachments: nothing is released");
        }
        first_error.map_or(Ok(()), Err)
    }

    fn status(&self) -> Result<()> {
        let status = self.daemon.status().map_err(|e| {
            CniError::new(
                code::NOT_AVAILABLE,
                "the weft daemon is not available",
                e.to_string(),
            )
        })?;
        if status.address_space.is_empty() {
            return Err(CniError::new(
                code::LIMITED_CONNECTIVITY,
                "this node has no address space",
                "it has not joined a cluster yet, or cannot reach the nodes that hold the space; see `weft status` and `weft ipam`",
            ));
        }
        if !status.ready {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                "the weft daemon is not ready",
                format!("datapath: {}; see `weft status`", status.datapath),
            ));
        }
        match self.ipam_plugin()? {
            Some(plugin) => delegate::run(&plugin, Command::Status, &self.call.stdin).map(drop),
            None => Ok(()),
        }
    }
}

/// The address and extra routes from a delegated IPAM plugin's result: exactly one IPv4
/// address (weft carries IPv4 only); its routes go through weft's gateway unless they name
/// their own next hop; a default route is weft's own anyway.
fn plan_from_ipam(
    result: &CniResult,
    gateway: Ipv4Addr,
    cluster_range: Ipv4Net,
) -> Result<(Ipv4Net, Vec<(Ipv4Net, Ipv4Addr)>)> {
    let mut v4 = Vec::new();
    for ip in &result.ips {
        match ip.address {
            IpNet::V4(a) => v4.push(a),
            IpNet::V6(a) => {
                return Err(CniError::config(
                    "the IPAM plugin gave an IPv6 address",
                    format!("{a}: weft carries IPv4 only; configure the IPAM plugin for IPv4"),
                ))
            }
        }
    }
    let address = match v4.as_slice() {
        [a] => *a,
        [] => {
            return Err(CniError::new(
                code::DELEGATE,
                "the IPAM plugin gave no address",
                "",
            ))
        }
        many => {
            return Err(CniError::config(
                "the IPAM plugin gave more than one address",
                format!("{many:?}: weft puts one IPv4 address on the interface"),
            ))
        }
    };
    if !cluster_range.contains(&address.addr()) {
        return Err(CniError::config(
            "the IPAM plugin's address is outside the cluster range",
            format!("{address} is not in {cluster_range}: other nodes route only the cluster range to this one"),
        ));
    }
    let mut routes = Vec::new();
    for r in &result.routes {
        let IpNet::V4(dst) = r.dst else { continue };
        let via = match r.gw {
            Some(IpAddr::V4(g)) => g,
            Some(IpAddr::V6(_)) => continue,
            None => gateway,
        };
        routes.push((dst.trunc(), via));
    }
    Ok((address, routes))
}

/// `ours` after `prev` (weft chained after another interface plugin): interfaces appended,
/// our IPs' interface indexes shifted, routes appended, our DNS if we have one.
fn merge(prev: &CniResult, ours: CniResult) -> CniResult {
    let shift = prev.interfaces.len();
    let mut out = prev.clone();
    out.interfaces.extend(ours.interfaces);
    out.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + shift);
        ip
    }));
    out.routes.extend(ours.routes);
    if !ours.dns.is_empty() {
        out.dns = ours.dns;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_results_become_one_address_and_routes_via_the_gateway() {
        let gw: Ipv4Addr = "10.32.0.0".parse().expect("ip");
        let range: Ipv4Net = "10.32.0.0/12".parse().expect("net");
        let result = |v: Value| CniResult::from_value("IPAM", &v).expect("result");
        let (a, routes) = plan_from_ipam(
            &result(serde_json::json!({"ips": [{"address": "10.32.200.5/24", "gateway": "10.32.200.1"}],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.32.200.1"}, {"dst": "172.16.0.9/12"}]})),
            gw,
            range,
        )
        .expect("plan");
        assert_eq!(a, "10.32.200.5/24".parse::<Ipv4Net>().expect("net"));
        assert_eq!(
            routes,
            vec![
                ("0.0.0.0/0".parse().expect("net"), gw),
                (
                    "192.168.0.0/16".parse().expect("net"),
                    "10.32.200.1".parse().expect("ip")
                ),
                ("172.16.0.0/12".parse().expect("net"), gw),
            ]
        );
        for (bad, want) in [
            (serde_json::json!({"ips": []}), code::DELEGATE),
            (
                serde_json::json!({"ips": [{"address": "2001:db8::5/64"}]}),
                code::INVALID_CONFIG,
            ),
            (
                serde_json::json!({"ips": [{"address": "10.32.1.5/24"}, {"address": "10.32.1.6/24"}]}),
                code::INVALID_CONFIG,
            ),
            (
                serde_json::json!({"ips": [{"address": "192.168.1.5/24"}]}),
                code::INVALID_CONFIG,
            ),
        ] {
            let e = plan_from_ipam(&result(bad.clone()), gw, range).expect_err(&bad.to_string());
            assert_eq!(e.code, want, "{bad}: {e}");
        }
    }

    #[test]
    fn a_chained_result_keeps_the_previous_one() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "x".into(),
                ..Interface::default()
            }],
            ips: vec![IpConfig {
                address: "10.9.0.2/24".parse().expect("net"),
                gateway: None,
                interface: Some(0),
            }],
            ..CniResult::default()
        };
        let ours = CniResult {
            interfaces: vec![
                Interface {
                    name: "vw".into(),
                    ..Interface::default()
                },
                Interface {
                    name: "eth1".into(),
                    ..Interface::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.32.0.5/12".parse().expect("net"),
                gateway: None,
                interface: Some(1),
            }],
            ..CniResult::default()
        };
        let m = merge(&prev, ours);
        assert_eq!(m.interfaces.len(), 3);
        assert_eq!(m.ips[0].interface, Some(0));
        assert_eq!(m.ips[1].interface, Some(2));
    }
}
