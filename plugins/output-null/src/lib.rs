//! Output `null`: counts and discards.
//!
//! The output for experiments that measure the network, not the media. With
//! `verify=true` it also checks every chunk against the synthetic test signal
//! and counts the ones that differ, so a swarm test can prove that what was
//! played is what was published.

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::synthetic;

const VERIFY: ParamDef = ParamDef::new(
    "verify",
    "false",
    "check each chunk against the synthetic test signal",
);

/// The `null` output.
#[derive(Default)]
pub struct Null {
    verify: bool,
    report: OutputReport,
}

impl Null {
    /// An output with the given parameters (`verify`).
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        Ok(Null {
            verify: VERIFY.parse(params)?,
            report: OutputReport::default(),
        })
    }
}

impl Output for Null {
    #[inline]
    fn push(&mut self, chunk: ChunkRef<'_>) -> Result<(), PluginError> {
        self.report.chunks += 1;
        self.report.bytes += chunk.data.len() as u64;
        if self.verify && synthetic::verify(chunk.data.as_slice()).is_none() {
            self.report.errors += 1;
        }
        Ok(())
    }

    fn gap(&mut self, _seq: u64) -> Result<(), PluginError> {
        self.report.gaps += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<OutputReport, PluginError> {
        let mut report = self.report.clone();
        report.detail = if self.verify {
            format!("{} chunks failed the synthetic check", report.errors).into()
        } else {
            "discarded".into()
        };
        Ok(report)
    }
}

fn register(lib: &mut Registrar) {
    lib.output(
        ComponentSpec::new(
            "null",
            env!("CARGO_PKG_VERSION"),
            "counts chunks and discards them",
        )
        .params(&[VERIFY]),
        Null::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-output-null",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, data: &[u8]) -> ChunkRef<'_> {
        ChunkRef {
            seq,
            pts_us: 0,
            duration_us: 0,
            keyframe: false,
            data: data.into(),
        }
    }

    #[test]
    fn counts_and_verifies() {
        let mut out = Null::new(&Params::new().with("verify", "true")).unwrap();
        let good = synthetic::payload(5, 100);
        let mut bad = good.clone();
        bad[50] ^= 1;
        out.push(chunk(5, &good)).unwrap();
        out.push(chunk(6, &bad)).unwrap();
        out.gap(7).unwrap();
        let report = out.finish().unwrap();
        assert_eq!(
            (report.chunks, report.bytes, report.errors, report.gaps),
            (2, 200, 1, 1)
        );
    }
}
