//! What [`export_plugin!`](crate::export_plugin) expands to, kept out of the
//! macro so that it is ordinary, tested Rust.
//!
//! Statics here are per library: each cdylib links its own copy of this crate.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::{
    library::RootModuleResult,
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, RBoxError, RResult, RStr},
};

use crate::components::{
    FrontendAbi_TO, Guarded, InputAbi_TO, OutputAbi_TO, OverlayAbi_TO, SchedulerAbi_TO,
};
use crate::describe::Group;
use crate::{
    ComponentInfo, ComponentSpec, Frontend, FrontendBox, HostServicesRef, Input, InputBox,
    LibraryInfo, Output, OutputBox, Overlay, OverlayBox, Params, PluginError, PluginLib,
    PluginLibRef, Scheduler, SchedulerBox, ABI_VERSION,
};

/// What a plugin passes to [`export_plugin!`](crate::export_plugin).
pub struct Exported {
    pub name: &'static str,
    pub version: &'static str,
    pub license: &'static str,
    pub register: fn(&mut Registrar),
}

type Factory<T> = Box<dyn Fn(&Params) -> Result<T, PluginError> + Send + Sync>;

struct Entry<T> {
    spec: ComponentSpec,
    make: Factory<T>,
}

/// Where a plugin's `register` function lists its components.
#[derive(Default)]
pub struct Registrar {
    schedulers: Vec<Entry<SchedulerBox>>,
    overlays: Vec<Entry<OverlayBox>>,
    inputs: Vec<Entry<InputBox>>,
    outputs: Vec<Entry<OutputBox>>,
    frontends: Vec<Entry<FrontendBox>>,
}

impl Registrar {
    pub fn scheduler<T, F>(&mut self, spec: ComponentSpec, make: F)
    where
        T: Scheduler,
        F: Fn(&Params) -> Result<T, PluginError> + Send + Sync + 'static,
    {
        self.schedulers.push(Entry {
            spec,
            make: Box::new(move |p| {
                make(p).map(|s| SchedulerAbi_TO::from_ptr(RBox::new(Guarded::new(s)), TD_Opaque))
            }),
        });
    }

    pub fn overlay<T, F>(&mut self, spec: ComponentSpec, make: F)
    where
        T: Overlay,
        F: Fn(&Params) -> Result<T, PluginError> + Send + Sync + 'static,
    {
        self.overlays.push(Entry {
            spec,
            make: Box::new(move |p| {
                make(p).map(|o| OverlayAbi_TO::from_ptr(RBox::new(Guarded::new(o)), TD_Opaque))
            }),
        });
    }

    pub fn input<T, F>(&mut self, spec: ComponentSpec, make: F)
    where
        T: Input,
        F: Fn(&Params) -> Result<T, PluginError> + Send + Sync + 'static,
    {
        self.inputs.push(Entry {
            spec,
            make: Box::new(move |p| {
                make(p).map(|i| InputAbi_TO::from_ptr(RBox::new(Guarded::new(i)), TD_Opaque))
            }),
        });
    }

    pub fn output<T, F>(&mut self, spec: ComponentSpec, make: F)
    where
        T: Output,
        F: Fn(&Params) -> Result<T, PluginError> + Send + Sync + 'static,
    {
        self.outputs.push(Entry {
            spec,
            make: Box::new(move |p| {
                make(p).map(|o| OutputAbi_TO::from_ptr(RBox::new(Guarded::new(o)), TD_Opaque))
            }),
        });
    }

    pub fn frontend<T, F>(&mut self, spec: ComponentSpec, make: F)
    where
        T: Frontend,
        F: Fn(&Params) -> Result<T, PluginError> + Send + Sync + 'static,
    {
        self.frontends.push(Entry {
            spec,
            make: Box::new(move |p| {
                make(p).map(|f| FrontendAbi_TO::from_ptr(RBox::new(Guarded::new(f)), TD_Opaque))
            }),
        });
    }

    fn components(&self) -> Vec<ComponentInfo> {
        fn infos<T>(
            group: Group,
            entries: &[Entry<T>],
        ) -> impl Iterator<Item = ComponentInfo> + '_ {
            entries.iter().map(move |e| e.spec.info(group))
        }
        infos(Group::Scheduler, &self.schedulers)
            .chain(infos(Group::Overlay, &self.overlays))
            .chain(infos(Group::Input, &self.inputs))
            .chain(infos(Group::Output, &self.outputs))
            .chain(infos(Group::Frontend, &self.frontends))
            .collect()
    }
}

struct Library {
    exported: Exported,
    registrar: Registrar,
}

static LIBRARY: OnceLock<Library> = OnceLock::new();

fn library() -> &'static Library {
    LIBRARY
        .get()
        .expect("p2ner plugin used before its root module was loaded")
}

/// Runs a plugin's `register` inside the root-module loader, so that a panic
/// there is reported by the host as "init panicked: <message>".
pub fn library_loader(exported: Exported) -> RootModuleResult {
    install_panic_hook();
    let register = exported.register;
    let mut registrar = Registrar::default();
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| register(&mut registrar))) {
        let message = panic_message(payload);
        let err = RBoxError::from_fmt(&format_args!("init panicked: {message}"));
        return RootModuleResult::from(Err(abi_stable::library::RootModuleError::Returned(err)));
    }
    let _ = LIBRARY.set(Library {
        exported,
        registrar,
    });
    abi_stable::library::__call_root_module_loader(root_module)
}

fn root_module() -> PluginLibRef {
    static MODULE: OnceLock<PluginLibRef> = OnceLock::new();
    *MODULE.get_or_init(|| {
        PluginLib {
            describe,
            set_host,
            new_scheduler,
            new_overlay,
            new_input,
            new_output,
            new_frontend,
        }
        .leak_into_prefix()
    })
}

extern "C" fn describe() -> LibraryInfo {
    let lib = library();
    LibraryInfo {
        name: lib.exported.name.into(),
        version: lib.exported.version.into(),
        license: lib.exported.license.into(),
        abi_version: ABI_VERSION.into(),
        components: lib.registrar.components().into(),
        #[cfg(feature = "__fixture_changed_interface")]
        fixture_extra: 0,
    }
}

extern "C" fn set_host(host: HostServicesRef) {
    crate::logging::install(host);
}

fn instantiate<T>(
    entries: &[Entry<T>],
    group: Group,
    name: RStr<'_>,
    params: &Params,
) -> RResult<T, PluginError> {
    let Some(entry) = entries.iter().find(|e| e.spec.name == name.as_str()) else {
        return RResult::RErr(PluginError::new(format!(
            "this library has no {group} named '{name}'"
        )));
    };
    match catch_unwind(AssertUnwindSafe(|| (entry.make)(params))) {
        Ok(result) => result.into(),
        Err(payload) => RResult::RErr(PluginError::panicked(panic_message(payload))),
    }
}

extern "C" fn new_scheduler(name: RStr<'_>, params: &Params) -> RResult<SchedulerBox, PluginError> {
    instantiate(
        &library().registrar.schedulers,
        Group::Scheduler,
        name,
        params,
    )
}

extern "C" fn new_overlay(name: RStr<'_>, params: &Params) -> RResult<OverlayBox, PluginError> {
    instantiate(&library().registrar.overlays, Group::Overlay, name, params)
}

extern "C" fn new_input(name: RStr<'_>, params: &Params) -> RResult<InputBox, PluginError> {
    instantiate(&library().registrar.inputs, Group::Input, name, params)
}

extern "C" fn new_output(name: RStr<'_>, params: &Params) -> RResult<OutputBox, PluginError> {
    instantiate(&library().registrar.outputs, Group::Output, name, params)
}

extern "C" fn new_frontend(name: RStr<'_>, params: &Params) -> RResult<FrontendBox, PluginError> {
    instantiate(
        &library().registrar.frontends,
        Group::Frontend,
        name,
        params,
    )
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the default hook (which would print to the host's stderr) with
/// one that remembers the message and location for the error it becomes, and
/// logs it through the host at debug level.
fn install_panic_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            let message = match info.location() {
                Some(at) => format!("{text} (at {}:{})", at.file(), at.line()),
                None => text,
            };
            tracing::debug!(target: "p2ner_plugin::panic", "{message}");
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(message));
        }));
    });
}

/// The message of a caught panic: the hook's version (with location) when it
/// ran on this thread, otherwise what the payload holds.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
        return message;
    }
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Exports a p2ner plugin library.
///
/// `register` is a `fn(&mut Registrar)` that declares the library's
/// components; it runs once, when the host loads the library. See the crate
/// docs for a complete plugin.
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        version: $version:expr,
        license: $license:expr,
        register: $register:path $(,)?
    ) => {
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __P2NER_PLUGIN_HEADER: $crate::__private::LibHeader = {
            extern "C" fn __p2ner_load() -> $crate::__private::RootModuleResult {
                $crate::__private::library_loader($crate::__private::Exported {
                    name: $name,
                    version: $version,
                    license: $license,
                    register: $register,
                })
            }
            // SAFETY: the constructor returns the root module of type `PluginLibRef`.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::PluginLibRef>(
                    __p2ner_load,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The symbol abi_stable looks a library's root module up by; the macro
    /// must spell it literally (it cannot compute an identifier).
    const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

    #[test]
    fn macro_exports_the_symbol_abi_stable_looks_up() {
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, ROOT_SYMBOL);
        let macro_text = include_str!("export.rs");
        assert!(macro_text.contains(&format!("#[export_name = \"{ROOT_SYMBOL}\"]")));
    }

    #[test]
    fn guard_turns_a_panic_into_an_error_and_poisons() {
        struct Boom;
        impl Scheduler for Boom {
            fn on_tick(&mut self, _now_us: u64, _out: &mut crate::SchedOut<'_>) {
                panic!("boom");
            }
        }
        let mut s = SchedulerAbi_TO::from_ptr(RBox::new(Guarded::new(Boom)), TD_Opaque);
        let mut out = abi_stable::std_types::RVec::new();
        let err = s.on_tick(1, &mut out).unwrap_err();
        assert!(err.panicked && err.message.contains("boom"), "{err}");
        let again = s.on_tick(2, &mut out).unwrap_err();
        assert!(again.message.contains("poisoned"), "{again}");
    }
}
