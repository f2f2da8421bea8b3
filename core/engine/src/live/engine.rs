//! One endpoint, many streams: the long-running engine of `p2ner run`.
//!
//! A [`Mux`] owns the endpoint's events and hands each stream its own
//! (by the stream id every envelope and chunk carries), so any number of
//! published and subscribed streams share one UDP socket. The one-stream
//! engines of `p2ner publish` and `p2ner subscribe` go through the same
//! [`Mux`] with a single route.
//!
//! An [`Engine`] keeps the sessions: each is built on the fly from its
//! parameters exactly as `publish`/`subscribe` build theirs, runs on its own
//! task, and ends alone (its input ended, a plugin failed or panicked, its
//! publisher left, or it was stopped) with the reason kept for frontends.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use p2ner_net::{Endpoint, Event, Events};
use p2ner_plugin_api::{ControlError, ControlEvent, Group, Params, SessionInfo};
use p2ner_proto::peer as wire;
use p2ner_proto::server::{ErrorCode, Liveness, StreamId};
use p2ner_server::client::ServerClient;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::driver::{now_us, End};
use super::{Choice, NetOptions, PublishOptions, Report, Reporter, SubscribeOptions};
use crate::plugins::Registry;

/// What a stream's events queue holds before the newest are dropped.
const ROUTE_CAPACITY: usize = 4096;
/// Events frontends can still read back.
const EVENTS_KEPT: usize = 1024;
/// How often a subscription asks its server whether the stream still exists.
const PUBLISHER_CHECK: Duration = Duration::from_secs(2);
/// A publisher that stopped heartbeating for this long is gone.
const PUBLISHER_OFFLINE_FOR: Duration = Duration::from_secs(10);

/// The endpoint's events, routed to the stream they belong to.
#[derive(Clone)]
pub struct Mux {
    endpoint: Endpoint,
    routes: Arc<Mutex<HashMap<u64, mpsc::Sender<Event>>>>,
    /// Events for no stream carried here, and events a slow stream missed.
    unrouted: Arc<AtomicU64>,
    overflowed: Arc<AtomicU64>,
}

impl Mux {
    /// Takes over the endpoint's events (on the current tokio runtime).
    pub fn start(endpoint: Endpoint, mut events: Events) -> Mux {
        let mux = Mux {
            endpoint: endpoint.clone(),
            routes: Arc::default(),
            unrouted: Arc::default(),
            overflowed: Arc::default(),
        };
        let m = mux.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let stream = match &ev {
                    Event::Message { payload, .. } => wire::decode(payload).map(|env| env.stream),
                    Event::Chunk { stream, .. } => Some(*stream),
                    Event::Request { from, id, .. } => {
                        // Peers do not serve requests; say so instead of
                        // letting the asker time out.
                        endpoint.respond(*from, *id, Bytes::new());
                        continue;
                    }
                };
                let route = stream.and_then(|s| m.routes.lock().unwrap().get(&s).cloned());
                match route {
                    Some(tx) => {
                        if tx.try_send(ev).is_err() {
                            m.overflowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        m.unrouted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        mux
    }

    /// The one endpoint every stream of the engine shares.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The events of one stream (by its wire id); one route per stream.
    pub fn route(&self, wire: u64) -> anyhow::Result<Events> {
        let mut routes = self.routes.lock().unwrap();
        if routes.contains_key(&wire) {
            bail!("this engine already carries that stream");
        }
        let (tx, rx) = mpsc::channel(ROUTE_CAPACITY);
        routes.insert(wire, tx);
        Ok(rx)
    }

    /// Stops delivering stream `wire`'s events (the stream ended).
    pub fn unroute(&self, wire: u64) {
        self.routes.lock().unwrap().remove(&wire);
    }

    /// How many streams are routed.
    pub fn streams(&self) -> usize {
        self.routes.lock().unwrap().len()
    }

    /// Messages for no routed stream, dropped.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// Events dropped because a stream's queue was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// Which streams use which neighbour addresses: the endpoint's state for a
/// neighbour goes only when no stream uses it any more.
#[derive(Default)]
pub struct PeerUse {
    held: Mutex<HashMap<u64, HashSet<SocketAddr>>>,
}

impl PeerUse {
    fn hold(&self, stream: u64, addrs: Vec<SocketAddr>) {
        self.held
            .lock()
            .unwrap()
            .insert(stream, addrs.into_iter().collect());
    }

    /// `stream` is done with `addr`; true when no other stream uses it.
    fn release(&self, stream: u64, addr: SocketAddr) -> bool {
        let mut held = self.held.lock().unwrap();
        if let Some(mine) = held.get_mut(&stream) {
            mine.remove(&addr);
        }
        !held.values().any(|s| s.contains(&addr))
    }

    fn drop_stream(&self, stream: u64) {
        self.held.lock().unwrap().remove(&stream);
    }
}

/// What a [`super::driver::Driver`] shares with the other streams of its
/// endpoint.
pub struct Shared {
    stop: watch::Receiver<bool>,
    peers: Arc<PeerUse>,
}

impl Shared {
    pub(crate) fn hold(&self, stream: u64, addrs: Vec<SocketAddr>) {
        self.peers.hold(stream, addrs)
    }

    pub(crate) fn release(&self, stream: u64, addr: SocketAddr) -> bool {
        self.peers.release(stream, addr)
    }
}

/// Resolves when the stream is asked to stop; never without [`Shared`].
pub(crate) async fn stopped(shared: &mut Option<Shared>) {
    match shared {
        Some(s) => {
            if s.stop.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// How an engine is set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The socket and upload cap every stream shares.
    pub net: NetOptions,
    /// The servers known from the start (`--server`).
    pub servers: Vec<SocketAddr>,
    /// The publisher key for every stream this engine publishes.
    pub identity: Option<PathBuf>,
    /// What remote frontends require; empty: none may serve.
    pub token: String,
}

/// A running engine: one endpoint, any number of sessions.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    mux: Mux,
    handle: tokio::runtime::Handle,
    identity: Option<PathBuf>,
    token: String,
    peers: Arc<PeerUse>,
    state: Mutex<State>,
    changed: Condvar,
    shutdown: watch::Sender<bool>,
    started_us: u64,
}

#[derive(Default)]
struct State {
    servers: Vec<SocketAddr>,
    sessions: Vec<Entry>,
    next_id: u64,
    events: VecDeque<ControlEvent>,
    next_seq: u64,
    counters: BTreeMap<String, u64>,
}

struct Entry {
    id: String,
    role: &'static str,
    stream: String,
    title: String,
    state: &'static str,
    reason: String,
    latest: Option<Value>,
    stop: Arc<watch::Sender<bool>>,
}

impl Entry {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.as_str().into(),
            role: self.role.into(),
            stream: self.stream.as_str().into(),
            title: self.title.as_str().into(),
            state: self.state.into(),
            reason: self.reason.as_str().into(),
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, "starting" | "playing")
    }
}

fn err(code: u32, e: impl std::fmt::Display) -> ControlError {
    ControlError::new(code, e.to_string())
}

impl Engine {
    /// Binds the endpoint; call on the runtime that will run the sessions.
    pub async fn start(registry: Arc<Registry>, opts: EngineOptions) -> anyhow::Result<Engine> {
        let (endpoint, events) = super::bind(&opts.net).await?;
        let mux = Mux::start(endpoint, events);
        let (shutdown, _) = watch::channel(false);
        Ok(Engine {
            inner: Arc::new(Inner {
                registry,
                mux,
                handle: tokio::runtime::Handle::current(),
                identity: opts.identity,
                token: opts.token,
                peers: Arc::default(),
                state: Mutex::new(State {
                    servers: opts.servers,
                    next_id: 1,
                    next_seq: 1,
                    ..State::default()
                }),
                changed: Condvar::new(),
                shutdown,
                started_us: now_us(),
            }),
        })
    }

    /// The plugins installed.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Where the engine's endpoint listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.mux.endpoint().local_addr()
    }

    /// The secret frontends must present (written to the token file).
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// Resolves once something asked the engine to end ([`Engine::shutdown`]).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.inner.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Asks every stream and frontend to stop.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Stops every running session and waits (bounded) until they ended.
    pub async fn stop_all(&self) {
        let ids: Vec<String> = {
            let st = self.inner.state.lock().unwrap();
            st.sessions
                .iter()
                .filter(|e| e.running())
                .map(|e| e.id.clone())
                .collect()
        };
        for id in &ids {
            let _ = self.stop(id);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let running = {
                let st = self.inner.state.lock().unwrap();
                st.sessions.iter().any(|e| e.running())
            };
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn event(&self, st: &mut State, session: &str, kind: &str, detail: String) {
        let seq = st.next_seq;
        st.next_seq += 1;
        st.events.push_back(ControlEvent {
            seq,
            t_ms: now_us() / 1000,
            session: session.into(),
            kind: kind.into(),
            detail: detail.into(),
        });
        while st.events.len() > EVENTS_KEPT {
            st.events.pop_front();
        }
        self.inner.changed.notify_all();
    }

    /// The servers streams are published to and browsed at.
    pub fn servers(&self) -> Vec<SocketAddr> {
        self.inner.state.lock().unwrap().servers.clone()
    }

    /// Adds a server for later streams; a bad address is a 400.
    pub fn add_server(&self, addr: &str) -> Result<(), ControlError> {
        let addr = resolve(addr)?;
        let mut st = self.inner.state.lock().unwrap();
        if !st.servers.contains(&addr) {
            st.servers.push(addr);
            self.event(&mut st, "", "server-added", addr.to_string());
        }
        Ok(())
    }

    /// Removes a server; one not known is a 404.
    pub fn remove_server(&self, addr: &str) -> Result<(), ControlError> {
        let addr = resolve(addr)?;
        let mut st = self.inner.state.lock().unwrap();
        let before = st.servers.len();
        st.servers.retain(|s| *s != addr);
        if st.servers.len() == before {
            return Err(err(
                ControlError::NOT_FOUND,
                format!("no server {addr} in this engine"),
            ));
        }
        self.event(&mut st, "", "server-removed", addr.to_string());
        Ok(())
    }

    /// Browses `servers` (every known one when empty) from the engine's socket.
    pub async fn browse(
        &self,
        servers: &[String],
    ) -> Result<Vec<(SocketAddr, p2ner_proto::server::StreamSummary)>, ControlError> {
        let servers: Vec<SocketAddr> = if servers.is_empty() {
            self.servers()
        } else {
            servers
                .iter()
                .map(|s| resolve(s))
                .collect::<Result<_, _>>()?
        };
        if servers.is_empty() {
            return Err(err(
                ControlError::BAD_REQUEST,
                "no server known: add one (add_server) or name one",
            ));
        }
        let (found, failed) = p2ner_server::client::browse_many(
            self.inner.mux.endpoint(),
            &servers,
            "",
            Duration::from_secs(3),
        )
        .await;
        if !servers.is_empty() && failed.len() == servers.len() {
            return Err(err(
                ControlError::FAILED,
                format!(
                    "no server answered ({})",
                    servers
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(found)
    }

    /// The streams running, as the control interface lists them.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let st = self.inner.state.lock().unwrap();
        let (mut running, ended): (Vec<_>, Vec<_>) = st
            .sessions
            .iter()
            .map(Entry::info)
            .partition(|i| matches!(i.state.as_str(), "starting" | "playing"));
        running.extend(ended);
        running
    }

    /// Stops stream `id`; one not running is a 404.
    pub fn stop(&self, id: &str) -> Result<(), ControlError> {
        let st = self.inner.state.lock().unwrap();
        let Some(e) = st.sessions.iter().find(|e| e.id == id) else {
            return Err(err(
                ControlError::NOT_FOUND,
                format!("no session '{id}' in this engine"),
            ));
        };
        e.stop.send_replace(true);
        Ok(())
    }

    /// A session's latest stats line; `""`: the engine's totals and all.
    pub fn stats(&self, id: &str) -> Result<Value, ControlError> {
        let st = self.inner.state.lock().unwrap();
        if id.is_empty() {
            let sessions: serde_json::Map<String, Value> = st
                .sessions
                .iter()
                .map(|e| (e.id.clone(), e.latest.clone().unwrap_or(Value::Null)))
                .collect();
            let net = self.inner.mux.endpoint().stats();
            let t = &net.total;
            return Ok(json!({
                "engine": {
                    "local": self.local_addr().to_string(),
                    "udp_sockets": 1,
                    "uptime_ms": (now_us() - self.inner.started_us) / 1000,
                    "servers": st.servers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "sessions": st.sessions.len(),
                    "running": st.sessions.iter().filter(|e| e.running()).count(),
                    "streams_routed": self.inner.mux.streams(),
                    "events_unrouted": self.inner.mux.unrouted(),
                    "events_overflowed": self.inner.mux.overflowed(),
                    "bytes_down": t.control.bytes_recv + t.data.bytes_recv,
                    "bytes_up": t.control.bytes_sent + t.data.bytes_sent,
                    "neighbours": net.peers.len(),
                    "malformed_dropped": net.malformed_dropped,
                    "frontends": counters_json(&st.counters),
                },
                "sessions": sessions,
            }));
        }
        let Some(e) = st.sessions.iter().find(|e| e.id == id) else {
            return Err(err(
                ControlError::NOT_FOUND,
                format!("no session '{id}' in this engine"),
            ));
        };
        Ok(e.latest.clone().unwrap_or_else(|| json!({})))
    }

    /// Counts a refused request of `frontend`, by reason (what `stats` reports).
    pub fn count(&self, frontend: &str, what: &str) {
        let mut st = self.inner.state.lock().unwrap();
        *st.counters.entry(format!("{frontend}.{what}")).or_insert(0) += 1;
    }

    /// Events after `after`, waiting up to `wait` for one.
    pub fn events(&self, after: u64, wait: Duration) -> Vec<ControlEvent> {
        let deadline = std::time::Instant::now() + wait;
        let mut st = self.inner.state.lock().unwrap();
        loop {
            let found: Vec<ControlEvent> = st
                .events
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect();
            let now = std::time::Instant::now();
            if !found.is_empty() || now >= deadline {
                return found;
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// `plugins list --json`'s array.
    pub fn plugins_json(&self) -> Value {
        Value::Array(
            self.registry()
                .components()
                .map(|c| {
                    json!({
                        "group": c.group.as_str(),
                        "name": c.info.name.as_str(),
                        "version": c.info.version.as_str(),
                        "library": c.library.info.name.as_str(),
                        "description": c.info.description.as_str(),
                    })
                })
                .collect(),
        )
    }

    /// Runs `fut` on the engine's runtime and waits for it, from any
    /// thread that is not one of the runtime's own (a frontend's).
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the engine's runtime is gone")
    }

    fn new_entry(&self, role: &'static str, stream: String, title: String) -> (String, Shared) {
        let (stop, rx) = watch::channel(false);
        let mut st = self.inner.state.lock().unwrap();
        let id = format!("s{}", st.next_id);
        st.next_id += 1;
        st.sessions.push(Entry {
            id: id.clone(),
            role,
            stream,
            title,
            state: "starting",
            reason: String::new(),
            latest: None,
            stop: Arc::new(stop),
        });
        self.event(&mut st, &id, "starting", String::new());
        (
            id,
            Shared {
                stop: rx,
                peers: self.inner.peers.clone(),
            },
        )
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Entry) -> Option<(&'static str, String)>) {
        let mut st = self.inner.state.lock().unwrap();
        let Some(e) = st.sessions.iter_mut().find(|e| e.id == id) else {
            return;
        };
        if let Some((kind, detail)) = f(e) {
            self.event(&mut st, id, kind, detail);
        }
    }

    fn forget_entry(&self, id: &str) {
        let mut st = self.inner.state.lock().unwrap();
        st.sessions.retain(|e| e.id != id);
    }

    /// What a session's driver reports lands in its entry.
    fn reporter(&self, id: &str) -> Reporter {
        let (engine, id) = (self.clone(), id.to_owned());
        Box::new(move |report| match report {
            Report::Publishing { stream, .. } => {
                let stream = stream.to_string();
                engine.update(&id, |e| {
                    e.stream = stream;
                    e.state = "playing";
                    Some(("playing", String::new()))
                });
            }
            Report::Subscribed { stream, .. } => {
                let stream = stream.to_string();
                engine.update(&id, |e| {
                    e.stream = stream;
                    None
                });
            }
            Report::Second {
                snapshot, source, ..
            } => {
                let line = serde_json::to_value(snapshot).unwrap_or_default();
                let playing = source || snapshot.playing;
                engine.update(&id, |e| {
                    e.latest = Some(line.clone());
                    if playing && e.state == "starting" {
                        e.state = "playing";
                        return Some(("playing", String::new()));
                    }
                    Some(("stats", line.to_string()))
                });
            }
        })
    }

    /// Runs a built driver to its end on its own thread (a stream's plugins
    /// are not `Sync`, and a slow one holds up only its stream), then keeps
    /// the summary and the reason.
    fn spawn(&self, id: String, wire: u64, driver: super::driver::Driver, watch: Option<Watch>) {
        let engine = self.clone();
        let name = format!("p2ner-{id}");
        let run = move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    engine.update(&id, |entry| {
                        entry.state = "failed";
                        entry.reason = format!("no runtime for the stream: {e}");
                        Some(("failed", entry.reason.clone()))
                    });
                    return;
                }
            };
            let drive = engine.clone().drive(id.clone(), wire, driver, watch);
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(drive)));
            if ran.is_err() {
                engine.inner.mux.unroute(wire);
                engine.inner.peers.drop_stream(wire);
                engine.update(&id, |entry| {
                    entry.state = "failed";
                    entry.reason = "the engine panicked running this stream".into();
                    Some(("failed", entry.reason.clone()))
                });
            }
        };
        if let Err(e) = std::thread::Builder::new().name(name).spawn(run) {
            tracing::error!("cannot start a stream's thread: {e}");
        }
    }

    async fn drive(
        self,
        id: String,
        wire: u64,
        driver: super::driver::Driver,
        watch: Option<Watch>,
    ) {
        let engine = self;
        {
            let stop = {
                let st = engine.inner.state.lock().unwrap();
                st.sessions
                    .iter()
                    .find(|e| e.id == id)
                    .map(|e| e.stop.clone())
            };
            let watcher = watch.zip(stop).map(|(w, stop)| {
                let (engine, id) = (engine.clone(), id.clone());
                tokio::spawn(async move {
                    let reason = w.publisher_gone().await;
                    engine.update(&id, |e| {
                        e.reason = reason;
                        None
                    });
                    stop.send_replace(true);
                })
            });
            let (end, summary) = driver.run().await;
            if let Some(w) = watcher {
                w.abort();
            }
            engine.inner.mux.unroute(wire);
            engine.inner.peers.drop_stream(wire);
            engine.update(&id, |e| {
                e.latest = serde_json::to_value(&summary).ok();
                let (state, reason) = match end {
                    End::Failed(why) => ("failed", why),
                    End::InputEnded => ("ended", "the input ended".into()),
                    End::Time => ("ended", "time is up".into()),
                    End::Interrupted => ("ended", "interrupted".into()),
                    End::Stopped => ("ended", "stopped".into()),
                };
                e.state = state;
                if e.reason.is_empty() {
                    e.reason = reason;
                }
                Some((state, e.reason.clone()))
            });
        }
    }

    /// Publishes a stream from a request (keys as the publish flags);
    /// returns once it is registered, with its session id.
    pub async fn publish(&self, request: Params) -> Result<String, ControlError> {
        let opts = self.publish_options(&request)?;
        let wire_guess = self.identity_stream(&opts);
        let (id, shared) = self.new_entry("publish", wire_guess.clone(), opts.title.clone());
        let report = self.reporter(&id);
        match super::start_publish(
            &self.inner.registry,
            &self.inner.mux,
            opts,
            report,
            Some(shared),
        )
        .await
        {
            Ok((wire, driver)) => {
                self.spawn(id.clone(), wire, driver, None);
                Ok(id)
            }
            Err(e) => {
                self.forget_entry(&id);
                Err(start_error(e))
            }
        }
    }

    /// Subscribes to a stream from a request (`stream`, `server`,
    /// `output`, `output.KEY`); returns once joined, with its session id.
    pub async fn subscribe(&self, request: Params) -> Result<String, ControlError> {
        let stream = request
            .get("stream")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err(ControlError::BAD_REQUEST, "subscribe needs 'stream'"))?
            .to_owned();
        let server = match request.get("server").filter(|s| !s.is_empty()) {
            Some(s) => resolve(s)?,
            None => self.find_stream(&stream).await?,
        };
        let output = choice(
            request.get("output").unwrap_or("null"),
            Group::Output,
            "output",
            &request,
            self.registry(),
        )?;
        let opts = SubscribeOptions {
            server,
            stream: stream.clone(),
            output,
            net: NetOptions {
                listen: self.local_addr(),
                upload_kbps: None,
            },
            run_for: None,
            stats: None,
        };
        let (id, shared) = self.new_entry("subscribe", stream.clone(), String::new());
        let report = self.reporter(&id);
        match super::start_subscribe(
            &self.inner.registry,
            &self.inner.mux,
            opts,
            report,
            Some(shared),
        )
        .await
        {
            Ok((wire, title, driver)) => {
                self.update(&id, |e| {
                    e.title = title;
                    None
                });
                let watch = Watch {
                    server: ServerClient::new(self.inner.mux.endpoint().clone(), server),
                    stream: StreamId(stream),
                };
                self.spawn(id.clone(), wire, driver, Some(watch));
                Ok(id)
            }
            Err(e) => {
                self.forget_entry(&id);
                Err(start_error(e))
            }
        }
    }

    /// The known server that lists `stream`.
    async fn find_stream(&self, stream: &str) -> Result<SocketAddr, ControlError> {
        let found = self.browse(&[]).await?;
        found
            .iter()
            .find(|(_, s)| s.id.as_str() == stream)
            .map(|(server, _)| *server)
            .ok_or_else(|| {
                err(
                    ControlError::NOT_FOUND,
                    format!("no stream '{stream}' on the engine's servers"),
                )
            })
    }

    fn identity_stream(&self, opts: &PublishOptions) -> String {
        super::identity(opts.identity.as_ref())
            .map(|id| StreamId::derive(&id.public_key(), &opts.title).to_string())
            .unwrap_or_default()
    }

    fn publish_options(&self, r: &Params) -> Result<PublishOptions, ControlError> {
        let bad = |e: String| err(ControlError::BAD_REQUEST, e);
        let title = r
            .get("title")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("publish needs 'title'".into()))?
            .to_owned();
        let num = |key: &str| -> Result<Option<u32>, ControlError> {
            r.get(key)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| bad(format!("'{key}': '{v}' is not a whole number")))
                })
                .transpose()
        };
        let registry = self.registry();
        let mut input = choice(
            r.get("input").unwrap_or("synthetic"),
            Group::Input,
            "input",
            r,
            registry,
        )?;
        if let Some(source) = r.get("source").filter(|s| !s.is_empty()) {
            input.params.insert("source".into(), source.to_owned());
        }
        let servers: Vec<SocketAddr> = match r.get("servers").filter(|s| !s.is_empty()) {
            Some(list) => list
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(resolve)
                .collect::<Result<_, _>>()?,
            None => self.servers(),
        };
        if servers.is_empty() {
            return Err(bad(
                "no server known: give 'servers' or add one (add_server)".into(),
            ));
        }
        Ok(PublishOptions {
            servers,
            title,
            description: r.get("description").unwrap_or("").to_owned(),
            input,
            bitrate_kbps: num("bitrate_kbps")?.unwrap_or(1000),
            chunk_ms: num("chunk_ms")?.unwrap_or(100),
            buffer_ms: num("buffer_ms")?.unwrap_or(1000),
            width: num("width")?,
            height: num("height")?,
            fps: num("fps")?,
            scheduler: choice(
                r.get("scheduler").unwrap_or("pull"),
                Group::Scheduler,
                "scheduler",
                r,
                registry,
            )?,
            overlay: choice(
                r.get("overlay").unwrap_or("mesh"),
                Group::Overlay,
                "overlay",
                r,
                registry,
            )?,
            identity: self.inner.identity.clone(),
            net: NetOptions {
                listen: self.local_addr(),
                upload_kbps: None,
            },
            run_for: None,
            stats: None,
        })
    }
}

/// `NAME[:VALUE]` plus the request's `PREFIX.KEY` parameters.
fn choice(
    text: &str,
    group: Group,
    prefix: &str,
    request: &Params,
    registry: &Registry,
) -> Result<Choice, ControlError> {
    let mut c = Choice::parse(text, group, registry)
        .map_err(|e| err(ControlError::NOT_FOUND, format!("{e:#}")))?;
    for (k, v) in request.iter() {
        if let Some(key) = k.strip_prefix(prefix).and_then(|k| k.strip_prefix('.')) {
            c.params.insert(key.to_owned(), v.to_owned());
        }
    }
    Ok(c)
}

fn start_error(e: anyhow::Error) -> ControlError {
    let text = format!("{e:#}");
    let code = if text.contains("already carries") {
        ControlError::CONFLICT
    } else if text.starts_with("no stream") || text.contains("is installed") {
        ControlError::NOT_FOUND
    } else {
        ControlError::FAILED
    };
    ControlError::new(code, text)
}

fn resolve(addr: &str) -> Result<SocketAddr, ControlError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            err(
                ControlError::BAD_REQUEST,
                format!("server '{addr}': not a HOST:PORT that resolves"),
            )
        })
}

fn counters_json(counters: &BTreeMap<String, u64>) -> Value {
    let mut out = serde_json::Map::new();
    for (key, n) in counters {
        let (frontend, what) = key.split_once('.').unwrap_or((key, ""));
        let entry = out.entry(frontend.to_owned()).or_insert_with(|| json!({}));
        entry[what] = json!(n);
    }
    Value::Object(out)
}

/// A subscription's look at its catalogue entry: the publisher removed it,
/// or stopped heartbeating.
struct Watch {
    server: ServerClient,
    stream: StreamId,
}

impl Watch {
    async fn publisher_gone(self) -> String {
        let mut offline_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(PUBLISHER_CHECK).await;
            match self.server.info(&self.stream).await {
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    return "the publisher ended the stream".into();
                }
                Ok(info) if info.liveness == Liveness::Offline => {
                    let since = *offline_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= PUBLISHER_OFFLINE_FOR {
                        return "the publisher is gone (no heartbeat)".into();
                    }
                }
                _ => offline_since = None,
            }
        }
    }
}

/// The error a user sees for an engine that could not start.
pub fn no_engine(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot start the engine: {e}")
}
