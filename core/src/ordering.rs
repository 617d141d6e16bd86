//! Ordering under clock skew (issue 9, defect 4): the client's ordering
//! token and the estimate of each peer's clock offset.
//!
//! - A client of the native API keeps the highest version counter it has
//!   seen (every write answer carries one) and sends it back as `after` on
//!   every write, on any node. The node's clock observes it before the write
//!   takes its version, so one client's writes keep their order across
//!   failover, whatever the skew between the nodes. A token further ahead of
//!   the node's wall clock than `max_clock_skew` is refused, so a client
//!   cannot drag the clock into the future.
//! - Each node estimates each peer's clock offset from its pings with NTP's
//!   four timestamps ([`OffsetEstimate`]); a peer whose offset exceeds
//!   `max_clock_skew` beyond the estimate's uncertainty is flagged skewed.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Field, InvalidInput, RequestError};
use crate::record::LOGICAL_BITS;

/// Round trips kept per peer; the estimate is the one with the smallest
/// round-trip time among them (NTP's clock filter, RFC 5905 section 10).
pub const OFFSET_SAMPLES: usize = 8;

/// One peer's clock offset as this node measures it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClockOffset {
    /// The peer's wall clock minus this node's, in milliseconds.
    pub offset_ms: i64,
    /// The round-trip time of the sample it comes from, in milliseconds;
    /// the true offset is within `rtt_ms / 2` of `offset_ms`.
    pub rtt_ms: u64,
}

impl ClockOffset {
    /// The error bound of the estimate: half the round trip.
    pub fn uncertainty_ms(&self) -> u64 {
        self.rtt_ms.div_ceil(2)
    }

    /// Whether the peer's clock is certainly further than `bound` from this
    /// node's: the offset exceeds the bound beyond its uncertainty.
    pub fn exceeds(&self, bound: Duration) -> bool {
        self.offset_ms.unsigned_abs().saturating_sub(self.uncertainty_ms()) > crate::time::millis(bound)
    }
}

/// The estimate of one peer's clock offset from ping round trips, with NTP's
/// four timestamps: this node sends a ping at `t1` (its wall clock), the
/// peer receives it at `t2` and answers at `t3` (the peer's wall clock), the
/// answer arrives at `t4`. Then `offset = ((t2 - t1) + (t3 - t4)) / 2` and
/// `rtt = (t4 - t1) - (t3 - t2)`; whatever the asymmetry of the two paths,
/// the true offset is within `rtt / 2` of the estimate. Of the last
/// [`OFFSET_SAMPLES`] samples the one with the smallest round trip is kept
/// (queueing only ever lengthens a path), so the estimate follows a stepped
/// clock within that many pings.
#[derive(Clone, Debug, Default)]
pub(crate) struct OffsetEstimator {
    samples: VecDeque<ClockOffset>,
}

impl OffsetEstimator {
    /// Takes one round trip; a sample whose times make no sense (an answer
    /// received before its ping was sent, or the peer answering before it
    /// received) is dropped.
    pub(crate) fn add(&mut self, t1: u64, t2: u64, t3: u64, t4: u64) {
        let (t1, t2, t3, t4) = (i128::from(t1), i128::from(t2), i128::from(t3), i128::from(t4));
        if t4 < t1 || t3 < t2 {
            return;
        }
        let rtt = (t4 - t1) - (t3 - t2);
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        let (Ok(rtt_ms), Ok(offset_ms)) = (u64::try_from(rtt.max(0)), i64::try_from(offset)) else { return };
        if self.samples.len() == OFFSET_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(ClockOffset { offset_ms, rtt_ms });
    }

    /// The current estimate: the sample with the smallest round trip (the
    /// newest of equals).
    pub(crate) fn estimate(&self) -> Option<ClockOffset> {
        self.samples.iter().rev().min_by_key(|s| s.rtt_ms).copied()
    }
}

/// Checks a client's ordering token against this node's wall clock
/// (`wall_ms`) and the tolerated skew.
pub(crate) fn check_token(wall_ms: u64, max_skew: Duration, after: u64) -> Result<(), RequestError> {
    let limit = wall_ms.saturating_add(crate::time::millis(max_skew));
    let physical = after >> LOGICAL_BITS;
    if physical > limit {
        return Err(InvalidInput::new(
            Field::After,
            format!(
                "the token's time ({physical} ms since the epoch) is {} ms ahead of this node's clock, more than \
                 max_clock_skew ({} ms); send the counter of a write answer of this cluster (or none), and check \
                 the clocks (NTP) of the nodes",
                physical - wall_ms,
                max_skew.as_millis()
            ),
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round trip to a peer whose clock is `offset` ms ahead, with the two
    /// one-way delays `out` and `back`, sent at this node's time `t1`.
    fn trip(e: &mut OffsetEstimator, t1: u64, offset: i64, out: u64, back: u64) {
        let t2 = (t1 + out).saturating_add_signed(offset);
        let t3 = t2 + 1;
        let t4 = t1 + out + 1 + back;
        e.add(t1, t2, t3, t4);
    }

    #[test]
    fn the_offset_of_a_symmetric_path_is_exact() {
        let mut e = OffsetEstimator::default();
        trip(&mut e, 1_000_000, 2_000, 5, 5);
        assert_eq!(e.estimate(), Some(ClockOffset { offset_ms: 2_000, rtt_ms: 10 }));
        trip(&mut e, 1_000_000, -700, 3, 3);
        assert_eq!(e.estimate().unwrap().offset_ms, -700);
    }

    #[test]
    fn an_asymmetric_path_errs_by_at_most_half_the_round_trip_and_the_shortest_trip_wins() {
        let mut e = OffsetEstimator::default();
        // 40 ms out, 2 ms back: the estimate is off by 19 ms, within rtt / 2.
        trip(&mut e, 1_000_000, 300, 40, 2);
        let first = e.estimate().unwrap();
        assert!((first.offset_ms - 300).unsigned_abs() <= first.uncertainty_ms(), "{first:?}");
        assert_eq!(first.offset_ms, 319);
        // A later, quicker round trip replaces it; a slow one does not.
        trip(&mut e, 1_001_000, 300, 1, 1);
        trip(&mut e, 1_002_000, 300, 200, 1);
        assert_eq!(e.estimate(), Some(ClockOffset { offset_ms: 300, rtt_ms: 2 }));
    }

    #[test]
    fn a_stepped_clock_is_followed_within_the_sample_window() {
        let mut e = OffsetEstimator::default();
        trip(&mut e, 1_000_000, 10, 1, 1);
        for i in 1..=OFFSET_SAMPLES as u64 {
            // The peer's clock stepped 5 s ahead; these trips are slower.
            trip(&mut e, 1_000_000 + i * 1_000, 5_010, 3, 3);
            let now = e.estimate().unwrap();
            if i < OFFSET_SAMPLES as u64 {
                assert_eq!(now.offset_ms, 10, "the quick old sample still wins at {i}");
            } else {
                assert_eq!(now.offset_ms, 5_010, "the step is followed after {OFFSET_SAMPLES} pings");
            }
        }
        assert!(e.estimate().unwrap().exceeds(Duration::from_millis(500)));
        assert!(!ClockOffset { offset_ms: -600, rtt_ms: 300 }.exceeds(Duration::from_millis(500)));
        assert!(ClockOffset { offset_ms: -800, rtt_ms: 300 }.exceeds(Duration::from_millis(500)));
    }

    #[test]
    fn nonsense_times_are_dropped_without_panic() {
        let mut e = OffsetEstimator::default();
        e.add(10, 0, 0, 5); // answered before it was sent
        e.add(0, 10, 5, 20); // the peer answered before it received
        assert_eq!(e.estimate(), None);
        e.add(u64::MAX, 0, u64::MAX, u64::MAX);
        e.add(0, u64::MAX, u64::MAX, 1);
        assert_eq!(e.estimate().map(|s| s.rtt_ms), Some(0));
    }

    #[test]
    fn a_token_within_the_skew_bound_is_taken_and_one_beyond_is_refused_naming_after() {
        let wall = 1_700_000_000_000u64;
        let bound = Duration::from_millis(500);
        assert!(check_token(wall, bound, 0).is_ok());
        assert!(check_token(wall, bound, (wall + 500) << LOGICAL_BITS).is_ok());
        let err = check_token(wall, bound, (wall + 501) << LOGICAL_BITS).unwrap_err();
        assert!(matches!(err, RequestError::Invalid(InvalidInput { field: Field::After, .. })), "{err}");
        assert!(check_token(wall, bound, u64::MAX).is_err());
    }
}
