//! `weft status`: this node's state, asked of the running daemon over its API socket.

use anyhow::bail;

use super::client::Daemon;
use crate::daemon::api::{KubeStatus, Request, Response, Status};
use crate::output::{self, OutputFormat, Report};

impl Report for Status {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let m = &self.members;
        let space = if self.address_space.is_empty() {
            "none yet".to_string()
        } else {
            self.address_space.join(", ")
        };
        vec![
            ("name", self.name.clone()),
            ("node id", self.node_id.clone()),
            ("ready", if self.ready { "yes" } else { "no" }.to_string()),
            ("listen", self.listen.to_string()),
            ("gossip address", self.gossip_addr.to_string()),
            ("record version", self.version.to_string()),
            (
                "members",
                format!(
                    "{} total: {} alive, {} suspect, {} failed, {} stopped, {} left",
                    m.total, m.alive, m.suspect, m.failed, m.stopped, m.left
                ),
            ),
            (
                "peers",
                format!("{} up of {}", self.peers_up, self.peers_total),
            ),
            ("datapath", self.datapath.clone()),
            ("cluster range", self.range.clone()),
            ("address space", space),
            (
                "addresses",
                format!("{} used, {} free", self.addresses_used, self.addresses_free),
            ),
            (
                "gossip",
                format!(
                    "{} sent, {} received, {} send failures, {} messages refused",
                    self.gossip.sent,
                    self.gossip.received,
                    self.gossip.send_failures,
                    self.gossip.messages_refused
                ),
            ),
            (
                "refused nodes",
                refused_nodes(&self.gossip.connections_refused),
            ),
            (
                "fail-closed",
                format!("{} packets dropped", self.fail_closed_drops),
            ),
            (
                "network policy",
                match &self.policy.error {
                    Some(e) => format!("{} policies, error: {e}", self.policy.policies),
                    None => format!(
                        "{} policies, {} rules in force, {} packets dropped",
                        self.policy.policies,
                        self.policy.rules,
                        self.policy.drops.values().sum::<u64>()
                    ),
                },
            ),
            ("uptime", format!("{}s", self.uptime_secs)),
        ]
        .into_iter()
        .chain(
            self.kubernetes
                .as_ref()
                .map(|k| ("kubernetes", kube_line(k))),
        )
        .collect()
    }
}

/// `space from pod CIDR, 3 Nodes, policy from the API (12 pods, 4 namespaces), watches: 4
/// synced, Pod failing (why)`.
fn kube_line(k: &KubeStatus) -> String {
    let policy = if k.policy_synced {
        format!(
            "policy from the API ({} pods, {} namespaces)",
            k.pods, k.namespaces
        )
    } else {
        "policy: waiting for the API's lists".to_string()
    };
    let synced = k.watches.iter().filter(|w| w.synced).count();
    let mut watches = format!("watches: {synced} of {} synced", k.watches.len());
    for w in k.watches.iter().filter(|w| w.failing) {
        watches.push_str(&format!(
            ", {} failing ({})",
            w.kind,
            w.last_error.as_deref().unwrap_or("no answer")
        ));
    }
    format!(
        "space from {}, {} Nodes, {policy}, {watches}",
        k.space_from, k.nodes
    )
}

/// `3 (wrong_secret 2, backoff 1)`, or `none`.
fn refused_nodes(by_reason: &std::collections::BTreeMap<String, u64>) -> String {
    let total: u64 = by_reason.values().sum();
    if total == 0 {
        return "none".to_string();
    }
    let mut reasons: Vec<(&String, &u64)> = by_reason.iter().filter(|(_, n)| **n > 0).collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

pub fn show(daemon: Daemon, format: OutputFormat) -> anyhow::Result<()> {
    match daemon.ask(Request::Status)? {
        Response::Status { status, .. } => output::print(format, &status),
        _ => bail!("the daemon answered a status request with something else"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::{GossipCounters, KubeWatch, MemberCounts};

    fn sample() -> Status {
        Status {
            name: "n0".into(),
            node_id: "AAAA".into(),
            listen: "0.0.0.0:6783".parse().expect("addr"),
            gossip_addr: "192.0.2.1:6783".parse().expect("addr"),
            version: 3,
            range: "10.32.0.0/12".into(),
            members: MemberCounts {
                alive: 3,
                suspect: 1,
                failed: 0,
                left: 1,
                stopped: 2,
                total: 7,
            },
            datapath: "userspace".into(),
            uptime_secs: 42,
            ready: true,
            peers_up: 2,
            peers_total: 3,
            address_space: vec!["10.32.0.0/14".into(), "10.40.0.0/13".into()],
            addresses_used: 5,
            addresses_free: 1019,
            fail_closed_drops: 0,
            datapath_restarts: 0,
            drift_repairs: Default::default(),
            policy: Default::default(),
            kubernetes: None,
            gossip: GossipCounters {
                sent: 10,
                received: 9,
                send_failures: 1,
                messages_refused: 0,
                connections_refused: [("wrong_secret".to_string(), 2), ("backoff".to_string(), 5)]
                    .into_iter()
                    .collect(),
            },
        }
    }

    #[test]
    fn status_text_names_peers_datapath_and_space() {
        let mut out = Vec::new();
        crate::output::write(&mut out, OutputFormat::Text, &sample()).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "ready:          yes",
            "members:        7 total: 3 alive, 1 suspect, 0 failed, 2 stopped, 1 left",
            "peers:          2 up of 3",
            "datapath:       userspace",
            "address space:  10.32.0.0/14, 10.40.0.0/13",
            "addresses:      5 used, 1019 free",
            "refused nodes:  7 (backoff 5, wrong_secret 2)",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let mut empty = sample();
        empty.address_space.clear();
        empty.gossip.connections_refused.insert("backoff".into(), 0);
        empty
            .gossip
            .connections_refused
            .insert("wrong_secret".into(), 0);
        assert!(empty
            .fields()
            .contains(&("refused nodes", "none".to_string())));
        assert!(empty
            .fields()
            .contains(&("address space", "none yet".to_string())));
        assert!(!empty.fields().iter().any(|(k, _)| *k == "kubernetes"));
    }

    #[test]
    fn status_text_on_kubernetes_names_the_sources_and_failing_watches() {
        let watch = |kind: &str, failing: bool| KubeWatch {
            kind: kind.into(),
            synced: true,
            failing,
            errors: u64::from(failing),
            last_error: failing.then(|| "connection refused".to_string()),
        };
        let mut s = sample();
        s.kubernetes = Some(KubeStatus {
            space_from: "pod CIDR".into(),
            nodes: 3,
            policy_synced: true,
            pods: 12,
            namespaces: 4,
            watches: vec![watch("Node", false), watch("Pod", true)],
        });
        let line = s
            .fields()
            .into_iter()
            .find(|(k, _)| *k == "kubernetes")
            .map(|(_, v)| v)
            .expect("kubernetes line");
        assert_eq!(
            line,
            "space from pod CIDR, 3 Nodes, policy from the API (12 pods, 4 namespaces), \
             watches: 2 of 2 synced, Pod failing (connection refused)"
        );
    }
}
