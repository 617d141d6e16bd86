//! Eureka wire types: what clients send (an `instance` in JSON or XML) and
//! what they read (instances, applications, deltas), in both encodings.
//!
//! Eureka's two encodings are one tree: the JSON codec writes an XML
//! attribute `enabled` as the member `"@enabled"` and an element's text
//! beside attributes as `"$"` (`"port":{"$":8080,"@enabled":"true"}`), and a
//! list as repeated elements. So bodies are read into a [`Value`] (XML
//! through [`xml_to_value`]) and answers are built as a [`Value`] and
//! written as JSON or, through [`value_to_xml`], as XML.
//!
//! What Muster keeps of an Eureka instance: its key (app = service, `ipAddr`,
//! `port`), `enabled` (status UP), the lease (`leaseInfo`, as the core's
//! per-instance lease keys), and the Eureka-only fields as `eureka.*`
//! metadata, which Eureka answers show in their own fields, not as metadata.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::lease::{META_HEARTBEAT_INTERVAL, META_REMOVE_AFTER, META_UNHEALTHY_AFTER};
use muster_core::{InstanceKey, InstanceView, Name, RegisterRequest, ServiceKey};
use quick_xml::events::Event;
use serde_json::{Map, Value, json};

use super::EurekaError;

/// Prefix of the metadata keys holding Eureka-only fields.
pub(super) const META_PREFIX: &str = "eureka.";
pub(super) const M_INSTANCE_ID: &str = "eureka.instanceId";
pub(super) const M_STATUS: &str = "eureka.status";
pub(super) const M_OVERRIDDEN: &str = "eureka.overriddenStatus";
pub(super) const M_DIRTY: &str = "eureka.lastDirtyTimestamp";
const M_REGISTERED: &str = "eureka.registrationTimestamp";
const M_HOST_NAME: &str = "eureka.hostName";
const M_VIP: &str = "eureka.vipAddress";
const M_SVIP: &str = "eureka.secureVipAddress";
const M_PORT_ENABLED: &str = "eureka.portEnabled";
const M_SECURE_PORT: &str = "eureka.securePort";
const M_SECURE_PORT_ENABLED: &str = "eureka.securePortEnabled";
const M_COUNTRY: &str = "eureka.countryId";
const M_DC_CLASS: &str = "eureka.dataCenterClass";
const M_DC_NAME: &str = "eureka.dataCenterName";
/// Eureka URL fields kept as they are.
const URLS: [(&str, &str); 4] = [
    ("homePageUrl", "eureka.homePageUrl"),
    ("statusPageUrl", "eureka.statusPageUrl"),
    ("healthCheckUrl", "eureka.healthCheckUrl"),
    ("secureHealthCheckUrl", "eureka.secureHealthCheckUrl"),
];
const DEFAULT_DC_CLASS: &str = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo";
/// Eureka's defaults of a `leaseInfo` without values (seconds).
const RENEWAL_SECS_DEFAULT: u64 = 30;
const DURATION_SECS_DEFAULT: u64 = 90;
/// Eureka's default port when an instance names none.
const PORT_DEFAULT: i64 = 7001;
/// Deepest XML nesting accepted in a body.
const XML_DEPTH_MAX: usize = 16;

/// The Eureka instance statuses.
pub(super) const STATUSES: [&str; 5] = ["UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"];

/// Checks an Eureka status value.
pub(super) fn parse_status(s: &str) -> Result<&'static str, EurekaError> {
    STATUSES.iter().copied().find(|k| k.eq_ignore_ascii_case(s)).ok_or_else(|| {
        EurekaError::bad_request(format!(
            "status {s:?} is not one of UP, DOWN, STARTING, OUT_OF_SERVICE, UNKNOWN"
        ))
    })
}

/// Reads a register body: `{"instance": {...}}` in JSON or `<instance>` in XML.
pub(super) fn read_instance(body: &[u8], xml: bool) -> Result<Value, EurekaError> {
    let root = if xml || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<') {
        let (name, value) = xml_to_value(body)?;
        if name != "instance" {
            return Err(EurekaError::bad_request(format!(
                "the body's root element is <{name}>, not <instance>"
            )));
        }
        return match value {
            Value::Object(_) => Ok(value),
            _ => Err(EurekaError::bad_request("<instance> has no fields")),
        };
    } else {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| EurekaError::bad_request(format!("the body is not JSON: {e}")))?
    };
    match root {
        Value::Object(mut o) => match o.remove("instance") {
            Some(v @ Value::Object(_)) => Ok(v),
            _ => Err(EurekaError::bad_request("the body must be {\"instance\": {...}}")),
        },
        _ => Err(EurekaError::bad_request("the body must be {\"instance\": {...}}")),
    }
}

/// The text of a scalar or of an element's `$`.
fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Object(o) => o.get("$").and_then(text),
        _ => None,
    }
}

fn field<'a>(o: &'a Value, name: &str) -> Option<Cow<'a, str>> {
    o.get(name).and_then(text).filter(|s| !s.trim().is_empty())
}

fn number(o: &Value, name: &str) -> Result<Option<i64>, EurekaError> {
    match field(o, name) {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| EurekaError::bad_request(format!("{name} must be a whole number, got {s:?}"))),
    }
}

fn enabled_attr(o: &Value, name: &str) -> Option<bool> {
    let v = o.get(name)?.get("@enabled")?;
    text(v).map(|s| s.eq_ignore_ascii_case("true"))
}

/// Translates an Eureka instance into a registration of `app` in `service`
/// (the app's service key). `now_ms` is the wall clock, for Eureka's
/// timestamps.
pub(super) fn registration(
    service: ServiceKey,
    app: &str,
    inst: &Value,
    now_ms: u64,
) -> Result<RegisterRequest, EurekaError> {
    // The checks and messages of Eureka's own register resource.
    let host_name = field(inst, "hostName").ok_or_else(|| EurekaError::bad_request("Missing hostname"))?;
    let ip = field(inst, "ipAddr").ok_or_else(|| EurekaError::bad_request("Missing ip address"))?;
    let body_app = field(inst, "app").ok_or_else(|| EurekaError::bad_request("Missing appName"))?;
    if !body_app.eq_ignore_ascii_case(app) {
        return Err(EurekaError::bad_request(format!(
            "Mismatched appName, expecting {app} but was {body_app}"
        )));
    }
    let dc = inst.get("dataCenterInfo").ok_or_else(|| EurekaError::bad_request("Missing dataCenterInfo"))?;
    let instance_id = field(inst, "instanceId").unwrap_or_else(|| host_name.clone());
    let port = number(inst, "port")?.unwrap_or(PORT_DEFAULT);
    let key = InstanceKey::parse(service, None, ip.trim(), port).map_err(EurekaError::invalid)?;
    let status = field(inst, "status").map(|s| parse_status(&s)).transpose()?.unwrap_or("UP");
    let overridden = field(inst, "overriddenstatus")
        .or_else(|| field(inst, "overriddenStatus"))
        .map(|s| parse_status(&s))
        .transpose()?
        .filter(|s| *s != "UNKNOWN");

    let mut m: BTreeMap<String, String> = BTreeMap::new();
    if let Some(Value::Object(user)) = inst.get("metadata") {
        for (k, v) in user {
            // `@class` and other codec markers are not metadata.
            if k.starts_with(['@', '$']) || k.starts_with(META_PREFIX) || k.starts_with("muster.") {
                continue;
            }
            if let Some(v) = text(v) {
                m.insert(k.clone(), v.into_owned());
            }
        }
    }
    let mut put = |k: &str, v: &str| {
        m.insert(k.to_owned(), v.to_owned());
    };
    put(M_INSTANCE_ID, &instance_id);
    if host_name != ip {
        put(M_HOST_NAME, &host_name);
    }
    put(M_STATUS, status);
    if let Some(o) = overridden {
        put(M_OVERRIDDEN, o);
    }
    for (name, key) in [("vipAddress", M_VIP), ("secureVipAddress", M_SVIP)] {
        if let Some(v) = field(inst, name) {
            put(key, &v);
        }
    }
    for (name, key) in URLS {
        if let Some(v) = field(inst, name) {
            put(key, &v);
        }
    }
    if enabled_attr(inst, "port") == Some(false) {
        put(M_PORT_ENABLED, "false");
    }
    if let Some(p) = number(inst, "securePort")? {
        put(M_SECURE_PORT, &p.to_string());
    }
    if enabled_attr(inst, "securePort") == Some(true) {
        put(M_SECURE_PORT_ENABLED, "true");
    }
    if let Some(c) = number(inst, "countryId")?.filter(|c| *c != 1) {
        put(M_COUNTRY, &c.to_string());
    }
    if let Some(class) = dc.get("@class").and_then(text).filter(|c| c != DEFAULT_DC_CLASS) {
        put(M_DC_CLASS, &class);
    }
    if let Some(name) = field(dc, "name").filter(|n| n != "MyOwn") {
        put(M_DC_NAME, &name);
    }
    let dirty = number(inst, "lastDirtyTimestamp")?.map_or(now_ms, |t| u64::try_from(t).unwrap_or(0));
    put(M_DIRTY, &dirty.to_string());
    put(M_REGISTERED, &now_ms.to_string());
    let lease = inst.get("leaseInfo");
    let secs = |name: &str, default: u64| -> Result<u64, EurekaError> {
        match lease {
            Some(l) => {
                Ok(number(l, name)?.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0).unwrap_or(default))
            }
            None => Ok(default),
        }
    };
    let (beat, unhealthy, remove) = lease_ms(
        secs("renewalIntervalInSecs", RENEWAL_SECS_DEFAULT)?,
        secs("durationInSecs", DURATION_SECS_DEFAULT)?,
    );
    put(META_HEARTBEAT_INTERVAL, &beat.to_string());
    put(META_UNHEALTHY_AFTER, &unhealthy.to_string());
    put(META_REMOVE_AFTER, &remove.to_string());

    let mut req = RegisterRequest::new(key);
    req.enabled = Some(overridden.unwrap_or(status) == "UP");
    req.ephemeral = Some(true);
    req.metadata = m;
    Ok(req)
}

/// The core lease of an Eureka lease: beat every `renewal` seconds, removed
/// after `duration` seconds of silence (Eureka's eviction), unhealthy one
/// second before that (Eureka has no unhealthy state; the core needs
/// interval < unhealthy < remove, each 1 s to 1 day).
pub(super) fn lease_ms(renewal_secs: u64, duration_secs: u64) -> (u64, u64, u64) {
    const MIN: u64 = 1_000;
    const MAX: u64 = 86_400_000;
    let beat = renewal_secs.saturating_mul(1000).clamp(MIN, MAX - 2 * MIN);
    let remove = duration_secs.saturating_mul(1000).clamp(beat + 2 * MIN, MAX);
    (beat, remove - MIN, remove)
}

/// The Eureka id of an instance: the registered `instanceId`, or for an
/// instance registered through another API `ip:port` (`ip:port:cluster`
/// outside the default cluster).
pub(super) fn instance_id(i: &InstanceView) -> Cow<'_, str> {
    if let Some(id) = i.metadata.get(M_INSTANCE_ID) {
        return Cow::Borrowed(id);
    }
    if i.cluster.as_str() == muster_core::model::DEFAULT_CLUSTER {
        Cow::Owned(format!("{}:{}", i.ip, i.port))
    } else {
        Cow::Owned(format!("{}:{}:{}", i.ip, i.port, i.cluster))
    }
}

/// The Eureka status of an instance: an override first; a Muster-unhealthy
/// instance is DOWN; a disabled one shows its registered status if that is
/// not UP, else OUT_OF_SERVICE; otherwise UP.
pub(super) fn status(i: &InstanceView) -> &str {
    if let Some(o) = i.metadata.get(M_OVERRIDDEN) {
        return o;
    }
    if !i.healthy {
        return "DOWN";
    }
    if !i.enabled {
        return match i.metadata.get(M_STATUS) {
            Some(s) if s != "UP" => s,
            _ => "OUT_OF_SERVICE",
        };
    }
    "UP"
}

/// Whether the instance's metadata key is an Eureka field or a lease key
/// (not shown as Eureka metadata).
fn internal_key(k: &str) -> bool {
    k.starts_with(META_PREFIX) || k.starts_with("muster.")
}

/// An instance as Eureka renders it. `app` is its app name (upper case);
/// `timings` give the lease of instances registered without one.
pub(super) fn instance_value(
    app: &str,
    i: &InstanceView,
    default_lease: (Duration, Duration),
    action: &str,
) -> Value {
    let meta = |k: &str| i.metadata.get(k);
    let ms =
        |k: &str, d: Duration| meta(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(d.as_millis() as u64);
    let renewal = ms(META_HEARTBEAT_INTERVAL, default_lease.0) / 1000;
    let duration = ms(META_REMOVE_AFTER, default_lease.1) / 1000;
    let registered: u64 = meta(M_REGISTERED).and_then(|v| v.parse().ok()).unwrap_or(0);
    let dirty: u64 = meta(M_DIRTY).and_then(|v| v.parse().ok()).unwrap_or(registered);
    let ip = i.ip.to_string();
    let host = meta(M_HOST_NAME).map_or(ip.as_str(), |h| h);
    let lower = app.to_ascii_lowercase();
    let vip = meta(M_VIP).unwrap_or(&lower);
    let svip = meta(M_SVIP).unwrap_or(vip);
    let mut metadata = Map::new();
    for (k, v) in i.metadata.iter() {
        if !internal_key(k) && !k.starts_with(['@', '$']) {
            metadata.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    }
    if metadata.is_empty() {
        metadata.insert("@class".to_owned(), json!("java.util.Collections$EmptyMap"));
    }
    let home = meta(URLS[0].1).map_or_else(|| format!("http://{host}:{}/", i.port), str::to_owned);
    let mut v = json!({
        "instanceId": instance_id(i),
        "hostName": host,
        "app": app,
        "ipAddr": ip,
        "status": status(i),
        "overriddenstatus": meta(M_OVERRIDDEN).unwrap_or("UNKNOWN"),
        "port": {"$": i.port, "@enabled": meta(M_PORT_ENABLED).unwrap_or("true")},
        "securePort": {
            "$": meta(M_SECURE_PORT).and_then(|p| p.parse::<u16>().ok()).unwrap_or(443),
            "@enabled": meta(M_SECURE_PORT_ENABLED).unwrap_or("false"),
        },
        "countryId": meta(M_COUNTRY).and_then(|c| c.parse::<i64>().ok()).unwrap_or(1),
        "dataCenterInfo": {
            "@class": meta(M_DC_CLASS).unwrap_or(DEFAULT_DC_CLASS),
            "name": meta(M_DC_NAME).unwrap_or("MyOwn"),
        },
        "leaseInfo": {
            "renewalIntervalInSecs": renewal,
            "durationInSecs": duration,
            "registrationTimestamp": registered,
            "lastRenewalTimestamp": registered,
            "evictionTimestamp": 0,
            "serviceUpTimestamp": registered,
        },
        "metadata": metadata,
        "homePageUrl": home,
        "vipAddress": vip,
        "secureVipAddress": svip,
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": registered.to_string(),
        "lastDirtyTimestamp": dirty.to_string(),
        "actionType": action,
    });
    if let Value::Object(o) = &mut v {
        for (name, key) in &URLS[1..] {
            if let Some(u) = meta(key) {
                o.insert((*name).to_owned(), Value::String(u.to_owned()));
            }
        }
    }
    v
}

/// The Eureka app name of a service: its name in upper case.
pub(super) fn app_name(service: &Name) -> String {
    service.as_str().to_ascii_uppercase()
}

/// Eureka's `apps__hashcode`: `STATUS_count_` for each status present, in
/// status name order (`DOWN_1_UP_3_`); the client compares it with its own
/// after applying a delta and fetches everything on a mismatch.
pub(super) fn hashcode(counts: &BTreeMap<&str, usize>) -> String {
    let mut s = String::new();
    for (status, n) in counts {
        s.push_str(status);
        s.push('_');
        s.push_str(&n.to_string());
        s.push('_');
    }
    s
}

/// An `applications` answer: its delta version, hashcode and apps
/// (`(app name, rendered instances)`).
pub(super) fn applications_value(version: u64, hashcode: &str, apps: Vec<(String, Vec<Value>)>) -> Value {
    let apps: Vec<Value> =
        apps.into_iter().map(|(name, instances)| application_value(&name, instances)).collect();
    json!({"applications": {
        "versions__delta": version.to_string(),
        "apps__hashcode": hashcode,
        "application": apps,
    }})
}

/// One `application`: its name and instances (always a list in JSON).
pub(super) fn application_value(name: &str, instances: Vec<Value>) -> Value {
    json!({"name": name, "instance": instances})
}

/// Writes a one-member object `{root: value}` as an XML document.
pub(super) fn value_to_xml(v: &Value) -> String {
    let mut out = String::with_capacity(1024);
    if let Value::Object(o) = v {
        for (name, value) in o {
            write_element(&mut out, name, value);
        }
    }
    out
}

/// Whether `name` can be written as an XML element or attribute name.
fn xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn write_element(out: &mut String, name: &str, v: &Value) {
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                write_element(out, name, item);
            }
        }
        _ if !xml_name(name) => {} // e.g. a metadata key XML cannot carry
        Value::Object(o) => {
            out.push('<');
            out.push_str(name);
            for (k, val) in o {
                if let (Some(attr), Some(t)) = (k.strip_prefix('@'), text(val)) {
                    if xml_name(attr) {
                        out.push(' ');
                        out.push_str(attr);
                        out.push_str("=\"");
                        out.push_str(&quick_xml::escape::escape(t.as_ref()));
                        out.push('"');
                    }
                }
            }
            let children = o.iter().filter(|(k, _)| !k.starts_with('@') && *k != "$");
            let body = o.get("$").and_then(text);
            if body.is_none() && children.clone().next().is_none() {
                out.push_str("/>");
                return;
            }
            out.push('>');
            if let Some(t) = body {
                out.push_str(&quick_xml::escape::escape(t.as_ref()));
            }
            for (k, val) in children {
                write_element(out, k, val);
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        scalar => {
            let t = text(scalar).unwrap_or_default();
            out.push('<');
            out.push_str(name);
            out.push('>');
            out.push_str(&quick_xml::escape::escape(t.as_ref()));
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

/// One element being read: its name, attributes and children, its text.
struct Open {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

impl Open {
    fn new(e: &quick_xml::events::BytesStart<'_>) -> Result<Open, EurekaError> {
        let name = String::from_utf8(e.name().as_ref().to_vec())
            .map_err(|_| EurekaError::bad_xml("a name is not UTF-8"))?;
        let mut fields = Map::new();
        for a in e.attributes() {
            let a = a.map_err(|e| EurekaError::bad_xml(e.to_string()))?;
            let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            let v = a.unescape_value().map_err(|e| EurekaError::bad_xml(e.to_string()))?;
            fields.insert(format!("@{k}"), Value::String(v.into_owned()));
        }
        Ok(Open { name, fields, text: String::new() })
    }

    /// The element as a value: its text alone, or an object with `@attr`,
    /// `$` (text) and children (a repeated child becomes a list).
    fn close(self) -> (String, Value) {
        let text = self.text.trim();
        if self.fields.is_empty() {
            return (self.name, Value::String(text.to_owned()));
        }
        let mut fields = self.fields;
        if !text.is_empty() {
            fields.insert("$".to_owned(), Value::String(text.to_owned()));
        }
        (self.name, Value::Object(fields))
    }

    fn add(&mut self, name: String, v: Value) {
        match self.fields.get_mut(&name) {
            None => {
                self.fields.insert(name, v);
            }
            Some(Value::Array(items)) => items.push(v),
            Some(first) => {
                let first = first.take();
                self.fields.insert(name, Value::Array(vec![first, v]));
            }
        }
    }
}

/// Reads an XML document into its root element's name and value (see
/// [`Open::close`]); at most [`XML_DEPTH_MAX`] levels deep. The body is
/// already bounded by the Filter's size limit.
pub(super) fn xml_to_value(body: &[u8]) -> Result<(String, Value), EurekaError> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut stack: Vec<Open> = Vec::new();
    loop {
        let ev = reader.read_event().map_err(|e| EurekaError::bad_xml(e.to_string()))?;
        match ev {
            Event::Start(e) => {
                if stack.len() >= XML_DEPTH_MAX {
                    return Err(EurekaError::bad_xml(format!("nested deeper than {XML_DEPTH_MAX} elements")));
                }
                stack.push(Open::new(&e)?);
            }
            Event::Empty(e) => {
                let (name, v) = Open::new(&e)?.close();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, v),
                    None => return Ok((name, v)),
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err(EurekaError::bad_xml("an end tag without a start"));
                };
                let (name, v) = done.close();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, v),
                    None => return Ok((name, v)),
                }
            }
            Event::Text(t) => {
                if let Some(open) = stack.last_mut() {
                    let t = t.decode().map_err(|e| EurekaError::bad_xml(e.to_string()))?;
                    open.text.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some(open) = stack.last_mut() {
                    let t = t.decode().map_err(|e| EurekaError::bad_xml(e.to_string()))?;
                    open.text.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                let Some(open) = stack.last_mut() else { continue };
                if let Some(c) = r.resolve_char_ref().map_err(|e| EurekaError::bad_xml(e.to_string()))? {
                    open.text.push(c);
                } else {
                    let name = r.decode().map_err(|e| EurekaError::bad_xml(e.to_string()))?;
                    let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| EurekaError::bad_xml(format!("unknown entity &{name};")))?;
                    open.text.push_str(resolved);
                }
            }
            Event::Eof => return Err(EurekaError::bad_xml("the document ends before its root element does")),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_attributes_and_text_read_as_the_json_codec_writes_them() {
        let (root, v) = xml_to_value(
            br#"<?xml version="1.0"?><instance><app>A</app><port enabled="true">8080</port><x>a &amp; b</x><m/><n><k>1</k><k>2</k></n></instance>"#,
        )
        .unwrap();
        assert_eq!(root, "instance");
        assert_eq!(v["port"], json!({"$": "8080", "@enabled": "true"}));
        assert_eq!(v["x"], "a & b");
        assert_eq!(v["m"], "");
        assert_eq!(v["n"]["k"], json!(["1", "2"]));
    }

    #[test]
    fn malformed_or_too_deep_xml_is_refused() {
        for bad in [&b"<instance><app>A</instance>"[..], b"<instance>", b"<a><b></a>", b"&bogus;"] {
            assert!(xml_to_value(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(XML_DEPTH_MAX + 1) + &"</a>".repeat(XML_DEPTH_MAX + 1);
        assert!(xml_to_value(deep.as_bytes()).is_err());
    }

    #[test]
    fn values_are_written_as_eureka_xml() {
        let v = json!({"application": {"name": "A&B", "instance": [
            {"port": {"$": 80, "@enabled": "true"}, "metadata": {"bad key": "x", "ok": "1"}},
            {"port": {"$": 81, "@enabled": "false"}},
        ]}});
        assert_eq!(
            value_to_xml(&v),
            "<application><instance><metadata><ok>1</ok></metadata><port enabled=\"true\">80</port></instance>\
             <instance><port enabled=\"false\">81</port></instance><name>A&amp;B</name></application>"
        );
    }

    #[test]
    fn eureka_leases_map_onto_ordered_core_leases() {
        assert_eq!(lease_ms(30, 90), (30_000, 89_000, 90_000));
        assert_eq!(lease_ms(3, 10), (3_000, 9_000, 10_000));
        assert_eq!(lease_ms(30, 30), (30_000, 31_000, 32_000), "duration raised past the interval");
        assert_eq!(lease_ms(0, 0), (1_000, 2_000, 3_000));
    }

    #[test]
    fn the_hashcode_counts_statuses_in_name_order() {
        let counts = BTreeMap::from([("UP", 3), ("DOWN", 1)]);
        assert_eq!(hashcode(&counts), "DOWN_1_UP_3_");
        assert_eq!(hashcode(&BTreeMap::new()), "");
    }
}
