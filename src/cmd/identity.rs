//! `weft identity`: the node's id and WireGuard public key, from its key store.

use std::path::Path;

use serde::Serialize;
use weft_crypto::KeyStore;

use crate::output::{self, OutputFormat, Report};

#[derive(Serialize)]
struct Identity<'a> {
    node_id: String,
    wireguard_public_key: String,
    state_dir: &'a Path,
    /// Whether this run created the keys.
    created: bool,
}

impl Report for Identity<'_> {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node id", self.node_id.clone()),
            ("wireguard public key", self.wireguard_public_key.clone()),
            ("state dir", self.state_dir.display().to_string()),
        ]
    }
}

pub fn show(state_dir: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let keys = KeyStore::open_or_create(state_dir)?;
    if keys.created() {
        eprintln!("created new node keys in {}", state_dir.display());
    }
    output::print(
        format,
        &Identity {
            node_id: keys.node_id().to_string(),
            wireguard_public_key: keys.wireguard_public_key().to_string(),
            state_dir,
            created: keys.created(),
        },
    )
}
