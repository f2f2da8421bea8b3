//! The p2ner engine.
//!
//! The engine is deliberately thin: everything a researcher wants to change
//! (schedulers, overlays, codecs, frontends) is a plugin loaded at run time
//! through [`plugins`]. What stays here is what every stream shares: plugin
//! discovery and loading ([`plugins`]), one stream on one peer as a sans-IO
//! state machine with its buffer, play-out clock and stats ([`stream`]), that
//! stream on the real network through `p2ner-net` and the servers' client
//! ([`live`]), and the same stream on a simulated clock and network
//! ([`sim`]).
//!
//! It has no command line, prints nothing (what a user should see comes out
//! as [`live::Report`]s) and links no database: the `p2ner` binary
//! (`p2ner-cli`) is the presentation, `p2ner-server` the catalogue.

#![deny(unsafe_code)]
// Printing is the binary's business.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod carrier;
pub mod live;
pub mod plugins;
pub mod sim;
pub mod stream;
