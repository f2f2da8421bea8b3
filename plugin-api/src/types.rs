//! Plain data that crosses the boundary in events and actions.

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

/// A peer as the engine names it to plugins.
///
/// It is the peer's 64-bit node id, drawn at random when a client starts and
/// carried in every message, so it stays the same when the peer's address
/// changes and is the same in a real swarm and in the simulator.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A peer an overlay may connect to: its id and where to reach it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Who it is: the same whatever address it is reached at.
    pub id: PeerId,
    /// `ip:port` (or `[ipv6]:port`) as the server or a neighbour reported it.
    pub addr: RString,
}

/// Which way media may flow on a neighbour link, as the overlay decided.
///
/// A mesh sets both; a tree sets `downstream` towards children and
/// `upstream` towards the parent, so one scheduler works on both graphs.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// This peer may receive chunks from the neighbour.
    pub upstream: bool,
    /// This peer may send chunks to the neighbour.
    pub downstream: bool,
}

impl Link {
    /// Media may flow both ways, as in a mesh.
    pub const BOTH: Link = Link {
        upstream: true,
        downstream: true,
    };
}

/// Which stripes (substreams) flow on a neighbour link, for an overlay of
/// several trees: bit `s` is stripe `s`, chunk `seq` being in stripe
/// `seq % stripes`. [`Link`] says only that media flows; a scheduler that
/// pushes substreams needs to know which ones, or it asks a tree parent for
/// stripes the tree gave to others and overloads an uplink the tree had
/// counted for one child. Appended after the first release, with
/// `Overlay::stripe_links` and `Scheduler::on_stripe_links`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StripeLink {
    /// The neighbour.
    pub peer: PeerId,
    /// Stripes this peer receives from the neighbour (it is the parent).
    pub upstream: u64,
    /// Stripes this peer sends the neighbour (it is a child).
    pub downstream: u64,
}

/// What the data channel measured about one neighbour, for overlays that
/// replace slow or useless neighbours.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Default)]
pub struct NeighbourReport {
    /// Smoothed round-trip time (0 before any sample).
    pub rtt_us: u64,
    /// What it sent here over the last report period.
    pub down_bps: u64,
    /// What this peer sent it over the last report period.
    pub up_bps: u64,
    /// Chunks received from this neighbour that were first copies.
    pub useful_chunks: u64,
    /// Chunks received from this neighbour that were already here.
    pub duplicate_chunks: u64,
    /// Share of datagrams lost on the link; the engine reports 0 until the data channel's loss estimate reaches the session.
    pub loss_rate: f64,
}

/// This peer's uplink, shared by every neighbour (and every stream of the
/// engine): what schedulers and overlays need to spend scarce upload well.
///
/// Delivered every tick through `on_upload`, before the tick's per-link
/// capacities. Appended to the first release of ABI 1.0: a plugin built
/// before never sees it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Upload {
    /// What the uplink can carry, bit/s: the upload cap when one is set
    /// (`capped`), otherwise the highest rate measured so far (a lower bound;
    /// 0 before anything was sent).
    pub capacity_bps: u64,
    /// `capacity_bps` is a configured cap, not an estimate.
    pub capped: bool,
    /// What this peer sent over the last second, all neighbours, bit/s.
    pub rate_bps: u64,
    /// Media bytes handed to the data channel and not yet on the wire.
    pub queued_bytes: u64,
    /// How long that queue takes to drain at `capacity_bps`, µs (0 uncapped
    /// or empty): a chunk handed over now leaves no earlier than this.
    pub queued_us: u64,
    /// Bytes the scheduler may hand to the data channel this tick without
    /// queueing beyond the channel's short target, all neighbours together;
    /// `u64::MAX` when the uplink is not capped.
    pub budget_bytes: u64,
    /// The stream's own rate, bit/s: `capacity_bps / stream_bps` is how
    /// many full copies of the stream this uplink can carry.
    pub stream_bps: u64,
}

/// What an input produces, so outputs can set themselves up.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamFormat {
    /// The container of chunk payloads: `mpegts`, `synthetic`, ...
    pub container: RString,
    /// Free text for people: codecs, resolution, frame rate.
    pub description: RString,
    /// The nominal bitrate, for outputs that size buffers by it.
    pub bitrate_kbps: u32,
    /// How much media one chunk holds.
    pub chunk_us: u32,
}

/// One chunk of media as an input produces it.
///
/// The engine gives it a sequence number, signs it and hands it to the
/// scheduler; the input only says when it was captured and what it holds.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk {
    /// Capture time at the publisher, microseconds since the input started.
    pub pts_us: u64,
    /// Media the chunk holds; the play-out clock advances by it.
    pub duration_us: u32,
    /// A decoder can start here (the chunk begins with a keyframe).
    pub keyframe: bool,
    /// The media bytes, as an output will get them.
    pub data: RVec<u8>,
}
