//! The `tree` state machine: joins, slots that follow the uplink, repair.
//! See the crate docs for the why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::stripes::{stripe_of, whole_slots};
use p2ner_plugin_api::tracing;
use p2ner_plugin_api::{OverlayContext, StripeLink, Upload};

use crate::wire::*;

/// Parameters, each written once: `register` declares this table and
/// [`Tree::new`] reads from it.
pub const PARAMS: &[ParamDef] = &[
    FANOUT,
    SOURCE_FANOUT,
    STRIPES,
    HEARTBEAT_MS,
    TIMEOUT_MS,
    JOIN_TIMEOUT_MS,
    RETRY_MS,
];

const FANOUT: ParamDef = ParamDef::new(
    "fanout",
    "4",
    "children per peer (per stripe it forwards) when the upload is not capped; under a cap, as many as the uplink carries",
);
const SOURCE_FANOUT: ParamDef = ParamDef::new(
    "source_fanout",
    "0",
    "children of the publisher per stripe when its upload is not capped (0: same as fanout)",
);
const STRIPES: ParamDef = ParamDef::new(
    "stripes",
    "1",
    "number of trees; chunk s belongs to stripe s % stripes, each peer forwards one (under scarce upload use 4 or more, so that a peer that cannot upload a whole stream copy still forwards a stripe)",
);
const HEARTBEAT_MS: ParamDef = ParamDef::new(
    "heartbeat_ms",
    "500",
    "interval between heartbeats to parents and children",
);
const TIMEOUT_MS: ParamDef = ParamDef::new(
    "timeout_ms",
    "3000",
    "a parent or child silent this long is taken for dead",
);
const JOIN_TIMEOUT_MS: ParamDef = ParamDef::new(
    "join_timeout_ms",
    "3000",
    "a join attempt not answered within this time tries the next candidate",
);
const RETRY_MS: ParamDef = ParamDef::new(
    "retry_ms",
    "1000",
    "after a round of join attempts (at most 16 candidates) all refused, wait this long before the next; the wait doubles with each such round in a row, up to 8 times this",
);

#[derive(Debug, Clone)]
struct Child {
    info: PeerInfo,
    heard_us: u64,
    interior: bool,
    /// Its free slots as it last said, less the joiners sent its way since.
    free: u32,
    subtree: u32,
}

#[derive(Debug, Clone)]
struct Attempt {
    peer: PeerInfo,
    since_us: u64,
    sent: bool,
}

/// One tree (stripe) as this peer sees it.
#[derive(Debug, Clone, Default)]
struct Stripe {
    parent: Option<PeerInfo>,
    parent_heard_us: u64,
    /// Root first, this peer last (when attached).
    path: Vec<PeerId>,
    attached: bool,
    children: BTreeMap<PeerId, Child>,
    joining: Option<Attempt>,
    /// Where to ask next (redirects), before the source and known peers.
    next: VecDeque<PeerInfo>,
    /// Asked in this round of attempts.
    tried: BTreeSet<PeerId>,
    retry_at_us: u64,
    /// Rounds in a row in which every candidate refused: the wait before
    /// the next round doubles with each (up to [`MAX_BACKOFF`] rounds).
    failed_rounds: u32,
}

/// The `tree` overlay: trees rooted at the publisher, one per stripe, repaired when a parent goes (see the crate docs).
pub struct Tree {
    /// Children per stripe when the uplink is not capped; under a cap the
    /// uplink decides ([`Tree::slots`]).
    fanout: usize,
    source_fanout: usize,
    stripes: usize,
    heartbeat_us: u64,
    timeout_us: u64,
    join_timeout_us: u64,
    retry_us: u64,
    rng: Rng,
    local: Option<PeerInfo>,
    is_source: bool,
    own_stripe: usize,
    source: Option<PeerInfo>,
    known: BTreeMap<PeerId, PeerInfo>,
    /// Links up, and the media direction this overlay last set on them.
    links: BTreeMap<PeerId, (PeerInfo, Link)>,
    /// Links asked for, not up yet: when.
    connecting: BTreeMap<PeerId, u64>,
    /// Links a remote opened that are no relation yet: since when.
    inbound: BTreeMap<PeerId, u64>,
    trees: Vec<Stripe>,
    next_heartbeat_us: u64,
    asked_for_peers_us: Option<u64>,
    /// Copies of one stripe this peer's capped uplink carries, as the
    /// engine last said; `None` uncapped.
    stripe_copies: Option<usize>,
    /// Messages sent by kind (the wire's kind byte, 1-7) and their bytes,
    /// for `metrics`: sends happen in `&self` helpers, hence the cells.
    sent: [std::cell::Cell<u64>; 8],
    sent_bytes: std::cell::Cell<u64>,
}

/// Share of the publisher's capped uplink given to children: the rest is
/// for control traffic, the data channel's framing and sealing (4-5 % of a
/// chunk) and the repairs only the publisher can serve. Every copy the
/// publisher does not send is one the swarm lacks, but a publisher that
/// promises more than it carries queues, and what it drops as late is lost
/// to a whole subtree. Sim, push x tree, 50 peers, publisher at 2x, 4 seeds,
/// continuity mean at loads 0.7 / 0.8 on the sealed wire: 0.934 / 0.898 at
/// 0.94 (15 stripe copies), 0.951 / 0.913 at 0.88 (14), 0.962 / 0.931 at
/// 0.82 (13), 0.947 / 0.916 at 0.76 (12), 0.951 / 0.905 at 0.70 (11).
const SOURCE_UPLOAD_FOR_CHILDREN: f64 = 0.82;
/// Share of a peer's capped uplink given to children, well below what it
/// could carry on purpose. With the publisher's share the weakest uplinks
/// took every child they could and ran with a standing queue (chunks
/// dropped as late, repairs with no spare near) while strong ones served a
/// fraction of theirs; fewer slots per node send the children on to the
/// next node with room, and the slack carries the repairs. Sim, push x
/// tree, 50 peers, continuity mean at loads 0.5/0.7/0.8/0.9/0.95:
/// 0.978/0.914/0.909/0.852/0.798 at 0.94, 0.992/0.980/0.937/0.857/0.796
/// at 0.80. Slots are whole, so the figures move in steps: 0.79 lost 0.04
/// at load 0.9, 0.82-0.85 lost 0.01-0.02 at 0.8, and 0.81 at the
/// publisher too lost 0.06 at 0.8.
const PEER_UPLOAD_FOR_CHILDREN: f64 = 0.80;

/// Candidates asked in one round of join attempts at most (redirects
/// included), before waiting `retry_ms`.
const ROUND_PEERS: usize = 16;
/// A stripe that found no parent round after round waits `retry_ms` x 2^k
/// before the next, k at most this (8 s at the default 1 s).
const MAX_BACKOFF: u32 = 3;

/// Children per stripe at most, however much a peer can upload.
const MAX_SLOTS: usize = 32;

impl Tree {
    /// A tree from its parameters.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let fanout: usize = FANOUT.parse(params)?;
        let source_fanout: usize = SOURCE_FANOUT.parse(params)?;
        let stripes: usize = STRIPES.parse(params)?;
        if fanout == 0 || !(1..=MAX_STRIPES).contains(&stripes) {
            return Err(PluginError::new(format!(
                "need fanout >= 1 and 1 <= stripes <= {MAX_STRIPES}"
            )));
        }
        let tree = Tree {
            fanout,
            source_fanout: if source_fanout == 0 {
                fanout
            } else {
                source_fanout
            },
            stripes,
            heartbeat_us: HEARTBEAT_MS.parse::<u64>(params)? * 1000,
            timeout_us: TIMEOUT_MS.parse::<u64>(params)? * 1000,
            join_timeout_us: JOIN_TIMEOUT_MS.parse::<u64>(params)? * 1000,
            retry_us: RETRY_MS.parse::<u64>(params)? * 1000,
            rng: Rng::new(0),
            local: None,
            is_source: false,
            own_stripe: 0,
            source: None,
            known: BTreeMap::new(),
            links: BTreeMap::new(),
            connecting: BTreeMap::new(),
            inbound: BTreeMap::new(),
            trees: vec![Stripe::default(); stripes],
            next_heartbeat_us: 0,
            asked_for_peers_us: None,
            stripe_copies: None,
            sent: Default::default(),
            sent_bytes: Default::default(),
        };
        if tree.heartbeat_us == 0 || tree.timeout_us <= tree.heartbeat_us {
            return Err(PluginError::new(
                "need heartbeat_ms > 0 and timeout_ms > heartbeat_ms",
            ));
        }
        Ok(tree)
    }

    fn me(&self) -> PeerId {
        self.local.as_ref().map_or(PeerId(0), |l| l.id)
    }

    /// Whether this peer forwards stripe `s` (takes children in it): the
    /// publisher all, a peer its own stripe, unless its capped uplink cannot
    /// carry even one copy of it. Such a peer joins as a leaf, so it never
    /// takes (or evicts a leaf from) an interior slot it cannot use.
    pub fn interior(&self, s: usize) -> bool {
        self.is_source || (s == self.own_stripe && self.stripe_copies != Some(0))
    }

    /// Whether this peer takes children in stripe `s`, which is not its
    /// own, with upload its own stripe leaves over. Stripes are dealt out
    /// by a hash of the id, so under caps some stripes' forwarders have
    /// far less upload between them than their stripe needs while others
    /// have spare; adopting moves that spare where it is short. Only under
    /// a cap (uncapped, every stripe's forwarders have `fanout` each), and
    /// only where this peer is attached (it has what it would forward).
    fn adopts(&self, s: usize) -> bool {
        !self.is_source
            && s != self.own_stripe
            && self.stripe_copies.is_some_and(|c| c > 0)
            && self.trees[s].attached
    }

    /// Children this peer has over all stripes.
    fn all_children(&self) -> usize {
        self.trees.iter().map(|t| t.children.len()).sum()
    }

    /// This peer's parent in stripe `s`.
    pub fn parent(&self, s: usize) -> Option<PeerId> {
        self.trees.get(s)?.parent.as_ref().map(|p| p.id)
    }

    /// This peer's children in stripe `s`.
    pub fn children(&self, s: usize) -> Vec<PeerId> {
        self.trees
            .get(s)
            .map_or(Vec::new(), |t| t.children.keys().copied().collect())
    }

    /// The path root..this peer in stripe `s`, if attached to the root.
    pub fn path(&self, s: usize) -> Option<&[PeerId]> {
        let t = self.trees.get(s)?;
        t.attached.then_some(t.path.as_slice())
    }

    /// The stripe this peer is interior in (the source: all).
    pub fn own_stripe(&self) -> usize {
        self.own_stripe
    }

    /// Children per stripe this peer takes. Under an upload cap, what the
    /// uplink carries: a peer that cannot upload a whole stripe's copy is a
    /// leaf, never an interior node, and a strong one takes more children.
    /// The publisher forwards every stripe, a peer only its own, so the
    /// publisher's copies are shared by all its stripes.
    fn slots(&self, s: usize) -> usize {
        match (self.stripe_copies, self.is_source) {
            // Spread over the stripes, the first ones taking the remainder.
            (Some(copies), true) => {
                (copies / self.stripes + usize::from(s < copies % self.stripes)).min(MAX_SLOTS)
            }
            (Some(copies), false) => copies.min(MAX_SLOTS),
            (None, true) => self.source_fanout,
            (None, false) => self.fanout,
        }
    }

    fn free(&self, s: usize) -> usize {
        if !self.interior(s) && !self.adopts(s) {
            return 0;
        }
        match (self.stripe_copies, self.is_source) {
            // One uplink for the own stripe and the adopted ones.
            (Some(copies), false) => copies.min(MAX_SLOTS).saturating_sub(self.all_children()),
            _ => self.slots(s).saturating_sub(self.trees[s].children.len()),
        }
    }

    fn send(&self, out: &mut OverlayOut<'_>, peer: PeerId, msg: Message, reliable: bool) {
        let bytes = msg.encode();
        let kind = &self.sent[usize::from(bytes[0]) % self.sent.len()];
        kind.set(kind.get() + 1);
        self.sent_bytes
            .set(self.sent_bytes.get() + bytes.len() as u64);
        out.send_message(peer, bytes, reliable);
    }

    /// Makes the engine's link to `peer` match the relations, or closes it
    /// when there are none left (and no join is under way over it).
    fn sync_link(&mut self, now_us: u64, peer: PeerId, out: &mut OverlayOut<'_>) {
        let up = self
            .trees
            .iter()
            .any(|t| t.parent.as_ref().is_some_and(|p| p.id == peer));
        let down = self.trees.iter().any(|t| t.children.contains_key(&peer));
        let joining = self
            .trees
            .iter()
            .any(|t| t.joining.as_ref().is_some_and(|a| a.peer.id == peer));
        let link = Link {
            upstream: up,
            downstream: down,
        };
        if up || down {
            self.inbound.remove(&peer);
        }
        let Some((_, current)) = self.links.get_mut(&peer) else {
            return;
        };
        if !up && !down && !joining {
            let fresh = self
                .inbound
                .get(&peer)
                .is_some_and(|&since| now_us < since + self.join_timeout_us);
            if !fresh {
                self.links.remove(&peer);
                self.inbound.remove(&peer);
                out.disconnect(peer);
            }
            return;
        }
        if *current != link {
            *current = link;
            out.push(OverlayAction::SetLink { peer, link });
        }
    }

    fn subtree(&self, s: usize) -> u32 {
        1 + self.trees[s]
            .children
            .values()
            .map(|c| c.subtree)
            .sum::<u32>()
    }

    fn tell_children(&self, s: usize, out: &mut OverlayOut<'_>) {
        let t = &self.trees[s];
        for &child in t.children.keys() {
            let msg = Message::Path {
                stripe: s as u8,
                attached: t.attached,
                path: t.path.clone(),
            };
            self.send(out, child, msg, false);
        }
    }

    /// Loses the parent of stripe `s` (it left, died, or gave the slot away)
    /// and rejoins, asking `first` before anyone else.
    fn orphan(&mut self, now_us: u64, s: usize, first: Vec<PeerInfo>, out: &mut OverlayOut<'_>) {
        let old = self.trees[s].parent.take();
        let me = self.me();
        let t = &mut self.trees[s];
        t.attached = false;
        t.path = vec![me];
        t.tried.clear();
        t.next = first.into_iter().collect();
        self.tell_children(s, out);
        if let Some(old) = old {
            self.sync_link(now_us, old.id, out);
        }
        self.try_join(now_us, s, out);
    }

    /// Picks whom to ask next in stripe `s`, and asks.
    fn try_join(&mut self, now_us: u64, s: usize, out: &mut OverlayOut<'_>) {
        if self.is_source {
            return;
        }
        let me = self.me();
        let t = &self.trees[s];
        if t.parent.is_some() || t.joining.is_some() || now_us < t.retry_at_us {
            return;
        }
        // Never ask a descendant we know of, or anyone twice in a round.
        let excluded = |id: PeerId, t: &Stripe| {
            id == me || t.children.contains_key(&id) || t.tried.contains(&id)
        };
        let mut pick = None;
        let t = &mut self.trees[s];
        while let Some(p) = t.next.pop_front() {
            if !excluded(p.id, t) {
                pick = Some(p);
                break;
            }
        }
        if pick.is_none() {
            if let Some(src) = self.source.clone().filter(|p| !excluded(p.id, t)) {
                pick = Some(src);
            }
        }
        if pick.is_none() {
            let mut others: Vec<&PeerInfo> = self
                .known
                .values()
                .filter(|p| !excluded(p.id, &self.trees[s]))
                .collect();
            if !others.is_empty() {
                let i = self.rng.below(others.len() as u64) as usize;
                pick = Some(others.swap_remove(i).clone());
            }
        }
        // A round asks at most ROUND_PEERS: near the bound every node is
        // full, and asking each of them in turn, every round, cost a
        // detached stripe 50 joins (and as many links opened and closed)
        // a second.
        if self.trees[s].tried.len() >= ROUND_PEERS {
            pick = None;
        }
        let Some(peer) = pick else {
            // Everyone was asked, or a round's worth: wait, start over, and
            // ask for more peers.
            let t = &mut self.trees[s];
            t.tried.clear();
            t.retry_at_us = now_us + (self.retry_us << t.failed_rounds.min(MAX_BACKOFF));
            t.failed_rounds = t.failed_rounds.saturating_add(1);
            if self
                .asked_for_peers_us
                .is_none_or(|at| now_us >= at + self.retry_us)
            {
                self.asked_for_peers_us = Some(now_us);
                out.push(OverlayAction::WantPeers { count: 20 });
            }
            return;
        };
        let id = peer.id;
        let linked = self.links.contains_key(&id);
        let t = &mut self.trees[s];
        t.tried.insert(id);
        t.joining = Some(Attempt {
            peer: peer.clone(),
            since_us: now_us,
            sent: linked,
        });
        if linked {
            let interior = self.interior(s);
            let msg = Message::Join {
                stripe: s as u8,
                interior,
            };
            self.send(out, id, msg, true);
        } else if let std::collections::btree_map::Entry::Vacant(e) = self.connecting.entry(id) {
            e.insert(now_us);
            out.connect(peer, Link::default());
        }
    }

    /// The attempt in stripe `s` is over (refused, redirected, timed out).
    fn attempt_failed(&mut self, now_us: u64, s: usize, out: &mut OverlayOut<'_>) {
        if let Some(a) = self.trees[s].joining.take() {
            self.sync_link(now_us, a.peer.id, out);
        }
        self.try_join(now_us, s, out);
    }

    fn on_join(
        &mut self,
        now_us: u64,
        peer: PeerId,
        s: usize,
        interior: bool,
        out: &mut OverlayOut<'_>,
    ) {
        let stripe = s as u8;
        let Some(info) = self.links.get(&peer).map(|(info, _)| info.clone()) else {
            return;
        };
        let t = &self.trees[s];
        if t.children.contains_key(&peer) {
            let msg = Message::Accept {
                stripe,
                path: t.path.clone(),
            };
            self.send(out, peer, msg, true);
            return;
        }
        let own = self.interior(s);
        let refuse = !(own || self.adopts(s))
            || !t.attached
            || t.path.contains(&peer)
            || t.path.len() >= MAX_PATH;
        if refuse {
            self.send(out, peer, Message::Reject { stripe }, true);
            return;
        }
        let room = if own {
            self.free(s) > 0
        } else {
            // Adopted children never push out anyone, and a capped peer
            // adopts only what its own stripe leaves free right now.
            self.free(s) > 0 && self.trees[s].children.len() < self.slots(s)
        };
        // A full node gives a slot to a joiner of its own stripe that
        // forwards: an adopted child's first (it has other parents to
        // find), else a leaf's.
        let evict = if !room && own && interior {
            let adopted = (0..self.stripes)
                .filter(|&o| o != s && !self.is_source)
                .find_map(|o| self.trees[o].children.keys().next().map(|&id| (o, id)));
            adopted.or_else(|| {
                t.children
                    .iter()
                    .find(|(_, c)| !c.interior)
                    .map(|(&id, _)| (s, id))
            })
        } else {
            None
        };
        if room || evict.is_some() {
            if let Some((o, leaf)) = evict {
                self.trees[o].children.remove(&leaf);
                let peers = if o == s {
                    vec![info.clone()]
                } else {
                    Vec::new()
                };
                let msg = Message::Redirect {
                    stripe: o as u8,
                    peers,
                };
                self.send(out, leaf, msg, true);
                self.sync_link(now_us, leaf, out);
            }
            let child = Child {
                info,
                heard_us: now_us,
                interior,
                free: if interior { self.fanout as u32 } else { 0 },
                subtree: 1,
            };
            let t = &mut self.trees[s];
            t.children.insert(peer, child);
            let msg = Message::Accept {
                stripe,
                path: t.path.clone(),
            };
            self.send(out, peer, msg, true);
            self.sync_link(now_us, peer, out);
            return;
        }
        // Full: name the interior children with the most room first.
        let rng = &mut self.rng;
        let mut ranked: Vec<(u32, u32, u64, PeerId)> = self.trees[s]
            .children
            .iter()
            .filter(|(_, c)| c.interior || c.free > 0)
            .map(|(&id, c)| (u32::MAX - c.free.min(1), c.subtree, rng.next_u64(), id))
            .collect();
        ranked.sort_unstable();
        ranked.truncate(REDIRECT_PEERS);
        if ranked.is_empty() {
            self.send(out, peer, Message::Reject { stripe }, true);
            return;
        }
        let t = &mut self.trees[s];
        let first = t.children.get_mut(&ranked[0].3).expect("a child");
        first.free = first.free.saturating_sub(1);
        first.subtree += 1;
        let peers = ranked
            .iter()
            .map(|r| t.children[&r.3].info.clone())
            .collect();
        self.send(out, peer, Message::Redirect { stripe, peers }, true);
    }

    fn handle(&mut self, now_us: u64, peer: PeerId, msg: Message, out: &mut OverlayOut<'_>) {
        let me = self.me();
        match msg {
            Message::Join { stripe, interior } => {
                self.on_join(now_us, peer, stripe as usize, interior, out)
            }
            Message::Accept { stripe, path } => {
                let s = stripe as usize;
                let t = &mut self.trees[s];
                let expected = t.joining.as_ref().is_some_and(|a| a.peer.id == peer);
                if !expected || path.contains(&me) || path.len() >= MAX_PATH {
                    if t.parent.as_ref().is_none_or(|p| p.id != peer) {
                        self.send(out, peer, Message::Leave { stripe }, true);
                    }
                    return;
                }
                let attempt = t.joining.take().expect("expected");
                t.parent = Some(attempt.peer);
                t.parent_heard_us = now_us;
                t.path = path;
                t.path.push(me);
                t.attached = true;
                t.failed_rounds = 0;
                t.next.clear();
                t.tried.clear();
                self.sync_link(now_us, peer, out);
                self.tell_children(s, out);
            }
            Message::Redirect { stripe, peers } => {
                let s = stripe as usize;
                let t = &mut self.trees[s];
                if t.joining.as_ref().is_some_and(|a| a.peer.id == peer) {
                    for p in peers.into_iter().rev() {
                        t.next.push_front(p);
                    }
                    self.attempt_failed(now_us, s, out);
                } else if t.parent.as_ref().is_some_and(|p| p.id == peer) {
                    self.orphan(now_us, s, peers, out);
                }
            }
            Message::Reject { stripe } => {
                let s = stripe as usize;
                if self.trees[s]
                    .joining
                    .as_ref()
                    .is_some_and(|a| a.peer.id == peer)
                {
                    self.attempt_failed(now_us, s, out);
                }
            }
            Message::Leave { stripe } => {
                let s = stripe as usize;
                if self.trees[s].children.remove(&peer).is_some() {
                    self.sync_link(now_us, peer, out);
                } else if self.parent(s) == Some(peer) {
                    self.orphan(now_us, s, Vec::new(), out);
                }
            }
            Message::Path {
                stripe,
                attached,
                path,
            } => {
                let s = stripe as usize;
                if self.parent(s) != Some(peer) {
                    return;
                }
                if path.contains(&me) || path.len() >= MAX_PATH {
                    // A loop: leave it and rejoin from the root.
                    self.send(out, peer, Message::Leave { stripe }, true);
                    self.orphan(now_us, s, Vec::new(), out);
                    return;
                }
                let t = &mut self.trees[s];
                t.parent_heard_us = now_us;
                let changed = t.attached != attached;
                t.attached = attached;
                t.path = path;
                t.path.push(me);
                if changed {
                    self.tell_children(s, out);
                }
            }
            Message::Heartbeat {
                stripe,
                free,
                subtree,
            } => {
                if let Some(c) = self.trees[stripe as usize].children.get_mut(&peer) {
                    c.heard_us = now_us;
                    c.free = free as u32;
                    c.subtree = subtree.max(1);
                }
            }
        }
    }

    fn heartbeats(&mut self, out: &mut OverlayOut<'_>) {
        if tracing::enabled!(tracing::Level::TRACE) {
            let view: Vec<String> = self
                .trees
                .iter()
                .map(|t| {
                    let depth = if t.attached {
                        t.path.len() as i64 - 1
                    } else {
                        -1
                    };
                    format!("{depth}/{}", t.children.len())
                })
                .collect();
            let parents: Vec<u64> = (0..self.stripes)
                .map(|s| self.parent(s).map_or(0, |p| p.0))
                .collect();
            tracing::trace!(
                me = self.me().0,
                own = self.own_stripe,
                copies = ?self.stripe_copies,
                ?parents,
                "tree depth/children per stripe {view:?}"
            );
        }
        for s in 0..self.stripes {
            self.tell_children(s, out);
            if let Some(parent) = self.trees[s].parent.as_ref().map(|p| p.id) {
                let msg = Message::Heartbeat {
                    stripe: s as u8,
                    free: self.free(s).min(u8::MAX as usize) as u8,
                    subtree: self.subtree(s),
                };
                self.send(out, parent, msg, false);
            }
        }
    }
}

impl Overlay for Tree {
    fn on_start(&mut self, now_us: u64, ctx: &OverlayContext, out: &mut OverlayOut<'_>) {
        self.rng = Rng::new(ctx.seed);
        self.local = Some(ctx.local.clone());
        self.is_source = ctx.is_source;
        // The stripe a peer forwards depends on its id only, so that any
        // peer can tell (and the stripes get about equal shares of peers).
        self.own_stripe = stripe_of(ctx.local.id, self.stripes);
        self.source = ctx.source.as_ref().into_option().cloned();
        self.next_heartbeat_us = now_us + self.heartbeat_us;
        let me = ctx.local.id;
        for t in &mut self.trees {
            t.path = vec![me];
            t.attached = self.is_source;
        }
        for s in 0..self.stripes {
            self.try_join(now_us, s, out);
        }
    }

    fn on_candidates(&mut self, now_us: u64, peers: &[PeerInfo], out: &mut OverlayOut<'_>) {
        let me = self.me();
        let mut new = false;
        for p in peers.iter().filter(|p| p.id != me) {
            if let std::collections::btree_map::Entry::Vacant(e) = self.known.entry(p.id) {
                new = true;
                e.insert(p.clone());
            }
        }
        // Peers not heard of before may have room: ask now. The same
        // sample again (the answer to every round's `WantPeers`) is no
        // reason to cut the wait short.
        for s in 0..self.stripes {
            if new {
                self.trees[s].retry_at_us = self.trees[s].retry_at_us.min(now_us);
            }
            self.try_join(now_us, s, out);
        }
    }

    fn on_connected(&mut self, now_us: u64, peer: &PeerInfo, out: &mut OverlayOut<'_>) {
        let asked = self.connecting.remove(&peer.id).is_some();
        self.links
            .entry(peer.id)
            .or_insert_with(|| (peer.clone(), Link::default()));
        let mut used = false;
        for s in 0..self.stripes {
            let interior = self.interior(s);
            let t = &mut self.trees[s];
            if let Some(a) = t.joining.as_mut().filter(|a| a.peer.id == peer.id) {
                used = true;
                if !a.sent {
                    a.sent = true;
                    let msg = Message::Join {
                        stripe: s as u8,
                        interior,
                    };
                    self.send(out, peer.id, msg, true);
                }
            }
        }
        if !used && !asked {
            // A would-be child: it has `join_timeout_ms` to ask.
            self.inbound.entry(peer.id).or_insert(now_us);
        } else if !used {
            self.sync_link(now_us, peer.id, out);
        }
    }

    fn on_disconnected(&mut self, now_us: u64, peer: PeerId, out: &mut OverlayOut<'_>) {
        self.connecting.remove(&peer);
        self.inbound.remove(&peer);
        self.links.remove(&peer);
        for s in 0..self.stripes {
            self.trees[s].children.remove(&peer);
            if self.parent(s) == Some(peer) {
                self.orphan(now_us, s, Vec::new(), out);
            } else if self.trees[s]
                .joining
                .as_ref()
                .is_some_and(|a| a.peer.id == peer)
            {
                self.attempt_failed(now_us, s, out);
            }
        }
    }

    fn on_message(&mut self, now_us: u64, peer: PeerId, payload: &[u8], out: &mut OverlayOut<'_>) {
        let Some(msg) = Message::decode(payload) else {
            return;
        };
        let stripe = match &msg {
            Message::Join { stripe, .. }
            | Message::Accept { stripe, .. }
            | Message::Redirect { stripe, .. }
            | Message::Reject { stripe }
            | Message::Leave { stripe }
            | Message::Path { stripe, .. }
            | Message::Heartbeat { stripe, .. } => *stripe as usize,
        };
        if stripe < self.stripes {
            self.handle(now_us, peer, msg, out);
        }
    }

    fn metrics(&mut self, m: &mut Metrics<'_>) {
        let names = [
            (JOIN, "sent_join"),
            (ACCEPT, "sent_accept"),
            (REDIRECT, "sent_redirect"),
            (REJECT, "sent_reject"),
            (LEAVE, "sent_leave"),
            (PATH, "sent_path"),
            (HB, "sent_heartbeat"),
        ];
        for (kind, name) in names {
            m.counter(name, self.sent[usize::from(kind)].get());
        }
        m.counter(
            "sent_messages",
            self.sent.iter().map(std::cell::Cell::get).sum(),
        );
        m.counter("sent_bytes", self.sent_bytes.get());
        m.gauge("children", self.all_children() as f64);
        m.gauge(
            "attached",
            self.trees.iter().filter(|t| t.attached).count() as f64,
        );
    }

    fn stripe_links(&mut self, out: &mut Vec<StripeLink>) {
        let mut links: BTreeMap<PeerId, StripeLink> = BTreeMap::new();
        fn entry(links: &mut BTreeMap<PeerId, StripeLink>, peer: PeerId) -> &mut StripeLink {
            links.entry(peer).or_insert(StripeLink {
                peer,
                ..StripeLink::default()
            })
        }
        // `new` allows MAX_STRIPES (16): every stripe fits the mask.
        for (s, t) in self.trees.iter().enumerate() {
            if let Some(p) = &t.parent {
                entry(&mut links, p.id).upstream |= 1 << s;
            }
            for &c in t.children.keys() {
                entry(&mut links, c).downstream |= 1 << s;
            }
        }
        out.extend(links.into_values());
    }

    fn on_upload(&mut self, _now_us: u64, upload: Upload, _out: &mut OverlayOut<'_>) {
        self.stripe_copies = (upload.capped && upload.stream_bps > 0).then(|| {
            let stripe_bps = upload.stream_bps as f64 / self.stripes as f64;
            let share = if self.is_source {
                SOURCE_UPLOAD_FOR_CHILDREN
            } else {
                PEER_UPLOAD_FOR_CHILDREN
            };
            whole_slots(upload.capacity_bps as f64 * share / stripe_bps)
        });
    }

    fn on_tick(&mut self, now_us: u64, out: &mut OverlayOut<'_>) {
        for s in 0..self.stripes {
            // A silent parent is a dead one.
            let t = &self.trees[s];
            let silent = t
                .parent
                .as_ref()
                .filter(|_| now_us > t.parent_heard_us + self.timeout_us)
                .map(|p| p.id);
            if let Some(parent) = silent {
                self.send(out, parent, Message::Leave { stripe: s as u8 }, false);
                self.orphan(now_us, s, Vec::new(), out);
            }
            let dead: Vec<PeerId> = self.trees[s]
                .children
                .iter()
                .filter(|(_, c)| now_us > c.heard_us + self.timeout_us)
                .map(|(&id, _)| id)
                .collect();
            for id in dead {
                self.trees[s].children.remove(&id);
                self.sync_link(now_us, id, out);
            }
            let stale = self.trees[s]
                .joining
                .as_ref()
                .is_some_and(|a| now_us > a.since_us + self.join_timeout_us);
            if stale {
                self.attempt_failed(now_us, s, out);
            }
            self.try_join(now_us, s, out);
        }
        let unasked: Vec<PeerId> = self
            .inbound
            .iter()
            .filter(|(_, &since)| now_us >= since + self.join_timeout_us)
            .map(|(&id, _)| id)
            .collect();
        for id in unasked {
            self.sync_link(now_us, id, out);
        }
        self.connecting
            .retain(|_, &mut since| now_us <= since + 2 * self.join_timeout_us);
        if now_us >= self.next_heartbeat_us {
            self.next_heartbeat_us = now_us + self.heartbeat_us;
            self.heartbeats(out);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
