//! The glue between a [`Session`] and the network layer, written once for
//! the live driver and the simulator.
//!
//! Why one copy: a simulated run only predicts a real one if the session is
//! fed exactly as the real engine feeds it: the same uplink accounting, the
//! same capacities before each tick, the same chunk deadline, the same
//! treatment of a refused chunk or a failed reliable message. The live
//! driver carries transmissions over a tokio [`p2ner_net::Endpoint`], the
//! simulator over a [`p2ner_net::NetState`] on simulated time; both
//! implement [`Carrier`], and everything else here is shared.

use std::net::SocketAddr;

use bytes::Bytes;
use p2ner_net::{Event, NetStats, SendError};
use p2ner_plugin_api::Capacity;
use p2ner_proto::peer as wire;

use crate::stream::{
    OverheadParts, Session, SessionOutput, Summary, UplinkModel, CONTROL_OVERHEAD,
    DATAGRAM_OVERHEAD,
};

/// How long a chunk handed to the data channel may wait there before it
/// leaves (µs); past that it is dropped (and counted), never sent late.
pub const CHUNK_LEAVES_WITHIN_US: u64 = 500_000;

/// What a session needs from the network layer. Each method does what the
/// `p2ner_net::Endpoint` method of the same name does; errors that the
/// session cannot act on at once are reported later (a reliable message that
/// fails comes back as [`Session::on_unreachable`] through the carrier's own
/// event path).
pub trait Carrier {
    /// What the data channel towards `to` can take now.
    fn capacity(&mut self, to: SocketAddr) -> p2ner_net::Capacity;
    /// The shared uplink.
    fn upload(&mut self) -> p2ner_net::Upload;
    /// Largest datagram (our header included), to charge fragments.
    fn max_payload(&self) -> usize;
    /// A critical control message; its failure ends in `on_unreachable`.
    fn send_reliable(&mut self, to: SocketAddr, payload: Bytes);
    /// A fire-and-forget control message (announcements, which the next one
    /// replaces).
    fn send_unreliable(&mut self, to: SocketAddr, payload: Bytes) -> Result<(), SendError>;
    /// A chunk that must leave within `within_us` or not at all.
    fn send_chunk_by(
        &mut self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        within_us: u64,
    ) -> Result<(), SendError>;
    /// Answer a request (peers serve none: the answer is empty).
    fn respond(&mut self, to: SocketAddr, id: u64, payload: Bytes);
    /// The session wants more candidate neighbours.
    fn want_peers(&mut self, count: u32);
    /// The session dropped a neighbour.
    fn forget(&mut self, addr: SocketAddr);
}

/// What happens before every session tick: the uplink as the plugins see it
/// (the model, lengthened by what the data channel really holds) and each
/// neighbour's capacity as the data channel reports it.
pub fn before_tick(
    session: &mut Session,
    uplink: &mut UplinkModel,
    net: &mut impl Carrier,
    now: u64,
) {
    uplink.observed(now, net.upload().queued_bytes);
    session.set_upload(uplink.upload(now));
    for addr in session.neighbour_addrs() {
        let c = net.capacity(addr);
        session.set_capacity(
            addr,
            Capacity {
                can_send_bytes: c.can_send_bytes,
                rate_bps: c.rate_bps,
                rtt_us: c.rtt_us,
            },
        );
    }
}

/// Hands the session's transmissions to the carrier, charging each to the
/// uplink model; returns the chunks the data channel refused (no room).
pub fn flush(
    session: &mut Session,
    uplink: &mut UplinkModel,
    net: &mut impl Carrier,
    stream: u64,
    now: u64,
) -> u64 {
    let mut refused = 0;
    // Payload bytes per fragment, as the network layer splits chunks.
    let per_fragment = (net.max_payload() as u64)
        .saturating_sub(p2ner_net::wire::DATA_OVERHEAD as u64)
        .max(1);
    for t in session.drain() {
        match t {
            SessionOutput::SendMessage {
                to,
                bytes,
                reliable,
            } => {
                uplink.sent(now, bytes.len() as u64 + CONTROL_OVERHEAD);
                if reliable {
                    net.send_reliable(to, Bytes::from(bytes));
                } else if let Err(e) = net.send_unreliable(to, Bytes::from(bytes)) {
                    tracing::debug!(%to, "message not sent: {e}");
                }
            }
            SessionOutput::SendChunk { to, seq, data } => {
                let len = data.len() as u64;
                uplink.sent(
                    now,
                    len + len.div_ceil(per_fragment).max(1) * DATAGRAM_OVERHEAD,
                );
                match net.send_chunk_by(to, stream, seq, data, CHUNK_LEAVES_WITHIN_US) {
                    Ok(()) => {}
                    Err(SendError::WouldBlock) => refused += 1,
                    Err(e) => tracing::debug!(%to, seq, "chunk not sent: {e}"),
                }
            }
            SessionOutput::WantPeers { count } => net.want_peers(count),
            SessionOutput::ForgetPeer { addr } => net.forget(addr),
        }
    }
    refused
}

/// Hands one network event to the session (`stream`: the stream's wire id;
/// messages and chunks of other streams are not this session's).
pub fn deliver(session: &mut Session, stream: u64, now: u64, ev: Event, net: &mut impl Carrier) {
    match ev {
        Event::Message { from, payload } => {
            if let Some(env) = wire::decode(&payload) {
                if env.stream == stream {
                    session.on_message(now, from, env, payload.len());
                }
            }
        }
        Event::Chunk {
            from,
            stream: s,
            seq,
            data,
        } => {
            if s == stream {
                session.on_chunk(now, from, seq, data);
            }
        }
        // Peers do not serve requests; say so instead of letting the asker
        // time out.
        Event::Request { from, id, .. } => net.respond(from, id, Bytes::new()),
    }
}

/// The run's summary in whole datagrams (framing, acknowledgements and
/// retransmissions included) when the network layer's counters are this
/// stream's alone (`net`); the overhead follows from what was received.
pub fn finish_summary(summary: &mut Summary, net: Option<&NetStats>) {
    if let Some(net) = net {
        let t = &net.total;
        summary.bytes_down = t.control.bytes_recv + t.data.bytes_recv;
        summary.bytes_up = t.control.bytes_sent + t.data.bytes_sent;
        if summary.media_bytes > 0 {
            let m = summary.media_bytes as f64;
            let (d, c) = (&t.data, &t.control);
            let framing = (d.bytes_recv.saturating_sub(d.payload_recv + d.acks_recv))
                + (c.bytes_recv.saturating_sub(c.payload_recv + c.acks_recv));
            summary.overhead_parts = OverheadParts {
                framing: framing as f64 / m,
                acks: (d.acks_recv + c.acks_recv) as f64 / m,
                messages: c.payload_recv as f64 / m,
                chunks: d.payload_recv.saturating_sub(summary.media_bytes) as f64 / m,
            };
        }
    }
    if summary.media_bytes > 0 {
        summary.overhead = summary.bytes_down.saturating_sub(summary.media_bytes) as f64
            / summary.media_bytes as f64;
    }
}
