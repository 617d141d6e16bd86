//! Test support: `muster` processes on 127.0.0.1 and a tiny HTTP client.
//!
//! Every wait is bounded in time; every child is killed when dropped.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Timings small enough for a fast suite.
pub const FAST: &[&str] = &[
    "--heartbeat-interval-ms",
    "1000",
    "--unhealthy-after-ms",
    "3000",
    "--remove-after-ms",
    "6000",
    "--ping-interval-ms",
    "200",
    "--suspect-after-ms",
    "600",
    "--down-after-ms",
    "1200",
    "--anti-entropy-interval-ms",
    "1000",
    "--startup-timeout-ms",
    "5000",
    "--snapshot-retry-ms",
    "1000",
    "--tombstone-ttl-ms",
    "60000",
    "--shutdown-timeout-ms",
    "5000",
];

/// `n` distinct free ports on 127.0.0.1 (held together while chosen).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A directory for this test run's files.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a cluster secret file.
pub fn secret_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("muster.secret");
    std::fs::write(&path, "test-cluster-secret-0123456789abcdef\n").unwrap();
    path
}

/// One `muster serve` process.
pub struct Node {
    pub addr: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts `muster serve --listen 127.0.0.1:port` plus `args`.
    pub fn start(port: u16, args: &[String], dir: &std::path::Path) -> Node {
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("node-{port}.log"));
        let mut node = Node { addr, args: args.to_vec(), log, child: None };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // Memory only unless the test gives a data directory: no node
        // writes into the repository, and no two share a store.
        let storage: &[&str] = if self.args.iter().any(|a| a == "--data-dir" || a == "--memory-only") {
            &[]
        } else {
            &["--memory-only"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_muster"))
            .arg("serve")
            .args(["--listen", &self.addr])
            .args(&self.args)
            .args(storage)
            .env_remove("RUST_LOG")
            .env_remove("MUSTER_DATA_DIR")
            .env_remove("MUSTER_MEMORY_ONLY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the node answers `/health/ready` with 200.
    pub fn wait_ready(&self, within: Duration) {
        wait_until(within, &format!("{} ready", self.addr), || {
            try_request(&self.addr, "GET", "/health/ready", &[], None, Duration::from_secs(1))
                .is_ok_and(|r| r.status == 200)
        });
    }

    pub fn req(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        request(&self.addr, method, path, &[], body.map(str::as_bytes))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running").to_string();
        let ok = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(ok.success(), "kill -{signal} {pid}");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again with the same address and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not exit within {within:?} of SIGTERM; log {}", self.addr, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection; panics on transport errors.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    try_request(addr, method, path, headers, body, Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// One request on a fresh connection, reading for at most `timeout`.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Resp> {
    let sock: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw))))
}

fn parse_response(raw: &[u8]) -> Option<Resp> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Resp { status, headers, body: raw[split + 4..].to_vec() })
}

/// Polls `f` every 20 ms until it holds; panics after `within`.
pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /v1/instances?service=...` on `node`: its JSON.
pub fn instances(node: &Node, service: &str) -> Value {
    let r = node.get(&format!("/v1/instances?service={service}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Number of instances of `service` on `node`.
pub fn count(node: &Node, service: &str) -> usize {
    instances(node, service)["instances"].as_array().map_or(0, Vec::len)
}

/// A registration body.
pub fn instance(service: &str, ip: &str, port: u16) -> String {
    format!(r#"{{"service":"{service}","ip":"{ip}","port":{port}}}"#)
}

/// The fast timings with the flags of `extra` replacing theirs, plus `extra`.
pub fn fast_with(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = FAST
        .chunks(2)
        .filter(|pair| !extra.contains(&pair[0]))
        .flat_map(|pair| pair.iter().map(|s| (*s).to_owned()))
        .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// One ready node with the fast timings, `extra` replacing or adding flags.
pub fn single(name: &str, extra: &[&str]) -> Node {
    let dir = scratch(name);
    let node = Node::start(free_ports(1)[0], &fast_with(extra), &dir);
    node.wait_ready(Duration::from_secs(10));
    node
}

/// `n` ready nodes listing each other, with the fast timings and `extra`.
pub fn cluster(name: &str, n: usize, extra: &[&str]) -> Vec<Node> {
    let dir = scratch(name);
    let secret = secret_file(&dir);
    let ports = free_ports(n);
    let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let mut args = fast_with(extra);
    args.extend([
        "--peers".to_owned(),
        peers,
        "--cluster-secret-file".to_owned(),
        secret.display().to_string(),
    ]);
    let nodes: Vec<Node> = ports.iter().map(|p| Node::start(*p, &args, &dir)).collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(15));
    }
    nodes
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// `muster ARGS` with no `MUSTER_*` client variables inherited, stdout piped.
    pub fn muster(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let child = muster_command(args, env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Proc(child)
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let ok = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within {within:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `muster` binary with `args`, without inherited client variables.
pub fn muster_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
    cmd.args(args).stdin(Stdio::null()).env_remove("RUST_LOG");
    for var in ["MUSTER_SERVER", "MUSTER_NAMESPACE", "MUSTER_GROUP", "MUSTER_TOKEN_FILE", "MUSTER_TIMEOUT_MS"]
    {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What a finished `muster` command printed.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `muster ARGS` to the end (bounded: the client's own timeouts).
pub fn run_muster(args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = muster_command(args, env).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `GET /v1/instances?service=...&extra` on `node`: its JSON.
pub fn instances_where(node: &Node, service: &str, extra: &str) -> Value {
    let r = node.get(&format!("/v1/instances?service={service}&{extra}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The secret [`secret_file`] writes.
pub const TEST_SECRET: &str = "test-cluster-secret-0123456789abcdef";

/// Resident memory of a process, KiB (Linux `/proc`); `None` elsewhere.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Wall clock, Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The headers of a peer request signed as the docs of `peer_auth.rs`
/// describe: HMAC-SHA256 keyed by the cluster secret over
/// `"muster-peer-v1\n" from "\n" timestamp "\n" nonce "\n" body`.
pub fn peer_headers(
    secret: &str,
    from: &str,
    timestamp_ms: u64,
    nonce: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("muster-peer-v1\n{from}\n{timestamp_ms}\n{nonce}\n").as_bytes());
    m.update(body);
    let tag: String = m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("x-muster-from".to_owned(), from.to_owned()),
        ("x-muster-timestamp".to_owned(), timestamp_ms.to_string()),
        ("x-muster-nonce".to_owned(), nonce.to_owned()),
        ("authorization".to_owned(), format!("Muster-HMAC-SHA256 {tag}")),
    ]
}

/// A body of length-prefixed frames, as peers send.
pub fn frames_body(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for f in frames {
        body.extend_from_slice(&(f.len() as u32).to_le_bytes());
        body.extend_from_slice(f);
    }
    body
}

/// Posts a signed batch of frames to `node`'s peer API as `from`.
pub fn post_signed(node: &Node, from: &str, nonce: &str, body: &[u8]) -> Resp {
    let headers = peer_headers(TEST_SECRET, from, unix_ms(), nonce, body);
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    request(&node.addr, "POST", "/cluster/v1/messages", &h, Some(body))
}

/// The value of an unlabelled metric (or one line's full name with labels).
pub fn metric(node: &Node, name: &str) -> Option<f64> {
    let text = node.get("/metrics").text();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// The node's count of requests to `route` (a metrics label such as
/// `register_instance`), every status together.
pub fn requests(node: &Node, route: &str) -> u64 {
    let prefix = format!("muster_http_requests_total{{route=\"{route}\",");
    node.get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The node's `muster_watchers` gauge (long polls waiting).
pub fn watchers(node: &Node) -> u64 {
    node.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("muster_watchers ")?.trim().parse().ok())
        .unwrap_or(0)
}
