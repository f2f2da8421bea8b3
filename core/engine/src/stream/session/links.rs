//! Neighbour links and trust: the Hello/Welcome/Bye/SetLink handshake,
//! keepalives and timeouts, bans, and the per-neighbour reports the overlay
//! bases its choices on.

use std::net::SocketAddr;

use p2ner_plugin_api::{Capacity, Link, NeighbourReport, PeerId, PeerInfo};
use p2ner_proto::peer::{self as wire, Envelope, PeerMsg};

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
}

impl Session {
    /// A control message for this stream (the carrier checked `env.stream`).
    pub fn on_message(&mut self, now_us: u64, from: SocketAddr, env: Envelope, len: usize) {
        let peer = PeerId(env.from);
        if self.failed.is_some() || self.banned.contains(&peer) || peer == self.cfg.local.id {
            return;
        }
        self.stats.bytes_down += len as u64;
        self.book.insert(peer, from);
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.last_heard_us = now_us;
            n.bytes_in += len as u64;
            n.addr = from;
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
            PeerMsg::Ping => {}
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
                LinkState::Up if now_us >= n.last_sent_us + self.cfg.keepalive_us => {
                    ping.push(n.addr)
                }
                _ => {}
            }
        }
        for peer in dead {
            tracing::debug!(stream = %self.cfg.name, %peer, "neighbour timed out");
            self.link_down(now_us, peer, true, true);
        }
        for addr in ping {
            self.send(addr, env_msg(&self.cfg, PeerMsg::Ping), false, now_us);
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

    pub(super) fn ban(&mut self, now_us: u64, peer: PeerId) {
        if self.banned.insert(peer) {
            self.stats.peers_banned += 1;
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
