//! A deterministic simulator of many IPAM cores: virtual time, a network with loss and
//! partitions, and push-pull gossip of the `ipam` record field standing in for the
//! membership core. For property tests and the benchmark; not used by the daemon.
//!
//! Records are relayed by every node (as the gossip core does), so the last record of a node
//! that crashed or left keeps spreading. Messages take one tick and are dropped when the
//! two nodes cannot reach each other at delivery time, or by random loss.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_crypto::{IdentityKey, NodeId};

use super::{Error, Ipam, IpamConfig, MemoryStore, Piece, RingEntry};

/// What a crashed node restarts with: its pieces and its allocations.
type Frozen = (Vec<Piece>, Vec<(String, Ipv4Addr)>);

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    pub id: NodeId,
    identity: Arc<IdentityKey>,
    pub store: MemoryStore,
    /// `None` while crashed (or after it left or was forgotten).
    pub ipam: Option<Ipam>,
    /// Left or forgotten: it never comes back with this identity.
    pub gone: bool,
    /// Latest record bytes known per node (including its own).
    known: BTreeMap<NodeId, (u64, Vec<u8>)>,
    /// Reachability as last told to its core.
    told: BTreeSet<NodeId>,
    /// Owned pieces and allocations when it crashed (what it restarts with).
    frozen: Option<Frozen>,
    /// Sequence of the last record it put out for gossip.
    last_published: Option<u64>,
    /// The topology version its reachability was last computed at.
    told_topology: u64,
    /// Records it learned recently (tick, node): what it pushes as rumours.
    recent: Vec<(u64, NodeId)>,
}

#[derive(Debug)]
struct InFlight {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    due: Instant,
}

/// The simulated cluster.
#[derive(Debug)]
pub struct Sim {
    pub now: Instant,
    pub tick: Duration,
    rng: ChaCha8Rng,
    config: IpamConfig,
    pub nodes: Vec<SimNode>,
    index: HashMap<NodeId, usize>,
    /// Partition group per node index; nodes in different groups cannot talk.
    group: Vec<u8>,
    loss: f64,
    in_flight: Vec<InFlight>,
    /// Gossip partners per node per tick.
    pub fanout: usize,
    /// Errors the cores returned on input that a correct peer sent (should stay empty).
    pub unexpected: Vec<String>,
    seed_counter: u64,
    /// Bumped whenever who-can-reach-whom may have changed.
    topology: u64,
    ticks: u64,
    /// A record is pushed as a rumour for this many ticks after a node learned it.
    pub rumour_ticks: u64,
    /// Every this many ticks a node does a full push-pull exchange with one peer.
    pub anti_entropy_every: u64,
    /// Whether a crashed node keeps the records it had learned (the daemon journals them
    /// in its state directory); `false` models a node that restarts knowing nobody.
    pub persist_records: bool,
}

impl Sim {
    pub fn new(seed: u64, range: Ipv4Net) -> Self {
        let config = IpamConfig::new(range);
        Self {
            now: Instant::now(),
            tick: Duration::from_millis(100),
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            nodes: Vec::new(),
            index: HashMap::new(),
            group: Vec::new(),
            loss: 0.0,
            in_flight: Vec::new(),
            fanout: 2,
            unexpected: Vec::new(),
            seed_counter: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            topology: 1,
            ticks: 0,
            rumour_ticks: 6,
            anti_entropy_every: 5,
            persist_records: true,
        }
    }

    pub fn config_mut(&mut self) -> &mut IpamConfig {
        &mut self.config
    }

    fn next_seed(&mut self) -> u64 {
        self.seed_counter = self.seed_counter.wrapping_add(1);
        self.seed_counter
    }

    /// Adds a node (fresh state, no genesis). Returns its index.
    pub fn add_node(&mut self) -> usize {
        self.topology += 1;
        let i = self.nodes.len();
        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed);
        let identity = Arc::new(IdentityKey::from_seed(&seed));
        let id = identity.node_id();
        let mut store = MemoryStore::new();
        let s = self.next_seed();
        let ipam = Ipam::open_store(identity.clone(), self.config.clone(), &mut store, s)
            .expect("a fresh in-memory store opens");
        self.nodes.push(SimNode {
            id,
            identity,
            store,
            ipam: Some(ipam),
            gone: false,
            known: BTreeMap::new(),
            told: BTreeSet::new(),
            frozen: None,
            last_published: None,
            told_topology: 0,
            recent: Vec::new(),
        });
        self.index.insert(id, i);
        self.group.push(0);
        i
    }

    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn ipam(&mut self, i: usize) -> Option<&mut Ipam> {
        self.nodes.get_mut(i)?.ipam.as_mut()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].ipam.is_some() && !self.nodes[i].gone
    }

    pub fn can_talk(&self, a: usize, b: usize) -> bool {
        a != b && self.is_up(a) && self.is_up(b) && self.group[a] == self.group[b]
    }

    pub fn crash(&mut self, i: usize) {
        self.topology += 1;
        // The callers of `Sim::ipam` act on an answer at once; a daemon answers only once it
        // is persisted. So what they were told is on disk before the crash.
        self.persist(i);
        let node = &mut self.nodes[i];
        if let Some(ipam) = node.ipam.take() {
            node.frozen = Some((ipam.owned().to_vec(), ipam.allocations()));
        }
        if !self.persist_records {
            node.known.clear();
        }
        node.recent.clear();
        node.told.clear();
        node.told_topology = 0;
    }

    /// Restarts a crashed node from its persisted state.
    pub fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.topology += 1;
        let s = self.next_seed();
        let node = &mut self.nodes[i];
        if node.ipam.is_some() {
            return Ok(());
        }
        let ipam = Ipam::open_store(
            node.identity.clone(),
            self.config.clone(),
            &mut node.store,
            s,
        )?;
        node.ipam = Some(ipam);
        node.frozen = None;
        // The daemon journals every member record it accepts and restores them at start
        // (`weft::daemon::members`); the core learns them again as it would from gossip.
        let now = self.now;
        let me = node.id;
        let restored: Vec<(NodeId, Vec<u8>)> = node
            .known
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, (_, bytes))| (*id, bytes.clone()))
            .collect();
        for (from, bytes) in restored {
            let Some(ipam) = self.nodes[i].ipam.as_mut() else {
                break;
            };
            if let Err(e) = ipam.handle_record(now, from, &bytes) {
                if !matches!(e, Error::GenesisConflict(_)) {
                    self.unexpected.push(format!(
                        "node {i} on restored record of {}: {e}",
                        from.short()
                    ));
                }
            }
        }
        self.flush(i);
        Ok(())
    }

    /// The node leaves for good: hands its space over, announces its last record to the
    /// nodes it can reach, and is gone.
    pub fn leave(&mut self, i: usize) -> Result<Option<NodeId>, Error> {
        self.topology += 1;
        let now = self.now;
        let Some(ipam) = self.nodes[i].ipam.as_mut() else {
            return Ok(None);
        };
        let to = ipam.leave(now)?;
        self.flush(i);
        self.publish(i);
        let rec = self.nodes[i].known.get(&self.nodes[i].id).cloned();
        if let Some((seq, bytes)) = rec {
            let from = self.nodes[i].id;
            for j in 0..self.nodes.len() {
                if self.can_talk(i, j) && !self.lost() {
                    self.offer(j, from, seq, &bytes);
                }
            }
        }
        self.nodes[i].ipam = None;
        self.nodes[i].gone = true;
        Ok(to)
    }

    /// Operator action on `by`: forget `target`, which must be down. It never returns.
    pub fn forget(&mut self, by: usize, target: usize) -> Result<(), Error> {
        self.topology += 1;
        let now = self.now;
        let id = self.nodes[target].id;
        let ipam = self.nodes[by].ipam.as_mut().ok_or(Error::UnknownNode(id))?;
        ipam.forget(now, id)?;
        self.nodes[target].gone = true;
        self.nodes[target].ipam = None;
        Ok(())
    }

    /// The precondition an operator must meet before `weft forget` (see the module doc):
    /// `by` has the last record `target` put out and the current record of every live node,
    /// and nothing `target` sent is still on its way.
    pub fn forget_is_safe(&self, by: usize, target: usize) -> bool {
        let t = &self.nodes[target];
        if !self.is_up(by)
            || t.ipam.is_some()
            || t.gone
            || by == target
            || t.last_published.is_none()
        {
            return false;
        }
        let known = &self.nodes[by].known;
        let has = |id: &NodeId, seq: Option<u64>| {
            seq.is_none_or(|s| known.get(id).is_some_and(|(k, _)| *k == s))
        };
        has(&t.id, t.last_published)
            && (0..self.nodes.len())
                .filter(|&j| self.is_up(j))
                .all(|j| has(&self.nodes[j].id, self.nodes[j].last_published))
            && !self.in_flight.iter().any(|m| m.from == target)
    }

    /// Brings a forgotten node back with its old identity and state (an operator mistake
    /// the design must refuse).
    pub fn resurrect(&mut self, i: usize) -> Result<(), Error> {
        self.topology += 1;
        self.nodes[i].gone = false;
        self.restart(i)
    }

    pub fn partition(&mut self, groups: Vec<u8>) {
        self.topology += 1;
        for (i, g) in groups.into_iter().enumerate() {
            if let Some(slot) = self.group.get_mut(i) {
                *slot = g;
            }
        }
    }

    pub fn heal(&mut self) {
        self.topology += 1;
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    pub fn set_loss(&mut self, loss: f64) {
        self.loss = loss;
    }

    fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.gen_bool(self.loss.min(1.0))
    }

    /// Writes what node i's core asks to persist (as its driver does before anything else).
    fn persist(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(ipam) = node.ipam.as_mut() {
            if let Err(e) = ipam.persist_to(&mut node.store) {
                self.unexpected.push(format!("node {i} persisting: {e}"));
            }
        }
    }

    /// Persists, then moves the core's transmits into the network.
    fn flush(&mut self, i: usize) {
        self.persist(i);
        let due = self.now + self.tick;
        let mut out = Vec::new();
        if let Some(ipam) = self.nodes[i].ipam.as_mut() {
            while let Some(t) = ipam.poll_transmit() {
                out.push(t);
            }
            while ipam.poll_event().is_some() {}
        }
        for t in out {
            if let Some(&to) = self.index.get(&t.to) {
                if !self.lost() {
                    self.in_flight.push(InFlight {
                        from: i,
                        to,
                        bytes: t.bytes,
                        due,
                    });
                }
            }
        }
    }

    /// Puts node i's current record into its own gossip cache.
    fn publish(&mut self, i: usize) {
        self.persist(i);
        let node = &mut self.nodes[i];
        let Some(ipam) = node.ipam.as_ref() else {
            return;
        };
        let seq = ipam.record_seq();
        if node.known.get(&node.id).is_some_and(|(s, _)| *s == seq) {
            return;
        }
        if let Some(bytes) = ipam.record() {
            node.known.insert(node.id, (seq, bytes));
            node.recent.push((self.ticks, node.id));
            node.last_published = Some(seq);
        }
    }

    /// Offers a record to node j; it takes it if newer.
    fn offer(&mut self, j: usize, from: NodeId, seq: u64, bytes: &[u8]) {
        let now = self.now;
        let node = &mut self.nodes[j];
        if node.known.get(&from).is_some_and(|(s, _)| *s >= seq) {
            return;
        }
        node.known.insert(from, (seq, bytes.to_vec()));
        node.recent.push((self.ticks, from));
        if let Some(ipam) = node.ipam.as_mut() {
            if let Err(e) = ipam.handle_record(now, from, bytes) {
                if !matches!(e, Error::GenesisConflict(_)) {
                    self.unexpected
                        .push(format!("node {j} on record of {}: {e}", from.short()));
                }
            }
        }
        self.flush(j);
    }

    /// One tick: reachability, timers, message delivery, one gossip round.
    pub fn step(&mut self) {
        self.now += self.tick;
        let now = self.now;
        let n = self.nodes.len();
        for i in 0..n {
            if !self.is_up(i) {
                continue;
            }
            if self.nodes[i].told_topology == self.topology {
                if let Some(ipam) = self.nodes[i].ipam.as_mut() {
                    ipam.handle_timeout(now);
                }
                self.flush(i);
                continue;
            }
            self.nodes[i].told_topology = self.topology;
            let reach: BTreeSet<NodeId> = (0..n)
                .filter(|&j| self.can_talk(i, j))
                .map(|j| self.nodes[j].id)
                .collect();
            let told = std::mem::take(&mut self.nodes[i].told);
            let all: BTreeSet<NodeId> = reach.union(&told).copied().collect();
            if let Some(ipam) = self.nodes[i].ipam.as_mut() {
                for id in all {
                    let r = reach.contains(&id);
                    if r != told.contains(&id) {
                        ipam.set_reachable(now, id, r);
                    }
                }
                ipam.handle_timeout(now);
            }
            self.nodes[i].told = reach;
            self.flush(i);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|m| m.due <= now);
        self.in_flight = later;
        for m in due {
            if !self.can_talk(m.from, m.to) {
                continue;
            }
            let from = self.nodes[m.from].id;
            if let Some(ipam) = self.nodes[m.to].ipam.as_mut() {
                if let Err(e) = ipam.handle_message(now, from, &m.bytes) {
                    self.unexpected
                        .push(format!("node {} on message from {}: {e}", m.to, m.from));
                }
            }
            self.flush(m.to);
        }
        for i in 0..n {
            self.publish(i);
        }
        let horizon = self.ticks.saturating_sub(self.rumour_ticks);
        for node in &mut self.nodes {
            node.recent.retain(|(t, _)| *t >= horizon);
        }
        for i in 0..n {
            if !self.is_up(i) {
                continue;
            }
            let mut peers: Vec<usize> = Vec::with_capacity(self.fanout);
            for _ in 0..self.fanout * 4 {
                let j = self.rng.gen_range(0..n);
                if self.can_talk(i, j) && !peers.contains(&j) {
                    peers.push(j);
                    if peers.len() == self.fanout {
                        break;
                    }
                }
            }
            let full = (self.ticks + i as u64) % self.anti_entropy_every.max(1) == 0;
            for (k, j) in peers.into_iter().enumerate() {
                if self.lost() {
                    continue;
                }
                self.exchange(i, j, full && k == 0);
            }
        }
        self.ticks += 1;
    }

    /// Push-pull between i and j: the records each learned recently (rumours), or with
    /// `full` every record (anti-entropy).
    fn exchange(&mut self, i: usize, j: usize, full: bool) {
        let to_j = self.newer(i, j, full);
        let to_i = self.newer(j, i, full);
        for (id, s, b) in to_j {
            self.offer(j, id, s, &b);
        }
        for (id, s, b) in to_i {
            self.offer(i, id, s, &b);
        }
    }

    /// Records `a` would send `b`: newer than what `b` has.
    fn newer(&self, a: usize, b: usize, full: bool) -> Vec<(NodeId, u64, Vec<u8>)> {
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        let wanted = |id: &NodeId| -> Option<(NodeId, u64, Vec<u8>)> {
            let (s, bytes) = na.known.get(id)?;
            nb.known
                .get(id)
                .is_none_or(|(t, _)| t < s)
                .then(|| (*id, *s, bytes.clone()))
        };
        if full {
            na.known.keys().filter_map(wanted).collect()
        } else {
            let ids: BTreeSet<NodeId> = na.recent.iter().map(|(_, id)| *id).collect();
            ids.iter().filter_map(wanted).collect()
        }
    }

    pub fn run(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.step();
        }
    }

    /// Safety: the pieces that nodes own (live ones, and crashed ones that will restart with
    /// them) never overlap, every allocation lies in its node's own pieces, no address
    /// is allocated twice, and no node sees its own space asserted at a higher version.
    pub fn check_safety(&self) -> Result<(), String> {
        let mut pieces: Vec<(u32, u32, usize)> = Vec::new();
        let mut addresses: BTreeMap<Ipv4Addr, (usize, String)> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.gone {
                continue;
            }
            let (owned, allocs) = match (&node.ipam, &node.frozen) {
                (Some(ipam), _) => (ipam.owned().to_vec(), ipam.allocations()),
                (None, Some((o, a))) => (o.clone(), a.clone()),
                (None, None) => continue,
            };
            pieces.extend(owned.iter().map(|p| (p.start, p.end, i)));
            let base = u32::from(self.config.range.network());
            for (container, addr) in allocs {
                let off = u32::from(addr) - base;
                if !owned.iter().any(|p| p.start <= off && off < p.end) {
                    return Err(format!(
                        "node {i} allocated {addr} ({container}) outside its own pieces"
                    ));
                }
                if let Some((j, c)) = addresses.insert(addr, (i, container.clone())) {
                    return Err(format!(
                        "address {addr} allocated twice: node {j} ({c}) and node {i} ({container})"
                    ));
                }
            }
        }
        // Honest nodes never assert space another node owns at a higher version than its
        // owner (what `IpamReport::disputed` reports).
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(d) = node.ipam.as_ref().and_then(|n| n.disputed().pop()) {
                return Err(format!(
                    "node {i} reports a dispute among honest nodes: {d:?}"
                ));
            }
        }
        pieces.sort_unstable();
        for w in pieces.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(format!(
                    "nodes {} and {} both own offsets {}..{}",
                    w[0].2,
                    w[1].2,
                    w[1].0,
                    w[0].1.min(w[1].1)
                ));
            }
        }
        Ok(())
    }

    /// Agreement: every live node computes the same ownership, and it matches what each live
    /// node really owns.
    pub fn check_agreement(&self) -> Result<(), String> {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_up(i)).collect();
        let Some(&first) = live.first() else {
            return Ok(());
        };
        let norm = |ring: Vec<RingEntry>| -> Vec<(u32, u32, NodeId)> {
            let mut out: Vec<(u32, u32, NodeId)> = Vec::new();
            for e in ring {
                match out.last_mut() {
                    Some(last) if last.1 == e.start && last.2 == e.owner => last.1 = e.end,
                    _ => out.push((e.start, e.end, e.owner)),
                }
            }
            out
        };
        let view = |i: usize| {
            self.nodes[i]
                .ipam
                .as_ref()
                .map(|x| norm(x.ownership()))
                .unwrap_or_default()
        };
        let reference = view(first);
        for &i in &live[1..] {
            let v = view(i);
            if v != reference {
                let legend: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(k, n)| format!("{k}={}", n.id.short()))
                    .collect();
                return Err(format!(
                    "node {i} and node {first} disagree on ownership:\n  {v:?}\n  {reference:?}\n  nodes: {}",
                    legend.join(" ")
                ));
            }
        }
        for &i in &live {
            let Some(ipam) = self.nodes[i].ipam.as_ref() else {
                continue;
            };
            let id = self.nodes[i].id;
            let mine: Vec<(u32, u32)> = reference
                .iter()
                .filter(|e| e.2 == id)
                .map(|e| (e.0, e.1))
                .collect();
            let owned: Vec<(u32, u32)> = ipam.owned().iter().map(|p| (p.start, p.end)).collect();
            if mine != owned {
                return Err(format!(
                    "view says node {i} owns {mine:?} but it owns {owned:?}"
                ));
            }
        }
        Ok(())
    }

    /// The most CIDR prefixes any live node's space takes now (what every other node routes
    /// to it and puts in its WireGuard allowed IPs).
    pub fn max_prefixes(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !n.gone)
            .filter_map(|n| Some(n.ipam.as_ref()?.owned_cidrs().len()))
            .max()
            .unwrap_or(0)
    }

    /// Largest record any live node publishes now.
    pub fn max_record_len(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.ipam.as_ref()?.record())
            .map(|r| r.len())
            .max()
            .unwrap_or(0)
    }
}

impl Sim {
    /// For debugging a failed schedule: every node's state and the records it holds.
    pub fn dump(&self) -> String {
        use std::fmt::Write as _;
        let idx = |id: &NodeId| self.index.get(id).copied().unwrap_or(usize::MAX);
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let state = if n.gone {
                "gone"
            } else if n.ipam.is_some() {
                "up"
            } else {
                "down"
            };
            let owned = match (&n.ipam, &n.frozen) {
                (Some(x), _) => x.owned().to_vec(),
                (None, Some((o, _))) => o.clone(),
                _ => Vec::new(),
            };
            let _ = writeln!(
                out,
                "node {i} {} {state} published {:?} owns {:?}",
                n.id.short(),
                n.last_published,
                owned
                    .iter()
                    .map(|p| (p.start, p.end, p.version))
                    .collect::<Vec<_>>()
            );
            for (id, (seq, bytes)) in &n.known {
                let r = super::Record::decode(*id, bytes);
                let desc = match r {
                    Ok(r) => format!(
                        "{:?} claims {:?} out {:?}",
                        r.status,
                        r.claims
                            .iter()
                            .map(|c| (c.piece.start, c.piece.end, c.piece.version))
                            .collect::<Vec<_>>(),
                        r.outgoing
                            .iter()
                            .map(|t| (
                                idx(&t.to),
                                t.pieces
                                    .iter()
                                    .map(|p| (p.start, p.end, p.version))
                                    .collect::<Vec<_>>()
                            ))
                            .collect::<Vec<_>>()
                    ),
                    Err(e) => format!("undecodable: {e}"),
                };
                let _ = writeln!(out, "    knows {} seq {seq:#x}: {desc}", idx(id));
            }
        }
        out
    }
}
