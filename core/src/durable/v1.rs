//! Record format 1 (before issue 9's versions): read only, to migrate a
//! data directory written by an older Muster.
//!
//! Format 1 versions were `(counter, author, origin)`, a derived write taking
//! the counter above the record it judged. A format-1 client version becomes
//! a client version of the same counter and origin; a format-1 registry
//! version becomes step 1 of a client write of the same counter from the same
//! node (the chain it descended from is not recorded; its place among the
//! records of one key is kept, except against a client write of the very
//! same counter from another node, a tie the old order broke by author).

use serde::Deserialize;

use crate::model::{InstanceKey, NodeId, ServiceKey};
use crate::record::{InstanceState, Record, ServiceState, Version};

#[derive(Deserialize)]
enum Author {
    Registry,
    Client,
}

#[derive(Deserialize)]
struct VersionV1 {
    counter: u64,
    author: Author,
    origin: NodeId,
}

#[derive(Deserialize)]
enum RecordV1 {
    Instance { key: InstanceKey, version: VersionV1, state: InstanceState },
    Service { key: ServiceKey, version: VersionV1, state: ServiceState },
}

impl From<VersionV1> for Version {
    fn from(v: VersionV1) -> Version {
        match v.author {
            Author::Client => Version::client(v.counter, v.origin),
            Author::Registry => Version::client(v.counter, v.origin.clone()).derived(v.origin),
        }
    }
}

/// Decodes the postcard bytes of a format-1 record (after the format byte).
pub(super) fn decode(rest: &[u8]) -> Result<Record, super::DecodeError> {
    match postcard::take_from_bytes::<RecordV1>(rest) {
        Ok((r, [])) => Ok(match r {
            RecordV1::Instance { key, version, state } => {
                Record::Instance { key, version: version.into(), state }
            }
            RecordV1::Service { key, version, state } => {
                Record::Service { key, version: version.into(), state }
            }
        }),
        Ok((_, extra)) => Err(super::DecodeError::Invalid(format!("{} bytes after the record", extra.len()))),
        Err(e) => Err(super::DecodeError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::decode_record;
    use crate::model::{InstanceData, Metadata};
    use serde::Serialize;

    // The format-1 layout, written as the old build wrote it.
    #[derive(Serialize)]
    enum OldAuthor {
        Registry,
        Client,
    }
    #[derive(Serialize)]
    struct OldVersion {
        counter: u64,
        author: OldAuthor,
        origin: NodeId,
    }
    #[derive(Serialize)]
    enum OldRecord {
        Instance { key: InstanceKey, version: OldVersion, state: InstanceState },
    }

    fn old_bytes(author: OldAuthor) -> (InstanceKey, Vec<u8>) {
        let key = InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", 80)
            .unwrap();
        let state = InstanceState::Live(InstanceData {
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: false,
            metadata: Metadata::default(),
        });
        let version = OldVersion { counter: 7 << 16, author, origin: NodeId::parse("127.0.0.1:1").unwrap() };
        let mut bytes = vec![1];
        bytes.extend(
            postcard::to_allocvec(&OldRecord::Instance { key: key.clone(), version, state }).unwrap(),
        );
        (key, bytes)
    }

    #[test]
    fn a_format_1_record_is_read_with_its_author_as_the_step() {
        let origin = NodeId::parse("127.0.0.1:1").unwrap();
        let (_, client) = old_bytes(OldAuthor::Client);
        assert_eq!(decode_record(&client).unwrap().version(), &Version::client(7 << 16, origin.clone()));
        let (key, derived) = old_bytes(OldAuthor::Registry);
        let r = decode_record(&derived).unwrap();
        assert!(matches!(&r, Record::Instance { key: k, .. } if *k == key));
        assert_eq!(r.version().step, 1);
        assert_eq!(r.version().writer(), &origin);
        for cut in 1..derived.len() {
            assert!(decode_record(&derived[..cut]).is_err(), "truncated at {cut}");
        }
    }
}
