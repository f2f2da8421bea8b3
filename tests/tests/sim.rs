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
    // ...and the whole-datagram overhead is what the network layer costs: a
    // 51-byte header per 1200-byte fragment (4.4%), a data ack per fragment
    // the peer forwards (about 2.3%), control messages and their acks. The
    // simulator counts it as a real run does since it runs the network
    // layer (10.8% here; a real run at load 0.5 measured 11.8%).
    let overhead =
        r.subscribers.iter().map(|s| s.overhead).sum::<f64>() / r.subscribers.len() as f64;
    assert!(overhead <= 0.12, "{}", report(&r));
}

#[test]
fn pull_over_tree_plays_a_capped_swarm_at_load_0_7() {
    let r = run(&capped("pull", "tree", 0.7, 50));
    eprintln!("pull x tree at load 0.7: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.98, "{}", report(&r));
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
// least the base degree. The gap: 0.5x peers still miss most, and no peer
// gathers its start lead before the 3 s startup timeout.
#[test]
fn pull_over_mesh_at_load_0_9_plays_92_percent_not_yet_99() {
    let r = run(&capped("pull", "mesh", 0.9, 50));
    eprintln!("pull x mesh at load 0.9: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.92, "{}", report(&r));
    let mut c: Vec<f64> = r.subscribers.iter().map(|s| s.continuity).collect();
    c.sort_by(f64::total_cmp);
    assert!(c[c.len() / 10] >= 0.75, "{}", report(&r));
}
// Push along the tree's stripes (one parent per substream, admitted by
// uplink capacity). Issue 10 asks for >= 0.99 for every subscriber at load
// 0.9; push x tree reaches a 0.999 mean (min 0.97) at load 0.5 and a 0.93
// mean at 0.8, and collapses at 0.9 (mean about 0.3 in the capacity
// benchmark): these tests hold the levels reached; the gap is open.
// Since the simulator runs the real network layer (fragments, LEDBAT, the
// cap's token bucket, acks) these levels are lower: 0.986 (min 0.94) at
// 0.5, 0.947 at 0.8, 0.987 with a 1.5x publisher; and the overhead is
// counted in whole datagrams as a real run counts it (about 12.5%;
// duplicates 2.3% at 0.5, 0.6% at 0.8), so the bounds follow.

#[test]
fn push_over_tree_plays_a_capped_swarm_at_load_0_5() {
    let r = run(&capped("push", "tree", 0.5, 50));
    eprintln!("push x tree at load 0.5: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.98, "{}", report(&r));
    assert!(
        r.subscribers.iter().all(|s| s.continuity >= 0.93),
        "{}",
        report(&r)
    );
    assert!(duplicate_share(&r) <= 0.03, "{}", report(&r));
    let overhead =
        r.subscribers.iter().map(|s| s.overhead).sum::<f64>() / r.subscribers.len() as f64;
    assert!(overhead <= 0.14, "{}", report(&r));
}

#[test]
fn push_over_tree_plays_a_capped_swarm_at_load_0_8_on_average() {
    let r = run(&capped("push", "tree", 0.8, 50));
    eprintln!("push x tree at load 0.8: {}", report(&r));
    assert!(mean_continuity(&r) >= 0.92, "{}", report(&r));
    let overhead =
        r.subscribers.iter().map(|s| s.overhead).sum::<f64>() / r.subscribers.len() as f64;
    assert!(overhead <= 0.14, "{}", report(&r));
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
    assert!(mean_continuity(&r) >= 0.98, "{}", report(&r));
}
