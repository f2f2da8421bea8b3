//! The plugin runtime, end to end: the real `p2ner` binary and real plugin
//! libraries (built-in, out-of-tree template, broken fixtures).

use std::path::Path;

use p2ner_engine::plugins::{ComponentError, Origin, Registry, SearchDir};
use p2ner_plugin_api::abi_stable::std_types::{ROption, RVec};
use p2ner_plugin_api::{
    synthetic, ChunkRef, InputState, Link, Params, PeerId, SchedAction, SchedContext,
};
use p2ner_tests::*;

fn registry_of(dirs: &[&Path], pins: &[(&str, &str)]) -> Registry {
    let dirs = dirs
        .iter()
        .map(|d| SearchDir {
            path: d.to_path_buf(),
            origin: Origin::Flag,
        })
        .collect();
    let pins = pins
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Registry::load(dirs, pins)
}

#[test]
fn builtin_plugins_are_listed_and_inspected_by_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(p2ner(home.path()).args(["plugins", "list", "--json"]));
    assert!(ok, "{stderr}");
    assert!(stderr.is_empty(), "unexpected problems: {stderr}");
    let listed = listed(&stdout);
    for expected in [
        ("p2ner.input", "synthetic", "p2ner-input-synthetic"),
        ("p2ner.output", "null", "p2ner-output-null"),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(listed.contains(&expected), "{expected:?} not in {listed:?}");
    }
    let (ok, stdout, stderr) = run(p2ner(home.path()).args(["plugins", "inspect", "synthetic"]));
    assert!(ok, "{stderr}");
    for needle in [
        "p2ner.input/synthetic",
        "bitrate_kbps",
        "chunk_ms",
        "default: 1000",
        "Plugin ABI    1.0.0",
    ] {
        assert!(
            stdout.contains(needle),
            "'{needle}' missing from:\n{stdout}"
        );
    }
    let (ok, _, stderr) = run(p2ner(home.path()).args(["plugins", "inspect", "no-such-thing"]));
    assert!(!ok);
    assert!(
        stderr.contains("no component or library named 'no-such-thing'"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
}

#[test]
fn builtin_plugins_instantiate_through_their_cdylibs_and_stream() {
    let registry = registry_of(&[&profile_dir()], &[]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());

    let mut input = registry
        .new_input(
            "synthetic",
            None,
            &Params::new()
                .with("bitrate_kbps", "400")
                .with("chunk_ms", "50"),
        )
        .unwrap();
    let mut output = registry
        .new_output("null", None, &Params::new().with("verify", "true"))
        .unwrap();
    let format = input.start(0).unwrap();
    assert_eq!(
        (format.container.as_str(), format.chunk_us),
        ("synthetic", 50_000)
    );
    output.start(&format).unwrap();

    let mut chunks = RVec::new();
    assert_eq!(input.poll(999_999, &mut chunks).unwrap(), InputState::Live);
    assert_eq!(chunks.len(), 20, "one second of 50 ms chunks");
    for (seq, chunk) in chunks.iter().enumerate() {
        assert_eq!(synthetic::verify(&chunk.data), Some(seq as u64));
        let chunk = ChunkRef {
            seq: seq as u64,
            pts_us: chunk.pts_us,
            duration_us: chunk.duration_us,
            keyframe: chunk.keyframe,
            data: chunk.data.as_slice().into(),
        };
        output.push(&chunk).unwrap();
    }
    // A corrupted chunk is caught by the output's check, across the boundary.
    let mut bad = chunks[3].data.to_vec();
    bad[20] ^= 0xff;
    output
        .push(&ChunkRef {
            seq: 99,
            pts_us: 0,
            duration_us: 0,
            keyframe: false,
            data: bad.as_slice().into(),
        })
        .unwrap();
    let report = output.finish().unwrap();
    assert_eq!((report.chunks, report.errors), (21, 1));
    assert_eq!(report.bytes, 20 * 2500 + bad.len() as u64);

    // Parameters are checked by the host before the plugin sees them.
    let err = registry
        .new_output("null", None, &Params::new().with("verfy", "true"))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("unknown parameter 'verfy'; it takes: verify"),
        "{err}"
    );
    let err = registry
        .new_input("synthetic", None, &Params::new().with("bitrate_kbps", "0"))
        .err()
        .unwrap();
    assert!(
        matches!(err, ComponentError::Plugin { .. }) && err.to_string().contains("positive"),
        "{err}"
    );
    // Version requirements.
    let req = "^2".parse().unwrap();
    let err = registry
        .new_output("null", Some(&req), &Params::new())
        .err()
        .unwrap();
    assert!(matches!(err, ComponentError::WrongVersion { .. }), "{err}");
    let err = registry
        .new_scheduler("pull-rarest", None, &Params::new())
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("no p2ner.scheduler named 'pull-rarest'")
            && text.contains(&profile_dir().display().to_string()),
        "{text}"
    );
}

#[test]
fn the_template_built_out_of_tree_is_listed_and_schedules() {
    let library = template_library();
    let dir = plugin_dir(&[&library]);
    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["plugins", "list", "--json"]));
    assert!(ok, "{stderr}");
    let expected = (
        "p2ner.scheduler".to_owned(),
        "round-robin".to_owned(),
        "p2ner-scheduler-roundrobin".to_owned(),
    );
    assert!(listed(&stdout).contains(&expected), "{stdout}");
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .args(["plugins", "check"])
        .arg(dir.path()));
    assert!(ok, "{stdout}{stderr}");

    // And it really schedules, through the ABI.
    let registry = registry_of(&[dir.path()], &[]);
    let mut scheduler = registry
        .new_scheduler(
            "round-robin",
            Some(&"0.1".parse().unwrap()),
            &Params::new().with("fanout", "1"),
        )
        .unwrap();
    let mut out = RVec::new();
    let ctx = SchedContext {
        local: PeerId(0),
        is_source: true,
        seed: 1,
        chunk_us: 100_000,
        window_chunks: 64,
        chunk_bytes: 12_500,
    };
    scheduler.on_start(0, &ctx, &mut out).unwrap();
    for peer in [1, 2] {
        scheduler
            .on_neighbour_up(0, PeerId(peer), Link::BOTH, &mut out)
            .unwrap();
    }
    for seq in 0..4 {
        scheduler
            .on_chunk(0, seq, ROption::RNone, &mut out)
            .unwrap();
    }
    let sent: Vec<(u64, u64)> = out
        .iter()
        .map(|a| match a {
            SchedAction::SendChunk { peer, seq } => (peer.0, *seq),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent, vec![(1, 0), (2, 1), (1, 2), (2, 3)]);
}

#[test]
fn broken_libraries_are_refused_by_name_and_the_rest_load() {
    let null = builtin_plugin("p2ner_output_null");
    let dir = plugin_dir(&[
        &null,
        &fixture_library("not-a-plugin"),
        &fixture_library("changed-interface"),
        &fixture_library("other-abi"),
        &fixture_library("init-panics"),
    ]);
    let bytes = std::fs::read(&null).unwrap();
    // Headers intact, loadable segments cut off: what an interrupted copy leaves.
    std::fs::write(dir.path().join("libtruncated.so"), &bytes[..4096]).unwrap();
    std::fs::write(
        dir.path().join("libgarbage.so"),
        b"\x7fELF this is not really a library, just noise".repeat(40),
    )
    .unwrap();
    std::fs::write(dir.path().join("libempty.so"), b"").unwrap();

    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .args(["plugins", "check"])
        .arg(dir.path()));
    assert!(!ok, "check must fail:\n{stdout}\n{stderr}");
    for (file, cause) in [
        ("libfixture_not_a_plugin.so", "not a p2ner plugin"),
        ("libfixture_changed_interface.so", "does not match"),
        ("libfixture_changed_interface.so", "Error: too many fields"),
        (
            "libfixture_other_abi.so",
            "built for p2ner plugin ABI 2.0.0, but this p2ner uses ABI 1.0.0",
        ),
        (
            "libfixture_init_panics.so",
            "init panicked: deliberate panic during registration",
        ),
        ("libtruncated.so", "truncated"),
        ("libgarbage.so", "error"),
        ("libempty.so", "error"),
    ] {
        // The problem's first line names the file; detail lines may follow.
        let lines: Vec<&str> = stderr.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.starts_with("error: ") && l.contains(file))
            .unwrap_or_else(|| panic!("{file} not named in:\n{stderr}"));
        let end = lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("error: ") || l.starts_with("warning: "))
            .map_or(lines.len(), |p| start + 1 + p);
        let block = lines[start..end].join("\n");
        assert!(
            block.contains(cause),
            "{file}: expected '{cause}' in:\n{block}"
        );
    }
    // The layout report is summarised, not dumped.
    assert!(stderr.lines().count() < 25, "too verbose:\n{stderr}");
    assert!(
        stdout.contains("libp2ner_output_null.so: p2ner-output-null"),
        "{stdout}"
    );
    assert!(stdout.contains("8 libraries checked: 1 loaded"), "{stdout}");

    // Listing with the same folder still works and still shows the good one.
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["plugins", "list", "--json"]));
    assert!(ok, "{stderr}");
    assert!(listed(&stdout)
        .iter()
        .any(|(g, n, _)| g == "p2ner.output" && n == "null"));
    assert!(stderr.contains("libfixture_other_abi.so"), "{stderr}");
}

#[test]
fn a_panicking_component_fails_alone_and_the_process_lives() {
    let dir = plugin_dir(&[
        &fixture_library("panicky"),
        &builtin_plugin("p2ner_output_null"),
    ]);
    let registry = registry_of(&[dir.path()], &[]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    let mut scheduler = registry
        .new_scheduler("panicky", None, &Params::new())
        .unwrap();
    let mut out = RVec::new();
    let ctx = SchedContext {
        local: PeerId(1),
        is_source: false,
        seed: 0,
        chunk_us: 100_000,
        window_chunks: 8,
        chunk_bytes: 12_500,
    };
    scheduler.on_start(0, &ctx, &mut out).unwrap();
    let err = scheduler.on_tick(42, &mut out).unwrap_err();
    assert!(err.panicked, "{err}");
    assert!(
        err.message.contains("deliberate panic in on_tick at 42"),
        "{err}"
    );
    assert!(
        err.message.contains("panicky/src/lib.rs"),
        "location missing: {err}"
    );
    let again = scheduler
        .on_neighbour_up(43, PeerId(2), Link::BOTH, &mut out)
        .unwrap_err();
    assert!(again.message.contains("poisoned"), "{again}");
    // Another instance, and other plugins, are unaffected.
    let mut fresh = registry
        .new_scheduler("panicky", None, &Params::new())
        .unwrap();
    fresh.on_start(0, &ctx, &mut out).unwrap();
    let mut output = registry.new_output("null", None, &Params::new()).unwrap();
    output
        .push(&ChunkRef {
            seq: 0,
            pts_us: 0,
            duration_us: 0,
            keyframe: true,
            data: b"abc".as_slice().into(),
        })
        .unwrap();
    assert_eq!(output.finish().unwrap().chunks, 1);
}

#[test]
fn plugin_logs_reach_the_host_filter() {
    let dir = plugin_dir(&[&fixture_library("panicky")]);
    let home = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(p2ner(home.path())
        .env("RUST_LOG", "fixture_panicky=info")
        .args(["plugins", "check"])
        .arg(dir.path()));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("panicky scheduler created"),
        "plugin log not forwarded:\n{stderr}"
    );
    let (ok, _, stderr) = run(p2ner(home.path())
        .env("RUST_LOG", "fixture_panicky=warn")
        .args(["plugins", "check"])
        .arg(dir.path()));
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("panicky scheduler created"),
        "filter ignored:\n{stderr}"
    );
}

#[test]
fn a_conflict_is_reported_with_both_paths_and_a_pin_resolves_it() {
    let dup = fixture_library("dup-null");
    let dir = plugin_dir(&[&builtin_plugin("p2ner_output_null"), &dup]);
    let home = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(p2ner(home.path())
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["plugins", "list"]));
    assert!(ok, "{stderr}");
    let conflict = stderr
        .lines()
        .find(|l| l.contains("conflict: p2ner.output/null"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        conflict.contains(
            &dir.path()
                .join("libfixture_dup_null.so")
                .display()
                .to_string()
        ),
        "{conflict}"
    );
    assert!(
        conflict.contains(
            &dir.path()
                .join("libp2ner_output_null.so")
                .display()
                .to_string()
        ),
        "{conflict}"
    );
    let registry = registry_of(&[dir.path()], &[]);
    assert!(matches!(
        registry.new_output("null", None, &Params::new()),
        Err(ComponentError::Conflict { .. })
    ));

    let manifest = home.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        "[pins]\n\"p2ner.output/null\" = \"fixture-dup-null\"\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .arg("--plugin-dir")
        .arg(dir.path())
        .arg("--plugins-toml")
        .arg(&manifest)
        .args(["plugins", "inspect", "p2ner.output/null", "--json"]));
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("conflict"), "{stderr}");
    let registry = registry_of(&[dir.path()], &[("p2ner.output/null", "fixture-dup-null")]);
    let c = registry
        .find(p2ner_plugin_api::Group::Output, "null", None)
        .unwrap();
    assert_eq!(c.library.info.name.as_str(), "fixture-dup-null");
    assert!(stdout.contains("fixture-dup-null"));
}

#[test]
fn the_same_library_twice_loads_once_with_a_warning() {
    let null = builtin_plugin("p2ner_output_null");
    let a = plugin_dir(&[&null]);
    let b = plugin_dir(&[&null]);
    let registry = registry_of(&[a.path(), b.path(), a.path()], &[]);
    assert_eq!(registry.libraries().len(), 1);
    let warnings: Vec<String> = registry.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("warning: ") && warnings[0].contains("already loaded from"),
        "{warnings:?}"
    );
    assert!(registry.new_output("null", None, &Params::new()).is_ok());
}

#[test]
fn a_missing_plugin_dir_named_on_the_command_line_is_an_error() {
    let home = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(p2ner(home.path()).args([
        "--plugin-dir",
        "/nonexistent/p2ner-plugins",
        "plugins",
        "list",
    ]));
    assert!(ok);
    assert!(
        stderr.contains(
            "error: /nonexistent/p2ner-plugins: cannot read plugin folder (from --plugin-dir)"
        ),
        "{stderr}"
    );
}
