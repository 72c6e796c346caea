//! Fuzz the decoders of the signed IPAM statements (genesis, transfer, reclaim): any bytes
//! give a statement or a typed error, never a panic; a decoded statement round-trips, and
//! verifying its signature never panics either. Run with
//! `cargo +nightly fuzz run ipam_statements` from gossip/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::IdentityKey;
use weft_gossip::ipam::{Genesis, GenesisId, Reclaim, Transfer};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let from = IdentityKey::from_seed(&[2; 32]).node_id();
    let size = 1u32 << ((kind >> 2) % 25).max(2);
    let genesis = GenesisId([7; 16]);
    match kind % 3 {
        0 => {
            if let Ok(g) = Genesis::from_bytes(bytes) {
                assert_eq!(Genesis::from_bytes(&g.to_bytes()).expect("round trip"), g);
                assert_eq!(g.to_bytes(), bytes, "one encoding per genesis");
                let _ = g.verify();
            }
        }
        1 => {
            if let Ok(t) = Transfer::from_bytes(bytes, from, size) {
                assert_eq!(
                    Transfer::from_bytes(&t.to_bytes(), from, size).expect("round trip"),
                    t
                );
                let _ = t.verify(genesis);
            }
        }
        _ => {
            if let Ok(rc) = Reclaim::from_bytes(bytes, size) {
                assert_eq!(
                    Reclaim::from_bytes(&rc.to_bytes(), size).expect("round trip"),
                    rc
                );
                let _ = rc.verify(genesis);
            }
        }
    }
});
