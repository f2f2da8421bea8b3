//! Scheduler `pull`: buffer maps and requests, within what the uplink takes.
//!
//! Every peer tells its neighbours which chunks it holds (a `HAVE` for each
//! new chunk, batched per tick, and a full map now and then in case one was
//! lost), and with each of them what it can upload and how long its upload
//! queue is. A peer requests what it misses from the neighbours that hold
//! it: chunks close to their play-out deadline first, then the rarest ones in
//! its window, each from the holder that would deliver it soonest (its
//! advertised queue plus what was already asked of it, at its advertised
//! rate).
//!
//! Why this shape: near the fluid bound every peer's uplink must be busy and
//! none may be wasted on duplicates. So a holder serves requests in arrival
//! order within the shared uplink budget the engine reports each tick, and
//! refuses at once (`REFUSE`) a request it could not serve within
//! `max_wait_ms`: the requester asks another holder straight away instead of
//! timing out and asking twice. Requests it accepted and could not serve in
//! time are dropped before the requester gives up on them, so a late answer
//! never duplicates a re-request.
//!
//! The publisher is treated apart: if it announced every chunk at once,
//! every subscriber would ask it first and its upload would become the
//! swarm's bottleneck. So it pushes each new chunk once (`source_push`) to a
//! neighbour chosen in a round robin weighted by what the neighbours can
//! upload — the first copy goes to peers that can forward it — and
//! announces it to everyone only after `source_announce_ms`, by which time
//! the copy has spread and is requested from peers. What is left of its
//! uplink serves requests.
//!
//! Sans-IO and deterministic for a seed.

mod pull;
pub mod wire;

pub use pull::{Pull, PARAMS};

use p2ner_plugin_api::prelude::*;

fn register(lib: &mut Registrar) {
    let spec = ComponentSpec::new(
        "pull",
        env!("CARGO_PKG_VERSION"),
        "buffer maps and requests: urgent chunks first, then rarest first, from the holder that delivers soonest; refused at once when the uplink cannot serve in time",
    )
    .params(PARAMS);
    lib.scheduler(spec, Pull::new);
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-scheduler-pull",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);
