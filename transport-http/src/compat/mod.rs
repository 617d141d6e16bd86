//! Compatibility adapters: foreign registry APIs served by the same node
//! over the same core, one module per API.
//!
//! The Filter asks [`api_of`] which API a request path belongs to and hands a
//! foreign request whole to that adapter's `handle`; the adapter reuses the
//! Filter's pieces (tokens, body limit) and translates into the core's
//! requests through the same driver handle and published snapshots as the
//! native API.

pub(crate) mod eureka;

use crate::config::Settings;

/// The API a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Muster's own OpenAPI, peer API and operational endpoints.
    Native,
    /// Eureka REST v2 under its configured prefix.
    Eureka,
}

/// Which API serves `path`. The Eureka prefix is configurable, hence the settings.
pub(crate) fn api_of(settings: &Settings, path: &str) -> Api {
    if eureka::owns(&settings.eureka, path) {
        return Api::Eureka;
    }
    Api::Native
}
