//! Loopback goodput of one data flow between two clients, and the CPU it
//! costs (getrusage: user + system time of this process per Mbit/s moved).
//!
//! Scenarios: both clients on one current-thread runtime (one core for the
//! whole transfer), and each client on its own thread (one core each); with
//! the default 1200-byte datagrams and with 8 KiB ones.
//!
//! `cargo bench -p p2ner-net --bench goodput` (P2NER_BENCH_SECS to change the
//! 3 s per scenario).

use bytes::Bytes;
use p2ner_net::{Endpoint, Event, NetConfig, SendError};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cfg(payload: usize) -> NetConfig {
    NetConfig {
        max_payload: payload,
        event_capacity: 4096,
        ..NetConfig::default()
    }
}

async fn sender(a: Endpoint, to: SocketAddr, secs: f64, chunk: usize) {
    let data = Bytes::from(vec![7u8; chunk]);
    let t0 = Instant::now();
    let mut seq = 0;
    while t0.elapsed().as_secs_f64() < secs {
        match a.send_chunk(to, 1, seq, data.clone()) {
            Ok(()) => seq += 1,
            Err(SendError::WouldBlock) => a.writable(to, Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

async fn receiver(mut eb: p2ner_net::Events, secs: f64) -> (u64, f64) {
    let mut bytes = 0u64;
    let mut first = None;
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 1.0);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline.into(), eb.recv()).await {
        if let Event::Chunk { data, .. } = ev {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            bytes += data.len() as u64;
        }
    }
    (
        bytes,
        first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0),
    )
}

fn report(name: &str, bytes: u64, span: f64, cpu: f64) {
    let mbit = bytes as f64 * 8.0 / 1e6;
    println!(
        "{name:<44} goodput {:>8.0} Mbit/s   CPU {:>5.2} s for {:>6.0} Mbit = {:>6.1} us/Mbit ({:.0}% of a core)",
        mbit / span,
        cpu,
        mbit,
        cpu / mbit * 1e6,
        cpu / span * 100.0
    );
}

fn one_core(payload: usize, secs: f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (a, _ea) = Endpoint::bind(lo, cfg(payload)).await.unwrap();
        let (b, eb) = Endpoint::bind(lo, cfg(payload)).await.unwrap();
        let c0 = cpu_seconds();
        let s = tokio::spawn(sender(a.clone(), b.local_addr(), secs, 64 * 1024));
        let (bytes, span) = receiver(eb, secs).await;
        s.await.unwrap();
        let cpu = cpu_seconds() - c0;
        report(
            &format!("one core, both clients, {payload} B datagrams"),
            bytes,
            span,
            cpu,
        );
        let st = a.stats().total;
        println!(
            "    sender: {} datagrams, loss rate {:.4}, cwnd {} B, rtt {} us",
            st.data.datagrams_sent, st.loss_rate, st.cwnd_bytes, st.rtt_us
        );
    });
}

fn two_threads(payload: usize, secs: f64) {
    let rt_b = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (b, eb) = rt_b.block_on(Endpoint::bind(lo, cfg(payload))).unwrap();
    let to = b.local_addr();
    let c0 = cpu_seconds();
    let th = std::thread::spawn(move || {
        let rt_a = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt_a.block_on(async {
            let (a, _ea) = Endpoint::bind(lo, cfg(payload)).await.unwrap();
            sender(a.clone(), to, secs, 64 * 1024).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        })
    });
    let (bytes, span) = rt_b.block_on(receiver(eb, secs));
    th.join().unwrap();
    let cpu = cpu_seconds() - c0;
    report(
        &format!("one core per client, {payload} B datagrams"),
        bytes,
        span,
        cpu,
    );
    drop(b);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: f64 = std::env::var("P2NER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    for payload in [1200, 8192] {
        one_core(payload, secs);
        two_threads(payload, secs);
    }
}
