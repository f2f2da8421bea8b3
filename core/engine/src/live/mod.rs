//! The engine: publish and subscribe on the real network.
//!
//! Both build a [`Session`] from the stream's parameters, with the named
//! plugins loaded from the registry, and hand it to a [`driver::Driver`]
//! that connects it to one UDP endpoint and the stream's servers.
//!
//! Nothing here prints: what a user should see comes out as [`Report`]s,
//! which the `p2ner` binary turns into lines on stdout and stderr.

pub mod control;
pub mod driver;
pub mod engine;
pub mod liveness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use p2ner_net::{Endpoint, NetConfig};
use p2ner_plugin_api::{Group, Params, PeerId, PeerInfo, StreamFormat};
use p2ner_proto::identity::Identity;
use p2ner_proto::server::{PluginRef, StreamId, StreamParams, PUBLISHER_PEER_ID};
use p2ner_server::client::{ClientError, ServerClient};
use semver::VersionReq;

use crate::plugins::Registry;
use crate::stream::{Role, Session, SessionConfig, Snapshot, StreamStats, Summary};
pub use driver::End;
use driver::{now_us, wire_id, Driver, Heartbeat};
pub use engine::{Engine, EngineOptions, Mux};

/// What a running stream tells whoever runs it.
#[derive(Debug)]
pub enum Report<'a> {
    /// The stream is registered: its id (the line scripts wait for), where
    /// it is sent from and the servers that accepted it.
    Publishing {
        /// The stream's id.
        stream: &'a StreamId,
        /// The stream's title.
        title: &'a str,
        /// Where the stream is sent from.
        local: SocketAddr,
        /// The servers that accepted it.
        servers: Vec<SocketAddr>,
    },
    /// Joined a stream: its id and parameters, and where it is received.
    Subscribed {
        /// The stream's id.
        stream: &'a StreamId,
        /// What the catalogue says the stream runs.
        params: &'a StreamParams,
        /// Where the stream is received.
        local: SocketAddr,
    },
    /// Once a second while the stream runs.
    Second {
        /// The second's `--stats` line.
        snapshot: &'a Snapshot,
        /// The counters so far.
        stats: &'a StreamStats,
        /// This peer is the publisher.
        source: bool,
    },
}

/// Receives a stream's [`Report`]s, on the stream's task.
pub type Reporter = Box<dyn FnMut(Report<'_>) + Send>;

/// A plugin chosen by name, with parameters.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// The component's name.
    pub name: String,
    /// Its parameters, as given (the component's defaults fill the rest).
    pub params: BTreeMap<String, String>,
}

impl Choice {
    /// `NAME` or `NAME:VALUE`, where VALUE sets the component's first
    /// declared parameter (`gst:file:out.ts` is `gst` with `sink=file:out.ts`,
    /// `file:out.ts` is `file` with `path=out.ts`).
    pub fn parse(text: &str, group: Group, registry: &Registry) -> anyhow::Result<Choice> {
        let (name, value) = match text.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        let mut choice = Choice {
            name: name.to_owned(),
            params: BTreeMap::new(),
        };
        if let Some(value) = value {
            let component = registry.find(group, name, None)?;
            let Some(first) = component.info.params.first() else {
                bail!("{group} '{name}' takes no parameters, so '{text}' means nothing");
            };
            choice
                .params
                .insert(first.name.to_string(), value.to_owned());
        }
        Ok(choice)
    }

    fn params(&self) -> Params {
        self.params
            .iter()
            .fold(Params::new(), |p, (k, v)| p.with(k, v.as_str()))
    }
}

/// Network settings shared by publishers and subscribers.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// The UDP address to bind.
    pub listen: SocketAddr,
    /// The upload cap (`--upload-kbps`); `None`: no cap.
    pub upload_kbps: Option<u64>,
}

async fn bind(net: &NetOptions) -> anyhow::Result<(Endpoint, p2ner_net::Events)> {
    let cfg = NetConfig {
        upload_kbps: net.upload_kbps,
        ..NetConfig::default()
    };
    Endpoint::bind(net.listen, cfg)
        .await
        .with_context(|| format!("cannot listen on {}", net.listen))
}

/// What `p2ner publish` takes.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The servers to register the stream at.
    pub servers: Vec<SocketAddr>,
    /// The stream's title in the catalogue.
    pub title: String,
    /// Free text for the catalogue.
    pub description: String,
    /// The input component.
    pub input: Choice,
    /// The stream's bitrate.
    pub bitrate_kbps: u32,
    /// Media per chunk.
    pub chunk_ms: u32,
    /// The subscribers' play-out buffer; 0: the default.
    pub buffer_ms: u32,
    /// Silence after which subscribers take the publisher for gone (0: the
    /// default, see [`liveness::default_silence_us`]).
    pub silence_ms: u32,
    /// Video size and rate, for inputs that transcode.
    pub width: Option<u32>,
    /// See `width`.
    pub height: Option<u32>,
    /// See `width`.
    pub fps: Option<u32>,
    /// The scheduler every peer runs.
    pub scheduler: Choice,
    /// The overlay every peer runs.
    pub overlay: Choice,
    /// The publisher's key file; `None`: the default one.
    pub identity: Option<PathBuf>,
    /// The socket and upload cap.
    pub net: NetOptions,
    /// Stop after this long.
    pub run_for: Option<Duration>,
    /// Where to write the `--stats` lines.
    pub stats: Option<PathBuf>,
}

/// What `p2ner subscribe` takes.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The server that lists the stream.
    pub server: SocketAddr,
    /// The stream's id.
    pub stream: String,
    /// The output component.
    pub output: Choice,
    /// The socket and upload cap.
    pub net: NetOptions,
    /// Stop after this long.
    pub run_for: Option<Duration>,
    /// Where to write the `--stats` lines.
    pub stats: Option<PathBuf>,
}

/// The stream's parameters as the input, scheduler and overlay declare
/// them, so the catalogue says exactly what a subscriber must load.
fn plugin_ref(registry: &Registry, group: Group, choice: &Choice) -> anyhow::Result<PluginRef> {
    let component = registry.find(group, &choice.name, None)?;
    Ok(PluginRef {
        name: choice.name.clone(),
        version: component.info.version.to_string(),
        params: choice.params.clone(),
    })
}

/// Publishes a stream until the time is up, the input ends or fails, or
/// Ctrl-C. Reports [`Report::Publishing`] as soon as it is registered.
///
/// A one-stream engine: the same [`Mux`] and [`start_publish`] as every
/// stream of an [`Engine`].
pub async fn publish(
    registry: &Registry,
    opts: PublishOptions,
    report: Reporter,
) -> anyhow::Result<(End, Summary)> {
    if opts.servers.is_empty() {
        bail!("no server given: publish needs --server ADDR");
    }
    let (endpoint, events) = bind(&opts.net).await?;
    let mux = Mux::start(endpoint, events);
    let (_, driver) = start_publish(registry, &mux, opts, report, None).await?;
    Ok(driver.run().await)
}

/// The publisher key (created on first use).
fn identity(path: Option<&PathBuf>) -> anyhow::Result<Identity> {
    let identity_path = match path {
        Some(p) => p.clone(),
        None => Identity::default_path()
            .context("no config folder for the publisher key: pass --identity FILE")?,
    };
    Identity::load_or_create(&identity_path)
        .with_context(|| format!("publisher key {}", identity_path.display()))
}

/// Builds a published stream on `mux`'s endpoint, opens its input and
/// registers it; returns its wire id and the driver that runs it.
pub async fn start_publish(
    registry: &Registry,
    mux: &Mux,
    opts: PublishOptions,
    mut report: Reporter,
    shared: Option<engine::Shared>,
) -> anyhow::Result<(u64, Driver)> {
    if opts.servers.is_empty() {
        bail!("no server given: publish needs --server ADDR");
    }
    let identity = identity(opts.identity.as_ref())?;
    let input_info = registry.find(Group::Input, &opts.input.name, None)?;
    let declared: Vec<String> = input_info
        .info
        .params
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    // Stream-wide settings reach the input when it has such a parameter.
    let mut input = opts.input.clone();
    let mut offer = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            if declared.iter().any(|d| d == name) {
                input.params.entry(name.to_owned()).or_insert(v);
            }
        }
    };
    offer("bitrate_kbps", Some(opts.bitrate_kbps.to_string()));
    offer("chunk_ms", Some(opts.chunk_ms.to_string()));
    offer("width", opts.width.map(|v| v.to_string()));
    offer("height", opts.height.map(|v| v.to_string()));
    offer("fps", opts.fps.map(|v| v.to_string()));
    let scheduler_ref = plugin_ref(registry, Group::Scheduler, &opts.scheduler)?;
    let overlay_ref = plugin_ref(registry, Group::Overlay, &opts.overlay)?;
    let input_box = registry.new_input(&input.name, None, &input.params())?;
    let scheduler = registry.new_scheduler(&opts.scheduler.name, None, &opts.scheduler.params())?;
    let overlay = registry.new_overlay(&opts.overlay.name, None, &opts.overlay.params())?;

    let endpoint = mux.endpoint().clone();
    let stream_id = StreamId::derive(&identity.public_key(), &opts.title);
    let wire = wire_id(&stream_id);
    let events = mux.route(wire)?;
    let routed = Unroute(mux, wire);
    let local = PeerInfo {
        id: PeerId(PUBLISHER_PEER_ID),
        addr: endpoint.local_addr().to_string().into(),
    };
    let mut cfg = SessionConfig::new(
        wire_id(&stream_id),
        stream_id.as_str(),
        local,
        opts.bitrate_kbps,
        opts.chunk_ms,
    );
    cfg.seed = rand_seed();
    cfg.control_payload = endpoint.config().max_control_payload();
    cfg.scheduler_key = format!("scheduler.{}", opts.scheduler.name);
    cfg.overlay_key = format!("overlay.{}", opts.overlay.name);
    let mut session = Session::new(
        cfg,
        Role::Publisher {
            input: input_box,
            key: identity.clone(),
        },
        scheduler,
        overlay,
        now_us(),
    );
    // The source opens before the stream is announced: nobody is sent to a
    // stream whose camera or file cannot be read.
    session.start(now_us(), None).map_err(anyhow::Error::msg)?;
    let format = session.format().cloned().unwrap_or_default();
    let params = StreamParams {
        title: opts.title.clone(),
        description: opts.description.clone(),
        bitrate_kbps: opts.bitrate_kbps,
        chunk_ms: (format.chunk_us / 1000).max(1),
        buffer_ms: opts.buffer_ms,
        scheduler: scheduler_ref,
        overlay: overlay_ref,
        input: format!("{} ({})", input.name, format.description),
        container: format.container.to_string(),
        silence_ms: opts.silence_ms,
    };
    let servers: Vec<ServerClient> = opts
        .servers
        .iter()
        .map(|&s| ServerClient::new(endpoint.clone(), s))
        .collect();
    let mut registered = Vec::new();
    for server in &servers {
        let result = async {
            let id = server.register(&identity, params.clone()).await?;
            server.publisher_heartbeat(&identity, &id).await?;
            Ok::<_, ClientError>(id)
        }
        .await;
        match result {
            Ok(_) => registered.push(server.clone()),
            Err(e) => tracing::warn!(server = %server.server(), "not registered: {e}"),
        }
    }
    if registered.is_empty() {
        session.close(now_us());
        bail!(
            "could not register the stream at any server ({})",
            opts.servers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    report(Report::Publishing {
        stream: &stream_id,
        title: &opts.title,
        local: endpoint.local_addr(),
        servers: registered.iter().map(ServerClient::server).collect(),
    });
    let router_limited = shared.is_none().then(|| mux.limited_counter());
    let driver = Driver {
        endpoint,
        events,
        session,
        stream: stream_id,
        servers: registered,
        heartbeat: Heartbeat::Publisher {
            identity: Box::new(identity),
        },
        peer_id: PUBLISHER_PEER_ID,
        run_for: opts.run_for,
        stats: open_stats(opts.stats.as_ref())?,
        report,
        shared,
        liveness: None,
        played_at_last_second: (0, 0),
        router_limited,
        publisher: None,
    };
    std::mem::forget(routed);
    Ok((wire, driver))
}

/// Drops a stream's route unless the stream got going.
struct Unroute<'m>(&'m Mux, u64);

impl Drop for Unroute<'_> {
    fn drop(&mut self) {
        self.0.unroute(self.1);
    }
}

/// Subscribes to a stream and plays it through the chosen output.
///
/// A one-stream engine: the same [`Mux`] and [`start_subscribe`] as every
/// stream of an [`Engine`].
pub async fn subscribe(
    registry: &Registry,
    opts: SubscribeOptions,
    report: Reporter,
) -> anyhow::Result<(End, Summary)> {
    let (endpoint, events) = bind(&opts.net).await?;
    let mux = Mux::start(endpoint, events);
    let (_, _, driver) = start_subscribe(registry, &mux, opts, report, None).await?;
    Ok(driver.run().await)
}

/// Joins a stream on `mux`'s endpoint and builds its session from the
/// stream's parameters; returns its wire id, its title and the driver.
pub async fn start_subscribe(
    registry: &Registry,
    mux: &Mux,
    opts: SubscribeOptions,
    mut report: Reporter,
    shared: Option<engine::Shared>,
) -> anyhow::Result<(u64, String, Driver)> {
    let endpoint = mux.endpoint().clone();
    let server = ServerClient::new(endpoint.clone(), opts.server);
    let stream = StreamId(opts.stream.clone());
    let wire = wire_id(&stream);
    let events = mux.route(wire)?;
    let routed = Unroute(mux, wire);
    // The endpoint's key's id: peers and the server check it against the
    // key the link proved.
    let peer_id = endpoint.peer_id();
    if peer_id == PUBLISHER_PEER_ID {
        bail!("this endpoint's key hashes to the publisher's peer id; restart to get another key");
    }
    let joined = server
        .join(&stream, peer_id)
        .await
        .map_err(|e| match e.code() {
            Some(p2ner_proto::server::ErrorCode::NotFound) => {
                anyhow::anyhow!("no stream '{}' on server {}", opts.stream, opts.server)
            }
            _ => anyhow::anyhow!("joining '{}' at {}: {e}", opts.stream, opts.server),
        })?;
    let info = joined.info;
    let p = &info.params;
    let sreq = version_req(&p.scheduler.version)?;
    let scheduler = registry
        .new_scheduler(
            &p.scheduler.name,
            sreq.as_ref(),
            &wanted_params(&p.scheduler),
        )
        .map_err(|e| needs(Group::Scheduler, &p.scheduler, e))?;
    let oreq = version_req(&p.overlay.version)?;
    let overlay = registry
        .new_overlay(&p.overlay.name, oreq.as_ref(), &wanted_params(&p.overlay))
        .map_err(|e| needs(Group::Overlay, &p.overlay, e))?;
    let output = registry.new_output(&opts.output.name, None, &opts.output.params())?;
    let local = PeerInfo {
        id: PeerId(peer_id),
        addr: endpoint.local_addr().to_string().into(),
    };
    let mut cfg = SessionConfig::new(
        wire_id(&stream),
        stream.as_str(),
        local,
        p.bitrate_kbps,
        p.chunk_ms,
    );
    cfg.seed = peer_id;
    cfg.control_payload = endpoint.config().max_control_payload();
    cfg.scheduler_key = format!("scheduler.{}", p.scheduler.name);
    cfg.overlay_key = format!("overlay.{}", p.overlay.name);
    if p.buffer_ms > 0 {
        cfg.startup_chunks = (p.buffer_ms as u64 * 1000 / cfg.chunk_us).max(1);
    }
    cfg.source = info.publisher_addr.map(|addr| PeerInfo {
        id: PeerId(PUBLISHER_PEER_ID),
        addr: addr.to_string().into(),
    });
    let mut session = Session::new(
        cfg,
        Role::Subscriber {
            output,
            key: info.publisher,
        },
        scheduler,
        overlay,
        now_us(),
    );
    let format = StreamFormat {
        container: p.container.as_str().into(),
        description: p.input.as_str().into(),
        bitrate_kbps: p.bitrate_kbps,
        chunk_us: p.chunk_ms * 1000,
    };
    session
        .start(now_us(), Some(format))
        .map_err(anyhow::Error::msg)?;
    session.on_candidates(now_us(), &driver::peer_infos(&joined.peers));
    let silence_us = match p.silence_ms {
        0 => liveness::default_silence_us(p.buffer_ms, p.chunk_ms),
        ms => ms as u64 * 1000,
    };
    let mut watch = liveness::Liveness::new(now_us(), silence_us, p.chunk_ms as u64 * 1000);
    if info.liveness == p2ner_proto::server::Liveness::Offline {
        // Joined an offline stream: it ends unless chunks come soon.
        tracing::warn!(stream = %stream, "the server says the publisher is offline");
        watch.server_said(now_us(), liveness::Answer::Offline);
    }
    report(Report::Subscribed {
        stream: &stream,
        params: p,
        local: endpoint.local_addr(),
    });
    let title = p.title.clone();
    let router_limited = shared.is_none().then(|| mux.limited_counter());
    let driver = Driver {
        endpoint,
        events,
        session,
        stream,
        servers: vec![server],
        heartbeat: Heartbeat::Peer { peer_id },
        peer_id,
        run_for: opts.run_for,
        stats: open_stats(opts.stats.as_ref())?,
        report,
        shared,
        liveness: Some(watch),
        played_at_last_second: (0, 0),
        router_limited,
        publisher: info.publisher_addr,
    };
    std::mem::forget(routed);
    Ok((wire, title, driver))
}

/// Why a plugin the stream names cannot be had: which one, which version,
/// and (from the registry) what is installed and where it looked.
fn needs(group: Group, wanted: &PluginRef, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "this stream needs {group} '{}' {}: {e}",
        wanted.name,
        wanted.version
    )
}

fn wanted_params(wanted: &PluginRef) -> Params {
    wanted
        .params
        .iter()
        .fold(Params::new(), |p, (k, v)| p.with(k, v.as_str()))
}

/// Same major version, at least the publisher's: a compatible build.
fn version_req(version: &str) -> anyhow::Result<Option<VersionReq>> {
    if version.is_empty() {
        return Ok(None);
    }
    let req = VersionReq::parse(&format!("^{version}"))
        .with_context(|| format!("bad version '{version}' in the stream's parameters"))?;
    Ok(Some(req))
}

fn open_stats(path: Option<&PathBuf>) -> anyhow::Result<Option<Box<dyn std::io::Write + Send>>> {
    match path {
        None => Ok(None),
        Some(p) => {
            let file = std::fs::File::create(p)
                .with_context(|| format!("cannot write stats to {}", p.display()))?;
            Ok(Some(Box::new(std::io::LineWriter::new(file))))
        }
    }
}

fn rand_seed() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64()
}
