//! `weft status`: this node's state, asked of the running daemon over its API socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::daemon::api::{Request, Response, Status, MAX_REQUEST_LEN};
use crate::output::{self, OutputFormat, Report};

/// Longest response read: a big cluster's peer list, with room to spare.
const MAX_RESPONSE_LEN: u64 = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Send one request to the daemon at `socket` and return its answer; an error response
/// becomes an error.
pub(super) fn ask(socket: &Path, request: Request) -> anyhow::Result<Response> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        use std::io::ErrorKind::{ConnectionRefused, NotFound};
        match e.kind() {
            NotFound | ConnectionRefused => anyhow::anyhow!(
                "the weft daemon is not running (nothing listening at {}); start it with `weft launch`",
                socket.display()
            ),
            _ => anyhow::Error::new(e).context(format!("connecting to {}", socket.display())),
        }
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_vec(&request)?;
    debug_assert!(line.len() < MAX_REQUEST_LEN);
    line.push(b'\n');
    (&stream).write_all(&line).context("sending the request")?;
    let mut reader = BufReader::new((&stream).take(MAX_RESPONSE_LEN));
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    let response: Response =
        serde_json::from_str(&answer).context("the daemon's answer is not valid")?;
    if let Response::Error { error, .. } = response {
        bail!("the daemon refused the request: {error}");
    }
    Ok(response)
}

impl Report for Status {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let m = &self.members;
        let space = if self.address_space.is_empty() {
            "none yet".to_string()
        } else {
            self.address_space.join(", ")
        };
        vec![
            ("name", self.name.clone()),
            ("node id", self.node_id.clone()),
            ("ready", if self.ready { "yes" } else { "no" }.to_string()),
            ("listen", self.listen.to_string()),
            ("gossip address", self.gossip_addr.to_string()),
            ("record version", self.version.to_string()),
            (
                "members",
                format!(
                    "{} total: {} alive, {} suspect, {} failed, {} stopped, {} left",
                    m.total, m.alive, m.suspect, m.failed, m.stopped, m.left
                ),
            ),
            (
                "peers",
                format!("{} up of {}", self.peers_up, self.peers_total),
            ),
            ("datapath", self.datapath.clone()),
            ("cluster range", self.range.clone()),
            ("address space", space),
            (
                "addresses",
                format!("{} used, {} free", self.addresses_used, self.addresses_free),
            ),
            (
                "gossip",
                format!(
                    "{} sent, {} received, {} send failures, {} refused",
                    self.gossip.sent,
                    self.gossip.received,
                    self.gossip.send_failures,
                    self.gossip.refused
                ),
            ),
            (
                "fail-closed",
                format!("{} packets dropped", self.fail_closed_drops),
            ),
            ("uptime", format!("{}s", self.uptime_secs)),
        ]
    }
}

pub fn show(socket: &Path, format: OutputFormat) -> anyhow::Result<()> {
    match ask(socket, Request::Status)? {
        Response::Status { status, .. } => output::print(format, &status),
        _ => bail!("the daemon answered a status request with something else"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::{GossipCounters, MemberCounts};

    fn sample() -> Status {
        Status {
            name: "n0".into(),
            node_id: "AAAA".into(),
            listen: "0.0.0.0:6783".parse().expect("addr"),
            gossip_addr: "192.0.2.1:6783".parse().expect("addr"),
            version: 3,
            range: "10.32.0.0/12".into(),
            members: MemberCounts {
                alive: 3,
                suspect: 1,
                failed: 0,
                left: 1,
                stopped: 2,
                total: 7,
            },
            datapath: "userspace".into(),
            uptime_secs: 42,
            ready: true,
            peers_up: 2,
            peers_total: 3,
            address_space: vec!["10.32.0.0/14".into(), "10.40.0.0/13".into()],
            addresses_used: 5,
            addresses_free: 1019,
            fail_closed_drops: 0,
            gossip: GossipCounters {
                sent: 10,
                received: 9,
                send_failures: 1,
                refused: 0,
            },
        }
    }

    #[test]
    fn status_text_names_peers_datapath_and_space() {
        let mut out = Vec::new();
        crate::output::write(&mut out, OutputFormat::Text, &sample()).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "ready:          yes",
            "members:        7 total: 3 alive, 1 suspect, 0 failed, 2 stopped, 1 left",
            "peers:          2 up of 3",
            "datapath:       userspace",
            "address space:  10.32.0.0/14, 10.40.0.0/13",
            "addresses:      5 used, 1019 free",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let mut empty = sample();
        empty.address_space.clear();
        assert!(empty
            .fields()
            .contains(&("address space", "none yet".to_string())));
    }
}
