//! The p2ner engine.
//!
//! The engine is deliberately thin: everything a researcher wants to change
//! (schedulers, overlays, codecs, frontends) is a plugin loaded at run time
//! through [`plugins`]. What stays here is what every stream shares: plugin
//! discovery, the command line, and (later) the network channels and stats.

pub mod live;
pub mod plugins;
pub mod sim;
pub mod stream;
