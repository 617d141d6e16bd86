//! Digest agreement with each peer, and what it allows: purging a tombstone
//! only once every peer holds it, and refusing a record that could be a
//! purged deletion coming back (issue 9, defect 5).
//!
//! The rule is Cassandra's "only purge repaired tombstones" (gc_grace plus
//! repair), with the digest exchange as the repair: a node remembers, per
//! peer and per digest bucket, the local time at which the peer's bucket hash
//! last equalled its own and the peer's hybrid-clock reading carried with
//! that hash. Equal bucket hashes mean equal records, tombstones included, so
//! a tombstone that was here before an agreement with a peer is held by that
//! peer too (or something newer for its key).
//!
//! - **Purge.** A tombstone past `tombstone_ttl` is purged only when every
//!   configured peer agreed on its bucket after the tombstone arrived here. A
//!   peer that is down holds purging back, up to `tombstone_max_hold` after
//!   the removal and `max_tombstones` tombstones; past either, the oldest is
//!   evicted anyway ("forced"), and its version raises the bucket's forced
//!   horizon.
//! - **Refusal.** A live record for a key this node does not hold is refused
//!   when its version is at most the greatest tombstone purged from its
//!   bucket and its author node `O` issued it before the last agreement with
//!   `O` on that bucket (the version's counter is at most `O`'s clock reading
//!   then): `O` held it or something newer then, and so did this node, which
//!   has since purged a newer tombstone of the key. It is also refused when
//!   its version is at most the bucket's forced horizon: a peer that missed
//!   an evicted tombstone may still hold what it deleted. A refused record is
//!   answered with a tombstone derived above it (see `service_manager/merge.rs`).
//! - **Re-learning.** A tombstone past its TTL for a key this node does not
//!   hold, at most the bucket's horizon, is not stored: this node purged it
//!   (or a newer one) already. A peer that missed it while cut off still gets
//!   it, because its horizon is below it.
//!
//! The state is in memory only; a restarted node starts with none (see
//! docs/architecture.md, "No resurrection").

use std::collections::BTreeMap;

use crate::model::NodeId;
use crate::record::Version;
use crate::storage::digest::BUCKETS;
use crate::time::Timestamp;

/// One agreement: when (local time) and the peer's clock reading then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    at: Timestamp,
    hlc: u64,
}

/// Why a record from a peer was refused as a possible purged deletion.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// At or below a purged tombstone of its bucket, issued before the last
    /// agreement with its author.
    #[error("version {version:?} is older than a tombstone purged here after its author {origin} agreed")]
    Purged {
        /// The refused version.
        version: Version,
        /// The node that issued it.
        origin: NodeId,
    },
    /// At or below a tombstone evicted before every peer had it.
    #[error("version {version:?} is not newer than a tombstone evicted before every peer had it")]
    Forced {
        /// The refused version.
        version: Version,
    },
}

/// Agreement with every configured peer, and the purge horizons.
#[derive(Debug)]
pub(crate) struct Agreement {
    me: NodeId,
    peers: BTreeMap<NodeId, Box<[Seen; BUCKETS]>>,
    /// Per bucket: the earliest of the peers' latest agreements (ZERO until
    /// every peer agreed once).
    all_since: Box<[Timestamp; BUCKETS]>,
    /// Per bucket: the greatest counter of a tombstone purged after agreement.
    purged: Box<[u64; BUCKETS]>,
    /// Per bucket: the greatest counter of a tombstone evicted without it.
    forced: Box<[u64; BUCKETS]>,
}

impl Agreement {
    /// No agreement yet with any of `peers`.
    pub(crate) fn new(me: NodeId, peers: &[NodeId]) -> Agreement {
        Agreement {
            me,
            peers: peers.iter().map(|p| (p.clone(), Box::new([Seen::default(); BUCKETS]))).collect(),
            all_since: Box::new([Timestamp::ZERO; BUCKETS]),
            purged: Box::new([0; BUCKETS]),
            forced: Box::new([0; BUCKETS]),
        }
    }

    /// `peer`'s buckets `buckets` equalled this node's at `now`; its clock
    /// read `hlc` when it computed them. Non-members are ignored.
    pub(crate) fn agreed(
        &mut self,
        peer: &NodeId,
        buckets: impl IntoIterator<Item = u8>,
        now: Timestamp,
        hlc: u64,
    ) {
        let Some(seen) = self.peers.get_mut(peer) else { return };
        let mut touched = Vec::new();
        for b in buckets {
            let s = &mut seen[usize::from(b)];
            s.at = s.at.max(now);
            s.hlc = s.hlc.max(hlc);
            touched.push(usize::from(b));
        }
        for b in touched {
            self.all_since[b] = self.peers.values().map(|s| s[b].at).min().unwrap_or(now);
        }
    }

    /// Whether every peer agreed on `bucket` after `arrived` (always, alone).
    pub(crate) fn all_agreed_after(&self, bucket: u8, arrived: Timestamp) -> bool {
        self.peers.is_empty() || self.all_since[usize::from(bucket)] > arrived
    }

    /// A tombstone with `counter` in `bucket` was purged after agreement.
    pub(crate) fn purged(&mut self, bucket: u8, counter: u64) {
        let p = &mut self.purged[usize::from(bucket)];
        *p = (*p).max(counter);
    }

    /// A tombstone with `counter` in `bucket` was evicted without agreement.
    pub(crate) fn forced(&mut self, bucket: u8, counter: u64) {
        let f = &mut self.forced[usize::from(bucket)];
        *f = (*f).max(counter);
    }

    /// The greatest counter evicted without agreement, over every bucket.
    pub(crate) fn forced_horizon(&self) -> u64 {
        self.forced.iter().copied().max().unwrap_or(0)
    }

    /// Whether a tombstone past its TTL for a key this node does not hold is
    /// one it purged already (or older than one it purged).
    pub(crate) fn already_purged(&self, bucket: u8, counter: u64) -> bool {
        let b = usize::from(bucket);
        counter <= self.purged[b].max(self.forced[b])
    }

    /// Whether a live record with `version` for a key in `bucket` that this
    /// node does not hold could be a purged deletion coming back.
    pub(crate) fn refuses(&self, bucket: u8, version: &Version) -> Option<Stale> {
        let b = usize::from(bucket);
        if version.counter <= self.forced[b] {
            return Some(Stale::Forced { version: version.clone() });
        }
        if version.counter > self.purged[b] {
            return None;
        }
        let issued_before_agreement = if version.origin == self.me {
            true
        } else {
            self.peers.get(&version.origin).is_some_and(|s| version.counter <= s[b].hlc)
        };
        issued_before_agreement
            .then(|| Stale::Purged { version: version.clone(), origin: version.origin.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_tombstone_is_purgeable_only_after_every_peer_agreed_on_its_bucket() {
        let (a, b) = (id("a:1"), id("b:1"));
        let mut g = Agreement::new(id("me:1"), &[a.clone(), b.clone()]);
        assert!(!g.all_agreed_after(7, at(10)));
        g.agreed(&a, [7], at(20), 100);
        assert!(!g.all_agreed_after(7, at(10)), "b has not agreed");
        g.agreed(&b, 0..=255u8, at(30), 100);
        assert!(g.all_agreed_after(7, at(10)));
        assert!(!g.all_agreed_after(7, at(20)), "a agreed at the arrival, not after");
        assert!(!g.all_agreed_after(8, at(10)), "a never agreed on bucket 8");
    }

    #[test]
    fn alone_every_tombstone_is_purgeable() {
        let g = Agreement::new(id("me:1"), &[]);
        assert!(g.all_agreed_after(0, at(5)));
    }

    #[test]
    fn only_records_issued_before_the_authors_agreement_and_under_a_purge_are_refused() {
        let a = id("a:1");
        let mut g = Agreement::new(id("me:1"), std::slice::from_ref(&a));
        g.agreed(&a, [3], at(20), 1_000);
        let old = Version::client(900, a.clone());
        assert_eq!(g.refuses(3, &old), None, "nothing purged yet");
        g.purged(3, 950);
        assert!(matches!(g.refuses(3, &old), Some(Stale::Purged { .. })));
        assert_eq!(g.refuses(4, &old), None, "another bucket");
        // Issued by a after its agreement: a write made while cut off.
        g.purged(3, 5_000);
        assert_eq!(g.refuses(3, &Version::client(1_200, a.clone())), None);
        // An unknown author has no agreement to go by.
        assert_eq!(g.refuses(3, &Version::client(900, id("z:1"))), None);
    }

    #[test]
    fn the_forced_horizon_refuses_everything_at_or_below_it() {
        let a = id("a:1");
        let mut g = Agreement::new(id("me:1"), std::slice::from_ref(&a));
        g.forced(9, 2_000);
        assert!(matches!(g.refuses(9, &Version::client(2_000, a.clone())), Some(Stale::Forced { .. })));
        assert_eq!(g.refuses(9, &Version::client(2_001, a)), None);
        assert!(g.already_purged(9, 1_999));
        assert_eq!(g.forced_horizon(), 2_000);
    }
}
