//! Calls into the scheduler and overlay and the actions they answer with:
//! messages and chunks to send (within the tick's budget), links to open,
//! close or change, and requests for more peers.

use std::net::SocketAddr;

use p2ner_plugin_api::{OverlayAction, PluginError, SchedAction};
use p2ner_proto::peer::PeerMsg;

use super::links::LinkState;
use super::{env_msg, Session, SessionOutput};

impl Session {
    pub(super) fn after_scheduler(&mut self, call: &str, r: Result<(), PluginError>, now_us: u64) {
        if let Err(e) = r {
            self.fail(format!("scheduler {call}: {e}"));
        }
        let actions = std::mem::take(&mut self.sched_actions);
        for action in actions.iter() {
            match action {
                SchedAction::SendMessage {
                    peer,
                    payload,
                    reliable,
                } => {
                    if let Some(addr) = self.neighbours.get(peer).map(|n| n.addr) {
                        let msg = PeerMsg::Scheduler(payload.to_vec());
                        self.send(addr, env_msg(&self.cfg, msg), *reliable, now_us);
                    }
                }
                SchedAction::SendChunk { peer, seq } => {
                    let (Some(n), Some(chunk)) =
                        (self.neighbours.get_mut(peer), self.buffer.get(*seq))
                    else {
                        continue;
                    };
                    // Beyond what the link takes, a chunk would only queue
                    // (the last one may overdraw, schedulers count in whole
                    // chunks).
                    if n.capacity.can_send_bytes == 0 || self.upload_left == Some(0) {
                        self.stats.chunks_refused += 1;
                        continue;
                    }
                    let len = chunk.sealed.len() as u64;
                    n.capacity.can_send_bytes = n.capacity.can_send_bytes.saturating_sub(len);
                    if let Some(left) = &mut self.upload_left {
                        *left = left.saturating_sub(len);
                    }
                    n.bytes_out += chunk.sealed.len() as u64;
                    n.last_sent_us = now_us;
                    self.stats.bytes_up += chunk.sealed.len() as u64;
                    self.stats.chunks_sent += 1;
                    self.out.push(SessionOutput::SendChunk {
                        to: n.addr,
                        seq: *seq,
                        data: chunk.sealed.clone(),
                    });
                }
            }
        }
        self.sched_actions = actions;
        self.sched_actions.clear();
    }

    pub(super) fn after_overlay(&mut self, call: &str, r: Result<(), PluginError>, now_us: u64) {
        if let Err(e) = r {
            self.fail(format!("overlay {call}: {e}"));
        }
        // Overlay actions may call back into the overlay (a failed connect);
        // handle them until none are left, bounded in rounds.
        for _ in 0..8 {
            if self.overlay_actions.is_empty() {
                break;
            }
            let actions = std::mem::take(&mut self.overlay_actions);
            for action in actions {
                self.overlay_action(action, now_us);
            }
        }
    }

    pub(super) fn overlay_action(&mut self, action: OverlayAction, now_us: u64) {
        match action {
            OverlayAction::Connect { peer, link } => {
                if peer.id == self.cfg.local.id || self.neighbours.contains_key(&peer.id) {
                    return;
                }
                let addr = match peer.addr.parse::<SocketAddr>() {
                    Ok(addr) if !self.banned.contains(&peer.id) => addr,
                    _ => {
                        let r = self.overlay.on_disconnected(
                            now_us,
                            peer.id,
                            &mut self.overlay_actions,
                        );
                        if let Err(e) = r.into_result() {
                            self.fail(format!("overlay on_disconnected: {e}"));
                        }
                        return;
                    }
                };
                self.book.insert(peer.id, addr);
                self.add_neighbour(now_us, peer.id, addr, link, LinkState::Connecting(now_us));
                self.neighbours.get_mut(&peer.id).expect("just added").info = peer.clone();
                self.send(addr, env_msg(&self.cfg, PeerMsg::hello(link)), true, now_us);
            }
            OverlayAction::Disconnect { peer } => self.link_down(now_us, peer, false, true),
            OverlayAction::SetLink { peer, link } => self.set_link(now_us, peer, link, true),
            OverlayAction::SendMessage {
                peer,
                payload,
                reliable,
            } => {
                if let Some(&addr) = self.book.get(&peer) {
                    let msg = PeerMsg::Overlay(payload.to_vec());
                    self.send(addr, env_msg(&self.cfg, msg), reliable, now_us);
                } else {
                    tracing::debug!(stream = %self.cfg.name, %peer, "overlay message to a peer of unknown address dropped");
                }
            }
            OverlayAction::WantPeers { count } => self.out.push(SessionOutput::WantPeers { count }),
        }
    }
}
