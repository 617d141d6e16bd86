//! The ephemeral log: live ephemeral instances, appended, never updated in
//! place.
//!
//! Ephemeral instances are written behind and change often (registration,
//! health, expiry). Stored as rows of the record table, each one would be
//! an insert into a random leaf of a B-tree: with redb's copy-on-write
//! pages, a commit of N new instances rewrote about N pages of 4 KiB, read
//! many of them back first, and the store thread took a third of the node's
//! CPU on the registration path (BENCHMARKS.md "Durable storage"). Here each
//! commit appends the round's ephemeral changes as one value (a *blob*) under
//! the next sequence number: the bytes written are those of the changes.
//!
//! A blob is a format byte, then entries: a tag (`PUT` or `DELETE`), the
//! encoded record key (u32 length, bytes), and for `PUT` the encoded record
//! (u32 length, bytes). Reading folds the blobs in sequence order, the last
//! entry of a key winning. Every write of an instance key to the record
//! table (a tombstone, a persistent instance, a purge) also appends a
//! `DELETE` here, so no older live entry of the log can outlive it.
//!
//! The log is compacted by the driver, which writes every live ephemeral
//! instance again (`Node::ephemeral_page`) after a mark; once the last page
//! is committed, every blob before the mark is dropped.

use std::collections::HashMap;

/// The format byte of a blob.
pub(crate) const LOG_FORMAT: u8 = 1;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// The entries of one commit, being encoded.
#[derive(Debug, Default)]
pub(crate) struct Blob {
    bytes: Vec<u8>,
    entries: u64,
}

impl Blob {
    /// Appends the latest state of an ephemeral instance.
    pub(crate) fn put(&mut self, key: &[u8], record: &[u8]) {
        self.head();
        self.bytes.push(PUT);
        field(&mut self.bytes, key);
        field(&mut self.bytes, record);
        self.entries += 1;
    }

    /// Appends that a key has no live ephemeral state any more.
    pub(crate) fn delete(&mut self, key: &[u8]) {
        self.head();
        self.bytes.push(DELETE);
        field(&mut self.bytes, key);
        self.entries += 1;
    }

    fn head(&mut self) {
        if self.bytes.is_empty() {
            self.bytes.push(LOG_FORMAT);
        }
    }

    /// The encoded blob (empty if nothing was appended).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of entries appended.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Keeps only the last entry of each key (what a fold of the blob
    /// would give), in order: while commits fail, the blob then holds at
    /// most one entry per key, as the record table's pending set does.
    pub(crate) fn coalesce(&mut self) {
        let Ok(entries) = parse(&self.bytes) else { return };
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            last.insert(key, i);
        }
        let mut out = Blob::default();
        for (i, (key, record)) in entries.iter().enumerate() {
            if last.get(key) == Some(&i) {
                match record {
                    Some(r) => out.put(key, r),
                    None => out.delete(key),
                }
            }
        }
        drop(last);
        drop(entries);
        *self = out;
    }

    /// Starts again, keeping the allocation.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.entries = 0;
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and records are far below 4 GiB (body and metadata limits).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The log read back: encoded key to the encoded record of its last `PUT`,
/// or `None` if its last entry is a `DELETE`.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    pub(crate) latest: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Entries read, over every blob.
    pub(crate) entries: u64,
}

impl Folded {
    /// Applies one blob; on bad bytes says what is wrong (nothing of the
    /// blob is applied then).
    pub(crate) fn apply(&mut self, blob: &[u8]) -> Result<(), String> {
        let entries = parse(blob)?;
        self.entries += entries.len() as u64;
        for (key, record) in entries {
            self.latest.insert(key.to_vec(), record.map(<[u8]>::to_vec));
        }
        Ok(())
    }
}

type Entry<'a> = (&'a [u8], Option<&'a [u8]>);

fn parse(blob: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let Some((&format, mut rest)) = blob.split_first() else {
        return Err("empty log blob".into());
    };
    if format != LOG_FORMAT {
        return Err(format!("log blob format {format}, this build reads {LOG_FORMAT}"));
    }
    let mut out = Vec::new();
    while let Some((&tag, after)) = rest.split_first() {
        let (key, after) = take(after).ok_or_else(|| format!("entry {} is truncated", out.len() + 1))?;
        rest = after;
        match tag {
            PUT => {
                let (record, after) =
                    take(rest).ok_or_else(|| format!("entry {} is truncated", out.len() + 1))?;
                rest = after;
                out.push((key, Some(record)));
            }
            DELETE => out.push((key, None)),
            t => return Err(format!("entry {} has tag {t}", out.len() + 1)),
        }
    }
    Ok(out)
}

fn take(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_entry_of_a_key_wins_across_blobs() {
        let mut a = Blob::default();
        a.put(b"k1", b"r1");
        a.put(b"k2", b"r2");
        a.delete(b"k1");
        let mut b = Blob::default();
        b.put(b"k1", b"r1b");
        b.delete(b"k2");
        b.put(b"k3", b"r3");
        let mut f = Folded::default();
        f.apply(a.bytes()).unwrap();
        f.apply(b.bytes()).unwrap();
        assert_eq!(f.entries, 6);
        assert_eq!(f.latest.get(b"k1".as_slice()), Some(&Some(b"r1b".to_vec())));
        assert_eq!(f.latest.get(b"k2".as_slice()), Some(&None));
        assert_eq!(f.latest.get(b"k3".as_slice()), Some(&Some(b"r3".to_vec())));
    }

    #[test]
    fn a_coalesced_blob_keeps_the_last_entry_of_each_key_and_folds_the_same() {
        let mut b = Blob::default();
        for round in 0..100u8 {
            b.put(b"k1", &[round; 50]);
            b.put(b"k2", &[round; 50]);
        }
        b.delete(b"k2");
        let mut before = Folded::default();
        before.apply(b.bytes()).unwrap();
        let size = b.bytes().len();
        b.coalesce();
        assert_eq!(b.entries(), 2);
        assert!(b.bytes().len() * 50 < size, "{} of {size} bytes", b.bytes().len());
        let mut after = Folded::default();
        after.apply(b.bytes()).unwrap();
        assert_eq!(after.latest, before.latest);
    }

    #[test]
    fn a_damaged_blob_is_refused_whole_and_never_panics() {
        let mut a = Blob::default();
        a.put(b"key", b"record");
        a.delete(b"gone");
        let good = a.bytes().to_vec();
        for cut in 0..good.len() {
            let mut f = Folded::default();
            if f.apply(&good[..cut]).is_ok() {
                // A cut between two entries is a shorter valid blob.
                assert!(cut == 1 || cut == 1 + 1 + 4 + 3 + 4 + 6, "cut at {cut} accepted");
            }
            if f.latest.is_empty() {
                assert_eq!(f.entries, 0);
            }
        }
        let mut bad = good.clone();
        bad[1] = 9;
        assert!(Folded::default().apply(&bad).unwrap_err().contains("tag 9"));
        bad[0] = 7;
        assert!(Folded::default().apply(&bad).unwrap_err().contains("format 7"));
        let mut huge = good;
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Folded::default().apply(&huge).is_err());
    }
}
