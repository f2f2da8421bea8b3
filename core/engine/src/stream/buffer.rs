//! The window of chunks a peer holds, to play and to forward.

use std::collections::BTreeMap;

use super::Chunk;

/// What inserting a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The first copy: count it useful and tell the scheduler.
    New,
    /// Already held: the sender wasted upload, which the overlay's reports show.
    Duplicate,
    /// Older than the window: it can neither be played nor forwarded.
    TooOld,
}

/// Chunks by sequence number, at most `window` of them: the newest ones.
#[derive(Debug)]
pub struct ChunkBuffer {
    window: u64,
    chunks: BTreeMap<u64, Chunk>,
    /// Everything below this has been dropped for good.
    floor: u64,
}

impl ChunkBuffer {
    /// A buffer that keeps the newest `window` chunks (at least one).
    pub fn new(window: u64) -> Self {
        ChunkBuffer {
            window: window.max(1),
            chunks: BTreeMap::new(),
            floor: 0,
        }
    }

    /// Keeps `chunk` unless it is older than the window or already held; the oldest chunks fall out as newer ones come.
    pub fn insert(&mut self, chunk: Chunk) -> Insert {
        if chunk.seq < self.floor {
            return Insert::TooOld;
        }
        if self.chunks.contains_key(&chunk.seq) {
            return Insert::Duplicate;
        }
        let seq = chunk.seq;
        self.chunks.insert(seq, chunk);
        let newest = self.newest().unwrap_or(seq);
        let keep_from = (newest + 1).saturating_sub(self.window);
        self.drop_below(keep_from);
        Insert::New
    }

    /// Forgets everything older than `seq` (played chunks, a window that moved).
    pub fn drop_below(&mut self, seq: u64) {
        if seq > self.floor {
            self.floor = seq;
            self.chunks = self.chunks.split_off(&seq);
        }
    }

    /// The chunk `seq`, while the window holds it.
    pub fn get(&self, seq: u64) -> Option<&Chunk> {
        self.chunks.get(&seq)
    }

    /// Whether chunk `seq` is held.
    pub fn contains(&self, seq: u64) -> bool {
        self.chunks.contains_key(&seq)
    }

    /// The highest sequence number held.
    pub fn newest(&self) -> Option<u64> {
        self.chunks.last_key_value().map(|(&s, _)| s)
    }

    /// The lowest sequence number held.
    pub fn oldest(&self) -> Option<u64> {
        self.chunks.first_key_value().map(|(&s, _)| s)
    }

    /// Everything below this is gone for good: a scheduler must not ask for it.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// How many chunks are held.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Nothing held yet.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Chunks from `seq` on, in order.
    pub fn from(&self, seq: u64) -> impl Iterator<Item = &Chunk> {
        self.chunks.range(seq..).map(|(_, c)| c)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn chunk(seq: u64) -> Chunk {
        Chunk {
            seq,
            pts_us: seq * 100_000,
            duration_us: 100_000,
            keyframe: seq.is_multiple_of(10),
            capture_us: seq * 100_000,
            sealed: bytes::Bytes::from(vec![seq as u8; 10]),
            media_at: 0,
        }
    }

    #[test]
    fn keeps_the_newest_window_and_refuses_what_fell_out() {
        let mut b = ChunkBuffer::new(3);
        for s in [5, 6, 7, 8] {
            assert_eq!(b.insert(chunk(s)), Insert::New);
        }
        assert_eq!((b.oldest(), b.newest(), b.len()), (Some(6), Some(8), 3));
        assert_eq!(b.insert(chunk(5)), Insert::TooOld);
        assert_eq!(b.insert(chunk(7)), Insert::Duplicate);
        b.drop_below(8);
        assert_eq!(b.insert(chunk(7)), Insert::TooOld);
        assert_eq!(b.from(0).map(|c| c.seq).collect::<Vec<_>>(), vec![8]);
    }
}
