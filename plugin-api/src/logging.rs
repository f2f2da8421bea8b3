//! Forwards a plugin's `tracing` events to the host.
//!
//! The plugin links its own copy of `tracing`, whose global dispatcher is not
//! the host's. This subscriber, installed when the host hands over its
//! services, asks the host's filter about each callsite once and forwards the
//! enabled events as formatted text.

use std::fmt::Write as _;
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing_core::{
    field::{Field, Visit},
    span, Event, Interest, Level, Metadata, Subscriber,
};

use crate::host::{HostServicesRef, LogLevel};

static HOST: OnceLock<HostServicesRef> = OnceLock::new();

pub(crate) fn install(host: HostServicesRef) {
    if HOST.set(host).is_ok() {
        // Fails only if the plugin installed a subscriber of its own, which is its choice.
        let _ = tracing::subscriber::set_global_default(Forward);
    }
}

pub(crate) fn host() -> Option<HostServicesRef> {
    HOST.get().copied()
}

fn level(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

fn host_enabled(meta: &Metadata<'_>) -> bool {
    host().is_some_and(|h| (h.log_enabled())(level(meta.level()), RStr::from_str(meta.target())))
}

struct Forward;

impl Subscriber for Forward {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if host_enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        host_enabled(meta)
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        // Spans are not forwarded; events inside them still are.
        span::Id::from_u64(1)
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let Some(host) = host() else { return };
        let meta = event.metadata();
        let mut text = Text(String::new());
        event.record(&mut text);
        (host.log())(
            level(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(&text.0),
        );
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}

/// `message k=v k=v`, the way tracing's own formatter writes fields.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.insert(0, ' ');
            }
            let message = format!("{value:?}");
            self.0.insert_str(0, &message);
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value}", field.name());
        }
    }
}
