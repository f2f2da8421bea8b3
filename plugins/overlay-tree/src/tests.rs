use super::*;
use p2ner_plugin_api::abi_stable::std_types::{RNone, RSome, RVec};

fn info(id: u64) -> PeerInfo {
    PeerInfo {
        id: PeerId(id),
        addr: format!("10.0.0.{id}:4000").into(),
    }
}

fn ctx(id: u64, is_source: bool, seed: u64) -> OverlayContext {
    OverlayContext {
        local: info(id),
        is_source,
        seed,
        source: if is_source { RNone } else { RSome(info(0)) },
    }
}

fn messages(actions: &RVec<OverlayAction>) -> Vec<(u64, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            OverlayAction::SendMessage { peer, payload, .. } => {
                Some((peer.0, Message::decode(payload).expect("well formed")))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn messages_round_trip_stay_small_and_malformed_ones_are_ignored() {
    let long: Vec<PeerId> = (0..MAX_PATH as u64).map(PeerId).collect();
    let all = [
        Message::Join {
            stripe: 1,
            interior: true,
        },
        Message::Accept {
            stripe: 0,
            path: long.clone(),
        },
        Message::Redirect {
            stripe: 0,
            peers: (1..=4).map(info).collect(),
        },
        Message::Reject { stripe: 2 },
        Message::Leave { stripe: 0 },
        Message::Path {
            stripe: 0,
            attached: false,
            path: long,
        },
        Message::Heartbeat {
            stripe: 0,
            free: 3,
            subtree: 17,
        },
    ];
    for m in all {
        let bytes = m.encode();
        assert!(bytes.len() < 1000, "{m:?}: {} bytes", bytes.len());
        assert_eq!(Message::decode(&bytes), Some(m.clone()));
        for cut in 0..bytes.len() {
            assert!(
                Message::decode(&bytes[..cut]).is_none(),
                "{m:?} cut at {cut}"
            );
        }
    }
    assert!(Message::decode(&[JOIN, 0, 7]).is_none());
    assert!(Message::decode(&[99, 0]).is_none());
    assert!(Tree::new(&Params::new().with("fanout", "0")).is_err());
    assert!(Tree::new(&Params::new().with("stripes", "0")).is_err());
}

#[test]
fn a_full_node_redirects_and_no_node_adopts_an_ancestor() {
    let mut actions = RVec::new();
    let mut out = OverlayOut::new(&mut actions);
    // The source, fanout 1: peer 1 is adopted, peer 2 sent on to peer 1.
    let mut source = Tree::new(&Params::new().with("fanout", "1").with("stripes", "1")).unwrap();
    source.on_start(0, &ctx(0, true, 1), &mut out);
    for id in [1, 2] {
        source.on_connected(0, &info(id), &mut out);
        let join = Message::Join {
            stripe: 0,
            interior: true,
        };
        source.on_message(0, PeerId(id), &join.encode(), &mut out);
    }
    let said = messages(&actions);
    assert_eq!(
        said[0],
        (
            1,
            Message::Accept {
                stripe: 0,
                path: vec![PeerId(0)]
            }
        )
    );
    assert_eq!(
        said[1],
        (
            2,
            Message::Redirect {
                stripe: 0,
                peers: vec![info(1)]
            }
        )
    );
    assert!(actions.contains(&OverlayAction::SetLink {
        peer: PeerId(1),
        link: Link {
            upstream: false,
            downstream: true
        }
    }));
    assert_eq!(source.children(0), vec![PeerId(1)]);

    // Peer 5 joins the source, then learns its path is 0 -> 5 -> (it) ...
    actions.clear();
    let mut out = OverlayOut::new(&mut actions);
    let mut node = Tree::new(&Params::new().with("stripes", "1")).unwrap();
    node.on_start(0, &ctx(5, false, 1), &mut out);
    assert!(
        matches!(actions[0], OverlayAction::Connect { ref peer, link } if peer.id == PeerId(0) && link == Link::default())
    );
    let mut out = OverlayOut::new(&mut actions);
    node.on_connected(10, &info(0), &mut out);
    let accept = Message::Accept {
        stripe: 0,
        path: vec![PeerId(0)],
    };
    node.on_message(20, PeerId(0), &accept.encode(), &mut out);
    assert_eq!(node.parent(0), Some(PeerId(0)));
    assert_eq!(node.path(0), Some(&[PeerId(0), PeerId(5)][..]));
    // ... then the tree above changes: 0 -> 9 -> 5 (via a PATH heartbeat).
    let path = Message::Path {
        stripe: 0,
        attached: true,
        path: vec![PeerId(0), PeerId(9)],
    };
    node.on_message(30, PeerId(0), &path.encode(), &mut out);
    // Its ancestors 0 and 9 ask to be adopted: refused. Peer 7 is welcome.
    actions.clear();
    let mut out = OverlayOut::new(&mut actions);
    for id in [0, 9, 7] {
        node.on_connected(40, &info(id), &mut out);
        let join = Message::Join {
            stripe: 0,
            interior: true,
        };
        node.on_message(40, PeerId(id), &join.encode(), &mut out);
    }
    let said = messages(&actions);
    assert!(said.contains(&(0, Message::Reject { stripe: 0 })));
    assert!(said.contains(&(9, Message::Reject { stripe: 0 })));
    assert!(said.contains(&(
        7,
        Message::Accept {
            stripe: 0,
            path: vec![PeerId(0), PeerId(9), PeerId(5)]
        }
    )));
    // A loop reported by the parent (the path contains this peer): it leaves.
    actions.clear();
    let mut out = OverlayOut::new(&mut actions);
    let looped = Message::Path {
        stripe: 0,
        attached: true,
        path: vec![PeerId(7), PeerId(5), PeerId(0)],
    };
    node.on_message(50, PeerId(0), &looped.encode(), &mut out);
    assert_eq!(node.parent(0), None);
    assert!(messages(&actions).contains(&(0, Message::Leave { stripe: 0 })));
    // Its child is told it is detached, and it refuses joiners meanwhile.
    assert!(messages(&actions).contains(&(
        7,
        Message::Path {
            stripe: 0,
            attached: false,
            path: vec![PeerId(5)]
        }
    )));
}

/// A tiny engine: links, messages and candidates between overlays, with a
/// fake clock and a 10 ms delay on everything.
struct Net {
    nodes: Vec<Option<Tree>>,
    /// The link as each side sees it.
    links: BTreeMap<(usize, usize), Link>,
    queue: Vec<(u64, usize, Ev)>,
    now: u64,
    rng: Rng,
}

#[derive(Debug)]
enum Ev {
    /// A `Hello` from `from` reaches the node.
    Hello {
        from: usize,
        link: Link,
    },
    /// The `Welcome` for its `Hello` reaches the node.
    Welcome {
        from: usize,
    },
    Failed {
        peer: usize,
    },
    Bye {
        from: usize,
    },
    SetLink {
        from: usize,
        link: Link,
    },
    Msg {
        from: usize,
        payload: Vec<u8>,
    },
    Start,
}

const DELAY: u64 = 10_000;

fn mirror(l: Link) -> Link {
    Link {
        upstream: l.downstream,
        downstream: l.upstream,
    }
}

impl Net {
    fn new(n: usize, params: &Params, seed: u64) -> Net {
        let nodes = (0..n).map(|_| Some(Tree::new(params).unwrap())).collect();
        Net {
            nodes,
            links: BTreeMap::new(),
            queue: Vec::new(),
            now: 0,
            rng: Rng::new(seed),
        }
    }

    fn at(&mut self, delay: u64, node: usize, ev: Ev) {
        self.queue.push((self.now + delay, node, ev));
    }

    fn apply(&mut self, node: usize, actions: RVec<OverlayAction>) {
        for a in actions {
            match a {
                OverlayAction::Connect { peer, link } => {
                    let to = peer.id.0 as usize;
                    if let std::collections::btree_map::Entry::Vacant(e) =
                        self.links.entry((node, to))
                    {
                        e.insert(link);
                        if self.nodes[to].is_some() {
                            self.at(DELAY, to, Ev::Hello { from: node, link });
                        } else {
                            self.at(1_000_000, node, Ev::Failed { peer: to });
                        }
                    }
                }
                OverlayAction::Disconnect { peer } => {
                    let to = peer.0 as usize;
                    if self.links.remove(&(node, to)).is_some() {
                        self.at(DELAY, to, Ev::Bye { from: node });
                    }
                }
                OverlayAction::SetLink { peer, link } => {
                    let to = peer.0 as usize;
                    if let Some(l) = self.links.get_mut(&(node, to)) {
                        *l = link;
                        self.at(DELAY, to, Ev::SetLink { from: node, link });
                    }
                }
                OverlayAction::SendMessage { peer, payload, .. } => {
                    let payload = payload.into_vec();
                    assert!(payload.len() < 1000);
                    self.at(
                        DELAY,
                        peer.0 as usize,
                        Ev::Msg {
                            from: node,
                            payload,
                        },
                    );
                }
                OverlayAction::WantPeers { .. } => {
                    let peers = self.sample(node);
                    let mut acts = RVec::new();
                    let now = self.now;
                    if let Some(t) = self.nodes[node].as_mut() {
                        t.on_candidates(now, &peers, &mut OverlayOut::new(&mut acts));
                    }
                    self.apply(node, acts);
                }
            }
        }
    }

    /// What a server hands out: up to 5 live peers at random.
    fn sample(&mut self, node: usize) -> Vec<PeerInfo> {
        let mut alive: Vec<u64> = (0..self.nodes.len())
            .filter(|&i| i != node && self.nodes[i].is_some())
            .map(|i| i as u64)
            .collect();
        self.rng.shuffle(&mut alive);
        alive.into_iter().take(5).map(info).collect()
    }

    fn deliver(&mut self, node: usize, ev: Ev) {
        let now = self.now;
        let mut acts = RVec::new();
        let alive = self.nodes[node].is_some();
        if !alive {
            return;
        }
        match ev {
            Ev::Start => {
                let t = self.nodes[node].as_mut().unwrap();
                t.on_start(
                    now,
                    &ctx(node as u64, node == 0, 77 + node as u64),
                    &mut OverlayOut::new(&mut acts),
                );
                self.apply(node, std::mem::take(&mut acts));
                if node != 0 {
                    let peers = self.sample(node);
                    let t = self.nodes[node].as_mut().unwrap();
                    t.on_candidates(now, &peers, &mut OverlayOut::new(&mut acts));
                }
            }
            Ev::Hello { from, link } => {
                if self.nodes[from].is_none() || !self.links.contains_key(&(from, node)) {
                    return;
                }
                let fresh = !self.links.contains_key(&(node, from));
                self.links.entry((node, from)).or_insert(mirror(link));
                self.at(DELAY, from, Ev::Welcome { from: node });
                if fresh {
                    let t = self.nodes[node].as_mut().unwrap();
                    t.on_connected(now, &info(from as u64), &mut OverlayOut::new(&mut acts));
                }
            }
            Ev::Welcome { from } => {
                if self.links.contains_key(&(node, from)) {
                    let t = self.nodes[node].as_mut().unwrap();
                    t.on_connected(now, &info(from as u64), &mut OverlayOut::new(&mut acts));
                }
            }
            Ev::Failed { peer } => {
                if self.links.remove(&(node, peer)).is_some() {
                    let t = self.nodes[node].as_mut().unwrap();
                    t.on_disconnected(now, PeerId(peer as u64), &mut OverlayOut::new(&mut acts));
                }
            }
            Ev::Bye { from } => {
                if self.links.remove(&(node, from)).is_some() {
                    let t = self.nodes[node].as_mut().unwrap();
                    t.on_disconnected(now, PeerId(from as u64), &mut OverlayOut::new(&mut acts));
                }
            }
            Ev::SetLink { from, link } => {
                if let Some(l) = self.links.get_mut(&(node, from)) {
                    *l = mirror(link);
                }
            }
            Ev::Msg { from, payload } => {
                let t = self.nodes[node].as_mut().unwrap();
                t.on_message(
                    now,
                    PeerId(from as u64),
                    &payload,
                    &mut OverlayOut::new(&mut acts),
                );
            }
        }
        self.apply(node, acts);
    }

    /// Runs until `until_us`, ticking every overlay each 50 ms.
    fn run(&mut self, until_us: u64) {
        while self.now <= until_us {
            loop {
                let due: Vec<usize> = (0..self.queue.len())
                    .filter(|&i| self.queue[i].0 <= self.now)
                    .collect();
                if due.is_empty() {
                    break;
                }
                let mut batch = Vec::new();
                for i in due.into_iter().rev() {
                    batch.push(self.queue.remove(i));
                }
                batch.reverse();
                for (_, node, ev) in batch {
                    self.deliver(node, ev);
                }
            }
            if self.now.is_multiple_of(50_000) {
                for i in 0..self.nodes.len() {
                    let now = self.now;
                    let mut acts = RVec::new();
                    if let Some(t) = self.nodes[i].as_mut() {
                        t.on_tick(now, &mut OverlayOut::new(&mut acts));
                    }
                    self.apply(i, acts);
                }
            }
            self.now += DELAY;
        }
    }

    fn kill(&mut self, node: usize) {
        self.nodes[node] = None;
        self.links.retain(|&(a, b), _| a != node && b != node);
    }

    fn tree(&self, i: usize) -> &Tree {
        self.nodes[i].as_ref().expect("alive")
    }

    /// Checks the trees of every stripe; returns the deepest depth.
    fn check(&self, fanout: usize, source_fanout: usize, stripes: usize) -> usize {
        let n = self.nodes.len();
        let mut deepest = 0;
        for s in 0..stripes {
            for i in (0..n).filter(|&i| self.nodes[i].is_some()) {
                let t = self.tree(i);
                let max = if i == 0 { source_fanout } else { fanout };
                let kids = t.children(s);
                assert!(kids.len() <= max, "{i} has {} children in {s}", kids.len());
                if stripes > 1 && i != 0 && s != t.own_stripe() {
                    assert!(kids.is_empty(), "{i} is a leaf of stripe {s}");
                }
                for k in kids {
                    assert_eq!(self.tree(k.0 as usize).parent(s), Some(PeerId(i as u64)));
                    let l = self.links[&(i, k.0 as usize)];
                    assert!(l.downstream, "{i} -> {k} not downstream: {l:?}");
                }
                if i == 0 {
                    continue;
                }
                let p = t
                    .parent(s)
                    .unwrap_or_else(|| panic!("{i} has no parent in {s}"));
                let l = self.links[&(i, p.0 as usize)];
                assert!(l.upstream, "{i} -> parent {p} not upstream: {l:?}");
                let path = t.path(s).unwrap_or_else(|| panic!("{i} detached in {s}"));
                assert_eq!(path[0], PeerId(0));
                assert_eq!(path.last(), Some(&PeerId(i as u64)));
                // Walking up the parents reaches the source: no loop.
                let mut at = i;
                let mut hops = 0;
                while at != 0 {
                    at = self.tree(at).parent(s).expect("attached").0 as usize;
                    hops += 1;
                    assert!(hops < n, "loop through {i} in stripe {s}");
                }
                assert_eq!(hops, path.len() - 1);
                deepest = deepest.max(hops);
            }
        }
        deepest
    }

    fn shape(&self) -> Vec<Option<PeerId>> {
        (0..self.nodes.len())
            .map(|i| self.nodes[i].as_ref().and_then(|t| t.parent(0)))
            .collect()
    }
}

#[test]
fn seven_joiners_with_fanout_two_form_a_tree_of_depth_three() {
    let mut net = Net::new(
        8,
        &Params::new().with("fanout", "2").with("stripes", "1"),
        1,
    );
    for i in 0..8 {
        net.queue.push((i as u64 * 300_000, i, Ev::Start));
    }
    net.run(5_000_000);
    let depth = net.check(2, 2, 1);
    eprintln!("depth {depth}, parents {:?}", net.shape());
    assert!(depth <= 3, "depth {depth}: {:?}", net.shape());
}

#[test]
fn twenty_peers_form_a_tree_and_orphans_rejoin_after_their_parent_dies() {
    let params = Params::new().with("fanout", "3").with("stripes", "1");
    let mut net = Net::new(20, &params, 2);
    for i in 0..20 {
        net.queue.push((i as u64 * 50_000, i, Ev::Start));
    }
    net.run(8_000_000);
    let depth = net.check(3, 3, 1);
    assert!(depth <= 4, "depth {depth}: {:?}", net.shape());
    // Kill two interior peers (children of the source) without a word.
    let victims: Vec<usize> = net
        .tree(0)
        .children(0)
        .into_iter()
        .take(2)
        .map(|p| p.0 as usize)
        .filter(|&v| !net.tree(v).children(0).is_empty())
        .collect();
    assert!(!victims.is_empty());
    let orphans: Vec<usize> = victims
        .iter()
        .flat_map(|&v| net.tree(v).children(0))
        .map(|p| p.0 as usize)
        .collect();
    for &v in &victims {
        net.kill(v);
    }
    net.run(20_000_000);
    let depth = net.check(3, 3, 1);
    eprintln!(
        "after killing {victims:?}: depth {depth}, parents {:?}",
        net.shape()
    );
    for o in orphans {
        assert!(!victims.contains(&(net.tree(o).parent(0).unwrap().0 as usize)));
    }
}

#[test]
fn with_two_stripes_every_peer_has_a_parent_in_each_and_forwards_one() {
    let params = Params::new()
        .with("fanout", "4")
        .with("source_fanout", "3")
        .with("stripes", "2");
    let mut net = Net::new(20, &params, 3);
    for i in 0..20 {
        net.queue.push((i as u64 * 50_000, i, Ev::Start));
    }
    net.run(15_000_000);
    net.check(4, 3, 2);
    for i in 1..20 {
        let t = net.tree(i);
        assert!(t.parent(0).is_some() && t.parent(1).is_some());
    }
}

#[test]
fn same_seed_same_tree() {
    let run = || {
        let mut net = Net::new(
            15,
            &Params::new().with("fanout", "2").with("stripes", "1"),
            4,
        );
        for i in 0..15 {
            net.queue.push((i as u64 * 20_000, i, Ev::Start));
        }
        net.run(6_000_000);
        net.check(2, 2, 1);
        net.shape()
    };
    assert_eq!(run(), run());
}

#[test]
fn under_an_upload_cap_the_uplink_decides_the_children() {
    let upload = |kbps: u64| p2ner_plugin_api::Upload {
        capacity_bps: kbps * 1000,
        capped: true,
        stream_bps: 1_000_000,
        ..Default::default()
    };
    let mut actions = RVec::new();
    let mut out = OverlayOut::new(&mut actions);
    // One tree: a peer that cannot carry a whole copy is a leaf.
    let mut one = Tree::new(&Params::new().with("stripes", "1")).unwrap();
    one.on_upload(0, upload(500), &mut out);
    assert_eq!(one.slots(0), 0);
    // ...and joins as one, so it takes no interior slot it cannot use.
    assert!(!one.interior(0));
    one.on_upload(0, upload(1600), &mut out);
    assert_eq!(one.slots(0), 1);
    assert!(one.interior(0));
    // Four stripes: the same peers forward one or several stripe copies.
    let mut four = Tree::new(&Params::new().with("stripes", "4")).unwrap();
    four.on_upload(0, upload(500), &mut out);
    assert_eq!(four.slots(0), 1);
    // 6.4 copies, 80 % of them for children (the rest is slack for
    // repairs): five.
    four.on_upload(0, upload(1600), &mut out);
    assert_eq!(four.slots(0), 5);
    // A fraction of a slot rounds up only when that over-commits little:
    // 1.5 copies are one slot, 5.8 are six.
    assert_eq!(p2ner_plugin_api::stripes::whole_slots(1.5), 1);
    assert_eq!(p2ner_plugin_api::stripes::whole_slots(5.8), 6);
    assert_eq!(p2ner_plugin_api::stripes::whole_slots(5.4), 5);
    // Uncapped: the fanout parameter.
    four.on_upload(0, p2ner_plugin_api::Upload::default(), &mut out);
    assert_eq!(four.slots(0), 4);
}

#[test]
fn the_stripe_table_names_each_trees_parent_and_children() {
    // Two stripes, one parent each (the source in 0, peer 3 in 1), and a
    // child in stripe 0: the table says exactly that, per neighbour.
    let mut actions = RVec::new();
    let mut out = OverlayOut::new(&mut actions);
    let mut node = Tree::new(&Params::new().with("stripes", "2")).unwrap();
    node.on_start(0, &ctx(5, false, 1), &mut out);
    node.on_connected(10, &info(0), &mut out);
    let accept = |stripe, path: Vec<u64>| {
        Message::Accept {
            stripe,
            path: path.into_iter().map(PeerId).collect(),
        }
        .encode()
    };
    node.on_message(20, PeerId(0), &accept(0, vec![0]), &mut out);
    let mut table = Vec::new();
    node.stripe_links(&mut table);
    assert_eq!(
        table,
        vec![StripeLink {
            peer: PeerId(0),
            upstream: 0b01,
            downstream: 0
        }]
    );
    // Stripe 1: the source said no and sent it on to peer 3.
    let redirect = Message::Redirect {
        stripe: 1,
        peers: vec![info(3)],
    };
    node.on_message(30, PeerId(0), &redirect.encode(), &mut out);
    node.on_connected(40, &info(3), &mut out);
    node.on_message(50, PeerId(3), &accept(1, vec![0, 3]), &mut out);
    let own = node.own_stripe();
    node.on_connected(60, &info(8), &mut out);
    let join = Message::Join {
        stripe: own as u8,
        interior: false,
    };
    node.on_message(70, PeerId(8), &join.encode(), &mut out);
    assert_eq!(node.children(own), vec![PeerId(8)]);
    table.clear();
    node.stripe_links(&mut table);
    assert_eq!(
        table,
        vec![
            StripeLink {
                peer: PeerId(0),
                upstream: 0b01,
                downstream: 0
            },
            StripeLink {
                peer: PeerId(3),
                upstream: 0b10,
                downstream: 0
            },
            StripeLink {
                peer: PeerId(8),
                upstream: 0,
                downstream: 1 << own
            },
        ]
    );
}

/// Answers every join attempt `node` makes with a reject until `until_us`,
/// at 1 ms steps; returns when each round of attempts started (the first
/// join of a round after a quiet spell) and how many joins each had.
fn refuse_everything(
    node: &mut Tree,
    mut actions: RVec<OverlayAction>,
    from_us: u64,
    until_us: u64,
) -> Vec<(u64, usize)> {
    let mut rounds: Vec<(u64, usize)> = Vec::new();
    let mut last_join = 0;
    let mut now = from_us;
    while now < until_us {
        // Links open at once; joins are refused at once.
        let mut answered = true;
        while answered {
            answered = false;
            let pending = std::mem::take(&mut actions);
            for a in pending.iter() {
                match a {
                    OverlayAction::Connect { peer, .. } => {
                        node.on_connected(now, peer, &mut OverlayOut::new(&mut actions));
                        answered = true;
                    }
                    OverlayAction::SendMessage { peer, payload, .. } => {
                        if let Some(Message::Join { stripe, .. }) = Message::decode(payload) {
                            if rounds.is_empty() || now > last_join + 100_000 {
                                rounds.push((now, 0));
                            }
                            last_join = now;
                            rounds.last_mut().expect("pushed").1 += 1;
                            let reject = Message::Reject { stripe }.encode();
                            node.on_message(
                                now,
                                *peer,
                                &reject,
                                &mut OverlayOut::new(&mut actions),
                            );
                            answered = true;
                        }
                    }
                    _ => {}
                }
            }
        }
        now += 1_000;
        node.on_tick(now, &mut OverlayOut::new(&mut actions));
    }
    rounds
}

#[test]
fn a_stripe_nobody_takes_asks_a_few_peers_a_round_and_waits_longer_each_time() {
    let mut actions = RVec::new();
    let mut node = Tree::new(&Params::new().with("stripes", "1")).unwrap();
    node.on_start(0, &ctx(5, false, 1), &mut OverlayOut::new(&mut actions));
    let peers: Vec<PeerInfo> = (100..150).map(info).collect();
    node.on_candidates(0, &peers, &mut OverlayOut::new(&mut actions));
    let rounds = refuse_everything(&mut node, actions, 0, 20_000_000);
    // Every round asks at most ROUND_PEERS of the 51 (the source too)...
    assert!(
        rounds.iter().all(|&(_, joins)| joins <= ROUND_PEERS),
        "{rounds:?}"
    );
    // ... and the waits between rounds double: 1, 2, 4, 8 s.
    let starts: Vec<u64> = rounds.iter().map(|&(at, _)| at / 1_000_000).collect();
    assert_eq!(starts, vec![0, 1, 3, 7, 15], "{rounds:?}");

    // The same sample again (the answer to a round's WantPeers) does not
    // cut the wait short; a peer not heard of before does.
    let mut actions = RVec::new();
    node.on_candidates(20_000_000, &peers, &mut OverlayOut::new(&mut actions));
    assert!(actions.is_empty(), "{actions:?}");
    node.on_candidates(20_000_000, &[info(200)], &mut OverlayOut::new(&mut actions));
    assert!(!actions.is_empty(), "a new peer starts a round at once");
}
