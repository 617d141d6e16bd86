//! The SDK's watches are bounded and end, measured on real processes: the
//! file descriptors of this test process (`/proc/self/fd`; this file holds
//! one test, so nothing else opens any) and the node's own gauge of waiting
//! long polls (`muster_watchers`).

mod common;

use std::time::{Duration, Instant};

use common::{count, open_fds, wait_until, watchers};
use muster_transport_http::client::{Client, Error, InstanceSpec};

#[test]
fn looking_up_1100_services_holds_at_most_max_watches_connections_and_heartbeats_never_starve() {
    const SERVICES: usize = 1100;
    const MAX: usize = 64;
    // Heartbeat every 300 ms, unhealthy after 1 s, removed after 2 s.
    let node = common::single(
        "sdk-watches",
        &["--heartbeat-interval-ms", "300", "--unhealthy-after-ms", "1000", "--remove-after-ms", "2000"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = Client::builder([node.addr.clone()])
        .max_watches(MAX)
        .watch_idle(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let reg = rt.block_on(client.register(InstanceSpec::new("self", "10.1.0.1", 1))).unwrap();
    // The SDK's runtime and its heartbeat connection are up.
    let before = open_fds();

    // 1,100 services looked up (cache-only: no subscription), while the
    // client's own instance must stay healthy.
    let started = Instant::now();
    let mut most_fds = 0;
    for i in 0..SERVICES {
        let list = rt.block_on(client.instances(&format!("svc-{i}"))).unwrap();
        assert!(list.instances.is_empty());
        if i % 50 == 0 {
            most_fds = most_fds.max(open_fds());
        }
    }
    eprintln!("{SERVICES} lookups in {:?}; at most {most_fds} fds (before: {before})", started.elapsed());
    assert!(client.watched_services() <= MAX, "{} watched", client.watched_services());
    wait_until(Duration::from_secs(3), "the node to hold at most max_watches long polls", || {
        watchers(&node) <= MAX as u64
    });
    let fds = open_fds();
    eprintln!("after {SERVICES} lookups: {fds} fds, node holds {} long polls", watchers(&node));
    // One connection per watch, plus the heartbeat/query connection and slack.
    assert!(fds <= before + MAX + 4, "{fds} fds with max_watches {MAX} (before: {before})");
    assert!(most_fds <= before + MAX + 4, "peak {most_fds} fds");

    // The heartbeats kept the instance healthy throughout and after.
    let healthy = || {
        common::instances_where(&node, "self", "healthy_only=true")["instances"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(healthy(), 1, "the client's own instance went unhealthy behind its watches");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A subscription holds its watch; every subscribed watch is never evicted,
    // and past the bound subscribing fails with a clear error.
    let sub = rt.block_on(client.subscribe("held")).unwrap();
    let small = Client::builder([node.addr.clone()]).max_watches(1).build().unwrap();
    let _one = rt.block_on(small.subscribe("a")).unwrap();
    let e = rt.block_on(small.subscribe("b")).unwrap_err();
    assert!(matches!(e, Error::TooManyWatches { limit: 1 }), "{e:?}");
    // A lookup past the bound still answers, from a plain query.
    assert!(rt.block_on(small.instances("b")).unwrap().instances.is_empty());
    drop(_one);
    drop(small);

    // Unused for watch_idle: every cache-only watch ends and closes its
    // connection; the subscribed one stays.
    wait_until(Duration::from_secs(8), "idle watches to end", || client.watched_services() == 1);
    wait_until(Duration::from_secs(3), "the node to hold one long poll", || watchers(&node) == 1);
    // What is left: the subscribed watch's connection, and a few the
    // runtimes open on their own (measured: 4 in all).
    wait_until(Duration::from_secs(8), "their file descriptors to close", || open_fds() <= before + 5);
    eprintln!("after the idle timeout: {} fds (before: {before})", open_fds());

    // unwatch ends a watch at once, and its subscription ends too.
    let mut sub = sub;
    assert!(client.unwatch("held"));
    assert_eq!(
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), sub.next()).await }),
        Ok(None)
    );
    assert_eq!(client.watched_services(), 0);
    wait_until(Duration::from_secs(3), "no long poll left on the node", || watchers(&node) == 0);

    // Dropping the last subscription of a watch nobody looked up ends it.
    let sub = rt.block_on(client.subscribe("brief")).unwrap();
    wait_until(Duration::from_secs(3), "the subscription's long poll", || watchers(&node) == 1);
    std::thread::sleep(Duration::from_millis(1100));
    drop(sub);
    assert_eq!(client.watched_services(), 0);
    wait_until(Duration::from_secs(3), "the dropped subscription's long poll to end", || {
        watchers(&node) == 0
    });

    assert_eq!(count(&node, "self"), 1);
    rt.block_on(reg.close()).unwrap();
}
