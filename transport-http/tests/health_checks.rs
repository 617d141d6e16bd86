//! Active health checks of persistent instances by a real `muster` process,
//! against TCP and HTTP listeners on 127.0.0.1 that come and go.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Node, free_ports, scratch, wait_until};

fn start(name: &str) -> Node {
    let args: Vec<String> =
        common::fast_with(&["--health-check-interval-ms", "200", "--health-check-timeout-ms", "500"]);
    let node = Node::start(free_ports(1)[0], &args, &scratch(name));
    node.wait_ready(Duration::from_secs(10));
    node
}

fn healthy(node: &Node, service: &str) -> Option<bool> {
    node.get(&format!("/v1/instances?service={service}")).json()["instances"][0]["healthy"].as_bool()
}

fn register_persistent(node: &Node, service: &str, port: u16, meta: &str) {
    let body = format!(
        r#"{{"service":"{service}","ip":"127.0.0.1","port":{port},"ephemeral":false,"metadata":{{{meta}}}}}"#
    );
    let r = node.req("POST", "/v1/instances", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_persistent_instance_follows_its_tcp_listener() {
    let node = start("health-tcp");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    register_persistent(&node, "db", port, "");
    wait_until(Duration::from_secs(5), "a few checks pass", || {
        node.get("/metrics").text().contains("muster_health_checks_total{result=\"passed\"} 2")
    });
    assert_eq!(healthy(&node, "db"), Some(true));
    drop(listener);
    wait_until(Duration::from_secs(5), "unhealthy once connects are refused", || {
        healthy(&node, "db") == Some(false)
    });
    let _back = TcpListener::bind(("127.0.0.1", port)).unwrap();
    wait_until(Duration::from_secs(5), "healthy again", || healthy(&node, "db") == Some(true));
}

/// A tiny HTTP server answering `/healthz` with 200 while `up`, 503 otherwise.
fn http_server(up: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let wanted = String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz ");
            let status =
                if wanted && up.load(Ordering::Relaxed) { "200 OK" } else { "503 Service Unavailable" };
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
            );
        }
    });
    port
}

#[test]
fn an_http_check_follows_the_status_of_its_path() {
    let node = start("health-http");
    let up = Arc::new(AtomicBool::new(true));
    let port = http_server(Arc::clone(&up));
    register_persistent(
        &node,
        "web",
        port,
        r#""muster.health_check":"http","muster.health_check_path":"/healthz""#,
    );
    wait_until(Duration::from_secs(5), "checks pass", || {
        node.get("/metrics").text().contains("muster_health_checks_total{result=\"passed\"} 2")
    });
    assert_eq!(healthy(&node, "web"), Some(true));
    up.store(false, Ordering::Relaxed);
    wait_until(Duration::from_secs(5), "unhealthy on 503", || healthy(&node, "web") == Some(false));
    up.store(true, Ordering::Relaxed);
    wait_until(Duration::from_secs(5), "healthy on 200", || healthy(&node, "web") == Some(true));
}

#[test]
fn an_instance_with_check_none_keeps_the_health_its_client_sets() {
    let node = start("health-none");
    // Nothing listens on these ports: any check would fail.
    let ports = free_ports(2);
    register_persistent(&node, "batch", ports[0], r#""muster.health_check":"none""#);
    register_persistent(&node, "probe", ports[1], "");
    // Once the checked one is unhealthy, checks have run for a while.
    wait_until(Duration::from_secs(5), "the checked instance fails", || {
        healthy(&node, "probe") == Some(false)
    });
    assert_eq!(healthy(&node, "batch"), Some(true));
    let patch = format!(r#"{{"service":"batch","ip":"127.0.0.1","port":{},"healthy":false}}"#, ports[0]);
    assert_eq!(node.req("PATCH", "/v1/instances", Some(&patch)).status, 200);
    assert_eq!(healthy(&node, "batch"), Some(false));
}
