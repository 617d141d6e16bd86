//! Behaviour of one node, and of a few nodes wired by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{BrakeConfig, Config};
use crate::history::{ChangeCause, ChangeKind};
use crate::lease::{META_REMOVE_AFTER, META_UNHEALTHY_AFTER};
use crate::message::ForwardedBeat;
use crate::model::{Name, ServiceKey};
use crate::view::Checksum;

use self::several::{no_drop, run_cluster};
use super::fixture::cluster;

mod several;

fn id(s: &str) -> NodeId {
    NodeId::parse(s).unwrap()
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn secs(s: u64) -> Timestamp {
    Timestamp::from_millis(s * 1000)
}

fn single() -> Node {
    let mut c = Config::new(id("n1:1"));
    c.wall_clock_ms = 1_700_000_000_000;
    Node::new(c, Timestamp::ZERO).unwrap()
}

fn svc(name: &str) -> ServiceKey {
    ServiceKey::parse(None, None, name).unwrap()
}

fn key(service: &str, ip: &str, port: i64) -> InstanceKey {
    InstanceKey::parse(svc(service), None, ip, port).unwrap()
}

fn key_in(service: &str, cluster: &str, ip: &str) -> InstanceKey {
    InstanceKey::parse(svc(service), Some(cluster), ip, 80).unwrap()
}

fn register(node: &mut Node, now: Timestamp, k: &InstanceKey) -> Registered {
    node.register(now, RegisterRequest::new(k.clone())).unwrap()
}

fn all(node: &mut Node, now: Timestamp, service: &str) -> QueryAnswer {
    node.query(now, &svc(service), &Selector::default()).unwrap()
}

fn healthy(node: &mut Node, now: Timestamp, service: &str) -> QueryAnswer {
    let s = Selector { clusters: vec![], healthy_only: true };
    node.query(now, &svc(service), &s).unwrap()
}

fn drain_events(node: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| node.poll_event()).collect()
}

/// Runs `handle_timeout` at every due timer up to `until`.
fn run_until(node: &mut Node, until: Timestamp) {
    while let Some((t, _)) = node.poll_timeout() {
        if t > until {
            break;
        }
        node.handle_timeout(t);
        while node.poll_transmit().is_some() {}
    }
    node.handle_timeout(until);
    node.check_invariants();
}

#[test]
fn registering_creates_the_service_and_tells_the_heartbeat_interval() {
    let mut n = single();
    let r = register(&mut n, at(0), &key("orders", "10.0.0.1", 8080));
    assert!(r.created);
    assert_eq!(r.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(r.instance_id(), "10.0.0.1#8080#DEFAULT");
    let s = n.service(&svc("orders")).unwrap();
    assert_eq!((s.instances, s.healthy_instances, s.explicit), (1, 1, false));
    n.check_invariants();
}

#[test]
fn registering_again_updates_the_instance_instead_of_adding_one() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut n, at(0), &k);
    let mut again = RegisterRequest::new(k.clone());
    again.weight = Some(5.0);
    assert!(!n.register(at(10), again).unwrap().created);
    let a = all(&mut n, at(10), "orders");
    assert_eq!(a.len(), 1);
    assert_eq!(a.instances().next().unwrap().weight, 5.0);
    n.check_invariants();
}

#[test]
fn a_heartbeat_for_an_unknown_instance_answers_unknown() {
    let mut n = single();
    assert_eq!(n.heartbeat(at(0), &key("orders", "10.0.0.1", 1)).unwrap(), BeatReply::Unknown);
    assert_eq!(n.stats().registry.unknown_heartbeats, 1);
}

#[test]
fn a_silent_instance_turns_unhealthy_after_15_s_and_goes_after_30_s() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut n, at(0), &k);
    run_until(&mut n, at(14_999));
    assert_eq!(healthy(&mut n, at(14_999), "orders").len(), 1);
    run_until(&mut n, secs(15));
    assert_eq!(healthy(&mut n, secs(15), "orders").len(), 0);
    assert_eq!(all(&mut n, secs(15), "orders").len(), 1);
    run_until(&mut n, at(29_999));
    assert_eq!(all(&mut n, at(29_999), "orders").len(), 1);
    run_until(&mut n, secs(30));
    assert_eq!(all(&mut n, secs(30), "orders").len(), 0);
    assert_eq!(n.heartbeat(secs(31), &k).unwrap(), BeatReply::Unknown);
    assert_eq!(n.stats().registry.expired, 1);
}

#[test]
fn a_beating_instance_stays_healthy_indefinitely() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut n, at(0), &k);
    for beat in 1..=100 {
        let now = secs(beat * 5);
        run_until(&mut n, now);
        assert!(matches!(n.heartbeat(now, &k).unwrap(), BeatReply::Ok { .. }));
        assert_eq!(healthy(&mut n, now, "orders").len(), 1);
    }
    assert_eq!(n.stats().registry.marked_unhealthy, 0);
}

#[test]
fn an_unhealthy_instance_heals_on_its_next_beat() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut n, at(0), &k);
    run_until(&mut n, secs(20));
    assert_eq!(healthy(&mut n, secs(20), "orders").len(), 0);
    n.heartbeat(secs(20), &k).unwrap();
    assert_eq!(healthy(&mut n, secs(20), "orders").len(), 1);
    run_until(&mut n, secs(34));
    assert_eq!(healthy(&mut n, secs(34), "orders").len(), 1);
}

#[test]
fn metadata_can_shorten_an_instances_lease() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    let mut req = RegisterRequest::new(k.clone());
    req.metadata = BTreeMap::from([
        (META_UNHEALTHY_AFTER.to_owned(), "6000".into()),
        (META_REMOVE_AFTER.into(), "9000".into()),
    ]);
    n.register(at(0), req).unwrap();
    run_until(&mut n, secs(6));
    assert_eq!(healthy(&mut n, secs(6), "orders").len(), 0);
    run_until(&mut n, secs(9));
    assert_eq!(all(&mut n, secs(9), "orders").len(), 0);
}

#[test]
fn a_bad_lease_in_metadata_is_refused_naming_the_field() {
    let mut n = single();
    let mut req = RegisterRequest::new(key("orders", "10.0.0.1", 8080));
    req.metadata = BTreeMap::from([(META_REMOVE_AFTER.to_owned(), "soon".into())]);
    let err = n.register(at(0), req).unwrap_err();
    assert!(matches!(err, RequestError::Invalid(InvalidInput { field: Field::Metadata, .. })));
    assert_eq!(n.stats().registry.instances, 0);
}

#[test]
fn persistent_instances_never_expire_by_silence() {
    let mut n = single();
    let k = key("db", "10.0.0.9", 5432);
    let mut req = RegisterRequest::new(k.clone());
    req.ephemeral = Some(false);
    n.register(at(0), req).unwrap();
    run_until(&mut n, secs(3600));
    assert_eq!(healthy(&mut n, secs(3600), "db").len(), 1);
    n.update_instance(secs(3600), &k, UpdateRequest { healthy: Some(false), ..Default::default() }).unwrap();
    assert_eq!(healthy(&mut n, secs(3600), "db").len(), 0);
}

#[test]
fn the_health_of_an_ephemeral_instance_cannot_be_set_by_a_client() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut n, at(0), &k);
    let err = n.update_instance(at(1), &k, UpdateRequest { healthy: Some(false), ..Default::default() });
    assert!(matches!(err, Err(RequestError::Invalid(InvalidInput { field: Field::Healthy, .. }))));
}

#[test]
fn update_changes_weight_enabled_and_metadata() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut n, at(0), &k);
    let upd = UpdateRequest {
        weight: Some(3.0),
        enabled: Some(false),
        metadata: Some(BTreeMap::from([("zone".into(), "b".into())])),
        healthy: None,
    };
    n.update_instance(at(1), &k, upd).unwrap();
    let a = all(&mut n, at(1), "orders");
    let i = a.instances().next().unwrap();
    assert_eq!((i.weight, i.enabled, i.metadata.get("zone")), (3.0, false, Some("b")));
    assert_eq!(healthy(&mut n, at(1), "orders").len(), 0, "disabled instances get no traffic");
    let missing = n.update_instance(at(1), &key("orders", "10.0.0.2", 1), UpdateRequest::default());
    assert!(matches!(missing, Err(RequestError::InstanceNotFound(_))));
}

#[test]
fn deregistration_removes_the_instance_and_a_second_one_is_not_found() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut n, at(0), &k);
    n.deregister(at(1), &k).unwrap();
    assert!(all(&mut n, at(1), "orders").is_empty());
    assert!(matches!(n.deregister(at(2), &k), Err(RequestError::InstanceNotFound(_))));
    assert!(matches!(n.service(&svc("orders")), Err(RequestError::ServiceNotFound(_))));
    n.check_invariants();
}

#[test]
fn queries_filter_by_cluster_and_health() {
    let mut n = single();
    register(&mut n, at(0), &key_in("orders", "eu", "10.0.0.1"));
    register(&mut n, at(0), &key_in("orders", "us", "10.0.0.2"));
    run_until(&mut n, secs(10));
    register(&mut n, secs(10), &key_in("orders", "us", "10.0.0.3"));
    run_until(&mut n, secs(15));
    let us = Selector { clusters: vec![Name::parse(Field::Cluster, "us").unwrap()], healthy_only: false };
    assert_eq!(n.query(secs(15), &svc("orders"), &us).unwrap().len(), 2);
    let us_healthy = Selector { healthy_only: true, ..us };
    let a = n.query(secs(15), &svc("orders"), &us_healthy).unwrap();
    assert_eq!(a.instances().map(|i| i.ip.to_string()).collect::<Vec<_>>(), ["10.0.0.3"]);
}

#[test]
fn below_the_protect_threshold_queries_return_every_instance_and_say_so() {
    let mut n = single();
    n.create_service(at(0), &svc("orders"), ServiceUpdate { protect_threshold: Some(0.6), metadata: None })
        .unwrap();
    register(&mut n, at(0), &key("orders", "10.0.0.1", 1));
    register(&mut n, at(0), &key("orders", "10.0.0.2", 1));
    run_until(&mut n, secs(10));
    register(&mut n, secs(10), &key("orders", "10.0.0.3", 1));
    run_until(&mut n, secs(16));
    // 1 of 3 healthy < 0.6: all three are returned.
    let a = healthy(&mut n, secs(16), "orders");
    assert!(a.protect_threshold_reached());
    assert_eq!(a.len(), 3);
    n.update_service(
        secs(16),
        &svc("orders"),
        ServiceUpdate { protect_threshold: Some(0.3), metadata: None },
    )
    .unwrap();
    let a = healthy(&mut n, secs(16), "orders");
    assert!(!a.protect_threshold_reached());
    assert_eq!(a.len(), 1);
}

#[test]
fn checksums_are_equal_for_equal_content_on_different_nodes() {
    let mut a = single();
    let mut b = Node::new(Config::new(id("n2:1")), Timestamp::ZERO).unwrap();
    let keys = [key("orders", "10.0.0.1", 1), key("orders", "10.0.0.2", 1), key("orders", "10.0.0.3", 1)];
    for k in &keys {
        register(&mut a, at(0), k);
    }
    for k in keys.iter().rev() {
        register(&mut b, at(500), k);
    }
    let (ca, cb) = (all(&mut a, at(1), "orders").checksum(), all(&mut b, at(501), "orders").checksum());
    assert_eq!(ca, cb);
    let mut heavier = RegisterRequest::new(keys[0].clone());
    heavier.weight = Some(2.0);
    b.register(at(600), heavier).unwrap();
    assert_ne!(all(&mut b, at(600), "orders").checksum(), ca);
    assert_eq!(Checksum::parse(&ca.to_string()), Some(ca));
}

#[test]
fn a_repeated_query_of_an_unchanged_service_reuses_its_answer() {
    let mut n = single();
    register(&mut n, at(0), &key("orders", "10.0.0.1", 1));
    let first = all(&mut n, at(1), "orders");
    let second = all(&mut n, at(2), "orders");
    assert!(Arc::ptr_eq(first.view(), second.view()));
    register(&mut n, at(3), &key("orders", "10.0.0.2", 1));
    let third = all(&mut n, at(4), "orders");
    assert!(!Arc::ptr_eq(first.view(), third.view()));
}

#[test]
fn an_unknown_service_answers_with_no_instances() {
    let mut n = single();
    let a = all(&mut n, at(0), "nothing-here");
    assert!(a.is_empty());
    assert!(!a.protect_threshold_reached());
    assert!(!a.view().known);
}

#[test]
fn an_emptied_service_is_known_to_be_empty() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 1);
    register(&mut n, at(0), &k);
    n.deregister(at(1), &k).unwrap();
    let a = all(&mut n, at(2), "orders");
    assert!(a.is_empty());
    assert!(a.view().known, "the tombstone says the service was emptied");
}

#[test]
fn service_listing_pages_filters_and_counts() {
    let mut n = single();
    for i in 0..25 {
        register(&mut n, at(0), &key(&format!("svc-{i:02}"), "10.0.0.1", 1));
    }
    register(&mut n, at(0), &key("billing", "10.0.0.1", 1));
    let public = Name::parse(Field::Namespace, "public").unwrap();
    let filter = |page, search: Option<&str>| ServiceFilter {
        namespace: public.clone(),
        group: None,
        search: search.map(str::to_owned),
        page,
        page_size: 10,
    };
    let p3 = n.list_services(&filter(3, None)).unwrap();
    assert_eq!((p3.total, p3.services.len()), (26, 6));
    assert_eq!(p3.services.last().unwrap().key.service.as_str(), "svc-24");
    let found = n.list_services(&filter(1, Some("BILL"))).unwrap();
    assert_eq!(found.services.iter().map(|s| s.key.service.as_str()).collect::<Vec<_>>(), ["billing"]);
    assert_eq!(found.services[0].instances, 1);
    let bad = ServiceFilter { page: 0, ..filter(1, None) };
    assert!(matches!(
        n.list_services(&bad),
        Err(RequestError::Invalid(InvalidInput { field: Field::Page, .. }))
    ));
    let big = ServiceFilter { page_size: 100_000, ..filter(1, None) };
    assert!(n.list_services(&big).is_err());
}

#[test]
fn a_service_with_instances_cannot_be_deleted() {
    let mut n = single();
    register(&mut n, at(0), &key("orders", "10.0.0.1", 1));
    let err = n.delete_service(at(1), &svc("orders")).unwrap_err();
    assert!(matches!(err, RequestError::ServiceNotEmpty { instances: 1, .. }));
    n.deregister(at(2), &key("orders", "10.0.0.1", 1)).unwrap();
    assert!(matches!(n.delete_service(at(3), &svc("orders")), Err(RequestError::ServiceNotFound(_))));
}

#[test]
fn an_explicit_service_outlives_its_instances_until_deleted() {
    let mut n = single();
    let s = svc("orders");
    let meta = BTreeMap::from([("owner".to_owned(), "team-a".to_owned())]);
    n.create_service(at(0), &s, ServiceUpdate { protect_threshold: None, metadata: Some(meta) }).unwrap();
    assert!(matches!(
        n.create_service(at(1), &s, ServiceUpdate::default()),
        Err(RequestError::ServiceExists(_))
    ));
    register(&mut n, at(2), &key("orders", "10.0.0.1", 1));
    n.deregister(at(3), &key("orders", "10.0.0.1", 1)).unwrap();
    let summary = n.service(&s).unwrap();
    assert!(summary.explicit);
    assert_eq!(summary.metadata.get("owner"), Some("team-a"));
    n.delete_service(at(4), &s).unwrap();
    assert!(n.service(&s).is_err());
    n.check_invariants();
}

#[test]
fn namespaces_list_public_and_every_namespace_in_use() {
    let mut n = single();
    let staging = ServiceKey::parse(Some("staging"), None, "orders").unwrap();
    n.register(at(0), RegisterRequest::new(InstanceKey::parse(staging, None, "10.0.0.1", 1).unwrap()))
        .unwrap();
    let names: Vec<_> = n.namespaces().into_iter().map(|s| (s.namespace.to_string(), s.services)).collect();
    assert_eq!(names, [("public".to_owned(), 0), ("staging".to_owned(), 1)]);
}

#[test]
fn the_instances_per_service_limit_refuses_new_instances_only() {
    let mut c = Config::new(id("n1:1"));
    c.limits.max_instances_per_service = 2;
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    register(&mut n, at(0), &key("orders", "10.0.0.1", 1));
    register(&mut n, at(0), &key("orders", "10.0.0.2", 1));
    let err = n.register(at(0), RegisterRequest::new(key("orders", "10.0.0.3", 1))).unwrap_err();
    assert_eq!(err, RequestError::LimitExceeded { what: "max_instances_per_service", limit: 2 });
    register(&mut n, at(1), &key("orders", "10.0.0.2", 1));
    register(&mut n, at(1), &key("other", "10.0.0.3", 1));
}

#[test]
fn the_service_and_instance_limits_refuse_growth() {
    let mut c = Config::new(id("n1:1"));
    c.limits.max_services = 1;
    c.limits.max_instances = 2;
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    register(&mut n, at(0), &key("a", "10.0.0.1", 1));
    let err = n.register(at(0), RegisterRequest::new(key("b", "10.0.0.1", 1))).unwrap_err();
    assert_eq!(err, RequestError::LimitExceeded { what: "max_services", limit: 1 });
    register(&mut n, at(0), &key("a", "10.0.0.2", 1));
    let err = n.register(at(0), RegisterRequest::new(key("a", "10.0.0.3", 1))).unwrap_err();
    assert_eq!(err, RequestError::LimitExceeded { what: "max_instances", limit: 2 });
    n.check_invariants();
}

#[test]
fn metadata_over_its_limits_is_refused_and_changes_nothing() {
    let mut c = Config::new(id("n1:1"));
    c.limits.max_metadata_entries = 1;
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    let before = n.digest().root();
    let mut req = RegisterRequest::new(key("a", "10.0.0.1", 1));
    req.metadata = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
    assert!(n.register(at(0), req).is_err());
    let mut req = RegisterRequest::new(key("a", "10.0.0.1", 1));
    req.weight = Some(f64::INFINITY);
    let err = n.register(at(0), req).unwrap_err();
    assert!(matches!(err, RequestError::Invalid(InvalidInput { field: Field::Weight, .. })));
    assert_eq!(n.digest().root(), before);
    assert_eq!(n.stats().registry.services, 0);
}

#[test]
fn a_heartbeat_batch_over_its_limit_is_refused() {
    let mut c = Config::new(id("n1:1"));
    c.limits.max_batch_beats = 2;
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    let k = key("a", "10.0.0.1", 1);
    register(&mut n, at(0), &k);
    let replies = n.heartbeat_batch(at(1), &[k.clone(), key("a", "10.0.0.2", 1)]).unwrap();
    assert!(matches!(replies[0], BeatReply::Ok { .. }));
    assert_eq!(replies[1], BeatReply::Unknown);
    let err = n.heartbeat_batch(at(1), &[k.clone(), k.clone(), k]).unwrap_err();
    assert!(matches!(err, RequestError::Invalid(InvalidInput { field: Field::Beats, .. })));
}

#[test]
fn tombstones_are_purged_after_their_ttl() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 1);
    register(&mut n, at(0), &k);
    n.deregister(at(1), &k).unwrap();
    assert_eq!(n.stats().registry.tombstones, 1);
    run_until(&mut n, at(1) + Duration::from_secs(599));
    assert_eq!(n.stats().registry.tombstones, 1);
    run_until(&mut n, at(2) + Duration::from_secs(600));
    assert_eq!(n.stats().registry.tombstones, 0);
    assert!(n.records().is_empty());
}

fn braking_node() -> Node {
    let mut c = Config::new(id("n1:1"));
    c.brake = BrakeConfig { share: 0.5, floor: 2, window: Duration::from_secs(60) };
    Node::new(c, Timestamp::ZERO).unwrap()
}

#[test]
fn the_expiry_brake_holds_a_mass_expiry_and_releases_on_beats() {
    let mut n = braking_node();
    let keys: Vec<_> = (1..=10).map(|i| key("orders", &format!("10.0.0.{i}"), 1)).collect();
    for k in &keys {
        register(&mut n, at(0), k);
    }
    drain_events(&mut n);
    run_until(&mut n, secs(31));
    // 5 of 10 may go in one window; the rest are held, unhealthy.
    assert_eq!(all(&mut n, secs(31), "orders").len(), 5);
    assert!(n.brake_engaged());
    assert!(drain_events(&mut n).iter().any(|e| matches!(e, Event::BrakeEngaged { .. })));
    // The network comes back: the held instances beat again.
    let remaining: Vec<InstanceKey> = n.live_instances().into_keys().collect();
    for k in &remaining {
        n.heartbeat(secs(32), k).unwrap();
    }
    n.handle_timeout(secs(32));
    assert!(!n.brake_engaged());
    assert!(drain_events(&mut n).contains(&Event::BrakeReleased));
    assert_eq!(healthy(&mut n, secs(32), "orders").len(), 5);
}

#[test]
fn the_work_of_one_timeout_is_bounded() {
    let mut c = Config::new(id("n1:1"));
    c.limits.max_timeouts_per_call = 3;
    c.brake.share = 1.0;
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    for i in 1..=10 {
        register(&mut n, at(0), &key("orders", &format!("10.0.0.{i}"), 1));
    }
    run_until(&mut n, secs(14));
    n.handle_timeout(secs(16));
    assert_eq!(n.stats().registry.marked_unhealthy, 3);
    let (next, kind) = n.poll_timeout().unwrap();
    assert_eq!((next <= secs(16), kind), (true, TimerKind::Expiry));
}

#[test]
fn service_change_events_are_coalesced_per_drain() {
    let mut n = single();
    drain_events(&mut n);
    let keys: Vec<_> = (1..=3).map(|i| key("orders", &format!("10.0.0.{i}"), 1)).collect();
    n.heartbeat_batch(at(0), &keys).unwrap();
    for k in &keys {
        register(&mut n, at(0), k);
    }
    let events = drain_events(&mut n);
    assert_eq!(events, vec![Event::ServiceChanged(svc("orders")); 3]);
    // Beats of healthy instances change nothing visible.
    n.heartbeat_batch(at(1), &keys).unwrap();
    assert!(drain_events(&mut n).is_empty());
}

#[test]
fn a_pause_gives_instances_a_fresh_grace_period() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 1);
    register(&mut n, at(0), &k);
    run_until(&mut n, secs(1));
    // The process is stopped for a minute; the first timeout after it sees the gap.
    n.handle_timeout(secs(61));
    assert!(drain_events(&mut n).iter().any(|e| matches!(e, Event::PauseDetected { .. })));
    assert_eq!(healthy(&mut n, secs(61), "orders").len(), 1, "no instance judged on a paused clock");
    run_until(&mut n, secs(75));
    assert_eq!(healthy(&mut n, secs(75), "orders").len(), 1);
    run_until(&mut n, secs(76));
    assert_eq!(healthy(&mut n, secs(76), "orders").len(), 0);
}

#[test]
fn time_going_backwards_is_clamped() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 1);
    register(&mut n, secs(100), &k);
    n.handle_timeout(secs(50));
    n.heartbeat(secs(10), &k).unwrap();
    run_until(&mut n, secs(114));
    assert_eq!(healthy(&mut n, secs(114), "orders").len(), 1);
}

#[test]
fn put_service_creates_then_updates() {
    let mut n = single();
    let s = svc("orders");
    let upd = |t: f64| ServiceUpdate { protect_threshold: Some(t), metadata: None };
    assert_eq!(n.put_service(at(0), &s, upd(0.2)).unwrap().protect_threshold, 0.2);
    assert_eq!(n.put_service(at(1), &s, upd(0.4)).unwrap().protect_threshold, 0.4);
    assert_eq!(n.service_keys(), vec![s]);
}

#[test]
fn purging_a_services_last_tombstone_tells_watchers_it_is_forgotten() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 1);
    register(&mut n, at(0), &k);
    n.deregister(at(1), &k).unwrap();
    drain_events(&mut n);
    run_until(&mut n, secs(700));
    assert!(drain_events(&mut n).contains(&Event::ServiceChanged(svc("orders"))));
    assert!(!all(&mut n, secs(700), "orders").view().known);
    assert!(n.service_keys().is_empty());
}

fn persistent(n: &mut Node, now: Timestamp, k: &InstanceKey, meta: &[(&str, &str)]) {
    let mut req = RegisterRequest::new(k.clone());
    req.ephemeral = Some(false);
    req.metadata = meta.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    n.register(now, req).unwrap();
}

fn checks(n: &mut Node) -> Vec<crate::health::HealthCheck> {
    std::iter::from_fn(|| n.poll_health_check()).collect()
}

#[test]
fn a_persistent_instance_is_checked_every_interval_and_marked_by_the_outcomes() {
    let mut n = single();
    let k = key("db", "10.0.0.9", 5432);
    persistent(&mut n, at(0), &k, &[]);
    run_until(&mut n, at(4_999));
    assert!(checks(&mut n).is_empty());
    run_until(&mut n, secs(5));
    let due = checks(&mut n);
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].key.clone(), due[0].kind), (k.clone(), crate::lease::CheckKind::Tcp));
    n.handle_health_check(secs(5), &k, false);
    assert_eq!(healthy(&mut n, secs(5), "db").len(), 1, "one failure is not enough");
    run_until(&mut n, secs(10));
    assert_eq!(checks(&mut n).len(), 1);
    n.handle_health_check(secs(10), &k, false);
    assert_eq!(healthy(&mut n, secs(10), "db").len(), 0, "two failures in a row are");
    n.handle_health_check(secs(11), &k, true);
    assert_eq!(healthy(&mut n, secs(11), "db").len(), 1, "one success heals");
    assert_eq!(n.stats().registry.checks_changed, 2);
}

#[test]
fn an_http_check_carries_its_path_and_none_is_never_checked() {
    let mut n = single();
    let web = key("web", "10.0.0.7", 80);
    let manual = key("web", "10.0.0.8", 80);
    persistent(
        &mut n,
        at(0),
        &web,
        &[("muster.health_check", "http"), ("muster.health_check_path", "/healthz")],
    );
    persistent(&mut n, at(0), &manual, &[("muster.health_check", "none")]);
    run_until(&mut n, secs(5));
    let due = checks(&mut n);
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].kind, due[0].path.as_str()), (crate::lease::CheckKind::Http, "/healthz"));
    let mut bad = RegisterRequest::new(key("web", "10.0.0.6", 80));
    bad.ephemeral = Some(false);
    bad.metadata = BTreeMap::from([("muster.health_check".to_owned(), "ping".to_owned())]);
    assert!(n.register(secs(5), bad).is_err());
}

#[test]
fn only_the_responsible_node_checks_a_persistent_instance() {
    let mut nodes = cluster(3);
    run_cluster(&mut nodes, at(10), &no_drop);
    let k = key("db", "10.0.0.9", 5432);
    persistent(&mut nodes[0], at(10), &k, &[]);
    let mut asked = Vec::new();
    for s in 1..=6 {
        run_cluster(&mut nodes, secs(s), &no_drop);
        for n in &mut nodes {
            if !checks(n).is_empty() {
                asked.push(n.id().clone());
            }
        }
    }
    asked.dedup();
    assert_eq!(asked, vec![nodes[0].responsible_for(&k)]);
}

fn changes(node: &mut Node) -> Vec<(ChangeKind, ChangeCause)> {
    drain_events(node)
        .into_iter()
        .filter_map(|e| match e {
            Event::InstanceChanged(c) => Some((c.kind, c.cause)),
            _ => None,
        })
        .collect()
}

#[test]
fn instance_changes_are_events_with_their_cause_only_once_turned_on() {
    let mut n = single();
    let k = key("orders", "10.0.0.1", 1);
    register(&mut n, at(0), &k);
    assert!(changes(&mut n).is_empty(), "off by default");
    n.set_instance_events(true);
    let upd = UpdateRequest { weight: Some(3.0), ..UpdateRequest::default() };
    n.update_instance(at(1), &k, upd).unwrap();
    let updated = ChangeKind::Updated { weight: true, enabled: false, metadata: false };
    assert_eq!(changes(&mut n), [(updated, ChangeCause::Client)]);
    run_until(&mut n, secs(16));
    assert_eq!(changes(&mut n), [(ChangeKind::Unhealthy, ChangeCause::Silence)]);
    n.heartbeat(secs(17), &k).unwrap();
    assert_eq!(changes(&mut n), [(ChangeKind::Healthy, ChangeCause::Heartbeat)]);
    run_until(&mut n, secs(48));
    assert_eq!(
        changes(&mut n),
        [(ChangeKind::Unhealthy, ChangeCause::Silence), (ChangeKind::Expired, ChangeCause::Silence)]
    );
    register(&mut n, secs(49), &k);
    n.deregister(secs(50), &k).unwrap();
    assert_eq!(
        changes(&mut n),
        [(ChangeKind::Registered, ChangeCause::Client), (ChangeKind::Deregistered, ChangeCause::Client)]
    );
}

#[test]
fn instances_held_by_the_brake_are_told_apart_from_silence() {
    let mut n = braking_node();
    n.set_instance_events(true);
    for i in 1..=10 {
        register(&mut n, at(0), &key("orders", &format!("10.0.0.{i}"), 1));
    }
    run_until(&mut n, secs(31));
    let got = changes(&mut n);
    let count = |want: (ChangeKind, ChangeCause)| got.iter().filter(|c| **c == want).count();
    assert_eq!(count((ChangeKind::Expired, ChangeCause::Silence)), 5);
    assert_eq!(count((ChangeKind::Held, ChangeCause::Brake)), 5, "{got:?}");
    run_until(&mut n, secs(45));
    assert!(changes(&mut n).is_empty(), "a held instance is noted once, not at every re-check");
}

#[test]
fn a_peers_digest_root_is_kept_with_whether_it_matched() {
    let mut c = Config::new(id("n1:1"));
    c.peers = vec![id("n2:1")];
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    let peer = id("n2:1");
    assert_eq!(n.peer_digest(&peer), None);
    let root = n.digest().root();
    n.handle_message(at(5), &peer, PeerMessage::DigestRoot { root }).unwrap();
    assert_eq!(n.peer_digest(&peer), Some(PeerDigest { at: at(5), root, matched: true }));
    n.handle_message(at(6), &peer, PeerMessage::DigestRoot { root: root ^ 1 }).unwrap();
    assert!(!n.peer_digest(&peer).unwrap().matched);
    assert_eq!(n.peer_digest(&id("n3:1")), None);
}

#[test]
fn instances_are_found_by_host_and_port_across_services() {
    let mut n = single();
    register(&mut n, at(0), &key("orders", "10.0.0.1", 80));
    register(&mut n, at(0), &key("billing", "10.0.0.1", 81));
    register(&mut n, at(0), &key("billing", "10.0.0.2", 80));
    n.deregister(at(1), &key("billing", "10.0.0.2", 80)).unwrap();
    let ip = |s: &str| crate::model::Host::parse(s).unwrap();
    assert_eq!(n.instances_on(&ip("10.0.0.1"), None, 10).len(), 2);
    assert_eq!(n.instances_on(&ip("10.0.0.1"), Some(81), 10), [key("billing", "10.0.0.1", 81)]);
    assert_eq!(n.instances_on(&ip("10.0.0.1"), None, 1).len(), 1, "bounded");
    assert!(n.instances_on(&ip("10.0.0.2"), None, 10).is_empty(), "removed instances are not found");
}
