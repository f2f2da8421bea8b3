//! The VLC codec plugins, through their real cdylib and real libvlc: the test
//! pattern, files, a UDP source, both directions across backends (gst input
//! -> vlc output, vlc input -> gst output), and the failures a user meets.
//!
//! The tests take a lock so that only one runs VLC/x264 at a time: they are
//! paced in real time, and two encoders fighting over the CPU would make the
//! timing (and the CPU figure printed by the first one) meaningless.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2ner_engine::plugins::Registry;
use p2ner_plugin_api::abi_stable::std_types::RVec;
use p2ner_plugin_api::{ChunkRef, InputBox, InputState, MediaChunk, OutputBox, Params};
use p2ner_tests::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn registry() -> Registry {
    let registry = Registry::load_dirs(&[&profile_dir()]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    registry
}

/// False (with a message) only when libvlc itself is missing on this machine;
/// `./run setup` installs it, so in CI this is always true.
fn libvlc_available(registry: &Registry) -> bool {
    let mut probe = output(registry, "vlc", "decode");
    match probe.start(&Default::default()).into_result() {
        Ok(()) => true,
        Err(e) if e.message.contains("libvlc 3 is not installed") => {
            eprintln!("SKIPPED: {e}");
            false
        }
        Err(e) => panic!("{e}"),
    }
}

fn input(registry: &Registry, backend: &str, params: &[(&str, &str)]) -> InputBox {
    registry
        .new_input(backend, None, &params.iter().copied().collect())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn output(registry: &Registry, backend: &str, sink: &str) -> OutputBox {
    registry
        .new_output(backend, None, &Params::new().with("sink", sink))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn push(output: &mut OutputBox, seq: u64, chunk: &MediaChunk) {
    let chunk = ChunkRef {
        seq,
        pts_us: chunk.pts_us,
        duration_us: chunk.duration_us,
        keyframe: chunk.keyframe,
        data: chunk.data.as_slice().into(),
    };
    output.push(&chunk).unwrap_or_else(|e| panic!("{e}"));
}

/// Polls `input` on a real clock for at most `limit`, as the engine would;
/// returns every chunk and whether the input ended by itself.
fn capture(input: &mut InputBox, limit: Duration) -> (Vec<MediaChunk>, bool) {
    let start = Instant::now();
    input.start(0).unwrap_or_else(|e| panic!("{e}"));
    let mut chunks = RVec::new();
    while start.elapsed() < limit {
        let state = input
            .poll(start.elapsed().as_micros() as u64, &mut chunks)
            .unwrap_or_else(|e| panic!("{e}"));
        if state == InputState::Ended {
            return (chunks.into_vec(), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    input.stop().unwrap();
    (chunks.into_vec(), false)
}

/// Media time the chunks cover, in seconds.
fn span(chunks: &[MediaChunk]) -> f64 {
    let last = chunks.last().unwrap();
    (last.pts_us + last.duration_us as u64 - chunks[0].pts_us) as f64 / 1e6
}

/// CPU seconds this process (with VLC's threads) has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), in clock ticks (100 Hz).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The first number in a report's detail ("123 frames decoded, ...").
fn frames(detail: &str) -> u64 {
    detail
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in '{detail}'"))
}

#[test]
fn vlc_test_source_streams_h264_that_both_backends_write_including_a_late_joiner() {
    let _serial = serial();
    let registry = registry();
    if !libvlc_available(&registry) {
        return;
    }
    let mut input = input(
        &registry,
        "vlc",
        &[
            ("source", "test"),
            ("bitrate_kbps", "1000"),
            ("width", "640"),
            ("height", "360"),
            ("fps", "25"),
            ("chunk_ms", "200"),
        ],
    );
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let (chunks, ended) = capture(&mut input, Duration::from_secs(8));
    let cpu = (cpu_seconds() - cpu0) / wall0.elapsed().as_secs_f64() * 100.0;
    drop(input);
    assert!(!ended);
    assert!(chunks.len() >= 25, "only {} chunks in 8 s", chunks.len());
    assert!(chunks[0].keyframe, "the stream must start on a keyframe");
    let keyframes = chunks.iter().filter(|c| c.keyframe).count();
    assert!(
        keyframes >= 5,
        "a keyframe at least every second: {keyframes}"
    );
    assert!(chunks.windows(2).all(|w| w[0].pts_us < w[1].pts_us));
    let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
    let kbps = bytes as f64 * 8.0 / 1000.0 / span(&chunks);
    eprintln!(
        "vlc test source 640x360@25 1000 kbit/s: {kbps:.0} kbit/s measured, {} chunks ({keyframes} keyframes) over {:.1} s, publisher CPU {cpu:.0}% of one core",
        chunks.len(),
        span(&chunks)
    );
    assert!(
        (800.0..1200.0).contains(&kbps),
        "{kbps:.0} kbit/s for a 1000 kbit/s stream"
    );

    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.ts");
    let late = dir.path().join("late.ts");
    let by_gst = dir.path().join("gst.ts");
    let mut first = output(&registry, "vlc", &format!("file:{}", whole.display()));
    let mut joiner = output(&registry, "vlc", &format!("file:{}", late.display()));
    let mut gst = output(&registry, "gst", &format!("file:{}", by_gst.display()));
    for o in [&mut first, &mut joiner, &mut gst] {
        o.start(&Default::default()).unwrap();
    }
    let join_at = chunks.len() / 2 + 1;
    for (seq, chunk) in chunks.iter().enumerate() {
        push(&mut first, seq as u64, chunk);
        push(&mut gst, seq as u64, chunk);
        if seq >= join_at {
            push(&mut joiner, seq as u64, chunk);
        }
    }
    let report = first.finish().unwrap();
    eprintln!("vlc file output: {}", report.detail);
    joiner.finish().unwrap();
    gst.finish().unwrap();

    for (file, min_secs) in [
        (&whole, span(&chunks) - 1.0),
        (&by_gst, span(&chunks) - 1.0),
    ] {
        let (video, width, height, secs) = discover(file);
        assert!(video.contains("H.264"), "{}: {video}", file.display());
        assert_eq!((width, height), (640, 360), "{}", file.display());
        assert!(secs >= min_secs, "{}: duration {secs}", file.display());
    }
    let (video, width, _, secs) = discover(&late);
    assert!(video.contains("H.264") && width == 640, "{video}");
    assert!(secs >= 2.0, "late joiner's duration {secs}");
}

/// A short H.264 + AAC MP4 made by gst-launch, the kind of file a user
/// publishes.
fn make_clip(path: &Path, seconds: u32) {
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc"])
        .arg(format!("num-buffers={}", seconds * 25))
        .args([
            "!",
            "video/x-raw,width=320,height=240,framerate=25/1",
            "!",
            "x264enc",
            "!",
            "mux.",
            "audiotestsrc",
            "samplesperbuffer=1600",
        ])
        .arg(format!("num-buffers={}", seconds * 30))
        .args([
            "!",
            "audio/x-raw,rate=48000",
            "!",
            "audioconvert",
            "!",
            "avenc_aac",
            "!",
            "mux.",
            "mp4mux",
            "name=mux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0");
    assert!(status.success());
}

fn has_audio(path: &Path) -> bool {
    let out = Command::new("gst-discoverer-1.0")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("audio #")
}

#[test]
fn a_file_source_is_scaled_streamed_to_its_end_and_remuxed_or_looped() {
    let _serial = serial();
    let registry = registry();
    if !libvlc_available(&registry) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, 3);
    let params = |looping: &'static str| {
        vec![
            ("source", clip.to_str().unwrap().to_owned()),
            ("loop", looping.to_owned()),
            ("width", "352".to_owned()),
            ("height", "288".to_owned()),
            ("bitrate_kbps", "400".to_owned()),
            ("chunk_ms", "200".to_owned()),
        ]
    };
    let p = params("false");
    let mut once = input(
        &registry,
        "vlc",
        &p.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    );
    let (chunks, ended) = capture(&mut once, Duration::from_secs(20));
    assert!(ended, "a 3 s file without looping ends");
    assert!(chunks[0].keyframe);
    let captured = span(&chunks);
    assert!((2.5..3.5).contains(&captured), "captured {captured} s");

    let out = dir.path().join("out.ts");
    let mut writer = output(&registry, "vlc", &format!("file:{}", out.display()));
    writer.start(&Default::default()).unwrap();
    for (seq, chunk) in chunks.iter().enumerate() {
        push(&mut writer, seq as u64, chunk);
    }
    let report = writer.finish().unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    let (video, width, height, secs) = discover(&out);
    eprintln!("file source: captured {captured:.2} s, file holds {secs:.2} s: {video}");
    assert!(video.contains("H.264"), "{video}");
    assert_eq!((width, height), (352, 288));
    assert!(has_audio(&out), "the clip's audio is transcoded too");
    assert!(
        (secs - captured).abs() < 0.5,
        "file holds {secs} s, {captured} s were captured"
    );

    // Not live: VLC runs as fast as it can, through a pipe.
    let mut p = params("false");
    p.push(("live", "false".to_owned()));
    let mut fast = input(
        &registry,
        "vlc",
        &p.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let (fast_chunks, ended) = capture(&mut fast, Duration::from_secs(20));
    eprintln!(
        "live=false: {:.2} s of media in {:?}",
        span(&fast_chunks),
        started.elapsed()
    );
    assert!(ended);
    assert!((span(&fast_chunks) - captured).abs() < 0.3);
    assert!(started.elapsed() < Duration::from_millis(2500));

    // Looping (the default): the stream goes on past the end of the file,
    // on one continuous timeline.
    let p = params("true");
    let mut looped = input(
        &registry,
        "vlc",
        &p.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    );
    let (chunks, ended) = capture(&mut looped, Duration::from_secs(6));
    assert!(!ended, "a looping file does not end");
    assert!(chunks.windows(2).all(|w| w[0].pts_us < w[1].pts_us));
    assert!(span(&chunks) >= 4.0, "looped for {} s", span(&chunks));
}

#[test]
fn gst_input_plays_through_the_vlc_decoder_across_a_gap() {
    let _serial = serial();
    let registry = registry();
    if !libvlc_available(&registry) {
        return;
    }
    let mut source = input(
        &registry,
        "gst",
        &[
            ("source", "test"),
            ("bitrate_kbps", "800"),
            ("chunk_ms", "200"),
        ],
    );
    let mut decoder = output(&registry, "vlc", "decode");
    decoder.start(&Default::default()).unwrap();
    let start = Instant::now();
    source.start(0).unwrap_or_else(|e| panic!("{e}"));
    let mut seq = 0u64;
    let mut gaps = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let mut chunks = RVec::new();
        source
            .poll(start.elapsed().as_micros() as u64, &mut chunks)
            .unwrap_or_else(|e| panic!("{e}"));
        for chunk in chunks.iter() {
            // A run of chunks in the middle never arrives (the gst input cuts
            // a chunk at every audio buffer too, so these are ~0.4 s).
            if (100..130).contains(&seq) {
                decoder.gap(seq).unwrap();
                gaps += 1;
            } else {
                push(&mut decoder, seq, chunk);
            }
            seq += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    source.stop().unwrap();
    let finishing = Instant::now();
    let report = decoder.finish().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "gst -> vlc decode: {} ({} chunks, finish took {:?})",
        report.detail,
        seq,
        finishing.elapsed()
    );
    assert_eq!(report.gaps, gaps);
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(frames(&report.detail) >= 75, "{}", report.detail);
    assert!(finishing.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_udp_source_streams_and_its_death_is_a_clear_error() {
    let _serial = serial();
    let registry = registry();
    if !libvlc_available(&registry) {
        return;
    }
    let sender = UdpSender::start();
    let uri = sender.uri();
    let mut input = input(
        &registry,
        "vlc",
        &[
            ("source", &uri),
            ("width", "320"),
            ("height", "240"),
            ("bitrate_kbps", "300"),
            ("timeout_ms", "3000"),
        ],
    );
    let (chunks, died, since_kill) = capture_until_dead(&mut input, sender, 15);
    assert!(
        chunks.len() >= 15,
        "only {} chunks from the udp source",
        chunks.len()
    );
    let err = died.expect("the dead source is reported");
    assert!(
        err.message.contains(&uri) && err.message.contains("dead"),
        "{err}"
    );
    assert!(since_kill.expect("the sender was killed") < Duration::from_secs(10));
    drop(input);

    let mut decoder = output(&registry, "gst", "decode");
    decoder.start(&Default::default()).unwrap();
    for (seq, chunk) in chunks.iter().enumerate() {
        push(&mut decoder, seq as u64, chunk);
    }
    let report = decoder.finish().unwrap();
    assert!(frames(&report.detail) > 0, "{report:?}");
}

#[test]
fn unopenable_sources_and_bad_parameters_are_clear_errors() {
    let _serial = serial();
    let registry = registry();
    if !libvlc_available(&registry) {
        return;
    }
    let mut missing = input(&registry, "vlc", &[("source", "/nonexistent/clip.mp4")]);
    let err = missing.start(0).unwrap_err();
    assert!(
        err.message.contains("/nonexistent/clip.mp4") && err.message.contains("no such file"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"this is not a video").unwrap();
    let mut junk_input = input(&registry, "vlc", &[("source", junk.to_str().unwrap())]);
    let start = Instant::now();
    let mut chunks = RVec::new();
    let err = match junk_input.start(0).into_result() {
        Err(e) => e,
        Ok(_) => loop {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "junk file never failed"
            );
            if let Err(e) = junk_input
                .poll(start.elapsed().as_micros() as u64, &mut chunks)
                .into_result()
            {
                break e;
            }
            std::thread::sleep(Duration::from_millis(20));
        },
    };
    eprintln!("junk file: {err}");
    assert!(err.message.contains("junk.mp4"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "{:?}",
        start.elapsed()
    );

    let err = registry
        .new_input("vlc", None, &Params::new().with("source", "gopher://x"))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("unsupported source scheme 'gopher://'"),
        "{err}"
    );
    let err = registry
        .new_input(
            "vlc",
            None,
            &Params::new().with("source", "test").with("audio", "true"),
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("video only"), "{err}");
    let err = registry
        .new_output("vlc", None, &Params::new().with("sink", "printer"))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("use screen, decode or file:PATH"),
        "{err}"
    );
}
