//! Node configuration, validated once when a node is built.

use std::time::Duration;

use crate::error::ConfigError;
use crate::model::{MetadataLimits, NodeId};

/// Everything a [`crate::Node`] needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id: its advertised address.
    pub node_id: NodeId,
    /// The other members of the cluster (static membership). Empty for a
    /// single node.
    pub peers: Vec<NodeId>,
    /// Seed of the node's random choices (which peer to load from first,
    /// timer jitter). The same seed and inputs give the same behaviour.
    pub seed: u64,
    /// Wall-clock time (milliseconds since the Unix epoch) at the node's
    /// [`crate::Timestamp::ZERO`]. Only version counters use it, so that a
    /// restarted node issues versions above the ones it issued before.
    pub wall_clock_ms: u64,
    /// Timers and timeouts.
    pub timings: Timings,
    /// Limits on everything clients and peers can grow.
    pub limits: Limits,
    /// Self-preservation against mass expiry.
    pub brake: BrakeConfig,
}

impl Config {
    /// A configuration with defaults for everything but the node id.
    pub fn new(node_id: NodeId) -> Config {
        Config {
            node_id,
            peers: Vec::new(),
            seed: 0,
            wall_clock_ms: 0,
            timings: Timings::default(),
            limits: Limits::default(),
            brake: BrakeConfig::default(),
        }
    }

    /// Checks every value; the node refuses to start on the first error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.peers.contains(&self.node_id) {
            return Err(ConfigError::new("peers", "must not contain the node's own id"));
        }
        let mut sorted = self.peers.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.peers.len() {
            return Err(ConfigError::new("peers", "lists a node twice"));
        }
        self.timings.validate()?;
        self.limits.validate()?;
        self.brake.validate()
    }
}

/// Timers and timeouts. All durations are in milliseconds in the TOML file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How often clients should heartbeat (told to them on registration).
    pub heartbeat_interval: Duration,
    /// Silence after which an ephemeral instance is marked unhealthy.
    pub unhealthy_after: Duration,
    /// Silence after which an ephemeral instance is removed.
    pub remove_after: Duration,
    /// Delay before local changes are flushed to peers as one batch.
    pub sync_delay: Duration,
    /// Interval of the anti-entropy digest exchange.
    pub anti_entropy_interval: Duration,
    /// Interval of peer pings (and of the node's housekeeping tick).
    pub ping_interval: Duration,
    /// Silence after which a peer is suspect.
    pub suspect_after: Duration,
    /// Silence after which a peer is down.
    pub down_after: Duration,
    /// How long a starting node waits for a peer's registry before it serves
    /// alone.
    pub startup_timeout: Duration,
    /// How long a starting node waits on one peer before asking the next.
    pub snapshot_retry: Duration,
    /// How long deletions are remembered (by the hybrid clock of the version).
    pub tombstone_ttl: Duration,
    /// How long after its removal a tombstone is kept at most while a peer
    /// has not yet confirmed it holds it (a peer down or cut off); past it
    /// the tombstone is evicted anyway ("forced", see `agreement.rs`). Never
    /// less than `tombstone_ttl` in effect.
    pub tombstone_max_hold: Duration,
    /// How often the responsible node checks each persistent instance.
    pub health_check_interval: Duration,
    /// A gap in the node's own clock between two ticks longer than
    /// `ping_interval + pause_threshold` is a pause (GC stall, suspended VM,
    /// SIGSTOP): instances and peers get a fresh grace period.
    pub pause_threshold: Duration,
    /// Versions (and client ordering tokens) whose clock is further than
    /// this ahead of the node's wall clock are refused, and a peer whose
    /// measured clock offset exceeds it is flagged skewed. Default 500 ms,
    /// CockroachDB's `max-offset`: NTP keeps well-run hosts within tens of
    /// milliseconds, and one client's writes through an API without an
    /// ordering token are ordered only when further apart than the skew.
    pub max_clock_skew: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat_interval: Duration::from_secs(5),
            unhealthy_after: Duration::from_secs(15),
            remove_after: Duration::from_secs(30),
            sync_delay: Duration::from_millis(2),
            anti_entropy_interval: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            suspect_after: Duration::from_secs(3),
            down_after: Duration::from_secs(6),
            startup_timeout: Duration::from_secs(5),
            snapshot_retry: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(600),
            tombstone_max_hold: Duration::from_secs(3600),
            health_check_interval: Duration::from_secs(5),
            pause_threshold: Duration::from_secs(5),
            max_clock_skew: Duration::from_millis(500),
        }
    }
}

impl Timings {
    fn validate(&self) -> Result<(), ConfigError> {
        let non_zero = [
            ("heartbeat_interval_ms", self.heartbeat_interval),
            ("unhealthy_after_ms", self.unhealthy_after),
            ("remove_after_ms", self.remove_after),
            ("anti_entropy_interval_ms", self.anti_entropy_interval),
            ("ping_interval_ms", self.ping_interval),
            ("suspect_after_ms", self.suspect_after),
            ("down_after_ms", self.down_after),
            ("snapshot_retry_ms", self.snapshot_retry),
            ("tombstone_ttl_ms", self.tombstone_ttl),
            ("pause_threshold_ms", self.pause_threshold),
            ("health_check_interval_ms", self.health_check_interval),
            ("max_clock_skew_ms", self.max_clock_skew),
        ];
        for (name, d) in non_zero {
            if d.is_zero() {
                return Err(ConfigError::new(name, "must be greater than zero"));
            }
        }
        if self.unhealthy_after >= self.remove_after {
            return Err(ConfigError::new("unhealthy_after_ms", "must be less than remove_after_ms"));
        }
        if self.heartbeat_interval >= self.unhealthy_after {
            return Err(ConfigError::new(
                "heartbeat_interval_ms",
                "must be less than unhealthy_after_ms, or every instance flaps",
            ));
        }
        if self.suspect_after >= self.down_after {
            return Err(ConfigError::new("suspect_after_ms", "must be less than down_after_ms"));
        }
        if self.ping_interval >= self.suspect_after {
            return Err(ConfigError::new("ping_interval_ms", "must be less than suspect_after_ms"));
        }
        if self.tombstone_ttl <= self.remove_after {
            return Err(ConfigError::new("tombstone_ttl_ms", "must be longer than remove_after_ms"));
        }
        Ok(())
    }
}

/// Limits on everything a client or a peer can grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most metadata entries of one instance or service.
    pub max_metadata_entries: usize,
    /// Most bytes of metadata keys and values of one instance or service.
    pub max_metadata_bytes: usize,
    /// Most live instances in one service (client registrations).
    pub max_instances_per_service: usize,
    /// Most live instances on the node, from clients and peers together
    /// (tombstones have their own bound, `max_tombstones`).
    pub max_instances: usize,
    /// Most instance tombstones on the node; past it the oldest is evicted
    /// ("forced", see `agreement.rs`).
    pub max_tombstones: usize,
    /// Most services on the node.
    pub max_services: usize,
    /// Most heartbeats in one batch.
    pub max_batch_beats: usize,
    /// Most records in one outgoing delta, anti-entropy or snapshot message.
    pub max_records_per_message: usize,
    /// Most records or beats accepted in one incoming peer message.
    pub max_incoming_records: usize,
    /// Most extra anti-entropy rounds with one peer per
    /// `anti_entropy_interval`, each started as soon as an exchange cut short
    /// by `max_records_per_message` ends, so that a large difference repairs
    /// at the speed of the link rather than one page per interval.
    pub max_follow_up_rounds: usize,
    /// Most local changes waiting to be flushed to peers; past it the queue is
    /// dropped and anti-entropy repairs the difference.
    pub max_pending_changes: usize,
    /// Most heartbeats waiting to be forwarded to one peer.
    pub max_forwarded_beats: usize,
    /// Most messages waiting in the outgoing queue; past it the oldest are
    /// dropped (anti-entropy repairs them).
    pub max_queued_transmits: usize,
    /// Most events waiting for the driver; past it the oldest are dropped.
    pub max_queued_events: usize,
    /// Most timer entries handled in one `handle_timeout`; the rest are
    /// handled at the next call, which `poll_timeout` asks for at once.
    pub max_timeouts_per_call: usize,
    /// Largest page of a service listing.
    pub max_page_size: usize,
    /// Most active health checks waiting for the driver; past it a due check
    /// waits for the next interval.
    pub max_pending_checks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_metadata_entries: 64,
            max_metadata_bytes: 8192,
            max_instances_per_service: 10_000,
            max_instances: 1_000_000,
            max_tombstones: 1_000_000,
            max_services: 100_000,
            max_batch_beats: 10_000,
            max_records_per_message: 2_000,
            max_incoming_records: 20_000,
            max_follow_up_rounds: 16,
            max_pending_changes: 200_000,
            max_forwarded_beats: 100_000,
            max_queued_transmits: 10_000,
            max_queued_events: 20_000,
            max_timeouts_per_call: 10_000,
            max_page_size: 1_000,
            max_pending_checks: 10_000,
        }
    }
}

impl Limits {
    /// The metadata part of the limits.
    pub fn metadata(&self) -> MetadataLimits {
        MetadataLimits { max_entries: self.max_metadata_entries, max_bytes: self.max_metadata_bytes }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let all = [
            ("max_metadata_entries", self.max_metadata_entries),
            ("max_metadata_bytes", self.max_metadata_bytes),
            ("max_instances_per_service", self.max_instances_per_service),
            ("max_instances", self.max_instances),
            ("max_tombstones", self.max_tombstones),
            ("max_services", self.max_services),
            ("max_batch_beats", self.max_batch_beats),
            ("max_records_per_message", self.max_records_per_message),
            ("max_incoming_records", self.max_incoming_records),
            ("max_follow_up_rounds", self.max_follow_up_rounds),
            ("max_pending_changes", self.max_pending_changes),
            ("max_forwarded_beats", self.max_forwarded_beats),
            ("max_queued_transmits", self.max_queued_transmits),
            ("max_queued_events", self.max_queued_events),
            ("max_timeouts_per_call", self.max_timeouts_per_call),
            ("max_page_size", self.max_page_size),
            ("max_pending_checks", self.max_pending_checks),
        ];
        for (name, v) in all {
            if v == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        if u32::try_from(self.max_instances).is_err() {
            return Err(ConfigError::new("max_instances", "must be below 2^32"));
        }
        if u32::try_from(self.max_instances.saturating_add(self.max_tombstones)).is_err() {
            return Err(ConfigError::new("max_tombstones", "must be below 2^32 minus max_instances"));
        }
        if u32::try_from(self.max_services).is_err() {
            return Err(ConfigError::new("max_services", "must be below 2^32"));
        }
        if self.max_queued_events < self.max_timeouts_per_call.max(self.max_incoming_records) {
            return Err(ConfigError::new(
                "max_queued_events",
                "must be at least max_timeouts_per_call and max_incoming_records, so that one input \
                 never overflows the event queue",
            ));
        }
        if self.max_incoming_records < self.max_records_per_message {
            return Err(ConfigError::new(
                "max_incoming_records",
                "must be at least max_records_per_message, or peers refuse each other's messages",
            ));
        }
        Ok(())
    }
}

/// The expiry brake (self-preservation): a node that would remove more than
/// `share` of its ephemeral instances (and more than `floor`) within one
/// `window` stops removing and only marks them unhealthy, until enough of
/// them heartbeat again. A registry that lost its own network must not wipe
/// the world.
#[derive(Clone, Debug, PartialEq)]
pub struct BrakeConfig {
    /// Share of ephemeral instances, 0 to 1; 1 turns the brake off.
    pub share: f64,
    /// Removals within one window that never engage the brake.
    pub floor: usize,
    /// The window.
    pub window: Duration,
}

impl Default for BrakeConfig {
    fn default() -> Self {
        BrakeConfig { share: 0.5, floor: 10, window: Duration::from_secs(60) }
    }
}

impl BrakeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.share.is_finite() && self.share > 0.0 && self.share <= 1.0) {
            return Err(ConfigError::new("brake_share", "must be a number above 0, at most 1"));
        }
        if self.window.is_zero() {
            return Err(ConfigError::new("brake_window_ms", "must be greater than zero"));
        }
        Ok(())
    }

    /// Whether the brake can ever engage.
    pub fn enabled(&self) -> bool {
        self.share < 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(NodeId::parse("127.0.0.1:8848").unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn a_node_listing_itself_as_peer_is_refused() {
        let mut c = config();
        c.peers.push(c.node_id.clone());
        assert_eq!(c.validate().unwrap_err().field, "peers");
    }

    #[test]
    fn unhealthy_after_must_precede_removal() {
        let mut c = config();
        c.timings.unhealthy_after = c.timings.remove_after;
        assert_eq!(c.validate().unwrap_err().field, "unhealthy_after_ms");
    }

    #[test]
    fn zero_limits_are_refused() {
        let mut c = config();
        c.limits.max_services = 0;
        assert_eq!(c.validate().unwrap_err().field, "max_services");
    }

    #[test]
    fn brake_share_out_of_range_is_refused() {
        let mut c = config();
        c.brake.share = 0.0;
        assert_eq!(c.validate().unwrap_err().field, "brake_share");
    }
}
