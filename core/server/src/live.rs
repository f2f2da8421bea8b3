//! Soft state: who is in each swarm right now, and whether its publisher is.
//!
//! Nothing here is written to disk. Peers and publishers heartbeat; an entry
//! not refreshed within its TTL is swept away. After a restart the table is
//! empty, every stored stream starts "offline", and the next round of
//! heartbeats rebuilds it (a heartbeat from a peer the server forgot re-adds
//! it), so a restart costs clients nothing but one heartbeat period.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2ner_proto::server::{Liveness, PeerEntry, StreamId, PUBLISHER_PEER_ID};

#[derive(Clone, Copy, Debug)]
struct Peer {
    id: u64,
    addr: SocketAddr,
    seen: Instant,
}

/// A swarm's peers: a vector for O(1) uniform sampling plus an index for
/// O(1) lookup by id; removal swaps the last entry into the hole.
#[derive(Default, Debug)]
struct PeerSet {
    entries: Vec<Peer>,
    index: HashMap<u64, u32>,
}

impl PeerSet {
    fn get_mut(&mut self, id: u64) -> Option<&mut Peer> {
        let i = *self.index.get(&id)? as usize;
        Some(&mut self.entries[i])
    }

    fn insert(&mut self, peer: Peer) {
        self.index.insert(peer.id, self.entries.len() as u32);
        self.entries.push(peer);
    }

    fn remove_at(&mut self, i: usize) {
        let gone = self.entries.swap_remove(i);
        self.index.remove(&gone.id);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.id, i as u32);
        }
    }

    fn remove(&mut self, id: u64) -> bool {
        match self.index.get(&id) {
            Some(&i) => {
                self.remove_at(i as usize);
                true
            }
            None => false,
        }
    }

    /// Drops the peers not seen since `cutoff`; returns how many.
    fn expire(&mut self, cutoff: Instant) -> usize {
        let before = self.entries.len();
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries[i].seen < cutoff {
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
        if self.entries.capacity() > 64 && self.entries.capacity() > 4 * self.entries.len() {
            self.entries.shrink_to_fit();
            self.index.shrink_to_fit();
        }
        before - self.entries.len()
    }
}

#[derive(Debug)]
struct StreamLive {
    publisher: Option<(SocketAddr, Instant)>,
    online: bool,
    /// Since when the publisher has not been heard from (start-up for a
    /// stream loaded from disk).
    offline_since: Instant,
    peers: PeerSet,
}

/// Why a peer operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerError {
    /// The stream is not in the catalogue.
    NoSuchStream,
    /// The stream already lists `peers_per_stream` peers, or the server its
    /// total.
    Full,
    /// The peer id is listed under another address: refusing stops anyone
    /// who saw an id in a sample from moving or removing that peer.
    AddressMismatch,
}

/// The TTLs the sweep applies.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    /// A peer not heard for this long leaves the swarm.
    pub peer: Duration,
    /// A publisher not heard for this long makes its stream offline.
    pub publisher: Duration,
    /// How long a stream may stay offline before it is removed from the
    /// catalogue.
    pub stream_expiry: Duration,
}

/// What a sweep changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Peers dropped for silence.
    pub peers_expired: usize,
    /// Streams whose publisher went silent.
    pub went_offline: Vec<StreamId>,
    /// Streams offline past their expiry: the caller deletes them.
    pub expired: Vec<StreamId>,
}

/// Who is online: publishers' heartbeats and the peers of every swarm. In memory only: it rebuilds itself from heartbeats after a restart.
#[derive(Default, Debug)]
pub struct Live {
    streams: HashMap<StreamId, StreamLive>,
    peers_total: usize,
}

impl Live {
    /// Starts tracking a stream (offline until its publisher heartbeats).
    pub fn add_stream(&mut self, id: StreamId, now: Instant) {
        self.streams.entry(id).or_insert_with(|| StreamLive {
            publisher: None,
            online: false,
            offline_since: now,
            peers: PeerSet::default(),
        });
    }

    /// Forgets a stream and its peers (it left the catalogue).
    pub fn remove_stream(&mut self, id: &str) {
        if let Some(s) = self.streams.remove(id) {
            self.peers_total -= s.peers.entries.len();
        }
    }

    /// A publisher heartbeat from `addr`.
    pub fn publisher_seen(&mut self, id: &str, addr: SocketAddr, now: Instant) {
        if let Some(s) = self.streams.get_mut(id) {
            s.publisher = Some((addr, now));
            s.online = true;
        }
    }

    /// Whether the stream's publisher is heartbeating.
    pub fn liveness(&self, id: &str) -> Liveness {
        match self.streams.get(id) {
            Some(s) if s.online => Liveness::Online,
            _ => Liveness::Offline,
        }
    }

    /// Where the publisher heartbeats from, while it does.
    pub fn publisher_addr(&self, id: &str) -> Option<SocketAddr> {
        self.streams.get(id)?.publisher.map(|(a, _)| a)
    }

    /// Live peers of the stream.
    pub fn peer_count(&self, id: &str) -> u32 {
        self.streams
            .get(id)
            .map_or(0, |s| s.peers.entries.len() as u32)
    }

    /// Live peers of all streams.
    pub fn peers_total(&self) -> usize {
        self.peers_total
    }

    /// Streams whose publisher is heartbeating.
    pub fn online_streams(&self) -> usize {
        self.streams.values().filter(|s| s.online).count()
    }

    /// Adds (or refreshes) a peer. `limits` = (per stream, whole server).
    pub fn join(
        &mut self,
        id: &str,
        peer_id: u64,
        addr: SocketAddr,
        now: Instant,
        limits: (usize, usize),
    ) -> Result<(), PeerError> {
        let s = self.streams.get_mut(id).ok_or(PeerError::NoSuchStream)?;
        if let Some(p) = s.peers.get_mut(peer_id) {
            if p.addr != addr {
                return Err(PeerError::AddressMismatch);
            }
            p.seen = now;
            return Ok(());
        }
        if s.peers.entries.len() >= limits.0 || self.peers_total >= limits.1 {
            return Err(PeerError::Full);
        }
        s.peers.insert(Peer {
            id: peer_id,
            addr,
            seen: now,
        });
        self.peers_total += 1;
        Ok(())
    }

    /// Whether `addr` may see the stream's peers: it joined as `peer_id`
    /// from that address, or it is the stream's publisher.
    pub fn may_list(&self, id: &str, peer_id: u64, addr: SocketAddr) -> bool {
        let Some(s) = self.streams.get(id) else {
            return false;
        };
        if s.publisher.is_some_and(|(a, _)| a == addr) {
            return true;
        }
        s.peers
            .index
            .get(&peer_id)
            .is_some_and(|&i| s.peers.entries[i as usize].addr == addr)
    }

    /// Removes a peer, if it asks from the address it joined from.
    pub fn leave(&mut self, id: &str, peer_id: u64, addr: SocketAddr) -> Result<(), PeerError> {
        let s = self.streams.get_mut(id).ok_or(PeerError::NoSuchStream)?;
        match s.peers.get_mut(peer_id) {
            Some(p) if p.addr != addr => Err(PeerError::AddressMismatch),
            Some(_) => {
                s.peers.remove(peer_id);
                self.peers_total -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The publisher (if online) and up to `k` other peers picked uniformly
    /// at random, never `exclude` itself.
    pub fn sample(
        &self,
        id: &str,
        exclude: u64,
        k: usize,
        rng: &mut fastrand::Rng,
    ) -> Vec<PeerEntry> {
        let Some(s) = self.streams.get(id) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(k + 1);
        if let (true, Some((addr, _))) = (s.online, s.publisher) {
            out.push(PeerEntry {
                peer_id: PUBLISHER_PEER_ID,
                addr,
                publisher: true,
            });
        }
        let n = s.peers.entries.len();
        let excluded = s.peers.index.get(&exclude).map(|&i| i as usize);
        let pool = n - usize::from(excluded.is_some());
        let k = k.min(pool);
        // Floyd's algorithm over the pool's positions: k draws, no
        // duplicates, O(k) whatever the swarm's size. A position at or past
        // the excluded entry maps one further.
        let mut picked = HashSet::with_capacity(k);
        for j in pool - k..pool {
            let t = rng.usize(..=j);
            let choice = if picked.insert(t) {
                t
            } else {
                picked.insert(j);
                j
            };
            let i = match excluded {
                Some(x) if choice >= x => choice + 1,
                _ => choice,
            };
            let p = s.peers.entries[i];
            out.push(PeerEntry {
                peer_id: p.id,
                addr: p.addr,
                publisher: false,
            });
        }
        out
    }

    /// Applies the TTLs at `now`.
    pub fn sweep(&mut self, now: Instant, ttl: Ttls) -> Swept {
        let mut swept = Swept::default();
        let peer_cutoff = now.checked_sub(ttl.peer);
        for (id, s) in self.streams.iter_mut() {
            if let Some(cutoff) = peer_cutoff {
                let n = s.peers.expire(cutoff);
                swept.peers_expired += n;
                self.peers_total -= n;
            }
            if let (true, Some((_, seen))) = (s.online, s.publisher) {
                if now.duration_since(seen) > ttl.publisher {
                    s.online = false;
                    s.offline_since = seen + ttl.publisher;
                    swept.went_offline.push(id.clone());
                }
            }
            if !s.online && now.duration_since(s.offline_since) > ttl.stream_expiry {
                swept.expired.push(id.clone());
            }
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const LIMITS: (usize, usize) = (100, 1000);

    #[test]
    fn join_sample_leave() {
        let t0 = Instant::now();
        let mut live = Live::default();
        live.add_stream("s".into(), t0);
        assert_eq!(
            live.join("t", 1, addr(1), t0, LIMITS),
            Err(PeerError::NoSuchStream)
        );
        for i in 1..=10 {
            live.join("s", i, addr(i as u16), t0, LIMITS).unwrap();
        }
        assert_eq!(live.peer_count("s"), 10);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..200 {
            let s = live.sample("s", 3, 4, &mut rng);
            assert_eq!(s.len(), 4);
            assert!(s.iter().all(|p| p.peer_id != 3 && !p.publisher));
            let ids: HashSet<u64> = s.iter().map(|p| p.peer_id).collect();
            assert_eq!(ids.len(), 4);
        }
        // Asking for more than there are gives everyone else.
        assert_eq!(live.sample("s", 3, 50, &mut rng).len(), 9);
        assert_eq!(live.sample("s", 99, 50, &mut rng).len(), 10);
        // Someone else cannot remove or move peer 2.
        assert_eq!(
            live.leave("s", 2, addr(999)),
            Err(PeerError::AddressMismatch)
        );
        assert_eq!(
            live.join("s", 2, addr(999), t0, LIMITS),
            Err(PeerError::AddressMismatch)
        );
        live.leave("s", 2, addr(2)).unwrap();
        assert_eq!(live.peer_count("s"), 9);
        assert_eq!(live.peers_total(), 9);
    }

    #[test]
    fn samples_are_roughly_uniform() {
        let t0 = Instant::now();
        let mut live = Live::default();
        live.add_stream("s".into(), t0);
        for i in 1..=20 {
            live.join("s", i, addr(i as u16), t0, LIMITS).unwrap();
        }
        let mut counts = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            for p in live.sample("s", 5, 3, &mut rng) {
                *counts.entry(p.peer_id).or_insert(0u32) += 1;
            }
        }
        assert!(!counts.contains_key(&5));
        assert_eq!(counts.len(), 19);
        // 30,000 picks over 19 peers: ~1579 each.
        for (&id, &c) in &counts {
            assert!((1300..1900).contains(&c), "peer {id} picked {c} times");
        }
    }

    #[test]
    fn bounds_hold() {
        let t0 = Instant::now();
        let mut live = Live::default();
        live.add_stream("a".into(), t0);
        live.add_stream("b".into(), t0);
        for i in 1..=3 {
            live.join("a", i, addr(i as u16), t0, (3, 5)).unwrap();
        }
        assert_eq!(live.join("a", 4, addr(4), t0, (3, 5)), Err(PeerError::Full));
        live.join("b", 1, addr(1), t0, (3, 5)).unwrap();
        live.join("b", 2, addr(2), t0, (3, 5)).unwrap();
        assert_eq!(live.join("b", 3, addr(3), t0, (3, 5)), Err(PeerError::Full));
        // Refreshing an existing peer is not a new one.
        live.join("a", 1, addr(1), t0, (3, 5)).unwrap();
    }

    #[test]
    fn ttls_expire_peers_then_publishers_then_streams() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ttl = Ttls {
            peer: s(10),
            publisher: s(10),
            stream_expiry: s(100),
        };
        let mut live = Live::default();
        live.add_stream("s".into(), t0);
        live.publisher_seen("s", addr(50), t0);
        live.join("s", 1, addr(1), t0, LIMITS).unwrap();
        live.join("s", 2, addr(2), t0, LIMITS).unwrap();
        assert_eq!(live.liveness("s"), Liveness::Online);
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(live.sample("s", 1, 5, &mut rng)[0].publisher);

        live.join("s", 2, addr(2), t0 + s(8), LIMITS).unwrap();
        live.publisher_seen("s", addr(50), t0 + s(8));
        let swept = live.sweep(t0 + s(15), ttl);
        assert_eq!(swept.peers_expired, 1);
        assert!(swept.went_offline.is_empty());
        assert_eq!(live.peer_count("s"), 1);

        let swept = live.sweep(t0 + s(30), ttl);
        assert_eq!(swept.peers_expired, 1);
        assert_eq!(swept.went_offline, vec![StreamId::from("s")]);
        assert_eq!(live.liveness("s"), Liveness::Offline);
        assert_eq!(live.peers_total(), 0);
        // Offline streams are not sampled as publishers, but keep the address.
        assert!(live.sample("s", 1, 5, &mut rng).is_empty());
        assert_eq!(live.publisher_addr("s"), Some(addr(50)));

        assert!(live.sweep(t0 + s(110), ttl).expired.is_empty());
        assert_eq!(
            live.sweep(t0 + s(120), ttl).expired,
            vec![StreamId::from("s")]
        );
        live.remove_stream("s");
        assert_eq!(live.liveness("s"), Liveness::Offline);
    }
}
