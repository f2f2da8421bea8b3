//! The upload cap holds across all neighbours: measured rate within 5%.

use bytes::Bytes;
use p2ner_net::{Endpoint, Event, NetConfig, SendError};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_cap_within_5_percent_across_neighbours() {
    const CAP_KBPS: u64 = 8_000;
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = NetConfig {
        upload_kbps: Some(CAP_KBPS),
        ..NetConfig::default()
    };
    let (a, _ea) = Endpoint::bind(lo, cfg).await.unwrap();
    let mut peers = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..3 {
        let (b, mut eb) = Endpoint::bind(lo, NetConfig::default()).await.unwrap();
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = bytes.clone();
        tokio::spawn(async move {
            while let Some(ev) = eb.recv().await {
                if let Event::Chunk { data, .. } = ev {
                    c.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        counters.push(bytes);
        peers.push(b);
    }
    let addrs: Vec<_> = peers.iter().map(|p| p.local_addr()).collect();
    let t0 = Instant::now();
    let run = Duration::from_secs(6);
    let warm = Duration::from_secs(1);
    let mut mark = None;
    let mut seq = 0u64;
    let chunk = Bytes::from(vec![3u8; 8192]);
    // Bounded: at most this many chunks (far more than 6 s at the cap).
    while t0.elapsed() < run && seq < 1_000_000 {
        if mark.is_none() && t0.elapsed() >= warm {
            let s = a.stats();
            let recv: u64 = peers.iter().map(|p| p.stats().total.data.bytes_recv).sum();
            mark = Some((
                Instant::now(),
                s.total.data.bytes_sent + s.total.control.bytes_sent,
                recv,
            ));
        }
        let mut any = false;
        for &to in &addrs {
            match a.send_chunk(to, 0, seq, chunk.clone()) {
                Ok(()) => {
                    seq += 1;
                    any = true;
                }
                Err(SendError::WouldBlock) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(a.capacity(to).rate_bps <= CAP_KBPS * 1000);
        }
        if !any {
            a.writable(addrs[(seq % 3) as usize], Duration::from_millis(5))
                .await;
        }
    }
    let (t1, sent1, recv1) = mark.unwrap();
    let s = a.stats();
    let recv2: u64 = peers.iter().map(|p| p.stats().total.data.bytes_recv).sum();
    let secs = t1.elapsed().as_secs_f64();
    let sent_kbps =
        (s.total.data.bytes_sent + s.total.control.bytes_sent - sent1) as f64 * 8.0 / secs / 1000.0;
    let recv_kbps = (recv2 - recv1) as f64 * 8.0 / secs / 1000.0;
    let cap = CAP_KBPS as f64;
    eprintln!(
        "upload cap {cap} kbit/s: sent {sent_kbps:.0} kbit/s ({:+.2}%), received {recv_kbps:.0} kbit/s ({:+.2}%) over 3 neighbours",
        (sent_kbps / cap - 1.0) * 100.0,
        (recv_kbps / cap - 1.0) * 100.0
    );
    assert!(
        (sent_kbps - cap).abs() / cap <= 0.05,
        "sent {sent_kbps} kbit/s vs cap {cap}"
    );
    assert!(
        (recv_kbps - cap).abs() / cap <= 0.05,
        "received {recv_kbps} kbit/s vs cap {cap}"
    );
    // Every neighbour got a fair share (round robin): none starved.
    for p in &s.peers {
        assert!(
            p.1.data.bytes_sent as f64 > 0.2 * s.total.data.bytes_sent as f64,
            "{:?}",
            p
        );
    }
    assert_eq!(s.upload_cap_bps, Some(CAP_KBPS * 1000));
}
