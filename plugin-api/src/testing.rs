//! The test kit: unit-test a scheduler or an overlay without an engine.
//!
//! Two tools, both plain Rust on a clock the test controls (nothing here
//! reads a real clock, opens a socket or crosses the ABI):
//!
//! - [`SchedDriver`] and [`OverlayDriver`] feed one component a scripted
//!   sequence of events and hand back each event's actions on their own, so a
//!   test asserts step by step ("after this chunk, it sends to these two").
//! - [`Swarm`] runs N copies of a scheduler in a tiny simulated swarm (one
//!   publisher, a full mesh, a fixed latency and upload per peer, a simple
//!   play-out) and reports what each peer played: a smoke test that the
//!   scheduler really distributes a stream, in milliseconds of test time.
//!
//! The swarm is deliberately much simpler than the engine's simulator
//! (`p2ner_engine::sim`): no overlay, no congestion control, no loss. Its
//! events keep the engine's order and units (see `docs/plugins.md`), so a
//! scheduler that works here is worth trying in the real simulator, which is
//! the one to measure with.
//!
//! ```
//! use p2ner_plugin_api::prelude::*;
//! use p2ner_plugin_api::testing::SchedDriver;
//!
//! #[derive(Default)]
//! struct Flood(Vec<PeerId>);
//! impl Scheduler for Flood {
//!     fn on_neighbour_up(&mut self, _: u64, peer: PeerId, _: Link, _: &mut SchedOut<'_>) {
//!         self.0.push(peer);
//!     }
//!     fn on_chunk(&mut self, _: u64, seq: u64, from: Option<PeerId>, out: &mut SchedOut<'_>) {
//!         for &p in self.0.iter().filter(|&&p| Some(p) != from) {
//!             out.send_chunk(p, seq);
//!         }
//!     }
//! }
//!
//! let mut d = SchedDriver::new(Flood::default());
//! d.start();
//! d.neighbour_up(PeerId(2), Link::BOTH);
//! d.neighbour_up(PeerId(3), Link::BOTH);
//! assert_eq!(d.chunk(7, Some(PeerId(2))).chunks(), vec![(PeerId(3), 7)]);
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use abi_stable::std_types::RVec;

// `NeighbourUpload` by its module path: tests build this file against the
// frozen lib.rs of ABI 1.0 (tests/fixtures/frontend-abi-1.0), which does
// not re-export it.
use crate::view::NeighbourUpload;
use crate::{
    Capacity, ChunkInfo, Link, LinkView, Metric, Metrics, Overlay, OverlayAction, OverlayContext,
    OverlayOut, PeerId, PeerInfo, Playout, PlayoutView, Refusal, RefusalKind, SchedAction,
    SchedContext, SchedOut, Scheduler, Setup, Upload, View,
};

/// The actions one event produced, in order, with views a test asserts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions(pub Vec<SchedAction>);

impl Actions {
    /// `(peer, seq)` of every `SendChunk`, in order.
    pub fn chunks(&self) -> Vec<(PeerId, u64)> {
        self.0
            .iter()
            .filter_map(|a| match a {
                SchedAction::SendChunk { peer, seq } => Some((*peer, *seq)),
                _ => None,
            })
            .collect()
    }

    /// `(peer, payload, reliable)` of every `SendMessage`, in order.
    pub fn messages(&self) -> Vec<(PeerId, Vec<u8>, bool)> {
        self.0
            .iter()
            .filter_map(|a| match a {
                SchedAction::SendMessage {
                    peer,
                    payload,
                    reliable,
                } => Some((*peer, payload.to_vec(), *reliable)),
                _ => None,
            })
            .collect()
    }

    /// No action at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Actions {
    type Target = [SchedAction];
    fn deref(&self) -> &[SchedAction] {
        &self.0
    }
}

/// A context for tests: peer 1, a subscriber, 100 ms chunks of 10 kB
/// (800 kbit/s), a 30 s window.
pub fn sched_context() -> SchedContext {
    SchedContext {
        local: PeerId(1),
        is_source: false,
        seed: 1,
        chunk_us: 100_000,
        window_chunks: 300,
        chunk_bytes: 10_000,
    }
}

/// The setup a real engine reports for [`sched_context`]'s stream: a 20 ms
/// tick, the real data channel's message limit, a 10-chunk start lead.
pub fn setup() -> Setup {
    Setup {
        tick_us: 20_000,
        max_message_bytes: MAX_MESSAGE_BYTES,
        start_lead_chunks: 10,
        buffer_us: 1_000_000,
        startup_timeout_us: 3_000_000,
        simulated: false,
        uplink_shared: true,
    }
}

/// The message limit the kit applies, close to the real engine's (one
/// datagram, minus the envelope).
pub const MAX_MESSAGE_BYTES: u32 = 1137;

/// How much a [`Swarm`] peer's uplink queues at most, µs: a chunk handed over
/// beyond that is refused (`CHUNK_NO_ROOM`), like the engine's data channel
/// refuses what would only queue.
pub const QUEUE_TARGET_US: u64 = 100_000;

/// Drives one scheduler through scripted events on a clock the test sets.
///
/// Each event method calls the scheduler once (`chunk` twice:
/// `on_chunk_info`, then `on_chunk`, as the engine does) and returns just
/// that event's actions. Nothing is carried out: the test decides what the
/// engine would answer (a refusal with [`SchedDriver::refused`], a message
/// from a neighbour with [`SchedDriver::message`]).
pub struct SchedDriver<S> {
    /// The scheduler under test, to inspect its state between events.
    pub scheduler: S,
    /// The engine time the next event carries, µs.
    pub now_us: u64,
    /// What [`SchedDriver::start`] hands over.
    pub ctx: SchedContext,
    /// What [`SchedDriver::start`] hands over right after `on_start`.
    pub setup: Setup,
    actions: RVec<SchedAction>,
}

impl<S: Scheduler> SchedDriver<S> {
    /// A driver at time 0 with [`sched_context`] and [`setup`].
    pub fn new(scheduler: S) -> Self {
        SchedDriver {
            scheduler,
            now_us: 0,
            ctx: sched_context(),
            setup: setup(),
            actions: RVec::new(),
        }
    }

    /// Replaces the context `start` hands over.
    pub fn with_context(mut self, ctx: SchedContext) -> Self {
        self.ctx = ctx;
        self
    }

    /// Moves the clock to `now_us` (never backwards: engine time is monotonic).
    pub fn at(&mut self, now_us: u64) -> &mut Self {
        assert!(now_us >= self.now_us, "engine time never goes back");
        self.now_us = now_us;
        self
    }

    /// Moves the clock forward by `us`.
    pub fn advance(&mut self, us: u64) -> &mut Self {
        self.now_us += us;
        self
    }

    fn call(&mut self, f: impl FnOnce(&mut S, u64, &mut SchedOut<'_>)) -> Actions {
        f(
            &mut self.scheduler,
            self.now_us,
            &mut SchedOut::new(&mut self.actions),
        );
        Actions(std::mem::take(&mut self.actions).into_vec())
    }

    /// `on_start` with the context, then `on_setup`, as the engine starts a stream.
    pub fn start(&mut self) -> Actions {
        let (ctx, setup) = (self.ctx.clone(), self.setup);
        let mut a = self.call(|s, now, out| s.on_start(now, &ctx, out));
        a.0.extend(self.call(|s, now, out| s.on_setup(now, &setup, out)).0);
        a
    }

    /// `on_neighbour_up`.
    pub fn neighbour_up(&mut self, peer: PeerId, link: Link) -> Actions {
        self.call(|s, now, out| s.on_neighbour_up(now, peer, link, out))
    }

    /// `on_neighbour_down`.
    pub fn neighbour_down(&mut self, peer: PeerId) -> Actions {
        self.call(|s, now, out| s.on_neighbour_down(now, peer, out))
    }

    /// A chunk of [`SchedContext::chunk_bytes`], a keyframe every tenth:
    /// `on_chunk_info` then `on_chunk`.
    pub fn chunk(&mut self, seq: u64, from: Option<PeerId>) -> Actions {
        let info = ChunkInfo {
            seq,
            from: from.into(),
            keyframe: seq.is_multiple_of(10),
            bytes: self.ctx.chunk_bytes as u64,
            pts_us: seq * self.ctx.chunk_us as u64,
            duration_us: self.ctx.chunk_us,
        };
        self.chunk_info(info)
    }

    /// `on_chunk_info` with `info`, then `on_chunk`.
    pub fn chunk_info(&mut self, info: ChunkInfo) -> Actions {
        let mut a = self.call(|s, now, out| s.on_chunk_info(now, info, out));
        let from = info.from.into_option();
        a.0.extend(
            self.call(|s, now, out| s.on_chunk(now, info.seq, from, out))
                .0,
        );
        a
    }

    /// `on_message` from the scheduler at `peer`.
    pub fn message(&mut self, peer: PeerId, payload: &[u8]) -> Actions {
        self.call(|s, now, out| s.on_message(now, peer, payload, out))
    }

    /// `on_capacity`.
    pub fn capacity(&mut self, peer: PeerId, capacity: Capacity) -> Actions {
        self.call(|s, now, out| s.on_capacity(now, peer, capacity, out))
    }

    /// `on_playout`.
    pub fn playout(&mut self, playout: Playout) -> Actions {
        self.call(|s, now, out| s.on_playout(now, playout, out))
    }

    /// `on_upload`.
    pub fn upload(&mut self, upload: Upload) -> Actions {
        self.call(|s, now, out| s.on_upload(now, upload, out))
    }

    /// `on_view`.
    pub fn view(&mut self, view: &View) -> Actions {
        self.call(|s, now, out| s.on_view(now, view, out))
    }

    /// `on_tick`.
    pub fn tick(&mut self) -> Actions {
        self.call(|s, now, out| s.on_tick(now, out))
    }

    /// `on_refused`: what the engine says when it does not carry out an action.
    pub fn refused(&mut self, refusal: Refusal) -> Actions {
        self.call(|s, now, out| s.on_refused(now, refusal, out))
    }

    /// What the scheduler reports through `metrics`.
    pub fn metrics(&mut self) -> Vec<Metric> {
        collect_metrics(|m| self.scheduler.metrics(m))
    }

    /// One of the scheduler's own metrics by name.
    pub fn metric(&mut self, name: &str) -> Option<f64> {
        self.metrics()
            .into_iter()
            .find(|m| m.name.as_str() == name)
            .map(|m| m.value)
    }
}

fn collect_metrics(f: impl FnOnce(&mut Metrics<'_>)) -> Vec<Metric> {
    let mut list = RVec::new();
    f(&mut Metrics::new(&mut list));
    list.into_vec()
}

/// Drives one overlay through scripted events, like [`SchedDriver`].
pub struct OverlayDriver<O> {
    /// The overlay under test.
    pub overlay: O,
    /// The engine time the next event carries, µs.
    pub now_us: u64,
    actions: RVec<OverlayAction>,
}

impl<O: Overlay> OverlayDriver<O> {
    /// A driver at time 0.
    pub fn new(overlay: O) -> Self {
        OverlayDriver {
            overlay,
            now_us: 0,
            actions: RVec::new(),
        }
    }

    /// Moves the clock to `now_us` (never backwards).
    pub fn at(&mut self, now_us: u64) -> &mut Self {
        assert!(now_us >= self.now_us, "engine time never goes back");
        self.now_us = now_us;
        self
    }

    fn call(&mut self, f: impl FnOnce(&mut O, u64, &mut OverlayOut<'_>)) -> Vec<OverlayAction> {
        f(
            &mut self.overlay,
            self.now_us,
            &mut OverlayOut::new(&mut self.actions),
        );
        std::mem::take(&mut self.actions).into_vec()
    }

    /// `on_start` with `ctx`, then `on_setup` with [`setup`].
    pub fn start(&mut self, ctx: &OverlayContext) -> Vec<OverlayAction> {
        let mut a = self.call(|o, now, out| o.on_start(now, ctx, out));
        a.extend(self.call(|o, now, out| o.on_setup(now, &setup(), out)));
        a
    }

    /// `on_candidates`.
    pub fn candidates(&mut self, peers: &[PeerInfo]) -> Vec<OverlayAction> {
        self.call(|o, now, out| o.on_candidates(now, peers, out))
    }

    /// `on_connected`.
    pub fn connected(&mut self, peer: &PeerInfo) -> Vec<OverlayAction> {
        self.call(|o, now, out| o.on_connected(now, peer, out))
    }

    /// `on_disconnected`.
    pub fn disconnected(&mut self, peer: PeerId) -> Vec<OverlayAction> {
        self.call(|o, now, out| o.on_disconnected(now, peer, out))
    }

    /// `on_message`.
    pub fn message(&mut self, peer: PeerId, payload: &[u8]) -> Vec<OverlayAction> {
        self.call(|o, now, out| o.on_message(now, peer, payload, out))
    }

    /// `on_tick`.
    pub fn tick(&mut self) -> Vec<OverlayAction> {
        self.call(|o, now, out| o.on_tick(now, out))
    }

    /// `on_refused`.
    pub fn refused(&mut self, refusal: Refusal) -> Vec<OverlayAction> {
        self.call(|o, now, out| o.on_refused(now, refusal, out))
    }

    /// What the overlay reports through `metrics`.
    pub fn metrics(&mut self) -> Vec<Metric> {
        collect_metrics(|m| self.overlay.metrics(m))
    }
}

/// The shape of a [`Swarm`].
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Subscribers (the publisher comes on top).
    pub peers: usize,
    /// Media per chunk, µs.
    pub chunk_us: u64,
    /// Size of every chunk on the data channel, bytes.
    pub chunk_bytes: u64,
    /// One-way latency between any two peers, µs.
    pub latency_us: u64,
    /// Interval between ticks, µs.
    pub tick_us: u64,
    /// Each subscriber's upload, bit/s.
    pub upload_bps: u64,
    /// The publisher's upload, bit/s.
    pub source_upload_bps: u64,
    /// Contiguous chunks a subscriber waits for before playing.
    pub start_lead_chunks: u32,
    /// Seeds: peer `i` gets `seed + i`.
    pub seed: u64,
}

impl Default for SwarmConfig {
    /// A publisher and 4 subscribers, 100 ms chunks of 10 kB (800 kbit/s),
    /// 20 ms latency, 2 Mbit/s upload each (4 Mbit/s at the publisher).
    fn default() -> Self {
        SwarmConfig {
            peers: 4,
            chunk_us: 100_000,
            chunk_bytes: 10_000,
            latency_us: 20_000,
            tick_us: 20_000,
            upload_bps: 2_000_000,
            source_upload_bps: 4_000_000,
            start_lead_chunks: 10,
            seed: 1,
        }
    }
}

/// What one peer of a [`Swarm`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerResult {
    /// Which peer (`PeerId(1)` is the publisher).
    pub peer: PeerId,
    /// Chunks played at their deadline.
    pub played: u64,
    /// Chunks absent at their deadline.
    pub missed: u64,
    /// Copies received of chunks already held.
    pub duplicates: u64,
    /// Chunks this peer sent.
    pub chunks_sent: u64,
    /// Actions refused, by kind.
    pub refused: BTreeMap<RefusalKind, u64>,
    /// The scheduler's own metrics at the end.
    pub metrics: Vec<Metric>,
}

impl PeerResult {
    /// Played / (played + missed); 0 before anything was due.
    pub fn continuity(&self) -> f64 {
        let due = self.played + self.missed;
        if due == 0 {
            0.0
        } else {
            self.played as f64 / due as f64
        }
    }
}

enum Delivery {
    Chunk {
        to: usize,
        from: usize,
        seq: u64,
    },
    Message {
        to: usize,
        from: usize,
        payload: Vec<u8>,
    },
}

struct Node<S> {
    scheduler: S,
    id: PeerId,
    held: BTreeSet<u64>,
    /// From each neighbour: its newest chunk, first copies, duplicates.
    heard: BTreeMap<usize, (Option<u64>, u64, u64)>,
    /// Play-out: the next chunk and when it is due, once playing.
    playing: Option<(u64, u64)>,
    /// When the uplink has sent everything handed to it.
    busy_until_us: u64,
    result: PeerResult,
}

/// A tiny in-process swarm of one scheduler, N + 1 copies on simulated time.
///
/// Peer 0 is the publisher (`PeerId(1)`), peers 1..=N subscribe
/// (`PeerId(2)`...). Every peer is every other's neighbour (`Link::BOTH`).
/// Each tick, in the engine's order: the publisher produces what is due
/// (`on_chunk_info`, `on_chunk`), subscribers play what is due
/// (`on_playout` once playing), then every peer gets `on_upload`,
/// `on_view`, `on_capacity` per neighbour and `on_tick`. A chunk queues on
/// the sender's uplink (refused when that queue holds more than
/// [`QUEUE_TARGET_US`]) and arrives after its serialisation time plus the
/// latency; a message arrives after the latency. Refused actions come back through `on_refused` as the engine
/// does it. Each `LinkView::advert` is the neighbour's configured upload
/// and its current queue, as if adverts travelled instantly.
pub struct Swarm<S> {
    cfg: SwarmConfig,
    nodes: Vec<Node<S>>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    pending: BTreeMap<usize, Delivery>,
    next_id: usize,
    now_us: u64,
    produced: u64,
}

impl<S: Scheduler> Swarm<S> {
    /// Makes peer `i`'s scheduler with `make(i)` (0 is the publisher),
    /// starts every peer and brings every link up.
    pub fn new(cfg: SwarmConfig, mut make: impl FnMut(usize) -> S) -> Self {
        let n = cfg.peers + 1;
        let nodes = (0..n)
            .map(|i| Node {
                scheduler: make(i),
                id: PeerId(i as u64 + 1),
                held: BTreeSet::new(),
                heard: BTreeMap::new(),
                playing: None,
                busy_until_us: 0,
                result: PeerResult {
                    peer: PeerId(i as u64 + 1),
                    ..PeerResult::default()
                },
            })
            .collect();
        let mut swarm = Swarm {
            cfg,
            nodes,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            next_id: 0,
            now_us: 0,
            produced: 0,
        };
        for i in 0..n {
            let ctx = SchedContext {
                local: swarm.nodes[i].id,
                is_source: i == 0,
                seed: swarm.cfg.seed + i as u64,
                chunk_us: swarm.cfg.chunk_us as u32,
                window_chunks: 300,
                chunk_bytes: swarm.cfg.chunk_bytes as u32,
            };
            let setup = Setup {
                tick_us: swarm.cfg.tick_us,
                max_message_bytes: MAX_MESSAGE_BYTES,
                start_lead_chunks: swarm.cfg.start_lead_chunks,
                buffer_us: swarm.cfg.start_lead_chunks as u64 * swarm.cfg.chunk_us,
                startup_timeout_us: u64::MAX,
                simulated: true,
                uplink_shared: true,
            };
            swarm.call(i, |s, now, out| s.on_start(now, &ctx, out));
            swarm.call(i, |s, now, out| s.on_setup(now, &setup, out));
        }
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                let peer = swarm.nodes[j].id;
                swarm.call(i, |s, now, out| {
                    s.on_neighbour_up(now, peer, Link::BOTH, out)
                });
            }
        }
        swarm
    }

    /// Runs the swarm for `us` of simulated time.
    pub fn run_for(&mut self, us: u64) {
        let end = self.now_us + us;
        while self.now_us + self.cfg.tick_us <= end {
            let tick_at = self.now_us + self.cfg.tick_us;
            while let Some(&Reverse((at, _, id))) = self.queue.peek() {
                if at > tick_at {
                    break;
                }
                self.queue.pop();
                self.now_us = self.now_us.max(at);
                let delivery = self
                    .pending
                    .remove(&id)
                    .expect("queued deliveries are pending");
                self.deliver(delivery);
            }
            self.now_us = tick_at;
            self.tick();
        }
    }

    /// Simulated time now, µs.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// Peer `i`'s scheduler (0 is the publisher), to inspect its state.
    pub fn scheduler(&self, i: usize) -> &S {
        &self.nodes[i].scheduler
    }

    /// Every subscriber's result (the publisher plays nothing), with the
    /// scheduler's metrics as of now.
    pub fn results(&mut self) -> Vec<PeerResult> {
        (1..self.nodes.len()).map(|i| self.result(i)).collect()
    }

    /// Peer `i`'s result (0: the publisher, which only sends).
    pub fn result(&mut self, i: usize) -> PeerResult {
        let node = &mut self.nodes[i];
        let metrics = collect_metrics(|m| node.scheduler.metrics(m));
        PeerResult {
            metrics,
            ..node.result.clone()
        }
    }

    fn index(&self, peer: PeerId) -> Option<usize> {
        let i = peer.0.checked_sub(1)? as usize;
        (i < self.nodes.len()).then_some(i)
    }

    fn schedule(&mut self, at: u64, delivery: Delivery) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, delivery);
        self.queue.push(Reverse((at, id as u64, id)));
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Chunk { to, from, seq } => {
                let node = &mut self.nodes[to];
                let entry = node.heard.entry(from).or_default();
                entry.0 = Some(entry.0.map_or(seq, |s| s.max(seq)));
                if !node.held.insert(seq) {
                    entry.2 += 1;
                    node.result.duplicates += 1;
                    return;
                }
                entry.1 += 1;
                let info = self.chunk_info(seq, Some(self.nodes[from].id));
                self.call(to, |s, now, out| s.on_chunk_info(now, info, out));
                let from = info.from.into_option();
                self.call(to, |s, now, out| s.on_chunk(now, seq, from, out));
            }
            Delivery::Message { to, from, payload } => {
                let peer = self.nodes[from].id;
                self.call(to, |s, now, out| s.on_message(now, peer, &payload, out));
            }
        }
    }

    fn chunk_info(&self, seq: u64, from: Option<PeerId>) -> ChunkInfo {
        ChunkInfo {
            seq,
            from: from.into(),
            keyframe: seq.is_multiple_of(10),
            bytes: self.cfg.chunk_bytes,
            pts_us: seq * self.cfg.chunk_us,
            duration_us: self.cfg.chunk_us as u32,
        }
    }

    fn tick(&mut self) {
        let now = self.now_us;
        // The publisher: every chunk whose capture time has come.
        while (self.produced + 1) * self.cfg.chunk_us <= now {
            let seq = self.produced;
            self.produced += 1;
            self.nodes[0].held.insert(seq);
            let info = self.chunk_info(seq, None);
            self.call(0, |s, now, out| s.on_chunk_info(now, info, out));
            self.call(0, |s, now, out| s.on_chunk(now, seq, None, out));
        }
        for i in 1..self.nodes.len() {
            self.play(i);
        }
        for i in 0..self.nodes.len() {
            let upload_bps = self.upload_bps(i);
            let budget = self.room(i);
            let queued_us = self.nodes[i].busy_until_us.saturating_sub(now);
            let upload = Upload {
                capacity_bps: upload_bps,
                capped: true,
                rate_bps: 0,
                queued_bytes: queued_us * upload_bps / 8_000_000,
                queued_us,
                budget_bytes: budget,
                stream_bps: self.cfg.chunk_bytes * 8 * 1_000_000 / self.cfg.chunk_us.max(1),
            };
            self.call(i, |s, now, out| s.on_upload(now, upload, out));
            let view = self.view(i);
            self.call(i, |s, now, out| s.on_view(now, &view, out));
            for j in (0..self.nodes.len()).filter(|&j| j != i) {
                let cap = Capacity {
                    can_send_bytes: self.room(i),
                    rate_bps: upload_bps,
                    rtt_us: 2 * self.cfg.latency_us,
                };
                let peer = self.nodes[j].id;
                self.call(i, |s, now, out| s.on_capacity(now, peer, cap, out));
            }
            self.call(i, |s, now, out| s.on_tick(now, out));
        }
    }

    /// What peer `i`'s uplink takes now without queueing past
    /// [`QUEUE_TARGET_US`], bytes.
    fn room(&self, i: usize) -> u64 {
        let queued_us = self.nodes[i].busy_until_us.saturating_sub(self.now_us);
        QUEUE_TARGET_US.saturating_sub(queued_us) * self.upload_bps(i) / 8_000_000
    }

    fn upload_bps(&self, i: usize) -> u64 {
        if i == 0 {
            self.cfg.source_upload_bps
        } else {
            self.cfg.upload_bps
        }
    }

    fn view(&self, i: usize) -> View {
        let node = &self.nodes[i];
        let links = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| {
                let (newest, useful, dup) = node.heard.get(&j).copied().unwrap_or_default();
                LinkView {
                    peer: self.nodes[j].id,
                    link: Link::BOTH,
                    rtt_us: 2 * self.cfg.latency_us,
                    up_bps: 0,
                    down_bps: 0,
                    send_rate_bps: self.upload_bps(i),
                    can_send_bytes: self.room(i),
                    newest_seq: newest.into(),
                    useful_chunks: useful,
                    duplicate_chunks: dup,
                    // Adverts arrive instantly here: each node's upload is
                    // its configured cap, its queue what it has in flight.
                    advert: NeighbourUpload {
                        capacity_bps: self.upload_bps(j),
                        capped: true,
                        rate_bps: 0,
                        queued_us: self.nodes[j].busy_until_us.saturating_sub(self.now_us),
                        received_us: self.now_us,
                    },
                }
            })
            .collect();
        let oldest = node.held.first().copied().unwrap_or(0);
        let newest = node.held.last().copied().unwrap_or(0);
        let playout = match (i, node.playing) {
            (0, _) => PlayoutView::default(),
            (_, Some((next, deadline))) => PlayoutView {
                playing: true,
                next_seq: next,
                next_deadline_us: deadline,
                buffered_chunks: (next..).take_while(|s| node.held.contains(s)).count() as u64,
                oldest_seq: oldest,
                newest_seq: newest,
            },
            (_, None) => {
                // The engine's estimates: a start lead behind the newest
                // chunk held, starting within a buffer's time.
                let lead = self.cfg.start_lead_chunks as u64;
                let next = if node.held.is_empty() {
                    0
                } else {
                    (newest + 1).saturating_sub(lead)
                };
                PlayoutView {
                    playing: false,
                    next_seq: next,
                    next_deadline_us: self.now_us + lead * self.cfg.chunk_us,
                    buffered_chunks: (next..).take_while(|s| node.held.contains(s)).count() as u64,
                    oldest_seq: oldest,
                    newest_seq: newest,
                }
            }
        };
        View { playout, links }
    }

    fn play(&mut self, i: usize) {
        let now = self.now_us;
        let lead = self.cfg.start_lead_chunks.max(1) as u64;
        let chunk_us = self.cfg.chunk_us;
        let node = &mut self.nodes[i];
        if node.playing.is_none() {
            // The oldest run of `lead` contiguous chunks, as the engine's
            // play-out starts (it also gives up waiting after a timeout,
            // which the kit leaves out).
            let start = node
                .held
                .iter()
                .find(|&&first| (first..first + lead).all(|s| node.held.contains(&s)));
            if let Some(&first) = start {
                node.playing = Some((first, now));
            }
        }
        let Some((mut next, mut deadline)) = node.playing else {
            return;
        };
        while deadline <= now {
            if node.held.contains(&next) {
                node.result.played += 1;
            } else {
                node.result.missed += 1;
            }
            next += 1;
            deadline += chunk_us;
        }
        node.playing = Some((next, deadline));
        let playout = Playout {
            next_seq: next,
            next_deadline_us: deadline,
            oldest_seq: node.held.first().copied().unwrap_or(next),
            newest_seq: node.held.last().copied().unwrap_or(next),
        };
        self.call(i, |s, now, out| s.on_playout(now, playout, out));
    }

    /// Calls peer `i`'s scheduler and carries out its actions; refusals go
    /// back to it, bounded in rounds like the engine's.
    fn call(&mut self, i: usize, f: impl FnOnce(&mut S, u64, &mut SchedOut<'_>)) {
        let mut actions = RVec::new();
        f(
            &mut self.nodes[i].scheduler,
            self.now_us,
            &mut SchedOut::new(&mut actions),
        );
        for _ in 0..4 {
            if actions.is_empty() {
                break;
            }
            let mut refusals = Vec::new();
            for action in std::mem::take(&mut actions) {
                if let Err(r) = self.carry_out(i, action) {
                    refusals.push(r);
                }
            }
            for r in refusals {
                *self.nodes[i].result.refused.entry(r.kind).or_default() += 1;
                self.nodes[i].scheduler.on_refused(
                    self.now_us,
                    r,
                    &mut SchedOut::new(&mut actions),
                );
            }
        }
    }

    fn carry_out(&mut self, i: usize, action: SchedAction) -> Result<(), Refusal> {
        let now = self.now_us;
        match action {
            SchedAction::SendChunk { peer, seq } => {
                let refusal = |kind, limit| Refusal {
                    kind,
                    peer,
                    seq,
                    bytes: self.cfg.chunk_bytes,
                    limit,
                };
                let Some(j) = self.index(peer).filter(|&j| j != i) else {
                    return Err(refusal(RefusalKind::NOT_NEIGHBOUR, 0));
                };
                if !self.nodes[i].held.contains(&seq) {
                    return Err(Refusal {
                        bytes: 0,
                        ..refusal(RefusalKind::CHUNK_NOT_BUFFERED, 0)
                    });
                }
                // The last chunk may overdraw, as the engine's does.
                if self.room(i) == 0 {
                    return Err(refusal(RefusalKind::CHUNK_NO_ROOM, 0));
                }
                let bytes = self.cfg.chunk_bytes;
                let upload_bps = self.upload_bps(i).max(1);
                let node = &mut self.nodes[i];
                node.busy_until_us = node.busy_until_us.max(now) + bytes * 8_000_000 / upload_bps;
                node.result.chunks_sent += 1;
                let at = node.busy_until_us + self.cfg.latency_us;
                self.schedule(
                    at,
                    Delivery::Chunk {
                        to: j,
                        from: i,
                        seq,
                    },
                );
                Ok(())
            }
            SchedAction::SendMessage { peer, payload, .. } => {
                let Some(j) = self.index(peer).filter(|&j| j != i) else {
                    return Err(Refusal {
                        kind: RefusalKind::NOT_NEIGHBOUR,
                        peer,
                        bytes: payload.len() as u64,
                        ..Refusal::default()
                    });
                };
                if payload.len() > MAX_MESSAGE_BYTES as usize {
                    return Err(Refusal {
                        kind: RefusalKind::MESSAGE_TOO_LARGE,
                        peer,
                        seq: 0,
                        bytes: payload.len() as u64,
                        limit: MAX_MESSAGE_BYTES as u64,
                    });
                }
                let at = now + self.cfg.latency_us;
                self.schedule(
                    at,
                    Delivery::Message {
                        to: j,
                        from: i,
                        payload: payload.into_vec(),
                    },
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk to every neighbour but the sender, and a counter.
    #[derive(Default)]
    struct Flood {
        peers: Vec<PeerId>,
        refused: u64,
    }

    impl Scheduler for Flood {
        fn on_neighbour_up(&mut self, _: u64, peer: PeerId, _: Link, _: &mut SchedOut<'_>) {
            self.peers.push(peer);
        }
        fn on_chunk(&mut self, _: u64, seq: u64, from: Option<PeerId>, out: &mut SchedOut<'_>) {
            for &p in self.peers.iter().filter(|&&p| Some(p) != from) {
                out.send_chunk(p, seq);
            }
        }
        fn on_refused(&mut self, _: u64, _: Refusal, _: &mut SchedOut<'_>) {
            self.refused += 1;
        }
        fn metrics(&mut self, m: &mut Metrics<'_>) {
            m.counter("refused", self.refused);
        }
    }

    #[test]
    fn the_driver_hands_back_each_events_actions_alone() {
        let mut d = SchedDriver::new(Flood::default());
        assert!(d.start().is_empty());
        d.neighbour_up(PeerId(2), Link::BOTH);
        d.neighbour_up(PeerId(3), Link::BOTH);
        assert_eq!(
            d.at(100).chunk(0, None).chunks(),
            vec![(PeerId(2), 0), (PeerId(3), 0)]
        );
        assert_eq!(d.chunk(1, Some(PeerId(3))).chunks(), vec![(PeerId(2), 1)]);
        d.refused(Refusal::default());
        assert_eq!(d.metric("refused"), Some(1.0));
    }

    /// Connects to every candidate and counts what was refused.
    #[derive(Default)]
    struct Greedy(u64);

    impl Overlay for Greedy {
        fn on_candidates(&mut self, _: u64, peers: &[PeerInfo], out: &mut OverlayOut<'_>) {
            for p in peers {
                out.connect(p.clone(), Link::BOTH);
            }
        }
        fn on_refused(&mut self, _: u64, _: Refusal, _: &mut OverlayOut<'_>) {
            self.0 += 1;
        }
        fn metrics(&mut self, m: &mut Metrics<'_>) {
            m.counter("refused", self.0);
        }
    }

    #[test]
    fn the_overlay_driver_hands_back_each_events_actions_alone() {
        let mut d = OverlayDriver::new(Greedy::default());
        let local = PeerInfo {
            id: PeerId(1),
            addr: "127.0.0.1:1".into(),
        };
        let ctx = OverlayContext {
            local,
            is_source: false,
            seed: 1,
            source: None.into(),
        };
        assert!(d.start(&ctx).is_empty());
        let peer = PeerInfo {
            id: PeerId(2),
            addr: "127.0.0.1:2".into(),
        };
        let actions = d.at(5).candidates(std::slice::from_ref(&peer));
        assert_eq!(
            actions,
            vec![OverlayAction::Connect {
                peer,
                link: Link::BOTH
            }]
        );
        assert!(d.tick().is_empty());
        d.refused(Refusal::default());
        assert_eq!(d.metrics()[0].value, 1.0);
    }

    #[test]
    fn a_flooding_swarm_plays_everything_with_enough_upload() {
        let mut swarm = Swarm::new(
            SwarmConfig {
                peers: 3,
                source_upload_bps: 10_000_000,
                upload_bps: 10_000_000,
                ..SwarmConfig::default()
            },
            |_| Flood::default(),
        );
        swarm.run_for(10_000_000);
        for r in swarm.results() {
            assert!(r.played > 70, "{r:?}");
            assert_eq!(r.missed, 0, "{r:?}");
            assert!(r.duplicates > 0, "flooding duplicates: {r:?}");
        }
    }

    /// Remembers what the publisher advertised, as seen in the view.
    #[derive(Default)]
    struct Watch(Option<NeighbourUpload>);

    impl Scheduler for Watch {
        fn on_view(&mut self, _: u64, view: &View, _: &mut SchedOut<'_>) {
            self.0 = view.link(PeerId(1)).map(|l| l.advert);
        }
        fn metrics(&mut self, m: &mut Metrics<'_>) {
            if let Some(a) = self.0 {
                m.counter("publisher_capacity_bps", a.capacity_bps);
                m.counter("received_us", a.received_us);
            }
        }
    }

    #[test]
    fn the_swarms_view_carries_each_neighbours_advert() {
        let mut swarm = Swarm::new(
            SwarmConfig {
                peers: 2,
                source_upload_bps: 7_000_000,
                upload_bps: 3_000_000,
                ..SwarmConfig::default()
            },
            |_| Watch::default(),
        );
        swarm.run_for(1_000_000);
        for i in 1..=2 {
            let m = &swarm.result(i).metrics;
            let get = |name: &str| m.iter().find(|x| x.name.as_str() == name).map(|x| x.value);
            assert_eq!(get("publisher_capacity_bps"), Some(7_000_000.0), "{m:?}");
            assert!(get("received_us") > Some(0.0), "{m:?}");
        }
    }

    #[test]
    fn a_starved_swarm_misses_and_refusals_come_back() {
        // The publisher can send about one copy of the stream and a flood
        // wants three.
        let mut swarm = Swarm::new(
            SwarmConfig {
                peers: 3,
                source_upload_bps: 900_000,
                upload_bps: 0,
                ..SwarmConfig::default()
            },
            |_| Flood::default(),
        );
        swarm.run_for(10_000_000);
        let source = swarm.result(0);
        assert!(
            source.refused.get(&RefusalKind::CHUNK_NO_ROOM).copied() > Some(0),
            "{source:?}"
        );
        assert_eq!(
            source.metrics[0].value as u64,
            source.refused.values().sum::<u64>()
        );
    }
}
