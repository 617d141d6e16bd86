//! The ConsoleAPI: what the console needs that the OpenAPI lacks, under
//! `/console/api/` (console-only, documented in `docs/openapi.yaml` with the
//! tag `console`). Instances are read from the same published snapshots as
//! `GET /v1/instances`; the per-instance details only the node holds (time
//! since the last heartbeat, the node responsible for expiry) and the
//! cluster view are read in the driver between inputs, with a short
//! deadline, and the answer says when they were not available in time.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Response, StatusCode};
use muster_core::{Field, Host, InstanceKey, Name, NodeId, PeerState, Selector, ServiceKey, Timestamp};
use serde::Serialize;

use super::history::HistoryFilter;
use crate::api::{AppState, Query, WatchGuard, parse_duration, published};
use crate::error::{ApiError, Body, json_response};

/// A ConsoleAPI operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Session,
    CheckWrite,
    Instances,
    Find,
    History,
    Cluster,
    Changes,
}

/// Query parameters of each operation (for the route table).
pub(crate) const INSTANCES_Q: &[&str] = &[
    "namespace",
    "group",
    "service",
    "healthy",
    "enabled",
    "ephemeral",
    "cluster",
    "metadata",
    "search",
    "page",
    "page_size",
];
pub(crate) const FIND_Q: &[&str] = &["ip", "port"];
pub(crate) const HISTORY_Q: &[&str] =
    &["namespace", "group", "service", "ip", "port", "nodes_only", "before", "limit"];
pub(crate) const CHANGES_Q: &[&str] = &["since", "wait"];

/// Longest wait for the driver's part of an answer.
const DETAILS_DEADLINE: Duration = Duration::from_millis(300);
/// Most instances a search by host returns.
const FIND_MAX: usize = 500;
/// Most history entries per answer.
const HISTORY_MAX: usize = 1000;
/// Longest wait of a change long poll.
const CHANGES_WAIT_MAX: Duration = Duration::from_secs(60);

/// Runs a ConsoleAPI operation.
pub(crate) async fn dispatch(state: &Arc<AppState>, op: Op, q: &Query) -> Result<Response<Body>, ApiError> {
    match op {
        Op::Session => Ok(session(state)),
        Op::CheckWrite => Ok(json_response(StatusCode::OK, &serde_json::json!({ "write": true }))),
        Op::Instances => instances(state, q).await,
        Op::Find => find(state, q).await,
        Op::History => history(state, q),
        Op::Cluster => cluster(state).await,
        Op::Changes => changes(state, q).await,
    }
}

/// `GET /console/api/session`: who this node is and what it protects. A
/// console with a token that cannot read gets 401 here and shows nothing.
fn session(state: &Arc<AppState>) -> Response<Body> {
    #[derive(Serialize)]
    struct Session<'a> {
        node: &'a str,
        ready: bool,
        read_protected: bool,
        write_protected: bool,
        history_size: usize,
        version: &'static str,
    }
    let s = &state.settings;
    json_response(
        StatusCode::OK,
        &Session {
            node: state.node_id.as_str(),
            ready: state.snapshots.is_ready(),
            read_protected: s.read_token.is_some(),
            write_protected: s.write_token.is_some(),
            history_size: state.console.capacity(),
            version: env!("CARGO_PKG_VERSION"),
        },
    )
}

#[derive(Serialize)]
struct InstanceJson<'a> {
    instance_id: &'a str,
    cluster: &'a str,
    ip: String,
    port: u16,
    weight: f64,
    healthy: bool,
    enabled: bool,
    ephemeral: bool,
    metadata: &'a muster_core::Metadata,
    /// Milliseconds since this node last had evidence of life; `null` if unknown.
    beat_age_ms: Option<u64>,
    /// The node responsible for its expiry and health checks.
    responsible: Option<String>,
}

/// Server-side instance filters.
struct Filters {
    healthy: Option<bool>,
    enabled: Option<bool>,
    ephemeral: Option<bool>,
    cluster: Option<Name>,
    metadata: Option<(String, Option<String>)>,
    search: Option<String>,
}

impl Filters {
    fn parse(q: &Query) -> Result<Filters, ApiError> {
        let cluster = q.get("cluster").filter(|c| !c.is_empty()).map(|c| Name::parse(Field::Cluster, c));
        let metadata = q.get("metadata").filter(|m| !m.is_empty()).map(|m| match m.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (m.to_owned(), None),
        });
        if metadata.as_ref().is_some_and(|(k, _)| k.is_empty()) {
            return Err(ApiError::invalid("metadata", "must be key=value or key, with a non-empty key"));
        }
        Ok(Filters {
            healthy: q.bool("healthy")?,
            enabled: q.bool("enabled")?,
            ephemeral: q.bool("ephemeral")?,
            cluster: cluster.transpose()?,
            metadata,
            search: q.get("search").filter(|s| !s.is_empty()).map(str::to_owned),
        })
    }

    fn keep(&self, i: &muster_core::InstanceView) -> bool {
        self.healthy.is_none_or(|h| h == i.healthy)
            && self.enabled.is_none_or(|e| e == i.enabled)
            && self.ephemeral.is_none_or(|e| e == i.ephemeral)
            && self.cluster.as_ref().is_none_or(|c| *c == i.cluster)
            && self.metadata.as_ref().is_none_or(|(k, v)| match (i.metadata.get(k), v) {
                (Some(have), Some(want)) => have == want.as_str(),
                (Some(_), None) => true,
                (None, _) => false,
            })
            && self.search.as_ref().is_none_or(|s| i.instance_id.contains(s.as_str()))
    }
}

/// `GET /console/api/instances`: one service's instances with filters,
/// paging and this node's details.
async fn instances(state: &Arc<AppState>, q: &Query) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Answer<'a> {
        namespace: &'a str,
        group: &'a str,
        service: &'a str,
        known: bool,
        protect_threshold: f64,
        protect_threshold_reached: bool,
        metadata: &'a muster_core::Metadata,
        checksum: String,
        total: usize,
        healthy: usize,
        matched: usize,
        page: usize,
        page_size: usize,
        /// Whether `beat_age_ms` and `responsible` were read in time.
        details: bool,
        instances: Vec<InstanceJson<'a>>,
    }
    let key = q.service_key(None)?;
    let filters = Filters::parse(q)?;
    let page = positive(q, "page")?.unwrap_or(1);
    let max = state.settings.core.limits.max_page_size;
    let page_size = positive(q, "page_size")?.unwrap_or(100).min(max);
    let published = published(state, &key, false).await?;
    let view = &published.view;
    let all = view.select(&Selector::default());
    let matched: Vec<&muster_core::InstanceView> =
        view.instances.iter().map(|i| &**i).filter(|i| filters.keep(i)).collect();
    let shown: Vec<&muster_core::InstanceView> =
        matched.iter().skip((page - 1).saturating_mul(page_size)).take(page_size).copied().collect();
    let keys: Vec<InstanceKey> = shown
        .iter()
        .map(|i| InstanceKey {
            service: key.clone(),
            cluster: i.cluster.clone(),
            ip: i.ip.clone(),
            port: i.port,
        })
        .collect();
    let details = tokio::time::timeout(
        DETAILS_DEADLINE,
        state.driver.inspect(move |node, now| {
            keys.iter()
                .map(|k| {
                    let age = node.last_beat(k).map(|t| millis(now.saturating_since(t)));
                    (age, node.responsible_for(k))
                })
                .collect::<Vec<(Option<u64>, NodeId)>>()
        }),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let instances = shown
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let d = details.as_ref().and_then(|d| d.get(n));
            InstanceJson {
                instance_id: &i.instance_id,
                cluster: i.cluster.as_str(),
                ip: i.ip.to_string(),
                port: i.port,
                weight: i.weight,
                healthy: i.healthy,
                enabled: i.enabled,
                ephemeral: i.ephemeral,
                metadata: &i.metadata,
                beat_age_ms: d.and_then(|d| d.0),
                responsible: d.map(|d| d.1.to_string()),
            }
        })
        .collect();
    let answer = Answer {
        namespace: key.namespace.as_str(),
        group: key.group.as_str(),
        service: key.service.as_str(),
        known: view.known,
        protect_threshold: view.protect_threshold,
        protect_threshold_reached: all.protect_threshold_reached(),
        metadata: &view.metadata,
        checksum: all.checksum().to_string(),
        total: view.instances.len(),
        healthy: view.instances.iter().filter(|i| i.healthy).count(),
        matched: matched.len(),
        page,
        page_size,
        details: details.is_some(),
        instances,
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /console/api/find?ip=&port=`: live instances on a host in every
/// namespace and service (`ip` may be `ip:port`).
async fn find(state: &Arc<AppState>, q: &Query) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Found {
        namespace: String,
        group: String,
        service: String,
        cluster: String,
        ip: String,
        port: u16,
    }
    #[derive(Serialize)]
    struct Answer {
        instances: Vec<Found>,
        truncated: bool,
    }
    let raw = q.require("ip")?.trim();
    let (ip, port) = split_host_port(raw);
    let host = Host::parse(ip).map_err(|e| ApiError::invalid("ip", e.message))?;
    let port = match (port, q.int("port")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("port", "given both in ip (ip:port) and as port"));
        }
        (Some(p), None) => Some(p.parse::<i64>().map_err(|_| ApiError::invalid("ip", "bad port after ':'"))?),
        (None, p) => p,
    };
    let port = port.map(muster_core::model::parse_port).transpose()?;
    let mut keys = state.driver.inspect(move |node, _| node.instances_on(&host, port, FIND_MAX + 1)).await?;
    let truncated = keys.len() > FIND_MAX;
    keys.truncate(FIND_MAX);
    let instances = keys
        .into_iter()
        .map(|k| Found {
            namespace: k.service.namespace.to_string(),
            group: k.service.group.to_string(),
            service: k.service.service.to_string(),
            cluster: k.cluster.to_string(),
            ip: k.ip.to_string(),
            port: k.port,
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Answer { instances, truncated }))
}

/// `a.b.c.d:p`, `[v6]:p`, or a host alone (a bare IPv6 address has colons
/// of its own).
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

/// `GET /console/api/history`: this node's ring, newest first.
fn history(state: &Arc<AppState>, q: &Query) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Answer {
        node: String,
        capacity: usize,
        oldest_seq: Option<u64>,
        entries: Vec<super::history::EntryJson>,
    }
    let service = match q.get("service") {
        Some(s) => Some(q.service_key(Some(s))?),
        None => None,
    };
    let ip = match q.get("ip") {
        Some(ip) => Some(Host::parse(ip).map_err(|e| ApiError::invalid("ip", e.message))?.to_string()),
        None => None,
    };
    let port = q.int("port")?.map(muster_core::model::parse_port).transpose()?;
    let limit = positive(q, "limit")?.unwrap_or(200).min(HISTORY_MAX);
    let before = match q.int("before")? {
        Some(b) if b < 0 => return Err(ApiError::invalid("before", "must be 0 or more")),
        b => b.map(|b| b as u64),
    };
    let scope = |k: &ServiceKey| {
        (Some(k.namespace.to_string()), Some(k.group.to_string()), Some(k.service.to_string()))
    };
    let (namespace, group, service) = service.as_ref().map_or((None, None, None), scope);
    let filter = HistoryFilter {
        namespace,
        group,
        service,
        ip,
        port,
        nodes_only: q.bool("nodes_only")?.unwrap_or(false),
        before,
        limit,
    };
    let (entries, oldest_seq) = state.console.read(&filter);
    let answer =
        Answer { node: state.node_id.to_string(), capacity: state.console.capacity(), oldest_seq, entries };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /console/api/cluster`: every node as this one sees it, with whether
/// its registry agreed with this node's at the last digest exchange, and
/// the brake.
async fn cluster(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct NodeJson {
        id: String,
        state: PeerState,
        is_self: bool,
        last_seen_ms: Option<u64>,
        state_since_ms: u64,
        /// Whether it answers `/health/ready` with 200 (probed; `null` if unknown).
        ready: Option<bool>,
        /// `null` before the first digest exchange with it.
        digest_matched: Option<bool>,
        digest_age_ms: Option<u64>,
    }
    #[derive(Serialize)]
    struct Answer {
        #[serde(rename = "self")]
        me: String,
        ready: bool,
        brake_engaged: bool,
        instances: usize,
        instance_events_dropped: u64,
        nodes: Vec<NodeJson>,
    }
    let answer = state
        .driver
        .inspect(|node, now| {
            let age = |t: Timestamp| millis(now.saturating_since(t));
            let nodes = node
                .members()
                .into_iter()
                .map(|m| {
                    let digest = node.peer_digest(&m.id);
                    NodeJson {
                        id: m.id.to_string(),
                        state: m.state,
                        is_self: m.is_self,
                        last_seen_ms: if m.is_self { Some(0) } else { m.last_heard.map(age) },
                        state_since_ms: age(m.since),
                        ready: m.is_self.then(|| node.is_ready()),
                        digest_matched: if m.is_self { Some(true) } else { digest.map(|d| d.matched) },
                        digest_age_ms: digest.map(|d| age(d.at)),
                    }
                })
                .collect();
            let stats = node.stats();
            Answer {
                me: node.id().to_string(),
                ready: node.is_ready(),
                brake_engaged: node.brake_engaged(),
                instances: stats.registry.instances,
                instance_events_dropped: stats.instance_events_dropped,
                nodes,
            }
        })
        .await?;
    let mut answer = answer;
    let peers: Vec<NodeId> =
        answer.nodes.iter().filter(|n| !n.is_self).filter_map(|n| NodeId::parse(&n.id).ok()).collect();
    let ready = state.console.probes.ready(&peers).await;
    for n in answer.nodes.iter_mut().filter(|n| !n.is_self) {
        n.ready = NodeId::parse(&n.id).ok().and_then(|id| ready.get(&id).copied().flatten());
    }
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /console/api/changes?since=N&wait=30s`: answers `{seq}` as soon as
/// anything visible changed on this node after `since` (instances,
/// services, peers, brake), or after `wait`. Counts as a watch.
async fn changes(state: &Arc<AppState>, q: &Query) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Answer {
        seq: u64,
    }
    let since = match q.int("since")? {
        Some(s) if s < 0 => return Err(ApiError::invalid("since", "must be 0 or more")),
        s => s.map(|s| s as u64),
    };
    let wait = q.get("wait").map(|w| parse_duration("wait", w)).transpose()?.unwrap_or(Duration::ZERO);
    let wait = wait.min(state.settings.http.max_wait).min(CHANGES_WAIT_MAX);
    let mut rx = state.console.subscribe();
    let current = *rx.borrow_and_update();
    if since != Some(current) || wait.is_zero() {
        return Ok(json_response(StatusCode::OK, &Answer { seq: current }));
    }
    let _guard = WatchGuard::acquire(state)?;
    let mut shutdown = state.shutdown.clone();
    let _ = tokio::time::timeout(wait, async {
        tokio::select! {
            _ = rx.changed() => {}
            _ = shutdown.changed() => {}
        }
    })
    .await;
    let seq = *rx.borrow();
    Ok(json_response(StatusCode::OK, &Answer { seq }))
}

fn positive(q: &Query, name: &str) -> Result<Option<usize>, ApiError> {
    match q.int(name)? {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Some(n) => Err(ApiError::invalid(name, format!("must be 1 or more, got {n}"))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_from_their_ports_in_every_spelling() {
        assert_eq!(split_host_port("10.0.0.1:80"), ("10.0.0.1", Some("80")));
        assert_eq!(split_host_port("10.0.0.1"), ("10.0.0.1", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some("80")));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("db.example:5432"), ("db.example", Some("5432")));
    }
}
