//! The Filter: what every request goes through before and after its handler.
//!
//! One access-log line per request (target `muster::access`: method, path,
//! status, duration, request id, peer address); `x-request-id` echoed or
//! made; the access rule of the route (bearer tokens, cluster secret); the
//! body size limit (413) and its deadline and minimum rate (408). Long polls
//! are limited in their handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::api::{self, Access, AppState, Matched};
use crate::compat::{self, Api};
use crate::error::{ApiError, Body};
use crate::metrics::Metrics;
use crate::peer_auth::Signed;

/// The request-id header.
pub(crate) const REQUEST_ID: &str = "x-request-id";
/// Longest request id taken from a client.
const REQUEST_ID_MAX: usize = 128;

/// Serves one request through the Filter.
pub(crate) async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let request_id = request_id(req.headers());
    let method = req.method().clone();
    // A clone of the URI shares its bytes with the request: no copy of the path.
    let uri = req.uri().clone();
    let path = uri.path();
    let foreign = compat::api_of(&state.settings, path);
    let (route, mut resp) = match foreign {
        Api::Nacos => (None, compat::nacos::handle(&state, peer, req).await),
        Api::Eureka => (None, compat::eureka::handle(&state, req).await),
        Api::Consul => (None, compat::consul::handle(&state, peer, &method, &uri, req).await),
        Api::Native => match find(&method, path, req.headers()) {
            Err(resp) => (None, *resp),
            Ok(m) => {
                let resp = match serve(&state, &m, uri.query(), req).await {
                    Ok(resp) => resp,
                    Err(e) => e.response(),
                };
                (Some(m.index), resp)
            }
        },
    };
    resp.headers_mut().insert(REQUEST_ID, request_id.clone());
    let status = resp.status().as_u16();
    if foreign == Api::Native {
        state.metrics.count_request(route, status);
    }
    tracing::info!(
        target: "muster::access",
        method = %method,
        path = %path,
        status,
        duration_ms = %format_args!("{:.3}", start.elapsed().as_secs_f64() * 1000.0),
        request_id = request_id.to_str().unwrap_or_default(),
        peer = %peer,
    );
    Ok(resp)
}

/// The route of a request; a console file (or redirect) or a 404 / 405 as `Err`.
fn find(method: &hyper::Method, path: &str, headers: &HeaderMap) -> Result<Matched, Box<Response<Body>>> {
    match crate::console::asset(method, path, headers) {
        Some(resp) => Err(Box::new(resp)),
        None => api::find(method, path).map_err(|e| Box::new(e.response())),
    }
}

async fn serve(
    state: &Arc<AppState>,
    m: &Matched,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    authorize(state, m.route.access, req.headers())?;
    // Peer requests: the signature headers are read before the body, and
    // verified over it once read.
    let signed = match m.route.access {
        Access::Peer => Some(Signed::from_headers(req.headers()).inspect_err(|_| count_refused(state))?),
        _ => None,
    };
    let from_console = req.headers().contains_key(crate::console::CONSOLE_HEADER);
    let takes_body = m.route.access == Access::Peer || !m.route.body.is_empty();
    let body = if takes_body {
        let http = &state.settings.http;
        let limit =
            if m.route.access == Access::Peer { http.max_peer_body_bytes } else { http.max_body_bytes };
        let pace = Pace { timeout: http.body_timeout, min_bytes_per_s: http.body_min_bytes_per_s };
        read_body(req, limit, pace, &state.metrics).await?
    } else {
        Bytes::new()
    };
    let from = match (&signed, &state.settings.cluster_secret) {
        (Some(signed), Some(secret)) => {
            let http = &state.settings.http;
            let peers = &state.settings.core.peers;
            let now = crate::peer_auth::unix_ms();
            let verified =
                state.peer_verifier.verify(signed, &body, secret, peers, http.peer_clock_window, now);
            Some(verified.inspect_err(|_| count_refused(state))?)
        }
        _ => None,
    };
    crate::console::scoped(from_console, api::dispatch(state, m, query, body, from.as_ref())).await
}

/// Counts a peer request refused for its signature.
fn count_refused(state: &AppState) {
    state.metrics.peer_requests_refused.fetch_add(1, Ordering::Relaxed);
    state.metrics.guard.peer_signatures_refused.fetch_add(1, Ordering::Relaxed);
}

/// How long a body may take: at most `timeout` in all, and after the first
/// [`BODY_GRACE`] at least `min_bytes_per_s` on average (0: no rate).
#[derive(Clone, Copy, Debug)]
struct Pace {
    timeout: Duration,
    min_bytes_per_s: u64,
}

/// Time a body may take before the minimum rate applies.
const BODY_GRACE: Duration = Duration::from_secs(1);
/// Largest buffer reserved up front from a declared `content-length`.
const BODY_RESERVE_MAX: usize = 64 << 10;

impl Pace {
    /// The latest time the next chunk may arrive, `received` bytes in.
    fn next_deadline(&self, start: Instant, received: usize) -> Instant {
        let hard = start + self.timeout;
        if self.min_bytes_per_s == 0 {
            return hard;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_bytes_per_s as f64);
        hard.min(start + BODY_GRACE + earned)
    }
}

/// Reads a client request body under the node's limits (`max_body_bytes`
/// and the body pace): the one body reader of the compatibility adapters.
pub(crate) async fn read_client_body(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let http = &state.settings.http;
    let pace = Pace { timeout: http.body_timeout, min_bytes_per_s: http.body_min_bytes_per_s };
    read_body(req, http.max_body_bytes, pace, &state.metrics).await
}

/// Reads a body of at most `limit` bytes (413 past it) within `pace` (408
/// past it, and the connection is closed). Chunks are copied into one
/// buffer as they come, so a slow sender holds at most the body's bytes,
/// not one read buffer per chunk.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    pace: Pace,
    metrics: &Metrics,
) -> Result<Bytes, ApiError> {
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let reserve = declared.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)).min(BODY_RESERVE_MAX);
    let mut buf = BytesMut::with_capacity(reserve);
    let mut body = req.into_body();
    let start = Instant::now();
    loop {
        let deadline = tokio::time::Instant::from_std(pace.next_deadline(start, buf.len()));
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                metrics.guard.slow_bodies.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::body_too_slow(
                    buf.len(),
                    start.elapsed(),
                    pace.timeout,
                    pace.min_bytes_per_s,
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("could not read the body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Checks the route's access rule against the `authorization` header.
pub(crate) fn authorize(state: &AppState, access: Access, headers: &HeaderMap) -> Result<(), ApiError> {
    check_access(state, access, bearer(headers))
}

/// Checks an access rule against the token a request carries (the bearer
/// token, or a foreign API's own token header).
pub(crate) fn check_access(state: &AppState, access: Access, token: Option<&[u8]>) -> Result<(), ApiError> {
    let s = &state.settings;
    let holds = |secret: &Option<crate::config::Secret>| match (secret, token) {
        (Some(secret), Some(token)) => secret.matches(token),
        _ => false,
    };
    match access {
        Access::Open => Ok(()),
        Access::Read if s.read_token.is_none() || holds(&s.read_token) || holds(&s.write_token) => Ok(()),
        Access::Read => {
            Err(ApiError::unauthorized("reads need the read token: Authorization: Bearer <token>"))
        }
        Access::Write if s.write_token.is_none() || holds(&s.write_token) => Ok(()),
        Access::Write => {
            Err(ApiError::unauthorized("writes need the write token: Authorization: Bearer <token>"))
        }
        Access::Peer if s.cluster_secret.is_none() => {
            Err(ApiError::unauthorized("this node has no cluster secret; its peer API is closed"))
        }
        // The signature is checked once the body is read (`peer_auth.rs`).
        Access::Peer => Ok(()),
    }
}

/// The bearer token of the `authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// The client's request id if it is usable, else a fresh one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID) {
        if usable_request_id(id.as_bytes()) {
            // Shares the client's bytes: no copy.
            return id.clone();
        }
    }
    fresh_request_id()
}

/// [`request_id`] of a request head read outside hyper (`parked.rs`).
pub(crate) fn request_id_of(client: Option<&[u8]>) -> String {
    match client {
        Some(b) if usable_request_id(b) => String::from_utf8_lossy(b).into_owned(),
        _ => fresh_request_id().to_str().unwrap_or("-").to_owned(),
    }
}

fn usable_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= REQUEST_ID_MAX && b.iter().all(u8::is_ascii_graphic)
}

fn fresh_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        nanos ^ std::process::id().rotate_left(16)
    });
    // `{prefix:08x}-{seq:08x}` without the formatting machinery (it showed
    // in profiles of single-beat load).
    let seq = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut buf = [b'-'; 8 + 1 + 16];
    let digits = if seq >> 32 == 0 { 8 } else { 16 };
    hex_into(&mut buf[..8], u64::from(prefix));
    hex_into(&mut buf[9..9 + digits], seq);
    HeaderValue::from_bytes(&buf[..9 + digits]).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Writes the low `out.len()` hex digits of `v` into `out`, most significant first.
fn hex_into(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_taken_case_insensitively_by_scheme() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bear"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn client_request_ids_are_echoed_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id(&h);
        assert_ne!(made, "has space");
        let (a, b) = (request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
        assert_ne!(a, b);
        for id in [made, a, b] {
            let id = id.to_str().unwrap();
            assert_eq!(id.len(), 17, "{id}");
            assert!(id.split_once('-').is_some_and(|(p, s)| p.len() == 8 && s.len() == 8), "{id}");
            assert!(id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()), "{id}");
        }
    }

    #[test]
    fn a_body_earns_time_at_the_minimum_rate_after_a_grace_and_never_past_the_timeout() {
        let start = Instant::now();
        let pace = Pace { timeout: Duration::from_secs(10), min_bytes_per_s: 1000 };
        assert_eq!(pace.next_deadline(start, 0), start + BODY_GRACE);
        assert_eq!(pace.next_deadline(start, 2000), start + BODY_GRACE + Duration::from_secs(2));
        assert_eq!(pace.next_deadline(start, 1 << 30), start + Duration::from_secs(10));
        let no_rate = Pace { min_bytes_per_s: 0, ..pace };
        assert_eq!(no_rate.next_deadline(start, 0), start + Duration::from_secs(10));
    }

    #[test]
    fn hex_digits_are_written_most_significant_first() {
        let mut out = [0u8; 8];
        hex_into(&mut out, 0xdead_beef);
        assert_eq!(&out, b"deadbeef");
        hex_into(&mut out, 0x1_0000_0001);
        assert_eq!(&out, b"00000001");
    }
}
