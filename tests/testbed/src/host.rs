//! One test host: a network namespace with an underlay interface.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Output;
use std::sync::Arc;

use crate::cmd;
use crate::error::{Error, Result};
use crate::proc::Proc;
use crate::shared::Shared;

/// A test host. Cheap to borrow from the [`crate::TestBed`]; everything it starts is cleaned
/// up when the test bed drops.
#[derive(Debug)]
pub struct Host {
    pub(crate) name: String,
    pub(crate) index: usize,
    pub(crate) underlay_if: String,
    pub(crate) underlay_ip: Ipv4Addr,
    pub(crate) underlay_ip6: Option<Ipv6Addr>,
    pub(crate) public_ip: Ipv4Addr,
    pub(crate) public_ip6: Option<Ipv6Addr>,
    pub(crate) router: Option<String>,
    pub(crate) shared: Arc<Shared>,
}

impl Host {
    /// The network namespace's name (use with `ip netns exec`, `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Position in the test bed (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host's own IPv4 address on its underlay interface (private when behind NAT).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// The host's own ULA IPv6 address, when the test bed was built with `ipv6(true)`.
    pub fn underlay_ip6(&self) -> Option<Ipv6Addr> {
        self.underlay_ip6
    }

    /// The underlay interface inside the namespace (`eth0`).
    pub fn underlay_if(&self) -> &str {
        &self.underlay_if
    }

    /// The IPv4 address other hosts reach this one at: its NAT router's outside address when
    /// behind NAT, else [`Host::underlay_ip`].
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// Like [`Host::public_ip`] for IPv6 (the router's outside address when behind NAT).
    pub fn public_ip6(&self) -> Option<Ipv6Addr> {
        self.public_ip6
    }

    /// True if the host sits behind its own NAT router.
    pub fn behind_nat(&self) -> bool {
        self.router.is_some()
    }

    /// The NAT router's namespace name, if the host is behind NAT.
    pub fn router_name(&self) -> Option<&str> {
        self.router.as_deref()
    }

    fn exec_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        full
    }

    /// Runs a command inside the namespace and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        if args.is_empty() {
            return Err(Error::Invalid("empty command".into()));
        }
        cmd::output(&self.exec_args(args))
    }

    /// Runs a command inside the namespace; an error (with stderr) unless it exits 0.
    /// Returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let full = self.exec_args(args);
        let out = self.run(args)?;
        cmd::check(&full, out)
    }

    /// Runs `sh -c script` inside the namespace; like [`Host::run_ok`].
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run_ok(&["sh", "-c", script])
    }

    /// Starts a background process inside the namespace. It is killed (with everything it
    /// started) and reaped when the [`Proc`] or the test bed drops.
    pub fn spawn(&self, args: &[&str]) -> Result<Proc> {
        Proc::spawn(&self.shared, &self.name, args)
    }

    /// Sends `count` pings (0.2 s apart, 1 s wait for the last) and returns true if at least
    /// one reply arrived.
    pub fn ping(&self, dst: IpAddr, count: u32) -> bool {
        let count = count.max(1).to_string();
        let dst = dst.to_string();
        match self.run(&[
            "ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", &dst,
        ]) {
            Ok(out) => received(&String::from_utf8_lossy(&out.stdout)) > 0,
            Err(_) => false,
        }
    }
}

/// Parses "N packets transmitted, M received" from ping's summary.
fn received(summary: &str) -> u32 {
    summary
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::received;

    #[test]
    fn ping_summary() {
        assert_eq!(
            received("3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms"),
            2
        );
        assert_eq!(
            received("3 packets transmitted, 0 received, +3 errors, 100% packet loss"),
            0
        );
        assert_eq!(received("ping: connect: Network is unreachable"), 0);
    }
}
