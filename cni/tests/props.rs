//! Property tests of weft-cni's parsers against simple oracles: which container ids, interface
//! names, MTUs and nameservers are accepted; that pod identity survives CNI_ARGS; that a known
//! key of the wrong JSON type is a decode error (6); that results round-trip through every
//! protocol version.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::{json, Value};
use weft_cni::env::{self, AttachmentId};
use weft_cni::error::code;
use weft_cni::request::{self, Request};
use weft_cni::types::{CniResult, Dns, Interface, IpConfig, Route};
use weft_cni::version::{Version, SUPPORTED};

fn add_vars(id: &str, ifname: &str, args: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn parse_conf(conf: &Value) -> Result<Request, weft_cni::CniError> {
    request::parse(&add_vars("c1", "eth0", ""), conf.to_string().as_bytes())
}

fn base() -> Value {
    json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft"})
}

/// The spec's container id rule, written out plainly.
fn container_id_oracle(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= env::MAX_CONTAINER_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn ifname_oracle(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':')
}

fn label_part() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?"
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, p)| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), p).expect("prefix")),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, p)| IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), p).expect("prefix")),
    ]
}

fn result() -> impl Strategy<Value = CniResult> {
    let iface = (
        "[a-z0-9]{1,15}",
        proptest::option::of("[0-9a-f:]{17}"),
        proptest::option::of(68u32..9000),
        proptest::option::of("/[a-z/]{1,30}"),
    )
        .prop_map(|(name, mac, mtu, sandbox)| Interface {
            name,
            mac,
            mtu,
            sandbox,
        });
    (
        proptest::collection::vec(iface, 1..4),
        proptest::collection::vec(
            (net(), proptest::option::of(any::<Ipv4Addr>()), any::<u8>()),
            0..4,
        ),
        proptest::collection::vec(
            (
                net(),
                proptest::option::of(any::<Ipv4Addr>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(prop_oneof![Just(0u8), Just(253u8), Just(254u8)]),
            ),
            0..4,
        ),
        proptest::collection::vec("[a-z.]{1,20}", 0..3),
    )
        .prop_map(|(interfaces, ips, routes, search)| {
            let n = interfaces.len();
            CniResult {
                ips: ips
                    .into_iter()
                    .map(|(address, gateway, i)| IpConfig {
                        address,
                        gateway: gateway.map(IpAddr::V4),
                        interface: Some(usize::from(i) % n),
                    })
                    .collect(),
                routes: routes
                    .into_iter()
                    .map(|(dst, gw, mtu, scope)| Route {
                        mtu,
                        scope,
                        ..Route::via(dst, gw.map(IpAddr::V4))
                    })
                    .collect(),
                interfaces,
                dns: Dns {
                    nameservers: vec!["10.96.0.10".into()],
                    search,
                    ..Dns::default()
                },
            }
        })
}

proptest! {
    #[test]
    fn container_ids_are_taken_as_the_spec_says(id in "[ -~]{0,12}|[a-zA-Z0-9_.-]{190,210}") {
        let got = env::parse(&add_vars(&id, "eth0", ""));
        prop_assert_eq!(got.is_ok(), container_id_oracle(&id), "{:?}: {:?}", id, got);
        if let Err(e) = got {
            prop_assert_eq!(e.code, code::INVALID_ENV);
            prop_assert!(e.msg.contains("CNI_CONTAINERID"));
        }
    }

    #[test]
    fn interface_names_are_taken_as_the_kernel_does(name in "\\PC{0,17}") {
        let got = env::parse(&add_vars("c1", &name, ""));
        prop_assert_eq!(got.is_ok(), ifname_oracle(&name), "{:?}: {:?}", name, got);
        if let Ok(e) = got {
            let id = e.attachment.expect("attachment");
            prop_assert_eq!(id.key(), format!("c1/{name}"));
        }
    }

    #[test]
    fn pod_identity_survives_cni_args(
        ns in label_part(),
        name in label_part(),
        labels in proptest::collection::btree_map(label_part(), proptest::option::of(label_part()), 0..6),
        noise in proptest::collection::vec(("[A-Z_]{1,12}", "[a-zA-Z0-9=,./-]{0,12}"), 0..4),
    ) {
        let labels: BTreeMap<String, String> = labels.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
        let text = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let mut pairs: Vec<String> = noise.iter().filter(|(k, _)| !k.starts_with("K8S_POD_")).map(|(k, v)| format!("{k}={v}")).collect();
        pairs.push(format!("K8S_POD_NAMESPACE={ns}"));
        pairs.push(format!("K8S_POD_NAME={name}"));
        pairs.push(format!("weft.labels={text}"));
        let parsed = env::parse_args(&pairs.join(";")).expect("valid CNI_ARGS");
        prop_assert_eq!(parsed.namespace, Some(ns));
        prop_assert_eq!(parsed.name, Some(name));
        prop_assert_eq!(parsed.labels, labels);
    }

    #[test]
    fn an_mtu_is_taken_only_in_range(mtu in prop_oneof![0u64..100, 65_500u64..65_600, any::<u64>()]) {
        let mut conf = base();
        conf["mtu"] = json!(mtu);
        match parse_conf(&conf) {
            Ok(Request::Call(call)) => prop_assert!((68..=65535).contains(&mtu) && call.conf.mtu == u32::try_from(mtu).ok()),
            Ok(other) => prop_assert!(false, "{:?}", other),
            Err(e) => {
                prop_assert!(!(68..=65535).contains(&mtu));
                // Beyond u32 it does not even decode.
                let want = if mtu > u64::from(u32::MAX) { code::DECODE } else { code::INVALID_CONFIG };
                prop_assert_eq!(e.code, want);
            }
        }
    }

    #[test]
    fn nameservers_must_be_addresses(ns in "[0-9a-f.:]{0,20}") {
        let mut conf = base();
        conf["dns"] = json!({"nameservers": [ns.clone()]});
        let got = parse_conf(&conf);
        prop_assert_eq!(got.is_ok(), ns.parse::<IpAddr>().is_ok(), "{:?}", got);
    }

    #[test]
    fn a_known_key_of_the_wrong_type_is_a_decode_error(
        key in prop::sample::select(vec!["name", "type", "mtu", "dns", "ipam", "apiSocket", "stateDir", "bridge", "prevResult", "cni.dev/valid-attachments"]),
        n in any::<i32>(),
    ) {
        let mut conf = base();
        conf["cniVersion"] = json!("1.1.0");
        // A number where weft expects a string or an object; a boolean where it expects a number.
        conf[key] = if key == "mtu" { json!(n % 2 == 0) } else { json!(n) };
        let e = parse_conf(&conf).expect_err("wrong type accepted");
        prop_assert_eq!(e.code, code::DECODE, "{}: {:?}", key, e);
    }

    #[test]
    fn results_round_trip_through_every_version(r in result()) {
        for v in SUPPORTED {
            let json = r.to_json(v);
            prop_assert_eq!(&json["cniVersion"], v.as_str());
            let back = CniResult::from_value("prevResult", &json).expect("reads back");
            prop_assert_eq!(&back.ips, &r.ips);
            prop_assert_eq!(&back.dns, &r.dns);
            // Fields a version does not have are dropped, the rest kept.
            let newest = v >= Version::V1_1_0;
            for (b, o) in back.interfaces.iter().zip(&r.interfaces) {
                prop_assert_eq!(&b.name, &o.name);
                prop_assert_eq!(&b.mac, &o.mac);
                prop_assert_eq!(&b.sandbox, &o.sandbox);
                prop_assert_eq!(b.mtu, if newest { o.mtu } else { None });
            }
            for (b, o) in back.routes.iter().zip(&r.routes) {
                prop_assert_eq!((b.dst, b.gw), (o.dst, o.gw));
                prop_assert_eq!(b.scope, if newest { o.scope } else { None });
            }
            for ip in json["ips"].as_array().expect("ips") {
                prop_assert_eq!(ip.get("version").is_some(), v < Version::V1_0_0);
            }
        }
    }

    #[test]
    fn valid_attachments_keep_the_valid_entries(entries in proptest::collection::vec(("[ -~]{0,10}", "[ -~]{0,17}"), 0..6)) {
        let list: Vec<Value> = entries.iter().map(|(c, i)| json!({"containerID": c, "ifname": i})).collect();
        let mut conf = base();
        conf["cniVersion"] = json!("1.1.0");
        conf["cni.dev/valid-attachments"] = json!(list);
        let vars: BTreeMap<String, String> = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let Ok(Request::Call(call)) = request::parse(&vars, conf.to_string().as_bytes()) else {
            return Err(TestCaseError::fail("GC refused"));
        };
        let want: Vec<AttachmentId> = entries.iter().filter_map(|(c, i)| AttachmentId::new(c, i).ok()).collect();
        prop_assert_eq!(call.conf.valid_attachments, Some(want));
    }
}

/// deploy/cni/10-weft.conflist: each version it names gives a config the plugin takes, the way
/// a runtime derives it (the plugin object with the list's name and the chosen version).
#[test]
fn the_example_conflist_is_accepted() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/cni/10-weft.conflist"
    );
    let list: Value =
        serde_json::from_slice(&std::fs::read(path).expect("conflist")).expect("JSON");
    accepted_in_every_version(&list);
    // And what `weft launch --cni-conf-dir` writes.
    let written = weft_cni::config::conflist(
        std::path::Path::new("/run/x/weft.sock"),
        std::path::Path::new("/var/lib/x"),
    );
    accepted_in_every_version(&written);
    assert_eq!(written["plugins"][0]["apiSocket"], "/run/x/weft.sock");
}

fn accepted_in_every_version(list: &Value) {
    let versions = list["cniVersions"].as_array().expect("cniVersions");
    assert!(versions.contains(&list["cniVersion"]));
    for v in versions {
        let mut plugin = list["plugins"][0].clone();
        plugin["name"] = list["name"].clone();
        plugin["cniVersion"] = v.clone();
        match parse_conf(&plugin) {
            Ok(Request::Call(call)) => assert_eq!(call.conf.plugin_type, "weft"),
            other => panic!("{v}: {other:?}"),
        }
    }
}
