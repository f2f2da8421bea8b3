//! Per-neighbour delay-based congestion control after LEDBAT (RFC 6817).
//!
//! p2ner uploads to many neighbours from home links whose owners are also
//! browsing and calling; the data channel must use the spare uplink without
//! building a queue in the modem. LEDBAT does that by watching one-way delay:
//! each data datagram carries the sender's clock, the receiver echoes
//! `receiver clock - sender clock` in its acks. The constant clock offset
//! cancels against the *base delay* (the minimum seen over the last ten
//! minutes, kept as per-minute minima), leaving the queuing delay. The window
//! grows while queuing delay is under the target (25 ms by default, as
//! libswift) and shrinks above it; loss halves it (at most once per RTT), a
//! retransmission timeout collapses it to one packet.
//!
//! Deviations, documented: a slow start (window += bytes acked) runs until the
//! queuing delay reaches half the target or a loss, so a flow reaches a fast
//! link's capacity in a few RTTs instead of minutes; the "allowed increase"
//! rule stops growth when the sender is application-limited but does not
//! shrink the window below what it was.

/// Per-minute base delay minima kept (RFC: BASE_HISTORY = 10).
const BASE_HISTORY: usize = 10;
/// Samples in the current-delay filter (RFC: CURRENT_FILTER, min filter).
const CURRENT_FILTER: usize = 4;
const GAIN: f64 = 1.0;
const MIN_CWND: f64 = 2.0;
const INIT_CWND: f64 = 2.0;
const ALLOWED_INCREASE: f64 = 2.0;
const MINUTE_US: u64 = 60_000_000;

/// LEDBAT congestion control (RFC 6817): it yields to other traffic by keeping the queuing delay it adds near a target, so a peer's video does not swamp its owner's uplink.
#[derive(Debug, Clone)]
pub struct Ledbat {
    cwnd: f64,
    mss: f64,
    max_cwnd: f64,
    target_us: f64,
    reference: Option<u32>,
    base: [i64; BASE_HISTORY],
    base_len: usize,
    last_rollover_minute: u64,
    current: [i64; CURRENT_FILTER],
    current_len: usize,
    current_pos: usize,
    slow_start: bool,
    last_loss_us: Option<u64>,
    queuing_delay_us: i64,
}

impl Ledbat {
    /// A controller for segments of `mss` bytes that aims at `target_us` of queuing delay and never exceeds `max_cwnd` bytes.
    pub fn new(mss: usize, target_us: u64, max_cwnd: usize) -> Self {
        Ledbat {
            cwnd: INIT_CWND * mss as f64,
            mss: mss as f64,
            max_cwnd: max_cwnd as f64,
            target_us: target_us.max(1) as f64,
            reference: None,
            base: [0; BASE_HISTORY],
            base_len: 0,
            last_rollover_minute: 0,
            current: [0; CURRENT_FILTER],
            current_len: 0,
            current_pos: 0,
            slow_start: true,
            last_loss_us: None,
            queuing_delay_us: 0,
        }
    }

    /// Congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cwnd as usize
    }

    /// Still growing exponentially (no loss or delay signal yet).
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// Estimated queuing delay (current - base), µs.
    pub fn queuing_delay_us(&self) -> i64 {
        self.queuing_delay_us
    }

    /// Feed one raw delay sample: receiver clock minus sender timestamp
    /// (µs, wrapping), i.e. one-way delay plus a constant offset.
    pub fn on_delay_sample(&mut self, now_us: u64, raw: u32) {
        // Normalise against the first sample so wrapping never matters for
        // the minimum (offsets drift slowly; i32 covers ±35 minutes).
        let reference = *self.reference.get_or_insert(raw);
        let d = raw.wrapping_sub(reference) as i32 as i64;
        // Base delay: per-minute minima.
        let minute = now_us / MINUTE_US;
        if self.base_len == 0 {
            self.base[0] = d;
            self.base_len = 1;
            self.last_rollover_minute = minute;
        } else if minute != self.last_rollover_minute {
            self.last_rollover_minute = minute;
            if self.base_len == BASE_HISTORY {
                self.base.copy_within(1.., 0);
                self.base_len -= 1;
            }
            self.base[self.base_len] = d;
            self.base_len += 1;
        } else {
            let t = &mut self.base[self.base_len - 1];
            *t = (*t).min(d);
        }
        // Current delay: min of the last few samples.
        self.current[self.current_pos] = d;
        self.current_pos = (self.current_pos + 1) % CURRENT_FILTER;
        self.current_len = (self.current_len + 1).min(CURRENT_FILTER);
        let current = self.current[..self.current_len].iter().min().copied();
        let base = self.base[..self.base_len].iter().min().copied();
        if let (Some(c), Some(b)) = (current, base) {
            self.queuing_delay_us = (c - b).max(0);
        }
    }

    /// Bytes newly acknowledged; `flightsize` is what was outstanding before
    /// this ack was processed.
    pub fn on_ack(&mut self, bytes_acked: usize, flightsize: usize) {
        let before = self.cwnd;
        let q = self.queuing_delay_us as f64;
        if self.slow_start && q > self.target_us / 2.0 {
            self.slow_start = false;
        }
        if self.slow_start {
            self.cwnd += bytes_acked as f64;
        } else {
            let off_target = ((self.target_us - q) / self.target_us).max(-1.0);
            self.cwnd += GAIN * off_target * bytes_acked as f64 * self.mss / self.cwnd;
        }
        let mut allowed = flightsize as f64 + ALLOWED_INCREASE * self.mss;
        if self.slow_start {
            allowed += bytes_acked as f64;
        }
        if self.cwnd > allowed {
            self.cwnd = allowed.max(before.min(self.cwnd));
        }
        self.clamp();
    }

    /// A datagram was lost. Reacts at most once per RTT.
    pub fn on_loss(&mut self, now_us: u64, srtt_us: u64) {
        if let Some(t) = self.last_loss_us {
            if now_us.saturating_sub(t) < srtt_us.max(1_000) {
                return;
            }
        }
        self.last_loss_us = Some(now_us);
        self.slow_start = false;
        self.cwnd = (self.cwnd / 2.0).max(MIN_CWND * self.mss);
        self.clamp();
    }

    /// Nothing was acknowledged for a retransmission timeout.
    pub fn on_timeout(&mut self) {
        self.slow_start = false;
        self.cwnd = self.mss;
    }

    fn clamp(&mut self) {
        self.cwnd = self
            .cwnd
            .clamp(MIN_CWND * self.mss, self.max_cwnd.max(MIN_CWND * self.mss));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1200;

    fn ca() -> Ledbat {
        let mut l = Ledbat::new(MSS, 25_000, 1 << 24);
        l.slow_start = false;
        l
    }

    #[test]
    fn grows_below_target_shrinks_above() {
        let mut l = ca();
        l.on_delay_sample(0, 1_000_000);
        for _ in 0..100 {
            let w = l.cwnd();
            l.on_ack(MSS, w);
        }
        let grown = l.cwnd();
        assert!(grown > 2 * MSS, "{grown}");
        // Queue builds to 2x target: the window must come down.
        for i in 0..8 {
            l.on_delay_sample(i, 1_000_000 + 50_000);
        }
        assert_eq!(l.queuing_delay_us(), 50_000);
        for _ in 0..50 {
            let w = l.cwnd();
            l.on_ack(MSS, w);
        }
        assert!(l.cwnd() < grown);
        assert!(l.cwnd() >= MIN_CWND as usize * MSS);
    }

    #[test]
    fn growth_is_one_mss_per_window_at_zero_delay() {
        let mut l = ca();
        l.cwnd = 10.0 * MSS as f64;
        l.on_delay_sample(0, 5);
        for _ in 0..10 {
            l.on_ack(MSS, 20 * MSS);
        }
        // ~ +1 MSS over one window of acks.
        let w = l.cwnd() as f64 / MSS as f64;
        assert!((10.9..11.1).contains(&w), "{w}");
    }

    #[test]
    fn at_target_is_stable() {
        let mut l = ca();
        l.cwnd = 10.0 * MSS as f64;
        l.on_delay_sample(0, 0);
        for i in 0..4 {
            l.on_delay_sample(i, 25_000);
        }
        for _ in 0..100 {
            l.on_ack(MSS, 20 * MSS);
        }
        assert_eq!(l.cwnd(), 10 * MSS);
    }

    #[test]
    fn wrapping_clock_offset() {
        let mut l = ca();
        l.on_delay_sample(0, u32::MAX - 10);
        for i in 0..4 {
            l.on_delay_sample(i, 20_000); // wrapped: +20011 µs
        }
        assert_eq!(l.queuing_delay_us(), 20_011);
    }

    #[test]
    fn base_delay_rolls_over_minutes() {
        let mut l = ca();
        l.on_delay_sample(0, 1_000);
        for m in 1..=11u64 {
            l.on_delay_sample(m * MINUTE_US, 5_000);
        }
        // The old 1000 µs minimum is more than 10 minutes old.
        for i in 0..4 {
            l.on_delay_sample(11 * MINUTE_US + i, 5_000);
        }
        assert_eq!(l.queuing_delay_us(), 0);
    }

    #[test]
    fn loss_halves_once_per_rtt_timeout_collapses() {
        let mut l = ca();
        l.cwnd = 40.0 * MSS as f64;
        l.on_loss(1_000_000, 50_000);
        assert_eq!(l.cwnd(), 20 * MSS);
        l.on_loss(1_010_000, 50_000);
        assert_eq!(l.cwnd(), 20 * MSS);
        l.on_loss(1_060_000, 50_000);
        assert_eq!(l.cwnd(), 10 * MSS);
        l.on_timeout();
        assert_eq!(l.cwnd(), MSS);
    }

    #[test]
    fn app_limited_does_not_grow() {
        let mut l = ca();
        l.cwnd = 10.0 * MSS as f64;
        l.on_delay_sample(0, 0);
        for _ in 0..1000 {
            l.on_ack(MSS, 2 * MSS);
        }
        assert_eq!(l.cwnd(), 10 * MSS);
    }

    #[test]
    fn slow_start_exits_near_target() {
        let mut l = Ledbat::new(MSS, 25_000, 1 << 24);
        l.on_delay_sample(0, 0);
        for _ in 0..10 {
            let w = l.cwnd();
            l.on_ack(w, w);
        }
        assert!(l.in_slow_start());
        assert!(l.cwnd() > 100 * MSS);
        for i in 0..4 {
            l.on_delay_sample(i, 20_000);
        }
        let w = l.cwnd();
        l.on_ack(MSS, w);
        assert!(!l.in_slow_start());
    }
}
