//! The addresses this node advertises: its gossip address and its WireGuard endpoints.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use ipnet::Ipv4Net;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use weft_gossip::MAX_ENDPOINTS;

/// The host's addresses on interfaces that are up, leaving out loopback and IPv6 link-local
/// ones (useless to other hosts without a scope). IPv4 first, each family sorted.
pub fn host_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for ifa in getifaddrs().context("listing the host's addresses")? {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(sin) = addr.as_sockaddr_in() {
            let ip = sin.ip();
            if !ip.is_loopback() && !ip.is_unspecified() {
                v4.insert(ip);
            }
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let ip = sin6.ip();
            let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
            if !ip.is_loopback() && !ip.is_unspecified() && !link_local {
                v6.insert(ip);
            }
        }
    }
    Ok(v4
        .into_iter()
        .map(IpAddr::V4)
        .chain(v6.into_iter().map(IpAddr::V6))
        .collect())
}

/// What to advertise for a transport bound to `bound`: the gossip address peers reach us
/// at, and our local endpoints. A wildcard bind advertises the host's addresses (of the
/// same family first); a specific one advertises itself.
pub fn advertised(
    bound: SocketAddr,
    host: &[IpAddr],
) -> anyhow::Result<(SocketAddr, Vec<SocketAddr>)> {
    if !bound.ip().is_unspecified() {
        return Ok((bound, vec![bound]));
    }
    let port = bound.port();
    let mut endpoints: Vec<SocketAddr> = host
        .iter()
        .filter(|ip| ip.is_ipv4() == bound.is_ipv4() || bound.is_ipv6())
        .map(|&ip| SocketAddr::new(ip, port))
        .collect();
    endpoints.truncate(MAX_ENDPOINTS);
    let gossip = *endpoints.first().with_context(|| {
        format!("listening on {bound}, but the host has no address other nodes could reach; give --listen ADDR:PORT")
    })?;
    Ok((gossip, endpoints))
}

/// This node's own WireGuard endpoints for a gossip transport bound to `bound`: the bound
/// address (or, on a wildcard, the host's addresses of a usable family) with `wg_port`.
/// Addresses inside the cluster range (the bridge's, after a restart) are left out, and one
/// slot of the record's endpoints is left for the address others observe (NAT).
pub fn wireguard_local(
    bound: SocketAddr,
    host: &[IpAddr],
    wg_port: u16,
    cluster: Ipv4Net,
) -> Vec<SocketAddr> {
    let candidates: Vec<IpAddr> = if bound.ip().is_unspecified() {
        host.iter()
            .filter(|ip| ip.is_ipv4() == bound.is_ipv4() || bound.is_ipv6())
            .copied()
            .collect()
    } else {
        vec![bound.ip()]
    };
    let mut out: Vec<SocketAddr> = candidates
        .into_iter()
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !cluster.contains(v4),
            IpAddr::V6(_) => true,
        })
        .map(|ip| SocketAddr::new(ip, wg_port))
        .collect();
    out.truncate(MAX_ENDPOINTS - 1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_advertise_host_addresses() {
        let host: Vec<IpAddr> = vec![
            "192.0.2.7".parse().expect("ip"),
            "198.51.100.1".parse().expect("ip"),
            "2001:db8::7".parse().expect("ip"),
        ];
        let (gossip, eps) = advertised("0.0.0.0:6783".parse().expect("addr"), &host).expect("ok");
        assert_eq!(gossip, "192.0.2.7:6783".parse().expect("addr"));
        assert_eq!(eps.len(), 2, "{eps:?}");
        let (gossip, eps) = advertised("[::]:6783".parse().expect("addr"), &host).expect("ok");
        assert_eq!(gossip, "192.0.2.7:6783".parse().expect("addr"));
        assert_eq!(eps.len(), 3);
        let fixed: SocketAddr = "203.0.113.5:7000".parse().expect("addr");
        assert_eq!(advertised(fixed, &host).expect("ok"), (fixed, vec![fixed]));
        assert!(advertised("0.0.0.0:1".parse().expect("addr"), &[]).is_err());
    }

    #[test]
    fn wireguard_endpoints_use_the_wireguard_port_and_skip_the_cluster_range() {
        let host: Vec<IpAddr> = vec![
            "192.0.2.7".parse().expect("ip"),
            "10.32.0.1".parse().expect("ip"),
            "2001:db8::7".parse().expect("ip"),
        ];
        let cluster: Ipv4Net = "10.32.0.0/12".parse().expect("net");
        let eps = wireguard_local("0.0.0.0:6783".parse().expect("addr"), &host, 6784, cluster);
        assert_eq!(
            eps,
            vec!["192.0.2.7:6784".parse::<SocketAddr>().expect("addr")]
        );
        let eps = wireguard_local("[::]:6783".parse().expect("addr"), &host, 6784, cluster);
        assert_eq!(eps.len(), 2, "{eps:?}");
        let eps = wireguard_local(
            "203.0.113.5:7000".parse().expect("addr"),
            &host,
            7001,
            cluster,
        );
        assert_eq!(
            eps,
            vec!["203.0.113.5:7001".parse::<SocketAddr>().expect("addr")]
        );
        let many: Vec<IpAddr> = (1..=9).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        let eps = wireguard_local("0.0.0.0:1".parse().expect("addr"), &many, 2, cluster);
        assert_eq!(eps.len(), MAX_ENDPOINTS - 1);
    }

    #[test]
    fn host_addresses_leave_out_loopback() {
        let addrs = host_addresses().expect("getifaddrs");
        assert!(addrs.iter().all(|ip| !ip.is_loopback()), "{addrs:?}");
    }
}
