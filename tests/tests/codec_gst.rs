//! The GStreamer codec plugins, through their real cdylibs and real
//! pipelines: capture and transcode, write, decode, and the failures a user
//! meets (a missing file, a source that dies).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use p2ner_engine::plugins::Registry;
use p2ner_plugin_api::abi_stable::std_types::RVec;
use p2ner_plugin_api::{ChunkRef, InputBox, InputState, MediaChunk, OutputBox, Params};
use p2ner_tests::*;

fn registry() -> Registry {
    let registry = Registry::load_dirs(&[&profile_dir()]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    registry
}

fn input(registry: &Registry, params: &[(&str, &str)]) -> InputBox {
    registry
        .new_input("gst", None, &params.iter().copied().collect())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn output(registry: &Registry, sink: &str) -> OutputBox {
    registry
        .new_output("gst", None, &Params::new().with("sink", sink))
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

#[test]
fn test_source_is_transcoded_to_h264_and_written_by_the_file_sink_including_a_late_joiner() {
    let registry = registry();
    let mut input = input(
        &registry,
        &[
            ("source", "test"),
            ("bitrate_kbps", "800"),
            ("width", "640"),
            ("height", "360"),
            ("chunk_ms", "200"),
        ],
    );
    let (chunks, ended) = capture(&mut input, Duration::from_secs(7));
    assert!(!ended);
    assert!(chunks.len() >= 25, "only {} chunks in 7 s", chunks.len());
    // 200 ms chunks plus a cut at each (1 s) video keyframe: audio packets,
    // sync points to the muxer too, must not cut chunks of their own.
    assert!(chunks.len() <= 50, "{} chunks in 7 s", chunks.len());
    assert!(chunks[0].keyframe, "the stream must start on a keyframe");
    let keyframes = chunks.iter().filter(|c| c.keyframe).count();
    assert!(
        keyframes >= 5,
        "a keyframe at least every second: {keyframes}"
    );
    let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
    let seconds = (chunks.last().unwrap().pts_us - chunks[0].pts_us) as f64 / 1e6;
    let kbps = bytes as f64 * 8.0 / 1000.0 / seconds;
    eprintln!("test source: {kbps:.0} kbit/s for an 800 kbit/s stream");
    assert!(
        (650.0..950.0).contains(&kbps),
        "{kbps:.0} kbit/s for an 800 kbit/s stream"
    );

    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.ts");
    let late = dir.path().join("late.ts");
    let mut first = output(&registry, &format!("file:{}", whole.display()));
    let mut joiner = output(&registry, &format!("file:{}", late.display()));
    first.start(&Default::default()).unwrap();
    joiner.start(&Default::default()).unwrap();
    let join_at = chunks.len() / 2 + 1;
    for (seq, chunk) in chunks.iter().enumerate() {
        push(&mut first, seq as u64, chunk);
        if seq >= join_at {
            push(&mut joiner, seq as u64, chunk);
        }
    }
    first.finish().unwrap();
    joiner.finish().unwrap();

    let (video, width, height, secs) = discover(&whole);
    assert!(video.contains("H.264"), "{video}");
    assert_eq!((width, height), (640, 360));
    assert!(secs >= 5.0, "duration {secs}");
    let (video, width, _, secs) = discover(&late);
    assert!(video.contains("H.264") && width == 640, "{video}");
    assert!(secs >= 2.0, "late joiner's duration {secs}");
}

/// A short H.264 MP4 made by gst-launch, the kind of file a user publishes.
fn make_clip(path: &Path) {
    let status = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "num-buffers=60",
            "!",
            "video/x-raw,width=320,height=240,framerate=30/1",
            "!",
            "x264enc",
            "!",
            "mp4mux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0");
    assert!(status.success());
}

#[test]
fn a_file_source_streams_to_the_end_and_decodes_cleanly() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip);
    let mut input = input(
        &registry,
        &[
            ("source", clip.to_str().unwrap()),
            ("loop", "false"),
            ("live", "false"),
            ("width", "320"),
            ("height", "240"),
            ("bitrate_kbps", "300"),
        ],
    );
    let (chunks, ended) = capture(&mut input, Duration::from_secs(20));
    assert!(ended, "a 2 s file without looping ends");
    let mut decoder = output(&registry, "decode");
    decoder.start(&Default::default()).unwrap();
    for (seq, chunk) in chunks.iter().enumerate() {
        push(&mut decoder, seq as u64, chunk);
    }
    let report = decoder.finish().unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    let frames: u64 = report
        .detail
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(frames >= 50, "{}", report.detail);
}

#[test]
fn a_udp_source_streams_and_its_death_is_a_clear_error() {
    let registry = registry();
    let sender = UdpSender::start();
    let uri = sender.uri();
    let mut input = input(
        &registry,
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

    let mut decoder = output(&registry, "decode");
    decoder.start(&Default::default()).unwrap();
    for (seq, chunk) in chunks.iter().enumerate() {
        push(&mut decoder, seq as u64, chunk);
    }
    let report = decoder.finish().unwrap();
    assert!(
        report
            .detail
            .starts_with(|c: char| c.is_ascii_digit() && c != '0'),
        "{report:?}"
    );
}

#[test]
fn unopenable_sources_are_clear_errors() {
    let registry = registry();
    let mut missing = input(&registry, &[("source", "/nonexistent/clip.mp4")]);
    let err = missing.start(0).unwrap_err();
    assert!(
        err.message.contains("/nonexistent/clip.mp4") && err.message.contains("no such file"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"this is not a video").unwrap();
    let mut junk_input = input(&registry, &[("source", junk.to_str().unwrap())]);
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
    assert!(err.message.contains("junk.mp4"), "{err}");

    let err = registry
        .new_input("gst", None, &Params::new().with("source", "gopher://x"))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("unsupported source scheme 'gopher://'"),
        "{err}"
    );
    let err = registry
        .new_output("gst", None, &Params::new().with("sink", "printer"))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("use screen, decode or file:PATH"),
        "{err}"
    );
}
