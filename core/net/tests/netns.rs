//! Transfers over links impaired by the kernel: a private network namespace
//! per test, loss from nftables on its loopback, a bottleneck from `tc tbf`.
//! The probe binary (`p2ner-net-probe`) runs inside the namespace through
//! `ip netns exec`. Skipped, with a message, where namespaces cannot be
//! created (not root, no iproute2/nftables).

use p2ner_netns::Netns;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

/// A child killed on drop, with its stdout lines collected by a thread.
struct Probe {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Probe {
    fn spawn(mut cmd: Command) -> Probe {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn probe");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Probe { child, lines: rx }
    }

    fn line(&self, wait: Duration) -> Value {
        let l = self
            .lines
            .recv_timeout(wait)
            .expect("probe printed a line in time");
        serde_json::from_str(&l).expect("JSON")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROBE: &str = env!("CARGO_BIN_EXE_p2ner-net-probe");

/// Run a receiver and a sender inside `ns`; returns (sender, receiver) JSON.
fn transfer(ns: &Netns, send_args: &[&str], limit: Duration) -> (Value, Value) {
    let mut rc = ns.exec(PROBE);
    rc.args(["recv", "--bind", "127.0.0.1:0", "--secs"])
        .arg((limit.as_secs() + 5).to_string());
    let recv = Probe::spawn(rc);
    let ready = recv.line(Duration::from_secs(10));
    let addr = ready["ready"].as_str().unwrap().to_string();
    let mut sc = ns.exec(PROBE);
    sc.args(["send", "--to", &addr]).args(send_args);
    let send = Probe::spawn(sc);
    let s = send.line(limit);
    let r = recv.line(Duration::from_secs(15));
    (s, r)
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn kernel_loss_transfer_completes_and_degrades_gracefully() {
    let mut rows = Vec::new();
    for pct in [0u32, 1, 5, 20] {
        let Some(ns) = Netns::new() else {
            return skip("cannot create a network namespace (needs root and iproute2)");
        };
        if pct > 0 && !ns.udp_loss(pct) {
            return skip("nftables netdev ingress rule could not be installed");
        }
        let chunks = 300;
        let t0 = Instant::now();
        let (s, r) = transfer(
            &ns,
            &["--chunks", &chunks.to_string(), "--size", "16384"],
            Duration::from_secs(120),
        );
        let elapsed = t0.elapsed();
        assert_eq!(
            r["chunks"].as_u64(),
            Some(chunks),
            "all chunks arrive at {pct}% loss: {r}"
        );
        assert_eq!(r["bytes"].as_u64(), Some(chunks * 16384));
        let loss = s["stats"]["total"]["loss_rate"].as_f64().unwrap();
        let kbps = f(&s, "goodput_kbps");
        rows.push((pct, kbps, loss, elapsed));
        if pct > 0 {
            // The kernel really dropped (data and acks both cross lo's ingress).
            assert!(
                loss > pct as f64 / 100.0 / 3.0,
                "{pct}%: measured loss {loss}"
            );
            assert!(
                s["stats"]["total"]["data_retransmissions"]
                    .as_u64()
                    .unwrap()
                    > 0
            );
        }
    }
    eprintln!("loss%  goodput_kbps  measured_loss  wall");
    for (p, k, l, e) in &rows {
        eprintln!("{p:>4}  {k:>12.0}  {l:>12.3}  {e:?}");
    }
    // Graceful: heavier loss is slower but still moves data at a usable rate.
    let at = |p| rows.iter().find(|r| r.0 == p).unwrap().1;
    assert!(at(20) < at(0), "20% loss must cost throughput");
    assert!(
        at(20) > 2_000.0,
        "20% loss still above 2 Mbit/s: {}",
        at(20)
    );
}

#[test]
fn ledbat_fills_2mbit_bottleneck_near_target_delay() {
    let Some(ns) = Netns::new() else {
        return skip("cannot create a network namespace (needs root and iproute2)");
    };
    // A deep buffer (up to 500 ms): a greedy sender would fill it.
    if !ns.tbf("2mbit", "500ms") {
        return skip("tc tbf not available");
    }
    let (s, _r) = transfer(
        &ns,
        &["--secs", "14", "--warmup", "4", "--size", "8192"],
        Duration::from_secs(60),
    );
    let wire = f(&s, "window_wire_kbps");
    // On lo the request and its response both cross the one tbf queue.
    let added_ms = f(&s, "added_delay_us") / 1000.0 / 2.0;
    let ledbat_ms = f(&s, "ledbat_queuing_delay_us_mean") / 1000.0;
    eprintln!(
        "2 Mbit/s tbf: data on the wire {wire:.0} kbit/s ({:.1}%), goodput {:.0} kbit/s, \
         control RTT idle {} us busy p50 {} us p90 {} us, added queuing delay per crossing {added_ms:.1} ms, \
         LEDBAT estimate {ledbat_ms:.1} ms (target 25 ms), mean cwnd {} B",
        wire / 20.0,
        f(&s, "window_data_kbps"),
        s["idle_rtt_us_p50"],
        s["busy_rtt_us_p50"],
        s["busy_rtt_us_p90"],
        s["cwnd_mean"]
    );
    assert!(wire >= 1800.0, "at least 90% of 2 Mbit/s: {wire} kbit/s");
    // Near the target: well below what the 500 ms buffer would allow.
    assert!(added_ms < 40.0, "added queuing delay {added_ms} ms");
    assert!(
        added_ms > 5.0,
        "a bottleneck that never queues was not measured: {added_ms} ms"
    );
}
