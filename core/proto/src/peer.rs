//! What peers of one stream say to each other, above the network layer.
//!
//! Control messages travel in an [`Envelope`] naming the stream and the
//! sender's peer id, so one socket serves any number of streams and a peer
//! is known by id even when its address changes. Media chunks travel on the
//! data channel as a small header, the publisher's signature and the media
//! bytes: every peer checks the signature before it plays or forwards a
//! chunk, so a peer cannot inject or alter media.

use crate::identity::{Identity, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use p2ner_plugin_api::Link;

/// Bumped on any incompatible change of [`Envelope`] or the chunk layout.
pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// A control message between two peers of one stream.
pub struct Envelope {
    /// [`VERSION`]; [`decode`] refuses any other.
    pub version: u8,
    /// The stream's id on the wire (a hash of its catalogue id).
    pub stream: u64,
    /// The sender's peer id.
    pub from: u64,
    /// What it says.
    pub msg: PeerMsg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// What one peer says to another, inside an [`Envelope`].
pub enum PeerMsg {
    /// "Be my neighbour": `up`/`down` is the link as the sender sees it.
    Hello {
        /// The sender sends media on this link.
        up: bool,
        /// The sender receives media on this link.
        down: bool,
    },
    /// The answer to a `Hello`: the link is open on both sides.
    Welcome,
    /// The sender closed the link.
    Bye,
    /// The sender changed the media direction of the link.
    SetLink {
        /// The sender sends media on this link.
        up: bool,
        /// The sender receives media on this link.
        down: bool,
    },
    /// Liveness and the sender's upload, sent when nothing else was sent to
    /// the neighbour for a while and at least every keepalive interval: a
    /// pull scheduler picks holders by what they can upload, which only
    /// they know. An older peer's `Ping` carries no advert and decodes as
    /// [`Advert::default`] (all unknown); an older peer reads a newer `Ping`
    /// as a plain one (postcard leaves the advert as unread trailing bytes).
    Ping(Advert),
    /// A message of the stream's overlay plugin, opaque here.
    Overlay(Vec<u8>),
    /// A message of the stream's scheduler plugin, opaque here.
    Scheduler(Vec<u8>),
}

/// What a peer advertises of its own upload, in its `Ping`.
///
/// Fields are encoded in order and only ever appended: decoding stops at
/// the end of the message, so a field an older sender did not write reads
/// as 0 (unknown), and fields a newer sender appended are left unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Advert {
    /// What its uplink can carry, bit/s (its cap, or the highest rate it
    /// measured; 0 unknown).
    pub capacity_bps: u64,
    /// `capacity_bps` is a configured cap, not an estimate.
    pub capped: bool,
    /// What it sent over its last second, all neighbours, bit/s.
    pub rate_bps: u64,
    /// How long its send queue takes to drain, µs.
    pub queued_us: u64,
}

/// Advert fields in encoding order; appending one means appending here
/// and in both impls below.
const ADVERT_FIELDS: usize = 4;

impl Serialize for Advert {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(ADVERT_FIELDS)?;
        t.serialize_element(&self.capacity_bps)?;
        t.serialize_element(&self.capped)?;
        t.serialize_element(&self.rate_bps)?;
        t.serialize_element(&self.queued_us)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Advert {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Advert;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an upload advert")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Advert, A::Error> {
                // The advert is the last thing in its envelope: running out
                // of bytes (an older sender) ends it, and what was not
                // written stays unknown.
                let mut a = Advert::default();
                let Ok(Some(v)) = seq.next_element() else {
                    return Ok(a);
                };
                a.capacity_bps = v;
                let Ok(Some(v)) = seq.next_element() else {
                    return Ok(a);
                };
                a.capped = v;
                let Ok(Some(v)) = seq.next_element() else {
                    return Ok(a);
                };
                a.rate_bps = v;
                if let Ok(Some(v)) = seq.next_element() {
                    a.queued_us = v;
                }
                Ok(a)
            }
        }
        d.deserialize_tuple(ADVERT_FIELDS, V)
    }
}

impl PeerMsg {
    /// `Hello` for a link as the sender sees it.
    pub fn hello(link: Link) -> Self {
        PeerMsg::Hello {
            up: link.upstream,
            down: link.downstream,
        }
    }
}

/// The link as the other side sees it.
pub fn mirror(up: bool, down: bool) -> Link {
    Link {
        upstream: down,
        downstream: up,
    }
}

/// The envelope as postcard bytes (one reliable or unreliable message).
pub fn encode(env: &Envelope) -> Vec<u8> {
    postcard::to_allocvec(env).expect("envelopes always serialise")
}

/// The envelope in `bytes`, if they are one of this [`VERSION`].
pub fn decode(bytes: &[u8]) -> Option<Envelope> {
    let env: Envelope = postcard::from_bytes(bytes).ok()?;
    (env.version == VERSION).then_some(env)
}

/// The stream and sender an envelope names, read without decoding the
/// message: what a carrier needs to route or rate-limit it before paying
/// for the whole decode (`None` for another version or a short header).
pub fn peek(bytes: &[u8]) -> Option<(u64, u64)> {
    let ((version, stream, from), _) = postcard::take_from_bytes::<(u8, u64, u64)>(bytes).ok()?;
    (version == VERSION).then_some((stream, from))
}

/// A chunk's fields other than its sequence number and media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Media time since the input started.
    pub pts_us: u64,
    /// Media the chunk holds.
    pub duration_us: u32,
    /// The chunk starts with a keyframe.
    pub keyframe: bool,
    /// When the publisher captured it (wall clock, microseconds since the Unix epoch).
    pub capture_us: u64,
}

const HEADER_LEN: usize = 1 + 1 + 8 + 4 + 8;
const SIG_LEN: usize = 64;

/// Signs and lays out a chunk for the data channel.
pub fn seal_chunk(key: &Identity, stream: u64, seq: u64, h: &ChunkHeader, media: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + SIG_LEN + media.len());
    out.push(VERSION);
    out.push(h.keyframe as u8);
    out.extend_from_slice(&h.pts_us.to_le_bytes());
    out.extend_from_slice(&h.duration_us.to_le_bytes());
    out.extend_from_slice(&h.capture_us.to_le_bytes());
    let sig = key.sign(&signed_bytes(stream, seq, &out[..HEADER_LEN], media));
    out.extend_from_slice(&sig.0);
    out.extend_from_slice(media);
    out
}

/// Why a chunk from the data channel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Too short, another version, or a bad keyframe flag.
    Malformed,
    /// The publisher's signature does not match (forged or altered).
    BadSignature,
}

/// Checks a sealed chunk; returns its header and where its media starts.
pub fn open_chunk(
    key: &PublicKey,
    stream: u64,
    seq: u64,
    data: &[u8],
) -> Result<(ChunkHeader, usize), ChunkError> {
    if data.len() < HEADER_LEN + SIG_LEN || data[0] != VERSION || data[1] > 1 {
        return Err(ChunkError::Malformed);
    }
    let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
    let header = ChunkHeader {
        keyframe: data[1] == 1,
        pts_us: u64_at(2),
        duration_us: u32::from_le_bytes(data[10..14].try_into().expect("4 bytes")),
        capture_us: u64_at(14),
    };
    let sig = Signature(
        data[HEADER_LEN..HEADER_LEN + SIG_LEN]
            .try_into()
            .expect("64 bytes"),
    );
    let media = &data[HEADER_LEN + SIG_LEN..];
    if !key.verify(&signed_bytes(stream, seq, &data[..HEADER_LEN], media), &sig) {
        return Err(ChunkError::BadSignature);
    }
    Ok((header, HEADER_LEN + SIG_LEN))
}

/// Stream and sequence number are signed too, so a valid chunk cannot be
/// replayed under another number or in another stream.
fn signed_bytes(stream: u64, seq: u64, header: &[u8], media: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(16 + header.len() + media.len());
    msg.extend_from_slice(&stream.to_le_bytes());
    msg.extend_from_slice(&seq.to_le_bytes());
    msg.extend_from_slice(header);
    msg.extend_from_slice(media);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_reads_what_decode_would() {
        let env = Envelope {
            version: VERSION,
            stream: u64::MAX - 3,
            from: 77,
            msg: PeerMsg::Overlay(vec![1; 900]),
        };
        let bytes = encode(&env);
        assert_eq!(peek(&bytes), Some((u64::MAX - 3, 77)));
        assert_eq!(peek(&bytes[..3]), None);
        let mut other = bytes.clone();
        other[0] = VERSION.wrapping_add(1);
        assert_eq!(peek(&other), None);
    }

    #[test]
    fn sealed_chunks_open_only_unchanged_and_in_place() {
        let key = Identity::from_secret([7; 32]);
        let public = key.public_key();
        let h = ChunkHeader {
            pts_us: 1_000,
            duration_us: 100_000,
            keyframe: true,
            capture_us: 42,
        };
        let sealed = seal_chunk(&key, 9, 5, &h, b"media");
        let (got, at) = open_chunk(&public, 9, 5, &sealed).unwrap();
        assert_eq!((got, &sealed[at..]), (h, &b"media"[..]));
        assert_eq!(
            open_chunk(&public, 9, 6, &sealed),
            Err(ChunkError::BadSignature)
        );
        assert_eq!(
            open_chunk(&public, 8, 5, &sealed),
            Err(ChunkError::BadSignature)
        );
        let mut forged = sealed.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_chunk(&public, 9, 5, &forged),
            Err(ChunkError::BadSignature)
        );
        let other = Identity::from_secret([8; 32]).public_key();
        assert_eq!(
            open_chunk(&other, 9, 5, &sealed),
            Err(ChunkError::BadSignature)
        );
        for len in 0..HEADER_LEN + SIG_LEN {
            assert_eq!(
                open_chunk(&public, 9, 5, &sealed[..len]),
                Err(ChunkError::Malformed)
            );
        }
    }

    /// The first release's `Ping`, as an older peer encodes it.
    #[derive(Serialize, Deserialize)]
    enum OldMsg {
        Hello { up: bool, down: bool },
        Welcome,
        Bye,
        SetLink { up: bool, down: bool },
        Ping,
    }

    #[test]
    fn adverts_cross_versions_both_ways() {
        let advert = Advert {
            capacity_bps: 8_000_000,
            capped: true,
            rate_bps: 3_000_000,
            queued_us: 12_345,
        };
        let env = Envelope {
            version: VERSION,
            stream: 1,
            from: 2,
            msg: PeerMsg::Ping(advert),
        };
        assert_eq!(decode(&encode(&env)), Some(env.clone()));

        // An older peer's Ping decodes, its advert unknown.
        let old = postcard::to_allocvec(&(VERSION, 1u64, 2u64, OldMsg::Ping)).unwrap();
        let got = decode(&old).unwrap();
        assert_eq!(got.msg, PeerMsg::Ping(Advert::default()));
        // A sender that wrote only some fields: the rest read as unknown.
        let mut partial = old.clone();
        partial.extend(postcard::to_allocvec(&(8_000_000u64, true)).unwrap());
        assert_eq!(
            decode(&partial).unwrap().msg,
            PeerMsg::Ping(Advert {
                capacity_bps: 8_000_000,
                capped: true,
                ..Advert::default()
            })
        );
        // A newer sender's appended fields are left unread.
        let mut newer = encode(&env);
        newer.extend(postcard::to_allocvec(&77u64).unwrap());
        assert_eq!(decode(&newer), Some(env.clone()));

        // An older peer reads a newer Ping as a plain one.
        let (v, s, f, m): (u8, u64, u64, OldMsg) = postcard::from_bytes(&encode(&env)).unwrap();
        assert_eq!((v, s, f), (VERSION, 1, 2));
        assert!(matches!(m, OldMsg::Ping));
        let _ = (OldMsg::Welcome, OldMsg::Bye);
    }

    #[test]
    fn envelopes_round_trip_and_other_versions_are_refused() {
        let env = Envelope {
            version: VERSION,
            stream: 1,
            from: 2,
            msg: PeerMsg::Scheduler(vec![1, 2, 3]),
        };
        assert_eq!(decode(&encode(&env)), Some(env.clone()));
        let old = Envelope { version: 0, ..env };
        assert_eq!(decode(&encode(&old)), None);
        assert_eq!(decode(&[0xff; 3]), None);
    }
}
