//! Provider side: registrations and the one batched heartbeat loop they share.
//!
//! Every [`Registration`] of a [`Client`] (and of its clones) is beaten by
//! one task, the beater, with one `PUT /v1/instances/beat {"beats": [...]}`
//! per round for all registrations due within half an interval of each
//! other. The beater owns the timing: each instance beats at the interval the
//! server gave it; a failed round is retried with jittered backoff (never
//! later than half an interval, so a recovered server hears from every
//! instance within one interval); instances the server calls unknown are
//! registered again at once. Persistent registrations (`ephemeral(false)`)
//! are in the same rounds: for them the beat is an existence check (a beat
//! changes nothing on a persistent instance), so a node that lost one (a
//! restart without storage, a failover inside the sync delay) gets it back
//! within one interval. When the client moves to another server, every
//! registration is asked about at once, in batched beats, and only what the
//! new server calls unknown is registered again. Re-registration sends the
//! registration's current state (weight, enabled, metadata after any
//! update), so it restores exactly what the provider asked for. Logs: one
//! summary line per re-registration round, never one per instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::Client;
use super::error::Error;
use super::model::{BeatAnswer, BeatOutcome, InstanceRef, InstanceSpec, InstanceUpdate, Key, Registered};
use super::pool::{Call, Pool, backoff, jitter, later};
use super::runtime;

/// Most keys in one heartbeat request (servers accept 10000 by default).
const BATCH_MAX: usize = 500;
/// Re-registrations in flight at once.
const REREGISTER_CONCURRENCY: usize = 16;
/// First retry of a failed heartbeat round; doubles up to the interval.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Re-registrations of one instance in a row while updates race with them.
const REREGISTER_ROUNDS_MAX: u32 = 3;

/// A registered instance that stays registered while the handle lives.
///
/// The client heartbeats it (or, if persistent, checks that the server
/// still has it) at the interval the server gives, registers it again at
/// once when a server does not know it (a restarted node, or a server the
/// client moved to that lacks it), and keeps its weight, enabled flag and
/// metadata as last set through [`update`](Self::update). [`close`](Self::close)
/// deregisters it; dropping the handle deregisters it in the background, best
/// effort (if the runtime stops first, the instance expires by silence).
#[derive(Debug)]
pub struct Registration {
    client: Client,
    entry: Arc<Entry>,
    closed: bool,
}

/// One registration as the beater sees it.
#[derive(Debug)]
pub(crate) struct Entry {
    id: u64,
    key: Key,
    instance_id: String,
    /// What a (re-)registration sends: the latest state the provider asked for.
    body: Mutex<RegisterBody>,
    /// Bumped on every update, so a re-registration racing with an update
    /// sends again.
    version: AtomicU64,
    interval_ms: AtomicU64,
    reregistrations: AtomicU64,
    /// The first registration created the instance (it was not there).
    created: bool,
}

impl Entry {
    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Acquire).max(1))
    }

    fn body(&self) -> RegisterBody {
        self.body.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The body of `POST /v1/instances`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RegisterBody {
    #[serde(flatten)]
    key: Key,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ephemeral: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

/// The body of `PATCH /v1/instances`.
#[derive(Serialize)]
struct UpdateBody<'a> {
    #[serde(flatten)]
    key: &'a Key,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct Beats<'a> {
    beats: Vec<&'a Key>,
}

impl Client {
    /// Registers an instance and keeps it registered while the returned
    /// handle lives (heartbeats, re-registration, deregistration on
    /// [`Registration::close`] or drop). Fails if no server accepts the first
    /// registration.
    pub async fn register(&self, spec: InstanceSpec) -> Result<Registration, Error> {
        let key = spec.key(&self.namespace, &self.group)?;
        spec.validate()?;
        let beater = self.beater()?;
        let body = RegisterBody {
            key: key.clone(),
            weight: spec.weight,
            enabled: spec.enabled,
            ephemeral: spec.ephemeral,
            metadata: spec.metadata,
        };
        let span = tracing::info_span!("muster_register", instance = %key);
        let call =
            Call::new(Method::POST, "/v1/instances", self.inner.settings.request_timeout).json(&body)?;
        let (registered, _) = self.inner.pool.json::<Registered>(&call).instrument(span).await?;
        tracing::info!(instance = %key, interval_ms = registered.heartbeat_interval_ms, "registered");
        let entry = Arc::new(Entry {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            instance_id: registered.instance_id,
            created: registered.created,
            key,
            body: Mutex::new(body),
            version: AtomicU64::new(0),
            interval_ms: AtomicU64::new(registered.heartbeat_interval_ms),
            reregistrations: AtomicU64::new(0),
        });
        // The beater lives as long as the client's sender, which this
        // registration's client clone keeps: the send cannot fail.
        let _ = beater.send(Cmd::Add(Arc::clone(&entry)));
        Ok(Registration { client: self.clone(), entry, closed: false })
    }

    /// Registers an instance once, without heartbeats: an ephemeral instance
    /// registered so expires unless something beats it ([`Client::beat`]).
    pub async fn register_once(&self, spec: InstanceSpec) -> Result<Registered, Error> {
        let key = spec.key(&self.namespace, &self.group)?;
        spec.validate()?;
        let body = RegisterBody {
            key,
            weight: spec.weight,
            enabled: spec.enabled,
            ephemeral: spec.ephemeral,
            metadata: spec.metadata,
        };
        let call =
            Call::new(Method::POST, "/v1/instances", self.inner.settings.request_timeout).json(&body)?;
        Ok(self.inner.pool.json::<Registered>(&call).await?.0)
    }

    /// Sends one heartbeat for an instance.
    pub async fn beat(&self, instance: &InstanceRef) -> Result<BeatOutcome, Error> {
        let answer = self.beat_answer(instance).await?;
        Ok(if answer.unknown.is_empty() {
            BeatOutcome::Alive { heartbeat_interval: Duration::from_millis(answer.heartbeat_interval_ms) }
        } else {
            BeatOutcome::Unknown
        })
    }

    /// One heartbeat, and the server's answer as it is.
    pub(crate) async fn beat_answer(&self, instance: &InstanceRef) -> Result<BeatAnswer, Error> {
        let key = instance.key(&self.namespace, &self.group)?;
        let call = Call::new(Method::PUT, "/v1/instances/beat", self.inner.settings.request_timeout)
            .json(&Beats { beats: vec![&key] })?;
        Ok(self.inner.pool.json::<BeatAnswer>(&call).await?.0)
    }

    /// Deregisters an instance (`NotFound` if the server does not know it);
    /// returns its instance id.
    pub async fn deregister(&self, instance: &InstanceRef) -> Result<String, Error> {
        let key = instance.key(&self.namespace, &self.group)?;
        deregister(&self.inner.pool, &key, self.inner.settings.request_timeout).await
    }

    /// Changes an instance's weight, enabled flag or metadata.
    pub async fn update(&self, instance: &InstanceRef, update: &InstanceUpdate) -> Result<(), Error> {
        let key = instance.key(&self.namespace, &self.group)?;
        update.validate()?;
        patch(&self.inner.pool, &key, update, self.inner.settings.request_timeout).await
    }

    /// The beater's command channel, starting the beater on first use.
    fn beater(&self) -> Result<mpsc::UnboundedSender<Cmd>, Error> {
        let mut slot = self.inner.beater.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = slot.as_ref() {
            return Ok(tx.clone());
        }
        let handle = runtime::handle()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let beater = Beater::new(Arc::clone(&self.inner.pool), rx, self.inner.settings.request_timeout);
        handle.spawn(beater.run().instrument(tracing::info_span!("muster_heartbeats")));
        *slot = Some(tx.clone());
        Ok(tx)
    }
}

impl Registration {
    /// The server's id of the instance, `ip#port#cluster`.
    pub fn instance_id(&self) -> &str {
        &self.entry.instance_id
    }

    /// The heartbeat interval the server asked for.
    pub fn heartbeat_interval(&self) -> Duration {
        self.entry.interval()
    }

    /// Whether the first registration created the instance (`false`: it was
    /// there and got updated).
    pub fn created(&self) -> bool {
        self.entry.created
    }

    /// Whether the instance is persistent (checked, not beaten).
    pub fn persistent(&self) -> bool {
        self.entry.body.lock().unwrap_or_else(PoisonError::into_inner).ephemeral == Some(false)
    }

    /// How many times the instance was registered again (after a server
    /// forgot it or the client moved to another server).
    pub fn reregistrations(&self) -> u64 {
        self.entry.reregistrations.load(Ordering::Acquire)
    }

    /// Sets the weight (0 to 10000).
    pub async fn set_weight(&self, weight: f64) -> Result<(), Error> {
        self.update(InstanceUpdate::default().weight(weight)).await
    }

    /// Sets whether the instance takes traffic.
    pub async fn set_enabled(&self, enabled: bool) -> Result<(), Error> {
        self.update(InstanceUpdate::default().enabled(enabled)).await
    }

    /// Replaces the metadata.
    pub async fn set_metadata(&self, metadata: BTreeMap<String, String>) -> Result<(), Error> {
        self.update(InstanceUpdate::default().metadata(metadata)).await
    }

    /// Changes weight, enabled flag or metadata. The handle keeps the new
    /// state even if no server can be reached now: the next re-registration
    /// carries it. A server that lost the instance gets it registered again
    /// with the new state.
    pub async fn update(&self, update: InstanceUpdate) -> Result<(), Error> {
        update.validate()?;
        {
            let mut body = self.entry.body.lock().unwrap_or_else(PoisonError::into_inner);
            body.weight = update.weight.or(body.weight);
            body.enabled = update.enabled.or(body.enabled);
            if let Some(m) = &update.metadata {
                body.metadata.clone_from(m);
            }
            self.entry.version.fetch_add(1, Ordering::AcqRel);
        }
        let pool = &self.client.inner.pool;
        let timeout = self.client.inner.settings.request_timeout;
        match patch(pool, &self.entry.key, &update, timeout).await {
            Err(e @ Error::NotFound { .. }) => {
                // The server lost the instance: register it again, with the new state.
                if reregister(pool, &self.entry, timeout).await { Ok(()) } else { Err(e) }
            }
            other => other,
        }
    }

    /// Stops heartbeats and deregisters the instance. An instance the server
    /// no longer knows counts as deregistered.
    pub async fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        let (tx, rx) = oneshot::channel();
        let sent = self.client.beater().map(|b| b.send(Cmd::Remove { id: self.entry.id, reply: Some(tx) }));
        if matches!(sent, Ok(Ok(()))) {
            if let Ok(result) = rx.await {
                return result;
            }
        }
        let inner = &self.client.inner;
        ignore_not_found(deregister(&inner.pool, &self.entry.key, inner.settings.request_timeout).await)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let slot = self.client.inner.beater.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = slot.as_ref() {
            let _ = tx.send(Cmd::Remove { id: self.entry.id, reply: None });
        }
    }
}

/// What registrations tell the beater.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Beat this one from now on.
    Add(Arc<Entry>),
    /// Stop beating it and deregister it; the result goes to `reply`.
    Remove { id: u64, reply: Option<oneshot::Sender<Result<(), Error>>> },
}

struct Slot {
    entry: Arc<Entry>,
    due: Instant,
}

/// The task that beats every registration of a client.
struct Beater {
    pool: Arc<Pool>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    timeout: Duration,
    slots: HashMap<u64, Slot>,
    /// The pool's switch count at the last round: a change means the client
    /// moved to another server.
    seen_switches: u64,
    /// Failed rounds in a row.
    failures: u32,
    /// Deregistrations in flight, awaited before the task ends.
    pending: JoinSet<()>,
}

impl Beater {
    fn new(pool: Arc<Pool>, rx: mpsc::UnboundedReceiver<Cmd>, timeout: Duration) -> Beater {
        let seen_switches = pool.switches();
        Beater {
            pool,
            rx,
            timeout,
            slots: HashMap::new(),
            seen_switches,
            failures: 0,
            pending: JoinSet::new(),
        }
    }

    /// Runs until every handle and the client are gone, then finishes the
    /// deregistrations in flight.
    async fn run(mut self) {
        loop {
            let next_due = self.slots.values().map(|s| s.due).min();
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                () = sleep_until(next_due), if next_due.is_some() => self.round().await,
                Some(_) = self.pending.join_next(), if !self.pending.is_empty() => {}
            }
        }
        while self.pending.join_next().await.is_some() {}
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(entry) => {
                let due = later(Instant::now(), entry.interval());
                self.slots.insert(entry.id, Slot { entry, due });
            }
            Cmd::Remove { id, reply } => {
                let Some(slot) = self.slots.remove(&id) else { return };
                let (pool, timeout) = (Arc::clone(&self.pool), self.timeout);
                let span = tracing::info_span!("muster_deregister", instance = %slot.entry.key);
                self.pending.spawn(
                    async move {
                        let result = ignore_not_found(deregister(&pool, &slot.entry.key, timeout).await);
                        match &result {
                            Ok(()) => tracing::info!("deregistered"),
                            Err(e) => tracing::warn!(error = %e, "deregistration failed; the instance expires by silence"),
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// One heartbeat round: every registration due within half the shortest
    /// interval, in batches.
    async fn round(&mut self) {
        let now = Instant::now();
        let slack = self.slots.values().map(|s| s.entry.interval()).min().unwrap_or_default() / 2;
        let mut due: Vec<Arc<Entry>> = self
            .slots
            .values()
            .filter(|s| s.due <= later(now, slack))
            .map(|s| Arc::clone(&s.entry))
            .collect();
        due.sort_by_key(|e| e.id);
        for batch in due.chunks(BATCH_MAX) {
            self.beat_batch(batch).await;
        }
    }

    async fn beat_batch(&mut self, batch: &[Arc<Entry>]) {
        let beats = Beats { beats: batch.iter().map(|e| &e.key).collect() };
        let result = match Call::new(Method::PUT, "/v1/instances/beat", self.timeout).json(&beats) {
            Ok(call) => self.pool.json::<BeatAnswer>(&call).await,
            Err(e) => Err(e),
        };
        let now = Instant::now();
        match result {
            Ok((answer, server)) => {
                if self.failures > 0 {
                    tracing::info!(
                        server = self.pool.addr(server),
                        failed_rounds = self.failures,
                        "heartbeats arrive again"
                    );
                }
                self.failures = 0;
                for e in batch {
                    self.set_due(e.id, later(now, e.interval()));
                }
                let switches = self.pool.switches();
                if switches != self.seen_switches {
                    // Moved to another server: ask it about every
                    // registration now (the next round, batched); only what
                    // it lacks is registered again.
                    self.seen_switches = switches;
                    for slot in self.slots.values_mut() {
                        slot.due = now;
                    }
                }
                let again: Vec<Arc<Entry>> =
                    answer.unknown.iter().filter_map(|&i| batch.get(i)).map(Arc::clone).collect();
                if !again.is_empty() {
                    reregister_all(&self.pool, again, self.timeout, self.pool.addr(server)).await;
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let shortest = batch.iter().map(|e| e.interval()).min().unwrap_or(RETRY_MIN);
                // Capped at half an interval: a server that comes back (even
                // one that forgot everything) hears from every instance
                // within one interval.
                let retry = jitter(backoff(RETRY_MIN, (shortest / 2).max(RETRY_MIN), self.failures));
                if self.failures == 1 {
                    tracing::warn!(error = %e, instances = batch.len(), "heartbeat failed; retrying with backoff");
                } else {
                    tracing::debug!(error = %e, retry_ms = retry.as_millis() as u64, "heartbeat failed again");
                }
                for e in batch {
                    self.set_due(e.id, later(now, retry));
                }
            }
        }
    }

    fn set_due(&mut self, id: u64, due: Instant) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.due = due;
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Registers `entries` (that `server` called unknown) again, a few at a
/// time, waits for all, and logs one line.
async fn reregister_all(pool: &Arc<Pool>, entries: Vec<Arc<Entry>>, timeout: Duration, server: &str) {
    let total = entries.len();
    let mut done = 0usize;
    let mut set = JoinSet::new();
    for entry in entries {
        while set.len() >= REREGISTER_CONCURRENCY {
            done += usize::from(matches!(set.join_next().await, Some(Ok(true))));
        }
        let pool = Arc::clone(pool);
        set.spawn(async move { reregister(&pool, &entry, timeout).await });
    }
    while let Some(r) = set.join_next().await {
        done += usize::from(matches!(r, Ok(true)));
    }
    if done == total {
        tracing::info!(server, instances = total, "the server lacked some instances: registered them again");
    } else {
        tracing::warn!(
            server,
            registered = done,
            failed = total - done,
            "the server lacked some instances; not all could be registered again (the next round retries)"
        );
    }
}

/// Registers one entry again with its current state; `false` if it failed
/// (the next heartbeat round tries again).
async fn reregister(pool: &Pool, entry: &Entry, timeout: Duration) -> bool {
    for _ in 0..REREGISTER_ROUNDS_MAX {
        let version = entry.version.load(Ordering::Acquire);
        let call = match Call::new(Method::POST, "/v1/instances", timeout).json(&entry.body()) {
            Ok(call) => call,
            Err(e) => {
                tracing::error!(instance = %entry.key, error = %e, "cannot encode the registration");
                return false;
            }
        };
        match pool.json::<Registered>(&call).await {
            Ok((registered, server)) => {
                entry.interval_ms.store(registered.heartbeat_interval_ms, Ordering::Release);
                entry.reregistrations.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(instance = %entry.key, server = pool.addr(server), "registered again");
                if entry.version.load(Ordering::Acquire) == version {
                    return true;
                }
            }
            Err(e) => {
                tracing::debug!(instance = %entry.key, error = %e, "registering again failed; the next heartbeat retries");
                return false;
            }
        }
    }
    true
}

/// `DELETE /v1/instances`; the instance id the server echoes.
async fn deregister(pool: &Pool, key: &Key, timeout: Duration) -> Result<String, Error> {
    #[derive(serde::Deserialize)]
    struct Deregistered {
        instance_id: String,
    }
    let call = Call::new(Method::DELETE, format!("/v1/instances?{}", key.query()), timeout);
    Ok(pool.json::<Deregistered>(&call).await?.0.instance_id)
}

async fn patch(pool: &Pool, key: &Key, update: &InstanceUpdate, timeout: Duration) -> Result<(), Error> {
    let body = UpdateBody {
        key,
        weight: update.weight,
        enabled: update.enabled,
        metadata: update.metadata.as_ref(),
    };
    let call = Call::new(Method::PATCH, "/v1/instances", timeout).json(&body)?;
    pool.json::<serde_json::Value>(&call).await.map(|_| ())
}

fn ignore_not_found(result: Result<String, Error>) -> Result<(), Error> {
    match result {
        Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
