//! Packet capture with tcpdump inside a namespace, parsed by our own pcap reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::packet::Packet;
use crate::pcap::{parse_pcap, read_pcap};
use crate::proc::Proc;
use crate::shared::Shared;

/// A running tcpdump. [`Capture::finish`] stops it and returns the IP packets it saw;
/// dropping it unfinished just kills tcpdump.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    path: PathBuf,
    netns: String,
    interface: String,
}

impl Capture {
    /// Starts tcpdump on `interface` in `netns` and returns once it is capturing.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        netns: &str,
        interface: &str,
        bpf_filter: &str,
    ) -> Result<Capture> {
        let path = shared.path(&format!("{netns}-{interface}"), "pcap");
        let path_str = path.to_string_lossy().into_owned();
        let mut args = vec![
            "tcpdump",
            "-i",
            interface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            &path_str,
        ];
        if !bpf_filter.trim().is_empty() {
            args.push(bpf_filter);
        }
        let proc = Proc::spawn(shared, netns, &args)?;
        // tcpdump prints "listening on IF" once the socket and filter are in place.
        if !proc.wait_for_output("listening on", Duration::from_secs(10))? {
            let stderr = std::fs::read_to_string(proc.stderr_path()).unwrap_or_default();
            let _ = proc.kill();
            return Err(Error::Command {
                command: format!("ip netns exec {netns} {}", proc.command()),
                status: "did not start capturing".into(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(Capture {
            proc,
            path,
            netns: netns.to_string(),
            interface: interface.to_string(),
        })
    }

    /// Where the pcap file is (inside the test bed's temporary directory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace and interface being captured.
    pub fn location(&self) -> (&str, &str) {
        (&self.netns, &self.interface)
    }

    /// The packets written so far, without stopping the capture.
    pub fn packets_so_far(&self) -> Result<Vec<Packet>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => parse_pcap(&bytes, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(format!("reading {}", self.path.display()), e)),
        }
    }

    /// Waits up to `timeout` until some captured packet satisfies `pred`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Packet) -> bool) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.packets_so_far()?.iter().any(&pred) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets tcpdump write out what it has, stops it (SIGTERM, so the file is complete),
    /// and returns the IPv4/IPv6 packets captured, oldest first.
    pub fn finish(self) -> Result<Vec<Packet>> {
        self.settle();
        self.proc.signal("TERM")?;
        let clean = self.proc.wait_timeout(Duration::from_secs(5))?.is_some();
        if !clean {
            self.proc.kill()?;
        }
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        if clean {
            read_pcap(&self.path)
        } else {
            self.packets_so_far()
        }
    }

    /// Waits until the capture file stops growing: packets that were on the wire before
    /// `finish` was called have been read and written by tcpdump by then.
    fn settle(&self) {
        let size = || std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = size();
        let mut stable_rounds = 0;
        while stable_rounds < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = size();
            if now == last {
                stable_rounds += 1;
            } else {
                stable_rounds = 0;
                last = now;
            }
        }
    }
}
