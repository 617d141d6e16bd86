//! Consumer side: a local cache of instance lists kept fresh by long polls,
//! subscriptions to it, and an optional snapshot on disk.
//!
//! The first [`Client::instances`] or [`Client::subscribe`] of a service
//! starts one watch task for it. The task long-polls `GET /v1/instances`
//! with the checksum of what it holds, so a change anywhere in the cluster
//! reaches it within milliseconds; the checksum is of content, so the watch
//! moves between servers with the client. Every answer is judged before it
//! replaces the cached list:
//!
//! - errors never touch the cache: with every server down, the cache keeps
//!   answering with the last list;
//! - an empty answer with `known: false` comes from a server that holds no
//!   record of the service at all, i.e. one that lost its memory (a restarted
//!   single node). It does not replace a non-empty list. The service was
//!   really emptied only when a server that knows it (it holds its
//!   tombstones, or instances) says it is empty;
//! - after such a forgetful answer, and after the watch moved to another
//!   server whose answer lacks cached instances (the dead server may have
//!   taken registrations it had not yet replicated with it; their providers
//!   register them again at their next heartbeat), the client keeps its list
//!   for up to `recovery_grace`, until every cached instance is back or the
//!   grace ends, so consumers do not see the list shrink and grow back while
//!   providers register again. Growth and changes are taken at once.
//!
//! With a snapshot directory, every new list is written to
//! `DIR/namespace+group+service.json`; a consumer that starts while no server
//! answers (or while the only server has forgotten the service) starts from
//! that file.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
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
use super::pool::{Call, Pool, backoff};

/// First retry of a failed watch; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest pause between watch attempts while no server answers.
const RETRY_MAX: Duration = Duration::from_secs(2);
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

/// The watched services of a client.
#[derive(Debug, Default)]
pub(crate) struct Consumer {
    services: std::sync::Mutex<std::collections::HashMap<ServiceRef, Arc<Watched>>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let services = self.services.get_mut().unwrap_or_else(PoisonError::into_inner);
        for watched in services.values() {
            watched.task.abort();
        }
    }
}

/// One watched service: its cache and its watch task.
#[derive(Debug)]
struct Watched {
    tx: watch::Sender<Shared>,
    task: JoinHandle<()>,
}

/// The cache of one service, shared by the task, `instances` and subscriptions.
#[derive(Clone, Debug, Default)]
struct Shared {
    list: Option<Arc<InstanceList>>,
}

impl Watched {
    fn current(&self) -> Option<Arc<InstanceList>> {
        self.tx.borrow().list.clone()
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
    /// milliseconds without asking a server.
    pub async fn instances(&self, service: &str) -> Result<Arc<InstanceList>, Error> {
        let key = ServiceRef::parse(&self.namespace, &self.group, service)?;
        let watched = self.watched(&key)?;
        if let Some(list) = watched.current() {
            return Ok(list);
        }
        let dir = self.inner.settings.snapshot_dir.clone();
        match query(&self.inner.pool, &key, &QueryOptions::default(), self.inner.settings.request_timeout)
            .await
        {
            Ok(answer) if forgotten(&answer) => {
                let snapshot = load_snapshot(dir, &key).await.filter(|s| !s.instances.is_empty());
                Ok(watched.offer_first(snapshot.unwrap_or(answer)))
            }
            Ok(answer) => Ok(watched.offer_first(answer)),
            Err(e) if e.is_unavailable() => match load_snapshot(dir, &key).await {
                Some(snapshot) => {
                    tracing::warn!(service = %key, error = %e, "no server answers: starting from the snapshot on disk");
                    Ok(watched.offer_first(snapshot))
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// A stream of the instance lists of `service`: the current list first
    /// (as soon as one is known), then each change as the watch sees it. A
    /// slow reader skips intermediate lists and gets the latest. Errors are
    /// not items: while no server answers the stream just waits, and the
    /// cache keeps its list.
    pub async fn subscribe(&self, service: &str) -> Result<Subscription, Error> {
        let key = ServiceRef::parse(&self.namespace, &self.group, service)?;
        let watched = self.watched(&key)?;
        if watched.current().is_none() {
            // Fill the cache now if a server or the snapshot can; if neither
            // can, the stream waits for the watch task.
            match self.instances(service).await {
                Ok(_) => {}
                Err(e) if e.is_unavailable() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Subscription {
            _client: self.clone(),
            rx: Some(watched.tx.subscribe()),
            last: None,
            waiting: None,
        })
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

    /// The watched entry of `key`, starting its task on first use.
    fn watched(&self, key: &ServiceRef) -> Result<Arc<Watched>, Error> {
        let mut services = self.inner.consumer.services.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = services.get(key) {
            return Ok(Arc::clone(w));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (tx, _) = watch::channel(Shared::default());
        let s = &self.inner.settings;
        let watcher = Watcher {
            pool: Arc::clone(&self.inner.pool),
            key: key.clone(),
            tx: tx.clone(),
            wait: s.watch_wait,
            timeout: s.request_timeout,
            grace: s.recovery_grace,
            snapshot_dir: s.snapshot_dir.clone(),
            recovering_since: None,
            server: None,
            failures: 0,
            saved: None,
        };
        let span = tracing::info_span!("muster_watch", service = %key);
        let task = handle.spawn(watcher.run().instrument(span));
        let w = Arc::new(Watched { tx, task });
        services.insert(key.clone(), Arc::clone(&w));
        Ok(w)
    }
}

/// A stream of instance lists of one service; see [`Client::subscribe`].
///
/// Use it as a [`Stream`] or through [`Subscription::next`]. It keeps the
/// client, and so the watch, alive.
pub struct Subscription {
    _client: Client,
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

impl Subscription {
    /// The next list: the current one if not yet returned, else the next
    /// change. `None` only if the watch ended (it does not while the
    /// subscription lives).
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
}

impl Stream for Subscription {
    type Item = Arc<InstanceList>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<InstanceList>>> {
        loop {
            if self.waiting.is_none() {
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

/// What to do with a server's answer, given the cached list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// It replaces the cached list.
    Accept,
    /// The cached list stays (a forgetful server, or providers still
    /// re-registering after one).
    Keep,
}

/// An empty answer from a server that holds no record of the service.
fn forgotten(answer: &InstanceList) -> bool {
    !answer.known && answer.instances.is_empty()
}

/// Judges `answer` against `cached`. `moved`: the answer comes from another
/// server than the previous one. `recovering_since`: when a recovery began
/// (a server forgot the service, or a new server lacked cached instances).
/// A pure function of its inputs.
fn judge(
    cached: Option<&InstanceList>,
    answer: &InstanceList,
    moved: bool,
    recovering_since: &mut Option<Instant>,
    now: Instant,
    grace: Duration,
) -> Verdict {
    let Some(cached) = cached.filter(|c| !c.instances.is_empty()) else {
        *recovering_since = None;
        return Verdict::Accept;
    };
    if forgotten(answer) {
        recovering_since.get_or_insert(now);
        return Verdict::Keep;
    }
    let all_back =
        cached.instances.iter().all(|c| answer.instances.iter().any(|a| a.instance_id == c.instance_id));
    if moved && !all_back {
        recovering_since.get_or_insert(now);
    }
    let Some(since) = *recovering_since else { return Verdict::Accept };
    if all_back || now.saturating_duration_since(since) >= grace {
        *recovering_since = None;
        Verdict::Accept
    } else {
        Verdict::Keep
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
    snapshot_dir: Option<PathBuf>,
    recovering_since: Option<Instant>,
    /// The server of the last answer.
    server: Option<usize>,
    /// Failed attempts in a row.
    failures: u32,
    /// The checksum of the list on disk.
    saved: Option<String>,
}

impl Watcher {
    async fn run(mut self) {
        // The checksum of the content the last answer had (not necessarily
        // the cached list's, when that answer was kept out of the cache).
        let mut seen: Option<String> = None;
        loop {
            let wait = match self.recovering_since {
                Some(since) => self.grace.saturating_sub(since.elapsed()).clamp(WAIT_MIN, self.wait),
                None => self.wait,
            };
            let checksum = seen.clone().or_else(|| self.cached().map(|l| l.checksum.clone()));
            let result = match &checksum {
                Some(c) => long_poll(&self.pool, &self.key, c, wait, self.timeout).await,
                None => query_from(&self.pool, &self.key, &QueryOptions::default(), self.timeout).await,
            };
            match result {
                Ok((answer, server)) => {
                    let moved = self.server.is_some_and(|s| s != server);
                    self.server = Some(server);
                    if self.failures > 0 {
                        tracing::info!(failed_attempts = self.failures, "watch reaches a server again");
                    }
                    self.failures = 0;
                    seen = Some(answer.checksum.clone());
                    self.take(answer, moved).await;
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    if self.failures == 1 {
                        let cached = self.cached().map_or(0, |l| l.instances.len());
                        tracing::warn!(error = %e, cached_instances = cached, "watch failed; keeping the cached list and retrying");
                    }
                    if self.cached().is_none() {
                        if let Some(snapshot) = load_snapshot(self.snapshot_dir.clone(), &self.key).await {
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
        }
    }

    fn cached(&self) -> Option<Arc<InstanceList>> {
        self.tx.borrow().list.clone()
    }

    /// Judges an answer and caches it if it passes.
    async fn take(&mut self, answer: InstanceList, moved: bool) {
        let mut cached = self.cached();
        if cached.is_none() && forgotten(&answer) {
            if let Some(snapshot) = load_snapshot(self.snapshot_dir.clone(), &self.key).await {
                tracing::info!(
                    instances = snapshot.instances.len(),
                    "server forgot the service: starting from the snapshot on disk"
                );
                self.saved = Some(snapshot.checksum.clone());
                self.publish(snapshot);
                cached = self.cached();
            }
        }
        let was_recovering = self.recovering_since.is_some();
        let verdict =
            judge(cached.as_deref(), &answer, moved, &mut self.recovering_since, Instant::now(), self.grace);
        match verdict {
            Verdict::Keep if !was_recovering && !forgotten(&answer) => tracing::info!(
                instances = answer.instances.len(),
                cached_instances = cached.as_ref().map_or(0, |l| l.instances.len()),
                "the new server lacks cached instances: keeping them while providers register again"
            ),
            Verdict::Keep if !was_recovering => tracing::warn!(
                cached_instances = cached.as_ref().map_or(0, |l| l.instances.len()),
                "a server holds no record of the service (restarted?): keeping the cached list while providers register again"
            ),
            Verdict::Keep => {
                tracing::debug!(instances = answer.instances.len(), "providers still registering again")
            }
            Verdict::Accept => {
                if was_recovering {
                    tracing::info!(
                        instances = answer.instances.len(),
                        "recovered: every cached instance is back, or the grace ended"
                    );
                }
                let list = self.publish(answer);
                if let Some(dir) = self.snapshot_dir.clone() {
                    if self.saved.as_deref() != Some(list.checksum.as_str()) {
                        self.saved = Some(list.checksum.clone());
                        save_snapshot(dir, &self.key, list).await;
                    }
                }
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
    let d = backoff(RETRY_MIN, RETRY_MAX, failures);
    d.mul_f64(0.75 + fastrand::f64() / 2.0)
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
    pool.json(&Call::new(Method::GET, path, wait.saturating_add(timeout))).await
}

/// Reads the snapshot of `key`, if there is a readable one.
async fn load_snapshot(dir: Option<PathBuf>, key: &ServiceRef) -> Option<InstanceList> {
    let path = dir?.join(key.file_name());
    let key = key.clone();
    let read = tokio::task::spawn_blocking(move || read_snapshot(&path, &key)).await;
    read.ok().flatten()
}

fn read_snapshot(path: &Path, key: &ServiceRef) -> Option<InstanceList> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the snapshot");
            return None;
        }
    };
    match serde_json::from_slice::<InstanceList>(&bytes) {
        Ok(l) if l.namespace == key.namespace && l.group == key.group && l.service == key.service => Some(l),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "snapshot is of another service; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "snapshot is not an instance list; ignored");
            None
        }
    }
}

/// Writes the snapshot of `key` (to a temporary file, then renamed over the old one).
async fn save_snapshot(dir: PathBuf, key: &ServiceRef, list: Arc<InstanceList>) {
    let name = key.file_name();
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(&*list).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, dir.join(&name))
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

    #[test]
    fn a_forgetful_empty_answer_does_not_wipe_a_non_empty_cache() {
        let now = Instant::now();
        let mut since = None;
        let cached = list(&[1, 2], true);
        assert_eq!(judge(Some(&cached), &list(&[], false), false, &mut since, now, GRACE), Verdict::Keep);
        assert_eq!(since, Some(now));
        // A server that knows the service says it is empty: really emptied.
        let mut since = None;
        assert_eq!(judge(Some(&cached), &list(&[], true), false, &mut since, now, GRACE), Verdict::Accept);
        // Nothing cached, or an empty cache: anything goes.
        assert_eq!(judge(None, &list(&[], false), false, &mut since, now, GRACE), Verdict::Accept);
        assert_eq!(
            judge(Some(&list(&[], true)), &list(&[], false), false, &mut since, now, GRACE),
            Verdict::Accept
        );
    }

    #[test]
    fn after_a_forgetful_answer_the_cache_waits_for_every_instance_or_the_grace() {
        let t0 = Instant::now();
        let cached = list(&[1, 2, 3], true);
        let mut since = None;
        assert_eq!(judge(Some(&cached), &list(&[], false), false, &mut since, t0, GRACE), Verdict::Keep);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(judge(Some(&cached), &list(&[1], true), false, &mut since, t1, GRACE), Verdict::Keep);
        assert_eq!(
            judge(Some(&cached), &list(&[1, 2, 3, 4], true), false, &mut since, t1, GRACE),
            Verdict::Accept
        );
        assert_eq!(since, None);
        // The grace ends: what the server has wins (provider 3 really died).
        let mut since = Some(t0);
        assert_eq!(
            judge(Some(&cached), &list(&[1, 2], true), false, &mut since, t0 + GRACE, GRACE),
            Verdict::Accept
        );
    }

    #[test]
    fn after_a_failover_a_shorter_list_waits_for_the_missing_instances_or_the_grace() {
        let t0 = Instant::now();
        let cached = list(&[1, 2, 3], true);
        let mut since = None;
        // The new server missed instance 3 (its old server died before replicating it).
        assert_eq!(judge(Some(&cached), &list(&[1, 2], true), true, &mut since, t0, GRACE), Verdict::Keep);
        // The provider registered it again: taken, nothing changed for the consumer.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(
            judge(Some(&cached), &list(&[1, 2, 3], true), false, &mut since, t1, GRACE),
            Verdict::Accept
        );
        assert_eq!(since, None);
        // A new server with more is taken at once.
        assert_eq!(
            judge(Some(&cached), &list(&[1, 2, 3, 4], true), true, &mut since, t1, GRACE),
            Verdict::Accept
        );
        // Instance 3 really went: gone once the grace ends.
        assert_eq!(judge(Some(&cached), &list(&[1, 2], true), true, &mut since, t1, GRACE), Verdict::Keep);
        let late = t1 + GRACE;
        assert_eq!(
            judge(Some(&cached), &list(&[1, 2], true), false, &mut since, late, GRACE),
            Verdict::Accept
        );
    }

    #[test]
    fn ordinary_changes_are_accepted_at_once() {
        let mut since = None;
        let now = Instant::now();
        assert_eq!(
            judge(Some(&list(&[1, 2], true)), &list(&[1], true), false, &mut since, now, GRACE),
            Verdict::Accept
        );
        assert_eq!(
            judge(Some(&list(&[1], true)), &list(&[1, 2], true), false, &mut since, now, GRACE),
            Verdict::Accept
        );
    }

    #[test]
    fn snapshots_round_trip_and_refuse_other_services() {
        let dir = std::env::temp_dir().join(format!("muster-snapshot-test-{}", std::process::id()));
        let key = ServiceRef::parse("public", "DEFAULT_GROUP", "s").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            save_snapshot(dir.clone(), &key, Arc::new(list(&[7], true))).await;
            assert_eq!(load_snapshot(Some(dir.clone()), &key).await, Some(list(&[7], true)));
            let other = ServiceRef::parse("public", "DEFAULT_GROUP", "t").unwrap();
            assert_eq!(load_snapshot(Some(dir.clone()), &other).await, None);
            std::fs::copy(dir.join(key.file_name()), dir.join(other.file_name())).unwrap();
            assert_eq!(load_snapshot(Some(dir.clone()), &other).await, None, "another service's list");
            assert_eq!(load_snapshot(None, &key).await, None);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
