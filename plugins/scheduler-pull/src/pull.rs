//! The `pull` state machine. See the crate docs for the why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::{Capacity, Metrics, Playout, Refusal, RefusalKind, Upload};

use crate::wire::{self, Advert, Message, MAX_SEQS};

/// Parameters, each written once: `register` declares this table and
/// [`Pull::new`] reads from it.
pub const PARAMS: &[ParamDef] = &[
    MAX_REQUESTS,
    REQUEST_TIMEOUT_MS,
    MAX_WAIT_MS,
    URGENT_MS,
    LOOKBACK_CHUNKS,
    MAP_MS,
    SOURCE_PUSH,
    SOURCE_ANNOUNCE_MS,
    HAVE_MS,
    HAVE_SHARE_PERCENT,
];

const HAVE_MS: ParamDef = ParamDef::new(
    "have_ms",
    "200",
    "announce new chunks at least this often (0: every tick); fewer, larger announcements cost less upload",
);
const HAVE_SHARE_PERCENT: ParamDef = ParamDef::new(
    "have_share_percent",
    "5",
    "under a cap, announce as often as keeps announcements near this share of the upload, up to have_ms apart (0: always have_ms; uncapped: every tick)",
);
/// What one announcement costs on the uplink, bits: a small payload in an
/// envelope and a datagram (the cap counts UDP payload).
const HAVE_COST_BITS: u64 = 50 * 8;

const MAX_REQUESTS: ParamDef = ParamDef::new(
    "max_requests",
    "8",
    "requests outstanding to one neighbour at most",
);
const REQUEST_TIMEOUT_MS: ParamDef = ParamDef::new(
    "request_timeout_ms",
    "600",
    "re-request a chunk not received within this time",
);
const MAX_WAIT_MS: ParamDef = ParamDef::new(
    "max_wait_ms",
    "300",
    "refuse a request that would wait longer than this in the upload queue (under an upload cap)",
);
const URGENT_MS: ParamDef = ParamDef::new(
    "urgent_ms",
    "300",
    "chunks due within this time are requested before rarer ones",
);
const LOOKBACK_CHUNKS: ParamDef = ParamDef::new(
    "lookback_chunks",
    "20",
    "before playback starts, how far behind the newest chunk to begin (the start lead plus a keyframe interval is enough)",
);
const MAP_MS: ParamDef = ParamDef::new("map_ms", "3000", "interval between full buffer maps");
const SOURCE_PUSH: ParamDef = ParamDef::new(
    "source_push",
    "1",
    "publisher: copies of each new chunk pushed unasked, to the neighbours best able to forward them",
);
const SOURCE_ANNOUNCE_MS: ParamDef = ParamDef::new(
    "source_announce_ms",
    "300",
    "publisher: announce a chunk to all only after this long (0: at once, and no pushes)",
);

/// A neighbour that advertised no capacity is assumed to upload this many
/// times the stream's rate (the first version's peers, plugins elsewhere).
const UNKNOWN_UPLOAD_FACTOR: u64 = 1;
/// A neighbour that refused a request is not asked again for this long.
const REFUSED_BACKOFF_US: u64 = 150_000;
/// A chunk not pushed by then is no longer fresh: peers pull it instead.
const FRESH_FOR_US: u64 = 1_000_000;

/// The `pull` scheduler: neighbours advertise what they hold and each peer requests what it misses (see the crate docs).
pub struct Pull {
    max_requests: usize,
    request_timeout_us: u64,
    max_wait_us: u64,
    urgent_us: u64,
    lookback: u64,
    map_every_us: u64,
    source_push: u32,
    source_delay_us: u64,
    have_every_us: u64,
    have_share_percent: u64,
    next_have_us: u64,
    rng: Rng,
    ctx: Option<SchedContext>,
    have: BTreeSet<u64>,
    /// New chunks to announce, with the neighbour they came from (it has it).
    announce: Vec<(u64, Option<PeerId>)>,
    neighbours: BTreeMap<PeerId, Neighbour>,
    /// My requests in flight: seq -> (to whom, when to give up on it).
    requested: BTreeMap<u64, (PeerId, u64)>,
    playout: Option<Playout>,
    newest_known: Option<u64>,
    /// Requests accepted from neighbours, oldest first: (peer, seq, expires).
    jobs: VecDeque<Job>,
    /// The uplink as the engine last reported it; `None`: plentiful.
    upload: Option<Upload>,
    /// Bytes the shared uplink still takes this tick.
    budget: u64,
    // The publisher's side.
    /// Chunks not pushed yet, with when they were made.
    fresh: VecDeque<(u64, u64, u32)>,
    /// Chunks not announced yet, with when they were made.
    held: VecDeque<(u64, u64)>,
    /// Weighted round robin over forwarders: credit per neighbour.
    credit: BTreeMap<PeerId, i64>,
    counters: Counters,
}

/// What this peer did, exported through `metrics()`: near the fluid bound
/// control messages compete with media for the uplink, so they are counted
/// by kind, and requests by what became of them.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    sent_have: u64,
    sent_map: u64,
    sent_request: u64,
    sent_refuse: u64,
    received_messages: u64,
    malformed: u64,
    /// Seqs asked for (a seq asked again after a refusal counts again).
    seqs_requested: u64,
    /// Seqs this peer, as a holder, refused (at once or when they expired).
    seqs_refused: u64,
    /// Seqs neighbours refused us.
    refused_to_us: u64,
    /// Requests of ours that timed out unanswered.
    timed_out: u64,
    /// Chunks sent on request.
    served: u64,
    /// Chunks the publisher pushed unasked.
    pushed: u64,
    /// Sends the engine refused (`on_refused`).
    engine_refused: u64,
}

/// A request accepted from a neighbour.
#[derive(Debug, Clone, Copy)]
struct Job {
    peer: PeerId,
    seq: u64,
    /// Dropped if not sent by then: the requester gives up soon after.
    expires_us: u64,
}

struct Neighbour {
    link: Link,
    have: BTreeSet<u64>,
    outstanding: usize,
    /// Bytes the data channel towards it takes now; `None` until the engine says.
    budget: Option<u64>,
    advert: Option<Advert>,
    /// When its advert came: the queue it told of drains from then on.
    advert_us: u64,
    /// It refused us: do not ask it before this.
    busy_until_us: u64,
    next_map_us: u64,
}

impl Pull {
    /// A scheduler from its parameters.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let pull = Pull {
            max_requests: MAX_REQUESTS.parse(params)?,
            request_timeout_us: REQUEST_TIMEOUT_MS.parse::<u64>(params)? * 1000,
            max_wait_us: MAX_WAIT_MS.parse::<u64>(params)? * 1000,
            urgent_us: URGENT_MS.parse::<u64>(params)? * 1000,
            lookback: LOOKBACK_CHUNKS.parse(params)?,
            map_every_us: MAP_MS.parse::<u64>(params)? * 1000,
            source_push: SOURCE_PUSH.parse(params)?,
            source_delay_us: SOURCE_ANNOUNCE_MS.parse::<u64>(params)? * 1000,
            have_every_us: HAVE_MS.parse::<u64>(params)? * 1000,
            have_share_percent: HAVE_SHARE_PERCENT.parse(params)?,
            next_have_us: 0,
            rng: Rng::new(0),
            ctx: None,
            have: BTreeSet::new(),
            announce: Vec::new(),
            neighbours: BTreeMap::new(),
            requested: BTreeMap::new(),
            playout: None,
            newest_known: None,
            jobs: VecDeque::new(),
            upload: None,
            budget: u64::MAX,
            fresh: VecDeque::new(),
            held: VecDeque::new(),
            credit: BTreeMap::new(),
            counters: Counters::default(),
        };
        if pull.max_requests == 0 || pull.request_timeout_us == 0 || pull.map_every_us == 0 {
            return Err(PluginError::new(
                "max_requests, request_timeout_ms and map_ms must be positive",
            ));
        }
        Ok(pull)
    }

    fn chunk_bytes(&self) -> u64 {
        self.ctx.as_ref().map_or(1, |c| c.chunk_bytes.max(1) as u64)
    }

    fn chunk_us(&self) -> u64 {
        self.ctx
            .as_ref()
            .map_or(100_000, |c| c.chunk_us.max(1) as u64)
    }

    fn window(&self) -> u64 {
        self.ctx
            .as_ref()
            .map_or(300, |c| c.window_chunks.max(1) as u64)
    }

    fn is_source(&self) -> bool {
        self.ctx.as_ref().is_some_and(|c| c.is_source)
    }

    /// The stream's rate in bit/s, from the chunk size.
    fn stream_bps(&self) -> u64 {
        self.chunk_bytes() * 8 * 1_000_000 / self.chunk_us()
    }

    /// How long a chunk handed to the uplink now waits before it leaves:
    /// what the data channel holds plus what this scheduler has promised.
    fn wait_us(&self) -> u64 {
        let Some(u) = self.upload.filter(|u| u.capped && u.capacity_bps > 0) else {
            return 0;
        };
        let promised = (self.jobs.len() + self.fresh.len()) as u64 * self.chunk_bytes();
        u.queued_us + promised * 8 * 1_000_000 / u.capacity_bps
    }

    /// How long announcements wait to be batched. Each batch costs a
    /// datagram per downstream neighbour, which near the bound is upload
    /// the swarm lacks; but each wait delays every hop a chunk takes. So
    /// under a cap they wait long enough to cost about `have_share_percent`
    /// of the upload (a tree's few children: about a tick; a mesh peer's
    /// dozen neighbours on a thin uplink: up to `have_ms`), and uncapped
    /// not at all.
    fn have_interval_us(&self) -> u64 {
        let Some(u) = self.upload.filter(|u| u.capped && u.capacity_bps > 0) else {
            return 0;
        };
        if self.have_share_percent == 0 {
            return self.have_every_us;
        }
        let downstream = self
            .neighbours
            .values()
            .filter(|n| n.link.downstream)
            .count() as u64;
        let affordable_bps = (u.capacity_bps * self.have_share_percent / 100).max(1);
        (downstream * HAVE_COST_BITS * 1_000_000 / affordable_bps).min(self.have_every_us)
    }

    fn advert(&self) -> Advert {
        let upload_kbps = match self.upload {
            Some(u) if u.capped => (u.capacity_bps / 1000).min(u32::MAX as u64 - 1) as u32,
            _ => u32::MAX,
        };
        Advert {
            upload_kbps,
            queued_ms: (self.wait_us() / 1000).min(u16::MAX as u64) as u16,
        }
    }

    /// What a neighbour can upload, bit/s, as far as we know.
    fn upload_of(&self, n: &Neighbour) -> u64 {
        match n.advert {
            Some(a) if a.upload_kbps == u32::MAX => 100 * self.stream_bps(),
            Some(a) => a.upload_kbps as u64 * 1000,
            None => UNKNOWN_UPLOAD_FACTOR * self.stream_bps(),
        }
    }

    /// Requests worth keeping outstanding at one neighbour: what it can send
    /// in about one request timeout, within `max_requests`.
    fn max_outstanding(&self, n: &Neighbour) -> usize {
        let chunk_bits = self.chunk_bytes() * 8;
        let in_time = self.upload_of(n) * (self.max_wait_us.max(100_000) / 1000) / 1000;
        ((in_time / chunk_bits.max(1)) as usize).clamp(1, self.max_requests)
    }

    /// How far beyond the newest chunk held a neighbour's claim is
    /// believed: a quarter window, so that the window (and the work per
    /// tick) cannot be moved past what is held by a forged HAVE, and chunks
    /// still missing behind the newest held stay in the window.
    fn reach(&self) -> Option<u64> {
        // Anchored on chunks held (verified by the engine) before claims,
        // so that forged claims cannot build on each other.
        self.have
            .last()
            .copied()
            .or(self.newest_known)
            .map(|n| n.saturating_add((self.window() / 4).max(1)))
    }

    fn learn_newest(&mut self, seq: u64) {
        let reach = self.reach().unwrap_or(seq);
        let seq = seq.min(reach);
        self.newest_known = Some(self.newest_known.map_or(seq, |n| n.max(seq)));
    }

    /// The oldest chunk still worth requesting.
    fn window_start(&self) -> u64 {
        let newest = self.newest_known.unwrap_or(0);
        let by_window = (newest + 1).saturating_sub(self.window());
        match self.playout {
            Some(p) => p.next_seq.max(by_window),
            None => newest.saturating_sub(self.lookback).max(by_window),
        }
    }

    /// Drops what is older than the window, here and in what neighbours
    /// are known to hold: state stays bounded on a publisher that never
    /// plays as on a subscriber that does.
    fn prune(&mut self) {
        let newest = self.newest_known.unwrap_or(0);
        let by_window = (newest + 1).saturating_sub(self.window());
        let keep_from = match self.playout {
            Some(p) => p.oldest_seq.max(by_window),
            None => by_window,
        };
        self.have = self.have.split_off(&keep_from);
        for n in self.neighbours.values_mut() {
            n.have = n.have.split_off(&keep_from);
        }
        // Requests for chunks that are past playback are given up.
        let start = self.window_start();
        let live = self.requested.split_off(&start);
        for (peer, _) in std::mem::replace(&mut self.requested, live).into_values() {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.outstanding = n.outstanding.saturating_sub(1);
            }
        }
    }

    fn map_message(&self) -> Vec<u8> {
        let base = self.have.first().copied().unwrap_or(0);
        let last = match self.held.front() {
            Some(&(first_held, _)) => first_held.saturating_sub(1),
            None => self.have.last().copied().unwrap_or(0),
        };
        let bits = (last.saturating_sub(base) + 1) as usize;
        wire::map(self.advert(), &self.have, base, bits)
    }

    fn forget_request(&mut self, seq: u64) {
        if let Some((peer, _)) = self.requested.remove(&seq) {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.outstanding = n.outstanding.saturating_sub(1);
            }
        }
    }

    fn request_missing(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        let Some(newest) = self.newest_known else {
            return;
        };
        let expired: Vec<u64> = self
            .requested
            .iter()
            .filter(|(_, &(_, give_up))| now_us > give_up)
            .map(|(&seq, _)| seq)
            .collect();
        self.counters.timed_out += expired.len() as u64;
        for seq in expired {
            self.forget_request(seq);
        }
        let start = self.window_start();
        let end = newest.min(start.saturating_add(self.window()));
        let chunk_us = self.chunk_us();
        let playout = self.playout;
        let deadline_of = move |seq: u64| {
            playout.map(|p| p.next_deadline_us + seq.saturating_sub(p.next_seq) * chunk_us)
        };
        // (not urgent, then rarest (or seq when urgent), random tie-break, seq)
        let mut order: Vec<(bool, u64, u64, u64)> = Vec::new();
        for seq in start..=end {
            if self.have.contains(&seq) || self.requested.contains_key(&seq) {
                continue;
            }
            let count = self
                .neighbours
                .values()
                .filter(|n| n.link.upstream && n.have.contains(&seq))
                .count() as u64;
            if count == 0 {
                continue;
            }
            // Before playback starts everything is urgent, in order: the
            // player needs a contiguous run from a keyframe, not rare chunks.
            let urgent = deadline_of(seq).is_none_or(|d| d <= now_us + self.urgent_us);
            order.push((
                !urgent,
                if urgent { seq } else { count },
                self.rng.next_u64(),
                seq,
            ));
        }
        if order.is_empty() {
            return;
        }
        order.sort_unstable();
        let chunk_bits = self.chunk_bytes() * 8;
        // What a holder accepts, plus one chunk at the stream's rate: its
        // advert is a little old, and its queue may have moved.
        let ask_within = self.max_wait_us + chunk_bits * 1_000_000 / self.stream_bps().max(1);
        let mut batches: BTreeMap<PeerId, (u16, Vec<u64>)> = BTreeMap::new();
        for (_, _, _, seq) in order {
            // The holder that would deliver soonest: its advertised queue,
            // plus what we already asked of it, at its advertised rate.
            let best = self
                .neighbours
                .iter()
                .filter(|(_, n)| {
                    n.link.upstream
                        && n.have.contains(&seq)
                        && n.busy_until_us <= now_us
                        && n.outstanding < self.max_outstanding(n)
                })
                .map(|(&id, n)| {
                    let rate = self.upload_of(n).max(1);
                    let told = n.advert.map_or(0, |a| a.queued_ms as u64 * 1000);
                    let queued = told.saturating_sub(now_us.saturating_sub(n.advert_us));
                    let eta = queued + (n.outstanding as u64 + 1) * chunk_bits * 1_000_000 / rate;
                    (eta, id)
                })
                // A holder that would refuse is not asked: a refusal costs
                // two messages of scarce upload and delivers nothing.
                .filter(|&(eta, _)| eta <= ask_within)
                .collect::<Vec<_>>();
            // Jittered, so that requesters who all see the same adverts do
            // not all pick the same holder.
            let best = best
                .iter()
                .map(|&(eta, id)| (eta + eta * self.rng.below(1024) / 1024, id))
                .min();
            let Some((_, peer)) = best else { continue };
            let n = self.neighbours.get_mut(&peer).expect("holder");
            n.outstanding += 1;
            // The holder serves it within max_wait_ms or drops it; waiting
            // that long plus its transfer and a round trip never duplicates.
            let transfer = chunk_bits * 1_000_000 / self.upload_of(&self.neighbours[&peer]).max(1);
            let give_up = now_us
                + self
                    .request_timeout_us
                    .max(self.max_wait_us + 2 * transfer + 100_000);
            self.requested.insert(seq, (peer, give_up));
            let slack = deadline_of(seq).map_or(u16::MAX, |d| {
                (d.saturating_sub(now_us) / 1000).min(u16::MAX as u64 - 1) as u16
            });
            let batch = batches.entry(peer).or_insert((u16::MAX, Vec::new()));
            batch.0 = batch.0.min(slack);
            batch.1.push(seq);
        }
        for (peer, (slack, seqs)) in batches {
            for part in seqs.chunks(MAX_SEQS) {
                self.counters.sent_request += 1;
                self.counters.seqs_requested += part.len() as u64;
                out.send_message(peer, wire::request(slack, part), false);
            }
        }
    }

    /// Requests from `peer`: accepted when they can be served in time,
    /// refused at once otherwise, so the requester asks elsewhere instead of
    /// waiting and asking twice.
    fn on_request(
        &mut self,
        now_us: u64,
        peer: PeerId,
        slack_ms: u16,
        seqs: Vec<u64>,
        out: &mut SchedOut<'_>,
    ) {
        if !self
            .neighbours
            .get(&peer)
            .is_some_and(|n| n.link.downstream)
        {
            return;
        }
        // The slack is the most urgent (lowest) seq's; each later one is due
        // a chunk later on the requester's play-out clock.
        let first = seqs.iter().copied().min().unwrap_or(0);
        let chunk_us = self.chunk_us();
        // A requester that is not playing yet (no deadline) is served like
        // any other: serving joiners from spare upload only was tried, and
        // near the bound there is none, so a flash crowd waited for the
        // startup timeout and then played seconds behind.
        let slack = |seq: u64| match slack_ms {
            u16::MAX => self.max_wait_us,
            ms => ms as u64 * 1000 + (seq - first).saturating_mul(chunk_us),
        };
        let mut refused = Vec::new();
        for seq in seqs {
            let queued_already = self.jobs.iter().any(|j| j.peer == peer && j.seq == seq);
            if queued_already {
                continue;
            }
            // First come, first served: serving the most urgent first was
            // tried, and starves accepted requests past their expiry.
            if !self.have.contains(&seq) || self.wait_us() > self.max_wait_us.min(slack(seq)) {
                refused.push(seq);
                continue;
            }
            self.jobs.push_back(Job {
                peer,
                seq,
                expires_us: now_us + self.max_wait_us,
            });
        }
        if !refused.is_empty() {
            self.counters.sent_refuse += 1;
            self.counters.seqs_refused += refused.len() as u64;
            out.send_message(peer, wire::refuse(&refused), false);
        }
        self.serve(now_us, out);
    }

    /// Sends what the uplink takes now: the publisher's fresh chunks first,
    /// then accepted requests, oldest first.
    fn serve(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        let chunk_bytes = self.chunk_bytes();
        self.push_fresh(now_us, out);
        let mut kept = VecDeque::with_capacity(self.jobs.len());
        let mut dropped: BTreeMap<PeerId, Vec<u64>> = BTreeMap::new();
        while let Some(job) = self.jobs.pop_front() {
            let (peer, seq) = (job.peer, job.seq);
            if now_us > job.expires_us || !self.have.contains(&seq) {
                // Said at once, so that the requester asks elsewhere now
                // instead of waiting out its timeout for nothing.
                dropped.entry(peer).or_default().push(seq);
                continue;
            }
            let Some(n) = self.neighbours.get_mut(&peer) else {
                continue;
            };
            let link_room = n.budget.is_none_or(|b| b > 0);
            if self.budget == 0 {
                kept.push_back(job);
                kept.extend(self.jobs.drain(..));
                break;
            }
            if !link_room {
                kept.push_back(job);
                continue;
            }
            if let Some(b) = &mut n.budget {
                *b = b.saturating_sub(chunk_bytes);
            }
            n.have.insert(seq);
            self.budget = self.budget.saturating_sub(chunk_bytes);
            self.counters.served += 1;
            out.send_chunk(peer, seq);
        }
        self.jobs = kept;
        for (peer, seqs) in dropped {
            if self.neighbours.contains_key(&peer) {
                for part in seqs.chunks(MAX_SEQS) {
                    self.counters.sent_refuse += 1;
                    self.counters.seqs_refused += part.len() as u64;
                    out.send_message(peer, wire::refuse(part), false);
                }
            }
        }
    }

    /// The publisher's copies of new chunks, each to the neighbour next in
    /// a round robin weighted by what neighbours can upload: the first copy
    /// goes to peers that can forward it, in proportion to how much.
    fn push_fresh(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        let chunk_bytes = self.chunk_bytes();
        while let Some(&(seq, made, copies_left)) = self.fresh.front() {
            if now_us > made + FRESH_FOR_US || !self.have.contains(&seq) || copies_left == 0 {
                self.fresh.pop_front();
                continue;
            }
            if self.budget == 0 {
                return;
            }
            let candidates: Vec<(PeerId, u64)> = self
                .neighbours
                .iter()
                .filter(|(_, n)| {
                    n.link.downstream && !n.have.contains(&seq) && n.budget.is_none_or(|b| b > 0)
                })
                .map(|(&id, n)| (id, self.upload_of(n)))
                .collect();
            if candidates.is_empty() {
                return;
            }
            let total: u64 = candidates.iter().map(|c| c.1).sum::<u64>().max(1);
            for &(id, w) in &candidates {
                *self.credit.entry(id).or_insert(0) += (w * 1024 / total) as i64;
            }
            let (peer, _) = candidates
                .iter()
                .map(|&(id, _)| (id, self.credit[&id]))
                .max_by_key(|&(id, c)| (c, std::cmp::Reverse(id)))
                .expect("candidates");
            *self.credit.get_mut(&peer).expect("credited") -= 1024;
            let n = self.neighbours.get_mut(&peer).expect("candidate");
            if let Some(b) = &mut n.budget {
                *b = b.saturating_sub(chunk_bytes);
            }
            // It holds it now as far as anyone asking us is concerned.
            n.have.insert(seq);
            self.budget = self.budget.saturating_sub(chunk_bytes);
            self.counters.pushed += 1;
            out.send_chunk(peer, seq);
            self.fresh.front_mut().expect("front").2 -= 1;
        }
    }
}

impl Scheduler for Pull {
    fn on_start(&mut self, _now_us: u64, ctx: &SchedContext, _out: &mut SchedOut<'_>) {
        self.rng = Rng::new(ctx.seed);
        self.ctx = Some(ctx.clone());
    }

    fn on_neighbour_up(&mut self, now_us: u64, peer: PeerId, link: Link, out: &mut SchedOut<'_>) {
        self.neighbours.insert(
            peer,
            Neighbour {
                link,
                have: BTreeSet::new(),
                outstanding: 0,
                budget: None,
                advert: None,
                advert_us: 0,
                busy_until_us: 0,
                next_map_us: now_us + self.map_every_us,
            },
        );
        if link.downstream && !self.have.is_empty() {
            self.counters.sent_map += 1;
            out.send_message(peer, self.map_message(), false);
        }
    }

    fn on_neighbour_down(&mut self, _now_us: u64, peer: PeerId, _out: &mut SchedOut<'_>) {
        self.neighbours.remove(&peer);
        self.credit.remove(&peer);
        self.jobs.retain(|j| j.peer != peer);
        // What was asked of it is asked again elsewhere at the next tick.
        self.requested.retain(|_, (p, _)| *p != peer);
    }

    fn on_chunk(&mut self, now_us: u64, seq: u64, from: Option<PeerId>, out: &mut SchedOut<'_>) {
        let fresh = self.have.insert(seq);
        // A verified chunk re-anchors what is believed: a position claimed
        // before any chunk arrived (a joiner's first, possibly forged, HAVE)
        // that no chunk backs is dropped.
        if self
            .newest_known
            .is_some_and(|n| n > seq.saturating_add(self.window()))
        {
            self.newest_known = Some(seq);
        }
        self.learn_newest(seq);
        self.forget_request(seq);
        if let Some(n) = from.and_then(|p| self.neighbours.get_mut(&p)) {
            n.have.insert(seq);
        }
        if from.is_none() && self.is_source() && self.source_delay_us > 0 && self.source_push > 0 {
            self.fresh.push_back((seq, now_us, self.source_push));
            self.held.push_back((seq, now_us));
            self.serve(now_us, out);
        } else if fresh {
            self.announce.push((seq, from));
        }
    }

    fn on_message(&mut self, now_us: u64, peer: PeerId, payload: &[u8], out: &mut SchedOut<'_>) {
        self.counters.received_messages += 1;
        let Some(message) = wire::decode(payload) else {
            self.counters.malformed += 1;
            return;
        };
        if !self.neighbours.contains_key(&peer) {
            return;
        }
        match message {
            Message::Have(advert, seqs) | Message::Map(advert, seqs) => {
                // Claims far beyond what is held are not recorded.
                let reach = self.reach().unwrap_or(u64::MAX);
                if let Some(&max) = seqs.iter().max() {
                    self.learn_newest(max);
                }
                let n = self.neighbours.get_mut(&peer).expect("checked");
                if advert.is_some() {
                    n.advert = advert;
                    n.advert_us = now_us;
                }
                n.have.extend(seqs.into_iter().filter(|&s| s <= reach));
            }
            Message::Request { slack_ms, seqs } => {
                self.on_request(now_us, peer, slack_ms, seqs, out)
            }
            Message::Refuse(seqs) => {
                let n = self.neighbours.get_mut(&peer).expect("checked");
                n.busy_until_us = now_us + REFUSED_BACKOFF_US;
                self.counters.refused_to_us += seqs.len() as u64;
                for seq in seqs {
                    if self.requested.get(&seq).is_some_and(|r| r.0 == peer) {
                        self.forget_request(seq);
                    }
                }
            }
        }
    }

    fn on_refused(&mut self, _now_us: u64, refusal: Refusal, out: &mut SchedOut<'_>) {
        self.counters.engine_refused += 1;
        let Some(n) = self.neighbours.get_mut(&refusal.peer) else {
            return;
        };
        // Not sent, so it may still lack it.
        n.have.remove(&refusal.seq);
        // A request the engine would not send is refused at once, so the
        // requester asks elsewhere instead of waiting out its timeout. (This
        // scheduler keeps within the budget it is told, so it is rare.)
        if refusal.kind == RefusalKind::CHUNK_NO_ROOM && !self.is_source() {
            self.counters.sent_refuse += 1;
            self.counters.seqs_refused += 1;
            out.send_message(refusal.peer, wire::refuse(&[refusal.seq]), false);
        }
    }

    fn metrics(&mut self, m: &mut Metrics<'_>) {
        let c = self.counters;
        m.counter("sent_have", c.sent_have);
        m.counter("sent_map", c.sent_map);
        m.counter("sent_request", c.sent_request);
        m.counter("sent_refuse", c.sent_refuse);
        m.counter(
            "sent_messages",
            c.sent_have + c.sent_map + c.sent_request + c.sent_refuse,
        );
        m.counter("received_messages", c.received_messages);
        m.counter("malformed", c.malformed);
        m.counter("seqs_requested", c.seqs_requested);
        m.counter("seqs_refused", c.seqs_refused);
        m.counter("refused_to_us", c.refused_to_us);
        m.counter("timed_out", c.timed_out);
        m.counter("served", c.served);
        m.counter("pushed", c.pushed);
        m.counter("engine_refused", c.engine_refused);
        m.gauge("outstanding", self.requested.len() as f64);
        m.gauge("jobs", self.jobs.len() as f64);
    }

    fn on_upload(&mut self, _now_us: u64, upload: Upload, _out: &mut SchedOut<'_>) {
        self.budget = upload.budget_bytes;
        self.upload = Some(upload);
    }

    fn on_capacity(
        &mut self,
        now_us: u64,
        peer: PeerId,
        capacity: Capacity,
        out: &mut SchedOut<'_>,
    ) {
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.budget = Some(capacity.can_send_bytes);
        }
        self.serve(now_us, out);
    }

    fn on_playout(&mut self, _now_us: u64, playout: Playout, _out: &mut SchedOut<'_>) {
        self.playout = Some(playout);
        self.learn_newest(playout.newest_seq);
    }

    fn on_tick(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        while let Some(&(seq, at)) = self.held.front() {
            if now_us < at + self.source_delay_us {
                break;
            }
            self.held.pop_front();
            self.announce.push((seq, None));
        }
        self.prune();
        if now_us < self.next_have_us {
            self.request_missing_unless_source(now_us, out);
            self.serve(now_us, out);
            return;
        }
        self.next_have_us = now_us + self.have_interval_us();
        let announce = std::mem::take(&mut self.announce);
        let advert = self.advert();
        let full_map = self.map_message();
        for (&peer, n) in self.neighbours.iter_mut() {
            if !n.link.downstream {
                continue;
            }
            if now_us >= n.next_map_us {
                n.next_map_us = now_us + self.map_every_us;
                self.counters.sent_map += 1;
                out.send_message(peer, full_map.clone(), false);
                continue;
            }
            // Announcements are most of this protocol's bytes: none to a
            // neighbour known to hold the chunk (it gave it, announced it,
            // or was sent it).
            let news: Vec<u64> = announce
                .iter()
                .filter(|&&(seq, from)| from != Some(peer) && !n.have.contains(&seq))
                .map(|&(seq, _)| seq)
                .collect();
            for part in news.chunks(MAX_SEQS) {
                self.counters.sent_have += 1;
                out.send_message(peer, wire::have(advert, part), false);
            }
        }
        self.request_missing_unless_source(now_us, out);
        self.serve(now_us, out);
    }
}

impl Pull {
    fn request_missing_unless_source(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        if !self.is_source() {
            self.request_missing(now_us, out);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
