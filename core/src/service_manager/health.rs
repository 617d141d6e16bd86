//! The registry's side of active health checks (see [`crate::health`]).

use crate::health::{FAILURES_TO_UNHEALTHY, HealthCheck};
use crate::history::ChangeCause;
use crate::lease::{CheckKind, check_path_of};
use crate::model::InstanceKey;
use crate::record::InstanceState;
use crate::time::Timestamp;

use super::ServiceManager;

impl ServiceManager {
    /// A persistent instance's check is due: queue it if this node is
    /// responsible, and re-arm.
    pub(super) fn check_due(&mut self, now: Timestamp, index: u32) {
        let interval = self.timings.health_check_interval;
        let Some(e) = self.store.instances.get(index) else { return };
        let InstanceState::Live(d) = &e.state else { return };
        let kind = e.lease.check();
        if kind == CheckKind::None || d.ephemeral {
            return;
        }
        if self.responsibility.is_mine(e.hash) && self.checks.len() < self.limits.max_pending_checks {
            let path =
                if kind == CheckKind::Http { check_path_of(&d.metadata).to_owned() } else { String::new() };
            if let Some(key) = self.store.instance_key(e) {
                self.checks.push_back(HealthCheck { key, kind, path });
            }
        }
        self.store.arm_instance(index, now + interval);
    }

    /// The next check for the driver.
    pub(crate) fn poll_check(&mut self) -> Option<HealthCheck> {
        self.checks.pop_front()
    }

    /// Takes the outcome of a check. Returns whether the instance's health
    /// changed.
    pub(crate) fn check_result(&mut self, now: Timestamp, key: &InstanceKey, passed: bool) -> bool {
        let Some(index) = self.store.find_instance(key) else { return false };
        let Some(e) = self.store.instances.get_mut(index) else { return false };
        let InstanceState::Live(d) = &e.state else { return false };
        if d.ephemeral || e.lease.check() == CheckKind::None {
            return false;
        }
        e.check_failures = if passed { 0 } else { e.check_failures.saturating_add(1) };
        let healthy = if passed {
            true
        } else if e.check_failures >= FAILURES_TO_UNHEALTHY {
            false
        } else {
            return false;
        };
        if d.healthy == healthy {
            return false;
        }
        let mut data = d.clone();
        data.healthy = healthy;
        let Some(version) = self.derived_version(index) else { return false };
        self.stats.checks_changed += 1;
        let cause = if healthy { ChangeCause::PassedCheck } else { ChangeCause::FailedCheck };
        self.with_cause(cause, |r| r.set_instance(index, version, InstanceState::Live(data), now, true));
        true
    }
}
