//! The result types of spec section 5 (interfaces, IPs, routes, DNS), written in the shape of
//! each protocol version and read leniently from any of them (a `prevResult`, a delegated IPAM
//! plugin's answer).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, Result};
use crate::version::Version;

/// An interface the attachment made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// Written from 1.1.0 on.
    pub mtu: Option<u32>,
    /// The namespace path for an interface in the container; `None` on the host.
    pub sandbox: Option<String>,
}

/// An address and the index of its interface in [`CniResult::interfaces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its prefix length (`10.32.0.5/12`).
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Absent in a delegated IPAM plugin's result.
    pub interface: Option<usize>,
}

/// A route. The attributes after `gw` are written from 1.1.0 on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    /// 0 global, 253 link, 254 host.
    pub scope: Option<u8>,
}

impl Route {
    pub fn via(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings, as in the config and the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// A success result of ADD (and the `prevResult` of later commands).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// How results are read: every field optional, unknown ones ignored, `null` as absent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResult {
    #[serde(default)]
    interfaces: Option<Vec<WireInterface>>,
    #[serde(default)]
    ips: Option<Vec<WireIp>>,
    #[serde(default)]
    routes: Option<Vec<WireRoute>>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Deserialize)]
struct WireInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct WireIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    advmss: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    scope: Option<u8>,
}

fn prefix(what: &str, text: &str) -> Result<IpNet> {
    text.parse().map_err(|_| {
        CniError::decode(
            format!("{what}: not an address with a prefix length"),
            format!("{:?}", crate::env::clip(text)),
        )
    })
}

fn ip(what: &str, text: Option<&str>) -> Result<Option<IpAddr>> {
    match text {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            CniError::decode(
                format!("{what}: not an IP address"),
                format!("{:?}", crate::env::clip(t)),
            )
        }),
    }
}

impl CniResult {
    /// Reads a result of any supported version (`what` names it in errors: "prevResult", ...).
    pub fn from_value(what: &str, value: &Value) -> Result<CniResult> {
        if !value.is_object() {
            return Err(CniError::decode(
                format!("{what} is not a CNI result"),
                "expected a JSON object",
            ));
        }
        let wire: WireResult = serde_json::from_value(value.clone())
            .map_err(|e| CniError::decode(format!("{what} is not a CNI result"), e.to_string()))?;
        let interfaces = wire
            .interfaces
            .unwrap_or_default()
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac.filter(|m| !m.is_empty()),
                mtu: i.mtu.filter(|m| *m != 0),
                sandbox: i.sandbox.filter(|s| !s.is_empty()),
            })
            .collect::<Vec<_>>();
        let ips = wire
            .ips
            .unwrap_or_default()
            .into_iter()
            .map(|i| {
                Ok(IpConfig {
                    address: prefix(&format!("{what} ips address"), &i.address)?,
                    gateway: ip(&format!("{what} ips gateway"), i.gateway.as_deref())?,
                    interface: i.interface,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(bad) = ips
            .iter()
            .filter_map(|i| i.interface)
            .find(|i| *i >= interfaces.len())
        {
            return Err(CniError::decode(
                format!("{what}: an IP names interface {bad}"),
                format!("there are {} interfaces", interfaces.len()),
            ));
        }
        let routes = wire
            .routes
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                Ok(Route {
                    dst: prefix(&format!("{what} routes dst"), &r.dst)?,
                    gw: ip(&format!("{what} routes gw"), r.gw.as_deref())?,
                    mtu: r.mtu,
                    advmss: r.advmss,
                    priority: r.priority,
                    table: r.table,
                    scope: r.scope,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns: wire.dns.unwrap_or_default(),
        })
    }

    /// The result in the shape of protocol version `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let newest = version >= Version::V1_1_0;
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        let interfaces = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), i.name.clone().into());
                put(&mut m, "mac", i.mac.clone());
                if newest {
                    put(&mut m, "mtu", i.mtu);
                }
                put(&mut m, "sandbox", i.sandbox.clone());
                Value::Object(m)
            })
            .collect::<Vec<_>>();
        out.insert("interfaces".into(), interfaces.into());
        let ips = self
            .ips
            .iter()
            .map(|i| {
                let mut m = Map::new();
                if version.ips_have_family() {
                    let family = if i.address.addr().is_ipv4() { "4" } else { "6" };
                    m.insert("version".into(), family.into());
                }
                m.insert("address".into(), i.address.to_string().into());
                put(&mut m, "gateway", i.gateway.map(|g| g.to_string()));
                put(&mut m, "interface", i.interface);
                Value::Object(m)
            })
            .collect::<Vec<_>>();
        out.insert("ips".into(), ips.into());
        let routes = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), r.dst.to_string().into());
                put(&mut m, "gw", r.gw.map(|g| g.to_string()));
                if newest {
                    put(&mut m, "mtu", r.mtu);
                    put(&mut m, "advmss", r.advmss);
                    put(&mut m, "priority", r.priority);
                    put(&mut m, "table", r.table);
                    put(&mut m, "scope", r.scope);
                }
                Value::Object(m)
            })
            .collect::<Vec<_>>();
        out.insert("routes".into(), routes.into());
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or(Value::Object(Map::new())),
        );
        Value::Object(out)
    }
}

fn put(m: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        m.insert(key.into(), v.into());
    }
}

/// A MAC address as results write it.
pub fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vw0123".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1420),
                    sandbox: None,
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
                gateway: Some("10.32.0.1".parse().expect("ip")),
                interface: Some(1),
            }],
            routes: vec![
                Route::via(
                    "0.0.0.0/0".parse().expect("net"),
                    Some("10.32.0.1".parse().expect("ip")),
                ),
                Route {
                    scope: Some(253),
                    ..Route::via("10.32.0.1/32".parse().expect("net"), None)
                },
            ],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                search: vec!["svc.cluster.local".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn each_version_has_its_shape() {
        let r = sample();
        assert_eq!(
            r.to_json(Version::V0_4_0),
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [
                    {"name": "vw0123", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x"}
                ],
                "ips": [{"version": "4", "address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}, {"dst": "10.32.0.1/32"}],
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
            })
        );
        let v1 = r.to_json(Version::V1_0_0);
        assert!(v1["ips"][0].get("version").is_none(), "{v1}");
        assert!(v1["interfaces"][0].get("mtu").is_none(), "{v1}");
        let v11 = r.to_json(Version::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1420);
        assert_eq!(v11["routes"][1]["scope"], 253);
        assert_eq!(v11["cniVersion"], "1.1.0");
    }

    #[test]
    fn results_read_back_from_every_version() {
        let r = sample();
        for v in crate::version::SUPPORTED {
            let back = CniResult::from_value("prevResult", &r.to_json(v)).expect("read");
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.interfaces.len(), 2);
            assert_eq!(back.dns, r.dns);
            assert_eq!(back.routes.len(), 2);
        }
    }

    #[test]
    fn bad_results_are_decode_errors() {
        for bad in [
            json!([]),
            json!({"ips": [{"address": "10.0.0.1"}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "interface": 3}]}),
            json!({"routes": [{"dst": "nope"}]}),
            json!({"interfaces": [{"mac": "aa"}]}),
            json!({"dns": {"nameservers": "1.1.1.1"}}),
        ] {
            let e = CniResult::from_value("prevResult", &bad).expect_err(&bad.to_string());
            assert_eq!(e.code, crate::error::code::DECODE, "{bad}: {e}");
        }
        let ipam = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}], "routes": null});
        let r = CniResult::from_value("IPAM result", &ipam).expect("IPAM result");
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(mac_text(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }
}
