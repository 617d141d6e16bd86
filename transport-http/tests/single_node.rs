//! One `muster` process on 127.0.0.1: the API, its errors, the Filter and
//! shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Node, free_ports, instance, request, scratch, secret_file};
use serde_json::Value;

fn start(name: &str, extra: &[&str]) -> Node {
    let dir = scratch(name);
    let port = free_ports(1)[0];
    let mut args: Vec<String> = FAST.iter().map(|s| (*s).to_owned()).collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let node = Node::start(port, &args, &dir);
    node.wait_ready(Duration::from_secs(10));
    node
}

#[test]
fn a_single_node_serves_register_beat_query_update_and_deregister() {
    let n = start("api", &[]);
    let r = n.req(
        "POST",
        "/v1/instances",
        Some(r#"{"service":"orders","ip":"10.0.0.1","port":8080,"weight":2,"metadata":{"zone":"eu-1"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["instance_id"], "10.0.0.1#8080#DEFAULT");
    assert_eq!(v["heartbeat_interval_ms"], 1000);
    assert_eq!(v["created"], true);

    let q = n.get("/v1/instances?service=orders").json();
    assert_eq!(q["namespace"], "public");
    assert_eq!(q["group"], "DEFAULT_GROUP");
    assert_eq!(q["instances"][0]["metadata"]["zone"], "eu-1");
    assert_eq!(q["instances"][0]["weight"], 2.0);
    assert_eq!(q["checksum"].as_str().unwrap().len(), 16);

    let beat = n.req("PUT", "/v1/instances/beat", Some(&instance("orders", "10.0.0.1", 8080))).json();
    assert_eq!(beat, serde_json::json!({"unknown": [], "heartbeat_interval_ms": 1000}));
    let batch = format!(
        r#"{{"beats":[{},{}]}}"#,
        instance("orders", "10.0.0.1", 8080),
        instance("orders", "10.0.0.9", 1)
    );
    assert_eq!(n.req("PUT", "/v1/instances/beat", Some(&batch)).json()["unknown"], serde_json::json!([1]));

    let patch =
        r#"{"service":"orders","ip":"10.0.0.1","port":8080,"enabled":false,"metadata":{"zone":"eu-2"}}"#;
    assert_eq!(n.req("PATCH", "/v1/instances", Some(patch)).status, 200);
    let q2 = n.get("/v1/instances?service=orders").json();
    assert_eq!(q2["instances"][0]["enabled"], false);
    assert_ne!(q2["checksum"], q["checksum"]);
    assert_eq!(
        n.get("/v1/instances?service=orders&healthy_only=true").json()["instances"],
        serde_json::json!([])
    );
    assert_eq!(
        n.get("/v1/instances?service=orders&clusters=OTHER").json()["instances"],
        serde_json::json!([])
    );

    let r = n.req("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=8080", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(n.get("/v1/instances?service=orders").json()["instances"], serde_json::json!([]));
    assert_eq!(n.req("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=8080", None).status, 404);
}

#[test]
fn services_and_namespaces_are_listed_created_and_deleted() {
    let n = start("services", &[]);
    assert_eq!(n.req("POST", "/v1/instances", Some(&instance("pay", "10.0.0.1", 1))).status, 200);
    let r = n.req(
        "PUT",
        "/v1/services/cart?group=shop",
        Some(r#"{"protect_threshold":0.5,"metadata":{"o":"x"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["explicit"], true);
    // PUT again updates.
    let r = n.req("PUT", "/v1/services/cart?group=shop", Some(r#"{"protect_threshold":0.25}"#));
    assert_eq!(r.json()["protect_threshold"], 0.25);
    let list = n.get("/v1/services").json();
    assert_eq!(list["total"], 2);
    let names: Vec<&str> =
        list["services"].as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(names, ["pay", "cart"]);
    assert_eq!(n.get("/v1/services?search=CAR").json()["total"], 1);
    assert_eq!(n.get("/v1/services?group=shop&page=2&page_size=1").json()["services"], serde_json::json!([]));
    let pay = n.get("/v1/services/pay").json();
    assert_eq!((pay["instances"].as_u64(), pay["healthy_instances"].as_u64()), (Some(1), Some(1)));
    assert_eq!(n.get("/v1/namespaces").json()["namespaces"][0]["services"], 2);

    let busy = n.req("DELETE", "/v1/services/pay", None);
    assert_eq!((busy.status, busy.json()["error"]["code"].as_str()), (409, Some("service_not_empty")));
    assert_eq!(n.req("DELETE", "/v1/services/cart?group=shop", None).status, 200);
    assert_eq!(n.get("/v1/services/cart?group=shop").status, 404);
    let nodes = n.get("/v1/cluster/nodes").json();
    assert_eq!(nodes["self"], n.addr.as_str());
    assert_eq!(nodes["nodes"][0]["state"], "up");
}

/// Every query, body and route error: (method, path, body, status, field or code).
const BAD: &[(&str, &str, &str, u16, &str)] = &[
    ("POST", "/v1/instances", "{", 400, "bad_json"),
    ("POST", "/v1/instances", "", 400, "bad_json"),
    ("POST", "/v1/instances", "[1]", 400, "body"),
    ("POST", "/v1/instances", r#"{"ip":"10.0.0.1","port":80}"#, 400, "service"),
    ("POST", "/v1/instances", r#"{"service":"","ip":"10.0.0.1","port":80}"#, 400, "service"),
    ("POST", "/v1/instances", r#"{"service":"a b","ip":"10.0.0.1","port":80}"#, 400, "service"),
    ("POST", "/v1/instances", r#"{"service":7,"ip":"10.0.0.1","port":80}"#, 400, "service"),
    (
        "POST",
        "/v1/instances",
        r#"{"namespace":"n/s","service":"s","ip":"10.0.0.1","port":80}"#,
        400,
        "namespace",
    ),
    ("POST", "/v1/instances", r#"{"group":5,"service":"s","ip":"10.0.0.1","port":80}"#, 400, "group"),
    ("POST", "/v1/instances", r#"{"cluster":"","service":"s","ip":"10.0.0.1","port":80}"#, 400, "cluster"),
    ("POST", "/v1/instances", r#"{"service":"s","port":80}"#, 400, "ip"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"999.1.1.1","port":80}"#, 400, "ip"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1"}"#, 400, "port"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":"80"}"#, 400, "port"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":0}"#, 400, "port"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":70000}"#, 400, "port"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":1.5}"#, 400, "port"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":80,"weight":-1}"#, 400, "weight"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":80,"weight":"1"}"#, 400, "weight"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":80,"enabled":"yes"}"#, 400, "enabled"),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":80,"healthy":1}"#, 400, "healthy"),
    (
        "POST",
        "/v1/instances",
        r#"{"service":"s","ip":"10.0.0.1","port":80,"ephemeral":"x"}"#,
        400,
        "ephemeral",
    ),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":80,"metadata":[]}"#, 400, "metadata"),
    (
        "POST",
        "/v1/instances",
        r#"{"service":"s","ip":"10.0.0.1","port":80,"metadata":{"a":1}}"#,
        400,
        "metadata",
    ),
    (
        "POST",
        "/v1/instances",
        r#"{"service":"s","ip":"10.0.0.1","port":80,"metadata":{"muster.heartbeat_interval_ms":"5"}}"#,
        400,
        "metadata",
    ),
    ("POST", "/v1/instances", r#"{"service":"s","ip":"10.0.0.1","port":80,"colour":"red"}"#, 400, "colour"),
    ("PUT", "/v1/instances/beat", r#"{"beats":{}}"#, 400, "beats"),
    ("PUT", "/v1/instances/beat", r#"{"beats":[],"service":"s"}"#, 400, "beats"),
    (
        "PUT",
        "/v1/instances/beat",
        r#"{"beats":[{"service":"s","ip":"10.0.0.1","port":0}]}"#,
        400,
        "beats[0].port",
    ),
    (
        "PUT",
        "/v1/instances/beat",
        r#"{"beats":[{"service":"s","ip":"10.0.0.1","port":1,"x":1}]}"#,
        400,
        "beats[0].x",
    ),
    ("PUT", "/v1/instances/beat", r#"{"service":"s","ip":"10.0.0.1"}"#, 400, "port"),
    ("PATCH", "/v1/instances", r#"{"service":"orders","ip":"10.0.0.1"}"#, 400, "port"),
    (
        "PATCH",
        "/v1/instances",
        r#"{"service":"orders","ip":"10.0.0.1","port":8080,"weight":10001}"#,
        400,
        "weight",
    ),
    (
        "PATCH",
        "/v1/instances",
        r#"{"service":"orders","ip":"10.0.0.1","port":8080,"healthy":false}"#,
        400,
        "healthy",
    ),
    (
        "PATCH",
        "/v1/instances",
        r#"{"service":"orders","ip":"10.0.0.1","port":8080,"metadata":"x"}"#,
        400,
        "metadata",
    ),
    (
        "PATCH",
        "/v1/instances",
        r#"{"service":"orders","ip":"10.0.0.1","port":8080,"ephemeral":false}"#,
        400,
        "ephemeral",
    ),
    (
        "PATCH",
        "/v1/instances",
        r#"{"service":"orders","ip":"10.0.0.2","port":8080}"#,
        404,
        "instance_not_found",
    ),
    // A lease may not outlive its tombstone (the test nodes' TTL is 60 s).
    (
        "POST",
        "/v1/instances",
        r#"{"service":"orders","ip":"10.0.0.3","port":8080,"metadata":{"muster.remove_after_ms":"600000"}}"#,
        400,
        "metadata",
    ),
    ("DELETE", "/v1/instances?service=orders&port=8080", "", 400, "ip"),
    ("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=x", "", 400, "port"),
    ("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=8080&weight=1", "", 400, "weight"),
    ("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=9", "", 404, "instance_not_found"),
    ("GET", "/v1/instances", "", 400, "service"),
    ("GET", "/v1/instances?service=orders&service=x", "", 400, "service"),
    ("GET", "/v1/instances?service=orders&healthy_only=maybe", "", 400, "healthy_only"),
    ("GET", "/v1/instances?service=orders&checksum=xyz&wait=1s", "", 400, "checksum"),
    ("GET", "/v1/instances?service=orders&checksum=0000000000000000&wait=5", "", 400, "wait"),
    ("GET", "/v1/instances?service=orders&wait=5s", "", 400, "wait"),
    ("GET", "/v1/instances?service=orders&clusters=a%20b", "", 400, "clusters"),
    ("GET", "/v1/instances?service=orders&group=%zz", "", 400, "group"),
    ("GET", "/v1/instances?service=orders&foo=1", "", 400, "foo"),
    ("GET", "/v1/services?page=0", "", 400, "page"),
    ("GET", "/v1/services?page=x", "", 400, "page"),
    ("GET", "/v1/services?page_size=0", "", 400, "page_size"),
    ("GET", "/v1/services?page_size=100000", "", 400, "page_size"),
    ("GET", "/v1/services?namespace=a%20b", "", 400, "namespace"),
    ("GET", "/v1/services/nope", "", 404, "service_not_found"),
    ("GET", "/v1/services/a%20b", "", 400, "service"),
    ("PUT", "/v1/services/orders", r#"{"protect_threshold":2}"#, 400, "protect_threshold"),
    ("PUT", "/v1/services/orders", r#"{"protect_threshold":"0.5"}"#, 400, "protect_threshold"),
    ("PUT", "/v1/services/orders", r#"{"metadata":1}"#, 400, "metadata"),
    ("PUT", "/v1/services/orders", r#"{"weight":1}"#, 400, "weight"),
    ("PUT", "/v1/services/orders", "{", 400, "bad_json"),
    ("PUT", "/v1/services/orders?group=a%20b", "{}", 400, "group"),
    ("DELETE", "/v1/services/orders", "", 409, "service_not_empty"),
    ("DELETE", "/v1/services/nope", "", 404, "service_not_found"),
    ("GET", "/v1/nope", "", 404, "not_found"),
    ("GET", "/nothing", "", 404, "not_found"),
    ("DELETE", "/health/live", "", 405, "method_not_allowed"),
    ("POST", "/v1/instances/beat", "{}", 405, "method_not_allowed"),
    ("GET", "/v1/instances/beat", "", 405, "method_not_allowed"),
    ("PUT", "/v1/namespaces", "", 405, "method_not_allowed"),
    ("POST", "/cluster/v1/messages", "x", 401, "unauthorized"),
];

/// What a bad request must not change.
fn state(n: &Node) -> Vec<Value> {
    let metrics = n.get("/metrics").text();
    let instances: Vec<&str> = metrics.lines().filter(|l| l.starts_with("muster_instances ")).collect();
    vec![
        n.get("/v1/services").json(),
        n.get("/v1/instances?service=orders").json(),
        n.get("/v1/instances?service=s").json(),
        n.get("/v1/namespaces").json(),
        Value::from(instances.join("")),
    ]
}

#[test]
fn every_bad_input_gets_its_error_and_changes_nothing() {
    let n = start("bad-input", &["--max-body-bytes", "4096"]);
    assert_eq!(n.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", 8080))).status, 200);
    let before = state(&n);
    for (method, path, body, status, what) in BAD {
        let r = n.req(method, path, Some(*body).filter(|b| !b.is_empty()));
        assert_eq!(r.status, *status, "{method} {path} {body}: {}", r.text());
        let err = &r.json()["error"];
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {err}");
        let named = err["field"].as_str() == Some(what) || err["code"].as_str() == Some(what);
        assert!(named, "{method} {path} {body}: expected {what}, got {err}");
        if *status == 405 {
            assert!(r.header("allow").is_some(), "{method} {path}: no Allow header");
        }
    }
    let big =
        format!(r#"{{"service":"s","ip":"10.0.0.1","port":80,"metadata":{{"k":"{}"}}}}"#, "x".repeat(5000));
    let r = n.req("POST", "/v1/instances", Some(&big));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (413, Some("body_too_large")));
    assert_eq!(state(&n), before, "a refused request changed the registry");
}

#[test]
fn request_ids_are_echoed_or_made_and_every_request_is_logged() {
    let n = start("request-id", &[]);
    let r = request(&n.addr, "GET", "/health/live", &[("x-request-id", "trace-42")], None);
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    let made = n.get("/v1/nope");
    let id = made.header("x-request-id").expect("a request id is made").to_owned();
    assert!(!id.is_empty());
    common::wait_until(Duration::from_secs(2), "the access log line", || {
        let log = n.log();
        log.contains("trace-42") && log.contains(&id) && log.contains("status=404")
    });
}

#[test]
fn tokens_guard_writes_and_reads_and_health_stays_open() {
    let dir = scratch("tokens");
    let (w, r) = (dir.join("write"), dir.join("read"));
    std::fs::write(&w, "write-token-0123456789").unwrap();
    std::fs::write(&r, "read-token-0123456789").unwrap();
    let n = start(
        "tokens",
        &["--write-token-file", w.to_str().unwrap(), "--read-token-file", r.to_str().unwrap()],
    );
    let body = instance("orders", "10.0.0.1", 1);
    let post =
        |auth: &[(&str, &str)]| request(&n.addr, "POST", "/v1/instances", auth, Some(body.as_bytes())).status;
    assert_eq!(post(&[]), 401);
    assert_eq!(post(&[("authorization", "Bearer read-token-0123456789")]), 401);
    assert_eq!(post(&[("authorization", "Bearer write-token-0123456789")]), 200);
    let get =
        |auth: &[(&str, &str)]| request(&n.addr, "GET", "/v1/instances?service=orders", auth, None).status;
    assert_eq!(get(&[]), 401);
    assert_eq!(get(&[("authorization", "Bearer wrong")]), 401);
    assert_eq!(get(&[("authorization", "Bearer read-token-0123456789")]), 200);
    assert_eq!(get(&[("authorization", "Bearer write-token-0123456789")]), 200);
    assert_eq!(n.get("/health/live").status, 200);
    assert_eq!(n.get("/health/ready").status, 200);
}

#[test]
fn the_peer_api_refuses_a_missing_or_wrong_secret() {
    let dir = scratch("peer-secret");
    let secret = secret_file(&dir);
    // One configured peer (never started) for the signed requests to come from.
    let fake_peer = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    let args = common::fast_with(&[
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--peers",
        &fake_peer,
        "--startup-timeout-ms",
        "500",
    ]);
    let n = Node::start(free_ports(1)[0], &args, &dir);
    n.wait_ready(Duration::from_secs(10));
    let post = |auth: &[(&str, &str)], body: &[u8]| {
        request(&n.addr, "POST", "/cluster/v1/messages", auth, Some(body))
    };
    assert_eq!(post(&[], b"").status, 401);
    assert_eq!(post(&[("authorization", "Bearer test-cluster-secret-0123456789abcdeX")], b"").status, 401);
    assert_eq!(post(&[("authorization", "test-cluster-secret-0123456789abcdef")], b"").status, 401);
    // The secret itself, sent as a bearer token, is no longer accepted: requests are signed.
    assert_eq!(post(&[("authorization", "Bearer test-cluster-secret-0123456789abcdef")], b"").status, 401);
    assert_eq!(common::post_signed(&n, &fake_peer, &format!("{:032x}", 1), b"").status, 204);
    let garbage = common::post_signed(&n, &fake_peer, &format!("{:032x}", 2), &[3, 0, 0, 0, 1, 2, 3]);
    assert_eq!((garbage.status, garbage.json()["error"]["code"].as_str()), (400, Some("bad_frame")));
    assert_eq!(common::post_signed(&n, &fake_peer, &format!("{:032x}", 3), &[9, 0, 0]).status, 400);
    assert_eq!(n.get("/health/ready").status, 200, "bad peer input must not hurt the node");
}

#[test]
fn a_long_poll_returns_on_a_change_or_when_its_wait_ends() {
    let n = start("long-poll", &["--max-long-polls", "1"]);
    let checksum = n.get("/v1/instances?service=orders").json()["checksum"].as_str().unwrap().to_owned();
    let t = Instant::now();
    let r = n.get(&format!("/v1/instances?service=orders&checksum={checksum}&wait=300ms"));
    assert_eq!(r.json()["checksum"], checksum.as_str());
    assert!(t.elapsed() >= Duration::from_millis(290), "returned after {:?}", t.elapsed());

    let addr = n.addr.clone();
    let path = format!("/v1/instances?service=orders&checksum={checksum}&wait=20s");
    let watcher = std::thread::spawn(move || {
        let t = Instant::now();
        (request(&addr, "GET", &path, &[], None), t.elapsed())
    });
    common::wait_until(Duration::from_secs(5), "the watch to be waiting", || {
        n.get("/metrics").text().contains("muster_watchers 1")
    });
    let second = n.get(&format!("/v1/instances?service=orders&checksum={checksum}&wait=20s"));
    assert_eq!((second.status, second.json()["error"]["code"].as_str()), (429, Some("too_many_watches")));
    assert_eq!(n.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", 1))).status, 200);
    let (r, took) = watcher.join().unwrap();
    assert_eq!(r.json()["instances"].as_array().unwrap().len(), 1);
    assert!(took < Duration::from_secs(5), "the watch woke after {took:?}");
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let mut n = start("sigterm", &[]);
    let checksum = n.get("/v1/instances?service=orders").json()["checksum"].as_str().unwrap().to_owned();
    let addr = n.addr.clone();
    let path = format!("/v1/instances?service=orders&checksum={checksum}&wait=30s");
    let watcher = std::thread::spawn(move || request(&addr, "GET", &path, &[], None));
    common::wait_until(Duration::from_secs(5), "the watch to be waiting", || {
        n.get("/metrics").text().contains("muster_watchers 1")
    });
    let status = n.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(watcher.join().unwrap().status, 200, "the in-flight long poll was answered");
}

#[test]
fn a_cluster_without_a_secret_refuses_to_start_and_says_how_to_make_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["serve", "--listen", "127.0.0.1:1", "--peers", "127.0.0.1:2,127.0.0.1:3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("head -c 32 /dev/urandom"), "{stderr}");
}
