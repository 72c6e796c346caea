//! `weft peers`: the members this node knows and the tunnel to each, as a table (or JSON),
//! from the running daemon.

use std::io::Write;

use anyhow::bail;

use super::client::Daemon;
use crate::daemon::api::{Peer, Request, Response};
use crate::output::{self, OutputFormat};

pub fn show(daemon: Daemon, format: OutputFormat) -> anyhow::Result<()> {
    let peers = match daemon.ask(Request::Peers)? {
        Response::Peers { peers, .. } => peers,
        _ => bail!("the daemon answered a peers request with something else"),
    };
    match format {
        OutputFormat::Json => output::print_json(&peers),
        OutputFormat::Text => {
            let mut out = std::io::stdout().lock();
            write_table(&mut out, &peers)?;
            out.flush()?;
            Ok(())
        }
    }
}

const HEADER: [&str; 8] = [
    "NAME",
    "NODE",
    "STATE",
    "ENDPOINT",
    "PATH",
    "HANDSHAKE",
    "RX",
    "TX",
];

/// One row: a WireGuard endpoint on every row (the one in use, else the first one the member
/// advertises, this node's own included), the path (`direct` or `via RELAY`), the age of the
/// last handshake, and bytes each way.
fn row(p: &Peer) -> Vec<String> {
    let name = if p.is_self {
        format!("{} (self)", p.name)
    } else {
        p.name.clone()
    };
    let dash = || "-".to_string();
    let advertised = || {
        p.wireguard_endpoints
            .first()
            .map_or_else(dash, ToString::to_string)
    };
    let (endpoint, path, handshake, rx, tx) = match (&p.link, p.is_self) {
        (_, true) | (None, false) => (advertised(), dash(), dash(), dash(), dash()),
        (Some(link), false) => (
            link.endpoint
                .or_else(|| p.wireguard_endpoints.first().copied())
                .map_or_else(dash, |e| e.to_string()),
            match &link.via {
                Some(relay) => format!("via {relay}"),
                None => "direct".into(),
            },
            link.last_handshake_secs
                .map_or_else(|| "never".into(), output::ago),
            output::bytes(link.rx_bytes),
            output::bytes(link.tx_bytes),
        ),
    };
    vec![
        name,
        p.node_id_short.clone(),
        p.state.as_str().to_string(),
        endpoint,
        path,
        handshake,
        rx,
        tx,
    ]
}

fn write_table(out: &mut impl Write, peers: &[Peer]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = peers.iter().map(row).collect();
    output::write_table(out, &HEADER, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::{PeerLinkInfo, PeerState};

    fn peer(name: &str, state: PeerState, is_self: bool, link: Option<PeerLinkInfo>) -> Peer {
        Peer {
            name: name.into(),
            node_id: "AAAA".into(),
            node_id_short: "AAAAAAAA".into(),
            is_self,
            endpoint: "192.0.2.1:6783".parse().expect("addr"),
            wireguard_endpoints: vec![if is_self {
                "192.0.2.9:6784".parse().expect("addr")
            } else {
                "192.0.2.1:6784".parse().expect("addr")
            }],
            wireguard_public_key: "k".into(),
            state,
            incarnation: 7,
            version: 7,
            last_seen_secs: (!is_self).then_some(1.5),
            link,
        }
    }

    fn render(peers: &[Peer]) -> String {
        let mut out = Vec::new();
        write_table(&mut out, peers).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn table_shows_path_handshake_and_traffic_aligned() {
        let direct = PeerLinkInfo {
            endpoint: Some("198.51.100.7:6784".parse().expect("addr")),
            via: None,
            last_handshake_secs: Some(12.3),
            rx_bytes: 2048,
            tx_bytes: 100,
            spaces: vec!["10.32.0.0/14".into()],
        };
        let relayed = PeerLinkInfo {
            endpoint: None,
            via: Some("longer-name".into()),
            last_handshake_secs: None,
            ..PeerLinkInfo::default()
        };
        let text = render(&[
            peer("a", PeerState::Alive, true, None),
            peer("longer-name", PeerState::Alive, false, Some(direct)),
            peer("c", PeerState::Suspect, false, Some(relayed)),
            peer("d", PeerState::Failed, false, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        let col = |l: &str, needle: &str| l.find(needle);
        // The NODE and STATE columns start at the same place on every line.
        let node = col(lines[0], "NODE");
        let state = col(lines[0], "STATE");
        for l in &lines[1..] {
            assert_eq!(col(l, "AAAAAAAA"), node, "{text}");
        }
        assert_eq!(col(lines[2], "alive"), state, "{text}");
        assert!(lines[1].starts_with("a (self)"), "{text}");
        // Its WireGuard endpoint, like every other row, not its gossip address.
        assert!(lines[1].contains("192.0.2.9:6784"), "{text}");
        assert!(!lines[1].contains(":6783"), "{text}");
        assert!(
            lines[2].contains("198.51.100.7:6784")
                && lines[2].contains("direct")
                && lines[2].contains("12s ago")
                && lines[2].contains("2.0 KiB")
                && lines[2].ends_with("100 B"),
            "{text}"
        );
        assert!(
            lines[3].contains("suspect")
                && lines[3].contains("via longer-name")
                && lines[3].contains("never"),
            "{text}"
        );
        // No tunnel yet: the advertised endpoint, no path.
        assert!(
            lines[4].contains("failed") && lines[4].contains("192.0.2.1:6784"),
            "{text}"
        );
        assert!(lines[4].ends_with('-'), "{text}");
    }
}
