//! `weft peers`: the members this node knows, as a table (or JSON), from the running daemon.

use std::io::Write;
use std::path::Path;

use anyhow::bail;

use super::status::ask;
use crate::daemon::api::{Peer, Request, Response};
use crate::output::OutputFormat;

pub fn show(socket: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let peers = match ask(socket, Request::Peers)? {
        Response::Peers { peers, .. } => peers,
        _ => bail!("the daemon answered a peers request with something else"),
    };
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &peers)?;
            writeln!(out)?;
        }
        OutputFormat::Text => write_table(&mut out, &peers)?,
    }
    out.flush()?;
    Ok(())
}

fn write_table(out: &mut impl Write, peers: &[Peer]) -> std::io::Result<()> {
    let header = ["NAME", "NODE", "ENDPOINT", "STATE", "VERSION", "LAST SEEN"];
    let rows: Vec<[String; 6]> = peers
        .iter()
        .map(|p| {
            [
                if p.is_self {
                    format!("{} (self)", p.name)
                } else {
                    p.name.clone()
                },
                p.node_id_short.clone(),
                p.endpoint.to_string(),
                p.state.as_str().to_string(),
                p.incarnation.to_string(),
                match (p.is_self, p.last_seen_secs) {
                    (true, _) => "-".into(),
                    (false, Some(s)) => format!("{s:.1}s ago"),
                    (false, None) => "never".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &header)?;
    for row in &rows {
        line(out, &row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::PeerState;

    #[test]
    fn table_is_aligned() {
        let peer = |name: &str, state, is_self| Peer {
            name: name.into(),
            node_id: "AAAA".into(),
            node_id_short: "AAAAAAAA".into(),
            is_self,
            endpoint: "192.0.2.1:6783".parse().expect("addr"),
            wireguard_endpoints: Vec::new(),
            wireguard_public_key: "k".into(),
            state,
            incarnation: 7,
            version: 7,
            last_seen_secs: (!is_self).then_some(1.5),
            link: None,
        };
        let mut out = Vec::new();
        write_table(
            &mut out,
            &[
                peer("a", PeerState::Alive, true),
                peer("longer-name", PeerState::Failed, false),
            ],
        )
        .expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let col = |l: &str| l.find("AAAAAAAA").or_else(|| l.find("NODE"));
        assert_eq!(col(lines[0]), col(lines[1]), "{text}");
        assert_eq!(col(lines[1]), col(lines[2]), "{text}");
        assert!(
            lines[1].contains("a (self)") && lines[1].ends_with('-'),
            "{text}"
        );
        assert!(
            lines[2].contains("failed") && lines[2].ends_with("1.5s ago"),
            "{text}"
        );
    }
}
