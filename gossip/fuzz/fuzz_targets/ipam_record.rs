//! Fuzz the IPAM record decoder and the core that consumes records: any bytes give a record
//! or a typed error, never a panic; a decoded record round-trips; and a record the core
//! rejects changes neither its own record nor its report. Run with
//! `cargo +nightly fuzz run ipam_record` from gossip/.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weft_crypto::IdentityKey;
use weft_gossip::ipam::{Error, Ipam, IpamConfig, MemoryStore, Record};

fuzz_target!(|data: &[u8]| {
    let from = IdentityKey::from_seed(&[2; 32]).node_id();
    if let Ok(record) = Record::decode(from, data) {
        let (bytes, truncated) = record.encode();
        if !truncated {
            let again = Record::decode(from, &bytes).expect("an encoded record decodes");
            assert_eq!(again, record);
        }
    }
    // The same bytes into a core that has a genesis (as the `ipam` field of a peer's record).
    let now = Instant::now();
    let identity = Arc::new(IdentityKey::from_seed(&[1; 32]));
    let config = IpamConfig::new("10.32.0.0/24".parse().expect("range"));
    let mut ipam = Ipam::open_store(identity, config, &mut MemoryStore::new(), 1).expect("open");
    ipam.init_genesis(now).expect("genesis");
    let before = (
        ipam.record(),
        serde_json::to_string(&ipam.report()).expect("json"),
    );
    if let Err(e) = ipam.handle_record(now, from, data) {
        assert_eq!(ipam.record(), before.0);
        if !matches!(e, Error::GenesisConflict(_)) {
            assert_eq!(
                serde_json::to_string(&ipam.report()).expect("json"),
                before.1
            );
        }
    }
});
