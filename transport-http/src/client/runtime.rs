//! The SDK's own background runtime.
//!
//! Every request, heartbeat round and watch of every [`Client`](super::Client)
//! runs on one process-wide tokio runtime that the SDK starts on first use
//! (one thread, `muster-sdk`) and never stops. A caller's future only
//! waits for the result, so a client built and used in one runtime keeps
//! working in another (two `#[tokio::test]`s sharing a client, a runtime
//! that was shut down, or no tokio runtime at all): its connections, timers
//! and tasks never belong to a runtime that may go away.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use super::error::Error;

static RUNTIME: OnceLock<Result<Handle, String>> = OnceLock::new();

/// The background runtime's handle, starting it on first use.
pub(crate) fn handle() -> Result<Handle, Error> {
    match RUNTIME.get_or_init(start) {
        Ok(handle) => Ok(handle.clone()),
        Err(e) => Err(Error::NoRuntime { reason: e.clone() }),
    }
}

/// A current-thread runtime driven forever by its own thread.
fn start() -> Result<Handle, String> {
    let rt: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the SDK's runtime: {e}"))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("muster-sdk".to_owned())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(|e| format!("cannot start the SDK's thread: {e}"))?;
    Ok(handle)
}

/// Runs `fut` on the background runtime and waits for it; dropping the
/// returned future cancels `fut`.
pub(crate) async fn run<F>(fut: F) -> Result<F::Output, Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = Abortable(handle()?.spawn(fut));
    task.await.map_err(|e| Error::NoRuntime { reason: format!("the SDK's background task failed: {e}") })
}

/// A task that is aborted when its handle is dropped.
struct Abortable<T>(JoinHandle<T>);

impl<T> Future for Abortable<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Abortable<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
