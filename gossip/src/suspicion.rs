//! Lifeguard's suspicion timer: it starts at a maximum and shrinks toward a minimum as
//! independent members confirm the suspicion, following memberlist's suspicion.go:
//! `timeout = max(min, max - (max - min) * log(c + 1) / log(k + 1))` for `c` confirmations
//! out of `k` expected.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weft_crypto::NodeId;

#[derive(Debug, Clone)]
pub(crate) struct Suspicion {
    start: Instant,
    min: Duration,
    max: Duration,
    k: u32,
    /// Who suspected, the first accuser included. Bounded by `k + 1`.
    accusers: BTreeSet<NodeId>,
    deadline: Instant,
}

impl Suspicion {
    pub(crate) fn new(from: NodeId, start: Instant, min: Duration, max: Duration, k: u32) -> Self {
        let timeout = if k < 1 { min } else { max };
        Self {
            start,
            min,
            max,
            k,
            accusers: BTreeSet::from([from]),
            deadline: start + timeout,
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Record an accusation; returns true if it was a new, independent confirmation (and so
    /// worth passing on).
    pub(crate) fn confirm(&mut self, from: NodeId) -> bool {
        let confirmations = self.accusers.len() as u32 - 1;
        if confirmations >= self.k || !self.accusers.insert(from) {
            return false;
        }
        let c = f64::from(confirmations + 1);
        let frac = (c + 1.0).ln() / (f64::from(self.k) + 1.0).ln();
        let raw = self.max.as_secs_f64() - frac * (self.max.as_secs_f64() - self.min.as_secs_f64());
        let timeout = Duration::from_millis((raw * 1000.0).floor() as u64).max(self.min);
        self.deadline = self.start + timeout;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_shrink_the_timeout_to_the_floor() {
        let t0 = Instant::now();
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(12));
        let mut s = Suspicion::new(NodeId([1; 32]), t0, min, max, 2);
        assert_eq!(s.deadline(), t0 + max);
        assert!(
            !s.confirm(NodeId([1; 32])),
            "the same accuser twice is no confirmation"
        );
        assert!(s.confirm(NodeId([2; 32])));
        let d1 = s.deadline();
        assert!(d1 < t0 + max && d1 > t0 + min);
        assert!(s.confirm(NodeId([3; 32])));
        assert_eq!(s.deadline(), t0 + min);
        assert!(
            !s.confirm(NodeId([4; 32])),
            "beyond k confirmations nothing changes"
        );
    }

    #[test]
    fn no_expected_confirmations_means_the_floor() {
        let t0 = Instant::now();
        let s = Suspicion::new(
            NodeId([1; 32]),
            t0,
            Duration::from_secs(1),
            Duration::from_secs(6),
            0,
        );
        assert_eq!(s.deadline(), t0 + Duration::from_secs(1));
    }
}
