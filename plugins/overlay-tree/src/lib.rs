//! Overlay `tree`: push trees rooted at the publisher.
//!
//! Why a tree: in a tree every chunk reaches each peer exactly once, along a
//! path of known length, so a push scheduler delivers with no duplicates and
//! the lowest delay the fan-out allows. Its weaknesses are known too: leaves
//! upload nothing, and a departure cuts a whole subtree off until it rejoins.
//! Several trees (`stripes`, as in SplitStream) answer the first: each peer
//! is interior in one tree and a leaf in the others, so every peer uploads.
//! Fast detection and rejoin answers the second.
//!
//! Join: a peer asks a candidate — the publisher first (known from
//! [`OverlayContext::source`]), then peers it was redirected to, then peers
//! from the server's sample — to adopt it (`JOIN`, sent over a link opened
//! with no media direction). A node with a free child slot accepts
//! (`ACCEPT` with its path to the root) and makes the link downstream on its
//! side, upstream on the child's. A full node redirects (`REDIRECT`) to up
//! to four of its children, those with the most free slots and the smallest
//! subtrees first (it counts each redirect against the child it names), so
//! the tree fills breadth-first. A node refuses (`REJECT`) when it is not in
//! the tree itself, is a leaf of that stripe, or the joiner is one of its
//! ancestors.
//!
//! No loops: every node knows its path to the root (parents send it down in
//! their heartbeats). A node never adopts a node on its own path, a node cut
//! off from the root refuses joiners (its whole subtree is told it is
//! detached), and a node that finds itself on its parent's path leaves.
//!
//! Failures: parents send `PATH` to children and children send `HB` (free
//! slots, subtree size) to parents every `heartbeat_ms`. A parent silent for
//! `timeout_ms` (or a link the engine reports down) makes the node an orphan:
//! it tells its subtree it is detached and rejoins from the publisher. Its
//! subtree stays attached to it, so only one node per failure rejoins.
//!
//! Stripes: with `stripes = k > 1`, chunk `s` belongs to stripe `s % k`,
//! each peer belongs to stripe `hash(id) % k`, joins all `k` trees and is
//! interior only in its own (a full node gives the slot of a leaf child to
//! an interior joiner and redirects the leaf). Under an upload cap a peer's
//! child slots are shared by all stripes: what its own stripe leaves free
//! it offers in the others, where it is attached (it adopts children
//! there, and gives such a slot back to a forwarder of its own stripe),
//! because the hash deals out stripes without regard to upload and some
//! stripes' forwarders would otherwise have too little between them. The scheduler API has no notion of stripes, so what the scheduler
//! sees is a multi-parent graph: up to `k` upstream links (one per stripe's
//! parent) and downstream links to children; a push scheduler sends what
//! each child lacks, which over time follows the stripe trees. `stripes = 1`
//! (the default) is a single tree.
//!
//! Sans-IO and deterministic for a seed.

mod tree;
mod wire;

pub use tree::{Tree, PARAMS};
pub use wire::{Message, MAX_PATH};

use p2ner_plugin_api::prelude::*;

fn register(lib: &mut Registrar) {
    lib.overlay(
        ComponentSpec::new(
            "tree",
            env!("CARGO_PKG_VERSION"),
            "push tree(s) rooted at the publisher: breadth-first join by redirection, loop-free, orphans rejoin; under a cap, children as the uplink carries",
        )
        .params(PARAMS),
        Tree::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-overlay-tree",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);
