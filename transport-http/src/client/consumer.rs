//! Consumer side: a local cache of instance lists kept fresh by watches,
//! subscriptions to it, and an optional snapshot on disk.
//!
//! The first [`Client::instances`] or [`Client::subscribe`] of a service
//! starts one watch task for it. The task watches `GET /v1/instances` with
//! the checksum of what it holds, so a change anywhere in the cluster
//! reaches it within milliseconds; the checksum is of content, so the watch
//! moves between servers with the client. It streams (`stream=true`: one
//! request carries every change until the watch wait ends), unless
//! `watch_streams(false)` says otherwise or a server refuses streams (an
//! older Muster), and long-polls during a recovery (below), whose every
//! wait must end with an answer to judge.
//!
//! Watches are bounded. One watch holds one connection (one file
//! descriptor) to one server, on connections of their own, so heartbeats
//! never wait behind them. A watch ends when [`Client::unwatch`] says so, when
//! its last [`Subscription`] is dropped and no lookup used it for
//! `watch_idle`, or, for a service only looked up with `instances` /
//! `choose`, after `watch_idle` without a lookup. At most `max_watches`
//! run at once: a new one replaces the least recently used watch that no
//! subscription holds; when every watch is subscribed, `instances` answers
//! from a plain query (uncached) and `subscribe` fails with
//! [`Error::TooManyWatches`]. A node's 429 (its watch table is full) makes
//! the watch retry later on the same node, not fail over. Two long polls of
//! one service start at least `min_poll_interval` apart, whatever the node
//! answers.
//!
//! Every answer is judged before it replaces the cached list:
//!
//! - errors never touch the cache: with every server down, the cache keeps
//!   answering with the last list;
//! - an empty answer with `known: false` comes from a server that holds no
//!   record of the service at all (it lost its memory: a restarted single
//!   node). The service was really emptied only when a server that knows it
//!   (it holds its tombstones, or instances) says it is empty;
//! - a recovery holds back the removal of instances that providers are
//!   expected to register again: after a forgetful answer, the cached
//!   ephemeral instances; after the watch moved to another server, the
//!   cached ephemeral instances that answer lacks and that this client first
//!   saw less than `replication_window` ago (older ones reached every node
//!   long since, so their absence is the new server's positive statement of a
//!   deregistration or expiry). The list shown is then the server's answer
//!   plus the held instances: every instance the server lists, with its
//!   health and weight, is taken at once. A held instance drops out when the
//!   server lists it again, and every hold ends at `recovery_grace`, after
//!   which the server's answer is the list.
//!
//! With a snapshot directory, every accepted list is written to
//! `DIR/namespace+group+service.json` (through a temporary file unique to
//! the writer, synced before the rename, so readers never see a partial
//! file); a consumer that starts while no server answers (or while the only
//! server has forgotten the service) starts from that file. A corrupt
//! snapshot is reported once per file, and a caller that needed it gets
//! [`Error::CorruptSnapshot`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use hyper::Method;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::Client;
use super::error::Error;
use super::model::{Instance, InstanceList, ServiceRef, encode};
use super::pool::{Call, Pool, backoff, jitter};
use super::runtime;

/// First retry of a failed watch; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest pause between watch attempts while no server answers.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Pause before watching again after a node's 429 (its watch table is full).
const FULL_RETRY: Duration = Duration::from_secs(2);
/// Shortest wait of a long poll (while waiting out a grace period).
const WAIT_MIN: Duration = Duration::from_millis(100);

/// What to ask with [`Client::query`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Only healthy, enabled instances (or all enabled ones past the protect
    /// threshold, as the answer then says).
    pub healthy_only: bool,
    /// Only these clusters; all when empty.
    pub clusters: Vec<String>,
}

/// How many watches a client runs and how long an unused one lives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WatchLimits {
    pub(crate) max: usize,
    pub(crate) idle: Duration,
}

type Services = Mutex<HashMap<ServiceRef, Arc<Watched>>>;

/// The watched services of a client.
#[derive(Debug)]
pub(crate) struct Consumer {
    services: Arc<Services>,
    limits: WatchLimits,
    reaping: AtomicBool,
}

impl Consumer {
    pub(crate) fn new(limits: WatchLimits) -> Consumer {
        Consumer { services: Arc::default(), limits, reaping: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceRef, Arc<Watched>>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the watches nobody used for the idle time, every `idle / 4`.
    fn start_reaper(&self, handle: &tokio::runtime::Handle) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let services = Arc::downgrade(&self.services);
        let idle = self.limits.idle;
        handle.spawn(reap(services, idle));
    }
}

async fn reap(services: Weak<Services>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
    loop {
        tokio::time::sleep(period).await;
        let Some(services) = services.upgrade() else { return };
        let mut map = services.lock().unwrap_or_else(PoisonError::into_inner);
        let before = map.len();
        map.retain(|_, w| {
            let keep = !w.unused_for(idle);
            if !keep {
                w.end();
            }
            keep
        });
        if map.len() < before {
            tracing::debug!(ended = before - map.len(), watching = map.len(), "idle watches ended");
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for watched in self.lock().values() {
            watched.end();
        }
    }
}

/// One watched service: its cache and its watch task.
#[derive(Debug)]
struct Watched {
    tx: watch::Sender<Shared>,
    task: JoinHandle<()>,
    /// Live subscriptions.
    subscribers: AtomicUsize,
    /// The last `instances` / `choose` / `subscribe` of the service.
    used: Mutex<std::time::Instant>,
}

/// The cache of one service, shared by the task, `instances` and subscriptions.
#[derive(Clone, Debug, Default)]
struct Shared {
    list: Option<Arc<InstanceList>>,
    /// The watch ended: subscriptions end too.
    ended: bool,
}

impl Watched {
    fn current(&self) -> Option<Arc<InstanceList>> {
        self.tx.borrow().list.clone()
    }

    fn touch(&self) {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner) = std::time::Instant::now();
    }

    /// No subscription and no lookup for `idle`.
    fn unused_for(&self, idle: Duration) -> bool {
        self.subscribers.load(Ordering::Acquire) == 0
            && self.used.lock().unwrap_or_else(PoisonError::into_inner).elapsed() >= idle
    }

    /// Stops the task and ends the subscriptions.
    fn end(&self) {
        self.task.abort();
        self.tx.send_modify(|s| s.ended = true);
    }

    /// Caches `list` if nothing is cached yet; returns what is cached.
    fn offer_first(&self, list: InstanceList) -> Arc<InstanceList> {
        let mut out = None;
        self.tx.send_if_modified(|s| match &s.list {
            Some(l) => {
                out = Some(Arc::clone(l));
                false
            }
            None => {
                let l = Arc::new(list.clone());
                out = Some(Arc::clone(&l));
                s.list = Some(l);
                true
            }
        });
        out.unwrap_or_else(|| Arc::new(list))
    }
}

impl Client {
    /// The instances of `service`, from the local cache when it has them
    /// (at once, and even while every server is down), else from a server
    /// (or the snapshot on disk, if no server answers). The first call for a
    /// service starts watching it, so later calls see changes within
    /// milliseconds without asking a server; the watch ends after
    /// `watch_idle` without a call (see [`ClientBuilder::watch_idle`]). When
    /// `max_watches` subscribed watches run already, the answer comes from a
    /// plain query, uncached.
    ///
    /// [`ClientBuilder::watch_idle`]: super::ClientBuilder::watch_idle
    pub async fn instances(&self, service: &str) -> Result<Arc<InstanceList>, Error> {
        let key = ServiceRef::parse(&self.namespace, &self.group, service)?;
        let Some(watched) = self.watched(&key, false)? else {
            let s = &self.inner.settings;
            return query(&self.inner.pool, &key, &QueryOptions::default(), s.request_timeout)
                .await
                .map(Arc::new);
        };
        self.fill(&key, &watched).await
    }

    /// The cached list of `watched`, filling it from a server or the snapshot first.
    async fn fill(&self, key: &ServiceRef, watched: &Watched) -> Result<Arc<InstanceList>, Error> {
        if let Some(list) = watched.current() {
            return Ok(list);
        }
        let dir = self.inner.settings.snapshot_dir.clone();
        match query(&self.inner.pool, key, &QueryOptions::default(), self.inner.settings.request_timeout)
            .await
        {
            Ok(answer) if forgotten(&answer) => {
                let snapshot =
                    load_snapshot(dir, key).await.ok().flatten().filter(|s| !s.instances.is_empty());
                Ok(watched.offer_first(snapshot.unwrap_or(answer)))
            }
            Ok(answer) => Ok(watched.offer_first(answer)),
            Err(Error::Unavailable(unavailable)) => match load_snapshot(dir, key).await {
                Ok(Some(snapshot)) => {
                    let e = Error::Unavailable(unavailable);
                    tracing::warn!(service = %key, error = %e, "no server answers: starting from the snapshot on disk");
                    Ok(watched.offer_first(snapshot))
                }
                Ok(None) => Err(Error::Unavailable(unavailable)),
                Err(bad) => Err(Error::CorruptSnapshot { path: bad.path, message: bad.message, unavailable }),
            },
            Err(e) => Err(e),
        }
    }

    /// A stream of the instance lists of `service`: the current list first
    /// (as soon as one is known), then each change as the watch sees it. A
    /// slow reader skips intermediate lists and gets the latest. Errors are
    /// not items: while no server answers the stream just waits, and the
    /// cache keeps its list. The watch lives at least as long as the
    /// subscription; dropping the last one ends it once no lookup used it
    /// for `watch_idle`. Fails with [`Error::TooManyWatches`] when
    /// `max_watches` subscribed watches run already.
    pub async fn subscribe(&self, service: &str) -> Result<Subscription, Error> {
        let key = ServiceRef::parse(&self.namespace, &self.group, service)?;
        let limit = self.inner.consumer.limits.max;
        let watched = self.watched(&key, true)?.ok_or(Error::TooManyWatches { limit })?;
        let rx = watched.tx.subscribe();
        let subscription = Subscription {
            client: self.clone(),
            key: key.clone(),
            watched: Arc::clone(&watched),
            rx: Some(rx),
            last: None,
            waiting: None,
        };
        if watched.current().is_none() {
            // Fill the cache now if a server or the snapshot can; if neither
            // can, the stream waits for the watch task.
            match self.fill(&key, &watched).await {
                Ok(_) => {}
                Err(e) if e.is_unavailable() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(subscription)
    }

    /// Stops watching `service` now: its cache is dropped, its connection
    /// closed, and its subscriptions end (their `next` returns `None`).
    /// Returns whether it was watched.
    pub fn unwatch(&self, service: &str) -> bool {
        let Ok(key) = ServiceRef::parse(&self.namespace, &self.group, service) else { return false };
        let removed = self.inner.consumer.lock().remove(&key);
        removed.inspect(|w| w.end()).is_some()
    }

    /// How many services this client watches now (one connection each).
    pub fn watched_services(&self) -> usize {
        self.inner.consumer.lock().len()
    }

    /// One service's instances straight from a server: no cache, no watch.
    pub async fn query(&self, service: &str, options: &QueryOptions) -> Result<InstanceList, Error> {
        let key = ServiceRef::parse(&self.namespace, &self.group, service)?;
        query(&self.inner.pool, &key, options, self.inner.settings.request_timeout).await
    }

    /// One serving instance of `service`, drawn at random in proportion to
    /// the weights (see [`InstanceList::choose`]), from the cache.
    pub async fn choose(&self, service: &str) -> Result<Instance, Error> {
        let list = self.instances(service).await?;
        list.choose().cloned().ok_or_else(|| Error::NoInstance { service: list.service_name() })
    }

    /// The watched entry of `key`, starting its task on first use; a
    /// subscription counts itself in. `None` when `max_watches` watches run
    /// and every one is subscribed.
    fn watched(&self, key: &ServiceRef, subscribe: bool) -> Result<Option<Arc<Watched>>, Error> {
        let consumer = &self.inner.consumer;
        let mut services = consumer.lock();
        if let Some(w) = services.get(key) {
            w.touch();
            if subscribe {
                w.subscribers.fetch_add(1, Ordering::AcqRel);
            }
            return Ok(Some(Arc::clone(w)));
        }
        if services.len() >= consumer.limits.max {
            let lru = services
                .iter()
                .filter(|(_, w)| w.subscribers.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, w)| *w.used.lock().unwrap_or_else(PoisonError::into_inner))
                .map(|(k, _)| k.clone());
            match lru.and_then(|k| services.remove(&k).map(|w| (k, w))) {
                Some((k, w)) => {
                    tracing::debug!(ended = %k, "at max_watches: the least recently used watch ends");
                    w.end();
                }
                None => {
                    tracing::debug!(service = %key, limit = consumer.limits.max, "every watch is subscribed: not watching");
                    return Ok(None);
                }
            }
        }
        let handle = runtime::handle()?;
        consumer.start_reaper(&handle);
        self.inner.pool.start_prober();
        let (tx, _) = watch::channel(Shared::default());
        let s = &self.inner.settings;
        let watcher = Watcher {
            pool: Arc::clone(&self.inner.pool),
            key: key.clone(),
            tx: tx.clone(),
            wait: s.watch_wait,
            timeout: s.request_timeout,
            grace: s.recovery_grace,
            window: s.replication_window,
            min_interval: s.min_poll_interval,
            snapshot_dir: s.snapshot_dir.clone(),
            recovery: None,
            first_seen: HashMap::new(),
            server: None,
            failures: 0,
            saved: None,
            streams: s.watch_streams,
        };
        let span = tracing::info_span!("muster_watch", service = %key);
        let task = handle.spawn(watcher.run().instrument(span));
        let w = Arc::new(Watched {
            tx,
            task,
            subscribers: AtomicUsize::new(usize::from(subscribe)),
            used: Mutex::new(std::time::Instant::now()),
        });
        services.insert(key.clone(), Arc::clone(&w));
        Ok(Some(w))
    }
}

/// A stream of instance lists of one service; see [`Client::subscribe`].
///
/// Use it as a [`Stream`] or through [`Subscription::next`]. It keeps the
/// client, and so the watch, alive; dropping it releases the watch (after
/// `watch_idle` if a lookup used the service meanwhile).
pub struct Subscription {
    client: Client,
    key: ServiceRef,
    watched: Arc<Watched>,
    rx: Option<watch::Receiver<Shared>>,
    last: Option<Arc<InstanceList>>,
    waiting: Option<Waiting>,
}

/// A wait for the next change: whether the cache is still open, and the receiver back.
type Waiting = Pin<Box<dyn Future<Output = (bool, watch::Receiver<Shared>)> + Send>>;

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("last", &self.last.as_ref().map(|l| &l.checksum)).finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let consumer = &self.client.inner.consumer;
        let mut services = consumer.lock();
        let left = self.watched.subscribers.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if left > 0 || !self.watched.unused_for(consumer.limits.idle.min(LOOKUP_RECENT)) {
            return;
        }
        // The last subscription of a watch no lookup used lately: end it now.
        if services.get(&self.key).is_some_and(|w| Arc::ptr_eq(w, &self.watched)) {
            services.remove(&self.key);
            self.watched.end();
        }
    }
}

/// A watch whose last subscription is dropped ends at once unless a lookup
/// used it within this time (then the idle timeout ends it).
const LOOKUP_RECENT: Duration = Duration::from_secs(1);

impl Subscription {
    /// The next list: the current one if not yet returned, else the next
    /// change. `None` once the watch ended ([`Client::unwatch`]).
    pub async fn next(&mut self) -> Option<Arc<InstanceList>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The list last returned.
    pub fn latest(&self) -> Option<&Arc<InstanceList>> {
        self.last.as_ref()
    }

    /// The cached list if it differs from the one last returned.
    fn fresh(&mut self) -> Option<Arc<InstanceList>> {
        let rx = self.rx.as_mut()?;
        let current = rx.borrow_and_update().list.clone()?;
        if self.last.as_ref().is_some_and(|l| l.checksum == current.checksum) {
            return None;
        }
        self.last = Some(Arc::clone(&current));
        Some(current)
    }

    fn ended(&self) -> bool {
        self.rx.as_ref().is_none_or(|rx| rx.borrow().ended)
    }
}

impl Stream for Subscription {
    type Item = Arc<InstanceList>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<InstanceList>>> {
        loop {
            if self.waiting.is_none() {
                if self.ended() {
                    self.rx = None;
                    return Poll::Ready(None);
                }
                if let Some(list) = self.fresh() {
                    return Poll::Ready(Some(list));
                }
                let Some(mut rx) = self.rx.take() else { return Poll::Ready(None) };
                self.waiting = Some(Box::pin(async move {
                    let open = rx.changed().await.is_ok();
                    (open, rx)
                }));
            }
            let Some(waiting) = self.waiting.as_mut() else { return Poll::Ready(None) };
            let (open, rx) = match waiting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            self.waiting = None;
            self.rx = Some(rx);
            if !open {
                let last = self.fresh();
                self.rx = None;
                return Poll::Ready(last);
            }
        }
    }
}

/// An empty answer from a server that holds no record of the service.
fn forgotten(answer: &InstanceList) -> bool {
    !answer.known && answer.instances.is_empty()
}

/// A recovery in progress: cached instances whose removal is held back.
#[derive(Clone, Debug, PartialEq)]
struct Recovery {
    since: Instant,
    held: Vec<Instance>,
}

/// What a watch shows after judging an answer.
#[derive(Debug, PartialEq)]
struct Judged {
    /// The list to cache: the answer, plus the held instances in a recovery.
    view: InstanceList,
    /// No hold: the view is the server's answer (and goes to the snapshot).
    accepted: bool,
}

/// Judges `answer` against `cached`. `moved`: the answer comes from another
/// server than the previous one. `first_seen`: when this client first saw
/// each instance id. A pure function of its inputs.
fn judge(
    cached: Option<&InstanceList>,
    answer: InstanceList,
    moved: bool,
    recovery: &mut Option<Recovery>,
    first_seen: &HashMap<String, Instant>,
    now: Instant,
    (grace, window): (Duration, Duration),
) -> Judged {
    let listed = |id: &str| answer.instances.iter().any(|a| a.instance_id == id);
    if recovery.is_none() {
        let cached = cached.map_or(&[][..], |c| c.instances.as_slice());
        let held: Vec<Instance> = if forgotten(&answer) {
            cached.iter().filter(|c| c.ephemeral).cloned().collect()
        } else if moved {
            let recent =
                |id: &str| first_seen.get(id).is_none_or(|t| now.saturating_duration_since(*t) < window);
            cached
                .iter()
                .filter(|c| c.ephemeral && !listed(&c.instance_id) && recent(&c.instance_id))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if !held.is_empty() {
            *recovery = Some(Recovery { since: now, held });
        }
    }
    if let Some(r) = recovery.as_mut() {
        r.held.retain(|h| !listed(&h.instance_id));
        if r.held.is_empty() || now.saturating_duration_since(r.since) >= grace {
            *recovery = None;
        }
    }
    match recovery {
        None => Judged { view: answer, accepted: true },
        Some(r) => {
            let mut view = answer;
            view.checksum = format!("{}+{}", view.checksum, r.held.len());
            view.known = true;
            view.instances.extend(r.held.iter().cloned());
            view.instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            Judged { view, accepted: false }
        }
    }
}

/// The watch task of one service.
struct Watcher {
    pool: Arc<Pool>,
    key: ServiceRef,
    tx: watch::Sender<Shared>,
    wait: Duration,
    timeout: Duration,
    grace: Duration,
    window: Duration,
    min_interval: Duration,
    snapshot_dir: Option<PathBuf>,
    recovery: Option<Recovery>,
    /// When this watch first saw each instance id it holds.
    first_seen: HashMap<String, Instant>,
    /// The server of the last answer.
    server: Option<usize>,
    /// Failed attempts in a row.
    failures: u32,
    /// The checksum of the list on disk.
    saved: Option<String>,
    /// Watch with streamed watches (until a server refuses them).
    streams: bool,
}

impl Watcher {
    async fn run(mut self) {
        // The checksum of the content the last answer had (not necessarily
        // the cached list's, when that answer was merged with held instances).
        let mut seen: Option<String> = None;
        loop {
            let started = Instant::now();
            let wait = match &self.recovery {
                Some(r) => self.grace.saturating_sub(r.since.elapsed()).clamp(WAIT_MIN, self.wait),
                None => self.wait,
            };
            let checksum = seen.clone().or_else(|| self.cached().map(|l| l.checksum.clone()));
            let result = match &checksum {
                // A recovery long-polls: each wait ends with an answer to judge.
                Some(c) if self.streams && self.recovery.is_none() => {
                    match self.stream(c, wait, &mut seen).await {
                        Err(Error::InvalidInput { field, .. }) if field == "stream" => {
                            tracing::info!(
                                "the server does not stream watches (an older Muster): long-polling instead"
                            );
                            self.streams = false;
                            continue;
                        }
                        result => result.map(|()| None),
                    }
                }
                Some(c) => long_poll(&self.pool, &self.key, c, wait, self.timeout).await.map(Some),
                None => {
                    query_from(&self.pool, &self.key, &QueryOptions::default(), self.timeout).await.map(Some)
                }
            };
            match result {
                Ok(None) => {}
                Ok(Some((answer, server))) => self.answered(answer, server, &mut seen).await,
                Err(Error::Refused { status: 429, server, .. }) => {
                    tracing::debug!(%server, "the node's watch table is full: watching again later");
                    tokio::time::sleep(jitter(FULL_RETRY)).await;
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    if self.failures == 1 {
                        let cached = self.cached().map_or(0, |l| l.instances.len());
                        tracing::debug!(error = %e, cached_instances = cached, "watch failed; keeping the cached list and retrying");
                    }
                    if self.cached().is_none() {
                        if let Ok(Some(snapshot)) = load_snapshot(self.snapshot_dir.clone(), &self.key).await
                        {
                            tracing::info!(
                                instances = snapshot.instances.len(),
                                "starting from the snapshot on disk"
                            );
                            self.saved = Some(snapshot.checksum.clone());
                            self.publish(snapshot);
                        }
                    }
                    tokio::time::sleep(retry_delay(self.failures)).await;
                }
            }
            // However fast a node answers, one service is polled at most
            // once per `min_interval`.
            tokio::time::sleep_until(started + self.min_interval).await;
        }
    }

    fn cached(&self) -> Option<Arc<InstanceList>> {
        self.tx.borrow().list.clone()
    }

    /// Takes one answer of `server`; `seen` becomes its checksum.
    async fn answered(&mut self, answer: InstanceList, server: usize, seen: &mut Option<String>) {
        let moved = self.server.is_some_and(|s| s != server);
        self.server = Some(server);
        if self.failures > 0 {
            tracing::debug!(failed_attempts = self.failures, "watch reaches a server again");
        }
        self.failures = 0;
        *seen = Some(answer.checksum.clone());
        self.take(answer, moved).await;
    }

    /// One streamed watch from `checksum` for `wait`: takes each line as it
    /// arrives, until the server ends the stream (`Ok`) or it fails.
    async fn stream(
        &mut self,
        checksum: &str,
        wait: Duration,
        seen: &mut Option<String>,
    ) -> Result<(), Error> {
        let path = format!(
            "/v1/instances?{}&checksum={}&wait={}ms&stream=true",
            self.key.query(),
            encode(checksum),
            wait.as_millis()
        );
        let call = Call::watch(path, wait.saturating_add(self.timeout));
        let pool = Arc::clone(&self.pool);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let send = pool.stream(&call, tx);
        tokio::pin!(send);
        let mut done = None;
        loop {
            tokio::select! {
                line = rx.recv() => {
                    // `None`: the stream's every sender is gone, it ended.
                    let Some((line, server)) = line else { break };
                    let answer = serde_json::from_slice::<InstanceList>(&line).map_err(|e| Error::Protocol {
                        server: self.pool.addr(server).to_owned(),
                        message: format!("{e} in a streamed answer"),
                    })?;
                    // A server streaming its answers is a server that answers.
                    self.pool.answered_by(server);
                    self.answered(answer, server, seen).await;
                    if self.recovery.is_some() {
                        // A recovery is judged again at its grace's end, change
                        // or no change: long polls do that (their wait ends
                        // with an answer), so the stream stops here.
                        return Ok(());
                    }
                }
                result = &mut send, if done.is_none() => done = Some(result),
            }
        }
        match done {
            Some(result) => result,
            None => send.await,
        }
    }

    /// Judges an answer and caches what it shows.
    async fn take(&mut self, answer: InstanceList, moved: bool) {
        let mut cached = self.cached();
        if cached.is_none() && forgotten(&answer) {
            if let Ok(Some(snapshot)) = load_snapshot(self.snapshot_dir.clone(), &self.key).await {
                tracing::info!(
                    instances = snapshot.instances.len(),
                    "server forgot the service: starting from the snapshot on disk"
                );
                self.saved = Some(snapshot.checksum.clone());
                self.publish(snapshot);
                cached = self.cached();
            }
        }
        let was_recovering = self.recovery.is_some();
        let now = Instant::now();
        let limits = (self.grace, self.window);
        let judged =
            judge(cached.as_deref(), answer, moved, &mut self.recovery, &self.first_seen, now, limits);
        match &self.recovery {
            Some(r) if !was_recovering => tracing::info!(
                held = r.held.len(),
                instances = judged.view.instances.len() - r.held.len(),
                "the server lacks cached instances (it restarted, or missed the newest registrations): \
                 holding them while their providers register again, at most recovery_grace"
            ),
            Some(r) => tracing::debug!(held = r.held.len(), "providers still registering again"),
            None if was_recovering => tracing::info!(
                instances = judged.view.instances.len(),
                "recovered: every held instance is back, or recovery_grace ended"
            ),
            None => {}
        }
        for i in &judged.view.instances {
            self.first_seen.entry(i.instance_id.clone()).or_insert(now);
        }
        if judged.accepted {
            let listed: HashSet<&str> =
                judged.view.instances.iter().map(|i| i.instance_id.as_str()).collect();
            self.first_seen.retain(|id, _| listed.contains(id.as_str()));
        }
        let accepted = judged.accepted;
        let list = self.publish(judged.view);
        if let (true, Some(dir)) = (accepted, self.snapshot_dir.clone()) {
            if self.saved.as_deref() != Some(list.checksum.as_str()) {
                self.saved = Some(list.checksum.clone());
                save_snapshot(dir, &self.key, list).await;
            }
        }
    }

    /// Caches `list` if it differs from the cached one; returns it.
    fn publish(&self, list: InstanceList) -> Arc<InstanceList> {
        let list = Arc::new(list);
        let changed = self.tx.send_if_modified(|s| {
            if s.list.as_ref().is_some_and(|l| l.checksum == list.checksum) {
                return false;
            }
            s.list = Some(Arc::clone(&list));
            true
        });
        if changed {
            tracing::debug!(instances = list.instances.len(), checksum = %list.checksum, "instance list changed");
        }
        list
    }
}

/// The pause after `failures` failed watch attempts in a row, with jitter.
fn retry_delay(failures: u32) -> Duration {
    jitter(backoff(RETRY_MIN, RETRY_MAX, failures))
}

async fn query(
    pool: &Pool,
    key: &ServiceRef,
    options: &QueryOptions,
    timeout: Duration,
) -> Result<InstanceList, Error> {
    Ok(query_from(pool, key, options, timeout).await?.0)
}

/// A query, and the index of the server that answered.
async fn query_from(
    pool: &Pool,
    key: &ServiceRef,
    options: &QueryOptions,
    timeout: Duration,
) -> Result<(InstanceList, usize), Error> {
    let mut path = format!("/v1/instances?{}", key.query());
    if options.healthy_only {
        path.push_str("&healthy_only=true");
    }
    if !options.clusters.is_empty() {
        path.push_str("&clusters=");
        path.push_str(&encode(&options.clusters.join(",")));
    }
    pool.json(&Call::new(Method::GET, path, timeout)).await
}

async fn long_poll(
    pool: &Pool,
    key: &ServiceRef,
    checksum: &str,
    wait: Duration,
    timeout: Duration,
) -> Result<(InstanceList, usize), Error> {
    let path =
        format!("/v1/instances?{}&checksum={}&wait={}ms", key.query(), encode(checksum), wait.as_millis());
    pool.json(&Call::watch(path, wait.saturating_add(timeout))).await
}

/// A snapshot file that exists but cannot be used.
#[derive(Debug)]
struct BadSnapshot {
    path: PathBuf,
    message: String,
}

/// Reads the snapshot of `key`: `None` if there is none.
async fn load_snapshot(dir: Option<PathBuf>, key: &ServiceRef) -> Result<Option<InstanceList>, BadSnapshot> {
    let Some(dir) = dir else { return Ok(None) };
    let path = dir.join(key.file_name());
    let key = key.clone();
    let read = tokio::task::spawn_blocking(move || read_snapshot(&path, &key)).await;
    let result = read.unwrap_or(Ok(None));
    if let Err(bad) = &result {
        report_once(bad);
    }
    result
}

/// Logs a bad snapshot file once per process.
fn report_once(bad: &BadSnapshot) {
    static REPORTED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut reported = REPORTED.lock().unwrap_or_else(PoisonError::into_inner);
    if reported.get_or_insert_with(HashSet::new).insert(bad.path.clone()) {
        tracing::warn!(
            path = %bad.path.display(),
            error = %bad.message,
            "the snapshot is corrupt and is not used; delete it (the next accepted list rewrites it)"
        );
    }
}

fn read_snapshot(path: &Path, key: &ServiceRef) -> Result<Option<InstanceList>, BadSnapshot> {
    let bad = |message: String| BadSnapshot { path: path.to_owned(), message };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read it: {e}"))),
    };
    match serde_json::from_slice::<InstanceList>(&bytes) {
        Ok(l) if l.namespace == key.namespace && l.group == key.group && l.service == key.service => {
            Ok(Some(l))
        }
        Ok(l) => Err(bad(format!("it holds another service, {}", l.service_name()))),
        Err(e) => Err(bad(format!("not an instance list ({} bytes): {e}", bytes.len()))),
    }
}

/// Writes the snapshot of `key`: to a temporary file unique to this writer,
/// synced, then renamed over the old one, so that a reader (another process
/// sharing the directory, too) sees the old file or the new one, whole.
async fn save_snapshot(dir: PathBuf, key: &ServiceRef, list: Arc<InstanceList>) {
    use std::io::Write;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = key.file_name();
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(&*list).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(&name))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the snapshot"),
        Err(e) => tracing::warn!(error = %e, "snapshot writer failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn list(ids: &[u16], known: bool) -> InstanceList {
        InstanceList {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            service: "s".into(),
            checksum: format!("{:016x}", ids.iter().map(|&i| u64::from(i)).sum::<u64>() + u64::from(known)),
            protect_threshold_reached: false,
            known,
            instances: ids
                .iter()
                .map(|&port| Instance {
                    instance_id: format!("10.0.0.1#{port}#DEFAULT"),
                    cluster: "DEFAULT".into(),
                    ip: "10.0.0.1".into(),
                    port,
                    weight: 1.0,
                    healthy: true,
                    enabled: true,
                    ephemeral: true,
                    metadata: BTreeMap::new(),
                })
                .collect(),
        }
    }

    const GRACE: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(2);

    fn ids(j: &Judged) -> Vec<u16> {
        j.view.instances.iter().map(|i| i.port).collect()
    }

    /// Judges with every instance first seen at `seen`.
    fn judge_at(
        cached: &InstanceList,
        answer: InstanceList,
        moved: bool,
        recovery: &mut Option<Recovery>,
        seen: Instant,
        now: Instant,
    ) -> Judged {
        let first: HashMap<String, Instant> =
            cached.instances.iter().map(|i| (i.instance_id.clone(), seen)).collect();
        judge(Some(cached), answer, moved, recovery, &first, now, (GRACE, WINDOW))
    }

    #[test]
    fn a_forgetful_empty_answer_holds_the_cache_until_the_grace_ends() {
        let t0 = Instant::now();
        let cached = list(&[1, 2], true);
        let mut r = None;
        let j = judge_at(&cached, list(&[], false), false, &mut r, t0, t0);
        assert_eq!((ids(&j), j.accepted), (vec![1, 2], false));
        // Provider 1 registers again: shown with the server's state; 2 still held.
        let j = judge_at(&cached, list(&[1], true), false, &mut r, t0, t0 + Duration::from_secs(1));
        assert_eq!((ids(&j), j.accepted), (vec![1, 2], false));
        // Provider 2 never comes back: gone when the grace ends, even if the
        // server still has no record at all.
        let mut r2 = None;
        judge_at(&cached, list(&[], false), false, &mut r2, t0, t0);
        let j = judge_at(&cached, list(&[], false), false, &mut r2, t0, t0 + GRACE);
        assert_eq!((ids(&j), j.accepted), (vec![], true));
        assert_eq!(r2, None);
        // A server that knows the service says it is empty: really emptied.
        let mut r3 = None;
        let j = judge_at(&cached, list(&[], true), false, &mut r3, t0, t0);
        assert_eq!((ids(&j), j.accepted), (vec![], true));
    }

    #[test]
    fn every_held_instance_back_ends_the_recovery_at_once() {
        let t0 = Instant::now();
        let cached = list(&[1, 2, 3], true);
        let mut r = None;
        judge_at(&cached, list(&[], false), false, &mut r, t0, t0);
        let j = judge_at(&cached, list(&[1, 2, 3, 4], true), false, &mut r, t0, t0 + Duration::from_secs(1));
        assert_eq!((ids(&j), j.accepted), (vec![1, 2, 3, 4], true));
        assert_eq!(r, None);
    }

    #[test]
    fn after_a_failover_only_recent_missing_instances_are_held() {
        let t0 = Instant::now();
        let cached = list(&[1, 2, 3], true);
        // Everything was seen long ago: its absence on the new server is a
        // deregistration or an expiry, shown at once.
        let mut r = None;
        let j = judge_at(&cached, list(&[1, 2], true), true, &mut r, t0, t0 + Duration::from_secs(60));
        assert_eq!((ids(&j), j.accepted), (vec![1, 2], true));
        // Seen just now: the dead server may not have replicated it; held.
        let mut r = None;
        let now = t0 + Duration::from_millis(500);
        let j = judge_at(&cached, list(&[1, 2], true), true, &mut r, t0, now);
        assert_eq!((ids(&j), j.accepted), (vec![1, 2, 3], false));
        // The provider registered it again: the server's list, nothing changed for the consumer.
        let j =
            judge_at(&cached, list(&[1, 2, 3], true), false, &mut r, t0, now + Duration::from_millis(300));
        assert_eq!((ids(&j), j.accepted), (vec![1, 2, 3], true));
    }

    #[test]
    fn health_changes_are_shown_at_once_during_a_recovery() {
        let t0 = Instant::now();
        let cached = list(&[1, 2], true);
        let mut r = None;
        judge_at(&cached, list(&[], false), false, &mut r, t0, t0);
        let mut answer = list(&[1], true);
        answer.instances[0].healthy = false;
        let j = judge_at(&cached, answer, false, &mut r, t0, t0 + Duration::from_millis(100));
        assert!(!j.view.instances[0].healthy, "the server's unhealthy mark is shown");
        assert_eq!(ids(&j), [1, 2]);
    }

    #[test]
    fn persistent_instances_are_never_held() {
        let t0 = Instant::now();
        let mut cached = list(&[1, 2], true);
        cached.instances[1].ephemeral = false;
        let mut r = None;
        let j = judge_at(&cached, list(&[], false), false, &mut r, t0, t0);
        assert_eq!(ids(&j), [1]);
    }

    #[test]
    fn ordinary_changes_are_accepted_at_once() {
        let t0 = Instant::now();
        let mut r = None;
        let j = judge_at(&list(&[1, 2], true), list(&[1], true), false, &mut r, t0, t0);
        assert_eq!((ids(&j), j.accepted), (vec![1], true));
        let j = judge_at(&list(&[1], true), list(&[1, 2], true), false, &mut r, t0, t0);
        assert_eq!((ids(&j), j.accepted), (vec![1, 2], true));
    }

    #[test]
    fn snapshots_round_trip_and_refuse_other_services() {
        let dir = std::env::temp_dir().join(format!("muster-snapshot-test-{}", std::process::id()));
        let key = ServiceRef::parse("public", "DEFAULT_GROUP", "s").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            save_snapshot(dir.clone(), &key, Arc::new(list(&[7], true))).await;
            assert_eq!(load_snapshot(Some(dir.clone()), &key).await.unwrap(), Some(list(&[7], true)));
            let other = ServiceRef::parse("public", "DEFAULT_GROUP", "t").unwrap();
            assert_eq!(load_snapshot(Some(dir.clone()), &other).await.unwrap(), None);
            std::fs::copy(dir.join(key.file_name()), dir.join(other.file_name())).unwrap();
            let bad = load_snapshot(Some(dir.clone()), &other).await.unwrap_err();
            assert!(bad.message.contains("another service"), "{bad:?}");
            assert_eq!(bad.path, dir.join(other.file_name()));
            std::fs::write(dir.join(other.file_name()), b"").unwrap();
            let bad = load_snapshot(Some(dir.clone()), &other).await.unwrap_err();
            assert!(bad.message.contains("0 bytes"), "{bad:?}");
            assert_eq!(load_snapshot(None, &key).await.unwrap(), None);
            let leftovers = std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp")));
            assert_eq!(leftovers.count(), 0, "no temporary file left behind");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
