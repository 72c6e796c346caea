//! Per-source-IP backoff after failed admissions.
//!
//! After a connection from an IP fails admission (bad proof, timeout, broken handshake), new
//! connections from that IP are refused for a while, doubling with each failure up to a cap.
//! Pure: the caller passes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An IP whose last failure is this much older than its backoff starts over.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    capacity: usize,
    entries: HashMap<IpAddr, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    until: Instant,
}

impl Backoff {
    /// `capacity` bounds the number of IPs remembered, so a flood of sources costs bounded
    /// memory.
    pub(crate) fn new(base: Duration, max: Duration, capacity: usize) -> Self {
        Self {
            base,
            max: max.max(base),
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// How much longer `ip` is refused, if it is.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(&ip)?;
        (entry.until > now).then(|| entry.until - now)
    }

    /// Record a failed admission from `ip`; returns how long it is now refused.
    pub(crate) fn failure(&mut self, ip: IpAddr, now: Instant) -> Duration {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        let entry = self.entries.entry(ip).or_insert(Entry {
            failures: 0,
            until: now,
        });
        if entry.until + FORGET_AFTER < now {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        let doublings = entry.failures.saturating_sub(1).min(31);
        let delay = self.base.saturating_mul(1u32 << doublings).min(self.max);
        entry.until = now + delay;
        delay
    }

    /// A successful admission from `ip` clears its record.
    pub(crate) fn success(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }

    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.until + FORGET_AFTER >= now);
        if self.entries.len() >= self.capacity {
            // Still full: forget the entry that expires first.
            if let Some(ip) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.until)
                .map(|(ip, _)| *ip)
            {
                self.entries.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(S, 60 * S, 16);
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..9 {
            let d = b.failure(ip(1), now);
            delays.push(d.as_secs());
            assert_eq!(b.blocked(ip(1), now), Some(d));
            now += d;
            assert_eq!(b.blocked(ip(1), now), None, "free again after the delay");
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn other_ips_and_success_are_unaffected() {
        let mut b = Backoff::new(S, 60 * S, 16);
        let now = Instant::now();
        b.failure(ip(1), now);
        assert!(b.blocked(ip(1), now).is_some());
        assert_eq!(b.blocked(ip(2), now), None);
        b.success(ip(1));
        assert_eq!(b.blocked(ip(1), now), None);
        assert_eq!(b.failure(ip(1), now), S, "success starts over");
    }

    #[test]
    fn old_failures_are_forgotten() {
        let mut b = Backoff::new(S, 60 * S, 16);
        let now = Instant::now();
        b.failure(ip(1), now);
        b.failure(ip(1), now);
        assert_eq!(b.failure(ip(1), now + FORGET_AFTER + 10 * S), S);
    }

    #[test]
    fn memory_is_bounded() {
        let mut b = Backoff::new(S, 60 * S, 4);
        let now = Instant::now();
        for i in 0..100 {
            b.failure(ip(i), now + S * u32::from(i));
            assert!(b.entries.len() <= 4);
        }
        // The newest sources are still refused.
        assert!(b.blocked(ip(99), now + 99 * S).is_some());
    }
}
