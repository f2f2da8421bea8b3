//! Scheduler `round-robin`: each new chunk goes to the next `fanout`
//! downstream neighbours in turn.
//!
//! It is the smallest scheduler that really distributes a stream, which makes
//! it a good starting point: a push scheduler with no buffer maps and no
//! requests. A peer forwards every chunk it receives (or, at the publisher,
//! produces) to `fanout` neighbours, rotating through them so that upload is
//! shared evenly, and never back to the neighbour it came from.

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::SchedContext;

pub struct RoundRobin {
    fanout: usize,
    /// Neighbours this peer may send to, in the order they came up.
    downstream: Vec<PeerId>,
    /// Where the next chunk's first copy goes.
    next: usize,
}

/// The one parameter, written once: declared in `register`, read in `new`.
const FANOUT: ParamDef = ParamDef::new("fanout", "2", "how many neighbours get each chunk");

impl RoundRobin {
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        let fanout: usize = FANOUT.parse(params)?;
        if fanout == 0 {
            return Err(PluginError::new("fanout must be at least 1"));
        }
        Ok(RoundRobin {
            fanout,
            downstream: Vec::new(),
            next: 0,
        })
    }
}

impl Scheduler for RoundRobin {
    fn on_start(&mut self, _now_us: u64, ctx: &SchedContext, _out: &mut SchedOut<'_>) {
        p2ner_plugin_api::tracing::debug!(local = %ctx.local, "round-robin scheduler started");
    }

    fn on_neighbour_up(&mut self, _now_us: u64, peer: PeerId, link: Link, _out: &mut SchedOut<'_>) {
        if link.downstream && !self.downstream.contains(&peer) {
            self.downstream.push(peer);
        }
    }

    fn on_neighbour_down(&mut self, _now_us: u64, peer: PeerId, _out: &mut SchedOut<'_>) {
        self.downstream.retain(|p| *p != peer);
    }

    fn on_chunk(&mut self, _now_us: u64, seq: u64, from: Option<PeerId>, out: &mut SchedOut<'_>) {
        let candidates = self.downstream.len();
        let mut sent = 0;
        for _ in 0..candidates {
            if sent == self.fanout {
                break;
            }
            let peer = self.downstream[self.next % candidates];
            self.next = (self.next + 1) % candidates;
            if Some(peer) != from {
                out.send_chunk(peer, seq);
                sent += 1;
            }
        }
    }
}

fn register(lib: &mut Registrar) {
    lib.scheduler(
        ComponentSpec::new(
            "round-robin",
            env!("CARGO_PKG_VERSION"),
            "pushes each new chunk to the next neighbours in turn",
        )
        .params(&[FANOUT]),
        RoundRobin::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-scheduler-roundrobin",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;
    use p2ner_plugin_api::SchedAction;

    fn sent(actions: &RVec<SchedAction>) -> Vec<(u64, u64)> {
        actions
            .iter()
            .map(|a| match a {
                SchedAction::SendChunk { peer, seq } => (peer.0, *seq),
                other => panic!("unexpected action {other:?}"),
            })
            .collect()
    }

    #[test]
    fn rotates_over_downstream_neighbours_and_skips_the_sender() {
        let mut s = RoundRobin::new(&Params::new().with("fanout", "2")).unwrap();
        let mut actions = RVec::new();
        let mut out = SchedOut::new(&mut actions);
        for id in 1..=3 {
            s.on_neighbour_up(0, PeerId(id), Link::BOTH, &mut out);
        }
        // Upstream-only neighbours never get chunks.
        s.on_neighbour_up(
            0,
            PeerId(9),
            Link {
                upstream: true,
                downstream: false,
            },
            &mut out,
        );
        s.on_chunk(0, 0, None, &mut out);
        s.on_chunk(0, 1, None, &mut out);
        s.on_chunk(0, 2, Some(PeerId(2)), &mut out);
        assert_eq!(
            sent(&actions),
            vec![(1, 0), (2, 0), (3, 1), (1, 1), (3, 2), (1, 2)]
        );
    }

    #[test]
    fn a_departed_neighbour_gets_nothing_more() {
        let mut s = RoundRobin::new(&Params::new().with("fanout", "5")).unwrap();
        let mut actions = RVec::new();
        let mut out = SchedOut::new(&mut actions);
        s.on_neighbour_up(0, PeerId(1), Link::BOTH, &mut out);
        s.on_neighbour_up(0, PeerId(2), Link::BOTH, &mut out);
        s.on_neighbour_down(0, PeerId(1), &mut out);
        s.on_chunk(0, 7, None, &mut out);
        assert_eq!(sent(&actions), vec![(2, 7)]);
        assert!(RoundRobin::new(&Params::new().with("fanout", "0")).is_err());
    }
}
