//! The test bed: hosts as network namespaces on one underlay bridge, optional NAT routers.
//!
//! Layout for a bed named `wt<pid>x<n>`:
//! - `wt<pid>x<n>u`: the underlay namespace holding bridge `br0`. Nothing else lives there.
//! - `wt<pid>x<n>h<i>`: host i, underlay interface `eth0`. A public host's `eth0` is a veth
//!   whose peer `h<i>` is a port of `br0`; it has 198.18.0.(10+i)/16 and an on-link
//!   default route out of `eth0`.
//! - `wt<pid>x<n>r<i>`: the NAT router of host i (only if host i is behind NAT). Its `eth0`
//!   (peer `r<i>` on `br0`) has 198.18.1.(10+i)/16; its `lan0` faces the host, which has
//!   198.19.i.2/24 with a default route via 198.19.i.1. The router masquerades outgoing
//!   traffic and drops anything unsolicited from outside (nftables, conntrack), except
//!   IPv6 neighbour discovery, which it needs to answer.
//! - With IPv6: the underlay is fd00:<pid>:<n>::/64 (hosts ::1:<i+1>, routers ::2:<i+1>),
//!   host i's NAT LAN fd00:<pid>:<n>:<i+1>::/64; routers masquerade IPv6 too.
//!
//! - VM j (only with [`TestBedBuilder::vms`]): QEMU runs in the underlay namespace, its
//!   virtio-net is the tap `vm<j>` there on `br0`, and the VM has 198.18.2.(10+j)/16 with an
//!   on-link default route out of its `eth0`: a peer of the namespace hosts (see [`crate::Vm`]).
//!
//! Nothing is ever created in the root namespace: every veth is created inside a test
//! namespace with its peer moved straight into another one.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::capture::Capture;
use crate::cmd;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::shared::Shared;
use crate::vm::{Vm, VmPlan};

/// Most hosts a bed can have (keeps the address plan simple).
pub const MAX_HOSTS: usize = 200;

/// Name prefix of every namespace the test bed creates.
pub const NETNS_PREFIX: &str = "wt";

/// The nftables table used for [`TestBed::cut`] inside hosts.
pub const CUT_TABLE: &str = "weft_testbed_cut";

/// The nftables table used for [`TestBed::set_loss`] inside hosts.
pub const LOSS_TABLE: &str = "weft_testbed_loss";

/// The nftables table doing NAT inside routers.
pub const NAT_TABLE: &str = "weft_testbed_nat";

static BEDS: AtomicU32 = AtomicU32::new(0);

/// Configures a [`TestBed`]; see [`TestBed::builder`].
#[derive(Debug, Clone, Default)]
pub struct TestBedBuilder {
    hosts: usize,
    ipv6: bool,
    nat: Vec<usize>,
    vms: usize,
    vm_share: Option<PathBuf>,
}

impl TestBedBuilder {
    /// Number of hosts.
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Also give every host a ULA IPv6 underlay address.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Put these hosts (by index) each behind its own masquerading NAT router.
    pub fn nat(mut self, hosts: &[usize]) -> Self {
        self.nat = hosts.to_vec();
        self
    }

    /// Also boot `n` virtual machines on the underlay ([`crate::Vm`]; needs the image:
    /// check [`crate::require_vm`] first). They boot in parallel; `build` returns once all
    /// answer.
    pub fn vms(mut self, n: usize) -> Self {
        self.vms = n;
        self
    }

    /// The directory shared read-only into the VMs at the same path. Default: the directory
    /// two levels above the running test binary (`target/debug` for `target/debug/deps/T`),
    /// which holds the binaries Cargo built for the tests.
    pub fn vm_share(mut self, dir: impl Into<PathBuf>) -> Self {
        self.vm_share = Some(dir.into());
        self
    }

    /// Creates the namespaces (and VMs). On error, whatever was created is removed again.
    pub fn build(self) -> Result<TestBed> {
        if self.vms > MAX_HOSTS {
            return Err(Error::Invalid(format!("vms must be at most {MAX_HOSTS}")));
        }
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return Err(Error::Invalid(format!(
                "hosts must be 1..={MAX_HOSTS}, got {}",
                self.hosts
            )));
        }
        if let Some(bad) = self.nat.iter().find(|&&i| i >= self.hosts) {
            return Err(Error::Invalid(format!(
                "nat host {bad} out of range (bed has {} hosts)",
                self.hosts
            )));
        }
        sweep_stale();
        let pid = std::process::id();
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NETNS_PREFIX}{pid}x{n}");
        let shared = Arc::new(Shared::new(&prefix)?);
        let mut bed = TestBed {
            underlay_ns: format!("{prefix}u"),
            prefix,
            namespaces: Vec::new(),
            hosts: Vec::new(),
            // Truncation is fine: the prefix only has to be unique among live beds' namespaces,
            // and each bed's IPv6 lives only inside its own namespaces.
            v6_prefix: self.ipv6.then_some([0xfd00, pid as u16, n as u16]),
            cuts: Mutex::new(CutState::default()),
            containers: Mutex::new(Vec::new()),
            vms: Vec::new(),
            underlay_cuts: Mutex::new(HashSet::new()),
            shared,
        };
        // If anything below fails, dropping `bed` removes what exists so far.
        bed.create_underlay()?;
        for i in 0..self.hosts {
            let host = bed.create_host(i, self.nat.contains(&i))?;
            bed.hosts.push(host);
        }
        if self.vms > 0 {
            let image = crate::vm::vm_image().map_err(Error::Invalid)?;
            let share = match self.vm_share {
                Some(dir) => dir,
                None => default_share()?,
            };
            let plan = VmPlan { image, share };
            let mut booting = Vec::new();
            for j in 0..self.vms {
                booting.push(Vm::start(
                    &bed.shared,
                    &bed.underlay_ns,
                    &bed.prefix,
                    j,
                    &plan,
                )?);
            }
            for vm in booting {
                bed.vms.push(vm.wait()?);
            }
        }
        Ok(bed)
    }
}

#[derive(Debug, Default)]
struct CutState {
    tables: HashSet<usize>,
    cuts: HashSet<(usize, usize)>,
}

/// A set of test hosts, each a network namespace, on one underlay bridge.
///
/// Dropping it kills every process it started (and anything else still running in its
/// namespaces), then deletes its namespaces and temporary files, also during a panic.
#[derive(Debug)]
pub struct TestBed {
    prefix: String,
    underlay_ns: String,
    namespaces: Vec<String>,
    hosts: Vec<Host>,
    v6_prefix: Option<[u16; 3]>,
    cuts: Mutex<CutState>,
    /// Namespaces made by [`TestBed::container`], removed before the hosts.
    containers: Mutex<Vec<String>>,
    vms: Vec<Vm>,
    /// Address pairs cut on the underlay bridge ([`TestBed::cut_underlay`]).
    underlay_cuts: Mutex<HashSet<(Ipv4Addr, Ipv4Addr)>>,
    shared: Arc<Shared>,
}

impl TestBed {
    /// `hosts` public hosts on one underlay bridge, IPv4 only.
    pub fn new(hosts: usize) -> Result<TestBed> {
        Self::builder().hosts(hosts).build()
    }

    /// A builder for beds with IPv6 or NAT.
    pub fn builder() -> TestBedBuilder {
        TestBedBuilder::default()
    }

    /// Host `i`. Panics if out of range, like indexing.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// All hosts, by index.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// VM `j`. Panics if out of range, like indexing.
    pub fn vm(&self, j: usize) -> &Vm {
        &self.vms[j]
    }

    /// All VMs, by index.
    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }

    /// Drops all underlay traffic between addresses `a` and `b`, both ways, on the underlay
    /// bridge itself (table `bridge weft_testbed_cut` in the underlay namespace): works for
    /// any two public hosts or VMs, whose own firewalls stay untouched. Idempotent.
    pub fn cut_underlay(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<()> {
        if a == b {
            return Err(Error::Invalid(format!("cannot cut {a} from itself")));
        }
        let mut cuts = self.underlay_cuts.lock().unwrap_or_else(|p| p.into_inner());
        if cuts.is_empty() {
            nft(
                &self.underlay_ns,
                &format!(
                    "table bridge {CUT_TABLE} {{
  set pairs {{ type ipv4_addr . ipv4_addr; }}
  chain forward {{ type filter hook forward priority -300; policy accept;
    ip saddr . ip daddr @pairs drop; }}
}}
"
                ),
            )?;
        }
        nft(
            &self.underlay_ns,
            &format!("add element bridge {CUT_TABLE} pairs {{ {a} . {b}, {b} . {a} }}\n"),
        )?;
        cuts.insert((a.min(b), a.max(b)));
        Ok(())
    }

    /// Undoes [`TestBed::cut_underlay`]. Idempotent.
    pub fn restore_underlay(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<()> {
        let mut cuts = self.underlay_cuts.lock().unwrap_or_else(|p| p.into_inner());
        if !cuts.remove(&(a.min(b), a.max(b))) {
            return Ok(());
        }
        nft(
            &self.underlay_ns,
            &format!("delete element bridge {CUT_TABLE} pairs {{ {a} . {b}, {b} . {a} }}\n"),
        )
    }

    /// The bed's unique name prefix (`wt<pid>x<n>`); every namespace name starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace the bed created (underlay, hosts, routers).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The namespace holding the underlay bridge `br0`.
    pub fn underlay_ns(&self) -> &str {
        &self.underlay_ns
    }

    /// Creates an empty network namespace `wt<pid>x<n>c<k>` (loopback up) to play a container,
    /// e.g. to attach to a node's bridge. It is removed, with whatever runs in it, when the
    /// bed drops (before the hosts), or earlier with [`TestBed::remove_container`].
    pub fn container(&self) -> Result<String> {
        let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!("{}c{}", self.prefix, self.shared.next_id());
        cmd::ok(&["ip", "netns", "add", &name])?;
        containers.push(name.clone());
        cmd::ok(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Removes a namespace made by [`TestBed::container`] now (killing what runs in it).
    pub fn remove_container(&self, name: &str) {
        let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = containers.iter().position(|n| n == name) {
            containers.remove(at);
            remove_netns(name);
        }
    }

    /// Runs a command inside any namespace of this bed (a host, router or container) and
    /// returns its output, whatever the exit status.
    pub fn run_in(&self, netns: &str, args: &[&str]) -> Result<std::process::Output> {
        if args.is_empty() {
            return Err(Error::Invalid("empty command".into()));
        }
        let mut full = vec!["ip", "netns", "exec", netns];
        full.extend_from_slice(args);
        cmd::output(&full)
    }

    /// Like [`TestBed::run_in`], but an error (with stderr) unless the command exits 0.
    /// Returns stdout.
    pub fn run_ok_in(&self, netns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", netns];
        full.extend_from_slice(args);
        let out = self.run_in(netns, args)?;
        cmd::check(&full, out)
    }

    /// Starts a background process inside any namespace of this bed; like [`Host::spawn`].
    pub fn spawn_in(&self, netns: &str, args: &[&str]) -> Result<crate::Proc> {
        crate::Proc::spawn(&self.shared, netns, args)
    }

    /// Drops all underlay traffic between hosts `a` and `b`, both ways, with nftables rules
    /// inside both hosts' namespaces (table `weft_testbed_cut`, matched on the peer's public
    /// address). Idempotent.
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        self.check_pair(a, b)?;
        let mut state = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        for (me, peer) in [(a, b), (b, a)] {
            if !state.tables.contains(&me) {
                self.install_cut_table(me)?;
                state.tables.insert(me);
            }
            self.cut_elements(me, peer, "add")?;
        }
        state.cuts.insert((a.min(b), a.max(b)));
        Ok(())
    }

    /// Undoes [`TestBed::cut`]. Idempotent.
    pub fn restore(&self, a: usize, b: usize) -> Result<()> {
        self.check_pair(a, b)?;
        let mut state = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        if !state.cuts.contains(&(a.min(b), a.max(b))) {
            return Ok(());
        }
        for (me, peer) in [(a, b), (b, a)] {
            self.cut_elements(me, peer, "delete")?;
        }
        state.cuts.remove(&(a.min(b), a.max(b)));
        Ok(())
    }

    /// Splits the hosts into groups that cannot reach each other: every pair of hosts in
    /// different groups is [`TestBed::cut`]. Hosts in no group keep all their links.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<()> {
        for (n, group) in groups.iter().enumerate() {
            for other in &groups[n + 1..] {
                for &a in group.iter() {
                    for &b in other.iter() {
                        self.cut(a, b)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Restores every cut (undoes [`TestBed::partition`] and all [`TestBed::cut`]s).
    pub fn heal(&self) -> Result<()> {
        let cuts: Vec<_> = {
            let state = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
            state.cuts.iter().copied().collect()
        };
        for (a, b) in cuts {
            self.restore(a, b)?;
        }
        Ok(())
    }

    /// Randomly drops `percent`% of host `i`'s underlay packets in each direction (nftables
    /// `numgen random`; the kernel here has no netem). 0 removes the loss again.
    pub fn set_loss(&self, i: usize, percent: u8) -> Result<()> {
        let host = self.checked_host(i)?;
        if percent > 100 {
            return Err(Error::Invalid(format!("loss {percent}% is over 100%")));
        }
        let ifname = &host.underlay_if;
        // `add table` + `delete table` first makes this idempotent whether or not it exists.
        let mut script = format!("add table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n");
        if percent > 0 {
            // numgen's range is 0..=99, so 100% is a plain drop.
            let sample = if percent == 100 {
                String::new()
            } else {
                format!("numgen random mod 100 < {percent} ")
            };
            script.push_str(&format!(
                "table inet {LOSS_TABLE} {{
  chain input {{ type filter hook input priority -300; policy accept;
    iifname \"{ifname}\" {sample}drop; }}
  chain output {{ type filter hook output priority -300; policy accept;
    oifname \"{ifname}\" {sample}drop; }}
}}
"
            ));
        }
        nft(&host.name, &script)
    }

    /// Starts tcpdump on host `i`'s underlay interface with a BPF filter ("" for all) and
    /// returns once it is capturing.
    pub fn capture(&self, i: usize, bpf_filter: &str) -> Result<Capture> {
        let host = self.checked_host(i)?;
        Capture::start(&self.shared, &host.name, &host.underlay_if, bpf_filter)
    }

    /// Starts tcpdump on `interface` inside any namespace of this bed (a container's `eth0`,
    /// a host's bridge) and returns once it is capturing.
    pub fn capture_in(&self, netns: &str, interface: &str, bpf_filter: &str) -> Result<Capture> {
        Capture::start(&self.shared, netns, interface, bpf_filter)
    }

    /// Starts tcpdump on the outside leg (`eth0`) of host `i`'s NAT router: what the
    /// underlay sees of a NATed host.
    pub fn capture_router(&self, i: usize, bpf_filter: &str) -> Result<Capture> {
        let host = self.checked_host(i)?;
        let router = host
            .router
            .as_deref()
            .ok_or_else(|| Error::Invalid(format!("host {i} is not behind NAT")))?;
        Capture::start(&self.shared, router, "eth0", bpf_filter)
    }

    fn checked_host(&self, i: usize) -> Result<&Host> {
        self.hosts.get(i).ok_or_else(|| {
            Error::Invalid(format!(
                "host {i} out of range ({} hosts)",
                self.hosts.len()
            ))
        })
    }

    fn check_pair(&self, a: usize, b: usize) -> Result<()> {
        self.checked_host(a)?;
        self.checked_host(b)?;
        if a == b {
            return Err(Error::Invalid(format!("cannot cut host {a} from itself")));
        }
        Ok(())
    }

    fn install_cut_table(&self, i: usize) -> Result<()> {
        let script = format!(
            "table inet {CUT_TABLE} {{
  set peers4 {{ type ipv4_addr; }}
  set peers6 {{ type ipv6_addr; }}
  chain input {{ type filter hook input priority -300; policy accept;
    ip saddr @peers4 drop; ip6 saddr @peers6 drop; }}
  chain output {{ type filter hook output priority -300; policy accept;
    ip daddr @peers4 drop; ip6 daddr @peers6 drop; }}
  chain forward {{ type filter hook forward priority -300; policy accept;
    ip saddr @peers4 drop; ip daddr @peers4 drop; ip6 saddr @peers6 drop; ip6 daddr @peers6 drop; }}
}}
"
        );
        nft(&self.hosts[i].name, &script)
    }

    fn cut_elements(&self, me: usize, peer: usize, verb: &str) -> Result<()> {
        let peer = &self.hosts[peer];
        let mut script = format!(
            "{verb} element inet {CUT_TABLE} peers4 {{ {} }}\n",
            peer.public_ip
        );
        if let Some(ip6) = peer.public_ip6 {
            script.push_str(&format!(
                "{verb} element inet {CUT_TABLE} peers6 {{ {ip6} }}\n"
            ));
        }
        nft(&self.hosts[me].name, &script)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        cmd::ok(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_string());
        cmd::ok(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn create_underlay(&mut self) -> Result<()> {
        let u = self.underlay_ns.clone();
        self.add_netns(&u)?;
        ip(&u, &["link", "add", "br0", "type", "bridge"])?;
        ip(&u, &["link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Plugs `ns`'s new interface `ifname` into the bridge as port `port`.
    fn plug(&self, ns: &str, ifname: &str, port: &str) -> Result<()> {
        let u = self.underlay_ns.as_str();
        ip(
            ns,
            &[
                "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", u,
            ],
        )?;
        ip(u, &["link", "set", port, "master", "br0"])?;
        ip(u, &["link", "set", port, "up"])?;
        Ok(())
    }

    fn v6(&self, subnet: u16, a: u16, b: u16) -> Option<Ipv6Addr> {
        self.v6_prefix
            .map(|[p0, p1, p2]| Ipv6Addr::new(p0, p1, p2, subnet, 0, 0, a, b))
    }

    fn create_host(&mut self, i: usize, nat: bool) -> Result<Host> {
        let name = format!("{}h{i}", self.prefix);
        self.add_netns(&name)?;
        // i < MAX_HOSTS = 200, so these fit in an octet.
        let octet = i as u8;
        let public4 = Ipv4Addr::new(198, 18, u8::from(nat), 10 + octet);
        let public6 = self.v6(0, if nat { 2 } else { 1 }, i as u16 + 1);
        let mut host = Host {
            name: name.clone(),
            index: i,
            underlay_if: "eth0".into(),
            underlay_ip: public4,
            underlay_ip6: public6,
            public_ip: public4,
            public_ip6: public6,
            router: None,
            shared: Arc::clone(&self.shared),
        };
        if !nat {
            self.plug(&name, "eth0", &format!("h{i}"))?;
            ip(
                &name,
                &["addr", "add", &format!("{public4}/16"), "dev", "eth0"],
            )?;
            if let Some(a) = public6 {
                ip(
                    &name,
                    &["addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"],
                )?;
            }
            ip(&name, &["link", "set", "eth0", "up"])?;
            // Like a real host, route everything somewhere, so a route lookup for any address
            // (e.g. to pick a source address) succeeds; unknown destinations just never answer.
            ip(&name, &["route", "add", "default", "dev", "eth0"])?;
            if public6.is_some() {
                ip(&name, &["-6", "route", "add", "default", "dev", "eth0"])?;
            }
            return Ok(host);
        }

        let router = format!("{}r{i}", self.prefix);
        self.add_netns(&router)?;
        let lan_router4 = Ipv4Addr::new(198, 19, octet, 1);
        let lan_host4 = Ipv4Addr::new(198, 19, octet, 2);
        let lan_router6 = self.v6(i as u16 + 1, 0, 1);
        let lan_host6 = self.v6(i as u16 + 1, 0, 2);

        // Router: outside leg on the bridge, inside leg to the host.
        self.plug(&router, "eth0", &format!("r{i}"))?;
        ip(
            &router,
            &[
                "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
        )?;
        sysctl(
            &router,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.eth0.rp_filter=0",
                "net.ipv4.conf.lan0.rp_filter=0",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        ip(
            &router,
            &["addr", "add", &format!("{public4}/16"), "dev", "eth0"],
        )?;
        ip(
            &router,
            &["addr", "add", &format!("{lan_router4}/24"), "dev", "lan0"],
        )?;
        if let (Some(outside), Some(inside)) = (public6, lan_router6) {
            ip(
                &router,
                &[
                    "addr",
                    "add",
                    &format!("{outside}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            ip(
                &router,
                &[
                    "addr",
                    "add",
                    &format!("{inside}/64"),
                    "dev",
                    "lan0",
                    "nodad",
                ],
            )?;
        }
        ip(&router, &["link", "set", "eth0", "up"])?;
        ip(&router, &["link", "set", "lan0", "up"])?;
        nft(
            &router,
            &format!(
                "table inet {NAT_TABLE} {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    oifname \"eth0\" masquerade; }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    iifname \"lan0\" oifname \"eth0\" accept;
    ct state established,related accept; }}
  chain input {{ type filter hook input priority filter; policy accept;
    iifname \"eth0\" ct state established,related accept;
    iifname \"eth0\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept;
    iifname \"eth0\" drop; }}
}}
"
            ),
        )?;

        // Host: private address, default route via the router.
        ip(
            &name,
            &["addr", "add", &format!("{lan_host4}/24"), "dev", "eth0"],
        )?;
        if let Some(a) = lan_host6 {
            ip(
                &name,
                &["addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"],
            )?;
        }
        ip(&name, &["link", "set", "eth0", "up"])?;
        ip(
            &name,
            &["route", "add", "default", "via", &lan_router4.to_string()],
        )?;
        if let Some(gw) = lan_router6 {
            ip(
                &name,
                &["-6", "route", "add", "default", "via", &gw.to_string()],
            )?;
        }

        host.underlay_ip = lan_host4;
        host.underlay_ip6 = lan_host6;
        host.router = Some(router);
        Ok(host)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // QEMU is among the processes: the VMs go first.
        crate::proc::kill_all(self.shared.take_procs());
        let containers =
            std::mem::take(&mut *self.containers.lock().unwrap_or_else(|p| p.into_inner()));
        for ns in containers.iter().rev() {
            remove_netns(ns);
        }
        for ns in self.namespaces.iter().rev() {
            remove_netns(ns);
        }
    }
}

/// Two levels above the running test binary: `target/debug` for `target/debug/deps/T`.
fn default_share() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the test binary", e))?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .ok_or_else(|| Error::Invalid(format!("no share directory above {}", exe.display())))
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    cmd::ok(&full)
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns, "sysctl", "-q", "-w"];
    full.extend_from_slice(settings);
    cmd::ok(&full)
}

fn nft(ns: &str, script: &str) -> Result<()> {
    cmd::ok_with_stdin(&["ip", "netns", "exec", ns, "nft", "-f", "-"], script).map(|_| ())
}

/// Kills whatever still runs in `ns`, then deletes it. Errors are reported, not returned:
/// this runs in `Drop`.
fn remove_netns(ns: &str) {
    if let Ok(pids) = cmd::ok(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = cmd::signal(pid, "KILL");
        }
    }
    if let Err(e) = cmd::ok(&["ip", "netns", "del", ns]) {
        if crate::netns_exists(ns) {
            eprintln!("weft-testbed: could not delete namespace {ns}: {e}");
        }
    }
}

/// The pid encoded in a test bed namespace name (`wt<pid>x<n>u|h<i>|r<i>|c<k>`), if it is one.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) {
        return None;
    }
    let split = rest.find(|c: char| !c.is_ascii_digit())?;
    let (bed, role) = rest.split_at(split);
    let role_ok = role == "u"
        || role
            .strip_prefix('h')
            .or_else(|| role.strip_prefix('r'))
            .or_else(|| role.strip_prefix('c'))
            .is_some_and(digits);
    (digits(bed) && role_ok).then(|| pid.parse().ok()).flatten()
}

/// Deletes test bed namespaces whose creating process is gone (killed tests, SIGKILL, ...).
pub fn sweep_stale() {
    for ns in crate::list_netns() {
        if let Some(pid) = owner_pid(&ns) {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                remove_netns(&ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("wt123x0u"), Some(123));
        assert_eq!(owner_pid("wt123x17h4"), Some(123));
        assert_eq!(owner_pid("wt9x2r11"), Some(9));
        assert_eq!(owner_pid("wt9x2c3"), Some(9));
        for other in [
            "wt123x0", "wt123x0h", "wtx0u", "wt12ax0u", "wt1x0q1", "cni-1234", "wt1x0uu",
            "wt1x0h1a", "wt1x0c",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }
}
