//! The play-out clock: when each chunk is due, and what happened to it.
//!
//! Playback starts once a contiguous run of chunks is buffered (from a
//! keyframe when the codec needs one), or when the startup timeout passes
//! with something to start from. From then on chunk `s` is due at
//! `t0 + (pts(s) - pts(s0))`, where a missing chunk's time is extrapolated
//! from the nominal chunk duration. A chunk that is not there at its
//! deadline is missed and skipped: live playback never waits, it only loses
//! continuity, which is the quantity experiments measure.

use super::buffer::ChunkBuffer;

/// How the play-out clock starts and keeps time.
#[derive(Debug, Clone)]
pub struct PlayoutConfig {
    /// The nominal chunk duration, for chunks missing at their deadline.
    pub chunk_us: u64,
    /// Contiguous chunks needed before playback starts.
    pub startup_chunks: u64,
    /// How far behind the newest chunk held playback starts, in chunks: the
    /// time a late chunk has to arrive (a lost request, a retransmission).
    pub lead_chunks: u64,
    /// Start with whatever is there after this long.
    pub startup_timeout_us: u64,
    /// Playback (and resync after a gap) must begin on a keyframe.
    pub need_keyframe: bool,
}

/// What the clock decided at one poll, in play order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayEvent {
    /// Playback began at `seq`.
    Started {
        /// The first chunk played.
        seq: u64,
    },
    /// `seq` is due now and present: hand it to the output.
    Play {
        /// The chunk.
        seq: u64,
        /// When it was due, on the session's clock.
        deadline_us: u64,
    },
    /// `seq` was due and absent.
    Missed {
        /// The chunk.
        seq: u64,
    },
}

#[derive(Debug)]
enum State {
    Waiting {
        since_us: u64,
    },
    Playing {
        /// The next chunk to play and when it is due.
        next: u64,
        deadline_us: u64,
        /// Anchors: chunk `s0` with presentation time `pts0` played at `t0`.
        t0: u64,
        pts0: u64,
    },
}

/// The subscriber's play-out clock: it never waits for a late chunk, so what it counts is continuity.
#[derive(Debug)]
pub struct PlayoutClock {
    cfg: PlayoutConfig,
    state: State,
}

impl PlayoutClock {
    /// A clock that waits for a start point from `now_us` on.
    pub fn new(cfg: PlayoutConfig, now_us: u64) -> Self {
        PlayoutClock {
            cfg,
            state: State::Waiting { since_us: now_us },
        }
    }

    /// Playback has begun (a startup time can be measured).
    pub fn started(&self) -> bool {
        matches!(self.state, State::Playing { .. })
    }

    /// The next chunk due and its deadline, once playing.
    pub fn next(&self) -> Option<(u64, u64)> {
        match self.state {
            State::Playing {
                next, deadline_us, ..
            } => Some((next, deadline_us)),
            State::Waiting { .. } => None,
        }
    }

    /// Advances the clock to `now_us`, appending what became due to `out`.
    pub fn poll(&mut self, now_us: u64, buffer: &ChunkBuffer, out: &mut Vec<PlayEvent>) {
        if let State::Waiting { since_us } = self.state {
            let Some(s0) = self.start_point(now_us.saturating_sub(since_us), buffer) else {
                return;
            };
            let pts0 = buffer.get(s0).map_or(0, |c| c.pts_us);
            self.state = State::Playing {
                next: s0,
                deadline_us: now_us,
                t0: now_us,
                pts0,
            };
            out.push(PlayEvent::Started { seq: s0 });
        }
        let State::Playing {
            next,
            deadline_us,
            t0,
            pts0,
        } = &mut self.state
        else {
            return;
        };
        // Bounded by the chunks that fit in the elapsed time.
        while *deadline_us <= now_us {
            match buffer.get(*next) {
                Some(chunk) => {
                    out.push(PlayEvent::Play {
                        seq: *next,
                        deadline_us: *deadline_us,
                    });
                    let dur = if chunk.duration_us > 0 {
                        chunk.duration_us as u64
                    } else {
                        self.cfg.chunk_us
                    };
                    *deadline_us =
                        (*t0 + (chunk.pts_us + dur).saturating_sub(*pts0)).max(*deadline_us);
                }
                None => {
                    out.push(PlayEvent::Missed { seq: *next });
                    *deadline_us += self.cfg.chunk_us;
                }
            }
            *next += 1;
        }
    }

    /// Where playback can begin, if it can begin now.
    fn start_point(&self, waited_us: u64, buffer: &ChunkBuffer) -> Option<u64> {
        let candidates = buffer
            .from(0)
            .filter(|c| c.keyframe || !self.cfg.need_keyframe)
            .map(|c| c.seq);
        let newest = buffer.newest()?;
        let mut first = None;
        // The newest start point that leaves enough lead: the least lag.
        let mut best = None;
        for s0 in candidates {
            first.get_or_insert(s0);
            if newest.saturating_sub(s0) < self.cfg.lead_chunks {
                break;
            }
            let run = (s0..)
                .take_while(|s| buffer.contains(*s))
                .take(self.cfg.startup_chunks as usize)
                .count() as u64;
            if run >= self.cfg.startup_chunks.max(1) {
                best = Some(s0);
            }
        }
        if best.is_some() {
            return best;
        }
        if waited_us >= self.cfg.startup_timeout_us {
            // Better a picture that repairs at the next keyframe than none.
            return first.or(buffer.oldest());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::buffer::tests::chunk;

    fn cfg() -> PlayoutConfig {
        PlayoutConfig {
            chunk_us: 100_000,
            startup_chunks: 3,
            lead_chunks: 4,
            startup_timeout_us: 2_000_000,
            need_keyframe: true,
        }
    }

    #[test]
    fn starts_on_a_keyframe_with_enough_buffered_then_plays_and_misses_in_order() {
        let mut buf = ChunkBuffer::new(100);
        let mut clock = PlayoutClock::new(cfg(), 0);
        let mut ev = Vec::new();
        // 9 is not a keyframe (every 10th is), 10..12 make a run of 3.
        for s in [9, 10, 11] {
            buf.insert(chunk(s));
        }
        clock.poll(50_000, &buf, &mut ev);
        assert!(ev.is_empty(), "a run of 2 from the keyframe is not enough");
        buf.insert(chunk(12));
        clock.poll(55_000, &buf, &mut ev);
        assert!(ev.is_empty(), "a run of 3 but a lead of 2 is not enough");
        buf.insert(chunk(14));
        clock.poll(60_000, &buf, &mut ev);
        assert_eq!(
            ev,
            vec![
                PlayEvent::Started { seq: 10 },
                PlayEvent::Play {
                    seq: 10,
                    deadline_us: 60_000
                }
            ]
        );
        ev.clear();
        // 13 never arrives; 14 did.
        clock.poll(60_000 + 450_000, &buf, &mut ev);
        assert_eq!(
            ev,
            vec![
                PlayEvent::Play {
                    seq: 11,
                    deadline_us: 160_000
                },
                PlayEvent::Play {
                    seq: 12,
                    deadline_us: 260_000
                },
                PlayEvent::Missed { seq: 13 },
                PlayEvent::Play {
                    seq: 14,
                    deadline_us: 460_000
                },
            ]
        );
    }

    #[test]
    fn starts_with_what_is_there_after_the_timeout() {
        let mut buf = ChunkBuffer::new(100);
        let mut clock = PlayoutClock::new(cfg(), 0);
        let mut ev = Vec::new();
        buf.insert(chunk(20));
        clock.poll(1_999_999, &buf, &mut ev);
        assert!(ev.is_empty());
        clock.poll(2_000_000, &buf, &mut ev);
        assert_eq!(ev[0], PlayEvent::Started { seq: 20 });
    }
}
