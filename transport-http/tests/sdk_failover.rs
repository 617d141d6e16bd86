//! Failover that spreads and stays quiet, on real `muster` processes: the
//! nodes' `/metrics` count the requests, and this process's own log (one
//! test per file: the subscriber is global) counts the SDK's lines.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{count, requests, wait_until};
use muster_transport_http::client::{Client, InstanceSpec};

/// Collects every log line the process writes.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().map(str::to_owned).collect()
    }
}

#[test]
fn a_failover_with_2000_registrations_sends_no_registration_the_new_node_has_and_logs_a_few_lines() {
    const N: u16 = 2000;
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("muster_transport_http=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let mut nodes = common::cluster(
        "sdk-quiet-failover",
        3,
        &["--heartbeat-interval-ms", "500", "--unhealthy-after-ms", "3000", "--remove-after-ms", "6000"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // Spread: 30 clients of the same list start on every node.
    let all: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let starts: Vec<String> =
        (0..30).map(|_| Client::new(&all.join(",")).unwrap().current_server()).collect();
    for n in &nodes {
        let on = starts.iter().filter(|s| **s == n.addr).count();
        eprintln!("{on} of 30 clients start on {}", n.addr);
        assert!(on > 0, "no client starts on {}: {starts:?}", n.addr);
    }

    let provider =
        Client::builder(all.clone()).spread(false).request_timeout(Duration::from_secs(2)).build().unwrap();
    let regs = rt.block_on(async {
        let mut regs = Vec::new();
        let mut set = tokio::task::JoinSet::new();
        for port in 1..=N {
            let c = provider.clone();
            set.spawn(async move { c.register(InstanceSpec::new("bulk", "10.4.0.1", port)).await });
            while set.len() >= 32 {
                regs.push(set.join_next().await.unwrap().unwrap().unwrap());
            }
        }
        while let Some(r) = set.join_next().await {
            regs.push(r.unwrap().unwrap());
        }
        regs
    });
    assert_eq!(regs.len(), usize::from(N));
    wait_until(Duration::from_secs(10), "every registration on B", || {
        count(&nodes[1], "bulk") == usize::from(N)
    });
    let posts_before = requests(&nodes[1], "register_instance") + requests(&nodes[2], "register_instance");
    let lines_before = log.lines().len();

    nodes[0].kill();
    let killed = Instant::now();
    wait_until(Duration::from_secs(5), "the provider on another node", || {
        provider.current_server() != all[0]
    });
    // Three heartbeat intervals on the new node: every registration asked about.
    std::thread::sleep(Duration::from_millis(1500));
    let moved_to = nodes.iter().position(|n| n.addr == provider.current_server()).unwrap();
    let posts =
        requests(&nodes[1], "register_instance") + requests(&nodes[2], "register_instance") - posts_before;
    let new_lines: Vec<String> = log.lines().into_iter().skip(lines_before).collect();
    eprintln!(
        "failover to node {moved_to} {:?} after kill -9: {posts} registrations sent, {} log lines:\n{}",
        killed.elapsed(),
        new_lines.len(),
        new_lines.join("\n")
    );
    assert_eq!(posts, 0, "registered again what the new node had");
    assert!(new_lines.len() <= 4, "{} log lines for one failover", new_lines.len());
    assert_eq!(count(&nodes[moved_to], "bulk"), usize::from(N));
    let healthy = common::instances_where(&nodes[moved_to], "bulk", "healthy_only=true");
    assert_eq!(healthy["instances"].as_array().map(Vec::len), Some(usize::from(N)));
    assert!(regs.iter().all(|r| r.reregistrations() == 0));
}
