//! What flows back from the engine about a plugin's own actions (refusals)
//! and what a plugin reports about itself (its own counters and gauges).
//!
//! Both were appended to ABI 1.0: a library built before never hears of a
//! refusal and reports nothing.

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

use crate::PeerId;

/// Why the engine did not carry out an action. A `u8` code rather than an
/// enum so later minors can add reasons without changing the type's shape:
/// match on the constants and treat any other value as "refused for a
/// reason this plugin does not know".
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RefusalKind(pub u8);

impl RefusalKind {
    /// `SendChunk` towards a neighbour whose link had no room left this tick
    /// (its `can_send_bytes`, or the shared upload budget, was spent).
    pub const CHUNK_NO_ROOM: RefusalKind = RefusalKind(1);
    /// `SendChunk` of a chunk that is not in the local buffer (never
    /// arrived, or older than the window).
    pub const CHUNK_NOT_BUFFERED: RefusalKind = RefusalKind(2);
    /// `SendChunk` or `SendMessage` to a peer that is not a neighbour whose
    /// link is up.
    pub const NOT_NEIGHBOUR: RefusalKind = RefusalKind(3);
    /// `SendMessage` with a payload over [`crate::Setup::max_message_bytes`].
    pub const MESSAGE_TOO_LARGE: RefusalKind = RefusalKind(5);
    // 4 is kept free: it was meant for a chunk on a link that is not
    // `downstream`, which the engine does not refuse today.

    /// The name used in stats (`"refused"` in `--stats` lines and the summary).
    pub fn name(self) -> &'static str {
        match self {
            Self::CHUNK_NO_ROOM => "chunk_no_room",
            Self::CHUNK_NOT_BUFFERED => "chunk_not_buffered",
            Self::NOT_NEIGHBOUR => "not_neighbour",
            Self::MESSAGE_TOO_LARGE => "message_too_large",
            _ => "other",
        }
    }
}

impl std::fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One action the engine refused, delivered to the plugin that asked right
/// after the event whose actions held it (in action order), and counted in
/// the stream's stats.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Refusal {
    /// Why.
    pub kind: RefusalKind,
    /// The peer the action named.
    pub peer: PeerId,
    /// The chunk, for `SendChunk` refusals (0 otherwise).
    pub seq: u64,
    /// The size of what was refused, bytes: the sealed chunk, or the
    /// message payload (0 when unknown, a chunk not buffered).
    pub bytes: u64,
    /// The limit it met, bytes: what the link still took, or the largest
    /// message (0 when no limit applies).
    pub limit: u64,
}

/// Whether a number only grows (a count of things that happened) or goes
/// up and down (a level: a queue length, a window).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic since the plugin started; `--stats` shows the total.
    Counter,
    /// The value right now.
    Gauge,
}

/// One of a plugin's own numbers.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Metric {
    /// Short `snake_case` name, unique within the plugin; the engine shows it
    /// under the plugin's own key (`"scheduler.NAME"`), so it need not be
    /// prefixed.
    pub name: RString,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The value (a counter's total since the plugin started).
    pub value: f64,
}

/// Collects a plugin's metrics when the engine asks (`metrics`, about once
/// a second and once when the stream ends).
pub struct Metrics<'a>(&'a mut RVec<Metric>);

impl<'a> Metrics<'a> {
    /// Wraps the engine's list (the adapters and the test kit do this).
    pub fn new(list: &'a mut RVec<Metric>) -> Self {
        Metrics(list)
    }

    /// A count of things that happened (monotonic).
    pub fn counter(&mut self, name: &str, value: u64) {
        self.0.push(Metric {
            name: name.into(),
            kind: MetricKind::Counter,
            value: value as f64,
        });
    }

    /// A level that goes up and down.
    pub fn gauge(&mut self, name: &str, value: f64) {
        self.0.push(Metric {
            name: name.into(),
            kind: MetricKind::Gauge,
            value,
        });
    }

    /// What was reported so far.
    pub fn as_slice(&self) -> &[Metric] {
        self.0.as_slice()
    }
}
