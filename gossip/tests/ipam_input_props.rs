//! Untrusted input into the IPAM core (stable stand-in for the nightly fuzz targets in
//! `fuzz/`): random bytes and mutations of real records and messages (flipped, inserted,
//! deleted and overwritten bytes, truncations) go into `Ipam::handle_record` and
//! `Ipam::handle_message` of a node that holds space and knows its peers. Every input gives
//! `Ok` or an error, never a panic; an input that is refused leaves the node's record, its
//! allocations and its report as they were (a refused foreign genesis may only add itself to
//! the report's `conflicts`: that is how the operator learns of it).

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::Index;
use weft_crypto::{IdentityKey, NodeId};
use weft_gossip::ipam::{Error, Ipam, IpamConfig, MemoryStore, Message, Record};

type Node = Ipam;

fn node(seed: u8) -> Node {
    let identity = Arc::new(IdentityKey::from_seed(&[seed; 32]));
    let config = IpamConfig::new("10.32.0.0/22".parse().expect("range"));
    Ipam::open_store(identity, config, &mut MemoryStore::new(), u64::from(seed)).expect("open")
}

/// What the node asks to persist, written (to a store of its own: only what goes out
/// matters here), so that its held-back outputs go out.
fn persist(n: &mut Node) {
    n.persist_to(&mut MemoryStore::new()).expect("persist");
}

fn record_of(n: &Node) -> Vec<u8> {
    n.record().expect("has a genesis")
}

fn drain(n: &mut Node) -> Vec<(NodeId, Vec<u8>)> {
    persist(n);
    std::iter::from_fn(|| n.poll_transmit())
        .map(|t| (t.to, t.bytes))
        .collect()
}

/// A small cluster and the real inputs it exchanged: `a` made the genesis and forgot `c`;
/// `victim` got a piece from `a`, allocated from it and knows `a` and `c`.
struct World {
    victim: Node,
    a: NodeId,
    c: NodeId,
    /// (sender, bytes) of records and of messages.
    records: Vec<(NodeId, Vec<u8>)>,
    messages: Vec<(NodeId, Vec<u8>)>,
}

fn world() -> World {
    let now = Instant::now();
    let mut a = node(1);
    let mut victim = node(2);
    let mut c = node(3);
    let (ida, idv, idc) = (a.node_id(), victim.node_id(), c.node_id());
    a.init_genesis(now).expect("genesis");
    let mut records = vec![(ida, record_of(&a))];
    let mut messages = Vec::new();

    for n in [&mut victim, &mut c] {
        n.handle_record(now, ida, &record_of(&a)).expect("adopt");
        n.set_reachable(now, ida, true);
    }
    a.set_reachable(now, idv, true);
    assert!(matches!(
        victim.allocate(now, "first"),
        Err(Error::SpaceRequested { .. })
    ));
    let request = drain(&mut victim);
    assert_eq!(request.len(), 1, "one request for space");
    messages.push((idv, request[0].1.clone()));
    // `c` owns nothing: it denies.
    c.handle_message(now, idv, &request[0].1).expect("request");
    messages.extend(drain(&mut c).into_iter().map(|(_, b)| (idc, b)));
    // `a` grants; its record now carries the transfer.
    a.handle_message(now, idv, &request[0].1).expect("request");
    let grant = drain(&mut a);
    records.push((ida, record_of(&a)));
    messages.extend(grant.iter().map(|(_, b)| (ida, b.clone())));
    let mut acks = Vec::new();
    for (_, bytes) in &grant {
        victim.handle_message(now, ida, bytes).expect("grant");
        acks.extend(drain(&mut victim));
    }
    messages.extend(acks.iter().map(|(_, b)| (idv, b.clone())));
    for i in 0..5 {
        victim.allocate(now, &format!("c{i}")).expect("own space");
    }
    records.push((idv, record_of(&victim)));
    records.push((idc, record_of(&c)));

    // `a` forgets `c`; `c`'s next record is answered with the proof.
    a.handle_record(now, idc, &record_of(&c))
        .expect("c's record");
    a.forget(now, idc).expect("forget");
    records.push((ida, record_of(&a)));
    a.handle_record(now, idc, &record_of(&c)).expect("c again");
    messages.extend(drain(&mut a).into_iter().map(|(_, b)| (ida, b)));

    victim
        .handle_record(now, ida, &records[1].1)
        .expect("a's record");
    victim
        .handle_record(now, idc, &record_of(&c))
        .expect("c's record");
    victim.set_reachable(now, idc, true);
    drain(&mut victim);
    persist(&mut victim);
    while victim.poll_event().is_some() {}
    World {
        victim,
        a: ida,
        c: idc,
        records,
        messages,
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Overwrite(Index, Vec<u8>),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        (
            any::<Index>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, x) => {
                let i = i.index(bytes.len());
                bytes[i] ^= x;
            }
            Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            Mutation::Delete(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            Mutation::Overwrite(i, with) => {
                let i = i.index(bytes.len());
                let n = with.len().min(bytes.len() - i);
                bytes[i..i + n].copy_from_slice(&with[..n]);
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
    bytes
}

#[derive(Clone, Debug)]
enum Input {
    /// Bytes from scratch, claimed by one of the known senders (or a stranger).
    Random { sender: Index, bytes: Vec<u8> },
    /// A real input, mutated; sent by its real sender or by another.
    Mutated {
        which: Index,
        spoofed: Option<Index>,
        mutations: Vec<Mutation>,
    },
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(sender, bytes)| Input::Random { sender, bytes }),
        4 => (
            any::<Index>(),
            proptest::option::weighted(0.2, any::<Index>()),
            proptest::collection::vec(mutation(), 1..5)
        )
            .prop_map(|(which, spoofed, mutations)| Input::Mutated {
                which,
                spoofed,
                mutations,
            }),
    ]
}

fn make(w: &World, corpus: &[(NodeId, Vec<u8>)], input: &Input) -> (NodeId, Vec<u8>) {
    let stranger = IdentityKey::from_seed(&[9; 32]).node_id();
    let senders = [w.a, w.c, w.victim.node_id(), stranger];
    match input {
        Input::Random { sender, bytes } => (
            *senders.get(sender.index(4)).unwrap_or(&stranger),
            bytes.clone(),
        ),
        Input::Mutated {
            which,
            spoofed,
            mutations,
        } => {
            let (from, bytes) = &corpus[which.index(corpus.len())];
            let from = spoofed.map_or(*from, |s| senders[s.index(4)]);
            (from, apply(bytes.clone(), mutations))
        }
    }
}

/// What a refused input must leave alone.
#[derive(Debug, PartialEq)]
struct Observed {
    record: Option<Vec<u8>>,
    record_seq: u64,
    /// Nothing new to persist either.
    state_version: u64,
    allocations: Vec<(String, std::net::Ipv4Addr)>,
    free: u64,
    report: serde_json::Value,
}

fn observe(n: &Node, drop_conflicts: bool) -> Observed {
    let mut report = serde_json::to_value(n.report()).expect("report as json");
    if drop_conflicts {
        if let Some(obj) = report.as_object_mut() {
            obj.remove("conflicts");
        }
    }
    Observed {
        record: n.record(),
        record_seq: n.record_seq(),
        state_version: n.state_version(),
        allocations: n.allocations(),
        free: n.free_addresses(),
        report,
    }
}

fn check(
    result: weft_gossip::ipam::Result<()>,
    n: &Node,
    before: &Observed,
    before_no_conflicts: &Observed,
) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let conflict = matches!(e, Error::GenesisConflict(_));
        let after = observe(n, conflict);
        let expected = if conflict {
            before_no_conflicts
        } else {
            before
        };
        prop_assert_eq!(&after, expected, "refused with {} but the state changed", e);
    }
    Ok(())
}

#[test]
fn the_real_inputs_are_accepted() {
    // The corpus is worth mutating: unmutated, every record and message decodes, and the
    // victim takes them without error (so the mutations start from inputs that get deep).
    let mut w = world();
    let now = Instant::now();
    assert!(
        w.records.len() >= 5 && w.messages.len() >= 5,
        "{} {}",
        w.records.len(),
        w.messages.len()
    );
    for (from, bytes) in &w.records {
        Record::decode(*from, bytes).expect("a real record decodes");
    }
    let kinds: Vec<String> = w
        .messages
        .iter()
        .map(|(from, bytes)| {
            let m = Message::decode(*from, bytes, 1024).expect("a real message decodes");
            format!("{m:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for kind in ["Request", "Grant", "Deny", "Ack", "Forgotten"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    let victim = w.victim.node_id();
    for (from, bytes) in w.messages.clone() {
        if from != victim {
            w.victim
                .handle_message(now, from, &bytes)
                .expect("a real message is taken");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn records_never_panic_and_a_refused_one_changes_nothing(inputs in proptest::collection::vec(input(), 1..4)) {
        let mut w = world();
        let now = Instant::now();
        for input in &inputs {
            let (from, bytes) = make(&w, &w.records, input);
            let before = observe(&w.victim, false);
            let before_no_conflicts = observe(&w.victim, true);
            let result = w.victim.handle_record(now, from, &bytes);
            check(result, &w.victim, &before, &before_no_conflicts)?;
        }
    }

    #[test]
    fn messages_never_panic_and_a_refused_one_changes_nothing(inputs in proptest::collection::vec(input(), 1..4)) {
        let mut w = world();
        let now = Instant::now();
        for input in &inputs {
            let (from, bytes) = make(&w, &w.messages, input);
            let before = observe(&w.victim, false);
            let before_no_conflicts = observe(&w.victim, true);
            let result = w.victim.handle_message(now, from, &bytes);
            check(result, &w.victim, &before, &before_no_conflicts)?;
        }
    }
}
