//! What a codec input's `source=` and a codec output's `sink=` name.
//!
//! Part of the SDK so that every codec input (`gst`, `vlc`, ...) reads the
//! same syntax and a user can switch backends without rewriting sources;
//! each input only says how its media library opens each kind.

use std::path::PathBuf;

use crate::{ParamDef, Params, PluginError};

/// What a codec input's `source=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The backend's moving test pattern.
    Test,
    /// A media file (`FILE`), looped unless `loop=false`.
    File(PathBuf),
    /// A video device (`v4l2:/dev/videoN`).
    Camera(PathBuf),
    /// rtp://, udp://, http(s)://, rtsp://, file://.
    Uri(String),
}

impl Source {
    /// `test`, `v4l2:DEVICE`, a URI of a supported scheme, or a file path.
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

    /// Checks what can be checked before a media library opens the source,
    /// so that the common mistakes get a plain message instead of its own.
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

    /// The backend's test pattern.
    pub fn is_test(&self) -> bool {
        matches!(self, Source::Test)
    }

    /// A file that can be played again from its start (looped).
    pub fn is_file(&self) -> bool {
        matches!(self, Source::File(_))
    }

    /// A source that is live by nature (paced by its sender).
    pub fn is_live_uri(&self) -> bool {
        matches!(self, Source::Uri(u) if u.starts_with("rtp://") || u.starts_with("udp://") || u.starts_with("rtsp://"))
    }
}

/// What a codec output's `sink=` parameter names: the same three for every
/// backend, so a user can switch outputs without relearning them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Play on this machine's screen and speakers.
    Screen,
    /// Decode and discard, counting frames and errors (a measurement mode).
    Decode,
    /// Write a file standard tools open.
    File(String),
}

impl Sink {
    /// The `sink` parameter, declared and read by every output that takes one.
    pub const PARAM: ParamDef = ParamDef::new("sink", "screen", "screen | decode | file:PATH");

    /// The sink `params` name (`sink`, default `screen`).
    pub fn from_params(params: &Params) -> Result<Sink, PluginError> {
        Sink::parse(Self::PARAM.get(params))
    }

    /// `screen`, `decode` or `file:PATH`.
    pub fn parse(text: &str) -> Result<Sink, PluginError> {
        match text {
            "screen" => Ok(Sink::Screen),
            "decode" => Ok(Sink::Decode),
            other => match other.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Sink::File(path.to_owned())),
                _ => Err(PluginError::new(format!(
                    "sink '{other}': use screen, decode or file:PATH"
                ))),
            },
        }
    }
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

    #[test]
    fn sinks_parse_and_a_bad_one_says_what_is_allowed() {
        assert_eq!(Sink::parse("screen").unwrap(), Sink::Screen);
        assert_eq!(Sink::parse("decode").unwrap(), Sink::Decode);
        assert_eq!(Sink::parse("file:a.ts").unwrap(), Sink::File("a.ts".into()));
        for bad in ["file:", "speaker"] {
            let err = Sink::parse(bad).unwrap_err();
            assert!(err.message.contains("screen, decode or file:PATH"), "{err}");
        }
    }
}
