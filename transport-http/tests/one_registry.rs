//! One registry behind every API: an instance registered through one API on
//! one node of a three-node cluster is seen through every other API (the
//! native OpenAPI, Nacos v1, Eureka, Consul and the ConsoleAPI) on the other
//! nodes, and a deregistration through one API removes it from all of them.

mod common;

use std::time::Duration;

use common::{Node, cluster, request, wait_until};
use serde_json::Value;

const IP: &str = "10.20.30.40";
const PORT: u16 = 8080;

fn get_json(node: &Node, path: &str) -> Option<Value> {
    let r = request(&node.addr, "GET", path, &[("Accept", "application/json")], None);
    (r.status == 200).then(|| r.json())
}

/// Whether each API on `node` lists the instance (`IP:PORT` in service `ORDERS`).
fn seen_by_every_api(node: &Node) -> Vec<(&'static str, bool)> {
    let has = |v: Option<Value>, list: &dyn Fn(&Value) -> Vec<Value>, ip: &str, port: &str| {
        v.is_some_and(|v| list(&v).iter().any(|i| i[ip] == IP && i[port] == PORT))
    };
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let native = has(get_json(node, "/v1/instances?service=ORDERS"), &|v| arr(&v["instances"]), "ip", "port");
    let nacos = has(
        get_json(node, "/nacos/v1/ns/instance/list?serviceName=ORDERS"),
        &|v| arr(&v["hosts"]),
        "ip",
        "port",
    );
    let consul = get_json(node, "/v1/health/service/ORDERS").is_some_and(|v| {
        arr(&v).iter().any(|e| e["Service"]["Address"] == IP && e["Service"]["Port"] == PORT)
    });
    let eureka = get_json(node, "/eureka/apps/ORDERS").is_some_and(|v| {
        let i = &v["application"]["instance"];
        let list = if i.is_array() { arr(i) } else { vec![i.clone()] };
        list.iter().any(|i| i["ipAddr"] == IP && i["port"]["$"] == PORT)
    });
    let console =
        has(get_json(node, "/console/api/instances?service=ORDERS"), &|v| arr(&v["instances"]), "ip", "port");
    vec![("native", native), ("nacos", nacos), ("consul", consul), ("eureka", eureka), ("console", console)]
}

#[test]
fn an_instance_registered_through_eureka_is_seen_through_every_api_on_every_node_and_removed_through_nacos() {
    let nodes = cluster("one-registry", 3, &[]);
    let body = format!(
        r#"{{"instance":{{"instanceId":"{IP}:orders:{PORT}","hostName":"{IP}","app":"ORDERS","ipAddr":"{IP}","port":{{"$":{PORT},"@enabled":"true"}},"dataCenterInfo":{{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"}},"leaseInfo":{{"renewalIntervalInSecs":30,"durationInSecs":90}},"vipAddress":"orders","status":"UP"}}}}"#
    );
    let r = request(
        &nodes[0].addr,
        "POST",
        "/eureka/apps/ORDERS",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    for node in &nodes[1..] {
        wait_until(Duration::from_secs(10), "every API on every node lists the instance", || {
            seen_by_every_api(node).iter().all(|(_, seen)| *seen)
        });
    }

    // The native answer names the instance's cluster; Nacos deregisters it on node 1.
    let native = get_json(&nodes[1], "/v1/instances?service=ORDERS").unwrap();
    let cluster_name = native["instances"][0]["cluster"].as_str().unwrap().to_owned();
    let r = request(
        &nodes[1].addr,
        "DELETE",
        &format!("/nacos/v1/ns/instance?serviceName=ORDERS&ip={IP}&port={PORT}&clusterName={cluster_name}"),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for node in [&nodes[0], &nodes[2]] {
        wait_until(Duration::from_secs(10), "no API on any node lists the instance", || {
            seen_by_every_api(node).iter().all(|(_, seen)| !*seen)
        });
    }
}
