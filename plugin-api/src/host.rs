//! What the host lends every plugin library.

use abi_stable::{std_types::RStr, StableAbi};

/// Severity of a forwarded log event (the `tracing` levels).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `tracing::Level::ERROR`.
    Error = 1,
    /// `tracing::Level::WARN`.
    Warn = 2,
    /// `tracing::Level::INFO`.
    Info = 3,
    /// `tracing::Level::DEBUG`.
    Debug = 4,
    /// `tracing::Level::TRACE`.
    Trace = 5,
}

/// Services the host hands each library right after loading it.
///
/// A prefix type, so later hosts can add services after the last field and
/// older plugins keep working.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostServicesRef)))]
#[sabi(missing_field(panic))]
pub struct HostServices {
    /// Whether the host would record an event at this level for this target;
    /// lets a plugin skip formatting what nobody reads.
    pub log_enabled: extern "C" fn(level: LogLevel, target: RStr<'_>) -> bool,
    /// Records one event: the plugin's `tracing` target, level and message
    /// (fields already formatted into it).
    #[sabi(last_prefix_field)]
    pub log: extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>),
}
