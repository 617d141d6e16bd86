//! The network: a deterministic schedule of message copies, and its faults.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use muster_core::hash::SplitMix64;
use muster_core::time::millis;
use muster_core::{NodeId, Timestamp};

use crate::config::{Limits, LinkConfig};
use crate::links::LinkMap;
use crate::stats::{DropCause, NetStats};

/// A message handed out by [`Network::poll_delivery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<M> {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The message (a clone of it, for the second copy of a duplicate).
    pub msg: M,
    /// When the copy arrived: its scheduled time, at or before the `now`
    /// given to `poll_delivery`. Never earlier than the previous delivery's.
    pub at: Timestamp,
    /// When the message was sent (as clamped by the network's clock).
    pub sent_at: Timestamp,
    /// The size given to [`Network::send`].
    pub size_bytes: usize,
}

/// One copy of a message in flight.
#[derive(Clone, Debug)]
struct Packet<M> {
    from: NodeId,
    to: NodeId,
    msg: M,
    size_bytes: usize,
    sent_at: Timestamp,
}

/// A seeded, sans-IO in-memory network between [`NodeId`]s, generic over
/// the message type `M`. See the [crate documentation](crate) for the model
/// and the run loop.
///
/// Its methods are of four kinds: getters (`link`, `stats`, `is_cut`, ...),
/// the input [`send`](Network::send), fault and configuration commands
/// (`partition`, `hold`, `set_link`, ...), and the outputs
/// [`poll_timeout`](Network::poll_timeout) and
/// [`poll_delivery`](Network::poll_delivery).
#[derive(Clone, Debug)]
pub struct Network<M> {
    /// Draws exactly one value per `send`; nothing else draws from it.
    rng: SplitMix64,
    default_link: LinkConfig,
    links: LinkMap<LinkConfig>,
    limits: Limits,
    /// Directed links cut by `partition` and `partition_one_way`.
    cut: LinkMap<()>,
    isolated: BTreeSet<NodeId>,
    /// Directed links held by `hold`.
    holds: LinkMap<()>,
    clogged: BTreeSet<NodeId>,
    /// Copies on their way, in delivery order: (arrival, sequence number).
    scheduled: BTreeMap<(Timestamp, u64), Packet<M>>,
    /// Copies waiting at a hold or clog, by sequence number.
    held: BTreeMap<u64, Packet<M>>,
    in_flight_bytes: u64,
    next_seq: u64,
    /// The latest `now` seen: earlier ones are clamped to it.
    clock: Timestamp,
    /// The arrival time of the latest delivery.
    last_delivery: Timestamp,
    /// Counters; `in_flight` and `held` are filled in by `stats()`.
    stats: NetStats,
}

impl<M: Clone> Network<M> {
    /// A network whose every link behaves as `default_link` until
    /// [`set_link`](Network::set_link) overrides it, with default [`Limits`].
    /// The same seed and the same calls give the same deliveries.
    pub fn new(seed: u64, default_link: LinkConfig) -> Network<M> {
        Network::with_limits(seed, default_link, Limits::default())
    }

    /// As [`Network::new`], with explicit bounds on what is in flight.
    pub fn with_limits(seed: u64, default_link: LinkConfig, limits: Limits) -> Network<M> {
        Network {
            rng: SplitMix64::new(seed),
            default_link,
            links: LinkMap::default(),
            limits,
            cut: LinkMap::default(),
            isolated: BTreeSet::new(),
            holds: LinkMap::default(),
            clogged: BTreeSet::new(),
            scheduled: BTreeMap::new(),
            held: BTreeMap::new(),
            in_flight_bytes: 0,
            next_seq: 0,
            clock: Timestamp::ZERO,
            last_delivery: Timestamp::ZERO,
            stats: NetStats::default(),
        }
    }

    // ---- getters ---------------------------------------------------------

    /// The configuration of the directed link `from -> to`.
    pub fn link(&self, from: &NodeId, to: &NodeId) -> &LinkConfig {
        self.links.get(from, to).unwrap_or(&self.default_link)
    }

    /// The configuration of links without an override.
    pub fn default_link(&self) -> &LinkConfig {
        &self.default_link
    }

    /// The bounds on what is in flight.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Copies in flight now, scheduled or held.
    pub fn in_flight(&self) -> usize {
        self.scheduled.len() + self.held.len()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        NetStats { in_flight: self.in_flight(), held: self.held.len(), ..self.stats }
    }

    /// Whether messages from `from` to `to` are dropped by a partition or an
    /// isolation.
    pub fn is_cut(&self, from: &NodeId, to: &NodeId) -> bool {
        let isolated = from != to && (self.isolated.contains(from) || self.isolated.contains(to));
        isolated || self.cut.contains(from, to)
    }

    /// Whether messages from `from` to `to` wait, because of a
    /// [`hold`](Network::hold) on the link or a [`clog`](Network::clog) of
    /// either end.
    pub fn is_held(&self, from: &NodeId, to: &NodeId) -> bool {
        let clogged = from != to && (self.clogged.contains(from) || self.clogged.contains(to));
        clogged || self.holds.contains(from, to)
    }

    // ---- input -----------------------------------------------------------

    /// Sends `msg` from `from` to `to` at `now` and decides its fate at once:
    /// dropped (partition, loss, overflow), held, or scheduled, perhaps
    /// twice. Returns the number of copies now in flight (0, 1 or 2).
    ///
    /// Every call draws exactly one value from the seeded generator, whatever
    /// the message's fate, so that a fault on one link never shifts the
    /// random decisions about the messages that follow. A `now` earlier than
    /// one seen before is taken as that later time. Poll
    /// [`poll_timeout`](Network::poll_timeout) and
    /// [`poll_delivery`](Network::poll_delivery) afterwards.
    pub fn send(&mut self, now: Timestamp, from: &NodeId, to: &NodeId, msg: M, size_bytes: usize) -> usize {
        let now = self.observe(now);
        let mut rng = SplitMix64::new(self.rng.next_u64());
        self.stats.sent += 1;
        self.stats.bytes_sent = self.stats.bytes_sent.saturating_add(bytes(size_bytes));
        if self.is_cut(from, to) {
            self.stats.dropped.count(DropCause::Partition);
            return 0;
        }
        let link = *self.link(from, to);
        if rng.chance(link.loss.value()) {
            self.stats.dropped.count(DropCause::Loss);
            return 0;
        }
        let packet = Packet { from: from.clone(), to: to.clone(), msg, size_bytes, sent_at: now };
        let copy = rng.chance(link.duplicate.value()).then(|| packet.clone());
        let mut accepted = usize::from(self.enqueue(now, &link, &mut rng, packet));
        if let Some(copy) = copy {
            self.stats.duplicated += 1;
            accepted += usize::from(self.enqueue(now, &link, &mut rng, copy));
        }
        accepted
    }

    // ---- outputs ---------------------------------------------------------

    /// When the earliest scheduled copy is due, or `None` when nothing is
    /// scheduled (held copies have no time until released). The time may be
    /// at or before the latest `now`, and the copy may still be dropped at
    /// delivery if its link was cut meanwhile.
    ///
    /// Changes after [`send`](Network::send), [`poll_delivery`](Network::poll_delivery),
    /// [`release`](Network::release), [`unclog`](Network::unclog),
    /// [`release_all`](Network::release_all) and
    /// [`drop_in_flight_to`](Network::drop_in_flight_to).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.scheduled.first_key_value().map(|(&(at, _), _)| at)
    }

    /// The next copy due at or before `now`, in (arrival time, sequence
    /// number) order: a total order, so equal arrival times go in the order
    /// the copies were scheduled. Copies whose link is cut are dropped here;
    /// copies whose link is held wait for their release. Call it until it
    /// returns `None` after every input, and after moving the clock to
    /// [`poll_timeout`](Network::poll_timeout).
    #[must_use]
    pub fn poll_delivery(&mut self, now: Timestamp) -> Option<Delivery<M>> {
        let now = self.observe(now);
        loop {
            let entry = self.scheduled.first_entry()?;
            let (at, seq) = *entry.key();
            if at > now {
                return None;
            }
            let packet = entry.remove();
            if self.is_cut(&packet.from, &packet.to) {
                self.forget(&packet, DropCause::Partition);
            } else if self.is_held(&packet.from, &packet.to) {
                self.held.insert(seq, packet);
            } else {
                return Some(self.deliver(at, packet));
            }
        }
    }

    // ---- configuration ---------------------------------------------------

    /// Overrides the configuration of the directed link `from -> to`, for
    /// messages sent from now on; copies in flight keep their schedule.
    pub fn set_link(&mut self, from: &NodeId, to: &NodeId, link: LinkConfig) {
        self.links.insert(from, to, link);
    }

    /// Removes the override of the link `from -> to`: it uses the default again.
    pub fn reset_link(&mut self, from: &NodeId, to: &NodeId) {
        self.links.remove(from, to);
    }

    /// Changes the configuration of every link without an override.
    pub fn set_default_link(&mut self, link: LinkConfig) {
        self.default_link = link;
    }

    // ---- faults: partitions ----------------------------------------------

    /// Cuts every link between a node of `a` and a node of `b`, both ways:
    /// messages between the groups are dropped when sent and, if already in
    /// flight, when due. A node in both groups keeps its link to itself.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for (x, y) in pairs(a, b) {
            self.cut.insert(x, y, ());
            self.cut.insert(y, x, ());
        }
    }

    /// Cuts the directed link `from -> to` only: `to` still reaches `from`.
    pub fn partition_one_way(&mut self, from: &NodeId, to: &NodeId) {
        self.cut.insert(from, to, ());
    }

    /// Undoes [`partition`](Network::partition) between `a` and `b`, both ways.
    pub fn repair(&mut self, a: &[NodeId], b: &[NodeId]) {
        for (x, y) in pairs(a, b) {
            self.cut.remove(x, y);
            self.cut.remove(y, x);
        }
    }

    /// Undoes a cut of the directed link `from -> to`.
    pub fn repair_one_way(&mut self, from: &NodeId, to: &NodeId) {
        self.cut.remove(from, to);
    }

    /// Cuts `node` from every other node, including nodes not seen yet,
    /// until [`rejoin`](Network::rejoin) or [`heal`](Network::heal).
    pub fn isolate(&mut self, node: &NodeId) {
        self.isolated.insert(node.clone());
    }

    /// Undoes [`isolate`](Network::isolate); cuts made by `partition` stay.
    pub fn rejoin(&mut self, node: &NodeId) {
        self.isolated.remove(node);
    }

    /// Removes every partition and isolation. Holds and clogs stay: see
    /// [`release_all`](Network::release_all).
    pub fn heal(&mut self) {
        self.cut.clear();
        self.isolated.clear();
    }

    // ---- faults: holds and clogs -------------------------------------------

    /// Holds the directed link `from -> to`: copies sent on it, and copies in
    /// flight on it when they fall due, wait until [`release`](Network::release).
    /// Loss and duplication are still decided at send time.
    pub fn hold(&mut self, from: &NodeId, to: &NodeId) {
        self.holds.insert(from, to, ());
    }

    /// Releases the link `from -> to`: its waiting copies (unless a clog still
    /// holds them) are scheduled at `now` plus the link's latency, in the
    /// order they were sent, without jitter.
    pub fn release(&mut self, now: Timestamp, from: &NodeId, to: &NodeId) {
        self.holds.remove(from, to);
        self.flush_held(now);
    }

    /// Clogs `node` (FoundationDB's "swizzle-clog"): every message between it
    /// and another node waits, as with [`hold`](Network::hold), until
    /// [`unclog`](Network::unclog). Its link to itself still flows.
    pub fn clog(&mut self, node: &NodeId) {
        self.clogged.insert(node.clone());
    }

    /// Unclogs `node`: its waiting copies flow as after [`release`](Network::release).
    pub fn unclog(&mut self, now: Timestamp, node: &NodeId) {
        self.clogged.remove(node);
        self.flush_held(now);
    }

    /// Removes every hold and clog, and lets every waiting copy flow.
    pub fn release_all(&mut self, now: Timestamp) {
        self.holds.clear();
        self.clogged.clear();
        self.flush_held(now);
    }

    // ---- faults: crashes -------------------------------------------------

    /// Drops every copy in flight (scheduled or held) to `node`, as when it
    /// crashes: what was on its way to it is lost. Copies it sent still
    /// arrive. Returns the number of copies dropped.
    pub fn drop_in_flight_to(&mut self, node: &NodeId) -> usize {
        let before = self.in_flight();
        let mut freed = 0u64;
        let mut keep = |p: &Packet<M>| {
            let keep = p.to != *node;
            if !keep {
                freed += bytes(p.size_bytes);
            }
            keep
        };
        self.scheduled.retain(|_, p| keep(p));
        self.held.retain(|_, p| keep(p));
        let dropped = before - self.in_flight();
        self.in_flight_bytes -= freed;
        self.stats.dropped.crash += dropped as u64;
        dropped
    }

    // ---- invariants ------------------------------------------------------

    /// Checks every structural invariant and bound; panics with a description
    /// of the first broken one. O(n log n): for tests and the simulator.
    #[cfg(any(test, debug_assertions, feature = "invariants"))]
    pub fn check_invariants(&self) {
        let s = self.stats();
        let accounted = s.delivered + s.dropped.total() + s.in_flight as u64;
        assert_eq!(s.sent + s.duplicated, accounted, "every copy is accounted for");
        assert!(s.in_flight <= self.limits.in_flight_messages_max.get(), "messages bounded");
        assert!(self.in_flight_bytes <= self.limits.in_flight_bytes_max.get(), "bytes bounded");
        assert!(s.in_flight <= s.in_flight_max, "high-water mark");
        let sizes = self.scheduled.values().chain(self.held.values()).map(|p| bytes(p.size_bytes));
        assert_eq!(sizes.sum::<u64>(), self.in_flight_bytes, "bytes in flight");
        assert!(self.last_delivery <= self.clock, "deliveries are not in the future");
        let mut seqs = BTreeSet::new();
        for &(at, seq) in self.scheduled.keys() {
            assert!(at >= self.last_delivery, "copy {seq} due before the latest delivery");
            assert!(seq < self.next_seq, "sequence number {seq} was issued");
            assert!(seqs.insert(seq), "sequence number {seq} is unique");
        }
        for (&seq, p) in &self.held {
            assert!(self.is_held(&p.from, &p.to), "held copy {seq} is on a held link");
            assert!(seqs.insert(seq), "sequence number {seq} is unique");
        }
    }

    // ---- internals -------------------------------------------------------

    /// Clamps `now` to the latest time seen and remembers it: time does not
    /// go backwards.
    fn observe(&mut self, now: Timestamp) -> Timestamp {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// Draws the delay of one copy, then holds or schedules it unless the
    /// in-flight bounds are reached. The draws come first, so that their
    /// number does not depend on holds or bounds. Returns whether the copy
    /// was accepted.
    fn enqueue(
        &mut self,
        now: Timestamp,
        link: &LinkConfig,
        rng: &mut SplitMix64,
        packet: Packet<M>,
    ) -> bool {
        let delay = delay(link, rng);
        let size = bytes(packet.size_bytes);
        let full = self.in_flight() >= self.limits.in_flight_messages_max.get();
        if full || self.in_flight_bytes.saturating_add(size) > self.limits.in_flight_bytes_max.get() {
            self.stats.dropped.count(DropCause::Overflow);
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight_bytes += size;
        if self.is_held(&packet.from, &packet.to) {
            self.held.insert(seq, packet);
        } else {
            self.scheduled.insert((now.saturating_add(delay), seq), packet);
        }
        self.stats.in_flight_max = self.stats.in_flight_max.max(self.in_flight());
        true
    }

    /// Schedules every held copy whose link is no longer held, at `now` plus
    /// its link's latency, keeping its sequence number (and so its order).
    fn flush_held(&mut self, now: Timestamp) {
        let now = self.observe(now);
        let ready: Vec<u64> =
            self.held.iter().filter(|(_, p)| !self.is_held(&p.from, &p.to)).map(|(&seq, _)| seq).collect();
        for seq in ready {
            if let Some(packet) = self.held.remove(&seq) {
                let at = now.saturating_add(self.link(&packet.from, &packet.to).latency);
                self.scheduled.insert((at, seq), packet);
            }
        }
    }

    /// Accounts for a copy removed from the queues and dropped.
    fn forget(&mut self, packet: &Packet<M>, cause: DropCause) {
        self.in_flight_bytes -= bytes(packet.size_bytes);
        self.stats.dropped.count(cause);
    }

    /// Accounts for a copy removed from the queues and delivered.
    fn deliver(&mut self, at: Timestamp, packet: Packet<M>) -> Delivery<M> {
        let size = bytes(packet.size_bytes);
        self.in_flight_bytes -= size;
        self.stats.delivered += 1;
        self.stats.bytes_delivered = self.stats.bytes_delivered.saturating_add(size);
        self.last_delivery = at;
        let Packet { from, to, msg, size_bytes, sent_at } = packet;
        Delivery { from, to, msg, at, sent_at, size_bytes }
    }
}

/// The delay of one copy on `link`: latency, plus jitter drawn from
/// `0..=jitter`, plus `reorder_delay` with probability `reorder`.
fn delay(link: &LinkConfig, rng: &mut SplitMix64) -> Duration {
    let jitter = rng.below(millis(link.jitter).saturating_add(1));
    let reorder = if rng.chance(link.reorder.value()) { link.reorder_delay } else { Duration::ZERO };
    link.latency.saturating_add(Duration::from_millis(jitter)).saturating_add(reorder)
}

/// Every pair of distinct nodes with one node from each group.
fn pairs<'a>(a: &'a [NodeId], b: &'a [NodeId]) -> impl Iterator<Item = (&'a NodeId, &'a NodeId)> {
    a.iter().flat_map(move |x| b.iter().map(move |y| (x, y))).filter(|(x, y)| x != y)
}

/// A size in bytes as a counter value.
fn bytes(size: usize) -> u64 {
    u64::try_from(size).unwrap_or(u64::MAX)
}
