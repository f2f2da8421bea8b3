//! The subscribing side: chunks from neighbours are verified against the
//! publisher's key (a forged one bans its sender), buffered, and played out
//! against the play-out clock, which counts what arrived too late.

use std::net::SocketAddr;

use bytes::Bytes;
use p2ner_plugin_api::abi_stable::std_types::ROption;
use p2ner_plugin_api::{ChunkRef, Playout};
use p2ner_proto::peer as wire;

use super::super::buffer::Insert;
use super::super::playout::PlayEvent;
use super::super::Chunk;
use super::{Role, Session};

impl Session {
    /// A chunk from the data channel. Returns false when the sender was
    /// banned for it (the carrier may want to count that).
    pub fn on_chunk(&mut self, now_us: u64, from: SocketAddr, seq: u64, data: Bytes) -> bool {
        self.stats.bytes_down += data.len() as u64;
        let Some(peer) = self
            .neighbours
            .iter()
            .find(|(_, n)| n.addr == from)
            .map(|(&id, _)| id)
        else {
            return true;
        };
        let Role::Subscriber { key, .. } = &self.role else {
            return true;
        };
        let (header, media_at) = match wire::open_chunk(key, self.cfg.stream, seq, &data) {
            Ok(ok) => ok,
            Err(e) => {
                self.stats.forged_chunks += 1;
                tracing::warn!(stream = %self.cfg.name, %peer, %from, seq, "chunk refused ({e:?}): dropping this neighbour");
                self.ban(now_us, peer);
                return false;
            }
        };
        let n = self.neighbours.get_mut(&peer).expect("looked up above");
        n.last_heard_us = now_us;
        n.bytes_in += data.len() as u64;
        let chunk = Chunk {
            seq,
            pts_us: header.pts_us,
            duration_us: header.duration_us,
            keyframe: header.keyframe,
            capture_us: header.capture_us,
            media_at,
            sealed: data,
        };
        let media_len = chunk.media().len() as u64;
        if self
            .playout
            .as_ref()
            .and_then(|p| p.next())
            .is_some_and(|(next, _)| seq < next)
        {
            self.stats.chunks_late += 1;
            n.duplicates += 1;
            return true;
        }
        match self.buffer.insert(chunk) {
            Insert::New => {
                n.useful += 1;
                self.stats.chunks_received += 1;
                self.stats.media_bytes += media_len;
                let r = self.scheduler.on_chunk(
                    now_us,
                    seq,
                    ROption::RSome(peer),
                    &mut self.sched_actions,
                );
                self.after_scheduler("on_chunk", r.into_result(), now_us);
            }
            Insert::Duplicate => {
                n.duplicates += 1;
                self.stats.duplicate_chunks += 1;
            }
            Insert::TooOld => {
                self.stats.chunks_late += 1;
            }
        }
        true
    }

    pub(super) fn play(&mut self, now_us: u64) {
        let (Some(clock), Role::Subscriber { output, .. }) = (&mut self.playout, &mut self.role)
        else {
            return;
        };
        self.played.clear();
        clock.poll(now_us, &self.buffer, &mut self.played);
        let mut error = None;
        for ev in &self.played {
            match *ev {
                PlayEvent::Started { .. } => {
                    self.stats.startup_us = Some(now_us.saturating_sub(self.started_us));
                }
                PlayEvent::Play { seq, .. } => {
                    let chunk = self.buffer.get(seq).expect("played chunks are buffered");
                    self.stats.chunks_played += 1;
                    self.stats
                        .lag_us
                        .push(now_us.saturating_sub(chunk.capture_us));
                    let r = output.push(&ChunkRef {
                        seq,
                        pts_us: chunk.pts_us,
                        duration_us: chunk.duration_us,
                        keyframe: chunk.keyframe,
                        data: chunk.media().into(),
                    });
                    if let Err(e) = r.into_result() {
                        error = Some(format!("output: {e}"));
                        break;
                    }
                }
                PlayEvent::Missed { seq } => {
                    self.stats.chunks_missed += 1;
                    if let Err(e) = output.gap(seq).into_result() {
                        error = Some(format!("output: {e}"));
                        break;
                    }
                }
            }
        }
        if let Some(e) = error {
            self.fail(e);
            return;
        }
        if let Some((next, deadline)) = clock.next() {
            let playout = Playout {
                next_seq: next,
                next_deadline_us: deadline,
                oldest_seq: self.buffer.oldest().unwrap_or(next),
                newest_seq: self.buffer.newest().unwrap_or(next),
            };
            let r = self
                .scheduler
                .on_playout(now_us, playout, &mut self.sched_actions);
            self.after_scheduler("on_playout", r.into_result(), now_us);
        }
    }
}
