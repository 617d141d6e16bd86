//! The peer transport: frames encoded by the core travel in
//! `POST /cluster/v1/messages` requests over a pooled hyper client.
//!
//! Each peer has a bounded queue and one sender task. The driver only ever
//! pushes into a queue (never waits), so a slow or dead peer cannot block
//! clients or the node: when its queue is full the oldest frames are dropped
//! (anti-entropy repairs whatever they carried). The sender posts batches of
//! frames, retries a failed batch with exponential backoff a few times, then
//! drops it.
//!
//! A request body is a sequence of frames, each prefixed by its length as a
//! little-endian `u32`; it is signed with an HMAC keyed by the cluster secret
//! (`peer_auth.rs`), and the secret itself is never sent.
//!
//! Each queue is bounded in frames (`peer_queue`) and in bytes
//! (`peer_queue_bytes`). Incoming messages whose answer costs the node more
//! than they cost the sender (a digest root or bucket list answered with
//! buckets or records, a snapshot page request) are admitted at most
//! `peer_replies_per_s` per second per peer (a token bucket as deep as one
//! second of that rate); the rest are dropped and counted, and anti-entropy
//! asks again later. So one request, and one peer, can make the node send
//! at most a bounded multiple of what it sends.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use muster_core::{NodeId, PeerMessage};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Secret, Settings};
use crate::metrics::Metrics;

/// The path of the peer API.
pub(crate) const PEER_PATH: &str = "/cluster/v1/messages";
/// The content type of a batch of frames.
pub(crate) const FRAMES_CONTENT_TYPE: &str = "application/x-muster-frames";
/// Most frames in one request.
const BATCH_FRAMES_MAX: usize = 512;
/// Most bytes in one request (a larger single frame goes alone).
const BATCH_BYTES_MAX: usize = 1 << 20;
/// Attempts per batch before it is dropped.
const ATTEMPTS_MAX: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Most frames accepted in one incoming request.
pub(crate) const INCOMING_FRAMES_MAX: usize = 4096;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The queues and senders of every peer.
#[derive(Debug)]
pub(crate) struct Peers {
    links: HashMap<NodeId, Arc<Link>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Link {
    id: NodeId,
    queue: Mutex<Queue>,
    notify: Notify,
    capacity: usize,
    /// Most bytes of frames queued.
    capacity_bytes: usize,
    closed: AtomicBool,
    /// Admits the expensive messages this peer sends us.
    replies: Mutex<TokenBucket>,
}

/// Frames waiting for one peer, and their bytes.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Queue {
    fn pop_front(&mut self) -> Option<Bytes> {
        let f = self.frames.pop_front()?;
        self.bytes -= f.len();
        Some(f)
    }

    fn push_back(&mut self, f: Bytes) {
        self.bytes += f.len();
        self.frames.push_back(f);
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` banked.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket { rate: f64::from(rate), tokens: f64::from(rate), at: now }
    }

    /// Takes a token if one is there.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether answering `msg` costs the node more than receiving it did.
pub(crate) fn is_expensive(msg: &PeerMessage) -> bool {
    match msg {
        PeerMessage::DigestRoot { .. }
        | PeerMessage::DigestBuckets { .. }
        | PeerMessage::DigestLeaves { .. }
        | PeerMessage::SnapshotRequest { .. } => true,
        PeerMessage::BucketRecords { reply, .. } | PeerMessage::LeafRecords { reply, .. } => *reply,
        // No `_` arm: a new message must be classified here.
        PeerMessage::Ping { .. }
        | PeerMessage::Ack { .. }
        | PeerMessage::Delta { .. }
        | PeerMessage::Beats { .. }
        | PeerMessage::Snapshot { .. } => false,
    }
}

impl Link {
    /// An empty, open link to `id`: at most `capacity` frames and
    /// `capacity_bytes` bytes queued, expensive requests admitted at
    /// `replies_per_s`.
    fn new(id: NodeId, capacity: usize, capacity_bytes: usize, replies_per_s: u32) -> Link {
        Link {
            id,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            capacity,
            capacity_bytes,
            closed: AtomicBool::new(false),
            replies: Mutex::new(TokenBucket::new(replies_per_s, Instant::now())),
        }
    }

    /// The next batch; `None` once closed and empty.
    async fn next_batch(&self) -> Option<(Bytes, usize)> {
        loop {
            let notified = self.notify.notified();
            if let Some(batch) = self.take_batch() {
                return Some(batch);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    fn take_batch(&self) -> Option<(Bytes, usize)> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let first = q.pop_front()?;
        let mut body = BytesMut::with_capacity(first.len() + 4);
        put_frame(&mut body, &first);
        let mut n = 1;
        while n < BATCH_FRAMES_MAX {
            match q.frames.front() {
                Some(f) if body.len() + f.len() + 4 <= BATCH_BYTES_MAX => {
                    if let Some(f) = q.pop_front() {
                        put_frame(&mut body, &f);
                        n += 1;
                    }
                }
                _ => break,
            }
        }
        Some((body.freeze(), n))
    }

    fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).frames.len()
    }
}

fn put_frame(body: &mut BytesMut, frame: &[u8]) {
    body.put_u32_le(u32::try_from(frame.len()).unwrap_or(u32::MAX));
    body.put_slice(frame);
}

/// Splits a request body into its frames.
pub(crate) fn split_frames(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        if frames.len() >= INCOMING_FRAMES_MAX {
            return Err(format!("more than {INCOMING_FRAMES_MAX} frames in one request"));
        }
        let Some((len, rest)) = body.split_first_chunk::<4>() else {
            return Err("truncated frame length".to_owned());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(format!("frame of {len} bytes but {} left in the body", rest.len()));
        }
        let (frame, rest) = rest.split_at(len);
        frames.push(frame);
        body = rest;
    }
    Ok(frames)
}

impl Peers {
    /// Queues and sender tasks for `settings`' peers.
    pub(crate) fn start(settings: &Settings, metrics: Arc<Metrics>) -> (Arc<Peers>, Vec<JoinHandle<()>>) {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.http.peer_timeout));
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        let mut links = HashMap::new();
        let mut tasks = Vec::new();
        for id in &settings.core.peers {
            let link = Arc::new(Link::new(
                id.clone(),
                settings.http.peer_queue,
                settings.http.peer_queue_bytes,
                settings.http.peer_replies_per_s,
            ));
            let sender = Sender {
                link: Arc::clone(&link),
                client: client.clone(),
                me: settings.core.node_id.clone(),
                secret: settings.cluster_secret.clone(),
                timeout: settings.http.peer_timeout,
                metrics: Arc::clone(&metrics),
            };
            tasks.push(tokio::spawn(sender.run()));
            links.insert(id.clone(), link);
        }
        (Arc::new(Peers { links, metrics }), tasks)
    }

    /// Queues a frame for a peer; never waits. Drops the oldest frames
    /// while the queue is full in frames or bytes (a frame larger than the
    /// byte bound goes alone).
    pub(crate) fn send(&self, to: &NodeId, frame: Vec<u8>) {
        let Some(link) = self.links.get(to) else {
            tracing::debug!(peer = %to, "frame for a node that is not a peer dropped");
            return;
        };
        {
            let mut q = link.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while !q.frames.is_empty()
                && (q.frames.len() >= link.capacity || q.bytes + frame.len() > link.capacity_bytes)
            {
                q.pop_front();
                self.metrics.peer_frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(Bytes::from(frame));
        }
        link.notify.notify_one();
    }

    /// Whether an expensive message from `from` may be answered now (see the
    /// module doc); messages from nodes that are not peers are not.
    pub(crate) fn admit_expensive(&self, from: &NodeId) -> bool {
        let Some(link) = self.links.get(from) else { return false };
        link.replies.lock().unwrap_or_else(PoisonError::into_inner).take(Instant::now())
    }

    /// Frames waiting per peer.
    pub(crate) fn queue_depths(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> =
            self.links.values().map(|l| (l.id.to_string(), l.len())).collect();
        out.sort();
        out
    }

    /// Lets the senders send what is queued (one attempt per batch) and stop.
    pub(crate) fn close(&self) {
        for link in self.links.values() {
            link.closed.store(true, Ordering::Release);
            link.notify.notify_one();
        }
    }
}

struct Sender {
    link: Arc<Link>,
    client: HttpClient,
    /// This node's id, signed into every request.
    me: NodeId,
    secret: Option<Secret>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Sender {
    async fn run(self) {
        let uri = match Uri::try_from(format!("http://{}{PEER_PATH}", self.link.id)) {
            Ok(uri) => uri,
            Err(e) => {
                tracing::error!(peer = %self.link.id, error = %e, "peer id is not a usable address; nothing is sent to it");
                return;
            }
        };
        let mut backoff = BACKOFF_MIN;
        while let Some((body, frames)) = self.link.next_batch().await {
            let mut attempts = 0;
            loop {
                attempts += 1;
                match self.post(&uri, body.clone()).await {
                    Ok(()) => {
                        self.metrics.sync_bytes_out.fetch_add(body.len() as u64, Ordering::Relaxed);
                        backoff = BACKOFF_MIN;
                        break;
                    }
                    Err(e) => {
                        self.metrics.peer_send_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %self.link.id, error = %e, attempts, "peer request failed");
                        let closed = self.link.closed.load(Ordering::Acquire);
                        if attempts >= ATTEMPTS_MAX || closed {
                            self.metrics.peer_frames_dropped.fetch_add(frames as u64, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }

    async fn post(&self, uri: &Uri, body: Bytes) -> Result<(), String> {
        let mut req = hyper::Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        let headers = req.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(FRAMES_CONTENT_TYPE));
        if let Some(secret) = &self.secret {
            // Signed afresh on every attempt: a retry is a new request.
            crate::peer_auth::sign(headers, secret, &self.me, &body)?;
        }
        let send = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read the (small) body so that the connection goes back to the pool.
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))
            }
        };
        tokio::time::timeout(self.timeout, send).await.map_err(|_| "timed out".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peers with one link to 127.0.0.1:1 holding at most `frames` frames and `bytes` bytes.
    fn one_link(frames: usize, bytes: usize) -> (NodeId, Arc<Link>, Peers) {
        let id = NodeId::parse("127.0.0.1:1").unwrap();
        let link = Arc::new(Link::new(id.clone(), frames, bytes, 1));
        let links = [(id.clone(), Arc::clone(&link))].into_iter().collect();
        (id, link, Peers { links, metrics: Arc::new(Metrics::default()) })
    }

    #[test]
    fn frames_round_trip_through_a_batch() {
        let mut body = BytesMut::new();
        put_frame(&mut body, b"abc");
        put_frame(&mut body, b"");
        put_frame(&mut body, b"de");
        let frames = split_frames(&body).unwrap();
        assert_eq!(frames, vec![&b"abc"[..], &b""[..], &b"de"[..]]);
    }

    #[test]
    fn truncated_batches_are_refused() {
        let mut body = BytesMut::new();
        put_frame(&mut body, b"abcdef");
        assert!(split_frames(&body[..body.len() - 1]).is_err());
        assert!(split_frames(&body[..2]).is_err());
        assert!(split_frames(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_full_queue_drops_its_oldest_frame() {
        let (id, link, peers) = one_link(2, 1 << 20);
        for f in [b"1", b"2", b"3"] {
            peers.send(&id, f.to_vec());
        }
        let (body, n) = link.take_batch().unwrap();
        assert_eq!(n, 2);
        assert_eq!(split_frames(&body).unwrap(), vec![&b"2"[..], &b"3"[..]]);
        assert_eq!(peers.metrics.peer_frames_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_queue_full_in_bytes_drops_its_oldest_frames_but_keeps_the_new_one() {
        let (id, link, peers) = one_link(100, 10);
        peers.send(&id, vec![1; 4]);
        peers.send(&id, vec![2; 4]);
        peers.send(&id, vec![3; 4]);
        assert_eq!(link.queue.lock().unwrap().bytes, 8);
        peers.send(&id, vec![4; 64]);
        let (body, n) = link.take_batch().unwrap();
        assert_eq!((n, body.len()), (1, 68), "only the big frame is left");
        assert_eq!(peers.metrics.peer_frames_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(link.queue.lock().unwrap().bytes, 0);
    }

    #[test]
    fn a_token_bucket_admits_its_rate_per_second_and_no_more() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        assert_eq!((0..5).filter(|_| b.take(t0)).count(), 3);
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert!(b.take(t0 + Duration::from_millis(400)));
        assert_eq!((0..10).filter(|_| b.take(t0 + Duration::from_secs(60))).count(), 3);
    }
}
