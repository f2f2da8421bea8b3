//! One stream on one peer: plugins, buffer, play-out and neighbours, sans-IO.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::Bytes;
use p2ner_plugin_api::abi_stable::std_types::{ROption, RVec};
use p2ner_plugin_api::{
    Capacity, ChunkRef, InputBox, InputState, Link, MediaChunk, NeighbourReport, OutputBox,
    OverlayAction, OverlayBox, OverlayContext, PeerId, PeerInfo, Playout, PluginError, SchedAction,
    SchedContext, SchedulerBox, StreamFormat, Upload,
};
use p2ner_proto::identity::{Identity, PublicKey};
use p2ner_proto::peer::{self as wire, ChunkHeader, Envelope, PeerMsg};

use super::buffer::{ChunkBuffer, Insert};
use super::playout::{PlayEvent, PlayoutClock, PlayoutConfig};
use super::stats::{Snapshot, StreamStats};
use super::Chunk;

/// Which end of the stream this peer is.
pub enum Role {
    Source { input: InputBox, key: Identity },
    Sink { output: OutputBox, key: PublicKey },
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The stream's id on the wire.
    pub stream: u64,
    /// The stream's id as users see it, for stats.
    pub name: String,
    pub local: PeerInfo,
    pub source: Option<PeerInfo>,
    pub seed: u64,
    pub chunk_us: u64,
    /// Chunks kept for forwarding.
    pub window_chunks: u64,
    pub chunk_bytes: u64,
    pub startup_chunks: u64,
    pub startup_timeout_us: u64,
    pub need_keyframe: bool,
    pub keepalive_us: u64,
    pub neighbour_timeout_us: u64,
    pub connect_timeout_us: u64,
    pub report_every_us: u64,
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
        }
    }
}

/// What the session asks its carrier to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Message {
        to: SocketAddr,
        bytes: Vec<u8>,
        reliable: bool,
    },
    /// A sealed chunk for the data channel.
    Chunk {
        to: SocketAddr,
        seq: u64,
        data: Bytes,
    },
    /// More candidate peers from the servers, please.
    WantPeers { count: u32 },
    /// Per-neighbour state of the carrier can go.
    Forget { addr: SocketAddr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// We sent `Hello` at this time and wait for `Welcome`.
    Connecting(u64),
    Up,
}

#[derive(Debug)]
struct Neighbour {
    info: PeerInfo,
    addr: SocketAddr,
    link: Link,
    state: LinkState,
    last_heard_us: u64,
    last_sent_us: u64,
    capacity: Capacity,
    useful: u64,
    duplicates: u64,
    bytes_in: u64,
    bytes_out: u64,
    report_useful: u64,
    report_duplicates: u64,
    report_in: u64,
    report_out: u64,
}

/// A stream as one peer runs it. Feed it events with the current time;
/// collect [`Transmit`]s with [`Session::drain`].
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
    banned: BTreeSet<PeerId>,
    out: Vec<Transmit>,
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
}

impl Session {
    pub fn new(
        cfg: SessionConfig,
        role: Role,
        scheduler: SchedulerBox,
        overlay: OverlayBox,
        now_us: u64,
    ) -> Self {
        let playout = matches!(role, Role::Sink { .. }).then(|| {
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
        }
    }

    /// Starts the plugins. The source's input is started here, so an input
    /// that cannot open its source fails the stream before it is announced.
    pub fn start(&mut self, now_us: u64, format: Option<StreamFormat>) -> Result<(), String> {
        if let Role::Source { input, .. } = &mut self.role {
            let format = input
                .start(now_us)
                .into_result()
                .map_err(|e| format!("input: {e}"))?;
            self.format = Some(format);
        } else if let (Role::Sink { output, .. }, Some(format)) = (&mut self.role, format) {
            output
                .start(&format)
                .into_result()
                .map_err(|e| format!("output: {e}"))?;
            self.format = Some(format);
        }
        let is_source = self.is_source();
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
                self.book.insert(source.id, addr);
            }
        }
        let r = self
            .overlay
            .on_start(now_us, &octx, &mut self.overlay_actions);
        self.after_overlay("on_start", r.into_result(), now_us);
        self.failed.clone().map_or(Ok(()), Err)
    }

    pub fn is_source(&self) -> bool {
        matches!(self.role, Role::Source { .. })
    }

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

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    pub fn neighbour_count(&self) -> usize {
        self.neighbours
            .values()
            .filter(|n| n.state == LinkState::Up)
            .count()
    }

    pub fn neighbour_addrs(&self) -> Vec<SocketAddr> {
        self.neighbours.values().map(|n| n.addr).collect()
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.out.drain(..)
    }

    /// Candidate peers, from a server's sample.
    pub fn on_candidates(&mut self, now_us: u64, peers: &[PeerInfo]) {
        let peers: Vec<PeerInfo> = peers
            .iter()
            .filter(|p| p.id != self.cfg.local.id && !self.banned.contains(&p.id))
            .cloned()
            .collect();
        for p in &peers {
            if let Ok(addr) = p.addr.parse() {
                self.book.insert(p.id, addr);
            }
        }
        let r =
            self.overlay
                .on_candidates(now_us, peers.as_slice().into(), &mut self.overlay_actions);
        self.after_overlay("on_candidates", r.into_result(), now_us);
    }

    /// A control message for this stream (the carrier checked `env.stream`).
    pub fn on_message(&mut self, now_us: u64, from: SocketAddr, env: Envelope, len: usize) {
        let peer = PeerId(env.from);
        if self.failed.is_some() || self.banned.contains(&peer) || peer == self.cfg.local.id {
            return;
        }
        self.stats.bytes_down += len as u64;
        self.book.insert(peer, from);
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.last_heard_us = now_us;
            n.bytes_in += len as u64;
            n.addr = from;
        }
        match env.msg {
            PeerMsg::Hello { up, down } => {
                let link = wire::mirror(up, down);
                self.send(from, env_msg(&self.cfg, PeerMsg::Welcome), true, now_us);
                match self.neighbours.get(&peer).map(|n| n.state) {
                    Some(LinkState::Up) => {}
                    Some(LinkState::Connecting(_)) => self.link_up(now_us, peer),
                    None => {
                        self.add_neighbour(now_us, peer, from, link, LinkState::Up);
                        self.link_up(now_us, peer);
                    }
                }
            }
            PeerMsg::Welcome => match self.neighbours.get(&peer).map(|n| n.state) {
                Some(LinkState::Connecting(_)) => self.link_up(now_us, peer),
                Some(LinkState::Up) => {}
                None => self.send(from, env_msg(&self.cfg, PeerMsg::Bye), false, now_us),
            },
            PeerMsg::Bye => self.link_down(now_us, peer, true, false),
            PeerMsg::SetLink { up, down } => {
                if self.neighbours.contains_key(&peer) {
                    self.set_link(now_us, peer, wire::mirror(up, down), false);
                }
            }
            PeerMsg::Ping => {}
            PeerMsg::Overlay(payload) => {
                let r = self.overlay.on_message(
                    now_us,
                    peer,
                    payload.as_slice().into(),
                    &mut self.overlay_actions,
                );
                self.after_overlay("on_message", r.into_result(), now_us);
            }
            PeerMsg::Scheduler(payload) => {
                if self.is_up(peer) {
                    let r = self.scheduler.on_message(
                        now_us,
                        peer,
                        payload.as_slice().into(),
                        &mut self.sched_actions,
                    );
                    self.after_scheduler("on_message", r.into_result(), now_us);
                }
            }
        }
    }

    /// A chunk from the data channel. Returns false when the sender was
    /// banned for it (the carrier may want to count that).
    pub fn on_chunk(&mut self, now_us: u64, from: SocketAddr, seq: u64, data: Bytes) -> bool {
        self.stats.bytes_down += data.len() as u64;
        let Some(peer) = self
            .neighbours
            .iter()
            .find(|(_, n)| n.addr == from)
            .map(|(&id, _)| id)
        else {
            return true;
        };
        let Role::Sink { key, .. } = &self.role else {
            return true;
        };
        let (header, media_at) = match wire::open_chunk(key, self.cfg.stream, seq, &data) {
            Ok(ok) => ok,
            Err(e) => {
                self.stats.forged_chunks += 1;
                tracing::warn!(stream = %self.cfg.name, %peer, %from, seq, "chunk refused ({e:?}): dropping this neighbour");
                self.ban(now_us, peer);
                return false;
            }
        };
        let n = self.neighbours.get_mut(&peer).expect("looked up above");
        n.last_heard_us = now_us;
        n.bytes_in += data.len() as u64;
        let chunk = Chunk {
            seq,
            pts_us: header.pts_us,
            duration_us: header.duration_us,
            keyframe: header.keyframe,
            capture_us: header.capture_us,
            media_at,
            sealed: data,
        };
        let media_len = chunk.media().len() as u64;
        if self
            .playout
            .as_ref()
            .and_then(|p| p.next())
            .is_some_and(|(next, _)| seq < next)
        {
            self.stats.chunks_late += 1;
            n.duplicates += 1;
            return true;
        }
        match self.buffer.insert(chunk) {
            Insert::New => {
                n.useful += 1;
                self.stats.chunks_received += 1;
                self.stats.media_bytes += media_len;
                let r = self.scheduler.on_chunk(
                    now_us,
                    seq,
                    ROption::RSome(peer),
                    &mut self.sched_actions,
                );
                self.after_scheduler("on_chunk", r.into_result(), now_us);
            }
            Insert::Duplicate => {
                n.duplicates += 1;
                self.stats.duplicate_chunks += 1;
            }
            Insert::TooOld => {
                self.stats.chunks_late += 1;
            }
        }
        true
    }

    /// A reliable message to `addr` was never acknowledged.
    pub fn on_unreachable(&mut self, now_us: u64, addr: SocketAddr) {
        let gone: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.addr == addr)
            .map(|(&id, _)| id)
            .collect();
        for peer in gone {
            self.link_down(now_us, peer, true, false);
        }
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
        let mut peers: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.state == LinkState::Up && n.link.downstream)
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
            let cap = n.capacity;
            let r = self
                .scheduler
                .on_capacity(now_us, peer, cap, &mut self.sched_actions);
            self.after_scheduler("on_capacity", r.into_result(), now_us);
        }
        let r = self.scheduler.on_tick(now_us, &mut self.sched_actions);
        self.after_scheduler("on_tick", r.into_result(), now_us);
        let r = self.overlay.on_tick(now_us, &mut self.overlay_actions);
        self.after_overlay("on_tick", r.into_result(), now_us);
        if now_us >= self.next_report_us {
            self.report(now_us);
        }
        self.check_neighbours(now_us);
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
            net: Default::default(),
        }
    }

    /// Says goodbye to every neighbour and stops the input or output.
    pub fn close(&mut self, now_us: u64) -> Option<String> {
        let peers: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for peer in peers {
            if let Some(n) = self.neighbours.get(&peer) {
                let addr = n.addr;
                self.send(addr, env_msg(&self.cfg, PeerMsg::Bye), false, now_us);
            }
        }
        match &mut self.role {
            Role::Source { input, .. } => input.stop().into_result().err().map(|e| e.to_string()),
            Role::Sink { output, .. } => match output.finish().into_result() {
                Ok(report) => {
                    tracing::info!(stream = %self.cfg.name, chunks = report.chunks, gaps = report.gaps, errors = report.errors, detail = %report.detail, "output finished");
                    None
                }
                Err(e) => Some(e.to_string()),
            },
        }
    }

    fn produce(&mut self, now_us: u64) {
        let Role::Source { input, key } = &mut self.role else {
            return;
        };
        if self.ended {
            return;
        }
        let mut media: RVec<MediaChunk> = RVec::new();
        let state = input.poll(now_us, &mut media).into_result();
        // Sealed while the key is at hand; the publisher's clock is the
        // capture time every subscriber measures its lag against.
        let sealed: Vec<Chunk> = media
            .iter()
            .zip(self.next_seq..)
            .map(|(mc, seq)| {
                let header = ChunkHeader {
                    pts_us: mc.pts_us,
                    duration_us: mc.duration_us,
                    keyframe: mc.keyframe,
                    capture_us: now_us,
                };
                let sealed = wire::seal_chunk(key, self.cfg.stream, seq, &header, &mc.data);
                Chunk {
                    seq,
                    pts_us: mc.pts_us,
                    duration_us: mc.duration_us,
                    keyframe: mc.keyframe,
                    capture_us: now_us,
                    media_at: sealed.len() - mc.data.len(),
                    sealed: Bytes::from(sealed),
                }
            })
            .collect();
        match state {
            Ok(InputState::Ended) => self.ended = true,
            Ok(_) => {}
            Err(e) => self.fail(format!("input: {e}")),
        }
        for chunk in sealed {
            let seq = chunk.seq;
            self.next_seq = seq + 1;
            self.stats.chunks_produced += 1;
            self.stats.media_bytes += chunk.media().len() as u64;
            self.buffer.insert(chunk);
            let r = self
                .scheduler
                .on_chunk(now_us, seq, ROption::RNone, &mut self.sched_actions);
            self.after_scheduler("on_chunk", r.into_result(), now_us);
        }
    }

    fn play(&mut self, now_us: u64) {
        let (Some(clock), Role::Sink { output, .. }) = (&mut self.playout, &mut self.role) else {
            return;
        };
        self.played.clear();
        clock.poll(now_us, &self.buffer, &mut self.played);
        let mut error = None;
        for ev in &self.played {
            match *ev {
                PlayEvent::Started { .. } => {
                    self.stats.startup_us = Some(now_us.saturating_sub(self.started_us));
                }
                PlayEvent::Play { seq, .. } => {
                    let chunk = self.buffer.get(seq).expect("played chunks are buffered");
                    self.stats.chunks_played += 1;
                    self.stats
                        .lag_us
                        .push(now_us.saturating_sub(chunk.capture_us));
                    let r = output.push(&ChunkRef {
                        seq,
                        pts_us: chunk.pts_us,
                        duration_us: chunk.duration_us,
                        keyframe: chunk.keyframe,
                        data: chunk.media().into(),
                    });
                    if let Err(e) = r.into_result() {
                        error = Some(format!("output: {e}"));
                        break;
                    }
                }
                PlayEvent::Missed { seq } => {
                    self.stats.chunks_missed += 1;
                    if let Err(e) = output.gap(seq).into_result() {
                        error = Some(format!("output: {e}"));
                        break;
                    }
                }
            }
        }
        if let Some(e) = error {
            self.fail(e);
            return;
        }
        if let Some((next, deadline)) = clock.next() {
            let playout = Playout {
                next_seq: next,
                next_deadline_us: deadline,
                oldest_seq: self.buffer.oldest().unwrap_or(next),
                newest_seq: self.buffer.newest().unwrap_or(next),
            };
            let r = self
                .scheduler
                .on_playout(now_us, playout, &mut self.sched_actions);
            self.after_scheduler("on_playout", r.into_result(), now_us);
        }
    }

    fn report(&mut self, now_us: u64) {
        let secs = (now_us + self.cfg.report_every_us - self.next_report_us) as f64 / 1e6;
        self.next_report_us = now_us + self.cfg.report_every_us;
        let reports: Vec<(PeerId, NeighbourReport)> = self
            .neighbours
            .iter_mut()
            .filter(|(_, n)| n.state == LinkState::Up)
            .map(|(&id, n)| {
                let r = NeighbourReport {
                    rtt_us: n.capacity.rtt_us,
                    down_bps: ((n.bytes_in - n.report_in) as f64 * 8.0 / secs) as u64,
                    up_bps: ((n.bytes_out - n.report_out) as f64 * 8.0 / secs) as u64,
                    useful_chunks: n.useful - n.report_useful,
                    duplicate_chunks: n.duplicates - n.report_duplicates,
                    loss_rate: 0.0,
                };
                n.report_in = n.bytes_in;
                n.report_out = n.bytes_out;
                n.report_useful = n.useful;
                n.report_duplicates = n.duplicates;
                (id, r)
            })
            .collect();
        for (peer, report) in reports {
            let r = self
                .overlay
                .on_report(now_us, peer, report, &mut self.overlay_actions);
            self.after_overlay("on_report", r.into_result(), now_us);
        }
    }

    fn check_neighbours(&mut self, now_us: u64) {
        let mut dead = Vec::new();
        let mut ping = Vec::new();
        for (&id, n) in &self.neighbours {
            match n.state {
                LinkState::Connecting(since) if now_us > since + self.cfg.connect_timeout_us => {
                    dead.push(id)
                }
                LinkState::Up if now_us > n.last_heard_us + self.cfg.neighbour_timeout_us => {
                    dead.push(id)
                }
                LinkState::Up if now_us >= n.last_sent_us + self.cfg.keepalive_us => {
                    ping.push(n.addr)
                }
                _ => {}
            }
        }
        for peer in dead {
            tracing::debug!(stream = %self.cfg.name, %peer, "neighbour timed out");
            self.link_down(now_us, peer, true, true);
        }
        for addr in ping {
            self.send(addr, env_msg(&self.cfg, PeerMsg::Ping), false, now_us);
        }
    }

    fn is_up(&self, peer: PeerId) -> bool {
        self.neighbours
            .get(&peer)
            .is_some_and(|n| n.state == LinkState::Up)
    }

    fn add_neighbour(
        &mut self,
        now_us: u64,
        peer: PeerId,
        addr: SocketAddr,
        link: Link,
        state: LinkState,
    ) {
        self.neighbours.insert(
            peer,
            Neighbour {
                info: PeerInfo {
                    id: peer,
                    addr: addr.to_string().into(),
                },
                addr,
                link,
                state,
                last_heard_us: now_us,
                last_sent_us: now_us,
                capacity: Capacity::default(),
                useful: 0,
                duplicates: 0,
                bytes_in: 0,
                bytes_out: 0,
                report_useful: 0,
                report_duplicates: 0,
                report_in: 0,
                report_out: 0,
            },
        );
    }

    fn link_up(&mut self, now_us: u64, peer: PeerId) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        n.state = LinkState::Up;
        let (info, link) = (n.info.clone(), n.link);
        let r = self
            .scheduler
            .on_neighbour_up(now_us, peer, link, &mut self.sched_actions);
        self.after_scheduler("on_neighbour_up", r.into_result(), now_us);
        let r = self
            .overlay
            .on_connected(now_us, &info, &mut self.overlay_actions);
        self.after_overlay("on_connected", r.into_result(), now_us);
    }

    /// Removes a neighbour; `tell_overlay` when the overlay did not ask for it.
    fn link_down(&mut self, now_us: u64, peer: PeerId, tell_overlay: bool, say_bye: bool) {
        let Some(n) = self.neighbours.remove(&peer) else {
            return;
        };
        if say_bye {
            self.send(n.addr, env_msg(&self.cfg, PeerMsg::Bye), false, now_us);
        }
        self.out.push(Transmit::Forget { addr: n.addr });
        if n.state == LinkState::Up {
            let r = self
                .scheduler
                .on_neighbour_down(now_us, peer, &mut self.sched_actions);
            self.after_scheduler("on_neighbour_down", r.into_result(), now_us);
        }
        if tell_overlay {
            let r = self
                .overlay
                .on_disconnected(now_us, peer, &mut self.overlay_actions);
            self.after_overlay("on_disconnected", r.into_result(), now_us);
        }
    }

    fn set_link(&mut self, now_us: u64, peer: PeerId, link: Link, tell_peer: bool) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.link == link {
            return;
        }
        n.link = link;
        let (addr, up) = (n.addr, n.state == LinkState::Up);
        if tell_peer {
            let msg = PeerMsg::SetLink {
                up: link.upstream,
                down: link.downstream,
            };
            self.send(addr, env_msg(&self.cfg, msg), true, now_us);
        }
        if up {
            // Schedulers see a changed link as a new one.
            let r = self
                .scheduler
                .on_neighbour_down(now_us, peer, &mut self.sched_actions);
            self.after_scheduler("on_neighbour_down", r.into_result(), now_us);
            let r = self
                .scheduler
                .on_neighbour_up(now_us, peer, link, &mut self.sched_actions);
            self.after_scheduler("on_neighbour_up", r.into_result(), now_us);
        }
    }

    fn ban(&mut self, now_us: u64, peer: PeerId) {
        if self.banned.insert(peer) {
            self.stats.peers_banned += 1;
        }
        self.link_down(now_us, peer, true, true);
    }

    fn send(&mut self, to: SocketAddr, bytes: Vec<u8>, reliable: bool, now_us: u64) {
        self.stats.bytes_up += bytes.len() as u64;
        if let Some(n) = self.neighbours.values_mut().find(|n| n.addr == to) {
            n.last_sent_us = now_us;
            n.bytes_out += bytes.len() as u64;
        }
        self.out.push(Transmit::Message {
            to,
            bytes,
            reliable,
        });
    }

    fn fail(&mut self, error: String) {
        if self.failed.is_none() {
            tracing::error!(stream = %self.cfg.name, "stream failed: {error}");
            self.failed = Some(error);
        }
    }

    fn after_scheduler(&mut self, call: &str, r: Result<(), PluginError>, now_us: u64) {
        if let Err(e) = r {
            self.fail(format!("scheduler {call}: {e}"));
        }
        let actions = std::mem::take(&mut self.sched_actions);
        for action in actions.iter() {
            match action {
                SchedAction::SendMessage {
                    peer,
                    payload,
                    reliable,
                } => {
                    if let Some(addr) = self.neighbours.get(peer).map(|n| n.addr) {
                        let msg = PeerMsg::Scheduler(payload.to_vec());
                        self.send(addr, env_msg(&self.cfg, msg), *reliable, now_us);
                    }
                }
                SchedAction::SendChunk { peer, seq } => {
                    let (Some(n), Some(chunk)) =
                        (self.neighbours.get_mut(peer), self.buffer.get(*seq))
                    else {
                        continue;
                    };
                    // Beyond what the link takes, a chunk would only queue
                    // (the last one may overdraw, schedulers count in whole
                    // chunks).
                    if n.capacity.can_send_bytes == 0 || self.upload_left == Some(0) {
                        self.stats.chunks_refused += 1;
                        continue;
                    }
                    let len = chunk.sealed.len() as u64;
                    n.capacity.can_send_bytes = n.capacity.can_send_bytes.saturating_sub(len);
                    if let Some(left) = &mut self.upload_left {
                        *left = left.saturating_sub(len);
                    }
                    n.bytes_out += chunk.sealed.len() as u64;
                    n.last_sent_us = now_us;
                    self.stats.bytes_up += chunk.sealed.len() as u64;
                    self.stats.chunks_sent += 1;
                    self.out.push(Transmit::Chunk {
                        to: n.addr,
                        seq: *seq,
                        data: chunk.sealed.clone(),
                    });
                }
            }
        }
        self.sched_actions = actions;
        self.sched_actions.clear();
    }

    fn after_overlay(&mut self, call: &str, r: Result<(), PluginError>, now_us: u64) {
        if let Err(e) = r {
            self.fail(format!("overlay {call}: {e}"));
        }
        // Overlay actions may call back into the overlay (a failed connect);
        // handle them until none are left, bounded in rounds.
        for _ in 0..8 {
            if self.overlay_actions.is_empty() {
                break;
            }
            let actions = std::mem::take(&mut self.overlay_actions);
            for action in actions {
                self.overlay_action(action, now_us);
            }
        }
    }

    fn overlay_action(&mut self, action: OverlayAction, now_us: u64) {
        match action {
            OverlayAction::Connect { peer, link } => {
                if peer.id == self.cfg.local.id || self.neighbours.contains_key(&peer.id) {
                    return;
                }
                let addr = match peer.addr.parse::<SocketAddr>() {
                    Ok(addr) if !self.banned.contains(&peer.id) => addr,
                    _ => {
                        let r = self.overlay.on_disconnected(
                            now_us,
                            peer.id,
                            &mut self.overlay_actions,
                        );
                        if let Err(e) = r.into_result() {
                            self.fail(format!("overlay on_disconnected: {e}"));
                        }
                        return;
                    }
                };
                self.book.insert(peer.id, addr);
                self.add_neighbour(now_us, peer.id, addr, link, LinkState::Connecting(now_us));
                self.neighbours.get_mut(&peer.id).expect("just added").info = peer.clone();
                self.send(addr, env_msg(&self.cfg, PeerMsg::hello(link)), true, now_us);
            }
            OverlayAction::Disconnect { peer } => self.link_down(now_us, peer, false, true),
            OverlayAction::SetLink { peer, link } => self.set_link(now_us, peer, link, true),
            OverlayAction::SendMessage {
                peer,
                payload,
                reliable,
            } => {
                if let Some(&addr) = self.book.get(&peer) {
                    let msg = PeerMsg::Overlay(payload.to_vec());
                    self.send(addr, env_msg(&self.cfg, msg), reliable, now_us);
                } else {
                    tracing::debug!(stream = %self.cfg.name, %peer, "overlay message to a peer of unknown address dropped");
                }
            }
            OverlayAction::WantPeers { count } => self.out.push(Transmit::WantPeers { count }),
        }
    }
}

fn env_msg(cfg: &SessionConfig, msg: PeerMsg) -> Vec<u8> {
    wire::encode(&Envelope {
        version: wire::VERSION,
        stream: cfg.stream,
        from: cfg.local.id.0,
        msg,
    })
}
