use super::*;
use p2ner_plugin_api::abi_stable::std_types::RVec;
use p2ner_plugin_api::SchedAction;

const DOWN: Link = Link {
    upstream: false,
    downstream: true,
};
const UP: Link = Link {
    upstream: true,
    downstream: false,
};

fn ctx(is_source: bool, seed: u64) -> SchedContext {
    SchedContext {
        local: PeerId(0),
        is_source,
        seed,
        chunk_us: 100_000,
        window_chunks: 300,
        chunk_bytes: 1000,
    }
}

fn cap(bytes: u64) -> Capacity {
    Capacity {
        can_send_bytes: bytes,
        rate_bps: 0,
        rtt_us: 0,
    }
}

fn started(params: Params, is_source: bool, seed: u64) -> Push {
    let mut push = Push::new(&params).unwrap();
    let mut actions = RVec::new();
    push.on_start(0, &ctx(is_source, seed), &mut SchedOut::new(&mut actions));
    push
}

fn sent(actions: &RVec<SchedAction>) -> Vec<(u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedAction::SendChunk { peer, seq } => Some((peer.0, *seq)),
            _ => None,
        })
        .collect()
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

fn have(seqs: &[u64]) -> Vec<u8> {
    wire::seqs_message(true, None, seqs)
}

fn subscribe(mask: u16) -> Vec<u8> {
    Message::Subscribe { mask }.encode()
}

/// A source holding `0..chunks`, with neighbours `1..=n` on `link`.
fn source_with(params: Params, chunks: u64, n: u64, link: Link, seed: u64) -> Push {
    let mut push = started(params, true, seed);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    for p in 1..=n {
        push.on_neighbour_up(0, PeerId(p), link, &mut out);
        push.on_message(0, PeerId(p), &subscribe(0xFF), &mut out);
    }
    for seq in 0..chunks {
        push.on_chunk(0, seq, None, &mut out);
    }
    assert!(sent(&actions).is_empty(), "no budget reported yet: no push");
    push
}

#[test]
fn messages_round_trip_stay_small_and_malformed_ones_are_ignored() {
    let msg = wire::seqs_message(true, Some(7), &[1, 5, 9]);
    assert_eq!(
        decode(&msg),
        Some(Message::Have {
            playout: Some(7),
            seqs: vec![1, 5, 9]
        })
    );
    for cut in 0..msg.len() {
        assert!(decode(&msg[..cut]).is_none());
    }
    let full = wire::seqs_message(true, Some(0), &[0; MAX_SEQS]);
    assert!(full.len() < 1000, "{}", full.len());
    assert_eq!(
        decode(&wire::seqs_message(false, None, &[3])),
        Some(Message::Request(vec![3]))
    );
    let mut push = Push::new(&Params::new()).unwrap();
    for s in [10, 11, 13, 20] {
        push.have.insert(s);
    }
    assert_eq!(
        decode(&push.map_message()),
        Some(Message::Map {
            playout: None,
            seqs: vec![10, 11, 13, 20]
        })
    );
    // A huge map keeps the newest chunks and stays under 1000 bytes.
    push.have = (0..20_000).collect();
    let map = push.map_message();
    assert!(map.len() < 1000, "{}", map.len());
    match decode(&map) {
        Some(Message::Map { seqs, .. }) => {
            assert_eq!(seqs.len(), MAX_BITS);
            assert_eq!(seqs.last(), Some(&19_999));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_none()
    );
    assert!(decode(&[9]).is_none());
    assert!(Push::new(&Params::new().with("policy", "oldest")).is_err());
}

#[test]
fn the_only_sending_opportunity_goes_to_the_most_deprived_neighbour() {
    // The shared uplink takes one chunk this tick (and carries plenty of
    // subscriptions).
    let mut push = started(Params::new(), true, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    let upload = Upload {
        capacity_bps: 10_000_000,
        capped: true,
        budget_bytes: 1000,
        stream_bps: 80_000,
        ..Upload::default()
    };
    push.on_upload(0, upload, &mut out);
    for p in 1..=3 {
        push.on_neighbour_up(0, PeerId(p), DOWN, &mut out);
        push.on_message(0, PeerId(p), &subscribe(0xFF), &mut out);
    }
    for seq in 0..10 {
        push.on_chunk(0, seq, None, &mut out);
    }
    actions.clear();
    let mut out = SchedOut::new(&mut actions);
    push.on_message(0, PeerId(1), &have(&[0, 1, 2, 3, 4, 5, 6, 7]), &mut out); // lacks 2
    push.on_message(0, PeerId(2), &have(&[0, 1, 2]), &mut out); // lacks 7
    push.on_message(0, PeerId(3), &have(&[0, 1, 2, 3, 4]), &mut out); // lacks 5
    for p in 1..=3 {
        push.on_capacity(0, PeerId(p), cap(100_000), &mut out);
    }
    push.on_tick(10_000, &mut out);
    assert_eq!(sent(&actions), vec![(2, 9)]);
}

#[test]
fn a_tight_budget_is_shared_most_deprived_first() {
    let mut push = source_with(Params::new(), 10, 3, DOWN, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    push.on_message(0, PeerId(1), &have(&[0, 1, 2, 3, 4, 5, 6, 7]), &mut out);
    push.on_message(0, PeerId(2), &have(&[0, 1, 2]), &mut out);
    push.on_message(0, PeerId(3), &have(&[0, 1, 2, 3, 4]), &mut out);
    for p in 1..=3 {
        push.on_capacity(0, PeerId(p), cap(1000), &mut out);
    }
    push.on_tick(10_000, &mut out);
    // One chunk per link (1000 bytes take one 1000-byte chunk), the most
    // deprived first, each the newest it lacks.
    assert_eq!(sent(&actions), vec![(2, 9), (3, 9), (1, 9)]);
}

#[test]
fn latest_useful_picks_the_newest_chunk_the_neighbour_lacks() {
    let mut push = source_with(Params::new(), 10, 1, DOWN, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    push.on_message(0, PeerId(1), &have(&[0, 1, 2, 3, 4, 5, 7, 9]), &mut out);
    push.on_capacity(0, PeerId(1), cap(2000), &mut out);
    push.on_tick(10_000, &mut out);
    assert_eq!(sent(&actions), vec![(1, 8), (1, 6)]);
}

#[test]
fn random_useful_is_deterministic_for_a_seed_and_only_sends_useful_chunks() {
    let run = |seed: u64| {
        let params = Params::new()
            .with("policy", "random-useful")
            .with("lookback_chunks", "10");
        let mut push = source_with(params, 40, 2, DOWN, seed);
        let mut actions = RVec::new();
        let mut out = SchedOut::new(&mut actions);
        push.on_message(0, PeerId(1), &have(&(0..20).collect::<Vec<_>>()), &mut out);
        for p in 1..=2 {
            push.on_capacity(0, PeerId(p), cap(8000), &mut out);
        }
        push.on_tick(10_000, &mut out);
        sent(&actions)
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(a, run(6));
    // 8000 bytes take seven chunks of 1000 (each counted with the engine's
    // header and signature), the last one overdrawing.
    assert_eq!(a.len(), 14);
    // Lookback: a neighbour not playing yet gets chunks from newest - 10 on.
    assert!(a.iter().all(|&(_, s)| s >= 29), "{a:?}");
    let mut seen = std::collections::BTreeSet::new();
    assert!(a.iter().all(|x| seen.insert(*x)), "a duplicate push: {a:?}");
}

#[test]
fn no_push_beyond_capacity_upstream_or_behind_playout() {
    let mut push = source_with(Params::new(), 30, 3, DOWN, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    // Peer 1: 2000 bytes = two chunks. Peer 2: never reports capacity.
    push.on_capacity(0, PeerId(1), cap(2000), &mut out);
    // Peer 3 plays 25 already: only 25.. are useful to it.
    let msg = wire::seqs_message(true, Some(25), &[]);
    push.on_message(0, PeerId(3), &msg, &mut out);
    push.on_capacity(0, PeerId(3), cap(100_000), &mut out);
    push.on_tick(10_000, &mut out);
    let s = sent(&actions);
    assert_eq!(s.iter().filter(|x| x.0 == 1).count(), 2);
    assert!(s.iter().all(|x| x.0 != 2));
    let to3: Vec<u64> = s.iter().filter(|x| x.0 == 3).map(|x| x.1).collect();
    // 25 is due at 3 now: it cannot arrive in time, so it is not sent.
    assert_eq!(to3, vec![29, 28, 27, 26]);
    // Nothing more while the budgets are spent; everything is marked held.
    actions.clear();
    let mut out = SchedOut::new(&mut actions);
    push.on_tick(20_000, &mut out);
    assert!(sent(&actions).is_empty());
    let mut out = SchedOut::new(&mut actions);
    push.on_capacity(0, PeerId(3), cap(100_000), &mut out);
    push.on_tick(30_000, &mut out);
    assert!(sent(&actions).is_empty(), "no duplicate pushes");
    // An upstream-only link never gets a push.
    let mut recv = started(Params::new(), false, 1);
    let mut out = SchedOut::new(&mut actions);
    recv.on_neighbour_up(0, PeerId(9), UP, &mut out);
    recv.on_chunk(0, 1, None, &mut out);
    recv.on_capacity(0, PeerId(9), cap(100_000), &mut out);
    recv.on_tick(1, &mut out);
    assert!(sent(&actions).is_empty());
}

#[test]
fn a_lost_push_is_pushed_again_after_the_grace_period() {
    let mut push = source_with(Params::new(), 3, 1, DOWN, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    push.on_capacity(0, PeerId(1), cap(100_000), &mut out);
    push.on_tick(0, &mut out);
    assert_eq!(sent(&actions).len(), 3);
    // Its map says it only got 0 and 2. Within the grace: still in flight.
    let mut m = Push::new(&Params::new()).unwrap();
    m.have = [0, 2].into_iter().collect();
    let map = m.map_message();
    actions.clear();
    let mut out = SchedOut::new(&mut actions);
    push.on_message(500_000, PeerId(1), &map, &mut out);
    push.on_capacity(500_000, PeerId(1), cap(100_000), &mut out);
    push.on_tick(500_000, &mut out);
    assert!(sent(&actions).is_empty());
    let mut out = SchedOut::new(&mut actions);
    push.on_message(1_500_000, PeerId(1), &map, &mut out);
    push.on_capacity(1_500_000, PeerId(1), cap(100_000), &mut out);
    push.on_tick(1_500_000, &mut out);
    assert_eq!(sent(&actions), vec![(1, 1)]);
}

fn playout(next_seq: u64, next_deadline_us: u64, newest_seq: u64) -> Playout {
    Playout {
        next_seq,
        next_deadline_us,
        oldest_seq: 0,
        newest_seq,
    }
}

#[test]
fn a_hole_near_its_deadline_is_requested_from_a_holder_bounded_and_retried() {
    let mut recv = started(Params::new().with("max_repairs", "2"), false, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    recv.on_neighbour_up(0, PeerId(1), UP, &mut out);
    recv.on_neighbour_up(0, PeerId(2), UP, &mut out);
    recv.on_neighbour_up(0, PeerId(3), DOWN, &mut out);
    for seq in [10, 14, 15] {
        recv.on_chunk(0, seq, Some(PeerId(1)), &mut out);
    }
    recv.on_message(0, PeerId(1), &have(&[10, 11, 12, 13, 14, 15]), &mut out);
    recv.on_message(0, PeerId(2), &have(&[11, 12, 13]), &mut out);
    recv.on_message(0, PeerId(3), &have(&[11, 12, 13]), &mut out);
    // 10 is due in 1 s: nothing is urgent yet.
    recv.on_playout(0, playout(10, 1_000_000, 15), &mut out);
    recv.on_tick(0, &mut out);
    assert!(requests(&actions).is_empty());
    // At 1 s, 11..=13 are due within 300 ms and missing (10 is here).
    actions.clear();
    let mut out = SchedOut::new(&mut actions);
    recv.on_playout(1_000_000, playout(10, 1_000_000, 15), &mut out);
    recv.on_tick(1_000_000, &mut out);
    let asked = requests(&actions);
    // 11 and 12 (13 is over the bound of 2), one from each upstream holder
    // (the least busy first), never from the downstream-only peer 3.
    let mut peers: Vec<u64> = asked.iter().map(|r| r.0).collect();
    let mut seqs: Vec<u64> = asked.iter().flat_map(|r| r.1.clone()).collect();
    peers.sort();
    seqs.sort();
    assert_eq!((peers, seqs), (vec![1, 2], vec![11, 12]));
    // Unanswered: asked again after the timeout.
    actions.clear();
    let mut out = SchedOut::new(&mut actions);
    recv.on_tick(1_500_000, &mut out);
    assert_eq!(
        requests(&actions).iter().map(|r| r.1.len()).sum::<usize>(),
        2
    );
}

#[test]
fn repair_requests_are_served_with_what_the_subscriptions_leave() {
    // Peer 1 subscribes everything and lacks only 19; peer 2 subscribes
    // nothing and asks for 3 (and 99, never here).
    let mut push = source_with(Params::new(), 20, 1, DOWN, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    push.on_neighbour_up(0, PeerId(2), DOWN, &mut out);
    push.on_message(0, PeerId(1), &have(&(0..19).collect::<Vec<_>>()), &mut out);
    push.on_message(0, PeerId(2), &have(&[0, 1, 2]), &mut out);
    push.on_message(
        0,
        PeerId(2),
        &wire::seqs_message(false, None, &[3, 99]),
        &mut out,
    );
    assert!(sent(&actions).is_empty(), "no budget yet");
    // The shared uplink takes one chunk: the subscription's.
    let upload = |budget_bytes| Upload {
        capacity_bps: 10_000_000,
        capped: true,
        budget_bytes,
        stream_bps: 80_000,
        ..Upload::default()
    };
    let mut out = SchedOut::new(&mut actions);
    push.on_upload(0, upload(1000), &mut out);
    push.on_capacity(0, PeerId(1), cap(5000), &mut out);
    push.on_capacity(0, PeerId(2), cap(5000), &mut out);
    push.on_tick(0, &mut out);
    assert_eq!(sent(&actions), vec![(1, 19)]);
    // Next tick, with room: the repair.
    actions.clear();
    let mut out = SchedOut::new(&mut actions);
    push.on_upload(10_000, upload(5000), &mut out);
    push.on_tick(10_000, &mut out);
    assert_eq!(sent(&actions), vec![(2, 3)]);
}

/// A tiny swarm: push schedulers wired by a static graph, a fake clock,
/// one-tick latency, lossy chunk delivery, per-link budgets and a play-out
/// clock per peer, as the engine provides them.
struct Swarm {
    nodes: Vec<Push>,
    links: Vec<BTreeMap<PeerId, Link>>,
    have: Vec<BTreeSet<u64>>,
    /// (first seq, play-out start) per peer.
    play: Vec<Option<(u64, u64)>>,
    next_play: Vec<u64>,
    played: u64,
    missed: u64,
    duplicates: u64,
    chunks_sent: u64,
    repairs_asked: u64,
    lag_sum_us: u64,
}

const TICK: u64 = 20_000;

/// (deliver at, to, from, chunk seq or scheduler message)
type Transfer = (u64, usize, usize, Result<u64, Vec<u8>>);
const CHUNK_US: u64 = 100_000;

impl Swarm {
    fn new(params: &Params, edges: &[(usize, usize, Link)], n: usize) -> Swarm {
        let mut nodes = Vec::new();
        let mut actions = RVec::new();
        for i in 0..n {
            let mut p = Push::new(params).unwrap();
            let mut c = ctx(i == 0, 1000 + i as u64);
            c.local = PeerId(i as u64);
            p.on_start(0, &c, &mut SchedOut::new(&mut actions));
            nodes.push(p);
        }
        let mut links = vec![BTreeMap::new(); n];
        for &(a, b, link) in edges {
            links[a].insert(PeerId(b as u64), link);
            links[b].insert(
                PeerId(a as u64),
                Link {
                    upstream: link.downstream,
                    downstream: link.upstream,
                },
            );
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            for (&peer, &link) in &links[i] {
                node.on_neighbour_up(0, peer, link, &mut SchedOut::new(&mut actions));
            }
        }
        Swarm {
            nodes,
            links,
            have: vec![BTreeSet::new(); n],
            play: vec![None; n],
            next_play: vec![0; n],
            played: 0,
            missed: 0,
            duplicates: 0,
            chunks_sent: 0,
            repairs_asked: 0,
            lag_sum_us: 0,
        }
    }

    /// Runs `secs` seconds; chunk pushes are lost with probability `loss`.
    fn run(&mut self, secs: u64, loss: f64, link_chunks_per_tick: u64) {
        let n = self.nodes.len();
        let mut rng = Rng::new(42);
        let mut wire: Vec<Transfer> = Vec::new();
        let mut now = 0;
        while now <= secs * 1_000_000 {
            let mut actions: Vec<RVec<SchedAction>> = vec![RVec::new(); n];
            // Each tick's link budgets first, as the engine gives them,
            // so that what a delivery forwards counts against this tick's.
            for (i, acts) in actions.iter_mut().enumerate() {
                let out = &mut SchedOut::new(acts);
                for (&peer, link) in &self.links[i] {
                    if link.downstream {
                        let bytes = link_chunks_per_tick * 1000;
                        self.nodes[i].on_capacity(now, peer, cap(bytes), out);
                    }
                }
            }
            // Deliveries due now.
            let (due, later): (Vec<_>, Vec<_>) = wire.into_iter().partition(|w| w.0 <= now);
            wire = later;
            for (_, to, from, what) in due {
                let out = &mut SchedOut::new(&mut actions[to]);
                match what {
                    Ok(seq) => {
                        let late = self.play[to].is_some() && seq < self.next_play[to];
                        if late || !self.have[to].insert(seq) {
                            self.duplicates += 1;
                            continue;
                        }
                        if self.play[to].is_none() {
                            self.play[to] = Some((seq, now + 1_000_000));
                            self.next_play[to] = seq;
                        }
                        self.nodes[to].on_chunk(now, seq, Some(PeerId(from as u64)), out);
                    }
                    Err(msg) => {
                        if decode(&msg).is_some_and(|m| matches!(m, Message::Request(_))) {
                            self.repairs_asked += 1;
                        }
                        self.nodes[to].on_message(now, PeerId(from as u64), &msg, out)
                    }
                }
            }
            for (i, acts) in actions.iter_mut().enumerate() {
                let out = &mut SchedOut::new(acts);
                if i == 0 && now.is_multiple_of(CHUNK_US) {
                    let seq = now / CHUNK_US;
                    self.have[0].insert(seq);
                    self.nodes[0].on_chunk(now, seq, None, out);
                }
                if let Some((first, start)) = self.play[i] {
                    let deadline = |s: u64| start + (s - first) * CHUNK_US;
                    while deadline(self.next_play[i]) <= now {
                        let s = self.next_play[i];
                        if self.have[i].contains(&s) {
                            self.played += 1;
                            self.lag_sum_us += now - s * CHUNK_US;
                        } else {
                            self.missed += 1;
                        }
                        self.next_play[i] += 1;
                    }
                    let next = self.next_play[i];
                    let newest = self.have[i].last().copied().unwrap_or(next);
                    let p = Playout {
                        next_seq: next,
                        next_deadline_us: deadline(next),
                        oldest_seq: next.saturating_sub(50),
                        newest_seq: newest,
                    };
                    self.nodes[i].on_playout(now, p, out);
                }
                self.nodes[i].on_tick(now, out);
            }
            for (from, acts) in actions.into_iter().enumerate() {
                let mut per_link: BTreeMap<PeerId, u64> = BTreeMap::new();
                for a in acts {
                    match a {
                        SchedAction::SendMessage { peer, payload, .. } => {
                            assert!(payload.len() < 1000);
                            wire.push((now + TICK, peer.0 as usize, from, Err(payload.into())));
                        }
                        SchedAction::SendChunk { peer, seq } => {
                            let link = self.links[from][&peer];
                            assert!(link.downstream, "{from} pushed to upstream {peer}");
                            assert!(self.have[from].contains(&seq), "{from} sent {seq} it lacks");
                            let used = per_link.entry(peer).or_default();
                            *used += 1;
                            assert!(
                                *used <= link_chunks_per_tick,
                                "{from} pushed beyond the budget to {peer}"
                            );
                            self.chunks_sent += 1;
                            if rng.unit() >= loss {
                                wire.push((now + TICK, peer.0 as usize, from, Ok(seq)));
                            }
                        }
                    }
                }
            }
            now += TICK;
        }
    }

    fn continuity(&self) -> f64 {
        self.played as f64 / (self.played + self.missed).max(1) as f64
    }
}

fn tree_edges(n: usize, fanout: usize) -> Vec<(usize, usize, Link)> {
    (1..n).map(|i| ((i - 1) / fanout, i, DOWN)).collect()
}

fn mesh_edges(n: usize, degree: usize, seed: u64) -> Vec<(usize, usize, Link)> {
    let mut rng = Rng::new(seed);
    let mut set = BTreeSet::new();
    for a in 0..n {
        while set.iter().filter(|&&(x, y)| x == a || y == a).count() < degree {
            let b = rng.below(n as u64) as usize;
            if b != a {
                set.insert((a.min(b), a.max(b)));
            }
        }
    }
    set.into_iter().map(|(a, b)| (a, b, Link::BOTH)).collect()
}

#[test]
fn twenty_peers_on_a_tree_play_on_time_despite_lost_pushes() {
    let mut swarm = Swarm::new(&Params::new(), &tree_edges(20, 4), 20);
    swarm.run(30, 0.05, 3);
    let c = swarm.continuity();
    let lag_ms = swarm.lag_sum_us / swarm.played.max(1) / 1000;
    eprintln!(
        "tree: continuity {c:.4} played {} missed {} dup {} sent {} repairs {} lag {lag_ms} ms",
        swarm.played, swarm.missed, swarm.duplicates, swarm.chunks_sent, swarm.repairs_asked
    );
    assert!(swarm.played > 19 * 250, "{}", swarm.played);
    assert!(c >= 0.99, "continuity {c}");
    assert!(swarm.repairs_asked > 0, "5% loss needs repairs");
    assert!(
        swarm.duplicates * 20 < swarm.chunks_sent,
        "{} duplicates of {}",
        swarm.duplicates,
        swarm.chunks_sent
    );
}

#[test]
fn twenty_peers_on_a_mesh_play_on_time_with_both_policies() {
    for policy in ["latest-useful", "random-useful"] {
        // Every peer uploads 3x the stream rate (10 chunks/s of 1000 bytes).
        let params = Params::new()
            .with("policy", policy)
            .with("upload_kbps", "240")
            .with("have_ms", "0");
        let mut swarm = Swarm::new(&params, &mesh_edges(20, 4, 9), 20);
        swarm.run(30, 0.02, 2);
        let c = swarm.continuity();
        eprintln!(
            "mesh {policy}: continuity {c:.4} played {} missed {} dup {} sent {} repairs {}",
            swarm.played, swarm.missed, swarm.duplicates, swarm.chunks_sent, swarm.repairs_asked
        );
        assert!(swarm.played > 19 * 250, "{}", swarm.played);
        assert!(c >= 0.98, "{policy}: continuity {c}");
        // Push over a mesh pays for its speed in duplicates: two neighbours
        // push the same chunk before either hears the other did (knowledge
        // lags a one-way delay). Bounded here by the upload cap.
        assert!(
            swarm.duplicates < 2 * swarm.played,
            "{policy}: {} duplicates for {} chunks played",
            swarm.duplicates,
            swarm.played
        );
    }
}

#[test]
fn state_stays_bounded_over_a_simulated_hour_at_100_ms_chunks() {
    // 36,000 chunks: the publisher pushes each to a subscriber, which
    // forwards to one of its own; neither keeps more than the window.
    let mut source = started(Params::new(), true, 1);
    let mut relay = started(Params::new(), false, 2);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    source.on_neighbour_up(0, PeerId(1), DOWN, &mut out);
    source.on_message(0, PeerId(1), &subscribe(0xFF), &mut out);
    relay.on_neighbour_up(0, PeerId(0), UP, &mut out);
    relay.on_neighbour_up(0, PeerId(2), DOWN, &mut out);
    relay.on_message(0, PeerId(2), &subscribe(0xFF), &mut out);
    let mut last_map = None;
    let mut pushed = 0u64;
    for seq in 0..36_000u64 {
        let now = seq * 100_000;
        let mut actions = RVec::new();
        let mut out = SchedOut::new(&mut actions);
        source.on_capacity(now, PeerId(1), cap(100_000), &mut out);
        source.on_chunk(now, seq, None, &mut out);
        source.on_tick(now + 1, &mut out);
        let got: Vec<u64> = sent(&actions).into_iter().map(|(_, s)| s).collect();
        pushed += got.len() as u64;
        let mut relayed = RVec::new();
        let mut out = SchedOut::new(&mut relayed);
        relay.on_capacity(now, PeerId(2), cap(100_000), &mut out);
        relay.on_playout(
            now,
            Playout {
                next_seq: seq.saturating_sub(10),
                next_deadline_us: now + 50_000,
                oldest_seq: seq.saturating_sub(50),
                newest_seq: seq,
            },
            &mut out,
        );
        for s in got {
            relay.on_chunk(now + 2, s, Some(PeerId(0)), &mut out);
        }
        relay.on_tick(now + 3, &mut out);
        for a in actions.iter().chain(relayed.iter()) {
            if let SchedAction::SendMessage { payload, .. } = a {
                if let Some(Message::Map { seqs, .. }) = decode(payload) {
                    last_map = Some(seqs);
                }
            }
        }
    }
    assert_eq!(pushed, 36_000, "every chunk pushed once");
    for p in [&source, &relay] {
        assert!(p.have.len() <= 300, "{}", p.have.len());
        assert!(p.announce.len() <= 300, "{}", p.announce.len());
        assert!(p.repairs.len() <= 4);
        for n in p.neighbours.values() {
            assert!(n.have.len() <= 300 && n.pushed.len() <= 300);
            assert!(n.queue.len() <= wire::MAX_SEQS);
        }
    }
    assert!(relay.have.len() <= 51, "the relay keeps its buffer only");
    let map = last_map.expect("maps were sent");
    assert!(
        *map.first().unwrap() > 35_000,
        "maps cover the newest window"
    );
}

fn subscriptions(actions: &RVec<SchedAction>) -> Vec<(u64, u16)> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedAction::SendMessage { peer, payload, .. } => match decode(payload) {
                Some(Message::Subscribe { mask }) => Some((peer.0, mask)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn info(depths: Vec<u8>) -> Vec<u8> {
    Message::Info {
        upload_kbps: 1000,
        depths,
    }
    .encode()
}

#[test]
fn over_a_striped_overlay_each_substream_comes_from_the_trees_parent() {
    // Two upstream neighbours, both one hop from the publisher in every
    // substream. The tree made 1 the parent in substream 0 and 2 in 1:
    // without the table push guesses by their own stripes, depth and
    // upload, and its guess is not this split.
    let mut push = started(Params::new().with("stripes", "2"), false, 1);
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    for p in [1, 2] {
        push.on_neighbour_up(0, PeerId(p), UP, &mut out);
        push.on_message(0, PeerId(p), &info(vec![1, 1]), &mut out);
    }
    let table = [
        StripeLink {
            peer: PeerId(1),
            upstream: 0b01,
            downstream: 0,
        },
        StripeLink {
            peer: PeerId(2),
            upstream: 0b10,
            downstream: 0,
        },
    ];
    push.on_stripe_links(0, &table, &mut out);
    actions.clear();
    push.on_tick(100_000, &mut SchedOut::new(&mut actions));
    assert_eq!(push.parents, vec![Some(PeerId(1)), Some(PeerId(2))]);
    let mut subs = subscriptions(&actions);
    subs.sort_unstable();
    assert_eq!(subs, vec![(1, 0b01), (2, 0b10)]);

    // The tree moves substream 1 to neighbour 1: push follows.
    let moved = [StripeLink {
        peer: PeerId(1),
        upstream: 0b11,
        downstream: 0,
    }];
    push.on_stripe_links(200_000, &moved, &mut SchedOut::new(&mut actions));
    push.on_tick(200_000, &mut SchedOut::new(&mut actions));
    assert_eq!(push.parents, vec![Some(PeerId(1)), Some(PeerId(1))]);
}

#[test]
fn a_full_uplink_keeps_the_trees_children_and_refuses_the_others() {
    // An uplink that carries one substream copy, two would-be children:
    // the tree's child keeps its substream even though it asked second and
    // the other has more upload (which would win without the table).
    let mut push = started(Params::new().with("stripes", "2"), false, 1);
    // Neither forwards substream 0 by its own stripe, which would rank
    // above the rest.
    let mut ids = (1..).filter(|&p| stripe_of(PeerId(p), 2) == 1);
    let (other, child) = (ids.next().unwrap(), ids.next().unwrap());
    let mut actions = RVec::new();
    let mut out = SchedOut::new(&mut actions);
    push.on_upload(
        0,
        Upload {
            capacity_bps: 600_000,
            capped: true,
            stream_bps: 1_000_000,
            budget_bytes: 10_000,
            ..Upload::default()
        },
        &mut out,
    );
    assert_eq!(push.units(), Some(1), "one substream copy fits");
    for p in [other, child] {
        push.on_neighbour_up(0, PeerId(p), DOWN, &mut out);
    }
    push.on_message(
        0,
        PeerId(other),
        &Message::Info {
            upload_kbps: 5000,
            depths: vec![NO_DEPTH, NO_DEPTH],
        }
        .encode(),
        &mut out,
    );
    push.on_stripe_links(
        0,
        &[StripeLink {
            peer: PeerId(child),
            upstream: 0,
            downstream: 0b01,
        }],
        &mut out,
    );
    push.on_message(0, PeerId(other), &subscribe(0b01), &mut out);
    actions.clear();
    push.on_message(
        0,
        PeerId(child),
        &subscribe(0b01),
        &mut SchedOut::new(&mut actions),
    );
    assert_eq!(push.neighbours[&PeerId(child)].subscribed, 0b01);
    assert_eq!(push.neighbours[&PeerId(other)].subscribed, 0);
    let refused: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            SchedAction::SendMessage { peer, payload, .. } => {
                matches!(decode(payload), Some(Message::Refuse { mask: 0b01 })).then_some(peer.0)
            }
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![other]);
}

#[test]
fn a_link_without_media_gets_no_maps_adverts_or_announcements() {
    // A tree's join attempt opens a link that carries nothing (most are
    // refused and closed at once): push stays silent on it.
    let mut push = started(Params::new(), false, 1);
    let mut actions = RVec::new();
    push.on_neighbour_up(
        0,
        PeerId(4),
        Link::default(),
        &mut SchedOut::new(&mut actions),
    );
    for t in 1..=30 {
        push.on_chunk(t * 100_000, t, None, &mut SchedOut::new(&mut actions));
        push.on_tick(t * 100_000, &mut SchedOut::new(&mut actions));
    }
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, SchedAction::SendMessage { peer, .. } if *peer == PeerId(4))),
        "{actions:?}"
    );
    // Once media may flow, it hears at once what is here.
    push.on_neighbour_down(3_100_000, PeerId(4), &mut SchedOut::new(&mut actions));
    push.on_neighbour_up(3_100_000, PeerId(4), DOWN, &mut SchedOut::new(&mut actions));
    assert!(actions
        .iter()
        .any(|a| matches!(a, SchedAction::SendMessage { peer, .. } if *peer == PeerId(4))));
}

#[test]
fn the_message_counters_add_up_to_what_was_sent() {
    let mut push = started(Params::new().with("stripes", "2"), false, 1);
    let mut actions = RVec::new();
    for p in [1, 2] {
        push.on_neighbour_up(0, PeerId(p), UP, &mut SchedOut::new(&mut actions));
        push.on_message(
            0,
            PeerId(p),
            &info(vec![1, 1]),
            &mut SchedOut::new(&mut actions),
        );
    }
    for t in 1..=30 {
        push.on_chunk(t * 100_000, t, None, &mut SchedOut::new(&mut actions));
        push.on_tick(t * 100_000, &mut SchedOut::new(&mut actions));
    }
    let sent = actions
        .iter()
        .filter(|a| matches!(a, SchedAction::SendMessage { .. }))
        .count() as f64;
    let mut metrics = RVec::new();
    push.metrics(&mut Metrics::new(&mut metrics));
    let get = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name.as_str() == name)
            .map_or(-1.0, |m| m.value)
    };
    assert!(sent > 0.0);
    assert_eq!(get("sent_messages"), sent);
    assert!(
        get("sent_map") >= 2.0 && get("sent_subscribe") >= 2.0,
        "{metrics:?}"
    );
}
