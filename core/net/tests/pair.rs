//! The state machine ([`p2ner_net::NetState`]) on simulated time over
//! simulated links, in the style of quinn-proto's `Pair` tests: every
//! scenario is deterministic (seeded), runs in milliseconds of real time,
//! and can exercise rates, delays, queues and losses that loopback cannot.
//!
//! A link is one direction between two nodes: a serialising bottleneck of
//! fixed rate with a bounded drop-tail queue in front, then a fixed one-way
//! delay, random loss and optional reordering (some datagrams take longer).

use bytes::Bytes;
use p2ner_net::wire::{self, Packet};
use p2ner_net::{Event, NetConfig, NetEvent, NetState, SendError, SendId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;

/// splitmix64, so runs are reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Clone, Copy, Debug)]
struct LinkSpec {
    /// bit/s
    rate_bps: u64,
    delay_us: u64,
    /// Bytes the bottleneck queue holds.
    queue_bytes: u64,
    loss: f64,
    /// Probability that a datagram is held back by `reorder_us`.
    reorder: f64,
    reorder_us: u64,
}

impl LinkSpec {
    fn new(rate_bps: u64, delay_us: u64) -> Self {
        LinkSpec {
            rate_bps,
            delay_us,
            queue_bytes: 256 * 1024,
            loss: 0.0,
            reorder: 0.0,
            reorder_us: 0,
        }
    }
    fn loss(self, loss: f64) -> Self {
        LinkSpec { loss, ..self }
    }
}

#[derive(Default, Debug)]
struct LinkStats {
    offered: u64,
    bytes_carried: u64,
    queue_drops: u64,
    lost: u64,
    /// Sum and count of queueing delay (µs) over carried datagrams, and the
    /// same since `mark`.
    qdelay_sum: u64,
    qdelay_n: u64,
    /// Carried bytes and queueing delay after the warm-up mark.
    after_mark_bytes: u64,
    after_mark_qdelay_sum: u64,
    after_mark_n: u64,
}

struct Link {
    spec: LinkSpec,
    /// When the bottleneck finishes serialising what it accepted.
    free_at: u64,
    stats: LinkStats,
    marked: bool,
}

impl Link {
    /// Accept a datagram at `now`; its arrival time, or None if dropped.
    fn send(&mut self, now: u64, len: usize, rng: &mut Rng) -> Option<u64> {
        self.stats.offered += 1;
        let rate = self.spec.rate_bps as f64 / 8.0 / 1e6; // bytes per µs
        let backlog = (self.free_at.saturating_sub(now) as f64 * rate) as u64;
        if backlog + len as u64 > self.spec.queue_bytes {
            self.stats.queue_drops += 1;
            return None;
        }
        let start = self.free_at.max(now);
        let qdelay = start - now;
        self.free_at = start + ((len as f64 / rate).ceil() as u64).max(1);
        self.stats.bytes_carried += len as u64;
        self.stats.qdelay_sum += qdelay;
        self.stats.qdelay_n += 1;
        if self.marked {
            self.stats.after_mark_bytes += len as u64;
            self.stats.after_mark_qdelay_sum += qdelay;
            self.stats.after_mark_n += 1;
        }
        if rng.chance(self.spec.loss) {
            self.stats.lost += 1;
            return None;
        }
        let mut arrival = self.free_at + self.spec.delay_us;
        if rng.chance(self.spec.reorder) {
            arrival += self.spec.reorder_us;
        }
        Some(arrival)
    }
}

struct Node {
    addr: SocketAddr,
    net: NetState,
    /// Events collected from the state machine, for the test to inspect.
    acked: Vec<SendId>,
    failed: Vec<(SendId, SendError)>,
    messages: Vec<(SocketAddr, Bytes)>,
    chunks: Vec<(SocketAddr, u64, u64, Bytes)>,
}

struct Arrival {
    at: u64,
    order: u64,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Arrival {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Arrival {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Nodes, links between them, and the datagrams on the way.
struct Sim {
    now: u64,
    nodes: Vec<Node>,
    index: HashMap<SocketAddr, usize>,
    links: HashMap<(usize, usize), Link>,
    default_link: LinkSpec,
    wire: BinaryHeap<Reverse<Arrival>>,
    order: u64,
    rng: Rng,
    steps: u64,
    /// Every datagram delivered (from, to node, bytes), when `capture`.
    captured: Vec<(SocketAddr, usize, Vec<u8>)>,
    capture: bool,
}

impl Sim {
    fn new(seed: u64, default_link: LinkSpec) -> Self {
        Sim {
            now: 0,
            nodes: Vec::new(),
            index: HashMap::new(),
            links: HashMap::new(),
            default_link,
            wire: BinaryHeap::new(),
            order: 0,
            rng: Rng(seed),
            steps: 0,
            captured: Vec::new(),
            capture: false,
        }
    }

    fn add(&mut self, cfg: NetConfig) -> usize {
        let i = self.nodes.len();
        let addr: SocketAddr = format!("10.0.0.{}:4000", i + 1).parse().unwrap();
        self.nodes.push(Node {
            addr,
            net: NetState::new(cfg, 0xA000 + i as u32, self.now),
            acked: Vec::new(),
            failed: Vec::new(),
            messages: Vec::new(),
            chunks: Vec::new(),
        });
        self.index.insert(addr, i);
        i
    }

    /// Runs the handshake between nodes `i` and `j` (a probe message from
    /// `i`), bounded by two simulated seconds.
    fn connect(&mut self, i: usize, j: usize) {
        let to = self.addr(j);
        let now = self.now;
        self.nodes[i]
            .net
            .send_unreliable(now, to, b"probe")
            .unwrap();
        let from = self.addr(i);
        for _ in 0..200 {
            if self.nodes[i].net.is_established(to) && self.nodes[j].net.is_established(from) {
                break;
            }
            let t = self.now + 10 * MS;
            self.run(t, 10 * MS, |_| {});
        }
        assert!(self.nodes[i].net.is_established(to), "link {i} -> {j} up");
        self.nodes[j].messages.clear();
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    fn set_link(&mut self, from: usize, to: usize, spec: LinkSpec) {
        self.links.insert(
            (from, to),
            Link {
                spec,
                free_at: 0,
                stats: LinkStats::default(),
                marked: false,
            },
        );
    }

    fn link(&mut self, from: usize, to: usize) -> &mut Link {
        let spec = self.default_link;
        self.links.entry((from, to)).or_insert(Link {
            spec,
            free_at: 0,
            stats: LinkStats::default(),
            marked: false,
        })
    }

    fn mark(&mut self) {
        for l in self.links.values_mut() {
            l.marked = true;
        }
    }

    /// Move every node's datagrams onto the links and its events into the
    /// node's records.
    fn drain(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let mut out = Vec::new();
            while let Some(t) = self.nodes[i].net.poll_transmit(now) {
                out.push((t.to, t.bytes.to_vec()));
            }
            for (to, bytes) in out {
                let Some(&j) = self.index.get(&to) else {
                    continue;
                };
                let from = self.nodes[i].addr;
                let mut rng = Rng(self.rng.next());
                if let Some(at) = self.link(i, j).send(now, bytes.len(), &mut rng) {
                    self.order += 1;
                    self.wire.push(Reverse(Arrival {
                        at,
                        order: self.order,
                        to: j,
                        from,
                        bytes,
                    }));
                }
            }
            let n = &mut self.nodes[i];
            while let Some(ev) = n.net.poll_event() {
                match ev {
                    NetEvent::Acked(s) => n.acked.push(s),
                    NetEvent::Failed(s, e) => n.failed.push((s, e)),
                    NetEvent::Deliver(Event::Message { from, payload }) => {
                        n.messages.push((from, payload))
                    }
                    NetEvent::Deliver(Event::Chunk {
                        from,
                        stream,
                        seq,
                        data,
                    }) => n.chunks.push((from, stream, seq, data)),
                    _ => {}
                }
            }
        }
    }

    /// Advance to `until` (µs), calling `app` every `tick` µs. Bounded by
    /// simulated time and by a step count.
    fn run(&mut self, until: u64, tick: u64, mut app: impl FnMut(&mut Sim)) {
        let mut next_tick = self.now;
        let mut same_time = 0;
        while self.now < until {
            self.steps += 1;
            assert!(self.steps < 50_000_000, "step bound");
            if self.now >= next_tick {
                app(self);
                next_tick = self.now + tick;
            }
            self.drain();
            let mut next = next_tick.min(until);
            if let Some(Reverse(a)) = self.wire.peek() {
                next = next.min(a.at);
            }
            for n in &self.nodes {
                if let Some(t) = n.net.poll_timeout() {
                    next = next.min(t);
                }
            }
            if next <= self.now {
                same_time += 1;
                assert!(same_time < 10_000, "no progress at {} µs", self.now);
            } else {
                same_time = 0;
            }
            self.now = next.max(self.now);
            let mut received = Vec::new();
            while self.wire.peek().is_some_and(|Reverse(a)| a.at <= self.now) {
                let Reverse(a) = self.wire.pop().unwrap();
                self.nodes[a.to]
                    .net
                    .handle_datagram(self.now, a.from, &a.bytes);
                if self.capture {
                    self.captured.push((a.from, a.to, a.bytes.clone()));
                }
                received.push(a.to);
            }
            // As a socket driver does when the socket runs dry.
            received.sort_unstable();
            received.dedup();
            for j in received {
                self.nodes[j].net.flush_acks(self.now);
            }
            let now = self.now;
            for n in &mut self.nodes {
                if n.net.poll_timeout().is_some_and(|t| t <= now) {
                    n.net.handle_timeout(now);
                }
            }
        }
        self.drain();
    }
}

fn fast_cfg() -> NetConfig {
    NetConfig {
        rto_initial: std::time::Duration::from_millis(100),
        rto_min: std::time::Duration::from_millis(20),
        rto_max: std::time::Duration::from_millis(500),
        max_tries: 12,
        ..NetConfig::default()
    }
}

fn payload(n: u32) -> Bytes {
    Bytes::from(format!("message {n}").into_bytes())
}

fn reliable_exactly_once(loss: f64, reorder: f64, seed: u64) {
    let link = LinkSpec {
        reorder,
        reorder_us: 4 * MS,
        ..LinkSpec::new(10_000_000, 10 * MS).loss(loss)
    };
    let mut sim = Sim::new(seed, link);
    let a = sim.add(fast_cfg());
    let b = sim.add(fast_cfg());
    let to = sim.addr(b);
    const N: u32 = 300;
    let mut ids = Vec::new();
    let mut n = 0;
    // 30 messages every 10 ms.
    sim.run(30 * SEC, 10 * MS, |sim| {
        for _ in 0..30 {
            if n < N {
                let now = sim.now;
                ids.push(sim.nodes[a].net.send_reliable(now, to, payload(n)).unwrap());
                n += 1;
            }
        }
    });
    let na = &sim.nodes[a];
    let nb = &sim.nodes[b];
    assert!(na.failed.is_empty(), "loss {loss}: {:?}", na.failed);
    assert_eq!(na.acked.len(), N as usize, "loss {loss}: all acked");
    let mut seen = BTreeMap::new();
    for (from, p) in &nb.messages {
        assert_eq!(*from, na.addr);
        *seen.entry(p.clone()).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), N as usize, "loss {loss}: all delivered");
    assert!(seen.values().all(|&c| c == 1), "loss {loss}: exactly once");
    let s = na.net.stats();
    assert_eq!(s.total.reliable_acked, N as u64);
    if loss > 0.0 {
        assert!(s.total.retransmissions > 0);
    }
    eprintln!(
        "reliable, loss {:>4.1}%, reorder {:>4.1}%: {N} delivered once, {} retransmissions, {} duplicates suppressed, rtt {} µs",
        loss * 100.0,
        reorder * 100.0,
        s.total.retransmissions,
        nb.net.stats().total.duplicates_suppressed,
        s.total.rtt_us
    );
}

#[test]
fn reliable_exactly_once_at_0_1_5_20_percent_loss() {
    for (i, loss) in [0.0, 0.01, 0.05, 0.20].into_iter().enumerate() {
        reliable_exactly_once(loss, 0.0, 11 + i as u64);
    }
}

/// Push `chunks` chunks of `size` bytes from a to b as fast as capacity
/// allows; returns the sim for inspection.
fn transfer(link: LinkSpec, seed: u64, chunks: u64, size: usize, limit: u64) -> (Sim, u64) {
    let mut sim = Sim::new(seed, link);
    let a = sim.add(fast_cfg());
    let b = sim.add(fast_cfg());
    let to = sim.addr(b);
    let mut seq = 0;
    let mut done_at = 0;
    sim.run(limit, MS, |sim| {
        while seq < chunks {
            let now = sim.now;
            let data = Bytes::from(vec![(seq % 251) as u8; size]);
            match sim.nodes[a].net.send_chunk(now, to, 7, seq, data) {
                Ok(()) => seq += 1,
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        if done_at == 0 && sim.nodes[b].chunks.len() as u64 == chunks {
            done_at = sim.now;
        }
    });
    let nb = &sim.nodes[b];
    let mut got = vec![0u32; chunks as usize];
    for (from, stream, seq, data) in &nb.chunks {
        assert_eq!(*from, sim.nodes[a].addr);
        assert_eq!(*stream, 7);
        assert_eq!(data.len(), size);
        assert!(data.iter().all(|&x| x == (*seq % 251) as u8));
        got[*seq as usize] += 1;
    }
    assert!(
        got.iter().all(|&c| c == 1),
        "every chunk exactly once: {} of {chunks} delivered; {:?}",
        got.iter().filter(|&&c| c > 0).count(),
        sim.nodes[a].net.stats().total
    );
    (sim, done_at)
}

#[test]
fn chunks_all_delivered_at_0_1_5_20_percent_loss() {
    for (i, loss) in [0.0, 0.01, 0.05, 0.20].into_iter().enumerate() {
        let link = LinkSpec::new(10_000_000, 10 * MS).loss(loss);
        let (sim, done) = transfer(link, 21 + i as u64, 100, 20_000, 120 * SEC);
        let s = sim.nodes[0].net.stats();
        eprintln!(
            "chunks, loss {:>4.1}%: 100 x 20 kB in {:.2} s ({:.2} Mbit/s), {} data retransmissions, {} lost, cwnd {} B",
            loss * 100.0,
            done as f64 / 1e6,
            100.0 * 20_000.0 * 8.0 / (done as f64 / 1e6) / 1e6,
            s.total.data_retransmissions,
            s.total.data_lost,
            s.total.cwnd_bytes
        );
        if loss > 0.0 {
            assert!(s.total.data_retransmissions > 0);
        }
        assert_eq!(s.total.chunks_abandoned, 0);
    }
}

#[test]
fn reordering_tolerated() {
    reliable_exactly_once(0.0, 0.10, 31);
    reliable_exactly_once(0.05, 0.10, 32);
    let link = LinkSpec {
        reorder: 0.10,
        reorder_us: 4 * MS,
        ..LinkSpec::new(10_000_000, 10 * MS)
    };
    let (sim, done) = transfer(link, 33, 100, 20_000, 60 * SEC);
    let s = sim.nodes[0].net.stats();
    let dups = sim.nodes[1].net.stats().total.duplicate_fragments;
    eprintln!(
        "chunks, 10% reordered by 4 ms: done in {:.2} s, {} retransmissions (spurious: {dups} duplicate fragments)",
        done as f64 / 1e6,
        s.total.data_retransmissions
    );
}

/// The sender offers twice what its link carries: LEDBAT must fill the link
/// while keeping the bottleneck queue near its 25 ms target, not fill the
/// (600 ms deep) buffer.
#[test]
fn bottleneck_2x_ledbat_keeps_delay_near_target_and_link_busy() {
    const RATE: u64 = 2_000_000;
    let mut sim = Sim::new(41, LinkSpec::new(100_000_000, 20 * MS));
    let a = sim.add(NetConfig::default());
    let b = sim.add(NetConfig::default());
    sim.set_link(
        a,
        b,
        LinkSpec {
            queue_bytes: 150_000,
            ..LinkSpec::new(RATE, 20 * MS)
        },
    );
    let to = sim.addr(b);
    let mut seq = 0u64;
    // Offered: 5000 B every 10 ms = 4 Mbit/s, twice the link.
    let offer = |sim: &mut Sim, seq: &mut u64| {
        let now = sim.now;
        let r = sim.nodes[a]
            .net
            .send_chunk(now, to, 1, *seq, Bytes::from(vec![1u8; 5000]));
        if r.is_ok() {
            *seq += 1;
        }
    };
    sim.run(10 * SEC, 10 * MS, |sim| offer(sim, &mut seq));
    sim.mark();
    let t_mark = sim.now;
    sim.run(40 * SEC, 10 * MS, |sim| offer(sim, &mut seq));
    let secs = (sim.now - t_mark) as f64 / 1e6;
    let l = &sim.links[&(a, b)].stats;
    let util = l.after_mark_bytes as f64 * 8.0 / secs / RATE as f64;
    let qdelay_ms = l.after_mark_qdelay_sum as f64 / l.after_mark_n.max(1) as f64 / 1e3;
    let s = sim.nodes[a].net.stats();
    eprintln!(
        "2 Mbit/s bottleneck offered 4 Mbit/s: utilisation {:.1}%, mean queueing delay {qdelay_ms:.1} ms \
         (LEDBAT estimate {:.1} ms, target 25 ms), queue drops {}, cwnd {} B, rtt {} µs",
        util * 100.0,
        s.total.queuing_delay_us as f64 / 1e3,
        l.queue_drops,
        s.total.cwnd_bytes,
        s.total.rtt_us
    );
    assert!(util >= 0.90, "utilisation {util}");
    assert!(
        (10.0..=50.0).contains(&qdelay_ms),
        "queueing delay {qdelay_ms} ms"
    );
    assert_eq!(l.queue_drops, 0, "LEDBAT must not fill the buffer");
}

/// Three neighbours each offered twice what an 800 kbit/s cap allows, with
/// deadlines: the cap holds, nothing is sent twice, what cannot make its
/// deadline is counted and never sent.
#[test]
fn upload_cap_respected_and_expired_chunks_counted() {
    const CAP: u64 = 800;
    let mut sim = Sim::new(51, LinkSpec::new(10_000_000, 20 * MS));
    let a = sim.add(NetConfig {
        upload_kbps: Some(CAP),
        ..NetConfig::default()
    });
    let rx: Vec<usize> = (0..3).map(|_| sim.add(NetConfig::default())).collect();
    let addrs: Vec<SocketAddr> = rx.iter().map(|&i| sim.addr(i)).collect();
    for &r in &rx {
        sim.connect(a, r);
    }
    let start = sim.now;
    let before = {
        let t = sim.nodes[a].net.stats().total;
        t.data.bytes_sent + t.control.bytes_sent
    };
    let (mut offered, mut refused, mut seq) = (0u64, 0u64, 0u64);
    // 2000 B per neighbour every 30 ms = 1.6 Mbit/s offered.
    sim.run(start + 20 * SEC, 30 * MS, |sim| {
        let now = sim.now;
        for &to in &addrs {
            offered += 1;
            seq += 1;
            let data = Bytes::from(vec![2u8; 2000]);
            match sim.nodes[a]
                .net
                .send_chunk_by(now, to, 0, seq, data, now + 40 * MS)
            {
                Ok(()) => {}
                Err(SendError::WouldBlock) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
    });
    // Drain.
    sim.run(sim.now + SEC, 10 * MS, |_| {});
    let secs = (sim.now - start) as f64 / 1e6;
    let s = sim.nodes[a].net.stats();
    let sent = s.total.data.bytes_sent + s.total.control.bytes_sent - before;
    let allowed = CAP as f64 * 1000.0 / 8.0 * secs;
    let delivered: u64 = rx.iter().map(|&i| sim.nodes[i].chunks.len() as u64).sum();
    let dups: u64 = rx
        .iter()
        .map(|&i| sim.nodes[i].net.stats().total.duplicate_fragments)
        .sum();
    let accepted = offered - refused;
    eprintln!(
        "cap {CAP} kbit/s, 3 neighbours offered 2x (simulated, 20 ms links): sent {:.1}% of cap×time, \
         accepted {accepted}/{offered}, delivered {delivered}, expired {}, duplicates {dups}, retransmissions {}",
        sent as f64 / allowed * 100.0,
        s.total.expired_chunks,
        s.total.data_retransmissions
    );
    assert!(sent as f64 <= allowed + 2_500.0, "{sent} > {allowed}");
    assert!(sent as f64 >= 0.85 * allowed * 20.0 / 21.0, "cap unused");
    assert_eq!(dups, 0);
    assert_eq!(s.total.data_retransmissions, 0);
    assert!(s.total.expired_chunks > 0);
    assert_eq!(delivered + s.total.expired_chunks, accepted);
    // Expired chunks never reached the wire (the wire is sealed, so the
    // receivers tell): a started chunk is always finished, and with no loss
    // it is delivered, so delivered + expired == accepted above means no
    // expired chunk started; nothing partial waits at any receiver.
    for &i in &rx {
        let r = sim.nodes[i].net.stats();
        assert_eq!((r.reassembly_bytes, r.drops.reassembly_expired), (0, 0));
    }
}

#[test]
fn expired_deadline_chunk_dropped_counted_never_sent() {
    let mut sim = Sim::new(61, LinkSpec::new(10_000_000, 10 * MS));
    let a = sim.add(NetConfig {
        upload_kbps: Some(80),
        ..NetConfig::default()
    });
    let b = sim.add(NetConfig::default());
    let c = sim.add(NetConfig::default());
    let (tb, tc) = (sim.addr(b), sim.addr(c));
    sim.connect(a, b);
    sim.connect(a, c);
    let mut step = 0;
    sim.run(sim.now + 3 * SEC, MS, |sim| {
        let now = sim.now;
        let net = &mut sim.nodes[a].net;
        match step {
            0 => {
                // Already past: counted, never queued.
                net.send_chunk_by(now, tc, 0, 100, Bytes::from(vec![0; 500]), now)
                    .unwrap();
                // ~40 ms of the 80 kbit/s uplink.
                net.send_chunk_by(now, tb, 0, 1, Bytes::from(vec![1; 4000]), now + 5 * SEC)
                    .unwrap();
            }
            25 => {
                // The acks of the first two fragments (20 ms RTT) let a
                // third go, which spends the bucket until ~120 ms.
                assert!(net.capacity(now, tc).can_send_bytes > 0);
                net.send_chunk_by(now, tc, 0, 2, Bytes::from(vec![2; 2000]), now + 30 * MS)
                    .unwrap();
            }
            60 => {
                assert_eq!(net.stats().peers[&tc].expired_chunks, 2);
                net.send_chunk(now, tc, 0, 3, Bytes::from(vec![3; 1000]))
                    .unwrap();
            }
            _ => {}
        }
        step += 1;
    });
    let s = sim.nodes[a].net.stats();
    assert_eq!(s.total.expired_chunks, 2);
    assert_eq!(s.total.chunks_sent, 4);
    for n in [b, c] {
        let r = sim.nodes[n].net.stats();
        assert_eq!((r.reassembly_bytes, r.drops.reassembly_expired), (0, 0));
        assert!(sim.nodes[n]
            .chunks
            .iter()
            .all(|ch| ch.2 != 2 && ch.2 != 100));
    }
    assert_eq!(sim.nodes[b].chunks.len(), 1);
    assert_eq!(sim.nodes[c].chunks.len(), 1);
    assert_eq!(sim.nodes[c].chunks[0].2, 3);
    let u = sim.nodes[a].net.upload(sim.now);
    assert_eq!(u.queued_bytes + u.inflight_bytes, 0);
}

#[test]
fn malformed_datagrams_counted_never_panic() {
    let mut rng = Rng(71);
    let mut net = NetState::new(fast_cfg(), 1, 0);
    let from: SocketAddr = "10.0.0.9:1".parse().unwrap();
    // Valid datagrams of every kind, to mutate.
    let mut samples: Vec<Vec<u8>> = Vec::new();
    let pkts = [
        Packet::Unreliable { payload: b"hi" },
        Packet::Reliable {
            session: 5,
            id: 3,
            floor: 1,
            ts: 9,
            kind: wire::ReliableKind::Request(4),
            payload: b"req",
        },
        Packet::Ack {
            session: 1,
            id: 1,
            ts_echo: 0,
        },
        Packet::Data(
            wire::DataHeader {
                pkt: 1,
                ts: 0,
                stream: 0,
                seq: 0,
                chunk_len: 3000,
                offset: 1149,
                index: 1,
                count: 3,
            },
            &[7; 1149],
        ),
        Packet::DataAck {
            largest: 9,
            bitmap: 0xFF,
            delay: 4,
            ack_delay: 0,
        },
        Packet::VersionReject { min: 1, max: 1 },
    ];
    for p in &pkts {
        let mut v = Vec::new();
        wire::encode(p, &mut v);
        samples.push(v);
    }
    let mut rejected = 0u64;
    let mut now = 0;
    for i in 0..200_000u64 {
        now += 10;
        let mut d = if i % 3 == 0 {
            let len = (rng.next() % 1400) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            samples[(rng.next() % samples.len() as u64) as usize].clone()
        };
        if !d.is_empty() {
            for _ in 0..=(rng.next() % 3) {
                let p = (rng.next() as usize) % d.len();
                d[p] = rng.next() as u8;
            }
            if rng.chance(0.2) {
                d.truncate((rng.next() as usize) % d.len());
            }
        }
        // Skip version rejects: they (rightly) make this peer incompatible.
        if wire::decode(&d, 1200).is_err() {
            rejected += 1;
        } else if d.len() > 3 && d[3] == wire::CH_META {
            continue;
        }
        net.handle_datagram(now, from, &d);
        if i % 64 == 0 {
            net.handle_timeout(now);
            while net.poll_transmit(now).is_some() {}
            while net.poll_event().is_some() {}
        }
    }
    let s = net.stats();
    assert!(rejected > 100_000, "{rejected}");
    let bad_fragment = s.drops.bad_fragment;
    assert_eq!(s.malformed_dropped, rejected + bad_fragment);
    // Still works afterwards: a fresh peer gets a reliable message through.
    let mut sim = Sim::new(72, LinkSpec::new(10_000_000, 5 * MS));
    let x = sim.add(fast_cfg());
    let y = sim.add(fast_cfg());
    sim.nodes[x].net = net;
    let to = sim.addr(y);
    let mut sent = false;
    sim.now = now;
    sim.run(now + SEC, 10 * MS, |sim| {
        if !sent {
            let t = sim.now;
            sim.nodes[x]
                .net
                .send_reliable(t, to, Bytes::from_static(b"still alive"))
                .unwrap();
            sent = true;
        }
    });
    assert_eq!(sim.nodes[x].acked.len(), 1);
    assert_eq!(sim.nodes[y].messages.len(), 1);
}

/// Same seed, same run: the state machine has no hidden clock or entropy.
#[test]
fn deterministic() {
    let run = || {
        let link = LinkSpec::new(5_000_000, 15 * MS).loss(0.05);
        let (sim, done) = transfer(link, 81, 30, 10_000, 30 * SEC);
        (done, format!("{:?}", sim.nodes[0].net.stats().total))
    };
    assert_eq!(run(), run());
}

/// A cap on a long path: the shared room bounds what waits locally, not what
/// is in flight, so one neighbour 100 ms away can still use the whole cap.
#[test]
fn cap_filled_over_a_long_path() {
    const CAP: u64 = 800;
    let mut sim = Sim::new(91, LinkSpec::new(10_000_000, 50 * MS));
    let a = sim.add(NetConfig {
        upload_kbps: Some(CAP),
        ..NetConfig::default()
    });
    let b = sim.add(NetConfig::default());
    let to = sim.addr(b);
    let mut seq = 0u64;
    let mut offer = |sim: &mut Sim| {
        let now = sim.now;
        while sim.nodes[a]
            .net
            .send_chunk(now, to, 0, seq, Bytes::from(vec![3u8; 2000]))
            .is_ok()
        {
            seq += 1;
        }
    };
    sim.run(5 * SEC, 5 * MS, &mut offer);
    sim.mark();
    let t = sim.now;
    sim.run(15 * SEC, 5 * MS, &mut offer);
    let l = &sim.links[&(a, b)].stats;
    let rate = l.after_mark_bytes as f64 * 8.0 / ((sim.now - t) as f64 / 1e6);
    let u = sim.nodes[a].net.upload(sim.now);
    eprintln!(
        "cap {CAP} kbit/s over a 100 ms RTT path: {:.0} kbit/s on the wire, queued {} B, in flight {} B",
        rate / 1e3,
        u.queued_bytes,
        u.inflight_bytes
    );
    assert!(rate >= 0.93 * CAP as f64 * 1e3, "{rate}");
    assert!(rate <= 1.02 * CAP as f64 * 1e3, "{rate}");
    assert!(u.queued_bytes <= 5_000 + 2_200, "{u:?}");
}

// ----- the authenticated link -------------------------------------------------

/// The handshake completes under heavy loss both ways (every step is
/// retransmitted by the initiator), and what was sent before it is
/// delivered once it is up.
#[test]
fn handshake_completes_under_loss() {
    for (seed, loss) in [(1, 0.2), (2, 0.3), (3, 0.2)] {
        let mut sim = Sim::new(seed, LinkSpec::new(10_000_000, 10 * MS).loss(loss));
        let cfg = NetConfig {
            max_tries: 10,
            ..fast_cfg()
        };
        let a = sim.add(cfg.clone());
        let b = sim.add(cfg);
        let to = sim.addr(b);
        let id = sim.nodes[a]
            .net
            .send_reliable(0, to, Bytes::from_static(b"before the link"))
            .unwrap();
        sim.run(10 * SEC, 10 * MS, |_| {});
        assert!(sim.nodes[a].net.is_established(to), "seed {seed}");
        assert_eq!(sim.nodes[a].acked, vec![id], "seed {seed}");
        assert_eq!(sim.nodes[b].messages.len(), 1, "delivered once");
        let key_a = *sim.nodes[a].net.static_key().public();
        assert_eq!(sim.nodes[b].net.peer_key(sim.addr(a)), Some(key_a));
        let d = sim.nodes[b].net.stats().drops;
        assert_eq!(d.handshakes_completed, 1, "{d:?}");
    }
}

/// Both ends open the link at the same moment (a mesh connecting both
/// ways): one handshake wins, both ends agree, traffic flows both ways.
#[test]
fn simultaneous_open_agrees_on_one_link() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed, LinkSpec::new(10_000_000, 10 * MS).loss(0.05));
        let a = sim.add(fast_cfg());
        let b = sim.add(fast_cfg());
        let (ta, tb) = (sim.addr(a), sim.addr(b));
        // Both keep sending while the handshakes race.
        let mut n = 0;
        sim.run(300 * MS, MS, |sim| {
            if n < 50 {
                let now = sim.now;
                sim.nodes[a].net.send_reliable(now, tb, payload(n)).unwrap();
                sim.nodes[b].net.send_reliable(now, ta, payload(n)).unwrap();
                n += 1;
            }
        });
        sim.run(5 * SEC, 10 * MS, |_| {});
        for (x, y) in [(a, b), (b, a)] {
            let node = &sim.nodes[x];
            assert_eq!(node.acked.len(), 50, "seed {seed}: node {x} acked");
            assert_eq!(node.messages.len(), 50, "seed {seed}: node {x} got");
            assert!(node.failed.is_empty(), "seed {seed}");
            let theirs = *sim.nodes[y].net.static_key().public();
            assert_eq!(node.net.peer_key(sim.addr(y)), Some(theirs));
            let d = node.net.stats().drops;
            assert_eq!(d.unauthenticated, 0, "seed {seed}: keys agree: {d:?}");
        }
    }
}

/// A stranger that cannot receive at the address it claims (a spoofed
/// source) gets no state anywhere: its cookie request is answered with
/// something smaller, to the victim; its initiations with made-up cookies
/// are refused; its sealed or plain datagrams are dropped and counted; a
/// link it claims to be from is never touched.
#[test]
fn spoofed_source_gets_no_state_and_no_amplification() {
    let mut sim = Sim::new(9, LinkSpec::new(10_000_000, 5 * MS));
    let a = sim.add(fast_cfg());
    let b = sim.add(fast_cfg());
    sim.connect(a, b);
    let (ta, tb) = (sim.addr(a), sim.addr(b));
    let victim: SocketAddr = "10.9.9.9:53".parse().unwrap();
    let now = sim.now;
    let net = &mut sim.nodes[b].net;
    let peers_before = net.peer_count();
    let enc = |p: &Packet<'_>| {
        let mut v = Vec::new();
        wire::encode(p, &mut v);
        v
    };
    let request = enc(&Packet::CookieRequest {
        nonce: 1,
        pad: &[0; 49],
    });
    let init = enc(&Packet::Init {
        nonce: 1,
        cookie: &[0xAA; 16],
        noise: &[0x11; 32],
        pad: &[0; 95],
    });
    let sealed = enc(&Packet::Sealed {
        counter: 5,
        ciphertext: &[0x55; 80],
    });
    let plain = enc(&Packet::Unreliable { payload: b"hi" });
    let reject = enc(&Packet::VersionReject { min: 9, max: 9 });
    let mut answers = Vec::new();
    for from in [victim, ta] {
        for d in [&request, &init, &sealed, &plain, &reject] {
            net.handle_datagram(now, from, d);
            while let Some(t) = net.poll_transmit(now) {
                answers.push((t.to, t.bytes.len(), d.len()));
            }
        }
    }
    // Only the cookie requests were answered, each with less than it asked.
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers.iter().all(|&(_, got, asked)| got < asked));
    assert_eq!(net.peer_count(), peers_before, "no state for the stranger");
    let d = net.stats().drops;
    assert_eq!(d.bad_cookie, 2);
    assert_eq!(d.unauthenticated, 4, "{d:?}");
    assert_eq!(d.version_rejects_ignored, 2);
    // The real link is intact: a message still goes through, both ways.
    sim.nodes[a].net.send_reliable(now, tb, payload(3)).unwrap();
    sim.nodes[b].net.send_reliable(now, ta, payload(4)).unwrap();
    sim.run(sim.now + SEC, 10 * MS, |_| {});
    assert_eq!(sim.nodes[a].acked.len(), 1);
    assert_eq!(sim.nodes[b].acked.len(), 1);
}

/// Every datagram of a session captured and played again (all of them, in
/// order, then shuffled) changes nothing: no second delivery, no chunk
/// twice, every replay counted.
#[test]
fn replayed_datagrams_are_refused() {
    let mut sim = Sim::new(11, LinkSpec::new(10_000_000, 5 * MS));
    let a = sim.add(fast_cfg());
    let b = sim.add(fast_cfg());
    sim.connect(a, b);
    let tb = sim.addr(b);
    sim.capture = true;
    for i in 0..20 {
        let now = sim.now;
        sim.nodes[a].net.send_reliable(now, tb, payload(i)).unwrap();
        let _ = sim.nodes[a]
            .net
            .send_chunk(now, tb, 1, i as u64, Bytes::from(vec![i as u8; 3000]));
        let t = sim.now + 20 * MS;
        sim.run(t, 10 * MS, |_| {});
    }
    sim.run(sim.now + SEC, 10 * MS, |_| {});
    sim.capture = false;
    let (msgs, chunks) = (sim.nodes[b].messages.len(), sim.nodes[b].chunks.len());
    assert_eq!(msgs, 20);
    assert!(chunks > 0);
    let to_b: Vec<_> = sim
        .captured
        .iter()
        .filter(|c| c.1 == b)
        .map(|c| (c.0, c.2.clone()))
        .collect();
    let before = sim.nodes[b].net.stats().drops.replayed;
    let mut rng = Rng(5);
    let mut shuffled = to_b.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let now = sim.now;
    for (from, bytes) in to_b.iter().chain(shuffled.iter()) {
        sim.nodes[b].net.handle_datagram(now, *from, bytes);
    }
    sim.run(sim.now + SEC, 10 * MS, |_| {});
    assert_eq!(sim.nodes[b].messages.len(), msgs, "no message twice");
    assert_eq!(sim.nodes[b].chunks.len(), chunks, "no chunk twice");
    let d = sim.nodes[b].net.stats().drops;
    let sealed = to_b.iter().filter(|(_, v)| v[3] == wire::CH_SEALED).count() as u64;
    // Replays of sealed datagrams are refused by the window (the oldest may
    // have left it: then they are too old, counted the same way).
    assert_eq!(d.replayed - before, 2 * sealed, "{d:?}");
}
