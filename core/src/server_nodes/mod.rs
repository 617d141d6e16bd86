//! The Server Node Manager: the registry nodes of the cluster as this node
//! sees them.
//!
//! - [`membership`]: every peer's state (up, suspect, down) from the pings
//!   and messages heard, and the transitions the node acts on;
//! - [`responsibility`]: which node expires which instance (rendezvous
//!   hashing over the members not down), handed to the Service Manager on
//!   every change.
//!
//! Public paths stay `muster_core::membership` and
//! `muster_core::responsibility` (re-exported at the crate root).

pub mod membership;
pub mod responsibility;
