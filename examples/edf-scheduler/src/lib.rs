//! Scheduler `edf`: a pull scheduler that asks for missing chunks earliest
//! deadline first, each from the neighbour expected to deliver it soonest,
//! and serves its neighbours' requests earliest deadline first.
//!
//! An example of a scheduler written with plugin-api's events and test kit;
//! the README explains the design choices.

pub mod edf;
pub mod wire;

use p2ner_plugin_api::prelude::*;

pub use edf::{Config, Edf};

const WINDOW: ParamDef = ParamDef::new("window", "30", "chunks ahead of play-out to request");
const MAX_OUTSTANDING: ParamDef = ParamDef::new(
    "max_outstanding",
    "8",
    "most requests outstanding at one neighbour",
);
const HAVE_MS: ParamDef = ParamDef::new("have_ms", "100", "least time between two buffer maps, ms");

impl Edf {
    /// Reads the parameters (the host has filled in the defaults).
    pub fn from_params(params: &Params) -> Result<Self, PluginError> {
        let window: u64 = WINDOW.parse(params)?;
        let max_outstanding: usize = MAX_OUTSTANDING.parse(params)?;
        let have_ms: u64 = HAVE_MS.parse(params)?;
        if window == 0 || max_outstanding == 0 {
            return Err(PluginError::new(
                "window and max_outstanding must be at least 1",
            ));
        }
        Ok(Edf::new(Config {
            window,
            max_outstanding,
            have_every_us: have_ms * 1000,
        }))
    }
}

fn register(lib: &mut Registrar) {
    lib.scheduler(
        ComponentSpec::new(
            "edf",
            env!("CARGO_PKG_VERSION"),
            "pull: earliest deadline first, from the holder that delivers soonest",
        )
        .params(&[WINDOW, MAX_OUTSTANDING, HAVE_MS]),
        Edf::from_params,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-scheduler-edf",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests;
