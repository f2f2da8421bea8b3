//! Round-trip time estimation and the retransmission timeout, after RFC 6298.
//!
//! One estimator per neighbour, fed by control acks (each ack echoes the
//! timestamp of the very transmission it answers, so retransmissions give
//! valid samples too) and by data acks. The RTO is SRTT + max(G, 4·RTTVAR),
//! clamped to the configured bounds; callers double it per retry
//! (exponential backoff).

use std::time::Duration;

/// Clock granularity G.
const GRANULARITY_US: u64 = 1_000;

/// RTT and RTO of one peer, as RFC 6298 estimates them.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt_us: Option<u64>,
    rttvar_us: u64,
    latest_us: u64,
    min_us: u64,
    rto_min: Duration,
    rto_max: Duration,
    rto_initial: Duration,
}

impl RttEstimator {
    /// An estimator with no sample yet: the RTO is `rto_initial`, bounded by `rto_min` and `rto_max` once samples come.
    pub fn new(rto_initial: Duration, rto_min: Duration, rto_max: Duration) -> Self {
        RttEstimator {
            srtt_us: None,
            rttvar_us: 0,
            latest_us: 0,
            min_us: u64::MAX,
            rto_min,
            rto_max,
            rto_initial,
        }
    }

    /// Feed one RTT sample (µs).
    pub fn sample(&mut self, r: u64) {
        self.latest_us = r;
        self.min_us = self.min_us.min(r);
        match self.srtt_us {
            None => {
                self.srtt_us = Some(r);
                self.rttvar_us = r / 2;
            }
            Some(s) => {
                // RTTVAR <- 3/4 RTTVAR + 1/4 |SRTT - R'| ; SRTT <- 7/8 SRTT + 1/8 R'
                self.rttvar_us = (3 * self.rttvar_us + s.abs_diff(r)) / 4;
                self.srtt_us = Some((7 * s + r) / 8);
            }
        }
    }

    /// Any RTT sample yet.
    pub fn has_sample(&self) -> bool {
        self.srtt_us.is_some()
    }

    /// Smoothed RTT in µs (0 before the first sample).
    pub fn srtt_us(&self) -> u64 {
        self.srtt_us.unwrap_or(0)
    }

    /// RTT variation in µs.
    pub fn rttvar_us(&self) -> u64 {
        self.rttvar_us
    }

    /// The least RTT sample in µs (`u64::MAX` before the first).
    pub fn min_us(&self) -> u64 {
        self.min_us
    }

    /// The most recent RTT sample in µs.
    pub fn latest_us(&self) -> u64 {
        self.latest_us
    }

    /// The base retransmission timeout (before backoff).
    pub fn rto(&self) -> Duration {
        let rto = match self.srtt_us {
            None => self.rto_initial,
            Some(s) => Duration::from_micros(s + GRANULARITY_US.max(4 * self.rttvar_us)),
        };
        rto.clamp(self.rto_min, self.rto_max)
    }

    /// The timeout for try number `attempt` (0-based): doubled per retry,
    /// capped at `rto_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.rto();
        base.saturating_mul(1u32 << attempt.min(16))
            .min(self.rto_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> RttEstimator {
        RttEstimator::new(
            Duration::from_millis(300),
            Duration::from_millis(20),
            Duration::from_secs(2),
        )
    }

    #[test]
    fn initial_and_first_sample() {
        let mut e = est();
        assert_eq!(e.rto(), Duration::from_millis(300));
        e.sample(100_000);
        assert_eq!(e.srtt_us(), 100_000);
        assert_eq!(e.rttvar_us(), 50_000);
        // 100 ms + 4 * 50 ms
        assert_eq!(e.rto(), Duration::from_millis(300));
    }

    #[test]
    fn converges_and_clamps() {
        let mut e = est();
        for _ in 0..200 {
            e.sample(1_000);
        }
        assert!(e.srtt_us() <= 1_100);
        assert_eq!(e.rto(), Duration::from_millis(20));
        for _ in 0..200 {
            e.sample(10_000_000);
        }
        assert_eq!(e.rto(), Duration::from_secs(2));
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let mut e = est();
        e.sample(40_000); // rto = 40 + 80 = 120 ms
        assert_eq!(e.backoff(0), Duration::from_millis(120));
        assert_eq!(e.backoff(1), Duration::from_millis(240));
        assert_eq!(e.backoff(3), Duration::from_millis(960));
        assert_eq!(e.backoff(10), Duration::from_secs(2));
        assert_eq!(e.backoff(u32::MAX), Duration::from_secs(2));
    }
}
