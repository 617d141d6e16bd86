//! The order of client writes across nodes: an acknowledged write is never
//! lost to an older one.

use super::fixture::{self, cluster, id};
use super::*;
use crate::config::Config;
use crate::model::ServiceKey;

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

fn run(nodes: &mut [Node], until: Timestamp) {
    while let Some(t) = nodes.iter().filter_map(|n| n.poll_timeout()).map(|(t, _)| t).min() {
        if t > until {
            break;
        }
        for n in nodes.iter_mut() {
            n.handle_timeout(t);
        }
        pump(nodes, t);
    }
    for n in nodes.iter_mut() {
        n.handle_timeout(until);
    }
    pump(nodes, until);
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
