//! `weft ipam`: the cluster's address space as this node sees it (who owns which pieces, how
//! full they are, what is unreachable, conflicts), from the running daemon.
//!
//! The daemon answers with the IPAM core's report as JSON; `-o json` prints it unchanged.
//! The text form reads it through the mirror types below, which take only what they show,
//! so a report with more fields still prints.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::client::Daemon;
use crate::daemon::api::{Peer, Request, Response};
use crate::output::{self, OutputFormat};

pub fn show(daemon: Daemon, format: OutputFormat) -> anyhow::Result<()> {
    let report = match daemon.ask(Request::Ipam)? {
        Response::Ipam { ipam, .. } => ipam,
        _ => bail!("the daemon answered an ipam request with something else"),
    };
    if format == OutputFormat::Json {
        return output::print_json(&report);
    }
    let report: Report =
        serde_json::from_value(report).context("the daemon's IPAM report is not valid")?;
    // The daemon names every node it knows in the report; an older one does not, and then
    // its peers list does. Without either, short node ids still identify the nodes.
    let names = if report.names.is_empty() {
        match daemon.ask(Request::Peers) {
            Ok(Response::Peers { peers, .. }) => Names::new(&peers),
            _ => Names::from_report(&report),
        }
    } else {
        Names::from_report(&report)
    };
    let mut out = std::io::stdout().lock();
    write_report(&mut out, &report, &names)?;
    out.flush()?;
    Ok(())
}

/// What the text form uses of the IPAM report (`weft_gossip::ipam::IpamReport`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Report {
    node: String,
    status: String,
    range: Option<String>,
    genesis: Option<Genesis>,
    pieces: Vec<Piece>,
    nodes: Vec<NodeRow>,
    unreachable_free: u64,
    unclaimed: u64,
    forgotten: Vec<String>,
    conflicts: Vec<Conflict>,
    clashes: Vec<Clash>,
    waiting_for: Option<String>,
    /// Node id to name, for every node the daemon knows (added by the daemon beside the
    /// IPAM core's report).
    names: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Genesis {
    id: String,
    creator: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Piece {
    first: String,
    last: String,
    size: u64,
    owner: String,
    used: Option<u64>,
    reachable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeRow {
    node: String,
    status: String,
    owned: u64,
    used: u64,
    reachable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Conflict {
    ours: Side,
    theirs: Side,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Side {
    genesis: String,
    creator: String,
    range: String,
    nodes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Clash {
    first: String,
    last: String,
    owners: Vec<String>,
}

/// Node ids (base64) to `name (short id)`.
struct Names(HashMap<String, String>);

impl Names {
    /// From the names in the report.
    fn from_report(report: &Report) -> Names {
        Names(
            report
                .names
                .iter()
                .map(|(id, name)| (id.clone(), format!("{name} ({})", short(id))))
                .collect(),
        )
    }

    /// From the peers list.
    fn new(peers: &[Peer]) -> Names {
        Names(
            peers
                .iter()
                .map(|p| {
                    (
                        p.node_id.clone(),
                        format!("{} ({})", p.name, p.node_id_short),
                    )
                })
                .collect(),
        )
    }

    fn of(&self, node: &str) -> String {
        match self.0.get(node) {
            Some(label) => label.clone(),
            None => short(node),
        }
    }
}

/// A node id's short form (as `NodeId::short`).
fn short(node: &str) -> String {
    node.chars().take(8).collect()
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "NO" }.to_string()
}

fn write_report(out: &mut impl Write, r: &Report, names: &Names) -> std::io::Result<()> {
    let range = r.range.as_deref().unwrap_or("none");
    match &r.genesis {
        Some(g) => writeln!(
            out,
            "cluster range {range}, started by {} (genesis {})",
            names.of(&g.creator),
            g.id.chars().take(12).collect::<String>()
        )?,
        None => writeln!(
            out,
            "cluster range {range}: no address space known yet (no genesis)"
        )?,
    }
    writeln!(out, "this node: {}, {}", names.of(&r.node), r.status)?;
    if let Some(w) = &r.waiting_for {
        writeln!(out, "waiting for address space from {}", names.of(w))?;
    }

    if !r.pieces.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = r
            .pieces
            .iter()
            .map(|p| {
                vec![
                    format!("{}-{}", p.first, p.last),
                    names.of(&p.owner),
                    p.size.to_string(),
                    p.used.map_or_else(|| "-".into(), |u| u.to_string()),
                    yes_no(p.reachable),
                ]
            })
            .collect();
        output::write_table(out, &["PIECE", "OWNER", "SIZE", "USED", "REACHABLE"], &rows)?;
    }

    if !r.nodes.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = r
            .nodes
            .iter()
            .map(|n| {
                let pct = if n.owned == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}%", n.used as f64 * 100.0 / n.owned as f64)
                };
                vec![
                    names.of(&n.node),
                    n.status.clone(),
                    n.owned.to_string(),
                    n.used.to_string(),
                    n.owned.saturating_sub(n.used).to_string(),
                    pct,
                    yes_no(n.reachable),
                ]
            })
            .collect();
        output::write_table(
            out,
            &[
                "NODE",
                "STATUS",
                "OWNED",
                "USED",
                "FREE",
                "FULL",
                "REACHABLE",
            ],
            &rows,
        )?;
    }

    writeln!(out)?;
    writeln!(
        out,
        "free addresses on unreachable nodes: {}",
        r.unreachable_free
    )?;
    if r.unclaimed > 0 {
        writeln!(out, "addresses no known node claims: {}", r.unclaimed)?;
    }
    if !r.forgotten.is_empty() {
        let list: Vec<String> = r.forgotten.iter().map(|n| names.of(n)).collect();
        writeln!(out, "forgotten nodes: {}", list.join(", "))?;
    }
    for c in &r.conflicts {
        let side = |s: &Side| {
            let nodes: Vec<String> = s.nodes.iter().map(|n| names.of(n)).collect();
            format!(
                "{} started by {} (genesis {}; nodes {})",
                s.range,
                names.of(&s.creator),
                s.genesis.chars().take(12).collect::<String>(),
                if nodes.is_empty() {
                    "unknown".into()
                } else {
                    nodes.join(", ")
                }
            )
        };
        writeln!(
            out,
            "CONFLICT: refused to merge two address spaces started apart: ours {} and theirs {}. \
             They could hand out the same addresses; reset the nodes of one side and join them again.",
            side(&c.ours),
            side(&c.theirs)
        )?;
    }
    for c in &r.clashes {
        let owners: Vec<String> = c.owners.iter().map(|n| names.of(n)).collect();
        writeln!(
            out,
            "CLASH: {}-{} is claimed by {} at the same version",
            c.first,
            c.last,
            owners.join(" and ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::PeerState;

    const A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
    const C: &str = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC=";

    fn peer(name: &str, id: &str) -> Peer {
        Peer {
            name: name.into(),
            node_id: id.into(),
            node_id_short: id[..8].into(),
            is_self: false,
            endpoint: "192.0.2.1:6783".parse().expect("addr"),
            wireguard_endpoints: Vec::new(),
            wireguard_public_key: "k".into(),
            state: PeerState::Alive,
            incarnation: 1,
            version: 1,
            last_seen_secs: None,
            link: None,
        }
    }

    /// A report as the IPAM core serializes it (field names of `IpamReport`).
    fn report() -> serde_json::Value {
        serde_json::json!({
            "node": A,
            "status": "active",
            "range": "10.32.0.0/12",
            "genesis": {"id": "00112233445566778899aabbccddeeff", "creator": A},
            "pieces": [
                {"first": "10.32.0.0", "last": "10.39.255.255", "cidrs": ["10.32.0.0/13"],
                 "size": 524288, "owner": A, "version": 2, "used": 5, "reachable": true},
                {"first": "10.40.0.0", "last": "10.47.255.255", "cidrs": ["10.40.0.0/13"],
                 "size": 524288, "owner": C, "version": 1, "used": null, "reachable": false}
            ],
            "nodes": [
                {"node": A, "status": "active", "owned": 524288, "used": 5, "reachable": true},
                {"node": C, "status": "active", "owned": 524288, "used": 0, "reachable": false}
            ],
            "unreachable_free": 524288,
            "unclaimed": 0,
            "forgotten": [],
            "conflicts": [{
                "ours": {"genesis": "0011223344556677", "creator": A, "range": "10.32.0.0/12", "nodes": [A]},
                "theirs": {"genesis": "8899aabbccddeeff", "creator": B, "range": "10.32.0.0/12", "nodes": [B]}
            }],
            "clashes": [],
            "waiting_for": null
        })
    }

    fn render(value: serde_json::Value, peers: &[Peer]) -> String {
        let report: Report = serde_json::from_value(value).expect("report parses");
        let mut out = Vec::new();
        write_report(&mut out, &report, &Names::new(peers)).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn pieces_nodes_unreachable_space_and_conflicts_are_shown() {
        let text = render(report(), &[peer("n0", A), peer("n1", B)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("10.32.0.0/12") && lines[0].contains("n0 (AAAAAAAA)"),
            "{text}"
        );
        let piece = |needle: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no line starting {needle:?}\n{text}"))
                .to_string()
        };
        let mine = piece("10.32.0.0-10.39.255.255");
        assert!(
            mine.contains("n0 (AAAAAAAA)") && mine.contains("524288"),
            "{text}"
        );
        assert!(mine.ends_with("yes"), "{text}");
        // An owner without a name shows its short id; unknown use is "-".
        let theirs = piece("10.40.0.0-10.47.255.255");
        assert!(
            theirs.contains("CCCCCCCC") && theirs.contains(" - ") && theirs.ends_with("NO"),
            "{text}"
        );
        // Columns line up under their headers.
        let header = piece("PIECE");
        assert_eq!(header.find("OWNER"), mine.find("n0 ("), "{text}");
        assert_eq!(header.find("SIZE"), theirs.find("524288"), "{text}");
        // Per node totals with free space.
        let node = piece("n0 (AAAAAAAA)  active");
        assert!(node.contains("524283"), "free = owned - used: {text}");
        assert!(
            text.contains("free addresses on unreachable nodes: 524288"),
            "{text}"
        );
        let conflict = piece("CONFLICT:");
        assert!(
            conflict.contains("n0 (AAAAAAAA)") && conflict.contains("n1 (BBBBBBBB)"),
            "conflict does not name both sides: {text}"
        );
    }

    #[test]
    fn owners_are_named_from_the_names_in_the_report() {
        let mut value = report();
        value["names"] = serde_json::json!({A: "n0", C: "n2"});
        let parsed: Report = serde_json::from_value(value).expect("report parses");
        let mut out = Vec::new();
        write_report(&mut out, &parsed, &Names::from_report(&parsed)).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line starting {start:?}\n{text}"))
                .to_string()
        };
        assert!(
            line("10.40.0.0-10.47.255.255").contains("n2 (CCCCCCCC)"),
            "{text}"
        );
        assert!(line("n2 (CCCCCCCC)").contains("active"), "{text}");
        assert!(line("this node:").contains("n0 (AAAAAAAA)"), "{text}");
        // A node the daemon has no name for: its short id.
        assert!(line("CONFLICT:").contains("started by BBBBBBBB"), "{text}");
    }

    #[test]
    fn a_report_before_genesis_and_with_extra_fields_still_prints() {
        let text = render(
            serde_json::json!({"node": A, "status": "active", "range": null, "genesis": null,
                               "pieces": [], "nodes": [], "unreachable_free": 0, "unclaimed": 0,
                               "forgotten": [], "conflicts": [], "clashes": [],
                               "waiting_for": B, "something_new": 1}),
            &[],
        );
        assert!(text.contains("no address space known yet"), "{text}");
        assert!(
            text.contains("waiting for address space from BBBBBBBB"),
            "{text}"
        );
        assert!(!text.contains("PIECE"), "{text}");
    }
}
