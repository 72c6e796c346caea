//! The nftables table `inet weft`: the fail-closed rules and, unless turned off, masquerading.
//!
//! One filter chain at the `postrouting` hook: it sees both locally generated and forwarded
//! packets after routing, when the output interface is known, just before they leave. A packet
//! to the cluster range that is not for this node's own space and would leave by any interface
//! other than WireGuard, the bridge or loopback is counted and dropped. The table is not tied
//! to the daemon's life: it stays when the daemon exits or crashes, so traffic keeps failing
//! closed while no one manages the tunnels; only [`remove`] (on `weft reset`) deletes it.
//!
//! With masquerading ([`FirewallSpec::masquerade`]), a second chain, [`NAT_CHAIN`] (type nat,
//! postrouting, srcnat priority), holds one rule per cluster range:
//!
//! ```text
//! ip saddr 10.32.0.0/12 ip daddr != { 10.32.0.0/12, 224.0.0.0/4 } oifname != { "lo", "weft", "weft-wg" } masquerade
//! ```
//!
//! so pod traffic to the host's network and beyond leaves with the address of the interface
//! it leaves by, as flannel's and Weave's does, while traffic between pods (through WireGuard
//! or the bridge) keeps its source address. Both chains live in one table so one `nft` run
//! reads them and one transaction replaces them.
//!
//! We talk JSON to `nft -j` ourselves (as the `nftables` crate does) rather than through that
//! crate, whose counter values are `u32` and would wrap on a busy host.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Stdio;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::model::{Family, FirewallSpec, FirewallState};
use crate::{Error, Result};

/// The nftables table (family `inet`) holding weft's fail-closed rules.
pub const NFT_TABLE: &str = "weft";

/// The fail-closed filter chain, hooked at postrouting.
pub const NFT_CHAIN: &str = "postrouting";

/// The NAT chain, hooked at postrouting at srcnat priority; only there with masquerading.
pub const NAT_CHAIN: &str = "masquerading";

/// nftables' srcnat priority (`priority srcnat`).
const SRCNAT_PRIORITY: i32 = 100;

/// The named counter of packets dropped because they would have left unencrypted.
pub const DROP_COUNTER: &str = "fail_closed_drops";

/// Packets and bytes a counter has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// One rule of a chain. Its text form is stored as the rule's comment, which is how the
/// current state is read back (see [`read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// Traffic through these interfaces never leaves the host in the clear.
    AllowOif(Vec<String>),
    /// Traffic for this node's own space.
    AllowLocal(IpNet),
    /// Anything else to the cluster range: count and drop.
    Drop(IpNet),
    /// In [`NAT_CHAIN`]: traffic from this cluster range to outside every cluster range of
    /// its family (and outside multicast), leaving by neither WireGuard, the bridge nor
    /// loopback, takes the address of the interface it leaves by.
    Masquerade(IpNet),
}

impl Rule {
    fn comment(&self) -> String {
        match self {
            Rule::AllowOif(names) => format!("weft allow-oif {}", names.join(",")),
            Rule::AllowLocal(net) => format!("weft allow-local {net}"),
            Rule::Drop(net) => format!("weft drop {net}"),
            Rule::Masquerade(net) => format!("weft masquerade {net}"),
        }
    }

    fn parse_comment(comment: &str) -> Option<Rule> {
        let rest = comment.strip_prefix("weft ")?;
        let (kind, arg) = rest.split_once(' ')?;
        match kind {
            "allow-oif" => Some(Rule::AllowOif(arg.split(',').map(str::to_owned).collect())),
            "allow-local" => arg.parse().ok().map(Rule::AllowLocal),
            "drop" => arg.parse().ok().map(Rule::Drop),
            "masquerade" => arg.parse().ok().map(Rule::Masquerade),
            _ => None,
        }
    }

    fn expr(&self, spec: &FirewallSpec) -> Value {
        match self {
            Rule::AllowOif(names) => json!([
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                           "right": {"set": names}}},
                {"accept": null}
            ]),
            Rule::AllowLocal(net) => json!([addr_match("daddr", "==", net), {"accept": null}]),
            Rule::Drop(net) => json!([
                addr_match("daddr", "==", net),
                {"counter": DROP_COUNTER},
                {"drop": null}
            ]),
            Rule::Masquerade(net) => {
                let family = Family::of(net);
                let outside: Vec<Value> = spec
                    .cluster_ranges
                    .iter()
                    .filter(|r| Family::of(r) == family)
                    .chain([&multicast(family)])
                    .map(prefix)
                    .collect();
                json!([
                    addr_match("saddr", "==", net),
                    {"match": {
                        "op": "!=",
                        "left": {"payload": {"protocol": protocol(net), "field": "daddr"}},
                        "right": {"set": outside}
                    }},
                    {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}},
                               "right": {"set": unencrypted_exempt(spec)}}},
                    {"masquerade": null}
                ])
            }
        }
    }
}

/// The multicast range of a family: never masqueraded (it does not leave the link).
fn multicast(family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4)),
        Family::V6 => IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
        )),
    }
}

fn protocol(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

fn prefix(net: &IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

/// `ip saddr|daddr ==|!= NET`.
fn addr_match(field: &str, op: &str, net: &IpNet) -> Value {
    json!({"match": {
        "op": op,
        "left": {"payload": {"protocol": protocol(net), "field": field}},
        "right": prefix(net)
    }})
}

/// The interfaces traffic may leave by without the fail-closed check, and that masquerading
/// leaves alone: WireGuard, the bridge, loopback.
fn unencrypted_exempt(spec: &FirewallSpec) -> Vec<String> {
    vec![spec.wg_ifname.clone(), spec.bridge.clone(), "lo".to_owned()]
}

/// The fail-closed chain's rules, in order.
fn rules(spec: &FirewallSpec) -> Vec<Rule> {
    let mut rules = vec![Rule::AllowOif(unencrypted_exempt(spec))];
    rules.extend(spec.local_space.iter().copied().map(Rule::AllowLocal));
    rules.extend(spec.cluster_ranges.iter().copied().map(Rule::Drop));
    rules
}

/// The NAT chain's rules; empty (and no chain) without masquerading.
fn nat_rules(spec: &FirewallSpec) -> Vec<Rule> {
    if !spec.masquerade {
        return Vec::new();
    }
    spec.cluster_ranges
        .iter()
        .copied()
        .map(Rule::Masquerade)
        .collect()
}

fn table() -> Value {
    json!({"table": {"family": "inet", "name": NFT_TABLE}})
}

/// The nft JSON batch that atomically replaces the table with `spec`: `add table` (so the
/// delete cannot fail), `delete table`, then the new table, counter, chains and rules. nft
/// commits a whole input as one transaction: there is never a moment without the rules.
pub fn replace_batch(spec: &FirewallSpec) -> Value {
    let mut cmds = vec![
        json!({"metainfo": {"json_schema_version": 1}}),
        json!({"add": table()}),
        json!({"delete": table()}),
        json!({"add": table()}),
        json!({"add": {"counter": {"family": "inet", "table": NFT_TABLE, "name": DROP_COUNTER}}}),
        json!({"add": {"chain": {
            "family": "inet", "table": NFT_TABLE, "name": NFT_CHAIN,
            "type": "filter", "hook": "postrouting", "prio": 0, "policy": "accept"
        }}}),
    ];
    let nat = nat_rules(spec);
    if !nat.is_empty() {
        cmds.push(json!({"add": {"chain": {
            "family": "inet", "table": NFT_TABLE, "name": NAT_CHAIN,
            "type": "nat", "hook": "postrouting", "prio": SRCNAT_PRIORITY, "policy": "accept"
        }}}));
    }
    let chains = [(NFT_CHAIN, rules(spec)), (NAT_CHAIN, nat)];
    for (chain, rules) in chains {
        for rule in rules {
            cmds.push(json!({"add": {"rule": {
                "family": "inet", "table": NFT_TABLE, "chain": chain,
                "expr": rule.expr(spec), "comment": rule.comment()
            }}}));
        }
    }
    json!({ "nftables": cmds })
}

/// The batch that deletes the table if it exists.
pub fn remove_batch() -> Value {
    json!({"nftables": [{"add": table()}, {"delete": table()}]})
}

/// Reads weft's table out of `nft -j list table inet weft` output. `None` unless it holds the
/// filter chain at postrouting and, if any, the NAT chain at postrouting, and every rule is
/// one weft writes, in weft's order. A NAT chain means masquerading is on.
pub fn parse_table(listing: &Value) -> Option<FirewallSpec> {
    let objects = listing.get("nftables")?.as_array()?;
    let mut hooked = false;
    let mut nat_chain = false;
    let mut has_counter = false;
    let mut parsed = Vec::new();
    let mut parsed_nat = Vec::new();
    for object in objects {
        if let Some(chain) = object.get("chain") {
            let hook = chain.get("hook").and_then(Value::as_str);
            let kind = chain.get("type").and_then(Value::as_str);
            match chain.get("name")?.as_str()? {
                NFT_CHAIN => hooked = hook == Some("postrouting") && kind == Some("filter"),
                NAT_CHAIN if hook == Some("postrouting") && kind == Some("nat") => {
                    nat_chain = true;
                }
                _ => return None,
            }
        } else if let Some(counter) = object.get("counter") {
            has_counter |= counter.get("name").and_then(Value::as_str) == Some(DROP_COUNTER);
        } else if let Some(rule) = object.get("rule") {
            let comment = rule.get("comment").and_then(Value::as_str)?;
            let parsed_rule = Rule::parse_comment(comment)?;
            match rule.get("chain").and_then(Value::as_str)? {
                NFT_CHAIN => parsed.push(parsed_rule),
                NAT_CHAIN => parsed_nat.push(parsed_rule),
                _ => return None,
            }
        }
    }
    if !hooked || !has_counter {
        return None;
    }
    let mut rules = parsed.iter();
    let Some(Rule::AllowOif(names)) = rules.next() else {
        return None;
    };
    let [wg_ifname, bridge, lo] = names.as_slice() else {
        return None;
    };
    if lo != "lo" {
        return None;
    }
    let mut spec = FirewallSpec {
        cluster_ranges: BTreeSet::new(),
        local_space: BTreeSet::new(),
        wg_ifname: wg_ifname.clone(),
        bridge: bridge.clone(),
        masquerade: nat_chain,
    };
    for rule in rules {
        match rule {
            Rule::AllowLocal(net) => spec.local_space.insert(*net),
            Rule::Drop(net) => spec.cluster_ranges.insert(*net),
            Rule::AllowOif(_) | Rule::Masquerade(_) => return None,
        };
    }
    // Order matters in a chain: only accept exactly the order weft writes. A NAT chain
    // without its rules (flushed by hand) is not weft's either.
    (self::rules(&spec) == parsed && nat_rules(&spec) == parsed_nat).then_some(spec)
}

/// Why an `nft` run failed.
pub(crate) enum NftError {
    /// nft ran and refused: its stderr.
    Refused(Error, String),
    Other(Error),
}

impl From<NftError> for Error {
    fn from(e: NftError) -> Self {
        match e {
            NftError::Refused(e, _) | NftError::Other(e) => e,
        }
    }
}

/// Runs `nft` with `args`, feeding `input` on stdin; returns stdout. In the C locale, so its
/// messages read the same everywhere (see [`is_missing_table`]).
pub(crate) async fn nft(
    args: &[&str],
    input: Option<String>,
) -> std::result::Result<String, NftError> {
    let context = format!("nft {}", args.join(" "));
    let io = |e| NftError::Other(Error::io(context.clone(), e));
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await.map_err(io)?;
    }
    let out = child.wait_with_output().await.map_err(io)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let error = Error::io(
            context,
            std::io::Error::other(format!("{}: {stderr}", out.status)),
        );
        return Err(NftError::Refused(error, stderr));
    }
    String::from_utf8(out.stdout).map_err(|e| io(std::io::Error::other(e)))
}

/// True if nft's error output says the table it was asked to list does not exist
/// ("Error: No such file or directory; did you mean table ...").
pub(crate) fn is_missing_table(stderr: &str) -> bool {
    stderr.contains("No such file or directory")
}

async fn run_batch(batch: Value) -> Result<()> {
    nft(&["-j", "-f", "-"], Some(batch.to_string())).await?;
    Ok(())
}

/// `nft -j list table inet weft`, parsed; `None` if there is no such table. One nft run.
async fn list_table() -> Result<Option<Value>> {
    match nft(&["-j", "list", "table", "inet", NFT_TABLE], None).await {
        Ok(out) => serde_json::from_str(&out)
            .map(Some)
            .map_err(|e| Error::io("parsing nft -j list table", std::io::Error::other(e))),
        Err(NftError::Refused(_, stderr)) if is_missing_table(&stderr) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the table with `spec` in one transaction.
pub async fn apply(spec: &FirewallSpec) -> Result<()> {
    run_batch(replace_batch(spec)).await
}

/// The table and its drop counter, from one listing (one `nft` run: the daemon calls this
/// every second to notice a flushed or edited table).
pub async fn observe() -> Result<(FirewallState, Option<CounterValue>)> {
    Ok(match list_table().await? {
        None => (FirewallState::Missing, None),
        Some(listing) => (
            parse_table(&listing).map_or(FirewallState::Other, FirewallState::Weft),
            parse_counter(&listing),
        ),
    })
}

/// Reads the table back; `None` if it is missing or not exactly what weft writes.
pub async fn read() -> Result<Option<FirewallSpec>> {
    Ok(match observe().await?.0 {
        FirewallState::Weft(spec) => Some(spec),
        FirewallState::Missing | FirewallState::Other => None,
    })
}

/// Deletes the table (on `weft reset`); not an error if it is missing.
pub async fn remove() -> Result<()> {
    run_batch(remove_batch()).await
}

/// The drop counter, `None` if the table (or the counter in it) is missing.
pub async fn drops() -> Result<Option<CounterValue>> {
    Ok(observe().await?.1)
}

/// Finds weft's drop counter in an nft JSON listing.
pub fn parse_counter(listing: &Value) -> Option<CounterValue> {
    listing
        .get("nftables")?
        .as_array()?
        .iter()
        .filter_map(|o| o.get("counter"))
        .find(|c| c.get("name").and_then(Value::as_str) == Some(DROP_COUNTER))
        .map(|c| CounterValue {
            packets: c.get("packets").and_then(Value::as_u64).unwrap_or(0),
            bytes: c.get("bytes").and_then(Value::as_u64).unwrap_or(0),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirewallSpec {
        FirewallSpec {
            cluster_ranges: ["10.32.0.0/12", "fd32::/48"]
                .iter()
                .map(|s| s.parse().expect("prefix"))
                .collect(),
            local_space: BTreeSet::from(["10.32.1.0/24".parse().expect("prefix")]),
            wg_ifname: "weft-wg".into(),
            bridge: "weft".into(),
            masquerade: true,
        }
    }

    /// The rules of `chain` in a batch, as (comment, expr).
    fn chain_rules(batch: &Value, chain: &str) -> Vec<(String, Value)> {
        batch["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| {
                (
                    r["comment"].as_str().expect("comment").to_owned(),
                    r["expr"].clone(),
                )
            })
            .collect()
    }

    /// What `nft -j list table` gives back for a batch: the add commands' objects.
    fn as_listing(batch: &Value) -> Value {
        let cmds = batch["nftables"].as_array().expect("array");
        let objects: Vec<Value> = cmds[3..].iter().map(|c| c["add"].clone()).collect();
        json!({ "nftables": objects })
    }

    #[test]
    fn replace_batch_deletes_then_recreates_in_one_input() {
        let batch = replace_batch(&spec());
        let cmds = batch["nftables"].as_array().expect("array");
        assert_eq!(cmds[1], json!({"add": table()}));
        assert_eq!(cmds[2], json!({"delete": table()}));
        assert_eq!(cmds[3], json!({"add": table()}));
        let text = batch.to_string();
        assert!(text.contains(r#""hook":"postrouting""#), "{text}");
        // One drop rule per cluster range, each counted.
        assert_eq!(text.matches(r#"{"drop":null}"#).count(), 2);
        assert_eq!(
            text.matches(r#"{"counter":"fail_closed_drops"}"#).count(),
            2
        );
        assert!(text.contains(r#""protocol":"ip6""#));
    }

    #[test]
    fn listing_parses_back_to_the_spec() {
        let listing = as_listing(&replace_batch(&spec()));
        assert_eq!(parse_table(&listing), Some(spec()));
    }

    #[test]
    fn tampered_or_foreign_tables_do_not_parse() {
        let mut listing = as_listing(&replace_batch(&spec()));
        // A rule someone added by hand, without weft's comment.
        let objects = listing["nftables"].as_array_mut().expect("array");
        objects.push(
            json!({"rule": {"family": "inet", "table": "weft", "chain": NFT_CHAIN,
                                      "expr": [{"accept": null}]}}),
        );
        assert_eq!(parse_table(&listing), None);

        let mut listing = as_listing(&replace_batch(&spec()));
        let objects = listing["nftables"].as_array_mut().expect("array");
        objects.retain(|o| o.get("counter").is_none());
        assert_eq!(parse_table(&listing), None, "counter missing");

        let mut listing = as_listing(&replace_batch(&spec()));
        let objects = listing["nftables"].as_array_mut().expect("array");
        let at = objects
            .iter()
            .position(|o| {
                o["rule"]["comment"]
                    .as_str()
                    .is_some_and(|c| c.contains("allow-oif"))
            })
            .expect("the allow-oif rule");
        let rule = objects.remove(at); // moved behind the drops
        objects.push(rule);
        assert_eq!(parse_table(&listing), None, "wrong order");

        // The NAT chain emptied by hand (`nft flush chain inet weft masquerading`).
        let mut listing = as_listing(&replace_batch(&spec()));
        let objects = listing["nftables"].as_array_mut().expect("array");
        objects.retain(|o| o["rule"]["chain"] != NAT_CHAIN);
        assert_eq!(parse_table(&listing), None, "NAT chain without its rules");

        // A NAT chain at another hook, or a chain weft does not write.
        for (name, hook, kind) in [
            (NAT_CHAIN, "prerouting", "nat"),
            (NAT_CHAIN, "postrouting", "filter"),
            ("other", "postrouting", "nat"),
        ] {
            let mut listing = as_listing(&replace_batch(&spec()));
            let objects = listing["nftables"].as_array_mut().expect("array");
            for o in objects.iter_mut() {
                if o["chain"]["name"] == NAT_CHAIN {
                    o["chain"]["name"] = json!(name);
                    o["chain"]["hook"] = json!(hook);
                    o["chain"]["type"] = json!(kind);
                }
            }
            assert_eq!(parse_table(&listing), None, "{name} {hook} {kind}");
        }
    }

    #[test]
    fn masquerade_rule_takes_pods_leaving_the_cluster_range_only() {
        let batch = replace_batch(&spec());
        let chain = batch["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .find_map(|c| c["add"].get("chain").filter(|c| c["name"] == NAT_CHAIN))
            .cloned()
            .expect("a NAT chain");
        assert_eq!(
            (&chain["type"], &chain["hook"], &chain["prio"]),
            (&json!("nat"), &json!("postrouting"), &json!(100))
        );
        let rules = chain_rules(&batch, NAT_CHAIN);
        let comments: Vec<&str> = rules.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            comments,
            ["weft masquerade 10.32.0.0/12", "weft masquerade fd32::/48"]
        );
        // From the IPv4 range, to neither a cluster range of its family nor multicast, out of
        // neither WireGuard, the bridge nor loopback.
        assert_eq!(
            rules[0].1,
            json!([
                {"match": {"op": "==",
                    "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "10.32.0.0", "len": 12}}}},
                {"match": {"op": "!=",
                    "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                    "right": {"set": [
                        {"prefix": {"addr": "10.32.0.0", "len": 12}},
                        {"prefix": {"addr": "224.0.0.0", "len": 4}}
                    ]}}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}},
                    "right": {"set": ["weft-wg", "weft", "lo"]}}},
                {"masquerade": null}
            ])
        );
        let v6 = &rules[1].1;
        assert_eq!(
            v6[0]["match"]["left"],
            json!({"payload": {"protocol": "ip6", "field": "saddr"}})
        );
        assert_eq!(
            v6[1]["match"]["right"],
            json!({"set": [
                {"prefix": {"addr": "fd32::", "len": 48}},
                {"prefix": {"addr": "ff00::", "len": 8}}
            ]})
        );
        // The fail-closed chain is the same with or without masquerading.
        assert_eq!(
            chain_rules(&batch, NFT_CHAIN),
            chain_rules(&replace_batch(&spec().with_masquerade(false)), NFT_CHAIN)
        );
    }

    #[test]
    fn without_masquerading_there_is_no_nat_chain_and_it_parses_back() {
        let off = spec().with_masquerade(false);
        let batch = replace_batch(&off);
        assert!(!batch.to_string().contains(NAT_CHAIN), "{batch}");
        assert!(!batch.to_string().contains("masquerade"), "{batch}");
        assert_eq!(parse_table(&as_listing(&batch)), Some(off.clone()));
        // The NAT chain deleted by hand reads as masquerading off: drift names it.
        let mut listing = as_listing(&replace_batch(&spec()));
        let objects = listing["nftables"].as_array_mut().expect("array");
        objects.retain(|o| o["chain"]["name"] != NAT_CHAIN && o["rule"]["chain"] != NAT_CHAIN);
        assert_eq!(parse_table(&listing), Some(off));
    }

    #[test]
    fn a_missing_table_is_told_from_other_nft_errors() {
        // nft 1.0.6, `nft -j list table inet weft` without such a table.
        assert!(is_missing_table(
            "Error: No such file or directory\nlist table inet weft\n                 ^^^^"
        ));
        assert!(is_missing_table(
            "Error: No such file or directory; did you mean table \u{2018}weft\u{2019} in family ip?"
        ));
        assert!(!is_missing_table(
            "Error: Could not process rule: Operation not permitted"
        ));
        assert!(!is_missing_table(""));
    }

    proptest::proptest! {
        /// Any spec weft writes reads back as itself, with or without masquerading, and one
        /// rule of it lost reads as something else.
        #[test]
        fn any_spec_parses_back(
            ranges in proptest::collection::btree_set((0u8..=255, 8u8..=16), 1..4),
            locals in proptest::collection::btree_set(0u8..=255, 0..4),
            masquerade: bool,
            drop in 0usize..16,
        ) {
            let spec = FirewallSpec {
                cluster_ranges: ranges
                    .iter()
                    .map(|(a, len)| IpNet::new(Ipv4Addr::new(10, *a, 0, 0).into(), *len)
                        .expect("prefix").trunc())
                    .collect(),
                local_space: locals
                    .iter()
                    .map(|b| IpNet::new(Ipv4Addr::new(10, 32, *b, 0).into(), 24).expect("prefix"))
                    .collect(),
                wg_ifname: "weft-wg".into(),
                bridge: "weft".into(),
                masquerade,
            };
            let listing = as_listing(&replace_batch(&spec));
            proptest::prop_assert_eq!(parse_table(&listing), Some(spec.clone()));
            let mut cut = listing.clone();
            let objects = cut["nftables"].as_array_mut().expect("array");
            let rules: Vec<usize> = (0..objects.len()).filter(|i| objects[*i].get("rule").is_some()).collect();
            let gone = rules[drop % rules.len()];
            objects.remove(gone);
            proptest::prop_assert_ne!(parse_table(&cut), Some(spec));
        }
    }

    #[test]
    fn counter_parses_large_values() {
        let listing = json!({"nftables": [{"metainfo": {}}, {"counter": {
            "family": "inet", "table": "weft", "name": DROP_COUNTER,
            "packets": 5_000_000_000u64, "bytes": 1u64 << 40
        }}]});
        assert_eq!(
            parse_counter(&listing),
            Some(CounterValue {
                packets: 5_000_000_000,
                bytes: 1 << 40
            })
        );
    }
}
