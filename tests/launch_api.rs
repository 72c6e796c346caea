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
