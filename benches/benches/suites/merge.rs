//! `merge`: K records from a peer through `Node::handle_message` with a
//! `PeerMessage::Delta`, and the pure `record::merge` of two records.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use muster_benches::{
    check, drain, instance_record, instance_records, metadata_map, peer_id, version, with_peer,
};
use muster_core::record::merge;
use muster_core::{InstanceData, InstanceState, Metadata, Node, PeerMessage, Record, Timestamp};

/// Services the instances are spread over.
const SERVICES: usize = 100;

/// Wall-clock millisecond of the first records (the node's wall clock is
/// its local time: `wall_clock_ms` is 0 in the benchmark config).
const FIRST_MS: u64 = 500;
/// Wall-clock millisecond of the newer records.
const NEWER_MS: u64 = 600;

fn delta(node: &mut Node, now: Timestamp, records: Vec<Record>) {
    node.handle_message(now, &peer_id(), PeerMessage::Delta { records }).expect("delta accepted");
    drain(node);
}

/// A ready node with one peer that holds `records` (merged from that peer).
fn holding(k: usize, now: Timestamp, records: &[Record]) -> Node {
    let mut node = with_peer(k);
    delta(&mut node, now, records.to_vec());
    node
}

/// The first records of instances `0..k` and newer ones of the same keys,
/// checked once: every record is applied, then every newer one, then
/// nothing of a repeat.
fn records(k: usize, now: Timestamp) -> (Vec<Record>, Vec<Record>) {
    let first = instance_records(SERVICES, k, &peer_id(), FIRST_MS);
    let newer = instance_records(SERVICES, k, &peer_id(), NEWER_MS);
    let mut node = holding(k, now, &first);
    assert_eq!(node.stats().registry.merged, k as u64);
    delta(&mut node, now, newer.clone());
    delta(&mut node, now, newer.clone());
    let s = node.stats().registry;
    assert_eq!((s.merged, s.stale, s.rejected, s.instances), (2 * k as u64, k as u64, 0, k));
    check(&node);
    (first, newer)
}

pub(crate) fn bench_merge(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_000);
    let mut group = c.benchmark_group("merge");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for k in [100usize, 1_000, 10_000] {
        group.throughput(Throughput::Elements(k as u64));
        let mut fixture = None;
        // New keys into an empty node.
        group.bench_function(BenchmarkId::new("insert", k), |b| {
            let (first, _) = fixture.get_or_insert_with(|| records(k, now));
            b.iter_batched(
                || (with_peer(k), first.clone()),
                |(mut node, records)| {
                    delta(&mut node, now, records);
                    node
                },
                BatchSize::PerIteration,
            );
        });
        // Newer versions of every key held.
        group.bench_function(BenchmarkId::new("update", k), |b| {
            let (first, newer) = fixture.get_or_insert_with(|| records(k, now));
            b.iter_batched(
                || (holding(k, now, first), newer.clone()),
                |(mut node, records)| {
                    delta(&mut node, now, records);
                    node
                },
                BatchSize::PerIteration,
            );
        });
        // The records held already (a repeated delta, an anti-entropy
        // exchange of records both sides have): all stale.
        let mut node = None;
        group.bench_function(BenchmarkId::new("stale", k), |b| {
            let (first, _) = fixture.get_or_insert_with(|| records(k, now));
            let node = node.get_or_insert_with(|| holding(k, now, first));
            b.iter_batched(|| first.clone(), |records| delta(node, now, records), BatchSize::LargeInput);
        });
    }
    group.finish();

    // The pure last-writer-wins merge of two records of one key.
    let mut group = c.benchmark_group("record_merge");
    group.throughput(Throughput::Elements(1));
    let peer = peer_id();
    let older = instance_record(SERVICES, 7, &peer, FIRST_MS);
    let newer = instance_record(SERVICES, 7, &peer, NEWER_MS);
    // Same version, different state: the tie-break hashes both states.
    let Record::Instance { key, version: v, .. } = older.clone() else { unreachable!("an instance record") };
    let tied = Record::Instance {
        key,
        version: v.clone(),
        state: InstanceState::Live(InstanceData {
            weight: 2.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata: Metadata::from_map(metadata_map()).expect("fixture metadata is valid"),
        }),
    };
    assert_eq!(v, version(&peer, FIRST_MS, 7));
    assert_eq!(merge(older.clone(), newer.clone()), newer);
    assert_eq!(merge(older.clone(), tied.clone()), merge(tied.clone(), older.clone()));
    for (name, a, b) in [("newer_version", &older, &newer), ("version_tie", &older, &tied)] {
        group.bench_function(name, |bench| {
            bench.iter_batched(
                || (a.clone(), b.clone()),
                |(a, b)| black_box(merge(a, b)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}
