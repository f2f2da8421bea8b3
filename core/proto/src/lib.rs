//! What p2ner's parts say to each other, and who they are.
//!
//! - [`identity`]: a publisher's ed25519 key, which proves ownership of a
//!   stream to servers and signs its media chunks;
//! - [`server`]: the messages between clients and a server (catalogue,
//!   swarm bootstrap, browsing), `[version][postcard]` in one datagram;
//! - [`peer`]: the messages between peers of one stream (envelopes on the
//!   control channel) and the layout of signed chunks on the data channel.
//!
//! Everything here is plain data and pure functions: no sockets, no clock,
//! no database. The network layer (`p2ner-net`) carries these bytes; the
//! server (`p2ner-server`) and the engine (`p2ner-engine`) speak them.

#![forbid(unsafe_code)]
// Printing is the binary's business.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod identity;
pub mod peer;
pub mod server;

pub use identity::{Identity, PublicKey, Signature};
pub use server::{PeerEntry, StreamId, PUBLISHER_PEER_ID};
