//! What the SDK sends and receives: instances, lists, services, nodes.
//!
//! Answers deserialize from the JSON of the OpenAPI (`docs/openapi.yaml`) and
//! serialize back to the same shape, so `muster instances --json` prints what
//! `GET /v1/instances` answers. Inputs are validated with the core's rules
//! before anything is sent.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use muster_core::model::parse_weight;
use muster_core::{InstanceKey, ServiceKey};
use serde::{Deserialize, Serialize};

use super::error::Error;

/// One instance of a service, as a server reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// `ip#port#cluster`.
    pub instance_id: String,
    /// The cluster within the service.
    pub cluster: String,
    /// Host: an IP address or a host name.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// Weight, 0 to 10000; traffic share in [`InstanceList::choose`].
    pub weight: f64,
    /// Whether it passes its health check (ephemeral: it beats).
    pub healthy: bool,
    /// Whether it takes traffic.
    pub enabled: bool,
    /// Whether it lives by heartbeats.
    pub ephemeral: bool,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// Whether the instance should get traffic: healthy and enabled.
    pub fn is_serving(&self) -> bool {
        self.healthy && self.enabled
    }

    /// `ip:port`, with brackets around an IPv6 address: ready for a URL or
    /// `TcpStream::connect`.
    pub fn addr(&self) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{}", self.ip, self.port)
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }
}

/// The instances of one service, as one server answered a query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceList {
    /// The namespace.
    pub namespace: String,
    /// The group.
    pub group: String,
    /// The service.
    pub service: String,
    /// 16 hex digits of the content; equal on every server holding the same
    /// instances, which is what lets a watch move between servers.
    pub checksum: String,
    /// Healthy instances fell below the service's protect threshold, so
    /// unhealthy ones are listed as candidates too.
    pub protect_threshold_reached: bool,
    /// Whether the server holds any record of the service. An empty list with
    /// `known: false` comes from a server that lost its memory (a restarted
    /// single node); the SDK does not let it wipe a cached list.
    pub known: bool,
    /// The instances.
    pub instances: Vec<Instance>,
}

impl InstanceList {
    /// `namespace/group/service`.
    pub fn service_name(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.group, self.service)
    }

    /// The instances that should get traffic: enabled and healthy, or only
    /// enabled when the protect threshold was reached (then the server lists
    /// unhealthy instances as candidates on purpose, so the survivors are not
    /// overrun).
    pub fn serving(&self) -> impl Iterator<Item = &Instance> {
        let protect = self.protect_threshold_reached;
        self.instances.iter().filter(move |i| i.enabled && (i.healthy || protect))
    }

    /// One of [`serving`](Self::serving), drawn at random in proportion to
    /// its weight; `None` if none has a positive weight.
    pub fn choose(&self) -> Option<&Instance> {
        super::choose::weighted(self.serving(), fastrand::f64())
    }
}

/// An instance to register: the builder of `POST /v1/instances`.
///
/// Namespace and group come from the [`Client`](super::Client); the rest
/// has the server's defaults (cluster `DEFAULT`, weight 1, enabled, healthy,
/// ephemeral, no metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceSpec {
    pub(crate) service: String,
    pub(crate) cluster: Option<String>,
    pub(crate) ip: String,
    pub(crate) port: u16,
    pub(crate) weight: Option<f64>,
    pub(crate) enabled: Option<bool>,
    pub(crate) ephemeral: Option<bool>,
    pub(crate) metadata: BTreeMap<String, String>,
}

impl InstanceSpec {
    /// An instance of `service` at `ip:port`.
    pub fn new(service: impl Into<String>, ip: impl Into<String>, port: u16) -> InstanceSpec {
        InstanceSpec {
            service: service.into(),
            cluster: None,
            ip: ip.into(),
            port,
            weight: None,
            enabled: None,
            ephemeral: None,
            metadata: BTreeMap::new(),
        }
    }

    /// The cluster within the service (default `DEFAULT`).
    #[must_use]
    pub fn cluster(mut self, cluster: impl Into<String>) -> InstanceSpec {
        self.cluster = Some(cluster.into());
        self
    }

    /// The weight, 0 to 10000 (default 1).
    #[must_use]
    pub fn weight(mut self, weight: f64) -> InstanceSpec {
        self.weight = Some(weight);
        self
    }

    /// Whether it takes traffic (default true).
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> InstanceSpec {
        self.enabled = Some(enabled);
        self
    }

    /// Whether it lives by heartbeats (default true). A persistent instance
    /// (`false`) never expires by silence; its registration does not beat.
    #[must_use]
    pub fn ephemeral(mut self, ephemeral: bool) -> InstanceSpec {
        self.ephemeral = Some(ephemeral);
        self
    }

    /// Adds a metadata entry.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> InstanceSpec {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Replaces the metadata.
    #[must_use]
    pub fn metadata_map(mut self, metadata: BTreeMap<String, String>) -> InstanceSpec {
        self.metadata = metadata;
        self
    }

    /// The key this instance has under `namespace` and `group`, validated.
    pub(crate) fn key(&self, namespace: &str, group: &str) -> Result<Key, Error> {
        InstanceRef {
            service: self.service.clone(),
            cluster: self.cluster.clone(),
            ip: self.ip.clone(),
            port: self.port,
        }
        .key(namespace, group)
    }

    /// Validates the fields the core can check without the server's limits.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(w) = self.weight {
            parse_weight(w)?;
        }
        Ok(())
    }
}

/// An instance by its key: service, cluster, host and port (namespace and
/// group from the [`Client`](super::Client)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRef {
    /// The service.
    pub service: String,
    /// The cluster (`DEFAULT` when `None`).
    pub cluster: Option<String>,
    /// The host.
    pub ip: String,
    /// The port.
    pub port: u16,
}

impl InstanceRef {
    /// The instance of `service` at `ip:port` in the default cluster.
    pub fn new(service: impl Into<String>, ip: impl Into<String>, port: u16) -> InstanceRef {
        InstanceRef { service: service.into(), cluster: None, ip: ip.into(), port }
    }

    /// The same instance in another cluster.
    #[must_use]
    pub fn cluster(mut self, cluster: impl Into<String>) -> InstanceRef {
        self.cluster = Some(cluster.into());
        self
    }

    pub(crate) fn key(&self, namespace: &str, group: &str) -> Result<Key, Error> {
        let service = ServiceKey::parse(Some(namespace), Some(group), &self.service)?;
        let key = InstanceKey::parse(service, self.cluster.as_deref(), &self.ip, i64::from(self.port))?;
        Ok(Key {
            namespace: key.service.namespace.as_str().to_owned(),
            group: key.service.group.as_str().to_owned(),
            service: key.service.service.as_str().to_owned(),
            cluster: key.cluster.as_str().to_owned(),
            ip: key.ip.to_string(),
            port: key.port,
        })
    }
}

/// A validated, canonical instance key: the JSON of an instance key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub(crate) struct Key {
    pub(crate) namespace: String,
    pub(crate) group: String,
    pub(crate) service: String,
    pub(crate) cluster: String,
    pub(crate) ip: String,
    pub(crate) port: u16,
}

impl Key {
    /// The query string naming this instance (for `DELETE`).
    pub(crate) fn query(&self) -> String {
        format!(
            "namespace={}&group={}&service={}&cluster={}&ip={}&port={}",
            encode(&self.namespace),
            encode(&self.group),
            encode(&self.service),
            encode(&self.cluster),
            encode(&self.ip),
            self.port
        )
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.ip.contains(':') { format!("[{}]", self.ip) } else { self.ip.clone() };
        write!(
            f,
            "{host}:{} ({}) of {}/{}/{}",
            self.port, self.cluster, self.namespace, self.group, self.service
        )
    }
}

/// A validated service key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ServiceRef {
    pub(crate) namespace: String,
    pub(crate) group: String,
    pub(crate) service: String,
}

impl ServiceRef {
    pub(crate) fn parse(namespace: &str, group: &str, service: &str) -> Result<ServiceRef, Error> {
        let key = ServiceKey::parse(Some(namespace), Some(group), service)?;
        Ok(ServiceRef {
            namespace: key.namespace.as_str().to_owned(),
            group: key.group.as_str().to_owned(),
            service: key.service.as_str().to_owned(),
        })
    }

    /// The query string naming this service.
    pub(crate) fn query(&self) -> String {
        format!(
            "namespace={}&group={}&service={}",
            encode(&self.namespace),
            encode(&self.group),
            encode(&self.service)
        )
    }

    /// A file name for this service's snapshot: `+` is not in any name's
    /// charset, so the three parts cannot collide or escape the directory.
    pub(crate) fn file_name(&self) -> String {
        format!("{}+{}+{}.json", self.namespace, self.group, self.service)
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.service)
    }
}

/// A change to a registered instance (`PATCH /v1/instances`); fields left
/// `None` stay as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceUpdate {
    /// New weight, 0 to 10000.
    pub weight: Option<f64>,
    /// Whether it takes traffic.
    pub enabled: Option<bool>,
    /// New metadata (replaces the old).
    pub metadata: Option<BTreeMap<String, String>>,
}

impl InstanceUpdate {
    /// Sets the weight.
    #[must_use]
    pub fn weight(mut self, weight: f64) -> InstanceUpdate {
        self.weight = Some(weight);
        self
    }

    /// Sets whether it takes traffic.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> InstanceUpdate {
        self.enabled = Some(enabled);
        self
    }

    /// Replaces the metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: BTreeMap<String, String>) -> InstanceUpdate {
        self.metadata = Some(metadata);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(w) = self.weight {
            parse_weight(w)?;
        }
        Ok(())
    }
}

/// The server's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// `ip#port#cluster`.
    pub instance_id: String,
    /// How often the instance must beat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Whether the instance was new (false: it was updated).
    pub created: bool,
}

impl Registered {
    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

/// The answer to one heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BeatOutcome {
    /// The server knows the instance; beat again within the interval.
    Alive {
        /// The interval the server asks for.
        heartbeat_interval: Duration,
    },
    /// The server does not know the instance: register it again.
    Unknown,
}

/// The JSON answer of `PUT /v1/instances/beat`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct BeatAnswer {
    pub(crate) unknown: Vec<usize>,
    pub(crate) heartbeat_interval_ms: u64,
}

/// What to list with [`Client::services`](super::Client::services).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListServices {
    /// Only this group; all groups when `None` (the client's group is not applied).
    pub group: Option<String>,
    /// Only names containing this, case-insensitive.
    pub search: Option<String>,
    /// Page number, from 1 (default 1).
    pub page: Option<u32>,
    /// Page size (server default 100, capped by its `max_page_size`).
    pub page_size: Option<u32>,
}

/// A page of the service listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePage {
    /// Services matching the filter, on all pages.
    pub total: u64,
    /// This page's number, from 1.
    pub page: u64,
    /// The page size.
    pub page_size: u64,
    /// The services of this page, sorted by group, then name.
    pub services: Vec<ServiceSummary>,
}

/// One service in a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// The namespace.
    pub namespace: String,
    /// The group.
    pub group: String,
    /// The service.
    pub service: String,
    /// Live instances.
    pub instances: u64,
    /// Live instances that are healthy.
    pub healthy_instances: u64,
    /// Protect threshold, 0 to 1.
    pub protect_threshold: f64,
    /// Service metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Created explicitly (stays without instances), not only through its instances.
    pub explicit: bool,
}

/// The cluster as one node sees it (`GET /v1/cluster/nodes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNodes {
    /// The answering node's id (its advertised address).
    #[serde(rename = "self")]
    pub me: String,
    /// Whether the answering node has loaded the registry.
    pub ready: bool,
    /// Every member, the answering node included.
    pub nodes: Vec<NodeInfo>,
}

/// One cluster member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id, its advertised address.
    pub id: String,
    /// `up`, `suspect` or `down`.
    pub state: String,
    /// Whether this is the answering node.
    pub is_self: bool,
    /// Milliseconds since the answering node last heard from it; `None` if never.
    pub last_seen_ms: Option<u64>,
    /// Milliseconds since its state last changed.
    pub state_since_ms: u64,
    /// Its wall clock minus the answering node's, ms (0 for the answering
    /// node; `None` before the first ping round trip, or from an older server).
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// The round trip that estimate comes from, ms: the offset is within half.
    #[serde(default)]
    pub rtt_ms: Option<u64>,
    /// `ok`, `skewed` or `unknown` (`None` from an older server).
    #[serde(default)]
    pub clock: Option<String>,
}

/// The health of one server, from [`Client::health`](super::Client::health).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    /// The server, `host:port`.
    pub server: String,
    /// It answers HTTP (`/health/live`).
    pub live: bool,
    /// It has loaded the registry and serves clients (`/health/ready`).
    pub ready: bool,
    /// Why it is not live or not ready, if it is not.
    pub problem: Option<String>,
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_and_canonical() {
        let k = InstanceRef::new("orders", "0:0::1", 80).key("public", "DEFAULT_GROUP").unwrap();
        assert_eq!(k.ip, "::1");
        assert_eq!(k.cluster, "DEFAULT");
        assert_eq!(k.to_string(), "[::1]:80 (DEFAULT) of public/DEFAULT_GROUP/orders");
        assert!(k.query().contains("ip=%3A%3A1"));
        let e = InstanceRef::new("orders", "10.0.0.1", 0).key("public", "g").unwrap_err();
        assert!(matches!(e, Error::InvalidInput { ref field, .. } if field == "port"), "{e}");
        let e = InstanceRef::new("bad name", "10.0.0.1", 1).key("public", "g").unwrap_err();
        assert!(matches!(e, Error::InvalidInput { ref field, .. } if field == "service"), "{e}");
        assert!(InstanceSpec::new("s", "10.0.0.1", 1).weight(-1.0).validate().is_err());
    }

    #[test]
    fn a_query_answer_round_trips_through_json() {
        let raw = r#"{"namespace":"public","group":"DEFAULT_GROUP","service":"orders","checksum":"00000000000000ff",
            "protect_threshold_reached":false,"known":true,"instances":[{"instance_id":"10.0.0.7#8080#DEFAULT",
            "cluster":"DEFAULT","ip":"10.0.0.7","port":8080,"weight":1.0,"healthy":true,"enabled":true,
            "ephemeral":true,"metadata":{"zone":"eu-1"}}]}"#;
        let list: InstanceList = serde_json::from_str(raw).unwrap();
        assert_eq!(list.instances[0].addr(), "10.0.0.7:8080");
        assert_eq!(list.service_name(), "public/DEFAULT_GROUP/orders");
        let again: InstanceList = serde_json::from_str(&serde_json::to_string(&list).unwrap()).unwrap();
        assert_eq!(again, list);
    }

    #[test]
    fn snapshot_file_names_cannot_escape_their_directory() {
        let s = ServiceRef::parse("public", "..", "..").unwrap();
        assert_eq!(s.file_name(), "public+..+...json");
        assert!(!s.file_name().contains('/'));
    }
}
