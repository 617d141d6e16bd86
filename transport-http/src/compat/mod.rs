//! Compatibility adapters: foreign registry APIs served on the node's port
//! and translated onto the same core (see `shared/DESIGN.md`, Compatibility).
//!
//! [`api_of`] tells by the path which API a request speaks; the Filter hands
//! a foreign request whole to its adapter, which reuses the Filter's body
//! limit and tokens and is logged by it like every other request.

pub(crate) mod nacos;

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Muster's own OpenAPI, peer API and operational endpoints.
    Native,
    /// The Nacos v1 naming API (`/nacos/v1/...`).
    Nacos,
}

/// The API of a request path.
pub(crate) fn api_of(path: &str) -> Api {
    if path.starts_with(nacos::PREFIX) { Api::Nacos } else { Api::Native }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nacos_paths_go_to_the_nacos_adapter_and_the_rest_stays_native() {
        assert_eq!(api_of("/nacos/v1/ns/instance"), Api::Nacos);
        assert_eq!(api_of("/nacos/v1/auth/login"), Api::Nacos);
        assert_eq!(api_of("/v1/instances"), Api::Native);
        assert_eq!(api_of("/nacosx"), Api::Native);
    }
}
