//! The memory-only store (`--memory-only`): nothing survives the process.

use super::{Commit, Store, StoreError, Stored};

/// Keeps nothing: every start is empty. The driver does not even produce
/// writes for it (see [`Store::persistent`]).
pub(crate) struct MemoryStore;

impl Store for MemoryStore {
    fn location(&self) -> String {
        "memory only".to_owned()
    }

    fn persistent(&self) -> bool {
        false
    }

    fn load(&mut self) -> Result<Stored, StoreError> {
        Ok(Stored::default())
    }

    fn commit(&mut self, _commit: &Commit<'_>) -> Result<(), StoreError> {
        Ok(())
    }
}
