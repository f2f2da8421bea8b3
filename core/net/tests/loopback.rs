//! Two real endpoints over 127.0.0.1.

use bytes::Bytes;
use p2ner_net::{Endpoint, Event, Events, NetConfig, SendError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::timeout;

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn fast_cfg() -> NetConfig {
    NetConfig {
        rto_initial: Duration::from_millis(100),
        rto_min: Duration::from_millis(20),
        rto_max: Duration::from_millis(500),
        max_tries: 12,
        ..NetConfig::default()
    }
}

async fn next_event(ev: &mut Events, wait: Duration) -> Option<Event> {
    timeout(wait, ev.recv()).await.ok().flatten()
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
enum Msg {
    Hello { name: String, n: u32 },
    BufferMap(Vec<u64>),
}

#[tokio::test]
async fn reliable_exactly_once_under_10_percent_loss() {
    let lossy = |seed| NetConfig {
        drop_rate: 0.10,
        seed,
        ..fast_cfg()
    };
    let (a, _ea) = Endpoint::bind(lo(), lossy(1)).await.unwrap();
    let (b, mut eb) = Endpoint::bind(lo(), lossy(2)).await.unwrap();
    let to = b.local_addr();
    const N: u32 = 300;
    let mut sends = Vec::new();
    for n in 0..N {
        let a = a.clone();
        sends.push(tokio::spawn(async move {
            let m = Msg::Hello {
                name: "x".into(),
                n,
            };
            a.send_reliable(to, p2ner_net::encode(&m)).await
        }));
    }
    for s in sends {
        s.await.unwrap().expect("delivered and acked");
    }
    // Everything acked was delivered; let late retransmissions arrive too.
    let mut seen = HashMap::new();
    while let Some(ev) = next_event(&mut eb, Duration::from_millis(500)).await {
        match ev {
            Event::Message { from, payload } => {
                assert_eq!(from, a.local_addr());
                match p2ner_net::decode::<Msg>(&payload).unwrap() {
                    Msg::Hello { n, .. } => *seen.entry(n).or_insert(0) += 1,
                    m => panic!("{m:?}"),
                }
            }
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(seen.len(), N as usize, "every message delivered");
    assert!(seen.values().all(|&c| c == 1), "exactly once");
    let sa = a.stats();
    let sb = b.stats();
    assert!(sa.total.retransmissions > 0, "loss caused retransmissions");
    // The 300 messages and their acks share few datagrams, so which end's
    // injected loss struck varies; some did.
    let injected = |s: &p2ner_net::stats::NetStats| s.drops.injected_recv + s.drops.injected_send;
    assert!(injected(&sa) + injected(&sb) > 0, "{:?}", sb.drops);
    assert!(
        sb.total.duplicates_suppressed > 0,
        "lost acks caused duplicates that were suppressed"
    );
    assert_eq!(sa.total.reliable_acked, N as u64);
    assert!(sa.total.rtt_us > 0);
}

#[tokio::test]
async fn reliable_reports_failure_when_peer_gone() {
    let cfg = NetConfig {
        max_tries: 4,
        rto_initial: Duration::from_millis(50),
        rto_min: Duration::from_millis(20),
        rto_max: Duration::from_millis(200),
        ..NetConfig::default()
    };
    let (a, _ea) = Endpoint::bind(lo(), cfg).await.unwrap();
    let (b, eb) = Endpoint::bind(lo(), fast_cfg()).await.unwrap();
    let gone = b.local_addr();
    drop(b);
    drop(eb);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t0 = std::time::Instant::now();
    let r = timeout(
        Duration::from_secs(10),
        a.send_reliable(gone, Bytes::from_static(b"anyone?")),
    )
    .await
    .expect("reports, does not hang");
    assert_eq!(
        r,
        Err(SendError::Unreachable {
            peer: gone,
            tries: 4
        })
    );
    // 50 + 100 + 200 + 200 ms of backoff.
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let s = a.stats();
    assert_eq!(s.total.reliable_failed, 1);
    assert_eq!(s.total.retransmissions, 3);
    let r = timeout(
        Duration::from_secs(10),
        a.request(gone, Bytes::from_static(b"q"), Duration::from_millis(300)),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            r,
            Err(SendError::Timeout) | Err(SendError::Unreachable { .. })
        ),
        "{r:?}"
    );
}

/// A fresh endpoint's first datagram leaves at once: before, tokio refused
/// the first send (no writable readiness yet) and the request went out only
/// when its retransmission timer fired, so every one-shot CLI call took an
/// RTO.
#[tokio::test]
async fn the_first_request_of_a_fresh_endpoint_is_not_retransmitted() {
    let (b, mut eb) = Endpoint::bind(lo(), NetConfig::default()).await.unwrap();
    let bb = b.clone();
    tokio::spawn(async move {
        while let Some(ev) = eb.recv().await {
            if let Event::Request { from, id, payload } = ev {
                bb.respond(from, id, payload);
            }
        }
    });
    let (a, _ea) = Endpoint::bind(lo(), NetConfig::default()).await.unwrap();
    let r = a
        .request(
            b.local_addr(),
            Bytes::from_static(b"hi"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(&r[..], b"hi");
    assert_eq!(a.stats().total.retransmissions, 0, "{:?}", a.stats().total);
}

#[tokio::test]
async fn request_response_and_unreliable() {
    let (a, mut ea) = Endpoint::bind(lo(), fast_cfg()).await.unwrap();
    let (b, mut eb) = Endpoint::bind(lo(), fast_cfg()).await.unwrap();
    let bb = b.clone();
    let server = tokio::spawn(async move {
        let mut answered = 0;
        while let Some(ev) = eb.recv().await {
            if let Event::Request { from, id, payload } = ev {
                let mut r = payload.to_vec();
                r.reverse();
                bb.respond(from, id, Bytes::from(r));
                answered += 1;
                if answered == 20 {
                    return answered;
                }
            }
        }
        answered
    });
    for i in 0..20u8 {
        let r = a
            .request(
                b.local_addr(),
                Bytes::from(vec![1, 2, i]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(&r[..], &[i, 2, 1]);
    }
    assert_eq!(server.await.unwrap(), 20);
    // Fire-and-forget, typed.
    let bm = Msg::BufferMap(vec![1, 2, 3]);
    b.send_unreliable(a.local_addr(), p2ner_net::encode(&bm))
        .unwrap();
    match next_event(&mut ea, Duration::from_secs(5)).await.unwrap() {
        Event::Message { from, payload } => {
            assert_eq!(from, b.local_addr());
            assert_eq!(p2ner_net::decode::<Msg>(&payload).unwrap(), bm);
        }
        e => panic!("{e:?}"),
    }
    // Too large for one datagram.
    let big = Bytes::from(vec![0; 1200]);
    assert!(matches!(
        a.send_unreliable(b.local_addr(), big.clone()),
        Err(SendError::TooLarge { .. })
    ));
    assert!(matches!(
        a.send_reliable(b.local_addr(), big).await,
        Err(SendError::TooLarge { .. })
    ));
    let s = a.stats();
    // 20 requests, each a datagram; acks of the responses ride with the
    // next request instead of datagrams of their own.
    assert!(s.total.control.datagrams_sent >= 20);
    assert!(s.drops.frames_shared > 0, "{:?}", s.drops);
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains(&b.local_addr().to_string()));
}

async fn transfer(
    cfg_a: NetConfig,
    cfg_b: NetConfig,
    chunks: u64,
    size: usize,
) -> (Endpoint, Endpoint) {
    let (a, _ea) = Endpoint::bind(lo(), cfg_a).await.unwrap();
    let (b, mut eb) = Endpoint::bind(lo(), cfg_b).await.unwrap();
    let to = b.local_addr();
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for seq in 0..chunks {
                let data = Bytes::from(vec![(seq % 251) as u8; size]);
                loop {
                    match a.send_chunk(to, 7, seq, data.clone()) {
                        Ok(()) => break,
                        Err(SendError::WouldBlock) => {
                            a.writable(to, Duration::from_millis(50)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        })
    };
    let mut got = vec![false; chunks as usize];
    let mut n = 0;
    while n < chunks {
        match next_event(&mut eb, Duration::from_secs(20)).await {
            Some(Event::Chunk {
                from,
                stream,
                seq,
                data,
            }) => {
                assert_eq!(from, a.local_addr());
                assert_eq!(stream, 7);
                assert_eq!(data.len(), size);
                assert!(data.iter().all(|&x| x == (seq % 251) as u8));
                assert!(!got[seq as usize], "chunk {seq} delivered twice");
                got[seq as usize] = true;
                n += 1;
            }
            Some(e) => panic!("{e:?}"),
            None => panic!(
                "stalled after {n} of {chunks} chunks; stats {:?}",
                a.stats().total
            ),
        }
    }
    sender.await.unwrap();
    (a, b)
}

#[tokio::test]
async fn chunks_fragmented_and_reassembled() {
    let (a, b) = transfer(fast_cfg(), fast_cfg(), 200, 50_000).await;
    let s = a.stats();
    let p = &s.peers[&b.local_addr()];
    assert_eq!(p.chunks_sent, 200);
    assert!(p.data.datagrams_sent >= 200 * 43);
    assert!(p.cwnd_bytes > 0 && p.rtt_us > 0);
    assert!(b.stats().total.chunks_recv == 200);
}

#[tokio::test]
async fn chunks_survive_10_percent_loss_both_ways() {
    let lossy = |seed| NetConfig {
        drop_rate: 0.10,
        seed,
        ..fast_cfg()
    };
    let (a, _b) = transfer(lossy(3), lossy(4), 100, 20_000).await;
    let s = a.stats();
    assert!(s.total.data_retransmissions > 0);
    assert!(s.total.data_lost > 0);
    assert!(s.total.loss_rate > 0.0);
}

#[tokio::test]
async fn malformed_datagrams_counted_and_old_versions_told() {
    let (a, _ea) = Endpoint::bind(lo(), fast_cfg()).await.unwrap();
    let raw = tokio::net::UdpSocket::bind(lo()).await.unwrap();
    let to = a.local_addr();
    raw.send_to(b"garbage", to).await.unwrap();
    raw.send_to(&[0x50, 0x32, 1, 0, 0, 9, 0], to).await.unwrap(); // truncated
    raw.send_to(&vec![0u8; 1500], to).await.unwrap(); // oversized
                                                      // A version-0 peer sends an unreliable message.
    let mut old = Vec::new();
    p2ner_net::wire::encode_version(
        &p2ner_net::wire::Packet::Unreliable { payload: b"hi" },
        0,
        &mut old,
    );
    raw.send_to(&old, to).await.unwrap();
    let mut buf = [0u8; 2000];
    let (n, _) = timeout(Duration::from_secs(5), raw.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        p2ner_net::wire::decode(&buf[..n], 2000),
        Ok(p2ner_net::wire::Packet::VersionReject {
            min: p2ner_net::wire::MIN_VERSION,
            max: p2ner_net::wire::VERSION
        })
    );
    let s = a.stats();
    assert_eq!(s.drops.bad_magic, 1);
    assert_eq!(s.drops.truncated, 1);
    assert_eq!(s.drops.oversized, 1);
    assert_eq!(s.drops.unknown_version, 1);
    assert_eq!(s.malformed_dropped, 4);
    assert_eq!(s.drops.version_rejects_sent, 1);
    // A newer peer rejects us: our reliable sends fail fast with a clear error.
    let peer = raw.local_addr().unwrap();
    let mut rej = Vec::new();
    p2ner_net::wire::encode_version(
        &p2ner_net::wire::Packet::VersionReject { min: 3, max: 4 },
        4,
        &mut rej,
    );
    let send = a.send_reliable(peer, Bytes::from_static(b"x"));
    tokio::pin!(send);
    // Wait for the first transmission, then answer it with a reject.
    let _ = timeout(Duration::from_millis(50), &mut send).await;
    raw.send_to(&rej, to).await.unwrap();
    let r = timeout(Duration::from_secs(5), send).await.unwrap();
    assert!(
        matches!(r, Err(SendError::Incompatible { min: 3, max: 4, .. })),
        "{r:?}"
    );
}

#[tokio::test]
async fn slow_consumer_bounded() {
    let cfg = NetConfig {
        event_capacity: 8,
        ..fast_cfg()
    };
    let (a, _ea) = Endpoint::bind(lo(), fast_cfg()).await.unwrap();
    let (b, eb) = Endpoint::bind(lo(), cfg).await.unwrap();
    let to = b.local_addr();
    let mut queued = 0;
    for seq in 0..200 {
        if a.send_chunk(to, 1, seq, Bytes::from(vec![1u8; 3000]))
            .is_ok()
        {
            queued += 1;
        } else {
            a.writable(to, Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = b.stats();
    assert!(queued > 8);
    assert!(s.total.events_dropped > 0, "{:?}", s.total);
    assert!(eb.len() <= 8);
}
