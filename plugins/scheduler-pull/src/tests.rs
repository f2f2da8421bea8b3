use super::*;
use p2ner_plugin_api::abi_stable::std_types::RVec;
use p2ner_plugin_api::SchedAction;

fn ctx(is_source: bool) -> SchedContext {
    SchedContext {
        local: PeerId(0),
        is_source,
        seed: 3,
        chunk_us: 100_000,
        window_chunks: 100,
        chunk_bytes: 1000,
    }
}

/// Runs one event and returns the actions it produced.
fn step(pull: &mut Pull, f: impl FnOnce(&mut Pull, &mut SchedOut<'_>)) -> RVec<SchedAction> {
    let mut actions = RVec::new();
    f(pull, &mut SchedOut::new(&mut actions));
    actions
}

fn decoded(actions: &RVec<SchedAction>) -> Vec<(u64, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedAction::SendMessage { peer, payload, .. } => {
                wire::decode(payload).map(|m| (peer.0, m))
            }
            _ => None,
        })
        .collect()
}

fn requests(actions: &RVec<SchedAction>) -> Vec<(u64, Vec<u64>)> {
    let mut r: Vec<(u64, Vec<u64>)> = decoded(actions)
        .into_iter()
        .filter_map(|(p, m)| match m {
            Message::Request { seqs, .. } => Some((p, seqs)),
            _ => None,
        })
        .collect();
    r.sort();
    r
}

fn chunks(actions: &RVec<SchedAction>) -> Vec<(u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedAction::SendChunk { peer, seq } => Some((peer.0, *seq)),
            _ => None,
        })
        .collect()
}

fn advert(kbps: u32, queued_ms: u16) -> Advert {
    Advert {
        upload_kbps: kbps,
        queued_ms,
    }
}

fn capped(capacity_bps: u64, budget_bytes: u64, queued_us: u64) -> Upload {
    Upload {
        capacity_bps,
        capped: true,
        rate_bps: 0,
        queued_bytes: 0,
        queued_us,
        budget_bytes,
        stream_bps: 0,
    }
}

fn playout(next: u64, newest: u64) -> Playout {
    Playout {
        next_seq: next,
        next_deadline_us: 50_000,
        oldest_seq: next,
        newest_seq: newest,
    }
}

#[test]
fn requests_urgent_then_rarest_from_the_soonest_holder_and_retries() {
    let mut pull = Pull::new(
        &Params::new()
            .with("max_requests", "2")
            .with("urgent_ms", "1000"),
    )
    .unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_neighbour_up(0, PeerId(2), Link::BOTH, o);
        // Peer 1 has 0..=3, peer 2 has 2..=5: 0,1 only at 1; 4,5 only at 2.
        p.on_message(
            0,
            PeerId(1),
            &wire::have(advert(10_000, 0), &[0, 1, 2, 3]),
            o,
        );
        p.on_message(
            0,
            PeerId(2),
            &wire::have(advert(10_000, 0), &[2, 3, 4, 5]),
            o,
        );
        p.on_playout(0, playout(0, 5), o);
    });
    let asked = requests(&step(&mut pull, |p, o| p.on_tick(10_000, o)));
    // Two requests per neighbour at most; the most urgent go first.
    assert_eq!(asked, vec![(1, vec![0, 1]), (2, vec![2, 3])]);
    // Nothing answers: after the timeout they are asked again.
    let again = requests(&step(&mut pull, |p, o| p.on_tick(1_500_000, o)));
    assert_eq!(again.iter().map(|(_, s)| s.len()).sum::<usize>(), 4);
}

#[test]
fn a_holder_with_a_long_queue_is_asked_last() {
    let mut pull = Pull::new(&Params::new()).unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_neighbour_up(0, PeerId(2), Link::BOTH, o);
        p.on_message(0, PeerId(1), &wire::have(advert(1000, 400), &[0]), o);
        p.on_message(0, PeerId(2), &wire::have(advert(1000, 10), &[0]), o);
        p.on_playout(0, playout(0, 0), o);
    });
    assert_eq!(
        requests(&step(&mut pull, |p, o| p.on_tick(10_000, o))),
        vec![(2, vec![0])]
    );
}

#[test]
fn serves_within_the_shared_uplink_and_each_link() {
    let mut pull = Pull::new(&Params::new().with("source_announce_ms", "0")).unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(true), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_neighbour_up(0, PeerId(2), Link::BOTH, o);
        for seq in 0..6 {
            p.on_chunk(0, seq, None, o);
        }
        // 2500 bytes of shared uplink this tick; each link takes plenty.
        p.on_upload(0, capped(8_000_000, 2500, 0), o);
    });
    let a = step(&mut pull, |p, o| {
        p.on_message(0, PeerId(1), &wire::request(u16::MAX, &[0, 1]), o);
        p.on_message(0, PeerId(2), &wire::request(u16::MAX, &[2, 3]), o);
    });
    assert_eq!(
        chunks(&a),
        vec![(1, 0), (1, 1), (2, 2)],
        "three 1000-byte chunks: the last may overdraw, as the data channel allows"
    );
    // Next tick the uplink takes more: the rest goes, in arrival order.
    let b = step(&mut pull, |p, o| {
        p.on_upload(20_000, capped(8_000_000, 10_000, 0), o);
        p.on_tick(20_000, o);
    });
    assert_eq!(chunks(&b), vec![(2, 3)]);
    // A link with no room holds its requests back without blocking others.
    let c = step(&mut pull, |p, o| {
        p.on_capacity(
            30_000,
            PeerId(1),
            Capacity {
                can_send_bytes: 0,
                rate_bps: 0,
                rtt_us: 0,
            },
            o,
        );
        p.on_message(30_000, PeerId(1), &wire::request(u16::MAX, &[4]), o);
        p.on_message(30_000, PeerId(2), &wire::request(u16::MAX, &[5]), o);
    });
    assert_eq!(chunks(&c), vec![(2, 5)]);
}

#[test]
fn a_request_that_cannot_be_served_in_time_is_refused_and_asked_elsewhere() {
    // The holder: 800 kbit/s, 250 ms already queued in the data channel.
    let mut holder = Pull::new(&Params::new().with("max_wait_ms", "300")).unwrap();
    step(&mut holder, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(9), Link::BOTH, o);
        for seq in 0..4 {
            p.on_chunk(0, seq, Some(PeerId(7)), o);
        }
        p.on_upload(0, capped(800_000, 0, 285_000), o);
    });
    // A joiner (no deadline yet) is served like a player: near the bound
    // there is no spare upload to serve it from.
    let joiner = decoded(&step(&mut holder, |p, o| {
        p.on_message(0, PeerId(9), &wire::request(u16::MAX, &[0]), o)
    }));
    assert!(joiner.is_empty(), "{joiner:?}");
    // A player with a second of slack: each promised 1000-byte chunk adds
    // 10 ms to the 285 ms queued, and only one more fits within max_wait_ms.
    let a = decoded(&step(&mut holder, |p, o| {
        p.on_message(0, PeerId(9), &wire::request(1000, &[0, 1, 2, 3]), o)
    }));
    let refused: Vec<u64> = a
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Refuse(s) => Some(s),
            _ => None,
        })
        .expect("a refusal");
    assert_eq!(refused, vec![2, 3]);
    // A tight deadline is refused outright.
    let b = decoded(&step(&mut holder, |p, o| {
        p.on_message(1, PeerId(9), &wire::request(100, &[3]), o)
    }));
    assert!(matches!(&b[..], [(9, Message::Refuse(s))] if s == &vec![3]));

    // The requester moves on at once to the other holder.
    let mut req = Pull::new(&Params::new()).unwrap();
    step(&mut req, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_neighbour_up(0, PeerId(2), Link::BOTH, o);
        p.on_message(0, PeerId(1), &wire::have(advert(2000, 0), &[0]), o);
        p.on_message(0, PeerId(2), &wire::have(advert(1000, 50), &[0]), o);
        p.on_playout(0, playout(0, 0), o);
    });
    assert_eq!(
        requests(&step(&mut req, |p, o| p.on_tick(10_000, o))),
        vec![(1, vec![0])]
    );
    step(&mut req, |p, o| {
        p.on_message(12_000, PeerId(1), &wire::refuse(&[0]), o)
    });
    assert_eq!(
        requests(&step(&mut req, |p, o| p.on_tick(30_000, o))),
        vec![(2, vec![0])]
    );
}

#[test]
fn an_accepted_request_that_expires_is_refused_then() {
    let mut holder = Pull::new(&Params::new().with("max_wait_ms", "300")).unwrap();
    step(&mut holder, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(9), Link::BOTH, o);
        p.on_chunk(0, 0, Some(PeerId(7)), o);
        // The uplink has no room this tick.
        p.on_upload(0, capped(800_000, 0, 50_000), o);
    });
    let accepted = step(&mut holder, |p, o| {
        p.on_message(0, PeerId(9), &wire::request(1000, &[0]), o)
    });
    assert!(chunks(&accepted).is_empty() && decoded(&accepted).is_empty());
    // Still no room when it expires: the requester hears so at once rather
    // than at its own timeout, and nothing is sent late.
    let later = step(&mut holder, |p, o| {
        p.on_upload(400_000, capped(800_000, 0, 50_000), o);
        p.on_tick(400_000, o);
    });
    assert!(chunks(&later).is_empty());
    assert!(decoded(&later)
        .iter()
        .any(|(peer, m)| *peer == 9 && *m == Message::Refuse(vec![0])));
}

#[test]
fn the_publisher_pushes_each_chunk_once_weighted_by_upload() {
    let mut pull = Pull::new(&Params::new()).unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(true), o);
        for id in 1..=3 {
            p.on_neighbour_up(0, PeerId(id), Link::BOTH, o);
        }
        // Peer 1 uploads 3x what peer 2 does; peer 3 cannot forward at all.
        p.on_message(0, PeerId(1), &wire::have(advert(1500, 0), &[]), o);
        p.on_message(0, PeerId(2), &wire::have(advert(500, 0), &[]), o);
        p.on_message(0, PeerId(3), &wire::have(advert(0, 0), &[]), o);
    });
    let mut sent = Vec::new();
    for seq in 0..40 {
        sent.extend(chunks(&step(&mut pull, |p, o| {
            p.on_chunk(seq * 100_000, seq, None, o)
        })));
    }
    assert_eq!(sent.len(), 40, "each chunk once: {sent:?}");
    let to = |id: u64| sent.iter().filter(|s| s.0 == id).count();
    assert_eq!((to(1), to(2), to(3)), (30, 10, 0));
    // Announced only after the delay.
    let early = decoded(&step(&mut pull, |p, o| p.on_tick(3_950_000, o)));
    assert!(early.iter().all(|(_, m)| match m {
        Message::Have(_, s) => s.iter().all(|&q| q < 37),
        _ => true,
    }));
}

#[test]
fn a_forged_far_future_have_costs_nothing() {
    let mut pull = Pull::new(&Params::new()).unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_message(0, PeerId(1), &wire::have(advert(1000, 0), &[5]), o);
        p.on_message(
            0,
            PeerId(1),
            &wire::have(advert(1000, 0), &[1 << 62, u64::MAX]),
            o,
        );
    });
    // The window moved at most one window ahead, and asks are bounded by it.
    assert!(pull.newest_known.unwrap() <= 5 + 100);
    let asked = requests(&step(&mut pull, |p, o| p.on_tick(10_000, o)));
    assert!(asked.iter().map(|(_, s)| s.len()).sum::<usize>() <= 8);
}

#[test]
fn the_publishers_state_stays_bounded_over_a_simulated_hour() {
    // 100 ms chunks for an hour: 36,000 chunks; maps cover the newest window.
    let mut pull = Pull::new(&Params::new()).unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(true), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
    });
    let mut last_map = None;
    for seq in 0..36_000u64 {
        let now = seq * 100_000;
        let a = step(&mut pull, |p, o| {
            p.on_chunk(now, seq, None, o);
            p.on_tick(now + 1, o);
        });
        for (_, m) in decoded(&a) {
            if let Message::Map(_, s) = m {
                last_map = Some(s);
            }
        }
    }
    assert!(pull.have.len() <= 100, "{}", pull.have.len());
    assert!(pull.neighbours[&PeerId(1)].have.len() <= 100);
    let map = last_map.expect("maps were sent");
    assert!(
        *map.first().unwrap() > 35_000,
        "the map covers the newest window"
    );
}

#[test]
fn forged_claims_do_not_move_the_window_past_held_chunks() {
    let mut pull = Pull::new(&Params::new()).unwrap();
    // A joiner's first word is a forged HAVE at 2^62; a real chunk follows.
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_neighbour_up(0, PeerId(2), Link::BOTH, o);
        p.on_message(0, PeerId(2), &wire::have(advert(1000, 0), &[1 << 62]), o);
        p.on_chunk(1000, 500, Some(PeerId(1)), o);
    });
    assert!(
        pull.newest_known.unwrap() <= 500 + 25,
        "{:?}",
        pull.newest_known
    );
    // Repeated claims a little ahead each cannot build on each other.
    for i in 0..100u64 {
        step(&mut pull, |p, o| {
            let claim = pull_newest(p) + 20;
            p.on_message(
                2000 + i,
                PeerId(2),
                &wire::have(advert(1000, 0), &[claim]),
                o,
            );
        });
    }
    assert!(
        pull.newest_known.unwrap() <= 500 + 25,
        "{:?}",
        pull.newest_known
    );
    // Once playing, chunks behind the newest held are still asked for.
    step(&mut pull, |p, o| {
        let playout = Playout {
            next_seq: 495,
            next_deadline_us: 500_000,
            oldest_seq: 495,
            newest_seq: 500,
        };
        p.on_playout(3000, playout, o);
        p.on_message(
            3000,
            PeerId(1),
            &wire::have(advert(1000, 0), &[495, 499]),
            o,
        )
    });
    let asked = requests(&step(&mut pull, |p, o| p.on_tick(10_000, o)));
    assert!(
        asked.iter().any(|(peer, s)| *peer == 1 && s.contains(&499)),
        "{asked:?}"
    );
}

fn pull_newest(p: &Pull) -> u64 {
    p.newest_known.unwrap_or(0)
}

fn metric(pull: &mut Pull, name: &str) -> f64 {
    let mut list = RVec::new();
    pull.metrics(&mut Metrics::new(&mut list));
    list.iter()
        .find(|m| m.name.as_str() == name)
        .map_or_else(|| panic!("no metric {name}"), |m| m.value)
}

#[test]
fn announcements_are_batched_per_have_ms_and_counted() {
    let mut pull = Pull::new(&Params::new().with("have_share_percent", "0")).unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_neighbour_up(0, PeerId(2), Link::BOTH, o);
        p.on_upload(0, capped(1_000_000, u64::MAX, 0), o);
    });
    // Ten chunks from peer 7 (not a neighbour) over 200 ms, a tick every 20 ms.
    let mut haves: Vec<(u64, Vec<u64>)> = Vec::new();
    for i in 0..10u64 {
        let now = 1_000_000 + i * 20_000;
        let a = step(&mut pull, |p, o| {
            p.on_chunk(now, i, Some(PeerId(7)), o);
            p.on_tick(now + 1, o);
        });
        for (peer, m) in decoded(&a) {
            if let Message::Have(_, seqs) = m {
                haves.push((peer, seqs));
            }
        }
    }
    // The default have_ms (200): one HAVE per neighbour for the first
    // tick's chunk, the next nine together at the next announcement.
    let a = step(&mut pull, |p, o| p.on_tick(1_000_000 + 200_001, o));
    for (peer, m) in decoded(&a) {
        if let Message::Have(_, seqs) = m {
            haves.push((peer, seqs));
        }
    }
    assert_eq!(haves.len(), 4, "{haves:?}");
    let to_1: Vec<u64> = haves
        .iter()
        .filter(|h| h.0 == 1)
        .flat_map(|h| h.1.clone())
        .collect();
    assert_eq!(to_1, (0..10).collect::<Vec<_>>());
    assert_eq!(metric(&mut pull, "sent_have"), 4.0);
    assert_eq!(metric(&mut pull, "sent_messages"), 4.0);
}

#[test]
fn announcements_wait_only_as_long_as_they_are_costly() {
    let mut pull = Pull::new(&Params::new()).unwrap();
    step(&mut pull, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(1), Link::BOTH, o);
        p.on_neighbour_up(0, PeerId(2), Link::BOTH, o);
    });
    // Uncapped: every tick.
    assert_eq!(pull.have_interval_us(), 0);
    // Two neighbours on 1 Mbit/s: 2 x 400 bits at 5 % of it, 16 ms.
    step(&mut pull, |p, o| {
        p.on_upload(0, capped(1_000_000, u64::MAX, 0), o)
    });
    assert_eq!(pull.have_interval_us(), 16_000);
    // On 100 kbit/s they would take 160 ms; at most have_ms (200) apart.
    step(&mut pull, |p, o| {
        p.on_upload(0, capped(100_000, u64::MAX, 0), o)
    });
    assert_eq!(pull.have_interval_us(), 160_000);
    step(&mut pull, |p, o| {
        p.on_upload(0, capped(10_000, u64::MAX, 0), o)
    });
    assert_eq!(pull.have_interval_us(), 200_000);
}

#[test]
fn requests_and_refusals_are_counted() {
    let mut holder = Pull::new(&Params::new().with("max_wait_ms", "300")).unwrap();
    step(&mut holder, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(9), Link::BOTH, o);
        p.on_chunk(0, 0, Some(PeerId(7)), o);
        p.on_upload(0, capped(800_000, 0, 400_000), o);
        // Queue too long: refused at once; 5 is not held: refused too.
        p.on_message(0, PeerId(9), &wire::request(1000, &[0, 5]), o);
        p.on_message(0, PeerId(9), &[0xEE], o);
    });
    assert_eq!(metric(&mut holder, "sent_refuse"), 1.0);
    assert_eq!(metric(&mut holder, "seqs_refused"), 2.0);
    assert_eq!(metric(&mut holder, "received_messages"), 2.0);
    assert_eq!(metric(&mut holder, "malformed"), 1.0);
    assert_eq!(metric(&mut holder, "served"), 0.0);
}

#[test]
fn a_send_the_engine_refuses_is_refused_to_the_requester() {
    let mut holder = Pull::new(&Params::new()).unwrap();
    step(&mut holder, |p, o| {
        p.on_start(0, &ctx(false), o);
        p.on_neighbour_up(0, PeerId(9), Link::BOTH, o);
        p.on_chunk(0, 0, Some(PeerId(7)), o);
    });
    let sent = step(&mut holder, |p, o| {
        p.on_message(0, PeerId(9), &wire::request(1000, &[0]), o)
    });
    assert_eq!(chunks(&sent), vec![(9, 0)]);
    let refused = step(&mut holder, |p, o| {
        p.on_refused(
            0,
            Refusal {
                kind: RefusalKind::CHUNK_NO_ROOM,
                peer: PeerId(9),
                seq: 0,
                bytes: 1000,
                limit: 0,
            },
            o,
        )
    });
    assert_eq!(decoded(&refused), vec![(9, Message::Refuse(vec![0]))]);
    assert_eq!(metric(&mut holder, "engine_refused"), 1.0);
    // It was not sent, so the holder still counts the neighbour as lacking it.
    assert!(!holder.neighbours[&PeerId(9)].have.contains(&0));
}
