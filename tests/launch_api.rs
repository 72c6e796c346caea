//! `weft launch` on loopback (no root needed): config refusals, the local API socket and its
//! protocol, two daemons joining, `weft status`/`weft peers` against a missing daemon.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn weft() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("WEFT_SECRET_FILE")
        .env_remove("WEFT_STATE_DIR")
        .env_remove("WEFT_API_SOCKET")
        .env_remove("RUST_LOG");
    cmd
}

fn run(args: &[&str]) -> Output {
    weft().args(args).output().expect("run weft")
}

/// A daemon killed (SIGKILL) and reaped on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn secret(dir: &Path) -> PathBuf {
    let path = dir.join("secret");
    let out = run(&["secret", "new", "--out", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{out:?}");
    path
}

fn start(dir: &Path, name: &str, secret: &Path, seeds: &[String]) -> (Daemon, PathBuf) {
    let socket = dir.join(name).join("weft.sock");
    let state = dir.join(name).join("state");
    let child = weft()
        .args(["launch", "--name", name, "--listen", "127.0.0.1:0"])
        // No WireGuard device or firewall in the root namespace, no fixed metrics port.
        .args(["--datapath", "off", "--metrics-addr", "off"])
        .arg("--secret-file")
        .arg(secret)
        .arg("--state-dir")
        .arg(&state)
        .arg("--api-socket")
        .arg(&socket)
        .args(seeds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weft launch");
    (Daemon(child), socket)
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn json(args: &[&str]) -> Option<Value> {
    let out = run(args);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("-o json is JSON"))
}

#[test]
fn status_and_peers_fail_clearly_without_a_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("missing.sock");
    for cmd in ["status", "peers"] {
        let out = run(&[cmd, "--api-socket", socket.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not running"), "{stderr}");
    }
}

#[test]
fn launch_refuses_bad_config_and_missing_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("weft.toml");
    std::fs::write(&config, "name = \"a\"\nlisen = \"0.0.0.0:1\"\n").expect("write");
    let out = run(&["launch", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lisen") && stderr.contains("weft.toml"),
        "{stderr}"
    );

    let out = run(&["launch", "--name", "a"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--secret-file"),
        "{out:?}"
    );
}

#[test]
fn two_daemons_join_and_the_api_refuses_bad_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret(dir.path());
    // The first node comes from a config file; a flag overrides its name.
    let config = dir.path().join("a.toml");
    let a_sock = dir.path().join("a/weft.sock");
    std::fs::write(
        &config,
        format!(
            "name = \"from-file\"\nlisten = \"127.0.0.1:0\"\ndatapath = \"off\"\nmetrics_addr = \"off\"\nsecret_file = {:?}\nstate_dir = {:?}\napi_socket = {:?}\n",
            secret,
            dir.path().join("a/state"),
            a_sock
        ),
    )
    .expect("write config");
    let a = Daemon(
        weft()
            .args(["launch", "--name", "a", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a"),
    );
    let a_sock_str = a_sock.to_str().expect("utf-8");
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = json(&["status", "-o", "json", "--api-socket", a_sock_str]);
            status.is_some()
        }),
        "a never answered"
    );
    let status = status.expect("status");
    assert_eq!(status["name"], "a");
    let a_addr = status["gossip_addr"].as_str().expect("addr").to_owned();

    let (_b, b_sock) = start(dir.path(), "b", &secret, &[a_addr]);
    let b_sock_str = b_sock.to_str().expect("utf-8");
    let both = |sock: &str| {
        json(&["peers", "-o", "json", "--api-socket", sock]).is_some_and(|v| {
            let list = v.as_array().expect("list").clone();
            list.len() == 2 && list.iter().all(|p| p["state"] == "alive")
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || both(a_sock_str)
            && both(b_sock_str)),
        "a and b did not see each other alive"
    );
    let text = run(&["peers", "--api-socket", a_sock_str]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("a (self)") && text.contains("\nb "), "{text}");

    // Raw protocol: a good request, then a bad one closes the connection with an error.
    let stream = UnixStream::connect(&a_sock).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    (&stream)
        .write_all(b"{\"cmd\":\"status\"}\n{\"cmd\":\"shutdown\"}\n{\"cmd\":\"status\"}\n")
        .expect("write");
    let lines: Vec<String> = BufReader::new(&stream)
        .lines()
        .map(|l| l.expect("line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let good: Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(good["ok"], true);
    assert_eq!(good["status"]["members"]["alive"], 2);
    let bad: Value = serde_json::from_str(&lines[1]).expect("json");
    assert_eq!(bad["ok"], false);
    assert!(bad["error"]
        .as_str()
        .expect("error")
        .contains("bad request"));
    // Oversized request: one error line, connection closed, daemon still answers.
    let stream = UnixStream::connect(&a_sock).expect("connect");
    (&stream).write_all(&vec![b'{'; 10_000]).expect("write");
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).expect("read");
    assert!(line.contains("longer than"), "{line}");
    assert!(json(&["status", "-o", "json", "--api-socket", a_sock_str]).is_some());
    drop(a);
}

/// Answers `weft status` (the real CLI) within `secs` seconds, or why not.
fn status_within(socket: &str, secs: &str) -> Result<Value, String> {
    let out = run(&[
        "status",
        "-o",
        "json",
        "--timeout",
        secs,
        "--api-socket",
        socket,
    ]);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("-o json is JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// True when the server closed `stream` (end of input or reset), without waiting for it.
fn closed_by_server(stream: &UnixStream) -> bool {
    use std::io::Read;
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let closed =
        !matches!((&*stream).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// A free TCP port on 127.0.0.1 (free when this returns; the daemon binds it right after).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One `GET path` on the metrics endpoint: status code and body.
fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

// Before the fix (16 connection slots held by whoever connected first, 10 s idle timeout,
// further clients left in the listen backlog), `weft status` behind 64 idle connections
// timed out, and 200 idle TCP connections kept /healthz from answering for a minute.
#[test]
fn idle_and_slow_clients_do_not_starve_status_or_healthz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret(dir.path());
    let socket = dir.path().join("a/weft.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let _daemon = Daemon(
        weft()
            .args(["launch", "--name", "a", "--listen", "127.0.0.1:0"])
            .args(["--datapath", "off", "--metrics-addr", &metrics])
            .arg("--secret-file")
            .arg(&secret)
            .arg("--state-dir")
            .arg(dir.path().join("a/state"))
            .arg("--api-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weft launch"),
    );
    let sock = socket.to_str().expect("utf-8");
    assert!(
        wait_until(Duration::from_secs(10), || status_within(sock, "5").is_ok()
            && http_get(&metrics, "/healthz", Duration::from_secs(5)).is_ok()),
        "the daemon never answered"
    );

    // The API socket: 64, then 200 clients that connect and say nothing. Each status must
    // be answered before the idle ones would time out on their own (5 s): they are closed
    // for it, oldest first.
    let mut idle = Vec::new();
    for round in [64, 200] {
        while idle.len() < round {
            idle.push(UnixStream::connect(&socket).expect("connect"));
        }
        let status = status_within(sock, "3").unwrap_or_else(|e| {
            panic!("status behind {round} idle clients: {e}");
        });
        assert_eq!(status["name"], "a");
    }
    assert!(
        closed_by_server(&idle[0]),
        "the oldest idle client was not closed"
    );
    // A client sending garbage gets an error and is closed; the daemon answers on.
    let garbage = UnixStream::connect(&socket).expect("connect");
    (&garbage).write_all(b"\x00\xffnot json\n").expect("write");
    let mut line = String::new();
    BufReader::new(&garbage).read_line(&mut line).expect("read");
    assert!(
        line.contains("\"ok\":false") && line.contains("bad request"),
        "{line}"
    );
    assert!(status_within(sock, "3").is_ok());
    // A client that starts a request and never finishes it is cut off (2 s from its first
    // byte), not waited for.
    let slow = UnixStream::connect(&socket).expect("connect");
    (&slow).write_all(b"{\"cmd\":").expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(&slow).read_line(&mut line).expect("read");
    assert!(line.contains("not complete"), "{line}");
    drop(idle);

    // The metrics endpoint: 200 idle TCP connections and a client sending one byte a
    // second (slowloris), then /healthz.
    let addr: std::net::SocketAddr = metrics.parse().expect("addr");
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    let slowloris = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let mut sent = 0;
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" {
            if s.write_all(&[*byte]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = http_get(&metrics, "/healthz", Duration::from_secs(3))
        .expect("/healthz behind 200 idle connections and a slowloris");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // Garbage gets a 400, and the endpoint serves on.
    let mut g = std::net::TcpStream::connect(addr).expect("connect");
    g.write_all(b"garbage\r\n\r\n").expect("write");
    g.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut g, &mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let (code, body) = http_get(&metrics, "/metrics", Duration::from_secs(3)).expect("/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("weft_up 1"), "{body}");
    // The slowloris was cut off long before it sent its whole request.
    let sent = slowloris.join().expect("slowloris");
    assert!(
        sent < 10,
        "a one-byte-a-second client was served for {sent} s"
    );
    drop(idle);
}

#[test]
fn status_says_when_the_daemon_does_not_answer_in_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("weft.sock");
    // Connections are accepted (by the kernel, into the backlog) but never answered.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let sock = socket.to_str().expect("utf-8");
    for cmd in ["status", "peers", "ipam"] {
        let out = run(&[cmd, "--timeout", "1", "--api-socket", sock]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end(),
            format!("weft: timed out after 1 s waiting for the weft daemon at {sock}")
        );
    }
    let out = run(&["status", "--timeout", "0", "--api-socket", sock]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a zero timeout is a usage error: {out:?}"
    );
}
