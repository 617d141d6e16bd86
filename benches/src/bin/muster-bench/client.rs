//! One HTTP/1.1 keep-alive connection per worker (hyper 1's low-level client
//! connection), driven inside the worker's own task: every request polls the
//! connection and the exchange together, so no second task and no
//! cross-task wake-up sits in each round trip.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no HTTP answer. The connection is unusable afterwards.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The TCP connection or the HTTP handshake failed.
    Connect(String),
    /// No complete answer within the timeout.
    Timeout,
    /// The server closed the connection.
    Closed,
    /// A protocol or I/O error.
    Http(String),
}

impl Failure {
    /// The label under which the failure is counted.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Http(_) => "io",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Timeout => write!(f, "timed out"),
            Failure::Closed => write!(f, "connection closed by the server"),
            Failure::Http(e) => write!(f, "{e}"),
        }
    }
}

/// An open connection to one node.
pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    conn: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    host: HeaderValue,
}

impl Conn {
    /// Connects (TCP_NODELAY) and performs the HTTP/1.1 handshake.
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Failure> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Failure::Connect(format!("{addr}: no answer within {timeout:?}")))?
            .map_err(|e| Failure::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|e| Failure::Connect(e.to_string()))?;
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| Failure::Connect(e.to_string()))?;
        Ok(Conn { sender, conn: Box::pin(conn), host })
    }

    /// Sends one request and reads the whole answer, within `timeout`.
    /// After an `Err` the connection must be dropped.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        uri: Uri,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let json = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.host.clone());
        if json {
            req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let Conn { sender, conn, .. } = self;
        let exchange = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        drive(conn.as_mut(), exchange, timeout).await
    }
}

impl Conn {
    /// Sends a streamed watch and calls `line` with each line of its answer
    /// as it arrives, until the answer ends; all within `timeout`. Returns
    /// the answer's status. After an `Err` the connection must be dropped.
    pub(crate) async fn stream(
        &mut self,
        uri: Uri,
        timeout: Duration,
        mut line: impl FnMut(&[u8]),
    ) -> Result<StatusCode, Failure> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.host.clone());
        let Conn { sender, conn, .. } = self;
        let exchange = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else { continue };
                let mut from = pending.len();
                pending.extend_from_slice(&data);
                while let Some(at) = pending[from..].iter().position(|&b| b == b'\n') {
                    line(&pending[..from + at]);
                    pending.drain(..=from + at);
                    from = 0;
                }
            }
            Ok::<_, hyper::Error>(status)
        };
        drive(conn.as_mut(), exchange, timeout).await
    }
}

/// Polls `exchange` and the connection that carries it together, within
/// `timeout`.
async fn drive<T>(
    conn: Pin<&mut Connection<TokioIo<TcpStream>, Full<Bytes>>>,
    exchange: impl std::future::Future<Output = Result<T, hyper::Error>>,
    timeout: Duration,
) -> Result<T, Failure> {
    let driven = async {
        tokio::select! {
            biased;
            r = exchange => r.map_err(|e| Failure::Http(e.to_string())),
            r = conn => Err(match r {
                Ok(()) => Failure::Closed,
                Err(e) => Failure::Http(e.to_string()),
            }),
        }
    };
    tokio::time::timeout(timeout, driven).await.map_err(|_| Failure::Timeout)?
}

/// Parses `HOST:PORT` and refuses anything but a loopback target: this tool
/// generates heavy load and must only ever point at the local machine.
pub(crate) fn loopback_addr(flag: &str, given: &str) -> Result<SocketAddr, String> {
    let refuse = |why: &str| {
        format!(
            "refusing {flag} {given}: {why}; muster-bench only targets loopback addresses \
             (127.0.0.0/8, [::1] or localhost), so run it on the node's own machine"
        )
    };
    if let Ok(addr) = given.parse::<SocketAddr>() {
        return if addr.ip().is_loopback() { Ok(addr) } else { Err(refuse("not a loopback address")) };
    }
    if let Some(port) = given.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| refuse("the port is not a number from 1 to 65535"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(refuse("expected IP:PORT or localhost:PORT (host names are not resolved)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_taken() {
        assert!(loopback_addr("--server", "127.0.0.1:8848").is_ok());
        assert!(loopback_addr("--server", "127.3.2.1:1").is_ok());
        assert!(loopback_addr("--server", "[::1]:8848").is_ok());
        assert_eq!(loopback_addr("--server", "localhost:9").unwrap(), SocketAddr::from(([127, 0, 0, 1], 9)));
        for bad in
            ["10.0.0.1:8848", "0.0.0.0:8848", "192.168.1.2:80", "example.com:80", "localhost", "[::]:1"]
        {
            let e = loopback_addr("--server", bad).unwrap_err();
            assert!(e.contains("loopback"), "{e}");
        }
    }
}
