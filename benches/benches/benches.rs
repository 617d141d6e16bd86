//! Criterion benchmarks of the pure Muster core: no sockets, no clock, fixed
//! seeds. Shaped like raft-rs `benches/benches.rs`: one `main` configures
//! Criterion (defaults first, then command-line arguments) and runs every
//! suite in `suites/`.
//!
//! Run: `cargo bench -p muster-benches --bench benches`, optionally with a
//! filter and Criterion options after `--`, e.g.
//! `-- --warm-up-time 1 --measurement-time 3 heartbeat`.

use std::time::Duration;

use criterion::Criterion;

mod suites;

fn main() {
    let mut c = Criterion::default()
        // Defaults first, so that command-line arguments override them.
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    suites::bench_register(&mut c);
    suites::bench_heartbeat(&mut c);
    suites::bench_query(&mut c);
    suites::bench_handle_timeout(&mut c);
    suites::bench_merge(&mut c);
    suites::bench_digest(&mut c);
    c.final_summary();
}
