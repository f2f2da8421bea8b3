//! A swarm strangers cannot break, at the session and plugin level: real
//! `p2ner` processes (a server, a publisher, six subscribers) on loopback,
//! and an attacker written here that joins through the server like any
//! peer and speaks the peer wire with the project's own libraries
//! (`p2ner_net::Endpoint`, `p2ner_proto::peer`), so that it keeps working
//! once the network layer authenticates peers. After each attack every
//! honest subscriber plays >= 0.99 and a newcomer joins and plays.
//!
//! And a publisher killed -9: its subscribers say so, end as `ended` (the
//! server's word) or `failed` (silence), and exit non-zero, with `--for` and
//! without.
//!
//! Swarm tests run one at a time (a lock), each bounded well under 60 s.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2ner_tests::attacker::Attacker;
use p2ner_tests::swarm::{f, Proc, Swarm};

static ONE_SWARM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_SWARM_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

const SUBSCRIBERS: usize = 6;

/// Waits until every subscriber's stats say it plays (bounded).
fn wait_playing(s: &Swarm, names: &[String], limit: Duration) {
    let start = Instant::now();
    loop {
        let playing = names.iter().all(|n| {
            std::fs::read_to_string(s.path(&format!("{n}.stats")))
                .unwrap_or_default()
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .is_some_and(|v| v["playing"] == true)
        });
        if playing {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "subscribers not all playing within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the publisher of a playing swarm; every subscriber must notice,
/// say so in one line, and exit non-zero with its state and reason in the
/// last stats line.
fn publisher_dies(run_for: Option<u32>) {
    let _one = lock();
    let s = Swarm::start(None);
    let (mut publisher, stream) = s.publish(&[]);
    let names: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("sub{i}")).collect();
    let mut subs: Vec<Proc> = names
        .iter()
        .map(|n| match run_for {
            Some(secs) => s.subscribe(n, &stream, secs, &[]),
            None => s.subscribe_open(n, &stream, &[]),
        })
        .collect();
    wait_playing(&s, &names, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    // kill -9: the publisher says goodbye to no one.
    publisher.kill();
    let killed = Instant::now();
    for sub in &mut subs {
        let (code, err, lines) = s.ended(sub, Duration::from_secs(25));
        let after = killed.elapsed();
        assert_eq!(
            code,
            Some(3),
            "{}: exit code {code:?} after {after:?}: {err}",
            sub.name
        );
        // The server's word comes within a few heartbeats (4 s TTL, asked
        // after 2 s of silence): well before the 10 s silence default.
        assert!(after < Duration::from_secs(15), "{}: {after:?}", sub.name);
        let line = err
            .lines()
            .find(|l| l.starts_with("stream ended:"))
            .unwrap_or_else(|| panic!("{}: no 'stream ended' line: {err}", sub.name));
        assert!(line.contains("publisher is offline"), "{line}");
        let summary = lines.last().expect("a summary line");
        assert_eq!(summary["final"], true, "{summary}");
        assert_eq!(summary["state"], "ended", "{summary}");
        assert!(
            summary["reason"]
                .as_str()
                .is_some_and(|r| r.contains("offline")),
            "{summary}"
        );
        assert!(f(summary, "chunks_played") > 0.0, "{summary}");
        let last_second = &lines[lines.len() - 2];
        assert_eq!(last_second["playing"], false, "{last_second}");
    }
}

#[test]
fn publisher_killed_with_for() {
    publisher_dies(Some(50));
}

#[test]
fn publisher_killed_without_for() {
    publisher_dies(None);
}

/// With the server gone too, nobody can say the publisher is offline:
/// the subscribers fail after the stream's silence time.
#[test]
fn publisher_and_server_killed_silence_fails() {
    let _one = lock();
    let mut s = Swarm::start(None);
    let (mut publisher, stream) = s.publish(&["--silence-ms", "4000"]);
    let names: Vec<String> = (0..2).map(|i| format!("sub{i}")).collect();
    let mut subs: Vec<Proc> = names
        .iter()
        .map(|n| s.subscribe_open(n, &stream, &[]))
        .collect();
    wait_playing(&s, &names, Duration::from_secs(15));
    s.server.kill();
    publisher.kill();
    let killed = Instant::now();
    for sub in &mut subs {
        let (code, err, lines) = s.ended(sub, Duration::from_secs(20));
        assert_eq!(code, Some(1), "{}: {err}", sub.name);
        assert!(
            killed.elapsed() >= Duration::from_secs(3),
            "{:?}",
            killed.elapsed()
        );
        assert!(err.contains("no new chunk for"), "{err}");
        let summary = lines.last().expect("a summary line");
        assert_eq!(summary["state"], "failed", "{summary}");
    }
}

/// The attacks below: a running swarm (6 subscribers for `SECS`), the
/// attack (on a runtime of the test's own), then a newcomer; every honest
/// subscriber and the newcomer must play >= 0.99. Returns the honest
/// subscribers' summaries for attack-specific checks.
fn attacked<F>(label: &str, attack: F) -> Vec<serde_json::Value>
where
    F: FnOnce(&Swarm, &str) -> String,
{
    const SECS: u32 = 24;
    let _one = lock();
    let s = Swarm::start(None);
    let (_publisher, stream) = s.publish(&["--for", "50"]);
    let names: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("sub{i}")).collect();
    let mut subs: Vec<Proc> = names
        .iter()
        .map(|n| s.subscribe(n, &stream, SECS, &[]))
        .collect();
    wait_playing(&s, &names, Duration::from_secs(12));
    let started = Instant::now();
    let figures = attack(&s, &stream);
    eprintln!("{label}: attack took {:?}; {figures}", started.elapsed());
    let mut newcomer = s.subscribe("newcomer", &stream, 8, &[]);
    let mut summaries = Vec::new();
    for sub in &mut subs {
        let sum = s
            .summary(sub, Duration::from_secs(SECS as u64 + 20))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        summaries.push(sum);
    }
    let late = s
        .summary(&mut newcomer, Duration::from_secs(25))
        .unwrap_or_else(|e| panic!("{label}: newcomer: {e}"));
    let c: Vec<f64> = summaries.iter().map(|v| f(v, "continuity")).collect();
    eprintln!(
        "{label}: continuity {c:?}, newcomer {}; refused {:?}",
        f(&late, "continuity"),
        summaries
            .iter()
            .map(|v| v["refused"].clone())
            .collect::<Vec<_>>()
    );
    for v in &summaries {
        assert!(f(v, "continuity") >= 0.99, "{label}: {v}");
    }
    assert!(f(&late, "chunks_played") > 0.0, "{label}: newcomer {late}");
    assert!(f(&late, "continuity") >= 0.99, "{label}: newcomer {late}");
    summaries
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn have(seqs: &[u64]) -> Vec<u8> {
    use p2ner_scheduler_pull::wire::{have, Advert};
    have(
        Advert {
            upload_kbps: 100_000,
            queued_ms: 0,
        },
        seqs,
    )
}

/// Links to every subscriber, then sends each a pull HAVE naming `seq(newest)`
/// ten times a second for five seconds.
fn have_attack(s: &Swarm, stream: &str, seq: fn(u64) -> u64) -> String {
    runtime().block_on(async {
        let a = Attacker::join(&s.server_addr, stream, "127.0.0.2:0", 0xbad).await;
        let victims = a.subscribers();
        assert_eq!(
            victims.len(),
            SUBSCRIBERS,
            "the server lists every subscriber"
        );
        let mut linked = 0;
        for &v in &victims {
            linked += a.hello(v).await as u32;
        }
        let start = Instant::now();
        while a.newest_heard.load(Ordering::Relaxed) == 0
            && start.elapsed() < Duration::from_secs(3)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut sent = 0;
        for _ in 0..50 {
            let newest = a.newest_heard.load(Ordering::Relaxed);
            for &v in &victims {
                a.scheduler(v, have(&[seq(newest)]));
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        format!(
            "linked to {linked} subscribers, {sent} forged HAVEs (newest heard {})",
            a.newest_heard.load(Ordering::Relaxed)
        )
    })
}

#[test]
fn a_pull_have_at_2_pow_62() {
    attacked("HAVE 2^62", |s, stream| have_attack(s, stream, |_| 1 << 62));
}

#[test]
fn a_pull_have_five_million_ahead() {
    attacked("HAVE now+5,000,000", |s, stream| {
        have_attack(s, stream, |newest| newest + 5_000_000)
    });
}

/// 30 fake neighbours (one host, 127.0.0.2) link to the publisher, keep
/// the links alive and request the newest chunks like leeches.
#[test]
fn thirty_fake_neighbours_at_the_publisher() {
    attacked("30 fake neighbours", |s, stream| {
        runtime().block_on(async {
            let started = Instant::now();
            let mut fakes = Vec::new();
            for i in 0..30u64 {
                fakes.push(
                    Attacker::join(&s.server_addr, stream, "127.0.0.2:0", 0xfa4e_0000 + i).await,
                );
            }
            let publisher = fakes[0].publisher();
            let mut linked = 0;
            for a in &fakes {
                linked += a.hello(publisher).await as u32;
            }
            use p2ner_scheduler_pull::wire::request;
            for round in 0..80u32 {
                for a in &fakes {
                    if round % 10 == 0 {
                        a.ping(publisher);
                    }
                    let newest = fakes
                        .iter()
                        .map(|f| f.newest_heard.load(Ordering::Relaxed))
                        .max()
                        .unwrap_or(0);
                    if newest > 0 {
                        a.scheduler(publisher, request(0, &[newest.saturating_sub(1), newest]));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let sent: u64 = fakes.iter().map(Attacker::bytes_sent).sum();
            let got: u64 = fakes.iter().map(Attacker::bytes_received).sum();
            // Each fake asked for every chunk about ten times over; it may
            // draw each at most twice (one copy and a repair): the ~8 s of
            // a 1000 kbit/s stream, twice, per fake, and framing.
            let stream_bytes = 1000 * 125 * started.elapsed().as_secs_f64() as u64;
            let most = 30 * 2 * stream_bytes * 13 / 10;
            assert!(got <= most, "the fakes drew {got} bytes, more than {most}");
            format!(
                "{linked} of 30 linked; the fakes sent {sent} bytes and drew {got} ({:.1}x)",
                got as f64 / sent.max(1) as f64
            )
        })
    });
}

/// 10,000 mesh peer-exchange messages, each naming 48 peers (what fits a
/// datagram; a receiver reads 8 of them), at one subscriber as fast as the
/// endpoint takes them.
#[test]
fn ten_thousand_peer_exchanges() {
    let summaries = attacked("10,000 PEX", |s, stream| {
        runtime().block_on(async {
            let a = Attacker::join(&s.server_addr, stream, "127.0.0.2:0", 0xbeef).await;
            let victim = a.subscribers()[0];
            assert!(a.hello(victim).await, "the victim takes the link");
            let peers: Vec<p2ner_plugin_api::PeerInfo> = (0..48u64)
                .map(|i| p2ner_plugin_api::PeerInfo {
                    id: p2ner_plugin_api::PeerId(0x1000 + i),
                    addr: format!("10.9.{}.{}:9", i / 250, i % 250).into(),
                })
                .collect();
            let msg = p2ner_overlay_mesh::encode_pex(&peers);
            for i in 0..10_000u32 {
                a.overlay(victim, msg.clone());
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            format!("10,000 exchanges of {} bytes sent to {victim}", msg.len())
        })
    });
    let limited: f64 = summaries
        .iter()
        .map(|v| v["refused"]["rate_limited"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(limited >= 1000.0, "the flood met the rate limit: {limited}");
}
