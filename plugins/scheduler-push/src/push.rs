//! The `push` state machine: substream subscriptions, pushes within the
//! shared uplink, bounded repair. See the crate docs for the why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2ner_plugin_api::prelude::*;
/// The stripe a peer forwards: the `tree` overlay's rule, shared through the
/// SDK. Over an overlay that says which stripes flow where
/// (`on_stripe_links`) the table decides; without one, a neighbour's own
/// stripe is the best guess at which substream it forwards. Over a mesh it
/// only spreads substreams.
pub use p2ner_plugin_api::stripes::stripe_of;
use p2ner_plugin_api::stripes::whole_slots;
use p2ner_plugin_api::tracing;
use p2ner_plugin_api::{Capacity, Playout, StripeLink, Upload};

use crate::wire::{self, decode, Message, MAX_BITS, MAX_SEQS, MAX_STRIPES, NO_DEPTH};

/// Whether media may flow on `link` either way: only then do maps,
/// announcements and adverts mean anything to the neighbour.
fn media(link: Link) -> bool {
    link.upstream || link.downstream
}

/// Which chunk a sending opportunity carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The newest chunk a subscriber lacks (low delay; Bonald et al.).
    LatestUseful,
    /// A chunk a subscriber lacks, uniformly at random (Massoulié et al.).
    RandomUseful,
}

/// Which subscriber a sending opportunity goes to among those wanting the
/// same chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The one lacking the most useful chunks.
    MostDeprived,
    /// Any, at random.
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
    STRIPES,
    REFUSE_MS,
    HAVE_MS,
];

const POLICY: ParamDef = ParamDef::new(
    "policy",
    "latest-useful",
    "which chunk to push first: latest-useful (low delay) or random-useful (Massoulie et al.)",
);
const TARGET: ParamDef = ParamDef::new(
    "target",
    "most-deprived",
    "which subscriber gets a chunk several want: most-deprived or random",
);
const UPLOAD_KBPS: ParamDef = ParamDef::new(
    "upload_kbps",
    "0",
    "total upload cap over all neighbours (0: only the engine's uplink and per-link budgets)",
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
const MAP_MS: ParamDef = ParamDef::new(
    "map_ms",
    "1000",
    "interval between full buffer maps (and capacity adverts)",
);
const STRIPES: ParamDef = ParamDef::new(
    "stripes",
    "8",
    "substreams: chunk s belongs to s % stripes and each comes from one parent (more and thinner substreams waste less of a capped uplink that carries a fraction of one); over `tree`, set it to the tree's `stripes`",
);
const HAVE_MS: ParamDef = ParamDef::new(
    "have_ms",
    "100",
    "announce new chunks at most this often (0: every tick); announcements go on every link, so fewer, larger ones save scarce upload",
);
const REFUSE_MS: ParamDef = ParamDef::new(
    "refuse_ms",
    "2000",
    "a parent that refused a substream is not asked for it again for this long",
);

/// Share of a capped uplink given to subscriptions, each counted at its
/// media rate plus the engine's framing per chunk: the rest carries control
/// traffic and repairs. The tree overlay gives fewer child slots (its own
/// shares, lower on purpose), so over a tree those bind first. Near the fluid bound every percent held back is a percent of
/// the swarm that cannot play, so it is kept as small as the control
/// traffic allows.
const UPLOAD_FOR_SUBSCRIBERS: f64 = 0.97;
/// The publisher's share: less, because only it serves the repairs of
/// chunks nobody else got (up to [`REPAIR_SHARE`]) and a publisher that
/// promises more copies than it carries queues, and what it drops as late
/// is lost to everyone below it. At 2x the bitrate 0.97 admits 15 stripe
/// copies, 0.90 14, 0.82 13. Sim, 50 peers, publisher at 2x, authenticated
/// wire, 4 seeds, continuity mean at loads 0.5 / 0.7 / 0.8 / 0.9 / 0.95:
/// push x mesh 0.941 / 0.905 / 0.809 / 0.759 / 0.721 at 0.97, 0.964 /
/// 0.926 / 0.854 / 0.756 / 0.724 at 0.90 (0.951 / - / 0.837 at 0.82); push
/// x tree at 0.7 / 0.8 / 0.9 0.961 / 0.934 / 0.848 at 0.97, 0.959 / 0.949
/// / 0.864 at 0.90.
const SOURCE_UPLOAD_FOR_SUBSCRIBERS: f64 = 0.90;
/// Bytes the engine adds to a chunk's media (header, signature), at most.
const SEAL_BYTES: u64 = 160;
/// A depth above this is a loop counting to infinity: not connected.
const MAX_DEPTH: u8 = 64;
/// Share of a capped publisher's uplink repairs may take ahead of the
/// subscriptions.
const REPAIR_SHARE: f64 = 0.1;
/// How long a substream without a parent waits before it takes a parent
/// no closer to the publisher than it was: time for the news that the
/// path through this peer is gone to reach its descendants.
const HOLD_DOWN_US: u64 = 300_000;

/// The `push` scheduler of one stream at one peer (see the crate docs).
pub struct Push {
    policy: Policy,
    target: Target,
    max_repairs: usize,
    repair_us: u64,
    repair_timeout_us: u64,
    lookback: u64,
    map_every_us: u64,
    push_grace_us: u64,
    refuse_us: u64,
    have_every_us: u64,
    next_have_us: u64,
    pub(crate) stripes: usize,
    /// Total upload in bytes per second; 0: only the per-link budgets.
    upload_bytes_per_s: u64,
    rng: Rng,
    ctx: Option<SchedContext>,
    pub(crate) have: BTreeSet<u64>,
    /// New chunks to announce, with who gave them (it needs no HAVE).
    pub(crate) announce: Vec<(u64, Option<PeerId>)>,
    pub(crate) neighbours: BTreeMap<PeerId, Neighbour>,
    /// My repair requests in flight: seq -> (to whom, when).
    pub(crate) repairs: BTreeMap<u64, (PeerId, u64)>,
    playout: Option<Playout>,
    pub(crate) newest_known: Option<u64>,
    /// Upload token bucket (bytes) and when it was last filled.
    tokens: u64,
    filled_at_us: Option<u64>,
    /// What the engine's capped uplink still takes this tick; `None` when
    /// uncapped or an older engine.
    shared: Option<u64>,
    /// The uplink as the engine last described it.
    upload: Option<Upload>,
    /// My parent per substream.
    pub(crate) parents: Vec<Option<PeerId>>,
    /// Hops from the publisher per substream, as last advertised.
    depths: Vec<u8>,
    /// Per substream, the fewest hops advertised since the last reset: a
    /// new parent must be closer to the publisher than that, so it cannot
    /// be a descendant of mine (they are all farther), whatever stale
    /// depth it still advertises. Babel's feasibility condition; without
    /// it parent chains over a mesh (and over a tree's side links) closed
    /// into loops that counted up to `MAX_DEPTH`.
    feasible: Vec<u8>,
    /// Per substream, since when it has had no parent.
    orphaned_at: Vec<Option<u64>>,
    /// Bytes repairs may take ahead of the pushes, and when last filled.
    repair_tokens: u64,
    repair_filled_at_us: Option<u64>,
    /// The second last traced (a diagnostic, off unless TRACE is on).
    traced_s: u64,
    /// The overlay's stripes per neighbour (up, down masks), when it splits
    /// the stream into trees: a substream's parent is then the tree's
    /// parent, and a parent keeps its uplink for the tree's children, which
    /// is what the tree counted its slots for. Empty over a mesh.
    stripe_links: BTreeMap<PeerId, (u64, u64)>,
    /// What this scheduler sent, for `metrics`.
    counters: Counters,
}

/// Messages by kind and chunks this scheduler sent: near the bound every
/// control byte is upload a chunk did not get, so a researcher needs to see
/// which kind grows.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    have: u64,
    map: u64,
    request: u64,
    info: u64,
    subscribe: u64,
    refuse: u64,
    chunks: u64,
}

impl Counters {
    /// Sends `payload` to `peer`, counted by its kind byte: every message
    /// this scheduler sends goes through here, so the counts cannot drift
    /// from what was sent.
    fn send(&mut self, out: &mut SchedOut<'_>, peer: PeerId, payload: Vec<u8>, reliable: bool) {
        match payload.first().copied() {
            Some(wire::HAVE) => self.have += 1,
            Some(wire::MAP) => self.map += 1,
            Some(wire::REQUEST) => self.request += 1,
            Some(wire::INFO) => self.info += 1,
            Some(wire::SUBSCRIBE) => self.subscribe += 1,
            Some(wire::REFUSE) => self.refuse += 1,
            _ => {}
        }
        out.send_message(peer, payload, reliable);
    }
}

pub(crate) struct Neighbour {
    pub(crate) link: Link,
    /// What it holds as far as we know: its maps and our pushes.
    pub(crate) have: BTreeSet<u64>,
    /// Our recent pushes to it: seq -> when.
    pub(crate) pushed: BTreeMap<u64, u64>,
    /// Its play-out position and when it reported it.
    playout: Option<(u64, u64)>,
    /// Bytes the data channel takes now; `None` until the engine says.
    budget: Option<u64>,
    rtt_us: u64,
    /// Its repair requests to me, waiting for capacity.
    pub(crate) queue: VecDeque<u64>,
    /// My repair requests to it in flight.
    outstanding: usize,
    next_map_us: u64,
    /// Its advertised upload (kbit/s) and depth per substream.
    upload_kbps: u32,
    depths: Vec<u8>,
    /// Substreams it subscribed from me (I push those to it).
    pub(crate) subscribed: u16,
    /// Substreams I subscribed from it, as last told.
    pub(crate) my_sub: u16,
    /// Per substream: it refused me until then.
    refused_until: Vec<u64>,
}

impl Push {
    /// Reads [`PARAMS`]; a value out of range is an error naming it.
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
        let stripes: usize = STRIPES.parse(params)?;
        if !(1..=MAX_STRIPES).contains(&stripes) {
            return Err(PluginError::new(format!(
                "parameter 'stripes' = {stripes}: expected 1 to {MAX_STRIPES}"
            )));
        }
        let push = Push {
            policy,
            target,
            max_repairs: MAX_REPAIRS.parse(params)?,
            repair_us: REPAIR_MS.parse::<u64>(params)? * 1000,
            repair_timeout_us: REPAIR_TIMEOUT_MS.parse::<u64>(params)? * 1000,
            lookback: LOOKBACK_CHUNKS.parse(params)?,
            map_every_us: MAP_MS.parse::<u64>(params)? * 1000,
            push_grace_us: PUSH_GRACE_MS.parse::<u64>(params)? * 1000,
            refuse_us: REFUSE_MS.parse::<u64>(params)? * 1000,
            have_every_us: HAVE_MS.parse::<u64>(params)? * 1000,
            next_have_us: 0,
            stripes,
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
            upload: None,
            parents: vec![None; stripes],
            depths: vec![NO_DEPTH; stripes],
            feasible: vec![NO_DEPTH; stripes],
            orphaned_at: vec![None; stripes],
            repair_tokens: 0,
            repair_filled_at_us: None,
            traced_s: u64::MAX,
            stripe_links: BTreeMap::new(),
            counters: Counters::default(),
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

    fn all_stripes(&self) -> u16 {
        ((1u32 << self.stripes) - 1) as u16
    }

    fn stripe_bit(&self, seq: u64) -> u16 {
        1 << (seq % self.stripes as u64)
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

    /// Whether chunk `seq` handed over now can reach `n` before it plays
    /// there: it leaves behind what is queued on the uplink, takes its own
    /// transmission time and half a round trip. A neighbour not playing yet
    /// has no deadline.
    fn arrives_in_time(&self, n: &Neighbour, seq: u64, now_us: u64) -> bool {
        let Some((next, at)) = n.playout else {
            return true;
        };
        if seq < next {
            return false;
        }
        let due = at + (seq - next) * self.chunk_us();
        let (queued_us, send_us) = match self.upload {
            Some(u) if u.capped && u.capacity_bps > 0 => (
                u.queued_us,
                self.chunk_cost() * 8 * 1_000_000 / u.capacity_bps,
            ),
            _ => (0, 0),
        };
        now_us + queued_us + send_us + n.rtt_us / 2 <= due
    }

    /// Subscription units (one substream to one subscriber) this uplink
    /// carries; `None`: not capped, as many as are asked.
    fn units(&self) -> Option<u32> {
        // A substream costs its media plus what the engine adds per chunk.
        let overhead = self.chunk_cost() as f64 / self.chunk_bytes() as f64;
        let stripe_bps = self.stream_bps() as f64 * overhead / self.stripes as f64;
        let capacity_bps = self.capacity_bps()?;
        let share = if self.is_source() {
            SOURCE_UPLOAD_FOR_SUBSCRIBERS
        } else {
            UPLOAD_FOR_SUBSCRIBERS
        };
        Some(whole_slots(capacity_bps as f64 * share / stripe_bps.max(1.0)) as u32)
    }

    /// The stream's rate: the engine's word, else the chunk size over its
    /// duration.
    fn stream_bps(&self) -> u64 {
        match self.upload {
            Some(u) if u.stream_bps > 0 => u.stream_bps,
            _ => self.chunk_bytes() * 8 * 1_000_000 / self.chunk_us(),
        }
    }

    /// What this peer may upload, bit/s: the lower of the engine's cap and
    /// `upload_kbps`; `None` when neither limits it.
    fn capacity_bps(&self) -> Option<u64> {
        let engine = self.upload.filter(|u| u.capped).map(|u| u.capacity_bps);
        let own = (self.upload_bytes_per_s > 0).then_some(self.upload_bytes_per_s * 8);
        match (engine, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn upload_kbps(&self) -> u32 {
        self.capacity_bps()
            .map_or(u32::MAX, |bps| (bps / 1000).min(u32::MAX as u64 - 1) as u32)
    }

    pub(crate) fn prune(&mut self) {
        let keep_from = self.keep_from();
        self.have = self.have.split_off(&keep_from);
        self.announce.retain(|&(s, _)| s >= keep_from);
        for n in self.neighbours.values_mut() {
            n.have = n.have.split_off(&keep_from);
            n.pushed = n.pushed.split_off(&keep_from);
            n.queue.retain(|&s| s >= keep_from);
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

    fn playout_word(&self) -> Option<u64> {
        self.playout.map(|p| p.next_seq)
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
        wire::map_message(self.playout_word(), &self.have, base, bits)
    }

    fn info_message(&self) -> Vec<u8> {
        Message::Info {
            upload_kbps: self.upload_kbps(),
            depths: self.depths.clone(),
        }
        .encode()
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

    /// What one chunk costs the budgets: a little more than its media, for
    /// the engine's header and signature. The engine counts the sealed
    /// chunk and refuses (drops) one handed over when its budget is spent,
    /// so counting low here would lose chunks silently.
    fn chunk_cost(&self) -> u64 {
        self.chunk_bytes() + self.chunk_bytes() / 50 + SEAL_BYTES
    }

    fn spend(&mut self, peer: PeerId, seq: u64, now_us: u64, out: &mut SchedOut<'_>) {
        let chunk_bytes = self.chunk_cost();
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
        self.counters.chunks += 1;
        out.send_chunk(peer, seq);
    }

    /// Repair requests within their share, pushes of subscribed
    /// substreams, freshest first, then the other repair requests (each
    /// only if it can still arrive in time), while the budgets last.
    pub(crate) fn send_round(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        self.refill(now_us);
        self.serve_repairs(now_us, true, out);

        // Pushes: (priority, peer, seq) for every subscribed chunk a
        // subscriber lacks and can still play.
        let mut wanted: Vec<(u64, u64, PeerId, u64)> = Vec::new();
        for (&peer, n) in &self.neighbours {
            if !n.link.downstream || n.subscribed == 0 || n.budget.is_none_or(|b| b == 0) {
                continue;
            }
            let seqs: Vec<u64> = self
                .have
                .range(self.useful_from(n, now_us)..)
                .filter(|&&s| n.subscribed & self.stripe_bit(s) != 0 && !n.have.contains(&s))
                .filter(|&&s| self.arrives_in_time(n, s, now_us))
                .copied()
                .collect();
            let deprivation = seqs.len() as u64;
            for seq in seqs {
                let first = match self.policy {
                    Policy::LatestUseful => u64::MAX - seq,
                    Policy::RandomUseful => self.rng.next_u64(),
                };
                let second = match self.target {
                    Target::MostDeprived => u64::MAX - deprivation,
                    Target::Random => self.rng.next_u64(),
                };
                wanted.push((first, second, peer, seq));
            }
        }
        wanted.sort_unstable();
        for (_, _, peer, seq) in wanted {
            if !self.upload_allows() {
                return;
            }
            if self.neighbours[&peer].budget.is_none_or(|b| b == 0) {
                continue;
            }
            self.spend(peer, seq, now_us, out);
        }
        // Then repairs with what the subscriptions leave.
        self.serve_repairs(now_us, false, out);
    }

    /// Serves queued repair requests while the budgets last; `first`: the
    /// ones ahead of the pushes, which at a capped publisher may take only
    /// [`REPAIR_SHARE`] of its uplink. Served first without a bound there,
    /// they took the upload the publisher's subscribed substreams needed,
    /// so more chunks went missing everywhere and more repairs were asked:
    /// a collapse near the bound (push x tree at load 0.9: 0.46 -> 0.86
    /// with the bound). Elsewhere repairs first lose less than they save
    /// (at load 0.5, 0.975 against 0.962 with all repairs last).
    fn serve_repairs(&mut self, now_us: u64, first: bool, out: &mut SchedOut<'_>) {
        let cost = self.chunk_cost();
        if first {
            if let Some(bps) = self.capacity_bps() {
                let since = self
                    .repair_filled_at_us
                    .map_or(0, |at| now_us.saturating_sub(at));
                let add = (bps as f64 * REPAIR_SHARE / 8.0 * since as f64 / 1e6) as u64;
                self.repair_tokens = (self.repair_tokens + add).min(2 * cost);
                self.repair_filled_at_us = Some(now_us);
            }
        }
        let limited = first && self.is_source() && self.capacity_bps().is_some();
        let peers: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for peer in peers {
            loop {
                if !self.upload_allows() || (limited && self.repair_tokens < cost) {
                    return;
                }
                let n = &self.neighbours[&peer];
                if n.budget.is_none_or(|b| b == 0) {
                    break;
                }
                let Some(seq) = self.neighbours.get_mut(&peer).expect("n").queue.pop_front() else {
                    break;
                };
                let n = &self.neighbours[&peer];
                if self.have.contains(&seq) && self.arrives_in_time(n, seq, now_us) {
                    if limited {
                        self.repair_tokens -= cost;
                    }
                    self.spend(peer, seq, now_us, out);
                }
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
        // Only the chunks due within `repair_ms`: a bounded walk, whatever
        // a neighbour claimed the newest chunk is.
        let last = newest.min(p.next_seq + self.repair_us / chunk_us + 1);
        let mut seq = p.next_seq;
        while seq <= last && self.repairs.len() < self.max_repairs {
            let deadline = p.next_deadline_us + (seq - p.next_seq) * chunk_us;
            if deadline > now_us + self.repair_us {
                break;
            }
            if !self.have.contains(&seq) && !self.repairs.contains_key(&seq) {
                let rng = &mut self.rng;
                // The publisher last: its upload is the swarm's scarcest.
                let holder = self
                    .neighbours
                    .iter()
                    .filter(|(_, n)| n.link.upstream && n.have.contains(&seq))
                    .min_by_key(|(_, n)| {
                        (n.depths.first() == Some(&0), n.outstanding, rng.next_u64())
                    })
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
                let request = wire::seqs_message(false, None, part);
                self.counters.send(out, peer, request, false);
            }
        }
    }

    /// Whether `n` may be my parent for substream `s`, and how good a one:
    /// lower is better. The stripe's tree parent as the overlay's table
    /// names it first, then a non-publisher whose own stripe it is (the
    /// tree's rule, for overlays without a table), then the publisher, then
    /// anyone; within a class the one closest to the publisher, then the
    /// strongest uplink.
    fn parent_rank(
        &self,
        id: PeerId,
        n: &Neighbour,
        s: usize,
        now_us: u64,
    ) -> Option<(u8, u8, u32)> {
        let depth = *n.depths.get(s)?;
        let bit = 1u16 << s;
        if !n.link.upstream
            || depth >= MAX_DEPTH
            || now_us < n.refused_until[s]
            || n.subscribed & bit != 0
        {
            return None;
        }
        let current = self.parents[s] == Some(id);
        // The tree's own parent cannot be a descendant (the tree checks its
        // paths); anyone else must pass the feasibility condition.
        let tree = self.tree_stripes(id).0 & (1 << s) != 0;
        if !current && !tree && depth >= self.feasible[s] {
            return None;
        }
        let class = if tree {
            0
        } else if depth == 0 {
            2
        } else if stripe_of(id, self.stripes) == s {
            1
        } else {
            3
        };
        Some((class, depth, u32::MAX - n.upload_kbps))
    }

    /// The stripes the overlay lets flow from and to `peer` (up, down).
    fn tree_stripes(&self, peer: PeerId) -> (u64, u64) {
        self.stripe_links.get(&peer).copied().unwrap_or((0, 0))
    }

    /// Picks one parent per substream (keeping the current one unless a
    /// better class appeared), tells parents what I want of them, and
    /// updates my depths; on a change everyone hears the new depths.
    fn choose_parents(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        if self.is_source() {
            return;
        }
        for s in 0..self.stripes {
            // Without a parent for a while, the descendants have heard
            // that the path through me is gone: any parent will do again.
            if self.parents[s].is_none() {
                let since = *self.orphaned_at[s].get_or_insert(now_us);
                if now_us >= since + HOLD_DOWN_US {
                    self.feasible[s] = NO_DEPTH;
                }
            }
            let current = self.parents[s].and_then(|p| {
                let n = self.neighbours.get(&p)?;
                self.parent_rank(p, n, s, now_us)
            });
            let best = self
                .neighbours
                .iter()
                .filter_map(|(&id, n)| Some((self.parent_rank(id, n, s, now_us)?, id)))
                .min();
            // A working parent gives way only to the stripe's own
            // forwarder: moving to the publisher would mostly be refused
            // (it keeps its copies for the stripes' first forwarders) and
            // every move costs a gap in the substream.
            self.parents[s] = match (current, best) {
                (Some(c), Some((b, id))) if b.0 <= 1 && b.0 < c.0 => Some(id),
                (Some(_), _) => self.parents[s],
                (None, b) => b.map(|(_, id)| id),
            };
        }
        let mut masks: BTreeMap<PeerId, u16> = BTreeMap::new();
        for (s, p) in self.parents.iter().enumerate() {
            if let Some(p) = p {
                *masks.entry(*p).or_default() |= 1 << s;
            }
        }
        for (&peer, n) in self.neighbours.iter_mut() {
            let mask = masks.get(&peer).copied().unwrap_or(0);
            if mask != n.my_sub {
                n.my_sub = mask;
                let sub = Message::Subscribe { mask }.encode();
                self.counters.send(out, peer, sub, true);
            }
        }
        let depths: Vec<u8> = self
            .parents
            .iter()
            .enumerate()
            .map(|(s, p)| {
                p.and_then(|p| self.neighbours.get(&p))
                    .map(|n| n.depths[s])
                    .filter(|&d| d < MAX_DEPTH)
                    .map_or(NO_DEPTH, |d| d + 1)
            })
            .collect();
        for (s, &d) in depths.iter().enumerate() {
            if self.parents[s].is_some() {
                self.orphaned_at[s] = None;
            }
            if d < MAX_DEPTH {
                self.feasible[s] = self.feasible[s].min(d);
            }
        }
        if depths != self.depths {
            self.depths = depths;
            let info = self.info_message();
            for (&peer, n) in &self.neighbours {
                if media(n.link) {
                    self.counters.send(out, peer, info.clone(), false);
                }
            }
        }
    }

    /// Admits what `peer` subscribes as far as the uplink carries. When it
    /// is full, the subscriptions that matter most stay: first those of a
    /// peer to its own stripe (over `tree` the ones the tree made, over a
    /// mesh the peers that forward that substream), then those of peers
    /// with more upload (they forward more); the others are refused and
    /// their peers ask elsewhere. So the publisher's copies go to peers
    /// that can forward them.
    fn admit(&mut self, peer: PeerId, mask: u16, out: &mut SchedOut<'_>) {
        let mask = mask & self.all_stripes();
        let Some(units) = self.units() else {
            self.neighbours.get_mut(&peer).expect("checked").subscribed = mask;
            return;
        };
        let stripes = self.stripes;
        let n = self.neighbours.get_mut(&peer).expect("checked");
        let held = n.subscribed;
        n.subscribed = mask;
        // (the tree's child, own stripe, already held, upload, peer, bit):
        // best first. What is held stays against newcomers of the same
        // class: a subscriber pushed out looks for another parent, pushes
        // out someone there, and near the bound the weakest uplinks end up
        // with none at all.
        let mut all: Vec<(bool, bool, bool, u32, PeerId, u16)> = Vec::new();
        for (&id, n) in &self.neighbours {
            let child = self.tree_stripes(id).1;
            for s in 0..stripes {
                let bit = 1u16 << s;
                if n.subscribed & bit != 0 {
                    let kept = id != peer || held & bit != 0;
                    all.push((
                        child & (1 << s) != 0,
                        stripe_of(id, stripes) == s,
                        kept,
                        n.upload_kbps,
                        id,
                        bit,
                    ));
                }
            }
        }
        if all.len() <= units as usize {
            return;
        }
        all.sort_unstable_by(|a, b| (b.0, b.1, b.2, b.3, a.4).cmp(&(a.0, a.1, a.2, a.3, b.4)));
        let mut refused: BTreeMap<PeerId, u16> = BTreeMap::new();
        for &(_, _, _, _, id, bit) in &all[units as usize..] {
            *refused.entry(id).or_default() |= bit;
        }
        for (id, mask) in refused {
            self.neighbours.get_mut(&id).expect("listed").subscribed &= !mask;
            self.counters
                .send(out, id, Message::Refuse { mask }.encode(), true);
        }
    }
}

impl Scheduler for Push {
    fn on_start(&mut self, _now_us: u64, ctx: &SchedContext, _out: &mut SchedOut<'_>) {
        self.rng = Rng::new(ctx.seed);
        self.ctx = Some(ctx.clone());
        if ctx.is_source {
            self.depths = vec![0; self.stripes];
        }
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
                rtt_us: 0,
                queue: VecDeque::new(),
                outstanding: 0,
                next_map_us: now_us + self.map_every_us,
                upload_kbps: 0,
                depths: vec![NO_DEPTH; self.stripes],
                subscribed: 0,
                my_sub: 0,
                refused_until: vec![0; self.stripes],
            },
        );
        // Tell it at once what is here and what I can forward, so it
        // neither pushes us duplicates nor waits a map period to subscribe.
        // Not on a link that carries no media (a tree's join attempt: most
        // are refused and closed at once, and near the bound there were
        // dozens a second).
        if media(link) {
            let (map, info) = (self.map_message(), self.info_message());
            self.counters.send(out, peer, map, false);
            self.counters.send(out, peer, info, false);
        }
    }

    fn on_neighbour_down(&mut self, _now_us: u64, peer: PeerId, _out: &mut SchedOut<'_>) {
        self.neighbours.remove(&peer);
        self.stripe_links.remove(&peer);
        // What was asked of it is asked again elsewhere.
        self.repairs.retain(|_, (p, _)| *p != peer);
        for p in &mut self.parents {
            if *p == Some(peer) {
                *p = None;
            }
        }
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
        // A neighbour's claim of a newest chunk only moves what is known
        // within one window: a forged far-future seq cannot make this peer
        // walk or keep a range it chose.
        let window = self.ctx.as_ref().map_or(0, |c| c.window_chunks as u64);
        let plausible = |s: u64, newest: Option<u64>| newest.is_none_or(|n| s <= n + window);
        match message {
            Message::Have { playout, seqs } => {
                if let Some(&max) = seqs.iter().max() {
                    if plausible(max, self.newest_known) {
                        self.learn_newest(max);
                    }
                }
                let n = self.neighbours.get_mut(&peer).expect("checked");
                if let Some(p) = playout {
                    n.playout = Some((p, now_us));
                }
                n.have.extend(seqs);
            }
            Message::Map { playout, seqs } => {
                if let Some(&max) = seqs.iter().max() {
                    if plausible(max, self.newest_known) {
                        self.learn_newest(max);
                    }
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
                        // Asked for: whatever we pushed did not arrive.
                        n.have.remove(&seq);
                        n.pushed.remove(&seq);
                        if n.queue.len() < MAX_SEQS && !n.queue.contains(&seq) {
                            n.queue.push_back(seq);
                        }
                    }
                    self.send_round(now_us, out);
                }
            }
            Message::Info {
                upload_kbps,
                depths,
            } => {
                let stripes = self.stripes;
                let n = self.neighbours.get_mut(&peer).expect("checked");
                n.upload_kbps = upload_kbps;
                // A peer with another substream count: its depths mean
                // nothing here, so it is a parent of last resort.
                n.depths = if depths.len() == stripes {
                    depths
                } else {
                    vec![MAX_DEPTH - 1; stripes]
                };
            }
            Message::Subscribe { mask } => {
                if self.neighbours[&peer].link.downstream {
                    self.admit(peer, mask, out);
                    self.send_round(now_us, out);
                } else if mask != 0 {
                    self.counters
                        .send(out, peer, Message::Refuse { mask }.encode(), true);
                }
            }
            Message::Refuse { mask } => {
                let until = now_us + self.refuse_us;
                let n = self.neighbours.get_mut(&peer).expect("checked");
                for s in 0..self.stripes {
                    if mask & (1 << s) != 0 {
                        n.refused_until[s] = until;
                        if self.parents[s] == Some(peer) {
                            self.parents[s] = None;
                        }
                    }
                }
                // It forgot these: what I think I asked of it must too.
                n.my_sub &= !mask;
                self.choose_parents(now_us, out);
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
        // Only recorded: the pushes of a tick are shared out in `on_tick`.
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.budget = Some(capacity.can_send_bytes);
            n.rtt_us = capacity.rtt_us;
        }
    }

    fn on_upload(&mut self, _now_us: u64, upload: Upload, _out: &mut SchedOut<'_>) {
        // One budget for the whole uplink: without it every neighbour's
        // link budget is the same shared bytes, spent once per neighbour.
        self.shared = upload.capped.then_some(upload.budget_bytes);
        self.upload = Some(upload);
    }

    fn on_stripe_links(&mut self, _now_us: u64, links: &[StripeLink], _out: &mut SchedOut<'_>) {
        // Bits beyond this scheduler's substreams mean nothing to it (its
        // `stripes` should be the overlay's).
        let mask = (1u64 << self.stripes) - 1;
        self.stripe_links = links
            .iter()
            .map(|l| (l.peer, (l.upstream & mask, l.downstream & mask)))
            .collect();
    }

    fn metrics(&mut self, m: &mut Metrics<'_>) {
        let c = self.counters;
        m.counter("sent_have", c.have);
        m.counter("sent_map", c.map);
        m.counter("sent_request", c.request);
        m.counter("sent_info", c.info);
        m.counter("sent_subscribe", c.subscribe);
        m.counter("sent_refuse", c.refuse);
        m.counter(
            "sent_messages",
            c.have + c.map + c.request + c.info + c.subscribe + c.refuse,
        );
        m.counter("sent_chunks", c.chunks);
        m.gauge(
            "subscribers",
            self.neighbours
                .values()
                .map(|n| n.subscribed.count_ones())
                .sum::<u32>() as f64,
        );
    }

    fn on_playout(&mut self, _now_us: u64, playout: Playout, _out: &mut SchedOut<'_>) {
        self.playout = Some(playout);
        self.learn_newest(playout.newest_seq);
    }

    fn on_tick(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        self.prune();
        self.choose_parents(now_us, out);
        let announce = if now_us >= self.next_have_us {
            self.next_have_us = now_us + self.have_every_us;
            std::mem::take(&mut self.announce)
        } else {
            Vec::new()
        };
        let playout = self.playout_word();
        let stripes = self.stripes as u64;
        let full_map = self.map_message();
        let info = self.info_message();
        if tracing::enabled!(tracing::Level::TRACE) && now_us / 1_000_000 != self.traced_s {
            self.traced_s = now_us / 1_000_000;
            let subs: u32 = self
                .neighbours
                .values()
                .map(|n| n.subscribed.count_ones())
                .sum();
            let behind = match (self.newest_known, self.playout) {
                (Some(n), Some(p)) => n as i64 - p.next_seq as i64,
                _ => -1,
            };
            let mut held = vec![0u32; self.stripes];
            if let Some(newest) = self.newest_known {
                for &h in self.have.range(newest.saturating_sub(40)..) {
                    held[(h % self.stripes as u64) as usize] += 1;
                }
            }
            tracing::trace!(
                me = self.ctx.as_ref().map_or(0, |c| c.local.0),
                ?held,
                units = ?self.units(),
                subs,
                behind,
                queued_ms = self.upload.map_or(0, |u| u.queued_us / 1000),
                "push parents {:?} depths {:?}",
                self.parents.iter().map(|p| p.map_or(0, |p| p.0)).collect::<Vec<_>>(),
                self.depths
            );
        }
        for (&peer, n) in self.neighbours.iter_mut() {
            if !media(n.link) {
                continue;
            }
            if now_us >= n.next_map_us {
                n.next_map_us = now_us + self.map_every_us;
                self.counters.send(out, peer, full_map.clone(), false);
                self.counters.send(out, peer, info.clone(), false);
                // Repeated in case the reliable one raced a link change.
                if n.my_sub != 0 {
                    let sub = Message::Subscribe { mask: n.my_sub }.encode();
                    self.counters.send(out, peer, sub, false);
                }
                continue;
            }
            // Not what it gave me, nor what I push it anyway: announcements
            // cost upload on every link, so each says only what is news.
            let news: Vec<u64> = announce
                .iter()
                .filter(|(seq, from)| {
                    *from != Some(peer) && n.subscribed & (1 << (seq % stripes)) == 0
                })
                .map(|&(seq, _)| seq)
                .collect();
            for part in news.chunks(MAX_SEQS) {
                let have = wire::seqs_message(true, playout, part);
                self.counters.send(out, peer, have, false);
            }
        }
        if !self.is_source() {
            self.repair(now_us, out);
        }
        self.send_round(now_us, out);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
