//! `p2ner.input`: turns a source into a live stream of timestamped chunks.

use abi_stable::{
    sabi_trait,
    std_types::{RResult, RVec},
    StableAbi,
};

use super::Guarded;
use crate::{MediaChunk, PluginError, StreamFormat};

/// Whether more chunks will come.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputState {
    /// More chunks will come.
    Live,
    /// The source ended (a file without looping); the stream winds down.
    Ended,
}

/// An input, as a plugin author writes it.
///
/// Media pipelines run on the input's own threads; the engine polls at its
/// tick rate and takes whatever chunks are complete. Creating an input must
/// be cheap and open nothing: the source is opened by [`Input::start`].
pub trait Input: Send + 'static {
    /// Opens the source; an unopenable source is an error naming it.
    fn start(&mut self, now_us: u64) -> Result<StreamFormat, PluginError>;
    /// Appends every chunk that is complete at `now_us` to `out`.
    fn poll(&mut self, now_us: u64, out: &mut RVec<MediaChunk>) -> Result<InputState, PluginError>;
    /// Closes the source and joins the input's threads.
    fn stop(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// The boundary face of [`Input`].
#[sabi_trait]
pub trait InputAbi: Send {
    /// [`Input::start`].
    fn start(&mut self, now_us: u64) -> RResult<StreamFormat, PluginError>;
    /// [`Input::poll`].
    fn poll(&mut self, now_us: u64, out: &mut RVec<MediaChunk>)
        -> RResult<InputState, PluginError>;
    /// [`Input::stop`].
    #[sabi(last_prefix_field)]
    fn stop(&mut self) -> RResult<(), PluginError>;
}

impl<T: Input> InputAbi for Guarded<T> {
    fn start(&mut self, now_us: u64) -> RResult<StreamFormat, PluginError> {
        self.guard(|i| i.start(now_us))
    }
    fn poll(
        &mut self,
        now_us: u64,
        out: &mut RVec<MediaChunk>,
    ) -> RResult<InputState, PluginError> {
        self.guard(|i| i.poll(now_us, out))
    }
    fn stop(&mut self) -> RResult<(), PluginError> {
        self.guard(|i| i.stop())
    }
}
