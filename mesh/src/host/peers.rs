//! One WireGuard peer per other node, from the gossip view: the pure diff between what the
//! device has ([`DeviceStatus`]) and what the view says, as one [`DeviceConfig`] change that
//! either backend applies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use weft_crypto::WgPublicKey;

use super::model::HostState;
use crate::config::{DeviceConfig, DeviceStatus, PeerConfig};

/// Another node's WireGuard peer as it should be (see [`crate::paths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePeer {
    pub public_key: WgPublicKey,
    /// The endpoint to use; `None` leaves the device's as it is (a working tunnel keeps the
    /// endpoint WireGuard roamed to).
    pub endpoint: Option<SocketAddr>,
    /// The address spaces routed to this peer: its own, plus those of the nodes relayed
    /// through it; empty for a node reached through a relay.
    pub spaces: Vec<IpNet>,
}

/// The change that makes the device's peers match the view: a peer per other node (the local
/// key and duplicates are skipped; a key listed twice gets the union of spaces), allowed IPs
/// exactly the node's spaces that `routed` accepted (see [`HostState::add_peer_space`]; a
/// refused space gets neither route nor allowed IP), the endpoint set where the device's
/// differs from the wanted one, and peers of nodes no longer in the view removed. Peers already right are not mentioned, so
/// `peers` is empty when there is nothing to do.
pub fn plan_peers(
    local_key: &WgPublicKey,
    view: &[NodePeer],
    routed: &HostState,
    device: &DeviceStatus,
    persistent_keepalive: Option<u16>,
) -> DeviceConfig {
    let accepted = |space: &IpNet| {
        routed
            .routes
            .iter()
            .any(|r| r.dst == space.trunc() && r.dev == routed.wg_ifname)
    };
    let mut wanted: BTreeMap<WgPublicKey, NodePeer> = BTreeMap::new();
    for node in view.iter().filter(|n| n.public_key != *local_key) {
        wanted
            .entry(node.public_key)
            .and_modify(|w| w.spaces.extend(node.spaces.iter().copied()))
            .or_insert_with(|| node.clone());
    }
    let mut peers = Vec::new();
    for (key, node) in &wanted {
        let current = device.peers.iter().find(|p| p.public_key == *key);
        let want_ips: BTreeSet<IpNet> = node
            .spaces
            .iter()
            .filter(|n| accepted(n))
            .map(|n| n.trunc())
            .collect();
        let have_ips: BTreeSet<IpNet> = current
            .map(|p| p.allowed_ips.iter().map(|n| n.trunc()).collect())
            .unwrap_or_default();
        let endpoint = node
            .endpoint
            .filter(|e| current.and_then(|p| p.endpoint) != Some(*e));
        let keepalive_differs = match (persistent_keepalive, current) {
            (Some(k), Some(p)) => p.persistent_keepalive.unwrap_or(0) != k,
            _ => false,
        };
        if current.is_some() && want_ips == have_ips && endpoint.is_none() && !keepalive_differs {
            continue;
        }
        let mut change = PeerConfig::new(*key);
        change.endpoint = endpoint;
        change.persistent_keepalive = persistent_keepalive;
        change.allowed_ips = want_ips.into_iter().collect();
        change.replace_allowed_ips = true;
        peers.push(change);
    }
    for stale in device
        .peers
        .iter()
        .filter(|p| !wanted.contains_key(&p.public_key))
    {
        let mut change = PeerConfig::new(stale.public_key);
        change.remove = true;
        peers.push(change);
    }
    DeviceConfig {
        peers,
        ..DeviceConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::config::PeerStatus;

    fn key(n: u8) -> WgPublicKey {
        WgPublicKey([n; 32])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn node(n: u8, endpoint: Option<&str>, space: &str) -> NodePeer {
        NodePeer {
            public_key: key(n),
            endpoint: endpoint.map(addr),
            spaces: vec![space.parse().expect("test prefix")],
        }
    }

    fn status(n: u8, endpoint: Option<&str>, space: &str) -> PeerStatus {
        PeerStatus {
            public_key: key(n),
            preshared_key: None,
            endpoint: endpoint.map(addr),
            persistent_keepalive: None,
            allowed_ips: vec![space.parse().expect("test prefix")],
            last_handshake: Some(SystemTime::now()),
            rx_bytes: 0,
            tx_bytes: 0,
            protocol_version: 1,
        }
    }

    /// The host state that routes every valid space of `view`.
    fn routed(view: &[NodePeer]) -> HostState {
        let mut state = HostState::new(
            super::super::model::BridgeSpec {
                name: "weft".into(),
                gateway: "10.32.0.1/24".parse().expect("prefix"),
                mtu: 1420,
            },
            "weft-wg",
            ["10.32.0.0/12".parse().expect("prefix")],
            ["10.32.0.0/24".parse().expect("prefix")],
        );
        for space in view.iter().flat_map(|n| n.spaces.iter()) {
            let _ = state.add_peer_space(*space);
        }
        state
    }

    fn device(peers: Vec<PeerStatus>) -> DeviceStatus {
        DeviceStatus {
            private_key: None,
            public_key: Some(key(0)),
            listen_port: 51820,
            fwmark: None,
            peers,
        }
    }

    #[test]
    fn one_peer_per_other_node_and_none_for_self() {
        let view = [
            node(0, Some("192.0.2.1:51820"), "10.32.0.0/24"),
            node(1, Some("192.0.2.2:51820"), "10.32.1.0/24"),
            node(2, Some("192.0.2.3:51820"), "10.32.2.0/24"),
        ];
        let change = plan_peers(&key(0), &view, &routed(&view), &device(vec![]), Some(25));
        let keys: Vec<_> = change.peers.iter().map(|p| p.public_key).collect();
        assert_eq!(keys, vec![key(1), key(2)]);
        let p = &change.peers[0];
        assert_eq!(p.endpoint, Some(addr("192.0.2.2:51820")));
        assert_eq!(
            p.allowed_ips,
            vec!["10.32.1.0/24".parse::<IpNet>().expect("prefix")]
        );
        assert!(p.replace_allowed_ips && !p.remove);
        assert_eq!(p.persistent_keepalive, Some(25));
    }

    #[test]
    fn matching_device_needs_no_change_and_gone_nodes_are_removed() {
        let view = [node(1, Some("192.0.2.2:51820"), "10.32.1.0/24")];
        let dev = device(vec![
            status(1, Some("192.0.2.2:51820"), "10.32.1.0/24"),
            status(9, Some("192.0.2.9:51820"), "10.32.9.0/24"),
        ]);
        let change = plan_peers(&key(0), &view, &routed(&view), &dev, None);
        assert_eq!(change.peers.len(), 1);
        assert_eq!(change.peers[0].public_key, key(9));
        assert!(change.peers[0].remove);

        let dev = device(vec![status(1, Some("192.0.2.2:51820"), "10.32.1.0/24")]);
        assert!(plan_peers(&key(0), &view, &routed(&view), &dev, None)
            .peers
            .is_empty());
    }

    #[test]
    fn new_space_replaces_allowed_ips_and_no_endpoint_keeps_the_roamed_one() {
        let view = [node(1, None, "10.32.4.0/24")];
        let dev = device(vec![status(1, Some("198.51.100.7:40000"), "10.32.1.0/24")]);
        let change = plan_peers(&key(0), &view, &routed(&view), &dev, None);
        assert_eq!(change.peers.len(), 1);
        assert_eq!(change.peers[0].endpoint, None);
        assert_eq!(
            change.peers[0].allowed_ips,
            vec!["10.32.4.0/24".parse::<IpNet>().expect("prefix")]
        );
    }

    #[test]
    fn a_different_wanted_endpoint_is_set() {
        let view = [node(1, Some("203.0.113.2:51820"), "10.32.1.0/24")];
        let dev = device(vec![status(1, Some("192.0.2.2:51820"), "10.32.1.0/24")]);
        let change = plan_peers(&key(0), &view, &routed(&view), &dev, None);
        assert_eq!(change.peers.len(), 1);
        assert_eq!(change.peers[0].endpoint, Some(addr("203.0.113.2:51820")));
    }

    #[test]
    fn refused_spaces_get_no_allowed_ips() {
        // Node 2 claims our own space and everything: neither reaches its allowed IPs.
        let mut greedy = node(2, Some("192.0.2.3:51820"), "10.32.0.0/24");
        greedy.spaces.push("0.0.0.0/0".parse().expect("prefix"));
        greedy.spaces.push("10.32.2.0/24".parse().expect("prefix"));
        let view = [node(1, Some("192.0.2.2:51820"), "10.32.1.0/24"), greedy];
        let change = plan_peers(&key(0), &view, &routed(&view), &device(vec![]), None);
        assert_eq!(change.peers.len(), 2);
        assert_eq!(
            change.peers[1].allowed_ips,
            vec!["10.32.2.0/24".parse::<IpNet>().expect("prefix")]
        );
    }
}
