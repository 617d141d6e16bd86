//! Versioned records and their merge.
//!
//! Every replicated fact (an instance, a service's settings, or the deletion
//! of either) is a [`Record`] carrying a [`Version`]: the hybrid logical
//! clock reading and node of the client write it descends from, plus the
//! number of machine judgements made on it since. Nodes converge by keeping, per key,
//! the record with the highest version (last-writer-wins register, Shapiro et
//! al., "Conflict-free Replicated Data Types", 2011, section 3.2.1). Ties on
//! the version, which a correct cluster never produces, are broken by a hash
//! of the content so that merge stays a total order and therefore
//! commutative, associative and idempotent whatever peers send.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::StableHasher;
use crate::model::{InstanceData, InstanceKey, NodeId, ServiceKey, ServiceMeta};

/// Bits of a version counter that count events within one millisecond.
pub const LOGICAL_BITS: u32 = 16;

/// Who decided a write: a client, or a registry node judging the record it
/// held (see [`Version`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Author {
    /// Derived by a registry node from the record it held.
    Registry,
    /// Asked for by a client.
    Client,
}

/// The version of a record, ordered lexicographically by
/// `(counter, origin, step, writer)`.
///
/// `(counter, origin)` name the **client write** the record descends from:
/// the hybrid logical clock reading of the node that accepted it, and that
/// node. `step` counts the machine judgements made since (0 for the client
/// write itself; an unhealthy mark, a lift, a refutation, an expiry or a
/// check result keeps the counter and origin of the record it judged and
/// takes `step + 1`). So a client write with a greater `(counter, origin)`
/// wins over every derived descendant of a smaller one, however long the
/// chain: a machine's judgement never changes which of two client writes
/// wins. `writer` is the node that made a derived write (`None` for a client
/// write, whose writer is `origin`); it only breaks ties between two nodes
/// judging the same record, so merge stays a total order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid logical clock of the client write: wall-clock milliseconds in
    /// the high bits, a logical counter in the low [`LOGICAL_BITS`] bits.
    pub counter: u64,
    /// The node that accepted the client write.
    pub origin: NodeId,
    /// Machine judgements since the client write (0: the client write).
    pub step: u32,
    /// The node that made a derived write; `None` for a client write.
    pub writer: Option<NodeId>,
}

impl Version {
    /// A client-decided version.
    pub fn client(counter: u64, origin: NodeId) -> Version {
        Version { counter, origin, step: 0, writer: None }
    }

    /// The version of `writer`'s judgement about a record of version `self`:
    /// the same client write, one step further.
    pub fn derived(&self, writer: NodeId) -> Version {
        Version {
            counter: self.counter,
            origin: self.origin.clone(),
            step: self.step.saturating_add(1),
            writer: Some(writer),
        }
    }

    /// Who decided the write: a client for step 0, else a registry.
    pub fn author(&self) -> Author {
        if self.step == 0 { Author::Client } else { Author::Registry }
    }

    /// The node that wrote this version: the deriving node, or the origin.
    pub fn writer(&self) -> &NodeId {
        self.writer.as_ref().unwrap_or(&self.origin)
    }

    /// The wall-clock millisecond part of the counter.
    pub fn physical_ms(&self) -> u64 {
        self.counter >> LOGICAL_BITS
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms(), self.counter & 0xffff, self.origin)?;
        if let Some(w) = &self.writer {
            write!(f, "+{}@{w}", self.step)?;
        } else if self.step > 0 {
            write!(f, "+{}", self.step)?;
        }
        Ok(())
    }
}

/// A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014),
/// packed in one `u64`. Readings never go backwards, exceed every counter
/// observed from peers, and start above anything the node issued before a
/// restart as long as its wall clock moved forward.
#[derive(Clone, Debug)]
pub(crate) struct Hlc {
    last: u64,
}

impl Hlc {
    pub(crate) fn new() -> Hlc {
        Hlc { last: 0 }
    }

    /// A fresh reading at wall-clock time `wall_ms`.
    pub(crate) fn tick(&mut self, wall_ms: u64) -> u64 {
        let physical = wall_ms.saturating_mul(1 << LOGICAL_BITS);
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// Takes a peer's counter into account (the Lamport receive rule).
    pub(crate) fn observe(&mut self, counter: u64) {
        self.last = self.last.max(counter);
    }

    pub(crate) fn last(&self) -> u64 {
        self.last
    }
}

/// Why an instance was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoveCause {
    /// Its client deregistered it.
    Deregistered,
    /// It stopped heartbeating and the responsible node expired it. A node that
    /// still receives its heartbeats refutes this by re-issuing the instance.
    Expired,
}

/// The state of an instance key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Registered.
    Live(InstanceData),
    /// Removed; kept as a tombstone until `at_ms + tombstone_ttl`.
    Removed {
        /// Why.
        cause: RemoveCause,
        /// Wall-clock time of the removal on the node that made it, in
        /// milliseconds since the Unix epoch.
        at_ms: u64,
    },
}

/// The state of a service key's explicit settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServiceState {
    /// Created or updated by a client.
    Live(ServiceMeta),
    /// Deleted by a client; kept as a tombstone until `at_ms + tombstone_ttl`.
    Removed {
        /// Wall-clock time of the deletion, in milliseconds since the Unix epoch.
        at_ms: u64,
    },
}

impl InstanceState {
    /// When the tombstone was made, `None` for a live instance.
    pub fn removed_at_ms(&self) -> Option<u64> {
        match self {
            InstanceState::Live(_) => None,
            InstanceState::Removed { at_ms, .. } => Some(*at_ms),
        }
    }
}

/// A replicated record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// An instance or its tombstone.
    Instance {
        /// Which instance.
        key: InstanceKey,
        /// Its version.
        version: Version,
        /// Its state.
        state: InstanceState,
    },
    /// A service's explicit settings or their tombstone.
    Service {
        /// Which service.
        key: ServiceKey,
        /// Its version.
        version: Version,
        /// Its state.
        state: ServiceState,
    },
}

impl Record {
    /// The record's version.
    pub fn version(&self) -> &Version {
        match self {
            Record::Instance { version, .. } | Record::Service { version, .. } => version,
        }
    }

    /// Whether the record is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(
            self,
            Record::Instance { state: InstanceState::Removed { .. }, .. }
                | Record::Service { state: ServiceState::Removed { .. }, .. }
        )
    }

    /// The stable hash of the record's key.
    pub fn key_hash(&self) -> u64 {
        match self {
            Record::Instance { key, .. } => key.stable_hash(),
            Record::Service { key, .. } => service_record_hash(key),
        }
    }

    /// Whether `self` and `other` are about the same key.
    pub fn same_key(&self, other: &Record) -> bool {
        match (self, other) {
            (Record::Instance { key: a, .. }, Record::Instance { key: b, .. }) => a == b,
            (Record::Service { key: a, .. }, Record::Service { key: b, .. }) => a == b,
            _ => false,
        }
    }

    /// A hash of the record's state, the tie-breaker of [`precedence`].
    pub fn state_hash(&self) -> u64 {
        match self {
            Record::Instance { state, .. } => instance_state_hash(state),
            Record::Service { state, .. } => service_state_hash(state),
        }
    }

    /// The record's contribution to the store digest: a hash of key, version
    /// and state, equal on every node holding the same record.
    pub fn digest_hash(&self) -> u64 {
        digest_hash(self.key_hash(), self.version(), self.state_hash())
    }
}

/// The hash of an instance state.
pub(crate) fn instance_state_hash(state: &InstanceState) -> u64 {
    let mut h = StableHasher::new();
    match state {
        InstanceState::Live(d) => {
            h.u64(1);
            d.hash_into(&mut h);
        }
        InstanceState::Removed { cause, at_ms } => {
            h.u64(2).u64(*cause as u64).u64(*at_ms);
        }
    }
    h.finish()
}

/// The hash of a service state.
pub(crate) fn service_state_hash(state: &ServiceState) -> u64 {
    let mut h = StableHasher::new();
    match state {
        ServiceState::Live(m) => {
            h.u64(3);
            m.hash_into(&mut h);
        }
        ServiceState::Removed { at_ms } => {
            h.u64(4).u64(*at_ms);
        }
    }
    h.finish()
}

/// The hash of a service record's key, distinct from every instance key hash.
pub(crate) fn service_record_hash(key: &ServiceKey) -> u64 {
    let mut h = StableHasher::new();
    h.u64(0x5e41_71ce);
    key.hash_into(&mut h);
    h.finish()
}

/// The digest contribution of a record given its parts.
pub(crate) fn digest_hash(key_hash: u64, version: &Version, state_hash: u64) -> u64 {
    let mut h = StableHasher::new();
    h.u64(key_hash)
        .u64(version.counter)
        .str(version.origin.as_str())
        .u64(u64::from(version.step))
        .str(version.writer.as_ref().map_or("", NodeId::as_str))
        .u64(state_hash);
    h.finish()
}

/// Orders two records of the same key: the greater one wins a merge.
///
/// By version, then by state hash. A pure function of the two records, so the
/// outcome of merging does not depend on which node runs it or in which order
/// records arrive.
pub fn precedence(a: &Record, b: &Record) -> Ordering {
    a.version().cmp(b.version()).then_with(|| a.state_hash().cmp(&b.state_hash()))
}

/// Merges two records of the same key: the one with the higher precedence.
pub fn merge(a: Record, b: Record) -> Record {
    if precedence(&b, &a) == Ordering::Greater { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Metadata, Name};
    use proptest::prelude::*;

    fn instance_record(counter: u64, origin: &str, state: u8) -> Record {
        let service = ServiceKey::parse(None, None, "svc").unwrap();
        let key = InstanceKey::parse(service, None, "10.0.0.1", 80).unwrap();
        let origin = NodeId::parse(origin).unwrap();
        let mut version = Version::client(counter, origin);
        for step in 0..state % 4 {
            let writer = if step % 2 == 0 { "b:1" } else { "c:1" };
            version = version.derived(NodeId::parse(writer).unwrap());
        }
        let state = match state % 3 {
            0 => InstanceState::Removed { cause: RemoveCause::Deregistered, at_ms: 5 },
            1 => InstanceState::Removed { cause: RemoveCause::Expired, at_ms: u64::from(state) },
            _ => InstanceState::Live(InstanceData {
                weight: f64::from(state),
                healthy: state % 2 == 0,
                enabled: true,
                ephemeral: true,
                metadata: Metadata::default(),
            }),
        };
        Record::Instance { key, version, state }
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (0u64..4, prop_oneof![Just("a:1"), Just("b:1"), Just("c:1")], any::<u8>())
            .prop_map(|(c, o, s)| instance_record(c, o, s))
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merge(a.clone(), b.clone()), merge(b, a));
        }

        #[test]
        fn merge_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
            let left = merge(merge(a.clone(), b.clone()), c.clone());
            let right = merge(a, merge(b, c));
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_idempotent(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merge(a.clone(), a.clone()), a.clone());
            let ab = merge(a.clone(), b.clone());
            prop_assert_eq!(merge(ab.clone(), b), ab);
        }

        #[test]
        fn merge_never_lowers_the_version(a in arb_record(), b in arb_record()) {
            let m = merge(a.clone(), b.clone());
            prop_assert!(m.version() >= a.version());
            prop_assert!(m.version() >= b.version());
        }
    }

    #[test]
    fn higher_counter_wins_over_origin() {
        let old = instance_record(1, "z:1", 2);
        let new = instance_record(2, "a:1", 0);
        assert!(merge(old, new).is_tombstone());
    }

    #[test]
    fn a_client_write_wins_over_a_derived_one_from_an_older_write() {
        let base = Version::client(10, NodeId::parse("a:1").unwrap());
        let derived = base.derived(NodeId::parse("z:1").unwrap());
        let client = Version::client(11, NodeId::parse("a:1").unwrap());
        assert!(client > derived);
        assert!(derived > base);
        assert_eq!(derived.author(), Author::Registry);
        assert_eq!(derived.writer().as_str(), "z:1");
        assert_eq!(base.writer().as_str(), "a:1");
    }

    proptest! {
        #[test]
        fn no_chain_of_derived_writes_beats_a_newer_client_write(
            older in 0u64..1_000,
            gap in 1u64..1_000,
            steps in 1usize..200,
            origins in (0usize..3, 0usize..3),
        ) {
            let nodes = ["a:1", "b:1", "z:1"].map(|n| NodeId::parse(n).unwrap());
            let client = Version::client(older + gap, nodes[origins.1].clone());
            let mut chain = Version::client(older, nodes[origins.0].clone());
            for i in 0..steps {
                chain = chain.derived(nodes[i % 3].clone());
                prop_assert!(client > chain, "{client:?} vs {chain:?}");
            }
        }

        #[test]
        fn a_derived_write_never_reorders_two_client_writes(
            a in 0u64..50, b in 0u64..50, o in (0usize..3, 0usize..3), steps in 0usize..20,
        ) {
            let nodes = ["a:1", "b:1", "z:1"].map(|n| NodeId::parse(n).unwrap());
            let va = Version::client(a, nodes[o.0].clone());
            let vb = Version::client(b, nodes[o.1].clone());
            let mut da = va.clone();
            for i in 0..steps {
                da = da.derived(nodes[i % 3].clone());
            }
            if va < vb {
                prop_assert!(da < vb);
            }
        }
    }

    #[test]
    fn hlc_readings_increase_and_pass_observed_counters() {
        let mut hlc = Hlc::new();
        let a = hlc.tick(1_000);
        let b = hlc.tick(1_000);
        assert!(b > a);
        hlc.observe(u64::from(u32::MAX) << 20);
        assert!(hlc.tick(1_000) > u64::from(u32::MAX) << 20);
        assert_eq!(Name::parse(crate::error::Field::Group, "g").unwrap().as_str(), "g");
    }
}
