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
        vec![
            ("name", self.name.clone()),
            ("node id", self.node_id.clone()),
            ("listen", self.listen.to_string()),
            ("gossip address", self.gossip_addr.to_string()),
            ("record version", self.version.to_string()),
            ("range", self.range.clone()),
            (
                "members",
                format!(
                    "{} total: {} alive, {} suspect, {} failed, {} left",
                    m.total, m.alive, m.suspect, m.failed, m.left
                ),
            ),
            ("datapath", self.datapath.clone()),
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
