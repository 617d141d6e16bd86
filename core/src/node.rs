//! [`Node`]: one registry node as a state machine.
//!
//! A node owns the registry (Service Manager and Storage), the membership
//! (Server Node Manager) and the sync state (Sync Manager), drains them after
//! every input, and exposes the outputs through `poll_*`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::Config;
use crate::error::{ConfigError, Field, InvalidInput, MessageError, RequestError};
use crate::hash::SplitMix64;
use crate::history::InstanceChange;
use crate::membership::{MemberView, Membership, PeerState, Transition};
use crate::message::{ForwardedBeat, PeerMessage};
use crate::model::{InstanceKey, NodeId, ServiceKey};
use crate::record::Record;
use crate::registry::digest::{BUCKETS, Digest};
use crate::registry::repair::{self, Unit};
use crate::registry::{BeatOutcome, MergeOutcome, RecordRef, Registry, RegistryStats};
use crate::request::{BeatReply, RegisterRequest, Registered, Reply, Request, ServiceUpdate, UpdateRequest};
use crate::slab::Handle;
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
    /// Registry counters.
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

/// A starting node loading the registry from its peers.
#[derive(Clone, Debug)]
struct Loading {
    /// Peers in the order they are asked.
    order: Vec<NodeId>,
    /// Index in `order` of the peer being asked.
    at: usize,
    cursor: u64,
    asked_at: Timestamp,
    /// Peers asked so far: a late answer from any of them is taken.
    asked: BTreeSet<NodeId>,
    not_ready: BTreeSet<NodeId>,
    give_up_at: Timestamp,
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
    registry: Registry,
    members: Membership,
    rng: SplitMix64,
    loading: Option<Loading>,
    /// Local changes not yet flushed to peers.
    pending: BTreeSet<RecordRef>,
    /// Heartbeats to forward, by responsible peer: slot -> when seen.
    forward: BTreeMap<NodeId, BTreeMap<Handle, Timestamp>>,
    flush_at: Option<Timestamp>,
    tick_at: Timestamp,
    last_tick: Timestamp,
    anti_entropy_at: Timestamp,
    ping_nonce: u64,
    brake_engaged: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: NodeStats,
    /// The last digest root of each peer (at most one entry per peer).
    peer_digests: BTreeMap<NodeId, PeerDigest>,
}

impl Node {
    /// A node starting at `now`. With peers it starts loading the registry
    /// from them and refuses writes until [`Node::is_ready`]; alone it is
    /// ready at once.
    pub fn new(config: Config, now: Timestamp) -> Result<Node, ConfigError> {
        config.validate()?;
        let mut rng = SplitMix64::new(config.seed);
        let members = Membership::new(config.node_id.clone(), &config.peers, &config.timings, now);
        let mut registry = Registry::new(
            config.node_id.clone(),
            config.wall_clock_ms,
            config.timings.clone(),
            config.limits.clone(),
            config.brake.clone(),
        );
        registry.set_responsibility(members.responsibility());
        registry.grant_grace(now);
        let first_ae = now + jitter(&mut rng, config.timings.anti_entropy_interval);
        let mut node = Node {
            clock: Clock::default(),
            registry,
            members,
            rng,
            loading: None,
            pending: BTreeSet::new(),
            forward: BTreeMap::new(),
            flush_at: None,
            tick_at: now,
            last_tick: now,
            anti_entropy_at: first_ae,
            ping_nonce: 0,
            brake_engaged: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
            peer_digests: BTreeMap::new(),
            config,
        };
        node.clock.observe(now);
        node.start_loading(now);
        Ok(node)
    }

    fn start_loading(&mut self, now: Timestamp) {
        let mut order: Vec<NodeId> = self.config.peers.clone();
        if order.is_empty() {
            self.push_event(Event::Ready { loaded_from: None });
            return;
        }
        // Seeded shuffle, so that starting nodes spread over their peers.
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let give_up_at = now + self.config.timings.startup_timeout;
        self.loading = Some(Loading {
            order,
            at: 0,
            cursor: 0,
            asked_at: now,
            asked: BTreeSet::new(),
            not_ready: BTreeSet::new(),
            give_up_at,
        });
        self.ask_snapshot(now, 0);
    }

    // ---- getters -------------------------------------------------------

    /// The last digest root `peer` sent, and whether it matched this node's
    /// then; `None` before its first anti-entropy round.
    pub fn peer_digest(&self, peer: &NodeId) -> Option<PeerDigest> {
        self.peer_digests.get(peer).copied()
    }

    /// When this node last had evidence of life of a live instance (a beat,
    /// its registration, or its arrival from a peer); `None` if not live.
    pub fn last_beat(&self, key: &InstanceKey) -> Option<Timestamp> {
        self.registry.last_beat(key)
    }

    /// Live instances on host `ip` (and `port`, if given) in every
    /// namespace and service, at most `max`. Scans every instance.
    pub fn instances_on(&self, ip: &crate::model::Host, port: Option<u16>, max: usize) -> Vec<InstanceKey> {
        self.registry.instances_on(ip, port, max)
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
        self.loading.is_none()
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
        self.registry.digest()
    }

    /// The latest hybrid-clock counter issued or observed.
    pub fn version_counter(&self) -> u64 {
        self.registry.hlc_counter()
    }

    /// Whether the expiry brake is engaged.
    pub fn brake_engaged(&self) -> bool {
        self.registry.brake_engaged()
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats { registry: self.registry.stats(), pending_changes: self.pending.len(), ..self.stats }
    }

    /// Events dropped because their queue was full (cheap; `stats` is not).
    pub fn events_dropped(&self) -> u64 {
        self.stats.events_dropped
    }

    /// Every record held, tombstones included (tests, simulator, debugging).
    pub fn records(&self) -> Vec<Record> {
        self.registry.all_records()
    }

    /// The record of one instance, live or tombstone.
    pub fn instance_record(&self, key: &InstanceKey) -> Option<Record> {
        self.registry.instance_record_of(key)
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
        self.registry.live_instances()
    }

    /// Checks every structural invariant and every bound; panics with a
    /// description of the first broken one. O(n).
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    pub fn check_invariants(&self) {
        self.registry.check_invariants();
        let l = &self.config.limits;
        assert!(self.pending.len() <= l.max_pending_changes, "pending changes bounded");
        assert!(self.transmits.len() <= l.max_queued_transmits, "transmit queue bounded");
        assert!(self.events.len() <= l.max_queued_events, "event queue bounded");
        for beats in self.forward.values() {
            assert!(beats.len() <= l.max_forwarded_beats, "forwarded beats bounded");
        }
        assert!(self.registry.instance_count() <= l.max_instances, "instances bounded");
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
        op: impl FnOnce(&mut Registry, Timestamp) -> Result<T, RequestError>,
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
            self.queue_forward(now, owner.clone(), key);
        }
        Registry::beat_reply(&outcome)
    }

    fn queue_forward(&mut self, now: Timestamp, owner: NodeId, key: &InstanceKey) {
        let Some(slot) = self.registry.slot_of(key).and_then(|i| self.registry.handle_of(i)) else { return };
        let max = self.config.limits.max_forwarded_beats;
        let beats = self.forward.entry(owner).or_default();
        if beats.len() < max || beats.contains_key(&slot) {
            beats.insert(slot, now);
            self.arm_flush(now);
        } else {
            self.stats.beats_dropped += 1;
        }
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
        self.registry.view(key)
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
        self.registry.service_keys()
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
                let ack = PeerMessage::Ack { nonce, ping_sent_ms: sent_ms, received_ms: at, sent_ms: at };
                self.transmit(from.clone(), ack);
                Ok(())
            }
            PeerMessage::Ack { ping_sent_ms, received_ms, sent_ms, .. } => {
                self.clock_sample(now, from, [ping_sent_ms, received_ms, sent_ms]);
                Ok(())
            }
            PeerMessage::Delta { records } => self.merge_all(now, records),
            PeerMessage::Beats { beats } => {
                for b in beats {
                    let age = Duration::from_millis(b.age_ms);
                    self.registry.heartbeat(now, &b.key, age, true);
                }
                Ok(())
            }
            PeerMessage::DigestRoot { root } => {
                let matched = root == self.registry.digest().root();
                if self.members.state(from).is_some() {
                    self.peer_digests.insert(from.clone(), PeerDigest { at: now, root, matched });
                }
                if self.is_ready() && root != self.registry.digest().root() {
                    let buckets = self.registry.digest().buckets().to_vec();
                    self.transmit(from.clone(), PeerMessage::DigestBuckets { buckets });
                }
                Ok(())
            }
            PeerMessage::DigestBuckets { buckets } => {
                self.answer_buckets(from, &buckets);
                Ok(())
            }
            PeerMessage::BucketRecords { buckets, records, reply } => {
                if reply {
                    self.reply_records(from, Unit::Bucket, buckets.iter().map(|b| u16::from(*b)).collect());
                }
                self.merge_all(now, records)
            }
            PeerMessage::DigestLeaves { buckets, leaves } => {
                self.answer_leaves(from, &buckets, &leaves);
                Ok(())
            }
            PeerMessage::LeafRecords { leaves, records, reply } => {
                if reply {
                    self.reply_records(from, Unit::Leaf, leaves.iter().copied().collect());
                }
                self.merge_all(now, records)
            }
            PeerMessage::SnapshotRequest { cursor } => {
                let msg = if self.is_ready() {
                    let (records, next) =
                        self.registry.snapshot_page(cursor, self.config.limits.max_records_per_message);
                    PeerMessage::Snapshot { records, next, ready: true }
                } else {
                    PeerMessage::Snapshot { records: Vec::new(), next: None, ready: false }
                };
                self.transmit(from.clone(), msg);
                Ok(())
            }
            PeerMessage::Snapshot { records, next, ready } => {
                let merged = self.merge_all(now, records);
                self.snapshot_page(now, from, next, ready);
                merged
            }
        }
    }

    /// Anti-entropy, step 3: the peer's bucket hashes arrived. If the
    /// differing buckets hold few enough records here, they go at once (every
    /// one of them: the peer settles those buckets and answers with its own);
    /// otherwise the leaf hashes under them go first, so that only the
    /// records of differing leaves cross.
    fn answer_buckets(&mut self, from: &NodeId, theirs: &[u64]) {
        if !self.is_ready() {
            return;
        }
        let differing = self.registry.digest().differing(theirs);
        if differing.is_empty() {
            return;
        }
        self.stats.anti_entropy_repairs += 1;
        let max = self.config.limits.max_records_per_message;
        let units: BTreeSet<u16> = differing.iter().map(|b| u16::from(*b)).collect();
        let leaf_budget = self.leaf_budget();
        let bug = self.registry.bugs.has(crate::bugs::Bug::AntiEntropyPrefix);
        if bug || leaf_budget == 0 || self.registry.count_in(Unit::Bucket, &units) <= max {
            let (covered, records) = self.registry.records_in_units(Unit::Bucket, &units, max);
            let buckets = covered.iter().map(|u| *u as u8).collect();
            self.transmit(from.clone(), PeerMessage::BucketRecords { buckets, records, reply: true });
            return;
        }
        // Whole buckets of leaf hashes, as many as fit in the budget.
        let set: BTreeSet<u8> = differing.iter().copied().collect();
        let all = self.registry.leaf_hashes(&set);
        let mut buckets = Vec::new();
        let mut leaves = Vec::new();
        for b in differing {
            let from_at = all.partition_point(|(l, _)| repair::bucket_of_leaf(*l) < b);
            let to = all.partition_point(|(l, _)| repair::bucket_of_leaf(*l) <= b);
            let mine = &all[from_at..to];
            if !buckets.is_empty() && leaves.len() + mine.len() > leaf_budget {
                break;
            }
            buckets.push(b);
            leaves.extend_from_slice(mine);
        }
        self.transmit(from.clone(), PeerMessage::DigestLeaves { buckets, leaves });
    }

    /// Leaf hashes per `DigestLeaves` message; 0 turns the leaf level off.
    fn leaf_budget(&self) -> usize {
        self.config.limits.max_records_per_message * crate::message::LEAVES_PER_ITEM
    }

    /// Anti-entropy, step 4: the peer's leaf hashes arrived; send the records
    /// of the leaves that differ and ask for the peer's.
    fn answer_leaves(&mut self, from: &NodeId, buckets: &[u8], theirs: &[(u16, u64)]) {
        if !self.is_ready() {
            return;
        }
        let set: BTreeSet<u8> = buckets.iter().copied().collect();
        let theirs: BTreeMap<u16, u64> =
            theirs.iter().filter(|(l, _)| set.contains(&repair::bucket_of_leaf(*l))).copied().collect();
        let mine: BTreeMap<u16, u64> = self.registry.leaf_hashes(&set).into_iter().collect();
        let differing: BTreeSet<u16> = mine
            .iter()
            .filter(|(l, h)| theirs.get(l) != Some(h))
            .map(|(l, _)| *l)
            .chain(theirs.keys().filter(|l| !mine.contains_key(l)).copied())
            .collect();
        if differing.is_empty() {
            return;
        }
        let max = self.config.limits.max_records_per_message;
        let (leaves, records) = self.registry.records_in_units(Unit::Leaf, &differing, max);
        self.transmit(from.clone(), PeerMessage::LeafRecords { leaves, records, reply: true });
    }

    /// The answer to records sent with `reply`: this node's records of the
    /// units covered (taken before merging the peer's), whole units, as many
    /// as fit in one message. Units left out settle in a later round.
    fn reply_records(&mut self, from: &NodeId, unit: Unit, units: BTreeSet<u16>) {
        let max = self.config.limits.max_records_per_message;
        let (covered, records) = self.registry.records_in_units(unit, &units, max);
        let msg = match unit {
            Unit::Bucket => {
                let buckets = covered.iter().map(|u| *u as u8).collect();
                PeerMessage::BucketRecords { buckets, records, reply: false }
            }
            Unit::Leaf => PeerMessage::LeafRecords { leaves: covered, records, reply: false },
        };
        self.transmit(from.clone(), msg);
    }

    fn merge_all(&mut self, now: Timestamp, records: Vec<Record>) -> Result<(), MessageError> {
        let mut rejected = 0;
        let mut first = None;
        for r in records {
            match self.registry.merge(now, r) {
                MergeOutcome::Rejected(why) => {
                    rejected += 1;
                    first.get_or_insert(why);
                }
                MergeOutcome::Refuted { key, age } => self.forward_refutation(now, &key, age),
                MergeOutcome::Applied | MergeOutcome::Stale => {}
            }
        }
        match first {
            None => Ok(()),
            Some(first) => Err(MessageError::RecordsRejected { rejected, first }),
        }
    }

    /// Tells the responsible node about the beat that refuted its expiry.
    fn forward_refutation(&mut self, now: Timestamp, key: &InstanceKey, age: Duration) {
        let owner = self.responsible_for(key);
        if owner != self.config.node_id {
            self.queue_forward(now.saturating_sub(age), owner, key);
        }
    }

    fn snapshot_page(&mut self, now: Timestamp, from: &NodeId, next: Option<u64>, ready: bool) {
        let Some(l) = self.loading.as_mut() else { return };
        // Any peer asked during this startup may answer, even late: its
        // records are merged already, and paging continues where it says.
        let Some(at) = l.order.iter().position(|p| p == from).filter(|_| l.asked.contains(from)) else {
            return;
        };
        if !ready {
            l.not_ready.insert(from.clone());
            if l.not_ready.len() >= l.order.len() {
                // Every peer is starting too: a cold start of the whole cluster.
                self.become_ready(None);
            } else if at == l.at {
                self.next_snapshot_peer(now);
            }
            return;
        }
        l.at = at;
        match next {
            Some(cursor) => self.ask_snapshot(now, cursor),
            None => self.become_ready(Some(from.clone())),
        }
    }

    fn ask_snapshot(&mut self, now: Timestamp, cursor: u64) {
        let Some(l) = self.loading.as_mut() else { return };
        l.asked_at = now;
        l.cursor = cursor;
        if let Some(peer) = l.order.get(l.at).cloned() {
            l.asked.insert(peer.clone());
            self.transmit(peer, PeerMessage::SnapshotRequest { cursor });
        }
    }

    fn next_snapshot_peer(&mut self, now: Timestamp) {
        let Some(l) = self.loading.as_mut() else { return };
        l.at = (l.at + 1) % l.order.len().max(1);
        self.ask_snapshot(now, 0);
    }

    fn become_ready(&mut self, loaded_from: Option<NodeId>) {
        self.loading = None;
        self.push_event(Event::Ready { loaded_from });
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
        consider(self.flush_at, TimerKind::Flush);
        if self.members.peer_count() > 0 && self.is_ready() {
            consider(Some(self.anti_entropy_at), TimerKind::AntiEntropy);
        }
        if let Some(l) = &self.loading {
            consider(
                Some((l.asked_at + self.config.timings.snapshot_retry).min(l.give_up_at)),
                TimerKind::Startup,
            );
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
        if let Some(l) = &self.loading {
            if now >= l.give_up_at {
                self.become_ready(None);
            } else if now >= l.asked_at + self.config.timings.snapshot_retry {
                self.next_snapshot_peer(now);
            }
        }
        if self.flush_at.is_some_and(|t| now >= t) {
            self.flush(now);
        }
        if self.is_ready() && self.members.peer_count() > 0 && now >= self.anti_entropy_at {
            self.anti_entropy(now);
        }
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
        for transition in self.members.tick(now) {
            self.peer_transition(now, transition);
        }
        let peers: Vec<NodeId> = self.members.peer_ids().cloned().collect();
        for peer in peers {
            self.ping_nonce = self.ping_nonce.wrapping_add(1);
            let sent_ms = self.registry.wall_ms(now);
            self.transmit(peer, PeerMessage::Ping { nonce: self.ping_nonce, sent_ms });
        }
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
        if t.to == PeerState::Down {
            self.forward.remove(&t.peer);
        }
        if t.from == PeerState::Down && self.is_ready() {
            // Back from down: it may have missed deltas; reconcile now.
            let root = self.registry.digest().root();
            self.transmit(t.peer.clone(), PeerMessage::DigestRoot { root });
        }
        self.push_event(Event::PeerStateChanged(t));
    }

    fn arm_flush(&mut self, now: Timestamp) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.config.timings.sync_delay);
        }
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
        self.flush_at = None;
        let max = self.config.limits.max_records_per_message;
        let refs = std::mem::take(&mut self.pending);
        let records: Vec<Record> = refs.into_iter().filter_map(|r| self.registry.record(r)).collect();
        let peers: Vec<NodeId> = self.members.reachable().cloned().collect();
        for chunk in records.chunks(max) {
            for peer in &peers {
                self.stats.delta_records_out += chunk.len() as u64;
                self.transmit(peer.clone(), PeerMessage::Delta { records: chunk.to_vec() });
            }
        }
        let forward = std::mem::take(&mut self.forward);
        for (owner, slots) in forward {
            if self.members.state(&owner).is_none_or(|s| s == PeerState::Down) {
                continue;
            }
            let beats: Vec<ForwardedBeat> = slots
                .into_iter()
                .filter_map(|(h, seen)| {
                    let key = self.registry.key_of_handle(h)?;
                    Some(ForwardedBeat { key, age_ms: crate::time::millis(now.saturating_since(seen)) })
                })
                .collect();
            self.stats.beats_forwarded += beats.len() as u64;
            for chunk in beats.chunks(max) {
                self.transmit(owner.clone(), PeerMessage::Beats { beats: chunk.to_vec() });
            }
        }
    }

    fn anti_entropy(&mut self, now: Timestamp) {
        let interval = self.config.timings.anti_entropy_interval;
        self.anti_entropy_at = now + jitter(&mut self.rng, interval);
        self.stats.anti_entropy_rounds += 1;
        let root = self.registry.digest().root();
        let peers: Vec<NodeId> = self.members.reachable().cloned().collect();
        for peer in peers {
            self.transmit(peer, PeerMessage::DigestRoot { root });
        }
    }

    // ---- outputs -------------------------------------------------------

    /// Moves what the registry produced into the sync queue and the events.
    fn after_change(&mut self, now: Timestamp) {
        let has_peers = self.members.peer_count() > 0;
        let max = self.config.limits.max_pending_changes;
        let mut overflow = 0;
        let mut changed = false;
        for c in self.registry.take_local_changes() {
            if !has_peers {
                continue;
            }
            changed = true;
            if self.pending.len() >= max && !self.pending.contains(&c) {
                overflow += 1;
                continue;
            }
            self.pending.insert(c);
        }
        if changed {
            self.arm_flush(now);
        }
        if overflow > 0 {
            // Drop the whole queue: anti-entropy will find every difference,
            // and starts now rather than at its next round.
            let dropped = overflow + self.pending.len();
            self.pending.clear();
            self.stats.changes_dropped += dropped as u64;
            self.anti_entropy_at = now;
            self.push_event(Event::SyncQueueOverflow { dropped });
        }
        for change in self.registry.take_history() {
            if self.events.len() >= self.config.limits.max_queued_events {
                self.stats.instance_events_dropped += 1;
            } else {
                self.events.push_back(Event::InstanceChanged(change));
            }
        }
        while let Some(key) = self.registry.pop_changed_service() {
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

/// `d` plus or minus up to 10 %, so that nodes started together drift apart.
fn jitter(rng: &mut SplitMix64, d: Duration) -> Duration {
    let ms = crate::time::millis(d);
    let spread = ms / 10;
    Duration::from_millis(ms - spread + rng.below(2 * spread + 1))
}

mod durable;
#[cfg(test)]
mod fixture;
#[cfg(test)]
mod grace_tests;
#[cfg(test)]
mod ordering_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
