//! The IPAM state machine of one node. See the module doc of `ipam` for the design.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, info, warn};
use weft_crypto::{IdentityKey, NodeId};

use super::error::{Error, GenesisConflict, GenesisSide, Result};
use super::pool::{Pool, Unavailable};
use super::record::{Claim, Message, Record, Status};
use super::statement::{address_at, Genesis, GenesisId, Piece, Reclaim, Transfer};
use super::store::{Accepted, JournalOp, PersistedState, PersistedStatus, Store, STATE_FORMAT};
use super::view::{self, Assertion, IpamReport, NodeReport, RingEntry};
use super::wire::{hex, unhex, Reader, Writer};

/// Tunables of the IPAM core.
#[derive(Clone, Debug)]
pub struct IpamConfig {
    /// The cluster range; used when this node creates the genesis, and checked against the
    /// genesis it adopts.
    pub range: Ipv4Net,
    /// How long to wait for an answer to a request for space before asking someone else.
    pub request_timeout: Duration,
    /// How often unacknowledged transfers are sent again.
    pub retransmit_interval: Duration,
    /// How long a node that said "no space" is not asked again.
    pub deny_backoff: Duration,
    /// Rewrite the snapshot after this many journal lines (or as many as there are
    /// allocations, if more).
    pub compact_journal_after: usize,
}

impl IpamConfig {
    pub const DEFAULT_RANGE: &'static str = "10.32.0.0/12";

    pub fn new(range: Ipv4Net) -> Self {
        Self {
            range,
            request_timeout: Duration::from_secs(2),
            retransmit_interval: Duration::from_secs(1),
            deny_backoff: Duration::from_secs(5),
            compact_journal_after: 10_000,
        }
    }
}

impl Default for IpamConfig {
    fn default() -> Self {
        let range = Self::DEFAULT_RANGE
            .parse()
            .unwrap_or_else(|_| Ipv4Net::from(Ipv4Addr::new(10, 32, 0, 0)));
        Self::new(range)
    }
}

/// What the core reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    GenesisAdopted {
        genesis: GenesisId,
        creator: NodeId,
    },
    SpaceReceived {
        from: NodeId,
        addresses: u64,
    },
    SpaceGiven {
        to: NodeId,
        addresses: u64,
    },
    NodeForgotten {
        node: NodeId,
        by: NodeId,
    },
    /// This node was forgotten; it allocates nothing any more.
    Forgotten {
        by: NodeId,
    },
    Conflict(Box<GenesisConflict>),
}

/// A message for one peer, to send over the gossip transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: NodeId,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Peer {
    record: Option<Record>,
    reachable: bool,
}

impl Peer {
    fn free(&self) -> u64 {
        match &self.record {
            Some(r) if r.status == Status::Active => r
                .claims
                .iter()
                .map(|c| u64::from(c.piece.len() - c.used))
                .sum(),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u64,
    donor: NodeId,
    deadline: Instant,
}

/// The IPAM core of one node. Inputs: `handle_record`, `handle_message`, `set_reachable`,
/// `handle_timeout`; commands: `init_genesis`, `allocate`, `release`, `request_space`,
/// `leave`, `forget`; outputs: `poll_transmit`, `poll_event`, `poll_timeout`, and `record`
/// (republish it whenever `record_seq` changed).
#[derive(Debug)]
pub struct Ipam<S: Store> {
    identity: Arc<IdentityKey>,
    me: NodeId,
    config: IpamConfig,
    store: S,
    rng: ChaCha8Rng,
    genesis: Option<Genesis>,
    epoch: u32,
    counter: u32,
    status: Status,
    forgotten_by: Option<NodeId>,
    pool: Pool,
    outgoing: Vec<Transfer>,
    /// After leaving: the hand-over transfers already acknowledged. They stay in the final
    /// record, which is all that is left of this node, so that anyone reading it sees where
    /// the space went (a `forget` of a node that had given space to this one relies on it).
    handed: Vec<Transfer>,
    next_seq: BTreeMap<NodeId, u64>,
    accepted: BTreeMap<NodeId, Accepted>,
    tombstones: BTreeMap<NodeId, Reclaim>,
    peers: BTreeMap<NodeId, Peer>,
    conflicts: BTreeMap<GenesisId, (Genesis, BTreeSet<NodeId>)>,
    pending: Option<Pending>,
    wants_space: bool,
    denied: BTreeMap<NodeId, Instant>,
    /// Last request answered per requester: a retried request gets the same grant again.
    granted: BTreeMap<NodeId, (u64, u64)>,
    /// Acknowledged transfers (receiver, seq) -> the receiver's record seq that shows them.
    acks: BTreeMap<(NodeId, u64), u64>,
    next_retransmit: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    journal_len: usize,
}

impl<S: Store> Ipam<S> {
    /// Opens the IPAM state of `identity` from `store` (or starts fresh), and persists a new
    /// start epoch so the record sequence keeps growing across restarts.
    pub fn open(
        identity: Arc<IdentityKey>,
        config: IpamConfig,
        mut store: S,
        seed: u64,
    ) -> Result<Self> {
        super::statement::check_range(config.range)?;
        let me = identity.node_id();
        let loaded = store.load()?;
        let mut ipam = Self {
            identity,
            me,
            pool: Pool::new(super::statement::range_size(config.range)),
            config,
            store,
            rng: ChaCha8Rng::seed_from_u64(seed),
            genesis: None,
            epoch: 0,
            counter: 0,
            status: Status::Active,
            forgotten_by: None,
            outgoing: Vec::new(),
            handed: Vec::new(),
            next_seq: BTreeMap::new(),
            accepted: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            peers: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            pending: None,
            wants_space: false,
            denied: BTreeMap::new(),
            granted: BTreeMap::new(),
            acks: BTreeMap::new(),
            next_retransmit: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            journal_len: 0,
        };
        if let Some((state, journal)) = loaded {
            ipam.restore(state, journal)?;
        }
        ipam.epoch += 1;
        ipam.save()?;
        Ok(ipam)
    }

    fn restore(&mut self, state: PersistedState, journal: Vec<JournalOp<'static>>) -> Result<()> {
        let bad = |reason: String| Error::State {
            path: "ipam state".into(),
            reason,
        };
        if state.format != STATE_FORMAT {
            return Err(bad(format!("unknown format {}", state.format)));
        }
        if state.node != self.me.to_string() {
            return Err(bad(format!(
                "belongs to node {}, not to this node {}",
                state.node, self.me
            )));
        }
        if let Some(g) = &state.genesis {
            let bytes = unhex(g)?;
            let mut r = Reader::new(&bytes);
            let genesis = Genesis::decode(&mut r)?;
            if genesis.range != self.config.range {
                return Err(Error::RangeMismatch {
                    configured: self.config.range,
                    cluster: genesis.range,
                });
            }
            self.genesis = Some(genesis);
        }
        let size = self.size();
        self.epoch = state.epoch;
        self.status = match &state.status {
            PersistedStatus::Active => Status::Active,
            PersistedStatus::Left => Status::Left,
            PersistedStatus::Forgotten { by } => {
                self.forgotten_by = Some(
                    by.parse()
                        .map_err(|_| bad("bad forgotten-by node id".into()))?,
                );
                Status::Forgotten
            }
        };
        for p in &state.owned {
            if p.is_empty() || p.end > size {
                return Err(bad("owned piece outside the range".into()));
            }
        }
        self.pool.add(&state.owned);
        for (container, &offset) in &state.allocations {
            if !self.pool.restore(container.clone(), offset) {
                return Err(bad(format!(
                    "allocation of {container} is outside the owned space"
                )));
            }
        }
        for op in journal {
            match op {
                JournalOp::Allocate { container, offset } => {
                    if !self.pool.restore(container.to_string(), offset)
                        && self.pool.allocated(&container) != Some(offset)
                    {
                        return Err(bad(format!("journal: allocation of {container} is outside the owned space or taken")));
                    }
                }
                JournalOp::Release { container } => {
                    self.pool.release(&container);
                }
            }
        }
        for t in &state.outgoing {
            let bytes = unhex(t)?;
            let mut r = Reader::new(&bytes);
            self.outgoing.push(Transfer::decode(&mut r, self.me, size)?);
        }
        for (node, seq) in state.next_seq {
            self.next_seq
                .insert(node.parse().map_err(|_| bad("bad node id".into()))?, seq);
        }
        for (node, acc) in state.accepted {
            self.accepted
                .insert(node.parse().map_err(|_| bad("bad node id".into()))?, acc);
        }
        for t in &state.tombstones {
            let bytes = unhex(t)?;
            let mut r = Reader::new(&bytes);
            let rc = Reclaim::decode(&mut r, size)?;
            self.tombstones.insert(rc.forgotten, rc);
        }
        Ok(())
    }

    fn snapshot(&self) -> PersistedState {
        PersistedState {
            format: STATE_FORMAT,
            node: self.me.to_string(),
            genesis: self.genesis.as_ref().map(|g| {
                let mut w = Writer::default();
                g.encode(&mut w);
                hex(&w.buf)
            }),
            epoch: self.epoch,
            status: match self.status {
                Status::Active => PersistedStatus::Active,
                Status::Left => PersistedStatus::Left,
                Status::Forgotten => PersistedStatus::Forgotten {
                    by: self.forgotten_by.map(|n| n.to_string()).unwrap_or_default(),
                },
            },
            owned: self.pool.owned().to_vec(),
            allocations: {
                // Sorted first, so the map is built in one pass instead of by comparisons.
                let mut sorted: Vec<(&String, u32)> =
                    self.pool.allocations().map(|(c, &o)| (c, o)).collect();
                sorted.sort_unstable();
                sorted.into_iter().map(|(c, o)| (c.clone(), o)).collect()
            },
            outgoing: self
                .outgoing
                .iter()
                .map(|t| {
                    let mut w = Writer::default();
                    t.encode(&mut w);
                    hex(&w.buf)
                })
                .collect(),
            next_seq: self
                .next_seq
                .iter()
                .map(|(n, s)| (n.to_string(), *s))
                .collect(),
            accepted: self
                .accepted
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
            tombstones: self
                .tombstones
                .values()
                .map(|rc| {
                    let mut w = Writer::default();
                    rc.encode(&mut w);
                    hex(&w.buf)
                })
                .collect(),
        }
    }

    /// Persists the whole state (durably) and marks the record changed.
    fn save(&mut self) -> Result<()> {
        let snap = self.snapshot();
        self.store.save(&snap)?;
        self.journal_len = 0;
        self.bump();
        Ok(())
    }

    fn bump(&mut self) {
        self.counter = self.counter.wrapping_add(1);
    }

    fn size(&self) -> u32 {
        super::statement::range_size(self.genesis.as_ref().map_or(self.config.range, |g| g.range))
    }

    fn range(&self) -> Ipv4Net {
        self.genesis.as_ref().map_or(self.config.range, |g| g.range)
    }

    // ----- getters -----

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    pub fn genesis(&self) -> Option<&Genesis> {
        self.genesis.as_ref()
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// The pieces this node owns and allocates from.
    pub fn owned(&self) -> &[Piece] {
        self.pool.owned()
    }

    /// The pieces as CIDR blocks (for routes to this node's containers).
    pub fn owned_cidrs(&self) -> Vec<Ipv4Net> {
        let range = self.range();
        self.pool
            .owned()
            .iter()
            .flat_map(|p| {
                ipnet::Ipv4Subnets::new(address_at(range, p.start), address_at(range, p.end - 1), 0)
            })
            .collect()
    }

    /// Every container and its address.
    pub fn allocations(&self) -> Vec<(String, Ipv4Addr)> {
        let range = self.range();
        let mut out: Vec<_> = self
            .pool
            .allocations()
            .map(|(c, &o)| (c.clone(), address_at(range, o)))
            .collect();
        out.sort();
        out
    }

    pub fn free_addresses(&self) -> u64 {
        self.pool.free_count()
    }

    /// Grows whenever `record()` would return something new.
    pub fn record_seq(&self) -> u64 {
        (u64::from(self.epoch) << 32) | u64::from(self.counter)
    }

    /// The bytes for the `ipam` field of this node's gossip record, or `None` before it has a
    /// genesis.
    pub fn record(&self) -> Option<Vec<u8>> {
        let genesis = self.genesis.clone()?;
        let claims = self
            .pool
            .owned()
            .iter()
            .map(|&piece| Claim {
                piece,
                // The network and broadcast addresses count as used: they are not free.
                used: self.pool.unavailable_in(piece.start, piece.end),
            })
            .collect();
        let mut outgoing: Vec<Transfer> =
            self.handed.iter().chain(&self.outgoing).cloned().collect();
        outgoing.reverse();
        // Our own reclaims first, then the ones we learned, newest first within each: a
        // reclaim we only learned may be the last copy among live nodes (its maker is down
        // and its record lost with the gossip caches of restarted nodes), so we pass it on.
        let mut reclaims: Vec<Reclaim> = self.tombstones.values().cloned().collect();
        reclaims.sort_by_key(|rc| (rc.by != self.me, std::cmp::Reverse(rc.base_seq)));
        let record = Record {
            genesis,
            seq: self.record_seq(),
            status: self.status,
            claims,
            outgoing,
            reclaims,
        };
        Some(record.encode().0)
    }

    pub fn is_forgotten(&self, node: &NodeId) -> bool {
        self.tombstones.contains_key(node)
    }

    // ----- commands -----

    /// Starts a new address space owned wholly by this node: the seed of a new cluster, or
    /// `weft ipam init`. Refused if this node already has one.
    pub fn init_genesis(&mut self, _now: Instant) -> Result<GenesisId> {
        if let Some(g) = &self.genesis {
            return Err(Error::AlreadyInitialised(g.id));
        }
        let genesis = Genesis::create(&self.identity, self.config.range, &mut self.rng)?;
        let id = genesis.id;
        let size = genesis.size();
        self.genesis = Some(genesis);
        self.pool.add(&[Piece {
            start: 0,
            end: size,
            version: 1,
        }]);
        self.save()?;
        info!(genesis = %id, range = %self.config.range, "started a new address space");
        self.events.push_back(Event::GenesisAdopted {
            genesis: id,
            creator: self.me,
        });
        Ok(id)
    }

    fn check_active(&self) -> Result<()> {
        match self.status {
            Status::Active => Ok(()),
            Status::Left => Err(Error::Left),
            Status::Forgotten => Err(Error::Forgotten {
                by: self.forgotten_by.unwrap_or(self.me),
            }),
        }
    }

    /// An address for `container`: the one it already has, or a free one from this node's
    /// own pieces (no network round trip). Without free space it asks another node and
    /// answers [`Error::SpaceRequested`] (try again shortly), or says why none can be had.
    pub fn allocate(&mut self, now: Instant, container: &str) -> Result<Ipv4Addr> {
        self.check_active()?;
        if self.genesis.is_none() {
            return Err(Error::NoGenesis);
        }
        let range = self.range();
        if let Some(offset) = self.pool.allocated(container) {
            return Ok(address_at(range, offset));
        }
        if let Some(offset) = self.pool.allocate_new(container) {
            self.journal_allocation(container, offset)?;
            return Ok(address_at(range, offset));
        }
        self.wants_space = true;
        let donor = self.request_space(now)?;
        Err(Error::SpaceRequested { donor })
    }

    /// `address` for `container`, if it is free in this node's own pieces (`weft attach
    /// --ip`). The same address again is not an error; another address for a container that
    /// has one is ([`Error::AlreadyAllocated`]), as is an address outside this node's space
    /// ([`Error::NotInOwnSpace`]) or one in use or reserved ([`Error::AddressInUse`]).
    pub fn allocate_at(&mut self, container: &str, address: Ipv4Addr) -> Result<Ipv4Addr> {
        self.check_active()?;
        if self.genesis.is_none() {
            return Err(Error::NoGenesis);
        }
        let range = self.range();
        if !range.contains(&address) {
            return Err(Error::NotInRange(address));
        }
        if let Some(offset) = self.pool.allocated(container) {
            let held = address_at(range, offset);
            if held == address {
                return Ok(held);
            }
            return Err(Error::AlreadyAllocated {
                container: container.to_string(),
                address: held,
            });
        }
        let offset = u32::from(address) - u32::from(range.network());
        match self.pool.unavailable(offset) {
            None => {}
            Some(Unavailable::NotOwned) => {
                return Err(Error::NotInOwnSpace {
                    address,
                    space: self.owned_cidrs(),
                })
            }
            Some(Unavailable::Reserved) => {
                return Err(Error::AddressInUse {
                    address,
                    holder: String::new(),
                })
            }
            Some(Unavailable::Held(holder)) => {
                return Err(Error::AddressInUse {
                    address,
                    holder: holder.to_string(),
                })
            }
        }
        if !self.pool.restore(container.to_string(), offset) {
            return Err(Error::AddressInUse {
                address,
                holder: String::new(),
            });
        }
        self.journal_allocation(container, offset)?;
        Ok(address)
    }

    /// Journals an allocation the pool just made (undone in the pool if that fails), and
    /// rewrites the snapshot now and then.
    fn journal_allocation(&mut self, container: &str, offset: u32) -> Result<()> {
        let op = JournalOp::Allocate {
            container: Cow::Borrowed(container),
            offset,
        };
        if let Err(e) = self.store.append(&op) {
            self.pool.release(container);
            return Err(e);
        }
        self.journal_len += 1;
        // Rewriting the snapshot costs O(allocations): doing it after twice as many
        // journal lines keeps an allocation O(1) amortised.
        if self.journal_len
            >= self
                .config
                .compact_journal_after
                .max(2 * self.pool.allocation_count())
        {
            self.save()?;
        }
        self.bump();
        Ok(())
    }

    /// Releases the address of `container`, if it has one.
    pub fn release(&mut self, container: &str) -> Result<Option<Ipv4Addr>> {
        let Some(offset) = self.pool.release(container) else {
            return Ok(None);
        };
        if let Err(e) = self.store.append(&JournalOp::Release {
            container: Cow::Borrowed(container),
        }) {
            // Not journalled, so not released: put it back as it was.
            self.pool.restore(container.to_owned(), offset);
            return Err(e);
        }
        self.journal_len += 1;
        self.bump();
        Ok(Some(address_at(self.range(), offset)))
    }

    /// Asks the reachable node with the most free space for a piece (or returns the donor
    /// already asked). The daemon may call this ahead of need, e.g. right after joining.
    pub fn request_space(&mut self, now: Instant) -> Result<NodeId> {
        self.check_active()?;
        let Some(genesis) = self.genesis.as_ref().map(|g| g.id) else {
            return Err(Error::NoGenesis);
        };
        if let Some(p) = self.pending {
            if p.deadline > now {
                return Ok(p.donor);
            }
            self.pending = None;
        }
        self.denied.retain(|_, until| *until > now);
        let mut best: Option<(u64, NodeId)> = None;
        let mut unreachable = Vec::new();
        for (id, peer) in &self.peers {
            let free = peer.free();
            if free == 0 || self.tombstones.contains_key(id) {
                continue;
            }
            if !peer.reachable {
                unreachable.push(*id);
            } else if !self.denied.contains_key(id) && best.is_none_or_smaller(free) {
                best = Some((free, *id));
            }
        }
        let Some((_, donor)) = best else {
            if unreachable.is_empty() && self.pool.free_count() == 0 {
                return Err(Error::RangeExhausted {
                    range: self.range(),
                });
            }
            return Err(Error::NoAddressSpaceReachable { unreachable });
        };
        let id = self.rng.gen();
        self.pending = Some(Pending {
            id,
            donor,
            deadline: now + self.config.request_timeout,
        });
        debug!(peer = %donor.short(), "asking for address space");
        self.send(donor, Message::Request { genesis, id });
        Ok(donor)
    }

    /// Leaves for good: hands every owned piece to one reachable node (preferring the owner of
    /// the neighbouring piece, so the ring stays compact) and drops all allocations.
    pub fn leave(&mut self, now: Instant) -> Result<Option<NodeId>> {
        self.check_active()?;
        let Some(genesis) = self.genesis.as_ref().map(|g| g.id) else {
            self.status = Status::Left;
            self.save()?;
            return Ok(None);
        };
        let candidates: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.reachable
                    && !self.tombstones.contains_key(id)
                    && p.record
                        .as_ref()
                        .is_some_and(|r| r.status == Status::Active)
            })
            .map(|(id, _)| *id)
            .collect();
        let receiver = if self.pool.owned().is_empty() {
            None
        } else {
            let neighbour = self.pool.owned().first().and_then(|first| {
                let ring = self.ownership();
                ring.iter().find(|e| e.end == first.start).map(|e| e.owner)
            });
            let chosen = neighbour
                .filter(|n| candidates.contains(n))
                .or_else(|| candidates.first().copied());
            Some(chosen.ok_or(Error::NoPeerToHandTo)?)
        };
        let pieces: Vec<Piece> = self
            .pool
            .clear()
            .into_iter()
            .map(|p| Piece {
                version: p.version + 1,
                ..p
            })
            .collect();
        if let Some(to) = receiver {
            let t = self.make_transfer(genesis, to, pieces);
            self.outgoing.push(t.clone());
            self.status = Status::Left;
            self.save()?;
            info!(peer = %to.short(), addresses = t.addresses(), "left: handed all address space over");
            self.send(
                to,
                Message::Grant {
                    genesis,
                    id: 0,
                    transfer: t,
                },
            );
        } else {
            self.status = Status::Left;
            self.save()?;
        }
        self.next_retransmit = Some(now + self.config.retransmit_interval);
        Ok(receiver)
    }

    /// Takes back the space of `node`, gone for good without leaving (`weft forget`). The
    /// operator asserts it will not come back with this identity: if it does, it is refused.
    pub fn forget(&mut self, _now: Instant, node: NodeId) -> Result<Reclaim> {
        self.check_active()?;
        let Some(genesis) = self.genesis.as_ref().map(|g| g.id) else {
            return Err(Error::NoGenesis);
        };
        if node == self.me {
            return Err(Error::ForgetSelf);
        }
        let peer = self.peers.get(&node).ok_or(Error::UnknownNode(node))?;
        if peer.reachable {
            return Err(Error::ForgetReachable(node));
        }
        let base_seq = peer.record.as_ref().map_or(0, |r| r.seq);
        // Its own space, and what it gave to nodes that left before applying it: a node that
        // has left applies nothing, so that space would otherwise belong to nobody. (What
        // such a node did apply before leaving, it handed on at a higher version, and the
        // view shows the new owner instead.)
        let to_left: Vec<Piece> = peer
            .record
            .iter()
            .flat_map(|r| r.outgoing.iter())
            .filter(|t| {
                self.peers
                    .get(&t.to)
                    .and_then(|p| p.record.as_ref())
                    .is_some_and(|r| r.status == Status::Left)
            })
            .flat_map(|t| t.pieces.iter().copied())
            .collect();
        let pieces: Vec<Piece> = self
            .ownership()
            .into_iter()
            .filter(|e| {
                e.owner == node
                    || (self
                        .peers
                        .get(&e.owner)
                        .and_then(|p| p.record.as_ref())
                        .is_some_and(|r| r.status == Status::Left)
                        && to_left.iter().any(|p| p.start <= e.start && e.end <= p.end))
            })
            .map(|e| Piece {
                start: e.start,
                end: e.end,
                version: e.version + 1,
            })
            .collect();
        // The transfers to it that this view holds (their space is in `pieces` or moved
        // on): their givers must not take any of it back.
        let accounted: Vec<(NodeId, u64)> = self
            .peers
            .values()
            .filter_map(|p| p.record.as_ref())
            .flat_map(|r| r.outgoing.iter())
            .chain(self.outgoing.iter())
            .filter(|t| t.to == node)
            .map(|t| (t.from, t.seq))
            .collect();
        let reclaim = Reclaim::sign(
            &self.identity,
            genesis,
            node,
            base_seq,
            pieces.clone(),
            accounted,
        );
        self.tombstones.insert(node, reclaim.clone());
        // As every node that learns the reclaim does: the forgotten node's record says nothing
        // any more (its transfers in flight are covered by the reclaim or void).
        self.peers.remove(&node);
        self.outgoing.retain(|t| t.to != node);
        self.pool.add(&pieces);
        self.save()?;
        let addresses: u64 = pieces.iter().map(|p| u64::from(p.len())).sum();
        info!(peer = %node.short(), addresses, "forgot node and took its address space back");
        self.events
            .push_back(Event::NodeForgotten { node, by: self.me });
        Ok(reclaim)
    }

    fn make_transfer(&mut self, genesis: GenesisId, to: NodeId, pieces: Vec<Piece>) -> Transfer {
        let seq = self.next_seq.entry(to).or_insert(0);
        *seq += 1;
        Transfer::sign(&self.identity, genesis, to, *seq, pieces)
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.transmits.push_back(Transmit {
            to,
            bytes: msg.encode(),
        });
    }

    // ----- inputs -----

    /// Reachability of a peer, from the membership layer.
    pub fn set_reachable(&mut self, now: Instant, node: NodeId, reachable: bool) {
        if node == self.me {
            return;
        }
        let peer = self.peers.entry(node).or_default();
        let was = peer.reachable;
        peer.reachable = reachable;
        if reachable && !was {
            self.retransmit_to(Some(node));
            if self.wants_space && self.pending.is_none() {
                let _ = self.request_space(now);
            }
        }
        if !reachable && self.pending.is_some_and(|p| p.donor == node) {
            self.pending = None;
        }
    }

    /// The `ipam` field of `from`'s record, as delivered by the gossip core after it checked
    /// the record's signature. Newer records replace older ones; a bad one changes nothing.
    pub fn handle_record(&mut self, now: Instant, from: NodeId, bytes: &[u8]) -> Result<()> {
        if from == self.me {
            return Ok(());
        }
        let record = Record::decode(from, bytes)?;
        if let Some(rc) = self.tombstones.get(&from) {
            if record.status != Status::Forgotten && record.genesis.id == rc_genesis(&self.genesis)
            {
                let msg = Message::Forgotten {
                    genesis: record.genesis.id,
                    reclaim: rc.clone(),
                };
                self.send(from, msg);
            }
            return Ok(());
        }
        match &self.genesis {
            None => self.adopt(&record.genesis)?,
            Some(ours) if *ours == record.genesis => {}
            Some(_) => return Err(self.conflict(from, &record.genesis)),
        }
        let peer = self.peers.entry(from).or_default();
        if peer.record.as_ref().is_some_and(|r| r.seq >= record.seq) {
            return Ok(());
        }
        // A node that said "no space" may have some again: its new record tells.
        self.denied.remove(&from);
        // Statements this record carries: transfers to us, reclaims of forgotten nodes.
        for t in &record.outgoing {
            if t.to == self.me {
                if let Err(e) = self.accept(t) {
                    warn!(peer = %from.short(), error = %e, "ignored a transfer");
                }
            }
        }
        for rc in &record.reclaims {
            if let Err(e) = self.learn_reclaim(rc) {
                warn!(peer = %from.short(), error = %e, "ignored a reclaim");
            }
        }
        for d in self.disputes_in(from, &record) {
            warn!(
                peer = %from.short(),
                first = %address_at(self.range(), d.start),
                last = %address_at(self.range(), d.end - 1),
                ours = d.ours,
                theirs = d.theirs,
                "a node asserts address space this node owns and never gave away"
            );
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.record = Some(record);
        }
        self.prune_acknowledged(from)?;
        if self.wants_space && self.pending.is_none() && self.pool.free_count() == 0 {
            let _ = self.request_space(now);
        }
        Ok(())
    }

    fn adopt(&mut self, genesis: &Genesis) -> Result<()> {
        genesis.verify()?;
        if genesis.range != self.config.range {
            return Err(Error::RangeMismatch {
                configured: self.config.range,
                cluster: genesis.range,
            });
        }
        self.genesis = Some(genesis.clone());
        self.save()?;
        info!(genesis = %genesis.id, creator = %genesis.creator.short(), "joined the address space");
        self.events.push_back(Event::GenesisAdopted {
            genesis: genesis.id,
            creator: genesis.creator,
        });
        Ok(())
    }

    fn conflict(&mut self, from: NodeId, theirs: &Genesis) -> Error {
        let entry = self
            .conflicts
            .entry(theirs.id)
            .or_insert_with(|| (theirs.clone(), BTreeSet::new()));
        let first = entry.1.insert(from) && entry.1.len() == 1;
        let c = self.conflict_report(theirs.id);
        if first {
            warn!(peer = %from.short(), "{c}");
            self.events.push_back(Event::Conflict(Box::new(c.clone())));
        }
        Error::GenesisConflict(Box::new(c))
    }

    fn conflict_report(&self, theirs: GenesisId) -> GenesisConflict {
        let side = |g: &Genesis, nodes: Vec<NodeId>| GenesisSide {
            genesis: g.id,
            creator: g.creator.to_string(),
            range: g.range,
            nodes: nodes.iter().take(5).map(|n| n.to_string()).collect(),
        };
        let our_nodes: Vec<NodeId> = std::iter::once(self.me)
            .chain(
                self.peers
                    .iter()
                    .filter(|(_, p)| p.record.is_some())
                    .map(|(id, _)| *id),
            )
            .collect();
        let (their_genesis, their_nodes) = &self.conflicts[&theirs];
        let ours = self.genesis.as_ref().map_or_else(
            || GenesisSide {
                genesis: GenesisId([0; 16]),
                creator: String::new(),
                range: self.config.range,
                nodes: vec![],
            },
            |g| side(g, our_nodes),
        );
        GenesisConflict {
            ours,
            theirs: side(their_genesis, their_nodes.iter().copied().collect()),
        }
    }

    /// Applies a transfer addressed to us, exactly once.
    fn accept(&mut self, t: &Transfer) -> Result<()> {
        let Some(genesis) = self.genesis.as_ref().map(|g| g.id) else {
            return Err(Error::NoGenesis);
        };
        if t.to != self.me || self.status != Status::Active || self.tombstones.contains_key(&t.from)
        {
            return Ok(());
        }
        if self
            .accepted
            .get(&t.from)
            .is_some_and(|a| a.contains(t.seq))
        {
            let record_seq = self.record_seq();
            self.send(
                t.from,
                Message::Ack {
                    genesis,
                    seq: t.seq,
                    record_seq,
                },
            );
            return Ok(());
        }
        t.verify(genesis)?;
        if t.pieces
            .iter()
            .any(|p| (p.start..p.end).any(|o| self.pool.owns(o)))
        {
            return Err(Error::Decode("transfer overlaps space this node owns"));
        }
        self.accepted.entry(t.from).or_default().insert(t.seq);
        self.pool.add(&t.pieces);
        self.save()?;
        let addresses = t.addresses();
        info!(peer = %t.from.short(), addresses, "received address space");
        let record_seq = self.record_seq();
        self.send(
            t.from,
            Message::Ack {
                genesis,
                seq: t.seq,
                record_seq,
            },
        );
        if self.pending.is_some_and(|p| p.donor == t.from) {
            self.pending = None;
        }
        self.wants_space = false;
        self.events.push_back(Event::SpaceReceived {
            from: t.from,
            addresses,
        });
        Ok(())
    }

    fn learn_reclaim(&mut self, rc: &Reclaim) -> Result<()> {
        let Some(genesis) = self.genesis.as_ref().map(|g| g.id) else {
            return Err(Error::NoGenesis);
        };
        if rc.forgotten == self.me {
            if self.status == Status::Forgotten {
                return Ok(());
            }
            rc.verify(genesis)?;
            warn!(peer = %rc.by.short(), "this node was forgotten by an operator; it hands out no address any more");
            self.status = Status::Forgotten;
            self.forgotten_by = Some(rc.by);
            self.pool.clear();
            self.outgoing.clear();
            self.tombstones.insert(rc.forgotten, rc.clone());
            self.save()?;
            self.events.push_back(Event::Forgotten { by: rc.by });
            return Ok(());
        }
        if self.tombstones.contains_key(&rc.forgotten) {
            return Ok(());
        }
        rc.verify(genesis)?;
        self.tombstones.insert(rc.forgotten, rc.clone());
        self.peers.remove(&rc.forgotten);
        // Transfers we made to the forgotten node and that the reclaim does not cover would
        // otherwise belong to nobody: they come back to us. But not what the forgotten node
        // may have passed on: not an acknowledged transfer (it was applied, so what the
        // reclaim missed had moved on), nor a stretch our view shows held by another node at
        // the transfer's version or higher.
        let moved_on: Vec<Piece> = self
            .ownership()
            .into_iter()
            .filter(|e| e.owner != self.me)
            .map(|e| Piece {
                start: e.start,
                end: e.end,
                version: e.version,
            })
            .collect();
        if !rc.accounted_complete
            && self
                .outgoing
                .iter()
                .any(|t| t.to == rc.forgotten && !self.acks.contains_key(&(rc.forgotten, t.seq)))
        {
            warn!(
                peer = %rc.forgotten.short(),
                "the reclaim of a forgotten node could not name every transfer to it; this node's transfers to it stay unowned"
            );
        }
        let mut back = Vec::new();
        for t in self.outgoing.iter().filter(|t| {
            t.to == rc.forgotten
                && !self.acks.contains_key(&(rc.forgotten, t.seq))
                && rc.leaves_to_giver(&self.me, t.seq)
        }) {
            for p in subtract(&t.pieces, &rc.pieces) {
                let held: Vec<Piece> = moved_on
                    .iter()
                    .filter(|e| e.version >= p.version)
                    .copied()
                    .collect();
                back.extend(subtract(&[p], &held).into_iter().map(|p| Piece {
                    version: p.version + 1,
                    ..p
                }));
            }
        }
        self.outgoing.retain(|t| t.to != rc.forgotten);
        self.pool.add(&back);
        self.save()?;
        info!(peer = %rc.forgotten.short(), by = %rc.by.short(), "node was forgotten");
        self.events.push_back(Event::NodeForgotten {
            node: rc.forgotten,
            by: rc.by,
        });
        Ok(())
    }

    /// A direct message from `from` (authenticated by the transport).
    pub fn handle_message(&mut self, now: Instant, from: NodeId, bytes: &[u8]) -> Result<()> {
        let Some(ours) = self.genesis.as_ref().map(|g| g.id) else {
            return Err(Error::NoGenesis);
        };
        let msg = Message::decode(from, bytes, self.size())?;
        if msg.genesis() != ours {
            return Err(Error::Decode("message for another address space"));
        }
        if let Message::Forgotten { reclaim, .. } = &msg {
            return self.learn_reclaim(reclaim);
        }
        if let Some(rc) = self.tombstones.get(&from) {
            let msg = Message::Forgotten {
                genesis: ours,
                reclaim: rc.clone(),
            };
            self.send(from, msg);
            return Ok(());
        }
        match msg {
            Message::Request { id, .. } => self.give(from, id),
            Message::Grant { transfer, .. } => self.accept(&transfer),
            Message::Deny { id, .. } => {
                if self.pending.is_some_and(|p| p.id == id && p.donor == from) {
                    self.pending = None;
                    self.denied.insert(from, now + self.config.deny_backoff);
                    if self.wants_space {
                        let _ = self.request_space(now);
                    }
                }
                Ok(())
            }
            Message::Ack {
                seq, record_seq, ..
            } => {
                if self.outgoing.iter().any(|t| t.to == from && t.seq == seq) {
                    self.acks.insert((from, seq), record_seq);
                }
                self.prune_acknowledged(from)
            }
            Message::Forgotten { .. } => Ok(()),
        }
    }

    /// Answers a request for space: half of this node's largest free run, from its top end.
    fn give(&mut self, to: NodeId, id: u64) -> Result<()> {
        let Some(genesis) = self.genesis.as_ref().map(|g| g.id) else {
            return Err(Error::NoGenesis);
        };
        if let Some(&(last_id, seq)) = self.granted.get(&to) {
            if last_id == id {
                if let Some(t) = self
                    .outgoing
                    .iter()
                    .find(|t| t.to == to && t.seq == seq)
                    .cloned()
                {
                    self.send(
                        to,
                        Message::Grant {
                            genesis,
                            id,
                            transfer: t,
                        },
                    );
                }
                return Ok(());
            }
        }
        let run = if self.status == Status::Active {
            self.pool.largest_free_run()
        } else {
            None
        };
        let Some((start, end)) = run else {
            self.send(to, Message::Deny { genesis, id });
            return Ok(());
        };
        let give = (end - start).div_ceil(2);
        let pieces = self.pool.take(end - give, end);
        let t = self.make_transfer(genesis, to, pieces);
        self.outgoing.push(t.clone());
        self.granted.insert(to, (id, t.seq));
        self.save()?;
        info!(peer = %to.short(), addresses = t.addresses(), "gave address space");
        self.events.push_back(Event::SpaceGiven {
            to,
            addresses: t.addresses(),
        });
        self.send(
            to,
            Message::Grant {
                genesis,
                id,
                transfer: t,
            },
        );
        Ok(())
    }

    /// Drops our transfers to `node` once we hold a record of it that shows them applied: from
    /// then on its own record asserts those pieces, and relaying ours is no longer needed.
    fn prune_acknowledged(&mut self, node: NodeId) -> Result<()> {
        let Some(have) = self
            .peers
            .get(&node)
            .and_then(|p| p.record.as_ref())
            .map(|r| r.seq)
        else {
            return Ok(());
        };
        let acks = &self.acks;
        let before = self.outgoing.len();
        let (done, kept): (Vec<Transfer>, Vec<Transfer>) = std::mem::take(&mut self.outgoing)
            .into_iter()
            .partition(|t| {
                t.to == node && acks.get(&(node, t.seq)).is_some_and(|&need| have >= need)
            });
        self.outgoing = kept;
        if self.status == Status::Left {
            self.handed.extend(done);
        }
        self.acks
            .retain(|&(n, _), &mut need| n != node || have < need);
        if before != self.outgoing.len() {
            self.save()?;
        }
        Ok(())
    }

    fn retransmit_to(&mut self, only: Option<NodeId>) {
        let Some(genesis) = self.genesis.as_ref().map(|g| g.id) else {
            return;
        };
        let resend: Vec<Transfer> = self
            .outgoing
            .iter()
            .filter(|t| !self.acks.contains_key(&(t.to, t.seq)))
            .filter(|t| {
                only.map_or_else(
                    || self.peers.get(&t.to).is_some_and(|p| p.reachable),
                    |n| n == t.to,
                )
            })
            .cloned()
            .collect();
        for t in resend {
            self.send(
                t.to,
                Message::Grant {
                    genesis,
                    id: 0,
                    transfer: t,
                },
            );
        }
    }

    /// Timers: request timeouts and retransmission of unacknowledged transfers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pending.is_some_and(|p| p.deadline <= now) {
            if let Some(p) = self.pending.take() {
                self.denied
                    .insert(p.donor, now + self.config.request_timeout);
            }
            if self.wants_space && self.status == Status::Active {
                let _ = self.request_space(now);
            }
        }
        if self.next_retransmit.is_none_or_past(now) {
            if !self.outgoing.is_empty() {
                self.retransmit_to(None);
            }
            self.next_retransmit = Some(now + self.config.retransmit_interval);
        }
    }

    /// When `handle_timeout` wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = if self.outgoing.is_empty() {
            None
        } else {
            self.next_retransmit
        };
        [self.pending.map(|p| p.deadline), retransmit]
            .into_iter()
            .flatten()
            .min()
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- the cluster view -----

    /// Who owns what, as this node knows it, in address order.
    pub fn ownership(&self) -> Vec<RingEntry> {
        view::compute_ring(&self.assertions()).0
    }

    fn assertions(&self) -> Vec<Assertion> {
        let mut out: Vec<Assertion> = self
            .pool
            .owned()
            .iter()
            .map(|&piece| Assertion {
                piece,
                owner: self.me,
            })
            .collect();
        // A reclaim asserts its pieces for its maker, like a claim in the maker's record. It
        // may be all we have of that (the maker down, the records it made since lost with
        // the gossip caches of restarted nodes). Only then: our own pool, or a record of the
        // maker that carries the reclaim, is newer (the maker may have given the space on).
        out.extend(
            self.tombstones
                .values()
                .filter(|rc| {
                    rc.by != self.me
                        && !self
                            .peers
                            .get(&rc.by)
                            .and_then(|p| p.record.as_ref())
                            .is_some_and(|r| r.reclaims.iter().any(|x| x.forgotten == rc.forgotten))
                })
                .flat_map(|rc| {
                    rc.pieces.iter().map(|&piece| Assertion {
                        piece,
                        owner: rc.by,
                    })
                }),
        );
        let mut transfers: Vec<&Transfer> = self.outgoing.iter().collect();
        for (id, peer) in &self.peers {
            let Some(r) = &peer.record else { continue };
            out.extend(r.claims.iter().map(|c| Assertion {
                piece: c.piece,
                owner: *id,
            }));
            transfers.extend(r.outgoing.iter());
        }
        for t in transfers {
            if t.to == self.me
                && !self
                    .accepted
                    .get(&t.from)
                    .is_some_and(|a| a.contains(t.seq))
            {
                continue; // not ours until we applied it
            }
            out.extend(
                t.pieces
                    .iter()
                    .map(|&piece| Assertion { piece, owner: t.to }),
            );
        }
        out.retain(|a| {
            !self.tombstones.contains_key(&a.owner)
                && (a.owner != self.me || self.status == Status::Active)
        });
        out
    }

    /// The data behind `weft ipam`.
    pub fn report(&self) -> IpamReport {
        let range = self.range();
        let (ring, clashes) = view::compute_ring(&self.assertions());
        let reachable =
            |n: &NodeId| *n == self.me || self.peers.get(n).is_some_and(|p| p.reachable);
        let used_of = |e: &RingEntry| -> Option<u32> {
            if e.owner == self.me {
                return Some(self.pool.unavailable_in(e.start, e.end));
            }
            let r = self.peers.get(&e.owner)?.record.as_ref()?;
            r.claims
                .iter()
                .find(|c| c.piece.start == e.start && c.piece.end == e.end)
                .map(|c| c.used)
        };
        let pieces = ring
            .iter()
            .map(|e| view::piece_report(range, e, used_of(e), reachable(&e.owner)))
            .collect();
        let claimed: u64 = ring.iter().map(|e| u64::from(e.end - e.start)).sum();
        let mut nodes = vec![NodeReport {
            node: self.me.to_string(),
            status: self.status,
            owned: self.pool.owned().iter().map(|p| u64::from(p.len())).sum(),
            // Counted as in this node's claims, which every other node reports it from: the
            // range's network and broadcast addresses are not free, so they count as used.
            used: self
                .pool
                .owned()
                .iter()
                .map(|p| u64::from(self.pool.unavailable_in(p.start, p.end)))
                .sum(),
            reachable: true,
        }];
        let mut unreachable_free = 0;
        for (id, peer) in &self.peers {
            let Some(r) = &peer.record else { continue };
            if !peer.reachable {
                unreachable_free += peer.free();
            }
            nodes.push(NodeReport {
                node: id.to_string(),
                status: r.status,
                owned: r.claims.iter().map(|c| u64::from(c.piece.len())).sum(),
                used: r.claims.iter().map(|c| u64::from(c.used)).sum(),
                reachable: peer.reachable,
            });
        }
        IpamReport {
            node: self.me.to_string(),
            status: self.status,
            range: self.genesis.as_ref().map(|g| g.range),
            genesis: self.genesis.as_ref().map(|g| view::GenesisReport {
                id: g.id,
                creator: g.creator.to_string(),
            }),
            pieces,
            nodes,
            unreachable_free,
            unclaimed: self
                .genesis
                .as_ref()
                .map_or(0, |g| u64::from(g.size()) - claimed),
            forgotten: self.tombstones.keys().map(|n| n.to_string()).collect(),
            conflicts: self
                .conflicts
                .keys()
                .map(|id| self.conflict_report(*id))
                .collect(),
            clashes: clashes
                .into_iter()
                .map(|(s, e, owners)| view::ClashReport {
                    first: address_at(range, s),
                    last: address_at(range, e - 1),
                    owners: owners.iter().map(|n| n.to_string()).collect(),
                })
                .collect(),
            waiting_for: self.pending.map(|p| p.donor.to_string()),
            disputed: self.disputed(),
        }
    }

    /// Space this node owns that a peer's record asserts at a higher version (the report's
    /// `disputed`): evidence of a member over-claiming.
    pub fn disputed(&self) -> Vec<view::DisputeReport> {
        let range = self.range();
        self.peers
            .iter()
            .filter_map(|(id, p)| Some((*id, p.record.as_ref()?)))
            .flat_map(|(id, r)| self.disputes_in(id, r))
            .map(|d| view::DisputeReport {
                first: address_at(range, d.start),
                last: address_at(range, d.end - 1),
                claimant: d.claimant.to_string(),
                ours: d.ours,
                theirs: d.theirs,
            })
            .collect()
    }

    /// Stretches of our own space that `record` (of `from`) asserts at a higher version than
    /// ours, as a claim of its own or by a transfer it made. Our own state is the truth about
    /// what we gave away: every honest way for space to leave us (a transfer we sign, a
    /// reclaim of us, which we obey as soon as we learn it) takes it out of our pool, and a
    /// stale record asserts lower versions, never higher (see "Trust" in the module doc).
    fn disputes_in(&self, from: NodeId, record: &Record) -> Vec<Dispute> {
        if self.status != Status::Active || self.tombstones.contains_key(&from) {
            return Vec::new();
        }
        let asserted = record.claims.iter().map(|c| c.piece).chain(
            record
                .outgoing
                .iter()
                .flat_map(|t| t.pieces.iter().copied()),
        );
        let mut out = Vec::new();
        for theirs in asserted {
            for ours in self.pool.owned() {
                let (start, end) = (ours.start.max(theirs.start), ours.end.min(theirs.end));
                if start < end && theirs.version > ours.version {
                    out.push(Dispute {
                        start,
                        end,
                        claimant: from,
                        ours: ours.version,
                        theirs: theirs.version,
                    });
                }
            }
        }
        out
    }
}

/// See [`Ipam::disputes_in`].
#[derive(Debug, Clone, Copy)]
struct Dispute {
    start: u32,
    end: u32,
    claimant: NodeId,
    ours: u32,
    theirs: u32,
}

fn rc_genesis(genesis: &Option<Genesis>) -> GenesisId {
    genesis.as_ref().map_or(GenesisId([0; 16]), |g| g.id)
}

/// `pieces` minus everything covered by `covered` (versions kept).
fn subtract(pieces: &[Piece], covered: &[Piece]) -> Vec<Piece> {
    let mut out = Vec::new();
    for p in pieces {
        let mut parts = vec![*p];
        for c in covered {
            parts = parts
                .into_iter()
                .flat_map(|q| {
                    let mut keep = Vec::new();
                    if c.end <= q.start || c.start >= q.end {
                        keep.push(q);
                    } else {
                        if q.start < c.start {
                            keep.push(Piece { end: c.start, ..q });
                        }
                        if c.end < q.end {
                            keep.push(Piece { start: c.end, ..q });
                        }
                    }
                    keep
                })
                .collect();
        }
        out.extend(parts);
    }
    out
}

trait BestExt {
    fn is_none_or_smaller(&self, free: u64) -> bool;
}

impl BestExt for Option<(u64, NodeId)> {
    fn is_none_or_smaller(&self, free: u64) -> bool {
        self.is_none_or(|(best, _)| free > best)
    }
}

trait DeadlineExt {
    fn is_none_or_past(&self, now: Instant) -> bool;
}

impl DeadlineExt for Option<Instant> {
    fn is_none_or_past(&self, now: Instant) -> bool {
        self.is_none_or(|t| t <= now)
    }
}
