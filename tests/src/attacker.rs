//! A hostile peer for the adversarial tests: it joins a stream through the
//! server like anyone and speaks the peer wire with the project's own
//! libraries (`p2ner_net::Endpoint` for the transport, `p2ner_proto::peer`
//! for envelopes), so that it stays a valid peer at the network layer
//! whatever that layer comes to require: what it sends is hostile only at
//! the session and plugin level.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use p2ner_engine::live::driver::wire_id;
use p2ner_net::{Endpoint, Event, NetConfig};
use p2ner_proto::peer::{self as wire, Envelope, PeerMsg};
use p2ner_proto::server::{PeerEntry, StreamId};
use p2ner_server::client::ServerClient;

/// One hostile peer: its endpoint, the swarm the server showed it, and what
/// it received (for amplification figures).
pub struct Attacker {
    /// The peer's endpoint.
    pub endpoint: Endpoint,
    /// The peer id it joined with.
    pub peer_id: u64,
    /// The stream's id on the wire.
    pub wire: u64,
    /// The sample the server answered the join with.
    pub peers: Vec<PeerEntry>,
    /// Bytes of chunks and messages received.
    pub received: Arc<AtomicU64>,
    /// The newest sequence number it heard announced (pull HAVE and maps).
    pub newest_heard: Arc<AtomicU64>,
    /// Messages received on the control channel, by kind.
    pub messages: Arc<AtomicU64>,
}

impl Attacker {
    /// Binds `bind`, joins `stream` at `server` as `peer_id`, and starts
    /// draining what it receives (counting it) on the current runtime.
    pub async fn join(server: &str, stream: &str, bind: &str, peer_id: u64) -> Attacker {
        let (endpoint, mut events) =
            Endpoint::bind(bind.parse().expect("an address"), NetConfig::default())
                .await
                .expect("bind");
        let client = ServerClient::new(endpoint.clone(), server.parse().expect("an address"));
        let id = StreamId(stream.to_owned());
        let joined = client
            .join(&id, peer_id)
            .await
            .expect("the attacker joins like anyone");
        let received = Arc::new(AtomicU64::new(0));
        let newest_heard = Arc::new(AtomicU64::new(0));
        let messages = Arc::new(AtomicU64::new(0));
        let (r, n, m) = (received.clone(), newest_heard.clone(), messages.clone());
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Chunk { data, .. } => {
                        r.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    Event::Message { payload, .. } => {
                        r.fetch_add(payload.len() as u64, Ordering::Relaxed);
                        m.fetch_add(1, Ordering::Relaxed);
                        if let Some(Envelope {
                            msg: PeerMsg::Scheduler(p),
                            ..
                        }) = wire::decode(&payload)
                        {
                            use p2ner_scheduler_pull_wire::newest;
                            if let Some(seq) = newest(&p) {
                                n.fetch_max(seq, Ordering::Relaxed);
                            }
                        }
                    }
                    Event::Request { .. } => {}
                }
            }
        });
        Attacker {
            endpoint,
            peer_id,
            wire: wire_id(&id),
            peers: joined.peers,
            received,
            newest_heard,
            messages,
        }
    }

    /// The publisher's address, from the join answer.
    pub fn publisher(&self) -> SocketAddr {
        self.peers
            .iter()
            .find(|p| p.publisher)
            .map(|p| p.addr)
            .expect("the publisher is in the sample")
    }

    /// Every subscriber's address the server listed.
    pub fn subscribers(&self) -> Vec<SocketAddr> {
        self.peers
            .iter()
            .filter(|p| !p.publisher)
            .map(|p| p.addr)
            .collect()
    }

    fn envelope(&self, msg: PeerMsg) -> Bytes {
        Bytes::from(wire::encode(&Envelope {
            version: wire::VERSION,
            stream: self.wire,
            from: self.peer_id,
            msg,
        }))
    }

    /// Opens a link to `to` (both ways); true if the Hello was delivered.
    pub async fn hello(&self, to: SocketAddr) -> bool {
        let hello = self.envelope(PeerMsg::Hello {
            up: true,
            down: true,
        });
        tokio::time::timeout(
            Duration::from_secs(3),
            self.endpoint.send_reliable(to, hello),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// A keepalive, so the link is not timed out.
    pub fn ping(&self, to: SocketAddr) {
        let _ = self
            .endpoint
            .send_unreliable(to, self.envelope(PeerMsg::Ping(Default::default())));
    }

    /// A scheduler message (unreliable, as announcements travel).
    pub fn scheduler(&self, to: SocketAddr, payload: Vec<u8>) {
        let _ = self
            .endpoint
            .send_unreliable(to, self.envelope(PeerMsg::Scheduler(payload)));
    }

    /// An overlay message (unreliable).
    pub fn overlay(&self, to: SocketAddr, payload: Vec<u8>) {
        let _ = self
            .endpoint
            .send_unreliable(to, self.envelope(PeerMsg::Overlay(payload)));
    }

    /// Everything this peer's endpoint sent, datagrams whole.
    pub fn bytes_sent(&self) -> u64 {
        let t = self.endpoint.stats().total;
        t.control.bytes_sent + t.data.bytes_sent
    }

    /// Everything it received, datagrams whole.
    pub fn bytes_received(&self) -> u64 {
        let t = self.endpoint.stats().total;
        t.control.bytes_recv + t.data.bytes_recv
    }
}

/// What the attacker reads of the `pull` scheduler's wire: the newest
/// sequence number an announcement names. Kept here (not in the plugin)
/// because only the test needs it, and decoded with the plugin's own decoder.
mod p2ner_scheduler_pull_wire {
    pub fn newest(payload: &[u8]) -> Option<u64> {
        use p2ner_scheduler_pull::wire::{decode, Message};
        match decode(payload)? {
            Message::Have(_, seqs) | Message::Map(_, seqs) => seqs.into_iter().max(),
            _ => None,
        }
    }
}
