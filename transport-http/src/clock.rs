//! The node's clock: the only place that reads the system clocks.
//!
//! Core time ([`Timestamp`]) is milliseconds of the monotonic clock since the
//! process started; the wall clock is read once, at start, for
//! [`muster_core::Config::wall_clock_ms`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_core::Timestamp;
use tokio::time::Instant;

/// Monotonic time since process start, as core timestamps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
    wall_clock_ms: u64,
}

impl Clock {
    /// Starts the clock now.
    pub(crate) fn start() -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Clock { start: Instant::now(), wall_clock_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX) }
    }

    /// Wall-clock milliseconds since the Unix epoch at [`Timestamp::ZERO`].
    pub(crate) fn wall_clock_ms(&self) -> u64 {
        self.wall_clock_ms
    }

    /// The current core time (whole milliseconds, rounded down).
    pub(crate) fn now(&self) -> Timestamp {
        Timestamp::from_millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// The instant at which [`Clock::now`] reaches `t`; far in the future for
    /// [`Timestamp::MAX`].
    pub(crate) fn instant_at(&self, t: Timestamp) -> Instant {
        // A day is far enough for "never"; it keeps `Instant` arithmetic in range.
        let ms = t.as_millis().min(self.now().as_millis().saturating_add(86_400_000));
        self.start + Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_reaches_a_timer_at_its_instant() {
        let c = Clock::start();
        let t = c.now() + Duration::from_millis(3);
        assert!(c.instant_at(t) >= c.start + Duration::from_millis(3));
        assert!(c.instant_at(Timestamp::MAX) > Instant::now());
        assert!(c.wall_clock_ms() > 1_600_000_000_000);
    }
}
