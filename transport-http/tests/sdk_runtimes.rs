//! One `Client` shared by two `#[tokio::test]`s, each with its own runtime:
//! the second test runs after the first one's runtime is gone, and the
//! client still beats, watches and answers (the SDK runs on its own runtime).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::Node;
use muster_transport_http::client::{Client, InstanceSpec};

/// Heartbeat every 300 ms, unhealthy after 1 s, removed after 2 s.
const QUICK: &[&str] =
    &["--heartbeat-interval-ms", "300", "--unhealthy-after-ms", "1000", "--remove-after-ms", "2000"];

static NODE: Mutex<Option<Node>> = Mutex::new(None);
static ADDR: OnceLock<String> = OnceLock::new();
static CLIENT: OnceLock<Client> = OnceLock::new();
/// Tests done (the last one stops the node).
static DONE: AtomicUsize = AtomicUsize::new(0);
/// The first test's runtime has ended.
static FIRST_DONE: Mutex<bool> = Mutex::new(false);

fn addr() -> &'static str {
    ADDR.get_or_init(|| {
        let node = common::single("sdk-runtimes", QUICK);
        let addr = node.addr.clone();
        *NODE.lock().unwrap() = Some(node);
        addr
    })
}

fn client() -> &'static Client {
    CLIENT.get_or_init(|| Client::builder([addr()]).request_timeout(Duration::from_secs(2)).build().unwrap())
}

/// Counts a test as done when dropped (a failing one too); the second stops the node.
struct Finish;

impl Drop for Finish {
    fn drop(&mut self) {
        if DONE.fetch_add(1, Ordering::AcqRel) + 1 == 2 {
            NODE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        }
    }
}

fn healthy(service: &str) -> usize {
    let node = NODE.lock().unwrap();
    let node = node.as_ref().expect("node running");
    common::instances_where(node, service, "healthy_only=true")["instances"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_client_first_used_in_one_runtime_registers_and_watches_there() {
    let _finish = Finish;
    let c = client();
    let reg = c.register(InstanceSpec::new("first", "10.2.0.1", 1)).await.unwrap();
    assert_eq!(c.instances("first").await.unwrap().instances.len(), 1);
    // Leak the handle: the instance stays registered after this runtime ends.
    std::mem::forget(reg);
    *FIRST_DONE.lock().unwrap() = true;
}

#[tokio::test]
async fn the_same_client_keeps_beating_and_watching_after_that_runtime_ended() {
    let _finish = Finish;
    // Wait (bounded) for the other test to finish and its runtime to go.
    let until = Instant::now() + Duration::from_secs(20);
    while !*FIRST_DONE.lock().unwrap() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = client();
    let reg = c.register(InstanceSpec::new("second", "10.2.0.2", 2)).await.unwrap();
    // Beaten by the SDK past the removal time: healthy all along, and the
    // first test's instance too, whose runtime is gone.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(healthy("second"), 1, "not beaten in a second runtime");
        if *FIRST_DONE.lock().unwrap() {
            assert_eq!(healthy("first"), 1, "the first runtime's registration stopped beating");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The watch started in the first runtime still follows changes.
    if *FIRST_DONE.lock().unwrap() {
        c.register_once(InstanceSpec::new("first", "10.2.0.9", 9)).await.unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while c.instances("first").await.unwrap().instances.len() != 2 {
            assert!(Instant::now() < until, "the cache of `first` went stale");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    reg.close().await.unwrap();
}
