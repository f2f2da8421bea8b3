//! The host side of `EngineControl`: an [`Engine`] as frontends see it, and
//! the frontends `p2ner run --frontend NAME[:VALUE]` loads.
//!
//! Every call is made from a frontend's own thread and runs under a panic
//! guard: a host panic must not unwind into a plugin's `extern "C"` frame.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use abi_stable::std_types::{RResult, RStr, RString, RVec};
use p2ner_plugin_api::{
    ComponentInfo, ControlError, ControlEvent, EngineControl, EngineControlAbi, EngineSessionsAbi,
    EngineSessionsArc, FrontendBox, Group, Params, SessionInfo, StreamSummary,
    ENGINE_SESSIONS_ATTACH_SYMBOL, ENGINE_SESSIONS_LAYOUT_SYMBOL,
};

use super::{Choice, Engine};

/// [`Engine`] behind the frontend ABI.
pub struct Control {
    engine: Engine,
}

impl Control {
    /// The [`EngineControl`] frontends get: the engine behind the ABI's control interface.
    pub fn handle(engine: Engine) -> EngineControl {
        EngineControl::new(Control { engine })
    }
}

fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, ControlError>) -> RResult<T, ControlError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.into(),
        Err(_) => RResult::RErr(ControlError::new(
            ControlError::FAILED,
            format!("the engine failed answering '{what}' (a bug: see the log)"),
        )),
    }
}

fn guard_or<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

fn summaries(
    found: Vec<(std::net::SocketAddr, p2ner_proto::server::StreamSummary)>,
) -> RVec<StreamSummary> {
    found
        .into_iter()
        .map(|(server, s)| StreamSummary {
            id: s.id.as_str().into(),
            title: s.title.as_str().into(),
            server: server.to_string().into(),
            publisher: s.publisher.to_hex().into(),
            scheduler: s.scheduler.as_str().into(),
            overlay: s.overlay.as_str().into(),
            bitrate_kbps: s.bitrate_kbps,
            peers: s.peers,
        })
        .collect()
}

impl Control {
    fn start(&self, role: &str, request: &Params) -> Result<RString, ControlError> {
        let (engine, request) = (self.engine.clone(), request.clone());
        let id = match role {
            "publish" => self
                .engine
                .block_on(async move { engine.publish(request).await }),
            "subscribe" => self
                .engine
                .block_on(async move { engine.subscribe(request).await }),
            other => Err(ControlError::new(
                ControlError::BAD_REQUEST,
                format!("no role '{other}': publish or subscribe"),
            )),
        }?;
        Ok(id.into())
    }

    fn browse_typed(&self, servers: RVec<RString>) -> Result<RVec<StreamSummary>, ControlError> {
        let servers: Vec<String> = servers.into_iter().map(String::from).collect();
        let engine = self.engine.clone();
        let found = self
            .engine
            .block_on(async move { engine.browse(&servers).await })?;
        Ok(summaries(found))
    }
}

impl EngineControlAbi for Control {
    fn servers(&self) -> RVec<RString> {
        guard_or(RVec::new(), || {
            self.engine
                .servers()
                .iter()
                .map(|s| RString::from(s.to_string()))
                .collect()
        })
    }

    fn streams(&self, servers: RVec<RString>) -> RResult<RVec<StreamSummary>, RString> {
        guard("streams", || self.browse_typed(servers))
            .into_result()
            .map_err(|e| e.message)
            .into()
    }

    fn publish(&self, request: &Params) -> RResult<RString, RString> {
        guard("publish", || self.start("publish", request))
            .into_result()
            .map_err(|e| e.message)
            .into()
    }

    fn subscribe(&self, request: &Params) -> RResult<RString, RString> {
        guard("subscribe", || self.start("subscribe", request))
            .into_result()
            .map_err(|e| e.message)
            .into()
    }

    fn unsubscribe(&self, id: RStr<'_>) -> RResult<(), RString> {
        guard("unsubscribe", || self.engine.stop(id.as_str()))
            .into_result()
            .map_err(|e| e.message)
            .into()
    }

    fn plugins(&self) -> RVec<ComponentInfo> {
        guard_or(RVec::new(), || {
            self.engine
                .registry()
                .components()
                .map(|c| c.info.clone())
                .collect()
        })
    }

    fn stats_json(&self) -> RString {
        guard_or(RString::from("{}"), || {
            self.engine
                .stats("")
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "{}".into())
                .into()
        })
    }
}

impl EngineSessionsAbi for Control {
    fn sessions(&self) -> RResult<RVec<SessionInfo>, ControlError> {
        guard("sessions", || Ok(self.engine.sessions().into()))
    }

    fn start_session(&self, role: RStr<'_>, request: &Params) -> RResult<RString, ControlError> {
        guard("start_session", || self.start(role.as_str(), request))
    }

    fn stop_session(&self, id: RStr<'_>) -> RResult<(), ControlError> {
        guard("stop_session", || self.engine.stop(id.as_str()))
    }

    fn session_stats(&self, id: RStr<'_>) -> RResult<RString, ControlError> {
        guard("session_stats", || {
            self.engine.stats(id.as_str()).map(|v| v.to_string().into())
        })
    }

    fn browse(&self, servers: RVec<RString>) -> RResult<RVec<StreamSummary>, ControlError> {
        guard("browse", || self.browse_typed(servers))
    }

    fn add_server(&self, addr: RStr<'_>) -> RResult<(), ControlError> {
        guard("add_server", || self.engine.add_server(addr.as_str()))
    }

    fn remove_server(&self, addr: RStr<'_>) -> RResult<(), ControlError> {
        guard("remove_server", || self.engine.remove_server(addr.as_str()))
    }

    fn events(&self, after: u64, wait_ms: u32) -> RVec<ControlEvent> {
        // Bounded, so a frontend thread is never parked for long.
        let wait = Duration::from_millis(wait_ms.min(30_000) as u64);
        guard_or(RVec::new(), || self.engine.events(after, wait).into())
    }

    fn token(&self) -> RString {
        self.engine.token().into()
    }

    fn count(&self, frontend: RStr<'_>, what: RStr<'_>) {
        guard_or((), || self.engine.count(frontend.as_str(), what.as_str()))
    }

    fn plugins_json(&self) -> RString {
        guard_or(RString::from("[]"), || {
            self.engine.plugins_json().to_string().into()
        })
    }

    fn shutdown(&self) {
        self.engine.shutdown()
    }
}

/// A started frontend; [`RunningFrontend::stop`] joins its threads.
pub struct RunningFrontend {
    /// The frontend's component name, for messages.
    pub name: String,
    frontend: FrontendBox,
}

impl RunningFrontend {
    /// Stops the frontend and joins its threads.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.frontend
            .stop()
            .into_result()
            .map_err(|e| anyhow::anyhow!("frontend '{}' did not stop cleanly: {e}", self.name))
    }
}

/// Loads `NAME[:VALUE]` (VALUE: the frontend's first parameter, e.g. the
/// listen address) and starts it on `control`.
pub fn start_frontend(
    engine: &Engine,
    control: &EngineControl,
    spec: &str,
) -> anyhow::Result<RunningFrontend> {
    let choice = Choice::parse(spec, Group::Frontend, engine.registry())?;
    let component = engine
        .registry()
        .find(Group::Frontend, &choice.name, None)?;
    if let Some(ext) = control.sessions_abi() {
        if let Err(why) = attach(&component.library.path, ext) {
            tracing::info!(frontend = %choice.name, "{why}: it gets the 1.0 control only");
        }
    }
    let mut frontend = engine
        .registry()
        .new_frontend(&choice.name, None, &choice.params())?;
    frontend
        .start(control.to_abi())
        .into_result()
        .map_err(|e| anyhow::anyhow!("frontend '{}': {e}", choice.name))?;
    Ok(RunningFrontend {
        name: choice.name,
        frontend,
    })
}

/// Gives a library the 1.1 control interface ([`EngineSessionsAbi`]), if it
/// exports the symbols for it and its layout is compatible. The engine's one
/// `unsafe`: reading a symbol from a plugin library.
#[allow(unsafe_code)]
fn attach(path: &std::path::Path, ext: EngineSessionsArc) -> Result<(), String> {
    use abi_stable::library::RawLibrary;
    use abi_stable::type_layout::TypeLayout;
    use abi_stable::StableAbi;
    // The library is loaded already (and never unloaded): this finds it.
    let lib = RawLibrary::load_at(path).map_err(|e| format!("reopening: {e}"))?;
    // SAFETY: the symbols are the static (a `&TypeLayout`; the symbol is
    // its address) and the function the export macro defines; the layout
    // is checked before the call.
    unsafe {
        let layout = lib
            .get::<&'static &'static TypeLayout>(ENGINE_SESSIONS_LAYOUT_SYMBOL)
            .map_err(|_| "built before the 1.1 control interface".to_string())?;
        abi_stable::abi_stability::abi_checking::check_layout_compatibility(
            <EngineSessionsArc as StableAbi>::LAYOUT,
            &layout,
        )
        .map_err(|e| format!("its 1.1 control interface differs: {e}"))?;
        let attach = lib
            .get::<extern "C" fn(EngineSessionsArc)>(ENGINE_SESSIONS_ATTACH_SYMBOL)
            .map_err(|_| "no attach function".to_string())?;
        (*attach)(ext);
    }
    // Keep the handle open for good, as the loader does.
    std::mem::forget(lib);
    Ok(())
}
