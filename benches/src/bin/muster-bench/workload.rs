//! The workloads: what each mode sets up, what its workers send, and how an
//! answer is judged.
//!
//! Instances are a pure function of their index `i`: service
//! `bench-{i mod S:04}`, an address of the benchmarking range 198.18.0.0/15
//! (RFC 2544; the addresses are registry data only, nothing is sent to them)
//! and port 8080 + i / 131072, two metadata entries like the core benches'
//! fixtures (`version`, `zone`), plus the lease overrides where asked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{Conn, Failure};
use crate::stats::{Kind, Live, Recorder, histogram, record};
/// Which API the load speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Api {
    /// Muster's OpenAPI (`/v1/...`).
    #[default]
    Native,
    /// The Nacos v1 naming API (`/nacos/v1/ns/...`).
    Nacos,
    /// Eureka REST v2 under `/eureka` (register, beat = renew, query = full fetch).
    Eureka,
    /// Muster's Consul API (register, beat = TTL pass, query, mixed).
    Consul,
}

#[path = "nacos.rs"]
mod nacos;

#[path = "eureka.rs"]
pub(crate) mod eureka;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Register N instances over S services, then keep re-registering them (weight changes).
    Register,
    /// Pre-register N instances, then heartbeat them round-robin (`--batch K` keys per request).
    Beat,
    /// Register one service of N instances (default 10), then query it.
    Query,
    /// Long polls on --watch-server; a writer changes the service on --server at --rate.
    Watch,
    /// Pre-register N instances over S services; then queries, beats, registrations by --mix.
    Mixed,
}

/// Everything a run needs, validated.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) mode: Mode,
    pub(crate) server: SocketAddr,
    pub(crate) watch_server: SocketAddr,
    pub(crate) instances: u64,
    pub(crate) services: u64,
    pub(crate) concurrency: usize,
    pub(crate) batch: u64,
    /// Shares of query, beat and register in `mixed`.
    pub(crate) mix: [u64; 3],
    /// Writes per second in `watch`.
    pub(crate) rate: f64,
    /// The long polls' `wait`.
    pub(crate) wait: Duration,
    /// Streamed watches instead of long polls.
    pub(crate) stream: bool,
    /// `muster.unhealthy_after_ms` in the registrations' metadata (removal at twice it).
    pub(crate) lease_ms: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) max_ops: u64,
    pub(crate) seed: u64,
    pub(crate) setup_timeout: Duration,
    /// The API the load speaks.
    pub(crate) api: Api,
    /// Registrations are persistent (register, mixed).
    pub(crate) persistent: bool,
}

/// When the measurement starts and when the run ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Phases {
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
}

/// The service of `query` mode: `bench-query-N` for N instances, so that
/// runs with different N do not share its (persistent) instances.
fn query_service(n: u64) -> String {
    format!("bench-query-{n}")
}
/// The service of `watch` mode and its one instance.
const WATCH_SERVICE: &str = "bench-watch";
const WATCH_IP: &str = "198.19.255.254";
const WATCH_PORT: u16 = 9000;

fn ip(i: u64) -> String {
    let h = i % 131_072;
    format!("198.{}.{}.{}", 18 + (h >> 16), (h >> 8) & 255, h & 255)
}

fn port(i: u64) -> u64 {
    8080 + i / 131_072
}

/// Largest `--instances` (ports stay below 65536).
pub(crate) const MAX_INSTANCES: u64 = 131_072 * 50_000;

/// How an answer with status 200 is judged.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// 200 is enough.
    Status,
    /// A `Registered` body.
    Registered,
    /// A beat reply with no unknown instance.
    AllKnown,
    /// 204 No Content (an Eureka registration).
    NoContent,
    /// A Nacos write's `ok`.
    NacosOk,
    /// A Nacos beat answer with code 10200.
    NacosBeat,
}

impl Check {
    fn passes(self, status: StatusCode, body: &[u8]) -> bool {
        if let Check::NoContent = self {
            return eureka::registered(status);
        }
        if status != StatusCode::OK {
            return false;
        }
        match self {
            Check::Status | Check::NoContent => true,
            Check::Registered => body.starts_with(b"{\"instance_id\""),
            Check::AllKnown => contains(body, b"\"unknown\":[]"),
            Check::NacosOk => body == b"ok",
            Check::NacosBeat => contains(body, b"\"code\":10200"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Check::Status | Check::NoContent => "200",
            Check::Registered | Check::NacosOk => "bad-answer",
            Check::AllKnown | Check::NacosBeat => "unknown-instance",
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// One request to send.
struct Op {
    kind: Kind,
    method: Method,
    uri: Uri,
    body: Bytes,
    items: u64,
    check: Check,
}

/// A small, fast PRNG (SplitMix64) for `mixed`'s choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The shared state of a run.
pub(crate) struct Workload {
    pub(crate) opts: Opts,
    pub(crate) live: Live,
    /// Beat keys, precomputed (`beat`, `mixed`).
    keys: Vec<Bytes>,
    /// Query URIs: one per service (`mixed`) or the one service (`query`).
    queries: Vec<Uri>,
    /// The measured phase's round-robin position.
    next: AtomicU64,
    /// The setup's registration position.
    setup_next: AtomicU64,
}

impl Workload {
    pub(crate) fn new(opts: Opts) -> Workload {
        let n = opts.instances;
        let keys = match opts.mode {
            Mode::Beat | Mode::Mixed if opts.api == Api::Nacos => {
                (0..n).map(|i| nacos::beat_key(&service(&opts, i), i)).collect()
            }
            Mode::Beat | Mode::Mixed if opts.api == Api::Consul => {
                (0..n).map(crate::consul::pass_path).collect()
            }
            Mode::Beat | Mode::Mixed => {
                (0..n).map(|i| Bytes::from(key_json(&service(&opts, i), i))).collect()
            }
            _ => Vec::new(),
        };
        let query_uri = match opts.api {
            Api::Nacos => nacos::query_uri,
            Api::Consul => crate::consul::query_uri,
            _ => query_uri,
        };
        let queries = match opts.mode {
            Mode::Query if opts.api == Api::Eureka => vec![eureka::fetch_uri()],
            Mode::Query => vec![query_uri(&query_service(n))],
            Mode::Mixed => (0..opts.services.min(n)).map(|s| query_uri(&service(&opts, s))).collect(),
            _ => Vec::new(),
        };
        Workload {
            opts,
            live: Live::default(),
            keys,
            queries,
            next: AtomicU64::new(0),
            setup_next: AtomicU64::new(0),
        }
    }

    /// The registration of instance `i` (its service per the mode).
    fn registration(&self, i: u64, weight: u64) -> Bytes {
        let o = &self.opts;
        let (service, persistent) = match o.mode {
            Mode::Query => (query_service(o.instances), true),
            _ => (service(o, i), o.persistent),
        };
        let mut body =
            format!(r#"{{"service":"{service}","ip":"{}","port":{},"weight":{weight},"#, ip(i), port(i));
        if persistent {
            body.push_str(r#""ephemeral":false,"#);
        }
        body.push_str(r#""metadata":{"version":"1.4.2","zone":"eu-west-1a""#);
        if o.persistent {
            body.push_str(r#","muster.health_check":"none""#);
        }
        if let Some(lease) = o.lease_ms {
            body.push_str(&format!(
                r#","muster.unhealthy_after_ms":"{lease}","muster.remove_after_ms":"{}""#,
                lease * 2
            ));
        }
        body.push_str("}}");
        Bytes::from(body)
    }

    fn register_op(&self, i: u64, kind: Kind, weight: u64) -> Op {
        if self.opts.api == Api::Eureka {
            return eureka::register_op(&self.opts, i, kind);
        }
        if self.opts.api == Api::Nacos {
            let (service, persistent) = match self.opts.mode {
                Mode::Query => (query_service(self.opts.instances), true),
                _ => (service(&self.opts, i), false),
            };
            return nacos::register_op(self, &service, persistent, i, kind, weight);
        }
        if self.opts.api == Api::Consul {
            let (service, ttl) = match self.opts.mode {
                Mode::Query => (query_service(self.opts.instances), None),
                _ => (service(&self.opts, i), Some(self.opts.lease_ms.unwrap_or(30_000))),
            };
            let body = crate::consul::registration(&service, i, &ip(i), port(i), weight, ttl);
            let uri = Uri::from_static("/v1/agent/service/register");
            return Op { kind, method: Method::PUT, uri, body, items: 1, check: Check::Status };
        }
        Op {
            kind,
            method: Method::POST,
            uri: Uri::from_static("/v1/instances"),
            body: self.registration(i, weight),
            items: 1,
            check: Check::Registered,
        }
    }

    fn beat_op(&self) -> Op {
        let n = self.opts.instances;
        let k = self.opts.batch;
        let first = self.next.fetch_add(k, Ordering::Relaxed);
        if self.opts.api == Api::Eureka {
            return eureka::renew_op(&self.opts, first % n);
        }
        if self.opts.api == Api::Nacos {
            return nacos::beat_op(self.keys[(first % n) as usize].clone());
        }
        if self.opts.api == Api::Consul {
            let uri = crate::consul::uri(&self.keys[(first % n) as usize]);
            return Op {
                kind: Kind::Beat,
                method: Method::PUT,
                uri,
                body: Bytes::new(),
                items: 1,
                check: Check::Status,
            };
        }
        let body = if k == 1 {
            self.keys[(first % n) as usize].clone()
        } else {
            let mut b = Vec::with_capacity(12 + k as usize * 64);
            b.extend_from_slice(b"{\"beats\":[");
            for j in 0..k {
                if j > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(&self.keys[((first + j) % n) as usize]);
            }
            b.extend_from_slice(b"]}");
            Bytes::from(b)
        };
        Op {
            kind: Kind::Beat,
            method: Method::PUT,
            uri: Uri::from_static("/v1/instances/beat"),
            body,
            items: k,
            check: Check::AllKnown,
        }
    }

    fn query_op(&self, rng: &mut Rng) -> Op {
        let uri = self.queries[rng.below(self.queries.len() as u64) as usize].clone();
        Op { kind: Kind::Query, method: Method::GET, uri, body: Bytes::new(), items: 1, check: Check::Status }
    }

    fn next_op(&self, rng: &mut Rng) -> Op {
        let n = self.opts.instances;
        match self.opts.mode {
            Mode::Register => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                let pass = i / n;
                let kind = if pass == 0 { Kind::Register } else { Kind::Reregister };
                self.register_op(i % n, kind, 1 + pass % 2)
            }
            Mode::Beat => self.beat_op(),
            Mode::Query => self.query_op(rng),
            Mode::Mixed => {
                let [q, b, r] = self.opts.mix;
                let x = rng.below(q + b + r);
                if x < q {
                    self.query_op(rng)
                } else if x < q + b {
                    self.beat_op()
                } else {
                    self.register_op(rng.below(n), Kind::Reregister, 1 + rng.below(2))
                }
            }
            Mode::Watch => unreachable!("watch mode has its own workers"),
        }
    }
}

fn service(o: &Opts, i: u64) -> String {
    format!("bench-{:04}", i % o.services)
}

fn key_json(service: &str, i: u64) -> String {
    format!(r#"{{"service":"{service}","ip":"{}","port":{}}}"#, ip(i), port(i))
}

fn query_uri(service: &str) -> Uri {
    Uri::try_from(format!("/v1/instances?service={service}")).expect("a valid URI")
}

/// Sleeps `d`, but not past `until`.
async fn nap(d: Duration, until: Instant) {
    tokio::time::sleep_until((Instant::now() + d).min(until)).await;
}

/// Waits (bounded) until `addr` answers `/health/ready` with 200.
pub(crate) async fn wait_ready(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match Conn::connect(addr, Duration::from_secs(1)).await {
            Ok(mut c) => {
                match c
                    .send(
                        Method::GET,
                        Uri::from_static("/health/ready"),
                        Bytes::new(),
                        Duration::from_secs(2),
                    )
                    .await
                {
                    Ok((StatusCode::OK, _)) => return Ok(()),
                    // A Nacos server (r-nacos, Nacos) has no /health/ready: its naming API answering is ready.
                    Ok((StatusCode::NOT_FOUND, _)) if nacos_up(&mut c).await => return Ok(()),
                    Ok((status, _)) => last = format!("/health/ready answered {status}"),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        nap(Duration::from_millis(100), deadline).await;
    }
    Err(format!("{addr} is not ready after {within:?} ({last}); is `muster serve` running there?"))
}

/// Whether a Nacos naming API answers on `c`.
async fn nacos_up(c: &mut Conn) -> bool {
    let uri = Uri::from_static("/nacos/v1/ns/service/list?pageNo=1&pageSize=1");
    matches!(c.send(Method::GET, uri, Bytes::new(), Duration::from_secs(2)).await, Ok((StatusCode::OK, _)))
}

/// One request on a fresh connection, for setup steps: the status and body.
async fn once(
    addr: SocketAddr,
    method: Method,
    uri: Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let mut c = Conn::connect(addr, timeout).await.map_err(|e| e.to_string())?;
    c.send(method, uri, body, timeout).await.map_err(|e| format!("{addr}: {e}"))
}

/// Registers every instance the mode needs before measuring, with the
/// run's concurrency; fails on the first refused registration.
pub(crate) async fn setup(w: &Arc<Workload>) -> Result<(), String> {
    let o = &w.opts;
    let deadline = Instant::now() + o.setup_timeout;
    match o.mode {
        Mode::Register => Ok(()),
        Mode::Beat | Mode::Mixed | Mode::Query => {
            let tasks: Vec<_> = (0..o.concurrency.min(o.instances as usize))
                .map(|_| tokio::spawn(preregister(Arc::clone(w), deadline)))
                .collect();
            for t in tasks {
                t.await.map_err(|e| format!("setup task: {e}"))??;
            }
            if o.mode == Mode::Query {
                // Eureka's fetch and Consul's health list are not lists the
                // waiter reads: wait on the native view of the service.
                let (service, uri) = match o.api {
                    Api::Eureka => {
                        let app = eureka::app(o, 0);
                        let uri = query_uri(&app);
                        (app, uri)
                    }
                    Api::Consul => {
                        let service = query_service(o.instances);
                        let uri = query_uri(&service);
                        (service, uri)
                    }
                    Api::Native | Api::Nacos => (query_service(o.instances), w.queries[0].clone()),
                };
                wait_for_instances(o.server, &service, &uri, o.instances, Duration::from_secs(10)).await?;
            }
            Ok(())
        }
        Mode::Watch => {
            let body = watch_write(0, true);
            let (status, answer) =
                once(o.server, Method::POST, Uri::from_static("/v1/instances"), body, o.timeout).await?;
            if status != StatusCode::OK {
                return Err(format!(
                    "registering the watched instance on {}: {status} {}",
                    o.server,
                    String::from_utf8_lossy(&answer)
                ));
            }
            // The watchers start from what the watch server shows.
            let within = Duration::from_secs(10);
            let until = Instant::now() + within;
            loop {
                if let Ok((StatusCode::OK, b)) =
                    once(o.watch_server, Method::GET, query_uri(WATCH_SERVICE), Bytes::new(), o.timeout).await
                {
                    if parse_answer(&b).is_some_and(|(_, seq)| seq.is_some()) {
                        return Ok(());
                    }
                }
                if Instant::now() >= until {
                    return Err(format!(
                        "the watched instance registered on {} did not appear on {} within {within:?}: \
                         are they nodes of one cluster?",
                        o.server, o.watch_server
                    ));
                }
                nap(Duration::from_millis(20), until).await;
            }
        }
    }
}

async fn preregister(w: Arc<Workload>, deadline: Instant) -> Result<(), String> {
    let o = &w.opts;
    let mut conn = Conn::connect(o.server, o.timeout).await.map_err(|e| format!("setup: {e}"))?;
    loop {
        let i = w.setup_next.fetch_add(1, Ordering::Relaxed);
        if i >= o.instances {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "setup: registering {} instances took longer than {:?}",
                o.instances, o.setup_timeout
            ));
        }
        let op = w.register_op(i, Kind::Register, 1);
        let (status, body) = conn
            .send(op.method, op.uri, op.body, o.timeout)
            .await
            .map_err(|e| format!("setup: registering instance {i}: {e}"))?;
        if !op.check.passes(status, &body) {
            return Err(format!(
                "setup: registering instance {i}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        w.live.op();
    }
}

/// Waits until a query of `service` shows `n` instances.
async fn wait_for_instances(
    addr: SocketAddr,
    service: &str,
    uri: &Uri,
    n: u64,
    within: Duration,
) -> Result<(), String> {
    let until = Instant::now() + within;
    loop {
        if let Ok((StatusCode::OK, b)) =
            once(addr, Method::GET, uri.clone(), Bytes::new(), Duration::from_secs(5)).await
        {
            let v: Value = serde_json::from_slice(&b).unwrap_or_default();
            let list = if v["hosts"].is_array() { &v["hosts"] } else { &v["instances"] };
            if list.as_array().is_some_and(|a| a.len() as u64 == n) {
                return Ok(());
            }
        }
        if Instant::now() >= until {
            return Err(format!("{service} did not show {n} instances within {within:?}"));
        }
        nap(Duration::from_millis(20), until).await;
    }
}

/// One worker of `register`, `beat`, `query` or `mixed`: sends requests one
/// after the other on its connection until the run ends or its share of
/// `--max-ops` is spent; reconnects after a failure.
pub(crate) async fn worker(w: Arc<Workload>, ph: Phases, id: usize) -> Recorder {
    let o = &w.opts;
    let mut rec = Recorder::default();
    let mut rng = Rng(o.seed ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    // The workers' budgets add up to --max-ops exactly.
    let c = o.concurrency as u64;
    let budget = o.max_ops / c + u64::from((id as u64) < o.max_ops % c);
    let mut conn: Option<Conn> = None;
    for _ in 0..budget {
        if Instant::now() >= ph.end {
            break;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::connect(o.server, o.timeout).await {
                Ok(c) => conn.insert(c),
                Err(f) => {
                    failed(&w.live, &mut rec, &ph, None, &f);
                    nap(Duration::from_millis(100), ph.end).await;
                    continue;
                }
            },
        };
        let op = w.next_op(&mut rng);
        let t0 = Instant::now();
        let result = c.send(op.method, op.uri, op.body, o.timeout).await;
        let latency = t0.elapsed();
        let measured = t0 >= ph.measure_from;
        match result {
            Ok((status, body)) if op.check.passes(status, &body) => {
                w.live.op();
                if measured {
                    rec.ok(op.kind, latency, op.items);
                }
            }
            Ok((status, _)) => {
                w.live.error();
                if measured {
                    let label = if status == StatusCode::OK { op.check.label() } else { status.as_str() };
                    rec.error(op.kind, label);
                }
            }
            Err(f) => {
                if measured {
                    failed(&w.live, &mut rec, &ph, Some(op.kind), &f);
                } else {
                    w.live.error();
                }
                conn = None;
            }
        }
    }
    rec
}

fn failed(live: &Live, rec: &mut Recorder, ph: &Phases, kind: Option<Kind>, f: &Failure) {
    live.error();
    if Instant::now() >= ph.measure_from {
        match kind {
            Some(k) => rec.error(k, f.label()),
            None => rec.other_error(f.label()),
        }
    }
}

/// The `watch` mode's write bodies: the watched instance with `seq` in its
/// metadata (a registration when `register`, else an update).
fn watch_write(seq: u64, register: bool) -> Bytes {
    let persistent = if register { r#""ephemeral":false,"# } else { "" };
    Bytes::from(format!(
        r#"{{"service":"{WATCH_SERVICE}","ip":"{WATCH_IP}","port":{WATCH_PORT},{persistent}"metadata":{{"seq":"{seq}"}}}}"#
    ))
}

/// The checksum and the watched instance's `seq` of a query answer.
fn parse_answer(body: &[u8]) -> Option<(String, Option<u64>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let checksum = v["checksum"].as_str()?.to_owned();
    let seq = v["instances"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|i| i["metadata"]["seq"].as_str())
        .and_then(|s| s.parse().ok());
    Some((checksum, seq))
}

/// When each write of `watch` mode was sent and answered; index `seq - 1`.
#[derive(Debug, Default)]
pub(crate) struct WriteLog {
    writes: Mutex<Vec<(Instant, Instant)>>,
}

/// What one watcher saw: `(seq, when its long poll returned)`, and how many
/// long polls ended by their `wait` without a change.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) changes: Vec<(u64, Instant)>,
    pub(crate) idle_returns: u64,
    pub(crate) rec: Recorder,
}

/// One watcher of `watch` mode: long polls on the watch server with the
/// checksum it holds, one after the other.
pub(crate) async fn watcher(w: Arc<Workload>, ph: Phases, armed: Arc<AtomicUsize>) -> Seen {
    let o = &w.opts;
    let mut seen = Seen::default();
    let mut held: Option<(Conn, String, Option<u64>)> = None;
    let mut arming = true;
    for _ in 0..o.max_ops {
        let now = Instant::now();
        if now >= ph.end {
            break;
        }
        let Some((conn, checksum, seq)) = &mut held else {
            match Conn::connect(o.watch_server, o.timeout).await {
                Ok(mut c) => {
                    match c.send(Method::GET, query_uri(WATCH_SERVICE), Bytes::new(), o.timeout).await {
                        Ok((StatusCode::OK, b)) => match parse_answer(&b) {
                            Some((cs, sq)) => held = Some((c, cs, sq)),
                            None => failed(
                                &w.live,
                                &mut seen.rec,
                                &ph,
                                Some(Kind::Watch),
                                &Failure::Http("bad answer".into()),
                            ),
                        },
                        Ok((status, _)) => {
                            w.live.error();
                            if now >= ph.measure_from {
                                seen.rec.error(Kind::Watch, status.as_str());
                            }
                        }
                        Err(f) => failed(&w.live, &mut seen.rec, &ph, Some(Kind::Watch), &f),
                    }
                }
                Err(f) => failed(&w.live, &mut seen.rec, &ph, None, &f),
            }
            if held.is_none() {
                nap(Duration::from_millis(100), ph.end).await;
            } else if arming {
                arming = false;
                armed.fetch_add(1, Ordering::AcqRel);
            }
            continue;
        };
        let wait = o.wait.min(ph.end - now).max(Duration::from_millis(1));
        if o.stream {
            let uri = Uri::try_from(format!(
                "/v1/instances?service={WATCH_SERVICE}&checksum={checksum}&wait={}ms&stream=true",
                wait.as_millis()
            ))
            .expect("a valid URI");
            let mut bad = false;
            let result = conn
                .stream(uri, wait + o.timeout, |line| match parse_answer(line) {
                    Some((cs, sq)) => {
                        if let Some(s) = sq.filter(|s| Some(*s) != *seq) {
                            seen.changes.push((s, Instant::now()));
                            w.live.op();
                        }
                        *checksum = cs;
                        *seq = sq;
                    }
                    None => bad = true,
                })
                .await;
            match result {
                Ok(StatusCode::OK) if !bad => seen.idle_returns += 1,
                Ok(StatusCode::OK) => {
                    let f = Failure::Http("bad line".into());
                    failed(&w.live, &mut seen.rec, &ph, Some(Kind::Watch), &f);
                    held = None;
                }
                other => {
                    if watch_failed(&w, &mut seen, &ph, now, other).await {
                        held = None;
                    }
                }
            }
            continue;
        }
        let uri = Uri::try_from(format!(
            "/v1/instances?service={WATCH_SERVICE}&checksum={checksum}&wait={}ms",
            wait.as_millis()
        ))
        .expect("a valid URI");
        let result = conn.send(Method::GET, uri, Bytes::new(), wait + o.timeout).await;
        let returned = Instant::now();
        match result {
            Ok((StatusCode::OK, b)) => match parse_answer(&b) {
                Some((cs, sq)) => {
                    if cs == *checksum {
                        seen.idle_returns += 1;
                    } else if let Some(s) = sq.filter(|s| Some(*s) != *seq) {
                        seen.changes.push((s, returned));
                        w.live.op();
                    }
                    *checksum = cs;
                    *seq = sq;
                }
                None => {
                    failed(
                        &w.live,
                        &mut seen.rec,
                        &ph,
                        Some(Kind::Watch),
                        &Failure::Http("bad answer".into()),
                    );
                    held = None;
                }
            },
            other => {
                if watch_failed(&w, &mut seen, &ph, now, other.map(|(status, _)| status)).await {
                    held = None;
                }
            }
        }
    }
    if arming {
        armed.fetch_add(1, Ordering::AcqRel);
    }
    seen
}

/// Counts a watch that got no good answer: a refusal (after which the
/// watcher pauses) or a failure; `true` when the connection must go.
async fn watch_failed(
    w: &Workload,
    seen: &mut Seen,
    ph: &Phases,
    now: Instant,
    outcome: Result<StatusCode, Failure>,
) -> bool {
    match outcome {
        Ok(status) => {
            w.live.error();
            if now >= ph.measure_from {
                seen.rec.error(Kind::Watch, status.as_str());
            }
            nap(Duration::from_millis(10), ph.end).await;
            false
        }
        Err(f) => {
            failed(&w.live, &mut seen.rec, ph, Some(Kind::Watch), &f);
            true
        }
    }
}

/// The writer of `watch` mode: changes the watched instance on the write
/// server at `--rate`, once every watcher holds a long poll.
pub(crate) async fn writer(
    w: Arc<Workload>,
    ph: Phases,
    armed: Arc<AtomicUsize>,
    log: Arc<WriteLog>,
) -> Recorder {
    let o = &w.opts;
    let mut rec = Recorder::default();
    let until = (Instant::now() + Duration::from_secs(5)).min(ph.end);
    while armed.load(Ordering::Acquire) < o.concurrency && Instant::now() < until {
        nap(Duration::from_millis(5), until).await;
    }
    // Let the last long polls reach the server.
    nap(Duration::from_millis(20), ph.end).await;
    let interval = Duration::from_secs_f64(1.0 / o.rate);
    let max_writes = (o.rate * (ph.end - Instant::now()).as_secs_f64()).ceil() as u64 + 1;
    let mut conn: Option<Conn> = None;
    let mut next = Instant::now();
    for seq in 1..=max_writes {
        if next >= ph.end {
            break;
        }
        tokio::time::sleep_until(next).await;
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::connect(o.server, o.timeout).await {
                Ok(c) => conn.insert(c),
                Err(f) => {
                    failed(&w.live, &mut rec, &ph, None, &f);
                    next = Instant::now() + interval;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let result = c
            .send(Method::PATCH, Uri::from_static("/v1/instances"), watch_write(seq, false), o.timeout)
            .await;
        let answered = Instant::now();
        {
            let mut writes = log.writes.lock().unwrap_or_else(PoisonError::into_inner);
            // Index seq - 1 even when a write failed (its seq is then never seen).
            writes.push((sent, answered));
        }
        let measured = sent >= ph.measure_from;
        match result {
            Ok((StatusCode::OK, _)) => {
                if measured {
                    rec.ok(Kind::Write, answered - sent, 1);
                }
            }
            Ok((status, _)) => {
                w.live.error();
                if measured {
                    rec.error(Kind::Write, status.as_str());
                }
            }
            Err(f) => {
                failed(&w.live, &mut rec, &ph, Some(Kind::Write), &f);
                conn = None;
            }
        }
        next = (next + interval).max(Instant::now());
    }
    rec
}

/// The figures of `watch` mode beyond the recorder's.
#[derive(Debug)]
pub(crate) struct WatchFigures {
    /// Writes answered within the measured phase.
    pub(crate) writes: u64,
    /// Changes the watchers saw (one per watcher and write seen).
    pub(crate) seen: u64,
    /// Writes × watchers: what would be seen if no watcher skipped a write.
    pub(crate) expected: u64,
    /// Changes seen before the writer had the write's answer (latency 0).
    pub(crate) before_answer: u64,
    /// Long polls that ended by their wait without a change.
    pub(crate) idle_returns: u64,
    /// Latency measured from the write's request being sent, for contrast.
    pub(crate) from_sent: crate::stats::Percentiles,
}

/// Matches what the watchers saw with the writes: the propagation latency
/// (write answered on A → long poll returned on B, both read from this
/// process's monotonic clock) goes into `rec` as [`Kind::Watch`].
pub(crate) fn join_watch(
    ph: &Phases,
    log: &WriteLog,
    seen: Vec<Seen>,
    watchers: u64,
    rec: &mut Recorder,
) -> WatchFigures {
    let writes = log.writes.lock().unwrap_or_else(PoisonError::into_inner);
    let mut from_sent = histogram();
    let (mut count, mut before_answer, mut idle_returns) = (0, 0, 0);
    for s in seen {
        idle_returns += s.idle_returns;
        rec.merge(s.rec);
        for (seq, returned) in s.changes {
            let Some(&(sent, answered)) = seq.checked_sub(1).and_then(|i| writes.get(i as usize)) else {
                continue;
            };
            if sent < ph.measure_from {
                continue;
            }
            count += 1;
            if returned < answered {
                before_answer += 1;
            }
            rec.ok(Kind::Watch, returned.saturating_duration_since(answered), 1);
            record(&mut from_sent, returned - sent);
        }
    }
    let measured_writes = writes.iter().filter(|(sent, _)| *sent >= ph.measure_from).count() as u64;
    WatchFigures {
        writes: measured_writes,
        seen: count,
        expected: measured_writes * watchers,
        before_answer,
        idle_returns,
        from_sent: crate::stats::Percentiles::of(&from_sent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: Mode) -> Opts {
        Opts {
            mode,
            server: "127.0.0.1:1".parse().unwrap(),
            watch_server: "127.0.0.1:1".parse().unwrap(),
            instances: 1_000,
            services: 100,
            concurrency: 1,
            batch: 3,
            mix: [80, 15, 5],
            rate: 10.0,
            wait: Duration::from_secs(1),
            stream: false,
            lease_ms: Some(60_000),
            timeout: Duration::from_secs(1),
            max_ops: 1,
            seed: 1,
            setup_timeout: Duration::from_secs(1),
            api: Api::Native,
            persistent: false,
        }
    }

    #[test]
    fn instances_are_distinct_and_bodies_are_json() {
        assert_eq!((ip(0), port(0)), ("198.18.0.0".to_owned(), 8080));
        assert_eq!((ip(131_071), port(131_071)), ("198.19.255.255".to_owned(), 8080));
        assert_eq!((ip(131_072), port(131_072)), ("198.18.0.0".to_owned(), 8081));
        let w = Workload::new(opts(Mode::Beat));
        let reg: Value = serde_json::from_slice(&w.registration(7, 2)).unwrap();
        assert_eq!(reg["service"], "bench-0007");
        assert_eq!(reg["weight"], 2);
        assert_eq!(reg["metadata"]["muster.remove_after_ms"], "120000");
        let beat: Value = serde_json::from_slice(&w.beat_op().body).unwrap();
        assert_eq!(beat["beats"].as_array().unwrap().len(), 3);
        assert_eq!(beat["beats"][2]["ip"], "198.18.0.2");
        let q = Workload::new(Opts { lease_ms: None, ..opts(Mode::Query) });
        let reg: Value = serde_json::from_slice(&q.registration(1, 1)).unwrap();
        assert_eq!(reg["ephemeral"], false);
        assert!(reg["metadata"].get("muster.unhealthy_after_ms").is_none());
        let watch: Value = serde_json::from_slice(&watch_write(5, false)).unwrap();
        assert_eq!(watch["metadata"]["seq"], "5");
    }

    #[test]
    fn checks_judge_bodies() {
        let ok = StatusCode::OK;
        assert!(Check::AllKnown.passes(ok, br#"{"unknown":[],"heartbeat_interval_ms":5000}"#));
        assert!(!Check::AllKnown.passes(ok, br#"{"unknown":[0],"heartbeat_interval_ms":5000}"#));
        assert!(
            Check::Registered
                .passes(ok, br#"{"instance_id":"a#1#DEFAULT","heartbeat_interval_ms":1,"created":true}"#)
        );
        assert!(Check::NoContent.passes(StatusCode::NO_CONTENT, b""));
        assert!(!Check::NoContent.passes(ok, b"") && !Check::Status.passes(StatusCode::NOT_FOUND, b""));
        let (cs, seq) =
            parse_answer(br#"{"checksum":"00ff","instances":[{"metadata":{"seq":"12"}}]}"#).unwrap();
        assert_eq!((cs.as_str(), seq), ("00ff", Some(12)));
    }
}
