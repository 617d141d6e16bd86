//! The store thread: group commit and the release of held replies.
//!
//! The driver sends one [`Batch`] per turn of its loop: the turn's durable
//! writes, the version floor, and the replies that must wait for them. The
//! thread takes every batch that is queued, coalesces the writes by key and
//! commits them in one transaction (one fsync for all of them), then sends
//! the held replies. Batches that arrive during a commit wait for the next:
//! that is the group commit, and the rate of persistent writes is bounded by
//! the batch size per fsync, not by the fsync rate.
//!
//! Writes that hold no reply (ephemeral instances, records merged from
//! peers, expiries) are written behind: kept until a batch with replies
//! arrives or `write_behind` after the first of them, whichever is first,
//! or sooner once they reach [`COMMIT_BYTES`] or [`COMMIT_RECORDS`] (the
//! bound on what the thread holds uncommitted).
//!
//! Live ephemeral instances go to the ephemeral log (`log.rs`), one blob per
//! commit; every other write goes to the record table, and a write of an
//! instance key there also appends a deletion of the key to the log.
//!
//! A failed commit (full disk, I/O error) answers its held replies with
//! `NotDurable`, keeps every write, and is retried with the next batch or
//! after [`RETRY`]: nothing is dropped, and the node catches up once the
//! disk has room again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use muster_core::durable::{DurableWrite, RecordKey, encode_key, encode_record};
use muster_core::{Record, Reply, RequestError};
use tokio::sync::oneshot;

use super::log::Blob;
use super::{Commit, Store, WriteSet};
use crate::metrics::Metrics;

/// A reply held until its writes are committed.
pub(crate) type Held = (oneshot::Sender<Result<Reply, RequestError>>, Result<Reply, RequestError>);

/// Batches queued for the thread before the driver waits (back-pressure
/// from a slow disk reaches clients as a full request queue, 503).
const QUEUE: usize = 1024;
/// Most batches coalesced into one commit.
const GROUP_MAX: usize = 4096;
/// Pause before retrying a failed commit that holds no reply.
const RETRY: Duration = Duration::from_secs(1);
/// Bytes of ephemeral log after which the thread commits without waiting
/// for the write-behind delay.
pub(crate) const COMMIT_BYTES: usize = 8 << 20;
/// Record-table writes after which the thread commits without waiting.
pub(crate) const COMMIT_RECORDS: usize = 32_768;

/// One turn's output for the disk.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The writes, in order (later writes of a key win).
    pub(crate) writes: Vec<DurableWrite>,
    /// The node's version floor after them.
    pub(crate) floor: u64,
    /// Replies released after the commit.
    pub(crate) replies: Vec<Held>,
    /// The driver's number of this batch.
    pub(crate) seq: u64,
    /// A compaction of the ephemeral log starts with this batch: the blob
    /// that takes its writes is the first one kept.
    pub(crate) compaction_start: bool,
    /// A compaction ends with this batch (every live ephemeral instance has
    /// been written since its start): the blobs before its start are
    /// dropped in the commit that takes this batch.
    pub(crate) compaction_end: bool,
}

enum Msg {
    Batch(Batch),
    Stop,
}

/// The driver's end of the store thread.
pub(crate) struct Writer {
    tx: SyncSender<Msg>,
    committed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that owns `store`.
    /// `log_next` is the number of the next blob of the ephemeral log.
    pub(crate) fn start(
        store: Box<dyn Store>,
        write_behind: Duration,
        log_next: u64,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let committed = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&committed);
        let thread = std::thread::Builder::new()
            .name("muster-store".into())
            .spawn(move || Thread::new(store, write_behind, log_next, c, metrics).run(rx))?;
        Ok(Writer { tx, committed, thread: Some(thread) })
    }

    /// The number of the last batch committed.
    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Hands a batch to the thread; waits while its queue is full.
    pub(crate) fn send(&self, batch: Batch) {
        match self.tx.try_send(Msg::Batch(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                tracing::debug!("store queue full; the driver waits for the disk");
                let _ = self.tx.send(msg);
            }
            Err(TrySendError::Disconnected(Msg::Batch(b))) => fail_all(b.replies, "the store thread stopped"),
            Err(TrySendError::Disconnected(Msg::Stop)) => {}
        }
    }

    /// Commits what is queued and stops the thread.
    pub(crate) fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fail_all(replies: Vec<Held>, why: &str) {
    for (tx, _) in replies {
        let _ = tx.send(Err(RequestError::NotDurable(why.to_owned())));
    }
}

struct Thread {
    store: Box<dyn Store>,
    write_behind: Duration,
    committed: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    pending: WriteSet,
    /// The ephemeral log's next blob, and its number.
    blob: Blob,
    log_seq: u64,
    /// The first blob kept by the compaction under way.
    compaction: Option<u64>,
    /// Blobs below this are dropped by the next commit.
    drop_before: Option<u64>,
    /// Size of the blob at which a failing thread coalesces it.
    coalesce_at: usize,
    floor: u64,
    replies: Vec<Held>,
    seq: u64,
    /// When the oldest uncommitted write arrived.
    oldest: Option<Instant>,
    /// The last commit error, to log each distinct failure once.
    failing: Option<String>,
}

impl Thread {
    fn new(
        store: Box<dyn Store>,
        write_behind: Duration,
        log_next: u64,
        committed: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
    ) -> Thread {
        Thread {
            store,
            write_behind,
            committed,
            metrics,
            pending: WriteSet::new(),
            blob: Blob::default(),
            log_seq: log_next,
            compaction: None,
            drop_before: None,
            coalesce_at: COMMIT_BYTES,
            floor: 0,
            replies: Vec::new(),
            seq: 0,
            oldest: None,
            failing: None,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let first = match self.deadline() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            let mut stop = match first {
                Ok(Msg::Batch(b)) => {
                    self.take(b);
                    false
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            for _ in 0..GROUP_MAX {
                match rx.try_recv() {
                    Ok(Msg::Batch(b)) => self.take(b),
                    Ok(Msg::Stop) => stop = true,
                    Err(_) => break,
                }
            }
            let due = self.deadline().is_some_and(|at| Instant::now() >= at)
                || self.blob.bytes().len() >= COMMIT_BYTES
                || self.pending.len() >= COMMIT_RECORDS;
            if stop || !self.replies.is_empty() || due {
                self.commit();
            }
            if stop {
                if self.failing.is_some() {
                    tracing::error!(
                        writes = self.pending.len() as u64 + self.blob.entries(),
                        "stopping with writes the disk did not take; they are lost on this node"
                    );
                }
                return;
            }
        }
    }

    /// When the thread must commit even if no batch arrives.
    fn deadline(&self) -> Option<Instant> {
        let oldest = self.oldest?;
        Some(if self.failing.is_some() {
            oldest.max(Instant::now() - self.write_behind) + RETRY
        } else {
            oldest + self.write_behind
        })
    }

    fn take(&mut self, b: Batch) {
        if b.compaction_start {
            // Commit what came before the mark, so that the compaction can
            // drop it; the next blob and every later one are kept (if that
            // commit fails, the blob filling now is kept with them).
            if self.blob.entries() > 0 {
                self.commit();
            }
            self.compaction = Some(self.log_seq);
        }
        for w in &b.writes {
            let key = encode_key(&w.key());
            match w {
                DurableWrite::Put(r) if !w.sync() => self.blob.put(&key, &encode_record(r)),
                DurableWrite::Put(r) => {
                    if matches!(r, Record::Instance { .. }) {
                        self.blob.delete(&key);
                    }
                    self.pending.insert(key, Some(encode_record(r)));
                }
                DurableWrite::Delete(k) => {
                    if matches!(k, RecordKey::Instance(_)) {
                        self.blob.delete(&key);
                    }
                    self.pending.insert(key, None);
                }
            }
        }
        if b.compaction_end {
            self.drop_before = self.compaction.take();
        }
        if !b.writes.is_empty() && self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.floor = self.floor.max(b.floor);
        self.seq = self.seq.max(b.seq);
        self.replies.extend(b.replies);
    }

    fn commit(&mut self) {
        let start = Instant::now();
        let writes = self.pending.len() as u64 + self.blob.entries();
        let commit = Commit {
            records: &self.pending,
            log: self.blob.bytes(),
            log_seq: self.log_seq,
            drop_log_before: self.drop_before,
            floor: self.floor,
        };
        match self.store.commit(&commit) {
            Ok(()) => {
                self.pending.clear();
                if self.blob.entries() > 0 {
                    self.metrics.store_log_entries.fetch_add(self.blob.entries(), Ordering::Relaxed);
                    self.log_seq += 1;
                    self.blob.clear();
                }
                self.coalesce_at = COMMIT_BYTES;
                if self.drop_before.take().is_some() {
                    self.metrics.store_log_compactions.fetch_add(1, Ordering::Relaxed);
                }
                self.oldest = None;
                self.committed.store(self.seq, Ordering::Release);
                self.metrics.store_commits.fetch_add(1, Ordering::Relaxed);
                self.metrics.store_writes.fetch_add(writes, Ordering::Relaxed);
                if self.failing.take().is_some() {
                    tracing::info!(store = %self.store.location(), writes, "the store commits again");
                }
                for (tx, result) in self.replies.drain(..) {
                    let _ = tx.send(result);
                }
                tracing::trace!(writes, micros = start.elapsed().as_micros() as u64, "store commit");
            }
            Err(e) => {
                self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                let message = e.to_string();
                if self.failing.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, writes, "store commit failed; writes kept in memory and retried");
                }
                self.failing = Some(message.clone());
                fail_all(std::mem::take(&mut self.replies), &message);
                // The log's blob is not coalesced by key as it fills; while
                // the disk refuses it, keep it to one entry per key, so that
                // a long outage holds at most the registry, not its history.
                if self.blob.bytes().len() >= self.coalesce_at {
                    self.blob.coalesce();
                    self.coalesce_at = COMMIT_BYTES.max(2 * self.blob.bytes().len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use muster_core::{InstanceData, InstanceKey, InstanceState, Metadata, NodeId, ServiceKey, Version};

    use super::super::{Commit, StoreError, Stored};
    use super::*;

    /// A disk that refuses every commit, as a full one does.
    struct Full;

    impl Store for Full {
        fn location(&self) -> String {
            "full".into()
        }
        fn persistent(&self) -> bool {
            true
        }
        fn load(&mut self) -> Result<Stored, StoreError> {
            Ok(Stored::default())
        }
        fn commit(&mut self, _: &Commit<'_>) -> Result<(), StoreError> {
            Err(StoreError::Io {
                path: "full".into(),
                what: "cannot commit",
                source: std::io::ErrorKind::StorageFull.into(),
            })
        }
    }

    fn ephemeral(port: i64, weight: f64) -> DurableWrite {
        let key =
            InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", port)
                .unwrap();
        let data = InstanceData {
            weight,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata: Metadata::default(),
        };
        DurableWrite::Put(Record::Instance {
            key,
            version: Version::client(1 << 16, NodeId::parse("127.0.0.1:1").unwrap()),
            state: InstanceState::Live(data),
        })
    }

    #[test]
    fn while_the_disk_refuses_commits_the_log_holds_one_entry_per_key_not_the_history() {
        let metrics = Arc::new(Metrics::default());
        let mut t =
            Thread::new(Box::new(Full), Duration::from_millis(1), 1, Arc::new(AtomicU64::new(0)), metrics);
        // 400,000 changes of 10 instances (health flaps during an outage): some
        // 24 MB of history, were it kept.
        for round in 0..40_000 {
            let writes = (1..=10).map(|port| ephemeral(port, f64::from(round % 100))).collect();
            t.take(Batch { writes, ..Batch::default() });
            if round % 100 == 0 {
                t.commit();
            }
        }
        t.commit();
        assert!(t.failing.is_some());
        assert!(
            t.blob.bytes().len() <= 2 * COMMIT_BYTES,
            "{} bytes kept for 10 instances ({} entries)",
            t.blob.bytes().len(),
            t.blob.entries()
        );
    }
}
