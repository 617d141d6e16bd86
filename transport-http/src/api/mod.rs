//! The Handler: routes of the OpenAPI (clients), the peer API and the
//! operational endpoints.
//!
//! [`ROUTES`] is the one table of what the node serves: method, path, who
//! may call it, and the query parameters and body fields it accepts. The
//! router, the parsers (which refuse anything not listed), the metrics labels
//! and the test that keeps `docs/openapi.yaml` equal to the code all read it.

mod cluster;
mod fast;
mod health;
pub(crate) mod input;
mod instances;
#[cfg(test)]
mod openapi;
mod services;

pub(crate) use self::input::{Query, parse_duration};
pub(crate) use self::instances::{
    STREAM_TYPE, Subscription, WatchGuard, answer_bytes, published, query_params,
};

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, Response};
use muster_core::NodeId;
use tokio::sync::watch;

use crate::config::Settings;
use crate::console::{self, Op};
use crate::driver::DriverHandle;
use crate::error::{ApiError, Body};
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::snapshot::Snapshots;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone (health checks).
    Open,
    /// The read token, if one is configured.
    Read,
    /// The write token, if one is configured.
    Write,
    /// The cluster secret, always.
    Peer,
}

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handler {
    RegisterInstance,
    BeatInstances,
    UpdateInstance,
    DeregisterInstance,
    QueryInstances,
    ListServices,
    GetService,
    PutService,
    DeleteService,
    Namespaces,
    ClusterNodes,
    Live,
    Ready,
    Metrics,
    PeerMessages,
    /// A ConsoleAPI operation (`/console/api/...`, see `crate::console`).
    Console(crate::console::Op),
}

/// One route.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    pub(crate) method: &'static str,
    /// The path; a `{name}` segment matches one non-empty segment.
    pub(crate) path: &'static str,
    /// Label in metrics and logs.
    pub(crate) name: &'static str,
    pub(crate) handler: Handler,
    pub(crate) access: Access,
    /// Whether the route answers 503 until the node has loaded the registry.
    pub(crate) needs_ready: bool,
    /// Accepted query parameters.
    pub(crate) query: &'static [&'static str],
    /// Accepted top-level JSON body fields; empty for routes without a JSON body.
    pub(crate) body: &'static [&'static str],
}

const SERVICE_Q: &[&str] = &["namespace", "group"];
const KEY_Q: &[&str] = &["namespace", "group", "service", "cluster", "ip", "port"];
const REGISTER_BODY: &[&str] = &[
    "namespace",
    "group",
    "service",
    "cluster",
    "ip",
    "port",
    "weight",
    "enabled",
    "healthy",
    "ephemeral",
    "metadata",
];
/// The fields of an instance key in a JSON body.
pub(crate) const KEY_BODY: &[&str] = KEY_Q;
const BEAT_BODY: &[&str] = &["namespace", "group", "service", "cluster", "ip", "port", "beats"];
const UPDATE_BODY: &[&str] =
    &["namespace", "group", "service", "cluster", "ip", "port", "weight", "enabled", "healthy", "metadata"];
const QUERY_Q: &[&str] =
    &["namespace", "group", "service", "clusters", "healthy_only", "checksum", "wait", "stream"];
const LIST_Q: &[&str] = &["namespace", "group", "search", "page", "page_size"];
const SERVICE_BODY: &[&str] = &["protect_threshold", "metadata"];
/// The ordering token of an instance write (see `instances::after`).
const AFTER_Q: &[&str] = &["after"];
const DEREGISTER_Q: &[&str] = &["namespace", "group", "service", "cluster", "ip", "port", "after"];

#[allow(clippy::too_many_arguments)]
const fn route(
    method: &'static str,
    path: &'static str,
    name: &'static str,
    handler: Handler,
    access: Access,
    needs_ready: bool,
    query: &'static [&'static str],
    body: &'static [&'static str],
) -> Route {
    Route { method, path, name, handler, access, needs_ready, query, body }
}

/// Every route the node serves.
pub(crate) const ROUTES: [Route; 22] = [
    route(
        "POST",
        "/v1/instances",
        "register_instance",
        Handler::RegisterInstance,
        Access::Write,
        true,
        AFTER_Q,
        REGISTER_BODY,
    ),
    route(
        "PUT",
        "/v1/instances/beat",
        "beat_instances",
        Handler::BeatInstances,
        Access::Write,
        true,
        &[],
        BEAT_BODY,
    ),
    route(
        "PATCH",
        "/v1/instances",
        "update_instance",
        Handler::UpdateInstance,
        Access::Write,
        true,
        AFTER_Q,
        UPDATE_BODY,
    ),
    route(
        "DELETE",
        "/v1/instances",
        "deregister_instance",
        Handler::DeregisterInstance,
        Access::Write,
        true,
        DEREGISTER_Q,
        &[],
    ),
    route(
        "GET",
        "/v1/instances",
        "query_instances",
        Handler::QueryInstances,
        Access::Read,
        true,
        QUERY_Q,
        &[],
    ),
    route("GET", "/v1/services", "list_services", Handler::ListServices, Access::Read, true, LIST_Q, &[]),
    route(
        "GET",
        "/v1/services/{service}",
        "get_service",
        Handler::GetService,
        Access::Read,
        true,
        SERVICE_Q,
        &[],
    ),
    route(
        "PUT",
        "/v1/services/{service}",
        "put_service",
        Handler::PutService,
        Access::Write,
        true,
        SERVICE_Q,
        SERVICE_BODY,
    ),
    route(
        "DELETE",
        "/v1/services/{service}",
        "delete_service",
        Handler::DeleteService,
        Access::Write,
        true,
        SERVICE_Q,
        &[],
    ),
    route("GET", "/v1/namespaces", "namespaces", Handler::Namespaces, Access::Read, true, &[], &[]),
    route("GET", "/v1/cluster/nodes", "cluster_nodes", Handler::ClusterNodes, Access::Read, false, &[], &[]),
    route("GET", "/health/live", "health_live", Handler::Live, Access::Open, false, &[], &[]),
    route("GET", "/health/ready", "health_ready", Handler::Ready, Access::Open, false, &[], &[]),
    route("GET", "/metrics", "metrics", Handler::Metrics, Access::Read, false, &[], &[]),
    route(
        "POST",
        "/cluster/v1/messages",
        "peer_messages",
        Handler::PeerMessages,
        Access::Peer,
        false,
        &[],
        &[],
    ),
    // The ConsoleAPI (console-only; the console also uses the routes above).
    route(
        "GET",
        "/console/api/session",
        "console_session",
        Handler::Console(Op::Session),
        Access::Read,
        false,
        &[],
        &[],
    ),
    route(
        "POST",
        "/console/api/session",
        "console_check_write",
        Handler::Console(Op::CheckWrite),
        Access::Write,
        false,
        &[],
        &[],
    ),
    route(
        "GET",
        "/console/api/instances",
        "console_instances",
        Handler::Console(Op::Instances),
        Access::Read,
        true,
        console::INSTANCES_Q,
        &[],
    ),
    route(
        "GET",
        "/console/api/find",
        "console_find",
        Handler::Console(Op::Find),
        Access::Read,
        true,
        console::FIND_Q,
        &[],
    ),
    route(
        "GET",
        "/console/api/history",
        "console_history",
        Handler::Console(Op::History),
        Access::Read,
        false,
        console::HISTORY_Q,
        &[],
    ),
    route(
        "GET",
        "/console/api/cluster",
        "console_cluster",
        Handler::Console(Op::Cluster),
        Access::Read,
        false,
        &[],
        &[],
    ),
    route(
        "GET",
        "/console/api/changes",
        "console_changes",
        Handler::Console(Op::Changes),
        Access::Read,
        false,
        console::CHANGES_Q,
        &[],
    ),
];

/// A matched route: its index in [`ROUTES`] and the `{service}` segment.
#[derive(Clone, Debug)]
pub(crate) struct Matched {
    pub(crate) index: usize,
    pub(crate) route: &'static Route,
    pub(crate) param: Option<String>,
}

/// Finds the route of a request, or the 404 / 405 error.
pub(crate) fn find(method: &Method, path: &str) -> Result<Matched, ApiError> {
    for (index, route) in ROUTES.iter().enumerate() {
        if route.method != method.as_str() {
            continue;
        }
        if let Some(param) = match_path(route.path, path) {
            return Ok(Matched { index, route, param });
        }
    }
    // The error path: which methods the path has, if any.
    let allowed: Vec<&str> =
        ROUTES.iter().filter(|r| match_path(r.path, path).is_some()).map(|r| r.method).collect();
    if allowed.is_empty() {
        Err(ApiError::not_found(path))
    } else {
        Err(ApiError::method_not_allowed(method.as_str(), allowed.join(", ")))
    }
}

/// Matches a path against a template; `Some(param)` on a match.
fn match_path(template: &str, path: &str) -> Option<Option<String>> {
    if !template.contains('{') {
        return (template == path).then_some(None);
    }
    let mut param = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(param),
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return None;
                }
                param = Some(ps.to_owned());
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Everything handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) node_id: NodeId,
    pub(crate) settings: Settings,
    pub(crate) driver: DriverHandle,
    pub(crate) snapshots: Arc<Snapshots>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) peers: Arc<Peers>,
    /// Turns true when the node shuts down (wakes long polls).
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Nonces of signed peer requests already accepted (refuses replays).
    pub(crate) peer_verifier: crate::peer_auth::Verifier,
    /// The Nacos adapter's state (push subscribers, rendered listings).
    pub(crate) nacos: crate::compat::nacos::Nacos,
    /// The Eureka adapter's change history and rendered answers.
    pub(crate) eureka: crate::compat::eureka::Eureka,
    /// The console's history and change signal.
    pub(crate) console: Arc<console::Console>,
}

/// Runs the handler of a matched, authorised request; `peer` is the sender
/// of a verified peer request.
pub(crate) async fn dispatch(
    state: &Arc<AppState>,
    m: &Matched,
    query: Option<&str>,
    body: Bytes,
    peer: Option<&NodeId>,
) -> Result<Response<Body>, ApiError> {
    if m.route.needs_ready && !state.snapshots.is_ready() {
        return Err(ApiError::not_ready());
    }
    // Every route refuses unknown query parameters alike, also those that take none.
    let parsed = input::Query::parse(query, m.route.query)?;
    let q = || Ok::<_, ApiError>(parsed.clone());
    let service = m.param.as_deref().unwrap_or_default();
    match m.route.handler {
        Handler::RegisterInstance => instances::register(state, &q()?, m.route.body, &body).await,
        Handler::BeatInstances => instances::beat(state, m.route.body, &body).await,
        Handler::UpdateInstance => instances::update(state, &q()?, m.route.body, &body).await,
        Handler::DeregisterInstance => instances::deregister(state, &q()?).await,
        Handler::QueryInstances => instances::query(state, &q()?).await,
        Handler::ListServices => services::list(state, &q()?).await,
        Handler::GetService => services::get(state, service, &q()?).await,
        Handler::PutService => services::put(state, service, &q()?, m.route.body, &body).await,
        Handler::DeleteService => services::delete(state, service, &q()?).await,
        Handler::Namespaces => services::namespaces(state).await,
        Handler::ClusterNodes => cluster::nodes(state).await,
        Handler::Live => Ok(health::live()),
        Handler::Ready => Ok(health::ready(state)),
        Handler::Metrics => health::metrics(state).await,
        Handler::PeerMessages => match peer {
            Some(from) => cluster::messages(state, &body, from),
            None => Err(ApiError::unauthorized("this node has no cluster secret; its peer API is closed")),
        },
        Handler::Console(op) => console::dispatch(state, op, &q()?).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_path_then_method() {
        let m = find(&Method::GET, "/v1/services/orders").unwrap();
        assert_eq!(m.route.handler, Handler::GetService);
        assert_eq!(m.param.as_deref(), Some("orders"));
        let err = find(&Method::POST, "/v1/services/orders").unwrap_err();
        assert_eq!(err.status, hyper::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(err.allow.as_deref(), Some("GET, PUT, DELETE"));
        assert_eq!(find(&Method::GET, "/v1/nothing").unwrap_err().status, hyper::StatusCode::NOT_FOUND);
        assert!(find(&Method::GET, "/v1/services/").is_err());
        assert!(find(&Method::GET, "/v1/services/a/b").is_err());
        assert!(find(&Method::GET, "/v1/instances/").is_err());
    }

    #[test]
    fn every_route_has_a_unique_method_and_path_and_name() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in ROUTES.iter().skip(i + 1) {
                assert!((a.method, a.path) != (b.method, b.path), "{} {}", a.method, a.path);
                assert_ne!(a.name, b.name);
            }
        }
    }
}
