//! The fuzz target's decode function over the committed corpus plus a
//! bounded number of seeded mutations: what CI runs instead of cargo-fuzz.

use p2ner_net::fuzz_decode;
use p2ner_net::wire::{encode, encode_version, DataHeader, Packet, ReliableKind};
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let data = |count, index, offset, chunk_len, payload: &'static [u8]| {
        Packet::Data(
            DataHeader {
                pkt: 5,
                ts: 123_456,
                stream: 1,
                seq: 42,
                chunk_len,
                offset,
                index,
                count,
            },
            payload,
        )
    };
    let pkts: Vec<(&str, Packet<'static>)> = vec![
        (
            "unreliable",
            Packet::Unreliable {
                payload: b"buffer map",
            },
        ),
        ("unreliable-empty", Packet::Unreliable { payload: b"" }),
        (
            "reliable-msg",
            Packet::Reliable {
                session: 0xDEADBEEF,
                id: 1,
                floor: 1,
                ts: 7,
                kind: ReliableKind::Message,
                payload: b"join",
            },
        ),
        (
            "reliable-request",
            Packet::Reliable {
                session: 1,
                id: 9,
                floor: 3,
                ts: 8,
                kind: ReliableKind::Request(77),
                payload: b"who",
            },
        ),
        (
            "reliable-response",
            Packet::Reliable {
                session: 1,
                id: 10,
                floor: 10,
                ts: 9,
                kind: ReliableKind::Response(77),
                payload: b"me",
            },
        ),
        (
            "ack",
            Packet::Ack {
                session: 1,
                id: 9,
                ts_echo: 8,
            },
        ),
        ("data-first", data(3, 0, 0, 10, b"abcd")),
        ("data-last", data(3, 2, 8, 10, b"ij")),
        ("data-single", data(1, 0, 0, 3, b"xyz")),
        ("data-empty-chunk", data(1, 0, 0, 0, b"")),
        (
            "data-ack",
            Packet::DataAck {
                largest: 100,
                bitmap: 0xFFFF_0000_FFFF_0000,
                delay: 25_000,
                ack_delay: 0,
            },
        ),
        ("version-reject", Packet::VersionReject { min: 1, max: 1 }),
    ];
    let mut out: Vec<(String, Vec<u8>)> = pkts
        .iter()
        .map(|(n, p)| {
            let mut v = Vec::new();
            encode(p, &mut v);
            (n.to_string(), v)
        })
        .collect();
    // Handshake packets as a real initiator and responder write them.
    // Frames as a sealed datagram's plaintext holds them (an ack, a data ack
    // and a last frame without a length), so mutations reach the frame
    // decoder through `fuzz_decode`.
    let mut frames = Vec::new();
    for (p, more) in [
        (
            Packet::Ack {
                session: 1,
                id: 2,
                ts_echo: 3,
            },
            true,
        ),
        (
            Packet::DataAck {
                largest: 9,
                bitmap: 3,
                delay: 4,
                ack_delay: 0,
            },
            true,
        ),
        (Packet::Unreliable { payload: b"last" }, false),
    ] {
        let mut v = Vec::new();
        encode(&p, &mut v);
        assert!(p2ner_net::wire::encode_frame(&v, more, &mut frames));
    }
    let handshake = [
        (
            "cookie-request",
            Packet::CookieRequest {
                nonce: 7,
                pad: &[0; 49],
            },
        ),
        (
            "cookie",
            Packet::Cookie {
                nonce: 7,
                cookie: &[0xC0; 16],
            },
        ),
        (
            "init",
            Packet::Init {
                nonce: 7,
                cookie: &[0xC0; 16],
                noise: &[0x11; 32],
                pad: &[0; 95],
            },
        ),
        (
            "resp",
            Packet::Resp {
                nonce: 7,
                noise: &[0x22; 96],
            },
        ),
        (
            "fin",
            Packet::Fin {
                nonce: 7,
                noise: &[0x33; 64],
            },
        ),
        (
            "sealed",
            Packet::Sealed {
                counter: 3,
                ciphertext: &[0x44; 64],
            },
        ),
        (
            "sealed-frames",
            Packet::Sealed {
                counter: 4,
                ciphertext: &frames,
            },
        ),
    ];
    for (n, p) in handshake {
        let mut v = Vec::new();
        encode(&p, &mut v);
        out.push((n.to_string(), v));
    }
    let mut old = Vec::new();
    encode_version(&Packet::Unreliable { payload: b"old" }, 1, &mut old);
    out.push(("old-version".into(), old));
    let mut newer = Vec::new();
    encode_version(&Packet::VersionReject { min: 2, max: 9 }, 9, &mut newer);
    out.push(("reject-from-newer".into(), newer));
    out
}

#[test]
#[ignore = "writes the corpus; run by hand after a wire format change"]
fn regenerate_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn decode_corpus_and_seeded_mutations() {
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir())
        .expect("committed corpus at core/net/fuzz/corpus/decode")
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(corpus.len() >= 12, "corpus has {} files", corpus.len());
    corpus.sort();
    // The committed corpus is what the current encoder writes.
    for (name, bytes) in seeds() {
        assert!(corpus.contains(&bytes), "corpus lacks an up-to-date {name}");
    }
    let valid = corpus.iter().filter(|c| fuzz_decode(c)).count();
    assert!(valid >= 12, "{valid} corpus entries decode");

    let mut rng = SplitMix(0x00C0_FFEE);
    let (mut decoded, mut rejected) = (0u64, 0u64);
    const N: usize = 300_000;
    for i in 0..N {
        let mut m = if i % 10 == 9 {
            // Random body behind a valid-looking header.
            let len = rng.below(1300);
            let mut v: Vec<u8> = (0..len + 7).map(|_| rng.next() as u8).collect();
            v[0] = 0x50;
            v[1] = 0x32;
            v[2] = p2ner_net::wire::VERSION;
            v[3] = [0, 1, 2, 3, 0xFF][rng.below(5)];
            let l = (len as u16).to_be_bytes();
            v[4] = l[0];
            v[5] = l[1];
            v.truncate(len + 6);
            v
        } else {
            corpus[rng.below(corpus.len())].clone()
        };
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 if !m.is_empty() => {
                    let b = rng.below(m.len() * 8);
                    m[b / 8] ^= 1 << (b % 8);
                }
                1 if !m.is_empty() => {
                    let p = rng.below(m.len());
                    m[p] = rng.next() as u8;
                }
                2 => {
                    let c = rng.below(m.len() + 1);
                    m.truncate(c);
                }
                3 => {
                    for _ in 0..rng.below(16) {
                        m.push(rng.next() as u8);
                    }
                }
                4 => {
                    let other = &corpus[rng.below(corpus.len())];
                    let cut = rng.below(m.len() + 1);
                    let from = rng.below(other.len() + 1);
                    m.truncate(cut);
                    m.extend_from_slice(&other[from..]);
                }
                _ => {
                    // Keep the length field consistent with a changed size.
                    if m.len() >= 6 {
                        let l = ((m.len() - 6) as u16).to_be_bytes();
                        m[4] = l[0];
                        m[5] = l[1];
                    }
                }
            }
        }
        if fuzz_decode(&m) {
            decoded += 1;
        } else {
            rejected += 1;
        }
    }
    eprintln!("{N} mutated inputs: {decoded} decoded, {rejected} rejected, no panic");
    assert!(
        decoded > 1_000 && rejected > 1_000,
        "mutations exercise both paths"
    );
}
