//! Media chunks are larger than a datagram: the sender cuts them into
//! fragments, the receiver puts them back together.
//!
//! Reassembly is where a hostile or broken peer could make us hold memory, so
//! it is bounded twice: incomplete chunks expire after a timeout, and the
//! bytes held by all incomplete chunks together never exceed a budget (the
//! oldest incomplete chunk is evicted to make room). A short memory of
//! recently completed chunks turns late retransmitted fragments into
//! duplicates instead of new partial chunks.

use crate::wire::{DataHeader, DATA_OVERHEAD};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// One fragment waiting to be sent (or re-sent).
#[derive(Debug, Clone)]
pub struct Frag {
    /// The stream the chunk belongs to.
    pub stream: u64,
    /// The chunk's sequence number.
    pub seq: u64,
    /// The whole chunk's length, so the receiver can size it from any fragment.
    pub chunk_len: u32,
    /// Where this fragment's bytes go in the chunk.
    pub offset: u32,
    /// This fragment's number within the chunk.
    pub index: u32,
    /// How many fragments the chunk has.
    pub count: u32,
    /// The fragment's bytes (a slice of the chunk, not a copy).
    pub data: Bytes,
    /// Transmissions so far.
    pub tries: u32,
    /// When the chunk was queued (µs, endpoint clock).
    pub born_us: u64,
    /// The chunk is dropped unsent if its first fragment has not gone out by
    /// then (µs, endpoint clock; `u64::MAX`: no deadline). Cleared on the
    /// remaining fragments once the first one is sent, so a started chunk is
    /// finished rather than left half-delivered.
    pub deadline_us: u64,
}

impl Frag {
    /// The datagram header for this fragment as datagram `pkt` sent at sender time `ts`.
    pub fn header(&self, pkt: u64, ts: u32) -> DataHeader {
        DataHeader {
            pkt,
            ts,
            stream: self.stream,
            seq: self.seq,
            chunk_len: self.chunk_len,
            offset: self.offset,
            index: self.index,
            count: self.count,
        }
    }

    /// Datagram size on the wire.
    pub fn wire_len(&self) -> usize {
        DATA_OVERHEAD + self.data.len()
    }
}

/// Payload bytes per fragment for a datagram budget.
pub fn frag_size(max_datagram: usize) -> usize {
    max_datagram.saturating_sub(DATA_OVERHEAD).max(1)
}

/// Cut a chunk into fragments (zero-copy: each is a slice of `data`).
pub fn split(
    stream: u64,
    seq: u64,
    data: &Bytes,
    max_datagram: usize,
    born_us: u64,
) -> impl Iterator<Item = Frag> + '_ {
    let fs = frag_size(max_datagram);
    let len = data.len();
    let count = len.div_ceil(fs).max(1);
    (0..count).map(move |i| {
        let start = i * fs;
        let end = (start + fs).min(len);
        Frag {
            stream,
            seq,
            chunk_len: len as u32,
            offset: start as u32,
            index: i as u32,
            count: count as u32,
            data: data.slice(start..end),
            tries: 0,
            born_us,
            deadline_us: u64::MAX,
        }
    })
}

/// What happened to an incoming fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The last missing fragment: here is the whole chunk.
    Complete(Bytes),
    /// Kept; more fragments are needed.
    Pending,
    /// Already had it (a spurious retransmission).
    Duplicate,
    /// Inconsistent with earlier fragments, or larger than allowed.
    Rejected,
}

struct Partial {
    buf: Vec<u8>,
    have: Vec<u64>,
    received: u32,
    count: u32,
    started_us: u64,
}

/// Reassembly of chunks from all peers.
pub struct Reassembler<K> {
    partial: HashMap<K, Partial>,
    order: VecDeque<(K, u64)>,
    held: usize,
    max_bytes: usize,
    max_chunk: usize,
    timeout_us: u64,
    done: HashSet<K>,
    done_order: VecDeque<K>,
    done_cap: usize,
    /// Incomplete chunks given up (timeout or memory budget).
    pub expired: u64,
}

impl<K: Hash + Eq + Clone> Reassembler<K> {
    /// A reassembler holding at most `max_bytes` of incomplete chunks of at most `max_chunk` bytes each, for `timeout_us` at most.
    pub fn new(max_bytes: usize, max_chunk: usize, timeout_us: u64) -> Self {
        Reassembler {
            partial: HashMap::new(),
            order: VecDeque::new(),
            held: 0,
            max_bytes,
            max_chunk,
            timeout_us,
            done: HashSet::new(),
            done_order: VecDeque::new(),
            done_cap: 8192,
            expired: 0,
        }
    }

    /// Bytes held by incomplete chunks.
    pub fn held(&self) -> usize {
        self.held
    }

    /// When the oldest incomplete chunk was started (µs; possibly one
    /// already completed, so a wake-up may find nothing to expire).
    pub fn oldest_start(&self) -> Option<u64> {
        self.order.front().map(|(_, t)| *t)
    }

    /// Chunks partly received.
    pub fn incomplete(&self) -> usize {
        self.partial.len()
    }

    fn mark_done(&mut self, key: K) {
        if self.done.insert(key.clone()) {
            self.done_order.push_back(key);
            if self.done_order.len() > self.done_cap {
                if let Some(k) = self.done_order.pop_front() {
                    self.done.remove(&k);
                }
            }
        }
    }

    fn remove(&mut self, key: &K) -> Option<Partial> {
        let p = self.partial.remove(key)?;
        self.held -= p.buf.len();
        Some(p)
    }

    /// Drop incomplete chunks older than the timeout.
    pub fn expire(&mut self, now_us: u64) {
        while let Some((k, started)) = self.order.front() {
            let live = self
                .partial
                .get(k)
                .is_some_and(|p| p.started_us == *started);
            if !live {
                self.order.pop_front();
                continue;
            }
            if now_us.saturating_sub(*started) < self.timeout_us {
                break;
            }
            let (k, _) = self.order.pop_front().expect("front exists");
            self.remove(&k);
            self.expired += 1;
        }
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((k, started)) = self.order.pop_front() {
            if self
                .partial
                .get(&k)
                .is_some_and(|p| p.started_us == started)
            {
                self.remove(&k);
                self.expired += 1;
                return true;
            }
        }
        false
    }

    /// Adds one fragment of the chunk `key` (a peer and stream) and says what it completed.
    pub fn insert(&mut self, now_us: u64, key: K, h: &DataHeader, payload: &[u8]) -> Outcome {
        self.expire(now_us);
        let len = h.chunk_len as usize;
        if len > self.max_chunk {
            return Outcome::Rejected;
        }
        if self.done.contains(&key) {
            return Outcome::Duplicate;
        }
        if h.count == 1 {
            if payload.len() != len || h.offset != 0 {
                return Outcome::Rejected;
            }
            self.mark_done(key);
            return Outcome::Complete(Bytes::copy_from_slice(payload));
        }
        if !self.partial.contains_key(&key) {
            if len > self.max_bytes {
                return Outcome::Rejected;
            }
            while self.held + len > self.max_bytes {
                if !self.evict_oldest() {
                    break;
                }
            }
            self.partial.insert(
                key.clone(),
                Partial {
                    buf: vec![0; len],
                    have: vec![0; (h.count as usize).div_ceil(64)],
                    received: 0,
                    count: h.count,
                    started_us: now_us,
                },
            );
            self.order.push_back((key.clone(), now_us));
            self.held += len;
        }
        let p = self.partial.get_mut(&key).expect("inserted above");
        if p.buf.len() != len || p.count != h.count {
            return Outcome::Rejected;
        }
        let (w, b) = ((h.index / 64) as usize, h.index % 64);
        if p.have[w] & (1 << b) != 0 {
            return Outcome::Duplicate;
        }
        let start = h.offset as usize;
        // decode() guarantees offset + len <= chunk_len.
        p.buf[start..start + payload.len()].copy_from_slice(payload);
        p.have[w] |= 1 << b;
        p.received += 1;
        if p.received == p.count {
            let p = self.remove(&key).expect("present");
            self.mark_done(key);
            return Outcome::Complete(Bytes::from(p.buf));
        }
        Outcome::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(f: &Frag) -> DataHeader {
        f.header(0, 0)
    }

    #[test]
    fn split_and_reassemble_any_order() {
        let data = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let frags: Vec<_> = split(1, 2, &data, 1200, 0).collect();
        assert_eq!(frags.len(), 10_000usize.div_ceil(frag_size(1200)));
        assert!(frags.iter().all(|f| f.wire_len() <= 1200));
        let mut r = Reassembler::new(1 << 20, 1 << 20, 1_000_000);
        let mut out = None;
        for f in frags.iter().rev() {
            match r.insert(0, 7u32, &hdr(f), &f.data) {
                Outcome::Complete(b) => out = Some(b),
                Outcome::Pending => {}
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(out.unwrap(), data);
        assert_eq!(r.held(), 0);
        assert_eq!(
            r.insert(0, 7u32, &hdr(&frags[0]), &frags[0].data),
            Outcome::Duplicate
        );
    }

    #[test]
    fn empty_and_single() {
        let mut r = Reassembler::new(1 << 20, 1 << 20, 1_000_000);
        let e = Bytes::new();
        let f: Vec<_> = split(0, 0, &e, 1200, 0).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(
            r.insert(0, 1u8, &hdr(&f[0]), &f[0].data),
            Outcome::Complete(Bytes::new())
        );
    }

    #[test]
    fn timeout_and_budget() {
        let data = Bytes::from(vec![1u8; 5000]);
        let mut r = Reassembler::new(12_000, 1 << 20, 1_000);
        for k in 0..5u32 {
            let f = split(0, k as u64, &data, 1200, 0).next().unwrap();
            assert_eq!(r.insert(0, k, &hdr(&f), &f.data), Outcome::Pending);
            assert!(r.held() <= 12_000);
        }
        assert_eq!(r.incomplete(), 2);
        r.expire(2_000);
        assert_eq!(r.incomplete(), 0);
        assert_eq!(r.held(), 0);
        assert_eq!(r.expired, 5);
        let f = split(0, 0, &Bytes::from(vec![0; 20_000]), 1200, 0)
            .next()
            .unwrap();
        assert_eq!(r.insert(0, 9, &hdr(&f), &f.data), Outcome::Rejected);
    }

    #[test]
    fn inconsistent_rejected() {
        let data = Bytes::from(vec![1u8; 5000]);
        let mut r = Reassembler::new(1 << 20, 1 << 20, 1_000_000);
        let f = split(0, 0, &data, 1200, 0).next().unwrap();
        assert_eq!(r.insert(0, 1u8, &hdr(&f), &f.data), Outcome::Pending);
        let mut h = hdr(&f);
        h.chunk_len = 6000;
        assert_eq!(r.insert(0, 1u8, &h, &f.data), Outcome::Rejected);
    }
}
