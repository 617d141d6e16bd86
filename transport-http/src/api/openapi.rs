//! Keeps `docs/openapi.yaml` equal to [`ROUTES`]: the same operations, each
//! with the same query parameters, body fields, access rule and the error
//! statuses the route can answer. (Response shapes are checked against the
//! running binary in `tests/openapi.rs`.)

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Access, ROUTES};

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    serde_yaml::from_str(&text).expect("docs/openapi.yaml is YAML")
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}")))
        }
        None => v,
    }
}

/// Property names of a schema, through `$ref`, `oneOf` and `allOf`.
fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolve(doc, schema);
    let mut out: BTreeSet<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for key in ["oneOf", "allOf", "anyOf"] {
        for s in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            out.extend(properties(doc, s));
        }
    }
    out
}

fn strings(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn openapi_yaml_lists_exactly_the_routes_of_the_code() {
    let doc = doc();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "OpenAPI 3.1");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let coded: BTreeSet<(String, String)> =
        ROUTES.iter().map(|r| (r.method.to_owned(), r.path.to_owned())).collect();
    assert_eq!(documented, coded, "docs/openapi.yaml and api::ROUTES differ");
}

#[test]
fn every_operation_documents_its_parameters_body_access_and_errors() {
    let doc = doc();
    for r in &ROUTES {
        let item = &doc["paths"][r.path];
        let op = &item[r.method.to_ascii_lowercase()];
        let what = format!("{} {}", r.method, r.path);
        assert_eq!(op["operationId"].as_str(), Some(r.name), "{what}: operationId");

        let mut query = BTreeSet::new();
        let mut in_path = BTreeSet::new();
        let params = item["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(op["parameters"].as_array().into_iter().flatten());
        for p in params {
            let p = resolve(&doc, p);
            let name = p["name"].as_str().expect("parameter name").to_owned();
            match p["in"].as_str() {
                Some("query") => assert!(query.insert(name), "{what}: parameter twice"),
                Some("path") => {
                    in_path.insert(name);
                }
                other => panic!("{what}: parameter in {other:?}"),
            }
        }
        assert_eq!(query, strings(r.query), "{what}: query parameters");
        let templated: BTreeSet<String> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        assert_eq!(in_path, templated, "{what}: path parameters");

        let json_body = &op["requestBody"]["content"]["application/json"]["schema"];
        let body = if json_body.is_null() { BTreeSet::new() } else { properties(&doc, json_body) };
        assert_eq!(body, strings(r.body), "{what}: body fields");

        let access = match r.access {
            Access::Open => "open",
            Access::Read => "read",
            Access::Write => "write",
            Access::Peer => "peer",
        };
        assert_eq!(op["x-muster-access"].as_str(), Some(access), "{what}: x-muster-access");

        let responses = op["responses"].as_object().expect("responses");
        // Every route refuses unknown query parameters.
        let mut needed = vec!["400"];
        if r.needs_ready {
            needed.push("503");
        }
        if matches!(r.access, Access::Read | Access::Write | Access::Peer) {
            needed.push("401");
        }
        if !r.body.is_empty() || r.access == Access::Peer {
            needed.extend(["400", "408", "413"]);
        }
        if !r.query.is_empty() {
            needed.push("400");
        }
        for status in needed {
            assert!(responses.contains_key(status), "{what}: no {status} response documented");
        }
    }
}
