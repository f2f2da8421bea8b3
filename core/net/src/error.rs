//! What can go wrong when sending.

use std::net::SocketAddr;

/// Why a send did not (or will not) reach the peer.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Too big for one message: the caller must split it or send it as chunks.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// What one message may be.
        max: usize,
    },
    /// The data channel is full: a live sender should skip, not queue.
    #[error("no capacity towards this neighbour now; retry when capacity() allows")]
    WouldBlock,
    /// A reliable message ran out of tries: the peer is gone or cut off.
    #[error("{peer} did not acknowledge after {tries} tries")]
    Unreachable {
        /// The peer.
        peer: SocketAddr,
        /// Transmissions made.
        tries: u32,
    },
    /// A request got no response in time.
    #[error("no response within the timeout")]
    Timeout,
    /// The endpoint is shut down.
    #[error("endpoint closed")]
    Closed,
    /// The peer answered with a version reject: it cannot understand us.
    #[error("{peer} speaks protocol versions {min}..={max}, we speak {ours}")]
    Incompatible {
        /// The peer.
        peer: SocketAddr,
        /// The oldest version it speaks.
        min: u8,
        /// The newest version it speaks.
        max: u8,
        /// The version we speak.
        ours: u8,
    },
}

/// A typed control payload could not be decoded.
#[derive(thiserror::Error, Debug)]
#[error("cannot decode message: {0}")]
pub struct DecodeMessageError(#[from] pub postcard::Error);
