//! Scheduler `pull`: buffer maps and requests.
//!
//! Every peer tells its neighbours which chunks it holds (a `HAVE` for each
//! new chunk, batched per tick, and a full map now and then in case one was
//! lost). A peer requests what it misses from the neighbours that hold it:
//! chunks close to their play-out deadline first, then the rarest ones in its
//! window, each from the holder with the fewest requests outstanding. A
//! request not served in time is re-issued to another holder. Requests are
//! served only as fast as the data channel can take them, so nothing queues
//! up behind a slow link.
//!
//! The publisher is treated apart: if it announced every chunk at once, every
//! subscriber would ask it first (it is the only holder) and its upload would
//! become the swarm's bottleneck. So it pushes each new chunk to a few
//! neighbours in turn and announces it to everyone only after a delay, by
//! which time the pushed copies have spread and are requested from peers.
//!
//! Sans-IO and deterministic for a seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::{seqmap, Capacity, Playout};

const HAVE: u8 = 1;
const MAP: u8 = 2;
const REQUEST: u8 = 3;
/// Seqs per HAVE or REQUEST message: keeps one message inside one datagram.
const MAX_SEQS: usize = 120;

pub struct Pull {
    max_requests: usize,
    request_timeout_us: u64,
    urgent_us: u64,
    lookback: u64,
    map_every_us: u64,
    source_push: usize,
    source_delay_us: u64,
    /// The publisher's chunks not announced yet, with when they were made.
    held: VecDeque<(u64, u64)>,
    push_turn: usize,
    rng: Rng,
    ctx: Option<SchedContext>,
    have: BTreeSet<u64>,
    announce: Vec<u64>,
    neighbours: BTreeMap<PeerId, Neighbour>,
    /// My requests in flight: seq -> (to whom, when).
    requested: BTreeMap<u64, (PeerId, u64)>,
    playout: Option<Playout>,
    newest_known: Option<u64>,
}

struct Neighbour {
    link: Link,
    have: BTreeSet<u64>,
    outstanding: usize,
    /// Their requests to me, waiting for capacity, with when they came.
    queue: VecDeque<(u64, u64)>,
    /// Chunks the publisher pushes to this neighbour unasked.
    pushes: VecDeque<u64>,
    /// Bytes the data channel takes now; `None` until the engine says.
    budget: Option<u64>,
    next_map_us: u64,
}

impl Pull {
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let pull = Pull {
            max_requests: params.parse_or("max_requests", 8)?,
            request_timeout_us: params.parse_or::<u64>("request_timeout_ms", 500)? * 1000,
            urgent_us: params.parse_or::<u64>("urgent_ms", 1000)? * 1000,
            lookback: params.parse_or("lookback_chunks", 30)?,
            map_every_us: params.parse_or::<u64>("map_ms", 1000)? * 1000,
            source_push: params.parse_or("source_push", 2)?,
            source_delay_us: params.parse_or::<u64>("source_announce_ms", 300)? * 1000,
            held: VecDeque::new(),
            push_turn: 0,
            rng: Rng::new(0),
            ctx: None,
            have: BTreeSet::new(),
            announce: Vec::new(),
            neighbours: BTreeMap::new(),
            requested: BTreeMap::new(),
            playout: None,
            newest_known: None,
        };
        if pull.max_requests == 0 || pull.request_timeout_us == 0 {
            return Err(PluginError::new(
                "max_requests and request_timeout_ms must be positive",
            ));
        }
        Ok(pull)
    }

    fn chunk_bytes(&self) -> u64 {
        self.ctx.as_ref().map_or(1, |c| c.chunk_bytes.max(1) as u64)
    }

    fn is_source(&self) -> bool {
        self.ctx.as_ref().is_some_and(|c| c.is_source)
    }

    /// The oldest chunk still worth having.
    fn window_start(&self) -> u64 {
        match (self.playout, self.newest_known) {
            (Some(p), _) => p.next_seq,
            (None, Some(newest)) => newest.saturating_sub(self.lookback),
            (None, None) => 0,
        }
    }

    fn prune(&mut self) {
        let keep_from = match self.playout {
            Some(p) => p.oldest_seq,
            None => return,
        };
        self.have = self.have.split_off(&keep_from);
        for n in self.neighbours.values_mut() {
            n.have = n.have.split_off(&keep_from);
        }
        // Requests for chunks that are past playback are given up, and no
        // longer count against the neighbour they were sent to.
        let start = self.window_start();
        let stale = self.requested.split_off(&start);
        for (peer, _) in std::mem::replace(&mut self.requested, stale).into_values() {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.outstanding = n.outstanding.saturating_sub(1);
            }
        }
    }

    fn map_message(&self) -> Vec<u8> {
        let base = self.have.first().copied().unwrap_or(0);
        let last = match self.held.front() {
            Some(&(first_held, _)) => first_held.saturating_sub(1),
            None => self.have.last().copied().unwrap_or(0),
        };
        let bits = ((last - base + 1) as usize).min(MAX_SEQS * 64);
        let mut msg = vec![MAP];
        seqmap::write_map(&mut msg, &self.have, base, bits);
        msg
    }

    fn request_missing(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        let Some(newest) = self.newest_known else {
            return;
        };
        let start = self.window_start();
        // Requests that timed out are forgotten, so they are issued again,
        // to whichever holder is least busy now.
        let expired: Vec<u64> = self
            .requested
            .iter()
            .filter(|(_, &(_, at))| now_us > at + self.request_timeout_us)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in expired {
            if let Some((peer, _)) = self.requested.remove(&seq) {
                if let Some(n) = self.neighbours.get_mut(&peer) {
                    n.outstanding = n.outstanding.saturating_sub(1);
                }
            }
        }
        let missing: Vec<u64> = (start..=newest)
            .filter(|s| !self.have.contains(s) && !self.requested.contains_key(s))
            .collect();
        if missing.is_empty() {
            return;
        }
        let chunk_us = self.ctx.as_ref().map_or(100_000, |c| c.chunk_us as u64);
        let urgent_until = self.playout.map(|p| p.next_deadline_us + self.urgent_us);
        // (urgent first, then rarest, then a random tie-break)
        let mut order: Vec<(bool, usize, u64, u64)> = missing
            .iter()
            .filter_map(|&seq| {
                let count = holders(&self.neighbours, seq).count();
                if count == 0 {
                    return None;
                }
                let urgent = match (urgent_until, self.playout) {
                    (Some(until), Some(p)) => {
                        p.next_deadline_us + (seq.saturating_sub(p.next_seq)) * chunk_us <= until
                    }
                    _ => false,
                };
                Some((
                    !urgent,
                    if urgent { seq as usize } else { count },
                    self.rng.next_u64(),
                    seq,
                ))
            })
            .collect();
        order.sort_unstable();
        let mut batches: BTreeMap<PeerId, Vec<u64>> = BTreeMap::new();
        for (_, _, _, seq) in order {
            let best = holders(&self.neighbours, seq)
                .filter(|id| self.neighbours[id].outstanding < self.max_requests)
                .min_by_key(|id| (self.neighbours[id].outstanding, self.rng.next_u64()));
            if let Some(peer) = best {
                self.neighbours.get_mut(&peer).expect("holder").outstanding += 1;
                self.requested.insert(seq, (peer, now_us));
                batches.entry(peer).or_default().push(seq);
            }
        }
        for (peer, seqs) in batches {
            for part in seqs.chunks(MAX_SEQS) {
                out.send_message(peer, seqs_message(REQUEST, part), false);
            }
        }
    }

    fn serve(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        let chunk_bytes = self.chunk_bytes();
        for (&peer, n) in self.neighbours.iter_mut() {
            // A request older than the requester's timeout has been issued
            // again elsewhere: serving it now would only duplicate.
            while n
                .queue
                .front()
                .is_some_and(|&(_, at)| now_us > at + self.request_timeout_us)
            {
                n.queue.pop_front();
            }
            while let Some(seq) = n.pushes.front().copied().or(n.queue.front().map(|r| r.0)) {
                // The data channel takes a chunk whenever any room is left
                // (its window would otherwise never open beyond one chunk).
                if let Some(budget) = n.budget {
                    if budget == 0 {
                        break;
                    }
                    n.budget = Some(budget.saturating_sub(chunk_bytes));
                }
                if n.pushes.pop_front().is_none() {
                    n.queue.pop_front();
                }
                if self.have.contains(&seq) {
                    out.send_chunk(peer, seq);
                }
            }
        }
    }
}

/// The neighbours media may come from that hold `seq`.
fn holders(
    neighbours: &BTreeMap<PeerId, Neighbour>,
    seq: u64,
) -> impl Iterator<Item = PeerId> + '_ {
    neighbours
        .iter()
        .filter(move |(_, n)| n.link.upstream && n.have.contains(&seq))
        .map(|(&id, _)| id)
}

fn seqs_message(kind: u8, seqs: &[u64]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(3 + seqs.len() * 8);
    msg.push(kind);
    msg.extend_from_slice(&(seqs.len() as u16).to_le_bytes());
    for s in seqs {
        msg.extend_from_slice(&s.to_le_bytes());
    }
    msg
}

/// A decoded message of this scheduler's protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Have(Vec<u64>),
    Map(Vec<u64>),
    Request(Vec<u64>),
}

/// Decodes a message; anything malformed (or oversized) yields `None`.
pub fn decode(msg: &[u8]) -> Option<Message> {
    let (&kind, rest) = msg.split_first()?;
    match kind {
        HAVE | REQUEST => {
            let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            if n > MAX_SEQS || rest.len() != 2 + n * 8 {
                return None;
            }
            let seqs = rest[2..]
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            Some(if kind == HAVE {
                Message::Have(seqs)
            } else {
                Message::Request(seqs)
            })
        }
        MAP => seqmap::read_map(rest, MAX_SEQS * 64).map(Message::Map),
        _ => None,
    }
}

impl Scheduler for Pull {
    fn on_start(&mut self, _now_us: u64, ctx: &SchedContext, _out: &mut SchedOut<'_>) {
        self.rng = Rng::new(ctx.seed);
        self.ctx = Some(ctx.clone());
    }

    fn on_neighbour_up(&mut self, now_us: u64, peer: PeerId, link: Link, out: &mut SchedOut<'_>) {
        self.neighbours.insert(
            peer,
            Neighbour {
                link,
                have: BTreeSet::new(),
                outstanding: 0,
                queue: VecDeque::new(),
                pushes: VecDeque::new(),
                budget: None,
                next_map_us: now_us + self.map_every_us,
            },
        );
        if link.downstream && !self.have.is_empty() {
            out.send_message(peer, self.map_message(), false);
        }
    }

    fn on_neighbour_down(&mut self, _now_us: u64, peer: PeerId, _out: &mut SchedOut<'_>) {
        self.neighbours.remove(&peer);
        // What was asked of it is asked again elsewhere at the next tick.
        self.requested.retain(|_, (p, _)| *p != peer);
    }

    fn on_chunk(&mut self, now_us: u64, seq: u64, from: Option<PeerId>, out: &mut SchedOut<'_>) {
        let fresh = self.have.insert(seq);
        if from.is_none() && self.is_source() && self.source_delay_us > 0 {
            let downstream: Vec<PeerId> = self
                .neighbours
                .iter()
                .filter(|(_, n)| n.link.downstream)
                .map(|(&id, _)| id)
                .collect();
            for k in 0..self.source_push.min(downstream.len()) {
                let peer = downstream[(self.push_turn + k) % downstream.len()];
                self.neighbours
                    .get_mut(&peer)
                    .expect("listed")
                    .pushes
                    .push_back(seq);
            }
            self.push_turn = self.push_turn.wrapping_add(self.source_push);
            if !downstream.is_empty() {
                self.held.push_back((seq, now_us));
                self.serve(now_us, out);
            } else if fresh {
                self.announce.push(seq);
            }
        } else if fresh {
            self.announce.push(seq);
        }
        self.newest_known = Some(self.newest_known.map_or(seq, |n| n.max(seq)));
        if let Some((peer, _)) = self.requested.remove(&seq) {
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.outstanding = n.outstanding.saturating_sub(1);
            }
        }
    }

    fn on_message(&mut self, now_us: u64, peer: PeerId, payload: &[u8], out: &mut SchedOut<'_>) {
        let Some(message) = decode(payload) else {
            return;
        };
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        match message {
            Message::Have(seqs) | Message::Map(seqs) => {
                if let Some(&max) = seqs.iter().max() {
                    self.newest_known = Some(self.newest_known.map_or(max, |n| n.max(max)));
                }
                n.have.extend(seqs);
            }
            Message::Request(seqs) => {
                if n.link.downstream {
                    n.queue.extend(seqs.into_iter().map(|s| (s, now_us)));
                    self.serve(now_us, out);
                }
            }
        }
    }

    fn on_capacity(
        &mut self,
        now_us: u64,
        peer: PeerId,
        capacity: Capacity,
        out: &mut SchedOut<'_>,
    ) {
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.budget = Some(capacity.can_send_bytes);
        }
        self.serve(now_us, out);
    }

    fn on_playout(&mut self, _now_us: u64, playout: Playout, _out: &mut SchedOut<'_>) {
        self.playout = Some(playout);
        self.newest_known = Some(
            self.newest_known
                .map_or(playout.newest_seq, |n| n.max(playout.newest_seq)),
        );
    }

    fn on_tick(&mut self, now_us: u64, out: &mut SchedOut<'_>) {
        while let Some(&(seq, at)) = self.held.front() {
            if now_us < at + self.source_delay_us {
                break;
            }
            self.held.pop_front();
            self.announce.push(seq);
        }
        self.prune();
        let announce = std::mem::take(&mut self.announce);
        let full_map = self.map_message();
        for (&peer, n) in self.neighbours.iter_mut() {
            if !n.link.downstream {
                continue;
            }
            if now_us >= n.next_map_us {
                n.next_map_us = now_us + self.map_every_us;
                out.send_message(peer, full_map.clone(), false);
            } else {
                for part in announce.chunks(MAX_SEQS) {
                    out.send_message(peer, seqs_message(HAVE, part), false);
                }
            }
        }
        if !self.is_source() {
            self.request_missing(now_us, out);
        }
        self.serve(now_us, out);
    }
}

fn register(lib: &mut Registrar) {
    lib.scheduler(
        ComponentSpec::new(
            "pull",
            env!("CARGO_PKG_VERSION"),
            "buffer maps and requests: urgent chunks first, then rarest first, re-requested on timeout",
        )
        .param("max_requests", "8", "requests outstanding to one neighbour at most")
        .param("request_timeout_ms", "500", "re-request a chunk not received within this time")
        .param("urgent_ms", "1000", "chunks due within this time are requested before rarer ones")
        .param("lookback_chunks", "30", "before playback starts, how far behind the newest chunk to begin")
        .param("map_ms", "1000", "interval between full buffer maps")
        .param("source_push", "2", "publisher: neighbours each new chunk is pushed to unasked")
        .param("source_announce_ms", "300", "publisher: announce a chunk to all only after this long (0: at once, and no pushes)"),
        Pull::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-scheduler-pull",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;
    use p2ner_plugin_api::abi_stable::std_types::RVec;
    use p2ner_plugin_api::SchedAction;

    fn ctx(is_source: bool) -> SchedContext {
        SchedContext {
            local: PeerId(0),
            is_source,
            seed: 3,
            chunk_us: 100_000,
            window_chunks: 100,
            chunk_bytes: 1000,
        }
    }

    fn requests(actions: &RVec<SchedAction>) -> Vec<(u64, Vec<u64>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                SchedAction::SendMessage { peer, payload, .. } => match decode(payload) {
                    Some(Message::Request(seqs)) => Some((peer.0, seqs)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn messages_round_trip_and_malformed_ones_are_ignored() {
        let msg = seqs_message(HAVE, &[1, 5, 9]);
        assert_eq!(decode(&msg), Some(Message::Have(vec![1, 5, 9])));
        for cut in 0..msg.len() {
            assert!(decode(&msg[..cut]).is_none());
        }
        let mut pull = Pull::new(&Params::new()).unwrap();
        for s in [10, 11, 13, 20] {
            pull.have.insert(s);
        }
        assert_eq!(
            decode(&pull.map_message()),
            Some(Message::Map(vec![10, 11, 13, 20]))
        );
        assert!(decode(&[MAP, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_none());
        assert!(decode(&[9]).is_none());
    }

    #[test]
    fn requests_urgent_then_rarest_from_the_least_busy_holder_and_retries() {
        let mut pull = Pull::new(&Params::new().with("max_requests", "2")).unwrap();
        let mut actions = RVec::new();
        let mut out = SchedOut::new(&mut actions);
        pull.on_start(0, &ctx(false), &mut out);
        pull.on_neighbour_up(0, PeerId(1), Link::BOTH, &mut out);
        pull.on_neighbour_up(0, PeerId(2), Link::BOTH, &mut out);
        // Peer 1 has 0..=3, peer 2 has 2..=5: 0,1 only at 1; 4,5 only at 2.
        pull.on_message(0, PeerId(1), &seqs_message(HAVE, &[0, 1, 2, 3]), &mut out);
        pull.on_message(0, PeerId(2), &seqs_message(HAVE, &[2, 3, 4, 5]), &mut out);
        pull.on_playout(
            0,
            Playout {
                next_seq: 0,
                next_deadline_us: 50_000,
                oldest_seq: 0,
                newest_seq: 5,
            },
            &mut out,
        );
        pull.on_tick(10_000, &mut out);
        let mut asked: Vec<(u64, Vec<u64>)> = requests(&actions);
        asked.sort();
        // Two requests per neighbour at most; the most urgent go first.
        assert_eq!(asked, vec![(1, vec![0, 1]), (2, vec![2, 3])]);
        // Nothing answers: after the timeout they are asked again.
        actions.clear();
        let mut out = SchedOut::new(&mut actions);
        pull.on_tick(1_500_000, &mut out);
        assert_eq!(
            requests(&actions)
                .iter()
                .map(|(_, s)| s.len())
                .sum::<usize>(),
            4
        );
    }

    #[test]
    fn serves_requests_within_the_data_channel_budget() {
        // No unasked pushes from the publisher: requests alone here.
        let mut pull = Pull::new(&Params::new().with("source_announce_ms", "0")).unwrap();
        let mut actions = RVec::new();
        let mut out = SchedOut::new(&mut actions);
        pull.on_start(0, &ctx(true), &mut out);
        pull.on_neighbour_up(0, PeerId(1), Link::BOTH, &mut out);
        for seq in 0..5 {
            pull.on_chunk(0, seq, None, &mut out);
        }
        pull.on_capacity(
            0,
            PeerId(1),
            Capacity {
                can_send_bytes: 2500,
                rate_bps: 0,
                rtt_us: 0,
            },
            &mut out,
        );
        pull.on_message(
            0,
            PeerId(1),
            &seqs_message(REQUEST, &[0, 1, 2, 3, 9]),
            &mut out,
        );
        let sent = |actions: &RVec<SchedAction>| {
            actions
                .iter()
                .filter(|a| matches!(a, SchedAction::SendChunk { .. }))
                .count()
        };
        assert_eq!(
            sent(&actions),
            3,
            "2500 bytes take three 1000-byte chunks: the last may overdraw, as the data channel allows"
        );
        let mut out = SchedOut::new(&mut actions);
        pull.on_capacity(
            0,
            PeerId(1),
            Capacity {
                can_send_bytes: 10_000,
                rate_bps: 0,
                rtt_us: 0,
            },
            &mut out,
        );
        // 3 goes out; 9 was never here and is dropped.
        assert_eq!(sent(&actions), 4);
    }
}
