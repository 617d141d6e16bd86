//! The console: the web app every node serves at `/console/` (`/`
//! redirects there), its ConsoleAPI under `/console/api/`, and this node's
//! history.
//!
//! The pages are plain HTML, CSS and ES modules in `transport-http/console/`,
//! embedded at build time ([`assets`]). They use the OpenAPI for reads and
//! every write, and the ConsoleAPI ([`api`]) for what the OpenAPI lacks:
//! filtered instance pages with this node's details, a search by host, the
//! history, the cluster view and a change signal to long-poll on. Writes the
//! console sends carry the header `x-muster-console`, so that the history
//! says "console" instead of "client" for them (a label, not a permission:
//! the tokens decide what a request may do).

mod api;
mod assets;
mod history;
mod probe;

use std::future::Future;

pub(crate) use self::api::{CHANGES_Q, FIND_Q, HISTORY_Q, INSTANCES_Q, Op, dispatch};
pub(crate) use self::assets::serve as asset;
pub(crate) use self::history::Console;
pub(crate) use self::probe::Probes;

/// The header the console's writes carry.
pub(crate) const CONSOLE_HEADER: &str = "x-muster-console";

tokio::task_local! {
    static FROM_CONSOLE: ();
}

/// Whether the request being served came from the console.
pub(crate) fn from_console() -> bool {
    FROM_CONSOLE.try_with(|()| ()).is_ok()
}

/// Runs `f` marked as the console's when the request carried [`CONSOLE_HEADER`].
pub(crate) async fn scoped<F: Future>(from_console: bool, f: F) -> F::Output {
    if from_console { FROM_CONSOLE.scope((), f).await } else { f.await }
}
