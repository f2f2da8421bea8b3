//! `p2ner publish` and `p2ner subscribe`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use p2ner_plugin_api::Group;

use p2ner_engine::live::{self as engine, Choice, End, NetOptions, Report, Reporter};
use p2ner_engine::plugins::PluginOptions;
use p2ner_engine::stream::Summary;

use crate::remote::{self, Remote, Request};
use crate::run::EngineArg;

#[derive(Debug, Args)]
pub struct NetArgs {
    /// Local UDP address for the peer-to-peer traffic.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Cap on this client's upload, all neighbours together (kbit/s).
    #[arg(long, value_name = "KBPS")]
    pub upload_kbps: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long = "for", value_name = "SECONDS")]
    pub run_for: Option<f64>,
    /// Write one JSON line of stats per second, and a summary line at the end.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// Print the summary as JSON on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// No live progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

impl NetArgs {
    fn net(&self) -> NetOptions {
        NetOptions {
            listen: self.listen,
            upload_kbps: self.upload_kbps,
        }
    }

    fn run_for(&self) -> anyhow::Result<Option<Duration>> {
        self.run_for
            .map(|s| {
                Duration::try_from_secs_f64(s)
                    .map_err(|_| anyhow::anyhow!("--for {s}: not a number of seconds"))
            })
            .transpose()
    }

    fn progress(&self) -> bool {
        !self.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())
    }
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Server to register the stream on (repeatable; with --engine, the
    /// engine's servers by default).
    #[arg(
        long = "server",
        value_name = "ADDR",
        required_unless_present = "engine"
    )]
    pub servers: Vec<SocketAddr>,
    #[arg(long)]
    pub title: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Input plugin: `synthetic`, `gst`, `vlc`, ... (NAME:VALUE sets its first parameter).
    #[arg(long, value_name = "NAME", default_value = "synthetic")]
    pub input: String,
    /// What the input reads: `test`, a file, `v4l2:/dev/video0`, or an rtp/udp/http/rtsp URI.
    #[arg(long, value_name = "URI")]
    pub source: Option<String>,
    /// Extra input parameter (repeatable).
    #[arg(long = "input-param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub input_params: Vec<(String, String)>,
    /// Stream bitrate (kbit/s).
    #[arg(long, value_name = "KBPS", default_value_t = 1000)]
    pub bitrate: u32,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub fps: Option<u32>,
    /// Media per chunk (ms).
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub chunk_ms: u32,
    /// What a subscriber buffers before it starts playing (ms).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub buffer_ms: u32,
    /// Subscribers that get no new chunk for this long take the publisher
    /// for gone and end (ms; 0: the larger of 10 s and four buffers).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub silence_ms: u32,
    /// Scheduler plugin every peer of the stream loads.
    #[arg(long, value_name = "NAME", default_value = "pull")]
    pub scheduler: String,
    /// Scheduler parameter (repeatable).
    #[arg(long = "scheduler-param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub scheduler_params: Vec<(String, String)>,
    /// Overlay plugin every peer of the stream loads.
    #[arg(long, value_name = "NAME", default_value = "mesh")]
    pub overlay: String,
    /// Overlay parameter (repeatable).
    #[arg(long = "overlay-param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub overlay_params: Vec<(String, String)>,
    /// The publisher's key (created on first use); default under the config folder.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub engine: EngineArg,
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The server the stream is registered on (with --engine: by default
    /// the engine's server that lists it).
    #[arg(long, value_name = "ADDR", required_unless_present = "engine")]
    pub server: Option<SocketAddr>,
    /// The stream's id (see `p2ner streams`).
    pub stream: String,
    /// Output plugin: `null`, `file:PATH`, `gst:screen`, `gst:file:PATH`, `gst:decode`, `vlc:...`.
    #[arg(long, value_name = "NAME", default_value = "null")]
    pub output: String,
    /// Extra output parameter (repeatable).
    #[arg(long = "output-param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub output_params: Vec<(String, String)>,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub engine: EngineArg,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

fn choice(
    text: &str,
    group: Group,
    extra: &[(String, String)],
    registry: &p2ner_engine::plugins::Registry,
) -> anyhow::Result<Choice> {
    let mut c = Choice::parse(text, group, registry)?;
    c.params.extend(extra.iter().cloned());
    Ok(c)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn publish(args: &PublishArgs, plugins: &PluginOptions) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.engine.engine {
        return remote_publish(url, args);
    }
    let registry = plugins.registry()?;
    let mut input = choice(&args.input, Group::Input, &args.input_params, &registry)?;
    if let Some(source) = &args.source {
        input.params.insert("source".into(), source.clone());
    }
    let opts = engine::PublishOptions {
        servers: args.servers.clone(),
        title: args.title.clone(),
        description: args.description.clone(),
        input,
        bitrate_kbps: args.bitrate,
        chunk_ms: args.chunk_ms,
        buffer_ms: args.buffer_ms,
        silence_ms: args.silence_ms,
        width: args.width,
        height: args.height,
        fps: args.fps,
        scheduler: choice(
            &args.scheduler,
            Group::Scheduler,
            &args.scheduler_params,
            &registry,
        )?,
        overlay: choice(
            &args.overlay,
            Group::Overlay,
            &args.overlay_params,
            &registry,
        )?,
        identity: args.identity.clone(),
        net: args.net.net(),
        run_for: args.net.run_for()?,
        stats: args.net.stats.clone(),
    };
    let progress = args.net.progress();
    let run = engine::publish(&registry, opts, reporter(progress));
    let (end, summary) = runtime()?.block_on(run)?;
    finish(end, &summary, args.net.json, progress)
}

pub fn subscribe(args: &SubscribeArgs, plugins: &PluginOptions) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.engine.engine {
        return remote_subscribe(url, args);
    }
    let registry = plugins.registry()?;
    let opts = engine::SubscribeOptions {
        server: args
            .server
            .ok_or_else(|| anyhow::anyhow!("subscribe needs --server ADDR"))?,
        stream: args.stream.clone(),
        output: choice(&args.output, Group::Output, &args.output_params, &registry)?,
        net: args.net.net(),
        run_for: args.net.run_for()?,
        stats: args.net.stats.clone(),
    };
    let progress = args.net.progress();
    let run = engine::subscribe(&registry, opts, reporter(progress));
    let (end, summary) = runtime()?.block_on(run)?;
    finish(end, &summary, args.net.json, progress)
}

/// What a stream reports, as the user sees it: the stream id alone on
/// stdout (scripts read it), the rest on stderr, and with `progress` one
/// live line rewritten every second.
fn reporter(progress: bool) -> Reporter {
    Box::new(move |report| match report {
        Report::Publishing {
            stream,
            title,
            local,
            servers,
        } => {
            println!("{stream}");
            let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
            eprintln!(
                "publishing '{title}' as {stream} from {local} on {}",
                servers.join(", ")
            );
        }
        Report::Subscribed {
            stream,
            params: p,
            local,
        } => eprintln!(
            "subscribed to '{}' ({stream}, {} kbit/s, scheduler {} {}, overlay {} {}) from {local}",
            p.title,
            p.bitrate_kbps,
            p.scheduler.name,
            p.scheduler.version,
            p.overlay.name,
            p.overlay.version,
        ),
        Report::Second {
            snapshot: snap,
            stats,
            source,
        } if progress => {
            eprint!(
                "\r{:>5}s  {}  neighbours {:>2}  down {:>6.0} kbit/s  up {:>6.0} kbit/s  {}   ",
                snap.t_ms / 1000,
                if source {
                    format!("produced {:>5}", stats.chunks_produced)
                } else {
                    format!(
                        "continuity {:.3}  buffer {:>5} ms",
                        snap.continuity, snap.buffer_ms
                    )
                },
                snap.neighbours,
                snap.down_kbps,
                snap.up_kbps,
                if source || snap.playing {
                    ""
                } else {
                    "(buffering)"
                }
            );
        }
        Report::Second { .. } => {}
    })
}

/// The exit code of a subscription whose publisher went away (1 is every
/// other error, silence included).
pub const PUBLISHER_GONE: u8 = 3;

fn finish(end: End, summary: &Summary, json: bool, progress: bool) -> anyhow::Result<ExitCode> {
    if progress {
        // Ends the live line.
        eprintln!();
    }
    if json {
        println!("{}", serde_json::to_string(summary)?);
    } else if summary.chunks_produced > 0 {
        eprintln!(
            "published {} chunks, {} bytes up",
            summary.chunks_produced, summary.bytes_up
        );
    } else {
        eprintln!(
            "played {} chunks, missed {}, continuity {:.4}, startup {} ms, lag p50 {} ms",
            summary.chunks_played,
            summary.chunks_missed,
            summary.continuity,
            summary.startup_ms.map_or("-".into(), |v| format!("{v:.0}")),
            summary.lag_ms_p50.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    match end {
        End::Failed(e) => anyhow::bail!("{e}"),
        // Not asked to stop: the run did not get what it asked for (with
        // `--for N`, N seconds of stream), so scripts must see it.
        End::PublisherGone(why) => {
            eprintln!("stream ended: {why}");
            Ok(ExitCode::from(PUBLISHER_GONE))
        }
        End::Time | End::Interrupted | End::InputEnded | End::Stopped => Ok(ExitCode::SUCCESS),
    }
}

fn open_stats(path: Option<&PathBuf>) -> anyhow::Result<Option<Box<dyn std::io::Write>>> {
    match path {
        None => Ok(None),
        Some(p) => {
            let f = std::fs::File::create(p)
                .map_err(|e| anyhow::anyhow!("cannot write stats to {}: {e}", p.display()))?;
            Ok(Some(Box::new(std::io::LineWriter::new(f))))
        }
    }
}

/// A session started on a running engine: with `--for` (or `--stats`,
/// `--json`) it is followed to its end like an in-process run; otherwise
/// the command returns once it started.
fn remote_follow(remote: &Remote, id: &str, net: &NetArgs) -> anyhow::Result<ExitCode> {
    if net.run_for.is_none() && net.stats.is_none() && !net.json {
        return Ok(ExitCode::SUCCESS);
    }
    let (line, session) =
        remote::follow(remote, id, net.run_for()?, open_stats(net.stats.as_ref())?)?;
    if net.json {
        println!("{line}");
    } else {
        let n = |k: &str| line[k].as_u64().unwrap_or(0);
        if n("chunks_produced") > 0 {
            eprintln!(
                "published {} chunks, {} bytes up",
                n("chunks_produced"),
                n("bytes_up")
            );
        } else {
            eprintln!(
                "played {} chunks, missed {}, continuity {:.4}",
                n("chunks_played"),
                n("chunks_missed"),
                line["continuity"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if session["state"].as_str() == Some("failed") {
        anyhow::bail!("{}", session["reason"].as_str().unwrap_or("failed"));
    }
    Ok(ExitCode::SUCCESS)
}

fn remote_publish(url: &str, args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let remote = Remote::new(url)?;
    let mut r = Request::new();
    r.set("title", &args.title)
        .set("description", &args.description)
        .set("input", &args.input)
        .int("bitrate_kbps", Some(args.bitrate))
        .int("chunk_ms", Some(args.chunk_ms))
        .int("buffer_ms", Some(args.buffer_ms))
        .int("silence_ms", Some(args.silence_ms))
        .int("width", args.width)
        .int("height", args.height)
        .int("fps", args.fps)
        .set("scheduler", &args.scheduler)
        .set("overlay", &args.overlay)
        .array(
            "servers",
            &args
                .servers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .params("input_params", &args.input_params)
        .params("scheduler_params", &args.scheduler_params)
        .params("overlay_params", &args.overlay_params);
    if let Some(source) = &args.source {
        r.set("source", source);
    }
    let id = remote.call("publish", vec![r.value()])?;
    let id = id.as_str().unwrap_or_default().to_owned();
    let session = remote::session(&remote, &id)?;
    let stream = session["stream"].as_str().unwrap_or_default();
    println!("{stream}");
    eprintln!(
        "publishing '{}' as {stream} (session {id}) on the engine",
        args.title
    );
    remote_follow(&remote, &id, &args.net)
}

fn remote_subscribe(url: &str, args: &SubscribeArgs) -> anyhow::Result<ExitCode> {
    let remote = Remote::new(url)?;
    let mut r = Request::new();
    r.set("stream", &args.stream)
        .set("output", &args.output)
        .params("output_params", &args.output_params);
    if let Some(server) = args.server {
        r.set("server", server);
    }
    let id = remote.call("subscribe", vec![r.value()])?;
    let id = id.as_str().unwrap_or_default().to_owned();
    eprintln!("subscribed to {} (session {id}) on the engine", args.stream);
    remote_follow(&remote, &id, &args.net)
}
