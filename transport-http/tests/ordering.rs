//! One client's writes keep their order across failover between nodes whose
//! clocks differ (issue 9, defect 4a), on real `muster` processes: the SDK
//! carries its ordering token (`?after=`, from each write answer's
//! `muster-counter`), and a node refuses a malformed token or one further
//! ahead of its clock than `--max-clock-skew-ms`.

mod common;

use std::time::Duration;

use common::{Node, count, free_ports, scratch, wait_until};
use muster_transport_http::client::{Client, InstanceRef, InstanceSpec};

const SECRET: &str = "test-cluster-secret-0123456789abcdef\n";

/// Two peers, each with its own data directory and secret file; node 1's
/// wall clock runs `skew_ms` ahead of node 2's.
fn pair(name: &str, skew_ms: i64, secrets: [&str; 2]) -> (Vec<Node>, std::path::PathBuf) {
    pair_within(name, skew_ms, secrets, "5000")
}

/// [`pair`] with the tolerated skew `max_skew_ms`.
fn pair_within(
    name: &str,
    skew_ms: i64,
    secrets: [&str; 2],
    max_skew_ms: &str,
) -> (Vec<Node>, std::path::PathBuf) {
    let dir = scratch(name);
    let ports = free_ports(2);
    let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let nodes = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let secret = dir.join(format!("secret-{i}"));
            std::fs::write(&secret, secrets[i]).unwrap();
            let offset = if i == 0 { skew_ms } else { 0 };
            let mut args =
                common::fast_with(&["--startup-timeout-ms", "500", "--max-clock-skew-ms", max_skew_ms]);
            args.extend([
                "--peers".to_owned(),
                peers.clone(),
                "--cluster-secret-file".to_owned(),
                secret.display().to_string(),
                "--data-dir".to_owned(),
                dir.join(format!("data-{i}")).display().to_string(),
                format!("--test-clock-offset-ms={offset}"),
            ]);
            Node::start(*port, &args, &dir)
        })
        .collect();
    (nodes, dir)
}

#[test]
fn a_client_that_fails_over_to_a_node_2_s_behind_keeps_its_deregistration_after_the_heal() {
    // Node 1 is 2 s ahead. The two nodes hold different secrets, so each
    // refuses the other's messages: a partition that a restart of node 1
    // with the right secret heals.
    let (mut nodes, dir) = pair("ordering-failover", 2_000, ["another-secret-0123456789abcdef-xx\n", SECRET]);
    for n in &nodes {
        n.wait_ready(Duration::from_secs(15));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let all: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let client = Client::builder(all).spread(false).request_timeout(Duration::from_secs(2)).build().unwrap();
    let spec = || InstanceSpec::new("ordered", "10.9.0.1", 8080).ephemeral(false);
    rt.block_on(client.register_once(spec())).unwrap();
    assert_eq!(client.current_server(), nodes[0].addr);
    let first = client.ordering_token();
    assert!(first > 0, "a write answer carries the client's token");

    // Node 1 goes away; the client fails over to node 2 and, well within
    // the 2 s of skew, registers again and deregisters there.
    nodes[0].kill();
    rt.block_on(client.register_once(spec())).unwrap();
    assert_eq!(client.current_server(), nodes[1].addr);
    assert!(client.ordering_token() > first, "node 2 issued a version above the client's earlier write");
    rt.block_on(client.deregister(&InstanceRef::new("ordered", "10.9.0.1", 8080))).unwrap();
    assert_eq!(count(&nodes[1], "ordered"), 0);

    // The heal: node 1 comes back from its disk with the right secret,
    // holding its (older) registration.
    std::fs::write(dir.join("secret-0"), SECRET).unwrap();
    nodes[0].restart();
    nodes[0].wait_ready(Duration::from_secs(15));
    wait_until(Duration::from_secs(10), "node 1 to take the deregistration", || {
        count(&nodes[0], "ordered") == 0
    });
    // Two more anti-entropy rounds: nothing brings it back.
    std::thread::sleep(Duration::from_secs(2));
    for n in &nodes {
        assert_eq!(count(n, "ordered"), 0, "{} brought the older registration back", n.addr);
    }
}

#[test]
fn a_malformed_token_or_one_beyond_the_skew_bound_is_refused_naming_after() {
    let node = common::single("ordering-token", &["--max-clock-skew-ms", "500"]);
    let body = common::instance("tok", "10.9.0.2", 80);
    for bad in ["x", "-1", "1.5", ""] {
        let r = node.req("POST", &format!("/v1/instances?after={bad}"), Some(&body));
        assert_eq!(r.status, 400, "after={bad}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], "after", "{}", r.text());
    }
    let ahead = (common::unix_ms() + 60_000) << 16;
    let r = node.req("DELETE", &format!("/v1/instances?service=tok&ip=10.9.0.2&port=80&after={ahead}"), None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "after");
    assert!(r.text().contains("max_clock_skew"), "{}", r.text());
    assert_eq!(count(&node, "tok"), 0, "nothing was registered");
    // A token from this node's own answers is taken, and the version after
    // it is above it.
    let r = node.req("POST", "/v1/instances", Some(&body));
    assert_eq!(r.status, 200);
    let token: u64 = r.header("muster-counter").unwrap().parse().unwrap();
    let weight = r#"{"service":"tok","ip":"10.9.0.2","port":80,"weight":2}"#;
    let r = node.req("PATCH", &format!("/v1/instances?after={token}"), Some(weight));
    assert_eq!(r.status, 200, "{}", r.text());
    let next: u64 = r.header("muster-counter").unwrap().parse().unwrap();
    assert!(next > token);
}

#[test]
fn cluster_nodes_show_each_peers_clock_offset_and_flag_one_beyond_the_bound() {
    // Node 1 runs 2 s ahead of node 2; the bound is the default 500 ms.
    let (nodes, _dir) = pair_within("ordering-offsets", 2_000, [SECRET, SECRET], "500");
    for n in &nodes {
        n.wait_ready(Duration::from_secs(15));
    }
    let peer_entry = |n: &Node, peer: &Node| {
        let body = n.get("/v1/cluster/nodes").json();
        body["nodes"].as_array().unwrap().iter().find(|e| e["id"] == peer.addr.as_str()).cloned().unwrap()
    };
    wait_until(Duration::from_secs(10), "both nodes to flag the other skewed", || {
        peer_entry(&nodes[1], &nodes[0])["clock"] == "skewed"
            && peer_entry(&nodes[0], &nodes[1])["clock"] == "skewed"
    });
    let seen_by_2 = peer_entry(&nodes[1], &nodes[0]);
    let offset = seen_by_2["clock_offset_ms"].as_i64().unwrap();
    let rtt = seen_by_2["rtt_ms"].as_i64().unwrap();
    // Within half the round trip, plus the whole-millisecond truncation of
    // the four readings.
    assert!((offset - 2_000).abs() <= rtt / 2 + 3, "offset {offset} ms with a {rtt} ms round trip");
    let seen_by_1 = peer_entry(&nodes[0], &nodes[1]);
    assert!(
        (seen_by_1["clock_offset_ms"].as_i64().unwrap() + 2_000).abs()
            <= seen_by_1["rtt_ms"].as_i64().unwrap() / 2 + 3,
        "{seen_by_1}"
    );
    let me = nodes[1].get("/v1/cluster/nodes").json();
    let own = me["nodes"].as_array().unwrap().iter().find(|e| e["is_self"] == true).cloned().unwrap();
    assert_eq!(own["clock_offset_ms"], 0);
    let skewed =
        common::metric(&nodes[1], &format!("muster_peer_clock_skewed{{peer=\"{}\"}}", nodes[0].addr));
    assert_eq!(skewed, Some(1.0));
    // A write on the node ahead reaches node 2 as a record 2 s in its
    // future: refused and counted.
    let r = nodes[0].req("POST", "/v1/instances", Some(&common::instance("ahead", "10.9.0.3", 80)));
    assert_eq!(r.status, 200);
    wait_until(Duration::from_secs(5), "node 2 to refuse the record", || {
        common::metric(&nodes[1], "muster_sync_records_refused_ahead_total").is_some_and(|v| v >= 1.0)
    });
    assert_eq!(count(&nodes[1], "ahead"), 0);
    assert!(nodes[1].log().contains("fix NTP"), "the operator is told what to do");
}
