//! IP address management without a datastore (sans-IO).
//!
//! Every node needs addresses for its containers out of one cluster range (default
//! `10.32.0.0/12`), agreed by gossip alone. This module is the state machine of one node; the
//! gossip core carries its record field and messages, the daemon drives it.
//!
//! # Model
//!
//! The range is divided into *pieces*, `[start, end)` offsets each owned by exactly one node
//! at a *version*. A node allocates single addresses from its own pieces, locally (no network
//! round trip), and journals each allocation before returning it. A node without free space
//! asks the reachable node with the most free space (as its record says); that owner gives
//! one CIDR-aligned block of its free space (see "Aligned blocks") by a signed [`Transfer`]. Ownership only ever moves by the
//! current owner's own act; there is no concurrent claim, so there is nothing to resolve.
//!
//! Each node publishes in its (signed) gossip record: the genesis, a record sequence number,
//! its status, its pieces with their versions and how many addresses each has in use, its
//! unacknowledged outgoing transfers, and its recent reclaims ([`Record`], at most
//! [`MAX_RECORD_BYTES`]). Every node computes the ring from the latest records it holds: for
//! each address the assertion with the highest version wins (`view`). Like Weave Net's ring
//! this is a CRDT (merge = per-address max), so any two nodes holding the same records agree;
//! one owner of the whole range is one entry, not thousands.
//!
//! # Why no address is ever given twice, even across partitions
//!
//! What a node allocates from is its *own* state, never its view of others:
//! 1. It owns a piece only by genesis, by applying a signed transfer addressed to it, or by
//!    an operator's reclaim. Views (possibly stale) decide nothing.
//! 2. A giver removes the piece from its own state and persists (fsync) *before* it signs and
//!    sends the transfer (the core holds the grant, and the record that carries the
//!    transfer, until its driver reports the snapshot written). From then on the piece is in exactly one place: the giver's
//!    unacknowledged list (in flight; nobody allocates from it) or the receiver's state.
//! 3. Each transfer carries a per-(giver, receiver) sequence number; the receiver persists
//!    which ones it applied (`floor` + set), so a replayed or relayed old transfer (from a
//!    stale record, after a restart) is never applied twice.
//! 4. A node's record sequence is `epoch << 32 | counter`, the epoch persisted and bumped at
//!    every start, so a restarted node's record always supersedes its old one.
//!
//! A partition therefore only delays transfers; it cannot duplicate a piece. The price:
//! a node cut off from every owner of free space cannot get more, and says so
//! ([`Error::NoAddressSpaceReachable`], which the CNI plugin turns into "try again later")
//! instead of guessing. A lost grant message loses nothing: the giver keeps the transfer in
//! its record and resends it until the receiver acknowledges with the record sequence that
//! shows it, and drops it only once it holds that record of the receiver.
//!
//! # Genesis: one explicit, signed, detectable start
//!
//! Weave Net waits for a quorum of `--init-peer-count` peers and runs Paxos on who gets the
//! range; an under-estimated count or peers started apart form separate rings that later
//! fail with "seeded by different peers", and nothing says which peers are on which side.
//! Here the start is an explicit act: the seed (a node started with no peers) or
//! `weft ipam init` calls [`Ipam::init_genesis`], which signs *(random genesis id, creator,
//! range)* and owns the whole range. Every other node adopts the first valid genesis it
//! learns from a record, and persists it. No count to get right, and no quorum to wait for.
//! Two geneses that meet are not merged, ever: each side refuses the other's records and
//! reports a [`GenesisConflict`] naming both genesis ids, both creators and the nodes seen on
//! each side, so the operator knows which side to reset.
//!
//! # Nodes that stop, leave, or vanish
//!
//! * Stopping (crash, `kill -9`, restart, upgrade) changes nothing: the state directory keeps
//!   the pieces and allocations ([`FileStore`]: `ipam.json` snapshot written atomically and
//!   fsynced on every change of ownership, `ipam.journal` appended by one `write(2)` per
//!   allocation before it is returned), so the same container id gets the same address back
//!   and no address in use is reused. Journal lines are not fsynced: a power loss may lose or
//!   damage the latest ones, which reuses nothing in use, because the containers they
//!   describe went down with the machine (the store tells a reboot from a daemon crash by
//!   the boot id; see `store`).
//! * Leaving ([`Ipam::leave`], `weft reset`) hands every piece to one reachable node — the
//!   one whose space it adds the fewest CIDR prefixes to (the owner of the buddy block, when
//!   there is one), so the ring stays compact — by one signed transfer, and drops the
//!   allocations.
//! * A node gone for good without leaving is the one an operator *forgets*
//!   ([`Ipam::forget`], `weft forget NODE`, run on any live node): it signs a [`Reclaim`] of
//!   every piece the ring gives the dead node (including transfers still in flight to it)
//!   at version + 1, owns them, and everyone who learns the reclaim keeps a tombstone.
//!   A tombstone counts as its maker's claim in the view (unless a record of the maker
//!   that carries it is at hand: that is newer) and is relayed in the holder's
//!   record (the reclaim is signed, so anyone may relay it): the daemon journals the
//!   records it learns (`members.journal`), but a node whose journal was lost restarts
//!   knowing none, and then a persisted tombstone may be the only trace of the reclaim.
//!   The reclaim also takes what the forgotten node had given to nodes that left before
//!   applying it (a node that has left applies nothing), and it names, per giver, the
//!   highest transfer to the forgotten node that its maker's view held: those givers take
//!   none of that back (the space was reclaimed or had moved on, and a giver's own view may
//!   be stale). Room for three givers keeps a reclaim inside a record; past that the reclaim
//!   says it is incomplete and no giver takes anything back (safe; that space stays unowned).
//!   Weave Net's `rmpeer` left space of dead peers stranded until someone ran it, and a peer
//!   that came back afterwards with its old state could hand out addresses that were already
//!   reused. Here a forgotten node that returns with the same identity is told (any node
//!   holding the tombstone answers its record with the signed reclaim), drops its pieces and
//!   refuses to allocate ([`Error::Forgotten`]) until its state directory is reset. The
//!   trade-off: forgetting is an operator's assertion that the node is gone; its containers'
//!   addresses are lost if it was not, and before it hears of the reclaim it may still
//!   allocate from its old pieces. The forgetting node also needs an up-to-date view:
//!   forget after the dead node's last record and the current records of the live nodes have
//!   reached it (the cluster has healed for a few gossip rounds). If a transfer the forgetter
//!   could not see raced the reclaim, the view resolves the equal versions deterministically
//!   and lists the stretch under `clashes` in the report; a giver that learns a reclaim takes
//!   back its own in-flight transfers to the forgotten node that the reclaim missed (the
//!   forgetter did not know them), so no space is stranded either way — except what the
//!   forgotten node may have passed on: an acknowledged transfer, one the reclaim names, or
//!   a stretch the giver's view shows held by another node at the transfer's version or
//!   higher. `forget` refuses a node that is reachable.
//!
//! # Trust
//!
//! Records reach this module already authenticated by the gossip core's record signature,
//! so no member can put words in another's record. Statements that change ownership are
//! signed on their own by the node that makes them, over a domain-separated encoding that
//! includes the genesis id: a transfer is applied only if signed by its giver, a reclaim only
//! if signed by its maker, the genesis only if signed by its creator. They can therefore be
//! relayed by anyone (the giver's record, a direct message) and never replayed into another
//! cluster. Every input is decoded with bounds checks; a bad one returns an error and changes
//! nothing.
//!
//! ## Over-claims by a member: detected by the owner, not prevented
//!
//! A member holding the cluster secret can assert, in its own (authentic) record, pieces it
//! was never given, at a higher version, as a claim or as a "transfer" to another node.
//! Views follow the highest version, so other nodes would route that space to it. No
//! address is handed out twice — the honest owner keeps allocating from its own state — but
//! the traffic for it is blackholed.
//!
//! The owner detects it, soundly: its own state is the truth about what it gave away. Every
//! honest way for space to leave a node takes it out of its pool first (a transfer it signs,
//! leaving, a reclaim of it, obeyed as soon as it is learned), and versions rise only at the
//! owner, so a stale record asserts a lower version, never a higher one (two honest
//! forgetters racing a transfer can tie, which the view reports as `clashes`). Space a node
//! owns that a peer's record asserts at a *higher* version is therefore an over-claim (or a
//! reclaim of this node left out of a full record, which it learns directly soon after):
//! [`Ipam::disputed`] and the report's `disputed` name the claimant and both versions, and
//! a warning is logged when such a record arrives. The simulator checks that honest
//! schedules never produce one (`Sim::check_safety`, run after every step of the property
//! test).
//!
//! What a *viewer* cannot do is refuse an unbacked claim, i.e. accept a claim at version
//! `v` only if a signed statement it has seen backs it (the genesis, a transfer to the
//! claimant, a reclaim by it). That check would not be sound, for three reasons:
//! 1. The evidence is forgeable by the very member it is meant to stop. A reclaim may take
//!    any node's space (it is the operator's `forget`, and a receiver cannot check the
//!    operator's judgement that the node is gone: it may be cut off from it just as the
//!    forgetter is), and the cluster secret admits any key, so the member can run a second
//!    identity and sign transfers to it. Every over-claim can be dressed in a valid
//!    statement; only claims with none would be caught, and an attacker never needs those.
//! 2. Checking that the signer of a statement owned what it signed away is the recursive
//!    form of the same check: it needs every statement since the genesis for each piece.
//!    Records are bounded ([`MAX_RECORD_BYTES`]) and transfers leave them once acknowledged
//!    and seen, so a node that joins later has none of them; carrying a proof chain per
//!    piece grows with the history of splits and merges, and still bottoms out at (1).
//! 3. A partial rule harms honest nodes: a newcomer, or any node whose view missed a
//!    transfer before it was pruned, would mark honest pieces unbacked and stop routing to
//!    them — the blackholing it was meant to prevent.
//!
//! Closing this needs a trust root other than membership: reclaims signed by an operator
//! key (not a member key), and ownership certificates whose history is cut by periodic
//! checkpoints of the ring signed by that key.

//! # Aligned blocks
//!
//! Every node's space is routed (one route and one WireGuard allowed IP per CIDR prefix on
//! every other node) and its containers get the netmask of the prefix their address is in,
//! so space moves in CIDR-aligned blocks and a node's space stays a few prefixes. A giver
//! gives one aligned block that holds no allocation: a whole block other than its main one
//! (the largest block in use; space it was handed by a leaver or took back by a forget)
//! when one is free and at least a quarter of the alternative; otherwise the largest free
//! aligned block inside its space (the highest on a tie), or the upper half of its main
//! block when that is wholly free. The range's network and broadcast addresses do not split
//! blocks: they are never handed out, by whoever owns them. Adjacent pieces merge in the
//! pool, so buddies given back merge into the larger block. Allocation fills the main block
//! first, and [`Ipam::owned_cidrs`] lists it first (the daemon puts its gateway there). The
//! second node of a `/12` cluster owns the upper `/13`, the first keeps the lower one; in the
//! 1,000-node simulation with joins, leaves and forgets, gossip/README.md has the numbers.
//!
//! # Compactness
//!
//! Pieces are merged with their neighbours (the merged piece takes the highest version: only
//! the owner moves its own versions), encoded as varint gaps and lengths. Outgoing transfers
//! leave the record once acknowledged and seen; reclaims (own ones first, then relayed ones)
//! stay while they fit, newest first.
//! The record is assembled claims-first and statements are left out (still sent directly)
//! rather than exceeding [`MAX_RECORD_BYTES`]; the property test checks the bound.
//!
//! # Driving it (sans-IO)
//!
//! Inputs take `now: Instant`: [`Ipam::handle_record`] (the `ipam` field of a peer's record,
//! whenever a newer one arrives, including records of dead nodes relayed by others),
//! [`Ipam::handle_message`], [`Ipam::set_reachable`] (from membership), and
//! [`Ipam::handle_timeout`] at [`Ipam::poll_timeout`]. Outputs, in this order:
//! [`Ipam::poll_persist`] (write it with [`Store::write`], one at a time, then report
//! [`Ipam::persisted`] or [`Ipam::persist_failed`]), [`Ipam::poll_transmit`] (direct
//! messages), [`Ipam::poll_event`], and [`Ipam::record`] to republish whenever
//! [`Ipam::record_seq`] changed and [`Ipam::record_ready`]. The core does no IO: messages and
//! events wait until the state they follow from is written, and an `allocate` or `release`
//! is to be answered only once [`Ipam::persisted_version`] reaches the
//! [`Ipam::state_version`] it left. [`Ipam::open`] takes what [`Store::load`] read;
//! [`Ipam::open_store`] and [`Ipam::persist_to`] do both synchronously (tests, simulator).
//! Randomness (genesis id, request ids) comes from the seed.
//! [`sim`] runs many cores over a simulated network for the property tests and benchmark.

mod core;
mod error;
mod pool;
mod record;
mod statement;
mod store;
mod view;
mod wire;

pub mod sim;

pub use self::core::{Event, Ipam, IpamConfig, Transmit};
pub use error::{Error, GenesisConflict, GenesisSide, Result};
pub use record::{Claim, Message, Record, Status, MAX_RECORD_BYTES};
pub use statement::{Genesis, GenesisId, Piece, Reclaim, Transfer};
pub use store::{
    Accepted, FileStore, JournalOp, MemoryStore, Persist, PersistOp, PersistedState,
    PersistedStatus, Store,
};
pub use view::{
    ClashReport, DisputeReport, GenesisReport, IpamReport, NodeReport, PieceReport, RingEntry,
};
