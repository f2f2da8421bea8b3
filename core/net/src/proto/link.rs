//! The authenticated link to one address: the handshake that proves the
//! address and the keys, and sealing/opening of every later datagram.
//!
//! Flow (initiator I, responder R), each step retransmitted on I's timer:
//!
//! 1. I → R `Init { nonce, no cookie, XX msg 1 }`, padded to 160 bytes.
//!    R, not under load, keeps a half-open handshake (bounded by
//!    `NetConfig::max_handshakes`; the oldest makes room) and goes to 3.
//!    Under load (a quarter of that bound half-open), R keeps nothing and
//!    answers `Cookie { nonce, mac(addr, nonce) }` (31 bytes); I sends
//!    `Init` again with the cookie, which proves the address before R keeps
//!    any state (WireGuard's rule: cookies only under load, so an ordinary
//!    link costs 1.5 round trips, not 2.5).
//! 2. R → I `Resp { nonce, XX msg 2 }` (R's static key).
//! 3. I → R `Fin { nonce, XX msg 3 }` (I's static key): both have the link,
//!    and R only now, when I has shown it got `Resp` at its address.
//!    I resends `Fin` until something sealed arrives from R.
//!
//! An older peer's `CookieRequest` is still answered with a cookie.
//!
//! Datagrams the application sends before the link is up wait here (a few
//! per address) and go out sealed once it is.
//!
//! Both sides starting at once (a mesh overlay connecting both ways): the
//! handshake with the larger nonce wins, the other side abandons its own.

use super::{NetState, Outbox};
use crate::auth::{StaticKey, TAG_LEN, XX_MSG1_LEN};
use crate::wire::{self, Packet};
use snow::{HandshakeState, StatelessTransportState};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Datagrams kept per address while its handshake runs.
pub(crate) const QUEUE_PER_LINK: usize = 64;
/// A half-open handshake at the responder is forgotten after this long.
const HALF_TTL_US: u64 = 10_000_000;

pub(crate) enum LinkState {
    /// We asked for a cookie.
    WantCookie { request: Vec<u8> },
    /// We sent `Init`; waiting for `Resp` (or a `Cookie`: then `Init`
    /// again, with it and the same XX message 1).
    WantResp {
        init: Vec<u8>,
        msg1: Vec<u8>,
        hs: Box<HandshakeState>,
    },
    Established {
        transport: Box<StatelessTransportState>,
        remote: [u8; 32],
        tx: u64,
        rx: crate::auth::ReplayWindow,
        /// Initiator: `Fin` until anything sealed arrives from the peer.
        fin: Option<Vec<u8>>,
    },
}

pub(crate) struct Link {
    pub(crate) state: LinkState,
    /// Our handshake's nonce (initiator) or the peer's (responder).
    pub(crate) nonce: u64,
    pub(crate) tries: u32,
    /// When the handshake timer fires next (0: none).
    pub(crate) next_at: u64,
    /// Last authenticated datagram from the peer.
    pub(crate) last_rx: u64,
    /// Plaintext datagrams waiting for the link.
    pub(crate) queued: VecDeque<Vec<u8>>,
}

impl Link {
    pub(crate) fn established(&self) -> bool {
        matches!(self.state, LinkState::Established { .. })
    }
    pub(crate) fn remote(&self) -> Option<&[u8; 32]> {
        match &self.state {
            LinkState::Established { remote, .. } => Some(remote),
            _ => None,
        }
    }
}

/// A handshake the responder holds after a valid cookie.
pub(crate) struct Half {
    pub(crate) nonce: u64,
    pub(crate) hs: Box<HandshakeState>,
    pub(crate) resp: Vec<u8>,
    pub(crate) expires: u64,
}

/// An `Init` carrying XX message 1 and `cookie` (all zero: none yet),
/// padded so that nothing answers it with more bytes.
fn init_packet(nonce: u64, cookie: &[u8], msg1: &[u8]) -> Vec<u8> {
    let fixed = wire::HEADER_LEN + 1 + 8 + cookie.len() + 2 + msg1.len();
    let pad = vec![0; wire::INIT_LEN.saturating_sub(fixed)];
    encode(&Packet::Init {
        nonce,
        cookie,
        noise: msg1,
        pad: &pad,
    })
}

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode(p, &mut v);
    v
}

impl NetState {
    fn hs_backoff(&self, tries: u32) -> u64 {
        let base = self.cfg.rto_initial.as_micros() as u64;
        let max = self.cfg.rto_max.as_micros() as u64;
        base.saturating_mul(1 << tries.min(16))
            .min(max.max(base))
            .max(1)
    }

    fn arm(&mut self, addr: SocketAddr, at: u64) {
        self.hs_timers.insert((at, addr));
    }

    /// Make sure a handshake with `to` runs (data is waiting for the link):
    /// [`NetEvent::CapacityChanged`](super::NetEvent) follows once it is up.
    pub(super) fn start_link(&mut self, now: u64, to: SocketAddr) {
        if !self.links.contains_key(&to) && !self.halves.contains_key(&to) {
            self.queue_for_link(now, to, Vec::new());
            if let Some(l) = self.links.get_mut(&to) {
                l.queued.retain(|q| !q.is_empty());
            }
        }
    }

    /// The application wants `bytes` (a plaintext datagram) sent to `to`,
    /// which has no established link: keep it and make sure a handshake runs.
    pub(super) fn queue_for_link(&mut self, now: u64, to: SocketAddr, bytes: Vec<u8>) {
        if !self.links.contains_key(&to) {
            if self.links.len() >= self.cfg.max_peers && !self.evict_link(to) {
                self.drops.peer_limit += 1;
                return;
            }
            let nonce = self.crng.u64();
            let rng = crate::auth::KeyedRng::new(self.crng.bytes32());
            let mut hs = Box::new(self.key.handshake(true, rng));
            let mut msg = [0u8; 64];
            let Ok(n) = hs.write_message(&[], &mut msg) else {
                return;
            };
            let msg1 = msg[..n].to_vec();
            let init = init_packet(nonce, &[0; crate::auth::COOKIE_LEN], &msg1);
            self.out.push_raw(to, &init);
            let at = now + self.hs_backoff(0);
            self.links.insert(
                to,
                Link {
                    state: LinkState::WantResp { init, msg1, hs },
                    nonce,
                    tries: 1,
                    next_at: at,
                    last_rx: now,
                    queued: VecDeque::new(),
                },
            );
            self.arm(to, at);
            self.drops.handshakes_started += 1;
        }
        let link = self.links.get_mut(&to).expect("inserted");
        if link.queued.len() >= QUEUE_PER_LINK {
            link.queued.pop_front();
            self.drops.link_queue_full += 1;
        }
        link.queued.push_back(bytes);
    }

    /// Make room in the link table for `new`: drop a link that is neither
    /// established nor has a neighbour state, or the established link heard
    /// from least recently that has no neighbour state.
    fn evict_link(&mut self, new: SocketAddr) -> bool {
        let victim = self
            .links
            .iter()
            .filter(|(a, _)| **a != new && !self.peers.contains_key(*a))
            .min_by_key(|(a, l)| (l.established(), l.last_rx, **a))
            .map(|(a, _)| *a);
        match victim {
            Some(v) => {
                self.links.remove(&v);
                self.drops.links_evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Answer `to` with a stateless cookie for `nonce`, within the cookie
    /// budget (over it: counted as rate-limited, nothing sent).
    fn send_cookie(&mut self, now: u64, to: SocketAddr, nonce: u64) {
        if !self.cookie_budget(now) {
            self.drops.rate_limited += 1;
            return;
        }
        let cookie = self.jar.issue(now, to, nonce);
        self.drops.cookies_sent += 1;
        self.out.push_raw(
            to,
            &encode(&Packet::Cookie {
                nonce,
                cookie: &cookie,
            }),
        );
    }

    /// A handshake packet from `from`. Answers are never larger than what
    /// they answer until the address is proven.
    pub(super) fn handle_handshake(&mut self, now: u64, from: SocketAddr, pkt: Packet<'_>) {
        match pkt {
            Packet::CookieRequest { nonce, .. } => self.send_cookie(now, from, nonce),
            Packet::Cookie { nonce, cookie } => {
                let Some(link) = self.links.get_mut(&from) else {
                    self.drops.handshake_unexpected += 1;
                    return;
                };
                if link.nonce != nonce {
                    self.drops.handshake_unexpected += 1;
                    return;
                }
                match &mut link.state {
                    // The responder is under load: the same message 1 again,
                    // with the cookie that proves this address.
                    LinkState::WantResp { init, msg1, .. } => {
                        *init = init_packet(nonce, cookie, msg1);
                        let init = init.clone();
                        self.out.push_raw(from, &init);
                        let at = now + self.hs_backoff(0);
                        let link = self.links.get_mut(&from).expect("checked");
                        link.tries = 1;
                        link.next_at = at;
                        self.arm(from, at);
                    }
                    LinkState::WantCookie { .. } => {
                        let rng = crate::auth::KeyedRng::new(self.crng.bytes32());
                        let mut hs = Box::new(self.key.handshake(true, rng));
                        let mut msg = [0u8; 64];
                        let Ok(n) = hs.write_message(&[], &mut msg) else {
                            return;
                        };
                        let msg1 = msg[..n].to_vec();
                        let init = init_packet(nonce, cookie, &msg1);
                        self.out.push_raw(from, &init);
                        let at = now + self.hs_backoff(0);
                        let link = self.links.get_mut(&from).expect("checked");
                        link.state = LinkState::WantResp { init, msg1, hs };
                        link.tries = 1;
                        link.next_at = at;
                        self.arm(from, at);
                    }
                    LinkState::Established { .. } => {
                        self.drops.handshake_unexpected += 1;
                    }
                }
            }
            Packet::Init {
                nonce,
                cookie,
                noise,
                ..
            } => {
                let proven = self.jar.check(now, from, nonce, cookie);
                if !proven {
                    let none = cookie.iter().all(|&b| b == 0);
                    let loaded = self.halves.len() >= (self.cfg.max_handshakes / 4).max(1);
                    if !none {
                        self.drops.bad_cookie += 1;
                        return;
                    }
                    if loaded && !self.halves.contains_key(&from) {
                        // Under load nothing is kept for an address that has
                        // not proven itself: a cookie (smaller than `Init`).
                        self.send_cookie(now, from, nonce);
                        return;
                    }
                }
                if noise.len() != XX_MSG1_LEN {
                    self.drops.handshake_failed += 1;
                    return;
                }
                if let Some(link) = self.links.get(&from) {
                    if !link.established() {
                        // Both sides started: the larger nonce wins.
                        if link.nonce > nonce {
                            self.drops.handshake_collisions += 1;
                            return;
                        }
                        let queued = std::mem::take(&mut self.links.get_mut(&from).unwrap().queued);
                        self.links.remove(&from);
                        self.orphans.insert(from, queued);
                    }
                }
                if let Some(h) = self.halves.get(&from) {
                    if h.nonce == nonce {
                        let resp = h.resp.clone();
                        self.out.push_raw(from, &resp);
                        return;
                    }
                }
                if self.halves.len() >= self.cfg.max_handshakes.max(1)
                    && !self.halves.contains_key(&from)
                {
                    // Forget the oldest half-open handshake.
                    if let Some(old) = self
                        .halves
                        .iter()
                        .min_by_key(|(a, h)| (h.expires, **a))
                        .map(|(a, _)| *a)
                    {
                        self.halves.remove(&old);
                        self.orphans.remove(&old);
                        self.drops.handshake_limit += 1;
                    }
                }
                let rng = crate::auth::KeyedRng::new(self.crng.bytes32());
                let mut hs = Box::new(self.key.handshake(false, rng));
                let mut scratch = [0u8; 128];
                if hs.read_message(noise, &mut scratch).is_err() {
                    self.drops.handshake_failed += 1;
                    return;
                }
                let mut msg = [0u8; 128];
                let Ok(n) = hs.write_message(&[], &mut msg) else {
                    self.drops.handshake_failed += 1;
                    return;
                };
                let resp = encode(&Packet::Resp {
                    nonce,
                    noise: &msg[..n],
                });
                self.out.push_raw(from, &resp);
                let expires = now + HALF_TTL_US;
                self.halves.insert(
                    from,
                    Half {
                        nonce,
                        hs,
                        resp,
                        expires,
                    },
                );
                self.arm(from, expires);
            }
            Packet::Resp { nonce, noise } => {
                let Some(link) = self.links.get_mut(&from) else {
                    self.drops.handshake_unexpected += 1;
                    return;
                };
                if link.nonce != nonce {
                    self.drops.handshake_unexpected += 1;
                    return;
                }
                let LinkState::WantResp { hs, .. } = &mut link.state else {
                    self.drops.handshake_unexpected += 1;
                    return;
                };
                let mut scratch = [0u8; 128];
                if hs.read_message(noise, &mut scratch).is_err() {
                    self.drops.handshake_failed += 1;
                    return;
                }
                let mut msg = [0u8; 128];
                let Ok(n) = hs.write_message(&[], &mut msg) else {
                    self.drops.handshake_failed += 1;
                    return;
                };
                let fin = encode(&Packet::Fin {
                    nonce,
                    noise: &msg[..n],
                });
                self.out.push_raw(from, &fin);
                let LinkState::WantResp { hs, .. } =
                    std::mem::replace(&mut link.state, LinkState::WantCookie { request: vec![] })
                else {
                    unreachable!("matched above")
                };
                let at = now + self.hs_backoff(0);
                self.establish(now, from, *hs, Some(fin), at);
            }
            Packet::Fin { nonce, noise } => {
                let Some(h) = self.halves.get_mut(&from) else {
                    self.drops.handshake_unexpected += 1;
                    return;
                };
                if h.nonce != nonce {
                    self.drops.handshake_unexpected += 1;
                    return;
                }
                let mut scratch = [0u8; 128];
                if h.hs.read_message(noise, &mut scratch).is_err() {
                    self.drops.handshake_failed += 1;
                    return;
                }
                let h = self.halves.remove(&from).expect("present");
                let queued = self.orphans.remove(&from).unwrap_or_default();
                self.establish(now, from, *h.hs, None, 0);
                if let Some(l) = self.links.get_mut(&from) {
                    l.nonce = nonce;
                    for q in queued {
                        l.queued.push_back(q);
                    }
                }
                self.flush_link_queue(from);
            }
            _ => {}
        }
    }

    /// The handshake with `addr` finished: keep its keys, make (or keep) the
    /// neighbour state, send what waited.
    fn establish(
        &mut self,
        now: u64,
        addr: SocketAddr,
        hs: HandshakeState,
        fin: Option<Vec<u8>>,
        fin_at: u64,
    ) {
        let Some(remote) = hs
            .get_remote_static()
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
        else {
            self.drops.handshake_failed += 1;
            return;
        };
        let Ok(transport) = hs.into_stateless_transport_mode() else {
            self.drops.handshake_failed += 1;
            return;
        };
        let old = self.links.remove(&addr);
        if let Some(old_remote) = old.as_ref().and_then(|l| l.remote()) {
            if *old_remote != remote && self.peers.contains_key(&addr) {
                // Someone else now (a restart with a new key): nothing of
                // the old neighbour state applies.
                self.forget(addr);
            }
        }
        let nonce = old.as_ref().map_or(0, |l| l.nonce);
        let queued = old.map(|l| l.queued).unwrap_or_default();
        self.links.insert(
            addr,
            Link {
                state: LinkState::Established {
                    transport: Box::new(transport),
                    remote,
                    tx: 0,
                    rx: Default::default(),
                    fin: fin.clone(),
                },
                nonce,
                tries: 1,
                next_at: if fin.is_some() { fin_at } else { 0 },
                last_rx: now,
                queued,
            },
        );
        if fin.is_some() {
            self.arm(addr, fin_at);
        }
        self.drops.handshakes_completed += 1;
        let _ = self.peer(addr, now);
        self.flush_link_queue(addr);
    }

    /// What waited for the link goes out (sealed when handed out).
    fn flush_link_queue(&mut self, addr: SocketAddr) {
        let Some(l) = self.links.get_mut(&addr) else {
            return;
        };
        for q in std::mem::take(&mut l.queued) {
            self.out.push_bytes(addr, &q);
        }
        self.capacity_changed();
    }

    /// Handshake timers due at `now`: retransmissions, give-ups, expiry.
    pub(super) fn handshake_timeouts(&mut self, now: u64) {
        while let Some(&(at, addr)) = self.hs_timers.first() {
            if at > now {
                break;
            }
            self.hs_timers.pop_first();
            if self.halves.get(&addr).is_some_and(|h| h.expires == at) {
                self.halves.remove(&addr);
                self.orphans.remove(&addr);
            }
            let max_tries = self.cfg.max_tries.max(1);
            let Some(link) = self.links.get_mut(&addr) else {
                continue;
            };
            if link.next_at != at {
                continue;
            }
            if link.tries >= max_tries {
                link.next_at = 0;
                match &mut link.state {
                    LinkState::Established { fin, .. } => *fin = None,
                    _ => {
                        self.links.remove(&addr);
                        self.drops.handshakes_timed_out += 1;
                    }
                }
                continue;
            }
            let bytes = match &link.state {
                LinkState::WantCookie { request } => request.clone(),
                LinkState::WantResp { init, .. } => init.clone(),
                LinkState::Established { fin: Some(f), .. } => f.clone(),
                LinkState::Established { fin: None, .. } => continue,
            };
            let tries = link.tries;
            link.tries += 1;
            let next = now + self.hs_backoff(tries);
            self.links.get_mut(&addr).expect("present").next_at = next;
            self.out.push_raw(addr, &bytes);
            self.arm(addr, next);
        }
    }

    /// Open a sealed datagram from `from`; the plaintext is in
    /// `self.scratch` on success.
    pub(super) fn open(&mut self, now: u64, from: SocketAddr, counter: u32, ct: &[u8]) -> bool {
        if !self.links.get(&from).is_some_and(Link::established) {
            if self.halves.contains_key(&from) {
                // Its `Fin` was lost or is late: the initiator resends it.
                self.drops.before_fin += 1;
            } else {
                self.drops.unauthenticated += 1;
            }
            return false;
        }
        let link = self.links.get_mut(&from).expect("checked");
        let LinkState::Established {
            transport, rx, fin, ..
        } = &mut link.state
        else {
            return false;
        };
        let counter = wire::expand_counter(rx.next(), counter);
        if !rx.fresh(counter) {
            self.drops.replayed += 1;
            return false;
        }
        self.scratch.resize(ct.len(), 0);
        match transport.read_message(counter, ct, &mut self.scratch) {
            Ok(n) => {
                self.scratch.truncate(n);
                rx.mark(counter);
                if fin.take().is_some() {
                    // Confirmed: the peer has the link, no more `Fin`.
                    self.hs_timers.remove(&(link.next_at, from));
                    link.next_at = 0;
                }
                link.last_rx = now;
                true
            }
            Err(_) => {
                self.drops.unauthenticated += 1;
                false
            }
        }
    }

    /// Move datagrams from the outbox to `dst`, sealing those of established
    /// links; the rest wait for their handshake (which this may start).
    ///
    /// Everything waiting for one peer in this batch (later outbox items,
    /// held acks, a due data ack) rides in the same sealed datagram as long
    /// as it fits `max_payload`: one header, counter and tag for all of
    /// them. Each packet was charged as a datagram of its own when queued;
    /// one that shares a datagram gives [`wire::SHARED_SAVING`] back to the
    /// upload cap and the counters.
    pub(super) fn take_out(&mut self, now: u64, dst: &mut super::Datagrams, max: usize) {
        while dst.len() < max && !self.out.drained() {
            let i = self.out.next;
            self.out.next += 1;
            if self.out.is_taken(i) {
                continue;
            }
            let (to, s, e) = self.out.dg.items[i];
            if self.out.is_raw(i) {
                dst.push_bytes(to, &self.out.dg.buf[s..e]);
                continue;
            }
            if self.is_established(to) {
                self.seal_for(now, to, i, dst);
            } else if self.halves.contains_key(&to) {
                // We are answering its handshake: wait for that one rather
                // than start a second (two handshakes racing could leave
                // each end with the other's keys).
                let plain = self.out.dg.buf[s..e].to_vec();
                let q = self.orphans.entry(to).or_default();
                if q.len() >= QUEUE_PER_LINK {
                    q.pop_front();
                    self.drops.link_queue_full += 1;
                }
                q.push_back(plain);
            } else {
                let plain = self.out.dg.buf[s..e].to_vec();
                self.queue_for_link(now, to, plain);
            }
        }
    }

    /// Seal outbox item `first` for `to`, with everything else for `to` that
    /// fits, into one datagram on `dst`.
    fn seal_for(&mut self, now: u64, to: SocketAddr, first: usize, dst: &mut super::Datagrams) {
        let limit = self.cfg.max_payload;
        // Bytes of the datagram if every frame carried its length; the last
        // one does not, hence the `- 2` when checking the fit.
        let fits = |size: usize, add: usize| size + add - (wire::FRAME_HEADER_LEN - 1) <= limit;
        let mut group = std::mem::take(&mut self.group);
        group.clear();
        let (_, s, e) = self.out.dg.items[first];
        let mut size = wire::SEAL_OVERHEAD + wire::frame_len(e - s);
        group.push((s, e));
        for j in self.out.next..self.out.dg.items.len() {
            let (t, s, e) = self.out.dg.items[j];
            if t != to || self.out.is_raw(j) || self.out.is_taken(j) {
                continue;
            }
            // Data fragments keep their order (a later one sent first
            // reads as a loss of those before it at the sender's loss
            // detection); only control packets and acks ride.
            let b = &self.out.dg.buf[s..e];
            if b[3] == wire::CH_DATA && b.get(wire::HEADER_LEN) == Some(&0) {
                continue;
            }
            let add = wire::frame_len(e - s);
            if fits(size, add) {
                size += add;
                group.push((s, e));
                self.out.take(j);
            }
        }
        // Acks held back for a chance to ride along.
        let mut extra = std::mem::take(&mut self.extra);
        extra.clear();
        let mut extra_items: Vec<(usize, usize)> = Vec::new();
        if let Some(h) = self.held.get_mut(&to) {
            let mut kept = Vec::new();
            for pkt in h.pkts.drain(..) {
                let add = wire::frame_len(pkt.len());
                if fits(size, add) {
                    size += add;
                    let st = extra.len();
                    extra.extend_from_slice(&pkt);
                    extra_items.push((st, extra.len()));
                } else {
                    kept.push(pkt);
                }
            }
            h.pkts = kept;
            if h.pkts.is_empty() {
                self.held.remove(&to);
            }
        }
        // A data ack that is due soon goes now, while a datagram goes anyway.
        let mut acked = false;
        if let Some(p) = self.peers.get_mut(&to) {
            let add = wire::frame_len(
                wire::data_ack_len(p.rx.largest) - wire::SEAL_OVERHEAD - 1 + wire::HEADER_LEN,
            );
            if p.rx.unacked > 0 && fits(size, add) {
                let st = extra.len();
                let mut ob = super::Outbox::default();
                Self::data_ack(p, to, now, &mut ob);
                if let Some(&(_, a, b)) = ob.dg.items.first() {
                    extra.extend_from_slice(&ob.dg.buf[a..b]);
                    extra_items.push((st, extra.len()));
                    acked = true;
                }
            }
        }
        let mut plain = std::mem::take(&mut self.scratch_tx);
        plain.clear();
        let n = group.len() + extra_items.len();
        let mut k = 0;
        let mut shared = [0u64; 2];
        // Held packets were sent before anything in the group: they go
        // first, so that the peer reads messages in the order they were
        // sent (a held "subscribe to A" read after a newer "subscribe to
        // B" would undo it). The data ack (last of `extra`) goes last.
        let held_n = extra_items.len() - acked as usize;
        let frames = extra_items[..held_n]
            .iter()
            .map(|&(s, e)| &extra[s..e])
            .chain(group.iter().map(|&(s, e)| &self.out.dg.buf[s..e]))
            .chain(extra_items[held_n..].iter().map(|&(s, e)| &extra[s..e]));
        for bytes in frames {
            k += 1;
            wire::encode_frame(bytes, k < n, &mut plain);
            if k > 1 {
                shared[(bytes[3] == wire::CH_DATA) as usize] += 1;
            }
        }
        let saved = (n - 1) * wire::SHARED_SAVING;
        if saved > 0 {
            if let Some(c) = self.cap.as_mut() {
                c.refund(now, saved);
            }
            if let Some(p) = self.peers.get_mut(&to) {
                for (ch, c) in [&mut p.stats.control, &mut p.stats.data]
                    .into_iter()
                    .enumerate()
                {
                    c.bytes_sent = c
                        .bytes_sent
                        .saturating_sub(shared[ch] * wire::SHARED_SAVING as u64);
                    c.datagrams_sent = c.datagrams_sent.saturating_sub(shared[ch]);
                }
            }
            self.drops.frames_shared += (n - 1) as u64;
        }
        if let Some(Link {
            state: LinkState::Established { transport, tx, .. },
            ..
        }) = self.links.get_mut(&to)
        {
            let counter = *tx;
            *tx += 1;
            seal(transport, counter, to, &plain, dst);
        }
        self.scratch_tx = plain;
        self.group = group;
        self.extra = extra;
    }

    /// The static public key of the established link with `addr`.
    pub fn peer_key(&self, addr: SocketAddr) -> Option<[u8; 32]> {
        self.links.get(&addr).and_then(|l| l.remote().copied())
    }

    /// Whether the link with `addr` is established (both keys proven).
    pub fn is_established(&self, addr: SocketAddr) -> bool {
        self.links.get(&addr).is_some_and(Link::established)
    }

    /// This endpoint's static key.
    pub fn static_key(&self) -> &StaticKey {
        &self.key
    }

    /// At most `COOKIES_PER_SEC` cookie replies a second, whoever asks.
    fn cookie_budget(&mut self, now: u64) -> bool {
        let second = now / 1_000_000;
        if self.cookie_window.0 != second {
            self.cookie_window = (second, 0);
        }
        self.cookie_window.1 += 1;
        self.cookie_window.1 <= super::COOKIES_PER_SEC
    }
}

fn seal(
    transport: &StatelessTransportState,
    counter: u64,
    to: SocketAddr,
    plain: &[u8],
    dst: &mut super::Datagrams,
) {
    let start = dst.buf.len();
    dst.buf.extend_from_slice(&wire::MAGIC);
    dst.buf.push(wire::VERSION);
    dst.buf.push(wire::CH_SEALED);
    dst.buf.extend_from_slice(&[0, 0]);
    // The low bits only: the receiver rebuilds the rest.
    dst.buf.extend_from_slice(&(counter as u32).to_be_bytes());
    let ct = dst.buf.len();
    dst.buf.resize(ct + plain.len() + TAG_LEN, 0);
    match transport.write_message(counter, plain, &mut dst.buf[ct..]) {
        Ok(n) => {
            dst.buf.truncate(ct + n);
            let len = (dst.buf.len() - start - wire::HEADER_LEN) as u16;
            dst.buf[start + 4..start + 6].copy_from_slice(&len.to_be_bytes());
            dst.items.push((to, start, dst.buf.len()));
        }
        Err(_) => dst.buf.truncate(start),
    }
}

impl Outbox {
    /// A datagram that goes out as it is (handshake packets).
    pub(super) fn push_raw(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.push_bytes(to, bytes);
        let i = self.dg.items.len() - 1;
        self.raw.resize(i, false);
        self.raw.push(true);
    }
    /// An encoded plaintext datagram, sealed when handed out.
    pub(super) fn push_bytes(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.dg.push_bytes(to, bytes);
    }
    fn is_raw(&self, i: usize) -> bool {
        self.raw.get(i).copied().unwrap_or(false)
    }
    /// Item i already went out inside an earlier item's datagram.
    fn is_taken(&self, i: usize) -> bool {
        self.taken.get(i).copied().unwrap_or(false)
    }
    fn take(&mut self, i: usize) {
        if self.taken.len() <= i {
            self.taken.resize(i + 1, false);
        }
        self.taken[i] = true;
    }
}
