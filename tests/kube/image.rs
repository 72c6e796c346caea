//! weft's image (deploy/kubernetes/Containerfile, built by tests/image/build-image.sh) under
//! Podman, run as the DaemonSet in deploy/kubernetes/weft.yaml says: its commands, env,
//! securityContext and volumes, read from the manifest, with each hostPath a directory of
//! the test's. Podman is private: its configuration and vfs storage in a temporary directory.
//!
//! Without the image archive the tests print "skipped" and why; with `WEFT_REQUIRE_IMAGE=1`
//! (CI) they fail instead. `WEFT_IMAGE` overrides where the archive is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_yaml::Value;

pub const REQUIRE_ENV: &str = "WEFT_REQUIRE_IMAGE";
pub const DEFAULT_ARCHIVE: &str = "/var/cache/weft-test-image/weft.tar";
/// What the image is loaded as (the manifest says `weft:latest`).
pub const TAG: &str = "localhost/weft:latest";

/// The image archive, or `None` after printing why the test is skipped.
pub fn archive() -> Option<PathBuf> {
    let path =
        PathBuf::from(std::env::var("WEFT_IMAGE").unwrap_or_else(|_| DEFAULT_ARCHIVE.into()));
    if path.is_file() && Command::new("podman").arg("--version").output().is_ok() {
        return Some(path);
    }
    let why = format!(
        "missing {} or podman (build the image with tests/image/build-image.sh)",
        path.display()
    );
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Podman with private configuration and storage; removes the containers it started.
pub struct Podman {
    _dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    started: Vec<(String, Child)>,
}

impl Podman {
    pub fn new() -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).expect("podman dir");
            path.display().to_string()
        };
        let conf = format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\ntmp_dir = \"{}\"\n",
            p("tmp")
        );
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            p("root"),
            p("runroot")
        );
        std::fs::write(dir.path().join("containers.conf"), conf).expect("containers.conf");
        std::fs::write(dir.path().join("storage.conf"), storage).expect("storage.conf");
        let env = vec![
            (
                "CONTAINERS_CONF".into(),
                dir.path().join("containers.conf").display().to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                dir.path().join("storage.conf").display().to_string(),
            ),
        ];
        Podman {
            _dir: dir,
            env,
            started: Vec::new(),
        }
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[String]) -> Output {
        self.command(args).output().expect("run podman")
    }

    pub fn run_ok(&self, args: &[String]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads the archive and tags it as the manifest's image.
    pub fn load(&self, archive: &Path) {
        let out = self.run_ok(&["load".into(), "-i".into(), archive.display().to_string()]);
        let loaded = out
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .or_else(|| {
                out.lines()
                    .find_map(|l| l.strip_prefix("Loaded image(s): "))
            })
            .unwrap_or_else(|| panic!("podman load said: {out}"))
            .trim()
            .to_owned();
        self.run_ok(&["tag".into(), loaded, TAG.into()]);
    }

    /// `podman run ARGS` in the background (its output to `log`), removed on drop.
    pub fn spawn(&mut self, name: &str, args: &[String], log: &Path) {
        let file = std::fs::File::create(log).expect("log file");
        let mut full = vec!["run".into(), "--rm".into(), "--name".into(), name.into()];
        full.extend_from_slice(args);
        let child = self
            .command(&full)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn podman run");
        self.started.push((name.to_owned(), child));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for (name, mut child) in std::mem::take(&mut self.started) {
            let _ = self
                .command(&["rm".into(), "-f".into(), "-t".into(), "0".into(), name])
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One container of the DaemonSet's pod, as `podman run` arguments: the manifest's
/// securityContext (user, capabilities, no privilege escalation), env (values from `env`
/// for those the API fills in: the downward API, ConfigMap keys; the rest of `env` as
/// kubelet's own variables), volume mounts with each
/// volume's directory from `volumes` (by volume name), the host's network namespace as
/// `network` (hostNetwork), then the image and the command.
pub fn container_args(
    container: &Value,
    env: &BTreeMap<&str, String>,
    volumes: &BTreeMap<&str, PathBuf>,
    network: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--pull".into(),
        "never".into(),
        "--network".into(),
        network.into(),
        // Podman's default limits are the machine's, which its runc may refuse here.
        "--ulimit".into(),
        "nofile=1024:1024".into(),
        "--ulimit".into(),
        "nproc=1024:1024".into(),
    ];
    let sc = &container["securityContext"];
    if let Some(uid) = sc["runAsUser"].as_u64() {
        args.extend(["--user".into(), uid.to_string()]);
    }
    assert_ne!(
        sc["privileged"].as_bool(),
        Some(true),
        "privileged container"
    );
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    for cap in seq(&sc["capabilities"]["drop"]) {
        args.extend(["--cap-drop".into(), cap]);
    }
    for cap in seq(&sc["capabilities"]["add"]) {
        args.extend(["--cap-add".into(), cap]);
    }
    let mut named = Vec::new();
    for var in container["env"].as_sequence().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name");
        let value = match var["value"].as_str() {
            Some(v) => v.to_owned(),
            None => env
                .get(name)
                .unwrap_or_else(|| panic!("no value for env {name} (valueFrom)"))
                .clone(),
        };
        named.push(name);
        args.extend(["--env".into(), format!("{name}={value}")]);
    }
    // What kubelet adds to every container (KUBERNETES_SERVICE_HOST, ...).
    for (name, value) in env.iter().filter(|(n, _)| !named.contains(n)) {
        args.extend(["--env".into(), format!("{name}={value}")]);
    }
    for mount in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let name = mount["name"].as_str().expect("volume name");
        let at = mount["mountPath"].as_str().expect("mountPath");
        let from = volumes
            .get(name)
            .unwrap_or_else(|| panic!("no directory for volume {name}"));
        let ro = if mount["readOnly"].as_bool() == Some(true) {
            ":ro"
        } else {
            ""
        };
        if at == "/dev/net/tun" {
            // A CharDevice hostPath: the device itself.
            args.extend(["--device".into(), "/dev/net/tun".into()]);
        } else {
            args.extend(["--volume".into(), format!("{}:{at}{ro}", from.display())]);
        }
    }
    args.push(TAG.into());
    args.extend(seq(&container["command"]));
    args.extend(seq(&container["args"]));
    args
}

fn seq(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}
