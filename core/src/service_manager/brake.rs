//! The expiry brake (self-preservation, as Eureka calls it).
//!
//! A node that lost its own network stops hearing every heartbeat at once.
//! Without a brake it would remove every instance within one removal
//! timeout and replicate those removals the moment the network returns. The
//! brake counts removals in a sliding window; when the removals of the window
//! plus the instances held back would exceed `max(floor, share * ephemeral)`,
//! it engages: instances past their removal time stay (unhealthy) and are
//! re-checked later. It releases when enough held instances heartbeat again
//! (or are removed by other means) that the count fits under the limit.

use std::collections::{BTreeSet, VecDeque};

use crate::config::BrakeConfig;
use crate::time::Timestamp;

#[derive(Debug)]
pub(super) struct Brake {
    config: BrakeConfig,
    /// Times of removals within the window, oldest first.
    removals: VecDeque<Timestamp>,
    /// Instance slots held back.
    held: BTreeSet<u32>,
    engaged: bool,
}

impl Brake {
    pub(super) fn new(config: BrakeConfig) -> Brake {
        Brake { config, removals: VecDeque::new(), held: BTreeSet::new(), engaged: false }
    }

    pub(super) fn engaged(&self) -> bool {
        self.engaged
    }

    /// Whether the instance slot is held back now.
    pub(super) fn is_held(&self, slot: u32) -> bool {
        self.held.contains(&slot)
    }

    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// How long a held instance waits before it is checked again.
    pub(super) fn recheck_after(&self) -> std::time::Duration {
        (self.config.window / 6).max(std::time::Duration::from_secs(1))
    }

    /// Removals allowed per window out of a population of `ephemeral` instances.
    pub(super) fn allowed(&self, ephemeral: usize) -> usize {
        let share = (self.config.share * ephemeral as f64).floor() as usize;
        share.max(self.config.floor)
    }

    /// Whether instance `slot`, past its removal time, may be removed now.
    /// Records the removal if so, holds the instance if not.
    pub(super) fn allow(&mut self, now: Timestamp, slot: u32, ephemeral: usize) -> bool {
        if !self.config.enabled() {
            return true;
        }
        let horizon = now.saturating_sub(self.config.window);
        while self.removals.front().is_some_and(|t| *t <= horizon) {
            self.removals.pop_front();
        }
        // The population the share is of: as it was before this window's removals.
        let allowed = self.allowed(ephemeral + self.removals.len());
        let was_held = self.held.contains(&slot);
        let others_held = self.held.len() - usize::from(was_held);
        let would_be = self.removals.len() + others_held + 1;
        if would_be > allowed {
            self.engaged = true;
            self.held.insert(slot);
            return false;
        }
        self.engaged = false;
        self.held.remove(&slot);
        self.removals.push_back(now);
        true
    }

    /// Forgets a held instance (it beat again, or left by other means).
    pub(super) fn release(&mut self, slot: u32) {
        if self.held.remove(&slot) && self.held.is_empty() {
            self.engaged = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn brake() -> Brake {
        Brake::new(BrakeConfig { share: 0.5, floor: 2, window: Duration::from_secs(60) })
    }

    #[test]
    fn removals_beyond_the_share_of_a_window_are_held() {
        let mut b = brake();
        let now = Timestamp::from_millis(1_000);
        // 10 ephemeral instances: 5 removals allowed per window.
        let allowed: Vec<bool> = (0..8).map(|slot| b.allow(now, slot, 10 - slot.min(5) as usize)).collect();
        assert_eq!(allowed, [true, true, true, true, true, false, false, false]);
        assert!(b.engaged());
        assert_eq!(b.held(), 3);
    }

    #[test]
    fn the_brake_releases_when_held_instances_beat_again() {
        let mut b = brake();
        let now = Timestamp::from_millis(1_000);
        for slot in 0..8 {
            b.allow(now, slot, 10);
        }
        for slot in 5..8 {
            b.release(slot);
        }
        assert!(!b.engaged());
        // A new window allows removals again.
        let later = now + Duration::from_secs(61);
        assert!(b.allow(later, 9, 10));
    }

    #[test]
    fn the_floor_allows_small_registries_to_expire() {
        let mut b = brake();
        let now = Timestamp::from_millis(1_000);
        assert!(b.allow(now, 0, 2));
        assert!(b.allow(now, 1, 2));
        assert!(!b.allow(now, 2, 2));
    }

    #[test]
    fn share_of_one_turns_the_brake_off() {
        let mut b = Brake::new(BrakeConfig { share: 1.0, floor: 0, window: Duration::from_secs(60) });
        assert!((0..100).all(|slot| b.allow(Timestamp::ZERO, slot, 10)));
    }
}
