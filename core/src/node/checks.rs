//! Structural checks of a node beyond its indexes and bounds, for tests and
//! the simulator: each returns what is wrong instead of panicking, so that a
//! simulator can report it as a violation of a named invariant.

use super::Node;

impl Node {
    /// The node's hybrid clock must be at least the counter of every record
    /// it holds: every version it issues afterwards is then above every
    /// version it has seen (Lamport's rule; what `--bug no-observe` breaks).
    /// `None` when it holds; otherwise the first record ahead of the clock.
    /// O(records), allocating only when it finds one.
    pub fn clock_behind_records(&self) -> Option<String> {
        let clock = self.version_counter();
        let store = self.registry.store();
        let instances = store.instances.iter().map(|(_, e)| e.version.counter).max().unwrap_or(0);
        let services =
            store.services.iter().filter_map(|(_, s)| s.record.as_ref()).map(|r| r.version.counter);
        if instances.max(services.max().unwrap_or(0)) <= clock {
            return None;
        }
        self.records().into_iter().find(|r| r.version().counter > clock).map(|r| {
            let v = r.version();
            format!(
                "clock {clock} is behind the counter {} of {} (written by {}): a version issued now could \
                 be older than one already held",
                v.counter,
                match &r {
                    crate::record::Record::Instance { key, .. } => key.to_string(),
                    crate::record::Record::Service { key, .. } => format!("service {key}"),
                },
                v.origin
            )
        })
    }
}
