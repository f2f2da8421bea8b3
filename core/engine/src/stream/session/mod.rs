//! One stream on one peer: plugins, buffer, play-out and neighbours, sans-IO.
//!
//! The session is split by responsibility so that each part can be read
//! (and changed) on its own; every part is an `impl Session` block over the
//! one state struct defined here:
//!
//! - this module: the public API the carrier drives (events in, outputs out)
//!   and the tick that orchestrates the rest;
//! - [`guard`]: the bounds on what reaches the plugins and what is kept
//!   about strangers (sizes, rates, address binding, bans, windows);
//! - [`links`]: neighbour links and trust (the Hello/Welcome/Bye/SetLink
//!   handshake, keepalives, timeouts, bans, per-neighbour reports);
//! - [`dispatch`]: calls into the scheduler and overlay and the actions they
//!   answer with;
//! - [`source`]: the publishing side, which seals what the input produces;
//! - [`sink`]: the subscribing side, which verifies chunks and plays them
//!   out against its clock.

mod dispatch;
mod guard;
mod links;
mod sink;
mod source;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use p2ner_plugin_api::abi_stable::std_types::{ROption, RVec};
use p2ner_plugin_api::{
    Capacity, InputBox, LinkView, Metric, OutputBox, OverlayAction, OverlayBox, OverlayContext,
    PeerId, PeerInfo, PlayoutView, Refusal, SchedAction, SchedContext, SchedulerBox, Setup,
    StreamFormat, StripeLink, Upload, View,
};
use p2ner_proto::identity::{Identity, PublicKey};
use p2ner_proto::peer::{self as wire, Envelope, PeerMsg};

use super::buffer::ChunkBuffer;
use super::playout::{PlayEvent, PlayoutClock, PlayoutConfig};
use super::stats::{Snapshot, StreamStats};
pub use guard::{
    MAX_BANNED, MAX_BOOK, MAX_PLUGIN_MESSAGE, MAX_SENDS_PER_CHUNK, NEIGHBOUR_RATE, STRANGER_RATE,
};
use links::{LinkState, Neighbour};

/// Which end of the stream this peer is. (Not `Source`/`Sink`: those are
/// the SDK's input and output traits, which the roles hold.)
pub enum Role {
    /// Publishes the stream: reads the input and signs what it produces.
    Publisher {
        /// Where the media comes from.
        input: InputBox,
        /// Signs every chunk, so subscribers can refuse forged ones.
        key: Identity,
    },
    /// Subscribes to the stream: verifies chunks against the publisher's key
    /// and plays them out.
    Subscriber {
        /// Where the media goes.
        output: OutputBox,
        /// The publisher's key, from the catalogue: what chunks must verify against.
        key: PublicKey,
    },
}

/// How one stream runs on one peer; [`SessionConfig::new`] derives the defaults from the bitrate and chunk length.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The stream's id on the wire.
    pub stream: u64,
    /// The stream's id as users see it, for stats.
    pub name: String,
    /// This peer, as its neighbours know it.
    pub local: PeerInfo,
    /// The publisher, when known: subscribers start by connecting to it.
    pub source: Option<PeerInfo>,
    /// Seeds the plugins' random choices, so runs can be replayed.
    pub seed: u64,
    /// Media per chunk.
    pub chunk_us: u64,
    /// Chunks kept for forwarding.
    pub window_chunks: u64,
    /// Typical bytes per chunk, for schedulers that count capacity in chunks.
    pub chunk_bytes: u64,
    /// Contiguous chunks needed before playback starts (also the lead kept behind the newest chunk).
    pub startup_chunks: u64,
    /// Start with what is there after this long, rather than never.
    pub startup_timeout_us: u64,
    /// Playback must begin on a keyframe (decoders that cannot start mid-GOP).
    pub need_keyframe: bool,
    /// A link with nothing sent for this long gets a `Ping`.
    pub keepalive_us: u64,
    /// A link with nothing heard for this long is dropped.
    pub neighbour_timeout_us: u64,
    /// A `Hello` without a `Welcome` for this long counts as a failed connect.
    pub connect_timeout_us: u64,
    /// How often the overlay gets each neighbour's report.
    pub report_every_us: u64,
    /// How often the carrier calls [`Session::tick`], µs: told to plugins
    /// (`Setup::tick_us`), not used for timing here.
    pub tick_us: u64,
    /// The largest control payload the carrier's channel takes, bytes (one
    /// datagram less the reliable header). Plugin messages are refused above
    /// this less the envelope, so that none is dropped further down.
    pub control_payload: usize,
    /// The carrier is the simulator (`Setup::simulated`).
    pub simulated: bool,
    /// Keys the plugins' own metrics are shown under in stats:
    /// `scheduler.NAME`, `overlay.NAME`.
    pub scheduler_key: String,
    /// The overlay's key, as `scheduler_key`.
    pub overlay_key: String,
}

impl SessionConfig {
    /// Defaults that suit a stream of `chunk_ms` chunks at `bitrate_kbps`.
    pub fn new(stream: u64, name: &str, local: PeerInfo, bitrate_kbps: u32, chunk_ms: u32) -> Self {
        let chunk_us = chunk_ms.max(1) as u64 * 1000;
        SessionConfig {
            stream,
            name: name.to_owned(),
            local,
            source: None,
            seed: stream,
            chunk_us,
            window_chunks: (30_000_000 / chunk_us).max(16),
            chunk_bytes: (bitrate_kbps as u64 * 125 * chunk_us / 1_000_000).max(1),
            startup_chunks: (1_000_000 / chunk_us).max(1),
            startup_timeout_us: 3_000_000,
            need_keyframe: true,
            keepalive_us: 1_000_000,
            neighbour_timeout_us: 5_000_000,
            connect_timeout_us: 3_000_000,
            report_every_us: 1_000_000,
            tick_us: crate::live::driver::TICK.as_micros() as u64,
            control_payload: p2ner_net::config::NetConfig::default().max_control_payload(),
            simulated: false,
            scheduler_key: "scheduler".into(),
            overlay_key: "overlay".into(),
        }
    }

    /// The largest scheduler or overlay message payload that fits one
    /// control datagram with its envelope, from any peer of the stream: the
    /// same number at every peer, so a plugin's limit is the stream's.
    pub fn max_message_bytes(&self) -> usize {
        // The envelope's size for a payload of 128..16383 bytes (postcard's
        // length prefix is two bytes there) and the longest sender id,
        // measured rather than assumed.
        const PROBE: usize = 200;
        let probe = wire::encode(&Envelope {
            version: wire::VERSION,
            stream: self.stream,
            from: u64::MAX,
            msg: PeerMsg::Scheduler(vec![0; PROBE]),
        });
        self.control_payload
            .saturating_sub(probe.len() - PROBE)
            .min(16_383)
    }
}

/// What the session asks its carrier to do: two kinds of send, and two
/// requests that are not sends at all (which is why this is not called
/// `Transmit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// A control message for the control channel.
    SendMessage {
        /// Where to.
        to: SocketAddr,
        /// An encoded [`Envelope`].
        bytes: Vec<u8>,
        /// Acknowledged and retransmitted by the network layer.
        reliable: bool,
    },
    /// A sealed chunk for the data channel.
    SendChunk {
        /// Where to.
        to: SocketAddr,
        /// The chunk's sequence number (the data channel frames it).
        seq: u64,
        /// The chunk as sealed by the publisher; forwarded, never re-signed.
        data: Bytes,
    },
    /// More candidate peers from the servers, please.
    WantPeers {
        /// At most this many.
        count: u32,
    },
    /// The neighbour at `addr` is gone: per-neighbour state of the carrier
    /// can go.
    ForgetPeer {
        /// The neighbour's address.
        addr: SocketAddr,
    },
}

/// A stream as one peer runs it. Feed it events with the current time;
/// collect [`SessionOutput`]s with [`Session::drain`].
pub struct Session {
    cfg: SessionConfig,
    role: Role,
    scheduler: SchedulerBox,
    overlay: OverlayBox,
    buffer: ChunkBuffer,
    playout: Option<PlayoutClock>,
    started_us: u64,
    format: Option<StreamFormat>,
    next_seq: u64,
    neighbours: BTreeMap<PeerId, Neighbour>,
    /// Every peer heard of: candidates, connections, senders.
    book: BTreeMap<PeerId, SocketAddr>,
    /// Links (addresses) banned for forged chunks, and their order.
    banned: BTreeSet<SocketAddr>,
    banned_order: VecDeque<SocketAddr>,
    /// The message budget all non-neighbours share.
    strangers: guard::Bucket,
    out: Vec<SessionOutput>,
    stats: StreamStats,
    failed: Option<String>,
    ended: bool,
    next_report_us: u64,
    last_snapshot: (u64, u64, u64),
    sched_actions: RVec<SchedAction>,
    overlay_actions: RVec<OverlayAction>,
    played: Vec<PlayEvent>,
    /// What the whole upload may still take this tick (an upload cap shared
    /// by all neighbours); `None`: no cap beyond each link's own.
    upload_left: Option<u64>,
    /// The uplink as the carrier last described it.
    upload: Upload,
    /// Rotates which neighbour is offered capacity first.
    turn: usize,
    /// Refused actions waiting to be told to the plugin that asked.
    sched_refusals: Vec<Refusal>,
    overlay_refusals: Vec<Refusal>,
    metrics: RVec<Metric>,
    /// The overlay's stripe table as the scheduler last got it, and the
    /// buffer the overlay fills each tick.
    stripe_links: Vec<StripeLink>,
    stripe_links_buf: RVec<StripeLink>,
}

impl Session {
    /// A session at `now_us`; nothing is called on the plugins until [`Session::start`].
    pub fn new(
        cfg: SessionConfig,
        role: Role,
        scheduler: SchedulerBox,
        overlay: OverlayBox,
        now_us: u64,
    ) -> Self {
        let playout = matches!(role, Role::Subscriber { .. }).then(|| {
            PlayoutClock::new(
                PlayoutConfig {
                    chunk_us: cfg.chunk_us,
                    startup_chunks: cfg.startup_chunks,
                    lead_chunks: cfg.startup_chunks,
                    startup_timeout_us: cfg.startup_timeout_us,
                    need_keyframe: cfg.need_keyframe,
                },
                now_us,
            )
        });
        Session {
            buffer: ChunkBuffer::new(cfg.window_chunks),
            cfg,
            role,
            scheduler,
            overlay,
            playout,
            started_us: now_us,
            format: None,
            next_seq: 0,
            neighbours: BTreeMap::new(),
            book: BTreeMap::new(),
            banned: BTreeSet::new(),
            banned_order: VecDeque::new(),
            strangers: guard::Bucket::new(STRANGER_RATE, now_us),
            out: Vec::new(),
            stats: StreamStats::default(),
            failed: None,
            ended: false,
            next_report_us: now_us,
            last_snapshot: (now_us, 0, 0),
            sched_actions: RVec::new(),
            overlay_actions: RVec::new(),
            played: Vec::new(),
            upload_left: None,
            upload: Upload {
                budget_bytes: u64::MAX,
                ..Upload::default()
            },
            turn: 0,
            sched_refusals: Vec::new(),
            overlay_refusals: Vec::new(),
            metrics: RVec::new(),
            stripe_links: Vec::new(),
            stripe_links_buf: RVec::new(),
        }
    }

    /// Starts the plugins. The source's input is started here, so an input
    /// that cannot open its source fails the stream before it is announced.
    pub fn start(&mut self, now_us: u64, format: Option<StreamFormat>) -> Result<(), String> {
        if let Role::Publisher { input, .. } = &mut self.role {
            let format = input
                .start(now_us)
                .into_result()
                .map_err(|e| format!("input: {e}"))?;
            self.format = Some(format);
        } else if let (Role::Subscriber { output, .. }, Some(format)) = (&mut self.role, format) {
            output
                .start(&format)
                .into_result()
                .map_err(|e| format!("output: {e}"))?;
            self.format = Some(format);
        }
        let is_source = self.is_publisher();
        let ctx = SchedContext {
            local: self.cfg.local.id,
            is_source,
            seed: self.cfg.seed ^ self.cfg.local.id.0,
            chunk_us: self.cfg.chunk_us as u32,
            window_chunks: self.cfg.window_chunks as u32,
            chunk_bytes: self.cfg.chunk_bytes as u32,
        };
        let r = self
            .scheduler
            .on_start(now_us, &ctx, &mut self.sched_actions);
        self.after_scheduler("on_start", r.into_result(), now_us);
        let setup = self.setup();
        let r = self
            .scheduler
            .on_setup(now_us, &setup, &mut self.sched_actions);
        self.after_scheduler("on_setup", r.into_result(), now_us);
        let octx = OverlayContext {
            local: self.cfg.local.clone(),
            is_source,
            seed: self.cfg.seed ^ self.cfg.local.id.0.rotate_left(17),
            source: match &self.cfg.source {
                Some(s) => ROption::RSome(s.clone()),
                None => ROption::RNone,
            },
        };
        if let Some(source) = &self.cfg.source {
            if let Ok(addr) = source.addr.parse() {
                self.remember(source.id, addr);
            }
        }
        let r = self
            .overlay
            .on_start(now_us, &octx, &mut self.overlay_actions);
        self.after_overlay("on_start", r.into_result(), now_us);
        let r = self
            .overlay
            .on_setup(now_us, &setup, &mut self.overlay_actions);
        self.after_overlay("on_setup", r.into_result(), now_us);
        self.failed.clone().map_or(Ok(()), Err)
    }

    /// This peer publishes the stream.
    pub fn is_publisher(&self) -> bool {
        matches!(self.role, Role::Publisher { .. })
    }

    /// The media format: the input's, or the one the catalogue announced.
    pub fn format(&self) -> Option<&StreamFormat> {
        self.format.as_ref()
    }

    /// Why the stream stopped: a plugin failed (an error or a panic).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The source's input ended (a file without loop, a synthetic limit).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The counters the `--stats` lines and the summary are made of.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Links that are up (not those still waiting for a `Welcome`).
    pub fn neighbour_count(&self) -> usize {
        self.neighbours
            .values()
            .filter(|n| n.state == LinkState::Up)
            .count()
    }

    /// Every neighbour's address, up or connecting, so a shared endpoint keeps their state.
    pub fn neighbour_addrs(&self) -> Vec<SocketAddr> {
        self.neighbours.values().map(|n| n.addr).collect()
    }

    /// Takes what the session asked its carrier to do since the last call.
    pub fn drain(&mut self) -> std::vec::Drain<'_, SessionOutput> {
        self.out.drain(..)
    }

    /// Candidate peers, from a server's sample.
    pub fn on_candidates(&mut self, now_us: u64, peers: &[PeerInfo]) {
        let peers: Vec<PeerInfo> = peers
            .iter()
            .filter(|p| {
                p.id != self.cfg.local.id
                    && p.addr
                        .parse::<SocketAddr>()
                        .is_ok_and(|a| !self.is_banned(&a))
            })
            .cloned()
            .collect();
        for p in &peers {
            if let Ok(addr) = p.addr.parse() {
                self.remember(p.id, addr);
            }
        }
        let r =
            self.overlay
                .on_candidates(now_us, peers.as_slice().into(), &mut self.overlay_actions);
        self.after_overlay("on_candidates", r.into_result(), now_us);
    }

    /// What the data channel can take towards `addr` now.
    pub fn set_capacity(&mut self, addr: SocketAddr, capacity: Capacity) {
        for n in self.neighbours.values_mut().filter(|n| n.addr == addr) {
            n.capacity = capacity;
        }
    }

    /// This peer's uplink, shared by all neighbours, for the next tick: what
    /// the whole upload may take is `upload.budget_bytes` when it is capped.
    pub fn set_upload(&mut self, upload: Upload) {
        self.upload_left = upload.capped.then_some(upload.budget_bytes);
        self.upload = Upload {
            stream_bps: self.cfg.chunk_bytes * 8 * 1_000_000 / self.cfg.chunk_us.max(1),
            ..upload
        };
    }

    /// Time passes: produce or play chunks, run the plugins' timers, check
    /// neighbours.
    pub fn tick(&mut self, now_us: u64) {
        if self.failed.is_some() {
            return;
        }
        self.produce(now_us);
        self.play(now_us);
        let upload = self.upload;
        let r = self
            .scheduler
            .on_upload(now_us, upload, &mut self.sched_actions);
        self.after_scheduler("on_upload", r.into_result(), now_us);
        let r = self
            .overlay
            .on_upload(now_us, upload, &mut self.overlay_actions);
        self.after_overlay("on_upload", r.into_result(), now_us);
        let view = self.view(now_us);
        let r = self
            .scheduler
            .on_view(now_us, &view, &mut self.sched_actions);
        self.after_scheduler("on_view", r.into_result(), now_us);
        let r = self
            .overlay
            .on_view(now_us, &view, &mut self.overlay_actions);
        self.after_overlay("on_view", r.into_result(), now_us);
        // Every link that is up, so a tree child learns its parent's RTT
        // too; where media may not flow (not `downstream`) there is no room.
        let mut peers: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.state == LinkState::Up)
            .map(|(&id, _)| id)
            .collect();
        if !peers.is_empty() {
            self.turn = self.turn.wrapping_add(1);
            let k = self.turn % peers.len();
            peers.rotate_left(k);
        }
        // Each neighbour is offered what its link takes, within what is left
        // of the shared upload; the scheduler's sends draw both down.
        for peer in peers {
            let Some(n) = self.neighbours.get_mut(&peer) else {
                continue;
            };
            if let Some(left) = self.upload_left {
                n.capacity.can_send_bytes = n.capacity.can_send_bytes.min(left);
            }
            let cap = Capacity {
                can_send_bytes: if n.link.downstream {
                    n.capacity.can_send_bytes
                } else {
                    0
                },
                ..n.capacity
            };
            let r = self
                .scheduler
                .on_capacity(now_us, peer, cap, &mut self.sched_actions);
            self.after_scheduler("on_capacity", r.into_result(), now_us);
        }
        self.stripe_links(now_us);
        let r = self.scheduler.on_tick(now_us, &mut self.sched_actions);
        self.after_scheduler("on_tick", r.into_result(), now_us);
        let r = self.overlay.on_tick(now_us, &mut self.overlay_actions);
        self.after_overlay("on_tick", r.into_result(), now_us);
        if now_us >= self.next_report_us {
            self.report(now_us);
        }
        self.check_neighbours(now_us);
    }

    /// Hands the overlay's stripe table to the scheduler when it changed:
    /// only entries for neighbours that are up, one per neighbour, so what
    /// an overlay returns cannot grow the scheduler's state.
    fn stripe_links(&mut self, now_us: u64) {
        self.stripe_links_buf.clear();
        let r = self.overlay.stripe_links(&mut self.stripe_links_buf);
        self.after_overlay("stripe_links", r.into_result(), now_us);
        let mut links: Vec<StripeLink> = self
            .stripe_links_buf
            .iter()
            .filter(|l| {
                self.neighbours
                    .get(&l.peer)
                    .is_some_and(|n| n.state == LinkState::Up)
            })
            .copied()
            .collect();
        links.sort_unstable_by_key(|l| l.peer);
        links.dedup_by_key(|l| l.peer);
        if links != self.stripe_links {
            self.stripe_links = links;
            let r = self.scheduler.on_stripe_links(
                now_us,
                self.stripe_links.as_slice().into(),
                &mut self.sched_actions,
            );
            self.after_scheduler("on_stripe_links", r.into_result(), now_us);
        }
    }

    /// The line `--stats` writes for the second that just passed.
    pub fn snapshot(&mut self, now_us: u64) -> Snapshot {
        let (at, down, up) = self.last_snapshot;
        let secs = (now_us.saturating_sub(at) as f64 / 1e6).max(1e-3);
        self.last_snapshot = (now_us, self.stats.bytes_down, self.stats.bytes_up);
        let buffer_ms = match self.playout.as_ref().and_then(|p| p.next()) {
            Some((next, _)) => {
                let contiguous = (next..).take_while(|s| self.buffer.contains(*s)).count() as u64;
                contiguous * self.cfg.chunk_us / 1000
            }
            None => self.buffer.len() as u64 * self.cfg.chunk_us / 1000,
        };
        Snapshot {
            t_ms: now_us.saturating_sub(self.started_us) / 1000,
            stream: self.cfg.name.clone(),
            continuity: self.stats.continuity(),
            buffer_ms,
            neighbours: self.neighbour_count(),
            down_kbps: (self.stats.bytes_down - down) as f64 * 8.0 / 1000.0 / secs,
            up_kbps: (self.stats.bytes_up - up) as f64 * 8.0 / 1000.0 / secs,
            chunks_played: self.stats.chunks_played,
            chunks_missed: self.stats.chunks_missed,
            playing: self.playout.as_ref().is_some_and(|p| p.started()),
            refused_actions: self.stats.refused_actions.clone(),
            plugins: {
                self.ask_metrics();
                self.stats.plugins.clone()
            },
            net: Default::default(),
        }
    }

    /// How this engine runs the stream, for the plugins' `on_setup`.
    fn setup(&self) -> Setup {
        Setup {
            tick_us: self.cfg.tick_us,
            max_message_bytes: self.cfg.max_message_bytes() as u32,
            start_lead_chunks: self.cfg.startup_chunks as u32,
            buffer_us: self.cfg.startup_chunks * self.cfg.chunk_us,
            startup_timeout_us: self.cfg.startup_timeout_us,
            simulated: self.cfg.simulated,
            uplink_shared: true,
        }
    }

    /// Play-out and every neighbour that is up, for the plugins' `on_view`.
    fn view(&self, now_us: u64) -> View {
        let links = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.state == LinkState::Up)
            .map(|(&peer, n)| LinkView {
                peer,
                link: n.link,
                rtt_us: n.capacity.rtt_us,
                up_bps: n.up_bps,
                down_bps: n.down_bps,
                send_rate_bps: n.capacity.rate_bps,
                can_send_bytes: if n.link.downstream {
                    match self.upload_left {
                        Some(left) => n.capacity.can_send_bytes.min(left),
                        None => n.capacity.can_send_bytes,
                    }
                } else {
                    0
                },
                newest_seq: n.newest_seq.into(),
                useful_chunks: n.useful,
                duplicate_chunks: n.duplicates,
                advert: n.advert,
            })
            .collect();
        View {
            playout: self.playout_view(now_us),
            links,
        }
    }

    fn playout_view(&self, now_us: u64) -> PlayoutView {
        let Some(clock) = &self.playout else {
            return PlayoutView::default();
        };
        let contiguous = |from: u64| (from..).take_while(|s| self.buffer.contains(*s)).count();
        let (playing, next_seq, next_deadline_us) = match clock.next() {
            Some((next, deadline)) => (true, next, deadline),
            // Not playing yet: where it would start (a start lead behind the
            // newest chunk held) and the latest it starts (the timeout).
            None => (
                false,
                self.buffer
                    .newest()
                    .map_or(0, |n| (n + 1).saturating_sub(self.cfg.startup_chunks)),
                (self.started_us + self.cfg.startup_timeout_us).max(now_us),
            ),
        };
        PlayoutView {
            playing,
            next_seq,
            next_deadline_us,
            buffered_chunks: contiguous(next_seq) as u64,
            oldest_seq: self.buffer.oldest().unwrap_or(next_seq),
            newest_seq: self.buffer.newest().unwrap_or(next_seq),
        }
    }

    /// Asks both plugins for their own metrics and keeps them in the stats,
    /// under the plugins' keys. A plugin that fails here fails the stream,
    /// as in any other call.
    pub fn ask_metrics(&mut self) {
        for scheduler in [true, false] {
            self.metrics.clear();
            let r = if scheduler {
                self.scheduler.metrics(&mut self.metrics)
            } else {
                self.overlay.metrics(&mut self.metrics)
            };
            if let Err(e) = r.into_result() {
                let which = if scheduler { "scheduler" } else { "overlay" };
                self.fail(format!("{which} metrics: {e}"));
                continue;
            }
            if self.metrics.is_empty() {
                continue;
            }
            let key = if scheduler {
                self.cfg.scheduler_key.clone()
            } else {
                self.cfg.overlay_key.clone()
            };
            // Bounded: a plugin reports at most this many numbers.
            let values = self
                .metrics
                .iter()
                .take(MAX_METRICS)
                .map(|m| (m.name.to_string(), m.value))
                .collect();
            self.stats.plugins.insert(key, values);
        }
    }

    /// Says goodbye to every neighbour and stops the input or output; the
    /// plugins' metrics are asked one last time, for the summary.
    pub fn close(&mut self, now_us: u64) -> Option<String> {
        if self.failed.is_none() {
            self.ask_metrics();
        }
        let peers: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for peer in peers {
            if let Some(n) = self.neighbours.get(&peer) {
                let addr = n.addr;
                self.send(addr, env_msg(&self.cfg, PeerMsg::Bye), false, now_us);
            }
        }
        match &mut self.role {
            Role::Publisher { input, .. } => {
                input.stop().into_result().err().map(|e| e.to_string())
            }
            Role::Subscriber { output, .. } => match output.finish().into_result() {
                Ok(report) => {
                    tracing::info!(stream = %self.cfg.name, chunks = report.chunks, gaps = report.gaps, errors = report.errors, detail = %report.detail, "output finished");
                    None
                }
                Err(e) => Some(e.to_string()),
            },
        }
    }

    fn fail(&mut self, error: String) {
        if self.failed.is_none() {
            tracing::error!(stream = %self.cfg.name, "stream failed: {error}");
            self.failed = Some(error);
        }
    }
}

/// Most metrics kept per plugin (more are ignored): stats lines stay bounded.
const MAX_METRICS: usize = 64;

pub(super) fn env_msg(cfg: &SessionConfig, msg: PeerMsg) -> Vec<u8> {
    wire::encode(&Envelope {
        version: wire::VERSION,
        stream: cfg.stream,
        from: cfg.local.id.0,
        msg,
    })
}
