//! `p2ner server`: run a swarm's entry point.
//!
//! Prints `listening on ADDR` on stdout once the socket is bound (so scripts
//! and tests can start it on port 0 and read the port), then serves until
//! killed. Killing it at any moment is safe: every change is committed to
//! the database before it is answered.
//!
//! Its counters (datagrams dropped as malformed, rate-limited requests,
//! forged changes refused, live peers, ...) are answered to a `Stats`
//! request ([`p2ner_server::ServerClient::stats`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Args;
use p2ner_server::{RateLimit, ServerConfig};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (UDP); port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7700")]
    pub listen: String,
    /// The catalogue database [default: ~/.local/share/p2ner/server.db].
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Seconds without a heartbeat before a peer leaves the peer lists.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub peer_ttl: f64,
    /// Seconds without a heartbeat before a stream is shown offline
    /// (publishers heartbeat every second).
    #[arg(long, value_name = "SECS", default_value_t = 4.0)]
    pub publisher_ttl: f64,
    /// Seconds a stream may stay offline before it is removed.
    #[arg(long, value_name = "SECS", default_value_t = 86_400.0)]
    pub stream_expiry: f64,
    /// Peers handed to a joining client.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub sample: usize,
    /// Requests per second allowed per source IP (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 200.0)]
    pub rate: f64,
    /// Requests a source IP may burst above its rate.
    #[arg(long, value_name = "N", default_value_t = 400.0)]
    pub burst: f64,
    /// Peers listed per stream at most.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_peers_per_stream: usize,
    /// Streams one publisher key may register at most.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_streams_per_publisher: usize,
}

fn seconds(name: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| anyhow!("--{name} {value}: not a duration"))
}

/// Resolves `host:port` (or an IP literal) to its first address.
pub(crate) fn resolve(what: &str, addr: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .map_err(|e| anyhow!("{what} {addr:?} is not an address: {e}"))?
        .next()
        .ok_or_else(|| anyhow!("{what} {addr:?} resolves to no address"))
}

pub fn run(args: &ServerArgs) -> Result<ExitCode> {
    let listen = resolve("listen address", &args.listen)?;
    let db = match &args.db {
        Some(p) => p.clone(),
        None => p2ner_server::default_db_path()
            .ok_or_else(|| anyhow!("no home folder for the database: pass --db PATH"))?,
    };
    let mut cfg = ServerConfig {
        peer_ttl: seconds("peer-ttl", args.peer_ttl)?,
        publisher_ttl: seconds("publisher-ttl", args.publisher_ttl)?,
        stream_expiry: seconds("stream-expiry", args.stream_expiry)?,
        sample_size: args.sample,
        rate_limit: (args.rate > 0.0).then_some(RateLimit {
            per_second: args.rate,
            burst: args.burst.max(1.0),
        }),
        ..ServerConfig::default()
    };
    cfg.bounds.peers_per_stream = args.max_peers_per_stream;
    cfg.bounds.streams_per_publisher = args.max_streams_per_publisher;
    p2ner_server::serve_blocking(listen, &db, cfg, |addr| {
        use std::io::Write;
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
        tracing::info!(db = %db.display(), "catalogue database");
    })?;
    Ok(ExitCode::SUCCESS)
}
