//! Parsing of query strings and JSON bodies into typed values, with errors
//! that name the offending field. Nothing not listed for the route is
//! accepted, and no input panics.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::{InstanceKey, InvalidInput, ServiceKey};
use serde_json::{Map, Value};

use crate::error::{ApiError, echo};

/// A parsed query string: each listed parameter at most once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `raw` (without `?`), refusing parameters not in `allowed`,
    /// repeated ones and bad percent-encoding.
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = decode(k).ok_or_else(|| ApiError::invalid("query", "bad percent-encoding"))?;
            let v = decode(v).ok_or_else(|| ApiError::invalid(k.as_str(), "bad percent-encoding"))?;
            if !allowed.contains(&k.as_str()) {
                let accepted = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
                return Err(ApiError::invalid(k, format!("unknown query parameter; accepted: {accepted}")));
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::invalid(k, "given more than once"));
            }
            pairs.push((k, v));
        }
        Ok(Query { pairs })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| ApiError::missing(name))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name).map(|v| parse_bool(name, v)).transpose()
    }

    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::invalid(name, format!("must be an integer, got {:?}", echo(v))))
            })
            .transpose()
    }

    /// The service key named by `namespace`, `group` and `service` (or the path segment).
    pub(crate) fn service_key(&self, service: Option<&str>) -> Result<ServiceKey, ApiError> {
        let service = match service {
            Some(s) => s,
            None => self.require("service")?,
        };
        Ok(ServiceKey::parse(self.get("namespace"), self.get("group"), service)?)
    }

    /// The instance key named by the key parameters.
    pub(crate) fn instance_key(&self) -> Result<InstanceKey, ApiError> {
        let service = self.service_key(None)?;
        let ip = self.require("ip")?;
        let port = self.int("port")?.ok_or_else(|| ApiError::missing("port"))?;
        Ok(InstanceKey::parse(service, self.get("cluster"), ip, port)?)
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid(name, format!("must be true or false, got {:?}", echo(v)))),
    }
}

/// Decodes `application/x-www-form-urlencoded` text; `None` on bad escapes or UTF-8.
pub(crate) fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parses a wait such as `500ms`, `30s` or `2m`.
pub(crate) fn parse_duration(name: &str, v: &str) -> Result<Duration, ApiError> {
    let bad =
        || ApiError::invalid(name, format!("must be a duration such as 500ms, 30s or 2m, got {:?}", echo(v)));
    let split = v.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// Parses JSON, refusing any object that repeats a key (serde_json would
/// keep the last one silently): 400 naming the repeated field, with the same
/// `a.b` / `beats[2].ip` paths as the other errors.
pub(crate) fn parse_unique(body: &[u8]) -> Result<Value, ApiError> {
    use serde::de::DeserializeSeed;
    let repeated = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Unique { path: String::new(), repeated: &repeated }.deserialize(&mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match (parsed, repeated.into_inner()) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(field)) => Err(ApiError::invalid(field, "given more than once")),
        (Err(e), None) => Err(ApiError::bad_json(format!("body is not valid JSON: {e}"))),
    }
}

/// Builds a [`Value`] like serde_json does, recording the path of the first
/// repeated key.
struct Unique<'r> {
    path: String,
    repeated: &'r std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Unique<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Unique<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = a.next_element_seed(Unique {
            path: format!("{}[{}]", self.path, out.len()),
            repeated: self.repeated,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = a.next_key::<String>()? {
            let path = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
            if out.contains_key(&k) {
                *self.repeated.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom("repeated key"));
            }
            let v = a.next_value_seed(Unique { path, repeated: self.repeated })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// A JSON object being taken apart field by field.
#[derive(Debug)]
pub(crate) struct Obj {
    map: Map<String, Value>,
    /// Prefix of field names in errors, e.g. `beats[2].`.
    prefix: String,
}

impl Obj {
    /// Parses a body that must be a JSON object with only `allowed` fields.
    pub(crate) fn from_body(body: &[u8], allowed: &[&str]) -> Result<Obj, ApiError> {
        if body.is_empty() {
            return Err(ApiError::bad_json("a JSON object body is required"));
        }
        let value = parse_unique(body)?;
        Obj::from_value(value, allowed, String::new())
    }

    /// Takes a value that must be an object with only `allowed` fields.
    pub(crate) fn from_value(value: Value, allowed: &[&str], prefix: String) -> Result<Obj, ApiError> {
        let Value::Object(map) = value else {
            let what =
                if prefix.is_empty() { "body".to_owned() } else { prefix.trim_end_matches('.').to_owned() };
            return Err(ApiError::invalid(what, "must be a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                format!("{prefix}{unknown}"),
                format!("unknown field; accepted: {}", allowed.join(", ")),
            ));
        }
        Ok(Obj { map, prefix })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn field(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Takes a field; `null` counts as absent.
    pub(crate) fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    pub(crate) fn str(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(ApiError::invalid(self.field(name), format!("must be a string, got {}", kind(&other))))
            }
        }
    }

    pub(crate) fn req_str(&mut self, name: &str) -> Result<String, ApiError> {
        self.str(name)?.ok_or_else(|| ApiError::missing(&self.field(name)))
    }

    pub(crate) fn int(&mut self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.as_i64().unwrap_or(i64::MAX))),
            Some(other) => {
                Err(ApiError::invalid(self.field(name), format!("must be an integer, got {}", kind(&other))))
            }
        }
    }

    pub(crate) fn req_int(&mut self, name: &str) -> Result<i64, ApiError> {
        self.int(name)?.ok_or_else(|| ApiError::missing(&self.field(name)))
    }

    pub(crate) fn num(&mut self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) => Ok(Some(f)),
                None => Err(ApiError::invalid(self.field(name), "must be a number")),
            },
            Some(other) => {
                Err(ApiError::invalid(self.field(name), format!("must be a number, got {}", kind(&other))))
            }
        }
    }

    pub(crate) fn bool(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(ApiError::invalid(
                self.field(name),
                format!("must be true or false, got {}", kind(&other)),
            )),
        }
    }

    /// A map of strings to strings.
    pub(crate) fn string_map(&mut self, name: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => {
                            return Err(ApiError::invalid(
                                self.field(name),
                                format!("values must be strings; {k:?} is {}", kind(&other)),
                            ));
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(other) => Err(ApiError::invalid(
                self.field(name),
                format!("must be an object of strings, got {}", kind(&other)),
            )),
        }
    }

    /// The instance key in the fields `namespace`, `group`, `service`,
    /// `cluster`, `ip`, `port`.
    pub(crate) fn instance_key(&mut self) -> Result<InstanceKey, ApiError> {
        let namespace = self.str("namespace")?;
        let group = self.str("group")?;
        let service = self.req_str("service")?;
        let cluster = self.str("cluster")?;
        let ip = self.req_str("ip")?;
        let port = self.req_int("port")?;
        let key = ServiceKey::parse(namespace.as_deref(), group.as_deref(), &service)
            .and_then(|s| InstanceKey::parse(s, cluster.as_deref(), &ip, port))
            .map_err(|e| self.invalid(e))?;
        Ok(key)
    }

    /// A core validation error, with this object's field prefix.
    pub(crate) fn invalid(&self, e: InvalidInput) -> ApiError {
        ApiError::invalid(self.field(e.field.as_str()), e.to_string())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded_and_checked() {
        let q = Query::parse(Some("service=a%20b&group=g+h"), &["service", "group"]).unwrap();
        assert_eq!(q.get("service"), Some("a b"));
        assert_eq!(q.get("group"), Some("g h"));
        let e = Query::parse(Some("servce=x"), &["service"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("servce"));
        let e = Query::parse(Some("service=a&service=b"), &["service"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("service"));
        assert!(Query::parse(Some("service=%zz"), &["service"]).is_err());
        assert!(Query::parse(Some("service=%ff"), &["service"]).is_err());
        assert!(Query::parse(Some("service=%"), &["service"]).is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("wait", "500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("wait", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("wait", "2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "30", "s", "1h", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration("wait", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_fields_are_typed_and_named_in_errors() {
        let body = br#"{"service":"s","ip":"10.0.0.1","port":"80"}"#;
        let mut o = Obj::from_body(body, &["service", "ip", "port"]).unwrap();
        assert_eq!(o.instance_key().unwrap_err().field.as_deref(), Some("port"));
        let e = Obj::from_body(br#"{"service":"s","x":1}"#, &["service"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x"));
        assert_eq!(Obj::from_body(b"{", &[]).unwrap_err().code, "bad_json");
        assert_eq!(Obj::from_body(b"[]", &[]).unwrap_err().field.as_deref(), Some("body"));
        let mut o = Obj::from_body(br#"{"metadata":{"a":1}}"#, &["metadata"]).unwrap();
        assert_eq!(o.string_map("metadata").unwrap_err().field.as_deref(), Some("metadata"));
        let mut o = Obj::from_body(br#"{"port":1.5}"#, &["port"]).unwrap();
        assert!(o.int("port").is_err());
    }

    #[test]
    fn a_repeated_json_key_is_refused_by_its_path() {
        let field =
            |body: &str| Obj::from_body(body.as_bytes(), &["a", "beats", "metadata"]).unwrap_err().field;
        assert_eq!(field(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(field(r#"{"metadata":{"k":"1","k":"2"}}"#).as_deref(), Some("metadata.k"));
        assert_eq!(field(r#"{"beats":[{},{"ip":1,"ip":2}]}"#).as_deref(), Some("beats[1].ip"));
        assert_eq!(Obj::from_body(br#"{"a":1} x"#, &["a"]).unwrap_err().code, "bad_json");
        let v = parse_unique(br#"{"a":[1,-0.5,"s",null,true,{"b":{}}]}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,-0.5,"s",null,true,{"b":{}}]}));
    }

    #[test]
    fn core_validation_errors_carry_the_prefix() {
        let v: Value = serde_json::from_str(r#"{"service":"s","ip":"10.0.0.1","port":0}"#).unwrap();
        let mut o = Obj::from_value(v, &["service", "ip", "port"], "beats[3].".to_owned()).unwrap();
        assert_eq!(o.instance_key().unwrap_err().field.as_deref(), Some("beats[3].port"));
    }
}
