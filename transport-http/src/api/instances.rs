//! `/v1/instances`: register, heartbeat, update, deregister, query and watch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use muster_core::lease::META_HEALTH_CHECK;
use muster_core::{
    BeatReply, Checksum, Field, InstanceView, Name, QueryAnswer, RegisterRequest, Reply, Request, Selector,
    ServiceKey, UpdateRequest,
};
use serde::Serialize;
use serde_json::Value;

use super::input::{Obj, Query, parse_duration};
use super::{AppState, KEY_BODY};
use crate::error::{ApiError, Body, bytes_response, json_response};
use crate::snapshot::Published;

/// The response header of every instance write: the client's ordering token
/// for its next write (see `muster_core::ordering`).
pub(crate) const COUNTER_HEADER: &str = "muster-counter";

/// The ordering token of a write: `?after=<counter>`, 0 when absent.
fn after(q: &Query) -> Result<u64, ApiError> {
    match q.get("after") {
        None => Ok(0),
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::invalid(
                "after",
                format!(
                    "must be a version counter (a non-negative integer, from the {COUNTER_HEADER} header of a write \
                     answer), got {:?}",
                    crate::error::echo(v)
                ),
            )
        }),
    }
}

/// Runs a write after the node's clock observed the client's token; the
/// reply and the client's new token.
async fn ordered(state: &AppState, after: u64, request: Request) -> Result<(Reply, u64), ApiError> {
    match state.driver.request(Request::Ordered { after, request: Box::new(request) }).await? {
        Reply::Ordered { counter, reply } => Ok((*reply, counter)),
        other => Err(unexpected(&other)),
    }
}

/// `response` with the client's new ordering token.
fn with_counter(mut response: Response<Body>, counter: u64) -> Response<Body> {
    response.headers_mut().insert(COUNTER_HEADER, hyper::header::HeaderValue::from(counter));
    response
}

/// `POST /v1/instances`
pub(super) async fn register(
    state: &Arc<AppState>,
    q: &Query,
    allowed: &[&str],
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let after = after(q)?;
    let mut req = match super::fast::register(body) {
        Some(req) => req,
        None => {
            let mut o = Obj::from_body(body, allowed)?;
            let key = o.instance_key()?;
            RegisterRequest {
                key,
                weight: o.num("weight")?,
                enabled: o.bool("enabled")?,
                healthy: o.bool("healthy")?,
                ephemeral: o.bool("ephemeral")?,
                metadata: o.string_map("metadata")?.unwrap_or_default(),
                health_reported: false,
            }
        }
    };
    check_registration(state, &mut req)?;
    match ordered(state, after, Request::Register(req)).await? {
        (Reply::Registered(r), counter) => {
            #[derive(Serialize)]
            struct Registered {
                instance_id: String,
                heartbeat_interval_ms: u64,
                created: bool,
            }
            let body = Registered {
                instance_id: r.instance_id(),
                heartbeat_interval_ms: millis(r.heartbeat_interval),
                created: r.created,
            };
            Ok(with_counter(json_response(StatusCode::OK, &body), counter))
        }
        (other, _) => Err(unexpected(&other)),
    }
}

/// Refusals and normalisations the generic and fast paths share: `-0.0`
/// weights become `0`; a persistent instance that would need an active check
/// the node does not run (`probe.rs`) is refused. (`healthy: false` for an
/// ephemeral instance is refused by the core, as on PATCH.)
fn check_registration(state: &AppState, req: &mut RegisterRequest) -> Result<(), ApiError> {
    req.weight = req.weight.map(normalise_weight);
    let ephemeral = req.ephemeral.unwrap_or(true);
    let check = req.metadata.get(META_HEALTH_CHECK).map(String::as_str);
    if let Some((field, message)) = crate::probe::refusal(&state.settings.http, &req.key.ip, ephemeral, check)
    {
        return Err(ApiError::invalid(field, message));
    }
    Ok(())
}

/// `-0.0` is `0`: one weight, one checksum.
fn normalise_weight(w: f64) -> f64 {
    if w == 0.0 { 0.0 } else { w }
}

/// `PUT /v1/instances/beat`: one instance key, or `{"beats": [keys]}`.
pub(super) async fn beat(
    state: &Arc<AppState>,
    allowed: &[&str],
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let replies = match super::fast::beats(body) {
        Some((keys, true)) => match state.driver.request(Request::HeartbeatBatch(keys)).await? {
            Reply::Beats(replies) => replies,
            other => return Err(unexpected(&other)),
        },
        Some((mut keys, false)) => match keys.pop() {
            Some(key) => match state.driver.request(Request::Heartbeat(key)).await? {
                Reply::Beat(reply) => vec![reply],
                other => return Err(unexpected(&other)),
            },
            None => return Err(ApiError::missing("service")),
        },
        None => beat_generic(state, allowed, body).await?,
    };
    beats_response(state, &replies)
}

/// The generic path of a heartbeat body, which words every error.
async fn beat_generic(
    state: &Arc<AppState>,
    allowed: &[&str],
    body: &[u8],
) -> Result<Vec<BeatReply>, ApiError> {
    let mut o = Obj::from_body(body, allowed)?;
    let replies = if o.has("beats") {
        if KEY_BODY.iter().any(|k| o.has(k)) {
            return Err(ApiError::invalid(
                "beats",
                "give either one instance key or {\"beats\": [keys]}, not both",
            ));
        }
        let keys = match o.take("beats") {
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| Obj::from_value(v, KEY_BODY, format!("beats[{i}]."))?.instance_key())
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(ApiError::invalid("beats", "must be an array of instance keys")),
        };
        match state.driver.request(Request::HeartbeatBatch(keys)).await? {
            Reply::Beats(replies) => replies,
            other => return Err(unexpected(&other)),
        }
    } else {
        let key = o.instance_key()?;
        match state.driver.request(Request::Heartbeat(key)).await? {
            Reply::Beat(reply) => vec![reply],
            other => return Err(unexpected(&other)),
        }
    };
    Ok(replies)
}

fn beats_response(state: &AppState, replies: &[BeatReply]) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Beats {
        unknown: Vec<usize>,
        heartbeat_interval_ms: u64,
    }
    let mut interval: Option<Duration> = None;
    let mut unknown = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        match r {
            BeatReply::Ok { heartbeat_interval } => {
                interval = Some(interval.map_or(*heartbeat_interval, |d| d.min(*heartbeat_interval)));
            }
            BeatReply::Unknown => unknown.push(i),
        }
    }
    let interval = interval.unwrap_or(state.settings.core.timings.heartbeat_interval);
    Ok(json_response(StatusCode::OK, &Beats { unknown, heartbeat_interval_ms: millis(interval) }))
}

/// `PATCH /v1/instances`
pub(super) async fn update(
    state: &Arc<AppState>,
    q: &Query,
    allowed: &[&str],
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let after = after(q)?;
    let mut o = Obj::from_body(body, allowed)?;
    let key = o.instance_key()?;
    let upd = UpdateRequest {
        weight: o.num("weight")?.map(normalise_weight),
        enabled: o.bool("enabled")?,
        healthy: o.bool("healthy")?,
        metadata: o.string_map("metadata")?,
    };
    let instance_id = key.instance_id();
    match ordered(state, after, Request::Update(key, upd)).await? {
        (Reply::Done, counter) => Ok(with_counter(instance_id_response(instance_id), counter)),
        (other, _) => Err(unexpected(&other)),
    }
}

/// `DELETE /v1/instances?service=&ip=&port=`
pub(super) async fn deregister(state: &Arc<AppState>, q: &Query) -> Result<Response<Body>, ApiError> {
    let after = after(q)?;
    let key = q.instance_key()?;
    let instance_id = key.instance_id();
    match ordered(state, after, Request::Deregister(key)).await? {
        (Reply::Done, counter) => Ok(with_counter(instance_id_response(instance_id), counter)),
        (other, _) => Err(unexpected(&other)),
    }
}

/// What a query asks: the service, the selection and, for a watch, the
/// checksum the client holds and how long to wait (not yet capped).
pub(crate) struct QueryParams {
    pub(crate) key: ServiceKey,
    pub(crate) selector: Selector,
    pub(crate) checksum: Option<Checksum>,
    pub(crate) wait: Option<Duration>,
    /// A streamed watch (`stream=true`): every change until `wait` ends, on
    /// one answer.
    pub(crate) stream: bool,
}

/// `GET /v1/instances?service=`, a long poll with `checksum` and `wait`.
/// Served from the published snapshot, never through the driver.
pub(super) async fn query(state: &Arc<AppState>, q: &Query) -> Result<Response<Body>, ApiError> {
    let QueryParams { key, selector, checksum, wait, stream } = query_params(q)?;
    match (checksum, wait) {
        (Some(checksum), Some(wait)) if stream => {
            let wait = wait.min(state.settings.http.max_wait);
            stream_watch(state, key, selector, checksum, wait).await
        }
        (Some(checksum), Some(wait)) => {
            let wait = wait.min(state.settings.http.max_wait);
            long_poll(state, key, selector, checksum, wait).await
        }
        _ => {
            let published = published(state, &key, false).await?;
            Ok(answer(&published, &selector))
        }
    }
}

/// Parses the parameters of a query or watch (`wait` needs `checksum`).
pub(crate) fn query_params(q: &Query) -> Result<QueryParams, ApiError> {
    let key = q.service_key(None)?;
    let mut clusters = Vec::new();
    for c in q.get("clusters").unwrap_or_default().split(',').filter(|c| !c.is_empty()) {
        clusters
            .push(Name::parse(Field::Cluster, c).map_err(|e| ApiError::invalid("clusters", e.to_string()))?);
    }
    let selector = Selector { clusters, healthy_only: q.bool("healthy_only")?.unwrap_or(false) };
    let checksum = q
        .get("checksum")
        .map(|c| {
            Checksum::parse(c).ok_or_else(|| {
                ApiError::invalid(
                    "checksum",
                    format!("must be 16 hex digits as returned by a query, got {:?}", crate::error::echo(c)),
                )
            })
        })
        .transpose()?;
    let wait = q.get("wait").map(|w| parse_duration("wait", w)).transpose()?;
    if checksum.is_none() && wait.is_some() {
        return Err(ApiError::invalid(
            "wait",
            "needs checksum: a watch returns when the content differs from the checksum the client holds",
        ));
    }
    let stream = q.bool("stream")?.unwrap_or(false);
    if stream && wait.is_none() {
        return Err(ApiError::invalid(
            "stream",
            "needs checksum and wait: a streamed watch sends every change after the checksum the client holds, for wait",
        ));
    }
    Ok(QueryParams { key, selector, checksum, wait, stream })
}

/// The published view of a service, published first if nobody read it yet.
pub(crate) async fn published(
    state: &AppState,
    key: &ServiceKey,
    watched: bool,
) -> Result<Arc<Published>, ApiError> {
    if let Some(p) = state.snapshots.get(key) {
        return Ok(p);
    }
    let (view, _) = state.driver.load_view(key.clone(), watched).await?;
    Ok(state.snapshots.get(key).unwrap_or_else(|| Published::new(view)))
}

/// The response to a query, from the view's cached body when it is a common one.
fn answer(published: &Published, selector: &Selector) -> Response<Body> {
    bytes_response(StatusCode::OK, "application/json", answer_bytes(published, selector))
}

/// The JSON body of a query's answer: the view's shared body when the
/// selection is a common one (no cluster filter), else rendered.
pub(crate) fn answer_bytes(published: &Published, selector: &Selector) -> Bytes {
    let answer = published.view.select(selector);
    if !selector.clusters.is_empty() {
        return answer_body(&answer);
    }
    published.body(selector.healthy_only, || answer_body(&answer))
}

/// Counts a waiting long poll; refuses past the configured limit.
pub(crate) struct WatchGuard<'a>(&'a AppState);

impl<'a> WatchGuard<'a> {
    pub(crate) fn acquire(state: &'a AppState) -> Result<WatchGuard<'a>, ApiError> {
        let max = state.settings.http.max_long_polls;
        let before = state.metrics.watchers.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            state.metrics.watchers.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::too_many_watches(max));
        }
        Ok(WatchGuard(state))
    }
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn long_poll(
    state: &Arc<AppState>,
    key: ServiceKey,
    selector: Selector,
    checksum: Checksum,
    wait: Duration,
) -> Result<Response<Body>, ApiError> {
    let _guard = WatchGuard::acquire(state)?;
    let deadline = tokio::time::Instant::now() + wait;
    // Frees the entry of an unknown service when this was its last watcher,
    // also when the client goes away mid-wait (the future is dropped).
    let mut sub = subscribe(state, key).await?;
    let Some(views) = sub.rx.as_mut() else { return Err(ApiError::shutting_down()) };
    let mut shutdown = state.shutdown.clone();
    loop {
        let published = Arc::clone(&views.borrow_and_update());
        if published.view.select(&selector).checksum() != checksum || *shutdown.borrow_and_update() {
            return Ok(answer(&published, &selector));
        }
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return Ok(answer(&published, &selector));
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(answer(&published, &selector)),
            _ = shutdown.changed() => return Ok(answer(&published, &selector)),
        }
    }
}

/// The content type of a streamed watch: one JSON answer per line.
pub(crate) const STREAM_TYPE: &str = "application/x-ndjson";

/// `stream=true`: answers at once with a chunked body that carries, one JSON
/// line each, every selection that differs from the one before it (the
/// first from `checksum`), until `wait` ends, the node shuts down or the
/// client goes away. Only the newest view is ever pending: a client that
/// reads slowly skips views, never queues them.
async fn stream_watch(
    state: &Arc<AppState>,
    key: ServiceKey,
    selector: Selector,
    checksum: Checksum,
    wait: Duration,
) -> Result<Response<Body>, ApiError> {
    // The task that feeds the body takes the slot and the subscription, and
    // gives both back when it ends; a refusal comes back before any answer.
    let (taken, refused) = tokio::sync::oneshot::channel();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let state = Arc::clone(state);
    let deadline = tokio::time::Instant::now() + wait;
    tokio::spawn(async move {
        let held = match WatchGuard::acquire(&state) {
            Ok(guard) => subscribe(&state, key).await.map(|sub| (guard, sub)),
            Err(e) => Err(e),
        };
        let (guard, mut sub) = match held {
            Ok(held) => held,
            Err(e) => {
                let _ = taken.send(Err(e));
                return;
            }
        };
        if taken.send(Ok(())).is_ok() {
            feed(&state, &mut sub, &selector, checksum, deadline, &tx).await;
        }
        drop(sub);
        drop(guard);
    });
    refused.await.map_err(|_| ApiError::shutting_down())??;
    let mut resp = Response::new(Body::stream(rx));
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(STREAM_TYPE));
    Ok(resp)
}

/// Sends a streamed watch's lines to its body until the watch ends.
async fn feed(
    state: &AppState,
    sub: &mut Subscription<'_>,
    selector: &Selector,
    mut checksum: Checksum,
    deadline: tokio::time::Instant,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) {
    let Some(views) = sub.rx.as_mut() else { return };
    let mut shutdown = state.shutdown.clone();
    let start = std::time::Instant::now();
    loop {
        let published = Arc::clone(&views.borrow_and_update());
        let current = published.view.select(selector).checksum();
        if current != checksum {
            if tx.send(stream_line(&published, selector)).await.is_err() {
                return;
            }
            if published.at > start {
                state.metrics.watch_wake.record(published.at.elapsed());
            }
            checksum = current;
        }
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
            _ = shutdown.changed() => {}
            () = tx.closed() => return,
        }
    }
}

/// One line of a streamed watch: the query's answer and a newline.
fn stream_line(published: &Published, selector: &Selector) -> Bytes {
    let body = answer_bytes(published, selector);
    let mut line = Vec::with_capacity(body.len() + 1);
    line.extend_from_slice(&body);
    line.push(b'\n');
    Bytes::from(line)
}

/// Subscribes a watcher to the service's views, publishing them first if
/// needed; refuses past `max_unknown_watched` watched unknown services.
pub(crate) async fn subscribe(state: &AppState, key: ServiceKey) -> Result<Subscription<'_>, ApiError> {
    let rx = match state.snapshots.subscribe(&key) {
        Some(rx) => rx,
        None => match state.driver.load_view(key.clone(), true).await? {
            (_, Some(rx)) => rx,
            (_, None) => {
                state.metrics.guard.unknown_watches_refused.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::too_many_unknown_watches(state.settings.http.max_unknown_watched));
            }
        },
    };
    Ok(Subscription::new(state, key, rx))
}

/// A watcher's receiver; dropping it releases the snapshot entry if it was
/// the last watcher of an unknown service.
pub(crate) struct Subscription<'a> {
    state: &'a AppState,
    key: ServiceKey,
    pub(crate) rx: Option<tokio::sync::watch::Receiver<Arc<Published>>>,
}

impl<'a> Subscription<'a> {
    /// Holds `rx`, a receiver of `key`'s views taken from the snapshots.
    pub(crate) fn new(
        state: &'a AppState,
        key: ServiceKey,
        rx: tokio::sync::watch::Receiver<Arc<Published>>,
    ) -> Subscription<'a> {
        Subscription { state, key, rx: Some(rx) }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.rx = None;
        self.state.snapshots.release(&self.key);
    }
}

fn answer_body(answer: &QueryAnswer) -> Bytes {
    #[derive(Serialize)]
    struct Answer<'a> {
        namespace: &'a str,
        group: &'a str,
        service: &'a str,
        checksum: String,
        protect_threshold_reached: bool,
        known: bool,
        instances: Vec<&'a InstanceView>,
    }
    let key = &answer.view().key;
    let body = Answer {
        namespace: key.namespace.as_str(),
        group: key.group.as_str(),
        service: key.service.as_str(),
        checksum: answer.checksum().to_string(),
        protect_threshold_reached: answer.protect_threshold_reached(),
        known: answer.view().known,
        instances: answer.instances().collect(),
    };
    // Serialising these plain values cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn instance_id_response(instance_id: String) -> Response<Body> {
    #[derive(Serialize)]
    struct Id {
        instance_id: String,
    }
    json_response(StatusCode::OK, &Id { instance_id })
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A reply of the wrong kind: a bug between this crate and the core.
pub(super) fn unexpected(reply: &Reply) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected core reply {reply:?}"))
}
