//! The driver's end of the durable output: drains [`Node::poll_durable`]
//! after every input, holds the replies that must wait for the disk, and
//! hands both to the store thread once per turn (after the turn's views are
//! published), which releases the replies after its commit.
//!
//! A reply waits when its request produced a write that must be durable
//! ([`DurableWrite::sync`]), or when it is a write of any kind while such a
//! write is still uncommitted: a client that repeats a persistent
//! registration another client just made is not told "done" before the
//! first one is on disk.
//!
//! The driver also compacts the store's ephemeral log (`store/log.rs`):
//! once the log holds more than twice as many entries as there are live
//! ephemeral instances (and at least [`COMPACT_MIN`]), it writes every live
//! ephemeral instance again, [`COMPACT_PAGE`] per turn, between a start and
//! an end mark; the store thread then drops the blobs before the start.

use std::sync::Arc;

use muster_core::durable::{DurableWrite, RecordKey};
use muster_core::{Node, Record, Request, Timestamp};

use crate::config::StorageSettings;
use crate::metrics::Metrics;
use crate::store::writer::{Batch, Held, Writer};
use crate::store::{self, StoreError};

/// Log entries below which the ephemeral log is never compacted.
pub(crate) const COMPACT_MIN: u64 = 50_000;
/// Live ephemeral instances written per turn while compacting.
pub(crate) const COMPACT_PAGE: usize = 1024;

/// The durable state of the driver (absent for a memory-only node).
pub(crate) struct Durable {
    writer: Writer,
    /// This turn's writes and held replies.
    batch: Batch,
    /// A sync write was drained since the last reply was placed.
    sync_since_reply: bool,
    /// This turn's batch holds a sync write.
    batch_sync: bool,
    /// Number of the next batch.
    seq: u64,
    /// Number of the last batch holding a sync write.
    last_sync: u64,
    /// Entries in the ephemeral log (since the start of the last
    /// compaction, if any).
    log_entries: u64,
    /// Log size at which the live ephemeral count is looked at again.
    next_check: u64,
    /// The smallest log that is compacted ([`COMPACT_MIN`]; smaller in tests).
    compact_min: u64,
    /// The cursor of the compaction under way.
    compacting: Option<u32>,
}

impl Durable {
    /// `log_entries` is the number of entries the store's ephemeral log
    /// held at start.
    pub(crate) fn new(writer: Writer, initial: Vec<DurableWrite>, log_entries: u64) -> Durable {
        let batch = Batch { writes: initial, ..Batch::default() };
        Durable {
            writer,
            batch,
            sync_since_reply: false,
            batch_sync: false,
            seq: 1,
            last_sync: 0,
            log_entries,
            next_check: COMPACT_MIN,
            compact_min: COMPACT_MIN,
            compacting: None,
        }
    }

    /// Takes the node's durable output.
    pub(crate) fn drain(&mut self, node: &mut Node) {
        while let Some(w) = node.poll_durable() {
            if w.sync() {
                self.sync_since_reply = true;
                self.batch_sync = true;
            }
            if matches!(
                w,
                DurableWrite::Put(Record::Instance { .. }) | DurableWrite::Delete(RecordKey::Instance(_))
            ) {
                self.log_entries += 1;
            }
            self.batch.writes.push(w);
        }
    }

    /// Whether a compaction of the ephemeral log is under way (the driver
    /// then takes turns even when idle, to finish it).
    pub(crate) fn compacting(&self) -> bool {
        self.compacting.is_some()
    }

    /// Starts a compaction if the log has grown past twice the live
    /// ephemeral instances, or adds the next page of the one under way.
    fn compact(&mut self, node: &Node) {
        let cursor = match self.compacting {
            Some(c) => c,
            None if self.log_entries >= self.next_check => {
                let live = node.stats().registry.ephemeral_instances as u64;
                if self.log_entries <= 2 * live {
                    self.next_check = self.log_entries + self.compact_min.min(live.max(1));
                    return;
                }
                tracing::debug!(entries = self.log_entries, live, "compacting the ephemeral log");
                self.batch.compaction_start = true;
                self.log_entries = 0;
                0
            }
            None => return,
        };
        let (page, next) = node.ephemeral_page(cursor, COMPACT_PAGE);
        self.log_entries += page.len() as u64;
        self.batch.writes.extend(page.into_iter().map(DurableWrite::Put));
        self.compacting = next;
        if next.is_none() {
            self.batch.compaction_end = true;
            self.next_check = self.log_entries.max(self.compact_min);
        }
    }

    /// Holds the reply to a request if it must wait for the disk; gives it
    /// back otherwise.
    pub(crate) fn hold(&mut self, write: bool, held: Held) -> Option<Held> {
        let in_flight = self.writer.committed() < self.last_sync;
        let wait = std::mem::take(&mut self.sync_since_reply) || (write && (in_flight || self.batch_sync));
        if wait {
            self.batch.replies.push(held);
            None
        } else {
            Some(held)
        }
    }

    /// Ends the turn: sends its writes and held replies to the store thread.
    pub(crate) fn end_turn(&mut self, node: &Node) {
        if std::mem::take(&mut self.batch_sync) {
            self.last_sync = self.seq;
        }
        self.compact(node);
        let marks = self.batch.compaction_start || self.batch.compaction_end;
        if self.batch.writes.is_empty() && self.batch.replies.is_empty() && !marks {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.floor = node.version_floor();
        batch.seq = self.seq;
        self.seq += 1;
        self.writer.send(batch);
    }

    /// Sends what is left and stops the store thread after its last commit.
    pub(crate) fn stop(mut self, node: &Node) {
        self.end_turn(node);
        self.writer.stop();
    }
}

/// Whether a request changes records (its reply may have to wait for the
/// disk). Heartbeats and reads do not.
pub(crate) fn is_write(req: &Request) -> bool {
    if let Request::Ordered { request, .. } = req {
        return is_write(request);
    }
    matches!(
        req,
        Request::Register(_)
            | Request::Deregister(_)
            | Request::Update(..)
            | Request::CreateService(..)
            | Request::UpdateService(..)
            | Request::PutService(..)
            | Request::DeleteService(_)
    )
}

/// Opens the node's store, loads it into `node` (before any other input),
/// and starts the store thread; `None` for a memory-only node. Logs where
/// the data is and what was loaded.
pub(crate) fn start(
    settings: &StorageSettings,
    node: &mut Node,
    now: Timestamp,
    metrics: &Arc<Metrics>,
) -> Result<Option<Durable>, StoreError> {
    let mut store = store::open(settings.data_dir.as_deref(), settings.cache_bytes)?;
    if !store.persistent() {
        tracing::info!("memory only: nothing is kept on disk; every start is empty");
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let stored = store.load()?;
    let read = stored.records.len();
    let (log_next, log_entries) = (stored.log_next, stored.log_entries);
    let report = node.load(now, stored.records, stored.floor);
    tracing::info!(
        store = %store.location(),
        records = read,
        log_entries,
        instances = report.instances,
        services = report.services,
        tombstones = report.tombstones,
        expired = report.expired.len(),
        ms = started.elapsed().as_millis() as u64,
        "data loaded"
    );
    if let Some((key, why)) = report.rejected.first() {
        tracing::error!(
            store = %store.location(),
            rejected = report.rejected.len(),
            first = ?key,
            why = %why,
            "stored records refused (kept on disk): raise the limit named, or export and fix them"
        );
    }
    node.enable_durable_output();
    let initial = report.expired.into_iter().map(DurableWrite::Delete).collect();
    let writer =
        Writer::start(store, settings.write_behind, log_next, Arc::clone(metrics)).map_err(|source| {
            StoreError::Io {
                path: settings.data_dir.clone().unwrap_or_default(),
                what: "cannot start the store thread",
                source,
            }
        })?;
    Ok(Some(Durable::new(writer, initial, log_entries)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use muster_core::{Config, InstanceKey, NodeId, RegisterRequest, ServiceKey};

    use super::*;
    use crate::config::StorageSettings;

    fn key(port: i64) -> InstanceKey {
        InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", port).unwrap()
    }

    fn node() -> Node {
        let config = Config::new(NodeId::parse("127.0.0.1:1").unwrap());
        Node::new(Config { wall_clock_ms: 1_700_000_000_000, ..config }, Timestamp::ZERO).unwrap()
    }

    fn live_ports(node: &Node) -> Vec<u16> {
        node.live_instances().keys().map(|k| k.port).collect()
    }

    #[test]
    fn a_churned_ephemeral_log_is_compacted_to_the_live_instances_and_reloads_them() {
        let dir = std::env::temp_dir().join(format!("muster-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = StorageSettings {
            data_dir: Some(dir.clone()),
            write_behind: Duration::from_millis(20),
            cache_bytes: 1 << 20,
        };
        let metrics = Arc::new(Metrics::default());
        let mut n = node();
        let mut d = start(&settings, &mut n, Timestamp::ZERO, &metrics).unwrap().unwrap();
        d.compact_min = 500;
        d.next_check = 500;
        let now = Timestamp::from_millis(1);
        // Three rounds of 400 registrations, of which 300 leave again.
        for round in 0..3_i64 {
            for i in 0..400 {
                let mut req = RegisterRequest::new(key(1 + round * 400 + i));
                req.ephemeral = Some(true);
                n.register(now, req).unwrap();
                d.drain(&mut n);
                if i < 300 {
                    n.deregister(now, &key(1 + round * 400 + i)).unwrap();
                    d.drain(&mut n);
                }
                d.end_turn(&n);
            }
        }
        for _ in 0..1000 {
            if !d.compacting() {
                break;
            }
            d.end_turn(&n);
        }
        assert!(!d.compacting(), "a compaction ends");
        let live = live_ports(&n);
        assert_eq!(live.len(), 300);
        d.stop(&n);
        assert!(metrics.store_log_compactions.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        let stored = store::open(Some(&dir), 1 << 20).unwrap().load().unwrap();
        assert!(
            stored.log_entries < 1_000,
            "the log was compacted: {} entries for 300 live instances (3,000 appended)",
            stored.log_entries
        );
        let mut again = node();
        again.load(Timestamp::from_millis(2), stored.records, stored.floor);
        assert_eq!(live_ports(&again), live, "a restart holds exactly the live instances");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
