//! `p2ner.frontend`: controls an engine, locally or remotely.

use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    std_types::{RArc, RResult, RStr, RString, RVec},
    StableAbi,
};

use super::Guarded;
use crate::{ComponentInfo, Params, PluginError};

/// One stream as a browse shows it (the fields of `p2ner streams --json`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamSummary {
    /// The stream's id (what `p2ner subscribe` takes).
    pub id: RString,
    /// Its title.
    pub title: RString,
    /// The server it is listed on (`ip:port`).
    pub server: RString,
    /// The publisher's public key, in hex.
    pub publisher: RString,
    /// The scheduler every peer of the stream runs.
    pub scheduler: RString,
    /// The overlay every peer of the stream runs.
    pub overlay: RString,
    /// The stream's bitrate.
    pub bitrate_kbps: u32,
    /// Live peers the server knows.
    pub peers: u32,
}

/// Why a control call failed (ABI 1.1): a code, which XML-RPC faults carry
/// as they are, and the one line the command line would print.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    /// One of the `ControlError` code constants (HTTP-like: 400, 404, ...).
    pub code: u32,
    /// The one line the command line would print.
    pub message: RString,
}

impl ControlError {
    /// A request that cannot mean anything: a missing or malformed key.
    pub const BAD_REQUEST: u32 = 400;
    /// No such session, stream, server or plugin.
    pub const NOT_FOUND: u32 = 404;
    /// The engine already carries that stream.
    pub const CONFLICT: u32 = 409;
    /// The engine tried and failed (a source that cannot be opened, no
    /// server answered, a plugin error).
    pub const FAILED: u32 = 500;
    /// The engine predates the method (a frontend built for a later ABI).
    pub const UNSUPPORTED: u32 = 501;

    /// An error with `code` and a one-line `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        ControlError {
            code,
            message: RString::from(message.into()),
        }
    }

    pub(crate) fn unsupported(method: &str) -> Self {
        ControlError::new(
            Self::UNSUPPORTED,
            format!("this engine does not offer '{method}'"),
        )
    }
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ControlError {}

/// One publication or subscription of an engine (ABI 1.1), with the keys
/// of the XML-RPC `sessions()` structs.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionInfo {
    /// The engine's handle on it (`stop`, `stats`).
    pub id: RString,
    /// `publish` or `subscribe`.
    pub role: RString,
    /// The stream's catalogue id (empty until known).
    pub stream: RString,
    /// The stream's title, as its publisher registered it.
    pub title: RString,
    /// `starting`, `playing`, `ended` or `failed`.
    pub state: RString,
    /// Why it ended or failed (empty while it runs).
    pub reason: RString,
}

/// Something that happened in the engine (ABI 1.1), for frontends that
/// follow it live ([`EngineSessionsAbi::events`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlEvent {
    /// Increasing from 1; ask for the events after the last one seen.
    pub seq: u64,
    /// Engine time of the event, ms since the Unix epoch.
    pub t_ms: u64,
    /// The session it is about (empty for engine-wide events).
    pub session: RString,
    /// `started`, `playing`, `ended`, `failed`, `server-added`,
    /// `server-removed`, `stats` (a session's new `--stats` line).
    pub kind: RString,
    /// The reason, the server, or the stats line as JSON.
    pub detail: RString,
}

/// The engine as the host exposes it to frontends.
///
/// Calls block until the engine answers; a frontend calls them from its own
/// threads. Requests are [`Params`] named like the command-line flags
/// (`server`, `title`, `input`, `source`, `bitrate_kbps`, `output`, ...) so
/// that a new option never changes this interface.
#[sabi_trait]
pub trait EngineControlAbi: Send + Sync {
    /// The servers this engine knows (`ip:port`).
    fn servers(&self) -> RVec<RString>;
    /// Browses `servers` (all known ones when empty).
    fn streams(&self, servers: RVec<RString>) -> RResult<RVec<StreamSummary>, RString>;
    /// Publishes a stream; returns its id.
    fn publish(&self, request: &Params) -> RResult<RString, RString>;
    /// Subscribes to a stream; returns a session id.
    fn subscribe(&self, request: &Params) -> RResult<RString, RString>;
    /// Ends a publication or subscription by id.
    fn unsubscribe(&self, id: RStr<'_>) -> RResult<(), RString>;
    /// Every installed component.
    fn plugins(&self) -> RVec<ComponentInfo>;
    /// Engine, stream and neighbour statistics as one JSON object.
    #[sabi(last_prefix_field)]
    fn stats_json(&self) -> RString;
}

/// A shareable handle on [`EngineControlAbi`].
pub type EngineControlArc = EngineControlAbi_TO<'static, RArc<()>>;

/// The rest of the engine's control (1.1), beside [`EngineControlAbi`]
/// rather than appended to it.
///
/// abi_stable accepts a library whose prefix types have at least the
/// fields the host's have, never fewer; `EngineControlAbi` is reached from
/// every library's root module (`new_frontend` -> `FrontendAbi::start`), so
/// one appended method would turn away every library, of any group, built
/// before it. This interface is outside the root module instead: a library
/// built with this plugin-api exports it with its own layout
/// ([`ENGINE_SESSIONS_LAYOUT_SYMBOL`]) and an attach function
/// ([`ENGINE_SESSIONS_ATTACH_SYMBOL`]); the host checks the layout and
/// attaches its implementation before it starts the library's frontends.
/// A frontend on an engine that attached none gets `UNSUPPORTED` from
/// these calls; an engine meeting a library without the symbols (built
/// before 1.1) starts its frontends with [`EngineControlAbi`] alone.
#[sabi_trait]
pub trait EngineSessionsAbi: Send + Sync {
    /// Every session the engine has run, running ones first.
    fn sessions(&self) -> RResult<RVec<SessionInfo>, ControlError>;
    /// Starts a session: `role` is `publish` or `subscribe`, the request as
    /// for [`EngineControlAbi::publish`]; returns the session id.
    fn start_session(&self, role: RStr<'_>, request: &Params) -> RResult<RString, ControlError>;
    /// Ends a session; an unknown id is `NOT_FOUND`.
    fn stop_session(&self, id: RStr<'_>) -> RResult<(), ControlError>;
    /// The latest `--stats` line of a session as JSON (the final summary
    /// once it ended); `""`: the engine's totals and every session's line.
    fn session_stats(&self, id: RStr<'_>) -> RResult<RString, ControlError>;
    /// [`EngineControlAbi::streams`] with a typed error.
    fn browse(&self, servers: RVec<RString>) -> RResult<RVec<StreamSummary>, ControlError>;
    /// Adds a server (`host:port`) to the ones the engine knows.
    fn add_server(&self, addr: RStr<'_>) -> RResult<(), ControlError>;
    /// Forgets a server (`host:port`).
    fn remove_server(&self, addr: RStr<'_>) -> RResult<(), ControlError>;
    /// The events after `after`, waiting up to `wait_ms` for one when there
    /// is none yet (a long poll); old events are dropped first.
    fn events(&self, after: u64, wait_ms: u32) -> RVec<ControlEvent>;
    /// The secret remote clients must present (`p2ner run --token-file`);
    /// empty: the engine has none, and remote frontends must refuse to serve.
    fn token(&self) -> RString;
    /// Counts something a frontend refused (`what`: `unauthorized`,
    /// `too_large`, `malformed`, `unknown_method`, ...), in the engine's
    /// totals under `frontends.NAME.what`.
    fn count(&self, frontend: RStr<'_>, what: RStr<'_>);
    /// Every installed component as `p2ner plugins list --json` prints it
    /// (a JSON array of `{group, name, version, library, description}`).
    fn plugins_json(&self) -> RString;
    /// Asks the engine to end every session and exit (a console's `quit`).
    #[sabi(last_prefix_field)]
    fn shutdown(&self);
}

/// A shareable handle on [`EngineSessionsAbi`].
pub type EngineSessionsArc = EngineSessionsAbi_TO<'static, RArc<()>>;

/// The symbol (a `&'static TypeLayout` of [`EngineSessionsArc`]) the host
/// checks before attaching.
pub const ENGINE_SESSIONS_LAYOUT_SYMBOL: &[u8] = b"p2ner_engine_sessions_layout\0";
/// The symbol (`extern "C" fn(EngineSessionsArc)`) the host attaches with.
pub const ENGINE_SESSIONS_ATTACH_SYMBOL: &[u8] = b"p2ner_engine_sessions_attach\0";

static ATTACHED: std::sync::OnceLock<EngineSessionsArc> = std::sync::OnceLock::new();

/// Called through [`ENGINE_SESSIONS_ATTACH_SYMBOL`] (the export macro
/// defines it); one engine per process, so the first one stays.
#[doc(hidden)]
pub fn attach(ext: EngineSessionsArc) {
    let _ = ATTACHED.set(ext);
}

fn shallow(ext: &EngineSessionsArc) -> EngineSessionsArc {
    EngineSessionsArc::from_sabi(ext.obj.shallow_clone())
}

/// The engine handle a frontend gets: cheap to clone, usable from any thread.
pub struct EngineControl {
    base: EngineControlArc,
    ext: Option<EngineSessionsArc>,
}

impl Clone for EngineControl {
    fn clone(&self) -> Self {
        // An RArc-based trait object clones its handle, not the engine.
        EngineControl {
            base: EngineControlArc::from_sabi(self.base.obj.shallow_clone()),
            ext: self.ext.as_ref().map(shallow),
        }
    }
}

fn unsupported(method: &str) -> ControlError {
    ControlError::unsupported(method)
}

impl EngineControl {
    /// Wraps the host's implementation (host side).
    pub fn new<T>(engine: T) -> Self
    where
        T: EngineControlAbi + EngineSessionsAbi + Send + Sync + 'static,
    {
        let arc = RArc::new(engine);
        EngineControl {
            base: EngineControlArc::from_ptr(arc.clone(), TD_Opaque),
            ext: Some(EngineSessionsArc::from_ptr(arc, TD_Opaque)),
        }
    }

    /// Wraps the handle a frontend receives across the boundary, with the
    /// 1.1 interface when the host attached one to this library.
    pub fn from_abi(engine: EngineControlArc) -> Self {
        EngineControl {
            base: engine,
            ext: ATTACHED.get().map(shallow),
        }
    }

    /// The boundary handle, to give to a frontend (host side).
    pub fn to_abi(&self) -> EngineControlArc {
        self.clone().base
    }

    /// The 1.1 interface, to attach to a library (host side).
    pub fn sessions_abi(&self) -> Option<EngineSessionsArc> {
        self.ext.as_ref().map(shallow)
    }

    fn ext(&self, method: &str) -> Result<&EngineSessionsArc, ControlError> {
        self.ext.as_ref().ok_or_else(|| unsupported(method))
    }

    /// The servers this engine knows (`ip:port`).
    pub fn servers(&self) -> Vec<String> {
        self.base.servers().into_iter().map(String::from).collect()
    }

    /// Browses `servers` (all known ones when empty).
    pub fn streams(&self, servers: &[&str]) -> Result<Vec<StreamSummary>, String> {
        let servers = servers.iter().map(|s| RString::from(*s)).collect();
        self.base
            .streams(servers)
            .into_result()
            .map(RVec::into_vec)
            .map_err(String::from)
    }

    /// Publishes a stream; returns its id.
    pub fn publish(&self, request: &Params) -> Result<String, String> {
        self.base
            .publish(request)
            .into_result()
            .map(String::from)
            .map_err(String::from)
    }

    /// Subscribes to a stream; returns a session id.
    pub fn subscribe(&self, request: &Params) -> Result<String, String> {
        self.base
            .subscribe(request)
            .into_result()
            .map(String::from)
            .map_err(String::from)
    }

    /// Ends a publication or subscription by id.
    pub fn unsubscribe(&self, id: &str) -> Result<(), String> {
        self.base
            .unsubscribe(id.into())
            .into_result()
            .map_err(String::from)
    }

    /// Every installed component.
    pub fn plugins(&self) -> Vec<ComponentInfo> {
        self.base.plugins().into_vec()
    }

    /// Engine, stream and neighbour statistics as one JSON object.
    pub fn stats_json(&self) -> String {
        self.base.stats_json().into()
    }

    /// Every session the engine runs or ran, with its state and reason.
    pub fn sessions(&self) -> Result<Vec<SessionInfo>, ControlError> {
        self.ext("sessions")?
            .sessions()
            .into_result()
            .map(RVec::into_vec)
    }

    /// Starts a `publish` or `subscribe` session; returns its id.
    pub fn start_session(&self, role: &str, request: &Params) -> Result<String, ControlError> {
        self.ext("start_session")?
            .start_session(role.into(), request)
            .into_result()
            .map(String::from)
    }

    /// Stops session `id`; an unknown id is `NOT_FOUND`.
    pub fn stop_session(&self, id: &str) -> Result<(), ControlError> {
        self.ext("stop_session")?
            .stop_session(id.into())
            .into_result()
    }

    /// The latest `--stats` line of session `id` as JSON (`""`: the engine's totals).
    pub fn session_stats(&self, id: &str) -> Result<String, ControlError> {
        self.ext("session_stats")?
            .session_stats(id.into())
            .into_result()
            .map(String::from)
    }

    /// Browses `servers` (all known ones when empty).
    pub fn browse(&self, servers: &[&str]) -> Result<Vec<StreamSummary>, ControlError> {
        let servers = servers.iter().map(|s| RString::from(*s)).collect();
        self.ext("browse")?
            .browse(servers)
            .into_result()
            .map(RVec::into_vec)
    }

    /// Adds a server (`host:port`, names resolved).
    pub fn add_server(&self, addr: &str) -> Result<(), ControlError> {
        self.ext("add_server")?
            .add_server(addr.into())
            .into_result()
    }

    /// Forgets a server.
    pub fn remove_server(&self, addr: &str) -> Result<(), ControlError> {
        self.ext("remove_server")?
            .remove_server(addr.into())
            .into_result()
    }

    /// Empty on an engine without the 1.1 interface.
    pub fn events(&self, after: u64, wait_ms: u32) -> Vec<ControlEvent> {
        self.ext
            .as_ref()
            .map(|e| e.events(after, wait_ms).into_vec())
            .unwrap_or_default()
    }

    /// Empty on an engine without the 1.1 interface: remote frontends must
    /// then refuse to serve.
    pub fn token(&self) -> String {
        self.ext
            .as_ref()
            .map(|e| String::from(e.token()))
            .unwrap_or_default()
    }

    /// Counts one refused or malformed request of `frontend` (shown in the stats).
    pub fn count(&self, frontend: &str, what: &str) {
        if let Some(e) = &self.ext {
            e.count(frontend.into(), what.into())
        }
    }

    /// Every installed component, as `plugins list --json` prints them.
    pub fn plugins_json(&self) -> String {
        self.ext
            .as_ref()
            .map(|e| String::from(e.plugins_json()))
            .unwrap_or_else(|| "[]".into())
    }

    /// Asks the engine to end (every session stops cleanly).
    pub fn shutdown(&self) {
        if let Some(e) = &self.ext {
            e.shutdown()
        }
    }
}

/// A frontend, as a plugin author writes it.
///
/// Frontends serve people or scripts (a console, XML-RPC, a web page); they
/// run their own threads, started in [`Frontend::start`] and joined in
/// [`Frontend::stop`]; a frontend may run an async runtime of its own on
/// them (the `xmlrpc` frontend serves HTTP on tokio), never the host's.
pub trait Frontend: Send + 'static {
    /// Starts serving, with the engine to drive.
    fn start(&mut self, engine: EngineControl) -> Result<(), PluginError>;
    /// Stops serving and joins the frontend's threads.
    fn stop(&mut self) -> Result<(), PluginError>;
}

/// The boundary face of [`Frontend`].
#[sabi_trait]
pub trait FrontendAbi: Send {
    /// [`Frontend::start`].
    fn start(&mut self, engine: EngineControlArc) -> RResult<(), PluginError>;
    /// [`Frontend::stop`].
    #[sabi(last_prefix_field)]
    fn stop(&mut self) -> RResult<(), PluginError>;
}

impl<T: Frontend> FrontendAbi for Guarded<T> {
    fn start(&mut self, engine: EngineControlArc) -> RResult<(), PluginError> {
        self.guard(|f| f.start(EngineControl::from_abi(engine)))
    }
    fn stop(&mut self) -> RResult<(), PluginError> {
        self.guard(|f| f.stop())
    }
}
