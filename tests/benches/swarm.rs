//! The streaming benchmark: 1 publisher + N subscribers on loopback, 1 Mbit/s
//! synthetic stream, for each scheduler x overlay pair. Prints continuity
//! (mean, min), startup (median, p95), source-to-playback lag (p50, p95),
//! overhead, CPU and peak RSS per subscriber, and the share of the upload
//! served by peers rather than the publisher.
//!
//! `P2NER_BENCH_SUBSCRIBERS` (default 50) and `P2NER_BENCH_SECS` (default 60)
//! scale it; run with `cargo bench -p p2ner-tests --bench swarm`.

use std::time::{Duration, Instant};

use p2ner_engine::stream::percentile;
use p2ner_tests::swarm::{f, Proc, Swarm};

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (CPU seconds, peak RSS in MB) of a running process, from /proc.
fn usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz = 100.0; // USER_HZ on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks / hz, hwm_kb / 1024.0))
}

fn main() {
    let n = env("P2NER_BENCH_SUBSCRIBERS", 50) as usize;
    let secs = env("P2NER_BENCH_SECS", 60);
    println!("{n} subscribers, {secs} s, 1000 kbit/s synthetic, loopback");
    for (scheduler, overlay) in [
        ("pull", "mesh"),
        ("push", "mesh"),
        ("pull", "tree"),
        ("push", "tree"),
    ] {
        let s = Swarm::start(None);
        let (publisher, stream) = s.publish(&[
            "--for",
            &(secs + 30).to_string(),
            "--scheduler",
            scheduler,
            "--overlay",
            overlay,
        ]);
        let mut subs: Vec<Proc> = (0..n)
            .map(|i| s.subscribe(&format!("sub{i}"), &stream, secs, &[]))
            .collect();
        let started = Instant::now();
        // Sample CPU and RSS just before the subscribers end.
        std::thread::sleep(
            Duration::from_secs(secs as u64).saturating_sub(Duration::from_millis(1500)),
        );
        let use_: Vec<(f64, f64)> = subs.iter().filter_map(|p| usage(p.child.id())).collect();
        let elapsed = started.elapsed().as_secs_f64();
        let pub_usage = usage(publisher.child.id());
        let sums: Vec<serde_json::Value> = subs
            .iter_mut()
            .filter_map(|p| {
                s.summary(p, Duration::from_secs(60))
                    .map_err(|e| eprintln!("{e}"))
                    .ok()
            })
            .collect();
        let cont: Vec<f64> = sums.iter().map(|v| f(v, "continuity")).collect();
        let ms = |key: &str| -> Vec<u64> {
            sums.iter()
                .filter_map(|v| v[key].as_f64())
                .map(|x| x as u64)
                .collect()
        };
        let (startup, lag50, lag95) = (ms("startup_ms"), ms("lag_ms_p50"), ms("lag_ms_p95"));
        let up_peers: f64 = sums.iter().map(|v| f(v, "bytes_up")).sum();
        let overhead: f64 =
            sums.iter().map(|v| f(v, "overhead")).sum::<f64>() / sums.len().max(1) as f64;
        let cpu = use_.iter().map(|u| u.0).sum::<f64>() / use_.len().max(1) as f64 / elapsed;
        let rss = use_.iter().map(|u| u.1).sum::<f64>() / use_.len().max(1) as f64;
        // The publisher's upload: its own JSON is not collected (it is still
        // running), so take peers' downloads minus what peers uploaded.
        let down: f64 = sums.iter().map(|v| f(v, "bytes_down")).sum();
        let from_publisher = (down - up_peers).max(0.0);
        println!(
            "{scheduler:>4} x {overlay:<4}: continuity mean {:.4} min {:.4} | startup median {} ms p95 {} ms | lag p50 {} ms p95 {} ms | overhead {:.1}% | CPU {:.2}% of a core, RSS {:.1} MB per subscriber | peers served {:.1}% of upload | publisher CPU {:.1}% | {} of {n} reported",
            cont.iter().sum::<f64>() / cont.len().max(1) as f64,
            cont.iter().copied().fold(1.0, f64::min),
            percentile(&startup, 0.5).unwrap_or(0),
            percentile(&startup, 0.95).unwrap_or(0),
            percentile(&lag50, 0.5).unwrap_or(0),
            percentile(&lag95, 0.95).unwrap_or(0),
            100.0 * overhead,
            100.0 * cpu,
            rss,
            100.0 * up_peers / (up_peers + from_publisher).max(1.0),
            pub_usage.map_or(0.0, |u| 100.0 * u.0 / elapsed),
            sums.len(),
        );
    }
}
