//! The console's files, embedded in the binary at build time from
//! `transport-http/console/` (plain HTML, CSS and ES modules: no build step,
//! nothing fetched at run time), served with an `ETag` (revalidated on every
//! load: `Cache-Control: no-cache`, answered 304 when unchanged) and a
//! Content-Security-Policy that allows only this node's own scripts, styles
//! and API.

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_NONE_MATCH,
    LOCATION, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Method, Response, StatusCode};

use crate::error::Body;

/// Where the console lives.
pub(crate) const PREFIX: &str = "/console/";

/// No inline script or style, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset { name: $name, content_type: $type, bytes: include_bytes!(concat!("../../console/", $name)) }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("pages.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The response for a console file or the redirects to it; `None` for any
/// other request (the ConsoleAPI under `/console/api/` included), which the
/// route table then answers.
pub(crate) fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    if path == "/" || path == "/console" {
        return Some(redirect());
    }
    let name = path.strip_prefix(PREFIX)?;
    let name = if name.is_empty() { "index.html" } else { name };
    let index = ASSETS.iter().position(|a| a.name == name)?;
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag.as_str() || t.trim() == "*"));
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if method == Method::HEAD {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(asset.bytes))
    };
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(ETAG, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(h);
    Some(resp)
}

fn redirect() -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert(LOCATION, HeaderValue::from_static(PREFIX));
    resp
}

/// The headers that keep the console's pages to their own code.
fn secure(h: &mut HeaderMap) {
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Strong ETags: a 64-bit FNV-1a hash of each file, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let h = a.bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
                });
                format!("\"{h:016x}\"")
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
        serve(&Method::GET, path, headers)
    }

    #[test]
    fn the_root_and_the_bare_prefix_redirect_to_the_console() {
        for path in ["/", "/console"] {
            let resp = get(path, &HeaderMap::new()).unwrap();
            assert_eq!(resp.status(), StatusCode::FOUND);
            assert_eq!(resp.headers()[LOCATION], "/console/");
        }
    }

    #[test]
    fn files_are_served_with_type_etag_and_csp_and_revalidated_with_304() {
        let resp = get("/console/", &HeaderMap::new()).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        let etag = resp.headers()[ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, etag);
        assert_eq!(get("/console/index.html", &h).unwrap().status(), StatusCode::NOT_MODIFIED);
        let js = get("/console/app.js", &HeaderMap::new()).unwrap();
        assert_eq!(js.headers()[CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_ne!(js.headers()[ETAG], resp.headers()[ETAG]);
    }

    #[test]
    fn the_console_api_unknown_files_and_writes_are_left_to_the_route_table() {
        assert!(get("/console/api/session", &HeaderMap::new()).is_none());
        assert!(get("/console/nothing.js", &HeaderMap::new()).is_none());
        assert!(get("/console/../Cargo.toml", &HeaderMap::new()).is_none());
        assert!(serve(&Method::POST, "/console/", &HeaderMap::new()).is_none());
        assert!(get("/v1/services", &HeaderMap::new()).is_none());
    }
}
