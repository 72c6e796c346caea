//! The thin nftables driver: loads a compiled ruleset in one `nft -f` transaction and reads
//! the per-policy drop counters back.

use std::collections::BTreeMap;

use serde_json::Value;

use super::model::Compiled;
use super::nft::{self, Stats, TABLE};
use super::spec::PolicyName;
use crate::host::firewall::{is_missing_table, nft as run_nft, NftError};
use crate::host::CounterValue;
use crate::Result;

/// The policy table of this host (or of the network namespace the calling thread is in).
///
/// Replacing the table resets its counters, so the driver keeps what each policy's counter
/// had reached before a replacement and adds it to what the new table counts: [`drops`]
/// keep growing as long as the policy exists (packets counted in the instant between the
/// last read and the replacement are lost).
///
/// [`drops`]: PolicyTable::drops
#[derive(Debug, Default)]
pub struct PolicyTable {
    /// Counter name in the loaded table -> its policy.
    loaded: BTreeMap<String, PolicyName>,
    /// Drops counted by tables already replaced, per policy.
    earlier: BTreeMap<PolicyName, CounterValue>,
    /// What the kernel listed for both tables right after the last load, without counts
    /// and handles ([`fingerprint`]): a later listing that differs is drift.
    fingerprint: Option<u64>,
}

/// Whether the tables in the kernel are still the ones loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// As loaded.
    None,
    /// A table is gone (a `nft flush ruleset`, a `delete table`).
    Missing,
    /// Both are there but their rules, chains, sets or elements differ from what was loaded.
    Changed,
}

impl PolicyTable {
    pub fn new() -> PolicyTable {
        PolicyTable::default()
    }

    /// Replaces the table with `compiled`'s ruleset in one transaction: either all of it is
    /// in force afterwards or (on error) the previous one still is. Connections that are
    /// established stay so (conntrack is untouched and the first rule accepts them).
    pub async fn apply(&mut self, compiled: &Compiled) -> Result<Stats> {
        let before = self.current().await.unwrap_or_default();
        let (text, stats) = nft::render(compiled);
        run_nft(
            &["-f", "-"],
            Some(format!("{}{text}", nft::remove_script())),
        )
        .await?;
        for (policy, value) in before {
            let total = self.earlier.entry(policy).or_default();
            total.packets += value.packets;
            total.bytes += value.bytes;
        }
        self.fingerprint = fingerprint().await.ok().flatten();
        // Policies that are gone take their count with them.
        self.loaded = compiled
            .counters()
            .map(|(name, id)| (name.to_owned(), id.clone()))
            .collect();
        let live: std::collections::BTreeSet<&PolicyName> = self.loaded.values().collect();
        self.earlier.retain(|id, _| live.contains(id));
        Ok(stats)
    }

    /// Deletes the table (not an error if it is missing).
    pub async fn remove(&mut self) -> Result<()> {
        run_nft(&["-f", "-"], Some(nft::remove_script())).await?;
        self.loaded.clear();
        self.earlier.clear();
        self.fingerprint = None;
        Ok(())
    }

    /// Compares both tables in the kernel with what the last [`PolicyTable::apply`] loaded
    /// (one `nft -j list` of each): a rule deleted, a set element added or a chain flushed
    /// is [`Drift::Changed`], as a table gone is [`Drift::Missing`].
    pub async fn drift(&self) -> Result<Drift> {
        match (fingerprint().await?, self.fingerprint) {
            (None, _) => Ok(Drift::Missing),
            (Some(now), Some(then)) if now != then => Ok(Drift::Changed),
            _ => Ok(Drift::None),
        }
    }

    /// Packets and bytes each policy has dropped since it was first applied.
    pub async fn drops(&self) -> Result<BTreeMap<PolicyName, CounterValue>> {
        let mut totals = self.earlier.clone();
        for (id, value) in self.current().await? {
            let total = totals.entry(id).or_default();
            total.packets += value.packets;
            total.bytes += value.bytes;
        }
        for id in self.loaded.values() {
            totals.entry(id.clone()).or_default();
        }
        Ok(totals)
    }

    /// Packets dropped at the bridge for a forged source address (since the last
    /// replacement); zero if the table is missing.
    pub async fn spoofed(&self) -> Result<CounterValue> {
        let listing =
            match run_nft(&["-j", "list", "counters", "table", "bridge", TABLE], None).await {
                Ok(out) => out,
                Err(NftError::Refused(_, stderr)) if is_missing_table(&stderr) => {
                    return Ok(CounterValue::default())
                }
                Err(e) => return Err(e.into()),
            };
        let listing: Value = serde_json::from_str(&listing).map_err(|e| {
            crate::Error::io("parsing nft -j list counters", std::io::Error::other(e))
        })?;
        Ok(parse_counters(&listing)
            .remove(nft::SPOOF_COUNTER)
            .unwrap_or_default())
    }

    /// The loaded table's counters, by policy (empty if there is no table).
    async fn current(&self) -> Result<BTreeMap<PolicyName, CounterValue>> {
        let listing = match run_nft(&["-j", "list", "counters", "table", "inet", TABLE], None).await
        {
            Ok(out) => out,
            Err(NftError::Refused(_, stderr)) if is_missing_table(&stderr) => {
                return Ok(BTreeMap::new())
            }
            Err(e) => return Err(e.into()),
        };
        let listing: Value = serde_json::from_str(&listing).map_err(|e| {
            crate::Error::io("parsing nft -j list counters", std::io::Error::other(e))
        })?;
        Ok(parse_counters(&listing)
            .into_iter()
            .filter_map(|(name, v)| self.loaded.get(&name).map(|id| (id.clone(), v)))
            .collect())
    }
}

/// A hash of both policy tables as the kernel lists them, without what changes by itself
/// (counter values) or on an identical reload (handles); `None` if either is missing.
async fn fingerprint() -> Result<Option<u64>> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for family in ["inet", "bridge"] {
        let listing = match run_nft(&["-j", "list", "table", family, TABLE], None).await {
            Ok(out) => out,
            Err(NftError::Refused(_, stderr)) if is_missing_table(&stderr) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut listing: Value = serde_json::from_str(&listing)
            .map_err(|e| crate::Error::io("parsing nft -j list table", std::io::Error::other(e)))?;
        strip_volatile(&mut listing);
        listing.to_string().hash(&mut hasher);
    }
    Ok(Some(hasher.finish()))
}

/// Removes counter values, handles and nft's own version block from a JSON listing.
pub fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for key in ["packets", "bytes", "handle", "metainfo"] {
                map.remove(key);
            }
            map.values_mut().for_each(strip_volatile);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

/// The named counters of the policy table in an `nft -j list counters` listing.
pub fn parse_counters(listing: &Value) -> BTreeMap<String, CounterValue> {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("counter"))
        .filter(|c| c.get("table").and_then(Value::as_str) == Some(TABLE))
        .filter_map(|c| {
            Some((
                c.get("name")?.as_str()?.to_owned(),
                CounterValue {
                    packets: c.get("packets").and_then(Value::as_u64).unwrap_or(0),
                    bytes: c.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// Runs `nft -c -f -` on the replacement script: checks that the kernel would take it,
/// without changing anything.
pub async fn check(compiled: &Compiled) -> Result<()> {
    run_nft(&["-c", "-f", "-"], Some(nft::replace_script(compiled))).await?;
    Ok(())
}
