//! [`Node`]: one registry node as a state machine.
//!
//! A node owns the seed's four managers: the registry (the Service Manager,
//! `crate::service_manager`, with its Storage, `crate::storage`), the
//! membership (the Server Node Manager, `crate::server_nodes`) and the Sync
//! Manager (`crate::sync`). It feeds them every input, drains them after it,
//! translates one manager's output into another's input, and exposes the
//! outputs through `poll_*`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::Config;
use crate::error::{ConfigError, Field, InvalidInput, MessageError, RequestError};
use crate::history::InstanceChange;
use crate::membership::{MemberView, Membership, PeerState, Transition};
use crate::message::PeerMessage;
use crate::model::{InstanceKey, NodeId, ServiceKey};
use crate::record::Record;
use crate::request::{BeatReply, RegisterRequest, Registered, Reply, Request, ServiceUpdate, UpdateRequest};
use crate::service_manager::{BeatOutcome, RegistryStats, ServiceManager};
use crate::storage::digest::{BUCKETS, Digest};
use crate::sync::SyncManager;
use crate::time::{Clock, Timestamp};
use crate::view::{
    NamespaceSummary, QueryAnswer, Selector, ServiceFilter, ServicePage, ServiceSummary, ServiceView,
};

/// A message for a peer, produced by [`Node::poll_transmit`].
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// The peer.
    pub to: NodeId,
    /// The message.
    pub msg: PeerMessage,
}

/// Something the driver should know about, produced by [`Node::poll_event`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The instances of a service changed (locally or by sync): wake its
    /// watchers. Coalesced: one event per service per drain.
    ServiceChanged(ServiceKey),
    /// A peer changed state.
    PeerStateChanged(Transition),
    /// The node loaded the registry (or gave up waiting) and accepts writes.
    Ready {
        /// The peer it loaded from; `None` when it started alone.
        loaded_from: Option<NodeId>,
    },
    /// The expiry brake engaged: removals are held back.
    BrakeEngaged {
        /// Instances held back.
        held: usize,
    },
    /// The expiry brake released.
    BrakeReleased,
    /// The node's clock jumped between two ticks (a stall, a suspended VM):
    /// instances and peers got a fresh grace period.
    PauseDetected {
        /// The gap between the two ticks.
        gap: Duration,
    },
    /// An instance changed on this node, with its cause; only after
    /// [`Node::set_instance_events`] turned these on. They never push other
    /// events out of a full queue: past it they are dropped and counted in
    /// [`NodeStats::instance_events_dropped`].
    InstanceChanged(InstanceChange),
    /// A peer's measured clock offset crossed `max_clock_skew` (beyond its
    /// uncertainty), or came back within it. While skewed, its records
    /// further ahead of this node's clock than the bound are refused.
    PeerClock {
        /// The peer.
        peer: NodeId,
        /// Its clock offset estimate.
        offset: crate::ordering::ClockOffset,
        /// Whether it is now flagged skewed.
        skewed: bool,
    },
    /// The queue of local changes for peers overflowed and was dropped;
    /// anti-entropy repairs the difference.
    SyncQueueOverflow {
        /// Changes dropped.
        dropped: usize,
    },
}

/// The node's timers, for [`Node::poll_timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Housekeeping: pings, peer states, pause detection.
    Tick,
    /// Flush of local changes and forwarded heartbeats.
    Flush,
    /// Anti-entropy round.
    AntiEntropy,
    /// A starting node's snapshot retry or give-up.
    Startup,
    /// An instance lease or a tombstone is due.
    Expiry,
}

/// Counters for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Service Manager and Storage counters.
    pub registry: RegistryStats,
    /// Times a peer's clock skew flag changed (see [`Event::PeerClock`]).
    pub clock_flag_changes: u64,
    /// Peer messages handled.
    pub messages_in: u64,
    /// Peer messages produced.
    pub messages_out: u64,
    /// Peer messages refused.
    pub messages_refused: u64,
    /// Records sent in deltas.
    pub delta_records_out: u64,
    /// Anti-entropy rounds started.
    pub anti_entropy_rounds: u64,
    /// Anti-entropy exchanges that found differing buckets.
    pub anti_entropy_repairs: u64,
    /// Anti-entropy rounds started at once after an exchange cut short by
    /// the page size (`max_follow_up_rounds`).
    pub anti_entropy_follow_ups: u64,
    /// Heartbeats forwarded to responsible peers.
    pub beats_forwarded: u64,
    /// Outgoing messages dropped because the queue was full.
    pub transmits_dropped: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Local changes dropped because the sync queue overflowed.
    pub changes_dropped: u64,
    /// Local changes waiting to be flushed.
    pub pending_changes: usize,
    /// Pauses detected.
    pub pauses: u64,
    /// Heartbeats not forwarded because the queue for their peer was full.
    pub beats_dropped: u64,
    /// Client heartbeats answered `Unknown` because the record held predates
    /// the client's latest register ([`Node::heartbeat_after`]).
    pub stale_beats: u64,
    /// [`Event::InstanceChanged`] events dropped because the queue was full.
    pub instance_events_dropped: u64,
}

/// The last digest root a peer sent this node (anti-entropy), for the
/// cluster view: whether the two registries agreed then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerDigest {
    /// When it arrived.
    pub at: Timestamp,
    /// The peer's root.
    pub root: u64,
    /// Whether it equalled this node's root when it arrived.
    pub matched: bool,
}

/// One registry node.
///
/// # Run loop
/// 1. Build with [`Node::new`].
/// 2. Feed inputs: client operations (`register`, `heartbeat`, `query`, ...),
///    [`Node::handle_message`] for peer messages, [`Node::handle_timeout`]
///    when [`Node::poll_timeout`] says so. `now` comes first in each and may
///    not go backwards (it is clamped if it does).
/// 3. After every input, drain in this order: [`Node::poll_transmit`] until
///    `None` (send each to its peer), [`Node::poll_event`] until `None`, then
///    [`Node::poll_timeout`] to re-arm the one timer.
pub struct Node {
    config: Config,
    clock: Clock,
    registry: ServiceManager,
    members: Membership,
    sync: SyncManager,
    tick_at: Timestamp,
    last_tick: Timestamp,
    brake_engaged: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: NodeStats,
    /// Peers whose last answer refused this node as not one of theirs.
    refused_by: BTreeSet<NodeId>,
}

impl Node {
    /// A node starting at `now`. With peers it starts loading the registry
    /// from them and refuses writes until [`Node::is_ready`]; alone it is
    /// ready at once.
    pub fn new(config: Config, now: Timestamp) -> Result<Node, ConfigError> {
        config.validate()?;
        let members = Membership::new(config.node_id.clone(), &config.peers, &config.timings, now);
        let mut registry = ServiceManager::new(
            config.node_id.clone(),
            config.wall_clock_ms,
            config.timings.clone(),
            config.limits.clone(),
            config.brake.clone(),
        );
        registry.set_responsibility(members.responsibility());
        registry.set_peers(&config.peers);
        registry.grant_grace(now);
        let sync = SyncManager::new(&config, now);
        let mut node = Node {
            clock: Clock::default(),
            registry,
            members,
            sync,
            tick_at: now,
            last_tick: now,
            brake_engaged: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
            refused_by: BTreeSet::new(),
            config,
        };
        node.clock.observe(now);
        node.drain_sync();
        Ok(node)
    }

    // ---- getters -------------------------------------------------------

    /// The last digest root `peer` sent, and whether it matched this node's
    /// then; `None` before its first anti-entropy round.
    pub fn peer_digest(&self, peer: &NodeId) -> Option<PeerDigest> {
        self.sync.peer_digest(peer)
    }

    /// When this node last had evidence of life of a live instance (a beat,
    /// its registration, or its arrival from a peer); `None` if not live.
    pub fn last_beat(&self, key: &InstanceKey) -> Option<Timestamp> {
        self.registry.store().last_beat(key)
    }

    /// Live instances on host `ip` (and `port`, if given) in every
    /// namespace and service, at most `max`. Scans every instance.
    pub fn instances_on(&self, ip: &crate::model::Host, port: Option<u16>, max: usize) -> Vec<InstanceKey> {
        self.registry.store().instances_on(ip, port, max)
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.config.node_id
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the node has loaded the registry and accepts writes.
    pub fn is_ready(&self) -> bool {
        self.sync.is_ready() && !self.refused_everywhere()
    }

    /// Whether every peer refuses this node as not one of its peers (its
    /// `--advertise` is missing from their `--peers`): the node would form a
    /// cluster of its own, so it stays not ready (issue 9, 6).
    fn refused_everywhere(&self) -> bool {
        !self.config.peers.is_empty() && self.refused_by.len() >= self.config.peers.len()
    }

    /// A peer answered that this node is not one of its peers (`refused`), or
    /// accepted it again. While every peer refuses it, the node is not ready
    /// and refuses client requests. Returns whether anything changed.
    pub fn handle_membership_refusal(&mut self, now: Timestamp, peer: &NodeId, refused: bool) -> bool {
        self.clock.observe(now);
        if !self.config.peers.contains(peer) {
            return false;
        }
        if refused { self.refused_by.insert(peer.clone()) } else { self.refused_by.remove(peer) }
    }

    /// Every member of the cluster as this node sees it, itself first.
    pub fn members(&self) -> Vec<MemberView> {
        self.members.view()
    }

    /// A peer's state; `None` for non-members.
    pub fn peer_state(&self, id: &NodeId) -> Option<PeerState> {
        self.members.state(id)
    }

    /// The node responsible for expiring an instance, as this node sees it.
    pub fn responsible_for(&self, key: &InstanceKey) -> NodeId {
        self.registry.responsibility().owner(key.stable_hash()).clone()
    }

    /// The store digest: equal on nodes that hold the same records.
    pub fn digest(&self) -> &Digest {
        self.registry.store().digest()
    }

    /// The latest hybrid-clock counter issued or observed.
    pub fn version_counter(&self) -> u64 {
        self.registry.hlc_counter()
    }

    /// The greatest version counter of a tombstone this node evicted before
    /// every peer was known to hold it (0 if none): live records at or below
    /// it for keys it does not hold are refused (see docs/architecture.md,
    /// "No resurrection").
    pub fn forced_horizon(&self) -> u64 {
        self.registry.forced_horizon()
    }

    /// Whether the expiry brake is engaged.
    pub fn brake_engaged(&self) -> bool {
        self.registry.brake_engaged()
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        let sync = self.sync.stats();
        NodeStats {
            registry: self.registry.stats(),
            pending_changes: self.sync.pending_len(),
            delta_records_out: sync.delta_records_out,
            anti_entropy_rounds: sync.anti_entropy_rounds,
            anti_entropy_repairs: sync.anti_entropy_repairs,
            anti_entropy_follow_ups: sync.anti_entropy_follow_ups,
            beats_forwarded: sync.beats_forwarded,
            changes_dropped: sync.changes_dropped,
            beats_dropped: sync.beats_dropped,
            ..self.stats
        }
    }

    /// Events dropped because their queue was full (cheap; `stats` is not).
    pub fn events_dropped(&self) -> u64 {
        self.stats.events_dropped
    }

    /// Every record held, tombstones included (tests, simulator, debugging).
    pub fn records(&self) -> Vec<Record> {
        self.registry.store().all_records()
    }

    /// The record of one instance, live or tombstone.
    pub fn instance_record(&self, key: &InstanceKey) -> Option<Record> {
        self.registry.store().instance_record_of(key)
    }

    /// Injects a deliberate bug (simulator only): from now on merge keeps the
    /// older of two records. The simulator must catch it.
    #[cfg(feature = "sim")]
    #[doc(hidden)]
    pub fn inject_bug_keep_older_on_merge(&mut self) {
        self.inject_bug(crate::bugs::Bug::KeepOlderOnMerge);
    }

    /// Injects a deliberate bug (simulator only). The simulator must catch it.
    #[cfg(feature = "sim")]
    #[doc(hidden)]
    pub fn inject_bug(&mut self, bug: crate::bugs::Bug) {
        self.registry.bugs.add(bug);
    }

    /// Every live instance with its data (tests, simulator, debugging).
    pub fn live_instances(&self) -> BTreeMap<InstanceKey, crate::model::InstanceData> {
        self.registry.store().live_instances()
    }

    /// Checks every structural invariant and every bound; panics with a
    /// description of the first broken one. O(n).
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    pub fn check_invariants(&self) {
        self.registry.check_invariants();
        self.sync.check_invariants();
        let clock = self.clock_behind_records();
        assert!(clock.is_none(), "{}", clock.unwrap_or_default());
        let l = &self.config.limits;
        assert!(self.transmits.len() <= l.max_queued_transmits, "transmit queue bounded");
        assert!(self.events.len() <= l.max_queued_events, "event queue bounded");
        assert!(
            self.registry.store().instance_count() <= l.max_instances + l.max_tombstones,
            "instances bounded"
        );
        assert!(self.registry.stats().tombstones <= l.max_tombstones, "tombstones bounded");
    }

    // ---- client operations ---------------------------------------------

    /// Runs any client operation given as a value (for drivers that queue
    /// requests); the same as calling the matching method.
    pub fn handle_request(&mut self, now: Timestamp, req: Request) -> Result<Reply, RequestError> {
        Ok(match req {
            Request::Register(r) => Reply::Registered(self.register(now, r)?),
            Request::Deregister(k) => self.deregister(now, &k).map(|()| Reply::Done)?,
            Request::Update(k, u) => self.update_instance(now, &k, u).map(|()| Reply::Done)?,
            Request::Heartbeat(k) => Reply::Beat(self.heartbeat(now, &k)?),
            Request::HeartbeatBatch(ks) => Reply::Beats(self.heartbeat_batch(now, &ks)?),
            Request::Query(k, s) => Reply::Answer(self.query(now, &k, &s)?),
            Request::ListServices(f) => Reply::Services(self.list_services(&f)?),
            Request::GetService(k) => Reply::Service(self.service(&k)?),
            Request::CreateService(k, u) => Reply::Service(self.create_service(now, &k, u)?),
            Request::UpdateService(k, u) => Reply::Service(self.update_service(now, &k, u)?),
            Request::PutService(k, u) => Reply::Service(self.put_service(now, &k, u)?),
            Request::DeleteService(k) => self.delete_service(now, &k).map(|()| Reply::Done)?,
            Request::Namespaces => Reply::Namespaces(self.namespaces()),
            Request::Ordered { after, request } => {
                self.observe_client(now, after)?;
                let reply = self.handle_request(now, *request)?;
                Reply::Ordered { counter: self.version_counter(), reply: Box::new(reply) }
            }
        })
    }

    /// Takes a client's ordering token: the highest version counter the
    /// client has seen from any node (0 for none). The node's clock observes
    /// it, so the client's next write here gets a version above every write
    /// it made before, on any node, whatever the skew between them: one
    /// client's writes keep their order across failover. A token further
    /// ahead of this node's clock than `max_clock_skew` is refused (it would
    /// drag the clock, and every version after it, into the future); nothing
    /// was changed.
    pub fn observe_client(&mut self, now: Timestamp, after: u64) -> Result<(), RequestError> {
        crate::ordering::check_token(self.registry.wall_ms(now), self.config.timings.max_clock_skew, after)?;
        if !self.registry.bugs.has(crate::bugs::Bug::NoAfterToken) {
            self.registry.observe(after);
        }
        Ok(())
    }

    /// Runs a write on the registry: clamps time, refuses while loading,
    /// then drains what the registry produced.
    fn write<T>(
        &mut self,
        now: Timestamp,
        op: impl FnOnce(&mut ServiceManager, Timestamp) -> Result<T, RequestError>,
    ) -> Result<T, RequestError> {
        let now = self.clock.observe(now);
        self.writable()?;
        let result = op(&mut self.registry, now);
        self.after_change(now);
        result
    }

    fn writable(&self) -> Result<(), RequestError> {
        if self.is_ready() { Ok(()) } else { Err(RequestError::NotReady) }
    }

    /// Registers an instance (or updates it if registered). Counts as a
    /// heartbeat.
    pub fn register(&mut self, now: Timestamp, req: RegisterRequest) -> Result<Registered, RequestError> {
        self.write(now, |r, now| r.register(now, req))
    }

    /// Removes an instance.
    pub fn deregister(&mut self, now: Timestamp, key: &InstanceKey) -> Result<(), RequestError> {
        self.write(now, |r, now| r.deregister(now, key))
    }

    /// Changes an instance's weight, enabled flag, metadata, or (persistent
    /// instances only) health.
    pub fn update_instance(
        &mut self,
        now: Timestamp,
        key: &InstanceKey,
        req: UpdateRequest,
    ) -> Result<(), RequestError> {
        self.write(now, |r, now| r.update(now, key, req))
    }

    /// Takes a client's heartbeat. `Unknown` tells the client to register
    /// again. A beat for an instance another node is responsible for is also
    /// forwarded there (batched).
    pub fn heartbeat(&mut self, now: Timestamp, key: &InstanceKey) -> Result<BeatReply, RequestError> {
        let now = self.clock.observe(now);
        self.writable()?;
        let reply = self.beat(now, key);
        self.after_change(now);
        Ok(reply)
    }

    /// Takes a client's heartbeat that carries `registered_after`, the
    /// ordering token the client sent with its latest register of `key`
    /// (0 for none). A live record here whose version is not above that
    /// token is older than the client's register, which has not reached this
    /// node or was lost with the node that took it (a memory-only node that
    /// crashed first): the beat is not counted for it, and the answer is
    /// `Unknown`, so the client registers again here and its register
    /// outranks every write it made before (docs/architecture.md, "What the
    /// new powers found"). Otherwise as [`Node::heartbeat`].
    pub fn heartbeat_after(
        &mut self,
        now: Timestamp,
        key: &InstanceKey,
        registered_after: u64,
    ) -> Result<BeatReply, RequestError> {
        let now = self.clock.observe(now);
        self.writable()?;
        if registered_after > 0 && self.registry.live_predates(key, registered_after) {
            self.stats.stale_beats += 1;
            return Ok(BeatReply::Unknown);
        }
        let reply = self.beat(now, key);
        self.after_change(now);
        Ok(reply)
    }

    /// Takes a batch of heartbeats; the replies are in the order of `keys`.
    pub fn heartbeat_batch(
        &mut self,
        now: Timestamp,
        keys: &[InstanceKey],
    ) -> Result<Vec<BeatReply>, RequestError> {
        let now = self.clock.observe(now);
        self.writable()?;
        let max = self.config.limits.max_batch_beats;
        if keys.len() > max {
            return Err(InvalidInput::new(
                Field::Beats,
                format!("at most {max} beats per batch, got {}", keys.len()),
            )
            .into());
        }
        let replies = keys.iter().map(|k| self.beat(now, k)).collect();
        self.after_change(now);
        Ok(replies)
    }

    fn beat(&mut self, now: Timestamp, key: &InstanceKey) -> BeatReply {
        let outcome = self.registry.heartbeat(now, key, Duration::ZERO, false);
        if let BeatOutcome::Known { forward_to: Some(owner), .. } = &outcome {
            self.sync.handle_forward(now, &self.registry, owner.clone(), key);
        }
        ServiceManager::beat_reply(&outcome)
    }

    /// Answers a query of one service. An unknown service answers with no
    /// instances (so a consumer can watch a service before it exists).
    pub fn query(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        selector: &Selector,
    ) -> Result<QueryAnswer, RequestError> {
        self.clock.observe(now);
        self.writable()?;
        Ok(self.registry.query(key, selector))
    }

    /// The current view of a service (all live instances), shared until the
    /// service next changes. Transports publish these as read snapshots.
    pub fn service_view(&mut self, key: &ServiceKey) -> std::sync::Arc<ServiceView> {
        self.registry.store_mut().view(key)
    }

    /// A page of the services of a namespace.
    pub fn list_services(&self, filter: &ServiceFilter) -> Result<ServicePage, RequestError> {
        self.registry.list_services(filter)
    }

    /// One service's summary.
    pub fn service(&self, key: &ServiceKey) -> Result<ServiceSummary, RequestError> {
        self.registry.service(key)
    }

    /// Creates a service with explicit settings; it stays when its last
    /// instance goes. Refuses if the service exists.
    pub fn create_service(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        upd: ServiceUpdate,
    ) -> Result<ServiceSummary, RequestError> {
        self.write(now, |r, now| r.create_service(now, key, upd))
    }

    /// Updates a service's settings.
    pub fn update_service(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        upd: ServiceUpdate,
    ) -> Result<ServiceSummary, RequestError> {
        self.write(now, |r, now| r.update_service(now, key, upd))
    }

    /// Creates a service with explicit settings, or updates it if it exists
    /// (PUT semantics).
    pub fn put_service(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        upd: ServiceUpdate,
    ) -> Result<ServiceSummary, RequestError> {
        self.write(now, |r, now| r.put_service(now, key, upd))
    }

    /// Every service the node holds any record of (live instances,
    /// tombstones or explicit settings), for republishing views.
    pub fn service_keys(&self) -> Vec<ServiceKey> {
        self.registry.store().service_keys()
    }

    /// Deletes a service; refuses while it has instances.
    pub fn delete_service(&mut self, now: Timestamp, key: &ServiceKey) -> Result<(), RequestError> {
        self.write(now, |r, now| r.delete_service(now, key))
    }

    /// Namespaces with their service counts.
    pub fn namespaces(&self) -> Vec<NamespaceSummary> {
        self.registry.namespaces()
    }

    // ---- peer messages -------------------------------------------------

    /// Handles a message from peer `from`.
    pub fn handle_message(
        &mut self,
        now: Timestamp,
        from: &NodeId,
        msg: PeerMessage,
    ) -> Result<(), MessageError> {
        let now = self.clock.observe(now);
        if !self.members.is_member(from) {
            self.stats.messages_refused += 1;
            return Err(MessageError::UnknownPeer(from.to_string()));
        }
        let max = self.config.limits.max_incoming_records;
        if msg.item_count() > max.max(BUCKETS) {
            self.stats.messages_refused += 1;
            return Err(MessageError::TooLarge { what: "max_incoming_records", limit: max });
        }
        self.stats.messages_in += 1;
        if let Some(t) = self.members.heard_from(now, from) {
            self.peer_transition(now, t);
        }
        let result = self.dispatch(now, from, msg);
        self.after_change(now);
        result
    }

    fn dispatch(&mut self, now: Timestamp, from: &NodeId, msg: PeerMessage) -> Result<(), MessageError> {
        match msg {
            PeerMessage::Ping { nonce, sent_ms } => {
                let at = self.registry.wall_ms(now);
                self.members.handle_ping(from, nonce, sent_ms, at);
                self.drain_members();
                return Ok(());
            }
            PeerMessage::Ack { ping_sent_ms, received_ms, sent_ms, .. } => {
                self.clock_sample(now, from, [ping_sent_ms, received_ms, sent_ms]);
                return Ok(());
            }
            _ => {}
        }
        let result = self.sync.handle_message(now, from, msg, &mut self.registry, &self.members);
        self.drain_sync();
        result
    }

    // ---- timers --------------------------------------------------------

    /// The next moment [`Node::handle_timeout`] has work, and why.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Timestamp, TimerKind)> {
        let mut next = (self.tick_at, TimerKind::Tick);
        let mut consider = |t: Option<Timestamp>, k: TimerKind| {
            if let Some(t) = t {
                if t < next.0 {
                    next = (t, k);
                }
            }
        };
        if let Some((t, k)) = self.sync.poll_timeout(self.members.peer_count() > 0) {
            consider(Some(t), k);
        }
        consider(self.registry.poll_timeout(), TimerKind::Expiry);
        Some(next)
    }

    /// Does whatever is due at `now`. Safe to call at any time: calls with
    /// nothing due do nothing.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.clock.observe(now);
        if now >= self.tick_at {
            self.tick(now);
        }
        self.sync.handle_timeout(now, &self.registry, &self.members);
        self.drain_sync();
        self.registry.handle_timeout(now, self.config.limits.max_timeouts_per_call);
        self.after_change(now);
    }

    fn tick(&mut self, now: Timestamp) {
        let ping_interval = self.config.timings.ping_interval;
        let gap = now.saturating_since(self.last_tick);
        if gap > ping_interval + self.config.timings.pause_threshold {
            // Beats and peer messages could not be taken during the gap.
            self.stats.pauses += 1;
            self.registry.grant_grace(now);
            self.members.grant_grace(now);
            self.push_event(Event::PauseDetected { gap });
        }
        self.last_tick = now;
        self.tick_at = now + ping_interval;
        let wall_ms = self.registry.wall_ms(now);
        for transition in self.members.tick(now, wall_ms) {
            self.peer_transition(now, transition);
        }
        // The pings of this tick go after whatever the transitions caused.
        self.drain_members();
    }

    /// Takes one ping round trip to `from` (`t1`, `t2`, `t3`; `t4` is now)
    /// into its clock offset estimate; announces a change of its skew flag.
    fn clock_sample(&mut self, now: Timestamp, from: &NodeId, [t1, t2, t3]: [u64; 3]) {
        let t4 = self.registry.wall_ms(now);
        // An answer older than the down time says nothing about now.
        if t4.saturating_sub(t1) > crate::time::millis(self.config.timings.down_after) {
            return;
        }
        let bound = self.config.timings.max_clock_skew;
        if let Some((offset, skewed)) = self.members.clock_sample(from, [t1, t2, t3, t4], bound) {
            self.stats.clock_flag_changes += 1;
            self.push_event(Event::PeerClock { peer: from.clone(), offset, skewed });
        }
    }

    fn peer_transition(&mut self, now: Timestamp, t: Transition) {
        let responsibility_moved = t.from == PeerState::Down || t.to == PeerState::Down;
        if responsibility_moved {
            // The instances this node inherits get a fresh grace period
            // here (their clients' beats went to the previous owner).
            self.registry.inherit(now, self.members.responsibility());
        }
        self.sync.handle_peer_transition(&t, &self.registry);
        self.drain_sync();
        self.push_event(Event::PeerStateChanged(t));
    }

    /// Turns [`Event::InstanceChanged`] events on or off (off at start: a
    /// driver without a history pays nothing for them).
    pub fn set_instance_events(&mut self, on: bool) {
        self.registry.set_history(on);
    }

    /// Sends every pending local change and forwarded heartbeat now, without
    /// waiting for the sync delay (graceful shutdown). Drain `poll_transmit`
    /// after it.
    pub fn flush(&mut self, now: Timestamp) {
        let now = self.clock.observe(now);
        self.sync.flush(now, &self.registry, &self.members);
        self.drain_sync();
    }

    // ---- outputs -------------------------------------------------------

    /// Moves what the registry produced into the sync queue and the events.
    fn after_change(&mut self, now: Timestamp) {
        self.registry.enforce_tombstone_bound(now, 0);
        let has_peers = self.members.peer_count() > 0;
        self.sync.handle_local_changes(now, &mut self.registry, has_peers);
        self.drain_sync();
        for change in self.registry.take_history() {
            if self.events.len() >= self.config.limits.max_queued_events {
                self.stats.instance_events_dropped += 1;
            } else {
                self.events.push_back(Event::InstanceChanged(change));
            }
        }
        while let Some(key) = self.registry.store_mut().pop_changed_service() {
            self.push_event(Event::ServiceChanged(key));
        }
        let engaged = self.registry.brake_engaged();
        if engaged != self.brake_engaged {
            self.brake_engaged = engaged;
            let event = if engaged {
                Event::BrakeEngaged { held: self.registry.brake_held() }
            } else {
                Event::BrakeReleased
            };
            self.push_event(event);
        }
    }

    /// Moves what the Sync Manager produced into the node's bounded queues,
    /// in the order it was produced.
    fn drain_sync(&mut self) {
        while let Some(t) = self.sync.poll_transmit() {
            self.transmit(t.to, t.msg);
        }
        while let Some(e) = self.sync.poll_event() {
            self.push_event(e);
        }
    }

    /// Moves the Server Node Manager's pings and acks into the transmit
    /// queue.
    fn drain_members(&mut self) {
        while let Some(t) = self.members.poll_transmit() {
            self.transmit(t.to, t.msg);
        }
    }

    fn transmit(&mut self, to: NodeId, msg: PeerMessage) {
        if self.transmits.len() >= self.config.limits.max_queued_transmits {
            // Drop the oldest message that anti-entropy or the next ping
            // makes good again; never a snapshot page or its request, which
            // nothing would re-send before the startup retry.
            let snapshot = |t: &Transmit| {
                matches!(t.msg, PeerMessage::Snapshot { .. } | PeerMessage::SnapshotRequest { .. })
            };
            match self.transmits.iter().position(|t| !snapshot(t)) {
                Some(i) => drop(self.transmits.remove(i)),
                None => drop(self.transmits.pop_front()),
            }
            self.stats.transmits_dropped += 1;
        }
        self.stats.messages_out += 1;
        self.transmits.push_back(Transmit { to, msg });
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.config.limits.max_queued_events {
            // Drop the oldest event a later one supersedes; never `Ready`,
            // which happens once.
            match self.events.iter().position(|e| !matches!(e, Event::Ready { .. })) {
                Some(i) => drop(self.events.remove(i)),
                None => drop(self.events.pop_front()),
            }
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// The next active health check for the driver to perform (persistent
    /// instances this node is responsible for). Poll after `handle_timeout`
    /// until `None`; report each outcome with [`Node::handle_health_check`].
    #[must_use]
    pub fn poll_health_check(&mut self) -> Option<crate::health::HealthCheck> {
        self.registry.poll_check()
    }

    /// Takes the outcome of an active health check: one success marks the
    /// instance healthy, two failures in a row unhealthy.
    pub fn handle_health_check(&mut self, now: Timestamp, key: &InstanceKey, passed: bool) {
        let now = self.clock.observe(now);
        if self.is_ready() {
            self.registry.check_result(now, key, passed);
        }
        self.after_change(now);
    }

    /// The next message for a peer. Poll after every input until `None`.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event. Poll after every input (after `poll_transmit`) until
    /// `None`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

mod checks;
mod durable;
#[cfg(test)]
mod fixture;
#[cfg(test)]
mod grace_tests;
#[cfg(test)]
mod ordering_tests;
#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod resurrection_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
