//! Output `vlc`: play, write or decode the stream's MPEG-TS with libvlc.
//!
//! The received chunks go into a bounded in-process queue that VLC reads
//! through `libvlc_media_new_callbacks` (its read callback waits for data),
//! so nothing touches the disk or the network on the way to VLC:
//!
//! - `screen`: VLC's default video and audio outputs;
//! - `decode`: decoded and discarded: pictures go to a memory callback that
//!   counts them (VLC 3's own "decoded video" statistic counts each picture
//!   twice), audio to VLC's dummy output; VLC's statistics give the pictures
//!   it dropped as late;
//! - `file:PATH`: remuxed by VLC's `std` stream output into an MPEG-TS file
//!   that standard tools open.
//!
//! After a gap the output skips to the next keyframe chunk, so VLC is not
//! fed pictures whose references are missing, and never waits for the
//! missing chunk: the queue simply goes on with what comes next.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::source::Sink;
use p2ner_plugin_api::tracing;

use crate::vlc::{Instance, Media, Player, State};

/// Queued bytes beyond this are dropped (and the output resynchronises at
/// the next keyframe) rather than letting memory grow without bound when
/// VLC falls behind.
const MAX_QUEUED: usize = 32 << 20;
/// `finish` waits for VLC to drain this long after its last progress.
const STALL: Duration = Duration::from_secs(10);
const FINISH_MAX: Duration = Duration::from_secs(120);

/// The `vlc` output: chunks are fed to libvlc through its read callback (see the module docs for the sinks).
pub struct VlcOutput {
    sink: Sink,
    running: Option<Running>,
    /// Skipping until a keyframe chunk: at the start and after a gap.
    waiting: bool,
    report: OutputReport,
    skipped: u64,
    overflowed: u64,
}

/// Field order is drop order: VLC stops before the feed it reads goes.
struct Running {
    player: Player,
    media: Media,
    instance: Instance,
    feed: Arc<Feed>,
    pictures: Arc<Pictures>,
}

/// Where `decode` sends decoded pictures: one reused I420 buffer, a count.
#[derive(Default)]
struct Pictures {
    shown: AtomicU64,
    buf: Mutex<(Vec<u8>, [usize; 3])>,
}

/// libvlc's format callback: asks for I420 at the decoded size.
unsafe extern "C" fn pictures_format(
    opaque: *mut *mut c_void,
    chroma: *mut std::ffi::c_char,
    width: *mut u32,
    height: *mut u32,
    pitches: *mut u32,
    lines: *mut u32,
) -> u32 {
    // SAFETY: libvlc passes the pointers of its contract: `*opaque` is the
    // Pictures given to `video_callbacks`, the arrays have 3+ entries.
    unsafe {
        let pictures = &*(*opaque as *const Pictures);
        std::ptr::copy_nonoverlapping(b"I420".as_ptr() as *const std::ffi::c_char, chroma, 4);
        let w = (*width as usize).max(2);
        let h = (*height as usize).max(2);
        let (p0, l0) = ((w + 31) & !31, (h + 15) & !15);
        let (p1, l1) = (p0 / 2, l0 / 2);
        let sizes = [p0 * l0, p1 * l1, p1 * l1];
        let mut buf = pictures.buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.0 = vec![0; sizes.iter().sum::<usize>() + 64];
        buf.1 = [0, sizes[0], sizes[0] + sizes[1]];
        *pitches = p0 as u32;
        *pitches.add(1) = p1 as u32;
        *pitches.add(2) = p1 as u32;
        *lines = l0 as u32;
        *lines.add(1) = l1 as u32;
        *lines.add(2) = l1 as u32;
    }
    1
}

/// libvlc's lock callback: where to copy the next picture.
unsafe extern "C" fn pictures_lock(opaque: *mut c_void, planes: *mut *mut c_void) -> *mut c_void {
    // SAFETY: `opaque` is the Pictures; `planes` has 3+ entries. The buffer
    // is only replaced by the format callback, never while a picture is out.
    unsafe {
        let pictures = &*(opaque as *const Pictures);
        let mut buf = pictures.buf.lock().unwrap_or_else(|e| e.into_inner());
        let (data, offsets) = &mut *buf;
        let base = data.as_mut_ptr();
        for (i, offset) in offsets.iter().enumerate() {
            *planes.add(i) = base.add(*offset) as *mut c_void;
        }
    }
    std::ptr::null_mut()
}

/// libvlc's display callback: one more picture decoded and due.
unsafe extern "C" fn pictures_display(opaque: *mut c_void, _picture: *mut c_void) {
    // SAFETY: `opaque` is the Pictures.
    let pictures = unsafe { &*(opaque as *const Pictures) };
    pictures.shown.fetch_add(1, Ordering::Relaxed);
}

/// The queue between `push` and VLC's read callback.
#[derive(Default)]
struct Feed {
    state: Mutex<FeedState>,
    changed: Condvar,
}

#[derive(Default)]
struct FeedState {
    chunks: VecDeque<Vec<u8>>,
    /// Read position in the front chunk.
    offset: usize,
    queued: usize,
    consumed: u64,
    /// No more data: VLC reads to the end, then gets end of stream.
    closed: bool,
    /// Stop now: VLC's next read fails.
    aborted: bool,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues bytes; false when the queue is full.
    fn push(&self, data: &[u8]) -> bool {
        let mut state = self.lock();
        if state.queued + data.len() > MAX_QUEUED {
            return false;
        }
        state.queued += data.len();
        state.chunks.push_back(data.to_vec());
        self.changed.notify_all();
        true
    }

    fn close(&self, abort: bool) {
        let mut state = self.lock();
        state.closed = true;
        state.aborted |= abort;
        self.changed.notify_all();
    }

    /// VLC's read: waits (in slices, so an abort is seen) for data.
    fn read(&self, buf: &mut [u8]) -> isize {
        let mut state = self.lock();
        loop {
            if state.aborted {
                return -1;
            }
            if let Some(front) = state.chunks.front() {
                let available = &front[state.offset..];
                let n = available.len().min(buf.len());
                buf[..n].copy_from_slice(&available[..n]);
                let front_len = front.len();
                state.offset += n;
                if state.offset == front_len {
                    state.chunks.pop_front();
                    state.offset = 0;
                }
                state.queued -= n;
                state.consumed += n as u64;
                return n as isize;
            }
            if state.closed {
                return 0;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

unsafe extern "C" fn feed_open(
    opaque: *mut c_void,
    datap: *mut *mut c_void,
    sizep: *mut u64,
) -> i32 {
    // SAFETY: out-pointers from libvlc, valid for the call.
    unsafe {
        *datap = opaque;
        *sizep = u64::MAX;
    }
    0
}

unsafe extern "C" fn feed_read(opaque: *mut c_void, buf: *mut u8, len: usize) -> isize {
    if opaque.is_null() || buf.is_null() {
        return -1;
    }
    // SAFETY: `opaque` is the Feed the output keeps alive until the player
    // is released; `buf` has `len` writable bytes.
    let feed = unsafe { &*(opaque as *const Feed) };
    let buf = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    feed.read(buf)
}

/// A seek callback that only "seeks" to where the stream already is.
///
/// Its presence tells VLC that it controls the pace of this stream. For the
/// file sink that is what we want: VLC then keeps the stream's own
/// timestamps. Without it VLC treats the stream as live and re-times every
/// frame by its arrival, which puts arrival jitter (and bursts) into the
/// remuxed file's timestamps. Screen and decode are live and go without.
unsafe extern "C" fn feed_seek(opaque: *mut c_void, offset: u64) -> i32 {
    if opaque.is_null() {
        return -1;
    }
    // SAFETY: as for `feed_read`.
    let feed = unsafe { &*(opaque as *const Feed) };
    let consumed = feed.lock().consumed;
    if offset == consumed {
        0
    } else {
        tracing::debug!(offset, consumed, "vlc output: VLC tried to seek");
        -1
    }
}

unsafe extern "C" fn feed_close(_opaque: *mut c_void) {}

impl VlcOutput {
    /// An output from its parameters; libvlc starts when the stream's format is known.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let sink = Sink::from_params(params)?;
        Ok(VlcOutput {
            sink,
            running: None,
            waiting: true,
            report: OutputReport::default(),
            skipped: 0,
            overflowed: 0,
        })
    }

    fn fail(&self, what: impl std::fmt::Display) -> PluginError {
        PluginError::new(format!("vlc output ({:?}): {what}", self.sink))
    }

    /// An error VLC reported (a file it cannot write, a broken output).
    fn check(&self) -> Result<(), PluginError> {
        let Some(running) = &self.running else {
            return Err(self.fail("used before start"));
        };
        if running.player.state() == State::Error {
            return Err(self.fail(format!("VLC failed: {}", running.instance.log().errors())));
        }
        Ok(())
    }
}

/// Quotes a value inside a VLC option chain (`dst="..."`).
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Output for VlcOutput {
    fn start(&mut self, _format: &StreamFormat) -> Result<(), PluginError> {
        let options: &[&str] = match self.sink {
            Sink::Decode => &["--aout=dummy", "--avcodec-hw=none"],
            Sink::File(_) => &["--vout=dummy", "--aout=dummy"],
            Sink::Screen => &[],
        };
        let instance = Instance::new(options).map_err(|e| self.fail(e.message))?;
        let feed = Arc::new(Feed::default());
        // SAFETY: the Feed lives in `Running`, which drops the player and the
        // media (stopping VLC's reads) before it.
        let media = unsafe {
            instance.media_callbacks(
                feed_open,
                feed_read,
                matches!(self.sink, Sink::File(_)).then_some(feed_seek as crate::vlc::SeekCb),
                feed_close,
                Arc::as_ptr(&feed) as *mut c_void,
            )
        }
        .map_err(|e| self.fail(e.message))?;
        media.option(":demux=ts")?;
        if let Sink::File(path) = &self.sink {
            media.option(&format!(
                ":sout=#std{{access=file,mux=ts,dst={}}}",
                quote(path)
            ))?;
            media.option(":sout-all")?;
        }
        let player = media.player().map_err(|e| self.fail(e.message))?;
        let pictures = Arc::new(Pictures::default());
        if self.sink == Sink::Decode {
            // SAFETY: `pictures` lives in `Running`, after the player.
            unsafe {
                player.video_callbacks(
                    pictures_format,
                    pictures_lock,
                    pictures_display,
                    Arc::as_ptr(&pictures) as *mut c_void,
                )
            };
        }
        player.play().map_err(|e| self.fail(e.message))?;
        tracing::debug!(sink = ?self.sink, "vlc output started");
        self.running = Some(Running {
            player,
            media,
            instance,
            feed,
            pictures,
        });
        Ok(())
    }

    fn push(&mut self, chunk: ChunkRef<'_>) -> Result<(), PluginError> {
        self.check()?;
        if self.waiting && !chunk.keyframe {
            self.skipped += 1;
            return Ok(());
        }
        self.waiting = false;
        let running = self.running.as_ref().expect("checked");
        if !running.feed.push(chunk.data.as_slice()) {
            // VLC is far behind: drop, and start again at a keyframe.
            self.overflowed += 1;
            self.report.errors += 1;
            self.waiting = true;
            return Ok(());
        }
        self.report.chunks += 1;
        self.report.bytes += chunk.data.len() as u64;
        Ok(())
    }

    fn gap(&mut self, _seq: u64) -> Result<(), PluginError> {
        self.report.gaps += 1;
        self.waiting = true;
        Ok(())
    }

    fn finish(&mut self) -> Result<OutputReport, PluginError> {
        let Some(running) = self.running.take() else {
            return Ok(self.report.clone());
        };
        // End of stream after what is queued, then wait for VLC to play or
        // write it all (it reports Ended once its decoders are empty).
        running.feed.close(false);
        let start = Instant::now();
        let mut progress = (Instant::now(), 0u64);
        let mut finished = false;
        while start.elapsed() < FINISH_MAX {
            match running.player.state() {
                State::Ended | State::Stopped | State::Error => {
                    finished = true;
                    break;
                }
                _ => {}
            }
            let consumed = running.feed.lock().consumed;
            if consumed != progress.1 {
                progress = (Instant::now(), consumed);
            } else if progress.0.elapsed() > STALL {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = running.player.state();
        let stats = running.media.stats().unwrap_or_default();
        running.feed.close(true);
        // Stopping closes VLC's stream output: the file is complete after it.
        running.player.stop();
        let errors = running.instance.log().errors();
        tracing::debug!(?state, ?stats, "vlc output finished");
        self.report.errors += stats.demux_corrupted.max(0) as u64;
        let skipped = format!(
            "{} chunks skipped before a keyframe, {} dropped on overflow",
            self.skipped, self.overflowed
        );
        self.report.detail = match &self.sink {
            Sink::Decode => format!(
                "{} frames decoded, {} pictures lost, {skipped}",
                running.pictures.shown.load(Ordering::Relaxed),
                stats.lost_pictures
            ),
            Sink::File(path) => {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                format!(
                    "remuxed {} bytes of MPEG-TS into {path} ({size} bytes), {skipped}",
                    self.report.bytes
                )
            }
            Sink::Screen => format!(
                "{} frames shown, {} pictures lost, {skipped}",
                stats.displayed_pictures, stats.lost_pictures
            ),
        }
        .into();
        drop(running);
        if state == State::Error {
            self.report.errors += 1;
            return Err(self.fail(format!("VLC failed: {errors}")));
        }
        if !finished {
            return Err(self.fail(format!(
                "VLC did not finish within {} s of its last progress (state {state:?})",
                STALL.as_secs()
            )));
        }
        Ok(self.report.clone())
    }
}

impl Drop for VlcOutput {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.feed.close(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_reads_across_chunks_then_ends_or_aborts() {
        let feed = Feed::default();
        assert!(feed.push(b"abc"));
        assert!(feed.push(b"defg"));
        let mut buf = [0u8; 5];
        assert_eq!(feed.read(&mut buf), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(feed.read(&mut buf[..2]), 2);
        assert_eq!(&buf[..2], b"de");
        feed.close(false);
        assert_eq!(feed.read(&mut buf), 2);
        assert_eq!(feed.read(&mut buf), 0);
        feed.close(true);
        assert_eq!(feed.read(&mut buf), -1);
        assert!(!feed.push(&vec![0; MAX_QUEUED + 1]));
    }
}
