//! Typed fast paths for the hottest bodies (register, beat).
//!
//! A body that deserialises straight into these borrowed structs, with no
//! unknown field, and whose values the core accepts, skips the generic
//! `serde_json::Value` parser of [`super::input`]. Anything else returns
//! `None` and takes the generic path, which accepts exactly the same bodies
//! and words every error; so the fast path changes speed, never behaviour.

use std::borrow::Cow;
use std::collections::BTreeMap;

use muster_core::{InstanceKey, RegisterRequest, ServiceKey};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyJson<'a> {
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow, default)]
    cluster: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ip: Cow<'a, str>,
    port: i64,
}

impl KeyJson<'_> {
    fn key(&self) -> Option<InstanceKey> {
        instance_key(&self.namespace, &self.group, &self.service, &self.cluster, &self.ip, self.port)
    }
}

/// The instance key of a body's key fields, if the core accepts them.
fn instance_key(
    namespace: &Option<Cow<'_, str>>,
    group: &Option<Cow<'_, str>>,
    service: &str,
    cluster: &Option<Cow<'_, str>>,
    ip: &str,
    port: i64,
) -> Option<InstanceKey> {
    let service = ServiceKey::parse(namespace.as_deref(), group.as_deref(), service).ok()?;
    InstanceKey::parse(service, cluster.as_deref(), ip, port).ok()
}

/// The key fields repeat [`KeyJson`]'s: `#[serde(flatten)]` cannot be
/// combined with `deny_unknown_fields`, which the fast path needs to stay
/// equal to the generic parser.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterJson<'a> {
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow, default)]
    cluster: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ip: Cow<'a, str>,
    port: i64,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    healthy: Option<bool>,
    #[serde(default)]
    ephemeral: Option<bool>,
    #[serde(default)]
    metadata: Option<UniqueMap>,
}

/// A map of strings that refuses a repeated key (the generic path then names it).
struct UniqueMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UniqueMap, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<UniqueMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = a.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A registration, if the body is a well-formed one.
pub(super) fn register(body: &[u8]) -> Option<RegisterRequest> {
    let r: RegisterJson<'_> = serde_json::from_slice(body).ok()?;
    let key = instance_key(&r.namespace, &r.group, &r.service, &r.cluster, &r.ip, r.port)?;
    Some(RegisterRequest {
        key,
        weight: r.weight,
        enabled: r.enabled,
        healthy: r.healthy,
        ephemeral: r.ephemeral,
        metadata: r.metadata.map(|m| m.0).unwrap_or_default(),
        health_reported: false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BeatsJson<'a> {
    #[serde(borrow)]
    beats: Vec<KeyJson<'a>>,
}

/// The keys of a heartbeat body (one key, or `{beats: [keys]}`), if it is a
/// well-formed one; whether it was a batch.
pub(super) fn beats(body: &[u8]) -> Option<(Vec<InstanceKey>, bool)> {
    if let Ok(one) = serde_json::from_slice::<KeyJson<'_>>(body) {
        return Some((vec![one.key()?], false));
    }
    let many: BeatsJson<'_> = serde_json::from_slice(body).ok()?;
    let keys = many.beats.iter().map(KeyJson::key).collect::<Option<Vec<_>>>()?;
    Some((keys, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_bodies_take_the_fast_path() {
        let r =
            register(br#"{"service":"orders","ip":"10.0.0.1","port":80,"weight":2,"metadata":{"a":"b"}}"#);
        let r = r.unwrap();
        assert_eq!((r.weight, r.key.port, r.metadata.len()), (Some(2.0), 80, 1));
        let (keys, batch) = beats(br#"{"beats":[{"service":"a","ip":"10.0.0.1","port":1}]}"#).unwrap();
        assert_eq!((keys.len(), batch), (1, true));
        assert!(!beats(br#"{"service":"a","ip":"10.0.0.1","port":1}"#).unwrap().1);
    }

    #[test]
    fn anything_unusual_leaves_it_to_the_generic_path() {
        for body in [
            &br#"{"service":"orders","ip":"10.0.0.1","port":80,"extra":1}"#[..],
            br#"{"service":"orders","ip":"10.0.0.1","port":80.0}"#,
            br#"{"service":"orders","ip":"10.0.0.1","port":0}"#,
            br#"{"service":"orders","ip":"10.0.0.1","port":80,"port":81}"#,
            br#"{"service":"orders","ip":"10.0.0.1","port":80,"metadata":{"a":"1","a":"2"}}"#,
            br#"not json"#,
        ] {
            assert!(register(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
        assert!(beats(br#"{"beats":[{"service":"a","ip":"x y","port":1}]}"#).is_none());
        assert!(beats(br#"{"beats":[],"service":"a"}"#).is_none());
    }
}
