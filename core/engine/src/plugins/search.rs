//! The plugin search path, in its order of precedence.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::Manifest;

/// Where a folder on the search path came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--plugin-dir`.
    Flag,
    /// `P2NER_PLUGIN_PATH`.
    Env,
    /// `plugins.toml`.
    Manifest,
    /// The folder of the running executable.
    ExeDir,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Flag => "--plugin-dir",
            Origin::Env => "P2NER_PLUGIN_PATH",
            Origin::Manifest => "plugins.toml",
            Origin::ExeDir => "beside the p2ner executable",
        })
    }
}

/// A folder on the plugin search path, and why it is there (messages name it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    /// The folder.
    pub path: PathBuf,
    /// Why it is searched.
    pub origin: Origin,
}

/// The search path: `--plugin-dir` folders, then `P2NER_PLUGIN_PATH`, then
/// the manifest's folders, then the folder of the running executable.
pub fn search_path(
    flag_dirs: &[PathBuf],
    env: Option<OsString>,
    manifest: &Manifest,
    exe_dir: Option<PathBuf>,
) -> Vec<SearchDir> {
    let dir = |path: PathBuf, origin| SearchDir { path, origin };
    let mut dirs: Vec<SearchDir> = flag_dirs
        .iter()
        .cloned()
        .map(|p| dir(p, Origin::Flag))
        .collect();
    if let Some(env) = env {
        dirs.extend(
            std::env::split_paths(&env)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| dir(p, Origin::Env)),
        );
    }
    dirs.extend(
        manifest
            .search_dirs()
            .into_iter()
            .map(|p| dir(p, Origin::Manifest)),
    );
    dirs.extend(exe_dir.map(|p| dir(p, Origin::ExeDir)));
    dirs
}

/// The folder of the running executable, where `cargo build` puts the
/// workspace's plugins and an install puts the bundled ones.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_owned))
}

/// Is this file name a shared library on this platform?
pub fn is_library(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX))
}

/// The shared libraries directly in `dir`, sorted by name so that loading
/// order (and so every message) is the same on every run.
pub fn libraries_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_library(&path) && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_flags_env_manifest_exe() {
        let manifest = Manifest {
            search: vec!["m".into()],
            path: Some("/etc/p2ner/plugins.toml".into()),
            ..Manifest::default()
        };
        let dirs = search_path(
            &["/f1".into(), "/f2".into()],
            Some(OsString::from("/e1::/e2")),
            &manifest,
            Some("/exe".into()),
        );
        let got: Vec<(String, Origin)> = dirs
            .into_iter()
            .map(|d| (d.path.display().to_string(), d.origin))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/f1".into(), Origin::Flag),
                ("/f2".into(), Origin::Flag),
                ("/e1".into(), Origin::Env),
                ("/e2".into(), Origin::Env),
                ("/etc/p2ner/m".into(), Origin::Manifest),
                ("/exe".into(), Origin::ExeDir),
            ]
        );
    }
}
