//! API errors: one type, one mapping from core errors, one JSON shape.
//!
//! Every error answers `{"error": {"code", "message", "field"?}}` with the
//! status the code implies.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use muster_core::{InvalidInput, RequestError};
use serde::Serialize;

/// Longest client input echoed in an error message, in characters.
pub(crate) const ECHO_MAX: usize = 64;
/// Longest error message sent, in bytes (longer ones are cut at a character boundary).
pub(crate) const MESSAGE_MAX: usize = 512;

/// Client input as echoed in an error message: at most [`ECHO_MAX`]
/// characters, then `…`, so that an error never repeats a huge input.
pub(crate) fn echo(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(ECHO_MAX) {
        None => std::borrow::Cow::Borrowed(s),
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}…", &s[..cut])),
    }
}

/// Cuts a message to [`MESSAGE_MAX`] bytes at a character boundary.
fn cut(mut message: String) -> String {
    if message.len() > MESSAGE_MAX {
        let mut end = MESSAGE_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// The body of every response: one buffer (with its length), or the
/// chunks of a streamed watch as its task sends them.
#[derive(Debug)]
pub(crate) struct Body(BodyKind);

#[derive(Debug)]
enum BodyKind {
    Full(Option<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Body {
    /// A body of `bytes`, sent with its `content-length`.
    pub(crate) fn new(bytes: Bytes) -> Body {
        Body(BodyKind::Full(Some(bytes).filter(|b| !b.is_empty())))
    }

    /// A body of unknown length (sent chunked): what `rx` receives, until
    /// its sender is dropped.
    pub(crate) fn stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
        Body(BodyKind::Stream(rx))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.0 {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, BodyKind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            BodyKind::Stream(_) => SizeHint::default(),
        }
    }
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) field: Option<String>,
    /// The methods a path accepts, for 405.
    pub(crate) allow: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: cut(message.into()), field: None, allow: None }
    }

    /// A 400 about one input field.
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(cut(field.into())),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
        }
    }

    /// A 400 about a required field that is absent.
    pub(crate) fn missing(field: &str) -> ApiError {
        ApiError::invalid(field, format!("{field} is required"))
    }

    pub(crate) fn bad_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_json", message)
    }

    pub(crate) fn not_found(path: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {path}"))
    }

    pub(crate) fn method_not_allowed(method: &str, allow: String) -> ApiError {
        ApiError {
            allow: Some(allow.clone()),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here; use {allow}"),
            )
        }
    }

    pub(crate) fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn not_ready() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "node is starting and has not loaded the registry yet; retry on another node",
        )
    }

    pub(crate) fn overloaded() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "node is overloaded; retry shortly")
    }

    pub(crate) fn shutting_down() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "node is shutting down")
    }

    pub(crate) fn too_many_watches(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watches",
            format!("the node serves at most {limit} concurrent long polls; retry shortly"),
        )
    }

    /// A 408: the body did not arrive in time. The connection is closed.
    pub(crate) fn body_too_slow(
        received: usize,
        after: Duration,
        timeout: Duration,
        min_rate: u64,
    ) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body arrived too slowly ({received} bytes in {} ms); send it within {} ms \
                 and at least {min_rate} bytes/s after the first second (body_timeout_ms, body_min_bytes_per_s)",
                after.as_millis(),
                timeout.as_millis()
            ),
        )
    }

    pub(crate) fn too_many_unknown_watches(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watches",
            format!(
                "the node watches at most {limit} services it does not know (max_unknown_watched); \
                 check the service name, or retry shortly"
            ),
        )
    }

    /// The response carrying this error.
    pub(crate) fn response(&self) -> Response<Body> {
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        let body =
            Outer { error: Inner { code: self.code, message: &self.message, field: self.field.as_deref() } };
        let mut resp = json_response(self.status, &body);
        let headers = resp.headers_mut();
        if let Some(allow) = self.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
            headers.insert(ALLOW, allow);
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a slow body is not worth waiting for.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> ApiError {
        ApiError::invalid(e.field.as_str(), e.to_string())
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        let message = e.to_string();
        match e {
            RequestError::Invalid(i) => i.into(),
            RequestError::ServiceNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "service_not_found", message)
            }
            RequestError::InstanceNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "instance_not_found", message)
            }
            RequestError::ServiceExists(_) => ApiError::new(StatusCode::CONFLICT, "service_exists", message),
            RequestError::ServiceNotEmpty { .. } => {
                ApiError::new(StatusCode::CONFLICT, "service_not_empty", message)
            }
            RequestError::LimitExceeded { .. } => {
                ApiError::new(StatusCode::CONFLICT, "limit_exceeded", message)
            }
            RequestError::NotReady => ApiError::not_ready(),
            RequestError::NotDurable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_durable", message)
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

/// A JSON response.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_response(status, "application/json", Bytes::from(bytes)),
        Err(e) => bytes_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            Bytes::from(format!(r#"{{"error":{{"code":"internal","message":"encoding failed: {e}"}}}}"#)),
        ),
    }
}

/// A response with a body of the given type.
pub(crate) fn bytes_response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use muster_core::Field;

    use super::*;

    #[test]
    fn core_errors_map_to_their_statuses_and_fields() {
        let e: ApiError = RequestError::from(InvalidInput::new(Field::Port, "bad")).into();
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (StatusCode::BAD_REQUEST, "invalid_input", Some("port"))
        );
        let e: ApiError = RequestError::ServiceNotEmpty { service: "s".into(), instances: 1 }.into();
        assert_eq!(e.status, StatusCode::CONFLICT);
        let e: ApiError = RequestError::NotReady.into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e: ApiError = RequestError::InstanceNotFound("x".into()).into();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn an_error_body_names_code_message_and_field() {
        let resp = ApiError::invalid("weight", "too heavy").response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = resp.into_body();
        let bytes = futures_body(body);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "invalid_input");
        assert_eq!(v["error"]["field"], "weight");
        assert_eq!(v["error"]["message"], "too heavy");
    }

    fn futures_body(body: Body) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async { body.collect().await.unwrap().to_bytes() })
    }
}
