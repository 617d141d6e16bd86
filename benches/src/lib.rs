//! Fixtures shared by the Muster benchmarks (`benches/benches.rs` and
//! `benches/memory.rs`).
//!
//! Everything here is deterministic: keys are a pure function of their
//! index, nodes run with a fixed seed, time is passed explicitly, and no
//! socket or clock is touched. Only the pure core (`muster-core`) is
//! exercised.
//!
//! Fixture functions panic on a refused request: a benchmark of a failing
//! operation would measure the error path, not the operation.

use std::collections::BTreeMap;

use muster_core::{
    Config, InstanceData, InstanceKey, InstanceState, Metadata, Node, NodeId, PeerMessage, Record,
    RegisterRequest, ServiceKey, Timestamp, Version,
};

/// The seed of every benchmark node.
pub const SEED: u64 = 0x6d75_7374_6572;

/// The bits of a version counter below the wall-clock milliseconds
/// (`muster_core::record::LOGICAL_BITS`).
const LOGICAL_BITS: u32 = 16;

/// The id of the node under test.
pub fn node_id() -> NodeId {
    NodeId::parse("10.0.0.1:8848").expect("valid node id")
}

/// The id of the one peer of the node under test, where it has one.
pub fn peer_id() -> NodeId {
    NodeId::parse("10.0.0.2:8848").expect("valid node id")
}

/// A configuration with room for `capacity` instances in one node, one
/// service or one call, and the expiry brake off (`share = 1.0`), so that
/// neither a limit nor the brake shapes what is measured.
pub fn config(capacity: usize) -> Config {
    let mut c = Config::new(node_id());
    c.seed = SEED;
    let l = &mut c.limits;
    l.max_instances = l.max_instances.max(capacity);
    l.max_instances_per_service = l.max_instances_per_service.max(capacity);
    l.max_services = l.max_services.max(capacity);
    l.max_timeouts_per_call = l.max_timeouts_per_call.max(capacity);
    l.max_batch_beats = l.max_batch_beats.max(capacity);
    l.max_incoming_records = l.max_incoming_records.max(capacity);
    l.max_pending_changes = l.max_pending_changes.max(capacity);
    // The core requires room for one input's worth of events.
    l.max_queued_events = l.max_queued_events.max(l.max_timeouts_per_call).max(l.max_incoming_records);
    c.brake.share = 1.0;
    c
}

/// A single node (no peers), ready at once.
pub fn standalone(capacity: usize) -> Node {
    let mut node = Node::new(config(capacity), Timestamp::ZERO).expect("valid config");
    drain(&mut node);
    assert!(node.is_ready(), "a node without peers is ready at once");
    node
}

/// A node with one peer ([`peer_id`]), made ready by an empty last snapshot
/// page from that peer, as a node joining an empty cluster would be.
pub fn with_peer(capacity: usize) -> Node {
    let mut config = config(capacity);
    config.peers = vec![peer_id()];
    let mut node = Node::new(config, Timestamp::ZERO).expect("valid config");
    let ready = PeerMessage::Snapshot { records: Vec::new(), next: None, ready: true };
    node.handle_message(Timestamp::ZERO, &peer_id(), ready).expect("empty snapshot accepted");
    drain(&mut node);
    assert!(node.is_ready(), "an empty last snapshot page makes the node ready");
    node
}

/// Drains everything the node produced, as a driver does after every input;
/// returns how many transmits and events there were.
pub fn drain(node: &mut Node) -> usize {
    let mut n = 0;
    while node.poll_transmit().is_some() {
        n += 1;
    }
    while node.poll_event().is_some() {
        n += 1;
    }
    n
}

/// The name of service `s`.
pub fn service_name(s: usize) -> String {
    format!("svc-{s:04}")
}

/// The key of service `s` (default namespace and group).
pub fn service_key(s: usize) -> ServiceKey {
    ServiceKey::parse(None, None, &service_name(s)).expect("valid service key")
}

/// The host of instance `i`: a distinct IPv4 address for every `i` below 2^24.
pub fn instance_ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// The port of every benchmark instance.
pub const PORT: i64 = 8080;

/// The key of instance `i` of a registry of `services` services: service
/// `i % services`, default cluster, host [`instance_ip`]. Every call parses
/// afresh (new shared strings), as a transport does for every request.
pub fn instance_key(services: usize, i: usize) -> InstanceKey {
    InstanceKey::parse(service_key(i % services), None, &instance_ip(i), PORT).expect("valid instance key")
}

/// The keys of instances `0..n`.
pub fn instance_keys(services: usize, n: usize) -> Vec<InstanceKey> {
    (0..n).map(|i| instance_key(services, i)).collect()
}

/// The metadata every benchmark instance carries: two entries, as a typical
/// client sets (a version and a zone).
pub fn metadata_map() -> BTreeMap<String, String> {
    [("version", "1.4.2"), ("zone", "eu-west-1a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Bytes of the keys and values of [`metadata_map`].
pub fn metadata_bytes() -> usize {
    metadata_map().iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The registration of instance `i` (see [`instance_key`]) with [`metadata_map`].
pub fn register_request(services: usize, i: usize) -> RegisterRequest {
    let mut req = RegisterRequest::new(instance_key(services, i));
    req.metadata = metadata_map();
    req
}

/// Registers instances `0..n` over `services` services at `now`, draining
/// after every call.
pub fn populate(node: &mut Node, services: usize, n: usize, now: Timestamp) {
    for i in 0..n {
        node.register(now, register_request(services, i)).expect("registration accepted");
        drain(node);
    }
}

/// A client-decided version written by `origin` at wall-clock millisecond
/// `ms`, `logical` within it.
pub fn version(origin: &NodeId, ms: u64, logical: u64) -> Version {
    Version::client((ms << LOGICAL_BITS) | (logical & 0xffff), origin.clone())
}

/// The live record of instance `i` as a peer would send it, written at
/// wall-clock millisecond `ms` by `origin`.
pub fn instance_record(services: usize, i: usize, origin: &NodeId, ms: u64) -> Record {
    Record::Instance {
        key: instance_key(services, i),
        version: version(origin, ms, i as u64),
        state: InstanceState::Live(InstanceData {
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata: Metadata::from_map(metadata_map()).expect("fixture metadata is valid"),
        }),
    }
}

/// The records of instances `0..k` (see [`instance_record`]).
pub fn instance_records(services: usize, k: usize, origin: &NodeId, ms: u64) -> Vec<Record> {
    (0..k).map(|i| instance_record(services, i, origin, ms)).collect()
}

/// Checks the node's structural invariants where the core compiles them in
/// (debug builds, such as `cargo test --benches`); nothing in release.
pub fn check(node: &Node) {
    #[cfg(debug_assertions)]
    node.check_invariants();
    #[cfg(not(debug_assertions))]
    let _ = node;
}
