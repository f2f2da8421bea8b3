//! The `test` source: a moving pattern fed to VLC through `imem`.
//!
//! VLC 3 has no test-pattern input (GStreamer has videotestsrc; VLC's old
//! `fake://` is gone). Its `imem` module, though, reads raw frames from two
//! callbacks whose addresses are given as media options, so the plugin draws
//! I420 frames itself (a ball bouncing over a grey ramp, moving bars) and VLC
//! transcodes them like any other source. Frames carry timestamps at the
//! requested frame rate and VLC paces them on its clock, so the stream is
//! live. Video only: imem gives one elementary stream per media.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;

pub struct TestPattern {
    state: Mutex<Pattern>,
}

struct Pattern {
    width: usize,
    height: usize,
    frame_us: u64,
    frame: u64,
    buf: Vec<u8>,
}

impl TestPattern {
    /// A pattern of `width` x `height` (rounded up to even) at `fps`.
    pub fn new(width: u32, height: u32, fps: u32) -> Box<TestPattern> {
        let width = (width as usize + 1) & !1;
        let height = (height as usize + 1) & !1;
        Box::new(TestPattern {
            state: Mutex::new(Pattern {
                width,
                height,
                frame_us: 1_000_000 / u64::from(fps.max(1)),
                frame: 0,
                buf: vec![0; width * height * 3 / 2],
            }),
        })
    }

    /// The media options that make `imem://` read from this pattern.
    ///
    /// The pattern must outlive the media player that uses the options.
    pub fn options(&self, fps: u32) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let get_fn: GetFn = imem_get;
        let release_fn: ReleaseFn = imem_release;
        vec![
            format!(":imem-get={}", get_fn as usize),
            format!(":imem-release={}", release_fn as usize),
            format!(":imem-data={}", self as *const TestPattern as usize),
            ":imem-cookie=p2ner-test".to_owned(),
            ":imem-cat=2".to_owned(),
            ":imem-codec=I420".to_owned(),
            format!(":imem-width={}", state.width),
            format!(":imem-height={}", state.height),
            format!(":imem-dar={}:{}", state.width, state.height),
            format!(":imem-fps={fps}/1"),
            ":imem-id=0".to_owned(),
        ]
    }
}

impl Pattern {
    fn draw(&mut self) {
        let (w, h) = (self.width, self.height);
        let t = self.frame as usize;
        let (luma, chroma) = self.buf.split_at_mut(w * h);
        // A horizontal grey ramp that scrolls, so the picture is never
        // static; stripes of 8 lines alternate between two brightnesses, so
        // only two rows are computed and the rest copied.
        let ramp: Vec<u8> = (0..w)
            .map(|x| (32 + ((x + 2 * t) * 160 / w.max(1)) % 160) as u8)
            .collect();
        let bright: Vec<u8> = ramp.iter().map(|v| v + 8).collect();
        for (y, row) in luma.chunks_exact_mut(w).enumerate() {
            row.copy_from_slice(if y & 8 == 0 { &ramp } else { &bright });
        }
        // A ball bouncing between the walls.
        let r = (h.min(w) / 8).max(2);
        let span_x = w.saturating_sub(2 * r).max(1);
        let span_y = h.saturating_sub(2 * r).max(1);
        let bounce = |pos: usize, span: usize| {
            let p = pos % (2 * span);
            if p < span {
                p
            } else {
                2 * span - p
            }
        };
        let cx = r + bounce(t * 7, span_x);
        let cy = r + bounce(t * 5, span_y);
        for y in cy.saturating_sub(r)..(cy + r).min(h) {
            for x in cx.saturating_sub(r)..(cx + r).min(w) {
                let (dx, dy) = (x as isize - cx as isize, y as isize - cy as isize);
                if dx * dx + dy * dy <= (r * r) as isize {
                    luma[y * w + x] = 235;
                }
            }
        }
        // Colour: neutral, with a band whose hue cycles.
        let (u, v) = chroma.split_at_mut(w * h / 4);
        u.fill(128);
        v.fill(128);
        let band = (t * 2) % (h / 2).max(1);
        let hue = (t * 3 % 200) as u8;
        for y in band..(band + 8).min(h / 2) {
            for x in 0..w / 2 {
                u[y * (w / 2) + x] = 28 + hue / 2;
                v[y * (w / 2) + x] = 228 - hue / 2;
            }
        }
    }
}

type GetFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *mut i64,
    *mut i64,
    *mut u32,
    *mut usize,
    *mut *mut c_void,
) -> c_int;
type ReleaseFn = unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut c_void);

/// imem's `get`: the next frame, with its timestamps. Called on VLC's input
/// thread, one frame at a time (each followed by `release`).
unsafe extern "C" fn imem_get(
    data: *mut c_void,
    _cookie: *const c_char,
    dts: *mut i64,
    pts: *mut i64,
    flags: *mut u32,
    size: *mut usize,
    buffer: *mut *mut c_void,
) -> c_int {
    if data.is_null() {
        return 1;
    }
    // SAFETY: `data` is the TestPattern the input keeps alive until its
    // player is released.
    let pattern = unsafe { &*(data as *const TestPattern) };
    let Ok(mut state) = pattern.state.lock() else {
        return 1;
    };
    state.draw();
    let time = (state.frame * state.frame_us) as i64;
    state.frame += 1;
    // SAFETY: out-pointers from imem, valid for the call. The buffer stays
    // untouched until the next `get`, which comes after `release`.
    unsafe {
        if !dts.is_null() {
            *dts = time;
        }
        if !pts.is_null() {
            *pts = time;
        }
        if !flags.is_null() {
            *flags = 0;
        }
        *size = state.buf.len();
        *buffer = state.buf.as_mut_ptr() as *mut c_void;
    }
    0
}

/// imem's `release`: nothing to free, the buffer is reused.
unsafe extern "C" fn imem_release(
    _data: *mut c_void,
    _cookie: *const c_char,
    _size: usize,
    _buffer: *mut c_void,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_move_and_are_timed() {
        let pattern = TestPattern::new(64, 48, 25);
        let mut frames = Vec::new();
        let mut times = Vec::new();
        for _ in 0..3 {
            let (mut dts, mut pts, mut flags, mut size) = (0i64, 0i64, 0u32, 0usize);
            let mut buf = std::ptr::null_mut();
            let data = &*pattern as *const TestPattern as *mut c_void;
            let rc = unsafe {
                imem_get(
                    data,
                    std::ptr::null(),
                    &mut dts,
                    &mut pts,
                    &mut flags,
                    &mut size,
                    &mut buf,
                )
            };
            assert_eq!(rc, 0);
            assert_eq!(size, 64 * 48 * 3 / 2);
            frames.push(unsafe { std::slice::from_raw_parts(buf as *const u8, size) }.to_vec());
            times.push(pts);
        }
        assert_eq!(times, vec![0, 40_000, 80_000]);
        assert_ne!(frames[0], frames[1]);
        assert!(pattern.options(25).iter().any(|o| o == ":imem-codec=I420"));
    }
}
