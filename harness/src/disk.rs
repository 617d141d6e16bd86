//! Disks, crashes and power cuts: every acknowledged persistent write
//! survives.
//!
//! Each node has a simulated disk fed by [`muster_core::Node::poll_durable`]
//! the way the HTTP driver feeds its store: writes marked `sync` are
//! committed before the client's answer is taken as given, the others
//! (live ephemeral instances) are written behind. A crash loses what the
//! disk had not committed; a restarted node is rebuilt from its disk with
//! [`muster_core::Node::load`] (with a wall clock that may have gone back)
//! before it sees anything else. Faults: single-node crashes and power cuts
//! (every node at once), over a lossy network. Workload: persistent
//! registrations, deregistrations and service settings on random nodes.
//!
//! Invariants:
//! 1. When a node restarts, it holds every write it acknowledged, at that
//!    version or newer, before it has heard from anyone.
//! 2. After the last power cut and a quiet period, every node holds the
//!    latest acknowledged version of every key or newer, and no node holds
//!    an instance whose last acknowledged write deregistered it.
//!
//! [`DiskBug::AckBeforeCommit`] acknowledges sync writes before they are
//! committed (it writes them behind like ephemeral ones): the checks must
//! catch it.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::durable::{DurableWrite, RecordKey, record_key};
use muster_core::hash::SplitMix64;
use muster_core::message::{decode, encode};
use muster_core::{
    Config, InstanceKey, Node, NodeId, Record, RegisterRequest, ServiceKey, ServiceUpdate, Timestamp, Version,
};
use muster_transport_mem::{LinkConfig, Network, Probability};

/// A deliberately broken store path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBug {
    /// Sync writes are acknowledged before their commit.
    AckBeforeCommit,
}

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOutcome {
    /// The run's seed.
    pub seed: u64,
    /// Writes acknowledged.
    pub acked: usize,
    /// Single-node crashes.
    pub crashes: usize,
    /// Power cuts (every node at once).
    pub power_cuts: usize,
    /// The first invariant broken.
    pub violation: Option<String>,
}

const STEP: Duration = Duration::from_millis(5);
const CHAOS: Duration = Duration::from_secs(40);
const QUIET: Duration = Duration::from_secs(20);
const WRITE_BEHIND: Duration = Duration::from_millis(200);
const BASE_WALL_MS: u64 = 1_750_000_000_000;

#[derive(Default)]
struct Disk {
    committed: BTreeMap<RecordKey, Record>,
    floor: u64,
    pending: Vec<DurableWrite>,
    pending_sync: bool,
    pending_since: Option<Timestamp>,
}

impl Disk {
    fn commit(&mut self, floor: u64) {
        for w in self.pending.drain(..) {
            match w {
                DurableWrite::Put(r) => {
                    self.committed.insert(record_key(&r), r);
                }
                DurableWrite::Delete(k) => {
                    self.committed.remove(&k);
                }
            }
        }
        self.floor = self.floor.max(floor);
        self.pending_sync = false;
        self.pending_since = None;
    }

    fn crash(&mut self) {
        self.pending.clear();
        self.pending_sync = false;
        self.pending_since = None;
    }
}

struct Proc {
    id: NodeId,
    node: Option<Node>,
    disk: Disk,
    down_until: Option<Timestamp>,
}

/// One acknowledged write.
struct Ack {
    taker: usize,
    key: RecordKey,
    version: Version,
    live: bool,
}

struct World {
    rng: SplitMix64,
    now: Timestamp,
    procs: Vec<Proc>,
    net: Network<Vec<u8>>,
    bug: Option<DiskBug>,
    acks: Vec<Ack>,
    next_port: u16,
    crashes: usize,
    power_cuts: usize,
}

/// Runs one seeded history of `nodes` nodes, optionally with a bug.
pub fn run_disk(seed: u64, nodes: usize, bug: Option<DiskBug>) -> DiskOutcome {
    let mut rng = SplitMix64::new(seed);
    let link = LinkConfig {
        loss: Probability::new(0.05).unwrap_or(Probability::ZERO),
        ..LinkConfig::perfect(Duration::from_millis(2))
    };
    let net = Network::new(rng.next_u64(), link);
    let procs = (0..nodes)
        .filter_map(|i| NodeId::parse(&format!("10.0.1.{}:8848", i + 1)).ok())
        .map(|id| Proc { id, node: None, disk: Disk::default(), down_until: None })
        .collect();
    let mut w = World {
        rng,
        now: Timestamp::ZERO,
        procs,
        net,
        bug,
        acks: Vec::new(),
        next_port: 1,
        crashes: 0,
        power_cuts: 0,
    };
    let violation = w.run().err();
    DiskOutcome { seed, acked: w.acks.len(), crashes: w.crashes, power_cuts: w.power_cuts, violation }
}

fn service() -> ServiceKey {
    ServiceKey::parse(None, None, "vault").unwrap_or_else(|_| unreachable!("a valid name"))
}

impl World {
    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.procs.len() {
            self.boot(i)?;
        }
        let end_chaos = Timestamp::ZERO + CHAOS;
        while self.now < end_chaos {
            self.step()?;
            self.chaos()?;
            self.workload();
        }
        // A last power cut, then quiet: everything must come back everywhere.
        self.power_cut();
        let quiet_end = self.now + QUIET;
        while self.now < quiet_end {
            self.step()?;
        }
        self.check_end()
    }

    fn boot(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        let skew_back = self.rng.below(2_000);
        let p = &mut self.procs[i];
        let mut config = Config::new(p.id.clone());
        config.peers = self.peer_ids(i);
        config.seed = self.rng.next_u64();
        // The wall clock at the node's epoch: up to 2 s behind the last one.
        config.wall_clock_ms = BASE_WALL_MS - skew_back;
        // Restarts step the wall clock back up to 2 s: inside the tolerated skew.
        config.timings.max_clock_skew = std::time::Duration::from_secs(5);
        let p = &mut self.procs[i];
        let mut node = Node::new(config, now).map_err(|e| format!("config: {e}"))?;
        node.load(now, p.disk.committed.values().cloned(), p.disk.floor);
        node.enable_durable_output();
        for a in self.acks.iter().filter(|a| a.taker == i) {
            let held = record_of(&node, &a.key).map(|r| r.version().clone());
            if held.as_ref().is_none_or(|v| v < &a.version) {
                return Err(format!(
                    "invariant 1: node {} restarted without {:?} it acknowledged at {:?} (holds {held:?})",
                    p.id, a.key, a.version
                ));
            }
        }
        p.node = Some(node);
        p.down_until = None;
        self.after(i);
        Ok(())
    }

    fn peer_ids(&self, i: usize) -> Vec<NodeId> {
        self.procs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p.id.clone()).collect()
    }

    /// Drains node `i`: transmits to the network, durable writes to its disk
    /// (committed now when sync, unless the bug says otherwise).
    fn after(&mut self, i: usize) {
        let now = self.now;
        let bug = self.bug;
        let p = &mut self.procs[i];
        let Some(node) = p.node.as_mut() else { return };
        while let Some(t) = node.poll_transmit() {
            let bytes = encode(&p.id, &t.msg);
            let len = bytes.len();
            self.net.send(now, &p.id, &t.to, bytes, len);
        }
        while node.poll_event().is_some() {}
        while node.poll_health_check().is_some() {}
        while let Some(w) = node.poll_durable() {
            p.disk.pending_sync |= w.sync();
            p.disk.pending.push(w);
            p.disk.pending_since.get_or_insert(now);
        }
        let due = p.disk.pending_since.is_some_and(|t| now >= t + WRITE_BEHIND);
        let sync_now = p.disk.pending_sync && bug != Some(DiskBug::AckBeforeCommit);
        if due || sync_now {
            p.disk.commit(node.version_floor());
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.now = self.now + STEP;
        let now = self.now;
        for i in 0..self.procs.len() {
            if self.procs[i].down_until.is_some_and(|t| t <= now) {
                self.boot(i)?;
            }
        }
        while let Some(d) = self.net.poll_delivery(now) {
            let Some(i) = self.procs.iter().position(|p| p.id == d.to) else { continue };
            let Some(node) = self.procs[i].node.as_mut() else { continue };
            if let Ok((from, msg)) = decode(&d.msg) {
                let _ = node.handle_message(now, &from, msg);
            }
            self.after(i);
        }
        for i in 0..self.procs.len() {
            let Some(node) = self.procs[i].node.as_mut() else { continue };
            if node.poll_timeout().is_some_and(|(t, _)| t <= now) {
                node.handle_timeout(now);
            }
            self.after(i);
        }
        Ok(())
    }

    fn crash(&mut self, i: usize, back_at: Timestamp) {
        let p = &mut self.procs[i];
        if p.node.take().is_some() {
            p.disk.crash();
            p.down_until = Some(back_at);
            let id = p.id.clone();
            self.net.drop_in_flight_to(&id);
        }
    }

    fn power_cut(&mut self) {
        self.power_cuts += 1;
        let back = self.now + Duration::from_millis(500);
        for i in 0..self.procs.len() {
            self.crash(i, back);
        }
    }

    fn chaos(&mut self) -> Result<(), String> {
        // About one single crash every 4 s and one power cut every 15 s.
        if self.rng.below(800) == 0 {
            let i = self.rng.below(self.procs.len() as u64) as usize;
            let back = self.now + Duration::from_millis(300 + self.rng.below(2_000));
            self.crashes += 1;
            self.crash(i, back);
        }
        if self.rng.below(3_000) == 0 {
            self.power_cut();
        }
        Ok(())
    }

    fn workload(&mut self) {
        // About 40 writes a second.
        if self.rng.below(5) != 0 {
            return;
        }
        let i = self.rng.below(self.procs.len() as u64) as usize;
        let now = self.now;
        let choice = self.rng.below(10);
        let Some(node) = self.procs[i].node.as_mut().filter(|n| n.is_ready()) else { return };
        let ack = match choice {
            0..=5 => {
                let port = self.next_port;
                self.next_port = self.next_port.wrapping_add(1).max(1);
                let Ok(key) = InstanceKey::parse(service(), None, "10.9.9.9", i64::from(port)) else {
                    return;
                };
                let mut req = RegisterRequest::new(key.clone());
                req.ephemeral = Some(false);
                req.metadata.insert("muster.health_check".into(), "none".into());
                node.register(now, req).ok().map(|_| (RecordKey::Instance(key), true))
            }
            6..=7 => {
                let live: Vec<InstanceKey> = node.live_instances().into_keys().collect();
                if live.is_empty() {
                    return;
                }
                let key = live[self.rng.below(live.len() as u64) as usize].clone();
                node.deregister(now, &key).ok().map(|()| (RecordKey::Instance(key), false))
            }
            _ => {
                let t = self.rng.below(100) as f64 / 100.0;
                let upd = ServiceUpdate { protect_threshold: Some(t), metadata: None };
                node.put_service(now, &service(), upd).ok().map(|_| (RecordKey::Service(service()), true))
            }
        };
        // The answer is given after the drain: the driver's commit point.
        self.after(i);
        let Some((key, live)) = ack else { return };
        let Some(node) = self.procs[i].node.as_ref() else { return };
        if let Some(r) = record_of(node, &key) {
            self.acks.push(Ack { taker: i, key, version: r.version().clone(), live });
        }
    }

    fn check_end(&self) -> Result<(), String> {
        let mut latest: BTreeMap<&RecordKey, &Ack> = BTreeMap::new();
        for a in &self.acks {
            let e = latest.entry(&a.key).or_insert(a);
            if a.version > e.version {
                *e = a;
            }
        }
        for p in &self.procs {
            let Some(node) = p.node.as_ref() else { return Err(format!("node {} is down at the end", p.id)) };
            for (key, a) in &latest {
                let held = record_of(node, key);
                let ok = held.as_ref().is_some_and(|r| r.version() >= &a.version);
                if !ok {
                    return Err(format!(
                        "invariant 2: node {} lacks {key:?} at {:?} after the last power cut (holds {:?})",
                        p.id,
                        a.version,
                        held.map(|r| r.version().clone())
                    ));
                }
                if !a.live && held.as_ref().is_some_and(|r| !r.is_tombstone()) {
                    return Err(format!(
                        "invariant 2: node {} resurrected {key:?} after its deregistration",
                        p.id
                    ));
                }
            }
        }
        Ok(())
    }
}

fn record_of(node: &Node, key: &RecordKey) -> Option<Record> {
    match key {
        RecordKey::Instance(k) => node.instance_record(k),
        RecordKey::Service(_) => node.records().into_iter().find(|r| &record_key(r) == key),
    }
}
