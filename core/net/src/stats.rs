//! Counters for every neighbour and in total, serialisable for the engine's
//! JSON lines / Prometheus export.
//!
//! Counters are plain integers updated under the endpoint lock; a snapshot
//! ([`NetStats`]) is taken on demand. Counters of forgotten peers are folded
//! into a "retired" total so totals never go backwards.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Traffic of one channel in one direction pair.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ChannelStats {
    /// Bytes sent, headers included.
    pub bytes_sent: u64,
    /// Bytes received, headers included.
    pub bytes_recv: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_recv: u64,
    /// What the application got of `bytes_recv`: chunk fragments' bytes on
    /// the data channel, message payloads on the control channel. The rest
    /// is what the wire cost: acks (`acks_recv`) and framing (headers,
    /// sealing).
    pub payload_recv: u64,
    /// Bytes of acks among `bytes_recv` (their share of a sealed datagram
    /// included).
    pub acks_recv: u64,
}

impl ChannelStats {
    fn add(&mut self, o: &ChannelStats) {
        self.bytes_sent += o.bytes_sent;
        self.bytes_recv += o.bytes_recv;
        self.datagrams_sent += o.datagrams_sent;
        self.datagrams_recv += o.datagrams_recv;
        self.payload_recv += o.payload_recv;
        self.acks_recv += o.acks_recv;
    }
}

/// One neighbour (or, in [`NetStats::total`], all of them).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PeerStats {
    /// The control channel.
    pub control: ChannelStats,
    /// The data channel.
    pub data: ChannelStats,
    /// Smoothed RTT (in the total: mean over peers with a sample).
    pub rtt_us: u64,
    /// RTT variation.
    pub rttvar_us: u64,
    /// The retransmission timeout now.
    pub rto_us: u64,
    /// Control retransmissions.
    pub retransmissions: u64,
    /// Data fragments sent again after being declared lost.
    pub data_retransmissions: u64,
    /// Data datagrams declared lost.
    pub data_lost: u64,
    /// Of those, acked later after all (a late ack, not a loss): what widens
    /// the loss detection's slack.
    pub data_spurious: u64,
    /// data_lost / data datagrams sent.
    pub loss_rate: f64,
    /// Reliable messages sent (once each, however many tries).
    pub reliable_sent: u64,
    /// Reliable messages acknowledged.
    pub reliable_acked: u64,
    /// Reliable messages given up after max_tries.
    pub reliable_failed: u64,
    /// Reliable messages received again and not delivered again.
    pub duplicates_suppressed: u64,
    /// Chunks whose every fragment was sent.
    pub chunks_sent: u64,
    /// Chunks reassembled.
    pub chunks_recv: u64,
    /// Chunks given up by the sender (too many tries / too old).
    pub chunks_abandoned: u64,
    /// Malformed datagrams from this address.
    pub malformed_dropped: u64,
    /// Events dropped because the consumer was slow.
    pub events_dropped: u64,
    /// LEDBAT's congestion window.
    pub cwnd_bytes: u64,
    /// Estimated sending rate (window / RTT, bounded by the upload cap).
    pub rate_bps: u64,
    /// The queuing delay LEDBAT estimates.
    pub queuing_delay_us: u64,
    /// Data sent and not yet acknowledged.
    pub inflight_bytes: u64,
    /// Data queued and not yet sent.
    pub queued_bytes: u64,
    /// Chunks dropped unsent from the queue because their deadline
    /// ([`crate::Endpoint::send_chunk_by`]) passed before their first fragment
    /// reached the socket.
    pub expired_chunks: u64,
    /// Data fragments received again after we already had them (spurious or
    /// late retransmissions: upload the sender wasted).
    pub duplicate_fragments: u64,
}

impl PeerStats {
    pub(crate) fn add_counters(&mut self, o: &PeerStats) {
        self.control.add(&o.control);
        self.data.add(&o.data);
        self.retransmissions += o.retransmissions;
        self.data_retransmissions += o.data_retransmissions;
        self.data_lost += o.data_lost;
        self.data_spurious += o.data_spurious;
        self.reliable_sent += o.reliable_sent;
        self.reliable_acked += o.reliable_acked;
        self.reliable_failed += o.reliable_failed;
        self.duplicates_suppressed += o.duplicates_suppressed;
        self.chunks_sent += o.chunks_sent;
        self.chunks_recv += o.chunks_recv;
        self.chunks_abandoned += o.chunks_abandoned;
        self.malformed_dropped += o.malformed_dropped;
        self.events_dropped += o.events_dropped;
        self.expired_chunks += o.expired_chunks;
        self.duplicate_fragments += o.duplicate_fragments;
    }

    pub(crate) fn finish_loss_rate(&mut self) {
        self.loss_rate = if self.data.datagrams_sent == 0 {
            0.0
        } else {
            self.data_lost as f64 / self.data.datagrams_sent as f64
        };
    }
}

/// Why datagrams were dropped before reaching any peer state.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DropStats {
    /// Shorter than their header or declared length.
    pub truncated: u64,
    /// Not ours (wrong magic).
    pub bad_magic: u64,
    /// Of a protocol version we do not speak.
    pub unknown_version: u64,
    /// Longer than the configured maximum.
    pub oversized: u64,
    /// Length field disagrees with the datagram.
    pub bad_length: u64,
    /// Unknown channel or packet type.
    pub unknown_type: u64,
    /// Fields out of range.
    pub invalid: u64,
    /// Fragments inconsistent with earlier ones of the same chunk.
    pub bad_fragment: u64,
    /// Test-only injected loss (NetConfig::drop_rate / send_drop_rate).
    pub injected_recv: u64,
    /// Sends dropped by the same test knob.
    pub injected_send: u64,
    /// Datagrams from new addresses refused because of the peer limit.
    pub peer_limit: u64,
    /// Version rejects we sent.
    pub version_rejects_sent: u64,
    /// Version rejects we got.
    pub version_rejects_received: u64,
    /// Incomplete chunks dropped (timeout or memory budget).
    pub reassembly_expired: u64,
    /// Datagrams that were not sealed by an established link or whose tag
    /// did not verify (forged, or from a peer that lost its link).
    pub unauthenticated: u64,
    /// Sealed datagrams whose counter was seen before or is too old.
    pub replayed: u64,
    /// Handshake initiations with a cookie not issued to their address.
    pub bad_cookie: u64,
    /// Handshake packets that match no handshake of ours.
    pub handshake_unexpected: u64,
    /// Handshake messages that did not verify.
    pub handshake_failed: u64,
    /// Both sides started: the other handshake won.
    pub handshake_collisions: u64,
    /// Handshakes this endpoint started.
    pub handshakes_started: u64,
    /// Links established, either side.
    pub handshakes_completed: u64,
    /// Our handshakes given up (no answer after `max_tries`).
    pub handshakes_timed_out: u64,
    /// Half-open handshakes dropped because the table was full.
    pub handshake_limit: u64,
    /// Cookie replies sent.
    pub cookies_sent: u64,
    /// Cookie requests not answered (over the per-second budget).
    pub rate_limited: u64,
    /// Datagrams dropped while waiting for a link (its queue was full).
    pub link_queue_full: u64,
    /// Links given up to make room for new ones.
    pub links_evicted: u64,
    /// Neighbour states given up to make room.
    pub peers_evicted: u64,
    /// Version rejects from addresses we were not handshaking with.
    pub version_rejects_ignored: u64,
    /// Sealed datagrams from an address whose handshake waits for its last
    /// message (`Fin` lost or late; the initiator resends it).
    pub before_fin: u64,
    /// Packets that rode in another packet's sealed datagram (acks, data
    /// acks, control messages to the same peer) instead of one of their own.
    pub frames_shared: u64,
    /// Datagrams from blocked addresses ([`crate::NetState::block`]).
    pub blocked: u64,
}

impl DropStats {
    /// Every drop that means "not a valid datagram".
    pub fn malformed(&self) -> u64 {
        self.truncated
            + self.bad_magic
            + self.unknown_version
            + self.oversized
            + self.bad_length
            + self.unknown_type
            + self.invalid
            + self.bad_fragment
    }

    /// Datagrams refused for authentication: unsealed, forged, replayed,
    /// bad cookies and handshake messages that did not verify.
    pub fn unauthenticated_total(&self) -> u64 {
        self.unauthenticated
            + self.replayed
            + self.bad_cookie
            + self.handshake_failed
            + self.handshake_unexpected
            + self.version_rejects_ignored
    }

    /// Datagrams refused for lack of room (table bounds).
    pub fn refused(&self) -> u64 {
        self.peer_limit + self.handshake_limit + self.link_queue_full + self.blocked
    }
}

/// A snapshot of the endpoint's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetStats {
    /// All neighbours together.
    pub total: PeerStats,
    /// Each neighbour.
    pub peers: BTreeMap<SocketAddr, PeerStats>,
    /// Datagrams dropped before any peer state, by reason.
    pub drops: DropStats,
    /// Total malformed datagrams dropped (all reasons in `drops` that mean
    /// "not a valid datagram").
    pub malformed_dropped: u64,
    /// The configured upload cap.
    pub upload_cap_bps: Option<u64>,
    /// Bytes held by incomplete chunks now.
    pub reassembly_bytes: u64,
}
