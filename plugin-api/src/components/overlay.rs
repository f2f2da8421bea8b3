//! `p2ner.overlay`: who the neighbours are, and which way media flows to them.

use abi_stable::{
    sabi_trait,
    std_types::{RResult, RSlice, RVec},
    StableAbi,
};

use super::Guarded;
// `StripeLink` by its module path: the frozen ABI 1.0 lib.rs of the
// frontend fixture (tests/fixtures/frontend-abi-1.0) predates its re-export.
use crate::types::StripeLink;
use crate::{
    Link, Metric, Metrics, NeighbourReport, PeerId, PeerInfo, PluginError, Refusal, Setup, Upload,
    View,
};

/// What an overlay learns once, when its stream starts.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct OverlayContext {
    /// This peer: its id and the address its neighbours reach it at.
    pub local: PeerInfo,
    /// This peer is the publisher, the root of any tree.
    pub is_source: bool,
    /// Seed for [`crate::Rng`], so runs can be replayed.
    pub seed: u64,
    /// The publisher, when known (subscribers learn it from the server).
    pub source: abi_stable::std_types::ROption<PeerInfo>,
}

/// What an overlay asks the engine to do.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum OverlayAction {
    /// Open a neighbour link to `peer`; the answer is
    /// [`Overlay::on_connected`] or [`Overlay::on_disconnected`].
    Connect {
        /// Who, and where to reach it.
        peer: PeerInfo,
        /// Which way media flows on the link, as this peer sees it.
        link: Link,
    },
    /// Close the link to `peer`.
    Disconnect {
        /// The neighbour.
        peer: PeerId,
    },
    /// Change which way media flows on an existing link (tree repair, ...).
    SetLink {
        /// The neighbour.
        peer: PeerId,
        /// The new direction, as this peer sees it.
        link: Link,
    },
    /// A message of the overlay's own protocol (peer exchange, join, ...)
    /// for the overlay at `peer`.
    SendMessage {
        /// The overlay at this peer gets it.
        peer: PeerId,
        /// The overlay's own bytes; the engine does not look inside.
        payload: RVec<u8>,
        /// Acknowledged and retransmitted (joins, accepts); unreliable for what the next one replaces (heartbeats).
        reliable: bool,
    },
    /// Ask the stream's servers for up to `count` more candidate peers.
    WantPeers {
        /// At most this many.
        count: u32,
    },
}

/// Collects an overlay's actions for one event.
pub struct OverlayOut<'a>(&'a mut RVec<OverlayAction>);

impl<'a> OverlayOut<'a> {
    /// Collects into `actions` (the engine's buffer, reused between calls).
    pub fn new(actions: &'a mut RVec<OverlayAction>) -> Self {
        OverlayOut(actions)
    }

    /// Opens a link to `peer` (see [`OverlayAction::Connect`]).
    pub fn connect(&mut self, peer: PeerInfo, link: Link) {
        self.0.push(OverlayAction::Connect { peer, link });
    }

    /// Closes the link to `peer`.
    pub fn disconnect(&mut self, peer: PeerId) {
        self.0.push(OverlayAction::Disconnect { peer });
    }

    /// Sends `payload` to the overlay at `peer`.
    pub fn send_message(&mut self, peer: PeerId, payload: Vec<u8>, reliable: bool) {
        self.0.push(OverlayAction::SendMessage {
            peer,
            payload: payload.into(),
            reliable,
        });
    }

    /// Any action, as it is.
    pub fn push(&mut self, action: OverlayAction) {
        self.0.push(action);
    }

    /// The actions collected so far, in the order the engine carries them out.
    pub fn actions(&self) -> &[OverlayAction] {
        self.0.as_slice()
    }

    /// Takes the actions collected so far, leaving none.
    pub fn take(&mut self) -> Vec<OverlayAction> {
        std::mem::take(self.0).into_vec()
    }

    /// Forgets the actions collected so far.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// An overlay, as a plugin author writes it: a sans-IO state machine.
pub trait Overlay: Send + 'static {
    /// The stream starts: who this peer is, and whether it is the publisher.
    fn on_start(&mut self, _now_us: u64, _ctx: &OverlayContext, _out: &mut OverlayOut<'_>) {}
    /// Candidate peers, from a server's sample or a neighbour's peer exchange.
    fn on_candidates(&mut self, _now_us: u64, _peers: &[PeerInfo], _out: &mut OverlayOut<'_>) {}
    /// A link is up: one this overlay asked for, or one a remote peer opened.
    fn on_connected(&mut self, _now_us: u64, _peer: &PeerInfo, _out: &mut OverlayOut<'_>) {}
    /// A link is down, or a connection attempt failed.
    fn on_disconnected(&mut self, _now_us: u64, _peer: PeerId, _out: &mut OverlayOut<'_>) {}
    /// A [`OverlayAction::SendMessage`] from the overlay at `peer`.
    fn on_message(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _payload: &[u8],
        _out: &mut OverlayOut<'_>,
    ) {
    }
    /// Periodic measurements of a neighbour, to replace useless ones.
    fn on_report(
        &mut self,
        _now_us: u64,
        _peer: PeerId,
        _report: NeighbourReport,
        _out: &mut OverlayOut<'_>,
    ) {
    }
    /// Called at the engine's tick rate (and by the simulator's clock).
    fn on_tick(&mut self, _now_us: u64, _out: &mut OverlayOut<'_>) {}
    /// This peer's shared uplink, every tick before [`Overlay::on_tick`]
    /// (appended to the first release): how many children or neighbours it
    /// can feed.
    fn on_upload(&mut self, _now_us: u64, _upload: Upload, _out: &mut OverlayOut<'_>) {}
    /// How the engine is set up: once, right after [`Overlay::on_start`].
    fn on_setup(&mut self, _now_us: u64, _setup: &Setup, _out: &mut OverlayOut<'_>) {}
    /// Every neighbour both ways and play-out, every tick after
    /// [`Overlay::on_upload`] and before [`Overlay::on_tick`].
    fn on_view(&mut self, _now_us: u64, _view: &View, _out: &mut OverlayOut<'_>) {}
    /// The engine refused one of this overlay's actions (a message over the
    /// size limit, to a peer of unknown address): right after the event that
    /// returned it.
    fn on_refused(&mut self, _now_us: u64, _refusal: Refusal, _out: &mut OverlayOut<'_>) {}
    /// This overlay's own counters and gauges, asked about once a second and
    /// when the stream ends.
    fn metrics(&mut self, _metrics: &mut Metrics<'_>) {}
    /// Which stripes flow on which links, one entry per neighbour that has
    /// any, for an overlay of several trees: asked every tick, before the
    /// scheduler's `on_tick`, and handed to
    /// [`crate::Scheduler::on_stripe_links`] when it changed. An overlay
    /// that does not split the stream leaves it empty.
    fn stripe_links(&mut self, _out: &mut Vec<StripeLink>) {}
}

/// The boundary face of [`Overlay`].
#[sabi_trait]
pub trait OverlayAbi: Send {
    /// [`Overlay::on_start`].
    fn on_start(
        &mut self,
        now_us: u64,
        ctx: &OverlayContext,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError>;
    /// [`Overlay::on_candidates`].
    fn on_candidates(
        &mut self,
        now_us: u64,
        peers: RSlice<'_, PeerInfo>,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError>;
    /// [`Overlay::on_connected`].
    fn on_connected(
        &mut self,
        now_us: u64,
        peer: &PeerInfo,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError>;
    /// [`Overlay::on_disconnected`].
    fn on_disconnected(
        &mut self,
        now_us: u64,
        peer: PeerId,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError>;
    /// [`Overlay::on_message`].
    fn on_message(
        &mut self,
        now_us: u64,
        peer: PeerId,
        payload: RSlice<'_, u8>,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError>;
    /// [`Overlay::on_report`].
    fn on_report(
        &mut self,
        now_us: u64,
        peer: PeerId,
        report: NeighbourReport,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError>;
    /// [`Overlay::on_tick`]; the last method of the first release.
    #[sabi(last_prefix_field)]
    fn on_tick(&mut self, now_us: u64, out: &mut RVec<OverlayAction>) -> RResult<(), PluginError>;
    /// Appended to the first release. A library built before lacks it; the
    /// host then runs this
    /// default body, which does nothing.
    fn on_upload(
        &mut self,
        _now_us: u64,
        _upload: Upload,
        _out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended (with the three below) after `on_upload`; defaults do nothing.
    fn on_setup(
        &mut self,
        _now_us: u64,
        _setup: &Setup,
        _out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `on_upload`.
    fn on_view(
        &mut self,
        _now_us: u64,
        _view: &View,
        _out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `on_upload`.
    fn on_refused(
        &mut self,
        _now_us: u64,
        _refusal: Refusal,
        _out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `on_upload`; a library built before reports nothing.
    fn metrics(&mut self, _out: &mut RVec<Metric>) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
    /// Appended after `metrics`; a library built before splits nothing.
    fn stripe_links(&mut self, _out: &mut RVec<StripeLink>) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
}

impl<T: Overlay> OverlayAbi for Guarded<T> {
    fn on_start(
        &mut self,
        now_us: u64,
        ctx: &OverlayContext,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_start(now_us, ctx, &mut OverlayOut(out)))
    }
    fn on_candidates(
        &mut self,
        now_us: u64,
        peers: RSlice<'_, PeerInfo>,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_candidates(now_us, peers.as_slice(), &mut OverlayOut(out)))
    }
    fn on_connected(
        &mut self,
        now_us: u64,
        peer: &PeerInfo,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_connected(now_us, peer, &mut OverlayOut(out)))
    }
    fn on_disconnected(
        &mut self,
        now_us: u64,
        peer: PeerId,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_disconnected(now_us, peer, &mut OverlayOut(out)))
    }
    fn on_message(
        &mut self,
        now_us: u64,
        peer: PeerId,
        payload: RSlice<'_, u8>,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_message(now_us, peer, payload.as_slice(), &mut OverlayOut(out)))
    }
    fn on_report(
        &mut self,
        now_us: u64,
        peer: PeerId,
        report: NeighbourReport,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_report(now_us, peer, report, &mut OverlayOut(out)))
    }
    fn on_tick(&mut self, now_us: u64, out: &mut RVec<OverlayAction>) -> RResult<(), PluginError> {
        self.event(|o| o.on_tick(now_us, &mut OverlayOut(out)))
    }
    fn on_upload(
        &mut self,
        now_us: u64,
        upload: Upload,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_upload(now_us, upload, &mut OverlayOut(out)))
    }
    fn on_setup(
        &mut self,
        now_us: u64,
        setup: &Setup,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_setup(now_us, setup, &mut OverlayOut(out)))
    }
    fn on_view(
        &mut self,
        now_us: u64,
        view: &View,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_view(now_us, view, &mut OverlayOut(out)))
    }
    fn on_refused(
        &mut self,
        now_us: u64,
        refusal: Refusal,
        out: &mut RVec<OverlayAction>,
    ) -> RResult<(), PluginError> {
        self.event(|o| o.on_refused(now_us, refusal, &mut OverlayOut(out)))
    }
    fn metrics(&mut self, out: &mut RVec<Metric>) -> RResult<(), PluginError> {
        self.event(|o| o.metrics(&mut Metrics::new(out)))
    }
    fn stripe_links(&mut self, out: &mut RVec<StripeLink>) -> RResult<(), PluginError> {
        self.event(|o| {
            let mut links = Vec::new();
            o.stripe_links(&mut links);
            out.extend(links);
        })
    }
}
