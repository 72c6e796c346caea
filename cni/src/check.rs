//! CHECK's comparison (pure): the container's interface, addresses and routes and the host
//! end of the veth, as the kernel has them, against the `prevResult` of the ADD.

use std::path::Path;

use ipnet::IpNet;
use weft_mesh::attach::{HostEnd, Observed};

use crate::error::{code, CniError, Result};
use crate::types::{mac_text, CniResult};

fn failed(msg: String, details: impl Into<String>) -> CniError {
    CniError::new(code::CHECK_FAILED, msg, details)
}

/// The index of the container interface `ifname` in `netns` among `prev`'s interfaces.
pub fn container_interface(prev: &CniResult, netns: &Path, ifname: &str) -> Result<usize> {
    let netns = netns.to_string_lossy();
    prev.interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(&*netns))
        .ok_or_else(|| {
            failed(
                format!("prevResult has no interface {ifname} in {netns}"),
                "CHECK needs the result of this attachment's ADD",
            )
        })
}

/// Compares what is there with `prev`: the interface's MAC, MTU (if the result has them) and
/// state, every address the result gives it, every IPv4 route of the result, and the host end
/// on `bridge`. Routes another plugin of the chain added are in the result too, so they are
/// checked like weft's; IPv6 routes are not weft's and are left out.
pub fn verify(
    prev: &CniResult,
    netns: &Path,
    ifname: &str,
    observed: &Observed,
    host: Option<&HostEnd>,
    bridge: &str,
) -> Result<()> {
    let index = container_interface(prev, netns, ifname)?;
    let expected = &prev.interfaces[index];
    let link = &observed.link;
    if let Some(mac) = &expected.mac {
        let actual = link.mac.map(|m| mac_text(&m)).unwrap_or_default();
        if !mac.eq_ignore_ascii_case(&actual) {
            return Err(failed(
                format!("{ifname} has MAC {actual}, not {mac}"),
                "the interface was changed or replaced after ADD",
            ));
        }
    }
    if let (Some(want), Some(have)) = (expected.mtu, link.mtu) {
        if want != have {
            return Err(failed(format!("{ifname} has MTU {have}, not {want}"), ""));
        }
    }
    if !link.up {
        return Err(failed(format!("{ifname} is down"), ""));
    }
    for ip in prev.ips.iter().filter(|i| i.interface == Some(index)) {
        let present = match ip.address {
            IpNet::V4(a) => observed.addresses.contains(&a),
            IpNet::V6(_) => false,
        };
        if !present {
            return Err(failed(
                format!("{ifname} lacks its address {}", ip.address),
                format!(
                    "it has [{}]",
                    observed
                        .addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    for route in &prev.routes {
        let IpNet::V4(dst) = route.dst else {
            continue;
        };
        let gw = match route.gw {
            Some(std::net::IpAddr::V4(g)) => Some(g),
            Some(std::net::IpAddr::V6(_)) => continue,
            None => None,
        };
        let found = observed
            .routes
            .iter()
            .any(|r| r.dst == dst.trunc() && (gw.is_none() || r.gateway == gw));
        if !found {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(failed(
                format!("the route to {dst}{via} is missing in the container"),
                "",
            ));
        }
    }
    match host {
        None => Err(failed(
            "the host end of the veth is missing".into(),
            "the attachment was taken apart on the host",
        )),
        Some(h) if h.bridge.as_deref() != Some(bridge) => Err(failed(
            format!("{} is not on bridge {bridge}", h.link.name),
            format!("its bridge: {}", h.bridge.as_deref().unwrap_or("none")),
        )),
        Some(h) if !h.link.up => Err(failed(format!("{} is down", h.link.name), "")),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use weft_mesh::attach::{Link, RouteInfo};

    use super::*;
    use crate::types::{Interface, IpConfig, Route};

    fn prev() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vw1".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1420),
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.32.0.5/12".parse().expect("net"),
                gateway: Some("10.32.0.0".parse().expect("ip")),
                interface: Some(1),
            }],
            routes: vec![
                Route::via(
                    "10.32.0.0/12".parse().expect("net"),
                    Some("10.32.0.0".parse().expect("ip")),
                ),
                Route::via(
                    "0.0.0.0/0".parse().expect("net"),
                    Some("10.32.0.0".parse().expect("ip")),
                ),
            ],
            ..CniResult::default()
        }
    }

    fn observed() -> Observed {
        let route = |dst: &str, gw: Option<&str>| RouteInfo {
            dst: dst.parse().expect("net"),
            gateway: gw.map(|g| g.parse().expect("ip")),
            oif: Some(2),
            scope: 0,
        };
        Observed {
            link: Link {
                name: "eth0".into(),
                index: 2,
                mac: Some([2, 0, 0, 0, 0, 2]),
                mtu: Some(1420),
                up: true,
            },
            addresses: vec!["10.32.0.5/12".parse().expect("net")],
            routes: vec![
                route("10.32.0.0/32", None),
                route("10.32.0.0/12", Some("10.32.0.0")),
                route("0.0.0.0/0", Some("10.32.0.0")),
            ],
        }
    }

    fn host() -> HostEnd {
        HostEnd {
            link: Link {
                name: "vw1".into(),
                index: 9,
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: Some(1420),
                up: true,
            },
            bridge: Some("weft".into()),
        }
    }

    fn check(prev: &CniResult, o: &Observed, h: Option<&HostEnd>) -> Result<()> {
        verify(prev, Path::new("/run/netns/x"), "eth0", o, h, "weft")
    }

    #[test]
    fn a_matching_attachment_passes_and_each_difference_fails() {
        let h = host();
        check(&prev(), &observed(), Some(&h)).expect("matches");
        let mut cases: Vec<(Observed, Option<HostEnd>, &str)> = Vec::new();
        let mut o = observed();
        o.link.mac = Some([2, 0, 0, 0, 0, 9]);
        cases.push((o, Some(host()), "MAC"));
        let mut o = observed();
        o.link.mtu = Some(1500);
        cases.push((o, Some(host()), "MTU"));
        let mut o = observed();
        o.link.up = false;
        cases.push((o, Some(host()), "down"));
        let mut o = observed();
        o.addresses = vec!["10.32.0.6/12".parse().expect("net")];
        cases.push((o, Some(host()), "10.32.0.5/12"));
        let mut o = observed();
        o.routes.retain(|r| r.dst.prefix_len() != 0);
        cases.push((o, Some(host()), "0.0.0.0/0"));
        let mut o = observed();
        o.routes[1].gateway = Some("10.32.0.9".parse().expect("ip"));
        cases.push((o, Some(host()), "10.32.0.0/12"));
        cases.push((observed(), None, "host end"));
        let mut off = host();
        off.bridge = None;
        cases.push((observed(), Some(off), "not on bridge"));
        for (o, h, want) in cases {
            let e = check(&prev(), &o, h.as_ref()).expect_err(want);
            assert_eq!(e.code, code::CHECK_FAILED, "{want}: {e}");
            assert!(e.msg.contains(want), "{want}: {e}");
        }
        let e = verify(
            &prev(),
            Path::new("/run/netns/y"),
            "eth0",
            &observed(),
            Some(&h),
            "weft",
        )
        .expect_err("other namespace");
        assert!(e.msg.contains("prevResult"), "{e}");
    }
}
