//! The Consul HTTP API, the parts service clients and discovery tools use:
//! agent registration and TTL checks, the catalog, health and status reads,
//! and blocking queries.
//!
//! Every request becomes core requests through the same driver handle as the
//! native API, and every read selects from the same published views; the
//! adapter decides no registry semantics (see `wire.rs` for the mapping).
//!
//! # The index
//! `X-Consul-Index` is `hi << 22 | lo`: `hi` is a per-node number of the
//! publication the answer was made from (Unix milliseconds, strictly
//! increasing, kept in [`Published::index`] or, for catalog-wide answers, in
//! one slot per endpoint), `lo` the low 22 bits of a hash of the answer. A
//! blocking query waits while the answer's `lo` equals the client's: it waits
//! on content, like the native watch, so a client that moves between nodes
//! keeps working, and an answer whose content did not change echoes the
//! client's index (Prometheus drops those). An answer whose content changed
//! carries an index above the client's. The index is never zero.

mod routes;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode, Uri};
use muster_core::{InvalidInput, ServiceKey};

use crate::api::{Access, AppState, input};
use crate::error::{ApiError, Body};
use crate::snapshot::Published;

/// The path prefixes of the Consul API.
pub(crate) const PREFIXES: [&str; 4] = ["/v1/agent/", "/v1/catalog/", "/v1/health/", "/v1/status/"];

/// Bits of the index taken from the answer's hash.
const LO_BITS: u32 = 22;
const LO_MASK: u64 = (1 << LO_BITS) - 1;
/// Consul's default `wait` of a blocking query.
const WAIT_DEFAULT: Duration = Duration::from_secs(300);
/// Least time between two renderings of one catalog-wide blocking query, so
/// a busy registry costs a waiter a few renderings per second at most.
const CATALOG_COALESCE: Duration = Duration::from_millis(100);

/// Serves one Consul request (the Filter has taken the request id and logs it).
pub(crate) async fn handle(
    state: &Arc<AppState>,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    req: Request<Incoming>,
) -> Response<Body> {
    match serve(state, peer, method, uri, req).await {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

async fn serve(
    state: &Arc<AppState>,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    req: Request<Incoming>,
) -> Result<Response<Body>, ConsulError> {
    let route = routes::find(method, uri.path())?;
    let q = ReadQuery::parse(uri.query())?;
    let token = token(req.headers(), &q);
    let access = if *method == Method::GET { Access::Read } else { Access::Write };
    crate::filter::check_access(state, access, token.as_deref()).map_err(|_| {
        ConsulError::new(
            StatusCode::FORBIDDEN,
            "Permission denied: the token (X-Consul-Token) is not Muster's",
        )
    })?;
    if !state.snapshots.is_ready() && route.needs_ready() {
        return Err(ApiError::not_ready().into());
    }
    let body = if *method == Method::PUT {
        crate::filter::read_client_body(state, req).await?
    } else {
        Bytes::new()
    };
    routes::dispatch(state, peer, route, &q, &body).await
}

/// The token: `X-Consul-Token`, else `Authorization: Bearer`, else `?token=`.
fn token(headers: &hyper::HeaderMap, q: &ReadQuery) -> Option<Vec<u8>> {
    if let Some(t) = headers.get("x-consul-token") {
        return Some(t.as_bytes().to_vec());
    }
    if let Some(t) = crate::filter::bearer(headers) {
        return Some(t.to_vec());
    }
    q.get("token").map(|t| t.as_bytes().to_vec())
}

/// A refused request, answered as Consul answers: a status and plain text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConsulError {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl ConsulError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ConsulError {
        ConsulError { status, message: message.into(), allow: None }
    }

    pub(crate) fn bad(message: impl Into<String>) -> ConsulError {
        ConsulError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn method(method: &Method, allow: &'static str) -> ConsulError {
        ConsulError {
            allow: Some(allow),
            ..ConsulError::new(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} not allowed"))
        }
    }

    fn response(&self) -> Response<Body> {
        let mut resp = Response::new(Body::new(Bytes::from(self.message.clone())));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if let Some(allow) = self.allow {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<ApiError> for ConsulError {
    fn from(e: ApiError) -> ConsulError {
        ConsulError::new(e.status, e.message)
    }
}

impl From<InvalidInput> for ConsulError {
    fn from(e: InvalidInput) -> ConsulError {
        ConsulError::bad(format!("Invalid {}: {e}", e.field.as_str()))
    }
}

impl From<wire::DecodeError> for ConsulError {
    fn from(e: wire::DecodeError) -> ConsulError {
        ConsulError::bad(e.0)
    }
}

/// The query string of a request: Consul ignores parameters it does not
/// know, and so does Muster, except those whose silent omission would give
/// wrong answers (`filter`, `node-meta`).
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadQuery {
    pairs: Vec<(String, String)>,
    /// `index`: a blocking query waits while the answer's content is what
    /// this index was given for.
    pub(crate) index: Option<u64>,
    /// `wait`, capped by `max_wait_ms`.
    pub(crate) wait: Duration,
}

/// Most query parameters taken.
const QUERY_PAIRS_MAX: usize = 64;

impl ReadQuery {
    fn parse(raw: Option<&str>) -> Result<ReadQuery, ConsulError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == QUERY_PAIRS_MAX {
                return Err(ConsulError::bad(format!("at most {QUERY_PAIRS_MAX} query parameters")));
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = input::decode(k).ok_or_else(|| ConsulError::bad("bad percent-encoding in the query"))?;
            let v =
                input::decode(v).ok_or_else(|| ConsulError::bad(format!("bad percent-encoding of {k}")))?;
            pairs.push((k, v));
        }
        let mut q = ReadQuery { pairs, index: None, wait: WAIT_DEFAULT };
        for refused in ["filter", "node-meta"] {
            if q.get(refused).is_some() {
                return Err(ConsulError::bad(format!("Muster does not support the {refused} parameter")));
            }
        }
        if let Some(i) = q.get("index") {
            let i: u64 = i.parse().map_err(|_| ConsulError::bad(format!("Invalid index: {i:?}")))?;
            q.index = Some(i);
        }
        if let Some(w) = q.get("wait") {
            q.wait = wire::parse_go_duration(w)
                .or_else(|| w.parse::<u64>().ok().map(Duration::from_millis))
                .ok_or_else(|| ConsulError::bad(format!("Invalid wait time: {w:?}")))?;
        }
        Ok(q)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter (`tag`).
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    /// A flag such as `passing`: present without a value, or a true value.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !matches!(v, "0" | "false" | "False"))
    }

    /// Refuses a `dc` other than Muster's, as Consul refuses an unknown one.
    pub(crate) fn check_dc(&self) -> Result<(), ConsulError> {
        match self.get("dc") {
            Some(dc) if !dc.is_empty() && dc != wire::DATACENTER => {
                Err(ConsulError::new(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter"))
            }
            _ => Ok(()),
        }
    }
}

/// The next `hi` of an index: Unix milliseconds, strictly above the last.
fn next_hi() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64).max(1);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The `hi` of a publication. A service the node knows nothing of has no
/// kept publication (see `snapshot.rs`), so its answers share `hi` 1.
fn hi_of(p: &Published) -> u64 {
    if p.view.known || !p.view.instances.is_empty() { *p.index.get_or_init(next_hi) } else { 1 }
}

fn lo(body: &[u8]) -> u64 {
    muster_core::hash::StableHasher::new().bytes(body).finish() & LO_MASK
}

/// The index of an answer made from a publication numbered `hi`, for a
/// client that holds `client` (0: none): above the client's when the content
/// differs from what the client's index was given for.
fn index_of(hi: u64, body: &[u8], client: u64) -> u64 {
    let own = (hi << LO_BITS) | lo(body);
    if client == 0 { own } else { own.max((((client >> LO_BITS) + 1) << LO_BITS) | lo(body)) }
}

/// Whether `body` is the content the client's index was given for.
fn unchanged(client: u64, body: &[u8]) -> bool {
    client != 0 && client & LO_MASK == lo(body)
}

/// A read's answer: JSON with Consul's headers.
pub(crate) fn read_response(body: impl Into<Bytes>, index: u64) -> Response<Body> {
    let mut resp = Response::new(Body::new(body.into()));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-consul-index", HeaderValue::from(index.max(1)));
    h.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    h.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    resp
}

/// An empty 200, Consul's answer to a write (`true` to the Go client).
pub(crate) fn ok_response() -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::new()));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The published view of a service, published first if nobody read it yet.
pub(crate) async fn published(
    state: &Arc<AppState>,
    key: &ServiceKey,
    watched: bool,
) -> Result<Arc<Published>, ConsulError> {
    Ok(crate::api::published(state, key, watched).await?)
}

/// Counts a waiting blocking query; refuses past `max_long_polls`.
struct WatchGuard<'a>(&'a AppState);

impl<'a> WatchGuard<'a> {
    fn acquire(state: &'a AppState) -> Result<WatchGuard<'a>, ConsulError> {
        let max = state.settings.http.max_long_polls;
        if state.metrics.watchers.fetch_add(1, Ordering::AcqRel) >= max {
            state.metrics.watchers.fetch_sub(1, Ordering::AcqRel);
            return Err(ConsulError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this node serves at most {max} concurrent blocking queries; retry shortly"),
            ));
        }
        Ok(WatchGuard(state))
    }
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

fn wait_of(state: &AppState, q: &ReadQuery) -> Duration {
    q.wait.min(state.settings.http.max_wait)
}

/// A read of one service, blocking when the query has an `index`: renders
/// the answer from each new publication of the service until its content
/// differs from the client's, the wait ends or the node shuts down.
pub(crate) async fn service_read(
    state: &Arc<AppState>,
    key: &ServiceKey,
    q: &ReadQuery,
    render: impl Fn(&Published) -> Bytes,
) -> Result<Response<Body>, ConsulError> {
    let client = q.index.unwrap_or(0);
    if client == 0 {
        let p = published(state, key, false).await?;
        let body = render(&p);
        let index = index_of(hi_of(&p), &body, 0);
        return Ok(read_response(body, index));
    }
    let _guard = WatchGuard::acquire(state)?;
    let deadline = tokio::time::Instant::now() + wait_of(state, q);
    let mut views = match state.snapshots.subscribe(key) {
        Some(rx) => rx,
        None => {
            published(state, key, true).await?;
            state.snapshots.subscribe(key).ok_or_else(ApiError::shutting_down)?
        }
    };
    let mut shutdown = state.shutdown.clone();
    loop {
        let p = Arc::clone(&views.borrow_and_update());
        let body = render(&p);
        let hi = hi_of(&p);
        if !unchanged(client, &body) || *shutdown.borrow_and_update() {
            let index = index_of(hi, &body, client);
            return Ok(read_response(body, index));
        }
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return Ok(read_response(body, client));
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(read_response(body, client)),
            _ = shutdown.changed() => return Ok(read_response(body, client)),
        }
    }
}

/// The catalog-wide answers, each with its own index slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Catalog {
    Services,
    Nodes,
    AgentServices,
    AgentChecks,
}

/// Per catalog-wide answer: the hash of the last content and its `hi`.
static CATALOG_SLOTS: [Mutex<(u64, u64)>; 4] =
    [Mutex::new((0, 0)), Mutex::new((0, 0)), Mutex::new((0, 0)), Mutex::new((0, 0))];

fn catalog_hi(which: Catalog, body: &[u8]) -> u64 {
    let h = muster_core::hash::StableHasher::new().bytes(body).finish();
    let mut slot = CATALOG_SLOTS[which as usize].lock().unwrap_or_else(PoisonError::into_inner);
    if slot.1 == 0 || slot.0 != h {
        *slot = (h, next_hi());
    }
    slot.1
}

/// A catalog-wide read, blocking when the query has an `index`: renders
/// again after each change of any service (at most every
/// [`CATALOG_COALESCE`]) until the content differs from the client's.
pub(crate) async fn catalog_read(
    state: &Arc<AppState>,
    which: Catalog,
    q: &ReadQuery,
) -> Result<Response<Body>, ConsulError> {
    let client = q.index.unwrap_or(0);
    if client == 0 {
        let body = routes::render_catalog(state, which).await?;
        let index = index_of(catalog_hi(which, &body), &body, 0);
        return Ok(read_response(body, index));
    }
    let _guard = WatchGuard::acquire(state)?;
    let deadline = tokio::time::Instant::now() + wait_of(state, q);
    let mut shutdown = state.shutdown.clone();
    loop {
        let notified = state.snapshots.any_change().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let body = routes::render_catalog(state, which).await?;
        let hi = catalog_hi(which, &body);
        if !unchanged(client, &body) || *shutdown.borrow_and_update() {
            return Ok(read_response(body.clone(), index_of(hi, &body, client)));
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => return Ok(read_response(body, client)),
            _ = shutdown.changed() => return Ok(read_response(body, client)),
        }
        tokio::select! {
            () = tokio::time::sleep(CATALOG_COALESCE) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_is_non_zero_and_rises_above_the_clients_when_the_content_changed() {
        let hi = next_hi();
        assert!(next_hi() > hi);
        let a = index_of(hi, b"[1]", 0);
        assert!(a > 0 && unchanged(a, b"[1]"));
        assert!(!unchanged(a, b"[2]"));
        let b = index_of(hi + 1, b"[2]", a);
        assert!(b > a && unchanged(b, b"[2]"));
        let from_elsewhere = (hi + 1_000) << LO_BITS;
        assert!(index_of(hi, b"[2]", from_elsewhere) > from_elsewhere);
        assert!(!unchanged(0, b"[1]"));
    }

    #[test]
    fn query_flags_and_blocking_parameters_parse_as_consul_takes_them() {
        let q = ReadQuery::parse(Some("passing&tag=a&tag=b&index=12&wait=5s&dc=dc1")).unwrap();
        assert!(q.flag("passing") && !q.flag("near"));
        assert_eq!(q.all("tag"), ["a", "b"]);
        assert_eq!((q.index, q.wait), (Some(12), Duration::from_secs(5)));
        assert!(q.check_dc().is_ok());
        assert!(ReadQuery::parse(Some("dc=eu")).unwrap().check_dc().is_err());
        for bad in ["index=x", "wait=soon", "filter=Service.Tags", "tag=%zz"] {
            assert!(ReadQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
