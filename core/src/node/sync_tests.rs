//! Anti-entropy at the sizes users run: differences larger than one message
//! settle in a bounded number of rounds, with bytes proportional to the
//! difference.

use super::fixture::cluster_with;
use super::*;
use crate::message::encode;
use crate::model::ServiceKey;

fn pair() -> Vec<Node> {
    cluster_with(2, |c| {
        c.limits.max_instances = 200_000;
        c.limits.max_instances_per_service = 200_000;
        c.limits.max_pending_checks = 200_000;
    })
}

/// A persistent instance (no expiry by silence, so the store stays put).
fn persistent(i: usize) -> RegisterRequest {
    let service = ServiceKey::parse(None, None, &format!("svc-{}", i % 50)).unwrap();
    let k = InstanceKey::parse(service, None, &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255), 80)
        .unwrap();
    let mut r = RegisterRequest::new(k);
    r.ephemeral = Some(false);
    r
}

/// Delivers messages until quiet; `cut` drops everything between the nodes.
/// Returns the bytes of the anti-entropy messages delivered.
fn pump(nodes: &mut [Node], now: Timestamp, cut: bool) -> u64 {
    let mut bytes = 0;
    loop {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                let from = nodes[i].id().clone();
                if cut {
                    continue;
                }
                if !matches!(t.msg, PeerMessage::Ping { .. } | PeerMessage::Ack { .. }) {
                    bytes += encode(&from, &t.msg).len() as u64;
                }
                if let Some(dst) = nodes.iter_mut().find(|n| *n.id() == t.to) {
                    let _ = dst.handle_message(now, &from, t.msg);
                }
            }
            while nodes[i].poll_event().is_some() {}
            while nodes[i].poll_health_check().is_some() {}
        }
        if !moved {
            return bytes;
        }
    }
}

fn run(nodes: &mut [Node], until: Timestamp, cut: bool) -> u64 {
    let mut bytes = 0;
    loop {
        let next = nodes.iter().filter_map(|n| n.poll_timeout()).map(|(t, _)| t).min();
        match next {
            Some(t) if t <= until => {
                for n in nodes.iter_mut() {
                    n.handle_timeout(t);
                }
                bytes += pump(nodes, t, cut);
            }
            _ => break,
        }
    }
    for n in nodes.iter_mut() {
        n.handle_timeout(until);
    }
    bytes + pump(nodes, until, cut)
}

fn agree(nodes: &[Node]) -> bool {
    nodes[0].digest() == nodes[1].digest()
}

/// Runs anti-entropy in steps of one interval until the nodes agree; the
/// rounds (intervals) it took and the bytes sent, or `None` past `max_rounds`.
fn settle(nodes: &mut [Node], from: Timestamp, max_rounds: u64) -> Option<(u64, u64)> {
    let mut bytes = 0;
    for round in 1..=max_rounds {
        bytes += run(nodes, from + Duration::from_secs(5 * round + 1), false);
        if agree(nodes) {
            return Some((round, bytes));
        }
    }
    None
}

#[test]
fn a_hundred_registrations_made_during_a_partition_reach_a_node_holding_ten_thousand() {
    let mut nodes = pair();
    let t0 = Timestamp::from_millis(10);
    run(&mut nodes, t0, false);
    for i in 0..10_000 {
        nodes[0].register(t0, persistent(i)).unwrap();
    }
    run(&mut nodes, Timestamp::from_millis(100), false);
    assert!(agree(&nodes), "the initial deltas got through");
    // A partition of 10 s; 100 registrations on one side.
    let cut_at = Timestamp::from_millis(1_000);
    run(&mut nodes, cut_at, true);
    for i in 10_000..10_100 {
        nodes[0].register(cut_at, persistent(i)).unwrap();
    }
    let heal = cut_at + Duration::from_secs(10);
    run(&mut nodes, heal, true);
    assert!(!agree(&nodes));
    let (rounds, bytes) = settle(&mut nodes, heal, 24).expect("the difference never settled");
    assert_eq!(nodes[1].stats().registry.instances, 10_100);
    // Proportional to the difference: a 10,100-record store costs ~100 bytes
    // per record to send whole; the repair sends a small fraction of that.
    assert!(rounds <= 3, "{rounds} rounds");
    assert!(bytes < 200_000, "{bytes} bytes for 100 records");
}

#[test]
fn a_node_that_started_alone_loads_five_thousand_records_through_anti_entropy() {
    let mut nodes = pair();
    // Both start alone (each other unreachable past startup_timeout).
    run(&mut nodes, Timestamp::from_millis(6_000), true);
    assert!(nodes.iter().all(Node::is_ready));
    let now = Timestamp::from_millis(6_000);
    for i in 0..5_000 {
        nodes[0].register(now, persistent(i)).unwrap();
    }
    run(&mut nodes, Timestamp::from_millis(7_000), true);
    // 2,000 records per message: five thousand take at most a few rounds.
    let (rounds, _) = settle(&mut nodes, Timestamp::from_millis(7_000), 12).expect("never loaded");
    assert_eq!(nodes[1].stats().registry.instances, 5_000);
    assert!(rounds <= 6, "{rounds} rounds");
}

/// Two nodes that started alone; the first then takes `records`
/// registrations the second does not see.
fn apart(records: usize, follow_ups: usize) -> Vec<Node> {
    let mut nodes = cluster_with(2, |c| {
        c.limits.max_instances = 200_000;
        c.limits.max_instances_per_service = 200_000;
        c.limits.max_pending_checks = 200_000;
        c.limits.max_follow_up_rounds = follow_ups;
    });
    run(&mut nodes, Timestamp::from_millis(6_000), true);
    let now = Timestamp::from_millis(6_000);
    for i in 0..records {
        nodes[0].register(now, persistent(i)).unwrap();
    }
    run(&mut nodes, Timestamp::from_millis(7_000), true);
    nodes
}

#[test]
fn a_difference_of_fifteen_pages_repairs_within_one_interval() {
    // 30,000 records, 2,000 per message: one page per interval took 15
    // intervals (seed 9589: 74,000 records, 95 s). Each exchange cut short
    // by the page size is followed at once by the next.
    let mut nodes = apart(30_000, 16);
    let (rounds, bytes) = settle(&mut nodes, Timestamp::from_millis(7_000), 20).expect("never loaded");
    assert_eq!(nodes[1].stats().registry.instances, 30_000);
    assert_eq!(rounds, 1, "{rounds} intervals");
    // One chain of exchanges: fourteen follow-ups after the first round, no
    // page sent twice.
    let follow_ups: u64 = nodes.iter().map(|n| n.stats().anti_entropy_follow_ups).sum();
    assert!((14..=16).contains(&follow_ups), "{follow_ups} follow-up rounds");
    // Still proportional to the difference: 137 bytes per record measured;
    // two chains (each page twice) cost 214.
    assert!(bytes < 30_000 * 160, "{bytes} bytes");
}

#[test]
fn follow_up_rounds_stop_at_their_budget_and_go_on_at_the_next_interval() {
    let mut nodes = apart(30_000, 2);
    let (rounds, _) = settle(&mut nodes, Timestamp::from_millis(7_000), 20).expect("never loaded");
    assert_eq!(nodes[1].stats().registry.instances, 30_000);
    // Three pages per interval (one round and two follow-ups): 15 pages take 5.
    assert!((4..=6).contains(&rounds), "{rounds} intervals");
}

#[test]
fn nodes_in_agreement_start_no_follow_up_rounds() {
    let mut nodes = apart(1_000, 16);
    settle(&mut nodes, Timestamp::from_millis(7_000), 3).expect("never loaded");
    run(&mut nodes, Timestamp::from_millis(60_000), false);
    assert!(agree(&nodes));
    assert_eq!(nodes.iter().map(|n| n.stats().anti_entropy_follow_ups).sum::<u64>(), 0);
}
