//! Overlay `mesh`: a random mesh, bootstrapped from the server's sample.
//!
//! Each peer keeps `degree` neighbours, chosen at random among the peers it
//! knows of, and learns more peers by exchanging samples of its known set
//! with its neighbours (peer exchange), so a swarm stays connected even when
//! the server hands out small samples. Dead neighbours are replaced at once;
//! a neighbour that has given nothing useful for `useless_after_ms` while
//! others did is replaced by a fresh one, which is how a mesh heals around
//! free riders and overloaded peers. Links carry media both ways.
//!
//! Under an upload cap the automatic degree grows with this peer's upload in
//! stream copies (the base degree up to one copy, up to twice it below 3x):
//! a peer's neighbours are the ones that ask it for chunks, so a peer with
//! much upload needs many of them to stay busy. It never shrinks below the
//! base: a peer with little upload still fetches a whole stream copy, and
//! with half the neighbours it had half the holders to fetch from (at load
//! 0.9 such peers played 0.80 where the 1.6x ones played 0.96).
//!
//! Hostile peers are bounded: the address book holds at most `max_known`
//! peers (peers proven by a connection or named by the server are kept
//! before hearsay from peer exchange, which is what an attacker floods);
//! peer exchange is taken only from neighbours, at most one message per
//! neighbour per quarter of `pex_ms`, at most [`PEX_SAMPLE`] peers each, so
//! that handling one costs the same whatever the sender claims; and a full
//! publisher makes room for a newcomer by dropping a neighbour of the
//! address that holds most of its slots, so that many fake neighbours from
//! one host cannot starve real subscribers.
//!
//! Sans-IO and deterministic for a seed: the same `.so` runs in a real swarm
//! and in the simulator.

use std::collections::{BTreeMap, BTreeSet};

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::{NeighbourReport, OverlayContext, Upload};

const PEX: u8 = 1;
/// Upload (in 1/16ths of a stream copy) from which a peer keeps the base degree.
const AMPLE_16THS: u64 = 3 * 16;
/// Peers per exchange: enough to spread knowledge, small enough for one
/// datagram. Entries beyond it in a received exchange are ignored.
pub const PEX_SAMPLE: usize = 8;

/// Parameters, each written once: `register` declares this table and
/// [`Mesh::new`] reads from it.
pub const PARAMS: &[ParamDef] = &[DEGREE, MAX_DEGREE, PEX_MS, USELESS_AFTER_MS, MAX_KNOWN];

const DEGREE: ParamDef = ParamDef::new(
    "degree",
    "0",
    "neighbours to keep (0: about log2 of the swarm, 4 to 10, scaled by the upload in stream copies under a cap)",
);
const MAX_DEGREE: ParamDef = ParamDef::new(
    "max_degree",
    "24",
    "neighbours accepted at most (inbound included)",
);
const PEX_MS: ParamDef = ParamDef::new("pex_ms", "1000", "interval between peer exchanges");
const MAX_KNOWN: ParamDef = ParamDef::new(
    "max_known",
    "512",
    "peers the address book holds at most (hearsay is evicted first)",
);
const USELESS_AFTER_MS: ParamDef = ParamDef::new(
    "useless_after_ms",
    "10000",
    "replace a neighbour that gave nothing for this long",
);

/// The `mesh` overlay: a random graph of about `degree` neighbours that replaces the useless ones.
pub struct Mesh {
    /// 0: chosen from the swarm size (log2 of the known peers, within bounds).
    degree: usize,
    max_degree: usize,
    pex_every_us: u64,
    useless_after_us: u64,
    rng: Rng,
    local: Option<PeerId>,
    is_source: bool,
    known: BTreeMap<PeerId, PeerInfo>,
    /// Known peers learnt only from peer exchange (unproven hearsay), in a
    /// vector for O(1) random eviction; `hearsay_at` is each one's index.
    hearsay: Vec<PeerId>,
    hearsay_at: BTreeMap<PeerId, usize>,
    max_known: usize,
    /// When each neighbour's last peer exchange was taken.
    pex_from: BTreeMap<PeerId, u64>,
    /// Peer exchanges ignored: from non-neighbours or too frequent.
    pub pex_dropped: u64,
    /// Peers not learnt because the book was full of proven peers.
    pub book_full: u64,
    /// Slots taken back from the host that held most of them.
    pub slots_reclaimed: u64,
    neighbours: BTreeMap<PeerId, Neighbour>,
    /// Connection attempts in flight, with when they started.
    pending: BTreeMap<PeerId, u64>,
    /// Peers that failed or were dropped recently: not retried at once.
    shunned: BTreeSet<PeerId>,
    next_pex_us: u64,
    asked_for_peers_us: Option<u64>,
    /// This peer's capped upload in stream copies, in 1/16ths; `None`
    /// while uncapped or unknown.
    upload_16ths: Option<u64>,
}

struct Neighbour {
    since_us: u64,
    /// Last time this neighbour gave us a first copy of a chunk.
    last_useful_us: u64,
}

impl Mesh {
    /// A mesh from its parameters.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let degree: usize = DEGREE.parse(params)?;
        let max_degree: usize = MAX_DEGREE.parse(params)?;
        if max_degree < 2 || degree > max_degree {
            return Err(PluginError::new(
                "need 2 <= max_degree and degree <= max_degree",
            ));
        }
        let max_known: usize = MAX_KNOWN.parse(params)?;
        if max_known < 8 {
            return Err(PluginError::new("need max_known >= 8"));
        }
        Ok(Mesh {
            hearsay: Vec::new(),
            hearsay_at: BTreeMap::new(),
            max_known,
            pex_from: BTreeMap::new(),
            pex_dropped: 0,
            book_full: 0,
            slots_reclaimed: 0,
            degree,
            max_degree,
            pex_every_us: PEX_MS.parse::<u64>(params)? * 1000,
            useless_after_us: USELESS_AFTER_MS.parse::<u64>(params)? * 1000,
            rng: Rng::new(0),
            local: None,
            is_source: false,
            known: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            pending: BTreeMap::new(),
            shunned: BTreeSet::new(),
            next_pex_us: 0,
            asked_for_peers_us: None,
            upload_16ths: None,
        })
    }

    /// The number of neighbours to aim for.
    pub fn target(&self) -> usize {
        if self.degree > 0 {
            return self.degree;
        }
        let swarm = self.known.len() + 1;
        let log2 = usize::BITS - swarm.leading_zeros();
        let base = (log2 as usize + 2).clamp(4, 10);
        // Under a cap, a peer's neighbours are its customers: a peer that
        // uploads twice the stream needs twice the requesters to stay busy.
        // One below a stream copy keeps the base degree anyway: it downloads
        // a whole copy, and halving its neighbours (tried: it saves their
        // announcements) halved the holders it could fetch from, so such
        // peers missed most. A peer with several copies to spare is no
        // bottleneck, and more neighbours would only cost announcements.
        let scaled = match self.upload_16ths {
            Some(x) if x < AMPLE_16THS => (base as u64 * x)
                .div_ceil(16)
                .clamp(base as u64, 2 * base as u64)
                as usize,
            _ => base,
        };
        scaled.min(self.max_degree)
    }

    fn fill(&mut self, now_us: u64, out: &mut OverlayOut<'_>) {
        // The publisher is only connected to; it never picks peers, so that
        // its upload goes to whoever joins first rather than to its choices.
        if self.is_source {
            return;
        }
        let want = self
            .target()
            .saturating_sub(self.neighbours.len() + self.pending.len());
        if want == 0 {
            return;
        }
        let mut candidates: Vec<&PeerInfo> = self
            .known
            .values()
            .filter(|p| {
                Some(p.id) != self.local
                    && !self.neighbours.contains_key(&p.id)
                    && !self.pending.contains_key(&p.id)
                    && !self.shunned.contains(&p.id)
            })
            .collect();
        if candidates.len() < want {
            // Forget old grudges before asking the server for more.
            self.shunned.clear();
            if self
                .asked_for_peers_us
                .is_none_or(|t| now_us >= t + 2_000_000)
            {
                self.asked_for_peers_us = Some(now_us);
                out.push(OverlayAction::WantPeers { count: 20 });
            }
        }
        self.rng.shuffle(&mut candidates);
        let chosen: Vec<PeerInfo> = candidates.into_iter().take(want).cloned().collect();
        for peer in chosen {
            self.pending.insert(peer.id, now_us);
            out.connect(peer, Link::BOTH);
        }
    }

    /// Learns peers the server named or that connected: proven, so they
    /// may evict hearsay when the book is full.
    fn learn(&mut self, peers: &[PeerInfo]) {
        for p in peers {
            if Some(p.id) == self.local {
                continue;
            }
            if self.hearsay_at.contains_key(&p.id) {
                self.unhearsay(p.id);
                self.known.insert(p.id, p.clone());
                continue;
            }
            if self.known.contains_key(&p.id) {
                continue;
            }
            if self.known.len() >= self.max_known && !self.evict_hearsay() {
                self.book_full += 1;
                continue;
            }
            self.known.insert(p.id, p.clone());
        }
    }

    /// Learns peers from a neighbour's peer exchange: they only fill room,
    /// or replace other hearsay, never proven peers.
    fn hear(&mut self, peers: &[PeerInfo]) {
        for p in peers {
            if Some(p.id) == self.local || self.known.contains_key(&p.id) {
                continue;
            }
            if self.known.len() >= self.max_known && !self.evict_hearsay() {
                self.book_full += 1;
                continue;
            }
            self.known.insert(p.id, p.clone());
            self.hearsay_at.insert(p.id, self.hearsay.len());
            self.hearsay.push(p.id);
        }
    }

    fn unhearsay(&mut self, id: PeerId) {
        if let Some(i) = self.hearsay_at.remove(&id) {
            self.hearsay.swap_remove(i);
            if let Some(&moved) = self.hearsay.get(i) {
                self.hearsay_at.insert(moved, i);
            }
        }
    }

    /// Drops one random hearsay peer that is neither a neighbour nor being
    /// connected to; false if there is none to drop (tried a few times).
    fn evict_hearsay(&mut self) -> bool {
        for _ in 0..4 {
            if self.hearsay.is_empty() {
                return false;
            }
            let id = self.hearsay[self.rng.below(self.hearsay.len() as u64) as usize];
            if self.neighbours.contains_key(&id) || self.pending.contains_key(&id) {
                continue;
            }
            self.unhearsay(id);
            self.known.remove(&id);
            self.shunned.remove(&id);
            return true;
        }
        false
    }

    /// The IP part of a peer's address (its host, for slot fairness).
    fn host(&self, peer: PeerId) -> Option<String> {
        let addr = &self.known.get(&peer)?.addr;
        let s = addr.as_str();
        Some(match s.rsplit_once(':') {
            Some((host, _)) => host.to_owned(),
            None => s.to_owned(),
        })
    }

    /// A full peer's room for `newcomer`: a neighbour of the host that holds
    /// the most slots, if that is another host and it holds more than the
    /// newcomer's would with it. A host that already holds most slots gets
    /// no more (its newcomers are refused, as everyone's were before).
    fn make_room_for(&self, newcomer: PeerId) -> Option<PeerId> {
        let mut per_host: BTreeMap<String, Vec<PeerId>> = BTreeMap::new();
        for &id in self.neighbours.keys() {
            per_host
                .entry(self.host(id).unwrap_or_default())
                .or_default()
                .push(id);
        }
        let mine = self.host(newcomer).unwrap_or_default();
        let mine_count = per_host.get(&mine).map_or(0, Vec::len) + 1;
        let (host, ids) = per_host.iter().max_by_key(|(_, ids)| ids.len())?;
        if *host == mine || ids.len() <= mine_count {
            return None;
        }
        // The youngest of them: the longest-standing neighbours are kept.
        ids.iter()
            .copied()
            .max_by_key(|id| self.neighbours.get(id).map_or(0, |n| n.since_us))
    }

    fn pex_message(&mut self) -> Vec<u8> {
        let mut sample: Vec<&PeerInfo> = self.known.values().collect();
        self.rng.shuffle(&mut sample);
        sample.truncate(PEX_SAMPLE);
        let sample: Vec<PeerInfo> = sample.into_iter().cloned().collect();
        encode_pex(&sample)
    }
}

/// A peer-exchange message naming `peers` (at most 255 of them, of which a
/// receiver reads [`PEX_SAMPLE`]).
pub fn encode_pex(peers: &[PeerInfo]) -> Vec<u8> {
    let peers = &peers[..peers.len().min(u8::MAX as usize)];
    let mut msg = vec![PEX, peers.len() as u8];
    for p in peers {
        let addr = p.addr.as_bytes();
        let len = addr.len().min(u8::MAX as usize);
        msg.extend_from_slice(&p.id.0.to_le_bytes());
        msg.push(len as u8);
        msg.extend_from_slice(&addr[..len]);
    }
    msg
}

/// Decodes a peer-exchange message; anything malformed yields nothing.
pub fn decode_pex(msg: &[u8]) -> Option<Vec<PeerInfo>> {
    let (&kind, rest) = msg.split_first()?;
    if kind != PEX {
        return None;
    }
    let (&count, mut rest) = rest.split_first()?;
    let count = (count as usize).min(PEX_SAMPLE);
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        let id = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let len = *rest.get(8)? as usize;
        let addr = std::str::from_utf8(rest.get(9..9 + len)?).ok()?;
        peers.push(PeerInfo {
            id: PeerId(id),
            addr: addr.into(),
        });
        rest = &rest[9 + len..];
    }
    Some(peers)
}

impl Overlay for Mesh {
    fn on_start(&mut self, now_us: u64, ctx: &OverlayContext, out: &mut OverlayOut<'_>) {
        self.rng = Rng::new(ctx.seed);
        self.local = Some(ctx.local.id);
        self.is_source = ctx.is_source;
        self.next_pex_us = now_us + self.pex_every_us;
        if let Some(source) = ctx.source.as_ref().into_option() {
            self.learn(std::slice::from_ref(source));
        }
        self.fill(now_us, out);
    }

    fn on_candidates(&mut self, now_us: u64, peers: &[PeerInfo], out: &mut OverlayOut<'_>) {
        self.learn(peers);
        self.fill(now_us, out);
    }

    fn on_connected(&mut self, now_us: u64, peer: &PeerInfo, out: &mut OverlayOut<'_>) {
        self.pending.remove(&peer.id);
        self.learn(std::slice::from_ref(peer));
        if self.neighbours.len() >= self.max_degree {
            match self.make_room_for(peer.id) {
                Some(victim) => {
                    self.neighbours.remove(&victim);
                    self.pex_from.remove(&victim);
                    self.slots_reclaimed += 1;
                    out.disconnect(victim);
                }
                _ => {
                    out.disconnect(peer.id);
                    return;
                }
            }
        }
        self.neighbours.insert(
            peer.id,
            Neighbour {
                since_us: now_us,
                last_useful_us: now_us,
            },
        );
    }

    fn on_disconnected(&mut self, now_us: u64, peer: PeerId, out: &mut OverlayOut<'_>) {
        self.pending.remove(&peer);
        self.pex_from.remove(&peer);
        if self.neighbours.remove(&peer).is_some() || !self.is_source {
            if self.shunned.len() >= self.max_known {
                self.shunned.clear();
            }
            self.shunned.insert(peer);
        }
        self.fill(now_us, out);
    }

    fn on_message(&mut self, now_us: u64, peer: PeerId, payload: &[u8], out: &mut OverlayOut<'_>) {
        // Only neighbours exchange peers, each at most once per quarter
        // interval (it sends one exchange per interval to a random
        // neighbour): a flood costs a lookup per message, never a scan.
        let min_gap = self.pex_every_us / 4;
        let too_soon = self
            .pex_from
            .get(&peer)
            .is_some_and(|&t| now_us < t.saturating_add(min_gap));
        if !self.neighbours.contains_key(&peer) || too_soon {
            self.pex_dropped += 1;
            return;
        }
        if let Some(peers) = decode_pex(payload) {
            self.pex_from.insert(peer, now_us);
            self.hear(&peers);
            self.fill(now_us, out);
        }
    }

    fn on_report(
        &mut self,
        now_us: u64,
        peer: PeerId,
        report: NeighbourReport,
        _out: &mut OverlayOut<'_>,
    ) {
        if let Some(n) = self.neighbours.get_mut(&peer) {
            if report.useful_chunks > 0 {
                n.last_useful_us = now_us;
            }
        }
    }

    fn on_upload(&mut self, _now_us: u64, upload: Upload, _out: &mut OverlayOut<'_>) {
        self.upload_16ths = (upload.capped && upload.stream_bps > 0)
            .then(|| upload.capacity_bps * 16 / upload.stream_bps);
    }

    fn on_tick(&mut self, now_us: u64, out: &mut OverlayOut<'_>) {
        // Connection attempts that never answered are abandoned.
        let stale: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, &since)| now_us > since + 5_000_000)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.pending.remove(&id);
            self.shunned.insert(id);
        }
        if !self.is_source && self.neighbours.len() >= self.target() {
            // Replace at most one useless neighbour per tick, and only when
            // someone else is useful (otherwise the stream itself is stalled).
            let anyone_useful = self
                .neighbours
                .values()
                .any(|n| now_us < n.last_useful_us + self.useless_after_us);
            let useless = self
                .neighbours
                .iter()
                .find(|(_, n)| {
                    now_us > n.since_us + self.useless_after_us
                        && now_us > n.last_useful_us + self.useless_after_us
                })
                .map(|(&id, _)| id);
            if let (true, Some(id)) = (anyone_useful, useless) {
                self.neighbours.remove(&id);
                self.pex_from.remove(&id);
                self.shunned.insert(id);
                out.disconnect(id);
            }
        }
        if now_us >= self.next_pex_us {
            self.next_pex_us = now_us + self.pex_every_us;
            let ids: Vec<PeerId> = self.neighbours.keys().copied().collect();
            if !ids.is_empty() && !self.known.is_empty() {
                let to = ids[self.rng.below(ids.len() as u64) as usize];
                let msg = self.pex_message();
                out.send_message(to, msg, false);
            }
        }
        self.fill(now_us, out);
    }
}

fn register(lib: &mut Registrar) {
    lib.overlay(
        ComponentSpec::new(
            "mesh",
            env!("CARGO_PKG_VERSION"),
            "random mesh: server sample + peer exchange, dead and useless neighbours replaced",
        )
        .params(PARAMS),
        Mesh::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-overlay-mesh",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;
    use p2ner_plugin_api::abi_stable::std_types::{RNone, RVec};

    fn peer(id: u64) -> PeerInfo {
        PeerInfo {
            id: PeerId(id),
            addr: format!("127.0.0.1:{}", 10_000 + id).into(),
        }
    }

    fn started(is_source: bool) -> (Mesh, RVec<OverlayAction>) {
        let mut mesh = Mesh::new(&Params::new().with("degree", "4")).unwrap();
        let mut actions = RVec::new();
        let ctx = OverlayContext {
            local: peer(0),
            is_source,
            seed: 7,
            source: RNone,
        };
        mesh.on_start(0, &ctx, &mut OverlayOut::new(&mut actions));
        (mesh, actions)
    }

    fn connects(actions: &RVec<OverlayAction>) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                OverlayAction::Connect { peer, .. } => Some(peer.id.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn connects_to_degree_random_peers_and_replaces_the_dead() {
        let (mut mesh, mut actions) = started(false);
        let peers: Vec<PeerInfo> = (1..=20).map(peer).collect();
        mesh.on_candidates(0, &peers, &mut OverlayOut::new(&mut actions));
        let first = connects(&actions);
        assert_eq!(first.len(), 4);
        for &id in &first {
            mesh.on_connected(1, &peer(id), &mut OverlayOut::new(&mut actions));
        }
        actions.clear();
        mesh.on_disconnected(2, PeerId(first[0]), &mut OverlayOut::new(&mut actions));
        let replacement = connects(&actions);
        assert_eq!(replacement.len(), 1);
        assert!(!first.contains(&replacement[0]));
    }

    #[test]
    fn under_a_cap_the_degree_follows_the_upload() {
        let target = |capacity_bps: u64, capped: bool| {
            let mut mesh = Mesh::new(&Params::new()).unwrap();
            let mut actions = RVec::new();
            let mut out = OverlayOut::new(&mut actions);
            mesh.learn(&(1..=50).map(peer).collect::<Vec<_>>());
            let upload = Upload {
                capacity_bps,
                capped,
                stream_bps: 1_000_000,
                ..Default::default()
            };
            mesh.on_upload(0, upload, &mut out);
            mesh.target()
        };
        let plain = target(0, false);
        assert_eq!(target(1_000_000, true), plain);
        // A peer with little upload still needs as many holders to fetch
        // from as any other: below a stream copy it keeps the base degree.
        assert_eq!(target(500_000, true), plain);
        assert_eq!(target(100_000, true), plain);
        assert!(target(1_600_000, true) > plain);
        assert_eq!(target(2_900_000, true), 2 * plain);
        assert_eq!(
            target(4_000_000, true),
            plain,
            "ample upload: no more than needed"
        );
    }

    #[test]
    fn same_seed_same_choices() {
        let run = || {
            let (mut mesh, mut actions) = started(false);
            mesh.on_candidates(
                0,
                &(1..=50).map(peer).collect::<Vec<_>>(),
                &mut OverlayOut::new(&mut actions),
            );
            connects(&actions)
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn the_source_never_picks_and_pex_round_trips() {
        let (mut source, mut actions) = started(true);
        source.on_candidates(
            0,
            &(1..=5).map(peer).collect::<Vec<_>>(),
            &mut OverlayOut::new(&mut actions),
        );
        assert!(connects(&actions).is_empty());
        let msg = source.pex_message();
        let decoded = decode_pex(&msg).unwrap();
        assert_eq!(decoded.len(), 5);
        assert!(decoded.contains(&peer(3)));
        for cut in 0..msg.len() {
            let _ = decode_pex(&msg[..cut]);
        }
        assert!(decode_pex(&[PEX, 3, 1, 2]).is_none());
    }

    #[test]
    fn a_useless_neighbour_is_replaced_when_others_are_useful() {
        let (mut mesh, mut actions) = started(false);
        mesh.on_candidates(
            0,
            &(1..=10).map(peer).collect::<Vec<_>>(),
            &mut OverlayOut::new(&mut actions),
        );
        let first = connects(&actions);
        for &id in &first {
            mesh.on_connected(0, &peer(id), &mut OverlayOut::new(&mut actions));
        }
        let report = NeighbourReport {
            useful_chunks: 5,
            ..Default::default()
        };
        for &id in &first[1..] {
            mesh.on_report(
                11_000_000,
                PeerId(id),
                report,
                &mut OverlayOut::new(&mut actions),
            );
        }
        actions.clear();
        mesh.on_tick(11_000_000, &mut OverlayOut::new(&mut actions));
        assert!(actions.contains(&OverlayAction::Disconnect {
            peer: PeerId(first[0])
        }));
        assert_eq!(connects(&actions).len(), 1);
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use p2ner_plugin_api::abi_stable::std_types::{RNone, RVec};

    fn at(id: u64, host: &str) -> PeerInfo {
        PeerInfo {
            id: PeerId(id),
            addr: format!("{host}:{}", 10_000 + id).into(),
        }
    }

    fn started(is_source: bool, params: Params) -> (Mesh, RVec<OverlayAction>) {
        let mut mesh = Mesh::new(&params).unwrap();
        let mut actions = RVec::new();
        let ctx = OverlayContext {
            local: at(0, "127.0.0.1"),
            is_source,
            seed: 3,
            source: RNone,
        };
        mesh.on_start(0, &ctx, &mut OverlayOut::new(&mut actions));
        (mesh, actions)
    }

    fn pex(ids: std::ops::Range<u64>) -> Vec<u8> {
        let mut msg = vec![PEX, ids.clone().count().min(255) as u8];
        for id in ids.take(255) {
            let addr = format!("10.0.0.1:{id}");
            msg.extend_from_slice(&id.to_le_bytes());
            msg.push(addr.len() as u8);
            msg.extend_from_slice(addr.as_bytes());
        }
        msg
    }

    #[test]
    fn a_pex_flood_is_bounded_in_book_and_work() {
        let (mut mesh, mut actions) = started(false, Params::new().with("max_known", "64"));
        let honest: Vec<PeerInfo> = (1..=20).map(|i| at(i, "127.0.0.1")).collect();
        mesh.on_candidates(0, &honest, &mut OverlayOut::new(&mut actions));
        let attacker = at(99, "127.0.0.2");
        mesh.on_connected(0, &attacker, &mut OverlayOut::new(&mut actions));
        // 10,000 exchanges of 255 claimed peers each, 1 ms apart.
        for i in 0..10_000u64 {
            let msg = pex(1000 + i * 255..1000 + (i + 1) * 255);
            mesh.on_message(
                i * 1000,
                attacker.id,
                &msg,
                &mut OverlayOut::new(&mut actions),
            );
            actions.clear();
        }
        assert!(mesh.known.len() <= 64, "{}", mesh.known.len());
        // Proven peers (the server's) stay; at most one exchange per 250 ms.
        assert!(honest.iter().all(|p| mesh.known.contains_key(&p.id)));
        assert!(mesh.pex_dropped >= 10_000 - 41, "{}", mesh.pex_dropped);
        // Non-neighbours are not heard at all.
        let before = mesh.pex_dropped;
        mesh.on_message(
            20_000_000,
            PeerId(5),
            &pex(1..9),
            &mut OverlayOut::new(&mut actions),
        );
        assert_eq!(mesh.pex_dropped, before + 1);
        assert_eq!(decode_pex(&pex(0..255)).unwrap().len(), PEX_SAMPLE);
    }

    #[test]
    fn fake_neighbours_from_one_host_do_not_take_every_slot() {
        let (mut mesh, mut actions) = started(true, Params::new().with("max_degree", "24"));
        for i in 1..=30 {
            mesh.on_connected(
                i,
                &at(100 + i, "127.0.0.2"),
                &mut OverlayOut::new(&mut actions),
            );
        }
        assert_eq!(mesh.neighbours.len(), 24);
        actions.clear();
        // Real subscribers from another host get in, each evicting a fake.
        for i in 1..=6 {
            let real = at(i, "127.0.0.1");
            mesh.on_connected(100, &real, &mut OverlayOut::new(&mut actions));
            assert!(mesh.neighbours.contains_key(&real.id));
        }
        assert_eq!(mesh.neighbours.len(), 24);
        assert_eq!(mesh.slots_reclaimed, 6);
        // More fakes are refused, never evicting the real ones.
        for i in 31..=60 {
            mesh.on_connected(
                200,
                &at(100 + i, "127.0.0.2"),
                &mut OverlayOut::new(&mut actions),
            );
        }
        assert!((1..=6).all(|i| mesh.neighbours.contains_key(&PeerId(i))));
    }
}
