//! What can go wrong when sending.

use std::net::SocketAddr;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("no capacity towards this neighbour now; retry when capacity() allows")]
    WouldBlock,
    #[error("{peer} did not acknowledge after {tries} tries")]
    Unreachable { peer: SocketAddr, tries: u32 },
    #[error("no response within the timeout")]
    Timeout,
    #[error("endpoint closed")]
    Closed,
    #[error("{peer} speaks protocol versions {min}..={max}, we speak {ours}")]
    Incompatible {
        peer: SocketAddr,
        min: u8,
        max: u8,
        ours: u8,
    },
}

/// A typed control payload could not be decoded.
#[derive(thiserror::Error, Debug)]
#[error("cannot decode message: {0}")]
pub struct DecodeMessageError(#[from] pub postcard::Error);
