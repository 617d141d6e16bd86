//! The Sync Manager on its own: fed by a Service Manager and a membership
//! built here, without a `Node`.

use super::*;
use crate::config::Config;
use crate::model::ServiceKey;
use crate::request::RegisterRequest;

fn id(s: &str) -> NodeId {
    NodeId::parse(s).unwrap()
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

struct Parts {
    config: Config,
    registry: ServiceManager,
    members: Membership,
    sync: SyncManager,
}

fn parts(peers: &[&str], tweak: impl FnOnce(&mut Config)) -> Parts {
    let mut config = Config::new(id("a:1"));
    config.peers = peers.iter().map(|p| id(p)).collect();
    config.wall_clock_ms = 1_700_000_000_000;
    tweak(&mut config);
    let c = &config;
    let registry = ServiceManager::new(
        c.node_id.clone(),
        c.wall_clock_ms,
        c.timings.clone(),
        c.limits.clone(),
        c.brake.clone(),
    );
    let members = Membership::new(c.node_id.clone(), &c.peers, &c.timings, at(0));
    let sync = SyncManager::new(c, at(0));
    Parts { config, registry, members, sync }
}

fn register(p: &mut Parts, now: Timestamp, port: i64) {
    let key =
        InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", port).unwrap();
    p.registry.register(now, RegisterRequest::new(key)).unwrap();
}

fn transmits(sync: &mut SyncManager) -> Vec<Transmit> {
    std::iter::from_fn(|| sync.poll_transmit()).collect()
}

/// Answers the startup snapshot request as a ready peer with nothing.
fn make_ready(p: &mut Parts) {
    let asked = transmits(&mut p.sync);
    assert!(matches!(asked[..], [Transmit { msg: PeerMessage::SnapshotRequest { cursor: 0 }, .. }]));
    let from = asked[0].to.clone();
    let page = PeerMessage::Snapshot { records: Vec::new(), next: None, ready: true };
    p.sync.handle_message(at(0), &from, page, &mut p.registry, &p.members).unwrap();
    assert_eq!(p.sync.poll_event(), Some(Event::Ready { loaded_from: Some(from) }));
    assert!(p.sync.is_ready());
}

#[test]
fn local_changes_leave_as_one_delta_per_peer_after_the_sync_delay() {
    let mut p = parts(&["b:1", "c:1"], |_| {});
    make_ready(&mut p);
    register(&mut p, at(10), 1);
    register(&mut p, at(10), 2);
    p.sync.handle_local_changes(at(10), &mut p.registry, true);
    assert_eq!(p.sync.pending_len(), 2);
    let delay = p.config.timings.sync_delay;
    assert_eq!(p.sync.poll_timeout(true), Some((at(10) + delay, TimerKind::Flush)));
    p.sync.handle_timeout(at(10) + delay, &p.registry, &p.members);
    let out = transmits(&mut p.sync);
    let to: Vec<&str> = out.iter().map(|t| t.to.as_str()).collect();
    assert_eq!(to, ["b:1", "c:1"]);
    for t in &out {
        let PeerMessage::Delta { records } = &t.msg else { panic!("{t:?}") };
        assert_eq!(records.len(), 2);
    }
    assert_eq!(p.sync.pending_len(), 0);
    assert_eq!(p.sync.stats().delta_records_out, 4);
}

#[test]
fn an_overflowing_pending_set_is_dropped_whole_and_anti_entropy_starts_at_once() {
    let mut p = parts(&["b:1"], |c| c.limits.max_pending_changes = 2);
    make_ready(&mut p);
    for port in 1..=3 {
        register(&mut p, at(10), port);
    }
    p.sync.handle_local_changes(at(10), &mut p.registry, true);
    assert_eq!(p.sync.poll_event(), Some(Event::SyncQueueOverflow { dropped: 3 }));
    assert_eq!(p.sync.pending_len(), 0);
    assert_eq!(p.sync.stats().changes_dropped, 3);
    // The flush armed by the changes comes first, then the round, due now.
    assert_eq!(p.sync.poll_timeout(true).map(|(t, _)| t), Some(at(10)));
    p.sync.handle_timeout(at(10) + p.config.timings.sync_delay, &p.registry, &p.members);
    let out = transmits(&mut p.sync);
    assert!(out.iter().any(|t| matches!(t.msg, PeerMessage::DigestRoot { .. })), "{out:?}");
    assert!(
        out.iter().all(|t| !matches!(t.msg, PeerMessage::Delta { .. })),
        "the dropped changes are not sent"
    );
}

#[test]
fn a_node_whose_peers_are_all_starting_is_ready_at_once() {
    let mut p = parts(&["b:1", "c:1"], |_| {});
    assert!(!p.sync.is_ready());
    let not_ready = || PeerMessage::Snapshot { records: Vec::new(), next: None, ready: false };
    let first = transmits(&mut p.sync).remove(0).to;
    p.sync.handle_message(at(5), &first, not_ready(), &mut p.registry, &p.members).unwrap();
    // The next peer is asked at once.
    let second = transmits(&mut p.sync).remove(0).to;
    assert_ne!(first, second);
    p.sync.handle_message(at(6), &second, not_ready(), &mut p.registry, &p.members).unwrap();
    assert_eq!(p.sync.poll_event(), Some(Event::Ready { loaded_from: None }));
    assert!(p.sync.is_ready());
}

#[test]
fn beats_for_a_peer_that_went_down_are_dropped_and_its_return_starts_a_reconcile() {
    let mut p = parts(&["b:1"], |_| {});
    make_ready(&mut p);
    register(&mut p, at(10), 1);
    let key =
        InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", 1).unwrap();
    p.sync.handle_forward(at(10), &p.registry, id("b:1"), &key);
    let down = Transition { peer: id("b:1"), from: PeerState::Suspect, to: PeerState::Down };
    p.sync.handle_peer_transition(&down, &p.registry);
    let _ = p.registry.store_mut().take_local_changes().count();
    p.sync.flush(at(20), &p.registry, &p.members);
    assert!(transmits(&mut p.sync).iter().all(|t| !matches!(t.msg, PeerMessage::Beats { .. })));
    let up = Transition { peer: id("b:1"), from: PeerState::Down, to: PeerState::Up };
    p.sync.handle_peer_transition(&up, &p.registry);
    let out = transmits(&mut p.sync);
    assert!(matches!(out[..], [Transmit { msg: PeerMessage::DigestRoot { .. }, .. }]), "{out:?}");
}
