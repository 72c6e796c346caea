//! Fuzz the IPAM message decoder: any bytes give a message or a typed error, never a panic,
//! and a decoded message round-trips. Run with `cargo +nightly fuzz run ipam_message` from
//! gossip/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::IdentityKey;
use weft_gossip::ipam::Message;

fuzz_target!(|data: &[u8]| {
    let from = IdentityKey::from_seed(&[2; 32]).node_id();
    // The first byte picks the range size, so pieces near every bound are reachable.
    let Some((&size_bits, bytes)) = data.split_first() else {
        return;
    };
    let size = 1u32 << (size_bits % 25).max(2);
    if let Ok(msg) = Message::decode(from, bytes, size) {
        let again = Message::decode(from, &msg.encode(), size).expect("an encoded message decodes");
        assert_eq!(again, msg);
    }
});
