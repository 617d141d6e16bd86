//! Counters of the HTTP side and the Prometheus text rendering of all
//! metrics (these counters plus the core's [`muster_core::NodeStats`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use muster_core::{PeerMessage, PeerState};

use crate::api::ROUTES;
use crate::driver::Status;

/// Statuses counted by their own label; others count as `other`.
const STATUSES: [u16; 12] = [200, 204, 400, 401, 404, 405, 409, 413, 429, 500, 503, 0];
/// Peer message kinds, as [`PeerMessage::kind`] names them.
const KINDS: [&str; 9] = [
    "ping",
    "ack",
    "delta",
    "beats",
    "digest_root",
    "digest_buckets",
    "bucket_records",
    "snapshot_request",
    "snapshot",
];

/// Label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// Counters updated by handlers, the driver and the peer senders.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Per route (plus one for unmatched paths), per status.
    requests: Vec<[AtomicU64; STATUSES.len()]>,
    messages_in: [AtomicU64; KINDS.len()],
    messages_out: [AtomicU64; KINDS.len()],
    pub(crate) sync_bytes_in: AtomicU64,
    pub(crate) sync_bytes_out: AtomicU64,
    /// Peer requests that failed (connect, timeout, non-2xx).
    pub(crate) peer_send_failures: AtomicU64,
    /// Frames dropped: queue full, or retries exhausted.
    pub(crate) peer_frames_dropped: AtomicU64,
    /// Peer requests refused at the HTTP layer (secret, framing, decoding).
    pub(crate) peer_requests_refused: AtomicU64,
    /// Peer messages the core refused.
    pub(crate) peer_messages_refused: AtomicU64,
    /// Long polls waiting now.
    pub(crate) watchers: AtomicUsize,
    /// From a view's publication to a woken watch's answer written.
    pub(crate) watch_wake: Histogram,
    /// Times the expiry brake engaged.
    pub(crate) brake_engagements: AtomicU64,
    /// Active health checks that passed.
    pub(crate) health_checks_passed: AtomicU64,
    /// Active health checks that failed (refused, timed out, bad status).
    pub(crate) health_checks_failed: AtomicU64,
    /// Active health checks skipped because every slot was busy.
    pub(crate) health_checks_skipped: AtomicU64,
    /// Store commits (each one fsync).
    pub(crate) store_commits: AtomicU64,
    /// Record writes committed to the store (coalesced by key).
    pub(crate) store_writes: AtomicU64,
    /// Store commits that failed (full disk, I/O error); retried.
    pub(crate) store_failures: AtomicU64,
    /// Entries appended to the ephemeral log.
    pub(crate) store_log_entries: AtomicU64,
    /// Compactions of the ephemeral log completed.
    pub(crate) store_log_compactions: AtomicU64,
    /// The hardening counters (slow bodies, peer limits, refused checks).
    pub(crate) guard: GuardMetrics,
}

/// Counters of the limits against hostile clients and peers.
#[derive(Debug, Default)]
pub(crate) struct GuardMetrics {
    /// Request bodies cut for their deadline or for being too slow.
    pub(crate) slow_bodies: AtomicU64,
    /// Active health checks not run: the address is outside `health_check_allow`.
    pub(crate) health_checks_refused: AtomicU64,
    /// Expensive peer messages dropped by the per-peer reply rate limit.
    pub(crate) peer_messages_throttled: AtomicU64,
    /// Peer requests refused for a bad, stale or replayed signature.
    pub(crate) peer_signatures_refused: AtomicU64,
    /// Watches refused because too many unknown services are watched.
    pub(crate) unknown_watches_refused: AtomicU64,
    /// Peer frames refused because their checksum did not match.
    pub(crate) peer_frames_corrupt: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..=ROUTES.len()).map(|_| Default::default()).collect(),
            messages_in: Default::default(),
            messages_out: Default::default(),
            sync_bytes_in: AtomicU64::new(0),
            sync_bytes_out: AtomicU64::new(0),
            peer_send_failures: AtomicU64::new(0),
            peer_frames_dropped: AtomicU64::new(0),
            peer_requests_refused: AtomicU64::new(0),
            peer_messages_refused: AtomicU64::new(0),
            watchers: AtomicUsize::new(0),
            watch_wake: Histogram::default(),
            brake_engagements: AtomicU64::new(0),
            health_checks_passed: AtomicU64::new(0),
            health_checks_failed: AtomicU64::new(0),
            health_checks_skipped: AtomicU64::new(0),
            guard: GuardMetrics::default(),
            store_commits: AtomicU64::new(0),
            store_writes: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            store_log_entries: AtomicU64::new(0),
            store_log_compactions: AtomicU64::new(0),
        }
    }
}

fn kind_index(msg: &PeerMessage) -> usize {
    let kind = msg.kind();
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

impl Metrics {
    /// Counts a request; `route` indexes [`ROUTES`], `None` for unmatched.
    pub(crate) fn count_request(&self, route: Option<usize>, status: u16) {
        let row = route.unwrap_or(ROUTES.len());
        let col = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len() - 1);
        if let Some(c) = self.requests.get(row).and_then(|r| r.get(col)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_message_in(&self, msg: &PeerMessage) {
        if let Some(c) = self.messages_in.get(kind_index(msg)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_message_out(&self, msg: &PeerMessage) {
        if let Some(c) = self.messages_out.get(kind_index(msg)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition of everything.
    pub(crate) fn render(&self, status: &Status, peer_queues: &[(String, usize)]) -> String {
        let mut out = String::with_capacity(8192);
        let r = &status.stats.registry;
        let s = &status.stats;
        gauge(
            &mut out,
            "muster_ready",
            "Whether the node has loaded the registry (1) or not (0).",
            u64::from(status.ready),
        );
        gauge(&mut out, "muster_instances", "Live instances.", r.instances as u64);
        gauge(
            &mut out,
            "muster_healthy_instances",
            "Live instances that are healthy.",
            r.healthy_instances as u64,
        );
        gauge(
            &mut out,
            "muster_ephemeral_instances",
            "Live ephemeral instances.",
            r.ephemeral_instances as u64,
        );
        gauge(&mut out, "muster_tombstones", "Instance tombstones kept.", r.tombstones as u64);
        counter(
            &mut out,
            "muster_tombstones_forced_total",
            "Tombstones evicted before every peer held them (tombstone_max_hold_ms, max_tombstones).",
            r.forced_purges,
        );
        counter(
            &mut out,
            "muster_records_refused_stale_total",
            "Peer records refused as possible purged deletions (answered with a tombstone).",
            r.refused_stale,
        );
        gauge(&mut out, "muster_services", "Services visible to clients.", r.services as u64);
        self.render_requests(&mut out);
        counter(
            &mut out,
            "muster_heartbeats_total",
            "Heartbeats accepted (direct and forwarded).",
            r.heartbeats,
        );
        counter(
            &mut out,
            "muster_unknown_heartbeats_total",
            "Heartbeats for unknown instances.",
            r.unknown_heartbeats,
        );
        counter(
            &mut out,
            "muster_heartbeats_forwarded_total",
            "Heartbeats forwarded to responsible peers.",
            s.beats_forwarded,
        );
        counter(
            &mut out,
            "muster_instances_marked_unhealthy_total",
            "Instances marked unhealthy for silence.",
            r.marked_unhealthy,
        );
        counter(&mut out, "muster_instances_expired_total", "Instances removed for silence.", r.expired);
        counter(
            &mut out,
            "muster_expiries_braked_total",
            "Removals held back by the expiry brake.",
            r.braked,
        );
        counter(
            &mut out,
            "muster_expiries_refuted_total",
            "Expiries of other nodes refuted by this node.",
            r.refuted,
        );
        gauge(
            &mut out,
            "muster_brake_engaged",
            "Whether the expiry brake is engaged.",
            u64::from(status.brake_engaged),
        );
        counter(
            &mut out,
            "muster_brake_engagements_total",
            "Times the expiry brake engaged.",
            self.brake_engagements.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "muster_store_commits_total",
            "Store commits (one fsync each).",
            self.store_commits.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "muster_store_writes_total",
            "Record writes committed to the store.",
            self.store_writes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "muster_store_failures_total",
            "Store commits that failed (full disk, I/O error); the writes are retried.",
            self.store_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "muster_store_log_entries_total",
            "Entries appended to the ephemeral log (live ephemeral instances, and deletions of their keys).",
            self.store_log_entries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "muster_store_log_compactions_total",
            "Compactions of the ephemeral log (every live ephemeral instance written again, older blobs dropped).",
            self.store_log_compactions.load(Ordering::Relaxed),
        );
        self.render_sync(&mut out, status);
        render_peers(&mut out, status, peer_queues);
        counter(
            &mut out,
            "muster_peer_send_failures_total",
            "Failed requests to peers.",
            self.peer_send_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "muster_peer_frames_dropped_total",
            "Peer frames dropped (queue full or retries exhausted).",
            self.peer_frames_dropped.load(Ordering::Relaxed) + s.transmits_dropped,
        );
        counter(
            &mut out,
            "muster_peer_requests_refused_total",
            "Peer requests refused (secret, framing, decoding).",
            self.peer_requests_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "muster_peer_messages_refused_total",
            "Peer messages refused by the core.",
            self.peer_messages_refused.load(Ordering::Relaxed) + s.messages_refused,
        );
        gauge(
            &mut out,
            "muster_watchers",
            "Long polls waiting.",
            self.watchers.load(Ordering::Relaxed) as u64,
        );
        self.watch_wake.render(
            &mut out,
            "muster_watch_wake_seconds",
            "From the publication of a changed view to the answer of a long poll or the line of a stream it woke, written (handed to hyper for streams hyper serves).",
        );
        counter(&mut out, "muster_pauses_total", "Pauses of the node's own clock detected.", s.pauses);
        let name = "muster_health_checks_total";
        header(&mut out, name, "Active health checks of persistent instances, by result.", "counter");
        for (result, v) in [
            ("passed", &self.health_checks_passed),
            ("failed", &self.health_checks_failed),
            ("skipped", &self.health_checks_skipped),
        ] {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {}", v.load(Ordering::Relaxed));
        }
        counter(
            &mut out,
            "muster_events_dropped_total",
            "Core events dropped because their queue was full.",
            s.events_dropped,
        );
        out
    }

    /// The hardening gauges and counters; `unknown_watched` from the snapshots.
    pub(crate) fn render_guard(&self, out: &mut String, unknown_watched: usize) {
        let g = &self.guard;
        gauge(
            out,
            "muster_watched_unknown_services",
            "Services watched that the node does not know (each holds a snapshot entry).",
            unknown_watched as u64,
        );
        for (name, help, v) in [
            (
                "muster_slow_bodies_total",
                "Request bodies cut for their deadline or minimum rate.",
                &g.slow_bodies,
            ),
            (
                "muster_health_checks_refused_total",
                "Active health checks not run: address outside health_check_allow.",
                &g.health_checks_refused,
            ),
            (
                "muster_peer_messages_throttled_total",
                "Expensive peer messages dropped by the per-peer reply rate limit.",
                &g.peer_messages_throttled,
            ),
            (
                "muster_peer_signatures_refused_total",
                "Peer requests refused for a missing, bad, stale or replayed signature.",
                &g.peer_signatures_refused,
            ),
            (
                "muster_unknown_watches_refused_total",
                "Watches refused because max_unknown_watched unknown services are watched.",
                &g.unknown_watches_refused,
            ),
            (
                "muster_peer_frames_corrupt_total",
                "Peer frames refused because their checksum did not match their bytes.",
                &g.peer_frames_corrupt,
            ),
        ] {
            counter(out, name, help, v.load(Ordering::Relaxed));
        }
    }

    fn render_requests(&self, out: &mut String) {
        header(out, "muster_http_requests_total", "HTTP requests by route and status.", "counter");
        for (row, counts) in self.requests.iter().enumerate() {
            let route = ROUTES.get(row).map_or(UNMATCHED, |r| r.name);
            for (col, c) in counts.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = match STATUSES.get(col) {
                    Some(0) | None => "other".to_owned(),
                    Some(s) => s.to_string(),
                };
                let _ =
                    writeln!(out, "muster_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
    }

    fn render_sync(&self, out: &mut String, status: &Status) {
        let s = &status.stats;
        header(out, "muster_sync_messages_total", "Peer messages by direction and kind.", "counter");
        for (dir, counts) in [("in", &self.messages_in), ("out", &self.messages_out)] {
            for (kind, c) in KINDS.iter().zip(counts.iter()) {
                let _ = writeln!(
                    out,
                    "muster_sync_messages_total{{direction=\"{dir}\",kind=\"{kind}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
        header(out, "muster_sync_bytes_total", "Peer frame bytes by direction.", "counter");
        let _ = writeln!(
            out,
            "muster_sync_bytes_total{{direction=\"in\"}} {}",
            self.sync_bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "muster_sync_bytes_total{{direction=\"out\"}} {}",
            self.sync_bytes_out.load(Ordering::Relaxed)
        );
        gauge(
            out,
            "muster_sync_pending_changes",
            "Local changes waiting to be sent to peers.",
            s.pending_changes as u64,
        );
        counter(
            out,
            "muster_sync_changes_dropped_total",
            "Local changes dropped on sync queue overflow.",
            s.changes_dropped,
        );
        counter(out, "muster_sync_records_out_total", "Records sent in deltas.", s.delta_records_out);
        counter(
            out,
            "muster_sync_records_merged_total",
            "Records from peers that changed the store.",
            s.registry.merged,
        );
        counter(
            out,
            "muster_sync_records_stale_total",
            "Records from peers older than the local ones.",
            s.registry.stale,
        );
        counter(
            out,
            "muster_sync_records_rejected_total",
            "Records from peers refused.",
            s.registry.rejected,
        );
        counter(
            out,
            "muster_sync_records_refused_ahead_total",
            "Records from peers refused for being further ahead of this node's clock than max_clock_skew.",
            s.registry.rejected_ahead,
        );
        counter(
            out,
            "muster_anti_entropy_rounds_total",
            "Anti-entropy rounds started.",
            s.anti_entropy_rounds,
        );
        counter(
            out,
            "muster_anti_entropy_repairs_total",
            "Anti-entropy exchanges that found differences.",
            s.anti_entropy_repairs,
        );
        counter(
            out,
            "muster_anti_entropy_follow_ups_total",
            "Anti-entropy rounds started at once after an exchange cut short by the page size.",
            s.anti_entropy_follow_ups,
        );
    }
}

fn render_peers(out: &mut String, status: &Status, peer_queues: &[(String, usize)]) {
    header(out, "muster_peers", "Peers by state.", "gauge");
    for state in [PeerState::Up, PeerState::Suspect, PeerState::Down] {
        let n = status.members.iter().filter(|m| !m.is_self && m.state == state).count();
        let _ = writeln!(out, "muster_peers{{state=\"{state}\"}} {n}");
    }
    header(out, "muster_peer_last_heard_seconds", "Seconds since each peer was last heard from.", "gauge");
    for m in status.members.iter().filter(|m| !m.is_self) {
        if let Some(t) = m.last_heard {
            let age = status.now.saturating_since(t).as_secs_f64();
            let _ = writeln!(out, "muster_peer_last_heard_seconds{{peer=\"{}\"}} {age:.3}", m.id);
        }
    }
    header(
        out,
        "muster_peer_clock_offset_ms",
        "Each peer's wall clock minus this node's, ms, from ping round trips.",
        "gauge",
    );
    for m in status.members.iter().filter(|m| !m.is_self) {
        if let Some(c) = m.clock {
            let _ = writeln!(out, "muster_peer_clock_offset_ms{{peer=\"{}\"}} {}", m.id, c.offset_ms);
        }
    }
    header(out, "muster_peer_rtt_ms", "The round trip of each peer's clock offset estimate, ms.", "gauge");
    for m in status.members.iter().filter(|m| !m.is_self) {
        if let Some(c) = m.clock {
            let _ = writeln!(out, "muster_peer_rtt_ms{{peer=\"{}\"}} {}", m.id, c.rtt_ms);
        }
    }
    header(
        out,
        "muster_peer_clock_skewed",
        "1 if the peer's clock offset exceeds max_clock_skew beyond its uncertainty (peer=\"self\": most peers are skewed against this node).",
        "gauge",
    );
    for m in &status.members {
        let peer = if m.is_self { "self".to_owned() } else { m.id.to_string() };
        let _ = writeln!(out, "muster_peer_clock_skewed{{peer=\"{peer}\"}} {}", u8::from(m.clock_skewed));
    }
    header(out, "muster_peer_queue_frames", "Frames waiting to be sent, per peer.", "gauge");
    for (peer, n) in peer_queues {
        let _ = writeln!(out, "muster_peer_queue_frames{{peer=\"{peer}\"}} {n}");
    }
}

/// Upper bounds of [`Histogram`]'s buckets, µs.
const BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    5_000_000,
];

/// A latency histogram with fixed buckets (Prometheus exposition).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Counts per bucket of [`BUCKETS_US`], then the overflow bucket.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub(crate) fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            match BUCKETS_US.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {total}", *b as f64 / 1e6);
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {total}");
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use muster_core::{MemberView, NodeId, NodeStats, Timestamp};

    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_and_every_larger_one() {
        let h = Histogram::default();
        h.record(std::time::Duration::from_micros(80));
        h.record(std::time::Duration::from_millis(3));
        h.record(std::time::Duration::from_secs(9));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0025\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\nx_sum 9.00308\nx_count 3\n"), "{out}");
    }

    #[test]
    fn the_exposition_holds_requests_and_peer_states() {
        let m = Metrics::default();
        m.count_request(Some(0), 200);
        m.count_request(None, 404);
        m.count_request(Some(1), 418);
        let me = NodeId::parse("a:1").unwrap();
        let status = Status {
            stats: NodeStats::default(),
            members: vec![MemberView {
                id: me,
                state: PeerState::Up,
                is_self: true,
                last_heard: None,
                since: Timestamp::ZERO,
                clock: None,
                clock_skewed: false,
            }],
            now: Timestamp::ZERO,
            ready: true,
            brake_engaged: false,
        };
        let text = m.render(&status, &[("b:1".to_owned(), 3)]);
        let first = ROUTES[0].name;
        assert!(text.contains(&format!("muster_http_requests_total{{route=\"{first}\",status=\"200\"}} 1")));
        assert!(text.contains("muster_http_requests_total{route=\"unmatched\",status=\"404\"} 1"));
        assert!(text.contains("status=\"other\"} 1"));
        assert!(text.contains("muster_peers{state=\"down\"} 0"));
        assert!(text.contains("muster_peer_queue_frames{peer=\"b:1\"} 3"));
        assert!(text.contains("muster_ready 1"));
    }
}
