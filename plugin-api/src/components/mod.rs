//! The five component interfaces.
//!
//! Each group has two faces. The `*Abi` trait is the `#[sabi_trait]` that
//! crosses the boundary: every method returns `RResult<_, PluginError>` so a
//! panic can come back as an error. The plain trait ([`crate::Scheduler`],
//! [`crate::Input`], ...) is what a plugin author implements; the adapter
//! [`Guarded`](crate::guard::Guarded) turns one into the other and runs each
//! call under its panic guard ([`crate::guard`]), so no author has to think
//! about unwinding across `extern "C"`.

// `#[sabi_trait]` expands to impls inside a const block; the lint is about
// that generated code, not ours.
#![allow(non_local_definitions)]

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

/// The adapters below (`impl SchedulerAbi for Guarded<T>`, ...) name it here.
pub(crate) use crate::guard::Guarded;
