//! Fixtures shared by the node's test modules: a cluster of nodes wired by
//! hand and the delivery of their messages.

use super::*;
use crate::config::Config;

/// A node id from its text.
pub(super) fn id(s: &str) -> NodeId {
    NodeId::parse(s).unwrap()
}

/// `n` nodes `n1:1`.. listing each other, seeded by index, with `tweak`
/// applied to each configuration.
pub(super) fn cluster_with(n: usize, tweak: impl Fn(&mut Config)) -> Vec<Node> {
    let ids: Vec<NodeId> = (1..=n).map(|i| id(&format!("n{i}:1"))).collect();
    ids.iter()
        .enumerate()
        .map(|(i, me)| {
            let mut c = Config::new(me.clone());
            c.peers = ids.iter().filter(|p| *p != me).cloned().collect();
            c.seed = i as u64;
            c.wall_clock_ms = 1_700_000_000_000;
            tweak(&mut c);
            Node::new(c, Timestamp::ZERO).unwrap()
        })
        .collect()
}

/// `n` nodes with the default configuration.
pub(super) fn cluster(n: usize) -> Vec<Node> {
    cluster_with(n, |_| {})
}

/// Whether a message sent at a time from one node to another is lost.
pub(super) type Cut = dyn Fn(Timestamp, &NodeId, &NodeId) -> bool;

/// Delivers every queued message at `now` until the nodes are quiet,
/// dropping those `cut` says are lost; events are drained and ignored.
pub(super) fn pump(nodes: &mut [Node], now: Timestamp, cut: &Cut) {
    for _ in 0..100 {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                let from = nodes[i].id().clone();
                if cut(now, &from, &t.to) {
                    continue;
                }
                if let Some(dst) = nodes.iter_mut().find(|n| *n.id() == t.to) {
                    let _ = dst.handle_message(now, &from, t.msg);
                }
            }
            while nodes[i].poll_event().is_some() {}
        }
        if !moved {
            return;
        }
    }
    panic!("the nodes did not go quiet");
}

/// Runs every node's timers in order up to `until`, delivering messages
/// (minus those `cut` loses) after each firing.
pub(super) fn run(nodes: &mut [Node], until: Timestamp, cut: &Cut) {
    while let Some(t) = nodes.iter().filter_map(|n| n.poll_timeout()).map(|(t, _)| t).min() {
        if t > until {
            break;
        }
        for n in nodes.iter_mut() {
            n.handle_timeout(t);
        }
        pump(nodes, t, cut);
    }
    for n in nodes.iter_mut() {
        n.handle_timeout(until);
    }
    pump(nodes, until, cut);
}
