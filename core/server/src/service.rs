//! The server's logic, without I/O: a payload and its source address in, an
//! answer out, the clock passed in. The network loop ([`crate::server`]) only
//! moves bytes, so everything here is unit-tested with made-up addresses and
//! times.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::limits::{Bounds, RateLimit, RateLimiter};
use crate::live::{Live, PeerError, Ttls};
use crate::store::{Store, StoreError, StoredStream};
use p2ner_proto::identity::PublicKey;
use p2ner_proto::server::{
    decode, encode, encoded_len, DecodeError, ErrorCode, Page, PeerEntry, Request, Response,
    ServerStats, Signed, SignedOp, StreamId, StreamInfo, StreamParams, StreamSummary, MAX_MESSAGE,
    PROTO_VERSION, PUBLISHER_PEER_ID,
};

/// How a server behaves; every field has a command-line flag.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A peer not heard from for this long leaves the peer lists.
    pub peer_ttl: Duration,
    /// A publisher not heard from for this long makes its stream offline.
    /// A few of the publisher's heartbeat intervals (1 s), so that joiners
    /// and running subscribers that ask hear of a dead publisher within
    /// seconds, while one or two lost heartbeats change nothing.
    pub publisher_ttl: Duration,
    /// An offline stream is removed from the catalogue after this long.
    pub stream_expiry: Duration,
    /// Peers handed to a joining client (besides the publisher); fewer if
    /// they would not fit one datagram.
    pub sample_size: usize,
    /// Per source IP; `None` turns rate limiting off (benchmarks).
    pub rate_limit: Option<RateLimit>,
    /// What a client may store.
    pub bounds: Bounds,
    /// Seed of the peer-sampling generator (`None`: random).
    pub seed: Option<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            peer_ttl: Duration::from_secs(30),
            publisher_ttl: Duration::from_secs(4),
            stream_expiry: Duration::from_secs(24 * 3600),
            sample_size: 20,
            rate_limit: Some(RateLimit::default()),
            bounds: Bounds::default(),
            seed: None,
        }
    }
}

/// A catalogue entry as kept in memory.
struct Entry {
    publisher: PublicKey,
    params: StreamParams,
    /// Lower-cased id, title and description: what browse filters match.
    search: String,
}

impl Entry {
    fn new(id: &StreamId, publisher: PublicKey, params: StreamParams) -> Self {
        let search = format!("{}\n{}\n{}", id, params.title, params.description).to_lowercase();
        Entry {
            publisher,
            params,
            search,
        }
    }
}

/// The server: catalogue (in SQLite, mirrored in memory for reads), soft
/// state, rate limiter and counters.
pub struct Service {
    store: Store,
    catalogue: BTreeMap<StreamId, Entry>,
    per_publisher: HashMap<PublicKey, usize>,
    /// Last accepted counter per key (mirrors the store).
    counters: HashMap<PublicKey, u64>,
    live: Live,
    limiter: Option<RateLimiter>,
    cfg: ServerConfig,
    rng: fastrand::Rng,
    stats: ServerStats,
    started: Instant,
    last_limiter_sweep: Instant,
    /// The authenticated key of the request being handled, if any.
    link_key: Option<[u8; 32]>,
}

impl Service {
    /// Loads the catalogue from `store`; every stream starts offline.
    pub fn new(store: Store, cfg: ServerConfig, now: Instant) -> Result<Self, StoreError> {
        let mut live = Live::default();
        let mut catalogue = BTreeMap::new();
        let mut per_publisher = HashMap::new();
        for s in store.streams()? {
            live.add_stream(s.id.clone(), now);
            *per_publisher.entry(s.publisher).or_insert(0) += 1;
            let entry = Entry::new(&s.id, s.publisher, s.params);
            catalogue.insert(s.id, entry);
        }
        let counters = store.counters()?.into_iter().collect();
        let limiter = cfg
            .rate_limit
            .map(|l| RateLimiter::new(l, cfg.bounds.rate_sources));
        let rng = cfg
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        tracing::info!(streams = catalogue.len(), "catalogue loaded");
        Ok(Service {
            store,
            catalogue,
            per_publisher,
            counters,
            live,
            limiter,
            cfg,
            rng,
            stats: ServerStats::default(),
            started: now,
            last_limiter_sweep: now,
            link_key: None,
        })
    }

    /// One datagram's payload from `from`: the encoded answer, or `None` when
    /// it is dropped (malformed, rate-limited). Never answering garbage keeps
    /// the server from being used to reflect traffic at someone else.
    pub fn handle_payload(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        self.handle_payload_keyed(from, None, payload, now)
    }

    /// [`Service::handle_payload`] for a request that arrived on a link
    /// authenticated with static key `key` (p2ner-net): a peer may then join
    /// only under the peer id of that key ([`p2ner_net::peer_id_of`]), so the
    /// peer ids this server hands out vouch for the keys behind them.
    pub fn handle_payload_keyed(
        &mut self,
        from: SocketAddr,
        key: Option<[u8; 32]>,
        payload: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        self.link_key = key;
        let decoded = decode::<Request>(payload);
        // Signed requests cost a signature check and a disk write.
        let cost = match &decoded {
            Ok(Request::Signed(_)) => 5.0,
            _ => 1.0,
        };
        if let Some(limiter) = &mut self.limiter {
            if !limiter.allow(from.ip(), cost, now) {
                self.stats.rate_limited += 1;
                tracing::trace!(%from, "rate limited");
                return None;
            }
        }
        let response = match decoded {
            Ok(req) => self.handle(from, req, now),
            // Only plausible future versions get an answer: random bytes
            // must not be answered (nor amplified).
            Err(DecodeError::Version(v))
                if (PROTO_VERSION + 1..=PROTO_VERSION + 7).contains(&v) =>
            {
                self.stats.rejected += 1;
                Response::error(
                    ErrorCode::Version,
                    format!(
                        "protocol version {v} is not supported (this server speaks {PROTO_VERSION})"
                    ),
                )
            }
            Err(_) => {
                self.stats.malformed += 1;
                tracing::debug!(%from, len = payload.len(), "malformed request dropped");
                return None;
            }
        };
        let bytes = encode(&response);
        if bytes.len() > MAX_MESSAGE {
            // The handlers size their answers; this is a bug, not a client's fault.
            tracing::error!(len = bytes.len(), "answer does not fit a datagram");
            return Some(encode(&Response::error(
                ErrorCode::Internal,
                "answer too large",
            )));
        }
        Some(bytes)
    }

    /// Answers one decoded request.
    pub fn handle(&mut self, from: SocketAddr, req: Request, now: Instant) -> Response {
        self.stats.requests += 1;
        let kind = req.kind();
        let response = match req {
            Request::Signed(s) => self.signed(from, *s, now),
            Request::Join { stream, peer_id } => self.join(from, &stream, peer_id, now),
            Request::Peers { stream, peer_id } => match self.catalogue.contains_key(&stream) {
                // Only members see who else is there: a stranger knowing a
                // stream id learns nothing about its peers.
                true if !self.live.may_list(&stream, peer_id, from) => {
                    self.stats.rejected += 1;
                    Response::error(
                        ErrorCode::Invalid,
                        format!("join stream {stream} before asking for its peers"),
                    )
                }
                true => {
                    let peers =
                        self.live
                            .sample(&stream, peer_id, self.cfg.sample_size, &mut self.rng);
                    let base = encoded_len(&Response::Peers { peers: Vec::new() });
                    Response::Peers {
                        peers: fit(peers, base),
                    }
                }
                false => not_found(&stream),
            },
            Request::PeerHeartbeat { stream, peer_id } => {
                match self.peer_join(from, &stream, peer_id, now) {
                    Ok(()) => Response::Ok,
                    Err(e) => e,
                }
            }
            Request::Leave { stream, peer_id } => match self.live.leave(&stream, peer_id, from) {
                Ok(()) => Response::Ok,
                Err(e) => peer_error(&stream, e),
            },
            Request::Browse { filter, offset } => self.browse(&filter, offset),
            Request::Info { stream } => match self.info(&stream) {
                Some(info) => Response::Info(info),
                None => not_found(&stream),
            },
            Request::Stats => Response::Stats(self.stats(now)),
        };
        if let Response::Error { code, message } = &response {
            self.stats.rejected += 1;
            tracing::debug!(%from, kind, ?code, message, "request refused");
        }
        response
    }

    fn signed(&mut self, from: SocketAddr, s: Signed, now: Instant) -> Response {
        let id = s.op.stream().clone();
        if !id.is_valid() {
            return Response::error(
                ErrorCode::Invalid,
                "a stream id is 1 to 32 characters out of a-z 0-9 - _",
            );
        }
        if !s.verify() {
            self.stats.forged += 1;
            return Response::error(ErrorCode::BadSignature, "signature does not verify");
        }
        let last = self.counters.get(&s.key).copied().unwrap_or(0);
        if s.counter <= last {
            self.stats.forged += 1;
            return Response::error(
                ErrorCode::Replay,
                format!("counter {} is not above {last}", s.counter),
            );
        }
        let owner = self.catalogue.get(&id).map(|e| e.publisher);
        if owner.is_some_and(|o| o != s.key) {
            self.stats.forged += 1;
            return Response::error(
                ErrorCode::NotOwner,
                format!("stream {id} belongs to another publisher"),
            );
        }
        let result = match s.op {
            SignedOp::Register { params, .. } => {
                if owner.is_none() {
                    let mine = self.per_publisher.get(&s.key).copied().unwrap_or(0);
                    if mine >= self.cfg.bounds.streams_per_publisher {
                        return Response::error(
                            ErrorCode::Limit,
                            format!(
                                "a publisher may have at most {} streams",
                                self.cfg.bounds.streams_per_publisher
                            ),
                        );
                    }
                    if self.catalogue.len() >= self.cfg.bounds.streams_total {
                        return Response::error(ErrorCode::Limit, "the catalogue is full");
                    }
                }
                self.put(id.clone(), s.key, params, s.counter, now)
                    .map(|()| Response::Registered { id: id.clone() })
            }
            SignedOp::Update { params, .. } => match owner {
                None => return not_found(&id),
                Some(_) => self
                    .put(id.clone(), s.key, params, s.counter, now)
                    .map(|()| Response::Ok),
            },
            SignedOp::Remove { .. } => match owner {
                None => return not_found(&id),
                Some(_) => self
                    .store
                    .delete(&id, Some((&s.key, s.counter)))
                    .map(|_| {
                        self.forget(&id);
                        tracing::info!(stream = %id, "stream removed by its publisher");
                        Response::Ok
                    })
                    .map_err(Into::into),
            },
            SignedOp::Heartbeat { .. } => match owner {
                None => return not_found(&id),
                Some(_) => self
                    .store
                    .set_counter(&s.key, s.counter)
                    .map(|()| {
                        self.live.publisher_seen(&id, from, now);
                        Response::Ok
                    })
                    .map_err(Into::into),
            },
        };
        match result {
            Ok(r) => {
                self.counters.insert(s.key, s.counter);
                r
            }
            Err(PutError::Invalid(why)) => Response::error(ErrorCode::Invalid, why),
            Err(PutError::Store(e)) => {
                tracing::error!(stream = %id, "database: {e}");
                Response::error(ErrorCode::Internal, "the server could not store that")
            }
        }
    }

    /// Inserts or replaces a stream (ownership already checked).
    fn put(
        &mut self,
        id: StreamId,
        key: PublicKey,
        params: StreamParams,
        counter: u64,
        now: Instant,
    ) -> Result<(), PutError> {
        self.cfg
            .bounds
            .check_params(&params)
            .map_err(PutError::Invalid)?;
        let stored = StoredStream {
            id,
            publisher: key,
            params,
        };
        self.store.put(&stored, counter)?;
        let StoredStream { id, params, .. } = stored;
        let entry = Entry::new(&id, key, params);
        if self.catalogue.insert(id.clone(), entry).is_none() {
            *self.per_publisher.entry(key).or_insert(0) += 1;
            tracing::info!(stream = %id, publisher = %key, "stream registered");
            self.live.add_stream(id, now);
        }
        Ok(())
    }

    fn forget(&mut self, id: &StreamId) {
        if let Some(e) = self.catalogue.remove(id) {
            if let Some(n) = self.per_publisher.get_mut(&e.publisher) {
                *n -= 1;
                if *n == 0 {
                    self.per_publisher.remove(&e.publisher);
                }
            }
        }
        self.live.remove_stream(id);
    }

    // The error is the answer itself, built once here; it is not propagated far.
    #[allow(clippy::result_large_err)]
    fn peer_join(
        &mut self,
        from: SocketAddr,
        stream: &StreamId,
        peer_id: u64,
        now: Instant,
    ) -> Result<(), Response> {
        if peer_id == PUBLISHER_PEER_ID {
            return Err(Response::error(
                ErrorCode::Invalid,
                "peer id 0 is the publisher's",
            ));
        }
        if !self.catalogue.contains_key(stream) {
            return Err(not_found(stream));
        }
        if let Some(key) = self.link_key {
            if p2ner_net::peer_id_of(&key) != peer_id {
                return Err(Response::error(
                    ErrorCode::Invalid,
                    "peer id does not belong to this link's key",
                ));
            }
        }
        let b = &self.cfg.bounds;
        self.live
            .join(
                stream,
                peer_id,
                from,
                now,
                (b.peers_per_stream, b.peers_total),
            )
            .map_err(|e| peer_error(stream, e))
    }

    fn join(
        &mut self,
        from: SocketAddr,
        stream: &StreamId,
        peer_id: u64,
        now: Instant,
    ) -> Response {
        if let Err(e) = self.peer_join(from, stream, peer_id, now) {
            return e;
        }
        let info = self.info(stream).expect("checked by peer_join");
        let peers = self
            .live
            .sample(stream, peer_id, self.cfg.sample_size, &mut self.rng);
        let base = encoded_len(&Response::Joined {
            info: info.clone(),
            peers: Vec::new(),
        });
        Response::Joined {
            info,
            peers: fit(peers, base),
        }
    }

    fn info(&self, id: &StreamId) -> Option<StreamInfo> {
        let e = self.catalogue.get(id)?;
        Some(StreamInfo {
            id: id.clone(),
            publisher: e.publisher,
            publisher_addr: self.live.publisher_addr(id),
            params: e.params.clone(),
            liveness: self.live.liveness(id),
            peers: self.live.peer_count(id),
        })
    }

    fn browse(&self, filter: &str, offset: u32) -> Response {
        if filter.len() > self.cfg.bounds.filter {
            return Response::error(
                ErrorCode::Invalid,
                format!("filter is over {} bytes", self.cfg.bounds.filter),
            );
        }
        let needle = filter.to_lowercase();
        let worst = Response::Page(Page {
            items: Vec::new(),
            next: Some(u32::MAX),
            total: u32::MAX,
        });
        // +4: the item count's varint grows with the count.
        let mut room = MAX_MESSAGE - 1 - encoded_len(&worst) - 4;
        let mut page = Page::default();
        let mut total = 0u32;
        for (id, e) in &self.catalogue {
            if !e.search.contains(&needle) {
                continue;
            }
            total += 1;
            if total <= offset || page.next.is_some() {
                continue;
            }
            let item = StreamSummary {
                id: id.clone(),
                title: e.params.title.clone(),
                publisher: e.publisher,
                scheduler: e.params.scheduler.name.clone(),
                overlay: e.params.overlay.name.clone(),
                bitrate_kbps: e.params.bitrate_kbps,
                peers: self.live.peer_count(id),
                liveness: self.live.liveness(id),
            };
            let len = encoded_len(&item);
            if len > room {
                page.next = Some(total - 1);
                continue;
            }
            room -= len;
            page.items.push(item);
        }
        page.total = total;
        Response::Page(page)
    }

    /// Applies TTLs and expiries; call about once a second.
    pub fn tick(&mut self, now: Instant) {
        let ttl = Ttls {
            peer: self.cfg.peer_ttl,
            publisher: self.cfg.publisher_ttl,
            stream_expiry: self.cfg.stream_expiry,
        };
        let swept = self.live.sweep(now, ttl);
        if swept.peers_expired > 0 {
            tracing::debug!(n = swept.peers_expired, "peers expired");
        }
        for id in &swept.went_offline {
            tracing::info!(stream = %id, "publisher stopped heartbeating: stream offline");
        }
        for id in swept.expired {
            match self.store.delete(&id, None) {
                Ok(_) => {
                    tracing::info!(stream = %id, "offline too long: stream expired");
                    self.forget(&id);
                }
                Err(e) => tracing::error!(stream = %id, "database: {e}"),
            }
        }
        if let Some(limiter) = &mut self.limiter {
            if now.duration_since(self.last_limiter_sweep) >= Duration::from_secs(10) {
                limiter.sweep(now);
                self.last_limiter_sweep = now;
            }
        }
    }

    /// The counters, with the current sizes filled in.
    pub fn stats(&self, now: Instant) -> ServerStats {
        ServerStats {
            uptime_s: now.duration_since(self.started).as_secs(),
            streams: self.catalogue.len() as u32,
            online_streams: self.live.online_streams() as u32,
            live_peers: self.live.peers_total() as u32,
            ..self.stats.clone()
        }
    }

    /// The network layer's count of datagrams it dropped as malformed.
    pub fn set_net_malformed(&mut self, n: u64) {
        self.stats.net_malformed = n;
    }
}

enum PutError {
    Invalid(String),
    Store(StoreError),
}

impl From<StoreError> for PutError {
    fn from(e: StoreError) -> Self {
        PutError::Store(e)
    }
}

fn not_found(id: &StreamId) -> Response {
    Response::error(
        ErrorCode::NotFound,
        format!("no stream {id} on this server"),
    )
}

fn peer_error(id: &StreamId, e: PeerError) -> Response {
    match e {
        PeerError::NoSuchStream => not_found(id),
        PeerError::Full => Response::error(ErrorCode::Limit, format!("stream {id} is full")),
        PeerError::AddressMismatch => Response::error(
            ErrorCode::AddressMismatch,
            "that peer id is listed under another address",
        ),
    }
}

/// Keeps the peers that fit one datagram beside a message of `base` bytes.
fn fit(mut peers: Vec<PeerEntry>, base: usize) -> Vec<PeerEntry> {
    let mut room = MAX_MESSAGE.saturating_sub(1 + base + 2);
    let mut keep = 0;
    for p in &peers {
        let len = encoded_len(p);
        if len > room {
            break;
        }
        room -= len;
        keep += 1;
    }
    peers.truncate(keep);
    peers
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2ner_proto::identity::Identity;
    use p2ner_proto::server::{Liveness, PluginRef};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn params(title: &str) -> StreamParams {
        StreamParams {
            title: title.into(),
            description: "a test stream".into(),
            bitrate_kbps: 800,
            chunk_ms: 500,
            buffer_ms: 5000,
            scheduler: PluginRef::new("pull", "0.1.0"),
            overlay: PluginRef::new("mesh", "0.1.0"),
            input: "h264+opus".into(),
            container: "mpegts".into(),
            silence_ms: 0,
        }
    }

    fn service() -> (Service, Instant) {
        let now = Instant::now();
        let cfg = ServerConfig {
            rate_limit: None,
            seed: Some(1),
            ..Default::default()
        };
        (
            Service::new(Store::in_memory().unwrap(), cfg, now).unwrap(),
            now,
        )
    }

    fn signed(id: &Identity, counter: u64, op: SignedOp) -> Request {
        Request::Signed(Box::new(Signed::new(id, counter, op)))
    }

    fn register(
        svc: &mut Service,
        id: &Identity,
        counter: u64,
        title: &str,
        now: Instant,
    ) -> StreamId {
        let sid = StreamId::derive(&id.public_key(), title);
        let r = svc.handle(
            addr(9000),
            signed(
                id,
                counter,
                SignedOp::Register {
                    id: sid.clone(),
                    params: params(title),
                },
            ),
            now,
        );
        assert_eq!(r, Response::Registered { id: sid.clone() });
        sid
    }

    fn code(r: Response) -> ErrorCode {
        match r {
            Response::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn register_join_browse() {
        let (mut svc, now) = service();
        let alice = Identity::from_secret([1; 32]);
        let sid = register(&mut svc, &alice, 1, "Cats live", now);
        svc.handle(
            addr(9000),
            signed(&alice, 2, SignedOp::Heartbeat { id: sid.clone() }),
            now,
        );
        for p in 1..=30u64 {
            let r = svc.handle(
                addr(10_000 + p as u16),
                Request::Join {
                    stream: sid.clone(),
                    peer_id: p,
                },
                now,
            );
            let Response::Joined { info, peers } = r else {
                panic!("{r:?}")
            };
            assert_eq!(info.params, params("Cats live"));
            assert_eq!(info.liveness, Liveness::Online);
            assert_eq!(peers[0].addr, addr(9000));
            assert!(peers[0].publisher);
            assert_eq!(peers.len(), 1 + (p as usize - 1).min(20));
            assert!(peers.iter().all(|e| e.peer_id != p));
        }
        let Response::Page(page) = svc.handle(
            addr(1),
            Request::Browse {
                filter: "CATS".into(),
                offset: 0,
            },
            now,
        ) else {
            panic!()
        };
        assert_eq!(page.total, 1);
        assert_eq!(page.items[0].peers, 30);
        assert_eq!(page.items[0].title, "Cats live");
        let Response::Page(page) = svc.handle(
            addr(1),
            Request::Browse {
                filter: "dogs".into(),
                offset: 0,
            },
            now,
        ) else {
            panic!()
        };
        assert_eq!(page.total, 0);
    }

    #[test]
    fn browse_pages_fit_datagrams_and_cover_everything() {
        let (mut svc, now) = service();
        let mut ids = Vec::new();
        for k in 0..5u8 {
            let id = Identity::from_secret([k + 1; 32]);
            for i in 0..10 {
                let title = format!("{}-{i}", "long title ".repeat(8));
                ids.push(register(&mut svc, &id, i + 1, &title, now));
            }
        }
        ids.sort();
        let mut seen = Vec::new();
        let mut offset = 0;
        for _ in 0..100 {
            let req = Request::Browse {
                filter: String::new(),
                offset,
            };
            let bytes = svc.handle_payload(addr(1), &encode(&req), now).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE);
            let Response::Page(page) = decode::<Response>(&bytes).unwrap() else {
                panic!()
            };
            assert_eq!(page.total, 50);
            assert!(!page.items.is_empty());
            seen.extend(page.items.into_iter().map(|s| s.id));
            match page.next {
                Some(n) => offset = n,
                None => break,
            }
        }
        assert_eq!(seen, ids);
    }

    #[test]
    fn join_answer_fits_with_the_largest_params() {
        let (mut svc, now) = service();
        let alice = Identity::from_secret([1; 32]);
        let mut p = params(&"t".repeat(100));
        p.description = "d".repeat(300);
        p.scheduler.params.insert("window".into(), "x".repeat(64));
        let sid = StreamId::from("big");
        let r = svc.handle(
            addr(9000),
            signed(
                &alice,
                1,
                SignedOp::Register {
                    id: sid.clone(),
                    params: p,
                },
            ),
            now,
        );
        assert_eq!(r, Response::Registered { id: sid.clone() });
        for i in 1..=100u64 {
            let req = Request::Join {
                stream: sid.clone(),
                peer_id: i,
            };
            let bytes = svc
                .handle_payload(
                    SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 40_000 + i as u16)),
                    &encode(&req),
                    now,
                )
                .unwrap();
            assert!(bytes.len() <= MAX_MESSAGE, "{}", bytes.len());
            let Response::Joined { peers, .. } = decode::<Response>(&bytes).unwrap() else {
                panic!()
            };
            assert!(
                peers.len() >= (i as usize - 1).min(10),
                "{i}: {}",
                peers.len()
            );
        }
    }

    #[test]
    fn only_the_owner_changes_a_stream_and_replays_fail() {
        let (mut svc, now) = service();
        let alice = Identity::from_secret([1; 32]);
        let mallory = Identity::from_secret([2; 32]);
        let sid = register(&mut svc, &alice, 10, "mine", now);
        let before = svc.info(&sid).unwrap();

        // Mallory, with her own valid key.
        let mut evil = params("hijacked");
        evil.bitrate_kbps = 1;
        for op in [
            SignedOp::Register {
                id: sid.clone(),
                params: evil.clone(),
            },
            SignedOp::Update {
                id: sid.clone(),
                params: evil.clone(),
            },
            SignedOp::Remove { id: sid.clone() },
            SignedOp::Heartbeat { id: sid.clone() },
        ] {
            assert_eq!(
                code(svc.handle(addr(6666), signed(&mallory, 100, op), now)),
                ErrorCode::NotOwner
            );
        }
        // Mallory claiming to be Alice.
        let mut forged = Signed::new(&mallory, 100, SignedOp::Remove { id: sid.clone() });
        forged.key = alice.public_key();
        assert_eq!(
            code(svc.handle(addr(6666), Request::Signed(Box::new(forged)), now)),
            ErrorCode::BadSignature
        );
        // Alice's own message, replayed.
        let update = signed(
            &alice,
            11,
            SignedOp::Update {
                id: sid.clone(),
                params: params("v2"),
            },
        );
        assert_eq!(svc.handle(addr(9000), update.clone(), now), Response::Ok);
        let after_update = svc.info(&sid).unwrap();
        assert_eq!(code(svc.handle(addr(6666), update, now)), ErrorCode::Replay);
        let old = signed(&alice, 5, SignedOp::Remove { id: sid.clone() });
        assert_eq!(code(svc.handle(addr(6666), old, now)), ErrorCode::Replay);
        assert_eq!(svc.info(&sid).unwrap(), after_update);
        assert_ne!(after_update, before);
        assert_eq!(svc.stats(now).forged, 7);
        // The owner removes it.
        assert_eq!(
            svc.handle(
                addr(9000),
                signed(&alice, 12, SignedOp::Remove { id: sid.clone() }),
                now
            ),
            Response::Ok
        );
        assert!(svc.info(&sid).is_none());
    }

    #[test]
    fn counters_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let alice = Identity::from_secret([1; 32]);
        let now = Instant::now();
        let cfg = ServerConfig {
            rate_limit: None,
            ..Default::default()
        };
        let hb = {
            let mut svc = Service::new(Store::open(&path).unwrap(), cfg.clone(), now).unwrap();
            let sid = register(&mut svc, &alice, 1, "x", now);
            let hb = signed(&alice, 2, SignedOp::Heartbeat { id: sid });
            assert_eq!(svc.handle(addr(1), hb.clone(), now), Response::Ok);
            hb
        };
        let mut svc = Service::new(Store::open(&path).unwrap(), cfg, now).unwrap();
        assert_eq!(svc.catalogue.len(), 1);
        assert_eq!(code(svc.handle(addr(6666), hb, now)), ErrorCode::Replay);
    }

    #[test]
    fn bounds_and_limits() {
        let (mut svc, now) = service();
        let alice = Identity::from_secret([1; 32]);
        for i in 0..16 {
            register(&mut svc, &alice, i + 1, &format!("s{i}"), now);
        }
        let r = svc.handle(
            addr(1),
            signed(
                &alice,
                100,
                SignedOp::Register {
                    id: "one-more".into(),
                    params: params("x"),
                },
            ),
            now,
        );
        assert_eq!(code(r), ErrorCode::Limit);
        let mut p = params("x");
        p.title = "x".repeat(1000);
        let r = svc.handle(
            addr(1),
            signed(
                &alice,
                101,
                SignedOp::Update {
                    id: StreamId::derive(&alice.public_key(), "s0"),
                    params: p,
                },
            ),
            now,
        );
        assert_eq!(code(r), ErrorCode::Invalid);
        let r = svc.handle(
            addr(1),
            Request::Join {
                stream: "nope".into(),
                peer_id: 1,
            },
            now,
        );
        assert_eq!(code(r), ErrorCode::NotFound);
        let r = svc.handle(
            addr(1),
            Request::Join {
                stream: StreamId::derive(&alice.public_key(), "s0"),
                peer_id: 0,
            },
            now,
        );
        assert_eq!(code(r), ErrorCode::Invalid);
    }

    #[test]
    fn garbage_is_dropped_and_counted_and_floods_are_limited() {
        let now = Instant::now();
        let cfg = ServerConfig {
            rate_limit: Some(RateLimit {
                per_second: 10.0,
                burst: 100.0,
            }),
            ..Default::default()
        };
        let mut svc = Service::new(Store::in_memory().unwrap(), cfg, now).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut answered = 0;
        for i in 0..20_000 {
            let len = rng.usize(0..200);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if i % 2 == 0 && !buf.is_empty() {
                buf[0] = p2ner_proto::server::PROTO_VERSION;
            }
            let from = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1));
            answered += svc.handle_payload(from, &buf, now).is_some() as u32;
        }
        let stats = svc.stats(now);
        assert!(stats.malformed > 19_000, "{stats:?}");
        assert!(answered < 1000);
        // One source hammering: the bucket empties and it is dropped.
        let req = encode(&Request::Stats);
        let n = (0..300)
            .filter(|_| svc.handle_payload(addr(5), &req, now).is_some())
            .count();
        assert_eq!(n, 100);
        assert_eq!(svc.stats(now).rate_limited, 200);
    }

    #[test]
    fn heartbeats_ttls_and_expiry() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let cfg = ServerConfig {
            rate_limit: None,
            peer_ttl: s(10),
            publisher_ttl: s(10),
            stream_expiry: s(60),
            ..Default::default()
        };
        let mut svc = Service::new(Store::in_memory().unwrap(), cfg, now).unwrap();
        let alice = Identity::from_secret([1; 32]);
        let sid = register(&mut svc, &alice, 1, "x", now);
        assert_eq!(svc.info(&sid).unwrap().liveness, Liveness::Offline);
        let hb = |c| signed(&alice, c, SignedOp::Heartbeat { id: sid.clone() });
        svc.handle(addr(9000), hb(2), now);
        assert_eq!(svc.info(&sid).unwrap().liveness, Liveness::Online);
        svc.handle(
            addr(1),
            Request::Join {
                stream: sid.clone(),
                peer_id: 1,
            },
            now,
        );
        svc.handle(
            addr(2),
            Request::Join {
                stream: sid.clone(),
                peer_id: 2,
            },
            now,
        );
        // Peer 2 heartbeats, peer 1 does not.
        svc.handle(
            addr(2),
            Request::PeerHeartbeat {
                stream: sid.clone(),
                peer_id: 2,
            },
            now + s(8),
        );
        svc.handle(addr(9000), hb(3), now + s(8));
        svc.tick(now + s(12));
        assert_eq!(svc.info(&sid).unwrap().peers, 1);
        assert_eq!(svc.info(&sid).unwrap().liveness, Liveness::Online);
        // A heartbeat from a forgotten peer re-adds it.
        svc.handle(
            addr(1),
            Request::PeerHeartbeat {
                stream: sid.clone(),
                peer_id: 1,
            },
            now + s(12),
        );
        assert_eq!(svc.info(&sid).unwrap().peers, 2);
        svc.tick(now + s(25));
        assert_eq!(svc.info(&sid).unwrap().liveness, Liveness::Offline);
        assert_eq!(svc.info(&sid).unwrap().peers, 0);
        svc.tick(now + s(60));
        assert!(svc.info(&sid).is_some());
        svc.tick(now + s(80));
        assert!(svc.info(&sid).is_none());
        assert_eq!(svc.store.streams().unwrap(), vec![]);
    }
}
