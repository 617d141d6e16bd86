//! The console in a real headless Chromium (Debian's `chromium` driven
//! through `chromedriver` over WebDriver), against real `muster` processes.
//!
//! `scripts/setup-chromium.sh` installs both (the README's test command runs
//! it); without them these tests fail and say so. Screenshots of each page go
//! to `target/console-screenshots/`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, cluster, free_ports, request, scratch, single};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Longest wait for anything to show in the browser.
const SHOW: Duration = Duration::from_secs(10);

/// Timings that keep instances registered without heartbeats for the whole test.
const PATIENT: &[&str] =
    &["--unhealthy-after-ms", "120000", "--remove-after-ms", "240000", "--tombstone-ttl-ms", "600000"];

/// A headless Chromium session and the chromedriver behind it, both killed on drop.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib/chromium")])
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

async fn browser(name: &str) -> Browser {
    let missing = |what: &str| {
        panic!(
            "{what} is not installed: the console tests need Debian's chromium and chromium-driver; \
             run scripts/setup-chromium.sh (apt-get install -y chromium chromium-driver) or ./scripts/test.sh"
        )
    };
    let chromium = find_program(&["chromium", "chromium-browser"]).unwrap_or_else(|| missing("chromium"));
    let chromedriver = find_program(&["chromedriver"]).unwrap_or_else(|| missing("chromedriver"));
    let port = free_ports(1)[0];
    let driver = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
    let deadline = Instant::now() + SHOW;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port} within {SHOW:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = scratch(&format!("chromium-{name}"));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.display().to_string(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let Value::Object(caps) = caps else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")),
    )
    .await
    .expect("chromium did not start within 30 s")
    .unwrap_or_else(|e| panic!("chromium did not start through chromedriver: {e}"));
    Browser { client, driver }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Waits until `js` (an expression) is true in the page.
async fn until_js(c: &Client, js: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let v = c.execute(&format!("return !!({js});"), vec![]).await.unwrap_or(Value::Bool(false));
        if v == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what} ({js})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `f` holds (checked through the API).
async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finds `css` and runs `f` on it, finding it again if a live refresh
/// replaced the element meanwhile (a stale element).
async fn on_element<T>(
    c: &Client,
    css: &str,
    f: impl AsyncFn(fantoccini::elements::Element) -> Result<T, fantoccini::error::CmdError>,
) -> T {
    let deadline = Instant::now() + SHOW;
    loop {
        let el = c
            .wait()
            .at_most(SHOW)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match f(el).await {
            Ok(t) => return t,
            Err(e) if Instant::now() < deadline && e.to_string().contains("stale") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

async fn text(c: &Client, css: &str) -> String {
    on_element(c, css, async |el| el.text().await).await
}

async fn click(c: &Client, css: &str) {
    on_element(c, css, async |el| el.click().await).await;
}

/// Clicks the OK button of the open dialog.
async fn confirm(c: &Client) {
    click(c, "dialog[open] #dialog-ok").await;
    until_js(c, "!document.querySelector('dialog[open]')", SHOW, "the dialog to close").await;
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// A ready node that asks for `write-token-0123456789` to write and takes
/// `read-token-0123456789` for reading only.
fn node_with_tokens(dir: &std::path::Path) -> Node {
    let (write, read) = (dir.join("write.token"), dir.join("read.token"));
    std::fs::write(&write, "write-token-0123456789\n").unwrap();
    std::fs::write(&read, "read-token-0123456789\n").unwrap();
    let mut args = common::fast_with(PATIENT);
    args.extend(["--write-token-file".into(), write.display().to_string()]);
    args.extend(["--read-token-file".into(), read.display().to_string()]);
    let node = Node::start(free_ports(1)[0], &args, dir);
    node.wait_ready(Duration::from_secs(10));
    node
}

fn register(node: &Node, body: &Value) {
    let r = node.req("POST", "/v1/instances", Some(&body.to_string()));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The instance `ip:port` of `orders` as the API shows it, if registered.
fn api_instance(node: &Node, ip: &str, port: u64) -> Option<Value> {
    let all = common::instances(node, "orders");
    all["instances"].as_array()?.iter().find(|i| i["ip"] == ip && i["port"] == port).cloned()
}

const HOSTILE_KEY: &str = "<img src=x onerror=window.__xss=2>";
const HOSTILE_VALUE: &str = "<script>window.__xss=1</script> \"double\" 'single' ünïcødé 日本";

#[test]
fn the_console_lists_services_and_manages_instances_live_in_a_real_browser() {
    let node = single("console-single", PATIENT);
    for i in 1..=3 {
        register(
            &node,
            &json!({"service": "orders", "ip": format!("10.0.0.{i}"), "port": 8080, "metadata": {"zone": "eu-1"}}),
        );
    }
    register(
        &node,
        &json!({"service": "orders", "ip": "10.0.0.4", "port": 8080, "metadata": {HOSTILE_KEY: HOSTILE_VALUE}}),
    );
    register(&node, &json!({"service": "payments", "ip": "10.0.1.1", "port": 9090}));
    let base = format!("http://{}", node.addr);
    runtime().block_on(async {
        let b = browser("single").await;
        let c = &b.client;
        c.goto(&format!("{base}/")).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/console/", "/ redirects to the console");

        // Services: the list and its counts.
        assert_eq!(text(c, "tr[data-service='orders'] td:nth-child(3)").await, "4");
        assert_eq!(text(c, "tr[data-service='orders'] td:nth-child(4)").await, "4");
        assert_eq!(text(c, "tr[data-service='payments'] td:nth-child(3)").await, "1");
        screenshot(c, "services").await;

        // Find an instance by ip:port across services.
        c.find(Locator::Css("#find-ip")).await.unwrap().send_keys("10.0.1.1:9090").await.unwrap();
        click(c, ".find button[type=submit]").await;
        assert!(text(c, "#find-result li").await.contains("payments"));

        // A service: names and metadata are shown as text, never run.
        click(c, "tr[data-service='orders'] a").await;
        let meta = text(c, "tr[data-instance='10.0.0.4:8080'] td.meta").await;
        assert!(meta.contains(HOSTILE_KEY) && meta.contains(HOSTILE_VALUE), "shown as text: {meta:?}");
        let injected = c
            .execute("return [window.__xss === undefined, document.querySelectorAll('#instances script, #instances img').length];", vec![])
            .await
            .unwrap();
        assert_eq!(injected, json!([true, 0]), "no markup from metadata was parsed");

        // Disable an instance in the UI (with confirmation); the API agrees.
        click(c, "tr[data-instance='10.0.0.1:8080'] button.toggle").await;
        confirm(c).await;
        until(SHOW, "10.0.0.1 disabled", || api_instance(&node, "10.0.0.1", 8080).is_some_and(|i| i["enabled"] == false)).await;

        // Edit a weight: the metadata stays as it was.
        click(c, "tr[data-instance='10.0.0.2:8080'] button.edit").await;
        let weight = c.wait().at_most(SHOW).for_element(Locator::Css("dialog[open] #f-weight")).await.unwrap();
        weight.clear().await.unwrap();
        weight.send_keys("7").await.unwrap();
        confirm(c).await;
        until(SHOW, "weight 7", || api_instance(&node, "10.0.0.2", 8080).is_some_and(|i| i["weight"] == 7.0)).await;
        assert_eq!(api_instance(&node, "10.0.0.2", 8080).unwrap()["metadata"], json!({"zone": "eu-1"}));
        until_js(c, "document.querySelector(\"tr[data-instance='10.0.0.2:8080'] td.weight\").textContent === '7'", SHOW, "the new weight shown").await;

        // Deregister asks first: cancel keeps it, OK removes it.
        click(c, "tr[data-instance='10.0.0.3:8080'] button.deregister").await;
        click(c, "dialog[open] button.secondary").await;
        assert!(api_instance(&node, "10.0.0.3", 8080).is_some(), "cancelled: still registered");
        click(c, "tr[data-instance='10.0.0.3:8080'] button.deregister").await;
        confirm(c).await;
        until(SHOW, "10.0.0.3 gone", || api_instance(&node, "10.0.0.3", 8080).is_none()).await;

        // A refused action shows the server's error text.
        click(c, "#delete-service").await;
        confirm(c).await;
        let refused = text(c, "#notice .note.bad").await;
        assert!(refused.contains("deregister them first"), "the server's 409 text: {refused:?}");

        // A new instance appears without a reload within 2 s.
        c.execute("window.__same_page = true;", vec![]).await.unwrap();
        register(&node, &json!({"service": "orders", "ip": "10.0.0.9", "port": 8080}));
        until_js(c, "document.querySelector(\"tr[data-instance='10.0.0.9:8080']\")", Duration::from_secs(2), "the new instance within 2 s").await;
        until_js(c, "window.__same_page === true", SHOW, "no reload").await;
        screenshot(c, "service").await;

        // Bulk: select two, preview the count, disable both.
        click(c, "tr[data-instance='10.0.0.2:8080'] input[type=checkbox]").await;
        click(c, "tr[data-instance='10.0.0.9:8080'] input[type=checkbox]").await;
        assert_eq!(text(c, "#bulk-count").await, "2 selected");
        click(c, "#bulk button:nth-of-type(2)").await;
        assert!(text(c, "dialog[open] h2").await.contains("2 instance(s)"));
        confirm(c).await;
        until(SHOW, "both disabled", || {
            ["10.0.0.2", "10.0.0.9"].iter().all(|ip| api_instance(&node, ip, 8080).is_some_and(|i| i["enabled"] == false))
        })
        .await;

        // History: console and client changes, this node's view.
        c.goto(&format!("{base}/console/#/history?service=orders")).await.unwrap();
        until_js(c, "document.querySelectorAll('#history-list tr[data-event]').length >= 6", SHOW, "history rows").await;
        let history = text(c, "#history-list").await;
        assert!(history.contains("deregistered") && history.contains("from the console"), "{history}");
        assert!(history.contains("registered") && history.contains("by a client"), "{history}");
        assert!(text(c, "#history-scope").await.contains(&node.addr), "says whose view it is");
        screenshot(c, "history").await;

        // A phone-width window: nothing wider than the screen but the tables' own scroll.
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&format!("{base}/console/#/services")).await.unwrap();
        text(c, "tr[data-service='orders']").await;
        let fits = c.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;", vec![]).await.unwrap();
        assert_eq!(fits, Value::Bool(true), "the page fits a 390 px window");
        screenshot(c, "services-narrow").await;
        c.clone().close().await.unwrap();
    });
}

#[test]
fn with_tokens_the_console_shows_nothing_before_login_and_read_tokens_see_no_edits() {
    let dir = scratch("console-tokens");
    let node = node_with_tokens(&dir);
    let auth = [("authorization", "Bearer write-token-0123456789")];
    let body = json!({"service": "secret-orders", "ip": "10.0.0.1", "port": 80}).to_string();
    let r = request(&node.addr, "POST", "/v1/instances", &auth, Some(body.as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());
    let base = format!("http://{}", node.addr);
    runtime().block_on(async {
        let b = browser("tokens").await;
        let c = &b.client;
        c.goto(&format!("{base}/console/")).await.unwrap();
        text(c, "#login").await;
        let page = text(c, "body").await;
        assert!(!page.contains("secret-orders"), "nothing shows before login: {page}");
        screenshot(c, "login").await;

        let login = |token: &'static str| async move {
            let input = c.wait().at_most(SHOW).for_element(Locator::Css("#token")).await.unwrap();
            input.send_keys(token).await.unwrap();
            click(c, "#login button[type=submit]").await;
        };
        login("not-the-token").await;
        until_js(c, "document.body.textContent.includes('refused')", SHOW, "the refusal").await;
        assert!(!text(c, "body").await.contains("secret-orders"));

        // A read token: the data, and no edit actions.
        login("read-token-0123456789").await;
        click(c, "tr[data-service='secret-orders'] a").await;
        text(c, "tr[data-instance='10.0.0.1:80']").await;
        text(c, "#read-only").await;
        let edits = c.execute("return document.querySelectorAll('button.toggle, button.edit, button.deregister, #delete-service').length;", vec![]).await.unwrap();
        assert_eq!(edits, json!(0), "a read-only token sees no edit actions");

        // The write token: the actions are there.
        click(c, "#logout").await;
        login("write-token-0123456789").await;
        c.goto(&format!("{base}/console/#/services")).await.unwrap();
        click(c, "tr[data-service='secret-orders'] a").await;
        text(c, "tr[data-instance='10.0.0.1:80'] button.toggle").await;
        c.clone().close().await.unwrap();
    });
}

#[test]
fn the_cluster_page_shows_every_node_and_a_killed_one_going_down() {
    let mut nodes = cluster("console-cluster", 3, PATIENT);
    register(&nodes[1], &json!({"service": "orders", "ip": "10.0.0.1", "port": 80}));
    let base = format!("http://{}", nodes[0].addr);
    let (me, victim) = (nodes[0].addr.clone(), nodes[2].addr.clone());
    runtime().block_on(async {
        let b = browser("cluster").await;
        let c = &b.client;
        c.goto(&format!("{base}/console/#/cluster")).await.unwrap();
        until_js(c, "document.querySelectorAll('#cluster-nodes tr[data-node] .state-up').length === 3", SHOW, "three nodes up").await;
        assert!(text(c, "#cluster-nodes tr.self").await.contains(&me), "the node you are on is marked");
        until_js(
            c,
            "[...document.querySelectorAll('#cluster-nodes td.agree')].filter(td => td.textContent.includes('agrees')).length === 2",
            SHOW,
            "both peers' registries agreeing",
        )
        .await;
        until_js(c, "[...document.querySelectorAll('#cluster-nodes td.ready')].every(td => td.textContent === 'ready')", SHOW, "every node ready").await;
        screenshot(c, "cluster").await;

        nodes[2].kill();
        let down = format!("document.querySelector(\"tr[data-node='{victim}'] .state-down\")");
        until_js(c, &down, SHOW, "the killed node down").await;
        let unready = format!("document.querySelector(\"tr[data-node='{victim}'] td.ready\").textContent === 'no answer'");
        until_js(c, &unready, SHOW, "the killed node not answering its readiness probe").await;
        let events = text(c, "#cluster-events").await;
        assert!(events.contains(&victim), "the node event is listed: {events}");
        screenshot(c, "cluster-down").await;
        c.clone().close().await.unwrap();
    });
}

#[test]
fn every_console_api_route_answers_typed_errors_like_the_openapi() {
    let dir = scratch("console-errors");
    let node = node_with_tokens(&dir);
    let read_auth = [("authorization", "Bearer read-token-0123456789")];
    let routes = [
        ("GET", "/console/api/session"),
        ("POST", "/console/api/session"),
        ("GET", "/console/api/instances?service=orders"),
        ("GET", "/console/api/find?ip=10.0.0.1"),
        ("GET", "/console/api/history"),
        ("GET", "/console/api/cluster"),
        ("GET", "/console/api/changes"),
    ];
    for (method, path) in routes {
        let r = request(&node.addr, method, path, &[], None);
        assert_eq!(r.status, 401, "{method} {path} without a token: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized", "{method} {path}");
    }
    let r = request(&node.addr, "POST", "/console/api/session", &read_auth, None);
    assert_eq!(r.status, 401, "a read token cannot pass the write check");
    let bad = [
        ("/console/api/instances", "service"),
        ("/console/api/instances?service=a%20b", "service"),
        ("/console/api/instances?service=orders&enabled=perhaps", "enabled"),
        ("/console/api/instances?service=orders&metadata==x", "metadata"),
        ("/console/api/instances?service=orders&page=0", "page"),
        ("/console/api/instances?service=orders&color=red", "color"),
        ("/console/api/find", "ip"),
        ("/console/api/find?ip=10.0.0.1:99999", "port"),
        ("/console/api/find?ip=10.0.0.1:80&port=80", "port"),
        ("/console/api/history?port=0", "port"),
        ("/console/api/history?before=-1", "before"),
        ("/console/api/changes?wait=forever", "wait"),
    ];
    for (path, field) in bad {
        let r = request(&node.addr, "GET", path, &read_auth, None);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{path}: {}", r.text());
    }
    let r = request(&node.addr, "GET", "/console/api/nothing", &read_auth, None);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
    let r = request(&node.addr, "DELETE", "/console/api/history", &read_auth, None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    // The console's files are open (they hold no data) and carry their CSP.
    let r = request(&node.addr, "GET", "/console/", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-security-policy").is_some_and(|c| c.contains("script-src 'self'")));
    assert!(!r.text().contains("<script>"), "no inline script in the page");
    let etag = r.header("etag").unwrap().to_owned();
    let r = request(&node.addr, "GET", "/console/", &[("if-none-match", &etag)], None);
    assert_eq!(r.status, 304);
}

#[test]
fn the_change_long_poll_counts_as_a_watch_and_wakes_on_a_change() {
    let node = single("console-changes", &[&["--max-long-polls", "1"], PATIENT].concat());
    let seq = node.get("/console/api/changes").json()["seq"].as_u64().unwrap();
    let addr = node.addr.clone();
    let path = format!("/console/api/changes?since={seq}&wait=20s");
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let r = common::try_request(&addr, "GET", &path, &[], None, Duration::from_secs(30)).unwrap();
        (r.status, r.json()["seq"].as_u64(), started.elapsed())
    });
    common::wait_until(SHOW, "the first poll waiting", || {
        node.get("/metrics").text().lines().any(|l| l.starts_with("muster_watchers") && l.ends_with(" 1"))
    });
    let r = node.get(&format!("/console/api/changes?since={seq}&wait=20s"));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (429, Some("too_many_watches")),
        "{}",
        r.text()
    );
    register(&node, &json!({"service": "orders", "ip": "10.0.0.1", "port": 80}));
    let (status, new_seq, took) = waiter.join().unwrap();
    assert_eq!(status, 200);
    assert!(new_seq.is_some_and(|s| s != seq), "the counter moved");
    assert!(took < Duration::from_secs(15), "woken by the change, not by the wait: {took:?}");
    let r = node.get(&format!("/console/api/changes?since={seq}&wait=1ms"));
    assert_eq!(r.status, 200, "the slot is free again: {}", r.text());
}
