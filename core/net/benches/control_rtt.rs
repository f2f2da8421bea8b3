//! Control-channel round trips on loopback: a reliable message until its ack,
//! and a request until its response. Prints p50/p99.
//!
//! `cargo bench -p p2ner-net --bench control_rtt`

use bytes::Bytes;
use p2ner_net::{Endpoint, Event, NetConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("P2NER_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (a, _ea) = Endpoint::bind(lo, NetConfig::default()).await.unwrap();
        let (b, mut eb) = Endpoint::bind(lo, NetConfig::default()).await.unwrap();
        let bb = b.clone();
        tokio::spawn(async move {
            while let Some(ev) = eb.recv().await {
                if let Event::Request { from, id, payload } = ev {
                    bb.respond(from, id, payload);
                }
            }
        });
        let to = b.local_addr();
        let msg = Bytes::from(vec![1u8; 100]);
        let mut acked = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            a.send_reliable(to, msg.clone()).await.unwrap();
            acked.push(t.elapsed().as_micros() as u64);
        }
        let mut rr = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            a.request(to, msg.clone(), Duration::from_secs(2))
                .await
                .unwrap();
            rr.push(t.elapsed().as_micros() as u64);
        }
        println!(
            "reliable message until ack ({n}x): p50 {} us, p99 {} us",
            pct(&mut acked, 0.5),
            pct(&mut acked, 0.99)
        );
        println!(
            "request until response    ({n}x): p50 {} us, p99 {} us",
            pct(&mut rr, 0.5),
            pct(&mut rr, 0.99)
        );
        println!(
            "smoothed RTT seen by the endpoint: {} us",
            a.stats().total.rtt_us
        );
    });
}
