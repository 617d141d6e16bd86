//! A service consumer: discovers the `hello` providers through Muster, calls
//! one of them every second (weighted random over healthy, enabled
//! instances), and prints every change of the instance list as it happens.
//!
//! ```sh
//! cargo run --release --bin muster -- serve      # a registry on 127.0.0.1:8848
//! cargo run --example provider                   # one or more providers
//! cargo run --example consumer                   # this; Ctrl-C to stop
//! cargo run --example consumer -- greetings      # another service
//! ```
//!
//! Stop the registry while it runs: the consumer keeps calling the providers
//! from its cached list. It also keeps a snapshot in
//! `$TMPDIR/muster-consumer-example`, so a restarted consumer finds the
//! providers even while no registry node answers.

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use muster_transport_http::client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
        .with_writer(std::io::stderr)
        .init();
    let service = std::env::args().nth(1).unwrap_or_else(|| "hello".to_owned());
    let servers = std::env::var("MUSTER_SERVER").unwrap_or_else(|_| "127.0.0.1:8848".to_owned());
    let client = Client::builder(servers.split(','))
        .snapshot_dir(std::env::temp_dir().join("muster-consumer-example"))
        .build()?;

    // Follow changes: the current list first, then each change.
    let mut lists = client.subscribe(&service).await?;
    tokio::spawn(async move {
        while let Some(list) = lists.next().await {
            let addrs: Vec<String> = list.serving().map(|i| i.addr()).collect();
            println!("{}: {} serving {:?}", list.service_name(), addrs.len(), addrs);
        }
    });

    // Call one provider a second.
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let instance = match client.choose(&service).await {
            Ok(i) => i,
            Err(e) => {
                println!("no {service} to call: {e}");
                continue;
            }
        };
        let uri = format!("http://{}/", instance.addr()).parse()?;
        let call = async {
            let resp = http.get(uri).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn Error>>((status, String::from_utf8_lossy(&body).trim().to_owned()))
        };
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok((status, answer))) if status.is_success() => {
                println!("called {}: {answer}", instance.addr());
            }
            Ok(Ok((status, answer))) => println!("calling {} answered {status}: {answer}", instance.addr()),
            Ok(Err(e)) => println!("calling {} failed: {e}", instance.addr()),
            Err(_) => println!("calling {} timed out", instance.addr()),
        }
    }
}
