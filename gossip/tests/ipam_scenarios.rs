//! Deterministic IPAM scenarios on the simulator and on a real state directory.

use std::sync::Arc;
use std::time::Instant;

use weft_crypto::IdentityKey;
use weft_gossip::ipam::sim::Sim;
use weft_gossip::ipam::{Error, FileStore, Ipam, IpamConfig, MemoryStore, Status};

fn range(s: &str) -> ipnet::Ipv4Net {
    s.parse().expect("valid range")
}

/// A seed node and `n - 1` joiners that have learned the genesis.
fn cluster(n: usize, r: &str) -> Sim {
    let mut sim = Sim::new(7, range(r));
    let seed = sim.add_node();
    let now = sim.now;
    sim.ipam(seed)
        .expect("up")
        .init_genesis(now)
        .expect("genesis");
    for _ in 1..n {
        sim.add_node();
    }
    sim.run(20);
    sim
}

/// Allocates for `container` on node `i`, letting the cluster run while space is requested.
fn allocate(sim: &mut Sim, i: usize, container: &str) -> Result<std::net::Ipv4Addr, Error> {
    for _ in 0..50 {
        let now = sim.now;
        match sim.ipam(i).expect("up").allocate(now, container) {
            Err(Error::SpaceRequested { .. }) => sim.run(1),
            other => return other,
        }
    }
    panic!("no answer to a request for space after 50 ticks");
}

#[test]
fn single_node_exhausts_the_range_and_reuses_freed_addresses() {
    let mut sim = cluster(1, "10.40.0.0/28");
    let mut got = Vec::new();
    for i in 0..14 {
        got.push(allocate(&mut sim, 0, &format!("c{i}")).expect("space left"));
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 14, "14 distinct usable addresses in a /28");
    assert!(
        !got.contains(&"10.40.0.0".parse().expect("addr")),
        "network address is never handed out"
    );
    assert!(
        !got.contains(&"10.40.0.15".parse().expect("addr")),
        "broadcast address is never handed out"
    );
    let err = allocate(&mut sim, 0, "one-more").expect_err("range is full");
    assert!(matches!(err, Error::RangeExhausted { .. }), "{err}");
    assert!(err.to_string().contains("10.40.0.0/28 is full"), "{err}");
    let freed = sim
        .ipam(0)
        .expect("up")
        .release("c3")
        .expect("release")
        .expect("had one");
    assert_eq!(
        allocate(&mut sim, 0, "one-more").expect("freed address is usable"),
        freed
    );
}

#[test]
fn a_joiner_gets_a_piece_by_transfer_and_everyone_agrees() {
    let mut sim = cluster(3, "10.32.0.0/16");
    let a = allocate(&mut sim, 1, "pod-a").expect("joiner gets space");
    let b = allocate(&mut sim, 2, "pod-b").expect("joiner gets space");
    let c = allocate(&mut sim, 0, "pod-c").expect("seed still has space");
    assert!(a != b && b != c && a != c);
    sim.check_safety().expect("no overlap");
    sim.run(30);
    sim.check_agreement().expect("all agree");
    assert!(sim.unexpected.is_empty(), "{:?}", sim.unexpected);
    let report = sim.ipam(1).expect("up").report();
    assert_eq!(report.nodes.len(), 3);
    assert!(report.pieces.iter().all(|p| !p.cidrs.is_empty()));
    let json = serde_json::to_string(&report).expect("report serialises");
    assert!(json.contains("\"pieces\""));
}

#[test]
fn cut_off_from_every_owner_of_free_space_says_so() {
    let mut sim = cluster(2, "10.32.0.0/24");
    // Node 1 takes a piece and fills it, then is cut off from the seed.
    let mut n = 0;
    while allocate(&mut sim, 1, &format!("c{n}")).is_ok()
        && sim.ipam(1).expect("up").free_addresses() > 0
    {
        n += 1;
    }
    sim.partition(vec![0, 1]);
    sim.run(3);
    let err = loop {
        n += 1;
        let now = sim.now;
        match sim.ipam(1).expect("up").allocate(now, &format!("c{n}")) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, Error::NoAddressSpaceReachable { ref unreachable } if unreachable.len() == 1),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("no address space reachable"),
        "{err}"
    );
    sim.heal();
    sim.run(5);
    allocate(&mut sim, 1, "after-heal").expect("space again once healed");
    sim.check_safety().expect("no overlap");
}

#[test]
fn clusters_started_apart_refuse_to_merge_naming_both_sides() {
    let mut sim = Sim::new(3, range("10.32.0.0/16"));
    let a = sim.add_node();
    let b = sim.add_node();
    let a2 = sim.add_node();
    sim.partition(vec![0, 1, 0]);
    let now = sim.now;
    sim.ipam(a)
        .expect("up")
        .init_genesis(now)
        .expect("genesis a");
    sim.ipam(b)
        .expect("up")
        .init_genesis(now)
        .expect("genesis b");
    sim.run(10);
    allocate(&mut sim, a2, "x").expect("joins side a");
    allocate(&mut sim, b, "y").expect("side b allocates");
    sim.heal();
    sim.run(20);
    let (ida, idb) = (sim.nodes[a].id, sim.nodes[b].id);
    for (i, other_creator) in [(a, idb), (b, ida), (a2, idb)] {
        let report = sim.ipam(i).expect("up").report();
        assert_eq!(report.conflicts.len(), 1, "node {i} sees the conflict");
        let c = &report.conflicts[0];
        assert_eq!(c.theirs.creator, other_creator.to_string());
        assert_ne!(c.ours.genesis, c.theirs.genesis);
        let text = c.to_string();
        assert!(
            text.contains("refusing to merge")
                && text.contains(&ida.to_string())
                && text.contains(&idb.to_string()),
            "{text}"
        );
    }
    // Nothing moved between the two spaces.
    sim.check_safety()
        .expect_err("two geneses do overlap by construction; the check must see it");
    assert_eq!(sim.ipam(b).expect("up").owned().len(), 1);
    assert!(sim.unexpected.is_empty(), "{:?}", sim.unexpected);
}

#[test]
fn leaving_hands_space_back_and_forgetting_reclaims_a_dead_node() {
    let mut sim = cluster(4, "10.32.0.0/16");
    for i in 0..4 {
        allocate(&mut sim, i, &format!("pod{i}")).expect("space");
    }
    sim.run(20);
    let leaver_space: u64 = sim
        .ipam(3)
        .expect("up")
        .owned()
        .iter()
        .map(|p| u64::from(p.end - p.start))
        .sum();
    assert!(leaver_space > 0);
    sim.leave(3).expect("leave").expect("handed to someone");
    sim.run(20);
    sim.check_safety().expect("no overlap after leave");
    sim.check_agreement().expect("agree after leave");
    let leaver = sim.nodes[3].id;
    assert!(sim
        .ipam(0)
        .expect("up")
        .ownership()
        .iter()
        .all(|e| e.owner != leaver));

    // Node 2 crashes and never comes back; node 0 forgets it.
    sim.crash(2);
    sim.run(5);
    let dead = sim.nodes[2].id;
    let now = sim.now;
    let live = sim.nodes[1].id;
    assert!(matches!(
        sim.ipam(0).expect("up").forget(now, live),
        Err(Error::ForgetReachable(_))
    ));
    sim.forget(0, 2).expect("forget");
    sim.run(20);
    sim.check_safety().expect("no overlap after forget");
    sim.check_agreement().expect("agree after forget");
    assert!(sim
        .ipam(1)
        .expect("up")
        .ownership()
        .iter()
        .all(|e| e.owner != dead));
    assert!(sim.ipam(1).expect("up").is_forgotten(&dead));

    // It comes back anyway with its old identity and state: it is told, and refuses to allocate.
    sim.resurrect(2).expect("restart");
    sim.run(10);
    let now = sim.now;
    let back = sim.ipam(2).expect("up");
    assert_eq!(back.status(), Status::Forgotten);
    assert!(back.owned().is_empty());
    let err = back.allocate(now, "new-pod").expect_err("refused");
    assert!(matches!(err, Error::Forgotten { .. }), "{err}");
    sim.check_safety().expect("no overlap once it knows");
}

#[test]
fn restart_keeps_allocations_in_the_state_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = Arc::new(IdentityKey::from_seed(&[9; 32]));
    let config = IpamConfig::new(range("10.32.0.0/24"));
    let now = Instant::now();
    let mut first = Vec::new();
    let seq_before;
    {
        let mut ipam = Ipam::open(
            identity.clone(),
            config.clone(),
            FileStore::new(dir.path()),
            1,
        )
        .expect("open");
        ipam.init_genesis(now).expect("genesis");
        for i in 0..20 {
            first.push(ipam.allocate(now, &format!("c{i}")).expect("allocate"));
        }
        ipam.release("c5").expect("release");
        seq_before = ipam.record_seq();
    } // the daemon dies here: nothing else is written
    let mut ipam = Ipam::open(
        identity.clone(),
        config.clone(),
        FileStore::new(dir.path()),
        2,
    )
    .expect("reopen");
    assert!(
        ipam.record_seq() > seq_before,
        "record sequence grows across restarts"
    );
    for i in (0..20).filter(|&i| i != 5) {
        assert_eq!(
            ipam.allocate(now, &format!("c{i}")).expect("same"),
            first[i],
            "container c{i} keeps its address"
        );
    }
    let fresh = ipam.allocate(now, "new").expect("new one");
    assert!(
        !first.iter().enumerate().any(|(i, a)| i != 5 && *a == fresh),
        "no address in use is reused"
    );
    assert_eq!(ipam.allocations().len(), 20);

    // A torn last journal line (the daemon died mid-append) is dropped; anything else is an error.
    let journal = dir.path().join(FileStore::JOURNAL);
    let mut text = std::fs::read_to_string(&journal).expect("journal");
    text.push_str("{\"op\":\"allo");
    std::fs::write(&journal, &text).expect("write");
    drop(ipam);
    Ipam::open(
        identity.clone(),
        config.clone(),
        FileStore::new(dir.path()),
        3,
    )
    .expect("torn tail is tolerated");
    std::fs::write(&journal, format!("garbage\n{text}")).expect("write");
    let err = Ipam::open(
        identity.clone(),
        config.clone(),
        FileStore::new(dir.path()),
        4,
    )
    .expect_err("corrupt journal");
    assert!(err.to_string().contains("line 1"), "{err}");

    // State of another node is refused.
    let other = Arc::new(IdentityKey::from_seed(&[8; 32]));
    std::fs::write(&journal, "").expect("write");
    let err = Ipam::open(other, config, FileStore::new(dir.path()), 5).expect_err("not ours");
    assert!(err.to_string().contains("belongs to node"), "{err}");
}

fn open_in(
    dir: &std::path::Path,
    boot: &str,
    seed: u64,
) -> weft_gossip::ipam::Result<Ipam<FileStore>> {
    Ipam::open(
        Arc::new(IdentityKey::from_seed(&[9; 32])),
        IpamConfig::new(range("10.32.0.0/24")),
        FileStore::with_boot_id(dir, boot),
        seed,
    )
}

#[test]
fn a_journal_damaged_by_a_power_loss_is_cut_only_after_a_reboot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Instant::now();
    let mut addresses = Vec::new();
    {
        let mut ipam = open_in(dir.path(), "boot-a", 1).expect("open");
        ipam.init_genesis(now).expect("genesis");
        for i in 0..10 {
            addresses.push(ipam.allocate(now, &format!("c{i}")).expect("allocate"));
        }
    }
    // The page cache reached the disk only in part: line 4 (the third allocation) is zeros.
    let journal = dir.path().join(FileStore::JOURNAL);
    let text = std::fs::read(&journal).expect("journal");
    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    assert!(lines.len() > 5, "header and one line per allocation");
    lines[3] = vec![0; lines[3].len()];
    std::fs::write(&journal, lines.join(&b'\n')).expect("write");

    // Same boot: the daemon only crashed, and a crash cannot do this. Refuse to guess.
    let err = open_in(dir.path(), "boot-a", 2).expect_err("damage within one boot");
    assert!(err.to_string().contains("line 4"), "{err}");

    // After a reboot the containers of that journal are gone: keep what precedes the damage.
    let mut ipam = open_in(dir.path(), "boot-b", 3).expect("damage from before the reboot");
    let kept: Vec<String> = ipam.allocations().into_iter().map(|(c, _)| c).collect();
    assert_eq!(kept, ["c0", "c1"], "entries before the damage are kept");
    assert_eq!(ipam.allocate(now, "c1").expect("same"), addresses[1]);
    let fresh = ipam.allocate(now, "new").expect("fresh");
    assert!(
        fresh != addresses[0] && fresh != addresses[1],
        "kept addresses are not reused"
    );
}

#[test]
fn a_stale_journal_left_behind_by_a_snapshot_is_not_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Instant::now();
    let journal = dir.path().join(FileStore::JOURNAL);
    let old_journal;
    {
        let mut ipam = open_in(dir.path(), "boot-a", 1).expect("open");
        ipam.init_genesis(now).expect("genesis");
        for i in 0..5 {
            ipam.allocate(now, &format!("c{i}")).expect("allocate");
        }
        old_journal = std::fs::read(&journal).expect("journal");
    }
    {
        // The start writes a snapshot with c0..c4; c0 then goes away.
        let mut ipam = open_in(dir.path(), "boot-a", 2).expect("reopen");
        assert_eq!(ipam.allocations().len(), 5);
        ipam.release("c0").expect("release");
    }
    drop(open_in(dir.path(), "boot-a", 3).expect("reopen")); // a snapshot without c0
                                                             // The old journal is back, as if emptying it after the snapshot's rename was lost.
    std::fs::write(&journal, &old_journal).expect("write");
    let ipam = open_in(dir.path(), "boot-a", 4).expect("a stale journal is no error");
    let kept: Vec<String> = ipam.allocations().into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        kept,
        ["c1", "c2", "c3", "c4"],
        "c0 does not come back from the stale journal"
    );
}

#[test]
fn an_over_claim_is_reported_by_the_owner_it_robs() {
    use weft_gossip::ipam::{Claim, Piece, Record, Transfer};
    let now = Instant::now();
    let config = IpamConfig::new(range("10.32.0.0/24"));
    let open = |seed: u8| {
        Ipam::open(
            Arc::new(IdentityKey::from_seed(&[seed; 32])),
            config.clone(),
            MemoryStore::new(),
            u64::from(seed),
        )
        .expect("open")
    };
    let mut owner = open(1);
    let mut member = open(5);
    let (ido, idm) = (owner.node_id(), member.node_id());
    let stranger = IdentityKey::from_seed(&[6; 32]).node_id();
    owner.init_genesis(now).expect("genesis");
    member
        .handle_record(now, ido, &owner.record().expect("record"))
        .expect("adopt");
    let honest = member.record().expect("record");
    owner
        .handle_record(now, idm, &honest)
        .expect("honest record");
    assert!(
        owner.disputed().is_empty(),
        "an honest record disputes nothing"
    );

    // The member (it holds the cluster secret, so its record is authentic) asserts the first
    // half of the range at version 7 and, by a "transfer" to a stranger, two more addresses.
    let mut forged = Record::decode(idm, &honest).expect("decode");
    forged.seq += 1;
    forged.claims = vec![Claim {
        piece: Piece {
            start: 0,
            end: 128,
            version: 7,
        },
        used: 0,
    }];
    forged.outgoing = vec![Transfer {
        from: idm,
        to: stranger,
        seq: 1,
        pieces: vec![Piece {
            start: 200,
            end: 202,
            version: 3,
        }],
        signature: weft_crypto::Signature([0; 64]),
    }];
    let (bytes, truncated) = forged.encode();
    assert!(!truncated);
    owner
        .handle_record(now, idm, &bytes)
        .expect("authentic, well formed");

    // Views follow the higher version (this is what the over-claim buys)...
    let ring = owner.ownership();
    assert!(ring
        .iter()
        .any(|e| e.owner == idm && e.start == 0 && e.end == 128));
    // ...but the owner knows it never gave that space away, and says who claims it.
    let disputed = owner.report().disputed;
    let first = |s: &str| s.parse::<std::net::Ipv4Addr>().expect("address");
    assert_eq!(disputed.len(), 2, "{disputed:?}");
    assert_eq!(
        (
            disputed[0].first,
            disputed[0].last,
            disputed[0].ours,
            disputed[0].theirs
        ),
        (first("10.32.0.0"), first("10.32.0.127"), 1, 7)
    );
    assert_eq!(
        (disputed[1].first, disputed[1].last, disputed[1].theirs),
        (first("10.32.0.200"), first("10.32.0.201"), 3)
    );
    assert!(disputed.iter().all(|d| d.claimant == idm.to_string()));
    // It keeps allocating from its own state: nothing is handed out twice.
    let addr = owner.allocate(now, "c").expect("own space");
    assert_eq!(addr, first("10.32.0.1"));

    // The member gives up the lie: the dispute goes away with its next record.
    let mut honest_again = Record::decode(idm, &honest).expect("decode");
    honest_again.seq = forged.seq + 1;
    owner
        .handle_record(now, idm, &honest_again.encode().0)
        .expect("record");
    assert!(owner.disputed().is_empty());
}

#[test]
fn garbage_records_and_messages_change_nothing() {
    let identity = Arc::new(IdentityKey::from_seed(&[1; 32]));
    let peer = IdentityKey::from_seed(&[2; 32]).node_id();
    let now = Instant::now();
    let mut ipam = Ipam::open(
        identity,
        IpamConfig::new(range("10.32.0.0/20")),
        MemoryStore::new(),
        1,
    )
    .expect("open");
    ipam.init_genesis(now).expect("genesis");
    let good = ipam.record().expect("record");
    let seq = ipam.record_seq();
    let mut rng = 0x1234_5678_u64;
    for len in 0..good.len() {
        assert!(
            ipam.handle_record(now, peer, &good[..len]).is_err(),
            "truncated record of {len} bytes"
        );
        assert!(ipam
            .handle_message(now, peer, &good[..len.min(40)])
            .is_err());
    }
    for _ in 0..2000 {
        let mut bytes = good.clone();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng as usize) % bytes.len();
        bytes[i] ^= (rng >> 32) as u8 | 1;
        let _ = ipam.handle_record(now, peer, &bytes);
        let _ = ipam.handle_message(now, peer, &bytes[..bytes.len().min(60)]);
    }
    assert_eq!(ipam.record_seq(), seq, "no input changed this node's state");
    assert_eq!(ipam.owned().len(), 1);
}

#[test]
fn a_full_cluster_says_so_and_an_address_freed_anywhere_is_usable_again() {
    let mut sim = cluster(3, "10.40.0.0/27");
    let mut n = 0;
    let mut holder = std::collections::BTreeMap::new();
    // Fill the range from all three nodes.
    for round in 0..40 {
        for i in 0..3 {
            n += 1;
            if let Ok(a) = allocate(&mut sim, i, &format!("c{n}")) {
                holder.insert(format!("c{n}"), (i, a));
            }
        }
        sim.run(2);
        if round > 5 && holder.len() == 30 {
            break;
        }
    }
    assert_eq!(holder.len(), 30, "a /27 has 30 usable addresses");
    sim.run(10);
    for i in 0..3 {
        let err = allocate(&mut sim, i, "more").expect_err("full");
        assert!(
            matches!(err, Error::RangeExhausted { .. }),
            "node {i}: {err}"
        );
    }
    // Free one address on a node, and ask from another node.
    let (victim, (owner, addr)) = holder
        .iter()
        .find(|(_, (o, _))| *o == 0)
        .map(|(c, v)| (c.clone(), *v))
        .expect("node 0 holds some");
    sim.ipam(owner)
        .expect("up")
        .release(&victim)
        .expect("release");
    sim.run(10);
    let got = allocate(&mut sim, 2, "reuse").expect("the freed address moves to node 2");
    assert_eq!(got, addr);
    sim.check_safety().expect("no overlap");
}

/// A node that left keeps its hand-over in its final record even once the receiver has
/// acknowledged it: that record is all that is left of the node, and where its space went
/// must stay readable (a later `forget` of a node that had given it space relies on it).
#[test]
fn the_final_record_of_a_node_that_left_still_shows_where_its_space_went() {
    use weft_gossip::ipam::Record;
    let r = range("10.32.0.0/24");
    let open = |seed: u8| {
        let key = Arc::new(IdentityKey::from_seed(&[seed; 32]));
        let id = key.node_id();
        let ipam = Ipam::open(key, IpamConfig::new(r), MemoryStore::new(), u64::from(seed))
            .expect("opens");
        (id, ipam)
    };
    let (a_id, mut a) = open(1);
    let (b_id, mut b) = open(2);
    let now = Instant::now();
    a.init_genesis(now).expect("genesis");
    a.set_reachable(now, b_id, true);
    b.set_reachable(now, a_id, true);
    // Deliver everything each has to say to the other, records and messages, until quiet.
    let exchange = |a: &mut Ipam<MemoryStore>, b: &mut Ipam<MemoryStore>| {
        for _ in 0..10 {
            if let Some(rec) = a.record() {
                b.handle_record(now, a_id, &rec).expect("record of a");
            }
            if let Some(rec) = b.record() {
                a.handle_record(now, b_id, &rec).expect("record of b");
            }
            while let Some(t) = a.poll_transmit() {
                b.handle_message(now, a_id, &t.bytes)
                    .expect("message from a");
            }
            while let Some(t) = b.poll_transmit() {
                a.handle_message(now, b_id, &t.bytes)
                    .expect("message from b");
            }
        }
    };
    exchange(&mut a, &mut b);
    assert!(matches!(
        b.allocate(now, "c1"),
        Err(Error::SpaceRequested { .. })
    ));
    exchange(&mut a, &mut b);
    b.allocate(now, "c1").expect("b got space from a");
    let b_space = b.owned().to_vec();
    assert_eq!(b.leave(now).expect("leaves"), Some(a_id));
    exchange(&mut a, &mut b);
    assert!(
        b_space.iter().all(|p| a
            .owned()
            .iter()
            .any(|q| q.start <= p.start && p.end <= q.end)),
        "a took b's space back"
    );
    assert_eq!(
        b.poll_timeout(),
        None,
        "nothing left to retransmit: acknowledged"
    );
    let last = Record::decode(b_id, &b.record().expect("a final record")).expect("decodes");
    assert_eq!(last.status, Status::Left);
    assert!(
        last.outgoing.iter().any(|t| t.to == a_id),
        "the hand-over is gone from the final record: {last:?}"
    );
}

#[test]
fn allocate_at_takes_a_free_address_of_the_own_space_or_says_why_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = Arc::new(IdentityKey::from_seed(&[11; 32]));
    let config = IpamConfig::new(range("10.32.0.0/24"));
    let now = Instant::now();
    let addr = |s: &str| s.parse::<std::net::Ipv4Addr>().expect("addr");
    let mut ipam = Ipam::open(
        identity.clone(),
        config.clone(),
        FileStore::new(dir.path()),
        1,
    )
    .expect("open");
    let err = ipam
        .allocate_at("early", addr("10.32.0.9"))
        .expect_err("no genesis");
    assert!(matches!(err, Error::NoGenesis), "{err}");
    ipam.init_genesis(now).expect("genesis");

    assert_eq!(
        ipam.allocate_at("a", addr("10.32.0.77")).expect("free"),
        addr("10.32.0.77")
    );
    // Again: the same answer; another address for the same container: refused.
    assert_eq!(
        ipam.allocate_at("a", addr("10.32.0.77")).expect("same"),
        addr("10.32.0.77")
    );
    assert_eq!(ipam.allocate(now, "a").expect("same"), addr("10.32.0.77"));
    let err = ipam
        .allocate_at("a", addr("10.32.0.78"))
        .expect_err("a has one");
    assert!(matches!(err, Error::AlreadyAllocated { .. }), "{err}");
    assert!(err.to_string().contains("10.32.0.77"), "{err}");
    // Taken by another container: refused, naming it.
    let err = ipam
        .allocate_at("b", addr("10.32.0.77"))
        .expect_err("taken");
    assert!(matches!(err, Error::AddressInUse { .. }), "{err}");
    assert!(err.to_string().contains("by a"), "{err}");
    // The network and broadcast addresses, and addresses outside the range.
    for reserved in ["10.32.0.0", "10.32.0.255"] {
        let err = ipam.allocate_at("b", addr(reserved)).expect_err("reserved");
        assert!(
            matches!(err, Error::AddressInUse { .. }),
            "{reserved}: {err}"
        );
    }
    let err = ipam
        .allocate_at("b", addr("10.33.0.5"))
        .expect_err("outside");
    assert!(matches!(err, Error::NotInRange(_)), "{err}");
    assert!(ipam.allocate_at("b", addr("10.32.0.78")).is_ok());
    // The next-fit allocator does not hand out what allocate_at took.
    for i in 0..100 {
        let got = ipam.allocate(now, &format!("n{i}")).expect("space");
        assert!(
            got != addr("10.32.0.77") && got != addr("10.32.0.78"),
            "{got} twice"
        );
    }
    ipam.release("a").expect("release");
    assert_eq!(
        ipam.allocate_at("c", addr("10.32.0.77")).expect("freed"),
        addr("10.32.0.77")
    );
    drop(ipam);
    // Journalled: a restart keeps it.
    let mut ipam = Ipam::open(identity, config, FileStore::new(dir.path()), 2).expect("reopen");
    assert_eq!(ipam.allocate(now, "c").expect("kept"), addr("10.32.0.77"));
    assert_eq!(ipam.allocate(now, "b").expect("kept"), addr("10.32.0.78"));
}

#[test]
fn allocate_at_refuses_addresses_of_another_nodes_space() {
    let mut sim = cluster(2, "10.40.0.0/24");
    // Node 1 asks for space; node 0 keeps some.
    allocate(&mut sim, 1, "x").expect("space");
    let theirs: Vec<ipnet::Ipv4Net> = sim.ipam(0).expect("up").owned_cidrs();
    let mine: Vec<ipnet::Ipv4Net> = sim.ipam(1).expect("up").owned_cidrs();
    let foreign = theirs
        .iter()
        .flat_map(|c| c.hosts())
        .find(|a| !mine.iter().any(|m| m.contains(a)))
        .expect("node 0 keeps an address");
    let err = sim
        .ipam(1)
        .expect("up")
        .allocate_at("y", foreign)
        .expect_err("not ours");
    assert!(matches!(err, Error::NotInOwnSpace { .. }), "{err}");
    assert!(
        err.to_string().contains("not in this node's address space"),
        "{err}"
    );
}
