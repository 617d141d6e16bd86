//! Instance changes with their cause, for a node's history (the console's
//! timeline). Off unless the driver asks for them
//! ([`crate::Node::set_instance_events`]); then every change of an
//! instance's state on this node, local or merged from a peer, comes out as
//! [`crate::Event::InstanceChanged`].
//!
//! The kind of a change is a pure function of the old and new state
//! ([`classify`]); the cause is what the registry was doing when it wrote
//! the state (a client's request, a silent lease, a failed check, the
//! brake), or, for records merged from peers, what the record itself says
//! (its author and removal cause).

use crate::model::{InstanceKey, NodeId};
use crate::record::{Author, InstanceState, RemoveCause};
use crate::time::Timestamp;

/// One change of an instance on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceChange {
    /// When this node made or merged the change.
    pub at: Timestamp,
    /// The instance.
    pub key: InstanceKey,
    /// What changed.
    pub kind: ChangeKind,
    /// Why.
    pub cause: ChangeCause,
    /// The node that wrote the record (this node, or the peer it came from).
    pub origin: NodeId,
}

/// What changed about an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// It appeared (new, or back from a tombstone).
    Registered,
    /// It was removed at a client's request.
    Deregistered,
    /// It was removed for silence.
    Expired,
    /// It turned unhealthy.
    Unhealthy,
    /// It turned healthy.
    Healthy,
    /// The brake held back its removal (it stays, unhealthy).
    Held,
    /// Weight, enabled flag or metadata changed (health unchanged).
    Updated {
        /// The weight changed.
        weight: bool,
        /// The enabled flag changed.
        enabled: bool,
        /// The metadata changed.
        metadata: bool,
    },
}

/// Why an instance changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeCause {
    /// A client's request (register, update, deregister).
    Client,
    /// No heartbeat within its lease.
    Silence,
    /// Active health checks failed.
    FailedCheck,
    /// An active health check passed.
    PassedCheck,
    /// A heartbeat lifted an unhealthy mark.
    Heartbeat,
    /// The expiry brake is engaged.
    Brake,
    /// This node still had the instance's beats and refuted a peer's verdict.
    Refutation,
    /// A registry node's own judgement arriving from a peer (its `origin`).
    Peer,
}

/// The kind of change from `old` (`None`: no record) to `new`; `None` when
/// nothing a user sees changed (a tombstone replaced by a tombstone).
pub fn classify(old: Option<&InstanceState>, new: &InstanceState) -> Option<ChangeKind> {
    let old_live = match old {
        Some(InstanceState::Live(d)) => Some(d),
        _ => None,
    };
    match (old_live, new) {
        (None, InstanceState::Live(_)) => Some(ChangeKind::Registered),
        (None, InstanceState::Removed { .. }) => None,
        (Some(_), InstanceState::Removed { cause: RemoveCause::Deregistered, .. }) => {
            Some(ChangeKind::Deregistered)
        }
        (Some(_), InstanceState::Removed { cause: RemoveCause::Expired, .. }) => Some(ChangeKind::Expired),
        (Some(a), InstanceState::Live(b)) if a.healthy != b.healthy => {
            Some(if b.healthy { ChangeKind::Healthy } else { ChangeKind::Unhealthy })
        }
        (Some(a), InstanceState::Live(b)) => {
            let weight = a.weight.to_bits() != b.weight.to_bits();
            let enabled = a.enabled != b.enabled;
            let metadata = a.metadata != b.metadata;
            (weight || enabled || metadata).then_some(ChangeKind::Updated { weight, enabled, metadata })
        }
    }
}

/// The cause of a change merged from a peer, from what its record says.
pub fn merged_cause(author: Author, new: &InstanceState) -> ChangeCause {
    match (author, new) {
        (_, InstanceState::Removed { cause: RemoveCause::Expired, .. }) => ChangeCause::Silence,
        (Author::Client, _) => ChangeCause::Client,
        (Author::Registry, _) => ChangeCause::Peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceData, Metadata};

    fn live(healthy: bool, weight: f64) -> InstanceState {
        InstanceState::Live(InstanceData {
            weight,
            healthy,
            enabled: true,
            ephemeral: true,
            metadata: Metadata::default(),
        })
    }

    #[test]
    fn a_new_or_revived_instance_is_registered() {
        assert_eq!(classify(None, &live(true, 1.0)), Some(ChangeKind::Registered));
        let tomb = InstanceState::Removed { cause: RemoveCause::Expired, at_ms: 1 };
        assert_eq!(classify(Some(&tomb), &live(true, 1.0)), Some(ChangeKind::Registered));
        assert_eq!(classify(Some(&tomb), &tomb), None, "tombstone to tombstone shows nothing");
    }

    #[test]
    fn removals_are_told_apart_by_their_cause() {
        let dereg = InstanceState::Removed { cause: RemoveCause::Deregistered, at_ms: 1 };
        let exp = InstanceState::Removed { cause: RemoveCause::Expired, at_ms: 1 };
        assert_eq!(classify(Some(&live(true, 1.0)), &dereg), Some(ChangeKind::Deregistered));
        assert_eq!(classify(Some(&live(false, 1.0)), &exp), Some(ChangeKind::Expired));
        assert_eq!(merged_cause(Author::Registry, &exp), ChangeCause::Silence);
        assert_eq!(merged_cause(Author::Client, &dereg), ChangeCause::Client);
        assert_eq!(merged_cause(Author::Registry, &live(false, 1.0)), ChangeCause::Peer);
    }

    #[test]
    fn health_wins_over_other_fields_and_updates_name_what_changed() {
        assert_eq!(classify(Some(&live(true, 1.0)), &live(false, 2.0)), Some(ChangeKind::Unhealthy));
        assert_eq!(classify(Some(&live(false, 1.0)), &live(true, 1.0)), Some(ChangeKind::Healthy));
        assert_eq!(
            classify(Some(&live(true, 1.0)), &live(true, 2.0)),
            Some(ChangeKind::Updated { weight: true, enabled: false, metadata: false })
        );
        assert_eq!(classify(Some(&live(true, 1.0)), &live(true, 1.0)), None);
    }
}
