//! Failover over the server list.
//!
//! Requests go to the current server. A connection error, a timeout, or a
//! 5xx / 429 answer (starting, overloaded, shutting down, too many watches)
//! puts that server in backoff and the same request goes to the next one at
//! once; the first server that answers becomes current. A server in backoff
//! is tried only after every other one, so a dead server costs nothing while
//! a live one exists, and a recovered server is used again as soon as its
//! backoff ends (or at once, when it is the only one left). Every request the
//! SDK sends is idempotent, so repeating it on another server is safe.
//!
//! Two lanes: long polls (watches) use their own connections, everything
//! else (heartbeats, registrations, queries, probes) another HTTP client, so
//! a client holding many watches never queues its heartbeats behind them.
//! A 429 on a watch (the node's watch table is full) is "watch later", not
//! a failed server. While watches are in flight to a server, a prober asks
//! it `GET /health/live` every `hung_after`; a server that does not answer
//! within `hung_after` is hung (SIGSTOPped, wedged): it goes into backoff
//! and its long polls are cut at once, so they move to another server in a
//! few seconds instead of waiting out their poll. Every request runs on the
//! SDK's own runtime ([`super::runtime`]).

use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::error::{Attempt, Error, Unavailable};

/// The answer header of an instance write carrying the client's new ordering
/// token (the server's `api::instances::COUNTER_HEADER`).
const COUNTER_HEADER: &str = "muster-counter";
use super::runtime;

/// The port of a server address given without one.
pub(crate) const DEFAULT_PORT: u16 = 8848;
/// Largest answer body read, bytes.
const ANSWER_BYTES_MAX: usize = 64 << 20;
const USER_AGENT_VALUE: &str = concat!("muster-sdk/", env!("CARGO_PKG_VERSION"));

type HttpClient = HyperClient<HttpConnector, Full<Bytes>>;

/// Timings of the pool.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolTimings {
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// Probe period and timeout of servers with watches in flight.
    pub(crate) hung_after: Duration,
}

/// The servers, their health and one pooled HTTP/1 client.
pub(crate) struct Pool {
    servers: Vec<Server>,
    /// Heartbeats, registrations, queries, probes.
    http: HttpClient,
    /// Long polls only.
    watches: HttpClient,
    /// Whether the prober runs.
    probing: AtomicBool,
    /// No server answered the last request (logged once per outage).
    outage: AtomicBool,
    auth: Option<HeaderValue>,
    current: AtomicUsize,
    switches: AtomicU64,
    timings: PoolTimings,
    /// The client's ordering token: the highest `muster-counter` any server
    /// answered an instance write with, sent back as `?after=` on every
    /// instance write (0: none yet, nothing sent), so this client's writes
    /// keep their order when it fails over between nodes whose clocks differ.
    after: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("servers", &self.servers.iter().map(|s| &s.addr).collect::<Vec<_>>())
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Server {
    /// `host:port`.
    addr: String,
    health: Mutex<Health>,
    /// Long polls in flight to this server.
    polls: Arc<AtomicUsize>,
    /// Bumped when the server is found hung: its long polls end at once.
    hung: watch::Sender<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Health {
    /// Failures in a row.
    failures: u32,
    /// Tried only after the others until then.
    backoff_until: Option<Instant>,
}

/// One request, ready to be sent to any server.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) path: String,
    pub(crate) body: Option<Bytes>,
    /// Longest wait for the whole answer from one server.
    pub(crate) timeout: Duration,
    /// A long poll: its own connections, 429 is not a failover, cut when
    /// the server is found hung.
    pub(crate) watch: bool,
}

impl Call {
    pub(crate) fn new(method: Method, path: impl Into<String>, timeout: Duration) -> Call {
        Call { method, path: path.into(), body: None, timeout, watch: false }
    }

    /// A long poll `GET`.
    pub(crate) fn watch(path: impl Into<String>, timeout: Duration) -> Call {
        Call { watch: true, ..Call::new(Method::GET, path, timeout) }
    }

    /// Whether the call writes an instance (`POST`, `PATCH` or `DELETE`
    /// `/v1/instances`): it carries the client's ordering token.
    pub(crate) fn is_instance_write(&self) -> bool {
        let path = self.path.split_once('?').map_or(self.path.as_str(), |(p, _)| p);
        path == "/v1/instances" && matches!(self.method, Method::POST | Method::PATCH | Method::DELETE)
    }

    /// The same call with a JSON body.
    pub(crate) fn json(mut self, body: &impl Serialize) -> Result<Call, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::invalid("body", e.to_string()))?;
        self.body = Some(Bytes::from(bytes));
        Ok(self)
    }
}

/// A server's answer that is not a reason to fail over: 1xx to 4xx but 429.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    /// Index of the server that answered.
    pub(crate) server: usize,
    /// The `muster-counter` header of the answer, if any.
    pub(crate) counter: Option<u64>,
}

impl Pool {
    /// A pool over `servers` (`host:port`, `host` for port 8848, or
    /// `http://host:port`), in the order given.
    pub(crate) fn new(servers: &[String], token: Option<&str>, timings: PoolTimings) -> Result<Pool, Error> {
        // Empty entries (a trailing comma, `a:1,,b:2`) are skipped, as
        // `Client::new` and the CLI do.
        let servers: Vec<&String> = servers.iter().filter(|s| !s.trim().is_empty()).collect();
        if servers.is_empty() {
            return Err(Error::invalid("server", "give at least one server address, e.g. 127.0.0.1:8848"));
        }
        let servers = servers
            .into_iter()
            .map(|s| {
                Ok(Server {
                    addr: parse_server(s)?,
                    health: Mutex::new(Health::default()),
                    polls: Arc::new(AtomicUsize::new(0)),
                    hung: watch::Sender::new(0),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let auth = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .map_err(|_| Error::invalid("token", "must be printable ASCII without line breaks"))
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timings.connect_timeout));
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector.clone());
        // Idle watch connections close soon: a released watch gives its
        // file descriptor back within seconds.
        let watches = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        Ok(Pool {
            servers,
            http,
            watches,
            probing: AtomicBool::new(false),
            outage: AtomicBool::new(false),
            auth,
            current: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
            after: AtomicU64::new(0),
            timings,
        })
    }

    /// Number of servers.
    pub(crate) fn len(&self) -> usize {
        self.servers.len()
    }

    /// A server's address.
    pub(crate) fn addr(&self, i: usize) -> &str {
        self.servers.get(i).map_or("", |s| s.addr.as_str())
    }

    /// The server requests go to first.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// Starts at server `i` instead of the first one.
    pub(crate) fn set_current(&self, i: usize) {
        if i < self.servers.len() {
            self.current.store(i, Ordering::Release);
        }
    }

    /// Whether the last request reached no server (until one answers).
    pub(crate) fn in_outage(&self) -> bool {
        self.outage.load(Ordering::Acquire)
    }

    /// How many times the current server changed.
    pub(crate) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Acquire)
    }

    /// The order to try servers in: from the current one on, those in
    /// backoff last (earliest end of backoff first).
    fn order(&self) -> Vec<usize> {
        let n = self.servers.len();
        let start = self.current();
        let now = Instant::now();
        let mut ready = Vec::with_capacity(n);
        let mut waiting = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            match self.health(i).backoff_until {
                Some(until) if until > now => waiting.push((until, i)),
                _ => ready.push(i),
            }
        }
        waiting.sort();
        ready.extend(waiting.into_iter().map(|(_, i)| i));
        ready
    }

    fn health(&self, i: usize) -> Health {
        self.servers
            .get(i)
            .map(|s| *s.health.lock().unwrap_or_else(PoisonError::into_inner))
            .unwrap_or_default()
    }

    fn failed(&self, i: usize) {
        let Some(server) = self.servers.get(i) else { return };
        let mut h = server.health.lock().unwrap_or_else(PoisonError::into_inner);
        h.failures = h.failures.saturating_add(1);
        let backoff = jitter(backoff(self.timings.backoff_min, self.timings.backoff_max, h.failures));
        h.backoff_until = Some(later(Instant::now(), backoff));
    }

    /// Server `i` answers (a streamed watch's line): its backoff ends and
    /// it becomes the current server, as after any answer.
    pub(crate) fn answered_by(&self, i: usize) {
        self.succeeded(i);
    }

    fn succeeded(&self, i: usize) {
        let Some(server) = self.servers.get(i) else { return };
        *server.health.lock().unwrap_or_else(PoisonError::into_inner) = Health::default();
        if self.outage.swap(false, Ordering::AcqRel) {
            tracing::info!(server = %server.addr, "a Muster server answers again");
        }
        let before = self.current.swap(i, Ordering::AcqRel);
        if before != i {
            self.switches.fetch_add(1, Ordering::AcqRel);
            tracing::info!(from = self.addr(before), to = %server.addr, "muster client moved to another server");
        }
    }

    /// Sends `call` to the servers in turn until one answers without a
    /// reason to fail over.
    pub(crate) async fn send(&self, call: &Call) -> Result<Answer, Error> {
        self.send_lines(call, None).await
    }

    /// Sends a streamed watch with failover: each line of a streamed answer
    /// goes to `lines` with the index of its server as it arrives; `Ok` once
    /// a server's stream ended, the error of any other answer.
    pub(crate) async fn stream(&self, call: &Call, lines: mpsc::Sender<(Bytes, usize)>) -> Result<(), Error> {
        let answer = self.send_lines(call, Some(&lines)).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(api_error(self.addr(answer.server), answer.status, &answer.body))
    }

    async fn send_lines(
        &self,
        call: &Call,
        lines: Option<&mpsc::Sender<(Bytes, usize)>>,
    ) -> Result<Answer, Error> {
        let mut attempts = Vec::new();
        for i in self.order() {
            match self.send_to_lines(i, call, lines).await {
                Ok(answer) if call.watch && answer.status == StatusCode::TOO_MANY_REQUESTS => {
                    // The node is fine, its watch table is full: watch later.
                    return Ok(answer);
                }
                Ok(answer) if !fail_over(answer.status) => {
                    self.succeeded(i);
                    return Ok(answer);
                }
                Ok(answer) => {
                    self.failed(i);
                    let reason = format!("{} {}", answer.status.as_u16(), error_message(&answer.body));
                    tracing::debug!(server = self.addr(i), %reason, "server refused; trying the next");
                    attempts.push(Attempt { server: self.addr(i).to_owned(), reason });
                }
                Err(reason) => {
                    self.failed(i);
                    tracing::debug!(server = self.addr(i), %reason, "server unreachable; trying the next");
                    attempts.push(Attempt { server: self.addr(i).to_owned(), reason });
                }
            }
        }
        let e = Unavailable { attempts };
        if !self.outage.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "no Muster server answers; the client keeps retrying (caches keep answering)");
        }
        Err(Error::Unavailable(e))
    }

    /// Sends `call` to server `i` only; `Err` is why it could not be reached.
    pub(crate) async fn send_to(&self, i: usize, call: &Call) -> Result<Answer, String> {
        self.send_to_lines(i, call, None).await
    }

    /// [`Pool::send_to`]; with `lines`, a 200 answer of a streamed watch
    /// (`application/x-ndjson`) goes there line by line (each at most
    /// [`ANSWER_BYTES_MAX`]), any other 2xx body as one line, and the
    /// answer's body is empty.
    async fn send_to_lines(
        &self,
        i: usize,
        call: &Call,
        lines: Option<&mpsc::Sender<(Bytes, usize)>>,
    ) -> Result<Answer, String> {
        let lines = lines.cloned();
        let addr = self.addr(i);
        let ordered = call.is_instance_write();
        let after = if ordered { self.after.load(Ordering::Acquire) } else { 0 };
        let path = match (after, call.path.contains('?')) {
            (0, _) => std::borrow::Cow::Borrowed(call.path.as_str()),
            (a, true) => std::borrow::Cow::Owned(format!("{}&after={a}", call.path)),
            (a, false) => std::borrow::Cow::Owned(format!("{}?after={a}", call.path)),
        };
        let uri: Uri = format!("http://{addr}{path}").parse().map_err(|e| format!("bad request URI: {e}"))?;
        let mut req =
            Request::builder().method(call.method.clone()).uri(uri).header(USER_AGENT, USER_AGENT_VALUE);
        if call.body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let http = if call.watch { self.watches.clone() } else { self.http.clone() };
        let exchange = async move {
            let resp = http.request(req).await.map_err(|e| describe_request_error(&e))?;
            let status = resp.status();
            let counter = resp
                .headers()
                .get(COUNTER_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let streamed = resp.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes() == STREAM_TYPE);
            if let (Some(lines), true, true) = (lines.as_ref(), status.is_success(), streamed) {
                split_lines(resp.into_body(), ANSWER_BYTES_MAX, lines, i).await?;
                return Ok(Answer { status, body: Bytes::new(), server: i, counter });
            }
            let body = Limited::new(resp.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| format!("answer cut off: {}", describe(&*e)))?
                .to_bytes();
            if let (Some(lines), true) = (lines.as_ref(), status.is_success()) {
                // Not a stream (a proxy, or a node that answered once): one line.
                let _ = lines.send((body, i)).await;
                return Ok(Answer { status, body: Bytes::new(), server: i, counter });
            }
            Ok(Answer { status, body, server: i, counter })
        };
        let timeout = call.timeout;
        let mut hung = match self.servers.get(i) {
            Some(s) if call.watch => Some((s.hung.subscribe(), PollGuard::new(&s.polls))),
            _ => None,
        };
        let timed = async move {
            let cut = async {
                match hung.as_mut() {
                    Some((rx, _)) => {
                        let _ = rx.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = tokio::time::timeout(timeout, exchange) => match result {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                },
                () = cut => Err("the server stopped answering probes (hung?); watching elsewhere".to_owned()),
            }
        };
        let answer = runtime::run(timed).await.map_err(|e| e.to_string())??;
        if let (true, Some(c)) = (ordered, answer.counter) {
            self.after.fetch_max(c, Ordering::AcqRel);
        }
        Ok(answer)
    }

    /// The client's ordering token (0: no instance write answered yet).
    pub(crate) fn after(&self) -> u64 {
        self.after.load(Ordering::Acquire)
    }

    /// Starts the prober of servers with watches in flight, once.
    pub(crate) fn start_prober(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = runtime::handle() else { return };
        let pool = Arc::downgrade(self);
        handle.spawn(probe(pool, self.timings.hung_after));
    }

    /// Sends `call` with failover and decodes a 2xx JSON answer; other
    /// statuses become their [`Error`].
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: &Call) -> Result<(T, usize), Error> {
        let answer = self.send(call).await?;
        let value = self.decode(&answer)?;
        Ok((value, answer.server))
    }

    /// Decodes a 2xx JSON answer, or turns another status into its error.
    pub(crate) fn decode<T: DeserializeOwned>(&self, answer: &Answer) -> Result<T, Error> {
        if !answer.status.is_success() {
            return Err(api_error(self.addr(answer.server), answer.status, &answer.body));
        }
        serde_json::from_slice(&answer.body).map_err(|e| Error::Protocol {
            server: self.addr(answer.server).to_owned(),
            message: format!(
                "{e} in {:?}",
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
            ),
        })
    }
}

/// The content type of a streamed watch's answer.
const STREAM_TYPE: &[u8] = b"application/x-ndjson";

/// Sends each line of a streamed answer to `lines` as it completes; `Err`
/// when the body breaks off or a line passes `max` bytes. A receiver that
/// is gone ends the stream early, without error.
async fn split_lines<B>(
    mut body: B,
    max: usize,
    lines: &mpsc::Sender<(Bytes, usize)>,
    server: usize,
) -> Result<(), String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: StdError + 'static,
{
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("stream cut off: {}", describe(&e)))?;
        let Ok(data) = frame.into_data() else { continue };
        // Only the new bytes are searched: a long line arriving in many
        // frames is scanned once, not once per frame.
        let mut from = pending.len();
        pending.extend_from_slice(&data);
        while let Some(at) = pending[from..].iter().position(|&b| b == b'\n') {
            let end = from + at;
            let line = Bytes::copy_from_slice(&pending[..end]);
            pending.drain(..=end);
            from = 0;
            if lines.send((line, server)).await.is_err() {
                return Ok(());
            }
        }
        if pending.len() > max {
            return Err(format!("a streamed answer's line passed {max} bytes"));
        }
    }
    Ok(())
}

/// Probes every server with long polls in flight each `period`; cuts the
/// polls of one that does not answer within `period`. Ends with the pool.
async fn probe(pool: Weak<Pool>, period: Duration) {
    loop {
        tokio::time::sleep(jitter(period)).await;
        let Some(pool) = pool.upgrade() else { return };
        for i in 0..pool.len() {
            let Some(server) = pool.servers.get(i) else { continue };
            if server.polls.load(Ordering::Acquire) == 0 {
                continue;
            }
            let call = Call::new(Method::GET, "/health/live", period);
            let probed = pool.send_to(i, &call).await;
            if probed.as_ref().is_ok_and(|a| a.status.is_success()) && pool.in_outage() {
                // A watch waits on it: it is reachable again, though no
                // request completed yet.
                pool.succeeded(i);
            }
            if let Err(reason) = probed {
                tracing::warn!(
                    server = %server.addr,
                    %reason,
                    "server does not answer probes: moving its watches to another server"
                );
                pool.failed(i);
                server.hung.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

/// Counts a long poll in flight while it lives.
struct PollGuard(Arc<AtomicUsize>);

impl PollGuard {
    fn new(polls: &Arc<AtomicUsize>) -> PollGuard {
        polls.fetch_add(1, Ordering::AcqRel);
        PollGuard(Arc::clone(polls))
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a status is a reason to try the next server.
fn fail_over(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// `now + d`, for any `d` (capped at a day, never overflowing).
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const DAY: Duration = Duration::from_secs(86_400);
    now.checked_add(d.min(DAY)).unwrap_or(now)
}

/// `d` scaled by a random factor in 0.75..1.25, so that many clients retry
/// apart.
pub(crate) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.75 + fastrand::f64() / 2.0)
}

/// `min * 2^(failures - 1)`, capped at `max`.
pub(crate) fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    min.saturating_mul(1u32 << shift).min(max)
}

/// Normalises a server address to `host:port`.
pub(crate) fn parse_server(s: &str) -> Result<String, Error> {
    let bad = |why: &str| {
        Error::invalid("server", format!("{why}; give host:port such as 127.0.0.1:8848, got {s:?}"))
    };
    let trimmed = s.trim();
    if trimmed.starts_with("https://") {
        return Err(bad("https is not supported (put TLS in a proxy in front of the node)"));
    }
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed).trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad("not an address"));
    }
    let uri: Uri = format!("http://{rest}/").parse().map_err(|_| bad("not an address"))?;
    let authority = uri.authority().ok_or_else(|| bad("not an address"))?;
    let port_given = rest.contains(':') && !rest.ends_with(']');
    match authority.port_u16() {
        Some(0) => Err(bad("the port must be 1 to 65535")),
        Some(_) => Ok(authority.as_str().to_owned()),
        None if port_given => Err(bad("the port must be 1 to 65535")),
        None => Ok(format!("{}:{DEFAULT_PORT}", authority.as_str())),
    }
}

/// A failed exchange: `cannot connect: Connection refused (os error 111)`,
/// or the error with its causes.
fn describe_request_error(e: &hyper_util::client::legacy::Error) -> String {
    if !e.is_connect() {
        return describe(e);
    }
    let mut deepest: &(dyn StdError + 'static) = e;
    while let Some(s) = deepest.source() {
        deepest = s;
    }
    format!("cannot connect: {deepest}")
}

/// A transport error with its causes: `connection refused`, not just `client error (Connect)`.
fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The `message` of an error body, or the start of the body.
fn error_message(body: &[u8]) -> String {
    parse_error(body)
        .map_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(), |e| e.message)
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
}

fn parse_error(body: &[u8]) -> Option<ErrorDetail> {
    serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error)
}

/// The [`Error`] of a non-2xx answer.
fn api_error(server: &str, status: StatusCode, body: &[u8]) -> Error {
    let detail = parse_error(body).unwrap_or_else(|| ErrorDetail {
        code: status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"),
        message: error_message(body),
        field: None,
    });
    match status {
        StatusCode::BAD_REQUEST => Error::InvalidInput {
            field: detail.field.unwrap_or_else(|| "body".to_owned()),
            message: detail.message,
        },
        StatusCode::UNAUTHORIZED => Error::Unauthorized { message: detail.message },
        StatusCode::NOT_FOUND if parse_error(body).is_none() => Error::Protocol {
            server: server.to_owned(),
            message: format!("404 without a Muster error body ({:?})", error_message(body)),
        },
        StatusCode::NOT_FOUND => Error::NotFound { message: detail.message },
        _ => Error::Refused {
            server: server.to_owned(),
            status: status.as_u16(),
            code: detail.code,
            message: detail.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the given frames, one per poll.
    struct Frames(std::collections::VecDeque<&'static [u8]>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Ready(
                self.0.pop_front().map(|f| Ok(hyper::body::Frame::data(Bytes::from_static(f)))),
            )
        }
    }

    #[tokio::test]
    async fn a_streamed_answer_is_split_into_lines_across_frames_and_a_line_past_the_limit_is_refused() {
        let (tx, mut rx) = mpsc::channel(8);
        let body = Frames([&b"{\"a\":1}\n{\"b"[..], b"\":2}", b"\n", b"{\"c\":3}\n{\"d\":"].into());
        split_lines(body, 16, &tx, 7).await.unwrap();
        let mut got = Vec::new();
        while let Ok((line, server)) = rx.try_recv() {
            assert_eq!(server, 7);
            got.push(String::from_utf8(line.to_vec()).unwrap());
        }
        // The cut-off last line is not a line.
        assert_eq!(got, [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);

        let long = Frames([&b"0123456789"[..], b"0123456789", b"\n"].into());
        let e = split_lines(long, 16, &tx, 0).await.unwrap_err();
        assert!(e.contains("passed 16 bytes"), "{e}");
        assert!(rx.try_recv().is_err(), "nothing of the long line was sent");
    }

    #[test]
    fn server_addresses_are_normalised_or_refused_with_an_example() {
        assert_eq!(parse_server("127.0.0.1:8849").unwrap(), "127.0.0.1:8849");
        assert_eq!(parse_server("http://node-1:9000/").unwrap(), "node-1:9000");
        assert_eq!(parse_server("localhost").unwrap(), "localhost:8848");
        assert_eq!(parse_server("[::1]:7000").unwrap(), "[::1]:7000");
        for bad in ["", "https://x:1", "a b:1", "x:", "x:0", "x:99999", "h/p:1", "u@h:1"] {
            let e = parse_server(bad).unwrap_err();
            assert!(e.to_string().contains("127.0.0.1:8848"), "{bad}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let b: Vec<u128> = (1..=6).map(|n| backoff(min, max, n).as_millis()).collect();
        assert_eq!(b, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(min, max, u32::MAX), max);
    }

    #[test]
    fn error_answers_map_to_typed_errors() {
        let body =
            br#"{"error":{"code":"invalid_input","message":"port: must be 1 to 65535","field":"port"}}"#;
        assert_eq!(
            api_error("a:1", StatusCode::BAD_REQUEST, body),
            Error::invalid("port", "port: must be 1 to 65535")
        );
        let body = br#"{"error":{"code":"instance_not_found","message":"no such instance"}}"#;
        assert!(api_error("a:1", StatusCode::NOT_FOUND, body).is_not_found());
        let e = api_error("a:1", StatusCode::NOT_FOUND, b"");
        assert!(e.to_string().contains("is it a Muster node?"), "{e}");
        let e = api_error("a:1", StatusCode::CONFLICT, b"not json");
        assert!(matches!(e, Error::Refused { status: 409, ref code, .. } if code == "conflict"), "{e:?}");
        assert!(fail_over(StatusCode::SERVICE_UNAVAILABLE));
        assert!(fail_over(StatusCode::TOO_MANY_REQUESTS));
        assert!(!fail_over(StatusCode::NOT_FOUND));
    }

    #[tokio::test]
    async fn servers_in_backoff_are_tried_last_and_success_makes_a_server_current() {
        let servers: Vec<String> = ["a:1", "b:2", "c:3"].iter().map(|s| (*s).to_owned()).collect();
        let timings = PoolTimings {
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(10),
            hung_after: Duration::from_secs(2),
        };
        let pool = Pool::new(&servers, None, timings).unwrap();
        assert_eq!(pool.order(), [0, 1, 2]);
        pool.failed(0);
        assert_eq!(pool.order(), [1, 2, 0]);
        pool.succeeded(2);
        assert_eq!((pool.current(), pool.switches()), (2, 1));
        assert_eq!(pool.order(), [2, 1, 0]);
        pool.succeeded(0);
        assert_eq!(pool.order(), [0, 1, 2]);
    }
}
