//! What the engine shows schedulers and overlays beyond the first release's
//! events: how it is set up, each neighbour in both directions, where
//! play-out stands from the moment of joining, and what each chunk is.
//!
//! All of it was appended to ABI 1.0 (`on_setup`, `on_view`,
//! `on_chunk_info`): new types and new trait methods with empty defaults,
//! never new fields in the first release's types, so a library built before
//! keeps loading and simply never sees these events.
//!
//! Units everywhere: times and durations in microseconds of engine time
//! (`now_us`), rates in bit/s, sizes in bytes, positions as chunk sequence
//! numbers.

use abi_stable::{
    std_types::{ROption, RVec},
    StableAbi,
};

use crate::{Link, PeerId};

/// How the engine running this stream is set up: delivered once, right
/// after `on_start`, before any other event.
///
/// The same fields mean the same in a real swarm and in the simulator; the
/// values differ where the engines do (a real engine ticks every 20 ms, the
/// simulator every 50 ms), which is why they are here and not assumed.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Setup {
    /// Interval between two `on_tick` calls, µs. Work that must happen
    /// "soon" happens at the next tick at the latest.
    pub tick_us: u64,
    /// The largest `SendMessage` payload the engine delivers, bytes. A
    /// larger one is refused (never sent) with [`crate::RefusalKind::MESSAGE_TOO_LARGE`].
    pub max_message_bytes: u32,
    /// Contiguous chunks play-out waits for before it starts (the start
    /// lead): `start_lead_chunks * chunk_us` is the buffer target.
    pub start_lead_chunks: u32,
    /// The play-out buffer target, µs: how far behind the newest chunk
    /// playback runs once started.
    pub buffer_us: u64,
    /// Play-out starts with whatever it has after this long without a full
    /// start lead, µs after joining.
    pub startup_timeout_us: u64,
    /// The engine is the simulator (`p2ner_engine::sim`), not a real swarm.
    /// For logs and traces only: a scheduler that behaves differently on it
    /// measures nothing.
    pub simulated: bool,
    /// This peer's upload is one budget shared by every neighbour (and every
    /// stream of the engine): `Capacity::can_send_bytes` of each link is
    /// already clamped to what is left of it, and sends to one neighbour
    /// reduce what the next one is offered.
    pub uplink_shared: bool,
}

/// Where play-out stands, every tick from the moment of joining (the first
/// release's `on_playout` fires only once playing).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlayoutView {
    /// Playback has started. Before that, `next_seq` and `next_deadline_us`
    /// are estimates: the chunk playback would start at if it started now
    /// (newest known minus the start lead) and the latest moment it starts
    /// (the startup timeout).
    pub playing: bool,
    /// The next chunk the player needs.
    pub next_seq: u64,
    /// When it is due, engine time µs.
    pub next_deadline_us: u64,
    /// Chunks held contiguously from `next_seq`: the buffer, in chunks.
    pub buffered_chunks: u64,
    /// Oldest chunk still held (`next_seq` when none).
    pub oldest_seq: u64,
    /// Newest chunk held (`next_seq` when none).
    pub newest_seq: u64,
}

/// One neighbour, both directions, as this peer measures it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkView {
    /// The neighbour.
    pub peer: PeerId,
    /// Which way media may flow, as the overlay set it.
    pub link: Link,
    /// Smoothed round-trip time, µs (0 before the first sample).
    pub rtt_us: u64,
    /// What this peer sent the neighbour over the last report interval
    /// (1 s), bit/s: chunks and messages.
    pub up_bps: u64,
    /// What this peer received from the neighbour over the last report
    /// interval, bit/s: what the neighbour can upload to us at least.
    pub down_bps: u64,
    /// The data channel's current estimate of the rate towards the
    /// neighbour (congestion window over RTT), bit/s.
    pub send_rate_bps: u64,
    /// What may be handed to the data channel towards the neighbour now,
    /// bytes (0 when `link.downstream` is false: media may not flow there).
    pub can_send_bytes: u64,
    /// The newest chunk received from the neighbour: where its buffer is at
    /// least. `None` before it sent any.
    pub newest_seq: ROption<u64>,
    /// First copies of chunks received from it, since the link came up.
    pub useful_chunks: u64,
    /// Chunks from it that were already here, since the link came up.
    pub duplicate_chunks: u64,
    /// What the neighbour last advertised of its own upload: the other
    /// direction's capacity, which only it can know. Appended after the
    /// fields above; all zeros until its first advert and for a neighbour
    /// whose engine predates adverts.
    pub advert: NeighbourUpload,
}

/// A neighbour's own [`crate::Upload`], as it advertises it to its
/// neighbours (once per keepalive interval, 1 s, when it changed; every 5 s
/// on a busy link when it did not): what a pull
/// scheduler needs to choose the holder with the most spare upload.
/// It is as old as `received_us` says, and 0 means unknown throughout.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NeighbourUpload {
    /// What its uplink can carry, bit/s: its cap when `capped`, otherwise
    /// the highest rate it measured (0 unknown).
    pub capacity_bps: u64,
    /// `capacity_bps` is a configured cap, not an estimate.
    pub capped: bool,
    /// What it sent over its last second, to all its neighbours, bit/s:
    /// `capacity_bps - rate_bps` is its spare upload.
    pub rate_bps: u64,
    /// How long its send queue takes to drain, µs: a chunk it is asked
    /// for now leaves no earlier than this.
    pub queued_us: u64,
    /// When this peer received the advert, engine time µs (0 never).
    pub received_us: u64,
}

/// Everything a scheduler sees of the stream at one tick: delivered every
/// tick after `on_upload` and before the tick's `on_capacity` calls.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// Play-out (all zeros at the publisher, which plays nothing).
    pub playout: PlayoutView,
    /// Every neighbour whose link is up, in peer id order.
    pub links: RVec<LinkView>,
}

impl View {
    /// The neighbour `peer`, if its link is up.
    pub fn link(&self, peer: PeerId) -> Option<&LinkView> {
        self.links.iter().find(|l| l.peer == peer)
    }
}

/// One chunk that entered the local buffer, with what the first release's
/// `on_chunk` does not say. Delivered just before the same chunk's
/// `on_chunk`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkInfo {
    /// Its sequence number.
    pub seq: u64,
    /// The neighbour it came from; `None` at the publisher (the input
    /// produced it).
    pub from: ROption<PeerId>,
    /// A decoder can start here.
    pub keyframe: bool,
    /// Its size on the data channel (signed and sealed), bytes: what sending
    /// it costs.
    pub bytes: u64,
    /// Presentation time at the publisher, µs since its input started.
    pub pts_us: u64,
    /// Media it holds, µs.
    pub duration_us: u32,
}
