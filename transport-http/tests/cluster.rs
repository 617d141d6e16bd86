//! `muster` processes on 127.0.0.1 forming a cluster: replication, watches
//! across nodes, a `kill -9`, takeover of expiry, restart, shutdown flush.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Node, count, instance, request, wait_until};

/// Starts three nodes that list each other and waits until all are ready.
fn cluster(name: &str) -> Vec<Node> {
    common::cluster(name, 3, &[])
}

fn peer_state(observer: &Node, peer: &Node) -> String {
    let v = observer.get("/v1/cluster/nodes").json();
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    let me = nodes.iter().find(|n| n["id"] == peer.addr.as_str());
    me.and_then(|n| n["state"].as_str()).unwrap_or("absent").to_owned()
}

#[test]
fn registrations_deregistrations_and_watches_travel_across_three_nodes() {
    let nodes = cluster("replication");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for observer in &nodes {
        for peer in &nodes {
            if observer.addr != peer.addr {
                wait_until(Duration::from_secs(5), "peers up", || peer_state(observer, peer) == "up");
            }
        }
    }

    // A registration on A is visible on B and C within 1 s.
    let t = Instant::now();
    assert_eq!(a.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", 8080))).status, 200);
    wait_until(Duration::from_secs(1), "registration visible on B and C", || {
        count(b, "orders") == 1 && count(c, "orders") == 1
    });
    let seen_after = t.elapsed();

    // A watch on C wakes on a change made on A.
    let checksum = c.get("/v1/instances?service=orders").json()["checksum"].as_str().unwrap().to_owned();
    let addr = c.addr.clone();
    let path = format!("/v1/instances?service=orders&checksum={checksum}&wait=20s");
    let watcher = std::thread::spawn(move || {
        let r = request(&addr, "GET", &path, &[], None);
        (r, Instant::now())
    });
    wait_until(Duration::from_secs(5), "the watch on C to be waiting", || {
        c.get("/metrics").text().contains("muster_watchers 1")
    });
    let changed_at = Instant::now();
    assert_eq!(a.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.2", 8080))).status, 200);
    let (r, woke_at) = watcher.join().unwrap();
    assert_eq!(r.json()["instances"].as_array().unwrap().len(), 2);
    let wake = woke_at.duration_since(changed_at);
    assert!(wake < Duration::from_secs(1), "the watch on C woke {wake:?} after the change on A");
    eprintln!(
        "registration seen on B and C after {seen_after:?}; watch on C woke {wake:?} after a write on A"
    );

    // A deregistration on B propagates to A and C.
    assert_eq!(b.req("DELETE", "/v1/instances?service=orders&ip=10.0.0.1&port=8080", None).status, 200);
    wait_until(Duration::from_secs(1), "deregistration visible on A and C", || {
        count(a, "orders") == 1 && count(c, "orders") == 1
    });
    // Service settings replicate too.
    assert_eq!(c.req("PUT", "/v1/services/orders", Some(r#"{"protect_threshold":0.5}"#)).status, 200);
    wait_until(Duration::from_secs(1), "service settings on A", || {
        a.get("/v1/services/orders").json()["protect_threshold"] == 0.5
    });
}

/// Registers on `node`; panics unless 200.
fn register(node: &Node, service: &str, ip: &str, port: u16) {
    let r = node.req("POST", "/v1/instances", Some(&instance(service, ip, port)));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_killed_node_is_taken_over_and_reloads_the_registry_when_restarted() {
    const LIVE: u16 = 30;
    const DEAD: u16 = 10;
    let mut nodes = cluster("kill");
    for p in 0..LIVE {
        register(&nodes[0], "live", "10.1.0.1", 1000 + p);
    }
    for p in 0..DEAD {
        register(&nodes[0], "dead", "10.2.0.1", 1000 + p);
    }

    // The live instances' clients beat to B, in batches, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let unknown = Arc::new(AtomicUsize::new(0));
    let beater = {
        let (stop, unknown, addr) = (Arc::clone(&stop), Arc::clone(&unknown), nodes[1].addr.clone());
        let keys: Vec<String> = (0..LIVE).map(|p| instance("live", "10.1.0.1", 1000 + p)).collect();
        let body = format!(r#"{{"beats":[{}]}}"#, keys.join(","));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = request(&addr, "PUT", "/v1/instances/beat", &[], Some(body.as_bytes()));
                assert_eq!(r.status, 200, "{}", r.text());
                unknown.fetch_add(r.json()["unknown"].as_array().map_or(0, Vec::len), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    wait_until(Duration::from_secs(2), "all instances on every node", || {
        nodes.iter().all(|n| count(n, "live") == usize::from(LIVE) && count(n, "dead") == usize::from(DEAD))
    });

    // kill -9 C: A and B mark it down and keep serving.
    nodes[2].kill();
    let killed_at = Instant::now();
    wait_until(Duration::from_secs(5), "A and B to mark C down", || {
        peer_state(&nodes[0], &nodes[2]) == "down" && peer_state(&nodes[1], &nodes[2]) == "down"
    });
    eprintln!("C marked down {:?} after kill -9", killed_at.elapsed());

    // A and B take over expiry: the dead clients' instances go everywhere,
    // the live ones (beating to B) stay, whichever node was responsible.
    wait_until(Duration::from_secs(20), "dead instances expired on A and B", || {
        for n in &nodes[..2] {
            assert_eq!(count(n, "live"), usize::from(LIVE), "a live instance was lost on {}", n.addr);
        }
        count(&nodes[0], "dead") == 0 && count(&nodes[1], "dead") == 0
    });
    eprintln!("dead instances expired on A and B {:?} after kill -9", killed_at.elapsed());
    let healthy = |n: &Node| {
        let v = n.get("/v1/instances?service=live&healthy_only=true").json();
        v["instances"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(healthy(&nodes[0]), usize::from(LIVE), "live instances stay healthy on A");

    // C restarts, loads the registry from a peer, and only then is ready.
    nodes[2].restart();
    let restarted = Instant::now();
    wait_until(Duration::from_secs(10), "C ready after restart", || {
        let r =
            common::try_request(&nodes[2].addr, "GET", "/health/ready", &[], None, Duration::from_secs(1));
        match r {
            Ok(r) if r.status == 200 => true,
            Ok(r) => {
                assert_eq!(r.status, 503, "{}", r.text());
                // Not ready: client routes refuse rather than serve a partial
                // registry (or, if it became ready meanwhile, serve all of it).
                let q = nodes[2].get("/v1/instances?service=live");
                match q.status {
                    503 => {}
                    200 => {
                        assert_eq!(q.json()["instances"].as_array().map(Vec::len), Some(usize::from(LIVE)))
                    }
                    other => panic!("C answered {other} while starting: {}", q.text()),
                }
                false
            }
            Err(_) => false,
        }
    });
    assert_eq!(count(&nodes[2], "live"), usize::from(LIVE), "C was ready before it had the registry");
    assert_eq!(count(&nodes[2], "dead"), 0);
    eprintln!("C ready with the registry {:?} after restart", restarted.elapsed());
    wait_until(Duration::from_secs(5), "A to see C up again", || peer_state(&nodes[0], &nodes[2]) == "up");

    stop.store(true, Ordering::Relaxed);
    beater.join().unwrap();
    assert_eq!(unknown.load(Ordering::Relaxed), 0, "a live instance was unknown to B at some beat");
}

#[test]
fn sigterm_sends_pending_sync_to_peers_before_exiting() {
    // Changes wait a minute before they are sent and anti-entropy is as
    // slow: only the shutdown flush can bring the registration to B.
    let mut nodes =
        common::cluster("flush", 2, &["--sync-delay-ms", "60000", "--anti-entropy-interval-ms", "60000"]);
    register(&nodes[0], "orders", "10.0.0.1", 80);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&nodes[1], "orders"), 0, "the change was sent before the sync delay");
    let status = nodes[0].terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert_eq!(count(&nodes[1], "orders"), 1, "the pending change was not flushed at shutdown");
}
