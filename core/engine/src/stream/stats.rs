//! What a stream measures, in the terms of the `--stats` lines
//! (docs/architecture.md, "Stats lines").

use std::collections::BTreeMap;

use serde::Serialize;

/// Plugins' own metrics, by plugin (`"scheduler.NAME"`, `"overlay.NAME"`)
/// and then by the plugin's metric name: what `metrics` last reported.
pub type PluginMetrics = BTreeMap<String, BTreeMap<String, f64>>;

/// Running counters of one stream on one peer.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    /// Chunks handed to the output on time.
    pub chunks_played: u64,
    /// Arrived after their deadline had passed (they were counted missed).
    pub chunks_late: u64,
    /// Chunks absent at their deadline, skipped.
    pub chunks_missed: u64,
    /// Chunks the publisher's input produced.
    pub chunks_produced: u64,
    /// First copies of media, and what they carried.
    pub chunks_received: u64,
    /// Media bytes of the chunks produced or first received.
    pub media_bytes: u64,
    /// Copies of chunks already held: upload a scheduler wasted.
    pub duplicate_chunks: u64,
    /// Chunks whose signature did not verify (nothing of them was used).
    pub forged_chunks: u64,
    /// Links (addresses) banned for sending forged chunks.
    pub peers_banned: u64,
    /// Messages dropped: from a banned address.
    pub messages_from_banned: u64,
    /// Messages dropped: naming a neighbour from another address, or a
    /// second peer id from a neighbour's address.
    pub wrong_address: u64,
    /// Plugin messages dropped for their size.
    pub messages_oversized: u64,
    /// Messages dropped by the per-neighbour (or strangers') rate limit.
    pub messages_rate_limited: u64,
    /// Chunks dropped unverified: more than a window from the stream's position.
    pub chunks_out_of_window: u64,
    /// Address-book entries evicted to stay within its bound.
    pub book_evicted: u64,
    /// Chunk sends refused: that neighbour had that chunk twice already.
    pub chunks_resend_refused: u64,
    /// Everything this stream's peers sent and received through the
    /// session: envelopes and sealed chunks.
    pub bytes_down: u64,
    /// Everything sent, as `bytes_down` counts what was received.
    pub bytes_up: u64,
    /// Chunks handed to the data channel.
    pub chunks_sent: u64,
    /// Chunks the data channel refused (no capacity towards that neighbour).
    pub chunks_refused: u64,
    /// From the session's start to the first chunk played.
    pub startup_us: Option<u64>,
    /// Capture at the publisher to playback here, per played chunk.
    pub lag_us: Vec<u64>,
    /// Plugin actions the session refused, by reason
    /// (`RefusalKind::name`: `chunk_no_room`, `message_too_large`, ...).
    pub refused_actions: BTreeMap<String, u64>,
    /// The plugins' own counters and gauges, as last asked.
    pub plugins: PluginMetrics,
}

impl StreamStats {
    /// Chunks played on time / chunks due since playback started.
    pub fn continuity(&self) -> f64 {
        let due = self.chunks_played + self.chunks_missed;
        if due == 0 {
            0.0
        } else {
            self.chunks_played as f64 / due as f64
        }
    }

    /// The `p`-th percentile of the capture-to-playback lag, in milliseconds.
    pub fn lag_percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.lag_us, p).map(|us| us as f64 / 1000.0)
    }

    /// Bytes received that were not first copies of media, per media byte.
    pub fn overhead(&self) -> f64 {
        if self.media_bytes == 0 {
            0.0
        } else {
            self.bytes_down.saturating_sub(self.media_bytes) as f64 / self.media_bytes as f64
        }
    }

    /// The final `--stats` line of stream `stream`.
    pub fn summary(&self, stream: &str) -> Summary {
        Summary {
            final_: true,
            stream: stream.to_owned(),
            continuity: self.continuity(),
            startup_ms: self.startup_us.map(|us| us as f64 / 1000.0),
            lag_ms_p50: self.lag_percentile_ms(0.50),
            lag_ms_p95: self.lag_percentile_ms(0.95),
            chunks_played: self.chunks_played,
            chunks_late: self.chunks_late,
            chunks_missed: self.chunks_missed,
            chunks_produced: self.chunks_produced,
            duplicate_chunks: self.duplicate_chunks,
            forged_chunks: self.forged_chunks,
            peers_banned: self.peers_banned,
            refused: Refused {
                from_banned: self.messages_from_banned,
                wrong_address: self.wrong_address,
                oversized: self.messages_oversized,
                rate_limited: self.messages_rate_limited,
                chunks_out_of_window: self.chunks_out_of_window,
                book_evicted: self.book_evicted,
                chunks_resend_refused: self.chunks_resend_refused,
            },
            bytes_down: self.bytes_down,
            bytes_up: self.bytes_up,
            media_bytes: self.media_bytes,
            overhead: self.overhead(),
            overhead_parts: OverheadParts::default(),
            state: String::new(),
            reason: String::new(),
            refused_actions: self.refused_actions.clone(),
            plugins: self.plugins.clone(),
            net: NetCounters::default(),
        }
    }
}

/// The last line of `--stats`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    /// Always true: tells the summary from the per-second lines.
    #[serde(rename = "final")]
    pub final_: bool,
    /// The stream's id.
    pub stream: String,
    /// Chunks played on time / chunks due.
    pub continuity: f64,
    /// From start to first chunk played; `None`: playback never started.
    pub startup_ms: Option<f64>,
    /// Median capture-to-playback lag.
    pub lag_ms_p50: Option<f64>,
    /// 95th percentile capture-to-playback lag.
    pub lag_ms_p95: Option<f64>,
    /// See [`StreamStats`] for these counters.
    pub chunks_played: u64,
    /// Arrived after their deadline.
    pub chunks_late: u64,
    /// Absent at their deadline.
    pub chunks_missed: u64,
    /// Produced by the publisher's input.
    pub chunks_produced: u64,
    /// Copies of chunks already held.
    pub duplicate_chunks: u64,
    /// Chunks whose signature did not verify.
    pub forged_chunks: u64,
    /// Links (addresses) banned for forged chunks.
    pub peers_banned: u64,
    /// What the session dropped or refused from peers, by reason.
    #[serde(default)]
    pub refused: Refused,
    /// Everything received.
    pub bytes_down: u64,
    /// Everything sent.
    pub bytes_up: u64,
    /// Media bytes among them.
    pub media_bytes: u64,
    /// Bytes moved per media byte, minus one: what the protocol costs.
    pub overhead: f64,
    /// `overhead` in its parts (each per media byte; they add up to it),
    /// so that a change can be aimed at the part that costs most. Zero
    /// when the network layer's counters are not this stream's alone.
    #[serde(default)]
    pub overhead_parts: OverheadParts,
    /// How the run ended, as `p2ner run`'s sessions say it: `ended` or
    /// `failed`.
    #[serde(default)]
    pub state: String,
    /// Why (`time is up`, `the publisher is offline ...`).
    #[serde(default)]
    pub reason: String,
    /// Refused plugin actions by reason; absent when none were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refused_actions: BTreeMap<String, u64>,
    /// Plugins' own metrics (`{"scheduler.edf": {"requests": 12}}`); absent
    /// when no plugin reports any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: PluginMetrics,
    /// Datagrams the network layer refused (see [`NetCounters`]).
    #[serde(flatten, default)]
    pub net: NetCounters,
}

/// What a subscriber received beyond the first copies of the media it
/// played or buffered, per media byte, by what it was.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct OverheadParts {
    /// Datagram headers, frame headers and sealing of everything received.
    pub framing: f64,
    /// Acknowledgements (of data and of reliable messages).
    pub acks: f64,
    /// Control messages' payloads (the engine's envelope and the plugins'
    /// messages).
    pub messages: f64,
    /// Chunk bytes beyond their media's first copy: chunk headers and
    /// signatures, duplicates, copies that came too late.
    pub chunks: f64,
}

/// What a session dropped or refused from its peers, by reason (see
/// `stream::session`'s guard for the bounds).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Refused {
    /// Messages from an address banned for forged chunks.
    pub from_banned: u64,
    /// Messages naming a neighbour from another address, or a second peer
    /// id from a neighbour's address.
    pub wrong_address: u64,
    /// Plugin messages over the size bound.
    pub oversized: u64,
    /// Messages over a neighbour's (or the strangers', or one source
    /// address's) rate.
    pub rate_limited: u64,
    /// Chunks more than a window from the stream's position.
    pub chunks_out_of_window: u64,
    /// Address-book entries evicted to stay within its bound.
    pub book_evicted: u64,
    /// Chunk sends refused: that neighbour had that chunk twice already.
    pub chunks_resend_refused: u64,
}

/// What the network layer dropped before it reached the stream, so a user
/// sees an attack or a broken peer (under `p2ner run`: the shared endpoint's
/// totals).
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NetCounters {
    /// Not a valid datagram (framing, version, fields).
    #[serde(default)]
    pub malformed_dropped: u64,
    /// Unsealed, forged or replayed datagrams, bad cookies and handshakes,
    /// version rejects nobody asked for, and peer messages whose claimed peer
    /// id is not the one of the link's key.
    #[serde(default)]
    pub unauthenticated_dropped: u64,
    /// Over a rate bound (cookie replies).
    #[serde(default)]
    pub rate_limited_dropped: u64,
    /// Refused for lack of room: address table, half-open handshakes, the
    /// queue of a link still handshaking.
    #[serde(default)]
    pub refused_dropped: u64,
}

/// One `--stats` line per second.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Snapshot {
    /// Since the stream started.
    pub t_ms: u64,
    /// The stream's id.
    pub stream: String,
    /// So far, as in [`Summary`].
    pub continuity: f64,
    /// Media buffered ahead of playback (contiguous from the next chunk due).
    pub buffer_ms: u64,
    /// Links that are up.
    pub neighbours: usize,
    /// Received over the last second.
    pub down_kbps: f64,
    /// Sent over the last second.
    pub up_kbps: f64,
    /// So far.
    pub chunks_played: u64,
    /// So far.
    pub chunks_missed: u64,
    /// Playback has started.
    pub playing: bool,
    /// Refused plugin actions by reason, since the stream started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refused_actions: BTreeMap<String, u64>,
    /// Plugins' own metrics, asked for this line.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: PluginMetrics,
    /// Datagrams the network layer refused so far (see [`NetCounters`]).
    #[serde(flatten, default)]
    pub net: NetCounters,
}

/// Nearest-rank percentile; `None` for no samples.
pub fn percentile(samples: &[u64], p: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuity_overhead_and_percentiles() {
        let s = StreamStats {
            chunks_played: 99,
            chunks_missed: 1,
            media_bytes: 1000,
            bytes_down: 1030,
            lag_us: (1..=100).map(|i| i * 1000).collect(),
            ..Default::default()
        };
        assert_eq!(s.continuity(), 0.99);
        assert!((s.overhead() - 0.03).abs() < 1e-9);
        assert_eq!(s.lag_percentile_ms(0.5), Some(50.0));
        assert_eq!(s.lag_percentile_ms(0.95), Some(95.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
