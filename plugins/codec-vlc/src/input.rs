//! Input `vlc`: source -> VLC transcode -> MPEG-TS -> chunks.
//!
//! VLC runs in-process (libvlc), transcodes the source with its `transcode`
//! stream output (x264 for video, AAC for audio) and muxes MPEG-TS with its
//! `std` output. The transport stream comes back to the plugin over a local
//! channel read by a thread of ours:
//!
//! - `live=true` (default): UDP to 127.0.0.1 on a port the plugin bound. VLC's
//!   UDP output sends every packet at its timestamp, so files are paced in
//!   real time like a camera, and loopback UDP at these rates does not drop
//!   (the socket gets a 4 MB receive buffer and a dedicated reader).
//! - `live=false`: a named pipe written by VLC's file output, which lets VLC
//!   run as fast as it can (the pipe's back-pressure is the only pacing).
//!
//! [`TsScanner`](crate::ts::TsScanner) finds frames and keyframes in the
//! bytes and [`Chunker`] cuts chunks as codec-gst does.

use std::fs::File;
use std::io::Read;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use p2ner_plugin_api::codec::CodecSettings;
use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::{tracing, InputState};

use crate::testsrc::TestPattern;
use crate::ts::TsScanner;
use crate::vlc::{Instance, Media, Player, State};
use crate::{Chunker, Source};

/// Audio is AAC at a fixed rate; the video encoder gets the rest.
const AUDIO_KBPS: u32 = 64;
/// After VLC says the source ended, its UDP output still sends what it
/// holds (up to its caching delay); the stream ends after this much quiet.
const DRAIN_QUIET_US: u64 = 1_000_000;
const DRAIN_MAX_US: u64 = 5_000_000;
/// Datagrams (or pipe reads) buffered between the reader and `poll`.
const CHANNEL_DEPTH: usize = 16_384;

/// The `vlc` input: libvlc transcodes the source to MPEG-TS, which is cut into chunks at keyframes.
pub struct VlcInput {
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

/// Field order is drop order: VLC stops before what it reads from goes.
struct Running {
    player: Player,
    _media: Media,
    instance: Instance,
    _pattern: Option<Box<TestPattern>>,
    reader: Reader,
    scanner: TsScanner,
    chunker: Chunker,
    /// Engine time of the last bytes (or of the start).
    last_data_us: u64,
    got_data: bool,
    /// Engine time VLC reported the end of the source.
    ended_at: Option<u64>,
    done: bool,
}

impl VlcInput {
    /// An input from its parameters; opens nothing until `start` (creating a component must be cheap).
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
        // `auto`: the source's audio, if it has any.
        let audio = audio.unwrap_or(!source.is_test());
        if audio && source.is_test() {
            return Err(PluginError::new(
                "the vlc test source is video only (VLC's imem input carries one stream): use audio=false or auto",
            ));
        }
        Ok(VlcInput {
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
            running: None,
        })
    }

    /// The `:sout` chain: transcode, then mux MPEG-TS to `access`/`dst`.
    fn sout(&self, access: &str, dst: &str) -> String {
        // MPEG-TS adds about 6% on top of the elementary streams.
        let video_kbps = (self.bitrate_kbps - if self.audio { AUDIO_KBPS } else { 0 }) * 94 / 100;
        let keyint = (self.fps as u64 * self.keyframe_ms as u64 / 1000).max(1);
        // CBR with filler (hrd=cbr), as the gst input does, so the stream's
        // rate is what was announced whatever the picture.
        let mut transcode = format!(
            "vcodec=h264,venc=x264{{preset=ultrafast,tune=zerolatency,keyint={keyint},bframes=0,\
             hrd=cbr,vbv-maxrate={video_kbps},vbv-bufsize={video_kbps}}},vb={video_kbps},\
             width={w},height={h},fps={fps}",
            w = self.width,
            h = self.height,
            fps = self.fps,
        );
        if self.audio {
            transcode.push_str(&format!(
                ",acodec=mp4a,ab={AUDIO_KBPS},channels=2,samplerate=48000"
            ));
        }
        format!(":sout=#transcode{{{transcode}}}:std{{access={access},mux=ts,dst={dst}}}")
    }

    fn fail(&self, what: impl std::fmt::Display) -> PluginError {
        PluginError::new(format!("source '{}': {what}", self.source_text))
    }
}

/// VLC's last error messages, as a suffix for a report.
fn vlc_said(instance: &Instance) -> String {
    let errors = instance.log().errors();
    if errors.is_empty() {
        String::new()
    } else {
        format!(" (VLC: {errors})")
    }
}

impl Input for VlcInput {
    fn start(&mut self, now_us: u64) -> Result<StreamFormat, PluginError> {
        self.source.check()?;
        let instance = Instance::new(&["--aout=dummy", "--vout=dummy", "--avcodec-hw=none"])
            .map_err(|e| self.fail(e.message))?;
        let (reader, access, dst) = if self.live {
            let (reader, port) = Reader::udp().map_err(|e| self.fail(e))?;
            (reader, "udp", format!("127.0.0.1:{port}"))
        } else {
            let (reader, path) = Reader::fifo().map_err(|e| self.fail(e))?;
            (reader, "file", format!("\"{}\"", path.display()))
        };
        let media = match &self.source {
            Source::File(path) => instance.media_path(&path.to_string_lossy()),
            other => instance.media_location(&crate::source::mrl(other)),
        }
        .map_err(|e| self.fail(e.message))?;
        let sout = self.sout(access, &dst);
        tracing::debug!(source = %self.source_text, %sout, "starting vlc input");
        media.option(&sout)?;
        media.option(":no-sout-spu")?;
        if !self.audio {
            media.option(":no-sout-audio")?;
        }
        if self.looping && self.source.is_file() {
            media.option(":input-repeat=65535")?;
        }
        let pattern = if self.source.is_test() {
            let pattern = TestPattern::new(self.width, self.height, self.fps);
            for option in pattern.options(self.fps) {
                media.option(&option)?;
            }
            Some(pattern)
        } else {
            None
        };
        let player = media.player().map_err(|e| self.fail(e.message))?;
        player
            .play()
            .map_err(|e| self.fail(format!("{}{}", e.message, vlc_said(&instance))))?;
        self.running = Some(Running {
            player,
            _media: media,
            instance,
            _pattern: pattern,
            reader,
            scanner: TsScanner::new(),
            chunker: Chunker::new(self.chunk_us as u64),
            last_data_us: now_us,
            got_data: false,
            ended_at: None,
            done: false,
        });
        Ok(StreamFormat {
            container: "mpegts".into(),
            description: format!(
                "H.264 {}x{}@{} {}{} kbit/s from {} (VLC)",
                self.width,
                self.height,
                self.fps,
                if self.audio { "+ AAC, " } else { "" },
                self.bitrate_kbps,
                self.source_text
            )
            .into(),
            bitrate_kbps: self.bitrate_kbps,
            chunk_us: self.chunk_us,
        })
    }

    fn poll(&mut self, now_us: u64, out: &mut RVec<MediaChunk>) -> Result<InputState, PluginError> {
        let source_text = &self.source_text;
        let fail = |what: String| PluginError::new(format!("source '{source_text}': {what}"));
        let timeout_us = self.timeout_us;
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| fail("polled before start".into()))?;
        if running.done {
            return Ok(InputState::Ended);
        }
        while let Ok(bytes) = running.reader.rx.try_recv() {
            running.scanner.push(&bytes);
            running.last_data_us = now_us;
            running.got_data = true;
        }
        for unit in running.scanner.take() {
            out.extend(
                running
                    .chunker
                    .push(unit.time_us, unit.keyframe, &unit.data),
            );
        }
        if let Some(why) = running.reader.failed() {
            running.done = true;
            return Err(fail(format!("reading VLC's output failed: {why}")));
        }
        match running.player.state() {
            State::Error => {
                running.done = true;
                running.player.stop();
                let what = if running.got_data {
                    "VLC failed mid-stream"
                } else {
                    "VLC cannot open or decode it"
                };
                return Err(fail(format!("{what}{}", vlc_said(&running.instance))));
            }
            State::Ended | State::Stopped => {
                let ended_at = *running.ended_at.get_or_insert(now_us);
                let quiet = now_us.saturating_sub(running.last_data_us.max(ended_at));
                if quiet >= DRAIN_QUIET_US || now_us.saturating_sub(ended_at) >= DRAIN_MAX_US {
                    running.done = true;
                    running.player.stop();
                    if !running.got_data || !running.scanner.has_video() {
                        return Err(fail(format!(
                            "VLC ended without producing any video{}",
                            vlc_said(&running.instance)
                        )));
                    }
                    for unit in running.scanner.finish() {
                        out.extend(
                            running
                                .chunker
                                .push(unit.time_us, unit.keyframe, &unit.data),
                        );
                    }
                    out.extend(running.chunker.flush());
                    return Ok(InputState::Ended);
                }
                return Ok(InputState::Live);
            }
            _ => {}
        }
        if now_us.saturating_sub(running.last_data_us) > timeout_us {
            running.done = true;
            running.player.stop();
            return Err(fail(format!(
                "no data for {} ms: the source is dead{}",
                timeout_us / 1000,
                vlc_said(&running.instance)
            )));
        }
        Ok(InputState::Live)
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        // Dropping stops the player, then the reader.
        self.running = None;
        Ok(())
    }
}

impl Drop for VlcInput {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The thread that reads VLC's transport stream.
struct Reader {
    rx: Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    error: Arc<std::sync::Mutex<Option<String>>>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    fifo: Option<PathBuf>,
}

impl Reader {
    /// A loopback UDP socket VLC sends to; returns the reader and its port.
    fn udp() -> Result<(Reader, u16), String> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind UDP: {e}"))?;
        let port = socket.local_addr().map_err(|e| e.to_string())?.port();
        set_receive_buffer(&socket, 4 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let reader = Reader::spawn(None, move |buf| match socket.recv_from(buf) {
            // Only VLC, on this machine, may write into the stream.
            Ok((n, from)) if from.ip().is_loopback() => Ok(n),
            Ok(_) => Ok(0),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e.to_string()),
        });
        Ok((reader, port))
    }

    /// A named pipe VLC's file output writes to.
    fn fifo() -> Result<(Reader, PathBuf), String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "p2ner-vlc-{}-{}.ts",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let cpath = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| "bad temp path".to_owned())?;
        // SAFETY: a valid C path.
        if unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) } != 0 {
            return Err(format!(
                "cannot make a pipe at {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        // Read-write: opening never blocks, and VLC closing its end is not
        // an end of file (VLC's state says when the source ended).
        let mut file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open the pipe {}: {e}", path.display()))?;
        let reader = Reader::spawn(Some(path.clone()), move |buf| {
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
            if ready <= 0 {
                return Ok(0);
            }
            file.read(buf).map_err(|e| e.to_string())
        });
        Ok((reader, path))
    }

    fn spawn(
        fifo: Option<PathBuf>,
        mut read: impl FnMut(&mut [u8]) -> Result<usize, String> + Send + 'static,
    ) -> Reader {
        let (tx, rx): (SyncSender<Vec<u8>>, _) = sync_channel(CHANNEL_DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let error = Arc::new(std::sync::Mutex::new(None));
        let dropped = Arc::new(AtomicU64::new(0));
        let backpressure = fifo.is_some();
        let thread = {
            let (stop, error, dropped) = (stop.clone(), error.clone(), dropped.clone());
            std::thread::Builder::new()
                .name("p2ner-vlc-input".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 65_536];
                    while !stop.load(Ordering::Relaxed) {
                        match read(&mut buf) {
                            Ok(0) => {}
                            Ok(n) => {
                                let mut bytes = buf[..n].to_vec();
                                loop {
                                    match tx.try_send(bytes) {
                                        Ok(()) => break,
                                        // A pipe waits (VLC blocks on it: that
                                        // is its pacing); UDP would be dropped
                                        // by the kernel anyway.
                                        Err(TrySendError::Full(back)) if backpressure => {
                                            if stop.load(Ordering::Relaxed) {
                                                return;
                                            }
                                            std::thread::sleep(Duration::from_millis(5));
                                            bytes = back;
                                        }
                                        Err(TrySendError::Full(_)) => {
                                            dropped.fetch_add(1, Ordering::Relaxed);
                                            break;
                                        }
                                        Err(TrySendError::Disconnected(_)) => return,
                                    }
                                }
                            }
                            Err(e) => {
                                *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                                return;
                            }
                        }
                    }
                })
                .expect("spawn the vlc reader thread")
        };
        Reader {
            rx,
            stop,
            error,
            dropped,
            thread: Some(thread),
            fifo,
        }
    }

    fn failed(&self) -> Option<String> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            return Some(format!(
                "{dropped} reads dropped: the engine does not poll often enough"
            ));
        }
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(path) = &self.fifo {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: setsockopt on a valid socket with an int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("SO_RCVBUF: {}", std::io::Error::last_os_error());
    }
}
