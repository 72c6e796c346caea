//! Flows between test pods, for the policy tests (tests/policy.rs, tests/kubernetes.rs): a
//! server answering TCP 80 and 81 and UDP 80 with its name, one-shot probes, and waiting
//! for a flow to open or close.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use crate::cluster::{Cluster, Container};

/// How long [`until`] waits before it fails the test.
const UNTIL_LIMIT: Duration = Duration::from_secs(60);

/// Runs `f` on a thread that entered network namespace `netns`.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(format!("/run/netns/{netns}")).expect("open netns");
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Serves TCP 80 and 81 and UDP 80 in `netns` until `stop`; answers with `name`.
pub fn serve(netns: String, name: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let ns = File::open(format!("/run/netns/{netns}")).expect("open netns");
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let tcp: Vec<TcpListener> = [80, 81]
            .iter()
            .map(|p| TcpListener::bind((any, *p)).expect("bind tcp"))
            .collect();
        let udp = UdpSocket::bind((any, 80)).expect("bind udp");
        for l in &tcp {
            l.set_nonblocking(true).expect("nonblocking");
        }
        udp.set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            for l in &tcp {
                if let Ok((mut conn, _)) = l.accept() {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.write_all(format!("{name}\n").as_bytes());
                }
            }
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(name.as_bytes(), from);
            }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One attempt from `from` to `to`: true if `to` answered.
pub fn reaches(from: &Container, to: &Container, proto: Proto, port: u16, wait: Duration) -> bool {
    let dst = SocketAddr::from((to.addr, port));
    in_netns(&from.netns, || match proto {
        Proto::Tcp => TcpStream::connect_timeout(&dst, wait)
            .and_then(|c| {
                c.set_read_timeout(Some(wait))?;
                let mut line = String::new();
                BufReader::new(c).read_line(&mut line)?;
                Ok(!line.is_empty())
            })
            .unwrap_or(false),
        Proto::Udp => (|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            s.set_read_timeout(Some(wait)).ok()?;
            s.send_to(b"?", dst).ok()?;
            let mut buf = [0u8; 64];
            s.recv(&mut buf).ok().map(|n| n > 0)
        })()
        .unwrap_or(false),
    })
}

/// A flow: from, to, protocol, port.
pub type Flow<'a> = (&'a Container, &'a Container, Proto, u16);

/// Polls until `flow` passes (`want`) or not; returns how long after `since` the first probe
/// that saw it was started. Panics after [`UNTIL_LIMIT`].
pub fn until(c: &Cluster, what: &str, since: Instant, flow: Flow, want: bool) -> Duration {
    let (from, to, proto, port) = flow;
    loop {
        let started = Instant::now();
        if reaches(from, to, proto, port, Duration::from_millis(250)) == want {
            return started - since;
        }
        if since.elapsed() > UNTIL_LIMIT {
            panic!(
                "{what}: {} -> {} {proto:?}/{port} still {} after {UNTIL_LIMIT:?}\n{}",
                from.id,
                to.id,
                if want { "blocked" } else { "open" },
                c.logs(40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the servers of [`serve`] when dropped (also when a test panics).
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
