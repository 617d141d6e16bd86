//! The durable output of a node: what the driver writes to its disk.
//!
//! The core has no files. Every change to a record (a client's write, a
//! record merged from a peer, an expiry, a purge) leaves the node as a
//! [`DurableWrite`] through [`crate::Node::poll_durable`], once the driver
//! has switched the output on with [`crate::Node::enable_durable_output`].
//! A write marked [`DurableWrite::sync`] must be committed to disk before
//! the reply to the request that caused it is released: persistent instances,
//! service settings and every tombstone. The other writes (live ephemeral
//! instances) may be written behind, batched off the answer path. Heartbeats
//! change no record and produce nothing.
//!
//! At start the driver reads its store and feeds it back with
//! [`crate::Node::load`] (an input before anything else): records merge by
//! version as peer records do, ephemeral instances get a fresh grace period,
//! and the node's version clock is advanced past the stored floor
//! ([`crate::Node::version_floor`], written with every commit), so versions
//! never go backwards across a restart, whatever the wall clock did.
//!
//! [`encode_record`] and [`decode_record`] are the on-disk format of one
//! record: a format byte, then postcard. Decoding validates as the peer codec
//! does, and never panics on bad bytes. Records of the previous format
//! ([`OLD_RECORD_FORMAT`], before issue 9's versions) are still read and
//! migrated (see `durable/v1.rs`); the driver writes only the current one.

mod v1;

use serde::{Deserialize, Serialize};

use crate::model::{InstanceKey, ServiceKey};
use crate::record::{InstanceState, Record};

/// The on-disk format of a record; a stored record of a format other than
/// this one or [`OLD_RECORD_FORMAT`] is refused with [`DecodeError::Format`].
pub const RECORD_FORMAT: u8 = 2;

/// The previous record format (versions `(counter, author, origin)`), read
/// and migrated on load.
pub const OLD_RECORD_FORMAT: u8 = 1;

/// The format byte of a stored record key (unchanged since format 1).
pub const KEY_FORMAT: u8 = 1;

/// The key a record is stored under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKey {
    /// An instance, live or tombstone.
    Instance(InstanceKey),
    /// A service's explicit settings or their tombstone.
    Service(ServiceKey),
}

/// One change for the disk, from [`crate::Node::poll_durable`].
#[derive(Clone, Debug, PartialEq)]
pub enum DurableWrite {
    /// Store the record under its key (replacing what is there).
    Put(Record),
    /// The record was purged (a tombstone past its time): delete the key.
    Delete(RecordKey),
}

impl DurableWrite {
    /// Whether the reply to the request that caused this write must wait
    /// until it is committed: everything except live ephemeral instances,
    /// which are written behind. Deletions are purges, never a client's
    /// write: they need no fsync of their own.
    pub fn sync(&self) -> bool {
        match self {
            DurableWrite::Put(Record::Instance { state: InstanceState::Live(d), .. }) => !d.ephemeral,
            DurableWrite::Put(_) => true,
            DurableWrite::Delete(_) => false,
        }
    }

    /// The key written.
    pub fn key(&self) -> RecordKey {
        match self {
            DurableWrite::Put(r) => record_key(r),
            DurableWrite::Delete(k) => k.clone(),
        }
    }
}

/// The key of a record.
pub fn record_key(r: &Record) -> RecordKey {
    match r {
        Record::Instance { key, .. } => RecordKey::Instance(key.clone()),
        Record::Service { key, .. } => RecordKey::Service(key.clone()),
    }
}

/// What [`crate::Node::load`] did with the stored records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Records now held.
    pub loaded: usize,
    /// Live instances among them.
    pub instances: usize,
    /// Service settings among them.
    pub services: usize,
    /// Tombstones among them.
    pub tombstones: usize,
    /// Stored tombstones already past their purge time: delete these keys.
    pub expired: Vec<RecordKey>,
    /// Stored records the node refused (a limit, invalid content), with why.
    /// They stay on disk; the log names them.
    pub rejected: Vec<(RecordKey, crate::error::RecordRejection)>,
}

/// Why stored bytes could not be decoded. Nothing was loaded from them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are empty.
    #[error("empty record")]
    Empty,
    /// Written in another format (a newer Muster, or not Muster's).
    #[error("record format {found}, this build reads formats {OLD_RECORD_FORMAT} and {RECORD_FORMAT}")]
    Format {
        /// The format byte found.
        found: u8,
    },
    /// The bytes do not decode (truncated, corrupted, invalid content).
    #[error("record does not decode: {0}")]
    Invalid(String),
}

/// The stored bytes of a record.
pub fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT];
    // Encoding into a Vec only fails for types serde cannot represent;
    // records are plain data, so the fallback is never taken.
    out.extend(postcard::to_allocvec(r).unwrap_or_default());
    out
}

/// The stored bytes of a record key (ordered like nothing in particular;
/// only equality matters).
pub fn encode_key(k: &RecordKey) -> Vec<u8> {
    let mut out = vec![KEY_FORMAT];
    out.extend(postcard::to_allocvec(k).unwrap_or_default());
    out
}

/// A record from its stored bytes; validates names, hosts and node ids.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    let (&format, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format == OLD_RECORD_FORMAT {
        return v1::decode(rest);
    }
    if format != RECORD_FORMAT {
        return Err(DecodeError::Format { found: format });
    }
    match postcard::take_from_bytes::<Record>(rest) {
        Ok((r, [])) => Ok(r),
        Ok((_, extra)) => Err(DecodeError::Invalid(format!("{} bytes after the record", extra.len()))),
        Err(e) => Err(DecodeError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceData, Metadata, NodeId};
    use crate::record::{RemoveCause, Version};

    fn instance(ephemeral: bool) -> Record {
        let service = ServiceKey::parse(None, None, "orders").unwrap();
        let key = InstanceKey::parse(service, None, "10.0.0.1", 8080).unwrap();
        let data = InstanceData {
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral,
            metadata: Metadata::default(),
        };
        Record::Instance {
            key,
            version: Version::client(7 << 16, NodeId::parse("127.0.0.1:1").unwrap()),
            state: InstanceState::Live(data),
        }
    }

    #[test]
    fn a_record_survives_its_encoding() {
        let r = instance(false);
        assert_eq!(decode_record(&encode_record(&r)), Ok(r));
    }

    #[test]
    fn only_live_ephemeral_instances_are_written_behind() {
        assert!(DurableWrite::Put(instance(false)).sync());
        assert!(!DurableWrite::Put(instance(true)).sync());
        let Record::Instance { key, version, .. } = instance(true) else { unreachable!() };
        let gone = Record::Instance {
            key,
            version,
            state: InstanceState::Removed { cause: RemoveCause::Deregistered, at_ms: 1 },
        };
        assert!(DurableWrite::Put(gone).sync());
    }

    #[test]
    fn truncated_corrupted_or_foreign_bytes_are_refused_without_panic() {
        let bytes = encode_record(&instance(true));
        for cut in 0..bytes.len() {
            assert!(decode_record(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        assert_eq!(decode_record(&[9, 1, 2]), Err(DecodeError::Format { found: 9 }));
        for i in 1..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode_record(&b);
        }
        let mut long = bytes;
        long.push(0);
        assert!(matches!(decode_record(&long), Err(DecodeError::Invalid(_))));
    }
}
