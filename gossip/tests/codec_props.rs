//! The decoder never panics on random bytes, and encode/decode round-trips.

use std::net::SocketAddr;

use proptest::prelude::*;
use weft_crypto::{IdentityKey, NodeId, Signature, WgPublicKey};
use weft_gossip::wire::{
    decode, encode_datagram, encode_push_pull, Message, Packet, StateEntry, Update, MAX_DATAGRAM,
};
use weft_gossip::{Error, LeaveReason, MemberState, NodeRecord, SignedLeave, VerifiedRecord};

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(seq, t)| Message::Ping {
            seq,
            target: NodeId(t)
        }),
        (any::<u32>(), addr()).prop_map(|(seq, observed)| Message::Ack { seq, observed }),
        (any::<u32>(), any::<[u8; 32]>(), addr()).prop_map(|(seq, t, addr)| Message::PingReq {
            seq,
            target: NodeId(t),
            addr
        }),
        any::<u32>().prop_map(|seq| Message::Nack { seq }),
        Just(Message::Gossip),
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(seq, t)| Message::PingReliable {
            seq,
            target: NodeId(t)
        }),
    ]
}

fn record(
    seed: u8,
    version: u64,
    ipam: Vec<u8>,
    name: String,
    gossip: SocketAddr,
) -> weft_gossip::SignedRecord {
    let key = IdentityKey::from_seed(&[seed; 32]);
    let mut r = NodeRecord::new(
        key.node_id(),
        version,
        name,
        WgPublicKey([seed; 32]),
        gossip,
    );
    r.ipam = ipam;
    r.sign(&key).expect("bounded record")
}

fn update() -> impl Strategy<Value = Update> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            "[a-z]{0,16}",
            addr()
        )
            .prop_map(|(s, v, ipam, name, a)| Update::Alive(record(s, v, ipam, name, a))),
        (any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(n, i, f)| {
            Update::Suspect {
                node: NodeId(n),
                incarnation: i,
                from: NodeId(f),
            }
        }),
        (any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(n, i, f)| Update::Dead {
            node: NodeId(n),
            incarnation: i,
            from: NodeId(f)
        }),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<bool>()
        )
            .prop_map(|(n, v, s1, s2, gone)| {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&s1);
                sig[32..].copy_from_slice(&s2);
                Update::Leave(SignedLeave {
                    node_id: NodeId(n),
                    version: v,
                    reason: if gone {
                        LeaveReason::Leaving
                    } else {
                        LeaveReason::Stopping
                    },
                    signature: Signature(sig),
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn valid_prefix_then_random_bytes_never_panic(kind in 0u8..3, bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let mut b = vec![1, kind];
        b.extend_from_slice(&bytes);
        let _ = decode(&b);
    }

    #[test]
    fn datagrams_round_trip(m in message(), updates in proptest::collection::vec(update(), 0..4)) {
        let bytes = encode_datagram(&m, &updates);
        prop_assume!(bytes.len() <= MAX_DATAGRAM);
        prop_assert_eq!(decode(&bytes), Ok(Packet::Datagram { message: m, updates }));
    }

    #[test]
    fn push_pulls_round_trip(reply in any::<bool>(), n in 0usize..5, v in any::<u64>()) {
        let entries: Vec<_> = (0..n).map(|i| {
            let state = [MemberState::Alive, MemberState::Suspect, MemberState::Dead, MemberState::Left][i % 4];
            StateEntry {
                record: record(i as u8, v, vec![], "n".into(), "192.0.2.1:6783".parse().expect("addr")),
                state,
                incarnation: v,
                leave: (state == MemberState::Left).then_some((LeaveReason::Stopping, Signature([i as u8; 64]))),
            }
        }).collect();
        let bytes = encode_push_pull(reply, &entries);
        prop_assert_eq!(decode(&bytes), Ok(Packet::PushPull { reply, entries }));
    }

    #[test]
    fn unreachable_lists_round_trip_through_the_wire(
        ids in proptest::collection::btree_set(any::<[u8; 32]>(), 0..20),
        v in any::<u64>(),
    ) {
        let key = IdentityKey::from_seed(&[6; 32]);
        let mut r = NodeRecord::new(key.node_id(), v, "n", WgPublicKey([6; 32]), "192.0.2.1:6783".parse().expect("addr"));
        r.unreachable = ids.into_iter().map(NodeId).filter(|id| *id != key.node_id()).collect();
        let signed = r.sign(&key).expect("bounded record");
        let bytes = encode_datagram(&Message::Gossip, &[Update::Alive(signed)]);
        let Ok(Packet::Datagram { updates, .. }) = decode(&bytes) else {
            return Err(TestCaseError::fail("datagram did not decode"));
        };
        let Some(Update::Alive(got)) = updates.into_iter().next() else {
            return Err(TestCaseError::fail("no record"));
        };
        let got = VerifiedRecord::verify(got, None).expect("verifies");
        prop_assert_eq!(got.record(), &r);
    }

    #[test]
    fn truncations_are_errors_not_panics(m in message(), u in update(), cut in 0usize..2000) {
        let bytes = encode_datagram(&m, &[u]);
        let cut = cut % bytes.len();
        prop_assert!(decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn typed_errors_for_bad_input() {
    assert_eq!(decode(&[]), Err(Error::Truncated));
    assert_eq!(decode(&[9, 0]), Err(Error::UnknownVersion(9)));
    let mut big = encode_datagram(&Message::Gossip, &[]);
    big.resize(MAX_DATAGRAM + 1, 0);
    assert!(matches!(decode(&big), Err(Error::TooLarge { .. })));
    let mut trailing = encode_datagram(&Message::Gossip, &[]);
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(Error::Malformed("trailing bytes")));
    assert!(matches!(decode(&[1, 0, 77, 0]), Err(Error::Malformed(_))));
}

#[test]
fn unknown_leave_reasons_are_refused() {
    let key = IdentityKey::from_seed(&[4; 32]);
    for reason in [LeaveReason::Stopping, LeaveReason::Leaving] {
        let leave = SignedLeave::sign(&key, 5, reason);
        let bytes = encode_datagram(&Message::Gossip, &[Update::Leave(leave.clone())]);
        assert_eq!(
            decode(&bytes),
            Ok(Packet::Datagram {
                message: Message::Gossip,
                updates: vec![Update::Leave(leave)]
            })
        );
        // version, kind, Gossip, count, update tag, node id, version 5: then the reason.
        let at = 3 + 1 + 1 + 32 + 1;
        assert_eq!(bytes[at], reason.to_byte());
        let mut bad = bytes.clone();
        bad[at] = 2;
        assert_eq!(decode(&bad), Err(Error::Malformed("unknown leave reason")));
    }
    let entry = StateEntry {
        record: record(
            4,
            5,
            vec![],
            "n".into(),
            "192.0.2.1:6783".parse().expect("addr"),
        ),
        state: MemberState::Left,
        incarnation: 5,
        leave: Some((LeaveReason::Leaving, Signature([7; 64]))),
    };
    let bytes = encode_push_pull(false, &[entry]);
    // The reason byte comes right before the 64-byte signature at the end.
    let at = bytes.len() - 65;
    assert_eq!(bytes[at], LeaveReason::Leaving.to_byte());
    let mut bad = bytes.clone();
    bad[at] = 0xff;
    assert_eq!(decode(&bad), Err(Error::Malformed("unknown leave reason")));
}
