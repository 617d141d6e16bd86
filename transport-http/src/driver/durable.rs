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

use std::sync::Arc;

use muster_core::durable::DurableWrite;
use muster_core::{Node, Request, Timestamp};

use crate::config::StorageSettings;
use crate::metrics::Metrics;
use crate::store::writer::{Batch, Held, Writer};
use crate::store::{self, StoreError};

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
}

impl Durable {
    pub(crate) fn new(writer: Writer, initial: Vec<DurableWrite>) -> Durable {
        let batch = Batch { writes: initial, ..Batch::default() };
        Durable { writer, batch, sync_since_reply: false, batch_sync: false, seq: 1, last_sync: 0 }
    }

    /// Takes the node's durable output.
    pub(crate) fn drain(&mut self, node: &mut Node) {
        while let Some(w) = node.poll_durable() {
            if w.sync() {
                self.sync_since_reply = true;
                self.batch_sync = true;
            }
            self.batch.writes.push(w);
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
        if self.batch.writes.is_empty() && self.batch.replies.is_empty() {
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
    let mut store = store::open(settings.data_dir.as_deref())?;
    if !store.persistent() {
        tracing::info!("memory only: nothing is kept on disk; every start is empty");
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let stored = store.load()?;
    let read = stored.records.len();
    let report = node.load(now, stored.records, stored.floor);
    tracing::info!(
        store = %store.location(),
        records = read,
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
    let writer = Writer::start(store, settings.write_behind, Arc::clone(metrics)).map_err(|source| {
        StoreError::Io {
            path: settings.data_dir.clone().unwrap_or_default(),
            what: "cannot start the store thread",
            source,
        }
    })?;
    Ok(Some(Durable::new(writer, initial)))
}
