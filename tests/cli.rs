//! The `weft` binary as a user runs it: key tools against the real `wg`, the key store on disk,
//! refusals of unsafe files, secrets kept out of every output, and exit codes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;

const WG: &str = "/usr/bin/wg";

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run a program with `args`, `stdin` and extra `env`, in an environment free of weft's own
/// variables so the host cannot change what a test sees.
fn run_program(program: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("WEFT_SECRET_FILE")
        .env_remove("WEFT_STATE_DIR")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    {
        let mut input = child.stdin.take().expect("stdin is piped");
        // A program that exits before reading all of stdin closes the pipe: not an error here.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait");
    Output {
        code: out.status.code().expect("exited normally, not by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

fn weft(args: &[&str]) -> Output {
    run_program(env!("CARGO_BIN_EXE_weft"), args, b"", &[])
}

fn weft_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    run_program(env!("CARGO_BIN_EXE_weft"), args, stdin, env)
}

fn wg(args: &[&str], stdin: &[u8]) -> Output {
    run_program(WG, args, stdin, &[])
}

fn wg_installed() -> bool {
    if Path::new(WG).exists() {
        true
    } else {
        println!("skipped: wg not installed");
        false
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// `weft identity -o json` on `dir`, which must succeed.
fn identity_json(dir: &Path) -> serde_json::Value {
    let out = weft(&["identity", "--state-dir", path_str(dir), "-o", "json"]);
    assert_eq!(out.code, 0, "identity failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("identity prints JSON")
}

/// A state directory in a fresh temporary directory, with keys already created.
fn state_dir_with_keys() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("state");
    identity_json(&dir);
    (root, dir)
}

#[test]
fn genkey_and_pubkey_agree_with_wg_on_50_keys() {
    if !wg_installed() {
        return;
    }
    for i in 0..50 {
        // A key made by weft: well-formed and clamped like wg's, same public key from both tools.
        let private = weft(&["genkey"]);
        assert_eq!(private.code, 0, "{}", private.stderr);
        assert_eq!(
            private.stdout.len(),
            45,
            "one line of 44 characters: {:?}",
            private.stdout
        );
        let bytes = weft_crypto::WgPrivateKey::from_base64(&private.stdout).expect("base64 key");
        let bytes = bytes.as_bytes();
        assert!(
            bytes[0] & 7 == 0 && bytes[31] & 0xc0 == 0x40,
            "key {i} is not clamped"
        );
        let ours = weft_with(&["pubkey"], private.stdout.as_bytes(), &[]);
        let theirs = wg(&["pubkey"], private.stdout.as_bytes());
        assert_eq!(
            (ours.code, theirs.code),
            (0, 0),
            "{} / {}",
            ours.stderr,
            theirs.stderr
        );
        assert_eq!(ours.stdout, theirs.stdout, "weft genkey key {i}");

        // A key made by wg: weft pubkey prints what wg pubkey prints.
        let private = wg(&["genkey"], b"");
        assert_eq!(private.code, 0, "{}", private.stderr);
        let ours = weft_with(&["pubkey"], private.stdout.as_bytes(), &[]);
        let theirs = wg(&["pubkey"], private.stdout.as_bytes());
        assert_eq!(
            (ours.code, theirs.code),
            (0, 0),
            "{} / {}",
            ours.stderr,
            theirs.stderr
        );
        assert_eq!(ours.stdout, theirs.stdout, "wg genkey key {i}");
    }
}

#[test]
fn genkey_keys_differ() {
    let a = weft(&["genkey"]).stdout;
    let b = weft(&["genkey"]).stdout;
    assert_ne!(a, b);
}

#[test]
fn pubkey_refuses_bad_input_as_wg_does() {
    if !wg_installed() {
        return;
    }
    let key = wg(&["genkey"], b"").stdout;
    let key = key.trim();
    let inputs = [
        String::new(),
        "garbage\n".to_string(),
        key[..43].to_string(),
        format!(" {key}\n"),
        format!("{key}x"),
        format!("{key}\n{key}\n"),
        format!("{}==", &key[..42]),
        format!("{}!=", &key[..42]),
        format!("{key}\t\r\n\0"),
    ];
    for input in &inputs {
        let ours = weft_with(&["pubkey"], input.as_bytes(), &[]);
        let theirs = wg(&["pubkey"], input.as_bytes());
        assert_eq!(
            ours.code, theirs.code,
            "{input:?}: {} / {}",
            ours.stderr, theirs.stderr
        );
        assert_eq!(ours.stdout, theirs.stdout, "{input:?}");
        // Same message, with the program's name in front.
        assert_eq!(
            ours.stderr.strip_prefix("weft: "),
            theirs.stderr.strip_prefix(&format!("{WG}: ")), // wg names itself by argv[0]
            "{input:?}"
        );
        if theirs.code != 0 {
            assert_eq!(ours.code, 1);
            assert!(!ours.stderr.is_empty());
        }
    }
}

#[test]
fn identity_is_created_once_then_reused_with_private_modes() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("state");
    let first = identity_json(&dir);
    let second = identity_json(&dir);
    assert_eq!(first["created"], true);
    assert_eq!(second["created"], false);
    assert_eq!(first["node_id"], second["node_id"]);
    assert_eq!(
        first["wireguard_public_key"],
        second["wireguard_public_key"]
    );
    let node_id = first["node_id"].as_str().expect("node id is a string");
    weft_crypto::NodeId::from_base64(node_id).expect("node id is a base64 key");

    assert_eq!(mode_of(&dir), 0o700);
    let wg_key_path = dir.join("wireguard.key");
    for path in [dir.join("identity.key"), wg_key_path.clone()] {
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
    }

    // The text output shows the same ids.
    let text = weft(&["identity", "--state-dir", path_str(&dir)]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains(node_id), "{}", text.stdout);
    let wg_public = first["wireguard_public_key"].as_str().expect("string");
    assert!(text.stdout.contains(wg_public), "{}", text.stdout);

    // The key file is a WireGuard key: wg derives the same public key from it.
    if Path::new(WG).exists() {
        let key_text = fs::read(&wg_key_path).expect("read key file");
        let derived = wg(&["pubkey"], &key_text);
        assert_eq!(derived.stdout.trim(), wg_public);
    }
}

#[test]
fn state_dir_from_environment() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("from-env");
    let out = weft_with(
        &["identity", "-o", "json"],
        b"",
        &[("WEFT_STATE_DIR", path_str(&dir))],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(dir.join("identity.key").exists());
}

/// Each unsafe or damaged key file: exit 1, a message naming the file and the problem, and
/// the file left exactly as it was.
#[test]
fn unsafe_or_damaged_key_files_are_refused_and_left_unchanged() {
    let b64_of_31_bytes = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n";
    let cases: [(&str, Option<&str>, u32, &str); 4] = [
        ("wireguard.key", None, 0o644, "0644"),
        ("identity.key", None, 0o644, "0644"),
        (
            "wireguard.key",
            Some("this is not base64!\n"),
            0o600,
            "not valid base64",
        ),
        (
            "identity.key",
            Some(b64_of_31_bytes),
            0o600,
            "exactly 32 bytes",
        ),
    ];
    for (name, content, mode, problem) in cases {
        let (_root, dir) = state_dir_with_keys();
        let path = dir.join(name);
        if let Some(content) = content {
            fs::write(&path, content).expect("write");
        }
        chmod(&path, mode);
        let before = fs::read(&path).expect("read");

        let out = weft(&["identity", "--state-dir", path_str(&dir)]);
        assert_eq!(out.code, 1, "{name} {problem}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        assert!(out.stderr.starts_with("weft: "), "{}", out.stderr);
        assert!(
            out.stderr.contains(path_str(&path)),
            "names the file: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(problem),
            "says the problem: {}",
            out.stderr
        );
        let key_text = String::from_utf8_lossy(&before);
        assert!(
            !out.stderr.contains(key_text.trim()),
            "shows the key: {}",
            out.stderr
        );
        assert_eq!(fs::read(&path).expect("read"), before, "{name} changed");
        assert_eq!(mode_of(&path), mode, "{name} mode changed");
    }
}

#[test]
fn exposed_state_dir_is_refused() {
    let (_root, dir) = state_dir_with_keys();
    chmod(&dir, 0o755);
    let out = weft(&["identity", "--state-dir", path_str(&dir)]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(path_str(&dir)) && out.stderr.contains("0755"),
        "{}",
        out.stderr
    );
    assert_eq!(mode_of(&dir), 0o755);
}

#[test]
fn secret_new_writes_an_acceptable_private_file_and_never_overwrites() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().join("secret");
    let out = weft(&["secret", "new", "--out", path_str(&path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode_of(&path), 0o600);
    let secret = fs::read_to_string(&path).expect("read");
    assert!(!out.stdout.contains(secret.trim()) && !out.stderr.contains(secret.trim()));
    let decoded = weft_crypto::ClusterSecret::from_text(&secret).expect("strong");
    assert_eq!(decoded.expose().len(), 32, "256 bits");

    let check = weft(&[
        "secret",
        "check",
        "--secret-file",
        path_str(&path),
        "-o",
        "json",
    ]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let json: serde_json::Value = serde_json::from_str(&check.stdout).expect("JSON");
    assert_eq!(json["acceptable"], true);
    let check = weft_with(
        &["secret", "check"],
        b"",
        &[("WEFT_SECRET_FILE", path_str(&path))],
    );
    assert_eq!(check.code, 0, "{}", check.stderr);

    let again = weft(&["secret", "new", "--out", path_str(&path)]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        secret,
        "overwritten"
    );
}

#[test]
fn secret_new_to_stdout_is_fresh_base64() {
    let a = weft(&["secret", "new"]);
    let b = weft(&["secret", "new"]);
    assert_eq!((a.code, b.code), (0, 0));
    assert_ne!(a.stdout, b.stdout);
    let secret = weft_crypto::ClusterSecret::from_text(&a.stdout).expect("strong");
    assert_eq!(secret.expose().len(), 32);
}

#[test]
fn weak_or_exposed_secret_files_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let weak = root.path().join("weak");
    let weak_text = "Tr0ub4dor&3";
    fs::write(&weak, weak_text).expect("write");
    chmod(&weak, 0o600);
    let out = weft(&["secret", "check", "--secret-file", path_str(&weak)]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("too weak"), "{}", out.stderr);
    assert!(out.stderr.contains(path_str(&weak)), "{}", out.stderr);
    assert!(!out.stderr.contains(weak_text) && !out.stdout.contains(weak_text));

    let exposed = root.path().join("exposed");
    let strong = weft(&["secret", "new"]).stdout;
    fs::write(&exposed, &strong).expect("write");
    chmod(&exposed, 0o644);
    let out = weft(&["secret", "check", "--secret-file", path_str(&exposed)]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("0644") && out.stderr.contains(path_str(&exposed)),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(strong.trim()) && !out.stdout.contains(strong.trim()));
    assert_eq!(mode_of(&exposed), 0o644, "left as it was");
}

/// With every log level on, no output shows a private key or the secret, in base64 or hex.
#[test]
fn secrets_never_appear_in_output_even_at_trace_level() {
    let (root, dir) = state_dir_with_keys();
    let secret_path = root.path().join("secret");
    assert_eq!(
        weft(&["secret", "new", "--out", path_str(&secret_path)]).code,
        0
    );

    let mut secrets = Vec::new();
    for path in [
        dir.join("identity.key"),
        dir.join("wireguard.key"),
        secret_path.clone(),
    ] {
        let text = fs::read_to_string(&path).expect("read");
        let text = text.trim().to_string();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .expect("base64");
        secrets.push(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
        secrets.push(text);
    }

    let trace = [("RUST_LOG", "trace")];
    let runs = [
        weft_with(
            &["identity", "-v", "-v", "--state-dir", path_str(&dir)],
            b"",
            &trace,
        ),
        weft_with(
            &[
                "-vvv",
                "-o",
                "json",
                "identity",
                "--state-dir",
                path_str(&dir),
            ],
            b"",
            &trace,
        ),
        weft_with(
            &[
                "secret",
                "check",
                "-vv",
                "--secret-file",
                path_str(&secret_path),
            ],
            b"",
            &trace,
        ),
    ];
    for out in &runs {
        assert_eq!(out.code, 0, "{}", out.stderr);
        // The logs are really on: the key store and secret loading log at debug level.
        assert!(
            out.stderr.contains("DEBUG"),
            "no debug logs: {}",
            out.stderr
        );
        for secret in &secrets {
            assert!(
                !out.stdout.contains(secret.as_str()),
                "secret in stdout: {}",
                out.stdout
            );
            assert!(
                !out.stderr.contains(secret.as_str()),
                "secret in stderr: {}",
                out.stderr
            );
        }
    }
    assert!(runs[0].stderr.contains("keys loaded"), "{}", runs[0].stderr);
    assert!(
        runs[2].stderr.contains("ClusterSecret(<redacted>)"),
        "{}",
        runs[2].stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["no-such-command"][..],
        &["identity", "--no-such-flag"],
        &["-o", "yaml", "identity"],
        &["secret"],
        &["secret", "check"],
        &["pubkey", "extra-argument"],
        &[],
    ] {
        let out = weft(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        // clap's error, or the command's help when a subcommand is missing.
        assert!(
            out.stderr.starts_with("error: ") || out.stderr.contains("Usage: weft"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn version_and_help() {
    let version = weft(&["--version"]);
    assert_eq!(version.code, 0);
    assert_eq!(
        version.stdout.trim(),
        format!("weft {}", env!("CARGO_PKG_VERSION"))
    );

    let help = weft(&["--help"]);
    assert_eq!(help.code, 0);
    for command in [
        "genkey",
        "pubkey",
        "secret",
        "identity",
        "--output",
        "--secret-file",
    ] {
        assert!(
            help.stdout.contains(command),
            "--help lacks {command}: {}",
            help.stdout
        );
    }
    let help = weft(&["identity", "--help"]);
    assert!(help.stdout.contains("--state-dir") && help.stdout.contains("/var/lib/weft"));
}

/// The `--long` options of `weft launch`, from its help.
fn launch_options() -> Vec<String> {
    let help = weft(&["launch", "--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    help.stdout
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect()
}

/// Every `--option` in `command` must be one `weft launch` (or the global options) accepts.
fn assert_known_options(command: &str, known: &[String], origin: &str) {
    for word in command.split_whitespace() {
        if word.starts_with("--") {
            assert!(
                known.iter().any(|k| k == word),
                "{origin} uses `{word}`, which `weft launch` does not accept: {command}"
            );
        }
    }
}

fn deploy_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn systemd_unit_runs_launch_with_known_options_and_keeps_state_on_stop() {
    let unit = deploy_file("deploy/systemd/weft.service");
    let mut keys: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut section = String::new();
    for (n, line) in unit.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            assert!(line.ends_with(']'), "line {}: {line}", n + 1);
            section = line.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {} is not key=value: {line}", n + 1));
        keys.entry(format!("{section}{key}"))
            .or_default()
            .push(value.to_owned());
    }
    let one = |key: &str| -> &str {
        match keys.get(key).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{key}: {other:?}"),
        }
    };
    assert_eq!(one("[Service]Type"), "simple");
    assert_eq!(one("[Service]Restart"), "on-failure");
    assert_eq!(one("[Service]EnvironmentFile"), "-/etc/weft/weft.env");
    let exec = one("[Service]ExecStart");
    assert!(exec.starts_with("/usr/local/bin/weft launch "), "{exec}");
    assert!(exec.contains("$WEFT_PEERS"), "{exec}");
    assert_known_options(exec, &launch_options(), "weft.service");
    let env = &keys["[Service]Environment"];
    assert!(
        env.contains(&"WEFT_SECRET_FILE=/etc/weft/secret".to_owned()),
        "{env:?}"
    );
    assert!(
        env.contains(&"WEFT_STATE_DIR=/var/lib/weft".to_owned()),
        "{env:?}"
    );
    let caps = one("[Service]CapabilityBoundingSet");
    assert!(
        caps.contains("CAP_NET_ADMIN") && caps.contains("CAP_NET_RAW"),
        "{caps}"
    );
    // Stopping keeps host state and address space: nothing may run `weft reset` on stop.
    for key in ["[Service]ExecStop", "[Service]ExecStopPost"] {
        assert!(!keys.contains_key(key), "{key} set");
    }
    let sample = deploy_file("deploy/systemd/weft.env");
    assert!(
        sample.lines().any(|l| l.starts_with("WEFT_PEERS=")),
        "{sample}"
    );
    for line in sample.lines().filter(|l| l.starts_with("WEFT_OPTS=")) {
        assert_known_options(
            line.trim_start_matches("WEFT_OPTS="),
            &launch_options(),
            "weft.env",
        );
    }
}

#[test]
fn kubernetes_daemonset_parses_and_probes_the_metrics_endpoint() {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(&deploy_file("deploy/kubernetes/weft.yaml"))
        .expect("weft.yaml is YAML");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let ds = &docs[4];
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let container = &spec["containers"][0];
    // Capabilities rather than privileged (weft-kube's tests/manifests.rs checks the rest).
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(false)
    );
    let command: Vec<&str> = container["command"]
        .as_vec()
        .expect("command list")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let script = command.last().expect("command");
    assert!(
        script.contains("weft launch") && script.contains("$WEFT_PEERS"),
        "{script}"
    );
    assert_known_options(script, &launch_options(), "weft.yaml");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["host"].as_str(), Some("127.0.0.1"), "{probe}");
        assert_eq!(get["port"].as_i64(), Some(6782), "{probe}");
    }
    let env: Vec<&str> = container["env"]
        .as_vec()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for var in [
        "WEFT_PEERS",
        "WEFT_SECRET_FILE",
        "WEFT_STATE_DIR",
        "NODE_NAME",
    ] {
        assert!(env.contains(&var), "{var} not set: {env:?}");
    }
    // Host paths survive pod restarts, so a new pod is the same node.
    let volumes = spec["volumes"].as_vec().expect("volumes");
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .and_then(|v| v["hostPath"]["path"].as_str())
    };
    assert_eq!(host_path("state"), Some("/var/lib/weft"));
    assert_eq!(host_path("run"), Some("/run/weft"));
    let secret = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("secret"))
        .expect("secret volume");
    assert_eq!(secret["secret"]["secretName"].as_str(), Some("weft-secret"));
    // Octal 0400: the secret must not be readable by group or others.
    assert_eq!(secret["secret"]["defaultMode"].as_i64(), Some(0o400));
}
