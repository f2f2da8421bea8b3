//! `p2ner.output`: consumes the stream on the subscriber's side.

use abi_stable::{
    sabi_trait,
    std_types::{RResult, RSlice, RString},
    StableAbi,
};

use super::Guarded;
use crate::{PluginError, StreamFormat};

/// A chunk lent to an output; copy what must outlive the call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef<'a> {
    /// The chunk's sequence number in the stream.
    pub seq: u64,
    /// Media time since the input started.
    pub pts_us: u64,
    /// Media the chunk holds.
    pub duration_us: u32,
    /// The chunk starts with a keyframe: a decoder can start here.
    pub keyframe: bool,
    /// The media bytes, as the input produced them.
    pub data: RSlice<'a, u8>,
}

/// What an output did, reported when it finishes.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputReport {
    /// Chunks pushed.
    pub chunks: u64,
    /// Media bytes pushed.
    pub bytes: u64,
    /// Chunks announced missing through [`Output::gap`].
    pub gaps: u64,
    /// Chunks the output could not use (failed to decode, failed a check).
    pub errors: u64,
    /// Anything else worth a line in a summary (file written, codec seen).
    pub detail: RString,
}

/// An output, as a plugin author writes it.
///
/// Chunks arrive in order, at their play-out deadline. Creating an output
/// must be cheap; files and windows are opened by [`Output::start`].
pub trait Output: Send + 'static {
    /// Opens what the output writes to, for a stream of `format`.
    fn start(&mut self, _format: &StreamFormat) -> Result<(), PluginError> {
        Ok(())
    }
    /// The next chunk, at its play-out deadline.
    fn push(&mut self, chunk: ChunkRef<'_>) -> Result<(), PluginError>;
    /// Chunk `seq` missed its deadline and will never come: resynchronise.
    fn gap(&mut self, _seq: u64) -> Result<(), PluginError> {
        Ok(())
    }
    /// Flushes and closes; called once at the end.
    fn finish(&mut self) -> Result<OutputReport, PluginError> {
        Ok(OutputReport::default())
    }
}

/// The boundary face of [`Output`].
#[sabi_trait]
pub trait OutputAbi: Send {
    /// [`Output::start`].
    fn start(&mut self, format: &StreamFormat) -> RResult<(), PluginError>;
    /// [`Output::push`], by reference: one pointer crosses the boundary
    /// instead of the struct.
    fn push(&mut self, chunk: &ChunkRef<'_>) -> RResult<(), PluginError>;
    /// [`Output::gap`].
    fn gap(&mut self, seq: u64) -> RResult<(), PluginError>;
    /// [`Output::finish`].
    #[sabi(last_prefix_field)]
    fn finish(&mut self) -> RResult<OutputReport, PluginError>;
}

impl<T: Output> OutputAbi for Guarded<T> {
    fn start(&mut self, format: &StreamFormat) -> RResult<(), PluginError> {
        self.guard(|o| o.start(format))
    }
    #[inline]
    fn push(&mut self, chunk: &ChunkRef<'_>) -> RResult<(), PluginError> {
        self.guard(|o| o.push(*chunk))
    }
    fn gap(&mut self, seq: u64) -> RResult<(), PluginError> {
        self.guard(|o| o.gap(seq))
    }
    fn finish(&mut self) -> RResult<OutputReport, PluginError> {
        self.guard(|o| o.finish())
    }
}
