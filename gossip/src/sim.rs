//! A deterministic simulator: many [`Membership`] cores on a virtual network.
//!
//! Nodes live in a `BTreeMap` (deterministic order); the network delays datagrams by a base
//! latency plus uniform jitter, loses them with a given probability, and drops anything
//! between different partition groups. Streams (push-pull) are reliable but slower (a
//! connection setup). Virtual time jumps from one scheduled event to the next: a
//! `BinaryHeap` holds deliveries and node wake-ups (each node's `poll_timeout`), so a step
//! costs O(log events) and nothing ever scans all nodes. The same [`SimConfig`] (seed
//! included) gives the same run.
//!
//! ```
//! use std::time::Duration;
//! use weft_gossip::sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig { nodes: 5, ..SimConfig::default() });
//! sim.run_for(Duration::from_secs(5));
//! let id = sim.ids()[0];
//! assert_eq!(sim.node(&id).expect("running").num_live(), 4);
//! ```
#![forbid(unsafe_code)]

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_crypto::{IdentityKey, NodeId, WgPublicKey};

use crate::membership::{Event, Membership, TransmitKind};
use crate::record::{NodeRecord, SignatureCache};
use crate::{Config, Result};

/// How the simulated cluster starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Every node starts knowing every other node's record (as if restored from a persisted
    /// view). O(N²) memory, but no join storm: the way to start 10,000 nodes.
    Converged,
    /// Every node starts alone and joins through node 0 (push-pull), at a random moment in
    /// the first `join_spread`.
    Join { join_spread: Duration },
}

/// Parameters of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub seed: u64,
    /// One-way latency of every packet.
    pub latency: Duration,
    /// Extra delay, uniform in `[0, jitter)`.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Template for every node's core (`rng_seed` is replaced per node).
    pub gossip: Config,
    pub bootstrap: Bootstrap,
    /// Keep a log of every core's events (see [`Sim::events`]).
    pub log_events: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 10,
            seed: 1,
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(5),
            loss: 0.0,
            gossip: Config::default(),
            bootstrap: Bootstrap::Converged,
            log_events: true,
        }
    }
}

/// An event seen by one node, with the virtual time since the start of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimEvent {
    pub at: Duration,
    pub observer: NodeId,
    pub event: Event,
}

/// Network counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    pub delivered: u64,
    pub lost: u64,
    pub partitioned: u64,
    pub to_down_node: u64,
}

#[derive(Debug)]
struct SimNode {
    index: usize,
    key_seed: [u8; 32],
    addr: SocketAddr,
    core: Option<Membership>,
    wake: Option<Instant>,
    bytes_sent: u64,
    /// What the node's caller would persist: the last local version seen.
    persisted_version: u64,
    restarts: u64,
    /// The record to restart with (the last one the node published).
    record: NodeRecord,
}

#[derive(Debug)]
enum What {
    Wake(NodeId),
    /// A node's staggered start (see `Bootstrap::Join`).
    Start(NodeId),
    Deliver {
        to: NodeId,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    what: What,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The simulator. See the module documentation.
#[derive(Debug)]
pub struct Sim {
    start: Instant,
    now: Instant,
    nodes: BTreeMap<NodeId, SimNode>,
    ids: Vec<NodeId>,
    by_addr: HashMap<SocketAddr, NodeId>,
    heap: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: ChaCha8Rng,
    latency: Duration,
    jitter: Duration,
    loss: f64,
    groups: Option<HashMap<NodeId, usize>>,
    template: Config,
    log_events: bool,
    log: Vec<SimEvent>,
    net: NetStats,
}

/// The simulated gossip address of node `index`, from 198.18.0.0/15 (benchmarking range).
pub fn sim_addr(index: usize) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(base + 1 + index as u32)), 6783)
}

impl Sim {
    /// Build the cluster described by `config` at virtual time zero.
    pub fn new(config: SimConfig) -> Self {
        let start = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut template = config.gossip.clone();
        template
            .signature_cache
            .get_or_insert_with(SignatureCache::new);
        let mut sim = Self {
            start,
            now: start,
            nodes: BTreeMap::new(),
            ids: Vec::with_capacity(config.nodes),
            by_addr: HashMap::with_capacity(config.nodes),
            heap: BinaryHeap::new(),
            seq: 0,
            latency: config.latency,
            jitter: config.jitter,
            loss: config.loss,
            groups: None,
            template,
            log_events: config.log_events,
            log: Vec::new(),
            net: NetStats::default(),
            rng: ChaCha8Rng::seed_from_u64(rng.gen()),
        };
        for index in 0..config.nodes {
            let key_seed: [u8; 32] = rng.gen();
            let wg: [u8; 32] = rng.gen();
            let key = IdentityKey::from_seed(&key_seed);
            let addr = sim_addr(index);
            let mut record = NodeRecord::new(
                key.node_id(),
                1,
                format!("node-{index}"),
                WgPublicKey(wg),
                addr,
            );
            record
                .endpoints
                .local
                .push(SocketAddr::new(addr.ip(), 51820));
            let id = key.node_id();
            sim.by_addr.insert(addr, id);
            sim.ids.push(id);
            sim.nodes.insert(
                id,
                SimNode {
                    index,
                    key_seed,
                    addr,
                    core: None,
                    wake: None,
                    bytes_sent: 0,
                    persisted_version: 1,
                    restarts: 0,
                    record,
                },
            );
        }
        let ids = sim.ids.clone();
        match config.bootstrap {
            Bootstrap::Converged => {
                for id in &ids {
                    sim.boot(id, false);
                }
                let records: Vec<_> = ids
                    .iter()
                    .filter_map(|id| sim.node(id).and_then(|c| c.verified_record(id)))
                    .collect();
                let now = sim.now;
                for id in &ids {
                    if let Some(core) = sim.nodes.get_mut(id).and_then(|n| n.core.as_mut()) {
                        core.restore(now, records.iter().cloned());
                        while core.poll_event().is_some() {}
                    }
                    sim.after(id);
                }
            }
            Bootstrap::Join { join_spread } => {
                for (i, id) in ids.iter().enumerate() {
                    let delay = if i == 0 || join_spread.is_zero() {
                        Duration::ZERO
                    } else {
                        Duration::from_nanos(sim.rng.gen_range(0..join_spread.as_nanos() as u64))
                    };
                    // Start staggered joins through a wake-up at their start time.
                    if delay.is_zero() {
                        sim.boot(id, i != 0);
                        sim.after(id);
                    } else {
                        sim.push(start + delay, What::Start(*id));
                    }
                }
            }
        }
        sim
    }

    fn push(&mut self, at: Instant, what: What) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            what,
        }));
    }

    /// Create the node's core (with its persisted version) and optionally join through node 0.
    fn boot(&mut self, id: &NodeId, join: bool) -> Option<Result<()>> {
        let now = self.now;
        let mut config = self.template.clone();
        let node = self.nodes.get_mut(id)?;
        config.rng_seed = (node.index as u64) << 16 ^ node.restarts ^ 0x5eed;
        let key = IdentityKey::from_seed(&node.key_seed);
        let mut record = node.record.clone();
        record.version = node.persisted_version;
        let core = match Membership::new(config, key, record, now) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        node.core = Some(core);
        if join {
            let seed = sim_addr(0);
            if let Some(c) = node.core.as_mut() {
                c.join(now, &[seed]);
            }
        }
        Some(Ok(()))
    }

    /// Drain a node's transmits and events and re-arm its wake-up.
    fn after(&mut self, id: &NodeId) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(id) else {
            return;
        };
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = core.poll_transmit(now) {
            out.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = core.poll_event() {
            events.push(e);
        }
        node.persisted_version = core.local_version();
        let timeout = core.poll_timeout();
        let from = node.addr;
        let mut wake = None;
        if let Some(t) = timeout {
            if !matches!(node.wake, Some(w) if w <= t) {
                node.wake = Some(t);
                wake = Some(t.max(now));
            }
        }
        for t in &out {
            node.bytes_sent += t.bytes.len() as u64;
        }
        if let Some(at) = wake {
            self.push(at, What::Wake(*id));
        }
        if self.log_events {
            let at = now - self.start;
            self.log.extend(events.into_iter().map(|event| SimEvent {
                at,
                observer: *id,
                event,
            }));
        }
        for t in out {
            self.route(*id, from, t.dst, t.kind, t.bytes);
        }
    }

    fn route(
        &mut self,
        from_id: NodeId,
        from: SocketAddr,
        dst: SocketAddr,
        kind: TransmitKind,
        bytes: Vec<u8>,
    ) {
        let Some(&to) = self.by_addr.get(&dst) else {
            self.net.to_down_node += 1;
            return;
        };
        if let Some(groups) = &self.groups {
            if groups.get(&from_id).copied().unwrap_or(usize::MAX)
                != groups.get(&to).copied().unwrap_or(usize::MAX)
            {
                self.net.partitioned += 1;
                return;
            }
        }
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.gen_range(0..self.jitter.as_nanos() as u64))
        };
        let delay = match kind {
            TransmitKind::Datagram => {
                if self.loss > 0.0 && self.rng.gen_bool(self.loss.min(1.0)) {
                    self.net.lost += 1;
                    return;
                }
                self.latency + jitter
            }
            // A stream: connection setup plus the data over a reliable transport; each lost
            // packet (of about three round trips) costs a retransmission timeout.
            TransmitKind::Stream => {
                let mut delay = self.latency * 3 + jitter;
                let pto = (self.latency * 6).max(Duration::from_millis(20));
                for _ in 0..3 {
                    while self.loss > 0.0 && self.rng.gen_bool(self.loss.min(0.99)) {
                        delay += pto;
                    }
                }
                delay
            }
        };
        let at = self.now + delay;
        self.push(at, What::Deliver { to, from, bytes });
    }

    /// Process the next scheduled event. False when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(s)) = self.heap.pop() else {
            return false;
        };
        self.now = self.now.max(s.at);
        let now = self.now;
        match s.what {
            What::Wake(id) => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return true;
                };
                if node.wake != Some(s.at) && !matches!(node.wake, Some(w) if w <= now) {
                    return true; // superseded by an earlier wake-up
                }
                node.wake = None;
                if let Some(core) = node.core.as_mut() {
                    core.handle_timeout(now);
                }
                self.after(&id);
            }
            What::Start(to) => {
                if self.nodes.get(&to).is_some_and(|n| n.core.is_none()) {
                    self.boot(&to, true);
                    self.after(&to);
                }
            }
            What::Deliver { to, from, bytes } => {
                let Some(core) = self.nodes.get_mut(&to).and_then(|n| n.core.as_mut()) else {
                    self.net.to_down_node += 1;
                    return true;
                };
                self.net.delivered += 1;
                let _ = core.handle_message(now, from, &bytes);
                self.after(&to);
            }
        }
        true
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.heap.peek().is_some_and(|Reverse(s)| s.at <= until) {
            self.step();
        }
        self.now = until;
    }

    /// Run until `done` holds (checked every `check_every`) or `limit` of virtual time has
    /// passed. Returns whether `done` held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        check_every: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.run_for(check_every.min(end - self.now));
        }
        done(self)
    }

    // ---- the world ----

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// All node ids, in creation order.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// A running node's core.
    pub fn node(&self, id: &NodeId) -> Option<&Membership> {
        self.nodes.get(id).and_then(|n| n.core.as_ref())
    }

    /// Running nodes, in id order.
    pub fn running(&self) -> impl Iterator<Item = (&NodeId, &Membership)> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.core.as_ref().map(|c| (id, c)))
    }

    pub fn addr(&self, id: &NodeId) -> Option<SocketAddr> {
        self.nodes.get(id).map(|n| n.addr)
    }

    /// Bytes a node has sent (datagrams and streams), over all its lives.
    pub fn bytes_sent(&self, id: &NodeId) -> u64 {
        self.nodes.get(id).map_or(0, |n| n.bytes_sent)
    }

    pub fn net_stats(&self) -> NetStats {
        self.net
    }

    /// Events logged so far (if `log_events`).
    pub fn events(&self) -> &[SimEvent] {
        &self.log
    }

    pub fn clear_events(&mut self) {
        self.log.clear();
    }

    // ---- interventions ----

    /// Run `f` on a node's core at the current instant (e.g. `update_record`, `leave`,
    /// `forget`), then send what it produced.
    pub fn with_node<T>(
        &mut self,
        id: &NodeId,
        f: impl FnOnce(&mut Membership, Instant) -> T,
    ) -> Option<T> {
        let now = self.now;
        let core = self.nodes.get_mut(id)?.core.as_mut()?;
        let out = f(core, now);
        self.after(id);
        Some(out)
    }

    /// Publish a change of a node's record.
    pub fn update_record(
        &mut self,
        id: &NodeId,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Option<Result<()>> {
        self.with_node(id, |c, now| c.update_record(now, change))
    }

    /// Stop a node abruptly: its state is gone, packets to it are dropped.
    pub fn crash(&mut self, id: &NodeId) {
        if let Some(n) = self.nodes.get_mut(id) {
            if let Some(core) = n.core.take() {
                n.record = core.local_record().clone();
                n.persisted_version = core.local_version();
            }
            n.wake = None;
        }
    }

    /// Start a crashed node again with a fresh core whose version is above everything it
    /// published before (what its caller persisted, plus one), after applying `change` to its
    /// last record, and join it through node `seed`.
    pub fn restart(
        &mut self,
        id: &NodeId,
        seed: &NodeId,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Option<Result<()>> {
        let seed_addr = self.addr(seed)?;
        let node = self.nodes.get_mut(id)?;
        if node.core.is_some() {
            return None;
        }
        node.restarts += 1;
        node.persisted_version += 1;
        change(&mut node.record);
        if let Err(e) = self.boot(id, false)? {
            return Some(Err(e));
        }
        self.with_node(id, |c, now| c.join(now, &[seed_addr]));
        Some(Ok(()))
    }

    /// Split the network: nodes in different groups cannot reach each other; nodes in no
    /// group form one more group.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        let mut map = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for id in g {
                map.insert(*id, i);
            }
        }
        self.groups = Some(map);
    }

    pub fn heal(&mut self) {
        self.groups = None;
    }

    pub fn set_loss(&mut self, loss: f64) {
        self.loss = loss;
    }

    /// Deliver raw bytes to a node now, as if sent from `from` (e.g. a forged message).
    pub fn inject(&mut self, to: &NodeId, from: SocketAddr, bytes: &[u8]) -> Option<Result<()>> {
        let now = self.now;
        let core = self.nodes.get_mut(to)?.core.as_mut()?;
        let r = core.handle_message(now, from, bytes);
        self.after(to);
        Some(r)
    }
}
