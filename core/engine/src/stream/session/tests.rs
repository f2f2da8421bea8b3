//! The session driven by scripted plugins, in process.
//!
//! A plugin library hands the engine abi_stable trait objects
//! (`SchedulerAbi_TO`, ...). plugin-api's panic guard that builds them from a
//! plain `Scheduler` is private to that crate, so the scripted components
//! here implement the boundary traits (`SchedulerAbi`, ...) themselves and
//! are boxed the way a library boxes its components: every call still goes
//! through the abi_stable vtable, only no `.so` is loaded. Each component
//! logs the calls it gets (what the session told the plugin) and answers
//! with what its script says (what the plugin tells the session), so a test
//! checks both directions of the boundary.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use p2ner_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use p2ner_plugin_api::abi_stable::std_types::{RBox, ROption, RResult, RSlice, RVec};
use p2ner_plugin_api::{
    Capacity, ChunkRef, InputAbi, InputBox, InputState, Link, MediaChunk, NeighbourReport,
    NeighbourUpload, OutputAbi, OutputBox, OutputReport, OverlayAbi, OverlayAction, OverlayBox,
    OverlayContext, PeerId, PeerInfo, Playout, PluginError, SchedAction, SchedContext,
    SchedulerAbi, SchedulerBox, StreamFormat, StripeLink, Upload, View,
};
use p2ner_proto::identity::Identity;
use p2ner_proto::peer::{self as wire, ChunkHeader, Envelope, PeerMsg};

use super::{Role, Session, SessionConfig, SessionOutput};

const STREAM: u64 = 0x5157;
const CHUNK_US: u64 = 100_000;

// --- scripted components ---------------------------------------------------

/// What the session told a scripted scheduler.
#[derive(Debug, Clone, PartialEq)]
enum SchedEvent {
    Start { is_source: bool },
    Up(PeerId, Link),
    Down(PeerId),
    Chunk(u64, Option<PeerId>),
    Message(PeerId, Vec<u8>),
    Capacity(PeerId, Capacity),
    Playout(Playout),
    Tick,
    Upload(Upload),
}

/// What the session told a scripted overlay.
#[derive(Debug, Clone, PartialEq)]
enum OverlayEvent {
    Start { is_source: bool },
    Candidates(Vec<PeerId>),
    Connected(PeerId),
    Disconnected(PeerId),
    Message(PeerId, Vec<u8>),
    Report(PeerId),
    Tick,
    Upload,
}

type React<E, A> = Box<dyn FnMut(&E) -> Vec<A> + Send>;

struct ScriptState<E, A> {
    log: Vec<E>,
    /// Handed over at the component's next call, whatever it is.
    pending: Vec<A>,
    react: React<E, A>,
    /// Every call fails with this, as a plugin's error would.
    error: Option<String>,
    /// The last `on_view` (kept apart from `log`: it comes every tick).
    view: Option<View>,
    /// An overlay's stripe table as it returns it; a scheduler's as it was
    /// last handed one, and how many times it was.
    stripes: Vec<StripeLink>,
    stripe_calls: u32,
}

/// The test's end of a scripted component.
struct Script<E, A>(Arc<Mutex<ScriptState<E, A>>>);

impl<E, A> Clone for Script<E, A> {
    fn clone(&self) -> Self {
        Script(self.0.clone())
    }
}

impl<E: Clone, A> Script<E, A> {
    fn new() -> Self {
        Script(Arc::new(Mutex::new(ScriptState {
            log: Vec::new(),
            pending: Vec::new(),
            react: Box::new(|_| Vec::new()),
            error: None,
            view: None,
            stripes: Vec::new(),
            stripe_calls: 0,
        })))
    }

    /// From now on, answer every call with what `react` returns for it.
    fn on(&self, react: impl FnMut(&E) -> Vec<A> + Send + 'static) {
        self.0.lock().unwrap().react = Box::new(react);
    }

    /// Answer the next call, whichever it is, with `action`.
    fn push(&self, action: A) {
        self.0.lock().unwrap().pending.push(action);
    }

    /// From now on, every call fails with `message`.
    fn fail(&self, message: &str) {
        self.0.lock().unwrap().error = Some(message.to_owned());
    }

    /// The view the component was last shown.
    fn last_view(&self) -> Option<View> {
        self.0.lock().unwrap().view.clone()
    }

    /// The calls so far, emptying the log.
    fn take(&self) -> Vec<E> {
        std::mem::take(&mut self.0.lock().unwrap().log)
    }

    fn call(&self, event: E, out: &mut RVec<A>) -> RResult<(), PluginError> {
        let mut s = self.0.lock().unwrap();
        let mut actions = std::mem::take(&mut s.pending);
        actions.extend((s.react)(&event));
        s.log.push(event);
        out.extend(actions);
        match &s.error {
            Some(message) => RResult::RErr(PluginError::new(message.clone())),
            None => RResult::ROk(()),
        }
    }
}

type SchedScript = Script<SchedEvent, SchedAction>;
type OverlayScript = Script<OverlayEvent, OverlayAction>;

impl SchedulerAbi for SchedScript {
    fn on_start(
        &mut self,
        _now_us: u64,
        ctx: &SchedContext,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(
            SchedEvent::Start {
                is_source: ctx.is_source,
            },
            out,
        )
    }
    fn on_neighbour_up(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        link: Link,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(SchedEvent::Up(peer, link), out)
    }
    fn on_neighbour_down(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(SchedEvent::Down(peer), out)
    }
    fn on_chunk(
        &mut self,
        _now_us: u64,
        seq: u64,
        from: ROption<PeerId>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(SchedEvent::Chunk(seq, from.into_option()), out)
    }
    fn on_message(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        payload: RSlice<'_, u8>,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(SchedEvent::Message(peer, payload.to_vec()), out)
    }
    fn on_capacity(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        capacity: Capacity,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(SchedEvent::Capacity(peer, capacity), out)
    }
    fn on_playout(
        &mut self,
        _now_us: u64,
        playout: Playout,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(SchedEvent::Playout(playout), out)
    }
    fn on_tick(&mut self, _now_us: u64, out: &mut RVec<SchedAction>) -> RResult<(), PluginError> {
        self.call(SchedEvent::Tick, out)
    }
    fn on_upload(
        &mut self,
        _now_us: u64,
        upload: Upload,
        out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.call(SchedEvent::Upload(upload), out)
    }
    fn on_view(
        &mut self,
        _now_us: u64,
        view: &View,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        self.0.lock().unwrap().view = Some(view.clone());
        RResult::ROk(())
    }
    fn on_stripe_links(
        &mut self,
        _now_us: u64,
        links: RSlice<'_, StripeLink>,
        _out: &mut RVec<SchedAction>,
    ) -> RResult<(), PluginError> {
        let mut s = self.0.lock().unwrap();
        s.stripes = links.to_vec();
        s.stripe_calls += 1;
        RResult::ROk(())
    }
}

impl OverlayAbi for OverlayScript {
    fn on_start(
        &mut self,
        _now_us: u64,
        ctx: &OverlayContext,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.call(
            OverlayEvent::Start {
                is_source: ctx.is_source,
            },
            out,
        )
    }
    fn on_candidates(
        &mut self,
        _now_us: u64,
        peers: RSlice<'_, PeerInfo>,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        let ids = peers.iter().map(|p| p.id).collect();
        self.call(OverlayEvent::Candidates(ids), out)
    }
    fn on_connected(
        &mut self,
        _now_us: u64,
        peer: &PeerInfo,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.call(OverlayEvent::Connected(peer.id), out)
    }
    fn on_disconnected(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.call(OverlayEvent::Disconnected(peer), out)
    }
    fn on_message(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        payload: RSlice<'_, u8>,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.call(OverlayEvent::Message(peer, payload.to_vec()), out)
    }
    fn on_report(
        &mut self,
        _now_us: u64,
        peer: PeerId,
        _report: NeighbourReport,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.call(OverlayEvent::Report(peer), out)
    }
    fn on_tick(&mut self, _now_us: u64, out: &mut RVec<OverlayAction>) -> RResult<(), PluginError> {
        self.call(OverlayEvent::Tick, out)
    }
    fn on_upload(
        &mut self,
        _now_us: u64,
        _upload: Upload,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.call(OverlayEvent::Upload, out)
    }
    fn stripe_links(&mut self, out: &mut RVec<StripeLink>) -> RResult<(), PluginError> {
        out.extend(self.0.lock().unwrap().stripes.iter().copied());
        RResult::ROk(())
    }
}

/// What a scripted input hands out, one batch per poll.
type Batches = Arc<Mutex<VecDeque<(Vec<MediaChunk>, InputState)>>>;

/// An input that hands out one scripted batch per poll.
struct ScriptedInput {
    batches: Batches,
    polls: Arc<Mutex<u32>>,
    stopped: Arc<Mutex<bool>>,
}

impl InputAbi for ScriptedInput {
    fn start(&mut self, _now_us: u64) -> RResult<StreamFormat, PluginError> {
        RResult::ROk(format())
    }
    fn poll(
        &mut self,
        _now_us: u64,
        out: &mut RVec<MediaChunk>,
    ) -> RResult<InputState, PluginError> {
        *self.polls.lock().unwrap() += 1;
        match self.batches.lock().unwrap().pop_front() {
            Some((chunks, state)) => {
                out.extend(chunks);
                RResult::ROk(state)
            }
            None => RResult::ROk(InputState::Live),
        }
    }
    fn stop(&mut self) -> RResult<(), PluginError> {
        *self.stopped.lock().unwrap() = true;
        RResult::ROk(())
    }
}

/// What the session handed a scripted output.
#[derive(Debug, Clone, PartialEq)]
enum OutputEvent {
    Start,
    Push { seq: u64, data: Vec<u8> },
    Gap(u64),
    Finish,
}

struct ScriptedOutput(Arc<Mutex<Vec<OutputEvent>>>);

impl OutputAbi for ScriptedOutput {
    fn start(&mut self, _format: &StreamFormat) -> RResult<(), PluginError> {
        self.0.lock().unwrap().push(OutputEvent::Start);
        RResult::ROk(())
    }
    fn push(&mut self, chunk: &ChunkRef<'_>) -> RResult<(), PluginError> {
        self.0.lock().unwrap().push(OutputEvent::Push {
            seq: chunk.seq,
            data: chunk.data.to_vec(),
        });
        RResult::ROk(())
    }
    fn gap(&mut self, seq: u64) -> RResult<(), PluginError> {
        self.0.lock().unwrap().push(OutputEvent::Gap(seq));
        RResult::ROk(())
    }
    fn finish(&mut self) -> RResult<OutputReport, PluginError> {
        self.0.lock().unwrap().push(OutputEvent::Finish);
        RResult::ROk(OutputReport::default())
    }
}

// --- the test bench --------------------------------------------------------

fn format() -> StreamFormat {
    StreamFormat {
        container: "synthetic".into(),
        description: "scripted".into(),
        bitrate_kbps: 800,
        chunk_us: CHUNK_US as u32,
    }
}

fn addr(id: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000 + id as u16))
}

fn info(id: u64) -> PeerInfo {
    PeerInfo {
        id: PeerId(id),
        addr: addr(id).to_string().into(),
    }
}

/// One session under test with its scripted plugins.
struct Bench {
    s: Session,
    sched: SchedScript,
    overlay: OverlayScript,
    id: u64,
}

/// The publisher's input and key, for the tests of the publishing side.
struct Publishing {
    batches: Batches,
    polls: Arc<Mutex<u32>>,
    stopped: Arc<Mutex<bool>>,
    key: Identity,
}

fn config(id: u64) -> SessionConfig {
    let mut cfg = SessionConfig::new(STREAM, "scripted", info(id), 800, 100);
    cfg.source = Some(info(1));
    cfg
}

fn plugins() -> (SchedScript, OverlayScript, SchedulerBox, OverlayBox) {
    let sched = SchedScript::new();
    let overlay = OverlayScript::new();
    let sched_box = SchedulerBox::from_ptr(RBox::new(sched.clone()), TD_Opaque);
    let overlay_box = OverlayBox::from_ptr(RBox::new(overlay.clone()), TD_Opaque);
    (sched, overlay, sched_box, overlay_box)
}

/// A subscriber (peer `id`) of a stream published with `publisher`'s key.
fn subscriber(
    id: u64,
    publisher: &Identity,
    cfg: SessionConfig,
) -> (Bench, Arc<Mutex<Vec<OutputEvent>>>) {
    let (sched, overlay, sched_box, overlay_box) = plugins();
    let played = Arc::new(Mutex::new(Vec::new()));
    let output = OutputBox::from_ptr(RBox::new(ScriptedOutput(played.clone())), TD_Opaque);
    let role = Role::Subscriber {
        output,
        key: publisher.public_key(),
    };
    let mut s = Session::new(cfg, role, sched_box, overlay_box, 0);
    s.start(0, Some(format())).expect("start");
    s.drain();
    let bench = Bench {
        s,
        sched,
        overlay,
        id,
    };
    bench.sched.take();
    bench.overlay.take();
    (bench, played)
}

/// The publisher, peer 1.
fn publisher() -> (Bench, Publishing) {
    let (sched, overlay, sched_box, overlay_box) = plugins();
    let p = Publishing {
        batches: Arc::new(Mutex::new(VecDeque::new())),
        polls: Arc::new(Mutex::new(0)),
        stopped: Arc::new(Mutex::new(false)),
        key: Identity::from_secret([7; 32]),
    };
    let input = InputBox::from_ptr(
        RBox::new(ScriptedInput {
            batches: p.batches.clone(),
            polls: p.polls.clone(),
            stopped: p.stopped.clone(),
        }),
        TD_Opaque,
    );
    let role = Role::Publisher {
        input,
        key: Identity::from_secret([7; 32]),
    };
    let mut cfg = config(1);
    cfg.source = None;
    let mut s = Session::new(cfg, role, sched_box, overlay_box, 0);
    s.start(0, None).expect("start");
    s.drain();
    let bench = Bench {
        s,
        sched,
        overlay,
        id: 1,
    };
    bench.sched.take();
    bench.overlay.take();
    (bench, p)
}

impl Bench {
    /// Peer `from` says `msg` to this session.
    fn hear(&mut self, now_us: u64, from: u64, msg: PeerMsg) {
        let env = Envelope {
            version: wire::VERSION,
            stream: STREAM,
            from,
            msg,
        };
        let len = wire::encode(&env).len();
        self.s.on_message(now_us, addr(from), env, len);
    }

    /// Makes `peer` a neighbour the way a remote peer does: it says Hello.
    fn link_from(&mut self, now_us: u64, peer: u64) {
        self.hear(now_us, peer, PeerMsg::hello(Link::BOTH));
        assert!(
            self.s.is_up(PeerId(peer)),
            "Hello from {peer} opens the link"
        );
        self.out();
        self.sched.take();
        self.overlay.take();
    }

    /// What the session asked its carrier to do since the last call.
    fn out(&mut self) -> Vec<SessionOutput> {
        self.s.drain().collect()
    }

    /// The control messages sent since the last call, decoded.
    fn sent(&mut self) -> Vec<(SocketAddr, PeerMsg, bool)> {
        let out = self.out();
        self.messages(&out)
    }

    /// The control messages in `out`, decoded: (to, message, reliable).
    fn messages(&self, out: &[SessionOutput]) -> Vec<(SocketAddr, PeerMsg, bool)> {
        out.iter()
            .filter_map(|o| match o {
                SessionOutput::SendMessage {
                    to,
                    bytes,
                    reliable,
                } => {
                    let env = wire::decode(bytes).expect("the session sends valid envelopes");
                    assert_eq!((env.stream, env.from), (STREAM, self.id));
                    Some((*to, env.msg, *reliable))
                }
                _ => None,
            })
            .collect()
    }
}

fn media(seq: u64) -> Vec<u8> {
    vec![seq as u8; 500]
}

/// Chunk `seq` as the publisher with `key` seals it (every 10th a keyframe).
fn sealed(key: &Identity, seq: u64) -> Bytes {
    let header = ChunkHeader {
        pts_us: seq * CHUNK_US,
        duration_us: CHUNK_US as u32,
        keyframe: seq.is_multiple_of(10),
        capture_us: 1_000 + seq * CHUNK_US,
    };
    Bytes::from(wire::seal_chunk(key, STREAM, seq, &header, &media(seq)))
}

fn forgets(out: &[SessionOutput]) -> Vec<SocketAddr> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::ForgetPeer { addr } => Some(*addr),
            _ => None,
        })
        .collect()
}

fn chunks_sent(out: &[SessionOutput]) -> Vec<(SocketAddr, u64, Bytes)> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::SendChunk { to, seq, data } => Some((*to, *seq, data.clone())),
            _ => None,
        })
        .collect()
}

// --- links and trust -------------------------------------------------------

#[test]
fn starting_tells_both_plugins_which_end_this_peer_is() {
    let (sched, overlay, sched_box, overlay_box) = plugins();
    let played = Arc::new(Mutex::new(Vec::new()));
    let output = OutputBox::from_ptr(RBox::new(ScriptedOutput(played.clone())), TD_Opaque);
    let key = Identity::from_secret([7; 32]);
    let role = Role::Subscriber {
        output,
        key: key.public_key(),
    };
    let mut s = Session::new(config(2), role, sched_box, overlay_box, 0);
    assert!(!s.is_publisher());
    s.start(0, Some(format())).unwrap();
    assert_eq!(sched.take(), [SchedEvent::Start { is_source: false }]);
    assert_eq!(overlay.take(), [OverlayEvent::Start { is_source: false }]);
    assert_eq!(*played.lock().unwrap(), [OutputEvent::Start]);

    let (p, _) = publisher();
    assert!(p.s.is_publisher());
}

#[test]
fn a_hello_opens_the_link_and_a_bye_closes_it() {
    let key = Identity::from_secret([7; 32]);
    let (mut b, _) = subscriber(2, &key, config(2));
    b.hear(1_000, 3, PeerMsg::hello(Link::BOTH));
    let out = b.out();
    assert_eq!(
        b.messages(&out),
        [(addr(3), PeerMsg::Welcome, true)],
        "a Hello is answered with a reliable Welcome"
    );
    assert_eq!(b.s.neighbour_count(), 1);
    assert_eq!(b.sched.take(), [SchedEvent::Up(PeerId(3), Link::BOTH)]);
    assert_eq!(b.overlay.take(), [OverlayEvent::Connected(PeerId(3))]);

    // A second Hello (a retransmission) is welcomed again but opens nothing new.
    b.hear(2_000, 3, PeerMsg::hello(Link::BOTH));
    assert_eq!(b.sent(), [(addr(3), PeerMsg::Welcome, true)]);
    assert_eq!(b.sched.take(), []);

    b.hear(3_000, 3, PeerMsg::Bye);
    let out = b.out();
    assert!(b.messages(&out).is_empty(), "a Bye is not answered");
    assert_eq!(forgets(&out), [addr(3)]);
    assert_eq!(b.s.neighbour_count(), 0);
    assert_eq!(b.sched.take(), [SchedEvent::Down(PeerId(3))]);
    assert_eq!(b.overlay.take(), [OverlayEvent::Disconnected(PeerId(3))]);
}

#[test]
fn a_connect_waits_for_welcome_and_gives_up_after_the_connect_timeout() {
    let key = Identity::from_secret([7; 32]);
    let cfg = config(2);
    let connect_timeout = cfg.connect_timeout_us;
    let (mut b, _) = subscriber(2, &key, cfg);
    b.overlay.on(|e| match e {
        OverlayEvent::Candidates(ids) => ids
            .iter()
            .map(|id| OverlayAction::Connect {
                peer: info(id.0),
                link: Link::BOTH,
            })
            .collect(),
        _ => Vec::new(),
    });
    // The server's sample names this peer too: it never connects to itself.
    b.s.on_candidates(1_000, &[info(2), info(3), info(4)]);
    assert_eq!(
        b.overlay.take(),
        [OverlayEvent::Candidates(vec![PeerId(3), PeerId(4)])]
    );
    let out = b.out();
    assert_eq!(
        b.messages(&out),
        [
            (addr(3), PeerMsg::hello(Link::BOTH), true),
            (addr(4), PeerMsg::hello(Link::BOTH), true)
        ]
    );
    assert_eq!(b.s.neighbour_count(), 0, "connecting is not up");

    b.hear(2_000, 3, PeerMsg::Welcome);
    assert_eq!(b.s.neighbour_count(), 1);
    assert_eq!(b.sched.take(), [SchedEvent::Up(PeerId(3), Link::BOTH)]);
    assert_eq!(b.overlay.take(), [OverlayEvent::Connected(PeerId(3))]);

    // 4 never answers. Just before the timeout it is still pending ...
    b.s.tick(1_000 + connect_timeout);
    assert!(forgets(&b.out()).is_empty());
    // ... and after it, it is dropped with a Bye and the overlay is told.
    b.s.tick(1_001 + connect_timeout);
    let out = b.out();
    assert!(b.messages(&out).contains(&(addr(4), PeerMsg::Bye, false)));
    assert_eq!(forgets(&out), [addr(4)]);
    assert!(b
        .overlay
        .take()
        .contains(&OverlayEvent::Disconnected(PeerId(4))));
    assert!(
        !b.sched.take().contains(&SchedEvent::Down(PeerId(4))),
        "the scheduler never saw 4 up, so it is not told it went down"
    );

    // A Welcome nobody asked for is answered with a Bye.
    b.hear(3_000_000 + connect_timeout, 5, PeerMsg::Welcome);
    assert_eq!(b.sent(), [(addr(5), PeerMsg::Bye, false)]);
    assert_eq!(b.s.neighbour_count(), 1);
}

#[test]
fn keepalives_ping_a_quiet_link_and_silence_drops_it() {
    let key = Identity::from_secret([7; 32]);
    let cfg = config(2);
    let (keepalive, timeout) = (cfg.keepalive_us, cfg.neighbour_timeout_us);
    let (mut b, _) = subscriber(2, &key, cfg);
    b.link_from(0, 3);

    b.s.tick(keepalive - 1);
    assert!(b.sent().is_empty(), "sent a Welcome just now");
    b.s.tick(keepalive);
    assert_eq!(
        b.sent(),
        [(addr(3), PeerMsg::Ping(Default::default()), false)]
    );

    // Hearing anything, even a Ping, keeps the link alive.
    b.hear(timeout - 1, 3, PeerMsg::Ping(Default::default()));
    b.s.tick(timeout + 1);
    assert_eq!(b.s.neighbour_count(), 1);
    b.s.tick(2 * timeout - 1);
    assert_eq!(b.s.neighbour_count(), 1, "silent for exactly the timeout");
    b.out();
    b.s.tick(2 * timeout);
    let out = b.out();
    assert_eq!(
        forgets(&out),
        [addr(3)],
        "silent for longer than the timeout"
    );
    assert!(b.messages(&out).contains(&(addr(3), PeerMsg::Bye, false)));
    assert_eq!(b.s.neighbour_count(), 0);
    assert!(b.sched.take().contains(&SchedEvent::Down(PeerId(3))));
}

#[test]
fn a_neighbours_upload_advert_reaches_the_view_and_ours_reaches_it() {
    let key = Identity::from_secret([7; 32]);
    let cfg = config(2);
    let keepalive = cfg.keepalive_us;
    let (mut b, _) = subscriber(2, &key, cfg);
    b.link_from(0, 3);
    b.link_from(0, 4);

    // Before any advert (or from an engine that sends none) it is unknown.
    b.s.tick(10);
    let view = b.sched.last_view().expect("a view every tick");
    assert_eq!(
        view.link(PeerId(3)).unwrap().advert,
        NeighbourUpload::default()
    );

    let advert = wire::Advert {
        capacity_bps: 6_000_000,
        capped: true,
        rate_bps: 2_500_000,
        queued_us: 40_000,
    };
    b.hear(20, 3, PeerMsg::Ping(advert));
    b.s.tick(30);
    let view = b.sched.last_view().unwrap();
    assert_eq!(
        view.link(PeerId(3)).unwrap().advert,
        NeighbourUpload {
            capacity_bps: 6_000_000,
            capped: true,
            rate_bps: 2_500_000,
            queued_us: 40_000,
            received_us: 20,
        }
    );
    assert_eq!(
        view.link(PeerId(4)).unwrap().advert,
        NeighbourUpload::default(),
        "each neighbour's own advert"
    );

    // This peer advertises its own upload on a link that is never quiet:
    // when it changed, at most once per keepalive, and unchanged every
    // fifth keepalive.
    let ours = Upload {
        capacity_bps: 3_000_000,
        capped: true,
        rate_bps: 1_000_000,
        queued_us: 7_000,
        ..Upload::default()
    };
    b.s.set_upload(ours);
    b.out();
    let busy_pings = |b: &mut Bench, from: u64, to: u64| {
        let mut pings = Vec::new();
        for t in (from..=to).step_by(100_000) {
            b.hear(t, 3, PeerMsg::Scheduler(vec![1]));
            // Something goes to 3 every 100 ms: the link is never quiet.
            let busy = super::env_msg(&b.s.cfg, PeerMsg::Scheduler(vec![2]));
            b.s.send(addr(3), busy, false, t);
            b.s.tick(t);
            pings.extend(b.sent().into_iter().filter_map(|(to, m, _)| match m {
                PeerMsg::Ping(a) if to == addr(3) => Some((t, a)),
                _ => None,
            }));
        }
        pings
    };
    let first = wire::Advert {
        capacity_bps: 3_000_000,
        capped: true,
        rate_bps: 1_000_000,
        queued_us: 7_000,
    };
    assert_eq!(
        busy_pings(&mut b, 100_000, 2 * keepalive),
        vec![(keepalive, first)],
        "a new advert after one keepalive interval, then nothing while unchanged"
    );
    b.s.set_upload(Upload {
        rate_bps: 2_000_000,
        ..ours
    });
    let moved = wire::Advert {
        rate_bps: 2_000_000,
        ..first
    };
    let t0 = 2 * keepalive + 100_000;
    assert_eq!(
        busy_pings(&mut b, t0, 3 * keepalive),
        vec![(t0, moved)],
        "a changed advert goes out at once (a keepalive after the last)"
    );
    assert_eq!(
        busy_pings(&mut b, 3 * keepalive + 100_000, t0 + 5 * keepalive),
        vec![(t0 + 5 * keepalive, moved)],
        "an unchanged advert is refreshed every fifth keepalive"
    );
}

#[test]
fn the_overlays_stripe_table_reaches_the_scheduler_when_it_changes() {
    let key = Identity::from_secret([7; 32]);
    let (mut b, _) = subscriber(2, &key, config(2));
    b.link_from(0, 3);
    b.link_from(0, 4);
    let link = |peer, upstream, downstream| StripeLink {
        peer: PeerId(peer),
        upstream,
        downstream,
    };
    let stripes = |b: &Bench| {
        let s = b.sched.0.lock().unwrap();
        (s.stripes.clone(), s.stripe_calls)
    };
    // Before the overlay says anything, the scheduler hears nothing.
    b.s.tick(10);
    assert_eq!(stripes(&b), (vec![], 0));
    // A stranger (9) and a repeated entry are not passed on.
    b.overlay.0.lock().unwrap().stripes = vec![
        link(4, 0, 0b100),
        link(9, 0b10, 0),
        link(3, 0b01, 0),
        link(3, 0b11, 0),
    ];
    b.s.tick(20);
    assert_eq!(stripes(&b), (vec![link(3, 0b01, 0), link(4, 0, 0b100)], 1));
    b.s.tick(30);
    assert_eq!(stripes(&b).1, 1, "unchanged: not handed over again");
    // A neighbour that goes is gone from the table at once.
    b.hear(40, 3, PeerMsg::Bye);
    b.s.tick(50);
    assert_eq!(stripes(&b), (vec![link(4, 0, 0b100)], 2));
}

#[test]
fn an_unreachable_neighbour_is_dropped_without_a_bye() {
    let key = Identity::from_secret([7; 32]);
    let (mut b, _) = subscriber(2, &key, config(2));
    b.link_from(0, 3);
    b.s.on_unreachable(10, addr(3));
    let out = b.out();
    assert!(b.messages(&out).is_empty());
    assert_eq!(forgets(&out), [addr(3)]);
    assert_eq!(b.overlay.take(), [OverlayEvent::Disconnected(PeerId(3))]);
    assert_eq!(b.sched.take(), [SchedEvent::Down(PeerId(3))]);
}

#[test]
fn a_forged_chunk_bans_its_sender_for_good() {
    let key = Identity::from_secret([7; 32]);
    let forger = Identity::from_secret([8; 32]);
    let (mut b, _) = subscriber(2, &key, config(2));
    b.link_from(0, 3);
    b.link_from(0, 4);

    // A genuine chunk is taken and the scheduler hears where it came from.
    assert!(b.s.on_chunk(10, addr(4), 0, sealed(&key, 0)));
    assert_eq!(b.s.stats().chunks_received, 1);
    assert_eq!(b.sched.take(), [SchedEvent::Chunk(0, Some(PeerId(4)))]);

    // One signed with another key gets its sender banned.
    assert!(!b.s.on_chunk(20, addr(3), 1, sealed(&forger, 1)));
    let out = b.out();
    assert_eq!(b.s.stats().forged_chunks, 1);
    assert_eq!(b.s.stats().peers_banned, 1);
    assert_eq!(b.s.stats().chunks_received, 1);
    assert_eq!(forgets(&out), [addr(3)]);
    assert_eq!(b.messages(&out), [(addr(3), PeerMsg::Bye, false)]);
    assert_eq!(b.s.neighbour_count(), 1);
    assert_eq!(b.sched.take(), [SchedEvent::Down(PeerId(3))]);
    assert_eq!(b.overlay.take(), [OverlayEvent::Disconnected(PeerId(3))]);

    // The banned peer is not heard again, nor offered to the overlay.
    b.hear(30, 3, PeerMsg::hello(Link::BOTH));
    assert!(b.out().is_empty(), "no Welcome for a banned peer");
    assert_eq!(b.s.neighbour_count(), 1);
    b.s.on_candidates(40, &[info(3), info(5)]);
    assert_eq!(
        b.overlay.take(),
        [OverlayEvent::Candidates(vec![PeerId(5)])]
    );

    // A genuine chunk altered on the way is forged too.
    let mut altered = sealed(&key, 2).to_vec();
    *altered.last_mut().unwrap() ^= 1;
    assert!(!b.s.on_chunk(50, addr(4), 2, Bytes::from(altered)));
    assert_eq!(b.s.stats().forged_chunks, 2);
    assert_eq!(b.s.stats().peers_banned, 2);
    assert_eq!(b.s.neighbour_count(), 0);
}

// --- dispatch ----------------------------------------------------------------

#[test]
fn a_send_chunk_beyond_the_links_budget_is_refused() {
    let (mut a, p) = publisher();
    p.batches.lock().unwrap().push_back((
        (0..3)
            .map(|seq| MediaChunk {
                pts_us: seq * CHUNK_US,
                duration_us: CHUNK_US as u32,
                keyframe: seq == 0,
                data: media(seq).into(),
            })
            .collect(),
        InputState::Live,
    ));
    a.link_from(0, 2);
    a.sched.on(|e| match e {
        SchedEvent::Capacity(peer, _) => (0..3)
            .map(|seq| SchedAction::SendChunk { peer: *peer, seq })
            .collect(),
        _ => Vec::new(),
    });
    // One byte left: the first chunk may overdraw it, the others wait.
    a.s.set_capacity(
        addr(2),
        Capacity {
            can_send_bytes: 1,
            ..Capacity::default()
        },
    );
    a.s.tick(CHUNK_US);
    let sent = chunks_sent(&a.out());
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].0, sent[0].1), (addr(2), 0));
    assert_eq!(a.s.stats().chunks_sent, 1);
    assert_eq!(a.s.stats().chunks_refused, 2);

    // Until the carrier says the link has room again, nothing goes.
    a.s.tick(2 * CHUNK_US);
    assert!(chunks_sent(&a.out()).is_empty());
    assert_eq!(a.s.stats().chunks_refused, 5);
    a.s.set_capacity(
        addr(2),
        Capacity {
            can_send_bytes: 1 << 20,
            ..Capacity::default()
        },
    );
    a.s.tick(3 * CHUNK_US);
    assert_eq!(chunks_sent(&a.out()).len(), 3);
}

#[test]
fn the_shared_upload_budget_is_spent_once_across_neighbours() {
    let (mut a, p) = publisher();
    p.batches.lock().unwrap().push_back((
        vec![MediaChunk {
            pts_us: 0,
            duration_us: CHUNK_US as u32,
            keyframe: true,
            data: media(0).into(),
        }],
        InputState::Live,
    ));
    a.link_from(0, 2);
    a.link_from(0, 3);
    for peer in [2, 3] {
        a.s.set_capacity(
            addr(peer),
            Capacity {
                can_send_bytes: 1 << 20,
                ..Capacity::default()
            },
        );
    }
    a.s.set_upload(Upload {
        capped: true,
        budget_bytes: 1,
        ..Upload::default()
    });
    a.sched.on(|e| match e {
        SchedEvent::Capacity(peer, _) => vec![SchedAction::SendChunk {
            peer: *peer,
            seq: 0,
        }],
        _ => Vec::new(),
    });
    a.s.tick(CHUNK_US);
    assert_eq!(chunks_sent(&a.out()).len(), 1);
    assert_eq!(a.s.stats().chunks_refused, 1);
    // The first neighbour offered sees the budget, the second what is left.
    let offered: Vec<u64> = a
        .sched
        .take()
        .into_iter()
        .filter_map(|e| match e {
            SchedEvent::Capacity(_, c) => Some(c.can_send_bytes),
            _ => None,
        })
        .collect();
    assert_eq!(offered, [1, 0]);
}

#[test]
fn overlay_actions_reach_the_carrier() {
    let key = Identity::from_secret([7; 32]);
    let (mut b, _) = subscriber(2, &key, config(2));
    b.link_from(0, 3);

    b.overlay.push(OverlayAction::WantPeers { count: 7 });
    b.s.tick(10);
    let out = b.out();
    assert!(
        out.contains(&SessionOutput::WantPeers { count: 7 }),
        "{out:?}"
    );

    let tree_child = Link {
        upstream: false,
        downstream: true,
    };
    b.overlay.push(OverlayAction::SetLink {
        peer: PeerId(3),
        link: tree_child,
    });
    b.sched.take();
    b.s.tick(20);
    let out = b.out();
    assert!(b.messages(&out).contains(&(
        addr(3),
        PeerMsg::SetLink {
            up: false,
            down: true
        },
        true
    )));
    let sched: Vec<SchedEvent> = b
        .sched
        .take()
        .into_iter()
        .filter(|e| matches!(e, SchedEvent::Up(..) | SchedEvent::Down(..)))
        .collect();
    assert_eq!(
        sched,
        [
            SchedEvent::Down(PeerId(3)),
            SchedEvent::Up(PeerId(3), tree_child)
        ],
        "schedulers see a changed link as a new one"
    );

    b.overlay.push(OverlayAction::SendMessage {
        peer: PeerId(3),
        payload: vec![9, 9].into(),
        reliable: false,
    });
    b.s.tick(30);
    assert!(b
        .sent()
        .contains(&(addr(3), PeerMsg::Overlay(vec![9, 9]), false)));

    // The overlay asked for the disconnect, so it is not told of it.
    b.overlay.take();
    b.overlay
        .push(OverlayAction::Disconnect { peer: PeerId(3) });
    b.s.tick(40);
    let out = b.out();
    assert!(b.messages(&out).contains(&(addr(3), PeerMsg::Bye, false)));
    assert_eq!(forgets(&out), [addr(3)]);
    assert!(!b
        .overlay
        .take()
        .contains(&OverlayEvent::Disconnected(PeerId(3))));

    // A peer that cannot be reached is refused at once.
    b.overlay.push(OverlayAction::Connect {
        peer: PeerInfo {
            id: PeerId(9),
            addr: "not an address".into(),
        },
        link: Link::BOTH,
    });
    b.s.tick(50);
    assert!(b
        .overlay
        .take()
        .contains(&OverlayEvent::Disconnected(PeerId(9))));
    assert!(b.sent().is_empty());
}

#[test]
fn plugin_messages_travel_in_their_own_envelopes() {
    let key = Identity::from_secret([7; 32]);
    let (mut b, _) = subscriber(2, &key, config(2));

    // A scheduler message from a peer that is not a neighbour is dropped.
    b.hear(0, 3, PeerMsg::Scheduler(vec![1]));
    assert!(b.sched.take().is_empty());
    b.link_from(0, 3);
    b.hear(10, 3, PeerMsg::Scheduler(vec![1, 2]));
    b.hear(10, 3, PeerMsg::Overlay(vec![3]));
    assert_eq!(b.sched.take(), [SchedEvent::Message(PeerId(3), vec![1, 2])]);
    assert_eq!(
        b.overlay.take(),
        [OverlayEvent::Message(PeerId(3), vec![3])]
    );

    b.sched.push(SchedAction::SendMessage {
        peer: PeerId(3),
        payload: vec![4].into(),
        reliable: true,
    });
    b.s.tick(20);
    assert!(b
        .sent()
        .contains(&(addr(3), PeerMsg::Scheduler(vec![4]), true)));
}

// --- the publishing side -----------------------------------------------------

#[test]
fn the_publisher_seals_what_its_input_produces_and_stops_when_it_ends() {
    let (mut a, p) = publisher();
    let chunk = |seq: u64| MediaChunk {
        pts_us: seq * CHUNK_US,
        duration_us: CHUNK_US as u32,
        keyframe: seq == 0,
        data: media(seq).into(),
    };
    {
        let mut batches = p.batches.lock().unwrap();
        batches.push_back(((0..3).map(chunk).collect(), InputState::Live));
        batches.push_back((vec![chunk(3)], InputState::Ended));
    }
    a.link_from(0, 2);
    a.s.set_capacity(
        addr(2),
        Capacity {
            can_send_bytes: 1 << 20,
            ..Capacity::default()
        },
    );
    a.sched.on(|e| match e {
        SchedEvent::Chunk(seq, None) => vec![SchedAction::SendChunk {
            peer: PeerId(2),
            seq: *seq,
        }],
        _ => Vec::new(),
    });

    let t1 = 5 * CHUNK_US;
    a.s.tick(t1);
    assert_eq!(a.s.stats().chunks_produced, 3);
    let produced: Vec<SchedEvent> = a
        .sched
        .take()
        .into_iter()
        .filter(|e| matches!(e, SchedEvent::Chunk(..)))
        .collect();
    assert_eq!(
        produced,
        (0..3)
            .map(|s| SchedEvent::Chunk(s, None))
            .collect::<Vec<_>>()
    );
    let sent = chunks_sent(&a.out());
    assert_eq!(sent.len(), 3);
    for (seq, (to, sent_seq, data)) in sent.into_iter().enumerate() {
        let seq = seq as u64;
        assert_eq!((to, sent_seq), (addr(2), seq));
        let (header, at) = wire::open_chunk(&p.key.public_key(), STREAM, seq, &data)
            .expect("sealed with the publisher's key");
        assert_eq!(&data[at..], media(seq).as_slice());
        assert_eq!(header.pts_us, seq * CHUNK_US);
        assert_eq!(header.keyframe, seq == 0);
        assert_eq!(header.capture_us, t1, "stamped with the publisher's clock");
    }

    a.s.tick(t1 + CHUNK_US);
    assert!(a.s.ended());
    assert_eq!(a.s.stats().chunks_produced, 4);
    assert_eq!(chunks_sent(&a.out())[0].1, 3);
    a.s.tick(t1 + 2 * CHUNK_US);
    assert_eq!(*p.polls.lock().unwrap(), 2, "an ended input is not polled");

    assert_eq!(a.s.close(t1 + 3 * CHUNK_US), None);
    assert!(*p.stopped.lock().unwrap());
    assert!(a.sent().contains(&(addr(2), PeerMsg::Bye, false)));
}

// --- the subscribing side ----------------------------------------------------

#[test]
fn play_out_advances_on_its_clock_and_counts_misses() {
    let key = Identity::from_secret([7; 32]);
    let mut cfg = config(2);
    cfg.startup_chunks = 2;
    let (mut b, played) = subscriber(2, &key, cfg);
    b.link_from(0, 1);
    for seq in [0, 1, 2, 4, 5] {
        assert!(b.s.on_chunk(5_000, addr(1), seq, sealed(&key, seq)));
    }
    played.lock().unwrap().clear();

    let t0 = 10_000;
    b.s.tick(t0);
    assert_eq!(b.s.stats().startup_us, Some(t0));
    // Chunk s is due at t0 + s x 100 ms: by t0 + 350 ms, 0..=2 played and 3 missed.
    b.s.tick(t0 + 350_000);
    let push = |seq: u64| OutputEvent::Push {
        seq,
        data: media(seq),
    };
    assert_eq!(
        *played.lock().unwrap(),
        [push(0), push(1), push(2), OutputEvent::Gap(3)]
    );
    assert_eq!(b.s.stats().chunks_played, 3);
    assert_eq!(b.s.stats().chunks_missed, 1);

    // 3 arrives after its deadline: late, never played.
    assert!(b.s.on_chunk(t0 + 360_000, addr(1), 3, sealed(&key, 3)));
    assert_eq!(b.s.stats().chunks_late, 1);

    b.s.tick(t0 + 590_000);
    assert_eq!(
        *played.lock().unwrap(),
        [
            push(0),
            push(1),
            push(2),
            OutputEvent::Gap(3),
            push(4),
            push(5)
        ]
    );
    // The scheduler learns what is due next.
    let playout = b.sched.take().into_iter().rev().find_map(|e| match e {
        SchedEvent::Playout(p) => Some(p),
        _ => None,
    });
    let playout = playout.expect("on_playout every tick once playing");
    assert_eq!(playout.next_seq, 6);
    assert_eq!(playout.next_deadline_us, t0 + 600_000);
    assert_eq!(b.s.stats().lag_us.len(), 5);

    b.s.close(t0 + 600_000);
    assert_eq!(played.lock().unwrap().last(), Some(&OutputEvent::Finish));
}

#[test]
fn a_plugin_error_fails_the_stream_and_nothing_runs_after_it() {
    let key = Identity::from_secret([7; 32]);
    let (mut b, _) = subscriber(2, &key, config(2));
    b.link_from(0, 3);
    b.s.tick(10);
    assert_eq!(b.s.failed(), None);
    b.overlay.fail("no more");
    b.s.tick(20);
    let failed = b.s.failed().expect("an overlay error fails the stream");
    assert!(
        failed.contains("overlay") && failed.contains("no more"),
        "{failed}"
    );
    b.sched.take();
    b.overlay.take();
    b.s.tick(30);
    b.hear(40, 3, PeerMsg::Scheduler(vec![1]));
    assert!(b.sched.take().is_empty(), "a failed stream calls no plugin");
    assert!(b.overlay.take().is_empty());
}
