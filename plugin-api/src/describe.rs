//! How a library describes itself, without instantiating anything.

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

/// The entry-point groups. On the wire of the ABI they are strings
/// (`p2ner.scheduler`, ...) so that a group added later does not change the
/// layout; a host that meets a group it does not know reports it and goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// `p2ner.scheduler`: which chunk goes to / comes from which neighbour.
    Scheduler,
    /// `p2ner.overlay`: who the neighbours are.
    Overlay,
    /// `p2ner.input`: turns a source into timestamped chunks.
    Input,
    /// `p2ner.output`: consumes the stream.
    Output,
    /// `p2ner.frontend`: controls an engine.
    Frontend,
}

impl Group {
    /// Every group, in the order listings use.
    pub const ALL: [Group; 5] = [
        Group::Scheduler,
        Group::Overlay,
        Group::Input,
        Group::Output,
        Group::Frontend,
    ];

    /// The full name (`p2ner.scheduler`), as it crosses the boundary.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Scheduler => "p2ner.scheduler",
            Group::Overlay => "p2ner.overlay",
            Group::Input => "p2ner.input",
            Group::Output => "p2ner.output",
            Group::Frontend => "p2ner.frontend",
        }
    }

    /// Accepts the full name (`p2ner.scheduler`) or the short one (`scheduler`).
    pub fn parse(s: &str) -> Option<Group> {
        let short = s.strip_prefix("p2ner.").unwrap_or(s);
        Group::ALL
            .into_iter()
            .find(|g| g.as_str().strip_prefix("p2ner.") == Some(short))
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parameter a component accepts.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// The name users write (`bitrate_kbps`).
    pub name: RString,
    /// The value used when none is given; the host fills it in.
    pub default: RString,
    /// One line of help, shown by `p2ner plugins inspect`.
    pub help: RString,
}

/// One component a library provides.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// `p2ner.scheduler`, `p2ner.overlay`, ... (see [`Group`]).
    pub group: RString,
    /// The name it is looked up by, unique in its group (`pull`, `gst`).
    pub name: RString,
    /// Semantic version of this component's behaviour; streams may require one.
    pub version: RString,
    /// One line, shown by `p2ner plugins list`.
    pub description: RString,
    /// Every parameter it accepts, in order; the first is the one
    /// `NAME:VALUE` sets on the command line.
    pub params: RVec<ParamInfo>,
}

/// A library's description of itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct LibraryInfo {
    /// The library's name; two files with the same name are the same plugin.
    pub name: RString,
    /// The library's version (its crate's).
    pub version: RString,
    /// Its licence, as an SPDX expression.
    pub license: RString,
    /// The [`crate::ABI_VERSION`] the library was built against.
    pub abi_version: RString,
    /// Every component it provides.
    pub components: RVec<ComponentInfo>,
    /// Exists only in the deliberately incompatible test fixture.
    #[cfg(feature = "__fixture_changed_interface")]
    pub fixture_extra: u64,
}

/// The builder a plugin author describes a component with.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) params: Vec<ParamInfo>,
}

impl ComponentSpec {
    /// A component named `name` at `version` (semver), with a one-line
    /// description.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        ComponentSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            params: Vec::new(),
        }
    }

    /// Declares a parameter with its default and a line of help.
    pub fn param(mut self, name: &str, default: &str, help: &str) -> Self {
        self.params.push(ParamInfo {
            name: name.into(),
            default: default.into(),
            help: help.into(),
        });
        self
    }

    /// Declares every parameter of a table (see [`crate::ParamDef`]).
    pub fn params(self, table: &[crate::ParamDef]) -> Self {
        table
            .iter()
            .fold(self, |spec, p| spec.param(p.name, p.default, p.help))
    }

    pub(crate) fn info(&self, group: Group) -> ComponentInfo {
        ComponentInfo {
            group: group.as_str().into(),
            name: self.name.as_str().into(),
            version: self.version.as_str().into(),
            description: self.description.as_str().into(),
            params: self.params.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_round_trip() {
        for g in Group::ALL {
            assert_eq!(Group::parse(g.as_str()), Some(g));
            assert_eq!(
                Group::parse(g.as_str().trim_start_matches("p2ner.")),
                Some(g)
            );
        }
        assert_eq!(Group::parse("p2ner.nat"), None);
    }
}
