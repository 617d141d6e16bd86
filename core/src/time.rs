//! Time as a value: [`Timestamp`] is milliseconds since the node's own epoch.
//!
//! The core never reads a clock. The driver turns its monotonic clock into a
//! `Timestamp` (the HTTP transport counts from process start, the simulator
//! from zero) and passes it as the first argument of every input. Timestamps
//! are local: they are never sent to, or compared with, another node's.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in the node's local time, in milliseconds since the node's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The node's epoch.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The far future: later than any real deadline.
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(millis(d)))
    }

    /// `self - d`, saturating at [`Timestamp::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(millis(d)))
    }
}

/// Whole milliseconds of `d`, saturating at `u64::MAX`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, rhs: Duration) -> Timestamp {
        self.saturating_add(rhs)
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;

    fn sub(self, rhs: Timestamp) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Keeps the latest `now` seen, so that time never goes backwards for the core.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Clock {
    last: Timestamp,
}

impl Clock {
    /// Clamps `now` to the latest time seen and remembers it.
    pub(crate) fn observe(&mut self, now: Timestamp) -> Timestamp {
        if now > self.last {
            self.last = now;
        }
        self.last
    }

    /// The latest time seen.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Timestamp {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(Timestamp::ZERO - Timestamp::from_millis(5), Duration::ZERO);
        assert_eq!(Timestamp::from_millis(3).saturating_sub(Duration::from_millis(10)), Timestamp::ZERO);
    }

    #[test]
    fn clock_never_goes_backwards() {
        let mut clock = Clock::default();
        assert_eq!(clock.observe(Timestamp::from_millis(10)), Timestamp::from_millis(10));
        assert_eq!(clock.observe(Timestamp::from_millis(4)), Timestamp::from_millis(10));
        assert_eq!(clock.last(), Timestamp::from_millis(10));
    }
}
