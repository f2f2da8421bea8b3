//! Input `gst`: source -> transcode -> MPEG-TS -> chunks.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use p2ner_plugin_api::codec::CodecSettings;
use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::InputState;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Chunker, Source};

/// Audio is Opus at a fixed rate; the video encoder gets the rest.
const AUDIO_KBPS: u32 = 64;

/// The `gst` input.
pub struct GstInput {
    source: Source,
    source_text: String,
    bitrate_kbps: u32,
    width: u32,
    height: u32,
    fps: u32,
    chunk_us: u32,
    keyframe_ms: u32,
    audio: bool,
    looping: bool,
    live: bool,
    timeout_us: u64,
    running: Option<Running>,
}

struct Running {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    chunker: Chunker,
    /// Video keyframes the encoder made that the muxer has not passed on
    /// yet. The muxer marks every audio buffer as a sync point too, so its
    /// flags alone would cut a chunk at each one.
    video_keys: Arc<AtomicU64>,
    /// Engine time of the last buffer (or of the start).
    last_data_us: u64,
    ended: bool,
}

impl GstInput {
    /// An input with the given parameters ([`CodecSettings`]); nothing is
    /// opened before start.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let CodecSettings {
            source,
            source_text,
            bitrate_kbps,
            width,
            height,
            fps,
            chunk_us,
            keyframe_ms,
            audio,
            looping,
            live,
            timeout_us,
        } = CodecSettings::parse(params, AUDIO_KBPS)?;
        Ok(GstInput {
            // `auto`: the test tone; other sources' audio is left out.
            audio: audio.unwrap_or(source.is_test()),
            source,
            source_text,
            bitrate_kbps,
            width,
            height,
            fps,
            chunk_us,
            keyframe_ms,
            looping,
            live,
            timeout_us,
            running: None,
        })
    }

    /// The whole pipeline as a `gst-launch` description.
    fn description(&self) -> String {
        let (video_src, audio_src) = match self.source {
            Source::Test => ("src_v.", "src_a."),
            Source::Camera(_) => ("src_v.", "src_a."),
            _ => ("src.", "src."),
        };
        // MPEG-TS adds about 6% on top of the elementary streams.
        let video_kbps = (self.bitrate_kbps - if self.audio { AUDIO_KBPS } else { 0 }) * 94 / 100;
        let key_int = (self.fps as u64 * self.keyframe_ms as u64 / 1000).max(1);
        // Paced by the sink's clock unless the source is live by nature.
        let paced = self.live
            && matches!(self.source, Source::File(_) | Source::Uri(_))
            && !self.source.is_live_uri();
        let mut d = crate::source::launch_fragment(&self.source, self.live);
        d.push_str(&format!(
            " {video_src} ! queue ! videoconvert ! videoscale ! videorate \
             ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 \
             ! x264enc name=venc tune=zerolatency speed-preset=ultrafast bitrate={video_kbps} key-int-max={key_int} bframes=0 \
               pass=cbr vbv-buf-capacity=1000 option-string=nal-hrd=cbr \
             ! h264parse config-interval=-1 ! queue ! mux.",
            w = self.width,
            h = self.height,
            fps = self.fps,
        ));
        if self.audio {
            d.push_str(&format!(
                " {audio_src} ! queue ! audioconvert ! audioresample ! opusenc bitrate={} ! queue ! mux.",
                AUDIO_KBPS * 1000
            ));
        }
        d.push_str(&format!(
            " mpegtsmux name=mux alignment=7 ! appsink name=sink sync={paced} max-buffers=5000 drop=false"
        ));
        d
    }

    fn fail(&self, what: impl std::fmt::Display) -> PluginError {
        PluginError::new(format!("source '{}': {what}", self.source_text))
    }
}

/// The first error on the bus, with GStreamer's debug detail.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(err) = msg.view() {
            return Some(match err.debug() {
                Some(debug) => format!("{} ({debug})", err.error()),
                None => err.error().to_string(),
            });
        }
    }
    None
}

impl Input for GstInput {
    fn start(&mut self, now_us: u64) -> Result<StreamFormat, PluginError> {
        self.source.check()?;
        crate::init()?;
        let description = self.description();
        p2ner_plugin_api::tracing::debug!(pipeline = %description, "starting gst input");
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| self.fail(format!("cannot build the pipeline: {e}")))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| self.fail("not a pipeline"))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| self.fail("no appsink in the pipeline"))?;
        let opened = pipeline.set_state(gst::State::Paused);
        let (result, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
        if opened.is_err() || result.is_err() {
            let why = bus_error(&pipeline).unwrap_or_else(|| "it did not start".into());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(self.fail(format!("cannot open: {why}")));
        }
        if self.source.is_file() && self.looping {
            // A segment seek ends in SEGMENT_DONE instead of EOS, and the next
            // (non-flushing) one continues the running time: seamless loops.
            pipeline
                .seek_simple(
                    gst::SeekFlags::FLUSH | gst::SeekFlags::SEGMENT,
                    gst::ClockTime::ZERO,
                )
                .map_err(|e| self.fail(format!("cannot loop: {e}")))?;
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            let why = bus_error(&pipeline).unwrap_or_else(|| "it did not start".into());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(self.fail(format!("cannot play: {why}")));
        }
        let video_keys = Arc::new(AtomicU64::new(0));
        if let Some(pad) = pipeline.by_name("venc").and_then(|e| e.static_pad("src")) {
            let keys = video_keys.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buffer) = info.buffer() {
                    if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                        keys.fetch_add(1, Ordering::AcqRel);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        self.running = Some(Running {
            pipeline,
            sink,
            chunker: Chunker::new(self.chunk_us as u64),
            video_keys,
            last_data_us: now_us,
            ended: false,
        });
        Ok(StreamFormat {
            container: "mpegts".into(),
            description: format!(
                "H.264 {}x{}@{} {}{} kbit/s from {}",
                self.width,
                self.height,
                self.fps,
                if self.audio { "+ Opus, " } else { "" },
                self.bitrate_kbps,
                self.source_text
            )
            .into(),
            bitrate_kbps: self.bitrate_kbps,
            chunk_us: self.chunk_us,
        })
    }

    fn poll(&mut self, now_us: u64, out: &mut RVec<MediaChunk>) -> Result<InputState, PluginError> {
        let fail =
            |what: String| PluginError::new(format!("source '{}': {what}", self.source_text));
        let looping = self.looping && self.source.is_file();
        let timeout_us = self.timeout_us;
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| fail("polled before start".into()))?;
        if running.ended {
            return Ok(InputState::Ended);
        }
        let bus = running
            .pipeline
            .bus()
            .ok_or_else(|| fail("pipeline has no bus".into()))?;
        while let Some(msg) = bus.pop() {
            match msg.view() {
                gst::MessageView::Error(err) => {
                    let _ = running.pipeline.set_state(gst::State::Null);
                    running.ended = true;
                    return Err(fail(format!(
                        "failed mid-stream: {} ({})",
                        err.error(),
                        err.debug().unwrap_or_default()
                    )));
                }
                gst::MessageView::SegmentDone(_) if looping => {
                    running
                        .pipeline
                        .seek_simple(gst::SeekFlags::SEGMENT, gst::ClockTime::ZERO)
                        .map_err(|e| fail(format!("cannot loop: {e}")))?;
                }
                gst::MessageView::Eos(_) | gst::MessageView::SegmentDone(_) => running.ended = true,
                gst::MessageView::Warning(w) => {
                    p2ner_plugin_api::tracing::warn!(source = %self.source_text, "{}", w.error());
                }
                _ => {}
            }
        }
        while let Some(sample) = running.sink.try_pull_sample(gst::ClockTime::ZERO) {
            let Some(buffer) = sample.buffer() else {
                continue;
            };
            let map = buffer
                .map_readable()
                .map_err(|_| fail("unreadable buffer".into()))?;
            // With audio, the first sync point the muxer passes on after the
            // encoder made a keyframe starts a chunk: the keyframe itself, or
            // at worst an audio packet just before it.
            let pts = buffer.pts().map(|t| t.useconds());
            let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT)
                && (!self.audio
                    || running
                        .video_keys
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |k| k.checked_sub(1))
                        .is_ok());
            out.extend(running.chunker.push(pts, keyframe, &map));
            running.last_data_us = now_us;
        }
        if running.ended {
            out.extend(running.chunker.flush());
            let _ = running.pipeline.set_state(gst::State::Null);
            return Ok(InputState::Ended);
        }
        if now_us.saturating_sub(running.last_data_us) > timeout_us {
            let _ = running.pipeline.set_state(gst::State::Null);
            running.ended = true;
            return Err(fail(format!(
                "no data for {} ms: the source is dead",
                timeout_us / 1000
            )));
        }
        Ok(InputState::Live)
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        if let Some(running) = self.running.take() {
            let _ = running.pipeline.set_state(gst::State::Null);
        }
        Ok(())
    }
}

impl Drop for GstInput {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
