//! Watches many services at once and prints what that costs this process:
//! open file descriptors (`/proc/self/fd`) and memory (`VmRSS`, `VmHWM`
//! from `/proc/self/status`). The numbers in BENCHMARKS.md come from it.
//!
//! ```sh
//! muster serve --listen 127.0.0.1:8848 --max-long-polls 20000 &
//! cargo run --release --example watch_many -- 10000          # max_watches 10000
//! cargo run --release --example watch_many -- 10000 256      # the default bound
//! ```
//!
//! Each service is subscribed (so no watch is evicted while it may run);
//! past `max_watches`, `subscribe` fails with `TooManyWatches` and the
//! program counts that instead.

use std::error::Error;
use std::time::{Duration, Instant};

use muster_transport_http::client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let max: usize = args.next().map_or(Ok(services), |a| a.parse())?;
    let servers = std::env::var("MUSTER_SERVER").unwrap_or_else(|_| "127.0.0.1:8848".to_owned());
    let client = Client::builder(servers.split(',')).max_watches(max).build()?;
    let before = (fds(), status("VmRSS"));
    let started = Instant::now();
    let mut subs = Vec::with_capacity(services);
    let mut refused = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..services {
        if tasks.len() >= 64 {
            collect(tasks.join_next().await, &mut subs, &mut refused)?;
        }
        let c = client.clone();
        tasks.spawn(async move { c.subscribe(&format!("watched-{i}")).await });
    }
    while let Some(done) = tasks.join_next().await {
        collect(Some(done), &mut subs, &mut refused)?;
    }
    let subscribed = started.elapsed();
    // Every watch has its long poll on the wire by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "services={services} max_watches={max} watched={} refused={refused} subscribe_all_ms={} \
         fds_before={} fds={} rss_before_kib={} rss_kib={} peak_rss_kib={}",
        client.watched_services(),
        subscribed.as_millis(),
        before.0,
        fds(),
        before.1,
        status("VmRSS"),
        status("VmHWM"),
    );
    Ok(())
}

type Joined = Result<
    Result<muster_transport_http::client::Subscription, muster_transport_http::client::Error>,
    tokio::task::JoinError,
>;

fn collect(
    done: Option<Joined>,
    subs: &mut Vec<muster_transport_http::client::Subscription>,
    refused: &mut usize,
) -> Result<(), Box<dyn Error>> {
    match done {
        Some(Ok(Ok(sub))) => subs.push(sub),
        Some(Ok(Err(muster_transport_http::client::Error::TooManyWatches { .. }))) => *refused += 1,
        Some(Ok(Err(e))) => return Err(e.into()),
        Some(Err(e)) => return Err(e.into()),
        None => {}
    }
    Ok(())
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// A `/proc/self/status` field in KiB.
fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .unwrap_or(0)
}
