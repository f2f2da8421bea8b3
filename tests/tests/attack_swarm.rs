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

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
