//! A real `muster` process under hostile clients and peers: each case must
//! be refused, change nothing it should not, and leave the node's memory
//! bounded. Every loop is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Node, fast_with, frames_body, free_ports, metric, post_signed, rss_kib, scratch, secret_file};
use muster_core::message::encode;
use muster_core::{
    InstanceData, InstanceKey, InstanceState, Metadata, NodeId, PeerMessage, Record, ServiceKey, Version,
};

/// One ready node with the fast timings and `extra` flags.
fn node(name: &str, extra: &[&str]) -> Node {
    let dir = scratch(name);
    let n = Node::start(free_ports(1)[0], &fast_with(extra), &dir);
    n.wait_ready(Duration::from_secs(10));
    n
}

/// A node with a cluster secret and one configured peer that never runs, so
/// that signed requests can come "from" it; returns the node and that id.
fn node_with_fake_peer(name: &str, extra: &[&str]) -> (Node, String) {
    let dir = scratch(name);
    let secret = secret_file(&dir);
    let fake = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut flags = vec![
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--peers",
        fake.as_str(),
        "--startup-timeout-ms",
        "500",
    ];
    flags.extend_from_slice(extra);
    let args = fast_with(&flags);
    let n = Node::start(free_ports(1)[0], &args, &dir);
    n.wait_ready(Duration::from_secs(10));
    (n, fake)
}

fn nonce(i: u64) -> String {
    format!("{:016x}{i:016x}", 0xabad_1dea_u64)
}

/// Opens a connection and sends the head of a POST announcing `len` body bytes.
fn slow_post(addr: &str, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!("POST /v1/instances HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads what the node answers until it closes the connection.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_body_sent_a_byte_at_a_time_is_cut_with_408_and_the_connection_closed() {
    let n = node("slow-body", &["--body-min-bytes-per-s", "100", "--body-timeout-ms", "5000"]);
    let mut s = slow_post(&n.addr, 1000);
    let t = Instant::now();
    let mut sent = 0;
    // 1 byte every 100 ms is 10 bytes/s, far under the 100 bytes/s minimum.
    while t.elapsed() < Duration::from_secs(4) {
        if s.write_all(b" ").is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
        if sent > 8 {
            break;
        }
    }
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("body_timeout") && answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "cut after {:?}", t.elapsed());
    assert_eq!(metric(&n, "muster_slow_bodies_total"), Some(1.0));
    assert_eq!(n.get("/health/ready").status, 200);
}

#[test]
fn many_slow_bodies_hold_little_memory_are_all_closed_and_give_it_back() {
    const CONNS: usize = 600;
    const BYTES_EACH: usize = 60;
    // No minimum rate: the deadline alone must end them, so they live long
    // enough to hold their bytes.
    let n = node("slow-bodies", &["--body-min-bytes-per-s", "0", "--body-timeout-ms", "6000"]);
    let pid = n.pid().unwrap();
    let Some(before) = rss_kib(pid) else { return };
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| slow_post(&n.addr, 4096)).collect();
    let mut peak = before;
    for _ in 0..BYTES_EACH {
        for s in &mut conns {
            let _ = s.write_all(b"x");
        }
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    // 600 connections x 60 one-byte chunks: at ~4 KiB per chunk (the old
    // reader kept every chunk's read buffer) that is ~140 MiB; copied into
    // one buffer per body it is a few KiB per connection.
    let grown_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    eprintln!("RSS {before} KiB -> peak {peak} KiB ({grown_mib:.1} MiB for {CONNS} slow bodies)");
    assert!(grown_mib < 40.0, "{CONNS} slow bodies grew RSS by {grown_mib:.1} MiB");
    let mut cut = 0;
    for s in &mut conns {
        if read_to_close(s).starts_with("HTTP/1.1 408") {
            cut += 1;
        }
    }
    assert_eq!(cut, CONNS, "every slow body is answered 408 and closed");
    drop(conns);
    // The allocator gives the freed pages back to the OS within about a
    // second (jemalloc's decay; glibc's malloc kept them for good).
    let fallen = before + (peak.saturating_sub(before)) / 4 + 4 * 1024;
    let started = std::time::Instant::now();
    let mut after = rss_kib(pid).unwrap_or(0);
    while after > fallen && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kib(pid).unwrap_or(0);
    }
    eprintln!("RSS after the connections closed: {after} KiB after {:?}", started.elapsed());
    assert!(
        after <= fallen,
        "RSS stays up: {before} KiB before, peak {peak} KiB, {after} KiB 10 s after they closed"
    );
    assert_eq!(n.get("/health/ready").status, 200);
}

#[test]
fn watches_of_unknown_services_are_freed_when_they_end_and_bounded_meanwhile() {
    let n = Arc::new(node("ghost-watches", &["--max-unknown-watched", "20"]));
    let zero = "0000000000000000";
    // Thousands of short watches of names that do not exist leave nothing behind.
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (n, done) = (Arc::clone(&n), Arc::clone(&done));
            std::thread::spawn(move || {
                for i in 0..250 {
                    let r = n.get(&format!("/v1/instances?service=ghost-{t}-{i}&checksum={zero}&wait=1ms"));
                    if r.status == 200 {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(done.load(Ordering::Relaxed) >= 1900, "{} watches answered", done.load(Ordering::Relaxed));
    assert_eq!(metric(&n, "muster_watched_unknown_services"), Some(0.0));

    // While watched, at most max_unknown_watched unknown services are held.
    let waiting: Vec<_> = (0..20)
        .map(|i| {
            let n = Arc::clone(&n);
            std::thread::spawn(move || {
                n.get(&format!("/v1/instances?service=held-{i}&checksum={zero}&wait=3s"))
            })
        })
        .collect();
    common::wait_until(Duration::from_secs(5), "20 watches of unknown services", || {
        metric(&n, "muster_watched_unknown_services") == Some(20.0)
    });
    let refused = n.get(&format!("/v1/instances?service=one-too-many&checksum={zero}&wait=3s"));
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.text().contains("max_unknown_watched"), "{}", refused.text());
    // A known service is still watched normally.
    let known = n.req("POST", "/v1/instances", Some(&common::instance("known", "10.0.0.1", 80)));
    assert_eq!(known.status, 200);
    let c = common::instances(&n, "known")["checksum"].as_str().unwrap().to_owned();
    let t = Instant::now();
    assert_eq!(n.get(&format!("/v1/instances?service=known&checksum={c}&wait=300ms")).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
    // A registration wakes the watcher of a then-unknown service.
    let n2 = Arc::clone(&n);
    let woken = std::thread::spawn(move || {
        n2.req("POST", "/v1/instances", Some(&common::instance("held-3", "10.0.0.3", 80)))
    });
    for w in waiting {
        let r = w.join().unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(woken.join().unwrap().status, 200);
    common::wait_until(Duration::from_secs(5), "the entries to be freed", || {
        metric(&n, "muster_watched_unknown_services") == Some(0.0)
    });
    assert!(metric(&n, "muster_unknown_watches_refused_total").unwrap() >= 1.0);
}

#[test]
fn a_thousand_idle_watches_cost_a_few_kib_each() {
    const WATCHES: usize = 1000;
    let n = node("idle-watches", &[]);
    for i in 0..10 {
        let r =
            n.req("POST", "/v1/instances", Some(&common::instance("watched", &format!("10.0.0.{i}"), 80)));
        assert_eq!(r.status, 200);
    }
    let checksum = common::instances(&n, "watched")["checksum"].as_str().unwrap().to_owned();
    let pid = n.pid().unwrap();
    let Some(before) = rss_kib(pid) else { return };
    let req = format!(
        "GET /v1/instances?service=watched&checksum={checksum}&wait=20s HTTP/1.1\r\nHost: {}\r\n\r\n",
        n.addr
    );
    let mut conns: Vec<TcpStream> = Vec::with_capacity(WATCHES);
    for _ in 0..WATCHES {
        let mut s = TcpStream::connect(&n.addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        conns.push(s);
    }
    common::wait_until(Duration::from_secs(10), "every watch to wait", || {
        metric(&n, "muster_watchers") == Some(WATCHES as f64)
    });
    std::thread::sleep(Duration::from_millis(300));
    let during = rss_kib(pid).unwrap();
    let per_watch = (during.saturating_sub(before)) as f64 / WATCHES as f64;
    eprintln!("RSS {before} KiB -> {during} KiB with {WATCHES} idle watches: {per_watch:.1} KiB each");
    // Parked watches (`parked.rs`): about 4 KiB in this debug build, less in release.
    assert!(per_watch < 8.0, "{per_watch:.1} KiB per idle watch");
    // One change wakes all of them.
    let t = Instant::now();
    assert_eq!(
        n.req("POST", "/v1/instances", Some(&common::instance("watched", "10.0.1.1", 80))).status,
        200
    );
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    eprintln!("{WATCHES} watchers woken within {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn record(from: &str, service: &str, ip: &str, counter: u64) -> Record {
    let key = InstanceKey::parse(ServiceKey::parse(None, None, service).unwrap(), None, ip, 8080).unwrap();
    let data = InstanceData {
        weight: 1.0,
        healthy: true,
        enabled: true,
        ephemeral: false,
        metadata: Metadata::from_map([("muster.health_check".to_owned(), "none".to_owned())].into()).unwrap(),
    };
    Record::Instance {
        key,
        version: Version::client(counter, NodeId::parse(from).unwrap()),
        state: InstanceState::Live(data),
    }
}

#[test]
fn a_replayed_peer_request_is_refused_and_cannot_bring_back_a_deleted_instance() {
    let (n, fake) = node_with_fake_peer("peer-replay", &[]);
    let from = NodeId::parse(&fake).unwrap();
    let delta =
        PeerMessage::Delta { records: vec![record(&fake, "replayed", "10.9.0.1", common::unix_ms() << 16)] };
    let body = frames_body(&[encode(&from, &delta)]);
    let headers = common::peer_headers(common::TEST_SECRET, &fake, common::unix_ms(), &nonce(1), &body);
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let post = || common::request(&n.addr, "POST", "/cluster/v1/messages", &h, Some(&body));
    assert_eq!(post().status, 204);
    common::wait_until(Duration::from_secs(5), "the peer's record", || common::count(&n, "replayed") == 1);
    let del = n.req("DELETE", "/v1/instances?service=replayed&ip=10.9.0.1&port=8080", None);
    assert_eq!(del.status, 200, "{}", del.text());
    let replay = post();
    assert_eq!(replay.status, 401, "{}", replay.text());
    assert!(replay.text().contains("replayed"), "{}", replay.text());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(common::count(&n, "replayed"), 0, "the deleted instance stays deleted");
    assert!(metric(&n, "muster_peer_signatures_refused_total").unwrap() >= 1.0);
}

#[test]
fn unsigned_stale_forged_and_misattributed_peer_requests_are_refused() {
    let (n, fake) = node_with_fake_peer("peer-forged", &[]);
    let from = NodeId::parse(&fake).unwrap();
    let body = frames_body(&[encode(&from, &PeerMessage::Ping { nonce: 7, sent_ms: 0 })]);
    let send = |headers: Vec<(String, String)>, body: &[u8]| {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        common::request(&n.addr, "POST", "/cluster/v1/messages", &h, Some(body))
    };
    let bearer = vec![("authorization".to_owned(), format!("Bearer {}", common::TEST_SECRET))];
    assert_eq!(send(bearer, &body).status, 401, "the secret as a bearer token is not accepted");
    let stale =
        common::peer_headers(common::TEST_SECRET, &fake, common::unix_ms() - 120_000, &nonce(2), &body);
    let r = send(stale, &body);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("stale"), "{}", r.text());
    let forged =
        common::peer_headers("another-secret-0123456789abcdef", &fake, common::unix_ms(), &nonce(3), &body);
    assert_eq!(send(forged, &body).status, 401);
    let stranger = "127.0.0.1:1";
    let r =
        send(common::peer_headers(common::TEST_SECRET, stranger, common::unix_ms(), &nonce(4), &body), &body);
    assert_eq!(r.status, 401, "{}", r.text());
    // Signed by the peer, but a frame inside claims another sender.
    let other = NodeId::parse("127.0.0.1:2").unwrap();
    let lie = frames_body(&[encode(&other, &PeerMessage::Ping { nonce: 8, sent_ms: 0 })]);
    let r = post_signed(&n, &fake, &nonce(5), &lie);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(post_signed(&n, &fake, &nonce(6), &body).status, 204);
}

#[test]
fn an_oversized_peer_body_is_refused_before_it_is_read() {
    let (n, fake) = node_with_fake_peer("peer-big", &["--max-peer-body-bytes", "65536"]);
    let body = vec![0u8; 70_000];
    let r = post_signed(&n, &fake, &nonce(1), &body);
    assert_eq!(r.status, 413, "{}", r.text());
    // A frame whose record list claims more than max_incoming_records: refused at its length prefix.
    let from = NodeId::parse(&fake).unwrap();
    let empty = encode(&from, &PeerMessage::Delta { records: Vec::new() });
    let mut frame = empty[..empty.len() - 1].to_vec();
    frame.extend_from_slice(&[0x80, 0x94, 0xeb, 0xdc, 0x03]); // a billion, as a varint
    let r = post_signed(&n, &fake, &nonce(2), &frames_body(&[frame]));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("bad_frame")), "{}", r.text());
    assert_eq!(n.get("/health/ready").status, 200);
}

#[test]
fn one_peer_request_of_many_bucket_lists_gets_a_bounded_number_of_answers() {
    const FRAMES: usize = 50;
    const RATE: usize = 5;
    let (n, fake) = node_with_fake_peer("peer-amplify", &["--peer-replies-per-s", "5"]);
    for i in 0..50 {
        let ip = format!("10.0.{}.{}", i / 200, i % 200 + 1);
        assert_eq!(n.req("POST", "/v1/instances", Some(&common::instance("amp", &ip, 80))).status, 200);
    }
    let from = NodeId::parse(&fake).unwrap();
    let frame = encode(&from, &PeerMessage::DigestBuckets { buckets: Vec::new(), hlc: 0 });
    let body = frames_body(&vec![frame; FRAMES]);
    let out = |n: &Node| {
        metric(n, "muster_sync_messages_total{direction=\"out\",kind=\"bucket_records\"}").unwrap_or(0.0)
            as usize
    };
    let before = out(&n);
    assert_eq!(post_signed(&n, &fake, &nonce(1), &body).status, 204);
    std::thread::sleep(Duration::from_millis(300));
    let answered = out(&n) - before;
    let throttled = metric(&n, "muster_peer_messages_throttled_total").unwrap() as usize;
    eprintln!("{FRAMES} bucket lists in one request: {answered} answered, {throttled} dropped");
    assert!(answered <= RATE, "{answered} answers to one request");
    assert!(throttled >= FRAMES - RATE, "{throttled} dropped");
}

#[test]
fn health_checks_reach_only_the_allowed_ranges_and_can_be_turned_off() {
    let n = node("probe-allow", &["--health-check-allow", "10.0.0.0/8,fd00::/8"]);
    let persistent = |ip: &str, meta: &str| {
        let body =
            format!(r#"{{"service":"db","ip":"{ip}","port":5432,"ephemeral":false,"metadata":{{{meta}}}}}"#);
        n.req("POST", "/v1/instances", Some(&body))
    };
    let r = persistent("127.0.0.1", "");
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("ip")), "{}", r.text());
    assert!(r.text().contains("health_check_allow"), "{}", r.text());
    assert_eq!(persistent("169.254.169.254", "").status, 400);
    assert_eq!(persistent("db.internal", "").status, 400, "host names cannot be checked against ranges");
    assert_eq!(persistent("10.1.2.3", "").status, 200);
    assert_eq!(persistent("fd00::5", "").status, 200);
    assert_eq!(persistent("127.0.0.1", r#""muster.health_check":"none""#).status, 200, "unchecked is fine");
    assert_eq!(n.req("POST", "/v1/instances", Some(&common::instance("web", "127.0.0.1", 80))).status, 200);

    let off = node("probe-off", &["--health-checks", "false"]);
    let body = r#"{"service":"db","ip":"10.1.2.3","port":5432,"ephemeral":false}"#;
    let r = off.req("POST", "/v1/instances", Some(body));
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("ephemeral")), "{}", r.text());
    let body = r#"{"service":"db","ip":"10.1.2.3","port":5432,"ephemeral":false,"metadata":{"muster.health_check":"none"}}"#;
    assert_eq!(off.req("POST", "/v1/instances", Some(body)).status, 200);
}

#[test]
fn a_peer_record_outside_the_allowed_ranges_is_never_probed() {
    // A listener the node must never connect to.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let port = target.local_addr().unwrap().port();
    let (n, fake) = node_with_fake_peer(
        "probe-peer",
        &["--health-check-allow", "10.0.0.0/8", "--health-check-interval-ms", "200"],
    );
    let from = NodeId::parse(&fake).unwrap();
    let key = InstanceKey::parse(
        ServiceKey::parse(None, None, "probed").unwrap(),
        None,
        "127.0.0.1",
        i64::from(port),
    )
    .unwrap();
    let data = InstanceData {
        weight: 1.0,
        healthy: true,
        enabled: true,
        ephemeral: false,
        metadata: Metadata::default(),
    };
    let rec = Record::Instance {
        key,
        version: Version::client(common::unix_ms() << 16, from.clone()),
        state: InstanceState::Live(data),
    };
    let body = frames_body(&[encode(&from, &PeerMessage::Delta { records: vec![rec] })]);
    assert_eq!(post_signed(&n, &fake, &nonce(1), &body).status, 204);
    common::wait_until(Duration::from_secs(10), "the refused checks to fail the instance", || {
        common::instances(&n, "probed")["instances"][0]["healthy"] == false
    });
    assert!(target.accept().is_err(), "the node connected to a refused address");
    assert!(metric(&n, "muster_health_checks_refused_total").unwrap() >= 1.0);
}

#[test]
fn duplicate_json_keys_are_refused_naming_the_field() {
    let n = node("dup-keys", &[]);
    for (body, field) in [
        (r#"{"service":"a","ip":"10.0.0.1","port":80,"port":81}"#, "port"),
        (r#"{"service":"a","service":"b","ip":"10.0.0.1","port":80}"#, "service"),
        (r#"{"service":"a","ip":"10.0.0.1","port":80,"metadata":{"k":"1","k":"2"}}"#, "metadata.k"),
    ] {
        let r = n.req("POST", "/v1/instances", Some(body));
        assert_eq!(
            (r.status, r.json()["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {}",
            r.text()
        );
    }
    let beat = r#"{"beats":[{"service":"a","ip":"10.0.0.1","port":80,"ip":"10.0.0.2"}]}"#;
    let r = n.req("PUT", "/v1/instances/beat", Some(beat));
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("beats[0].ip")), "{}", r.text());
    assert_eq!(common::count(&n, "a"), 0, "nothing was registered");
}

#[test]
fn every_route_refuses_unknown_query_parameters_alike() {
    let n = node("unknown-query", &[]);
    for (method, path, body) in [
        ("POST", "/v1/instances?x=1", Some(common::instance("q", "10.0.0.1", 80))),
        ("PUT", "/v1/instances/beat?x=1", Some(common::instance("q", "10.0.0.1", 80))),
        ("GET", "/v1/instances?service=q&x=1", None),
        ("GET", "/v1/namespaces?x=1", None),
        ("GET", "/v1/cluster/nodes?x=1", None),
        ("GET", "/health/live?x=1", None),
        ("GET", "/health/ready?x=1", None),
        ("GET", "/metrics?x=1", None),
    ] {
        let r = n.req(method, path, body.as_deref());
        assert_eq!(
            (r.status, r.json()["error"]["field"].as_str()),
            (400, Some("x")),
            "{method} {path}: {}",
            r.text()
        );
    }
    assert_eq!(common::count(&n, "q"), 0);
}

#[test]
fn registrations_are_normalised_and_judged_as_updates_are() {
    let n = node("normalise", &[]);
    let neg = r#"{"service":"w","ip":"10.0.0.1","port":80,"weight":-0.0}"#;
    assert_eq!(n.req("POST", "/v1/instances", Some(neg)).status, 200);
    let zero = r#"{"service":"w2","ip":"10.0.0.1","port":80,"weight":0}"#;
    assert_eq!(n.req("POST", "/v1/instances", Some(zero)).status, 200);
    let a = common::instances(&n, "w");
    let b = common::instances(&n, "w2");
    assert_eq!(a["instances"][0]["weight"], 0.0);
    assert_eq!(a["instances"][0]["weight"].to_string(), b["instances"][0]["weight"].to_string());
    // An ephemeral instance takes its health from heartbeats, at registration as on PATCH.
    let sick = r#"{"service":"e","ip":"10.0.0.1","port":80,"healthy":false}"#;
    let r = n.req("POST", "/v1/instances", Some(sick));
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("healthy")), "{}", r.text());
    assert_eq!(n.req("POST", "/v1/instances", Some(&common::instance("e", "10.0.0.1", 80))).status, 200);
    let r = n.req("PATCH", "/v1/instances", Some(sick));
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("healthy")), "{}", r.text());
    // Errors do not echo huge inputs back.
    let long = "z".repeat(4_000);
    let r = n.get(&format!("/v1/instances?service=w&checksum={long}"));
    assert_eq!(r.status, 400);
    assert!(r.body.len() < 1024, "an error of {} bytes", r.body.len());
}

/// Reads one response of known `content-length` from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[test]
fn parked_watches_keep_their_connection_hand_other_requests_to_the_full_server_and_leave_at_eof() {
    let n = node("parked", &["--max-long-polls", "3"]);
    assert_eq!(n.req("POST", "/v1/instances", Some(&common::instance("p", "10.0.0.1", 80))).status, 200);
    let checksum = common::instances(&n, "p")["checksum"].as_str().unwrap().to_owned();
    let mut s = TcpStream::connect(&n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Two watches on one keep-alive connection, the second answered by a change.
    let watch = |id: &str| {
        format!(
            "GET /v1/instances?service=p&checksum={checksum}&wait=200ms HTTP/1.1\r\nHost: x\r\nx-request-id: {id}\r\n\r\n"
        )
    };
    s.write_all(watch("first").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("x-request-id: first\r\n"), "{head}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["checksum"], checksum.as_str());
    let long = watch("second").replace("wait=200ms", "wait=20s");
    s.write_all(long.as_bytes()).unwrap();
    common::wait_until(Duration::from_secs(5), "the watch to wait", || common::watchers(&n) == 1);
    assert_eq!(n.req("POST", "/v1/instances", Some(&common::instance("p", "10.0.0.2", 80))).status, 200);
    let (head, body) = read_response(&mut s);
    assert!(head.contains("x-request-id: second\r\n"), "{head}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(answer["checksum"], checksum.as_str());
    assert_eq!(answer["instances"].as_array().unwrap().len(), 2);
    // Only the watch that a change woke is timed, not the one its deadline ended.
    assert_eq!(metric(&n, "muster_watch_wake_seconds_count"), Some(1.0));
    // Any other request on the same connection is served as always, refusals included.
    let bad =
        format!("GET /v1/instances?service=p&checksum={checksum}&wait=1s&nope=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(bad.as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body.contains("nope"), "{body}");
    s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(read_response(&mut s).0.starts_with("HTTP/1.1 200"));
    // Past max_long_polls the refusal is the full server's 429.
    let now = common::instances(&n, "p")["checksum"].as_str().unwrap().to_owned();
    let held_watch = long.replace(&checksum, &now);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut w = TcpStream::connect(&n.addr).unwrap();
            w.write_all(held_watch.as_bytes()).unwrap();
            w
        })
        .collect();
    common::wait_until(Duration::from_secs(5), "three watches", || common::watchers(&n) == 3);
    let r = n.get(&format!("/v1/instances?service=p&checksum={now}&wait=1s"));
    assert_eq!(r.status, 429, "{}", r.text());
    // A client that leaves mid-wait frees its watch at once.
    drop(held);
    common::wait_until(Duration::from_secs(5), "the watches to leave", || common::watchers(&n) == 0);
    let unknown =
        "GET /v1/instances?service=gone&checksum=0000000000000000&wait=20s HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut w = TcpStream::connect(&n.addr).unwrap();
    w.write_all(unknown.as_bytes()).unwrap();
    common::wait_until(Duration::from_secs(5), "the unknown service to be watched", || {
        metric(&n, "muster_watched_unknown_services") == Some(1.0)
    });
    drop(w);
    common::wait_until(Duration::from_secs(5), "its entry to be freed", || {
        metric(&n, "muster_watched_unknown_services") == Some(0.0)
    });
    assert!(common::requests(&n, "query_instances") >= 4);
}

/// Peak resident memory of a process, KiB (Linux `/proc`).
fn hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// One signed request of one `Delta` frame of `records` instances, each
/// with about 7.6 KB of metadata (under the 8 KiB default), as `from`.
fn large_delta(from: &str, records: usize) -> Vec<u8> {
    let sender = NodeId::parse(from).unwrap();
    let value = "v".repeat(1_900);
    let mut metadata: std::collections::BTreeMap<String, String> =
        (0..4).map(|i| (format!("k{i}"), value.clone())).collect();
    // Persistent and unchecked: nothing expires or probes them meanwhile.
    metadata.insert("muster.health_check".to_owned(), "none".to_owned());
    let records = (0..records)
        .map(|i| {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let key =
                InstanceKey::parse(ServiceKey::parse(None, None, "big").unwrap(), None, &ip, 8080).unwrap();
            let data = InstanceData {
                weight: 1.0,
                healthy: true,
                enabled: true,
                ephemeral: false,
                metadata: Metadata::from_map(metadata.clone()).unwrap(),
            };
            let version = Version::client((common::unix_ms() << 16) + i as u64, sender.clone());
            Record::Instance { key, version, state: InstanceState::Live(data) }
        })
        .collect();
    frames_body(&[encode(&sender, &PeerMessage::Delta { records })])
}

#[test]
fn one_peer_frame_at_the_body_limit_peaks_at_a_small_multiple_of_its_size() {
    // The default limit, 32 MiB: a frame just under it, then one just over it.
    let (n, fake) = node_with_fake_peer("peer-large-frame", &["--max-instances-per-service", "10000"]);
    let pid = n.pid().unwrap();
    let body = large_delta(&fake, 4_300);
    assert!(body.len() < 32 << 20 && body.len() > 30 << 20, "{} bytes", body.len());
    let Some(before) = hwm_kib(pid) else { return };
    let r = post_signed(&n, &fake, &nonce(1), &body);
    assert_eq!(r.status, 204, "{}", r.text());
    common::wait_until(Duration::from_secs(20), "the frame's instances", || {
        common::count(&n, "big") == 4_300
    });
    let peak = hwm_kib(pid).unwrap();
    let ratio = (peak.saturating_sub(before) * 1024) as f64 / body.len() as f64;
    eprintln!(
        "one frame of {} bytes: VmHWM {before} -> {peak} KiB (+{:.1} MiB, {ratio:.2}x the frame)",
        body.len(),
        (peak - before) as f64 / 1024.0
    );
    assert!(ratio < 8.0, "peak grew {ratio:.2}x the frame");
    // One over the limit is refused from its content-length (413, or the
    // connection closed before the body was read) and changes nothing.
    let over = large_delta(&fake, 4_500);
    assert!(over.len() > 32 << 20);
    let headers = common::peer_headers(common::TEST_SECRET, &fake, common::unix_ms(), &nonce(2), &over);
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let timeout = Duration::from_secs(10);
    if let Ok(r) = common::try_request(&n.addr, "POST", "/cluster/v1/messages", &h, Some(&over), timeout) {
        assert_eq!(r.status, 413, "{}", r.text());
    }
    assert_eq!(n.get("/health/ready").status, 200);
    assert_eq!(common::count(&n, "big"), 4_300);
}

#[test]
fn a_signed_peer_frame_with_a_flipped_bit_is_refused_counted_and_changes_nothing() {
    // The flipped bit sits in the record's counter: without the checksum it
    // would decode as a version far ahead of every other.
    let (n, fake) = node_with_fake_peer("peer-corrupt", &[]);
    let from = NodeId::parse(&fake).unwrap();
    let delta =
        PeerMessage::Delta { records: vec![record(&fake, "flipped", "10.9.0.2", common::unix_ms() << 16)] };
    let mut frame = encode(&from, &delta);
    let last = frame.len() - 1;
    frame[last - 40] ^= 0x04;
    let r = post_signed(&n, &fake, &nonce(1), &frames_body(&[frame]));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("checksum"), "{}", r.text());
    assert_eq!(metric(&n, "muster_peer_frames_corrupt_total"), Some(1.0));
    assert_eq!(common::count(&n, "flipped"), 0, "nothing of the corrupted frame was merged");
    // The same frame intact is taken.
    let r = post_signed(&n, &fake, &nonce(2), &frames_body(&[encode(&from, &delta)]));
    assert_eq!(r.status, 204, "{}", r.text());
    common::wait_until(Duration::from_secs(5), "the intact record", || common::count(&n, "flipped") == 1);
    assert_eq!(metric(&n, "muster_peer_frames_corrupt_total"), Some(1.0));
}

#[test]
fn a_thousand_idle_streams_cost_a_few_kib_each_and_every_change_reaches_each_of_them() {
    use std::io::BufRead;
    const STREAMS: usize = 1000;
    let n = node("idle-streams", &[]);
    assert_eq!(
        n.req("POST", "/v1/instances", Some(&common::instance("streamed", "10.0.0.1", 80))).status,
        200
    );
    let checksum = common::instances(&n, "streamed")["checksum"].as_str().unwrap().to_owned();
    let pid = n.pid().unwrap();
    let Some(before) = rss_kib(pid) else { return };
    let req = format!(
        "GET /v1/instances?service=streamed&checksum={checksum}&wait=30s&stream=true HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let mut conns: Vec<std::io::BufReader<TcpStream>> = (0..STREAMS)
        .map(|_| {
            let mut s = TcpStream::connect(&n.addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            std::io::BufReader::new(s)
        })
        .collect();
    common::wait_until(Duration::from_secs(10), "every stream to wait", || {
        metric(&n, "muster_watchers") == Some(STREAMS as f64)
    });
    std::thread::sleep(Duration::from_millis(300));
    let during = rss_kib(pid).unwrap();
    let per_stream = (during.saturating_sub(before)) as f64 / STREAMS as f64;
    eprintln!("RSS {before} KiB -> {during} KiB with {STREAMS} idle streams: {per_stream:.1} KiB each");
    assert!(per_stream < 8.0, "{per_stream:.1} KiB per idle stream");
    for c in &mut conns {
        let mut line = String::new();
        c.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 200 OK\r\n");
        while line != "\r\n" {
            line.clear();
            c.read_line(&mut line).unwrap();
        }
    }
    // Three changes: each stream gets each one, as a chunk of one line.
    let t = Instant::now();
    for port in 81..=83 {
        let r = n.req("POST", "/v1/instances", Some(&common::instance("streamed", "10.0.0.1", port)));
        assert_eq!(r.status, 200);
        for c in &mut conns {
            let mut size = String::new();
            c.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            c.read_exact(&mut chunk).unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&chunk[..size]).unwrap();
            assert_eq!(answer["instances"].as_array().unwrap().len(), usize::from(port - 79));
        }
    }
    eprintln!("3 changes reached {STREAMS} streams within {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(metric(&n, "muster_watchers"), Some(STREAMS as f64), "the streams go on");
}
