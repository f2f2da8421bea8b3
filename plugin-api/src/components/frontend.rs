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

    /// The servers this engine knows (`ip:port`).
    pub fn servers(&self) -> Vec<String> {
        self.0.servers().into_iter().map(String::from).collect()
    }

    /// Browses `servers` (all known ones when empty).
    pub fn streams(&self, servers: &[&str]) -> Result<Vec<StreamSummary>, String> {
        let servers = servers.iter().map(|s| RString::from(*s)).collect();
        self.0
            .streams(servers)
            .into_result()
            .map(RVec::into_vec)
            .map_err(String::from)
    }

    /// Publishes a stream; returns its id.
    pub fn publish(&self, request: &Params) -> Result<String, String> {
        self.0
            .publish(request)
            .into_result()
            .map(String::from)
            .map_err(String::from)
    }

    /// Subscribes to a stream; returns a session id.
    pub fn subscribe(&self, request: &Params) -> Result<String, String> {
        self.0
            .subscribe(request)
            .into_result()
            .map(String::from)
            .map_err(String::from)
    }

    /// Ends a publication or subscription by id.
    pub fn unsubscribe(&self, id: &str) -> Result<(), String> {
        self.0
            .unsubscribe(id.into())
            .into_result()
            .map_err(String::from)
    }

    /// Every installed component.
    pub fn plugins(&self) -> Vec<ComponentInfo> {
        self.0.plugins().into_vec()
    }

    /// Engine, stream and neighbour statistics as one JSON object.
    pub fn stats_json(&self) -> String {
        self.0.stats_json().into()
    }
}

/// A frontend, as a plugin author writes it.
///
/// Frontends serve people or scripts (a console, XML-RPC, a web page); they
/// run their own threads, started in [`Frontend::start`] and joined in
/// [`Frontend::stop`], and never an async runtime.
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
