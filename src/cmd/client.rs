//! The client of the daemon's API socket, shared by every command that asks the daemon: one
//! request, one answer line, within a time limit, with an error that says what went wrong
//! (not running, not allowed, timed out, refused).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::time::TimeVal;

use crate::cli::ApiArgs;
use crate::daemon::api::{Request, Response, MAX_REQUEST_LEN};

/// Longest response read: a big cluster's peer list, with room to spare.
const MAX_RESPONSE_LEN: u64 = 64 << 20;
/// How long a command waits for the daemon unless `--timeout` says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for `weft reset`, which hands the address space over and leaves first.
pub(crate) const RESET_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the daemon is and how long to wait for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Daemon<'a> {
    pub socket: &'a Path,
    pub timeout: Duration,
}

impl<'a> Daemon<'a> {
    /// From the command's options; `default` when `--timeout` is not given.
    pub fn new(args: &'a ApiArgs, default: Duration) -> Self {
        Daemon {
            socket: &args.api_socket,
            timeout: args.timeout.unwrap_or(default),
        }
    }

    /// Send one request and return the answer; an error answer becomes an error.
    pub fn ask(&self, request: Request) -> anyhow::Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let stream = self.connect().map_err(|e| self.error(e, "connecting"))?;
        let mut line = serde_json::to_vec(&request)?;
        debug_assert!(
            line.len() < MAX_REQUEST_LEN
                || (line.starts_with(crate::daemon::policy::APPLY_PREFIX)
                    && line.len() < crate::daemon::policy::MAX_APPLY_REQUEST_LEN)
        );
        line.push(b'\n');
        self.limit(&stream, deadline)?;
        (&stream)
            .write_all(&line)
            .map_err(|e| self.error(e, "sending the request"))?;
        self.limit(&stream, deadline)?;
        let mut reader = BufReader::new((&stream).take(MAX_RESPONSE_LEN));
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .map_err(|e| self.error(e, "reading the daemon's answer"))?;
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

    /// True when a daemon listens on the socket. A missing socket or a refused connection (a
    /// stale file) means none; anything else (busy, not allowed) is left for `ask` to report.
    pub fn running(&self) -> bool {
        match self.connect() {
            Ok(_) => true,
            Err(e) => !not_running(&e),
        }
    }

    /// Connect within the time limit: a blocking connect to a unix socket whose backlog is
    /// full waits up to the send timeout, then fails with EAGAIN.
    fn connect(&self) -> std::io::Result<UnixStream> {
        let connect = || -> nix::Result<UnixStream> {
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(self.timeout))?;
            let addr = UnixAddr::new(self.socket)?;
            socket::connect(fd.as_raw_fd(), &addr)?;
            Ok(UnixStream::from(fd))
        };
        connect().map_err(std::io::Error::from)
    }

    /// Give the next read or write what is left of the time limit.
    fn limit(&self, stream: &UnixStream, deadline: Instant) -> anyhow::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(self.timed_out());
        }
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(|e| self.error(e, "setting the socket's timeouts"))
    }

    /// What went wrong, in words: not running, not allowed, timed out, or the error itself.
    fn error(&self, e: std::io::Error, doing: &str) -> anyhow::Error {
        let path = self.socket.display();
        if not_running(&e) {
            return anyhow::anyhow!(
                "the weft daemon is not running (nothing listening at {path}); start it with `weft launch`"
            );
        }
        match e.kind() {
            ErrorKind::PermissionDenied => anyhow::anyhow!(
                "permission denied on the weft daemon's socket {path} (it is private to the daemon's user: run as root)"
            ),
            // SO_RCVTIMEO/SO_SNDTIMEO expiry is EAGAIN.
            ErrorKind::WouldBlock | ErrorKind::TimedOut => anyhow::anyhow!(self.timed_out()),
            _ => anyhow::Error::new(e).context(format!("{doing} (weft daemon at {path})")),
        }
    }

    fn timed_out(&self) -> String {
        format!(
            "timed out after {} waiting for the weft daemon at {}",
            seconds(self.timeout),
            self.socket.display()
        )
    }
}

fn not_running(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
}

fn timeval(d: Duration) -> TimeVal {
    // A zero timeout means "wait forever" to the kernel: use the smallest real one.
    let d = d.max(Duration::from_millis(1));
    TimeVal::new(
        d.as_secs().try_into().unwrap_or(i64::MAX),
        d.subsec_micros().into(),
    )
}

/// `10 s`, `1.5 s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn daemon(socket: &Path, timeout: Duration) -> Daemon<'_> {
        Daemon { socket, timeout }
    }

    #[test]
    fn a_daemon_that_never_answers_is_a_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weft.sock");
        // Accepts (the kernel does, into the backlog) but never answers.
        let _listener = UnixListener::bind(&path).expect("bind");
        let start = Instant::now();
        let err = daemon(&path, Duration::from_millis(300))
            .ask(Request::Status)
            .expect_err("no answer");
        let text = format!("{err:#}");
        assert_eq!(
            text,
            format!(
                "timed out after 0.3 s waiting for the weft daemon at {}",
                path.display()
            )
        );
        assert!(start.elapsed() < Duration::from_secs(5), "waited too long");
    }

    #[test]
    fn a_daemon_that_accepts_nothing_more_is_a_timeout_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weft.sock");
        // A listener whose backlog holds one connection, which is taken: a blocking connect
        // would wait for room forever.
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        let addr = UnixAddr::new(&path).expect("addr");
        socket::bind(fd.as_raw_fd(), &addr).expect("bind");
        socket::listen(&fd, socket::Backlog::new(0).expect("backlog")).expect("listen");
        let _queued = UnixStream::connect(&path).expect("the first connection fits");
        let d = daemon(&path, Duration::from_millis(300));
        let text = format!("{:#}", d.ask(Request::Status).expect_err("no room"));
        assert!(text.starts_with("timed out after 0.3 s waiting"), "{text}");
        assert!(d.running(), "a full daemon is still a running one");
    }

    #[test]
    fn permission_denied_says_so() {
        let path = Path::new("/run/weft/weft.sock");
        let denied = std::io::Error::from(ErrorKind::PermissionDenied);
        let text = format!(
            "{:#}",
            daemon(path, DEFAULT_TIMEOUT).error(denied, "connecting")
        );
        assert!(
            text.starts_with("permission denied on the weft daemon's socket /run/weft/weft.sock"),
            "{text}"
        );
    }

    #[test]
    fn no_daemon_and_a_stale_socket_are_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.sock");
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).expect("bind"));
        for path in [&missing, &stale] {
            let d = daemon(path, DEFAULT_TIMEOUT);
            assert!(!d.running());
            let text = format!("{:#}", d.ask(Request::Status).expect_err("nothing there"));
            assert!(text.starts_with("the weft daemon is not running"), "{text}");
        }
    }

    #[test]
    fn an_error_answer_is_an_error_and_a_closed_connection_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weft.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            for answer in [&b"{\"ok\":false,\"error\":\"nope\"}\n"[..], b""] {
                let (stream, _) = listener.accept().expect("accept");
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).expect("read");
                (&stream).write_all(answer).expect("write");
            }
        });
        let d = daemon(&path, DEFAULT_TIMEOUT);
        let text = format!("{:#}", d.ask(Request::Status).expect_err("error answer"));
        assert_eq!(text, "the daemon refused the request: nope");
        let text = format!("{:#}", d.ask(Request::Status).expect_err("no answer"));
        assert!(
            text.contains("closed the connection without answering"),
            "{text}"
        );
        server.join().expect("server");
    }

    #[test]
    fn seconds_read_naturally() {
        assert_eq!(seconds(Duration::from_secs(10)), "10 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }
}
