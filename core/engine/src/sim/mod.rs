//! A discrete-event simulator that runs the real plugins and the real
//! network layer on a simulated clock and network.
//!
//! Every peer is a real [`Session`] with scheduler and overlay instantiated
//! from the same plugin libraries a real swarm loads, fed through the same
//! glue as the live driver ([`crate::carrier`]), over its own
//! [`p2ner_net::NetState`]: the state machine inside every real endpoint,
//! with its reliable control channel, fragmentation, LEDBAT, pacing and
//! upload cap. Only the wire is simulated: each peer's datagrams leave
//! through an uplink of the peer's upload rate with a bounded drop-tail
//! queue, travel a fixed one-way delay and are lost at a given rate. Runs
//! are deterministic for a seed, so a researcher can compare schedulers on
//! the same swarm and replay a surprising run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;
use p2ner_net::{Datagrams, NetConfig, NetEvent, NetState, SendError, SendId};
use p2ner_plugin_api::{Params, PeerId, PeerInfo, Rng};
use p2ner_proto::identity::Identity;

use crate::carrier::{self, Carrier};
use crate::plugins::Registry;
use crate::stream::{Role, Session, SessionConfig, Summary, UplinkModel};

/// One experiment.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many subscribers join.
    pub subscribers: usize,
    /// Simulated time the experiment runs.
    pub duration_us: u64,
    /// Subscribers join spread over this long from the start.
    pub join_spread_us: u64,
    /// One-way delay of every datagram, after it has left the sender's
    /// uplink.
    pub latency_us: u64,
    /// Share of datagrams lost on the way. The network layer recovers as it
    /// would on a real path: reliable messages and chunk fragments are
    /// retransmitted, unreliable messages are lost.
    pub loss: f64,
    /// The publisher's upload.
    pub source_upload_kbps: u64,
    /// Every subscriber's upload, unless `peer_uploads_kbps` says otherwise.
    pub peer_upload_kbps: u64,
    /// Subscriber `i` uploads `peer_uploads_kbps[i % len]`: heterogeneous
    /// swarms (empty: all `peer_upload_kbps`).
    pub peer_uploads_kbps: Vec<u64>,
    /// The stream's bitrate.
    pub bitrate_kbps: u32,
    /// Media per chunk.
    pub chunk_ms: u32,
    /// The play-out buffer (and start lead), as `--buffer-ms` sets it;
    /// 0: the engine's default.
    pub buffer_ms: u32,
    /// Candidate peers a server hands out per request.
    pub sample: usize,
    /// The scheduler every peer runs, with its parameters.
    pub scheduler: (String, Params),
    /// The overlay every peer runs, with its parameters.
    pub overlay: (String, Params),
    /// Seeds the plugins, the loss and the join times: the same seed, the same run.
    pub seed: u64,
    /// How often every session ticks (the live engine ticks every 20 ms).
    pub tick_us: u64,
    /// Largest datagram, the network layer's `max_payload`.
    pub datagram_payload: usize,
    /// The bottleneck queue in front of each uplink, in time at the
    /// uplink's rate: a datagram that would wait longer is dropped.
    pub queue_us: u64,
    /// Whether each peer's network layer enforces its upload as a cap
    /// (`--upload-kbps`), as the capped real swarms do. Without it only the
    /// simulated uplink limits the rate and LEDBAT finds it by the delay.
    pub cap_uploads: bool,
    /// The network layer's other knobs, for every peer (`upload_kbps`,
    /// `max_payload` and `seed` are set per peer from the fields above).
    pub net: NetConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            subscribers: 20,
            duration_us: 30_000_000,
            join_spread_us: 2_000_000,
            latency_us: 10_000,
            loss: 0.0,
            source_upload_kbps: 5_000,
            peer_upload_kbps: 4_000,
            peer_uploads_kbps: Vec::new(),
            bitrate_kbps: 1000,
            chunk_ms: 100,
            buffer_ms: 0,
            sample: 10,
            scheduler: ("pull".into(), Params::new()),
            overlay: ("mesh".into(), Params::new()),
            seed: 1,
            tick_us: 20_000,
            datagram_payload: 1200,
            queue_us: 100_000,
            cap_uploads: true,
            net: NetConfig::default(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// One summary per subscriber, in join order.
    pub subscribers: Vec<Summary>,
    /// What the publisher uploaded (whole datagrams).
    pub source_bytes_up: u64,
    /// What all subscribers uploaded (whole datagrams).
    pub peers_bytes_up: u64,
    /// What the simulated wire did, over all uplinks.
    pub links: LinkStats,
}

impl SimResult {
    /// Share of all upload that subscribers served (not the publisher).
    pub fn peer_share(&self) -> f64 {
        let total = self.source_bytes_up + self.peers_bytes_up;
        if total == 0 {
            0.0
        } else {
            self.peers_bytes_up as f64 / total as f64
        }
    }
}

/// Counters of the simulated uplinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered to the uplinks.
    pub datagrams: u64,
    /// Bytes the uplinks carried.
    pub bytes: u64,
    /// Dropped because the bottleneck queue was full.
    pub queue_drops: u64,
    /// Lost on the way (`SimConfig::loss`).
    pub lost: u64,
}

enum Event {
    Join(usize),
    Tick(usize),
    /// The network layer's timer of a node, armed for this time.
    Wake(usize, u64),
    Datagram {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
}

/// One direction out of a peer: its upload link, a serialising bottleneck
/// with a bounded queue in front. What it carries is counted in UDP payload
/// bytes, the unit of the network layer's upload cap, so that a link at the
/// cap's rate and the cap agree.
struct Uplink {
    rate_bps: u64,
    queue_us: u64,
    /// When the bottleneck has serialised everything it accepted.
    free_at: u64,
}

impl Uplink {
    /// When a datagram of `len` bytes handed over at `now` has left, or
    /// `None` if the queue is full.
    fn send(&mut self, now: u64, len: usize) -> Option<u64> {
        let start = self.free_at.max(now);
        if start - now > self.queue_us {
            return None;
        }
        self.free_at = start + (len as u64 * 8 * 1_000_000).div_ceil(self.rate_bps).max(1);
        Some(self.free_at)
    }
}

struct Node {
    session: Option<Session>,
    net: NetState,
    addr: SocketAddr,
    link: Uplink,
    /// The engine's model of the uplink, as the live driver keeps it.
    uplink: UplinkModel,
    /// Reliable sends in flight, for `on_unreachable` when one fails.
    reliable: HashMap<SendId, SocketAddr>,
    /// The earliest `Wake` queued for this node.
    armed: Option<u64>,
}

/// A node's network state as the shared glue sees it, at one instant.
struct SimCarrier<'a> {
    net: &'a mut NetState,
    now: u64,
    reliable: &'a mut HashMap<SendId, SocketAddr>,
    /// Reliable sends refused at once (the live driver's task fails at once
    /// too): the session hears `on_unreachable` after the flush.
    failed: &'a mut Vec<SocketAddr>,
    want_peers: &'a mut Option<u32>,
}

impl Carrier for SimCarrier<'_> {
    fn capacity(&mut self, to: SocketAddr) -> p2ner_net::Capacity {
        self.net.capacity(self.now, to)
    }

    fn upload(&mut self) -> p2ner_net::Upload {
        self.net.upload(self.now)
    }

    fn max_payload(&self) -> usize {
        self.net.config().max_payload
    }

    fn send_reliable(&mut self, to: SocketAddr, payload: Bytes) {
        match self.net.send_reliable(self.now, to, payload) {
            Ok(id) => {
                self.reliable.insert(id, to);
            }
            Err(_) => self.failed.push(to),
        }
    }

    fn send_unreliable(&mut self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        self.net.send_unreliable(self.now, to, &payload)
    }

    fn send_chunk_by(
        &mut self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        within_us: u64,
    ) -> Result<(), SendError> {
        self.net
            .send_chunk_by(self.now, to, stream, seq, data, self.now + within_us)
    }

    fn respond(&mut self, to: SocketAddr, id: u64, payload: Bytes) {
        if let Err(e) = self.net.respond(self.now, to, id, payload) {
            tracing::debug!(%to, id, "response failed: {e}");
        }
    }

    fn want_peers(&mut self, count: u32) {
        *self.want_peers = Some(self.want_peers.unwrap_or(0).max(count));
    }

    fn forget(&mut self, addr: SocketAddr) {
        self.net.forget(addr);
    }
}

/// The simulation's event queue, ordered by (time, insertion order) so that
/// runs are deterministic.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Queued>>,
    next: u64,
}

struct Queued {
    at: u64,
    order: u64,
    ev: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

impl Queue {
    fn push(&mut self, at: u64, ev: Event) {
        self.next += 1;
        self.heap.push(Reverse(Queued {
            at,
            order: self.next,
            ev,
        }));
    }

    fn pop(&mut self) -> Option<(u64, Event)> {
        let Reverse(q) = self.heap.pop()?;
        Some((q.at, q.ev))
    }
}

/// Rounds of session output and network events handled for one node at one
/// instant at most: a guard against a plugin and the network layer feeding
/// each other forever (each round needs new output to start another).
const MAX_ROUNDS: usize = 1000;

/// Runs experiment `cfg` on simulated time and network, with the real plugins
/// and network layer, and the plugin libraries from `registry`.
pub fn run(registry: &Registry, cfg: &SimConfig) -> anyhow::Result<SimResult> {
    let stream = 0x5157_u64;
    let key = Identity::from_secret([cfg.seed as u8; 32]);
    let mut rng = Rng::new(cfg.seed);
    // The wire's own randomness, so that loss does not shift the plugins'
    // draws (and the other way round).
    let mut wire_rng = Rng::new(cfg.seed ^ 0x6c6f_7373_6c6f_7373);
    let addr_of = |i: usize| {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8),
            7000,
        ))
    };
    let info_of = |i: usize| PeerInfo {
        id: PeerId(1000 + i as u64),
        addr: addr_of(i).to_string().into(),
    };
    // The inverse of `addr_of`.
    let index_of = |a: &SocketAddr| match a {
        SocketAddr::V4(v4) if v4.port() == 7000 => {
            let [net, sub, hi, lo] = v4.ip().octets();
            let i = (hi as usize) << 8 | lo as usize;
            ((net, sub) == (10, 0) && i <= cfg.subscribers).then_some(i)
        }
        _ => None,
    };
    let mut nodes: Vec<Node> = (0..=cfg.subscribers)
        .map(|i| {
            let kbps = if i == 0 {
                cfg.source_upload_kbps
            } else if cfg.peer_uploads_kbps.is_empty() {
                cfg.peer_upload_kbps
            } else {
                cfg.peer_uploads_kbps[(i - 1) % cfg.peer_uploads_kbps.len()]
            }
            .max(1);
            let upload_bps = 1000 * kbps;
            let net_cfg = NetConfig {
                upload_kbps: cfg.cap_uploads.then_some(kbps),
                max_payload: cfg.datagram_payload,
                seed: cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64,
                ..cfg.net.clone()
            };
            let session = (cfg.seed as u32).wrapping_mul(0x0100_0193) ^ (0xA000_0000 | i as u32);
            Node {
                session: None,
                net: NetState::new(net_cfg, session, 0),
                addr: addr_of(i),
                link: Uplink {
                    rate_bps: upload_bps,
                    queue_us: cfg.queue_us,
                    free_at: 0,
                },
                uplink: UplinkModel::new(cfg.cap_uploads.then_some(upload_bps)),
                reliable: HashMap::new(),
                armed: None,
            }
        })
        .collect();
    let mut queue = Queue::default();
    queue.push(0, Event::Join(0));
    for i in 1..=cfg.subscribers {
        let at = 500_000 + rng.below(cfg.join_spread_us.max(1));
        queue.push(at, Event::Join(i));
    }
    let new_session = |i: usize, now: u64| -> anyhow::Result<Session> {
        let mut scfg =
            SessionConfig::new(stream, "sim", info_of(i), cfg.bitrate_kbps, cfg.chunk_ms);
        scfg.seed = cfg.seed;
        scfg.tick_us = cfg.tick_us;
        scfg.simulated = true;
        scfg.control_payload = cfg
            .datagram_payload
            .saturating_sub(p2ner_net::wire::RELIABLE_OVERHEAD);
        scfg.scheduler_key = format!("scheduler.{}", cfg.scheduler.0);
        scfg.overlay_key = format!("overlay.{}", cfg.overlay.0);
        if cfg.buffer_ms > 0 {
            scfg.startup_chunks = (cfg.buffer_ms / cfg.chunk_ms.max(1)).max(1) as u64;
        }
        scfg.source = Some(info_of(0));
        let role = if i == 0 {
            let params = Params::new()
                .with("bitrate_kbps", cfg.bitrate_kbps.to_string())
                .with("chunk_ms", cfg.chunk_ms.to_string());
            Role::Publisher {
                input: registry.new_input("synthetic", None, &params)?,
                key: key.clone(),
            }
        } else {
            Role::Subscriber {
                output: registry.new_output("null", None, &Params::new())?,
                key: key.public_key(),
            }
        };
        let scheduler = registry.new_scheduler(&cfg.scheduler.0, None, &cfg.scheduler.1)?;
        let overlay = registry.new_overlay(&cfg.overlay.0, None, &cfg.overlay.1)?;
        let mut s = Session::new(scfg, role, scheduler, overlay, now);
        s.start(now, None).map_err(anyhow::Error::msg)?;
        Ok(s)
    };
    let mut joined: Vec<usize> = Vec::new();
    let mut links = LinkStats::default();
    let mut out = Datagrams::default();
    while let Some((now, ev)) = queue.pop() {
        if now > cfg.duration_us {
            break;
        }
        let i = match ev {
            Event::Join(i) => {
                let mut s = new_session(i, now)?;
                if i > 0 {
                    let sample = sample(&joined, cfg.sample, &mut rng);
                    let peers: Vec<PeerInfo> = sample.into_iter().map(info_of).collect();
                    s.on_candidates(now, &peers);
                }
                nodes[i].session = Some(s);
                joined.push(i);
                queue.push(now + cfg.tick_us, Event::Tick(i));
                i
            }
            Event::Tick(i) => {
                let node = &mut nodes[i];
                let s = node.session.as_mut().expect("ticking nodes joined");
                let mut net = SimCarrier {
                    net: &mut node.net,
                    now,
                    reliable: &mut node.reliable,
                    failed: &mut Vec::new(),
                    want_peers: &mut None,
                };
                carrier::before_tick(s, &mut node.uplink, &mut net, now);
                s.tick(now);
                queue.push(now + cfg.tick_us, Event::Tick(i));
                i
            }
            Event::Wake(i, at) => {
                let node = &mut nodes[i];
                if node.armed != Some(at) {
                    // Superseded by an earlier wake, which ran already.
                    continue;
                }
                node.armed = None;
                if node.net.poll_timeout().is_some_and(|t| t <= now) {
                    node.net.handle_timeout(now);
                }
                i
            }
            Event::Datagram { to, from, bytes } => {
                let node = &mut nodes[to];
                if node.session.is_none() {
                    // Not started yet: nothing listens at that address.
                    continue;
                }
                node.net.handle_datagram(now, from, &bytes);
                // One datagram at a time, as a socket that runs dry after
                // each: the real driver acknowledges then too.
                node.net.flush_acks(now);
                to
            }
        };
        // Session output into the network layer, its datagrams onto the
        // uplink, its events into the session, until all is quiet.
        let node = &mut nodes[i];
        let session = node.session.as_mut().expect("only joined nodes get here");
        for _ in 0..MAX_ROUNDS {
            let mut failed = Vec::new();
            let mut want = None;
            let mut net = SimCarrier {
                net: &mut node.net,
                now,
                reliable: &mut node.reliable,
                failed: &mut failed,
                want_peers: &mut want,
            };
            carrier::flush(session, &mut node.uplink, &mut net, stream, now);
            loop {
                let more = node.net.poll_transmits(now, 64, &mut out);
                for t in out.iter() {
                    let Some(j) = index_of(&t.to) else {
                        continue;
                    };
                    links.datagrams += 1;
                    let Some(left) = node.link.send(now, t.bytes.len()) else {
                        links.queue_drops += 1;
                        continue;
                    };
                    links.bytes += t.bytes.len() as u64;
                    if cfg.loss > 0.0 && wire_rng.unit() < cfg.loss {
                        links.lost += 1;
                        continue;
                    }
                    queue.push(
                        left + cfg.latency_us,
                        Event::Datagram {
                            to: j,
                            from: node.addr,
                            bytes: t.bytes.to_vec(),
                        },
                    );
                }
                out.clear();
                if !more {
                    break;
                }
            }
            let mut busy = !failed.is_empty();
            for addr in failed {
                session.on_unreachable(now, addr);
            }
            while let Some(ev) = node.net.poll_event() {
                match ev {
                    NetEvent::Deliver(ev) => {
                        busy = true;
                        let mut net = SimCarrier {
                            net: &mut node.net,
                            now,
                            reliable: &mut node.reliable,
                            failed: &mut Vec::new(),
                            want_peers: &mut want,
                        };
                        carrier::deliver(session, stream, now, ev, &mut net);
                    }
                    NetEvent::Acked(id) => {
                        node.reliable.remove(&id);
                    }
                    NetEvent::Failed(id, _) => {
                        if let Some(addr) = node.reliable.remove(&id) {
                            busy = true;
                            session.on_unreachable(now, addr);
                        }
                    }
                    NetEvent::Response { .. } | NetEvent::CapacityChanged => {}
                }
            }
            if let Some(count) = want {
                busy = true;
                let peers: Vec<PeerInfo> = sample(&joined, count as usize, &mut rng)
                    .into_iter()
                    .filter(|&j| j != i)
                    .map(info_of)
                    .collect();
                session.on_candidates(now, &peers);
            }
            if !busy {
                break;
            }
        }
        if let Some(t) = node.net.poll_timeout() {
            let t = t.max(now + 1);
            if node.armed.is_none_or(|a| t < a) {
                node.armed = Some(t);
                queue.push(t, Event::Wake(i, t));
            }
        }
    }
    let mut result = SimResult {
        subscribers: Vec::new(),
        source_bytes_up: 0,
        peers_bytes_up: 0,
        links,
    };
    for (i, node) in nodes.iter_mut().enumerate() {
        let Some(s) = node.session.as_mut() else {
            continue;
        };
        if let Some(e) = s.failed() {
            anyhow::bail!("peer {i}: {e}");
        }
        if i != 0 {
            // The plugins' own metrics, asked once at the end of the run.
            s.ask_metrics();
        }
        let mut summary = s.stats().summary("sim");
        carrier::finish_summary(&mut summary, Some(&node.net.stats()));
        if i == 0 {
            result.source_bytes_up = summary.bytes_up;
        } else {
            result.peers_bytes_up += summary.bytes_up;
            result.subscribers.push(summary);
        }
    }
    Ok(result)
}

fn sample(from: &[usize], n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut pool = from.to_vec();
    let mut out = Vec::new();
    while !pool.is_empty() && out.len() < n {
        let k = rng.below(pool.len() as u64) as usize;
        out.push(pool.swap_remove(k));
    }
    out
}
