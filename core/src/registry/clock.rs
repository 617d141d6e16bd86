//! The highest version counter the registry holds, for the structural check
//! that a node's clock covers every record (`Node::clock_behind_records`).

use super::Registry;

impl Registry {
    /// The highest counter of any record held, tombstones included; 0 when
    /// empty. O(records), without allocating.
    pub(crate) fn max_counter(&self) -> u64 {
        let instances = self.instances.iter().map(|(_, e)| e.version.counter).max().unwrap_or(0);
        let services =
            self.services.iter().filter_map(|(_, s)| s.record.as_ref()).map(|r| r.version.counter).max();
        instances.max(services.unwrap_or(0))
    }
}
