//! The Rust SDK against real `muster` processes on 127.0.0.1: discovery
//! across nodes, provider death, failover, every server down, and a node
//! that restarts with an empty memory.
//!
//! Each test drives the SDK on a multi-threaded tokio runtime while the test
//! thread observes the nodes over plain HTTP; every wait is bounded.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Node, Proc, count, scratch, wait_until};
use muster_transport_http::client::{Client, InstanceList, InstanceSpec, Registration, Subscription};
use tokio::runtime::Runtime;

/// Heartbeat every 300 ms, unhealthy after 1 s, removed after 2 s.
const QUICK: &[&str] =
    &["--heartbeat-interval-ms", "300", "--unhealthy-after-ms", "1000", "--remove-after-ms", "2000"];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The addresses of `nodes`.
fn addrs(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.addr.clone()).collect()
}

/// A client of `servers` with timeouts fit for a test on one machine.
fn client(servers: &[String]) -> Client {
    builder(servers).build().unwrap()
}

fn builder(servers: &[String]) -> muster_transport_http::client::ClientBuilder {
    Client::builder(servers.to_vec())
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(2))
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .watch_wait(Duration::from_secs(10))
        .spread(false)
}

/// Runs `fut` on `rt`, failing the test after `within`.
fn block<T>(rt: &Runtime, within: Duration, fut: impl std::future::Future<Output = T>) -> T {
    rt.block_on(async { tokio::time::timeout(within, fut).await.expect("timed out") })
}

/// Every list a subscription yields, in order.
type Seen = Arc<Mutex<Vec<Arc<InstanceList>>>>;

fn record(rt: &Runtime, mut sub: Subscription) -> Seen {
    let seen = Seen::default();
    let out = Arc::clone(&seen);
    rt.spawn(async move {
        while let Some(list) = sub.next().await {
            out.lock().unwrap().push(list);
        }
    });
    seen
}

fn last(seen: &Seen) -> Option<Arc<InstanceList>> {
    seen.lock().unwrap().last().cloned()
}

fn last_len(seen: &Seen) -> Option<usize> {
    last(seen).map(|l| l.instances.len())
}

fn register(rt: &Runtime, client: &Client, ip: &str, ports: std::ops::Range<u16>) -> Vec<Registration> {
    ports
        .map(|p| {
            block(rt, Duration::from_secs(5), client.register(InstanceSpec::new("orders", ip, p))).unwrap()
        })
        .collect()
}

#[test]
fn a_provider_registered_on_one_node_is_discovered_by_a_consumer_on_another() {
    let nodes = common::cluster("sdk-discover", 2, &[]);
    let rt = runtime();
    let provider = client(&addrs(&[&nodes[0]]));
    let consumer = client(&addrs(&[&nodes[1]]));
    let spec = InstanceSpec::new("orders", "10.0.0.7", 8080).metadata("zone", "eu-1");
    let reg = block(&rt, Duration::from_secs(5), provider.register(spec)).unwrap();
    assert_eq!(reg.instance_id(), "10.0.0.7#8080#DEFAULT");
    assert_eq!(reg.heartbeat_interval(), Duration::from_secs(1), "the server's interval");

    let lists = record(&rt, block(&rt, Duration::from_secs(5), consumer.subscribe("orders")).unwrap());
    wait_until(Duration::from_secs(2), "the consumer on B to see the instance", || {
        last_len(&lists) == Some(1)
    });
    let chosen = block(&rt, Duration::from_secs(1), consumer.choose("orders")).unwrap();
    assert_eq!((chosen.addr(), chosen.metadata["zone"].as_str()), ("10.0.0.7:8080".to_owned(), "eu-1"));

    // An update on A reaches the consumer on B through its long poll.
    block(&rt, Duration::from_secs(5), reg.set_weight(5.0)).unwrap();
    wait_until(Duration::from_secs(1), "the new weight on B", || {
        last(&lists).is_some_and(|l| l.instances.first().is_some_and(|i| i.weight == 5.0))
    });

    // A second registration appears; dropping its handle deregisters it.
    let second =
        block(&rt, Duration::from_secs(5), provider.register(InstanceSpec::new("orders", "10.0.0.8", 8080)))
            .unwrap();
    wait_until(Duration::from_secs(1), "two instances on B", || last_len(&lists) == Some(2));
    drop(second);
    wait_until(Duration::from_secs(2), "the dropped one gone from B", || last_len(&lists) == Some(1));

    // close() deregisters; the service is really empty (known), so the cache empties too.
    block(&rt, Duration::from_secs(5), reg.close()).unwrap();
    wait_until(Duration::from_secs(1), "an empty list on B", || last_len(&lists) == Some(0));
    assert!(last(&lists).unwrap().known);
    assert_eq!(count(&nodes[0], "orders"), 0);
}

#[test]
fn killing_the_provider_process_removes_it_within_the_removal_time() {
    let node = common::single("sdk-kill-provider", QUICK);
    let server = node.addr.as_str();
    let mut provider =
        Proc::muster(&["register", "orders", "127.0.0.1", "9001", "--keep", "--server", server], &[]);
    wait_until(Duration::from_secs(5), "the provider's registration", || count(&node, "orders") == 1);

    // Its SDK heartbeats keep it healthy well past the removal time.
    let healthy = || {
        common::instances_where(&node, "orders", "healthy_only=true")["instances"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let watch_until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < watch_until {
        assert_eq!(healthy(), 1, "the beating provider went unhealthy or away");
        std::thread::sleep(Duration::from_millis(100));
    }

    provider.kill();
    let killed = Instant::now();
    wait_until(Duration::from_millis(3000), "removal of the killed provider", || count(&node, "orders") == 0);
    let removed_after = killed.elapsed();
    eprintln!("killed provider removed {removed_after:?} after kill -9 (removal time 2 s)");
    assert!(removed_after <= Duration::from_millis(2500), "removed only after {removed_after:?}");

    // A provider stopped with SIGTERM deregisters before it exits.
    let mut graceful =
        Proc::muster(&["register", "orders", "127.0.0.1", "9002", "--keep", "--server", server], &[]);
    wait_until(Duration::from_secs(5), "the second provider", || count(&node, "orders") == 1);
    let status = graceful.terminate(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert_eq!(count(&node, "orders"), 0, "SIGTERM did not deregister");
}

#[test]
fn killing_the_server_the_sdk_uses_moves_it_to_another_without_losing_a_registration_or_a_list() {
    let mut nodes = common::cluster("sdk-failover", 3, QUICK);
    let rt = runtime();
    let all = addrs(&nodes.iter().collect::<Vec<_>>());
    let provider = client(&all);
    let consumer = client(&all);
    let regs = register(&rt, &provider, "10.0.0.1", 8000..8005);
    let lists = record(&rt, block(&rt, Duration::from_secs(5), consumer.subscribe("orders")).unwrap());
    wait_until(Duration::from_secs(2), "the consumer to see all five", || last_len(&lists) == Some(5));
    let complete_from = lists.lock().unwrap().len() - 1;
    let a = nodes[0].addr.clone();
    assert_eq!((provider.current_server(), consumer.current_server()), (a.clone(), a.clone()));
    // The consumer's long poll is waiting on A.
    wait_until(Duration::from_secs(2), "the watch on A", || {
        nodes[0].get("/metrics").text().contains("muster_watchers 1")
    });

    nodes[0].kill();
    let killed = Instant::now();
    // The provider's next beat goes to B; the consumer's long poll breaks
    // with A and waits on B.
    let (mut provider_moved, mut consumer_moved) = (None, None);
    wait_until(Duration::from_secs(3), "provider and consumer to move off A", || {
        if provider_moved.is_none() && provider.current_server() != a {
            provider_moved = Some(killed.elapsed());
        }
        if consumer_moved.is_none() && nodes[1].get("/metrics").text().contains("muster_watchers 1") {
            consumer_moved = Some(killed.elapsed());
        }
        provider_moved.is_some() && consumer_moved.is_some()
    });
    eprintln!(
        "after kill -9 of their server: provider beating on another within {:?}, \
         consumer watching another within {:?}",
        provider_moved.unwrap_or_default(),
        consumer_moved.unwrap_or_default()
    );

    // For longer than failure detection plus the removal time, B and C keep
    // every instance, and the consumer's list never loses one.
    let (b, c) = (&nodes[1], &nodes[2]);
    let until = killed + Duration::from_millis(1200 + 2000 + 1000);
    while Instant::now() < until {
        assert_eq!((count(b, "orders"), count(c, "orders")), (5, 5), "a registration was lost");
        std::thread::sleep(Duration::from_millis(100));
    }
    let healthy = common::instances_where(b, "orders", "healthy_only=true");
    assert_eq!(healthy["instances"].as_array().map(Vec::len), Some(5), "{healthy}");
    let seen = lists.lock().unwrap();
    for (i, list) in seen.iter().enumerate().skip(complete_from) {
        assert_eq!(list.instances.len(), 5, "list {i} of the consumer lost instances: {list:?}");
    }
    assert_eq!(block(&rt, Duration::from_secs(1), consumer.instances("orders")).unwrap().instances.len(), 5);
    // B had every instance (replicated long ago): the provider asked it in
    // one batched beat and registered nothing again.
    assert!(regs.iter().all(|r| r.reregistrations() == 0), "re-registered what B had");
    assert_eq!(common::requests(&nodes[1], "register_instance"), 0, "POSTs to B after the failover");
}

#[test]
fn stopping_every_server_leaves_the_consumers_cached_list_intact() {
    let mut nodes = common::cluster("sdk-all-down", 2, &[]);
    let dir = scratch("sdk-snapshot");
    let rt = runtime();
    let all = addrs(&nodes.iter().collect::<Vec<_>>());
    let provider = client(&all[..1]);
    let _regs = register(&rt, &provider, "10.0.0.2", 7000..7003);
    let consumer = builder(&all).snapshot_dir(&dir).build().unwrap();
    wait_until(Duration::from_secs(2), "the consumer to cache three", || {
        block(&rt, Duration::from_secs(5), consumer.instances("orders")).unwrap().instances.len() == 3
    });
    let snapshot = dir.join("public+DEFAULT_GROUP+orders.json");
    wait_until(Duration::from_secs(2), "the snapshot on disk", || {
        std::fs::read(&snapshot)
            .ok()
            .and_then(|b| serde_json::from_slice::<InstanceList>(&b).ok())
            .is_some_and(|l| l.instances.len() == 3)
    });

    for n in &mut nodes {
        n.kill();
    }
    // The cache answers at once, again and again, while no server answers
    // (its watch fails and retries meanwhile).
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let t = Instant::now();
        let list = block(&rt, Duration::from_secs(1), consumer.instances("orders")).unwrap();
        assert_eq!(list.instances.len(), 3);
        assert!(t.elapsed() < Duration::from_millis(50), "the cache took {:?}", t.elapsed());
        assert!(block(&rt, Duration::from_secs(1), consumer.choose("orders")).is_ok());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A consumer that starts now starts from the snapshot; one without a
    // snapshot has nothing to answer with.
    let restarted = builder(&all).snapshot_dir(&dir).build().unwrap();
    let list = block(&rt, Duration::from_secs(5), restarted.instances("orders")).unwrap();
    assert_eq!(list.instances.len(), 3);
    let bare = client(&all);
    assert!(block(&rt, Duration::from_secs(5), bare.instances("orders")).unwrap_err().is_unavailable());
}

#[test]
fn a_single_node_that_lost_its_memory_gets_every_registration_back_within_one_heartbeat_interval() {
    const INSTANCES: u16 = 20;
    let interval = Duration::from_secs(1);
    let mut node = common::single("sdk-restart", &[]);
    let rt = runtime();
    let provider = client(&addrs(&[&node]));
    let consumer = client(&addrs(&[&node]));
    let regs = register(&rt, &provider, "10.0.0.3", 6000..6000 + INSTANCES);
    let lists = record(&rt, block(&rt, Duration::from_secs(5), consumer.subscribe("orders")).unwrap());
    wait_until(Duration::from_secs(2), "the consumer to see all", || {
        last_len(&lists) == Some(INSTANCES.into())
    });
    let complete_from = lists.lock().unwrap().len() - 1;

    node.kill();
    // Down for a whole interval: heartbeats fail and back off meanwhile.
    std::thread::sleep(interval);
    let restarted = Instant::now();
    node.restart();
    node.wait_ready(Duration::from_secs(10));
    let ready = restarted.elapsed();
    wait_until(interval, "every registration back on the restarted node", || {
        count(&node, "orders") == usize::from(INSTANCES)
    });
    eprintln!(
        "{INSTANCES} registrations back {:?} after the restart (node ready after {ready:?})",
        restarted.elapsed()
    );
    // (The node counts a registration before its answer reaches the client.)
    wait_until(Duration::from_secs(1), "every handle to count its re-registration", || {
        regs.iter().all(|r| r.reregistrations() >= 1)
    });

    // The consumer follows the node again and its list never shrank.
    wait_until(Duration::from_secs(3), "the consumer's watch on the new node", || {
        node.get("/metrics").text().contains("muster_watchers 1")
    });
    for (i, list) in lists.lock().unwrap().iter().enumerate().skip(complete_from) {
        assert_eq!(list.instances.len(), usize::from(INSTANCES), "list {i} shrank");
    }
}

#[test]
fn an_empty_answer_from_a_node_that_forgot_everything_does_not_wipe_the_cache() {
    let mut node = common::single("sdk-forgot", &[]);
    let rt = runtime();
    let c = builder(&addrs(&[&node])).recovery_grace(Duration::from_secs(1)).build().unwrap();
    // Registered once, without heartbeats: nobody will register it again.
    let spec = InstanceSpec::new("orders", "10.0.0.4", 80);
    block(&rt, Duration::from_secs(5), c.register_once(spec.clone())).unwrap();
    assert_eq!(block(&rt, Duration::from_secs(5), c.instances("orders")).unwrap().instances.len(), 1);
    wait_until(Duration::from_secs(2), "the watch", || {
        node.get("/metrics").text().contains("muster_watchers 1")
    });

    node.restart();
    node.wait_ready(Duration::from_secs(10));
    let fresh = common::instances(&node, "orders");
    assert_eq!(
        (fresh["known"].as_bool(), fresh["instances"].as_array().map(Vec::len)),
        (Some(false), Some(0))
    );
    // The watch got the forgetful answer and waits on it: the cache kept its list.
    wait_until(Duration::from_secs(5), "the watch on the new node", || {
        node.get("/metrics").text().contains("muster_watchers 1")
    });
    assert_eq!(block(&rt, Duration::from_secs(1), c.instances("orders")).unwrap().instances.len(), 1);

    // Once the service is known again, its answers count (after at most the
    // restart grace): registered, then really emptied by a deregistration.
    block(&rt, Duration::from_secs(5), c.register_once(spec)).unwrap();
    let r = muster_transport_http::client::InstanceRef::new("orders", "10.0.0.4", 80);
    block(&rt, Duration::from_secs(5), c.deregister(&r)).unwrap();
    wait_until(Duration::from_secs(3), "the emptied list in the cache", || {
        block(&rt, Duration::from_secs(1), c.instances("orders")).unwrap().instances.is_empty()
    });
}

#[test]
fn registrations_a_killed_server_never_replicated_come_back_and_consumers_never_miss_them() {
    // Changes wait a minute before they are sent, anti-entropy as long:
    // what a node takes stays on that node.
    let slow_sync = ["--sync-delay-ms", "60000", "--anti-entropy-interval-ms", "60000"];
    let mut nodes = common::cluster("sdk-unreplicated", 2, &[QUICK, &slow_sync].concat());
    let rt = runtime();
    let all = addrs(&nodes.iter().collect::<Vec<_>>());
    // B alone knows instance 1; A alone knows 2 and 3, registered by the provider.
    let on_b = client(&all[1..]);
    block(
        &rt,
        Duration::from_secs(5),
        on_b.register_once(InstanceSpec::new("orders", "10.0.0.9", 1).ephemeral(false)),
    )
    .unwrap();
    let provider = client(&all);
    let regs = register(&rt, &provider, "10.0.0.9", 2..4);
    // Replication here takes a minute, so the consumer holds instances it
    // saw within a minute.
    let consumer = builder(&all).replication_window(Duration::from_secs(60)).build().unwrap();
    let lists = record(&rt, block(&rt, Duration::from_secs(5), consumer.subscribe("orders")).unwrap());
    wait_until(Duration::from_secs(2), "the consumer to see A's two", || last_len(&lists) == Some(2));
    assert_eq!(count(&nodes[1], "orders"), 1, "A replicated despite the delay");

    nodes[0].kill();
    // The provider moves to B and registers its instances there again; the
    // consumer moves to B too, which lacks them for a moment: it keeps them.
    wait_until(Duration::from_secs(3), "the provider's instances on B", || count(&nodes[1], "orders") == 3);
    wait_until(Duration::from_secs(3), "the consumer to see B's three", || last_len(&lists) == Some(3));
    for list in lists.lock().unwrap().iter() {
        let ports: Vec<u16> = list.instances.iter().map(|i| i.port).collect();
        assert!(ports.contains(&2) && ports.contains(&3), "the consumer lost a registration: {ports:?}");
    }
    assert!(regs.iter().all(|r| r.reregistrations() >= 1));
}

#[test]
fn a_subscription_streams_every_change_on_one_request_and_long_polls_when_told_to() {
    let node = common::single("sdk-stream", &[]);
    let rt = runtime();
    let servers = addrs(&[&node]);
    for streams in [true, false] {
        let service = if streams { "streamed" } else { "polled" };
        let consumer = builder(&servers).watch_streams(streams).build().unwrap();
        let seen = record(&rt, block(&rt, Duration::from_secs(5), consumer.subscribe(service)).unwrap());
        wait_until(Duration::from_secs(5), "the first list", || last_len(&seen) == Some(0));
        let before = common::requests(&node, "query_instances");
        for port in 1..=10u16 {
            let spec =
                format!(r#"{{"service":"{service}","ip":"10.0.0.1","port":{port},"ephemeral":false}}"#);
            assert_eq!(node.req("POST", "/v1/instances", Some(&spec)).status, 200);
            wait_until(Duration::from_secs(5), "the change", || last_len(&seen) == Some(usize::from(port)));
        }
        let lists: Vec<usize> = seen.lock().unwrap().iter().map(|l| l.instances.len()).collect();
        assert_eq!(lists, (0..=10).collect::<Vec<_>>(), "every change, in order, once");
        let requests = common::requests(&node, "query_instances") - before;
        if streams {
            // The stream under way is counted when it ends: none has yet.
            assert_eq!(requests, 0, "ten changes on one streamed watch");
        } else {
            assert!(requests >= 10, "a long poll per change: {requests}");
        }
    }
}

/// A node from before streamed watches, as far as a watcher sees it: it
/// refuses the `stream` parameter as any unknown one (400 naming it), and
/// answers queries and long polls with one fixed list.
fn older_node() -> (String, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heads);
    std::thread::spawn(move || {
        for conn in listener.incoming().take(50) {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // The rest of the head.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            log.lock().unwrap().push(line.clone());
            let (status, body) = if line.contains("stream=true") {
                (
                    "400 Bad Request",
                    r#"{"error":{"code":"invalid_input","message":"unknown parameter","field":"stream"}}"#,
                )
            } else {
                if line.contains("wait=") {
                    std::thread::sleep(Duration::from_millis(200));
                }
                (
                    "200 OK",
                    r#"{"namespace":"public","group":"DEFAULT_GROUP","service":"orders","checksum":"0000000000000001","protect_threshold_reached":false,"known":true,"instances":[{"instance_id":"10.0.0.1#1#DEFAULT","cluster":"DEFAULT","ip":"10.0.0.1","port":1,"weight":1.0,"healthy":true,"enabled":true,"ephemeral":true,"metadata":{}}]}"#,
                )
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, heads)
}

#[test]
fn a_subscription_to_a_node_that_refuses_streams_long_polls_instead() {
    let (addr, heads) = older_node();
    let rt = runtime();
    let consumer = builder(&[addr]).build().unwrap();
    let seen = record(&rt, block(&rt, Duration::from_secs(5), consumer.subscribe("orders")).unwrap());
    wait_until(Duration::from_secs(5), "the list", || last_len(&seen) == Some(1));
    wait_until(Duration::from_secs(5), "a long poll after the refused stream", || {
        let heads = heads.lock().unwrap();
        let refused = heads.iter().position(|h| h.contains("stream=true"));
        refused.is_some_and(|i| heads[i + 1..].iter().any(|h| h.contains("wait=") && !h.contains("stream")))
    });
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.iter().filter(|h| h.contains("stream=true")).count(), 1, "asked once: {heads:?}");
}
