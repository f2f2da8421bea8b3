//! What authentication costs, on the state machine alone (no sockets): a
//! whole handshake (cookie, Noise XX, both ends), and a stream of 1200-byte
//! data datagrams sealed, opened and acknowledged, against the bytes moved.
//!
//! `cargo bench -p p2ner-net --bench auth`

use bytes::Bytes;
use p2ner_net::{NetConfig, NetState};
use std::net::SocketAddr;
use std::time::Instant;

fn shuttle(now: u64, from: &mut NetState, from_addr: SocketAddr, to: &mut NetState) -> usize {
    let mut v = Vec::new();
    while let Some(t) = from.poll_transmit(now) {
        v.push(t.bytes.to_vec());
    }
    for b in &v {
        to.handle_datagram(now, from_addr, b);
    }
    to.flush_acks(now);
    v.len()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u32 = std::env::var("P2NER_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (aa, ba): (SocketAddr, SocketAddr) =
        ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
    // Handshakes: fresh states each time (key generation not counted).
    let mut total = std::time::Duration::ZERO;
    for i in 0..n {
        let mut a = NetState::new(NetConfig::default(), 2 * i + 1, 0);
        let mut b = NetState::new(NetConfig::default(), 2 * i + 2, 0);
        let t = Instant::now();
        a.send_unreliable(0, ba, b"hi").unwrap();
        for _ in 0..4 {
            shuttle(0, &mut a, aa, &mut b);
            shuttle(0, &mut b, ba, &mut a);
        }
        total += t.elapsed();
        assert!(a.is_established(ba) && b.is_established(aa));
    }
    println!(
        "handshake (cookie + Noise XX, both ends): {:.0} µs each over {n}",
        total.as_secs_f64() * 1e6 / n as f64
    );

    // Data: 20 MB of chunks, sealed at a, opened at b, acks sealed back.
    let mut a = NetState::new(NetConfig::default(), 1, 0);
    let mut b = NetState::new(NetConfig::default(), 2, 0);
    a.send_unreliable(0, ba, b"hi").unwrap();
    for _ in 0..4 {
        shuttle(0, &mut a, aa, &mut b);
        shuttle(0, &mut b, ba, &mut a);
    }
    let chunk = Bytes::from(vec![7u8; 50_000]);
    let (mut now, mut seq, mut bytes, mut dgrams) = (1u64, 0u64, 0u64, 0usize);
    let t = Instant::now();
    while bytes < 20_000_000 {
        now += 1_000;
        while a.send_chunk(now, ba, 1, seq, chunk.clone()).is_ok() {
            seq += 1;
            bytes += chunk.len() as u64;
        }
        dgrams += shuttle(now, &mut a, aa, &mut b);
        shuttle(now, &mut b, ba, &mut a);
        while b.poll_event().is_some() {}
        while a.poll_event().is_some() {}
        a.handle_timeout(now);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "data through sealed links: {:.0} Mbit/s of chunks, {:.2} µs per datagram (seal + open + ack), {} datagrams",
        bytes as f64 * 8.0 / secs / 1e6,
        secs * 1e6 / dgrams as f64,
        dgrams
    );
}
