//! `plugins.toml`: the entry-point manifest.
//!
//! ```toml
//! # Extra folders to scan, relative to this file.
//! search = ["plugins.d"]
//!
//! # When two libraries offer the same group/name, the one named here wins
//! # (by library name, or by the path of the file).
//! [pins]
//! "p2ner.scheduler/pull" = "p2ner-scheduler-pull"
//!
//! # Components used when a command does not name one.
//! [defaults]
//! scheduler = "pull"
//! overlay = "mesh"
//! input = "synthetic"
//! output = "null"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// `plugins.toml`: plugin folders, pins for conflicts, default components.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin folders, after `--plugin-dir` and `P2NER_PLUGIN_PATH`.
    #[serde(default)]
    pub search: Vec<PathBuf>,
    /// `group/name` = library name: which library wins a conflict.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// Group = component name: what a command uses when none is named.
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
    /// Where the manifest was read from; relative `search` entries are
    /// resolved against its folder.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl Manifest {
    /// Reads the manifest at `path`; a missing or malformed file is an error
    /// naming it.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plugin manifest {}", path.display()))?;
        let mut manifest: Manifest = toml::from_str(&text)
            .with_context(|| format!("malformed plugin manifest {}", path.display()))?;
        for key in manifest.pins.keys() {
            if !key.contains('/') {
                anyhow::bail!(
                    "malformed plugin manifest {}: pin '{key}' must be GROUP/NAME, e.g. \"p2ner.scheduler/pull\"",
                    path.display()
                );
            }
        }
        manifest.path = Some(path.to_owned());
        Ok(manifest)
    }

    /// Finds the manifest: the explicit path, else `plugins.toml` in the
    /// current folder, else `$XDG_CONFIG_HOME/p2ner/plugins.toml` (or
    /// `~/.config/...`). No manifest at all is fine: an empty one is used.
    pub fn discover(explicit: Option<&Path>) -> Result<Manifest> {
        if let Some(path) = explicit {
            return Manifest::read(path);
        }
        let config_dir = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        let candidates = [
            Some(PathBuf::from("plugins.toml")),
            config_dir.map(|d| d.join("p2ner/plugins.toml")),
        ];
        for candidate in candidates.into_iter().flatten() {
            if candidate.is_file() {
                return Manifest::read(&candidate);
            }
        }
        Ok(Manifest::default())
    }

    /// The `search` folders, made absolute against the manifest's folder.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let base = self
            .path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_owned)
            .unwrap_or_default();
        self.search.iter().map(|d| base.join(d)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_search_pins_defaults_and_resolves_relative_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.toml");
        std::fs::write(
            &path,
            "search = [\"plugins.d\", \"/abs\"]\n[pins]\n\"p2ner.output/null\" = \"mine\"\n[defaults]\noutput = \"null\"\n",
        )
        .unwrap();
        let m = Manifest::read(&path).unwrap();
        assert_eq!(
            m.search_dirs(),
            vec![dir.path().join("plugins.d"), PathBuf::from("/abs")]
        );
        assert_eq!(m.pins["p2ner.output/null"], "mine");
        assert_eq!(m.defaults["output"], "null");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.toml");
        std::fs::write(&path, "serch = []\n").unwrap();
        let err = format!("{:#}", Manifest::read(&path).unwrap_err());
        assert!(
            err.contains("plugins.toml") && err.contains("serch"),
            "{err}"
        );
        std::fs::write(&path, "[pins]\nnull = \"x\"\n").unwrap();
        let err = format!("{:#}", Manifest::read(&path).unwrap_err());
        assert!(err.contains("GROUP/NAME"), "{err}");
    }
}
