//! How GStreamer opens each kind of source (the syntax is the SDK's
//! [`Source`]).

use p2ner_plugin_api::source::Source;

/// A `gst-launch` fragment ending in an element named `src` (a demuxing
/// decoder for files and URIs) whose pads give raw video (and audio).
pub fn launch_fragment(source: &Source, live: bool) -> String {
    match source {
        Source::Test => format!(
            "videotestsrc is-live={live} pattern=ball name=src_v \
             audiotestsrc is-live={live} wave=sine freq=440 name=src_a"
        ),
        Source::File(path) => format!(
            "filesrc location={} ! decodebin name=src",
            quote(&path.to_string_lossy())
        ),
        Source::Camera(dev) => format!(
            "v4l2src device={} name=src_v",
            quote(&dev.to_string_lossy())
        ),
        Source::Uri(uri) => format!("uridecodebin uri={} name=src", quote(uri)),
    }
}

/// Quotes a value for `gst_parse_launch`.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
