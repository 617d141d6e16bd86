//! Timers: expiry of silent ephemeral instances and purge of tombstones.
//!
//! Each ephemeral instance and each tombstone has exactly one entry in
//! `timers`. Entries are armed at the earliest moment something could be
//! due; a due entry recomputes from the instance's current state and either
//! acts or re-arms (heartbeats never touch the timer set).

use std::time::Duration;

use crate::history::{ChangeCause, ChangeKind};
use crate::record::{InstanceState, RemoveCause, ServiceState};
use crate::time::Timestamp;

use crate::storage::TimerRef;

use super::ServiceManager;

/// What a due instance timer found.
enum Due {
    Rearm(Timestamp),
    MarkUnhealthy,
    Remove,
    Purge,
}

impl ServiceManager {
    /// The earliest timer.
    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        self.store.poll_timeout()
    }

    /// Handles due timers, at most `budget` of them. Returns how many it
    /// handled.
    pub(crate) fn handle_timeout(&mut self, now: Timestamp, budget: usize) -> usize {
        let mut handled = 0;
        while handled < budget {
            let Some(what) = self.store.pop_due(now) else { break };
            handled += 1;
            match what {
                TimerRef::Instance(i) => self.instance_due(now, i),
                TimerRef::Service(i) => self.service_due(now, i),
            }
        }
        handled
    }

    fn instance_due(&mut self, now: Timestamp, index: u32) {
        let Some(e) = self.store.instances.get(index) else { return };
        let due = match &e.state {
            InstanceState::Removed { at_ms, .. } => {
                let purge_at = self.purge_time(now, *at_ms);
                if purge_at <= now { Due::Purge } else { Due::Rearm(purge_at) }
            }
            InstanceState::Live(d) if !d.ephemeral => {
                self.check_due(now, index);
                return;
            }
            InstanceState::Live(d) => {
                let (unhealthy_after, remove_after) = (e.lease.unhealthy_after(), e.lease.remove_after());
                let base = e.lease_base(self.grace_epoch);
                if !self.responsibility.is_mine(e.hash) {
                    Due::Rearm(now.max(base) + unhealthy_after)
                } else if now >= base + remove_after {
                    Due::Remove
                } else if d.healthy && now >= base + unhealthy_after {
                    Due::MarkUnhealthy
                } else if d.healthy {
                    Due::Rearm(base + unhealthy_after)
                } else {
                    Due::Rearm(base + remove_after)
                }
            }
        };
        match due {
            Due::Rearm(at) => self.store.arm_instance(index, at),
            Due::Purge => {
                self.stats.purged += 1;
                self.purge_instance(index);
            }
            Due::MarkUnhealthy => self.with_cause(ChangeCause::Silence, |r| r.mark_unhealthy(now, index)),
            Due::Remove => self.with_cause(ChangeCause::Silence, |r| r.expire(now, index)),
        }
    }

    fn mark_unhealthy(&mut self, now: Timestamp, index: u32) {
        let Some(InstanceState::Live(d)) = self.store.instances.get(index).map(|e| &e.state) else { return };
        let mut d = d.clone();
        d.healthy = false;
        let Some(version) = self.derived_version(index) else { return };
        self.stats.marked_unhealthy += 1;
        self.set_instance(index, version, InstanceState::Live(d), now, true);
    }

    fn expire(&mut self, now: Timestamp, index: u32) {
        let ephemeral = self.store.counts.ephemeral_instances;
        let was_held = self.brake.is_held(index);
        if !self.brake.allow(now, index, ephemeral) {
            self.stats.braked += 1;
            let recheck = now + self.brake.recheck_after();
            if let Some(InstanceState::Live(d)) = self.store.instances.get(index).map(|e| &e.state) {
                if d.healthy {
                    self.with_cause(ChangeCause::Brake, |r| r.mark_unhealthy(now, index));
                } else if !was_held {
                    let me = self.me.clone();
                    self.note(now, index, ChangeKind::Held, ChangeCause::Brake, me);
                }
            }
            self.store.arm_instance(index, recheck);
            return;
        }
        let Some(version) = self.derived_version(index) else { return };
        self.stats.expired += 1;
        let removed = InstanceState::Removed { cause: RemoveCause::Expired, at_ms: self.wall(now) };
        self.set_instance(index, version, removed, now, true);
    }

    fn service_due(&mut self, now: Timestamp, index: u32) {
        let Some(s) = self.store.services.get_mut(index) else { return };
        let Some(r) = s.record.as_mut() else { return };
        r.timer = None;
        let ServiceState::Removed { at_ms } = r.state else { return };
        let purge_at = self.purge_time(now, at_ms);
        if purge_at > now {
            self.store.arm_service(index, purge_at);
            return;
        }
        if self.store.purge_service_record(index) {
            self.stats.purged += 1;
        }
    }

    /// Local time at which a tombstone made at wall time `at_ms` is purged:
    /// `tombstone_ttl` later, by the remover's wall clock, so that every node
    /// purges it at about the same moment (give or take clock skew).
    pub(super) fn purge_time(&self, now: Timestamp, at_ms: u64) -> Timestamp {
        let mut ttl = crate::time::millis(self.timings.tombstone_ttl);
        if self.bugs.has(crate::bugs::Bug::EarlyPurge) {
            ttl /= 10;
        }
        let purge_wall = at_ms.saturating_add(ttl);
        let wall_now = self.wall(now);
        now + Duration::from_millis(purge_wall.saturating_sub(wall_now))
    }

    /// Whether a tombstone made at `at_ms` is past its purge time.
    pub(super) fn tombstone_expired(&self, now: Timestamp, at_ms: u64) -> bool {
        self.purge_time(now, at_ms) <= now
    }

    /// Arms the timer an instance needs in its current state: the first
    /// deadline for a live ephemeral instance, the purge for a tombstone,
    /// none for a persistent instance.
    pub(super) fn schedule_instance(&mut self, index: u32, now: Timestamp) {
        let Some(e) = self.store.instances.get(index) else { return };
        let at = match &e.state {
            InstanceState::Live(d) if !d.ephemeral => (e.lease.check() != crate::lease::CheckKind::None)
                .then(|| now + self.timings.health_check_interval),
            InstanceState::Live(d) => {
                let base = e.lease_base(self.grace_epoch);
                Some(if d.healthy { base + e.lease.unhealthy_after() } else { base + e.lease.remove_after() })
            }
            InstanceState::Removed { at_ms, .. } => Some(self.purge_time(now, *at_ms)),
        };
        match at {
            Some(at) => self.store.arm_instance(index, at),
            None => self.store.disarm_instance(index),
        }
    }
}
