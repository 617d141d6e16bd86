//! The Consul routes: which request is which, and what each does with the
//! core and the published views.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use muster_core::model::{DEFAULT_GROUP, DEFAULT_NAMESPACE};
use muster_core::{
    BeatReply, Field, InstanceKey, InstanceView, Name, PeerState, RegisterRequest, Reply, Request,
    ServiceFilter, ServiceKey,
};
use serde::Serialize;
use serde_json::Value;

use super::wire::{self, HealthEntry, META_ID, META_STATUS, Registration, Service, Status};
use super::{
    Catalog, ConsulError, ReadQuery, catalog_read, ok_response, published, read_response, service_read,
};
use crate::api::AppState;
use crate::error::Body;
use crate::snapshot::Published;

/// A matched Consul route and its path parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Register,
    Deregister(String),
    Check(CheckOp, String),
    AgentServices,
    AgentChecks,
    AgentSelf,
    CatalogServices,
    CatalogService(String),
    CatalogNodes,
    HealthService(String),
    HealthChecks(String),
    Leader,
    Peers,
}

/// What a TTL check update asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckOp {
    Pass,
    Warn,
    Fail,
    /// `PUT /v1/agent/check/update/{id}` with a `Status` body.
    Update,
}

impl Route {
    /// Whether the route answers 503 until the node has loaded the registry.
    pub(crate) fn needs_ready(&self) -> bool {
        !matches!(self, Route::Leader | Route::Peers | Route::AgentSelf)
    }
}

/// Finds the route of a Consul request: 404 for an unknown path, 405 (with
/// `Allow`) for a known path and the wrong method, as Consul answers.
pub(crate) fn find(method: &Method, path: &str) -> Result<Route, ConsulError> {
    let param = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?;
        (!rest.is_empty()).then(|| crate::api::input::decode(rest).unwrap_or_else(|| rest.to_owned()))
    };
    let (route, allow) = if path == "/v1/agent/service/register" {
        (Route::Register, "PUT")
    } else if let Some(id) = param("/v1/agent/service/deregister/") {
        (Route::Deregister(id), "PUT")
    } else if let Some(id) = param("/v1/agent/check/pass/") {
        (Route::Check(CheckOp::Pass, id), "PUT")
    } else if let Some(id) = param("/v1/agent/check/warn/") {
        (Route::Check(CheckOp::Warn, id), "PUT")
    } else if let Some(id) = param("/v1/agent/check/fail/") {
        (Route::Check(CheckOp::Fail, id), "PUT")
    } else if let Some(id) = param("/v1/agent/check/update/") {
        (Route::Check(CheckOp::Update, id), "PUT")
    } else {
        let read = match path {
            "/v1/agent/services" => Route::AgentServices,
            "/v1/agent/checks" => Route::AgentChecks,
            "/v1/agent/self" => Route::AgentSelf,
            "/v1/catalog/services" => Route::CatalogServices,
            "/v1/catalog/nodes" => Route::CatalogNodes,
            "/v1/status/leader" => Route::Leader,
            "/v1/status/peers" => Route::Peers,
            _ => {
                if let Some(s) = param("/v1/catalog/service/") {
                    Route::CatalogService(s)
                } else if let Some(s) = param("/v1/health/service/") {
                    Route::HealthService(s)
                } else if let Some(s) = param("/v1/health/checks/") {
                    Route::HealthChecks(s)
                } else {
                    return Err(ConsulError::new(
                        StatusCode::NOT_FOUND,
                        format!("Muster serves no Consul endpoint {path}"),
                    ));
                }
            }
        };
        (read, "GET")
    };
    if method.as_str() == allow { Ok(route) } else { Err(ConsulError::method(method, allow)) }
}

/// Runs a matched, authorised request.
pub(crate) async fn dispatch(
    state: &Arc<AppState>,
    peer: SocketAddr,
    route: Route,
    q: &ReadQuery,
    body: &[u8],
) -> Result<Response<Body>, ConsulError> {
    q.check_dc()?;
    match route {
        Route::Register => register(state, peer, body).await,
        Route::Deregister(id) => deregister(state, &id).await,
        Route::Check(op, id) => check(state, op, &id, body).await,
        Route::AgentServices => catalog_read(state, Catalog::AgentServices, q).await,
        Route::AgentChecks => catalog_read(state, Catalog::AgentChecks, q).await,
        Route::AgentSelf => agent_self(state).await,
        Route::CatalogServices => catalog_read(state, Catalog::Services, q).await,
        Route::CatalogNodes => catalog_read(state, Catalog::Nodes, q).await,
        Route::CatalogService(name) => {
            let key = service_key(&name)?;
            let tags = q.all("tag");
            service_read(state, &key, q, |p| {
                let render = || {
                    let services = services(p);
                    let entries: Vec<_> =
                        services.iter().filter(|s| s.has_tags(&tags)).map(|s| s.catalog_entry()).collect();
                    Bytes::from(json(&entries))
                };
                if tags.is_empty() { p.consul[2].get_or_init(render).clone() } else { render() }
            })
            .await
        }
        Route::HealthService(name) => {
            let key = service_key(&name)?;
            let (tags, passing) = (q.all("tag"), q.flag("passing"));
            service_read(state, &key, q, |p| {
                let render = || {
                    let services = services(p);
                    let entries: Vec<_> = services
                        .iter()
                        .filter(|s| s.has_tags(&tags) && (!passing || s.passing()))
                        .map(|s| HealthEntry {
                            node: s.node(),
                            service: s.agent_service(),
                            checks: s.checks(),
                        })
                        .collect();
                    Bytes::from(json(&entries))
                };
                // The common answers are rendered once per view.
                if tags.is_empty() {
                    p.consul[usize::from(passing)].get_or_init(render).clone()
                } else {
                    render()
                }
            })
            .await
        }
        Route::HealthChecks(name) => {
            let key = service_key(&name)?;
            service_read(state, &key, q, |p| {
                let services = services(p);
                let checks: Vec<_> = services.iter().filter_map(Service::check).collect();
                Bytes::from(json(&checks))
            })
            .await
        }
        Route::Leader => {
            let leader = state.node_id.to_string();
            Ok(read_response(json(&leader), 1))
        }
        Route::Peers => {
            let status = state.driver.status().await?;
            let peers: Vec<String> = status
                .members
                .iter()
                .filter(|m| m.state != PeerState::Down)
                .map(|m| m.id.to_string())
                .collect();
            Ok(read_response(json(&peers), 1))
        }
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    // Serialising these plain values cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The Muster service of a Consul service name.
fn service_key(name: &str) -> Result<ServiceKey, ConsulError> {
    Ok(ServiceKey::parse(None, None, name)?)
}

fn services(p: &Published) -> Vec<Service<'_>> {
    p.view.instances.iter().map(|i| Service::of(&p.view.key, i)).collect()
}

// ---- registration -------------------------------------------------------

async fn register(
    state: &Arc<AppState>,
    peer: SocketAddr,
    body: &[u8],
) -> Result<Response<Body>, ConsulError> {
    let reg = Registration::parse(body)?;
    let service = service_key(&reg.name)?;
    // Without an address a service runs on its agent's host: here, the
    // host the registration came from.
    let ip = reg.address.clone().unwrap_or_else(|| peer.ip().to_string());
    let key = InstanceKey::parse(service, None, &ip, reg.port)?;
    // One ID names one service: a registration that moves it (another
    // address or port) removes the old instance. Only the ID map and the
    // service's own view are consulted: a registration never scans.
    if let Some(old) = moved_from(state, &reg.id, &key).await? {
        let _ = state.driver.request(Request::Deregister(old)).await;
    }
    let mut req = RegisterRequest {
        key: key.clone(),
        weight: reg.weight,
        enabled: None,
        healthy: Some(reg.initially_passing),
        ephemeral: Some(reg.ephemeral()),
        metadata: reg.metadata(),
        // A TTL check starts critical unless told otherwise, and its status
        // is the client's to report.
        health_reported: true,
    };
    if muster_core::lease::Lease::clamp_to_tombstone_ttl(&mut req.metadata, &state.settings.core.timings) {
        tracing::info!(
            id = %reg.id,
            "the check's DeregisterCriticalServiceAfter (or none) is longer than the tombstone TTL; the lease is cut to it"
        );
    }
    match state.driver.request(Request::Register(req)).await? {
        Reply::Registered(_) => {}
        other => return Err(unexpected(&other)),
    }
    let mut ids = IDS.lock().unwrap_or_else(PoisonError::into_inner);
    remember(&mut ids, state, format!("s:{}", reg.id), key.clone());
    let check_id = reg.check_id.clone().unwrap_or_else(|| format!("service:{}", reg.id));
    remember(&mut ids, state, format!("c:{check_id}"), key);
    Ok(ok_response())
}

async fn deregister(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ConsulError> {
    let Some((key, _)) = resolve(state, Lookup::Service(id)).await? else {
        return Err(ConsulError::new(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
        ));
    };
    match state.driver.request(Request::Deregister(key.clone())).await {
        Ok(_) => {}
        Err(e) if e.status == StatusCode::NOT_FOUND => {}
        Err(e) => return Err(e.into()),
    }
    IDS.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, k| *k != key);
    Ok(ok_response())
}

/// `pass`, `warn`, `fail` and `update` of a TTL check. A pass is a
/// heartbeat; a fail re-states the instance unhealthy (its next pass, a
/// heartbeat, lifts the mark, as the core does for every beat); a warning
/// is a heartbeat plus the `consul.status` metadata key.
async fn check(
    state: &Arc<AppState>,
    op: CheckOp,
    id: &str,
    body: &[u8],
) -> Result<Response<Body>, ConsulError> {
    let target = match op {
        CheckOp::Update => {
            let v: Value = serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
                .map_err(|e| ConsulError::bad(format!("Request decode failed: {e}")))?;
            let status = v
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("status")))
                .map(|(_, v)| v.as_str().unwrap_or("?").to_owned())
                .unwrap_or_default();
            Status::parse(&status)
                .ok_or_else(|| ConsulError::bad(format!("Invalid check status: {status:?}")))?
        }
        CheckOp::Pass => Status::Passing,
        CheckOp::Warn => Status::Warning,
        CheckOp::Fail => Status::Critical,
    };
    let Some((key, current)) = resolve(state, Lookup::Check(id)).await? else {
        return Err(ConsulError::new(
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."),
        ));
    };
    if !current.ephemeral {
        return Err(ConsulError::bad(format!("CheckID {id:?} does not have associated TTL")));
    }
    let warning = current.metadata.get(META_STATUS) == Some("warning");
    let restate = match target {
        Status::Passing if !warning => None,
        Status::Passing => Some((true, false)),
        Status::Warning if warning && current.healthy => None,
        Status::Warning => Some((true, true)),
        Status::Critical if !current.healthy && !warning => return Ok(ok_response()),
        Status::Critical => Some((false, false)),
    };
    let Some((healthy, warn)) = restate else {
        return match state.driver.request(Request::Heartbeat(key.clone())).await? {
            Reply::Beat(BeatReply::Ok { .. }) => Ok(ok_response()),
            Reply::Beat(BeatReply::Unknown) => {
                IDS.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, k| *k != key);
                Err(ConsulError::new(StatusCode::NOT_FOUND, format!("Unknown check ID {id:?}")))
            }
            other => Err(unexpected(&other)),
        };
    };
    let mut metadata = current.metadata.to_map();
    if warn {
        metadata.insert(META_STATUS.to_owned(), "warning".to_owned());
    } else {
        metadata.remove(META_STATUS);
    }
    let req = RegisterRequest {
        key,
        weight: Some(current.weight),
        enabled: Some(current.enabled),
        healthy: Some(healthy),
        ephemeral: Some(true),
        metadata,
        health_reported: true,
    };
    match state.driver.request(Request::Register(req)).await? {
        Reply::Registered(_) => Ok(ok_response()),
        other => Err(unexpected(&other)),
    }
}

/// The instance a re-registration of `id` at `key` moves away from, if any:
/// the one the ID map names, else one of the same service with that ID.
async fn moved_from(
    state: &Arc<AppState>,
    id: &str,
    key: &InstanceKey,
) -> Result<Option<InstanceKey>, ConsulError> {
    let hint = IDS.lock().unwrap_or_else(PoisonError::into_inner).get(&format!("s:{id}")).cloned();
    if let Some(old) = hint.filter(|old| old != key) {
        return Ok(Some(old));
    }
    let p = published(state, &key.service, false).await?;
    let found = p.view.instances.iter().find(|i| {
        i.metadata.get(META_ID) == Some(id)
            && !(i.port == key.port && i.ip == key.ip && i.cluster == key.cluster)
    });
    Ok(found.and_then(|i| {
        InstanceKey::parse(
            key.service.clone(),
            Some(i.cluster.as_str()),
            &i.ip.to_string(),
            i64::from(i.port),
        )
        .ok()
    }))
}

fn unexpected(reply: &Reply) -> ConsulError {
    ConsulError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected core reply {reply:?}"))
}

// ---- IDs ------------------------------------------------------------------

/// Consul service and check IDs (`s:` and `c:` prefixed) to the instance
/// they were last seen on. A hint only: every use checks the instance in the
/// current view, and a miss scans the Consul group once. Bounded by twice
/// `max_instances` entries (cleared when full). One node per process, so
/// one map per process.
static IDS: LazyLock<Mutex<HashMap<String, InstanceKey>>> = LazyLock::new(Mutex::default);

/// The last scan for an unknown ID.
static LAST_SCAN: Mutex<Option<std::time::Instant>> = Mutex::new(None);
/// Least time between two scans for unknown IDs.
const SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

fn remember(ids: &mut HashMap<String, InstanceKey>, state: &AppState, id: String, key: InstanceKey) {
    if ids.len() >= state.settings.core.limits.max_instances.saturating_mul(2) {
        ids.clear();
    }
    ids.insert(id, key);
}

#[derive(Clone, Copy, Debug)]
enum Lookup<'a> {
    Service(&'a str),
    Check(&'a str),
}

impl Lookup<'_> {
    fn cache_key(&self) -> String {
        match self {
            Lookup::Service(id) => format!("s:{id}"),
            Lookup::Check(id) => format!("c:{id}"),
        }
    }

    fn matches(&self, s: &Service<'_>) -> bool {
        match self {
            Lookup::Service(id) => s.id == *id,
            Lookup::Check(id) => s.check_id == *id,
        }
    }
}

/// The instance a Consul ID names, with its current view.
async fn resolve(
    state: &Arc<AppState>,
    lookup: Lookup<'_>,
) -> Result<Option<(InstanceKey, InstanceView)>, ConsulError> {
    let hint = IDS.lock().unwrap_or_else(PoisonError::into_inner).get(&lookup.cache_key()).cloned();
    if let Some(key) = hint {
        let p = published(state, &key.service, false).await?;
        let found = p
            .view
            .instances
            .iter()
            .find(|i| i.port == key.port && i.ip == key.ip && i.cluster == key.cluster);
        if let Some(i) = found.filter(|i| lookup.matches(&Service::of(&p.view.key, i))) {
            return Ok(Some((key, InstanceView::clone(i))));
        }
    }
    // A miss: scan every service of the Consul group, remembering each ID;
    // at most one scan per `SCAN_INTERVAL`, so unknown IDs cannot make a
    // node scan without pause.
    {
        let mut last = LAST_SCAN.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < SCAN_INTERVAL) {
            return Ok(None);
        }
        *last = Some(now);
    }
    let views = all_views(state).await?;
    let mut ids = IDS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut hit = None;
    for p in &views {
        for i in &p.view.instances {
            let s = Service::of(&p.view.key, i);
            let Ok(key) = InstanceKey::parse(
                p.view.key.clone(),
                Some(i.cluster.as_str()),
                &s.address,
                i64::from(i.port),
            ) else {
                continue;
            };
            if hit.is_none() && lookup.matches(&s) {
                hit = Some((key.clone(), InstanceView::clone(i)));
            }
            remember(&mut ids, state, format!("s:{}", s.id), key.clone());
            remember(&mut ids, state, format!("c:{}", s.check_id), key);
        }
    }
    Ok(hit)
}

/// The published views of every service with instances in the Consul
/// group, in name order (bounded by `max_services`).
async fn all_views(state: &Arc<AppState>) -> Result<Vec<Arc<Published>>, ConsulError> {
    let namespace = Name::parse(Field::Namespace, DEFAULT_NAMESPACE)?;
    let group = Name::parse(Field::Group, DEFAULT_GROUP)?;
    let page_size = state.settings.core.limits.max_page_size.max(1);
    let mut views = Vec::new();
    for page in 1.. {
        let filter = ServiceFilter {
            namespace: namespace.clone(),
            group: Some(group.clone()),
            search: None,
            page,
            page_size,
        };
        let Reply::Services(p) = state.driver.request(Request::ListServices(filter)).await? else {
            return Err(ConsulError::new(StatusCode::INTERNAL_SERVER_ERROR, "unexpected core reply"));
        };
        let last = p.services.len() < page_size || page * page_size >= p.total;
        for s in p.services.into_iter().filter(|s| s.instances > 0) {
            views.push(published(state, &s.key, false).await?);
        }
        if last {
            break;
        }
    }
    Ok(views)
}

/// The body of a catalog-wide answer.
pub(crate) async fn render_catalog(state: &Arc<AppState>, which: Catalog) -> Result<Vec<u8>, ConsulError> {
    let views = all_views(state).await?;
    let body = match which {
        Catalog::Services => {
            let mut out: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
            for p in &views {
                let tags = out.entry(p.view.key.service.as_str()).or_default();
                for s in services(p) {
                    tags.extend(s.tags);
                }
            }
            json(&out)
        }
        Catalog::Nodes => {
            let hosts: BTreeSet<String> =
                views.iter().flat_map(|p| p.view.instances.iter().map(|i| i.ip.to_string())).collect();
            let nodes: Vec<_> = hosts.iter().map(|h| wire::Node::of(h)).collect();
            json(&nodes)
        }
        Catalog::AgentServices => {
            let all: Vec<Vec<Service<'_>>> = views.iter().map(|p| services(p)).collect();
            let out: BTreeMap<&str, _> = all
                .iter()
                .flatten()
                .filter(|s| s.registered)
                .map(|s| (s.id.as_str(), s.agent_service()))
                .collect();
            json(&out)
        }
        Catalog::AgentChecks => {
            let all: Vec<Vec<Service<'_>>> = views.iter().map(|p| services(p)).collect();
            let out: BTreeMap<String, _> = all
                .iter()
                .flatten()
                .filter(|s| s.registered)
                .filter_map(|s| s.check().map(|c| (c.check_id.clone(), c)))
                .collect();
            json(&out)
        }
    };
    Ok(body)
}

async fn agent_self(state: &Arc<AppState>) -> Result<Response<Body>, ConsulError> {
    let id = state.node_id.to_string();
    let (addr, port) = id.rsplit_once(':').unwrap_or((id.as_str(), "8848"));
    let node = wire::Node::of(addr);
    let body = serde_json::json!({
        "Config": {
            "Datacenter": wire::DATACENTER,
            "PrimaryDatacenter": wire::DATACENTER,
            "NodeName": id,
            "NodeID": node.id,
            "Server": true,
            "Version": "1.18.0",
            "Revision": "muster",
        },
        "Member": {
            "Name": id,
            "Addr": addr,
            "Port": port.parse::<u16>().unwrap_or(0),
            "Tags": {"dc": wire::DATACENTER, "role": "consul", "build": "1.18.0:muster"},
            "Status": 1,
        },
        "Meta": {},
        "Stats": {},
    });
    Ok(read_response(json(&body), 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_consul_paths_and_refuse_wrong_methods_with_allow() {
        assert_eq!(find(&Method::PUT, "/v1/agent/service/register").unwrap(), Route::Register);
        assert_eq!(
            find(&Method::PUT, "/v1/agent/check/pass/service:web-1").unwrap(),
            Route::Check(CheckOp::Pass, "service:web-1".into())
        );
        assert_eq!(find(&Method::GET, "/v1/health/service/web").unwrap(), Route::HealthService("web".into()));
        let e = find(&Method::GET, "/v1/agent/service/register").unwrap_err();
        assert_eq!((e.status, e.allow), (StatusCode::METHOD_NOT_ALLOWED, Some("PUT")));
        assert_eq!(find(&Method::GET, "/v1/kv/x").unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(find(&Method::GET, "/v1/health/service/").unwrap_err().status, StatusCode::NOT_FOUND);
    }
}
