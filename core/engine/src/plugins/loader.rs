//! Loading one plugin library, with every failure named.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModuleError};
use p2ner_plugin_api::{LibraryInfo, PluginLibRef, ABI_VERSION};

/// A loaded, verified plugin library. Never unloaded: component objects and
/// their vtables live in it for as long as the process does.
#[derive(Clone)]
pub struct Library {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// What it says of itself.
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
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    /// The dynamic loader refused it.
    #[error("not a loadable shared library (truncated or not a library?): {0}")]
    NotALibrary(String),
    /// The file is a library but cut short or damaged.
    #[error("truncated or corrupt library: {0}")]
    Truncated(String),
    /// A library, but not a p2ner plugin.
    #[error("not a p2ner plugin: it exports no p2ner root module")]
    NotAPlugin,
    /// Built for another ABI version.
    #[error("built for p2ner plugin ABI {found}, but this p2ner uses ABI {expected}; rebuild the plugin against a matching p2ner-plugin-api")]
    OtherAbi {
        /// The version the library was built for.
        found: String,
        /// [`p2ner_plugin_api::ABI_VERSION`] of this host.
        expected: String,
    },
    /// abi_stable's layout check failed: the interface changed under it.
    #[error("its plugin interface does not match this p2ner's (built against a changed p2ner-plugin-api?); rebuild it:\n{0}")]
    LayoutMismatch(String),
    /// The library's `register` panicked.
    #[error("init panicked: {0}")]
    InitPanicked(String),
    /// The library's root module failed to initialise.
    #[error("init failed: {0}")]
    InitFailed(String),
    /// abi_stable itself is of an incompatible version.
    #[error("built with an incompatible abi_stable: {0}")]
    IncompatibleAbiStable(String),
    /// Its self-description is invalid (an empty name, a bad version).
    #[error("describes itself wrongly: {0}")]
    BadDescription(String),
}

/// Loads the library at `path` and checks that it is a p2ner plugin built for
/// this ABI, then hands it the host services and reads its description.
pub fn load(path: &Path) -> Result<Library, LoadError> {
    check_complete(path)?;
    let header = lib_header_from_path(path).map_err(classify)?;
    // Same major (abi_stable's version check) and the same interface, or an
    // older minor of it: one built before methods were appended.
    let module = p2ner_plugin_api::init_root_module(header).map_err(classify)?;
    (module.set_host())(super::host::services());
    let info = (module.describe())();
    let built_with = header.version_strings().version;
    if info.abi_version.as_str() != built_with.as_str() {
        // The root module's version check already ran on what it was built
        // with; this catches a library whose description disagrees. (Not
        // ABI_VERSION: a library built for an older minor says so.)
        return Err(LoadError::BadDescription(format!(
            "claims ABI {} but was built for ABI {built_with}",
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

/// The dynamic loader maps a library's segments straight from the file; a
/// file cut short (an interrupted copy, a full disk) maps pages past its end,
/// and the first touch kills the whole process with SIGBUS. So before
/// `dlopen`, an ELF file must hold every segment its headers declare.
fn check_complete(path: &Path) -> Result<(), LoadError> {
    use object::read::elf::{FileHeader, ProgramHeader};
    use std::io::Read;

    let unreadable = |e: std::io::Error| LoadError::Unreadable(e.to_string());
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    // Headers and the program header table sit at the front of the file.
    let mut head = Vec::with_capacity(64 * 1024);
    file.by_ref()
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    if !head.starts_with(b"\x7fELF") {
        // Not ELF: let the platform loader judge it (and name the problem).
        return Ok(());
    }
    let truncated = LoadError::Truncated;
    let header = object::elf::FileHeader64::<object::Endianness>::parse(head.as_slice())
        .map_err(|e| truncated(e.to_string()))?;
    let endian = header.endian().map_err(|e| truncated(e.to_string()))?;
    let segments = header
        .program_headers(endian, head.as_slice())
        .map_err(|e| truncated(e.to_string()))?;
    for segment in segments {
        let (offset, size) = (segment.p_offset(endian), segment.p_filesz(endian));
        let end = offset
            .checked_add(size)
            .ok_or_else(|| truncated("a segment's size overflows".into()))?;
        if end > len {
            return Err(truncated(format!(
                "a segment ends at byte {end} but the file has {len}"
            )));
        }
    }
    Ok(())
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
        LibraryError::InvalidCAbi { expected, found } => LoadError::IncompatibleAbiStable(format!(
            "C ABI test gave {found}, expected {expected}"
        )),
        LibraryError::Many(list) => {
            let first = list.into_iter().next();
            first.map(classify).unwrap_or(LoadError::NotAPlugin)
        }
    }
}

/// abi_stable's layout report runs to hundreds of lines. What a person needs
/// is which type differs, where it is reached from, and each `Error:` with its
/// expected and found values:
///
/// ```text
///   in LibraryInfo (reached through describe.__returns)
///   Error: incompatible type size: expected 160, found 168
/// ```
fn error_lines(report: &str) -> String {
    const MAX: usize = 12;
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let value_after = |i: usize| {
        lines[i + 1..]
            .iter()
            .find(|l| !l.is_empty())
            .copied()
            .unwrap_or("?")
    };
    let mut out: Vec<String> = Vec::new();
    let mut path: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.ends_with("error(s)inside:") {
            path.clear();
        } else if let Some(field) = line.strip_prefix("field_name:") {
            if field != "0" {
                path.push(field);
            }
        } else if line == "Layout of expected type:" {
            let ty = lines[i..].iter().find_map(|l| l.strip_prefix("type:"));
            if let (Some(ty), false) = (ty, path.is_empty()) {
                let entry = format!("  in {ty} (reached through {})", path.join("."));
                if !out.contains(&entry) {
                    out.push(entry);
                }
            }
        } else if let Some(what) = line.strip_prefix("Error:") {
            let mut entry = format!("  Error: {}", what.trim());
            let expected = lines[i..]
                .iter()
                .position(|l| *l == "Expected:")
                .map(|p| value_after(i + p));
            let found = lines[i..]
                .iter()
                .position(|l| *l == "Found:")
                .map(|p| value_after(i + p));
            if let (Some(expected), Some(found)) = (expected, found) {
                entry.push_str(&format!(": expected {expected}, found {found}"));
            }
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        i += 1;
    }
    if out.is_empty() {
        return report.lines().take(MAX).collect::<Vec<_>>().join("\n");
    }
    let more = out.len().saturating_sub(MAX);
    out.truncate(MAX);
    if more > 0 {
        out.push(format!("  ... and {more} more"));
    }
    out.join("\n")
}
