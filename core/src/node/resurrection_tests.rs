//! No resurrection, whatever the partition length (issue 9, defect 5): an
//! acknowledged deregistration is never undone by state from a node that was
//! cut off, or down, for longer than the tombstone TTL, nor by a replayed
//! frame; writes made on both sides meanwhile are kept.

use super::fixture::{Cut, cluster_with, run};
use super::*;
use crate::config::BrakeConfig;
use crate::model::ServiceKey;

const TTL: Duration = Duration::from_secs(60);

fn secs(s: u64) -> Timestamp {
    Timestamp::from_millis(s * 1_000)
}

fn none() -> &'static Cut {
    &|_, _, _| false
}

/// Every message to or from `id` is lost between `from` and `to`.
fn cut_off(id: NodeId, from: Timestamp, to: Timestamp) -> Box<Cut> {
    Box::new(move |now, a, b| (*a == id || *b == id) && now >= from && now < to)
}

fn key(i: usize) -> InstanceKey {
    let service = ServiceKey::parse(None, None, "orders").unwrap();
    InstanceKey::parse(service, None, &format!("10.0.{}.{}", i / 250, i % 250 + 1), 80).unwrap()
}

/// A persistent instance the node does not check (its health is the client's).
fn persistent(k: &InstanceKey) -> RegisterRequest {
    let mut r = RegisterRequest::new(k.clone());
    r.ephemeral = Some(false);
    r.metadata.insert("muster.health_check".into(), "none".into());
    r
}

fn ttl_cluster(n: usize) -> Vec<Node> {
    cluster_with(n, |c| c.timings.tombstone_ttl = TTL)
}

fn live_anywhere(nodes: &[Node], k: &InstanceKey) -> Vec<NodeId> {
    nodes.iter().filter(|n| n.live_instances().contains_key(k)).map(|n| n.id().clone()).collect()
}

#[test]
fn a_persistent_deregistration_survives_a_partition_of_twice_the_ttl() {
    let mut nodes = ttl_cluster(3);
    run(&mut nodes, secs(1), none());
    let k = key(0);
    nodes[0].register(secs(1), persistent(&k)).unwrap();
    run(&mut nodes, secs(2), none());
    assert_eq!(live_anywhere(&nodes, &k).len(), 3);
    let (cut_at, heal) = (secs(2), secs(2) + 2 * TTL);
    let cut = cut_off(nodes[2].id().clone(), cut_at, heal);
    run(&mut nodes, secs(3), &cut);
    nodes[0].deregister(secs(3), &k).unwrap();
    run(&mut nodes, heal.saturating_sub(Duration::from_secs(1)), &cut);
    // Past its TTL, the tombstone is held: n3 has not confirmed it.
    assert!(nodes[0].instance_record(&k).is_some_and(|r| r.is_tombstone()));
    run(&mut nodes, heal + Duration::from_secs(30), none());
    assert_eq!(live_anywhere(&nodes, &k), Vec::<NodeId>::new());
    // Once every node holds it, it is purged everywhere, and stays gone.
    run(&mut nodes, heal + 3 * TTL, none());
    assert!(nodes.iter().all(|n| n.stats().registry.tombstones == 0));
    assert_eq!(live_anywhere(&nodes, &k), Vec::<NodeId>::new());
    assert!(nodes.iter().all(|n| n.forced_horizon() == 0));
}

#[test]
fn ephemeral_deregistrations_survive_a_long_partition_with_the_brake_engaged() {
    // n3's brake holds the instances it would expire alone (at most one per
    // ten minutes may go), so it keeps them live past the TTL.
    let mut nodes = cluster_with(3, |c| {
        c.timings.tombstone_ttl = TTL;
        c.brake = BrakeConfig { share: 0.1, floor: 1, window: Duration::from_secs(600) };
    });
    run(&mut nodes, secs(1), none());
    let keys: Vec<InstanceKey> = (0..5).map(key).collect();
    for k in &keys {
        nodes[0].register(secs(1), RegisterRequest::new(k.clone())).unwrap();
    }
    run(&mut nodes, secs(2), none());
    let (cut_at, heal) = (secs(2), secs(2) + 2 * TTL);
    let cut = cut_off(nodes[2].id().clone(), cut_at, heal);
    run(&mut nodes, secs(3), &cut);
    for k in &keys {
        nodes[0].deregister(secs(3), k).unwrap();
    }
    run(&mut nodes, heal.saturating_sub(Duration::from_secs(1)), &cut);
    assert!(nodes[2].brake_engaged(), "n3 holds the silent instances");
    assert!(keys.iter().filter(|k| nodes[2].live_instances().contains_key(*k)).count() >= 4);
    run(&mut nodes, heal + Duration::from_secs(30), none());
    for k in &keys {
        assert_eq!(live_anywhere(&nodes, k), Vec::<NodeId>::new(), "{k}");
    }
    assert!(!nodes[2].brake_engaged(), "what it held is gone, so the brake is off");
}

#[test]
fn a_node_down_for_twice_the_ttl_comes_back_from_its_disk_without_undoing_a_deregistration() {
    let mut nodes = ttl_cluster(3);
    run(&mut nodes, secs(1), none());
    let k = key(0);
    nodes[0].register(secs(1), persistent(&k)).unwrap();
    run(&mut nodes, secs(2), none());
    // n3 stops; its disk holds what its memory held.
    let down = nodes.remove(2);
    let (disk, floor, config) = (down.records(), down.version_floor(), down.config().clone());
    drop(down);
    nodes[0].deregister(secs(3), &k).unwrap();
    let back = secs(2) + 2 * TTL;
    run(&mut nodes, back, none());
    let mut n3 = Node::new(config, back).unwrap();
    n3.load(back, disk, floor);
    nodes.push(n3);
    run(&mut nodes, back + Duration::from_secs(30), none());
    assert!(nodes.iter().all(Node::is_ready));
    assert_eq!(live_anywhere(&nodes, &k), Vec::<NodeId>::new());
}

#[test]
fn a_frame_replayed_after_the_purge_does_not_bring_an_instance_back() {
    let mut nodes = ttl_cluster(2);
    run(&mut nodes, secs(1), none());
    let k = key(0);
    nodes[0].register(secs(1), persistent(&k)).unwrap();
    let old = nodes[0].instance_record(&k).unwrap();
    run(&mut nodes, secs(2), none());
    nodes[0].deregister(secs(3), &k).unwrap();
    run(&mut nodes, secs(3) + 2 * TTL, none());
    assert!(nodes.iter().all(|n| n.stats().registry.tombstones == 0), "purged on both");
    // The old delta arrives again (a replay, a late duplicate, a stale disk).
    let from = nodes[0].id().clone();
    let now = secs(3) + 2 * TTL;
    nodes[1].handle_message(now, &from, PeerMessage::Delta { records: vec![old] }).unwrap();
    assert_eq!(live_anywhere(&nodes, &k), Vec::<NodeId>::new());
    assert_eq!(nodes[1].stats().registry.refused_stale, 1);
    run(&mut nodes, now + Duration::from_secs(30), none());
    assert_eq!(live_anywhere(&nodes, &k), Vec::<NodeId>::new());
}

#[test]
fn writes_made_on_both_sides_of_a_long_partition_are_kept() {
    let mut nodes = ttl_cluster(3);
    run(&mut nodes, secs(1), none());
    let (gone, left, right) = (key(0), key(1), key(2));
    nodes[0].register(secs(1), persistent(&gone)).unwrap();
    run(&mut nodes, secs(2), none());
    let heal = secs(2) + 2 * TTL;
    let cut = cut_off(nodes[2].id().clone(), secs(2), heal);
    run(&mut nodes, secs(10), &cut);
    nodes[0].deregister(secs(10), &gone).unwrap();
    nodes[1].register(secs(10), persistent(&left)).unwrap();
    nodes[2].register(secs(10), persistent(&right)).unwrap();
    run(&mut nodes, heal, &cut);
    run(&mut nodes, heal + Duration::from_secs(30), none());
    assert_eq!(live_anywhere(&nodes, &gone), Vec::<NodeId>::new());
    assert_eq!(live_anywhere(&nodes, &left).len(), 3);
    assert_eq!(live_anywhere(&nodes, &right).len(), 3);
}

#[test]
fn a_tombstone_held_past_its_maximum_is_evicted_and_what_it_deleted_is_refused() {
    let mut nodes = cluster_with(3, |c| {
        c.timings.tombstone_ttl = TTL;
        c.timings.tombstone_max_hold = 2 * TTL;
    });
    run(&mut nodes, secs(1), none());
    let (gone, kept) = (key(0), key(1));
    nodes[0].register(secs(1), persistent(&gone)).unwrap();
    run(&mut nodes, secs(2), none());
    let heal = secs(2) + 5 * TTL;
    let cut = cut_off(nodes[2].id().clone(), secs(2), heal);
    run(&mut nodes, secs(3), &cut);
    nodes[0].deregister(secs(3), &gone).unwrap();
    // A write on the cut-off side, after the deregistration.
    nodes[2].register(secs(50), persistent(&kept)).unwrap();
    run(&mut nodes, heal, &cut);
    assert!(nodes[0].stats().registry.forced_purges >= 1, "held past tombstone_max_hold");
    assert!(nodes[0].forced_horizon() > 0);
    run(&mut nodes, heal + Duration::from_secs(30), none());
    assert_eq!(live_anywhere(&nodes, &gone), Vec::<NodeId>::new());
    assert_eq!(live_anywhere(&nodes, &kept).len(), 3, "newer than the evicted tombstone: kept");
}

#[test]
fn tombstones_do_not_count_toward_max_instances_and_have_their_own_bound() {
    let mut c = Config::new(fixture::id("n1:1"));
    c.limits.max_instances = 10;
    c.limits.max_tombstones = 5;
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    for round in 0..3 {
        for i in 0..10 {
            let k = key(round * 10 + i);
            n.register(secs(1), persistent(&k)).unwrap();
        }
        for i in 0..10 {
            n.deregister(secs(1), &key(round * 10 + i)).unwrap();
        }
        assert_eq!(n.stats().registry.tombstones, 5);
        n.check_invariants();
    }
    assert_eq!(n.stats().registry.forced_purges, 25, "evicted before their TTL");
    let err = {
        for i in 100..110 {
            n.register(secs(2), persistent(&key(i))).unwrap();
        }
        n.register(secs(2), persistent(&key(110))).unwrap_err()
    };
    assert!(matches!(err, RequestError::LimitExceeded { what: "max_instances", .. }));
}

#[test]
fn dead_clients_past_the_brakes_share_are_released_window_by_window() {
    let mut c = Config::new(fixture::id("n1:1"));
    c.brake = BrakeConfig { share: 0.5, floor: 2, window: Duration::from_secs(60) };
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    for i in 0..20 {
        n.register(secs(0), RegisterRequest::new(key(i))).unwrap();
    }
    let nothing: &Cut = none();
    let mut one = [n];
    run(&mut one, secs(31), nothing);
    assert!(one[0].brake_engaged());
    assert_eq!(one[0].stats().registry.instances, 10, "half may go in the first window");
    run(&mut one, secs(31) + Duration::from_secs(10 * 60), nothing);
    assert_eq!(one[0].stats().registry.instances, 0, "every dead client goes in the end");
    assert!(!one[0].brake_engaged());
}
