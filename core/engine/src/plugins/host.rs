//! The services the engine lends each plugin library: logging, for now.

use abi_stable::{prefix_type::WithMetadata, std_types::RStr};
use p2ner_plugin_api::{HostServices, HostServicesRef, LogLevel};
use tracing_log::AsTrace;

fn level(level: LogLevel) -> log::Level {
    match level {
        LogLevel::Error => log::Level::Error,
        LogLevel::Warn => log::Level::Warn,
        LogLevel::Info => log::Level::Info,
        LogLevel::Debug => log::Level::Debug,
        LogLevel::Trace => log::Level::Trace,
    }
}

/// Asks the host's subscriber (and so `RUST_LOG` / `-v`) about a plugin's
/// target, which is only known at run time; `log` metadata is the tracing
/// ecosystem's way to carry a dynamic target.
extern "C" fn log_enabled(lvl: LogLevel, target: RStr<'_>) -> bool {
    let meta = log::Metadata::builder()
        .level(level(lvl))
        .target(target.as_str())
        .build();
    if meta.level().as_trace() > tracing::level_filters::LevelFilter::current() {
        return false;
    }
    tracing::dispatcher::get_default(|d| d.enabled(&meta.as_trace()))
}

extern "C" fn log(lvl: LogLevel, target: RStr<'_>, message: RStr<'_>) {
    let _ = tracing_log::format_trace(
        &log::Record::builder()
            .level(level(lvl))
            .target(target.as_str())
            .args(format_args!("{}", message.as_str()))
            .build(),
    );
}

const SERVICES: &WithMetadata<HostServices> = &WithMetadata::new(HostServices { log_enabled, log });

/// The host services handed to every library right after it is loaded.
pub fn services() -> HostServicesRef {
    HostServicesRef(SERVICES.static_as_prefix())
}
