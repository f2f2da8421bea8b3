//! The `push` protocol on the wire: announcements, buffer maps, repair
//! requests, and the substream subscriptions that keep pushes duplicate-free.
//!
//! Every message starts with a kind byte. Kinds 1–3 are the first version's
//! and keep their shape; 4–6 were added with substreams. A peer of the first
//! version ignores the new kinds (its decoder yields `None`), so it still
//! sees maps and announcements.

use p2ner_plugin_api::seqmap;

pub(crate) const HAVE: u8 = 1;
pub(crate) const MAP: u8 = 2;
pub(crate) const REQUEST: u8 = 3;
pub(crate) const INFO: u8 = 4;
pub(crate) const SUBSCRIBE: u8 = 5;
pub(crate) const REFUSE: u8 = 6;

/// Seqs per HAVE or REQUEST message: 1 + 8 + 2 + 120 * 8 = 971 bytes.
pub const MAX_SEQS: usize = 120;
/// Bits per MAP: 21 + 875 bytes.
pub const MAX_BITS: usize = 7000;
/// Substreams at most: a subscription is a 16-bit mask.
pub const MAX_STRIPES: usize = 16;
/// "Not connected to the publisher" in a depth advert.
pub const NO_DEPTH: u8 = u8::MAX;
/// "No play-out position yet" on the wire.
const NO_PLAYOUT: u64 = u64::MAX;

/// A decoded message of this scheduler's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// New chunks at the sender, and its play-out position (if playing).
    Have {
        /// The next chunk its player needs; `None` before it plays.
        playout: Option<u64>,
        /// Chunks it got since its last announcement.
        seqs: Vec<u64>,
    },
    /// Everything the sender holds (its newest `MAX_BITS` at most).
    Map {
        /// The next chunk its player needs; `None` before it plays.
        playout: Option<u64>,
        /// Every chunk it holds.
        seqs: Vec<u64>,
    },
    /// Repair: please send these chunks.
    Request(Vec<u64>),
    /// What the sender can forward: its upload (kbit/s, `u32::MAX` when not
    /// capped) and, per substream, how many hops it is from the publisher
    /// ([`NO_DEPTH`]: not connected), so that children pick parents that
    /// reach the publisher and never one below themselves.
    Info {
        /// What it can upload, kbit/s.
        upload_kbps: u32,
        /// Hops from the publisher, one per substream.
        depths: Vec<u8>,
    },
    /// Push me the substreams in `mask` (bit `s`: chunks `seq % stripes == s`),
    /// and only those; replaces the previous subscription.
    Subscribe {
        /// Bit `s`: substream `s`.
        mask: u16,
    },
    /// The substreams in `mask` will not be served (no upload left for
    /// them): subscribe elsewhere.
    Refuse {
        /// Bit `s`: substream `s`.
        mask: u16,
    },
}

fn playout_word(p: Option<u64>) -> u64 {
    p.unwrap_or(NO_PLAYOUT)
}

fn playout_of(word: u64) -> Option<u64> {
    (word != NO_PLAYOUT).then_some(word)
}

fn put_seqs(msg: &mut Vec<u8>, seqs: &[u64]) {
    debug_assert!(seqs.len() <= MAX_SEQS);
    msg.extend_from_slice(&(seqs.len() as u16).to_le_bytes());
    for s in seqs {
        msg.extend_from_slice(&s.to_le_bytes());
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn seqs_of(rest: &[u8]) -> Option<Vec<u64>> {
    let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    if n > MAX_SEQS || rest.len() != 2 + n * 8 {
        return None;
    }
    Some(
        rest[2..]
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// A HAVE or REQUEST of at most [`MAX_SEQS`] seqs.
pub fn seqs_message(have: bool, playout: Option<u64>, seqs: &[u64]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(11 + seqs.len() * 8);
    if have {
        msg.push(HAVE);
        msg.extend_from_slice(&playout_word(playout).to_le_bytes());
    } else {
        msg.push(REQUEST);
    }
    put_seqs(&mut msg, seqs);
    msg
}

/// A MAP of what `have` holds from `base`, `bits` long (at most [`MAX_BITS`]).
pub fn map_message(
    playout: Option<u64>,
    have: &std::collections::BTreeSet<u64>,
    base: u64,
    bits: usize,
) -> Vec<u8> {
    let mut msg = vec![MAP];
    msg.extend_from_slice(&playout_word(playout).to_le_bytes());
    seqmap::write_map(&mut msg, have, base, bits.min(MAX_BITS));
    msg
}

impl Message {
    /// Encodes the message (HAVE, MAP and REQUEST through the helpers above
    /// for the sizes they bound; this is for the small control kinds).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Have { playout, seqs } => seqs_message(true, *playout, seqs),
            Message::Request(seqs) => seqs_message(false, None, seqs),
            Message::Map { playout, seqs } => {
                let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
                let base = set.first().copied().unwrap_or(0);
                let bits = set.last().map_or(0, |l| (l - base + 1) as usize);
                map_message(*playout, &set, base, bits)
            }
            Message::Info {
                upload_kbps,
                depths,
            } => {
                let depths = &depths[..depths.len().min(MAX_STRIPES)];
                let mut msg = vec![INFO];
                msg.extend_from_slice(&upload_kbps.to_le_bytes());
                msg.push(depths.len() as u8);
                msg.extend_from_slice(depths);
                msg
            }
            Message::Subscribe { mask } => {
                let mut msg = vec![SUBSCRIBE];
                msg.extend_from_slice(&mask.to_le_bytes());
                msg
            }
            Message::Refuse { mask } => {
                let mut msg = vec![REFUSE];
                msg.extend_from_slice(&mask.to_le_bytes());
                msg
            }
        }
    }
}

/// Decodes a message; anything malformed (or oversized) yields `None`.
pub fn decode(msg: &[u8]) -> Option<Message> {
    let (&kind, rest) = msg.split_first()?;
    let mask = |rest: &[u8]| -> Option<u16> {
        (rest.len() == 2).then(|| u16::from_le_bytes([rest[0], rest[1]]))
    };
    match kind {
        HAVE => Some(Message::Have {
            playout: playout_of(u64_at(rest, 0)?),
            seqs: seqs_of(&rest[8..])?,
        }),
        REQUEST => Some(Message::Request(seqs_of(rest)?)),
        MAP => Some(Message::Map {
            playout: playout_of(u64_at(rest, 0)?),
            seqs: seqmap::read_map(rest.get(8..)?, MAX_BITS)?,
        }),
        INFO => {
            let upload_kbps = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
            let n = *rest.get(4)? as usize;
            let depths = rest.get(5..)?;
            (n <= MAX_STRIPES && depths.len() == n).then(|| Message::Info {
                upload_kbps,
                depths: depths.to_vec(),
            })
        }
        SUBSCRIBE => Some(Message::Subscribe { mask: mask(rest)? }),
        REFUSE => Some(Message::Refuse { mask: mask(rest)? }),
        _ => None,
    }
}
