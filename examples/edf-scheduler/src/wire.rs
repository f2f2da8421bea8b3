//! The scheduler's own two messages, carried opaque in `SendMessage`.
//!
//! - `Have`: which chunks the sender holds, as a buffer map
//!   (`p2ner_plugin_api::seqmap`) of the last [`MAP_BITS`] chunks.
//! - `Want`: chunks the sender asks for, each with its slack: how long until
//!   its play-out deadline *at the requester*, in ms. Slack rather than a
//!   deadline because peers share no clock: each engine's `now_us` is its
//!   own, so the holder turns the slack into a deadline on its own clock.
//!
//! Everything read from the network is bounded and checked; anything
//! malformed is `None` and the caller counts it.

use std::collections::BTreeSet;

use p2ner_plugin_api::seqmap;

const HAVE: u8 = 1;
const WANT: u8 = 2;

/// Chunks a buffer map covers: 25.6 s of 100 ms chunks, in 44 bytes.
pub const MAP_BITS: usize = 256;

/// Most requests in one `Want`: 12 bytes each, well under any message limit.
pub const MAX_WANTS: usize = 32;

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// The sender holds these chunks.
    Have(Vec<u64>),
    /// `(seq, slack_ms)` pairs, most urgent first.
    Want(Vec<(u64, u32)>),
}

/// A `Have` of what `held` holds among the [`MAP_BITS`] chunks up to `newest`.
pub fn have(held: &BTreeSet<u64>, newest: u64) -> Vec<u8> {
    let base = (newest + 1).saturating_sub(MAP_BITS as u64);
    let mut out = vec![HAVE];
    seqmap::write_map(&mut out, held, base, MAP_BITS);
    out
}

/// A `Want` of `wants` (at most [`MAX_WANTS`] are written).
pub fn want(wants: &[(u64, u32)]) -> Vec<u8> {
    let wants = &wants[..wants.len().min(MAX_WANTS)];
    let mut out = Vec::with_capacity(2 + wants.len() * 12);
    out.push(WANT);
    out.push(wants.len() as u8);
    for &(seq, slack_ms) in wants {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&slack_ms.to_le_bytes());
    }
    out
}

/// Decodes a message; `None` when it is malformed.
pub fn decode(bytes: &[u8]) -> Option<Msg> {
    match *bytes.first()? {
        HAVE => seqmap::read_map(&bytes[1..], MAP_BITS).map(Msg::Have),
        WANT => {
            let n = *bytes.get(1)? as usize;
            let body = &bytes[2..];
            if n > MAX_WANTS || body.len() != n * 12 {
                return None;
            }
            Some(Msg::Want(
                body.chunks_exact(12)
                    .map(|c| {
                        let seq = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
                        let slack = u32::from_le_bytes(c[8..].try_into().expect("4 bytes"));
                        (seq, slack)
                    })
                    .collect(),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let held: BTreeSet<u64> = [3, 4, 300, 301].into_iter().collect();
        assert_eq!(decode(&have(&held, 301)), Some(Msg::Have(vec![300, 301])));
        assert_eq!(decode(&have(&held, 5)), Some(Msg::Have(vec![3, 4])));
        let w = want(&[(7, 120), (9, 400)]);
        assert_eq!(decode(&w), Some(Msg::Want(vec![(7, 120), (9, 400)])));
        assert_eq!(decode(&w[..w.len() - 1]), None);
        assert_eq!(decode(&[WANT, 200]), None);
        assert_eq!(decode(&[9, 1, 2]), None);
        assert_eq!(decode(&[]), None);
    }
}
