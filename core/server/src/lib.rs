//! The p2ner server: the entry point of swarms, and its client.
//!
//! The server keeps the catalogue of streams (who publishes what, with
//! which parameters) in an embedded SQLite database so that it survives a
//! crash, keeps who is live as soft state rebuilt by heartbeats, hands
//! joining clients the stream's parameters and a random sample of peers, and
//! answers paged browse requests. Only a stream's publisher, proved by its
//! ed25519 key, can change or remove it. The messages are
//! `p2ner_proto::server`'s.
//!
//! The logic is sans-IO ([`Service`]); [`server`] runs it on a `p2ner-net`
//! endpoint and [`client`] is what the engine and the CLI call.
//!
//! # Features
//!
//! - `server` (default): the server itself (`store`, `live`, `limits`,
//!   `service`, `server`), and with it SQLite. Without it this crate is the
//!   [`client`] alone, on `p2ner-net` and `p2ner-proto`: that is how the
//!   engine depends on it, so that a library that only joins streams never
//!   links a database.

#![forbid(unsafe_code)]
// Printing is the binary's business.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod client;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
pub mod live;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;

pub use client::{browse_many, ClientError, Joined, ServerClient};
#[cfg(feature = "server")]
pub use limits::{Bounds, RateLimit};
#[cfg(feature = "server")]
pub use server::{default_db_path, run_server, serve_blocking, Server, ServerError};
#[cfg(feature = "server")]
pub use service::{ServerConfig, Service};
#[cfg(feature = "server")]
pub use store::Store;
