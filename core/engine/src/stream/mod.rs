//! One stream on one peer, as a sans-IO state machine.
//!
//! A [`Session`] owns the stream's plugins (input or output, scheduler,
//! overlay), its chunk buffer and play-out clock, its neighbours and its
//! statistics. It is driven by events that carry the current time (a tick,
//! a message or chunk from a peer, a peer found unreachable) and answers with
//! [`SessionOutput`]s. The engine ([`crate::live`]) connects it to the network
//! layer; nothing in here reads a clock or touches a socket, so the same
//! plugin code can be driven by a simulated clock and network just as well.

mod buffer;
mod playout;
mod session;
mod stats;
mod uplink;

pub use buffer::{ChunkBuffer, Insert};
pub use playout::{PlayEvent, PlayoutClock, PlayoutConfig};
pub use session::{
    Role, Session, SessionConfig, SessionOutput, MAX_BANNED, MAX_BOOK, MAX_PLUGIN_MESSAGE,
    MAX_SENDS_PER_CHUNK, NEIGHBOUR_RATE, STRANGER_RATE,
};
pub use stats::{percentile, NetCounters, OverheadParts, Refused, Snapshot, StreamStats, Summary};
pub use uplink::{UplinkModel, CONTROL_OVERHEAD, DATAGRAM_OVERHEAD, QUEUE_TARGET_US};

use bytes::Bytes;

/// A chunk as the engine keeps and forwards it: sealed as it travels, so
/// forwarding never re-signs or copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's place in the stream, as the publisher numbered it.
    pub seq: u64,
    /// Media time since the input started.
    pub pts_us: u64,
    /// Media the chunk holds; the play-out clock advances by it.
    pub duration_us: u32,
    /// A decoder can start here, so playback (and resync) may begin here.
    pub keyframe: bool,
    /// When the publisher captured it, on the publisher's clock; the
    /// source-to-playback lag is measured against it.
    pub capture_us: u64,
    /// The signed bytes as they travel on the data channel.
    pub sealed: Bytes,
    /// Where the media starts in `sealed`.
    pub media_at: usize,
}

impl Chunk {
    /// The media bytes, without the header and signature they travel with.
    pub fn media(&self) -> &[u8] {
        &self.sealed[self.media_at..]
    }
}
