//! Peer messages and their wire encoding.
//!
//! A frame is `[protocol version: u16 LE][CRC-32 of the rest: u32 LE][postcard(from, message)]`.
//! Decoding checks the version first, then the checksum (over the version
//! and the body), and never panics: any byte string gives a message or a
//! [`MessageError`]. A frame with a flipped bit never decodes
//! ([`MessageError::Checksum`]). Names, hosts and node ids inside are
//! re-validated while decoding, exactly as client input is.

use serde::{Deserialize, Serialize};

use crate::error::MessageError;
use crate::model::{InstanceKey, NodeId};
use crate::record::Record;

/// The protocol version this build speaks. Bumped on any incompatible change
/// of [`PeerMessage`] or the records inside it.
pub const PROTOCOL_VERSION: u16 = 2;

/// A heartbeat forwarded to the node responsible for the instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardedBeat {
    /// The instance.
    pub key: InstanceKey,
    /// How long before sending the beat was seen, in milliseconds.
    pub age_ms: u64,
}

/// Everything one node says to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Are you there? Answered by [`PeerMessage::Ack`].
    Ping {
        /// Echoed in the ack.
        nonce: u64,
        /// The sender's wall clock when it sent the ping, ms since the Unix
        /// epoch (NTP's `t1`).
        sent_ms: u64,
    },
    /// I am here.
    Ack {
        /// The ping's nonce.
        nonce: u64,
        /// The ping's `sent_ms`, echoed (`t1`).
        ping_sent_ms: u64,
        /// The acker's wall clock when the ping arrived (`t2`).
        received_ms: u64,
        /// The acker's wall clock when it sent the ack (`t3`). With the
        /// receiver's clock on arrival (`t4`) these give the acker's clock
        /// offset and its uncertainty (see [`crate::ordering`]).
        sent_ms: u64,
    },
    /// Records changed locally since the last delta.
    Delta {
        /// The records, each in its latest state.
        #[serde(deserialize_with = "bounded_items")]
        records: Vec<Record>,
    },
    /// Heartbeats seen by the sender for instances the receiver is
    /// responsible for.
    Beats {
        /// The beats.
        #[serde(deserialize_with = "bounded_items")]
        beats: Vec<ForwardedBeat>,
    },
    /// Anti-entropy, step 1: the root of the sender's digest. A receiver
    /// whose root differs answers with [`PeerMessage::DigestBuckets`].
    DigestRoot {
        /// The root hash.
        root: u64,
        /// The sender's hybrid clock when it computed the root: every record
        /// in its digest has a version counter at most this (agreement.rs).
        hlc: u64,
    },
    /// Anti-entropy, step 2: the receiver's bucket hashes.
    DigestBuckets {
        /// [`crate::BUCKETS`] bucket hashes.
        #[serde(deserialize_with = "bounded_buckets")]
        buckets: Vec<u64>,
        /// The sender's hybrid clock when it computed them (as in `DigestRoot`).
        hlc: u64,
    },
    /// Anti-entropy, step 3 (and 4 with `reply == false`): every record the
    /// sender holds in the buckets that differ.
    BucketRecords {
        /// The buckets covered.
        #[serde(deserialize_with = "bounded_buckets")]
        buckets: Vec<u8>,
        /// The sender's records in them.
        #[serde(deserialize_with = "bounded_items")]
        records: Vec<Record>,
        /// Whether the receiver should answer with its own records.
        reply: bool,
    },
    /// A starting node asks for a page of the registry.
    SnapshotRequest {
        /// Where the page starts; 0 for the first.
        cursor: u64,
    },
    /// A page of the registry.
    Snapshot {
        /// The records of the page.
        #[serde(deserialize_with = "bounded_items")]
        records: Vec<Record>,
        /// The cursor of the next page; `None` on the last.
        next: Option<u64>,
        /// Whether the sender has loaded the registry itself.
        ready: bool,
    },
    /// Anti-entropy, step 3 when the differing buckets hold more records than
    /// one message carries: the sender's non-zero leaf hashes (256 leaves per
    /// bucket, by the top 16 bits of the key hash) under those buckets. The
    /// receiver answers with [`PeerMessage::LeafRecords`] for the leaves that
    /// differ.
    DigestLeaves {
        /// The buckets covered (a leaf of one of them missing from `leaves`
        /// is empty on the sender).
        buckets: Vec<u8>,
        /// `(leaf, hash)`, sorted by leaf, zero hashes left out.
        leaves: Vec<(u16, u64)>,
    },
    /// Anti-entropy, step 4 (and 5 with `reply == false`): every record the
    /// sender holds in the leaves covered.
    LeafRecords {
        /// The leaves covered, each whole.
        leaves: Vec<u16>,
        /// The sender's records in them.
        records: Vec<Record>,
        /// Whether the receiver should answer with its own records.
        reply: bool,
    },
}

/// Leaf hashes that count as one item against `max_incoming_records` (a leaf
/// hash is a tenth of a small record's size).
pub const LEAVES_PER_ITEM: usize = 4;

impl PeerMessage {
    /// The message kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::Ping { .. } => "ping",
            PeerMessage::Ack { .. } => "ack",
            PeerMessage::Delta { .. } => "delta",
            PeerMessage::Beats { .. } => "beats",
            PeerMessage::DigestRoot { .. } => "digest_root",
            PeerMessage::DigestBuckets { .. } => "digest_buckets",
            PeerMessage::BucketRecords { .. } => "bucket_records",
            PeerMessage::SnapshotRequest { .. } => "snapshot_request",
            PeerMessage::Snapshot { .. } => "snapshot",
            PeerMessage::DigestLeaves { .. } => "digest_leaves",
            PeerMessage::LeafRecords { .. } => "leaf_records",
        }
    }

    /// How many records or beats the message carries.
    pub fn item_count(&self) -> usize {
        match self {
            PeerMessage::Delta { records }
            | PeerMessage::BucketRecords { records, .. }
            | PeerMessage::Snapshot { records, .. } => records.len(),
            PeerMessage::Beats { beats } => beats.len(),
            PeerMessage::DigestBuckets { buckets, .. } => buckets.len(),
            PeerMessage::DigestLeaves { buckets, leaves } => {
                buckets.len().max(leaves.len().div_ceil(LEAVES_PER_ITEM))
            }
            PeerMessage::LeafRecords { leaves, records, .. } => {
                records.len().max(leaves.len().div_ceil(LEAVES_PER_ITEM))
            }
            _ => 0,
        }
    }
}

std::thread_local! {
    /// The item limit of the decode running on this thread ([`decode_within`]).
    static ITEMS_MAX: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// A sequence of at most `max` items, refused as soon as its length prefix
/// says more (postcard writes it first), before any item is decoded.
fn bounded<'de, D, T>(d: D, max: usize, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T> {
        max: usize,
        what: &'static str,
        item: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let too_many = || serde::de::Error::custom(format!("more than {} {}", self.max, self.what));
            let declared = seq.size_hint().unwrap_or(0);
            if declared > self.max {
                return Err(too_many());
            }
            // As serde's own Vec: never trust a length prefix for more than ~1 MiB up front.
            let mut out = Vec::with_capacity(declared.min((1 << 20) / std::mem::size_of::<T>().max(1)));
            while let Some(item) = seq.next_element()? {
                if out.len() >= self.max {
                    return Err(too_many());
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V { max, what, item: std::marker::PhantomData })
}

fn bounded_items<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    bounded(d, ITEMS_MAX.with(std::cell::Cell::get), "items (max_incoming_records)")
}

fn bounded_buckets<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    bounded(d, crate::BUCKETS, "buckets")
}

#[derive(Serialize)]
struct FrameRef<'a> {
    from: &'a NodeId,
    msg: &'a PeerMessage,
}

#[derive(Deserialize)]
struct Frame {
    from: NodeId,
    msg: PeerMessage,
}

/// Bytes before the postcard body: the version and the checksum.
pub const FRAME_HEADER: usize = 6;

/// The CRC-32 (IEEE) of a frame's version and body, the bytes it protects.
fn checksum(version: [u8; 2], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&version);
    h.update(body);
    h.finalize()
}

/// Writes the checksum of `frame` (header placeholder included) into its header.
fn seal(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() >= FRAME_HEADER {
        let sum = checksum([frame[0], frame[1]], &frame[FRAME_HEADER..]);
        frame[2..FRAME_HEADER].copy_from_slice(&sum.to_le_bytes());
    }
    frame
}

/// Encodes a message from `from` into a frame.
pub fn encode(from: &NodeId, msg: &PeerMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    // Serialising these types into a Vec cannot fail: every field is a plain
    // value, string, sequence or map of known length.
    match postcard::to_extend(&FrameRef { from, msg }, out) {
        Ok(v) => seal(v),
        Err(e) => {
            debug_assert!(false, "encoding a peer message failed: {e}");
            seal([PROTOCOL_VERSION.to_le_bytes().as_slice(), &[0; 4]].concat())
        }
    }
}

/// Decodes a frame like [`decode`], refusing while decoding any message
/// whose record or beat list declares more than `max_items` entries (so a
/// huge frame costs nothing past its length prefix). Bucket lists are always
/// limited to [`crate::BUCKETS`].
pub fn decode_within(bytes: &[u8], max_items: usize) -> Result<(NodeId, PeerMessage), MessageError> {
    let before = ITEMS_MAX.with(|m| m.replace(max_items));
    let result = decode(bytes);
    ITEMS_MAX.with(|m| m.set(before));
    result
}

/// Decodes a frame into its sender and message.
pub fn decode(bytes: &[u8]) -> Result<(NodeId, PeerMessage), MessageError> {
    let (head, body) = bytes
        .split_first_chunk::<2>()
        .ok_or_else(|| MessageError::Malformed("frame shorter than its version header".into()))?;
    let got = u16::from_le_bytes(*head);
    if got != PROTOCOL_VERSION {
        return Err(MessageError::ProtocolVersion { got, expected: PROTOCOL_VERSION });
    }
    let (sum, body) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| MessageError::Malformed("frame shorter than its checksum".into()))?;
    let (stated, computed) = (u32::from_le_bytes(*sum), checksum(*head, body));
    if stated != computed {
        return Err(MessageError::Checksum { stated, computed });
    }
    let (frame, rest): (Frame, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MessageError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok((frame.from, frame.msg))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{InstanceData, Metadata, ServiceKey};
    use crate::record::{InstanceState, Version};

    fn sample() -> (NodeId, PeerMessage) {
        let from = NodeId::parse("10.0.0.1:8848").unwrap();
        let key =
            InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.1.2.3", 8080)
                .unwrap();
        let data = InstanceData {
            weight: 1.5,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata: Metadata::from_map([("zone".to_owned(), "eu-1".to_owned())].into_iter().collect())
                .unwrap(),
        };
        let record = Record::Instance {
            key: key.clone(),
            version: Version::client(7 << 16, from.clone()),
            state: InstanceState::Live(data),
        };
        let msg = PeerMessage::Delta { records: vec![record] };
        (from, msg)
    }

    #[test]
    fn a_frame_round_trips() {
        let (from, msg) = sample();
        let bytes = encode(&from, &msg);
        assert_eq!(decode(&bytes).unwrap(), (from, msg));
    }

    #[test]
    fn another_protocol_version_is_refused() {
        let (from, msg) = sample();
        let mut bytes = encode(&from, &msg);
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(MessageError::ProtocolVersion { got: 9, expected: PROTOCOL_VERSION }));
    }

    #[test]
    fn trailing_and_missing_bytes_are_refused() {
        let (from, msg) = sample();
        let mut bytes = encode(&from, &msg);
        bytes.push(0);
        assert!(matches!(decode(&seal(bytes.clone())), Err(MessageError::Malformed(_))));
        let short = seal(bytes[..bytes.len() - 3].to_vec());
        assert!(matches!(decode(&short), Err(MessageError::Malformed(_))));
        assert!(matches!(decode(&[1]), Err(MessageError::Malformed(_))));
        assert!(matches!(decode(&[2, 0, 1]), Err(MessageError::Malformed(_))));
        // Unsealed, the same bytes fail their checksum first.
        assert!(matches!(decode(&bytes), Err(MessageError::Checksum { .. })));
    }

    #[test]
    fn a_frame_carries_the_checksum_of_its_version_and_body() {
        let (from, msg) = sample();
        let bytes = encode(&from, &msg);
        assert_eq!(bytes[..2], PROTOCOL_VERSION.to_le_bytes());
        let stated = u32::from_le_bytes(bytes[2..FRAME_HEADER].try_into().unwrap());
        assert_eq!(stated, checksum([bytes[0], bytes[1]], &bytes[FRAME_HEADER..]));
        let mut bad = bytes.clone();
        bad[FRAME_HEADER + 3] ^= 0x10;
        let err = decode(&bad).unwrap_err();
        assert!(matches!(err, MessageError::Checksum { stated: s, .. } if s == stated), "{err:?}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn lists_longer_than_the_limit_are_refused_while_decoding() {
        let (from, msg) = sample();
        let PeerMessage::Delta { records } = msg else { unreachable!() };
        let many = PeerMessage::Delta { records: vec![records[0].clone(); 5] };
        let bytes = encode(&from, &many);
        assert!(decode_within(&bytes, 5).is_ok());
        assert!(matches!(decode_within(&bytes, 4), Err(MessageError::Malformed(_))));
        assert!(decode(&bytes).is_ok(), "the limit ends with its call");
        let buckets = PeerMessage::DigestBuckets { buckets: vec![0; crate::BUCKETS + 1], hlc: 0 };
        assert!(decode(&encode(&from, &buckets)).is_err());
        let ok = PeerMessage::DigestBuckets { buckets: vec![0; crate::BUCKETS], hlc: 0 };
        assert!(decode(&encode(&from, &ok)).is_ok());
        // A length prefix claiming a billion records, with nothing behind it.
        let mut huge = encode(&from, &PeerMessage::Delta { records: Vec::new() });
        huge.pop();
        huge.extend_from_slice(&[0x80, 0x94, 0xeb, 0xdc, 0x03]);
        assert!(matches!(decode_within(&seal(huge), 20_000), Err(MessageError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let mut framed = PROTOCOL_VERSION.to_le_bytes().to_vec();
            framed.extend_from_slice(&[0; 4]);
            framed.extend_from_slice(&bytes);
            let _ = decode(&seal(framed));
        }

        #[test]
        fn a_frame_with_any_one_bit_flipped_never_decodes(
            bit in any::<prop::sample::Index>(),
            many in 1..40usize,
        ) {
            let (from, msg) = sample();
            let PeerMessage::Delta { records } = msg else { unreachable!() };
            let big = PeerMessage::Delta { records: vec![records[0].clone(); many] };
            for m in [PeerMessage::Ping { nonce: many as u64, sent_ms: 1 }, big] {
                let mut bytes = encode(&from, &m);
                let at = bit.index(bytes.len() * 8);
                bytes[at / 8] ^= 1 << (at % 8);
                prop_assert!(decode(&bytes).is_err(), "bit {} of {} decoded", at, bytes.len() * 8);
            }
        }

        #[test]
        fn decoding_mutated_frames_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let (from, msg) = sample();
            let mut bytes = encode(&from, &msg);
            for (i, b) in flips {
                let at = i.index(bytes.len());
                bytes[at] ^= b;
            }
            let _ = decode(&bytes);
            let _ = decode(&bytes[..cut.index(bytes.len())]);
        }

        #[test]
        fn a_decoded_mutation_holds_only_valid_names(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let (from, msg) = sample();
            let mut bytes = encode(&from, &msg);
            for (i, b) in flips {
                let at = FRAME_HEADER + i.index(bytes.len() - FRAME_HEADER);
                bytes[at] ^= b;
            }
            // Resealed, so that the mutation reaches the decoder.
            if let Ok((_, PeerMessage::Delta { records })) = decode(&seal(bytes)) {
                for r in records {
                    if let Record::Instance { key, .. } = r {
                        prop_assert!(crate::model::check_name(crate::error::Field::Service, key.service.service.as_str()).is_ok());
                        prop_assert!(crate::model::Host::parse(&key.ip.to_string()).is_ok());
                    }
                }
            }
        }
    }
}
