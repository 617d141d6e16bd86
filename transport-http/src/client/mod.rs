//! The Muster Rust SDK: register instances, discover them, watch them change.
//!
//! Enable it with the `client` feature; it needs neither the server nor its
//! dependencies:
//!
//! ```toml
//! muster-transport-http = { version = "0.1", default-features = false, features = ["client"] }
//! ```
//!
//! One [`Client`] per process, built from the list of registry nodes, does
//! everything; clone it freely (clones share connections, heartbeats and the
//! cache; [`Client::with_group`] and [`Client::with_namespace`] give clones
//! that default to another group or namespace).
//!
//! - **Failover.** Each client starts at a random server (spreading many
//!   clients over the cluster); a connection error, a timeout or a 5xx / 429
//!   answer moves requests to the next server at once, with jittered backoff
//!   for the one that failed; a server that recovers is used again. A
//!   server that stops answering while watches wait on it (SIGSTOPped,
//!   wedged) is found by a probe every `hung_after` and left within a few
//!   seconds. One log line per failover.
//! - **Providers.** [`Client::register`] returns a [`Registration`]: the
//!   instance stays registered while the handle lives. All registrations of
//!   a process share one batched heartbeat at the interval the server asks
//!   for; an instance a server does not know (a restarted node, or the
//!   server the client moved to) is registered again at once; persistent
//!   registrations are checked in the same batched rounds and come back too.
//!   [`Registration::close`] deregisters; dropping the handle deregisters in
//!   the background, best effort.
//! - **Consumers.** [`Client::instances`] answers from a local cache kept
//!   fresh by long polls (changes arrive within milliseconds); the cache keeps
//!   answering while every server is down, optionally survives a restart of
//!   the consumer through a snapshot on disk ([`ClientBuilder::snapshot_dir`]),
//!   and holds instances that providers will register again for at most
//!   `recovery_grace` after a node lost its memory or a failover (see the
//!   `consumer` module notes and [`InstanceList::known`]).
//!   [`Client::subscribe`] streams the lists as they change;
//!   [`Client::choose`] picks a serving instance by weight. Watches are
//!   bounded (`max_watches`) and end ([`Client::unwatch`], the last
//!   subscription dropped, or `watch_idle` without a lookup).
//!
//! Every request, heartbeat and watch runs on the SDK's own background
//! runtime, so the async API works from any tokio runtime (or none);
//! nothing panics; every failure is an [`Error`]. Spans: `muster_register`,
//! `muster_heartbeats`, `muster_deregister`, `muster_watch`.
//!
//! # Provider
//!
//! ```no_run
//! use muster_transport_http::client::{Client, InstanceSpec};
//!
//! # async fn run() -> Result<(), muster_transport_http::client::Error> {
//! let client = Client::new("127.0.0.1:8848")?;
//! let registration = client.register(InstanceSpec::new("orders", "10.0.0.7", 8080).weight(2.0)).await?;
//! // ... serve until shutdown, then:
//! registration.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Consumer
//!
//! ```no_run
//! use muster_transport_http::client::Client;
//!
//! # async fn run() -> Result<(), muster_transport_http::client::Error> {
//! let client = Client::new("127.0.0.1:8848,127.0.0.1:8849")?;
//! let target = client.choose("orders").await?;       // weighted, healthy, enabled
//! println!("calling http://{}/", target.addr());
//! let mut changes = client.subscribe("orders").await?;
//! while let Some(list) = changes.next().await {
//!     println!("{} instances", list.instances.len());
//! }
//! # Ok(()) }
//! ```

mod choose;
mod consumer;
mod error;
mod model;
mod pool;
mod provider;
mod runtime;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use muster_core::model::{DEFAULT_GROUP, DEFAULT_NAMESPACE};
use muster_core::{Field, Name};
use tokio::sync::mpsc;

pub use consumer::{QueryOptions, Subscription};
pub use error::{Attempt, Error, Unavailable};
pub use model::{
    BeatOutcome, ClusterNodes, Instance, InstanceList, InstanceRef, InstanceSpec, InstanceUpdate,
    ListServices, NodeInfo, Registered, ServerHealth, ServicePage, ServiceSummary,
};
pub use provider::Registration;

pub(crate) use model::encode;
use pool::{Call, Pool, PoolTimings};

/// The default server address.
pub const DEFAULT_SERVER: &str = "127.0.0.1:8848";

/// A client of a Muster registry: cheap to clone, all clones share one
/// connection pool, one heartbeat task and one cache.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
    namespace: Arc<str>,
    group: Arc<str>,
}

#[derive(Debug)]
struct Inner {
    pool: Arc<Pool>,
    settings: Settings,
    /// The heartbeat task's commands, once a registration started it.
    beater: Mutex<Option<mpsc::UnboundedSender<provider::Cmd>>>,
    consumer: consumer::Consumer,
    next_id: AtomicU64,
}

#[derive(Clone, Debug)]
struct Settings {
    request_timeout: Duration,
    watch_wait: Duration,
    recovery_grace: Duration,
    replication_window: Duration,
    min_poll_interval: Duration,
    snapshot_dir: Option<PathBuf>,
    watch_streams: bool,
}

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    servers: Vec<String>,
    namespace: String,
    group: String,
    token: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    watch_wait: Duration,
    recovery_grace: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    snapshot_dir: Option<PathBuf>,
    spread: bool,
    max_watches: usize,
    watch_idle: Duration,
    hung_after: Duration,
    replication_window: Duration,
    min_poll_interval: Duration,
    watch_streams: bool,
}

impl ClientBuilder {
    /// The namespace of every call (default `public`).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> ClientBuilder {
        self.namespace = namespace.into();
        self
    }

    /// The group of every call (default `DEFAULT_GROUP`).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> ClientBuilder {
        self.group = group.into();
        self
    }

    /// The bearer token sent with every request (the node's write token, or
    /// its read token for a consumer that never writes).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> ClientBuilder {
        self.token = Some(token.into());
        self
    }

    /// Longest wait for a TCP connection to one server (default 1 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// Longest wait for one server's answer before trying the next (default
    /// 5 s; a watch waits this much longer than its own wait).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.request_timeout = timeout;
        self
    }

    /// How long one long poll waits for a change (default 30 s).
    #[must_use]
    pub fn watch_wait(mut self, wait: Duration) -> ClientBuilder {
        self.watch_wait = wait;
        self
    }

    /// Longest time the cache holds back the removal of instances that
    /// providers are expected to register again: the cached ephemeral
    /// instances after an answer from a server that holds no record of the
    /// service (it lost its memory), and after a failover the ones the new
    /// server lacks that this client saw within `replication_window`. The
    /// list shown meanwhile is the server's answer plus the held instances;
    /// a held instance is dropped as soon as it is back (default 10 s: two
    /// default heartbeat intervals). Growth and changes of listed instances
    /// are taken at once.
    #[must_use]
    pub fn recovery_grace(mut self, grace: Duration) -> ClientBuilder {
        self.recovery_grace = grace;
        self
    }

    /// Backoff of a server that failed: first `min`, doubling per failure
    /// in a row up to `max` (defaults 250 ms and 5 s). A server in backoff
    /// is tried only after the others.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> ClientBuilder {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// Keeps a snapshot of every watched service's list in `dir`, and starts
    /// from it when no server answers (like Nacos failover files).
    #[must_use]
    pub fn snapshot_dir(mut self, dir: impl Into<PathBuf>) -> ClientBuilder {
        self.snapshot_dir = Some(dir.into());
        self
    }

    /// Starts at a random server (default), spreading many clients over the
    /// cluster; `false` starts at the first, in the order given.
    #[must_use]
    pub fn spread(mut self, spread: bool) -> ClientBuilder {
        self.spread = spread;
        self
    }

    /// Most services watched at once, each holding one connection (one
    /// file descriptor) (default 256). A new watch past it replaces the least
    /// recently used one no subscription holds.
    #[must_use]
    pub fn max_watches(mut self, max: usize) -> ClientBuilder {
        self.max_watches = max;
        self
    }

    /// How long a watch lives without a subscription and without a lookup
    /// (`instances`, `choose`) before it ends and closes its connection
    /// (default 5 min).
    #[must_use]
    pub fn watch_idle(mut self, idle: Duration) -> ClientBuilder {
        self.watch_idle = idle;
        self
    }

    /// While watches are in flight to a server, it is probed this often
    /// and must answer within this time; one that does not is left, and its
    /// watches move to another server (default 2 s).
    #[must_use]
    pub fn hung_after(mut self, after: Duration) -> ClientBuilder {
        self.hung_after = after;
        self
    }

    /// After the watch moved to another server, only cached instances first
    /// seen less than this ago are held back while the new server lacks
    /// them (they may not have been replicated yet); older ones are gone at
    /// once (default 2 s).
    #[must_use]
    pub fn replication_window(mut self, window: Duration) -> ClientBuilder {
        self.replication_window = window;
        self
    }

    /// Least time between the starts of two long polls of one service,
    /// whatever a node answers (default 100 ms).
    #[must_use]
    pub fn min_poll_interval(mut self, interval: Duration) -> ClientBuilder {
        self.min_poll_interval = interval;
        self
    }

    /// Watch with streamed watches (`stream=true`: one request carries every
    /// change until the watch wait ends) instead of one long poll per change
    /// (default `true`). A server that refuses them (an older Muster)
    /// is long-polled instead, without this setting.
    #[must_use]
    pub fn watch_streams(mut self, streams: bool) -> ClientBuilder {
        self.watch_streams = streams;
        self
    }

    /// Checks the settings and builds the client. Needs no runtime: the
    /// SDK's own starts on first use.
    pub fn build(self) -> Result<Client, Error> {
        Name::parse(Field::Namespace, &self.namespace)?;
        Name::parse(Field::Group, &self.group)?;
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("watch_wait", self.watch_wait),
            ("backoff", self.backoff_min),
            ("watch_idle", self.watch_idle),
            ("hung_after", self.hung_after),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(field, "must be greater than zero"));
            }
        }
        if self.max_watches == 0 {
            return Err(Error::invalid("max_watches", "must be 1 or more"));
        }
        let timings = PoolTimings {
            connect_timeout: self.connect_timeout,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            hung_after: self.hung_after,
        };
        let pool = Pool::new(&self.servers, self.token.as_deref(), timings)?;
        if self.spread {
            pool.set_current(fastrand::usize(..pool.len()));
        }
        let settings = Settings {
            request_timeout: self.request_timeout,
            watch_wait: self.watch_wait,
            recovery_grace: self.recovery_grace,
            replication_window: self.replication_window,
            min_poll_interval: self.min_poll_interval,
            snapshot_dir: self.snapshot_dir,
            watch_streams: self.watch_streams,
        };
        let inner = Inner {
            pool: Arc::new(pool),
            settings,
            beater: Mutex::new(None),
            consumer: consumer::Consumer::new(consumer::WatchLimits {
                max: self.max_watches,
                idle: self.watch_idle,
            }),
            next_id: AtomicU64::new(0),
        };
        Ok(Client { inner: Arc::new(inner), namespace: self.namespace.into(), group: self.group.into() })
    }
}

impl Client {
    /// A client of the servers in `servers`, comma-separated `host:port`
    /// (port 8848 if left out), with every other setting at its default.
    pub fn new(servers: &str) -> Result<Client, Error> {
        Client::builder(servers.split(',').map(str::trim).filter(|s| !s.is_empty())).build()
    }

    /// A builder over `servers`: requests start at a random one (see
    /// [`ClientBuilder::spread`]) and fail over in the order given.
    pub fn builder<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> ClientBuilder {
        ClientBuilder {
            servers: servers.into_iter().map(Into::into).collect(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            group: DEFAULT_GROUP.to_owned(),
            token: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            watch_wait: Duration::from_secs(30),
            recovery_grace: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            snapshot_dir: None,
            spread: true,
            max_watches: 256,
            watch_idle: Duration::from_secs(300),
            hung_after: Duration::from_secs(2),
            replication_window: Duration::from_secs(2),
            min_poll_interval: Duration::from_millis(100),
            watch_streams: true,
        }
    }

    /// A clone whose calls use `group` (validated).
    pub fn with_group(&self, group: &str) -> Result<Client, Error> {
        Name::parse(Field::Group, group)?;
        Ok(Client { group: group.into(), ..self.clone() })
    }

    /// A clone whose calls use `namespace` (validated).
    pub fn with_namespace(&self, namespace: &str) -> Result<Client, Error> {
        Name::parse(Field::Namespace, namespace)?;
        Ok(Client { namespace: namespace.into(), ..self.clone() })
    }

    /// The namespace of this client's calls.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The group of this client's calls.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The servers, `host:port`, in the order they are tried.
    pub fn servers(&self) -> Vec<String> {
        (0..self.inner.pool.len()).map(|i| self.inner.pool.addr(i).to_owned()).collect()
    }

    /// The server requests go to now.
    pub fn current_server(&self) -> String {
        self.inner.pool.addr(self.inner.pool.current()).to_owned()
    }

    /// Whether the client reaches a server: `false` from a request that no
    /// server answered until one answers again (heartbeats and watches
    /// retry meanwhile).
    pub fn connected(&self) -> bool {
        !self.inner.pool.in_outage()
    }

    /// How many times the client moved to another server.
    pub fn failovers(&self) -> u64 {
        self.inner.pool.switches()
    }

    /// A page of the service listing of this client's namespace.
    pub async fn services(&self, list: &ListServices) -> Result<ServicePage, Error> {
        let mut path = format!("/v1/services?namespace={}", encode(&self.namespace));
        if let Some(g) = &list.group {
            Name::parse(Field::Group, g)?;
            path.push_str(&format!("&group={}", encode(g)));
        }
        if let Some(s) = list.search.as_deref().filter(|s| !s.is_empty()) {
            path.push_str(&format!("&search={}", encode(s)));
        }
        for (name, value) in [("page", list.page), ("page_size", list.page_size)] {
            match value {
                Some(0) => return Err(Error::invalid(name, "must be 1 or more")),
                Some(n) => path.push_str(&format!("&{name}={n}")),
                None => {}
            }
        }
        let call = Call::new(Method::GET, path, self.inner.settings.request_timeout);
        Ok(self.inner.pool.json(&call).await?.0)
    }

    /// One JSON call to the OpenAPI, with failover (the CLI's `export` and
    /// `import`).
    #[cfg(feature = "server")]
    pub(crate) async fn call_json(
        &self,
        method: Method,
        path: String,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, Error> {
        let mut call = Call::new(method, path, self.inner.settings.request_timeout);
        if let Some(b) = body {
            call = call.json(b)?;
        }
        Ok(self.inner.pool.json(&call).await?.0)
    }

    /// The client's ordering token: the highest version counter a server
    /// answered one of its instance writes with (0 before the first). Every
    /// instance write (register, update, deregister, re-registration) sends
    /// it as `?after=`, so the node that takes the write issues a version
    /// above all of this client's earlier writes, on any node: one client's
    /// writes keep their order across failover between skewed nodes.
    pub fn ordering_token(&self) -> u64 {
        self.inner.pool.after()
    }

    /// The cluster's members as the first reachable server sees them.
    pub async fn nodes(&self) -> Result<ClusterNodes, Error> {
        let call = Call::new(Method::GET, "/v1/cluster/nodes", self.inner.settings.request_timeout);
        Ok(self.inner.pool.json(&call).await?.0)
    }

    /// Asks every server, in turn and without failover, whether it is live
    /// and ready.
    pub async fn health(&self) -> Vec<ServerHealth> {
        let pool = &self.inner.pool;
        let timeout = self.inner.settings.request_timeout;
        let mut out = Vec::with_capacity(pool.len());
        for i in 0..pool.len() {
            let server = pool.addr(i).to_owned();
            let live = pool.send_to(i, &Call::new(Method::GET, "/health/live", timeout)).await;
            let health = match live {
                Err(reason) => ServerHealth { server, live: false, ready: false, problem: Some(reason) },
                Ok(a) if !a.status.is_success() => ServerHealth {
                    server,
                    live: false,
                    ready: false,
                    problem: Some(if a.status.is_server_error() {
                        format!("/health/live answered {}", a.status)
                    } else {
                        format!("/health/live answered {}: is it a Muster node?", a.status)
                    }),
                },
                Ok(a) if !says_status(&a.body, "live") => ServerHealth {
                    server,
                    live: false,
                    ready: false,
                    problem: Some("/health/live is not Muster's answer: is it a Muster node?".to_owned()),
                },
                Ok(_) => match pool.send_to(i, &Call::new(Method::GET, "/health/ready", timeout)).await {
                    Ok(a) if a.status.is_success() && says_status(&a.body, "ready") => {
                        ServerHealth { server, live: true, ready: true, problem: None }
                    }
                    Ok(a) if a.status.is_success() => ServerHealth {
                        server,
                        live: true,
                        ready: false,
                        problem: Some(
                            "/health/ready is not Muster's answer: is it a Muster node?".to_owned(),
                        ),
                    },
                    Ok(a) => {
                        let why = pool.decode::<serde_json::Value>(&a).err().map(|e| e.to_string());
                        ServerHealth { server, live: true, ready: false, problem: why }
                    }
                    Err(reason) => ServerHealth { server, live: true, ready: false, problem: Some(reason) },
                },
            };
            out.push(health);
        }
        out
    }
}

/// Whether `body` is Muster's `{"status": "<status>"}`.
fn says_status(body: &[u8], status: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["status"] == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_built_from_a_comma_list_without_a_runtime() {
        let c = Client::new("127.0.0.1:1, localhost ,[::1]:3").unwrap();
        assert_eq!(c.servers(), ["127.0.0.1:1", "localhost:8848", "[::1]:3"]);
        assert!(c.servers().contains(&c.current_server()), "starts at a random server");
        assert_eq!((c.namespace(), c.group()), ("public", "DEFAULT_GROUP"));
        let g = c.with_group("payments").unwrap();
        assert_eq!(g.group(), "payments");
        assert!(c.with_group("bad group").is_err());
        assert!(Client::new("").is_err());
        assert!(Client::builder(["a:1"]).namespace("no/slash").build().is_err());
        assert!(Client::builder(["a:1"]).request_timeout(Duration::ZERO).build().is_err());
    }

    #[tokio::test]
    async fn calls_to_no_server_fail_as_unavailable_and_name_each_server() {
        let ports: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
            .collect();
        let c = Client::builder(ports.iter().map(|p| format!("127.0.0.1:{p}"))).build().unwrap();
        let e = c.instances("orders").await.unwrap_err();
        let Error::Unavailable(u) = &e else { panic!("{e:?}") };
        assert_eq!(u.attempts.len(), 2, "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{}", ports[1])), "{e}");
        let e = c.instances("bad name").await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
        let health = c.health().await;
        assert!(health.iter().all(|h| !h.live && h.problem.is_some()), "{health:?}");
    }
}
