//! Cutting a media stream into chunks that start on keyframes.
//!
//! Part of the SDK because every codec input needs the same rule (both the
//! `gst` and the `vlc` inputs use it): pure logic, fed by whatever muxer the
//! plugin drives.

use crate::MediaChunk;

/// Accumulates muxer output buffers into chunks.
///
/// A chunk ends when it holds `chunk_us` of media or when a keyframe arrives
/// (so every keyframe starts a chunk, and a joiner can start decoding at the
/// first keyframe chunk it gets).
#[derive(Debug)]
pub struct Chunker {
    chunk_us: u64,
    current: Vec<u8>,
    start_us: Option<u64>,
    keyframe: bool,
    last_us: u64,
}

impl Chunker {
    /// A chunker cutting chunks of about `chunk_us` of media.
    pub fn new(chunk_us: u64) -> Self {
        Chunker {
            chunk_us,
            current: Vec::new(),
            start_us: None,
            keyframe: false,
            last_us: 0,
        }
    }

    /// Adds one buffer (its running time and whether it starts a keyframe);
    /// returns the chunk it completed, if any.
    pub fn push(&mut self, pts_us: Option<u64>, keyframe: bool, data: &[u8]) -> Option<MediaChunk> {
        let pts_us = pts_us.unwrap_or(self.last_us).max(self.last_us);
        self.last_us = pts_us;
        let done = match self.start_us {
            Some(start) if keyframe || pts_us.saturating_sub(start) >= self.chunk_us => {
                self.take(pts_us)
            }
            _ => None,
        };
        if self.start_us.is_none() {
            self.start_us = Some(pts_us);
            self.keyframe = keyframe;
        }
        self.current.extend_from_slice(data);
        done
    }

    /// The chunk in progress, ended at `end_us` (at the end of the stream).
    pub fn flush(&mut self) -> Option<MediaChunk> {
        let end = self.last_us;
        self.take(end)
    }

    fn take(&mut self, end_us: u64) -> Option<MediaChunk> {
        let start = self.start_us.take()?;
        if self.current.is_empty() {
            return None;
        }
        Some(MediaChunk {
            pts_us: start,
            duration_us: end_us.saturating_sub(start).min(u32::MAX as u64) as u32,
            keyframe: std::mem::take(&mut self.keyframe),
            data: std::mem::take(&mut self.current).into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_duration_and_at_every_keyframe() {
        let mut c = Chunker::new(100);
        let mut out = Vec::new();
        for (t, key) in [
            (0, true),
            (40, false),
            (80, false),
            (120, false),
            (150, true),
            (200, false),
        ] {
            out.extend(c.push(Some(t), key, &[t as u8]));
        }
        out.extend(c.flush());
        let shape: Vec<(u64, u32, bool, usize)> = out
            .iter()
            .map(|c| (c.pts_us, c.duration_us, c.keyframe, c.data.len()))
            .collect();
        // [0,40,80] reaches 100 us at 120; 120 runs until the keyframe at 150.
        assert_eq!(
            shape,
            vec![(0, 120, true, 3), (120, 30, false, 1), (150, 50, true, 2)]
        );
    }

    #[test]
    fn missing_or_backwards_timestamps_do_not_break_it() {
        let mut c = Chunker::new(100);
        assert!(c.push(Some(50), true, b"a").is_none());
        assert!(c.push(None, false, b"b").is_none());
        assert!(c.push(Some(10), false, b"c").is_none());
        let last = c.flush().unwrap();
        assert_eq!((last.pts_us, last.data.len()), (50, 3));
        assert!(c.flush().is_none());
    }
}
