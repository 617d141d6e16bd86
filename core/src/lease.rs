//! Leases: how often an ephemeral instance beats and how long its silence
//! is tolerated, and how a persistent instance is checked; from the node's
//! timings, or per instance through metadata.

use std::time::Duration;

use crate::config::Timings;
use crate::error::{Field, InvalidInput};
use crate::model::Metadata;

/// Metadata key overriding the heartbeat interval told to the client (ms).
pub const META_HEARTBEAT_INTERVAL: &str = "muster.heartbeat_interval_ms";
/// Metadata key overriding the silence before the instance is unhealthy (ms).
pub const META_UNHEALTHY_AFTER: &str = "muster.unhealthy_after_ms";
/// Metadata key overriding the silence before the instance is removed (ms).
pub const META_REMOVE_AFTER: &str = "muster.remove_after_ms";

/// Metadata key choosing a persistent instance's active health check:
/// `tcp` (the default: a TCP connect to ip:port), `http` (a GET of
/// `muster.health_check_path` answered 2xx or 3xx) or `none` (clients set
/// its health).
pub const META_HEALTH_CHECK: &str = "muster.health_check";
/// Metadata key with the path of an `http` health check (default `/`).
pub const META_HEALTH_CHECK_PATH: &str = "muster.health_check_path";

/// How a persistent instance's health is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connect to ip:port.
    #[default]
    Tcp,
    /// An HTTP GET of the instance's check path.
    Http,
    /// No active check: clients set the health.
    None,
}

const MIN_MS: u64 = 1_000;
const MAX_MS: u64 = 86_400_000;

/// A lease in twelve bytes, kept with each instance so that neither a
/// heartbeat nor a timer reads the metadata again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompactLease {
    beat_ms: u32,
    unhealthy_ms: u32,
    remove_ms: u32,
    check: CheckKind,
}

fn ms32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl From<Lease> for CompactLease {
    fn from(l: Lease) -> CompactLease {
        CompactLease {
            beat_ms: ms32(l.heartbeat_interval),
            unhealthy_ms: ms32(l.unhealthy_after),
            remove_ms: ms32(l.remove_after),
            check: l.check,
        }
    }
}

impl CompactLease {
    pub(crate) fn heartbeat_interval(self) -> Duration {
        Duration::from_millis(u64::from(self.beat_ms))
    }

    pub(crate) fn unhealthy_after(self) -> Duration {
        Duration::from_millis(u64::from(self.unhealthy_ms))
    }

    pub(crate) fn remove_after(self) -> Duration {
        Duration::from_millis(u64::from(self.remove_ms))
    }

    pub(crate) fn check(self) -> CheckKind {
        self.check
    }
}

/// The heartbeat timings of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// How often the client beats.
    pub heartbeat_interval: Duration,
    /// Silence before the instance is marked unhealthy.
    pub unhealthy_after: Duration,
    /// Silence before the instance is removed.
    pub remove_after: Duration,
    /// How a persistent instance is checked (ignored for ephemeral ones).
    pub check: CheckKind,
}

impl Lease {
    /// The node's default lease.
    pub fn defaults(t: &Timings) -> Lease {
        Lease {
            heartbeat_interval: t.heartbeat_interval,
            unhealthy_after: t.unhealthy_after,
            remove_after: t.remove_after,
            check: CheckKind::Tcp,
        }
    }

    /// The lease of an instance with `metadata`: the node's timings overridden
    /// by the `muster.*_ms` keys, each 1000 to 86400000 and in increasing
    /// order (interval < unhealthy < remove).
    pub fn from_metadata(metadata: &Metadata, t: &Timings) -> Result<Lease, InvalidInput> {
        let mut lease = Lease::defaults(t);
        if !metadata.has_key_prefix("muster.") {
            return Ok(lease);
        }
        if let Some(d) = read(metadata, META_HEARTBEAT_INTERVAL)? {
            lease.heartbeat_interval = d;
        }
        if let Some(d) = read(metadata, META_UNHEALTHY_AFTER)? {
            lease.unhealthy_after = d;
        }
        if let Some(d) = read(metadata, META_REMOVE_AFTER)? {
            lease.remove_after = d;
        }
        lease.check = match metadata.get(META_HEALTH_CHECK) {
            None | Some("tcp") => CheckKind::Tcp,
            Some("http") => CheckKind::Http,
            Some("none") => CheckKind::None,
            Some(other) => {
                return Err(InvalidInput::new(
                    Field::Metadata,
                    format!("{META_HEALTH_CHECK} must be tcp, http or none, got {other:?}"),
                ));
            }
        };
        if let Some(path) = metadata.get(META_HEALTH_CHECK_PATH) {
            check_path(path)?;
        }
        if lease.heartbeat_interval >= lease.unhealthy_after {
            return Err(order_error(META_HEARTBEAT_INTERVAL, META_UNHEALTHY_AFTER, lease));
        }
        if lease.unhealthy_after >= lease.remove_after {
            return Err(order_error(META_UNHEALTHY_AFTER, META_REMOVE_AFTER, lease));
        }
        if lease.remove_after > t.tombstone_ttl {
            return Err(InvalidInput::new(
                Field::Metadata,
                format!(
                    "{META_REMOVE_AFTER} must be at most the tombstone TTL ({} ms on this node): a \
                     deregistration is remembered only that long; got {} ms",
                    t.tombstone_ttl.as_millis(),
                    lease.remove_after.as_millis()
                ),
            ));
        }
        Ok(lease)
    }

    /// Lowers the `muster.*_ms` lease keys of `metadata` so that the removal
    /// time is at most the tombstone TTL (the others stay below it, in
    /// order), for the compatible APIs whose clients ask for longer leases
    /// (Eureka's `durationInSecs`, Consul's `DeregisterCriticalServiceAfter`)
    /// and cannot be answered 400 for it. Returns whether it changed anything.
    pub fn clamp_to_tombstone_ttl(
        metadata: &mut std::collections::BTreeMap<String, String>,
        t: &Timings,
    ) -> bool {
        let ttl = crate::time::millis(t.tombstone_ttl);
        let read = |m: &std::collections::BTreeMap<String, String>, k: &str| {
            m.get(k).and_then(|v| v.trim().parse::<u64>().ok())
        };
        if read(metadata, META_REMOVE_AFTER).is_none_or(|r| r <= ttl) {
            return false;
        }
        metadata.insert(META_REMOVE_AFTER.to_owned(), ttl.to_string());
        let unhealthy_max = ttl.saturating_sub(MIN_MS).max(MIN_MS);
        if read(metadata, META_UNHEALTHY_AFTER).is_some_and(|u| u > unhealthy_max) {
            metadata.insert(META_UNHEALTHY_AFTER.to_owned(), unhealthy_max.to_string());
        }
        let unhealthy =
            read(metadata, META_UNHEALTHY_AFTER).unwrap_or(crate::time::millis(t.unhealthy_after));
        let beat_max = unhealthy.saturating_sub(MIN_MS).max(MIN_MS);
        if read(metadata, META_HEARTBEAT_INTERVAL).is_some_and(|b| b > beat_max) {
            metadata.insert(META_HEARTBEAT_INTERVAL.to_owned(), beat_max.to_string());
        }
        true
    }

    /// Like [`Lease::from_metadata`], falling back to the defaults on invalid
    /// metadata (records from peers are not refused for it).
    pub fn from_metadata_or_default(metadata: &Metadata, t: &Timings) -> Lease {
        Lease::from_metadata(metadata, t).unwrap_or_else(|_| Lease::defaults(t))
    }
}

/// The path of an `http` check: `/`, then up to 255 printable ASCII characters.
fn check_path(path: &str) -> Result<(), InvalidInput> {
    let ok = path.starts_with('/') && path.len() <= 256 && path.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            Field::Metadata,
            format!("{META_HEALTH_CHECK_PATH} must start with / and hold up to 256 printable characters"),
        ))
    }
}

/// The path of an instance's `http` check.
pub fn check_path_of(metadata: &Metadata) -> &str {
    metadata.get(META_HEALTH_CHECK_PATH).filter(|p| check_path(p).is_ok()).unwrap_or("/")
}

fn read(metadata: &Metadata, key: &str) -> Result<Option<Duration>, InvalidInput> {
    let Some(v) = metadata.get(key) else { return Ok(None) };
    match v.trim().parse::<u64>() {
        Ok(ms) if (MIN_MS..=MAX_MS).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(InvalidInput::new(
            Field::Metadata,
            format!("{key} must be a whole number of milliseconds from {MIN_MS} to {MAX_MS}, got {v:?}"),
        )),
    }
}

fn order_error(lower: &str, upper: &str, lease: Lease) -> InvalidInput {
    InvalidInput::new(
        Field::Metadata,
        format!(
            "{lower} must be less than {upper} (lease is interval {} ms, unhealthy after {} ms, \
             removed after {} ms); set both",
            lease.heartbeat_interval.as_millis(),
            lease.unhealthy_after.as_millis(),
            lease.remove_after.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        Metadata::from_map(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    #[test]
    fn metadata_overrides_the_default_lease() {
        let t = Timings::default();
        let lease = Lease::from_metadata(
            &meta(&[
                (META_UNHEALTHY_AFTER, "6000"),
                (META_REMOVE_AFTER, "9000"),
                (META_HEARTBEAT_INTERVAL, "2000"),
            ]),
            &t,
        )
        .unwrap();
        assert_eq!(lease.unhealthy_after, Duration::from_secs(6));
        assert_eq!(lease.remove_after, Duration::from_secs(9));
        assert_eq!(lease.heartbeat_interval, Duration::from_secs(2));
    }

    #[test]
    fn out_of_order_or_malformed_overrides_are_refused() {
        let t = Timings::default();
        assert!(Lease::from_metadata(&meta(&[(META_UNHEALTHY_AFTER, "40000")]), &t).is_err());
        assert!(Lease::from_metadata(&meta(&[(META_REMOVE_AFTER, "soon")]), &t).is_err());
        assert!(Lease::from_metadata(&meta(&[(META_REMOVE_AFTER, "10")]), &t).is_err());
        assert_eq!(
            Lease::from_metadata_or_default(&meta(&[(META_REMOVE_AFTER, "10")]), &t),
            Lease::defaults(&t)
        );
    }

    #[test]
    fn a_removal_time_past_the_tombstone_ttl_is_refused_naming_the_key() {
        let t = Timings::default();
        let err = Lease::from_metadata(&meta(&[(META_REMOVE_AFTER, "600001")]), &t).unwrap_err();
        assert_eq!(err.field, Field::Metadata);
        assert!(err.message.contains(META_REMOVE_AFTER), "{}", err.message);
        assert!(Lease::from_metadata(&meta(&[(META_REMOVE_AFTER, "600000")]), &t).is_ok());
    }

    #[test]
    fn a_foreign_lease_past_the_tombstone_ttl_is_clamped_in_order() {
        let t = Timings::default();
        let mut m: BTreeMap<String, String> = [
            (META_HEARTBEAT_INTERVAL, "3600000"),
            (META_UNHEALTHY_AFTER, "7200000"),
            (META_REMOVE_AFTER, "86400000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(Lease::clamp_to_tombstone_ttl(&mut m, &t));
        let lease = Lease::from_metadata(&Metadata::from_map(m.clone()).unwrap(), &t).unwrap();
        assert_eq!(lease.remove_after, t.tombstone_ttl);
        assert!(lease.heartbeat_interval < lease.unhealthy_after);
        assert!(!Lease::clamp_to_tombstone_ttl(&mut m, &t), "already within");
    }
}
