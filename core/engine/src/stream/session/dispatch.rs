//! Calls into the scheduler and overlay and the actions they answer with:
//! messages and chunks to send (within the tick's budget), links to open,
//! close or change, and requests for more peers.

use std::net::SocketAddr;

use p2ner_plugin_api::{OverlayAction, PluginError, Refusal, RefusalKind, SchedAction};
use p2ner_proto::peer::PeerMsg;

use super::links::LinkState;
use super::{env_msg, Session, SessionOutput};

/// Rounds of refusals told and answers carried out per event: a plugin that
/// answers every refusal with another refused action stops here.
const REFUSAL_ROUNDS: usize = 4;

impl Session {
    /// Carries out the scheduler's actions for one call, then tells it what
    /// was refused (`on_refused`, one call per refusal, in action order) and
    /// carries out what it answers, bounded in rounds.
    pub(super) fn after_scheduler(&mut self, call: &str, r: Result<(), PluginError>, now_us: u64) {
        if let Err(e) = r {
            self.fail(format!("scheduler {call}: {e}"));
        }
        for _ in 0..REFUSAL_ROUNDS {
            self.scheduler_actions(now_us);
            if self.sched_refusals.is_empty() || self.failed.is_some() {
                break;
            }
            for refusal in std::mem::take(&mut self.sched_refusals) {
                let r = self
                    .scheduler
                    .on_refused(now_us, refusal, &mut self.sched_actions);
                if let Err(e) = r.into_result() {
                    self.fail(format!("scheduler on_refused: {e}"));
                }
            }
        }
        // Refusals of the last round's answers are counted, not told.
        self.sched_refusals.clear();
        self.sched_actions.clear();
    }

    fn refuse(&mut self, scheduler: bool, refusal: Refusal) {
        *self
            .stats
            .refused_actions
            .entry(refusal.kind.name().to_owned())
            .or_default() += 1;
        tracing::debug!(stream = %self.cfg.name, peer = %refusal.peer, seq = refusal.seq, bytes = refusal.bytes, limit = refusal.limit, "{} action refused: {}", if scheduler { "scheduler" } else { "overlay" }, refusal.kind);
        if scheduler {
            self.sched_refusals.push(refusal);
        } else {
            self.overlay_refusals.push(refusal);
        }
    }

    fn scheduler_actions(&mut self, now_us: u64) {
        let max_message = self.cfg.max_message_bytes();
        let actions = std::mem::take(&mut self.sched_actions);
        for action in actions.iter() {
            match action {
                SchedAction::SendMessage {
                    peer,
                    payload,
                    reliable,
                } => {
                    let refusal = |kind, limit| Refusal {
                        kind,
                        peer: *peer,
                        seq: 0,
                        bytes: payload.len() as u64,
                        limit,
                    };
                    let Some(addr) = self.neighbours.get(peer).map(|n| n.addr) else {
                        self.refuse(true, refusal(RefusalKind::NOT_NEIGHBOUR, 0));
                        continue;
                    };
                    if payload.len() > max_message {
                        self.refuse(
                            true,
                            refusal(RefusalKind::MESSAGE_TOO_LARGE, max_message as u64),
                        );
                        continue;
                    }
                    let msg = PeerMsg::Scheduler(payload.to_vec());
                    self.send(addr, env_msg(&self.cfg, msg), *reliable, now_us);
                }
                SchedAction::SendChunk { peer, seq } => {
                    let refusal = |kind, bytes, limit| Refusal {
                        kind,
                        peer: *peer,
                        seq: *seq,
                        bytes,
                        limit,
                    };
                    let Some(n) = self.neighbours.get_mut(peer) else {
                        self.refuse(true, refusal(RefusalKind::NOT_NEIGHBOUR, 0, 0));
                        continue;
                    };
                    let Some(chunk) = self.buffer.get(*seq) else {
                        self.refuse(true, refusal(RefusalKind::CHUNK_NOT_BUFFERED, 0, 0));
                        continue;
                    };
                    let len = chunk.sealed.len() as u64;
                    // Beyond what the link takes, a chunk would only queue
                    // (the last one may overdraw, schedulers count in whole
                    // chunks).
                    if n.capacity.can_send_bytes == 0 || self.upload_left == Some(0) {
                        self.stats.chunks_refused += 1;
                        self.refuse(true, refusal(RefusalKind::CHUNK_NO_ROOM, len, 0));
                        continue;
                    }
                    // However often a neighbour asks, it draws a chunk at
                    // most twice: no amplification beyond one stream copy
                    // (and a repair) per neighbour.
                    let sends = n.sent.entry(*seq).or_insert(0);
                    if *sends >= super::MAX_SENDS_PER_CHUNK {
                        self.stats.chunks_resend_refused += 1;
                        continue;
                    }
                    *sends += 1;
                    n.capacity.can_send_bytes = n.capacity.can_send_bytes.saturating_sub(len);
                    if let Some(left) = &mut self.upload_left {
                        *left = left.saturating_sub(len);
                    }
                    n.bytes_out += len;
                    n.last_sent_us = now_us;
                    self.stats.bytes_up += len;
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
            for refusal in std::mem::take(&mut self.overlay_refusals) {
                let r = self
                    .overlay
                    .on_refused(now_us, refusal, &mut self.overlay_actions);
                if let Err(e) = r.into_result() {
                    self.fail(format!("overlay on_refused: {e}"));
                }
            }
        }
        self.overlay_refusals.clear();
    }

    pub(super) fn overlay_action(&mut self, action: OverlayAction, now_us: u64) {
        match action {
            OverlayAction::Connect { peer, link } => {
                if peer.id == self.cfg.local.id || self.neighbours.contains_key(&peer.id) {
                    return;
                }
                let addr = match peer.addr.parse::<SocketAddr>() {
                    Ok(addr) if !self.is_banned(&addr) && !self.other_at(addr, peer.id) => addr,
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
                self.remember(peer.id, addr);
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
                let max_message = self.cfg.max_message_bytes();
                let refusal = |kind, limit| Refusal {
                    kind,
                    peer,
                    seq: 0,
                    bytes: payload.len() as u64,
                    limit,
                };
                match self.book.get(&peer) {
                    None => self.refuse(false, refusal(RefusalKind::NOT_NEIGHBOUR, 0)),
                    Some(_) if payload.len() > max_message => self.refuse(
                        false,
                        refusal(RefusalKind::MESSAGE_TOO_LARGE, max_message as u64),
                    ),
                    Some(&addr) => {
                        let msg = PeerMsg::Overlay(payload.to_vec());
                        self.send(addr, env_msg(&self.cfg, msg), reliable, now_us);
                    }
                }
            }
            OverlayAction::WantPeers { count } => self.out.push(SessionOutput::WantPeers { count }),
        }
    }
}
