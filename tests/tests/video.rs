//! Real video through the whole system: `p2ner publish` with a codec input,
//! `p2ner subscribe` writing a file, checked by `gst-discoverer-1.0`; for the
//! GStreamer and the VLC backends; and a source that dies mid-stream.

use std::time::Duration;

use p2ner_tests::swarm::{f, Swarm};
use p2ner_tests::*;

/// Publishes the test pattern through `input` and records it twice through
/// `output` (NAME:file:PATH): from the start for 15 s, and from 10 s late.
fn record(input: &str, output: &str) {
    let s = Swarm::start(None);
    let (_publisher, stream) = s.publish(&[
        "--input",
        input,
        "--source",
        "test",
        "--bitrate",
        "800",
        "--width",
        "640",
        "--height",
        "360",
        "--chunk-ms",
        "200",
        "--for",
        "45",
    ]);
    let first = s.path("first.ts");
    let late = s.path("late.ts");
    let out = |p: &std::path::Path| format!("{output}:file:{}", p.display());
    let mut a = s.subscribe("first", &stream, 15, &["--output", &out(&first)]);
    std::thread::sleep(Duration::from_secs(10));
    let mut b = s.subscribe("late", &stream, 10, &["--output", &out(&late)]);
    for (p, file, min_secs) in [(&mut a, &first, 12.0), (&mut b, &late, 7.0)] {
        let sum = s
            .summary(p, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(f(&sum, "continuity") >= 0.99, "{sum}");
        let (video, w, h, secs) = discover(file);
        eprintln!("{input} -> {output}: {video}, {w}x{h}, {secs:.1} s");
        assert!(video.contains("H.264"), "{video}");
        assert_eq!((w, h), (640, 360));
        assert!(secs >= min_secs, "{} lasts {secs:.1} s", file.display());
    }
}

#[test]
fn gst_test_pattern_is_recorded_by_subscribers_including_a_late_joiner() {
    record("gst", "gst");
}

#[test]
fn vlc_test_pattern_is_recorded_by_subscribers_including_a_late_joiner() {
    record("vlc", "vlc");
}

#[test]
fn a_source_dying_mid_stream_ends_the_publisher_with_a_clear_error() {
    let s = Swarm::start(None);
    let sender = UdpSender::start();
    let source = sender.uri();
    let (mut publisher, stream) = s.publish(&[
        "--input",
        "gst",
        "--source",
        &source,
        "--input-param",
        "timeout_ms=3000",
        "--for",
        "60",
    ]);
    let mut sub = s.subscribe("sub", &stream, 8, &[]);
    let sum = s
        .summary(&mut sub, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(f(&sum, "chunks_played") > 0.0, "{sum}");
    drop(sender);
    let status = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            publisher.child.try_wait().unwrap()
        })
        .expect("the publisher ends when its source dies");
    assert!(!status.success());
    let err = std::fs::read_to_string(s.path("publisher.err")).unwrap();
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("dead"),
        "{last}"
    );
    assert!(last.contains(&source), "the error names the source: {last}");
}
