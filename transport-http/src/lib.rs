//! The Muster production node: the HTTP transport around the sans-IO core.
//!
//! With the feature `server` this crate holds the node and everything it
//! runs (with `client` too, both on by default, the `muster` binary): configuration from flags, a TOML file and `MUSTER_*`
//! variables (module `config`), the driver task that owns the [`muster_core::Node`]
//! and feeds it the clock, client requests, peer messages and timeouts, the
//! hyper server with its Filter (access log, request ids, body limit, tokens,
//! long-poll limit), the JSON OpenAPI described in `docs/openapi.yaml`, the
//! peer transport (`POST /cluster/v1/messages` over a pooled hyper client) and
//! Prometheus metrics.
//!
//! # Run loop of the driver
//! 1. Wait for the earliest of: the core's timer ([`muster_core::Node::poll_timeout`]),
//!    a peer message, a client command, shutdown.
//! 2. Read the clock (`Instant` since process start, as a [`muster_core::Timestamp`]);
//!    if the timer is due by the clock, call `handle_timeout`.
//! 3. Feed the input, then drain `poll_transmit` (to the per-peer queues) and
//!    `poll_event` (watchers, readiness, logs, metrics); take a bounded batch
//!    of further queued inputs the same way.
//! 4. Publish the views of the services that changed, so that reads and long
//!    polls are served from snapshots on the handler tasks and never queue
//!    behind writes.
//!
//! # The client SDK
//! With the feature `client` (on by default; alone with
//! `default-features = false, features = ["client"]`, without the server),
//! [`client`] is the Rust SDK: registration with a shared batched heartbeat,
//! discovery with a long-polled cache, failover over the server list. With
//! both features, module `cli` is the `muster` command line (`serve` and the
//! client subcommands).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(all(feature = "server", feature = "client"))]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;

/// The README's Rust snippets, compiled as doctests.
#[cfg(all(doctest, feature = "client"))]
#[doc = include_str!("../../README.md")]
mod readme {}

#[cfg(feature = "server")]
mod api;
#[cfg(feature = "server")]
mod checker;
#[cfg(feature = "server")]
mod clock;
#[cfg(feature = "server")]
mod compat;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
mod console;
#[cfg(feature = "server")]
mod driver;
#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
mod filter;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod parked;
#[cfg(feature = "server")]
mod peer;
#[cfg(feature = "server")]
mod peer_auth;
#[cfg(feature = "server")]
mod probe;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod snapshot;
#[cfg(feature = "server")]
mod store;

#[cfg(feature = "server")]
pub use server::{RunError, init_logging, run};
