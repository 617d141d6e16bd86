//! Deliberate bugs the simulator injects to prove it would catch them (its
//! mutation score). Compiled in only with the `sim` feature; without it every
//! check below is a constant `false`.

/// A deliberate bug (simulator only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Bug {
    /// Merge keeps the older of two records.
    KeepOlderOnMerge,
    /// A node never refutes an expiry or unhealthy mark it has evidence against.
    NoRefute,
    /// A beat never lifts an unhealthy mark.
    NoLift,
    /// No grace period when a node inherits instances or after a pause.
    NoGrace,
    /// Merging a record does not advance the hybrid clock past it.
    NoObserve,
    /// Tombstones are purged after a tenth of `tombstone_ttl`, without
    /// waiting for agreement or refusing what comes back.
    EarlyPurge,
    /// Anti-entropy sends the first `max_records_per_message` records of the
    /// differing buckets and claims to have covered them all (issue 9, 1).
    AntiEntropyPrefix,
    /// Any peer going down grants every instance a fresh grace period
    /// (issue 9, 2).
    GlobalGrace,
    /// A register of an instance held live with the same data issues no new
    /// version (issue 9, 3).
    SameVersionRegister,
    /// Tombstones are purged at their TTL whether or not every peer holds
    /// them, and nothing is refused as a possible purged deletion: the
    /// behaviour before issue 9, 5.
    PurgeWithoutAgreement,
    /// A live record for a key this node does not hold is accepted whatever
    /// its age (issue 9, 5).
    AcceptStaleUnknown,
    /// The expiry brake reports itself released while it still holds
    /// instances back (issue 9, 5).
    BrakeClearsEarly,
    /// A derived write (health mark, lift, refutation, expiry) takes the
    /// smallest counter above the record it judged instead of keeping its
    /// client write's counter (issue 9, 4b).
    DerivedPlusOne,
    /// A node ignores a client's `after` token (issue 9, 4a).
    NoAfterToken,
}

impl Bug {
    /// Every bug, in the order of the mutation table.
    pub const ALL: [Bug; 14] = [
        Bug::KeepOlderOnMerge,
        Bug::NoRefute,
        Bug::NoLift,
        Bug::NoGrace,
        Bug::NoObserve,
        Bug::EarlyPurge,
        Bug::AntiEntropyPrefix,
        Bug::GlobalGrace,
        Bug::SameVersionRegister,
        Bug::PurgeWithoutAgreement,
        Bug::AcceptStaleUnknown,
        Bug::BrakeClearsEarly,
        Bug::DerivedPlusOne,
        Bug::NoAfterToken,
    ];

    /// The bug's name on the simulator's command line (`--bug NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::KeepOlderOnMerge => "keep-older-on-merge",
            Bug::NoRefute => "no-refute",
            Bug::NoLift => "no-lift",
            Bug::NoGrace => "no-grace",
            Bug::NoObserve => "no-observe",
            Bug::EarlyPurge => "early-purge",
            Bug::AntiEntropyPrefix => "anti-entropy-prefix",
            Bug::GlobalGrace => "global-grace",
            Bug::SameVersionRegister => "same-version-register",
            Bug::PurgeWithoutAgreement => "purge-without-agreement",
            Bug::AcceptStaleUnknown => "accept-stale-unknown",
            Bug::BrakeClearsEarly => "brake-clears-early",
            Bug::DerivedPlusOne => "derived-plus-one",
            Bug::NoAfterToken => "no-after-token",
        }
    }

    /// The bug named `name`.
    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The set of bugs injected into one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bugs(#[cfg(feature = "sim")] u16);

impl Bugs {
    /// Whether `bug` is injected.
    #[inline]
    pub(crate) fn has(self, bug: Bug) -> bool {
        #[cfg(feature = "sim")]
        {
            self.0 & (1 << bug as u16) != 0
        }
        #[cfg(not(feature = "sim"))]
        {
            let _ = bug;
            false
        }
    }

    /// Injects `bug`.
    #[cfg(feature = "sim")]
    pub(crate) fn add(&mut self, bug: Bug) {
        self.0 |= 1 << bug as u16;
    }
}
