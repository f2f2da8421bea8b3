//! `p2ner demo`: a whole swarm on this machine in one command.
//!
//! A server, a publisher and a few subscribers run as real `p2ner`
//! processes on loopback (the same binaries a user runs by hand), so the
//! demo shows the system as it is. One live line per second, a summary at
//! the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use p2ner_plugin_api::Group;

use p2ner_engine::plugins::PluginOptions;
use p2ner_engine::stream::{Snapshot, Summary};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Subscribers to start.
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// How long the subscribers play.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// Input: `gst` (the GStreamer test pattern) or `synthetic`; default
    /// `gst` when it is installed.
    #[arg(long)]
    pub input: Option<String>,
    #[arg(long, default_value = "pull")]
    pub scheduler: String,
    #[arg(long, default_value = "mesh")]
    pub overlay: String,
    /// Stream bitrate (kbit/s).
    #[arg(long, default_value_t = 1000)]
    pub bitrate: u32,
    /// Print the subscribers' summaries as a JSON array at the end.
    #[arg(long)]
    pub json: bool,
}

/// Children are killed when the demo ends, however it ends.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: &DemoArgs, plugins: &PluginOptions) -> anyhow::Result<ExitCode> {
    if args.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    let registry = plugins.registry()?;
    let input = match &args.input {
        Some(i) => i.clone(),
        None if registry.find(Group::Input, "gst", None).is_ok() => "gst".into(),
        None => "synthetic".into(),
    };
    let dir = tempfile::tempdir().context("a temporary folder for the demo")?;
    let exe = std::env::current_exe().context("finding the p2ner executable")?;
    let base = |name: &str| -> anyhow::Result<Command> {
        let mut cmd = Command::new(&exe);
        for d in &plugins.dirs {
            cmd.arg("--plugin-dir").arg(d);
        }
        if let Some(m) = &plugins.manifest {
            cmd.arg("--plugins-toml").arg(m);
        }
        let err = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
        cmd.env("XDG_CONFIG_HOME", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stderr(err);
        Ok(cmd)
    };

    let mut server = Kid(base("server")?
        .args(["server", "--listen", "127.0.0.1:0", "--db", "demo.db"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the server")?);
    let line = first_line(server.0.stdout.take(), Duration::from_secs(10))
        .with_context(|| log_tail(dir.path(), "server"))?;
    let server_addr = line.rsplit(' ').next().unwrap_or_default().to_owned();
    eprintln!("server     {server_addr}");

    let mut publish = base("publisher")?;
    publish.args([
        "publish",
        "--server",
        &server_addr,
        "--title",
        "p2ner demo",
        "--listen",
        "127.0.0.1:0",
        "--quiet",
    ]);
    publish.args(["--input", &input, "--bitrate", &args.bitrate.to_string()]);
    publish.args(["--scheduler", &args.scheduler, "--overlay", &args.overlay]);
    publish.args(["--for", &(args.seconds + 10).to_string()]);
    if input == "gst" {
        publish.args(["--source", "test"]);
    }
    let mut publisher = Kid(publish
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the publisher")?);
    let stream = first_line(publisher.0.stdout.take(), Duration::from_secs(20))
        .with_context(|| log_tail(dir.path(), "publisher"))?;
    eprintln!(
        "publisher  stream {stream}: {input}, {} kbit/s, scheduler {}, overlay {}",
        args.bitrate, args.scheduler, args.overlay
    );

    let mut subs = Vec::new();
    for i in 0..args.subscribers {
        let name = format!("subscriber{i}");
        let stats = dir.path().join(format!("{name}.jsonl"));
        let child = base(&name)?
            .args([
                "subscribe",
                "--server",
                &server_addr,
                &stream,
                "--listen",
                "127.0.0.1:0",
                "--quiet",
            ])
            .args([
                "--for",
                &args.seconds.to_string(),
                "--output",
                "null",
                "--stats",
            ])
            .arg(&stats)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        subs.push((name, stats, Kid(child)));
    }
    eprintln!("subscribers {} for {} s\n", args.subscribers, args.seconds);

    let start = Instant::now();
    let limit = Duration::from_secs(args.seconds as u64 + 20);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let running = subs
            .iter_mut()
            .filter_map(|(_, _, k)| k.0.try_wait().ok())
            .filter(Option::is_none)
            .count();
        let snaps: Vec<Snapshot> = subs
            .iter()
            .filter_map(|(_, stats, _)| last_snapshot(stats))
            .collect();
        if !snaps.is_empty() {
            let playing = snaps.iter().filter(|s| s.playing).count();
            let min = snaps.iter().map(|s| s.continuity).fold(1.0, f64::min);
            let buffer = snaps.iter().map(|s| s.buffer_ms).sum::<u64>() / snaps.len() as u64;
            let down = snaps.iter().map(|s| s.down_kbps).sum::<f64>() / snaps.len() as f64;
            let up = snaps.iter().map(|s| s.up_kbps).sum::<f64>() / snaps.len() as f64;
            eprint!(
                "\r{:>4} s  playing {playing}/{}  continuity min {min:.3}  buffer {buffer:>5} ms  down {down:>5.0} kbit/s  up {up:>5.0} kbit/s   ",
                start.elapsed().as_secs(),
                args.subscribers,
            );
            let _ = std::io::stderr().flush();
        }
        if running == 0 || start.elapsed() > limit {
            break;
        }
    }
    eprintln!("\n");
    let mut summaries = Vec::new();
    for (name, stats, kid) in &mut subs {
        let _ = kid.0.wait();
        match last_summary(stats) {
            Some(s) => summaries.push((name.clone(), s)),
            None => eprintln!("{name}: no summary ({})", log_tail(dir.path(), name)),
        }
    }
    drop(publisher);
    drop(server);
    if args.json {
        let all: Vec<&Summary> = summaries.iter().map(|(_, s)| s).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    eprintln!(
        "{:<13} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "subscriber", "continuity", "startup", "lag p50", "lag p95", "missed", "overhead"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
    for (name, s) in &summaries {
        eprintln!(
            "{name:<13} {:>10.4} {:>8} {:>8} {:>8} {:>8} {:>8.1}%",
            s.continuity,
            ms(s.startup_ms),
            ms(s.lag_ms_p50),
            ms(s.lag_ms_p95),
            s.chunks_missed,
            100.0 * s.overhead
        );
    }
    if summaries.len() < args.subscribers {
        bail!(
            "{} of {} subscribers gave no summary",
            args.subscribers - summaries.len(),
            args.subscribers
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn first_line(out: Option<impl Read + Send + 'static>, limit: Duration) -> anyhow::Result<String> {
    let out = out.context("no output pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line.trim().to_owned());
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    match rx.recv_timeout(limit) {
        Ok(line) if !line.is_empty() => Ok(line),
        _ => bail!("it did not start"),
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn last_snapshot(path: &Path) -> Option<Snapshot> {
    lines(path)
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn last_summary(path: &Path) -> Option<Summary> {
    lines(path)
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// The end of a child's log, for an error message.
fn log_tail(dir: &Path, name: &str) -> String {
    let log = lines(&dir.join(format!("{name}.log")));
    let tail: Vec<&str> = log.iter().rev().take(3).rev().map(|s| s.as_str()).collect();
    format!("{name} failed: {}", tail.join(" | "))
}
