//! A real Kubernetes API server for tests: kube-apiserver 1.20.2 built from Debian's source
//! package (tests/kube/build-apiserver.sh) on Debian's etcd 3.4, both started on a test
//! address with random ports, generated certificates, a generated service-account key and
//! static tokens; stopped (killed) on drop.
//!
//! Shared by kube/tests/apiserver.rs (weft-kube's watchers) and tests/kubernetes.rs (weft
//! daemons in test-bed hosts), each including it as a module. Without the binaries,
//! [`binaries`] prints why and the tests pass; with `WEFT_REQUIRE_KUBE=1` (CI) they fail
//! instead. `WEFT_KUBE_APISERVER` and `WEFT_ETCD` override where the binaries are.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use weft_kube::k8s_openapi;
use weft_kube::k8s_openapi::api::apps::v1::DaemonSet;
use weft_kube::k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, ServiceAccount};
use weft_kube::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use weft_kube::kube::api::PostParams;
use weft_kube::kube::{Api, Client, Resource, ResourceExt};

pub const REQUIRE_ENV: &str = "WEFT_REQUIRE_KUBE";
pub const DEFAULT_APISERVER: &str = "/var/cache/weft-test-kube/bin/kube-apiserver";
pub const ADMIN_TOKEN: &str = "weft-test-admin-token";
pub const WEFT_TOKEN: &str = "weft-test-daemon-token";
/// How long the API server may take to come up on a loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a change may take to reach the watchers' stores.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(20);

pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let apiserver = PathBuf::from(
        std::env::var("WEFT_KUBE_APISERVER").unwrap_or_else(|_| DEFAULT_APISERVER.into()),
    );
    let etcd = PathBuf::from(std::env::var("WEFT_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into()));
    let missing: Vec<String> = [&apiserver, &etcd]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some((apiserver, etcd));
    }
    let why = format!(
        "missing {} (build kube-apiserver with tests/kube/build-apiserver.sh; etcd is Debian's etcd-server)",
        missing.join(" and ")
    );
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// etcd and kube-apiserver, stopped (killed) on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<String>,
    etcd: Child,
    apiserver: Option<Child>,
    /// `https://IP:PORT`.
    pub url: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut a) = self.apiserver.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| p.display().to_string())?;
    Ok(p)
}

pub fn log_to(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))?
        .into())
}

impl Cluster {
    /// etcd and kube-apiserver on loopback.
    pub fn start(apiserver_bin: &Path, etcd_bin: &Path) -> anyhow::Result<Self> {
        Self::start_on(apiserver_bin, etcd_bin, IpAddr::from([127, 0, 0, 1]))
    }

    /// etcd on loopback and kube-apiserver on `ip` (in the caller's network namespace).
    pub fn start_on(apiserver_bin: &Path, etcd_bin: &Path, ip: IpAddr) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        let dir = tempfile::tempdir()?;
        let d = dir.path();

        // A CA, the API server's serving certificate, the service-account signing key.
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "weft test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;
        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        server_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        if !ip.is_loopback() {
            server_params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        server_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let server = server_params.signed_by(&server_key, &ca, &ca_key)?;
        let sa_key = KeyPair::generate()?;
        let ca_file = write(d, "ca.pem", &ca.pem())?;
        let cert_file = write(d, "apiserver.pem", &server.pem())?;
        let key_file = write(d, "apiserver-key.pem", &server_key.serialize_pem())?;
        let sa_priv = write(d, "sa.key", &sa_key.serialize_pem())?;
        let sa_pub = write(d, "sa.pub", &sa_key.public_key_pem())?;
        // Static tokens: an administrator, and weft's service account by its user name (RBAC
        // matches a ServiceAccount subject by that name).
        let tokens = write(
            d,
            "tokens.csv",
            &format!(
                "{ADMIN_TOKEN},admin,1,\"system:masters\"\n{WEFT_TOKEN},system:serviceaccount:kube-system:weft,2,\"system:serviceaccounts,system:serviceaccounts:kube-system\"\n"
            ),
        )?;

        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd = Command::new(etcd_bin)
            .args([
                "--name=weft-test",
                &format!("--data-dir={}", d.join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-cluster=weft-test=http://127.0.0.1:{peer_port}"),
                "--logger=zap",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log_to(d, "etcd.log")?)
            .stderr(log_to(d, "etcd.log")?)
            .spawn()
            .context("starting etcd")?;

        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            format!("--bind-address={ip}"),
            format!("--advertise-address={ip}"),
            format!("--secure-port={api_port}"),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", d.join("certs").display()),
            format!("--tls-cert-file={}", cert_file.display()),
            format!("--tls-private-key-file={}", key_file.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_priv.display()),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            // Alpha in 1.20: without it a Node keeps only its first podCIDR.
            "--feature-gates=IPv6DualStack=true".into(),
            // No controller manager here to make each namespace's default ServiceAccount.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        let _ = ca_file;
        let mut cluster = Cluster {
            dir,
            apiserver_bin: apiserver_bin.to_owned(),
            apiserver_args,
            etcd,
            apiserver: None,
            url: format!("https://{}", SocketAddr::new(ip, api_port)),
        };
        cluster.start_apiserver()?;
        Ok(cluster)
    }

    pub fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let child = Command::new(&self.apiserver_bin)
            .args(&self.apiserver_args)
            .stdin(Stdio::null())
            .stdout(log_to(d, "apiserver.log")?)
            .stderr(log_to(d, "apiserver.log")?)
            .spawn()
            .context("starting kube-apiserver")?;
        self.apiserver = Some(child);
        Ok(())
    }

    pub fn stop_apiserver(&mut self) {
        if let Some(mut a) = self.apiserver.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- etcd.log\n{}\n--- apiserver.log\n{}",
            tail("etcd.log"),
            tail("apiserver.log")
        )
    }

    /// A kubeconfig file for `token`, read by weft-kube's own client::client.
    pub fn kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let ca = self.dir.path().join("ca.pem");
        write(
            self.dir.path(),
            &format!("{name}.kubeconfig"),
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: test\n    user: {name}\ncurrent-context: {name}\n",
                self.url,
                ca.display()
            ),
        )
    }

    pub async fn client(&self, name: &str, token: &str) -> anyhow::Result<Client> {
        let path = self.kubeconfig(name, token)?;
        Ok(weft_kube::client::client(Some(&path)).await?)
    }

    /// Waits until the API server serves requests and has its bootstrap objects (the
    /// default and kube-system namespaces, RBAC's bootstrap roles).
    pub async fn wait_ready(&mut self, admin: &Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let roles: Api<ClusterRole> = Api::all(admin.clone());
        loop {
            if let Some(a) = self.apiserver.as_mut() {
                if let Some(status) = a.try_wait()? {
                    bail!("kube-apiserver exited: {status}\n{}", self.logs());
                }
            }
            if namespaces
                .get_opt("kube-system")
                .await
                .ok()
                .flatten()
                .is_some()
                && roles
                    .get_opt("cluster-admin")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {START_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Polls `check` until it is true or [`WATCH_TIMEOUT`] has passed.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCH_TIMEOUT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "not within {WATCH_TIMEOUT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn manifest(name: &str) -> Vec<serde_yaml::Value> {
    // Included by the weft-kube crate (kube/) and by the workspace's root crate.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if here.join("deploy").is_dir() {
        here.to_path_buf()
    } else {
        here.join("..")
    };
    let path = root.join("deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).expect("manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Creates `doc` as a `K` (a server-side dry run when `dry`), returning what the server
/// made of it.
pub async fn create<K>(client: &Client, doc: &serde_yaml::Value, dry: bool) -> anyhow::Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj: K = serde_yaml::from_value(doc.clone())?;
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let pp = PostParams {
        dry_run: dry,
        ..Default::default()
    };
    Ok(Api::<K>::namespaced(client.clone(), &ns)
        .create(&pp, &obj)
        .await?)
}

pub async fn create_cluster<K>(
    client: &Client,
    doc: &serde_yaml::Value,
    dry: bool,
) -> anyhow::Result<K>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj: K = serde_yaml::from_value(doc.clone())?;
    let pp = PostParams {
        dry_run: dry,
        ..Default::default()
    };
    Ok(Api::<K>::all(client.clone()).create(&pp, &obj).await?)
}

/// Applies deploy/kubernetes with a server-side dry run (the API server's schema and
/// validation), then for real the parts weft's own identity needs: its ServiceAccount,
/// ClusterRole and binding.
pub async fn apply_manifests(admin: &Client) -> anyhow::Result<()> {
    for doc in manifest("weft.yaml").iter().chain(&manifest("secret.yaml")) {
        let kind = doc["kind"].as_str().unwrap_or_default();
        match kind {
            "ServiceAccount" => {
                create::<ServiceAccount>(admin, doc, true).await?;
                create::<ServiceAccount>(admin, doc, false).await?;
            }
            "ClusterRole" => {
                create_cluster::<ClusterRole>(admin, doc, true).await?;
                create_cluster::<ClusterRole>(admin, doc, false).await?;
            }
            "ClusterRoleBinding" => {
                create_cluster::<ClusterRoleBinding>(admin, doc, true).await?;
                create_cluster::<ClusterRoleBinding>(admin, doc, false).await?;
            }
            "ConfigMap" => {
                create::<ConfigMap>(admin, doc, true).await?;
            }
            "Secret" => {
                create::<Secret>(admin, doc, true).await?;
            }
            "DaemonSet" => {
                let sent: DaemonSet = serde_yaml::from_value(doc.clone())?;
                let got: DaemonSet = create(admin, doc, true)
                    .await
                    .context("DaemonSet dry run")?;
                // 1.20 drops unknown fields silently: what matters must have survived.
                let spec = |d: &DaemonSet| {
                    d.spec
                        .clone()
                        .and_then(|s| s.template.spec)
                        .expect("pod spec")
                };
                let (s, g) = (spec(&sent), spec(&got));
                assert_eq!(g.host_network, Some(true));
                assert_eq!(g.service_account_name, s.service_account_name);
                assert_eq!(
                    g.volumes.as_ref().map(Vec::len),
                    s.volumes.as_ref().map(Vec::len)
                );
                let caps = |c: &k8s_openapi::api::core::v1::Container| {
                    let sc = c.security_context.clone().unwrap_or_default();
                    (
                        sc.privileged,
                        sc.allow_privilege_escalation,
                        sc.capabilities,
                    )
                };
                assert_eq!(caps(&g.containers[0]), caps(&s.containers[0]));
                // Probes, as sent (the server adds defaults such as the scheme).
                let probes = |c: &k8s_openapi::api::core::v1::Container| {
                    [&c.liveness_probe, &c.readiness_probe].map(|p| {
                        p.as_ref()
                            .and_then(|p| p.http_get.clone())
                            .map(|h| (h.host, h.path, h.port))
                    })
                };
                assert_eq!(probes(&g.containers[0]), probes(&s.containers[0]));
                assert!(probes(&g.containers[0]).iter().all(Option::is_some));
                assert_eq!(
                    got.spec.and_then(|s| s.update_strategy),
                    sent.spec.and_then(|s| s.update_strategy)
                );
            }
            other => bail!("unexpected kind {other} in deploy/kubernetes"),
        }
    }
    Ok(())
}

pub fn node(name: &str, ip: &str, cidrs: &[&str]) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"},
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated", "message": "test"}
            ]
        }
    }))
    .expect("a Node")
}
