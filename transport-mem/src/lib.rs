//! A deterministic, sans-IO in-memory network for simulating Muster clusters.
//!
//! Like str0m's netem, messages go in with timestamps and decisions come out:
//! drop, delay, duplicate. The network owns no thread, socket or clock and
//! draws no ambient randomness: time enters as the `now` argument of every
//! input, randomness as a `u64` seed given to [`Network::new`]. A run is a
//! pure function of the seed and the sequence of calls, so the same seed and
//! calls give the same deliveries, at the same times, in the same order.
//!
//! # Model
//!
//! - Every directed link `(from, to)` has a [`LinkConfig`] (the network's
//!   default, or an override from [`Network::set_link`]): latency, jitter,
//!   loss, duplication and reordering, with probabilities validated once by
//!   [`Probability::new`].
//! - [`Network::send`] decides a message's fate at once. It is dropped if its
//!   link is cut (partition, isolation) or lost at random; otherwise one copy,
//!   or two when duplicated, is scheduled at `now + latency + jitter` (plus
//!   `reorder_delay` for a reordered copy). Each `send` draws exactly one value
//!   from the seeded generator whatever happens to the message, so faults and
//!   drops never shift the random decisions about later messages.
//! - Scheduled copies are delivered in (arrival time, sequence number) order,
//!   a total order: equal arrival times go in scheduling order. A copy whose
//!   link was cut while it was in flight is dropped when it falls due.
//! - A held link ([`Network::hold`]) or a clogged node ([`Network::clog`])
//!   keeps copies waiting, instead of dropping them, until released; then
//!   they flow in send order, delayed by the link's latency.
//! - [`Network::drop_in_flight_to`] models a crash: what was on its way to
//!   the node is lost.
//! - What is in flight is bounded by [`Limits`]; beyond them copies are
//!   dropped and counted. [`NetStats`] accounts for every copy, by cause.
//! - Time has millisecond resolution ([`Timestamp`]) and never goes
//!   backwards: a `now` earlier than one seen before is taken as that later
//!   time, so deliveries never go back in time either.
//!
//! # Run loop
//!
//! A discrete-event simulator drives the network (and its nodes) from one
//! thread:
//!
//! 1. Build the network with [`Network::new`]`(seed, default_link)` and set
//!    per-link overrides and faults.
//! 2. Whenever a node emits a message, call [`Network::send`] with the
//!    current time.
//! 3. Take the earliest of [`Network::poll_timeout`] and the nodes' own
//!    timeouts, and move the virtual clock there.
//! 4. Drain [`Network::poll_delivery`]`(now)` until it returns `None`, feeding
//!    each [`Delivery`] to its receiver and sending what the receiver emits
//!    (step 2). A zero-latency reply is delivered in the same drain.
//! 5. Apply faults between steps; go to 3.
//!
//! ```
//! use std::time::Duration;
//!
//! use muster_core::{NodeId, Timestamp};
//! use muster_transport_mem::{LinkConfig, Network};
//!
//! let (a, b) = (NodeId::parse("a").unwrap(), NodeId::parse("b").unwrap());
//! let mut net = Network::new(7, LinkConfig::perfect(Duration::from_millis(5)));
//! net.send(Timestamp::ZERO, &a, &b, "ping", 4);
//!
//! let now = net.poll_timeout().unwrap();
//! assert_eq!(now, Timestamp::from_millis(5));
//! let delivery = net.poll_delivery(now).unwrap();
//! assert_eq!((delivery.to, delivery.msg), (b, "ping"));
//! assert!(net.poll_delivery(now).is_none());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod config;
mod links;
mod network;
mod stats;

pub use config::{ConfigError, Limits, LinkConfig, Probability};
pub use network::{Delivery, Network};
pub use stats::{DropCause, Drops, NetStats};

#[doc(no_inline)]
pub use muster_core::{NodeId, Timestamp};

#[cfg(test)]
mod tests;
