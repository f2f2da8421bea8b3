//! Cost of one component call through the plugin ABI versus a direct call.
//!
//! Run with `cargo build --release --workspace && cargo bench -p p2ner-tests
//! --bench abi_call`. The component is the real `null` output: through the
//! ABI it is the cdylib loaded by the engine's registry (sabi_trait vtable,
//! panic guard, `RResult`); directly it is the same type from the rlib.

use std::hint::black_box;
use std::time::{Duration, Instant};

use p2ner_engine::plugins::Registry;
use p2ner_plugin_api::{ChunkRef, Output, Params};

const CALLS: u64 = 20_000_000;
const ROUNDS: usize = 7;

fn chunk(data: &[u8]) -> ChunkRef<'_> {
    ChunkRef {
        seq: 1,
        pts_us: 2,
        duration_us: 3,
        keyframe: false,
        data: data.into(),
    }
}

/// Best of several rounds, in ns per call: the least disturbed measurement.
fn best_ns(mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..CALLS {
            f();
        }
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / CALLS as f64
}

fn main() {
    let dir = p2ner_tests::profile_dir();
    let registry = Registry::load_dirs(&[&dir]);
    let mut via_abi = registry
        .new_output("null", None, &Params::new())
        .unwrap_or_else(|e| panic!("{e} (build with `cargo build --release --workspace` first)"));
    let mut direct = p2ner_output_null::Null::new(&Params::new()).unwrap();
    let mut dynamic: Box<dyn Output> =
        Box::new(p2ner_output_null::Null::new(&Params::new()).unwrap());
    let data = [7u8; 64];

    let abi = best_ns(|| {
        let _ = black_box(via_abi.push(&black_box(chunk(&data))));
    });
    let inlined = best_ns(|| {
        let _ = black_box(Output::push(
            black_box(&mut direct),
            black_box(chunk(&data)),
        ));
    });
    let dyn_call = best_ns(|| {
        let _ = black_box(black_box(&mut dynamic).push(black_box(chunk(&data))));
    });
    println!("component call: Output::push of a 64-byte chunk, best of {ROUNDS} x {CALLS} calls");
    println!("  direct (static, inlinable)   {inlined:6.2} ns/call");
    println!("  direct (&mut dyn Output)     {dyn_call:6.2} ns/call");
    println!("  through the plugin ABI       {abi:6.2} ns/call");
    println!(
        "  ABI overhead vs static call  {:6.2} ns/call (target < 5)",
        abi - inlined
    );
    println!(
        "  ABI overhead vs dyn call     {:6.2} ns/call",
        abi - dyn_call
    );
}
