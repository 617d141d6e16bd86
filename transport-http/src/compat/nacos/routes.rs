//! The routes of the Nacos v1 naming API and `auth/login`.
//!
//! Each route reads Nacos parameters, makes one core request (or reads a
//! published snapshot) and answers in Nacos's shape: `ok` for writes, JSON
//! for reads, `caused: <message>;` with the real server's status for errors.
//! Bad input changes nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use muster_core::{
    BeatReply, Field, Host, InstanceKey, Name, PeerState, RegisterRequest, Reply, Request as CoreRequest,
    Selector, ServiceFilter, ServiceKey, ServiceUpdate, UpdateRequest,
};

use super::wire::{self, BeatAnswer};
use super::{
    CACHE_MILLIS, NacosError, PUSH_CACHE_MILLIS, Params, grouped, host, json, parse_int, render_list,
    scalar_text, text,
};
use crate::api::{AppState, published};
use crate::error::Body;

/// Beat answer code: the beat was taken.
const CODE_OK: u32 = 10_200;
/// Beat answer code: the instance is unknown; the client registers again.
const CODE_NOT_FOUND: u32 = 20_404;
/// Seconds a login token is good for, as Nacos's default (tokens here do not expire).
const TOKEN_TTL_S: u64 = 18_000;

/// What a Nacos route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Register,
    Deregister,
    UpdateInstance,
    PatchInstance,
    GetInstance,
    ListInstances,
    Beat,
    CreateService,
    DeleteService,
    UpdateService,
    GetService,
    ListServices,
    OperatorMetrics,
    OperatorServers,
    CatalogServices,
    CatalogInstances,
    Login,
}

/// The Nacos routes: method, path after `/nacos/v1/`, route.
const ROUTES: &[(&str, &str, Route)] = &[
    ("POST", "ns/instance", Route::Register),
    ("DELETE", "ns/instance", Route::Deregister),
    ("PUT", "ns/instance", Route::UpdateInstance),
    ("PATCH", "ns/instance", Route::PatchInstance),
    ("GET", "ns/instance", Route::GetInstance),
    ("GET", "ns/instance/list", Route::ListInstances),
    ("PUT", "ns/instance/beat", Route::Beat),
    ("POST", "ns/service", Route::CreateService),
    ("DELETE", "ns/service", Route::DeleteService),
    ("PUT", "ns/service", Route::UpdateService),
    ("GET", "ns/service", Route::GetService),
    ("GET", "ns/service/list", Route::ListServices),
    ("GET", "ns/operator/metrics", Route::OperatorMetrics),
    ("GET", "ns/operator/servers", Route::OperatorServers),
    ("GET", "ns/catalog/services", Route::CatalogServices),
    ("GET", "ns/catalog/instances", Route::CatalogInstances),
    ("POST", "auth/login", Route::Login),
    ("POST", "auth/users/login", Route::Login),
];

impl Route {
    fn writes(self) -> bool {
        matches!(
            self,
            Route::Register
                | Route::Deregister
                | Route::UpdateInstance
                | Route::PatchInstance
                | Route::Beat
                | Route::CreateService
                | Route::DeleteService
                | Route::UpdateService
        )
    }
}

/// Serves one Nacos request (the Filter logs it).
pub(crate) async fn handle(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let resp = match serve(state, peer, req).await {
        Ok(resp) => resp,
        Err(e) => e.response(),
    };
    state.nacos.count(resp.status());
    resp
}

fn find(method: &Method, path: &str) -> Result<Route, NacosError> {
    let rest = path.strip_prefix("/nacos/v1/").unwrap_or_default().trim_end_matches('/');
    let mut known_path = false;
    for (m, p, route) in ROUTES {
        if *p == rest {
            if *m == method.as_str() {
                return Ok(*route);
            }
            known_path = true;
        }
    }
    if known_path {
        Err(NacosError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Request method '{method}' not supported"),
        ))
    } else {
        Err(NacosError::new(StatusCode::NOT_FOUND, format!("no such api: {path}")))
    }
}

async fn serve(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, NacosError> {
    let route = find(req.method(), req.uri().path())?;
    let query = req.uri().query().unwrap_or_default().to_owned();
    let token = header_token(req.headers());
    let form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    let body = if form { crate::filter::read_client_body(state, req).await? } else { Bytes::new() };
    let body = std::str::from_utf8(&body).map_err(|_| NacosError::bad("the form body is not UTF-8"))?;
    let p = Params::parse(&[&query, body])?;
    if route == Route::Login {
        return login(state, &p);
    }
    authorize(state, route.writes(), p.get("accessToken").map(str::as_bytes).or(token.as_deref()))?;
    if !state.snapshots.is_ready() && !matches!(route, Route::OperatorServers) {
        return Err(NacosError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server is starting and has not loaded the registry yet, please try again later!",
        ));
    }
    match route {
        Route::Register => register(state, &p).await,
        Route::Deregister => deregister(state, &p).await,
        Route::UpdateInstance => update(state, &p, false).await,
        Route::PatchInstance => update(state, &p, true).await,
        Route::GetInstance => get_instance(state, &p).await,
        Route::ListInstances => list(state, &p, peer).await,
        Route::Beat => beat(state, &p).await,
        Route::CreateService => create_service(state, &p).await,
        Route::DeleteService => delete_service(state, &p).await,
        Route::UpdateService => update_service(state, &p).await,
        Route::GetService => get_service(state, &p).await,
        Route::ListServices => list_services(state, &p).await,
        Route::OperatorMetrics => operator_metrics(state).await,
        Route::OperatorServers => operator_servers(state).await,
        Route::CatalogServices => catalog_services(state, &p).await,
        Route::CatalogInstances => catalog_instances(state, &p).await,
        Route::Login => login(state, &p),
    }
}

/// A token in the `accessToken` header or `Authorization: Bearer`.
fn header_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    if let Some(v) = headers.get("accesstoken") {
        return Some(v.as_bytes().to_vec());
    }
    let v = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.to_vec())
}

/// The node's tokens, as Nacos answers a missing or wrong one (403).
fn authorize(state: &AppState, write: bool, token: Option<&[u8]>) -> Result<(), NacosError> {
    let s = &state.settings;
    let holds = |secret: &Option<crate::config::Secret>| match (secret, token) {
        (Some(secret), Some(token)) => secret.matches(token),
        _ => false,
    };
    let ok = if write {
        s.write_token.is_none() || holds(&s.write_token)
    } else {
        s.read_token.is_none() || holds(&s.read_token) || holds(&s.write_token)
    };
    match (ok, token) {
        (true, _) => Ok(()),
        (false, None) => {
            Err(NacosError::new(StatusCode::FORBIDDEN, "user not found! log in first (auth/login)"))
        }
        (false, Some(_)) => Err(NacosError::new(StatusCode::FORBIDDEN, "token invalid!")),
    }
}

/// `POST /nacos/v1/auth/login`: the password is one of the node's token
/// files' contents, and the token handed back is that token (any username).
fn login(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let s = &state.settings;
    let password = p.get("password").unwrap_or_default().as_bytes();
    let token = match (&s.write_token, &s.read_token) {
        (None, _) => "",
        (Some(w), _) if w.matches(password) => w.as_str(),
        (_, Some(r)) if r.matches(password) => r.as_str(),
        _ => return Err(NacosError::new(StatusCode::FORBIDDEN, "unknown user!")),
    };
    p.required("username")?;
    let body =
        wire::Login { access_token: token, token_ttl: TOKEN_TTL_S, global_admin: s.write_token.is_none() };
    Ok(json(Bytes::from(serde_json::to_vec(&body).unwrap_or_default())))
}

fn ok() -> Response<Body> {
    text(StatusCode::OK, Bytes::from_static(b"ok"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Response<Body> {
    json(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
}

fn unexpected(reply: &Reply) -> NacosError {
    NacosError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected core reply {reply:?}"))
}

/// The cluster of an instance: `clusterName`, else `cluster`, else `DEFAULT`.
fn cluster_param(p: &Params) -> Option<&str> {
    p.opt("clusterName").or_else(|| p.opt("cluster"))
}

/// The instance named by `serviceName`, `ip`, `port` and the cluster.
fn instance_key(p: &Params) -> Result<InstanceKey, NacosError> {
    let service = p.service_key()?;
    let ip = p.required("ip")?;
    let port = parse_int(p.required("port")?)?;
    Ok(InstanceKey::parse(service, cluster_param(p), ip, port)?)
}

/// `enabled`, else the older `enable`.
fn enabled(p: &Params) -> Result<Option<bool>, NacosError> {
    match p.bool("enabled")? {
        Some(b) => Ok(Some(b)),
        None => p.bool("enable"),
    }
}

/// `POST /nacos/v1/ns/instance`
async fn register(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let req = RegisterRequest {
        key: instance_key(p)?,
        weight: p.num("weight")?,
        enabled: enabled(p)?,
        healthy: p.bool("healthy")?,
        ephemeral: p.bool("ephemeral")?,
        metadata: p.metadata()?.unwrap_or_default(),
        // Nacos takes a registration's `healthy` as given, ephemeral or not.
        health_reported: true,
    };
    match state.driver.request(CoreRequest::Register(req)).await? {
        Reply::Registered(_) => Ok(ok()),
        other => Err(unexpected(&other)),
    }
}

/// `DELETE /nacos/v1/ns/instance`: `ok` also when there was nothing to remove.
async fn deregister(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let key = instance_key(p)?;
    match state.driver.request(CoreRequest::Deregister(key)).await {
        Ok(Reply::Done) => Ok(ok()),
        Ok(other) => Err(unexpected(&other)),
        Err(e) if matches!(e.code, "instance_not_found" | "service_not_found") => Ok(ok()),
        Err(e) => Err(e.into()),
    }
}

/// `PUT /nacos/v1/ns/instance` replaces the instance's weight, enabled flag
/// and metadata (defaults for those not given); `PATCH` changes only those given.
async fn update(state: &AppState, p: &Params, patch: bool) -> Result<Response<Body>, NacosError> {
    let key = instance_key(p)?;
    let mut upd = UpdateRequest {
        weight: p.num("weight")?,
        enabled: enabled(p)?,
        healthy: None,
        metadata: p.metadata()?,
    };
    if !patch {
        upd.weight = upd.weight.or(Some(1.0));
        upd.enabled = upd.enabled.or(Some(true));
        upd.metadata = upd.metadata.or_else(|| Some(Default::default()));
    }
    let id = format!("{}#{}#{}#{}", key.ip, key.port, key.cluster.as_str(), grouped(&key.service));
    match state.driver.request(CoreRequest::Update(key, upd)).await {
        Ok(Reply::Done) => Ok(ok()),
        Ok(other) => Err(unexpected(&other)),
        Err(e) if matches!(e.code, "instance_not_found" | "service_not_found") => {
            Err(NacosError::bad(format!("instance not exist: {id}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /nacos/v1/ns/instance`
async fn get_instance(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let service = p.service_key()?;
    let ip = Host::parse(p.required("ip")?)?;
    let port = parse_int(p.required("port")?)?;
    let cluster = Name::parse(Field::Cluster, cluster_param(p).unwrap_or("DEFAULT"))?;
    let name = grouped(&service);
    let published = published(state, &service, false).await?;
    let view = &published.view;
    if !view.known && view.instances.is_empty() {
        return Err(NacosError::new(StatusCode::NOT_FOUND, format!("no service {name} found!")));
    }
    let found =
        view.instances.iter().find(|i| i.cluster == cluster && i.ip == ip && i64::from(i.port) == port);
    let Some(i) = found else {
        return Err(NacosError::new(StatusCode::NOT_FOUND, "no matched ip found!"));
    };
    Ok(to_json(&wire::InstanceDetail {
        service: &name,
        ip: i.ip.to_string(),
        port: i.port,
        cluster_name: i.cluster.as_str(),
        weight: i.weight,
        healthy: i.healthy,
        enabled: i.enabled,
        ephemeral: i.ephemeral,
        instance_id: format!("{}#{}#{}#{name}", i.ip, i.port, i.cluster.as_str()),
        metadata: i.metadata.iter().collect(),
    }))
}

/// `GET /nacos/v1/ns/instance/list`; with `udpPort` (and `clientIP`) the
/// client also subscribes to UDP pushes of the service's changes.
async fn list(state: &AppState, p: &Params, peer: SocketAddr) -> Result<Response<Body>, NacosError> {
    let key = p.service_key()?;
    let clusters_raw = p.get("clusters").unwrap_or_default();
    let mut clusters = Vec::new();
    for c in clusters_raw.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        clusters.push(Name::parse(Field::Cluster, c)?);
    }
    let healthy_only = p.bool("healthyOnly")?.unwrap_or(false);
    let udp_port = p.int("udpPort")?.unwrap_or(0);
    if !(0..=65_535).contains(&udp_port) {
        return Err(NacosError::bad(format!("port out of range:{udp_port}")));
    }
    let client_ip = match p.opt("clientIP") {
        Some(ip) => Some(
            ip.trim()
                .parse::<IpAddr>()
                .map_err(|_| NacosError::bad(format!("clientIP must be an IP address, got \"{ip}\"")))?,
        ),
        None => None,
    };
    let published = published(state, &key, false).await?;
    let mut subscribed = false;
    if let (Some(push), Ok(port @ 1..)) = (&state.nacos.push, u16::try_from(udp_port)) {
        let addr = SocketAddr::new(client_ip.unwrap_or(peer.ip()), port);
        let served = published.view.select(&Selector::default()).checksum();
        subscribed = push.subscribe(&key, addr, clusters_raw, &clusters, served);
    }
    let cache_millis = if subscribed { PUSH_CACHE_MILLIS } else { CACHE_MILLIS };
    let answer = published.view.select(&Selector { clusters, healthy_only });
    let timings = &state.settings.core.timings;
    if !clusters_raw.is_empty() {
        return Ok(json(render_list(&answer, clusters_raw, cache_millis, timings)));
    }
    let cache_key = (key, healthy_only, subscribed);
    if let Some(body) = state.nacos.cached(&cache_key, answer.checksum()) {
        return Ok(json(body));
    }
    let body = render_list(&answer, "", cache_millis, timings);
    state.nacos.remember(cache_key, answer.checksum(), body.clone());
    Ok(json(body))
}

fn beat_answer(interval_ms: u64, code: u32) -> Response<Body> {
    to_json(&BeatAnswer { client_beat_interval: interval_ms, code, light_beat_enabled: true })
}

/// `PUT /nacos/v1/ns/instance/beat`: a beat of a known instance answers
/// 10200; of an unknown one, 20404 unless the beat carries the instance
/// (`beat=` JSON), which registers it again.
async fn beat(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let service = p.service_key()?;
    let default_ms = super::ms(state.settings.core.timings.heartbeat_interval);
    let info: Option<wire::BeatInfo> = match p.opt("beat") {
        Some(raw) => Some(
            serde_json::from_str(raw)
                .map_err(|e| NacosError::bad(format!("Param 'beat' is not a valid beat: {e}")))?,
        ),
        None => None,
    };
    let Some(info) = info else {
        // A light beat: ip, port and cluster are parameters; a beat for an
        // instance that cannot exist is an unknown instance, as in Nacos.
        let key = match (p.opt("ip"), p.opt("port").map(parse_int)) {
            (Some(ip), Some(Ok(port))) => InstanceKey::parse(service, cluster_param(p), ip, port).ok(),
            _ => None,
        };
        let Some(key) = key else { return Ok(beat_answer(default_ms, CODE_NOT_FOUND)) };
        return match state.driver.request(CoreRequest::Heartbeat(key)).await? {
            Reply::Beat(BeatReply::Ok { heartbeat_interval }) => {
                Ok(beat_answer(super::ms(heartbeat_interval), CODE_OK))
            }
            Reply::Beat(BeatReply::Unknown) => Ok(beat_answer(default_ms, CODE_NOT_FOUND)),
            other => Err(unexpected(&other)),
        };
    };
    let cluster = info.cluster.as_deref().filter(|c| !c.trim().is_empty()).or(cluster_param(p));
    let ip = info.ip.as_deref().ok_or_else(|| NacosError::bad("Param 'beat' has no ip"))?;
    let port = info.port.ok_or_else(|| NacosError::bad("Param 'beat' has no port"))?;
    let key = InstanceKey::parse(service, cluster, ip, port)?;
    let mut metadata = std::collections::BTreeMap::new();
    for (k, v) in info.metadata.unwrap_or_default() {
        let v = scalar_text(v).ok_or_else(|| NacosError::bad(format!("metadata format incorrect:{k}")))?;
        metadata.insert(k, v);
    }
    match state.driver.request(CoreRequest::Heartbeat(key.clone())).await? {
        Reply::Beat(BeatReply::Ok { heartbeat_interval }) => {
            Ok(beat_answer(super::ms(heartbeat_interval), CODE_OK))
        }
        Reply::Beat(BeatReply::Unknown) => {
            let req = RegisterRequest {
                key,
                weight: info.weight,
                enabled: None,
                healthy: None,
                ephemeral: info.ephemeral,
                metadata,
                health_reported: false,
            };
            match state.driver.request(CoreRequest::Register(req)).await? {
                Reply::Registered(r) => Ok(beat_answer(super::ms(r.heartbeat_interval), CODE_OK)),
                other => Err(unexpected(&other)),
            }
        }
        other => Err(unexpected(&other)),
    }
}

fn service_update(p: &Params) -> Result<ServiceUpdate, NacosError> {
    Ok(ServiceUpdate { protect_threshold: p.num("protectThreshold")?, metadata: p.metadata()? })
}

/// `POST /nacos/v1/ns/service`
async fn create_service(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let key = p.service_key()?;
    let mut upd = service_update(p)?;
    upd.protect_threshold = upd.protect_threshold.or(Some(0.0));
    let name = grouped(&key);
    match state.driver.request(CoreRequest::CreateService(key, upd)).await {
        Ok(Reply::Service(_)) => Ok(ok()),
        Ok(other) => Err(unexpected(&other)),
        Err(e) if e.code == "service_exists" => {
            Err(NacosError::bad(format!("specified service already exists, serviceName : {name}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /nacos/v1/ns/service`
async fn delete_service(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let key = p.service_key()?;
    let name = grouped(&key);
    match state.driver.request(CoreRequest::DeleteService(key)).await {
        Ok(Reply::Done) => Ok(ok()),
        Ok(other) => Err(unexpected(&other)),
        Err(e) if e.code == "service_not_found" => {
            Err(NacosError::bad(format!("specified service not exist, serviceName : {name}")))
        }
        Err(e) if e.code == "service_not_empty" => {
            Err(NacosError::bad(format!("specified service has instances, serviceName : {name}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `PUT /nacos/v1/ns/service`
async fn update_service(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let key = p.service_key()?;
    let upd = service_update(p)?;
    let name = grouped(&key);
    match state.driver.request(CoreRequest::UpdateService(key, upd)).await {
        Ok(Reply::Service(_)) => Ok(ok()),
        Ok(other) => Err(unexpected(&other)),
        Err(e) if e.code == "service_not_found" => Err(NacosError::bad(format!("service {name} not found!"))),
        Err(e) => Err(e.into()),
    }
}

/// The distinct clusters of a service, from the core (no view is published).
async fn clusters_of(
    state: &AppState,
    key: &ServiceKey,
) -> Result<(BTreeSet<String>, usize, usize), NacosError> {
    match state.driver.request(CoreRequest::Query(key.clone(), Selector::default())).await? {
        Reply::Answer(a) => {
            let clusters = a.instances().map(|i| i.cluster.as_str().to_owned()).collect();
            let healthy = a.instances().filter(|i| i.healthy).count();
            Ok((clusters, a.len(), healthy))
        }
        other => Err(unexpected(&other)),
    }
}

/// `GET /nacos/v1/ns/service`
async fn get_service(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let key = p.service_key()?;
    let name = grouped(&key);
    let summary = match state.driver.request(CoreRequest::GetService(key.clone())).await {
        Ok(Reply::Service(s)) => s,
        Ok(other) => return Err(unexpected(&other)),
        Err(e) if e.code == "service_not_found" => {
            return Err(NacosError::bad(format!("service {name} is not found!")));
        }
        Err(e) => return Err(e.into()),
    };
    let (clusters, _, _) = clusters_of(state, &key).await?;
    let detail = wire::ServiceDetail {
        namespace_id: key.namespace.as_str(),
        group_name: key.group.as_str(),
        name: key.service.as_str(),
        protect_threshold: summary.protect_threshold,
        metadata: summary.metadata.iter().collect(),
        selector: wire::Selector { kind: "none" },
        clusters: clusters
            .iter()
            .map(|c| wire::ClusterDetail {
                name: c,
                health_checker: wire::Selector { kind: "TCP" },
                metadata: Default::default(),
            })
            .collect(),
    };
    Ok(to_json(&detail))
}

/// `pageNo` and `pageSize`, required and positive; the size is capped by the node's page limit.
fn page(state: &AppState, p: &Params) -> Result<(usize, usize), NacosError> {
    let no = parse_int(p.required("pageNo")?)?;
    let size = parse_int(p.required("pageSize")?)?;
    if no < 1 || size < 1 {
        return Err(NacosError::bad(format!("pageNo and pageSize must be 1 or more, got {no} and {size}")));
    }
    let max = state.settings.core.limits.max_page_size;
    Ok((usize::try_from(no).unwrap_or(1), usize::try_from(size).unwrap_or(max).min(max)))
}

async fn service_page(
    state: &AppState,
    p: &Params,
    group: Option<&str>,
    search: Option<&str>,
) -> Result<muster_core::ServicePage, NacosError> {
    let (page, page_size) = page(state, p)?;
    let namespace = Name::parse(Field::Namespace, p.opt("namespaceId").unwrap_or("public"))?;
    let group = group.map(|g| Name::parse(Field::Group, g)).transpose()?;
    let search = search.map(str::to_owned);
    if search.as_ref().is_some_and(|s| s.len() > 255) {
        return Err(NacosError::bad("the service name filter is longer than 255 bytes"));
    }
    let filter = ServiceFilter { namespace, group, search, page, page_size };
    match state.driver.request(CoreRequest::ListServices(filter)).await? {
        Reply::Services(page) => Ok(page),
        other => Err(unexpected(&other)),
    }
}

/// `GET /nacos/v1/ns/service/list`
async fn list_services(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let page = service_page(state, p, Some(p.opt("groupName").unwrap_or("DEFAULT_GROUP")), None).await?;
    let doms = page.services.iter().map(|s| s.key.service.as_str()).collect();
    Ok(to_json(&wire::ServiceList { count: page.total, doms }))
}

/// `GET /nacos/v1/ns/catalog/services` (the console's list).
async fn catalog_services(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let page = service_page(state, p, p.opt("groupNameParam"), p.opt("serviceNameParam")).await?;
    let mut service_list = Vec::with_capacity(page.services.len());
    for s in &page.services {
        let (clusters, _, _) = clusters_of(state, &s.key).await?;
        service_list.push(wire::CatalogService {
            name: s.key.service.as_str(),
            group_name: s.key.group.as_str(),
            cluster_count: clusters.len(),
            ip_count: s.instances,
            healthy_instance_count: s.healthy_instances,
            trigger_flag: "false",
        });
    }
    Ok(to_json(&wire::CatalogServices { count: page.total, service_list }))
}

/// `GET /nacos/v1/ns/catalog/instances`: one cluster's instances, paged.
async fn catalog_instances(state: &AppState, p: &Params) -> Result<Response<Body>, NacosError> {
    let key = p.service_key()?;
    let cluster = Name::parse(Field::Cluster, p.required("clusterName")?)?;
    let (page, size) = page(state, p)?;
    let published = published(state, &key, false).await?;
    let view = &published.view;
    if !view.known && view.instances.is_empty() {
        return Err(NacosError::bad(format!("no service {} found!", grouped(&key))));
    }
    let name = grouped(&key);
    let timings = &state.settings.core.timings;
    let all: Vec<_> = view.instances.iter().filter(|i| i.cluster == cluster).collect();
    let list = all
        .iter()
        .skip(page.saturating_sub(1).saturating_mul(size))
        .take(size)
        .map(|i| host(i, &name, i.healthy, timings))
        .collect();
    Ok(to_json(&wire::CatalogInstances { count: all.len(), list }))
}

/// `GET /nacos/v1/ns/operator/metrics`: every node serves the whole registry.
async fn operator_metrics(state: &AppState) -> Result<Response<Body>, NacosError> {
    let status = state.driver.status().await?;
    let r = &status.stats.registry;
    let clients = state.nacos.push.as_ref().map_or(0, |p| p.subscriber_count());
    Ok(to_json(&wire::OperatorMetrics {
        status: if status.ready { "UP" } else { "DOWN" },
        service_count: r.services,
        instance_count: r.instances,
        responsible_service_count: r.services,
        responsible_instance_count: r.instances,
        client_count: clients,
        load: 0.0,
        cpu: 0.0,
        mem: 0.0,
    }))
}

/// `GET /nacos/v1/ns/operator/servers`: the cluster members.
async fn operator_servers(state: &AppState) -> Result<Response<Body>, NacosError> {
    let status = state.driver.status().await?;
    let servers = status
        .members
        .iter()
        .map(|m| {
            let address = m.id.as_str().to_owned();
            let (ip, port) = address.rsplit_once(':').unwrap_or((&address, "0"));
            wire::Server {
                ip: ip.trim_start_matches('[').trim_end_matches(']').to_owned(),
                port: port.parse().unwrap_or(0),
                state: match m.state {
                    PeerState::Up => "UP",
                    PeerState::Suspect => "SUSPICIOUS",
                    PeerState::Down => "DOWN",
                },
                fail_access_cnt: 0,
                extend_info: [("version", env!("CARGO_PKG_VERSION").to_owned())].into_iter().collect(),
                address,
            }
        })
        .collect();
    Ok(to_json(&wire::Servers { servers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_path_then_method() {
        assert_eq!(find(&Method::POST, "/nacos/v1/ns/instance").unwrap(), Route::Register);
        assert_eq!(find(&Method::GET, "/nacos/v1/ns/instance/list/").unwrap(), Route::ListInstances);
        assert_eq!(
            find(&Method::POST, "/nacos/v1/ns/instance/list").unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(find(&Method::GET, "/nacos/v1/cs/configs").unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(find(&Method::GET, "/nacos/v2/ns/instance").unwrap_err().status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn only_writes_need_the_write_token() {
        for (_, _, r) in ROUTES {
            let read = matches!(
                r,
                Route::GetInstance
                    | Route::ListInstances
                    | Route::GetService
                    | Route::ListServices
                    | Route::OperatorMetrics
                    | Route::OperatorServers
                    | Route::CatalogServices
                    | Route::CatalogInstances
                    | Route::Login
            );
            assert_eq!(r.writes(), !read, "{r:?}");
        }
    }
}
