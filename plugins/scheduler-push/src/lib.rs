//! Scheduler `push`: useful chunks pushed to the most deprived neighbour.
//!
//! Why push: pull-based schedulers pay a request round trip per chunk and per
//! hop, and their rate is only as good as their request strategy. The push
//! family studied by Massoulié, Twigg, Gkantsidis and Rodriguez ("Randomized
//! decentralized broadcasting algorithms", INFOCOM 2007) is *provably
//! rate-optimal*: a peer that, at every sending opportunity, picks the
//! neighbour that lacks the most useful chunks ("most deprived neighbour") and
//! sends it a random chunk it lacks ("random useful chunk") reaches the
//! broadcast capacity of the graph. Bonald, Massoulié, Mathieu, Perino and
//! Twigg ("Epidemic live streaming: optimal performance trade-offs",
//! SIGMETRICS 2008) showed that sending the *latest* useful chunk instead
//! keeps the delay low, which is what a live stream wants; that is the
//! default here (`policy = latest-useful`; `random-useful` is the original).
//!
//! How it works:
//! - A peer knows what a neighbour holds from the neighbour's buffer maps
//!   (`MAP`, every `map_ms`) and announcements (`HAVE`, batched per tick),
//!   which also carry the neighbour's play-out position, plus every chunk it
//!   pushed there itself: a chunk is marked held as soon as it is pushed, so
//!   it is never pushed twice while it is in flight. A map replaces what was
//!   known, except pushes younger than `push_grace_ms`, so a push the data
//!   channel dropped is pushed again while it is still useful.
//! - A chunk is *useful* to a neighbour when the neighbour lacks it, it is in
//!   the window, and it is ahead of the neighbour's play-out (its reported
//!   position advanced by the time since the report).
//! - Chunks go only on links the overlay made `downstream`, and only within
//!   the per-neighbour budget the data channel reports through `on_capacity`
//!   (`can_send_bytes / chunk_bytes` chunks), optionally also within a total
//!   `upload_kbps`. Each sending opportunity goes to the most deprived
//!   neighbour (the one missing the most useful chunks; ties at random), then
//!   deprivation is recomputed, so a tight budget is shared fairly.
//! - Pure push loses a chunk whose push was dropped, so there is a small,
//!   bounded pull-style repair: a chunk still missing `repair_ms` before its
//!   play-out deadline is requested (`REQUEST`) from an upstream neighbour
//!   that holds it, at most `max_repairs` at a time, re-asked elsewhere after
//!   `repair_timeout_ms`. Requests are served before pushes.
//!
//! The scheduler has no notion of a tree or a mesh: it pushes on every
//! downstream link, so it works over `mesh` (links both ways: pushes go
//! wherever they are useful) and `tree` (pushes go from parents to children).
//!
//! Sans-IO and deterministic for a seed: the same `.so` runs in a real swarm
//! and in the simulator.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::{seqmap, Capacity, Playout, Upload};

const HAVE: u8 = 1;
const MAP: u8 = 2;
const REQUEST: u8 = 3;
/// Seqs per HAVE or REQUEST message: 1 + 8 + 2 + 120 * 8 = 971 bytes.
const MAX_SEQS: usize = 120;
/// Bits per MAP: 21 + 875 bytes.
const MAX_BITS: usize = 7000;
/// "No play-out position yet" on the wire.
const NO_PLAYOUT: u64 = u64::MAX;

/// Which chunk a sending opportunity carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The newest chunk the neighbour lacks (low delay; Bonald et al.).
    LatestUseful,
    /// A chunk the neighbour lacks, uniformly at random (Massoulié et al.).
    RandomUseful,
}

/// Which neighbour a sending opportunity goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The one lacking the most useful chunks.
    MostDeprived,
    /// Any neighbour with a useful chunk, at random.
    Random,
}

/// Parameters, each written once: `register` declares this table and
/// [`Push::new`] reads from it.
pub const PARAMS: &[ParamDef] = &[
    POLICY,
    TARGET,
    UPLOAD_KBPS,
    MAX_REPAIRS,
    REPAIR_MS,
    REPAIR_TIMEOUT_MS,
    PUSH_GRACE_MS,
    LOOKBACK_CHUNKS,
    MAP_MS,
];

const POLICY: ParamDef = ParamDef::new(
    "policy",
    "latest-useful",
    "which chunk to push: latest-useful (low delay) or random-useful (Massoulie et al.)",
);
const TARGET: ParamDef = ParamDef::new(
    "target",
    "most-deprived",
    "which neighbour gets a sending opportunity: most-deprived or random",
);
const UPLOAD_KBPS: ParamDef = ParamDef::new(
    "upload_kbps",
    "0",
    "total upload cap over all neighbours (0: only the data channel's per-link budgets)",
);
const MAX_REPAIRS: ParamDef = ParamDef::new(
    "max_repairs",
    "4",
    "repair requests outstanding at most (0: no repair)",
);
const REPAIR_MS: ParamDef = ParamDef::new(
    "repair_ms",
    "300",
    "a chunk still missing this long before its deadline is requested",
);
const REPAIR_TIMEOUT_MS: ParamDef = ParamDef::new(
    "repair_timeout_ms",
    "500",
    "a repair not served within this time is asked of another holder",
);
const PUSH_GRACE_MS: ParamDef = ParamDef::new(
    "push_grace_ms",
    "1000",
    "pushes younger than this count as held even when a map says otherwise",
);
const LOOKBACK_CHUNKS: ParamDef = ParamDef::new(
    "lookback_chunks",
    "30",
    "for a neighbour not playing yet, how far behind the newest chunk pushes start",
);
const MAP_MS: ParamDef = ParamDef::new("map_ms", "1000", "interval between full buffer maps");

pub struct Push {
    policy: Policy,
    target: Target,
    max_repairs: usize,
    repair_us: u64,
    repair_timeout_us: u64,
    lookback: u64,
    map_every_us: u64,
    push_grace_us: u64,
    /// Total upload in bytes per second; 0: only the per-link budgets.
    upload_bytes_per_s: u64,
    rng: Rng,
    ctx: Option<SchedContext>,
    have: BTreeSet<u64>,
    /// New chunks to announce, with who gave them (it needs no HAVE).
    announce: Vec<(u64, Option<PeerId>)>,
    neighbours: BTreeMap<PeerId, Neighbour>,
    /// My repair requests in flight: seq -> (to whom, when).
    repairs: BTreeMap<u64, (PeerId, u64)>,
    playout: Option<Playout>,
    newest_known: Option<u64>,
    /// Upload token bucket (bytes) and when it was last filled.
    tokens: u64,
    filled_at_us: Option<u64>,
    /// What the engine's capped uplink still takes this tick (appended to ABI 1.0);
    /// `None` when uncapped or an older engine.
    shared: Option<u64>,
}

struct Neighbour {
    link: Link,
    /// What it holds as far as we know: its maps and our pushes.
    have: BTreeSet<u64>,
    /// Our recent pushes to it: seq -> when.
    pushed: BTreeMap<u64, u64>,
    /// Its play-out position and when it reported it.
    playout: Option<(u64, u64)>,
    /// Bytes the data channel takes now; `None` until the engine says.
    budget: Option<u64>,
    /// Its repair requests to me, waiting for capacity.
    queue: VecDeque<u64>,
    /// My repair requests to it in flight.
    outstanding: usize,
    next_map_us: u64,
}

impl Push {
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let policy = match POLICY.get(params).trim() {
            "latest-useful" | "latest" => Policy::LatestUseful,
            "random-useful" | "random" => Policy::RandomUseful,
            other => {
                return Err(PluginError::new(format!(
                    "parameter 'policy' = '{other}': expected latest-useful or random-useful"
                )))
            }
        };
        let target = match TARGET.get(params).trim() {
            "most-deprived" => Target::MostDeprived,
            "random" => Target::Random,
            other => {
                return Err(PluginError::new(format!(
                    "parameter 'target' = '{other}': expected most-deprived or random"
                )))
            }
        };
        let push = Push {
            policy,
            target,
            max_repairs: MAX_REPAIRS.parse(params)?,
            repair_us: REPAIR_MS.parse::<u64>(params)? * 1000,
            repair_timeout_us: REPAIR_TIMEOUT_MS.parse::<u64>(params)? * 1000,
            lookback: LOOKBACK_CHUNKS.parse(params)?,
            map_every_us: MAP_MS.parse::<u64>(params)? * 1000,
            push_grace_us: PUSH_GRACE_MS.parse::<u64>(params)? * 1000,
            upload_bytes_per_s: UPLOAD_KBPS.parse::<u64>(params)? * 125,
            rng: Rng::new(0),
            ctx: None,
            have: BTreeSet::new(),
            announce: Vec::new(),
            neighbours: BTreeMap::new(),
            repairs: BTreeMap::new(),
            playout: None,
            newest_known: None,
            tokens: 0,
            filled_at_us: None,
            shared: None,
        };
        if push.repair_timeout_us == 0 || push.map_every_us == 0 {
            return Err(PluginError::new(
                "repair_timeout_ms and map_ms must be positive",
            ));
        }
        Ok(push)
    }

    fn chunk_bytes(&self) -> u64 {
        self.ctx.as_ref().map_or(1, |c| c.chunk_bytes.max(1) as u64)
    }

    fn chunk_us(&self) -> u64 {
        self.ctx
            .as_ref()
            .map_or(100_000, |c| c.chunk_us.max(1) as u64)
    }

    fn is_source(&self) -> bool {
        self.ctx.as_ref().is_some_and(|c| c.is_source)
    }

    fn learn_newest(&mut self, seq: u64) {
        self.newest_known = Some(self.newest_known.map_or(seq, |n| n.max(seq)));
    }

    /// The oldest chunk the engine still keeps here.
    fn keep_from(&self) -> u64 {
        let by_window = match (self.newest_known, self.ctx.as_ref()) {
            (Some(newest), Some(ctx)) => (newest + 1).saturating_sub(ctx.window_chunks as u64),
            _ => 0,
        };
        match self.playout {
            Some(p) => p.oldest_seq.max(by_window),
            None => by_window,
        }
    }

    /// The oldest chunk still worth pushing to `n` now.
    fn useful_from(&self, n: &Neighbour, now_us: u64) -> u64 {
        let floor = self.keep_from();
        let theirs = match n.playout {
            Some((next, at)) => next + now_us.saturating_sub(at) / self.chunk_us(),
            None => self
                .newest_known
                .map_or(0, |newest| newest.saturating_sub(self.lookback)),
        };
        floor.max(theirs)
    }

    fn prune(&mut self) {
        let keep_from = self.keep_from();
        self.have = self.have.split_off(&keep_from);
        for n in self.neighbours.values_mut() {
            n.have = n.have.split_off(&keep_from);
            n.pushed = n.pushed.split_off(&keep_from);
        }
        let start = self.playout.map_or(keep_from, |p| p.next_seq);
        let mut dropped = Vec::new();
        self.repairs.retain(|&seq, (peer, _)| {
            let keep = seq >= start;
            if !keep {
                dropped.push(*peer);
            }
            keep
        });
        for peer in dropped {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.outstanding = n.outstanding.saturating_sub(1);
            }
        }
    }

    fn playout_word(&self) -> u64 {
        self.playout.map_or(NO_PLAYOUT, |p| p.next_seq)
    }

    fn map_message(&self) -> Vec<u8> {
        let base = self.have.first().copied().unwrap_or(0);
        let last = self.have.last().copied().unwrap_or(0);
        // The newest chunks matter most: a map that does not fit keeps them.
        let base = base.max((last + 1).saturating_sub(MAX_BITS as u64));
        let bits = if self.have.is_empty() {
            0
        } else {
            (last - base + 1) as usize
        };
        let mut msg = vec![MAP];
        msg.extend_from_slice(&self.playout_word().to_le_bytes());
        seqmap::write_map(&mut msg, &self.have, base, bits);
        msg
    }

    /// Refills the upload bucket (when `upload_kbps` is set); at most 200 ms
    /// of upload accumulate, so an idle spell does not become a burst.
    fn refill(&mut self, now_us: u64) {
        if self.upload_bytes_per_s == 0 {
            return;
        }
        let cap = (self.upload_bytes_per_s / 5).max(self.chunk_bytes());
        let since = self.filled_at_us.map_or(cap, |at| {
            now_us.saturating_sub(at) * self.upload_bytes_per_s / 1_000_000
        });
        self.tokens = (self.tokens + since).min(cap);
        self.filled_at_us = Some(now_us);
    }

    fn upload_allows(&self) -> bool {
        (self.upload_bytes_per_s == 0 || self.tokens >= self.chunk_bytes())
            && self.shared.is_none_or(|b| b > 0)
    }

    fn spend(&mut self, peer: PeerId, seq: u64, now_us: u64, out: &mut SchedOut<'_>) {
        let chunk_bytes = self.chunk_bytes();
        if self.upload_bytes_per_s > 0 {
            self.tokens = self.tokens.saturating_sub(chunk_bytes);
        }
        if let Some(b) = &mut self.shared {
            *b = b.saturating_sub(chunk_bytes);
        }
        let n = self.neighbours.get_mut(&peer).expect("a neighbour");
        if let Some(b) = n.budget.as_mut() {
            *b = b.saturating_sub(chunk_bytes);
        }
        n.have.insert(seq);
        n.pushed.insert(seq, now_us);
        out.send_chunk(peer, seq);
    }

    /// Repair requests first, then pushes, while budgets last.
    fn send_round(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        self.refill(now_us);

        // Repairs.
        let peers: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for peer in peers {
            loop {
                if !self.upload_allows() {
                    return;
                }
                let n = &self.neighbours[&peer];
                if n.budget.is_none_or(|b| b == 0) {
                    break;
                }
                let Some(seq) = self.neighbours.get_mut(&peer).expect("n").queue.pop_front() else {
                    break;
                };
                if self.have.contains(&seq) {
                    self.spend(peer, seq, now_us, out);
                }
            }
        }
        // Pushes: what each neighbour with budget lacks.
        let mut useful: BTreeMap<PeerId, Vec<u64>> = BTreeMap::new();
        for (&peer, n) in &self.neighbours {
            if !n.link.downstream || n.budget.is_none_or(|b| b == 0) {
                continue;
            }
            let seqs: Vec<u64> = self
                .have
                .range(self.useful_from(n, now_us)..)
                .filter(|s| !n.have.contains(s))
                .copied()
                .collect();
            if !seqs.is_empty() {
                useful.insert(peer, seqs);
            }
        }
        while self.upload_allows() && !useful.is_empty() {
            let peer = match self.target {
                Target::MostDeprived => {
                    let rng = &mut self.rng;
                    *useful
                        .iter()
                        .max_by_key(|(_, seqs)| (seqs.len(), rng.next_u64()))
                        .expect("not empty")
                        .0
                }
                Target::Random => {
                    let i = self.rng.below(useful.len() as u64) as usize;
                    *useful.keys().nth(i).expect("in range")
                }
            };
            let seqs = useful.get_mut(&peer).expect("chosen");
            let i = match self.policy {
                Policy::LatestUseful => seqs.len() - 1,
                Policy::RandomUseful => self.rng.below(seqs.len() as u64) as usize,
            };
            let seq = seqs.remove(i);
            self.spend(peer, seq, now_us, out);
            let spent = self.neighbours[&peer].budget.is_none_or(|b| b == 0);
            if spent || useful[&peer].is_empty() {
                useful.remove(&peer);
            }
        }
    }

    /// Asks for chunks still missing close to their deadline.
    fn repair(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        let (Some(p), Some(newest)) = (self.playout, self.newest_known) else {
            return;
        };
        let expired: Vec<u64> = self
            .repairs
            .iter()
            .filter(|(_, &(_, at))| now_us >= at + self.repair_timeout_us)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in expired {
            if let Some((peer, _)) = self.repairs.remove(&seq) {
                if let Some(n) = self.neighbours.get_mut(&peer) {
                    n.outstanding = n.outstanding.saturating_sub(1);
                }
            }
        }
        let chunk_us = self.chunk_us();
        let mut batches: BTreeMap<PeerId, Vec<u64>> = BTreeMap::new();
        let mut seq = p.next_seq;
        while seq <= newest && self.repairs.len() < self.max_repairs {
            let deadline = p.next_deadline_us + (seq - p.next_seq) * chunk_us;
            if deadline > now_us + self.repair_us {
                break;
            }
            if !self.have.contains(&seq) && !self.repairs.contains_key(&seq) {
                let rng = &mut self.rng;
                let holder = self
                    .neighbours
                    .iter()
                    .filter(|(_, n)| n.link.upstream && n.have.contains(&seq))
                    .min_by_key(|(_, n)| (n.outstanding, rng.next_u64()))
                    .map(|(&id, _)| id);
                if let Some(peer) = holder {
                    self.neighbours.get_mut(&peer).expect("holder").outstanding += 1;
                    self.repairs.insert(seq, (peer, now_us));
                    batches.entry(peer).or_default().push(seq);
                }
            }
            seq += 1;
        }
        for (peer, seqs) in batches {
            for part in seqs.chunks(MAX_SEQS) {
                out.send_message(peer, seqs_message(REQUEST, None, part), false);
            }
        }
    }
}

fn seqs_message(kind: u8, playout: Option<u64>, seqs: &[u64]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(11 + seqs.len() * 8);
    msg.push(kind);
    if let Some(p) = playout {
        msg.extend_from_slice(&p.to_le_bytes());
    }
    msg.extend_from_slice(&(seqs.len() as u16).to_le_bytes());
    for s in seqs {
        msg.extend_from_slice(&s.to_le_bytes());
    }
    msg
}

/// A decoded message of this scheduler's protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// New chunks at the sender, and its play-out position (if playing).
    Have {
        playout: Option<u64>,
        seqs: Vec<u64>,
    },
    /// Everything the sender holds (its newest `MAX_BITS` at most).
    Map {
        playout: Option<u64>,
        seqs: Vec<u64>,
    },
    /// Repair: please send these chunks.
    Request(Vec<u64>),
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn playout_of(word: u64) -> Option<u64> {
    (word != NO_PLAYOUT).then_some(word)
}

/// Decodes a message; anything malformed (or oversized) yields `None`.
pub fn decode(msg: &[u8]) -> Option<Message> {
    let (&kind, rest) = msg.split_first()?;
    let seqs = |rest: &[u8]| -> Option<Vec<u64>> {
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        if n > MAX_SEQS || rest.len() != 2 + n * 8 {
            return None;
        }
        Some(
            rest[2..]
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        )
    };
    match kind {
        HAVE => Some(Message::Have {
            playout: playout_of(u64_at(rest, 0)?),
            seqs: seqs(&rest[8..])?,
        }),
        REQUEST => Some(Message::Request(seqs(rest)?)),
        MAP => Some(Message::Map {
            playout: playout_of(u64_at(rest, 0)?),
            seqs: seqmap::read_map(rest.get(8..)?, MAX_BITS)?,
        }),
        _ => None,
    }
}

impl Scheduler for Push {
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
                pushed: BTreeMap::new(),
                playout: None,
                budget: None,
                queue: VecDeque::new(),
                outstanding: 0,
                next_map_us: now_us + self.map_every_us,
            },
        );
        // Tell it at once what is here, so it neither pushes us duplicates
        // nor waits for a map before it can ask for a repair.
        out.send_message(peer, self.map_message(), false);
    }

    fn on_neighbour_down(&mut self, _now_us: u64, peer: PeerId, _out: &mut SchedOut<'_>) {
        self.neighbours.remove(&peer);
        // What was asked of it is asked again elsewhere.
        self.repairs.retain(|_, (p, _)| *p != peer);
    }

    fn on_chunk(&mut self, now_us: u64, seq: u64, from: Option<PeerId>, out: &mut SchedOut<'_>) {
        if self.have.insert(seq) {
            self.announce.push((seq, from));
        }
        self.learn_newest(seq);
        if let Some(peer) = from {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.have.insert(seq);
            }
        }
        if let Some((peer, _)) = self.repairs.remove(&seq) {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.outstanding = n.outstanding.saturating_sub(1);
            }
        }
        // Forward at once with what is left of this tick's budgets: one hop
        // costs no tick of waiting.
        self.send_round(now_us, out);
    }

    fn on_message(&mut self, now_us: u64, peer: PeerId, payload: &[u8], out: &mut SchedOut<'_>) {
        let Some(message) = decode(payload) else {
            return;
        };
        if !self.neighbours.contains_key(&peer) {
            return;
        }
        match message {
            Message::Have { playout, seqs } => {
                if let Some(&max) = seqs.iter().max() {
                    self.learn_newest(max);
                }
                let n = self.neighbours.get_mut(&peer).expect("checked");
                if let Some(p) = playout {
                    n.playout = Some((p, now_us));
                }
                n.have.extend(seqs);
            }
            Message::Map { playout, seqs } => {
                if let Some(&max) = seqs.iter().max() {
                    self.learn_newest(max);
                }
                let grace = self.push_grace_us;
                let n = self.neighbours.get_mut(&peer).expect("checked");
                n.playout = playout.map(|p| (p, now_us));
                // Recent pushes may still be on their way: keep them.
                n.pushed.retain(|_, &mut at| now_us < at + grace);
                n.have = seqs.into_iter().collect();
                n.have.extend(n.pushed.keys().copied());
            }
            Message::Request(seqs) => {
                let n = self.neighbours.get_mut(&peer).expect("checked");
                if n.link.downstream {
                    for seq in seqs {
                        if n.queue.len() < MAX_SEQS && !n.queue.contains(&seq) {
                            n.queue.push_back(seq);
                        }
                    }
                    self.send_round(now_us, out);
                }
            }
        }
    }

    fn on_capacity(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        capacity: Capacity,
        _out: &mut SchedOut<'_>,
    ) {
        // Only recorded: the pushes of a tick are shared out across all
        // neighbours in `on_tick`, most deprived first.
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.budget = Some(capacity.can_send_bytes);
        }
    }

    fn on_upload(&mut self, _now_us: u64, upload: Upload, _out: &mut SchedOut<'_>) {
        // One budget for the whole uplink: without it every neighbour's
        // link budget is the same shared bytes, spent once per neighbour.
        self.shared = upload.capped.then_some(upload.budget_bytes);
    }

    fn on_playout(&mut self, _now_us: u64, playout: Playout, _out: &mut SchedOut<'_>) {
        self.playout = Some(playout);
        self.learn_newest(playout.newest_seq);
    }

    fn on_tick(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        self.prune();
        let announce = std::mem::take(&mut self.announce);
        let playout = self.playout_word();
        let full_map = self.map_message();
        for (&peer, n) in self.neighbours.iter_mut() {
            if now_us >= n.next_map_us {
                n.next_map_us = now_us + self.map_every_us;
                out.send_message(peer, full_map.clone(), false);
                continue;
            }
            let news: Vec<u64> = announce
                .iter()
                .filter(|(_, from)| *from != Some(peer))
                .map(|&(seq, _)| seq)
                .collect();
            for part in news.chunks(MAX_SEQS) {
                out.send_message(peer, seqs_message(HAVE, Some(playout), part), false);
            }
        }
        if !self.is_source() {
            self.repair(now_us, out);
        }
        self.send_round(now_us, out);
    }
}

fn register(lib: &mut Registrar) {
    lib.scheduler(
        ComponentSpec::new(
            "push",
            env!("CARGO_PKG_VERSION"),
            "push a useful chunk (latest or random) to the most deprived neighbour; bounded pull repair near deadlines",
        )

        .params(PARAMS),
        Push::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-scheduler-push",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests;
