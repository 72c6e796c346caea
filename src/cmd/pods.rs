//! `weft pods`: the pods the CNI plugin, `weft attach` and Docker (weft's network plugin)
//! attached on this node (container id, or Docker's endpoint id; interface, address, pod
//! namespace and name or container name, labels, who attached it), as a table (or JSON),
//! from the running daemon.

use anyhow::bail;
use std::io::Write;

use super::client::Daemon;
use crate::daemon::api::{Request, Response};
use crate::daemon::pods::{Pod, Source};
use crate::output::{self, OutputFormat};

pub fn show(daemon: Daemon, format: OutputFormat) -> anyhow::Result<()> {
    let pods = match daemon.ask(Request::Pods)? {
        Response::Pods { pods, .. } => pods,
        _ => bail!("the daemon answered a pods request with something else"),
    };
    match format {
        OutputFormat::Json => output::print_json(&pods),
        OutputFormat::Text => {
            let mut out = std::io::stdout().lock();
            write_table(&mut out, &pods)?;
            out.flush()?;
            Ok(())
        }
    }
}

const HEADER: [&str; 7] = [
    "NAMESPACE",
    "POD",
    "CONTAINER",
    "IFNAME",
    "ADDRESS",
    "LABELS",
    "BY",
];

/// Container ids are 64 hex digits; the first 12 tell them apart, as `docker ps` shows them.
const SHORT_ID: usize = 12;

fn row(p: &Pod) -> Vec<String> {
    let dash = || "-".to_string();
    let labels = p
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        p.pod_namespace.clone().unwrap_or_else(dash),
        // A container attached by `weft attach` shows its container name here.
        p.pod_name
            .clone()
            .or_else(|| p.name.clone())
            .unwrap_or_else(dash),
        // Docker's endpoints show their endpoint id; Docker names the interface itself.
        p.endpoint
            .as_deref()
            .unwrap_or(&p.container)
            .chars()
            .take(SHORT_ID)
            .collect(),
        match p.source {
            Source::Docker => dash(),
            _ => p.ifname.clone(),
        },
        p.address
            .map_or_else(|| "(allocating)".into(), |a| a.to_string()),
        if labels.is_empty() { dash() } else { labels },
        match p.source {
            Source::Cni => "cni",
            Source::Attach => "attach",
            Source::Docker => "docker",
        }
        .into(),
    ]
}

fn write_table(out: &mut impl Write, pods: &[Pod]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = pods.iter().map(row).collect();
    output::write_table(out, &HEADER, &rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_table_shows_identity_and_address() {
        let pod = Pod {
            container: "0123456789abcdef0123".into(),
            ifname: "eth0".into(),
            address: Some("10.32.0.5/12".parse().expect("net")),
            network: Some("weft".into()),
            netns: Some("/run/netns/x".into()),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            labels: BTreeMap::from([
                ("app".into(), "web".into()),
                ("tier".into(), "front".into()),
            ]),
            name: None,
            source: Source::Cni,
            ports: Vec::new(),
            endpoint: None,
        };
        let bare = Pod {
            container: "c2".into(),
            ifname: "net1".into(),
            address: None,
            network: None,
            netns: None,
            pod_namespace: None,
            pod_name: None,
            labels: BTreeMap::new(),
            name: Some("db-1".into()),
            source: Source::Attach,
            ports: Vec::new(),
            endpoint: None,
        };
        let docker = Pod {
            container: "docker-00112233aabbccdd".into(),
            ifname: "docker".into(),
            address: Some("10.32.0.9/12".parse().expect("net")),
            network: Some("5c9fd1a2b3c4".into()),
            netns: Some("/var/run/docker/netns/abc".into()),
            pod_namespace: None,
            pod_name: None,
            labels: BTreeMap::new(),
            name: Some("web".into()),
            source: Source::Docker,
            endpoint: Some("feedbeef0123456789".into()),
            ports: Vec::new(),
        };
        let mut out = Vec::new();
        write_table(&mut out, &[pod, bare, docker]).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Docker's: its container name, its endpoint id, no interface name (Docker's own).
        for want in ["web", "feedbeef0123 ", "10.32.0.9/12", "docker"] {
            assert!(lines[3].contains(want), "{want} missing: {text}");
        }
        assert!(!lines[3].contains("docker-0011"), "{text}");
        assert!(lines[0].starts_with("NAMESPACE"), "{text}");
        for want in [
            "default",
            "web-0",
            "0123456789ab ",
            "eth0",
            "10.32.0.5/12",
            "app=web,tier=front",
        ] {
            assert!(lines[1].contains(want), "{want} missing: {text}");
        }
        assert!(
            lines[2].contains("(allocating)") && lines[2].contains("net1"),
            "{text}"
        );
        assert!(
            lines[2].contains("db-1") && lines[2].ends_with("attach"),
            "{text}"
        );
    }
}
