//! The node's answers to API requests (`weft status`, `peers`, `ipam`, `attach`, `forget`,
//! `connect`), from the cores and the datapath's last report.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Instant, SystemTime};

use ipnet::Ipv4Net;
use tracing::info;
use weft_gossip::ipam;
use weft_gossip::{MemberInfo, NodeId};

use super::{Node, BRIDGE, GATEWAY_ID};
use crate::daemon::api::{
    Allocation, GossipCounters, MemberCounts, Peer, PeerLinkInfo, PeerState, Request, Response,
    Status,
};
use crate::daemon::view;

impl Node {
    /// Answer an API request (`id` names it in [`Node::poll_answer`]). `wall` is the wall
    /// clock, for the age of handshakes. An allocation, a release or a forget is answered
    /// only once the IPAM state it changed (or found) is persisted: an address handed to a
    /// container is on disk before the container hears of it. `Request::Reset` is the
    /// loop's to run ([`Node::hand_over`], [`Node::leave`]).
    ///
    /// [`Node::hand_over`]: super::Node::hand_over
    /// [`Node::leave`]: super::Node::leave
    /// [`Node::poll_answer`]: super::Node::poll_answer
    pub fn handle_request(&mut self, now: Instant, wall: SystemTime, id: u64, request: Request) {
        let durable = matches!(
            request,
            Request::Allocate { .. } | Request::Release { .. } | Request::Forget { .. }
        );
        let result = match request {
            Request::Status => Ok(Response::Status {
                ok: true,
                status: self.status(now, wall),
            }),
            Request::Peers => Ok(Response::Peers {
                ok: true,
                peers: self.peers(now, wall),
            }),
            Request::Ipam => self.ipam_report(),
            Request::Allocate { container } => self.allocate(now, &container, None),
            Request::AllocateAt { container, address } => {
                self.allocate(now, &container, Some(address))
            }
            Request::Release { container } => self.release(&container),
            Request::Forget { node } => self.forget(now, &node),
            Request::Connect { addr } => self.connect(now, &addr),
            Request::Reset => Err("reset is handled by the driver loop".into()),
            Request::Policy(r) => self.policy_request(wall, r),
            Request::LocalPods(pods) => {
                self.set_local_pods(wall, pods);
                Ok(Response::Done {
                    ok: true,
                    message: "pods taken".into(),
                })
            }
            // The pods layer (pods.rs) answers these before they reach the node.
            Request::Pods
            | Request::AllocatePod(_)
            | Request::ReleasePod { .. }
            | Request::Attach(_)
            | Request::Detach { .. }
            | Request::Docker(_)
            | Request::DockerNames(_) => Err("pod requests are handled by the pods layer".into()),
        };
        let response = result.unwrap_or_else(|error| Response::Error { ok: false, error });
        let version = self.ipam.state_version();
        if durable && version > self.ipam.persisted_version() {
            self.held.push((version, id, response));
        } else {
            self.answers.push_back((id, response));
        }
        // An allocation or a forget changes the IPAM record and the ring.
        self.process(now);
    }

    /// The IPAM core's report, with the name of every node this node knows beside it.
    fn ipam_report(&self) -> Result<Response, String> {
        let mut ipam = serde_json::to_value(self.ipam.report())
            .map_err(|e| format!("cannot encode the IPAM report: {e}"))?;
        let local = self.core.local_record();
        let names: serde_json::Map<String, serde_json::Value> =
            std::iter::once((local.node_id, local.name.clone()))
                .chain(
                    self.core
                        .members()
                        .map(|m| (m.record.node_id, m.record.name.clone())),
                )
                .map(|(id, name)| (id.to_string(), serde_json::Value::String(name)))
                .collect();
        if let serde_json::Value::Object(map) = &mut ipam {
            map.insert("names".into(), serde_json::Value::Object(names));
        }
        Ok(Response::Ipam { ok: true, ipam })
    }

    /// An address for `container`: the next free one, or `at` if it is free in this node's
    /// space (`weft attach --ip`).
    fn allocate(
        &mut self,
        now: Instant,
        container: &str,
        at: Option<Ipv4Addr>,
    ) -> Result<Response, String> {
        if container == GATEWAY_ID {
            return Err(format!(
                "{GATEWAY_ID:?} is reserved for this node's gateway"
            ));
        }
        self.reserve_gateway();
        let result = match at {
            None => self.ipam.allocate(now, container),
            Some(address) => self.ipam.allocate_at(container, address),
        };
        let address = match result {
            Ok(a) => a,
            Err(ipam::Error::AddressInUse { address, holder }) if holder == GATEWAY_ID => {
                return Err(format!(
                    "address {address} is in use by this node's gateway"
                ))
            }
            Err(e @ ipam::Error::SpaceRequested { .. })
            | Err(e @ ipam::Error::NoAddressSpaceReachable { .. })
            | Err(e @ ipam::Error::NoGenesis) => {
                return Err(format!("no address space reachable: try again later ({e})"))
            }
            Err(e) => return Err(e.to_string()),
        };
        let cidrs = self.ipam.owned_cidrs();
        let (Some(main), Some(block)) = (
            self.main_space(),
            cidrs.iter().find(|c| c.contains(&address)),
        ) else {
            return Err(format!(
                "address {address} is not in this node's space (internal error)"
            ));
        };
        let address = Ipv4Net::new(address, block.prefix_len()).map_err(|e| e.to_string())?;
        info!(container, %address, "address allocated");
        Ok(Response::Allocation {
            ok: true,
            allocation: Allocation {
                container: container.to_string(),
                address,
                gateway: main.network(),
                cluster_range: self.config.range,
                bridge: BRIDGE.to_string(),
                mtu: self.config.mtu,
            },
        })
    }

    fn release(&mut self, container: &str) -> Result<Response, String> {
        if container == GATEWAY_ID {
            return Err(format!(
                "{GATEWAY_ID:?} is reserved for this node's gateway"
            ));
        }
        let message = match self.ipam.release(container).map_err(|e| e.to_string())? {
            Some(a) => {
                info!(container, address = %a, "address released");
                format!("released {a} of {container}")
            }
            None => format!("{container} had no address"),
        };
        Ok(Response::Done { ok: true, message })
    }

    /// The member `text` names: its node id, short id, or name.
    fn resolve_member(&self, text: &str) -> Result<NodeId, String> {
        let local = self.core.local_id();
        if text == self.core.local_record().name
            || text == local.to_string()
            || text == local.short()
        {
            return Err("that is this node: use `weft reset` to take it out".into());
        }
        let matches: Vec<MemberInfo<'_>> = self
            .core
            .members()
            .filter(|m| {
                let id = m.record.node_id;
                id.to_string() == text || id.short() == text || m.record.name == text
            })
            .collect();
        match matches.as_slice() {
            [] => Err(format!("no member named {text:?} or with that id")),
            [m] => Ok(m.record.node_id),
            many => Err(format!(
                "{text:?} names {} members ({}); give the node id",
                many.len(),
                many.iter()
                    .map(|m| format!("{} {}", m.record.name, m.record.node_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn forget(&mut self, now: Instant, text: &str) -> Result<Response, String> {
        let id = self.resolve_member(text)?;
        let (name, state) = match self.core.member(&id) {
            Some(m) => (m.record.name.clone(), view::peer_state(&m)),
            None => return Err(format!("no member {text:?}")),
        };
        if matches!(state, PeerState::Alive | PeerState::Suspect) {
            return Err(format!(
                "node {name} ({}) is reachable ({}): a live node must leave by itself (`weft reset` on it), not be forgotten",
                id.short(),
                state.as_str()
            ));
        }
        let space = match self.ipam.forget(now, id) {
            Ok(reclaim) => {
                let addresses: u64 = reclaim.pieces.iter().map(|p| u64::from(p.len())).sum();
                format!("took back its {addresses} addresses")
            }
            Err(ipam::Error::UnknownNode(_)) | Err(ipam::Error::NoGenesis) => {
                "it held no address space".to_string()
            }
            Err(e) => return Err(e.to_string()),
        };
        self.core.forget(now, &id);
        info!(node = %id.short(), name, "forgot node");
        Ok(Response::Done {
            ok: true,
            message: format!("forgot {name} ({}); {space}", id.short()),
        })
    }

    fn connect(&mut self, now: Instant, addr: &str) -> Result<Response, String> {
        // The API resolved names already: only `ip:port` reaches here.
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an ip:port"))?;
        if self.core.has_left() {
            return Err("this node has left the cluster".into());
        }
        self.core.join(now, &[addr]);
        info!(peer = %addr, "contacting node on request");
        Ok(Response::Done {
            ok: true,
            message: format!("contacting {addr}"),
        })
    }

    /// `weft status`. The transport's own counters (`gossip.sent`, `gossip.send_failures`)
    /// are the loop's to fill in.
    fn status(&self, now: Instant, wall: SystemTime) -> Status {
        let mut members = MemberCounts::default();
        members.add(PeerState::Alive);
        let mut states = HashMap::with_capacity(self.core.num_members());
        for m in self.core.members() {
            let state = view::peer_state(&m);
            members.add(state);
            states.insert(m.record.node_id, state);
        }
        let record = self.core.local_record();
        let report = &self.report;
        let failed = self.datapath_failed.as_ref();
        let datapath = if self.config.datapath_off {
            "off".to_string()
        } else if !report.kind.is_empty() {
            match &report.error {
                Some(e) => format!("{} (error: {e})", report.kind),
                None => report.kind.clone(),
            }
        } else if let Some(e) = failed.or(report.error.as_ref()) {
            format!("error: {e}")
        } else {
            "starting".into()
        };
        let space = self.local_spaces();
        let joined = self.config.seeds.is_empty() || self.core.num_members() > 0;
        // The view's peers: every member that has not left for good.
        let peers_total = states.values().filter(|s| **s != PeerState::Left).count();
        Status {
            name: record.name.clone(),
            node_id: record.node_id.to_string(),
            listen: self.config.listen,
            gossip_addr: record.gossip_addr,
            version: self.core.local_version(),
            range: self.config.range.to_string(),
            members,
            datapath,
            uptime_secs: now.saturating_duration_since(self.config.started).as_secs(),
            ready: joined
                && !space.is_empty()
                && (self.config.datapath_off || (report.ready && failed.is_none())),
            peers_up: view::peers_up(&states, &report.peers, wall),
            peers_total,
            address_space: space.iter().map(ToString::to_string).collect(),
            addresses_used: self.addresses_used(),
            addresses_free: self.ipam.free_addresses(),
            gossip: GossipCounters {
                sent: 0,
                received: self.received,
                send_failures: 0,
                messages_refused: self.refused,
                // The transport's, filled in by the driver.
                connections_refused: Default::default(),
            },
            fail_closed_drops: report.fail_closed_drops,
            datapath_restarts: report.restarts,
            drift_repairs: report
                .drift_repairs
                .iter()
                .map(|(kind, n)| (kind.to_string(), *n))
                .collect(),
            policy: self.policy_status(),
            kubernetes: self.kube_status(),
        }
    }

    /// Containers' addresses only: the gateway's reservation (which only a node that did not
    /// start the cluster holds) is not one.
    fn addresses_used(&self) -> u64 {
        self.ipam
            .allocations()
            .iter()
            .filter(|(c, _)| c != GATEWAY_ID)
            .count() as u64
    }

    fn peers(&self, now: Instant, wall: SystemTime) -> Vec<Peer> {
        let local = self.core.local_id();
        let spaces = self.spaces();
        let mut out: Vec<Peer> = self
            .core
            .member(&local)
            .into_iter()
            .chain(self.core.members())
            .map(|m| {
                let is_self = m.record.node_id == local;
                let link = if is_self {
                    None
                } else {
                    self.report
                        .peers
                        .get(&m.record.node_id)
                        .map(|l| PeerLinkInfo {
                            endpoint: l.endpoint,
                            via: l.via.map(|v| self.name_of(&v)),
                            last_handshake_secs: l
                                .last_handshake
                                .and_then(|t| wall.duration_since(t).ok())
                                .map(|d| d.as_secs_f64()),
                            rx_bytes: l.rx_bytes,
                            tx_bytes: l.tx_bytes,
                            spaces: spaces
                                .get(&m.record.node_id)
                                .map(|s| s.iter().map(ToString::to_string).collect())
                                .unwrap_or_default(),
                        })
                };
                self.peer(m, is_self, link, now)
            })
            .collect();
        // This node first, then the others by name.
        let first = usize::from(!out.is_empty());
        out[first..].sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn peer(
        &self,
        m: MemberInfo<'_>,
        is_self: bool,
        link: Option<PeerLinkInfo>,
        now: Instant,
    ) -> Peer {
        let r = m.record;
        Peer {
            name: r.name.clone(),
            node_id: r.node_id.to_string(),
            node_id_short: r.node_id.short(),
            is_self,
            endpoint: r.gossip_addr,
            wireguard_endpoints: view::wireguard_endpoints(r),
            wireguard_public_key: r.wg_key.to_string(),
            state: view::peer_state(&m),
            incarnation: m.incarnation,
            version: r.version,
            last_seen_secs: self
                .last_seen
                .get(&r.node_id)
                .map(|t| now.saturating_duration_since(*t).as_secs_f64()),
            link,
        }
    }
}
