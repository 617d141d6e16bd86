//! `heartbeat`: heartbeats of registered instances, one per call and in
//! batches.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use muster_benches::{drain, instance_keys, populate, standalone};
use muster_core::{BeatReply, InstanceKey, Node, Timestamp};

/// Services the instances are spread over.
const SERVICES: usize = 100;

/// Beats per iteration: a window of the keys, moving on every iteration, so
/// that successive iterations walk the whole registry (cache misses
/// included) while one iteration stays short.
const WINDOW: usize = 1_000;

/// A node holding instances `0..n`, registered at time zero, and the keys to
/// beat them with, parsed afresh as a transport would (so key comparisons
/// compare strings, not shared pointers).
fn setup(n: usize, now: Timestamp) -> (Node, Vec<InstanceKey>) {
    let mut node = standalone(n);
    populate(&mut node, SERVICES, n, Timestamp::ZERO);
    let keys = instance_keys(SERVICES, n);
    // Every key is known: the benchmark measures accepted beats.
    let replies = node.heartbeat_batch(now, &keys).expect("batch accepted");
    assert!(replies.iter().all(|r| matches!(r, BeatReply::Ok { .. })), "every beat is accepted");
    drain(&mut node);
    (node, keys)
}

/// The next window of `keys` after `cursor`, which it advances.
fn window<'k>(keys: &'k [InstanceKey], cursor: &mut usize) -> &'k [InstanceKey] {
    let start = *cursor;
    *cursor = (start + WINDOW) % keys.len();
    &keys[start..(start + WINDOW).min(keys.len())]
}

pub(crate) fn bench_heartbeat(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_000);
    let mut group = c.benchmark_group("heartbeat");
    group.throughput(Throughput::Elements(WINDOW as u64));
    for n in [10_000usize, 100_000] {
        // Built on first use, shared by the three benchmarks of this size.
        let mut fixture = None;
        let mut cursor = 0;
        group.bench_function(BenchmarkId::new("single", n), |b| {
            let (node, keys) = fixture.get_or_insert_with(|| setup(n, now));
            b.iter(|| {
                for key in window(keys, &mut cursor) {
                    black_box(node.heartbeat(now, key).expect("beat accepted"));
                    drain(node);
                }
            });
        });
        for batch in [100usize, 1_000] {
            group.bench_function(BenchmarkId::new(format!("batch_{batch}"), n), |b| {
                let (node, keys) = fixture.get_or_insert_with(|| setup(n, now));
                b.iter(|| {
                    for chunk in window(keys, &mut cursor).chunks(batch) {
                        black_box(node.heartbeat_batch(now, chunk).expect("batch accepted"));
                        drain(node);
                    }
                });
            });
        }
        if let Some((node, _)) = &fixture {
            let s = node.stats().registry;
            assert_eq!((s.unknown_heartbeats, s.healthy_instances), (0, n), "beats all accepted");
        }
    }
    group.finish();
}
