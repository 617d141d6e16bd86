//! `/health/live`, `/health/ready` and `/metrics`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::json;

use super::AppState;
use crate::error::{ApiError, Body, bytes_response, json_response};

/// `GET /health/live`: the process serves HTTP.
pub(super) fn live() -> Response<Body> {
    json_response(StatusCode::OK, &json!({ "status": "live" }))
}

/// `GET /health/ready`: 200 once the node has loaded the registry, 503 before.
pub(super) fn ready(state: &Arc<AppState>) -> Response<Body> {
    if state.snapshots.is_ready() {
        json_response(StatusCode::OK, &json!({ "status": "ready" }))
    } else {
        ApiError::not_ready().response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let status = state.driver.status().await?;
    let mut text = state.metrics.render(&status, &state.peers.queue_depths());
    state.metrics.render_guard(&mut text, state.snapshots.unknown_watched());
    state.nacos.render_metrics(&mut text);
    Ok(bytes_response(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", Bytes::from(text)))
}
