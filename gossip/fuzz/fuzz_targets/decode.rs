//! Fuzz the gossip decoder: any bytes must give a packet or a typed error, never a panic,
//! and a decoded datagram must stay within the datagram bound. Run with
//! `cargo +nightly fuzz run decode` from gossip/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_gossip::wire::{decode, Packet, MAX_DATAGRAM};

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Datagram { .. }) = decode(data) {
        assert!(data.len() <= MAX_DATAGRAM);
    }
});
