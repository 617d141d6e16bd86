//! The load of the node's stored records (see [`crate::durable`]): they
//! merge by version like a peer's. The durable output itself is the
//! Storage's (`crate::storage::durable`).

use std::time::Duration;

use crate::durable::{LoadReport, record_key};
use crate::record::Record;
use crate::time::Timestamp;

use super::{MergeOutcome, ServiceManager};

impl ServiceManager {
    /// Loads one stored record: merged by version like a peer's, without
    /// the clock-skew check (the node wrote or accepted it itself; its wall
    /// clock may have gone back since), so that nothing stored is refused
    /// for the clock's sake. Validation of the content still applies.
    pub(crate) fn load(&mut self, now: Timestamp, record: Record, report: &mut LoadReport) {
        let key = record_key(&record);
        let tombstone = record.is_tombstone();
        let service = matches!(record, Record::Service { .. });
        let skew = std::mem::replace(&mut self.timings.max_clock_skew, Duration::MAX);
        let outcome = self.merge(now, record);
        self.timings.max_clock_skew = skew;
        match outcome {
            MergeOutcome::Applied => {
                report.loaded += 1;
                match (tombstone, service) {
                    (true, _) => report.tombstones += 1,
                    (false, true) => report.services += 1,
                    (false, false) => report.instances += 1,
                }
            }
            // Only a tombstone past its purge time is stale in an empty
            // store (the store holds one record per key).
            MergeOutcome::Stale | MergeOutcome::Refuted { .. } => report.expired.push(key),
            MergeOutcome::Rejected(why) => report.rejected.push((key, why)),
        }
    }

    /// Advances the version clock past `floor` (the highest counter the
    /// node had issued or seen when it last committed).
    pub(crate) fn observe_floor(&mut self, floor: u64) {
        self.hlc.observe(floor);
    }
}
