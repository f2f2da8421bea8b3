//! The engine benchmark: 10 streams at 300 kbit/s, published by one
//! `p2ner run` engine and subscribed by another, against the same 10
//! streams as 20 separate `p2ner publish`/`p2ner subscribe` processes: CPU
//! (over a measured window, after a warm-up) and RSS of each setup. Then
//! XML-RPC calls per second and the p50/p99 latency of `stats(ID)` from
//! Python's standard client, sequential and with 4 threads.
//!
//! `P2NER_BENCH_STREAMS` (default 10) and `P2NER_BENCH_SECS` (default 30)
//! scale it; run with `cargo bench -p p2ner-tests --bench engine`.

use std::process::Stdio;
use std::time::Duration;

use p2ner_tests::engine::{python, script, EngineProc};
use p2ner_tests::swarm::{spawn_in, Proc, Swarm};

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (CPU seconds so far, current RSS in MB) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (tick(11) + tick(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (cpu, rss_kb / 1024.0)
}

/// CPU share (of one core) and total RSS of `pids` over `secs` seconds.
fn measure(pids: &[u32], secs: u32) -> (f64, f64) {
    let before: f64 = pids.iter().map(|&p| usage(p).0).sum();
    std::thread::sleep(Duration::from_secs(secs as u64));
    let after: Vec<(f64, f64)> = pids.iter().map(|&p| usage(p)).collect();
    let cpu: f64 = after.iter().map(|u| u.0).sum::<f64>() - before;
    let rss: f64 = after.iter().map(|u| u.1).sum();
    (cpu / secs as f64 * 100.0, rss)
}

fn p2ner_remote(swarm: &Swarm, url: &str, args: &[&str]) -> String {
    let mut cmd = p2ner_tests::p2ner(swarm.dir.path());
    cmd.args(args).env("P2NER_ENGINE", url);
    let (ok, out, err) = p2ner_tests::run(&mut cmd);
    assert!(ok, "p2ner {args:?}: {err}");
    out.trim().to_owned()
}

fn main() {
    let n = env("P2NER_BENCH_STREAMS", 10);
    let secs = env("P2NER_BENCH_SECS", 30);
    let warmup = 8;
    println!("{n} streams at 300 kbit/s (synthetic, pull/mesh), loopback; CPU over {secs} s after {warmup} s");

    // Two engines.
    let swarm = Swarm::start(None);
    let publisher = EngineProc::start(swarm.dir.path(), "pub", &swarm.server_addr, &[]);
    let subscriber = EngineProc::start(swarm.dir.path(), "sub", &swarm.server_addr, &[]);
    let mut streams = Vec::new();
    for i in 0..n {
        let title = format!("bench {i}");
        streams.push(p2ner_remote(
            &swarm,
            &publisher.url,
            &["publish", "--title", &title, "--bitrate", "300"],
        ));
    }
    for s in &streams {
        p2ner_remote(&swarm, &subscriber.url, &["subscribe", s]);
    }
    std::thread::sleep(Duration::from_secs(warmup));
    let (cpu_e, rss_e) = measure(&[publisher.pid(), subscriber.pid()], secs);
    let totals = p2ner_remote(&swarm, &subscriber.url, &["stats"]);
    let totals: serde_json::Value = serde_json::from_str(&totals).expect("json");
    let conts: Vec<f64> = totals["sessions"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v["continuity"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    let min_cont = conts.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "2 engines:      CPU {cpu_e:6.1} % of a core   RSS {rss_e:7.1} MB   continuity min {min_cont:.4} over {} streams",
        conts.len()
    );

    // XML-RPC: stats(ID) on the subscribing engine, which is busy with n streams.
    for threads in ["1", "4"] {
        let (ok, out, err) = python(
            &script("bench_stats.py"),
            &[&subscriber.url, "s1", "5", threads],
            Duration::from_secs(60),
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        println!(
            "xmlrpc stats(): {threads} client thread(s): {:7.0} calls/s   p50 {:5.2} ms   p99 {:5.2} ms",
            v["calls_per_s"].as_f64().unwrap_or(0.0),
            v["p50_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0)
        );
    }
    drop(publisher);
    drop(subscriber);
    drop(swarm);

    // 2n processes.
    let swarm = Swarm::start(None);
    let mut procs: Vec<Proc> = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let key = format!("p{i}.key");
        let (p, id) = swarm.publish(&["--bitrate", "300", "--identity", &key]);
        procs.push(p);
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        let args = [
            "subscribe",
            "--server",
            &swarm.server_addr,
            id,
            "--listen",
            "127.0.0.1:0",
            "--quiet",
        ];
        procs.push(spawn_in(
            None,
            swarm.dir.path(),
            &args,
            &format!("s{i}"),
            Stdio::null(),
        ));
    }
    std::thread::sleep(Duration::from_secs(warmup));
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let (cpu_p, rss_p) = measure(&pids, secs);
    println!(
        "{} processes:   CPU {cpu_p:6.1} % of a core   RSS {rss_p:7.1} MB",
        pids.len()
    );
    println!(
        "engines / processes: CPU {:.2}x, RSS {:.2}x",
        cpu_e / cpu_p.max(0.001),
        rss_e / rss_p.max(0.001)
    );
}
