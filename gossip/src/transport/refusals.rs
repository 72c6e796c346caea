//! Refused and failed admissions: counted by reason, and logged at most once per source IP per
//! [`LOG_EVERY`], so that a node with the wrong secret knocking every few seconds is visible on
//! the node it knocks on without flooding its log. Pure: the caller passes `now`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use weft_crypto::admission::AdmissionError;

use super::Error;

/// At most one log line per source IP this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a connection was refused or failed admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// The admission proof does not show the cluster secret: the peer holds another one.
    WrongSecret,
    /// The proof shows the secret, but its identity signature does not verify.
    BadSignature,
    /// The proof is malformed (length, version).
    BadProof,
    /// The handshake or the admission exchange failed (broken TLS, connection lost).
    Handshake,
    /// The handshake or the admission exchange took too long.
    Timeout,
    /// Refused before any handshake: the source IP is backing off after a failed admission.
    Backoff,
    /// Refused: too many connections from the source IP in handshake or admission at once.
    PerIpLimit,
    /// Refused: the transport holds as many connections as it may.
    ConnectionLimit,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::WrongSecret,
        RefusalReason::BadSignature,
        RefusalReason::BadProof,
        RefusalReason::Handshake,
        RefusalReason::Timeout,
        RefusalReason::Backoff,
        RefusalReason::PerIpLimit,
        RefusalReason::ConnectionLimit,
    ];

    /// A short machine-readable name (a metrics label, a JSON key).
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::WrongSecret => "wrong_secret",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::BadProof => "bad_proof",
            RefusalReason::Handshake => "handshake",
            RefusalReason::Timeout => "timeout",
            RefusalReason::Backoff => "backoff",
            RefusalReason::PerIpLimit => "per_ip_limit",
            RefusalReason::ConnectionLimit => "connection_limit",
        }
    }

    /// The reason an admission attempt that ended in `e` failed.
    pub(crate) fn of_failure(e: &Error) -> RefusalReason {
        match e {
            Error::AdmissionFailed { reason, .. } => match reason {
                AdmissionError::BadMac => RefusalReason::WrongSecret,
                AdmissionError::BadSignature => RefusalReason::BadSignature,
                // Length, version, and whatever else a proof may be found malformed for.
                _ => RefusalReason::BadProof,
            },
            Error::Timeout { .. } => RefusalReason::Timeout,
            _ => RefusalReason::Handshake,
        }
    }

    /// True for refusals made before any handshake, false for failed admissions.
    fn before_handshake(self) -> bool {
        matches!(
            self,
            RefusalReason::Backoff | RefusalReason::PerIpLimit | RefusalReason::ConnectionLimit
        )
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalReason::WrongSecret => "wrong cluster secret",
            RefusalReason::BadSignature => "identity signature does not verify",
            RefusalReason::BadProof => "malformed admission proof",
            RefusalReason::Handshake => "handshake or admission exchange failed",
            RefusalReason::Timeout => "handshake or admission timed out",
            RefusalReason::Backoff => "backing off after a failed admission",
            RefusalReason::PerIpLimit => "too many connections from its IP in admission",
            RefusalReason::ConnectionLimit => "connection limit reached",
        })
    }
}

/// Refusals since start, by reason ([`Transport::refusals`](super::Transport::refusals)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    counts: [u64; RefusalReason::ALL.len()],
}

impl RefusalCounts {
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.counts[reason as usize]
    }

    /// Every reason with its count, zeros included, in [`RefusalReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (RefusalReason, u64)> + '_ {
        RefusalReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, reason: RefusalReason) {
        let n = &mut self.counts[reason as usize];
        *n = n.saturating_add(1);
    }
}

/// The counts and the per-IP log limiter.
#[derive(Debug)]
pub(crate) struct Refusals {
    counts: RefusalCounts,
    capacity: usize,
    log: HashMap<IpAddr, LogEntry>,
}

#[derive(Debug, Clone, Copy)]
struct LogEntry {
    /// When the last line for this IP was logged.
    logged: Instant,
    /// Refusals from this IP not logged since.
    quiet: u64,
    /// The last failed admission from this IP, which its backoff refusals are about.
    failure: Option<RefusalReason>,
}

impl Refusals {
    /// `capacity` bounds the IPs remembered for rate limiting.
    pub(crate) fn new(capacity: usize) -> Self {
        Refusals {
            counts: RefusalCounts::default(),
            capacity: capacity.max(1),
            log: HashMap::new(),
        }
    }

    pub(crate) fn counts(&self) -> &RefusalCounts {
        &self.counts
    }

    /// Count a refusal of `addr`; returns the line to log, if one is due for its IP.
    pub(crate) fn record(
        &mut self,
        addr: SocketAddr,
        reason: RefusalReason,
        now: Instant,
    ) -> Option<String> {
        self.counts.add(reason);
        let ip = addr.ip();
        if !self.log.contains_key(&ip) && self.log.len() >= self.capacity {
            self.make_room(now);
        }
        let failure = (!reason.before_handshake()).then_some(reason);
        let entry = match self.log.get_mut(&ip) {
            Some(entry) if now.saturating_duration_since(entry.logged) < LOG_EVERY => {
                entry.quiet += 1;
                entry.failure = failure.or(entry.failure);
                return None;
            }
            Some(entry) => entry,
            None => self.log.entry(ip).or_insert(LogEntry {
                logged: now,
                quiet: 0,
                failure: None,
            }),
        };
        let line = line(
            addr,
            reason,
            failure.or(entry.failure),
            entry.quiet,
            now.saturating_duration_since(entry.logged),
        );
        *entry = LogEntry {
            logged: now,
            quiet: 0,
            failure: failure.or(entry.failure),
        };
        Some(line)
    }

    fn make_room(&mut self, now: Instant) {
        self.log
            .retain(|_, e| now.saturating_duration_since(e.logged) < LOG_EVERY);
        if self.log.len() >= self.capacity {
            if let Some(ip) = self
                .log
                .iter()
                .min_by_key(|(_, e)| e.logged)
                .map(|(ip, _)| *ip)
            {
                self.log.remove(&ip);
            }
        }
    }
}

/// "node at 192.0.2.7:6783 failed admission: wrong cluster secret (3 more refused from this
/// IP since the last report, 60 s ago)".
fn line(
    addr: SocketAddr,
    reason: RefusalReason,
    failure: Option<RefusalReason>,
    quiet: u64,
    since: Duration,
) -> String {
    let mut text = if reason.before_handshake() {
        match (reason, failure) {
            (RefusalReason::Backoff, Some(f)) => format!("node at {addr} refused: {reason} ({f})"),
            _ => format!("node at {addr} refused: {reason}"),
        }
    } else {
        format!("node at {addr} failed admission: {reason}")
    };
    if quiet > 0 {
        text.push_str(&format!(
            " ({quiet} more refused from this IP since the last report, {} s ago)",
            since.as_secs()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 6783))
    }

    #[test]
    fn every_refusal_is_counted_by_reason() {
        let mut r = Refusals::new(16);
        let now = Instant::now();
        r.record(addr(1), RefusalReason::WrongSecret, now);
        r.record(addr(1), RefusalReason::WrongSecret, now);
        r.record(addr(2), RefusalReason::ConnectionLimit, now);
        let c = r.counts();
        assert_eq!(c.get(RefusalReason::WrongSecret), 2);
        assert_eq!(c.get(RefusalReason::ConnectionLimit), 1);
        assert_eq!(c.get(RefusalReason::Backoff), 0);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().count(), RefusalReason::ALL.len());
        let labels: Vec<_> = RefusalReason::ALL.iter().map(|r| r.label()).collect();
        let mut unique = labels.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "labels are distinct");
    }

    #[test]
    fn one_line_per_ip_per_minute_then_the_rest_is_summed_up() {
        let mut r = Refusals::new(16);
        let t0 = Instant::now();
        assert_eq!(
            r.record(addr(7), RefusalReason::WrongSecret, t0).as_deref(),
            Some("node at 192.0.2.7:6783 failed admission: wrong cluster secret")
        );
        // Another IP has its own line.
        assert!(r.record(addr(8), RefusalReason::PerIpLimit, t0).is_some());
        // Within the minute: quiet, but counted.
        assert_eq!(r.record(addr(7), RefusalReason::Backoff, t0 + 3 * S), None);
        assert_eq!(
            r.record(addr(7), RefusalReason::WrongSecret, t0 + 10 * S),
            None
        );
        assert_eq!(r.record(addr(7), RefusalReason::Backoff, t0 + 59 * S), None);
        assert_eq!(r.counts().total(), 5);
        // A minute on: one line naming what is going on and how much was not logged.
        assert_eq!(
            r.record(addr(7), RefusalReason::Backoff, t0 + 61 * S).as_deref(),
            Some(
                "node at 192.0.2.7:6783 refused: backing off after a failed admission \
                 (wrong cluster secret) (3 more refused from this IP since the last report, 61 s ago)"
            )
        );
        assert_eq!(r.record(addr(7), RefusalReason::Backoff, t0 + 62 * S), None);
    }

    #[test]
    fn failures_map_to_their_reasons() {
        let a = addr(1);
        let failed = |reason| Error::AdmissionFailed { addr: a, reason };
        assert_eq!(
            RefusalReason::of_failure(&failed(AdmissionError::BadMac)),
            RefusalReason::WrongSecret
        );
        assert_eq!(
            RefusalReason::of_failure(&failed(AdmissionError::BadSignature)),
            RefusalReason::BadSignature
        );
        assert_eq!(
            RefusalReason::of_failure(&failed(AdmissionError::BadVersion(9))),
            RefusalReason::BadProof
        );
        let timeout = Error::Timeout {
            addr: a,
            what: "admission",
        };
        assert_eq!(RefusalReason::of_failure(&timeout), RefusalReason::Timeout);
        assert_eq!(
            RefusalReason::of_failure(&Error::Closed),
            RefusalReason::Handshake
        );
    }

    #[test]
    fn memory_is_bounded_and_new_sources_are_still_logged() {
        let mut r = Refusals::new(4);
        let now = Instant::now();
        for i in 0..100 {
            let line = r.record(addr(i), RefusalReason::WrongSecret, now + S * u32::from(i));
            assert!(line.is_some(), "a new source is logged");
            assert!(r.log.len() <= 4);
        }
        assert_eq!(r.counts().get(RefusalReason::WrongSecret), 100);
    }
}
