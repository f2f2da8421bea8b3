//! `p2ner run`: a long-running engine with its frontends; and the remote
//! commands `sessions`, `stop` and `stats` (with `--engine URL`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use p2ner_engine::live::control::{start_frontend, Control};
use p2ner_engine::live::{Engine, EngineOptions, NetOptions};
use p2ner_engine::plugins::PluginOptions;
use serde_json::Value as Json;

use crate::remote::{self, Remote};
use crate::server::resolve;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Local UDP address every stream of this engine shares.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// A server the engine knows from the start (repeatable).
    #[arg(long = "server", value_name = "ADDR")]
    pub servers: Vec<String>,
    /// The secret remote frontends require (created, mode 0600, when absent);
    /// default under the config folder.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A frontend to load: NAME or NAME:VALUE (VALUE: its first parameter,
    /// e.g. `xmlrpc:127.0.0.1:7780`, `console`); repeatable.
    #[arg(long = "frontend", value_name = "NAME[:VALUE]")]
    pub frontends: Vec<String>,
    /// The publisher key of every stream this engine publishes.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Cap on the engine's upload, all streams and neighbours together (kbit/s).
    #[arg(long, value_name = "KBPS")]
    pub upload_kbps: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long = "for", value_name = "SECONDS")]
    pub run_for: Option<f64>,
}

/// Where the token lives when `--token-file` is not given.
pub fn default_token_file() -> Option<PathBuf> {
    p2ner_proto::identity::Identity::default_path()
        .and_then(|p| p.parent().map(|d| d.join("engine.token")))
}

/// Reads the token, or creates the file with a random one (mode 0600).
fn token(path: &Path) -> Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let t = text.trim().to_owned();
        if t.is_empty() {
            bail!("token file {} is empty", path.display());
        }
        return Ok(t);
    }
    use rand_core::RngCore;
    let mut bytes = [0u8; 24];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create token file {}", path.display()))?;
    writeln!(f, "{t}")?;
    Ok(t)
}

pub fn run(args: &RunArgs, plugins: &PluginOptions) -> Result<ExitCode> {
    let registry = Arc::new(plugins.registry()?);
    let servers: Vec<SocketAddr> = args
        .servers
        .iter()
        .map(|s| resolve("server", s))
        .collect::<Result<_>>()?;
    let token_file = match &args.token_file {
        Some(f) => f.clone(),
        None => default_token_file()
            .context("no config folder for the token: pass --token-file FILE")?,
    };
    let token = token(&token_file)?;
    let run_for = args
        .run_for
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| anyhow::anyhow!("--for {s}: not a number of seconds"))
        })
        .transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("p2ner-engine")
        .enable_all()
        .build()?;
    let opts = EngineOptions {
        net: NetOptions {
            listen: args.listen,
            upload_kbps: args.upload_kbps,
        },
        servers,
        identity: args.identity.clone(),
        token,
    };
    let engine = rt.block_on(Engine::start(registry, opts))?;
    let control = Control::handle(engine.clone());
    eprintln!(
        "engine on udp {} (token in {})",
        engine.local_addr(),
        token_file.display()
    );
    let mut running = Vec::new();
    for spec in &args.frontends {
        match start_frontend(&engine, &control, spec) {
            Ok(f) => running.push(f),
            Err(e) => {
                for f in running {
                    let _ = f.stop();
                }
                return Err(e);
            }
        }
    }
    let why = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        let time = async {
            match run_for {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = term.recv() => "terminated",
            _ = engine.shutdown_requested() => "asked to",
            _ = time => "time is up",
        };
        Ok::<_, anyhow::Error>(why)
    })?;
    eprintln!("engine ending ({why})");
    for f in running {
        if let Err(e) = f.stop() {
            eprintln!("warning: {e}");
        }
    }
    rt.block_on(engine.stop_all());
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}

/// `--engine URL`, shared by the remote commands.
#[derive(Debug, Args, Clone)]
pub struct EngineArg {
    /// A running engine's XML-RPC frontend (http://p2ner:TOKEN@HOST:PORT/RPC2).
    #[arg(long, value_name = "URL", env = "P2NER_ENGINE")]
    pub engine: Option<String>,
}

impl EngineArg {
    pub fn remote(&self, command: &str) -> Result<Remote> {
        match &self.engine {
            Some(url) => Remote::new(url),
            None => {
                bail!("'{command}' talks to a running engine: give --engine URL (or P2NER_ENGINE)")
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub engine: EngineArg,
    /// Print a JSON array, one object per session.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The session's id (see `p2ner sessions`).
    pub id: String,
    #[command(flatten)]
    pub engine: EngineArg,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The session's id; none: the engine's totals and every session's line.
    pub id: Option<String>,
    /// Print a new line every second until the session ends.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub engine: EngineArg,
}

pub fn sessions(args: &SessionsArgs) -> Result<ExitCode> {
    let remote = args.engine.remote("sessions")?;
    let all = remote.call("sessions", vec![])?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = all.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no sessions");
    } else {
        println!(
            "{:<5}  {:<9}  {:<8}  {:<16}  {:<24}  REASON",
            "ID", "ROLE", "STATE", "STREAM", "TITLE"
        );
        for s in list {
            let f = |k: &str| s[k].as_str().unwrap_or("").to_owned();
            println!(
                "{:<5}  {:<9}  {:<8}  {:<16}  {:<24}  {}",
                f("id"),
                f("role"),
                f("state"),
                f("stream"),
                f("title"),
                f("reason")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stop(args: &StopArgs) -> Result<ExitCode> {
    let remote = args.engine.remote("stop")?;
    remote.call("stop", vec![remote::string(&args.id)])?;
    eprintln!("stopping {}", args.id);
    Ok(ExitCode::SUCCESS)
}

pub fn stats(args: &StatsArgs) -> Result<ExitCode> {
    let remote = args.engine.remote("stats")?;
    let id = args.id.clone().unwrap_or_default();
    if !args.follow {
        let line = remote.call("stats", vec![remote::string(&id)])?;
        println!("{line}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut last: Option<Json> = None;
    loop {
        let line = remote.call("stats", vec![remote::string(&id)])?;
        let t = line.get("t_ms").cloned();
        if id.is_empty() || last.as_ref() != t.as_ref() || line.get("final").is_some() {
            println!("{line}");
            last = t;
        }
        if !id.is_empty() {
            let s = remote::session(&remote, &id)?;
            if !matches!(s["state"].as_str(), Some("starting" | "playing")) {
                if line.get("final").is_none() {
                    println!("{}", remote.call("stats", vec![remote::string(&id)])?);
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
