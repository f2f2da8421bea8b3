//! Whole swarms as real processes: a `p2ner server`, a publisher and
//! subscribers on loopback, optionally inside a private network namespace
//! with kernel-level loss. Every process is killed when its handle drops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use p2ner_netns::Netns;

use crate::p2ner_bin;

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its name in the swarm's folder (`NAME.err`, `NAME.json`).
    pub name: String,
}

impl Proc {
    /// Kills it now and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One swarm's folder, server and processes.
pub struct Swarm {
    /// Every process's working folder, logs and stats.
    pub dir: tempfile::TempDir,
    /// The namespace every process runs in, if any.
    pub netns: Option<Netns>,
    /// The `p2ner server` process.
    pub server: Proc,
    /// The address it listens on.
    pub server_addr: String,
    /// `--plugin-dir`s every process gets.
    pub plugin_dirs: Vec<PathBuf>,
}

impl Swarm {
    /// Starts the swarm's server (in `netns` if given).
    pub fn start(netns: Option<Netns>) -> Swarm {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = spawn_in(
            netns.as_ref(),
            dir.path(),
            &["server", "--listen", "127.0.0.1:0", "--db", "server.db"],
            "server",
            Stdio::piped(),
        );
        let out = server.child.stdout.take().expect("piped");
        let line = first_line(out, Duration::from_secs(10)).expect("the server prints its address");
        let server_addr = line.rsplit(' ').next().expect("an address").to_owned();
        Swarm {
            dir,
            netns,
            server,
            server_addr,
            plugin_dirs: Vec::new(),
        }
    }

    /// A file in the swarm's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for d in &self.plugin_dirs {
            v.push("--plugin-dir".into());
            v.push(d.display().to_string());
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Starts a publisher; returns it and the stream id it printed.
    pub fn publish(&self, extra: &[&str]) -> (Proc, String) {
        let mut args = vec![
            "publish",
            "--server",
            &self.server_addr,
            "--title",
            "swarm test",
            "--listen",
            "127.0.0.1:0",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let args = self.args(&args);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let mut p = spawn_in(
            self.netns.as_ref(),
            self.dir.path(),
            &args,
            "publisher",
            Stdio::piped(),
        );
        let out = p.child.stdout.take().expect("piped");
        let id = match first_line(out, Duration::from_secs(20)) {
            Some(id) => id,
            None => {
                p.kill();
                panic!(
                    "the publisher printed no stream id: {}",
                    std::fs::read_to_string(self.path("publisher.err")).unwrap_or_default()
                );
            }
        };
        (p, id)
    }

    /// Starts subscriber `name` for `secs` seconds, writing `name.stats` and
    /// `name.json`.
    pub fn subscribe(&self, name: &str, stream: &str, secs: u32, extra: &[&str]) -> Proc {
        let secs = secs.to_string();
        let mut args = vec!["--for", secs.as_str()];
        args.extend_from_slice(extra);
        self.subscribe_open(name, stream, &args)
    }

    /// Starts subscriber `name` without `--for` (it runs until its stream
    /// ends), writing `name.stats` and `name.json`.
    pub fn subscribe_open(&self, name: &str, stream: &str, extra: &[&str]) -> Proc {
        let stats = self.path(&format!("{name}.stats")).display().to_string();
        let mut args = vec![
            "subscribe",
            "--server",
            &self.server_addr,
            stream,
            "--listen",
            "127.0.0.1:0",
            "--stats",
            &stats,
            "--quiet",
            "--json",
        ];
        args.extend_from_slice(extra);
        let args = self.args(&args);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = std::fs::File::create(self.path(&format!("{name}.json"))).expect("json file");
        spawn_in(
            self.netns.as_ref(),
            self.dir.path(),
            &args,
            name,
            Stdio::from(out),
        )
    }

    /// Waits for a process to end, within `limit` (killed past it): its exit
    /// code (`None`: killed or signalled), its stderr, and its `--stats`
    /// lines (`NAME.stats`) as JSON.
    pub fn ended(&self, proc: &mut Proc, limit: Duration) -> (Option<i32>, String, Vec<Value>) {
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                break status.code();
            }
            if start.elapsed() > limit {
                proc.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let err =
            std::fs::read_to_string(self.path(&format!("{}.err", proc.name))).unwrap_or_default();
        let lines = std::fs::read_to_string(self.path(&format!("{}.stats", proc.name)))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (status, err, lines)
    }

    /// Waits for a subscriber to end; its summary, or why there is none.
    pub fn summary(&self, proc: &mut Proc, limit: Duration) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            if let Some(status) = proc.child.try_wait().map_err(|e| e.to_string())? {
                let err = std::fs::read_to_string(self.path(&format!("{}.err", proc.name)))
                    .unwrap_or_default();
                if !status.success() {
                    return Err(format!("{} exited with {status}: {err}", proc.name));
                }
                let text = std::fs::read_to_string(self.path(&format!("{}.json", proc.name)))
                    .map_err(|e| e.to_string())?;
                return serde_json::from_str(text.trim())
                    .map_err(|e| format!("{}: {e}: {text:?} {err}", proc.name));
            }
            if start.elapsed() > limit {
                proc.kill();
                return Err(format!("{} did not end within {limit:?}", proc.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `p2ner ARGS` isolated in `dir` (and in `netns`); stderr goes to
/// `dir/NAME.err`.
pub fn spawn_in(
    netns: Option<&Netns>,
    dir: &Path,
    args: &[&str],
    name: &str,
    stdout: Stdio,
) -> Proc {
    let bin = p2ner_bin();
    let mut cmd = match netns {
        Some(ns) => ns.exec(&bin),
        None => Command::new(&bin),
    };
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file");
    cmd.args(args)
        .env_remove("P2NER_PLUGIN_PATH")
        .env_remove("P2NER_PLUGINS_TOML")
        // Quiet unless a run is being looked into (`P2NER_SWARM_LOG=trace`).
        .env(
            "RUST_LOG",
            std::env::var("P2NER_SWARM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("XDG_CONFIG_HOME", dir)
        .env("HOME", dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(err));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Proc {
        child,
        name: name.to_owned(),
    }
}

/// The first line a process prints, read on a thread so a silent process
/// cannot hang the test.
fn first_line(out: impl std::io::Read + Send + 'static, limit: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(out);
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line.trim().to_owned());
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx.recv_timeout(limit).ok().filter(|l| !l.is_empty())
}

/// The number `key` of a JSON object; panics naming it if absent.
pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number '{key}' in {v}"))
}
