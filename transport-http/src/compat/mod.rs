//! Compatibility adapters: foreign registry APIs served on the node's port
//! and translated onto the same core (see `shared/DESIGN.md`, Compatibility),
//! one module per API.
//!
//! [`api_of`] tells by the path which API a request speaks; the Filter hands
//! a foreign request whole to its adapter, which reuses the Filter's body
//! reader and tokens, translates into the core's requests through the same
//! driver handle and published snapshots as the native API, and is logged by
//! the Filter like every other request.

pub(crate) mod consul;
pub(crate) mod eureka;
pub(crate) mod nacos;

use crate::config::Settings;

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Muster's own OpenAPI, console, peer API and operational endpoints.
    Native,
    /// The Nacos v1 naming API (`/nacos/v1/...`).
    Nacos,
    /// Eureka REST v2 under its configured prefix.
    Eureka,
    /// Consul's agent, catalog, health and status APIs.
    Consul,
}

/// The API of a request path. The Eureka prefix is configurable, hence the
/// settings. Consul's prefixes do not collide with the native
/// `/v1/instances`, `/v1/services`, `/v1/namespaces`, `/v1/cluster/`.
pub(crate) fn api_of(settings: &Settings, path: &str) -> Api {
    if path.starts_with(nacos::PREFIX) {
        Api::Nacos
    } else if consul::PREFIXES.iter().any(|p| path.starts_with(p)) {
        Api::Consul
    } else if eureka::owns(&settings.eureka, path) {
        Api::Eureka
    } else {
        Api::Native
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_paths_go_to_their_adapter_and_native_ones_stay() {
        let s = crate::config::ServeArgs::default().into_settings().unwrap();
        assert_eq!(api_of(&s, "/nacos/v1/ns/instance"), Api::Nacos);
        assert_eq!(api_of(&s, "/nacos/v1/auth/login"), Api::Nacos);
        assert_eq!(api_of(&s, "/nacosx"), Api::Native);
        assert_eq!(api_of(&s, "/eureka/apps"), Api::Eureka);
        for p in ["/v1/agent/self", "/v1/catalog/services", "/v1/health/service/a", "/v1/status/leader"] {
            assert_eq!(api_of(&s, p), Api::Consul, "{p}");
        }
        for p in ["/v1/instances", "/v1/services", "/v1/namespaces", "/v1/cluster/nodes", "/health/ready"] {
            assert_eq!(api_of(&s, p), Api::Native, "{p}");
        }
    }
}
