//! The Storage's durable output: the record changes the driver writes to
//! disk (see [`crate::durable`]). Loading stored records is the Service
//! Manager's (they merge by version like a peer's).
//!
//! Three hooks feed the log: `write_instance` and `write_service`
//! (the single writers of record state) push a handle, the purges push the
//! key. Handles are resolved when the driver polls, so a record changed
//! several times between two polls is written in its latest state, and a
//! record purged meanwhile yields only its deletion.

use std::collections::VecDeque;

use crate::durable::{DurableWrite, RecordKey};
use crate::record::{InstanceState, Record};

use super::{RecordRef, Storage};

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

impl Storage {
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
}

impl Storage {
    /// A page of the live ephemeral instances from instance slot `cursor`
    /// (0 to start): at most `max` records, and the cursor of the next page
    /// (`None` at the end). Slots never move, so a record that is not
    /// changed while the pages are taken is in exactly one page; a record
    /// changed meanwhile is in the durable output anyway.
    pub(crate) fn ephemeral_page(&self, cursor: u32, max: usize) -> (Vec<Record>, Option<u32>) {
        let mut out = Vec::new();
        for (i, e) in self.instances.iter_from(cursor) {
            if !matches!(&e.state, InstanceState::Live(d) if d.ephemeral) {
                continue;
            }
            if out.len() >= max {
                return (out, Some(i));
            }
            out.extend(self.instance_record(e));
        }
        (out, None)
    }
}
