//! The order of client writes across nodes: an acknowledged write is never
//! lost to an older one.

use super::fixture::{self, cluster, id};
use super::*;
use crate::config::Config;
use crate::model::ServiceKey;
use crate::record::{InstanceState, RemoveCause};

fn pair() -> Vec<Node> {
    cluster(2)
}

fn key() -> InstanceKey {
    InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", 8080).unwrap()
}

/// Delivers every queued message until quiet.
fn pump(nodes: &mut [Node], now: Timestamp) {
    fixture::pump(nodes, now, &|_, _, _| false);
}

/// Runs the timers up to `until` with every message delivered.
fn run(nodes: &mut [Node], until: Timestamp) {
    fixture::run(nodes, until, &|_, _, _| false);
}

fn live_on_both(nodes: &[Node], k: &InstanceKey) -> bool {
    nodes.iter().all(|n| n.live_instances().contains_key(k))
}

#[test]
fn a_register_made_just_after_a_deregistration_on_another_node_wins_everywhere() {
    let mut nodes = pair();
    run(&mut nodes, Timestamp::from_millis(10));
    let k = key();
    for persistent in [false, true] {
        let t = Timestamp::from_millis(if persistent { 2_000 } else { 1_000 });
        let mut req = RegisterRequest::new(k.clone());
        req.ephemeral = Some(!persistent);
        nodes[0].register(t, req.clone()).unwrap();
        run(&mut nodes, t + Duration::from_millis(100));
        assert!(live_on_both(&nodes, &k));
        // Node 1 acknowledges the deregistration; 1 ms later, before its
        // delta arrives, node 2 acknowledges a register with the same data.
        let t = t + Duration::from_millis(200);
        nodes[0].deregister(t, &k).unwrap();
        nodes[1].register(t + Duration::from_millis(1), req).unwrap();
        pump(&mut nodes, t + Duration::from_millis(2));
        run(&mut nodes, t + Duration::from_millis(500));
        assert!(live_on_both(&nodes, &k), "the later register was lost (persistent: {persistent})");
        assert_eq!(nodes[0].digest(), nodes[1].digest());
    }
}

#[test]
fn a_full_event_queue_never_drops_ready() {
    let mut c = Config::new(id("n1:1"));
    c.wall_clock_ms = 1_700_000_000_000;
    c.limits.max_records_per_message = 2;
    c.limits.max_incoming_records = 2;
    c.limits.max_timeouts_per_call = 2;
    c.limits.max_queued_events = 2;
    let mut node = Node::new(c, Timestamp::ZERO).unwrap();
    for i in 0..5 {
        let k =
            InstanceKey::parse(ServiceKey::parse(None, None, &format!("s{i}")).unwrap(), None, "10.0.0.1", 1)
                .unwrap();
        node.register(Timestamp::from_millis(i), RegisterRequest::new(k)).unwrap();
    }
    let events: Vec<Event> = std::iter::from_fn(|| node.poll_event()).collect();
    assert!(events.contains(&Event::Ready { loaded_from: None }), "{events:?}");
    assert_eq!(events.len(), 2);
    assert!(node.stats().events_dropped >= 3);
}

/// Three nodes; `n2:1` runs 30 s behind the others, inside the tolerated
/// skew (set to an hour here, the old default).
fn skewed_trio() -> Vec<Node> {
    fixture::cluster_with(3, |c| {
        c.timings.max_clock_skew = Duration::from_secs(3600);
        if c.node_id.as_str() == "n2:1" {
            c.wall_clock_ms -= 30_000;
        }
    })
}

/// An instance key `n1:1` is responsible for.
fn key_owned_by_n1(nodes: &[Node]) -> InstanceKey {
    (1..1000)
        .map(|port| {
            InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", port)
                .unwrap()
        })
        .find(|k| nodes[0].responsible_for(k) == id("n1:1"))
        .unwrap()
}

/// Runs timers and delivery until `until`, dropping what `cut` says.
fn run_cut(nodes: &mut [Node], until: Timestamp, cut: &fixture::Cut) {
    while let Some(t) = nodes.iter().filter_map(|n| n.poll_timeout()).map(|(t, _)| t).min() {
        if t > until {
            break;
        }
        for n in nodes.iter_mut() {
            n.handle_timeout(t);
        }
        fixture::pump(nodes, t, cut);
    }
    for n in nodes.iter_mut() {
        n.handle_timeout(until);
    }
    fixture::pump(nodes, until, cut);
}

fn state_of(n: &Node, k: &InstanceKey) -> Option<InstanceState> {
    match n.instance_record(k)? {
        Record::Instance { state, .. } => Some(state),
        Record::Service { .. } => None,
    }
}

/// Registers `k` on `n1:1` and lets it replicate; returns the time after.
fn registered_everywhere(nodes: &mut [Node], k: &InstanceKey) -> Timestamp {
    run(nodes, Timestamp::from_millis(10));
    let t = Timestamp::from_millis(1_000);
    nodes[0].register(t, RegisterRequest::new(k.clone())).unwrap();
    let t = t + Duration::from_millis(100);
    run(nodes, t);
    assert!(nodes.iter().all(|n| n.live_instances().contains_key(k)));
    t
}

/// The deregistration taken by the lagging `n2:1` while cut off: after the
/// heal it must hold on every node.
fn assert_deregistered_everywhere(nodes: &mut [Node], k: &InstanceKey, from: Timestamp, what: &str) {
    run(nodes, from + Duration::from_secs(2));
    for n in nodes.iter() {
        let state = state_of(n, k);
        assert!(
            matches!(state, Some(InstanceState::Removed { cause: RemoveCause::Deregistered, .. })),
            "{what}: {} holds {state:?}",
            n.id()
        );
    }
    assert_eq!(nodes[0].digest(), nodes[1].digest());
    assert_eq!(nodes[0].digest(), nodes[2].digest());
}

#[test]
fn a_mark_then_a_lift_on_a_node_never_undo_a_deregistration_taken_on_a_lagging_node() {
    let mut nodes = skewed_trio();
    let k = key_owned_by_n1(&nodes);
    let t = registered_everywhere(&mut nodes, &k);
    // Every node alone. The client deregisters on the lagging n2:1 while
    // n1:1, hearing no beats, marks the instance unhealthy, then takes a
    // late beat and lifts the mark: two derived steps.
    let alone: &fixture::Cut = &|_, a, b| a != b;
    nodes[1].deregister(t + Duration::from_millis(1), &k).unwrap();
    let marked = t + Duration::from_secs(16);
    run_cut(&mut nodes, marked, alone);
    assert!(matches!(state_of(&nodes[0], &k), Some(InstanceState::Live(d)) if !d.healthy));
    nodes[0].heartbeat(marked, &k).unwrap();
    assert!(matches!(state_of(&nodes[0], &k), Some(InstanceState::Live(d)) if d.healthy));
    run_cut(&mut nodes, marked + Duration::from_millis(10), alone);
    assert_deregistered_everywhere(&mut nodes, &k, marked + Duration::from_millis(10), "mark, lift");
}

#[test]
fn a_mark_then_a_refutation_never_undo_a_deregistration_taken_on_a_lagging_node() {
    let mut nodes = skewed_trio();
    let k = key_owned_by_n1(&nodes);
    let t = registered_everywhere(&mut nodes, &k);
    // Every node alone; the client beats n3:1 only and deregisters on the
    // lagging n2:1. n1:1 marks the instance unhealthy for silence.
    let alone: &fixture::Cut = &|_, a, b| a != b;
    nodes[1].deregister(t + Duration::from_millis(1), &k).unwrap();
    let mut now = t;
    while now < t + Duration::from_secs(16) {
        now = now + Duration::from_secs(2);
        run_cut(&mut nodes, now, alone);
        let _ = nodes[2].heartbeat(now, &k);
    }
    assert!(matches!(state_of(&nodes[0], &k), Some(InstanceState::Live(d)) if !d.healthy));
    // The n1:1 - n3:1 link heals first: n3:1 refutes the mark (second step).
    let n2_alone: &fixture::Cut = &|_, a, b| a.as_str() == "n2:1" || b.as_str() == "n2:1";
    run_cut(&mut nodes, now + Duration::from_secs(6), n2_alone);
    assert!(nodes[2].stats().registry.refuted > 0, "no refutation happened");
    assert!(matches!(state_of(&nodes[0], &k), Some(InstanceState::Live(d)) if d.healthy));
    let now = now + Duration::from_secs(6);
    assert_deregistered_everywhere(&mut nodes, &k, now, "mark, refutation");
}

#[test]
fn a_beat_against_a_registration_older_than_the_clients_register_is_answered_unknown() {
    // Seed 9503: a client leaves on node 1 and registers again on node 2,
    // which is lost before its register replicates (a memory-only node that
    // crashes); the client then beats on node 3, which still holds the
    // original registration. Counting that beat would keep the original
    // alive until node 1's deregistration (newer than it) arrives and wins
    // while the client beats. The beat carries the token the client sent
    // with its register: node 3 answers `Unknown`, the client registers
    // again there, and that register outranks the deregistration.
    let mut nodes = cluster(3);
    run(&mut nodes, Timestamp::from_millis(10));
    let k = key();
    let req = RegisterRequest::new(k.clone());
    nodes[0].register(Timestamp::from_millis(1_000), req.clone()).unwrap();
    run(&mut nodes, Timestamp::from_millis(1_100));
    assert!(nodes.iter().all(|n| n.live_instances().contains_key(&k)));

    let t = Timestamp::from_millis(1_200);
    nodes[0].deregister(t, &k).unwrap();
    let token = nodes[0].version_counter();
    nodes[1].observe_client(t + Duration::from_millis(1), token).unwrap();
    nodes[1].register(t + Duration::from_millis(1), req.clone()).unwrap();
    nodes.remove(1); // Crashes before anything it queued is sent.

    // Node 1's deregistration is delayed to node 3 until `heal`.
    let heal = t + Duration::from_millis(300);
    let (n1, n3) = (nodes[0].id().clone(), nodes[1].id().clone());
    let cut = move |at: Timestamp, from: &NodeId, to: &NodeId| at < heal && *from == n1 && *to == n3;
    let beat_at = t + Duration::from_millis(2);
    assert_eq!(nodes[1].heartbeat_after(beat_at, &k, token).unwrap(), BeatReply::Unknown);
    assert_eq!(nodes[1].stats().stale_beats, 1);
    nodes[1].observe_client(beat_at, token).unwrap();
    nodes[1].register(beat_at, req).unwrap();
    assert!(matches!(nodes[1].heartbeat_after(beat_at, &k, token).unwrap(), BeatReply::Ok { .. }));
    fixture::run(&mut nodes, heal + Duration::from_millis(500), &cut);
    assert!(live_on_both(&nodes, &k), "the client's register lost to its older deregistration");
    assert!(matches!(nodes[0].heartbeat_after(heal, &k, token).unwrap(), BeatReply::Ok { .. }));
    assert_eq!(nodes[0].digest(), nodes[1].digest());
}

#[test]
fn a_beat_without_a_token_is_taken_against_whatever_registration_is_held() {
    let mut nodes = pair();
    run(&mut nodes, Timestamp::from_millis(10));
    let k = key();
    nodes[0].register(Timestamp::from_millis(1_000), RegisterRequest::new(k.clone())).unwrap();
    run(&mut nodes, Timestamp::from_millis(1_100));
    let late = nodes[0].version_counter() + 1_000_000;
    assert_eq!(
        nodes[1].heartbeat_after(Timestamp::from_millis(1_200), &k, late).unwrap(),
        BeatReply::Unknown
    );
    assert!(matches!(
        nodes[1].heartbeat_after(Timestamp::from_millis(1_200), &k, 0).unwrap(),
        BeatReply::Ok { .. }
    ));
}
