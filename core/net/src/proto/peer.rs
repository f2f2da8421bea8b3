//! One neighbour's state: RTT, reliable ids and duplicate suppression, the
//! data channel's queue, in-flight record, LEDBAT window and pacer, and the
//! receive side's ack state. Pure state, advanced by [`super::NetState`].

use crate::config::NetConfig;
use crate::fragment::Frag;
use crate::ledbat::Ledbat;
use crate::pacer::TokenBucket;
use crate::reliable::{RecvDedup, SendIds};
use crate::rtt::RttEstimator;
use crate::stats::PeerStats;
use std::collections::VecDeque;

/// Duplicate-suppression entries kept per peer.
const DEDUP_CAP: usize = 16_384;
/// A datagram is lost when this many later ones were acked.
const REORDER_THRESHOLD: u64 = 3;

pub(crate) struct Peer {
    pub(crate) rtt: RttEstimator,
    pub(crate) ids: SendIds,
    pub(crate) dedup: RecvDedup,
    pub(crate) tx: DataTx,
    pub(crate) rx: DataRx,
    pub(crate) stats: PeerStats,
    pub(crate) incompatible: Option<(u8, u8)>,
}

pub(crate) struct DataTx {
    pub(crate) queue: VecDeque<Frag>,
    pub(crate) queued_bytes: usize,
    pub(crate) inflight: VecDeque<InFlight>,
    pub(crate) inflight_bytes: usize,
    pub(crate) next_pkt: u64,
    pub(crate) cc: Ledbat,
    pub(crate) pacer: TokenBucket,
    pub(crate) last_progress_us: u64,
    /// Earliest deadline of a queued, unstarted chunk (u64::MAX: none), so
    /// the queue is only scanned when something may have expired.
    pub(crate) next_deadline_us: u64,
    /// What loss detection allows beyond the RTT and the ack hold (see
    /// [`super::PTO_SLACK_US`]): doubled whenever an ack arrives for a
    /// datagram already declared lost, an eighth smaller at every other loss
    /// declared, within [`super::MIN_SLACK_US`]..=[`super::PTO_SLACK_US`].
    pub(crate) slack_us: u64,
    /// Datagrams declared lost lately, to tell a spurious loss (a late ack)
    /// from a real one; sorted, bounded by [`RECENT_LOST`] (the oldest go).
    pub(crate) recent_lost: VecDeque<u64>,
}

/// Lost datagram numbers remembered to detect spurious losses.
const RECENT_LOST: usize = 64;

pub(crate) struct InFlight {
    pub(crate) pkt: u64,
    /// When the datagram was handed out by `poll_transmit`: loss timers
    /// start here, never while a fragment waits in the queue.
    pub(crate) sent_us: u64,
    pub(crate) size: usize,
    /// None once acked or declared lost.
    pub(crate) frag: Option<Frag>,
}

#[derive(Default)]
pub(crate) struct DataRx {
    pub(crate) largest: u64,
    pub(crate) bitmap: u64,
    pub(crate) delay: Option<u32>,
    pub(crate) unacked: u32,
    /// When `largest` arrived (the ack reports how long it held it).
    pub(crate) largest_at_us: u64,
    /// When the oldest unacknowledged datagram arrived (for the ack timer).
    pub(crate) unacked_since_us: u64,
    /// Listed in `NetState::ack_due`.
    pub(crate) ack_listed: bool,
}

impl Peer {
    pub(crate) fn new(cfg: &NetConfig, now_us: u64) -> Self {
        Peer {
            rtt: RttEstimator::new(cfg.rto_initial, cfg.rto_min, cfg.rto_max),
            ids: SendIds::default(),
            dedup: RecvDedup::new(DEDUP_CAP),
            tx: DataTx {
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: VecDeque::new(),
                inflight_bytes: 0,
                next_pkt: 1,
                cc: Ledbat::new(
                    cfg.max_payload,
                    cfg.target_delay.as_micros() as u64,
                    cfg.max_cwnd,
                ),
                pacer: TokenBucket::new(1e6, 4.0 * cfg.max_payload as f64, now_us),
                last_progress_us: now_us,
                next_deadline_us: u64::MAX,
                slack_us: super::MIN_SLACK_US,
                recent_lost: VecDeque::new(),
            },
            rx: DataRx::default(),
            stats: PeerStats::default(),
            incompatible: None,
        }
    }

    pub(crate) fn update_pacer(&mut self, now_us: u64, mss: usize) {
        let srtt = if self.rtt.has_sample() {
            self.rtt.srtt_us().max(100)
        } else {
            100_000
        };
        // 1.5x window per RTT, with bursts of up to 2 ms (timer granularity).
        let rate = 1.5 * self.tx.cc.cwnd() as f64 * 1e6 / srtt as f64;
        let burst = (rate * 0.002).max(4.0 * mss as f64);
        self.tx.pacer.set_rate(now_us, rate, burst);
    }

    pub(crate) fn rate_bps(&self) -> u64 {
        if !self.rtt.has_sample() {
            return 0;
        }
        (self.tx.cc.cwnd() as f64 * 8e6 / self.rtt.srtt_us().max(1) as f64) as u64
    }

    /// Drop queued chunks whose deadline passed before they started. Returns
    /// whether any were dropped.
    pub(crate) fn expire_queue(&mut self, now_us: u64) -> bool {
        if self.tx.next_deadline_us > now_us {
            return false;
        }
        let mut next = u64::MAX;
        let mut bytes = 0;
        let mut chunks = 0;
        self.tx.queue.retain(|f| {
            if f.deadline_us <= now_us {
                bytes += f.wire_len();
                chunks += u64::from(f.index == 0);
                false
            } else {
                next = next.min(f.deadline_us);
                true
            }
        });
        self.tx.queued_bytes -= bytes;
        self.tx.next_deadline_us = next;
        self.stats.expired_chunks += chunks;
        bytes > 0
    }

    /// Requeue a lost fragment (or abandon it).
    pub(crate) fn lost(
        &mut self,
        mut f: Frag,
        now_us: u64,
        cfg: &NetConfig,
        requeue: &mut Vec<Frag>,
    ) {
        self.stats.data_lost += 1;
        f.tries += 1;
        let age = now_us.saturating_sub(f.born_us);
        if f.tries >= cfg.max_data_tries || age > cfg.reassembly_timeout.as_micros() as u64 {
            self.stats.chunks_abandoned += u64::from(f.index == 0);
            return;
        }
        requeue.push(f);
    }

    /// Datagram `pkt` was declared lost: remember it, and let the slack
    /// shrink (a loss that was real says the slack is not what is missing).
    fn declared_lost(&mut self, pkt: u64) {
        if self.tx.recent_lost.len() >= RECENT_LOST {
            self.tx.recent_lost.pop_front();
        }
        // Kept sorted (losses are declared from the oldest datagram up, so
        // this is a push at the back) for the lookup every ack makes.
        let at = self.tx.recent_lost.partition_point(|&p| p < pkt);
        self.tx.recent_lost.insert(at, pkt);
        self.tx.slack_us = (self.tx.slack_us - self.tx.slack_us / 8).max(super::MIN_SLACK_US);
    }

    /// An ack covers `pkt`, which may have been declared lost: then the
    /// loss was spurious (the ack was late, not the datagram) and the slack
    /// doubles.
    fn acked_lost(&mut self, pkt: u64) {
        if let Ok(i) = self.tx.recent_lost.binary_search(&pkt) {
            self.tx.recent_lost.remove(i);
            self.stats.data_spurious += 1;
            self.tx.slack_us = (self.tx.slack_us * 2).min(super::PTO_SLACK_US);
        }
    }

    pub(crate) fn requeue(&mut self, mut frags: Vec<Frag>) {
        self.stats.data_retransmissions += frags.len() as u64;
        while let Some(f) = frags.pop() {
            self.tx.queued_bytes += f.wire_len();
            self.tx.queue.push_front(f);
        }
    }

    pub(crate) fn pop_settled(&mut self) {
        while self.tx.inflight.front().is_some_and(|e| e.frag.is_none()) {
            self.tx.inflight.pop_front();
        }
    }

    pub(crate) fn on_data_ack(
        &mut self,
        now_us: u64,
        largest: u64,
        bitmap: u64,
        delay: u32,
        ack_delay_us: u64,
        cfg: &NetConfig,
    ) {
        // Datagrams declared lost that this ack covers (settled or still
        // in flight): their loss was spurious.
        if !self.tx.recent_lost.is_empty() {
            for i in 0..=64u64.min(largest) {
                if i == 0 || (bitmap >> (i - 1)) & 1 == 1 {
                    self.acked_lost(largest - i);
                }
            }
        }
        let Some(front) = self.tx.inflight.front().map(|e| e.pkt) else {
            return;
        };
        let back = front + self.tx.inflight.len() as u64 - 1;
        if largest < front || largest > back {
            return;
        }
        let flight_before = self.tx.inflight_bytes;
        let mut acked = 0usize;
        for i in 0..=64u64 {
            if i > largest || largest - i < front {
                break;
            }
            let got = i == 0 || (bitmap >> (i - 1)) & 1 == 1;
            if !got {
                continue;
            }
            let e = &mut self.tx.inflight[(largest - i - front) as usize];
            if e.frag.take().is_some() {
                acked += e.size;
                self.tx.inflight_bytes -= e.size;
                if i == 0 {
                    // As QUIC does: the time the receiver held the ack comes
                    // off, unless that would go below the least RTT seen.
                    let raw = now_us.saturating_sub(e.sent_us);
                    let held = self.rtt.min_us().saturating_add(ack_delay_us);
                    self.rtt
                        .sample(if raw >= held { raw - ack_delay_us } else { raw });
                }
            }
        }
        let rack_us = self.rtt.srtt_us() * 5 / 4 + self.tx.slack_us;
        let mut requeue = Vec::new();
        let mut any_lost = false;
        let mut idx = 0;
        while idx < self.tx.inflight.len() {
            let e = &mut self.tx.inflight[idx];
            // Lost if enough later datagrams were acked, or (RACK-like) a
            // later one was acked and this one is overdue by a quarter RTT.
            let overdue = e.pkt < largest && now_us.saturating_sub(e.sent_us) > rack_us;
            if e.pkt + REORDER_THRESHOLD > largest && !overdue {
                break;
            }
            if let Some(f) = e.frag.take() {
                self.tx.inflight_bytes -= e.size;
                any_lost = true;
                let pkt = e.pkt;
                self.lost(f, now_us, cfg, &mut requeue);
                self.declared_lost(pkt);
            }
            idx += 1;
        }
        self.requeue(requeue);
        self.tx.cc.on_delay_sample(now_us, delay);
        if acked > 0 {
            self.tx.last_progress_us = now_us;
            self.tx.cc.on_ack(acked, flight_before);
        }
        if any_lost {
            self.tx.cc.on_loss(now_us, self.rtt.srtt_us());
        }
        self.pop_settled();
        self.update_pacer(now_us, cfg.max_payload);
    }

    /// Longest this side holds a data ack for this peer, and what it allows
    /// the peer's acks: a quarter of the RTT (so a held ack costs the
    /// sender's loss detection little), between 1 ms and
    /// [`super::MAX_ACK_DELAY_US`]. Both ends estimate nearly the same RTT;
    /// the slack on top of the probe timeout covers the difference and a
    /// receiver that runs late.
    pub(crate) fn ack_hold_us(&self) -> u64 {
        (self.rtt.srtt_us() / 4).clamp(1_000, super::MAX_ACK_DELAY_US)
    }

    /// Time after which an unacked data datagram counts as lost (a probe
    /// timeout in the spirit of QUIC's PTO: 2·SRTT + 4·RTTVAR, at least
    /// 5 ms and, under a cap, at least [`uplink_floor_us`]): much shorter
    /// than the control RTO floor, because on a fast path a lost tail would
    /// otherwise idle the flow for the whole floor.
    pub(crate) fn data_loss_timeout_us(&self, cfg: &NetConfig) -> u64 {
        if self.rtt.has_sample() {
            ((2 * self.rtt.srtt_us() + 4 * self.rtt.rttvar_us())
                .max(5_000)
                .max(uplink_floor_us(cfg))
                + self.ack_hold_us()
                + self.tx.slack_us)
                .min(cfg.rto_max.as_micros() as u64)
        } else {
            cfg.rto_initial.as_micros() as u64
        }
    }

    /// Tail loss: fragments unacked for a probe timeout. Returns when to look
    /// again.
    pub(crate) fn check_timeouts(&mut self, now_us: u64, cfg: &NetConfig) -> Option<u64> {
        self.pop_settled();
        let rto = self.data_loss_timeout_us(cfg);
        let mut requeue = Vec::new();
        let mut expired = Vec::new();
        for e in self.tx.inflight.iter_mut() {
            if e.sent_us + rto > now_us {
                break;
            }
            if let Some(f) = e.frag.take() {
                self.tx.inflight_bytes -= e.size;
                expired.push((e.pkt, f));
            }
        }
        let any = !expired.is_empty();
        for (pkt, f) in expired {
            self.lost(f, now_us, cfg, &mut requeue);
            self.declared_lost(pkt);
        }
        if any {
            // No ack at all for a (control-scale) RTO: the path is gone or
            // badly congested, restart from one packet (RFC 6817). A single
            // probe timeout only counts as a loss.
            let stall = (self.rtt.rto().as_micros() as u64).max(4 * rto);
            if now_us.saturating_sub(self.tx.last_progress_us) >= stall {
                self.tx.cc.on_timeout();
                self.tx.last_progress_us = now_us;
            } else {
                self.tx.cc.on_loss(now_us, self.rtt.srtt_us());
            }
            self.requeue(requeue);
            self.update_pacer(now_us, cfg.max_payload);
        }
        self.pop_settled();
        self.tx
            .inflight
            .iter()
            .find(|e| e.frag.is_some())
            .map(|e| e.sent_us + rto)
    }

    pub(crate) fn snapshot(&self) -> PeerStats {
        let mut s = self.stats.clone();
        s.rtt_us = self.rtt.srtt_us();
        s.rttvar_us = self.rtt.rttvar_us();
        s.rto_us = self.rtt.rto().as_micros() as u64;
        s.cwnd_bytes = self.tx.cc.cwnd() as u64;
        s.rate_bps = self.rate_bps();
        s.queuing_delay_us = self.tx.cc.queuing_delay_us().max(0) as u64;
        s.inflight_bytes = self.tx.inflight_bytes as u64;
        s.queued_bytes = self.tx.queued_bytes as u64;
        s.finish_loss_rate();
        s
    }
}

/// Least probe timeout under an upload cap: the time that cap takes to send
/// its burst and two datagrams more. Where the uplink is no faster than the
/// cap (a residential link capped at its rate), a datagram can wait that
/// long behind this peer's own burst, and its ack as long behind the
/// receiver's; on a path of a millisecond or two the RTT samples, mostly
/// of datagrams that waited for nothing, put the timeout well below that.
/// (Simulator at 1 ms one-way delay, push x tree at load 0.5: every loss
/// declared was spurious, 11,700 of them, and a retransmission each.)
fn uplink_floor_us(cfg: &NetConfig) -> u64 {
    match cfg.upload_kbps {
        Some(k) if k > 0 => {
            let rate = k as f64 * 1000.0 / 8.0;
            let bytes = super::cap_burst(rate, cfg.max_payload) + 2.0 * cfg.max_payload as f64;
            (bytes * 1e6 / rate) as u64
        }
        _ => 0,
    }
}
