//! The node's durable output and the load of its store (see
//! [`crate::durable`]).

use crate::durable::{DurableWrite, LoadReport};
use crate::record::Record;
use crate::time::Timestamp;

use super::Node;

impl Node {
    /// Switches the durable output on: from now on every record change is
    /// also produced by [`Node::poll_durable`]. Call it after
    /// [`Node::load`], so that loading does not write the store back to
    /// itself. Off by default (a memory-only node, the simulator without
    /// disks).
    pub fn enable_durable_output(&mut self) {
        self.registry.store_mut().set_durable_output(true);
    }

    /// Loads the records of the node's store. Call it once, right after
    /// [`Node::new`] and before any other input: the records merge by
    /// version (a peer's snapshot, if the node has peers, merges after
    /// them as usual), ephemeral instances get a fresh grace period from
    /// `now`, and the version clock moves past `floor` and past every
    /// record loaded, so the node never issues a version it issued before.
    pub fn load(
        &mut self,
        now: Timestamp,
        records: impl IntoIterator<Item = Record>,
        floor: u64,
    ) -> LoadReport {
        let now = self.clock.observe(now);
        self.registry.observe_floor(floor);
        let mut report = LoadReport::default();
        for record in records {
            self.registry.load(now, record, &mut report);
        }
        self.registry.grant_grace(now);
        // Loaded records are not local changes: peers get them through
        // anti-entropy (their digests differ) or their own snapshot request.
        self.after_change(now);
        report
    }

    /// The next change for the disk. Poll after every input, with
    /// `poll_transmit`, until `None`; commit what it yields, then release
    /// the replies of the requests whose writes were [`DurableWrite::sync`].
    #[must_use]
    pub fn poll_durable(&mut self) -> Option<DurableWrite> {
        self.registry.store_mut().poll_durable()
    }

    /// A page of the node's live ephemeral instances from `cursor` (0 to
    /// start), at most `max`, and the cursor of the next page (`None` after
    /// the last). A driver that writes ephemeral instances to an append-only
    /// log compacts it with these pages: once every page taken after a
    /// point of the log has been written, the log before that point holds
    /// nothing that is not also later in the log (a record changed while
    /// the pages are taken is in the durable output after that point).
    pub fn ephemeral_page(&self, cursor: u32, max: usize) -> (Vec<Record>, Option<u32>) {
        self.registry.store().ephemeral_page(cursor, max)
    }

    /// The highest version counter the node has issued or seen; store it
    /// with every commit and give it back to [`Node::load`].
    pub fn version_floor(&self) -> u64 {
        self.registry.hlc_counter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Config;
    use crate::durable::RecordKey;
    use crate::model::{InstanceKey, NodeId, ServiceKey};
    use crate::request::{RegisterRequest, ServiceUpdate};

    fn node() -> Node {
        let config = Config::new(NodeId::parse("127.0.0.1:1").unwrap());
        Node::new(Config { wall_clock_ms: 1_700_000_000_000, ..config }, Timestamp::ZERO).unwrap()
    }

    fn key(port: i64) -> InstanceKey {
        InstanceKey::parse(ServiceKey::parse(None, None, "orders").unwrap(), None, "10.0.0.1", port).unwrap()
    }

    fn register(node: &mut Node, now: u64, port: i64, ephemeral: bool) {
        let mut req = RegisterRequest::new(key(port));
        req.ephemeral = Some(ephemeral);
        node.register(Timestamp::from_millis(now), req).unwrap();
    }

    fn drain(node: &mut Node) -> Vec<DurableWrite> {
        std::iter::from_fn(|| node.poll_durable()).collect()
    }

    #[test]
    fn nothing_is_produced_until_the_output_is_enabled() {
        let mut n = node();
        register(&mut n, 1, 1, false);
        assert!(drain(&mut n).is_empty());
        n.enable_durable_output();
        register(&mut n, 2, 2, false);
        assert_eq!(drain(&mut n).len(), 1);
    }

    #[test]
    fn persistent_writes_are_sync_ephemeral_ones_written_behind_and_beats_write_nothing() {
        let mut n = node();
        n.enable_durable_output();
        register(&mut n, 1, 1, false);
        register(&mut n, 1, 2, true);
        let w = drain(&mut n);
        assert_eq!(w.iter().map(DurableWrite::sync).collect::<Vec<_>>(), vec![true, false]);
        n.heartbeat(Timestamp::from_millis(2), &key(2)).unwrap();
        assert!(drain(&mut n).is_empty(), "a heartbeat writes nothing");
        n.put_service(
            Timestamp::from_millis(3),
            &ServiceKey::parse(None, None, "orders").unwrap(),
            ServiceUpdate { protect_threshold: Some(0.5), metadata: None },
        )
        .unwrap();
        n.deregister(Timestamp::from_millis(4), &key(2)).unwrap();
        let w = drain(&mut n);
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(DurableWrite::sync), "settings and tombstones are sync: {w:?}");
    }

    #[test]
    fn ephemeral_pages_hold_every_live_ephemeral_instance_once_and_nothing_else() {
        let mut n = node();
        for port in 1..=25 {
            register(&mut n, 1, port, port % 5 != 0);
        }
        n.deregister(Timestamp::from_millis(2), &key(3)).unwrap();
        let (mut seen, mut cursor) = (Vec::new(), Some(0));
        while let Some(c) = cursor {
            let (page, next) = n.ephemeral_page(c, 4);
            assert!(page.len() <= 4);
            seen.extend(page);
            cursor = next;
        }
        let mut ports: Vec<u16> = seen
            .iter()
            .map(|r| match r {
                Record::Instance { key, state: crate::record::InstanceState::Live(d), .. } if d.ephemeral => {
                    key.port
                }
                other => panic!("not a live ephemeral instance: {other:?}"),
            })
            .collect();
        ports.sort_unstable();
        let expected: Vec<u16> = (1..=25).filter(|p| p % 5 != 0 && *p != 3).collect();
        assert_eq!(ports, expected);
    }

    #[test]
    fn a_purged_tombstone_is_deleted_from_the_disk() {
        let mut n = node();
        n.enable_durable_output();
        register(&mut n, 1, 1, false);
        n.deregister(Timestamp::from_millis(2), &key(1)).unwrap();
        let _ = drain(&mut n);
        let later =
            Timestamp::from_millis(2) + n.config().timings.tombstone_ttl + std::time::Duration::from_secs(1);
        n.handle_timeout(later);
        let w = drain(&mut n);
        assert!(w.contains(&DurableWrite::Delete(RecordKey::Instance(key(1)))), "{w:?}");
    }

    #[test]
    fn a_node_loaded_from_its_store_holds_every_record_and_issues_higher_versions() {
        let mut a = node();
        a.enable_durable_output();
        register(&mut a, 1, 1, false);
        register(&mut a, 1, 2, true);
        let mut disk = BTreeMap::new();
        for w in drain(&mut a) {
            if let DurableWrite::Put(r) = w {
                disk.insert(crate::durable::record_key(&r), r);
            }
        }
        let floor = a.version_floor() + 1000;
        // The restarted node's wall clock is an hour behind.
        let config = Config::new(NodeId::parse("127.0.0.1:1").unwrap());
        let mut b =
            Node::new(Config { wall_clock_ms: 1_700_000_000_000 - 3_600_000, ..config }, Timestamp::ZERO)
                .unwrap();
        let report = b.load(Timestamp::ZERO, disk.into_values(), floor);
        assert_eq!((report.loaded, report.instances, report.rejected.len()), (2, 2, 0));
        assert_eq!(b.live_instances().len(), 2);
        b.deregister(Timestamp::from_millis(1), &key(1)).unwrap();
        assert!(b.instance_record(&key(1)).unwrap().version().counter > floor);
        b.check_invariants();
    }
}
