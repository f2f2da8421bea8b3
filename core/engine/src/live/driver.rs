//! Runs one [`Session`] on the real network: the glue between the sans-IO
//! stream and `p2ner-net`'s endpoint, on one tokio task.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use p2ner_net::{Endpoint, Event, Events, SendError};
use p2ner_plugin_api::{Capacity, PeerId, PeerInfo};
use p2ner_proto::peer as wire;
use p2ner_proto::server::StreamId;
use p2ner_server::client::ServerClient;
use tokio::sync::mpsc;

use super::{Report, Reporter};
use crate::stream::{Session, SessionOutput, Summary, UplinkModel, DATAGRAM_OVERHEAD};

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

/// How long a chunk handed to the data channel may wait there before it
/// leaves; past that it is dropped (and counted), never sent late.
const CHUNK_LEAVES_WITHIN: Duration = Duration::from_millis(500);

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
        let mut next_second = now_us() + 1_000_000;
        let mut next_heartbeat = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut refused = 0u64;
        let cap_bps = self.endpoint.config().upload_kbps.map(|k| k * 1000);
        let mut uplink = UplinkModel::new(cap_bps);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let end = loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else { break End::Failed("network endpoint closed".into()) };
                    let now = now_us();
                    match ev {
                        Event::Message { from, payload } => {
                            if let Some(env) = wire::decode(&payload) {
                                if env.stream == wire {
                                    self.session.on_message(now, from, env, payload.len());
                                }
                            }
                        }
                        Event::Chunk { from, stream, seq, data } => {
                            if stream == wire {
                                self.session.on_chunk(now, from, seq, data);
                            }
                        }
                        Event::Request { from, id, .. } => {
                            // Peers do not serve requests; say so instead of
                            // letting the asker time out.
                            self.endpoint.respond(from, id, Bytes::new());
                        }
                    }
                }
                Some(addr) = unreachable.recv() => {
                    self.session.on_unreachable(now_us(), addr);
                }
                Some(peers) = candidates.recv() => {
                    self.session.on_candidates(now_us(), &peers);
                }
                _ = tick.tick() => {
                    let now = now_us();
                    uplink.observed(now, self.endpoint.upload().queued_bytes);
                    self.session.set_upload(uplink.upload(now));
                    if let Some(shared) = &self.shared {
                        shared.hold(wire, self.session.neighbour_addrs());
                    }
                    for addr in self.session.neighbour_addrs() {
                        let c = self.endpoint.capacity(addr);
                        self.session.set_capacity(addr, Capacity {
                            can_send_bytes: c.can_send_bytes,
                            rate_bps: c.rate_bps,
                            rtt_us: c.rtt_us,
                        });
                    }
                    self.session.tick(now);
                    if now >= next_second {
                        next_second += 1_000_000;
                        self.second(now);
                    }
                    if tokio::time::Instant::now() >= next_heartbeat {
                        next_heartbeat += Duration::from_secs(5);
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
        // Whole datagrams, framing and acknowledgements included.
        // (On a shared endpoint those are every stream's: keep the stream's own.)
        let net = self.endpoint.stats();
        let t = &net.total;
        if self.shared.is_none() {
            summary.bytes_down = t.control.bytes_recv + t.data.bytes_recv;
            summary.bytes_up = t.control.bytes_sent + t.data.bytes_sent;
        }
        if summary.media_bytes > 0 {
            summary.overhead = summary.bytes_down.saturating_sub(summary.media_bytes) as f64
                / summary.media_bytes as f64;
        }
        if let Some(out) = &mut self.stats {
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
        let mut refused = 0;
        let now = now_us();
        let max_payload = self.endpoint.config().max_payload.max(1) as u64;
        for t in self.session.drain() {
            match &t {
                SessionOutput::SendMessage { bytes, .. } => {
                    uplink.sent(now, bytes.len() as u64 + DATAGRAM_OVERHEAD)
                }
                SessionOutput::SendChunk { data, .. } => {
                    let len = data.len() as u64;
                    uplink.sent(now, len + len.div_ceil(max_payload) * DATAGRAM_OVERHEAD)
                }
                _ => {}
            }
            match t {
                SessionOutput::SendMessage {
                    to,
                    bytes,
                    reliable: true,
                } => {
                    let endpoint = self.endpoint.clone();
                    let unreachable = unreachable.clone();
                    tokio::spawn(async move {
                        if let Err(e) = endpoint.send_reliable(to, Bytes::from(bytes)).await {
                            tracing::debug!(%to, "reliable message failed: {e}");
                            let _ = unreachable.send(to);
                        }
                    });
                }
                SessionOutput::SendMessage { to, bytes, .. } => {
                    if let Err(e) = self.endpoint.send_unreliable(to, Bytes::from(bytes)) {
                        tracing::debug!(%to, "message not sent: {e}");
                    }
                }
                SessionOutput::SendChunk { to, seq, data } => {
                    // A chunk that cannot leave soon is dropped by the data
                    // channel rather than sent too late to be played.
                    let deadline = std::time::Instant::now() + CHUNK_LEAVES_WITHIN;
                    match self.endpoint.send_chunk_by(to, wire, seq, data, deadline) {
                        Ok(()) => {}
                        Err(SendError::WouldBlock) => refused += 1,
                        Err(e) => tracing::debug!(%to, seq, "chunk not sent: {e}"),
                    }
                }
                SessionOutput::WantPeers { .. } => {
                    for server in self.servers.clone() {
                        let (stream, peer_id, peers) =
                            (self.stream.clone(), self.peer_id, peers.clone());
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
                SessionOutput::ForgetPeer { addr } => {
                    if self.shared.as_ref().is_none_or(|s| s.release(wire, addr)) {
                        self.endpoint.forget(addr)
                    }
                }
            }
        }
        refused
    }

    fn second(&mut self, now: u64) {
        let snap = self.session.snapshot(now);
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
