//! What a node needs from its host, checked once before `weft launch` (and `weft demo`)
//! starts anything: the `nft` program, the kernel's nftables, `CAP_NET_ADMIN`, and the TUN
//! device when the userspace datapath may be used. A missing piece is refused at once with
//! what to install or change, instead of a datapath that retries and times out.
//!
//! The facts are gathered by [`Host::probe`]; [`problems`] turns them into messages and is
//! pure, so every combination is tested without changing the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The bit of `CAP_NET_ADMIN` in the capability sets of /proc/self/status.
const CAP_NET_ADMIN: u32 = 12;
const TUN_DEVICE: &str = "/dev/net/tun";

/// What the host offers, as far as weft's datapath is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Where `nft` was found on PATH.
    pub nft: Option<PathBuf>,
    /// `nft list tables` failed although the program runs: its stderr (no nf_tables in the
    /// kernel, or not allowed).
    pub nftables_error: Option<String>,
    /// The effective capabilities include `CAP_NET_ADMIN`.
    pub net_admin: bool,
    /// /dev/net/tun opened for reading and writing, or why not.
    pub tun: Result<(), String>,
    /// The kernel can make a WireGuard link (`auto` then picks the kernel datapath): the
    /// module is loaded, or the probe `detect()` also runs made one (which loads it).
    pub kernel_wireguard: bool,
}

/// Which WireGuard datapath the node will use, as far as the check is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// `--datapath off`: gossip and IPAM only; nothing on the host is touched.
    Off,
    /// `--datapath kernel`: no TUN device needed.
    Kernel,
    /// `--datapath userspace`: the TUN device is needed.
    Userspace,
    /// `--datapath auto`: the kernel's WireGuard where the kernel has it, else userspace.
    Auto,
}

impl Datapath {
    pub fn from_flag(flag: &str) -> Self {
        match flag {
            "off" => Datapath::Off,
            "kernel" => Datapath::Kernel,
            "userspace" => Datapath::Userspace,
            _ => Datapath::Auto,
        }
    }
}

impl Host {
    /// Look at this host (runs `nft list tables` once, opens the TUN device once). For
    /// `auto`, whether the kernel has WireGuard: a loaded module, else the same probe link
    /// `detect()` makes: on most distributions the module is only loaded on first use, and a
    /// host with it but without a TUN device must not be refused.
    pub fn probe(datapath: Datapath) -> Host {
        let nft = find_in_path("nft");
        let nftables_error = nft.as_deref().and_then(nftables_error);
        let kernel_wireguard = Path::new("/sys/module/wireguard").exists()
            || (datapath == Datapath::Auto && weft_mesh::kernel::probe().is_ok());
        Host {
            nft,
            nftables_error,
            net_admin: has_net_admin(),
            tun: open_tun(),
            kernel_wireguard,
        }
    }
}

/// What stops a node on `host` from running with `datapath`, one message per problem.
pub fn problems(host: &Host, datapath: Datapath) -> Vec<String> {
    let mut out = Vec::new();
    if datapath == Datapath::Off {
        return out;
    }
    if !host.net_admin {
        out.push(
            "weft needs CAP_NET_ADMIN (run it as root, or give the process that capability)"
                .to_string(),
        );
    }
    match (&host.nft, &host.nftables_error) {
        (None, _) => out.push(
            "the nft program is not installed: weft keeps its fail-closed firewall with it \
             (Debian/Ubuntu: apt-get install nftables; Fedora/RHEL: dnf install nftables)"
                .to_string(),
        ),
        // Without CAP_NET_ADMIN, nft fails for that reason: already said.
        (Some(_), Some(e)) if host.net_admin => out.push(format!(
            "nft cannot read the kernel's nftables ({e}): the kernel needs nf_tables \
             (modprobe nf_tables, or a kernel built with CONFIG_NF_TABLES)"
        )),
        _ => {}
    }
    let userspace = match datapath {
        Datapath::Userspace => true,
        Datapath::Auto => !host.kernel_wireguard,
        Datapath::Off | Datapath::Kernel => false,
    };
    if userspace {
        if let Err(e) = &host.tun {
            out.push(format!(
                "{TUN_DEVICE} cannot be opened ({e}): the userspace WireGuard datapath needs \
                 the TUN device (modprobe tun; in a container, pass --device /dev/net/tun)"
            ));
        }
    }
    out
}

/// Refuse with every problem at once, or go on.
pub fn check(datapath: &str) -> anyhow::Result<()> {
    let datapath = Datapath::from_flag(datapath);
    let problems = problems(&Host::probe(datapath), datapath);
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "this host cannot run a weft node yet:\n  - {}",
        problems.join("\n  - ")
    )
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn nftables_error(nft: &Path) -> Option<String> {
    let out = Command::new(nft)
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
                .to_string(),
        ),
        Err(e) => Some(e.to_string()),
    }
}

/// Reads CapEff from /proc/self/status.
fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

fn open_tun() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Host {
        Host {
            nft: Some("/usr/sbin/nft".into()),
            nftables_error: None,
            net_admin: true,
            tun: Ok(()),
            kernel_wireguard: false,
        }
    }

    #[test]
    fn a_complete_host_has_no_problem() {
        for d in [
            Datapath::Off,
            Datapath::Kernel,
            Datapath::Userspace,
            Datapath::Auto,
        ] {
            assert!(problems(&healthy(), d).is_empty(), "{d:?}");
        }
    }

    #[test]
    fn missing_nft_names_the_package() {
        let host = Host {
            nft: None,
            ..healthy()
        };
        let p = problems(&host, Datapath::Auto);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("apt-get install nftables"), "{p:?}");
        assert!(problems(&host, Datapath::Off).is_empty());
    }

    #[test]
    fn a_kernel_without_nftables_is_named() {
        let host = Host {
            nftables_error: Some("Operation not supported".into()),
            ..healthy()
        };
        let p = problems(&host, Datapath::Kernel);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("nf_tables"), "{p:?}");
    }

    #[test]
    fn without_net_admin_only_that_is_said_about_nft() {
        let host = Host {
            net_admin: false,
            nftables_error: Some("Operation not permitted".into()),
            ..healthy()
        };
        let p = problems(&host, Datapath::Kernel);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("CAP_NET_ADMIN"), "{p:?}");
    }

    #[test]
    fn tun_matters_only_for_the_userspace_datapath() {
        let host = Host {
            tun: Err("No such file or directory (os error 2)".into()),
            ..healthy()
        };
        assert!(problems(&host, Datapath::Kernel).is_empty());
        let p = problems(&host, Datapath::Userspace);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("/dev/net/tun"), "{p:?}");
        // auto falls back to userspace only without the kernel module.
        assert_eq!(problems(&host, Datapath::Auto), p);
        let with_module = Host {
            kernel_wireguard: true,
            ..host
        };
        assert!(problems(&with_module, Datapath::Auto).is_empty());
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let host = Host {
            nft: None,
            nftables_error: None,
            net_admin: false,
            tun: Err("denied".into()),
            kernel_wireguard: false,
        };
        assert_eq!(problems(&host, Datapath::Userspace).len(), 3);
    }
}
