//! The scheduler: requests missing chunks earliest deadline first, each from
//! the holder expected to deliver it soonest, and serves requests earliest
//! deadline first. Design choices are in the README.

use std::collections::{BTreeMap, BTreeSet};

use p2ner_plugin_api::prelude::*;

use crate::wire::{self, Msg};

/// A chunk asked of a neighbour and not yet here.
#[derive(Debug, Clone, Copy)]
struct Asked {
    peer: PeerId,
    /// Give up on this holder and ask again after this, µs.
    retry_at_us: u64,
}

/// A request this peer serves: chunk `seq` for a neighbour, due there at
/// `deadline_us` (on this peer's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    deadline_us: u64,
    seq: u64,
}

#[derive(Debug, Default)]
struct Neighbour {
    /// What it said it holds (and what it was sent since), bounded by the
    /// window.
    has: BTreeSet<u64>,
    /// Whether media may come from it / go to it.
    link: Link,
    /// Requests of ours it has not answered, in bytes.
    outstanding_bytes: u64,
    /// Its requests, most urgent first.
    jobs: BTreeSet<Job>,
    /// As this peer measures it (from `on_view`).
    down_bps: u64,
    rtt_us: u64,
    /// Upload it says it has to spare (its advert's capacity less its
    /// rate), bit/s; 0 unknown or none.
    spare_bps: u64,
}

/// Counters reported through `metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Chunks requested (first asks and retries).
    pub requests: u64,
    /// Requests sent again to another (or the same) holder after a timeout.
    pub retries: u64,
    /// Missing chunks no holder could deliver before their deadline (not asked).
    pub hopeless: u64,
    /// Requests of neighbours served.
    pub served: u64,
    /// Requests of neighbours dropped: their deadline passed before there was room.
    pub expired: u64,
    /// Sends the engine refused.
    pub refused: u64,
    /// Messages that did not decode.
    pub malformed: u64,
}

/// The tunables, read from the component's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Chunks ahead of play-out to request.
    pub window: u64,
    /// Most requests outstanding at one neighbour: more would only queue
    /// there, and a busy holder (the publisher, first) is left for the
    /// chunks only it has.
    pub max_outstanding: usize,
    /// Least time between two `Have` messages, µs.
    pub have_every_us: u64,
}

/// The earliest-deadline-first pull scheduler.
pub struct Edf {
    cfg: Config,
    ctx: Option<SchedContext>,
    setup: Setup,
    held: BTreeSet<u64>,
    neighbours: BTreeMap<PeerId, Neighbour>,
    asked: BTreeMap<u64, Asked>,
    playout: PlayoutView,
    /// A chunk arrived since the last `Have`.
    news: bool,
    next_have_us: u64,
    /// What the last `on_capacity` sent, so a refused send goes back into
    /// its queue with its deadline (refusals come right after that event).
    last_sent: Vec<(PeerId, Job)>,
    counters: Counters,
}

impl Edf {
    /// A scheduler with `cfg`, waiting for `on_start`.
    pub fn new(cfg: Config) -> Self {
        Edf {
            cfg,
            ctx: None,
            setup: Setup::default(),
            held: BTreeSet::new(),
            neighbours: BTreeMap::new(),
            asked: BTreeMap::new(),
            playout: PlayoutView::default(),
            news: false,
            next_have_us: 0,
            last_sent: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// What it counted so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn chunk_us(&self) -> u64 {
        self.ctx.as_ref().map_or(100_000, |c| c.chunk_us as u64)
    }

    fn chunk_bytes(&self) -> u64 {
        self.ctx
            .as_ref()
            .map_or(10_000, |c| c.chunk_bytes as u64)
            .max(1)
    }

    fn window_chunks(&self) -> u64 {
        self.ctx.as_ref().map_or(300, |c| c.window_chunks as u64)
    }

    /// When chunk `seq` is due here. Before playback starts the view's
    /// estimate is used: play-out will start near `next_seq` within the
    /// buffer target. (Treating them as due at once instead, as if playback
    /// started now, measured no better in `p2ner_engine::sim`.)
    fn deadline_us(&self, now_us: u64, seq: u64) -> u64 {
        let p = &self.playout;
        let base = if p.playing {
            p.next_deadline_us
        } else {
            now_us + self.setup.buffer_us
        };
        base.saturating_add(seq.saturating_sub(p.next_seq) * self.chunk_us())
    }

    /// Keeps state bounded by the engine's window.
    fn forget_old(&mut self) {
        let Some(&newest) = self.held.last() else {
            return;
        };
        let floor = newest.saturating_sub(self.window_chunks());
        self.held = self.held.split_off(&floor);
        self.asked = self.asked.split_off(&floor);
        for n in self.neighbours.values_mut() {
            n.has = n.has.split_off(&floor);
        }
    }

    /// Expected time until `peer` delivers one more chunk, µs: what it
    /// already owes us plus this chunk at the best rate we can expect from
    /// it, plus a round trip. The rate is the most of what we see from it,
    /// what it advertises to spare, and the stream's own rate: judged only
    /// from what it sent us, a holder rarely asked looks slow and chunks it
    /// could deliver are given up as hopeless.
    fn eta_us(&self, n: &Neighbour) -> u64 {
        let ctx_bps = self.chunk_bytes() * 8 * 1_000_000 / self.chunk_us().max(1);
        let bps = n.down_bps.max(n.spare_bps).max(ctx_bps).max(1);
        (n.outstanding_bytes + self.chunk_bytes()) * 8 * 1_000_000 / bps + n.rtt_us.max(1_000)
    }

    fn request(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        let Some(ctx) = &self.ctx else { return };
        if ctx.is_source {
            return;
        }
        let from = if self.playout.playing {
            self.playout.next_seq
        } else {
            // Before playing, start from the oldest chunk anyone holds
            // within a start lead of the newest.
            let newest = self
                .neighbours
                .values()
                .filter_map(|n| n.has.last())
                .max()
                .copied()
                .unwrap_or(0);
            newest.saturating_sub(self.setup.start_lead_chunks.max(1) as u64)
        };
        let mut wants: BTreeMap<PeerId, Vec<(u64, u32)>> = BTreeMap::new();
        // Earliest deadline first: ascending seq is ascending deadline.
        for seq in from..from + self.cfg.window {
            if self.held.contains(&seq) {
                continue;
            }
            if let Some(a) = self.asked.get(&seq).copied() {
                if now_us < a.retry_at_us {
                    continue;
                }
                self.asked.remove(&seq);
                self.counters.retries += 1;
                let bytes = self.chunk_bytes();
                if let Some(n) = self.neighbours.get_mut(&a.peer) {
                    n.outstanding_bytes = n.outstanding_bytes.saturating_sub(bytes);
                }
            }
            let deadline = self.deadline_us(now_us, seq);
            if deadline <= now_us {
                continue;
            }
            let best = self
                .neighbours
                .iter()
                .filter(|(_, n)| {
                    n.link.upstream
                        && n.has.contains(&seq)
                        && n.outstanding_bytes / self.chunk_bytes()
                            < self.cfg.max_outstanding as u64
                })
                .map(|(&p, n)| (self.eta_us(n), p))
                .min();
            let Some((eta, peer)) = best else { continue };
            if now_us + eta > deadline {
                self.counters.hopeless += 1;
                continue;
            }
            let slack_ms = ((deadline - now_us) / 1000).min(u32::MAX as u64) as u32;
            wants.entry(peer).or_default().push((seq, slack_ms));
            let bytes = self.chunk_bytes();
            let n = self
                .neighbours
                .get_mut(&peer)
                .expect("chosen from neighbours");
            n.outstanding_bytes += bytes;
            // Retry once the expected delivery is overdue by a round trip.
            let retry_at_us = now_us + eta + n.rtt_us.max(10_000) + 2 * self.setup.tick_us;
            self.asked.insert(seq, Asked { peer, retry_at_us });
            self.counters.requests += 1;
        }
        for (peer, list) in wants {
            for part in list.chunks(wire::MAX_WANTS) {
                out.send_message(peer, wire::want(part), false);
            }
        }
    }

    fn announce(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        if !self.news || now_us < self.next_have_us {
            return;
        }
        let Some(&newest) = self.held.last() else {
            return;
        };
        self.news = false;
        self.next_have_us = now_us + self.cfg.have_every_us;
        let msg = wire::have(&self.held, newest);
        for (&peer, n) in &self.neighbours {
            if n.link.downstream {
                out.send_message(peer, msg.clone(), false);
            }
        }
    }
}

impl Scheduler for Edf {
    fn on_start(&mut self, _now_us: u64, ctx: &SchedContext, _out: &mut SchedOut<'_>) {
        self.ctx = Some(ctx.clone());
    }

    fn on_setup(&mut self, _now_us: u64, setup: &Setup, _out: &mut SchedOut<'_>) {
        self.setup = *setup;
    }

    fn on_neighbour_up(&mut self, _now_us: u64, peer: PeerId, link: Link, out: &mut SchedOut<'_>) {
        self.neighbours.insert(
            peer,
            Neighbour {
                link,
                ..Neighbour::default()
            },
        );
        // Tell it at once what is here.
        if let (true, Some(&newest)) = (link.downstream, self.held.last()) {
            out.send_message(peer, wire::have(&self.held, newest), false);
        }
    }

    fn on_neighbour_down(&mut self, _now_us: u64, peer: PeerId, _out: &mut SchedOut<'_>) {
        self.neighbours.remove(&peer);
        // What it owed us is asked again elsewhere at the next tick.
        self.asked.retain(|_, a| a.peer != peer);
    }

    fn on_chunk(&mut self, _now_us: u64, seq: u64, from: Option<PeerId>, _out: &mut SchedOut<'_>) {
        self.held.insert(seq);
        self.news = true;
        if let Some(a) = self.asked.remove(&seq) {
            let bytes = self.chunk_bytes();
            if let Some(n) = self.neighbours.get_mut(&a.peer) {
                n.outstanding_bytes = n.outstanding_bytes.saturating_sub(bytes);
            }
        }
        if let Some(n) = from.and_then(|p| self.neighbours.get_mut(&p)) {
            n.has.insert(seq);
        }
        self.forget_old();
    }

    fn on_message(&mut self, now_us: u64, peer: PeerId, payload: &[u8], _out: &mut SchedOut<'_>) {
        let Some(msg) = wire::decode(payload) else {
            self.counters.malformed += 1;
            return;
        };
        let floor = self
            .held
            .last()
            .map_or(0, |n| n.saturating_sub(self.window_chunks()));
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        match msg {
            Msg::Have(seqs) => n.has.extend(seqs.into_iter().filter(|&s| s >= floor)),
            Msg::Want(wants) => {
                for (seq, slack_ms) in wants {
                    n.jobs.insert(Job {
                        deadline_us: now_us + slack_ms as u64 * 1000,
                        seq,
                    });
                }
                // Bounded: a neighbour asking for more than the window gets
                // its least urgent requests dropped.
                while n.jobs.len() as u64 > self.cfg.window * 2 {
                    n.jobs.pop_last();
                }
            }
        }
    }

    fn on_view(&mut self, _now_us: u64, view: &View, _out: &mut SchedOut<'_>) {
        self.playout = view.playout;
        for l in view.links.iter() {
            if let Some(n) = self.neighbours.get_mut(&l.peer) {
                n.down_bps = l.down_bps;
                n.rtt_us = l.rtt_us;
                n.spare_bps = l.advert.capacity_bps.saturating_sub(l.advert.rate_bps);
            }
        }
    }

    /// Serves this neighbour's requests, most urgent first, while its link
    /// has room; requests already past their deadline are dropped.
    fn on_capacity(&mut self, now_us: u64, peer: PeerId, cap: Capacity, out: &mut SchedOut<'_>) {
        let chunk_bytes = self.chunk_bytes();
        self.last_sent.clear();
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        let mut room = cap.can_send_bytes;
        while room > 0 {
            let Some(job) = n.jobs.pop_first() else { break };
            if job.deadline_us <= now_us {
                self.counters.expired += 1;
                continue;
            }
            if !self.held.contains(&job.seq) {
                continue;
            }
            out.send_chunk(peer, job.seq);
            self.last_sent.push((peer, job));
            self.counters.served += 1;
            room = room.saturating_sub(chunk_bytes);
        }
    }

    fn on_refused(&mut self, _now_us: u64, refusal: Refusal, _out: &mut SchedOut<'_>) {
        self.counters.refused += 1;
        if refusal.kind == RefusalKind::CHUNK_NO_ROOM {
            // Not lost: back in the queue for the next capacity.
            let job = self
                .last_sent
                .iter()
                .find(|(p, j)| *p == refusal.peer && j.seq == refusal.seq)
                .map(|&(_, j)| j);
            if let (Some(job), Some(n)) = (job, self.neighbours.get_mut(&refusal.peer)) {
                n.jobs.insert(job);
                self.counters.served -= 1;
            }
        }
    }

    fn on_tick(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        self.request(now_us, out);
        self.announce(now_us, out);
    }

    fn metrics(&mut self, m: &mut Metrics<'_>) {
        let c = self.counters;
        m.counter("requests", c.requests);
        m.counter("retries", c.retries);
        m.counter("hopeless", c.hopeless);
        m.counter("served", c.served);
        m.counter("expired", c.expired);
        m.counter("refused", c.refused);
        m.counter("malformed", c.malformed);
        m.gauge("outstanding", self.asked.len() as f64);
    }
}
