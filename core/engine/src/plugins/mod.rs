//! The plugin runtime: finding, loading and instantiating plugin libraries.
//!
//! Plugins are shared libraries built against `p2ner-plugin-api`. Each
//! folder on the search path ([`search_path`]) is scanned; every library is
//! loaded with abi_stable's `lib_header_from_path` + `init_root_module`
//! (not `RootModule::load_from_*`, which caches a single library per root
//! module type) and checked: ABI version, the whole interface layout, its
//! own description. Anything wrong is a [`Problem`] naming the file; it
//! never stops the other libraries from loading. Components are looked up by
//! group and name, like Python entry points, and created on first use.

mod host;
mod loader;
mod manifest;
mod registry;
mod search;

pub use loader::{Library, LoadError};
pub use manifest::Manifest;
pub use registry::{
    complete_params, AnyComponent, Component, ComponentError, Problem, Registry, Severity,
};
pub use search::{exe_dir, is_library, libraries_in, search_path, Origin, SearchDir};

use std::path::PathBuf;

/// What decides where plugins are looked for.
#[derive(Debug, Clone, Default)]
pub struct PluginOptions {
    /// `--plugin-dir`, in order.
    pub dirs: Vec<PathBuf>,
    /// `--plugins-toml`: an explicit manifest.
    pub manifest: Option<PathBuf>,
}

impl PluginOptions {
    /// Builds the registry from the whole search path.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        let manifest = Manifest::discover(self.manifest.as_deref())?;
        let dirs = search_path(
            &self.dirs,
            std::env::var_os("P2NER_PLUGIN_PATH"),
            &manifest,
            exe_dir(),
        );
        Ok(Registry::load(dirs, manifest.pins.clone()))
    }
}
