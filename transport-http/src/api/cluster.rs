//! `/v1/cluster/nodes` (clients) and `/cluster/v1/messages` (peers).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::{Response, StatusCode};
use muster_core::message::decode_within;
use muster_core::{NodeId, PeerState, Timestamp};
use serde::Serialize;

use super::AppState;
use super::instances::millis;
use crate::driver::PeerInput;
use crate::error::{ApiError, Body, bytes_response, json_response};
use crate::peer::{is_expensive, split_frames};

/// `GET /v1/cluster/nodes`
pub(super) async fn nodes(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Node<'a> {
        id: &'a str,
        state: PeerState,
        is_self: bool,
        /// Milliseconds since this node last heard from it; `null` if never.
        last_seen_ms: Option<u64>,
        /// Milliseconds since its state last changed.
        state_since_ms: u64,
        /// Its wall clock minus this node's, ms, from ping round trips; 0
        /// for this node, `null` before the first ack.
        clock_offset_ms: Option<i64>,
        /// The round trip of that estimate, ms: the offset is within half.
        rtt_ms: Option<u64>,
        /// `ok`, `skewed` (offset beyond `max_clock_skew` and its
        /// uncertainty; for this node: most peers are skewed against it) or
        /// `unknown` (no round trip yet).
        clock: &'static str,
    }
    #[derive(Serialize)]
    struct Nodes<'a> {
        #[serde(rename = "self")]
        me: &'a str,
        ready: bool,
        nodes: Vec<Node<'a>>,
    }
    let status = state.driver.status().await?;
    let age = |t: Timestamp| millis(status.now.saturating_since(t));
    let nodes = status
        .members
        .iter()
        .map(|m| Node {
            id: m.id.as_str(),
            state: m.state,
            is_self: m.is_self,
            last_seen_ms: if m.is_self { Some(0) } else { m.last_heard.map(age) },
            state_since_ms: age(m.since),
            clock_offset_ms: if m.is_self { Some(0) } else { m.clock.map(|c| c.offset_ms) },
            rtt_ms: if m.is_self { Some(0) } else { m.clock.map(|c| c.rtt_ms) },
            clock: match (m.clock_skewed, m.is_self || m.clock.is_some()) {
                (true, _) => "skewed",
                (false, true) => "ok",
                (false, false) => "unknown",
            },
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Nodes { me: state.node_id.as_str(), ready: status.ready, nodes }))
}

/// `POST /cluster/v1/messages`: a batch of frames from a peer whose
/// signature the Filter verified (`from`). Decoded here (every frame must be
/// from the signer), merged by the driver later; answers once the messages
/// are queued. Expensive messages beyond the peer's reply rate are dropped
/// (`peer.rs`).
pub(super) fn messages(
    state: &Arc<AppState>,
    body: &[u8],
    signer: &NodeId,
) -> Result<Response<Body>, ApiError> {
    let refuse = |message: String| {
        state.metrics.peer_requests_refused.fetch_add(1, Ordering::Relaxed);
        ApiError::new(StatusCode::BAD_REQUEST, "bad_frame", message)
    };
    state.metrics.sync_bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
    let frames = split_frames(body).map_err(refuse)?;
    let mut inputs = Vec::with_capacity(frames.len());
    // Record and beat lists longer than the core accepts are refused at
    // their length prefix, before anything behind it is decoded.
    let max_items = state.settings.core.limits.max_incoming_records.max(muster_core::BUCKETS);
    for frame in frames {
        let (from, msg) = decode_within(frame, max_items).map_err(|e| {
            if matches!(e, muster_core::MessageError::Checksum { .. }) {
                state.metrics.guard.peer_frames_corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %signer, "a peer frame failed its checksum; the request is refused");
            }
            refuse(e.to_string())
        })?;
        if &from != signer {
            return Err(refuse(format!(
                "a frame says it is from {:?} but the request is signed by {signer}",
                crate::error::echo(from.as_str())
            )));
        }
        inputs.push(PeerInput { from, msg });
    }
    for input in inputs {
        if is_expensive(&input.msg) && !state.peers.admit_expensive(&input.from) {
            state.metrics.guard.peer_messages_throttled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %input.from, kind = input.msg.kind(), "peer message over the reply rate dropped");
            continue;
        }
        state.driver.peer_message(input)?;
    }
    Ok(bytes_response(StatusCode::NO_CONTENT, "application/json", bytes::Bytes::new()))
}
