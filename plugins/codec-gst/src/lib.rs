//! Input and output `gst`: real video through GStreamer.
//!
//! The input captures a source (test pattern, file, camera, or a third-party
//! live stream by URI), transcodes it to the stream's quality as H.264
//! (+ Opus audio) in MPEG-TS, and cuts the transport stream into chunks that
//! start on keyframes. The output plays the stream, writes it to a file, or
//! decodes and discards it to measure decoding errors.
//!
//! GStreamer runs its pipelines on its own threads; the engine polls and
//! pushes through the plain plugin interface, so nothing async crosses the
//! boundary.

mod input;
mod output;
mod source;

pub use input::GstInput;
pub use output::GstOutput;
pub use p2ner_plugin_api::chunker::Chunker;
pub use p2ner_plugin_api::source::Source;

use p2ner_plugin_api::codec::CodecSettings;
use p2ner_plugin_api::prelude::*;

/// GStreamer must be initialised once per process before any element is made.
fn init() -> Result<(), PluginError> {
    gstreamer::init().map_err(|e| PluginError::new(format!("GStreamer failed to initialise: {e}")))
}

fn register(lib: &mut Registrar) {
    lib.input(
        CodecSettings::declare(
            ComponentSpec::new(
                "gst",
                env!("CARGO_PKG_VERSION"),
                "GStreamer capture: test pattern, file, camera or rtp/udp/http/rtsp URI, transcoded to H.264+Opus in MPEG-TS",
            ),
            &[
                ("audio", "encode audio (Opus 64 kbit/s): true | false | auto (only the test source)"),
                ("live", "pace the test source in real time (false: as fast as possible)"),
            ],
        ),
        GstInput::new,
    );
    lib.output(
        ComponentSpec::new(
            "gst",
            env!("CARGO_PKG_VERSION"),
            "GStreamer playback: screen, MPEG-TS file, or decode-and-count",
        )
        .params(&[p2ner_plugin_api::source::Sink::PARAM]),
        GstOutput::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-codec-gst",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);
