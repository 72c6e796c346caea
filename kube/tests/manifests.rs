//! deploy/kubernetes/*.yaml parse as the Kubernetes objects they claim to be (serde_yaml into
//! k8s-openapi's types), and the fields that matter are what they must be: least-privilege
//! RBAC, no privileged container, probes on the metrics endpoint, a rolling update that takes
//! one node down at a time, the host paths. (tests/apiserver.rs also applies them to a real
//! API server with a server-side dry run.)

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

fn manifest(name: &str) -> Vec<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &serde_yaml::Value) -> &str {
    doc["kind"].as_str().expect("every document has a kind")
}

fn typed<T: serde::de::DeserializeOwned>(doc: &serde_yaml::Value) -> T {
    serde_yaml::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse as itself: {e}", kind(doc)))
}

fn find<'a>(docs: &'a [serde_yaml::Value], k: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| kind(d) == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

struct Objects {
    account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    daemonset: DaemonSet,
}

fn objects() -> Objects {
    let docs = manifest("weft.yaml");
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
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
    let _: ConfigMap = typed(find(&docs, "ConfigMap"));
    Objects {
        account: typed(find(&docs, "ServiceAccount")),
        role: typed(find(&docs, "ClusterRole")),
        binding: typed(find(&docs, "ClusterRoleBinding")),
        daemonset: typed(find(&docs, "DaemonSet")),
    }
}

#[test]
fn rbac_is_read_only_except_patching_node_status() {
    let o = objects();
    let mut granted = BTreeSet::new();
    for rule in o.role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "wildcard verb");
                    assert_ne!(resource, "*", "wildcard resource");
                    granted.insert(format!("{verb} {group}/{resource}"));
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for resource in [
        "/nodes",
        "/pods",
        "/namespaces",
        "networking.k8s.io/networkpolicies",
    ] {
        for verb in ["get", "list", "watch"] {
            wanted.insert(format!("{verb} {resource}"));
        }
    }
    wanted.insert("patch /nodes/status".to_owned());
    assert_eq!(granted, wanted);

    // Bound to the DaemonSet's own account, nothing else.
    assert_eq!(o.binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&o.binding.role_ref.name),
        o.role.metadata.name.as_ref()
    );
    let subjects = o.binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), o.account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, o.account.metadata.namespace);
    let spec = o
        .daemonset
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(spec.service_account_name, o.account.metadata.name);
    assert_eq!(
        o.daemonset.metadata.namespace, o.account.metadata.namespace,
        "the DaemonSet runs in its account's namespace"
    );
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn daemonset_runs_everywhere_unprivileged_with_probes_and_one_node_down_at_a_time() {
    let ds = objects().daemonset.spec.expect("spec");
    let update = ds.update_strategy.expect("updateStrategy");
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    let rolling = update.rolling_update.expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert!(
        rolling.max_surge.is_none() || rolling.max_surge == Some(IntOrString::Int(0)),
        "two weft pods on one node would fight over its datapath"
    );
    let spec = ds.template.spec.expect("pod spec");
    assert_eq!(spec.host_network, Some(true));
    let tolerations = spec.tolerations.expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );

    let weft = container(&spec.containers, "weft");
    let sc = weft.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));

    for (probe, path) in [
        (&weft.liveness_probe, "/healthz"),
        (&weft.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no httpGet probe for {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(6782));
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
    }
    let script = weft
        .command
        .as_ref()
        .and_then(|c| c.last())
        .expect("command");
    assert!(script.contains("--metrics-addr 127.0.0.1:6782"), "{script}");
    // The Node's name from the downward API (weft's --node-name reads NODE_NAME) and the
    // cluster's pod CIDR as the range; no seed is needed (the Nodes are the seeds).
    assert!(script.contains("--range \"$WEFT_RANGE\""), "{script}");
    let env = weft.env.as_ref().expect("env");
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));

    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let res = c
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no resources", c.name));
        let requests = res.requests.as_ref().expect("requests");
        assert!(
            requests.contains_key("cpu") && requests.contains_key("memory"),
            "{}",
            c.name
        );
        assert!(
            res.limits
                .as_ref()
                .is_some_and(|l| l.contains_key("memory")),
            "{}: no memory limit",
            c.name
        );
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_ne!(sc.privileged, Some(true), "{} privileged", c.name);
    }

    // Volumes: host paths and where they are mounted.
    let volumes = spec.volumes.expect("volumes");
    let host_path = |name: &str| {
        let v = volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let hp = v
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("{name} not a hostPath"));
        (hp.path.as_str(), hp.type_.as_deref())
    };
    assert_eq!(host_path("tun"), ("/dev/net/tun", Some("CharDevice")));
    assert_eq!(host_path("state").0, "/var/lib/weft");
    assert_eq!(host_path("run").0, "/run/weft");
    assert_eq!(host_path("cni-bin").0, "/opt/cni/bin");
    assert_eq!(host_path("cni-conf").0, "/etc/cni/net.d");
    let secret = volumes
        .iter()
        .find(|v| v.name == "secret")
        .and_then(|v| v.secret.as_ref())
        .expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("weft-secret"));
    assert_eq!(secret.default_mode, Some(0o400));

    let mounts = |c: &Container| -> Vec<(String, String)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    };
    let main = mounts(weft);
    for (name, path) in [
        ("tun", "/dev/net/tun"),
        ("state", "/var/lib/weft"),
        ("run", "/run/weft"),
        ("secret", "/etc/weft"),
    ] {
        assert!(
            main.contains(&(name.into(), path.into())),
            "weft lacks {name} at {path}"
        );
    }
    // The init container installs weft-cni and the conflist into the host's CNI directories.
    let init = container(
        spec.init_containers.as_deref().expect("initContainers"),
        "install",
    );
    let init_mounts = mounts(init);
    for (name, path) in [
        ("cni-bin", "/host/opt/cni/bin"),
        ("cni-conf", "/host/etc/cni/net.d"),
    ] {
        assert!(
            init_mounts.contains(&(name.into(), path.into())),
            "install lacks {name}"
        );
    }
    let script = init
        .command
        .as_ref()
        .and_then(|c| c.last())
        .expect("command");
    assert!(script.contains("/host/opt/cni/bin/weft"), "{script}");
    assert!(
        script.contains("/host/etc/cni/net.d/10-weft.conflist"),
        "{script}"
    );
}

#[test]
fn secret_template_is_the_secret_the_daemonset_mounts() {
    let docs = manifest("secret.yaml");
    assert_eq!(docs.len(), 1);
    let secret: Secret = typed(&docs[0]);
    assert_eq!(secret.metadata.name.as_deref(), Some("weft-secret"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("kube-system"));
    assert!(secret
        .string_data
        .expect("stringData")
        .contains_key("secret"));
}
