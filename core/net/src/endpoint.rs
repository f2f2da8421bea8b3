//! The endpoint: one UDP socket, a receive task and a paced sender task.
//!
//! All per-neighbour state sits behind one mutex that is never held across an
//! `.await`: tasks decide what to send under the lock, encode into an
//! [`Outbox`], release the lock and then hand the datagrams to the kernel.
//!
//! - The receive task drains the socket, decodes, suppresses duplicates,
//!   reassembles chunks, acks (control: immediately; data: every few
//!   datagrams and whenever the socket runs dry), feeds RTT and LEDBAT, and
//!   delivers [`Event`]s through a bounded channel. When the consumer is slow
//!   chunks are dropped and counted; reliable messages are left unacked so the
//!   sender retries (back-pressure instead of loss).
//! - The sender task is timer-driven: it sends queued data fragments
//!   round-robin over neighbours while each one's window, pacer and the shared
//!   upload cap allow, and detects tail loss by timeout.
//! - Reliable control messages retransmit from the future that sent them
//!   (`send_reliable`), with the neighbour's RTO and exponential backoff.

use crate::config::NetConfig;
use crate::error::SendError;
use crate::fragment::{split, Frag, Outcome, Reassembler};
use crate::ledbat::Ledbat;
use crate::pacer::{RateMeter, TokenBucket};
use crate::reliable::{RecvDedup, SendIds, Verdict};
use crate::rng::Rng;
use crate::rtt::RttEstimator;
use crate::stats::{DropStats, NetStats, PeerStats};
use crate::wire::{self, DecodeError, Packet, ReliableKind};
use bytes::Bytes;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, trace, warn};

/// Events delivered to the owner of the endpoint.
pub type Events = mpsc::Receiver<Event>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A control message (reliable ones exactly once, unreliable at most once).
    Message { from: SocketAddr, payload: Bytes },
    /// A request to answer with [`Endpoint::respond`].
    Request {
        from: SocketAddr,
        id: u64,
        payload: Bytes,
    },
    /// A complete media chunk.
    Chunk {
        from: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
    },
}

/// What the data channel towards one neighbour can take now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Bytes that may be queued now without exceeding the window.
    pub can_send_bytes: u64,
    /// Estimated rate (window / RTT, bounded by the upload cap), bit/s.
    pub rate_bps: u64,
    /// Smoothed RTT, µs (0 before any sample).
    pub rtt_us: u64,
    /// Data bytes queued towards this neighbour, not yet handed to the socket.
    pub queued_bytes: u64,
}

/// The client's uplink as a whole, shared by every neighbour: what a
/// scheduler needs to see so it does not promise more than the link carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Upload {
    /// The configured cap (`NetConfig::upload_kbps`), bit/s.
    pub cap_bps: Option<u64>,
    /// Measured send rate over the last ~1 s, data and control, bit/s.
    pub rate_bps: u64,
    /// Data bytes queued locally for all neighbours, not yet sent.
    pub queued_bytes: u64,
    /// Data bytes sent and not yet acknowledged, all neighbours.
    pub inflight_bytes: u64,
}

/// Data datagrams acked by the receiver every this many (and when idle).
const ACK_EVERY: u32 = 4;
/// A datagram is lost when this many later ones were acked.
const REORDER_THRESHOLD: u64 = 3;
/// Datagrams handed to the kernel per sender-task round.
const SEND_BATCH: usize = 64;
/// Datagrams handled per receive round before yielding.
const RECV_BATCH: usize = 256;

/// A handle to a bound endpoint; cheap to clone. The tasks stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

struct Inner {
    socket: UdpSocket,
    local: SocketAddr,
    cfg: NetConfig,
    epoch: Instant,
    session: u32,
    state: Mutex<State>,
    events: mpsc::Sender<Event>,
    wake_sender: Notify,
    capacity_changed: Notify,
    next_request: AtomicU64,
}

struct State {
    peers: HashMap<SocketAddr, Peer>,
    retired: PeerStats,
    drops: DropStats,
    acks: HashMap<(SocketAddr, u64), oneshot::Sender<Result<(), SendError>>>,
    requests: HashMap<(SocketAddr, u64), oneshot::Sender<Bytes>>,
    reassembly: Reassembler<(SocketAddr, u64, u64)>,
    cap: Option<TokenBucket>,
    rng: Rng,
    rejects_sent: HashMap<SocketAddr, u64>,
    /// Last neighbour served by the sender task.
    rr: SocketAddr,
    /// Everything handed to the socket, for [`Endpoint::upload`].
    meter: RateMeter,
}

struct Peer {
    rtt: RttEstimator,
    ids: SendIds,
    dedup: RecvDedup,
    tx: DataTx,
    rx: DataRx,
    stats: PeerStats,
    incompatible: Option<(u8, u8)>,
}

struct DataTx {
    queue: VecDeque<Frag>,
    queued_bytes: usize,
    inflight: VecDeque<InFlight>,
    inflight_bytes: usize,
    next_pkt: u64,
    cc: Ledbat,
    pacer: TokenBucket,
    last_progress_us: u64,
    /// Earliest deadline of a queued, unstarted chunk (u64::MAX: none), so
    /// the queue is only scanned when something may have expired.
    next_deadline_us: u64,
}

struct InFlight {
    pkt: u64,
    sent_us: u64,
    size: usize,
    /// None once acked or declared lost.
    frag: Option<Frag>,
}

#[derive(Default)]
struct DataRx {
    largest: u64,
    bitmap: u64,
    delay: Option<u32>,
    unacked: u32,
}

/// Datagrams encoded under the lock, sent after it is released.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Outbox {
    fn push(&mut self, to: SocketAddr, p: &Packet<'_>) {
        let start = self.buf.len();
        wire::encode(p, &mut self.buf);
        self.items.push((to, start, self.buf.len()));
    }
    fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

fn us32(now_us: u64) -> u32 {
    now_us as u32
}

impl Peer {
    fn new(cfg: &NetConfig, now_us: u64) -> Self {
        Peer {
            rtt: RttEstimator::new(cfg.rto_initial, cfg.rto_min, cfg.rto_max),
            ids: SendIds::default(),
            dedup: RecvDedup::new(16_384),
            tx: DataTx {
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: VecDeque::new(),
                inflight_bytes: 0,
                next_pkt: 1,
                cc: Ledbat::new(
                    cfg.max_payload,
                    cfg.target_delay.as_micros() as u64,
                    cfg.max_cwnd,
                ),
                pacer: TokenBucket::new(1e6, 4.0 * cfg.max_payload as f64, now_us),
                last_progress_us: now_us,
                next_deadline_us: u64::MAX,
            },
            rx: DataRx::default(),
            stats: PeerStats::default(),
            incompatible: None,
        }
    }

    fn update_pacer(&mut self, now_us: u64, mss: usize) {
        let srtt = if self.rtt.has_sample() {
            self.rtt.srtt_us().max(100)
        } else {
            100_000
        };
        // 1.5x window per RTT, with bursts of up to 2 ms (timer granularity).
        let rate = 1.5 * self.tx.cc.cwnd() as f64 * 1e6 / srtt as f64;
        let burst = (rate * 0.002).max(4.0 * mss as f64);
        self.tx.pacer.set_rate(now_us, rate, burst);
    }

    fn rate_bps(&self) -> u64 {
        if !self.rtt.has_sample() {
            return 0;
        }
        (self.tx.cc.cwnd() as f64 * 8e6 / self.rtt.srtt_us().max(1) as f64) as u64
    }

    /// Drop queued chunks whose deadline passed before they started. Returns
    /// whether any were dropped.
    fn expire_queue(&mut self, now_us: u64) -> bool {
        if self.tx.next_deadline_us > now_us {
            return false;
        }
        let mut next = u64::MAX;
        let mut bytes = 0;
        let mut chunks = 0;
        self.tx.queue.retain(|f| {
            if f.deadline_us <= now_us {
                bytes += f.wire_len();
                chunks += u64::from(f.index == 0);
                false
            } else {
                next = next.min(f.deadline_us);
                true
            }
        });
        self.tx.queued_bytes -= bytes;
        self.tx.next_deadline_us = next;
        self.stats.expired_chunks += chunks;
        bytes > 0
    }

    /// Requeue a lost fragment (or abandon it).
    fn lost(&mut self, mut f: Frag, now_us: u64, cfg: &NetConfig, requeue: &mut Vec<Frag>) {
        self.stats.data_lost += 1;
        f.tries += 1;
        let age = now_us.saturating_sub(f.born_us);
        if f.tries >= cfg.max_data_tries || age > cfg.reassembly_timeout.as_micros() as u64 {
            self.stats.chunks_abandoned += u64::from(f.index == 0);
            return;
        }
        requeue.push(f);
    }

    fn requeue(&mut self, mut frags: Vec<Frag>) {
        self.stats.data_retransmissions += frags.len() as u64;
        while let Some(f) = frags.pop() {
            self.tx.queued_bytes += f.wire_len();
            self.tx.queue.push_front(f);
        }
    }

    fn pop_settled(&mut self) {
        while self.tx.inflight.front().is_some_and(|e| e.frag.is_none()) {
            self.tx.inflight.pop_front();
        }
    }

    fn on_data_ack(&mut self, now_us: u64, largest: u64, bitmap: u64, delay: u32, cfg: &NetConfig) {
        let Some(front) = self.tx.inflight.front().map(|e| e.pkt) else {
            return;
        };
        let back = front + self.tx.inflight.len() as u64 - 1;
        if largest < front || largest > back {
            return;
        }
        let flight_before = self.tx.inflight_bytes;
        let mut acked = 0usize;
        for i in 0..=64u64 {
            if i > largest || largest - i < front {
                break;
            }
            let got = i == 0 || (bitmap >> (i - 1)) & 1 == 1;
            if !got {
                continue;
            }
            let e = &mut self.tx.inflight[(largest - i - front) as usize];
            if e.frag.take().is_some() {
                acked += e.size;
                self.tx.inflight_bytes -= e.size;
                if i == 0 {
                    self.rtt.sample(now_us.saturating_sub(e.sent_us));
                }
            }
        }
        let rack_us = self.rtt.srtt_us() * 5 / 4 + 1_000;
        let mut requeue = Vec::new();
        let mut any_lost = false;
        let mut idx = 0;
        while idx < self.tx.inflight.len() {
            let e = &mut self.tx.inflight[idx];
            // Lost if enough later datagrams were acked, or (RACK-like) a
            // later one was acked and this one is overdue by a quarter RTT.
            let overdue = e.pkt < largest && now_us.saturating_sub(e.sent_us) > rack_us;
            if e.pkt + REORDER_THRESHOLD > largest && !overdue {
                break;
            }
            if let Some(f) = e.frag.take() {
                self.tx.inflight_bytes -= e.size;
                any_lost = true;
                self.lost(f, now_us, cfg, &mut requeue);
            }
            idx += 1;
        }
        self.requeue(requeue);
        self.tx.cc.on_delay_sample(now_us, delay);
        if acked > 0 {
            self.tx.last_progress_us = now_us;
            self.tx.cc.on_ack(acked, flight_before);
        }
        if any_lost {
            self.tx.cc.on_loss(now_us, self.rtt.srtt_us());
        }
        self.pop_settled();
        self.update_pacer(now_us, cfg.max_payload);
    }

    /// Time after which an unacked data datagram counts as lost (a probe
    /// timeout in the spirit of QUIC's PTO: 2·SRTT + 4·RTTVAR, at least
    /// 5 ms): much shorter than the control RTO floor, because on a fast
    /// path a lost tail would otherwise idle the flow for the whole floor.
    fn data_loss_timeout_us(&self, cfg: &NetConfig) -> u64 {
        if self.rtt.has_sample() {
            (2 * self.rtt.srtt_us() + 4 * self.rtt.rttvar_us())
                .clamp(5_000, cfg.rto_max.as_micros() as u64)
        } else {
            cfg.rto_initial.as_micros() as u64
        }
    }

    /// Tail loss: fragments unacked for a probe timeout. Returns when to look
    /// again.
    fn check_timeouts(&mut self, now_us: u64, cfg: &NetConfig) -> Option<u64> {
        self.pop_settled();
        let rto = self.data_loss_timeout_us(cfg);
        let mut requeue = Vec::new();
        let mut any = false;
        for e in self.tx.inflight.iter_mut() {
            if e.sent_us + rto > now_us {
                break;
            }
            if let Some(f) = e.frag.take() {
                self.tx.inflight_bytes -= e.size;
                any = true;
                self.stats.data_lost += 1;
                let mut f = f;
                f.tries += 1;
                let age = now_us.saturating_sub(f.born_us);
                if f.tries >= cfg.max_data_tries || age > cfg.reassembly_timeout.as_micros() as u64
                {
                    self.stats.chunks_abandoned += u64::from(f.index == 0);
                } else {
                    requeue.push(f);
                }
            }
        }
        if any {
            // No ack at all for a (control-scale) RTO: the path is gone or
            // badly congested, restart from one packet (RFC 6817). A single
            // probe timeout only counts as a loss.
            let stall = (self.rtt.rto().as_micros() as u64).max(4 * rto);
            if now_us.saturating_sub(self.tx.last_progress_us) >= stall {
                self.tx.cc.on_timeout();
                self.tx.last_progress_us = now_us;
            } else {
                self.tx.cc.on_loss(now_us, self.rtt.srtt_us());
            }
            self.requeue(requeue);
            self.update_pacer(now_us, cfg.max_payload);
        }
        self.pop_settled();
        self.tx
            .inflight
            .iter()
            .find(|e| e.frag.is_some())
            .map(|e| e.sent_us + rto)
    }

    fn snapshot(&self) -> PeerStats {
        let mut s = self.stats.clone();
        s.rtt_us = self.rtt.srtt_us();
        s.rttvar_us = self.rtt.rttvar_us();
        s.rto_us = self.rtt.rto().as_micros() as u64;
        s.cwnd_bytes = self.tx.cc.cwnd() as u64;
        s.rate_bps = self.rate_bps();
        s.queuing_delay_us = self.tx.cc.queuing_delay_us().max(0) as u64;
        s.inflight_bytes = self.tx.inflight_bytes as u64;
        s.queued_bytes = self.tx.queued_bytes as u64;
        s.finish_loss_rate();
        s
    }
}

impl State {
    fn peer(&mut self, addr: SocketAddr, cfg: &NetConfig, now_us: u64) -> Option<&mut Peer> {
        if !self.peers.contains_key(&addr) {
            if self.peers.len() >= cfg.max_peers {
                self.drops.peer_limit += 1;
                return None;
            }
            self.peers.insert(addr, Peer::new(cfg, now_us));
        }
        self.peers.get_mut(&addr)
    }

    fn cap_bps(&self) -> Option<u64> {
        self.cap.as_ref().map(|c| (c.rate() * 8.0) as u64)
    }

    /// How many bytes may be outstanding (queued + in flight) to a peer.
    fn window_limit(&self, cwnd: usize, mss: usize) -> usize {
        match self.global_limit(mss) {
            Some(g) => cwnd.min(g),
            None => cwnd,
        }
    }

    /// How many bytes may be outstanding to all peers together. Under a cap,
    /// 50 ms of it (at least a few datagrams) is all the queue the uplink
    /// needs; more would only make every chunk behind it late, since the
    /// cap drains the sum, not each neighbour's share.
    fn global_limit(&self, mss: usize) -> Option<usize> {
        self.cap
            .as_ref()
            .map(|c| ((c.rate() * 0.05) as usize).max(4 * mss))
    }

    /// Queued and in-flight data bytes over all peers.
    fn outstanding_total(&self) -> (usize, usize) {
        self.peers.values().fold((0, 0), |(q, i), p| {
            (q + p.tx.queued_bytes, i + p.tx.inflight_bytes)
        })
    }

    /// Bytes that may be queued towards `to` now: its own window room,
    /// bounded under a cap by what the shared uplink has left.
    fn room(&self, to: SocketAddr, mss: usize) -> usize {
        let (cwnd, outstanding) = match self.peers.get(&to) {
            Some(p) => (p.tx.cc.cwnd(), p.tx.inflight_bytes + p.tx.queued_bytes),
            None => (2 * mss, 0),
        };
        let own = self.window_limit(cwnd, mss).saturating_sub(outstanding);
        match self.global_limit(mss) {
            Some(g) => {
                let (q, i) = self.outstanding_total();
                own.min(g.saturating_sub(q + i))
            }
            None => own,
        }
    }

    /// Drop expired chunks of every peer; true if any room was freed.
    fn expire_queues(&mut self, now_us: u64) -> bool {
        let mut any = false;
        for p in self.peers.values_mut() {
            any |= p.expire_queue(now_us);
        }
        any
    }
}

impl Endpoint {
    /// Bind a UDP socket and start the endpoint's tasks (needs a tokio runtime).
    pub async fn bind(addr: SocketAddr, cfg: NetConfig) -> std::io::Result<(Endpoint, Events)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let _ = sock.set_recv_buffer_size(cfg.socket_buffer);
        let _ = sock.set_send_buffer_size(cfg.socket_buffer);
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        let socket = UdpSocket::from_std(sock.into())?;
        let local = socket.local_addr()?;
        let epoch = Instant::now();
        let (etx, erx) = mpsc::channel(cfg.event_capacity.max(1));
        let session = {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Rng::new(t.as_nanos() as u64 ^ (local.port() as u64) << 48 ^ std::process::id() as u64)
                .next_u64() as u32
        };
        let cap = cfg.upload_kbps.map(|k| {
            let rate = k as f64 * 1000.0 / 8.0;
            TokenBucket::new(rate, (rate * 0.005).max(2.0 * cfg.max_payload as f64), 0)
        });
        let state = State {
            peers: HashMap::new(),
            retired: PeerStats::default(),
            drops: DropStats::default(),
            acks: HashMap::new(),
            requests: HashMap::new(),
            reassembly: Reassembler::new(
                cfg.reassembly_max_bytes,
                cfg.max_chunk,
                cfg.reassembly_timeout.as_micros() as u64,
            ),
            cap,
            rng: Rng::new(cfg.seed),
            rejects_sent: HashMap::new(),
            rr: SocketAddr::from(([0, 0, 0, 0], 0)),
            meter: RateMeter::default(),
        };
        let inner = Arc::new(Inner {
            socket,
            local,
            cfg,
            epoch,
            session,
            state: Mutex::new(state),
            events: etx,
            wake_sender: Notify::new(),
            capacity_changed: Notify::new(),
            next_request: AtomicU64::new(1),
        });
        let r = tokio::spawn(recv_loop(inner.clone())).abort_handle();
        let s = tokio::spawn(send_loop(inner.clone())).abort_handle();
        debug!(%local, "p2ner-net endpoint bound");
        Ok((
            Endpoint {
                inner,
                _tasks: Arc::new(Tasks(vec![r, s])),
            },
            erx,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    pub fn config(&self) -> &NetConfig {
        &self.inner.cfg
    }

    /// Critical control message: resolves when acknowledged,
    /// `Err(Unreachable)` after `max_tries` transmissions.
    pub async fn send_reliable(&self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        self.inner
            .send_reliable(to, ReliableKind::Message, payload)
            .await
    }

    /// Fire-and-forget control message.
    pub fn send_unreliable(&self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        self.inner.check_control_size(payload.len())?;
        let mut out = Outbox::default();
        {
            let now = self.inner.now_us();
            let mut st = self.inner.lock();
            if !self
                .inner
                .charge_control(&mut st, to, now, wire::HEADER_LEN + 1 + payload.len())
            {
                return Ok(());
            }
            out.push(to, &Packet::Unreliable { payload: &payload });
        }
        self.inner.try_flush(&mut out);
        Ok(())
    }

    /// Reliable request and reliable response matched by id.
    pub async fn request(
        &self,
        to: SocketAddr,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, SendError> {
        self.inner.check_control_size(payload.len())?;
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        self.inner.lock().requests.insert((to, id), tx);
        struct Guard<'a>(&'a Inner, SocketAddr, u64);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                self.0.lock().requests.remove(&(self.1, self.2));
            }
        }
        let _guard = Guard(&self.inner, to, id);
        let work = async {
            let send = self
                .inner
                .send_reliable(to, ReliableKind::Request(id), payload);
            tokio::pin!(send);
            let mut sent = false;
            loop {
                tokio::select! {
                    r = &mut send, if !sent => { r?; sent = true; }
                    r = &mut rx => return r.map_err(|_| SendError::Closed),
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// Answer an [`Event::Request`] (reliable; runs in the background).
    pub fn respond(&self, to: SocketAddr, request_id: u64, payload: Bytes) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = inner
                .send_reliable(to, ReliableKind::Response(request_id), payload)
                .await
            {
                debug!(%to, request_id, "response failed: {e}");
            }
        });
    }

    /// Queue a media chunk for congestion-controlled, paced, fragmented
    /// delivery. `Err(WouldBlock)` when the neighbour's window is full
    /// (see [`Endpoint::capacity`]); a chunk is accepted whenever some
    /// capacity is left, even if it is larger than what is left.
    pub fn send_chunk(
        &self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
    ) -> Result<(), SendError> {
        self.queue_chunk(to, stream, seq, data, u64::MAX)
    }

    /// [`Endpoint::send_chunk`] for a chunk that is worthless after
    /// `deadline` (the receiver would play it late): if its first fragment
    /// has not been handed to the socket by then, the whole chunk leaves the
    /// queue unsent and is counted in `PeerStats::expired_chunks`, so a
    /// capped uplink spends itself on chunks that can still arrive in time.
    /// Once its first fragment is sent a chunk is sent completely.
    pub fn send_chunk_by(
        &self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        deadline: Instant,
    ) -> Result<(), SendError> {
        let d = deadline.saturating_duration_since(self.inner.epoch);
        self.queue_chunk(to, stream, seq, data, d.as_micros() as u64)
    }

    fn queue_chunk(
        &self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        deadline_us: u64,
    ) -> Result<(), SendError> {
        let cfg = &self.inner.cfg;
        if data.len() > cfg.max_chunk || data.len() > u32::MAX as usize {
            return Err(SendError::TooLarge {
                size: data.len(),
                max: cfg.max_chunk,
            });
        }
        let now = self.inner.now_us();
        {
            let mut st = self.inner.lock();
            if deadline_us != u64::MAX {
                st.expire_queues(now);
            }
            if st.room(to, cfg.max_payload) == 0 {
                return Err(SendError::WouldBlock);
            }
            let Some(p) = st.peer(to, cfg, now) else {
                return Err(SendError::WouldBlock);
            };
            if let Some((min, max)) = p.incompatible {
                return Err(SendError::Incompatible {
                    peer: to,
                    min,
                    max,
                    ours: wire::VERSION,
                });
            }
            p.stats.chunks_sent += 1;
            if deadline_us <= now {
                p.stats.expired_chunks += 1;
                return Ok(());
            }
            for mut f in split(stream, seq, &data, cfg.max_payload, now) {
                f.deadline_us = deadline_us;
                p.tx.queued_bytes += f.wire_len();
                p.tx.queue.push_back(f);
            }
            p.tx.next_deadline_us = p.tx.next_deadline_us.min(deadline_us);
        }
        self.inner.wake_sender.notify_one();
        Ok(())
    }

    /// What the data channel towards `to` can take now.
    /// Under an upload cap the room is shared: the sum over all neighbours
    /// of queued + in-flight bytes stays within about 50 ms of the cap, so
    /// `can_send_bytes` is the smaller of this neighbour's window room and
    /// what the uplink has left.
    pub fn capacity(&self, to: SocketAddr) -> Capacity {
        let cfg = &self.inner.cfg;
        let now = self.inner.now_us();
        let mut st = self.inner.lock();
        st.expire_queues(now);
        let cap = st.cap_bps();
        let (rate, rtt, queued) = match st.peers.get(&to) {
            Some(p) => (p.rate_bps(), p.rtt.srtt_us(), p.tx.queued_bytes as u64),
            None => (0, 0, 0),
        };
        let rate = match cap {
            Some(c) if rate == 0 || c < rate => c,
            _ => rate,
        };
        Capacity {
            can_send_bytes: st.room(to, cfg.max_payload) as u64,
            rate_bps: rate,
            rtt_us: rtt,
            queued_bytes: queued,
        }
    }

    /// The shared uplink: cap, measured rate, and data waiting or in flight
    /// over all neighbours.
    pub fn upload(&self) -> Upload {
        let now = self.inner.now_us();
        let mut st = self.inner.lock();
        st.expire_queues(now);
        let (queued, inflight) = st.outstanding_total();
        Upload {
            cap_bps: st.cap_bps(),
            rate_bps: st.meter.rate_bps(now),
            queued_bytes: queued as u64,
            inflight_bytes: inflight as u64,
        }
    }

    /// Wait until `capacity(to).can_send_bytes > 0` (or at most `max_wait`).
    pub async fn writable(&self, to: SocketAddr, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let n = self.inner.capacity_changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.capacity(to).can_send_bytes > 0 {
                return;
            }
            tokio::select! {
                _ = n => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Drop all state about a neighbour (its counters stay in the totals).
    pub fn forget(&self, peer: SocketAddr) {
        let mut st = self.inner.lock();
        if let Some(p) = st.peers.remove(&peer) {
            st.retired.add_counters(&p.stats);
        }
        st.acks.retain(|(a, _), _| *a != peer);
        st.requests.retain(|(a, _), _| *a != peer);
        st.rejects_sent.remove(&peer);
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> NetStats {
        let st = self.inner.lock();
        let mut total = st.retired.clone();
        let mut peers = std::collections::BTreeMap::new();
        let (mut rtt_sum, mut rtt_n) = (0u64, 0u64);
        for (a, p) in &st.peers {
            let s = p.snapshot();
            total.add_counters(&s);
            total.cwnd_bytes += s.cwnd_bytes;
            total.rate_bps += s.rate_bps;
            total.inflight_bytes += s.inflight_bytes;
            total.queued_bytes += s.queued_bytes;
            total.queuing_delay_us = total.queuing_delay_us.max(s.queuing_delay_us);
            if p.rtt.has_sample() {
                rtt_sum += s.rtt_us;
                rtt_n += 1;
            }
            peers.insert(*a, s);
        }
        total.rtt_us = rtt_sum.checked_div(rtt_n).unwrap_or(0);
        if let Some(c) = st.cap_bps() {
            total.rate_bps = total.rate_bps.min(c);
        }
        let mut drops = st.drops;
        drops.reassembly_expired = st.reassembly.expired;
        total.finish_loss_rate();
        NetStats {
            malformed_dropped: drops.malformed(),
            total,
            peers,
            drops,
            upload_cap_bps: st.cap_bps(),
            reassembly_bytes: st.reassembly.held() as u64,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn check_control_size(&self, len: usize) -> Result<(), SendError> {
        let max = self.cfg.max_control_payload();
        if len > max {
            Err(SendError::TooLarge { size: len, max })
        } else {
            Ok(())
        }
    }

    /// Account a control datagram about to be sent; false if the test-only
    /// send loss swallows it.
    fn charge_control(&self, st: &mut State, to: SocketAddr, now: u64, len: usize) -> bool {
        if let Some(c) = st.cap.as_mut() {
            c.take(now, len);
        }
        st.meter.record(now, len);
        if let Some(p) = st.peer(to, &self.cfg, now) {
            p.stats.control.bytes_sent += len as u64;
            p.stats.control.datagrams_sent += 1;
        }
        if st.rng.chance(self.cfg.send_drop_rate) {
            st.drops.injected_send += 1;
            return false;
        }
        true
    }

    fn try_flush(&self, out: &mut Outbox) {
        for &(to, s, e) in &out.items {
            if let Err(err) = self.socket.try_send_to(&out.buf[s..e], to) {
                trace!(%to, "send failed: {err}");
            }
        }
        out.clear();
    }

    async fn flush(&self, out: &mut Outbox) {
        for &(to, s, e) in &out.items {
            if let Err(err) = self.socket.send_to(&out.buf[s..e], to).await {
                trace!(%to, "send failed: {err}");
            }
        }
        out.clear();
    }

    async fn send_reliable(
        &self,
        to: SocketAddr,
        kind: ReliableKind,
        payload: Bytes,
    ) -> Result<(), SendError> {
        self.check_control_size(payload.len())?;
        let now = self.now_us();
        let (id, mut rx) = {
            let mut st = self.lock();
            let Some(p) = st.peer(to, &self.cfg, now) else {
                return Err(SendError::Unreachable { peer: to, tries: 0 });
            };
            if let Some((min, max)) = p.incompatible {
                return Err(SendError::Incompatible {
                    peer: to,
                    min,
                    max,
                    ours: wire::VERSION,
                });
            }
            let id = p.ids.allocate();
            p.stats.reliable_sent += 1;
            let (tx, rx) = oneshot::channel();
            st.acks.insert((to, id), tx);
            (id, rx)
        };
        struct Settle<'a>(&'a Inner, SocketAddr, u64);
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.acks.remove(&(self.1, self.2));
                if let Some(p) = st.peers.get_mut(&self.1) {
                    p.ids.settle(self.2);
                }
            }
        }
        let _settle = Settle(self, to, id);
        let mut out = Outbox::default();
        let tries = self.cfg.max_tries.max(1);
        for attempt in 0..tries {
            let wait = {
                let now = self.now_us();
                let mut st = self.lock();
                let Some(p) = st.peers.get_mut(&to) else {
                    return Err(SendError::Closed);
                };
                if attempt > 0 {
                    p.stats.retransmissions += 1;
                }
                let wait = p.rtt.backoff(attempt);
                let pkt = Packet::Reliable {
                    session: self.session,
                    id,
                    floor: p.ids.floor().min(id),
                    ts: us32(now),
                    kind,
                    payload: &payload,
                };
                let len = wire::RELIABLE_OVERHEAD + payload.len();
                if self.charge_control(&mut st, to, now, len) {
                    out.push(to, &pkt);
                }
                wait
            };
            self.flush(&mut out).await;
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(r)) => {
                    if r.is_ok() {
                        if let Some(p) = self.lock().peers.get_mut(&to) {
                            p.stats.reliable_acked += 1;
                        }
                    }
                    return r;
                }
                Ok(Err(_)) => return Err(SendError::Closed),
                Err(_) => trace!(%to, id, attempt, "reliable message timed out"),
            }
        }
        if let Some(p) = self.lock().peers.get_mut(&to) {
            p.stats.reliable_failed += 1;
        }
        debug!(%to, id, tries, "reliable message failed");
        Err(SendError::Unreachable { peer: to, tries })
    }

    /// Handle one received datagram. Returns true if data acks arrived
    /// (the sender may have room now).
    fn handle(
        &self,
        st: &mut State,
        now: u64,
        buf: &[u8],
        from: SocketAddr,
        out: &mut Outbox,
    ) -> bool {
        if st.rng.chance(self.cfg.drop_rate) {
            st.drops.injected_recv += 1;
            return false;
        }
        let pkt = match wire::decode(buf, self.cfg.max_payload.max(wire::HEADER_LEN)) {
            Ok(p) => p,
            Err(e) => {
                self.count_malformed(st, from, e, now);
                if let DecodeError::UnknownVersion(v) = e {
                    if v < wire::MIN_VERSION && wire::peek_version(buf).is_some() {
                        self.reject_version(st, from, now, out);
                    }
                }
                trace!(%from, "dropped datagram: {e}");
                return false;
            }
        };
        let Some(p) = st.peer(from, &self.cfg, now) else {
            return false;
        };
        let channel_recv = |p: &mut Peer, data: bool| {
            let c = if data {
                &mut p.stats.data
            } else {
                &mut p.stats.control
            };
            c.bytes_recv += buf.len() as u64;
            c.datagrams_recv += 1;
        };
        match pkt {
            Packet::Unreliable { payload } => {
                channel_recv(p, false);
                let ev = Event::Message {
                    from,
                    payload: Bytes::copy_from_slice(payload),
                };
                if self.events.try_send(ev).is_err() {
                    p.stats.events_dropped += 1;
                }
            }
            Packet::Reliable {
                session,
                id,
                floor,
                ts,
                kind,
                payload,
            } => {
                channel_recv(p, false);
                let ack = |p: &mut Peer, out: &mut Outbox| {
                    p.stats.control.bytes_sent += wire::ACK_LEN as u64;
                    p.stats.control.datagrams_sent += 1;
                    out.push(
                        from,
                        &Packet::Ack {
                            session,
                            id,
                            ts_echo: ts,
                        },
                    );
                };
                match p.dedup.check(session, id, floor) {
                    Verdict::Duplicate => {
                        p.stats.duplicates_suppressed += 1;
                        ack(p, out);
                    }
                    Verdict::Deliver => {
                        let payload = Bytes::copy_from_slice(payload);
                        let delivered = match kind {
                            ReliableKind::Response(rid) => {
                                if let Some(tx) = st.requests.remove(&(from, rid)) {
                                    let _ = tx.send(payload);
                                }
                                true
                            }
                            ReliableKind::Message => self.deliver(Event::Message { from, payload }),
                            ReliableKind::Request(rid) => self.deliver(Event::Request {
                                from,
                                id: rid,
                                payload,
                            }),
                        };
                        let Some(p) = st.peers.get_mut(&from) else {
                            return false;
                        };
                        if delivered {
                            p.dedup.record(id);
                            ack(p, out);
                        } else {
                            // Consumer is slow: no ack, the sender retries.
                            p.stats.events_dropped += 1;
                        }
                    }
                }
                if let Some(c) = st.cap.as_mut() {
                    c.take(now, wire::ACK_LEN);
                }
            }
            Packet::Ack {
                session,
                id,
                ts_echo,
            } => {
                channel_recv(p, false);
                if session == self.session {
                    if let Some(tx) = st.acks.remove(&(from, id)) {
                        let rtt = us32(now).wrapping_sub(ts_echo) as u64;
                        if let Some(p) = st.peers.get_mut(&from) {
                            if rtt < 60_000_000 {
                                p.rtt.sample(rtt);
                            }
                        }
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            Packet::Data(h, payload) => {
                channel_recv(p, true);
                // Record for the ack.
                let rx = &mut p.rx;
                if h.pkt > rx.largest {
                    let shift = h.pkt - rx.largest;
                    rx.bitmap = if shift > 64 {
                        0
                    } else if shift == 64 {
                        1 << 63
                    } else {
                        (rx.bitmap << shift) | (1 << (shift - 1))
                    };
                    rx.largest = h.pkt;
                } else if h.pkt < rx.largest && rx.largest - h.pkt <= 64 {
                    rx.bitmap |= 1 << (rx.largest - h.pkt - 1);
                }
                let d = us32(now).wrapping_sub(h.ts);
                rx.delay = Some(match rx.delay {
                    Some(cur) if (d.wrapping_sub(cur) as i32) >= 0 => cur,
                    _ => d,
                });
                rx.unacked += 1;
                if rx.unacked >= ACK_EVERY {
                    Self::data_ack(p, from, out);
                }
                match st
                    .reassembly
                    .insert(now, (from, h.stream, h.seq), &h, payload)
                {
                    Outcome::Complete(data) => {
                        let ev = Event::Chunk {
                            from,
                            stream: h.stream,
                            seq: h.seq,
                            data,
                        };
                        let ok = self.events.try_send(ev).is_ok();
                        if let Some(p) = st.peers.get_mut(&from) {
                            p.stats.chunks_recv += 1;
                            if !ok {
                                p.stats.events_dropped += 1;
                            }
                        }
                    }
                    Outcome::Rejected => {
                        st.drops.bad_fragment += 1;
                        if let Some(p) = st.peers.get_mut(&from) {
                            p.stats.malformed_dropped += 1;
                        }
                    }
                    Outcome::Duplicate => {
                        if let Some(p) = st.peers.get_mut(&from) {
                            p.stats.duplicate_fragments += 1;
                        }
                    }
                    Outcome::Pending => {}
                }
            }
            Packet::DataAck {
                largest,
                bitmap,
                delay,
            } => {
                channel_recv(p, true);
                p.on_data_ack(now, largest, bitmap, delay, &self.cfg);
                return true;
            }
            Packet::VersionReject { min, max } => {
                channel_recv(p, false);
                p.incompatible = Some((min, max));
                st.drops.version_rejects_received += 1;
                warn!(%from, min, max, ours = wire::VERSION, "peer does not speak our protocol version");
                let keys: Vec<_> = st
                    .acks
                    .keys()
                    .filter(|(a, _)| *a == from)
                    .copied()
                    .collect();
                for k in keys {
                    if let Some(tx) = st.acks.remove(&k) {
                        let _ = tx.send(Err(SendError::Incompatible {
                            peer: from,
                            min,
                            max,
                            ours: wire::VERSION,
                        }));
                    }
                }
            }
        }
        false
    }

    fn deliver(&self, ev: Event) -> bool {
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            // Nobody listens: accept (and ack) so the peer does not retry.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    fn data_ack(p: &mut Peer, to: SocketAddr, out: &mut Outbox) {
        let rx = &mut p.rx;
        if rx.unacked == 0 {
            return;
        }
        rx.unacked = 0;
        let delay = rx.delay.take().unwrap_or(0);
        out.push(
            to,
            &Packet::DataAck {
                largest: rx.largest,
                bitmap: rx.bitmap,
                delay,
            },
        );
        p.stats.data.bytes_sent += wire::DATA_ACK_LEN as u64;
        p.stats.data.datagrams_sent += 1;
    }

    fn count_malformed(&self, st: &mut State, from: SocketAddr, e: DecodeError, _now: u64) {
        let d = &mut st.drops;
        match e {
            DecodeError::Truncated => d.truncated += 1,
            DecodeError::BadMagic => d.bad_magic += 1,
            DecodeError::UnknownVersion(_) => d.unknown_version += 1,
            DecodeError::Oversized => d.oversized += 1,
            DecodeError::BadLength => d.bad_length += 1,
            DecodeError::UnknownType => d.unknown_type += 1,
            DecodeError::Invalid => d.invalid += 1,
        }
        if let Some(p) = st.peers.get_mut(&from) {
            p.stats.malformed_dropped += 1;
        }
    }

    /// Tell an older peer which versions we speak (at most once a second).
    fn reject_version(&self, st: &mut State, to: SocketAddr, now: u64, out: &mut Outbox) {
        if st.rejects_sent.len() > 4096 {
            st.rejects_sent.clear();
        }
        let last = st.rejects_sent.get(&to).copied();
        if last.is_some_and(|t| now.saturating_sub(t) < 1_000_000) {
            return;
        }
        st.rejects_sent.insert(to, now);
        st.drops.version_rejects_sent += 1;
        out.push(
            to,
            &Packet::VersionReject {
                min: wire::MIN_VERSION,
                max: wire::VERSION,
            },
        );
    }

    /// Pick data datagrams to send now. Returns when to look again
    /// (None: only when woken).
    fn fill(&self, st: &mut State, now: u64, out: &mut Outbox) -> Option<u64> {
        let cfg = &self.cfg;
        let mut wake: Option<u64> = None;
        let mut at = |t: u64| wake = Some(wake.map_or(t, |w: u64| w.min(t)));
        let State {
            peers,
            cap,
            rng,
            drops,
            rr,
            ..
        } = st;
        let mut expired = false;
        for p in peers.values_mut() {
            if !p.tx.inflight.is_empty() {
                if let Some(t) = p.check_timeouts(now, cfg) {
                    at(t);
                }
            }
            expired |= p.expire_queue(now);
            if p.tx.next_deadline_us != u64::MAX {
                at(p.tx.next_deadline_us);
            }
        }
        if expired {
            self.capacity_changed.notify_waiters();
        }
        // Round robin over neighbours with queued data, resuming after the
        // last one served so a binding cap does not favour the first.
        let mut keys: Vec<SocketAddr> = peers
            .iter()
            .filter(|(_, p)| !p.tx.queue.is_empty())
            .map(|(a, _)| *a)
            .collect();
        keys.sort_unstable();
        if keys.is_empty() {
            return wake;
        }
        let start = keys.partition_point(|a| *a <= *rr);
        keys.rotate_left(start);
        let mut sent_any = true;
        'passes: while sent_any {
            sent_any = false;
            for addr in &keys {
                let Some(p) = peers.get_mut(addr) else {
                    continue;
                };
                if out.items.len() >= SEND_BATCH {
                    at(now);
                    break 'passes;
                }
                let Some(f) = p.tx.queue.front() else {
                    continue;
                };
                let size = f.wire_len();
                if p.tx.inflight_bytes > 0 && p.tx.inflight_bytes + size > p.tx.cc.cwnd() {
                    continue;
                }
                if let Some(c) = cap.as_mut() {
                    if !c.ready(now) {
                        at(c.ready_at(now));
                        break 'passes;
                    }
                }
                if !p.tx.pacer.ready(now) {
                    at(p.tx.pacer.ready_at(now));
                    continue;
                }
                let mut f = p.tx.queue.pop_front().expect("front exists");
                p.tx.queued_bytes -= size;
                if f.deadline_us != u64::MAX {
                    // Started: the rest of the chunk goes out whatever the
                    // clock says (half a chunk is worth nothing), and a
                    // retransmission is not an expiry.
                    f.deadline_us = u64::MAX;
                    for g in p.tx.queue.iter_mut() {
                        if g.stream != f.stream || g.seq != f.seq || g.deadline_us == u64::MAX {
                            break;
                        }
                        g.deadline_us = u64::MAX;
                    }
                }
                let pkt = p.tx.next_pkt;
                p.tx.next_pkt += 1;
                if rng.chance(cfg.send_drop_rate) {
                    drops.injected_send += 1;
                } else {
                    out.push(*addr, &Packet::Data(f.header(pkt, us32(now)), &f.data));
                }
                if p.tx.inflight.is_empty() {
                    p.tx.last_progress_us = now;
                    // First datagram after idle: arm the loss timer.
                    at(now + p.data_loss_timeout_us(cfg));
                }
                p.tx.inflight.push_back(InFlight {
                    pkt,
                    sent_us: now,
                    size,
                    frag: Some(f),
                });
                p.tx.inflight_bytes += size;
                p.tx.pacer.take(now, size);
                if let Some(c) = cap.as_mut() {
                    c.take(now, size);
                }
                p.stats.data.bytes_sent += size as u64;
                p.stats.data.datagrams_sent += 1;
                *rr = *addr;
                sent_any = true;
            }
        }
        wake
    }
}

async fn recv_loop(inner: Arc<Inner>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Outbox::default();
    loop {
        if let Err(e) = inner.socket.readable().await {
            warn!("socket failed: {e}");
            return;
        }
        let mut n = 0;
        let mut acked = false;
        while n < RECV_BATCH {
            match inner.socket.try_recv_from(&mut buf) {
                Ok((len, from)) => {
                    n += 1;
                    let now = inner.now_us();
                    let mut st = inner.lock();
                    let before = out.buf.len();
                    acked |= inner.handle(&mut st, now, &buf[..len], from, &mut out);
                    st.meter.record(now, out.buf.len() - before);
                    drop(st);
                    if out.items.len() >= 32 {
                        inner.try_flush(&mut out);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors (e.g. port unreachable) surface here.
                    trace!("recv error: {e}");
                    n += 1;
                }
            }
        }
        {
            // The socket ran dry (or we did a batch): ack what we have.
            let now = inner.now_us();
            let mut st = inner.lock();
            let st = &mut *st;
            let before = out.buf.len();
            for (addr, p) in st.peers.iter_mut() {
                if p.rx.unacked > 0 {
                    Inner::data_ack(p, *addr, &mut out);
                }
            }
            st.meter.record(now, out.buf.len() - before);
            st.reassembly.expire(now);
        }
        inner.try_flush(&mut out);
        if acked {
            inner.wake_sender.notify_one();
            inner.capacity_changed.notify_waiters();
        }
        if n >= RECV_BATCH {
            tokio::task::yield_now().await;
        }
    }
}

async fn send_loop(inner: Arc<Inner>) {
    let mut out = Outbox::default();
    loop {
        let now = inner.now_us();
        let wake = {
            let mut st = inner.lock();
            let before = out.buf.len();
            let wake = inner.fill(&mut st, now, &mut out);
            st.meter.record(now, out.buf.len() - before);
            wake
        };
        inner.flush(&mut out).await;
        match wake {
            Some(t) if t <= now => tokio::task::yield_now().await,
            Some(t) => {
                let deadline = inner.epoch + Duration::from_micros(t);
                tokio::select! {
                    _ = inner.wake_sender.notified() => {}
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                }
            }
            None => inner.wake_sender.notified().await,
        }
    }
}
