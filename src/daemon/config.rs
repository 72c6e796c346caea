//! What `weft launch` runs with: command-line options over a TOML file over defaults.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use weft_gossip::transport::DEFAULT_PORT;
use weft_gossip::MAX_NAME_LEN;

use super::api::DEFAULT_API_SOCKET;
use super::metrics::DEFAULT_METRICS_ADDR;

/// The default cluster address range.
pub const DEFAULT_RANGE: &str = "10.32.0.0/12";
/// The default WireGuard UDP port.
pub const DEFAULT_WG_PORT: u16 = 6784;
/// The default MTU of the WireGuard interface, the bridge and containers' interfaces.
pub const DEFAULT_MTU: u32 = 1420;
/// MTUs accepted: IPv6's minimum (so the tunnel can carry it) up to jumbo frames.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 1280..=9000;
/// The datapath backends `--datapath` accepts; "off" runs gossip and address management
/// only (tests on a shared host, control-only nodes).
pub const DATAPATH_BACKENDS: [&str; 4] = ["auto", "kernel", "userspace", "off"];
/// The largest config file read.
const MAX_CONFIG_LEN: u64 = 64 * 1024;

/// Settings that may come from the command line or the config file (`None`: not given).
/// In the file, the keys are these field names; any other key is refused.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub name: Option<String>,
    pub listen: Option<SocketAddr>,
    pub secret_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub range: Option<IpNet>,
    pub api_socket: Option<PathBuf>,
    /// Seeds: gossip addresses of nodes to join through (`host:port`, or a host for port 6783).
    pub peers: Option<Vec<String>>,
    /// The WireGuard UDP port.
    pub wg_port: Option<u16>,
    /// `ip:port` of the metrics HTTP endpoint, or "off".
    pub metrics_addr: Option<String>,
    /// "auto", "kernel" or "userspace".
    pub datapath: Option<String>,
    pub mtu: Option<u32>,
    /// Path of the userspace datapath's WireGuard configuration socket, or "off".
    pub wg_socket: Option<String>,
    /// Directory to write the CNI network config for weft-cni into (`/etc/cni/net.d`).
    pub cni_conf_dir: Option<PathBuf>,
    /// Masquerade pod traffic that leaves the cluster range (on unless `false`).
    pub masquerade: Option<bool>,
    /// Serve Docker's network and IPAM plugin protocol on this socket ("off": not at all).
    pub docker_plugin: Option<String>,
    /// The Docker engine's API socket: container names for `weft pods`, and the `weft`
    /// network created at start ("off": not used).
    pub docker_socket: Option<String>,
}

impl Settings {
    /// Read a config file. A file that is too large, not TOML, or has an unknown key or a
    /// bad value is refused with an error naming it.
    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        use std::io::Read;
        let file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_LEN + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG_LEN {
            bail!(
                "{}: larger than {MAX_CONFIG_LEN} bytes; not a weft config file",
                path.display()
            );
        }
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Settings> {
        // toml's message names the key and the line, e.g. "unknown field `lisen`".
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    /// These settings, with `fallback` filling in what is not given here.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            name: self.name.or(fallback.name),
            listen: self.listen.or(fallback.listen),
            secret_file: self.secret_file.or(fallback.secret_file),
            state_dir: self.state_dir.or(fallback.state_dir),
            range: self.range.or(fallback.range),
            api_socket: self.api_socket.or(fallback.api_socket),
            peers: self.peers.or(fallback.peers),
            wg_port: self.wg_port.or(fallback.wg_port),
            metrics_addr: self.metrics_addr.or(fallback.metrics_addr),
            datapath: self.datapath.or(fallback.datapath),
            mtu: self.mtu.or(fallback.mtu),
            wg_socket: self.wg_socket.or(fallback.wg_socket),
            cni_conf_dir: self.cni_conf_dir.or(fallback.cni_conf_dir),
            masquerade: self.masquerade.or(fallback.masquerade),
            docker_plugin: self.docker_plugin.or(fallback.docker_plugin),
            docker_socket: self.docker_socket.or(fallback.docker_socket),
        }
    }
}

/// The settings the daemon runs with, every default filled in and every value checked.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub secret_file: PathBuf,
    pub state_dir: PathBuf,
    /// The cluster's pod range (IPv4 only).
    pub range: Ipv4Net,
    pub api_socket: PathBuf,
    pub seeds: Vec<SocketAddr>,
    pub wg_port: u16,
    /// Where the metrics endpoint listens; `None` when turned off.
    pub metrics_addr: Option<SocketAddr>,
    /// "auto", "kernel", "userspace" or "off".
    pub datapath: String,
    pub mtu: u32,
    /// The userspace datapath's WireGuard configuration socket; `None` when turned off.
    pub wg_socket: Option<PathBuf>,
    /// Where to write weft-cni's conflist at start; `None`: nowhere (the default).
    pub cni_conf_dir: Option<PathBuf>,
    /// Masquerade pod traffic to destinations outside the cluster range (the default).
    pub masquerade: bool,
    /// Where to serve Docker's network and IPAM plugin; `None`: not at all (the default).
    pub docker_plugin: Option<PathBuf>,
    /// The Docker engine's API socket; `None`: not used (the default).
    pub docker_socket: Option<PathBuf>,
}

impl LaunchConfig {
    pub fn resolve(settings: Settings) -> anyhow::Result<LaunchConfig> {
        let name = match settings.name {
            Some(name) => name,
            None => nix::unistd::gethostname()
                .context("reading the host name for the default --name")?
                .into_string()
                .map_err(|_| anyhow::anyhow!("the host name is not UTF-8; give --name"))?,
        };
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            bail!(
                "node name must be 1 to {MAX_NAME_LEN} bytes, got {}",
                name.len()
            );
        }
        let Some(secret_file) = settings.secret_file else {
            bail!("no cluster secret: give --secret-file FILE, WEFT_SECRET_FILE or secret_file in the config file (make one with `weft secret new --out FILE`)");
        };
        let listen = settings
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
        let range = match settings.range {
            Some(IpNet::V4(range)) => range,
            Some(IpNet::V6(range)) => bail!(
                "cluster range {range} is IPv6; weft's address management needs an IPv4 range (--range, e.g. {DEFAULT_RANGE})"
            ),
            None => DEFAULT_RANGE.parse().context("default range")?,
        };
        let wg_port = settings.wg_port.unwrap_or(DEFAULT_WG_PORT);
        if wg_port == 0 {
            bail!("--wg-port must not be 0: other nodes need a fixed port to reach");
        }
        let metrics_addr = match settings.metrics_addr.as_deref() {
            None => Some(DEFAULT_METRICS_ADDR.parse().context("default metrics address")?),
            Some("off") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                anyhow::anyhow!("--metrics-addr {text:?}: expected ip:port (e.g. {DEFAULT_METRICS_ADDR}) or \"off\"")
            })?),
        };
        let datapath = settings.datapath.unwrap_or_else(|| "auto".into());
        if !DATAPATH_BACKENDS.contains(&datapath.as_str()) {
            bail!(
                "--datapath {datapath:?}: expected one of {}",
                DATAPATH_BACKENDS.join(", ")
            );
        }
        let mtu = settings.mtu.unwrap_or(DEFAULT_MTU);
        if !MTU_RANGE.contains(&mtu) {
            bail!(
                "--mtu {mtu}: must be {} to {}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            );
        }
        let wg_socket = match settings.wg_socket.as_deref() {
            None => Some(weft_mesh::uapi::socket_path(super::WG_IFNAME)),
            Some("off") => None,
            Some("") => bail!("--wg-socket: expected a path or \"off\""),
            Some(path) => Some(PathBuf::from(path)),
        };
        let path_or_off = |flag: &str, value: Option<String>| match value.as_deref() {
            None | Some("off") => Ok(None),
            Some("") => bail!("--{flag}: expected a path or \"off\""),
            Some(path) if !path.starts_with('/') => {
                bail!("--{flag} {path:?}: expected an absolute path or \"off\"")
            }
            Some(path) => Ok(Some(PathBuf::from(path))),
        };
        let docker_plugin = path_or_off("docker-plugin", settings.docker_plugin)?;
        let docker_socket = path_or_off("docker-socket", settings.docker_socket)?;
        let seeds = settings
            .peers
            .unwrap_or_default()
            .iter()
            .map(|p| resolve_peer(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(LaunchConfig {
            name,
            listen,
            secret_file,
            state_dir: settings
                .state_dir
                .unwrap_or_else(|| PathBuf::from(weft_crypto::DEFAULT_STATE_DIR)),
            range: range.trunc(),
            api_socket: settings
                .api_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET)),
            seeds,
            wg_port,
            metrics_addr,
            datapath,
            mtu,
            wg_socket,
            cni_conf_dir: settings.cni_conf_dir,
            masquerade: settings.masquerade.unwrap_or(true),
            docker_plugin,
            docker_socket,
        })
    }
}

/// A seed address: `ip:port`, `ip` (port 6783), `host:port` or `host` (resolved now).
pub fn resolve_peer(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if text.contains(':') {
        text.to_string()
    } else {
        format!("{text}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("peer address {text:?}"))?
        .next()
        .with_context(|| format!("peer address {text:?} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_parse_and_unknown_keys_are_refused() {
        let s = Settings::parse(
            r#"
            name = "a"
            listen = "192.0.2.1:7000"
            secret_file = "/etc/weft/secret"
            range = "10.40.0.0/16"
            peers = ["192.0.2.2", "192.0.2.3:7000"]
            "#,
        )
        .expect("parse");
        assert_eq!(s.name.as_deref(), Some("a"));
        assert_eq!(s.listen, Some("192.0.2.1:7000".parse().expect("addr")));
        let err = Settings::parse("lisen = \"0.0.0.0:1\"").expect_err("unknown key");
        assert!(err.to_string().contains("lisen"), "{err}");
        assert!(Settings::parse("listen = \"nowhere\"").is_err());
        assert!(Settings::parse("range = \"10.0.0.0/99\"").is_err());
    }

    #[test]
    fn docker_plugin_and_socket_are_off_unless_given_as_absolute_paths() {
        let base = || Settings {
            name: Some("n".into()),
            secret_file: Some("/s".into()),
            ..Settings::default()
        };
        let c = LaunchConfig::resolve(base()).expect("resolve");
        assert_eq!((c.docker_plugin, c.docker_socket), (None, None));
        let file = Settings::parse(
            r#"
            docker_plugin = "/run/docker/plugins/weft.sock"
            docker_socket = "/var/run/docker.sock"
            "#,
        )
        .expect("parse");
        let c = LaunchConfig::resolve(base().or(file)).expect("resolve");
        assert_eq!(
            c.docker_plugin,
            Some(PathBuf::from(crate::daemon::docker::DEFAULT_PLUGIN_SOCKET))
        );
        assert_eq!(c.docker_socket, Some(PathBuf::from("/var/run/docker.sock")));
        let off = Settings {
            docker_plugin: Some("off".into()),
            ..base()
        };
        assert_eq!(LaunchConfig::resolve(off).expect("off").docker_plugin, None);
        for bad in ["", "weft.sock"] {
            let s = Settings {
                docker_plugin: Some(bad.into()),
                ..base()
            };
            let e = LaunchConfig::resolve(s).expect_err(bad);
            assert!(e.to_string().contains("--docker-plugin"), "{e}");
        }
    }

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let flags = Settings {
            name: Some("flag".into()),
            secret_file: Some("/s".into()),
            ..Settings::default()
        };
        let file = Settings {
            name: Some("file".into()),
            range: Some("10.40.0.0/16".parse().expect("net")),
            peers: Some(vec!["192.0.2.9".into()]),
            ..Settings::default()
        };
        let c = LaunchConfig::resolve(flags.or(file)).expect("resolve");
        assert_eq!(c.name, "flag");
        assert_eq!(c.range.to_string(), "10.40.0.0/16");
        assert_eq!(c.listen.to_string(), "0.0.0.0:6783");
        assert_eq!(c.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert_eq!(c.seeds, vec!["192.0.2.9:6783".parse().expect("addr")]);
        assert_eq!(c.wg_port, DEFAULT_WG_PORT);
        assert_eq!(c.mtu, DEFAULT_MTU);
        assert_eq!(c.datapath, "auto");
        assert_eq!(
            c.metrics_addr,
            Some("127.0.0.1:6782".parse().expect("addr"))
        );
        assert_eq!(
            c.wg_socket,
            Some(PathBuf::from("/var/run/wireguard/weft-wg.sock")),
            "where `wg` looks"
        );
        assert!(c.masquerade, "masquerading is on by default");
    }

    #[test]
    fn masquerading_is_turned_off_by_flag_or_file() {
        let base = || Settings {
            secret_file: Some("/s".into()),
            name: Some("n".into()),
            ..Settings::default()
        };
        let file = Settings::parse("masquerade = false").expect("parse");
        assert_eq!(file.masquerade, Some(false));
        let c = LaunchConfig::resolve(base().or(file)).expect("resolve");
        assert!(!c.masquerade);
        let flag = Settings {
            masquerade: Some(false),
            ..base()
        };
        let on_in_file = Settings::parse("masquerade = true").expect("parse");
        assert!(
            !LaunchConfig::resolve(flag.or(on_in_file))
                .expect("resolve")
                .masquerade
        );
        assert!(
            Settings::parse("masquerade = \"no\"").is_err(),
            "not a boolean"
        );
    }

    #[test]
    fn datapath_options_parse_and_bad_ones_are_refused() {
        let s = Settings::parse(
            r#"
            wg_port = 7784
            metrics_addr = "off"
            datapath = "userspace"
            mtu = 1380
            wg_socket = "off"
            cni_conf_dir = "/etc/cni/net.d"
            "#,
        )
        .expect("parse");
        let flags = Settings {
            secret_file: Some("/s".into()),
            name: Some("n".into()),
            mtu: Some(1400),
            ..Settings::default()
        };
        let c = LaunchConfig::resolve(flags.or(s)).expect("resolve");
        assert_eq!(c.wg_port, 7784);
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.datapath, "userspace");
        assert_eq!(c.mtu, 1400, "the flag wins over the file");
        assert_eq!(c.wg_socket, None);
        assert_eq!(c.cni_conf_dir, Some(PathBuf::from("/etc/cni/net.d")));

        let base = || Settings {
            secret_file: Some("/s".into()),
            name: Some("n".into()),
            ..Settings::default()
        };
        let bad = [
            Settings {
                datapath: Some("ebpf".into()),
                ..base()
            },
            Settings {
                mtu: Some(100),
                ..base()
            },
            Settings {
                wg_port: Some(0),
                ..base()
            },
            Settings {
                wg_socket: Some(String::new()),
                ..base()
            },
            Settings {
                metrics_addr: Some("localhost".into()),
                ..base()
            },
            Settings {
                range: Some("fd00::/64".parse().expect("net")),
                ..base()
            },
        ];
        for s in bad {
            let shown = format!("{s:?}");
            assert!(LaunchConfig::resolve(s).is_err(), "accepted {shown}");
        }
        let err = LaunchConfig::resolve(Settings {
            range: Some("fd00::/64".parse().expect("net")),
            ..base()
        })
        .expect_err("v6");
        assert!(err.to_string().contains("IPv4"), "{err}");
    }

    #[test]
    fn a_secret_file_is_required_and_names_are_bounded() {
        let err = LaunchConfig::resolve(Settings {
            name: Some("x".into()),
            ..Settings::default()
        })
        .expect_err("no secret");
        assert!(err.to_string().contains("--secret-file"), "{err}");
        let err = LaunchConfig::resolve(Settings {
            name: Some("x".repeat(MAX_NAME_LEN + 1)),
            secret_file: Some("/s".into()),
            ..Settings::default()
        })
        .expect_err("long name");
        assert!(err.to_string().contains("name"), "{err}");
    }
}
