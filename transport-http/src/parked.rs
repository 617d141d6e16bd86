//! Parked long polls: a small hand-written HTTP/1.1 path for waiting watches.
//!
//! A long poll served by hyper holds, for as long as it waits, hyper's
//! connection state (a read buffer of 8 KiB that the request head also
//! keeps alive, a second one reserved to notice the client's EOF, an 8 KiB
//! header write buffer) and the Filter's future: about 18 KiB per watch.
//! Here, the first request head of every connection is read into a small
//! buffer first. A well-formed watch (`GET /v1/instances` with `checksum`
//! and `wait`, no body, authorised, node ready, under `max_long_polls`, its
//! view subscribed) is parked as a small future that holds only the socket,
//! the view receiver and its deadline, and is answered from the view's
//! shared encoded body; the next request head of that connection is read
//! the same way. Anything else (every other request, every refusal, every
//! malformed or oversized head) is handed to hyper with the bytes read so
//! far, so that hyper and the Filter answer it exactly as before and keep
//! the connection from then on.
//!
//! While parked, the socket is watched for EOF (a client that goes away
//! frees its watch at once, as under hyper), the header read timeout and
//! graceful shutdown apply as they do to hyper's connections, and each
//! answer is one access-log line and one count in `muster_requests_total`.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use muster_core::{Checksum, Selector, ServiceKey};
use tokio::net::TcpStream;

use crate::api::{self, Access, AppState, Handler, Query, WatchGuard};
use crate::compat::{self, Api};
use crate::filter::{self, REQUEST_ID};
use crate::snapshot::Published;

/// Longest request head read on this path; longer ones go to hyper.
const HEAD_MAX: usize = 2048;
/// Most headers a parked watch's head may have; more go to hyper.
const HEADERS_MAX: usize = 24;
/// Longest time an answer may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one accepted connection: parked watches here, anything else by
/// `http` (through the Filter) from the first request that is not one.
pub(crate) async fn connection(
    state: Arc<AppState>,
    stream: TcpStream,
    peer: SocketAddr,
    http: Arc<http1::Builder>,
    header_timeout: Duration,
    watcher: Watcher,
) {
    let mut buf = Vec::new();
    loop {
        let deadline = tokio::time::Instant::now() + header_timeout;
        match read_head(&stream, &mut buf, deadline).await {
            HeadRead::Closed => return,
            HeadRead::Complete if !*state.shutdown.borrow() => {}
            HeadRead::Complete | HeadRead::Other => break,
        }
        let Some(watch) = take_watch(&state, &buf) else { break };
        // Kept only in case hyper must answer it after all: the head's own
        // bytes, not the read buffer, stay while the watch waits.
        buf.shrink_to_fit();
        match serve_watch(&state, &stream, peer, watch).await {
            Ok(Served::Again) => buf = Vec::new(),
            Ok(Served::Handover) => break,
            Ok(Served::Close) | Err(_) => return,
        }
    }
    let io = Rewind { prefix: Bytes::from(buf), io: TokioIo::new(stream) };
    let service = service_fn(move |req| filter::handle(Arc::clone(&state), peer, req));
    if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// What reading a request head gave.
enum HeadRead {
    /// `buf` holds one complete head (and maybe more).
    Complete,
    /// `buf` holds bytes for hyper: too long, malformed, or cut by EOF.
    Other,
    /// Nothing came before EOF or the header timeout: close.
    Closed,
}

/// Reads until `buf` holds a complete request head, at most [`HEAD_MAX`]
/// bytes, by `deadline`.
async fn read_head(stream: &TcpStream, buf: &mut Vec<u8>, deadline: tokio::time::Instant) -> HeadRead {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            match httparse::Request::new(&mut headers).parse(buf) {
                Ok(httparse::Status::Complete(_)) => return HeadRead::Complete,
                Ok(httparse::Status::Partial) if buf.len() < HEAD_MAX => {}
                Ok(httparse::Status::Partial) | Err(_) => return HeadRead::Other,
            }
        }
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return HeadRead::Closed,
            Ok(Err(_)) => return HeadRead::Closed,
            Ok(Ok(())) => {}
        }
        let len = buf.len();
        buf.resize(HEAD_MAX, 0);
        match stream.try_read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return if len == 0 { HeadRead::Closed } else { HeadRead::Other };
            }
            Ok(n) => buf.truncate(len + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(len),
            Err(_) => return HeadRead::Closed,
        }
    }
}

/// A query or watch read from a request head, checked as the Filter and
/// the handler would check it.
struct Watch {
    key: muster_core::ServiceKey,
    selector: Selector,
    /// The checksum held and the (capped) wait; `None` for a plain query.
    watch: Option<(Checksum, Duration)>,
    /// A streamed watch: every change until the wait ends, on one answer.
    stream: bool,
    request_id: Box<str>,
    /// The client asked to close after the answer.
    close: bool,
    start: Instant,
}

/// The query in `head`, if it is one this path serves: exactly one complete
/// `GET /v1/instances` head (a watch with `checksum` and `wait`, or the
/// plain query a watcher starts with), HTTP/1.1, no body, no console or
/// upgrade headers, authorised, on a ready node. `None` leaves it to
/// hyper, which answers it (or refuses it) as always.
fn take_watch(state: &AppState, head: &[u8]) -> Option<Watch> {
    let start = Instant::now();
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(head).ok()? else { return None };
    if len != head.len() || req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let (path, query) = req.path?.split_once('?')?;
    if path != "/v1/instances" || compat::api_of(&state.settings, path) != Api::Native {
        return None;
    }
    let mut token = None;
    let mut request_id = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("authorization") {
            let (scheme, t) = h.value.split_at_checked(7)?;
            token = scheme.eq_ignore_ascii_case(b"bearer ").then_some(t);
        } else if name.eq_ignore_ascii_case(REQUEST_ID) {
            request_id = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            match h.value {
                v if v.eq_ignore_ascii_case(b"close") => close = true,
                v if v.eq_ignore_ascii_case(b"keep-alive") => {}
                _ => return None,
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return None;
            }
        } else if ["transfer-encoding", "expect", "upgrade", crate::console::CONSOLE_HEADER]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return None;
        }
    }
    let route = api::find(&hyper::Method::GET, path).ok()?;
    if route.route.handler != Handler::QueryInstances || route.route.access != Access::Read {
        return None;
    }
    filter::check_access(state, Access::Read, token).ok()?;
    if !state.snapshots.is_ready() {
        return None;
    }
    let q = Query::parse(Some(query), route.route.query).ok()?;
    let params = api::query_params(&q).ok()?;
    let watch = match (params.checksum, params.wait) {
        (Some(checksum), Some(wait)) => Some((checksum, wait.min(state.settings.http.max_wait))),
        (_, None) => None,
        (None, Some(_)) => return None,
    };
    Some(Watch {
        key: params.key,
        selector: params.selector,
        watch,
        stream: params.stream,
        request_id: filter::request_id_of(request_id).into(),
        close,
        start,
    })
}

/// How a served watch left the connection.
enum Served {
    /// Answered; read the next request head here.
    Again,
    /// Not taken after all (a limit): hyper answers the same head.
    Handover,
    /// Answered with `connection: close`, or the client went away: close.
    Close,
}

/// Answers one query, or subscribes, waits and answers one watch.
async fn serve_watch(
    state: &AppState,
    stream: &TcpStream,
    peer: SocketAddr,
    watch: Watch,
) -> io::Result<Served> {
    if let (Some((checksum, wait)), true) = (watch.watch, watch.stream) {
        return serve_stream(state, stream, peer, &watch, checksum, wait).await;
    }
    let published = match watch.watch {
        Some((checksum, wait)) => {
            let Some((guard, mut sub)) = hold(state, &watch.key).await else { return Ok(Served::Handover) };
            let deadline = tokio::time::Instant::now() + wait;
            let held = Held { selector: &watch.selector, checksum };
            let Some(published) = self::wait(state, stream, &mut sub, held, deadline).await else {
                return Ok(Served::Close);
            };
            drop(sub);
            drop(guard);
            published
        }
        None => match api::published(state, &watch.key, false).await {
            Ok(published) => published,
            Err(_) => return Ok(Served::Handover),
        },
    };
    // Woken by a change published while it waited (not by its deadline,
    // nor answered at once for a stale checksum).
    let woken = watch.watch.is_some_and(|(checksum, _)| {
        published.at > watch.start && published.view.select(&watch.selector).checksum() != checksum
    });
    let body = api::answer_bytes(&published, &watch.selector);
    let head = response_head(body.len(), &watch.request_id, watch.close);
    tokio::time::timeout(WRITE_TIMEOUT, write_all(stream, &head, &body))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    if woken {
        state.metrics.watch_wake.record(published.at.elapsed());
    }
    Ok(answered(state, peer, &watch))
}

/// Takes a long-poll slot and subscribes to `key`'s views. `None` when a
/// limit refuses it or its view cannot be loaded: hyper's path asks again
/// and answers the error.
async fn hold<'a>(state: &'a AppState, key: &ServiceKey) -> Option<(WatchGuard<'a>, api::Subscription<'a>)> {
    let guard = WatchGuard::acquire(state).ok()?;
    let rx = match state.snapshots.subscribe(key) {
        Some(rx) => rx,
        None => match state.driver.load_view(key.clone(), true).await {
            Ok((_, Some(rx))) => rx,
            _ => return None,
        },
    };
    Some((guard, api::Subscription::new(state, key.clone(), rx)))
}

/// Counts and logs an answered query or watch, as the Filter does.
fn answered(state: &AppState, peer: SocketAddr, watch: &Watch) -> Served {
    let route = api::find(&hyper::Method::GET, "/v1/instances").ok().map(|m| m.index);
    state.metrics.count_request(route, 200);
    tracing::info!(
        target: "muster::access",
        method = "GET",
        path = "/v1/instances",
        status = 200u16,
        duration_ms = %format_args!("{:.3}", watch.start.elapsed().as_secs_f64() * 1000.0),
        request_id = &*watch.request_id,
        peer = %peer,
    );
    if watch.close { Served::Close } else { Served::Again }
}

/// Serves a streamed watch: the head at once, then one chunk per changed
/// selection (the answer and a newline) written from the view's shared
/// body, then the last chunk when the wait ends or the node shuts down.
/// A client that reads slowly holds up only its own writes, and skips to
/// the newest view when it catches up.
async fn serve_stream(
    state: &AppState,
    stream: &TcpStream,
    peer: SocketAddr,
    watch: &Watch,
    mut checksum: Checksum,
    wait: Duration,
) -> io::Result<Served> {
    let Some((guard, mut sub)) = hold(state, &watch.key).await else { return Ok(Served::Handover) };
    let deadline = tokio::time::Instant::now() + wait;
    let head = stream_head(&watch.request_id, watch.close);
    timed(write_all(stream, &head, &[])).await?;
    loop {
        let held = Held { selector: &watch.selector, checksum };
        let Some(published) = self::wait(state, stream, &mut sub, held, deadline).await else {
            return Ok(Served::Close);
        };
        let current = published.view.select(&watch.selector).checksum();
        if current == checksum {
            // The wait ended, or the node shuts down.
            break;
        }
        let body = api::answer_bytes(&published, &watch.selector);
        // The chunk: its size in hex, the answer, a newline, CRLF.
        let size = format!("{:x}\r\n", body.len() + 1);
        timed(write_all_three(stream, size.as_bytes(), &body, b"\n\r\n")).await?;
        if published.at > watch.start {
            state.metrics.watch_wake.record(published.at.elapsed());
        }
        checksum = current;
        if *state.shutdown.borrow() {
            break;
        }
    }
    timed(write_all(stream, b"0\r\n\r\n", &[])).await?;
    drop(sub);
    drop(guard);
    let served = answered(state, peer, watch);
    Ok(if *state.shutdown.borrow() { Served::Close } else { served })
}

/// `f`, failed with `TimedOut` past [`WRITE_TIMEOUT`].
async fn timed(f: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, f).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// The status line and headers of a streamed watch's answer.
fn stream_head(request_id: &str, close: bool) -> Vec<u8> {
    head(api::STREAM_TYPE, b"transfer-encoding: chunked", request_id, close)
}

/// Waits until the watched selection's checksum differs from the client's,
/// the deadline passes or the node shuts down; the view to answer with, or
/// `None` when the client closed the connection meanwhile.
async fn wait(
    state: &AppState,
    stream: &TcpStream,
    sub: &mut api::Subscription<'_>,
    watch: Held<'_>,
    deadline: tokio::time::Instant,
) -> Option<Arc<Published>> {
    let views = sub.rx.as_mut()?;
    let mut shutdown = state.shutdown.clone();
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    // Bytes the client sent ahead (a pipelined request) stay in the socket
    // for the next head; after them, EOF is no longer watched.
    let mut watch_eof = true;
    loop {
        let published = Arc::clone(&views.borrow_and_update());
        if published.view.select(watch.selector).checksum() != watch.checksum || *shutdown.borrow_and_update()
        {
            return Some(published);
        }
        let mut probe = [0u8; 1];
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return Some(published);
                }
            }
            () = &mut sleep => return Some(published),
            _ = shutdown.changed() => return Some(published),
            peeked = stream.peek(&mut probe), if watch_eof => match peeked {
                Ok(0) | Err(_) => return None,
                Ok(_) => watch_eof = false,
            },
        }
    }
}

/// What a waiting watch compares each new view with.
#[derive(Clone, Copy)]
struct Held<'a> {
    selector: &'a Selector,
    checksum: Checksum,
}

/// The status line and headers of a 200 answer of `len` JSON bytes.
fn response_head(len: usize, request_id: &str, close: bool) -> Vec<u8> {
    head("application/json", format!("content-length: {len}").as_bytes(), request_id, close)
}

/// A 200 head: `content_type`, the request id, the body's `framing` header
/// (its length, or chunked), `connection: close` when `close`, the date.
fn head(content_type: &str, framing: &[u8], request_id: &str, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(160 + request_id.len());
    head.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: ");
    head.extend_from_slice(content_type.as_bytes());
    head.extend_from_slice(b"\r\nx-request-id: ");
    head.extend_from_slice(request_id.as_bytes());
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(framing);
    if close {
        head.extend_from_slice(b"\r\nconnection: close");
    }
    head.extend_from_slice(b"\r\ndate: ");
    head.extend_from_slice(&http_date());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// Writes `a`, `b` and `c`, in one vectored write when the socket takes it.
async fn write_all_three(stream: &TcpStream, a: &[u8], b: &[u8], c: &[u8]) -> io::Result<()> {
    let total = a.len() + b.len() + c.len();
    let mut written = 0;
    while written < total {
        // What is left of the three, without allocating.
        let mut slices = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        let mut n = 0;
        let mut skip = written;
        for p in [a, b, c] {
            if skip >= p.len() {
                skip -= p.len();
            } else {
                slices[n] = IoSlice::new(&p[skip..]);
                n += 1;
                skip = 0;
            }
        }
        match stream.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `head` then `body`, in one vectored write when the socket takes it.
async fn write_all(stream: &TcpStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    write_all_three(stream, head, body, &[]).await
}

/// The `date` header's value, formatted once per second.
fn http_date() -> [u8; 29] {
    static CACHE: Mutex<(u64, [u8; 29])> = Mutex::new((u64::MAX, [b' '; 29]));
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.0 != secs {
        let text = httpdate::fmt_http_date(now);
        let n = text.len().min(29);
        cache.1[..n].copy_from_slice(&text.as_bytes()[..n]);
        cache.0 = secs;
    }
    cache.1
}

/// A connection handed to hyper: the bytes already read come first.
struct Rewind {
    prefix: Bytes,
    io: TokioIo<TcpStream>,
}

impl Read for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Frees the read buffer it came from.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_head_names_its_length_request_id_and_date() {
        let head = String::from_utf8(response_head(42, "abc-1", false)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-length: 42\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: abc-1\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"), "{head}");
        assert!(head.contains(" GMT\r\n\r\n") && !head.contains("connection"), "{head}");
        let closing = String::from_utf8(response_head(0, "x", true)).unwrap();
        assert!(closing.contains("\r\nconnection: close\r\n"), "{closing}");
    }
}
