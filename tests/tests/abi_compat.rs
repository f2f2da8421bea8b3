//! Old plugins keep working: libraries built against p2ner-plugin-api as
//! ABI 1.0 was released, taken from the repository's history, loaded and
//! run by today's engine (ABI 1.1 appended `Upload` and `on_upload` to the
//! scheduler and overlay vtables).
//!
//! The old crates come from [`OLD`], extracted with `git archive` into
//! `target/out-of-tree/abi-1.0/` and built there against their own
//! plugin-api and their own Cargo.lock. The engine calls `on_upload` on every
//! scheduler and overlay every tick; an ABI 1.0 library has no such vtable
//! entry, so a stream that plays proves the host falls back to the method's
//! default body.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p2ner_tests::swarm::{f, Proc, Swarm};
use p2ner_tests::*;

/// The ABI 1.0 that 1.1 extends: "Built-in overlay mesh and scheduler pull
/// (sans-IO, seeded); SchedContext.chunk_bytes". The first commit with the
/// interface as 1.1 found it (and with the built-in `pull` and `mesh`).
/// Earlier commits also said ABI 1.0.0 but had a different interface (no
/// `SchedContext::chunk_bytes`, `Output::push` by value): see
/// [`a_library_from_before_the_interface_settled_is_refused_by_layout`].
const OLD: &str = "5e4a140195905fe599ddb596dd16bd58f922f86b";

/// The first commit with the plugin template (ABI "1.0.0" as first written).
const FIRST: &str = "c9b9cd4242c2705c6639ed23ff7f2b701645de63";

/// A small workspace around the old plugin-api and built-ins, providing what
/// their manifests inherit (the repository's root manifest of that commit
/// names crates this extraction leaves out). abi_stable as pinned then and now.
/// `MEMBERS` is replaced by the extracted crates.
const WORKSPACE: &str = r#"[workspace]
resolver = "3"
members = MEMBERS
exclude = ["examples/plugin-template"]

[workspace.package]
edition = "2021"
rust-version = "1.85"
license = "MIT OR Apache-2.0"

[workspace.dependencies]
p2ner-plugin-api = { path = "plugin-api", version = "0.1.0" }
abi_stable = "0.11.3"
tracing = "0.1"
tracing-core = "0.1"
"#;

/// Where one commit's crates are extracted and built.
fn old_root(commit: &str) -> PathBuf {
    out_of_tree_target().join("abi-1.0").join(&commit[..7])
}

/// Extracts `paths` of `commit` from the repository's history into
/// `old_root(commit)/src`, with [`WORKSPACE`] around them.
fn extract(commit: &str, paths: &[&str]) -> PathBuf {
    let repo = workspace_root();
    let have = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "commit {commit} (the plugin-api as ABI 1.0 was released) is not in {}'s git \
         history: this test needs a clone with full history (not shallow; \
         `git fetch --unshallow`) and git on PATH",
        repo.display()
    );
    let src = old_root(commit).join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    // git archive | tar -x, without a shell.
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["archive", "--format=tar", commit])
        .args(paths)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(archive.stdout.take().unwrap())
        .status()
        .expect("tar");
    assert!(
        archive.wait().unwrap().success() && tar.success(),
        "git archive {commit} {paths:?} | tar -x failed"
    );
    let members: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| src.join(p).join("Cargo.toml").is_file() && !p.starts_with("examples/"))
        .collect();
    std::fs::write(
        src.join("Cargo.toml"),
        WORKSPACE.replace("MEMBERS", &format!("{members:?}")),
    )
    .unwrap();
    src
}

/// Builds `packages` of the workspace at `manifest` into
/// `old_root(commit)/target` (its own target: the old template's library has
/// today's file name); returns the folder with the libraries.
fn build(commit: &str, manifest: &Path, packages: &[&str]) -> PathBuf {
    let target = old_root(commit).join("target");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--manifest-path"])
        .arg(manifest);
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    cmd.env("CARGO_TARGET_DIR", &target);
    let (ok, _, stderr) = run(&mut cmd);
    assert!(
        ok,
        "building {} {packages:?} of {commit} failed:\n{stderr}",
        manifest.display()
    );
    target.join("debug")
}

/// The old libraries, built once per test binary: the template `round-robin`
/// and the built-ins `pull` and `mesh` of [`OLD`].
struct Old {
    template: PathBuf,
    pull: PathBuf,
    mesh: PathBuf,
}

fn old() -> &'static Old {
    static OLD_LIBS: std::sync::OnceLock<Old> = std::sync::OnceLock::new();
    OLD_LIBS.get_or_init(|| {
        let start = Instant::now();
        let src = extract(
            OLD,
            &[
                "Cargo.lock",
                "plugin-api",
                "plugins/scheduler-pull",
                "plugins/overlay-mesh",
                "examples/plugin-template",
            ],
        );
        // The template is its own workspace, with its own Cargo.lock of then.
        let dir = build(
            OLD,
            &src.join("examples/plugin-template/Cargo.toml"),
            &["p2ner-scheduler-roundrobin"],
        );
        // The built-ins, with the repository's Cargo.lock of then.
        build(
            OLD,
            &src.join("Cargo.toml"),
            &["p2ner-scheduler-pull", "p2ner-overlay-mesh"],
        );
        eprintln!("old libraries of {OLD} built in {:?}", start.elapsed());
        Old {
            template: library_file(&dir, "p2ner-scheduler-roundrobin"),
            pull: library_file(&dir, "p2ner-scheduler-pull"),
            mesh: library_file(&dir, "p2ner-overlay-mesh"),
        }
    })
}

/// `plugins list --json` with `dir`, which must raise no problem.
fn list(dir: &Path, home: &Path) -> Vec<serde_json::Value> {
    let (ok, stdout, stderr) = run(p2ner(home)
        .arg("--plugin-dir")
        .arg(dir)
        .args(["plugins", "list", "--json"]));
    assert!(ok, "{stderr}");
    assert!(stderr.is_empty(), "unexpected problems: {stderr}");
    serde_json::from_str::<serde_json::Value>(&stdout)
        .unwrap_or_else(|e| panic!("bad json ({e}): {stdout}"))
        .as_array()
        .expect("array")
        .clone()
}

#[test]
fn abi_1_0_libraries_pass_check_and_are_listed() {
    let old = old();
    let dir = plugin_dir(&[&old.template, &old.pull, &old.mesh]);
    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .args(["plugins", "check"])
        .arg(dir.path()));
    eprintln!("{stdout}{stderr}");
    assert!(ok, "check must pass:\n{stdout}{stderr}");
    assert!(stderr.is_empty(), "no problems expected: {stderr}");
    for needle in [
        "p2ner.scheduler/round-robin 0.1.0 instantiates with its defaults",
        "p2ner.scheduler/pull 0.1.0 instantiates with its defaults",
        "p2ner.overlay/mesh 0.1.0 instantiates with its defaults",
        "3 libraries checked: 3 loaded, 0 problems",
    ] {
        assert!(
            stdout.contains(needle),
            "'{needle}' missing from:\n{stdout}"
        );
    }

    // Listed alone: the old pull and mesh would conflict with today's.
    let dir = plugin_dir(&[&old.template]);
    let listed = list(dir.path(), home.path());
    let rr = listed
        .iter()
        .find(|c| c["group"] == "p2ner.scheduler" && c["name"] == "round-robin")
        .unwrap_or_else(|| panic!("round-robin not listed: {listed:?}"));
    assert_eq!(rr["library"], "p2ner-scheduler-roundrobin");
    assert_eq!(rr["version"], "0.1.0");
    // It is the old library: the description and parameter help of then.
    assert_eq!(
        rr["description"],
        "pushes each new chunk to the next neighbours in turn"
    );
    assert_eq!(rr["params"][0]["name"], "fanout");
    assert_eq!(rr["params"][0]["default"], "2");
    assert_eq!(
        Path::new(rr["path"].as_str().unwrap()),
        dir.path().join(old.template.file_name().unwrap())
    );
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["plugins", "inspect", "p2ner-scheduler-roundrobin"]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Plugin ABI    1.0.0"), "{stdout}");
}

/// Swarms run one at a time, as in swarm.rs: two at once on a small machine
/// would measure the machine.
static ONE_SWARM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `n` subscribers for `secs` of a stream published with `publish`;
/// every subscriber's continuity.
fn play(s: &Swarm, n: usize, secs: u32, publish: &[&str]) -> Vec<f64> {
    let _one = ONE_SWARM_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let (mut publisher, stream) =
        s.publish(&[&["--for", &(secs + 15).to_string()], publish].concat());
    let mut subs: Vec<Proc> = (0..n)
        .map(|i| s.subscribe(&format!("sub{i}"), &stream, secs, &[]))
        .collect();
    let summaries: Vec<_> = subs
        .iter_mut()
        .map(|p| {
            s.summary(p, Duration::from_secs(secs as u64 + 30))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert!(
        publisher.child.try_wait().unwrap().is_none(),
        "the publisher died: {}",
        std::fs::read_to_string(s.path("publisher.err")).unwrap_or_default()
    );
    publisher.kill();
    for sum in &summaries {
        assert!(f(sum, "chunks_played") > 0.0, "{sum}");
    }
    let c = summaries.iter().map(|s| f(s, "continuity")).collect();
    eprintln!(
        "{publish:?}, {n} subscribers for {secs} s: continuity {c:?} ({:?})",
        start.elapsed()
    );
    c
}

/// The old template scheduler over today's mesh: the publisher and every
/// subscriber make `round-robin` from the ABI 1.0 library, and the engine
/// calls its (absent) `on_upload` every tick.
#[test]
fn an_abi_1_0_scheduler_plays_in_a_real_swarm() {
    let old = old();
    let dir = plugin_dir(&[&old.template]);
    let mut s = Swarm::start(None);
    s.plugin_dirs = vec![dir.path().to_owned()];
    let c = play(&s, 4, 10, &["--scheduler", "round-robin"]);
    for (i, c) in c.iter().enumerate() {
        assert!(*c >= 0.95, "sub{i}: continuity {c}");
    }
}

/// A swarm whose every process has `libs` on its plugin path, each pinned
/// over today's built-in of the same name; checks that `plugins list` shows
/// the pinned files.
fn pinned_swarm(libs: &[(&str, &str, &Path)]) -> (Swarm, tempfile::TempDir) {
    let files: Vec<&Path> = libs.iter().map(|(_, _, p)| *p).collect();
    let dir = plugin_dir(&files);
    let mut s = Swarm::start(None);
    s.plugin_dirs = vec![dir.path().to_owned()];
    // Every process runs in the swarm's folder and reads ./plugins.toml.
    let mut pins = String::from("[pins]\n");
    let mut expect = Vec::new();
    for (group, name, file) in libs {
        let file = dir.path().join(file.file_name().unwrap());
        pins.push_str(&format!(
            "\"{group}/{name}\" = {:?}\n",
            file.display().to_string()
        ));
        expect.push((group, name, file));
    }
    std::fs::write(s.path("plugins.toml"), pins).unwrap();
    let (ok, stdout, stderr) = run(p2ner(s.dir.path())
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["plugins", "list", "--json"]));
    assert!(ok, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for (group, name, file) in expect {
        let c = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["group"] == *group && c["name"] == *name)
            .unwrap_or_else(|| panic!("{group}/{name} not listed: {stdout}"));
        assert_eq!(Path::new(c["path"].as_str().unwrap()), file, "{c}");
    }
    (s, dir)
}

/// The old built-in overlay `mesh`, pinned over today's, under today's
/// `pull`: the engine calls the ABI 1.0 overlay's (absent) `on_upload`
/// every tick too.
#[test]
fn an_abi_1_0_overlay_plays_in_a_real_swarm() {
    let old = old();
    let (s, _dir) = pinned_swarm(&[("p2ner.overlay", "mesh", &old.mesh)]);
    let c = play(&s, 4, 10, &["--scheduler", "pull", "--overlay", "mesh"]);
    for (i, c) in c.iter().enumerate() {
        assert!(*c >= 0.95, "sub{i}: continuity {c}");
    }
}

/// The old built-ins `pull` and `mesh` together, pinned over today's: both
/// components of the stream are ABI 1.0 libraries. At 100 kbit/s, because
/// the old pull serves a request only when `Capacity::can_send_bytes` holds
/// a whole chunk (see [`an_abi_1_0_pull_at_1_mbit_s_starves`]); 1250-byte
/// chunks fit in the data channel's first window.
#[test]
fn abi_1_0_pull_over_abi_1_0_mesh_plays_in_a_real_swarm() {
    let old = old();
    let (s, _dir) = pinned_swarm(&[
        ("p2ner.scheduler", "pull", &old.pull),
        ("p2ner.overlay", "mesh", &old.mesh),
    ]);
    let c = play(
        &s,
        4,
        10,
        &[
            "--scheduler",
            "pull",
            "--overlay",
            "mesh",
            "--bitrate",
            "100",
        ],
    );
    for (i, c) in c.iter().enumerate() {
        assert!(*c >= 0.95, "sub{i}: continuity {c}");
    }
}

/// The old `pull` at the default 1 Mbit/s loads, is made and gets every
/// event (no error, no panic) but plays nothing: it serves a request only
/// when `Capacity::can_send_bytes` holds a whole chunk, and today's data
/// channel offers the LEDBAT window's room, 2 datagrams (about 2.4 kB)
/// before anything was sent, against 12.5 kB chunks; the window grows only
/// by sending, so it never does. Today's pull sends whenever there is room
/// (the engine lets the last chunk overdraw). What the capacity carries
/// changed, not the ABI.
#[test]
#[ignore = "the ABI 1.0 pull starves at 1 Mbit/s under today's data channel (see the doc comment)"]
fn an_abi_1_0_pull_at_1_mbit_s_starves() {
    let old = old();
    let (s, _dir) = pinned_swarm(&[("p2ner.scheduler", "pull", &old.pull)]);
    let c = play(&s, 4, 10, &["--scheduler", "pull", "--overlay", "mesh"]);
    for (i, c) in c.iter().enumerate() {
        assert!(*c >= 0.95, "sub{i}: continuity {c}");
    }
}

/// Before [`OLD`], ABI "1.0.0" had another interface (it changed in place
/// while unreleased). Such a library must be refused by the layout check,
/// cleanly and by name, not loaded.
#[test]
fn a_library_from_before_the_interface_settled_is_refused_by_layout() {
    let src = extract(FIRST, &["plugin-api", "examples/plugin-template"]);
    let dir = build(
        FIRST,
        &src.join("examples/plugin-template/Cargo.toml"),
        &["p2ner-scheduler-roundrobin"],
    );
    let dir = plugin_dir(&[&library_file(&dir, "p2ner-scheduler-roundrobin")]);
    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(p2ner(home.path())
        .args(["plugins", "check"])
        .arg(dir.path()));
    assert!(!ok, "check must fail:\n{stdout}{stderr}");
    for needle in [
        "libp2ner_scheduler_roundrobin.so",
        "does not match",
        "in SchedContext",
        "Error: incompatible type size",
    ] {
        assert!(
            stderr.contains(needle),
            "'{needle}' missing from:\n{stderr}"
        );
    }
}
