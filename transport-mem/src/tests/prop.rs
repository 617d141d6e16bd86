//! Random operation sequences: no panic, no broken invariant, no delivery
//! back in time, and the same seed and operations give the same trace.

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use muster_core::{NodeId, Timestamp};
use proptest::prelude::*;

use crate::{Limits, LinkConfig, Network, Probability};

const NODES: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Send {
        from: usize,
        to: usize,
        size: usize,
    },
    /// Moves the clock forward, or (to test clamping) backward.
    Advance {
        ms: u64,
        backwards: bool,
    },
    Poll,
    Partition {
        mask: u8,
    },
    PartitionOneWay {
        from: usize,
        to: usize,
    },
    Repair {
        mask: u8,
    },
    Isolate(usize),
    Rejoin(usize),
    Heal,
    Hold {
        from: usize,
        to: usize,
    },
    Release {
        from: usize,
        to: usize,
    },
    Clog(usize),
    Unclog(usize),
    ReleaseAll,
    Crash(usize),
    SetLink {
        from: usize,
        to: usize,
        link: LinkConfig,
    },
    ResetLink {
        from: usize,
        to: usize,
    },
}

fn probability() -> impl Strategy<Value = Probability> {
    prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64].prop_map(|p| Probability::new(p).unwrap())
}

fn link() -> impl Strategy<Value = LinkConfig> {
    (0..30u64, 0..30u64, probability(), probability(), probability(), 0..80u64).prop_map(
        |(latency, jitter, loss, duplicate, reorder, reorder_delay)| LinkConfig {
            latency: Duration::from_millis(latency),
            jitter: Duration::from_millis(jitter),
            loss,
            duplicate,
            reorder,
            reorder_delay: Duration::from_millis(reorder_delay),
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    let node = || 0..NODES;
    prop_oneof![
        10 => (node(), node(), 0..3000usize).prop_map(|(from, to, size)| Op::Send { from, to, size }),
        4 => (0..40u64, proptest::bool::weighted(0.1)).prop_map(|(ms, backwards)| Op::Advance { ms, backwards }),
        4 => Just(Op::Poll),
        1 => any::<u8>().prop_map(|mask| Op::Partition { mask }),
        1 => (node(), node()).prop_map(|(from, to)| Op::PartitionOneWay { from, to }),
        1 => any::<u8>().prop_map(|mask| Op::Repair { mask }),
        1 => node().prop_map(Op::Isolate),
        1 => node().prop_map(Op::Rejoin),
        1 => Just(Op::Heal),
        1 => (node(), node()).prop_map(|(from, to)| Op::Hold { from, to }),
        1 => (node(), node()).prop_map(|(from, to)| Op::Release { from, to }),
        1 => node().prop_map(Op::Clog),
        1 => node().prop_map(Op::Unclog),
        1 => Just(Op::ReleaseAll),
        1 => node().prop_map(Op::Crash),
        1 => (node(), node(), link()).prop_map(|(from, to, link)| Op::SetLink { from, to, link }),
        1 => (node(), node()).prop_map(|(from, to)| Op::ResetLink { from, to }),
    ]
}

/// The groups `(in mask, not in mask)` of a partition.
fn split(nodes: &[NodeId], mask: u8) -> (Vec<NodeId>, Vec<NodeId>) {
    let (a, b): (Vec<_>, Vec<_>) = nodes.iter().enumerate().partition(|(i, _)| mask & (1 << i) != 0);
    (a.into_iter().map(|(_, n)| n.clone()).collect(), b.into_iter().map(|(_, n)| n.clone()).collect())
}

/// Applies `ops`, checking invariants and time after each; returns the trace
/// of deliveries as (from, to, msg, at).
fn run(seed: u64, default_link: LinkConfig, ops: &[Op]) -> Vec<(usize, usize, u32, Timestamp)> {
    let nodes: Vec<NodeId> = (0..NODES).map(|i| NodeId::parse(&format!("n{i}")).unwrap()).collect();
    let index = |n: &NodeId| nodes.iter().position(|m| m == n).unwrap();
    let limits = Limits {
        in_flight_messages_max: NonZeroUsize::new(24).unwrap(),
        in_flight_bytes_max: NonZeroU64::new(30_000).unwrap(),
    };
    let mut net = Network::with_limits(seed, default_link, limits);
    let (mut now, mut clock, mut last_at) = (Timestamp::ZERO, Timestamp::ZERO, Timestamp::ZERO);
    let mut trace = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let msg = u32::try_from(i).unwrap();
        match op {
            Op::Send { from, to, size } => {
                assert!(net.send(now, &nodes[*from], &nodes[*to], msg, *size) <= 2);
            }
            Op::Advance { ms, backwards: false } => now = now + Duration::from_millis(*ms),
            Op::Advance { ms, backwards: true } => now = now.saturating_sub(Duration::from_millis(*ms)),
            Op::Poll => {
                while let Some(d) = net.poll_delivery(now) {
                    assert!(d.at <= clock.max(now), "delivered from the future");
                    assert!(d.at >= last_at, "delivery went back in time");
                    assert!(d.at >= d.sent_at, "arrived before it was sent");
                    last_at = d.at;
                    trace.push((index(&d.from), index(&d.to), d.msg, d.at));
                }
            }
            Op::Partition { mask } => {
                let (a, b) = split(&nodes, *mask);
                net.partition(&a, &b);
            }
            Op::PartitionOneWay { from, to } => net.partition_one_way(&nodes[*from], &nodes[*to]),
            Op::Repair { mask } => {
                let (a, b) = split(&nodes, *mask);
                net.repair(&a, &b);
            }
            Op::Isolate(n) => net.isolate(&nodes[*n]),
            Op::Rejoin(n) => net.rejoin(&nodes[*n]),
            Op::Heal => net.heal(),
            Op::Hold { from, to } => net.hold(&nodes[*from], &nodes[*to]),
            Op::Release { from, to } => net.release(now, &nodes[*from], &nodes[*to]),
            Op::Clog(n) => net.clog(&nodes[*n]),
            Op::Unclog(n) => net.unclog(now, &nodes[*n]),
            Op::ReleaseAll => net.release_all(now),
            Op::Crash(n) => {
                net.drop_in_flight_to(&nodes[*n]);
            }
            Op::SetLink { from, to, link } => net.set_link(&nodes[*from], &nodes[*to], *link),
            Op::ResetLink { from, to } => net.reset_link(&nodes[*from], &nodes[*to]),
        }
        if matches!(op, Op::Send { .. } | Op::Poll | Op::Release { .. } | Op::Unclog(_) | Op::ReleaseAll) {
            clock = clock.max(now);
        }
        net.check_invariants();
        if let Some(t) = net.poll_timeout() {
            assert!(t >= last_at, "next delivery due before the latest one");
        }
    }
    trace
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_op_sequences_never_panic_and_deliveries_never_go_back_in_time(
        seed in any::<u64>(),
        default_link in link(),
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let first = run(seed, default_link, &ops);
        prop_assert_eq!(first, run(seed, default_link, &ops), "same seed and ops, same trace");
    }
}
