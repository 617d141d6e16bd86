//! `handle_timeout`: one call with N instance leases due, per instance.
//!
//! N instances are registered at time zero and never beat again. The driver
//! calls `handle_timeout` every second, as `poll_timeout` asks for the
//! housekeeping tick; those calls are setup. The measured call is the one at
//! which all N are due: at `unhealthy_after` (15 s by default) every instance
//! is marked unhealthy, at `remove_after` (30 s) every instance is removed.
//!
//! The ticks matter: a first call only at 15 s would see a 15 s gap since the
//! last tick, take it for a pause of the node (`pause_threshold`), grant
//! every instance a fresh grace period and mark nothing.

use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use muster_benches::{check, drain, populate, standalone};
use muster_core::{Node, Timestamp};

/// Services the instances are spread over.
const SERVICES: usize = 100;

/// Calls `handle_timeout` once a second in `(from, to)`, draining after each.
fn tick_through(node: &mut Node, from: Duration, to: Duration) {
    let mut t = from + Duration::from_secs(1);
    while t < to {
        node.handle_timeout(Timestamp::ZERO + t);
        drain(node);
        t += Duration::from_secs(1);
    }
}

/// A node with `n` instances registered at time zero and ticked up to just
/// before `at`; `expired_phase` also marks them unhealthy at
/// `unhealthy_after` first, so that at `at` (`remove_after`) they are removed.
fn due_node(n: usize, expired_phase: bool) -> Node {
    let mut node = standalone(n);
    populate(&mut node, SERVICES, n, Timestamp::ZERO);
    let timings = node.config().timings.clone();
    tick_through(&mut node, Duration::ZERO, timings.unhealthy_after);
    if expired_phase {
        node.handle_timeout(Timestamp::ZERO + timings.unhealthy_after);
        drain(&mut node);
        tick_through(&mut node, timings.unhealthy_after, timings.remove_after);
    }
    assert_eq!(node.stats().registry.instances, n, "nothing is due before the measured call");
    node
}

/// Once, outside the measurement: the call at `at` does what it should.
fn verify(n: usize, expired_phase: bool, at: Timestamp) {
    let mut node = due_node(n, expired_phase);
    node.handle_timeout(at);
    drain(&mut node);
    let s = node.stats().registry;
    if expired_phase {
        assert_eq!((s.expired, s.instances, s.tombstones), (n as u64, 0, n), "every instance expired");
    } else {
        assert_eq!((s.marked_unhealthy, s.healthy_instances, s.instances), (n as u64, 0, n), "all unhealthy");
    }
    check(&node);
}

pub(crate) fn bench_handle_timeout(c: &mut Criterion) {
    let timings = standalone(1).config().timings.clone();
    let mut group = c.benchmark_group("handle_timeout");
    // One iteration handles up to 100,000 timers and needs a fresh node:
    // few, equal samples.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for n in [1_000usize, 10_000, 100_000] {
        group.throughput(Throughput::Elements(n as u64));
        for (name, expired_phase, due) in
            [("mark_unhealthy", false, timings.unhealthy_after), ("expire", true, timings.remove_after)]
        {
            let at = Timestamp::ZERO + due;
            let mut verified = false;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                if !verified {
                    verify(n, expired_phase, at);
                    verified = true;
                }
                b.iter_batched(
                    || due_node(n, expired_phase),
                    |mut node| {
                        node.handle_timeout(at);
                        drain(&mut node);
                        node
                    },
                    BatchSize::PerIteration,
                );
            });
        }
    }
    group.finish();
}
