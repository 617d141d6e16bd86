//! Grace periods belong to the instances whose responsible node changed, not
//! to the whole registry.

use super::fixture::{Cut, cluster, run};
use super::*;
use crate::model::ServiceKey;

#[test]
fn a_flapping_link_does_not_keep_a_dead_clients_instance_alive() {
    let mut nodes = cluster(3);
    let none: &Cut = &|_, _, _| false;
    run(&mut nodes, Timestamp::from_millis(10), none);
    let (a, b) = (nodes[0].id().clone(), nodes[1].id().clone());
    // Instances n1 is responsible for, whose clients die at once.
    let service = ServiceKey::parse(None, None, "orders").unwrap();
    let keys: Vec<InstanceKey> = (0..200)
        .map(|i| InstanceKey::parse(service.clone(), None, &format!("10.0.{}.{}", i / 200, i % 200 + 1), 80))
        .map(Result::unwrap)
        .filter(|k| nodes[0].responsible_for(k) == a)
        .take(5)
        .collect();
    assert!(!keys.is_empty());
    let t0 = Timestamp::from_millis(1_000);
    for k in &keys {
        nodes[0].register(t0, RegisterRequest::new(k.clone())).unwrap();
    }
    // The link n1 - n2 is cut 7 s of every 10 s, for good.
    let flap: &Cut = &move |now, from, to| {
        let pair = (*from == a && *to == b) || (*from == b && *to == a);
        pair && now.as_millis() % 10_000 < 7_000
    };
    let deadline = t0 + Duration::from_secs(90);
    run(&mut nodes, deadline, flap);
    for n in &nodes {
        for k in &keys {
            assert!(!n.live_instances().contains_key(k), "{k} still live on {} after 90 s", n.id());
        }
    }
    assert!(nodes[0].stats().registry.expired > 0);
}
