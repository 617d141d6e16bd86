//! Merging records from peers (last-writer-wins by version, see
//! [`crate::record::precedence`]), and refuting expiries this node knows to
//! be wrong.
//!
//! Refutation (after SWIM's, Das et al. 2002, section 4.2): when a record
//! arrives that marks an ephemeral instance unhealthy or expired, but this
//! node has itself seen the instance's heartbeat within its unhealthy time,
//! the responsible node was cut off from those beats. This node re-issues the
//! instance as healthy with a newer version, and forwards the evidence (how
//! long ago it saw the beat) to the responsible node. A deregistration, or
//! an unhealthy state a client registered itself (Consul's failed TTL
//! check), is never refuted: the client asked for it.

use std::cmp::Ordering;
use std::time::Duration;

use crate::agreement::Stale;
use crate::error::RecordRejection;
use crate::history::ChangeCause;
use crate::model::{InstanceKey, ServiceKey, parse_protect_threshold, parse_weight};
use crate::record::{
    Author, InstanceState, Record, RemoveCause, ServiceState, Version, instance_state_hash,
    service_state_hash,
};
use crate::time::Timestamp;

use crate::storage::ServiceRecord;

use super::ServiceManager;

/// What merging one record did.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum MergeOutcome {
    /// The record was newer and is now stored.
    Applied,
    /// The local record is as new or newer; nothing changed.
    Stale,
    /// The record would have wrongly expired (or marked unhealthy) an
    /// instance this node hears from; a newer healthy version was issued.
    Refuted { key: InstanceKey, age: Duration },
    /// The record was refused; nothing changed.
    Rejected(RecordRejection),
    /// The record, for a key this node does not hold, could be a purged
    /// deletion coming back; this node stored a tombstone derived above it
    /// instead and sends it to its peers (see `crate::agreement`).
    Refused(Stale),
}

impl ServiceManager {
    /// Merges one record received from a peer.
    pub(crate) fn merge(&mut self, now: Timestamp, record: Record) -> MergeOutcome {
        if let Err(why) = self.check_ahead(now, &record) {
            self.stats.rejected += 1;
            self.stats.rejected_ahead += 1;
            return MergeOutcome::Rejected(why);
        }
        if let Err(why) = self.check_record(&record) {
            self.stats.rejected += 1;
            return MergeOutcome::Rejected(why);
        }
        if !self.bugs.has(crate::bugs::Bug::NoObserve) {
            self.hlc.observe(record.version().counter);
        }
        let outcome = match record {
            Record::Instance { key, version, state } => self.merge_instance(now, key, version, state),
            Record::Service { key, version, state } => self.merge_service(now, &key, version, state),
        };
        match &outcome {
            MergeOutcome::Applied => self.stats.merged += 1,
            MergeOutcome::Stale => self.stats.stale += 1,
            MergeOutcome::Refuted { .. } => self.stats.refuted += 1,
            MergeOutcome::Rejected(_) => self.stats.rejected += 1,
            MergeOutcome::Refused(_) => self.stats.refused_stale += 1,
        }
        outcome
    }

    /// Refuses a record further ahead of this node's wall clock than
    /// `max_clock_skew` (its version, or its removal time).
    fn check_ahead(&self, now: Timestamp, record: &Record) -> Result<(), RecordRejection> {
        let limit = self.wall(now).saturating_add(crate::time::millis(self.timings.max_clock_skew));
        let removed_at = match record {
            Record::Instance { state, .. } => state.removed_at_ms(),
            Record::Service { state: ServiceState::Removed { at_ms }, .. } => Some(*at_ms),
            Record::Service { .. } => None,
        };
        if record.version().physical_ms() > limit || removed_at.is_some_and(|at| at > limit) {
            return Err(RecordRejection::AheadOfClock { version: record.version().clone() });
        }
        Ok(())
    }

    fn check_record(&self, record: &Record) -> Result<(), RecordRejection> {
        let metadata_limits = self.limits.metadata();
        match record {
            Record::Instance { state: InstanceState::Live(d), .. } => {
                parse_weight(d.weight)?;
                Ok(d.metadata.check(&metadata_limits)?)
            }
            Record::Service { state: ServiceState::Live(m), .. } => {
                parse_protect_threshold(m.protect_threshold)?;
                Ok(m.metadata.check(&metadata_limits)?)
            }
            _ => Ok(()),
        }
    }

    fn merge_instance(
        &mut self,
        now: Timestamp,
        key: InstanceKey,
        version: Version,
        state: InstanceState,
    ) -> MergeOutcome {
        let hash = key.stable_hash();
        let Some(index) = self.store.find_instance_hashed(hash, &key) else {
            match state.removed_at_ms() {
                // Past its TTL and purged here already: storing it again
                // would only start over. A node that missed it while cut off
                // (its horizon is below it) stores it, to drop what it deletes.
                Some(at) if self.tombstone_expired(now, at) && self.purged_already(hash, &version) => {
                    return MergeOutcome::Stale;
                }
                Some(_) => {}
                None => {
                    if let Some(why) = self.refuses_unknown(hash, &version) {
                        return self.answer_refused(now, key, hash, version, why);
                    }
                    if self.store.counts.instances >= self.limits.max_instances {
                        let limit = self.limits.max_instances;
                        return MergeOutcome::Rejected(RecordRejection::LimitExceeded {
                            what: "max_instances",
                            limit,
                        });
                    }
                }
            }
            self.make_room(now);
            let inserted = self
                .store
                .service_entry(&key.service)
                .and_then(|s| self.store.insert_instance(s, &key, hash, version.clone(), now));
            let index = match inserted {
                Ok(i) => i,
                Err(e) => return MergeOutcome::Rejected(e.into()),
            };
            self.set_instance(index, version, state, now, false);
            return MergeOutcome::Applied;
        };
        let Some(current) = self.store.instances.get(index) else { return MergeOutcome::Stale };
        let order = (&version, instance_state_hash(&state))
            .cmp(&(&current.version, instance_state_hash(&current.state)));
        if self.effective(order) != Ordering::Greater {
            return MergeOutcome::Stale;
        }
        if let Some(age) = self.refutes(now, index, &version, &state) {
            let mut data = match (&state, &current.state) {
                (InstanceState::Live(d), _) | (_, InstanceState::Live(d)) => d.clone(),
                _ => return MergeOutcome::Stale,
            };
            data.healthy = true;
            // Derived from the record being refuted, so it wins over it and
            // still loses to any client write newer than the one it descends from.
            let fresh = self.derive(&version);
            self.with_cause(ChangeCause::Refutation, |r| {
                r.set_instance(index, fresh, InstanceState::Live(data), now, true);
            });
            return MergeOutcome::Refuted { key, age };
        }
        if current.live().is_none() && matches!(state, InstanceState::Live(_)) {
            // Back from a tombstone: a fresh grace period, no evidence yet.
            if let Some(e) = self.store.instances.get_mut(index) {
                e.last_beat = now;
                e.witnessed = false;
            }
        }
        self.set_instance(index, version, state, now, false);
        MergeOutcome::Applied
    }

    /// The precedence order as merge applies it (reversed by the simulator's
    /// deliberate bug).
    fn effective(&self, order: Ordering) -> Ordering {
        if self.bugs.has(crate::bugs::Bug::KeepOlderOnMerge) {
            return order.reverse();
        }
        order
    }

    /// How long ago this node saw a beat of the instance, if that refutes
    /// the incoming unhealthy mark or expiry.
    fn refutes(
        &self,
        now: Timestamp,
        index: u32,
        version: &Version,
        state: &InstanceState,
    ) -> Option<Duration> {
        if *version.writer() == self.me || self.bugs.has(crate::bugs::Bug::NoRefute) {
            return None;
        }
        let e = self.store.instances.get(index)?;
        let current = e.live()?;
        let condemns = match state {
            InstanceState::Removed { cause: RemoveCause::Expired, .. } => current.ephemeral,
            InstanceState::Removed { cause: RemoveCause::Deregistered, .. } => false,
            // A client that states its own instance unhealthy asked for it,
            // like a deregistration: only a node's judgement is refuted.
            InstanceState::Live(d) => {
                d.ephemeral && !d.healthy && current.healthy && version.author() == Author::Registry
            }
        };
        if !condemns || !e.witnessed {
            return None;
        }
        let age = now.saturating_since(e.last_beat);
        (age < e.lease.unhealthy_after()).then_some(age)
    }

    fn merge_service(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        version: Version,
        state: ServiceState,
    ) -> MergeOutcome {
        let existing = self.store.find_service(key);
        let current = existing.and_then(|i| self.store.services.get(i)).and_then(|s| s.record.as_ref());
        match current {
            Some(ServiceRecord { version: v, state: s, .. }) => {
                let order = (&version, service_state_hash(&state)).cmp(&(v, service_state_hash(s)));
                if self.effective(order) != Ordering::Greater {
                    return MergeOutcome::Stale;
                }
            }
            None => {
                if let ServiceState::Removed { at_ms } = state {
                    if self.tombstone_expired(now, at_ms) {
                        return MergeOutcome::Stale;
                    }
                }
            }
        }
        let index = match self.store.service_entry(key) {
            Ok(i) => i,
            Err(e) => return MergeOutcome::Rejected(e.into()),
        };
        self.set_service_record(index, version, state, now, false);
        MergeOutcome::Applied
    }
}
