//! Loading one plugin library, with every failure named.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModuleError};
use p2ner_plugin_api::{LibraryInfo, PluginLibRef, ABI_VERSION};

/// A loaded, verified plugin library. Never unloaded: component objects and
/// their vtables live in it for as long as the process does.
#[derive(Clone)]
pub struct Library {
    pub path: PathBuf,
    pub info: LibraryInfo,
    pub(crate) module: PluginLibRef,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("name", &self.info.name)
            .finish_non_exhaustive()
    }
}

/// Why a file on the plugin path is not a usable plugin.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LoadError {
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    #[error("not a loadable shared library (truncated or not a library?): {0}")]
    NotALibrary(String),
    #[error("not a p2ner plugin: it exports no p2ner root module")]
    NotAPlugin,
    #[error("built for p2ner plugin ABI {found}, but this p2ner uses ABI {expected}; rebuild the plugin against a matching p2ner-plugin-api")]
    OtherAbi { found: String, expected: String },
    #[error("its plugin interface does not match this p2ner's (built against a changed p2ner-plugin-api?); rebuild it:\n{0}")]
    LayoutMismatch(String),
    #[error("init panicked: {0}")]
    InitPanicked(String),
    #[error("init failed: {0}")]
    InitFailed(String),
    #[error("built with an incompatible abi_stable: {0}")]
    IncompatibleAbiStable(String),
    #[error("describes itself wrongly: {0}")]
    BadDescription(String),
}

/// Loads the library at `path` and checks that it is a p2ner plugin built for
/// this ABI, then hands it the host services and reads its description.
pub fn load(path: &Path) -> Result<Library, LoadError> {
    std::fs::File::open(path).map_err(|e| LoadError::Unreadable(e.to_string()))?;
    let header = lib_header_from_path(path).map_err(classify)?;
    let module = header
        .init_root_module::<PluginLibRef>()
        .map_err(classify)?;
    (module.set_host())(super::host::services());
    let info = (module.describe())();
    if info.abi_version.as_str() != ABI_VERSION {
        // The root module's version check already ran; this catches a library
        // whose description disagrees with what it was built with.
        return Err(LoadError::BadDescription(format!(
            "claims ABI {} but loaded as ABI {ABI_VERSION}",
            info.abi_version
        )));
    }
    if info.name.trim().is_empty() {
        return Err(LoadError::BadDescription("empty library name".into()));
    }
    Ok(Library {
        path: path.to_owned(),
        info,
        module,
    })
}

fn classify(err: LibraryError) -> LoadError {
    match err {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary(err.to_string()),
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin,
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::OtherAbi {
            found: actual_version.to_string(),
            expected: expected_version.to_string(),
        },
        LibraryError::ParseVersionError(e) => LoadError::OtherAbi {
            found: format!("(unparsable: {e})"),
            expected: ABI_VERSION.to_owned(),
        },
        LibraryError::AbiInstability(report) => {
            LoadError::LayoutMismatch(error_lines(&report.to_string()))
        }
        LibraryError::RootModule { err, .. } => match err {
            RootModuleError::Unwound => LoadError::InitPanicked("(no message)".into()),
            RootModuleError::Returned(e) => {
                let text = e.to_string();
                match text.strip_prefix("init panicked: ") {
                    Some(message) => LoadError::InitPanicked(message.to_owned()),
                    None => LoadError::InitFailed(text),
                }
            }
        },
        LibraryError::InvalidAbiHeader(found) => {
            LoadError::IncompatibleAbiStable(format!("{found:?}"))
        }
        LibraryError::InvalidCAbi { expected, found } => LoadError::IncompatibleAbiStable(
            format!("C ABI test gave {found}, expected {expected}"),
        ),
        LibraryError::Many(list) => {
            let first = list.into_iter().next();
            first.map(classify).unwrap_or(LoadError::NotAPlugin)
        }
    }
}

/// abi_stable's layout report is hundreds of lines; its `Error:` lines (and the
/// line after each, which says where) are what a person needs.
fn error_lines(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim_end).collect();
    let mut picked: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("Error:") {
            let mut entry = format!("  {}", line.trim());
            if let Some(next) = lines.get(i + 1).filter(|l| !l.trim().is_empty()) {
                entry.push_str(&format!(" {}", next.trim()));
            }
            if !picked.contains(&entry) {
                picked.push(entry);
            }
        }
    }
    const MAX: usize = 8;
    if picked.is_empty() {
        return report.lines().take(MAX).collect::<Vec<_>>().join("\n");
    }
    let more = picked.len().saturating_sub(MAX);
    picked.truncate(MAX);
    if more > 0 {
        picked.push(format!("  ... and {more} more"));
    }
    picked.join("\n")
}
