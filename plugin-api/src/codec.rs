//! The settings every transcoding input shares, declared and read from one
//! table.
//!
//! The `gst` and `vlc` inputs take the same eleven parameters with the same
//! defaults: what to capture (`source`, see [`crate::source`]), the stream's
//! quality, how chunks are cut and how a dead source is noticed. Each lists
//! them with [`CodecSettings::declare`] and reads them with
//! [`CodecSettings::parse`], so a default lives in [`CodecSettings::PARAMS`]
//! and nowhere else; only the help of the parameters whose meaning differs
//! between libraries (the audio codec, what `audio=auto` means) is the
//! library's own.

use crate::source::Source;
use crate::{ComponentSpec, ParamDef, Params, PluginError};

/// What to capture.
pub const SOURCE: ParamDef = ParamDef::new(
    "source",
    "test",
    "test | FILE | v4l2:/dev/videoN | rtp://, udp://, http(s)://, rtsp://, file:// URI",
);
/// The stream's total bitrate.
pub const BITRATE_KBPS: ParamDef = ParamDef::new(
    "bitrate_kbps",
    "1000",
    "total bitrate (video gets this minus the audio)",
);
/// Output width.
pub const WIDTH: ParamDef = ParamDef::new("width", "640", "output width in pixels");
/// Output height.
pub const HEIGHT: ParamDef = ParamDef::new("height", "360", "output height in pixels");
/// Output frame rate.
pub const FPS: ParamDef = ParamDef::new("fps", "25", "output frame rate");
/// Media per chunk.
pub const CHUNK_MS: ParamDef = ParamDef::new(
    "chunk_ms",
    "200",
    "media per chunk; chunks also start at every keyframe",
);
/// Longest keyframe interval.
pub const KEYFRAME_MS: ParamDef = ParamDef::new(
    "keyframe_ms",
    "1000",
    "at most this long between keyframes (how soon a joiner can start)",
);
/// Whether to encode audio; `auto` is the library's choice.
pub const AUDIO: ParamDef = ParamDef::new("audio", "auto", "encode audio: true | false | auto");
/// Whether a file source restarts at its end.
pub const LOOP: ParamDef = ParamDef::new(
    "loop",
    "true",
    "restart a file source at its end instead of ending the stream",
);
/// Whether the source is paced in real time.
pub const LIVE: ParamDef = ParamDef::new(
    "live",
    "true",
    "pace the source in real time (false: as fast as possible)",
);
/// How long a silent source may stay silent.
pub const TIMEOUT_MS: ParamDef = ParamDef::new(
    "timeout_ms",
    "10000",
    "a source silent this long is reported dead",
);

/// A transcoding input's settings, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecSettings {
    /// `source` as parsed.
    pub source: Source,
    /// `source` as given, for messages.
    pub source_text: String,
    /// `bitrate_kbps`: audio and video together, before the container.
    pub bitrate_kbps: u32,
    /// `width` in pixels.
    pub width: u32,
    /// `height` in pixels.
    pub height: u32,
    /// `fps`: frames per second.
    pub fps: u32,
    /// `chunk_ms`, in microseconds.
    pub chunk_us: u32,
    /// `keyframe_ms`.
    pub keyframe_ms: u32,
    /// `audio`: `Some` when given as true or false, `None` for `auto`.
    pub audio: Option<bool>,
    /// `loop`.
    pub looping: bool,
    /// `live`.
    pub live: bool,
    /// `timeout_ms`, in microseconds.
    pub timeout_us: u64,
}

impl CodecSettings {
    /// Every shared parameter, in the order `plugins inspect` lists them
    /// (`source` first: `--input gst:FILE` sets it).
    pub const PARAMS: [ParamDef; 11] = [
        SOURCE,
        BITRATE_KBPS,
        WIDTH,
        HEIGHT,
        FPS,
        CHUNK_MS,
        KEYFRAME_MS,
        AUDIO,
        LOOP,
        LIVE,
        TIMEOUT_MS,
    ];

    /// Declares [`Self::PARAMS`] on `spec`; `help` replaces the help of the
    /// named parameters (what this library means by them).
    pub fn declare(spec: ComponentSpec, help: &[(&str, &str)]) -> ComponentSpec {
        Self::PARAMS.iter().fold(spec, |spec, p| {
            let text = help
                .iter()
                .find(|(name, _)| *name == p.name)
                .map_or(p.help, |&(_, text)| text);
            spec.param(p.name, p.default, text)
        })
    }

    /// Reads the settings from `params` (defaults for the absent ones) and
    /// checks them: the bitrate leaves at least 50 kbit/s of video beside
    /// `audio_kbps` of audio, the picture is at least 16x16, and frame rate
    /// and chunk length are positive.
    pub fn parse(params: &Params, audio_kbps: u32) -> Result<Self, PluginError> {
        let source_text = SOURCE.get(params).to_owned();
        let settings = CodecSettings {
            source: Source::parse(&source_text)?,
            source_text,
            bitrate_kbps: BITRATE_KBPS.parse(params)?,
            width: WIDTH.parse(params)?,
            height: HEIGHT.parse(params)?,
            fps: FPS.parse(params)?,
            chunk_us: CHUNK_MS.parse::<u32>(params)?.saturating_mul(1000),
            keyframe_ms: KEYFRAME_MS.parse(params)?,
            audio: match AUDIO.get(params) {
                "auto" => None,
                _ => Some(AUDIO.parse(params)?),
            },
            looping: LOOP.parse(params)?,
            live: LIVE.parse(params)?,
            timeout_us: TIMEOUT_MS.parse::<u64>(params)?.saturating_mul(1000),
        };
        if settings.bitrate_kbps < audio_kbps + 50
            || settings.width < 16
            || settings.height < 16
            || settings.fps == 0
            || settings.chunk_us == 0
        {
            return Err(PluginError::new(format!(
                "bitrate_kbps must be at least {}, width/height at least 16, fps and chunk_ms positive",
                audio_kbps + 50
            )));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_one_table() {
        let s = CodecSettings::parse(&Params::new(), 64).unwrap();
        assert_eq!(s.source, Source::Test);
        assert_eq!(
            (s.bitrate_kbps, s.width, s.height, s.fps),
            (1000, 640, 360, 25)
        );
        assert_eq!(
            (s.chunk_us, s.keyframe_ms, s.timeout_us),
            (200_000, 1000, 10_000_000)
        );
        assert_eq!((s.audio, s.looping, s.live), (None, true, true));
        let info = CodecSettings::declare(ComponentSpec::new("x", "0.1.0", "x"), &[])
            .info(crate::Group::Input);
        for (declared, def) in info.params.iter().zip(CodecSettings::PARAMS) {
            assert_eq!(
                (declared.name.as_str(), declared.default.as_str()),
                (def.name, def.default)
            );
        }
        assert_eq!(info.params.len(), 11);
    }

    #[test]
    fn given_values_and_checks() {
        let p: Params = [
            ("audio", "false"),
            ("chunk_ms", "100"),
            ("bitrate_kbps", "300"),
        ]
        .into_iter()
        .collect();
        let s = CodecSettings::parse(&p, 64).unwrap();
        assert_eq!(
            (s.audio, s.chunk_us, s.bitrate_kbps),
            (Some(false), 100_000, 300)
        );
        let low: Params = [("bitrate_kbps", "100")].into_iter().collect();
        assert!(CodecSettings::parse(&low, 64).is_err());
        let help =
            CodecSettings::declare(ComponentSpec::new("x", "0.1.0", "x"), &[("audio", "mine")])
                .info(crate::Group::Input);
        assert_eq!(help.params[7].help.as_str(), "mine");
    }
}
