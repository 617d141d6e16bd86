//! The Muster production node: the HTTP transport around the sans-IO core.
//!
//! With the default feature `server` this crate holds the `muster` binary and
//! everything it runs: configuration from flags, a TOML file and `MUSTER_*`
//! variables ([`config`]), the driver task that owns the [`muster_core::Node`]
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
//! Built with `--no-default-features` the crate holds no server; the client
//! SDK will live beside it behind its own feature.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "server")]
mod api;
#[cfg(feature = "server")]
mod clock;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
mod driver;
#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
mod filter;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod peer;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod snapshot;

#[cfg(feature = "server")]
pub use server::{RunError, init_logging, run};
