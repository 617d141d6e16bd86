//! Full queues (issue 9, defect 6): forwarded beats refused by a full queue
//! are counted, and a full transmit queue never loses a snapshot page.

use super::fixture::{Cut, cluster_with, id, pump};
use super::*;
use crate::model::ServiceKey;

fn none() -> &'static Cut {
    &|_, _, _| false
}

#[test]
fn forwarded_beats_refused_by_a_full_queue_are_counted() {
    let mut nodes = cluster_with(2, |c| c.limits.max_forwarded_beats = 2);
    let t = Timestamp::from_millis(10);
    for n in nodes.iter_mut() {
        n.handle_timeout(t);
    }
    pump(&mut nodes, t, none());
    assert!(nodes.iter().all(Node::is_ready));
    let n2 = nodes[1].id().clone();
    let service = ServiceKey::parse(None, None, "orders").unwrap();
    // Instances n2 is responsible for, beaten on n1: their beats go to n2.
    let keys: Vec<InstanceKey> = (0..100)
        .map(|i| InstanceKey::parse(service.clone(), None, &format!("10.0.0.{}", i + 1), 80).unwrap())
        .filter(|k| nodes[0].responsible_for(k) == n2)
        .take(5)
        .collect();
    assert_eq!(keys.len(), 5);
    for k in &keys {
        nodes[0].register(t, RegisterRequest::new(k.clone())).unwrap();
    }
    nodes[0].heartbeat_batch(t, &keys).unwrap();
    assert_eq!(nodes[0].stats().beats_dropped, 3, "two queued, three refused and counted");
}

#[test]
fn a_full_transmit_queue_never_drops_a_snapshot_page() {
    let mut c = Config::new(id("n1:1"));
    c.peers = vec![id("n2:1")];
    c.limits.max_queued_transmits = 3;
    let mut n = Node::new(c, Timestamp::ZERO).unwrap();
    let peer = id("n2:1");
    // n1 gives up waiting for n2 and serves alone.
    n.handle_timeout(Timestamp::from_millis(6_000));
    assert!(n.is_ready());
    while n.poll_transmit().is_some() {}
    let now = Timestamp::from_millis(6_001);
    n.handle_message(now, &peer, PeerMessage::SnapshotRequest { cursor: 0 }).unwrap();
    for nonce in 0..10 {
        n.handle_message(now, &peer, PeerMessage::Ping { nonce, sent_ms: 0 }).unwrap();
    }
    let out: Vec<PeerMessage> = std::iter::from_fn(|| n.poll_transmit()).map(|t| t.msg).collect();
    assert_eq!(out.len(), 3);
    assert!(out.iter().any(|m| matches!(m, PeerMessage::Snapshot { .. })), "{out:?}");
    assert!(n.stats().transmits_dropped >= 8);
}
