//! A publisher's ed25519 identity.
//!
//! The key proves ownership of a stream to the server (only the key that
//! registered a stream may change or remove it) and, in the engine, signs
//! media chunks so subscribers can reject chunks a malicious peer forged.
//! It is created on first use and kept in the user's config folder, readable
//! by the user alone, so that the same publisher keeps its streams across
//! runs.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A publisher's key pair.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    // Never print the secret half.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl Identity {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Identity {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// A key from its 32 secret bytes (tests, simulations with fixed seeds).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// `$XDG_CONFIG_HOME/p2ner/identity.key`, else `~/.config/p2ner/identity.key`.
    pub fn default_path() -> Option<PathBuf> {
        config_dir().map(|d| d.join("p2ner").join("identity.key"))
    }

    /// Reads the key at `path`, or creates one there (folder 0700, file 0600)
    /// if there is none yet.
    ///
    /// The file holds the 32-byte secret as 64 hex digits. Creation writes a
    /// temporary file and links it into place, so two processes starting at
    /// once agree on one key instead of one overwriting the other's.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => return Self::parse(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(e, path)),
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(|e| with_path(e, dir))?;
        let identity = Identity::generate();
        let tmp = dir.join(format!(".identity.{}.tmp", std::process::id()));
        {
            let mut file = private_file(&tmp).map_err(|e| with_path(e, &tmp))?;
            writeln!(file, "{}", hex(&identity.key.to_bytes()))?;
            file.sync_all()?;
        }
        // hard_link fails if the target exists: someone else won the race.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), key = %identity.public_key(), "created a publisher identity");
                Ok(identity)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let text = fs::read_to_string(path).map_err(|e| with_path(e, path))?;
                Self::parse(path, &text)
            }
            Err(e) => Err(with_path(e, path)),
        }
    }

    fn parse(path: &Path, text: &str) -> io::Result<Self> {
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not a p2ner identity (expected 64 hex digits)",
                        path.display()
                    ),
                )
            })?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes);
        Ok(Identity::from_secret(secret))
    }

    /// The public half, which servers and subscribers know the publisher by.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` (ed25519).
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.key.sign(message).to_bytes())
    }
}

/// An ed25519 public key: who published a stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// True if `signature` is this key's signature of `message`.
    ///
    /// Uses strict verification (rejects small-order keys and non-canonical
    /// signatures), so one message has exactly one valid signature and a
    /// signature cannot be bent into another that also verifies.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).is_ok()
    }

    /// The key in lower-case hex (64 digits), as `p2ner streams` shows it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A key from [`PublicKey::to_hex`]'s text; `None` if it is not 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = unhex(text)?;
        Some(PublicKey(bytes.try_into().ok()?))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// An ed25519 signature (64 bytes; serde has no arrays that long, hence the
/// hand-written impls, which write it as a byte string).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex(&self.0[..8]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                let bytes: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Signature(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Signature, A::Error> {
                let mut bytes = [0u8; 64];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(bytes))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Parses hex (either case); `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn config_dir() -> Option<PathBuf> {
    env_dir("XDG_CONFIG_HOME").or_else(|| env_dir("HOME").map(|h| h.join(".config")))
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> io::Result<fs::File> {
    fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let id = Identity::from_secret([7; 32]);
        let sig = id.sign(b"hello");
        assert!(id.public_key().verify(b"hello", &sig));
        assert!(!id.public_key().verify(b"hellO", &sig));
        let other = Identity::from_secret([8; 32]);
        assert!(!other.public_key().verify(b"hello", &sig));
    }

    #[test]
    fn load_or_create_keeps_the_key_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/p2ner/identity.key");
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_garbage_key_file_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fs::write(&path, "not hex").unwrap();
        let err = Identity::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("identity.key"), "{err}");
    }

    #[test]
    fn hex_round_trip_and_signature_serde() {
        let key = Identity::from_secret([1; 32]).public_key();
        assert_eq!(PublicKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(unhex("zz"), None);
        let sig = Identity::from_secret([1; 32]).sign(b"x");
        let bytes = postcard::to_stdvec(&sig).unwrap();
        assert_eq!(bytes.len(), 65);
        assert_eq!(postcard::from_bytes::<Signature>(&bytes).unwrap(), sig);
        assert!(postcard::from_bytes::<Signature>(&bytes[..40]).is_err());
    }
}
