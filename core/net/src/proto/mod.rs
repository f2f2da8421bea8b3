//! The network protocol as a sans-IO state machine, in the style of
//! quinn-proto: [`NetState`] holds everything one client knows about its
//! neighbours (control-channel reliability and duplicate suppression,
//! request/response bookkeeping, fragmentation and reassembly, LEDBAT,
//! pacing, the upload cap, the data queue with deadlines, acks, loss
//! detection, counters) and never touches a socket, a clock, a runtime or a
//! thread.
//!
//! Why: the same protocol code must run over a real UDP socket
//! ([`crate::Endpoint`] is a thin tokio shell around it) and over simulated
//! links on simulated time (the swarm simulator, the `Pair` tests), so that
//! what is measured in simulation is what ships. Time is a parameter: `now`
//! is microseconds since an epoch the driver chooses, and the state machine
//! only compares and subtracts times.
//!
//! A driver feeds it with [`NetState::handle_datagram`],
//! [`NetState::handle_timeout`] and API calls, and after each of them drains
//! [`NetState::poll_transmit`] (datagrams to send), [`NetState::poll_event`]
//! (deliveries and completions) and asks [`NetState::poll_timeout`] when to
//! call `handle_timeout` next. Reliable sends return a [`SendId`] whose
//! completion or failure comes back as an event.

mod link;
mod peer;

use crate::auth::{CookieJar, KeyedRng, StaticKey};
use crate::config::NetConfig;
use crate::error::SendError;
use crate::fragment::{split, Outcome, Reassembler};
use crate::pacer::{RateMeter, TokenBucket};
use crate::reliable::Verdict;
use crate::rng::Rng;
use crate::stats::{DropStats, NetStats, PeerStats};
use crate::wire::{self, DataHeader, DecodeError, Packet, ReliableKind};
use bytes::Bytes;
use peer::{InFlight, Peer};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

/// Data datagrams acked by the receiver every this many, as QUIC does; a
/// gap or a datagram filling one is acked at once (the sender's loss
/// detection wants it), and any datagram going to the sender carries the
/// ack earlier.
const ACK_EVERY: u32 = 2;
/// Longest a received data datagram waits for its ack (QUIC's
/// max_ack_delay; [`Peer::ack_hold_us`] holds a quarter RTT up to this).
/// Under an upload cap datagrams arrive spaced out, so acking each on
/// arrival (what a socket that runs dry after every datagram asked for)
/// cost a sealed ack per data datagram, the largest part of the overhead;
/// held, the ack rides with reverse traffic or covers two. The ack says how
/// long it was held (the sender's RTT sample leaves that out) and the
/// sender's probe timeout allows for it.
pub(crate) const MAX_ACK_DELAY_US: u64 = 20_000;
/// Most that loss detection allows beyond the RTT and the peer's ack hold
/// (the slack adapts per peer, from [`MIN_SLACK_US`]): a receiver acks late
/// when its process is not scheduled on time or its timer fires late, and
/// an ack later than the timeout makes a spurious retransmission, which
/// doubles the slack (an ack for a datagram declared lost); every other
/// loss declared takes an eighth off. With a fixed 1 ms, 50 real capped
/// subscribers on a two-core loopback machine (`cargo bench -p p2ner-tests
/// --bench capacity`, pull x mesh at load 0.5) played 0.72-0.998 at 19-27 %
/// overhead, run to run; with a fixed 10 ms 1.000 at 15.5 % in every run,
/// but 20 % kernel loss on loopback's 0.1 ms RTT (`tests/netns.rs`) then
/// waited 16 ms for every lost tail and the transfer did not finish.
pub(crate) const PTO_SLACK_US: u64 = 10_000;
/// Bytes the upload cap lets go at once (5 ms of it, at least two
/// datagrams): what may be queued ahead of a datagram on an uplink that is
/// as fast as the cap.
pub(crate) fn cap_burst(rate_bytes_per_s: f64, max_payload: usize) -> f64 {
    (rate_bytes_per_s * 0.005).max(2.0 * max_payload as f64)
}
/// Least slack: QUIC's timer granularity.
pub(crate) const MIN_SLACK_US: u64 = 1_000;
/// Longest a reliable message's ack is held for something going the same
/// way to ride with.
const ACK_DELAY_US: u64 = 1_000;
/// Longest an unreliable control message waits, when data is queued for its
/// peer or an ack is owed to it, for that datagram to share its seal: a sealed
/// datagram of its own costs 26 bytes besides the frame, and under a cap
/// most announcements, maps and pings went alone. (Pull x mesh in the
/// simulator at load 0.8: 0.9799 / 14.3 % overhead without, 0.9870 /
/// 13.9 % with; an unreliable message is never urgent to a few ms.)
const UNRELIABLE_HOLD_US: u64 = 5_000;
/// Data datagrams encoded per fill of the outbox.
const SEND_BATCH: usize = 64;
/// Cookie replies per second at most, to anyone: a flood of cookie requests
/// costs a bounded upload (each reply is smaller than its request anyway).
const COOKIES_PER_SEC: u32 = 2_000;

/// Something for the owner of the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A control message (reliable ones exactly once, unreliable at most once).
    Message {
        /// The peer that sent it.
        from: SocketAddr,
        /// The message.
        payload: Bytes,
    },
    /// A request to answer with [`crate::Endpoint::respond`].
    Request {
        /// Who asks.
        from: SocketAddr,
        /// What to answer with.
        id: u64,
        /// The request.
        payload: Bytes,
    },
    /// A complete media chunk.
    Chunk {
        /// The neighbour that sent it.
        from: SocketAddr,
        /// The stream it belongs to.
        stream: u64,
        /// Its sequence number.
        seq: u64,
        /// The whole chunk, reassembled.
        data: Bytes,
    },
}

/// What the data channel towards one neighbour can take now.
///
/// Schedulers see plugin-api's `Capacity`, which the engine's driver makes
/// from this one: the network layer depends on no other p2ner crate, and the
/// ABI type cannot grow fields like `queued_bytes` freely.
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

/// Identifies one reliable send (message, request or response) until its
/// [`NetEvent::Acked`] or [`NetEvent::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendId(pub u64);

/// What the state machine tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// For the application. At most `NetConfig::event_capacity` of these
    /// wait in the state machine: beyond that chunks are dropped and reliable
    /// messages left unacknowledged (the sender retries), so a driver that
    /// stops polling exerts back-pressure instead of growing memory.
    Deliver(Event),
    /// The answer to [`NetState::request`].
    Response {
        /// Who answered.
        from: SocketAddr,
        /// The request this answers.
        request_id: u64,
        /// The response.
        payload: Bytes,
    },
    /// The peer acknowledged this reliable send.
    Acked(SendId),
    /// This reliable send will not be acknowledged.
    Failed(SendId, SendError),
    /// Some data-channel room may have opened (acks, expired chunks): a
    /// writer waiting for [`NetState::capacity`] should look again.
    /// Coalesced: at most one waits at a time.
    CapacityChanged,
}

/// One datagram to send, borrowed from the state machine until the next
/// call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Where to.
    pub to: SocketAddr,
    /// The datagram, as the socket takes it.
    pub bytes: &'a [u8],
}

/// A reliable send waiting for its ack.
struct Pending {
    to: SocketAddr,
    /// The per-peer id on the wire.
    wire_id: u64,
    kind: ReliableKind,
    payload: Bytes,
    /// Transmissions so far.
    tries: u32,
    /// When the current transmission times out (µs).
    timeout_at: u64,
}

/// A batch of datagrams in one buffer, for drivers that send many at once
/// ([`NetState::poll_transmits`]): encoding straight into the driver's
/// buffer saves a copy per datagram on the fast path.
#[derive(Debug, Default, Clone)]
pub struct Datagrams {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Datagrams {
    fn push(&mut self, to: SocketAddr, p: &Packet<'_>) {
        let start = self.buf.len();
        wire::encode(p, &mut self.buf);
        self.items.push((to, start, self.buf.len()));
    }

    fn push_bytes(&mut self, to: SocketAddr, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.items.push((to, start, self.buf.len()));
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No datagrams held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the batch, keeping its buffer for the next fill.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    /// Destination and bytes of each datagram, in order.
    pub fn iter(&self) -> impl Iterator<Item = Transmit<'_>> + '_ {
        self.items.iter().map(|&(to, s, e)| Transmit {
            to,
            bytes: &self.buf[s..e],
        })
    }

    fn bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Datagrams encoded and not yet handed out: plaintext, sealed on the way
/// out, except those marked raw (handshake packets).
#[derive(Default)]
struct Outbox {
    dg: Datagrams,
    next: usize,
    /// Item i goes out unsealed when `raw[i]` (missing: false).
    raw: Vec<bool>,
    /// Item i went out inside an earlier item's datagram (missing: false).
    taken: Vec<bool>,
}

impl Outbox {
    fn push(&mut self, to: SocketAddr, p: &Packet<'_>) {
        self.dg.push(to, p);
    }
    fn drained(&self) -> bool {
        self.next >= self.dg.items.len()
    }
    fn reset(&mut self) {
        self.dg.clear();
        self.raw.clear();
        self.taken.clear();
        self.next = 0;
    }
}

/// Encoded packets held for one peer, and since when.
struct Held {
    /// When they go out on their own, if nothing took them along before.
    due: u64,
    pkts: Vec<Vec<u8>>,
}

fn us32(now_us: u64) -> u32 {
    now_us as u32
}

/// The protocol state of one client: every neighbour behind one socket.
pub struct NetState {
    cfg: NetConfig,
    session: u32,
    peers: HashMap<SocketAddr, Peer>,
    retired: PeerStats,
    drops: DropStats,
    pending: HashMap<SendId, Pending>,
    /// (peer, wire id) of pending sends, for acks and version rejects.
    by_wire: HashMap<(SocketAddr, u64), SendId>,
    /// Retransmission timers, removed when a send settles: a stale entry
    /// would wake the driver for nothing (thousands per RTO under load).
    timers: BTreeSet<(u64, SendId)>,
    next_send: u64,
    requests: HashSet<(SocketAddr, u64)>,
    next_request: u64,
    reassembly: Reassembler<(SocketAddr, u64, u64)>,
    cap: Option<TokenBucket>,
    rng: Rng,
    rejects_sent: HashMap<SocketAddr, u64>,
    /// Last neighbour served by the data scheduler.
    rr: SocketAddr,
    meter: RateMeter,
    out: Outbox,
    events: VecDeque<NetEvent>,
    /// `Deliver` events in `events`.
    deliveries: usize,
    capacity_event_queued: bool,
    /// When the data scheduler next has something to do (from its last run).
    data_wake: Option<u64>,
    /// Peers with received data not yet acknowledged.
    ack_due: Vec<SocketAddr>,
    /// This endpoint's static key (its identity on every link).
    key: StaticKey,
    /// Issues and checks address cookies.
    jar: CookieJar,
    /// Randomness for nonces and ephemeral keys (injected seed).
    crng: KeyedRng,
    /// Links: our handshakes in progress and established links.
    links: HashMap<SocketAddr, link::Link>,
    /// Responder side: handshakes after a valid cookie, waiting for `Fin`.
    halves: HashMap<SocketAddr, link::Half>,
    /// Datagrams of a handshake we abandoned for the peer's (collision).
    orphans: HashMap<SocketAddr, VecDeque<Vec<u8>>>,
    /// Handshake timers (at, address); stale entries are skipped.
    hs_timers: BTreeSet<(u64, SocketAddr)>,
    /// Sealed datagrams being handed out by `poll_transmit`.
    sealed: Datagrams,
    sealed_next: usize,
    /// Plaintext of the datagram being opened.
    scratch: Vec<u8>,
    /// Plaintext of the datagram being sealed.
    scratch_tx: Vec<u8>,
    /// Outbox ranges going into the datagram being sealed.
    group: Vec<(usize, usize)>,
    /// Held packets going into the datagram being sealed.
    extra: Vec<u8>,
    /// Acks held back up to [`ACK_DELAY_US`] so they can ride in a datagram
    /// that goes to the same peer anyway (an answer, a data fragment).
    held: HashMap<SocketAddr, Held>,
    /// (second, cookie replies in it).
    cookie_window: (u64, u32),
    /// Addresses whose datagrams are dropped unread until the given time
    /// (the application caught them lying, [`NetState::block`]).
    blocked: HashMap<SocketAddr, u64>,
}

impl NetState {
    /// A fresh state. `session` identifies this incarnation to peers (pick it
    /// at random: a restarted client must not look like its old self);
    /// `now` is the driver's clock in µs.
    ///
    /// Keys and secrets come from a generator seeded by `cfg.seed` and
    /// `session`: deterministic, for simulations and tests. A real endpoint
    /// uses [`NetState::with_keys`] with the OS's randomness.
    pub fn new(cfg: NetConfig, session: u32, now: u64) -> Self {
        let mut rng = KeyedRng::from_seed(cfg.seed ^ ((session as u64) << 32 | session as u64));
        let key = StaticKey::generate(&mut rng);
        let secret = rng.bytes32();
        Self::with_keys(cfg, session, now, key, secret)
    }

    /// A fresh state with an injected static key, and `secret`, from which
    /// the cookie secrets and every random nonce and ephemeral key are
    /// derived (32 random bytes).
    pub fn with_keys(
        cfg: NetConfig,
        session: u32,
        now: u64,
        key: StaticKey,
        secret: [u8; 32],
    ) -> Self {
        let mut crng = KeyedRng::new(secret);
        let jar = CookieJar::new(crng.bytes32());
        let cap = cfg.upload_kbps.map(|k| {
            let rate = k as f64 * 1000.0 / 8.0;
            TokenBucket::new(rate, cap_burst(rate, cfg.max_payload), now)
        });
        NetState {
            peers: HashMap::new(),
            retired: PeerStats::default(),
            drops: DropStats::default(),
            pending: HashMap::new(),
            by_wire: HashMap::new(),
            timers: BTreeSet::new(),
            next_send: 1,
            requests: HashSet::new(),
            next_request: 1,
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
            out: Outbox::default(),
            events: VecDeque::new(),
            deliveries: 0,
            capacity_event_queued: false,
            data_wake: None,
            ack_due: Vec::new(),
            key,
            jar,
            crng,
            links: HashMap::new(),
            halves: HashMap::new(),
            orphans: HashMap::new(),
            hs_timers: BTreeSet::new(),
            sealed: Datagrams::default(),
            sealed_next: 0,
            scratch: Vec::new(),
            scratch_tx: Vec::new(),
            group: Vec::new(),
            extra: Vec::new(),
            held: HashMap::new(),
            cookie_window: (0, 0),
            blocked: HashMap::new(),
            session,
            cfg,
        }
    }

    /// The settings the state machine runs with.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// This incarnation's random id: a restarted peer's reliable ids start over, and peers must tell.
    pub fn session(&self) -> u32 {
        self.session
    }

    // ----- driver interface -------------------------------------------------

    /// One datagram arrived from `from`. Never panics, whatever the bytes.
    pub fn handle_datagram(&mut self, now: u64, from: SocketAddr, buf: &[u8]) {
        if self.rng.chance(self.cfg.drop_rate) {
            self.drops.injected_recv += 1;
            return;
        }
        if let Some(&until) = self.blocked.get(&from) {
            if now < until {
                self.drops.blocked += 1;
                return;
            }
            self.blocked.remove(&from);
        }
        let pkt = match wire::decode(buf, self.cfg.max_payload.max(wire::HEADER_LEN)) {
            Ok(p) => p,
            Err(e) => {
                self.count_malformed(from, e);
                if let DecodeError::UnknownVersion(v) = e {
                    // Never larger than the question: a reject is 9 bytes.
                    if v < wire::MIN_VERSION
                        && wire::peek_version(buf).is_some()
                        && buf.len() >= wire::HEADER_LEN + 3
                    {
                        self.reject_version(from, now);
                    }
                }
                return;
            }
        };
        match pkt {
            Packet::CookieRequest { .. }
            | Packet::Cookie { .. }
            | Packet::Init { .. }
            | Packet::Resp { .. }
            | Packet::Fin { .. } => self.handle_handshake(now, from, pkt),
            Packet::Sealed {
                counter,
                ciphertext,
            } => {
                if !self.open(now, from, counter, ciphertext) {
                    return;
                }
                let plain = std::mem::take(&mut self.scratch);
                // The datagram's bytes are shared out over its frames (the
                // first one also carries the seal) so that the counters add
                // up to what arrived.
                let mut extra = buf.len() - plain.len();
                let mut first = true;
                for frame in wire::Frames::new(&plain) {
                    match frame {
                        Ok((inner, used)) => {
                            if self.peer(from, now).is_none() {
                                break;
                            }
                            let len = used + std::mem::take(&mut extra);
                            self.handle_packet(now, from, len, first, inner);
                            first = false;
                        }
                        Err(e) => self.count_malformed(from, e),
                    }
                }
                self.scratch = plain;
            }
            Packet::VersionReject { .. } => {
                // Unauthenticated by nature: believed only from an address
                // we are starting a handshake with, never against a link
                // that proved it speaks our version.
                let ours = self.links.get(&from).is_some_and(|l| !l.established());
                if ours && self.peer(from, now).is_some() {
                    self.links.remove(&from);
                    self.handle_packet(now, from, buf.len(), true, pkt);
                } else {
                    self.drops.version_rejects_ignored += 1;
                }
            }
            _ => self.drops.unauthenticated += 1,
        }
    }

    /// Run the timers that are due: reliable retransmissions and failures,
    /// data loss detection, delayed acks, deadlines, reassembly expiry.
    pub fn handle_timeout(&mut self, now: u64) {
        self.handshake_timeouts(now);
        while let Some(&(at, sid)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(p) = self.pending.get(&sid) else {
                continue;
            };
            if p.tries >= self.cfg.max_tries.max(1) {
                let (to, tries) = (p.to, p.tries);
                if let Some(peer) = self.peers.get_mut(&to) {
                    peer.stats.reliable_failed += 1;
                }
                // The other side may have lost the link (a restart): the
                // next send starts a new handshake.
                self.links.remove(&to);
                self.settle(sid);
                self.emit(NetEvent::Failed(
                    sid,
                    SendError::Unreachable { peer: to, tries },
                ));
            } else {
                self.transmit_reliable(now, sid);
            }
        }
        self.release_due(now);
        if !self.ack_due.is_empty() {
            let due = std::mem::take(&mut self.ack_due);
            for addr in due {
                let Some(p) = self.peers.get_mut(&addr) else {
                    continue;
                };
                if p.rx.unacked > 0 && now.saturating_sub(p.rx.unacked_since_us) < p.ack_hold_us() {
                    self.ack_due.push(addr);
                } else {
                    p.rx.ack_listed = false;
                    Self::data_ack(p, addr, now, &mut self.out);
                }
            }
        }
        let mut changed = false;
        for p in self.peers.values_mut() {
            if !p.tx.inflight.is_empty() {
                p.check_timeouts(now, &self.cfg);
            }
            changed |= p.expire_queue(now);
        }
        if changed {
            self.capacity_changed();
        }
        self.reassembly.expire(now);
    }

    /// The socket has no more datagrams waiting: acknowledge what has
    /// waited its hold (`Peer::ack_hold_us`). (Acking everything here, as this once
    /// did, cost one ack per data datagram under an upload cap, where every
    /// datagram arrives alone; acks are due every `ACK_EVERY` datagrams,
    /// on a gap, or after the delay, and ride any datagram to their peer.)
    pub fn flush_acks(&mut self, now: u64) {
        let due = std::mem::take(&mut self.ack_due);
        for addr in due {
            let Some(p) = self.peers.get_mut(&addr) else {
                continue;
            };
            if p.rx.unacked > 0 && now.saturating_sub(p.rx.unacked_since_us) < p.ack_hold_us() {
                self.ack_due.push(addr);
            } else {
                p.rx.ack_listed = false;
                Self::data_ack(p, addr, now, &mut self.out);
            }
        }
    }

    /// The next datagram to send, if any. Control traffic and acks come
    /// first; then data, as the windows, pacers and upload cap allow at
    /// `now` (data timers start here, when the datagram is handed out).
    pub fn poll_transmit(&mut self, now: u64) -> Option<Transmit<'_>> {
        if self.sealed_next >= self.sealed.len() {
            self.sealed.clear();
            self.sealed_next = 0;
            let mut dg = std::mem::take(&mut self.sealed);
            while dg.is_empty() {
                if self.out.drained() {
                    self.out.reset();
                    let mut plain = std::mem::take(&mut self.out.dg);
                    self.fill(now, &mut plain, SEND_BATCH);
                    self.out.dg = plain;
                    if self.out.drained() {
                        break;
                    }
                }
                self.take_out(now, &mut dg, SEND_BATCH);
            }
            self.sealed = dg;
            if self.sealed.is_empty() {
                return None;
            }
        }
        let (to, s, e) = self.sealed.items[self.sealed_next];
        self.sealed_next += 1;
        self.meter.record(now, e - s);
        Some(Transmit {
            to,
            bytes: &self.sealed.buf[s..e],
        })
    }

    /// Like [`NetState::poll_transmit`], appending datagrams to `out` until
    /// it holds `max`; returns whether more may be ready at once (the batch
    /// filled): send and clear `out`, then call again.
    pub fn poll_transmits(&mut self, now: u64, max: usize, out: &mut Datagrams) -> bool {
        let before = out.bytes();
        // Whatever poll_transmit had sealed and not handed out goes first.
        while self.sealed_next < self.sealed.len() && out.len() < max {
            let (to, s, e) = self.sealed.items[self.sealed_next];
            self.sealed_next += 1;
            out.push_bytes(to, &self.sealed.buf[s..e]);
        }
        loop {
            if out.len() >= max {
                break;
            }
            if self.out.drained() {
                self.out.reset();
                let mut plain = std::mem::take(&mut self.out.dg);
                self.fill(now, &mut plain, max - out.len());
                self.out.dg = plain;
                if self.out.drained() {
                    break;
                }
            }
            self.take_out(now, out, max);
        }
        self.meter.record(now, out.bytes() - before);
        out.len() >= max || !self.out.drained()
    }

    /// Only the datagrams that need no window (control messages, acks,
    /// version rejects), appended to `out`; data stays with the scheduler.
    /// Lets a driver send an API call's control message from the caller's
    /// context at once, without waiting for its I/O loop, while data keeps
    /// going out in order from one place.
    pub fn poll_immediate(&mut self, now: u64, out: &mut Datagrams) {
        let before = out.bytes();
        while !self.out.drained() {
            self.take_out(now, out, usize::MAX);
        }
        self.out.reset();
        self.meter.record(now, out.bytes() - before);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<NetEvent> {
        let ev = self.events.pop_front()?;
        match ev {
            NetEvent::Deliver(_) => self.deliveries -= 1,
            NetEvent::CapacityChanged => self.capacity_event_queued = false,
            _ => {}
        }
        Some(ev)
    }

    /// When [`NetState::handle_timeout`] should run next (µs). Valid after
    /// `poll_transmit` returned `None`; any input may move it earlier.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t = self.data_wake;
        let mut at = |x: u64| t = Some(t.map_or(x, |y: u64| y.min(x)));
        if let Some((x, _)) = self.timers.first() {
            at(*x);
        }
        if let Some((x, _)) = self.hs_timers.first() {
            at(*x);
        }
        if let Some(h) = self.held.values().map(|h| h.due).min() {
            at(h);
        }
        if !self.ack_due.is_empty() {
            let oldest = self
                .ack_due
                .iter()
                .filter_map(|a| self.peers.get(a))
                .map(|p| p.rx.unacked_since_us + p.ack_hold_us())
                .min();
            if let Some(o) = oldest {
                at(o);
            }
        }
        if let Some(o) = self.reassembly.oldest_start() {
            at(o + self.cfg.reassembly_timeout.as_micros() as u64);
        }
        t
    }

    // ----- application interface --------------------------------------------

    /// A critical control message; [`NetEvent::Acked`] or
    /// [`NetEvent::Failed`] (after `max_tries` transmissions) follows.
    pub fn send_reliable(
        &mut self,
        now: u64,
        to: SocketAddr,
        payload: Bytes,
    ) -> Result<SendId, SendError> {
        self.send_reliable_kind(now, to, ReliableKind::Message, payload)
    }

    /// A reliable request; its answer comes as [`NetEvent::Response`] with
    /// the returned request id (and the send itself completes as for
    /// `send_reliable`). No timeout here: the caller decides how long to
    /// wait and then calls [`NetState::cancel_request`].
    pub fn request(
        &mut self,
        now: u64,
        to: SocketAddr,
        payload: Bytes,
    ) -> Result<(SendId, u64), SendError> {
        let rid = self.next_request;
        let sid = self.send_reliable_kind(now, to, ReliableKind::Request(rid), payload)?;
        self.next_request += 1;
        self.requests.insert((to, rid));
        Ok((sid, rid))
    }

    /// Stop waiting for the answer to a request.
    pub fn cancel_request(&mut self, to: SocketAddr, request_id: u64) {
        self.requests.remove(&(to, request_id));
    }

    /// Answer an [`Event::Request`] (reliable).
    pub fn respond(
        &mut self,
        now: u64,
        to: SocketAddr,
        request_id: u64,
        payload: Bytes,
    ) -> Result<SendId, SendError> {
        self.send_reliable_kind(now, to, ReliableKind::Response(request_id), payload)
    }

    /// Stop retransmitting a reliable send; no event follows for it.
    pub fn cancel(&mut self, id: SendId) {
        self.settle(id);
    }

    /// Fire-and-forget control message.
    pub fn send_unreliable(
        &mut self,
        now: u64,
        to: SocketAddr,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.check_control_size(payload.len())?;
        if self.charge_control(to, now, wire::SEAL_OVERHEAD + 2 + payload.len()) {
            // Held only when something is about to go that way anyway: data
            // queued for the peer or an ack owed to it (and never before the
            // link is up: the first message starts the handshake).
            let ride = self.is_established(to)
                && self
                    .peers
                    .get(&to)
                    .is_some_and(|p| p.tx.queued_bytes > 0 || p.rx.unacked > 0);
            if ride {
                self.hold(now, to, &Packet::Unreliable { payload }, UNRELIABLE_HOLD_US);
            } else {
                self.out.push(to, &Packet::Unreliable { payload });
            }
        }
        Ok(())
    }

    /// Queue a media chunk for congestion-controlled, paced, fragmented
    /// delivery. `Err(WouldBlock)` when there is no room (see
    /// [`NetState::capacity`]); a chunk is accepted whenever some room is
    /// left, even if it is larger than what is left.
    pub fn send_chunk(
        &mut self,
        now: u64,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
    ) -> Result<(), SendError> {
        self.queue_chunk(now, to, stream, seq, data, u64::MAX)
    }

    /// [`NetState::send_chunk`] for a chunk worthless after `deadline` (µs):
    /// if its first fragment has not been handed out by then, the whole
    /// chunk leaves the queue unsent and is counted in
    /// `PeerStats::expired_chunks`, so a capped uplink spends itself on
    /// chunks that can still arrive in time. A started chunk is finished.
    pub fn send_chunk_by(
        &mut self,
        now: u64,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        deadline: u64,
    ) -> Result<(), SendError> {
        self.queue_chunk(now, to, stream, seq, data, deadline)
    }

    /// What the data channel towards `to` can take now. Under an upload cap
    /// the room is shared: the bytes queued locally over all neighbours stay
    /// within about 50 ms of the cap (at least 4 datagrams), so
    /// `can_send_bytes` is the smaller of this neighbour's window room and
    /// what the shared queue has left.
    pub fn capacity(&mut self, now: u64, to: SocketAddr) -> Capacity {
        if self.expire_queues(now) {
            self.capacity_changed();
        }
        let cap = self.cap_bps();
        let (rate, rtt, queued) = match self.peers.get(&to) {
            Some(p) => (p.rate_bps(), p.rtt.srtt_us(), p.tx.queued_bytes as u64),
            None => (0, 0, 0),
        };
        let rate = match cap {
            Some(c) if rate == 0 || c < rate => c,
            _ => rate,
        };
        Capacity {
            can_send_bytes: self.room(to) as u64,
            rate_bps: rate,
            rtt_us: rtt,
            queued_bytes: queued,
        }
    }

    /// The shared uplink: cap, measured rate, and data waiting or in flight
    /// over all neighbours.
    pub fn upload(&mut self, now: u64) -> Upload {
        if self.expire_queues(now) {
            self.capacity_changed();
        }
        let (queued, inflight) = self.outstanding_total();
        Upload {
            cap_bps: self.cap_bps(),
            rate_bps: self.meter.rate_bps(now),
            queued_bytes: queued as u64,
            inflight_bytes: inflight as u64,
        }
    }

    /// Drop all state about a neighbour (its counters stay in the totals).
    /// Its pending reliable sends fail with `Closed`.
    pub fn forget(&mut self, peer: SocketAddr) {
        if let Some(p) = self.peers.remove(&peer) {
            self.retired.add_counters(&p.stats);
        }
        let mut gone: Vec<SendId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.to == peer)
            .map(|(s, _)| *s)
            .collect();
        gone.sort_unstable();
        for sid in gone {
            self.settle(sid);
            self.emit(NetEvent::Failed(sid, SendError::Closed));
        }
        self.requests.retain(|(a, _)| *a != peer);
        self.rejects_sent.remove(&peer);
        self.ack_due.retain(|a| *a != peer);
        // What was held for a ride still goes (a Bye is often the last
        // thing the application said to this peer).
        self.release_held(peer);
    }

    /// Drop everything from `addr` unread until `until` (µs), and forget its
    /// link and state: for a peer the application caught lying on its own
    /// authenticated link (a peer id that is not its key's), whose every
    /// further datagram would cost a decryption and an event for nothing.
    /// At most `max_peers` addresses are blocked; the one released soonest
    /// makes room.
    pub fn block(&mut self, addr: SocketAddr, until: u64) {
        if self.blocked.len() >= self.cfg.max_peers.max(1) && !self.blocked.contains_key(&addr) {
            if let Some(a) = self
                .blocked
                .iter()
                .min_by_key(|(a, t)| (**t, **a))
                .map(|(a, _)| *a)
            {
                self.blocked.remove(&a);
            }
        }
        self.blocked.insert(addr, until);
        self.forget(addr);
        self.links.remove(&addr);
        self.halves.remove(&addr);
        self.orphans.remove(&addr);
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> NetStats {
        let mut total = self.retired.clone();
        let mut peers = BTreeMap::new();
        let (mut rtt_sum, mut rtt_n) = (0u64, 0u64);
        for (a, p) in &self.peers {
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
        if let Some(c) = self.cap_bps() {
            total.rate_bps = total.rate_bps.min(c);
        }
        let mut drops = self.drops;
        drops.reassembly_expired = self.reassembly.expired;
        total.finish_loss_rate();
        NetStats {
            malformed_dropped: drops.malformed(),
            total,
            peers,
            drops,
            upload_cap_bps: self.cap_bps(),
            reassembly_bytes: self.reassembly.held() as u64,
        }
    }

    /// Neighbours with state.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    // ----- internals --------------------------------------------------------

    fn emit(&mut self, ev: NetEvent) {
        self.events.push_back(ev);
    }

    fn capacity_changed(&mut self) {
        if !self.capacity_event_queued {
            self.capacity_event_queued = true;
            self.events.push_back(NetEvent::CapacityChanged);
        }
    }

    /// Queue an event for the application unless the driver is behind.
    fn deliver(&mut self, ev: Event) -> bool {
        if self.deliveries >= self.cfg.event_capacity.max(1) {
            return false;
        }
        self.deliveries += 1;
        self.events.push_back(NetEvent::Deliver(ev));
        true
    }

    fn peer(&mut self, addr: SocketAddr, now: u64) -> Option<&mut Peer> {
        if self.peers.len() >= self.cfg.max_peers && !self.peers.contains_key(&addr) {
            match self.eviction_victim() {
                Some(v) => {
                    self.forget(v);
                    self.drops.peers_evicted += 1;
                }
                None => {
                    self.drops.peer_limit += 1;
                    return None;
                }
            }
        }
        let cfg = &self.cfg;
        Some(
            self.peers
                .entry(addr)
                .or_insert_with(|| Peer::new(cfg, now)),
        )
    }

    /// The neighbour state to give up when the table is full: one without
    /// an established link first (unproven), then the one that gave the
    /// least (chunks and messages received), least recently heard from.
    fn eviction_victim(&self) -> Option<SocketAddr> {
        self.peers
            .iter()
            .min_by_key(|(a, p)| {
                let link = self.links.get(a);
                (
                    link.is_some_and(|l| l.established()),
                    p.stats.chunks_recv + p.stats.control.datagrams_recv,
                    link.map_or(0, |l| l.last_rx),
                    **a,
                )
            })
            .map(|(a, _)| *a)
    }

    fn cap_bps(&self) -> Option<u64> {
        self.cap.as_ref().map(|c| (c.rate() * 8.0) as u64)
    }

    /// How many data bytes may wait in the local queue for all peers
    /// together. Under a cap, 50 ms of it (at least a few datagrams) is all
    /// the queue the uplink needs; more would only make every chunk behind
    /// it late, since the cap drains the sum, not each neighbour's share.
    ///
    /// In-flight bytes are not counted against it: they have left and delay
    /// nothing locally, and a path's flight is already bounded by its
    /// window. Counting them would cap each neighbour at 50 ms of the cap
    /// per round trip, i.e. leave half the uplink idle at 100 ms RTT.
    fn global_limit(&self) -> Option<usize> {
        let mss = self.cfg.max_payload;
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

    /// Bytes that may be queued towards `to` now: its own window room
    /// (window minus queued and in flight), bounded under a cap by what the
    /// shared queue has left.
    fn room(&self, to: SocketAddr) -> usize {
        let mss = self.cfg.max_payload;
        let (cwnd, outstanding) = match self.peers.get(&to) {
            Some(p) => (p.tx.cc.cwnd(), p.tx.inflight_bytes + p.tx.queued_bytes),
            None => (2 * mss, 0),
        };
        if !self.is_established(to) {
            // Data waits for the link: the handshake runs when the first
            // control message goes (a Hello).
            return 0;
        }
        let own = cwnd.saturating_sub(outstanding);
        match self.global_limit() {
            Some(g) => {
                let queued: usize = self.peers.values().map(|p| p.tx.queued_bytes).sum();
                own.min(g.saturating_sub(queued))
            }
            None => own,
        }
    }

    /// Drop expired chunks of every peer; true if any room was freed.
    fn expire_queues(&mut self, now: u64) -> bool {
        let mut any = false;
        for p in self.peers.values_mut() {
            any |= p.expire_queue(now);
        }
        any
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
    /// send loss swallows it. Control is never held back by the cap but
    /// spends its tokens, so the long-run total stays at the cap.
    fn charge_control(&mut self, to: SocketAddr, now: u64, len: usize) -> bool {
        if let Some(c) = self.cap.as_mut() {
            c.take(now, len);
        }
        if let Some(p) = self.peer(to, now) {
            p.stats.control.bytes_sent += len as u64;
            p.stats.control.datagrams_sent += 1;
        }
        if self.rng.chance(self.cfg.send_drop_rate) {
            self.drops.injected_send += 1;
            return false;
        }
        true
    }

    fn send_reliable_kind(
        &mut self,
        now: u64,
        to: SocketAddr,
        kind: ReliableKind,
        payload: Bytes,
    ) -> Result<SendId, SendError> {
        self.check_control_size(payload.len())?;
        let Some(p) = self.peer(to, now) else {
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
        let wire_id = p.ids.allocate();
        p.stats.reliable_sent += 1;
        let sid = SendId(self.next_send);
        self.next_send += 1;
        self.pending.insert(
            sid,
            Pending {
                to,
                wire_id,
                kind,
                payload,
                tries: 0,
                timeout_at: 0,
            },
        );
        self.by_wire.insert((to, wire_id), sid);
        self.transmit_reliable(now, sid);
        Ok(sid)
    }

    /// (Re)send a pending reliable message and arm its timer with the
    /// neighbour's RTO, doubled per retry.
    fn transmit_reliable(&mut self, now: u64, sid: SendId) {
        let Some(pend) = self.pending.get(&sid) else {
            return;
        };
        let (to, wire_id, kind, tries) = (pend.to, pend.wire_id, pend.kind, pend.tries);
        let payload = pend.payload.clone();
        let Some(p) = self.peers.get_mut(&to) else {
            self.settle(sid);
            self.emit(NetEvent::Failed(sid, SendError::Closed));
            return;
        };
        if tries > 0 {
            p.stats.retransmissions += 1;
        }
        let wait = p.rtt.backoff(tries).as_micros() as u64;
        let floor = p.ids.floor().min(wire_id);
        let len = wire::reliable_len(wire_id, floor, kind, payload.len());
        if self.charge_control(to, now, len) {
            self.out.push(
                to,
                &Packet::Reliable {
                    session: self.session,
                    id: wire_id,
                    floor,
                    ts: us32(now),
                    kind,
                    payload: &payload,
                },
            );
        }
        let at = now + wait.max(1);
        if let Some(pend) = self.pending.get_mut(&sid) {
            pend.tries += 1;
            self.timers.remove(&(pend.timeout_at, sid));
            pend.timeout_at = at;
        }
        self.timers.insert((at, sid));
    }

    /// Forget a reliable send (acked, failed or cancelled).
    fn settle(&mut self, sid: SendId) {
        if let Some(p) = self.pending.remove(&sid) {
            self.timers.remove(&(p.timeout_at, sid));
            self.by_wire.remove(&(p.to, p.wire_id));
            if let Some(peer) = self.peers.get_mut(&p.to) {
                peer.ids.settle(p.wire_id);
            }
        }
    }

    fn handle_packet(
        &mut self,
        now: u64,
        from: SocketAddr,
        len: usize,
        first: bool,
        pkt: Packet<'_>,
    ) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        // `payload`: what of the frame the application gets; `ack`: the
        // frame is an ack (what the rest costs is told apart in the stats).
        let channel_recv = |p: &mut Peer, data: bool, payload: usize, ack: bool| {
            let c = if data {
                &mut p.stats.data
            } else {
                &mut p.stats.control
            };
            c.bytes_recv += len as u64;
            c.datagrams_recv += first as u64;
            c.payload_recv += payload as u64;
            if ack {
                c.acks_recv += len as u64;
            }
        };
        match pkt {
            Packet::Unreliable { payload } => {
                channel_recv(p, false, payload.len(), false);
                let ev = Event::Message {
                    from,
                    payload: Bytes::copy_from_slice(payload),
                };
                if !self.deliver(ev) {
                    if let Some(p) = self.peers.get_mut(&from) {
                        p.stats.events_dropped += 1;
                    }
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
                channel_recv(p, false, payload.len(), false);
                let ack = Packet::Ack {
                    session,
                    id,
                    ts_echo: ts,
                };
                let mut send_ack = false;
                match p.dedup.check(session, id, floor) {
                    Verdict::Duplicate => {
                        p.stats.duplicates_suppressed += 1;
                        send_ack = true;
                    }
                    Verdict::Deliver => {
                        let payload = Bytes::copy_from_slice(payload);
                        let delivered = match kind {
                            ReliableKind::Response(rid) => {
                                if self.requests.remove(&(from, rid)) {
                                    self.emit(NetEvent::Response {
                                        from,
                                        request_id: rid,
                                        payload,
                                    });
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
                        let Some(p) = self.peers.get_mut(&from) else {
                            return;
                        };
                        if delivered {
                            p.dedup.record(id);
                            send_ack = true;
                        } else {
                            // The application is behind: no ack, the sender
                            // retries (back-pressure instead of loss).
                            p.stats.events_dropped += 1;
                        }
                    }
                }
                if send_ack {
                    if let Some(p) = self.peers.get_mut(&from) {
                        p.stats.control.bytes_sent += wire::ack_len(id) as u64;
                        p.stats.control.datagrams_sent += 1;
                    }
                    self.hold(now, from, &ack, ACK_DELAY_US);
                }
                if let Some(c) = self.cap.as_mut() {
                    c.take(now, wire::ack_len(id));
                }
            }
            Packet::Ack {
                session,
                id,
                ts_echo,
            } => {
                channel_recv(p, false, 0, true);
                if session == self.session {
                    if let Some(sid) = self.by_wire.get(&(from, id)).copied() {
                        let rtt = us32(now).wrapping_sub(ts_echo) as u64;
                        if let Some(p) = self.peers.get_mut(&from) {
                            if rtt < 60_000_000 {
                                p.rtt.sample(rtt);
                            }
                            p.stats.reliable_acked += 1;
                        }
                        self.settle(sid);
                        self.emit(NetEvent::Acked(sid));
                    }
                }
            }
            Packet::Data(h, payload) => {
                channel_recv(p, true, payload.len(), false);
                if Self::on_data(p, now, &h) {
                    Self::data_ack(p, from, now, &mut self.out);
                } else if !p.rx.ack_listed {
                    p.rx.ack_listed = true;
                    self.ack_due.push(from);
                }
                match self
                    .reassembly
                    .insert(now, (from, h.stream, h.seq), &h, payload)
                {
                    Outcome::Complete(data) => {
                        let ok = self.deliver(Event::Chunk {
                            from,
                            stream: h.stream,
                            seq: h.seq,
                            data,
                        });
                        if let Some(p) = self.peers.get_mut(&from) {
                            p.stats.chunks_recv += 1;
                            if !ok {
                                p.stats.events_dropped += 1;
                            }
                        }
                    }
                    Outcome::Rejected => {
                        self.drops.bad_fragment += 1;
                        if let Some(p) = self.peers.get_mut(&from) {
                            p.stats.malformed_dropped += 1;
                        }
                    }
                    Outcome::Duplicate => {
                        if let Some(p) = self.peers.get_mut(&from) {
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
                ack_delay,
            } => {
                channel_recv(p, true, 0, true);
                p.on_data_ack(
                    now,
                    largest,
                    bitmap,
                    delay,
                    ack_delay as u64 * 16,
                    &self.cfg,
                );
                self.capacity_changed();
            }
            Packet::VersionReject { min, max } => {
                channel_recv(p, false, 0, false);
                p.incompatible = Some((min, max));
                self.drops.version_rejects_received += 1;
                let mut gone: Vec<SendId> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.to == from)
                    .map(|(s, _)| *s)
                    .collect();
                gone.sort_unstable();
                for sid in gone {
                    self.settle(sid);
                    self.emit(NetEvent::Failed(
                        sid,
                        SendError::Incompatible {
                            peer: from,
                            min,
                            max,
                            ours: wire::VERSION,
                        },
                    ));
                }
            }
            _ => {}
        }
    }

    /// Keep a packet for `to` back for up to `for_us` (an ack
    /// [`ACK_DELAY_US`], an unreliable message [`UNRELIABLE_HOLD_US`]): whatever goes
    /// to `to` before then (the answer the application is about to send, a
    /// data fragment) carries it in the same sealed datagram. Held packets
    /// are bounded per peer (a datagram's worth) and by the peer table.
    fn hold(&mut self, now: u64, to: SocketAddr, pkt: &Packet<'_>, for_us: u64) {
        let mut v = Vec::new();
        wire::encode(pkt, &mut v);
        let h = self.held.entry(to).or_insert_with(|| Held {
            due: u64::MAX,
            pkts: Vec::new(),
        });
        h.due = h.due.min(now + for_us);
        h.pkts.push(v);
        let bytes: usize = h.pkts.iter().map(|p| wire::frame_len(p.len())).sum();
        if bytes + wire::SEAL_OVERHEAD >= self.cfg.max_payload / 2 {
            self.release_held(to);
        }
    }

    /// Held packets for `to` go into the outbox (they share a datagram).
    fn release_held(&mut self, to: SocketAddr) {
        if let Some(h) = self.held.remove(&to) {
            for p in h.pkts {
                self.out.push_bytes(to, &p);
            }
        }
    }

    /// Held packets older than [`ACK_DELAY_US`] go out on their own.
    fn release_due(&mut self, now: u64) {
        if self.held.is_empty() {
            return;
        }
        let mut due: Vec<SocketAddr> = self
            .held
            .iter()
            .filter(|(_, h)| h.due <= now)
            .map(|(a, _)| *a)
            .collect();
        // In address order, not the map's: a simulated run is reproducible
        // for its seed only if the datagrams leave in the same order.
        due.sort_unstable();
        for a in due {
            self.release_held(a);
        }
    }

    /// Record a received data datagram for the next ack; true when an ack
    /// should go now.
    fn on_data(p: &mut Peer, now: u64, h: &DataHeader) -> bool {
        let rx = &mut p.rx;
        // Out of order (a hole opened, or one filled): the sender's loss
        // detection should hear of it now.
        let gap = (h.pkt > rx.largest + 1 && rx.largest > 0) || h.pkt < rx.largest;
        if h.pkt > rx.largest {
            rx.largest_at_us = now;
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
        if rx.unacked == 0 {
            rx.unacked_since_us = now;
        }
        rx.unacked += 1;
        gap || rx.unacked >= ACK_EVERY
    }

    fn data_ack(p: &mut Peer, to: SocketAddr, now: u64, out: &mut Outbox) {
        let rx = &mut p.rx;
        if rx.unacked == 0 {
            return;
        }
        rx.unacked = 0;
        let delay = rx.delay.take().unwrap_or(0);
        let held = now.saturating_sub(rx.largest_at_us) / 16;
        out.push(
            to,
            &Packet::DataAck {
                largest: rx.largest,
                bitmap: rx.bitmap,
                delay,
                ack_delay: held.min(u16::MAX as u64) as u16,
            },
        );
        p.stats.data.bytes_sent += wire::data_ack_len(rx.largest) as u64;
        p.stats.data.datagrams_sent += 1;
    }

    fn count_malformed(&mut self, from: SocketAddr, e: DecodeError) {
        let d = &mut self.drops;
        match e {
            DecodeError::Truncated => d.truncated += 1,
            DecodeError::BadMagic => d.bad_magic += 1,
            DecodeError::UnknownVersion(_) => d.unknown_version += 1,
            DecodeError::Oversized => d.oversized += 1,
            DecodeError::BadLength => d.bad_length += 1,
            DecodeError::UnknownType => d.unknown_type += 1,
            DecodeError::Invalid => d.invalid += 1,
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.stats.malformed_dropped += 1;
        }
    }

    /// Tell an older peer which versions we speak (at most once a second).
    fn reject_version(&mut self, to: SocketAddr, now: u64) {
        if self.rejects_sent.len() > 4096 {
            self.rejects_sent.clear();
        }
        let last = self.rejects_sent.get(&to).copied();
        if last.is_some_and(|t| now.saturating_sub(t) < 1_000_000) {
            return;
        }
        self.rejects_sent.insert(to, now);
        self.drops.version_rejects_sent += 1;
        let mut rej = Vec::new();
        wire::encode(
            &Packet::VersionReject {
                min: wire::MIN_VERSION,
                max: wire::VERSION,
            },
            &mut rej,
        );
        // In the clear: the old peer has no link with us, nor could it.
        self.out.push_raw(to, &rej);
    }

    fn queue_chunk(
        &mut self,
        now: u64,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        deadline_us: u64,
    ) -> Result<(), SendError> {
        let max_chunk = self.cfg.max_chunk;
        if data.len() > max_chunk || data.len() > u32::MAX as usize {
            return Err(SendError::TooLarge {
                size: data.len(),
                max: max_chunk,
            });
        }
        if deadline_us != u64::MAX && self.expire_queues(now) {
            self.capacity_changed();
        }
        if let Some((min, max)) = self.peers.get(&to).and_then(|p| p.incompatible) {
            return Err(SendError::Incompatible {
                peer: to,
                min,
                max,
                ours: wire::VERSION,
            });
        }
        if !self.is_established(to) {
            self.start_link(now, to);
            return Err(SendError::WouldBlock);
        }
        if self.room(to) == 0 {
            return Err(SendError::WouldBlock);
        }
        let mss = self.cfg.max_payload;
        let Some(p) = self.peer(to, now) else {
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
        for mut f in split(stream, seq, &data, mss, now) {
            f.deadline_us = deadline_us;
            p.tx.queued_bytes += f.wire_len();
            p.tx.queue.push_back(f);
        }
        p.tx.next_deadline_us = p.tx.next_deadline_us.min(deadline_us);
        Ok(())
    }

    /// Encode data datagrams that may go now into the outbox, round robin
    /// over neighbours, and note when to look again.
    fn fill(&mut self, now: u64, out: &mut Datagrams, limit: usize) {
        let cfg = &self.cfg;
        let limit = out.len() + limit;
        let mut wake: Option<u64> = None;
        let mut at = |t: u64| wake = Some(wake.map_or(t, |w: u64| w.min(t)));
        let mut expired = false;
        for p in self.peers.values_mut() {
            if !p.tx.inflight.is_empty() {
                if let Some(t) = p.check_timeouts(now, cfg) {
                    at(t);
                }
            }
            if p.tx.next_deadline_us != u64::MAX {
                expired |= p.expire_queue(now);
                if p.tx.next_deadline_us != u64::MAX {
                    at(p.tx.next_deadline_us);
                }
            }
        }
        // Round robin over neighbours with queued data, resuming after the
        // last one served so a binding cap does not favour the first.
        let mut keys: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.tx.queue.is_empty())
            .map(|(a, _)| *a)
            .collect();
        if !keys.is_empty() {
            keys.sort_unstable();
            let start = keys.partition_point(|a| *a <= self.rr);
            keys.rotate_left(start);
            let NetState {
                peers,
                cap,
                rng,
                drops,
                rr,
                ..
            } = self;
            let mut sent_any = true;
            'passes: while sent_any {
                sent_any = false;
                for addr in &keys {
                    let Some(p) = peers.get_mut(addr) else {
                        continue;
                    };
                    if out.items.len() >= limit {
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
                        // Started: the rest of the chunk goes out whatever
                        // the clock says (half a chunk is worth nothing), and
                        // a retransmission is not an expiry.
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
                    let header = f.header(pkt, us32(now));
                    // What leaves, exactly (the queue counted the most a
                    // fragment can cost).
                    let sent = wire::data_len(&header, f.data.len());
                    if rng.chance(cfg.send_drop_rate) {
                        drops.injected_send += 1;
                    } else {
                        out.push(*addr, &Packet::Data(header, &f.data));
                    }
                    if p.tx.inflight.is_empty() {
                        p.tx.last_progress_us = now;
                        // First datagram after idle: arm the loss timer.
                        at(now + p.data_loss_timeout_us(cfg));
                    }
                    p.tx.inflight.push_back(InFlight {
                        pkt,
                        sent_us: now,
                        size: sent,
                        frag: Some(f),
                    });
                    p.tx.inflight_bytes += sent;
                    p.tx.pacer.take(now, sent);
                    if let Some(c) = cap.as_mut() {
                        c.take(now, sent);
                    }
                    p.stats.data.bytes_sent += sent as u64;
                    p.stats.data.datagrams_sent += 1;
                    *rr = *addr;
                    sent_any = true;
                }
            }
        }
        self.data_wake = wake;
        if expired {
            self.capacity_changed();
        }
    }
}

#[cfg(test)]
mod tests;
