//! The control-channel messages between clients and a server.
//!
//! Every message is `[version: u8][postcard body]` and must fit one datagram
//! ([`MAX_MESSAGE`] bytes), so that the network layer never has to fragment
//! control traffic: browse results and peer samples are paged to fit, and
//! stream parameters are bounded (see `p2ner_server::Bounds`).
//!
//! Changes to a stream (register, update, remove, publisher heartbeat) are
//! [`Signed`] by the publisher's key with a strictly increasing counter, so
//! the server can tell the owner from everyone else and refuse replays.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::identity::{hex, Identity, PublicKey, Signature};

/// Version byte in front of every message; a server answers a message of
/// another version with [`ErrorCode::Version`] instead of guessing.
pub const PROTO_VERSION: u8 = 1;

/// The largest encoded message (version byte included). The network layer
/// carries 1200-byte payloads; the rest is headroom for its own framing.
pub const MAX_MESSAGE: usize = 1100;

/// A stream's id: 1 to 32 characters out of `[a-z0-9_-]`; by default 16 hex
/// digits derived from the publisher key and the title.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId(pub String);

impl StreamId {
    /// The longest id a server accepts.
    pub const MAX_LEN: usize = 32;

    /// The default id of a stream: the first 8 bytes of
    /// SHA-512(public key || title), in hex. The same publisher publishing
    /// the same title gets the same id back, so a restarted publisher finds
    /// its stream again.
    pub fn derive(key: &PublicKey, title: &str) -> Self {
        let mut h = Sha512::new();
        h.update(b"p2ner stream id\0");
        h.update(key.0);
        h.update(title.as_bytes());
        StreamId(hex(&h.finalize()[..8]))
    }

    /// 1 to [`StreamId::MAX_LEN`] characters out of `[a-z0-9_-]`.
    pub fn is_valid(&self) -> bool {
        !self.0.is_empty()
            && self.0.len() <= Self::MAX_LEN
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for StreamId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&str> for StreamId {
    fn from(s: &str) -> Self {
        StreamId(s.to_owned())
    }
}

/// A plugin a stream needs, as the subscriber will look it up: entry-point
/// name, version, and the parameters the publisher chose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    /// The entry-point name (`pull`, `mesh`).
    pub name: String,
    /// The component's version when the stream was published (semver).
    pub version: String,
    /// Its parameters, as the publisher chose them.
    pub params: BTreeMap<String, String>,
}

impl PluginRef {
    /// A reference without parameters.
    pub fn new(name: &str, version: &str) -> Self {
        PluginRef {
            name: name.to_owned(),
            version: version.to_owned(),
            params: BTreeMap::new(),
        }
    }
}

/// Everything a subscriber needs to build the stream's pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamParams {
    /// Shown in browses.
    pub title: String,
    /// Shown with `p2ner streams`; searched by a browse filter.
    pub description: String,
    /// The stream's bitrate.
    pub bitrate_kbps: u32,
    /// Media per chunk.
    pub chunk_ms: u32,
    /// What a subscriber buffers before it starts playing.
    pub buffer_ms: u32,
    /// The scheduler every peer loads.
    pub scheduler: PluginRef,
    /// The overlay every peer loads.
    pub overlay: PluginRef,
    /// The input's codec description (e.g. `h264+opus 1280x720@30`).
    pub input: String,
    /// The chunk container (e.g. `mpegts`).
    pub container: String,
}

/// Whether a stream's publisher is heartbeating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// The publisher heartbeats.
    Online,
    /// The publisher stopped heartbeating (or the server restarted and it has
    /// not heartbeated since); the stream expires if this lasts.
    Offline,
}

/// One stream in full, as a joining client receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream's id.
    pub id: StreamId,
    /// Who publishes it: only this key may change it.
    pub publisher: PublicKey,
    /// Where the publisher was last heard from (`None` until its first
    /// heartbeat reached this server).
    pub publisher_addr: Option<SocketAddr>,
    /// What a subscriber builds its pipeline from.
    pub params: StreamParams,
    /// Whether the publisher is heartbeating.
    pub liveness: Liveness,
    /// Live peers in the swarm.
    pub peers: u32,
}

/// One line of a browse page: small, so that a page holds several.
///
/// This is the wire form; frontends get plugin-api's `StreamSummary`, made
/// from it by the engine with the server's address added and the key in hex
/// (the ABI type must stay as it shipped, the wire type may follow
/// [`PROTO_VERSION`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// The stream's id.
    pub id: StreamId,
    /// Its title.
    pub title: String,
    /// Its publisher.
    pub publisher: PublicKey,
    /// Its scheduler's name.
    pub scheduler: String,
    /// Its overlay's name.
    pub overlay: String,
    /// Its bitrate.
    pub bitrate_kbps: u32,
    /// Live peers in the swarm.
    pub peers: u32,
    /// Whether the publisher is heartbeating.
    pub liveness: Liveness,
}

/// A live peer of a swarm, at the UDP address the server saw it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The id the peer joined with (random, never [`PUBLISHER_PEER_ID`] but for the publisher).
    pub peer_id: u64,
    /// Where the server heard it from: where its neighbours reach it.
    pub addr: SocketAddr,
    /// The stream's publisher (peer id [`PUBLISHER_PEER_ID`]); always in a
    /// sample while it is online, so the first joiner has someone to reach.
    pub publisher: bool,
}

/// The peer id under which the publisher appears in samples; peers may not
/// use it.
pub const PUBLISHER_PEER_ID: u64 = 0;

/// An operation only a stream's owner may perform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignedOp {
    /// Create the stream, or (same key) replace its parameters.
    Register {
        /// The stream's id (derived by default, see [`StreamId::derive`]).
        id: StreamId,
        /// Its parameters.
        params: StreamParams,
    },
    /// Replace the parameters of an existing stream.
    Update {
        /// The stream.
        id: StreamId,
        /// Its new parameters.
        params: StreamParams,
    },
    /// Delete the stream.
    Remove {
        /// The stream.
        id: StreamId,
    },
    /// "I am alive, at the address you see this from."
    Heartbeat {
        /// The stream.
        id: StreamId,
    },
}

impl SignedOp {
    /// The stream the operation is about.
    pub fn stream(&self) -> &StreamId {
        match self {
            SignedOp::Register { id, .. }
            | SignedOp::Update { id, .. }
            | SignedOp::Remove { id }
            | SignedOp::Heartbeat { id } => id,
        }
    }
}

/// A [`SignedOp`] with its proof: `sig` signs
/// `"p2ner signed op v1\0" || key || counter || postcard(op)`, and `counter`
/// must exceed every counter the server accepted from this key before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The publisher's key, which signed.
    pub key: PublicKey,
    /// Above every counter accepted from this key before (replay protection).
    pub counter: u64,
    /// What the owner asks for.
    pub op: SignedOp,
    /// The signature over domain, key, counter and operation.
    pub sig: Signature,
}

impl Signed {
    const DOMAIN: &'static [u8] = b"p2ner signed op v1\0";

    fn message(key: &PublicKey, counter: u64, op: &SignedOp) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(Self::DOMAIN);
        m.extend_from_slice(&key.0);
        m.extend_from_slice(&counter.to_le_bytes());
        m.extend_from_slice(&postcard::to_stdvec(op).expect("ops serialize"));
        m
    }

    /// Signs `op` with `identity` under `counter`.
    pub fn new(identity: &Identity, counter: u64, op: SignedOp) -> Self {
        let key = identity.public_key();
        let sig = identity.sign(&Self::message(&key, counter, &op));
        Signed {
            key,
            counter,
            op,
            sig,
        }
    }

    /// True if `sig` is `key`'s signature of this operation and counter.
    pub fn verify(&self) -> bool {
        self.key
            .verify(&Self::message(&self.key, self.counter, &self.op), &self.sig)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// What a client asks a server (one datagram, see [`encode`]).
pub enum Request {
    /// Boxed: it is several times larger than every other request.
    Signed(Box<Signed>),
    /// Add me (at the address you see) to the swarm; answer the stream's
    /// parameters and a sample of peers.
    Join {
        /// The stream to join.
        stream: StreamId,
        /// The joiner's peer id.
        peer_id: u64,
    },
    /// Another sample of peers (for a client that wants more than one
    /// [`Response::Joined`] held, or lost its neighbours).
    Peers {
        /// The stream.
        stream: StreamId,
        /// The asker's peer id.
        peer_id: u64,
    },
    /// Keeps a peer listed; re-adds it if the server forgot it (restart).
    PeerHeartbeat {
        /// The stream.
        stream: StreamId,
        /// The peer's id.
        peer_id: u64,
    },
    /// Leave the swarm now instead of expiring.
    Leave {
        /// The stream.
        stream: StreamId,
        /// The peer's id.
        peer_id: u64,
    },
    /// Streams whose id, title or description contains `filter`
    /// (case-insensitive), in id order, from position `offset`.
    Browse {
        /// Case-insensitive text to look for; empty: every stream.
        filter: String,
        /// Position of the first stream of the page.
        offset: u32,
    },
    /// One stream in full.
    Info {
        /// The stream.
        stream: StreamId,
    },
    /// The server's counters ([`ServerStats`]).
    Stats,
}

impl Request {
    /// Short name for logs and per-kind counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Signed(s) => match s.op {
                SignedOp::Register { .. } => "register",
                SignedOp::Update { .. } => "update",
                SignedOp::Remove { .. } => "remove",
                SignedOp::Heartbeat { .. } => "publisher_heartbeat",
            },
            Request::Join { .. } => "join",
            Request::Peers { .. } => "peers",
            Request::PeerHeartbeat { .. } => "peer_heartbeat",
            Request::Leave { .. } => "leave",
            Request::Browse { .. } => "browse",
            Request::Info { .. } => "info",
            Request::Stats => "stats",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// Why a server refused a request (in [`Response::Error`]).
pub enum ErrorCode {
    /// The request used another protocol version.
    Version,
    /// No such stream.
    NotFound,
    /// The stream belongs to another key.
    NotOwner,
    /// A signature did not verify.
    BadSignature,
    /// The counter was not above the last one accepted from this key.
    Replay,
    /// A field is malformed or over its bound.
    Invalid,
    /// A count bound was hit (streams per publisher, peers per stream, ...).
    Limit,
    /// The peer is listed under another address.
    AddressMismatch,
    /// The server failed (its database); try again later.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// A server's answer to one [`Request`].
pub enum Response {
    /// Done (update, remove, heartbeat, leave).
    Ok,
    /// The stream is registered under this id.
    Registered {
        /// The stream's id.
        id: StreamId,
    },
    /// Joined: the stream and a sample of peers to connect to.
    Joined {
        /// The stream in full.
        info: StreamInfo,
        /// A sample of its live peers (the publisher among them while it is online).
        peers: Vec<PeerEntry>,
    },
    /// Another sample of peers.
    Peers {
        /// The sample.
        peers: Vec<PeerEntry>,
    },
    /// One page of a browse.
    Page(Page),
    /// One stream in full.
    Info(StreamInfo),
    /// The server's counters.
    Stats(ServerStats),
    /// The request was refused.
    Error {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
}

impl Response {
    /// A [`Response::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// One page of a browse.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The streams of this page.
    pub items: Vec<StreamSummary>,
    /// Offset of the next page, if there is one.
    pub next: Option<u32>,
    /// Streams matching the filter in all.
    pub total: u32,
}

/// What a server counts, answered to [`Request::Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// Requests decoded and answered.
    pub requests: u64,
    /// Payloads that reached the server but did not decode as a request.
    pub malformed: u64,
    /// Requests dropped by the per-source rate limit.
    pub rate_limited: u64,
    /// Requests answered with an error.
    pub rejected: u64,
    /// Signed requests refused for a bad signature, a replay or a wrong owner.
    pub forged: u64,
    /// Datagrams the network layer dropped before they became requests
    /// (bad magic, version, length, ...).
    pub net_malformed: u64,
    /// Streams in the catalogue.
    pub streams: u32,
    /// Streams whose publisher is heartbeating.
    pub online_streams: u32,
    /// Live peers over all swarms.
    pub live_peers: u32,
}

/// Encodes a message with the version byte in front.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![PROTO_VERSION];
    postcard::to_io(msg, &mut out).expect("messages serialize");
    out
}

/// Why a payload was not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    Empty,
    /// Another protocol version (the byte it carried).
    Version(u8),
    /// Not a message of this version (or bytes after it).
    Malformed,
}

/// Decodes `[version][body]`; trailing bytes are malformed, not ignored.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let (&v, body) = payload.split_first().ok_or(DecodeError::Empty)?;
    if v != PROTO_VERSION {
        return Err(DecodeError::Version(v));
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(DecodeError::Malformed),
    }
}

/// Encoded size of a value (without the version byte).
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).expect("messages serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_valid_and_stable() {
        let key = Identity::from_secret([3; 32]).public_key();
        let a = StreamId::derive(&key, "cats");
        assert_eq!(a, StreamId::derive(&key, "cats"));
        assert_ne!(a, StreamId::derive(&key, "dogs"));
        assert_eq!(a.0.len(), 16);
        assert!(a.is_valid());
        assert!(!StreamId::from("Upper").is_valid());
        assert!(!StreamId::from("").is_valid());
        assert!(!StreamId("a".repeat(33)).is_valid());
    }

    #[test]
    fn signed_ops_verify_and_tampering_breaks_them() {
        let id = Identity::from_secret([4; 32]);
        let s = Signed::new(&id, 5, SignedOp::Remove { id: "abc".into() });
        assert!(s.verify());
        let mut t = s.clone();
        t.counter = 6;
        assert!(!t.verify());
        let mut t = s.clone();
        t.op = SignedOp::Remove { id: "abd".into() };
        assert!(!t.verify());
        let mut t = s;
        t.key = Identity::from_secret([5; 32]).public_key();
        assert!(!t.verify());
    }

    #[test]
    fn versioned_round_trip_and_garbage() {
        let req = Request::Browse {
            filter: "x".into(),
            offset: 3,
        };
        let bytes = encode(&req);
        assert_eq!(decode::<Request>(&bytes), Ok(req));
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(decode::<Request>(&other), Err(DecodeError::Version(9)));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode::<Request>(&trailing), Err(DecodeError::Malformed));
        assert_eq!(decode::<Request>(&[]), Err(DecodeError::Empty));
        // Random input never panics.
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..20_000 {
            let len = rng.usize(0..64);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if let Some(b) = buf.first_mut() {
                *b = PROTO_VERSION;
            }
            let _ = decode::<Request>(&buf);
        }
    }
}
