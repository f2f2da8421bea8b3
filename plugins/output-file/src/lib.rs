//! Output `file`: writes the chunks' payload bytes, in order, to a file.
//!
//! For when no decoding is wanted: recording a stream as the publisher sent
//! it (MPEG-TS for the media inputs, which any player opens). The file starts
//! on a keyframe chunk, and after a missing chunk the output skips to the next
//! keyframe, so a decoder reading the file never sees a broken picture
//! reference; with `from_keyframe=false` every chunk is written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use p2ner_plugin_api::prelude::*;

const PATH: ParamDef = ParamDef::new("path", "", "the file to write (created or truncated)");
const FROM_KEYFRAME: ParamDef = ParamDef::new(
    "from_keyframe",
    "true",
    "start on a keyframe and skip to the next one after a missing chunk",
);

/// The `file` output.
pub struct FileOutput {
    path: PathBuf,
    from_keyframe: bool,
    file: Option<BufWriter<File>>,
    /// Waiting for a keyframe before writing (at the start, after a gap).
    waiting: bool,
    report: OutputReport,
    skipped: u64,
}

impl FileOutput {
    /// An output with the given parameters (`path`, `from_keyframe`); the
    /// file is created at start.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let path = PATH.get(params);
        if path.is_empty() {
            return Err(PluginError::new("output file needs path=FILE"));
        }
        let from_keyframe = FROM_KEYFRAME.parse(params)?;
        Ok(FileOutput {
            path: PathBuf::from(path),
            from_keyframe,
            file: None,
            waiting: from_keyframe,
            report: OutputReport::default(),
            skipped: 0,
        })
    }
}

impl Output for FileOutput {
    fn start(&mut self, _format: &StreamFormat) -> Result<(), PluginError> {
        let file = File::create(&self.path)
            .map_err(|e| PluginError::new(format!("cannot create {}: {e}", self.path.display())))?;
        self.file = Some(BufWriter::new(file));
        Ok(())
    }

    fn push(&mut self, chunk: ChunkRef<'_>) -> Result<(), PluginError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| PluginError::new("output file used before start"))?;
        if self.waiting && !chunk.keyframe {
            self.skipped += 1;
            return Ok(());
        }
        self.waiting = false;
        file.write_all(chunk.data.as_slice())
            .map_err(|e| PluginError::new(format!("writing {}: {e}", self.path.display())))?;
        self.report.chunks += 1;
        self.report.bytes += chunk.data.len() as u64;
        Ok(())
    }

    fn gap(&mut self, _seq: u64) -> Result<(), PluginError> {
        self.report.gaps += 1;
        self.waiting = self.from_keyframe;
        Ok(())
    }

    fn finish(&mut self) -> Result<OutputReport, PluginError> {
        if let Some(mut file) = self.file.take() {
            file.flush()
                .and_then(|()| file.get_ref().sync_all())
                .map_err(|e| PluginError::new(format!("closing {}: {e}", self.path.display())))?;
        }
        let mut report = self.report.clone();
        report.detail = format!(
            "wrote {} bytes to {} ({} chunks skipped waiting for a keyframe)",
            report.bytes,
            self.path.display(),
            self.skipped
        )
        .into();
        Ok(report)
    }
}

fn register(lib: &mut Registrar) {
    lib.output(
        ComponentSpec::new(
            "file",
            env!("CARGO_PKG_VERSION"),
            "writes the stream's bytes as received (MPEG-TS for media inputs), no decoding",
        )
        .params(&[PATH, FROM_KEYFRAME]),
        FileOutput::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-output-file",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, keyframe: bool, data: &[u8]) -> ChunkRef<'_> {
        ChunkRef {
            seq,
            pts_us: 0,
            duration_us: 0,
            keyframe,
            data: data.into(),
        }
    }

    #[test]
    fn starts_on_a_keyframe_and_resyncs_after_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ts");
        let mut out = FileOutput::new(&Params::new().with("path", path.to_str().unwrap())).unwrap();
        out.start(&StreamFormat::default()).unwrap();
        out.push(chunk(0, false, b"x")).unwrap();
        out.push(chunk(1, true, b"A")).unwrap();
        out.push(chunk(2, false, b"b")).unwrap();
        out.gap(3).unwrap();
        out.push(chunk(4, false, b"y")).unwrap();
        out.push(chunk(5, true, b"C")).unwrap();
        let report = out.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"AbC");
        assert_eq!((report.chunks, report.gaps), (3, 1));
    }

    #[test]
    fn needs_a_path_and_names_an_unwritable_one() {
        assert!(FileOutput::new(&Params::new()).is_err());
        let mut out =
            FileOutput::new(&Params::new().with("path", "/nonexistent/dir/out.ts")).unwrap();
        let err = out.start(&StreamFormat::default()).unwrap_err();
        assert!(err.message.contains("/nonexistent/dir/out.ts"), "{err}");
    }
}
