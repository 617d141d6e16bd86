//! The simulator's mutation score: each deliberate bug of
//! `muster_core::bugs` is caught within the seed budget CI runs. The budgets
//! and the seeds of first catch are in docs/architecture.md.

use muster_harness::runner::run_many;
use muster_harness::sim::Bug;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs seeds `0..budget` with `bug` injected; returns the violation found.
fn caught(bug: Bug, budget: u64) -> muster_harness::check::Violation {
    let summary = run_many(0, budget, None, threads(), Some(bug), &|_| {});
    let v =
        summary.violation.unwrap_or_else(|| panic!("--bug {} went unnoticed for {budget} seeds", bug.name()));
    assert!(v.seed < budget);
    v
}

#[test]
fn a_merge_that_keeps_the_older_record_is_caught() {
    caught(Bug::KeepOlderOnMerge, 20);
}

#[test]
fn a_node_that_never_refutes_is_caught() {
    caught(Bug::NoRefute, 20);
}

#[test]
fn a_beat_that_never_lifts_an_unhealthy_mark_is_caught() {
    caught(Bug::NoLift, 20);
}

#[test]
fn anti_entropy_that_sends_the_same_prefix_every_round_is_caught() {
    // Needs a large history (seed 38 loads ~12,000 records into a cluster
    // whose first node missed them all).
    caught(Bug::AntiEntropyPrefix, 60);
}

#[test]
fn a_grace_period_moved_by_every_peer_going_down_is_caught() {
    caught(Bug::GlobalGrace, 40);
}

#[test]
fn a_register_that_keeps_the_old_version_is_caught() {
    caught(Bug::SameVersionRegister, 20);
}

#[test]
fn tombstones_purged_early_are_caught() {
    caught(Bug::EarlyPurge, 20);
}

#[test]
fn a_node_that_ignores_the_clients_ordering_token_is_caught() {
    // Clients that leave and register again on another node under
    // wall-clock skew (seed 4 first).
    caught(Bug::NoAfterToken, 20);
}
