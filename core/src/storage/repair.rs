//! The store as anti-entropy sees it: records grouped by digest bucket (the
//! top 8 bits of the key hash) or by leaf (the top 16 bits: 256 leaves under
//! each bucket), counted, hashed and paged.
//!
//! Paging is by whole units: a page holds every record of each unit it
//! covers, and says which units it covers. Both peers then hold the greater
//! of every record of a covered unit, so each exchange settles at least one
//! differing unit for good, and a difference of any size settles in a number
//! of rounds bounded by its size over the page size. (Sending "the first
//! `max` records" instead sends the same, already equal, records every round
//! once the differing units hold more than `max`: the stall this replaces.)

use std::collections::BTreeSet;

use crate::record::{Record, digest_hash, instance_state_hash, service_record_hash, service_state_hash};

use super::{Storage, service_record};

/// How records are grouped for an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// The 256 digest buckets (top 8 bits of the key hash).
    Bucket,
    /// The 65,536 leaves (top 16 bits of the key hash).
    Leaf,
}

impl Unit {
    /// The unit of a record with key hash `key_hash`.
    pub(crate) fn of(self, key_hash: u64) -> u16 {
        match self {
            Unit::Bucket => (key_hash >> 56) as u16,
            Unit::Leaf => (key_hash >> 48) as u16,
        }
    }
}

/// The bucket a leaf belongs to.
pub(crate) fn bucket_of_leaf(leaf: u16) -> u8 {
    (leaf >> 8) as u8
}

impl Storage {
    /// Calls `f(key_hash, digest_hash)` for every record held.
    fn for_each_digest_entry(&self, mut f: impl FnMut(u64, u64)) {
        for (_, s) in self.services.iter() {
            if let Some(r) = &s.record {
                let h = service_record_hash(&s.key);
                f(h, digest_hash(h, &r.version, service_state_hash(&r.state)));
            }
        }
        for (_, e) in self.instances.iter() {
            f(e.hash, digest_hash(e.hash, &e.version, instance_state_hash(&e.state)));
        }
    }

    /// How many records fall in each of `units` (sorted, deduplicated).
    pub(crate) fn count_in(&self, unit: Unit, units: &BTreeSet<u16>) -> usize {
        let mut n = 0;
        self.for_each_digest_entry(|h, _| {
            if units.contains(&unit.of(h)) {
                n += 1;
            }
        });
        n
    }

    /// The non-zero leaf hashes under `buckets`, sorted by leaf.
    pub(crate) fn leaf_hashes(&self, buckets: &BTreeSet<u8>) -> Vec<(u16, u64)> {
        let mut leaves = std::collections::BTreeMap::<u16, u64>::new();
        self.for_each_digest_entry(|h, d| {
            let leaf = Unit::Leaf.of(h);
            if buckets.contains(&bucket_of_leaf(leaf)) {
                *leaves.entry(leaf).or_default() ^= d;
            }
        });
        leaves.into_iter().filter(|(_, h)| *h != 0).collect()
    }

    /// A page of the records in `units`: the units covered, in ascending
    /// order, each whole, as many as fit in `max` records (always at least
    /// the first; one unit larger than `max` is cut to `max`), and their
    /// records. `prefix_bug` is the simulator's `anti-entropy-prefix`.
    pub(crate) fn records_in_units(
        &self,
        unit: Unit,
        units: &BTreeSet<u16>,
        max: usize,
        prefix_bug: bool,
    ) -> (Vec<u16>, Vec<Record>) {
        let mut counts = std::collections::BTreeMap::<u16, usize>::new();
        self.for_each_digest_entry(|h, _| {
            let u = unit.of(h);
            if units.contains(&u) {
                *counts.entry(u).or_default() += 1;
            }
        });
        let mut covered = BTreeSet::new();
        let mut total = 0;
        if prefix_bug {
            // The old stall: claim every unit, send the first `max` records.
            covered.clone_from(units);
            total = max;
        }
        for &u in units.iter().filter(|_| !prefix_bug) {
            let n = counts.get(&u).copied().unwrap_or(0);
            if !covered.is_empty() && total + n > max {
                break;
            }
            total += n;
            covered.insert(u);
        }
        let mut out = Vec::with_capacity(total.min(max));
        for (_, s) in self.services.iter() {
            if s.record.is_some() && covered.contains(&unit.of(service_record_hash(&s.key))) {
                out.extend(service_record(s));
            }
        }
        for (_, e) in self.instances.iter() {
            if out.len() >= max {
                break;
            }
            if covered.contains(&unit.of(e.hash)) {
                out.extend(self.instance_record(e));
            }
        }
        out.truncate(max);
        (covered.into_iter().collect(), out)
    }
}
