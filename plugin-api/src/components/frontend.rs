//! `p2ner.frontend`: controls an engine, locally or remotely.

use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    std_types::{RArc, RResult, RResult::RErr, RStr, RString, RVec},
    StableAbi,
};

use super::Guarded;
use crate::{ComponentInfo, Params, PluginError};

/// One stream as a browse shows it (the fields of `p2ner streams --json`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamSummary {
    pub id: RString,
    pub title: RString,
    pub server: RString,
    pub publisher: RString,
    pub scheduler: RString,
    pub overlay: RString,
    pub bitrate_kbps: u32,
    pub peers: u32,
}

/// Why a control call failed (ABI 1.1): a code, which XML-RPC faults carry
/// as they are, and the one line the command line would print.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub code: u32,
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

    pub fn new(code: u32, message: impl Into<String>) -> Self {
        ControlError {
            code,
            message: RString::from(message.into()),
        }
    }

    fn unsupported(method: &str) -> Self {
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
    pub title: RString,
    /// `starting`, `playing`, `ended` or `failed`.
    pub state: RString,
    /// Why it ended or failed (empty while it runs).
    pub reason: RString,
}

/// Something that happened in the engine (ABI 1.1), for frontends that
/// follow it live ([`EngineControlAbi::events`]).
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

    // ABI 1.1: appended after the prefix, each with a default body, so a
    // frontend built for 1.1 still runs on a 1.0 engine (the call answers
    // `UNSUPPORTED`) and a 1.0 frontend on every later engine.

    /// Every session the engine has run, running ones first.
    fn sessions(&self) -> RResult<RVec<SessionInfo>, ControlError> {
        RErr(ControlError::unsupported("sessions"))
    }
    /// Starts a session: `role` is `publish` or `subscribe`, the request as
    /// for [`EngineControlAbi::publish`]; returns the session id.
    fn start_session(&self, role: RStr<'_>, request: &Params) -> RResult<RString, ControlError> {
        let _ = (role, request);
        RErr(ControlError::unsupported("start_session"))
    }
    /// Ends a session; an unknown id is `NOT_FOUND`.
    fn stop_session(&self, id: RStr<'_>) -> RResult<(), ControlError> {
        let _ = id;
        RErr(ControlError::unsupported("stop_session"))
    }
    /// The latest `--stats` line of a session as JSON (the final summary
    /// once it ended); `""`: the engine's totals and every session's line.
    fn session_stats(&self, id: RStr<'_>) -> RResult<RString, ControlError> {
        let _ = id;
        RErr(ControlError::unsupported("session_stats"))
    }
    /// [`EngineControlAbi::streams`] with a typed error.
    fn browse(&self, servers: RVec<RString>) -> RResult<RVec<StreamSummary>, ControlError> {
        let _ = servers;
        RErr(ControlError::unsupported("browse"))
    }
    /// Adds a server (`host:port`) to the ones the engine knows.
    fn add_server(&self, addr: RStr<'_>) -> RResult<(), ControlError> {
        let _ = addr;
        RErr(ControlError::unsupported("add_server"))
    }
    fn remove_server(&self, addr: RStr<'_>) -> RResult<(), ControlError> {
        let _ = addr;
        RErr(ControlError::unsupported("remove_server"))
    }
    /// The events after `after`, waiting up to `wait_ms` for one when there
    /// is none yet (a long poll); old events are dropped first.
    fn events(&self, after: u64, wait_ms: u32) -> RVec<ControlEvent> {
        let _ = (after, wait_ms);
        RVec::new()
    }
    /// The secret remote clients must present (`p2ner run --token-file`);
    /// empty: the engine has none, and remote frontends must refuse to serve.
    fn token(&self) -> RString {
        RString::new()
    }
    /// Counts something a frontend refused (`what`: `unauthorized`,
    /// `too_large`, `malformed`, `unknown_method`, ...), in the engine's
    /// totals under `frontends.NAME.what`.
    fn count(&self, frontend: RStr<'_>, what: RStr<'_>) {
        let _ = (frontend, what);
    }
    /// Every installed component as `p2ner plugins list --json` prints it
    /// (a JSON array of `{group, name, version, library, description}`).
    fn plugins_json(&self) -> RString {
        RString::from("[]")
    }
    /// Asks the engine to end every session and exit (a console's `quit`).
    fn shutdown(&self) {}
}

/// A shareable handle on [`EngineControlAbi`].
pub type EngineControlArc = EngineControlAbi_TO<'static, RArc<()>>;

/// The engine handle a frontend gets: cheap to clone, usable from any thread.
pub struct EngineControl(EngineControlArc);

impl Clone for EngineControl {
    fn clone(&self) -> Self {
        // An RArc-based trait object clones its handle, not the engine.
        EngineControl(EngineControlArc::from_sabi(self.0.obj.shallow_clone()))
    }
}

impl EngineControl {
    /// Wraps the host's implementation (host side).
    pub fn new<T: EngineControlAbi + Send + Sync + 'static>(engine: T) -> Self {
        Self::from_abi(EngineControlArc::from_ptr(RArc::new(engine), TD_Opaque))
    }

    /// Wraps the handle a frontend receives across the boundary.
    pub fn from_abi(engine: EngineControlArc) -> Self {
        EngineControl(engine)
    }

    /// The boundary handle, to give to a frontend (host side).
    pub fn to_abi(&self) -> EngineControlArc {
        self.clone().0
    }

    pub fn servers(&self) -> Vec<String> {
        self.0.servers().into_iter().map(String::from).collect()
    }

    pub fn streams(&self, servers: &[&str]) -> Result<Vec<StreamSummary>, String> {
        let servers = servers.iter().map(|s| RString::from(*s)).collect();
        self.0
            .streams(servers)
            .into_result()
            .map(RVec::into_vec)
            .map_err(String::from)
    }

    pub fn publish(&self, request: &Params) -> Result<String, String> {
        self.0
            .publish(request)
            .into_result()
            .map(String::from)
            .map_err(String::from)
    }

    pub fn subscribe(&self, request: &Params) -> Result<String, String> {
        self.0
            .subscribe(request)
            .into_result()
            .map(String::from)
            .map_err(String::from)
    }

    pub fn unsubscribe(&self, id: &str) -> Result<(), String> {
        self.0
            .unsubscribe(id.into())
            .into_result()
            .map_err(String::from)
    }

    pub fn plugins(&self) -> Vec<ComponentInfo> {
        self.0.plugins().into_vec()
    }

    pub fn stats_json(&self) -> String {
        self.0.stats_json().into()
    }

    pub fn sessions(&self) -> Result<Vec<SessionInfo>, ControlError> {
        self.0.sessions().into_result().map(RVec::into_vec)
    }

    pub fn start_session(&self, role: &str, request: &Params) -> Result<String, ControlError> {
        self.0
            .start_session(role.into(), request)
            .into_result()
            .map(String::from)
    }

    pub fn stop_session(&self, id: &str) -> Result<(), ControlError> {
        self.0.stop_session(id.into()).into_result()
    }

    pub fn session_stats(&self, id: &str) -> Result<String, ControlError> {
        self.0
            .session_stats(id.into())
            .into_result()
            .map(String::from)
    }

    pub fn browse(&self, servers: &[&str]) -> Result<Vec<StreamSummary>, ControlError> {
        let servers = servers.iter().map(|s| RString::from(*s)).collect();
        self.0.browse(servers).into_result().map(RVec::into_vec)
    }

    pub fn add_server(&self, addr: &str) -> Result<(), ControlError> {
        self.0.add_server(addr.into()).into_result()
    }

    pub fn remove_server(&self, addr: &str) -> Result<(), ControlError> {
        self.0.remove_server(addr.into()).into_result()
    }

    pub fn events(&self, after: u64, wait_ms: u32) -> Vec<ControlEvent> {
        self.0.events(after, wait_ms).into_vec()
    }

    pub fn token(&self) -> String {
        self.0.token().into()
    }

    pub fn count(&self, frontend: &str, what: &str) {
        self.0.count(frontend.into(), what.into())
    }

    pub fn plugins_json(&self) -> String {
        self.0.plugins_json().into()
    }

    pub fn shutdown(&self) {
        self.0.shutdown()
    }
}

/// A frontend, as a plugin author writes it.
///
/// Frontends serve people or scripts (a console, XML-RPC, a web page); they
/// run their own threads, started in [`Frontend::start`] and joined in
/// [`Frontend::stop`]; a frontend may run an async runtime of its own on
/// them (the `xmlrpc` frontend serves HTTP on tokio), never the host's.
pub trait Frontend: Send + 'static {
    fn start(&mut self, engine: EngineControl) -> Result<(), PluginError>;
    fn stop(&mut self) -> Result<(), PluginError>;
}

/// The boundary face of [`Frontend`].
#[sabi_trait]
pub trait FrontendAbi: Send {
    fn start(&mut self, engine: EngineControlArc) -> RResult<(), PluginError>;
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
