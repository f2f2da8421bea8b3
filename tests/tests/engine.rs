//! `p2ner run`: many streams on one engine, driven over XML-RPC by Python's
//! standard library, by the console on a pseudo-terminal, and by the
//! `p2ner` command line with `--engine URL`.

use std::time::Duration;

use p2ner_tests::engine::{python, script, udp_sockets, EngineProc};
use p2ner_tests::swarm::Swarm;
use p2ner_tests::{fixture_library, p2ner_bin, run};

fn check(
    name: &str,
    (ok, out, err): (bool, String, String),
    swarm: &Swarm,
    logs: &[&str],
) -> String {
    if !ok {
        let logs: Vec<String> = logs
            .iter()
            .map(|l| {
                format!(
                    "--- {l}.err\n{}",
                    std::fs::read_to_string(swarm.path(&format!("{l}.err"))).unwrap_or_default()
                )
            })
            .collect();
        panic!("{name} failed:\n{out}\n{err}\n{}", logs.join("\n"));
    }
    out
}

#[test]
fn python_drives_two_engines_with_two_streams_on_one_socket() {
    let swarm = Swarm::start(None);
    let a = EngineProc::start(swarm.dir.path(), "a", &swarm.server_addr, &[]);
    let b = EngineProc::start(swarm.dir.path(), "b", &swarm.server_addr, &[]);
    let before = udp_sockets(a.pid());
    assert_eq!(before, 1, "an idle engine holds one UDP socket");
    let (tx, rx) = std::sync::mpsc::channel();
    let (ua, ub) = (a.url.clone(), b.url.clone());
    let driver = std::thread::spawn(move || {
        let r = python(
            &script("two_engines.py"),
            &[&ua, &ub],
            Duration::from_secs(120),
        );
        let _ = tx.send(());
        r
    });
    // While both streams run, the publishing engine still holds one socket.
    let mut most = 0;
    while rx.recv_timeout(Duration::from_millis(500)).is_err() {
        most = most.max(udp_sockets(a.pid()));
    }
    let out = check(
        "two_engines.py",
        driver.join().unwrap(),
        &swarm,
        &["a", "b"],
    );
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(most, 1, "engine a used {most} UDP sockets: {seen}");
    assert_eq!(
        seen["ended"]["reason"], "the publisher ended the stream",
        "{seen}"
    );
}

#[test]
fn a_dying_input_and_a_panicking_scheduler_end_alone() {
    let fixtures = p2ner_tests::plugin_dir(&[&fixture_library("panicky")]);
    let swarm = Swarm::start(None);
    let dir = fixtures.path().display().to_string();
    let e = EngineProc::start(
        swarm.dir.path(),
        "e",
        &swarm.server_addr,
        &["--plugin-dir", &dir],
    );
    let out = check(
        "end_alone.py",
        python(&script("end_alone.py"), &[&e.url], Duration::from_secs(90)),
        &swarm,
        &["e"],
    );
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(seen["short"]["state"], "ended", "{seen}");
}

#[test]
fn xmlrpc_refuses_bad_requests_counts_them_and_goes_on() {
    let swarm = Swarm::start(None);
    let e = EngineProc::start(swarm.dir.path(), "e", &swarm.server_addr, &[]);
    let port = e.port.to_string();
    let out = check(
        "refusals.py",
        python(
            &script("refusals.py"),
            &[&e.url, "127.0.0.1", &port],
            Duration::from_secs(60),
        ),
        &swarm,
        &["e"],
    );
    assert!(out.contains("\"unauthorized\""), "{out}");
    // The token file is the engine's secret.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(swarm.path("e.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn console_on_a_pty_publishes_lists_and_stops() {
    let swarm = Swarm::start(None);
    let bin = p2ner_bin().display().to_string();
    let dir = swarm.dir.path().display().to_string();
    check(
        "console.py",
        python(
            &script("console.py"),
            &[&bin, &swarm.server_addr, &dir],
            Duration::from_secs(90),
        ),
        &swarm,
        &[],
    );
}

#[test]
fn the_cli_talks_to_a_running_engine() {
    let swarm = Swarm::start(None);
    let e = EngineProc::start(swarm.dir.path(), "e", &swarm.server_addr, &[]);
    let p2ner = |args: &[&str]| {
        let mut cmd = p2ner_tests::p2ner(swarm.dir.path());
        cmd.args(args).env("P2NER_ENGINE", &e.url);
        run(&mut cmd)
    };
    // publish prints the stream id, as in-process.
    let (ok, out, err) = p2ner(&["publish", "--title", "remote", "--bitrate", "300"]);
    assert!(ok, "{err}");
    let stream = out.trim().to_owned();
    assert_eq!(stream.len(), 16, "{out}");
    let (ok, out, err) = p2ner(&["sessions", "--json"]);
    assert!(ok, "{err}");
    let sessions: serde_json::Value = serde_json::from_str(&out).expect("json");
    let list = sessions.as_array().expect("array");
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(list[0]["stream"], stream.as_str());
    assert_eq!(list[0]["role"], "publish");
    assert_eq!(list[0]["title"], "remote");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    // streams --engine browses from the engine.
    let (ok, out, err) = p2ner(&["streams", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains(&stream), "{out}");
    // A subscription in the same engine would carry the same stream twice.
    let (ok, _, err) = p2ner(&["subscribe", &stream]);
    assert!(!ok && err.contains("already carries"), "{err}");
    std::thread::sleep(Duration::from_secs(2));
    let (ok, out, err) = p2ner(&["stats", &id]);
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert!(line["t_ms"].as_u64().is_some(), "{out}");
    let (ok, _, err) = p2ner(&["stop", &id]);
    assert!(ok, "{err}");
    let (ok, out, err) = p2ner(&["stats", &id, "--follow"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().last().unwrap_or("").contains("\"final\":true"),
        "{out}"
    );
    let (ok, _, err) = p2ner(&["stop", "s99"]);
    assert!(!ok && err.contains("no session 's99'"), "{err}");
    // Without the token: one clear line.
    let mut cmd = p2ner_tests::p2ner(swarm.dir.path());
    cmd.args(["sessions"]).env(
        "P2NER_ENGINE",
        format!("http://p2ner:wrong@127.0.0.1:{}/RPC2", e.port),
    );
    let (ok, _, err) = run(&mut cmd);
    assert!(!ok && err.contains("401"), "{err}");
}

#[test]
fn a_frontend_built_for_the_1_0_engine_control_still_runs() {
    let lib = p2ner_tests::frontend_abi_1_0_library();
    let plugins = p2ner_tests::plugin_dir(&[&lib]);
    let swarm = Swarm::start(None);
    let out = swarm.path("abi10.json");
    let frontend = format!("abi10:{}", out.display());
    let dir = plugins.path().display().to_string();
    let mut cmd = p2ner_tests::p2ner(swarm.dir.path());
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--server",
        &swarm.server_addr,
        "--token-file",
        "t",
        "--identity",
        "k",
        "--plugin-dir",
        &dir,
        "--frontend",
        &frontend,
        "--for",
        "6",
    ]);
    let (ok, _, err) = run(&mut cmd);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).expect("the frontend wrote its answers");
    let seen: serde_json::Value = serde_json::from_str(&text).expect(&text);
    assert_eq!(seen["servers"][0], swarm.server_addr.as_str(), "{seen}");
    assert_eq!(seen["published"], "s1", "{seen}");
    assert_eq!(seen["stopped"], true, "{seen}");
    assert!(seen["plugins"].as_u64().unwrap() >= 5, "{seen}");
    assert!(seen["stats"]["sessions"]["s1"]["t_ms"].is_u64(), "{seen}");
}
