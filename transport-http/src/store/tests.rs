//! Both stores behind the trait, and the embedded store's answers to bad
//! files.

use std::path::PathBuf;

use muster_core::durable::{encode_key, encode_record, record_key};
use muster_core::{InstanceData, InstanceKey, InstanceState, Metadata, NodeId, Record, ServiceKey, Version};

use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muster-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn record(port: i64) -> Record {
    let key =
        InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", port).unwrap();
    let data = InstanceData {
        weight: 1.0,
        healthy: true,
        enabled: true,
        ephemeral: false,
        metadata: Metadata::default(),
    };
    Record::Instance {
        key,
        version: Version::client((port as u64) << 16, NodeId::parse("127.0.0.1:1").unwrap()),
        state: InstanceState::Live(data),
    }
}

fn put(records: &[Record]) -> WriteSet {
    records.iter().map(|r| (encode_key(&record_key(r)), Some(encode_record(r)))).collect()
}

fn commit(s: &mut dyn Store, records: &WriteSet, floor: u64) -> Result<(), StoreError> {
    s.commit(&Commit { records, log: &[], log_seq: 0, drop_log_before: None, floor })
}

fn ephemeral(port: i64) -> Record {
    let mut r = record(port);
    if let Record::Instance { state: InstanceState::Live(d), .. } = &mut r {
        d.ephemeral = true;
    }
    r
}

fn blob(puts: &[Record], deletes: &[Record]) -> log::Blob {
    let mut b = log::Blob::default();
    for r in puts {
        b.put(&encode_key(&record_key(r)), &encode_record(r));
    }
    for r in deletes {
        b.delete(&encode_key(&record_key(r)));
    }
    b
}

fn log_commit(s: &mut dyn Store, b: &log::Blob, seq: u64, drop_before: Option<u64>) {
    let c = Commit {
        records: &WriteSet::new(),
        log: b.bytes(),
        log_seq: seq,
        drop_log_before: drop_before,
        floor: 1,
    };
    s.commit(&c).unwrap();
}

fn ports(records: &[Record]) -> Vec<u16> {
    let mut p: Vec<u16> = records
        .iter()
        .map(|r| match r {
            Record::Instance { key, .. } => key.port,
            Record::Service { .. } => 0,
        })
        .collect();
    p.sort_unstable();
    p
}

#[test]
fn the_ephemeral_log_gives_back_the_last_state_of_each_key_and_its_size() {
    let d = dir("log");
    {
        let mut s = EmbeddedStore::open(&d).unwrap();
        log_commit(&mut s, &blob(&[ephemeral(1), ephemeral(2), ephemeral(3)], &[]), 1, None);
        log_commit(&mut s, &blob(&[ephemeral(4)], &[ephemeral(2)]), 2, None);
    }
    let stored = EmbeddedStore::open(&d).unwrap().load().unwrap();
    assert_eq!(ports(&stored.records), vec![1, 3, 4], "a deletion in a later blob wins");
    assert_eq!((stored.log_next, stored.log_entries), (3, 5));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_compaction_drops_the_blobs_before_its_start_in_the_commit_of_its_end() {
    let d = dir("compact");
    {
        let mut s = EmbeddedStore::open(&d).unwrap();
        log_commit(&mut s, &blob(&[ephemeral(1), ephemeral(2)], &[]), 1, None);
        log_commit(&mut s, &blob(&[], &[ephemeral(1)]), 2, None);
        // Compaction from blob 3: the one live instance written again.
        log_commit(&mut s, &blob(&[ephemeral(2)], &[]), 3, Some(3));
    }
    let stored = EmbeddedStore::open(&d).unwrap().load().unwrap();
    assert_eq!(ports(&stored.records), vec![2]);
    assert_eq!((stored.log_next, stored.log_entries), (4, 1), "blobs 1 and 2 are gone");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_damaged_log_blob_is_refused_with_the_file_and_the_blob_named() {
    let d = dir("badlog");
    {
        let mut s = EmbeddedStore::open(&d).unwrap();
        let c = Commit {
            records: &WriteSet::new(),
            log: &[1, 9, 9],
            log_seq: 7,
            drop_log_before: None,
            floor: 1,
        };
        s.commit(&c).unwrap();
    }
    let err = EmbeddedStore::open(&d).unwrap().load().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ephemeral log blob 7") && msg.contains(FILE_NAME), "{msg}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_embedded_store_gives_back_what_it_committed_after_a_reopen() {
    let d = dir("reopen");
    {
        let mut s = EmbeddedStore::open(&d).unwrap();
        assert!(s.load().unwrap().records.is_empty());
        commit(&mut s, &put(&[record(1), record(2)]), 42).unwrap();
        let mut del = WriteSet::new();
        del.insert(encode_key(&record_key(&record(1))), None);
        commit(&mut s, &del, 7).unwrap();
    }
    let stored = EmbeddedStore::open(&d).unwrap().load().unwrap();
    assert_eq!(stored.records, vec![record(2)]);
    assert_eq!(stored.floor, 42, "the floor never goes back");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_memory_store_keeps_nothing() {
    let mut s = MemoryStore;
    commit(&mut s, &put(&[record(1)]), 1).unwrap();
    assert!(!s.persistent());
    assert!(s.load().unwrap().records.is_empty());
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_as_locked() {
    let d = dir("locked");
    let _first = EmbeddedStore::open(&d).unwrap();
    let err = EmbeddedStore::open(&d).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another muster process"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_foreign_truncated_or_corrupted_file_is_refused_with_its_name() {
    let d = dir("bad");
    {
        let mut s = EmbeddedStore::open(&d).unwrap();
        commit(&mut s, &put(&(1..200).map(record).collect::<Vec<_>>()), 1).unwrap();
    }
    let file = d.join(FILE_NAME);
    let good = std::fs::read(&file).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("foreign", b"listen = \"127.0.0.1:8848\"\n".repeat(100)),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("corrupted", {
            let mut b = good.clone();
            for x in b.iter_mut().skip(4096).step_by(7) {
                *x ^= 0x5a;
            }
            b
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(&file, &bytes).unwrap();
        let result = EmbeddedStore::open(&d).and_then(|mut s| s.load().map(|st| st.records.len()));
        match result {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(&file.display().to_string()), "{what}: {msg}");
            }
            // redb may repair a damaged file back to its last good commit.
            Ok(n) => assert_eq!(n, 199, "{what}: a repaired file holds the last commit, whole"),
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_with_what_to_do() {
    let d = dir("file");
    std::fs::write(&d, "x").unwrap();
    let err = EmbeddedStore::open(&d).err().unwrap();
    assert!(err.to_string().contains("--data-dir"), "{err}");
    let _ = std::fs::remove_file(&d);
}
