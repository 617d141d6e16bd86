//! The SDK in everyday trouble, against real `muster` processes on
//! 127.0.0.1: persistent registrations after a restart, caches that shrink
//! in bounded time and never hide what a server states, a SIGSTOPped
//! server, a full watch table, a node that answers long polls at once,
//! consumers sharing a snapshot directory, corrupt snapshots and servers
//! that are not Muster. Request counts come from the nodes' `/metrics`.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Node, count, requests, scratch, wait_until, watchers};
use muster_transport_http::client::{Client, ClientBuilder, Error, InstanceList, InstanceRef, InstanceSpec};
use tokio::runtime::Runtime;

/// Heartbeat every 300 ms, unhealthy after 1 s, removed after 2 s.
const QUICK: &[&str] =
    &["--heartbeat-interval-ms", "300", "--unhealthy-after-ms", "1000", "--remove-after-ms", "2000"];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn builder(nodes: &[&Node]) -> ClientBuilder {
    Client::builder(nodes.iter().map(|n| n.addr.clone()))
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(2))
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .spread(false)
}

fn block<T>(rt: &Runtime, fut: impl std::future::Future<Output = T>) -> T {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), fut).await.expect("timed out") })
}

fn ports(list: &InstanceList) -> Vec<u16> {
    list.instances.iter().map(|i| i.port).collect()
}

#[test]
fn a_persistent_registration_comes_back_after_its_node_restarts_with_an_empty_memory() {
    let mut node = common::single("sdk-persistent", QUICK);
    let rt = runtime();
    let c = builder(&[&node]).build().unwrap();
    let reg = block(&rt, c.register(InstanceSpec::new("db", "10.3.0.1", 5432).ephemeral(false))).unwrap();
    assert!(reg.persistent());
    node.restart();
    node.wait_ready(Duration::from_secs(10));
    let restarted = Instant::now();
    assert_eq!(count(&node, "db"), 0, "the node kept it (no storage is configured)");
    wait_until(Duration::from_secs(3), "the persistent instance back", || count(&node, "db") == 1);
    eprintln!("persistent registration back {:?} after the restart", restarted.elapsed());
    let back = common::instances(&node, "db");
    assert_eq!(back["instances"][0]["ephemeral"], false, "{back}");
    wait_until(Duration::from_secs(1), "the handle to count it", || reg.reregistrations() >= 1);
    block(&rt, reg.close()).unwrap();
    assert_eq!(count(&node, "db"), 0);
}

#[test]
fn after_a_restart_the_cache_drops_what_nobody_registers_again_at_recovery_grace_and_rewrites_the_snapshot() {
    let mut node = common::single("sdk-grace", QUICK);
    let dir = scratch("sdk-grace-snapshot");
    let rt = runtime();
    let provider = builder(&[&node]).build().unwrap();
    let _kept = block(&rt, provider.register(InstanceSpec::new("orders", "10.3.0.2", 1))).unwrap();
    // Registered once, beaten by the test: nobody registers it again.
    let once = InstanceSpec::new("orders", "10.3.0.2", 2);
    block(&rt, provider.register_once(once)).unwrap();
    let grace = Duration::from_secs(2);
    let consumer = builder(&[&node]).recovery_grace(grace).snapshot_dir(&dir).build().unwrap();
    let mut sub = block(&rt, consumer.subscribe("orders")).unwrap();
    assert_eq!(ports(&block(&rt, sub.next()).unwrap()), [1, 2]);

    node.restart();
    node.wait_ready(Duration::from_secs(10));
    let restarted = Instant::now();
    // Instance 1 comes back (its provider registers it again); 2 is held
    // for at most the grace, then gone, in the cache and on disk.
    wait_until(grace + Duration::from_secs(3), "the cache to drop the lost instance", || {
        block(&rt, consumer.instances("orders")).unwrap().instances.len() == 1
    });
    let took = restarted.elapsed();
    eprintln!("the lost instance left the consumer's cache {took:?} after the restart (grace {grace:?})");
    assert_eq!(ports(&block(&rt, consumer.instances("orders")).unwrap()), [1]);
    let snapshot = dir.join("public+DEFAULT_GROUP+orders.json");
    wait_until(Duration::from_secs(2), "the snapshot rewritten", || {
        std::fs::read(&snapshot)
            .ok()
            .and_then(|b| serde_json::from_slice::<InstanceList>(&b).ok())
            .is_some_and(|l| ports(&l) == [1])
    });
}

#[test]
fn a_consumer_that_fails_over_sees_a_deregistration_and_an_unhealthy_mark_at_once() {
    let mut nodes = common::cluster("sdk-truth", 2, QUICK);
    let rt = runtime();
    let on_b = builder(&[&nodes[1]]).build().unwrap();
    let gone = block(&rt, on_b.register(InstanceSpec::new("orders", "10.3.1.1", 1))).unwrap();
    let _stays = block(&rt, on_b.register(InstanceSpec::new("orders", "10.3.1.1", 2))).unwrap();
    // Beaten by hand: it goes unhealthy 1 s after the last beat.
    let stalls = InstanceSpec::new("orders", "10.3.1.1", 3);
    block(&rt, on_b.register_once(stalls)).unwrap();
    let stalls = InstanceRef::new("orders", "10.3.1.1", 3);
    let consumer = builder(&[&nodes[0], &nodes[1]]).build().unwrap(); // default grace: 10 s
    wait_until(Duration::from_secs(2), "the consumer on A to see all three", || {
        ports(&block(&rt, consumer.instances("orders")).unwrap()) == [1, 2, 3]
    });
    // Longer than the replication window: these are on every node.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        block(&rt, on_b.beat(&stalls)).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }

    nodes[0].kill();
    let t0 = Instant::now();
    block(&rt, gone.close()).unwrap();
    wait_until(Duration::from_secs(4), "the deregistration, on the node the consumer failed over to", || {
        ports(&block(&rt, consumer.instances("orders")).unwrap()) == [2, 3]
    });
    let deregistered = t0.elapsed();
    wait_until(Duration::from_secs(4), "the unhealthy mark", || {
        let list = block(&rt, consumer.instances("orders")).unwrap();
        list.instances.iter().any(|i| i.port == 3 && !i.healthy)
    });
    eprintln!(
        "after the failover: deregistration seen within {deregistered:?}, unhealthy mark within {:?} \
         (grace 10 s)",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_sigstopped_server_is_left_within_a_few_seconds() {
    let nodes = common::cluster("sdk-hung", 2, &[]);
    let rt = runtime();
    // Default timings: a 30 s poll, 5 s requests, probes every 2 s.
    let consumer =
        Client::builder([nodes[0].addr.clone(), nodes[1].addr.clone()]).spread(false).build().unwrap();
    let mut sub = block(&rt, consumer.subscribe("orders")).unwrap();
    assert!(block(&rt, sub.next()).unwrap().instances.is_empty());
    wait_until(Duration::from_secs(2), "the watch on A", || watchers(&nodes[0]) == 1);

    nodes[0].signal("STOP");
    let stopped = Instant::now();
    let on_b = builder(&[&nodes[1]]).build().unwrap();
    let _reg = block(&rt, on_b.register(InstanceSpec::new("orders", "10.3.2.1", 1))).unwrap();
    let seen = block(&rt, async {
        tokio::time::timeout(Duration::from_secs(8), async {
            while let Some(list) = sub.next().await {
                if !list.instances.is_empty() {
                    return stopped.elapsed();
                }
            }
            Duration::MAX
        })
        .await
    });
    nodes[0].signal("CONT");
    let seen = seen.expect("the change on B never reached the consumer of the hung A");
    eprintln!("a change on B reached the consumer of the SIGSTOPped A after {seen:?}");
    assert!(seen < Duration::from_secs(6), "{seen:?}");
    assert_eq!(consumer.current_server(), nodes[1].addr);
}

#[test]
fn a_full_watch_table_makes_watches_wait_instead_of_failing_over_and_registering_again() {
    let nodes = common::cluster("sdk-full", 2, &["--max-long-polls", "1"]);
    let rt = runtime();
    let c = builder(&[&nodes[0], &nodes[1]]).build().unwrap();
    let reg = block(&rt, c.register(InstanceSpec::new("orders", "10.3.3.1", 1))).unwrap();
    let subs: Vec<_> = ["a", "b", "c"].iter().map(|s| block(&rt, c.subscribe(s)).unwrap()).collect();
    // Two of the three watches get 429 from A again and again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(watchers(&nodes[0]), 1);
    assert_eq!((c.failovers(), c.current_server()), (0, nodes[0].addr.clone()));
    assert_eq!(reg.reregistrations(), 0);
    assert_eq!(requests(&nodes[1], "register_instance"), 0, "registered again on B");
    drop(subs);
}

#[test]
fn one_service_is_polled_at_most_once_per_min_poll_interval_whatever_the_node_answers() {
    let node = common::single("sdk-min-interval", &["--max-wait-ms", "1"]);
    let rt = runtime();
    let c = builder(&[&node]).build().unwrap(); // min_poll_interval: 100 ms
    let before = requests(&node, "query_instances");
    let sub = block(&rt, c.subscribe("orders")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(sub);
    let queries = requests(&node, "query_instances") - before;
    eprintln!("{queries} queries in 2 s against --max-wait-ms 1");
    assert!(queries <= 24, "{queries} queries in 2 s");
    assert!(queries >= 5, "{queries}: the watch stopped polling");
}

#[test]
fn three_consumers_sharing_a_snapshot_directory_never_leave_a_partial_file() {
    let node = common::single("sdk-shared-snapshot", &[]);
    let dir = scratch("sdk-shared-snapshot-dir");
    let rt = runtime();
    let consumers: Vec<Client> =
        (0..3).map(|_| builder(&[&node]).snapshot_dir(&dir).build().unwrap()).collect();
    let subs: Vec<_> = consumers.iter().map(|c| block(&rt, c.subscribe("orders")).unwrap()).collect();
    let file = dir.join("public+DEFAULT_GROUP+orders.json");
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (stop, reads, bad, file) =
            (Arc::clone(&stop), Arc::clone(&reads), Arc::clone(&bad), file.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Ok(bytes) = std::fs::read(&file) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if serde_json::from_slice::<InstanceList>(&bytes).is_err() {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let provider = builder(&[&node]).build().unwrap();
    for port in 1..=40 {
        block(&rt, provider.register_once(InstanceSpec::new("orders", "10.3.4.1", port))).unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_until(Duration::from_secs(3), "every consumer at 40", || {
        consumers.iter().all(|c| block(&rt, c.instances("orders")).unwrap().instances.len() == 40)
    });
    // The last writes land.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    let (reads, bad) = (reads.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!("{reads} reads of a snapshot rewritten by 3 consumers, {bad} partial");
    assert!(reads > 100, "{reads} reads");
    assert_eq!(bad, 0, "{bad} of {reads} reads saw a partial or empty file");
    let leftovers = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok);
    let tmp: Vec<_> = leftovers.filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    drop(subs);
}

#[test]
fn a_corrupt_snapshot_is_an_error_that_names_the_file() {
    let dir = scratch("sdk-corrupt-snapshot");
    let file = dir.join("public+DEFAULT_GROUP+orders.json");
    std::fs::write(&file, b"{\"namespace\": \"pub").unwrap();
    let dead = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    let rt = runtime();
    let c = Client::builder([dead]).snapshot_dir(&dir).build().unwrap();
    let e = block(&rt, c.instances("orders")).unwrap_err();
    assert!(matches!(&e, Error::CorruptSnapshot { path, .. } if *path == file), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("corrupt") && text.contains(&file.display().to_string()), "{text}");
    assert!(e.is_unavailable(), "no server answered either");
}

/// A server on 127.0.0.1 that answers every request with `answer`.
fn not_muster(answer: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_server_that_is_not_muster_gets_an_error_that_says_so_and_is_not_called_ready() {
    let rt = runtime();
    let empty_404 = not_muster("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    let garbage = not_muster("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
    for addr in [empty_404, garbage] {
        let c = Client::builder([addr.clone()]).build().unwrap();
        let e = block(&rt, c.instances("orders")).unwrap_err();
        assert!(e.to_string().contains("is it a Muster node?"), "{addr}: {e}");
        let health = block(&rt, c.health());
        assert!(!health[0].ready, "{addr}: called ready: {health:?}");
        assert!(health[0].problem.as_deref().is_some_and(|p| p.contains("Muster")), "{health:?}");
    }
}
