//! Input and output `vlc`: real video through libvlc, the same roles as the
//! `gst` ones, so a user picks a backend by name.
//!
//! The input opens a source (test pattern, file, camera, or a third-party live
//! stream by URI), transcodes it with VLC to the stream's quality as H.264
//! (+ AAC audio) in MPEG-TS, and cuts the transport stream into chunks that
//! start on keyframes. The output plays the stream, remuxes it into a file, or
//! decodes and discards it and counts what it decoded.
//!
//! Why libvlc in-process rather than a `cvlc` child: the `vlc` program refuses
//! to run as root (containers, CI), libvlc does not; and in-process the
//! plugin sees VLC's state and error messages directly. libvlc is loaded at
//! run time (see [`vlc`]), so the plugin builds and describes itself where
//! libvlc is missing, and says what to install when it is used.
//!
//! VLC runs on its own threads; the engine polls and pushes through the
//! plain plugin interface, so nothing async crosses the boundary.

mod input;
mod output;
mod source;
mod testsrc;
pub mod ts;
pub mod vlc;

pub use input::VlcInput;
pub use output::VlcOutput;
pub use p2ner_plugin_api::chunker::Chunker;
pub use p2ner_plugin_api::source::Source;

use p2ner_plugin_api::codec::CodecSettings;
use p2ner_plugin_api::prelude::*;

fn register(lib: &mut Registrar) {
    lib.input(
        CodecSettings::declare(
            ComponentSpec::new(
                "vlc",
                env!("CARGO_PKG_VERSION"),
                "libvlc capture: test pattern, file, camera or rtp/udp/http/rtsp URI, transcoded to H.264+AAC in MPEG-TS",
            ),
            &[
                ("source", "test | FILE | v4l2:/dev/videoN | rtp://, udp://, http(s)://, rtsp://, file:// URI (test: a pattern drawn by the plugin, fed through VLC's imem)"),
                ("audio", "transcode audio (AAC 64 kbit/s): true | false | auto (the source's audio if any; the test source has none)"),
                ("live", "pace the source in real time (false: as fast as VLC can)"),
            ],
        ),
        VlcInput::new,
    );
    lib.output(
        ComponentSpec::new(
            "vlc",
            env!("CARGO_PKG_VERSION"),
            "libvlc playback: screen, MPEG-TS file (remuxed), or decode-and-count",
        )
        .params(&[p2ner_plugin_api::source::Sink::PARAM]),
        VlcOutput::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-codec-vlc",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);
