//! A service provider: serves a tiny HTTP endpoint and stays registered in
//! Muster while it runs.
//!
//! ```sh
//! cargo run --release --bin muster -- serve                  # a registry on 127.0.0.1:8848
//! cargo run --example provider                               # service "hello" on a free port
//! cargo run --example provider -- 3001 greetings             # port 3001, service "greetings"
//! MUSTER_SERVER=127.0.0.1:8848,127.0.0.1:8849 cargo run --example provider   # failover list
//! ```
//!
//! Every request to `http://127.0.0.1:PORT/` answers `hello from 127.0.0.1:PORT`.
//! Ctrl-C (or SIGTERM) deregisters and exits; `kill -9` leaves the instance
//! to expire by silence (30 s with the default timings).

use std::convert::Infallible;
use std::error::Error;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use muster_transport_http::client::{Client, InstanceSpec};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let service = args.next().unwrap_or_else(|| "hello".to_owned());
    let servers = std::env::var("MUSTER_SERVER").unwrap_or_else(|_| "127.0.0.1:8848".to_owned());

    // Listen first, so that consumers never find an instance that refuses them.
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let client = Client::new(&servers)?;
    let spec =
        InstanceSpec::new(service.as_str(), addr.ip().to_string(), addr.port()).metadata("version", "1");
    // A provider may start before the registry: retry until a server answers.
    let registration = loop {
        match client.register(spec.clone()).await {
            Ok(r) => break r,
            Err(e) if e.is_unavailable() => {
                eprintln!("{e}; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    println!("serving {service} on http://{addr}/ as {}; Ctrl-C to stop", registration.instance_id());

    let greeting = Bytes::from(format!("hello from {addr}\n"));
    tokio::select! {
        () = serve(listener, greeting) => {}
        () = shutdown() => {}
    }
    registration.close().await?;
    println!("deregistered {service} at {addr}");
    Ok(())
}

/// Answers every request with `greeting`, one task per connection.
async fn serve(listener: TcpListener, greeting: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let greeting = greeting.clone();
        tokio::spawn(async move {
            let answer = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = Full::new(greeting.clone());
                async move { Ok::<_, Infallible>(Response::new(body)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), answer).await;
        });
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
