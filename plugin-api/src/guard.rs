//! The panic guard: a plugin's panic becomes an error, never an abort.
//!
//! abi_stable's `extern "C"` shims abort the process when a panic reaches
//! them. So every component call runs inside [`Guarded::guard`]: a panic is
//! caught, its message and location become a [`PluginError`] with
//! `panicked == true`, and the component is poisoned (every later call fails
//! at once with the first message). [`install_panic_hook`] replaces the
//! default hook, which would print to the host's stderr, with one that keeps
//! the message for the error instead; the loader installs it before a
//! library's `register` runs, and a panic there is caught the same way.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::std_types::{RResult, RString};

use crate::PluginError;

/// Kept out of line: the hot path of every call is the check in
/// [`Guarded::guard`] that leads here.
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
        let message = panic_message(payload);
        self.poisoned = Some(message.as_str().into());
        RResult::RErr(PluginError::panicked(message))
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the default hook (which would print to the host's stderr) with
/// one that remembers the message and location for the error it becomes, and
/// logs it through the host at debug level.
pub(crate) fn install_panic_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            let message = match info.location() {
                Some(at) => format!("{text} (at {}:{})", at.file(), at.line()),
                None => text,
            };
            tracing::debug!(target: "p2ner_plugin::panic", "{message}");
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(message));
        }));
    });
}

/// The message of a caught panic: the hook's version (with location) when it
/// ran on this thread, otherwise what the payload holds.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
        return message;
    }
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::RBox;

    use super::*;
    use crate::components::SchedulerAbi_TO;
    use crate::Scheduler;

    #[test]
    fn guard_turns_a_panic_into_an_error_and_poisons() {
        struct Boom;
        impl Scheduler for Boom {
            fn on_tick(&mut self, _now_us: u64, _out: &mut crate::SchedOut<'_>) {
                panic!("boom");
            }
        }
        let mut s = SchedulerAbi_TO::from_ptr(RBox::new(Guarded::new(Boom)), TD_Opaque);
        let mut out = abi_stable::std_types::RVec::new();
        let err = s.on_tick(1, &mut out).unwrap_err();
        assert!(err.panicked && err.message.contains("boom"), "{err}");
        let again = s.on_tick(2, &mut out).unwrap_err();
        assert!(again.message.contains("poisoned"), "{again}");
    }
}
