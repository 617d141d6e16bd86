//! The Service Manager: the registry's operations and decisions.
//!
//! It owns what the registry decides: the client operations (register,
//! deregister, update, heartbeat, query, services; [`services`]), leases and
//! expiry ([`expiry`]), the expiry brake ([`brake`]), active health checks
//! ([`health`]), the merge of peers' records with refutation ([`merge`]),
//! the load of the node's stored records ([`load`]), versions (the hybrid
//! clock), responsibility and grace, and the instance history. The data it
//! decides about lives in its [`Storage`] (`crate::storage`), which it owns
//! as the only writer; the node reads the Storage and drains its outputs
//! through [`ServiceManager::store`] and [`ServiceManager::store_mut`].

mod brake;
mod expiry;
mod health;
mod load;
mod merge;
mod services;
mod tombstones;

pub(crate) use self::merge::MergeOutcome;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::{BrakeConfig, Limits, Timings};
use crate::error::{Field, InvalidInput, RequestError};
use crate::history::{ChangeCause, ChangeKind, InstanceChange, classify, merged_cause};
use crate::lease::{CompactLease, Lease};
use crate::model::{InstanceData, InstanceKey, Metadata, NodeId, ServiceKey, parse_weight};
use crate::record::{Hlc, InstanceState, Record, RemoveCause, Version};
use crate::request::{BeatReply, RegisterRequest, Registered, UpdateRequest};
use crate::responsibility::Responsibility;
use crate::storage::Storage;
use crate::storage::repair::Unit;
use crate::time::Timestamp;
use crate::view::{QueryAnswer, Selector};

use self::brake::Brake;

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
    /// Records from peers refused as possible purged deletions (answered
    /// with a tombstone; see `agreement.rs`).
    pub refused_stale: u64,
    /// Tombstones evicted before every peer was known to hold them (held
    /// past `tombstone_max_hold`, or over `max_tombstones`).
    pub forced_purges: u64,
}

/// How a heartbeat was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BeatOutcome {
    Unknown,
    Known { interval: Duration, forward_to: Option<NodeId> },
}

/// Operations, leases, expiry, the brake, health checks and merge, over the
/// [`Storage`] it owns.
pub(crate) struct ServiceManager {
    me: NodeId,
    wall_clock_ms: u64,
    hlc: Hlc,
    timings: Timings,
    limits: Limits,
    store: Storage,
    brake: Brake,
    responsibility: Responsibility,
    grace_epoch: Timestamp,
    /// Operation counters (the Storage keeps the counts).
    stats: RegistryStats,
    /// Active health checks for the driver.
    checks: std::collections::VecDeque<crate::health::HealthCheck>,
    /// Deliberate bugs for the simulator (always none without `sim`).
    pub(crate) bugs: crate::bugs::Bugs,
    /// Instance changes for the history; `None` while nobody asked for them.
    history: Option<Vec<InstanceChange>>,
    /// Why the registry is writing instance state now (see `history.rs`).
    cause: ChangeCause,
    /// Digest agreement with each peer and the purge horizons.
    agreement: crate::agreement::Agreement,
}

impl ServiceManager {
    pub(crate) fn new(
        me: NodeId,
        wall_clock_ms: u64,
        timings: Timings,
        limits: Limits,
        brake: BrakeConfig,
    ) -> ServiceManager {
        let me_for_agreement = me.clone();
        ServiceManager {
            store: Storage::new(limits.clone(), &timings),
            responsibility: Responsibility::alone(me.clone()),
            me,
            wall_clock_ms,
            hlc: Hlc::new(),
            timings,
            limits,
            brake: Brake::new(brake),
            grace_epoch: Timestamp::ZERO,
            stats: RegistryStats::default(),
            checks: std::collections::VecDeque::new(),
            bugs: crate::bugs::Bugs::default(),
            history: None,
            cause: ChangeCause::Client,
            agreement: crate::agreement::Agreement::new(me_for_agreement, &[]),
        }
    }

    /// The configured peers, whose agreement a tombstone's purge waits for.
    pub(crate) fn set_peers(&mut self, peers: &[NodeId]) {
        self.agreement = crate::agreement::Agreement::new(self.me.clone(), peers);
    }

    // ---- getters -------------------------------------------------------

    pub(crate) fn stats(&self) -> RegistryStats {
        let c = self.store.counts;
        RegistryStats {
            services: self.store.visible_services(),
            instances: c.instances,
            healthy_instances: c.healthy_instances,
            ephemeral_instances: c.ephemeral_instances,
            tombstones: c.tombstones,
            ..self.stats
        }
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

    /// Turns instance-change records for the history on or off.
    pub(crate) fn set_history(&mut self, on: bool) {
        self.history = on.then(Vec::new);
    }

    /// The instance changes since the last call (empty while off).
    pub(crate) fn take_history(&mut self) -> Vec<InstanceChange> {
        self.history.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Runs `f` with `cause` as the cause of the instance writes it makes.
    fn with_cause<T>(&mut self, cause: ChangeCause, f: impl FnOnce(&mut ServiceManager) -> T) -> T {
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
        let Some(key) = self.store.instances.get(index).and_then(|e| self.store.instance_key(e)) else {
            return;
        };
        if let Some(h) = self.history.as_mut() {
            h.push(InstanceChange { at: now, key, kind, cause, origin });
        }
    }

    // ---- configuration from the node -----------------------------------

    /// The Storage, for reads.
    pub(crate) fn store(&self) -> &Storage {
        &self.store
    }

    /// The Storage, for draining its outputs (local changes, changed
    /// services, durable writes) and refreshing its view cache.
    pub(crate) fn store_mut(&mut self) -> &mut Storage {
        &mut self.store
    }

    /// The records of whole `units`, as many as fit in `max` (see
    /// [`Storage::records_in_units`]), with the simulator's
    /// `anti-entropy-prefix` bug applied when injected.
    pub(crate) fn records_in_units(
        &self,
        unit: Unit,
        units: &BTreeSet<u16>,
        max: usize,
    ) -> (Vec<u16>, Vec<Record>) {
        let prefix_bug = self.bugs.has(crate::bugs::Bug::AntiEntropyPrefix);
        self.store.records_in_units(unit, units, max, prefix_bug)
    }

    /// Removes an instance slot entirely (tombstone purge), and its brake
    /// hold.
    fn purge_instance(&mut self, index: u32) {
        if self.store.instances.get(index).is_some() {
            self.brake.release(index);
        }
        self.store.purge_instance(index);
    }

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
        for (i, e) in self.store.instances.iter() {
            let ephemeral = e.live().is_some_and(|d| d.ephemeral);
            if ephemeral && self.responsibility.is_mine(e.hash) && !old.is_mine(e.hash) {
                inherited.push(i);
            }
        }
        for i in inherited {
            if let Some(e) = self.store.instances.get_mut(i) {
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
        let v = self.store.instances.get(index)?.version.clone();
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

    /// Sets an instance's version and state through the Storage's writer,
    /// then its brake hold and timer. Every instance write goes through here.
    fn set_instance(
        &mut self,
        index: u32,
        version: Version,
        state: InstanceState,
        now: Timestamp,
        local: bool,
    ) {
        let unchanged_metadata = |e: &crate::storage::InstanceEntry, new: &Metadata| {
            e.live().is_some_and(|old| old.metadata.same_storage(new))
        };
        let lease = match &state {
            InstanceState::Live(d) => match self.store.instances.get(index) {
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
            if let Some(kind) = self.store.instances.get(index).and_then(|e| classify(Some(&e.state), &state))
            {
                let cause = if local { self.cause } else { merged_cause(version.author(), &state) };
                self.note(now, index, kind, cause, version.writer().clone());
            }
        }
        let Some((_, new)) = self.store.write_instance(index, version, state, lease, local) else { return };
        if !new.live {
            // A tombstone's `last_beat` is when its version arrived here: the
            // purge waits for every peer's agreement after it (agreement.rs).
            if let Some(e) = self.store.instances.get_mut(index) {
                e.last_beat = now;
            }
        }
        if !new.live || new.healthy {
            self.brake.release(index);
        }
        self.schedule_instance(index, now);
    }

    // ---- client operations ---------------------------------------------

    /// Registers an instance or updates the existing one. Counts as a beat.
    pub(crate) fn register(
        &mut self,
        now: Timestamp,
        req: RegisterRequest,
    ) -> Result<Registered, RequestError> {
        req.check_health()?;
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
        let existing = self.store.find_instance_hashed(hash, &key);
        let created = match existing.and_then(|i| self.store.instances.get(i)).map(|e| e.live()) {
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
                let service = self.store.find_service_hashed(service_hash, &key.service);
                let live = service.and_then(|s| self.store.services.get(s)).map_or(0, |s| s.live as usize);
                if live >= self.limits.max_instances_per_service {
                    return Err(RequestError::LimitExceeded {
                        what: "max_instances_per_service",
                        limit: self.limits.max_instances_per_service,
                    });
                }
                if self.store.counts.instances >= self.limits.max_instances {
                    return Err(RequestError::LimitExceeded {
                        what: "max_instances",
                        limit: self.limits.max_instances,
                    });
                }
                let version = self.next_version(now);
                let index = match existing {
                    Some(i) => i,
                    None => {
                        let service = self.store.service_entry_hashed(service_hash, &key.service)?;
                        self.make_room(now);
                        self.store.insert_instance(service, &key, hash, version.clone(), now)?
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
        if let Some(e) = self.store.instances.get_mut(index) {
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
        self.store
            .find_instance(key)
            .filter(|i| self.store.instances.get(*i).is_some_and(|e| e.live().is_some()))
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
        let Some(mut data) = self.store.instances.get(index).and_then(|e| e.live()).cloned() else {
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
                return Err(InvalidInput::new(Field::Healthy, crate::request::EPHEMERAL_HEALTH).into());
            }
            data.healthy = h;
        }
        if let Some(m) = req.metadata {
            data.metadata = Metadata::parse(m, &self.limits.metadata())?;
            Lease::from_metadata(&data.metadata, &self.timings)?;
        }
        let unchanged = self.store.instances.get(index).and_then(|e| e.live()) == Some(&data);
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
        let Some(index) = self.store.find_instance_hashed(hash, key) else {
            self.stats.unknown_heartbeats += 1;
            return BeatOutcome::Unknown;
        };
        let Some(e) = self.store.instances.get_mut(index) else { return BeatOutcome::Unknown };
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

    /// Whether the live record held for `key` predates a register made with
    /// ordering token `after` (its version counter is not above it): that
    /// register, which took a version above `after` wherever it landed, has
    /// not reached this node, or was lost with the node that took it.
    pub(crate) fn live_predates(&self, key: &InstanceKey, after: u64) -> bool {
        let Some(index) = self.store.find_instance(key) else { return false };
        self.store.instances.get(index).is_some_and(|e| e.live().is_some() && e.version.counter <= after)
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
        self.store.view(key).select(selector)
    }

    /// Checks every structural invariant; panics with a description on the
    /// first broken one. O(n): for tests and the simulator.
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    #[allow(clippy::expect_used, clippy::panic)] // Panicking is this function's job.
    pub(crate) fn check_invariants(&self) {
        assert!(self.checks.len() <= self.limits.max_pending_checks, "pending checks bounded");
        assert!(self.brake.consistent(), "the brake is engaged exactly while it holds instances");
        self.store.check_invariants();
        self.check_timer_needs();
    }

    /// Every ephemeral instance, checked persistent instance and tombstone
    /// has a timer; nothing else has one.
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    #[allow(clippy::panic)] // Panicking is this function's job.
    fn check_timer_needs(&self) {
        for (i, e) in self.store.instances.iter() {
            let needs = match &e.state {
                InstanceState::Live(d) => d.ephemeral || e.lease.check() != crate::lease::CheckKind::None,
                InstanceState::Removed { .. } => true,
            };
            assert_eq!(e.timer.is_some(), needs, "timer presence of instance {i}");
        }
        for (_, s) in self.store.services.iter() {
            let needs = matches!(&s.record, Some(r) if matches!(r.state, crate::record::ServiceState::Removed { .. }));
            let has = s.record.as_ref().is_some_and(|r| r.timer.is_some());
            assert_eq!(has, needs, "timer presence of service {}", s.key);
        }
    }
}
