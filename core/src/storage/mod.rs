//! Storage: the registry's data and everything kept exact with it.
//!
//! It owns the instances and services ([`slab`]s of entries), the hash
//! indexes that find them by key, the timer set (one entry per ephemeral
//! instance, checked persistent instance and tombstone), the view cache
//! ([`views`]), the digest ([`digest`]) and what anti-entropy reads of the
//! store ([`repair`]), the change lists the node drains (local changes for
//! the Sync Manager, changed services for watchers) and the durable output
//! ([`durable`]). It decides nothing: when an instance expires, whether a
//! record wins, what version a write takes are the Service Manager's
//! (`crate::service_manager`). The single writers of record state,
//! [`Storage::write_instance`] and [`Storage::write_service`], keep counts,
//! digest, change lists, durable output and views exact in one place.
//!
//! Layout: instances and services live in [`Slab`]s; hash tables keyed by the
//! stable hash of the key map keys to slab indices (four bytes per entry, the
//! key is stored once, in the slab); a `BTreeSet<(Timestamp, TimerRef)>` holds
//! the timers. Heartbeats only write `last_beat`; a due timer recomputes the
//! real deadline and re-arms itself if the instance beat meanwhile (lazy
//! re-arming), so a heartbeat costs one hash lookup and the work of
//! `handle_timeout` is proportional to the timers that are due.

#[cfg(any(test, debug_assertions, feature = "invariants"))]
mod check;
pub(crate) mod digest;
pub(crate) mod durable;
pub(crate) mod repair;
pub(crate) mod slab;
mod timers;
pub(crate) mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::config::{Limits, Timings};
use crate::error::RequestError;
use crate::lease::{CompactLease, Lease};
use crate::model::{Host, InstanceData, InstanceKey, Name, ServiceKey};
use crate::record::{
    InstanceState, Record, RemoveCause, ServiceState, Version, digest_hash, instance_state_hash,
    service_record_hash, service_state_hash,
};
use crate::time::Timestamp;
use crate::view::{InstanceView, ServiceView};

use self::digest::Digest;
use self::durable::{DurableLog, DurableOp};
use self::slab::{Handle, Slab};

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
    pub(crate) service: u32,
    /// Position in the service's `members`.
    pub(crate) pos: u32,
    /// Stable hash of the instance key.
    pub(crate) hash: u64,
    pub(crate) cluster: Name,
    pub(crate) ip: Host,
    pub(crate) port: u16,
    pub(crate) version: Version,
    pub(crate) state: InstanceState,
    /// Latest evidence of life seen here, or when the record arrived.
    pub(crate) last_beat: Timestamp,
    /// Whether `last_beat` is evidence from a client (directly or forwarded).
    pub(crate) witnessed: bool,
    /// Start of this instance's own grace period: when this node last became
    /// responsible for it (its client's beats may have gone elsewhere).
    pub(crate) graced: Timestamp,
    /// This entry's timer, if any.
    pub(crate) timer: Option<Timestamp>,
    /// The lease, from the metadata when the state was set.
    pub(crate) lease: CompactLease,
    /// How queries show the instance, built on first use after a change.
    pub(crate) view: Option<Arc<InstanceView>>,
    /// Consecutive failed active checks (persistent instances).
    pub(crate) check_failures: u8,
}

impl InstanceEntry {
    pub(crate) fn live(&self) -> Option<&InstanceData> {
        match &self.state {
            InstanceState::Live(d) => Some(d),
            InstanceState::Removed { .. } => None,
        }
    }

    pub(crate) fn digest_hash(&self) -> u64 {
        digest_hash(self.hash, &self.version, instance_state_hash(&self.state))
    }

    /// Where the lease counts from: the latest beat, this instance's own
    /// grace, or the node-wide grace (start, pause), whichever is latest.
    pub(crate) fn lease_base(&self, grace_epoch: Timestamp) -> Timestamp {
        self.last_beat.max(self.graced).max(grace_epoch)
    }
}

#[derive(Debug)]
pub(crate) struct ServiceRecord {
    pub(crate) version: Version,
    pub(crate) state: ServiceState,
    pub(crate) timer: Option<Timestamp>,
}

#[derive(Debug)]
pub(crate) struct ServiceEntry {
    pub(crate) key: ServiceKey,
    /// Stable hash of the service key (the index hash).
    pub(crate) hash: u64,
    /// Explicit settings (or their tombstone); `None` for a service that
    /// exists only through its instances.
    pub(crate) record: Option<ServiceRecord>,
    /// Instance slots, live and tombstones.
    pub(crate) members: Vec<u32>,
    pub(crate) live: u32,
    pub(crate) healthy: u32,
    /// The last view built; it may be stale (see `view_fresh`).
    pub(crate) view: Option<Arc<ServiceView>>,
    /// Whether `view` shows the current state.
    pub(crate) view_fresh: bool,
    /// Instances changed since `view` was built, to patch it.
    pub(crate) view_changes: Vec<ViewChange>,
    /// Whether so much changed that patching would cost more than rebuilding.
    pub(crate) view_rebuild: bool,
}

/// An instance that changed since a service's view was built.
#[derive(Debug)]
pub(crate) struct ViewChange {
    pub(crate) slot: u32,
    pub(crate) cluster: Name,
    pub(crate) ip: Host,
    pub(crate) port: u16,
}

impl ServiceEntry {
    /// Whether clients see the service: explicit, or with live instances.
    pub(crate) fn visible(&self) -> bool {
        self.live > 0 || matches!(self.record, Some(ServiceRecord { state: ServiceState::Live(_), .. }))
    }

    pub(crate) fn explicit(&self) -> bool {
        matches!(self.record, Some(ServiceRecord { state: ServiceState::Live(_), .. }))
    }
}

/// Live and tombstone counts, kept exact by the writers (fields of
/// [`crate::RegistryStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) instances: usize,
    pub(crate) healthy_instances: usize,
    pub(crate) ephemeral_instances: usize,
    pub(crate) tombstones: usize,
}

/// The data of the registry, its indexes, timers, digest and outputs.
pub(crate) struct Storage {
    limits: Limits,
    /// The lease of an instance whose state is not set yet.
    default_lease: CompactLease,
    pub(crate) services: Slab<ServiceEntry>,
    service_index: HashTable<u32>,
    pub(crate) instances: Slab<InstanceEntry>,
    instance_index: HashTable<u32>,
    timers: BTreeSet<(Timestamp, TimerRef)>,
    digest: Digest,
    pub(crate) counts: Counts,
    /// Records changed by this node (to push to peers).
    local_changes: Vec<RecordRef>,
    /// Services whose visible content changed (to wake watchers).
    changed_services: BTreeSet<ServiceKey>,
    /// Record changes for the disk (see `durable.rs`).
    durable: DurableLog,
}

impl Storage {
    pub(crate) fn new(limits: Limits, timings: &Timings) -> Storage {
        Storage {
            limits,
            default_lease: CompactLease::from(Lease::defaults(timings)),
            services: Slab::default(),
            service_index: HashTable::new(),
            instances: Slab::default(),
            instance_index: HashTable::new(),
            timers: BTreeSet::new(),
            digest: Digest::default(),
            counts: Counts::default(),
            local_changes: Vec::new(),
            changed_services: BTreeSet::new(),
            durable: DurableLog::default(),
        }
    }

    /// The digest of every record held.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Services clients can see.
    pub(crate) fn visible_services(&self) -> usize {
        self.services.iter().filter(|(_, s)| s.visible()).count()
    }

    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    pub(crate) fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// The record of an instance key, live or tombstone.
    pub(crate) fn instance_record_of(&self, key: &InstanceKey) -> Option<Record> {
        self.find_instance(key).and_then(|i| self.instances.get(i)).and_then(|e| self.instance_record(e))
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

    // ---- lookups -------------------------------------------------------

    pub(crate) fn find_service(&self, key: &ServiceKey) -> Option<u32> {
        self.find_service_hashed(key.stable_hash(), key)
    }

    pub(crate) fn find_service_hashed(&self, hash: u64, key: &ServiceKey) -> Option<u32> {
        let services = &self.services;
        self.service_index
            .find(hash, |&i| services.get(i).is_some_and(|s| s.hash == hash && s.key == *key))
            .copied()
    }

    pub(crate) fn find_instance(&self, key: &InstanceKey) -> Option<u32> {
        self.find_instance_hashed(key.stable_hash(), key)
    }

    pub(crate) fn find_instance_hashed(&self, hash: u64, key: &InstanceKey) -> Option<u32> {
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

    pub(crate) fn instance_key(&self, e: &InstanceEntry) -> Option<InstanceKey> {
        let service = self.services.get(e.service)?.key.clone();
        Some(InstanceKey { service, cluster: e.cluster.clone(), ip: e.ip.clone(), port: e.port })
    }

    /// The service entry for `key`, created (implicit) if absent.
    pub(crate) fn service_entry(&mut self, key: &ServiceKey) -> Result<u32, RequestError> {
        self.service_entry_hashed(key.stable_hash(), key)
    }

    /// Like `service_entry`, with the key's stable hash already computed.
    pub(crate) fn service_entry_hashed(&mut self, hash: u64, key: &ServiceKey) -> Result<u32, RequestError> {
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

    /// Sets an instance's version, state and (if given) lease, keeping
    /// counts, digest, the view cache, the change lists and the durable
    /// output exact. The single writer of instance state; the caller then
    /// re-arms its timer. Returns the instance's flags before and after.
    pub(crate) fn write_instance(
        &mut self,
        index: u32,
        version: Version,
        state: InstanceState,
        lease: Option<CompactLease>,
        local: bool,
    ) -> Option<(Flags, Flags)> {
        let e = self.instances.get_mut(index)?;
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
        if let Some(h) = self.instances.handle(index) {
            self.durable.push(DurableOp::Put(RecordRef::Instance(h)));
            if local {
                self.local_changes.push(RecordRef::Instance(h));
            }
        }
        if old.live || new.live {
            self.instance_view_changed(service, index);
        }
        Some((old, new))
    }

    /// Sets a service's explicit record, keeping digest, timer, change
    /// lists and durable output exact; `purge_at` is when a tombstone is
    /// purged (`None` for live settings). The single writer of service
    /// records.
    pub(crate) fn write_service(
        &mut self,
        index: u32,
        version: Version,
        state: ServiceState,
        purge_at: Option<Timestamp>,
        local: bool,
    ) {
        let Some(s) = self.services.get_mut(index) else { return };
        let key_hash = service_record_hash(&s.key);
        if let Some(old) = &s.record {
            let h = digest_hash(key_hash, &old.version, service_state_hash(&old.state));
            self.digest.toggle(key_hash, h);
        }
        self.digest.toggle(key_hash, digest_hash(key_hash, &version, service_state_hash(&state)));
        let timer = s.record.as_ref().and_then(|r| r.timer);
        s.record = Some(ServiceRecord { version, state, timer });
        match purge_at {
            Some(at) => self.arm_service(index, at),
            None => self.disarm_service(index),
        }
        if let Some(h) = self.services.handle(index) {
            self.durable.push(DurableOp::Put(RecordRef::Service(h)));
            if local {
                self.local_changes.push(RecordRef::Service(h));
            }
        }
        self.service_changed(index);
    }

    /// Removes a purged service tombstone, and the service if nothing is
    /// left. Returns whether there was a record to remove.
    pub(crate) fn purge_service_record(&mut self, index: u32) -> bool {
        self.disarm_service(index);
        let Some(s) = self.services.get_mut(index) else { return false };
        let Some(old) = s.record.take() else { return false };
        self.durable.push(DurableOp::Delete(crate::durable::RecordKey::Service(s.key.clone())));
        let key_hash = service_record_hash(&s.key);
        self.digest.toggle(key_hash, digest_hash(key_hash, &old.version, service_state_hash(&old.state)));
        self.service_changed(index);
        self.drop_service_if_empty(index);
        true
    }

    /// Removes a service entry that holds nothing any more.
    pub(crate) fn drop_service_if_empty(&mut self, index: u32) {
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
    pub(crate) fn insert_instance(
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
            lease: self.default_lease,
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
        self.counts.tombstones += 1;
        Ok(handle.index)
    }

    pub(crate) fn account(&mut self, service: u32, f: Flags, sign: i64) {
        let add = |v: &mut usize, on: bool| {
            if on {
                *v = v.saturating_add_signed(sign as isize);
            }
        };
        add(&mut self.counts.instances, f.live);
        add(&mut self.counts.healthy_instances, f.live && f.healthy);
        add(&mut self.counts.ephemeral_instances, f.live && f.ephemeral);
        add(&mut self.counts.tombstones, !f.live);
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
    pub(crate) fn service_changed(&mut self, service: u32) {
        if let Some(s) = self.services.get_mut(service) {
            s.view_fresh = false;
            if !self.changed_services.contains(&s.key) {
                self.changed_services.insert(s.key.clone());
            }
        }
    }

    /// A live instance of the service appeared, changed or went.
    pub(crate) fn instance_view_changed(&mut self, service: u32, index: u32) {
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
    pub(crate) fn purge_instance(&mut self, index: u32) {
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

    pub(crate) fn instance_record(&self, e: &InstanceEntry) -> Option<Record> {
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
}

/// The record of a service's explicit settings, if it has any.
pub(crate) fn service_record(s: &ServiceEntry) -> Option<Record> {
    let r = s.record.as_ref()?;
    Some(Record::Service { key: s.key.clone(), version: r.version.clone(), state: r.state.clone() })
}

/// What an instance state counts as.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flags {
    pub(crate) live: bool,
    pub(crate) healthy: bool,
    pub(crate) ephemeral: bool,
}

pub(crate) fn flags(state: &InstanceState) -> Flags {
    match state {
        InstanceState::Live(d) => Flags { live: true, healthy: d.healthy, ephemeral: d.ephemeral },
        InstanceState::Removed { .. } => Flags::default(),
    }
}

#[cfg(test)]
mod tests;
