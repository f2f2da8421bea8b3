//! `p2ner.scheduler`: which chunk goes to, or comes from, which neighbour.

use abi_stable::{
    sabi_trait,
    std_types::{ROption, RResult, RSlice, RVec},
    StableAbi,
};

use super::Guarded;
use crate::{ChunkInfo, Link, Metric, Metrics, PeerId, PluginError, Refusal, Setup, Upload, View};

/// What a scheduler learns once, when its stream starts.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct SchedContext {
    pub local: PeerId,
    /// This peer is the publisher: chunks originate here.
    pub is_source: bool,
    /// Seed for [`crate::Rng`], so runs can be replayed.
    pub seed: u64,
    /// Media per chunk.
    pub chunk_us: u32,
    /// How many chunks the engine keeps; older ones cannot be sent.
    pub window_chunks: u32,
    /// Typical size of one chunk (bitrate x duration), to turn the data
    /// channel's byte capacity into chunks.
    pub chunk_bytes: u32,
}

/// What the data channel can take towards one neighbour right now.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Bytes that can be handed to the data channel now without queueing.
    pub can_send_bytes: u64,
    /// The congestion controller's current estimate of the link's rate.
    pub rate_bps: u64,
    pub rtt_us: u64,
}

/// Where local playback stands, so schedulers can tell urgent from not.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Playout {
    /// The next chunk the player needs.
    pub next_seq: u64,
    /// When that chunk is due (engine time).
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
    SendMessage {
        peer: PeerId,
        payload: RVec<u8>,
        reliable: bool,
    },
    /// Send chunk `seq` from the local buffer to `peer` on the data channel.
    SendChunk { peer: PeerId, seq: u64 },
}

/// Collects a scheduler's actions for one event.
pub struct SchedOut<'a>(&'a mut RVec<SchedAction>);

impl<'a> SchedOut<'a> {
    pub fn new(actions: &'a mut RVec<SchedAction>) -> Self {
        SchedOut(actions)
    }

    pub fn send_chunk(&mut self, peer: PeerId, seq: u64) {
        self.0.push(SchedAction::SendChunk { peer, seq });
    }

    pub fn send_message(&mut self, peer: PeerId, payload: Vec<u8>, reliable: bool) {
        self.0.push(SchedAction::SendMessage {
            peer,
            payload: payload.into(),
            reliable,
        });
    }

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
/// Every method gets the engine's current time and a place to put actions;
/// none may read the clock, do I/O or block. Unused events have empty
/// defaults.
pub trait Scheduler: Send + 'static {
    fn on_start(&mut self, _now_us: u64, _ctx: &SchedContext, _out: &mut SchedOut<'_>) {}
    /// The overlay made `peer` a neighbour; `link` says which way media may flow.
    fn on_neighbour_up(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _link: Link,
        _out: &mut SchedOut<'_>,
    ) {
    }
    fn on_neighbour_down(&mut self, _now_us: u64, _peer: PeerId, _out: &mut SchedOut<'_>) {}
    /// A verified chunk entered the local buffer: from `from`, or produced
    /// here by the input when `from` is `None`.
    fn on_chunk(
        &mut self,
        _now_us: u64,
        _seq: u64,
        _from: Option<PeerId>,
        _out: &mut SchedOut<'_>,
    ) {
    }
    /// A [`SchedAction::SendMessage`] from the scheduler at `peer`.
    fn on_message(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _payload: &[u8],
        _out: &mut SchedOut<'_>,
    ) {
    }
    /// The data channel towards `peer` can take more (or less).
    fn on_capacity(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _capacity: Capacity,
        _out: &mut SchedOut<'_>,
    ) {
    }
    /// Local playback moved.
    fn on_playout(&mut self, _now_us: u64, _playout: Playout, _out: &mut SchedOut<'_>) {}
    /// Called at the engine's tick rate (and by the simulator's clock).
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
}

/// The boundary face of [`Scheduler`].
#[sabi_trait]
pub trait SchedulerAbi: Send {
    fn on_start(
        &mut self,
        now_us: u64,
        ctx: &SchedContext,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    fn on_neighbour_up(
        &mut self,
        now_us: u64,
        peer: PeerId,
        link: Link,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    fn on_neighbour_down(
        &mut self,
        now_us: u64,
        peer: PeerId,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    fn on_chunk(
        &mut self,
        now_us: u64,
        seq: u64,
        from: ROption<PeerId>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    fn on_message(
        &mut self,
        now_us: u64,
        peer: PeerId,
        payload: RSlice<'_, u8>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    fn on_capacity(
        &mut self,
        now_us: u64,
        peer: PeerId,
        capacity: Capacity,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
    fn on_playout(
        &mut self,
        now_us: u64,
        playout: Playout,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError>;
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
}
