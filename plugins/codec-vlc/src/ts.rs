//! Reading VLC's MPEG-TS output back: where frames start, which are
//! keyframes, and their timestamps.
//!
//! GStreamer tells its appsink which buffers are keyframes; VLC writes bytes
//! to a socket, so the plugin parses what it needs from the transport stream:
//! the PAT and PMT (to find the video PID and keep a copy of both tables),
//! each video PES start (a new frame, with its DTS/PTS), and the first NAL
//! units of that frame (an H.264 IDR or HEVC IRAP picture is a keyframe).
//! VLC's muxer does not set the random access indicator, but when another
//! muxer does, it counts too.
//!
//! The output is a sequence of [`Unit`]s: the bytes from one video PES start
//! to the next (with the audio and table packets in between), which is what
//! the chunker cuts between. Program tables that come right before a frame
//! are kept with that frame, and a keyframe unit that does not start with
//! them gets copies of the latest PAT and PMT in front: a peer that joins at
//! a keyframe chunk can then decode at once instead of waiting for VLC's next
//! tables (VLC writes them every 200 ms, not at keyframes).

/// Bytes of one MPEG-TS packet.
pub const PACKET: usize = 188;
const SYNC: u8 = 0x47;
/// How much of a frame is searched for its first picture NAL unit.
const MAX_HEAD: usize = 64 * 1024;

/// One frame's worth of transport stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Media time in microseconds on a continuous timeline starting at 0
    /// (jumps, wraps and restarts of the source's clock are smoothed over).
    pub time_us: Option<u64>,
    /// The frame starts with a picture a decoder can start from.
    pub keyframe: bool,
    /// Whole TS packets.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    H264,
    Hevc,
    Other,
}

/// Incremental parser: feed it bytes in any pieces, take complete units.
#[derive(Debug, Default)]
pub struct TsScanner {
    partial: Vec<u8>,
    pmt_pid: Option<u16>,
    video: Option<(u16, Codec)>,
    pat: Option<Vec<u8>>,
    pmt: Option<Vec<u8>>,
    /// Table packets not yet followed by anything else.
    tables: Vec<u8>,
    current: Option<Current>,
    /// Bytes before the first video frame.
    preamble: Vec<u8>,
    clock: Clock,
    ready: Vec<Unit>,
    /// Bytes skipped to find packet sync.
    pub resyncs: u64,
}

#[derive(Debug)]
struct Current {
    data: Vec<u8>,
    time_us: Option<u64>,
    random_access: bool,
    /// Elementary stream bytes from the start of the frame, while searching.
    head: Vec<u8>,
    verdict: Option<bool>,
}

impl TsScanner {
    /// A scanner that has seen nothing yet.
    pub fn new() -> Self {
        TsScanner::default()
    }

    /// Whether the video PID is known (the PAT and PMT were seen).
    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    /// Adds bytes of the stream, in any cut; complete units come out of `take`.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if !self.partial.is_empty() {
            let need = PACKET - self.partial.len();
            let take = need.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < PACKET {
                return;
            }
            let packet = std::mem::take(&mut self.partial);
            self.packet(&packet);
        }
        while !bytes.is_empty() {
            if bytes[0] != SYNC {
                let skip = bytes.iter().position(|&b| b == SYNC).unwrap_or(bytes.len());
                self.resyncs += skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            if bytes.len() < PACKET {
                self.partial.extend_from_slice(bytes);
                return;
            }
            let (packet, rest) = bytes.split_at(PACKET);
            self.packet(packet);
            bytes = rest;
        }
    }

    /// Units completed so far.
    pub fn take(&mut self) -> Vec<Unit> {
        std::mem::take(&mut self.ready)
    }

    /// Ends the stream: the frame in progress is complete.
    pub fn finish(&mut self) -> Vec<Unit> {
        self.close_current();
        if let Some(unit) = self.ready.last_mut() {
            unit.data.append(&mut self.tables);
        }
        self.take()
    }

    fn packet(&mut self, p: &[u8]) {
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let pusi = p[1] & 0x40 != 0;
        let afc = (p[3] >> 4) & 3;
        let mut payload_at = 4;
        let mut random_access = false;
        if afc & 2 != 0 {
            let len = p[4] as usize;
            random_access = len > 0 && p[5] & 0x40 != 0;
            payload_at = 5 + len;
        }
        let payload = if afc & 1 != 0 && payload_at < PACKET {
            &p[payload_at..]
        } else {
            &[][..]
        };
        if pid == 0 {
            if pusi {
                self.parse_pat(payload);
                self.pat = Some(p.to_vec());
            }
            self.tables.extend_from_slice(p);
            return;
        }
        if Some(pid) == self.pmt_pid {
            if pusi {
                self.parse_pmt(payload);
                self.pmt = Some(p.to_vec());
            }
            self.tables.extend_from_slice(p);
            return;
        }
        if pid == 0x11 {
            // SDT: a table too, kept with the frame that follows.
            self.tables.extend_from_slice(p);
            return;
        }
        match self.video {
            Some((vpid, codec)) if vpid == pid => {
                if pusi {
                    self.close_current();
                    self.start_frame(codec, random_access, payload);
                } else if let Some(cur) = self.current.as_mut() {
                    if cur.verdict.is_none() {
                        cur.head.extend_from_slice(payload);
                        cur.verdict = first_picture_is_key(codec, &cur.head);
                        if cur.verdict.is_none() && cur.head.len() > MAX_HEAD {
                            cur.verdict = Some(false);
                        }
                    }
                }
                self.append(p);
            }
            _ => self.append(p),
        }
    }

    fn append(&mut self, p: &[u8]) {
        let target = match self.current.as_mut() {
            Some(cur) => &mut cur.data,
            None => &mut self.preamble,
        };
        target.append(&mut self.tables);
        target.extend_from_slice(p);
    }

    fn start_frame(&mut self, codec: Codec, random_access: bool, payload: &[u8]) {
        let (time, es) = parse_pes(payload);
        let time_us = time.map(|t| self.clock.map(t));
        let mut data = std::mem::take(&mut self.preamble);
        data.append(&mut self.tables);
        let head = es.to_vec();
        let verdict = first_picture_is_key(codec, &head);
        self.current = Some(Current {
            data,
            time_us,
            random_access,
            head,
            verdict,
        });
    }

    fn close_current(&mut self) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let keyframe = cur.random_access || cur.verdict.unwrap_or(false);
        let mut data = cur.data;
        if keyframe && !starts_with_pid(&data, 0) {
            if let (Some(pat), Some(pmt)) = (&self.pat, &self.pmt) {
                let mut with_tables = Vec::with_capacity(data.len() + 2 * PACKET);
                with_tables.extend_from_slice(pat);
                with_tables.extend_from_slice(pmt);
                with_tables.append(&mut data);
                data = with_tables;
            }
        }
        self.ready.push(Unit {
            time_us: cur.time_us,
            keyframe,
            data,
        });
    }

    fn parse_pat(&mut self, payload: &[u8]) {
        let Some(section) = section(payload, 0x00) else {
            return;
        };
        // After the 8-byte header: (program_number, PID) pairs, then the CRC.
        for entry in section[8..section.len().saturating_sub(4)].chunks_exact(4) {
            let program = u16::from_be_bytes([entry[0], entry[1]]);
            if program != 0 {
                self.pmt_pid = Some((u16::from(entry[2] & 0x1f) << 8) | u16::from(entry[3]));
                return;
            }
        }
    }

    fn parse_pmt(&mut self, payload: &[u8]) {
        let Some(section) = section(payload, 0x02) else {
            return;
        };
        if section.len() < 16 {
            return;
        }
        let info_len = (usize::from(section[10] & 0x0f) << 8) | usize::from(section[11]);
        let mut at = 12 + info_len;
        let end = section.len().saturating_sub(4);
        while at + 5 <= end {
            let stream_type = section[at];
            let pid = (u16::from(section[at + 1] & 0x1f) << 8) | u16::from(section[at + 2]);
            let es_len = (usize::from(section[at + 3] & 0x0f) << 8) | usize::from(section[at + 4]);
            let codec = match stream_type {
                0x1b => Some(Codec::H264),
                0x24 => Some(Codec::Hevc),
                0x01 | 0x02 | 0x10 | 0x42 | 0xea => Some(Codec::Other),
                _ => None,
            };
            if let Some(codec) = codec {
                self.video = Some((pid, codec));
                return;
            }
            at += 5 + es_len;
        }
    }
}

/// Whether the data starts with a packet of `pid`.
fn starts_with_pid(data: &[u8], pid: u16) -> bool {
    data.len() >= PACKET
        && data[0] == SYNC
        && (u16::from(data[1] & 0x1f) << 8 | u16::from(data[2])) == pid
}

/// The PSI section in a payload that starts one, if it is complete and of
/// the expected table.
fn section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
    let pointer = *payload.first()? as usize;
    let s = payload.get(1 + pointer..)?;
    if s.len() < 3 || s[0] != table_id {
        return None;
    }
    let len = (usize::from(s[1] & 0x0f) << 8) | usize::from(s[2]);
    s.get(..3 + len).filter(|s| s.len() >= 12)
}

/// The PES header's DTS (or PTS) in 90 kHz ticks, and the elementary stream
/// bytes after the header.
fn parse_pes(payload: &[u8]) -> (Option<u64>, &[u8]) {
    if payload.len() < 9 || payload[..3] != [0, 0, 1] {
        return (None, &[]);
    }
    let flags = payload[7] >> 6;
    let header_len = payload[8] as usize;
    let es = payload.get(9 + header_len..).unwrap_or(&[]);
    let timestamp = |at: usize| -> Option<u64> {
        let b = payload.get(at..at + 5)?;
        Some(
            (u64::from(b[0] >> 1) & 0x07) << 30
                | u64::from(b[1]) << 22
                | (u64::from(b[2]) >> 1) << 15
                | u64::from(b[3]) << 7
                | u64::from(b[4]) >> 1,
        )
    };
    let time = match flags {
        3 => timestamp(14).or_else(|| timestamp(9)),
        2 => timestamp(9),
        _ => None,
    };
    (time, es)
}

/// Some(true) when the first picture NAL unit in `es` is a random access
/// point, Some(false) when it is another picture, None when none is there
/// yet. Codecs we do not parse are never keyframes by content (only by the
/// random access indicator).
fn first_picture_is_key(codec: Codec, es: &[u8]) -> Option<bool> {
    if codec == Codec::Other {
        return Some(false);
    }
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            let header = es[i + 3];
            match codec {
                Codec::H264 => match header & 0x1f {
                    5 => return Some(true),
                    1..=4 => return Some(false),
                    _ => {}
                },
                Codec::Hevc => match (header >> 1) & 0x3f {
                    16..=21 => return Some(true),
                    0..=15 => return Some(false),
                    _ => {}
                },
                Codec::Other => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

/// Maps 33-bit 90 kHz timestamps to a continuous microsecond timeline.
#[derive(Debug, Default)]
struct Clock {
    last_raw: Option<u64>,
    last_us: u64,
}

/// A step larger than this (or backwards by more than a second) is a
/// discontinuity: a looped file, a restarted source.
const MAX_STEP_TICKS: i64 = 90_000 * 5;

impl Clock {
    fn map(&mut self, raw: u64) -> u64 {
        const WRAP: i64 = 1 << 33;
        let us = match self.last_raw {
            None => 0,
            Some(last) => {
                let mut delta = raw as i64 - last as i64;
                if delta > WRAP / 2 {
                    delta -= WRAP;
                } else if delta < -WRAP / 2 {
                    delta += WRAP;
                }
                if !(-90_000..=MAX_STEP_TICKS).contains(&delta) {
                    // Continue one frame (at 25 fps) after the last one.
                    self.last_us + 40_000
                } else {
                    (self.last_us as i64 + delta * 100 / 9).max(0) as u64
                }
            }
        };
        self.last_raw = Some(raw);
        self.last_us = us;
        us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pid: u16, pusi: bool, cc: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            SYNC,
            (if pusi { 0x40 } else { 0 }) | (pid >> 8) as u8,
            pid as u8,
            0x10 | (cc & 0x0f),
        ];
        p.extend_from_slice(payload);
        p.resize(PACKET, 0xff);
        p
    }

    fn pat(pmt_pid: u16) -> Vec<u8> {
        let mut s = vec![0u8, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1];
        s.extend_from_slice(&[0xe0 | (pmt_pid >> 8) as u8, pmt_pid as u8, 0, 0, 0, 0]);
        packet(0, true, 0, &s)
    }

    fn pmt(pmt_pid: u16, video_pid: u16, stream_type: u8) -> Vec<u8> {
        let mut s = vec![0u8, 0x02, 0xb0, 18, 0, 1, 0xc1, 0, 0];
        s.extend_from_slice(&[0xe0 | (video_pid >> 8) as u8, video_pid as u8, 0xf0, 0]);
        s.extend_from_slice(&[
            stream_type,
            0xe0 | (video_pid >> 8) as u8,
            video_pid as u8,
            0xf0,
            0,
        ]);
        s.extend_from_slice(&[0, 0, 0, 0]);
        packet(pmt_pid, true, 0, &s)
    }

    fn pes(pid: u16, pts: u64, nal_types: &[u8]) -> Vec<u8> {
        let mut pl = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5];
        pl.extend_from_slice(&[
            0x21 | ((pts >> 29) & 0x0e) as u8,
            (pts >> 22) as u8,
            0x01 | ((pts >> 14) & 0xfe) as u8,
            (pts >> 7) as u8,
            0x01 | ((pts << 1) & 0xfe) as u8,
        ]);
        for t in nal_types {
            pl.extend_from_slice(&[0, 0, 0, 1, *t, 0xaa, 0xbb]);
        }
        packet(pid, true, 0, &pl)
    }

    #[test]
    fn finds_keyframes_timestamps_and_puts_tables_in_front_of_keyframes() {
        let mut stream = Vec::new();
        stream.extend(pat(0x20));
        stream.extend(pmt(0x20, 0x44, 0x1b));
        stream.extend(pes(0x44, 90_000, &[9, 7, 8, 5])); // AUD SPS PPS IDR
        stream.extend(packet(0x44, false, 1, &[1, 2, 3]));
        stream.extend(packet(0x45, true, 0, &[0, 0, 1, 0xc0])); // audio
        stream.extend(pes(0x44, 93_600, &[9, 1]));
        stream.extend(pat(0x20));
        stream.extend(pmt(0x20, 0x44, 0x1b));
        stream.extend(pes(0x44, 97_200, &[9, 1]));
        stream.extend(pes(0x44, 100_800, &[9, 6, 5])); // AUD SEI IDR
        stream.extend(pes(0x44, 104_400, &[9, 1]));
        let mut ts = TsScanner::new();
        // Odd piece sizes: the scanner must not care.
        for piece in stream.chunks(100) {
            ts.push(piece);
        }
        let mut units = ts.take();
        units.extend(ts.finish());
        let shape: Vec<(Option<u64>, bool, usize)> = units
            .iter()
            .map(|u| (u.time_us, u.keyframe, u.data.len() / PACKET))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Some(0), true, 5), // PAT PMT frame + its two packets... and audio
                (Some(40_000), false, 1),
                (Some(80_000), false, 3), // the tables before it travel with it
                (Some(120_000), true, 3), // copies of PAT and PMT put in front
                (Some(160_000), false, 1),
            ]
        );
        assert!(starts_with_pid(&units[3].data, 0));
        assert!(ts.has_video());
    }

    #[test]
    fn garbage_is_skipped_and_clock_jumps_are_smoothed() {
        let mut ts = TsScanner::new();
        ts.push(b"junk");
        ts.push(&pat(0x20));
        ts.push(&pmt(0x20, 0x44, 0x1b));
        ts.push(&pes(0x44, 900_000, &[5]));
        ts.push(&pes(0x44, 903_600, &[1]));
        // The file loops: timestamps restart.
        ts.push(&pes(0x44, 1_000, &[5]));
        ts.push(&pes(0x44, 4_600, &[1]));
        let times: Vec<_> = ts.finish().iter().map(|u| u.time_us.unwrap()).collect();
        assert_eq!(times, vec![0, 40_000, 80_000, 120_000]);
        assert_eq!(ts.resyncs, 4);
        // 33-bit wrap.
        let mut clock = Clock::default();
        clock.map((1 << 33) - 1800);
        assert_eq!(clock.map(1800), 40_000);
    }
}
