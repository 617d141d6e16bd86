//! The store digest: 256 buckets, each the XOR of the digest hashes of the
//! records whose key hash falls in it. Maintained incrementally (XOR out the
//! old hash, XOR in the new), so it costs O(1) per change and nothing to read.

use serde::{Deserialize, Serialize};

use crate::hash::StableHasher;

/// Number of digest buckets.
pub const BUCKETS: usize = 256;

/// The bucket of a record with key hash `key_hash`.
pub(crate) fn bucket_of(key_hash: u64) -> u8 {
    (key_hash >> 56) as u8
}

/// Bucket hashes of a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    buckets: Vec<u64>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest { buckets: vec![0; BUCKETS] }
    }
}

impl Digest {
    /// Adds or removes (XOR is its own inverse) one record's digest hash.
    pub(crate) fn toggle(&mut self, key_hash: u64, digest_hash: u64) {
        if let Some(b) = self.buckets.get_mut(usize::from(bucket_of(key_hash))) {
            *b ^= digest_hash;
        }
    }

    /// The bucket hashes.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// One hash of all buckets: equal stores have equal roots.
    pub fn root(&self) -> u64 {
        let mut h = StableHasher::new();
        for b in &self.buckets {
            h.u64(*b);
        }
        h.finish()
    }

    /// Buckets whose hashes differ from `other` (which must have
    /// [`BUCKETS`] entries; missing entries count as different).
    pub fn differing(&self, other: &[u64]) -> Vec<u8> {
        (0..BUCKETS)
            .filter(|i| self.buckets.get(*i) != other.get(*i))
            .filter_map(|i| u8::try_from(i).ok())
            .collect()
    }
}
