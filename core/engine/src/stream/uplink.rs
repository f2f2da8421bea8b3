//! A model of this peer's uplink queue, shared by the real engine and the
//! simulator so that both tell plugins the same thing.
//!
//! Why a model and not the socket's word: under an upload cap the queue that
//! matters is the one in front of the cap, and a scheduler must know how long
//! a chunk handed over now waits before it leaves, so it can refuse requests
//! it cannot serve in time. The model drains at the cap like the network
//! layer's token bucket; the simulator's link drains the same way, so a
//! simulated and a real swarm see the same [`Upload`].

use p2ner_plugin_api::Upload;

/// How much the uplink queue may hold, in time at the cap: short, so that
/// nothing handed to the data channel waits long enough to miss its
/// deadline, long enough to keep the link busy between two ticks.
pub const QUEUE_TARGET_US: u64 = 60_000;
/// Bytes a chunk's datagram carries besides its payload, as the network
/// layer frames and seals it and charges it to the upload cap: the model must
/// drain exactly as the cap does, or the session is told of room the cap
/// does not have (or left idle).
pub const DATAGRAM_OVERHEAD: u64 = p2ner_net::wire::DATA_OVERHEAD_TYPICAL as u64;
/// Bytes a reliable control message costs besides its payload when it
/// travels in a datagram of its own (the worst case, which the network
/// layer charges first; sharing a datagram gives some back).
pub const CONTROL_OVERHEAD: u64 =
    p2ner_net::wire::reliable_len(1 << 14, 1 << 14, p2ner_net::wire::ReliableKind::Message, 0)
        as u64;

/// The upload link as a queue that drains at the cap: what the session is told it may still send, in the live engine and the simulator alike.
#[derive(Debug, Clone)]
pub struct UplinkModel {
    cap_bps: Option<u64>,
    busy_until_us: u64,
    /// (second it counts, bytes sent in it, bytes in the one before)
    window: (u64, u64, u64),
    peak_bps: u64,
}

impl UplinkModel {
    /// `cap_bps`: the upload cap, `None` when the uplink is not capped.
    pub fn new(cap_bps: Option<u64>) -> Self {
        UplinkModel {
            cap_bps: cap_bps.filter(|&c| c > 0),
            busy_until_us: 0,
            window: (0, 0, 0),
            peak_bps: 0,
        }
    }

    /// `bytes` were handed to the uplink at `now_us`.
    pub fn sent(&mut self, now_us: u64, bytes: u64) {
        let second = now_us / 1_000_000;
        if second != self.window.0 {
            let last = if second == self.window.0 + 1 {
                self.window.1
            } else {
                0
            };
            self.window = (second, 0, last);
        }
        self.window.1 += bytes;
        if let Some(cap) = self.cap_bps {
            let start = self.busy_until_us.max(now_us);
            self.busy_until_us = start + bytes * 8 * 1_000_000 / cap;
        }
    }

    /// The network layer reports `queued_bytes` waiting in front of the cap:
    /// the model never claims a shorter queue than that (a link that drains
    /// slower than the cap, retransmissions, another stream's chunks).
    pub fn observed(&mut self, now_us: u64, queued_bytes: u64) {
        if let Some(cap) = self.cap_bps {
            let busy = now_us + queued_bytes * 8 * 1_000_000 / cap;
            self.busy_until_us = self.busy_until_us.max(busy);
        }
    }

    /// The uplink as plugins see it at `now_us`.
    pub fn upload(&mut self, now_us: u64) -> Upload {
        let rate_bps = if now_us / 1_000_000 == self.window.0 + 1 {
            self.window.1 * 8
        } else if now_us / 1_000_000 == self.window.0 {
            self.window.2 * 8
        } else {
            0
        };
        self.peak_bps = self.peak_bps.max(rate_bps);
        match self.cap_bps {
            Some(cap) => {
                let queued_us = self.busy_until_us.saturating_sub(now_us);
                Upload {
                    capacity_bps: cap,
                    capped: true,
                    rate_bps,
                    queued_bytes: queued_us * cap / 8 / 1_000_000,
                    queued_us,
                    budget_bytes: QUEUE_TARGET_US.saturating_sub(queued_us) * cap / 8 / 1_000_000,
                    stream_bps: 0,
                }
            }
            None => Upload {
                capacity_bps: self.peak_bps,
                capped: false,
                rate_bps,
                queued_bytes: 0,
                queued_us: 0,
                budget_bytes: u64::MAX,
                stream_bps: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_drains_at_the_cap_and_the_budget_keeps_it_short() {
        // 800 kbit/s = 100 bytes per ms.
        let mut m = UplinkModel::new(Some(800_000));
        let u = m.upload(0);
        assert_eq!((u.queued_us, u.budget_bytes), (0, 6000));
        m.sent(0, 5000);
        let u = m.upload(0);
        assert_eq!(
            (u.queued_us, u.queued_bytes, u.budget_bytes),
            (50_000, 5000, 1000)
        );
        let u = m.upload(20_000);
        assert_eq!((u.queued_us, u.budget_bytes), (30_000, 3000));
        m.sent(20_000, 10_000);
        assert_eq!(
            m.upload(20_000).budget_bytes,
            0,
            "overdrawn: nothing more this tick"
        );
        assert_eq!(m.upload(1_000_000).queued_us, 0);
        assert_eq!(m.upload(1_000_000).rate_bps, 15_000 * 8);
        // The network layer knows better when its queue is longer.
        m.observed(1_000_000, 2_000);
        assert_eq!(m.upload(1_000_000).queued_us, 20_000);
        m.observed(1_000_000, 1_000);
        assert_eq!(m.upload(1_000_000).queued_us, 20_000, "never shorter");
    }

    #[test]
    fn uncapped_has_no_budget_and_reports_the_peak_rate() {
        let mut m = UplinkModel::new(None);
        m.sent(10, 1_000);
        m.sent(999_999, 1_000);
        let u = m.upload(1_200_000);
        assert!(!u.capped);
        assert_eq!(u.budget_bytes, u64::MAX);
        assert_eq!((u.rate_bps, u.capacity_bps), (16_000, 16_000));
        assert_eq!(m.upload(5_000_000).capacity_bps, 16_000, "the peak stays");
    }
}
