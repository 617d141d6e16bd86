//! The node process: binds, starts the driver, the peer senders and the
//! HTTP server, and shuts them down in order on SIGTERM or Ctrl-C.
//!
//! Shutdown: stop accepting; wake long polls (they answer with what they
//! have); let in-flight requests finish (up to `shutdown_timeout_ms`); stop
//! the driver, which answers whatever is queued and flushes pending sync
//! into the peer queues ([`muster_core::Node::flush`]); let the peer senders
//! send what is queued (one attempt each); exit 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use muster_core::{ConfigError, Node};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::api::AppState;
use crate::clock::Clock;
use crate::config::{LogFormat, Settings};
use crate::driver::Driver;
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::snapshot::Snapshots;

/// How long peer senders get to send what is queued at shutdown.
const PEER_DRAIN: Duration = Duration::from_secs(3);
/// Longest wait for the request line and headers of a request.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The core refused the configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Installs the global log subscriber as `settings` ask.
pub fn init_logging(settings: &Settings) -> Result<(), String> {
    let filter = EnvFilter::try_new(settings.log_level()).map_err(|e| format!("log_level: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match settings.log_format() {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Runs a node until SIGTERM or Ctrl-C, then shuts it down gracefully.
pub async fn run(settings: Settings) -> Result<(), RunError> {
    let clock = Clock::start();
    let mut core = settings.core.clone();
    core.wall_clock_ms = clock.wall_clock_ms().saturating_add_signed(settings.test_clock_offset_ms);
    let mut node = Node::new(core, clock.now())?;
    let metrics = Arc::new(Metrics::default());
    let durable = crate::driver::durable::start(&settings.storage, &mut node, clock.now(), &metrics)?;
    let listener = bind(settings.listen, settings.http.listen_backlog)
        .map_err(|source| RunError::Bind { addr: settings.listen, source })?;
    let stop = shutdown_signal()?;
    let snapshots = Arc::new(Snapshots::new(settings.http.max_unknown_watched));
    let (peers, peer_tasks) = Peers::start(&settings, Arc::clone(&metrics));
    let (driver, handle) = Driver::new(
        node,
        clock,
        settings.http.request_queue,
        Arc::clone(&peers),
        Arc::clone(&snapshots),
        Arc::clone(&metrics),
        &settings.http,
    );
    let console =
        Arc::new(crate::console::Console::new(settings.core.node_id.clone(), settings.http.history_size));
    let driver = driver.with_console(Arc::clone(&console));
    let driver = driver.with_durable(durable);
    let (stop_driver, driver_stopped) = watch::channel(false);
    let driver_task = tokio::spawn(driver.run(driver_stopped));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_timeout = settings.http.shutdown_timeout;
    let nacos_push = crate::compat::nacos::Push::start(
        &settings.nacos,
        settings.listen.ip(),
        Arc::clone(&snapshots),
        handle.clone(),
        settings.core.timings.clone(),
    );
    let nacos = crate::compat::nacos::Nacos::new(nacos_push, settings.core.limits.max_services);
    let state = Arc::new(AppState {
        nacos,
        node_id: settings.core.node_id.clone(),
        driver: handle,
        snapshots,
        metrics,
        peers: Arc::clone(&peers),
        shutdown: shutdown_rx,
        peer_verifier: crate::peer_auth::Verifier::default(),
        eureka: crate::compat::eureka::Eureka::new(&settings.eureka),
        console,
        settings,
    });
    tracing::info!(
        node = %state.node_id,
        listen = %listener.local_addr().map_or(state.settings.listen, |a| a),
        peers = ?state.settings.core.peers,
        "muster node started"
    );
    let graceful = accept(listener, &state, stop).await;
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            timeout_ms = shutdown_timeout.as_millis() as u64,
            "in-flight requests did not finish in time"
        );
    }
    let _ = stop_driver.send(true);
    let _ = driver_task.await;
    peers.close();
    let drain = async {
        for task in peer_tasks {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(PEER_DRAIN, drain).await.is_err() {
        tracing::warn!("some peers did not take the last sync before shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections until `stop` resolves; returns the watcher of the
/// connections still open.
async fn accept(
    listener: TcpListener,
    state: &Arc<AppState>,
    stop: impl std::future::Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let http = Arc::new(http);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Waiting watches are parked on a small path of their own; hyper
        // serves every other request (`parked.rs`).
        let conn = crate::parked::connection(
            Arc::clone(state),
            stream,
            peer,
            Arc::clone(&http),
            HEADER_READ_TIMEOUT,
            graceful.watcher(),
        );
        tokio::spawn(conn);
    }
    graceful
}

/// Binds the listen socket with an explicit backlog (the kernel caps it at
/// `net.core.somaxconn`): bursts of simultaneous connects then wait in the
/// queue instead of for a SYN retransmit.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As `std::net::TcpListener::bind` does on Unix: restarts reuse the port at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, RunError> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signal)?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received");
        }
    })
}
