//! Durable storage with real `muster` processes on 127.0.0.1: `kill -9`
//! during a stream of persistent writes, a whole cluster killed at once, a
//! single node restarted, a second process on the same data directory, and
//! bad files in the data directory.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Node, fast_with, free_ports, run_muster, scratch, secret_file, wait_until};

/// A persistent registration that no active check touches.
fn persistent(service: &str, port: u16) -> String {
    format!(
        r#"{{"service":"{service}","ip":"10.1.0.1","port":{port},"ephemeral":false,"metadata":{{"muster.health_check":"none"}}}}"#
    )
}

fn ports_of(node: &Node, service: &str) -> Vec<u64> {
    let mut ports: Vec<u64> = common::instances(node, service)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    ports
}

/// One node with its own data directory under `dir`.
fn node_with_data(port: u16, extra: &[String], dir: &Path) -> Node {
    node_on(port, extra, dir, &dir.join(format!("data-{port}")))
}

/// One node keeping its data in `data`.
fn node_on(port: u16, extra: &[String], dir: &Path, data: &Path) -> Node {
    let mut args = fast_with(&[]);
    args.extend(["--data-dir".to_owned(), data.display().to_string()]);
    args.extend(extra.iter().cloned());
    Node::start(port, &args, dir)
}

/// `n` nodes listing each other, each with its own data directory.
fn cluster_with_data(dir: &Path, n: usize) -> Vec<Node> {
    let secret = secret_file(dir);
    let ports = free_ports(n);
    let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let extra =
        ["--peers".to_owned(), peers, "--cluster-secret-file".to_owned(), secret.display().to_string()];
    let nodes: Vec<Node> = ports.iter().map(|p| node_with_data(*p, &extra, dir)).collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(15));
    }
    nodes
}

#[test]
fn every_acknowledged_persistent_registration_survives_a_kill_9_in_the_middle_of_a_stream() {
    let dir = scratch("storage-kill");
    let mut node = node_with_data(free_ports(1)[0], &[], &dir);
    node.wait_ready(Duration::from_secs(10));
    let addr = node.addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers, so that commits are shared (group commit) and some
    // requests are in flight when the node dies.
    let writers: Vec<_> = (0..4u16)
        .map(|w| {
            let (addr, stop) = (addr.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..5000u16 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let port = 1 + w * 5000 + i;
                    let body = persistent("orders", port);
                    match common::try_request(
                        &addr,
                        "POST",
                        "/v1/instances",
                        &[],
                        Some(body.as_bytes()),
                        Duration::from_secs(5),
                    ) {
                        Ok(r) if r.status == 200 || r.status == 201 => acked.push(u64::from(port)),
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), "a few hundred acknowledged writes", || {
        common::count(&node, "orders") >= 400
    });
    node.kill();
    stop.store(true, Ordering::Relaxed);
    let mut acked: Vec<u64> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    acked.sort_unstable();
    assert!(acked.len() >= 400, "only {} acknowledged", acked.len());
    node.restart();
    node.wait_ready(Duration::from_secs(10));
    let held = ports_of(&node, "orders");
    let lost: Vec<&u64> = acked.iter().filter(|p| held.binary_search(p).is_err()).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged registrations lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(node.log().contains("data loaded"), "the log says what was loaded:\n{}", node.log());
}

#[test]
fn a_cluster_killed_at_once_comes_back_with_its_persistent_instances_settings_and_expiring_ephemerals() {
    let dir = scratch("storage-cluster");
    let mut nodes = cluster_with_data(&dir, 3);
    for (i, n) in nodes.iter().enumerate() {
        for p in 0..20u16 {
            let r = n.req("POST", "/v1/instances", Some(&persistent("billing", 100 * i as u16 + p + 1)));
            assert!(r.status < 300, "{}", r.text());
        }
        let r = n.req("POST", "/v1/instances", Some(&common::instance("cart", "10.2.0.1", 1000 + i as u16)));
        assert!(r.status < 300, "{}", r.text());
    }
    let r = nodes[1].req(
        "PUT",
        "/v1/services/billing",
        Some(r#"{"protect_threshold":0.7,"metadata":{"team":"pay"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Ephemeral instances are written behind (200 ms by default).
    std::thread::sleep(Duration::from_millis(600));
    for n in &mut nodes {
        n.kill();
    }
    for n in &mut nodes {
        n.restart();
    }
    for n in &nodes {
        n.wait_ready(Duration::from_secs(15));
    }
    let expected: Vec<u64> = (0..3u64)
        .flat_map(|i| (0..20u64).map(move |p| 100 * i + p + 1))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for n in &nodes {
        wait_until(Duration::from_secs(10), "every persistent instance on every node", || {
            ports_of(n, "billing") == expected
        });
        let s = n.get("/v1/services/billing").json();
        assert_eq!(s["protect_threshold"], 0.7, "{s}");
        assert_eq!(s["metadata"]["team"], "pay", "{s}");
        assert_eq!(common::count(n, "cart"), 3, "ephemeral instances are back at once");
    }
    // Nobody beats for them: they expire after the usual removal time (6 s).
    for n in &nodes {
        wait_until(Duration::from_secs(20), "the silent ephemeral instances to expire", || {
            common::count(n, "cart") == 0
        });
        assert_eq!(ports_of(n, "billing").len(), 60, "persistent instances do not expire");
    }
}

#[test]
fn a_restarted_single_node_answers_its_last_known_list_at_once_and_keeps_deregistrations() {
    let dir = scratch("storage-single");
    let mut node = node_with_data(free_ports(1)[0], &[], &dir);
    node.wait_ready(Duration::from_secs(10));
    for p in 1..=3 {
        assert!(node.req("POST", "/v1/instances", Some(&persistent("stock", p))).status < 300);
    }
    assert_eq!(node.req("DELETE", "/v1/instances?service=stock&ip=10.1.0.1&port=2", None).status, 200);
    let before = common::instances(&node, "stock");
    node.kill();
    node.restart();
    node.wait_ready(Duration::from_secs(10));
    let after = common::instances(&node, "stock");
    assert_eq!(ports_of(&node, "stock"), vec![1, 3], "the deregistered instance stays gone");
    assert_eq!(after["known"], true, "{after}");
    assert_eq!(after["checksum"], before["checksum"], "the same list as before the restart");
}

#[test]
fn a_second_node_on_the_same_data_directory_refuses_to_start_and_says_why() {
    let dir = scratch("storage-lock");
    let data = dir.join("data");
    let node = node_on(free_ports(1)[0], &[], &dir, &data);
    node.wait_ready(Duration::from_secs(10));
    let port = free_ports(1)[0].to_string();
    let out = run_muster(
        &["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("another muster process is using this data directory"), "{}", out.stderr);
    assert!(out.stderr.contains("muster.redb"), "the message names the file: {}", out.stderr);
}

fn serve_once(data: &Path) -> common::Out {
    let port = free_ports(1)[0].to_string();
    run_muster(
        &["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", data.to_str().unwrap()],
        &[],
    )
}

#[test]
fn a_foreign_or_truncated_store_file_stops_the_node_with_the_file_named_and_what_to_do() {
    let dir = scratch("storage-bad");
    let data = dir.join("data");
    {
        let mut node = node_on(free_ports(1)[0], &[], &dir, &data);
        node.wait_ready(Duration::from_secs(10));
        for p in 1..=50 {
            assert!(node.req("POST", "/v1/instances", Some(&persistent("x", p))).status < 300);
        }
        node.terminate(Duration::from_secs(10));
    }
    let file = data.join("muster.redb");
    let good = std::fs::read(&file).unwrap();
    for (what, bytes) in
        [("foreign", b"not a store\n".repeat(500)), ("truncated", good[..good.len() / 2].to_vec())]
    {
        std::fs::write(&file, &bytes).unwrap();
        let started = Instant::now();
        let out = serve_once(&data);
        assert_eq!(out.code, 1, "{what}: {out:?}");
        assert!(out.stderr.contains(&file.display().to_string()), "{what}: names the file: {}", out.stderr);
        assert!(out.stderr.contains("Move it away"), "{what}: says what to do: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{what}: no panic: {}", out.stderr);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    std::fs::write(&file, &good).unwrap();
    let data_file = dir.join("plain-file");
    std::fs::write(&data_file, "x").unwrap();
    let out = serve_once(&data_file);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("--data-dir must name a directory"), "{}", out.stderr);
}

/// A tmpfs mounted on a directory for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "2m") on `mnt`, created if missing;
    /// `None`, said on stderr, where `mount` is not allowed (not root with
    /// CAP_SYS_ADMIN).
    fn mount(mnt: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", mnt.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root with CAP_SYS_ADMIN)");
            return None;
        }
        Some(Tmpfs(mnt.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: the data directory on a 2 MiB tmpfs. Needs `mount` (root
/// with CAP_SYS_ADMIN, as in CI); without it the test says so and passes.
#[test]
fn a_full_disk_fails_writes_with_a_clear_error_and_the_node_recovers_when_space_returns() {
    let dir = scratch("storage-full");
    let mnt = dir.join("mnt");
    let Some(_guard) = Tmpfs::mount(&mnt, "2m") else { return };
    let mut node = node_on(free_ports(1)[0], &[], &dir, &mnt.join("data"));
    node.wait_ready(Duration::from_secs(10));
    // Fill the rest of the tmpfs.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    let big = "x".repeat(4000);
    let mut refused = None;
    for p in 1..=400u16 {
        let body = format!(
            r#"{{"service":"full","ip":"10.3.0.1","port":{p},"ephemeral":false,"metadata":{{"muster.health_check":"none","pad":"{big}"}}}}"#
        );
        let r = node.req("POST", "/v1/instances", Some(&body));
        if r.status != 200 && r.status != 201 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a full disk refuses a write");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "not_durable", "{}", r.text());
    assert!(r.text().contains("free space"), "says what to do: {}", r.text());
    assert!(node.log().contains("store commit failed"), "{}", node.log());
    std::fs::remove_file(&filler).unwrap();
    // Space is back: the kept writes are committed, and new ones are acknowledged.
    wait_until(Duration::from_secs(10), "writes acknowledged again", || {
        node.req("POST", "/v1/instances", Some(&persistent("full", 9999))).status < 300
    });
    let held = common::count(&node, "full");
    node.kill();
    node.restart();
    node.wait_ready(Duration::from_secs(10));
    assert_eq!(common::count(&node, "full"), held, "nothing the node held in memory was lost on disk");
}

#[test]
fn export_then_import_into_another_node_copies_settings_and_instances_and_importing_twice_changes_nothing() {
    let a = common::single("storage-export-a", &[]);
    let b = common::single("storage-export-b", &[]);
    for p in 1..=1100u16 {
        assert!(a.req("POST", "/v1/instances", Some(&persistent("big", p))).status < 300);
    }
    let body = r#"{"namespace":"prod","group":"shop","service":"cart","ip":"10.9.0.1","port":81,"weight":3,"metadata":{"zone":"eu"}}"#;
    assert!(a.req("POST", "/v1/instances", Some(body)).status < 300);
    let r = a.req("PUT", "/v1/services/big", Some(r#"{"protect_threshold":0.4,"metadata":{"owner":"ops"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let dir = scratch("storage-export");
    let file = dir.join("backup.jsonl");
    let out = run_muster(&["export", "--server", &a.addr, "-o", file.to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("exported 1 service settings and 1101 instances"), "{}", out.stderr);
    for round in 0..2 {
        let out = run_muster(&["import", file.to_str().unwrap(), "--server", &b.addr], &[]);
        assert_eq!(out.code, 0, "round {round}: {out:?}");
        assert!(out.stderr.contains("imported 1000 lines"), "a progress line: {}", out.stderr);
        assert!(out.stderr.contains("imported 1102 lines"), "{}", out.stderr);
        assert_eq!(ports_of(&b, "big"), ports_of(&a, "big"));
        let s = b.get("/v1/services/big").json();
        assert_eq!(
            (s["protect_threshold"].clone(), s["metadata"]["owner"].clone()),
            (0.4.into(), "ops".into())
        );
        let cart = common::instances_where(&b, "cart", "namespace=prod&group=shop");
        let i = &cart["instances"][0];
        assert_eq!((i["weight"].as_f64(), i["metadata"]["zone"].as_str()), (Some(3.0), Some("eu")), "{cart}");
        assert_eq!(cart["instances"].as_array().unwrap().len(), 1);
    }
    std::fs::write(&file, "{\"kind\":\"instance\",\"service\":\"x\",\"ip\":\"10.0.0.1\",\"port\":0}\n")
        .unwrap();
    let out = run_muster(&["import", file.to_str().unwrap(), "--server", &b.addr], &[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("backup.jsonl:1") && out.stderr.contains("port"),
        "names the line and field: {}",
        out.stderr
    );
}

/// A read-only data directory: a tmpfs mounted read-only (read-only for
/// root too), empty and then holding a store. Needs `mount` like the full
/// disk test; without it the test says so and passes.
#[test]
fn a_read_only_data_directory_stops_the_node_with_the_file_named_and_what_to_do() {
    let dir = scratch("storage-ro");
    let mnt = dir.join("mnt");
    let Some(_guard) = Tmpfs::mount(&mnt, "4m") else { return };
    let data = mnt.join("data");
    std::fs::create_dir_all(mnt.join("empty")).unwrap();
    {
        let mut node = node_on(free_ports(1)[0], &[], &dir, &data);
        node.wait_ready(Duration::from_secs(10));
        assert!(node.req("POST", "/v1/instances", Some(&persistent("ro", 1))).status < 300);
        node.terminate(Duration::from_secs(10));
    }
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro", mnt.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "remount read-only");
    for (what, data, names) in [
        ("a store on a read-only disk", data.clone(), data.join("muster.redb")),
        ("an empty read-only directory", mnt.join("empty"), mnt.join("empty").join("muster.redb")),
        ("a missing directory on a read-only disk", mnt.join("new"), mnt.join("new")),
    ] {
        let started = Instant::now();
        let out = serve_once(&data);
        assert_eq!(out.code, 1, "{what}: {out:?}");
        assert!(out.stderr.contains(&names.display().to_string()), "{what}: names the file: {}", out.stderr);
        assert!(
            out.stderr.contains("make the data directory writable"),
            "{what}: says what to do: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{what}: no panic: {}", out.stderr);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
