//! The Consul API against real `muster` processes: the real `py-consul`
//! client's flow on a three-node cluster, a replay of Prometheus's Consul
//! service discovery (prometheus/prometheus `discovery/consul/consul.go`),
//! one registry behind the Consul and native APIs, tokens, and bad input.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{Node, Resp, cluster, count, instance, request, single, wait_until};
use serde_json::Value;

/// The venv python with py-consul: `MUSTER_TEST_PYTHON`, else what
/// `scripts/setup-python.sh` (idempotent) prints.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MUSTER_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(format!("{root}/scripts/setup-python.sh"))
        .output()
        .expect("run scripts/setup-python.sh");
    assert!(out.status.success(), "setup-python.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs `tests/py/consul_flow.py NAME ADDRS...` to the end (its waits are bounded).
fn consul_flow(name: &str, nodes: &[Node]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/consul_flow.py");
    let out = Command::new(python())
        .arg(script)
        .arg(name)
        .args(nodes.iter().map(|n| n.addr.as_str()))
        .output()
        .expect("run python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "consul_flow.py failed\nstdout: {stdout}\nstderr: {stderr}");
    serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("last line not JSON ({e}): {stdout}"))
}

fn put(node: &Node, path: &str, body: &str) -> Resp {
    node.req("PUT", path, Some(body))
}

fn index(r: &Resp) -> u64 {
    r.header("x-consul-index").and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("no index: {r:?}"))
}

#[test]
fn py_consul_registers_passes_follows_a_blocking_query_sees_the_ttl_lapse_and_deregisters_across_three_nodes()
{
    let nodes = cluster("consul-py", 3, &[]);
    let seen = consul_flow("py-orders", &nodes);
    // The TTL is 2 s: the lapse is seen within the TTL plus sync.
    assert!(seen["critical_after_s"].as_f64().unwrap() < 5.0, "{seen}");
}

#[test]
fn py_consul_flow_passes_against_a_single_node() {
    let node = single("consul-py-single", &[]);
    consul_flow("py-single", std::slice::from_ref(&node));
}

/// Prometheus's `consul_sd_configs` discovery as its source makes its calls:
/// `/v1/agent/self` for the datacenter, a blocking `/v1/catalog/services`,
/// then a blocking `/v1/health/service/{name}` per service, each with
/// `dc`, `stale`, `index` and `wait`, dropping answers whose index did not move.
#[test]
fn a_prometheus_style_discovery_follows_services_and_instances_changed_on_other_nodes() {
    let nodes = cluster("consul-prom", 3, &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for (svc, port) in [("api", 9100), ("db", 9200)] {
        assert_eq!(a.req("POST", "/v1/instances", Some(&instance(svc, "10.1.0.1", port))).status, 200);
    }
    wait_until(Duration::from_secs(5), "replication", || count(b, "db") == 1);

    let me = b.get("/v1/agent/self");
    assert_eq!(me.status, 200);
    let dc = me.json()["Config"]["Datacenter"].as_str().unwrap().to_owned();
    assert_eq!(dc, "dc1");

    let services = b.get(&format!("/v1/catalog/services?dc={dc}&stale="));
    let mut last_services = index(&services);
    assert!(last_services > 0);
    let names: Vec<String> = services.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(names, ["api", "db"]);

    let health = |name: &str, idx: u64, wait: &str| {
        b.get(&format!("/v1/health/service/{name}?dc={dc}&stale=&index={idx}&wait={wait}"))
    };
    let first = health("api", 0, "5s");
    assert_eq!(first.status, 200);
    let mut last_api = index(&first);
    assert_eq!(first.json().as_array().unwrap().len(), 1);

    // No change: the watch returns after its wait with the same index,
    // which Prometheus drops.
    let start = Instant::now();
    let same = health("api", last_api, "1s");
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
    assert_eq!(index(&same), last_api, "an unchanged answer keeps its index");

    // A new instance on another node wakes the per-service watch.
    let changer = c.addr.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        request(&changer, "POST", "/v1/instances", &[], Some(instance("api", "10.1.0.2", 9100).as_bytes()));
    });
    let start = Instant::now();
    let moved = health("api", last_api, "20s");
    t.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5), "woken by the change: {:?}", start.elapsed());
    assert!(index(&moved) > last_api, "a changed answer has a higher index");
    last_api = index(&moved);
    let targets: Vec<String> = moved
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}", e["Service"]["Address"].as_str().unwrap(), e["Service"]["Port"]))
        .collect();
    assert_eq!(targets, ["10.1.0.1:9100", "10.1.0.2:9100"]);
    assert!(last_api > 0);

    // A new service on another node wakes the catalog watch.
    let changer = c.addr.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        request(&changer, "POST", "/v1/instances", &[], Some(instance("cache", "10.1.0.3", 6379).as_bytes()));
    });
    let start = Instant::now();
    let grown = b.get(&format!("/v1/catalog/services?dc={dc}&stale=&index={last_services}&wait=20s"));
    t.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5), "woken by the new service: {:?}", start.elapsed());
    assert!(index(&grown) > last_services);
    last_services = index(&grown);
    assert!(grown.json().get("cache").is_some(), "{}", grown.text());

    // Unchanged catalog: same index after the wait.
    let same = b.get(&format!("/v1/catalog/services?dc={dc}&stale=&index={last_services}&wait=1s"));
    assert_eq!(index(&same), last_services);

    // A deregistration on the first node empties the service on the reader.
    let gone = a.req("DELETE", "/v1/instances?service=db&ip=10.1.0.1&port=9200", None);
    assert_eq!(gone.status, 200, "{}", gone.text());
    let empty = health("db", index(&health("db", 0, "1s")), "20s");
    let empty =
        if empty.json().as_array().unwrap().is_empty() { empty } else { health("db", index(&empty), "20s") };
    assert_eq!(empty.json(), serde_json::json!([]));
}

#[test]
fn one_registry_serves_consul_and_native_clients_alike() {
    let node = single("consul-native", &[]);
    // Native registration, seen through Consul.
    let native = node.req(
        "POST",
        "/v1/instances",
        Some(r#"{"service":"pay","ip":"10.2.0.1","port":80,"metadata":{"zone":"a"}}"#),
    );
    assert_eq!(native.status, 200);
    let h = node.get("/v1/health/service/pay?passing");
    let e = &h.json()[0];
    assert_eq!(e["Service"]["ID"], "10.2.0.1:80");
    assert_eq!(e["Service"]["Meta"], serde_json::json!({"zone": "a"}));
    assert_eq!(e["Checks"][1]["Status"], "passing");
    // Consul registration (no check: passing until deregistered), seen natively.
    let reg = put(
        &node,
        "/v1/agent/service/register",
        r#"{"Name":"pay","ID":"pay-2","Address":"10.2.0.2","Port":81,"Tags":["blue"],"Meta":{"zone":"b"}}"#,
    );
    assert_eq!(reg.status, 200, "{}", reg.text());
    let list = common::instances(&node, "pay");
    let consul = list["instances"].as_array().unwrap().iter().find(|i| i["port"] == 81).unwrap().clone();
    assert_eq!(
        (consul["ip"].as_str(), consul["healthy"].as_bool(), consul["ephemeral"].as_bool()),
        (Some("10.2.0.2"), Some(true), Some(false))
    );
    assert_eq!(consul["metadata"]["zone"], "b");
    assert_eq!(consul["metadata"]["consul.id"], "pay-2");
    // Disabled natively: critical for Consul, not passing.
    let patch = node.req(
        "PATCH",
        "/v1/instances",
        Some(r#"{"service":"pay","ip":"10.2.0.1","port":80,"enabled":false}"#),
    );
    assert_eq!(patch.status, 200);
    let passing = node.get("/v1/health/service/pay?passing=1").json();
    assert_eq!(passing.as_array().unwrap().len(), 1);
    assert_eq!(passing[0]["Service"]["ID"], "pay-2");
    // A deregistration through Consul removes the native view of it too.
    assert_eq!(put(&node, "/v1/agent/service/deregister/pay-2", "").status, 200);
    assert_eq!(count(&node, "pay"), 1);
}

#[test]
fn every_consul_read_carries_a_non_zero_index_that_rises_with_each_change() {
    let node = single("consul-index", &[]);
    let mut last = 0;
    for (i, port) in [0u16, 1, 2].iter().enumerate() {
        let reads = [
            "/v1/health/service/idx",
            "/v1/catalog/service/idx",
            "/v1/catalog/services",
            "/v1/health/checks/idx",
        ];
        let mut seen = Vec::new();
        for path in reads {
            let r = node.get(path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(r.header("x-consul-knownleader"), Some("true"));
            assert!(r.header("x-consul-lastcontact").is_some());
            seen.push(index(&r));
        }
        assert!(seen.iter().all(|i| *i > 0), "{seen:?}");
        assert!(seen[0] > last, "round {i}: {} after {last}", seen[0]);
        assert_eq!(index(&node.get(reads[0])), seen[0], "unchanged content, unchanged index");
        last = seen[0];
        let body =
            format!(r#"{{"Name":"idx","ID":"idx-{port}","Address":"10.3.0.1","Port":{}}}"#, 1000 + port);
        assert_eq!(put(&node, "/v1/agent/service/register", &body).status, 200);
    }
}

#[test]
fn the_consul_token_header_is_taken_as_musters_token() {
    let dir = common::scratch("consul-token");
    let token = dir.join("write.token");
    std::fs::write(&token, "write-token-0123456789\n").unwrap();
    let args = common::fast_with(&["--write-token-file", token.to_str().unwrap()]);
    let node = Node::start(common::free_ports(1)[0], &args, &dir);
    node.wait_ready(Duration::from_secs(10));
    let body = r#"{"Name":"sec","Address":"10.4.0.1","Port":80}"#;
    let denied = put(&node, "/v1/agent/service/register", body);
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(denied.text().contains("Permission denied"));
    assert_eq!(count(&node, "sec"), 0);
    let ok = request(
        &node.addr,
        "PUT",
        "/v1/agent/service/register",
        &[("X-Consul-Token", "write-token-0123456789")],
        Some(body.as_bytes()),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let by_query = request(
        &node.addr,
        "PUT",
        "/v1/agent/service/deregister/sec?token=write-token-0123456789",
        &[],
        None,
    );
    assert_eq!(by_query.status, 200, "{}", by_query.text());
    assert_eq!(count(&node, "sec"), 0);
}

#[test]
fn bad_consul_input_is_refused_as_consul_refuses_it_and_changes_nothing() {
    let node = single("consul-bad", &["--max-body-bytes", "4096"]);
    let good = r#"{"Name":"keep","ID":"keep-1","Address":"10.5.0.1","Port":80,"Check":{"TTL":"10s"}}"#;
    assert_eq!(put(&node, "/v1/agent/service/register", good).status, 200);
    let before = node.get("/v1/health/service/keep").json();
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("PUT", "/v1/agent/service/register", "{", 400, "Request decode failed"),
        ("PUT", "/v1/agent/service/register", "[]", 400, "must be an object"),
        ("PUT", "/v1/agent/service/register", r#"{"ID":"x","Port":80}"#, 400, "Missing service name"),
        (
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"keep","Port":"80"}"#,
            400,
            "Port must be an integer",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"keep","Address":"10.5.0.1","Port":0}"#,
            400,
            "port",
        ),
        ("PUT", "/v1/agent/service/register", r#"{"Name":"bad/name","Port":80}"#, 400, "Invalid service"),
        (
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"keep","Port":80,"Check":{"TTL":"soon"}}"#,
            400,
            "invalid duration",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"keep","Port":80,"Check":{"Args":["/bin/true"],"Interval":"5s"}}"#,
            400,
            "not supported",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"keep","Port":80,"Connect":{"SidecarService":{}}}"#,
            400,
            "Connect",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"keep","Port":80,"Meta":{"consul.id":"x"}}"#,
            400,
            "reserved",
        ),
        (
            "PUT",
            "/v1/agent/check/update/service:keep-1",
            r#"{"Status":"sleepy"}"#,
            400,
            "Invalid check status",
        ),
        ("PUT", "/v1/agent/check/update/service:keep-1", "{", 400, "Request decode failed"),
        ("PUT", "/v1/agent/check/pass/service:nope", "", 404, "Unknown check ID"),
        ("PUT", "/v1/agent/service/deregister/nope", "", 404, "Unknown service ID"),
        ("GET", "/v1/agent/service/register", "", 405, "not allowed"),
        ("POST", "/v1/health/service/keep", "", 405, "not allowed"),
        ("GET", "/v1/health/service/keep?index=abc", "", 400, "Invalid index"),
        ("GET", "/v1/health/service/keep?index=1&wait=forever", "", 400, "Invalid wait"),
        ("GET", "/v1/health/service/keep?dc=elsewhere", "", 500, "No path to datacenter"),
        ("GET", "/v1/health/service/keep?filter=Service.Port%3D%3D80", "", 400, "filter"),
        ("GET", "/v1/agent/nothing", "", 404, "no Consul endpoint"),
    ];
    for (method, path, body, status, says) in cases {
        let r = node.req(method, path, Some(*body).filter(|b| !b.is_empty()));
        assert_eq!(r.status, *status, "{method} {path} {body}: {}", r.text());
        assert!(r.text().contains(says), "{method} {path} {body}: {:?} lacks {says:?}", r.text());
        if *status == 405 {
            assert!(r.header("allow").is_some(), "{method} {path}: no Allow");
        }
    }
    let oversized = format!(r#"{{"Name":"keep","Port":80,"Meta":{{"k":"{}"}}}}"#, "x".repeat(8192));
    assert_eq!(put(&node, "/v1/agent/service/register", &oversized).status, 413);
    assert_eq!(node.get("/v1/health/service/keep").json(), before, "refused requests changed nothing");
    assert_eq!(count(&node, "keep"), 1);
}

#[test]
fn a_tcp_check_maps_onto_the_nodes_active_health_check() {
    let node = single("consul-tcp", &["--health-check-interval-ms", "300"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = format!(
        r#"{{"Name":"tcp","ID":"tcp-1","Address":"127.0.0.1","Port":{port},"Check":{{"TCP":"127.0.0.1:{port}","Interval":"1s"}}}}"#
    );
    assert_eq!(put(&node, "/v1/agent/service/register", &body).status, 200);
    let status =
        || node.get("/v1/health/checks/tcp").json()[0]["Status"].as_str().unwrap_or_default().to_owned();
    assert_eq!(node.get("/v1/health/checks/tcp").json()[0]["Type"], "tcp");
    wait_until(Duration::from_secs(10), "the TCP check to pass", || status() == "passing");
    drop(listener);
    wait_until(Duration::from_secs(10), "the TCP check to fail", || status() == "critical");
    assert!(node.get("/v1/health/service/tcp?passing").json().as_array().unwrap().is_empty());
    // A TTL pass on an actively checked service is refused.
    assert_eq!(put(&node, "/v1/agent/check/pass/service:tcp-1", "").status, 400);
}

#[test]
fn a_lapsed_ttl_without_deregister_critical_service_after_stays_listed_as_critical() {
    // The node removes silent instances after 6 s; a TTL check's lease
    // keeps a critical service listed (Consul keeps it until deregistered).
    let node = single("consul-lease", &[]);
    let body = r#"{"Name":"lease","ID":"lease-1","Address":"10.6.0.1","Port":80,"Check":{"TTL":"2s","Status":"passing"}}"#;
    assert_eq!(put(&node, "/v1/agent/service/register", body).status, 200);
    assert_eq!(node.get("/v1/health/service/lease?passing").json().as_array().unwrap().len(), 1);
    thread::sleep(Duration::from_secs(8));
    let all = node.get("/v1/health/service/lease").json();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["Checks"][1]["Status"], "critical");
    assert!(node.get("/v1/health/service/lease?passing").json().as_array().unwrap().is_empty());
}
