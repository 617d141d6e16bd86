//! Foreign registry APIs served on the node's port, each translated onto
//! the same core requests and published views as the native API.

pub(crate) mod consul;

/// Which API a request path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Muster's own OpenAPI, console and peer API.
    Native,
    /// Consul's agent, catalog, health and status APIs.
    Consul,
}

/// The API of a request path. Consul's prefixes do not collide with the
/// native `/v1/instances`, `/v1/services`, `/v1/namespaces`, `/v1/cluster/`.
pub(crate) fn api_of(path: &str) -> Api {
    if consul::PREFIXES.iter().any(|p| path.starts_with(p)) { Api::Consul } else { Api::Native }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_paths_go_to_the_consul_adapter_and_native_ones_stay() {
        for p in ["/v1/agent/self", "/v1/catalog/services", "/v1/health/service/a", "/v1/status/leader"] {
            assert_eq!(api_of(p), Api::Consul, "{p}");
        }
        for p in ["/v1/instances", "/v1/services", "/v1/namespaces", "/v1/cluster/nodes", "/health/ready"] {
            assert_eq!(api_of(p), Api::Native, "{p}");
        }
    }
}
