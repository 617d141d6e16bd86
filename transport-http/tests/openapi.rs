//! The JSON a running node answers matches the response schemas of
//! `docs/openapi.yaml`: no undocumented field, no missing required one, the
//! documented types. (Routes, parameters and body fields are compared with
//! the code by the unit test in `src/api/openapi.rs`.)

mod common;

use std::time::Duration;

use common::{FAST, Node, free_ports, instance, scratch};
use serde_json::Value;

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.strip_prefix('#').unwrap()).unwrap()),
        None => v,
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// Checks `v` against `schema`; returns the first mismatch.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        return if alts.iter().any(|s| check(doc, s, v, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: no oneOf matches"))
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, v)) {
        return Err(format!("{at}: {v} is not {types:?}"));
    }
    if let Some(enumeration) = schema.get("enum").and_then(Value::as_array) {
        if !enumeration.contains(v) {
            return Err(format!("{at}: {v} not in {enumeration:?}"));
        }
    }
    if let (Some(obj), Some(props)) = (v.as_object(), schema.get("properties").and_then(Value::as_object)) {
        for (k, val) in obj {
            let Some(s) = props.get(k) else { return Err(format!("{at}: undocumented field {k}")) };
            check(doc, s, val, &format!("{at}.{k}"))?;
        }
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                return Err(format!("{at}: required field {req} missing"));
            }
        }
    } else if let (Some(obj), Some(values)) = (v.as_object(), schema.get("additionalProperties")) {
        if values.is_object() {
            for (k, val) in obj {
                check(doc, values, val, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(schema)) = (v.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn answers_of_a_running_node_match_the_documented_schemas() {
    let doc = doc();
    let dir = scratch("openapi");
    let args: Vec<String> = FAST.iter().map(|s| (*s).to_owned()).collect();
    let n = Node::start(free_ports(1)[0], &args, &dir);
    n.wait_ready(Duration::from_secs(10));
    let reg = instance("orders", "10.0.0.1", 8080);
    let meta = r#"{"service":"orders","ip":"10.0.0.2","port":80,"metadata":{"zone":"eu"}}"#;
    let patch = r#"{"service":"orders","ip":"10.0.0.2","port":80,"weight":3}"#;
    let beats = format!(r#"{{"beats":[{reg},{}]}}"#, instance("orders", "10.9.9.9", 1));
    // (method, request path, body, documented path, status)
    let cases: &[(&str, &str, Option<&str>, &str, u16)] = &[
        ("POST", "/v1/instances", Some(&reg), "/v1/instances", 200),
        ("POST", "/v1/instances", Some(meta), "/v1/instances", 200),
        ("PATCH", "/v1/instances", Some(patch), "/v1/instances", 200),
        ("PUT", "/v1/instances/beat", Some(&reg), "/v1/instances/beat", 200),
        ("PUT", "/v1/instances/beat", Some(&beats), "/v1/instances/beat", 200),
        ("GET", "/v1/instances?service=orders", None, "/v1/instances", 200),
        (
            "GET",
            "/v1/instances?service=orders&healthy_only=true&clusters=DEFAULT",
            None,
            "/v1/instances",
            200,
        ),
        ("GET", "/v1/instances?service=orders&port=1", None, "/v1/instances", 400),
        ("PUT", "/v1/services/orders", Some(r#"{"protect_threshold":0.1}"#), "/v1/services/{service}", 200),
        ("PUT", "/v1/services/empty", None, "/v1/services/{service}", 200),
        ("GET", "/v1/services/orders", None, "/v1/services/{service}", 200),
        ("GET", "/v1/services/none", None, "/v1/services/{service}", 404),
        ("DELETE", "/v1/services/orders", None, "/v1/services/{service}", 409),
        ("DELETE", "/v1/services/empty", None, "/v1/services/{service}", 200),
        ("GET", "/v1/services", None, "/v1/services", 200),
        ("GET", "/v1/namespaces", None, "/v1/namespaces", 200),
        ("GET", "/v1/cluster/nodes", None, "/v1/cluster/nodes", 200),
        ("GET", "/health/live", None, "/health/live", 200),
        ("GET", "/health/ready", None, "/health/ready", 200),
        ("GET", "/console/api/session", None, "/console/api/session", 200),
        ("POST", "/console/api/session", None, "/console/api/session", 200),
        (
            "GET",
            "/console/api/instances?service=orders&metadata=zone=eu",
            None,
            "/console/api/instances",
            200,
        ),
        ("GET", "/console/api/instances?service=orders&healthy=maybe", None, "/console/api/instances", 400),
        ("GET", "/console/api/find?ip=10.0.0.2:80", None, "/console/api/find", 200),
        ("GET", "/console/api/find?ip=not%20a%20host", None, "/console/api/find", 400),
        ("GET", "/console/api/history?service=orders", None, "/console/api/history", 200),
        ("GET", "/console/api/history?limit=0", None, "/console/api/history", 400),
        ("GET", "/console/api/cluster", None, "/console/api/cluster", 200),
        ("GET", "/console/api/changes?since=0&wait=1ms", None, "/console/api/changes", 200),
        ("GET", "/console/api/changes?since=-1", None, "/console/api/changes", 400),
        ("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=8080", None, "/v1/instances", 200),
        ("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=8080", None, "/v1/instances", 404),
        ("POST", "/cluster/v1/messages", Some("x"), "/cluster/v1/messages", 401),
    ];
    for (method, path, body, documented, status) in cases {
        let r = n.req(method, path, *body);
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        let op = &doc["paths"][*documented][method.to_ascii_lowercase()];
        let response = resolve(&doc, &op["responses"][status.to_string()]);
        let schema = &response["content"]["application/json"]["schema"];
        assert!(!schema.is_null(), "{method} {documented}: no JSON schema for {status}");
        check(&doc, schema, &r.json(), "$").unwrap_or_else(|e| panic!("{method} {path} -> {status}: {e}"));
    }
    let metrics = n.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").is_some_and(|c| c.starts_with("text/plain")));
}
