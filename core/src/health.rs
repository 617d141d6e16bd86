//! Active health checks of persistent instances.
//!
//! Persistent instances (`ephemeral = false`) do not heartbeat. The node
//! responsible for one asks its driver, every `health_check_interval`, to
//! check it ([`crate::Node::poll_health_check`]); the driver connects (TCP)
//! or fetches a path (HTTP) and reports the outcome
//! ([`crate::Node::handle_health_check`]). One success marks the instance
//! healthy, two failures in a row unhealthy. The check is chosen per
//! instance through metadata (see [`crate::lease::META_HEALTH_CHECK`]);
//! `none` leaves the health to clients.

use crate::lease::CheckKind;
use crate::model::InstanceKey;

/// Consecutive failed checks that mark an instance unhealthy.
pub const FAILURES_TO_UNHEALTHY: u8 = 2;

/// A check the driver should perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The instance (its host and port are the target).
    pub key: InstanceKey,
    /// TCP connect or HTTP GET.
    pub kind: CheckKind,
    /// The path of an HTTP check.
    pub path: String,
}
