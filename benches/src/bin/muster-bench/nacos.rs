//! `--api nacos`: the same register, beat, query and mixed loads through the
//! Nacos v1 naming API, so they run against any server that speaks it
//! (Muster's adapter, r-nacos, Nacos itself).
//!
//! The same instances as the native API (see the module above): service
//! `bench-NNNN` in `DEFAULT_GROUP`, the same addresses, ports and metadata.
//! A registration is `POST /nacos/v1/ns/instance` with its parameters in the
//! query string (as nacos-sdk-python sends it) and answers `ok`; a beat is
//! a light beat `PUT /nacos/v1/ns/instance/beat?serviceName=DEFAULT_GROUP@@...&ip=&port=`
//! and must answer code 10200; a query is `GET /nacos/v1/ns/instance/list`.
//! The lease goes into the metadata twice: Muster's `muster.*_ms` keys and
//! Nacos's `preserved.heart.beat.timeout` / `preserved.ip.delete.timeout`.

use bytes::Bytes;
use hyper::{Method, Uri};

use super::{Check, Kind, Op, Workload, ip, port};

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The registration of instance `i` of `service`.
pub(super) fn register_op(
    w: &Workload,
    service: &str,
    persistent: bool,
    i: u64,
    kind: Kind,
    weight: u64,
) -> Op {
    let mut meta = String::from(r#"{"version":"1.4.2","zone":"eu-west-1a""#);
    if let Some(lease) = w.opts.lease_ms {
        let remove = lease * 2;
        meta.push_str(&format!(
            r#","muster.unhealthy_after_ms":"{lease}","muster.remove_after_ms":"{remove}","preserved.heart.beat.timeout":"{lease}","preserved.ip.delete.timeout":"{remove}""#
        ));
    }
    meta.push('}');
    let uri = format!(
        "/nacos/v1/ns/instance?serviceName={service}&groupName=DEFAULT_GROUP&ip={}&port={}&weight={weight}&ephemeral={}&metadata={}",
        ip(i),
        port(i),
        !persistent,
        enc(&meta)
    );
    Op {
        kind,
        method: Method::POST,
        uri: Uri::try_from(uri).expect("a valid URI"),
        body: Bytes::new(),
        items: 1,
        check: Check::NacosOk,
    }
}

/// The beat URI of instance `i` of `service`, kept as bytes.
pub(super) fn beat_key(service: &str, i: u64) -> Bytes {
    Bytes::from(format!(
        "/nacos/v1/ns/instance/beat?serviceName=DEFAULT_GROUP%40%40{service}&ip={}&port={}",
        ip(i),
        port(i)
    ))
}

/// A light beat of the key at `key`.
pub(super) fn beat_op(key: Bytes) -> Op {
    Op {
        kind: Kind::Beat,
        method: Method::PUT,
        uri: Uri::from_maybe_shared(key).expect("a valid URI"),
        body: Bytes::new(),
        items: 1,
        check: Check::NacosBeat,
    }
}

/// The listing of `service`.
pub(super) fn query_uri(service: &str) -> Uri {
    Uri::try_from(format!("/nacos/v1/ns/instance/list?serviceName={service}&groupName=DEFAULT_GROUP"))
        .expect("a valid URI")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nacos_requests_carry_their_parameters_in_the_query_string() {
        let key = beat_key("bench-0001", 1);
        assert_eq!(
            &key[..],
            b"/nacos/v1/ns/instance/beat?serviceName=DEFAULT_GROUP%40%40bench-0001&ip=198.18.0.1&port=8080"
        );
        assert_eq!(beat_op(key).uri.query().map(|q| q.contains("ip=198.18.0.1")), Some(true));
        assert_eq!(enc(r#"{"a":"1"}"#), "%7B%22a%22%3A%221%22%7D");
        assert_eq!(query_uri("s").path(), "/nacos/v1/ns/instance/list");
    }
}
