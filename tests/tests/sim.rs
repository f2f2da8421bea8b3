//! The real scheduler and overlay libraries in the simulator: quick,
//! deterministic checks of the distribution logic itself, on a simulated
//! clock and network (a flash crowd of 20 joining within 2 s).

use p2ner_engine::sim::{self, SimConfig, SimResult};
use p2ner_tests::*;

fn run(cfg: &SimConfig) -> SimResult {
    let result = sim::run(&sim_registry(), cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.subscribers.len(), cfg.subscribers);
    let c: Vec<f64> = result.subscribers.iter().map(|s| s.continuity).collect();
    eprintln!(
        "{} x {}, loss {}: continuity mean {:.4} min {:.4}, peers served {:.1}% of upload",
        cfg.scheduler.0,
        cfg.overlay.0,
        cfg.loss,
        c.iter().sum::<f64>() / c.len() as f64,
        c.iter().copied().fold(1.0, f64::min),
        100.0 * result.peer_share(),
    );
    result
}

fn mean_continuity(r: &SimResult) -> f64 {
    r.subscribers.iter().map(|s| s.continuity).sum::<f64>() / r.subscribers.len() as f64
}

#[test]
fn pull_over_mesh_reaches_every_subscriber_and_peers_carry_the_load() {
    let r = run(&SimConfig::default());
    assert!(r.subscribers.iter().all(|s| s.chunks_played > 200), "{r:?}");
    assert!(mean_continuity(&r) >= 0.99, "{r:?}");
    assert!(r.peer_share() >= 0.8, "{r:?}");
}

#[test]
fn pull_over_mesh_with_loss_degrades_gracefully() {
    let cfg = SimConfig {
        loss: 0.03,
        ..SimConfig::default()
    };
    let r = run(&cfg);
    assert!(r.subscribers.iter().all(|s| s.chunks_played > 200), "{r:?}");
    assert!(mean_continuity(&r) >= 0.95, "{r:?}");
}

#[test]
fn runs_are_deterministic_for_a_seed() {
    let cfg = SimConfig {
        subscribers: 8,
        duration_us: 8_000_000,
        ..SimConfig::default()
    };
    let a = run(&cfg);
    let b = run(&cfg);
    assert_eq!(a.subscribers, b.subscribers);
    let c = run(&SimConfig { seed: 2, ..cfg });
    assert_ne!(a.subscribers, c.subscribers);
}

fn capped(scheduler: &str, overlay: &str, load: f64, n: usize) -> SimConfig {
    SimConfig {
        subscribers: n,
        duration_us: 30_000_000,
        source_upload_kbps: 2000,
        peer_uploads_kbps: caps_for_load(1000, n, 2000, load),
        scheduler: (scheduler.into(), p2ner_plugin_api::Params::new()),
        overlay: (overlay.into(), capped_overlay_params(overlay)),
        ..SimConfig::default()
    }
}

fn report(r: &SimResult) -> String {
    let mut c: Vec<f64> = r.subscribers.iter().map(|s| s.continuity).collect();
    c.sort_by(f64::total_cmp);
    let overhead =
        r.subscribers.iter().map(|s| s.overhead).sum::<f64>() / r.subscribers.len().max(1) as f64;
    format!(
        "mean {:.4} min {:.4} p10 {:.4} overhead {:.1}% duplicates {:.2}%",
        mean_continuity(r),
        c[0],
        c[c.len() / 10],
        100.0 * overhead,
        100.0 * duplicate_share(r)
    )
}

/// Duplicate chunks received per chunk played: the upload a scheduler
/// wasted, apart from what the network layer spends on framing and acks.
fn duplicate_share(r: &SimResult) -> f64 {
    let dup: u64 = r.subscribers.iter().map(|s| s.duplicate_chunks).sum();
    let played: u64 = r.subscribers.iter().map(|s| s.chunks_played).sum();
    dup as f64 / played.max(1) as f64
}

// Capped, heterogeneous swarms near the fluid bound: 50 subscribers whose
// uploads are 0.5x, 1x and 1.6x of a base, a publisher at 2x the bitrate.
// Deterministic for the seed, so the bounds are what these runs reach, with
// a little room; the figures at higher loads are in the capacity benchmark.

#[test]
fn pull_over_mesh_plays_a_capped_swarm_at_load_0_7() {
    let r = run(&capped("pull", "mesh", 0.7, 50));
    eprintln!("pull x mesh at load 0.7: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.995, "{}", report(&r));
    assert!(
        r.subscribers.iter().all(|s| s.continuity >= 0.94),
        "{}",
        report(&r)
    );
    // The scheduler wastes next to nothing on duplicates...
    assert!(duplicate_share(&r) <= 0.005, "{}", report(&r));
    // ...and the whole-datagram overhead is what the network layer costs:
    // about 54 bytes of framing and seal per 1200-byte fragment (4.5%), a
    // sealed data ack per two fragments the peer forwards, control messages
    // and their acks. The simulator counts it as a real run does since it
    // runs the network layer (13.4% here on the authenticated wire; 10.8%
    // before links were sealed).
    let overhead =
        r.subscribers.iter().map(|s| s.overhead).sum::<f64>() / r.subscribers.len() as f64;
    assert!(overhead <= 0.145, "{}", report(&r));
    // Its parts add up to it for every subscriber, and each is there:
    // fragments' headers and seals come to at least 52 bytes per 1200, a
    // signed chunk header rides with every chunk.
    for s in &r.subscribers {
        let o = &s.overhead_parts;
        let sum = o.framing + o.acks + o.messages + o.chunks;
        assert!((sum - s.overhead).abs() < 1e-9, "{o:?} vs {}", s.overhead);
        assert!(o.framing >= 0.04 && o.acks > 0.0, "{o:?}");
        assert!(o.messages > 0.0 && o.chunks > 0.004, "{o:?}");
    }
}

#[test]
fn pull_over_tree_plays_a_capped_swarm_at_load_0_7() {
    let r = run(&capped("pull", "tree", 0.7, 50));
    eprintln!("pull x tree at load 0.7: {}", report(&r));
    // Seed 1: 0.984 before pull batched its announcements and the tree let
    // capped peers adopt children in other stripes, 0.978 since (0.980 with
    // 4 stripes instead of 8): a small loss for pull x tree, kept visible.
    assert!(mean_continuity(&r) >= 0.975, "{}", report(&r));
    // A tree repairs slowly: the worst peers play worse than a mesh's.
    let good = r
        .subscribers
        .iter()
        .filter(|s| s.continuity >= 0.95)
        .count();
    assert!(good * 10 >= r.subscribers.len() * 9, "{}", report(&r));
}

#[test]
fn a_publisher_with_1_5x_the_bitrate_is_enough() {
    let cfg = SimConfig {
        source_upload_kbps: 1500,
        peer_uploads_kbps: caps_for_load(1000, 50, 1500, 0.7),
        ..capped("pull", "mesh", 0.7, 50)
    };
    let r = run(&cfg);
    eprintln!("pull x mesh, publisher 1.5x, load 0.7: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.99, "{}", report(&r));
    assert!(
        r.subscribers.iter().all(|s| s.continuity >= 0.95),
        "{}",
        report(&r)
    );
}

// Issue 10's target at load 0.9 is every subscriber >= 0.99; this is what
// pull x mesh reaches today, kept as a floor so a regression fails. Seed 1
// over the real network layer: mean 0.897 (p10 0.738, min 0.31) with
// announcements every tick, everything due within 1 s fetched first and
// mesh halving the degree of 0.5x peers; mean 0.930 (p10 0.79, min 0.45,
// overhead 14 %) with announcements batched as long as they would cost
// over 5 % of the upload (up to 200 ms), only what is due within 300 ms
// fetched first (the rest rarest first), and every capped peer keeping at
// least the base degree. Sealed, authenticated links cost it 0.02: mean
// 0.908 (p10 0.72, overhead 17.6 %). The gap: 0.5x peers still miss most,
// and no peer gathers its start lead before the 3 s startup timeout.
#[test]
fn pull_over_mesh_at_load_0_9_plays_90_percent_not_yet_99() {
    let r = run(&capped("pull", "mesh", 0.9, 50));
    eprintln!("pull x mesh at load 0.9: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.89, "{}", report(&r));
    let mut c: Vec<f64> = r.subscribers.iter().map(|s| s.continuity).collect();
    c.sort_by(f64::total_cmp);
    assert!(c[c.len() / 10] >= 0.70, "{}", report(&r));
}
// Push along the tree's stripes (8 substreams, one parent each, admitted
// by uplink capacity; peers with spare upload adopt children in stripes
// short of it). Issue 10 asks for >= 0.99 for every subscriber at load
// 0.9; these tests hold the levels reached, the gap is open. Before
// repairs were bounded at the publisher and parent chains kept loop-free,
// push x tree collapsed at 0.9 (mean 0.46, min 0.28) and push x mesh
// played 0.2-0.37 at every capped load. Near the bound the loss is spread
// over all classes (0.86 / 0.88 / 0.89 at 0.9 for 0.5x / 1x / 1.6x), with
// the uplinks 83-86 % busy; overhead is counted in whole datagrams
// (framing, seals, acks, control: about 16-22 % on the authenticated
// wire, which cost push x tree 0.01-0.04 continuity at loads 0.7-0.9
// against the unsealed one), so its bound follows.

fn mean_overhead(r: &SimResult) -> f64 {
    r.subscribers.iter().map(|s| s.overhead).sum::<f64>() / r.subscribers.len() as f64
}

fn p10(r: &SimResult) -> f64 {
    let mut c: Vec<f64> = r.subscribers.iter().map(|s| s.continuity).collect();
    c.sort_by(f64::total_cmp);
    c[c.len() / 10]
}

#[test]
fn push_over_tree_at_load_0_5_plays_98_percent() {
    let r = run(&capped("push", "tree", 0.5, 50));
    eprintln!("push x tree at load 0.5: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.98, "{}", report(&r));
    assert!(
        r.subscribers.iter().all(|s| s.continuity >= 0.90),
        "{}",
        report(&r)
    );
    assert!(duplicate_share(&r) <= 0.03, "{}", report(&r));
    assert!(mean_overhead(&r) <= 0.17, "{}", report(&r));
}

// On 1 ms paths with uplinks no faster than their caps, a datagram can wait
// behind its sender's burst and its ack behind the receiver's uploads far
// longer than the RTT samples say; a probe timeout without a floor for that
// wait declared every such datagram lost (11,700 spurious losses of 11,700,
// each a retransmission): 0.944 at 28 % overhead, the chunks' part 11.8 %.
#[test]
fn push_over_tree_at_load_0_5_on_1_ms_paths_plays_98_percent() {
    let r = run(&SimConfig {
        latency_us: 1_000,
        ..capped("push", "tree", 0.5, 50)
    });
    eprintln!("push x tree at load 0.5, 1 ms: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.98, "{}", report(&r));
    assert!(mean_overhead(&r) <= 0.19, "{}", report(&r));
    let chunks = r
        .subscribers
        .iter()
        .map(|s| s.overhead_parts.chunks)
        .sum::<f64>()
        / r.subscribers.len() as f64;
    assert!(chunks <= 0.04, "{chunks}: {}", report(&r));
}

#[test]
fn push_over_tree_at_load_0_8_plays_91_percent() {
    let r = run(&capped("push", "tree", 0.8, 50));
    eprintln!("push x tree at load 0.8: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.89, "{}", report(&r));
    assert!(p10(&r) >= 0.84, "{}", report(&r));
    assert!(mean_overhead(&r) <= 0.205, "{}", report(&r));
}

#[test]
fn push_over_tree_at_load_0_9_plays_82_percent_not_yet_99() {
    let r = run(&capped("push", "tree", 0.9, 50));
    eprintln!("push x tree at load 0.9: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.80, "{}", report(&r));
    assert!(p10(&r) >= 0.70, "{}", report(&r));
    // 21.8 % on the sealed wire (18.6 % unsealed): tree peers keep slack
    // for repairs, which is more repair traffic at the weakest uplinks.
    assert!(mean_overhead(&r) <= 0.23, "{}", report(&r));
}

#[test]
fn push_over_mesh_at_load_0_9_plays_78_percent_not_yet_99() {
    let r = run(&capped("push", "mesh", 0.9, 50));
    eprintln!("push x mesh at load 0.9: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.76, "{}", report(&r));
    assert!(mean_overhead(&r) <= 0.23, "{}", report(&r));
}

#[test]
fn push_over_tree_with_a_publisher_of_1_5x_the_bitrate() {
    let cfg = SimConfig {
        source_upload_kbps: 1500,
        peer_uploads_kbps: caps_for_load(1000, 50, 1500, 0.5),
        ..capped("push", "tree", 0.5, 50)
    };
    let r = run(&cfg);
    eprintln!("push x tree, publisher 1.5x, load 0.5: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.96, "{}", report(&r));
}

/// Not a check: where a capped push x tree run loses, per upload class
/// (continuity, what each class uploaded against its cap, duplicates) and
/// on the wire (queue drops). `P2NER_DEBUG_LOAD` (0.9), run with
/// `cargo test -p p2ner-tests --test sim -- --ignored --nocapture push_over_tree_breakdown`.
#[test]
#[ignore = "a diagnostic that prints, it asserts nothing"]
fn push_over_tree_breakdown() {
    let load: f64 = std::env::var("P2NER_DEBUG_LOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.9);
    // RUST_LOG=p2ner_scheduler_push=trace,p2ner_overlay_tree=trace shows
    // each peer's parents, depths and queue once a second.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let overlay = std::env::var("P2NER_DEBUG_OVERLAY").unwrap_or_else(|_| "tree".into());
    let mut cfg = capped("push", &overlay, load, 50);
    // P2NER_DEBUG_UNCAPPED=1: the default swarm (ample upload) instead.
    if std::env::var_os("P2NER_DEBUG_UNCAPPED").is_some() {
        cfg = SimConfig {
            scheduler: ("push".into(), p2ner_plugin_api::Params::new()),
            overlay: (overlay.clone(), p2ner_plugin_api::Params::new()),
            ..SimConfig::default()
        };
    }
    if let Ok(k) = std::env::var("P2NER_DEBUG_STRIPES") {
        cfg.scheduler.1 = p2ner_plugin_api::Params::new().with("stripes", &k);
        cfg.overlay.1 = p2ner_plugin_api::Params::new().with("stripes", &k);
    }
    if let Ok(v) = std::env::var("P2NER_DEBUG_PUSH") {
        for kv in v.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                cfg.scheduler.1 = cfg.scheduler.1.clone().with(k, v);
            }
        }
    }
    // P2NER_DEBUG_SECS: a longer run tells start-up losses from steady ones.
    if let Some(secs) = std::env::var("P2NER_DEBUG_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        cfg.duration_us = secs * 1_000_000;
    }
    let caps = cfg.peer_uploads_kbps.clone();
    let r = run(&cfg);
    let secs = cfg.duration_us as f64 / 1e6;
    for (class, cap) in caps.iter().enumerate() {
        let members: Vec<_> = r
            .subscribers
            .iter()
            .enumerate()
            .filter(|(i, _)| i % caps.len() == class)
            .map(|(_, s)| s)
            .collect();
        let k = members.len() as f64;
        let mean = |f: &dyn Fn(&p2ner_engine::stream::Summary) -> f64| {
            members.iter().map(|s| f(s)).sum::<f64>() / k
        };
        eprintln!(
            "cap {cap} kbit/s: continuity {:.3} (min {:.3}) up {:.0} kbit/s = {:.0}% of cap, down {:.0} kbit/s, late {:.0} missed {:.0} dup {:.0} overhead {:.1}%",
            mean(&|s| s.continuity),
            members.iter().map(|s| s.continuity).fold(1.0, f64::min),
            mean(&|s| s.bytes_up as f64 * 8.0 / 1000.0 / secs),
            100.0 * mean(&|s| s.bytes_up as f64 * 8.0 / 1000.0 / secs) / *cap as f64,
            mean(&|s| s.bytes_down as f64 * 8.0 / 1000.0 / secs),
            mean(&|s| s.chunks_late as f64),
            mean(&|s| s.chunks_missed as f64),
            mean(&|s| s.duplicate_chunks as f64),
            100.0 * mean(&|s| s.overhead),
        );
    }
    eprintln!(
        "publisher up {:.0} kbit/s; links {:?}",
        r.source_bytes_up as f64 * 8.0 / 1000.0 / secs,
        r.links
    );
}
