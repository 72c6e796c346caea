//! Parsing `set=1` requests and formatting `get=1` answers. Pure: no IO, no device.
//!
//! A request is parsed whole before anything is applied, so a bad line changes nothing.
//! Keys and value syntax follow wireguard-go (`device/uapi.go`): hex keys, decimal numbers,
//! `true` as the only value of the flag keys, and device keys only before the first
//! `public_key`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use ipnet::IpNet;
use weft_crypto::{WgPrivateKey, WgPublicKey};

use crate::config::{
    DeviceConfig, DeviceStatus, PeerConfig, PresharedKey, KEY_LEN, PROTOCOL_VERSION,
};
use crate::{Error, Result};

/// The operation a request asks for (its first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Get,
    Set,
}

/// Parse the first line of a request (without its newline).
pub fn parse_operation(line: &str) -> Result<Operation> {
    match line {
        "get=1" => Ok(Operation::Get),
        "set=1" => Ok(Operation::Set),
        _ => Err(invalid(format!("unknown operation {:?}", truncate(line)))),
    }
}

/// Parse the body of a `set=1` request: `key=value` lines, without the terminating empty line.
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<DeviceConfig> {
    let mut config = DeviceConfig::default();
    let mut peer: Option<PeerConfig> = None;
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| invalid(format!("line without '=': {:?}", truncate(line))))?;
        if key == "public_key" {
            if let Some(done) = peer.take() {
                config.peers.push(done);
            }
            peer = Some(PeerConfig::new(WgPublicKey(parse_key(key, value)?)));
            continue;
        }
        match peer.as_mut() {
            None => device_line(&mut config, key, value)?,
            Some(peer) => peer_line(peer, key, value)?,
        }
    }
    config.peers.extend(peer);
    Ok(config)
}

fn device_line(config: &mut DeviceConfig, key: &str, value: &str) -> Result<()> {
    match key {
        "private_key" => config.private_key = Some(private_key(parse_key(key, value)?)?),
        "listen_port" => config.listen_port = Some(parse_number(key, value)?),
        "fwmark" => config.fwmark = Some(parse_number(key, value)?),
        "replace_peers" => config.replace_peers = parse_true(key, value)?,
        "protocol_version" => parse_protocol_version(value)?,
        _ => return Err(invalid(format!("unknown device key {:?}", truncate(key)))),
    }
    Ok(())
}

fn peer_line(peer: &mut PeerConfig, key: &str, value: &str) -> Result<()> {
    match key {
        "update_only" => peer.update_only = parse_true(key, value)?,
        "remove" => peer.remove = parse_true(key, value)?,
        "preshared_key" => peer.preshared_key = Some(PresharedKey(parse_key(key, value)?)),
        "endpoint" => {
            let endpoint: SocketAddr = value
                .parse()
                .map_err(|_| invalid(format!("invalid endpoint {:?}", truncate(value))))?;
            peer.endpoint = Some(endpoint);
        }
        "persistent_keepalive_interval" => {
            peer.persistent_keepalive = Some(parse_number(key, value)?)
        }
        "replace_allowed_ips" => peer.replace_allowed_ips = parse_true(key, value)?,
        "allowed_ip" => {
            let net: IpNet = value
                .parse()
                .map_err(|_| invalid(format!("invalid allowed_ip {:?}", truncate(value))))?;
            peer.allowed_ips.push(net.trunc());
        }
        "protocol_version" => parse_protocol_version(value)?,
        _ => return Err(invalid(format!("unknown peer key {:?}", truncate(key)))),
    }
    Ok(())
}

/// Clamped on the way in, as kernel WireGuard does; all zeros (which means "remove the key")
/// stays all zeros.
fn private_key(bytes: [u8; KEY_LEN]) -> Result<WgPrivateKey> {
    if bytes.iter().all(|&b| b == 0) {
        WgPrivateKey::from_base64(ZERO_KEY_BASE64).map_err(|e| invalid(e.to_string()))
    } else {
        Ok(WgPrivateKey::from_bytes(bytes))
    }
}

const ZERO_KEY_BASE64: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn parse_key(key: &str, value: &str) -> Result<[u8; KEY_LEN]> {
    let bytes = value.as_bytes();
    if bytes.len() != KEY_LEN * 2 {
        return Err(invalid(format!(
            "{key}: expected {} hex digits",
            KEY_LEN * 2
        )));
    }
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0]);
        let lo = hex_digit(pair[1]);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
            // The value may be a secret: never echo it.
            _ => return Err(invalid(format!("{key}: not hex"))),
        }
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    // Decimal digits only: Rust's parsers accept a leading '+', Go's ParseUint does not.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!(
            "{key}: invalid number {:?}",
            truncate(value)
        )));
    }
    value
        .parse()
        .map_err(|_| invalid(format!("{key}: number out of range {:?}", truncate(value))))
}

fn parse_true(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        _ => Err(invalid(format!(
            "{key}: the only valid value is true, not {:?}",
            truncate(value)
        ))),
    }
}

fn parse_protocol_version(value: &str) -> Result<()> {
    if value == "1" {
        Ok(())
    } else {
        Err(invalid(format!(
            "unsupported protocol version {:?}",
            truncate(value)
        )))
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig(message)
}

/// Untrusted text in an error message, cut short.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

fn write_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Format the answer to `get=1` (without the final `errno=0` line and blank line).
pub fn format_status(status: &DeviceStatus, out: &mut String) {
    if let Some(key) = &status.private_key {
        out.push_str("private_key=");
        write_hex(out, key.as_bytes());
        out.push('\n');
    }
    let _ = writeln!(out, "listen_port={}", status.listen_port);
    if let Some(mark) = status.fwmark.filter(|&m| m != 0) {
        let _ = writeln!(out, "fwmark={mark}");
    }
    for peer in &status.peers {
        out.push_str("public_key=");
        write_hex(out, peer.public_key.as_bytes());
        out.push('\n');
        if let Some(psk) = &peer.preshared_key {
            out.push_str("preshared_key=");
            write_hex(out, psk.as_bytes());
            out.push('\n');
        }
        let _ = writeln!(out, "protocol_version={}", PROTOCOL_VERSION);
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let since = peer
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(out, "last_handshake_time_sec={}", since.as_secs());
        let _ = writeln!(out, "last_handshake_time_nsec={}", since.subsec_nanos());
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive.unwrap_or(0)
        );
        for net in &peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
}

/// The errno line that ends every answer: `errno=0`, or `errno=-EINVAL` as a number.
pub fn format_errno(result: &Result<()>, out: &mut String) {
    let errno = match result {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    };
    let _ = write!(out, "errno={errno}\n\n");
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;
    use crate::config::PeerStatus;

    const KEY_A: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
    const KEY_B: &str = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33";

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn operations() {
        assert_eq!(parse_operation("get=1").expect("get"), Operation::Get);
        assert_eq!(parse_operation("set=1").expect("set"), Operation::Set);
        assert!(parse_operation("get=2").is_err());
        assert!(parse_operation("").is_err());
    }

    #[test]
    fn a_full_set_request_parses() {
        let text = format!(
            "private_key={KEY_A}\nlisten_port=51820\nfwmark=7\nreplace_peers=true\n\
             public_key={KEY_B}\npreshared_key={KEY_A}\nendpoint=[2001:db8::1]:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=10.0.0.1/24\nallowed_ip=fd00::/64\nprotocol_version=1\n\
             public_key={KEY_A}\nremove=true\n\
             public_key={KEY_B}\nupdate_only=true\nendpoint=192.0.2.1:1\n"
        );
        let config = parse_set(lines(&text)).expect("valid request");
        assert_eq!(config.listen_port, Some(51820));
        assert_eq!(config.fwmark, Some(7));
        assert!(config.replace_peers);
        assert!(config.private_key.is_some());
        assert_eq!(config.peers.len(), 3);
        let p = &config.peers[0];
        assert_eq!(
            p.public_key.to_string(),
            "uFmW/sycfx/G0lcqdu2hHVm80gvo5UOxXOS9hajnWjM="
        );
        assert!(p.preshared_key.is_some());
        assert_eq!(
            p.endpoint,
            Some("[2001:db8::1]:51820".parse().expect("addr"))
        );
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(
            p.allowed_ips,
            vec![
                "10.0.0.0/24".parse::<IpNet>().expect("net"),
                "fd00::/64".parse().expect("net")
            ],
            "host bits are masked as wireguard-go does"
        );
        assert!(config.peers[1].remove);
        assert!(config.peers[2].update_only);
    }

    #[test]
    fn bad_requests_are_einval() {
        let bad = [
            "private_key=abc".to_string(),
            format!("private_key={}", "g".repeat(64)),
            "listen_port=65536".into(),
            "listen_port=+1".into(),
            "listen_port=".into(),
            "fwmark=-1".into(),
            "replace_peers=false".into(),
            "nonsense".into(),
            "unknown_key=1".into(),
            "protocol_version=2".into(),
            // Peer keys before any public_key, and device keys after one.
            "endpoint=192.0.2.1:1".into(),
            format!("public_key={KEY_B}\nlisten_port=1"),
            format!("public_key={KEY_B}\nendpoint=192.0.2.1"),
            format!("public_key={KEY_B}\nallowed_ip=10.0.0.1"),
            format!("public_key={KEY_B}\nallowed_ip=10.0.0.0/33"),
            format!("public_key={KEY_B}\npersistent_keepalive_interval=70000"),
            format!("public_key={KEY_B}\nremove=yes"),
            format!("public_key={}", &KEY_B[..62]),
        ];
        for text in &bad {
            let err = parse_set(lines(text)).expect_err(text);
            assert_eq!(err.errno(), libc::EINVAL, "{text}");
        }
    }

    #[test]
    fn errors_never_echo_key_material() {
        let secret = format!("{}zz", &KEY_A[..62]);
        let err = parse_set(lines(&format!("private_key={secret}"))).expect_err("not hex");
        assert!(!err.to_string().contains(&KEY_A[..20]), "{err}");
    }

    #[test]
    fn status_formats_as_wireguard_go_does() {
        let private = WgPrivateKey::from_bytes(parse_key("k", KEY_A).expect("hex"));
        let status = DeviceStatus {
            public_key: Some(private.public_key()),
            private_key: Some(private),
            listen_port: 51820,
            fwmark: None,
            peers: vec![PeerStatus {
                public_key: WgPublicKey(parse_key("k", KEY_B).expect("hex")),
                preshared_key: None,
                endpoint: Some("[2001:db8::1]:9".parse().expect("addr")),
                persistent_keepalive: Some(25),
                allowed_ips: vec!["10.0.0.0/24".parse().expect("net")],
                last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(1700000000, 5)),
                rx_bytes: 10,
                tx_bytes: 20,
                protocol_version: 1,
            }],
        };
        let mut out = String::new();
        format_status(&status, &mut out);
        format_errno(&Ok(()), &mut out);
        let expected = format!(
            "private_key={KEY_A}\nlisten_port=51820\npublic_key={KEY_B}\nprotocol_version=1\n\
             endpoint=[2001:db8::1]:9\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=20\nrx_bytes=10\npersistent_keepalive_interval=25\nallowed_ip=10.0.0.0/24\nerrno=0\n\n"
        );
        assert_eq!(out, expected);
        let mut err = String::new();
        format_errno(&Err(Error::InvalidConfig("x".into())), &mut err);
        assert_eq!(err, "errno=-22\n\n");
    }

    proptest! {
        #[test]
        fn random_input_never_panics(text in "\\PC{0,400}") {
            let _ = parse_set(text.lines());
            let _ = parse_operation(&text);
        }

        #[test]
        fn random_key_value_lines_never_panic(
            entries in proptest::collection::vec(
                (prop_oneof![
                    Just("private_key"), Just("listen_port"), Just("fwmark"), Just("replace_peers"),
                    Just("public_key"), Just("preshared_key"), Just("endpoint"),
                    Just("persistent_keepalive_interval"), Just("replace_allowed_ips"),
                    Just("allowed_ip"), Just("remove"), Just("update_only"), Just("protocol_version"),
                ], "[0-9a-fA-F:.\\[\\]/=+-]{0,70}"),
                0..20,
            )
        ) {
            let text: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = parse_set(text.iter().map(String::as_str));
        }

        #[test]
        fn valid_settings_round_trip(port in any::<u16>(), mark in any::<u32>(), keepalive in any::<u16>(),
                                     a in any::<[u8; 4]>(), len in 0u8..=32) {
            let net = IpNet::new(std::net::Ipv4Addr::from(a).into(), len).expect("len <= 32").trunc();
            let text = format!(
                "listen_port={port}\nfwmark={mark}\npublic_key={KEY_B}\n\
                 persistent_keepalive_interval={keepalive}\nallowed_ip={net}"
            );
            let config = parse_set(text.lines()).expect("valid");
            prop_assert_eq!(config.listen_port, Some(port));
            prop_assert_eq!(config.fwmark, Some(mark));
            prop_assert_eq!(config.peers[0].persistent_keepalive, Some(keepalive));
            prop_assert_eq!(&config.peers[0].allowed_ips, &vec![net]);
        }
    }
}
