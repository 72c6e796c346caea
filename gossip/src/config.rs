//! Tuning knobs of the membership core. Defaults follow hashicorp/memberlist's LAN profile
//! (itself following SWIM and Lifeguard), with a faster probe interval.
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::record::SignatureCache;

/// Configuration of a [`crate::Membership`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the core's only randomness source (probe order, gossip targets, sequence
    /// numbers). Give each node a different one; the same seed replays the same run.
    pub rng_seed: u64,
    /// Time between probes of one member (scaled up by local health, see `awareness_max`).
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking `indirect_checks` others to probe.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly when a direct probe gets no ack.
    pub indirect_checks: usize,
    /// Time between gossip rounds (piggyback-only datagrams to `gossip_nodes` members).
    pub gossip_interval: Duration,
    /// Members gossiped to per round.
    pub gossip_nodes: usize,
    /// An update is sent at most `retransmit_mult * ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// Suspicion timeout floor: `suspicion_mult * max(1, log10(n)) * probe_interval`.
    pub suspicion_mult: u32,
    /// Suspicion timeout ceiling, as a multiple of the floor; independent confirmations
    /// shrink the timeout from the ceiling toward the floor (Lifeguard).
    pub suspicion_max_timeout_mult: u32,
    /// Local health multiplier cap (Lifeguard LHM): a node that misses acks probes up to
    /// this many times slower and waits as much longer.
    pub awareness_max: u32,
    /// Base interval of full-state push-pull with one random member; scaled up with
    /// cluster size beyond 32 nodes like memberlist does.
    pub push_pull_interval: Duration,
    /// Interval of push-pull with one random *failed* member, so that the two sides of a
    /// healed partition find each other again.
    pub reconnect_interval: Duration,
    /// How long failed and departed members stay in the view before they are removed.
    pub down_retention: Duration,
    /// How long a `forget` tombstone keeps a node out.
    pub tombstone_ttl: Duration,
    /// Most indirect probes this node runs for others at once (bounds memory under abuse).
    pub max_relays: usize,
    /// Shared cache of verified signatures: for simulators only (see [`SignatureCache`]).
    pub signature_cache: Option<SignatureCache>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rng_seed: 0,
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            indirect_checks: 3,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            retransmit_mult: 4,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            awareness_max: 8,
            push_pull_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(10),
            down_retention: Duration::from_secs(24 * 3600),
            tombstone_ttl: Duration::from_secs(24 * 3600),
            max_relays: 256,
            signature_cache: None,
        }
    }
}

/// Dissemination limit: how many times one update is sent (memberlist's retransmitLimit).
pub(crate) fn retransmit_limit(mult: u32, n: usize) -> u32 {
    let scale = ((n as f64) + 1.0).log10().ceil().max(1.0) as u32;
    mult.saturating_mul(scale)
}

/// Suspicion timeout floor (memberlist's suspicionTimeout).
pub(crate) fn suspicion_timeout(mult: u32, n: usize, interval: Duration) -> Duration {
    let scale = (n.max(1) as f64).log10().max(1.0);
    interval.mul_f64(f64::from(mult) * scale)
}

/// Push-pull interval grows with log2(n) past 32 nodes so the full-state cost per node
/// stays bounded (memberlist's pushPullScale).
pub(crate) fn push_pull_scale(interval: Duration, n: usize) -> Duration {
    const THRESHOLD: usize = 32;
    if n <= THRESHOLD {
        return interval;
    }
    let mult = ((n as f64).log2() - (THRESHOLD as f64).log2()).ceil() as u32 + 1;
    interval * mult
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_matches_memberlist() {
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 999), 12);
        assert_eq!(retransmit_limit(4, 1000), 16);
        assert_eq!(
            suspicion_timeout(4, 1000, Duration::from_millis(200)),
            Duration::from_millis(2400)
        );
        assert_eq!(
            suspicion_timeout(4, 3, Duration::from_secs(1)),
            Duration::from_secs(4)
        );
        assert_eq!(
            push_pull_scale(Duration::from_secs(30), 32),
            Duration::from_secs(30)
        );
        assert_eq!(
            push_pull_scale(Duration::from_secs(30), 33),
            Duration::from_secs(60)
        );
        assert_eq!(
            push_pull_scale(Duration::from_secs(30), 1000),
            Duration::from_secs(180)
        );
    }
}
