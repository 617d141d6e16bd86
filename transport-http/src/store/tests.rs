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

#[test]
fn the_embedded_store_gives_back_what_it_committed_after_a_reopen() {
    let d = dir("reopen");
    {
        let mut s = EmbeddedStore::open(&d).unwrap();
        assert!(s.load().unwrap().records.is_empty());
        s.commit(&put(&[record(1), record(2)]), 42).unwrap();
        let mut del = WriteSet::new();
        del.insert(encode_key(&record_key(&record(1))), None);
        s.commit(&del, 7).unwrap();
    }
    let stored = EmbeddedStore::open(&d).unwrap().load().unwrap();
    assert_eq!(stored.records, vec![record(2)]);
    assert_eq!(stored.floor, 42, "the floor never goes back");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_memory_store_keeps_nothing() {
    let mut s = MemoryStore;
    s.commit(&put(&[record(1)]), 1).unwrap();
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
        s.commit(&put(&(1..200).map(record).collect::<Vec<_>>()), 1).unwrap();
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
