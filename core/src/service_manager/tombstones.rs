//! Tombstones: when one may be purged (TTL and agreement of every peer, see
//! `crate::agreement`), their own bound (`max_tombstones`, oldest evicted
//! first), and the answer to a record refused as a possible purged deletion.

use std::time::Duration;

use crate::agreement::Stale;
use crate::bugs::Bug;
use crate::model::InstanceKey;
use crate::record::{InstanceState, RemoveCause, Version};
use crate::storage::digest::bucket_of;
use crate::time::Timestamp;

use super::{MergeOutcome, ServiceManager};

/// What a due tombstone timer decided.
pub(super) enum Verdict {
    /// Not due yet, or held for a peer's agreement: look again then.
    Rearm(Timestamp),
    /// Every peer holds it: purge.
    Purge,
    /// Held too long: evict without every peer's agreement.
    Force,
}

impl ServiceManager {
    /// Peer `peer`'s digest buckets `buckets` equalled this node's at `now`;
    /// its clock read `hlc` when it computed them.
    pub(crate) fn agreed(
        &mut self,
        peer: &crate::model::NodeId,
        buckets: impl IntoIterator<Item = u8>,
        now: Timestamp,
        hlc: u64,
    ) {
        self.agreement.agreed(peer, buckets, now, hlc);
    }

    /// The greatest version counter of a tombstone evicted before every peer
    /// had it (0 if none).
    pub(crate) fn forced_horizon(&self) -> u64 {
        self.agreement.forced_horizon()
    }

    /// The verdict on the tombstone in slot `index`, removed at `at_ms`.
    pub(super) fn tombstone_verdict(&self, now: Timestamp, index: u32, at_ms: u64) -> Verdict {
        let purge_at = self.purge_time(now, at_ms);
        if purge_at > now {
            return Verdict::Rearm(purge_at);
        }
        let Some(e) = self.store.instances.get(index) else { return Verdict::Purge };
        // `last_beat` of a tombstone is when it arrived here (set_instance_leased).
        let without_agreement = self.bugs.has(crate::bugs::Bug::PurgeWithoutAgreement)
            || self.bugs.has(crate::bugs::Bug::EarlyPurge);
        if without_agreement || self.agreement.all_agreed_after(bucket_of(e.hash), e.last_beat) {
            return Verdict::Purge;
        }
        let hold = self.timings.tombstone_max_hold.max(self.timings.tombstone_ttl);
        let hold_until = now
            + Duration::from_millis(
                at_ms.saturating_add(crate::time::millis(hold)).saturating_sub(self.wall(now)),
            );
        if hold_until <= now {
            return Verdict::Force;
        }
        let recheck = self.timings.anti_entropy_interval.max(self.timings.tombstone_ttl / 10);
        Verdict::Rearm(hold_until.min(now + recheck))
    }

    /// Purges the tombstone in slot `index`; `forced` when not every peer is
    /// known to hold it (raises the forced horizon of its bucket).
    pub(super) fn purge_tombstone(&mut self, index: u32, forced: bool) {
        let Some(e) = self.store.instances.get(index) else { return };
        let (bucket, counter) = (bucket_of(e.hash), e.version.counter);
        if forced {
            self.stats.forced_purges += 1;
            self.agreement.forced(bucket, counter);
        } else {
            self.agreement.purged(bucket, counter);
        }
        self.stats.purged += 1;
        self.purge_instance(index);
    }

    /// Makes room for one more slot when the Storage is at its hard cap
    /// (`max_instances` live plus `max_tombstones`): the oldest tombstone
    /// goes.
    pub(super) fn make_room(&mut self, now: Timestamp) {
        let cap = self.limits.max_instances.saturating_add(self.limits.max_tombstones);
        if self.store.instance_count() >= cap {
            self.enforce_tombstone_bound(now, 1);
        }
    }

    /// Evicts the oldest tombstones while more than `max_tombstones` are
    /// held (`slack` more to make room for an insert). An evicted tombstone
    /// every peer already holds counts as purged, any other as forced.
    pub(crate) fn enforce_tombstone_bound(&mut self, now: Timestamp, slack: usize) {
        let max = self.limits.max_tombstones.saturating_sub(slack);
        while self.store.counts.tombstones > max {
            let Some((at_ms, index)) = self.store.oldest_tombstone() else { return };
            let agreed = self.store.instances.get(index).is_some_and(|e| {
                self.tombstone_expired(now, at_ms)
                    && self.agreement.all_agreed_after(bucket_of(e.hash), e.last_beat)
            });
            self.purge_tombstone(index, !agreed);
        }
    }

    /// Whether a live record for a key this node does not hold (in the
    /// bucket of `hash`) could be a purged deletion coming back.
    pub(super) fn refuses_unknown(&self, hash: u64, version: &Version) -> Option<Stale> {
        // Each of these bugs restores the behaviour before issue 9, 5.
        let bugs = [Bug::AcceptStaleUnknown, Bug::PurgeWithoutAgreement, Bug::EarlyPurge];
        if bugs.iter().any(|b| self.bugs.has(*b)) {
            return None;
        }
        self.agreement.refuses(bucket_of(hash), version)
    }

    /// Whether a tombstone past its TTL for a key this node does not hold
    /// was purged here already (storing it again would only start over).
    pub(super) fn purged_already(&self, hash: u64, version: &Version) -> bool {
        self.agreement.already_purged(bucket_of(hash), version.counter)
    }

    /// Answers a refused record: this node stores a tombstone for the key,
    /// derived above the refused version (cause `Expired`), and sends it as a
    /// local change, so that the peer drops its copy too, unless it has fresh
    /// beats of the instance, in which case it refutes the tombstone as it
    /// refutes any expiry and the instance lives on everywhere.
    pub(super) fn answer_refused(
        &mut self,
        now: Timestamp,
        key: InstanceKey,
        hash: u64,
        version: Version,
        why: Stale,
    ) -> MergeOutcome {
        self.make_room(now);
        let inserted = self
            .store
            .service_entry(&key.service)
            .and_then(|s| self.store.insert_instance(s, &key, hash, version.clone(), now));
        let Ok(index) = inserted else { return MergeOutcome::Refused(why) };
        let fresh = version.derived(self.me.clone());
        self.hlc.observe(fresh.counter);
        let removed = InstanceState::Removed { cause: RemoveCause::Expired, at_ms: self.wall(now) };
        self.set_instance(index, fresh, removed, now, true);
        MergeOutcome::Refused(why)
    }
}
