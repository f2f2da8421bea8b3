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
    //! Written with plugin-api's test kit: `SchedDriver` feeds one event at a
    //! time and hands back just that event's actions; `Swarm` runs a few
    //! copies of the scheduler on simulated time.
    use super::*;
    use p2ner_plugin_api::testing::{SchedDriver, Swarm, SwarmConfig};

    fn driver(fanout: &str) -> SchedDriver<RoundRobin> {
        let mut d =
            SchedDriver::new(RoundRobin::new(&Params::new().with("fanout", fanout)).unwrap());
        d.start();
        d
    }

    #[test]
    fn rotates_over_downstream_neighbours_and_skips_the_sender() {
        let mut d = driver("2");
        for id in 1..=3 {
            assert!(d.neighbour_up(PeerId(id), Link::BOTH).is_empty());
        }
        // Upstream-only neighbours never get chunks.
        let parent = Link {
            upstream: true,
            downstream: false,
        };
        d.neighbour_up(PeerId(9), parent);
        assert_eq!(
            d.chunk(0, None).chunks(),
            vec![(PeerId(1), 0), (PeerId(2), 0)]
        );
        assert_eq!(
            d.chunk(1, None).chunks(),
            vec![(PeerId(3), 1), (PeerId(1), 1)]
        );
        // Never back to where it came from.
        assert_eq!(
            d.chunk(2, Some(PeerId(2))).chunks(),
            vec![(PeerId(3), 2), (PeerId(1), 2)]
        );
    }

    #[test]
    fn a_departed_neighbour_gets_nothing_more() {
        let mut d = driver("5");
        d.neighbour_up(PeerId(1), Link::BOTH);
        d.neighbour_up(PeerId(2), Link::BOTH);
        d.neighbour_down(PeerId(1));
        assert_eq!(d.chunk(7, None).chunks(), vec![(PeerId(2), 7)]);
        assert!(RoundRobin::new(&Params::new().with("fanout", "0")).is_err());
    }

    #[test]
    fn a_small_swarm_plays_the_stream() {
        // Publisher and 4 subscribers, each able to upload 2.5 copies of the
        // 800 kbit/s stream: fanout 2 reaches everyone.
        let mut swarm = Swarm::new(SwarmConfig::default(), |_| {
            RoundRobin::new(&Params::new().with("fanout", "2")).unwrap()
        });
        swarm.run_for(20_000_000);
        for peer in swarm.results() {
            assert!(peer.played > 150, "{peer:?}");
            assert!(peer.continuity() > 0.95, "{peer:?}");
        }
    }
}
