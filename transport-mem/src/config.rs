//! Validated configuration: link behaviour and the network's bounds.
//!
//! Every value of these types is valid by construction ("parse, don't
//! validate"): a probability is checked once, in [`Probability::new`], and the
//! bounds are non-zero by type. Nothing in the network re-checks them.

use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

/// A probability in `0.0..=1.0`. Not NaN.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Probability(f64);

impl Probability {
    /// Never.
    pub const ZERO: Probability = Probability(0.0);
    /// Always.
    pub const ONE: Probability = Probability(1.0);

    /// Checks that `p` lies in `0.0..=1.0`; NaN and infinities are rejected.
    pub fn new(p: f64) -> Result<Probability, ConfigError> {
        if (0.0..=1.0).contains(&p) {
            Ok(Probability(p))
        } else {
            Err(ConfigError::ProbabilityOutOfRange { value: p })
        }
    }

    /// The probability as a number in `0.0..=1.0`.
    pub const fn value(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Probability {
    type Error = ConfigError;

    fn try_from(p: f64) -> Result<Probability, ConfigError> {
        Probability::new(p)
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// How one directed link treats the messages sent over it.
///
/// Time has the resolution of [`muster_core::Timestamp`]: durations are
/// truncated to whole milliseconds. A message sent at `t` arrives at
/// `t + latency + j (+ reorder_delay)`, where `j` is drawn uniformly from
/// `0..=jitter` and `reorder_delay` is added with probability `reorder`.
/// Jitter alone already lets messages of one link arrive out of order; set it
/// to zero for a FIFO link whose only reordering comes from `reorder`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay of every message.
    pub latency: Duration,
    /// Upper bound of the random extra delay, drawn uniformly from `0..=jitter`.
    pub jitter: Duration,
    /// Chance that a message is lost.
    pub loss: Probability,
    /// Chance that a message that was not lost arrives twice; each copy
    /// draws its own jitter and reordering.
    pub duplicate: Probability,
    /// Chance that a copy is held back by an extra `reorder_delay`, so that
    /// messages sent after it on the same link overtake it.
    pub reorder: Probability,
    /// The extra delay of a reordered copy.
    pub reorder_delay: Duration,
}

impl LinkConfig {
    /// A link that loses, duplicates and reorders nothing and delays every
    /// message by exactly `latency`.
    pub const fn perfect(latency: Duration) -> LinkConfig {
        LinkConfig {
            latency,
            jitter: Duration::ZERO,
            loss: Probability::ZERO,
            duplicate: Probability::ZERO,
            reorder: Probability::ZERO,
            reorder_delay: Duration::from_millis(50),
        }
    }
}

impl Default for LinkConfig {
    /// [`LinkConfig::perfect`] with a latency of 1 ms; `reorder_delay` is
    /// 50 ms, so that setting only `reorder` has a visible effect.
    fn default() -> LinkConfig {
        LinkConfig::perfect(Duration::from_millis(1))
    }
}

/// Bounds on what the network holds at once, so that a runaway sender cannot
/// grow its memory without bound. A copy that would exceed either bound is
/// dropped and counted as [`DropCause::Overflow`](crate::DropCause::Overflow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most copies in flight (scheduled or held) at once.
    pub in_flight_messages_max: NonZeroUsize,
    /// Most bytes in flight (scheduled or held) at once, by the sizes given to
    /// [`Network::send`](crate::Network::send).
    pub in_flight_bytes_max: NonZeroU64,
}

impl Default for Limits {
    /// 100 000 messages and 256 MiB.
    fn default() -> Limits {
        Limits {
            in_flight_messages_max: NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
            in_flight_bytes_max: NonZeroU64::new(256 << 20).unwrap_or(NonZeroU64::MIN),
        }
    }
}

/// A configuration value is invalid. Nothing was built or changed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A probability was NaN or outside `0.0..=1.0`.
    ProbabilityOutOfRange {
        /// The rejected value.
        value: f64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ProbabilityOutOfRange { value } => {
                write!(f, "invalid probability {value}: must be a number from 0 to 1")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_outside_unit_interval_is_rejected() {
        for bad in [-0.1, 1.000_001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = Probability::new(bad).unwrap_err();
            assert!(matches!(err, ConfigError::ProbabilityOutOfRange { .. }), "{bad}");
        }
        assert!(Probability::new(-0.1).unwrap_err().to_string().contains("from 0 to 1"));
    }

    #[test]
    fn probability_bounds_are_accepted() {
        assert_eq!(Probability::new(0.0), Ok(Probability::ZERO));
        assert_eq!(Probability::try_from(1.0), Ok(Probability::ONE));
        assert_eq!(Probability::new(0.25).unwrap().value(), 0.25);
    }

    #[test]
    fn default_link_is_perfect_with_one_millisecond_latency() {
        let link = LinkConfig::default();
        assert_eq!(link.latency, Duration::from_millis(1));
        assert_eq!(link.loss, Probability::ZERO);
        assert_eq!(link, LinkConfig::perfect(Duration::from_millis(1)));
    }
}
