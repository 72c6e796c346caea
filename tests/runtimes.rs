//! weft-cni under real container runtimes: containerd (`ctr run --cni`: containerd's go-cni,
//! the library its CRI plugin networks every Kubernetes pod with) and Podman 4 with its CNI
//! backend. On each of two test hosts running `weft launch`, the runtime starts a busybox
//! container on weft's network; the two containers ping each other through the mesh, and a
//! container reaches a host outside the cluster range with its node's address. Needs root and
//! Debian's containerd, podman, runc and busybox-static.
//!
//! Nothing of the machine's own is touched: each runtime runs in a [`Sandbox`], a private
//! mount namespace inside the test host's network namespace where /run is a fresh tmpfs and
//! /etc, /opt and /var/lib are overlays whose writes go to a tmpfs, /etc/cni/net.d and
//! /opt/cni/bin are the test's own directories, and the runtimes' roots, states and sockets
//! are in temporary directories. It all goes when the sandbox's processes are killed.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;
use weft_testbed::{require_root, wait_until, Proc, TestBed};

#[path = "cni/common.rs"]
mod common;

use common::*;

const RANGE: &str = "10.46.0.0/16";
/// The image both runtimes run: busybox-static's binary and a few applets.
const IMAGE: &str = "docker.io/weft-test/busybox:1";
const PODMAN_IMAGE: &str = "localhost/weft-test-busybox:1";
/// How long a container lives at most, should every cleanup fail.
const CONTAINER_LIFE: &str = "600";

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// True if `program` is on PATH.
fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the runtime test can run: root (or a failure with WEFT_REQUIRE_NETNS=1), and the
/// programs (missing ones fail the test: CI installs them).
fn ready(test: &str, programs: &[&str]) -> bool {
    if !require_root(test) {
        return false;
    }
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    assert!(
        missing.is_empty(),
        "{test}: missing {missing:?} (apt-get install containerd podman runc busybox-static)"
    );
    true
}

/// A private mount namespace in test host `netns`'s network namespace (see the module doc),
/// kept alive by a process that sleeps; commands enter it with `nsenter`. Dropping it kills
/// that process's group and whatever else was started in it.
struct Sandbox {
    holder: Child,
    dir: TempDir,
    /// Processes started in the sandbox (a daemon), killed on drop.
    daemons: Vec<Child>,
}

impl Sandbox {
    /// `net_d` becomes /etc/cni/net.d and `bin` /opt/cni/bin inside.
    fn new(netns: &str, net_d: &Path, bin: &Path) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = r#"set -e
scratch="$1"; net_d="$2"; bin="$3"
mount -t tmpfs tmpfs "$scratch"
for d in etc opt var/lib; do
    mkdir -p "$scratch/$d/upper" "$scratch/$d/work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$scratch/$d/upper,workdir=$scratch/$d/work" "/$d"
done
mount -t tmpfs tmpfs /run
mkdir -p /etc/cni/net.d /opt/cni/bin
mount --bind "$net_d" /etc/cni/net.d
mount --bind "$bin" /opt/cni/bin
echo ready
exec sleep 1800
"#;
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).expect("scratch dir");
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "nsenter"])
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["sh", "-c", script, "sh"])
            .args([&scratch, net_d, bin])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let out = holder.wait_with_output().expect("wait");
            panic!(
                "the sandbox did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Sandbox {
            holder,
            dir,
            daemons: Vec::new(),
        }
    }

    /// A private directory for the runtime's files.
    fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("sandbox directory");
        p
    }

    fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "-n", "--"])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a command inside; its output, whatever the exit status.
    fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        self.command(args, envs).output().expect("nsenter")
    }

    /// Starts a daemon inside, its output in `log`.
    fn spawn(&mut self, args: &[&str], log: &Path) {
        let file = std::fs::File::create(log).expect("log file");
        let child = self
            .command(args, &[])
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("spawn in the sandbox");
        self.daemons.push(child);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for child in self.daemons.iter_mut().chain([&mut self.holder]) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The image's root filesystem as a tar archive (uncompressed, root-owned): busybox-static's
/// binary and the applets the tests use.
fn rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    for applet in ["sh", "sleep", "ping", "ip", "cat", "nc"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
    }
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success(), "tar of the rootfs failed");
    tar
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    format!(
        "sha256:{}",
        text.split_whitespace().next().expect("a digest")
    )
}

/// An OCI image archive (what `ctr image import` takes) of `layer`, named [`IMAGE`].
fn oci_archive(dir: &Path, layer: &Path) -> PathBuf {
    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let add = |path: &Path| -> (String, u64) {
        let digest = sha256(path);
        let dst = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::copy(path, &dst).expect("blob");
        (digest, std::fs::metadata(&dst).expect("blob").len())
    };
    let add_json = |name: &str, v: &Value| -> (String, u64) {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(v).expect("json")).expect("write");
        add(&path)
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let (layer_digest, layer_size) = add(layer);
    let (config_digest, config_size) = add_json(
        "config.json",
        &json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "config": {"Cmd": ["sh"]}
        }),
    );
    let (manifest_digest, manifest_size) = add_json(
        "manifest.json",
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}]
        }),
    );
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": IMAGE,
                            "org.opencontainers.image.ref.name": "1"}
        }]
    });
    std::fs::write(oci.join("index.json"), index.to_string()).expect("index");
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let archive = dir.join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success(), "tar of the OCI layout failed");
    archive
}

/// Two test hosts, each with a ready weft node, and a CNI bin directory (weft and the
/// reference loopback plugin) and a config directory with weft's conflist per host.
struct Mesh {
    bed: TestBed,
    files: Vec<NodeFiles>,
    _procs: Vec<Proc>,
    _secrets: TempDir,
    dirs: TempDir,
}

impl Mesh {
    /// `hosts` test hosts; weft runs on the first two, the others are plain hosts.
    fn new(hosts: usize) -> Mesh {
        let bed = TestBed::new(hosts).expect("test bed");
        let secrets = tempfile::tempdir().expect("tempdir");
        let secret = write_secret(secrets.path(), "cluster.secret");
        let files = vec![NodeFiles::new(), NodeFiles::new()];
        let p0 = launch(bed.host(0), "n0", &secret, &files[0], &[], RANGE);
        let p1 = launch(bed.host(1), "n1", &secret, &files[1], &[bed.host(0)], RANGE);
        wait_ready(&files[0], &p0);
        wait_ready(&files[1], &p1);
        let dirs = tempfile::tempdir().expect("tempdir");
        let mesh = Mesh {
            bed,
            files,
            _procs: vec![p0, p1],
            _secrets: secrets,
            dirs,
        };
        for i in 0..2 {
            let bin = mesh.bin_dir(i);
            std::fs::create_dir_all(&bin).expect("bin dir");
            std::os::unix::fs::symlink(plugin_bin(), bin.join("weft")).expect("weft");
            std::os::unix::fs::symlink("/usr/lib/cni/loopback", bin.join("loopback"))
                .expect("loopback");
            let net_d = mesh.net_d(i);
            std::fs::create_dir_all(&net_d).expect("net.d");
            let list = weft_conflist("weft", "1.0.0", &mesh.files[i], json!({}));
            std::fs::write(
                net_d.join("10-weft.conflist"),
                serde_json::to_vec_pretty(&list).expect("json"),
            )
            .expect("conflist");
        }
        mesh
    }

    fn bin_dir(&self, i: usize) -> PathBuf {
        self.dirs.path().join(format!("n{i}/bin"))
    }

    fn net_d(&self, i: usize) -> PathBuf {
        self.dirs.path().join(format!("n{i}/net.d"))
    }

    fn sandbox(&self, i: usize) -> Sandbox {
        Sandbox::new(self.bed.host(i).name(), &self.net_d(i), &self.bin_dir(i))
    }

    /// The node's attachment for a container whose id contains `id`: its address.
    fn pod_address(&self, i: usize, id: &str) -> Ipv4Addr {
        let pods = pods(&self.files[i]);
        let pod = pods
            .iter()
            .find(|p| p["container"].as_str().is_some_and(|c| c.contains(id)))
            .unwrap_or_else(|| panic!("no attachment for {id} on n{i}: {pods:?}"));
        pod["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {pod}"))
    }
}

/// `ping -c 1` from inside a container (`exec` runs a command in it) until it answers.
fn wait_ping(what: &str, exec: impl Fn(&[&str]) -> Output, dst: Ipv4Addr) {
    let dst = dst.to_string();
    let ok = wait_until(Duration::from_secs(20), || {
        exec(&["ping", "-c", "1", "-W", "1", &dst]).status.success()
    });
    let last = exec(&["ping", "-c", "1", "-W", "1", &dst]);
    assert!(
        ok,
        "{what}: no answer from {dst}: {}{}",
        String::from_utf8_lossy(&last.stdout),
        String::from_utf8_lossy(&last.stderr)
    );
}

/// containerd in a sandbox: its own root, state and socket; no CRI plugin (ctr needs none;
/// so no `restrict_oom_score_adj` either, which only the CRI plugin's sandboxes need here,
/// where CAP_SYS_RESOURCE is missing: `ctr run` asks for no oom_score_adj).
struct Containerd {
    sandbox: Sandbox,
    address: String,
    ids: Vec<String>,
}

impl Containerd {
    fn start(mut sandbox: Sandbox) -> Containerd {
        let root = sandbox.path("containerd");
        let address = format!("{}/containerd.sock", utf8(&root));
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{address}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
"#,
            root = utf8(&root),
        );
        let config_path = root.join("config.toml");
        std::fs::write(&config_path, config).expect("containerd config");
        sandbox.spawn(
            &["containerd", "--config", utf8(&config_path)],
            &root.join("containerd.log"),
        );
        let c = Containerd {
            sandbox,
            address,
            ids: Vec::new(),
        };
        let up = wait_until(Duration::from_secs(20), || {
            c.ctr(&["version"]).status.success()
        });
        assert!(
            up,
            "containerd did not start: {}",
            std::fs::read_to_string(root.join("containerd.log")).unwrap_or_default()
        );
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let mut full = vec!["ctr", "--address", &self.address];
        full.extend_from_slice(args);
        self.sandbox
            .run(&full, &[("CONTAINERD_SNAPSHOTTER", "native")])
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run -d --cni IMAGE ID sleep ...`: a container on weft's network.
    fn run(&mut self, id: &str) {
        self.ctr_ok(&["run", "-d", "--cni", IMAGE, id, "sleep", CONTAINER_LIFE]);
        self.ids.push(id.to_string());
    }

    fn exec(&self, id: &str, args: &[&str]) -> Output {
        let exec_id = format!("x{}", std::process::id() ^ rand_suffix());
        let mut full = vec!["task", "exec", "--exec-id", &exec_id, id];
        full.extend_from_slice(args);
        self.ctr(&full)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        }
        for id in &self.ids {
            let _ = wait_until(Duration::from_secs(5), || {
                self.ctr(&["task", "rm", "-f", id]).status.success()
            });
            let _ = self.ctr(&["container", "rm", id]);
        }
    }
}

/// A different number on every call (exec ids must be unique per task).
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn containerd_ctr_run_cni_containers_on_two_hosts_ping_across_the_mesh() {
    if !ready(
        "containerd_ctr_run_cni_containers_on_two_hosts_ping_across_the_mesh",
        &["containerd", "ctr", "runc", "unshare", "nsenter"],
    ) {
        return;
    }
    let mesh = Mesh::new(3);
    let images = tempfile::tempdir().expect("tempdir");
    let archive = oci_archive(images.path(), &rootfs_tar(images.path()));
    let mut runtimes: Vec<Containerd> =
        (0..2).map(|i| Containerd::start(mesh.sandbox(i))).collect();
    let ids = ["ctr-a", "ctr-b"];
    for (i, rt) in runtimes.iter_mut().enumerate() {
        rt.ctr_ok(&["image", "import", utf8(&archive)]);
        rt.run(ids[i]);
    }
    let addrs: Vec<Ipv4Addr> = (0..2).map(|i| mesh.pod_address(i, ids[i])).collect();
    for i in 0..2 {
        let inside = String::from_utf8_lossy(
            &runtimes[i]
                .exec(ids[i], &["ip", "-4", "-o", "addr", "show", "eth0"])
                .stdout,
        )
        .into_owned();
        assert!(
            inside.contains(&format!("inet {}/", addrs[i])),
            "{}: eth0 has not the address n{i} gave it ({}): {inside}",
            ids[i],
            addrs[i]
        );
    }
    for (i, j) in [(0, 1), (1, 0)] {
        wait_ping(
            &format!("{} on n{i} -> {} on n{j}", ids[i], ids[j]),
            |args| runtimes[i].exec(ids[i], args),
            addrs[j],
        );
    }
    // Out of the cluster range: a host without weft answers, and sees node 0's address.
    let plain = mesh.bed.host(2).underlay_ip();
    let capture = mesh.bed.capture(2, "icmp").expect("capture");
    wait_ping(
        &format!("{} -> host 2's underlay", ids[0]),
        |args| runtimes[0].exec(ids[0], args),
        plain,
    );
    let packets = capture.finish().expect("capture");
    let sources: Vec<_> = packets
        .iter()
        .filter(|p| p.dst() == Some(plain.into()))
        .filter_map(|p| p.src())
        .collect();
    assert!(
        !sources.is_empty() && sources.iter().all(|s| *s == mesh.bed.host(0).underlay_ip()),
        "host 2 saw pings from {sources:?}"
    );
}

/// Podman 4 with its CNI backend, everything private: containers.conf and storage.conf in
/// the sandbox's directory (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF), vfs storage, cgroupfs,
/// runc, file events.
struct Podman {
    sandbox: Sandbox,
    env: Vec<(String, String)>,
    names: Vec<String>,
}

impl Podman {
    fn new(sandbox: Sandbox, net_d: &Path, bin: &Path) -> Podman {
        let dir = sandbox.path("podman");
        let p = |name: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(&path).expect("podman dir");
            utf8(&path).to_string()
        };
        let containers_conf = format!(
            r#"[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "{tmp}"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{net_d}"
"#,
            tmp = p("tmp"),
            bin = utf8(bin),
            net_d = utf8(net_d),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            p("root"),
            p("runroot")
        );
        std::fs::write(dir.join("containers.conf"), containers_conf).expect("containers.conf");
        std::fs::write(dir.join("storage.conf"), storage_conf).expect("storage.conf");
        let env = vec![
            (
                "CONTAINERS_CONF".to_string(),
                utf8(&dir.join("containers.conf")).to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".to_string(),
                utf8(&dir.join("storage.conf")).to_string(),
            ),
        ];
        Podman {
            sandbox,
            env,
            names: Vec::new(),
        }
    }

    fn podman(&self, args: &[&str]) -> Output {
        let envs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut full = vec!["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"];
        full.extend_from_slice(args);
        self.sandbox.run(&full, &envs)
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d --network weft`: a container on weft's network.
    fn run(&mut self, name: &str) {
        self.podman_ok(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--name",
            name,
            "--network",
            "weft",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            PODMAN_IMAGE,
            "sleep",
            CONTAINER_LIFE,
        ]);
        self.names.push(name.to_string());
    }

    fn exec(&self, name: &str, args: &[&str]) -> Output {
        let mut full = vec!["exec", name];
        full.extend_from_slice(args);
        self.podman(&full)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.podman(&["rm", "-f", "-t", "0", name]);
        }
    }
}

#[test]
fn podman_cni_containers_on_two_hosts_ping_across_the_mesh() {
    if !ready(
        "podman_cni_containers_on_two_hosts_ping_across_the_mesh",
        &["podman", "runc", "conmon", "unshare", "nsenter"],
    ) {
        return;
    }
    let mesh = Mesh::new(2);
    let images = tempfile::tempdir().expect("tempdir");
    let layer = rootfs_tar(images.path());
    let mut runtimes: Vec<Podman> = (0..2)
        .map(|i| Podman::new(mesh.sandbox(i), &mesh.net_d(i), &mesh.bin_dir(i)))
        .collect();
    let names = ["pod-a", "pod-b"];
    for (i, rt) in runtimes.iter_mut().enumerate() {
        rt.podman_ok(&["import", utf8(&layer), PODMAN_IMAGE]);
        let networks = rt.podman_ok(&["network", "ls", "--format", "{{.Name}}"]);
        assert!(
            networks.lines().any(|l| l.trim() == "weft"),
            "podman does not list weft's network: {networks}"
        );
        rt.run(names[i]);
    }
    let ids: Vec<String> = (0..2)
        .map(|i| {
            runtimes[i]
                .podman_ok(&["inspect", "--format", "{{.Id}}", names[i]])
                .trim()
                .to_string()
        })
        .collect();
    let addrs: Vec<Ipv4Addr> = (0..2).map(|i| mesh.pod_address(i, &ids[i])).collect();
    for i in 0..2 {
        let shown = runtimes[i].podman_ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.Networks.weft.IPAddress}}",
            names[i],
        ]);
        assert_eq!(
            shown.trim(),
            addrs[i].to_string(),
            "podman shows another address than n{i} gave"
        );
    }
    for (i, j) in [(0, 1), (1, 0)] {
        wait_ping(
            &format!("{} on n{i} -> {} on n{j}", names[i], names[j]),
            |args| runtimes[i].exec(names[i], args),
            addrs[j],
        );
    }
}
