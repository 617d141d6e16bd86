//! A slab with generation-checked handles: stable `u32` indices into a `Vec`,
//! reused after removal, so that indexes elsewhere (hash tables, timer sets,
//! pending-sync sets) hold four bytes instead of a key.

/// A handle into a [`Slab`]: index plus the generation it was issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Handle {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

/// Values addressed by [`Handle`]s.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    /// Number of occupied entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stores `value`; `None` if the slab already holds `u32::MAX` entries.
    pub(crate) fn insert(&mut self, value: T) -> Option<Handle> {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            if let Some(e) = self.entries.get_mut(index as usize) {
                e.generation = e.generation.wrapping_add(1);
                e.value = Some(value);
                return Some(Handle { index, generation: e.generation });
            }
        }
        let Ok(index) = u32::try_from(self.entries.len()) else {
            self.len -= 1;
            return None;
        };
        self.entries.push(Entry { generation: 0, value: Some(value) });
        Some(Handle { index, generation: 0 })
    }

    /// Removes and returns the value at `index`.
    pub(crate) fn remove(&mut self, index: u32) -> Option<T> {
        let e = self.entries.get_mut(index as usize)?;
        let value = e.value.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// The value at `index`, whatever its generation.
    pub(crate) fn get(&self, index: u32) -> Option<&T> {
        self.entries.get(index as usize).and_then(|e| e.value.as_ref())
    }

    /// The value at `index`, whatever its generation.
    pub(crate) fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.entries.get_mut(index as usize).and_then(|e| e.value.as_mut())
    }

    /// The value `handle` was issued for, if it is still there.
    pub(crate) fn resolve(&self, handle: Handle) -> Option<&T> {
        let e = self.entries.get(handle.index as usize)?;
        if e.generation == handle.generation { e.value.as_ref() } else { None }
    }

    /// The current handle of the value at `index`.
    pub(crate) fn handle(&self, index: u32) -> Option<Handle> {
        let e = self.entries.get(index as usize)?;
        e.value.as_ref().map(|_| Handle { index, generation: e.generation })
    }

    /// Occupied entries with their indices, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.entries.iter().enumerate().filter_map(|(i, e)| e.value.as_ref().map(|v| (i as u32, v)))
    }

    /// Occupied entries from index `start` on, in index order.
    pub(crate) fn iter_from(&self, start: u32) -> impl Iterator<Item = (u32, &T)> {
        self.entries
            .iter()
            .enumerate()
            .skip(start as usize)
            .filter_map(|(i, e)| e.value.as_ref().map(|v| (i as u32, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_handle_does_not_resolve_after_reuse() {
        let mut slab = Slab::default();
        let a = slab.insert("a").unwrap();
        assert_eq!(slab.remove(a.index), Some("a"));
        let b = slab.insert("b").unwrap();
        assert_eq!(a.index, b.index);
        assert_eq!(slab.resolve(a), None);
        assert_eq!(slab.resolve(b), Some(&"b"));
        assert_eq!(slab.len(), 1);
    }
}
