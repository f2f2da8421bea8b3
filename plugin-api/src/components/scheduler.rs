//! `p2ner.scheduler`: which chunk goes to, or comes from, which neighbour.

use abi_stable::{
    sabi_trait,
    std_types::{ROption, RResult, RSlice, RVec},
    StableAbi,
};

use super::Guarded;
use crate::{Link, PeerId, PluginError, Upload};

/// What a scheduler learns once, when its stream starts.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct SchedContext {
    /// This peer.
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
    /// The link's smoothed round-trip time (0 before any sample).
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
        /// The scheduler at this peer gets it.
        peer: PeerId,
        /// The scheduler's own bytes; the engine does not look inside.
        payload: RVec<u8>,
        /// Acknowledged and retransmitted; unreliable for what the next one replaces (buffer maps).
        reliable: bool,
    },
    /// Send chunk `seq` from the local buffer to `peer` on the data channel.
    SendChunk {
        /// The neighbour.
        peer: PeerId,
        /// The chunk; one no longer buffered is skipped.
        seq: u64,
    },
}

/// Collects a scheduler's actions for one event.
pub struct SchedOut<'a>(&'a mut RVec<SchedAction>);

impl<'a> SchedOut<'a> {
    /// Collects into `actions` (the engine's buffer, reused between calls).
    pub fn new(actions: &'a mut RVec<SchedAction>) -> Self {
        SchedOut(actions)
    }

    /// Sends chunk `seq` to `peer` (see [`SchedAction::SendChunk`]).
    pub fn send_chunk(&mut self, peer: PeerId, seq: u64) {
        self.0.push(SchedAction::SendChunk { peer, seq });
    }

    /// Sends `payload` to the scheduler at `peer`.
    pub fn send_message(&mut self, peer: PeerId, payload: Vec<u8>, reliable: bool) {
        self.0.push(SchedAction::SendMessage {
            peer,
            payload: payload.into(),
            reliable,
        });
    }

    /// Any action, as it is.
    pub fn push(&mut self, action: SchedAction) {
        self.0.push(action);
    }
}

/// A scheduler, as a plugin author writes it: a sans-IO state machine.
///
/// Every method gets the engine's current time and a place to put actions;
/// none may read the clock, do I/O or block. Unused events have empty
/// defaults.
pub trait Scheduler: Send + 'static {
    /// The stream starts: who this peer is and the stream's shape.
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
    /// `peer` is no longer a neighbour: requests to it will not be answered.
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
}
