//! Configuration of `muster serve`: flags, `MUSTER_*` environment variables
//! and an optional TOML file, parsed once into validated [`Settings`].
//!
//! Precedence: a flag beats its environment variable (clap does that), which
//! beats the TOML file, which beats the default. Every TOML key is the flag's
//! long name with `_` for `-`; durations are whole milliseconds and their
//! keys end in `_ms`, as in the core's configuration errors.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use muster_core::{Config, NodeId};
use serde::Deserialize;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of `muster serve`; each is a flag, a `MUSTER_*` variable and
/// a TOML key. Absent values take the defaults listed in the README.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (flags and variables win over it).
    #[arg(long, env = "MUSTER_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8848].
    #[arg(long, env = "MUSTER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address peers reach this node at; it is the node's id [default: the listen address].
    #[arg(long, env = "MUSTER_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// The cluster's nodes, comma-separated `host:port` as each advertises
    /// itself (this node's own address may be listed and is skipped).
    #[arg(long, env = "MUSTER_PEERS", value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// File holding the shared cluster secret; required with peers.
    #[arg(long, env = "MUSTER_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding the bearer token required for writes (open when unset).
    #[arg(long, env = "MUSTER_WRITE_TOKEN_FILE", value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,
    /// File holding the bearer token required for reads (open when unset; the write token reads too).
    #[arg(long, env = "MUSTER_READ_TOKEN_FILE", value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,

    /// Heartbeat interval told to clients, ms [default: 5000].
    #[arg(long, env = "MUSTER_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Silence after which an instance is unhealthy, ms [default: 15000].
    #[arg(long, env = "MUSTER_UNHEALTHY_AFTER_MS", value_name = "MS")]
    pub unhealthy_after_ms: Option<u64>,
    /// Silence after which an instance is removed, ms [default: 30000].
    #[arg(long, env = "MUSTER_REMOVE_AFTER_MS", value_name = "MS")]
    pub remove_after_ms: Option<u64>,
    /// Delay before local changes are sent to peers as one batch, ms [default: 2].
    #[arg(long, env = "MUSTER_SYNC_DELAY_MS", value_name = "MS")]
    pub sync_delay_ms: Option<u64>,
    /// Interval of anti-entropy digest exchanges, ms [default: 5000].
    #[arg(long, env = "MUSTER_ANTI_ENTROPY_INTERVAL_MS", value_name = "MS")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Interval of peer pings, ms [default: 1000].
    #[arg(long, env = "MUSTER_PING_INTERVAL_MS", value_name = "MS")]
    pub ping_interval_ms: Option<u64>,
    /// Silence after which a peer is suspect, ms [default: 3000].
    #[arg(long, env = "MUSTER_SUSPECT_AFTER_MS", value_name = "MS")]
    pub suspect_after_ms: Option<u64>,
    /// Silence after which a peer is down, ms [default: 6000].
    #[arg(long, env = "MUSTER_DOWN_AFTER_MS", value_name = "MS")]
    pub down_after_ms: Option<u64>,
    /// How long a starting node waits for a peer's registry, ms [default: 5000].
    #[arg(long, env = "MUSTER_STARTUP_TIMEOUT_MS", value_name = "MS")]
    pub startup_timeout_ms: Option<u64>,
    /// How long a starting node waits on one peer before asking the next, ms [default: 1000].
    #[arg(long, env = "MUSTER_SNAPSHOT_RETRY_MS", value_name = "MS")]
    pub snapshot_retry_ms: Option<u64>,
    /// How often the responsible node checks each persistent instance, ms [default: 5000].
    #[arg(long, env = "MUSTER_HEALTH_CHECK_INTERVAL_MS", value_name = "MS")]
    pub health_check_interval_ms: Option<u64>,
    /// Timeout of one active health check (TCP connect or HTTP GET), ms [default: 2000].
    #[arg(long, env = "MUSTER_HEALTH_CHECK_TIMEOUT_MS", value_name = "MS")]
    pub health_check_timeout_ms: Option<u64>,
    /// How long deletions are remembered, ms [default: 600000].
    #[arg(long, env = "MUSTER_TOMBSTONE_TTL_MS", value_name = "MS")]
    pub tombstone_ttl_ms: Option<u64>,
    /// Longest a tombstone is kept after its removal while a peer has not confirmed it holds it (a peer down or cut off); never below the TTL, ms [default: 3600000].
    #[arg(long, env = "MUSTER_TOMBSTONE_MAX_HOLD_MS", value_name = "MS")]
    pub tombstone_max_hold_ms: Option<u64>,
    /// Largest clock offset tolerated between nodes, ms [default: 500]: peer records and client
    /// `after` tokens further ahead of this node's clock are refused, and a peer whose measured
    /// offset exceeds it is flagged skewed.
    #[arg(long, env = "MUSTER_MAX_CLOCK_SKEW_MS", value_name = "MS")]
    pub max_clock_skew_ms: Option<u64>,
    /// Tests only: shift this node's wall clock by MS (may be negative) to simulate clock skew
    /// between processes on one host.
    #[arg(long, hide = true, value_name = "MS", allow_hyphen_values = true)]
    #[serde(skip)]
    pub test_clock_offset_ms: Option<i64>,

    /// Largest request body, bytes [default: 1048576].
    #[arg(long, env = "MUSTER_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most concurrent long polls (watches) [default: 10000].
    #[arg(long, env = "MUSTER_MAX_LONG_POLLS", value_name = "N")]
    pub max_long_polls: Option<usize>,
    /// Instance and node changes this node keeps for the console's history; 0 turns it off [default: 10000].
    #[arg(long, env = "MUSTER_HISTORY_SIZE", value_name = "N")]
    pub history_size: Option<usize>,
    /// Longest long-poll wait; longer `wait`s are cut to it, ms [default: 120000].
    #[arg(long, env = "MUSTER_MAX_WAIT_MS", value_name = "MS")]
    pub max_wait_ms: Option<u64>,
    /// Client commands queued for the driver before new ones get 503 [default: 16384].
    #[arg(long, env = "MUSTER_REQUEST_QUEUE", value_name = "N")]
    pub request_queue: Option<usize>,
    /// Frames queued per peer; past it the oldest are dropped [default: 4096].
    #[arg(long, env = "MUSTER_PEER_QUEUE", value_name = "N")]
    pub peer_queue: Option<usize>,
    /// Timeout of one request to a peer, ms [default: 2000].
    #[arg(long, env = "MUSTER_PEER_TIMEOUT_MS", value_name = "MS")]
    pub peer_timeout_ms: Option<u64>,
    /// Longest wait for in-flight requests on shutdown, ms [default: 10000].
    #[arg(long, env = "MUSTER_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Most live instances on the node (tombstones are bounded by --max-tombstones) [default: 1000000].
    #[arg(long, env = "MUSTER_MAX_INSTANCES", value_name = "N")]
    pub max_instances: Option<usize>,
    /// Most instance tombstones on the node; past it the oldest is evicted [default: 1000000].
    #[arg(long, env = "MUSTER_MAX_TOMBSTONES", value_name = "N")]
    pub max_tombstones: Option<usize>,
    /// Most live instances in one service [default: 10000].
    #[arg(long, env = "MUSTER_MAX_INSTANCES_PER_SERVICE", value_name = "N")]
    pub max_instances_per_service: Option<usize>,
    /// Most services on the node [default: 100000].
    #[arg(long, env = "MUSTER_MAX_SERVICES", value_name = "N")]
    pub max_services: Option<usize>,
    /// Most metadata entries of one instance or service [default: 64].
    #[arg(long, env = "MUSTER_MAX_METADATA_ENTRIES", value_name = "N")]
    pub max_metadata_entries: Option<usize>,
    /// Most metadata bytes of one instance or service [default: 8192].
    #[arg(long, env = "MUSTER_MAX_METADATA_BYTES", value_name = "BYTES")]
    pub max_metadata_bytes: Option<usize>,
    /// Most heartbeats in one batch [default: 10000].
    #[arg(long, env = "MUSTER_MAX_BATCH_BEATS", value_name = "N")]
    pub max_batch_beats: Option<usize>,
    /// Largest page of a service listing [default: 1000].
    #[arg(long, env = "MUSTER_MAX_PAGE_SIZE", value_name = "N")]
    pub max_page_size: Option<usize>,
    /// Extra anti-entropy rounds per peer per interval, each right after an exchange cut short by the page size [default: 16].
    #[arg(long, env = "MUSTER_MAX_FOLLOW_UP_ROUNDS", value_name = "N")]
    pub max_follow_up_rounds: Option<usize>,
    /// Expiry brake: share of instances whose removal within one window engages it; 1 turns it off [default: 0.5].
    #[arg(long, env = "MUSTER_BRAKE_SHARE", value_name = "SHARE")]
    pub brake_share: Option<f64>,
    /// Expiry brake: removals within one window that never engage it [default: 10].
    #[arg(long, env = "MUSTER_BRAKE_FLOOR", value_name = "N")]
    pub brake_floor: Option<usize>,
    /// Expiry brake: the window, ms [default: 60000].
    #[arg(long, env = "MUSTER_BRAKE_WINDOW_MS", value_name = "MS")]
    pub brake_window_ms: Option<u64>,
    /// Pending-connection backlog of the listen socket (the kernel caps it at `somaxconn`) [default: 4096].
    #[arg(long, env = "MUSTER_LISTEN_BACKLOG", value_name = "N")]
    pub listen_backlog: Option<u32>,
    /// Longest time to read one request body, ms [default: 10000].
    #[arg(long, env = "MUSTER_BODY_TIMEOUT_MS", value_name = "MS")]
    pub body_timeout_ms: Option<u64>,
    /// Slowest accepted body upload after its first second, bytes/s [default: 4096].
    #[arg(long, env = "MUSTER_BODY_MIN_BYTES_PER_S", value_name = "BYTES")]
    pub body_min_bytes_per_s: Option<u64>,
    /// Largest peer request body, bytes [default: 33554432].
    #[arg(long, env = "MUSTER_MAX_PEER_BODY_BYTES", value_name = "BYTES")]
    pub max_peer_body_bytes: Option<usize>,
    /// Bytes of frames queued per peer; past it the oldest are dropped [default: 67108864].
    #[arg(long, env = "MUSTER_PEER_QUEUE_BYTES", value_name = "BYTES")]
    pub peer_queue_bytes: Option<usize>,
    /// Expensive peer requests (bucket lists, snapshot pages) answered per peer per second [default: 20].
    #[arg(long, env = "MUSTER_PEER_REPLIES_PER_S", value_name = "N")]
    pub peer_replies_per_s: Option<u32>,
    /// Largest age (or lead) of a signed peer request before it is refused as stale, ms [default: 30000].
    #[arg(long, env = "MUSTER_PEER_CLOCK_WINDOW_MS", value_name = "MS")]
    pub peer_clock_window_ms: Option<u64>,
    /// Most watched services the node does not know (429 past it) [default: 10000].
    #[arg(long, env = "MUSTER_MAX_UNKNOWN_WATCHED", value_name = "N")]
    pub max_unknown_watched: Option<usize>,
    /// Whether the node runs active health checks of persistent instances [default: true].
    #[arg(long, env = "MUSTER_HEALTH_CHECKS", value_name = "BOOL")]
    pub health_checks: Option<bool>,
    /// Address ranges active health checks may reach, comma-separated CIDRs [default: 0.0.0.0/0,::/0].
    #[arg(long, env = "MUSTER_HEALTH_CHECK_ALLOW", value_name = "CIDR,...", value_delimiter = ',')]
    pub health_check_allow: Option<Vec<String>>,
    /// Seed of the node's random choices [default: drawn at start].
    #[arg(long, env = "MUSTER_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Nacos API: whether `udpPort` on `/nacos/v1/ns/instance/list` subscribes to UDP pushes [default: true].
    #[arg(long, env = "MUSTER_NACOS_UDP_PUSH", value_name = "BOOL")]
    pub nacos_udp_push: Option<bool>,
    /// Nacos API: most UDP push subscribers on the node [default: 10000].
    #[arg(long, env = "MUSTER_NACOS_PUSH_MAX_SUBSCRIBERS", value_name = "N")]
    pub nacos_push_max_subscribers: Option<usize>,
    /// Nacos API: most UDP push subscribers of one service [default: 1000].
    #[arg(long, env = "MUSTER_NACOS_PUSH_MAX_SUBSCRIBERS_PER_SERVICE", value_name = "N")]
    pub nacos_push_max_subscribers_per_service: Option<usize>,
    /// Nacos API: largest push datagram after gzip; larger pushes are skipped, bytes [default: 4096].
    #[arg(long, env = "MUSTER_NACOS_PUSH_MAX_PACKET_BYTES", value_name = "BYTES")]
    pub nacos_push_max_packet_bytes: Option<usize>,
    /// Nacos API: wait for a push's ack before it is sent again, ms [default: 1000].
    #[arg(long, env = "MUSTER_NACOS_PUSH_ACK_TIMEOUT_MS", value_name = "MS")]
    pub nacos_push_ack_timeout_ms: Option<u64>,
    /// Nacos API: resends of an unacknowledged push [default: 2].
    #[arg(long, env = "MUSTER_NACOS_PUSH_RETRIES", value_name = "N")]
    pub nacos_push_retries: Option<u32>,
    /// Nacos API: a push subscriber that has not listed its service for this long is forgotten, ms [default: 30000].
    #[arg(long, env = "MUSTER_NACOS_PUSH_SUBSCRIBER_TTL_MS", value_name = "MS")]
    pub nacos_push_subscriber_ttl_ms: Option<u64>,
    /// Path prefix of the Eureka REST API; `off` turns it off [default: /eureka].
    #[arg(long, env = "MUSTER_EUREKA_PREFIX", value_name = "PATH")]
    pub eureka_prefix: Option<String>,
    /// Namespace that Eureka apps live in [default: public].
    #[arg(long, env = "MUSTER_EUREKA_NAMESPACE", value_name = "NAME")]
    pub eureka_namespace: Option<String>,
    /// Group that Eureka apps live in [default: DEFAULT_GROUP].
    #[arg(long, env = "MUSTER_EUREKA_GROUP", value_name = "NAME")]
    pub eureka_group: Option<String>,
    /// How long a change stays in the Eureka delta (`/apps/delta`), ms [default: 180000].
    #[arg(long, env = "MUSTER_EUREKA_DELTA_RETENTION_MS", value_name = "MS")]
    pub eureka_delta_retention_ms: Option<u64>,
    /// Most changes kept for the Eureka delta; older ones make clients fetch everything [default: 10000].
    #[arg(long, env = "MUSTER_EUREKA_MAX_DELTA_CHANGES", value_name = "N")]
    pub eureka_max_delta_changes: Option<usize>,
    /// Directory of the node's durable store, created if missing [default: ./muster-data].
    #[arg(long, env = "MUSTER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep nothing on disk: every start is empty (tests, caches) [default: false].
    #[arg(long, env = "MUSTER_MEMORY_ONLY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub memory_only: Option<bool>,
    /// Longest time an ephemeral instance's change waits before it is written to disk, ms [default: 200].
    #[arg(long, env = "MUSTER_WRITE_BEHIND_MS", value_name = "MS")]
    pub write_behind_ms: Option<u64>,
    /// Page cache of the store, MiB; each MiB is resident memory [default: 2].
    #[arg(long, env = "MUSTER_STORE_CACHE_MIB", value_name = "MIB")]
    pub store_cache_mib: Option<u64>,

    /// Log filter: a level or tracing directives, e.g. `info,muster::access=warn` [default: info].
    #[arg(long, env = "MUSTER_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "MUSTER_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8848";

/// A refused configuration: which key and why. The node did not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct SettingsError {
    /// The TOML key (the flag is `--` and the key with `-` for `_`).
    pub key: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl SettingsError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> SettingsError {
        SettingsError { key: key.into(), message: message.into() }
    }
}

/// A secret (cluster secret or bearer token) read from a file. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// A secret for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(s: &str) -> Secret {
        Secret(s.to_owned())
    }

    /// Compares in time independent of where the inputs differ.
    pub(crate) fn matches(&self, given: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), given)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Byte equality whose time depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Limits and timeouts of the HTTP side.
#[derive(Clone, Debug)]
pub(crate) struct HttpSettings {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_peer_body_bytes: usize,
    pub(crate) max_long_polls: usize,
    pub(crate) max_wait: Duration,
    pub(crate) request_queue: usize,
    pub(crate) peer_queue: usize,
    pub(crate) peer_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) health_check_timeout: Duration,
    pub(crate) listen_backlog: u32,
    pub(crate) body_timeout: Duration,
    pub(crate) body_min_bytes_per_s: u64,
    pub(crate) peer_queue_bytes: usize,
    pub(crate) peer_replies_per_s: u32,
    pub(crate) peer_clock_window: Duration,
    pub(crate) max_unknown_watched: usize,
    pub(crate) health_checks: bool,
    pub(crate) health_check_allow: Vec<crate::probe::Cidr>,
    /// Entries of the console's history ring (0: off).
    pub(crate) history_size: usize,
}

/// Where and how the node keeps its data.
#[derive(Clone, Debug)]
pub(crate) struct StorageSettings {
    /// The data directory; `None` for memory only.
    pub(crate) data_dir: Option<PathBuf>,
    /// Longest wait of a written-behind change.
    pub(crate) write_behind: Duration,
    /// The store's page cache, bytes.
    pub(crate) cache_bytes: usize,
}

/// The default data directory (relative to where `muster serve` runs).
pub const DEFAULT_DATA_DIR: &str = "muster-data";

/// Validated settings of one node.
#[derive(Clone, Debug)]
pub struct Settings {
    pub(crate) core: Config,
    pub(crate) listen: SocketAddr,
    pub(crate) cluster_secret: Option<Secret>,
    pub(crate) write_token: Option<Secret>,
    pub(crate) read_token: Option<Secret>,
    pub(crate) http: HttpSettings,
    pub(crate) eureka: crate::compat::eureka::EurekaSettings,
    pub(crate) storage: StorageSettings,
    pub(crate) log_level: String,
    pub(crate) log_format: LogFormat,
    /// The Nacos adapter's settings.
    pub(crate) nacos: crate::compat::nacos::NacosSettings,
    /// Tests only: the shift of this node's wall clock, ms.
    pub(crate) test_clock_offset_ms: i64,
}

impl Settings {
    /// The log filter directives.
    pub fn log_level(&self) -> &str {
        &self.log_level
    }

    /// The log format.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }
}

macro_rules! fill_from {
    ($dst:ident, $src:ident; $($field:ident),* $(,)?) => {
        $( if $dst.$field.is_none() { $dst.$field = $src.$field; } )*
    };
}

impl ServeArgs {
    /// Fills every value not given by a flag or variable from the TOML file
    /// named by `--config`, if any.
    pub fn with_file(mut self) -> Result<ServeArgs, SettingsError> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SettingsError::new("config", format!("cannot read {}: {e}", path.display())))?;
        let file: ServeArgs = toml::from_str(&text)
            .map_err(|e| SettingsError::new("config", format!("{}: {}", path.display(), e.message())))?;
        fill_from!(self, file;
            listen, advertise, peers, cluster_secret_file, write_token_file, read_token_file,
            heartbeat_interval_ms, unhealthy_after_ms, remove_after_ms, sync_delay_ms,
            anti_entropy_interval_ms, ping_interval_ms, suspect_after_ms, down_after_ms,
            startup_timeout_ms, snapshot_retry_ms, tombstone_ttl_ms, health_check_interval_ms,
            health_check_timeout_ms, max_clock_skew_ms,
            max_body_bytes, max_long_polls, history_size, max_wait_ms, request_queue, peer_queue, peer_timeout_ms,
            shutdown_timeout_ms, max_instances, max_instances_per_service, max_services,
            max_metadata_entries, max_metadata_bytes, max_batch_beats, max_page_size, max_follow_up_rounds,
            brake_share, brake_floor, brake_window_ms, seed, log_level, log_format,
            data_dir, memory_only, write_behind_ms, store_cache_mib,
        );
        fill_from!(self, file;
            listen_backlog, body_timeout_ms, body_min_bytes_per_s, max_peer_body_bytes,
            peer_queue_bytes, peer_replies_per_s, peer_clock_window_ms, max_unknown_watched,
            health_checks, health_check_allow,
            nacos_udp_push, nacos_push_max_subscribers, nacos_push_max_subscribers_per_service,
            nacos_push_max_packet_bytes, nacos_push_ack_timeout_ms, nacos_push_retries,
            nacos_push_subscriber_ttl_ms,
            eureka_prefix, eureka_namespace, eureka_group, eureka_delta_retention_ms,
            eureka_max_delta_changes,
        );
        fill_from!(self, file; tombstone_max_hold_ms, max_tombstones);
        Ok(self)
    }

    /// Validates everything into [`Settings`]; reads the secret files.
    pub fn into_settings(self) -> Result<Settings, SettingsError> {
        let listen = match self.listen {
            Some(a) => a,
            None => DEFAULT_LISTEN.parse().map_err(|_| SettingsError::new("listen", "bad default"))?,
        };
        let node_id = self.node_id(listen)?;
        let peers = self.peer_ids(&node_id)?;
        let cluster_secret = read_secret("cluster_secret_file", self.cluster_secret_file.as_deref())?;
        if !peers.is_empty() && cluster_secret.is_none() {
            return Err(SettingsError::new(
                "cluster_secret_file",
                "a cluster (--peers) needs a shared secret, the same file on every node; make one with \
                 `head -c 32 /dev/urandom | base64 > muster.secret` and pass \
                 --cluster-secret-file muster.secret (or MUSTER_CLUSTER_SECRET_FILE)",
            ));
        }
        let write_token = read_secret("write_token_file", self.write_token_file.as_deref())?;
        let read_token = read_secret("read_token_file", self.read_token_file.as_deref())?;
        if read_token.is_some() && write_token.is_none() {
            return Err(SettingsError::new(
                "read_token_file",
                "a read token without a write token would leave writes open; set write_token_file too",
            ));
        }
        let core = self.core_config(node_id, peers)?;
        let http = self.http_settings()?;
        let nacos = self.nacos_settings()?;
        let eureka = crate::compat::eureka::EurekaSettings::from_args(&self)?;
        let storage = self.storage_settings()?;
        Ok(Settings {
            nacos,
            core,
            listen,
            cluster_secret,
            write_token,
            read_token,
            http,
            eureka,
            storage,
            log_level: self.log_level.clone().unwrap_or_else(|| "info".to_owned()),
            log_format: self.log_format.unwrap_or_default(),
            test_clock_offset_ms: self.test_clock_offset_ms.unwrap_or(0),
        })
    }

    fn node_id(&self, listen: SocketAddr) -> Result<NodeId, SettingsError> {
        let id = match &self.advertise {
            Some(a) => a.clone(),
            None if listen.ip().is_unspecified() && self.peers.as_ref().is_some_and(|p| !p.is_empty()) => {
                return Err(SettingsError::new(
                    "advertise",
                    format!("listening on {listen}: set the address peers reach this node at"),
                ));
            }
            None => listen.to_string(),
        };
        check_address("advertise", &id)?;
        NodeId::parse(&id).map_err(|e| SettingsError::new("advertise", e.message))
    }

    fn peer_ids(&self, me: &NodeId) -> Result<Vec<NodeId>, SettingsError> {
        let mut out: Vec<NodeId> = Vec::new();
        for raw in self.peers.iter().flatten() {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            check_address("peers", raw)?;
            let id = NodeId::parse(raw)
                .map_err(|e| SettingsError::new("peers", format!("{raw:?}: {}", e.message)))?;
            if &id != me && !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn core_config(&self, node_id: NodeId, peers: Vec<NodeId>) -> Result<Config, SettingsError> {
        let mut c = Config::new(node_id);
        c.peers = peers;
        c.seed = self.seed.unwrap_or_else(random_seed);
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let t = &mut c.timings;
        t.heartbeat_interval = ms(self.heartbeat_interval_ms, t.heartbeat_interval);
        t.unhealthy_after = ms(self.unhealthy_after_ms, t.unhealthy_after);
        t.remove_after = ms(self.remove_after_ms, t.remove_after);
        t.sync_delay = ms(self.sync_delay_ms, t.sync_delay);
        t.anti_entropy_interval = ms(self.anti_entropy_interval_ms, t.anti_entropy_interval);
        t.ping_interval = ms(self.ping_interval_ms, t.ping_interval);
        t.suspect_after = ms(self.suspect_after_ms, t.suspect_after);
        t.down_after = ms(self.down_after_ms, t.down_after);
        t.startup_timeout = ms(self.startup_timeout_ms, t.startup_timeout);
        t.snapshot_retry = ms(self.snapshot_retry_ms, t.snapshot_retry);
        t.tombstone_ttl = ms(self.tombstone_ttl_ms, t.tombstone_ttl);
        t.tombstone_max_hold = ms(self.tombstone_max_hold_ms, t.tombstone_max_hold);
        t.max_clock_skew = ms(self.max_clock_skew_ms, t.max_clock_skew);
        t.health_check_interval = ms(self.health_check_interval_ms, t.health_check_interval);
        let l = &mut c.limits;
        let n = |v: Option<usize>, d: usize| v.unwrap_or(d);
        l.max_instances = n(self.max_instances, l.max_instances);
        l.max_tombstones = n(self.max_tombstones, l.max_tombstones);
        l.max_instances_per_service = n(self.max_instances_per_service, l.max_instances_per_service);
        l.max_services = n(self.max_services, l.max_services);
        l.max_metadata_entries = n(self.max_metadata_entries, l.max_metadata_entries);
        l.max_metadata_bytes = n(self.max_metadata_bytes, l.max_metadata_bytes);
        l.max_batch_beats = n(self.max_batch_beats, l.max_batch_beats);
        l.max_page_size = n(self.max_page_size, l.max_page_size);
        l.max_follow_up_rounds = n(self.max_follow_up_rounds, l.max_follow_up_rounds);
        c.brake.share = self.brake_share.unwrap_or(c.brake.share);
        c.brake.floor = n(self.brake_floor, c.brake.floor);
        c.brake.window = ms(self.brake_window_ms, c.brake.window);
        c.validate().map_err(|e| SettingsError::new(e.field, e.message))?;
        Ok(c)
    }

    fn storage_settings(&self) -> Result<StorageSettings, SettingsError> {
        let memory_only = self.memory_only.unwrap_or(false);
        if memory_only && self.data_dir.is_some() {
            return Err(SettingsError::new(
                "memory_only",
                "memory_only keeps nothing on disk, so data_dir would be ignored; give one or the other",
            ));
        }
        let write_behind = match self.write_behind_ms {
            Some(0) => return Err(SettingsError::new("write_behind_ms", "must be greater than zero")),
            Some(ms) if ms > 60_000 => {
                return Err(SettingsError::new(
                    "write_behind_ms",
                    "at most 60000 (a minute of changes in memory)",
                ));
            }
            v => Duration::from_millis(v.unwrap_or(200)),
        };
        let cache_bytes = match self.store_cache_mib {
            Some(0) => return Err(SettingsError::new("store_cache_mib", "must be at least 1")),
            Some(mib) if mib > 65_536 => {
                return Err(SettingsError::new("store_cache_mib", "at most 65536 (64 GiB)"));
            }
            // The store is read whole only at start, in key order, and
            // ephemeral instances are appended, so a small cache costs
            // little: 2 and 16 MiB loaded 1,000,000 records in the same
            // ~10 s and took persistent writes at the same rate, and 16 MiB
            // held ~10 MiB more resident (BENCHMARKS.md "Durable storage";
            // redb's default is 1 GiB).
            v => (v.unwrap_or(2) as usize) << 20,
        };
        let data_dir =
            (!memory_only).then(|| self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)));
        Ok(StorageSettings { data_dir, write_behind, cache_bytes })
    }

    fn http_settings(&self) -> Result<HttpSettings, SettingsError> {
        let positive = |key: &str, v: Option<usize>, d: usize| match v {
            Some(0) => Err(SettingsError::new(key, "must be at least 1")),
            v => Ok(v.unwrap_or(d)),
        };
        let positive_ms = |key: &str, v: Option<u64>, d: u64| match v {
            Some(0) => Err(SettingsError::new(key, "must be greater than zero")),
            v => Ok(Duration::from_millis(v.unwrap_or(d))),
        };
        let max_body_bytes = positive("max_body_bytes", self.max_body_bytes, 1 << 20)?;
        Ok(HttpSettings {
            max_body_bytes,
            max_peer_body_bytes: positive("max_peer_body_bytes", self.max_peer_body_bytes, 32 << 20)?,
            max_long_polls: positive("max_long_polls", self.max_long_polls, 10_000)?,
            max_wait: positive_ms("max_wait_ms", self.max_wait_ms, 120_000)?,
            request_queue: positive("request_queue", self.request_queue, 16_384)?,
            peer_queue: positive("peer_queue", self.peer_queue, 4_096)?,
            peer_timeout: positive_ms("peer_timeout_ms", self.peer_timeout_ms, 2_000)?,
            shutdown_timeout: positive_ms("shutdown_timeout_ms", self.shutdown_timeout_ms, 10_000)?,
            health_check_timeout: positive_ms(
                "health_check_timeout_ms",
                self.health_check_timeout_ms,
                2_000,
            )?,
            listen_backlog: match self.listen_backlog {
                Some(0) => return Err(SettingsError::new("listen_backlog", "must be at least 1")),
                v => v.unwrap_or(4_096),
            },
            body_timeout: positive_ms("body_timeout_ms", self.body_timeout_ms, 10_000)?,
            body_min_bytes_per_s: self.body_min_bytes_per_s.unwrap_or(4_096),
            peer_queue_bytes: positive("peer_queue_bytes", self.peer_queue_bytes, 64 << 20)?,
            peer_replies_per_s: match self.peer_replies_per_s {
                Some(0) => return Err(SettingsError::new("peer_replies_per_s", "must be at least 1")),
                v => v.unwrap_or(20),
            },
            peer_clock_window: positive_ms("peer_clock_window_ms", self.peer_clock_window_ms, 30_000)?,
            max_unknown_watched: positive("max_unknown_watched", self.max_unknown_watched, 10_000)?,
            health_checks: self.health_checks.unwrap_or(true),
            health_check_allow: match &self.health_check_allow {
                None => crate::probe::Cidr::everything(),
                Some(list) => crate::probe::Cidr::parse_list(list)
                    .map_err(|m| SettingsError::new("health_check_allow", m))?,
            },
            history_size: self.history_size.unwrap_or(10_000),
        })
    }
}

/// Checks that `addr` is a `host:port` that peers can be reached at over HTTP.
fn check_address(key: &str, addr: &str) -> Result<(), SettingsError> {
    let bad = || SettingsError::new(key, format!("{addr:?} must be host:port, e.g. 10.0.0.7:8848"));
    let authority: hyper::http::uri::Authority = addr.parse().map_err(|_| bad())?;
    if authority.port_u16().is_none() || authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad());
    }
    Ok(())
}

fn read_secret(key: &str, path: Option<&Path>) -> Result<Option<Secret>, SettingsError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingsError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim();
    if secret.len() < 16 {
        return Err(SettingsError::new(
            key,
            format!(
                "{} holds {} characters; use at least 16, e.g. `head -c 32 /dev/urandom | base64`",
                path.display(),
                secret.len()
            ),
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SettingsError::new(
            key,
            format!("{}: must be printable ASCII without spaces", path.display()),
        ));
    }
    Ok(Some(Secret(secret.to_owned())))
}

/// A seed from the wall clock and the process id, for runs without `--seed`.
fn random_seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    // SplitMix64 finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut all = vec!["muster-serve"];
        all.extend_from_slice(args);
        <Serve as clap::Parser>::try_parse_from(all).unwrap().args
    }

    #[test]
    fn no_flags_give_a_single_node_on_the_default_address() {
        let s = parse(&[]).into_settings().unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.core.node_id.as_str(), DEFAULT_LISTEN);
        assert!(s.core.peers.is_empty());
        assert_eq!(s.storage.data_dir.as_deref(), Some(Path::new(DEFAULT_DATA_DIR)));
    }

    #[test]
    fn memory_only_keeps_no_data_directory_and_refuses_one_given_too() {
        assert_eq!(parse(&["--memory-only"]).into_settings().unwrap().storage.data_dir, None);
        assert_eq!(
            parse(&["--memory-only", "false"]).into_settings().unwrap().storage.data_dir.unwrap(),
            Path::new(DEFAULT_DATA_DIR)
        );
        let err = parse(&["--memory-only", "--data-dir", "x"]).into_settings().unwrap_err();
        assert_eq!(err.key, "memory_only");
        assert_eq!(parse(&["--write-behind-ms", "0"]).into_settings().unwrap_err().key, "write_behind_ms");
        assert_eq!(parse(&["--store-cache-mib", "0"]).into_settings().unwrap_err().key, "store_cache_mib");
        assert_eq!(
            parse(&["--store-cache-mib", "70000"]).into_settings().unwrap_err().key,
            "store_cache_mib"
        );
    }

    #[test]
    fn a_cluster_without_a_secret_is_refused_with_how_to_make_one() {
        let err = parse(&["--peers", "127.0.0.1:1,127.0.0.1:2"]).into_settings().unwrap_err();
        assert_eq!(err.key, "cluster_secret_file");
        assert!(err.message.contains("head -c 32 /dev/urandom"), "{err}");
    }

    #[test]
    fn the_node_itself_is_skipped_in_the_peer_list() {
        let dir = std::env::temp_dir().join(format!("muster-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
        let s = parse(&[
            "--listen",
            "127.0.0.1:7001",
            "--peers",
            "127.0.0.1:7001,127.0.0.1:7002",
            "--cluster-secret-file",
            secret.to_str().unwrap(),
        ])
        .into_settings()
        .unwrap();
        assert_eq!(s.core.peers.len(), 1);
        assert_eq!(s.core.peers[0].as_str(), "127.0.0.1:7002");
        assert_eq!(s.cluster_secret.unwrap().as_str(), "0123456789abcdef0123");
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        assert_eq!(parse(&["--advertise", "localhost"]).into_settings().unwrap_err().key, "advertise");
        assert_eq!(parse(&["--advertise", "a b:1"]).into_settings().unwrap_err().key, "advertise");
        assert_eq!(parse(&["--peers", "127.0.0.1"]).into_settings().unwrap_err().key, "peers");
        assert_eq!(parse(&["--peers", "http://x:1"]).into_settings().unwrap_err().key, "peers");
        let s = parse(&["--advertise", "[::1]:8848"]).into_settings().unwrap();
        assert_eq!(s.core.node_id.as_str(), "[::1]:8848");
    }

    #[test]
    fn core_timing_errors_name_the_key() {
        let err = parse(&["--unhealthy-after-ms", "40000"]).into_settings().unwrap_err();
        assert_eq!(err.key, "unhealthy_after_ms");
    }

    #[test]
    fn the_toml_file_fills_what_flags_leave_out() {
        let dir = std::env::temp_dir().join(format!("muster-config-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("muster.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nheartbeat_interval_ms = 2000\nlog_format = \"json\"\n",
        )
        .unwrap();
        let s = parse(&["--config", file.to_str().unwrap(), "--heartbeat-interval-ms", "3000"])
            .with_file()
            .unwrap()
            .into_settings()
            .unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.core.timings.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(s.log_format, LogFormat::Json);
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = parse(&["--config", file.to_str().unwrap()]).with_file().unwrap_err();
        assert!(err.message.contains("lisen"), "{err}");
    }

    #[test]
    fn hardening_limits_have_defaults_and_refuse_nonsense_by_key() {
        let s = parse(&[]).into_settings().unwrap();
        assert_eq!((s.http.listen_backlog, s.http.max_peer_body_bytes), (4_096, 32 << 20));
        assert!(s.http.health_checks && s.http.health_check_allow.len() == 2);
        for (flag, key) in [
            ("--listen-backlog", "listen_backlog"),
            ("--body-timeout-ms", "body_timeout_ms"),
            ("--max-peer-body-bytes", "max_peer_body_bytes"),
            ("--peer-queue-bytes", "peer_queue_bytes"),
            ("--peer-replies-per-s", "peer_replies_per_s"),
            ("--peer-clock-window-ms", "peer_clock_window_ms"),
            ("--max-unknown-watched", "max_unknown_watched"),
        ] {
            assert_eq!(parse(&[flag, "0"]).into_settings().unwrap_err().key, key);
        }
        let err = parse(&["--health-check-allow", "10.0.0.0/40"]).into_settings().unwrap_err();
        assert_eq!(err.key, "health_check_allow");
        let s = parse(&["--health-check-allow", "10.0.0.0/8,fd00::/8"]).into_settings().unwrap();
        assert_eq!(s.http.health_check_allow.len(), 2);
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
