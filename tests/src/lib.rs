//! Helpers for p2ner's end-to-end tests and benchmarks: where the built
//! binaries and plugin libraries are, running `p2ner`, and building the
//! out-of-tree crates (the plugin template, the broken-plugin fixtures).
//!
//! The tests use what `cargo build --workspace` produced (the README's test
//! command builds first); nothing here fakes a binary or a library.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The profile folder this test binary was built into (`target/debug` or
/// `target/release`), where the `p2ner` binary and the plugins are too.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps folder");
    deps.parent().expect("profile folder").to_owned()
}

/// The `p2ner` binary `cargo build --workspace` made (target/{debug,release}/p2ner).
pub fn p2ner_bin() -> PathBuf {
    let bin = profile_dir().join(format!("p2ner{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// A built-in plugin library by crate name (`p2ner_output_null`).
pub fn builtin_plugin(crate_name: &str) -> PathBuf {
    let file = profile_dir().join(format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        file.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        file.display()
    );
    // `cargo test -p p2ner-tests` rebuilds the plugins as rlibs, not their
    // libraries: a test would quietly load the old code and measure it.
    let built = modified(&file);
    let root = workspace_root();
    let crate_dir = std::fs::read_dir(root.join("plugins"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|m| m.contains(&format!("name = \"{}\"", crate_name.replace('_', "-"))))
        });
    for src in crate_dir
        .iter()
        .map(|d| d.join("src"))
        .chain([root.join("plugin-api/src")])
    {
        if let Some(newer) = newest_file(&src).filter(|(t, _)| *t > built) {
            panic!(
                "{} is older than {}: run `cargo build --workspace` first",
                file.display(),
                newer.1.display()
            );
        }
    }
    file
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

/// The most recently modified file under `dir`, and when.
fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_file(&path)
        } else {
            Some((modified(&path), path))
        };
        if let Some(f) = found {
            if newest.as_ref().is_none_or(|n| f.0 > n.0) {
                newest = Some(f);
            }
        }
    }
    newest
}

/// A `p2ner` command isolated from the user's setup: no manifest, no
/// `P2NER_PLUGIN_PATH`, a private config folder.
pub fn p2ner(config_home: &Path) -> Command {
    let mut cmd = Command::new(p2ner_bin());
    cmd.env_remove("P2NER_PLUGIN_PATH")
        .env_remove("P2NER_PLUGINS_TOML")
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", config_home)
        .env("HOME", config_home)
        .env("NO_COLOR", "1")
        .current_dir(config_home);
    cmd
}

/// Runs a command and returns (exit success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("spawn");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Where out-of-tree crates are built: one target folder shared by the
/// template and the fixtures so that their dependencies compile once.
pub fn out_of_tree_target() -> PathBuf {
    workspace_root().join("target").join("out-of-tree")
}

/// Builds the given packages of an out-of-tree workspace (its own
/// Cargo.lock, its own feature resolution) and returns the folder with the
/// libraries.
pub fn build_out_of_tree(manifest: &Path, packages: &[&str]) -> PathBuf {
    // Concurrent builds would only wait on cargo's lock; serialising them here
    // keeps their output readable.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(manifest);
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    cmd.env("CARGO_TARGET_DIR", out_of_tree_target());
    let (ok, _, stderr) = run(&mut cmd);
    assert!(
        ok,
        "building {} {packages:?} failed:\n{stderr}",
        manifest.display()
    );
    out_of_tree_target().join("debug")
}

/// The library a crate compiles to, in `dir`.
pub fn library_file(dir: &Path, crate_name: &str) -> PathBuf {
    dir.join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// The plugin template, built out of tree; returns its library.
pub fn template_library() -> PathBuf {
    let manifest = workspace_root().join("examples/plugin-template/Cargo.toml");
    let dir = build_out_of_tree(&manifest, &["p2ner-scheduler-roundrobin"]);
    library_file(&dir, "p2ner-scheduler-roundrobin")
}

/// A broken-plugin fixture, built out of tree; returns its library.
///
/// Each is built on its own because two of them turn on plugin-api features
/// that change the interface, and features unify across one build.
pub fn fixture_library(name: &str) -> PathBuf {
    let manifest = workspace_root().join("tests/fixtures/Cargo.toml");
    let package = format!("fixture-{name}");
    let dir = build_out_of_tree(&manifest, &[&package]);
    library_file(&dir, &package)
}

/// Copies `files` into a fresh folder (a plugin dir made for one test).
pub fn plugin_dir(files: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in files {
        std::fs::copy(file, dir.path().join(file.file_name().expect("file name"))).expect("copy");
    }
    dir
}

/// Parses `plugins list --json` into (group, name, library) triples.
pub fn listed(json: &str) -> Vec<(String, String, String)> {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("bad json ({e}): {json}"));
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|c| {
            let field = |k: &str| {
                c[k].as_str()
                    .unwrap_or_else(|| panic!("missing {k} in {c}"))
                    .to_owned()
            };
            (field("group"), field("name"), field("library"))
        })
        .collect()
}

pub mod attacker;
pub mod engine;
pub mod swarm;

/// A third-party live source: H.264 in MPEG-TS, sent by `gst-launch-1.0` to
/// a free port on 127.0.0.1. The sender is killed when this drops, which is
/// how tests make a source die mid-stream.
pub struct UdpSender {
    child: std::process::Child,
    /// The UDP port on 127.0.0.1 it sends to.
    pub port: u16,
}

impl UdpSender {
    /// Starts sending to a free port.
    pub fn start() -> UdpSender {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port")
            .port();
        let child = Command::new("gst-launch-1.0")
            .args(["-q", "videotestsrc", "is-live=true", "!"])
            .args(["video/x-raw,width=320,height=240,framerate=25/1", "!"])
            .args(["x264enc", "tune=zerolatency", "key-int-max=25", "!"])
            .args(["mpegtsmux", "!", "udpsink", "host=127.0.0.1"])
            .arg(format!("port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gst-launch-1.0 (gstreamer1.0-tools)");
        UdpSender { child, port }
    }

    /// The `source=` of an input reading this stream.
    pub fn uri(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }
}

impl Drop for UdpSender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `input` on a real clock until it fails (at most 30 s), killing
/// `sender` once `chunks` chunks have come: the chunks, the input's error
/// (if any) and how long after the kill it came.
pub fn capture_until_dead(
    input: &mut p2ner_plugin_api::InputBox,
    sender: UdpSender,
    chunks: usize,
) -> (
    Vec<p2ner_plugin_api::MediaChunk>,
    Option<p2ner_plugin_api::PluginError>,
    Option<std::time::Duration>,
) {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    input.start(0).unwrap_or_else(|e| panic!("{e}"));
    let mut got = p2ner_plugin_api::abi_stable::std_types::RVec::new();
    let mut died = None;
    let mut killed_at = None;
    let mut sender = Some(sender);
    while start.elapsed() < Duration::from_secs(30) {
        if let Err(e) = input
            .poll(start.elapsed().as_micros() as u64, &mut got)
            .into_result()
        {
            died = Some(e);
            break;
        }
        if got.len() >= chunks && sender.is_some() {
            drop(sender.take());
            killed_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (got.into_vec(), died, killed_at.map(|t| t.elapsed()))
}

/// What gst-discoverer-1.0 says about a file: (video codec line, width, height, seconds).
pub fn discover(path: &Path) -> (String, u32, u32, f64) {
    let out = Command::new("gst-discoverer-1.0")
        .arg(path)
        .output()
        .expect("gst-discoverer-1.0 (gstreamer1.0-plugins-base-apps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no '{name}' in discoverer output:\n{text}"))
            .trim()
            .to_owned()
    };
    let video = text
        .lines()
        .find(|l| l.trim_start().starts_with("video #"))
        .unwrap_or_else(|| panic!("no video stream:\n{text}"))
        .to_owned();
    let duration = field("Duration:");
    let mut secs = 0.0;
    for part in duration.split(':') {
        secs = secs * 60.0 + part.parse::<f64>().unwrap_or(0.0);
    }
    (
        video,
        field("Width:").parse().unwrap(),
        field("Height:").parse().unwrap(),
        secs,
    )
}

/// Subscriber uploads (kbit/s) in three classes, 0.5x, 1x and 1.6x of a
/// base, scaled so that the stream's rate is `load` times the fluid bound
/// `min(u_s, (u_s + sum u_i) / n)` (Kumar, Liu, Ross 2007): the regime of
/// residential uplinks, where a swarm has little upload to spare. Subscriber
/// `i` gets class `i % 3`.
pub fn caps_for_load(bitrate_kbps: u64, n: usize, source_kbps: u64, load: f64) -> Vec<u64> {
    let classes = [0.5, 1.0, 1.6];
    let mean = classes.iter().sum::<f64>() / classes.len() as f64;
    let per_peer = bitrate_kbps as f64 / load - source_kbps as f64 / n as f64;
    let base = per_peer / mean;
    classes.iter().map(|c| (c * base).round() as u64).collect()
}

/// Overlay parameters for capped swarms. Trees need stripes there: a peer
/// below one stream copy of upload is a leaf of a single tree, and the rest
/// cannot carry everyone.
pub fn capped_overlay_params(overlay: &str) -> p2ner_plugin_api::Params {
    let params = p2ner_plugin_api::Params::new();
    if overlay == "tree" {
        params.with("stripes", "8")
    } else {
        params
    }
}

/// The fluid bound for a publisher uploading `source_kbps` and subscribers
/// uploading `peers_kbps`, kbit/s.
pub fn fluid_bound(source_kbps: u64, peers_kbps: &[u64]) -> f64 {
    let n = peers_kbps.len().max(1) as f64;
    let total = source_kbps as f64 + peers_kbps.iter().sum::<u64>() as f64;
    (source_kbps as f64).min(total / n)
}

/// A registry holding only the libraries a simulation needs (the built-in
/// schedulers and overlays, the synthetic input, the null output), so that a
/// simulated run is about them alone.
pub fn sim_registry() -> p2ner_engine::plugins::Registry {
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
    let registry = p2ner_engine::plugins::Registry::load_dirs(&[dir.path()]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    registry
}

/// The `abi10` frontend fixture, built against the frontend ABI as it was
/// before the 1.1 control interface (the current plugin-api with
/// components/frontend.rs, lib.rs and export.rs replaced by the frozen
/// files in tests/fixtures/frontend-abi-1.0/); returns its library.
pub fn frontend_abi_1_0_library() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = workspace_root().join("tests/fixtures/frontend-abi-1.0");
    let api = out_of_tree_target().join("plugin-api-abi-1.0");
    let src = api.join("src");
    let _ = std::fs::remove_dir_all(&src);
    copy_dir(&workspace_root().join("plugin-api/src"), &src);
    std::fs::copy(
        fixture.join("frontend_abi_1_0.rs"),
        src.join("components/frontend.rs"),
    )
    .expect("frozen frontend.rs");
    for (frozen, file) in [
        ("lib_abi_1_0.rs", "lib.rs"),
        ("export_abi_1_0.rs", "export.rs"),
    ] {
        std::fs::copy(fixture.join(frozen), src.join(file)).expect("frozen file");
    }
    std::fs::write(
        api.join("Cargo.toml"),
        "[package]\nname = \"p2ner-plugin-api\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n[lib]\nname = \"p2ner_plugin_api\"\n\n[features]\n__fixture_changed_interface = []\n__fixture_other_abi = []\n\n[dependencies]\nabi_stable = \"0.11.3\"\ntracing = \"0.1\"\ntracing-core = \"0.1\"\n",
    )
    .expect("manifest");
    drop(_guard);
    let dir = build_out_of_tree(&fixture.join("Cargo.toml"), &["fixture-frontend-abi-1-0"]);
    library_file(&dir, "fixture-frontend-abi-1-0")
}

/// Copies a folder recursively, leaving out `target` folders (build output).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_name() == "target" {
            continue;
        }
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
