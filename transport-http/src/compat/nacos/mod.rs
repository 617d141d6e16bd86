//! The Nacos v1 naming API (`/nacos/v1/ns/...`, `/nacos/v1/auth/login`) and
//! its UDP push, on the node's port and over the same core.
//!
//! Requests are translated into the core's [`muster_core::Request`]s through
//! the same driver handle as the OpenAPI; listings are selected from the same
//! published snapshots and rendered in Nacos's shape, cached per service and
//! checksum. The adapter decides no registry semantics: leases, health,
//! expiry and the protect threshold stay in the core.
//!
//! Mapping: a Nacos namespace, group, service and cluster are Muster's
//! namespace, group, service and cluster, one to one (`namespaceId` empty or
//! missing is `public`, `groupName` defaults to `DEFAULT_GROUP`, a
//! `serviceName` of `group@@name` carries its group). Errors answer as the
//! real server does: the status it uses and a `caused: <message>;` text body.
//!
//! - `wire.rs`: the JSON shapes (Nacos field names);
//! - `routes.rs`: the routes;
//! - `push.rs`: UDP push to subscribers (`udpPort` and `clientIP` on
//!   `/instance/list`), bounded and switchable off.

mod push;
mod routes;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use muster_core::lease::Lease;
use muster_core::{Checksum, QueryAnswer, ServiceKey, Timings};

pub(crate) use self::push::Push;
pub(crate) use self::routes::handle;
use crate::config::{ServeArgs, SettingsError};
use crate::error::{ApiError, Body, bytes_response};

/// Every path of the Nacos API starts so.
pub(crate) const PREFIX: &str = "/nacos/";
/// How long a client may cache a listing without a push subscription (Nacos's default).
const CACHE_MILLIS: u64 = 3_000;
/// How long a client with a push subscription may cache a listing (Nacos's push default).
const PUSH_CACHE_MILLIS: u64 = 10_000;

/// Settings of the Nacos adapter.
#[derive(Clone, Debug)]
pub(crate) struct NacosSettings {
    /// Whether `udpPort` on `/instance/list` subscribes to UDP pushes.
    pub(crate) udp_push: bool,
    /// Most push subscribers on the node.
    pub(crate) max_subscribers: usize,
    /// Most push subscribers of one service.
    pub(crate) max_subscribers_per_service: usize,
    /// Largest push datagram (after gzip); larger pushes are skipped and
    /// the client finds the change at its next poll.
    pub(crate) max_packet_bytes: usize,
    /// Wait for an ack before a push is sent again.
    pub(crate) ack_timeout: Duration,
    /// Resends of an unacknowledged push.
    pub(crate) retries: u32,
    /// A subscriber that has not listed the service for this long is forgotten.
    pub(crate) subscriber_ttl: Duration,
}

impl ServeArgs {
    /// The Nacos adapter's settings, validated.
    pub(crate) fn nacos_settings(&self) -> Result<NacosSettings, SettingsError> {
        let positive = |key: &str, v: Option<usize>, d: usize| match v {
            Some(0) => Err(SettingsError { key: key.into(), message: "must be at least 1".into() }),
            v => Ok(v.unwrap_or(d)),
        };
        let positive_ms = |key: &str, v: Option<u64>, d: u64| match v {
            Some(0) => Err(SettingsError { key: key.into(), message: "must be greater than zero".into() }),
            v => Ok(Duration::from_millis(v.unwrap_or(d))),
        };
        let max_packet_bytes =
            positive("nacos_push_max_packet_bytes", self.nacos_push_max_packet_bytes, 4096)?;
        if !(512..=65_507).contains(&max_packet_bytes) {
            return Err(SettingsError {
                key: "nacos_push_max_packet_bytes".into(),
                message: format!("must be 512 to 65507 (a UDP datagram), got {max_packet_bytes}"),
            });
        }
        Ok(NacosSettings {
            udp_push: self.nacos_udp_push.unwrap_or(true),
            max_subscribers: positive("nacos_push_max_subscribers", self.nacos_push_max_subscribers, 10_000)?,
            max_subscribers_per_service: positive(
                "nacos_push_max_subscribers_per_service",
                self.nacos_push_max_subscribers_per_service,
                1_000,
            )?,
            max_packet_bytes,
            ack_timeout: positive_ms("nacos_push_ack_timeout_ms", self.nacos_push_ack_timeout_ms, 1_000)?,
            retries: self.nacos_push_retries.unwrap_or(2),
            subscriber_ttl: positive_ms(
                "nacos_push_subscriber_ttl_ms",
                self.nacos_push_subscriber_ttl_ms,
                30_000,
            )?,
        })
    }
}

/// The adapter's shared state: the push service and the rendered listings.
#[derive(Debug)]
pub(crate) struct Nacos {
    /// `None` when UDP push is switched off or its socket could not be bound.
    pub(crate) push: Option<Arc<Push>>,
    cache: Mutex<HashMap<CacheKey, (Checksum, Bytes)>>,
    /// Most cached listings; past it the cache starts over.
    cache_max: usize,
    /// Nacos requests answered, by status class: `[2xx, 4xx, 5xx]`.
    answered: [AtomicU64; 3],
}

/// A cached listing: the service, `healthyOnly`, and whether it was a push subscription.
type CacheKey = (ServiceKey, bool, bool);

impl Nacos {
    /// The adapter's state; `push` from [`Push::start`].
    pub(crate) fn new(push: Option<Arc<Push>>, max_services: usize) -> Nacos {
        Nacos {
            push,
            cache: Mutex::new(HashMap::new()),
            cache_max: max_services.saturating_mul(4).max(64),
            answered: Default::default(),
        }
    }

    fn count(&self, status: StatusCode) {
        let i = match status.as_u16() {
            ..400 => 0,
            400..500 => 1,
            _ => 2,
        };
        self.answered[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The cached body of a listing, if it was rendered for this checksum.
    fn cached(&self, key: &CacheKey, checksum: Checksum) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(key).filter(|(c, _)| *c == checksum).map(|(_, b)| b.clone())
    }

    fn remember(&self, key: CacheKey, checksum: Checksum, body: Bytes) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= self.cache_max && !cache.contains_key(&key) {
            cache.clear();
        }
        cache.insert(key, (checksum, body));
    }

    /// Appends the adapter's metrics in the Prometheus text format.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let name = "muster_nacos_requests_total";
        let _ = writeln!(out, "# HELP {name} Nacos API requests answered, by status class.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (class, c) in ["2xx", "4xx", "5xx"].iter().zip(&self.answered) {
            let _ = writeln!(out, "{name}{{class=\"{class}\"}} {}", c.load(Ordering::Relaxed));
        }
        if let Some(push) = &self.push {
            push.render_metrics(out);
        }
    }
}

/// A refused Nacos request: the status and message the real server uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NacosError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl NacosError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> NacosError {
        NacosError { status, message: message.into() }
    }

    /// 400, as Nacos answers an `IllegalArgumentException`.
    pub(crate) fn bad(message: impl Into<String>) -> NacosError {
        NacosError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn required(name: &str) -> NacosError {
        NacosError::bad(format!("Param '{name}' is required."))
    }

    /// The response: Nacos's `caused: <message>;` text (its `ExceptionUtil`).
    pub(crate) fn response(&self) -> Response<Body> {
        text(self.status, format!("caused: {};", self.message))
    }
}

impl From<ApiError> for NacosError {
    fn from(e: ApiError) -> NacosError {
        let status = match e.code {
            "invalid_input" | "bad_json" => StatusCode::BAD_REQUEST,
            _ => e.status,
        };
        let message = match &e.field {
            Some(f) if e.code == "invalid_input" && !e.message.contains(f.as_str()) => {
                format!("{f}: {}", e.message)
            }
            _ => e.message,
        };
        NacosError { status, message }
    }
}

impl From<muster_core::InvalidInput> for NacosError {
    fn from(e: muster_core::InvalidInput) -> NacosError {
        NacosError::from(ApiError::from(e))
    }
}

/// A `text/plain` answer, as Nacos gives `ok` and errors.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = bytes_response(status, "text/plain", body.into());
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain;charset=UTF-8"));
    resp
}

/// A JSON answer with Nacos's content type.
pub(crate) fn json(body: Bytes) -> Response<Body> {
    let mut resp = bytes_response(StatusCode::OK, "application/json", body);
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
    resp
}

/// Request parameters: the query string, then a form body; the first
/// occurrence of a name wins, as in the servlet API.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

/// Most parameters taken from one request.
const PARAMS_MAX: usize = 64;

impl Params {
    /// Parses `application/x-www-form-urlencoded` text (a query string or a body).
    pub(crate) fn parse(parts: &[&str]) -> Result<Params, NacosError> {
        let mut pairs = Vec::new();
        for raw in parts {
            for part in raw.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                let bad = || NacosError::bad(format!("bad percent-encoding in parameter {k:?}"));
                let k = crate::api::input::decode(k).ok_or_else(bad)?;
                let v = crate::api::input::decode(v).ok_or_else(bad)?;
                if pairs.len() >= PARAMS_MAX {
                    return Err(NacosError::bad(format!("more than {PARAMS_MAX} parameters")));
                }
                pairs.push((k, v));
            }
        }
        Ok(Params { pairs })
    }

    /// The first value of a parameter.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A parameter that is present and not blank.
    pub(crate) fn opt(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    /// A parameter that must be present and not blank.
    pub(crate) fn required(&self, name: &str) -> Result<&str, NacosError> {
        self.opt(name).ok_or_else(|| NacosError::required(name))
    }

    /// A boolean: `true`/`false` in any case.
    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, NacosError> {
        self.opt(name).map(|v| parse_bool(name, v)).transpose()
    }

    /// An integer, refused as Java's `Integer.parseInt` refuses it.
    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, NacosError> {
        self.opt(name).map(parse_int).transpose()
    }

    /// A number, refused as Java's `Double.parseDouble` refuses it.
    pub(crate) fn num(&self, name: &str) -> Result<Option<f64>, NacosError> {
        self.opt(name)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| NacosError::bad(format!("For input string: \"{v}\"")))
            })
            .transpose()
    }

    /// The service named by `serviceName` (`group@@name` or a bare name with
    /// `groupName`) in `namespaceId`.
    pub(crate) fn service_key(&self) -> Result<ServiceKey, NacosError> {
        let raw = self.required("serviceName")?;
        let (group, name) = match raw.split_once("@@") {
            Some((g, n)) => (Some(g), n),
            None => (self.opt("groupName"), raw),
        };
        if name.is_empty() || group.is_some_and(str::is_empty) {
            return Err(NacosError::bad(format!(
                "Param 'serviceName' is illegal, it should be format as 'groupName@@serviceName', got {raw:?}"
            )));
        }
        Ok(ServiceKey::parse(self.opt("namespaceId"), group, name)?)
    }

    /// `metadata`: a JSON object or `k=v,k=v`.
    pub(crate) fn metadata(&self) -> Result<Option<BTreeMap<String, String>>, NacosError> {
        self.get("metadata").map(parse_metadata).transpose()
    }
}

pub(crate) fn parse_bool(name: &str, v: &str) -> Result<bool, NacosError> {
    if v.trim().eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.trim().eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(NacosError::bad(format!("Param '{name}' must be true or false, got \"{v}\"")))
    }
}

pub(crate) fn parse_int(v: &str) -> Result<i64, NacosError> {
    v.parse::<i32>().map(i64::from).map_err(|_| NacosError::bad(format!("For input string: \"{v}\"")))
}

/// Nacos metadata: a JSON object (scalar values become their text) or `k=v,k=v`.
pub(crate) fn parse_metadata(raw: &str) -> Result<BTreeMap<String, String>, NacosError> {
    let bad = || NacosError::bad(format!("metadata format incorrect:{raw}"));
    let raw_t = raw.trim();
    if raw_t.is_empty() {
        return Ok(BTreeMap::new());
    }
    if raw_t.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw_t).map_err(|_| bad())?;
        return map.into_iter().map(|(k, v)| Ok((k, scalar_text(v).ok_or_else(bad)?))).collect();
    }
    raw_t
        .split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(bad))
        .collect()
}

/// The text of a scalar JSON value; `None` for arrays and objects.
pub(crate) fn scalar_text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => Some(String::new()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `group@@name`.
pub(crate) fn grouped(key: &ServiceKey) -> String {
    format!("{}@@{}", key.group.as_str(), key.service.as_str())
}

/// Wall-clock milliseconds.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One instance as Nacos shows it.
pub(crate) fn host<'a>(
    i: &'a muster_core::InstanceView,
    service_name: &'a str,
    healthy: bool,
    timings: &Timings,
) -> wire::Host<'a> {
    let lease = Lease::from_metadata_or_default(&i.metadata, timings);
    wire::Host {
        instance_id: format!("{}#{}#{}#{service_name}", i.ip, i.port, i.cluster.as_str()),
        ip: i.ip.to_string(),
        port: i.port,
        weight: i.weight,
        healthy,
        enabled: i.enabled,
        ephemeral: i.ephemeral,
        cluster_name: i.cluster.as_str(),
        service_name,
        metadata: i.metadata.iter().collect(),
        instance_heart_beat_interval: ms(lease.heartbeat_interval),
        instance_heart_beat_time_out: ms(lease.unhealthy_after),
        ip_delete_timeout: ms(lease.remove_after),
        instance_id_generator: "simple",
    }
}

/// Renders the `/instance/list` answer (and push data) of a selection:
/// enabled instances only; when the protect threshold is reached every
/// selected instance is shown healthy, as Nacos does.
pub(crate) fn render_list(
    answer: &QueryAnswer,
    clusters: &str,
    cache_millis: u64,
    timings: &Timings,
) -> Bytes {
    let key = &answer.view().key;
    let name = grouped(key);
    let reached = answer.protect_threshold_reached();
    let hosts = answer
        .instances()
        .filter(|i| i.enabled)
        .map(|i| host(i, &name, i.healthy || reached, timings))
        .collect();
    let info = wire::ServiceInfo {
        name: &name,
        group_name: key.group.as_str(),
        clusters,
        cache_millis,
        hosts,
        last_ref_time: wall_ms(),
        checksum: answer.checksum().to_string(),
        all_ips: false,
        reach_protection_threshold: reached,
        valid: true,
    };
    // Serialising these plain values cannot fail.
    Bytes::from(serde_json::to_vec(&info).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_come_from_the_query_then_the_form_and_the_first_wins() {
        let p = Params::parse(&["serviceName=a&ip=1.2.3.4", "ip=5.6.7.8&port=80"]).unwrap();
        assert_eq!(p.get("ip"), Some("1.2.3.4"));
        assert_eq!(p.int("port").unwrap(), Some(80));
        assert!(Params::parse(&["serviceName=%zz"]).is_err());
    }

    #[test]
    fn service_names_carry_their_group_or_take_group_name() {
        let key = Params::parse(&["serviceName=g1@@s"]).unwrap().service_key().unwrap();
        assert_eq!((key.namespace.as_str(), key.group.as_str(), key.service.as_str()), ("public", "g1", "s"));
        let key = Params::parse(&["serviceName=s&groupName=g2&namespaceId="]).unwrap().service_key().unwrap();
        assert_eq!((key.namespace.as_str(), key.group.as_str()), ("public", "g2"));
        let key = Params::parse(&["serviceName=s"]).unwrap().service_key().unwrap();
        assert_eq!(key.group.as_str(), "DEFAULT_GROUP");
        for bad in ["serviceName=", "", "serviceName=@@s", "serviceName=g@@", "serviceName=a%20b"] {
            let e = Params::parse(&[bad]).unwrap().service_key().unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn metadata_is_a_json_object_or_key_value_pairs() {
        let m = parse_metadata(r#"{"a":"1","b":2,"c":true}"#).unwrap();
        assert_eq!(m.get("b").map(String::as_str), Some("2"));
        assert_eq!(m.get("c").map(String::as_str), Some("true"));
        let m = parse_metadata("a=1,b=x=y").unwrap();
        assert_eq!(m.get("b").map(String::as_str), Some("x=y"));
        assert!(parse_metadata("").unwrap().is_empty());
        for bad in ["{", r#"{"a":[1]}"#, "a,b", "[1]"] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn booleans_take_any_case_and_numbers_are_refused_as_java_refuses_them() {
        assert!(parse_bool("x", "True").unwrap());
        assert!(!parse_bool("x", "FALSE").unwrap());
        assert!(parse_bool("x", "yes").is_err());
        assert_eq!(parse_int("80").unwrap(), 80);
        assert_eq!(parse_int("x").unwrap_err().message, "For input string: \"x\"");
        assert!(parse_int("99999999999").is_err());
        let p = Params::parse(&["weight=NaN"]).unwrap();
        assert!(p.num("weight").is_err());
    }

    #[test]
    fn an_error_answers_with_the_nacos_caused_text() {
        let resp = NacosError::required("ip").response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain;charset=UTF-8");
    }
}
