//! The command line: every command and option, with the doc comments `--help` shows.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use weft_crypto::DEFAULT_STATE_DIR;

use crate::output::OutputFormat;

/// An encrypted full-mesh network for containers, on WireGuard.
///
/// Every node keeps a WireGuard tunnel to every other node and learns about the others by
/// gossip; only holders of the cluster secret may join.
#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 on success, 1 when a command fails, 2 on a usage error.\n\
                  Logs go to stderr; RUST_LOG (e.g. RUST_LOG=debug) overrides -v."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Output format of commands that print state or outcomes (`identity`, `secret check`,
    /// `status`, `peers`, `ipam`, `pods`, `forget`, `connect`, `reset`, `attach`, `detach`,
    /// `policy`).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Log more to stderr: -v info, -vv debug, -vvv trace. Secrets are never logged.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// File holding the cluster secret (as written by `weft secret new`). It must not be
    /// readable by group or others.
    #[arg(long, global = true, env = "WEFT_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

/// The node's state directory, for commands that use the node's keys.
#[derive(Debug, Args)]
pub struct StateDirArg {
    /// Directory holding the node's keys and state. Created with mode 0700 on first use; refused
    /// if group or others may access it.
    #[arg(long, env = "WEFT_STATE_DIR", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new WireGuard private key in base64, exactly like `wg genkey`.
    Genkey,

    /// Read a base64 WireGuard private key on stdin and print its public key, exactly like
    /// `wg pubkey` (e.g. `weft genkey | tee private.key | weft pubkey`).
    Pubkey,

    /// Make or check the cluster secret that admits nodes to the cluster.
    #[command(subcommand)]
    Secret(SecretCommand),

    /// Print this node's id and WireGuard public key, creating the node's keys in the state
    /// directory on first use.
    Identity(IdentityArgs),

    /// Run this node in the foreground: join the cluster through PEER_ADDRs (or start a new
    /// one) and gossip until SIGTERM or SIGINT, which make the node leave.
    Launch(Box<LaunchArgs>),

    /// Show this node's state, from the running daemon.
    Status(ApiArgs),

    /// Network policy (Kubernetes NetworkPolicy, networking.k8s.io/v1), cluster-wide:
    /// apply, list, get, delete, explain a flow, label namespaces.
    #[command(subcommand)]
    Policy(PolicyCommand),

    /// List the cluster's members as this node sees them, from the running daemon.
    Peers(ApiArgs),

    /// Show the cluster's address space: who owns which pieces, how full each is, and what
    /// is unreachable, from the running daemon.
    Ipam(ApiArgs),

    /// List the pods and containers attached on this node (by the CNI plugin or `weft
    /// attach`): container id, interface, address, pod namespace and name or container name,
    /// labels, from the running daemon.
    Pods(ApiArgs),

    /// Declare a node gone for good (it will not come back) and take back its address space.
    /// Refused while the node is reachable.
    Forget(ForgetArgs),

    /// Gossip with another node, e.g. to reach a node started apart.
    Connect(ConnectArgs),

    /// Leave the cluster for good: hand this node's address space back, tell the others,
    /// remove weft's interfaces, routes and firewall rules from this host, and (once the
    /// space is handed back) the node's keys and state: a later launch is a new node.
    Reset(ResetArgs),

    /// Attach a container to this node's bridge: the daemon makes a veth pair into its network
    /// namespace with an address from this node's space, and routes. TARGET is a network
    /// namespace path, a PID, or a Docker or Podman container name or id. The container keeps
    /// its other interfaces; attaching it again gives it the same address.
    Attach(AttachArgs),

    /// Take a container attached with `weft attach` off the bridge and give its address back.
    Detach(DetachArgs),

    /// Build a demo mesh on this machine: N test hosts in network namespaces, a weft node and a
    /// container in each, ping every pair across the encrypted mesh, print the peers table,
    /// and clean up (also on Ctrl-C). Needs root.
    Demo(DemoArgs),
}

/// `weft forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The node: its name, node id, or short node id (as `weft peers` shows them).
    #[arg(value_name = "NODE")]
    pub node: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `weft connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Gossip address of the node (`ip:port`, `ip` or `host[:port]`; port 6783 by default).
    #[arg(value_name = "PEER_ADDR")]
    pub addr: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `weft reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `weft attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// What to attach: a network namespace path (/run/netns/NAME, /proc/PID/ns/net), a PID,
    /// or a Docker or Podman container name or id (asked on DOCKER_HOST or
    /// /var/run/docker.sock, then `podman inspect`). With --netns: the container id.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The id the address is kept under [default: the container's id for a Docker or Podman
    /// container, else `netns-INODE` of the namespace]. The same id gets the same address back.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The container's network namespace; TARGET is then the container id (the older form
    /// of this command).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Interface name inside the container.
    #[arg(long, value_name = "NAME", default_value = crate::daemon::api::DEFAULT_IFNAME)]
    pub ifname: String,
    /// This address (free, in this node's address space) instead of the next free one.
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// A label kept with the allocation (for the policy engine; shown by `weft pods`).
    /// Repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A named port of the container, for network policies that name ports
    /// (`--port http=80/tcp`). Repeat for more.
    #[arg(long = "port", value_name = "NAME=PORT/PROTO", value_parser = crate::daemon::policy::parse_named_port)]
    pub ports: Vec<weft_mesh::policy::NamedPort>,
    /// The container's namespace for network policy [default: default].
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `weft detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// What to detach: as for `weft attach` (a network namespace path, a PID, a Docker or
    /// Podman container), or the id it was attached under.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The id it was attached under (when TARGET cannot be resolved any more).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Interface name inside the container.
    #[arg(long, value_name = "NAME", default_value = crate::daemon::api::DEFAULT_IFNAME)]
    pub ifname: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `KEY=VALUE` with a non-empty key.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `weft demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of test hosts (2 to 10).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub nodes: usize,
}

/// `weft launch`. Options left out come from --config FILE, then from the defaults.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Gossip addresses of nodes to join through (`ip:port`, `ip` or `host[:port]`; port 6783
    /// by default). Retried with backoff until one answers. None starts a new cluster.
    #[arg(value_name = "PEER_ADDR")]
    pub peers: Vec<String>,

    /// This node's name in the cluster [default: the host name].
    #[arg(long)]
    pub name: Option<String>,

    /// Address and UDP port of the gossip transport [default: 0.0.0.0:6783]. On a wildcard
    /// address the node advertises the host's addresses.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,

    /// Directory holding the node's keys and state [default: /var/lib/weft]. Created with
    /// mode 0700 on first use.
    #[arg(long, env = "WEFT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Cluster address range for pod addresses, IPv4 [default: 10.32.0.0/12]. Every node of
    /// a cluster must use the same range.
    #[arg(long, value_name = "CIDR")]
    pub range: Option<ipnet::IpNet>,

    /// UDP port of the WireGuard tunnels [default: 6784].
    #[arg(long, value_name = "PORT")]
    pub wg_port: Option<u16>,

    /// Address of the HTTP endpoint with /healthz, /readyz and Prometheus /metrics
    /// [default: 127.0.0.1:6782]; "off" turns it off.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub metrics_addr: Option<String>,

    /// WireGuard datapath: "kernel" (netlink), "userspace" (TUN), "auto" (kernel when the
    /// host has it), or "off" (gossip and address management only; nothing on the host)
    /// [default: auto].
    #[arg(long, value_name = "auto|kernel|userspace|off")]
    pub datapath: Option<String>,

    /// MTU of the WireGuard interface, the bridge and containers' interfaces [default: 1420].
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,

    /// Unix socket of the local API used by `weft status` and `weft peers`
    /// [default: /run/weft/weft.sock]. Mode 0600; its directory is created with mode 0700.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// WireGuard configuration socket of the userspace datapath, for `wg show` and `wg set`
    /// [default: /var/run/wireguard/weft-wg.sock, where `wg` looks]; "off" serves none.
    /// (The kernel datapath is configured over netlink, which `wg` uses directly.)
    #[arg(long, value_name = "PATH|off")]
    pub wg_socket: Option<String>,

    /// Write the CNI network config for weft-cni (`10-weft.conflist`, naming this daemon's
    /// API socket and state directory) into DIR at start, e.g. /etc/cni/net.d [default: off].
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,

    /// Do not masquerade pod traffic to destinations outside the cluster range (by default
    /// it leaves with the host's address, so pods reach the host's network and the
    /// internet; traffic between pods is never NATed). `masquerade = false` in the file.
    #[arg(long)]
    pub no_masquerade: bool,

    /// Serve Docker's network and IPAM driver plugin (`docker network create -d weft
    /// --ipam-driver weft weft`) on SOCKET [default: off; SOCKET defaults to
    /// /run/docker/plugins/weft.sock, where Docker finds the plugin `weft`].
    #[arg(long, value_name = "SOCKET", num_args = 0..=1, require_equals = true,
          default_missing_value = crate::daemon::docker::DEFAULT_PLUGIN_SOCKET)]
    pub docker_plugin: Option<String>,

    /// The Docker engine's API socket (e.g. /var/run/docker.sock): the daemon learns the
    /// names of containers on weft's Docker network there for `weft pods`, and with
    /// --docker-plugin creates the network `weft` once it has address space, if Docker has
    /// none by that name [default: off].
    #[arg(long, value_name = "PATH")]
    pub docker_socket: Option<String>,

    /// Kubernetes: watch the API server with this kubeconfig (Nodes seed the gossip, a
    /// Node's pod CIDR is its address space, deleted Nodes are forgotten). In a pod
    /// (KUBERNETES_SERVICE_HOST set) the in-cluster service account is used without it.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Ignore the in-cluster Kubernetes configuration (`kubernetes = false` in the file).
    #[arg(long)]
    pub no_kubernetes: bool,

    /// Kubernetes: this host's Node name [default: NODE_NAME, else the host name]. Also the
    /// node's weft name unless --name is given.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Kubernetes: where this node's pod addresses come from: "kube" (the Node's
    /// spec.podCIDR), "weft" (weft's gossip allocator), "auto" (kube when the Node has a
    /// pod CIDR) [default: auto].
    #[arg(long, value_name = "auto|kube|weft")]
    pub ipam: Option<String>,

    /// TOML file with any of the keys name, listen, secret_file, state_dir, range,
    /// api_socket, peers, wg_port, metrics_addr, datapath, mtu, wg_socket, cni_conf_dir,
    /// masquerade, docker_plugin, docker_socket, kubeconfig, kubernetes, node_name,
    /// ipam.
    /// Options on the command line win; unknown keys are refused.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// How commands reach the running daemon.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Unix socket of the daemon's local API.
    #[arg(long, env = "WEFT_API_SOCKET", value_name = "PATH", default_value = crate::daemon::api::DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,

    /// How long to wait for the daemon's answer, in seconds [default: 10; 60 for `reset`].
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

/// A positive number of seconds, at most a day (`10`, `0.5`).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "{text} s is out of range (more than 0, at most 86400)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `weft policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Apply the NetworkPolicy documents in FILE (kubectl's YAML or JSON; `-` for stdin)
    /// everywhere in the cluster. All or nothing: an invalid policy is refused with its field
    /// path and reason, and the rules in force stay.
    Apply {
        /// The file with one or more NetworkPolicy documents.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
        /// Namespace of policies that name none [default: default].
        #[arg(short = 'n', long, value_name = "NAMESPACE")]
        namespace: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the policies, with the packets each dropped on this node.
    List(ApiArgs),
    /// Show one policy (NAMESPACE/NAME, or NAME in default), as applied.
    Get {
        /// The policy: NAMESPACE/NAME, or NAME in default.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a policy (NAMESPACE/NAME, or NAME in default) everywhere in the cluster.
    Delete {
        /// The policy: NAMESPACE/NAME, or NAME in default.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The verdict for one flow and the policies and rules that decide it.
    Why {
        /// The sending pod (NAMESPACE/NAME, NAME in default) or an address.
        #[arg(long, value_name = "POD")]
        from: String,
        /// The receiving pod or an address.
        #[arg(long, value_name = "POD")]
        to: String,
        /// The destination port and protocol (80/tcp, 53/udp).
        #[arg(long, value_name = "PORT/PROTO")]
        port: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a namespace's labels (for namespaceSelector) everywhere in the cluster, replacing
    /// those it had; without --label, show them (all namespaces without NAME).
    Namespace {
        /// The namespace.
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// A label (KEY=VALUE). Repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove every label (set none).
        #[arg(long, conflicts_with = "labels")]
        clear: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Make a new random 256-bit cluster secret, in base64. Give the same secret to every node.
    New {
        /// Write the secret to this new file (mode 0600) instead of stdout. An existing file is
        /// never overwritten.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },

    /// Check that the secret in --secret-file (or WEFT_SECRET_FILE) is acceptable: a private
    /// file holding at least 128 bits of entropy.
    Check,
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(flatten)]
    pub state: StateDirArg,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "NaN", "inf", "1e9", "ten", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} accepted");
        }
        let cli = Cli::try_parse_from(["weft", "status", "--timeout", "2.5"]).expect("parse");
        let Command::Status(args) = cli.command else {
            panic!("not status");
        };
        assert_eq!(args.timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn docker_plugin_takes_an_optional_socket() {
        let parse = |args: &[&str]| -> Option<String> {
            let cli =
                Cli::try_parse_from(["weft", "launch"].iter().chain(args).copied()).expect("parse");
            match cli.command {
                Command::Launch(l) => l.docker_plugin,
                _ => panic!("not launch"),
            }
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(
            parse(&["--docker-plugin"]).as_deref(),
            Some(crate::daemon::docker::DEFAULT_PLUGIN_SOCKET)
        );
        assert_eq!(
            parse(&["--docker-plugin=/tmp/p/weft.sock", "192.0.2.1"]).as_deref(),
            Some("/tmp/p/weft.sock")
        );
        // Without `=`, what follows is a peer, not the socket.
        assert_eq!(
            parse(&["--docker-plugin", "192.0.2.1"]).as_deref(),
            Some(crate::daemon::docker::DEFAULT_PLUGIN_SOCKET)
        );
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_and_argument_is_documented() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} --{id} has no help text");
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" {
                    assert!(sub.get_about().is_some(), "{name} has no help text");
                }
                check(sub, &name);
            }
        }
        check(&Cli::command(), "weft");
    }
}
