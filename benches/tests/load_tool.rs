//! `muster-bench` against real nodes on 127.0.0.1: every mode runs for about
//! a second with small numbers and must report operations and no errors.
//!
//! The nodes run in this test process, each on its own thread and tokio
//! runtime, through the same entry point as the `muster` binary
//! (`ServeArgs` -> `Settings` -> `muster_transport_http::run`), listening on
//! a real TCP port; `muster-bench` itself runs as a child process
//! (`CARGO_BIN_EXE_muster-bench`, which Cargo provides for this package's own
//! binaries). Why not a `muster` child process as well: Cargo exposes
//! `CARGO_BIN_EXE_*` only for the tested package's binaries, so the test
//! would have to run a nested `cargo build -p muster-transport-http` (which
//! waits on the build-directory lock held by the `cargo test` that runs it)
//! or guess a binary's path in the target directory (stale or missing
//! depending on what was built last, and on the profile). In-process, the
//! node is always the code this test was compiled against, no path is
//! guessed, and nothing outlives the test process. The nodes' threads are
//! not stopped: they end with the process. A port found free can be taken by
//! another process before the node binds it; the node then stops with the
//! bind error and is started again on fresh ports (three tries).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use muster_transport_http::config::ServeArgs;
use serde_json::Value;

/// `n` distinct free ports on 127.0.0.1, held together while chosen, then
/// released for the nodes to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn listen(port: u16) -> Option<std::net::SocketAddr> {
    Some(format!("127.0.0.1:{port}").parse().unwrap())
}

/// A node running in this process, on its own thread and runtime.
struct Started {
    addr: String,
    /// Receives the error if the node stops (it cannot bind, for one).
    failed: mpsc::Receiver<String>,
}

fn spawn_node(args: ServeArgs) -> Started {
    let addr = args.listen.expect("a listen address").to_string();
    // Memory only unless a data directory is given: nothing in the repository.
    let args = ServeArgs { memory_only: args.memory_only.or(Some(args.data_dir.is_none())), ..args };
    let settings = args.with_file().unwrap().into_settings().expect("valid node settings");
    let (tx, failed) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("node-{addr}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            if let Err(e) = rt.block_on(muster_transport_http::run(settings)) {
                let _ = tx.send(e.to_string());
            }
        })
        .unwrap();
    Started { addr, failed }
}

/// Whether `addr` answers `/health/ready` with 200.
fn ready(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// Waits (at most 15 s) until every node is ready; `Err` if one stopped,
/// e.g. because another process took its port after [`free_ports`].
fn wait_ready(nodes: &[Started]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for n in nodes {
            if let Ok(e) = n.failed.try_recv() {
                return Err(format!("{}: {e}", n.addr));
            }
        }
        if nodes.iter().all(|n| ready(&n.addr)) {
            return Ok(());
        }
        assert!(Instant::now() < deadline, "nodes not ready within 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts nodes made by `make` from fresh ports until all are ready (three
/// tries: a port can be taken by another process between choice and bind).
fn start_nodes(n: usize, make: impl Fn(&[u16]) -> Vec<ServeArgs>) -> Vec<String> {
    let mut last = String::new();
    for _ in 0..3 {
        let ports = free_ports(n);
        let nodes: Vec<Started> = make(&ports).into_iter().map(spawn_node).collect();
        match wait_ready(&nodes) {
            Ok(()) => return nodes.into_iter().map(|n| n.addr).collect(),
            Err(e) => last = e,
        }
    }
    panic!("could not start {n} node(s): {last}");
}

fn single_node() -> String {
    start_nodes(1, |ports| vec![ServeArgs { listen: listen(ports[0]), ..Default::default() }]).remove(0)
}

/// Runs `muster-bench --json` with `args` (killed after 60 s); its report.
fn bench(args: &[&str]) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_muster-bench"))
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("muster-bench {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "muster-bench {args:?} failed ({}): {stderr}", out.status);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs one mode for about a second and checks the report.
fn run_mode(server: &str, mode: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--server",
        server,
        "--mode",
        mode,
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--services",
        "10",
    ];
    args.extend_from_slice(extra);
    let r = bench(&args);
    assert_eq!(r["mode"], mode);
    assert!(r["ops"].as_u64().unwrap() > 0, "{mode}: no operations: {r:#}");
    assert_eq!(r["error_count"], 0, "{mode}: errors: {r:#}");
    assert!(r["ops_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
    let l = &r["latency_ms"];
    for p in ["p50", "p90", "p99", "max"] {
        assert!(l[p].as_f64().unwrap() > 0.0, "{mode}: latency {p} missing: {r:#}");
    }
    assert!(l["p50"].as_f64() <= l["p99"].as_f64() && l["p99"].as_f64() <= l["max"].as_f64(), "{r:#}");
    r
}

#[test]
fn register_beat_query_and_mixed_modes_report_operations_and_no_errors() {
    let node = single_node();
    let r = run_mode(&node, "register", &["--instances", "300"]);
    assert!(r["kinds"]["register"]["ops"].as_u64().unwrap() > 0, "{r:#}");

    let r = run_mode(&node, "beat", &["--instances", "200"]);
    assert_eq!(r["setup"]["registrations"], 200);
    assert!(r["kinds"]["beat"]["ops"].as_u64().unwrap() > 0, "{r:#}");

    let r = run_mode(&node, "beat", &["--instances", "200", "--batch", "10"]);
    assert_eq!(r["items"], r["ops"].as_u64().unwrap() * 10, "{r:#}");

    let r = run_mode(&node, "query", &["--instances", "10"]);
    assert!(r["kinds"]["query"]["ops"].as_u64().unwrap() > 0, "{r:#}");

    let r = run_mode(&node, "mixed", &["--instances", "200", "--warmup", "200ms"]);
    for kind in ["query", "beat", "re-register"] {
        assert!(r["kinds"][kind]["ops"].as_u64().unwrap() > 0, "mixed without {kind}: {r:#}");
    }
}

#[test]
fn the_eureka_api_modes_register_renew_and_fetch_without_errors() {
    let node = single_node();
    let r = run_mode(&node, "register", &["--api", "eureka", "--instances", "300"]);
    assert_eq!(r["api"], "eureka");
    assert!(r["kinds"]["register"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "beat", &["--api", "eureka", "--instances", "200"]);
    assert_eq!(r["setup"]["registrations"], 200);
    assert!(r["kinds"]["beat"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "query", &["--api", "eureka", "--instances", "10"]);
    assert!(r["kinds"]["query"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let refused = Command::new(env!("CARGO_BIN_EXE_muster-bench"))
        .args(["--server", &node, "--api", "eureka", "--mode", "mixed", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
}

#[test]
fn the_nacos_api_runs_register_beat_query_and_mixed_with_no_errors() {
    let node = single_node();
    let nacos = ["--api", "nacos"];
    let r = run_mode(&node, "register", &[&nacos[..], &["--instances", "300"]].concat());
    assert_eq!(r["api"], "nacos");
    assert!(r["kinds"]["register"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "beat", &[&nacos[..], &["--instances", "200"]].concat());
    assert_eq!(r["setup"]["registrations"], 200);
    assert!(r["kinds"]["beat"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "query", &[&nacos[..], &["--instances", "10"]].concat());
    assert!(r["kinds"]["query"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "mixed", &[&nacos[..], &["--instances", "200", "--warmup", "200ms"]].concat());
    for kind in ["query", "beat", "re-register"] {
        assert!(r["kinds"][kind]["ops"].as_u64().unwrap() > 0, "mixed without {kind}: {r:#}");
    }
    // The instances went into the one registry: the native API sees them.
    let mut s = TcpStream::connect(&node).unwrap();
    let req =
        format!("GET /v1/instances?service=bench-0000 HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("198.18.0.0"), "{answer}");
}

#[test]
fn watch_mode_measures_a_change_on_one_node_seen_on_another() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("load-tool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("muster.secret");
    std::fs::write(&secret, "load-tool-test-secret-0123456789\n").unwrap();
    let nodes = start_nodes(2, |ports| {
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        ports
            .iter()
            .map(|p| ServeArgs {
                listen: listen(*p),
                peers: Some(peers.clone()),
                cluster_secret_file: Some(secret.clone()),
                startup_timeout_ms: Some(2_000),
                snapshot_retry_ms: Some(500),
                ping_interval_ms: Some(200),
                ..Default::default()
            })
            .collect()
    });
    let r = bench(&[
        "--server",
        &nodes[0],
        "--watch-server",
        &nodes[1],
        "--mode",
        "watch",
        "--concurrency",
        "3",
        "--rate",
        "20",
        "--duration",
        "1s",
    ]);
    assert_eq!(r["error_count"], 0, "{r:#}");
    let w = &r["watch"];
    assert!(w["writes"].as_u64().unwrap() >= 5, "{r:#}");
    assert!(w["seen"].as_u64().unwrap() > 0, "{r:#}");
    assert!(w["seen"].as_u64() <= w["expected"].as_u64(), "{r:#}");
    assert!(r["latency_ms"]["max"].as_f64().unwrap() > 0.0, "{r:#}");
}

#[test]
fn a_server_off_this_machine_is_refused_before_any_traffic() {
    let out = Command::new(env!("CARGO_BIN_EXE_muster-bench"))
        .args(["--server", "192.0.2.1:8848", "--mode", "query", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("only targets loopback addresses"), "{stderr}");
}

#[test]
fn the_consul_api_modes_report_operations_and_no_errors() {
    let node = single_node();
    let r = run_mode(&node, "register", &["--api", "consul", "--instances", "300"]);
    assert!(r["kinds"]["register"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "beat", &["--api", "consul", "--instances", "200"]);
    assert_eq!(r["setup"]["registrations"], 200);
    assert!(r["kinds"]["beat"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "query", &["--api", "consul", "--instances", "10"]);
    assert!(r["kinds"]["query"]["ops"].as_u64().unwrap() > 0, "{r:#}");
    let r = run_mode(&node, "mixed", &["--api", "consul", "--instances", "200", "--warmup", "200ms"]);
    for kind in ["query", "beat", "re-register"] {
        assert!(r["kinds"][kind]["ops"].as_u64().unwrap() > 0, "consul mixed without {kind}: {r:#}");
    }
}
