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

use std::time::Duration;

use crate::error::{Field, InvalidInput, RequestError};
use crate::record::LOGICAL_BITS;

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
