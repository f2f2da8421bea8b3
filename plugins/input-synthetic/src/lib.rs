//! Input `synthetic`: a deterministic stream of timestamped chunks.
//!
//! Chunks are produced on the engine's clock (the `now_us` it polls with), at
//! the configured bitrate and chunk duration, each payload derived from its
//! index ([`p2ner_plugin_api::synthetic`]) so that any receiver can verify it
//! byte for byte. No media library, no threads: it runs the same in a real
//! swarm and in the simulator, which is what makes it the workhorse of
//! experiments and tests.

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::{synthetic, InputState};

const BITRATE_KBPS: ParamDef = ParamDef::new("bitrate_kbps", "1000", "stream bitrate in kbit/s");
const CHUNK_MS: ParamDef = ParamDef::new("chunk_ms", "100", "media per chunk in milliseconds");
const KEYFRAME_EVERY: ParamDef = ParamDef::new(
    "keyframe_every",
    "10",
    "every Nth chunk is marked as a keyframe",
);
const CHUNKS: ParamDef = ParamDef::new("chunks", "0", "stop after this many chunks (0: never)");

/// Produces chunk `i` once `now >= start + i * chunk_us`.
pub struct Synthetic {
    bitrate_kbps: u32,
    chunk_us: u32,
    keyframe_every: u64,
    /// Stop after this many chunks (0: endless).
    limit: u64,
    started_at: Option<u64>,
    next_index: u64,
}

impl Synthetic {
    /// An input with the given parameters (see the table above).
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let bitrate_kbps: u32 = BITRATE_KBPS.parse(params)?;
        let chunk_ms: u32 = CHUNK_MS.parse(params)?;
        let keyframe_every: u64 = KEYFRAME_EVERY.parse(params)?;
        let limit: u64 = CHUNKS.parse(params)?;
        if bitrate_kbps == 0 || chunk_ms == 0 || keyframe_every == 0 {
            return Err(PluginError::new(
                "bitrate_kbps, chunk_ms and keyframe_every must be positive",
            ));
        }
        Ok(Synthetic {
            bitrate_kbps,
            chunk_us: chunk_ms * 1000,
            keyframe_every,
            limit,
            started_at: None,
            next_index: 0,
        })
    }

    /// Payload bytes per chunk: the bitrate spread over the chunk's duration.
    pub fn chunk_len(&self) -> usize {
        let bytes = self.bitrate_kbps as u64 * 1000 / 8 * self.chunk_us as u64 / 1_000_000;
        (bytes as usize).max(synthetic::HEADER_LEN)
    }
}

impl Input for Synthetic {
    fn start(&mut self, now_us: u64) -> Result<StreamFormat, PluginError> {
        self.started_at = Some(now_us);
        Ok(StreamFormat {
            container: "synthetic".into(),
            description: format!(
                "synthetic test signal, {} kbit/s, {} ms chunks of {} bytes",
                self.bitrate_kbps,
                self.chunk_us / 1000,
                self.chunk_len()
            )
            .into(),
            bitrate_kbps: self.bitrate_kbps,
            chunk_us: self.chunk_us,
        })
    }

    fn poll(&mut self, now_us: u64, out: &mut RVec<MediaChunk>) -> Result<InputState, PluginError> {
        let start = self
            .started_at
            .ok_or_else(|| PluginError::new("synthetic input polled before start"))?;
        let len = self.chunk_len();
        while self.limit == 0 || self.next_index < self.limit {
            let pts_us = self.next_index * self.chunk_us as u64;
            if start + pts_us > now_us {
                return Ok(InputState::Live);
            }
            out.push(MediaChunk {
                pts_us,
                duration_us: self.chunk_us,
                keyframe: self.next_index.is_multiple_of(self.keyframe_every),
                data: synthetic::payload(self.next_index, len).into(),
            });
            self.next_index += 1;
        }
        Ok(InputState::Ended)
    }
}

fn register(lib: &mut Registrar) {
    lib.input(
        ComponentSpec::new(
            "synthetic",
            env!("CARGO_PKG_VERSION"),
            "deterministic test stream: verifiable chunks at a set bitrate, on the engine's clock",
        )
        .params(&[BITRATE_KBPS, CHUNK_MS, KEYFRAME_EVERY, CHUNKS]),
        Synthetic::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-input-synthetic",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(pairs: &[(&str, &str)]) -> Synthetic {
        Synthetic::new(&pairs.iter().copied().collect()).unwrap()
    }

    #[test]
    fn produces_chunks_on_the_given_clock_at_the_given_bitrate() {
        let mut input = synthetic(&[("bitrate_kbps", "800"), ("chunk_ms", "40")]);
        let format = input.start(1_000).unwrap();
        assert_eq!(format.chunk_us, 40_000);
        let mut out = RVec::new();
        // At t = start: chunk 0 only. At start + 1 s: chunks 0..=25.
        input.poll(1_000, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        input.poll(1_001_000, &mut out).unwrap();
        assert_eq!(out.len(), 26);
        let bytes: usize = out.iter().take(25).map(|c| c.data.len()).sum();
        assert_eq!(
            bytes,
            800 * 1000 / 8,
            "one second of chunks is one second of bitrate"
        );
        for (i, chunk) in out.iter().enumerate() {
            assert_eq!(synthetic::verify(&chunk.data), Some(i as u64));
            assert_eq!(chunk.pts_us, i as u64 * 40_000);
            assert_eq!(chunk.keyframe, i % 10 == 0);
        }
    }

    #[test]
    fn ends_after_the_limit_and_rejects_nonsense() {
        let mut input = synthetic(&[("chunks", "3")]);
        input.start(0).unwrap();
        let mut out = RVec::new();
        assert_eq!(input.poll(10_000_000, &mut out).unwrap(), InputState::Ended);
        assert_eq!(out.len(), 3);
        let err = Synthetic::new(&[("bitrate_kbps", "0")].into_iter().collect())
            .err()
            .unwrap();
        assert!(err.message.contains("positive"));
    }
}
