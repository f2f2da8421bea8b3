//! Runs one [`Session`] on the real network: the glue between the sans-IO
//! stream and `p2ner-net`'s endpoint, on one tokio task.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use p2ner_net::{Endpoint, Events, SendError};
use p2ner_plugin_api::{PeerId, PeerInfo};
use p2ner_proto::server::StreamId;
use p2ner_server::client::ServerClient;
use tokio::sync::mpsc;

use super::liveness::{Answer, Gone, Liveness, Step};
use super::{Report, Reporter};
use crate::carrier::{self, Carrier};
use crate::stream::{NetCounters, Session, Summary, UplinkModel};
use p2ner_proto::server::PUBLISHER_PEER_ID;

/// Engine time: microseconds since the Unix epoch, so that capture times
/// stamped by a publisher mean the same on every peer of this machine (and,
/// with synchronised clocks, of others).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// How often the session's clock advances; bounds play-out jitter.
pub const TICK: Duration = Duration::from_millis(20);

/// A publisher heartbeats this often: servers take it offline after a few
/// missed ones (`p2ner server --publisher-ttl`, 4 s), so that a dead
/// publisher is noticed within seconds. One signed datagram a second.
const PUBLISHER_HEARTBEAT: Duration = Duration::from_secs(1);
/// Peers heartbeat less often: a stale peer entry costs a joiner one
/// failed connection attempt, not the stream.
const PEER_HEARTBEAT: Duration = Duration::from_secs(5);

/// How long an address that claimed a peer id not its key's is ignored.
const LIAR_BLOCKED_FOR: Duration = Duration::from_secs(60);

/// The stream's id on the wire: a hash of its catalogue id.
pub fn wire_id(stream: &StreamId) -> u64 {
    // FNV-1a: stable across builds and platforms, which std's hasher is not.
    stream.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What keeps a stream registered at its servers.
pub enum Heartbeat {
    /// The publisher re-announces the stream, signed.
    Publisher {
        /// The key the announcements are signed with.
        identity: Box<p2ner_proto::identity::Identity>,
    },
    /// A subscriber renews its place in the swarm.
    Peer {
        /// The id it joined with.
        peer_id: u64,
    },
}

/// Runs one session on the network: the thin I/O shell around the sans-IO [`Session`].
pub struct Driver {
    /// The network layer the session's outputs go to.
    pub endpoint: Endpoint,
    /// What the network layer delivers for this stream.
    pub events: Events,
    /// The stream's state machine.
    pub session: Session,
    /// The stream's catalogue id.
    pub stream: StreamId,
    /// The servers the stream is registered at.
    pub servers: Vec<ServerClient>,
    /// What keeps the registration alive.
    pub heartbeat: Heartbeat,
    /// This peer's id in the swarm.
    pub peer_id: u64,
    /// Stop after this long.
    pub run_for: Option<Duration>,
    /// JSON lines, one per second, and the final summary.
    pub stats: Option<Box<dyn Write + Send>>,
    /// Told once a second how the stream is doing.
    pub report: Reporter,
    /// Set when the endpoint carries other streams too (`p2ner run`): a
    /// stop signal, and neighbours kept while another stream uses them.
    pub shared: Option<super::engine::Shared>,
    /// A subscription's watch on its publisher (`None` for a publisher).
    pub liveness: Option<Liveness>,
    /// The endpoint's count of messages its router kept out (a one-stream
    /// engine's own, so it joins the summary's `refused.rate_limited`).
    pub router_limited: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Chunks played and missed at the last second's line.
    pub played_at_last_second: (u64, u64),
    /// The publisher's address as the server gave it (subscribers): the only
    /// address that may speak as the publisher's peer id.
    pub publisher: Option<SocketAddr>,
}

/// Whether a peer message claiming to be from `claimed` may be believed
/// when it came from `from`, whose link proved static key `key`: a peer's
/// id is the hash of its key ([`p2ner_net::peer_id_of`]), and the
/// publisher's fixed id belongs to the address the server lists for it.
pub fn claim_ok(
    claimed: u64,
    from: SocketAddr,
    key: Option<[u8; 32]>,
    publisher: Option<SocketAddr>,
) -> bool {
    if claimed == PUBLISHER_PEER_ID {
        return publisher == Some(from);
    }
    key.is_some_and(|k| p2ner_net::peer_id_of(&k) == claimed)
}

/// Warns at most once per interval, saying how many were suppressed.
#[derive(Default)]
struct Throttle {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    fn warn(&mut self, what: impl FnOnce(u64) -> String) {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|l| now - l < Duration::from_secs(10)) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!("{}", what(self.suppressed));
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// `run_for` passed.
    Time,
    /// Ctrl-C.
    Interrupted,
    /// The publisher's input ended (a file without looping).
    InputEnded,
    /// A plugin failed; the message says which and why.
    Failed(String),
    /// Asked to stop (`p2ner run`: a frontend's `stop`).
    Stopped,
    /// A subscription's publisher is gone, by the server's word (state
    /// `ended`): the subscriber was not asked to stop, so the CLI exits
    /// non-zero. Silence alone ends it as [`End::Failed`].
    PublisherGone(String),
}

impl End {
    /// The session state (`ended` or `failed`) and the reason, as frontends
    /// and the final stats line show them.
    pub fn state(&self) -> (&'static str, String) {
        match self {
            End::Failed(why) => ("failed", why.clone()),
            End::PublisherGone(why) => ("ended", why.clone()),
            End::InputEnded => ("ended", "the input ended".into()),
            End::Time => ("ended", "time is up".into()),
            End::Interrupted => ("ended", "interrupted".into()),
            End::Stopped => ("ended", "stopped".into()),
        }
    }
}

impl Driver {
    /// Runs the stream until it ends; returns why, and the final summary.
    pub async fn run(mut self) -> (End, Summary) {
        let wire = wire_id(&self.stream);
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (unreachable_tx, mut unreachable) = mpsc::unbounded_channel::<SocketAddr>();
        let (peers_tx, mut candidates) = mpsc::unbounded_channel::<Vec<PeerInfo>>();
        let (answer_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
        let mut next_second = now_us() + 1_000_000;
        let heartbeat_every = match self.heartbeat {
            Heartbeat::Publisher { .. } => PUBLISHER_HEARTBEAT,
            Heartbeat::Peer { .. } => PEER_HEARTBEAT,
        };
        let mut next_heartbeat = tokio::time::Instant::now() + heartbeat_every;
        let mut gone: Option<Step> = None;
        let mut refused = 0u64;
        let cap_bps = self.endpoint.config().upload_kbps.map(|k| k * 1000);
        let mut uplink = UplinkModel::new(cap_bps);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut refused_claims = 0u64;
        let mut claim_warning = Throttle::default();
        let end = loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else { break End::Failed("network endpoint closed".into()) };
                    let now = now_us();
                    if let p2ner_net::Event::Message { from, payload } = &ev {
                        if let Some(env) = p2ner_proto::peer::decode(payload) {
                            let key = self.endpoint.peer_key(*from);
                            if env.stream == wire && !claim_ok(env.from, *from, key, self.publisher) {
                                refused_claims += 1;
                                if key.is_some() {
                                    // Lying on its own authenticated link:
                                    // no honest peer does that.
                                    self.endpoint.block(*from, LIAR_BLOCKED_FOR);
                                }
                                let (claimed, from) = (env.from, *from);
                                claim_warning.warn(|more| format!(
                                    "refused a message from {from} claiming peer id {claimed:016x}, \
                                     which is not its key's ({more} more since the last warning)"
                                ));
                                continue;
                            }
                        }
                    }
                    let (session, mut net) = self.parts(wire, &unreachable_tx, &peers_tx);
                    carrier::deliver(session, wire, now, ev, &mut net);
                }
                Some(addr) = unreachable.recv() => {
                    self.session.on_unreachable(now_us(), addr);
                }
                Some(peers) = candidates.recv() => {
                    self.session.on_candidates(now_us(), &peers);
                }
                Some(answer) = answers.recv() => {
                    if let Some(l) = &mut self.liveness {
                        if let step @ Step::Gone(_) = l.server_said(now_us(), answer) {
                            gone = Some(step);
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = now_us();
                    if let Some(shared) = &self.shared {
                        shared.hold(wire, self.session.neighbour_addrs());
                    }
                    let (session, mut net) = self.parts(wire, &unreachable_tx, &peers_tx);
                    carrier::before_tick(session, &mut uplink, &mut net, now);
                    self.session.tick(now);
                    if let Some(l) = &mut self.liveness {
                        l.chunks(now, self.session.stats().chunks_received);
                        match l.poll(now) {
                            Step::AskServer => self.ask_server(&answer_tx),
                            Step::Nothing => {}
                            step => gone = gone.or(Some(step)),
                        }
                    }
                    if now >= next_second {
                        next_second += 1_000_000;
                        self.second(now, refused_claims);
                    }
                    if tokio::time::Instant::now() >= next_heartbeat {
                        next_heartbeat += heartbeat_every;
                        self.send_heartbeats();
                    }
                    if let Some(e) = self.session.failed() {
                        break End::Failed(e.to_owned());
                    }
                    if self.session.ended() {
                        break End::InputEnded;
                    }
                    if self.run_for.is_some_and(|d| started.elapsed() >= d) {
                        break End::Time;
                    }
                    match gone.take() {
                        Some(Step::Gone(Gone::Ended(why))) => break End::PublisherGone(why),
                        Some(Step::Gone(Gone::Failed(why))) => break End::Failed(why),
                        _ => {}
                    }
                }
                _ = &mut ctrl_c => break End::Interrupted,
                _ = super::engine::stopped(&mut self.shared) => break End::Stopped,
            }
            refused += self.flush(wire, &unreachable_tx, &peers_tx, &mut uplink);
        };
        let now = now_us();
        if let Some(e) = self.session.close(now) {
            tracing::warn!("closing the stream: {e}");
        }
        self.flush(wire, &unreachable_tx, &peers_tx, &mut uplink);
        if refused > 0 {
            tracing::info!(refused, "chunks the data channel refused (no capacity)");
        }
        let mut summary = self.session.stats().summary(self.stream.as_str());
        let (state, reason) = end.state();
        summary.state = state.to_owned();
        summary.reason = reason;
        summary.net = self.net_counters(refused_claims);
        // Whole datagrams, framing and acknowledgements included.
        // (On a shared endpoint those are every stream's: keep the stream's own.)
        if let Some(limited) = &self.router_limited {
            summary.refused.rate_limited += limited.load(std::sync::atomic::Ordering::Relaxed);
        }
        let net = self.shared.is_none().then(|| self.endpoint.stats());
        carrier::finish_summary(&mut summary, net.as_ref());
        if let Some(out) = &mut self.stats {
            // The last second as it ended: nothing plays any more.
            let mut last = self.session.snapshot(now);
            last.playing = false;
            let _ = serde_json::to_writer(&mut *out, &last);
            let _ = writeln!(out);
            let _ = serde_json::to_writer(&mut *out, &summary);
            let _ = writeln!(out);
            let _ = out.flush();
        }
        self.leave().await;
        (end, summary)
    }

    /// Hands the session's transmissions to the endpoint; returns the
    /// chunks the data channel refused.
    fn flush(
        &mut self,
        wire: u64,
        unreachable: &mpsc::UnboundedSender<SocketAddr>,
        peers: &mpsc::UnboundedSender<Vec<PeerInfo>>,
        uplink: &mut UplinkModel,
    ) -> u64 {
        let (session, mut net) = self.parts(wire, unreachable, peers);
        carrier::flush(session, uplink, &mut net, wire, now_us())
    }

    /// The session and, beside it, the endpoint as a [`Carrier`].
    fn parts<'a>(
        &'a mut self,
        wire: u64,
        unreachable: &'a mpsc::UnboundedSender<SocketAddr>,
        peers: &'a mpsc::UnboundedSender<Vec<PeerInfo>>,
    ) -> (&'a mut Session, LiveCarrier<'a>) {
        (
            &mut self.session,
            LiveCarrier {
                endpoint: &self.endpoint,
                unreachable,
                peers,
                servers: &self.servers,
                stream: &self.stream,
                peer_id: self.peer_id,
                shared: &self.shared,
                wire,
            },
        )
    }

    /// Asks the subscription's server about the stream, answering into
    /// `answers` (an unanswered question says nothing).
    fn ask_server(&self, answers: &mpsc::UnboundedSender<Answer>) {
        let Some(server) = self.servers.first().cloned() else {
            let _ = answers.send(Answer::Unknown);
            return;
        };
        let (stream, answers) = (self.stream.clone(), answers.clone());
        tokio::spawn(async move {
            use p2ner_proto::server::{ErrorCode, Liveness as Live};
            let asked = tokio::time::timeout(Duration::from_secs(2), server.info(&stream));
            let answer = match asked.await {
                Ok(Ok(info)) if info.liveness == Live::Offline => Answer::Offline,
                Ok(Ok(_)) => Answer::Online,
                Ok(Err(e)) if e.code() == Some(ErrorCode::NotFound) => Answer::NotFound,
                _ => Answer::Unknown,
            };
            let _ = answers.send(answer);
        });
    }

    /// The endpoint's drop counters, plus the messages this stream refused
    /// for a false peer id.
    fn net_counters(&self, refused_claims: u64) -> NetCounters {
        let d = self.endpoint.stats().drops;
        NetCounters {
            malformed_dropped: d.malformed(),
            unauthenticated_dropped: d.unauthenticated_total() + refused_claims,
            rate_limited_dropped: d.rate_limited,
            refused_dropped: d.refused(),
        }
    }

    fn second(&mut self, now: u64, refused_claims: u64) {
        let mut snap = self.session.snapshot(now);
        snap.net = self.net_counters(refused_claims);
        // Playing means chunks are played now, not that play-out once
        // started: a second that missed chunks and played none is not
        // playing (a subscription whose publisher died, once its buffer ran
        // dry).
        if !self.session.is_publisher() {
            let (played, missed) = self.played_at_last_second;
            if snap.chunks_played == played && snap.chunks_missed > missed {
                snap.playing = false;
            }
            self.played_at_last_second = (snap.chunks_played, snap.chunks_missed);
        }
        if let Some(out) = &mut self.stats {
            let _ = serde_json::to_writer(&mut *out, &snap);
            let _ = writeln!(out);
            let _ = out.flush();
        }
        (self.report)(Report::Second {
            snapshot: &snap,
            stats: self.session.stats(),
            source: self.session.is_publisher(),
        });
    }

    fn send_heartbeats(&self) {
        for server in self.servers.clone() {
            let stream = self.stream.clone();
            match &self.heartbeat {
                Heartbeat::Publisher { identity } => {
                    let identity = identity.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.publisher_heartbeat(&identity, &stream).await {
                            tracing::warn!(server = %server.server(), "heartbeat: {e}");
                        }
                    });
                }
                Heartbeat::Peer { peer_id } => {
                    let peer_id = *peer_id;
                    tokio::spawn(async move {
                        if let Err(e) = server.peer_heartbeat(&stream, peer_id).await {
                            tracing::warn!(server = %server.server(), "heartbeat: {e}");
                        }
                    });
                }
            }
        }
    }

    /// Leaves the swarm at every server, briefly: a server that does not
    /// answer will expire us anyway.
    async fn leave(&self) {
        let mut calls = Vec::new();
        for server in &self.servers {
            let (server, stream) = (server.clone(), self.stream.clone());
            match &self.heartbeat {
                Heartbeat::Publisher { identity } => {
                    let identity = identity.clone();
                    calls.push(tokio::spawn(async move {
                        server.remove(&identity, &stream).await.map(|_| ())
                    }));
                }
                Heartbeat::Peer { peer_id } => {
                    let peer_id = *peer_id;
                    calls.push(tokio::spawn(async move {
                        server.leave(&stream, peer_id).await.map(|_| ())
                    }));
                }
            }
        }
        for call in calls {
            if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(2), call).await {
                tracing::debug!("leaving: {e}");
            }
        }
    }
}

/// Server peer entries as the overlay sees them.
pub fn peer_infos(entries: &[p2ner_proto::server::PeerEntry]) -> Vec<PeerInfo> {
    entries
        .iter()
        .map(|e| PeerInfo {
            id: PeerId(e.peer_id),
            addr: e.addr.to_string().into(),
        })
        .collect()
}

/// The endpoint of a live session as the shared glue sees it: reliable
/// messages and peer queries run as tasks of their own and report back
/// through the driver's channels.
struct LiveCarrier<'a> {
    endpoint: &'a Endpoint,
    unreachable: &'a mpsc::UnboundedSender<SocketAddr>,
    peers: &'a mpsc::UnboundedSender<Vec<PeerInfo>>,
    servers: &'a [ServerClient],
    stream: &'a StreamId,
    peer_id: u64,
    shared: &'a Option<super::engine::Shared>,
    wire: u64,
}

impl Carrier for LiveCarrier<'_> {
    fn capacity(&mut self, to: SocketAddr) -> p2ner_net::Capacity {
        self.endpoint.capacity(to)
    }

    fn upload(&mut self) -> p2ner_net::Upload {
        self.endpoint.upload()
    }

    fn max_payload(&self) -> usize {
        self.endpoint.config().max_payload
    }

    fn send_reliable(&mut self, to: SocketAddr, payload: Bytes) {
        let endpoint = self.endpoint.clone();
        let unreachable = self.unreachable.clone();
        tokio::spawn(async move {
            if let Err(e) = endpoint.send_reliable(to, payload).await {
                tracing::debug!(%to, "reliable message failed: {e}");
                let _ = unreachable.send(to);
            }
        });
    }

    fn send_unreliable(&mut self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        self.endpoint.send_unreliable(to, payload)
    }

    fn send_chunk_by(
        &mut self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        within_us: u64,
    ) -> Result<(), SendError> {
        let deadline = std::time::Instant::now() + Duration::from_micros(within_us);
        self.endpoint.send_chunk_by(to, stream, seq, data, deadline)
    }

    fn respond(&mut self, to: SocketAddr, id: u64, payload: Bytes) {
        self.endpoint.respond(to, id, payload);
    }

    fn want_peers(&mut self, _count: u32) {
        for server in self.servers {
            let server = server.clone();
            let (stream, peer_id, peers) = (self.stream.clone(), self.peer_id, self.peers.clone());
            tokio::spawn(async move {
                match server.peers(&stream, peer_id).await {
                    Ok(found) => {
                        let _ = peers.send(peer_infos(&found));
                    }
                    Err(e) => tracing::debug!("asking for peers: {e}"),
                }
            });
        }
    }

    fn forget(&mut self, addr: SocketAddr) {
        if self
            .shared
            .as_ref()
            .is_none_or(|s| s.release(self.wire, addr))
        {
            self.endpoint.forget(addr)
        }
    }
}
