//! `--api consul`: the same instances, loads and checks through Muster's
//! Consul API. A registration is `PUT /v1/agent/service/register` with a TTL
//! check (no check for `query`'s persistent instances), a heartbeat is the
//! check's pass (`PUT /v1/agent/check/pass/service:{id}`), a query is
//! `GET /v1/health/service/{name}?passing`.

use bytes::Bytes;
use hyper::Uri;

/// The Consul service ID of instance `i`.
fn id(i: u64) -> String {
    format!("bench-{i}")
}

/// The registration of instance `i` of `service` at `ip:port`; with a TTL
/// check of `ttl_ms` unless `persistent`.
pub(crate) fn registration(
    service: &str,
    i: u64,
    ip: &str,
    port: u64,
    weight: u64,
    ttl_ms: Option<u64>,
) -> Bytes {
    let mut body = format!(
        r#"{{"Name":"{service}","ID":"{}","Address":"{ip}","Port":{port},"Weights":{{"Passing":{weight},"Warning":1}},"Meta":{{"version":"1.4.2","zone":"eu-west-1a"}}"#,
        id(i)
    );
    if let Some(ttl) = ttl_ms {
        body.push_str(&format!(r#","Check":{{"TTL":"{ttl}ms"}}"#));
    }
    body.push('}');
    Bytes::from(body)
}

/// The path of instance `i`'s TTL pass, as bytes (made into a `Uri` per request without copying).
pub(crate) fn pass_path(i: u64) -> Bytes {
    Bytes::from(format!("/v1/agent/check/pass/service:{}", id(i)))
}

/// The health query of `service`, passing instances only.
pub(crate) fn query_uri(service: &str) -> Uri {
    Uri::try_from(format!("/v1/health/service/{service}?passing")).expect("a valid URI")
}

/// The URI of a pass path made by [`pass_path`].
pub(crate) fn uri(path: &Bytes) -> Uri {
    Uri::from_maybe_shared(path.clone()).unwrap_or_else(|_| Uri::from_static("/v1/agent/check/pass/invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_bodies_are_json_and_paths_are_uris() {
        let reg: serde_json::Value =
            serde_json::from_slice(&registration("bench-0001", 7, "198.18.0.7", 8080, 2, Some(60_000)))
                .unwrap();
        assert_eq!((reg["ID"].as_str(), reg["Check"]["TTL"].as_str()), (Some("bench-7"), Some("60000ms")));
        assert_eq!(reg["Weights"]["Passing"], 2);
        let plain: serde_json::Value =
            serde_json::from_slice(&registration("q", 1, "198.18.0.1", 8080, 1, None)).unwrap();
        assert!(plain.get("Check").is_none());
        assert_eq!(uri(&pass_path(3)).path(), "/v1/agent/check/pass/service:bench-3");
        assert_eq!(query_uri("a").query(), Some("passing"));
    }
}
