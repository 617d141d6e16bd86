//! The Sync Manager: what travels between registry nodes.
//!
//! It owns the local changes not yet sent (the pending set and its delta
//! flush), the heartbeats to forward to the nodes responsible for their
//! instances, the anti-entropy rounds and their exchanges
//! ([`repair`](self::repair)), the snapshot a starting node loads from its
//! peers ([`loading`](self::loading)), and the last digest root of each peer.
//!
//! It has the `handle_*/poll_*` shape of every manager (STYLE.md section 1):
//! inputs come from [`Node`](crate::Node) with the other managers it needs
//! lent for the call (the Service Manager's registry and its Storage, the
//! Server Node Manager's membership); messages for peers and events leave
//! through [`SyncManager::poll_transmit`] and [`SyncManager::poll_event`],
//! which the node drains into its bounded queues right after every call, so
//! their order among the node's other outputs is the order they were made in.

mod loading;
mod repair;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::{Config, Limits, Timings};
use crate::error::MessageError;
use crate::hash::SplitMix64;
use crate::membership::{Membership, PeerState, Transition};
use crate::message::{ForwardedBeat, PeerMessage};
use crate::model::{InstanceKey, NodeId};
use crate::node::{Event, PeerDigest, TimerKind, Transmit};
use crate::record::Record;
use crate::service_manager::{MergeOutcome, ServiceManager};
use crate::storage::RecordRef;
use crate::storage::repair::Unit;
use crate::storage::slab::Handle;
use crate::time::Timestamp;

use self::loading::Loading;
use self::repair::FollowUp;

/// The Sync Manager's counters (fields of [`crate::NodeStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncStats {
    pub(crate) delta_records_out: u64,
    pub(crate) anti_entropy_rounds: u64,
    pub(crate) anti_entropy_repairs: u64,
    pub(crate) anti_entropy_follow_ups: u64,
    pub(crate) beats_forwarded: u64,
    pub(crate) changes_dropped: u64,
    pub(crate) beats_dropped: u64,
}

/// Pending changes, forwarded beats, anti-entropy and snapshot loading.
pub(crate) struct SyncManager {
    me: NodeId,
    peers: Vec<NodeId>,
    timings: Timings,
    limits: Limits,
    rng: SplitMix64,
    loading: Option<Loading>,
    /// Local changes not yet flushed to peers.
    pending: BTreeSet<RecordRef>,
    /// Heartbeats to forward, by responsible peer: slot -> when seen.
    forward: BTreeMap<NodeId, BTreeMap<Handle, Timestamp>>,
    flush_at: Option<Timestamp>,
    anti_entropy_at: Timestamp,
    /// The last digest root of each peer (at most one entry per peer).
    peer_digests: BTreeMap<NodeId, PeerDigest>,
    /// Follow-up rounds, per member (see `repair.rs`).
    follow_ups: BTreeMap<NodeId, FollowUp>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: SyncStats,
}

impl SyncManager {
    /// The Sync Manager of a node starting at `now`: with peers it starts
    /// loading the registry from them (its first request is in
    /// `poll_transmit`); alone it is ready at once (`Event::Ready`).
    pub(crate) fn new(config: &Config, now: Timestamp) -> SyncManager {
        let mut rng = SplitMix64::new(config.seed);
        let anti_entropy_at = now + jitter(&mut rng, config.timings.anti_entropy_interval);
        let mut sync = SyncManager {
            me: config.node_id.clone(),
            peers: config.peers.clone(),
            timings: config.timings.clone(),
            limits: config.limits.clone(),
            rng,
            loading: None,
            pending: BTreeSet::new(),
            forward: BTreeMap::new(),
            flush_at: None,
            anti_entropy_at,
            peer_digests: BTreeMap::new(),
            follow_ups: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: SyncStats::default(),
        };
        sync.start_loading(now);
        sync
    }

    // ---- getters -------------------------------------------------------

    /// Whether the node has loaded the registry (or gave up waiting).
    pub(crate) fn is_ready(&self) -> bool {
        self.loading.is_none()
    }

    /// The last digest root `peer` sent.
    pub(crate) fn peer_digest(&self, peer: &NodeId) -> Option<PeerDigest> {
        self.peer_digests.get(peer).copied()
    }

    /// Local changes waiting to be flushed.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Checks the Sync Manager's bounds; panics on the first broken one.
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    #[allow(clippy::panic)] // Panicking is this function's job.
    pub(crate) fn check_invariants(&self) {
        let l = &self.limits;
        assert!(self.pending.len() <= l.max_pending_changes, "pending changes bounded");
        for beats in self.forward.values() {
            assert!(beats.len() <= l.max_forwarded_beats, "forwarded beats bounded");
        }
    }

    // ---- inputs --------------------------------------------------------

    /// Takes the local changes the registry made (after every input of the
    /// node): each joins the pending set and arms the flush. Past
    /// `max_pending_changes` the whole set is dropped and anti-entropy starts
    /// at once: nothing is lost for good.
    pub(crate) fn handle_local_changes(
        &mut self,
        now: Timestamp,
        registry: &mut ServiceManager,
        has_peers: bool,
    ) {
        let max = self.limits.max_pending_changes;
        let mut overflow = 0;
        let mut changed = false;
        for c in registry.store_mut().take_local_changes() {
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
            self.events.push_back(Event::SyncQueueOverflow { dropped });
        }
    }

    /// A client's beat this node took for an instance `owner` is
    /// responsible for: it goes there with the next flush.
    pub(crate) fn handle_forward(
        &mut self,
        now: Timestamp,
        registry: &ServiceManager,
        owner: NodeId,
        key: &InstanceKey,
    ) {
        let Some(slot) = registry.store().slot_of(key).and_then(|i| registry.store().handle_of(i)) else {
            return;
        };
        let max = self.limits.max_forwarded_beats;
        let beats = self.forward.entry(owner).or_default();
        if beats.len() < max || beats.contains_key(&slot) {
            beats.insert(slot, now);
            self.arm_flush(now);
        } else {
            self.stats.beats_dropped += 1;
        }
    }

    /// A peer changed state: beats queued for a peer now down are dropped;
    /// a peer back from down may have missed deltas and is sent this node's
    /// digest root at once.
    pub(crate) fn handle_peer_transition(&mut self, t: &Transition, registry: &ServiceManager) {
        if t.to == PeerState::Down {
            self.forward.remove(&t.peer);
            self.follow_ups.remove(&t.peer);
        }
        if t.from == PeerState::Down && self.is_ready() {
            let (root, hlc) = (registry.store().digest().root(), registry.hlc_counter());
            self.transmit(t.peer.clone(), PeerMessage::DigestRoot { root, hlc });
        }
    }

    /// A sync message from a member (pings and acks are the node's).
    pub(crate) fn handle_message(
        &mut self,
        now: Timestamp,
        from: &NodeId,
        msg: PeerMessage,
        registry: &mut ServiceManager,
        members: &Membership,
    ) -> Result<(), MessageError> {
        match msg {
            PeerMessage::Ping { .. } | PeerMessage::Ack { .. } => Ok(()),
            PeerMessage::Delta { records } => self.merge_all(now, records, registry),
            PeerMessage::Beats { beats } => {
                for b in beats {
                    let age = Duration::from_millis(b.age_ms);
                    registry.heartbeat(now, &b.key, age, true);
                }
                Ok(())
            }
            PeerMessage::DigestRoot { root, hlc } => {
                self.note_root_in(now, from, members);
                let matched = root == registry.store().digest().root();
                if members.state(from).is_some() {
                    self.peer_digests.insert(from.clone(), PeerDigest { at: now, root, matched });
                }
                if matched {
                    // Agreement on every bucket (see agreement.rs).
                    registry.agreed(from, 0..=u8::MAX, now, hlc);
                }
                if self.is_ready() && root != registry.store().digest().root() {
                    let buckets = registry.store().digest().buckets().to_vec();
                    let hlc = registry.hlc_counter();
                    self.transmit(from.clone(), PeerMessage::DigestBuckets { buckets, hlc });
                }
                Ok(())
            }
            PeerMessage::DigestBuckets { buckets, hlc } => {
                let equal = registry.store().digest().equal(&buckets);
                registry.agreed(from, equal, now, hlc);
                let cut_short = self.answer_buckets(from, &buckets, registry);
                self.note_cut_short(now, from, cut_short, members);
                Ok(())
            }
            PeerMessage::BucketRecords { buckets, records, reply } => {
                let reply = reply.then(|| (Unit::Bucket, buckets.iter().map(|b| u16::from(*b)).collect()));
                self.unit_records(now, from, reply, records, registry, members)
            }
            PeerMessage::DigestLeaves { buckets, leaves } => {
                let cut_short = self.answer_leaves(from, &buckets, &leaves, registry);
                self.note_cut_short(now, from, cut_short, members);
                Ok(())
            }
            PeerMessage::LeafRecords { leaves, records, reply } => {
                let reply = reply.then(|| (Unit::Leaf, leaves.into_iter().collect()));
                self.unit_records(now, from, reply, records, registry, members)
            }
            PeerMessage::SnapshotRequest { cursor } => {
                let msg = if self.is_ready() {
                    let (records, next) =
                        registry.store().snapshot_page(cursor, self.limits.max_records_per_message);
                    PeerMessage::Snapshot { records, next, ready: true }
                } else {
                    PeerMessage::Snapshot { records: Vec::new(), next: None, ready: false }
                };
                self.transmit(from.clone(), msg);
                Ok(())
            }
            PeerMessage::Snapshot { records, next, ready } => {
                let merged = self.merge_all(now, records, registry);
                self.snapshot_page(now, from, next, ready);
                merged
            }
        }
    }

    /// The records of whole units from a peer (`BucketRecords`,
    /// `LeafRecords`): answered with this node's own records of those units
    /// first if the peer asks (`reply`), then merged; the exchange then ends
    /// on this node's side (see `repair.rs` for the follow-up).
    fn unit_records(
        &mut self,
        now: Timestamp,
        from: &NodeId,
        reply: Option<(Unit, BTreeSet<u16>)>,
        records: Vec<Record>,
        registry: &mut ServiceManager,
        members: &Membership,
    ) -> Result<(), MessageError> {
        let last = reply.is_none();
        if let Some((unit, units)) = reply {
            let cut_short = self.reply_records(from, unit, units, registry);
            self.note_cut_short(now, from, cut_short, members);
        }
        let merged = self.merge_all(now, records, registry);
        self.follow_up(now, from, last, registry);
        merged
    }

    fn merge_all(
        &mut self,
        now: Timestamp,
        records: Vec<Record>,
        registry: &mut ServiceManager,
    ) -> Result<(), MessageError> {
        let mut rejected = 0;
        let mut first = None;
        for r in records {
            match registry.merge(now, r) {
                MergeOutcome::Rejected(why) => {
                    rejected += 1;
                    first.get_or_insert(why);
                }
                MergeOutcome::Refuted { key, age } => {
                    // Tell the responsible node about the beat that refuted
                    // its expiry.
                    let owner = registry.responsibility().owner(key.stable_hash()).clone();
                    if owner != self.me {
                        self.handle_forward(now.saturating_sub(age), registry, owner, &key);
                    }
                }
                MergeOutcome::Applied | MergeOutcome::Stale | MergeOutcome::Refused(_) => {}
            }
        }
        match first {
            None => Ok(()),
            Some(first) => Err(MessageError::RecordsRejected { rejected, first }),
        }
    }

    // ---- timers --------------------------------------------------------

    /// The Sync Manager's next deadline: the flush, the anti-entropy round
    /// (with peers, once ready) or the startup retry; on a tie the first of
    /// these.
    pub(crate) fn poll_timeout(&self, has_peers: bool) -> Option<(Timestamp, TimerKind)> {
        let mut next: Option<(Timestamp, TimerKind)> = None;
        let mut consider = |t: Option<Timestamp>, k: TimerKind| {
            if let Some(t) = t {
                if next.is_none_or(|(n, _)| t < n) {
                    next = Some((t, k));
                }
            }
        };
        consider(self.flush_at, TimerKind::Flush);
        if has_peers && self.is_ready() {
            consider(Some(self.anti_entropy_at), TimerKind::AntiEntropy);
            consider(self.follow_up_due(), TimerKind::AntiEntropy);
        }
        consider(self.loading_deadline(), TimerKind::Startup);
        next
    }

    /// Does whatever of the Sync Manager is due at `now`: the startup retry
    /// or give-up, the flush, the anti-entropy round.
    pub(crate) fn handle_timeout(&mut self, now: Timestamp, registry: &ServiceManager, members: &Membership) {
        self.loading_timeout(now);
        if self.flush_at.is_some_and(|t| now >= t) {
            self.flush(now, registry, members);
        }
        if self.is_ready() && members.peer_count() > 0 {
            if now >= self.anti_entropy_at {
                self.anti_entropy(now, registry, members);
            }
            self.follow_ups_due(now, registry);
        }
    }

    fn arm_flush(&mut self, now: Timestamp) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.timings.sync_delay);
        }
    }

    /// Sends every pending local change (to every peer not down) and every
    /// forwarded heartbeat (to its responsible peer) now.
    pub(crate) fn flush(&mut self, now: Timestamp, registry: &ServiceManager, members: &Membership) {
        self.flush_at = None;
        let max = self.limits.max_records_per_message;
        let refs = std::mem::take(&mut self.pending);
        let records: Vec<Record> = refs.into_iter().filter_map(|r| registry.store().record(r)).collect();
        let peers: Vec<NodeId> = members.reachable().cloned().collect();
        for chunk in records.chunks(max) {
            for peer in &peers {
                self.stats.delta_records_out += chunk.len() as u64;
                self.transmit(peer.clone(), PeerMessage::Delta { records: chunk.to_vec() });
            }
        }
        let forward = std::mem::take(&mut self.forward);
        for (owner, slots) in forward {
            if members.state(&owner).is_none_or(|s| s == PeerState::Down) {
                continue;
            }
            let beats: Vec<ForwardedBeat> = slots
                .into_iter()
                .filter_map(|(h, seen)| {
                    let key = registry.store().key_of_handle(h)?;
                    Some(ForwardedBeat { key, age_ms: crate::time::millis(now.saturating_since(seen)) })
                })
                .collect();
            self.stats.beats_forwarded += beats.len() as u64;
            for chunk in beats.chunks(max) {
                self.transmit(owner.clone(), PeerMessage::Beats { beats: chunk.to_vec() });
            }
        }
    }

    fn anti_entropy(&mut self, now: Timestamp, registry: &ServiceManager, members: &Membership) {
        let interval = self.timings.anti_entropy_interval;
        self.anti_entropy_at = now + jitter(&mut self.rng, interval);
        self.stats.anti_entropy_rounds += 1;
        for f in self.follow_ups.values_mut() {
            f.used = 0;
        }
        let (root, hlc) = (registry.store().digest().root(), registry.hlc_counter());
        let peers: Vec<NodeId> = members.reachable().filter(|p| !self.repairing(now, p)).cloned().collect();
        for peer in peers {
            self.transmit(peer, PeerMessage::DigestRoot { root, hlc });
        }
    }

    // ---- outputs -------------------------------------------------------

    fn transmit(&mut self, to: NodeId, msg: PeerMessage) {
        self.transmits.push_back(Transmit { to, msg });
    }

    /// The next message for a peer; the node drains these after every call.
    #[must_use]
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event (`Ready`, `SyncQueueOverflow`); drained with
    /// `poll_transmit`.
    #[must_use]
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// `d` plus or minus up to 10 %, so that nodes started together drift apart.
fn jitter(rng: &mut SplitMix64, d: Duration) -> Duration {
    let ms = crate::time::millis(d);
    let spread = ms / 10;
    Duration::from_millis(ms - spread + rng.below(2 * spread + 1))
}

#[cfg(test)]
mod tests;
