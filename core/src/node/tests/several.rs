//! Several nodes wired by hand: sync, anti-entropy, startup loading,
//! responsibility and refutation, and the refusal of bad peer messages.

use super::*;
use crate::error::RecordRejection;
use crate::record::Version;

/// Delivers every queued message at once until the cluster is quiet, dropping
/// messages for which `drop` says so.
pub(super) fn pump(nodes: &mut [Node], now: Timestamp, drop: &dyn Fn(&NodeId, &NodeId) -> bool) {
    for _ in 0..100 {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                let from = nodes[i].id().clone();
                if drop(&from, &t.to) {
                    continue;
                }
                if let Some(dst) = nodes.iter_mut().find(|n| *n.id() == t.to) {
                    let _ = dst.handle_message(now, &from, t.msg);
                }
            }
        }
        if !moved {
            return;
        }
    }
    panic!("cluster did not go quiet");
}

pub(super) fn no_drop(_: &NodeId, _: &NodeId) -> bool {
    false
}

/// Advances every node to `until`, handling timeouts and delivering messages.
pub(super) fn run_cluster(nodes: &mut [Node], until: Timestamp, drop: &dyn Fn(&NodeId, &NodeId) -> bool) {
    loop {
        let next = nodes.iter().filter_map(|n| n.poll_timeout()).map(|(t, _)| t).min();
        match next {
            Some(t) if t <= until => {
                for n in nodes.iter_mut() {
                    n.handle_timeout(t);
                }
                pump(nodes, t, drop);
            }
            _ => break,
        }
    }
    for n in nodes.iter_mut() {
        n.handle_timeout(until);
    }
    pump(nodes, until, drop);
    for n in nodes.iter() {
        n.check_invariants();
    }
}

#[test]
fn a_cold_cluster_becomes_ready_when_every_peer_is_starting_too() {
    let mut nodes = cluster(3);
    assert!(nodes.iter().all(|n| !n.is_ready()));
    let err = nodes[0].register(at(0), RegisterRequest::new(key("a", "10.0.0.1", 1))).unwrap_err();
    assert_eq!(err, RequestError::NotReady);
    run_cluster(&mut nodes, at(10), &no_drop);
    assert!(nodes.iter().all(Node::is_ready));
}

#[test]
fn a_registration_reaches_every_peer_after_the_sync_delay() {
    let mut nodes = cluster(3);
    run_cluster(&mut nodes, at(10), &no_drop);
    let k = key("orders", "10.0.0.1", 8080);
    register(&mut nodes[0], at(10), &k);
    run_cluster(&mut nodes, at(20), &no_drop);
    for n in &mut nodes {
        assert_eq!(all(n, at(20), "orders").len(), 1, "on {}", n.id());
    }
    let roots: Vec<u64> = nodes.iter().map(|n| n.digest().root()).collect();
    assert!(roots.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn anti_entropy_repairs_a_lost_delta() {
    let mut nodes = cluster(2);
    run_cluster(&mut nodes, at(10), &no_drop);
    register(&mut nodes[0], at(10), &key("orders", "10.0.0.1", 1));
    // Lose the delta, and only the delta.
    for _ in 0..20 {
        nodes[0].handle_timeout(at(20));
        while nodes[0].poll_transmit().is_some() {}
    }
    assert!(all(&mut nodes[1], at(20), "orders").is_empty());
    run_cluster(&mut nodes, secs(7), &no_drop);
    assert_eq!(all(&mut nodes[1], secs(7), "orders").len(), 1);
    assert!(nodes[0].stats().anti_entropy_repairs + nodes[1].stats().anti_entropy_repairs > 0);
}

#[test]
fn a_restarted_node_loads_the_registry_before_it_is_ready() {
    let mut nodes = cluster(3);
    run_cluster(&mut nodes, at(10), &no_drop);
    for i in 0..5 {
        register(&mut nodes[0], at(10), &key("orders", &format!("10.0.0.{i}"), 1));
    }
    run_cluster(&mut nodes, at(20), &no_drop);
    let counter_before = nodes[2].version_counter();
    // n3 restarts with empty memory.
    let mut c = nodes[2].config().clone();
    c.limits.max_records_per_message = 2; // several snapshot pages
    c.wall_clock_ms -= 5_000; // and its wall clock went back,
    c.timings.max_clock_skew = Duration::from_secs(10); // within the tolerated skew
    nodes[2] = Node::new(c, at(20)).unwrap();
    assert!(!nodes[2].is_ready());
    run_cluster(&mut nodes, at(30), &no_drop);
    assert!(nodes[2].is_ready());
    assert_eq!(all(&mut nodes[2], at(30), "orders").len(), 5);
    assert!(nodes[2].version_counter() >= counter_before, "versions never go backwards");
    // Its next write wins over the old ones everywhere.
    nodes[2].deregister(at(30), &key("orders", "10.0.0.0", 1)).unwrap();
    run_cluster(&mut nodes, at(40), &no_drop);
    for n in &mut nodes {
        assert_eq!(all(n, at(40), "orders").len(), 4);
    }
}

#[test]
fn beats_to_a_node_that_is_not_responsible_keep_the_instance_alive() {
    let mut nodes = cluster(3);
    run_cluster(&mut nodes, at(10), &no_drop);
    // Pick an instance whose owner is not n1, and beat only to n1.
    let k = (0..100)
        .map(|i| key("orders", &format!("10.0.1.{i}"), 1))
        .find(|k| nodes[0].responsible_for(k) != *nodes[0].id())
        .unwrap();
    register(&mut nodes[0], at(10), &k);
    for s in 1..=60 {
        run_cluster(&mut nodes, secs(s), &no_drop);
        if s % 5 == 0 {
            nodes[0].heartbeat(secs(s), &k).unwrap();
        }
    }
    for n in &mut nodes {
        assert_eq!(healthy(n, secs(60), "orders").len(), 1, "on {}", n.id());
    }
    assert!(nodes[0].stats().beats_forwarded > 0);
}

#[test]
fn a_down_peer_loses_responsibility_and_its_instances_expire_elsewhere() {
    let mut nodes = cluster(3);
    run_cluster(&mut nodes, at(10), &no_drop);
    let k = (0..100)
        .map(|i| key("orders", &format!("10.0.2.{i}"), 1))
        .find(|k| nodes[0].responsible_for(k) == *nodes[2].id())
        .unwrap();
    register(&mut nodes[0], at(10), &k);
    run_cluster(&mut nodes, at(20), &no_drop);
    // n3 dies (we stop driving it and drop everything to and from it).
    let dead = nodes.pop().unwrap().id().clone();
    let cut = |a: &NodeId, b: &NodeId| *a == dead || *b == dead;
    let mut alive = nodes;
    run_cluster(&mut alive, secs(10), &cut);
    assert_eq!(alive[0].peer_state(&dead), Some(PeerState::Down));
    assert_ne!(alive[0].responsible_for(&k), dead);
    run_cluster(&mut alive, secs(60), &cut);
    for n in &mut alive {
        assert!(all(n, secs(60), "orders").is_empty(), "expired on {}", n.id());
    }
}

#[test]
fn a_node_that_hears_the_beats_refutes_a_wrong_expiry() {
    let mut nodes = cluster(2);
    run_cluster(&mut nodes, at(10), &no_drop);
    let k = (0..100)
        .map(|i| key("orders", &format!("10.0.3.{i}"), 1))
        .find(|k| nodes[0].responsible_for(k) == *nodes[1].id())
        .unwrap();
    register(&mut nodes[0], at(10), &k);
    run_cluster(&mut nodes, at(20), &no_drop);
    // Forwarded beats from n1 to n2 are lost, everything else flows.
    let n1 = nodes[0].id().clone();
    for s in 1..=40 {
        nodes[0].heartbeat(secs(s), &k).unwrap();
        run_cluster_filtered(&mut nodes, secs(s), &n1);
    }
    for n in &mut nodes {
        assert_eq!(all(n, secs(40), "orders").len(), 1, "alive on {}", n.id());
    }
    assert!(nodes[0].stats().registry.refuted > 0);
}

#[test]
fn an_unhealthy_state_a_client_registered_is_not_refuted_by_a_node_that_heard_its_beats() {
    let mut nodes = cluster(2);
    run_cluster(&mut nodes, at(10), &no_drop);
    let k = key("orders", "10.0.3.200", 1);
    register(&mut nodes[0], at(10), &k);
    run_cluster(&mut nodes, at(20), &no_drop);
    nodes[1].heartbeat(at(20), &k).unwrap();
    run_cluster(&mut nodes, at(30), &no_drop);
    // The client states its instance unhealthy on the node that did not take the beat.
    let mut req = RegisterRequest::new(k.clone());
    req.healthy = Some(false);
    req.health_reported = true;
    nodes[0].register(at(30), req).unwrap();
    run_cluster(&mut nodes, at(100), &no_drop);
    for n in &mut nodes {
        assert!(healthy(n, at(100), "orders").is_empty(), "still unhealthy on {}", n.id());
        assert_eq!(all(n, at(100), "orders").len(), 1);
    }
    assert_eq!(nodes[1].stats().registry.refuted, 0);
    // Its next beat, on any node, lifts it.
    nodes[1].heartbeat(at(200), &k).unwrap();
    run_cluster(&mut nodes, at(300), &no_drop);
    for n in &mut nodes {
        assert_eq!(healthy(n, at(300), "orders").len(), 1, "healthy again on {}", n.id());
    }
}

/// Like `run_cluster`, but drops `Beats` messages sent by `from`.
fn run_cluster_filtered(nodes: &mut [Node], until: Timestamp, from: &NodeId) {
    loop {
        let next = nodes.iter().filter_map(|n| n.poll_timeout()).map(|(t, _)| t).min();
        let now = match next {
            Some(t) if t <= until => t,
            _ => until,
        };
        for n in nodes.iter_mut() {
            n.handle_timeout(now);
        }
        for _ in 0..100 {
            let mut moved = false;
            for i in 0..nodes.len() {
                while let Some(t) = nodes[i].poll_transmit() {
                    moved = true;
                    let sender = nodes[i].id().clone();
                    if sender == *from && matches!(t.msg, PeerMessage::Beats { .. }) {
                        continue;
                    }
                    if let Some(dst) = nodes.iter_mut().find(|n| *n.id() == t.to) {
                        let _ = dst.handle_message(now, &sender, t.msg);
                    }
                }
            }
            if !moved {
                break;
            }
        }
        if now >= until {
            return;
        }
    }
}

#[test]
fn messages_from_strangers_and_oversized_messages_are_refused() {
    let mut nodes = cluster(2);
    let stranger = id("x:1");
    let err =
        nodes[0].handle_message(at(0), &stranger, PeerMessage::Ping { nonce: 1, sent_ms: 0 }).unwrap_err();
    assert!(matches!(err, MessageError::UnknownPeer(_)));
    let peer = nodes[1].id().clone();
    let beats = vec![
        ForwardedBeat { key: key("a", "10.0.0.1", 1), age_ms: 0 };
        nodes[0].config().limits.max_incoming_records + 1
    ];
    let err = nodes[0].handle_message(at(0), &peer, PeerMessage::Beats { beats }).unwrap_err();
    assert!(matches!(err, MessageError::TooLarge { .. }));
}

#[test]
fn records_from_the_far_future_are_refused() {
    let mut nodes = cluster(2);
    run_cluster(&mut nodes, at(10), &no_drop);
    let peer = nodes[1].id().clone();
    let future = Version::client((1_700_000_000_000u64 + 7_200_000) << 16, peer.clone());
    let record = Record::Service {
        key: svc("orders"),
        version: future,
        state: crate::record::ServiceState::Live(Default::default()),
    };
    let err =
        nodes[0].handle_message(at(20), &peer, PeerMessage::Delta { records: vec![record] }).unwrap_err();
    let MessageError::RecordsRejected { rejected: 1, first } = err else { panic!("{err:?}") };
    assert!(matches!(first, RecordRejection::AheadOfClock { .. }), "{first:?}");
    assert!(nodes[0].records().is_empty());
}

#[test]
fn records_refused_by_a_peer_say_why_as_typed_errors_and_the_valid_ones_merge() {
    let mut config = Config::new(id("n0:1"));
    config.peers = vec![id("n1:1")];
    config.limits.max_instances = 1;
    config.wall_clock_ms = 1_700_000_000_000;
    let mut node = Node::new(config, at(0)).unwrap();
    let peer = id("n1:1");
    let _ =
        node.handle_message(at(0), &peer, PeerMessage::Snapshot { records: vec![], next: None, ready: true });
    assert!(node.is_ready());
    let version = |c: u64| Version::client((1_700_000_000_000u64 << 16) + c, peer.clone());
    let instance = |port: i64, weight: f64| Record::Instance {
        key: key("orders", "10.0.0.1", port),
        version: version(port as u64),
        state: crate::record::InstanceState::Live(crate::model::InstanceData {
            weight,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata: Default::default(),
        }),
    };
    // A weight out of range: refused as invalid, naming the field.
    let records = vec![instance(1, -1.0), instance(2, 1.0), instance(3, 1.0)];
    let err = node.handle_message(at(10), &peer, PeerMessage::Delta { records }).unwrap_err();
    let MessageError::RecordsRejected { rejected, first } = err else { panic!("{err:?}") };
    assert_eq!(rejected, 2, "the bad weight and the instance over max_instances");
    let RecordRejection::Invalid(invalid) = first else { panic!("{first:?}") };
    assert_eq!(invalid.field, crate::error::Field::Weight);
    assert_eq!(node.live_instances().len(), 1, "the valid record merged");
    // Over the limit alone: refused as a limit, named as in the configuration.
    let err = node
        .handle_message(at(20), &peer, PeerMessage::Delta { records: vec![instance(4, 1.0)] })
        .unwrap_err();
    let MessageError::RecordsRejected { rejected: 1, first } = err else { panic!("{err:?}") };
    assert_eq!(first, RecordRejection::LimitExceeded { what: "max_instances", limit: 1 });
    assert_eq!(node.stats().registry.rejected, 3);
    node.check_invariants();
}

#[test]
fn a_late_snapshot_from_a_peer_asked_earlier_is_taken() {
    let mut nodes = cluster(3);
    run_cluster(&mut nodes, at(10), &no_drop);
    register(&mut nodes[1], at(10), &key("orders", "10.0.0.1", 1));
    register(&mut nodes[2], at(10), &key("orders", "10.0.0.2", 1));
    run_cluster(&mut nodes, at(20), &no_drop);
    let c = nodes[0].config().clone();
    let mut fresh = Node::new(c, at(20)).unwrap();
    let first = fresh.poll_transmit().unwrap();
    assert!(matches!(first.msg, PeerMessage::SnapshotRequest { cursor: 0 }));
    // Nobody answers within the retry: the next peer is asked.
    fresh.handle_timeout(at(20) + Duration::from_secs(1));
    let second: Vec<Transmit> = std::iter::from_fn(|| fresh.poll_transmit())
        .filter(|t| matches!(t.msg, PeerMessage::SnapshotRequest { .. }))
        .collect();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].to, first.to);
    // Then the first peer's answer arrives, late.
    let late = nodes.iter_mut().find(|n| *n.id() == first.to).unwrap();
    let peer_id = late.id().clone();
    late.handle_message(at(1_500), &id("n1:1"), first.msg).unwrap();
    let page = std::iter::from_fn(|| late.poll_transmit()).find(|t| t.to == id("n1:1")).unwrap();
    fresh.handle_message(at(21_500), &peer_id, page.msg).unwrap();
    assert!(fresh.is_ready());
    assert_eq!(all(&mut fresh, at(21_500), "orders").len(), 2);
}
