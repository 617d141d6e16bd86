//! The Storage's durable output: the record changes the driver writes to
//! disk (see [`crate::durable`]), and the load of stored records.
//!
//! Three hooks feed the log: `set_instance_leased` and `set_service_record`
//! (the single writers of record state) push a handle, the purges push the
//! key. Handles are resolved when the driver polls, so a record changed
//! several times between two polls is written in its latest state, and a
//! record purged meanwhile yields only its deletion.

use std::collections::VecDeque;
use std::time::Duration;

use crate::durable::{DurableWrite, LoadReport, RecordKey, record_key};
use crate::record::Record;
use crate::time::Timestamp;

use super::{MergeOutcome, RecordRef, Registry};

/// One entry of the log, in the order the changes happened.
#[derive(Clone, Debug)]
pub(crate) enum DurableOp {
    Put(RecordRef),
    Delete(RecordKey),
}

/// Changes not yet taken by the driver. Off (and empty) until the driver
/// enables it; it is drained after every input, so it holds at most the
/// changes of one input.
#[derive(Debug, Default)]
pub(crate) struct DurableLog {
    enabled: bool,
    ops: VecDeque<DurableOp>,
}

impl DurableLog {
    pub(crate) fn push(&mut self, op: DurableOp) {
        if self.enabled {
            self.ops.push_back(op);
        }
    }
}

impl Registry {
    /// Starts (or stops) recording changes for the disk.
    pub(crate) fn set_durable_output(&mut self, enabled: bool) {
        self.durable.enabled = enabled;
        if !enabled {
            self.durable.ops.clear();
        }
    }

    /// The next change for the disk, resolved to the record's current state.
    pub(crate) fn poll_durable(&mut self) -> Option<DurableWrite> {
        while let Some(op) = self.durable.ops.pop_front() {
            match op {
                DurableOp::Put(r) => {
                    if let Some(record) = self.record(r) {
                        return Some(DurableWrite::Put(record));
                    }
                }
                DurableOp::Delete(k) => return Some(DurableWrite::Delete(k)),
            }
        }
        None
    }

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
            MergeOutcome::Stale | MergeOutcome::Refuted { .. } | MergeOutcome::Refused(_) => {
                report.expired.push(key)
            }
            MergeOutcome::Rejected(why) => report.rejected.push((key, why.to_string())),
        }
    }

    /// Advances the version clock past `floor` (the highest counter the
    /// node had issued or seen when it last committed).
    pub(crate) fn observe_floor(&mut self, floor: u64) {
        self.hlc.observe(floor);
    }
}
