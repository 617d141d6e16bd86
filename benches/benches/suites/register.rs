//! `register`: registering fresh instances into a node, and re-registering
//! known ones (a client repeating its registration, unchanged).

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use muster_benches::{drain, populate, register_request, standalone};
use muster_core::{RegisterRequest, Timestamp};

/// Services the instances are spread over.
const SERVICES: usize = 100;

fn requests(n: usize) -> Vec<RegisterRequest> {
    (0..n).map(|i| register_request(SERVICES, i)).collect()
}

pub(crate) fn bench_register(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_000);
    let mut group = c.benchmark_group("register");
    // One iteration is up to 100,000 registrations: few, equal samples.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for n in [1_000usize, 10_000, 100_000] {
        group.throughput(Throughput::Elements(n as u64));
        // Fixtures are built on first use, so that a filtered run builds
        // only what it measures.
        let mut fixture = None;
        // A fresh, empty node per iteration (setup, not measured); the
        // routine registers `n` new instances, draining after each call as a
        // driver does. The node is returned so that dropping it is not
        // measured either.
        group.bench_function(BenchmarkId::new("fresh", n), |b| {
            let requests = fixture.get_or_insert_with(|| requests(n));
            b.iter_batched(
                || (standalone(n), requests.clone()),
                |(mut node, requests)| {
                    for req in requests {
                        black_box(node.register(now, req).expect("registration accepted"));
                        drain(&mut node);
                    }
                    node
                },
                BatchSize::PerIteration,
            );
        });
    }
    // The same registrations again on a node that holds them: no new
    // version, only a witnessed beat.
    let n = 10_000;
    group.throughput(Throughput::Elements(n as u64));
    let mut fixture = None;
    group.bench_function(BenchmarkId::new("unchanged", n), |b| {
        let (node, requests) = fixture.get_or_insert_with(|| {
            let mut node = standalone(n);
            populate(&mut node, SERVICES, n, now);
            (node, requests(n))
        });
        b.iter_batched(
            || requests.clone(),
            |requests| {
                for req in requests {
                    let r = node.register(now, req).expect("registration accepted");
                    debug_assert!(!r.created);
                    black_box(r);
                    drain(node);
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}
