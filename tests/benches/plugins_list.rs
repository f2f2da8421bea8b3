//! Wall time of `p2ner plugins list` with 30 plugin libraries on the path.
//!
//! Run with `cargo build --release --workspace && cargo bench -p p2ner-tests
//! --bench plugins_list`. The 30 libraries are copies of the built-in
//! plugins under distinct file names: each is opened, checked (ELF, ABI
//! version, full layout) and asked to describe itself, as a real one would be.

use std::process::Command;
use std::time::{Duration, Instant};

const LIBRARIES: usize = 30;
const RUNS: usize = 25;

fn time_list(dir: &std::path::Path, home: &std::path::Path) -> Vec<Duration> {
    let mut cmd = Command::new(p2ner_tests::p2ner_bin());
    cmd.arg("--plugin-dir")
        .arg(dir)
        .args(["plugins", "list", "--json"])
        .env_remove("P2NER_PLUGIN_PATH")
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .current_dir(home);
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let out = cmd.output().expect("run p2ner");
            let elapsed = start.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            elapsed
        })
        .collect();
    times.sort();
    times
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let sources = [
        p2ner_tests::builtin_plugin("p2ner_output_null"),
        p2ner_tests::builtin_plugin("p2ner_input_synthetic"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for i in 0..LIBRARIES {
        let source = &sources[i % sources.len()];
        std::fs::copy(
            source,
            dir.path().join(format!("libbench_plugin_{i:02}.so")),
        )
        .unwrap();
    }
    let empty = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    // The exe folder (target/release) adds the two built-ins to both runs.
    let baseline = time_list(empty.path(), home.path());
    let loaded = time_list(dir.path(), home.path());
    println!("p2ner plugins list --json, {RUNS} runs each (release build)");
    println!(
        "  built-ins only (2 libraries)   median {:6.2} ms  min {:6.2} ms  max {:6.2} ms",
        ms(baseline[RUNS / 2]),
        ms(baseline[0]),
        ms(baseline[RUNS - 1])
    );
    println!(
        "  with {LIBRARIES} more libraries        median {:6.2} ms  min {:6.2} ms  max {:6.2} ms  (target < 50 ms)",
        ms(loaded[RUNS / 2]),
        ms(loaded[0]),
        ms(loaded[RUNS - 1])
    );
}
