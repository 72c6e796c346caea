//! Backend detection and the kernel backend, run inside a test-bed namespace (needs root).
//!
//! The test re-runs this test binary inside the namespace (`ip netns exec NS <this binary>
//! probe_child`), so the probe link and any device are made there, never in the root
//! namespace. What the kernel can do is checked independently with `ip link add ... type
//! wireguard`: where the kernel has WireGuard, the live kernel path is exercised (create,
//! apply, status, delete); where it has none, the fallback must be clean.

use weft_testbed::{require_root, TestBed};

const CHILD_ENV: &str = "WEFT_NETNS_DETECT_CHILD";
const DEVICE: &str = "wgdetect0";

#[test]
fn detect_and_kernel_backend_in_a_namespace() {
    if !require_root("detect_and_kernel_backend_in_a_namespace") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let host = bed.host(0);

    let oracle = host
        .run(&["ip", "link", "add", "wgoracle", "type", "wireguard"])
        .expect("run ip");
    let kernel_has_wireguard = oracle.status.success();
    if kernel_has_wireguard {
        host.run_ok(&["ip", "link", "del", "wgoracle"])
            .expect("remove oracle link");
    }

    let exe = std::env::current_exe().expect("test binary");
    let exe = exe.to_str().expect("utf-8 path");
    let env = format!("{CHILD_ENV}=1");
    let out = host
        .run(&[
            "env",
            &env,
            exe,
            "--exact",
            "probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("child printed no {key}:\n{stdout}"))
            .trim()
            .to_owned()
    };
    let fallback_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("kernel WireGuard unavailable"))
        .collect();

    if kernel_has_wireguard {
        assert_eq!(value("DETECTED"), "kernel");
        assert_eq!(
            value("ANYBACKEND"),
            "ok",
            "kernel device through AnyBackend"
        );
        assert!(fallback_lines.is_empty(), "{fallback_lines:?}");
        assert_eq!(value("CREATE"), "ok");
        assert_eq!(value("ROUNDTRIP"), "ok");
    } else {
        assert_eq!(value("DETECTED"), "userspace");
        assert_eq!(
            value("ANYBACKEND"),
            "ok",
            "userspace device through AnyBackend"
        );
        assert_eq!(
            fallback_lines.len(),
            1,
            "exactly one info line says why:\n{stdout}"
        );
        assert!(fallback_lines[0].contains("INFO"), "{}", fallback_lines[0]);
        assert!(
            fallback_lines[0].contains("no WireGuard support"),
            "{}",
            fallback_lines[0]
        );
        assert_eq!(value("CREATE"), format!("err errno={}", libc::EOPNOTSUPP));
    }
    let links = host.run_ok(&["ip", "-o", "link", "show"]).expect("ip link");
    assert!(
        !links.contains("weftprobe"),
        "probe link left behind:\n{links}"
    );
    assert!(!links.contains(DEVICE), "device left behind:\n{links}");
    assert!(
        !links.contains("wgdetect1"),
        "AnyBackend device left behind:\n{links}"
    );
}

/// Runs inside the namespace for the test above; does nothing when run on its own.
#[test]
fn probe_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        eprintln!("skipped: probe_child runs only inside detect_and_kernel_backend_in_a_namespace");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .try_init();
    let kind = weft_mesh::backend::detect();
    println!("DETECTED={kind}");
    println!("ANYBACKEND={}", any_backend_roundtrip(kind));
    match weft_mesh::kernel::KernelDevice::create(DEVICE) {
        Err(e) => println!("CREATE=err errno={}", e.errno()),
        Ok(device) => {
            println!("CREATE=ok");
            println!("ROUNDTRIP={}", kernel_roundtrip(&device));
            device.delete().expect("delete the kernel device");
        }
    }
}

/// The detected backend through `AnyBackend`: create, apply two peers, read them back, delete.
fn any_backend_roundtrip(kind: weft_mesh::backend::BackendKind) -> String {
    use weft_mesh::backend::{AnyBackend, Backend};

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let device = AnyBackend::create(kind, "wgdetect1", &Default::default())
            .await
            .expect("create through AnyBackend");
        assert_eq!(device.kind(), kind);
        let (config, key, peers) = two_peers();
        device.apply(config).await.expect("apply");
        let status = device.status().await.expect("status");
        let matches = status_matches(&status, &key, &peers);
        device.delete().await.expect("delete");
        if matches {
            "ok".to_owned()
        } else {
            format!("mismatch: {status:?}")
        }
    })
}

fn two_peers() -> (
    weft_mesh::DeviceConfig,
    weft_crypto::WgPrivateKey,
    Vec<weft_mesh::PeerConfig>,
) {
    use weft_crypto::WgPrivateKey;
    use weft_mesh::{DeviceConfig, PeerConfig};

    let key = WgPrivateKey::generate();
    let peers: Vec<PeerConfig> = (1..=2u8)
        .map(|i| {
            let mut peer = PeerConfig::new(WgPrivateKey::generate().public_key());
            peer.endpoint = Some(format!("198.18.0.{i}:51820").parse().expect("endpoint"));
            peer.allowed_ips = vec![format!("203.0.113.{i}/32").parse().expect("net")];
            peer
        })
        .collect();
    let config = DeviceConfig {
        private_key: Some(key.clone()),
        listen_port: Some(51999),
        replace_peers: true,
        peers: peers.clone(),
        ..DeviceConfig::default()
    };
    (config, key, peers)
}

fn status_matches(
    status: &weft_mesh::DeviceStatus,
    key: &weft_crypto::WgPrivateKey,
    peers: &[weft_mesh::PeerConfig],
) -> bool {
    status.public_key == Some(key.public_key())
        && status.listen_port == 51999
        && status.peers.len() == 2
        && status.peers.iter().zip(peers).all(|(got, want)| {
            got.public_key == want.public_key
                && got.endpoint == want.endpoint
                && got.allowed_ips == want.allowed_ips
        })
}

/// Where the kernel has WireGuard: a configuration with two peers reads back as set.
fn kernel_roundtrip(device: &weft_mesh::kernel::KernelDevice) -> &'static str {
    let (config, key, peers) = two_peers();
    device.apply(&config).expect("apply");
    let status = device.status().expect("status");
    if status_matches(&status, &key, &peers) {
        "ok"
    } else {
        "mismatch"
    }
}
