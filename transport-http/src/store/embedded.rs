//! The embedded store: one redb database file in the data directory.
//!
//! Three tables: `records` (encoded record key to encoded record, see
//! `muster_core::durable`), `ephemeral_log` (blob number to blob, see
//! `log.rs`) and `meta` (`format`, `floor`). Every commit is
//! `Durability::Immediate`: on disk when it returns.

use std::path::{Path, PathBuf};

use muster_core::durable::{OLD_RECORD_FORMAT, RECORD_FORMAT, decode_record};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::log::Folded;
use super::{Commit, FILE_NAME, Store, StoreError, Stored};

const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("records");
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("ephemeral_log");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// redb's page cache in tests (the node's is `--store-cache-mib`).
#[cfg(test)]
const CACHE_BYTES: usize = 16 << 20;

/// The embedded store (redb).
pub(crate) struct EmbeddedStore {
    path: PathBuf,
    /// `None` after a failed commit: redb refuses every operation after an
    /// I/O error, so the next commit reopens the file (redb repairs it).
    db: Option<Database>,
    cache_bytes: usize,
}

impl EmbeddedStore {
    /// Opens `dir/muster.redb`, creating the directory and the file if
    /// missing, with the default page cache.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, CACHE_BYTES)
    }

    /// Opens `dir/muster.redb` with a page cache of `cache_bytes`.
    pub(crate) fn open_with(dir: &Path, cache_bytes: usize) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            what: "cannot create the data directory",
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = open_db(&path, cache_bytes)?;
        let mut store = EmbeddedStore { path, db: Some(db), cache_bytes };
        store.init()?;
        Ok(store)
    }

    /// Creates the tables and checks the format on first open.
    fn init(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let db = self.db()?;
        let err = |e: redb::Error| map_err(&path, "cannot initialise", e);
        let tx = db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
            let format = meta.get("format").map_err(|e| err(e.into()))?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", u64::from(RECORD_FORMAT)).map_err(|e| err(e.into()))?;
                }
                Some(f) if f == u64::from(RECORD_FORMAT) => {}
                Some(f) if f == u64::from(OLD_RECORD_FORMAT) => {
                    // Its records are read and migrated one by one on load
                    // (`muster_core::durable`); from now on the file is
                    // format 2, which an older build refuses.
                    tracing::info!(
                        path = %path.display(),
                        "store format {f}: migrating to format {RECORD_FORMAT} (issue 9's versions); an older Muster can no longer open this directory"
                    );
                    meta.insert("format", u64::from(RECORD_FORMAT)).map_err(|e| err(e.into()))?;
                }
                Some(f) => {
                    return Err(StoreError::Corrupt {
                        path: path.clone(),
                        detail: format!(
                            "written in store format {f}, this build reads format {RECORD_FORMAT} (a newer Muster?)"
                        ),
                    });
                }
            }
            tx.open_table(RECORDS).map_err(|e| err(e.into()))?;
            tx.open_table(LOG).map_err(|e| err(e.into()))?;
        }
        tx.commit().map_err(|e| err(e.into()))
    }

    fn db(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            self.db = Some(open_db(&self.path, self.cache_bytes)?);
        }
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt { path: self.path.clone(), detail: "closed".into() })
    }

    fn try_commit(&mut self, c: &Commit<'_>) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e: redb::Error| map_err(&path, "cannot commit", e);
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| err(e.into()))?;
        tx.set_durability(Durability::Immediate);
        {
            let mut records = tx.open_table(RECORDS).map_err(|e| err(e.into()))?;
            for (k, v) in c.records {
                let done = match v {
                    Some(v) => records.insert(k.as_slice(), v.as_slice()).map(drop),
                    None => records.remove(k.as_slice()).map(drop),
                };
                done.map_err(|e| err(e.into()))?;
            }
            let mut log = tx.open_table(LOG).map_err(|e| err(e.into()))?;
            if let Some(before) = c.drop_log_before {
                log.retain_in(..before, |_, _| false).map_err(|e| err(e.into()))?;
            }
            if !c.log.is_empty() {
                log.insert(c.log_seq, c.log).map_err(|e| err(e.into()))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
            let old = meta.get("floor").map_err(|e| err(e.into()))?.map_or(0, |v| v.value());
            meta.insert("floor", old.max(c.floor)).map_err(|e| err(e.into()))?;
        }
        tx.commit().map_err(|e| err(e.into()))
    }
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    guarded(path, || {
        Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| map_err(path, "cannot open", e.into()))
    })
}

/// Runs `f`, turning a panic inside redb into [`StoreError::Corrupt`].
///
/// redb 2 asserts on some damaged files (a file shorter than its header
/// says) instead of returning an error; a bad file must not crash the node
/// without naming itself, so opening and loading run under this guard.
/// The panic is reported in the error, not printed by the panic hook (other
/// threads' panics still are).
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let me = std::thread::current().id();
    let previous = std::sync::Arc::new(std::panic::take_hook());
    let others = std::sync::Arc::clone(&previous);
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            others(info);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| previous(info)));
    result.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        Err(StoreError::Corrupt { path: path.to_path_buf(), detail: format!("damaged ({why})") })
    })
}

/// A redb error as a [`StoreError`] naming the file.
fn map_err(path: &Path, what: &'static str, e: redb::Error) -> StoreError {
    let path = path.to_path_buf();
    match e {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked { path },
        redb::Error::Io(source) => match source.kind() {
            // A file shorter than its header or its tables says it is.
            std::io::ErrorKind::UnexpectedEof => {
                StoreError::Corrupt { path, detail: format!("truncated ({source})") }
            }
            // Not redb's magic number, or a header that does not add up.
            std::io::ErrorKind::InvalidData => StoreError::Corrupt { path, detail: source.to_string() },
            _ => StoreError::Io { path, what, source },
        },
        other => StoreError::Corrupt { path, detail: other.to_string() },
    }
}

impl Store for EmbeddedStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn persistent(&self) -> bool {
        true
    }

    fn load(&mut self) -> Result<Stored, StoreError> {
        let path = self.path.clone();
        guarded(&path, || self.load_unguarded())
    }

    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let result = self.try_commit(commit);
        if result.is_err() {
            self.db = None;
        }
        result
    }
}

impl EmbeddedStore {
    fn load_unguarded(&mut self) -> Result<Stored, StoreError> {
        let path = self.path.clone();
        let err = |e: redb::Error| map_err(&path, "cannot read", e);
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| err(e.into()))?;
        let meta = tx.open_table(META).map_err(|e| err(e.into()))?;
        let floor = meta.get("floor").map_err(|e| err(e.into()))?.map_or(0, |v| v.value());
        let table = tx.open_table(RECORDS).map_err(|e| err(e.into()))?;
        let total = table.len().unwrap_or(0);
        let mut records = Vec::with_capacity(total as usize);
        for entry in table.iter().map_err(|e| err(e.into()))? {
            let (_, v) = entry.map_err(|e| err(e.into()))?;
            let record = decode_record(v.value()).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                detail: format!("record {} of {total}: {e}", records.len() + 1),
            })?;
            records.push(record);
        }
        let log = tx.open_table(LOG).map_err(|e| err(e.into()))?;
        let mut folded = Folded::default();
        let mut log_next = 1;
        for entry in log.iter().map_err(|e| err(e.into()))? {
            let (seq, blob) = entry.map_err(|e| err(e.into()))?;
            let seq = seq.value();
            folded.apply(blob.value()).map_err(|detail| StoreError::Corrupt {
                path: path.clone(),
                detail: format!("ephemeral log blob {seq}: {detail}"),
            })?;
            log_next = seq + 1;
        }
        let log_entries = folded.entries;
        for (n, bytes) in folded.latest.into_values().flatten().enumerate() {
            let record = decode_record(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                detail: format!("ephemeral log record {}: {e}", n + 1),
            })?;
            records.push(record);
        }
        Ok(Stored { records, floor, log_next, log_entries })
    }
}
