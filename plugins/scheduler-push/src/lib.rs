//! Scheduler `push`: useful chunks pushed to the most deprived neighbour.
//!
//! Why push: pull-based schedulers pay a request round trip per chunk and per
//! hop, and their rate is only as good as their request strategy. The push
//! family studied by Massoulié, Twigg, Gkantsidis and Rodriguez ("Randomized
//! decentralized broadcasting algorithms", INFOCOM 2007) is *provably
//! rate-optimal*: a peer that, at every sending opportunity, picks the
//! neighbour that lacks the most useful chunks ("most deprived neighbour") and
//! sends it a random chunk it lacks ("random useful chunk") reaches the
//! broadcast capacity of the graph. Bonald, Massoulié, Mathieu, Perino and
//! Twigg ("Epidemic live streaming: optimal performance trade-offs",
//! SIGMETRICS 2008) showed that sending the *latest* useful chunk instead
//! keeps the delay low, which is what a live stream wants; that is the
//! default here (`policy = latest-useful`; `random-useful` is the original).
//!
//! How it works:
//! - A peer knows what a neighbour holds from the neighbour's buffer maps
//!   (`MAP`, every `map_ms`) and announcements (`HAVE`, batched per tick),
//!   which also carry the neighbour's play-out position, plus every chunk it
//!   pushed there itself: a chunk is marked held as soon as it is pushed, so
//!   it is never pushed twice while it is in flight. A map replaces what was
//!   known, except pushes younger than `push_grace_ms`, so a push the data
//!   channel dropped is pushed again while it is still useful.
//! - A chunk is *useful* to a neighbour when the neighbour lacks it, it is in
//!   the window, and it is ahead of the neighbour's play-out (its reported
//!   position advanced by the time since the report).
//! - **Substreams, one parent each.** Chunk `seq` belongs to substream
//!   `seq % stripes`. A peer picks one upstream neighbour per substream as
//!   its parent and tells it (`SUBSCRIBE`, a bit mask); a parent pushes a
//!   chunk only to the neighbours that subscribed its substream from it.
//!   Every chunk therefore arrives once, from one parent: no duplicate
//!   storm, however many links a mesh has. Pushing everything useful on
//!   every link (the first version) spent scarce upload on copies that
//!   crossed in flight: 145 % overhead and 0.1–0.4 continuity under caps.
//! - **Which parent.** Over `tree` the overlay has already chosen: a peer's
//!   upstream links are its parents, and a non-publisher parent forwards
//!   only its own stripe (the tree's hash of its id, [`stripe_of`]), so a
//!   child takes, for substream `s`, the upstream peer whose stripe is `s`,
//!   else the publisher. Over `mesh` the same rule spreads substreams over
//!   peers as SplitStream does, and among equals a child prefers the
//!   neighbour closest to the publisher (every peer advertises its depth
//!   per substream in `INFO`, with its upload) and then the strongest
//!   uplink; never one of its own children in that substream. No loops:
//!   a new parent must advertise fewer hops than the fewest this peer
//!   advertised since its last reset (Babel's feasibility condition: a
//!   descendant is always farther, whatever stale depth it shows); a
//!   substream without a parent for 300 ms resets it. Without this, parent
//!   chains over a mesh, and over a tree's side links, closed into loops
//!   that counted up to 64 hops and starved whole substreams. A parent
//!   admits subscriptions only as far as its capped uplink carries (97 %,
//!   the publisher 90 %, which alone serves the last repairs; counted with
//!   the engine's framing, in whole slots rounded when that over-commits by
//!   at most 5 %; the tree's child slots are fewer still)
//!   and refuses (`REFUSE`) the rest: the child asks another neighbour at
//!   once instead of starving behind an overloaded one. Own-stripe
//!   subscribers come first (the publisher's copies go to peers that
//!   forward them), then the ones already served, then stronger uplinks.
//! - **Within the uplink, freshest first, nothing late.** Pushes are
//!   limited by the engine's shared budget for the tick (`on_upload`), the
//!   per-link budget (`on_capacity`) and optionally `upload_kbps`. The
//!   budget goes to the freshest subscribed chunks first (ties to the most
//!   deprived subscriber), and a chunk that would reach its subscriber
//!   after its play-out deadline (the subscriber's reported position, the
//!   uplink's queue, the chunk's own transmission and half a round trip)
//!   is not sent at all.
//! - Pure push loses a chunk whose push was dropped, so there is a small,
//!   bounded pull-style repair: a chunk still missing `repair_ms` before its
//!   play-out deadline is requested (`REQUEST`) from an upstream neighbour
//!   that holds it, at most `max_repairs` at a time, re-asked elsewhere after
//!   `repair_timeout_ms`. Requests are served before pushes, except at a
//!   capped publisher, where they take at most a tenth of its uplink ahead
//!   of them: unbounded, they starved the publisher's subscribed children,
//!   more chunks went missing, more repairs were asked (a collapse near
//!   the bound).
//!
//! Over `tree`, set `stripes` to the tree's `stripes` (both default to the
//! same value): with another count a child still gets every chunk, from
//! whichever parents it has, but the publisher may be asked for more than
//! its tree slots.
//!
//! Sans-IO and deterministic for a seed: the same `.so` runs in a real swarm
//! and in the simulator.

mod push;
pub mod wire;

pub use push::{stripe_of, Policy, Push, Target, PARAMS};

use p2ner_plugin_api::prelude::*;

fn register(lib: &mut Registrar) {
    lib.scheduler(
        ComponentSpec::new(
            "push",
            env!("CARGO_PKG_VERSION"),
            "substreams pushed along one parent each (the tree's stripes, or chosen by depth and upload over a mesh), freshest first within the uplink; bounded pull repair near deadlines",
        )
        .params(PARAMS),
        Push::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-scheduler-push",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);
