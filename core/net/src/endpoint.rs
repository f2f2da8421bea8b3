//! The endpoint: a thin tokio shell around the sans-IO [`NetState`]. It owns
//! the UDP socket and the clock, and one driver task that moves datagrams
//! between the socket and the state machine, runs its timers and turns its
//! events into the `Events` channel and into the completion of the futures
//! returned by [`Endpoint::send_reliable`] and [`Endpoint::request`]. All
//! protocol decisions are in [`crate::proto`]; nothing here changes what goes
//! on the wire.
//!
//! The state sits behind one mutex that is never held across an `.await`:
//! API calls change the state and wake the driver; the driver takes the
//! datagrams the state wants sent under the lock, releases it, and then hands
//! them to the kernel.
//!
//! Back-pressure: the state machine holds at most `event_capacity`
//! deliveries; the driver moves them into the bounded channel only while it
//! has room, so a slow consumer makes the state machine drop chunks (counted)
//! and leave reliable messages unacknowledged (the sender retries).

use crate::config::NetConfig;
use crate::error::SendError;
use crate::proto::{Datagrams, NetEvent, NetState, SendId};
use crate::rng::Rng;
use crate::stats::NetStats;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, trace, warn};

pub use crate::proto::{Capacity, Event, Upload};

/// Events delivered to the owner of the endpoint.
pub type Events = mpsc::Receiver<Event>;

/// Datagrams handled per receive round before sending what they caused
/// (acks go out while a burst is still arriving).
const RECV_BATCH: usize = 32;
/// Datagrams taken from the state per send round.
const SEND_BATCH: usize = 64;

/// A handle to a bound endpoint; cheap to clone. The driver stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

struct Inner {
    socket: UdpSocket,
    local: SocketAddr,
    cfg: NetConfig,
    key: crate::auth::StaticKey,
    epoch: Instant,
    shared: Mutex<Shared>,
    events: mpsc::Sender<Event>,
    /// An API call gave the state something to send.
    wake: Notify,
    capacity_changed: Notify,
}

struct Shared {
    net: NetState,
    /// Futures waiting for a reliable send to complete.
    waiters: HashMap<SendId, oneshot::Sender<Result<(), SendError>>>,
    /// Futures waiting for the answer to a request.
    requests: HashMap<(SocketAddr, u64), oneshot::Sender<Bytes>>,
    /// A delivery that did not fit in the channel; more wait in `net`.
    stash: Option<Event>,
    /// The receiver of `Events` is gone: deliveries are discarded (and
    /// reliable messages still acknowledged, so peers do not retry).
    events_closed: bool,
    /// When the driver will wake by itself (None: only when woken). An API
    /// call wakes it only if the state now wants an earlier timeout, so a
    /// control message sent from the caller's context costs no task switch.
    armed: Option<u64>,
}

impl Shared {
    /// Whether the driver must be woken to re-arm its timer.
    fn needs_rearm(&self) -> bool {
        match (self.net.poll_timeout(), self.armed) {
            (Some(t), Some(a)) => t < a,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl Endpoint {
    /// Bind a UDP socket and start the endpoint's driver (needs a tokio
    /// runtime).
    pub async fn bind(addr: SocketAddr, cfg: NetConfig) -> std::io::Result<(Endpoint, Events)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let _ = sock.set_recv_buffer_size(cfg.socket_buffer);
        let _ = sock.set_send_buffer_size(cfg.socket_buffer);
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        let socket = UdpSocket::from_std(sock.into())?;
        let local = socket.local_addr()?;
        let epoch = Instant::now();
        let (etx, erx) = mpsc::channel(cfg.event_capacity.max(1));
        let session = {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Rng::new(t.as_nanos() as u64 ^ (local.port() as u64) << 48 ^ std::process::id() as u64)
                .next_u64() as u32
        };
        // Keys and secrets from the OS: nothing about them is predictable
        // from the outside (the state machine itself never asks the OS).
        let (key, secret) = {
            use rand_core::RngCore;
            let mut seed = [0u8; 32];
            rand_core::OsRng.fill_bytes(&mut seed);
            let mut rng = crate::auth::KeyedRng::new(seed);
            let key = crate::auth::StaticKey::generate(&mut rng);
            rand_core::OsRng.fill_bytes(&mut seed);
            (key, seed)
        };
        let shared = Shared {
            net: NetState::with_keys(cfg.clone(), session, 0, key.clone(), secret),
            waiters: HashMap::new(),
            requests: HashMap::new(),
            stash: None,
            events_closed: false,
            armed: None,
        };
        let inner = Arc::new(Inner {
            socket,
            local,
            cfg,
            key,
            epoch,
            shared: Mutex::new(shared),
            events: etx,
            wake: Notify::new(),
            capacity_changed: Notify::new(),
        });
        let d = tokio::spawn(drive(inner.clone())).abort_handle();
        debug!(%local, "p2ner-net endpoint bound");
        Ok((
            Endpoint {
                inner,
                _tasks: Arc::new(Tasks(vec![d])),
            },
            erx,
        ))
    }

    /// Where the socket is bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The settings the endpoint runs with.
    pub fn config(&self) -> &NetConfig {
        &self.inner.cfg
    }

    /// Critical control message: resolves when acknowledged,
    /// `Err(Unreachable)` after `max_tries` transmissions.
    pub async fn send_reliable(&self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        let now = self.inner.now_us();
        let mut out = Datagrams::default();
        let (rx, rearm) = {
            let mut sh = self.inner.lock();
            let sid = sh.net.send_reliable(now, to, payload)?;
            sh.net.poll_immediate(now, &mut out);
            (self.inner.waiter(&mut sh, sid), sh.needs_rearm())
        };
        self.inner.send_now(&out);
        if rearm {
            self.inner.wake.notify_one();
        }
        rx.wait().await
    }

    /// Fire-and-forget control message.
    pub fn send_unreliable(&self, to: SocketAddr, payload: Bytes) -> Result<(), SendError> {
        let now = self.inner.now_us();
        let mut out = Datagrams::default();
        {
            let mut sh = self.inner.lock();
            sh.net.send_unreliable(now, to, &payload)?;
            sh.net.poll_immediate(now, &mut out);
        }
        self.inner.send_now(&out);
        Ok(())
    }

    /// Reliable request and reliable response matched by id.
    pub async fn request(
        &self,
        to: SocketAddr,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, SendError> {
        let now = self.inner.now_us();
        let mut out = Datagrams::default();
        let (sent, mut answer, rid, rearm) = {
            let mut sh = self.inner.lock();
            let (sid, rid) = sh.net.request(now, to, payload)?;
            sh.net.poll_immediate(now, &mut out);
            let (tx, rx) = oneshot::channel();
            sh.requests.insert((to, rid), tx);
            (self.inner.waiter(&mut sh, sid), rx, rid, sh.needs_rearm())
        };
        self.inner.send_now(&out);
        if rearm {
            self.inner.wake.notify_one();
        }
        struct Guard<'a>(&'a Inner, SocketAddr, u64);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                let mut sh = self.0.lock();
                sh.requests.remove(&(self.1, self.2));
                sh.net.cancel_request(self.1, self.2);
            }
        }
        let _guard = Guard(&self.inner, to, rid);
        let work = async {
            let send = sent.wait();
            tokio::pin!(send);
            let mut sent = false;
            loop {
                tokio::select! {
                    r = &mut send, if !sent => { r?; sent = true; }
                    r = &mut answer => return r.map_err(|_| SendError::Closed),
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// Answer an [`Event::Request`] (reliable; runs in the background).
    pub fn respond(&self, to: SocketAddr, request_id: u64, payload: Bytes) {
        let now = self.inner.now_us();
        let mut out = Datagrams::default();
        let rearm = {
            let mut sh = self.inner.lock();
            if let Err(e) = sh.net.respond(now, to, request_id, payload) {
                debug!(%to, request_id, "response failed: {e}");
            }
            sh.net.poll_immediate(now, &mut out);
            sh.needs_rearm()
        };
        self.inner.send_now(&out);
        if rearm {
            self.inner.wake.notify_one();
        }
    }

    /// Queue a media chunk for congestion-controlled, paced, fragmented
    /// delivery. `Err(WouldBlock)` when the neighbour's window is full
    /// (see [`Endpoint::capacity`]); a chunk is accepted whenever some
    /// capacity is left, even if it is larger than what is left.
    pub fn send_chunk(
        &self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
    ) -> Result<(), SendError> {
        let now = self.inner.now_us();
        let r = self.inner.lock().net.send_chunk(now, to, stream, seq, data);
        // Also on WouldBlock: the refusal may have started a handshake.
        self.inner.wake.notify_one();
        r
    }

    /// [`Endpoint::send_chunk`] for a chunk that is worthless after
    /// `deadline` (the receiver would play it late): if its first fragment
    /// has not been handed to the socket by then, the whole chunk leaves the
    /// queue unsent and is counted in `PeerStats::expired_chunks`, so a
    /// capped uplink spends itself on chunks that can still arrive in time.
    /// Once its first fragment is sent a chunk is sent completely.
    pub fn send_chunk_by(
        &self,
        to: SocketAddr,
        stream: u64,
        seq: u64,
        data: Bytes,
        deadline: Instant,
    ) -> Result<(), SendError> {
        let now = self.inner.now_us();
        let d = deadline.saturating_duration_since(self.inner.epoch);
        let r =
            self.inner
                .lock()
                .net
                .send_chunk_by(now, to, stream, seq, data, d.as_micros() as u64);
        // Also on WouldBlock: the refusal may have started a handshake.
        self.inner.wake.notify_one();
        r
    }

    /// What the data channel towards `to` can take now. Under an upload cap
    /// the room is shared: the bytes queued locally over all neighbours stay
    /// within about 50 ms of the cap (at least 4 datagrams; bytes in flight
    /// are bounded by each path's window instead), so `can_send_bytes` is
    /// the smaller of this neighbour's window room and what the shared queue
    /// has left.
    pub fn capacity(&self, to: SocketAddr) -> Capacity {
        let now = self.inner.now_us();
        self.inner.lock().net.capacity(now, to)
    }

    /// The shared uplink: cap, measured rate, and data waiting or in flight
    /// over all neighbours.
    pub fn upload(&self) -> Upload {
        let now = self.inner.now_us();
        self.inner.lock().net.upload(now)
    }

    /// Wait until `capacity(to).can_send_bytes > 0` (or at most `max_wait`).
    pub async fn writable(&self, to: SocketAddr, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let n = self.inner.capacity_changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.capacity(to).can_send_bytes > 0 {
                return;
            }
            tokio::select! {
                _ = n => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Drop all state about a neighbour (its counters stay in the totals).
    pub fn forget(&self, peer: SocketAddr) {
        let mut sh = self.inner.lock();
        sh.net.forget(peer);
        sh.requests.retain(|(a, _), _| *a != peer);
        // Pending sends to it fail with Closed.
        if self.inner.process_events(&mut sh) {
            self.inner.capacity_changed.notify_waiters();
        }
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> NetStats {
        self.inner.lock().net.stats()
    }

    /// The static public key `addr` proved in its handshake, while the link
    /// is established: what a claimed peer id is checked against
    /// ([`crate::peer_id_of`]).
    pub fn peer_key(&self, addr: SocketAddr) -> Option<[u8; 32]> {
        self.inner.lock().net.peer_key(addr)
    }

    /// Drop everything from `addr` unread for `how_long`, and forget it
    /// ([`NetState::block`]).
    pub fn block(&self, addr: SocketAddr, how_long: Duration) {
        let now = self.inner.now_us();
        let mut sh = self.inner.lock();
        sh.net.block(addr, now + how_long.as_micros() as u64);
        sh.requests.retain(|(a, _), _| *a != addr);
        if self.inner.process_events(&mut sh) {
            self.inner.capacity_changed.notify_waiters();
        }
    }

    /// This endpoint's static public key.
    pub fn public_key(&self) -> [u8; 32] {
        *self.inner.key.public()
    }

    /// This endpoint's peer id: [`crate::peer_id_of`] its static key, the id
    /// its sessions must use, since peers check it.
    pub fn peer_id(&self) -> u64 {
        self.inner.key.peer_id()
    }
}

/// The completion of one reliable send; cancels it when dropped early.
struct Waiter<'a> {
    inner: &'a Inner,
    sid: SendId,
    rx: oneshot::Receiver<Result<(), SendError>>,
}

impl Waiter<'_> {
    async fn wait(mut self) -> Result<(), SendError> {
        let r = (&mut self.rx).await.unwrap_or(Err(SendError::Closed));
        self.sid = SendId(0);
        r
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.sid != SendId(0) {
            let mut sh = self.inner.lock();
            sh.waiters.remove(&self.sid);
            sh.net.cancel(self.sid);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn waiter(&self, sh: &mut Shared, sid: SendId) -> Waiter<'_> {
        let (tx, rx) = oneshot::channel();
        sh.waiters.insert(sid, tx);
        Waiter {
            inner: self,
            sid,
            rx,
        }
    }

    /// Route the state machine's events. Returns whether capacity changed.
    fn process_events(&self, sh: &mut Shared) -> bool {
        let mut changed = false;
        loop {
            if let Some(ev) = sh.stash.take() {
                match self.events.try_send(ev) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(ev)) => {
                        sh.stash = Some(ev);
                        return changed;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => sh.events_closed = true,
                }
            }
            let Some(ev) = sh.net.poll_event() else {
                return changed;
            };
            match ev {
                NetEvent::Deliver(ev) => {
                    if !sh.events_closed {
                        sh.stash = Some(ev);
                    }
                }
                NetEvent::Response {
                    from,
                    request_id,
                    payload,
                } => {
                    if let Some(tx) = sh.requests.remove(&(from, request_id)) {
                        let _ = tx.send(payload);
                    }
                }
                NetEvent::Acked(sid) => {
                    if let Some(tx) = sh.waiters.remove(&sid) {
                        let _ = tx.send(Ok(()));
                    }
                }
                NetEvent::Failed(sid, e) => {
                    if let Some(tx) = sh.waiters.remove(&sid) {
                        let _ = tx.send(Err(e));
                    }
                }
                NetEvent::CapacityChanged => changed = true,
            }
        }
    }

    /// Send from the caller's context without waiting; a datagram the
    /// kernel cannot take now is dropped like a lost one (control messages
    /// are retransmitted or were fire-and-forget).
    fn send_now(&self, out: &Datagrams) {
        // A plain sendto on the socket: tokio's `try_send_to` answers
        // WouldBlock until the reactor has once seen the socket writable, so
        // the first datagram of a fresh endpoint (a CLI's one request) waited
        // a whole retransmission timeout.
        let sock = socket2::SockRef::from(&self.socket);
        for t in out.iter() {
            if let Err(err) = sock.send_to(t.bytes, &t.to.into()) {
                trace!(to = %t.to, "send failed: {err}");
            }
        }
    }

    async fn flush(&self, out: &mut Datagrams) {
        for t in out.iter() {
            if let Err(err) = self.socket.send_to(t.bytes, t.to).await {
                trace!(to = %t.to, "send failed: {err}");
            }
        }
        out.clear();
    }
}

/// The one task: receive, run timers, send, deliver events.
async fn drive(inner: Arc<Inner>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Datagrams::default();
    loop {
        // Receive whatever is waiting (never blocks).
        let mut n = 0;
        while n < RECV_BATCH {
            match inner.socket.try_recv_from(&mut buf) {
                Ok((len, from)) => {
                    n += 1;
                    let now = inner.now_us();
                    inner.lock().net.handle_datagram(now, from, &buf[..len]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors (e.g. port unreachable) surface here.
                    trace!("recv error: {e}");
                    n += 1;
                }
            }
        }
        let now = inner.now_us();
        let (timeout, changed, stashed, more) = {
            let mut sh = inner.lock();
            if n < RECV_BATCH {
                // The socket ran dry: ack what we have (also what an earlier
                // full batch left unacked).
                sh.net.flush_acks(now);
            }
            if sh.net.poll_timeout().is_some_and(|t| t <= now) {
                sh.net.handle_timeout(now);
            }
            let more = sh.net.poll_transmits(now, SEND_BATCH, &mut out);
            let changed = inner.process_events(&mut sh);
            let timeout = sh.net.poll_timeout();
            sh.armed = timeout;
            (timeout, changed, sh.stash.is_some(), more)
        };
        if changed {
            inner.capacity_changed.notify_waiters();
        }
        inner.flush(&mut out).await;
        if more || n >= RECV_BATCH {
            // Busy: let the application's tasks run (they read events and
            // queue chunks), then go on without sleeping.
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = async {
            match timeout {
                Some(t) => {
                    tokio::time::sleep_until((inner.epoch + Duration::from_micros(t)).into()).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = inner.socket.readable() => {
                if let Err(e) = r {
                    warn!("socket failed: {e}");
                    return;
                }
            }
            _ = inner.wake.notified() => {}
            _ = sleep => {}
            p = inner.events.reserve(), if stashed => {
                if let Ok(p) = p {
                    let mut sh = inner.lock();
                    if let Some(ev) = sh.stash.take() {
                        p.send(ev);
                    }
                }
            }
        }
    }
}
