//! A minimal, hand-written binding to libvlc 3.0, loaded at run time.
//!
//! Why by hand and why `dlopen`: the Rust libvlc crates are unmaintained or
//! target libvlc 4, and we need a dozen functions. Loading `libvlc.so.5` at
//! run time (instead of linking it) keeps `cargo build --workspace` working on
//! a machine without libvlc: the plugin still loads, describes itself, and
//! only `start` fails, with a message that says what to install.
//!
//! Everything libvlc hands back is wrapped in an owner that releases it on
//! drop. libvlc is thread-safe, so the owners are `Send`.

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

use p2ner_plugin_api::{tracing, PluginError};

/// `libvlc_instance_t`, `libvlc_media_t`, ... are opaque.
#[repr(C)]
pub struct Opaque {
    _private: [u8; 0],
}

/// `libvlc_media_stats_t` (libvlc 3.0).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MediaStats {
    /// `i_read_bytes`.
    pub read_bytes: c_int,
    /// `f_input_bitrate`.
    pub input_bitrate: f32,
    /// `i_demux_read_bytes`.
    pub demux_read_bytes: c_int,
    /// `f_demux_bitrate`.
    pub demux_bitrate: f32,
    /// `i_demux_corrupted`: damaged input, as the output's report counts it.
    pub demux_corrupted: c_int,
    /// `i_demux_discontinuity`.
    pub demux_discontinuity: c_int,
    /// `i_decoded_video`.
    pub decoded_video: c_int,
    /// `i_decoded_audio`.
    pub decoded_audio: c_int,
    /// `i_displayed_pictures`.
    pub displayed_pictures: c_int,
    /// `i_lost_pictures`.
    pub lost_pictures: c_int,
    /// `i_played_abuffers`.
    pub played_abuffers: c_int,
    /// `i_lost_abuffers`.
    pub lost_abuffers: c_int,
    /// `i_sent_packets`.
    pub sent_packets: c_int,
    /// `i_sent_bytes`.
    pub sent_bytes: c_int,
    /// `f_send_bitrate`.
    pub send_bitrate: f32,
}

/// `libvlc_state_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `libvlc_NothingSpecial`.
    NothingSpecial,
    /// `libvlc_Opening`.
    Opening,
    /// `libvlc_Buffering`.
    Buffering,
    /// `libvlc_Playing`.
    Playing,
    /// `libvlc_Paused`.
    Paused,
    /// `libvlc_Stopped`.
    Stopped,
    /// `libvlc_Ended`.
    Ended,
    /// `libvlc_Error`.
    Error,
}

impl State {
    fn from_raw(raw: c_int) -> State {
        match raw {
            1 => State::Opening,
            2 => State::Buffering,
            3 => State::Playing,
            4 => State::Paused,
            5 => State::Stopped,
            6 => State::Ended,
            7 => State::Error,
            _ => State::NothingSpecial,
        }
    }
}

/// `libvlc_media_open_cb`.
pub type OpenCb = unsafe extern "C" fn(*mut c_void, *mut *mut c_void, *mut u64) -> c_int;
/// `libvlc_media_read_cb`.
pub type ReadCb = unsafe extern "C" fn(*mut c_void, *mut u8, usize) -> isize;
/// `libvlc_media_seek_cb`.
pub type SeekCb = unsafe extern "C" fn(*mut c_void, u64) -> c_int;
/// `libvlc_media_close_cb`.
pub type CloseCb = unsafe extern "C" fn(*mut c_void);
/// `libvlc_video_lock_cb`.
pub type LockCb = unsafe extern "C" fn(*mut c_void, *mut *mut c_void) -> *mut c_void;
/// `libvlc_video_unlock_cb`.
pub type UnlockCb = unsafe extern "C" fn(*mut c_void, *mut c_void, *const *mut c_void);
/// `libvlc_video_display_cb`.
pub type DisplayCb = unsafe extern "C" fn(*mut c_void, *mut c_void);
/// `libvlc_video_format_cb`.
pub type FormatCb = unsafe extern "C" fn(
    *mut *mut c_void,
    *mut c_char,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
) -> c_uint;
/// `libvlc_video_cleanup_cb`.
pub type CleanupCb = unsafe extern "C" fn(*mut c_void);
/// The last argument is a `va_list`; on the 64-bit targets we support it is
/// passed as a pointer, which is what `vsnprintf` takes.
type LogCb = unsafe extern "C" fn(*mut c_void, c_int, *const Opaque, *const c_char, *mut c_void);

/// The libvlc functions we use.
struct Api {
    new: unsafe extern "C" fn(c_int, *const *const c_char) -> *mut Opaque,
    release: unsafe extern "C" fn(*mut Opaque),
    errmsg: unsafe extern "C" fn() -> *const c_char,
    get_version: unsafe extern "C" fn() -> *const c_char,
    log_set: unsafe extern "C" fn(*mut Opaque, LogCb, *mut c_void),
    log_unset: unsafe extern "C" fn(*mut Opaque),
    log_get_context:
        unsafe extern "C" fn(*const Opaque, *mut *const c_char, *mut *const c_char, *mut c_uint),
    media_new_location: unsafe extern "C" fn(*mut Opaque, *const c_char) -> *mut Opaque,
    media_new_path: unsafe extern "C" fn(*mut Opaque, *const c_char) -> *mut Opaque,
    media_new_callbacks: unsafe extern "C" fn(
        *mut Opaque,
        Option<OpenCb>,
        Option<ReadCb>,
        Option<SeekCb>,
        Option<CloseCb>,
        *mut c_void,
    ) -> *mut Opaque,
    media_add_option: unsafe extern "C" fn(*mut Opaque, *const c_char),
    media_release: unsafe extern "C" fn(*mut Opaque),
    media_get_stats: unsafe extern "C" fn(*mut Opaque, *mut MediaStats) -> c_int,
    player_new_from_media: unsafe extern "C" fn(*mut Opaque) -> *mut Opaque,
    player_release: unsafe extern "C" fn(*mut Opaque),
    player_play: unsafe extern "C" fn(*mut Opaque) -> c_int,
    player_stop: unsafe extern "C" fn(*mut Opaque),
    player_get_state: unsafe extern "C" fn(*mut Opaque) -> c_int,
    video_set_callbacks: unsafe extern "C" fn(
        *mut Opaque,
        Option<LockCb>,
        Option<UnlockCb>,
        Option<DisplayCb>,
        *mut c_void,
    ),
    video_set_format_callbacks:
        unsafe extern "C" fn(*mut Opaque, Option<FormatCb>, Option<CleanupCb>),
}

extern "C" {
    fn vsnprintf(buf: *mut c_char, size: usize, fmt: *const c_char, args: *mut c_void) -> c_int;
}

const LIBRARY_NAMES: [&str; 2] = ["libvlc.so.5", "libvlc.so"];

fn api() -> Result<&'static Api, PluginError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|e| PluginError::new(e.clone()))
}

fn load() -> Result<Api, String> {
    let mut tried = Vec::new();
    let handle = LIBRARY_NAMES.iter().find_map(|name| {
        let cname = CString::new(*name).expect("no NUL");
        // SAFETY: dlopen with a valid C string; the handle is never closed,
        // so symbols looked up from it stay valid for the process.
        let handle = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local C string or null.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown error".to_owned()
            } else {
                unsafe { CStr::from_ptr(why) }
                    .to_string_lossy()
                    .into_owned()
            };
            tried.push(format!("{name}: {why}"));
            None
        } else {
            Some(handle)
        }
    });
    let Some(handle) = handle else {
        return Err(format!(
            "libvlc 3 is not installed (install libvlc5 and vlc-plugin-base): {}",
            tried.join("; ")
        ));
    };
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the field's type is the libvlc 3.0 prototype of that
            // name, as declared in <vlc/*.h>.
            unsafe { symbol(handle, $name)? }
        };
    }
    let api = Api {
        new: sym!("libvlc_new"),
        release: sym!("libvlc_release"),
        errmsg: sym!("libvlc_errmsg"),
        get_version: sym!("libvlc_get_version"),
        log_set: sym!("libvlc_log_set"),
        log_unset: sym!("libvlc_log_unset"),
        log_get_context: sym!("libvlc_log_get_context"),
        media_new_location: sym!("libvlc_media_new_location"),
        media_new_path: sym!("libvlc_media_new_path"),
        media_new_callbacks: sym!("libvlc_media_new_callbacks"),
        media_add_option: sym!("libvlc_media_add_option"),
        media_release: sym!("libvlc_media_release"),
        media_get_stats: sym!("libvlc_media_get_stats"),
        player_new_from_media: sym!("libvlc_media_player_new_from_media"),
        player_release: sym!("libvlc_media_player_release"),
        player_play: sym!("libvlc_media_player_play"),
        player_stop: sym!("libvlc_media_player_stop"),
        player_get_state: sym!("libvlc_media_player_get_state"),
        video_set_callbacks: sym!("libvlc_video_set_callbacks"),
        video_set_format_callbacks: sym!("libvlc_video_set_format_callbacks"),
    };
    // SAFETY: returns a static C string.
    let version = unsafe { CStr::from_ptr((api.get_version)()) }.to_string_lossy();
    if !version.starts_with("3.") {
        return Err(format!(
            "libvlc {version} found, but this plugin is written for libvlc 3.x"
        ));
    }
    tracing::debug!(%version, "libvlc loaded");
    Ok(api)
}

/// Looks a function up in the library.
///
/// # Safety
/// `F` must be the function pointer type of the symbol's C prototype.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &str) -> Result<F, String> {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    let cname = CString::new(name).expect("no NUL");
    // SAFETY: a valid handle that is never closed, so the symbol stays valid.
    let ptr = unsafe { libc::dlsym(handle, cname.as_ptr()) };
    if ptr.is_null() {
        return Err(format!(
            "libvlc has no {name} (libvlc 3.0 or newer is required)"
        ));
    }
    // SAFETY: per the contract above; sizes checked.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
}

/// Whether libvlc can be loaded here (for tests and diagnostics).
pub fn available() -> Result<(), PluginError> {
    api().map(|_| ())
}

fn errmsg(api: &Api) -> String {
    // SAFETY: libvlc_errmsg returns a thread-local string or null.
    let msg = unsafe { (api.errmsg)() };
    if msg.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

fn cstring(text: &str) -> Result<CString, PluginError> {
    CString::new(text).map_err(|_| PluginError::new(format!("'{text}' contains a NUL byte")))
}

/// What VLC said at error level, kept so that a failure can say why.
#[derive(Default)]
pub struct Log {
    errors: Mutex<VecDeque<String>>,
    counted: Mutex<u64>,
}

const KEPT_ERRORS: usize = 8;

impl Log {
    /// The last error messages, oldest first, joined for a report.
    pub fn errors(&self) -> String {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.iter().cloned().collect::<Vec<_>>().join("; ")
    }

    /// How many error-level messages VLC logged.
    pub fn error_count(&self) -> u64 {
        *self.counted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

unsafe extern "C" fn log_cb(
    data: *mut c_void,
    level: c_int,
    ctx: *const Opaque,
    fmt: *const c_char,
    args: *mut c_void,
) {
    if data.is_null() || fmt.is_null() {
        return;
    }
    // SAFETY: `data` is the `Log` the instance holds an `Arc` of until after
    // `libvlc_log_unset` returned.
    let log = unsafe { &*(data as *const Log) };
    let mut buf = [0 as c_char; 1024];
    // SAFETY: a bounded format of VLC's own format string and arguments.
    unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), fmt, args) };
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let mut module: *const c_char = std::ptr::null();
    if let Ok(api) = api() {
        let (mut file, mut line) = (std::ptr::null(), 0);
        // SAFETY: ctx is valid for the duration of the callback.
        unsafe { (api.log_get_context)(ctx, &mut module, &mut file, &mut line) };
    }
    let module = if module.is_null() {
        "vlc".into()
    } else {
        unsafe { CStr::from_ptr(module) }.to_string_lossy()
    };
    match level {
        4 => {
            tracing::debug!(target: "p2ner_codec_vlc::libvlc", "{module} error: {text}");
            *log.counted.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            let mut errors = log.errors.lock().unwrap_or_else(|e| e.into_inner());
            if errors.len() == KEPT_ERRORS {
                errors.pop_front();
            }
            errors.push_back(format!("{module}: {text}"));
        }
        3 => tracing::debug!(target: "p2ner_codec_vlc::libvlc", "{module} warning: {text}"),
        _ => tracing::trace!(target: "p2ner_codec_vlc::libvlc", "{module}: {text}"),
    }
}

/// A libvlc instance with its log captured.
pub struct Instance {
    api: &'static Api,
    raw: *mut Opaque,
    log: Arc<Log>,
}

// SAFETY: libvlc instances may be used from any thread.
unsafe impl Send for Instance {}

impl Instance {
    /// A new instance with these command-line options. The user's VLC
    /// configuration is ignored, so a vlcrc cannot change what p2ner does.
    pub fn new(options: &[&str]) -> Result<Instance, PluginError> {
        let api = api()?;
        let mut args = vec!["--ignore-config", "--no-xlib", "--no-video-title-show"];
        args.extend_from_slice(options);
        let owned = args
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<Vec<_>, _>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: argv of valid C strings that outlive the call.
        let raw = unsafe { (api.new)(ptrs.len() as c_int, ptrs.as_ptr()) };
        if raw.is_null() {
            return Err(PluginError::new(format!(
                "libvlc failed to initialise {}",
                errmsg(api)
            )));
        }
        let log = Arc::new(Log::default());
        // The log callback needs 64-bit va_list-as-pointer passing.
        if cfg!(all(
            target_pointer_width = "64",
            any(target_arch = "x86_64", target_arch = "aarch64")
        )) {
            // SAFETY: the Log outlives the registration (unset in Drop).
            unsafe { (api.log_set)(raw, log_cb, Arc::as_ptr(&log) as *mut c_void) };
        }
        Ok(Instance { api, raw, log })
    }

    /// What libvlc logged, for error messages that say why.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// A media from an MRL (`file:///..`, `udp://@..`, `imem://`).
    pub fn media_location(&self, mrl: &str) -> Result<Media, PluginError> {
        let c = cstring(mrl)?;
        // SAFETY: valid instance and string.
        let raw = unsafe { (self.api.media_new_location)(self.raw, c.as_ptr()) };
        self.media(raw, mrl)
    }

    /// A media from a local path.
    pub fn media_path(&self, path: &str) -> Result<Media, PluginError> {
        let c = cstring(path)?;
        // SAFETY: valid instance and string.
        let raw = unsafe { (self.api.media_new_path)(self.raw, c.as_ptr()) };
        self.media(raw, path)
    }

    /// A media whose bytes come from `read` (no seeking).
    ///
    /// # Safety
    /// `opaque` must stay valid until the media and every player made from
    /// it are released.
    pub unsafe fn media_callbacks(
        &self,
        open: OpenCb,
        read: ReadCb,
        seek: Option<SeekCb>,
        close: CloseCb,
        opaque: *mut c_void,
    ) -> Result<Media, PluginError> {
        // SAFETY: per the contract above.
        let raw = unsafe {
            (self.api.media_new_callbacks)(
                self.raw,
                Some(open),
                Some(read),
                seek,
                Some(close),
                opaque,
            )
        };
        self.media(raw, "callbacks")
    }

    fn media(&self, raw: *mut Opaque, what: &str) -> Result<Media, PluginError> {
        if raw.is_null() {
            return Err(PluginError::new(format!(
                "libvlc cannot make a media of {what}: {}",
                errmsg(self.api)
            )));
        }
        Ok(Media { api: self.api, raw })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: valid instance; unset waits for running log callbacks.
        unsafe {
            (self.api.log_unset)(self.raw);
            (self.api.release)(self.raw);
        }
    }
}

/// A `libvlc_media_t`, released on drop.
pub struct Media {
    api: &'static Api,
    raw: *mut Opaque,
}

// SAFETY: libvlc media may be used from any thread.
unsafe impl Send for Media {}

impl Media {
    /// Adds a `:option=value` (trusted, so `:sout` and `:imem-*` work).
    pub fn option(&self, option: &str) -> Result<(), PluginError> {
        let c = cstring(option)?;
        // SAFETY: valid media and string; libvlc copies it.
        unsafe { (self.api.media_add_option)(self.raw, c.as_ptr()) };
        Ok(())
    }

    /// libvlc's counters for this media, once it plays.
    pub fn stats(&self) -> Option<MediaStats> {
        let mut stats = MediaStats::default();
        // SAFETY: valid media; stats is a libvlc_media_stats_t.
        let ok = unsafe { (self.api.media_get_stats)(self.raw, &mut stats) };
        (ok != 0).then_some(stats)
    }

    /// A player for this media.
    pub fn player(&self) -> Result<Player, PluginError> {
        // SAFETY: valid media; the player holds its own reference.
        let raw = unsafe { (self.api.player_new_from_media)(self.raw) };
        if raw.is_null() {
            return Err(PluginError::new(format!(
                "libvlc cannot make a media player: {}",
                errmsg(self.api)
            )));
        }
        Ok(Player { api: self.api, raw })
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { (self.api.media_release)(self.raw) };
    }
}

/// A `libvlc_media_player_t`, stopped and released on drop.
pub struct Player {
    api: &'static Api,
    raw: *mut Opaque,
}

// SAFETY: libvlc media players may be used from any thread.
unsafe impl Send for Player {}

impl Player {
    /// Starts playing (asynchronously: see `state`).
    pub fn play(&self) -> Result<(), PluginError> {
        // SAFETY: valid player.
        if unsafe { (self.api.player_play)(self.raw) } != 0 {
            return Err(PluginError::new(format!(
                "libvlc cannot start playing: {}",
                errmsg(self.api)
            )));
        }
        Ok(())
    }

    /// Where the player is.
    pub fn state(&self) -> State {
        // SAFETY: valid player.
        State::from_raw(unsafe { (self.api.player_get_state)(self.raw) })
    }

    /// Sends decoded pictures to these callbacks instead of a window.
    ///
    /// # Safety
    /// `opaque` must stay valid until the player is released, and the
    /// callbacks must follow libvlc's contract for them.
    pub unsafe fn video_callbacks(
        &self,
        format: FormatCb,
        lock: LockCb,
        display: DisplayCb,
        opaque: *mut c_void,
    ) {
        // SAFETY: per the contract above; set before playing.
        unsafe {
            (self.api.video_set_callbacks)(self.raw, Some(lock), None, Some(display), opaque);
            (self.api.video_set_format_callbacks)(self.raw, Some(format), None);
        }
    }

    /// Stops and waits for VLC's threads (outputs flushed, files closed).
    pub fn stop(&self) {
        // SAFETY: valid player.
        unsafe { (self.api.player_stop)(self.raw) };
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        // SAFETY: we own the player; release stops it first.
        unsafe {
            (self.api.player_stop)(self.raw);
            (self.api.player_release)(self.raw);
        }
    }
}
