//! Anti-entropy exchanges: the answers to a peer's bucket hashes, leaf
//! hashes and records (see docs/architecture.md, "Anti-entropy"). The
//! records of whole units (buckets or leaves) cross, both ways, so that
//! every exchange settles at least one differing unit for good.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::PeerMessage;
use crate::model::NodeId;
use crate::service_manager::ServiceManager;
use crate::storage::repair::{self, Unit};

use super::SyncManager;

impl SyncManager {
    /// Anti-entropy, step 3: the peer's bucket hashes arrived. If the
    /// differing buckets hold few enough records here, they go at once (every
    /// one of them: the peer settles those buckets and answers with its own);
    /// otherwise the leaf hashes under them go first, so that only the
    /// records of differing leaves cross.
    pub(super) fn answer_buckets(&mut self, from: &NodeId, theirs: &[u64], registry: &ServiceManager) {
        if !self.is_ready() {
            return;
        }
        let differing = registry.store().digest().differing(theirs);
        if differing.is_empty() {
            return;
        }
        self.stats.anti_entropy_repairs += 1;
        let max = self.limits.max_records_per_message;
        let units: BTreeSet<u16> = differing.iter().map(|b| u16::from(*b)).collect();
        let leaf_budget = self.leaf_budget();
        let bug = registry.bugs.has(crate::bugs::Bug::AntiEntropyPrefix);
        if bug || leaf_budget == 0 || registry.store().count_in(Unit::Bucket, &units) <= max {
            let (covered, records) = registry.records_in_units(Unit::Bucket, &units, max);
            let buckets = covered.iter().map(|u| *u as u8).collect();
            self.transmit(from.clone(), PeerMessage::BucketRecords { buckets, records, reply: true });
            return;
        }
        // Whole buckets of leaf hashes, as many as fit in the budget.
        let set: BTreeSet<u8> = differing.iter().copied().collect();
        let all = registry.store().leaf_hashes(&set);
        let mut buckets = Vec::new();
        let mut leaves = Vec::new();
        for b in differing {
            let from_at = all.partition_point(|(l, _)| repair::bucket_of_leaf(*l) < b);
            let to = all.partition_point(|(l, _)| repair::bucket_of_leaf(*l) <= b);
            let mine = &all[from_at..to];
            if !buckets.is_empty() && leaves.len() + mine.len() > leaf_budget {
                break;
            }
            buckets.push(b);
            leaves.extend_from_slice(mine);
        }
        self.transmit(from.clone(), PeerMessage::DigestLeaves { buckets, leaves });
    }

    /// Leaf hashes per `DigestLeaves` message; 0 turns the leaf level off.
    fn leaf_budget(&self) -> usize {
        self.limits.max_records_per_message * crate::message::LEAVES_PER_ITEM
    }

    /// Anti-entropy, step 4: the peer's leaf hashes arrived; send the records
    /// of the leaves that differ and ask for the peer's.
    pub(super) fn answer_leaves(
        &mut self,
        from: &NodeId,
        buckets: &[u8],
        theirs: &[(u16, u64)],
        registry: &ServiceManager,
    ) {
        if !self.is_ready() {
            return;
        }
        let set: BTreeSet<u8> = buckets.iter().copied().collect();
        let theirs: BTreeMap<u16, u64> =
            theirs.iter().filter(|(l, _)| set.contains(&repair::bucket_of_leaf(*l))).copied().collect();
        let mine: BTreeMap<u16, u64> = registry.store().leaf_hashes(&set).into_iter().collect();
        let differing: BTreeSet<u16> = mine
            .iter()
            .filter(|(l, h)| theirs.get(l) != Some(h))
            .map(|(l, _)| *l)
            .chain(theirs.keys().filter(|l| !mine.contains_key(l)).copied())
            .collect();
        if differing.is_empty() {
            return;
        }
        let max = self.limits.max_records_per_message;
        let (leaves, records) = registry.records_in_units(Unit::Leaf, &differing, max);
        self.transmit(from.clone(), PeerMessage::LeafRecords { leaves, records, reply: true });
    }

    /// The answer to records sent with `reply`: this node's records of the
    /// units covered (taken before merging the peer's), whole units, as many
    /// as fit in one message. Units left out settle in a later round.
    pub(super) fn reply_records(
        &mut self,
        from: &NodeId,
        unit: Unit,
        units: BTreeSet<u16>,
        registry: &ServiceManager,
    ) {
        let max = self.limits.max_records_per_message;
        let (covered, records) = registry.records_in_units(unit, &units, max);
        let msg = match unit {
            Unit::Bucket => {
                let buckets = covered.iter().map(|u| *u as u8).collect();
                PeerMessage::BucketRecords { buckets, records, reply: false }
            }
            Unit::Leaf => PeerMessage::LeafRecords { leaves: covered, records, reply: false },
        };
        self.transmit(from.clone(), msg);
    }
}
