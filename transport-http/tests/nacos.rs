//! The Nacos v1 naming API against real `muster` processes on 127.0.0.1:
//! the real Python client (`nacos-sdk-python`, `tests/py/nacos_flows.py`) on
//! one node and on a three-node cluster, one registry across the Nacos API,
//! the OpenAPI and the Rust SDK, the wire shapes of the real server's
//! answers, bad input, UDP push limits and switches, and login.
//!
//! The expected shapes are written from the Nacos 1.x open-api docs and its
//! `InstanceController`: `ok` for writes, `caused: <message>;` with 400 for
//! bad parameters, beat codes 10200 / 20404.

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, Resp, count, request, scratch, wait_until};
use muster_transport_http::client::{Client, InstanceSpec};
use serde_json::Value;

/// The venv python with the pinned clients (`MUSTER_TEST_PYTHON`, else
/// `scripts/setup-python.sh` makes it).
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("MUSTER_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/setup-python.sh");
    let out = Command::new(script).output().expect("run scripts/setup-python.sh");
    assert!(out.status.success(), "setup-python.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs `tests/py/nacos_flows.py` with the consumer on `client` and the
/// provider on `writer`; panics with its output unless every step passed.
fn run_flows(client: &Node, writer: &Node, service: &str, auth: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/nacos_flows.py");
    // The fast timings remove a silent instance after 6 s.
    let mut cmd = Command::new(python());
    cmd.arg(script).args([&client.addr, &writer.addr, service, "6"]).args(auth);
    let out = cmd.output().expect("run the Python Nacos client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK done"),
        "the Python Nacos client failed\n--- stdout\n{stdout}\n--- stderr\n{}\n--- client node log\n{}",
        String::from_utf8_lossy(&out.stderr),
        client.log()
    );
}

fn nacos(node: &Node, method: &str, path_and_query: &str) -> Resp {
    request(&node.addr, method, &format!("/nacos/v1/ns/{path_and_query}"), &[], None)
}

fn form(node: &Node, method: &str, path: &str, body: &str) -> Resp {
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    request(&node.addr, method, &format!("/nacos/v1/ns/{path}"), &headers, Some(body.as_bytes()))
}

fn list(node: &Node, service: &str) -> Value {
    let r = nacos(node, "GET", &format!("instance/list?serviceName={service}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn metric(node: &Node, line_start: &str) -> u64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {line_start} in\n{text}"))
}

#[test]
fn the_python_nacos_client_registers_beats_lists_subscribes_modifies_and_deregisters() {
    let node = common::single("nacos-py-single", &[]);
    run_flows(&node, &node, "py-single", &[]);
    assert!(metric(&node, "muster_nacos_pushes_total{outcome=\"acked\"}") >= 3);
}

#[test]
fn the_python_nacos_client_on_one_node_sees_changes_made_on_another_node_of_a_cluster() {
    let nodes = common::cluster("nacos-py-cluster", 3, &[]);
    run_flows(&nodes[0], &nodes[2], "py-cluster", &[]);
    // The pushes came from the consumer's node, of changes made on another.
    assert!(metric(&nodes[0], "muster_nacos_pushes_total{outcome=\"acked\"}") >= 3);
    assert_eq!(metric(&nodes[2], "muster_nacos_push_subscribers"), 0);
}

#[test]
fn the_python_nacos_client_logs_in_with_a_token_file_as_its_password() {
    let dir = scratch("nacos-login");
    let token = "nacos-write-token-0123456789";
    let file = dir.join("write.token");
    std::fs::write(&file, token).unwrap();
    let args = common::fast_with(&["--write-token-file", file.to_str().unwrap()]);
    let node = Node::start(common::free_ports(1)[0], &args, &dir);
    node.wait_ready(Duration::from_secs(10));
    run_flows(&node, &node, "py-login", &["nacos", token]);
    // Without the token the same calls are refused, as Nacos refuses them.
    let r = form(&node, "POST", "instance", "serviceName=x&ip=10.0.0.1&port=80");
    assert_eq!((r.status, r.text().starts_with("caused: user not found!")), (403, true), "{}", r.text());
    let r = request(&node.addr, "POST", "/nacos/v1/auth/login", &[], Some(b""));
    assert_eq!(r.status, 403);
    let r = request(
        &node.addr,
        "POST",
        "/nacos/v1/auth/login?username=nacos&password=wrong-password-000000",
        &[],
        None,
    );
    assert_eq!((r.status, r.text()), (403, "caused: unknown user!;".to_owned()));
    let r = nacos(&node, "GET", &format!("instance/list?serviceName=x&accessToken={token}"));
    assert_eq!(r.status, 200);
}

#[test]
fn nacos_answers_have_the_real_servers_shapes() {
    let node = common::single("nacos-shapes", &[]);
    let r = form(
        &node,
        "POST",
        "instance",
        "serviceName=shapes&groupName=g1&ip=10.0.0.9&port=8080&weight=3&metadata=a%3D1%2Cb%3D2&enable=false&enabled=true",
    );
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    assert_eq!(r.header("content-type"), Some("text/plain;charset=UTF-8"));
    let v = list(&node, "g1@@shapes");
    assert_eq!(v["name"], "g1@@shapes");
    assert_eq!(v["groupName"], "g1");
    assert_eq!(v["clusters"], "");
    assert_eq!(v["cacheMillis"], 3000);
    assert!(v["lastRefTime"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(v["checksum"].as_str().unwrap().len(), 16);
    assert_eq!(v["reachProtectionThreshold"], false);
    let h = &v["hosts"][0];
    assert_eq!(h["instanceId"], "10.0.0.9#8080#DEFAULT#g1@@shapes");
    assert_eq!(
        (h["ip"].as_str(), h["port"].as_u64(), h["weight"].as_f64()),
        (Some("10.0.0.9"), Some(8080), Some(3.0))
    );
    assert_eq!(
        (h["healthy"].as_bool(), h["enabled"].as_bool(), h["ephemeral"].as_bool()),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!((h["clusterName"].as_str(), h["serviceName"].as_str()), (Some("DEFAULT"), Some("g1@@shapes")));
    assert_eq!(h["metadata"], serde_json::json!({"a": "1", "b": "2"}));
    assert_eq!(h["instanceHeartBeatInterval"], 1000);
    // The same listing by group parameter, the clusters echoed.
    let r = nacos(&node, "GET", "instance/list?serviceName=shapes&groupName=g1&clusters=DEFAULT,other");
    assert_eq!(r.json()["clusters"], "DEFAULT,other");
    assert_eq!(r.json()["hosts"].as_array().unwrap().len(), 1);
    // An unknown service: 200 with no hosts.
    let v = list(&node, "nobody");
    assert_eq!(
        (v["name"].as_str(), v["hosts"].as_array().map(Vec::len)),
        (Some("DEFAULT_GROUP@@nobody"), Some(0))
    );
    // Beats: known, light beat of an unknown instance, beat carrying an unknown instance.
    let r = nacos(&node, "PUT", "instance/beat?serviceName=g1@@shapes&ip=10.0.0.9&port=8080");
    assert_eq!(
        r.json(),
        serde_json::json!({"clientBeatInterval": 1000, "code": 10200, "lightBeatEnabled": true})
    );
    let r = nacos(&node, "PUT", "instance/beat?serviceName=g1@@shapes&ip=10.0.0.10&port=8080");
    assert_eq!(r.json()["code"], 20404);
    let beat = r#"{"serviceName":"g1@@shapes","ip":"10.0.0.10","port":8080,"weight":2,"cluster":"c2","metadata":{"k":"v"}}"#;
    let r =
        form(&node, "PUT", "instance/beat", &format!("serviceName=g1%40%40shapes&beat={}", urlencode(beat)));
    assert_eq!(r.json()["code"], 10200, "{}", r.text());
    let v = list(&node, "g1@@shapes");
    assert_eq!(v["hosts"].as_array().unwrap().len(), 2);
    let r = nacos(&node, "GET", "instance?serviceName=g1@@shapes&ip=10.0.0.10&port=8080&clusterName=c2");
    let d = r.json();
    assert_eq!(
        (d["service"].as_str(), d["weight"].as_f64(), d["clusterName"].as_str()),
        (Some("g1@@shapes"), Some(2.0), Some("c2"))
    );
    assert_eq!(d["metadata"], serde_json::json!({"k": "v"}));
    // Disabled instances are not listed; PATCH changes only what it is given.
    let r = form(
        &node,
        "PATCH",
        "instance",
        "serviceName=g1@@shapes&ip=10.0.0.10&port=8080&cluster=c2&enabled=false",
    );
    assert_eq!(r.text(), "ok");
    assert_eq!(list(&node, "g1@@shapes")["hosts"].as_array().unwrap().len(), 1);
    let d =
        nacos(&node, "GET", "instance?serviceName=g1@@shapes&ip=10.0.0.10&port=8080&clusterName=c2").json();
    assert_eq!((d["enabled"].as_bool(), d["weight"].as_f64()), (Some(false), Some(2.0)));
    // PUT replaces: weight and metadata to what is given, the rest to defaults.
    let r = form(
        &node,
        "PUT",
        "instance",
        "serviceName=g1@@shapes&ip=10.0.0.10&port=8080&clusterName=c2&weight=4",
    );
    assert_eq!(r.text(), "ok");
    let d =
        nacos(&node, "GET", "instance?serviceName=g1@@shapes&ip=10.0.0.10&port=8080&clusterName=c2").json();
    assert_eq!((d["enabled"].as_bool(), d["weight"].as_f64()), (Some(true), Some(4.0)));
    assert_eq!(d["metadata"], serde_json::json!({}));
    // Services.
    assert_eq!(
        form(&node, "POST", "service", "serviceName=svc2&protectThreshold=0.5&metadata=k%3Dv").text(),
        "ok"
    );
    let r = nacos(&node, "POST", "service?serviceName=svc2");
    assert_eq!(
        (r.status, r.text()),
        (400, "caused: specified service already exists, serviceName : DEFAULT_GROUP@@svc2;".to_owned())
    );
    assert_eq!(form(&node, "PUT", "service", "serviceName=svc2&protectThreshold=0.25").text(), "ok");
    let s = nacos(&node, "GET", "service?serviceName=svc2").json();
    assert_eq!(
        (s["name"].as_str(), s["groupName"].as_str(), s["namespaceId"].as_str()),
        (Some("svc2"), Some("DEFAULT_GROUP"), Some("public"))
    );
    assert_eq!(
        (s["protectThreshold"].as_f64(), &s["metadata"]),
        (Some(0.25), &serde_json::json!({"k": "v"}))
    );
    let l = nacos(&node, "GET", "service/list?pageNo=1&pageSize=10").json();
    assert_eq!((l["count"].as_u64(), &l["doms"]), (Some(1), &serde_json::json!(["svc2"])));
    let l = nacos(&node, "GET", "service/list?pageNo=1&pageSize=10&groupName=g1").json();
    assert_eq!(l["doms"], serde_json::json!(["shapes"]));
    let c = nacos(&node, "GET", "catalog/services?pageNo=1&pageSize=10&groupNameParam=g1").json();
    assert_eq!(c["serviceList"][0]["clusterCount"], 2);
    assert_eq!(c["serviceList"][0]["ipCount"], 2);
    let c =
        nacos(&node, "GET", "catalog/instances?serviceName=g1@@shapes&clusterName=c2&pageNo=1&pageSize=10")
            .json();
    assert_eq!((c["count"].as_u64(), c["list"][0]["ip"].as_str()), (Some(1), Some("10.0.0.10")));
    assert_eq!(nacos(&node, "DELETE", "service?serviceName=svc2").text(), "ok");
    let r = nacos(&node, "DELETE", "service?serviceName=g1@@shapes");
    assert_eq!(
        (r.status, r.text()),
        (400, "caused: specified service has instances, serviceName : g1@@shapes;".to_owned())
    );
    // Operator routes.
    let m = nacos(&node, "GET", "operator/metrics").json();
    assert_eq!((m["status"].as_str(), m["instanceCount"].as_u64()), (Some("UP"), Some(2)));
    let s = nacos(&node, "GET", "operator/servers").json();
    assert_eq!(s["servers"][0]["address"], node.addr.as_str());
    assert_eq!(s["servers"][0]["state"], "UP");
    // Deregistration answers ok, also for an instance already gone.
    for _ in 0..2 {
        let r = nacos(&node, "DELETE", "instance?serviceName=shapes&groupName=g1&ip=10.0.0.9&port=8080");
        assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    }
    assert_eq!(list(&node, "g1@@shapes")["hosts"][0]["ip"], "10.0.0.10");
}

#[test]
fn bad_nacos_parameters_answer_as_the_real_server_and_change_nothing() {
    let node = common::single("nacos-bad", &["--max-body-bytes", "4096"]);
    let ok = form(&node, "POST", "instance", "serviceName=bad&ip=10.0.0.1&port=80&weight=2");
    assert_eq!(ok.text(), "ok");
    let cases: &[(&str, &str, u16, &str)] = &[
        ("POST", "instance?ip=10.0.0.2&port=80", 400, "caused: Param 'serviceName' is required.;"),
        ("POST", "instance?serviceName=bad&port=80", 400, "caused: Param 'ip' is required.;"),
        ("POST", "instance?serviceName=bad&ip=10.0.0.2", 400, "caused: Param 'port' is required.;"),
        ("POST", "instance?serviceName=bad&ip=10.0.0.2&port=abc", 400, "caused: For input string: \"abc\";"),
        (
            "POST",
            "instance?serviceName=bad&ip=10.0.0.2&port=80&weight=heavy",
            400,
            "caused: For input string: \"heavy\";",
        ),
        ("POST", "instance?serviceName=bad&ip=10.0.0.2&port=80&weight=20000", 400, ""),
        ("POST", "instance?serviceName=bad&ip=10.0.0.2&port=0", 400, ""),
        ("POST", "instance?serviceName=bad&ip=not_an_ip!&port=80", 400, ""),
        (
            "POST",
            "instance?serviceName=bad&ip=10.0.0.2&port=80&metadata=%7Bbroken",
            400,
            "caused: metadata format incorrect:{broken;",
        ),
        (
            "POST",
            "instance?serviceName=bad&ip=10.0.0.2&port=80&metadata=novalue",
            400,
            "caused: metadata format incorrect:novalue;",
        ),
        ("POST", "instance?serviceName=bad&ip=10.0.0.2&port=80&ephemeral=maybe", 400, ""),
        ("POST", "instance?serviceName=b%20d&ip=10.0.0.2&port=80", 400, ""),
        ("POST", "instance?serviceName=g@@&ip=10.0.0.2&port=80", 400, ""),
        ("POST", "instance?serviceName=bad&ip=10.0.0.2&port=80&namespaceId=%zz", 400, ""),
        (
            "PUT",
            "instance?serviceName=bad&ip=10.0.0.3&port=80",
            400,
            "caused: instance not exist: 10.0.0.3#80#DEFAULT#DEFAULT_GROUP@@bad;",
        ),
        ("PATCH", "instance?serviceName=bad&ip=10.0.0.1&port=80&weight=-1", 400, ""),
        ("GET", "instance?serviceName=bad&ip=10.0.0.3&port=80", 404, "caused: no matched ip found!;"),
        (
            "GET",
            "instance?serviceName=nobody&ip=10.0.0.3&port=80",
            404,
            "caused: no service DEFAULT_GROUP@@nobody found!;",
        ),
        ("GET", "instance/list", 400, "caused: Param 'serviceName' is required.;"),
        ("GET", "instance/list?serviceName=bad&healthyOnly=perhaps", 400, ""),
        ("GET", "instance/list?serviceName=bad&udpPort=70000", 400, "caused: port out of range:70000;"),
        ("GET", "instance/list?serviceName=bad&udpPort=x", 400, "caused: For input string: \"x\";"),
        ("GET", "instance/list?serviceName=bad&clusters=a%20b", 400, ""),
        ("PUT", "instance/beat?serviceName=bad&beat=%7Bnot-json", 400, ""),
        (
            "PUT",
            "instance/beat?serviceName=bad&beat=%7B%22port%22%3A80%7D",
            400,
            "caused: Param 'beat' has no ip;",
        ),
        ("PUT", "instance/beat", 400, "caused: Param 'serviceName' is required.;"),
        ("POST", "service?serviceName=s2&protectThreshold=2", 400, ""),
        ("PUT", "service?serviceName=nobody", 400, "caused: service DEFAULT_GROUP@@nobody not found!;"),
        ("GET", "service?serviceName=nobody", 400, "caused: service DEFAULT_GROUP@@nobody is not found!;"),
        (
            "DELETE",
            "service?serviceName=nobody",
            400,
            "caused: specified service not exist, serviceName : DEFAULT_GROUP@@nobody;",
        ),
        ("GET", "service/list?pageSize=10", 400, "caused: Param 'pageNo' is required.;"),
        ("GET", "service/list?pageNo=0&pageSize=10", 400, ""),
        (
            "GET",
            "catalog/instances?serviceName=bad&pageNo=1&pageSize=10",
            400,
            "caused: Param 'clusterName' is required.;",
        ),
        ("POST", "instance/list?serviceName=bad", 405, "caused: Request method 'POST' not supported;"),
        ("GET", "nothing", 404, ""),
    ];
    for (method, path, status, body) in cases {
        let r = nacos(&node, method, path);
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        assert!(r.text().starts_with("caused: ") && r.text().ends_with(';'), "{method} {path}: {}", r.text());
        if !body.is_empty() {
            assert_eq!(r.text(), *body, "{method} {path}");
        }
    }
    // A beat for an instance that cannot exist is "unknown", as in Nacos.
    let r = nacos(&node, "PUT", "instance/beat?serviceName=bad&ip=10.0.0.1&port=zz");
    assert_eq!(r.json()["code"], 20404);
    // An oversized form body is refused before it is read whole.
    let big = format!("serviceName=bad&ip=10.0.0.4&port=80&metadata={}", "x".repeat(5000));
    assert_eq!(form(&node, "POST", "instance", &big).status, 413);
    // Nothing changed: one instance, as registered, and no service s2.
    let v = list(&node, "bad");
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(
        (v["hosts"][0]["ip"].as_str(), v["hosts"][0]["weight"].as_f64()),
        (Some("10.0.0.1"), Some(2.0))
    );
    assert_eq!(nacos(&node, "GET", "service?serviceName=s2").status, 400);
    assert_eq!(metric(&node, "muster_instances"), 1);
}

#[test]
fn one_registry_through_the_nacos_api_the_openapi_and_the_rust_sdk() {
    let nodes = common::cluster("nacos-one-registry", 2, &[]);
    // Nacos in, OpenAPI and the SDK out.
    let r = form(
        &nodes[0],
        "POST",
        "instance",
        "serviceName=orders&ip=10.1.0.1&port=9000&metadata=%7B%22zone%22%3A%22z1%22%7D&weight=7",
    );
    assert_eq!(r.text(), "ok");
    wait_until(Duration::from_secs(5), "the Nacos registration on the other node", || {
        count(&nodes[1], "orders") == 1
    });
    let native = common::instances(&nodes[1], "orders");
    assert_eq!(native["instances"][0]["weight"], 7.0);
    assert_eq!(native["instances"][0]["metadata"]["zone"], "z1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = Client::builder(vec![nodes[1].addr.clone()]).build().unwrap();
    let seen = rt.block_on(async { client.instances("orders").await }).unwrap();
    assert_eq!(
        (seen.instances.len(), seen.instances[0].ip.as_str(), seen.instances[0].port),
        (1, "10.1.0.1", 9000)
    );
    // The SDK in, Nacos out (with its group@@name), and the removal through Nacos.
    let reg =
        rt.block_on(async { client.register(InstanceSpec::new("orders", "10.1.0.2", 9000)).await }).unwrap();
    wait_until(Duration::from_secs(5), "the SDK registration in the Nacos list", || {
        list(&nodes[0], "DEFAULT_GROUP@@orders")["hosts"].as_array().unwrap().len() == 2
    });
    let r = nacos(&nodes[0], "DELETE", "instance?serviceName=orders&ip=10.1.0.2&port=9000");
    assert_eq!(r.text(), "ok");
    wait_until(Duration::from_secs(5), "the Nacos removal seen natively", || count(&nodes[1], "orders") == 1);
    drop(reg);
}

/// A UDP socket that subscribes to `service` on `node` and never acks.
fn silent_subscriber(node: &Node, service: &str) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = sock.local_addr().unwrap().port();
    let r =
        nacos(node, "GET", &format!("instance/list?serviceName={service}&udpPort={port}&clientIP=127.0.0.1"));
    assert_eq!(r.status, 200);
    sock
}

/// Datagrams received within `within`.
fn received(sock: &UdpSocket, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    }
    out
}

#[test]
fn unacked_pushes_are_resent_a_bounded_number_of_times_and_limits_refuse_subscribers() {
    let node = common::single(
        "nacos-push-limits",
        &[
            "--nacos-push-ack-timeout-ms",
            "200",
            "--nacos-push-retries",
            "2",
            "--nacos-push-max-subscribers-per-service",
            "1",
        ],
    );
    let first = silent_subscriber(&node, "pushed");
    let second = silent_subscriber(&node, "pushed");
    assert_eq!(metric(&node, "muster_nacos_push_subscribers"), 1);
    assert_eq!(metric(&node, "muster_nacos_push_subscribers_refused_total"), 1);
    assert_eq!(form(&node, "POST", "instance", "serviceName=pushed&ip=10.2.0.1&port=80").text(), "ok");
    let got = received(&first, Duration::from_millis(1500));
    assert_eq!(got.len(), 3, "one push and two resends");
    assert!(got.windows(2).all(|w| w[0] == w[1]), "a resend is the same datagram");
    let v: Value = serde_json::from_slice(&got[0]).unwrap();
    assert_eq!(v["type"], "dom");
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["hosts"][0]["ip"], "10.2.0.1");
    assert!(received(&second, Duration::from_millis(300)).is_empty(), "the refused subscriber gets nothing");
    assert_eq!(metric(&node, "muster_nacos_pushes_total{outcome=\"resent\"}"), 2);
    assert_eq!(metric(&node, "muster_nacos_pushes_total{outcome=\"unacked\"}"), 1);
}

#[test]
fn pushes_past_the_packet_limit_are_skipped_and_idle_subscribers_forgotten() {
    let node = common::single(
        "nacos-push-size",
        &["--nacos-push-max-packet-bytes", "512", "--nacos-push-subscriber-ttl-ms", "1500"],
    );
    let sock = silent_subscriber(&node, "big");
    // Hex digits of a pseudo-random sequence: gzip cannot squeeze them under the limit.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blob: String = (0..3000)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            char::from(b"0123456789abcdef"[(x >> 60) as usize])
        })
        .collect();
    let meta = format!("{{\"blob\":\"{blob}\"}}");
    let body = format!("serviceName=big&ip=10.3.0.1&port=80&metadata={}", urlencode(&meta));
    assert_eq!(form(&node, "POST", "instance", &body).text(), "ok");
    assert!(received(&sock, Duration::from_millis(400)).is_empty());
    assert_eq!(metric(&node, "muster_nacos_pushes_total{outcome=\"too_large\"}"), 1);
    wait_until(Duration::from_secs(5), "the idle subscriber forgotten", || {
        metric(&node, "muster_nacos_push_subscribers") == 0
    });
    assert_eq!(metric(&node, "muster_nacos_push_subscribers_forgotten_total"), 1);
}

#[test]
fn udp_push_switched_off_subscribes_nobody() {
    let node = common::single("nacos-push-off", &["--nacos-udp-push", "false"]);
    let sock = silent_subscriber(&node, "quiet");
    let r = nacos(&node, "GET", "instance/list?serviceName=quiet&udpPort=9&clientIP=127.0.0.1");
    assert_eq!(r.json()["cacheMillis"], 3000, "no push subscription: the polling cache time");
    assert_eq!(form(&node, "POST", "instance", "serviceName=quiet&ip=10.4.0.1&port=80").text(), "ok");
    assert!(received(&sock, Duration::from_millis(500)).is_empty());
    assert!(!node.get("/metrics").text().contains("muster_nacos_pushes_total"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
