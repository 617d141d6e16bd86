//! The Eureka REST API (v2 as Spring Cloud Netflix and the Python and Node
//! clients speak it) over the same core as the native API.
//!
//! An Eureka app is a service in the configured namespace and group, named
//! in upper case as Eureka names apps; an instance is keyed by its `ipAddr`
//! and `port` in the default cluster, its Eureka `instanceId` and other
//! Eureka-only fields kept as `eureka.*` metadata (see [`wire`]). Renewals
//! are the core's heartbeats; `leaseInfo` becomes the instance's lease
//! (`muster.*_ms` metadata), so expiry stays in the core. Status: UP is
//! `enabled`; DOWN, STARTING and OUT_OF_SERVICE (registered or overridden)
//! are `enabled = false` with the status kept in metadata; an instance the
//! core marks unhealthy shows as DOWN.
//!
//! Reads come from the published snapshots. `/apps/delta` needs a change
//! history: [`history`] keeps a bounded one (count and age), made by
//! comparing successive generations of the apps' views, and caches the
//! rendered `/apps` and delta answers per generation and encoding.

mod history;
mod routes;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use muster_core::model::{DEFAULT_GROUP, DEFAULT_NAMESPACE};
use muster_core::{Field, InvalidInput, Name};

use crate::api::AppState;
use crate::config::{ServeArgs, SettingsError};
use crate::error::{ApiError, Body};

pub(crate) use history::History as Eureka;

/// Default path prefix of the Eureka API.
const PREFIX_DEFAULT: &str = "/eureka";
/// Default time a change stays in the delta (Eureka's
/// `retentionTimeInMSInDeltaQueue`).
const DELTA_RETENTION_DEFAULT: Duration = Duration::from_secs(180);
/// Default most changes kept for the delta.
const DELTA_CHANGES_DEFAULT: usize = 10_000;

/// The Eureka adapter's settings.
#[derive(Clone, Debug)]
pub(crate) struct EurekaSettings {
    /// Path prefix, e.g. `/eureka`; `None`: the API is off.
    pub(crate) prefix: Option<String>,
    /// Where Eureka apps live.
    pub(crate) namespace: Name,
    pub(crate) group: Name,
    /// How long a change stays in the delta.
    pub(crate) delta_retention: Duration,
    /// Most changes kept for the delta.
    pub(crate) max_delta_changes: usize,
}

impl EurekaSettings {
    /// Validates the `eureka_*` settings.
    pub(crate) fn from_args(a: &ServeArgs) -> Result<EurekaSettings, SettingsError> {
        let prefix = match a.eureka_prefix.as_deref().map(str::trim) {
            None => Some(PREFIX_DEFAULT.to_owned()),
            Some("off") => None,
            Some(p) => {
                let p = p.trim_end_matches('/');
                let ok = p.starts_with('/')
                    && p.len() > 1
                    && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
                    && !p.contains("//");
                if !ok {
                    return Err(SettingsError::new(
                        "eureka_prefix",
                        format!("{p:?} must be a path such as /eureka or /eureka/v2, or off"),
                    ));
                }
                Some(p.to_owned())
            }
        };
        let name = |key: &str, field: Field, v: Option<&str>, default: &str| {
            Name::parse(field, v.unwrap_or(default))
                .map_err(|e: InvalidInput| SettingsError::new(key, e.message))
        };
        let max_delta_changes = match a.eureka_max_delta_changes {
            Some(0) => return Err(SettingsError::new("eureka_max_delta_changes", "must be at least 1")),
            v => v.unwrap_or(DELTA_CHANGES_DEFAULT),
        };
        Ok(EurekaSettings {
            prefix,
            namespace: name(
                "eureka_namespace",
                Field::Namespace,
                a.eureka_namespace.as_deref(),
                DEFAULT_NAMESPACE,
            )?,
            group: name("eureka_group", Field::Group, a.eureka_group.as_deref(), DEFAULT_GROUP)?,
            delta_retention: a
                .eureka_delta_retention_ms
                .map_or(DELTA_RETENTION_DEFAULT, Duration::from_millis),
            max_delta_changes,
        })
    }
}

/// Whether `path` is under the Eureka prefix.
pub(crate) fn owns(s: &EurekaSettings, path: &str) -> bool {
    let Some(prefix) = s.prefix.as_deref() else { return false };
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A refused Eureka request, answered the way Eureka's server does: the
/// status with a short plain-text reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EurekaError {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl EurekaError {
    fn new(status: StatusCode, message: impl Into<String>) -> EurekaError {
        EurekaError { status, message: message.into(), allow: None }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> EurekaError {
        EurekaError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn bad_xml(message: impl Into<String>) -> EurekaError {
        EurekaError::bad_request(format!("the body is not well-formed XML: {}", message.into()))
    }

    pub(crate) fn invalid(e: InvalidInput) -> EurekaError {
        EurekaError::bad_request(e.to_string())
    }

    pub(crate) fn not_found(what: impl Into<String>) -> EurekaError {
        EurekaError::new(StatusCode::NOT_FOUND, what)
    }

    fn method_not_allowed(allow: &'static str) -> EurekaError {
        EurekaError {
            allow: Some(allow),
            ..EurekaError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow} on this path"))
        }
    }

    fn response(&self) -> Response<Body> {
        let mut resp = Response::new(Body::new(Bytes::from(self.message.clone())));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if let Some(allow) = self.allow {
            resp.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// The Filter's and driver's errors (tokens, body limit, readiness,
/// overload) keep their status and JSON body; core input errors are 400s.
impl From<ApiError> for EurekaError {
    fn from(e: ApiError) -> EurekaError {
        EurekaError { status: e.status, message: e.message, allow: None }
    }
}

/// Serves one Eureka request (the Filter logs it and sets its request id).
pub(crate) async fn handle(state: &Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    match routes::serve(state, req).await {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(prefix: Option<&str>) -> Result<EurekaSettings, SettingsError> {
        EurekaSettings::from_args(&ServeArgs {
            eureka_prefix: prefix.map(str::to_owned),
            ..ServeArgs::default()
        })
    }

    #[test]
    fn the_prefix_is_a_path_or_off_and_owns_only_its_subtree() {
        let s = settings(None).unwrap();
        assert!(owns(&s, "/eureka/apps") && owns(&s, "/eureka"));
        assert!(!owns(&s, "/eurekax/apps") && !owns(&s, "/v1/instances"));
        let v2 = settings(Some("/eureka/v2/")).unwrap();
        assert_eq!(v2.prefix.as_deref(), Some("/eureka/v2"));
        assert!(owns(&v2, "/eureka/v2/apps/X") && !owns(&v2, "/eureka/apps"));
        assert!(!owns(&settings(Some("off")).unwrap(), "/eureka/apps"));
        for bad in ["eureka", "/", "/a//b", "/a b", ""] {
            let e = settings(Some(bad)).unwrap_err();
            assert_eq!(e.key, "eureka_prefix", "{bad:?}");
        }
    }

    #[test]
    fn a_zero_delta_bound_or_a_bad_group_is_refused() {
        let a = ServeArgs { eureka_max_delta_changes: Some(0), ..ServeArgs::default() };
        assert_eq!(EurekaSettings::from_args(&a).unwrap_err().key, "eureka_max_delta_changes");
        let a = ServeArgs { eureka_group: Some("a b".to_owned()), ..ServeArgs::default() };
        assert_eq!(EurekaSettings::from_args(&a).unwrap_err().key, "eureka_group");
    }
}
