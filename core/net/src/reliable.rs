//! Bookkeeping of the reliable control channel: which message ids a peer has
//! already delivered to us (duplicate suppression) and which ids we still have
//! in flight to it (the "floor" we advertise so the peer can forget).
//!
//! The retransmission loop itself lives in the endpoint (one future per
//! message, timed by [`crate::rtt::RttEstimator`]); this module is pure state.
//!
//! Suppression must not grow without bound: the sender advertises in every
//! message the lowest id it still has pending; ids below it will never be sent
//! again, so the receiver keeps only ids above that floor, and additionally
//! caps the set (a peer that lies about its floor loses messages, not memory).

use std::collections::BTreeSet;

/// What to do with an incoming reliable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First copy: deliver it (and ack).
    Deliver,
    /// Already delivered: ack again, do not deliver.
    Duplicate,
}

/// Per-peer receive-side duplicate suppression.
#[derive(Debug, Clone)]
pub struct RecvDedup {
    session: Option<u32>,
    /// Every id <= floor is settled.
    floor: u64,
    above: BTreeSet<u64>,
    cap: usize,
}

impl RecvDedup {
    /// Remembers at most `cap` ids above the floor (bounded state against a flood).
    pub fn new(cap: usize) -> Self {
        RecvDedup {
            session: None,
            floor: 0,
            above: BTreeSet::new(),
            cap,
        }
    }

    /// Would this message be a first copy? Does not record it.
    pub fn check(&mut self, session: u32, id: u64, sender_floor: u64) -> Verdict {
        if self.session != Some(session) {
            // A new incarnation of the peer: its ids start again.
            self.session = Some(session);
            self.floor = 0;
            self.above.clear();
        }
        self.advance(sender_floor.saturating_sub(1));
        if id <= self.floor || self.above.contains(&id) {
            Verdict::Duplicate
        } else {
            Verdict::Deliver
        }
    }

    /// Record a delivered id.
    pub fn record(&mut self, id: u64) {
        if id <= self.floor {
            return;
        }
        self.above.insert(id);
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
        while self.above.len() > self.cap {
            if let Some(f) = self.above.pop_first() {
                self.floor = f;
            }
        }
    }

    fn advance(&mut self, to: u64) {
        if to > self.floor {
            self.floor = to;
            while self.above.first().is_some_and(|&f| f <= self.floor) {
                self.above.pop_first();
            }
            while self.above.first() == Some(&(self.floor + 1)) {
                self.above.pop_first();
                self.floor += 1;
            }
        }
    }

    /// Ids remembered above the floor.
    pub fn tracked(&self) -> usize {
        self.above.len()
    }
}

/// Per-peer send side: allocates ids and knows the lowest one still pending.
#[derive(Debug, Clone, Default)]
pub struct SendIds {
    next: u64,
    pending: BTreeSet<u64>,
}

impl SendIds {
    /// The next message id, now pending.
    pub fn allocate(&mut self) -> u64 {
        self.next += 1;
        self.pending.insert(self.next);
        self.next
    }

    /// The message is settled (acked or given up).
    pub fn settle(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// Lowest id still pending, or the next one to be allocated.
    pub fn floor(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.next + 1)
    }

    /// Messages not yet settled.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_suppressed_reordering_tolerated() {
        let mut d = RecvDedup::new(1000);
        for id in [3, 1, 2, 5, 4] {
            assert_eq!(d.check(9, id, 1), Verdict::Deliver);
            d.record(id);
        }
        for id in 1..=5 {
            assert_eq!(d.check(9, id, 1), Verdict::Duplicate);
        }
        assert_eq!(d.tracked(), 0);
        assert_eq!(d.check(9, 7, 1), Verdict::Deliver);
        d.record(7);
        assert_eq!(d.tracked(), 1);
        assert_eq!(d.check(9, 6, 1), Verdict::Deliver);
    }

    #[test]
    fn sender_floor_bounds_memory() {
        let mut d = RecvDedup::new(1000);
        // id 1 was given up by the sender; later ids keep arriving.
        for id in 2..500 {
            d.check(1, id, 1);
            d.record(id);
        }
        assert_eq!(d.tracked(), 498);
        // Sender advertises that everything below 500 is settled.
        assert_eq!(d.check(1, 500, 500), Verdict::Deliver);
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn hard_cap() {
        let mut d = RecvDedup::new(10);
        for id in (2..100).step_by(2) {
            d.check(1, id, 1);
            d.record(id);
        }
        assert!(d.tracked() <= 10);
    }

    #[test]
    fn new_session_resets() {
        let mut d = RecvDedup::new(10);
        d.check(1, 1, 1);
        d.record(1);
        assert_eq!(d.check(1, 1, 1), Verdict::Duplicate);
        assert_eq!(d.check(2, 1, 1), Verdict::Deliver);
    }

    #[test]
    fn send_ids_floor() {
        let mut s = SendIds::default();
        assert_eq!(s.floor(), 1);
        let a = s.allocate();
        let b = s.allocate();
        assert_eq!(s.floor(), a);
        s.settle(a);
        assert_eq!(s.floor(), b);
        s.settle(b);
        assert_eq!(s.floor(), 3);
    }
}
