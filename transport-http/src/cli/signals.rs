//! Ctrl-C and SIGTERM for the client subcommands.
//!
//! The listeners are installed before the first request, so a signal is
//! never lost (nor kills the process unhandled). A signal stops any command
//! at once, even while a request hangs, with exit code 130; a command that
//! cleans up on a signal (`register --keep` deregisters) takes the first
//! one itself, and a second one stops it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Exit code of a command stopped by a signal.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The signals received so far; clones share them.
#[derive(Clone, Debug)]
pub(super) struct Signals {
    received: watch::Receiver<u32>,
    /// A command handles the first signal itself.
    graceful: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the listeners on the current runtime.
    pub(super) fn install() -> std::io::Result<Signals> {
        let (tx, received) = watch::channel(0u32);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut int = signal(SignalKind::interrupt())?;
            let mut term = signal(SignalKind::terminate())?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals { received, graceful: Arc::new(AtomicBool::new(false)) })
    }

    /// From now on the command handles the first signal itself
    /// ([`Signals::next`]); a second one still stops it at once.
    pub(super) fn handle_first(&self) {
        self.graceful.store(true, Ordering::Release);
    }

    /// Waits for the next signal.
    pub(super) async fn next(&mut self) {
        if self.received.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits for the signal that must stop the command at once.
    pub(super) async fn stop(&mut self) {
        loop {
            self.next().await;
            let n = *self.received.borrow();
            if !self.graceful.load(Ordering::Acquire) || n >= 2 {
                return;
            }
        }
    }
}
