//! The publishing side: what the input produces is sealed with the
//! publisher's key, buffered and offered to the scheduler.

use bytes::Bytes;
use p2ner_plugin_api::abi_stable::std_types::{ROption, RVec};
use p2ner_plugin_api::{InputState, MediaChunk};
use p2ner_proto::peer::{self as wire, ChunkHeader};

use super::super::Chunk;
use super::{Role, Session};

impl Session {
    pub(super) fn produce(&mut self, now_us: u64) {
        let Role::Publisher { input, key } = &mut self.role else {
            return;
        };
        if self.ended {
            return;
        }
        let mut media: RVec<MediaChunk> = RVec::new();
        let state = input.poll(now_us, &mut media).into_result();
        // Sealed while the key is at hand; the publisher's clock is the
        // capture time every subscriber measures its lag against.
        let sealed: Vec<Chunk> = media
            .iter()
            .zip(self.next_seq..)
            .map(|(mc, seq)| {
                let header = ChunkHeader {
                    pts_us: mc.pts_us,
                    duration_us: mc.duration_us,
                    keyframe: mc.keyframe,
                    capture_us: now_us,
                };
                let sealed = wire::seal_chunk(key, self.cfg.stream, seq, &header, &mc.data);
                Chunk {
                    seq,
                    pts_us: mc.pts_us,
                    duration_us: mc.duration_us,
                    keyframe: mc.keyframe,
                    capture_us: now_us,
                    media_at: sealed.len() - mc.data.len(),
                    sealed: Bytes::from(sealed),
                }
            })
            .collect();
        match state {
            Ok(InputState::Ended) => self.ended = true,
            Ok(_) => {}
            Err(e) => self.fail(format!("input: {e}")),
        }
        for chunk in sealed {
            let seq = chunk.seq;
            self.next_seq = seq + 1;
            self.stats.chunks_produced += 1;
            self.stats.media_bytes += chunk.media().len() as u64;
            self.buffer.insert(chunk);
            let r = self
                .scheduler
                .on_chunk(now_us, seq, ROption::RNone, &mut self.sched_actions);
            self.after_scheduler("on_chunk", r.into_result(), now_us);
        }
    }
}
