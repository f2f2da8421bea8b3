//! Running `p2ner run` engines with the `xmlrpc` frontend, for the engine
//! tests and the engine benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::swarm::{spawn_in, Proc};
use crate::workspace_root;

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running engine and the URL of its XML-RPC frontend.
pub struct EngineProc {
    /// The `p2ner run` process, killed on drop.
    pub proc: Proc,
    /// `http://p2ner:TOKEN@127.0.0.1:PORT/RPC2`, as Python's client takes it.
    pub url: String,
    /// The XML-RPC frontend's port.
    pub port: u16,
    /// The engine's access token.
    pub token: String,
}

impl EngineProc {
    /// `p2ner run` in `dir`, knowing `server`, serving XML-RPC on a free
    /// port; returns once the frontend accepts connections.
    pub fn start(dir: &Path, name: &str, server: &str, extra: &[&str]) -> EngineProc {
        let port = free_port();
        let token_file = dir.join(format!("{name}.token"));
        let key = format!("{name}.key");
        let frontend = format!("xmlrpc:127.0.0.1:{port}");
        let mut args = vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--server",
            server,
            "--identity",
            &key,
            "--frontend",
            &frontend,
        ];
        let token_arg = token_file.display().to_string();
        args.extend(["--token-file", &token_arg]);
        args.extend_from_slice(extra);
        let mut proc = spawn_in(None, dir, &args, name, Stdio::null());
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!(
                    "engine {name} exited with {status}: {}",
                    std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
                );
            }
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up && token_file.is_file() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "engine {name} did not serve XML-RPC on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(&token_file)
            .expect("token file")
            .trim()
            .to_owned();
        EngineProc {
            url: format!("http://p2ner:{token}@127.0.0.1:{port}/RPC2"),
            proc,
            port,
            token,
        }
    }

    /// The engine's process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }
}

/// The UDP sockets process `pid` holds (its fds matched against
/// /proc/net/udp and udp6).
pub fn udp_sockets(pid: u32) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let l = link.display().to_string();
            l.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned)
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

/// A Python script of tests/tests/engine/.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("tests/tests/engine").join(name)
}

/// Runs `python3 SCRIPT ARGS` (bounded); (success, stdout, stderr).
pub fn python(script: &Path, args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("python output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
