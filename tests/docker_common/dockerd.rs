//! A dockerd of its own for a test, in a test host's network namespace, shared by
//! tests/attach.rs (`weft attach CONTAINER`) and tests/docker.rs (weft's Docker plugin).
//!
//! It runs with `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the
//! cgroup mounts), with its own data and exec roots, socket, pid file and cgroup parent, and
//! nothing that touches networking (no bridge, iptables, forwarding or masquerading). It also
//! runs in a private mount namespace (`unshare --mount`) with an empty tmpfs on /run, so that
//! nothing it makes under /run (/run/docker, its containerd's state, sandboxes' namespaces)
//! reaches the machine, and it never sees the machine's /run/docker/plugins: with
//! [`Dockerd::start_with_plugins`], the test's own directory is bind-mounted there, and the
//! weft daemon's plugin socket in it is the only plugin this dockerd finds. Images come from
//! `docker import` of a busybox root filesystem (no registry). Dropping it removes its
//! containers, stops it, and removes its cgroups.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The image every container runs: busybox-static with `sleep` and `sh`.
pub const DOCKER_IMAGE: &str = "weft-test-busybox:1";

static COUNT: AtomicUsize = AtomicUsize::new(0);

/// What the private mount namespace gets before dockerd starts: an empty /run, and the test's
/// plugin directory (`$1`, if not empty) at /run/docker/plugins.
const SETUP: &str = r#"set -e
mount -t tmpfs -o mode=0755,size=64m weft-test-run /run
if [ -n "$1" ]; then
    mkdir -p /run/docker/plugins
    mount --bind "$1" /run/docker/plugins
fi
shift
exec "$@"
"#;

#[derive(Debug)]
pub struct Dockerd {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
    cgroup_parent: String,
    names: std::cell::RefCell<Vec<String>>,
}

/// True if dockerd is installed; else the test says it is skipped (and fails under
/// `WEFT_REQUIRE_NETNS`, where CI installs it).
pub fn available(test: &str) -> bool {
    if Command::new("dockerd").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("WEFT_REQUIRE_NETNS").is_none(),
        "dockerd is not installed (.ci/run installs docker.io)"
    );
    eprintln!("skipped {test}: no dockerd");
    false
}

impl Dockerd {
    /// A dockerd in test host `netns`, without plugins.
    pub fn start(netns: &str) -> Dockerd {
        Self::start_with_plugins(netns, None)
    }

    /// A dockerd in test host `netns` that finds its plugins in `plugins` (as
    /// /run/docker/plugins, in its own mount namespace).
    pub fn start_with_plugins(netns: &str, plugins: Option<&Path>) -> Dockerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().to_path_buf();
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let cgroup_parent = format!("/weft-test-docker-{}-{n}", std::process::id());
        let plugins = plugins.map(|d| d.to_str().expect("utf-8 path").to_string());
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", SETUP, "sh"])
            .arg(plugins.unwrap_or_default())
            .arg("dockerd")
            .arg("--data-root")
            .arg(p.join("data"))
            .arg("--exec-root")
            .arg(p.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", p.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(p.join("docker.pid"))
            .args([
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
            ])
            .args(["--bridge=none", "--ip-forward=false", "--ip-masq=false"])
            .arg(format!("--cgroup-parent={cgroup_parent}"))
            .stdout(std::process::Stdio::null())
            .stderr(File::create(p.join("dockerd.log")).expect("log file"))
            .spawn()
            .expect("start dockerd");
        let d = Dockerd {
            dir,
            daemon,
            cgroup_parent,
            names: Default::default(),
        };
        let started = std::time::Instant::now();
        while !d.docker(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "dockerd did not answer: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let rootfs = p.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
        for applet in ["sleep", "sh"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
        }
        let tar = p.join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar: {out:?}");
        let imported = d.docker(&["import", tar.to_str().expect("utf-8"), DOCKER_IMAGE]);
        assert!(imported.status.success(), "docker import: {imported:?}");
        d
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The engine API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// A command that talks to this dockerd (weft looking containers up, or docker).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket().display()));
        cmd
    }

    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        self.command("docker")
            .args(args)
            .output()
            .expect("run docker")
    }

    /// `docker ARGS`: its stdout, trimmed, or its stderr.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.docker(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Removes container `name` when dropped (`docker rm -f`).
    pub fn track(&self, name: &str) {
        self.names.borrow_mut().push(name.to_string());
    }

    /// `docker run -d --network none` of `sleep`; its id and PID.
    pub fn run(&self, name: &str) -> (String, u32) {
        self.track(name);
        let out = self.docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            DOCKER_IMAGE,
            "/bin/sleep",
            "300",
        ]);
        assert!(out.status.success(), "docker run: {out:?}");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let out = self.docker(&["inspect", "-f", "{{.State.Pid}}", name]);
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a PID");
        (id, pid)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for name in self.names.borrow().iter() {
            let _ = self.docker(&["rm", "-f", name]);
        }
        let pid = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stopped = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            matches!(self.daemon.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- dockerd log (last 40 lines) -----\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        remove_cgroups(&self.cgroup_parent);
    }
}

/// Remove the cgroups a container engine made under `parent` (cgroup v1: one per controller),
/// deepest first, once its processes have left them; tries for 5 s. False if some are left.
pub fn remove_cgroups(parent: &str) -> bool {
    let roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|cs| {
            cs.flatten()
                .map(|c| c.path().join(parent.trim_start_matches('/')))
                .collect()
        })
        .unwrap_or_default();
    for _ in 0..50 {
        let left: Vec<&PathBuf> = roots.iter().filter(|r| r.exists()).collect();
        if left.is_empty() {
            return true;
        }
        for root in left {
            let _ = Command::new("find")
                .arg(root)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .output();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
