//! `p2ner.scheduler`: which chunk goes to, or comes from, which neighbour.

use abi_stable::{
    sabi_trait,
    std_types::{ROption, RResult, RSlice, RVec},
    StableAbi,
};

use super::Guarded;
// See overlay.rs: by its module path, for the frozen ABI 1.0 lib.rs.
use crate::types::StripeLink;
use crate::{ChunkInfo, Link, Metric, Metrics, PeerId, PluginError, Refusal, Setup, Upload, View};

/// What a scheduler learns once, when its stream starts (`on_start`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct SchedContext {
    /// This peer, as neighbours name it.
    pub local: PeerId,
    /// This peer is the publisher: chunks originate here.
    pub is_source: bool,
    /// Seed for [`crate::Rng`], so runs can be replayed.
    pub seed: u64,
    /// Media per chunk, µs.
    pub chunk_us: u32,
    /// How many chunks the engine keeps; older ones cannot be sent.
    pub window_chunks: u32,
    /// Typical size of one chunk (bitrate x duration), bytes, to turn the
    /// data channel's byte capacity into chunks (`ChunkInfo::bytes` has each
    /// chunk's real size).
    pub chunk_bytes: u32,
}

/// What the data channel can take towards one neighbour right now
/// (`on_capacity`, every tick, every link that is up).
///
/// This peer's *sending* side only; what a neighbour sends us is in
/// [`crate::LinkView`] (`on_view`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Bytes that can be handed to the data channel now without queueing,
    /// already clamped to what is left of the shared upload budget; 0 where
    /// the link is not `downstream`.
    pub can_send_bytes: u64,
    /// The congestion controller's current estimate of the link's rate, bit/s.
    pub rate_bps: u64,
    /// Smoothed round-trip time, µs (0 before the first sample).
    pub rtt_us: u64,
}

/// Where local playback stands, so schedulers can tell urgent from not
/// (`on_playout`, every tick once playing; [`crate::PlayoutView`] in
/// `on_view` has it from the moment of joining).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Playout {
    /// The next chunk the player needs.
    pub next_seq: u64,
    /// When that chunk is due, engine time µs.
    pub next_deadline_us: u64,
    /// The oldest chunk still in the buffer.
    pub oldest_seq: u64,
    /// The newest chunk known to exist (here or at a neighbour).
    pub newest_seq: u64,
}

/// What a scheduler asks the engine to do.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum SchedAction {
    /// A message of the scheduler's own protocol (buffer map, request, ...),
    /// delivered to the same scheduler at `peer` through
    /// [`Scheduler::on_message`]. `reliable` ones are acked and retransmitted.
    /// Refused (`on_refused`) when `peer` is not a neighbour or the payload
    /// is over [`Setup::max_message_bytes`].
    SendMessage {
        /// A neighbour (up or connecting).
        peer: PeerId,
        /// At most [`Setup::max_message_bytes`].
        payload: RVec<u8>,
        /// Acked and retransmitted; otherwise it may be lost.
        reliable: bool,
    },
    /// Send chunk `seq` from the local buffer to `peer` on the data channel,
    /// drawing its size from the link's room and the shared budget. Refused
    /// when `peer` is not a neighbour, `seq` is not held, or there is no
    /// room left this tick.
    SendChunk {
        /// A neighbour.
        peer: PeerId,
        /// A chunk in the local buffer.
        seq: u64,
    },
}

/// Collects a scheduler's actions for one event; the engine carries them out
/// in order when the event returns (docs/plugins.md, "Scheduler actions").
pub struct SchedOut<'a>(&'a mut RVec<SchedAction>);

impl<'a> SchedOut<'a> {
    /// Collects into `actions` (the adapters and the test kit do this).
    pub fn new(actions: &'a mut RVec<SchedAction>) -> Self {
        SchedOut(actions)
    }

    /// [`SchedAction::SendChunk`].
    pub fn send_chunk(&mut self, peer: PeerId, seq: u64) {
        self.0.push(SchedAction::SendChunk { peer, seq });
    }

    /// [`SchedAction::SendMessage`].
    pub fn send_message(&mut self, peer: PeerId, payload: Vec<u8>, reliable: bool) {
        self.0.push(SchedAction::SendMessage {
            peer,
            payload: payload.into(),
            reliable,
        });
    }

    /// Any action.
    pub fn push(&mut self, action: SchedAction) {
        self.0.push(action);
    }

    /// The actions collected so far, in the order the engine carries them
    /// out: what a test inspects after each event.
    pub fn actions(&self) -> &[SchedAction] {
        self.0.as_slice()
    }

    /// Takes the actions collected so far, leaving none: a multi-step test
    /// looks at each event's actions on their own.
    pub fn take(&mut self) -> Vec<SchedAction> {
        std::mem::take(self.0).into_vec()
    }

    /// Forgets the actions collected so far.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A scheduler, as a plugin author writes it: a sans-IO state machine.
///
/// Every method gets the engine's current time (`now_us`, µs, monotonic,
/// this engine's own) and a place to put actions; none may read the clock,
/// do I/O or block. Unused events have empty defaults. When each fires and
/// in what order is in docs/plugins.md ("Events, values and actions"); in
/// short, `on_start` and `on_setup` first, chunks and messages as they
/// arrive, and each tick `on_playout`, `on_upload`, `on_view`, the
/// `on_capacity` calls and `on_tick`.
pub trait Scheduler: Send + 'static {
    /// Once, first, when the stream starts.
    fn on_start(&mut self, _now_us: u64, _ctx: &SchedContext, _out: &mut SchedOut<'_>) {}
    /// The overlay made `peer` a neighbour and the link is up; `link` says
    /// which way media may flow. Also after `on_neighbour_down` when the
    /// overlay changed the link's direction.
    fn on_neighbour_up(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _link: Link,
        _out: &mut SchedOut<'_>,
    ) {
    }
    /// A neighbour whose link was up is gone (closed, timed out, banned), or
    /// is about to come back with another [`Link`].
    fn on_neighbour_down(&mut self, _now_us: u64, _peer: PeerId, _out: &mut SchedOut<'_>) {}
    /// A verified chunk entered the local buffer: from `from`, or produced
    /// here by the input when `from` is `None`. First copies only, right
    /// after the same chunk's [`Scheduler::on_chunk_info`].
    fn on_chunk(
        &mut self,
        _now_us: u64,
        _seq: u64,
        _from: Option<PeerId>,
        _out: &mut SchedOut<'_>,
    ) {
    }
    /// A [`SchedAction::SendMessage`] from the scheduler at `peer`, as it
    /// arrives (between ticks).
    fn on_message(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _payload: &[u8],
        _out: &mut SchedOut<'_>,
    ) {
    }
    /// What the data channel towards `peer` takes now: every tick, for every
    /// link that is up, after `on_view` and before `on_tick`, starting from a
    /// rotating neighbour. Sends in answer draw the room down for the
    /// neighbours after it.
    fn on_capacity(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _capacity: Capacity,
        _out: &mut SchedOut<'_>,
    ) {
    }
    /// Where playback stands: every tick once playing, subscribers only.
    fn on_playout(&mut self, _now_us: u64, _playout: Playout, _out: &mut SchedOut<'_>) {}
    /// Last in every tick ([`Setup::tick_us`] apart).
    fn on_tick(&mut self, _now_us: u64, _out: &mut SchedOut<'_>) {}
    /// This peer's shared uplink, every tick before the tick's
    /// [`Scheduler::on_capacity`] calls (appended to the first release).
    fn on_upload(&mut self, _now_us: u64, _upload: Upload, _out: &mut SchedOut<'_>) {}
    /// How the engine is set up (tick interval, largest message, play-out
    /// target): once, right after [`Scheduler::on_start`].
    fn on_setup(&mut self, _now_us: u64, _setup: &Setup, _out: &mut SchedOut<'_>) {}
    /// Every neighbour both ways and play-out, every tick after
    /// [`Scheduler::on_upload`] and before the tick's `on_capacity` calls.
    fn on_view(&mut self, _now_us: u64, _view: &View, _out: &mut SchedOut<'_>) {}
    /// A chunk entered the buffer, with its keyframe flag and size: just
    /// before the same chunk's [`Scheduler::on_chunk`].
    fn on_chunk_info(&mut self, _now_us: u64, _chunk: ChunkInfo, _out: &mut SchedOut<'_>) {}
    /// The engine refused one of this scheduler's actions: right after the
    /// event that returned it, one call per refused action, in order.
    fn on_refused(&mut self, _now_us: u64, _refusal: Refusal, _out: &mut SchedOut<'_>) {}
    /// This scheduler's own counters and gauges, asked about once a second
    /// (each `--stats` line) and when the stream ends (the summary).
    fn metrics(&mut self, _metrics: &mut Metrics<'_>) {}
    /// Which stripes the overlay lets flow on which links (see
    /// [`StripeLink`]), whenever that changed, before the tick's
    /// [`Scheduler::on_tick`]: the whole table each time, empty when the
    /// overlay does not split the stream.
    fn on_stripe_links(&mut self, _now_us: u64, _links: &[StripeLink], _out: &mut SchedOut<'_>) {}
}

/// The boundary face of [`Scheduler`].
#[sabi_trait]
pub trait SchedulerAbi: Send {
    /// [`Scheduler::on_start`].
    fn on_start(
        &mut self,
        now_us: u64,
        ctx: &SchedContext,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    /// [`Scheduler::on_neighbour_up`].
    fn on_neighbour_up(
        &mut self,
        now_us: u64,
        peer: PeerId,
        link: Link,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    /// [`Scheduler::on_neighbour_down`].
    fn on_neighbour_down(
        &mut self,
        now_us: u64,
        peer: PeerId,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    /// [`Scheduler::on_chunk`].
    fn on_chunk(
        &mut self,
        now_us: u64,
        seq: u64,
        from: ROption<PeerId>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    /// [`Scheduler::on_message`].
    fn on_message(
        &mut self,
        now_us: u64,
        peer: PeerId,
        payload: RSlice<'_, u8>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    /// [`Scheduler::on_capacity`].
    fn on_capacity(
        &mut self,
        now_us: u64,
        peer: PeerId,
        capacity: Capacity,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    /// [`Scheduler::on_playout`].
    fn on_playout(
        &mut self,
        now_us: u64,
        playout: Playout,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    /// [`Scheduler::on_tick`]; the last method of the first release.
    #[sabi(last_prefix_field)]
    fn on_tick(&mut self, now_us: u64, out: &mut RVec<SchedAction>) -> RResult<(), PluginError>;
    /// Appended to the first release. A library built before lacks it; the
    /// host then runs this
    /// default body, which does nothing.
    fn on_upload(
        &mut self,
        _now_us: u64,
        _upload: Upload,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended (with the four below) after `on_upload`; defaults do nothing.
    fn on_setup(
        &mut self,
        _now_us: u64,
        _setup: &Setup,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `on_upload`.
    fn on_view(
        &mut self,
        _now_us: u64,
        _view: &View,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `on_upload`.
    fn on_chunk_info(
        &mut self,
        _now_us: u64,
        _chunk: ChunkInfo,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `on_upload`.
    fn on_refused(
        &mut self,
        _now_us: u64,
        _refusal: Refusal,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `on_upload`; a library built before reports nothing.
    fn metrics(&mut self, _out: &mut RVec<Metric>) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `metrics`; a library built before ignores it.
    fn on_stripe_links(
        &mut self,
        _now_us: u64,
        _links: RSlice<'_, StripeLink>,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
}

impl<T: Scheduler> SchedulerAbi for Guarded<T> {
    fn on_start(
        &mut self,
        now_us: u64,
        ctx: &SchedContext,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_start(now_us, ctx, &mut SchedOut(out)))
    }
    fn on_neighbour_up(
        &mut self,
        now_us: u64,
        peer: PeerId,
        link: Link,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_neighbour_up(now_us, peer, link, &mut SchedOut(out)))
    }
    fn on_neighbour_down(
        &mut self,
        now_us: u64,
        peer: PeerId,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_neighbour_down(now_us, peer, &mut SchedOut(out)))
    }
    fn on_chunk(
        &mut self,
        now_us: u64,
        seq: u64,
        from: ROption<PeerId>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_chunk(now_us, seq, from.into_option(), &mut SchedOut(out)))
    }
    fn on_message(
        &mut self,
        now_us: u64,
        peer: PeerId,
        payload: RSlice<'_, u8>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_message(now_us, peer, payload.as_slice(), &mut SchedOut(out)))
    }
    fn on_capacity(
        &mut self,
        now_us: u64,
        peer: PeerId,
        capacity: Capacity,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_capacity(now_us, peer, capacity, &mut SchedOut(out)))
    }
    fn on_playout(
        &mut self,
        now_us: u64,
        playout: Playout,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_playout(now_us, playout, &mut SchedOut(out)))
    }
    fn on_tick(&mut self, now_us: u64, out: &mut RVec<SchedAction>) -> RResult<(), PluginError> {
        self.event(|s| s.on_tick(now_us, &mut SchedOut(out)))
    }
    fn on_upload(
        &mut self,
        now_us: u64,
        upload: Upload,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_upload(now_us, upload, &mut SchedOut(out)))
    }
    fn on_setup(
        &mut self,
        now_us: u64,
        setup: &Setup,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_setup(now_us, setup, &mut SchedOut(out)))
    }
    fn on_view(
        &mut self,
        now_us: u64,
        view: &View,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_view(now_us, view, &mut SchedOut(out)))
    }
    fn on_chunk_info(
        &mut self,
        now_us: u64,
        chunk: ChunkInfo,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_chunk_info(now_us, chunk, &mut SchedOut(out)))
    }
    fn on_refused(
        &mut self,
        now_us: u64,
        refusal: Refusal,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_refused(now_us, refusal, &mut SchedOut(out)))
    }
    fn metrics(&mut self, out: &mut RVec<Metric>) -> RResult<(), PluginError> {
        self.event(|s| s.metrics(&mut Metrics::new(out)))
    }
    fn on_stripe_links(
        &mut self,
        now_us: u64,
        links: RSlice<'_, StripeLink>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.event(|s| s.on_stripe_links(now_us, links.as_slice(), &mut SchedOut(out)))
    }
}
