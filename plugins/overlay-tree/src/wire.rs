//! The `tree` protocol on the wire: joins, redirects, paths and heartbeats.

use p2ner_plugin_api::prelude::*;

pub(crate) const JOIN: u8 = 1;
pub(crate) const ACCEPT: u8 = 2;
pub(crate) const REDIRECT: u8 = 3;
pub(crate) const REJECT: u8 = 4;
pub(crate) const LEAVE: u8 = 5;
pub(crate) const PATH: u8 = 6;
pub(crate) const HB: u8 = 7;
/// Longest path to the root carried: 100 ids, 804 bytes.
pub const MAX_PATH: usize = 100;
/// Peers named in one redirect.
pub(crate) const REDIRECT_PEERS: usize = 4;
pub(crate) const MAX_STRIPES: usize = 16;

/// A decoded message of this overlay's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Adopt me in `stripe`; `interior`: I forward that stripe.
    Join {
        /// The stripe.
        stripe: u8,
        /// The joiner forwards that stripe.
        interior: bool,
    },
    /// Adopted; `path` is the parent's path, root first.
    Accept {
        /// The stripe.
        stripe: u8,
        /// The parent's path, root first: loops are refused with it.
        path: Vec<PeerId>,
    },
    /// Full (or giving your slot away): ask these instead.
    Redirect {
        /// The stripe.
        stripe: u8,
        /// Where to ask instead.
        peers: Vec<PeerInfo>,
    },
    /// Cannot adopt you.
    Reject {
        /// The stripe.
        stripe: u8,
    },
    /// I am no longer your child (from a child) / parent (from a parent).
    Leave {
        /// The stripe.
        stripe: u8,
    },
    /// Parent heartbeat: the parent's path and whether it reaches the root.
    Path {
        /// The stripe.
        stripe: u8,
        /// The parent reaches the root.
        attached: bool,
        /// The parent's path, root first.
        path: Vec<PeerId>,
    },
    /// Child heartbeat: its free child slots and subtree size.
    Heartbeat {
        /// The stripe.
        stripe: u8,
        /// Child slots it has free.
        free: u8,
        /// Peers in its subtree.
        subtree: u32,
    },
}

impl Message {
    /// The message as it travels in an overlay payload.
    pub fn encode(&self) -> Vec<u8> {
        fn ids(msg: &mut Vec<u8>, path: &[PeerId]) {
            let path = &path[path.len().saturating_sub(MAX_PATH)..];
            msg.push(path.len() as u8);
            for id in path {
                msg.extend_from_slice(&id.0.to_le_bytes());
            }
        }
        match self {
            Message::Join { stripe, interior } => vec![JOIN, *stripe, *interior as u8],
            Message::Accept { stripe, path } => {
                let mut msg = vec![ACCEPT, *stripe];
                ids(&mut msg, path);
                msg
            }
            Message::Redirect { stripe, peers } => {
                let peers = &peers[..peers.len().min(REDIRECT_PEERS)];
                let mut msg = vec![REDIRECT, *stripe, peers.len() as u8];
                for p in peers {
                    let addr = p.addr.as_bytes();
                    let len = addr.len().min(u8::MAX as usize);
                    msg.extend_from_slice(&p.id.0.to_le_bytes());
                    msg.push(len as u8);
                    msg.extend_from_slice(&addr[..len]);
                }
                msg
            }
            Message::Reject { stripe } => vec![REJECT, *stripe],
            Message::Leave { stripe } => vec![LEAVE, *stripe],
            Message::Path {
                stripe,
                attached,
                path,
            } => {
                let mut msg = vec![PATH, *stripe, *attached as u8];
                ids(&mut msg, path);
                msg
            }
            Message::Heartbeat {
                stripe,
                free,
                subtree,
            } => {
                let mut msg = vec![HB, *stripe, *free];
                msg.extend_from_slice(&subtree.to_le_bytes());
                msg
            }
        }
    }

    /// Decodes a message; anything malformed yields `None`.
    pub fn decode(msg: &[u8]) -> Option<Message> {
        fn ids(rest: &[u8]) -> Option<Vec<PeerId>> {
            let (&n, rest) = rest.split_first()?;
            if n as usize > MAX_PATH || rest.len() != n as usize * 8 {
                return None;
            }
            Some(
                rest.chunks_exact(8)
                    .map(|b| PeerId(u64::from_le_bytes(b.try_into().expect("8 bytes"))))
                    .collect(),
            )
        }
        let (&kind, rest) = msg.split_first()?;
        let (&stripe, rest) = rest.split_first()?;
        let flag = |rest: &[u8]| -> Option<bool> {
            match rest.first()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            }
        };
        match kind {
            JOIN if rest.len() == 1 => Some(Message::Join {
                stripe,
                interior: flag(rest)?,
            }),
            ACCEPT => Some(Message::Accept {
                stripe,
                path: ids(rest)?,
            }),
            REDIRECT => {
                let (&n, mut rest) = rest.split_first()?;
                if n as usize > REDIRECT_PEERS {
                    return None;
                }
                let mut peers = Vec::new();
                for _ in 0..n {
                    let id = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                    let len = *rest.get(8)? as usize;
                    let addr = std::str::from_utf8(rest.get(9..9 + len)?).ok()?;
                    peers.push(PeerInfo {
                        id: PeerId(id),
                        addr: addr.into(),
                    });
                    rest = &rest[9 + len..];
                }
                rest.is_empty()
                    .then_some(Message::Redirect { stripe, peers })
            }
            REJECT if rest.is_empty() => Some(Message::Reject { stripe }),
            LEAVE if rest.is_empty() => Some(Message::Leave { stripe }),
            PATH => Some(Message::Path {
                stripe,
                attached: flag(rest)?,
                path: ids(&rest[1..])?,
            }),
            HB if rest.len() == 5 => Some(Message::Heartbeat {
                stripe,
                free: rest[0],
                subtree: u32::from_le_bytes(rest[1..5].try_into().ok()?),
            }),
            _ => None,
        }
    }
}
