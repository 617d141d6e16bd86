//! The Service Manager and its Storage: an indexed in-memory store of
//! services and instances, the client operations on it, heartbeat leases and
//! expiry, and the merge of records from peers.
//!
//! Layout: instances and services live in [`Slab`]s; hash tables keyed by the
//! stable hash of the key map keys to slab indices (four bytes per entry, the
//! key is stored once, in the slab); a `BTreeSet<(Timestamp, TimerRef)>` holds
//! exactly one timer per ephemeral instance and per tombstone. Heartbeats only
//! write `last_beat`; a due timer recomputes the real deadline and re-arms
//! itself if the instance beat meanwhile (lazy re-arming), so a heartbeat
//! costs one hash lookup and the work of `handle_timeout` is proportional to
//! the timers that are due.

mod brake;
pub(crate) mod digest;
mod durable;
mod expiry;
mod health;
mod merge;
pub(crate) mod repair;
mod services;
mod views;

pub(crate) use self::merge::MergeOutcome;

use self::durable::{DurableLog, DurableOp};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;

use crate::config::{BrakeConfig, Limits, Timings};
use crate::error::{Field, InvalidInput, RequestError};
use crate::history::{ChangeCause, ChangeKind, InstanceChange, classify, merged_cause};
use crate::lease::{CompactLease, Lease};
use crate::model::{Host, InstanceData, InstanceKey, Metadata, Name, NodeId, ServiceKey, parse_weight};
use crate::record::{
    Hlc, InstanceState, Record, RemoveCause, ServiceState, Version, digest_hash, instance_state_hash,
};
use crate::request::{BeatReply, RegisterRequest, Registered, UpdateRequest};
use crate::responsibility::Responsibility;
use crate::slab::{Handle, Slab};
use crate::time::Timestamp;
use crate::view::{InstanceView, QueryAnswer, Selector, ServiceView};

use self::brake::Brake;
use self::digest::Digest;

/// What a timer entry refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerRef {
    Instance(u32),
    Service(u32),
}

/// A record that changed, by slab handle (resolved when it is sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RecordRef {
    Instance(Handle),
    Service(Handle),
}

#[derive(Debug)]
pub(crate) struct InstanceEntry {
    service: u32,
    /// Position in the service's `members`.
    pos: u32,
    /// Stable hash of the instance key.
    hash: u64,
    cluster: Name,
    ip: Host,
    port: u16,
    version: Version,
    state: InstanceState,
    /// Latest evidence of life seen here, or when the record arrived.
    last_beat: Timestamp,
    /// Whether `last_beat` is evidence from a client (directly or forwarded).
    witnessed: bool,
    /// Start of this instance's own grace period: when this node last became
    /// responsible for it (its client's beats may have gone elsewhere).
    graced: Timestamp,
    /// This entry's timer, if any.
    timer: Option<Timestamp>,
    /// The lease, from the metadata when the state was set.
    lease: CompactLease,
    /// How queries show the instance, built on first use after a change.
    view: Option<Arc<InstanceView>>,
    /// Consecutive failed active checks (persistent instances).
    check_failures: u8,
}

impl InstanceEntry {
    fn live(&self) -> Option<&InstanceData> {
        match &self.state {
            InstanceState::Live(d) => Some(d),
            InstanceState::Removed { .. } => None,
        }
    }

    fn digest_hash(&self) -> u64 {
        digest_hash(self.hash, &self.version, instance_state_hash(&self.state))
    }

    /// Where the lease counts from: the latest beat, this instance's own
    /// grace, or the node-wide grace (start, pause), whichever is latest.
    fn lease_base(&self, grace_epoch: Timestamp) -> Timestamp {
        self.last_beat.max(self.graced).max(grace_epoch)
    }
}

#[derive(Debug)]
pub(crate) struct ServiceRecord {
    version: Version,
    state: ServiceState,
    timer: Option<Timestamp>,
}

#[derive(Debug)]
pub(crate) struct ServiceEntry {
    key: ServiceKey,
    /// Stable hash of the service key (the index hash).
    hash: u64,
    /// Explicit settings (or their tombstone); `None` for a service that
    /// exists only through its instances.
    record: Option<ServiceRecord>,
    /// Instance slots, live and tombstones.
    members: Vec<u32>,
    live: u32,
    healthy: u32,
    /// The last view built; it may be stale (see `view_fresh`).
    view: Option<Arc<ServiceView>>,
    /// Whether `view` shows the current state.
    view_fresh: bool,
    /// Instances changed since `view` was built, to patch it.
    view_changes: Vec<ViewChange>,
    /// Whether so much changed that patching would cost more than rebuilding.
    view_rebuild: bool,
}

/// An instance that changed since a service's view was built.
#[derive(Debug)]
pub(crate) struct ViewChange {
    slot: u32,
    cluster: Name,
    ip: Host,
    port: u16,
}

impl ServiceEntry {
    /// Whether clients see the service: explicit, or with live instances.
    fn visible(&self) -> bool {
        self.live > 0 || matches!(self.record, Some(ServiceRecord { state: ServiceState::Live(_), .. }))
    }

    fn explicit(&self) -> bool {
        matches!(self.record, Some(ServiceRecord { state: ServiceState::Live(_), .. }))
    }
}

/// Counters for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Live instances.
    pub instances: usize,
    /// Live instances that are healthy.
    pub healthy_instances: usize,
    /// Live ephemeral instances.
    pub ephemeral_instances: usize,
    /// Instance tombstones.
    pub tombstones: usize,
    /// Services visible to clients.
    pub services: usize,
    /// Heartbeats accepted (direct and forwarded).
    pub heartbeats: u64,
    /// Heartbeats for unknown instances.
    pub unknown_heartbeats: u64,
    /// Instances marked unhealthy for silence by this node.
    pub marked_unhealthy: u64,
    /// Instances removed for silence by this node.
    pub expired: u64,
    /// Removals held back by the expiry brake.
    pub braked: u64,
    /// Expiries or unhealthy marks of other nodes refuted by this node.
    pub refuted: u64,
    /// Records merged from peers that changed the store.
    pub merged: u64,
    /// Records from peers that lost to the local version.
    pub stale: u64,
    /// Records from peers refused (invalid or over a limit).
    pub rejected: u64,
    /// Of those, records further ahead of this node's clock than
    /// `max_clock_skew` (from a skewed peer, or a corrupted counter).
    pub rejected_ahead: u64,
    /// Tombstones purged.
    pub purged: u64,
    /// Health changes of persistent instances made by active checks.
    pub checks_changed: u64,
}

/// How a heartbeat was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BeatOutcome {
    Unknown,
    Known { interval: Duration, forward_to: Option<NodeId> },
}

pub(crate) struct Registry {
    me: NodeId,
    wall_clock_ms: u64,
    hlc: Hlc,
    timings: Timings,
    limits: Limits,
    services: Slab<ServiceEntry>,
    service_index: HashTable<u32>,
    instances: Slab<InstanceEntry>,
    instance_index: HashTable<u32>,
    timers: BTreeSet<(Timestamp, TimerRef)>,
    digest: Digest,
    brake: Brake,
    responsibility: Responsibility,
    grace_epoch: Timestamp,
    stats: RegistryStats,
    /// Records changed by this node (to push to peers).
    local_changes: Vec<RecordRef>,
    /// Services whose visible content changed (to wake watchers).
    changed_services: BTreeSet<ServiceKey>,
    /// Active health checks for the driver.
    checks: std::collections::VecDeque<crate::health::HealthCheck>,
    /// Deliberate bugs for the simulator (always none without `sim`).
    pub(crate) bugs: crate::bugs::Bugs,
    /// Instance changes for the history; `None` while nobody asked for them.
    history: Option<Vec<InstanceChange>>,
    /// Why the registry is writing instance state now (see `history.rs`).
    cause: ChangeCause,
    /// Record changes for the disk (see `durable.rs`).
    durable: DurableLog,
}

impl Registry {
    pub(crate) fn new(
        me: NodeId,
        wall_clock_ms: u64,
        timings: Timings,
        limits: Limits,
        brake: BrakeConfig,
    ) -> Registry {
        Registry {
            responsibility: Responsibility::alone(me.clone()),
            me,
            wall_clock_ms,
            hlc: Hlc::new(),
            timings,
            limits,
            services: Slab::default(),
            service_index: HashTable::new(),
            instances: Slab::default(),
            instance_index: HashTable::new(),
            timers: BTreeSet::new(),
            digest: Digest::default(),
            brake: Brake::new(brake),
            grace_epoch: Timestamp::ZERO,
            stats: RegistryStats::default(),
            local_changes: Vec::new(),
            changed_services: BTreeSet::new(),
            checks: std::collections::VecDeque::new(),
            bugs: crate::bugs::Bugs::default(),
            history: None,
            cause: ChangeCause::Client,
            durable: DurableLog::default(),
        }
    }

    // ---- getters -------------------------------------------------------

    pub(crate) fn stats(&self) -> RegistryStats {
        RegistryStats { services: self.services.iter().filter(|(_, s)| s.visible()).count(), ..self.stats }
    }

    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    pub(crate) fn hlc_counter(&self) -> u64 {
        self.hlc.last()
    }

    pub(crate) fn brake_engaged(&self) -> bool {
        self.brake.engaged()
    }

    pub(crate) fn brake_held(&self) -> usize {
        self.brake.held()
    }

    pub(crate) fn responsibility(&self) -> &Responsibility {
        &self.responsibility
    }

    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    pub(crate) fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// The record of an instance key, live or tombstone.
    pub(crate) fn instance_record_of(&self, key: &InstanceKey) -> Option<Record> {
        self.find_instance(key).and_then(|i| self.instances.get(i)).and_then(|e| self.instance_record(e))
    }

    /// Turns instance-change records for the history on or off.
    pub(crate) fn set_history(&mut self, on: bool) {
        self.history = on.then(Vec::new);
    }

    /// The instance changes since the last call (empty while off).
    pub(crate) fn take_history(&mut self) -> Vec<InstanceChange> {
        self.history.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Runs `f` with `cause` as the cause of the instance writes it makes.
    fn with_cause<T>(&mut self, cause: ChangeCause, f: impl FnOnce(&mut Registry) -> T) -> T {
        let before = std::mem::replace(&mut self.cause, cause);
        let out = f(self);
        self.cause = before;
        out
    }

    /// Notes a change for the history (when on).
    fn note(&mut self, now: Timestamp, index: u32, kind: ChangeKind, cause: ChangeCause, origin: NodeId) {
        if self.history.is_none() {
            return;
        }
        let Some(key) = self.instances.get(index).and_then(|e| self.instance_key(e)) else { return };
        if let Some(h) = self.history.as_mut() {
            h.push(InstanceChange { at: now, key, kind, cause, origin });
        }
    }

    /// Live instances on host `ip` (and `port`, if given), at most `max`,
    /// in slab order. A scan of every instance: for operators, not clients.
    pub(crate) fn instances_on(&self, ip: &Host, port: Option<u16>, max: usize) -> Vec<InstanceKey> {
        self.instances
            .iter()
            .filter(|(_, e)| e.live().is_some() && e.ip == *ip && port.is_none_or(|p| p == e.port))
            .filter_map(|(_, e)| self.instance_key(e))
            .take(max)
            .collect()
    }

    /// The last evidence of life this node holds for a live instance.
    pub(crate) fn last_beat(&self, key: &InstanceKey) -> Option<Timestamp> {
        let e = self.instances.get(self.find_instance(key)?)?;
        e.live().map(|_| e.last_beat)
    }

    pub(crate) fn take_local_changes(&mut self) -> std::vec::Drain<'_, RecordRef> {
        self.local_changes.drain(..)
    }

    pub(crate) fn pop_changed_service(&mut self) -> Option<ServiceKey> {
        self.changed_services.pop_first()
    }

    /// Every service the node holds any record of.
    pub(crate) fn service_keys(&self) -> Vec<ServiceKey> {
        self.services.iter().map(|(_, s)| s.key.clone()).collect()
    }

    // ---- configuration from the node -----------------------------------

    /// Who is responsible for what changed (membership change).
    pub(crate) fn set_responsibility(&mut self, r: Responsibility) {
        self.responsibility = r;
    }

    /// Who is responsible for what changed at `now`: the ephemeral instances
    /// this node inherits (responsible now, not before) get a fresh grace
    /// period, because their clients' beats went to the previous owner.
    /// Nothing else does: a peer that flaps moves only its own instances'
    /// grace, never the whole registry's. O(instances × members).
    pub(crate) fn inherit(&mut self, now: Timestamp, r: Responsibility) {
        let old = std::mem::replace(&mut self.responsibility, r);
        if self.bugs.has(crate::bugs::Bug::GlobalGrace) {
            self.grant_grace(now);
            return;
        }
        if self.bugs.has(crate::bugs::Bug::NoGrace) {
            return;
        }
        let mut inherited = Vec::new();
        for (i, e) in self.instances.iter() {
            let ephemeral = e.live().is_some_and(|d| d.ephemeral);
            if ephemeral && self.responsibility.is_mine(e.hash) && !old.is_mine(e.hash) {
                inherited.push(i);
            }
        }
        for i in inherited {
            if let Some(e) = self.instances.get_mut(i) {
                e.graced = now;
            }
            self.schedule_instance(i, now);
        }
    }

    /// Gives every instance a fresh grace period from `now`: no instance is
    /// marked unhealthy before `now + unhealthy_after`. For the node's own
    /// start and its own pauses (it could not have taken beats meanwhile).
    pub(crate) fn grant_grace(&mut self, now: Timestamp) {
        if self.bugs.has(crate::bugs::Bug::NoGrace) && self.grace_epoch > Timestamp::ZERO {
            return;
        }
        self.grace_epoch = self.grace_epoch.max(now);
    }

    // ---- versions ------------------------------------------------------

    fn wall(&self, now: Timestamp) -> u64 {
        self.wall_clock_ms.saturating_add(now.as_millis())
    }

    /// This node's wall clock at `now`, in milliseconds since the Unix epoch.
    pub(crate) fn wall_ms(&self, now: Timestamp) -> u64 {
        self.wall(now)
    }

    /// Advances the version clock past `counter` (a client's ordering token,
    /// already checked against the skew bound).
    pub(crate) fn observe(&mut self, counter: u64) {
        self.hlc.observe(counter);
    }

    /// A fresh version for a client's write.
    fn next_version(&mut self, now: Timestamp) -> Version {
        let wall = self.wall(now);
        Version::client(self.hlc.tick(wall), self.me.clone())
    }

    /// The version of this node's own judgement about the instance in slot
    /// `index`: its current version one step further (see [`Version`]).
    fn derived_version(&mut self, index: u32) -> Option<Version> {
        let v = self.instances.get(index)?.version.clone();
        Some(self.derive(&v))
    }

    /// This node's judgement about a record of version `v`.
    pub(crate) fn derive(&mut self, v: &Version) -> Version {
        let mut d = v.derived(self.me.clone());
        if self.bugs.has(crate::bugs::Bug::DerivedPlusOne) {
            // The old rule: the smallest counter above the judged record,
            // which a client write on a lagging node does not pass.
            d.counter = d.counter.saturating_add(1);
            d.origin = self.me.clone();
            d.step = 1;
        }
        self.hlc.observe(d.counter);
        d
    }

    // ---- lookups -------------------------------------------------------

    fn find_service(&self, key: &ServiceKey) -> Option<u32> {
        self.find_service_hashed(key.stable_hash(), key)
    }

    fn find_service_hashed(&self, hash: u64, key: &ServiceKey) -> Option<u32> {
        let services = &self.services;
        self.service_index
            .find(hash, |&i| services.get(i).is_some_and(|s| s.hash == hash && s.key == *key))
            .copied()
    }

    fn find_instance(&self, key: &InstanceKey) -> Option<u32> {
        self.find_instance_hashed(key.stable_hash(), key)
    }

    fn find_instance_hashed(&self, hash: u64, key: &InstanceKey) -> Option<u32> {
        let (instances, services) = (&self.instances, &self.services);
        self.instance_index
            .find(hash, |&i| {
                instances.get(i).is_some_and(|e| {
                    e.hash == hash
                        && e.port == key.port
                        && e.ip == key.ip
                        && e.cluster == key.cluster
                        && services.get(e.service).is_some_and(|s| s.key == key.service)
                })
            })
            .copied()
    }

    fn instance_key(&self, e: &InstanceEntry) -> Option<InstanceKey> {
        let service = self.services.get(e.service)?.key.clone();
        Some(InstanceKey { service, cluster: e.cluster.clone(), ip: e.ip.clone(), port: e.port })
    }

    /// The service entry for `key`, created (implicit) if absent.
    fn service_entry(&mut self, key: &ServiceKey) -> Result<u32, RequestError> {
        self.service_entry_hashed(key.stable_hash(), key)
    }

    /// Like `service_entry`, with the key's stable hash already computed.
    fn service_entry_hashed(&mut self, hash: u64, key: &ServiceKey) -> Result<u32, RequestError> {
        if let Some(i) = self.find_service_hashed(hash, key) {
            return Ok(i);
        }
        if self.services.len() >= self.limits.max_services {
            return Err(RequestError::LimitExceeded {
                what: "max_services",
                limit: self.limits.max_services,
            });
        }
        let entry = ServiceEntry {
            key: key.clone(),
            hash,
            record: None,
            members: Vec::new(),
            live: 0,
            healthy: 0,
            view: None,
            view_fresh: false,
            view_changes: Vec::new(),
            view_rebuild: false,
        };
        let handle = self
            .services
            .insert(entry)
            .ok_or(RequestError::LimitExceeded { what: "max_services", limit: self.limits.max_services })?;
        let services = &self.services;
        self.service_index.insert_unique(hash, handle.index, |&i| services.get(i).map_or(0, |s| s.hash));
        Ok(handle.index)
    }

    /// Removes a service entry that holds nothing any more.
    fn drop_service_if_empty(&mut self, index: u32) {
        let Some(s) = self.services.get(index) else { return };
        if !s.members.is_empty() || s.record.is_some() {
            return;
        }
        let hash = s.hash;
        if let Ok(entry) = self.service_index.find_entry(hash, |&i| i == index) {
            entry.remove();
        }
        self.services.remove(index);
    }

    /// A new instance slot (state set by the caller through `set_instance`).
    fn insert_instance(
        &mut self,
        service: u32,
        key: &InstanceKey,
        hash: u64,
        version: Version,
        now: Timestamp,
    ) -> Result<u32, RequestError> {
        let full = || RequestError::LimitExceeded { what: "max_instances", limit: self.limits.max_instances };
        if self.instances.len() >= self.limits.max_instances {
            return Err(full());
        }
        let pos = self.services.get(service).map_or(0, |s| s.members.len() as u32);
        let entry = InstanceEntry {
            service,
            pos,
            hash,
            cluster: key.cluster.clone(),
            ip: key.ip.clone(),
            port: key.port,
            version,
            // A tombstone contributes to counts like nothing does; the caller
            // moves it to its real state, keeping counts and digest exact.
            state: InstanceState::Removed { cause: RemoveCause::Deregistered, at_ms: 0 },
            last_beat: now,
            witnessed: false,
            graced: Timestamp::ZERO,
            timer: None,
            lease: CompactLease::from(Lease::defaults(&self.timings)),
            view: None,
            check_failures: 0,
        };
        let Some(handle) = self.instances.insert(entry) else { return Err(full()) };
        let instances = &self.instances;
        self.instance_index.insert_unique(hash, handle.index, |&i| instances.get(i).map_or(0, |e| e.hash));
        if let Some(s) = self.services.get_mut(service) {
            s.members.push(handle.index);
        }
        if let Some(e) = self.instances.get(handle.index) {
            self.digest.toggle(e.hash, e.digest_hash());
        }
        self.stats.tombstones += 1;
        Ok(handle.index)
    }

    /// Sets an instance's version and state, keeping counts, digest, timers,
    /// the view cache and the change lists exact. The single writer of
    /// instance state.
    fn set_instance(
        &mut self,
        index: u32,
        version: Version,
        state: InstanceState,
        now: Timestamp,
        local: bool,
    ) {
        let unchanged_metadata =
            |e: &InstanceEntry, new: &Metadata| e.live().is_some_and(|old| old.metadata.same_storage(new));
        let lease = match &state {
            InstanceState::Live(d) => match self.instances.get(index) {
                Some(e) if unchanged_metadata(e, &d.metadata) => None,
                _ => Some(self.lease_of(&d.metadata)),
            },
            InstanceState::Removed { .. } => None,
        };
        self.set_instance_leased(index, version, state, lease, now, local);
    }

    /// The lease of an instance with `metadata` (defaults if it is invalid,
    /// as records from peers may be).
    fn lease_of(&self, metadata: &Metadata) -> CompactLease {
        CompactLease::from(Lease::from_metadata_or_default(metadata, &self.timings))
    }

    /// `set_instance` with the lease already computed.
    fn set_instance_leased(
        &mut self,
        index: u32,
        version: Version,
        state: InstanceState,
        lease: Option<CompactLease>,
        now: Timestamp,
        local: bool,
    ) {
        if self.history.is_some() {
            if let Some(kind) = self.instances.get(index).and_then(|e| classify(Some(&e.state), &state)) {
                let cause = if local { self.cause } else { merged_cause(version.author(), &state) };
                self.note(now, index, kind, cause, version.writer().clone());
            }
        }
        let Some(e) = self.instances.get_mut(index) else { return };
        if let Some(lease) = lease {
            e.lease = lease;
        }
        e.view = None;
        let old_digest = e.digest_hash();
        let old = flags(&e.state);
        e.version = version;
        e.state = state;
        let new = flags(&e.state);
        let new_digest = e.digest_hash();
        let (hash, service) = (e.hash, e.service);
        self.digest.toggle(hash, old_digest);
        self.digest.toggle(hash, new_digest);
        self.account(service, old, -1);
        self.account(service, new, 1);
        if !new.live || new.healthy {
            self.brake.release(index);
        }
        self.schedule_instance(index, now);
        if let Some(h) = self.instances.handle(index) {
            self.durable.push(DurableOp::Put(RecordRef::Instance(h)));
            if local {
                self.local_changes.push(RecordRef::Instance(h));
            }
        }
        if old.live || new.live {
            self.instance_view_changed(service, index);
        }
    }

    fn account(&mut self, service: u32, f: Flags, sign: i64) {
        let add = |v: &mut usize, on: bool| {
            if on {
                *v = v.saturating_add_signed(sign as isize);
            }
        };
        add(&mut self.stats.instances, f.live);
        add(&mut self.stats.healthy_instances, f.live && f.healthy);
        add(&mut self.stats.ephemeral_instances, f.live && f.ephemeral);
        add(&mut self.stats.tombstones, !f.live);
        if let Some(s) = self.services.get_mut(service) {
            let add32 = |v: &mut u32, on: bool| {
                if on {
                    *v = v.saturating_add_signed(sign as i32);
                }
            };
            add32(&mut s.live, f.live);
            add32(&mut s.healthy, f.live && f.healthy);
        }
    }

    /// Something of the service other than its instances changed (settings,
    /// or what the node knows of it).
    fn service_changed(&mut self, service: u32) {
        if let Some(s) = self.services.get_mut(service) {
            s.view_fresh = false;
            if !self.changed_services.contains(&s.key) {
                self.changed_services.insert(s.key.clone());
            }
        }
    }

    /// A live instance of the service appeared, changed or went.
    fn instance_view_changed(&mut self, service: u32, index: u32) {
        let Some(e) = self.instances.get(index) else { return };
        let change = ViewChange { slot: index, cluster: e.cluster.clone(), ip: e.ip.clone(), port: e.port };
        if let Some(s) = self.services.get_mut(service) {
            if s.view.is_some() && !s.view_rebuild {
                if s.view_changes.len() > 64 + s.live as usize / 8 {
                    s.view_rebuild = true;
                    s.view_changes = Vec::new();
                } else {
                    s.view_changes.push(change);
                }
            }
        }
        self.service_changed(service);
    }

    /// Removes an instance slot entirely (tombstone purge).
    fn purge_instance(&mut self, index: u32) {
        let Some(e) = self.instances.get(index) else { return };
        if let Some(key) = self.instance_key(e) {
            self.durable.push(DurableOp::Delete(crate::durable::RecordKey::Instance(key)));
        }
        let Some(e) = self.instances.get(index) else { return };
        let (hash, service, pos, digest) = (e.hash, e.service, e.pos as usize, e.digest_hash());
        let f = flags(&e.state);
        if let Some(t) = e.timer {
            self.timers.remove(&(t, TimerRef::Instance(index)));
        }
        self.digest.toggle(hash, digest);
        self.account(service, f, -1);
        self.brake.release(index);
        if let Ok(entry) = self.instance_index.find_entry(hash, |&i| i == index) {
            entry.remove();
        }
        self.instances.remove(index);
        if let Some(s) = self.services.get_mut(service) {
            if pos < s.members.len() {
                s.members.swap_remove(pos);
                if let Some(&moved) = s.members.get(pos) {
                    if let Some(m) = self.instances.get_mut(moved) {
                        m.pos = pos as u32;
                    }
                }
            }
        }
        // Even a tombstone's purge changes what the node knows of the
        // service (`ServiceView::known`), so watchers hear of it.
        self.service_changed(service);
        self.drop_service_if_empty(service);
    }

    // ---- client operations ---------------------------------------------

    /// Registers an instance or updates the existing one. Counts as a beat.
    pub(crate) fn register(
        &mut self,
        now: Timestamp,
        req: RegisterRequest,
    ) -> Result<Registered, RequestError> {
        let weight = parse_weight(req.weight.unwrap_or(crate::model::DEFAULT_WEIGHT))?;
        let metadata = Metadata::parse(req.metadata, &self.limits.metadata())?;
        let lease = CompactLease::from(Lease::from_metadata(&metadata, &self.timings)?);
        let data = InstanceData {
            weight,
            healthy: req.healthy.unwrap_or(true),
            enabled: req.enabled.unwrap_or(true),
            ephemeral: req.ephemeral.unwrap_or(true),
            metadata,
        };
        let key = req.key;
        let service_hash = key.service.stable_hash();
        let hash = crate::model::instance_hash(service_hash, &key.cluster, &key.ip, key.port);
        let existing = self.find_instance_hashed(hash, &key);
        let created = match existing.and_then(|i| self.instances.get(i)).map(|e| e.live()) {
            Some(Some(current)) => {
                // Every acknowledged register takes a fresh version, even with
                // the same data: a deregistration in flight from another node
                // must not win over a register the client made after it.
                let same_version_bug = self.bugs.has(crate::bugs::Bug::SameVersionRegister);
                let changed = !same_version_bug || *current != data;
                let index = existing.unwrap_or_default();
                if changed {
                    let version = self.next_version(now);
                    self.set_instance_leased(
                        index,
                        version,
                        InstanceState::Live(data),
                        Some(lease),
                        now,
                        true,
                    );
                }
                self.witness(index, now);
                false
            }
            _ => {
                let service = self.find_service_hashed(service_hash, &key.service);
                let live = service.and_then(|s| self.services.get(s)).map_or(0, |s| s.live as usize);
                if live >= self.limits.max_instances_per_service {
                    return Err(RequestError::LimitExceeded {
                        what: "max_instances_per_service",
                        limit: self.limits.max_instances_per_service,
                    });
                }
                if existing.is_none() && self.instances.len() >= self.limits.max_instances {
                    return Err(RequestError::LimitExceeded {
                        what: "max_instances",
                        limit: self.limits.max_instances,
                    });
                }
                let version = self.next_version(now);
                let index = match existing {
                    Some(i) => i,
                    None => {
                        let service = self.service_entry_hashed(service_hash, &key.service)?;
                        self.insert_instance(service, &key, hash, version.clone(), now)?
                    }
                };
                self.witness(index, now);
                self.set_instance_leased(index, version, InstanceState::Live(data), Some(lease), now, true);
                true
            }
        };
        Ok(Registered { key, heartbeat_interval: lease.heartbeat_interval(), created })
    }

    fn witness(&mut self, index: u32, now: Timestamp) {
        if let Some(e) = self.instances.get_mut(index) {
            e.last_beat = now;
            e.witnessed = true;
        }
    }

    /// Removes an instance at a client's request.
    pub(crate) fn deregister(&mut self, now: Timestamp, key: &InstanceKey) -> Result<(), RequestError> {
        let index = self.live_instance(key)?;
        let version = self.next_version(now);
        let removed = InstanceState::Removed { cause: RemoveCause::Deregistered, at_ms: self.wall(now) };
        self.set_instance(index, version, removed, now, true);
        Ok(())
    }

    fn live_instance(&self, key: &InstanceKey) -> Result<u32, RequestError> {
        self.find_instance(key)
            .filter(|i| self.instances.get(*i).is_some_and(|e| e.live().is_some()))
            .ok_or_else(|| RequestError::InstanceNotFound(key.to_string()))
    }

    /// Changes weight, enabled, metadata, or (persistent only) health.
    pub(crate) fn update(
        &mut self,
        now: Timestamp,
        key: &InstanceKey,
        req: UpdateRequest,
    ) -> Result<(), RequestError> {
        let index = self.live_instance(key)?;
        let Some(mut data) = self.instances.get(index).and_then(|e| e.live()).cloned() else {
            return Err(RequestError::InstanceNotFound(key.to_string()));
        };
        if let Some(w) = req.weight {
            data.weight = parse_weight(w)?;
        }
        if let Some(en) = req.enabled {
            data.enabled = en;
        }
        if let Some(h) = req.healthy {
            if data.ephemeral && h != data.healthy {
                return Err(InvalidInput::new(
                    Field::Healthy,
                    "ephemeral instances take their health from heartbeats; only persistent ones accept it",
                )
                .into());
            }
            data.healthy = h;
        }
        if let Some(m) = req.metadata {
            data.metadata = Metadata::parse(m, &self.limits.metadata())?;
            Lease::from_metadata(&data.metadata, &self.timings)?;
        }
        let unchanged = self.instances.get(index).and_then(|e| e.live()) == Some(&data);
        if !unchanged {
            let version = self.next_version(now);
            self.set_instance(index, version, InstanceState::Live(data), now, true);
        }
        Ok(())
    }

    /// Takes a heartbeat from a client (`forwarded == false`) or forwarded by
    /// a peer that saw it `age` ago.
    pub(crate) fn heartbeat(
        &mut self,
        now: Timestamp,
        key: &InstanceKey,
        age: Duration,
        forwarded: bool,
    ) -> BeatOutcome {
        let hash = key.stable_hash();
        let Some(index) = self.find_instance_hashed(hash, key) else {
            self.stats.unknown_heartbeats += 1;
            return BeatOutcome::Unknown;
        };
        let Some(e) = self.instances.get_mut(index) else { return BeatOutcome::Unknown };
        let InstanceState::Live(data) = &e.state else {
            self.stats.unknown_heartbeats += 1;
            return BeatOutcome::Unknown;
        };
        e.last_beat = e.last_beat.max(now.saturating_sub(age));
        e.witnessed = true;
        self.stats.heartbeats += 1;
        let interval = e.lease.heartbeat_interval();
        let mine = self.responsibility.is_mine(hash);
        // A beat is evidence of life wherever it lands: an unhealthy mark
        // (this node's or the responsible node's) is lifted here at once.
        if data.ephemeral && !data.healthy && !self.bugs.has(crate::bugs::Bug::NoLift) {
            let mut data = data.clone();
            data.healthy = true;
            if let Some(version) = self.derived_version(index) {
                self.with_cause(ChangeCause::Heartbeat, |r| {
                    r.set_instance(index, version, InstanceState::Live(data), now, true);
                });
            }
        }
        let forward_to = if mine || forwarded { None } else { Some(self.responsibility.owner(hash).clone()) };
        BeatOutcome::Known { interval, forward_to }
    }

    /// The reply to a client for a beat outcome.
    pub(crate) fn beat_reply(outcome: &BeatOutcome) -> BeatReply {
        match outcome {
            BeatOutcome::Unknown => BeatReply::Unknown,
            BeatOutcome::Known { interval, .. } => BeatReply::Ok { heartbeat_interval: *interval },
        }
    }

    /// Answers a query of one service; an unknown service has no instances.
    pub(crate) fn query(&mut self, key: &ServiceKey, selector: &Selector) -> QueryAnswer {
        self.view(key).select(selector)
    }

    /// The current view of a service, rebuilt or patched if stale.
    pub(crate) fn view(&mut self, key: &ServiceKey) -> Arc<ServiceView> {
        match self.find_service(key) {
            Some(index) => self.refresh_view(index, key),
            None => Arc::new(ServiceView::empty(key.clone())),
        }
    }

    // ---- records for peers ---------------------------------------------

    /// The record behind a change reference, if it still exists.
    pub(crate) fn record(&self, r: RecordRef) -> Option<Record> {
        match r {
            RecordRef::Instance(h) => self.instances.resolve(h).and_then(|e| self.instance_record(e)),
            RecordRef::Service(h) => self.services.resolve(h).and_then(service_record),
        }
    }

    fn instance_record(&self, e: &InstanceEntry) -> Option<Record> {
        Some(Record::Instance {
            key: self.instance_key(e)?,
            version: e.version.clone(),
            state: e.state.clone(),
        })
    }

    /// A page of the full store from `cursor` (0 to start), at most `max`
    /// records, and the cursor of the next page (`None` at the end).
    /// Services come first (cursor values below 2^32), then instances.
    pub(crate) fn snapshot_page(&self, cursor: u64, max: usize) -> (Vec<Record>, Option<u64>) {
        let mut out = Vec::new();
        const SPLIT: u64 = 1 << 32;
        if cursor < SPLIT {
            for (i, s) in self.services.iter_from(cursor as u32) {
                if out.len() >= max {
                    return (out, Some(u64::from(i)));
                }
                out.extend(service_record(s));
            }
        }
        let start = cursor.saturating_sub(SPLIT) as u32;
        for (i, e) in self.instances.iter_from(start) {
            if out.len() >= max {
                return (out, Some(SPLIT + u64::from(i)));
            }
            out.extend(self.instance_record(e));
        }
        (out, None)
    }

    /// All records, services first (for tests and the simulator).
    pub(crate) fn all_records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self.services.iter().filter_map(|(_, s)| service_record(s)).collect();
        out.extend(self.instances.iter().filter_map(|(_, e)| self.instance_record(e)));
        out
    }

    /// Live instance keys with their data (for tests and the simulator).
    pub(crate) fn live_instances(&self) -> BTreeMap<InstanceKey, InstanceData> {
        self.instances.iter().filter_map(|(_, e)| Some((self.instance_key(e)?, e.live()?.clone()))).collect()
    }

    /// The current handle of an instance slot.
    pub(crate) fn handle_of(&self, index: u32) -> Option<Handle> {
        self.instances.handle(index)
    }

    /// The key of the instance behind a handle, if it is still there.
    pub(crate) fn key_of_handle(&self, h: Handle) -> Option<InstanceKey> {
        self.instances.resolve(h).and_then(|e| self.instance_key(e))
    }

    /// The slot of a live instance key.
    pub(crate) fn slot_of(&self, key: &InstanceKey) -> Option<u32> {
        self.find_instance(key)
    }

    /// Checks every structural invariant; panics with a description on the
    /// first broken one. O(n): for tests and the simulator.
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    #[allow(clippy::expect_used, clippy::panic)] // Panicking is this function's job.
    pub(crate) fn check_invariants(&self) {
        assert!(self.checks.len() <= self.limits.max_pending_checks, "pending checks bounded");
        self.check_indexes();
        self.check_counts_and_digest();
        self.check_timers();
        self.check_views();
    }

    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    #[allow(clippy::expect_used, clippy::panic)] // Panicking is this function's job.
    fn check_indexes(&self) {
        assert_eq!(self.instance_index.len(), self.instances.len(), "instance index size");
        assert_eq!(self.service_index.len(), self.services.len(), "service index size");
        for (i, e) in self.instances.iter() {
            let key = self.instance_key(e).expect("instance has a service");
            assert_eq!(key.stable_hash(), e.hash, "stored hash of {key}");
            assert_eq!(self.find_instance(&key), Some(i), "index finds {key}");
            let s = self.services.get(e.service).expect("service of instance");
            assert_eq!(s.members.get(e.pos as usize), Some(&i), "member position of {key}");
        }
        for (i, s) in self.services.iter() {
            assert_eq!(self.find_service(&s.key), Some(i), "index finds {}", s.key);
            assert!(!s.members.is_empty() || s.record.is_some(), "empty service {} kept", s.key);
            for &m in &s.members {
                assert_eq!(self.instances.get(m).map(|e| e.service), Some(i), "member of {}", s.key);
            }
        }
    }

    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    fn check_counts_and_digest(&self) {
        let mut digest = Digest::default();
        let mut totals = (0usize, 0usize, 0usize, 0usize);
        for (_, e) in self.instances.iter() {
            digest.toggle(e.hash, e.digest_hash());
            let f = flags(&e.state);
            totals.0 += usize::from(f.live);
            totals.1 += usize::from(f.live && f.healthy);
            totals.2 += usize::from(f.live && f.ephemeral);
            totals.3 += usize::from(!f.live);
        }
        for (_, s) in self.services.iter() {
            if let Some(r) = service_record(s) {
                digest.toggle(r.key_hash(), r.digest_hash());
            }
            let live = s
                .members
                .iter()
                .filter(|m| self.instances.get(**m).is_some_and(|e| e.live().is_some()))
                .count();
            assert_eq!(s.live as usize, live, "live count of {}", s.key);
            let healthy = s
                .members
                .iter()
                .filter(|m| self.instances.get(**m).and_then(|e| e.live()).is_some_and(|d| d.healthy))
                .count();
            assert_eq!(s.healthy as usize, healthy, "healthy count of {}", s.key);
        }
        let s = &self.stats;
        assert_eq!(
            (s.instances, s.healthy_instances, s.ephemeral_instances, s.tombstones),
            totals,
            "instance totals"
        );
        assert_eq!(digest, self.digest, "incremental digest equals recomputed digest");
    }

    /// A fresh view must equal a full rebuild: patching is exact.
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    fn check_views(&self) {
        for (_, s) in self.services.iter() {
            let Some(v) = s.view.as_ref().filter(|_| s.view_fresh) else { continue };
            let mut expected: Vec<(Name, Host, u16, u64)> = Vec::new();
            for &m in &s.members {
                let Some(e) = self.instances.get(m) else { continue };
                let Some(d) = e.live() else { continue };
                let iv = views::build_instance_view(e, d);
                expected.push((iv.cluster, iv.ip, iv.port, iv.content_hash));
            }
            expected.sort();
            let got: Vec<_> = v
                .instances
                .iter()
                .map(|i| (i.cluster.clone(), i.ip.clone(), i.port, i.content_hash))
                .collect();
            assert_eq!(got, expected, "view of {} equals a rebuild", s.key);
        }
    }

    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    fn check_timers(&self) {
        let mut expected = 0;
        for (i, e) in self.instances.iter() {
            let needs = match &e.state {
                InstanceState::Live(d) => d.ephemeral || e.lease.check() != crate::lease::CheckKind::None,
                InstanceState::Removed { .. } => true,
            };
            assert_eq!(e.timer.is_some(), needs, "timer presence of instance {i}");
            if let Some(t) = e.timer {
                assert!(self.timers.contains(&(t, TimerRef::Instance(i))), "timer entry of instance {i}");
                expected += 1;
            }
        }
        for (i, s) in self.services.iter() {
            let needs = matches!(s.record, Some(ServiceRecord { state: ServiceState::Removed { .. }, .. }));
            let t = s.record.as_ref().and_then(|r| r.timer);
            assert_eq!(t.is_some(), needs, "timer presence of service {}", s.key);
            if let Some(t) = t {
                assert!(self.timers.contains(&(t, TimerRef::Service(i))), "timer entry of service {i}");
                expected += 1;
            }
        }
        assert_eq!(self.timers.len(), expected, "no stray timer entries");
    }
}

fn service_record(s: &ServiceEntry) -> Option<Record> {
    let r = s.record.as_ref()?;
    Some(Record::Service { key: s.key.clone(), version: r.version.clone(), state: r.state.clone() })
}

#[derive(Clone, Copy, Debug, Default)]
struct Flags {
    live: bool,
    healthy: bool,
    ephemeral: bool,
}

fn flags(state: &InstanceState) -> Flags {
    match state {
        InstanceState::Live(d) => Flags { live: true, healthy: d.healthy, ephemeral: d.ephemeral },
        InstanceState::Removed { .. } => Flags::default(),
    }
}

#[cfg(test)]
mod tests;
