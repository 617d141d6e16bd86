//! Streamed watches (`GET /v1/instances?...&checksum=&wait=&stream=true`)
//! against one real `muster` process: every change as one JSON line of a
//! chunked answer, the wait, the long-poll limit, refusals, and the path
//! through the full server (HTTP/1.0).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Node, instance, metric, single as start, watchers};
use serde_json::Value;

/// Reads a response head (up to the blank line), lower-cased.
fn read_head(r: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "EOF inside the head: {head:?}");
        if line == "\r\n" {
            return head.to_ascii_lowercase();
        }
        head.push_str(&line);
    }
}

/// Reads one chunk of a chunked body; `None` for the last (empty) chunk.
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    r.read_line(&mut size).unwrap();
    let size = usize::from_str_radix(size.trim_end(), 16).unwrap_or_else(|_| panic!("chunk size {size:?}"));
    let mut data = vec![0; size + 2];
    r.read_exact(&mut data).unwrap();
    assert_eq!(&data[size..], b"\r\n", "a chunk ends with CRLF");
    data.truncate(size);
    (size > 0).then_some(data)
}

/// One line of a streamed watch, as JSON: it is one whole chunk here.
fn read_line(r: &mut BufReader<TcpStream>) -> Value {
    let chunk = read_chunk(r).expect("a line, not the end of the stream");
    assert_eq!(chunk.last(), Some(&b'\n'), "each answer is one line");
    serde_json::from_slice(&chunk).unwrap()
}

fn connect(n: &Node) -> BufReader<TcpStream> {
    let s = TcpStream::connect(&n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

#[test]
fn a_streamed_watch_carries_every_change_as_one_line_until_its_wait_ends_and_the_connection_serves_on() {
    let n = start("stream-lines", &["--max-long-polls", "1"]);
    let empty = common::instances(&n, "orders")["checksum"].as_str().unwrap().to_owned();
    let mut r = connect(&n);
    let path = format!("/v1/instances?service=orders&checksum={empty}&wait=3s&stream=true");
    let t = Instant::now();
    write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\nx-request-id: s-1\r\n\r\n").unwrap();
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("content-type: application/x-ndjson\r\n"), "{head}");
    assert!(head.contains("x-request-id: s-1\r\n"), "{head}");
    common::wait_until(Duration::from_secs(5), "the stream to wait", || watchers(&n) == 1);

    // A stream holds a long-poll slot for its whole wait.
    let refused = n.get(&format!("/v1/instances?service=orders&checksum={empty}&wait=1s&stream=true"));
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (429, Some("too_many_watches")));

    let mut checksums = vec![empty.clone()];
    for port in 1..=3 {
        assert_eq!(n.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", port))).status, 200);
        let line = read_line(&mut r);
        assert_eq!(line["instances"].as_array().unwrap().len(), usize::from(port), "{line}");
        let checksum = line["checksum"].as_str().unwrap().to_owned();
        assert!(!checksums.contains(&checksum), "each line is a new selection");
        checksums.push(checksum);
    }
    assert_eq!(checksums.last().unwrap(), common::instances(&n, "orders")["checksum"].as_str().unwrap());
    assert_eq!(metric(&n, "muster_watch_wake_seconds_count"), Some(3.0), "each line is a timed wake-up");

    // The stream ends with its wait, and the connection takes the next request.
    assert_eq!(read_chunk(&mut r), None);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_secs(8), "ended after {took:?}");
    common::wait_until(Duration::from_secs(5), "the slot to be free", || watchers(&n) == 0);
    write!(r.get_mut(), "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(read_head(&mut r).starts_with("http/1.1 200"));
}

#[test]
fn a_stream_needs_a_checksum_and_a_wait_and_refuses_what_is_not_a_boolean() {
    let n = start("stream-refusals", &[]);
    for (path, field) in [
        ("/v1/instances?service=orders&stream=true", "stream"),
        ("/v1/instances?service=orders&checksum=0000000000000000&stream=true", "stream"),
        ("/v1/instances?service=orders&checksum=0000000000000000&wait=1s&stream=yes", "stream"),
    ] {
        let r = n.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{path}: {}", r.text());
    }
    // `stream=false` is a long poll: one answer with its length.
    let r = n.get("/v1/instances?service=orders&checksum=0000000000000000&wait=1s&stream=false");
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some(), "{:?}", r.headers);
    assert_eq!(watchers(&n), 0);
}

#[test]
fn a_stream_the_full_server_serves_sends_lines_too_and_a_client_that_leaves_frees_its_slot() {
    let n = start("stream-hyper", &[]);
    assert_eq!(n.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", 1))).status, 200);
    // HTTP/1.0 is not served on the parked path: the full server streams
    // it, without chunks, closing at the end.
    let mut r = connect(&n);
    let path = "/v1/instances?service=orders&checksum=0000000000000000&wait=1s&stream=true";
    write!(r.get_mut(), "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: application/x-ndjson\r\n"), "{head}");
    let mut first = String::new();
    r.read_line(&mut first).unwrap();
    let line: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(line["instances"].as_array().unwrap().len(), 1);
    assert_eq!(n.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", 2))).status, 200);
    let mut second = String::new();
    r.read_line(&mut second).unwrap();
    let line: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(line["instances"].as_array().unwrap().len(), 2);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing changed after: {:?}", String::from_utf8_lossy(&rest));

    // A client that goes away mid-stream frees its slot, on either path.
    let now = common::instances(&n, "orders")["checksum"].as_str().unwrap().to_owned();
    let held = format!("/v1/instances?service=orders&checksum={now}&wait=30s&stream=true");
    let mut parked = connect(&n);
    write!(parked.get_mut(), "GET {held} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_head(&mut parked);
    let mut full = connect(&n);
    write!(full.get_mut(), "GET {held} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    read_head(&mut full);
    common::wait_until(Duration::from_secs(5), "two streams", || watchers(&n) == 2);
    drop(parked);
    drop(full);
    // The full server notices when a write fails: after a change or two.
    let mut port = 3;
    common::wait_until(Duration::from_secs(10), "the streams to leave", || {
        port += 1;
        assert_eq!(n.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", port))).status, 200);
        watchers(&n) == 0
    });
}
