//! The p2ner network layer: one UDP socket per client carrying a reliable
//! control channel and a congestion-controlled data channel.
//!
//! - [`wire`]: the versioned datagram codec (magic, version, channel, length);
//!   everything malformed is dropped and counted.
//! - [`rtt`], [`reliable`]: RFC 6298 timers and duplicate suppression for
//!   critical control messages; fire-and-forget messages for the rest.
//! - [`fragment`], [`ledbat`], [`pacer`]: media chunks cut into datagrams,
//!   sent under a per-neighbour LEDBAT window, paced, under one upload cap.
//! - [`proto`]: all of the above as one sans-IO state machine
//!   ([`NetState`]): datagrams, timers and API calls in; datagrams, events
//!   and the next timeout out. Time is a parameter, so a simulator can
//!   drive it on simulated time.
//! - [`endpoint`]: the tokio shell around it: socket, clock, one driver task.
//! - [`stats`]: per-neighbour and total counters.
//!
//! Control payloads are bytes; [`encode`] / [`decode`] carry serde types with
//! postcard.

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod fragment;
pub mod ledbat;
pub mod pacer;
pub mod proto;
pub mod reliable;
pub mod rtt;
pub mod stats;
pub mod wire;

mod rng;

pub use auth::{peer_id_of, StaticKey};
pub use config::NetConfig;
pub use endpoint::{Capacity, Endpoint, Event, Events, Upload};
pub use error::{DecodeMessageError, SendError};
pub use proto::{Datagrams, NetEvent, NetState, SendId, Transmit};
pub use stats::{ChannelStats, DropStats, NetStats, PeerStats};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

/// Serialize a typed control message (postcard).
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(msg).expect("postcard serialises to a Vec"))
}

/// Deserialize a typed control message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeMessageError> {
    Ok(postcard::from_bytes(bytes)?)
}

/// Decode one datagram as a receiver would, for fuzzing: must never panic.
/// A datagram that decodes must re-encode to the same bytes and must go
/// through reassembly without trouble. Returns whether it decoded.
#[cfg(any(test, fuzzing, feature = "fuzz"))]
pub fn fuzz_decode(data: &[u8]) -> bool {
    let Ok(p) = wire::decode(data, 65_535) else {
        return false;
    };
    let mut out = Vec::new();
    wire::encode_version(&p, data[2], &mut out);
    if data[3] != wire::CH_META {
        assert_eq!(out, data, "decoded datagram re-encodes identically");
    }
    if let wire::Packet::Data(h, payload) = p {
        let mut r = fragment::Reassembler::new(1 << 16, 1 << 16, 1_000_000);
        let _ = r.insert(0, 0u8, &h, payload);
    }
    // A sealed datagram's ciphertext as if it were the plaintext the frame
    // decoder meets after the tag verified: never a panic, and each frame
    // re-encodes to the bytes it came from.
    if let wire::Packet::Sealed { ciphertext, .. } = p {
        let mut rest = ciphertext;
        for f in wire::Frames::new(ciphertext) {
            let Ok((pkt, used)) = f else { break };
            let mut enc = Vec::new();
            wire::encode(&pkt, &mut enc);
            let mut frame = Vec::new();
            assert!(wire::encode_frame(&enc, used < rest.len(), &mut frame));
            assert_eq!(frame, rest[..used], "frame re-encodes identically");
            rest = &rest[used..];
        }
    }
    // The state machine, as a stranger's first datagram meets it: nothing
    // it answers may be larger than what it got (no amplification), and it
    // keeps no neighbour state for an unproven address. (Other channels are
    // refused unopened, before any state: not worth a key generation here.)
    if ![wire::CH_HANDSHAKE, wire::CH_SEALED, wire::CH_META].contains(&data[3]) {
        return true;
    }
    let mut net = NetState::new(NetConfig::default(), 1, 0);
    let from: std::net::SocketAddr = ([127, 0, 0, 9], 4000).into();
    net.handle_datagram(1, from, data);
    net.handle_timeout(10_000_000);
    while let Some(t) = net.poll_transmit(10_000_000) {
        assert!(
            t.bytes.len() <= data.len(),
            "answer larger than the question"
        );
    }
    assert_eq!(net.peer_count(), 0, "no state for an unproven address");
    true
}
