//! Active health checks of persistent instances, performed for the driver.
//!
//! The core decides which instance is due ([`Node::poll_health_check`]);
//! this module connects (TCP) or fetches a path (HTTP GET, 2xx or 3xx passes)
//! within a timeout, on its own tasks, at most [`CONCURRENCY`] at a time, and
//! hands each outcome back to the driver. A check that finds every slot busy
//! is skipped (and counted); the core asks again at the next interval.
//!
//! [`Node::poll_health_check`]: muster_core::Node::poll_health_check

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use muster_core::InstanceKey;
use muster_core::health::HealthCheck;
use muster_core::lease::CheckKind;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use crate::config::HttpSettings;
use crate::metrics::Metrics;

/// Most checks in flight at once.
pub(crate) const CONCURRENCY: usize = 64;

/// The outcome of one check.
#[derive(Debug)]
pub(crate) struct CheckOutcome {
    pub(crate) key: InstanceKey,
    pub(crate) passed: bool,
}

/// Starts checks and sends their outcomes to the driver.
pub(crate) struct Checker {
    outcomes: mpsc::Sender<CheckOutcome>,
    slots: Arc<Semaphore>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Whether checks run and where they may connect (see `probe.rs`).
    allow: Arc<HttpSettings>,
}

impl Checker {
    /// A checker and the receiver of its outcomes.
    pub(crate) fn new(
        settings: &HttpSettings,
        metrics: Arc<Metrics>,
    ) -> (Checker, mpsc::Receiver<CheckOutcome>) {
        let (tx, rx) = mpsc::channel(CONCURRENCY * 2);
        let checker = Checker {
            outcomes: tx,
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
            timeout: settings.health_check_timeout,
            metrics,
            allow: Arc::new(settings.clone()),
        };
        (checker, rx)
    }

    /// Starts one check on its own task.
    pub(crate) fn start(&self, check: HealthCheck) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.metrics.health_checks_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(instance = %check.key, "health check skipped: every slot is busy");
            return;
        };
        let (tx, timeout, metrics) = (self.outcomes.clone(), self.timeout, Arc::clone(&self.metrics));
        let allow = Arc::clone(&self.allow);
        tokio::spawn(async move {
            let passed =
                matches!(tokio::time::timeout(timeout, probe(&check, &allow, &metrics)).await, Ok(Ok(())));
            let counter = if passed { &metrics.health_checks_passed } else { &metrics.health_checks_failed };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(instance = %check.key, passed, "health check");
            drop(permit);
            let _ = tx.send(CheckOutcome { key: check.key, passed }).await;
        });
    }
}

/// Connects to the instance and, for an HTTP check, fetches its path. An
/// address outside the allowed ranges is never connected to: the check fails.
async fn probe(check: &HealthCheck, allow: &HttpSettings, metrics: &Metrics) -> Result<(), String> {
    let target = match check.key.ip.ip() {
        Some(ip) => std::net::SocketAddr::new(ip, check.key.port).to_string(),
        None => format!("{}:{}", check.key.ip, check.key.port),
    };
    let addrs: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host(&target).await.map_err(|e| e.to_string())?.collect();
    let addrs: Vec<std::net::SocketAddr> =
        addrs.into_iter().filter(|a| crate::probe::allowed(allow, a.ip())).collect();
    if addrs.is_empty() {
        metrics.guard.health_checks_refused.fetch_add(1, Ordering::Relaxed);
        return Err(format!("{target} is outside health_check_allow (or checks are off)"));
    }
    let stream = TcpStream::connect(&addrs[..]).await.map_err(|e| e.to_string())?;
    if check.kind != CheckKind::Http {
        return Ok(());
    }
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(check.path.as_str())
        .header(hyper::header::HOST, target.as_str())
        .header(hyper::header::USER_AGENT, "muster-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() { Ok(()) } else { Err(format!("status {status}")) }
}
