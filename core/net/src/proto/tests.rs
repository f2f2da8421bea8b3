//! The state machine's API contract, two states wired back to back (every
//! datagram delivered instantly unless a test drops it). Link behaviour is
//! tested in `tests/pair.rs`.

use super::*;
use std::time::Duration;

fn cfg() -> NetConfig {
    NetConfig {
        rto_initial: Duration::from_millis(100),
        rto_min: Duration::from_millis(20),
        rto_max: Duration::from_millis(500),
        max_tries: 4,
        ..NetConfig::default()
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 9))
}

/// Datagrams from `from` (at `from_addr`), handed to `to` if `deliver`.
fn shuttle(now: u64, from: &mut NetState, from_addr: SocketAddr, to: &mut NetState) -> usize {
    let mut n = 0;
    let mut v = Vec::new();
    while let Some(t) = from.poll_transmit(now) {
        v.push(t.bytes.to_vec());
    }
    for b in v {
        to.handle_datagram(now, from_addr, &b);
        n += 1;
    }
    to.flush_acks(now);
    n
}

/// Runs the handshake between `a` (at `addr(1)`) and `b` (at `addr(2)`),
/// started by a probe message from `a`, and drops the probe and events.
fn connect(now: u64, a: &mut NetState, b: &mut NetState) {
    a.send_unreliable(now, addr(2), b"probe").unwrap();
    // Bounded: the handshake is five messages.
    for _ in 0..6 {
        shuttle(now, a, addr(1), b);
        shuttle(now, b, addr(2), a);
    }
    assert!(a.is_established(addr(2)) && b.is_established(addr(1)));
    // Something sealed from `b` confirms the link at `a` (no more `Fin`).
    b.send_unreliable(now, addr(1), b"probe").unwrap();
    shuttle(now, b, addr(2), a);
    assert_eq!(a.poll_timeout(), None, "no handshake timer left");
    events(a);
    events(b);
}

fn events(s: &mut NetState) -> Vec<NetEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn idle_state_has_no_timeout_and_nothing_to_send() {
    let mut a = NetState::new(cfg(), 1, 0);
    assert_eq!(a.poll_timeout(), None);
    assert!(a.poll_transmit(0).is_none());
    assert!(a.poll_event().is_none());
}

#[test]
fn reliable_acked_event_and_timer_cleared() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    let id = a
        .send_reliable(0, addr(2), Bytes::from_static(b"x"))
        .unwrap();
    assert!(a.poll_timeout().is_some());
    shuttle(10, &mut a, addr(1), &mut b);
    assert_eq!(
        events(&mut b),
        vec![NetEvent::Deliver(Event::Message {
            from: addr(1),
            payload: Bytes::from_static(b"x")
        })]
    );
    // The ack waits for something going the same way to ride with, then
    // goes on its own.
    assert_eq!(shuttle(20, &mut b, addr(2), &mut a), 0);
    assert_eq!(b.poll_timeout(), Some(10 + ACK_DELAY_US));
    b.handle_timeout(10 + ACK_DELAY_US);
    shuttle(10 + ACK_DELAY_US, &mut b, addr(2), &mut a);
    assert_eq!(events(&mut a), vec![NetEvent::Acked(id)]);
    assert_eq!(a.poll_timeout(), None, "no stale retransmission timer");
}

#[test]
fn held_ack_rides_with_the_answer() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    let id = a
        .send_reliable(0, addr(2), Bytes::from_static(b"ping"))
        .unwrap();
    shuttle(10, &mut a, addr(1), &mut b);
    assert_eq!(events(&mut b).len(), 1);
    b.send_unreliable(20, addr(1), b"pong").unwrap();
    b.send_unreliable(20, addr(1), b"pong2").unwrap();
    // One datagram: the answers and the ack share a seal.
    assert_eq!(shuttle(20, &mut b, addr(2), &mut a), 1);
    let got = events(&mut a);
    assert!(got.contains(&NetEvent::Acked(id)), "{got:?}");
    let msgs = got
        .iter()
        .filter(|e| matches!(e, NetEvent::Deliver(Event::Message { .. })))
        .count();
    assert_eq!(msgs, 2);
    assert_eq!(b.stats().drops.frames_shared, 2);
    assert!(b.held.is_empty(), "nothing held any more");
}

#[test]
fn unacked_fails_after_max_tries_with_backoff() {
    let mut a = NetState::new(cfg(), 1, 0);
    let id = a
        .send_reliable(0, addr(2), Bytes::from_static(b"x"))
        .unwrap();
    let mut sent = 0;
    let mut now = 0;
    // Bounded: a handful of timeouts.
    for _ in 0..20 {
        sent += std::iter::from_fn(|| a.poll_transmit(now).map(|_| ())).count();
        let Some(t) = a.poll_timeout() else { break };
        now = t;
        a.handle_timeout(now);
    }
    assert_eq!(sent, 4);
    // 100 + 200 + 400 + 500 ms.
    assert_eq!(now, 1_200_000);
    assert_eq!(
        events(&mut a),
        vec![NetEvent::Failed(
            id,
            SendError::Unreachable {
                peer: addr(2),
                tries: 4
            }
        )]
    );
    assert_eq!(a.stats().total.reliable_failed, 1);
}

#[test]
fn cancel_stops_retransmissions_silently() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    let id = a
        .send_reliable(0, addr(2), Bytes::from_static(b"x"))
        .unwrap();
    while a.poll_transmit(0).is_some() {}
    a.cancel(id);
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(10_000_000);
    assert!(a.poll_transmit(10_000_000).is_none());
    assert!(events(&mut a).is_empty());
}

#[test]
fn forget_fails_pending_with_closed() {
    let mut a = NetState::new(cfg(), 1, 0);
    let id = a
        .send_reliable(0, addr(2), Bytes::from_static(b"x"))
        .unwrap();
    a.forget(addr(2));
    assert_eq!(
        events(&mut a),
        vec![NetEvent::Failed(id, SendError::Closed)]
    );
    assert_eq!(a.peer_count(), 0);
}

#[test]
fn request_response_matched_and_cancelled_requests_ignored() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    let (_, rid) = a.request(0, addr(2), Bytes::from_static(b"q")).unwrap();
    let (_, rid2) = a.request(0, addr(2), Bytes::from_static(b"q2")).unwrap();
    a.cancel_request(addr(2), rid2);
    shuttle(1, &mut a, addr(1), &mut b);
    for ev in events(&mut b) {
        if let NetEvent::Deliver(Event::Request { from, id, payload }) = ev {
            let mut r = payload.to_vec();
            r.reverse();
            b.respond(2, from, id, Bytes::from(r)).unwrap();
        }
    }
    shuttle(3, &mut b, addr(2), &mut a);
    let evs = events(&mut a);
    let responses: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            NetEvent::Response {
                request_id,
                payload,
                ..
            } => Some((*request_id, payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(responses, vec![(rid, Bytes::from_static(b"q"))]);
}

#[test]
fn deliveries_bounded_and_reliable_left_unacked_when_behind() {
    let small = NetConfig {
        event_capacity: 2,
        ..cfg()
    };
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(small, 2, 0));
    connect(0, &mut a, &mut b);
    for i in 0..5u8 {
        a.send_reliable(0, addr(2), Bytes::from(vec![i])).unwrap();
    }
    shuttle(1, &mut a, addr(1), &mut b);
    // Only two acks go back (in one datagram, after the ack delay): the
    // other three will be retransmitted.
    b.handle_timeout(1 + ACK_DELAY_US);
    assert_eq!(shuttle(2, &mut b, addr(2), &mut a), 1);
    assert_eq!(b.stats().drops.frames_shared, 1);
    assert_eq!(b.stats().total.events_dropped, 3);
    assert_eq!(events(&mut b).len(), 2);
    // Once the driver caught up, the retransmissions are delivered.
    let t = a.poll_timeout().unwrap();
    a.handle_timeout(t);
    shuttle(t, &mut a, addr(1), &mut b);
    assert_eq!(events(&mut b).len(), 2);
    b.handle_timeout(t + ACK_DELAY_US);
    shuttle(t + ACK_DELAY_US, &mut b, addr(2), &mut a);
    let acked = events(&mut a)
        .into_iter()
        .filter(|e| matches!(e, NetEvent::Acked(_)))
        .count();
    assert_eq!(acked, 4);
}

#[test]
fn version_reject_fails_pending_and_refuses_new_sends() {
    let mut a = NetState::new(cfg(), 1, 0);
    let id = a
        .send_reliable(0, addr(2), Bytes::from_static(b"x"))
        .unwrap();
    // The cookie request goes out: a reject is believed only in answer.
    while a.poll_transmit(0).is_some() {}
    let mut rej = Vec::new();
    wire::encode_version(&Packet::VersionReject { min: 7, max: 9 }, 9, &mut rej);
    a.handle_datagram(5, addr(2), &rej);
    let incompatible = SendError::Incompatible {
        peer: addr(2),
        min: 7,
        max: 9,
        ours: wire::VERSION,
    };
    assert_eq!(
        events(&mut a),
        vec![NetEvent::Failed(id, incompatible.clone())]
    );
    assert_eq!(
        a.send_chunk(6, addr(2), 0, 0, Bytes::from_static(b"c")),
        Err(incompatible)
    );
}

#[test]
fn chunk_round_trip_and_capacity_event() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    let data = Bytes::from(vec![9u8; 5000]);
    a.send_chunk(0, addr(2), 3, 4, data.clone()).unwrap();
    assert!(a.capacity(0, addr(2)).queued_bytes > 0);
    // Bounded: the window opens over a few round trips.
    for i in 0..20 {
        shuttle(i * 100, &mut a, addr(1), &mut b);
        shuttle(i * 100 + 50, &mut b, addr(2), &mut a);
    }
    assert_eq!(
        events(&mut b),
        vec![NetEvent::Deliver(Event::Chunk {
            from: addr(1),
            stream: 3,
            seq: 4,
            data
        })]
    );
    assert!(events(&mut a).contains(&NetEvent::CapacityChanged));
    let u = a.upload(10_000);
    assert_eq!((u.queued_bytes, u.inflight_bytes), (0, 0));
}

#[test]
fn batch_transmit_matches_single() {
    let mk = || {
        let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
        connect(0, &mut a, &mut b);
        for i in 0..3 {
            a.send_unreliable(0, addr(2), &[i]).unwrap();
        }
        a.send_chunk(0, addr(2), 0, 0, Bytes::from(vec![1u8; 3000]))
            .unwrap();
        a
    };
    let mut one = mk();
    let mut single = Vec::new();
    while let Some(t) = one.poll_transmit(0) {
        single.push((t.to, t.bytes.to_vec()));
    }
    let mut two = mk();
    let mut batched = Vec::new();
    // Bounded: a few batches of two.
    for _ in 0..100 {
        let mut batch = Datagrams::default();
        let more = two.poll_transmits(0, 2, &mut batch);
        assert!(batch.len() <= 2);
        batched.extend(batch.iter().map(|t| (t.to, t.bytes.to_vec())));
        if !more {
            break;
        }
    }
    assert_eq!(single, batched);
    // The three messages share a datagram (with the chunk's short last
    // fragment); the chunk takes three.
    assert!(single.len() >= 3, "{}", single.len());
}

/// Data datagrams `a` hands out for a chunk (pacing allowing), up to `max`.
fn data_datagrams(a: &mut NetState, max: usize) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    // Bounded: one pass per millisecond for a second.
    for ms in 1..1_000u64 {
        while let Some(t) = a.poll_transmit(ms * 1_000) {
            v.push(t.bytes.to_vec());
        }
        if v.len() >= max {
            break;
        }
    }
    v.truncate(max);
    v
}

fn acks_sent(s: &NetState) -> u64 {
    s.stats().total.data.datagrams_sent
}

#[test]
fn data_acks_every_second_datagram_and_at_once_on_a_gap_or_a_filled_hole() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    a.send_chunk(0, addr(2), 0, 0, Bytes::from(vec![5u8; 6 * 1100]))
        .unwrap();
    let d = data_datagrams(&mut a, 5);
    assert_eq!(d.len(), 5);
    let now = 10_000;
    // As a socket that runs dry after every datagram: the first waits, the
    // second brings the ack for both.
    b.handle_datagram(now, addr(1), &d[0]);
    b.flush_acks(now);
    assert_eq!(acks_sent(&b), 0);
    b.handle_datagram(now, addr(1), &d[1]);
    b.flush_acks(now);
    assert_eq!(acks_sent(&b), 1);
    // d[2] lost: d[3] opens a gap, acked at once for the sender's loss
    // detection.
    b.handle_datagram(now + 100, addr(1), &d[3]);
    b.flush_acks(now + 100);
    assert_eq!(acks_sent(&b), 2);
    // The next in order waits again...
    b.handle_datagram(now + 200, addr(1), &d[4]);
    b.flush_acks(now + 200);
    assert_eq!(acks_sent(&b), 2);
    // ...until the lost one comes late: filling a hole is acked at once.
    b.handle_datagram(now + 300, addr(1), &d[2]);
    b.flush_acks(now + 300);
    assert_eq!(acks_sent(&b), 3);
}

#[test]
fn a_lone_data_datagram_is_acked_after_the_hold_and_the_sender_allows_for_it() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    a.send_chunk(0, addr(2), 0, 0, Bytes::from(vec![5u8; 500]))
        .unwrap();
    let d = data_datagrams(&mut a, 1);
    assert_eq!(d.len(), 1);
    let at = 10_000;
    b.handle_datagram(at, addr(1), &d[0]);
    b.flush_acks(at);
    assert_eq!(acks_sent(&b), 0, "held for company");
    let due = b.poll_timeout().expect("the ack timer");
    let hold = b.peers[&addr(1)].ack_hold_us();
    assert_eq!(due, at + hold);
    assert!((1_000..=MAX_ACK_DELAY_US).contains(&hold), "{hold}");
    b.handle_timeout(due);
    assert_eq!(acks_sent(&b), 1);
    // The sender's probe timeout covers the hold: no spurious loss.
    assert!(a.peers[&addr(2)].data_loss_timeout_us(&a.cfg) > hold);
}

#[test]
fn an_unreliable_message_rides_with_the_ack_it_waits_for() {
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(cfg(), 2, 0));
    connect(0, &mut a, &mut b);
    a.send_chunk(0, addr(2), 0, 0, Bytes::from(vec![5u8; 500]))
        .unwrap();
    let d = data_datagrams(&mut a, 1);
    let at = 10_000;
    b.handle_datagram(at, addr(1), &d[0]);
    b.flush_acks(at);
    // An ack is owed to `a`: the message waits for it instead of going alone.
    b.send_unreliable(at + 10, addr(1), b"have 7").unwrap();
    assert!(b.poll_transmit(at + 10).is_none(), "held");
    let due = b.poll_timeout().unwrap();
    assert!(due <= at + MAX_ACK_DELAY_US);
    b.handle_timeout(due);
    let mut out = Vec::new();
    while let Some(t) = b.poll_transmit(due) {
        out.push(t.bytes.to_vec());
    }
    assert_eq!(out.len(), 1, "message and ack in one sealed datagram");
    for dg in &out {
        a.handle_datagram(due, addr(2), dg);
    }
    let got = events(&mut a);
    assert!(
        got.iter()
            .any(|e| matches!(e, NetEvent::Deliver(Event::Message { .. }))),
        "{got:?}"
    );
    assert_eq!(a.upload(due).inflight_bytes, 0, "the ack arrived too");
}

#[test]
fn cookies_only_under_load_and_a_real_peer_still_gets_in() {
    let small = NetConfig {
        max_handshakes: 8,
        ..cfg()
    };
    let (mut a, mut b) = (NetState::new(cfg(), 1, 0), NetState::new(small, 2, 0));
    let init = |nonce: u64| {
        let mut v = Vec::new();
        wire::encode(
            &Packet::Init {
                nonce,
                cookie: &[0; crate::auth::COOKIE_LEN],
                noise: &[0x11; 32],
                pad: &[0; wire::INIT_LEN - wire::HEADER_LEN - 1 - 8 - 16 - 2 - 32],
            },
            &mut v,
        );
        v
    };
    // Not under load: an initiation without a cookie is answered at once
    // (one round trip saved), with less than it asked, and a bounded
    // half-open handshake is all it costs.
    let mut answers = Vec::new();
    for i in 0..2u8 {
        let spoofed = SocketAddr::from(([10, 9, 9, i + 1], 53));
        let d = init(i as u64 + 1);
        b.handle_datagram(0, spoofed, &d);
        while let Some(t) = b.poll_transmit(0) {
            answers.push((t.bytes.len(), d.len()));
        }
    }
    assert_eq!(b.halves.len(), 2);
    // A quarter of the bound is half-open: now nothing is kept for an
    // unproven address, it gets a (smaller) cookie.
    let spoofed = SocketAddr::from(([10, 9, 9, 9], 53));
    let d = init(9);
    b.handle_datagram(0, spoofed, &d);
    while let Some(t) = b.poll_transmit(0) {
        answers.push((t.bytes.len(), d.len()));
    }
    assert_eq!(b.halves.len(), 2, "no state under load");
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(
        answers.iter().all(|&(got, asked)| got < asked),
        "{answers:?}"
    );
    assert_eq!(b.stats().drops.cookies_sent, 1);
    assert_eq!(b.peer_count(), 0);
    // A real peer still gets in: its cookie-less Init draws a cookie, the
    // same message 1 again with it proves the address.
    connect(0, &mut a, &mut b);
    assert_eq!(b.stats().drops.cookies_sent, 2);
}
