//! Compatibility adapters: foreign registry APIs served on the node's port
//! and translated onto the same core (see `shared/DESIGN.md`, Compatibility),
//! one module per API.
//!
//! [`api_of`] tells by the path which API a request speaks; the Filter hands
//! a foreign request whole to its adapter, which reuses the Filter's body
//! reader and tokens, translates into the core's requests through the same
//! driver handle and published snapshots as the native API, and is logged by
//! the Filter like every other request.

pub(crate) mod eureka;
pub(crate) mod nacos;

use crate::config::Settings;

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Muster's own OpenAPI, peer API and operational endpoints.
    Native,
    /// The Nacos v1 naming API (`/nacos/v1/...`).
    Nacos,
    /// Eureka REST v2 under its configured prefix.
    Eureka,
}

/// The API of a request path. The Eureka prefix is configurable, hence the settings.
pub(crate) fn api_of(settings: &Settings, path: &str) -> Api {
    if path.starts_with(nacos::PREFIX) {
        Api::Nacos
    } else if eureka::owns(&settings.eureka, path) {
        Api::Eureka
    } else {
        Api::Native
    }
}
