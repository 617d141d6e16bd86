//! The node's disk: one [`Store`] trait, two implementations.
//!
//! - [`EmbeddedStore`]: a redb database, `muster.redb` in the data
//!   directory (default `./muster-data`). redb is copy-on-write B-trees with
//!   a checksummed, double-buffered commit slot: a commit made with
//!   `Durability::Immediate` is on disk when `commit` returns (it `fsync`s
//!   the data, then the header); a crash at any moment leaves the last
//!   committed state. A second process on the same file is refused (redb
//!   holds an exclusive `flock`).
//! - [`MemoryStore`]: keeps nothing (`--memory-only`): the node starts empty.
//!
//! The store is blocking I/O, so it runs on its own thread (`writer.rs`),
//! fed by the driver; group commit happens there: every batch that arrived
//! while the previous commit was being fsynced goes into the next commit.
//!
//! Two parts: a record table (persistent instances, service settings,
//! tombstones: keyed, updated in place) and the ephemeral log (`log.rs`:
//! live ephemeral instances, appended one blob per commit, compacted).

mod embedded;
pub(crate) mod log;
mod memory;
pub(crate) mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use muster_core::Record;

pub(crate) use self::embedded::EmbeddedStore;
pub(crate) use self::memory::MemoryStore;

/// The name of the database file in the data directory.
pub(crate) const FILE_NAME: &str = "muster.redb";

/// Encoded writes of one commit: key bytes to record bytes, `None` deletes.
pub(crate) type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a store held at start.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// Every record, decoded and validated: the record table's, then the
    /// live ephemeral instances of the log (the node merges them by
    /// version, so a key in both resolves as any two copies do).
    pub(crate) records: Vec<Record>,
    /// The version floor of the last commit.
    pub(crate) floor: u64,
    /// The sequence number of the next blob of the ephemeral log.
    pub(crate) log_next: u64,
    /// Entries in the ephemeral log (over every blob kept).
    pub(crate) log_entries: u64,
}

/// One transaction of the store.
#[derive(Debug)]
pub(crate) struct Commit<'a> {
    /// Writes of the record table.
    pub(crate) records: &'a WriteSet,
    /// A blob for the ephemeral log (`log::Blob`), appended as `log_seq`;
    /// nothing is appended if empty.
    pub(crate) log: &'a [u8],
    /// The sequence number of `log`.
    pub(crate) log_seq: u64,
    /// Drops every blob numbered below this (the end of a compaction).
    pub(crate) drop_log_before: Option<u64>,
    /// The node's version floor after these writes.
    pub(crate) floor: u64,
}

/// The node's disk.
pub(crate) trait Store: Send {
    /// Where the data lives, for logs ("memory only" for [`MemoryStore`]).
    fn location(&self) -> String;

    /// Whether anything written survives the process.
    fn persistent(&self) -> bool;

    /// Reads every stored record. A record that does not decode refuses the
    /// whole load (nothing is dropped silently).
    fn load(&mut self) -> Result<Stored, StoreError>;

    /// Applies a commit in one transaction, durable when this returns. On
    /// error nothing of it is committed.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), StoreError>;
}

/// Why the store could not be opened, read or written. Each message names
/// the file and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process has the data directory open.
    #[error(
        "{}: another muster process is using this data directory; stop it, or give this node its own with --data-dir",
        path.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The directory or file cannot be created, opened or written.
    #[error("{}: {what}: {source}; {hint}", path.display(), hint = io_hint(source))]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a Muster store, or it is damaged.
    #[error(
        "{}: {detail}; this file is not a readable Muster store. Move it away to start this node \
         empty (in a cluster it reloads from its peers), or restore it from a backup (`muster import`)",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "make the data directory writable by this user, or choose another with --data-dir"
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            "free space on that disk; writes are kept in memory and retried meanwhile"
        }
        ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
            "--data-dir must name a directory (it is created if missing)"
        }
        _ => "check the disk and the path given with --data-dir",
    }
}

/// Opens the store a node is configured with: memory-only, or the
/// embedded store in `data_dir` (created if missing) with a page cache of
/// `cache_bytes`.
pub(crate) fn open(data_dir: Option<&Path>, cache_bytes: usize) -> Result<Box<dyn Store>, StoreError> {
    match data_dir {
        None => Ok(Box::new(MemoryStore)),
        Some(dir) => Ok(Box::new(EmbeddedStore::open_with(dir, cache_bytes)?)),
    }
}

#[cfg(test)]
mod tests;
