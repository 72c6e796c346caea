//! What the `launch_*` integration tests share: a node's files, a cluster secret, and
//! `weft launch` in a test host.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use weft_testbed::{Host, Proc};

pub const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// One node's files: state directory, API socket path and WireGuard configuration socket
/// path (not the machine's /var/run/wireguard, which all test hosts share), in a temporary
/// directory.
pub struct NodeFiles {
    _dir: TempDir,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub wg_socket: PathBuf,
}

impl NodeFiles {
    pub fn new() -> NodeFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        NodeFiles {
            state: dir.path().join("state"),
            socket: dir.path().join("run/weft.sock"),
            wg_socket: dir.path().join("wireguard/weft-wg.sock"),
            _dir: dir,
        }
    }

    pub fn socket_str(&self) -> &str {
        self.socket.to_str().expect("utf-8 path")
    }
}

/// A new cluster secret in `dir/name`, made by `weft secret new` (mode 0600).
pub fn write_secret(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new(BIN)
        .args(["secret", "new", "--out"])
        .arg(&path)
        .output()
        .expect("run weft secret new");
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&path)
        .expect("secret")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    path
}

/// `weft launch` of node `name` on `host`, gossiping on port 6783, joining through `seeds`,
/// with `extra` options (verbosity, datapath, metrics, range ...).
pub fn launch(
    host: &Host,
    name: &str,
    secret: &Path,
    files: &NodeFiles,
    seeds: &[&Host],
    extra: &[&str],
) -> Proc {
    let seeds: Vec<String> = seeds
        .iter()
        .map(|h| format!("{}:6783", h.public_ip()))
        .collect();
    let mut args = vec![
        BIN,
        "launch",
        "--name",
        name,
        "--listen",
        "0.0.0.0:6783",
        "--secret-file",
        secret.to_str().expect("utf-8 path"),
        "--state-dir",
        files.state.to_str().expect("utf-8 path"),
        "--api-socket",
        files.socket_str(),
        "--wg-socket",
        files.wg_socket.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    args.extend(seeds.iter().map(String::as_str));
    host.spawn(&args).expect("spawn weft launch")
}
