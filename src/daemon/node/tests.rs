//! Nodes driven by hand, without sockets: a small network with a virtual clock carries
//! transmits between them (like quinn's `Pair` and `weft_gossip::sim`), the members journal
//! is a list, the IPAM cores keep their state in memory.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use weft_crypto::{IdentityKey, WgPublicKey};
use weft_gossip::ipam::{IpamConfig, MemoryStore, PersistOp, Store};
use weft_gossip::{NodeRecord, VerifiedRecord};

use super::*;
use crate::daemon::api::{Allocation, PeerState, Request, Response, Status};
use crate::daemon::members::Liveness;
use crate::daemon::view::PeerLink;

const RANGE: &str = "10.40.0.0/16";
/// One-way delay of every message.
const LATENCY: Duration = Duration::from_millis(5);

fn range() -> Ipv4Net {
    RANGE.parse().expect("range")
}

/// What a node handed out, in order.
#[derive(Debug, Clone)]
enum Output {
    Journal(JournalWrite),
    Transmit(Channel),
}

#[derive(Debug)]
struct TestNode {
    node: Node,
    id: NodeId,
    addr: SocketAddr,
    /// The IPAM store, shared with the core: a restart starts from it.
    store: MemoryStore,
    outputs: Vec<Output>,
    view: Option<MeshView>,
    /// Crashed or cut off: nothing in, nothing out, no timers.
    down: bool,
    /// Journal writes stay queued until the test answers them.
    hold_journal: bool,
    /// Writes of the IPAM state stay unanswered until the test does them.
    hold_persist: bool,
    /// Answers given, by request id.
    answers: BTreeMap<u64, Response>,
}

#[derive(Debug)]
struct Net {
    start: Instant,
    now: Instant,
    wall_start: SystemTime,
    nodes: BTreeMap<u8, TestNode>,
    /// (delivery time, sender address, sender id, destination, bytes), in send order.
    in_flight: Vec<(Instant, SocketAddr, NodeId, SocketAddr, Vec<u8>)>,
    next_request: u64,
}

fn addr(index: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, index)), 6783)
}

fn wg_endpoint(index: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, index)), 6784)
}

/// Node `index`'s parts: its core (version `version`) and IPAM core from `store`.
fn parts(index: u8, version: u64, mut store: MemoryStore, now: Instant) -> (Membership, Ipam) {
    let key = IdentityKey::from_seed(&[index; 32]);
    let mut record = NodeRecord::new(
        key.node_id(),
        version,
        format!("n{index}"),
        WgPublicKey([index; 32]),
        addr(index),
    );
    record.endpoints.local = vec![wg_endpoint(index)];
    let gossip = weft_gossip::Config {
        rng_seed: u64::from(index),
        ..weft_gossip::Config::default()
    };
    let core = Membership::new(gossip, key, record, now).expect("core");
    let identity = Arc::new(IdentityKey::from_seed(&[index; 32]));
    let loaded = store.load().expect("load");
    let ipam =
        Ipam::open(identity, IpamConfig::new(range()), loaded, u64::from(index)).expect("ipam");
    (core, ipam)
}

fn config(index: u8, seeds: Vec<SocketAddr>, now: Instant) -> NodeConfig {
    NodeConfig {
        listen: addr(index),
        range: range(),
        started: now,
        wg_port: 6784,
        mtu: 1420,
        wg_local: vec![wg_endpoint(index)],
        datapath_off: false,
        seeds,
    }
}

impl Net {
    fn new() -> Self {
        let start = Instant::now();
        Net {
            start,
            now: start,
            wall_start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            nodes: BTreeMap::new(),
            in_flight: Vec::new(),
            next_request: 0,
        }
    }

    fn wall(&self) -> SystemTime {
        self.wall_start + (self.now - self.start)
    }

    /// Start node `index`, joining through the nodes in `seeds` (none: it starts the
    /// cluster).
    fn add(&mut self, index: u8, seeds: &[u8]) {
        let store = MemoryStore::new();
        let (core, ipam) = parts(index, 1, store.clone(), self.now);
        let seeds = seeds.iter().map(|s| addr(*s)).collect();
        let mut node = Node::new(
            config(index, seeds, self.now),
            core,
            ipam,
            Vec::new(),
            self.now,
        );
        node.start(self.now);
        let id = node.core.local_id();
        self.nodes.insert(
            index,
            TestNode {
                node,
                id,
                addr: addr(index),
                store,
                outputs: Vec::new(),
                view: None,
                down: false,
                hold_journal: false,
                hold_persist: false,
                answers: BTreeMap::new(),
            },
        );
        self.pump(index);
    }

    fn n(&mut self, index: u8) -> &mut TestNode {
        self.nodes.get_mut(&index).expect("node")
    }

    fn id(&self, index: u8) -> NodeId {
        self.nodes[&index].id
    }

    /// Carry out what node `index` asks for, as the IO loop does.
    fn pump(&mut self, index: u8) {
        let now = self.now;
        let t = self.nodes.get_mut(&index).expect("node");
        if t.down {
            return;
        }
        loop {
            if t.hold_journal {
                break;
            }
            let Some(write) = t.node.poll_journal() else {
                break;
            };
            t.outputs.push(Output::Journal(write));
            t.node.handle_journal_result(now, Ok(()));
        }
        while !t.hold_persist {
            let Some(p) = t.node.poll_ipam_persist(now) else {
                break;
            };
            let result = t.store.write(&p).map_err(|e| e.to_string());
            t.node.handle_ipam_persisted(now, p.version, result);
        }
        while let Some((id, response)) = t.node.poll_answer() {
            t.answers.insert(id, response);
        }
        while let Some(tx) = t.node.poll_transmit() {
            let (channel, _) = frame::unframe(&tx.bytes).expect("framed");
            t.outputs.push(Output::Transmit(channel));
            self.in_flight
                .push((now + LATENCY, t.addr, t.id, tx.dst, tx.bytes));
        }
        if let Some(view) = t.node.poll_view() {
            t.view = Some(view);
        }
    }

    fn pump_all(&mut self) {
        let indexes: Vec<u8> = self.nodes.keys().copied().collect();
        for i in indexes {
            self.pump(i);
        }
    }

    /// Jump to the next delivery or timer, and handle what is due.
    fn step(&mut self) {
        self.pump_all();
        let next_delivery = self.in_flight.iter().map(|m| m.0).min();
        let next_timer = self
            .nodes
            .values()
            .filter(|t| !t.down)
            .map(|t| t.node.poll_timeout())
            .min();
        let next = [next_delivery, next_timer]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now + Duration::from_secs(1));
        self.now = self.now.max(next);
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|m| m.0 <= now);
        self.in_flight = later;
        for (_, from, sender, to, bytes) in due {
            if let Some(t) = self.nodes.values_mut().find(|t| t.addr == to && !t.down) {
                t.node.handle_message(now, from, sender, &bytes);
            }
        }
        for t in self.nodes.values_mut().filter(|t| !t.down) {
            if t.node.poll_timeout() <= now {
                t.node.handle_timeout(now);
            }
        }
        self.pump_all();
    }

    /// Step until `done` holds, for at most `limit` of virtual time.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Sends a request; its answer, once given (see [`Net::answer`]).
    fn send_request(&mut self, index: u8, request: Request) -> u64 {
        let (now, wall) = (self.now, self.wall());
        self.next_request += 1;
        let id = self.next_request;
        self.n(index).node.handle_request(now, wall, id, request);
        self.pump(index);
        id
    }

    fn answer(&mut self, index: u8, id: u64) -> Option<Response> {
        self.n(index).answers.remove(&id)
    }

    fn ask(&mut self, index: u8, request: Request) -> Response {
        let id = self.send_request(index, request);
        self.answer(index, id).expect("answered at once")
    }

    fn status(&mut self, index: u8) -> Status {
        match self.ask(index, Request::Status) {
            Response::Status { ok: true, status } => status,
            other => panic!("expected a status, got {other:?}"),
        }
    }

    /// A cluster of `n` nodes joined through node 1, each owning space, each seeing every
    /// other one alive with its space.
    fn cluster(n: u8) -> Net {
        let mut net = Net::new();
        net.add(1, &[]);
        for i in 2..=n {
            net.add(i, &[1]);
        }
        let converged = net.run_until(Duration::from_secs(60), |net| net.converged());
        assert!(converged, "no convergence: {net:#?}");
        net
    }

    /// Every node up sees every other one alive in its view, with the space it owns.
    fn converged(&self) -> bool {
        let up: Vec<&TestNode> = self.nodes.values().filter(|t| !t.down).collect();
        up.iter().all(|t| {
            let Some(view) = &t.view else { return false };
            let owned = t.node.ipam.owned_cidrs();
            !owned.is_empty()
                && view.local.spaces == owned
                && up.iter().filter(|o| o.id != t.id).all(|o| {
                    view.peers.iter().any(|p| {
                        p.node_id == o.id
                            && p.state == PeerState::Alive
                            && p.spaces == o.node.ipam.owned_cidrs()
                    })
                })
        })
    }

    /// A datapath report of node `index`: a link per `(peer, relay, handshake age)`.
    fn report(&self, links: &[(u8, Option<u8>, Option<Duration>)]) -> DatapathReport {
        let wall = self.wall();
        DatapathReport {
            kind: "userspace".into(),
            ifname: "weft-wg".into(),
            ready: true,
            peers: links
                .iter()
                .map(|&(peer, via, age)| {
                    let link = PeerLink {
                        endpoint: via.is_none().then(|| wg_endpoint(peer)),
                        via: via.map(|v| self.id(v)),
                        last_handshake: age.map(|a| wall - a),
                        ..PeerLink::default()
                    };
                    (self.id(peer), link)
                })
                .collect(),
            ..DatapathReport::default()
        }
    }

    fn give_report(&mut self, index: u8, report: DatapathReport) {
        let now = self.now;
        self.n(index).node.handle_report(now, report);
        self.pump(index);
    }

    /// Run the network until node `index`'s hand-over or leave is done.
    fn run_until_done(&mut self, index: u8) {
        let done = self.run_until(Duration::from_secs(10), |net| {
            let now = net.now;
            net.nodes[&index].node.done(now)
        });
        assert!(done, "n{index} never finished");
    }
}

fn allocation(r: Response) -> Allocation {
    match r {
        Response::Allocation {
            ok: true,
            allocation,
        } => allocation,
        other => panic!("expected an allocation, got {other:?}"),
    }
}

fn ok_message(r: Response) -> String {
    match r {
        Response::Done { ok: true, message } => message,
        other => panic!("expected done, got {other:?}"),
    }
}

fn error_text(r: Response) -> String {
    match r {
        Response::Error { ok: false, error } => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn allocate(net: &mut Net, index: u8, container: &str) -> Allocation {
    allocation(net.ask(
        index,
        Request::Allocate {
            container: container.into(),
        },
    ))
}

#[test]
fn a_seed_starts_the_space_and_answers_every_request() {
    let mut net = Net::new();
    net.add(1, &[]);
    let view = net.nodes[&1].view.clone().expect("a view is published");
    assert_eq!(view.local.spaces, vec![range()]);
    assert_eq!(view.local.wg_port, 6784);
    assert!(view.peers.is_empty());
    let record = net.nodes[&1].node.core.local_record();
    assert!(!record.ipam.is_empty(), "the IPAM record is not published");
    assert_eq!(record.endpoints.local, vec![wg_endpoint(1)]);

    let a = allocate(&mut net, 1, "c1");
    assert!(range().contains(&a.address.addr()), "{a:?}");
    assert_eq!(a.address.prefix_len(), 16);
    assert_eq!(a.gateway, range().network());
    assert_ne!(a.address.addr(), a.gateway);
    assert_eq!(
        (a.bridge.as_str(), a.mtu, a.cluster_range),
        ("weft", 1420, range())
    );
    let again = allocate(&mut net, 1, "c1");
    assert_eq!(again.address, a.address, "same id, same address");
    let other = allocate(&mut net, 1, "c2");
    assert_ne!(other.address, a.address);
    let reserved = error_text(net.ask(
        1,
        Request::Allocate {
            container: GATEWAY_ID.into(),
        },
    ));
    assert!(reserved.contains("reserved"), "{reserved}");

    let msg = ok_message(net.ask(
        1,
        Request::Release {
            container: "c1".into(),
        },
    ));
    assert!(msg.contains(&a.address.addr().to_string()), "{msg}");
    let msg = ok_message(net.ask(
        1,
        Request::Release {
            container: "c1".into(),
        },
    ));
    assert!(msg.contains("no address"), "{msg}");

    let e = error_text(net.ask(1, Request::Forget { node: "n1".into() }));
    assert!(e.contains("this node"), "{e}");
    let e = error_text(net.ask(
        1,
        Request::Forget {
            node: "nobody".into(),
        },
    ));
    assert!(e.contains("no member"), "{e}");
    let e = error_text(net.ask(
        1,
        Request::Connect {
            addr: "somewhere".into(),
        },
    ));
    assert!(e.contains("ip:port"), "{e}");
    let msg = ok_message(net.ask(
        1,
        Request::Connect {
            addr: "127.0.0.1:9".into(),
        },
    ));
    assert!(msg.contains("127.0.0.1:9"), "{msg}");
    // The connect goes out as a push-pull to that address.
    assert!(net
        .in_flight
        .iter()
        .any(|m| m.3 == "127.0.0.1:9".parse().expect("addr")));

    match net.ask(1, Request::Ipam) {
        Response::Ipam { ok: true, ipam } => {
            assert!(ipam["genesis"].is_object(), "{ipam}");
            assert_eq!(ipam["range"], RANGE);
        }
        other => panic!("{other:?}"),
    }
    let status = net.status(1);
    assert_eq!(status.address_space, vec![RANGE.to_string()]);
    assert_eq!(status.addresses_used, 1, "c2 only");
    assert_eq!(status.datapath, "starting");
    assert!(!status.ready, "ready before the datapath is");
    net.give_report(
        1,
        DatapathReport {
            kind: "userspace".into(),
            ready: true,
            ..DatapathReport::default()
        },
    );
    let status = net.status(1);
    assert!(status.ready, "{status:?}");
    assert_eq!(status.datapath, "userspace");

    // The allocations survive a restart (same store).
    let store = net.nodes[&1].store.clone();
    let now = net.now;
    let (core, ipam) = parts(1, 2, store, now);
    let mut node = Node::new(config(1, Vec::new(), now), core, ipam, Vec::new(), now);
    node.start(now);
    let back = allocation(answer_alone(
        &mut node,
        &net.nodes[&1].store,
        now,
        net.wall(),
        Request::Allocate {
            container: "c2".into(),
        },
    ));
    assert_eq!(back.address, other.address);
}

#[test]
fn a_joiner_gets_space_and_never_hands_out_its_gateway() {
    let mut net = Net::new();
    net.add(1, &[]);
    // Its seed is not there yet.
    net.add(2, &[9]);
    assert!(
        net.nodes[&2].node.ipam.genesis().is_none(),
        "a node with seeds started its own space"
    );
    let e = error_text(net.ask(
        2,
        Request::Allocate {
            container: "early".into(),
        },
    ));
    assert!(
        e.starts_with("no address space reachable: try again later"),
        "{e}"
    );
    // Now it finds the cluster.
    let r = net.ask(
        2,
        Request::Connect {
            addr: addr(1).to_string(),
        },
    );
    ok_message(r);
    let got = net.run_until(Duration::from_secs(30), |net| {
        !net.nodes[&2].node.ipam.owned().is_empty()
    });
    assert!(got, "n2 got no space");
    let space = net.nodes[&2].node.ipam.owned_cidrs();
    // Aligned blocks: the second node's space is one prefix, the upper half of the range,
    // and the first node keeps the lower half (before: 19 prefixes, because the range's
    // broadcast address stayed with the first node).
    let half = |n: u32| Ipv4Net::new(std::net::Ipv4Addr::from(n), range().prefix_len() + 1);
    let base = u32::from(range().network());
    let upper = half(base + (1 << (31 - u32::from(range().prefix_len())))).expect("net");
    assert_eq!(space, [upper]);
    assert_eq!(
        net.nodes[&1].node.ipam.owned_cidrs(),
        [half(base).expect("net")]
    );
    let gateway = space[0].network();
    assert!(
        net.nodes[&2]
            .node
            .ipam
            .allocations()
            .iter()
            .any(|(c, addr)| c == GATEWAY_ID && *addr == gateway),
        "gateway {gateway} not reserved: {:?}",
        net.nodes[&2].node.ipam.allocations()
    );
    let c = allocate(&mut net, 2, "c");
    assert_eq!(c.gateway, gateway);
    assert_ne!(c.address.addr(), gateway);
    let block = space
        .iter()
        .find(|n| n.contains(&c.address.addr()))
        .expect("address in n2's space");
    assert_eq!(c.address.prefix_len(), block.prefix_len());
    assert_eq!(c.address.prefix_len(), upper.prefix_len());
    let a_space = net.nodes[&1].node.ipam.owned_cidrs();
    assert!(
        a_space.iter().all(|n| !n.contains(&c.address.addr())),
        "n2 allocated from n1's space"
    );
}

#[test]
fn three_nodes_join_and_every_view_lists_the_other_two_with_their_space() {
    let net = Net::cluster(3);
    let mut all_space: Vec<Ipv4Net> = Vec::new();
    for t in net.nodes.values() {
        let view = t.view.as_ref().expect("view");
        assert_eq!(view.peers.len(), 2, "{view:?}");
        for p in &view.peers {
            let other = net
                .nodes
                .values()
                .find(|o| o.id == p.node_id)
                .expect("peer");
            assert_eq!(p.name, other.node.core.local_record().name);
            assert_eq!(p.endpoints, vec![other.node.config.wg_local[0]]);
            assert!(!p.spaces.is_empty());
        }
        all_space.extend(t.node.ipam.owned_cidrs());
    }
    // Nobody's space overlaps another's.
    for (i, a) in all_space.iter().enumerate() {
        for b in &all_space[i + 1..] {
            assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
        }
    }
}

#[test]
fn reset_hands_the_space_over_and_leaves() {
    let mut net = Net::cluster(3);
    allocate(&mut net, 3, "c");
    let space = net.nodes[&3].node.ipam.owned_cidrs();
    let now = net.now;
    let summary = net.n(3).node.hand_over(now);
    assert!(
        summary.starts_with("handed its address space to n"),
        "{summary}"
    );
    net.pump(3);
    net.run_until_done(3);
    assert!(net.nodes[&3].node.ipam_left());
    let receiver: u8 = summary
        .trim_start_matches("handed its address space to n")
        .parse()
        .expect("a node's name");
    // The receiver acknowledged before the hand-over wait ran out.
    let owned = net.nodes[&receiver].node.ipam.owned_cidrs();
    for net_piece in &space {
        assert!(
            owned.iter().any(|o| o.contains(net_piece)),
            "{net_piece} not with n{receiver}: {owned:?}"
        );
    }
    let now = net.now;
    net.n(3).node.leave(now, LeaveReason::Leaving);
    net.pump(3);
    net.run_until_done(3);
    net.n(3).down = true;
    let gone = net.run_until(Duration::from_secs(10), |net| {
        [1, 2].iter().all(|&i| {
            net.nodes[&i]
                .view
                .as_ref()
                .is_some_and(|v| v.peers.len() == 1)
        })
    });
    assert!(gone, "n3 still in a view");
    for i in [1, 2] {
        let status = net.status(i);
        assert_eq!(
            (
                status.members.alive,
                status.members.left,
                status.members.total
            ),
            (2, 1, 3),
            "n{i}: {:?}",
            status.members
        );
        assert_eq!(status.peers_total, 1);
    }
}

#[test]
fn a_failed_member_is_counted_failed_and_never_up() {
    let mut net = Net::cluster(3);
    let fresh = Some(Duration::from_secs(5));
    let report = net.report(&[(2, None, fresh), (3, None, fresh)]);
    net.give_report(1, report);
    let status = net.status(1);
    assert_eq!((status.peers_up, status.peers_total), (2, 2));
    assert_eq!(status.members.alive, 3);

    net.n(3).down = true;
    let suspected = net.run_until(Duration::from_secs(30), |net| {
        net.status(1).members.suspect == 1
    });
    assert!(suspected, "n3 never suspected");
    // Its last handshake is recent, but the membership doubts it.
    assert_eq!(net.status(1).peers_up, 1, "a suspect peer counted up");
    let failed = net.run_until(Duration::from_secs(60), |net| {
        net.status(1).members.failed == 1
    });
    assert!(failed, "n3 never declared failed");
    // The datapath's report still says n3's handshake is recent (it was, when it failed).
    let report = net.report(&[(2, None, fresh), (3, None, fresh)]);
    net.give_report(1, report);
    let status = net.status(1);
    assert_eq!(
        (
            status.members.alive,
            status.members.failed,
            status.members.total
        ),
        (2, 1, 3)
    );
    assert_eq!(status.peers_up, 1, "a failed peer counted up: {status:?}");
    assert_eq!(status.peers_total, 2, "a failed peer stays in the view");
}

#[test]
fn a_stopped_member_is_counted_stopped_everywhere_and_never_up() {
    let mut net = Net::cluster(3);
    let now = net.now;
    net.n(3).node.leave(now, LeaveReason::Stopping);
    net.pump(3);
    net.run_until_done(3);
    net.n(3).down = true;
    let stopped = net.run_until(Duration::from_secs(10), |net| {
        net.status(1).members.stopped == 1
    });
    assert!(stopped, "n3 not stopped on n1: {:?}", net.status(1).members);
    let fresh = Some(Duration::from_secs(1));
    let report = net.report(&[(2, None, fresh), (3, None, fresh)]);
    net.give_report(1, report);
    let status = net.status(1);
    assert_eq!(
        (
            status.members.alive,
            status.members.stopped,
            status.members.left,
            status.members.total
        ),
        (2, 1, 0, 3),
        "stopped is not left"
    );
    assert_eq!((status.peers_up, status.peers_total), (1, 2));
    let peers = match net.ask(1, Request::Peers) {
        Response::Peers { ok: true, peers } => peers,
        other => panic!("{other:?}"),
    };
    let n3 = peers.iter().find(|p| p.name == "n3").expect("n3 listed");
    assert_eq!(n3.state, PeerState::Stopped);
    // The metrics count it the same way.
    let metrics = crate::daemon::metrics::render(&status, &peers).expect("render");
    assert!(
        metrics
            .lines()
            .any(|l| l == "weft_peers{state=\"stopped\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "weft_peers{state=\"left\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_relayed_peer_is_up_while_its_relay_is() {
    let mut net = Net::cluster(3);
    let report = net.report(&[(2, None, Some(Duration::from_secs(30))), (3, Some(2), None)]);
    net.give_report(1, report);
    assert_eq!(net.status(1).peers_up, 2);
    // The relay's tunnel is older than WireGuard accepts: neither is up.
    let report = net.report(&[
        (2, None, Some(Duration::from_secs(181))),
        (3, Some(2), None),
    ]);
    net.give_report(1, report);
    assert_eq!(net.status(1).peers_up, 0);
}

#[test]
fn the_node_that_started_the_cluster_counts_used_addresses_like_a_joiner() {
    let mut net = Net::cluster(2);
    allocate(&mut net, 1, "c1");
    allocate(&mut net, 2, "c2");
    let (genesis, joiner) = (net.status(1), net.status(2));
    assert_eq!(genesis.addresses_used, 1, "{genesis:?}");
    assert_eq!(joiner.addresses_used, 1, "{joiner:?}");
    // On both, used and free add up to the space less the gateway (a reservation on the
    // joiner, the range's network address on the node that started the cluster) and the
    // range's broadcast address where it lies.
    for (s, i) in [(&genesis, 1), (&joiner, 2)] {
        let owned = net.nodes[&i].node.ipam.owned_cidrs();
        let size: u64 = owned.iter().map(|c| 1u64 << (32 - c.prefix_len())).sum();
        let broadcast = owned.iter().any(|c| c.contains(&range().broadcast()));
        assert_eq!(
            s.addresses_used + s.addresses_free + 1 + u64::from(broadcast),
            size,
            "{s:?}"
        );
    }
    // `weft ipam`: each node's row reads the same on itself as on the other node (the node
    // that started the cluster left its network and broadcast addresses out of its own),
    // once the records with the allocations have spread.
    net.run_for(Duration::from_secs(2));
    let reports: Vec<serde_json::Value> = [1, 2]
        .iter()
        .map(|&i| match net.ask(i, Request::Ipam) {
            Response::Ipam { ok: true, ipam } => ipam,
            other => panic!("{other:?}"),
        })
        .collect();
    for i in [1, 2] {
        let id = net.id(i).to_string();
        let used: Vec<&serde_json::Value> = reports
            .iter()
            .map(|r| {
                let rows = r["nodes"].as_array().expect("nodes");
                let row = rows.iter().find(|n| n["node"] == id.as_str());
                &row.expect("a row for every node")["used"]
            })
            .collect();
        assert_eq!(used[0], used[1], "n{i}'s used addresses, on n1 and n2");
    }
}

#[test]
fn the_ipam_report_names_every_node() {
    let mut net = Net::cluster(2);
    let ipam = match net.ask(1, Request::Ipam) {
        Response::Ipam { ok: true, ipam } => ipam,
        other => panic!("{other:?}"),
    };
    let (a, b) = (net.id(1).to_string(), net.id(2).to_string());
    assert_eq!(ipam["names"][&a], "n1", "{ipam}");
    assert_eq!(ipam["names"][&b], "n2", "{ipam}");
    assert!(
        ipam["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| ipam["names"][n["node"].as_str().expect("id")].is_string()),
        "{ipam}"
    );
}

#[test]
fn a_newer_record_is_journaled_before_the_ipam_core_sees_it() {
    let mut net = Net::new();
    net.add(1, &[]);
    net.add(2, &[1]);
    net.n(2).hold_journal = true;
    let a = net.id(1);
    // n2 learns n1's record (with the genesis in its IPAM bytes) and must journal it first.
    let queued = net.run_until(Duration::from_secs(10), |net| {
        !net.nodes[&2].node.journal.settled()
    });
    assert!(queued, "n2 never wanted to journal n1");
    net.run_for(Duration::from_secs(2));
    assert!(
        net.nodes[&2].node.ipam.genesis().is_none(),
        "the IPAM core acted on a record not yet journaled"
    );
    let now = net.now;
    let t = net.n(2);
    let mut writes = Vec::new();
    while let Some(w) = t.node.poll_journal() {
        writes.push(w);
    }
    let first = writes.first().expect("a write");
    match first {
        JournalWrite::Member {
            id,
            record: Some(r),
            liveness: Liveness::Live,
            ..
        } => {
            assert_eq!(*id, a);
            assert!(
                !r.record().ipam.is_empty(),
                "n1's record has its IPAM bytes"
            );
        }
        other => panic!("unexpected first write {other:?}"),
    }
    assert!(
        !t.outputs
            .iter()
            .any(|o| matches!(o, Output::Transmit(Channel::Ipam))),
        "an IPAM message went out before the journal write"
    );
    for (i, w) in writes.iter().enumerate() {
        t.outputs.push(Output::Journal(w.clone()));
        t.node.handle_journal_result(now, Ok(()));
        let last = i + 1 == writes.len();
        assert_eq!(
            t.node.ipam.genesis().is_some(),
            last,
            "the IPAM core must act once every write is done, not before"
        );
    }
    t.hold_journal = false;
    // It asks for space at its next turn (it learned of a reachable owner just now).
    net.run_for(Duration::from_secs(1));
    // The order of n2's outputs: n1's record into the journal, then the space request.
    let outputs = &net.nodes[&2].outputs;
    let journaled = outputs
        .iter()
        .position(|o| matches!(o, Output::Journal(JournalWrite::Member { id, .. }) if *id == a))
        .expect("journaled");
    let asked = outputs
        .iter()
        .position(|o| matches!(o, Output::Transmit(Channel::Ipam)))
        .expect("an IPAM message (the request for space)");
    assert!(journaled < asked, "{outputs:?}");
}

#[test]
fn a_failed_journal_write_is_followed_by_a_rewrite_of_the_whole_view() {
    let mut net = Net::cluster(3);
    net.n(1).hold_journal = true;
    // A member changes: n3 stops.
    let now = net.now;
    net.n(3).node.leave(now, LeaveReason::Stopping);
    net.pump(3);
    let queued = net.run_until(Duration::from_secs(10), |net| {
        !net.nodes[&1].node.journal.settled()
    });
    assert!(queued);
    let now = net.now;
    let t = net.n(1);
    let write = t.node.poll_journal().expect("a write");
    assert!(
        matches!(
            &write,
            JournalWrite::Member {
                liveness: Liveness::Left,
                leave: Some(_),
                ..
            }
        ),
        "{write:?}"
    );
    t.outputs.push(Output::Journal(write));
    t.node
        .handle_journal_result(now, Err("disk full".to_string()));
    let failed_at = t.outputs.len();
    t.hold_journal = false;
    net.run_for(Duration::from_secs(2));
    // The next scan rewrites the file whole: every member, n3 down with its signed leave.
    let rewrite = net.nodes[&1].outputs[failed_at..]
        .iter()
        .find_map(|o| match o {
            Output::Journal(JournalWrite::Rewrite(members)) => Some(members.clone()),
            _ => None,
        })
        .expect("a rewrite after the failed write");
    let names: std::collections::BTreeSet<&str> = rewrite
        .iter()
        .map(|e| e.record.record().name.as_str())
        .collect();
    assert_eq!(names, ["n2", "n3"].into(), "{rewrite:?}");
    let n3 = rewrite
        .iter()
        .find(|e| e.record.record().name == "n3")
        .expect("n3 in the rewrite");
    assert!(!n3.live && n3.leave.is_some(), "{n3:?}");
    // A failed write costs only the view after a restart: the IPAM core got the news.
    let n3_id = net.id(3).to_string();
    let report = serde_json::to_value(net.nodes[&1].node.ipam.report()).expect("report");
    let row = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == n3_id.as_str())
        .expect("n3 in the IPAM report")
        .clone();
    assert_eq!(row["reachable"], false, "{row}");
}

#[test]
fn a_restarted_node_starts_from_the_journaled_view() {
    let net = Net::cluster(2);
    let b = net.id(2);
    let record: Arc<VerifiedRecord> = net.nodes[&1].node.core.verified_record(&b).expect("n2");
    let now = net.now;
    let (core, ipam) = parts(1, 5, net.nodes[&1].store.clone(), now);
    let entries = vec![JournalEntry {
        record,
        live: false,
        leave: None,
    }];
    let mut node = Node::new(config(1, Vec::new(), now), core, ipam, entries, now);
    node.start(now);
    // Known (down) from the journal, so nothing to write about it again.
    assert!(node.poll_journal().is_none());
    match answer_alone(
        &mut node,
        &net.nodes[&1].store,
        now,
        net.wall(),
        Request::Status,
    ) {
        Response::Status { status, .. } => {
            assert_eq!((status.members.failed, status.members.total), (1, 2))
        }
        other => panic!("{other:?}"),
    }
}

/// A request to a node outside any `Net`: its IPAM writes go to `store`.
fn answer_alone(
    node: &mut Node,
    store: &MemoryStore,
    now: Instant,
    wall: SystemTime,
    request: Request,
) -> Response {
    node.handle_request(now, wall, 7, request);
    let mut store = store.clone();
    while let Some(p) = node.poll_ipam_persist(now) {
        let result = store.write(&p).map_err(|e| e.to_string());
        node.handle_ipam_persisted(now, p.version, result);
    }
    let (id, response) = node.poll_answer().expect("an answer");
    assert_eq!(id, 7);
    response
}

/// The address a container gets is on disk before the container hears of it: the answer
/// to an allocation waits for the write of the IPAM state. A failed write answers with the
/// error; the retry gets the same address once it is written.
#[test]
fn an_allocation_is_answered_only_once_it_is_persisted() {
    let mut net = Net::cluster(2);
    net.n(2).hold_persist = true;
    let id = net.send_request(
        2,
        Request::Allocate {
            container: "c".into(),
        },
    );
    net.run_for(Duration::from_secs(2));
    assert!(
        net.answer(2, id).is_none(),
        "answered before it was written"
    );
    // The write the loop would carry out: the allocation, as a journal line.
    let now = net.now;
    let p = net.n(2).node.poll_ipam_persist(now).expect("a write");
    let PersistOp::Journal(ops) = &p.op else {
        panic!("expected a journal line, got {p:?}")
    };
    assert!(
        ops.iter().any(|op| matches!(op, weft_gossip::ipam::JournalOp::Allocate { container, .. } if container == "c")),
        "{ops:?}"
    );
    assert!(
        net.n(2).node.poll_ipam_persist(now).is_none(),
        "one write at a time"
    );
    // It fails: the answer is the error, and nothing is written for a second.
    net.n(2)
        .node
        .handle_ipam_persisted(now, p.version, Err("disk full".into()));
    net.pump(2);
    let failed = error_text(net.answer(2, id).expect("answered with the error"));
    assert!(failed.contains("disk full"), "{failed}");
    assert!(net.n(2).node.poll_ipam_persist(now).is_none());
    // The retry is answered once the state is written (the whole of it, after a failure).
    let again = net.send_request(
        2,
        Request::Allocate {
            container: "c".into(),
        },
    );
    assert!(net.answer(2, again).is_none());
    let later = now + Duration::from_secs(1);
    let p = net.n(2).node.poll_ipam_persist(later).expect("the retry");
    assert!(matches!(p.op, PersistOp::Snapshot(_)), "{p:?}");
    let mut store = net.nodes[&2].store.clone();
    store.write(&p).expect("write");
    net.n(2)
        .node
        .handle_ipam_persisted(later, p.version, Ok(()));
    net.n(2).hold_persist = false;
    net.pump(2);
    let got = allocation(net.answer(2, again).expect("answered once written"));
    // It is in the store: a restart gives the same address.
    let (_, ipam) = parts(2, 9, net.nodes[&2].store.clone(), later);
    assert!(
        ipam.allocations()
            .iter()
            .any(|(c, a)| c == "c" && *a == got.address.addr()),
        "{:?}",
        ipam.allocations()
    );
}

// ---- Kubernetes: the Node list as an input (`node::kube`) ----

impl Net {
    /// Start node `index` on Kubernetes, no seed flags: with `pod_cidr` its space is that
    /// prefix (its IPAM core over it alone), else weft's allocator.
    fn add_kube(&mut self, index: u8, pod_cidr: Option<&str>) {
        let store = MemoryStore::new();
        let (core, _) = parts(index, 1, store.clone(), self.now);
        let fixed: Option<Ipv4Net> = pod_cidr.map(|c| c.parse().expect("cidr"));
        let identity = Arc::new(IdentityKey::from_seed(&[index; 32]));
        let ipam = Ipam::open(
            identity,
            IpamConfig::new(fixed.unwrap_or_else(range)),
            None,
            u64::from(index),
        )
        .expect("ipam");
        let mut node = Node::new(
            config(index, Vec::new(), self.now),
            core,
            ipam,
            Vec::new(),
            self.now,
        );
        node.set_kubernetes(fixed);
        node.start(self.now);
        let id = node.core.local_id();
        self.nodes.insert(
            index,
            TestNode {
                node,
                id,
                addr: addr(index),
                store,
                outputs: Vec::new(),
                view: None,
                down: false,
                hold_journal: false,
                hold_persist: false,
                answers: BTreeMap::new(),
            },
        );
        self.pump(index);
    }

    /// The Node list as the watchers give it, to node `index`: `nodes` by index.
    fn give_nodes(&mut self, index: u8, nodes: &[u8]) {
        let now = self.now;
        let list = ClusterNodes {
            seeds: nodes
                .iter()
                .filter(|n| **n != index)
                .map(|n| addr(*n))
                .collect(),
            names: nodes.iter().map(|n| format!("n{n}")).collect(),
        };
        self.n(index).node.handle_cluster_nodes(now, list);
        self.pump(index);
    }

    fn peer_spaces(&self, index: u8) -> BTreeMap<String, Vec<String>> {
        self.nodes[&index]
            .view
            .as_ref()
            .map(|v| {
                v.peers
                    .iter()
                    .map(|p| {
                        (
                            p.name.clone(),
                            p.spaces.iter().map(ToString::to_string).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn spaces_of(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(n, s)| ((*n).to_owned(), vec![(*s).to_owned()]))
        .collect()
}

#[test]
fn kubernetes_nodes_seed_the_gossip_and_pod_cidrs_are_the_spaces() {
    let mut net = Net::new();
    for i in 1..=3 {
        net.add_kube(i, Some(&format!("10.40.{i}.0/24")));
    }
    // No seeds yet: nobody is contacted; each owns its pod CIDR at once.
    net.run_for(Duration::from_secs(2));
    assert!(net.peer_spaces(1).is_empty());
    for i in 1..=3 {
        net.give_nodes(i, &[1, 2, 3]);
    }
    let all_see_all = net.run_until(Duration::from_secs(30), |net| {
        net.peer_spaces(1) == spaces_of(&[("n2", "10.40.2.0/24"), ("n3", "10.40.3.0/24")])
            && net.peer_spaces(3) == spaces_of(&[("n1", "10.40.1.0/24"), ("n2", "10.40.2.0/24")])
    });
    assert!(all_see_all, "{:?}", net.peer_spaces(1));
    let view = net.nodes[&2].view.clone().expect("view");
    assert_eq!(
        view.local.spaces,
        ["10.40.2.0/24".parse::<Ipv4Net>().expect("net")]
    );
    assert_eq!(view.cluster_range, range());
    // Pods get addresses from the pod CIDR; the gateway is its first address.
    let a = allocate(&mut net, 2, "pod-a");
    assert_eq!(a.address.to_string(), "10.40.2.1/24");
    assert_eq!(a.gateway, Ipv4Addr::new(10, 40, 2, 0));
    assert_eq!(
        allocate(&mut net, 2, "pod-b").address.to_string(),
        "10.40.2.2/24"
    );
    // No node's record carries a ring, and nobody asked anyone for space.
    for t in net.nodes.values() {
        assert!(t.node.core.local_record().ipam.is_empty());
        assert_eq!(
            t.node.core.local_record().labels.get("weft/space"),
            Some(&format!(
                "10.40.{}.0/24",
                t.addr.ip().to_string().rsplit('.').next().expect("octet")
            ))
        );
    }
    assert!(net.status(1).ready || net.status(1).datapath != "off");

    // A Node that appears later is contacted as it appears.
    net.add_kube(4, Some("10.40.4.0/24"));
    net.give_nodes(4, &[1, 2, 3, 4]);
    net.give_nodes(1, &[1, 2, 3, 4]);
    let joined = net.run_until(Duration::from_secs(30), |net| {
        net.peer_spaces(2).get("n4") == Some(&vec!["10.40.4.0/24".to_string()])
    });
    assert!(joined, "{:?}", net.peer_spaces(2));
}

#[test]
fn reset_of_a_node_with_a_pod_cidr_gives_the_space_back_to_kubernetes() {
    let mut net = Net::new();
    net.add_kube(1, Some("10.40.1.0/24"));
    net.add_kube(2, Some("10.40.2.0/24"));
    net.give_nodes(1, &[1, 2]);
    net.give_nodes(2, &[1, 2]);
    assert!(!net.nodes[&1].node.ipam_left());
    let now = net.now;
    let summary = net.n(1).node.hand_over(now);
    assert!(
        summary.contains("10.40.1.0/24") && summary.contains("Kubernetes"),
        "{summary}"
    );
    assert!(net.nodes[&1].node.ipam_left(), "its state may go");
    assert!(!net.nodes[&2].node.ipam_left());
}

#[test]
fn a_deleted_node_is_forgotten_once_down_and_its_space_no_longer_routed() {
    let mut net = Net::new();
    for i in 1..=3 {
        net.add_kube(i, Some(&format!("10.40.{i}.0/24")));
        net.give_nodes(i, &[1, 2, 3]);
    }
    assert!(
        net.run_until(Duration::from_secs(30), |net| net.peer_spaces(1).len() == 2
            && net.peer_spaces(2).len() == 2)
    );
    // Deleted while still alive: not forgotten (a live node leaves by itself).
    net.give_nodes(1, &[1, 2]);
    net.run_for(Duration::from_secs(3));
    assert!(net.peer_spaces(1).contains_key("n3"));
    // Gone for good: forgotten by every node that sees the Node gone.
    net.n(3).down = true;
    net.give_nodes(2, &[1, 2]);
    let forgotten = net.run_until(Duration::from_secs(60), |net| {
        !net.peer_spaces(1).contains_key("n3") && !net.peer_spaces(2).contains_key("n3")
    });
    assert!(forgotten, "{:?}", net.peer_spaces(1));
    assert!(net.nodes[&1]
        .node
        .core
        .members()
        .all(|m| m.record.name != "n3"));
    // A new Node with the same pod CIDR is routed to its new owner.
    net.add_kube(5, Some("10.40.3.0/24"));
    net.give_nodes(5, &[1, 2, 5]);
    net.give_nodes(1, &[1, 2, 5]);
    assert!(net.run_until(Duration::from_secs(30), |net| {
        net.peer_spaces(1).get("n5") == Some(&vec!["10.40.3.0/24".to_string()])
    }));
}

#[test]
fn with_weft_allocation_on_kubernetes_the_first_node_by_name_starts_the_space() {
    let mut net = Net::new();
    for i in 1..=3 {
        net.add_kube(i, None);
    }
    // Waiting for the Node list: nobody starts a space of its own.
    net.run_for(Duration::from_secs(5));
    assert!(net.nodes.values().all(|t| t.node.ipam.genesis().is_none()));
    for i in 1..=3 {
        net.give_nodes(i, &[1, 2, 3]);
    }
    assert!(
        net.run_until(Duration::from_secs(60), |net| net.converged()),
        "{net:#?}"
    );
    let genesis: Vec<_> = net
        .nodes
        .values()
        .map(|t| t.node.ipam.genesis().map(|g| (g.id, g.creator)))
        .collect();
    assert!(genesis.iter().all(|g| *g == genesis[0]), "{genesis:?}");
    assert_eq!(
        genesis[0].map(|g| g.1),
        Some(net.id(1)),
        "n1 is first by name"
    );

    // The only Node of a cluster starts it at once.
    let mut alone = Net::new();
    alone.add_kube(7, None);
    alone.give_nodes(7, &[7]);
    assert!(alone.nodes[&7].node.ipam.genesis().is_some());
}

// ---- network policy ----

const POLICY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: a}}}]\n";

fn pod_identity(name: &str, app: &str, addr: &str) -> crate::daemon::policy::PodIdentity {
    crate::daemon::policy::PodIdentity {
        namespace: "x".into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        addresses: vec![addr.parse().expect("address")],
        ports: vec![],
        interface: None,
    }
}

fn policy_ask(
    net: &mut Net,
    index: u8,
    request: crate::daemon::policy::PolicyRequest,
) -> crate::daemon::policy::PolicyAnswer {
    match net.ask(index, Request::Policy(request)) {
        Response::Policy { ok: true, policy } => policy,
        other => panic!("expected a policy answer, got {other:?}"),
    }
}

/// What node `index` would hand the reconciler: policies and pods by name.
fn policy_view(net: &Net, index: u8) -> (Vec<String>, Vec<String>) {
    let cluster = net.nodes[&index]
        .node
        .policy_cluster(false)
        .expect("policy on");
    let mut policies: Vec<String> = cluster.policies.iter().map(|p| p.id.to_string()).collect();
    policies.sort();
    let mut pods: Vec<String> = cluster
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    pods.sort();
    (policies, pods)
}

#[test]
fn policies_and_pods_spread_by_gossip_and_a_node_that_missed_them_catches_up() {
    use crate::daemon::policy::{PolicyAnswer, PolicyCore, PolicyRequest};
    let mut net = Net::cluster(3);
    for i in 1..=3u8 {
        let key = Arc::new(IdentityKey::from_seed(&[i; 32]));
        net.n(i).node.enable_policy(PolicyCore::new(key, None));
    }
    // Each node's pods, from its pods layer.
    for (i, pod) in [
        (1u8, pod_identity("a", "a", "10.40.0.2")),
        (3, pod_identity("b", "b", "10.40.128.2")),
    ] {
        let wall = net.wall();
        let now = net.now;
        net.n(i).node.handle_request(
            now,
            wall,
            1000 + u64::from(i),
            Request::LocalPods(vec![pod]),
        );
        net.pump(i);
    }
    let applied = policy_ask(
        &mut net,
        1,
        PolicyRequest::Apply {
            yaml: POLICY_B.into(),
            namespace: None,
        },
    );
    assert!(
        matches!(applied, PolicyAnswer::Changed { .. }),
        "{applied:?}"
    );
    let everywhere = |net: &mut Net| {
        (1..=3u8).all(|i| {
            policy_view(net, i)
                == (
                    vec!["x/b".to_string()],
                    vec!["x/a".to_string(), "x/b".to_string()],
                )
        })
    };
    let t0 = net.now;
    assert!(
        net.run_until(Duration::from_secs(10), everywhere),
        "not spread"
    );
    assert!(
        net.now - t0 < Duration::from_millis(100),
        "took {:?}",
        net.now - t0
    );
    // `why` on node 2, which has neither pod: from the same model, cluster-wide.
    let why = policy_ask(
        &mut net,
        2,
        PolicyRequest::Why {
            from: "x/a".into(),
            to: "x/b".into(),
            port: "80/tcp".into(),
        },
    );
    let PolicyAnswer::Why { why } = why else {
        panic!("{why:?}")
    };
    assert!(why.allowed, "{why}");
    // An invalid input changes nothing, with its field path.
    let bad = net.ask(
        2,
        Request::Policy(PolicyRequest::Apply {
            yaml: POLICY_B.replace("podSelector: {matchLabels", "podSelector: {matchLabel"),
            namespace: None,
        }),
    );
    assert!(
        matches!(&bad, Response::Error { error, .. } if error.contains("spec.podSelector")),
        "{bad:?}"
    );
    // Node 3 is cut off while node 2 deletes the policy; back, it catches up by
    // anti-entropy within a few rounds.
    net.n(3).down = true;
    policy_ask(&mut net, 2, PolicyRequest::Delete { name: "x/b".into() });
    assert!(
        net.run_until(Duration::from_secs(2), |net| policy_view(net, 1)
            .0
            .is_empty())
    );
    assert_eq!(policy_view(&net, 3).0, vec!["x/b".to_string()]);
    net.n(3).down = false;
    let caught_up = net.run_until(Duration::from_secs(60), |net| {
        policy_view(net, 3).0.is_empty()
    });
    assert!(caught_up, "node 3 still holds the deleted policy");
}

#[test]
fn on_kubernetes_the_api_is_the_policy_source_and_weft_policy_only_reads_it() {
    use crate::daemon::policy::{InputSource, PolicyAnswer, PolicyCore, PolicyRequest};
    use weft_mesh::policy;
    let mut net = Net::new();
    net.add_kube(1, Some("10.40.1.0/24"));
    let key = Arc::new(IdentityKey::from_seed(&[1; 32]));
    net.n(1).node.enable_policy(PolicyCore::new(key, None));
    net.give_nodes(1, &[1]);
    // Until the API's lists are in, nothing is handed to the reconciler (the tables in
    // force stay as they are), and reading answers so.
    assert!(net.n(1).node.poll_policy_inputs().is_none());
    let early = net.ask(1, Request::Policy(PolicyRequest::List));
    assert!(
        matches!(&early, Response::Error { error, .. } if error.contains("not in yet")),
        "{early:?}"
    );
    let b = policy::parse(POLICY_B, "default")
        .expect("policy")
        .remove(0);
    let pod = |name: &str, app: &str, addr: &str, node: &str| policy::Pod {
        namespace: "x".into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        addresses: vec![addr.parse().expect("address")],
        ports: vec![],
        node: node.into(),
        interface: None,
    };
    let inputs = KubePolicy {
        node: "n1".into(),
        policies: vec![b],
        pods: vec![
            pod("a", "a", "10.40.2.2", "n2"),
            pod("b", "b", "10.40.1.2", "n1"),
        ],
        namespaces: [(
            "x".to_string(),
            [("team".to_string(), "t".to_string())].into(),
        )]
        .into(),
        refused: vec!["x/c: spec.egress[0].ports[0].endPort: unsupported".into()],
    };
    net.n(1).node.handle_kube_policy(inputs.clone());
    let published = net.n(1).node.poll_policy_inputs().expect("published");
    assert_eq!(published.source, InputSource::Kube);
    assert_eq!(
        published.node, "n1",
        "this Node's name, as the pods name it"
    );
    assert_eq!(published.cluster.pods, inputs.pods);
    assert_eq!(published.cluster.policies.len(), 1);
    assert_eq!(published.cluster.namespaces, inputs.namespaces);
    assert_eq!(
        published.cluster.pods[1].interface, None,
        "not attached here yet"
    );
    // This node's attachment of x/b (CNI's K8S_POD_*) gives the API's pod its bridge port,
    // for anti-spoofing; one with another name or address does not.
    let attached = |name: &str, addr: &str, ifname: &str| crate::daemon::policy::PodIdentity {
        interface: Some(ifname.into()),
        ..pod_identity(name, "ignored", addr)
    };
    let (now, wall) = (net.now, net.wall());
    net.n(1).node.handle_request(
        now,
        wall,
        77,
        Request::LocalPods(vec![
            attached("b", "10.40.1.2", "vethb"),
            attached("c", "10.40.1.3", "vethc"),
            attached("a", "10.40.1.4", "vetha"),
        ]),
    );
    net.pump(1);
    let joined = net.n(1).node.poll_policy_inputs().expect("republished");
    let ifaces: Vec<Option<&str>> = joined
        .cluster
        .pods
        .iter()
        .map(|p| p.interface.as_deref())
        .collect();
    assert_eq!(
        ifaces,
        [None, Some("vethb")],
        "a is on n2, b is attached here"
    );
    assert_eq!(
        joined.cluster.pods[0].labels["app"], "a",
        "labels are the API's"
    );
    // The same inputs again change nothing; a relabelled pod does.
    net.n(1).node.handle_kube_policy(inputs.clone());
    assert!(net.n(1).node.poll_policy_inputs().is_none());
    let mut relabelled = inputs.clone();
    relabelled.pods[0].labels.insert("app".into(), "z".into());
    net.n(1).node.handle_kube_policy(relabelled);
    let again = net.n(1).node.poll_policy_inputs().expect("republished");
    assert_eq!(again.cluster.pods[0].labels["app"], "z");
    // What would change policy is refused with what to do instead; reading works.
    for request in [
        PolicyRequest::Apply {
            yaml: POLICY_B.into(),
            namespace: None,
        },
        PolicyRequest::Delete { name: "x/b".into() },
        PolicyRequest::Namespace {
            name: Some("x".into()),
            labels: Some(BTreeMap::new()),
        },
    ] {
        let refused = net.ask(1, Request::Policy(request));
        assert!(
            matches!(&refused, Response::Error { error, .. } if error.contains("kubectl")),
            "{refused:?}"
        );
    }
    let PolicyAnswer::List { policies, .. } = policy_ask(&mut net, 1, PolicyRequest::List) else {
        panic!("not a list")
    };
    assert_eq!(policies.len(), 1);
    assert_eq!(
        (policies[0].name.as_str(), policies[0].applied_by.as_str()),
        ("b", "kubernetes")
    );
    let PolicyAnswer::Why { why } = policy_ask(
        &mut net,
        1,
        PolicyRequest::Why {
            from: "x/a".into(),
            to: "x/b".into(),
            port: "80/tcp".into(),
        },
    ) else {
        panic!("not why")
    };
    assert!(!why.allowed, "a is relabelled app=z: {why}");
    let status = net.status(1);
    assert_eq!(status.policy.policies, 1);
    assert_eq!(status.policy.refused, 1);
}
