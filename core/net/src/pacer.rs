//! Token buckets: per-neighbour pacing and the client-wide upload cap.
//!
//! Pacing spreads a congestion window over a round trip instead of sending it
//! as one burst into the bottleneck queue (which would itself look like
//! queuing delay to LEDBAT). The upload cap (`--upload-kbps`) is one bucket
//! shared by every neighbour and both channels: control traffic is never held
//! back by it but does consume its tokens (it may run the bucket into debt),
//! so the long-run total stays at the cap.
//!
//! Times are µs on the endpoint's clock; the bucket is refilled lazily.

/// The upload cap as a token bucket: bursts up to `burst` bytes, `rate` in the long run.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// Maximum tokens (bytes).
    burst: f64,
    tokens: f64,
    last_us: u64,
}

impl TokenBucket {
    /// A full bucket at `now_us`.
    pub fn new(rate_bytes_per_sec: f64, burst: f64, now_us: u64) -> Self {
        TokenBucket {
            rate: rate_bytes_per_sec.max(1.0),
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last_us: now_us,
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Change the rate and burst (keeps accumulated tokens up to the burst).
    pub fn set_rate(&mut self, now_us: u64, rate: f64, burst: f64) {
        self.refill(now_us);
        self.rate = rate.max(1.0);
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now_us: u64) {
        if now_us > self.last_us {
            let dt = (now_us - self.last_us) as f64 / 1e6;
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
            self.last_us = now_us;
        }
    }

    /// Whether `bytes` may go now (a datagram may be sent whenever the
    /// bucket is not in debt, so datagrams larger than the burst still pass).
    pub fn ready(&mut self, now_us: u64) -> bool {
        self.refill(now_us);
        self.tokens > 0.0
    }

    /// Spend tokens (may go into debt).
    pub fn take(&mut self, now_us: u64, bytes: usize) {
        self.refill(now_us);
        self.tokens -= bytes as f64;
    }

    /// Give back tokens spent on bytes that were not sent after all (a
    /// packet charged as a datagram of its own that shared one).
    pub fn refund(&mut self, now_us: u64, bytes: usize) {
        self.refill(now_us);
        self.tokens = (self.tokens + bytes as f64).min(self.burst);
    }

    /// When the bucket will next be ready (µs).
    pub fn ready_at(&mut self, now_us: u64) -> u64 {
        self.refill(now_us);
        if self.tokens > 0.0 {
            now_us
        } else {
            now_us + ((-self.tokens + 1.0) / self.rate * 1e6).ceil() as u64
        }
    }
}

/// Slots of the [`RateMeter`] window.
const METER_SLOTS: usize = 10;
/// Width of one slot, µs.
const METER_SLOT_US: u64 = 100_000;

/// What actually left over the last second, for schedulers that need to
/// see how much of the uplink is in use rather than what a window would
/// allow. Ten 100 ms slots: cheap to update per datagram, and the estimate
/// moves smoothly instead of jumping once a second.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    slots: [u64; METER_SLOTS],
    /// Index (time / slot width) of the newest slot.
    cur: u64,
}

impl RateMeter {
    fn advance(&mut self, now_us: u64) {
        let s = now_us / METER_SLOT_US;
        if s > self.cur {
            let n = (s - self.cur).min(METER_SLOTS as u64);
            for i in 1..=n {
                self.slots[((self.cur + i) % METER_SLOTS as u64) as usize] = 0;
            }
            self.cur = s;
        }
    }

    /// Count `bytes` sent at `now_us`.
    pub fn record(&mut self, now_us: u64, bytes: usize) {
        self.advance(now_us);
        self.slots[(self.cur % METER_SLOTS as u64) as usize] += bytes as u64;
    }

    /// Bits per second over the last ~1 s.
    pub fn rate_bps(&mut self, now_us: u64) -> u64 {
        self.advance(now_us);
        let sum: u64 = self.slots.iter().sum();
        let full = (METER_SLOTS as u64 - 1) * METER_SLOT_US + now_us % METER_SLOT_US;
        let window = full.min(now_us).max(1);
        (sum as u128 * 8_000_000 / window as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_measures_recent_second() {
        let mut m = RateMeter::default();
        // 1250 bytes every ms = 10 Mbit/s, for 3 s.
        let mut now = 0;
        while now < 3_000_000 {
            m.record(now, 1250);
            now += 1_000;
        }
        let r = m.rate_bps(now);
        assert!((9_800_000..=10_200_000).contains(&r), "{r}");
        // Silence for 2 s: forgotten.
        assert_eq!(m.rate_bps(now + 2_000_000), 0);
    }

    #[test]
    fn long_run_rate() {
        // 1 MB/s, send 1200-byte datagrams whenever ready, for 10 s.
        let mut b = TokenBucket::new(1e6, 12_000.0, 0);
        let mut now = 0;
        let mut sent = 0u64;
        while now < 10_000_000 {
            if b.ready(now) {
                b.take(now, 1200);
                sent += 1200;
            } else {
                now = b.ready_at(now);
            }
        }
        let rate = sent as f64 / 10.0;
        assert!((rate - 1e6).abs() / 1e6 < 0.01, "{rate}");
    }

    #[test]
    fn debt_delays() {
        let mut b = TokenBucket::new(1000.0, 100.0, 0);
        b.take(0, 1100);
        assert!(!b.ready(0));
        let t = b.ready_at(0);
        assert!((1_000_000..=1_002_000).contains(&t), "{t}");
        assert!(b.ready(t));
    }
}
