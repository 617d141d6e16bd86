//! `digest`: the anti-entropy digest of 10,000-record stores: its root, the
//! buckets that differ from a peer's, and a node's whole answer to a peer's
//! bucket hashes (which collects the records of the differing buckets).

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use muster_benches::{drain, instance_key, instance_records, peer_id, populate, standalone, with_peer};
use muster_core::{BUCKETS, Node, PeerMessage, Timestamp, Transmit, UpdateRequest};

/// Services the instances are spread over.
const SERVICES: usize = 100;
/// Records in each store.
const RECORDS: usize = 10_000;
/// Instances changed on one of two otherwise equal stores.
const CHANGED: usize = 10;

/// Two single nodes fed the same registrations hold the same records (same
/// node id, same hybrid clock), hence the same digest; then a few instances
/// change on the second.
fn two_stores(now: Timestamp) -> (Node, Node) {
    let mut a = standalone(RECORDS);
    let mut b = standalone(RECORDS);
    populate(&mut a, SERVICES, RECORDS, now);
    populate(&mut b, SERVICES, RECORDS, now);
    assert_eq!(a.digest(), b.digest(), "equal stores have equal digests");
    for i in 0..CHANGED {
        let update = UpdateRequest { weight: Some(5.0), ..UpdateRequest::default() };
        b.update_instance(now, &instance_key(SERVICES, i * 997), update).expect("update accepted");
        drain(&mut b);
    }
    assert_ne!(a.digest().root(), b.digest().root());
    let differing = a.digest().differing(b.digest().buckets());
    assert!(!differing.is_empty() && differing.len() <= CHANGED);
    (a, b)
}

/// What a node sends back for `ask`.
fn answer(node: &mut Node, now: Timestamp, ask: PeerMessage) -> Vec<Transmit> {
    node.handle_message(now, &peer_id(), ask).expect("buckets accepted");
    let sent = std::iter::from_fn(|| node.poll_transmit()).collect();
    drain(node);
    sent
}

/// A node with one peer holding `RECORDS` records, and a `DigestBuckets`
/// from that peer whose hashes differ in `CHANGED` buckets.
fn asked(now: Timestamp) -> (Node, PeerMessage) {
    let mut node = with_peer(RECORDS);
    let records = instance_records(SERVICES, RECORDS, &peer_id(), 500);
    node.handle_message(now, &peer_id(), PeerMessage::Delta { records }).expect("delta accepted");
    drain(&mut node);
    let mut theirs = node.digest().buckets().to_vec();
    for i in 0..CHANGED {
        theirs[(i * 97) % BUCKETS] ^= 0x5eed;
    }
    let ask = PeerMessage::DigestBuckets { buckets: theirs, hlc: 0 };
    match answer(&mut node, now, ask.clone()).as_slice() {
        [Transmit { msg: PeerMessage::BucketRecords { buckets, records, reply: true }, .. }] => {
            assert_eq!(buckets.len(), CHANGED);
            // About CHANGED / BUCKETS of the store.
            assert!(!records.is_empty() && records.len() < RECORDS / 10);
        }
        other => panic!("expected one BucketRecords, got {other:?}"),
    }
    (node, ask)
}

pub(crate) fn bench_digest(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_000);
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Elements(1));

    let mut stores = None;
    group.bench_function(BenchmarkId::new("root", RECORDS), |bench| {
        let (a, _) = stores.get_or_insert_with(|| two_stores(now));
        bench.iter(|| black_box(a.digest()).root());
    });
    group.bench_function(BenchmarkId::new("differing", RECORDS), |bench| {
        let (a, b) = stores.get_or_insert_with(|| two_stores(now));
        bench.iter(|| black_box(a.digest()).differing(black_box(b.digest().buckets())));
    });

    // The answer to `DigestBuckets` from a peer whose store differs in
    // `CHANGED` buckets: find them and send back every record held in them
    // (`BucketRecords`), about 400 of the 10,000.
    let mut fixture = None;
    group.bench_function(BenchmarkId::new("answer_buckets", RECORDS), |bench| {
        let (node, ask) = fixture.get_or_insert_with(|| asked(now));
        bench.iter_batched(|| ask.clone(), |ask| answer(node, now, ask), BatchSize::SmallInput);
    });
    group.finish();
}
