//! Output `gst`: play, write or decode the stream's MPEG-TS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::source::Sink;

/// The `gst` output.
pub struct GstOutput {
    sink: Sink,
    running: Option<Running>,
    /// Skipping until a keyframe chunk: at the start and after a gap.
    waiting: bool,
    discont: bool,
    report: OutputReport,
    skipped: u64,
}

struct Running {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    frames: Arc<AtomicU64>,
}

const TS_CAPS: &str = "video/mpegts,systemstream=true,packetsize=188";

impl GstOutput {
    /// An output with the given parameters (`sink`); nothing is opened
    /// before start.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let sink = Sink::from_params(params)?;
        Ok(GstOutput {
            sink,
            running: None,
            waiting: true,
            discont: false,
            report: OutputReport::default(),
            skipped: 0,
        })
    }

    fn description(&self) -> String {
        let src = format!("appsrc name=src format=bytes is-live=true caps=\"{TS_CAPS}\"");
        match &self.sink {
            // Decoded branches are added per stream as decodebin finds them
            // (see `link_decoded`): a branch for a stream that never comes
            // would hold back the end of stream.
            Sink::Screen | Sink::Decode => format!("{src} ! decodebin name=d"),
            Sink::File(path) => format!(
                "{src} ! tsparse ! filesink location=\"{}\"",
                path.replace('"', "\\\"")
            ),
        }
    }

    /// Errors and decoder warnings since the last look; counted, not fatal,
    /// except an error that stopped the pipeline.
    fn drain_bus(&mut self) -> Result<(), PluginError> {
        let Some(running) = &self.running else {
            return Ok(());
        };
        let Some(bus) = running.pipeline.bus() else {
            return Ok(());
        };
        while let Some(msg) = bus.pop() {
            match msg.view() {
                gst::MessageView::Error(err) => {
                    self.report.errors += 1;
                    return Err(PluginError::new(format!(
                        "gst output ({:?}) failed: {} ({})",
                        self.sink,
                        err.error(),
                        err.debug().unwrap_or_default()
                    )));
                }
                gst::MessageView::Warning(w) => {
                    self.report.errors += 1;
                    p2ner_plugin_api::tracing::debug!("gst output warning: {}", w.error());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Output for GstOutput {
    fn start(&mut self, _format: &StreamFormat) -> Result<(), PluginError> {
        crate::init()?;
        let description = self.description();
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| PluginError::new(format!("cannot build the output pipeline: {e}")))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| PluginError::new("not a pipeline"))?;
        let src = pipeline
            .by_name("src")
            .and_then(|s| s.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| PluginError::new("no appsrc in the output pipeline"))?;
        let frames = Arc::new(AtomicU64::new(0));
        if let Some(decodebin) = pipeline.by_name("d") {
            let (pipeline, frames, screen) =
                (pipeline.clone(), frames.clone(), self.sink == Sink::Screen);
            decodebin.connect_pad_added(move |_, pad| {
                if let Err(e) = link_decoded(&pipeline, pad, screen, &frames) {
                    p2ner_plugin_api::tracing::warn!("gst output: {e}");
                }
            });
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            self.running = Some(Running {
                pipeline,
                src,
                frames,
            });
            self.drain_bus()?;
            return Err(PluginError::new(format!(
                "gst output ({:?}) did not start",
                self.sink
            )));
        }
        self.running = Some(Running {
            pipeline,
            src,
            frames,
        });
        Ok(())
    }

    fn push(&mut self, chunk: ChunkRef<'_>) -> Result<(), PluginError> {
        self.drain_bus()?;
        if self.waiting && !chunk.keyframe {
            self.skipped += 1;
            return Ok(());
        }
        self.waiting = false;
        let running = self
            .running
            .as_ref()
            .ok_or_else(|| PluginError::new("gst output used before start"))?;
        let mut buffer = gst::Buffer::from_slice(chunk.data.as_slice().to_vec());
        if std::mem::take(&mut self.discont) {
            buffer
                .get_mut()
                .expect("a new buffer is writable")
                .set_flags(gst::BufferFlags::DISCONT);
        }
        running
            .src
            .push_buffer(buffer)
            .map_err(|e| PluginError::new(format!("gst output refused a chunk: {e:?}")))?;
        self.report.chunks += 1;
        self.report.bytes += chunk.data.len() as u64;
        Ok(())
    }

    fn gap(&mut self, _seq: u64) -> Result<(), PluginError> {
        self.report.gaps += 1;
        self.waiting = true;
        self.discont = true;
        Ok(())
    }

    fn finish(&mut self) -> Result<OutputReport, PluginError> {
        let mut result = Ok(());
        if let Some(running) = self.running.take() {
            let _ = running.src.end_of_stream();
            if let Some(bus) = running.pipeline.bus() {
                // Wait for the file to be flushed / the decoder to drain.
                let msg = bus.timed_pop_filtered(
                    gst::ClockTime::from_seconds(10),
                    &[gst::MessageType::Eos, gst::MessageType::Error],
                );
                if let Some(gst::MessageView::Error(err)) = msg.as_ref().map(|m| m.view()) {
                    self.report.errors += 1;
                    result = Err(PluginError::new(format!(
                        "gst output failed at the end: {}",
                        err.error()
                    )));
                }
            }
            let _ = running.pipeline.set_state(gst::State::Null);
            let frames = running.frames.load(Ordering::Relaxed);
            self.report.detail = match &self.sink {
                Sink::Decode => format!(
                    "{frames} frames decoded, {} chunks skipped before a keyframe",
                    self.skipped
                ),
                Sink::File(path) => {
                    format!("wrote {} bytes of MPEG-TS to {path}", self.report.bytes)
                }
                Sink::Screen => "played".to_owned(),
            }
            .into();
        }
        result.map(|()| self.report.clone())
    }
}

/// Adds a branch for one decoded stream: to the screen/speakers, or to a
/// counting fake sink.
fn link_decoded(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    screen: bool,
    frames: &Arc<AtomicU64>,
) -> Result<(), String> {
    let caps = pad.current_caps().ok_or("decoded pad without caps")?;
    let kind = caps
        .structure(0)
        .map(|s| s.name().to_string())
        .unwrap_or_default();
    let names: &[&str] = if kind.starts_with("video/") {
        if screen {
            &["queue", "videoconvert", "autovideosink"]
        } else {
            &["queue", "fakesink"]
        }
    } else if kind.starts_with("audio/") {
        if screen {
            &["queue", "audioconvert", "audioresample", "autoaudiosink"]
        } else {
            &["queue", "fakesink"]
        }
    } else {
        return Ok(());
    };
    let elements = names
        .iter()
        .map(|n| {
            gst::ElementFactory::make(n)
                .build()
                .map_err(|e| format!("{n}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sink = elements.last().expect("non-empty");
    if !screen {
        sink.set_property("sync", false);
    }
    if kind.starts_with("video/") {
        let counter = frames.clone();
        let sink_pad = sink.static_pad("sink").ok_or("sink without a pad")?;
        sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.add_many(&elements).map_err(|e| e.to_string())?;
    gst::Element::link_many(&elements).map_err(|e| e.to_string())?;
    for element in &elements {
        element
            .sync_state_with_parent()
            .map_err(|e| e.to_string())?;
    }
    pad.link(
        &elements[0]
            .static_pad("sink")
            .ok_or("queue without a pad")?,
    )
    .map_err(|e| format!("{e:?}"))?;
    Ok(())
}

impl Drop for GstOutput {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.pipeline.set_state(gst::State::Null);
        }
    }
}
