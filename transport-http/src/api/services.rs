//! `/v1/services` and `/v1/namespaces`.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use muster_core::model::DEFAULT_NAMESPACE;
use muster_core::{Field, Name, Reply, Request, ServiceFilter, ServiceKey, ServiceUpdate};
use serde::Serialize;

use super::AppState;
use super::input::{Obj, Query, decode};
use super::instances::unexpected;
use crate::error::{ApiError, Body, json_response};

/// Default page size of a listing (capped by the configured maximum).
const PAGE_SIZE_DEFAULT: usize = 100;
/// Longest accepted search string, in bytes.
const SEARCH_MAX: usize = 255;

/// `GET /v1/services`
pub(super) async fn list(state: &Arc<AppState>, q: &Query) -> Result<Response<Body>, ApiError> {
    let namespace = Name::parse(Field::Namespace, q.get("namespace").unwrap_or(DEFAULT_NAMESPACE))?;
    let group = q.get("group").map(|g| Name::parse(Field::Group, g)).transpose()?;
    let search = q.get("search").filter(|s| !s.is_empty()).map(str::to_owned);
    if search.as_ref().is_some_and(|s| s.len() > SEARCH_MAX) {
        return Err(ApiError::invalid("search", format!("must be at most {SEARCH_MAX} bytes")));
    }
    let page = positive(q, "page")?.unwrap_or(1);
    let max = state.settings.core.limits.max_page_size;
    let page_size = positive(q, "page_size")?.unwrap_or(PAGE_SIZE_DEFAULT.min(max));
    let filter = ServiceFilter { namespace, group, search, page, page_size };
    match state.driver.request(Request::ListServices(filter)).await? {
        Reply::Services(page) => Ok(json_response(StatusCode::OK, &page)),
        other => Err(unexpected(&other)),
    }
}

fn positive(q: &Query, name: &str) -> Result<Option<usize>, ApiError> {
    match q.int(name)? {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Some(n) => Err(ApiError::invalid(name, format!("must be 1 or more, got {n}"))),
    }
}

fn service_key(param: &str, q: &Query) -> Result<ServiceKey, ApiError> {
    let service =
        decode(param).ok_or_else(|| ApiError::invalid("service", "bad percent-encoding in the path"))?;
    q.service_key(Some(&service))
}

/// `GET /v1/services/{service}`
pub(super) async fn get(state: &Arc<AppState>, param: &str, q: &Query) -> Result<Response<Body>, ApiError> {
    let key = service_key(param, q)?;
    match state.driver.request(Request::GetService(key)).await? {
        Reply::Service(s) => Ok(json_response(StatusCode::OK, &s)),
        other => Err(unexpected(&other)),
    }
}

/// `PUT /v1/services/{service}`: updates the settings, creating the service
/// if it does not exist. An empty body creates it with defaults.
pub(super) async fn put(
    state: &Arc<AppState>,
    param: &str,
    q: &Query,
    allowed: &[&str],
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let key = service_key(param, q)?;
    let body = if body.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { body };
    let mut o = Obj::from_body(body, allowed)?;
    let upd =
        ServiceUpdate { protect_threshold: o.num("protect_threshold")?, metadata: o.string_map("metadata")? };
    match state.driver.put_service(key, upd).await? {
        Reply::Service(s) => Ok(json_response(StatusCode::OK, &s)),
        other => Err(unexpected(&other)),
    }
}

/// `DELETE /v1/services/{service}`
pub(super) async fn delete(
    state: &Arc<AppState>,
    param: &str,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let key = service_key(param, q)?;
    match state.driver.request(Request::DeleteService(key.clone())).await? {
        Reply::Done => Ok(json_response(StatusCode::OK, &key)),
        other => Err(unexpected(&other)),
    }
}

/// `GET /v1/namespaces`
pub(super) async fn namespaces(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    match state.driver.request(Request::Namespaces).await? {
        Reply::Namespaces(namespaces) => {
            #[derive(Serialize)]
            struct Namespaces {
                namespaces: Vec<muster_core::NamespaceSummary>,
            }
            Ok(json_response(StatusCode::OK, &Namespaces { namespaces }))
        }
        other => Err(unexpected(&other)),
    }
}
