//! `query`: repeated queries of an unchanged service, which must share the
//! cached `Arc<ServiceView>` rather than rebuild it; and, for contrast, a
//! query right after a change, which rebuilds it.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput};
use muster_benches::{drain, instance_key, populate, service_key, standalone};
use muster_core::{Node, Selector, ServiceKey, Timestamp, UpdateRequest};

/// A node with one service of `n` instances, and that service's key.
fn setup(n: usize, now: Timestamp) -> (Node, ServiceKey) {
    let mut node = standalone(n);
    populate(&mut node, 1, n, now);
    let key = service_key(0);
    let all = Selector::default();
    let healthy = Selector { healthy_only: true, ..Selector::default() };
    let first = node.query(now, &key, &all).expect("query answered");
    let again = node.query(now, &key, &healthy).expect("query answered");
    assert_eq!((first.len(), again.len()), (n, n), "every instance is served");
    assert!(Arc::ptr_eq(first.view(), again.view()), "a repeated query reuses the cached view");
    (node, key)
}

pub(crate) fn bench_query(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_000);
    let all = Selector::default();
    let healthy = Selector { healthy_only: true, ..Selector::default() };
    let mut group = c.benchmark_group("query");
    group.throughput(Throughput::Elements(1));
    for n in [10usize, 100, 1_000] {
        let mut fixture = None;
        group.bench_function(BenchmarkId::new("all", n), |b| {
            let (node, key) = fixture.get_or_insert_with(|| setup(n, now));
            b.iter(|| black_box(node.query(now, key, &all).expect("query answered")));
        });
        group.bench_function(BenchmarkId::new("healthy_only", n), |b| {
            let (node, key) = fixture.get_or_insert_with(|| setup(n, now));
            b.iter(|| black_box(node.query(now, key, &healthy).expect("query answered")));
        });
        // An instance changes (its weight alternates) before every query:
        // the view is rebuilt. Update plus rebuild plus selection.
        let changed = instance_key(1, 0);
        let mut weight = 1.0;
        group.bench_function(BenchmarkId::new("after_change", n), |b| {
            let (node, key) = fixture.get_or_insert_with(|| setup(n, now));
            b.iter(|| {
                weight = if weight == 1.0 { 2.0 } else { 1.0 };
                let update = UpdateRequest { weight: Some(weight), ..UpdateRequest::default() };
                node.update_instance(now, &changed, update).expect("update accepted");
                drain(node);
                black_box(node.query(now, key, &all).expect("query answered"))
            });
        });
    }
    group.finish();
}
