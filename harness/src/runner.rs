//! Running many seeded histories, on all cores, with one summary.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use muster_core::Timestamp;

use crate::check::Violation;
use crate::scenario::Scenario;
use crate::sim::{self, Bug, Outcome};

/// What a batch of runs did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Histories run to the end.
    pub runs: u64,
    /// Events processed.
    pub steps: u64,
    /// Peer messages sent.
    pub messages: u64,
    /// Bytes of peer messages sent.
    pub bytes: u64,
    /// Faults applied.
    pub faults: u64,
    /// The slowest convergence after a heal.
    pub worst_convergence: Duration,
    /// The seed of the slowest convergence.
    pub worst_convergence_seed: u64,
    /// The violation with the smallest seed, if any.
    pub violation: Option<Violation>,
    /// Large histories run (see [`Scenario::bulk`]), and their records.
    pub large_runs: u64,
    /// The most records of one history.
    pub largest: usize,
    /// Acknowledged persistent records lost with every (memory-only) node
    /// that held them, over all histories.
    pub bulk_lost: u64,
}

/// Runs one scenario, turning a panic into a violation.
pub fn run_one(scenario: Scenario, bug: Option<Bug>) -> Outcome {
    let seed = scenario.seed;
    let result = catch_unwind(AssertUnwindSafe(|| match bug {
        Some(b) => sim::run_with_bug(scenario, b),
        None => sim::run(scenario),
    }));
    result.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".to_owned());
        Outcome {
            seed,
            steps: 0,
            messages: 0,
            bytes: 0,
            faults: 0,
            convergence: None,
            trace_hash: 0,
            bulk: 0,
            corrupt_refused: 0,
            bulk_lost: 0,
            violation: Some(Violation { seed, at: Timestamp::ZERO, kind: "panic".into(), detail: msg }),
        }
    })
}

/// Runs the scenarios of seeds `start..start + runs` on `threads` threads,
/// stopping early after a violation; `progress` is called after each run
/// with the number of runs done.
pub fn run_many(
    start: u64,
    runs: u64,
    nodes: Option<usize>,
    threads: usize,
    bug: Option<Bug>,
    progress: &(dyn Fn(u64) + Sync),
) -> Summary {
    run_many_scaled(start, runs, nodes, 1, threads, bug, progress)
}

/// Like [`run_many`], with the large histories `scale` times larger (see
/// [`Scenario::from_seed_scaled`]).
pub fn run_many_scaled(
    start: u64,
    runs: u64,
    nodes: Option<usize>,
    scale: u64,
    threads: usize,
    bug: Option<Bug>,
    progress: &(dyn Fn(u64) + Sync),
) -> Summary {
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs {
                        break;
                    }
                    let seed = start.wrapping_add(i);
                    let outcome = run_one(Scenario::from_seed_scaled(seed, nodes, scale), bug);
                    let done = {
                        let mut sum = summary.lock().unwrap_or_else(|e| e.into_inner());
                        absorb(&mut sum, &outcome);
                        if outcome.violation.is_some() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        sum.runs
                    };
                    progress(done);
                }
            });
        }
    });
    summary.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn absorb(sum: &mut Summary, o: &Outcome) {
    sum.runs += 1;
    if o.bulk > 0 {
        sum.large_runs += 1;
        sum.largest = sum.largest.max(o.bulk);
        sum.bulk_lost += o.bulk_lost as u64;
    }
    sum.steps += o.steps;
    sum.messages += o.messages;
    sum.bytes += o.bytes;
    sum.faults += o.faults;
    if let Some(c) = o.convergence {
        if c > sum.worst_convergence {
            sum.worst_convergence = c;
            sum.worst_convergence_seed = o.seed;
        }
    }
    if let Some(v) = &o.violation {
        if sum.violation.as_ref().is_none_or(|w| v.seed < w.seed) {
            sum.violation = Some(v.clone());
        }
    }
}
