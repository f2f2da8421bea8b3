//! Stripes: a stream split into `stripes` substreams (chunk `seq % stripes`),
//! each forwarded along its own tree.
//!
//! Part of the SDK because a scheduler and an overlay that stripe a stream
//! must agree on who forwards which stripe and how many whole substreams an
//! uplink carries; written once here, neither can drift from the other
//! (`push` and `tree` use both).

use crate::{PeerId, Rng};

/// The stripe `peer` forwards with `stripes` stripes: a hash of its id, so
/// every peer computes the same answer for every other without asking.
pub fn stripe_of(peer: PeerId, stripes: usize) -> usize {
    (Rng::new(peer.0).next_u64() % stripes.max(1) as u64) as usize
}

/// Whole substream slots in `fraction` slots' worth of upload: rounded when
/// that over-commits by at most a twentieth, floored otherwise. A whole slot
/// lost per peer is 5-10 % of a swarm's upload at 8 stripes, more than the
/// fluid bound leaves at load 0.9; a peer over by part of a slot sends a
/// little less to its least important child, which repairs the rest.
pub fn whole_slots(fraction: f64) -> usize {
    let fraction = fraction.max(0.0);
    let rounded = fraction.round();
    if rounded <= fraction * 1.05 {
        rounded as usize
    } else {
        fraction.floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_only_within_a_twentieth() {
        assert_eq!(whole_slots(1.5), 1);
        assert_eq!(whole_slots(5.8), 6);
        assert_eq!(whole_slots(5.4), 5);
        assert_eq!(whole_slots(-1.0), 0);
    }

    #[test]
    fn stripes_stay_in_range() {
        for id in 0..100 {
            assert!(stripe_of(PeerId(id), 8) < 8);
            assert_eq!(stripe_of(PeerId(id), 0), 0);
        }
    }
}
