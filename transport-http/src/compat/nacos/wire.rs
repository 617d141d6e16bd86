//! Nacos v1 wire types: the JSON shapes of the real server's answers and of
//! the UDP push protocol, with Nacos's own field names.
//!
//! Written from the Nacos 1.x open-api documentation and its
//! `InstanceController`, `ServiceController`, `CatalogController`,
//! `OperatorController` and `PushService` (no code copied).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The answer of `GET /nacos/v1/ns/instance/list` (and the `data` of a push).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceInfo<'a> {
    /// `group@@name`.
    pub(crate) name: &'a str,
    pub(crate) group_name: &'a str,
    /// The `clusters` parameter of the request, echoed.
    pub(crate) clusters: &'a str,
    /// How long the client may cache the answer before it asks again.
    pub(crate) cache_millis: u64,
    pub(crate) hosts: Vec<Host<'a>>,
    /// Wall-clock milliseconds when the answer was rendered.
    pub(crate) last_ref_time: u64,
    /// Muster's checksum of the content (16 hex digits).
    pub(crate) checksum: String,
    #[serde(rename = "allIPs")]
    pub(crate) all_ips: bool,
    pub(crate) reach_protection_threshold: bool,
    pub(crate) valid: bool,
}

/// One instance in a listing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Host<'a> {
    /// `ip#port#cluster#group@@name`.
    pub(crate) instance_id: String,
    pub(crate) ip: String,
    pub(crate) port: u16,
    pub(crate) weight: f64,
    pub(crate) healthy: bool,
    pub(crate) enabled: bool,
    pub(crate) ephemeral: bool,
    pub(crate) cluster_name: &'a str,
    /// `group@@name`.
    pub(crate) service_name: &'a str,
    pub(crate) metadata: BTreeMap<&'a str, &'a str>,
    pub(crate) instance_heart_beat_interval: u64,
    pub(crate) instance_heart_beat_time_out: u64,
    pub(crate) ip_delete_timeout: u64,
    pub(crate) instance_id_generator: &'static str,
}

/// The answer of `GET /nacos/v1/ns/instance`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceDetail<'a> {
    /// `group@@name`.
    pub(crate) service: &'a str,
    pub(crate) ip: String,
    pub(crate) port: u16,
    pub(crate) cluster_name: &'a str,
    pub(crate) weight: f64,
    pub(crate) healthy: bool,
    pub(crate) enabled: bool,
    pub(crate) ephemeral: bool,
    pub(crate) instance_id: String,
    pub(crate) metadata: BTreeMap<&'a str, &'a str>,
}

/// The answer of `PUT /nacos/v1/ns/instance/beat`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BeatAnswer {
    pub(crate) client_beat_interval: u64,
    /// 10200 when the beat was taken, 20404 for an unknown instance.
    pub(crate) code: u32,
    /// Whether later beats may omit the `beat` payload.
    pub(crate) light_beat_enabled: bool,
}

/// The `beat` parameter of a heartbeat: the instance the client beats for.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BeatInfo {
    #[serde(default)]
    pub(crate) ip: Option<String>,
    #[serde(default)]
    pub(crate) port: Option<i64>,
    #[serde(default)]
    pub(crate) cluster: Option<String>,
    #[serde(default)]
    pub(crate) weight: Option<f64>,
    #[serde(default)]
    pub(crate) ephemeral: Option<bool>,
    #[serde(default)]
    pub(crate) metadata: Option<BTreeMap<String, serde_json::Value>>,
}

/// The answer of `GET /nacos/v1/ns/service`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceDetail<'a> {
    pub(crate) namespace_id: &'a str,
    pub(crate) group_name: &'a str,
    pub(crate) name: &'a str,
    pub(crate) protect_threshold: f64,
    pub(crate) metadata: BTreeMap<&'a str, &'a str>,
    pub(crate) selector: Selector,
    pub(crate) clusters: Vec<ClusterDetail<'a>>,
}

/// A service's instance selector; Muster has none.
#[derive(Debug, Serialize)]
pub(crate) struct Selector {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
}

/// A cluster of a service.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterDetail<'a> {
    pub(crate) name: &'a str,
    pub(crate) health_checker: Selector,
    pub(crate) metadata: BTreeMap<&'a str, &'a str>,
}

/// The answer of `GET /nacos/v1/ns/service/list`.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceList<'a> {
    pub(crate) count: usize,
    pub(crate) doms: Vec<&'a str>,
}

/// The answer of `GET /nacos/v1/ns/catalog/services`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CatalogServices<'a> {
    pub(crate) count: usize,
    pub(crate) service_list: Vec<CatalogService<'a>>,
}

/// One line of the catalog.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CatalogService<'a> {
    pub(crate) name: &'a str,
    pub(crate) group_name: &'a str,
    pub(crate) cluster_count: usize,
    pub(crate) ip_count: usize,
    pub(crate) healthy_instance_count: usize,
    pub(crate) trigger_flag: &'static str,
}

/// The answer of `GET /nacos/v1/ns/catalog/instances`.
#[derive(Debug, Serialize)]
pub(crate) struct CatalogInstances<'a> {
    pub(crate) count: usize,
    pub(crate) list: Vec<Host<'a>>,
}

/// The answer of `GET /nacos/v1/ns/operator/metrics`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OperatorMetrics {
    pub(crate) status: &'static str,
    pub(crate) service_count: usize,
    pub(crate) instance_count: usize,
    pub(crate) responsible_service_count: usize,
    pub(crate) responsible_instance_count: usize,
    pub(crate) client_count: usize,
    pub(crate) load: f64,
    pub(crate) cpu: f64,
    pub(crate) mem: f64,
}

/// The answer of `GET /nacos/v1/ns/operator/servers`.
#[derive(Debug, Serialize)]
pub(crate) struct Servers {
    pub(crate) servers: Vec<Server>,
}

/// One cluster member.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Server {
    pub(crate) ip: String,
    pub(crate) port: u16,
    /// `UP`, `SUSPICIOUS` or `DOWN`.
    pub(crate) state: &'static str,
    pub(crate) address: String,
    pub(crate) fail_access_cnt: u32,
    pub(crate) extend_info: BTreeMap<&'static str, String>,
}

/// The answer of `POST /nacos/v1/auth/login`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Login<'a> {
    pub(crate) access_token: &'a str,
    /// Seconds the token is good for.
    pub(crate) token_ttl: u64,
    pub(crate) global_admin: bool,
}

/// A UDP push to a subscriber: `{"type":"dom","data":"<list JSON>","lastRefTime":..}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PushPacket<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    /// The `/instance/list` answer as a JSON string.
    pub(crate) data: &'a str,
    /// Identifies the push; the client's ack echoes it.
    pub(crate) last_ref_time: u64,
}

/// What a client sends back over UDP: `push-ack`, `dump-ack`, `unknown-ack`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AckPacket {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The echoed push id: a number, or a string of one (the Java client).
    #[serde(default)]
    pub(crate) last_ref_time: Option<serde_json::Value>,
}

impl AckPacket {
    /// The echoed push id, if it is one.
    pub(crate) fn ref_time(&self) -> Option<u64> {
        match self.last_ref_time.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_matched_by_a_numeric_or_quoted_push_id() {
        let a: AckPacket =
            serde_json::from_str(r#"{"type":"push-ack","lastRefTime":"42","data":""}"#).unwrap();
        assert_eq!((a.kind.as_str(), a.ref_time()), ("push-ack", Some(42)));
        let a: AckPacket = serde_json::from_str(r#"{"type":"push-ack","lastRefTime":43}"#).unwrap();
        assert_eq!(a.ref_time(), Some(43));
        let a: AckPacket = serde_json::from_str(r#"{"type":"push-ack","lastRefTime":"x"}"#).unwrap();
        assert_eq!(a.ref_time(), None);
    }

    #[test]
    fn a_push_packet_carries_the_list_as_a_string() {
        let p = PushPacket { kind: "dom", data: r#"{"hosts":[]}"#, last_ref_time: 7 };
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "dom");
        assert_eq!(v["data"], r#"{"hosts":[]}"#);
        assert_eq!(v["lastRefTime"], 7);
    }
}
