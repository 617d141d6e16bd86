//! The Eureka routes: register, renew, cancel, status and metadata changes,
//! and the reads, each translated onto the core's requests and the
//! published views.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use muster_core::{
    BeatReply, Field, InstanceKey, InstanceView, Name, Reply, Request as CoreRequest, ServiceKey,
    ServiceView, UpdateRequest,
};
use serde_json::{Value, json};

use super::history::{app_key, view};
use super::{EurekaError, wire};
use crate::api::input::decode;
use crate::api::{Access, AppState};
use crate::error::{ApiError, Body};
use crate::filter::{authorize, read_client_body};

/// What a path names.
enum Target<'a> {
    Apps,
    Delta,
    App(&'a str),
    Instance(&'a str, &'a str),
    Status(&'a str, &'a str),
    Metadata(&'a str, &'a str),
    InstanceById(&'a str),
    Vip(&'a str),
    Svip(&'a str),
}

/// Matches the path after the prefix.
fn target(rest: &str) -> Option<Target<'_>> {
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').collect();
    let nonempty = |s: &&str| !s.is_empty();
    Some(match parts.as_slice() {
        ["apps"] | ["apps", ""] => Target::Apps,
        ["apps", "delta"] | ["apps", "delta", ""] => Target::Delta,
        ["apps", app] | ["apps", app, ""] if nonempty(app) => Target::App(app),
        ["apps", app, id] if nonempty(app) && nonempty(id) => Target::Instance(app, id),
        ["apps", app, id, "status"] if nonempty(app) && nonempty(id) => Target::Status(app, id),
        ["apps", app, id, "metadata"] if nonempty(app) && nonempty(id) => Target::Metadata(app, id),
        ["instances", id] if nonempty(id) => Target::InstanceById(id),
        ["vips", vip] if nonempty(vip) => Target::Vip(vip),
        ["svips", svip] if nonempty(svip) => Target::Svip(svip),
        _ => return None,
    })
}

/// The methods of a target, for 405.
fn allowed(t: &Target<'_>) -> &'static str {
    match t {
        Target::App(_) => "GET, POST",
        Target::Instance(..) => "GET, PUT, DELETE",
        Target::Status(..) => "PUT, DELETE",
        Target::Metadata(..) => "PUT",
        _ => "GET",
    }
}

/// Routes and serves one Eureka request.
pub(super) async fn serve(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, EurekaError> {
    let settings = &state.settings.eureka;
    let prefix = settings.prefix.as_deref().unwrap_or_default();
    let uri = req.uri().clone();
    let rest = uri.path().strip_prefix(prefix).unwrap_or_default();
    let t = target(rest)
        .ok_or_else(|| EurekaError::not_found(format!("no Eureka resource at {}", uri.path())))?;
    let method = req.method().clone();
    let write = matches!(
        (&method, &t),
        (&Method::POST, Target::App(_))
            | (&Method::PUT | &Method::DELETE, Target::Instance(..) | Target::Status(..))
            | (&Method::PUT, Target::Metadata(..))
    );
    let read = method == Method::GET && !matches!(t, Target::Status(..) | Target::Metadata(..));
    if !write && !read {
        return Err(EurekaError::method_not_allowed(allowed(&t)));
    }
    authorize(state, if write { Access::Write } else { Access::Read }, req.headers())?;
    if !state.snapshots.is_ready() {
        return Err(ApiError::not_ready().into());
    }
    let json = wants_json(req.headers());
    let query = Query::parse(uri.query())?;
    match (method, t) {
        (Method::POST, Target::App(app)) => {
            let xml = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("xml"));
            let body = read_client_body(state, req).await?;
            register(state, &segment(app)?, &body, xml).await
        }
        (Method::PUT, Target::Instance(app, id)) => renew(state, &segment(app)?, &segment(id)?, &query).await,
        (Method::DELETE, Target::Instance(app, id)) => cancel(state, &segment(app)?, &segment(id)?).await,
        (Method::PUT, Target::Status(app, id)) => {
            let value = query.get("value").ok_or_else(|| EurekaError::bad_request("value is required"))?;
            let value = wire::parse_status(value)?;
            set_status(state, &segment(app)?, &segment(id)?, Some(value), None).await
        }
        (Method::DELETE, Target::Status(app, id)) => {
            let value = query.get("value").map(wire::parse_status).transpose()?;
            set_status(state, &segment(app)?, &segment(id)?, None, value).await
        }
        (Method::PUT, Target::Metadata(app, id)) => {
            metadata(state, &segment(app)?, &segment(id)?, &query).await
        }
        (_, Target::Apps) => Ok(xml_or_json(state.eureka.full(state, json).await?, json)),
        (_, Target::Delta) => Ok(xml_or_json(state.eureka.delta(state, json).await?, json)),
        (_, Target::App(app)) => get_app(state, &segment(app)?, json).await,
        (_, Target::Instance(app, id)) => {
            get_instance(state, Some(&segment(app)?), &segment(id)?, json).await
        }
        (_, Target::InstanceById(id)) => get_instance(state, None, &segment(id)?, json).await,
        (_, Target::Vip(vip)) => get_vip(state, &segment(vip)?, false, json).await,
        (_, Target::Svip(svip)) => get_vip(state, &segment(svip)?, true, json).await,
        (_, Target::Status(..) | Target::Metadata(..)) => Err(EurekaError::method_not_allowed("PUT")),
    }
}

/// Eureka answers XML unless the client asks for JSON.
fn wants_json(h: &HeaderMap) -> bool {
    h.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.to_ascii_lowercase().contains("json"))
}

fn segment(s: &str) -> Result<String, EurekaError> {
    decode(s).ok_or_else(|| EurekaError::bad_request("bad percent-encoding in the path"))
}

/// Query parameters; Eureka ignores those it does not know, and so does this.
struct Query(Vec<(String, String)>);

impl Query {
    const MAX_PARAMS: usize = 64;

    fn parse(raw: Option<&str>) -> Result<Query, EurekaError> {
        let mut out = Vec::new();
        for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            if out.len() == Self::MAX_PARAMS {
                return Err(EurekaError::bad_request(format!(
                    "more than {} query parameters",
                    Self::MAX_PARAMS
                )));
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || EurekaError::bad_request("bad percent-encoding in the query");
            out.push((decode(k).ok_or_else(bad)?, decode(v).ok_or_else(bad)?));
        }
        Ok(Query(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn xml_or_json(body: Bytes, json: bool) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    let ct = if json { "application/json" } else { "application/xml" };
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

fn render(v: &Value, json: bool) -> Response<Body> {
    if json {
        xml_or_json(Bytes::from(serde_json::to_vec(v).unwrap_or_default()), true)
    } else {
        xml_or_json(Bytes::from(wire::value_to_xml(v)), false)
    }
}

fn unexpected(reply: &Reply) -> EurekaError {
    EurekaError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected core reply {reply:?}"))
}

/// `POST /apps/{APP}`: 204 once registered.
async fn register(
    state: &Arc<AppState>,
    app: &str,
    body: &[u8],
    xml: bool,
) -> Result<Response<Body>, EurekaError> {
    let key = app_key(&state.settings.eureka, app)?;
    let inst = wire::read_instance(body, xml)?;
    let mut req = wire::registration(key, &app.to_ascii_uppercase(), &inst, now_ms())?;
    if muster_core::lease::Lease::clamp_to_tombstone_ttl(&mut req.metadata, &state.settings.core.timings) {
        tracing::info!(
            app,
            "leaseInfo.durationInSecs is longer than the tombstone TTL; the lease is cut to it"
        );
    }
    match state.driver.request(CoreRequest::Register(req)).await {
        Ok(Reply::Registered(_)) => Ok(empty(StatusCode::NO_CONTENT)),
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(e.into()),
    }
}

/// The instance `id` of `app`, from the app's published view.
async fn find(state: &Arc<AppState>, app: &str, id: &str) -> Result<(Arc<ServiceView>, usize), EurekaError> {
    let key = app_key(&state.settings.eureka, app)?;
    let upper = view(state, &key).await?;
    if let Some(pos) = state.eureka.position(&upper, id) {
        return Ok((upper, pos));
    }
    // An app registered through another API keeps its own case.
    if key.service.as_str() != app {
        let exact =
            ServiceKey { service: Name::parse(Field::Service, app).map_err(EurekaError::invalid)?, ..key };
        let found = view(state, &exact).await?;
        if let Some(pos) = state.eureka.position(&found, id) {
            return Ok((found, pos));
        }
    }
    Err(EurekaError::not_found(format!("no instance {id} in app {app}")))
}

fn key_of(view: &ServiceView, i: &InstanceView) -> InstanceKey {
    InstanceKey { service: view.key.clone(), cluster: i.cluster.clone(), ip: i.ip.clone(), port: i.port }
}

/// `PUT /apps/{APP}/{id}`: a heartbeat; 404 when the instance is unknown or
/// the client's `lastDirtyTimestamp` is newer than the registry's copy, so
/// that the client registers again.
async fn renew(state: &Arc<AppState>, app: &str, id: &str, q: &Query) -> Result<Response<Body>, EurekaError> {
    let (view, pos) = find(state, app, id).await?;
    let i = &view.instances[pos];
    if let Some(theirs) = q.get("lastDirtyTimestamp").and_then(|t| t.parse::<u64>().ok()) {
        let ours = i.metadata.get(wire::M_DIRTY).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        if theirs > ours {
            return Err(EurekaError::not_found("the client's copy is newer: register again"));
        }
    }
    match state.driver.request(CoreRequest::Heartbeat(key_of(&view, i))).await? {
        Reply::Beat(BeatReply::Ok { .. }) => Ok(empty(StatusCode::OK)),
        Reply::Beat(BeatReply::Unknown) => Err(EurekaError::not_found(format!("no instance {id}"))),
        other => Err(unexpected(&other)),
    }
}

/// `DELETE /apps/{APP}/{id}`
async fn cancel(state: &Arc<AppState>, app: &str, id: &str) -> Result<Response<Body>, EurekaError> {
    let (view, pos) = find(state, app, id).await?;
    match state.driver.request(CoreRequest::Deregister(key_of(&view, &view.instances[pos]))).await? {
        Reply::Done => Ok(empty(StatusCode::OK)),
        other => Err(unexpected(&other)),
    }
}

/// Applies a metadata change to an instance (the core replaces metadata whole).
async fn update(
    state: &Arc<AppState>,
    view: &ServiceView,
    i: &InstanceView,
    enabled: Option<bool>,
    change: impl FnOnce(&mut std::collections::BTreeMap<String, String>),
) -> Result<Response<Body>, EurekaError> {
    let mut m = i.metadata.to_map();
    change(&mut m);
    let upd = UpdateRequest { enabled, metadata: Some(m), ..UpdateRequest::default() };
    match state.driver.request(CoreRequest::Update(key_of(view, i), upd)).await {
        Ok(Reply::Done) => Ok(empty(StatusCode::OK)),
        Ok(other) => Err(unexpected(&other)),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(EurekaError::not_found(e.message)),
        Err(e) => Err(e.into()),
    }
}

/// `PUT /apps/{APP}/{id}/status?value=` sets the override;
/// `DELETE` removes it (and sets the status to `value`, if given). UP
/// enables the instance, any other status disables it.
async fn set_status(
    state: &Arc<AppState>,
    app: &str,
    id: &str,
    overridden: Option<&'static str>,
    new_status: Option<&'static str>,
) -> Result<Response<Body>, EurekaError> {
    let (view, pos) = find(state, app, id).await?;
    let i = &view.instances[pos];
    let effective = match overridden {
        Some(o) => o.to_owned(),
        None => new_status
            .map(str::to_owned)
            .or_else(|| i.metadata.get(wire::M_STATUS).map(str::to_owned))
            .unwrap_or_else(|| "UP".to_owned()),
    };
    update(state, &view, i, Some(effective == "UP"), |m| match overridden {
        Some(o) => {
            m.insert(wire::M_OVERRIDDEN.to_owned(), o.to_owned());
        }
        None => {
            m.remove(wire::M_OVERRIDDEN);
            if let Some(s) = new_status.filter(|s| *s != "UNKNOWN") {
                m.insert(wire::M_STATUS.to_owned(), s.to_owned());
            }
        }
    })
    .await
}

/// `PUT /apps/{APP}/{id}/metadata?key=value...`: adds or changes metadata.
async fn metadata(
    state: &Arc<AppState>,
    app: &str,
    id: &str,
    q: &Query,
) -> Result<Response<Body>, EurekaError> {
    if q.0.is_empty() {
        return Err(EurekaError::bad_request("give the metadata as query parameters: ?key=value"));
    }
    if let Some((k, _)) =
        q.0.iter().find(|(k, _)| k.starts_with(wire::META_PREFIX) || k.starts_with("muster."))
    {
        return Err(EurekaError::bad_request(format!("metadata key {k:?} is reserved")));
    }
    let (view, pos) = find(state, app, id).await?;
    let i = &view.instances[pos];
    update(state, &view, i, None, |m| {
        for (k, v) in &q.0 {
            m.insert(k.clone(), v.clone());
        }
    })
    .await
}

/// `GET /apps/{APP}`: 404 for an app without instances.
async fn get_app(state: &Arc<AppState>, app: &str, json: bool) -> Result<Response<Body>, EurekaError> {
    let key = app_key(&state.settings.eureka, app)?;
    let mut found = view(state, &key).await?;
    let mut name = key.service.to_string();
    if found.instances.is_empty() {
        // An app registered through another API may not be in upper case.
        let g = state.eureka.generation(state).await?;
        match g.apps.into_iter().find(|a| a.name.eq_ignore_ascii_case(app)) {
            Some(a) => {
                found = a.view;
                name = a.name;
            }
            None => return Err(EurekaError::not_found(format!("no app {app}"))),
        }
    }
    let lease = lease(state);
    let instances = found.instances.iter().map(|i| wire::instance_value(&name, i, lease, "ADDED")).collect();
    Ok(render(&json!({"application": wire::application_value(&name, instances)}), json))
}

fn lease(state: &AppState) -> (std::time::Duration, std::time::Duration) {
    let t = &state.settings.core.timings;
    (t.heartbeat_interval, t.remove_after)
}

/// `GET /apps/{APP}/{id}` and `GET /instances/{id}`: one instance, as an object.
async fn get_instance(
    state: &Arc<AppState>,
    app: Option<&str>,
    id: &str,
    json: bool,
) -> Result<Response<Body>, EurekaError> {
    let lease = lease(state);
    if let Some(app) = app {
        if let Ok((view, pos)) = find(state, app, id).await {
            let name = wire::app_name(&view.key.service);
            return Ok(render(
                &json!({"instance": wire::instance_value(&name, &view.instances[pos], lease, "ADDED")}),
                json,
            ));
        }
    }
    let g = state.eureka.generation(state).await?;
    for a in g.apps.iter().filter(|a| app.is_none_or(|app| a.name.eq_ignore_ascii_case(app))) {
        if let Some(i) = a.view.instances.iter().find(|i| wire::instance_id(i) == id) {
            return Ok(render(&json!({"instance": wire::instance_value(&a.name, i, lease, "ADDED")}), json));
        }
    }
    Err(EurekaError::not_found(format!("no instance {id}")))
}

/// `GET /vips/{vip}` and `GET /svips/{svip}`: the instances with that
/// (secure) VIP address, as applications.
async fn get_vip(
    state: &Arc<AppState>,
    vip: &str,
    secure: bool,
    json: bool,
) -> Result<Response<Body>, EurekaError> {
    let g = state.eureka.generation(state).await?;
    let lease = lease(state);
    let field = if secure { "secureVipAddress" } else { "vipAddress" };
    let mut apps = Vec::new();
    for a in &g.apps {
        let list: Vec<Value> = a
            .view
            .instances
            .iter()
            .map(|i| wire::instance_value(&a.name, i, lease, "ADDED"))
            .filter(|v| v[field].as_str().is_some_and(|f| f.eq_ignore_ascii_case(vip)))
            .collect();
        if !list.is_empty() {
            apps.push((a.name.clone(), list));
        }
    }
    if apps.is_empty() {
        return Err(EurekaError::not_found(format!("no instance with VIP address {vip}")));
    }
    Ok(render(&wire::applications_value(g.version, &g.hashcode, apps), json))
}
