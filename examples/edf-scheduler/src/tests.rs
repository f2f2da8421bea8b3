//! Written with plugin-api's test kit: scripted events one at a time, then
//! a small swarm on simulated time.

use std::collections::BTreeSet;

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::testing::{self, SchedDriver, Swarm, SwarmConfig};

use crate::wire::{self, Msg};
use crate::Edf;

fn edf() -> Edf {
    Edf::from_params(
        &Params::new()
            .with("window", "30")
            .with("max_outstanding", "8")
            .with("have_ms", "100"),
    )
    .unwrap()
}

fn link(peer: u64, down_bps: u64) -> LinkView {
    LinkView {
        peer: PeerId(peer),
        link: Link::BOTH,
        rtt_us: 40_000,
        down_bps,
        ..LinkView::default()
    }
}

fn wants(actions: &testing::Actions) -> Vec<(PeerId, Vec<u64>)> {
    actions
        .messages()
        .into_iter()
        .filter_map(|(peer, bytes, _)| match wire::decode(&bytes) {
            Some(Msg::Want(w)) => Some((peer, w.into_iter().map(|(s, _)| s).collect())),
            _ => None,
        })
        .collect()
}

#[test]
fn asks_earliest_deadline_first_and_the_fast_holder_most() {
    let mut d = SchedDriver::new(edf());
    d.start();
    d.neighbour_up(PeerId(2), Link::BOTH);
    d.neighbour_up(PeerId(3), Link::BOTH);
    let held: BTreeSet<u64> = (10..20).collect();
    d.message(PeerId(2), &wire::have(&held, 19));
    d.message(PeerId(3), &wire::have(&held, 19));
    d.at(1_000_000);
    d.view(&View {
        playout: PlayoutView {
            playing: true,
            next_seq: 10,
            next_deadline_us: 1_500_000,
            ..PlayoutView::default()
        },
        // 2 delivers at 8 Mbit/s, 3 has sent nothing yet.
        links: vec![link(2, 8_000_000), link(3, 0)].into(),
    });
    let asked = wants(&d.tick());
    let all: Vec<u64> = asked.iter().flat_map(|(_, s)| s.clone()).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (10..20).collect::<Vec<_>>(),
        "every missing chunk once"
    );
    let to = |p| {
        asked
            .iter()
            .find(|(q, _)| *q == PeerId(p))
            .map_or(0, |(_, s)| s.len())
    };
    assert!(to(2) > to(3), "the fast holder gets more: {asked:?}");
    let first_of_2 = &asked.iter().find(|(q, _)| *q == PeerId(2)).unwrap().1;
    assert_eq!(first_of_2[0], 10, "most urgent first");
    // Asked once: the next tick asks nothing until the retry time.
    assert!(wants(&d.advance(20_000).tick()).is_empty());
    assert_eq!(d.metric("requests"), Some(10.0));
    // Chunk 10 arrives; the rest, overdue, are asked again.
    d.chunk(10, Some(PeerId(2)));
    let again: usize = wants(&d.advance(2_000_000).tick())
        .iter()
        .map(|(_, s)| s.len())
        .sum();
    assert_eq!(again, 0, "past their deadline, nothing is asked again");
}

#[test]
fn serves_the_most_urgent_request_first_and_requeues_a_refused_send() {
    let mut d = SchedDriver::new(edf()).with_context(SchedContext {
        is_source: true,
        ..testing::sched_context()
    });
    d.start();
    d.neighbour_up(PeerId(5), Link::BOTH);
    for seq in 0..5 {
        d.chunk(seq, None);
    }
    d.message(PeerId(5), &wire::want(&[(1, 500), (3, 50)]));
    let one_chunk = Capacity {
        can_send_bytes: 10_000,
        rate_bps: 4_000_000,
        rtt_us: 40_000,
    };
    assert_eq!(
        d.capacity(PeerId(5), one_chunk).chunks(),
        vec![(PeerId(5), 3)]
    );
    d.refused(Refusal {
        kind: RefusalKind::CHUNK_NO_ROOM,
        peer: PeerId(5),
        seq: 3,
        bytes: 10_000,
        limit: 0,
    });
    assert_eq!(
        d.capacity(PeerId(5), one_chunk).chunks(),
        vec![(PeerId(5), 3)]
    );
    assert_eq!(
        d.capacity(PeerId(5), one_chunk).chunks(),
        vec![(PeerId(5), 1)]
    );
    assert_eq!(d.metric("served"), Some(2.0));
    assert_eq!(d.metric("refused"), Some(1.0));
}

#[test]
fn a_request_past_its_deadline_is_dropped_and_garbage_is_counted() {
    let mut d = SchedDriver::new(edf());
    d.start();
    d.neighbour_up(PeerId(5), Link::BOTH);
    d.chunk(2, Some(PeerId(5)));
    d.message(PeerId(5), &wire::want(&[(2, 10)]));
    d.message(PeerId(5), b"\x07garbage");
    d.advance(20_000);
    let room = Capacity {
        can_send_bytes: 100_000,
        ..Capacity::default()
    };
    assert!(d.capacity(PeerId(5), room).chunks().is_empty());
    assert_eq!(d.metric("expired"), Some(1.0));
    assert_eq!(d.metric("malformed"), Some(1.0));
}

#[test]
fn a_small_swarm_plays_the_stream() {
    // Publisher with 2.5 copies of upload, 6 subscribers with 1.5 each.
    let mut swarm = Swarm::new(
        SwarmConfig {
            peers: 6,
            source_upload_bps: 2_000_000,
            upload_bps: 1_200_000,
            ..SwarmConfig::default()
        },
        |_| edf(),
    );
    swarm.run_for(30_000_000);
    for peer in swarm.results() {
        assert!(peer.played > 200, "{peer:?}");
        assert!(peer.continuity() > 0.95, "{peer:?}");
        let served = peer.metrics.iter().find(|m| m.name.as_str() == "served");
        assert!(served.is_some(), "{peer:?}");
    }
    // Subscribers shared the load: the publisher alone could not feed six.
    let forwarded: u64 = swarm.results().iter().map(|p| p.chunks_sent).sum();
    assert!(forwarded > 0);
}
