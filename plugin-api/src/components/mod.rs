//! The five component interfaces.
//!
//! Each group has two faces. The `*Abi` trait is the `#[sabi_trait]` that
//! crosses the boundary: every method returns `RResult<_, PluginError>` so a
//! panic can come back as an error. The plain trait ([`crate::Scheduler`],
//! [`crate::Input`], ...) is what a plugin author implements; the adapter
//! [`Guarded`] turns one into the other and runs each call under
//! [`guard`], so no author has to think about unwinding across `extern "C"`.

// `#[sabi_trait]` expands to impls inside a const block; the lint is about
// that generated code, not ours.
#![allow(non_local_definitions)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RResult, RString};

use crate::PluginError;

pub mod frontend;
pub mod input;
pub mod output;
pub mod overlay;
pub mod scheduler;

pub use frontend::{FrontendAbi, FrontendAbi_TO};
pub use input::{InputAbi, InputAbi_TO};
pub use output::{OutputAbi, OutputAbi_TO};
pub use overlay::{OverlayAbi, OverlayAbi_TO};
pub use scheduler::{SchedulerAbi, SchedulerAbi_TO};

/// Kept out of line: the hot path of every call is the check above it.
#[cold]
#[inline(never)]
fn poisoned<R>(first: &RString) -> RResult<R, PluginError> {
    RResult::RErr(PluginError {
        message: format!("component is poisoned by an earlier panic: {first}").into(),
        panicked: true,
    })
}

/// A plugin author's component, wrapped so that a panic poisons it instead of
/// aborting the process.
pub struct Guarded<T> {
    pub(crate) inner: T,
    poisoned: Option<RString>,
}

impl<T> Guarded<T> {
    pub(crate) fn new(inner: T) -> Self {
        Guarded {
            inner,
            poisoned: None,
        }
    }

    /// Runs one component call; a panic becomes an error and poisons the component.
    #[inline(always)]
    pub(crate) fn guard<R>(
        &mut self,
        call: impl FnOnce(&mut T) -> Result<R, PluginError>,
    ) -> RResult<R, PluginError> {
        if let Some(first) = &self.poisoned {
            return poisoned(first);
        }
        let inner = &mut self.inner;
        match catch_unwind(AssertUnwindSafe(|| call(inner))) {
            Ok(result) => result.into(),
            Err(payload) => self.poison(payload),
        }
    }

    /// [`Guarded::guard`] for event handlers, which cannot fail but by panicking.
    #[inline(always)]
    pub(crate) fn event(&mut self, call: impl FnOnce(&mut T)) -> RResult<(), PluginError> {
        self.guard(|inner| {
            call(inner);
            Ok(())
        })
    }

    #[cold]
    #[inline(never)]
    fn poison<R>(&mut self, payload: Box<dyn std::any::Any + Send>) -> RResult<R, PluginError> {
        let message = crate::export::panic_message(payload);
        self.poisoned = Some(message.as_str().into());
        RResult::RErr(PluginError::panicked(message))
    }
}
