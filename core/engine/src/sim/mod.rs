//! A discrete-event simulator that runs the real plugins on a simulated
//! clock and network.
//!
//! Every peer is a real [`Session`] with scheduler and overlay instantiated
//! from the same plugin libraries a real swarm loads; only the carrier is
//! simulated: messages and chunks are delivered after a latency, through a
//! per-peer upload link of fixed capacity, and lost at a given rate. Runs are
//! deterministic for a seed, so a researcher can compare schedulers on the
//! same swarm and replay a surprising run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;
use p2ner_plugin_api::{Capacity, Params, PeerId, PeerInfo, Rng};
use p2ner_proto::identity::Identity;
use p2ner_proto::peer as wire;

use crate::plugins::Registry;
use crate::stream::{
    Role, Session, SessionConfig, SessionOutput, Summary, UplinkModel, DATAGRAM_OVERHEAD,
};

/// One experiment.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many subscribers join.
    pub subscribers: usize,
    /// Simulated time the experiment runs.
    pub duration_us: u64,
    /// Subscribers join spread over this long from the start.
    pub join_spread_us: u64,
    /// One-way latency between any two peers.
    pub latency_us: u64,
    /// Share of datagrams lost. Reliable messages are delivered anyway and
    /// lost chunk fragments arrive a round trip late, as the network layer's
    /// retransmissions would have it; unreliable messages are lost.
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
    /// Payload bytes per datagram, for the per-datagram overhead.
    pub datagram_payload: usize,
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
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// One summary per subscriber, in join order.
    pub subscribers: Vec<Summary>,
    /// What the publisher uploaded.
    pub source_bytes_up: u64,
    /// What all subscribers uploaded.
    pub peers_bytes_up: u64,
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

enum Event {
    Join(usize),
    Tick(usize),
    Message {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Chunk {
        to: usize,
        from: SocketAddr,
        seq: u64,
        data: Bytes,
    },
}

struct Node {
    session: Option<Session>,
    addr: SocketAddr,
    upload_bps: u64,
    /// The upload link: it drains at `upload_bps`, and what it holds is
    /// what the session is told (the same model the real engine uses).
    uplink: UplinkModel,
}

/// Runs experiment `cfg` on simulated time and network, with the real plugins from `registry`.
pub fn run(registry: &Registry, cfg: &SimConfig) -> anyhow::Result<SimResult> {
    let stream = 0x5157_u64;
    let key = Identity::from_secret([cfg.seed as u8; 32]);
    let mut rng = Rng::new(cfg.seed);
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
    let by_addr: HashMap<SocketAddr, usize> =
        (0..=cfg.subscribers).map(|i| (addr_of(i), i)).collect();
    let mut nodes: Vec<Node> = (0..=cfg.subscribers)
        .map(|i| {
            let kbps = if i == 0 {
                cfg.source_upload_kbps
            } else if cfg.peer_uploads_kbps.is_empty() {
                cfg.peer_upload_kbps
            } else {
                cfg.peer_uploads_kbps[(i - 1) % cfg.peer_uploads_kbps.len()]
            };
            let upload_bps = 1000 * kbps.max(1);
            Node {
                session: None,
                addr: addr_of(i),
                upload_bps,
                uplink: UplinkModel::new(Some(upload_bps)),
            }
        })
        .collect();
    let mut queue: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut events: HashMap<usize, Event> = HashMap::new();
    let mut next_id = 0usize;
    let mut push = |queue: &mut BinaryHeap<Reverse<(u64, u64, usize)>>,
                    events: &mut HashMap<usize, Event>,
                    at: u64,
                    ev: Event| {
        next_id += 1;
        events.insert(next_id, ev);
        queue.push(Reverse((at, next_id as u64, next_id)));
    };
    push(&mut queue, &mut events, 0, Event::Join(0));
    for i in 1..=cfg.subscribers {
        let at = 500_000 + rng.below(cfg.join_spread_us.max(1));
        push(&mut queue, &mut events, at, Event::Join(i));
    }
    let new_session = |i: usize, now: u64| -> anyhow::Result<Session> {
        let mut scfg =
            SessionConfig::new(stream, "sim", info_of(i), cfg.bitrate_kbps, cfg.chunk_ms);
        scfg.seed = cfg.seed;
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
    while let Some(Reverse((now, _, id))) = queue.pop() {
        if now > cfg.duration_us {
            break;
        }
        let ev = events.remove(&id).expect("queued events exist");
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
                push(&mut queue, &mut events, now + cfg.tick_us, Event::Tick(i));
                i
            }
            Event::Tick(i) => {
                let node = &mut nodes[i];
                // One upload link, shared by all neighbours, described as
                // the real engine describes its capped uplink.
                let upload = node.uplink.upload(now);
                let s = node.session.as_mut().expect("ticking nodes joined");
                s.set_upload(upload);
                for addr in s.neighbour_addrs() {
                    s.set_capacity(
                        addr,
                        Capacity {
                            can_send_bytes: upload.budget_bytes,
                            rate_bps: node.upload_bps,
                            rtt_us: 2 * cfg.latency_us,
                        },
                    );
                }
                s.tick(now);
                push(&mut queue, &mut events, now + cfg.tick_us, Event::Tick(i));
                i
            }
            Event::Message { to, from, bytes } => {
                if let (Some(s), Some(env)) = (nodes[to].session.as_mut(), wire::decode(&bytes)) {
                    s.on_message(now, from, env, bytes.len());
                }
                to
            }
            Event::Chunk {
                to,
                from,
                seq,
                data,
            } => {
                if let Some(s) = nodes[to].session.as_mut() {
                    s.on_chunk(now, from, seq, data);
                }
                to
            }
        };
        // Carry what the session wants sent.
        let node = &mut nodes[i];
        let from = node.addr;
        let out: Vec<SessionOutput> = match node.session.as_mut() {
            Some(s) => s.drain().collect(),
            None => continue,
        };
        for t in out {
            match t {
                SessionOutput::SendMessage {
                    to,
                    bytes,
                    reliable,
                } => {
                    let Some(&j) = by_addr.get(&to) else { continue };
                    if !reliable && rng.unit() < cfg.loss {
                        continue;
                    }
                    let len = bytes.len() + DATAGRAM_OVERHEAD as usize;
                    let at = send_at(node, now, len, cfg.latency_us);
                    push(
                        &mut queue,
                        &mut events,
                        at,
                        Event::Message { to: j, from, bytes },
                    );
                }
                SessionOutput::SendChunk { to, seq, data } => {
                    let Some(&j) = by_addr.get(&to) else { continue };
                    let frags = data.len().div_ceil(cfg.datagram_payload).max(1);
                    let len = data.len() + frags * DATAGRAM_OVERHEAD as usize;
                    let mut at = send_at(node, now, len, cfg.latency_us);
                    // The data channel retransmits a lost fragment once its
                    // loss is detected, about a round trip later.
                    let lost = (0..frags).filter(|_| rng.unit() < cfg.loss).count() as u64;
                    at += lost * (2 * cfg.latency_us + 20_000);
                    push(
                        &mut queue,
                        &mut events,
                        at,
                        Event::Chunk {
                            to: j,
                            from,
                            seq,
                            data,
                        },
                    );
                }
                SessionOutput::WantPeers { count } => {
                    let peers: Vec<PeerInfo> = sample(&joined, count as usize, &mut rng)
                        .into_iter()
                        .filter(|&j| j != i)
                        .map(info_of)
                        .collect();
                    if let Some(s) = node.session.as_mut() {
                        s.on_candidates(now, &peers);
                    }
                }
                SessionOutput::ForgetPeer { .. } => {}
            }
        }
    }
    let mut result = SimResult {
        subscribers: Vec::new(),
        source_bytes_up: 0,
        peers_bytes_up: 0,
    };
    for (i, node) in nodes.iter_mut().enumerate() {
        let Some(s) = node.session.as_mut() else {
            continue;
        };
        if let Some(e) = s.failed() {
            anyhow::bail!("peer {i}: {e}");
        }
        if i == 0 {
            result.source_bytes_up = s.stats().bytes_up;
        } else {
            result.peers_bytes_up += s.stats().bytes_up;
            result.subscribers.push(s.stats().summary("sim"));
        }
    }
    Ok(result)
}

/// The time a transmission of `len` bytes arrives, after the sender's
/// upload link has drained what was queued before it.
fn send_at(node: &mut Node, now: u64, len: usize, latency_us: u64) -> u64 {
    node.uplink.sent(now, len as u64);
    now + node.uplink.upload(now).queued_us + latency_us
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
