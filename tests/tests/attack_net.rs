//! A stranger attacks a swarm at the network layer: real `p2ner` processes
//! (a server, a publisher, six subscribers) on loopback, and an attacker
//! written here that knows what anyone can learn (it joins the stream like
//! anyone and gets the peer list) and speaks the wire format, both raw (a
//! plain `UdpSocket`) and through an authenticated `p2ner-net` endpoint of
//! its own. After each attack every subscriber must have played at least
//! 99% of its chunks on time, and a newcomer must join and play.
//!
//! One swarm at a time (a lock): seven processes at once on a small machine.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2ner_engine::live::driver::wire_id;
use p2ner_net::wire::{self, DataHeader, Packet, ReliableKind};
use p2ner_net::{Endpoint, NetConfig};
use p2ner_proto::peer::{self as pw, Envelope, PeerMsg};
use p2ner_proto::server::{PeerEntry, StreamId};
use p2ner_server::client::ServerClient;
use p2ner_tests::swarm::{f, Proc, Swarm};

static ONE_SWARM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What the attacker knows and holds.
struct Attacker {
    rt: tokio::runtime::Runtime,
    /// Its own authenticated endpoint (it joined the stream with it).
    ep: Endpoint,
    /// A raw socket for datagrams nobody sealed.
    raw: UdpSocket,
    stream: u64,
    /// Everyone the server listed: the publisher and the subscribers.
    members: Vec<PeerEntry>,
}

impl Attacker {
    fn join(s: &Swarm, stream: &str) -> Attacker {
        // A worker of its own, so the endpoint's driver (handshakes,
        // retransmissions) runs while the test thread sends.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let id = StreamId(stream.to_owned());
        let (ep, members) = rt.block_on(async {
            let (ep, _events) =
                Endpoint::bind("127.0.0.1:0".parse().unwrap(), NetConfig::default())
                    .await
                    .unwrap();
            let server = ServerClient::new(ep.clone(), s.server_addr.parse().unwrap());
            let joined = server
                .join(&id, ep.peer_id())
                .await
                .expect("the attacker joins like anyone");
            (ep, joined.peers)
        });
        assert!(
            members.len() >= 7,
            "the server lists the publisher and six subscribers: {members:?}"
        );
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        Attacker {
            rt,
            ep,
            raw,
            stream: wire_id(&id),
            members,
        }
    }

    fn envelope(&self, from: u64, msg: PeerMsg) -> Vec<u8> {
        pw::encode(&Envelope {
            version: pw::VERSION,
            stream: self.stream,
            from,
            msg,
        })
    }

    /// Every ordered pair (claimed sender, target) of members.
    fn pairs(&self) -> Vec<(PeerEntry, PeerEntry)> {
        let mut v = Vec::new();
        for x in &self.members {
            for y in &self.members {
                if x.peer_id != y.peer_id {
                    v.push((*x, *y));
                }
            }
        }
        v
    }

    fn raw_send(&self, to: SocketAddr, p: &Packet<'_>) {
        let mut b = Vec::new();
        wire::encode(p, &mut b);
        let _ = self.raw.send_to(&b, to);
    }

    /// A peer message "from X", in the clear (reliable, as a Hello is).
    fn raw_message(&self, to: SocketAddr, payload: &[u8], id: u64) {
        self.raw_send(
            to,
            &Packet::Reliable {
                session: 1,
                id,
                floor: 1,
                ts: 0,
                kind: ReliableKind::Message,
                payload,
            },
        );
    }

    fn raw_junk_chunk(&self, to: SocketAddr, seq: u64) {
        let junk = [0xEE; 900];
        self.raw_send(
            to,
            &Packet::Data(
                DataHeader {
                    pkt: seq,
                    ts: 0,
                    stream: self.stream,
                    seq,
                    chunk_len: 900,
                    offset: 0,
                    index: 0,
                    count: 1,
                },
                &junk,
            ),
        );
    }
}

/// 1 publisher + 6 subscribers playing; `attack` runs after 4 s; then a
/// newcomer joins. Checks every subscriber's and the newcomer's summary and
/// returns the subscribers' summaries.
fn under_attack(
    label: &str,
    attack: impl FnOnce(&Swarm, &Attacker, &[Proc]),
) -> Vec<serde_json::Value> {
    let _one = ONE_SWARM_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let s = Swarm::start(None);
    let (_publisher, stream) = s.publish(&["--for", "45"]);
    let mut subs: Vec<Proc> = (0..6)
        .map(|i| s.subscribe(&format!("sub{i}"), &stream, 22, &[]))
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let attacker = Attacker::join(&s, &stream);
    let t = Instant::now();
    {
        let _in_runtime = attacker.rt.enter();
        attack(&s, &attacker, &subs);
    }
    eprintln!("{label}: attack took {:?}", t.elapsed());
    let mut newcomer = s.subscribe("newcomer", &stream, 8, &[]);
    let mut summaries = Vec::new();
    for p in subs.iter_mut() {
        let sum = s
            .summary(p, Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        summaries.push(sum);
    }
    let late = s
        .summary(&mut newcomer, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let c: Vec<f64> = summaries.iter().map(|s| f(s, "continuity")).collect();
    eprintln!(
        "{label}: continuity {c:?}, newcomer {} ({} played); unauthenticated dropped {:?}",
        f(&late, "continuity"),
        f(&late, "chunks_played"),
        summaries
            .iter()
            .map(|s| f(s, "unauthenticated_dropped") as u64)
            .collect::<Vec<_>>()
    );
    for sum in &summaries {
        assert!(f(sum, "chunks_played") > 0.0, "{label}: {sum}");
        assert!(f(sum, "continuity") >= 0.99, "{label}: {sum}");
    }
    assert!(f(&late, "chunks_played") > 0.0, "{label}: newcomer {late}");
    assert!(f(&late, "continuity") >= 0.99, "{label}: newcomer {late}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{label} took {:?}",
        started.elapsed()
    );
    summaries
}

/// A forged Hello "from X" plus a junk chunk per pair, both in the clear
/// (refused unopened) and over the attacker's own authenticated link (the
/// claim is not its key's id: refused; the junk chunk bans the attacker's
/// link, never X).
#[test]
fn forged_hello_and_junk_chunk_per_pair() {
    let sums = under_attack("forged hello", |_, a, _| {
        for (i, (x, y)) in a.pairs().into_iter().enumerate() {
            let hello = a.envelope(
                x.peer_id,
                PeerMsg::Hello {
                    up: true,
                    down: true,
                },
            );
            a.raw_message(y.addr, &hello, i as u64 + 1);
            a.raw_junk_chunk(y.addr, i as u64);
            let _ = a.ep.send_unreliable(y.addr, Bytes::from(hello));
            let _ = a.ep.send_chunk(
                y.addr,
                a.stream,
                10 + i as u64,
                Bytes::from(vec![0xEE; 5000]),
            );
        }
        a.rt.block_on(tokio::time::sleep(Duration::from_secs(3)));
    });
    let refused: f64 = sums.iter().map(|s| f(s, "unauthenticated_dropped")).sum();
    assert!(refused >= 6.0, "the forgeries were counted: {refused}");
}

/// Forged Pings "from X" from the attacker's address, with acks for
/// whatever it gets (raw acks and data acks): nothing meant for X goes to
/// the attacker.
#[test]
fn forged_ping_from_the_attackers_address() {
    under_attack("forged ping", |_, a, _| {
        let end = Instant::now() + Duration::from_secs(5);
        let mut n = 0u64;
        a.raw.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            for (x, y) in a.pairs() {
                n += 1;
                let ping = a.envelope(x.peer_id, PeerMsg::Ping(Default::default()));
                a.raw_message(y.addr, &ping, n);
                let _ = a.ep.send_unreliable(y.addr, Bytes::from(ping));
                a.raw_send(
                    y.addr,
                    &Packet::DataAck {
                        largest: n,
                        bitmap: u64::MAX,
                        delay: 0,
                        ack_delay: 0,
                    },
                );
                a.raw_send(
                    y.addr,
                    &Packet::Ack {
                        session: 1,
                        id: n,
                        ts_echo: 0,
                    },
                );
            }
            // Whatever reaches the raw socket is acked too.
            while let Ok((len, from)) = a.raw.recv_from(&mut buf) {
                let _ = len;
                a.raw_send(
                    from,
                    &Packet::DataAck {
                        largest: n,
                        bitmap: u64::MAX,
                        delay: 0,
                        ack_delay: 0,
                    },
                );
            }
            a.rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        }
        // Nothing but handshake answers (cookies) came to the raw socket.
        let media = a.ep.stats().total.data.bytes_recv;
        assert!(media < 100_000, "media went to the attacker: {media} bytes");
    });
}

/// One datagram each from 5,000 source addresses (127.x.y.z) at every
/// member: cookie requests, junk, initiations with made-up cookies. No state
/// is kept for any of them, so the address table never fills.
#[test]
fn five_thousand_source_addresses() {
    under_attack("5000 sources", |_, a, _| {
        let targets: Vec<SocketAddr> = a.members.iter().map(|m| m.addr).collect();
        let mut request = Vec::new();
        wire::encode(
            &Packet::CookieRequest {
                nonce: 1,
                pad: &[0; 49],
            },
            &mut request,
        );
        let mut init = Vec::new();
        wire::encode(
            &Packet::Init {
                nonce: 1,
                cookie: &[0xAA; 16],
                noise: &[0x11; 32],
                pad: &[0; 95],
            },
            &mut init,
        );
        let mut sent = 0;
        for i in 0..5_000u32 {
            let ip = [127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8 | 1];
            let Ok(sock) = UdpSocket::bind(SocketAddr::from((ip, 0))) else {
                continue;
            };
            for (k, t) in targets.iter().enumerate() {
                let d: &[u8] = match (i as usize + k) % 3 {
                    0 => &request,
                    1 => &init,
                    _ => b"P2 garbage from a stranger",
                };
                if sock.send_to(d, t).is_ok() {
                    sent += 1;
                }
            }
        }
        assert!(sent > 30_000, "{sent} datagrams sent");
    });
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 300,000 distinct sender ids from one address: every one is refused (none
/// is the attacker's key's), counted, and keeps no state.
#[test]
fn three_hundred_thousand_sender_ids_from_one_address() {
    under_attack("300k ids", |_, a, subs| {
        let victim = a
            .members
            .iter()
            .find(|m| !m.publisher)
            .expect("a subscriber")
            .addr;
        let pids: Vec<u32> = subs.iter().map(|p| p.child.id()).collect();
        let before: Vec<u64> = pids.iter().map(|&p| rss_kb(p)).collect();
        a.rt.block_on(async {
            for id in 0..300_000u64 {
                let m = a.envelope(0x1000_0000 + id, PeerMsg::Ping(Default::default()));
                let _ = a.ep.send_unreliable(victim, Bytes::from(m.clone()));
                if id % 2 == 0 {
                    a.raw_message(victim, &m, id + 1);
                }
                if id % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        let after: Vec<u64> = pids.iter().map(|&p| rss_kb(p)).collect();
        eprintln!("300k ids: RSS before {before:?} KiB, after {after:?} KiB");
        for (b, a) in before.iter().zip(&after) {
            assert!(a.saturating_sub(*b) < 8_000, "memory grew {b} -> {a} KiB");
        }
    });
}

/// Forged Byes "from X" at 50 Hz per pair for 5 s, in the clear and over
/// the attacker's link.
#[test]
fn forged_bye_at_50_hz_per_pair() {
    under_attack("forged bye", |_, a, _| {
        let pairs = a.pairs();
        let mut n = 0;
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            for (x, y) in &pairs {
                n += 1;
                let bye = a.envelope(x.peer_id, PeerMsg::Bye);
                a.raw_message(y.addr, &bye, n);
                let _ = a.ep.send_unreliable(y.addr, Bytes::from(bye));
            }
            a.rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        }
        assert!(n > 5_000, "{n} byes");
    });
}
