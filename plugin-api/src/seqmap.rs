//! Buffer maps on the wire: which sequence numbers a peer holds, as a
//! bitmap from a base.
//!
//! Part of the SDK because every map-exchanging scheduler (`pull`, `push`,
//! and whatever a researcher writes next) needs the same compact,
//! bounds-checked coding; each keeps its own message framing around it.

use std::collections::BTreeSet;

/// Appends `[base u64][bits u32][bitmap]`: bit `i` set when `have` holds
/// `base + i`, for `i < bits`.
pub fn write_map(out: &mut Vec<u8>, have: &BTreeSet<u64>, base: u64, bits: usize) {
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&(bits as u32).to_le_bytes());
    let mut bitmap = vec![0u8; bits.div_ceil(8)];
    for &seq in have.range(base..base.saturating_add(bits as u64)) {
        let i = (seq - base) as usize;
        bitmap[i / 8] |= 1 << (i % 8);
    }
    out.extend_from_slice(&bitmap);
}

/// Reads what [`write_map`] wrote (and nothing after it); `None` when it is
/// malformed, longer than `max_bits`, or runs past `u64::MAX`.
pub fn read_map(bytes: &[u8], max_bits: usize) -> Option<Vec<u64>> {
    let base = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let bits = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    let bitmap = bytes.get(12..)?;
    if bits > max_bits || bitmap.len() != bits.div_ceil(8) {
        return None;
    }
    (0..bits)
        .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
        .map(|i| base.checked_add(i as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_malformed_ones_are_refused() {
        let have: BTreeSet<u64> = [5, 6, 9, 20, 40].into_iter().collect();
        let mut msg = Vec::new();
        write_map(&mut msg, &have, 6, 15);
        assert_eq!(read_map(&msg, 64), Some(vec![6, 9, 20]));
        assert_eq!(read_map(&msg, 14), None, "over the bound");
        assert_eq!(read_map(&msg[..msg.len() - 1], 64), None, "truncated");
        let mut longer = msg.clone();
        longer.push(0);
        assert_eq!(read_map(&longer, 64), None, "trailing bytes");
        let mut wraps = Vec::new();
        write_map(&mut wraps, &[u64::MAX].into_iter().collect(), u64::MAX, 2);
        wraps[12] = 0b11;
        assert_eq!(read_map(&wraps, 64), None, "past u64::MAX");
    }
}
