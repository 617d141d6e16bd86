//! Consul's wire shapes: the registration body the agent API takes (keys in
//! any case, `snake_case` too, as Consul's own decoder accepts them), the
//! PascalCase JSON it answers, Go durations, and how a Consul service maps
//! onto a Muster instance's metadata.
//!
//! A Consul service becomes one instance of the Muster service of the same
//! name in namespace `public`, group `DEFAULT_GROUP`: `Address:Port` is its
//! key, `Meta` its metadata, and the Consul-only facts ride in reserved
//! metadata keys ([`META_ID`], [`META_TAGS`], [`META_CHECK`],
//! [`META_CHECK_ID`], [`META_STATUS`]) so that every node and every API sees
//! the same instance.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::lease::{
    META_HEALTH_CHECK, META_HEALTH_CHECK_PATH, META_HEARTBEAT_INTERVAL, META_REMOVE_AFTER,
    META_UNHEALTHY_AFTER,
};
use muster_core::model::DEFAULT_CLUSTER;
use muster_core::{InstanceView, ServiceKey};
use serde::Serialize;
use serde_json::{Map, Value};

/// The datacenter Muster answers as.
pub(crate) const DATACENTER: &str = "dc1";
/// Metadata key of the Consul service ID.
pub(crate) const META_ID: &str = "consul.id";
/// Metadata key of the tags (a JSON array).
pub(crate) const META_TAGS: &str = "consul.tags";
/// Metadata key of the check type: `ttl`, `http`, `tcp` or `none`.
pub(crate) const META_CHECK: &str = "consul.check";
/// Metadata key of a check ID chosen by the client (default `service:<id>`).
pub(crate) const META_CHECK_ID: &str = "consul.check_id";
/// Metadata key holding `warning` while a TTL check is in the warning state.
pub(crate) const META_STATUS: &str = "consul.status";
/// Prefixes of metadata keys that are not the service's `Meta`.
const RESERVED: [&str; 2] = ["consul.", "muster."];
/// Longest Go duration string taken.
const DURATION_MAX_LEN: usize = 64;
/// Lease bounds of the core (`muster_core::lease`), in ms.
const LEASE_MAX_MS: u64 = 86_400_000;
/// Shortest TTL: the client is told to pass every TTL/2, at least 1 s.
const TTL_MIN_MS: u64 = 2_000;
/// Consul raises a shorter `DeregisterCriticalServiceAfter` to one minute.
const DEREGISTER_MIN_MS: u64 = 60_000;

/// A malformed request, worded as Consul words it (HTTP 400, plain text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) String);

fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

/// Parses a Go duration (`10s`, `1m30s`, `500ms`, `1.5h`; a bare `0`).
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.len() > DURATION_MAX_LEN {
        return None;
    }
    let mut rest = s;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().ok()?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_ns += value * scale;
        rest = tail;
    }
    (total_ns.is_finite() && total_ns < 1e18).then(|| Duration::from_nanos(total_ns as u64))
}

/// A JSON object with its keys folded as Consul folds them: lower case,
/// without `_` (`DeregisterCriticalServiceAfter`,
/// `deregister_critical_service_after` and `deregistercriticalserviceafter`
/// are one key).
struct Folded(Map<String, Value>);

impl Folded {
    fn new(v: Value, what: &str) -> Result<Folded, DecodeError> {
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(k.to_ascii_lowercase().replace('_', ""), v);
                }
                Ok(Folded(out))
            }
            Value::Null => Ok(Folded(Map::new())),
            other => Err(bad(format!("Request decode failed: {what} must be an object, got {other}"))),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str, field: &str) -> Result<Option<String>, DecodeError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(bad(format!("Request decode failed: {field} must be a string, got {other}"))),
        }
    }

    fn int(&mut self, key: &str, field: &str) -> Result<Option<i64>, DecodeError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
            Some(other) => {
                Err(bad(format!("Request decode failed: {field} must be an integer, got {other}")))
            }
        }
    }

    fn duration(&mut self, key: &str, field: &str) -> Result<Option<Duration>, DecodeError> {
        match self.string(key, field)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => parse_go_duration(&s)
                .map(Some)
                .ok_or_else(|| bad(format!("Request decode failed: {field}: invalid duration {s:?}"))),
        }
    }

    fn non_empty(&self, key: &str) -> bool {
        match self.0.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        }
    }
}

/// The health check of a registration, as Muster runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CheckSpec {
    /// No check: the service is passing until it is deregistered.
    None,
    /// A TTL check: the client passes it; silence makes it critical.
    Ttl { ttl: Duration, deregister_after: Option<Duration> },
    /// An HTTP GET of `path` on the service's address and port.
    Http { path: String },
    /// A TCP connect to the service's address and port.
    Tcp,
}

/// A parsed `PUT /v1/agent/service/register` body.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Registration {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) address: Option<String>,
    pub(crate) port: i64,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) weight: Option<f64>,
    pub(crate) check: CheckSpec,
    pub(crate) check_id: Option<String>,
    /// The check's initial status was given as `passing`.
    pub(crate) initially_passing: bool,
}

impl Registration {
    /// Parses a registration body. Fields Consul has and Muster does not use
    /// (`EnableTagOverride`, `TaggedAddresses`, `Locality`, ...) are ignored
    /// as Consul ignores unknown ones; Connect, proxies and gateways are
    /// refused because Muster would not honour them.
    pub(crate) fn parse(body: &[u8]) -> Result<Registration, DecodeError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("Request decode failed: {e}")))?;
        let mut o = Folded::new(v, "the body")?;
        for (key, what) in
            [("connect", "Connect"), ("proxy", "Proxy"), ("kind", "Kind"), ("socketpath", "SocketPath")]
        {
            if o.non_empty(key) {
                return Err(bad(format!("{what} is not supported by Muster (no service mesh)")));
            }
        }
        let name =
            o.string("name", "Name")?.filter(|n| !n.is_empty()).ok_or_else(|| bad("Missing service name"))?;
        let id = o.string("id", "ID")?.filter(|i| !i.is_empty()).unwrap_or_else(|| name.clone());
        let address = o.string("address", "Address")?.filter(|a| !a.is_empty());
        let port = o.int("port", "Port")?.unwrap_or(0);
        let tags = match o.take("tags") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s),
                    other => Err(bad(format!("Request decode failed: Tags must hold strings, got {other}"))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(bad(format!("Request decode failed: Tags must be an array, got {other}")));
            }
        };
        let meta = match o.take("meta") {
            None => BTreeMap::new(),
            Some(Value::Object(m)) => {
                let mut meta = BTreeMap::new();
                for (k, v) in m {
                    let Value::String(v) = v else {
                        return Err(bad(format!("Request decode failed: Meta[{k:?}] must be a string")));
                    };
                    if RESERVED.iter().any(|p| k.starts_with(p)) {
                        return Err(bad(format!(
                            "Meta key {k:?} is reserved (prefixes consul. and muster.)"
                        )));
                    }
                    meta.insert(k, v);
                }
                meta
            }
            Some(other) => {
                return Err(bad(format!("Request decode failed: Meta must be an object, got {other}")));
            }
        };
        let weight = match o.take("weights") {
            None => None,
            Some(w) => {
                let mut w = Folded::new(w, "Weights")?;
                match w.int("passing", "Weights.Passing")? {
                    Some(p) if (1..=10_000).contains(&p) => Some(p as f64),
                    Some(p) => {
                        return Err(bad(format!(
                            "Passing must be greater than 0 and at most 10000, got {p}"
                        )));
                    }
                    None => None,
                }
            }
        };
        let mut checks = Vec::new();
        if let Some(c) = o.take("check") {
            checks.push(c);
        }
        match o.take("checks") {
            None => {}
            Some(Value::Array(items)) => checks.extend(items),
            Some(other) => {
                return Err(bad(format!("Request decode failed: Checks must be an array, got {other}")));
            }
        }
        if checks.len() > 1 {
            return Err(bad("Muster keeps one health check per service; give at most one"));
        }
        let (check, check_id, initially_passing) = match checks.pop() {
            None => (CheckSpec::None, None, true),
            Some(c) => parse_check(c)?,
        };
        Ok(Registration { name, id, address, port, tags, meta, weight, check, check_id, initially_passing })
    }

    /// The metadata of the Muster instance: `Meta`, the reserved keys, and
    /// the lease or active check the check maps onto.
    pub(crate) fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = self.meta.clone();
        m.insert(META_ID.to_owned(), self.id.clone());
        if !self.tags.is_empty() {
            m.insert(META_TAGS.to_owned(), serde_json::to_string(&self.tags).unwrap_or_default());
        }
        if let Some(id) = &self.check_id {
            m.insert(META_CHECK_ID.to_owned(), id.clone());
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).to_string();
        match &self.check {
            CheckSpec::None => {
                m.insert(META_CHECK.to_owned(), "none".to_owned());
                m.insert(META_HEALTH_CHECK.to_owned(), "none".to_owned());
            }
            CheckSpec::Ttl { ttl, deregister_after } => {
                m.insert(META_CHECK.to_owned(), "ttl".to_owned());
                let (beat, unhealthy, remove) = ttl_lease(*ttl, *deregister_after);
                m.insert(META_HEARTBEAT_INTERVAL.to_owned(), ms(beat));
                m.insert(META_UNHEALTHY_AFTER.to_owned(), ms(unhealthy));
                m.insert(META_REMOVE_AFTER.to_owned(), ms(remove));
            }
            CheckSpec::Http { path } => {
                m.insert(META_CHECK.to_owned(), "http".to_owned());
                m.insert(META_HEALTH_CHECK.to_owned(), "http".to_owned());
                m.insert(META_HEALTH_CHECK_PATH.to_owned(), path.clone());
            }
            CheckSpec::Tcp => {
                m.insert(META_CHECK.to_owned(), "tcp".to_owned());
                m.insert(META_HEALTH_CHECK.to_owned(), "tcp".to_owned());
            }
        }
        m
    }

    /// Whether the instance lives by passes (ephemeral) rather than by the
    /// node's active checks or by nothing at all (persistent).
    pub(crate) fn ephemeral(&self) -> bool {
        matches!(self.check, CheckSpec::Ttl { .. })
    }
}

/// The lease of a TTL check: pass every TTL/2, critical after the TTL,
/// removed `DeregisterCriticalServiceAfter` later (a day without it).
fn ttl_lease(ttl: Duration, deregister_after: Option<Duration>) -> (Duration, Duration, Duration) {
    let remove = deregister_after.map_or(Duration::from_millis(LEASE_MAX_MS), |d| {
        (ttl + d.max(Duration::from_millis(DEREGISTER_MIN_MS))).min(Duration::from_millis(LEASE_MAX_MS))
    });
    (ttl / 2, ttl, remove)
}

fn parse_check(c: Value) -> Result<(CheckSpec, Option<String>, bool), DecodeError> {
    let mut c = Folded::new(c, "Check")?;
    for (key, what) in [
        ("script", "script"),
        ("args", "script"),
        ("grpc", "gRPC"),
        ("dockercontainerid", "Docker"),
        ("h2ping", "H2PING"),
        ("aliasservice", "alias"),
        ("osservice", "OS service"),
    ] {
        if c.non_empty(key) {
            return Err(bad(format!(
                "{what} checks are not supported by Muster; use a TTL, HTTP or TCP check"
            )));
        }
    }
    let check_id = c.string("checkid", "CheckID")?.or(c.string("id", "Check.ID")?).filter(|s| !s.is_empty());
    let status = c.string("status", "Check.Status")?.unwrap_or_default();
    let initially_passing = match status.as_str() {
        "" | "critical" => false,
        "passing" | "warning" => true,
        other => return Err(bad(format!("Invalid check status: {other:?}"))),
    };
    let deregister_after = c.duration("deregistercriticalserviceafter", "DeregisterCriticalServiceAfter")?;
    let ttl = c.duration("ttl", "TTL")?;
    let http = c.string("http", "HTTP")?.filter(|s| !s.is_empty());
    let tcp = c.string("tcp", "TCP")?.filter(|s| !s.is_empty());
    let spec = match (ttl, http, tcp) {
        (Some(ttl), None, None) => {
            let ms = ttl.as_millis();
            if ms < u128::from(TTL_MIN_MS) || ms >= u128::from(LEASE_MAX_MS) {
                return Err(bad(format!("TTL must be at least 2s and less than 24h, got {ttl:?}")));
            }
            CheckSpec::Ttl { ttl, deregister_after }
        }
        (None, Some(url), None) => CheckSpec::Http { path: url_path(&url)? },
        (None, None, Some(_)) => CheckSpec::Tcp,
        (None, None, None) => {
            return Err(bad("Invalid check: TTL, HTTP or TCP must be set (Muster runs no other kind)"));
        }
        _ => return Err(bad("Invalid check: give only one of TTL, HTTP and TCP")),
    };
    Ok((spec, check_id, initially_passing))
}

/// The path (and query) of an HTTP check URL; Muster checks it on the
/// service's own address and port.
fn url_path(url: &str) -> Result<String, DecodeError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad(format!("HTTP check URL must start with http:// or https://, got {url:?}")))?;
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    if path.len() > 256 || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("HTTP check path must be at most 256 printable characters"));
    }
    Ok(path.to_owned())
}

/// The status of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    /// Parses the `Status` of `PUT /v1/agent/check/update`.
    pub(crate) fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

/// A Muster instance as Consul sees it.
#[derive(Clone, Debug)]
pub(crate) struct Service<'a> {
    pub(crate) name: &'a str,
    pub(crate) id: String,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: BTreeMap<&'a str, &'a str>,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) weight: u64,
    pub(crate) status: Status,
    pub(crate) check_id: String,
    /// `ttl`, `http`, `tcp`, or empty for a service without a check.
    pub(crate) check_type: &'static str,
    pub(crate) output: &'static str,
    /// Registered through the Consul agent API (it has a Consul ID).
    pub(crate) registered: bool,
}

impl<'a> Service<'a> {
    /// The Consul view of one instance of `key`.
    pub(crate) fn of(key: &'a ServiceKey, i: &'a InstanceView) -> Service<'a> {
        let id = match i.metadata.get(META_ID) {
            Some(id) => id.to_owned(),
            None if i.cluster.as_str() == DEFAULT_CLUSTER => format!("{}:{}", i.ip, i.port),
            None => format!("{}:{}:{}", i.ip, i.port, i.cluster),
        };
        let tags = i.metadata.get(META_TAGS).and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
        let meta = i.metadata.iter().filter(|(k, _)| !RESERVED.iter().any(|p| k.starts_with(p))).collect();
        let check_type = match (i.metadata.get(META_CHECK), i.ephemeral) {
            (Some("ttl"), _) | (None, true) => "ttl",
            (Some("none"), _) => "",
            (Some("http"), _) => "http",
            (Some(_), _) => "tcp",
            (None, false) => match i.metadata.get(META_HEALTH_CHECK) {
                Some("none") => "",
                Some("http") => "http",
                _ => "tcp",
            },
        };
        let (status, output) = if !i.enabled {
            (Status::Critical, "disabled in Muster (takes no traffic)")
        } else if !i.healthy {
            (Status::Critical, if check_type == "ttl" { "TTL expired or failed" } else { "check failed" })
        } else if i.metadata.get(META_STATUS) == Some("warning") {
            (Status::Warning, "")
        } else {
            (Status::Passing, "")
        };
        let check_id = match i.metadata.get(META_CHECK_ID) {
            Some(c) => c.to_owned(),
            None => format!("service:{id}"),
        };
        Service {
            name: key.service.as_str(),
            id,
            tags,
            meta,
            address: i.ip.to_string(),
            port: i.port,
            weight: i.weight.round().max(0.0) as u64,
            status,
            check_id,
            check_type,
            output,
            registered: i.metadata.get(META_ID).is_some(),
        }
    }

    /// Whether every check passes (`?passing`).
    pub(crate) fn passing(&self) -> bool {
        self.status == Status::Passing
    }

    /// Whether it carries every tag of `tags` (`?tag=`, repeatable).
    pub(crate) fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags.contains(t))
    }

    /// The node it runs on, synthesized from its address (Consul's nodes
    /// are the hosts of the services; Muster has no agents).
    pub(crate) fn node(&self) -> Node {
        Node::of(&self.address)
    }

    /// `/v1/agent/services` and the `Service` of `/v1/health/service`.
    pub(crate) fn agent_service(&self) -> AgentService<'_> {
        AgentService {
            id: &self.id,
            service: self.name,
            tags: &self.tags,
            meta: &self.meta,
            port: self.port,
            address: &self.address,
            tagged_addresses: Map::new(),
            weights: Weights { passing: self.weight, warning: 1 },
            enable_tag_override: false,
            datacenter: DATACENTER,
            create_index: 1,
            modify_index: 1,
        }
    }

    /// The service's check.
    pub(crate) fn check(&self) -> Option<Check<'_>> {
        (!self.check_type.is_empty() || self.status != Status::Passing).then(|| Check {
            node: self.address.clone(),
            check_id: self.check_id.clone(),
            name: format!("Service '{}' check", self.name),
            status: self.status,
            notes: "",
            output: self.output,
            service_id: &self.id,
            service_name: self.name,
            service_tags: &self.tags,
            kind: self.check_type,
            interval: "",
            timeout: "",
            create_index: 1,
            modify_index: 1,
        })
    }

    /// The checks of `/v1/health/service`: the node's, then the service's.
    pub(crate) fn checks(&self) -> Vec<Check<'_>> {
        let mut checks = vec![Check::serf(self.address.clone())];
        checks.extend(self.check());
        checks
    }

    /// One entry of `/v1/catalog/service/{name}`.
    pub(crate) fn catalog_entry(&self) -> CatalogService<'_> {
        let node = self.node();
        CatalogService {
            id: node.id,
            node: node.node,
            address: node.address,
            datacenter: DATACENTER,
            tagged_addresses: node.tagged_addresses,
            node_meta: node.meta,
            service_kind: "",
            service_id: &self.id,
            service_name: self.name,
            service_tags: &self.tags,
            service_address: &self.address,
            service_tagged_addresses: Map::new(),
            service_weights: Weights { passing: self.weight, warning: 1 },
            service_meta: &self.meta,
            service_port: self.port,
            service_enable_tag_override: false,
            create_index: 1,
            modify_index: 1,
        }
    }
}

/// `Weights`.
#[derive(Serialize, Clone, Copy, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Weights {
    pub(crate) passing: u64,
    pub(crate) warning: u64,
}

/// A service of `/v1/agent/services`, also the `Service` of a health entry.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AgentService<'a> {
    #[serde(rename = "ID")]
    pub(crate) id: &'a str,
    pub(crate) service: &'a str,
    pub(crate) tags: &'a [String],
    pub(crate) meta: &'a BTreeMap<&'a str, &'a str>,
    pub(crate) port: u16,
    pub(crate) address: &'a str,
    pub(crate) tagged_addresses: Map<String, Value>,
    pub(crate) weights: Weights,
    pub(crate) enable_tag_override: bool,
    pub(crate) datacenter: &'static str,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// A check.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Check<'a> {
    pub(crate) node: String,
    #[serde(rename = "CheckID")]
    pub(crate) check_id: String,
    pub(crate) name: String,
    pub(crate) status: Status,
    pub(crate) notes: &'static str,
    pub(crate) output: &'static str,
    #[serde(rename = "ServiceID")]
    pub(crate) service_id: &'a str,
    pub(crate) service_name: &'a str,
    pub(crate) service_tags: &'a [String],
    #[serde(rename = "Type")]
    pub(crate) kind: &'static str,
    pub(crate) interval: &'static str,
    pub(crate) timeout: &'static str,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

impl Check<'static> {
    /// The node check every Consul node has: Muster answered, so it is alive.
    fn serf(node: String) -> Check<'static> {
        Check {
            node,
            check_id: "serfHealth".to_owned(),
            name: "Serf Health Status".to_owned(),
            status: Status::Passing,
            notes: "",
            output: "Agent alive and reachable",
            service_id: "",
            service_name: "",
            service_tags: &[],
            kind: "",
            interval: "",
            timeout: "",
            create_index: 1,
            modify_index: 1,
        }
    }
}

/// A node of the catalog, synthesized from a service address.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Node {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) address: String,
    pub(crate) datacenter: &'static str,
    pub(crate) tagged_addresses: BTreeMap<&'static str, String>,
    pub(crate) meta: BTreeMap<&'static str, &'static str>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

impl Node {
    /// The node named after `address`, with a UUID derived from it (the
    /// same on every Muster node).
    pub(crate) fn of(address: &str) -> Node {
        let mut h = muster_core::hash::StableHasher::new();
        let a = h.str(address).finish();
        let b = h.u64(0x6e6f_6465).finish();
        let id = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        );
        let tagged = [("lan", address.to_owned()), ("wan", address.to_owned())].into_iter().collect();
        Node {
            id,
            node: address.to_owned(),
            address: address.to_owned(),
            datacenter: DATACENTER,
            tagged_addresses: tagged,
            meta: [("consul-network-segment", "")].into_iter().collect(),
            create_index: 1,
            modify_index: 1,
        }
    }
}

/// An entry of `/v1/health/service/{name}`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry<'a> {
    pub(crate) node: Node,
    pub(crate) service: AgentService<'a>,
    pub(crate) checks: Vec<Check<'a>>,
}

/// An entry of `/v1/catalog/service/{name}`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CatalogService<'a> {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) address: String,
    pub(crate) datacenter: &'static str,
    pub(crate) tagged_addresses: BTreeMap<&'static str, String>,
    pub(crate) node_meta: BTreeMap<&'static str, &'static str>,
    pub(crate) service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    pub(crate) service_id: &'a str,
    pub(crate) service_name: &'a str,
    pub(crate) service_tags: &'a [String],
    pub(crate) service_address: &'a str,
    pub(crate) service_tagged_addresses: Map<String, Value>,
    pub(crate) service_weights: Weights,
    pub(crate) service_meta: &'a BTreeMap<&'a str, &'a str>,
    pub(crate) service_port: u16,
    pub(crate) service_enable_tag_override: bool,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "10x", "1e9s", "-1s", "10s5"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_registration_takes_keys_in_any_case_and_maps_a_ttl_check_onto_a_lease() {
        let body = br#"{"name":"web","ID":"web-1","address":"10.0.0.1","Port":80,"tags":["a"],
            "meta":{"v":"1"},"checks":[{"ttl":"10s","DeregisterCriticalServiceAfter":"2m"}],
            "weights":{"Passing":7,"Warning":1}}"#;
        let r = Registration::parse(body).unwrap();
        assert_eq!((r.name.as_str(), r.id.as_str(), r.port, r.weight), ("web", "web-1", 80, Some(7.0)));
        let m = r.metadata();
        assert_eq!(m[META_HEARTBEAT_INTERVAL], "5000");
        assert_eq!(m[META_UNHEALTHY_AFTER], "10000");
        assert_eq!(m[META_REMOVE_AFTER], "130000");
        assert_eq!(m[META_TAGS], r#"["a"]"#);
        assert!(r.ephemeral() && !r.initially_passing);
    }

    #[test]
    fn registrations_consul_would_refuse_or_muster_cannot_honour_are_refused() {
        for body in [
            &br#"{"id":"x"}"#[..],
            br#"{"name":"a","port":"80"}"#,
            br#"{"name":"a","tags":"x"}"#,
            br#"{"name":"a","meta":{"k":1}}"#,
            br#"{"name":"a","meta":{"muster.remove_after_ms":"1"}}"#,
            br#"{"name":"a","check":{"ttl":"soon"}}"#,
            br#"{"name":"a","check":{"ttl":"1s"}}"#,
            br#"{"name":"a","check":{"script":"/bin/true","interval":"5s"}}"#,
            br#"{"name":"a","checks":[{"ttl":"5s"},{"tcp":"a:1","interval":"5s"}]}"#,
            br#"{"name":"a","connect":{"sidecar_service":{}}}"#,
            br#"{"name":"a","weights":{"passing":0}}"#,
            br#"[1]"#,
            br#"{"name":"a""#,
        ] {
            assert!(Registration::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
