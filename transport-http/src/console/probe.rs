//! Readiness of the other nodes for the cluster page: `GET /health/ready`
//! on each peer, all at once, each bounded by [`PROBE_TIMEOUT`], the results
//! kept for [`PROBE_TTL`] so that open consoles do not multiply the probes.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use muster_core::NodeId;

/// Longest wait for one peer's answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a round of answers is reused.
const PROBE_TTL: Duration = Duration::from_secs(1);

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Each peer's answer: ready, loading, or `None` for no answer in time.
type Readiness = HashMap<NodeId, Option<bool>>;

/// The last round of probes.
#[derive(Debug, Default)]
pub(crate) struct Probes {
    last: Mutex<Option<(Instant, Readiness)>>,
}

impl Probes {
    /// Whether each peer answered `/health/ready` with 200 (`Some(true)`),
    /// otherwise (`Some(false)`: still loading), or not in time (`None`).
    pub(crate) async fn ready(&self, peers: &[NodeId]) -> Readiness {
        if let Some((at, map)) = &*self.last.lock().unwrap_or_else(PoisonError::into_inner) {
            if at.elapsed() < PROBE_TTL && peers.iter().all(|p| map.contains_key(p)) {
                return map.clone();
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for p in peers {
            let p = p.clone();
            set.spawn(async move {
                let ready = probe(&p).await;
                (p, ready)
            });
        }
        let mut map = Readiness::new();
        while let Some(joined) = set.join_next().await {
            if let Ok((p, ready)) = joined {
                map.insert(p, ready);
            }
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), map.clone()));
        map
    }
}

async fn probe(peer: &NodeId) -> Option<bool> {
    static CLIENT: OnceLock<ProbeClient> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PROBE_TIMEOUT));
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build(connector)
    });
    let uri = format!("http://{}/health/ready", peer.as_str()).parse::<hyper::Uri>().ok()?;
    match tokio::time::timeout(PROBE_TIMEOUT, client.get(uri)).await {
        Ok(Ok(r)) => Some(r.status() == hyper::StatusCode::OK),
        _ => None,
    }
}
