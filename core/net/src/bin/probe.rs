//! `p2ner-net-probe`: a minimal sender/receiver of the data channel, used by
//! the network-namespace tests (and handy by hand) to measure transfers over
//! real, impaired links. Prints one JSON object per line.
//!
//! ```text
//! p2ner-net-probe recv --bind 127.0.0.1:9000 [--secs 30]
//! p2ner-net-probe send --to 127.0.0.1:9000 [--chunks N] [--size BYTES]
//!                      [--secs S] [--warmup S] [--upload-kbps K] [--target-ms T]
//! ```
//!
//! The receiver prints `{"ready": ADDR}` once bound, answers pings (requests)
//! and prints a summary when no chunk arrived for two seconds or `--secs`
//! ran out. The sender pushes chunks as fast as the window allows (until
//! `--chunks` were sent or `--secs` elapsed), pings every 100 ms to measure
//! the RTT seen by control traffic, waits until everything is acknowledged,
//! and prints its measurements.

use bytes::Bytes;
use p2ner_net::{Endpoint, Event, NetConfig, SendError};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value for {name}: {v}"))
        })
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let mut cfg = NetConfig::default();
    if let Some(k) = arg(&args, "--upload-kbps") {
        cfg.upload_kbps = Some(k);
    }
    if let Some(t) = arg::<u64>(&args, "--target-ms") {
        cfg.target_delay = Duration::from_millis(t);
    }
    if let Some(p) = arg(&args, "--max-payload") {
        cfg.max_payload = p;
    }
    match mode {
        "recv" => recv(&args, cfg).await,
        "send" => send(&args, cfg).await,
        _ => {
            eprintln!("usage: p2ner-net-probe recv --bind ADDR | send --to ADDR [--chunks N] [--size B] [--secs S]");
            std::process::exit(2);
        }
    }
}

async fn recv(args: &[String], cfg: NetConfig) {
    let bind: SocketAddr = arg(args, "--bind").unwrap_or("127.0.0.1:0".parse().unwrap());
    let secs: f64 = arg(args, "--secs").unwrap_or(60.0);
    let (ep, mut ev) = Endpoint::bind(bind, cfg).await.expect("bind");
    println!("{}", json!({ "ready": ep.local_addr().to_string() }));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let (mut first, mut last) = (None, t0);
    loop {
        let idle = if chunks > 0 { 2.0 } else { secs };
        let wait =
            Duration::from_secs_f64(idle).min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, ev.recv()).await {
            Ok(Some(Event::Chunk { data, .. })) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                chunks += 1;
                bytes += data.len() as u64;
            }
            Ok(Some(Event::Request { from, id, payload })) => ep.respond(from, id, payload),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let span = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    let st = ep.stats();
    println!(
        "{}",
        json!({
            "mode": "recv",
            "chunks": chunks,
            "bytes": bytes,
            "span_s": span,
            "goodput_kbps": if span > 0.0 { bytes as f64 * 8.0 / span / 1000.0 } else { 0.0 },
            "stats": st,
        })
    );
}

async fn send(args: &[String], cfg: NetConfig) {
    let to: SocketAddr = arg(args, "--to").expect("--to ADDR");
    let bind: SocketAddr = arg(args, "--bind").unwrap_or("127.0.0.1:0".parse().unwrap());
    let chunks: u64 = arg(args, "--chunks").unwrap_or(u64::MAX);
    let size: usize = arg(args, "--size").unwrap_or(16_384);
    let secs: f64 = arg(args, "--secs").unwrap_or(3600.0);
    let warmup: f64 = arg(args, "--warmup").unwrap_or(0.0);
    let (ep, mut ev) = Endpoint::bind(bind, cfg).await.expect("bind");
    tokio::spawn(async move { while ev.recv().await.is_some() {} });

    // Base RTT of control traffic on the idle link.
    let mut idle_rtt = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        if ep
            .request(to, Bytes::from_static(b"ping"), Duration::from_secs(2))
            .await
            .is_ok()
        {
            idle_rtt.push(t.elapsed().as_micros() as u64);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Pings and window samples during the transfer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let ep = ep.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rtts = Vec::new();
            let mut qd = Vec::new();
            let mut cwnd = Vec::new();
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let in_window = t0.elapsed().as_secs_f64() >= warmup;
                let t = Instant::now();
                let r = ep
                    .request(to, Bytes::from_static(b"ping"), Duration::from_secs(2))
                    .await;
                if in_window {
                    if r.is_ok() {
                        rtts.push(t.elapsed().as_micros() as u64);
                    }
                    let s = ep.stats();
                    if let Some(p) = s.peers.get(&to) {
                        qd.push(p.queuing_delay_us);
                        cwnd.push(p.cwnd_bytes);
                    }
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return (rtts, qd, cwnd);
                }
            }
        })
    };

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    let mut warm_mark: Option<(Instant, u64, u64)> = None;
    let data = Bytes::from(vec![0x5Au8; size]);
    while sent < chunks && Instant::now() < deadline {
        if warm_mark.is_none() && t0.elapsed().as_secs_f64() >= warmup {
            let s = ep.stats();
            warm_mark = Some((
                Instant::now(),
                s.total.data.bytes_sent,
                s.total.control.bytes_sent,
            ));
        }
        match ep.send_chunk(to, 1, sent, data.clone()) {
            Ok(()) => sent += 1,
            Err(SendError::WouldBlock) => ep.writable(to, Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let t_end_send = Instant::now();
    let s_end = ep.stats();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Drain: wait until everything is acknowledged (bounded).
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ep.stats();
        let p = s.peers.get(&to).cloned().unwrap_or_default();
        if p.inflight_bytes + p.queued_bytes == 0 || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total_s = t0.elapsed().as_secs_f64();
    let (mut rtts, mut qd, cwnd) = pinger.await.unwrap_or_default();
    let cwnd_mean = if cwnd.is_empty() {
        0
    } else {
        cwnd.iter().sum::<u64>() / cwnd.len() as u64
    };
    let st = ep.stats();
    let (wstart, wdata, wctl) = warm_mark.unwrap_or((t0, 0, 0));
    let wspan = (t_end_send - wstart).as_secs_f64().max(1e-9);
    let data_bps = (s_end.total.data.bytes_sent - wdata) as f64 * 8.0 / wspan;
    let all_bps =
        (s_end.total.data.bytes_sent - wdata + s_end.total.control.bytes_sent - wctl) as f64 * 8.0
            / wspan;
    let dgrams = s_end
        .peers
        .get(&to)
        .map(|p| p.data.datagrams_sent)
        .unwrap_or(0);
    let avg_dgram = if dgrams > 0 {
        s_end.total.data.bytes_sent as f64 / dgrams as f64
    } else {
        0.0
    };
    // Including IP (20) and UDP (8) headers, as a link counts.
    let wire_bps = data_bps * (avg_dgram + 28.0) / avg_dgram.max(1.0);
    let idle_p50 = pct(&mut idle_rtt, 0.5);
    let busy_p50 = pct(&mut rtts, 0.5);
    let qd_mean = if qd.is_empty() {
        0
    } else {
        qd.iter().sum::<u64>() / qd.len() as u64
    };
    println!(
        "{}",
        json!({
            "mode": "send",
            "chunks": sent,
            "bytes": sent * size as u64,
            "send_s": (t_end_send - t0).as_secs_f64(),
            "total_s": total_s,
            "goodput_kbps": (sent * size as u64) as f64 * 8.0 / total_s / 1000.0,
            "window_data_kbps": data_bps / 1000.0,
            "window_all_kbps": all_bps / 1000.0,
            "window_wire_kbps": wire_bps / 1000.0,
            "idle_rtt_us_p50": idle_p50,
            "busy_rtt_us_p50": busy_p50,
            "busy_rtt_us_p90": pct(&mut rtts, 0.9),
            "added_delay_us": busy_p50.saturating_sub(idle_p50),
            "ledbat_queuing_delay_us_mean": qd_mean,
            "ledbat_queuing_delay_us_p90": pct(&mut qd, 0.9),
            "cwnd_mean": cwnd_mean,
            "stats": st,
        })
    );
}
