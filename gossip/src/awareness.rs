//! Lifeguard's local health multiplier (LHM). A node that misses acks it should have got
//! (probes without ack and without the helpers' nacks) or that had to refute a suspicion of
//! itself is probably the slow one: it raises its score and so probes less often, waits
//! longer for acks and gives suspects longer, instead of accusing healthy members.
#![forbid(unsafe_code)]

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Awareness {
    max: u32,
    score: u32,
}

impl Awareness {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            score: 0,
        }
    }

    pub(crate) fn apply(&mut self, delta: i32) {
        let s = i64::from(self.score) + i64::from(delta);
        self.score = s.clamp(0, i64::from(self.max - 1)) as u32;
    }

    pub(crate) fn score(&self) -> u32 {
        self.score
    }

    pub(crate) fn scale(&self, d: Duration) -> Duration {
        d * (self.score + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_clamped_and_scales_timeouts() {
        let mut a = Awareness::new(8);
        a.apply(-1);
        assert_eq!(a.score(), 0);
        a.apply(3);
        assert_eq!(
            a.scale(Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        a.apply(100);
        assert_eq!(a.score(), 7);
    }
}
