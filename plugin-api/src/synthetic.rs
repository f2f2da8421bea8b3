//! The synthetic test signal: chunk payloads derived from their index.
//!
//! It lives here, not in the synthetic input, because plugins depend on this
//! crate only: any output or test can check what it received without linking
//! the input that produced it, the way a receiver checks a known test pattern.

/// Bytes at the front of every synthetic payload holding the chunk index.
pub const HEADER_LEN: usize = 8;

/// Fills `data` (of any length >= [`HEADER_LEN`]) with the payload of chunk `index`.
pub fn fill(index: u64, data: &mut [u8]) {
    assert!(
        data.len() >= HEADER_LEN,
        "synthetic chunk shorter than its header"
    );
    data[..HEADER_LEN].copy_from_slice(&index.to_le_bytes());
    for (byte, expected) in data[HEADER_LEN..].iter_mut().zip(pattern(index)) {
        *byte = expected;
    }
}

/// xorshift64 seeded by the index: cheap, and a flipped bit anywhere shows.
fn pattern(index: u64) -> impl Iterator<Item = u8> {
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    })
}

/// The payload of chunk `index` with `len` bytes.
pub fn payload(index: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len.max(HEADER_LEN)];
    fill(index, &mut data);
    data
}

/// The index a payload claims, if the payload is exactly what [`fill`] makes for it.
pub fn verify(data: &[u8]) -> Option<u64> {
    let index = u64::from_le_bytes(data.get(..HEADER_LEN)?.try_into().ok()?);
    let body = &data[HEADER_LEN..];
    body.iter()
        .zip(pattern(index))
        .all(|(&got, expected)| got == expected)
        .then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_any_flip_is_caught() {
        let data = payload(42, 300);
        assert_eq!(verify(&data), Some(42));
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x10;
            assert_ne!(verify(&bad), Some(42), "flip at {i} not caught");
        }
        assert_eq!(verify(&[1, 2, 3]), None);
    }
}
