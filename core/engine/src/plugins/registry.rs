//! The registry: every component on the search path, by group and name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use abi_stable::std_types::RStr;
use p2ner_plugin_api::{
    ComponentInfo, FrontendBox, Group, InputBox, OutputBox, OverlayBox, Params, PluginError,
    SchedulerBox,
};
use semver::{Version, VersionReq};

use super::loader::{self, Library};
use super::search::{libraries_in, SearchDir};

/// How bad a [`Problem`] is: `plugins check` fails on errors only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth saying; everything still loads (the same library found twice).
    Warning,
    /// A file that should be a plugin and is not usable.
    Error,
}

/// Something wrong on the plugin path, named by the file it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// How bad it is.
    pub severity: Severity,
    /// The file it is about, when there is one.
    pub path: Option<PathBuf>,
    /// What is wrong, in one line.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        match &self.path {
            Some(path) => write!(f, "{level}: {}: {}", path.display(), self.message),
            None => write!(f, "{level}: {}", self.message),
        }
    }
}

/// One installed component and the library that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Component<'r> {
    /// Its group.
    pub group: Group,
    /// Its self-description.
    pub info: &'r ComponentInfo,
    /// The library that provides it.
    pub library: &'r Library,
}

impl Component<'_> {
    /// `group/name`, the key pins and messages use.
    pub fn key(&self) -> String {
        format!("{}/{}", self.group, self.info.name)
    }
}

/// Why a component could not be found or made.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// Not installed.
    #[error("no {group} named '{name}'{version} is installed{available}; searched: {searched}")]
    Missing {
        /// The group asked for.
        group: Group,
        /// The name asked for.
        name: String,
        /// The version requirement, as the message shows it.
        version: String,
        /// What the group offers, as the message shows it.
        available: String,
        /// The folders searched.
        searched: String,
    },
    /// Installed, but of a version the stream does not accept.
    #[error("{group} '{name}' {found} does not satisfy the required version {required}")]
    WrongVersion {
        /// The group asked for.
        group: Group,
        /// The name asked for.
        name: String,
        /// The version installed.
        found: String,
        /// The version requirement.
        required: String,
    },
    /// Offered by two libraries and not pinned.
    #[error("conflict: {key} is offered by {offers}; pin one in plugins.toml, e.g. [pins] \"{key}\" = \"{first}\"")]
    Conflict {
        /// `group/name`.
        key: String,
        /// The libraries that offer it.
        offers: String,
        /// One of them, for the example pin.
        first: String,
    },
    /// The parameters did not parse.
    #[error("{key}: {message}")]
    BadParams {
        /// `group/name`.
        key: String,
        /// What is wrong with them.
        message: String,
    },
    /// The component's factory failed.
    #[error("{key} (from {library}) failed to start: {error}")]
    Plugin {
        /// `group/name`.
        key: String,
        /// The library's file.
        library: String,
        /// What the plugin said.
        error: PluginError,
    },
}

/// Every library found on the search path, the components they offer, and
/// what went wrong along the way.
///
/// Libraries are loaded (and describe themselves) when the registry is built;
/// components are only instantiated when asked for.
#[derive(Debug, Default)]
pub struct Registry {
    libraries: Vec<Library>,
    problems: Vec<Problem>,
    searched: Vec<SearchDir>,
    /// group/name -> (library index, component index) of each offer, in
    /// search-path order.
    offers: BTreeMap<(Group, String), Vec<(usize, usize)>>,
    pins: BTreeMap<String, String>,
}

impl Registry {
    /// Loads every library in `dirs`, in order, applying `pins` to conflicts.
    pub fn load(dirs: Vec<SearchDir>, pins: BTreeMap<String, String>) -> Registry {
        let mut registry = Registry {
            pins,
            ..Registry::default()
        };
        let mut seen_files: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for dir in &dirs {
            let files = match libraries_in(&dir.path) {
                Ok(files) => files,
                Err(e) => {
                    // A folder someone named explicitly must exist; the
                    // defaults may not.
                    let severity = match dir.origin {
                        super::Origin::Flag => Severity::Error,
                        _ => Severity::Warning,
                    };
                    registry.problem(
                        severity,
                        Some(&dir.path),
                        format!("cannot read plugin folder (from {}): {e}", dir.origin),
                    );
                    continue;
                }
            };
            for file in files {
                let canonical = file.canonicalize().unwrap_or_else(|_| file.clone());
                if let Some(first) = seen_files.get(&canonical) {
                    tracing::debug!(file = %file.display(), first = %first.display(), "same file reached twice on the plugin path");
                    continue;
                }
                seen_files.insert(canonical, file.clone());
                let library = match loader::load(&file) {
                    Ok(library) => library,
                    Err(e) => {
                        registry.problem(Severity::Error, Some(&file), e.to_string());
                        continue;
                    }
                };
                let name = library.info.name.to_string();
                if let Some(&first) = by_name.get(&name) {
                    let first = &registry.libraries[first].path;
                    let message = format!(
                        "library '{name}' was already loaded from {}; ignoring this copy",
                        first.display()
                    );
                    registry.problem(Severity::Warning, Some(&file), message);
                    continue;
                }
                by_name.insert(name, registry.libraries.len());
                registry.add(library);
            }
        }
        registry.searched = dirs;
        registry.report_conflicts();
        registry
    }

    /// Loads the libraries of the given folders only, as if each were named
    /// with `--plugin-dir`, without pins: what `plugins check` and tests use.
    pub fn load_dirs(dirs: &[&Path]) -> Registry {
        let dirs = dirs
            .iter()
            .map(|d| SearchDir {
                path: d.to_path_buf(),
                origin: super::Origin::Flag,
            })
            .collect();
        Registry::load(dirs, BTreeMap::new())
    }

    fn problem(&mut self, severity: Severity, path: Option<&Path>, message: String) {
        self.problems.push(Problem {
            severity,
            path: path.map(Path::to_owned),
            message,
        });
    }

    /// Indexes a library's components, refusing the ones it describes wrongly.
    fn add(&mut self, library: Library) {
        let index = self.libraries.len();
        let mut bad = Vec::new();
        for (c, info) in library.info.components.iter().enumerate() {
            let Some(group) = Group::parse(&info.group) else {
                bad.push((
                    Severity::Warning,
                    format!(
                        "component '{}' is in group '{}', which this p2ner does not know; ignored",
                        info.name, info.group
                    ),
                ));
                continue;
            };
            if let Err(e) = Version::parse(&info.version) {
                bad.push((
                    Severity::Error,
                    format!(
                        "{group}/{}: version '{}' is not semver: {e}",
                        info.name, info.version
                    ),
                ));
                continue;
            }
            if info.name.is_empty() || info.name.contains(['/', ' ']) {
                bad.push((
                    Severity::Error,
                    format!(
                        "{group}: component name '{}' must be non-empty, without '/' or spaces",
                        info.name
                    ),
                ));
                continue;
            }
            let offers = self
                .offers
                .entry((group, info.name.to_string()))
                .or_default();
            if offers.iter().any(|&(l, _)| l == index) {
                bad.push((
                    Severity::Error,
                    format!("{group}/{} is declared twice", info.name),
                ));
                continue;
            }
            offers.push((index, c));
        }
        for (severity, message) in bad {
            self.problem(severity, Some(&library.path), message);
        }
        self.libraries.push(library);
    }

    fn report_conflicts(&mut self) {
        let mut found = Vec::new();
        for ((group, name), offers) in &self.offers {
            let key = format!("{group}/{name}");
            if offers.len() < 2 {
                continue;
            }
            match self.pinned(&key, offers) {
                Ok(_) => {}
                Err(e) => found.push(e.to_string()),
            }
        }
        for message in found {
            self.problem(Severity::Error, None, message);
        }
    }

    /// The offer a pin selects, or the conflict error naming every offer.
    fn pinned(
        &self,
        key: &str,
        offers: &[(usize, usize)],
    ) -> Result<(usize, usize), ComponentError> {
        if let Some(pin) = self.pins.get(key) {
            let chosen = offers.iter().find(|&&(l, _)| {
                let lib = &self.libraries[l];
                lib.info.name.as_str() == pin || lib.path == Path::new(pin)
            });
            if let Some(&offer) = chosen {
                return Ok(offer);
            }
        }
        let offers_text = offers
            .iter()
            .map(|&(l, _)| {
                let lib = &self.libraries[l];
                format!("{} (library {})", lib.path.display(), lib.info.name)
            })
            .collect::<Vec<_>>()
            .join(" and ");
        Err(ComponentError::Conflict {
            key: key.to_owned(),
            offers: offers_text,
            first: self.libraries[offers[0].0].info.name.to_string(),
        })
    }

    /// Every library loaded.
    pub fn libraries(&self) -> &[Library] {
        &self.libraries
    }

    /// Everything wrong on the plugin path.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The folders searched, in order of precedence.
    pub fn searched(&self) -> &[SearchDir] {
        &self.searched
    }

    /// Every offered component, conflicting ones included, by group and name.
    pub fn components(&self) -> impl Iterator<Item = Component<'_>> {
        self.offers.iter().flat_map(move |((group, _), offers)| {
            offers
                .iter()
                .map(move |&(l, c)| self.component(*group, l, c))
        })
    }

    fn component(&self, group: Group, l: usize, c: usize) -> Component<'_> {
        let library = &self.libraries[l];
        Component {
            group,
            info: &library.info.components[c],
            library,
        }
    }

    /// The component that `group`/`name` resolves to: the only offer, or the
    /// pinned one; with `version`, it must satisfy that requirement.
    pub fn find(
        &self,
        group: Group,
        name: &str,
        version: Option<&VersionReq>,
    ) -> Result<Component<'_>, ComponentError> {
        let Some(offers) = self.offers.get(&(group, name.to_owned())) else {
            let available: Vec<String> = self
                .components()
                .filter(|c| c.group == group)
                .map(|c| c.info.name.to_string())
                .collect();
            return Err(ComponentError::Missing {
                group,
                name: name.to_owned(),
                version: version.map(|v| format!(" ({v})")).unwrap_or_default(),
                available: if available.is_empty() {
                    String::new()
                } else {
                    format!(" (installed: {})", available.join(", "))
                },
                searched: self.searched_text(),
            });
        };
        let (l, c) = match offers.as_slice() {
            [only] => *only,
            _ => self.pinned(&format!("{group}/{name}"), offers)?,
        };
        let component = self.component(group, l, c);
        if let Some(required) = version {
            let found = Version::parse(&component.info.version).expect("validated when added");
            if !required.matches(&found) {
                return Err(ComponentError::WrongVersion {
                    group,
                    name: name.to_owned(),
                    found: found.to_string(),
                    required: required.to_string(),
                });
            }
        }
        Ok(component)
    }

    fn searched_text(&self) -> String {
        if self.searched.is_empty() {
            return "(no folders)".into();
        }
        self.searched
            .iter()
            .map(|d| format!("{} ({})", d.path.display(), d.origin))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn instantiate<T>(
        &self,
        group: Group,
        name: &str,
        version: Option<&VersionReq>,
        given: &Params,
        make: impl FnOnce(&Library, RStr<'_>, &Params) -> abi_stable::std_types::RResult<T, PluginError>,
    ) -> Result<T, ComponentError> {
        let component = self.find(group, name, version)?;
        let params = complete_params(component.info, given).map_err(|message| {
            ComponentError::BadParams {
                key: component.key(),
                message,
            }
        })?;
        tracing::debug!(component = %component.key(), library = %component.library.path.display(), "instantiating");
        make(component.library, RStr::from_str(name), &params)
            .into_result()
            .map_err(|error| ComponentError::Plugin {
                key: component.key(),
                library: component.library.info.name.to_string(),
                error,
            })
    }
}

/// The five groups' constructors, once: `new_scheduler` ... `new_frontend`
/// (each named like the root-module function it calls), [`AnyComponent`]
/// and [`Registry::new_component`] for a group known only at run time.
macro_rules! constructors {
    ($($group:ident: $new:ident -> $Box:ident;)*) => {
        /// A component of any group, as [`Registry::new_component`] makes it.
        pub enum AnyComponent {
            $(
                #[doc = concat!("A `p2ner.", stringify!($group), "` component.")]
                $group($Box),
            )*
        }

        impl Registry {
            $(
                #[doc = concat!(
                    "Makes the ", stringify!($group), " component that `name` resolves to (see [`Registry::find`]) ",
                    "with `given` parameters over its declared defaults.",
                )]
                pub fn $new(
                    &self,
                    name: &str,
                    version: Option<&VersionReq>,
                    given: &Params,
                ) -> Result<$Box, ComponentError> {
                    self.instantiate(Group::$group, name, version, given, |lib, n, p| {
                        (lib.module.$new())(n, p)
                    })
                }
            )*

            /// Makes a component of any group, like the group's own constructor.
            pub fn new_component(
                &self,
                group: Group,
                name: &str,
                version: Option<&VersionReq>,
                given: &Params,
            ) -> Result<AnyComponent, ComponentError> {
                match group {
                    $(Group::$group => self.$new(name, version, given).map(AnyComponent::$group),)*
                }
            }
        }
    };
}

constructors! {
    Scheduler: new_scheduler -> SchedulerBox;
    Overlay: new_overlay -> OverlayBox;
    Input: new_input -> InputBox;
    Output: new_output -> OutputBox;
    Frontend: new_frontend -> FrontendBox;
}

/// The declared parameters with `given` values over defaults; an undeclared
/// name is an error listing the declared ones, so a typo never passes
/// silently.
pub fn complete_params(info: &ComponentInfo, given: &Params) -> Result<Params, String> {
    let mut params = Params::new();
    for declared in info.params.iter() {
        params.set(&declared.name, declared.default.as_str());
    }
    for (name, value) in given.iter() {
        if !info.params.iter().any(|p| p.name == name) {
            let known: Vec<&str> = info.params.iter().map(|p| p.name.as_str()).collect();
            return Err(if known.is_empty() {
                format!("unknown parameter '{name}' (this component takes none)")
            } else {
                format!("unknown parameter '{name}'; it takes: {}", known.join(", "))
            });
        }
        params.set(name, value);
    }
    Ok(params)
}
