//! The real scheduler and overlay libraries in the simulator: quick,
//! deterministic checks of the distribution logic itself, on a simulated
//! clock and network (a flash crowd of 20 joining within 2 s).

use p2ner_engine::plugins::Registry;
use p2ner_engine::sim::{self, SimConfig, SimResult};
use p2ner_tests::*;

/// Only the libraries a sim needs, so the test is about them alone.
fn registry() -> Registry {
    let libs = [
        "p2ner_scheduler_pull",
        "p2ner_scheduler_push",
        "p2ner_overlay_mesh",
        "p2ner_overlay_tree",
        "p2ner_input_synthetic",
        "p2ner_output_null",
    ]
    .map(builtin_plugin);
    let dir = plugin_dir(&libs.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    let registry = Registry::load_dirs(&[dir.path()]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    registry
}

fn run(cfg: &SimConfig) -> SimResult {
    let result = sim::run(&registry(), cfg).unwrap_or_else(|e| panic!("{e}"));
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
