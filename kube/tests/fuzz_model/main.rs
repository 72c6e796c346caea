//! Fuzz target for what weft-kube reads from the API server: Nodes (addresses, pod CIDRs)
//! and Pods (IPs, ports, phase), built from arbitrary strings and numbers, and raw JSON
//! bytes as objects. Any input gives seeds, CIDRs or identities that keep their invariants,
//! or an error, never a panic.
//!
//! Runs a few thousand random inputs under `cargo test`; for a real fuzzing session:
//! `cargo bolero test --test fuzz_model -p weft-kube nodes` (or `pods`).

use std::net::IpAddr;

use bolero::check;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use weft_kube::model;

const ADDRESS_TYPES: [&str; 4] = ["InternalIP", "ExternalIP", "Hostname", "InternalDNS"];

#[test]
fn nodes() {
    check!()
        .with_type::<(Vec<(u8, String)>, Option<String>, Vec<String>, Vec<u8>)>()
        .for_each(|(addrs, single, list, raw)| {
            let addresses: Vec<_> = addrs
                .iter()
                .map(|(t, a)| json!({"type": ADDRESS_TYPES[usize::from(*t) % 4], "address": a}))
                .collect();
            let built = serde_json::from_value::<Node>(json!({
                "metadata": {"name": "fuzzed"},
                "spec": {"podCIDR": single, "podCIDRs": list},
                "status": {"addresses": addresses}
            }));
            for node in built.into_iter().chain(serde_json::from_slice::<Node>(raw)) {
                for seed in model::seeds([&node], "someone-else", 6783) {
                    assert_eq!(seed.port(), 6783);
                    assert!(!seed.ip().is_unspecified());
                    assert!(model::node_addresses(&node).contains(&seed.ip()));
                }
                assert!(
                    model::seeds([&node], "fuzzed", 6783).is_empty()
                        || node.metadata.name.as_deref() != Some("fuzzed")
                );
                if let Ok(cidrs) = model::pod_cidrs(&node) {
                    assert!(cidrs.len() <= 2);
                    assert!(cidrs.iter().all(|c| c.trunc() == *c));
                    assert!(cidrs.iter().filter(|c| c.addr().is_ipv4()).count() <= 1);
                }
            }
        });
}

#[test]
fn pods() {
    check!()
        .with_type::<(Vec<String>, Vec<(Option<String>, i32, Option<String>)>, Option<String>, Vec<u8>)>()
        .for_each(|(ips, ports, phase, raw)| {
            let pod_ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
            let ports: Vec<_> = ports
                .iter()
                .map(|(name, port, proto)| json!({"name": name, "containerPort": port, "protocol": proto}))
                .collect();
            let built = serde_json::from_value::<Pod>(json!({
                "metadata": {"name": "p", "namespace": "n"},
                "spec": {"containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": phase, "podIP": ips.first(), "podIPs": pod_ips}
            }));
            let from_raw = serde_json::from_slice::<Pod>(raw).ok().map(|p| (p, false));
            for (pod, built) in built.ok().map(|p| (p, true)).into_iter().chain(from_raw) {
                let Some(id) = model::pod_identity(&pod) else {
                    continue;
                };
                if built {
                    for ip in &id.ips {
                        assert!(ips.iter().any(|s| s.trim().parse::<IpAddr>().ok() == Some(*ip)));
                    }
                }
                for p in &id.ports {
                    assert!(p.port != 0 && !p.name.is_empty());
                }
                let mut sorted = id.ports.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted, id.ports);
            }
        });
}
