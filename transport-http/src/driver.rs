//! The driver: one task owns the [`Node`] and feeds it the clock, client
//! commands, peer messages and timeouts, then drains its outputs.
//!
//! Shaped like quinn's `drive_timer`: one timer, re-armed at
//! [`Node::poll_timeout`]; expiry is judged by the clock, not by the timer
//! having fired. Every input is followed by a full drain of
//! [`Node::poll_transmit`] (into the per-peer queues) and [`Node::poll_event`];
//! each turn of the loop takes at most [`BATCH_MAX`] inputs and
//! [`TIMEOUTS_MAX`] timeout rounds, so neither clients, peers nor timers can
//! starve the others.
//!
//! Views of changed services that clients read (see `snapshot.rs`) are
//! published at the end of a turn, before the turn's answers are sent, so a
//! client that reads after its write sees it.
//! A view costs O(instances) to rebuild, so publication is held to half of
//! the driver's time: after a round that took `P` (at most about
//! [`PUBLISH_SLICE`]), the next starts no sooner than `P` later, and the
//! changes meanwhile are coalesced. On an idle or moderately busy node `P` is
//! microseconds and every turn publishes; on a saturated one reads may trail
//! writes by a few milliseconds (services first changed first), and watches
//! still see every change.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_core::message::encode;
use muster_core::{
    Event, MemberView, Node, NodeId, NodeStats, PeerMessage, Reply, Request, RequestError, ServiceKey,
    ServiceUpdate, ServiceView, Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::checker::{CheckOutcome, Checker};
use crate::clock::Clock;
use crate::driver::durable::Durable;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::snapshot::{Dirty, Snapshots};

pub(crate) mod durable;

/// Most inputs taken in one turn of the loop.
const BATCH_MAX: usize = 256;
/// Most `handle_timeout` calls in one turn of the loop.
const TIMEOUTS_MAX: usize = 16;
/// Longest publication round (plus one view): the rest waits for the next.
const PUBLISH_SLICE: Duration = Duration::from_millis(2);
/// Longest pause between two turns while the ephemeral log is compacted.
const COMPACT_TURN: Duration = Duration::from_millis(2);

/// What the node looks like now, for metrics and the cluster view.
#[derive(Clone, Debug)]
pub(crate) struct Status {
    pub(crate) stats: NodeStats,
    pub(crate) members: Vec<MemberView>,
    pub(crate) now: Timestamp,
    pub(crate) ready: bool,
    pub(crate) brake_engaged: bool,
}

type Answer = oneshot::Sender<Result<Reply, RequestError>>;

/// A loaded view and, for a watch, the receiver of its later views (`None`
/// when the watch of an unknown service is over the limit).
pub(crate) type Loaded = (Arc<ServiceView>, Option<watch::Receiver<Arc<crate::snapshot::Published>>>);

/// A client command for the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Any core request.
    Request(Request, Answer),
    /// Update a service's settings, creating the service if it does not exist.
    PutService(ServiceKey, ServiceUpdate, Answer),
    /// The node's status.
    Status(oneshot::Sender<Status>),
    /// Publish a service's view (first read or watch) and answer with it
    /// (and, for a watch, a receiver of its views; see `Snapshots::insert`).
    LoadView(ServiceKey, bool, oneshot::Sender<Loaded>),
    /// A core request made from the console (its history says "console").
    ConsoleRequest(Request, Answer),
    /// Read the node (the console's getters); the closure answers itself.
    Inspect(Inspect),
}

/// A read of the node for the console, run by the driver between inputs.
pub(crate) struct Inspect(pub(crate) InspectFn);

/// The read an [`Inspect`] runs.
pub(crate) type InspectFn = Box<dyn FnOnce(&Node, Timestamp) + Send>;

impl std::fmt::Debug for Inspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspect")
    }
}

/// A decoded message from a peer.
#[derive(Debug)]
pub(crate) struct PeerInput {
    pub(crate) from: NodeId,
    pub(crate) msg: PeerMessage,
}

/// The handlers' end of the driver's channels.
#[derive(Clone, Debug)]
pub(crate) struct DriverHandle {
    commands: mpsc::Sender<Command>,
    peer: mpsc::Sender<PeerInput>,
}

impl DriverHandle {
    fn send(&self, cmd: Command) -> Result<(), ApiError> {
        self.commands.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::overloaded(),
            mpsc::error::TrySendError::Closed(_) => ApiError::shutting_down(),
        })
    }

    /// Runs a core request.
    pub(crate) async fn request(&self, req: Request) -> Result<Reply, ApiError> {
        let (tx, rx) = oneshot::channel();
        if crate::console::from_console() {
            self.send(Command::ConsoleRequest(req, tx))?;
        } else {
            self.send(Command::Request(req, tx))?;
        }
        rx.await.map_err(|_| ApiError::shutting_down())?.map_err(ApiError::from)
    }

    /// Updates or creates a service.
    pub(crate) async fn put_service(&self, key: ServiceKey, upd: ServiceUpdate) -> Result<Reply, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::PutService(key, upd, tx))?;
        rx.await.map_err(|_| ApiError::shutting_down())?.map_err(ApiError::from)
    }

    /// Publishes a service's view, which the driver keeps fresh from then
    /// on, and returns it. `watched`: keep it published even while the node
    /// does not know the service.
    pub(crate) async fn load_view(&self, key: ServiceKey, watched: bool) -> Result<Loaded, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::LoadView(key, watched, tx))?;
        rx.await.map_err(|_| ApiError::shutting_down())
    }

    /// Runs `f` on the node in the driver and returns what it returns.
    pub(crate) async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node, Timestamp) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Inspect(Inspect(Box::new(move |node, now| {
            let _ = tx.send(f(node, now));
        }))))?;
        rx.await.map_err(|_| ApiError::shutting_down())
    }

    /// The node's status.
    pub(crate) async fn status(&self) -> Result<Status, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx))?;
        rx.await.map_err(|_| ApiError::shutting_down())
    }

    /// Hands a peer message to the driver without waiting for it.
    pub(crate) fn peer_message(&self, input: PeerInput) -> Result<(), ApiError> {
        self.peer.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::overloaded(),
            mpsc::error::TrySendError::Closed(_) => ApiError::shutting_down(),
        })
    }
}

/// The task that owns the node.
pub(crate) struct Driver {
    node: Node,
    clock: Clock,
    commands: mpsc::Receiver<Command>,
    peer: mpsc::Receiver<PeerInput>,
    peers: Arc<Peers>,
    snapshots: Arc<Snapshots>,
    metrics: Arc<Metrics>,
    /// Services whose views changed since the last publication.
    dirty: Dirty,
    /// The node became ready; published after the views.
    became_ready: bool,
    /// `NodeStats::events_dropped` at the last drain.
    events_dropped: u64,
    /// The earliest start of the next publication round.
    publish_at: Instant,
    /// Answers held until the turn's views are published, so that a client
    /// reads its own write from the snapshot (unless publication is behind).
    replies: Vec<(Answer, Result<Reply, RequestError>)>,
    /// Performs the core's active health checks.
    checker: Checker,
    check_outcomes: mpsc::Receiver<CheckOutcome>,
    /// The console's history and change signal, if it has one.
    console: Option<Arc<crate::console::Console>>,
    /// The input being handled came from the console.
    console_input: bool,
    /// The durable output and the replies waiting for it (`None`: memory only).
    durable: Option<Durable>,
}

impl Driver {
    /// A driver and the handle the handlers talk to it through.
    pub(crate) fn new(
        node: Node,
        clock: Clock,
        queue: usize,
        peers: Arc<Peers>,
        snapshots: Arc<Snapshots>,
        metrics: Arc<Metrics>,
        http: &crate::config::HttpSettings,
    ) -> (Driver, DriverHandle) {
        let (checker, check_outcomes) = Checker::new(http, Arc::clone(&metrics));
        let (ctx, crx) = mpsc::channel(queue);
        let (ptx, prx) = mpsc::channel(queue);
        let driver = Driver {
            node,
            clock,
            commands: crx,
            peer: prx,
            peers,
            snapshots,
            metrics,
            dirty: Dirty::default(),
            became_ready: false,
            events_dropped: 0,
            publish_at: Instant::now(),
            replies: Vec::new(),
            checker,
            check_outcomes,
            console: None,
            console_input: false,
            durable: None,
        };
        (driver, DriverHandle { commands: ctx, peer: ptx })
    }

    /// Feeds the console's history and change signal from the node's events.
    pub(crate) fn with_console(mut self, console: Arc<crate::console::Console>) -> Driver {
        self.node.set_instance_events(console.history_enabled());
        self.console = Some(console);
        self
    }

    /// Gives the driver the node's durable output (see `driver/durable.rs`).
    pub(crate) fn with_durable(mut self, durable: Option<Durable>) -> Driver {
        self.durable = durable;
        self
    }

    /// Runs until `stop` turns true, then flushes pending sync to the peer
    /// queues.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.drain();
        self.publish(false);
        let sleep = tokio::time::sleep_until(self.next_wake());
        tokio::pin!(sleep);
        loop {
            self.run_timers();
            self.publish(false);
            sleep.as_mut().reset(self.next_wake());
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = &mut sleep => {}
                Some(input) = self.peer.recv() => self.on_peer(input),
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(outcome) = self.check_outcomes.recv() => self.on_check(outcome),
                else => break,
            }
            self.take_batch();
        }
        // Graceful shutdown: the server has answered its in-flight requests.
        // Answer whatever is still queued, then send every pending change now.
        self.take_batch();
        let now = self.clock.now();
        self.node.flush(now);
        self.drain();
        self.publish(true);
        if let Some(d) = self.durable.take() {
            d.stop(&self.node);
        }
        tracing::info!(node = %self.node.id(), "driver stopped; pending sync flushed");
    }

    /// The next core timeout, or the next publication round if one waits.
    fn next_wake(&self) -> Instant {
        let timeout = self.clock.instant_at(self.node.poll_timeout().map_or(Timestamp::MAX, |(t, _)| t));
        let timeout = if self.dirty.is_empty() { timeout } else { timeout.min(self.publish_at) };
        if self.durable.as_ref().is_some_and(Durable::compacting) {
            // A page of the ephemeral log's compaction per turn, idle or not.
            timeout.min(Instant::now() + COMPACT_TURN)
        } else {
            timeout
        }
    }

    /// Tells the node which peers refuse it as not one of theirs (it stays
    /// not ready while every peer does; issue 9, 6).
    fn take_refusals(&mut self) {
        let now = self.clock.now();
        for (peer, refused) in self.peers.refusals() {
            if self.node.handle_membership_refusal(now, &peer, refused) {
                tracing::error!(
                    node = %self.node.id(),
                    peer = %peer,
                    refused,
                    "a peer {} this node's --advertise address; while every peer refuses it, the node stays \
                     not ready: list it in every peer's --peers",
                    if refused { "refuses" } else { "accepts again" }
                );
            }
        }
    }

    /// Handles every due timeout by the clock, a bounded number of rounds.
    fn run_timers(&mut self) {
        self.take_refusals();
        for _ in 0..TIMEOUTS_MAX {
            let now = self.clock.now();
            match self.node.poll_timeout() {
                Some((t, _)) if t <= now => {
                    self.node.handle_timeout(now);
                    self.drain();
                }
                _ => return,
            }
        }
    }

    /// Takes queued inputs without waiting, alternating peers and clients.
    fn take_batch(&mut self) {
        for _ in 0..BATCH_MAX {
            let mut took = false;
            if let Ok(input) = self.peer.try_recv() {
                self.on_peer(input);
                took = true;
            }
            if let Ok(cmd) = self.commands.try_recv() {
                self.on_command(cmd);
                took = true;
            }
            if !took {
                return;
            }
        }
    }

    fn on_peer(&mut self, input: PeerInput) {
        let now = self.clock.now();
        self.metrics.count_message_in(&input.msg);
        let kind = input.msg.kind();
        if let Err(e) = self.node.handle_message(now, &input.from, input.msg) {
            self.metrics.peer_messages_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %input.from, kind, error = %e, "peer message refused");
        }
        self.drain();
    }

    fn on_check(&mut self, outcome: CheckOutcome) {
        let now = self.clock.now();
        self.node.handle_health_check(now, &outcome.key, outcome.passed);
        self.drain();
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.clock.now();
        match cmd {
            Command::Request(req, tx) => {
                let write = durable::is_write(&req);
                let result = self.node.handle_request(now, req);
                self.drain();
                self.reply(write, tx, result);
            }
            Command::PutService(key, upd, tx) => {
                let result = self.node.handle_request(now, Request::PutService(key, upd));
                self.drain();
                self.reply(true, tx, result);
            }
            Command::ConsoleRequest(req, tx) => {
                let write = durable::is_write(&req);
                self.console_input = true;
                let result = self.node.handle_request(now, req);
                self.drain();
                self.console_input = false;
                self.reply(write, tx, result);
            }
            Command::Inspect(Inspect(f)) => f(&self.node, now),
            Command::LoadView(key, watched, tx) => {
                let view = self.node.service_view(&key);
                let rx = self.snapshots.insert(Arc::clone(&view), watched);
                let _ = tx.send((view, rx));
            }
            Command::Status(tx) => {
                let _ = tx.send(Status {
                    stats: self.node.stats(),
                    members: self.node.members(),
                    now,
                    ready: self.node.is_ready(),
                    brake_engaged: self.node.brake_engaged(),
                });
            }
        }
    }

    /// Queues a reply for the end of the turn, or for the commit of its
    /// writes if it must wait for the disk.
    fn reply(&mut self, write: bool, tx: Answer, result: Result<Reply, RequestError>) {
        let held = match self.durable.as_mut() {
            Some(d) => d.hold(write, (tx, result)),
            None => Some((tx, result)),
        };
        self.replies.extend(held);
    }

    /// Drains the node's outputs: messages to the peer queues, writes for
    /// the disk, events to watchers, readiness, logs and metrics.
    fn drain(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            self.metrics.count_message_out(&t.msg);
            let frame = encode(self.node.id(), &t.msg);
            self.peers.send(&t.to, frame);
        }
        if let Some(d) = self.durable.as_mut() {
            d.drain(&mut self.node);
        }
        while let Some(event) = self.node.poll_event() {
            self.on_event(event);
        }
        if let Some(console) = &self.console {
            console.flush();
        }
        while let Some(check) = self.node.poll_health_check() {
            self.checker.start(check);
        }
        let dropped = self.node.events_dropped();
        if dropped > self.events_dropped {
            self.events_dropped = dropped;
            self.republish_all();
        }
    }

    /// Marks every service changed: the event queue overflowed, so some
    /// `ServiceChanged` events were lost and published views may be stale.
    fn republish_all(&mut self) {
        tracing::warn!("core events were dropped; republishing every service view");
        self.dirty.extend(self.snapshots.keys());
    }

    fn on_event(&mut self, event: Event) {
        if matches!(event, Event::ServiceChanged(_)) {
            self.snapshots.changed();
        }
        if let Some(console) = &self.console {
            let wall_ms = self.node.config().wall_clock_ms;
            console.on_event(&event, wall_ms, self.console_input);
        }
        match event {
            // Only services someone reads have a view to refresh (see
            // snapshot.rs); the others are not even queued.
            Event::ServiceChanged(key) if self.snapshots.contains(&key) => {
                self.dirty.insert(key);
            }
            Event::ServiceChanged(_) => {}
            Event::PeerStateChanged(t) => {
                tracing::info!(peer = %t.peer, from = %t.from, to = %t.to, "peer state changed");
            }
            Event::Ready { loaded_from } => {
                self.became_ready = true;
                match loaded_from {
                    Some(peer) => tracing::info!(%peer, "registry loaded; node is ready"),
                    None => tracing::info!("node is ready (no peer had a registry to load)"),
                }
            }
            Event::BrakeEngaged { held } => {
                self.metrics.brake_engagements.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    held,
                    "expiry brake engaged: silent instances are marked unhealthy, not removed"
                );
            }
            Event::BrakeReleased => tracing::info!("expiry brake released"),
            Event::PauseDetected { gap } => {
                tracing::warn!(
                    gap_ms = gap.as_millis() as u64,
                    "clock pause detected; instances and peers get a fresh grace period"
                );
            }
            Event::SyncQueueOverflow { dropped } => {
                tracing::warn!(dropped, "sync queue overflowed; anti-entropy will repair the difference");
            }
            Event::InstanceChanged(_) => {}
            Event::PeerClock { peer, offset, skewed: true } => {
                tracing::warn!(
                    %peer,
                    offset_ms = offset.offset_ms,
                    uncertainty_ms = offset.uncertainty_ms(),
                    "peer's clock is further from this node's than max_clock_skew: its records ahead of this clock \
                     are refused; fix NTP on that host (or on this one, if most peers are flagged: see \
                     /v1/cluster/nodes)"
                );
            }
            Event::PeerClock { peer, offset, skewed: false } => {
                tracing::info!(%peer, offset_ms = offset.offset_ms, "peer's clock is within max_clock_skew again");
            }
            other => tracing::debug!(event = ?other, "core event"),
        }
    }

    /// Publishes the views of changed services (unless the last round was
    /// too recent, see the module doc; always when `force`), then readiness,
    /// then sends the turn's answers.
    fn publish(&mut self, force: bool) {
        // Readiness waits for every view loaded so far.
        let force = force || self.became_ready;
        let start = Instant::now();
        if !self.dirty.is_empty() && (force || start >= self.publish_at) {
            let mut views = Vec::new();
            while let Some(key) = self.dirty.pop() {
                // Only services someone has read are published (see snapshot.rs).
                if !self.snapshots.contains(&key) {
                    continue;
                }
                views.push(self.node.service_view(&key));
                if !force && start.elapsed() >= PUBLISH_SLICE {
                    break;
                }
            }
            self.snapshots.publish(views);
            let end = Instant::now();
            self.publish_at = end + end.duration_since(start);
        }
        if self.became_ready {
            self.became_ready = false;
            self.snapshots.set_ready(self.node.is_ready());
        }
        for (tx, result) in self.replies.drain(..) {
            let _ = tx.send(result);
        }
        if let Some(d) = self.durable.as_mut() {
            d.end_turn(&self.node);
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;

    fn status() -> Command {
        Command::Status(oneshot::channel().0)
    }

    fn ping() -> PeerInput {
        PeerInput {
            from: NodeId::parse("127.0.0.1:9").unwrap(),
            msg: PeerMessage::Ping { nonce: 1, sent_ms: 0 },
        }
    }

    #[test]
    fn a_full_request_queue_answers_overloaded_until_the_driver_takes_a_command() {
        let (commands, mut crx) = mpsc::channel(2);
        let (peer, _prx) = mpsc::channel(1);
        let handle = DriverHandle { commands, peer };
        handle.send(status()).unwrap();
        handle.send(status()).unwrap();
        let err = handle.send(status()).unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::SERVICE_UNAVAILABLE, "overloaded"));
        assert!(crx.try_recv().is_ok());
        handle.send(status()).unwrap();
        drop(crx);
        assert_eq!(handle.send(status()).unwrap_err().code, "shutting_down");
    }

    #[test]
    fn a_full_peer_queue_refuses_the_message_as_overloaded() {
        let (commands, _crx) = mpsc::channel(1);
        let (peer, mut prx) = mpsc::channel(1);
        let handle = DriverHandle { commands, peer };
        handle.peer_message(ping()).unwrap();
        let err = handle.peer_message(ping()).unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::SERVICE_UNAVAILABLE, "overloaded"));
        assert!(prx.try_recv().is_ok());
        handle.peer_message(ping()).unwrap();
    }
}
