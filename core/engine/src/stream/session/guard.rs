//! What the session lets through to its plugins and keeps about strangers:
//! the bounds that make hostile peers cost a lookup and a counter, never a
//! plugin's time or the session's memory.
//!
//! - Plugin messages larger than [`MAX_PLUGIN_MESSAGE`] are dropped.
//! - Each neighbour may send [`NEIGHBOUR_RATE`] messages a second (burst
//!   twice that); peers that are not neighbours share one bucket of
//!   [`STRANGER_RATE`]. Honest plugins send far less (pull: about one
//!   announcement per tick per neighbour).
//! - A neighbour is bound to the address its link was made with: a message
//!   naming it from another address is dropped, and one address holds one
//!   neighbour (a second id from it is refused).
//! - The address book (peers heard of) holds [`MAX_BOOK`] entries;
//!   neighbours are never evicted from it.
//! - A forged chunk bans the *address* it arrived on (the link), never the
//!   peer id that address claimed, so that forging "from X" cannot turn the
//!   swarm against X; at most [`MAX_BANNED`] addresses, oldest forgotten.
//! - Chunks whose sequence number is more than a window away from the
//!   newest verified one are dropped before their signature is checked.
//! - A neighbour is sent one chunk at most [`MAX_SENDS_PER_CHUNK`] times.
//!
//! Every drop is counted in [`StreamStats`](super::super::StreamStats).

use std::net::SocketAddr;

use p2ner_plugin_api::PeerId;

use super::Session;

/// Bytes of a scheduler or overlay payload: one datagram's worth.
pub const MAX_PLUGIN_MESSAGE: usize = 1200;
/// Messages a second one neighbour may send.
pub const NEIGHBOUR_RATE: f64 = 500.0;
/// Messages a second all non-neighbours together may send.
pub const STRANGER_RATE: f64 = 200.0;
/// Peers the address book holds.
pub const MAX_BOOK: usize = 4096;
/// Addresses banned at once.
pub const MAX_BANNED: usize = 4096;
/// Copies of one chunk one neighbour is sent (a re-request after a loss
/// the data channel could not repair is the second).
pub const MAX_SENDS_PER_CHUNK: u8 = 2;

/// A token bucket of messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at_us: u64,
}

impl Bucket {
    pub(super) fn new(rate: f64, now_us: u64) -> Self {
        Bucket {
            tokens: rate * 2.0,
            at_us: now_us,
        }
    }

    /// Takes one token; false if there is none.
    pub(super) fn take(&mut self, rate: f64, now_us: u64) -> bool {
        let dt = now_us.saturating_sub(self.at_us) as f64 / 1e6;
        self.at_us = self.at_us.max(now_us);
        self.tokens = (self.tokens + dt * rate).min(rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    /// Whether a message from `peer` may be handled now (its bucket, or the
    /// strangers').
    pub(super) fn admit(&mut self, now_us: u64, peer: PeerId) -> bool {
        let ok = match self.neighbours.get_mut(&peer) {
            Some(n) => n.bucket.take(NEIGHBOUR_RATE, now_us),
            None => self.strangers.take(STRANGER_RATE, now_us),
        };
        if !ok {
            self.stats.messages_rate_limited += 1;
        }
        ok
    }

    /// The neighbour (other than `peer`) whose link is at `addr`.
    pub(super) fn other_at(&self, addr: SocketAddr, peer: PeerId) -> bool {
        self.neighbours
            .iter()
            .any(|(&id, n)| id != peer && n.addr == addr)
    }

    /// Notes where `peer` is, within the book's bound (neighbours first).
    pub(super) fn remember(&mut self, peer: PeerId, addr: SocketAddr) {
        if self.book.len() >= MAX_BOOK && !self.book.contains_key(&peer) {
            let victim = self
                .book
                .keys()
                .find(|id| !self.neighbours.contains_key(id))
                .copied();
            match victim {
                Some(id) => {
                    self.book.remove(&id);
                    self.stats.book_evicted += 1;
                }
                None => return,
            }
        }
        self.book.insert(peer, addr);
    }

    pub(super) fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.banned.contains(addr)
    }

    /// Bans the link at `addr` (bounded: the oldest ban is forgotten).
    pub(super) fn ban_addr(&mut self, addr: SocketAddr) {
        if self.banned.insert(addr) {
            self.stats.peers_banned += 1;
            self.banned_order.push_back(addr);
            if self.banned_order.len() > MAX_BANNED {
                if let Some(old) = self.banned_order.pop_front() {
                    self.banned.remove(&old);
                }
            }
        }
    }

    /// Whether `seq` is within a window of the newest verified chunk (any
    /// is, before the first).
    pub(super) fn seq_in_window(&self, seq: u64) -> bool {
        let Some(newest) = self.buffer.newest() else {
            return true;
        };
        let w = self.cfg.window_chunks;
        seq.saturating_add(w) >= newest && seq <= newest.saturating_add(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_twice_it() {
        let mut b = Bucket::new(10.0, 0);
        assert_eq!((0..100).filter(|_| b.take(10.0, 0)).count(), 20);
        assert!(!b.take(10.0, 50_000));
        assert!(b.take(10.0, 100_000));
        // A long pause refills only to the burst.
        assert_eq!((0..100).filter(|_| b.take(10.0, 100_000_000)).count(), 20);
    }
}
