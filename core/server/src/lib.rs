//! The p2ner server: the entry point of swarms.
//!
//! It keeps the catalogue of streams (who publishes what, with which
//! parameters) in an embedded SQLite database so that it survives a crash,
//! keeps who is live as soft state rebuilt by heartbeats, hands joining
//! clients the stream's parameters and a random sample of peers, and answers
//! paged browse requests. Only a stream's publisher, proved by its ed25519
//! key, can change or remove it.
//!
//! The logic is sans-IO ([`Service`]); [`server`] runs it on a `p2ner-net`
//! endpoint and [`client`] is what the engine and the CLI call.

pub mod client;
pub mod limits;
pub mod live;
pub mod server;
pub mod service;
pub mod store;

pub use client::{browse_many, ClientError, Joined, ServerClient};
pub use limits::{Bounds, RateLimit};
pub use server::{default_db_path, run_server, serve_blocking, Server, ServerError};
pub use service::{ServerConfig, Service};
pub use store::Store;
