//! Neighbour links and trust: the Hello/Welcome/Bye/SetLink handshake,
//! keepalives and timeouts, bans, and the per-neighbour reports the overlay
//! bases its choices on.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use p2ner_plugin_api::{Capacity, Link, NeighbourReport, NeighbourUpload, PeerId, PeerInfo};
use p2ner_proto::peer::{self as wire, Envelope, PeerMsg};

use super::guard::{Bucket, MAX_PLUGIN_MESSAGE, NEIGHBOUR_RATE};
use super::{env_msg, Session, SessionOutput};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkState {
    /// We sent `Hello` at this time and wait for `Welcome`.
    Connecting(u64),
    Up,
}

#[derive(Debug)]
pub(super) struct Neighbour {
    pub(super) info: PeerInfo,
    pub(super) addr: SocketAddr,
    pub(super) link: Link,
    pub(super) state: LinkState,
    pub(super) last_heard_us: u64,
    pub(super) last_sent_us: u64,
    pub(super) capacity: Capacity,
    pub(super) useful: u64,
    pub(super) duplicates: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) report_useful: u64,
    pub(super) report_duplicates: u64,
    pub(super) report_in: u64,
    pub(super) report_out: u64,
    /// What it may still send (messages).
    pub(super) bucket: Bucket,
    /// Times each buffered chunk was sent to it (pruned with the buffer).
    pub(super) sent: BTreeMap<u64, u8>,
    /// Rates over the last report interval, bit/s.
    pub(super) down_bps: u64,
    pub(super) up_bps: u64,
    /// The newest chunk it sent us.
    pub(super) newest_seq: Option<u64>,
    /// What it last advertised of its upload (in its `Ping`).
    pub(super) advert: NeighbourUpload,
    /// When we last told it ours.
    pub(super) last_advert_us: u64,
    /// What we last told it.
    pub(super) sent_advert: wire::Advert,
}

impl Session {
    /// A control message for this stream (the carrier checked `env.stream`).
    pub fn on_message(&mut self, now_us: u64, from: SocketAddr, env: Envelope, len: usize) {
        let peer = PeerId(env.from);
        if self.failed.is_some() || peer == self.cfg.local.id {
            return;
        }
        if self.is_banned(&from) {
            self.stats.messages_from_banned += 1;
            return;
        }
        // A neighbour is its link's address: a message naming it from
        // elsewhere changes nothing, and an address holds one neighbour.
        let wrong_address = match self.neighbours.get(&peer) {
            Some(n) => n.addr != from,
            None => self.other_at(from, peer),
        };
        if wrong_address {
            self.stats.wrong_address += 1;
            return;
        }
        if let PeerMsg::Overlay(p) | PeerMsg::Scheduler(p) = &env.msg {
            if p.len() > MAX_PLUGIN_MESSAGE {
                self.stats.messages_oversized += 1;
                return;
            }
        }
        if !self.admit(now_us, peer) {
            return;
        }
        self.stats.bytes_down += len as u64;
        self.remember(peer, from);
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.last_heard_us = now_us;
            n.bytes_in += len as u64;
        }
        match env.msg {
            PeerMsg::Hello { up, down } => {
                let link = wire::mirror(up, down);
                self.send(from, env_msg(&self.cfg, PeerMsg::Welcome), true, now_us);
                match self.neighbours.get(&peer).map(|n| n.state) {
                    Some(LinkState::Up) => {}
                    Some(LinkState::Connecting(_)) => self.link_up(now_us, peer),
                    None => {
                        self.add_neighbour(now_us, peer, from, link, LinkState::Up);
                        self.link_up(now_us, peer);
                    }
                }
            }
            PeerMsg::Welcome => match self.neighbours.get(&peer).map(|n| n.state) {
                Some(LinkState::Connecting(_)) => self.link_up(now_us, peer),
                Some(LinkState::Up) => {}
                None => self.send(from, env_msg(&self.cfg, PeerMsg::Bye), false, now_us),
            },
            PeerMsg::Bye => self.link_down(now_us, peer, true, false),
            PeerMsg::SetLink { up, down } => {
                if self.neighbours.contains_key(&peer) {
                    self.set_link(now_us, peer, wire::mirror(up, down), false);
                }
            }
            PeerMsg::Ping(advert) => {
                if let Some(n) = self.neighbours.get_mut(&peer) {
                    n.advert = NeighbourUpload {
                        capacity_bps: advert.capacity_bps,
                        capped: advert.capped,
                        rate_bps: advert.rate_bps,
                        queued_us: advert.queued_us,
                        received_us: now_us,
                    };
                }
            }
            PeerMsg::Overlay(payload) => {
                let r = self.overlay.on_message(
                    now_us,
                    peer,
                    payload.as_slice().into(),
                    &mut self.overlay_actions,
                );
                self.after_overlay("on_message", r.into_result(), now_us);
            }
            PeerMsg::Scheduler(payload) => {
                if self.is_up(peer) {
                    let r = self.scheduler.on_message(
                        now_us,
                        peer,
                        payload.as_slice().into(),
                        &mut self.sched_actions,
                    );
                    self.after_scheduler("on_message", r.into_result(), now_us);
                }
            }
        }
    }

    /// A reliable message to `addr` was never acknowledged.
    pub fn on_unreachable(&mut self, now_us: u64, addr: SocketAddr) {
        let gone: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.addr == addr)
            .map(|(&id, _)| id)
            .collect();
        for peer in gone {
            self.link_down(now_us, peer, true, false);
        }
    }

    pub(super) fn report(&mut self, now_us: u64) {
        let secs = (now_us + self.cfg.report_every_us - self.next_report_us) as f64 / 1e6;
        self.next_report_us = now_us + self.cfg.report_every_us;
        if let Some(oldest) = self.buffer.oldest() {
            for n in self.neighbours.values_mut() {
                n.sent = n.sent.split_off(&oldest);
            }
        }
        let reports: Vec<(PeerId, NeighbourReport)> = self
            .neighbours
            .iter_mut()
            .filter(|(_, n)| n.state == LinkState::Up)
            .map(|(&id, n)| {
                let r = NeighbourReport {
                    rtt_us: n.capacity.rtt_us,
                    down_bps: ((n.bytes_in - n.report_in) as f64 * 8.0 / secs) as u64,
                    up_bps: ((n.bytes_out - n.report_out) as f64 * 8.0 / secs) as u64,
                    useful_chunks: n.useful - n.report_useful,
                    duplicate_chunks: n.duplicates - n.report_duplicates,
                    loss_rate: 0.0,
                };
                n.down_bps = r.down_bps;
                n.up_bps = r.up_bps;
                n.report_in = n.bytes_in;
                n.report_out = n.bytes_out;
                n.report_useful = n.useful;
                n.report_duplicates = n.duplicates;
                (id, r)
            })
            .collect();
        for (peer, report) in reports {
            let r = self
                .overlay
                .on_report(now_us, peer, report, &mut self.overlay_actions);
            self.after_overlay("on_report", r.into_result(), now_us);
        }
    }

    pub(super) fn check_neighbours(&mut self, now_us: u64) {
        let advert = wire::Advert {
            capacity_bps: self.upload.capacity_bps,
            capped: self.upload.capped,
            rate_bps: self.upload.rate_bps,
            queued_us: self.upload.queued_us,
        };
        let mut dead = Vec::new();
        let mut ping = Vec::new();
        for (&id, n) in &self.neighbours {
            match n.state {
                LinkState::Connecting(since) if now_us > since + self.cfg.connect_timeout_us => {
                    dead.push(id)
                }
                LinkState::Up if now_us > n.last_heard_us + self.cfg.neighbour_timeout_us => {
                    dead.push(id)
                }
                LinkState::Up if now_us >= n.last_sent_us + self.cfg.keepalive_us => ping.push(id),
                // A busy link needs no keepalive but still learns this
                // peer's upload: at most once per keepalive interval when
                // it changed, and every few intervals regardless. Near the
                // fluid bound every byte of control competes with chunks.
                LinkState::Up
                    if now_us >= n.last_advert_us + self.cfg.keepalive_us
                        && (advert_moved(&n.sent_advert, &advert)
                            || now_us
                                >= n.last_advert_us + ADVERT_REFRESH * self.cfg.keepalive_us) =>
                {
                    ping.push(id)
                }
                _ => {}
            }
        }
        for peer in dead {
            tracing::debug!(stream = %self.cfg.name, %peer, "neighbour timed out");
            self.link_down(now_us, peer, true, true);
        }
        for peer in ping {
            let Some(n) = self.neighbours.get_mut(&peer) else {
                continue;
            };
            n.last_advert_us = now_us;
            n.sent_advert = advert;
            let addr = n.addr;
            self.send(
                addr,
                env_msg(&self.cfg, PeerMsg::Ping(advert)),
                false,
                now_us,
            );
        }
    }

    pub(super) fn is_up(&self, peer: PeerId) -> bool {
        self.neighbours
            .get(&peer)
            .is_some_and(|n| n.state == LinkState::Up)
    }

    pub(super) fn add_neighbour(
        &mut self,
        now_us: u64,
        peer: PeerId,
        addr: SocketAddr,
        link: Link,
        state: LinkState,
    ) {
        self.neighbours.insert(
            peer,
            Neighbour {
                info: PeerInfo {
                    id: peer,
                    addr: addr.to_string().into(),
                },
                addr,
                link,
                state,
                last_heard_us: now_us,
                last_sent_us: now_us,
                capacity: Capacity::default(),
                useful: 0,
                duplicates: 0,
                bytes_in: 0,
                bytes_out: 0,
                report_useful: 0,
                report_duplicates: 0,
                report_in: 0,
                report_out: 0,
                bucket: Bucket::new(NEIGHBOUR_RATE, now_us),
                sent: BTreeMap::new(),
                down_bps: 0,
                up_bps: 0,
                newest_seq: None,
                advert: NeighbourUpload::default(),
                last_advert_us: now_us,
                sent_advert: wire::Advert::default(),
            },
        );
    }

    pub(super) fn link_up(&mut self, now_us: u64, peer: PeerId) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        n.state = LinkState::Up;
        let (info, link) = (n.info.clone(), n.link);
        let r = self
            .scheduler
            .on_neighbour_up(now_us, peer, link, &mut self.sched_actions);
        self.after_scheduler("on_neighbour_up", r.into_result(), now_us);
        let r = self
            .overlay
            .on_connected(now_us, &info, &mut self.overlay_actions);
        self.after_overlay("on_connected", r.into_result(), now_us);
    }

    /// Removes a neighbour; `tell_overlay` when the overlay did not ask for it.
    pub(super) fn link_down(
        &mut self,
        now_us: u64,
        peer: PeerId,
        tell_overlay: bool,
        say_bye: bool,
    ) {
        let Some(n) = self.neighbours.remove(&peer) else {
            return;
        };
        if say_bye {
            self.send(n.addr, env_msg(&self.cfg, PeerMsg::Bye), false, now_us);
        }
        self.out.push(SessionOutput::ForgetPeer { addr: n.addr });
        if n.state == LinkState::Up {
            let r = self
                .scheduler
                .on_neighbour_down(now_us, peer, &mut self.sched_actions);
            self.after_scheduler("on_neighbour_down", r.into_result(), now_us);
        }
        if tell_overlay {
            let r = self
                .overlay
                .on_disconnected(now_us, peer, &mut self.overlay_actions);
            self.after_overlay("on_disconnected", r.into_result(), now_us);
        }
    }

    pub(super) fn set_link(&mut self, now_us: u64, peer: PeerId, link: Link, tell_peer: bool) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.link == link {
            return;
        }
        n.link = link;
        let (addr, up) = (n.addr, n.state == LinkState::Up);
        if tell_peer {
            let msg = PeerMsg::SetLink {
                up: link.upstream,
                down: link.downstream,
            };
            self.send(addr, env_msg(&self.cfg, msg), true, now_us);
        }
        if up {
            // Schedulers see a changed link as a new one.
            let r = self
                .scheduler
                .on_neighbour_down(now_us, peer, &mut self.sched_actions);
            self.after_scheduler("on_neighbour_down", r.into_result(), now_us);
            let r = self
                .scheduler
                .on_neighbour_up(now_us, peer, link, &mut self.sched_actions);
            self.after_scheduler("on_neighbour_up", r.into_result(), now_us);
        }
    }

    /// Drops the neighbour `peer` and bans the address its link is at: the
    /// link is what proved false, not the id it claimed.
    pub(super) fn ban(&mut self, now_us: u64, peer: PeerId) {
        if let Some(addr) = self.neighbours.get(&peer).map(|n| n.addr) {
            self.ban_addr(addr);
        }
        self.link_down(now_us, peer, true, true);
    }

    pub(super) fn send(&mut self, to: SocketAddr, bytes: Vec<u8>, reliable: bool, now_us: u64) {
        self.stats.bytes_up += bytes.len() as u64;
        if let Some(n) = self.neighbours.values_mut().find(|n| n.addr == to) {
            n.last_sent_us = now_us;
            n.bytes_out += bytes.len() as u64;
        }
        self.out.push(SessionOutput::SendMessage {
            to,
            bytes,
            reliable,
        });
    }
}

/// A busy link hears this peer's unchanged advert once per this many
/// keepalive intervals.
const ADVERT_REFRESH: u64 = 5;

/// Whether an advert differs enough from the one a neighbour last got to be
/// worth a datagram: the capacity or cap changed, the rate by a quarter, the
/// queue by a tenth of a second.
fn advert_moved(sent: &wire::Advert, now: &wire::Advert) -> bool {
    let apart = |a: u64, b: u64, tol: u64| a.abs_diff(b) > tol;
    sent.capped != now.capped
        || apart(sent.capacity_bps, now.capacity_bps, sent.capacity_bps / 10)
        || apart(sent.rate_bps, now.rate_bps, sent.rate_bps / 4)
        || apart(sent.queued_us, now.queued_us, 100_000)
}
