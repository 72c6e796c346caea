//! What the CNI tests share: the plugin and libcni driver binaries, weft daemons in test
//! hosts, conflists, and running the plugin (directly or through libcni) in a host.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;
use weft_testbed::{wait_until, Host, Proc, TestBed};

#[path = "../launch/common.rs"]
mod launch;

pub use launch::{write_secret, NodeFiles, BIN};

/// The `weft-cni` binary beside the `weft` one. Cargo builds another package's binary only
/// for that package's tests, so it is built here (a no-op when it is up to date).
pub fn plugin_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        // Without the variables cargo sets for a test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...):
        // build scripts that watch them (ring's) would run again on every switch.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            let keep = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL"]
                .contains(&key.as_str())
                || [
                    "CARGO_BUILD_",
                    "CARGO_NET_",
                    "CARGO_REGISTR",
                    "CARGO_TERM_",
                    "CARGO_PROFILE_",
                    "CARGO_HTTP_",
                ]
                .iter()
                .any(|p| key.starts_with(p));
            if (key.starts_with("CARGO_") && !keep) || key == "OUT_DIR" {
                cargo.env_remove(&key);
            }
        }
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "weft-cni", "--bin", "weft-cni"]);
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build -p weft-cni");
        assert!(status.success(), "cargo build -p weft-cni failed");
        let bin = Path::new(BIN)
            .parent()
            .expect("the weft binary's directory")
            .join("weft-cni");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// The libcni driver (tests/cni/driver/main.go), built once per test run with Debian's Go and
/// libcni (packages golang-go and golang-github-containernetworking-cni-dev).
pub fn driver_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out_dir = Path::new(BIN)
            .parent()
            .expect("the weft binary's directory")
            .join("cni-driver");
        std::fs::create_dir_all(&out_dir).expect("driver directory");
        let bin = out_dir.join("driver");
        let out = Command::new("go")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", out_dir.join("cache"))
            .args(["build", "-o"])
            .arg(&bin)
            .arg("./tests/cni/driver")
            .output()
            .expect("run go build (apt-get install golang-go golang-github-containernetworking-cni-dev)");
        assert!(
            out.status.success(),
            "building the libcni driver failed (apt-get install golang-go golang-github-containernetworking-cni-dev):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// A CNI bin directory: the plugin as `weft` (its network type) plus the reference plugins
/// from /usr/lib/cni on CNI_PATH.
pub struct CniDir {
    dir: TempDir,
    pub cache: TempDir,
}

impl CniDir {
    pub fn new() -> CniDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(plugin_bin(), dir.path().join("weft")).expect("symlink");
        CniDir {
            dir,
            cache: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn bin_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cni_path(&self) -> String {
        format!("{}:/usr/lib/cni", self.dir.path().display())
    }

    /// Writes `list` as a conflist file in this directory.
    pub fn conflist(&self, file: &str, list: &Value) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(list).expect("json")).expect("write");
        path
    }
}

/// A conflist with the weft plugin talking to `files`' daemon.
pub fn weft_conflist(name: &str, version: &str, files: &NodeFiles, extra: Value) -> Value {
    let mut plugin = json!({
        "type": "weft",
        "apiSocket": files.socket,
        "stateDir": files.state,
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    });
    if let (Some(p), Value::Object(more)) = (plugin.as_object_mut(), extra) {
        p.extend(more);
    }
    json!({"cniVersion": version, "name": name, "plugins": [plugin]})
}

/// What a run of the plugin or the driver gave.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The CNI error code of a failed run.
    pub fn code(&self) -> u64 {
        assert!(!self.success, "expected a failure: {self:?}");
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code: {self:?}"))
    }

    pub fn ok(self) -> Outcome {
        assert!(self.success, "failed: {self:?}");
        self
    }
}

fn outcome(out: std::process::Output) -> Outcome {
    Outcome {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The libcni driver in the host namespace `host` (a CNI runtime runs there):
/// `driver OP CONFLIST ARGS...`.
pub fn driver(host: &str, cni: &CniDir, op: &str, conflist: &Path, args: &[&str]) -> Outcome {
    driver_with(host, cni, op, conflist, args, &Value::Null)
}

/// [`driver`] with the runtime's capability arguments (`portMappings`, `bandwidth`, ...).
pub fn driver_with(
    host: &str,
    cni: &CniDir,
    op: &str,
    conflist: &Path,
    args: &[&str],
    caps: &Value,
) -> Outcome {
    let caps = if caps.is_null() {
        String::new()
    } else {
        caps.to_string()
    };
    let out = Command::new("ip")
        .args(["netns", "exec", host])
        .arg(driver_bin())
        .arg(op)
        .arg(conflist)
        .args(args)
        .env("CNI_PATH", cni.cni_path())
        .env("CNI_CACHE_DIR", cni.cache.path())
        .env("CNI_CAPABILITY_ARGS", caps)
        .output()
        .expect("run the driver");
    outcome(out)
}

/// The plugin itself in `host` with exactly `vars` (and PATH) and `stdin`.
pub fn exec_plugin(host: &str, vars: &[(&str, &str)], stdin: &[u8]) -> Outcome {
    let mut child = Command::new("ip")
        .args(["netns", "exec", host])
        .arg(plugin_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    outcome(child.wait_with_output().expect("wait for the plugin"))
}

/// One request on a daemon's API socket; `None` if it does not answer.
pub fn api(files: &NodeFiles, request: &Value) -> Option<Value> {
    let mut stream = UnixStream::connect(&files.socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut line = serde_json::to_vec(request).expect("request");
    line.push(b'\n');
    stream.write_all(&line).ok()?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).ok()?;
    serde_json::from_str(&answer).ok()
}

/// The daemon's CNI attachments (`pods`).
pub fn pods(files: &NodeFiles) -> Vec<Value> {
    let answer = api(files, &json!({"cmd": "pods"})).expect("pods answered");
    answer["pods"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{answer}"))
}

/// The daemon's status.
pub fn status(files: &NodeFiles) -> Option<Value> {
    api(files, &json!({"cmd": "status"})).map(|a| a["status"].clone())
}

/// `weft launch` of node `name` in `host` with the userspace datapath (bridge, routes,
/// tunnels), range `range`, joining `seeds`.
pub fn launch(
    host: &Host,
    name: &str,
    secret: &Path,
    files: &NodeFiles,
    seeds: &[&Host],
    range: &str,
) -> Proc {
    launch_with(host, name, secret, files, seeds, range, &[])
}

/// [`launch`] with more options.
pub fn launch_with(
    host: &Host,
    name: &str,
    secret: &Path,
    files: &NodeFiles,
    seeds: &[&Host],
    range: &str,
    more: &[&str],
) -> Proc {
    let mut extra = vec![
        "-v",
        "--datapath",
        "userspace",
        "--metrics-addr",
        "off",
        "--range",
        range,
    ];
    extra.extend_from_slice(more);
    launch::launch(host, name, secret, files, seeds, &extra)
}

/// Waits until the daemon is ready (space, datapath in place); panics with its log if not.
pub fn wait_ready(files: &NodeFiles, proc: &Proc) {
    let ready = wait_until(Duration::from_secs(60), || {
        status(files).is_some_and(|s| s["ready"] == true)
    });
    assert!(
        ready,
        "the daemon is not ready: {:?}\n{}",
        status(files),
        proc.output().map(|o| o.stderr).unwrap_or_default()
    );
}

/// `ip ARGS` inside a namespace (stdout).
pub fn ip(bed: &TestBed, ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    bed.run_ok_in(ns, &full).expect("ip")
}

/// The host's veths that weft-cni or weft attach made (`vw...`).
pub fn weft_veths(bed: &TestBed, host: &str) -> Vec<String> {
    ip(bed, host, &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .filter(|n| n.starts_with("vw") || n.starts_with("vp"))
        .collect()
}

pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}
