//! Peer authentication, the sans-IO pieces: static keys, the stateless
//! address cookie, the Noise handshake's parameters and the replay window.
//!
//! Why each piece exists:
//!
//! - A source address on UDP proves nothing. Before a responder keeps any
//!   state for an address it hands out a **cookie**, a keyed MAC over the
//!   address and the initiator's nonce under a secret that rotates every
//!   [`COOKIE_EPOCH_US`] (QUIC's Retry token, WireGuard's cookie reply): only
//!   someone who receives at that address can echo it. The cookie reply is
//!   smaller than the request it answers, so a spoofed request cannot be used
//!   to amplify traffic towards a victim.
//! - The **Noise XX** handshake (`Noise_XX_25519_ChaChaPoly_BLAKE2s`, via
//!   `snow`) then authenticates both ends' static x25519 keys, and derives
//!   the keys every later datagram is sealed with. A peer's session-level id
//!   is [`peer_id_of`] its static key, so a peer list that carries ids (the
//!   server's) vouches for keys, and a claimed id can be checked against the
//!   key of the link a message came from.
//! - Sealed datagrams carry the low 32 bits of a 64-bit counter (UDP
//!   reorders and loses; the receiver rebuilds the rest from the highest
//!   counter it authenticated, as QUIC does with packet numbers), checked
//!   against a sliding [`ReplayWindow`] after the AEAD tag verified, so a
//!   captured datagram cannot be replayed.
//!
//! Nothing here reads a clock or the OS's randomness: time is a parameter and
//! every random byte comes from a [`KeyedRng`] seeded by the caller, so the
//! simulator drives exactly this code, deterministically.

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2sMac256;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::{Builder, HandshakeState};
use std::net::SocketAddr;

/// The Noise protocol every link speaks.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Bound into every handshake, so a handshake of another protocol or another
/// wire version can never complete as ours.
pub const PROLOGUE: &[u8] = b"p2ner-net v2";
/// Bytes of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a cookie.
pub const COOKIE_LEN: usize = 16;
/// How long a cookie secret is used; cookies of the previous epoch are still
/// accepted, so a cookie is valid for one to two epochs.
pub const COOKIE_EPOCH_US: u64 = 120_000_000;
/// Noise XX message sizes without payloads: `e`; `e, ee, s, es`; `s, se`.
pub const XX_MSG1_LEN: usize = 32;
/// Noise XX message 2 without payload.
pub const XX_MSG2_LEN: usize = 32 + 32 + TAG_LEN + TAG_LEN;
/// Noise XX message 3 without payload.
pub const XX_MSG3_LEN: usize = 32 + TAG_LEN + TAG_LEN;
/// Sealed datagrams can be this far behind the newest one and still be
/// accepted (reordering), as WireGuard's window.
pub const REPLAY_WINDOW: u64 = 1024;

/// A peer's session-level id, derived from its static public key: the first
/// eight bytes of a keyed BLAKE2s of the key, little-endian. 64 bits is what
/// the session's `PeerId` carries; finding a second key with a given id
/// costs about 2^64 key generations.
pub fn peer_id_of(public: &[u8; 32]) -> u64 {
    let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(b"p2ner peer id v1")
        .expect("BLAKE2s takes keys up to 32 bytes");
    Update::update(&mut mac, public);
    let out = mac.finalize_fixed();
    u64::from_le_bytes(out[..8].try_into().expect("8 bytes"))
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m =
        <Blake2sMac256 as KeyInit>::new_from_slice(key).expect("BLAKE2s takes keys up to 32 bytes");
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// A deterministic cryptographic generator: BLAKE2s in counter mode under a
/// key the caller injects (OS randomness in a real endpoint, a seed in the
/// simulator).
pub struct KeyedRng {
    key: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl KeyedRng {
    /// A generator keyed by 32 secret bytes.
    pub fn new(key: [u8; 32]) -> Self {
        KeyedRng {
            key,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    /// A generator from a 64-bit seed (tests and simulations).
    pub fn from_seed(seed: u64) -> Self {
        Self::new(mac(&[0x5e; 32], &[b"seed", &seed.to_le_bytes()]))
    }

    /// Fills `out` with the next bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 32 {
                self.block = mac(&self.key, &[&self.counter.to_le_bytes()]);
                self.counter += 1;
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }

    /// The next 32 bytes (a key or a seed).
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut k = [0; 32];
        self.fill(&mut k);
        k
    }

    /// The next 8 bytes as a number (nonces).
    pub fn u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

impl rand_core::RngCore for KeyedRng {
    fn next_u32(&mut self) -> u32 {
        self.u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.fill(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for KeyedRng {}
impl snow::types::Random for KeyedRng {}

/// snow's default primitives, with the randomness (ephemeral keys) taken
/// from an injected [`KeyedRng`] instead of the OS.
struct Resolver(std::sync::Mutex<Option<KeyedRng>>);

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        let rng = self.0.lock().ok()?.take()?;
        Some(Box::new(rng))
    }
    fn resolve_dh(&self, c: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        DefaultResolver.resolve_dh(c)
    }
    fn resolve_hash(&self, c: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        DefaultResolver.resolve_hash(c)
    }
    fn resolve_cipher(
        &self,
        c: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        DefaultResolver.resolve_cipher(c)
    }
}

fn builder(rng: KeyedRng) -> Builder<'static> {
    let params = NOISE_PARAMS.parse().expect("valid Noise parameters");
    Builder::with_resolver(params, Box::new(Resolver(std::sync::Mutex::new(Some(rng)))))
}

/// This endpoint's long-term x25519 key pair.
#[derive(Clone)]
pub struct StaticKey {
    private: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKey")
            .field(
                "peer_id",
                &format_args!("{:016x}", peer_id_of(&self.public)),
            )
            .finish_non_exhaustive()
    }
}

impl StaticKey {
    /// A new key pair drawn from `rng`.
    pub fn generate(rng: &mut KeyedRng) -> Self {
        let seed = KeyedRng::new(rng.bytes32());
        let kp = builder(seed)
            .generate_keypair()
            .expect("x25519 key generation does not fail");
        let mut private = [0; 32];
        let mut public = [0; 32];
        private.copy_from_slice(&kp.private);
        public.copy_from_slice(&kp.public);
        StaticKey { private, public }
    }

    /// The key pair of a known private key.
    pub fn from_private(private: [u8; 32]) -> Self {
        let mut dh = DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("snow has x25519");
        dh.set(&private);
        let mut public = [0; 32];
        public.copy_from_slice(dh.pubkey());
        StaticKey { private, public }
    }

    /// The public half, what peers see and check.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The peer id this key stands for ([`peer_id_of`]).
    pub fn peer_id(&self) -> u64 {
        peer_id_of(&self.public)
    }

    /// Start a handshake as initiator or responder, ephemeral randomness
    /// from `rng`.
    pub fn handshake(&self, initiator: bool, rng: KeyedRng) -> HandshakeState {
        let b = builder(rng)
            .local_private_key(&self.private)
            .prologue(PROLOGUE);
        if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .expect("valid handshake parameters")
    }
}

/// Stateless address validation: cookies are MACs, nothing is stored per
/// address.
pub struct CookieJar {
    master: [u8; 32],
}

impl CookieJar {
    /// A jar whose cookie secrets derive from `master` (32 secret bytes).
    pub fn new(master: [u8; 32]) -> Self {
        CookieJar { master }
    }

    fn make(&self, epoch: u64, addr: SocketAddr, nonce: u64) -> [u8; COOKIE_LEN] {
        let secret = mac(&self.master, &[b"cookie epoch", &epoch.to_le_bytes()]);
        let (ip, port) = match addr {
            SocketAddr::V4(a) => (a.ip().to_ipv6_mapped().octets(), a.port()),
            SocketAddr::V6(a) => (a.ip().octets(), a.port()),
        };
        let full = mac(&secret, &[&ip, &port.to_be_bytes(), &nonce.to_be_bytes()]);
        let mut c = [0; COOKIE_LEN];
        c.copy_from_slice(&full[..COOKIE_LEN]);
        c
    }

    /// The cookie for `addr` asking with `nonce` at `now`.
    pub fn issue(&self, now: u64, addr: SocketAddr, nonce: u64) -> [u8; COOKIE_LEN] {
        self.make(now / COOKIE_EPOCH_US, addr, nonce)
    }

    /// Whether `cookie` was issued to `addr` for `nonce` in this epoch or the
    /// one before (constant-time comparison).
    pub fn check(&self, now: u64, addr: SocketAddr, nonce: u64, cookie: &[u8]) -> bool {
        let epoch = now / COOKIE_EPOCH_US;
        let eq = |a: &[u8], b: &[u8]| {
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        };
        eq(&self.make(epoch, addr, nonce), cookie)
            || (epoch > 0 && eq(&self.make(epoch - 1, addr, nonce), cookie))
    }
}

/// Which sealed-datagram counters were seen: the newest and a bitmap of the
/// [`REPLAY_WINDOW`] before it.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Newest counter seen plus one (0: none yet).
    top: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn bit(&self, n: u64) -> (usize, u64) {
        let i = n % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// The counter after the newest one seen: what a truncated counter is
    /// expanded against ([`crate::wire::expand_counter`]).
    pub fn next(&self) -> u64 {
        self.top
    }

    /// Whether `n` may be accepted (not seen, not too old). Check before
    /// decrypting, [`ReplayWindow::mark`] after the tag verified.
    pub fn fresh(&self, n: u64) -> bool {
        if n >= self.top {
            return true;
        }
        if self.top - n > REPLAY_WINDOW {
            return false;
        }
        let (w, b) = self.bit(n);
        self.bits[w] & b == 0
    }

    /// Records `n` as seen (after its tag verified).
    pub fn mark(&mut self, n: u64) {
        if n >= self.top {
            let advance = n + 1 - self.top;
            if advance >= REPLAY_WINDOW {
                self.bits = Default::default();
            } else {
                for k in self.top..=n {
                    let (w, b) = self.bit(k);
                    self.bits[w] &= !b;
                }
            }
            self.top = n + 1;
        }
        let (w, b) = self.bit(n);
        self.bits[w] |= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert!(w.fresh(0));
        w.mark(0);
        assert!(!w.fresh(0));
        w.mark(5);
        assert!(w.fresh(3) && !w.fresh(5));
        w.mark(3);
        assert!(!w.fresh(3));
        w.mark(5 + REPLAY_WINDOW);
        assert!(!w.fresh(4), "too old");
        assert!(w.fresh(6 + 1) && !w.fresh(5 + REPLAY_WINDOW));
        w.mark(10_000_000);
        assert!(!w.fresh(5 + REPLAY_WINDOW) && w.fresh(10_000_000 - 1));
    }

    #[test]
    fn cookies_bind_address_nonce_and_time() {
        let jar = CookieJar::new([7; 32]);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let c = jar.issue(10, a, 1);
        assert!(jar.check(10, a, 1, &c));
        assert!(jar.check(10 + COOKIE_EPOCH_US, a, 1, &c), "previous epoch");
        assert!(!jar.check(10 + 2 * COOKIE_EPOCH_US, a, 1, &c), "expired");
        assert!(!jar.check(10, b, 1, &c));
        assert!(!jar.check(10, a, 2, &c));
        assert!(!CookieJar::new([8; 32]).check(10, a, 1, &c));
    }

    #[test]
    fn keys_and_ids() {
        let mut rng = KeyedRng::from_seed(1);
        let k = StaticKey::generate(&mut rng);
        let again = StaticKey::from_private(k.private);
        assert_eq!(k.public(), again.public());
        assert_eq!(k.peer_id(), peer_id_of(again.public()));
        let other = StaticKey::generate(&mut rng);
        assert_ne!(k.peer_id(), other.peer_id());
    }
}
