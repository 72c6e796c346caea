//! Test bed for weft's integration tests: hosts as network namespaces on an underlay
//! bridge, with NAT routers, link cuts, packet capture and cleanup on drop; and hosts as
//! small QEMU virtual machines with a kernel of their own on the same underlay ([`Vm`]).
//! See docs/ARCHITECTURE.md and the [`TestBed`] docs for the namespace and address layout.
//!
//! ```no_run
//! # fn main() -> weft_testbed::Result<()> {
//! if !weft_testbed::require_root("my_test") {
//!     return Ok(());
//! }
//! let bed = weft_testbed::TestBed::new(2)?;
//! assert!(bed.host(0).ping(bed.host(1).public_ip().into(), 1));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod bed;
mod capture;
mod cmd;
mod error;
mod host;
mod packet;
mod pcap;
mod proc;
mod shared;
mod vm;

use std::io::Write;
use std::time::{Duration, Instant};

pub use bed::{
    sweep_stale, TestBed, TestBedBuilder, CUT_TABLE, LOSS_TABLE, MAX_HOSTS, NAT_TABLE, NETNS_PREFIX,
};
pub use capture::Capture;
pub use error::{Error, Result};
pub use host::Host;
pub use packet::{Packet, Udp, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
pub use pcap::{parse_pcap, read_pcap};
pub use proc::{Proc, ProcOutput};
pub use vm::{
    ping_args, ping_replies, require_vm, vm_image, Vm, VmImage, VmProc, REQUIRE_VM_ENV,
    RUN_TIMEOUT, VM_CACHE_ENV, VM_MEMORY_MB,
};

/// Set this to `1` to make [`require_root`] panic instead of skipping (CI sets it, so a
/// netns test can never be skipped silently there).
pub const REQUIRE_ENV: &str = "WEFT_REQUIRE_NETNS";

const CAP_NET_ADMIN: u32 = 12;

/// True if this process can build test beds (effective uid 0 and CAP_NET_ADMIN). Otherwise
/// prints `skipped: <test_name>: <why>` and returns false, so the test can return early;
/// with `WEFT_REQUIRE_NETNS=1` it panics instead.
pub fn require_root(test_name: &str) -> bool {
    match missing_privilege() {
        None => true,
        Some(why) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{test_name}: {why}, but {REQUIRE_ENV}=1");
            }
            // Straight to stderr, past the test harness's capture, so skips are visible.
            let _ = writeln!(std::io::stderr(), "skipped: {test_name}: {why}");
            false
        }
    }
}

fn missing_privilege() -> Option<String> {
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => s,
        Err(e) => return Some(format!("cannot read /proc/self/status: {e}")),
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = field("Uid:").and_then(|v| v.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("needs root (network namespaces)".into());
    }
    let cap_eff = field("CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok());
    if cap_eff.is_none_or(|caps| caps & (1 << CAP_NET_ADMIN) == 0) {
        return Some("needs CAP_NET_ADMIN".into());
    }
    if cmd::output(&["ip", "-V"]).is_err() {
        return Some("needs the `ip` tool (iproute2)".into());
    }
    None
}

/// Names of all named network namespaces (`ip netns list`).
pub fn list_netns() -> Vec<String> {
    match std::fs::read_dir("/run/netns") {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// True if a named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Polls `cond` every 20 ms until it returns true (then true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    /// Tests share a bed between threads (`std::thread::scope`, tokio): keep it `Send + Sync`.
    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::TestBed>();
        send_sync::<crate::Host>();
        send_sync::<crate::Proc>();
        send_sync::<crate::Capture>();
        send_sync::<crate::Packet>();
        send_sync::<crate::Error>();
        send_sync::<crate::Vm>();
        send_sync::<crate::VmProc>();
    }
}
