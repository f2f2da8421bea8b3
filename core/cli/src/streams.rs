//! `p2ner streams`: browse one or more servers at once.
//!
//! Servers are asked concurrently and their answers merged, each stream
//! tagged with the server it is on. A server that does not answer is named
//! on stderr; the command fails only if none answered.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use p2ner_proto::server::{Liveness, StreamSummary};
use p2ner_server::client::blocking;
use serde_json::json;

use super::server::resolve;

#[derive(Debug, Args)]
pub struct StreamsArgs {
    /// A server to ask (repeatable; with --engine, the engine's servers by default).
    #[arg(
        long = "server",
        value_name = "ADDR",
        required_unless_present = "engine"
    )]
    pub servers: Vec<String>,
    /// Only streams whose id, title or description contains TEXT.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub filter: String,
    /// Print a JSON array, one object per stream.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for each server.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub engine: crate::run::EngineArg,
}

fn online(s: &StreamSummary) -> bool {
    s.liveness == Liveness::Online
}

pub fn run(args: &StreamsArgs) -> Result<ExitCode> {
    if args.engine.engine.is_some() {
        return remote(args);
    }
    let servers: Vec<SocketAddr> = args
        .servers
        .iter()
        .map(|s| resolve("server", s))
        .collect::<Result<_>>()?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .map_err(|_| anyhow!("--timeout {}: not a duration", args.timeout))?;
    let (found, failed) = blocking::browse_many(&servers, &args.filter, timeout)
        .map_err(|e| anyhow!("cannot open a socket: {e}"))?;
    for (_, e) in &failed {
        eprintln!("warning: {e}");
    }
    if failed.len() == servers.len() {
        bail!(
            "no server answered ({})",
            servers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.json {
        let array: Vec<_> = found
            .iter()
            .map(|(server, s)| {
                json!({
                    "id": s.id.as_str(),
                    "title": s.title,
                    "server": server.to_string(),
                    "publisher": s.publisher.to_hex(),
                    "scheduler": s.scheduler,
                    "overlay": s.overlay,
                    "bitrate_kbps": s.bitrate_kbps,
                    "peers": s.peers,
                    "online": online(s),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&array).expect("json"));
    } else if found.is_empty() {
        println!("no streams");
    } else {
        println!(
            "{:<16}  {:<32}  {:<7}  {:>5}  {:>6}  {:<10}  {:<10}  SERVER",
            "ID", "TITLE", "STATE", "PEERS", "KBPS", "SCHEDULER", "OVERLAY"
        );
        for (server, s) in &found {
            println!(
                "{:<16}  {:<32}  {:<7}  {:>5}  {:>6}  {:<10}  {:<10}  {server}",
                s.id.as_str(),
                truncate(&s.title, 32),
                if online(s) { "online" } else { "offline" },
                s.peers,
                s.bitrate_kbps,
                truncate(&s.scheduler, 10),
                truncate(&s.overlay, 10),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// At most `n` characters (titles are free text; keep the table aligned).
fn truncate(s: &str, n: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= n {
        flat
    } else {
        let mut t: String = flat.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// `streams --engine URL`: the engine browses, from its own socket.
fn remote(args: &StreamsArgs) -> Result<ExitCode> {
    let remote = args.engine.remote("streams")?;
    let servers = args
        .servers
        .iter()
        .map(|s| crate::remote::string(s))
        .collect();
    let found = remote.call("streams", vec![dxr::Value::Array(servers)])?;
    let found: Vec<serde_json::Value> = found
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            args.filter.is_empty()
                || s["id"].as_str().unwrap_or("").contains(&args.filter)
                || s["title"].as_str().unwrap_or("").contains(&args.filter)
        })
        .cloned()
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else if found.is_empty() {
        println!("no streams");
    } else {
        println!(
            "{:<16}  {:<32}  {:>5}  {:>6}  {:<10}  {:<10}  SERVER",
            "ID", "TITLE", "PEERS", "KBPS", "SCHEDULER", "OVERLAY"
        );
        for s in &found {
            let f = |k: &str| s[k].as_str().unwrap_or("").to_owned();
            println!(
                "{:<16}  {:<32}  {:>5}  {:>6}  {:<10}  {:<10}  {}",
                f("id"),
                truncate(&f("title"), 32),
                s["peers"],
                s["bitrate_kbps"],
                truncate(&f("scheduler"), 10),
                truncate(&f("overlay"), 10),
                f("server"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
