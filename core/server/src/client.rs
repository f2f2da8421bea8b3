//! Talking to servers: what the engine (publish, subscribe) and `p2ner
//! streams` call.
//!
//! A [`ServerClient`] borrows the caller's endpoint, so that the address a
//! server records for a peer is the very socket its neighbours will reach it
//! on. Each call is one `p2ner-net` request (acked and retransmitted by the
//! network layer) bounded by the client's timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use p2ner_net::{Endpoint, SendError};

use p2ner_proto::identity::Identity;
use p2ner_proto::server::{
    decode, encode, ErrorCode, Page, PeerEntry, Request, Response, ServerStats, Signed, SignedOp,
    StreamId, StreamInfo, StreamParams, StreamSummary,
};

/// Default time a request may take, retransmissions included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Browse pages fetched from one server at most (a bound, not a limit one
/// expects to meet: a page holds a few streams, a server at most 10,000).
const MAX_PAGES: usize = 4096;

/// Why a server call failed: the caller tries another server on `Network`, gives up on `Refused`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server did not answer (gone, or the network lost it).
    #[error("server {server} did not answer: {error}")]
    Network {
        /// The server asked.
        server: SocketAddr,
        /// What the network layer saw.
        error: SendError,
    },
    /// The server answered with a refusal.
    #[error("server {server} refused: {message}")]
    Refused {
        /// The server asked.
        server: SocketAddr,
        /// Its reason, for callers that act on it.
        code: ErrorCode,
        /// Its reason, for people.
        message: String,
    },
    /// The server answered something this client does not understand.
    #[error("server {server} sent an answer this client does not understand")]
    Protocol {
        /// The server asked.
        server: SocketAddr,
    },
}

impl ClientError {
    /// The server's reason, when it answered with a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What a joining client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The stream's catalogue entry.
    pub info: StreamInfo,
    /// The publisher (flagged) when online, then a random sample of peers.
    pub peers: Vec<PeerEntry>,
}

/// A strictly increasing counter for signed messages: microseconds since the
/// epoch, bumped past the last one handed out. A restarted publisher thus
/// starts above whatever it sent before without storing anything.
pub fn next_counter() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A handle on one server.
#[derive(Clone)]
pub struct ServerClient {
    endpoint: Endpoint,
    server: SocketAddr,
    timeout: Duration,
}

impl ServerClient {
    /// A client of `server` over an existing endpoint (the one the stream uses, so the server sees the address peers will reach).
    pub fn new(endpoint: Endpoint, server: SocketAddr) -> Self {
        ServerClient {
            endpoint,
            server,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long to wait for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The server this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends any payload and returns the raw answer (tests of malformed
    /// input, protocol experiments).
    pub async fn request_raw(&self, payload: Bytes) -> Result<Bytes, ClientError> {
        self.endpoint
            .request(self.server, payload, self.timeout)
            .await
            .map_err(|error| ClientError::Network {
                server: self.server,
                error,
            })
    }

    async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let answer = self.request_raw(Bytes::from(encode(req))).await?;
        match decode::<Response>(&answer) {
            Ok(Response::Error { code, message }) => Err(ClientError::Refused {
                server: self.server,
                code,
                message,
            }),
            Ok(r) => Ok(r),
            Err(_) => Err(self.protocol()),
        }
    }

    fn protocol(&self) -> ClientError {
        ClientError::Protocol {
            server: self.server,
        }
    }

    async fn signed(&self, id: &Identity, op: SignedOp) -> Result<Response, ClientError> {
        self.call(&Request::Signed(Box::new(Signed::new(
            id,
            next_counter(),
            op,
        ))))
        .await
    }

    /// Registers a stream under its derived id ([`StreamId::derive`]); the
    /// same key registering the same title again updates it.
    pub async fn register(
        &self,
        id: &Identity,
        params: StreamParams,
    ) -> Result<StreamId, ClientError> {
        let stream = StreamId::derive(&id.public_key(), &params.title);
        self.register_as(id, stream, params).await
    }

    /// Registers a stream under an id of the publisher's choosing.
    pub async fn register_as(
        &self,
        id: &Identity,
        stream: StreamId,
        params: StreamParams,
    ) -> Result<StreamId, ClientError> {
        match self
            .signed(id, SignedOp::Register { id: stream, params })
            .await?
        {
            Response::Registered { id } => Ok(id),
            _ => Err(self.protocol()),
        }
    }

    /// Changes a published stream's parameters (signed by its publisher).
    pub async fn update(
        &self,
        id: &Identity,
        stream: &StreamId,
        params: StreamParams,
    ) -> Result<(), ClientError> {
        self.expect_ok(
            self.signed(
                id,
                SignedOp::Update {
                    id: stream.clone(),
                    params,
                },
            )
            .await?,
        )
    }

    /// Removes a published stream from the catalogue (signed by its publisher).
    pub async fn remove(&self, id: &Identity, stream: &StreamId) -> Result<(), ClientError> {
        self.expect_ok(
            self.signed(id, SignedOp::Remove { id: stream.clone() })
                .await?,
        )
    }

    /// Marks the stream online, at the address this endpoint sends from.
    /// Send it well within the server's publisher TTL (30 s by default).
    pub async fn publisher_heartbeat(
        &self,
        id: &Identity,
        stream: &StreamId,
    ) -> Result<(), ClientError> {
        self.expect_ok(
            self.signed(id, SignedOp::Heartbeat { id: stream.clone() })
                .await?,
        )
    }

    /// Joins a swarm: the stream's parameters and a peer sample.
    pub async fn join(&self, stream: &StreamId, peer_id: u64) -> Result<Joined, ClientError> {
        match self
            .call(&Request::Join {
                stream: stream.clone(),
                peer_id,
            })
            .await?
        {
            Response::Joined { info, peers } => Ok(Joined { info, peers }),
            _ => Err(self.protocol()),
        }
    }

    /// Another random sample of the swarm.
    pub async fn peers(
        &self,
        stream: &StreamId,
        peer_id: u64,
    ) -> Result<Vec<PeerEntry>, ClientError> {
        match self
            .call(&Request::Peers {
                stream: stream.clone(),
                peer_id,
            })
            .await?
        {
            Response::Peers { peers } => Ok(peers),
            _ => Err(self.protocol()),
        }
    }

    /// Keeps this peer listed (within the server's peer TTL, 30 s by default).
    pub async fn peer_heartbeat(&self, stream: &StreamId, peer_id: u64) -> Result<(), ClientError> {
        let r = self
            .call(&Request::PeerHeartbeat {
                stream: stream.clone(),
                peer_id,
            })
            .await?;
        self.expect_ok(r)
    }

    /// Leaves a swarm, so the server stops handing this peer out.
    pub async fn leave(&self, stream: &StreamId, peer_id: u64) -> Result<(), ClientError> {
        let r = self
            .call(&Request::Leave {
                stream: stream.clone(),
                peer_id,
            })
            .await?;
        self.expect_ok(r)
    }

    /// One page of the catalogue, from position `offset` (0 for the first;
    /// the page says where the next starts).
    pub async fn browse(&self, filter: &str, offset: u32) -> Result<Page, ClientError> {
        match self
            .call(&Request::Browse {
                filter: filter.to_owned(),
                offset,
            })
            .await?
        {
            Response::Page(p) => Ok(p),
            _ => Err(self.protocol()),
        }
    }

    /// Every matching stream, page after page.
    pub async fn browse_all(&self, filter: &str) -> Result<Vec<StreamSummary>, ClientError> {
        let mut out = Vec::new();
        let mut offset = 0;
        for _ in 0..MAX_PAGES {
            let page = self.browse(filter, offset).await?;
            out.extend(page.items);
            match page.next {
                Some(n) if n > offset => offset = n,
                _ => break,
            }
        }
        Ok(out)
    }

    /// The catalogue entry of one stream.
    pub async fn info(&self, stream: &StreamId) -> Result<StreamInfo, ClientError> {
        match self
            .call(&Request::Info {
                stream: stream.clone(),
            })
            .await?
        {
            Response::Info(i) => Ok(i),
            _ => Err(self.protocol()),
        }
    }

    /// The server's counters.
    pub async fn stats(&self) -> Result<ServerStats, ClientError> {
        match self.call(&Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            _ => Err(self.protocol()),
        }
    }

    fn expect_ok(&self, r: Response) -> Result<(), ClientError> {
        match r {
            Response::Ok => Ok(()),
            _ => Err(self.protocol()),
        }
    }
}

/// Browses several servers at once: every stream found, with the server it
/// is on (in the order of `servers`), and the servers that failed, with why.
pub async fn browse_many(
    endpoint: &Endpoint,
    servers: &[SocketAddr],
    filter: &str,
    timeout: Duration,
) -> (
    Vec<(SocketAddr, StreamSummary)>,
    Vec<(SocketAddr, ClientError)>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &server) in servers.iter().enumerate() {
        let client = ServerClient::new(endpoint.clone(), server).with_timeout(timeout);
        let filter = filter.to_owned();
        tasks.spawn(async move { (i, server, client.browse_all(&filter).await) });
    }
    let mut results = Vec::with_capacity(servers.len());
    while let Some(done) = tasks.join_next().await {
        results.push(done.expect("browse tasks do not panic"));
    }
    results.sort_by_key(|(i, _, _)| *i);
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for (_, server, result) in results {
        match result {
            Ok(items) => found.extend(items.into_iter().map(|s| (server, s))),
            Err(e) => failed.push((server, e)),
        }
    }
    (found, failed)
}

/// Synchronous wrappers for callers without a tokio runtime (the `p2ner`
/// command, end-to-end tests): each owns a small runtime and an endpoint.
pub mod blocking {
    use super::*;
    use p2ner_net::{Events, NetConfig};
    use p2ner_proto::server::StreamId;
    use std::io;

    /// A [`ServerClient`] with its own runtime and endpoint.
    pub struct Client {
        rt: tokio::runtime::Runtime,
        inner: ServerClient,
        endpoint: Endpoint,
        _events: Events,
    }

    impl Client {
        /// Binds an endpoint on an ephemeral port of the server's address
        /// family.
        pub fn connect(server: SocketAddr) -> io::Result<Self> {
            let any: SocketAddr = if server.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            Self::connect_from(any, server)
        }

        /// Binds the endpoint on `local` (e.g. `127.0.0.2:0`, to appear as
        /// another source).
        pub fn connect_from(local: SocketAddr, server: SocketAddr) -> io::Result<Self> {
            let rt = runtime()?;
            let (endpoint, events) = rt.block_on(Endpoint::bind(local, NetConfig::default()))?;
            Ok(Client {
                inner: ServerClient::new(endpoint.clone(), server),
                rt,
                endpoint,
                _events: events,
            })
        }

        /// [`ServerClient::with_timeout`].
        pub fn with_timeout(mut self, timeout: Duration) -> Self {
            self.inner = self.inner.with_timeout(timeout);
            self
        }

        /// The address this client sends from (what the server records).
        pub fn local_addr(&self) -> SocketAddr {
            self.endpoint.local_addr()
        }

        /// The endpoint the client sends from.
        pub fn endpoint(&self) -> &Endpoint {
            &self.endpoint
        }

        /// Sends any payload as a request and returns the raw answer: for tests of malformed input.
        pub fn request_raw(&self, payload: Vec<u8>) -> Result<Bytes, ClientError> {
            self.rt
                .block_on(self.inner.request_raw(Bytes::from(payload)))
        }

        /// Sends any payload as a one-way (acknowledged) message, the way a
        /// client sends what needs no answer; the server handles it and
        /// answers nothing.
        pub fn send_raw(&self, payload: Vec<u8>) -> Result<(), ClientError> {
            let server = self.inner.server();
            self.rt
                .block_on(self.endpoint.send_reliable(server, Bytes::from(payload)))
                .map_err(|error| ClientError::Network { server, error })
        }

        /// [`ServerClient::register`], blocking.
        pub fn register(
            &self,
            id: &Identity,
            params: StreamParams,
        ) -> Result<StreamId, ClientError> {
            self.rt.block_on(self.inner.register(id, params))
        }

        /// [`ServerClient::register_as`], blocking.
        pub fn register_as(
            &self,
            id: &Identity,
            stream: StreamId,
            params: StreamParams,
        ) -> Result<StreamId, ClientError> {
            self.rt.block_on(self.inner.register_as(id, stream, params))
        }

        /// [`ServerClient::update`], blocking.
        pub fn update(
            &self,
            id: &Identity,
            stream: &StreamId,
            params: StreamParams,
        ) -> Result<(), ClientError> {
            self.rt.block_on(self.inner.update(id, stream, params))
        }

        /// [`ServerClient::remove`], blocking.
        pub fn remove(&self, id: &Identity, stream: &StreamId) -> Result<(), ClientError> {
            self.rt.block_on(self.inner.remove(id, stream))
        }

        /// [`ServerClient::publisher_heartbeat`], blocking.
        pub fn publisher_heartbeat(
            &self,
            id: &Identity,
            stream: &StreamId,
        ) -> Result<(), ClientError> {
            self.rt.block_on(self.inner.publisher_heartbeat(id, stream))
        }

        /// [`ServerClient::join`], blocking.
        pub fn join(&self, stream: &StreamId, peer_id: u64) -> Result<Joined, ClientError> {
            self.rt.block_on(self.inner.join(stream, peer_id))
        }

        /// [`ServerClient::peers`], blocking.
        pub fn peers(
            &self,
            stream: &StreamId,
            peer_id: u64,
        ) -> Result<Vec<PeerEntry>, ClientError> {
            self.rt.block_on(self.inner.peers(stream, peer_id))
        }

        /// [`ServerClient::peer_heartbeat`], blocking.
        pub fn peer_heartbeat(&self, stream: &StreamId, peer_id: u64) -> Result<(), ClientError> {
            self.rt.block_on(self.inner.peer_heartbeat(stream, peer_id))
        }

        /// [`ServerClient::leave`], blocking.
        pub fn leave(&self, stream: &StreamId, peer_id: u64) -> Result<(), ClientError> {
            self.rt.block_on(self.inner.leave(stream, peer_id))
        }

        /// [`ServerClient::browse`], blocking.
        pub fn browse(&self, filter: &str, offset: u32) -> Result<Page, ClientError> {
            self.rt.block_on(self.inner.browse(filter, offset))
        }

        /// [`ServerClient::browse_all`], blocking.
        pub fn browse_all(&self, filter: &str) -> Result<Vec<StreamSummary>, ClientError> {
            self.rt.block_on(self.inner.browse_all(filter))
        }

        /// [`ServerClient::info`], blocking.
        pub fn info(&self, stream: &StreamId) -> Result<StreamInfo, ClientError> {
            self.rt.block_on(self.inner.info(stream))
        }

        /// [`ServerClient::stats`], blocking.
        pub fn stats(&self) -> Result<ServerStats, ClientError> {
            self.rt.block_on(self.inner.stats())
        }
    }

    /// [`super::browse_many`] from a fresh endpoint.
    #[allow(clippy::type_complexity)]
    pub fn browse_many(
        servers: &[SocketAddr],
        filter: &str,
        timeout: Duration,
    ) -> io::Result<(
        Vec<(SocketAddr, StreamSummary)>,
        Vec<(SocketAddr, ClientError)>,
    )> {
        let rt = runtime()?;
        rt.block_on(async {
            // [::] also reaches IPv4 servers (dual stack); 0.0.0.0 does not
            // reach IPv6 ones.
            let local: SocketAddr = if servers.iter().all(|s| s.is_ipv4()) {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let (endpoint, _events) = Endpoint::bind(local, NetConfig::default()).await?;
            Ok(super::browse_many(&endpoint, servers, filter, timeout).await)
        })
    }

    fn runtime() -> io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}
