//! Counters of what the network did with the messages given to it.

use std::fmt;

/// Why a copy of a message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropCause {
    /// Lost at random, by the link's `loss` probability.
    Loss,
    /// The link was cut by a partition or an isolation, at send or at delivery time.
    Partition,
    /// The receiver crashed while the copy was on its way
    /// ([`Network::drop_in_flight_to`](crate::Network::drop_in_flight_to)).
    Crash,
    /// The copy would have exceeded the network's [`Limits`](crate::Limits).
    Overflow,
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropCause::Loss => "loss",
            DropCause::Partition => "partition",
            DropCause::Crash => "crash",
            DropCause::Overflow => "overflow",
        })
    }
}

/// Copies dropped, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Lost at random.
    pub loss: u64,
    /// Cut by a partition or an isolation.
    pub partition: u64,
    /// Addressed to a node that crashed while they were in flight.
    pub crash: u64,
    /// Beyond the in-flight bounds.
    pub overflow: u64,
}

impl Drops {
    /// All dropped copies.
    pub const fn total(&self) -> u64 {
        self.loss + self.partition + self.crash + self.overflow
    }

    /// Counts one dropped copy.
    pub(crate) fn count(&mut self, cause: DropCause) {
        let counter = match cause {
            DropCause::Loss => &mut self.loss,
            DropCause::Partition => &mut self.partition,
            DropCause::Crash => &mut self.crash,
            DropCause::Overflow => &mut self.overflow,
        };
        *counter += 1;
    }
}

/// A snapshot of the network's counters.
///
/// Every copy is accounted for:
/// `sent + duplicated == delivered + dropped.total() + in_flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages given to [`Network::send`](crate::Network::send).
    pub sent: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Copies handed out by [`Network::poll_delivery`](crate::Network::poll_delivery).
    pub delivered: u64,
    /// Copies dropped, by cause.
    pub dropped: Drops,
    /// Bytes given to `send` (each message once, whatever became of it).
    pub bytes_sent: u64,
    /// Bytes handed out by `poll_delivery` (each delivered copy).
    pub bytes_delivered: u64,
    /// Copies in flight now, scheduled or held.
    pub in_flight: usize,
    /// Copies held now by [`Network::hold`](crate::Network::hold) or
    /// [`Network::clog`](crate::Network::clog); included in `in_flight`.
    pub held: usize,
    /// The most copies ever in flight at once.
    pub in_flight_max: usize,
}
