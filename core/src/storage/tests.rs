//! The Storage on its own, without the Service Manager or a node: its
//! writers keep indexes, counts, digest, timers, views, change lists and the
//! durable output exact, and its reads (snapshot pages, anti-entropy units)
//! cover every record once. `check_invariants` (which recomputes the digest,
//! the counts and every fresh view from scratch) runs after every step.

use std::collections::BTreeSet;

use super::repair::Unit;
use super::*;
use crate::config::{Limits, Timings};
use crate::durable::{DurableWrite, RecordKey};
use crate::model::{Metadata, NodeId, ServiceKey, ServiceMeta};

fn store() -> Storage {
    Storage::new(Limits::default(), &Timings::default())
}

fn origin() -> NodeId {
    NodeId::parse("127.0.0.1:1").unwrap()
}

fn service(name: &str) -> ServiceKey {
    ServiceKey::parse(None, None, name).unwrap()
}

fn key(name: &str, port: i64) -> InstanceKey {
    InstanceKey::parse(service(name), None, "10.0.0.1", port).unwrap()
}

fn live(healthy: bool, ephemeral: bool) -> InstanceState {
    InstanceState::Live(InstanceData {
        weight: 1.0,
        healthy,
        enabled: true,
        ephemeral,
        metadata: Metadata::default(),
    })
}

fn version(counter: u64) -> Version {
    Version::client(counter, origin())
}

/// Inserts an instance and sets its state, as the Service Manager does.
fn put(s: &mut Storage, k: &InstanceKey, counter: u64, state: InstanceState, local: bool) -> u32 {
    let index = match s.find_instance(k) {
        Some(i) => i,
        None => {
            let svc = s.service_entry(&k.service).unwrap();
            s.insert_instance(svc, k, k.stable_hash(), version(counter), Timestamp::ZERO).unwrap()
        }
    };
    s.write_instance(index, version(counter), state, None, local).unwrap();
    s.check_invariants();
    index
}

#[test]
fn a_written_instance_is_found_counted_and_in_the_digest() {
    let mut s = store();
    let empty = s.digest().clone();
    let k = key("orders", 1);
    let i = put(&mut s, &k, 1, live(true, true), true);
    assert_eq!(s.find_instance(&k), Some(i));
    assert_eq!(s.last_beat(&k), Some(Timestamp::ZERO));
    assert_eq!((s.counts.instances, s.counts.healthy_instances, s.counts.ephemeral_instances), (1, 1, 1));
    assert_eq!(s.counts.tombstones, 0);
    assert_ne!(s.digest(), &empty);
    assert_eq!(s.visible_services(), 1);
    let record = s.instance_record_of(&k).unwrap();
    assert_eq!(record, Record::Instance { key: k.clone(), version: version(1), state: live(true, true) });
}

#[test]
fn only_local_writes_join_the_local_changes_but_every_write_wakes_watchers() {
    let mut s = store();
    put(&mut s, &key("orders", 1), 1, live(true, true), true);
    put(&mut s, &key("orders", 2), 2, live(true, true), false);
    let changes: Vec<RecordRef> = s.take_local_changes().collect();
    assert_eq!(changes.len(), 1, "the merged write is not sent back to peers");
    let record = s.record(changes[0]).unwrap();
    assert_eq!(record.version(), &version(1));
    assert_eq!(s.pop_changed_service(), Some(service("orders")));
    assert_eq!(s.pop_changed_service(), None, "changes of one service coalesce");
}

#[test]
fn the_digest_depends_on_the_records_held_not_on_the_order_of_writes() {
    let (mut a, mut b) = (store(), store());
    put(&mut a, &key("orders", 1), 1, live(true, true), true);
    put(&mut a, &key("orders", 2), 2, live(false, true), true);
    put(&mut a, &key("orders", 1), 3, live(false, false), true);
    put(&mut b, &key("orders", 2), 2, live(false, true), false);
    put(&mut b, &key("orders", 1), 3, live(false, false), false);
    assert_eq!(a.digest(), b.digest());
    let sorted = |s: &Storage| {
        let mut r: Vec<String> = s.all_records().iter().map(|r| format!("{r:?}")).collect();
        r.sort();
        r
    };
    assert_eq!(sorted(&a), sorted(&b));
}

#[test]
fn a_purge_removes_every_trace_and_the_empty_service() {
    let mut s = store();
    let empty = s.digest().clone();
    let k = key("orders", 1);
    let tombstone = InstanceState::Removed { cause: RemoveCause::Deregistered, at_ms: 5 };
    let i = put(&mut s, &k, 1, tombstone, true);
    assert_eq!(s.counts.tombstones, 1);
    assert_eq!(s.visible_services(), 0, "a service with only a tombstone is not visible");
    s.arm_instance(i, Timestamp::from_millis(10));
    s.purge_instance(i);
    s.check_invariants();
    assert_eq!(s.find_instance(&k), None);
    assert_eq!(s.counts.tombstones, 0);
    assert_eq!(s.digest(), &empty);
    assert_eq!(s.poll_timeout(), None, "its timer went with it");
    assert!(s.service_keys().is_empty(), "the service held nothing else");
}

#[test]
fn each_instance_has_one_timer_and_due_timers_pop_in_order() {
    let mut s = store();
    let a = put(&mut s, &key("orders", 1), 1, live(true, true), true);
    let b = put(&mut s, &key("orders", 2), 2, live(true, true), true);
    s.arm_instance(a, Timestamp::from_millis(30));
    s.arm_instance(b, Timestamp::from_millis(20));
    s.arm_instance(a, Timestamp::from_millis(10)); // re-armed: replaces the first
    s.check_invariants();
    assert_eq!(s.poll_timeout(), Some(Timestamp::from_millis(10)));
    assert_eq!(s.pop_due(Timestamp::from_millis(5)), None, "nothing is due yet");
    assert_eq!(s.pop_due(Timestamp::from_millis(25)), Some(TimerRef::Instance(a)));
    assert_eq!(s.pop_due(Timestamp::from_millis(25)), Some(TimerRef::Instance(b)));
    assert_eq!(s.pop_due(Timestamp::from_millis(25)), None, "the earlier entry of `a` was replaced");
    s.disarm_instance(a);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn snapshot_pages_cover_every_record_exactly_once() {
    let mut s = store();
    for port in 1..=25 {
        put(
            &mut s,
            &key(if port % 2 == 0 { "orders" } else { "billing" }, port),
            port as u64,
            live(true, true),
            true,
        );
    }
    let svc = s.service_entry(&service("orders")).unwrap();
    let meta = ServiceMeta { protect_threshold: 0.5, metadata: Metadata::default() };
    s.write_service(svc, version(99), ServiceState::Live(meta), None, true);
    s.check_invariants();
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let (page, next) = s.snapshot_page(cursor, 7);
        assert!(page.len() <= 7);
        seen.extend(page);
        match next {
            Some(c) => cursor = c,
            None => break,
        }
    }
    assert_eq!(seen.len(), 26);
    let mut all = s.all_records();
    all.sort_by_key(|r| format!("{r:?}"));
    seen.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(seen, all);
}

#[test]
fn anti_entropy_pages_hold_whole_units() {
    let mut s = store();
    for port in 1..=300 {
        put(&mut s, &key("orders", port), port as u64, live(true, true), true);
    }
    let all: BTreeSet<u16> = (0..256).collect();
    assert_eq!(s.count_in(Unit::Bucket, &all), 300);
    let (covered, records) = s.records_in_units(Unit::Bucket, &all, 50, false);
    assert!(records.len() <= 50);
    let covered: BTreeSet<u16> = covered.into_iter().collect();
    assert_eq!(s.count_in(Unit::Bucket, &covered), records.len(), "every covered bucket is whole");
    // The leaf hashes of a bucket XOR to its digest bucket.
    let bucket = *covered.iter().next().unwrap() as u8;
    let leaves = s.leaf_hashes(&BTreeSet::from([bucket]));
    let xor = leaves.iter().fold(0, |acc, (_, h)| acc ^ h);
    assert_eq!(xor, s.digest().buckets()[usize::from(bucket)]);
}

#[test]
fn a_patched_view_equals_a_rebuilt_one() {
    let mut s = store();
    for port in 1..=20 {
        put(&mut s, &key("orders", port), port as u64, live(true, true), true);
    }
    let first = s.view(&service("orders"));
    assert_eq!(first.instances.len(), 20);
    assert!(std::sync::Arc::ptr_eq(&first, &s.view(&service("orders"))), "unchanged: the cached view");
    put(&mut s, &key("orders", 3), 30, live(false, true), true);
    let gone = put(&mut s, &key("orders", 4), 31, live(true, true), true);
    s.write_instance(
        gone,
        version(32),
        InstanceState::Removed { cause: RemoveCause::Expired, at_ms: 1 },
        None,
        true,
    );
    put(&mut s, &key("orders", 21), 33, live(true, true), true);
    let patched = s.view(&service("orders"));
    s.check_invariants(); // compares the fresh (patched) view with a rebuild
    assert_eq!(patched.instances.len(), 20);
    assert!(!patched.instances.iter().find(|i| i.port == 3).unwrap().healthy);
    assert!(patched.instances.iter().all(|i| i.port != 4));
}

#[test]
fn the_durable_output_is_off_until_enabled_then_yields_latest_states_and_deletions() {
    let mut s = store();
    let k = key("orders", 1);
    put(&mut s, &k, 1, live(true, true), true);
    assert_eq!(s.poll_durable(), None, "off by default");
    s.set_durable_output(true);
    put(&mut s, &k, 2, live(false, true), true);
    put(&mut s, &k, 3, live(true, true), true);
    // Handles resolve when polled: both writes yield the latest state.
    let latest = s.instance_record_of(&k).unwrap();
    assert_eq!(s.poll_durable(), Some(DurableWrite::Put(latest.clone())));
    assert_eq!(s.poll_durable(), Some(DurableWrite::Put(latest)));
    assert_eq!(s.poll_durable(), None);
    let i = s.find_instance(&k).unwrap();
    s.purge_instance(i);
    assert_eq!(s.poll_durable(), Some(DurableWrite::Delete(RecordKey::Instance(k))));
    assert_eq!(s.poll_durable(), None);
}

#[test]
fn a_service_tombstone_has_a_timer_and_its_purge_leaves_nothing() {
    let mut s = store();
    let empty = s.digest().clone();
    let svc = s.service_entry(&service("orders")).unwrap();
    let meta = ServiceMeta { protect_threshold: 0.0, metadata: Metadata::default() };
    s.write_service(svc, version(1), ServiceState::Live(meta), None, true);
    s.check_invariants();
    assert_eq!(s.visible_services(), 1, "explicit settings make a service visible");
    let at = Timestamp::from_millis(100);
    s.write_service(svc, version(2), ServiceState::Removed { at_ms: 7 }, Some(at), true);
    s.check_invariants();
    assert_eq!(s.visible_services(), 0);
    assert_eq!(s.poll_timeout(), Some(at));
    assert!(s.purge_service_record(svc));
    s.check_invariants();
    assert!(!s.purge_service_record(svc), "nothing left to purge");
    assert_eq!(s.digest(), &empty);
    assert!(s.service_keys().is_empty());
}

#[test]
fn the_instance_and_service_limits_refuse_new_entries() {
    let limits = Limits { max_instances: 2, max_services: 1, ..Limits::default() };
    let mut s = Storage::new(limits, &Timings::default());
    put(&mut s, &key("orders", 1), 1, live(true, true), true);
    put(&mut s, &key("orders", 2), 2, live(true, true), true);
    let svc = s.service_entry(&service("orders")).unwrap();
    let third = key("orders", 3);
    let err = s.insert_instance(svc, &third, third.stable_hash(), version(3), Timestamp::ZERO).unwrap_err();
    assert!(matches!(err, RequestError::LimitExceeded { what: "max_instances", limit: 2 }), "{err:?}");
    let err = s.service_entry(&service("billing")).unwrap_err();
    assert!(matches!(err, RequestError::LimitExceeded { what: "max_services", limit: 1 }), "{err:?}");
    s.check_invariants();
    assert_eq!(s.counts.instances, 2);
}
