//! The Eureka REST API against real `muster` processes: the real Python
//! client (`py-eureka-client` 0.13.3) on a three-node cluster, and the wire
//! details its and Spring's clients depend on, written from Eureka's own
//! server (`eureka-core` `ApplicationResource`, `InstanceResource`,
//! `EurekaJacksonCodec`, the XStream converters) and the transcript in
//! `/work/shared/wire/eureka_py.log`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Node, Resp, cluster, request, single, wait_until};
use serde_json::Value;

const JSON: &[(&str, &str)] = &[("Accept", "application/json")];

/// The body py-eureka-client registers with (from the wire transcript).
fn instance_body(app: &str, ip: &str, port: u16, renewal: u32, duration: u32) -> String {
    let lower = app.to_ascii_lowercase();
    format!(
        r#"{{"instance": {{"instanceId": "{ip}:{lower}:{port}", "hostName": "{ip}", "app": "{app}", "ipAddr": "{ip}", "port": {{"$": {port}, "@enabled": "true"}}, "securePort": {{"$": 9443, "@enabled": "false"}}, "countryId": 1, "dataCenterInfo": {{"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}}, "leaseInfo": {{"renewalIntervalInSecs": {renewal}, "durationInSecs": {duration}, "registrationTimestamp": 0, "lastRenewalTimestamp": 0, "evictionTimestamp": 0, "serviceUpTimestamp": 0}}, "metadata": {{"management.port": "{port}", "zone": "z1", "version": "1.2.3"}}, "homePageUrl": "http://{ip}:{port}/", "statusPageUrl": "http://{ip}:{port}/info", "healthCheckUrl": "http://{ip}:{port}/health", "secureHealthCheckUrl": "", "vipAddress": "{lower}", "secureVipAddress": "{lower}", "isCoordinatingDiscoveryServer": "false", "status": "UP", "overriddenstatus": "UNKNOWN", "lastUpdatedTimestamp": "1795565775694", "lastDirtyTimestamp": "1795565775694"}}}}"#
    )
}

fn eureka(node: &Node, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    request(&node.addr, method, &format!("/eureka{path}"), headers, body.map(str::as_bytes))
}

fn register(node: &Node, app: &str, ip: &str, port: u16) {
    let r = eureka(
        node,
        "POST",
        &format!("/apps/{app}"),
        &[("Content-Type", "application/json")],
        Some(&instance_body(app, ip, port, 30, 90)),
    );
    assert_eq!(r.status, 204, "register answers 204 No Content: {}", r.text());
}

fn apps_json(node: &Node, path: &str) -> Value {
    let r = eureka(node, "GET", path, JSON, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// `(app, instanceId, actionType)` of every instance of an applications answer.
fn listed(v: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for app in v["applications"]["application"].as_array().unwrap() {
        for i in app["instance"].as_array().unwrap() {
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            out.push((app["name"].as_str().unwrap().to_owned(), s("instanceId"), s("actionType")));
        }
    }
    out.sort();
    out
}

fn native_instances(node: &Node, service: &str) -> Vec<Value> {
    let r = node.get(&format!("/v1/instances?service={service}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["instances"].as_array().unwrap().clone()
}

#[test]
fn a_registration_reads_back_in_xml_by_default_and_in_json_when_asked() {
    let node = single("eureka-shapes", &[]);
    register(&node, "DRIVE-EUREKA-PY", "127.0.0.31", 9031);

    // No Accept header: XML, as py-eureka-client expects.
    let r = eureka(&node, "GET", "/apps/", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/xml"));
    let xml = r.text();
    for part in [
        "<applications>",
        "<apps__hashcode>UP_1_</apps__hashcode>",
        "<name>DRIVE-EUREKA-PY</name>",
        "<instanceId>127.0.0.31:drive-eureka-py:9031</instanceId>",
        r#"<port enabled="true">9031</port>"#,
        r#"<securePort enabled="false">9443</securePort>"#,
        r#"<dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>"#,
        "<renewalIntervalInSecs>30</renewalIntervalInSecs><",
        "<version>1.2.3</version>",
        "<management.port>9031</management.port>",
        "<status>UP</status>",
        "<vipAddress>drive-eureka-py</vipAddress>",
        "<lastDirtyTimestamp>1795565775694</lastDirtyTimestamp>",
    ] {
        assert!(xml.contains(part), "{part} missing from {xml}");
    }
    assert!(!xml.contains("eureka.") && !xml.contains("muster."), "internal metadata shown: {xml}");

    let v = apps_json(&node, "/apps");
    assert_eq!(v["applications"]["apps__hashcode"], "UP_1_");
    let app = &v["applications"]["application"][0];
    assert_eq!(app["name"], "DRIVE-EUREKA-PY");
    let i = &app["instance"][0];
    assert_eq!(i["port"], serde_json::json!({"$": 9031, "@enabled": "true"}));
    // Asked for 90 s; cut to the node's tombstone TTL (60 s in the test
    // nodes): a lease may not outlive the deletion it ends in.
    assert_eq!(i["leaseInfo"]["durationInSecs"], 60);
    assert_eq!(i["metadata"]["zone"], "z1");

    // One instance is an object, in both encodings; app names are case-insensitive.
    let one = eureka(&node, "GET", "/apps/drive-eureka-py/127.0.0.31%3Adrive-eureka-py%3A9031", JSON, None);
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["instance"]["instanceId"], "127.0.0.31:drive-eureka-py:9031");
    let by_id = eureka(&node, "GET", "/instances/127.0.0.31:drive-eureka-py:9031", &[], None);
    assert!(by_id.text().starts_with("<instance><"), "{}", by_id.text());
    let app = eureka(&node, "GET", "/apps/drive-eureka-py", JSON, None).json();
    assert_eq!(app["application"]["instance"].as_array().unwrap().len(), 1);
    let vip = eureka(&node, "GET", "/vips/drive-eureka-py", JSON, None);
    assert_eq!(listed(&vip.json()).len(), 1);
    assert_eq!(eureka(&node, "GET", "/svips/drive-eureka-py", JSON, None).status, 200);
    assert_eq!(eureka(&node, "GET", "/vips/nobody", JSON, None).status, 404);

    // The same instance through the native API: key, metadata and lease.
    let native = native_instances(&node, "DRIVE-EUREKA-PY");
    assert_eq!(native.len(), 1);
    assert_eq!((native[0]["ip"].as_str(), native[0]["port"].as_u64()), (Some("127.0.0.31"), Some(9031)));
    assert_eq!(native[0]["metadata"]["version"], "1.2.3");
    assert_eq!(native[0]["metadata"]["muster.heartbeat_interval_ms"], "30000");
    assert_eq!(native[0]["metadata"]["muster.remove_after_ms"], "60000");
}

#[test]
fn an_xml_registration_is_read_like_a_json_one() {
    let node = single("eureka-xml", &[]);
    let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<instance>
  <instanceId>orders-1</instanceId><hostName>orders.local</hostName><app>ORDERS</app>
  <ipAddr>10.0.0.7</ipAddr><status>UP</status><port enabled="true">8080</port>
  <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
  <leaseInfo><renewalIntervalInSecs>10</renewalIntervalInSecs><durationInSecs>40</durationInSecs></leaseInfo>
  <metadata><team>a &amp; b</team></metadata><vipAddress>orders</vipAddress>
</instance>"#;
    let r = eureka(&node, "POST", "/apps/ORDERS", &[("Content-Type", "application/xml")], Some(body));
    assert_eq!(r.status, 204, "{}", r.text());
    let one = eureka(&node, "GET", "/apps/ORDERS/orders-1", JSON, None).json();
    let i = &one["instance"];
    assert_eq!((i["hostName"].as_str(), i["ipAddr"].as_str()), (Some("orders.local"), Some("10.0.0.7")));
    assert_eq!(i["metadata"]["team"], "a & b");
    assert_eq!(i["leaseInfo"]["renewalIntervalInSecs"], 10);
    let xml = eureka(&node, "GET", "/apps/ORDERS/orders-1", &[], None).text();
    assert!(xml.contains("<team>a &amp; b</team>"), "{xml}");
}

#[test]
fn a_renewal_of_an_unknown_instance_or_with_a_newer_dirty_timestamp_answers_404() {
    let node = single("eureka-renew", &[]);
    register(&node, "SVC", "127.0.0.5", 7000);
    let id = "127.0.0.5%3Asvc%3A7000";
    let renew = |q: &str| eureka(&node, "PUT", &format!("/apps/SVC/{id}?status=UP{q}"), &[], None).status;
    assert_eq!(renew("&lastDirtyTimestamp=1795565775694"), 200);
    assert_eq!(renew(""), 200);
    assert_eq!(
        renew("&lastDirtyTimestamp=1795565775695"),
        404,
        "the client's copy is newer: it must register"
    );
    assert_eq!(eureka(&node, "PUT", "/apps/SVC/no-such-instance?status=UP", &[], None).status, 404);
    assert_eq!(eureka(&node, "PUT", "/apps/NOAPP/x", &[], None).status, 404);
    assert_eq!(eureka(&node, "DELETE", "/apps/SVC/no-such-instance", &[], None).status, 404);
    assert_eq!(eureka(&node, "DELETE", &format!("/apps/SVC/{id}"), &[], None).status, 200);
    assert_eq!(renew(""), 404, "cancelled");
    assert!(native_instances(&node, "SVC").is_empty());
}

#[test]
fn status_overrides_map_onto_enabled_and_metadata_updates_keep_the_eureka_fields() {
    let node = single("eureka-status", &[]);
    register(&node, "SVC", "127.0.0.5", 7000);
    let id = "127.0.0.5:svc:7000";
    let path = |tail: &str| format!("/apps/SVC/{id}{tail}");
    let eureka_status = || eureka(&node, "GET", &path(""), JSON, None).json()["instance"]["status"].clone();
    let enabled = || native_instances(&node, "SVC")[0]["enabled"].as_bool().unwrap();

    let r = eureka(
        &node,
        "PUT",
        &path("/status?value=OUT_OF_SERVICE&lastDirtyTimestamp=1795565775694"),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(eureka_status(), "OUT_OF_SERVICE");
    assert!(!enabled(), "OUT_OF_SERVICE takes the instance out of traffic");
    assert_eq!(apps_json(&node, "/apps")["applications"]["apps__hashcode"], "OUT_OF_SERVICE_1_");
    // Renewals go on while overridden.
    assert_eq!(eureka(&node, "PUT", &path("?status=OUT_OF_SERVICE"), &[], None).status, 200);

    assert_eq!(
        eureka(&node, "DELETE", &path("/status?lastDirtyTimestamp=1795565775694"), &[], None).status,
        200
    );
    assert_eq!(eureka_status(), "UP");
    assert!(enabled());

    assert_eq!(eureka(&node, "PUT", &path("/status?value=BOGUS"), &[], None).status, 400);
    assert_eq!(eureka(&node, "PUT", &path("/status"), &[], None).status, 400);
    assert_eq!(eureka(&node, "PUT", "/apps/SVC/nobody/status?value=UP", &[], None).status, 404);

    assert_eq!(eureka(&node, "PUT", &path("/metadata?build=42&zone=z2"), &[], None).status, 200);
    let i = eureka(&node, "GET", &path(""), JSON, None).json()["instance"].clone();
    assert_eq!((i["metadata"]["build"].as_str(), i["metadata"]["zone"].as_str()), (Some("42"), Some("z2")));
    assert_eq!(i["instanceId"], id, "the Eureka fields survive a metadata change");
    assert_eq!(eureka(&node, "PUT", &path("/metadata?eureka.status=UP"), &[], None).status, 400);
    assert_eq!(eureka(&node, "PUT", &path("/metadata"), &[], None).status, 400);
}

#[test]
fn the_delta_carries_recent_changes_and_the_hashcode_of_the_whole_registry() {
    let node = single("eureka-delta", &[]);
    register(&node, "A", "127.0.0.1", 1001);
    assert_eq!(listed(&apps_json(&node, "/apps")).len(), 1);
    register(&node, "B", "127.0.0.1", 1002);
    let d = apps_json(&node, "/apps/delta");
    assert_eq!(d["applications"]["apps__hashcode"], "UP_2_");
    assert_eq!(listed(&d), vec![("B".into(), "127.0.0.1:b:1002".into(), "ADDED".into())]);
    let v1 = d["applications"]["versions__delta"].clone();

    let r = eureka(&node, "PUT", "/apps/A/127.0.0.1:a:1001/status?value=DOWN", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(eureka(&node, "DELETE", "/apps/B/127.0.0.1:b:1002", &[], None).status, 200);
    let d = apps_json(&node, "/apps/delta");
    assert_eq!(d["applications"]["apps__hashcode"], "DOWN_1_");
    assert_ne!(d["applications"]["versions__delta"], v1);
    assert_eq!(
        listed(&d),
        vec![
            ("A".into(), "127.0.0.1:a:1001".into(), "MODIFIED".into()),
            ("B".into(), "127.0.0.1:b:1002".into(), "ADDED".into()),
            ("B".into(), "127.0.0.1:b:1002".into(), "DELETED".into()),
        ]
    );
    // The XML delta, as py-eureka-client reads it.
    let xml = eureka(&node, "GET", "/apps/delta", &[], None).text();
    assert!(
        xml.contains("<actionType>DELETED</actionType>") && xml.contains("<apps__hashcode>DOWN_1_"),
        "{xml}"
    );
}

#[test]
fn the_delta_history_is_bounded_in_count_and_age() {
    let node = single(
        "eureka-delta-bounds",
        &["--eureka-max-delta-changes", "2", "--eureka-delta-retention-ms", "1500"],
    );
    apps_json(&node, "/apps");
    for port in 1..=5 {
        register(&node, "MANY", "127.0.0.1", port);
        apps_json(&node, "/apps");
    }
    let d = apps_json(&node, "/apps/delta");
    let ports: Vec<String> = listed(&d).into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(
        ports,
        vec!["127.0.0.1:many:4".to_owned(), "127.0.0.1:many:5".to_owned()],
        "only the last two"
    );
    assert_eq!(d["applications"]["apps__hashcode"], "UP_5_", "the hashcode is of everything");
    std::thread::sleep(Duration::from_millis(1700));
    assert!(listed(&apps_json(&node, "/apps/delta")).is_empty(), "changes older than the retention are gone");
}

#[test]
fn the_eureka_lease_is_the_instance_lease_in_the_core() {
    let node = single("eureka-lease", &[]);
    let body = instance_body("SHORT", "127.0.0.9", 9000, 1, 3);
    assert_eq!(
        eureka(&node, "POST", "/apps/SHORT", &[("Content-Type", "application/json")], Some(&body)).status,
        204
    );
    assert_eq!(native_instances(&node, "SHORT").len(), 1);
    // No renewals: removed after its durationInSecs (3 s), not the node's 6 s.
    wait_until(Duration::from_millis(5500), "expiry after durationInSecs", || {
        native_instances(&node, "SHORT").is_empty()
    });
    assert_eq!(eureka(&node, "GET", "/apps/SHORT", &[], None).status, 404);
}

#[test]
fn an_instance_registered_through_the_native_api_is_an_eureka_instance() {
    let node = single("eureka-native", &[]);
    let r = node.req("POST", "/v1/instances", Some(r#"{"service":"orders","ip":"10.1.2.3","port":8080}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = apps_json(&node, "/apps");
    assert_eq!(listed(&v), vec![("ORDERS".into(), "10.1.2.3:8080".into(), "ADDED".into())]);
    let app = eureka(&node, "GET", "/apps/orders", JSON, None).json();
    assert_eq!(app["application"]["instance"][0]["vipAddress"], "orders");
    // Renewed through Eureka, it is the same instance.
    assert_eq!(eureka(&node, "PUT", "/apps/orders/10.1.2.3:8080", &[], None).status, 200);
}

#[test]
fn malformed_bodies_wrong_methods_and_unknown_paths_are_refused_and_change_nothing() {
    let node = single("eureka-bad", &["--max-body-bytes", "4096"]);
    let ct = [("Content-Type", "application/json")];
    let xml = [("Content-Type", "application/xml")];
    let good = instance_body("SVC", "127.0.0.5", 7000, 30, 90);
    type Case<'a> = (&'a [(&'a str, &'a str)], String, u16);
    let cases: Vec<Case<'_>> = vec![
        (&ct, "{".into(), 400),
        (&ct, "[]".into(), 400),
        (&ct, r#"{"instance": 5}"#.into(), 400),
        (&ct, good.replace(r#""hostName": "127.0.0.5", "#, ""), 400),
        (&ct, good.replace(r#""ipAddr": "127.0.0.5", "#, ""), 400),
        (&ct, good.replace(r#""app": "SVC""#, r#""app": "OTHER""#), 400),
        (&ct, good.replace(r#""port": {"$": 7000"#, r#""port": {"$": "many""#), 400),
        (&ct, good.replace(r#""port": {"$": 7000"#, r#""port": {"$": 70000"#), 400),
        (&ct, good.replace(r#""status": "UP""#, r#""status": "SIDEWAYS""#), 400),
        (&ct, good.replace(r#""ipAddr": "127.0.0.5""#, r#""ipAddr": "not an ip!""#), 400),
        (&xml, "<instance><app>SVC</app>".into(), 400),
        (&xml, "<instance><app>SVC</ap></instance>".into(), 400),
        (&xml, "<applications/>".into(), 400),
        (&xml, format!("{}{}", "<a>".repeat(40), "</a>".repeat(40)), 400),
        (&ct, format!(r#"{{"instance": {{"x": "{}"}}}}"#, "y".repeat(5000)), 413),
    ];
    for (headers, body, status) in &cases {
        let r = eureka(&node, "POST", "/apps/SVC", headers, Some(body));
        assert_eq!(r.status, *status, "{body:.80}: {}", r.text());
    }
    // The Eureka fields count against the metadata limits (64 entries by default).
    let user: Vec<String> = (0..60).map(|i| format!(r#""k{i}": "v""#)).collect();
    let big = good.replace(
        r#""metadata": {"management.port": "7000", "#,
        &format!(r#""metadata": {{{}, "#, user.join(", ")),
    );
    let r = eureka(&node, "POST", "/apps/SVC", &ct, Some(&big));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("metadata"), "{}", r.text());
    // Unknown fields are ignored, as Eureka's codec does.
    let extra = good.replace(r#""countryId": 1,"#, r#""countryId": 1, "newField": {"a": [1]},"#);
    assert_eq!(eureka(&node, "POST", "/apps/SVC", &ct, Some(&extra)).status, 204);
    assert_eq!(eureka(&node, "DELETE", "/apps/SVC/127.0.0.5:svc:7000", &[], None).status, 200);

    assert_eq!(eureka(&node, "PATCH", "/apps/SVC", &[], None).status, 405);
    assert_eq!(eureka(&node, "POST", "/apps", &[], None).status, 405);
    assert_eq!(eureka(&node, "GET", "/apps/SVC/x/status", &[], None).status, 405);
    assert_eq!(eureka(&node, "GET", "/nothing", &[], None).status, 404);
    assert_eq!(eureka(&node, "GET", "/apps/SVC/x/y/z", &[], None).status, 404);
    assert_eq!(eureka(&node, "GET", "/apps/SVC/%ZZ", &[], None).status, 400);
    assert_eq!(eureka(&node, "GET", "/apps/bad%20name", &[], None).status, 400);
    assert_eq!(request(&node.addr, "GET", "/eurekaX/apps", &[], None).status, 404, "not under the prefix");
    let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
    let r = eureka(&node, "PUT", &format!("/apps/SVC/x/metadata?{}", many.join("&")), &[], None);
    assert_eq!(r.status, 400, "at most 64 query parameters: {}", r.text());

    assert!(native_instances(&node, "SVC").is_empty(), "nothing was registered");
    assert_eq!(apps_json(&node, "/apps")["applications"]["apps__hashcode"], "");
    assert!(node.get("/health/live").status == 200, "the node is still up");
}

#[test]
fn the_prefix_is_configurable_and_the_api_can_be_turned_off() {
    let node = single("eureka-prefix", &["--eureka-prefix", "/eureka/v2"]);
    assert_eq!(request(&node.addr, "GET", "/eureka/v2/apps", &[], None).status, 200);
    assert_eq!(request(&node.addr, "GET", "/eureka/apps", &[], None).status, 404);
    let off = single("eureka-off", &["--eureka-prefix", "off"]);
    assert_eq!(request(&off.addr, "GET", "/eureka/apps", &[], None).status, 404);
    let group = single("eureka-group", &["--eureka-group", "EUREKA", "--eureka-namespace", "legacy"]);
    register(&group, "SVC", "127.0.0.5", 7000);
    let r = group.get("/v1/instances?service=SVC&namespace=legacy&group=EUREKA");
    assert_eq!(r.json()["instances"].as_array().unwrap().len(), 1, "{}", r.text());
}

#[test]
fn a_delta_fetched_from_another_node_brings_a_full_copy_to_the_registry_hashcode_at_300_instances() {
    let nodes = cluster("eureka-size", 3, &[]);
    for i in 0..300u16 {
        register(&nodes[0], &format!("APP-{}", i % 3), "127.0.0.1", 10_000 + i);
    }
    let count = |v: &Value| listed(v).len();
    wait_until(Duration::from_secs(10), "300 instances on node 2", || {
        count(&apps_json(&nodes[2], "/apps")) == 300
    });
    // A client's copy: the full fetch from node 2.
    let full = apps_json(&nodes[2], "/apps");
    assert_eq!(full["applications"]["apps__hashcode"], "UP_300_");
    let mut copy: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for app in full["applications"]["application"].as_array().unwrap() {
        for i in app["instance"].as_array().unwrap() {
            copy.insert(
                i["instanceId"].as_str().unwrap().to_owned(),
                i["status"].as_str().unwrap().to_owned(),
            );
        }
    }
    // Changes through node 1: ten cancels, ten status overrides.
    for i in 0..10u16 {
        let app = format!("APP-{}", i % 3);
        let id = format!("127.0.0.1:{}:{}", app.to_ascii_lowercase(), 10_000 + i);
        assert_eq!(eureka(&nodes[1], "DELETE", &format!("/apps/{app}/{id}"), &[], None).status, 200);
        let j = i + 100;
        let app = format!("APP-{}", j % 3);
        let id = format!("127.0.0.1:{}:{}", app.to_ascii_lowercase(), 10_000 + j);
        let path = format!("/apps/{app}/{id}/status?value=OUT_OF_SERVICE");
        assert_eq!(eureka(&nodes[1], "PUT", &path, &[], None).status, 200);
    }
    wait_until(Duration::from_secs(10), "the changes on node 2", || {
        apps_json(&nodes[2], "/apps")["applications"]["apps__hashcode"] == "OUT_OF_SERVICE_10_UP_280_"
    });
    // The client applies the delta from node 2 as Eureka clients do and
    // arrives at the hashcode the delta carries.
    let delta = apps_json(&nodes[2], "/apps/delta");
    for app in delta["applications"]["application"].as_array().unwrap() {
        for i in app["instance"].as_array().unwrap() {
            let id = i["instanceId"].as_str().unwrap().to_owned();
            match i["actionType"].as_str().unwrap() {
                "DELETED" => {
                    copy.remove(&id);
                }
                _ => {
                    copy.insert(id, i["status"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for status in copy.values() {
        *counts.entry(status.as_str()).or_default() += 1;
    }
    let mine: String = counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect();
    assert_eq!(mine, "OUT_OF_SERVICE_10_UP_280_");
    assert_eq!(delta["applications"]["apps__hashcode"], mine.as_str());
}

/// The venv python with py-eureka-client (`scripts/setup-python.sh`).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MUSTER_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out =
        Command::new(root.join("scripts/setup-python.sh")).output().expect("run scripts/setup-python.sh");
    assert!(out.status.success(), "setup-python.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn py_eureka_client_registers_renews_discovers_and_follows_changes_across_a_three_node_cluster() {
    let nodes = cluster("eureka-py", 3, &[]);
    let url = |n: &Node| format!("http://{}/eureka", n.addr);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/eureka_flow.py");
    let mut child = common::Proc(
        Command::new(python())
            .arg(&script)
            .args([url(&nodes[0]), url(&nodes[1])])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut steps = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        // Each change made through nodes 0 and 1 is seen on node 2 by the native API.
        match line.as_str() {
            "STEP discovered" => {
                let i = native_instances(&nodes[2], "PY-PROVIDER");
                assert_eq!(i.len(), 1, "{i:?}");
                assert_eq!(i[0]["metadata"]["zone"], "z1");
                assert_eq!(i[0]["metadata"]["muster.remove_after_ms"], "4000");
            }
            "STEP status-out-of-service" => {
                wait_until(Duration::from_secs(5), "disabled on node 2", || {
                    native_instances(&nodes[2], "PY-PROVIDER").first().is_some_and(|i| i["enabled"] == false)
                });
            }
            "STEP cancelled" => {
                wait_until(Duration::from_secs(5), "gone on node 2", || {
                    native_instances(&nodes[2], "PY-PROVIDER").is_empty()
                });
            }
            _ => {}
        }
        steps.push(line);
        if steps.last().is_some_and(|l| l == "OK") {
            break;
        }
    }
    child.kill();
    let errors = errors.join().unwrap_or_default();
    assert_eq!(steps.last().map(String::as_str), Some("OK"), "steps {steps:?}; stderr:\n{errors}");
}
