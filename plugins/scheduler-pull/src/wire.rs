//! The `pull` protocol on the wire: buffer maps, announcements, requests and
//! refusals, each carrying what the sender can upload.
//!
//! Every message starts with a kind byte. Kinds 1–3 are the first version's
//! (no capacity advert); they are still read, so a swarm can mix versions,
//! but no longer written.

use p2ner_plugin_api::seqmap;

const HAVE_V1: u8 = 1;
const MAP_V1: u8 = 2;
const REQUEST_V1: u8 = 3;
const HAVE: u8 = 4;
const MAP: u8 = 5;
const REQUEST: u8 = 6;
const REFUSE: u8 = 7;

/// Seqs per HAVE, REQUEST or REFUSE: keeps one message inside one datagram.
pub const MAX_SEQS: usize = 120;
/// Bits per MAP.
pub const MAX_BITS: usize = MAX_SEQS * 64;

/// What a peer says of its uplink, so that requesters spread their requests
/// by capacity instead of queueing behind the slowest holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// What it can upload, kbit/s; `u32::MAX`: no cap (plentiful).
    pub upload_kbps: u32,
    /// How long a request sent to it now would wait before its chunk leaves.
    pub queued_ms: u16,
}

/// A decoded message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Chunks the sender just got, and its upload advert.
    Have(Option<Advert>, Vec<u64>),
    /// The sender's whole buffer map, and its upload advert.
    Map(Option<Advert>, Vec<u64>),
    /// Requested seqs and how long the requester can wait for the most
    /// urgent of them (`u16::MAX`: not urgent).
    Request {
        /// How long the requester can wait.
        slack_ms: u16,
        /// The chunks it asks for.
        seqs: Vec<u64>,
    },
    /// Requests the holder will not serve in time: ask elsewhere.
    Refuse(Vec<u64>),
}

fn put_advert(msg: &mut Vec<u8>, a: Advert) {
    msg.extend_from_slice(&a.upload_kbps.to_le_bytes());
    msg.extend_from_slice(&a.queued_ms.to_le_bytes());
}

fn put_seqs(msg: &mut Vec<u8>, seqs: &[u64]) {
    debug_assert!(seqs.len() <= MAX_SEQS);
    msg.extend_from_slice(&(seqs.len() as u16).to_le_bytes());
    for s in seqs {
        msg.extend_from_slice(&s.to_le_bytes());
    }
}

/// A `Have` of `seqs`.
pub fn have(advert: Advert, seqs: &[u64]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(9 + seqs.len() * 8);
    msg.push(HAVE);
    put_advert(&mut msg, advert);
    put_seqs(&mut msg, seqs);
    msg
}

/// A `Map` of `have` from `base`, at most `bits` long.
pub fn map(
    advert: Advert,
    have: &std::collections::BTreeSet<u64>,
    base: u64,
    bits: usize,
) -> Vec<u8> {
    let mut msg = vec![MAP];
    put_advert(&mut msg, advert);
    seqmap::write_map(&mut msg, have, base, bits.min(MAX_BITS));
    msg
}

/// A `Request` for `seqs`.
pub fn request(slack_ms: u16, seqs: &[u64]) -> Vec<u8> {
    let mut msg = vec![REQUEST];
    msg.extend_from_slice(&slack_ms.to_le_bytes());
    put_seqs(&mut msg, seqs);
    msg
}

/// A `Refuse` of `seqs`.
pub fn refuse(seqs: &[u64]) -> Vec<u8> {
    let mut msg = vec![REFUSE];
    put_seqs(&mut msg, seqs);
    msg
}

fn get_advert(b: &[u8]) -> Option<(Advert, &[u8])> {
    let upload_kbps = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
    let queued_ms = u16::from_le_bytes(b.get(4..6)?.try_into().ok()?);
    Some((
        Advert {
            upload_kbps,
            queued_ms,
        },
        &b[6..],
    ))
}

/// `[n u16][n x u64]` and nothing after; at most [`MAX_SEQS`].
fn get_seqs(b: &[u8]) -> Option<Vec<u64>> {
    let n = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
    if n > MAX_SEQS || b.len() != 2 + n * 8 {
        return None;
    }
    Some(
        b[2..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// Decodes a message; anything malformed or oversized yields `None`.
pub fn decode(msg: &[u8]) -> Option<Message> {
    let (&kind, rest) = msg.split_first()?;
    Some(match kind {
        HAVE_V1 => Message::Have(None, get_seqs(rest)?),
        MAP_V1 => Message::Map(None, seqmap::read_map(rest, MAX_BITS)?),
        REQUEST_V1 => Message::Request {
            slack_ms: u16::MAX,
            seqs: get_seqs(rest)?,
        },
        HAVE => {
            let (a, rest) = get_advert(rest)?;
            Message::Have(Some(a), get_seqs(rest)?)
        }
        MAP => {
            let (a, rest) = get_advert(rest)?;
            Message::Map(Some(a), seqmap::read_map(rest, MAX_BITS)?)
        }
        REQUEST => {
            let slack_ms = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
            Message::Request {
                slack_ms,
                seqs: get_seqs(&rest[2..])?,
            }
        }
        REFUSE => Message::Refuse(get_seqs(rest)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_malformed_ones_are_refused() {
        let a = Advert {
            upload_kbps: 800,
            queued_ms: 40,
        };
        let cases = [
            (have(a, &[1, 5, 9]), Message::Have(Some(a), vec![1, 5, 9])),
            (
                request(300, &[7, 8]),
                Message::Request {
                    slack_ms: 300,
                    seqs: vec![7, 8],
                },
            ),
            (refuse(&[3]), Message::Refuse(vec![3])),
            (
                map(a, &[10, 11, 13, 20].into_iter().collect(), 10, 11),
                Message::Map(Some(a), vec![10, 11, 13, 20]),
            ),
        ];
        for (bytes, msg) in cases {
            assert_eq!(decode(&bytes).as_ref(), Some(&msg));
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_none(), "{msg:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer).is_none(), "{msg:?} with a trailing byte");
        }
        // The first version's messages are still read.
        let mut v1 = vec![HAVE_V1, 2, 0];
        v1.extend_from_slice(&4u64.to_le_bytes());
        v1.extend_from_slice(&6u64.to_le_bytes());
        assert_eq!(decode(&v1), Some(Message::Have(None, vec![4, 6])));
        let mut many = vec![REFUSE];
        many.extend_from_slice(&(MAX_SEQS as u16 + 1).to_le_bytes());
        many.extend(std::iter::repeat_n(0u8, (MAX_SEQS + 1) * 8));
        assert!(decode(&many).is_none(), "over MAX_SEQS");
        assert!(decode(&[99]).is_none());
    }
}
