//! The Node's `NetworkUnavailable` condition.
//!
//! Nodes on clouds start with `NetworkUnavailable=True` (the cloud's route controller sets
//! it) and the scheduler keeps pods off them until the network plugin says otherwise. Like
//! other plugins (Calico, Flannel, Cilium), weft sets it to False once the node's datapath is
//! up. A strategic-merge patch of `status.conditions` merges by `type`, so the kubelet's own
//! conditions (Ready, MemoryPressure, ...) are left as they are; `nodes/status` `patch` is the
//! only write weft's ClusterRole grants.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::Result;

/// The condition's type.
pub const CONDITION: &str = "NetworkUnavailable";
/// The reason weft gives when the network is up.
pub const REASON: &str = "WeftIsUp";

/// The strategic-merge patch that sets `NetworkUnavailable=False` as of `now`.
pub fn network_available_patch(now: Timestamp) -> Value {
    let time = Time(now);
    json!({
        "status": {
            "conditions": [{
                "type": CONDITION,
                "status": "False",
                "reason": REASON,
                "message": "weft is running on this node",
                "lastTransitionTime": time,
                "lastHeartbeatTime": time,
            }]
        }
    })
}

/// Sets `NetworkUnavailable=False` on Node `node` (patch on `nodes/status`).
pub async fn set_network_available(client: Client, node: &str) -> Result<Node> {
    let api: Api<Node> = Api::all(client);
    let patch = network_available_patch(Timestamp::now());
    Ok(api
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await?)
}

/// Whether `node` has `NetworkUnavailable=False` in its status.
pub fn network_available(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == CONDITION && c.status == "False")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_only_the_network_condition_by_type() {
        let now: Timestamp = "2024-01-02T03:04:05Z".parse().expect("timestamp");
        let patch = network_available_patch(now);
        let conditions = patch["status"]["conditions"].as_array().expect("list");
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["type"], CONDITION);
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[0]["lastTransitionTime"], "2024-01-02T03:04:05Z");
        // It reads back as a Node whose network is available.
        let node: Node = serde_json::from_value(patch).expect("a Node");
        assert!(network_available(&node));
        assert!(!network_available(&Node::default()));
    }
}
