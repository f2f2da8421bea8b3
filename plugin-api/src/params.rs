//! Component parameters: strings by name, typed on the plugin's side.
//!
//! Parameters cross the boundary as text so that adding one never changes the
//! ABI, and so that the same values can come from a command line, a
//! `plugins.toml`, a stream's registration or an experiment file.

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};
use std::str::FromStr;

use crate::PluginError;

/// One parameter's value.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's name.
    pub name: RString,
    /// Its value, as text.
    pub value: RString,
}

/// The parameters a component is created with.
///
/// The host fills in every declared parameter (the given value or the
/// declared default) and refuses unknown names before it calls the plugin, so
/// a component can rely on finding each parameter it declared.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct Params {
    /// Every parameter, each name once.
    pub items: RVec<Param>,
}

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Params::default()
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = RString::from(value.into());
        match self.items.iter_mut().find(|p| p.name == name) {
            Some(p) => p.value = value,
            None => self.items.push(Param {
                name: name.into(),
                value,
            }),
        }
    }

    /// [`Params::set`], for building in one expression.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    /// The text of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }

    /// The parameter parsed as `T`, with an error that names it and the value.
    pub fn parse<T>(&self, name: &str) -> Result<T, PluginError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self
            .get(name)
            .ok_or_else(|| PluginError::new(format!("missing parameter '{name}'")))?;
        raw.trim()
            .parse()
            .map_err(|e| PluginError::new(format!("parameter '{name}' = '{raw}': {e}")))
    }

    /// Like [`Params::parse`], falling back to `default` when absent.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, PluginError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(_) => self.parse(name),
        }
    }

    /// Every (name, value), in the order they were set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
    }
}

/// A parameter written once: its name, default and help serve both to
/// declare it ([`crate::ComponentSpec::params`]) and to read it
/// ([`ParamDef::parse`]), so the default is never written twice.
///
/// ```
/// use p2ner_plugin_api::{ComponentSpec, ParamDef, Params};
///
/// const RATE: ParamDef = ParamDef::new("rate", "10", "chunks per second");
///
/// let spec = ComponentSpec::new("ticker", "0.1.0", "ticks").params(&[RATE]);
/// let rate: u32 = RATE.parse(&Params::new()).unwrap();
/// assert_eq!(rate, 10);
/// # let _ = spec;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamDef {
    /// The parameter's name, as users write it (`bitrate_kbps`).
    pub name: &'static str,
    /// The value used when none is given.
    pub default: &'static str,
    /// One line of help, shown by `p2ner plugins inspect`.
    pub help: &'static str,
}

impl ParamDef {
    /// A parameter with its default and help.
    pub const fn new(name: &'static str, default: &'static str, help: &'static str) -> Self {
        ParamDef {
            name,
            default,
            help,
        }
    }

    /// Its text in `params`, or the default when absent.
    pub fn get<'p>(&self, params: &'p Params) -> &'p str {
        params.get(self.name).unwrap_or(self.default)
    }

    /// Its value in `params` parsed as `T`, or the default parsed when
    /// absent; an error names the parameter and the value.
    pub fn parse<T>(&self, params: &Params) -> Result<T, PluginError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.get(params);
        raw.trim()
            .parse()
            .map_err(|e| PluginError::new(format!("parameter '{}' = '{raw}': {e}", self.name)))
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Params {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut params = Params::new();
        for (k, v) in iter {
            params.set(k, v);
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_the_parameter_and_value() {
        let p = Params::new().with("bitrate_kbps", "fast");
        let err = p.parse::<u32>("bitrate_kbps").unwrap_err();
        assert!(err.message.contains("bitrate_kbps"), "{err}");
        assert!(err.message.contains("fast"), "{err}");
        assert_eq!(p.parse_or("chunk_ms", 40u32).unwrap(), 40);
    }

    #[test]
    fn a_param_def_falls_back_to_its_default() {
        const CHUNK: ParamDef = ParamDef::new("chunk_ms", "40", "media per chunk");
        assert_eq!(CHUNK.parse::<u32>(&Params::new()).unwrap(), 40);
        let given = Params::new().with("chunk_ms", " 20 ");
        assert_eq!(CHUNK.parse::<u32>(&given).unwrap(), 20);
        let bad = Params::new().with("chunk_ms", "soon");
        let err = CHUNK.parse::<u32>(&bad).unwrap_err();
        assert!(err.message.contains("chunk_ms") && err.message.contains("soon"));
    }

    #[test]
    fn set_replaces() {
        let mut p = Params::new().with("a", "1");
        p.set("a", "2");
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.get("a"), Some("2"));
    }
}
