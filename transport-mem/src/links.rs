//! A deterministic map keyed by directed links, looked up without cloning ids.

use std::collections::BTreeMap;

use muster_core::NodeId;

/// A map from directed links `(from, to)` to values, ordered by `from` then
/// `to`. Empty inner maps are removed, so its size is that of its entries.
#[derive(Clone, Debug)]
pub(crate) struct LinkMap<V> {
    by_from: BTreeMap<NodeId, BTreeMap<NodeId, V>>,
}

impl<V> Default for LinkMap<V> {
    fn default() -> Self {
        LinkMap { by_from: BTreeMap::new() }
    }
}

impl<V> LinkMap<V> {
    /// The value of the link `from -> to`.
    pub(crate) fn get(&self, from: &NodeId, to: &NodeId) -> Option<&V> {
        self.by_from.get(from).and_then(|tos| tos.get(to))
    }

    /// Whether the link `from -> to` has a value.
    pub(crate) fn contains(&self, from: &NodeId, to: &NodeId) -> bool {
        self.get(from, to).is_some()
    }

    /// Sets the value of the link `from -> to`.
    pub(crate) fn insert(&mut self, from: &NodeId, to: &NodeId, value: V) {
        self.by_from.entry(from.clone()).or_default().insert(to.clone(), value);
    }

    /// Removes the value of the link `from -> to`, if any.
    pub(crate) fn remove(&mut self, from: &NodeId, to: &NodeId) {
        if let Some(tos) = self.by_from.get_mut(from) {
            tos.remove(to);
            if tos.is_empty() {
                self.by_from.remove(from);
            }
        }
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.by_from.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    #[test]
    fn links_are_directed_and_removal_leaves_no_empty_entries() {
        let mut map = LinkMap::default();
        map.insert(&id("a"), &id("b"), 1);
        assert_eq!(map.get(&id("a"), &id("b")), Some(&1));
        assert!(!map.contains(&id("b"), &id("a")));
        map.remove(&id("a"), &id("b"));
        assert!(map.by_from.is_empty());
    }
}
