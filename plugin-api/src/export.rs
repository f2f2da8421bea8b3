//! What [`export_plugin!`](crate::export_plugin) expands to, kept out of the
//! macro so that it is ordinary, tested Rust.
//!
//! Statics here are per library: each cdylib links its own copy of this crate.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::{
    library::RootModuleResult,
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, RBoxError, RResult, RStr},
};

use crate::components::{
    FrontendAbi_TO, InputAbi_TO, OutputAbi_TO, OverlayAbi_TO, SchedulerAbi_TO,
};
use crate::describe::Group;
use crate::guard::{install_panic_hook, panic_message, Guarded};
use crate::{
    ComponentInfo, ComponentSpec, Frontend, FrontendBox, HostServicesRef, Input, InputBox,
    LibraryInfo, Output, OutputBox, Overlay, OverlayBox, Params, PluginError, PluginLib,
    PluginLibRef, Scheduler, SchedulerBox, ABI_VERSION,
};

/// What a plugin passes to [`export_plugin!`](crate::export_plugin).
pub struct Exported {
    /// The library's name.
    pub name: &'static str,
    /// The library's version.
    pub version: &'static str,
    /// The library's licence (SPDX).
    pub license: &'static str,
    /// Declares the library's components.
    pub register: fn(&mut Registrar),
}

type Factory<T> = Box<dyn Fn(&Params) -> Result<T, PluginError> + Send + Sync>;

struct Entry<T> {
    spec: ComponentSpec,
    make: Factory<T>,
}

/// The five component groups, once: for each, the [`Registrar`] method a
/// plugin declares a component with, the list it lands in, and the root
/// module function the host makes one with.
macro_rules! groups {
    ($($group:ident: $method:ident, $list:ident, $Trait:ident, $Box:ident, $To:ident, $new:ident;)*) => {
        /// Where a plugin's `register` function lists its components.
        #[derive(Default)]
        pub struct Registrar {
            $($list: Vec<Entry<$Box>>,)*
        }

        impl Registrar {
            $(
                #[doc = concat!(
                    "Declares a component of group `", stringify!($group), "` (see [`", stringify!($Trait),
                    "`]): its description, and how to make one from its parameters.",
                )]
                pub fn $method<T, F>(&mut self, spec: ComponentSpec, make: F)
                where
                    T: $Trait,
                    F: Fn(&Params) -> Result<T, PluginError> + Send + Sync + 'static,
                {
                    self.$list.push(Entry {
                        spec,
                        make: Box::new(move |p| {
                            make(p).map(|c| $To::from_ptr(RBox::new(Guarded::new(c)), TD_Opaque))
                        }),
                    });
                }
            )*

            fn components(&self) -> Vec<ComponentInfo> {
                let mut all = Vec::new();
                $(all.extend(self.$list.iter().map(|e| e.spec.info(Group::$group)));)*
                all
            }
        }

        $(
            extern "C" fn $new(name: RStr<'_>, params: &Params) -> RResult<$Box, PluginError> {
                instantiate(&library().registrar.$list, Group::$group, name, params)
            }
        )*
    };
}

groups! {
    Scheduler: scheduler, schedulers, Scheduler, SchedulerBox, SchedulerAbi_TO, new_scheduler;
    Overlay: overlay, overlays, Overlay, OverlayBox, OverlayAbi_TO, new_overlay;
    Input: input, inputs, Input, InputBox, InputAbi_TO, new_input;
    Output: output, outputs, Output, OutputBox, OutputAbi_TO, new_output;
    Frontend: frontend, frontends, Frontend, FrontendBox, FrontendAbi_TO, new_frontend;
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
/// there is reported by the host as `init panicked: <message>`.
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

        /// The layout of the 1.1 control interface this library was built
        /// with, checked by the host before it attaches one
        /// ([`EngineSessionsAbi`](crate::EngineSessionsAbi)).
        #[doc(hidden)]
        #[export_name = "p2ner_engine_sessions_layout"]
        pub static __P2NER_ENGINE_SESSIONS_LAYOUT:
            &'static $crate::abi_stable::type_layout::TypeLayout =
            <$crate::EngineSessionsArc as $crate::abi_stable::StableAbi>::LAYOUT;

        #[doc(hidden)]
        #[export_name = "p2ner_engine_sessions_attach"]
        pub extern "C" fn __p2ner_engine_sessions_attach(ext: $crate::EngineSessionsArc) {
            $crate::__private::attach_engine_sessions(ext)
        }
    };
}

#[cfg(test)]
mod tests {
    /// The symbol abi_stable looks a library's root module up by; the macro
    /// must spell it literally (it cannot compute an identifier).
    const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

    #[test]
    fn macro_exports_the_engine_sessions_symbols() {
        let macro_text = include_str!("export.rs");
        for symbol in [
            crate::ENGINE_SESSIONS_LAYOUT_SYMBOL,
            crate::ENGINE_SESSIONS_ATTACH_SYMBOL,
        ] {
            let name = std::str::from_utf8(&symbol[..symbol.len() - 1]).unwrap();
            assert!(macro_text.contains(&format!("#[export_name = \"{name}\"]")));
        }
    }

    #[test]
    fn macro_exports_the_symbol_abi_stable_looks_up() {
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, ROOT_SYMBOL);
        let macro_text = include_str!("export.rs");
        assert!(macro_text.contains(&format!("#[export_name = \"{ROOT_SYMBOL}\"]")));
    }
}
