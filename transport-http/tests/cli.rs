//! The `muster` client subcommands against a real node on 127.0.0.1: what
//! they print, their exit codes, and `muster watch` following a change made
//! by `muster register`.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Out, Proc, count, free_ports, run_muster};
use serde_json::Value;

/// The lines a child prints, each with the moment it was read.
fn lines(p: &mut Proc) -> mpsc::Receiver<(Instant, String)> {
    let stdout = p.0.stdout.take().expect("stdout piped");
    read_lines(stdout)
}

/// The lines a child prints on stderr.
fn error_lines(p: &mut Proc) -> mpsc::Receiver<(Instant, String)> {
    let stderr = p.0.stderr.take().expect("stderr piped");
    read_lines(stderr)
}

fn read_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line matching `pred` within `within`.
fn line_where(
    rx: &mpsc::Receiver<(Instant, String)>,
    within: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> (Instant, String) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) if pred(&line) => return (at, line),
            Ok((_, line)) => seen.push(line),
            Err(_) => panic!("no line with {what} within {within:?}; saw {seen:#?}"),
        }
    }
}

fn ok(out: &Out) -> &str {
    assert_eq!(out.code, 0, "{out:?}");
    &out.stdout
}

fn json(out: &Out) -> Value {
    serde_json::from_str(ok(out)).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn muster_watch_shows_a_change_made_by_muster_register_within_a_second() {
    let node = common::single("cli-watch", &[]);
    let server = node.addr.as_str();
    let mut watch = Proc::muster(&["watch", "orders", "--server", server], &[]);
    let rx = lines(&mut watch);
    let (_, first) = line_where(&rx, Duration::from_secs(5), "the initial list", |l| l.contains("orders:"));
    assert!(first.contains("0 instances"), "{first}");

    let started = Instant::now();
    ok(&run_muster(&["register", "orders", "10.0.0.1", "8080", "--server", server], &[]));
    let (at, line) =
        line_where(&rx, Duration::from_secs(1), "the added instance", |l| l.contains("+ 10.0.0.1:8080"));
    let shown = at.duration_since(started);
    eprintln!("`muster watch` printed `{}` {shown:?} after `muster register` started", line.trim());
    assert!(shown < Duration::from_secs(1), "{shown:?}");

    let started = Instant::now();
    ok(&run_muster(&["deregister", "orders", "10.0.0.1", "8080", "--server", server], &[]));
    let (at, _) =
        line_where(&rx, Duration::from_secs(1), "the removed instance", |l| l.contains("- 10.0.0.1:8080"));
    assert!(at.duration_since(started) < Duration::from_secs(1));

    // With --json, one instance list per line.
    let mut jwatch = Proc::muster(&["watch", "orders", "--json", "--server", server], &[]);
    let jrx = lines(&mut jwatch);
    let (_, l) = line_where(&jrx, Duration::from_secs(5), "a JSON list", |l| l.starts_with('{'));
    let v: Value = serde_json::from_str(&l).unwrap();
    assert_eq!((v["service"].as_str(), v["instances"].as_array().map(Vec::len)), (Some("orders"), Some(0)));
    ok(&run_muster(&["register", "orders", "10.0.0.2", "80", "--server", server], &[]));
    let (_, l) = line_where(&jrx, Duration::from_secs(1), "the next JSON list", |l| l.starts_with('{'));
    let v: Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["instances"][0]["ip"], "10.0.0.2");
}

#[test]
fn client_commands_print_aligned_text_and_stable_json() {
    let node = common::single("cli-output", &[]);
    let env = [("MUSTER_SERVER", node.addr.as_str())];
    let muster = |args: &[&str]| run_muster(args, &env);

    let out = muster(&["register", "orders", "10.0.0.7", "8080", "--meta", "zone=eu-1", "-w", "2"]);
    assert_eq!(ok(&out), "registered 10.0.0.7#8080#DEFAULT in public/DEFAULT_GROUP/orders\n");
    assert!(out.stderr.contains("muster beat orders 10.0.0.7 8080"), "{out:?}");
    let v = json(&muster(&["register", "orders", "10.0.0.10", "80", "--persistent", "--json"]));
    assert_eq!(
        v,
        serde_json::json!({"instance_id": "10.0.0.10#80#DEFAULT", "heartbeat_interval_ms": 1000, "created": true})
    );

    // `instances`: a summary, then columns that start at the same offset on every line.
    let text = muster(&["instances", "orders"]);
    let rows: Vec<&str> = ok(&text).lines().collect();
    assert_eq!(rows[0], "public/DEFAULT_GROUP/orders: 2 instances, 2 healthy");
    assert!(
        rows[1].starts_with("IP         PORT  CLUSTER  WEIGHT  HEALTHY  ENABLED  EPHEMERAL  METADATA"),
        "{text:?}"
    );
    for col in ["PORT", "CLUSTER", "WEIGHT", "METADATA"] {
        let at = rows[1].find(col).unwrap();
        for row in &rows[2..] {
            assert_eq!(&row[at - 2..at], "  ", "{col} misaligned in {row:?}");
            assert_ne!(&row[at..=at], " ", "{col} misaligned in {row:?}");
        }
    }
    assert!(rows.iter().any(|r| r.starts_with("10.0.0.7 ") && r.ends_with("zone=eu-1")), "{rows:?}");
    // `--json` is the API's answer, field for field.
    assert_eq!(json(&muster(&["instances", "orders", "--json"])), common::instances(&node, "orders"));
    let healthy =
        json(&muster(&["instances", "orders", "--json", "--healthy-only", "--clusters", "DEFAULT"]));
    assert_eq!(healthy["instances"].as_array().map(Vec::len), Some(2));

    // Groups: `-g` scopes a command; `services` lists all groups unless given one.
    ok(&muster(&["register", "cart", "10.0.0.8", "1", "-g", "shop"]));
    assert!(ok(&muster(&["instances", "cart"])).starts_with("public/DEFAULT_GROUP/cart: 0 instances"));
    assert!(ok(&muster(&["instances", "cart", "-g", "shop"])).starts_with("public/shop/cart: 1 instance,"));
    let services = muster(&["services"]);
    let text = ok(&services);
    assert!(text.starts_with("GROUP          SERVICE  INSTANCES  HEALTHY  PROTECT  EXPLICIT\n"), "{text}");
    assert!(text.contains("\nDEFAULT_GROUP  orders   2          2        0        no\n"), "{text}");
    assert!(text.ends_with("2 services in namespace public (page 1 of 1)\n"), "{text}");
    assert_eq!(json(&muster(&["services", "-g", "shop", "--json"]))["total"], 1);

    let nodes = muster(&["nodes"]);
    assert!(ok(&nodes).contains(&format!("{}  up     self", node.addr)), "{nodes:?}");
    assert_eq!(json(&muster(&["nodes", "--json"]))["self"], node.addr.as_str());
    assert!(ok(&muster(&["health"])).contains(&format!("{}  yes   yes", node.addr)));

    assert_eq!(ok(&muster(&["beat", "orders", "10.0.0.7", "8080"])), "alive; beat again within 1000 ms\n");
    assert_eq!(
        json(&muster(&["beat", "orders", "10.0.0.7", "8080", "--json"])),
        serde_json::json!({"unknown": [], "heartbeat_interval_ms": 1000}),
        "the API's own answer"
    );
    ok(&muster(&["deregister", "orders", "10.0.0.10", "80"]));
    assert_eq!(count(&node, "orders"), 1);
}

#[test]
fn exit_codes_are_0_done_1_failed_2_usage_3_unreachable_and_errors_say_what_to_do() {
    let node = common::single("cli-exit", &[]);
    let dead = format!("127.0.0.1:{}", free_ports(1)[0]);
    let env = [("MUSTER_SERVER", node.addr.as_str())];
    let muster = |args: &[&str]| run_muster(args, &env);

    // 1: the operation failed.
    let out = muster(&["beat", "orders", "10.0.0.99", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("register it again with `muster register orders 10.0.0.99 1`"), "{out:?}");
    let out = muster(&["deregister", "orders", "10.0.0.99", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not found") && out.stderr.contains("`muster instances orders`"), "{out:?}");

    // 2: usage, from clap or from the registry's validation.
    for args in [
        &["register", "orders", "10.0.0.7", "0"][..],
        &["register", "orders", "10.0.0.7", "http"],
        &["register", "bad name", "10.0.0.7", "1"],
        &["register", "orders", "10.0.0.7", "1", "--weight", "-3"],
        &["instances"],
        &["frobnicate"],
        &["instances", "orders", "--server", "https://x:1"],
    ] {
        let out = muster(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }

    // 3: nothing answers; the message says what to do.
    let out = run_muster(&["instances", "orders", "--server", &dead], &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(&dead) && out.stderr.contains("muster serve"), "{out:?}");
    let out = run_muster(&["health"], &[("MUSTER_SERVER", &dead)]);
    assert_eq!(out.code, 3, "{out:?}");

    // A comma list fails over to the live server.
    let both = format!("{dead},{}", node.addr);
    let out = run_muster(&["instances", "orders"], &[("MUSTER_SERVER", &both)]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = run_muster(&["health", "--server", &both], &[]);
    assert_eq!(out.code, 1, "one server down is a failed health check: {out:?}");
    assert!(out.stdout.contains(&format!("{dead}  no    no     cannot connect")), "{out:?}");
}

#[test]
fn register_keep_beats_until_sigterm_then_deregisters() {
    let node = common::single(
        "cli-keep",
        &["--heartbeat-interval-ms", "300", "--unhealthy-after-ms", "1000", "--remove-after-ms", "2000"],
    );
    let mut keep =
        Proc::muster(&["register", "orders", "10.0.0.5", "5", "--keep", "--server", &node.addr], &[]);
    let rx = lines(&mut keep);
    let (_, line) =
        line_where(&rx, Duration::from_secs(5), "the registration", |l| l.starts_with("registered"));
    assert!(line.contains("beating every 300 ms; Ctrl-C deregisters"), "{line}");
    // Healthy throughout and past the unhealthy time: the SDK beats.
    let until = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < until {
        let v = common::instances_where(&node, "orders", "healthy_only=true");
        assert_eq!(v["instances"].as_array().map(Vec::len), Some(1), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = keep.terminate(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert_eq!(count(&node, "orders"), 0);
}

#[test]
fn client_flags_go_before_or_after_the_subcommand_and_output_is_unambiguous() {
    let node = common::single("cli-flags", &[]);
    let server = node.addr.as_str();
    // Before the subcommand, with a value as the next argument or after `=`.
    let out = run_muster(
        &["--server", server, "--json", "register", "orders", "10.0.0.1", "1", "--persistent"],
        &[],
    );
    assert_eq!(json(&out)["instance_id"], "10.0.0.1#1#DEFAULT");
    let out = run_muster(&[&format!("--server={server}"), "-g", "shop", "instances", "orders"], &[]);
    assert!(ok(&out).starts_with("public/shop/orders: 0 instances"), "{out:?}");
    // A trailing comma or an empty entry in the list is skipped everywhere.
    let listed = format!("{server},");
    for args in [&["instances", "orders"][..], &["health"], &["nodes"], &["services"]] {
        let out = run_muster(args, &[("MUSTER_SERVER", &listed)]);
        assert_eq!(out.code, 0, "{args:?} with MUSTER_SERVER={listed:?}: {out:?}");
    }
    let out = run_muster(&["instances", "orders", "--server", &format!(",{server},,")], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = run_muster(&["instances", "orders", "--server", ","], &[]);
    assert_eq!(out.code, 2, "no server at all is a usage error: {out:?}");

    // Metadata values with `=` or `,` are quoted; plain ones are not.
    let out = run_muster(
        &[
            "register",
            "meta",
            "10.0.0.2",
            "2",
            "--persistent",
            "--server",
            server,
            "--meta",
            "k=a=b,c",
            "--meta",
            "zone=eu-1",
        ],
        &[],
    );
    ok(&out);
    let out = run_muster(&["instances", "meta", "--server", server], &[]);
    assert!(ok(&out).lines().any(|l| l.ends_with(r#"k="a=b,c",zone=eu-1"#)), "{out:?}");
}

#[test]
fn register_keep_says_what_it_does_and_when_it_is_disconnected_and_watch_too() {
    let mut node = common::single("cli-disconnected", &[]);
    let server = node.addr.clone();
    let mut keep = Proc::muster(
        &["register", "db", "10.0.0.3", "3", "--persistent", "--keep", "--server", &server],
        &[],
    );
    let mut watch = Proc::muster(&["watch", "db", "--server", &server], &[]);
    let out = lines(&mut keep);
    let (_, line) =
        line_where(&out, Duration::from_secs(5), "the registration", |l| l.starts_with("registered"));
    assert!(line.contains("(persistent); checking every 1000 ms that the server still has it"), "{line}");
    let watch_out = lines(&mut watch);
    line_where(&watch_out, Duration::from_secs(5), "the watch's first list", |l| l.contains("db"));
    let (keep_err, watch_err) = (error_lines(&mut keep), error_lines(&mut watch));

    node.kill();
    let killed = Instant::now();
    for (what, rx) in [("register --keep", &keep_err), ("watch", &watch_err)] {
        let (at, line) =
            line_where(rx, Duration::from_secs(5), "a disconnection notice", |l| l.contains("disconnected"));
        assert!(line.contains(&server) && line.contains("retrying"), "{what}: {line}");
        eprintln!("{what} said it is disconnected {:?} after the kill", at - killed);
    }
    node.restart();
    node.wait_ready(Duration::from_secs(10));
    for (what, rx) in [("register --keep", &keep_err), ("watch", &watch_err)] {
        line_where(rx, Duration::from_secs(5), "a reconnection notice", |l| l.contains("connected again"));
        eprintln!("{what} reconnected");
    }
    // And the persistent instance is back on the node that lost it.
    common::wait_until(Duration::from_secs(3), "the persistent instance back", || count(&node, "db") == 1);
    assert!(keep.terminate(Duration::from_secs(5)).success());
    assert!(watch.terminate(Duration::from_secs(5)).success());
}

#[test]
fn ctrl_c_stops_a_command_at_once_while_its_request_hangs() {
    // A server that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in listener.incoming().take(4) {
            open.push(s);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    for args in [&["instances", "orders"][..], &["register", "orders", "10.0.0.4", "4", "--keep"]] {
        let mut cmd =
            common::muster_command(args, &[("MUSTER_SERVER", &addr), ("MUSTER_TIMEOUT_MS", "60000")]);
        let mut child =
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let sent = Instant::now();
        let ok = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(sent.elapsed() < Duration::from_secs(2), "{args:?} still running after Ctrl-C");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(130), "{args:?}: {status:?}");
    }
    drop(held);
}
