//! The timer set: exactly one entry per ephemeral instance, per checked
//! persistent instance and per tombstone. The Service Manager decides when
//! each is due (`crate::service_manager`, expiry); the Storage keeps the set
//! and each entry's own copy of its deadline equal.

use crate::time::Timestamp;

use super::{Storage, TimerRef};

impl Storage {
    /// The earliest timer.
    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Takes the earliest timer if it is due at `now`; an instance's timer
    /// is cleared (the caller re-arms it as its state needs).
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<TimerRef> {
        let &(at, what) = self.timers.first()?;
        if at > now {
            return None;
        }
        self.timers.pop_first();
        if let TimerRef::Instance(i) = what {
            if let Some(e) = self.instances.get_mut(i) {
                e.timer = None;
            }
        }
        Some(what)
    }

    /// Arms (or re-arms) the single timer of an instance.
    pub(crate) fn arm_instance(&mut self, index: u32, at: Timestamp) {
        let Some(e) = self.instances.get_mut(index) else { return };
        if let Some(old) = e.timer.replace(at) {
            self.timers.remove(&(old, TimerRef::Instance(index)));
        }
        self.timers.insert((at, TimerRef::Instance(index)));
    }

    /// Removes the timer of an instance, if it has one.
    pub(crate) fn disarm_instance(&mut self, index: u32) {
        let Some(e) = self.instances.get_mut(index) else { return };
        if let Some(old) = e.timer.take() {
            self.timers.remove(&(old, TimerRef::Instance(index)));
        }
    }

    /// Arms (or re-arms) the purge timer of a service tombstone.
    pub(crate) fn arm_service(&mut self, index: u32, at: Timestamp) {
        let Some(r) = self.services.get_mut(index).and_then(|s| s.record.as_mut()) else { return };
        if let Some(old) = r.timer.replace(at) {
            self.timers.remove(&(old, TimerRef::Service(index)));
        }
        self.timers.insert((at, TimerRef::Service(index)));
    }

    /// Removes the timer of a service record, if it has one.
    pub(crate) fn disarm_service(&mut self, index: u32) {
        let Some(r) = self.services.get_mut(index).and_then(|s| s.record.as_mut()) else { return };
        if let Some(old) = r.timer.take() {
            self.timers.remove(&(old, TimerRef::Service(index)));
        }
    }
}
