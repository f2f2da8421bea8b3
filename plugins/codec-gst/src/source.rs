//! What a `source=` parameter names, and the GStreamer elements that open it.

use std::path::PathBuf;

use p2ner_plugin_api::PluginError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// videotestsrc + audiotestsrc.
    Test,
    File(PathBuf),
    Camera(PathBuf),
    /// rtp://, udp://, http(s)://, rtsp://, file://: uridecodebin's business.
    Uri(String),
}

impl Source {
    pub fn parse(text: &str) -> Result<Source, PluginError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PluginError::new("empty source"));
        }
        if text == "test" {
            return Ok(Source::Test);
        }
        if let Some(device) = text.strip_prefix("v4l2:") {
            return Ok(Source::Camera(PathBuf::from(device)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return match scheme {
                "rtp" | "udp" | "http" | "https" | "rtsp" | "file" => Ok(Source::Uri(text.to_owned())),
                other => Err(PluginError::new(format!(
                    "unsupported source scheme '{other}://' (use rtp, udp, http, https, rtsp or file)"
                ))),
            };
        }
        Ok(Source::File(PathBuf::from(text)))
    }

    /// Checks what can be checked before building a pipeline, so that the
    /// common mistakes get a plain message instead of a GStreamer one.
    pub fn check(&self) -> Result<(), PluginError> {
        match self {
            Source::File(path) if !path.is_file() => Err(PluginError::new(format!(
                "cannot open source {}: no such file",
                path.display()
            ))),
            Source::Camera(dev) if !dev.exists() => Err(PluginError::new(format!(
                "cannot open camera {}: no such device",
                dev.display()
            ))),
            _ => Ok(()),
        }
    }

    pub fn is_test(&self) -> bool {
        matches!(self, Source::Test)
    }

    /// A file that can be sought back to its start.
    pub fn is_file(&self) -> bool {
        matches!(self, Source::File(_))
    }

    /// A `gst-launch` fragment ending in an element named `src` (a demuxing
    /// decoder for files and URIs) whose pads give raw video (and audio).
    pub fn launch_fragment(&self, live: bool) -> String {
        match self {
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
}

/// Quotes a value for `gst_parse_launch`.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_refuses_unknown_schemes() {
        assert_eq!(Source::parse("test").unwrap(), Source::Test);
        assert_eq!(
            Source::parse("v4l2:/dev/video0").unwrap(),
            Source::Camera("/dev/video0".into())
        );
        assert_eq!(
            Source::parse("movie.mp4").unwrap(),
            Source::File("movie.mp4".into())
        );
        for uri in [
            "rtp://127.0.0.1:5004",
            "udp://127.0.0.1:5000",
            "https://x/y.ts",
            "rtsp://cam/stream",
        ] {
            assert_eq!(Source::parse(uri).unwrap(), Source::Uri(uri.into()));
        }
        let err = Source::parse("gopher://x").unwrap_err();
        assert!(err.message.contains("gopher"), "{err}");
        let err = Source::File("/nonexistent/clip.mp4".into())
            .check()
            .unwrap_err();
        assert!(err.message.contains("/nonexistent/clip.mp4"), "{err}");
    }
}
