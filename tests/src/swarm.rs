//! Whole swarms as real processes: a `p2ner server`, a publisher and
//! subscribers on loopback, optionally inside a private network namespace
//! with kernel-level loss. Every process is killed when its handle drops.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::p2ner_bin;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A private network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `None` where namespaces cannot be made here (not root, no iproute2).
    pub fn new() -> Option<Netns> {
        let name = format!(
            "p2sw-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Netns { name };
        let up = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        up.then_some(ns)
    }

    /// Drops `pct`% of the UDP packets entering the namespace's loopback
    /// (every packet between two local processes passes there once).
    pub fn udp_loss(&self, pct: u32) -> bool {
        let rules = format!(
            "table netdev p2ner_loss {{\n chain ingress {{\n  type filter hook ingress device \"lo\" priority 0;\n  meta l4proto udp numgen random mod 100 < {pct} drop\n }}\n}}\n"
        );
        let Ok(mut child) = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
        else {
            return false;
        };
        let wrote = child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .is_ok();
        child.wait().is_ok_and(|s| s.success()) && wrote
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
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
    pub dir: tempfile::TempDir,
    pub netns: Option<Netns>,
    pub server: Proc,
    pub server_addr: String,
    pub plugin_dirs: Vec<PathBuf>,
}

impl Swarm {
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

    /// Starts subscriber `name`, writing `name.stats` and `name.json`.
    pub fn subscribe(&self, name: &str, stream: &str, secs: u32, extra: &[&str]) -> Proc {
        let stats = self.path(&format!("{name}.stats"));
        let secs = secs.to_string();
        let stats = stats.display().to_string();
        let mut args = vec![
            "subscribe",
            "--server",
            &self.server_addr,
            stream,
            "--listen",
            "127.0.0.1:0",
            "--for",
            &secs,
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
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file");
    cmd.args(args)
        .env_remove("P2NER_PLUGIN_PATH")
        .env_remove("P2NER_PLUGINS_TOML")
        .env("RUST_LOG", "warn")
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

pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number '{key}' in {v}"))
}
