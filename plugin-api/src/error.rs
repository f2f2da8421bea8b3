use abi_stable::{std_types::RString, StableAbi};

/// An error a component returns to the engine.
///
/// It carries text, not a type: the engine can do nothing with a plugin's
/// error but report it and fail the stream that used the component.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What went wrong, for a person.
    pub message: RString,
    /// The component panicked; it is poisoned and every later call fails.
    pub panicked: bool,
}

impl PluginError {
    /// An ordinary error (not a panic).
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: RString::from(message.into()),
            panicked: false,
        }
    }

    pub(crate) fn panicked(message: String) -> Self {
        PluginError {
            message: RString::from(message),
            panicked: true,
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.panicked {
            write!(f, "panicked: {}", self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for PluginError {}

impl From<String> for PluginError {
    fn from(message: String) -> Self {
        PluginError::new(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> Self {
        PluginError::new(message)
    }
}
