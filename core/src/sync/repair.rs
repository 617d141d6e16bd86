//! Anti-entropy exchanges: the answers to a peer's bucket hashes, leaf
//! hashes and records (see docs/architecture.md, "Anti-entropy"). The
//! records of whole units (buckets or leaves) cross, both ways, so that
//! every exchange settles at least one differing unit for good.
//!
//! An exchange cut short by `max_records_per_message` (more differing units
//! than one message holds) is followed by another round with the same peer
//! when it ends, up to `max_follow_up_rounds` per `anti_entropy_interval`: a
//! difference of D records settles in about D / `max_records_per_message`
//! round trips instead of as many intervals (74,000 records took 95 s at one
//! page per interval; issue 9, seed 9589). Only a cut-short exchange starts
//! one, so a cluster in agreement, or one that differs by less than a page,
//! sends nothing more than before.
//!
//! One chain of exchanges per pair, so that no page crosses twice: the node
//! that receives an exchange's last message follows up at once; the other
//! (which sent it) waits `follow_up_wait` and follows up only if no round
//! from the peer came meanwhile; and a scheduled round skips a peer whose
//! repair is under way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::membership::Membership;
use crate::message::PeerMessage;
use crate::model::NodeId;
use crate::service_manager::ServiceManager;
use crate::storage::repair::{self, Unit};
use crate::time::Timestamp;

use super::SyncManager;

/// The follow-up rounds with one member.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FollowUp {
    /// This node left differing units out of an answer in the exchange
    /// under way.
    cut_short: bool,
    /// When this node last did so.
    cut_at: Option<Timestamp>,
    /// Follow-ups this node started in the current interval.
    pub(super) used: usize,
    /// When the last digest root from the peer arrived.
    root_in: Option<Timestamp>,
    /// A follow-up waiting (see the module comment): due then, unless a root
    /// arrives from the peer after `waiting_since` (the end of the last
    /// exchange this node cut short).
    due: Option<Timestamp>,
    waiting_since: Timestamp,
}

impl SyncManager {
    /// Notes that this node's last answer to member `from` left differing
    /// units out.
    pub(super) fn note_cut_short(
        &mut self,
        now: Timestamp,
        from: &NodeId,
        cut_short: bool,
        members: &Membership,
    ) {
        if cut_short && members.state(from).is_some() {
            let f = self.follow_ups.entry(from.clone()).or_default();
            f.cut_short = true;
            f.cut_at = Some(now);
        }
    }

    /// A digest root arrived from member `from`.
    pub(super) fn note_root_in(&mut self, now: Timestamp, from: &NodeId, members: &Membership) {
        if members.state(from).is_some() {
            self.follow_ups.entry(from.clone()).or_default().root_in = Some(now);
        }
    }

    /// Whether a repair with `peer` is under way (an exchange cut short
    /// within the last half interval): the scheduled round leaves it alone.
    pub(super) fn repairing(&self, now: Timestamp, peer: &NodeId) -> bool {
        let half = self.timings.anti_entropy_interval / 2;
        self.follow_ups
            .get(peer)
            .is_some_and(|f| f.due.is_some() || f.cut_at.is_some_and(|t| now.saturating_since(t) < half))
    }

    /// An exchange with `peer` ended, with this node receiving its last
    /// message (`last`) or sending it: if this node cut the exchange short, a
    /// new round with that peer starts (within the interval's budget;
    /// otherwise the next scheduled round takes it on).
    pub(super) fn follow_up(&mut self, now: Timestamp, peer: &NodeId, last: bool, registry: &ServiceManager) {
        let wait = self.follow_up_wait();
        let Some(f) = self.follow_ups.get_mut(peer) else { return };
        if !std::mem::take(&mut f.cut_short) {
            return;
        }
        if last {
            self.start_follow_up(peer, registry);
        } else {
            // A later exchange cut short renews the wait.
            f.due = Some(now + wait);
            f.waiting_since = now;
        }
    }

    /// How long the sender of an exchange's last message waits for the
    /// peer's follow-up before starting its own.
    fn follow_up_wait(&self) -> Duration {
        (self.timings.anti_entropy_interval / 20).max(self.timings.sync_delay)
    }

    fn start_follow_up(&mut self, peer: &NodeId, registry: &ServiceManager) {
        let max = self.limits.max_follow_up_rounds;
        let Some(f) = self.follow_ups.get_mut(peer) else { return };
        f.due = None;
        if f.used >= max {
            return;
        }
        f.used += 1;
        self.stats.anti_entropy_follow_ups += 1;
        let (root, hlc) = (registry.store().digest().root(), registry.hlc_counter());
        self.transmit(peer.clone(), PeerMessage::DigestRoot { root, hlc });
    }

    /// The earliest waiting follow-up.
    pub(super) fn follow_up_due(&self) -> Option<Timestamp> {
        self.follow_ups.values().filter_map(|f| f.due).min()
    }

    /// Starts the waiting follow-ups due at `now`, but not those whose peer
    /// started a round meanwhile.
    pub(super) fn follow_ups_due(&mut self, now: Timestamp, registry: &ServiceManager) {
        let due: Vec<NodeId> = self
            .follow_ups
            .iter()
            .filter(|(_, f)| f.due.is_some_and(|t| t <= now))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in due {
            let Some(f) = self.follow_ups.get_mut(&peer) else { continue };
            if f.root_in.is_some_and(|t| t > f.waiting_since) {
                // The peer started a round after this node's last cut-short
                // exchange ended: that round carries the repair on.
                f.due = None;
                continue;
            }
            self.start_follow_up(&peer, registry);
        }
    }

    /// Anti-entropy, step 3: the peer's bucket hashes arrived. If the
    /// differing buckets hold few enough records here, they go at once (every
    /// one of them: the peer settles those buckets and answers with its own);
    /// otherwise the leaf hashes under them go first, so that only the
    /// records of differing leaves cross. True if differing buckets were
    /// left out.
    pub(super) fn answer_buckets(
        &mut self,
        from: &NodeId,
        theirs: &[u64],
        registry: &ServiceManager,
    ) -> bool {
        if !self.is_ready() {
            return false;
        }
        let differing = registry.store().digest().differing(theirs);
        if differing.is_empty() {
            return false;
        }
        self.stats.anti_entropy_repairs += 1;
        let max = self.limits.max_records_per_message;
        let units: BTreeSet<u16> = differing.iter().map(|b| u16::from(*b)).collect();
        let leaf_budget = self.leaf_budget();
        let bug = registry.bugs.has(crate::bugs::Bug::AntiEntropyPrefix);
        if bug || leaf_budget == 0 || registry.store().count_in(Unit::Bucket, &units) <= max {
            let (covered, records) = registry.records_in_units(Unit::Bucket, &units, max);
            let cut_short = covered.len() < units.len();
            let buckets = covered.iter().map(|u| *u as u8).collect();
            self.transmit(from.clone(), PeerMessage::BucketRecords { buckets, records, reply: true });
            return cut_short;
        }
        // Whole buckets of leaf hashes, as many as fit in the budget.
        let set: BTreeSet<u8> = differing.iter().copied().collect();
        let all = registry.store().leaf_hashes(&set);
        let mut buckets = Vec::new();
        let mut leaves = Vec::new();
        let wanted = differing.len();
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
        let cut_short = buckets.len() < wanted;
        self.transmit(from.clone(), PeerMessage::DigestLeaves { buckets, leaves });
        cut_short
    }

    /// Leaf hashes per `DigestLeaves` message; 0 turns the leaf level off.
    fn leaf_budget(&self) -> usize {
        self.limits.max_records_per_message * crate::message::LEAVES_PER_ITEM
    }

    /// Anti-entropy, step 4: the peer's leaf hashes arrived; send the records
    /// of the leaves that differ and ask for the peer's. True if differing
    /// leaves were left out.
    pub(super) fn answer_leaves(
        &mut self,
        from: &NodeId,
        buckets: &[u8],
        theirs: &[(u16, u64)],
        registry: &ServiceManager,
    ) -> bool {
        if !self.is_ready() {
            return false;
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
            return false;
        }
        let max = self.limits.max_records_per_message;
        let (leaves, records) = registry.records_in_units(Unit::Leaf, &differing, max);
        let cut_short = leaves.len() < differing.len();
        self.transmit(from.clone(), PeerMessage::LeafRecords { leaves, records, reply: true });
        cut_short
    }

    /// The answer to records sent with `reply`: this node's records of the
    /// units covered (taken before merging the peer's), whole units, as many
    /// as fit in one message. Units left out settle in a later round; true
    /// if there were any.
    pub(super) fn reply_records(
        &mut self,
        from: &NodeId,
        unit: Unit,
        units: BTreeSet<u16>,
        registry: &ServiceManager,
    ) -> bool {
        let max = self.limits.max_records_per_message;
        let (covered, records) = registry.records_in_units(unit, &units, max);
        let cut_short = covered.len() < units.len();
        let msg = match unit {
            Unit::Bucket => {
                let buckets = covered.iter().map(|u| *u as u8).collect();
                PeerMessage::BucketRecords { buckets, records, reply: false }
            }
            Unit::Leaf => PeerMessage::LeafRecords { leaves: covered, records, reply: false },
        };
        self.transmit(from.clone(), msg);
        cut_short
    }
}
