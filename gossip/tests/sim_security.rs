//! Forged and tampered records never enter a view; leave is seen by all; a forgotten node
//! stays out despite stale gossip; a restart with a higher version refreshes the record.

use std::time::Duration;

use weft_crypto::{IdentityKey, WgPublicKey};
use weft_gossip::sim::{sim_addr, Sim, SimConfig};
use weft_gossip::wire::{encode_datagram, encode_push_pull, Message, StateEntry, Update};
use weft_gossip::{Event, LeaveReason, MemberState, NodeRecord, SignedRecord};

fn gossip(update: Update) -> Vec<u8> {
    encode_datagram(&Message::Gossip, &[update])
}

#[test]
fn forged_and_tampered_records_never_appear() {
    let mut sim = Sim::new(SimConfig {
        nodes: 20,
        seed: 21,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(1));
    let ids = sim.ids().to_vec();
    let (victim, attacker) = (ids[3], ids[4]);
    let attacker_key = IdentityKey::from_seed(&[77; 32]);

    // A record naming the victim, with the attacker's WireGuard key, signed by the wrong key.
    let mut forged = sim
        .node(&victim)
        .and_then(|c| c.record(&victim))
        .cloned()
        .expect("victim record");
    forged.version += 100;
    forged.wg_key = WgPublicKey([66; 32]);
    let mut fake = NodeRecord::new(
        attacker_key.node_id(),
        1,
        "evil",
        WgPublicKey([66; 32]),
        sim_addr(99),
    );
    fake.version = 1;
    let fake_signed = fake.sign(&attacker_key).expect("sign");
    let forged_signed =
        SignedRecord::from_parts(fake_signed.body().to_vec(), *fake_signed.signature());
    // Tamper: the victim's genuine signature over a changed body.
    let genuine = sim
        .node(&ids[0])
        .and_then(|c| c.verified_record(&victim))
        .expect("victim record");
    let mut body = genuine.signed().body().to_vec();
    let n = body.len();
    body[n - 3] ^= 0x55;
    let tampered = SignedRecord::from_parts(body, *genuine.signed().signature());
    // A record for the victim's id signed with the attacker's key.
    let wrong_key = {
        let mut r = forged.clone();
        r.node_id = attacker_key.node_id();
        let s = r.sign(&attacker_key).expect("sign");
        let mut b = s.body().to_vec();
        b[..32].copy_from_slice(victim.as_bytes());
        SignedRecord::from_parts(b, *s.signature())
    };

    let from = sim.addr(&attacker).expect("addr");
    for target in &ids[..10] {
        for bad in [&wrong_key, &tampered] {
            sim.inject(target, from, &gossip(Update::Alive(bad.clone())))
                .expect("running")
                .expect("well-formed message");
        }
        let entry = StateEntry {
            record: wrong_key.clone(),
            state: MemberState::Alive,
            incarnation: forged.version,
            leave: None,
        };
        sim.inject(target, from, &encode_push_pull(true, &[entry]))
            .expect("running")
            .expect("well-formed");
    }
    // The attacker's own fresh identity is a legitimate record (it holds that key); the
    // forgery is the victim's record with the attacker's key.
    let _ = forged_signed;
    sim.run_for(Duration::from_secs(10));
    for (id, c) in sim.running() {
        let r = c.record(&victim).expect("victim known");
        assert_ne!(
            r.wg_key,
            WgPublicKey([66; 32]),
            "node {id:?} took a forged record"
        );
        assert_eq!(
            r,
            genuine.record(),
            "node {id:?} has a record the victim did not sign"
        );
    }
    let refused: u64 = sim.running().map(|(_, c)| c.stats().bad_signature).sum();
    assert!(refused >= 20, "bad signatures were counted ({refused})");
}

#[test]
fn leave_is_seen_by_all() {
    let mut sim = Sim::new(SimConfig {
        nodes: 30,
        seed: 22,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(1));
    let leaver = sim.ids()[7];
    sim.with_node(&leaver, |c, now| c.leave(now, LeaveReason::Leaving));
    sim.run_for(Duration::from_secs(3));
    sim.crash(&leaver);
    sim.run_for(Duration::from_secs(30));
    for (id, c) in sim.running() {
        assert_eq!(
            c.member(&leaver).map(|m| (m.state, m.leave_reason)),
            Some((MemberState::Left, Some(LeaveReason::Leaving))),
            "node {id:?}"
        );
        assert!(!c.is_live(&leaver), "node {id:?}");
        assert!(!c.live_members().any(|n| n == leaver), "node {id:?}");
    }
    assert!(
        !sim.events()
            .iter()
            .any(|e| e.event == Event::Failed(leaver)),
        "a leaver is not failed"
    );
}

#[test]
fn stopped_node_is_shown_stopped_then_rejoins_alive() {
    let mut sim = Sim::new(SimConfig {
        nodes: 20,
        seed: 23,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(1));
    let ids = sim.ids().to_vec();
    let stopper = ids[5];
    sim.with_node(&stopper, |c, now| c.leave(now, LeaveReason::Stopping));
    assert_eq!(
        sim.node(&stopper).and_then(|c| c.leave_reason(&stopper)),
        Some(LeaveReason::Stopping)
    );
    sim.run_for(Duration::from_secs(3));
    sim.crash(&stopper);
    sim.run_for(Duration::from_secs(20));
    for (id, c) in sim.running() {
        let m = c.member(&stopper).expect("still in the view");
        assert_eq!(m.state, MemberState::Left, "node {id:?}");
        assert!(m.is_stopped(), "node {id:?} sees it stopped");
        assert_eq!(c.leave_reason(&stopper), Some(LeaveReason::Stopping));
    }
    assert!(
        !sim.events()
            .iter()
            .any(|e| e.event == Event::Failed(stopper)),
        "a stopped node is not failed"
    );
    sim.restart(&stopper, &ids[0], |_| {})
        .expect("stopped node exists")
        .expect("restarts");
    sim.run_for(Duration::from_secs(20));
    for (id, c) in sim.running() {
        if *id == stopper {
            continue;
        }
        let m = c.member(&stopper).expect("back in the view");
        assert_eq!(
            (m.state, m.leave_reason),
            (MemberState::Alive, None),
            "node {id:?}"
        );
        assert!(c.is_live(&stopper), "node {id:?}");
    }
}

#[test]
fn forgotten_node_stays_out_despite_stale_gossip() {
    let mut sim = Sim::new(SimConfig {
        nodes: 20,
        seed: 23,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(1));
    let ids = sim.ids().to_vec();
    let gone = ids[5];
    let stale = sim
        .node(&ids[0])
        .and_then(|c| c.verified_record(&gone))
        .expect("record");
    sim.crash(&gone);
    sim.run_for(Duration::from_secs(30));
    for id in ids.iter().filter(|i| **i != gone) {
        sim.with_node(id, |c, now| c.forget(now, &gone));
    }
    // Stale gossip: the old record, by datagram and in a push-pull, to every node.
    let from = sim.addr(&ids[1]).expect("addr");
    for id in ids.iter().filter(|i| **i != gone) {
        sim.inject(id, from, &gossip(Update::Alive(stale.signed().clone())))
            .expect("running")
            .expect("well-formed");
        let entry = StateEntry {
            record: stale.signed().clone(),
            state: MemberState::Alive,
            incarnation: stale.version(),
            leave: None,
        };
        sim.inject(id, from, &encode_push_pull(false, &[entry]))
            .expect("running")
            .expect("well-formed");
    }
    sim.run_for(Duration::from_secs(60));
    for (id, c) in sim.running() {
        assert!(
            c.member(&gone).is_none(),
            "node {id:?} let a forgotten node back in"
        );
        assert!(c.stats().tombstoned > 0 || *id == gone);
    }
}

#[test]
fn restart_with_higher_version_refreshes_the_record_everywhere() {
    let mut sim = Sim::new(SimConfig {
        nodes: 30,
        seed: 24,
        ..SimConfig::default()
    });
    sim.run_for(Duration::from_secs(1));
    let ids = sim.ids().to_vec();
    let node = ids[9];
    let old = sim.node(&node).map(|c| c.local_version()).expect("running");
    sim.crash(&node);
    sim.run_for(Duration::from_secs(20));
    sim.restart(&node, &ids[0], |r| r.wg_key = WgPublicKey([5; 32]))
        .expect("crashed")
        .expect("valid");
    let fresh = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.running().all(|(id, c)| {
            *id == node
                || c.member(&node).is_some_and(|m| {
                    m.state == MemberState::Alive && m.record.wg_key == WgPublicKey([5; 32])
                })
        })
    });
    assert!(
        fresh,
        "the restarted node's new record did not reach everyone"
    );
    let new = sim.node(&node).map(|c| c.local_version()).expect("running");
    assert!(new > old);
    assert_eq!(
        sim.node(&node).map(|c| c.num_live()),
        Some(29),
        "the restarted node learned the view back"
    );
}
