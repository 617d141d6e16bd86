//! `muster`: the Muster service registry node and its command-line client.
//!
//! `muster serve` starts a node; `muster serve --help` lists every setting.
//! `muster register|deregister|beat|instances|services|watch|nodes|health`
//! talk to running nodes (`muster help` lists them, with the exit codes).

use std::process::ExitCode;

use muster_transport_http::cli::Command;

/// jemalloc, with background threads that return freed pages to the OS
/// (glibc's malloc kept the memory of closed connections; see
/// docs/architecture.md "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use muster_transport_http::config::ServeArgs;

fn main() -> ExitCode {
    match muster_transport_http::cli::parse().command {
        Command::Serve(args) => serve(*args),
        client => muster_transport_http::cli::run(client),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let settings = match args.with_file().and_then(ServeArgs::into_settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("muster: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = muster_transport_http::init_logging(&settings) {
        eprintln!("muster: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(muster_transport_http::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            eprintln!("muster: {e}");
            ExitCode::FAILURE
        }
    }
}
