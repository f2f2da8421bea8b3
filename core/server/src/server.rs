//! The server process: a [`Service`] driven by a `p2ner-net` endpoint.
//!
//! One task owns the service (and with it the SQLite connection), so requests
//! are handled one at a time in arrival order; each is a few microseconds
//! unless it writes the database. Answers go back as `p2ner-net` responses
//! (acked, retransmitted); a request the service drops (malformed,
//! rate-limited) gets no answer at all.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2ner_net::{Endpoint, Event, Events, NetConfig};

use crate::service::{ServerConfig, Service};
use crate::store::{Store, StoreError};
use p2ner_proto::server::{encode, Request};

/// How long after its last datagram a client's connection state in the
/// network layer is dropped. Long enough for a lost answer to be
/// retransmitted (300 ms, then 600 ms, 1.2 s, ...); short enough that state
/// is kept only for the clients active in the last few seconds, not for every
/// peer of every swarm: that state is a few KB per address, the soft state
/// under 100 bytes per peer. A peer heartbeating every 15 s thus costs
/// network-layer state a third of the time.
const FORGET_IDLE: Duration = Duration::from_secs(5);

/// `$XDG_DATA_HOME/p2ner/server.db`, else `~/.local/share/p2ner/server.db`.
pub fn default_db_path() -> Option<PathBuf> {
    data_dir().map(|d| d.join("p2ner").join("server.db"))
}

/// `$XDG_DATA_HOME`, else `~/.local/share`.
fn data_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_DATA_HOME").or_else(|| var("HOME").map(|h| h.join(".local").join("share")))
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The catalogue database cannot be opened.
    #[error("database {path}: {error}")]
    Database {
        /// Its file.
        path: PathBuf,
        /// Why.
        error: StoreError,
    },
    /// The database's folder cannot be created.
    #[error("cannot create {path}: {error}")]
    DatabaseDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The UDP address cannot be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
}

/// The network settings a server needs: room for many concurrently active
/// clients (bounded: under a spoofed-source flood the network layer's state
/// stays under ~150 MB) and a deep event queue for bursts.
pub fn server_net_config() -> NetConfig {
    NetConfig {
        max_peers: 50_000,
        event_capacity: 16_384,
        socket_buffer: 8 << 20,
        ..NetConfig::default()
    }
}

/// A bound, ready server.
pub struct Server {
    endpoint: Endpoint,
    events: Events,
    service: Service,
}

impl Server {
    /// Opens the database (creating its folder) and binds `listen`.
    pub async fn bind(
        listen: SocketAddr,
        db: &Path,
        cfg: ServerConfig,
    ) -> Result<Self, ServerError> {
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| ServerError::DatabaseDir {
                path: dir.to_owned(),
                error,
            })?;
        }
        let database = |error| ServerError::Database {
            path: db.to_owned(),
            error,
        };
        let store = Store::open(db).map_err(database)?;
        let service = Service::new(store, cfg, Instant::now()).map_err(database)?;
        let (endpoint, events) =
            Endpoint::bind(listen, server_net_config())
                .await
                .map_err(|error| ServerError::Bind {
                    addr: listen,
                    error,
                })?;
        Ok(Server {
            endpoint,
            events,
            service,
        })
    }

    /// Where the server listens (the port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// Serves until the endpoint closes (in practice: until the process is
    /// stopped; there is nothing to flush, every change is committed when it
    /// is answered).
    pub async fn run(self) {
        let Server {
            endpoint,
            mut events,
            mut service,
        } = self;
        let stats_request = encode(&Request::Stats);
        let mut active: HashMap<SocketAddr, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(addr = %endpoint.local_addr(), "server listening");
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let now = Instant::now();
                    match event {
                        Event::Request { from, id, payload } => {
                            active.insert(from, now);
                            if payload[..] == stats_request[..] {
                                service.set_net_malformed(endpoint.stats().malformed_dropped);
                            }
                            let key = endpoint.peer_key(from);
                            if let Some(answer) = service.handle_payload_keyed(from, key, &payload, now) {
                                endpoint.respond(from, id, Bytes::from(answer));
                            }
                        }
                        // Fire-and-forget requests (heartbeats sent unreliably):
                        // handled, not answered.
                        Event::Message { from, payload } => {
                            active.insert(from, now);
                            let key = endpoint.peer_key(from);
                            let _ = service.handle_payload_keyed(from, key, &payload, now);
                        }
                        Event::Chunk { from, .. } => {
                            active.insert(from, now);
                            tracing::debug!(%from, "media chunk sent to the server: ignored");
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    service.tick(now);
                    active.retain(|addr, last| {
                        let keep = now.duration_since(*last) < FORGET_IDLE;
                        if !keep {
                            endpoint.forget(*addr);
                        }
                        keep
                    });
                }
            }
        }
    }
}

/// Binds and serves (see [`Server`]).
pub async fn run_server(
    listen: SocketAddr,
    db: &Path,
    cfg: ServerConfig,
) -> Result<(), ServerError> {
    Server::bind(listen, db, cfg).await?.run().await;
    Ok(())
}

/// Runs a server on its own runtime, for callers without one (the `p2ner`
/// command). `on_bound` gets the bound address before the first request is
/// served.
pub fn serve_blocking(
    listen: SocketAddr,
    db: &Path,
    cfg: ServerConfig,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    // Two workers: the service task, and the network layer's receive and
    // send tasks beside it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    rt.block_on(async {
        let server = Server::bind(listen, db, cfg).await?;
        on_bound(server.local_addr());
        server.run().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fit_the_network_layer() {
        assert!(p2ner_proto::server::MAX_MESSAGE <= NetConfig::default().max_control_payload());
    }
}
